//! Mounted tests of the write path: the same operations on a layerfs mount
//! and on kernel overlayfs over the same lower layers must give the same
//! result (errno included) call for call and the same final tree; the upper
//! layer layerfs wrote must then read back identically under kernel
//! overlayfs; the lower layers must never change.

mod common;

use std::ffi::{CString, OsStr};
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// layerfs and kernel overlayfs over the same lowers, each with its own
/// upper and work directory.
struct Pair {
    base: PathBuf,
    lowers: Vec<PathBuf>,
    kernel_opts: String,
    /// layerfs options besides the layers.
    ours_extra: String,
    ours: Option<Mounted>,
    kernel: Option<Mounted>,
    /// Where layerfs' upper and work dir are (`base` unless elsewhere).
    ours_base: PathBuf,
}

const KERNEL_OPTS: &str = "redirect_dir=on,index=off,metacopy=off";

fn upper_opts(base: &Path, tag: &str) -> String {
    let u = base.join(format!("upper-{tag}"));
    let w = base.join(format!("work-{tag}"));
    fs::create_dir_all(&u).unwrap();
    fs::create_dir_all(&w).unwrap();
    format!("upperdir={},workdir={}", u.display(), w.display())
}

impl Pair {
    fn new(base: &Path, lowers: Vec<PathBuf>) -> Pair {
        Pair::with_metacopy(base, lowers, false)
    }

    fn with_metacopy(base: &Path, lowers: Vec<PathBuf>, metacopy: bool) -> Pair {
        Pair::with(
            base,
            lowers,
            Variant {
                metacopy,
                ..Variant::default()
            },
        )
    }

    fn with(base: &Path, lowers: Vec<PathBuf>, v: Variant) -> Pair {
        let mc = if v.metacopy { "on" } else { "off" };
        let mut ours_extra = format!("metacopy={mc}");
        if !v.extra.is_empty() {
            ours_extra = format!("{ours_extra},{}", v.extra);
        }
        // userxattr: no redirects (the kernel refuses the option with one).
        let mut kernel_opts = format!("redirect_dir=on,index=off,metacopy={mc}");
        if v.userxattr {
            ours_extra += ",userxattr";
            kernel_opts = "userxattr,index=off".to_string();
        }
        let ours_base = v.upper_on.unwrap_or(base).to_path_buf();
        if v.oci_upper {
            kernel_opts = "redirect_dir=off,index=off,metacopy=off".to_string();
        }
        let ours_opts = format!(
            "{},{},{ours_extra}",
            lowerdir_opt(&lowers),
            upper_opts(&ours_base, "ours")
        );
        let mut env: Vec<(&str, &str)> = Vec::new();
        if v.xattr_whiteouts {
            env.push(("FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT", "1"));
        }
        if !v.disabled_features.is_empty() {
            env.push(("LAYERFS_DISABLE_FEATURES", v.disabled_features));
        }
        if v.oci_upper {
            env.push(("LAYERFS_DISABLE_FEATURES", "xattr_trusted,xattr_user"));
        }
        if v.upper_files_by_name {
            // Handles could not be opened rootless; every fd is past the
            // pressure mark.
            env.push(("LAYERFS_DISABLE_FEATURES", "file_handles"));
            env.push(("LAYERFS_FD_PRESSURE", "0"));
        }
        let ours = try_mount_layerfs_env(&ours_opts, &base.join("m-ours"), &env).unwrap();
        let kopts = format!("{},{kernel_opts}", upper_opts(base, "kernel"));
        let kernel = mount_kernel(&lowers, &base.join("m-kernel"), &kopts);
        Pair {
            base: base.to_path_buf(),
            lowers,
            kernel_opts,
            ours_extra,
            ours: Some(ours),
            kernel: Some(kernel),
            ours_base,
        }
    }

    fn ours(&self) -> &Path {
        &self.ours.as_ref().unwrap().dir
    }

    fn kernel(&self) -> &Path {
        &self.kernel.as_ref().unwrap().dir
    }

    /// Compares both mounts now.
    fn assert_same(&self, what: &str) {
        let d = diff(&snapshot(self.ours()), &snapshot(self.kernel()), WRITE_CMP);
        assert!(d.is_empty(), "{what}: trees differ:\n{}", d.join("\n"));
    }

    /// Unmounts kernel overlayfs and mounts its upper under layerfs: the
    /// view must be the one the kernel showed.
    fn assert_kernel_upper_reads_back_under_layerfs(&mut self) {
        let before = snapshot(self.kernel());
        self.kernel.take().unwrap().unmount();
        let opts = format!(
            "{},{},{}",
            lowerdir_opt(&self.lowers),
            upper_opts(&self.base, "kernel"),
            self.ours_extra
        );
        let m = try_mount_layerfs(&opts, &self.base.join("m-reverse")).unwrap();
        let d = diff(&before, &snapshot(&m.dir), WRITE_CMP);
        assert!(
            d.is_empty(),
            "kernel's upper under layerfs differs:\n{}",
            d.join("\n")
        );
    }

    /// Unmounts layerfs and mounts its OCI-format upper again: the view
    /// must be the one layerfs showed, and the upper must hold `.wh.`
    /// markers and no overlay xattrs.
    fn assert_oci_upper_reads_back_under_layerfs(&mut self) {
        let before = snapshot(self.ours());
        self.ours.take().unwrap().unmount();
        let opts = format!(
            "{},{},{}",
            lowerdir_opt(&self.lowers),
            upper_opts(&self.ours_base, "ours"),
            self.ours_extra
        );
        let m = try_mount_layerfs_env(
            &opts,
            &self.base.join("m-oci-again"),
            &[("LAYERFS_DISABLE_FEATURES", "xattr_trusted,xattr_user")],
        )
        .unwrap();
        let d = diff(&before, &snapshot(&m.dir), WRITE_CMP);
        assert!(
            d.is_empty(),
            "OCI upper read back differs:\n{}",
            d.join("\n")
        );
        let upper = self.ours_base.join("upper-ours");
        for (path, node) in snapshot(&upper) {
            assert!(
                node.xattrs
                    .keys()
                    .all(|k| !k.windows(8).any(|w| w == b"overlay.")),
                "overlay xattr on {:?}",
                String::from_utf8_lossy(&path)
            );
            assert!(
                node.kind != "chardev" || node.rdev != 0,
                "device whiteout in an OCI upper"
            );
        }
    }

    /// Unmounts layerfs and mounts its upper under kernel overlayfs: the
    /// view must be the one layerfs showed.
    fn assert_upper_reads_back_under_kernel(&mut self) {
        let before = snapshot(self.ours());
        self.ours.take().unwrap().unmount();
        if self.ours_base != self.base {
            // Kernel overlayfs cannot mount an upper on a filesystem such
            // as GlusterFS: read back a local copy (xattrs included).
            let st = Command::new("cp")
                .arg("-a")
                .arg(self.ours_base.join("upper-ours"))
                .arg(&self.base)
                .status()
                .unwrap();
            assert!(st.success(), "copy the upper");
        }
        let k = mount_kernel(
            &self.lowers,
            &self.base.join("m-readback"),
            &format!("{},{}", upper_opts(&self.base, "ours"), self.kernel_opts),
        );
        let after = snapshot(&k.dir);
        let d = diff(&before, &after, WRITE_CMP);
        assert!(
            d.is_empty(),
            "upper read back under kernel overlayfs differs:\n{}",
            d.join("\n")
        );
        // Nothing private may show: no marker files, no overlay xattrs.
        for (path, node) in &after {
            let p = String::from_utf8_lossy(path);
            assert!(!p.contains(".wh."), "marker visible: {p}");
            assert!(
                node.xattrs.keys().all(|k| !k.starts_with(b"user.overlay")),
                "{p}"
            );
        }
    }
}

/// Files are created at different moments on the two mounts, and the two
/// upper dirs hold different inodes: compare all but times and numbers.
const WRITE_CMP: Compare = Compare {
    ino: false,
    nlink: true,
    mtime: false,
    dir_mtime: false,
};

// ---- one operation, applied to a root ------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Write(String, Vec<u8>),
    Append(String, Vec<u8>),
    Read(String),
    Unlink(String),
    Mkdir(String),
    Rmdir(String),
    Rename(String, String),
    RenameNoReplace(String, String),
    Exchange(String, String),
    Symlink(String, String),
    Link(String, String),
    Chmod(String, u32),
    Chown(String, u32),
    Truncate(String, u64),
    SetXattr(String, String),
    RemoveXattr(String),
    Mkfifo(String),
    Mknod(String),
    Stat(String),
    ListDir(String),
}

type Outcome = Result<String, i32>;

fn errno_of(e: io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let (a, b) = (c(from), c(to));
    // Tests may not use unsafe; the syscall goes through the crate's sys
    // module by way of fd-less helpers.
    layerfs::sys::renameat2(
        cwd_fd().as_fd_ref(),
        OsStr::from_bytes(a.as_bytes()),
        cwd_fd().as_fd_ref(),
        OsStr::from_bytes(b.as_bytes()),
        flags,
    )
}

/// A directory fd for "/" so that absolute paths work with *at calls.
struct RootFd(std::os::fd::OwnedFd);
impl RootFd {
    fn as_fd_ref(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.0)
    }
}
fn cwd_fd() -> RootFd {
    RootFd(layerfs::sys::open_path(Path::new("/"), libc::O_PATH | libc::O_DIRECTORY).unwrap())
}

fn apply(root: &Path, op: &Op) -> Outcome {
    let p = |s: &str| root.join(s);
    // Opening a FIFO for data would wait for a partner forever.
    if let Op::Write(f, _) | Op::Append(f, _) | Op::Read(f) | Op::Truncate(f, _) = op {
        use std::os::unix::fs::FileTypeExt;
        if fs::symlink_metadata(p(f)).is_ok_and(|m| m.file_type().is_fifo())
            || fs::metadata(p(f)).is_ok_and(|m| m.file_type().is_fifo())
        {
            return Ok("fifo".into());
        }
    }
    let ok = |r: io::Result<()>| r.map(|_| String::new()).map_err(errno_of);
    match op {
        Op::Write(f, data) => ok(fs::write(p(f), data)),
        Op::Append(f, data) => ok(fs::OpenOptions::new()
            .append(true)
            .open(p(f))
            .and_then(|mut h| h.write_all(data))),
        Op::Read(f) => fs::read(p(f))
            .map(|d| format!("{} bytes {:?}", d.len(), &d[..d.len().min(16)]))
            .map_err(errno_of),
        Op::Unlink(f) => ok(fs::remove_file(p(f))),
        Op::Mkdir(f) => ok(fs::DirBuilder::new().mode(0o750).create(p(f))),
        Op::Rmdir(f) => ok(fs::remove_dir(p(f))),
        Op::Rename(a, b) => ok(fs::rename(p(a), p(b))),
        Op::RenameNoReplace(a, b) => ok(renameat2(&p(a), &p(b), libc::RENAME_NOREPLACE)),
        Op::Exchange(a, b) => ok(renameat2(&p(a), &p(b), libc::RENAME_EXCHANGE)),
        Op::Symlink(t, f) => ok(std::os::unix::fs::symlink(t, p(f))),
        Op::Link(a, b) => ok(fs::hard_link(p(a), p(b))),
        Op::Chmod(f, m) => ok(fs::set_permissions(p(f), fs::Permissions::from_mode(*m))),
        Op::Chown(f, u) => ok(std::os::unix::fs::lchown(p(f), Some(*u), Some(*u))),
        Op::Truncate(f, n) => ok(fs::OpenOptions::new()
            .write(true)
            .open(p(f))
            .and_then(|h| h.set_len(*n))),
        Op::SetXattr(f, v) => ok(lsetxattr(&p(f), "user.t", v.as_bytes())),
        Op::RemoveXattr(f) => {
            let st = Command::new("setfattr")
                .args(["-x", "user.t"])
                .arg(p(f))
                .output()
                .unwrap();
            if st.status.success() {
                Ok(String::new())
            } else {
                Err(1)
            }
        }
        Op::Mkfifo(f) => {
            let st = Command::new("mkfifo").arg(p(f)).output().unwrap();
            if st.status.success() {
                Ok(String::new())
            } else {
                Err(1)
            }
        }
        Op::Mknod(f) => {
            let st = Command::new("mknod")
                .arg(p(f))
                .args(["c", "1", "3"])
                .output()
                .unwrap();
            if st.status.success() {
                Ok(String::new())
            } else {
                Err(1)
            }
        }
        Op::Stat(f) => fs::symlink_metadata(p(f))
            .map(|m| {
                format!(
                    "{:o} {} {} {}",
                    m.mode(),
                    m.uid(),
                    m.nlink(),
                    if m.is_dir() { 0 } else { m.size() }
                )
            })
            .map_err(errno_of),
        Op::ListDir(f) => fs::read_dir(p(f))
            .map(|rd| {
                // Kernel overlayfs lists whiteouts of single-layer dirs that
                // it then fails to stat; only what can be stat'ed counts.
                let mut v: Vec<_> = rd
                    .map(|e| e.unwrap())
                    .filter(|e| fs::symlink_metadata(e.path()).is_ok())
                    .map(|e| e.file_name())
                    .collect();
                v.sort();
                format!("{v:?}")
            })
            .map_err(errno_of),
    }
}

/// A random operation over a small pool of paths, so that operations meet
/// the lower layers' names and each other's.
fn random_op(rng: &mut Rng) -> Op {
    const NAMES: &[&str] = &["a", "b", "c", "d", "e", "f"];
    let mut path = || {
        let depth = rng.below(3) as usize + 1;
        (0..depth)
            .map(|_| *rng.pick(NAMES))
            .collect::<Vec<_>>()
            .join("/")
    };
    let a = path();
    let b = path();
    let data: Vec<u8> = format!("data-{}", a.len() * 7 + b.len()).into_bytes();
    match rng.below(20) {
        0 | 1 => Op::Write(a, data),
        2 => Op::Append(a, data),
        3 => Op::Read(a),
        4 | 5 => Op::Unlink(a),
        6 | 7 => Op::Mkdir(a),
        8 => Op::Rmdir(a),
        9 | 10 => Op::Rename(a, b),
        11 => Op::RenameNoReplace(a, b),
        12 => Op::Exchange(a, b),
        13 => Op::Symlink(b, a),
        14 => Op::Link(a, b),
        15 => Op::Chmod(a, *rng.pick(&[0o600, 0o755, 0o4711, 0o1777])),
        16 => Op::Chown(a, *rng.pick(&[0, 1000, 1234])),
        17 => Op::Truncate(a, rng.below(8)),
        18 => {
            if rng.chance(50) {
                Op::SetXattr(a, format!("v{}", rng.below(5)))
            } else {
                Op::RemoveXattr(a)
            }
        }
        _ => match rng.below(4) {
            0 => Op::Mkfifo(a),
            1 => Op::Stat(a),
            2 => Op::Mknod(a),
            _ => Op::ListDir(a),
        },
    }
}

/// How the two mounts of a differential run are set up.
#[derive(Debug, Clone, Copy, Default)]
struct Variant {
    metacopy: bool,
    /// layerfs writes xattr whiteouts (as where mknod is refused).
    xattr_whiteouts: bool,
    /// Both use `user.overlay.*` xattrs (`userxattr`), as rootless mounts do.
    userxattr: bool,
    /// layerfs' upper and work dir go in this dir (on another filesystem,
    /// e.g. GlusterFS) instead of beside the kernel's.
    upper_on: Option<&'static Path>,
    /// Upper features layerfs must do without (`LAYERFS_DISABLE_FEATURES`),
    /// as on network filesystems.
    disabled_features: &'static str,
    /// layerfs reaches every upper file by its name, holding no fd for it
    /// (as a rootless daemon does near its open-file limit).
    upper_files_by_name: bool,
    /// More layerfs options (`passthrough=off`: the kernel's writeback
    /// cache, as rootless mounts have).
    extra: &'static str,
    /// layerfs sees an upper without xattrs and writes OCI `.wh.` markers
    /// (kernel overlayfs then runs with `redirect_dir=off`, the same rules,
    /// and cannot read that upper back; layerfs must).
    oci_upper: bool,
}

fn run_differential(seed: u64, ops: usize, metacopy: bool) {
    run_differential_with(
        seed,
        ops,
        Variant {
            metacopy,
            ..Variant::default()
        },
    )
}

fn run_differential_with(seed: u64, ops: usize, v: Variant) {
    let t = tmp();
    let n = 2 + (seed % 3) as usize;
    let lowers = random_stack(seed, n, &t.path().join("lower"));
    if v.userxattr {
        // With userxattr the kernel reads only user.overlay.* marks.
        lowers.iter().for_each(|l| to_user_xattrs(l));
    }
    if v.oci_upper {
        // Copy-up to an upper without xattrs cannot keep them.
        lowers.iter().for_each(|l| strip_user_xattrs(l));
    }
    let before: Vec<_> = lowers.iter().map(|l| fingerprint(l)).collect();
    let mut pair = Pair::with(t.path(), lowers.clone(), v);
    pair.assert_same(&format!("seed {seed}: before any operation"));
    let mut rng = Rng::new(seed ^ 0xabcdef);
    let mut history: Vec<String> = Vec::new();
    // To minimise a failing sequence (scripts/dev/soak-diff.sh --minimize): only
    // these operations are applied; the others are drawn and skipped.
    let only: Option<std::collections::HashSet<usize>> = std::env::var("LAYERFS_DIFF_ONLY")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect());
    for i in 0..ops {
        let op = random_op(&mut rng);
        if v.oci_upper && matches!(op, Op::SetXattr(..) | Op::RemoveXattr(..)) {
            // Such an upper keeps no xattrs (the kernel's would).
            continue;
        }
        if only.as_ref().is_some_and(|o| !o.contains(&i)) {
            continue;
        }
        let ours = apply(pair.ours(), &op);
        let kernel = apply(pair.kernel(), &op);
        history.push(format!("#{i} {op:?} -> {kernel:?}"));
        if ours != kernel {
            let show = |root: &Path| -> String {
                let paths = match &op {
                    Op::Rename(a, b)
                    | Op::RenameNoReplace(a, b)
                    | Op::Exchange(a, b)
                    | Op::Link(a, b) => vec![a.clone(), b.clone()],
                    _ => vec![],
                };
                paths
                    .iter()
                    .map(|p| format!("{p}: {:?}", apply(root, &Op::Stat(p.clone()))))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let keep = std::env::var("LAYERFS_DIFF_HISTORY")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(25);
            let recent = history[history.len().saturating_sub(keep)..].join("\n  ");
            panic!(
                "seed {seed}, op #{i} {op:?}: layerfs {ours:?} vs kernel {kernel:?}\n ours: {}\n kernel: {}\n recent:\n  {recent}",
                show(pair.ours()),
                show(pair.kernel())
            );
        }
    }
    if std::env::var_os("LAYERFS_DIFF_HISTORY").is_some() {
        eprintln!("history:\n  {}", history.join("\n  "));
    }
    pair.assert_same(&format!("seed {seed}: after {ops} operations"));
    if v.xattr_whiteouts {
        let devices = walk_upper_devices(&pair.ours_base.join("upper-ours"));
        assert!(
            devices.is_empty(),
            "seed {seed}: device whiteouts with FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT: {devices:?}"
        );
    }
    if v.oci_upper {
        pair.assert_oci_upper_reads_back_under_layerfs();
    } else {
        pair.assert_upper_reads_back_under_kernel();
    }
    pair.assert_kernel_upper_reads_back_under_layerfs();
    for (l, b) in lowers.iter().zip(&before) {
        let d = diff(b, &fingerprint(l), Compare::ALL);
        assert!(
            d.is_empty(),
            "seed {seed}: lower {l:?} changed:\n{}",
            d.join("\n")
        );
    }
}

/// The seeds and the operation count of a differential test: `defaults`
/// and 300, unless `LAYERFS_DIFF_SEEDS=N` (with `LAYERFS_DIFF_SEED_START`,
/// default 1) and `LAYERFS_DIFF_OPS` ask for a longer run
/// (scripts/dev/soak-diff.sh).
fn diff_plan(defaults: &[u64]) -> (Vec<u64>, usize) {
    let num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let seeds = match num("LAYERFS_DIFF_SEEDS") {
        Some(n) => {
            let start = num("LAYERFS_DIFF_SEED_START").unwrap_or(1);
            (start..start + n).collect()
        }
        None => defaults.to_vec(),
    };
    (seeds, num("LAYERFS_DIFF_OPS").unwrap_or(300) as usize)
}

#[test]
fn random_operations_match_kernel_overlayfs() {
    require_root!();
    let (seeds, ops) = diff_plan(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    for seed in seeds {
        run_differential(seed, ops, false);
    }
}

/// Char 0/0 devices (device whiteouts) in an upper tree.
fn walk_upper_devices(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            found.extend(walk_upper_devices(&e.path()));
        } else if ft.is_char_device() && e.metadata().unwrap().rdev() == 0 {
            found.push(e.path());
        }
    }
    found
}

#[test]
fn random_operations_match_kernel_overlayfs_with_xattr_whiteouts() {
    require_root!();
    // Where mknod is refused, whiteouts are the xattr kind kernel overlayfs
    // (6.7+) reads; fuse-overlayfs' switch forces that here.
    let (seeds, ops) = diff_plan(&[31, 32, 33, 34]);
    for seed in seeds {
        let v = Variant {
            xattr_whiteouts: true,
            ..Variant::default()
        };
        run_differential_with(seed, ops, v);
    }
}

#[test]
fn random_operations_match_kernel_overlayfs_with_userxattr() {
    require_root!();
    // The rootless format: user.overlay.* xattrs, no redirects (renaming a
    // lower directory is EXDEV, as in the kernel), plus xattr whiteouts.
    let (seeds, ops) = diff_plan(&[41, 42, 43, 44]);
    for seed in seeds {
        let v = Variant {
            userxattr: true,
            // Seeds 41, 42 without, 43, 44 with.
            xattr_whiteouts: (seed - 1) / 2 % 2 == 1,
            ..Variant::default()
        };
        run_differential_with(seed, ops, v);
    }
}

/// The same with layerfs' upper and work dir on a GlusterFS volume (which
/// has no RENAME_NOREPLACE/EXCHANGE/WHITEOUT and no O_TMPFILE); kernel
/// overlayfs with a local upper is the reference. The body runs on a
/// "host" of a GlusterFS cluster (tests/common/gluster.rs).
#[test]
fn random_operations_match_kernel_overlayfs_with_upper_on_glusterfs() {
    if common::gluster::role().is_some() {
        let gl = common::gluster::child_base().join("gl");
        for seed in [1u64, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12] {
            let dir = tempfile::Builder::new()
                .prefix(&format!("seed{seed}-"))
                .tempdir_in(&gl)
                .unwrap();
            let on: &'static Path = Box::leak(dir.path().to_path_buf().into_boxed_path());
            run_differential_with(
                seed,
                300,
                Variant {
                    upper_on: Some(on),
                    ..Variant::default()
                },
            );
        }
        return;
    }
    require_gluster!();
    let cluster = common::gluster::Cluster::start();
    let host = cluster.host("a");
    host.run_test_ok(
        "random_operations_match_kernel_overlayfs_with_upper_on_glusterfs",
        "body",
    );
}

#[test]
fn random_operations_match_kernel_overlayfs_without_rename_flags_or_handles() {
    require_root!();
    // What GlusterFS and other network filesystems lack: RENAME_NOREPLACE,
    // RENAME_EXCHANGE and RENAME_WHITEOUT (emulated under the daemon's lock
    // and through the work dir), file handles (upper files held open), and
    // char 0/0 mknod (xattr whiteouts).
    for (seed, features) in [
        (51u64, "rename_noreplace,rename_exchange,rename_whiteout"),
        (52, "rename_noreplace,rename_exchange,rename_whiteout"),
        (
            53,
            "rename_noreplace,rename_exchange,rename_whiteout,file_handles",
        ),
        (54, "rename_exchange,whiteout_mknod,d_type"),
        (
            8,
            "rename_noreplace,rename_exchange,rename_whiteout,file_handles",
        ),
        (
            12,
            "rename_noreplace,rename_exchange,rename_whiteout,file_handles",
        ),
    ] {
        let v = Variant {
            disabled_features: features,
            ..Variant::default()
        };
        run_differential_with(seed, 300, v);
    }
}

#[test]
fn random_operations_match_kernel_overlayfs_with_upper_files_reached_by_name() {
    require_root!();
    // A rootless daemon cannot open file handles; near its open-file limit
    // it reaches upper files by parent and name instead of holding an fd
    // for each, so renames, links, unlinks and open files must all follow.
    // Here that starts at the first fd, with and without passthrough.
    for (seed, extra) in [
        (61u64, ""),
        (62, ""),
        (63, "passthrough=off"),
        (8, ""),
        (12, "passthrough=off"),
    ] {
        let v = Variant {
            upper_files_by_name: true,
            extra,
            ..Variant::default()
        };
        run_differential_with(seed, 300, v);
    }
}

/// Removes the user xattrs random layers carry.
fn strip_user_xattrs(dir: &Path) {
    let script = "find \"$1\" | while read -r p; do \
                  setfattr -h -x user.test \"$p\" 2>/dev/null; \
                  setfattr -h -x user.dir \"$p\" 2>/dev/null; done; true";
    let st = Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn random_operations_match_kernel_overlayfs_with_an_upper_without_xattrs() {
    require_root!();
    // An upper whose filesystem has no xattrs at all: OCI `.wh.` whiteouts
    // and `.wh..wh..opq` opaque marks, no redirects, as fuse-overlayfs.
    for seed in [71u64, 72, 73, 74] {
        let v = Variant {
            oci_upper: true,
            ..Variant::default()
        };
        run_differential_with(seed, 300, v);
    }
}

#[test]
fn random_operations_match_kernel_overlayfs_with_writeback_cache() {
    require_root!();
    // Data through the daemon with the kernel's writeback cache, as on
    // rootless mounts (FUSE passthrough needs CAP_SYS_ADMIN).
    for seed in [61u64, 62, 63, 64] {
        let v = Variant {
            extra: "passthrough=off",
            ..Variant::default()
        };
        run_differential_with(seed, 300, v);
    }
}

/// With the writeback cache, the kernel owns size and mtime while it
/// caches: appends from two descriptors, a shared writable mmap, a copy-up
/// on first write, truncation and fsync must still give what kernel
/// overlayfs gives, and fsync must reach the upper file on disk.
#[test]
fn writeback_cache_keeps_appends_mmap_and_fsync_right() {
    require!("python3");
    use std::os::unix::fs::FileExt;
    let t = tmp();
    let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
    mkdir(&l1);
    write(&l0.join("log"), b"lower\n");
    write(&l0.join("mapped"), &[b'.'; 8192]);
    write(&l0.join("data"), &vec![7u8; 100_000]);
    let pair = Pair::with(
        t.path(),
        vec![l0, l1],
        Variant {
            extra: "passthrough=off",
            ..Variant::default()
        },
    );
    for root in [pair.ours(), pair.kernel()] {
        let open_append = || {
            fs::OpenOptions::new()
                .append(true)
                .open(root.join("log"))
                .unwrap()
        };
        let (mut a, mut b) = (open_append(), open_append());
        for i in 0..50 {
            writeln!(a, "a{i}").unwrap();
            writeln!(b, "b{i}").unwrap();
        }
        drop((a, b));
        // A write-only open of a lower file: copy-up, then a partial page.
        let w = fs::OpenOptions::new()
            .write(true)
            .open(root.join("data"))
            .unwrap();
        w.write_at(b"middle", 50_001).unwrap();
        w.set_len(80_000).unwrap();
        w.sync_all().unwrap();
        drop(w);
        // A shared writable mapping of a lower file, written and synced.
        let out = Command::new("python3")
            .arg("-c")
            .arg(
                "import mmap,sys\n\
                 f=open(sys.argv[1],'r+b')\n\
                 m=mmap.mmap(f.fileno(),8192)\n\
                 m[100:105]=b'mmap!'\n\
                 m.flush()\n",
            )
            .arg(root.join("mapped"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
    }
    for name in ["log", "data", "mapped"] {
        assert_eq!(
            fs::read(pair.ours().join(name)).unwrap(),
            fs::read(pair.kernel().join(name)).unwrap(),
            "{name}"
        );
        let (o, k) = (
            fs::metadata(pair.ours().join(name)).unwrap(),
            fs::metadata(pair.kernel().join(name)).unwrap(),
        );
        assert_eq!(o.len(), k.len(), "{name} size");
    }
    // fsync reached the upper file itself, before any unmount.
    let on_disk = fs::read(t.path().join("upper-ours/data")).unwrap();
    assert_eq!(on_disk.len(), 80_000);
    assert_eq!(&on_disk[50_001..50_007], b"middle");
    pair.assert_same("after writeback-cached writes");
}

#[test]
fn random_operations_match_kernel_overlayfs_with_metacopy() {
    require_root!();
    let (seeds, ops) = diff_plan(&[21, 22, 23, 24, 25, 26]);
    for seed in seeds {
        run_differential(seed, ops, true);
    }
}

/// Found by scripts/dev/soak-diff.sh (seed 100322): a directory copied up as
/// the ancestor of a change becomes merged, which kernel overlayfs shows as
/// nlink 1; layerfs' kernel cache kept the lower directory's count.
#[test]
fn ancestor_copied_up_shows_merged_link_count() {
    require_root!();
    let t = tmp();
    let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
    mkdir(&l0);
    mkdir(&l1.join("d/s/t"));
    let pair = Pair::new(t.path(), vec![l0, l1]);
    for root in [pair.ours(), pair.kernel()] {
        assert_eq!(fs::metadata(root.join("d/s")).unwrap().nlink(), 3);
        fs::create_dir(root.join("d/s/t/new")).unwrap();
    }
    let nlink = |root: &Path| fs::metadata(root.join("d/s")).unwrap().nlink();
    assert_eq!(nlink(pair.kernel()), 1, "kernel overlayfs: merged");
    assert_eq!(
        nlink(pair.ours()),
        1,
        "layerfs after the ancestor's copy-up"
    );
}

/// A rename of a lower directory onto a non-empty directory that lives only
/// in the upper fails with ENOTEMPTY in kernel overlayfs only once the
/// source is copied up and redirected (it checks only merged targets
/// first): its parents are merged from then on (nlink 1), and layerfs must
/// leave the same upper (found by the million-operation differential run,
/// seed 100040).
#[test]
fn failed_rename_onto_a_full_upper_directory_copies_up_as_the_kernel() {
    require_root!();
    let t = tmp();
    let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
    mkdir(&l0);
    write(&l1.join("e/a/e/x"), b"x");
    let mut pair = Pair::new(t.path(), vec![l0, l1]);
    for root in [pair.ours(), pair.kernel()] {
        fs::create_dir_all(root.join("a/e")).unwrap();
        let r = fs::rename(root.join("e/a/e"), root.join("a"));
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ENOTEMPTY));
    }
    pair.assert_same("after the failed rename");
    pair.assert_upper_reads_back_under_kernel();
}

#[test]
fn copy_up_preserves_metadata_and_inode_number() {
    require_root!();
    let t = tmp();
    let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
    write(&l1.join("dir/tool"), b"#!/bin/sh\necho hi\n");
    chmod(&l1.join("dir/tool"), 0o4755);
    chown(&l1.join("dir/tool"), 1000, 1001);
    setxattr(&l1.join("dir/tool"), "user.keep", b"me");
    setxattr(
        &l1.join("dir/tool"),
        "security.capability",
        &[
            1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    chmod(&l1.join("dir"), 0o2775);
    let st = Command::new("touch")
        .args(["-d", "2001-02-03 04:05:06"])
        .arg(l1.join("dir/tool"))
        .status()
        .unwrap();
    assert!(st.success());
    write(&l0.join("other"), b"o");
    let (opts, u, w) = rw_opts(t.path(), &[l0.clone(), l1.clone()], "");
    let mut m = try_mount_layerfs(&opts, &t.path().join("m")).unwrap();
    let before = fs::symlink_metadata(m.path("dir/tool")).unwrap();
    let caps_before = Command::new("getfattr")
        .args(["-n", "security.capability", "--only-values"])
        .arg(m.path("dir/tool"))
        .output()
        .unwrap()
        .stdout;
    // A metadata-only change triggers copy-up (a write would drop the
    // capability and, for a file root does not own, setuid: as the kernel does).
    setxattr(&m.path("dir/tool"), "user.trigger", b"1");
    let after = fs::symlink_metadata(m.path("dir/tool")).unwrap();
    assert_eq!(before.ino(), after.ino(), "st_ino must survive copy-up");
    // Kernel overlayfs drops setuid when it copies up a file that carries
    // capabilities (as chown does); layerfs does the same.
    assert_eq!(after.mode() & 0o777, 0o755);
    assert_eq!((after.uid(), after.gid()), (1000, 1001));
    let up = fs::symlink_metadata(u.join("dir/tool")).unwrap();
    assert_eq!(up.mode() & 0o7777, after.mode() & 0o7777);
    assert_eq!((up.uid(), up.gid()), (1000, 1001));
    assert_eq!(fs::metadata(u.join("dir")).unwrap().mode() & 0o7777, 0o2775);
    assert_eq!(
        user_xattrs(&u.join("dir/tool"))
            .get(&b"user.keep"[..])
            .map(|v| v.as_slice()),
        Some(&b"me"[..])
    );
    let caps_upper = Command::new("getfattr")
        .args(["-n", "security.capability", "--only-values"])
        .arg(u.join("dir/tool"))
        .output()
        .unwrap()
        .stdout;
    assert_eq!(
        caps_before, caps_upper,
        "security.capability must be copied"
    );
    assert_eq!(up.mtime(), 981173106, "times are copied");
    let dir_mtime = fs::metadata(l1.join("dir")).unwrap().mtime();
    assert_eq!(
        fs::metadata(m.path("dir")).unwrap().mtime(),
        dir_mtime,
        "copy-up keeps the parent's times"
    );
    // Origin recorded the kernel's way, and the number survives a remount.
    let list = Command::new("getfattr")
        .args(["-d", "-m", "trusted.overlay"])
        .arg(u.join("dir/tool"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&list.stdout).contains("trusted.overlay.origin"));
    m.unmount();
    let m = try_mount_layerfs(&opts, &t.path().join("m")).unwrap();
    assert_eq!(
        fs::symlink_metadata(m.path("dir/tool")).unwrap().ino(),
        before.ino()
    );
    drop(m);
    let k = mount_kernel(
        &[l0, l1],
        &t.path().join("k"),
        &format!(
            "upperdir={},workdir={},{KERNEL_OPTS}",
            u.display(),
            w.display()
        ),
    );
    assert_eq!(
        fs::symlink_metadata(k.path("dir/tool")).unwrap().ino(),
        before.ino(),
        "kernel overlayfs reads the origin"
    );
}

#[test]
fn sparse_files_stay_sparse_on_copy_up() {
    require_root!();
    let t = tmp();
    let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
    mkdir(&l0);
    mkdir(&l1);
    {
        let f = fs::File::create(l1.join("sparse")).unwrap();
        f.set_len(4 << 30).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_at(b"start", 0).unwrap();
        f.write_at(b"middle", 2 << 30).unwrap();
    }
    let (opts, u, _w) = rw_opts(t.path(), &[l0, l1], "");
    let m = try_mount_layerfs(&opts, &t.path().join("m")).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(m.path("sparse"))
        .unwrap();
    let md = fs::metadata(u.join("sparse")).unwrap();
    assert_eq!(md.len(), 4 << 30);
    assert!(
        md.blocks() * 512 < 1 << 20,
        "copy-up must keep holes: {} blocks",
        md.blocks()
    );
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(m.path("sparse")).unwrap();
    let mut buf = [0u8; 6];
    f.read_exact_at(&mut buf, 2 << 30).unwrap();
    assert_eq!(&buf, b"middle");
}

#[test]
fn rename_of_lower_directory_uses_redirect() {
    require_root!();
    let t = tmp();
    let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
    for i in 0..50 {
        write(
            &l1.join(format!("usr/share/pkg/file{i}")),
            format!("{i}").as_bytes(),
        );
    }
    write(&l0.join("usr/share/pkg/top"), b"top");
    let mut pair = Pair::new(t.path(), vec![l0, l1]);
    for root in [pair.ours().to_path_buf(), pair.kernel().to_path_buf()] {
        fs::rename(root.join("usr/share/pkg"), root.join("usr/share/pkg.old")).unwrap();
        fs::create_dir(root.join("usr/share/pkg")).unwrap();
        fs::write(root.join("usr/share/pkg/new"), b"n").unwrap();
        fs::rename(root.join("usr/share/pkg.old"), root.join("moved")).unwrap();
    }
    pair.assert_same("after directory renames");
    assert_eq!(fs::read_dir(pair.ours().join("moved")).unwrap().count(), 51);
    let up = t.path().join("upper-ours");
    assert!(
        !up.join("moved/file0").exists(),
        "only the directory itself is copied up"
    );
    pair.assert_upper_reads_back_under_kernel();
}

#[test]
fn whiteouts_and_opaque_dirs_on_disk_are_kernel_format() {
    require_root!();
    let t = tmp();
    let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
    write(&l1.join("file"), b"f");
    write(&l1.join("dir/inner"), b"i");
    write(&l0.join("keep"), b"k");
    let pair = Pair::new(t.path(), vec![l0, l1]);
    let m = pair.ours();
    fs::remove_file(m.join("file")).unwrap();
    fs::remove_file(m.join("dir/inner")).unwrap();
    fs::remove_dir(m.join("dir")).unwrap();
    fs::create_dir(m.join("dir")).unwrap();
    let up = t.path().join("upper-ours");
    let md = fs::symlink_metadata(up.join("file")).unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(
        md.file_type().is_char_device() && md.rdev() == 0,
        "whiteout is char 0/0"
    );
    let opq = Command::new("getfattr")
        .args(["-n", "trusted.overlay.opaque", "--only-values"])
        .arg(up.join("dir"))
        .output()
        .unwrap();
    assert_eq!(opq.stdout, b"y", "a dir made over a whiteout is opaque");
    assert_eq!(fs::read_dir(m.join("dir")).unwrap().count(), 0);
    let work = t.path().join("work-ours/work");
    // Nothing staged is left behind; only the shared whiteout inode that
    // every whiteout links to (as kernel overlayfs keeps one) may remain.
    let left: Vec<_> = fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "#lfs-whiteout")
        .collect();
    assert_eq!(left.len(), 0, "nothing left in the work dir: {left:?}");
}

#[test]
fn concurrent_writers_copy_up_once() {
    require_root!();
    let t = tmp();
    let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
    let big: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 253) as u8).collect();
    write(&l1.join("shared"), &big);
    write(&l0.join("x"), b"x");
    let (opts, _u, w) = rw_opts(t.path(), &[l0, l1], "");
    let m = try_mount_layerfs(&opts, &t.path().join("m")).unwrap();
    let path = m.path("shared");
    let threads: Vec<_> = (0..8u64)
        .map(|i| {
            let p = path.clone();
            std::thread::spawn(move || {
                use std::os::unix::fs::FileExt;
                let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
                f.write_at(&[i as u8; 4], i * 1_000_000).unwrap();
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let data = fs::read(&path).unwrap();
    assert_eq!(data.len(), big.len());
    for i in 0..8u64 {
        let o = (i * 1_000_000) as usize;
        assert_eq!(
            &data[o..o + 4],
            &[i as u8; 4],
            "write {i} lost: copy-up ran twice"
        );
    }
    assert_eq!(fs::read_dir(w.join("work")).unwrap().count(), 0);
}

#[test]
fn new_files_get_the_callers_owner_and_setgid_group() {
    require_root!();
    let t = tmp();
    let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
    mkdir(&l1.join("shared"));
    chown(&l1.join("shared"), 0, 4242);
    chmod(&l1.join("shared"), 0o2777);
    write(&l0.join("x"), b"x");
    let pair = Pair::new(t.path(), vec![l0, l1]);
    for root in [pair.ours(), pair.kernel()] {
        let st = Command::new("setpriv")
            .args(["--reuid=1000", "--regid=1000", "--clear-groups", "sh", "-c"])
            .arg(format!(
                "umask 022; echo hi > {0}/shared/f && mkdir {0}/shared/sub && ln -s f {0}/shared/l",
                root.display()
            ))
            .status()
            .unwrap();
        assert!(st.success());
    }
    pair.assert_same("files made by uid 1000 in a setgid dir");
    let md = fs::metadata(pair.ours().join("shared/f")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o777), (1000, 4242, 0o644));
    assert_eq!(
        fs::metadata(pair.ours().join("shared/sub")).unwrap().mode() & 0o7777,
        0o2755
    );
}

#[test]
fn writes_clear_setuid_and_capabilities_as_the_kernel_does() {
    require_root!();
    writes_clear_privileges(Variant::default());
}

#[test]
fn writes_clear_setuid_and_capabilities_with_the_writeback_cache() {
    require_root!();
    writes_clear_privileges(Variant {
        extra: "passthrough=off",
        ..Variant::default()
    });
}

fn writes_clear_privileges(v: Variant) {
    let t = tmp();
    let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
    mkdir(&l1);
    // name, mode, who writes (uid), how ("append" or "truncate")
    let cases: &[(&str, u32, u32, &str)] = &[
        ("suid-by-user", 0o4777, 1000, "append"),
        ("sgid-gx-by-user", 0o2777, 1000, "append"),
        ("sgid-no-gx-by-user", 0o2767, 1000, "append"),
        ("sgid-no-gx-by-member", 0o2767, 1000, "append"),
        ("suid-by-root", 0o4777, 0, "append"),
        ("suid-truncated-by-user", 0o4777, 1000, "truncate"),
    ];
    for (name, mode, _, _) in cases {
        write(&l0.join(name), b"lower\n");
        chmod(&l0.join(name), *mode);
    }
    chown(&l0.join("sgid-no-gx-by-member"), 0, 1000);
    // security.capability (v2: all-zero sets) goes with any write.
    write(&l0.join("capable"), b"lower\n");
    let mut cap = 0x0200_0000u32.to_le_bytes().to_vec();
    cap.resize(20, 0);
    setxattr(&l0.join("capable"), "security.capability", &cap);
    let pair = Pair::with(t.path(), vec![l0, l1], v);
    for root in [pair.ours(), pair.kernel()] {
        // An upper file made setuid through the mount, then written.
        let up = root.join("upper-suid");
        write(&up, b"upper\n");
        chmod(&up, 0o4777);
        let mut script = format!("echo more >> {}\n", up.display());
        for (name, _, uid, how) in cases {
            let p = root.join(name);
            let cmd = match *how {
                "append" => format!("echo more >> {}", p.display()),
                _ => format!("truncate -s 0 {}", p.display()),
            };
            script +=
                &format!("setpriv --reuid={uid} --regid={uid} --clear-groups sh -c '{cmd}'\n");
        }
        script += &format!("echo more >> {}\n", root.join("capable").display());
        // The user part of the first line runs as root: redo it as a user.
        let script = script.replacen(
            &format!("echo more >> {}", up.display()),
            &format!(
                "setpriv --reuid=1000 --regid=1000 --clear-groups sh -c 'echo more >> {}'",
                up.display()
            ),
            1,
        );
        let out = Command::new("sh").arg("-ec").arg(&script).output().unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
    }
    // Modes as the mount shows them right away (the kernel's cached
    // attributes must have been refreshed), against kernel overlayfs.
    let mode = |root: &Path, name: &str| fs::metadata(root.join(name)).unwrap().mode() & 0o7777;
    for name in cases.iter().map(|c| c.0).chain(["upper-suid", "capable"]) {
        assert_eq!(
            mode(pair.ours(), name),
            mode(pair.kernel(), name),
            "{name}: layerfs vs kernel overlayfs"
        );
    }
    assert_eq!(mode(pair.ours(), "suid-by-user"), 0o777);
    // Setgid without group execute stays only for a member of the group.
    assert_eq!(mode(pair.ours(), "sgid-no-gx-by-user"), 0o767);
    assert_eq!(mode(pair.ours(), "sgid-no-gx-by-member"), 0o2767);
    assert_eq!(mode(pair.ours(), "suid-by-root"), 0o4777);
    assert_eq!(mode(pair.ours(), "upper-suid"), 0o777);
    let caps = |root: &Path| getxattr(&root.join("capable"), "security.capability").is_ok();
    assert!(
        !caps(pair.kernel()),
        "the kernel drops capabilities on write"
    );
    assert!(!caps(pair.ours()), "so must layerfs");
    pair.assert_same("after writes that drop privileges");
}

/// A mount over one lower file `name` under `base`; returns it and its upper dir.
fn mount_one_lower_file(base: &Path, name: &str, content: &[u8]) -> (Mounted, PathBuf) {
    let l0 = base.join("l0");
    write(&l0.join(name), content);
    let (opts, u, _w) = rw_opts(base, &[l0], "");
    (try_mount_layerfs(&opts, &base.join("m")).unwrap(), u)
}

#[test]
fn capability_set_after_copy_up_is_seen_and_dropped_by_a_write() {
    // A copy-up of a file without capabilities remembers that it has none
    // (the kernel asks at every write): a capability set through the mount
    // afterwards must still be seen, and dropped by the next write.
    require_root!();
    let t = tmp();
    let (m, u) = mount_one_lower_file(t.path(), "tool", b"lower\n");
    let p = m.path("tool");
    fs::OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap()
        .write_all(b"up\n")
        .unwrap();
    assert_eq!(
        getxattr(&p, "security.capability").map_err(|e| e.raw_os_error()),
        Err(Some(libc::ENODATA))
    );
    let mut cap = 0x0200_0000u32.to_le_bytes().to_vec();
    cap.resize(20, 0);
    setxattr(&p, "security.capability", &cap);
    assert_eq!(getxattr(&p, "security.capability").unwrap(), cap);
    assert_eq!(
        getxattr(&u.join("tool"), "security.capability").unwrap(),
        cap
    );
    fs::OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap()
        .write_all(b"more\n")
        .unwrap();
    assert!(
        getxattr(&u.join("tool"), "security.capability").is_err(),
        "a write drops the capability, as with kernel overlayfs"
    );
    assert!(getxattr(&p, "security.capability").is_err());
    assert_eq!(fs::read(&p).unwrap(), b"lower\nup\nmore\n");
}

#[test]
fn ioctls_are_not_served() {
    // ENOTTY, as a regular file of kernel overlayfs answers TCGETS (isatty).
    require_root!();
    let t = tmp();
    let (m, _u) = mount_one_lower_file(t.path(), "f", b"x");
    // stty asks TCGETS; a lower file, then its copy (opened for writing).
    for path in [m.path("f"), m.path("f")] {
        let out = Command::new("stty").arg("-F").arg(&path).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains("Inappropriate ioctl for device"), "{err}");
        fs::OpenOptions::new().append(true).open(&path).unwrap();
    }
}

#[test]
fn crash_during_copy_up_leaves_old_or_new_content() {
    require_root!();
    let t = tmp();
    let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
    let big: Vec<u8> = (0..(256u32 << 20) / 4)
        .flat_map(|i| i.to_le_bytes())
        .collect();
    write(&l1.join("big"), &big);
    write(&l0.join("x"), b"x");
    drop(big);
    let (opts, u, w) = rw_opts(t.path(), &[l0, l1.clone()], "volatile");
    let mnt = t.path().join("m");
    for delay_ms in [5u64, 40, 150] {
        let mut m = try_mount_layerfs(&opts, &mnt).unwrap();
        let daemon = daemon_pid(&mnt).expect("daemon pid");
        let p = m.path("big");
        let writer = std::thread::spawn(move || {
            // Opening for write copies the 256 MiB file up.
            let r = fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .and_then(|mut f| f.write_all(b"NEW!"));
            r.is_ok()
        });
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        Command::new("kill")
            .args(["-9", &daemon.to_string()])
            .status()
            .unwrap();
        let _ = writer.join();
        m.unmount();
        let m = try_mount_layerfs(&opts, &mnt).unwrap();
        let got = fs::read(m.path("big")).unwrap();
        let lower = fs::read(l1.join("big")).unwrap();
        assert_eq!(got.len(), lower.len(), "delay {delay_ms}: size");
        assert!(
            got[4..] == lower[4..] && (got[..4] == lower[..4] || &got[..4] == b"NEW!"),
            "delay {delay_ms}: partial copy-up visible"
        );
        assert_eq!(
            fs::read_dir(w.join("work")).unwrap().count(),
            0,
            "leftovers cleaned at mount"
        );
        drop(m);
        let _ = fs::remove_file(u.join("big"));
    }
}

#[test]
fn file_locks_work_across_processes() {
    require_root!();
    let t = tmp();
    let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
    write(&l1.join("lockfile"), b"");
    write(&l0.join("x"), b"x");
    let pair = Pair::new(t.path(), vec![l0, l1]);
    let f = pair.ours().join("lockfile");
    let holder = Command::new("flock")
        .arg(&f)
        .args(["sleep", "2"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let try_lock = Command::new("flock")
        .args(["-n"])
        .arg(&f)
        .arg("true")
        .status()
        .unwrap();
    assert!(
        !try_lock.success(),
        "a second process must not get the lock"
    );
    let mut holder = holder;
    holder.wait().unwrap();
    let again = Command::new("flock")
        .args(["-n"])
        .arg(&f)
        .arg("true")
        .status()
        .unwrap();
    assert!(again.success());
}

fn rw_opts(base: &Path, lowers: &[PathBuf], extra: &str) -> (String, PathBuf, PathBuf) {
    rw_opts_tagged(base, "", lowers, extra)
}

#[test]
fn lower_hardlinks_stay_hardlinks_after_copy_up() {
    require_root!();
    let t = tmp();
    let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
    write(&l1.join("a"), b"shared");
    fs::hard_link(l1.join("a"), l1.join("b")).unwrap();
    mkdir(&l1.join("dir"));
    fs::hard_link(l1.join("a"), l1.join("dir/c")).unwrap();
    write(&l0.join("x"), b"x");
    let (opts, _u, _w) = rw_opts(t.path(), &[l0, l1.clone()], "");
    let mnt = t.path().join("m");
    let mut m = try_mount_layerfs(&opts, &mnt).unwrap();
    let ino = fs::metadata(m.path("a")).unwrap().ino();
    fs::OpenOptions::new()
        .append(true)
        .open(m.path("a"))
        .unwrap()
        .write_all(b"+more")
        .unwrap();
    for n in ["a", "b", "dir/c"] {
        let md = fs::metadata(m.path(n)).unwrap();
        assert_eq!(
            fs::read(m.path(n)).unwrap(),
            b"shared+more",
            "{n} must see the write"
        );
        assert_eq!((md.ino(), md.nlink()), (ino, 3), "{n}");
    }
    fs::remove_file(m.path("b")).unwrap();
    assert_eq!(fs::metadata(m.path("a")).unwrap().nlink(), 2);
    fs::hard_link(m.path("a"), m.path("e")).unwrap();
    fs::rename(m.path("dir/c"), m.path("f")).unwrap();
    assert_eq!(fs::metadata(m.path("a")).unwrap().nlink(), 3);
    m.unmount();
    let m = try_mount_layerfs(&opts, &mnt).unwrap();
    for n in ["a", "e", "f"] {
        let md = fs::metadata(m.path(n)).unwrap();
        assert_eq!(
            fs::read(m.path(n)).unwrap(),
            b"shared+more",
            "{n} after remount"
        );
        assert_eq!((md.ino(), md.nlink()), (ino, 3), "{n} after remount");
    }
    assert!(!m.path("b").exists() && !m.path("dir/c").exists());
    assert_eq!(
        fs::read(l1.join("b")).unwrap(),
        b"shared",
        "lower untouched"
    );
}

#[test]
fn metacopy_changes_metadata_without_copying_data() {
    require_root!();
    let t = tmp();
    let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
    let big: Vec<u8> = (0..(32u32 << 20)).map(|i| (i % 241) as u8).collect();
    write(&l1.join("dir/big"), &big);
    write(&l0.join("x"), b"x");
    let lowers = vec![l0, l1.clone()];
    let (opts, u, w) = rw_opts(t.path(), &lowers, "metacopy=on");
    let mnt = t.path().join("m");
    let mut m = try_mount_layerfs(&opts, &mnt).unwrap();
    let ino = fs::metadata(m.path("dir/big")).unwrap().ino();
    chown(&m.path("dir/big"), 1000, 1000);
    chmod(&m.path("dir/big"), 0o600);
    setxattr(&m.path("dir/big"), "user.tag", b"meta");
    let md = fs::metadata(u.join("dir/big")).unwrap();
    assert_eq!(md.len(), big.len() as u64);
    assert!(
        md.blocks() < 64,
        "metadata-only copy-up must not copy data ({} blocks)",
        md.blocks()
    );
    let x = Command::new("getfattr")
        .args(["-d", "-m", "trusted.overlay"])
        .arg(u.join("dir/big"))
        .output()
        .unwrap();
    let xs = String::from_utf8_lossy(&x.stdout);
    assert!(
        xs.contains("trusted.overlay.metacopy") && xs.contains("trusted.overlay.origin"),
        "{xs}"
    );
    let mmd = fs::metadata(m.path("dir/big")).unwrap();
    assert_eq!(
        (mmd.uid(), mmd.mode() & 0o777, mmd.ino()),
        (1000, 0o600, ino)
    );
    assert_eq!(fs::read(m.path("dir/big")).unwrap(), big);
    m.unmount();
    {
        // Kernel overlayfs with metacopy=on reads the same upper.
        let k = mount_kernel(
            &lowers,
            &t.path().join("k"),
            &format!(
                "upperdir={},workdir={},metacopy=on,redirect_dir=on,index=off",
                u.display(),
                w.display()
            ),
        );
        let kmd = fs::metadata(k.path("dir/big")).unwrap();
        assert_eq!(
            (kmd.uid(), kmd.mode() & 0o777, kmd.len()),
            (1000, 0o600, big.len() as u64)
        );
        assert_eq!(fs::read(k.path("dir/big")).unwrap(), big);
    }
    let m = try_mount_layerfs(&opts, &mnt).unwrap();
    assert_eq!(fs::read(m.path("dir/big")).unwrap(), big, "after remount");
    fs::OpenOptions::new()
        .append(true)
        .open(m.path("dir/big"))
        .unwrap()
        .write_all(b"tail")
        .unwrap();
    let md = fs::metadata(u.join("dir/big")).unwrap();
    assert!(
        md.blocks() * 512 >= big.len() as u64,
        "open for write copies the data"
    );
    let x = Command::new("getfattr")
        .args(["-d", "-m", "trusted.overlay"])
        .arg(u.join("dir/big"))
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&x.stdout).contains("metacopy"));
    let got = fs::read(m.path("dir/big")).unwrap();
    assert_eq!(&got[..big.len()], &big[..]);
    assert_eq!(&got[big.len()..], b"tail");
    assert_eq!(fs::metadata(m.path("dir/big")).unwrap().ino(), ino);
}

#[test]
fn fallocate_seek_hole_and_copy_file_range() {
    require_root!();
    let t = tmp();
    let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
    write(&l1.join("src"), &vec![7u8; 1 << 20]);
    write(&l0.join("x"), b"x");
    let (opts, u, _w) = rw_opts(t.path(), &[l0, l1], "");
    let m = try_mount_layerfs(&opts, &t.path().join("m")).unwrap();
    use std::os::fd::AsFd;
    // The same calls on a file of the mount and on a plain file of the
    // filesystem below give the same answers.
    let seek_results = |path: &Path| -> (u64, i64, i64) {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .unwrap();
        layerfs::sys::fallocate(f.as_fd(), 0, 0, 65536).unwrap();
        layerfs::sys::pwrite(f.as_fd(), b"end", (8 << 20) - 3).unwrap();
        let hole = layerfs::sys::lseek(f.as_fd(), 0, libc::SEEK_HOLE).unwrap();
        let data = layerfs::sys::lseek(f.as_fd(), 65536, libc::SEEK_DATA).unwrap();
        (f.metadata().unwrap().len(), hole, data)
    };
    let ours = seek_results(&m.path("holey"));
    let native = seek_results(&t.path().join("native-holey"));
    assert_eq!(ours, native);
    assert_eq!(ours.0, 8 << 20);
    assert!(ours.2 > 65536, "SEEK_DATA skips the hole: {ours:?}");
    let src = fs::File::open(m.path("src")).unwrap();
    let dst = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("copy"))
        .unwrap();
    let mut done = 0;
    while done < 1 << 20 {
        let n = layerfs::sys::copy_file_range(
            src.as_fd(),
            done,
            dst.as_fd(),
            done,
            (1 << 20) - done as usize,
        )
        .unwrap();
        assert!(n > 0);
        done += n as u64;
    }
    drop(dst);
    assert_eq!(fs::read(m.path("copy")).unwrap(), vec![7u8; 1 << 20]);
    assert_eq!(fs::read(u.join("copy")).unwrap().len(), 1 << 20);
    assert!(
        !u.join("src").exists(),
        "reading a lower file copies nothing up"
    );
}

#[test]
fn deleting_while_reading_a_big_directory_sees_every_entry_once() {
    require_root!();
    let t = tmp();
    let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
    for i in 0..3000 {
        write(
            &l1.join(format!("big/lower-{i:04}-with-a-longish-name")),
            b"",
        );
    }
    for i in 0..1000 {
        write(
            &l0.join(format!("big/upper-{i:04}-with-a-longish-name")),
            b"",
        );
    }
    let (opts, _u, _w) = rw_opts(t.path(), &[l0, l1], "");
    let m = try_mount_layerfs(&opts, &t.path().join("m")).unwrap();
    // Unlink each entry as soon as readdir returns it: the listing spans
    // many readdir calls, and every one of them sees a changed directory.
    let mut seen = std::collections::HashSet::new();
    for e in fs::read_dir(m.path("big")).unwrap() {
        let e = e.unwrap();
        assert!(
            seen.insert(e.file_name()),
            "{:?} returned twice",
            e.file_name()
        );
        fs::remove_file(e.path()).unwrap();
    }
    assert_eq!(seen.len(), 4000);
    assert_eq!(fs::read_dir(m.path("big")).unwrap().count(), 0);
    fs::remove_dir(m.path("big")).unwrap();
}

#[test]
fn copying_up_more_files_than_the_open_file_limit() {
    require_root!();
    let t = tmp();
    let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
    for d in 0..6 {
        for f in 0..300 {
            write(&l1.join(format!("d{d}/f{f}")), b"x");
        }
    }
    write(&l0.join("x"), b"x");
    let (opts, u, _w) = rw_opts(t.path(), &[l0, l1], "");
    // At most 256 fds for the daemon: an fd per copied-up file would run out.
    let m = mount_layerfs_with_nofile(&opts, &t.path().join("m"), 256);
    let st = Command::new("chown")
        .args(["-R", "1234:1234"])
        .arg(&m.dir)
        .status()
        .unwrap();
    assert!(st.success(), "chown -R over 1800 lower files");
    for d in 0..6 {
        for f in (0..300).step_by(37) {
            let md = fs::metadata(m.path(&format!("d{d}/f{f}"))).unwrap();
            assert_eq!(md.uid(), 1234);
            assert_eq!(
                fs::metadata(u.join(format!("d{d}/f{f}"))).unwrap().uid(),
                1234
            );
        }
    }
    // A file unlinked while open stays usable through its descriptor.
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("d0/f1"))
        .unwrap();
    fs::remove_file(m.path("d0/f1")).unwrap();
    f.write_all(b"still here").unwrap();
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    assert!(!m.path("d0/f1").exists());
}
