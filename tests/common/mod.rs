//! Shared fixtures for mounted tests: layer builders, mount guards that
//! always unmount (even when the test panics), and tree snapshots to compare
//! a layerfs mount with kernel overlayfs.
#![allow(dead_code)]

pub mod gluster;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `layerfs` binary: cargo names it to this package's tests; the
/// volume crate's tests (which share these helpers) find it in the target
/// dir, where a workspace build puts it.
pub fn layerfs_bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    match option_env!("CARGO_BIN_EXE_layerfs") {
        Some(bin) => bin,
        None => BIN.get_or_init(|| workspace_bin("layerfs")),
    }
}

/// The `layerfs-volume` binary, built by the volume crate of the workspace.
pub fn layerfs_volume_bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    match option_env!("CARGO_BIN_EXE_layerfs-volume") {
        Some(bin) => bin,
        None => BIN.get_or_init(|| workspace_bin("layerfs-volume")),
    }
}

/// A binary of another package of the workspace: cargo puts every member's
/// binaries in one directory, the parent of the test's own `deps/`. Only
/// a build of the whole workspace (`cargo test`, whose default members are
/// both) makes it, and makes it current.
fn workspace_bin(name: &str) -> String {
    let exe = std::env::current_exe().expect("the test's own path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/PROFILE/deps/TEST")
        .join(name);
    assert!(
        bin.is_file(),
        "{} is missing: build the workspace (cargo test --workspace), not one package",
        bin.display()
    );
    bin.into_os_string()
        .into_string()
        .expect("UTF-8 target dir")
}

/// Whether a command is on PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

pub fn is_root() -> bool {
    layerfs::sys::geteuid() == 0
}

/// Whether a test that cannot run here must fail rather than skip:
/// `LAYERFS_REQUIRE_ALL` decides when set (`0` allows skips), else `CI`
/// (which CI systems and `.ci/run` export) does. Nothing is green by
/// accident in CI: a missing tool or privilege is a failure there.
pub fn must_run_all() -> bool {
    let var = |name| std::env::var(name).ok();
    require_all(var("LAYERFS_REQUIRE_ALL").as_deref(), var("CI").as_deref())
}

/// The rule of `must_run_all`, given the two variables' values.
pub fn require_all(layerfs_require_all: Option<&str>, ci: Option<&str>) -> bool {
    let yes = |v: &str| !matches!(v.trim(), "" | "0" | "false" | "no");
    match layerfs_require_all {
        Some(v) if !v.trim().is_empty() => yes(v),
        _ => ci.is_some_and(yes),
    }
}

/// The Debian package that provides `tool`, for messages.
fn package_of(tool: &str) -> &str {
    match tool {
        "fusermount3" => "fuse3",
        "setfattr" | "getfattr" => "attr",
        "newuidmap" | "newgidmap" => "uidmap",
        "busybox" => "busybox-static",
        "dpkg-deb" => "dpkg",
        "setpriv" | "unshare" | "nsenter" | "prlimit" | "losetup" => "util-linux",
        "mount" | "umount" => "mount",
        "mkfs.ext2" | "mkfs.ext4" => "e2fsprogs",
        "xfs_io" => "xfsprogs",
        other => other,
    }
}

/// What this machine lacks to run a mounted test using `tools`, or None:
/// root, /dev/fuse, and each tool on PATH (`busybox` means a busybox
/// binary a container image can use, as `busybox()` finds it).
pub fn missing(tools: &[&str]) -> Option<String> {
    let mut lacks = Vec::new();
    if !is_root() {
        lacks.push("root".to_string());
    }
    if !Path::new("/dev/fuse").exists() {
        lacks.push("/dev/fuse".to_string());
    }
    for tool in tools {
        let found = match *tool {
            "busybox" => busybox().is_some(),
            t => have(t),
        };
        if !found {
            lacks.push(match package_of(tool) {
                same if same == *tool => same.to_string(),
                package => format!("{tool} (package {package})"),
            });
        }
    }
    (!lacks.is_empty()).then(|| format!("needs {}", lacks.join(", ")))
}

/// Reports a test that cannot run here: a SKIP line on a developer's
/// machine (the caller then returns), a failure naming `why` when
/// `must_run_all()`. Every skip of the suite goes through here.
pub fn cannot_run(why: &str) {
    if must_run_all() {
        panic!(
            "cannot run: {why}. Every test must run when CI or LAYERFS_REQUIRE_ALL \
             is set (LAYERFS_REQUIRE_ALL=0 allows skips): run the suite as root \
             with scripts/test.sh, which installs the packages the tests use"
        );
    }
    eprintln!("SKIP: {why}");
    note_skip();
}

/// Appends this test to the file `LAYERFS_SKIP_LOG` names, if set, as
/// `BINARY TEST` (the test binary's file name, and libtest's name of the
/// test's thread, which is the test's path): cargo shows nothing of a
/// passing test, so this is how `scripts/test.sh` counts a test that
/// returned early as skipped, not passed.
fn note_skip() {
    let Some(log) = std::env::var_os("LAYERFS_SKIP_LOG") else {
        return;
    };
    let exe = std::env::current_exe().ok();
    let bin = exe
        .as_deref()
        .and_then(Path::file_name)
        .map_or("?".into(), |n| n.to_string_lossy());
    let thread = std::thread::current();
    let line = format!("{bin} {}\n", thread.name().unwrap_or("?"));
    // One write of a short line to a file opened for appending: lines of
    // tests running at once do not mix.
    let written = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| io::Write::write_all(&mut f, line.as_bytes()));
    if let Err(e) = written {
        eprintln!("cannot note the skip in {}: {e}", log.to_string_lossy());
    }
}

/// Returns from the test unless it can run here (root, /dev/fuse and each
/// tool named); fails instead under CI (see `cannot_run`).
#[macro_export]
macro_rules! require {
    ($($tool:expr),* $(,)?) => {
        if let Some(why) = common::missing(&[$($tool),*]) {
            common::cannot_run(&why);
            return;
        }
    };
}

/// Returns from the test unless it runs as root with /dev/fuse, as the
/// mounted tests need; fails instead under CI (see `cannot_run`).
#[macro_export]
macro_rules! require_root {
    () => {
        $crate::require!()
    };
}

/// The OCI runtimes installed here, of runc and crun: a developer's machine
/// runs the tests with the ones it has, CI needs both.
pub fn oci_runtimes() -> Vec<&'static str> {
    let (found, lacking): (Vec<&str>, Vec<&str>) =
        ["runc", "crun"].into_iter().partition(|r| have(r));
    if found.is_empty() || (!lacking.is_empty() && must_run_all()) {
        cannot_run(&format!("needs the OCI runtimes {}", lacking.join(" and ")));
    }
    found
}

pub fn is_mounted(dir: &Path) -> bool {
    let Ok(canon) = dir.canonicalize() else {
        return false;
    };
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let want = canon.to_string_lossy().replace(' ', "\\040");
    mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(want.as_str()))
}

/// The pid of the layerfs daemon serving `mnt`, found by its command line.
pub fn daemon_pid(mnt: &Path) -> Option<u32> {
    let canon = mnt.canonicalize().ok()?;
    for e in fs::read_dir("/proc").ok()? {
        let e = e.ok()?;
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if args.first().is_some_and(|a| a.ends_with(b"layerfs"))
            && args.contains(&canon.as_os_str().as_bytes())
        {
            return Some(pid);
        }
    }
    None
}

/// A command's stdout and stderr as one text, for messages and checks.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A mount that is undone when the guard drops.
pub struct Mounted {
    pub dir: PathBuf,
}

impl Mounted {
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Unmounts now (the guard then has nothing left to do).
    pub fn unmount(&mut self) {
        if !is_mounted(&self.dir) {
            return;
        }
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_mounted(&self.dir) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// Runs `layerfs` with `opts` on `mnt`; it returns once the mount is up.
pub fn try_mount_layerfs(opts: &str, mnt: &Path) -> io::Result<Mounted> {
    try_mount_layerfs_env(opts, mnt, &[])
}

/// As `try_mount_layerfs`, with extra environment for the daemon.
pub fn try_mount_layerfs_env(opts: &str, mnt: &Path, env: &[(&str, &str)]) -> io::Result<Mounted> {
    // A dead mount there answers ENOTCONN: leave it for layerfs to clear.
    if let Err(e) = fs::symlink_metadata(mnt) {
        if e.kind() == io::ErrorKind::NotFound {
            fs::create_dir_all(mnt)?;
        }
    }
    let out = Command::new(layerfs_bin())
        .arg("-o")
        .arg(opts)
        .arg(mnt)
        .envs(env.iter().copied())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "layerfs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    assert!(
        is_mounted(mnt),
        "layerfs returned 0 but {mnt:?} is not mounted"
    );
    Ok(Mounted {
        dir: mnt.to_path_buf(),
    })
}

/// `lowerdir=…`, escaped by the parser's own rule.
pub fn lowerdir_opt(lowers: &[PathBuf]) -> String {
    layerfs::options::encode_stack(lowers, None).expect("UTF-8 test paths")
}

/// `lowerdir=…,upperdir=…,workdir=…` for a writable stack.
pub fn stack_opts(lowers: &[PathBuf], upper: &Path, work: &Path) -> String {
    layerfs::options::encode_stack(lowers, Some((upper, work))).expect("UTF-8 test paths")
}

pub fn mount_layerfs(lowers: &[PathBuf], mnt: &Path) -> Mounted {
    try_mount_layerfs(&lowerdir_opt(lowers), mnt).expect("mount layerfs")
}

/// Mounts kernel overlayfs read-only over the same lowers (needs at least
/// two, as the kernel does without an upper).
pub fn mount_kernel(lowers: &[PathBuf], mnt: &Path, extra: &str) -> Mounted {
    fs::create_dir_all(mnt).unwrap();
    let mut opts = lowerdir_opt(lowers);
    if !extra.is_empty() {
        opts.push(',');
        opts.push_str(extra);
    }
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(mnt)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "kernel overlay mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Mounted {
        dir: mnt.to_path_buf(),
    }
}

/// What a snapshot records of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub size: u64,
    pub mtime: (i64, i64),
    pub rdev: u64,
    pub ino: u64,
    pub content: Option<Vec<u8>>,
    pub target: Option<Vec<u8>>,
    /// user.* xattrs, the overlay private ones excluded.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Which fields a comparison looks at.
#[derive(Debug, Clone, Copy)]
pub struct Compare {
    pub ino: bool,
    pub nlink: bool,
    pub mtime: bool,
    /// Directory mtimes (which differ in converted copies of a layer).
    pub dir_mtime: bool,
}

impl Compare {
    pub const ALL: Compare = Compare {
        ino: true,
        nlink: true,
        mtime: true,
        dir_mtime: true,
    };
    pub const CONTENT: Compare = Compare {
        ino: false,
        nlink: false,
        mtime: true,
        dir_mtime: false,
    };
}

fn kind_of(ft: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "chardev"
    } else {
        "blockdev"
    }
}

pub fn user_xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let Ok(fd) = layerfs::sys::open_path(p, libc::O_PATH | libc::O_NOFOLLOW) else {
        return out;
    };
    let list = layerfs::sys::listxattr_fd(std::os::fd::AsFd::as_fd(&fd)).unwrap_or_default();
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if !name.starts_with(b"user.") || name.starts_with(b"user.overlay.") {
            continue;
        }
        let c = std::ffi::CString::new(name).unwrap();
        let v = layerfs::sys::getxattr_fd(std::os::fd::AsFd::as_fd(&fd), &c).unwrap_or_default();
        out.insert(name.to_vec(), v);
    }
    out
}

/// Walks `root` without following symlinks.
pub fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, p: &Path, out: &mut BTreeMap<Vec<u8>, Node>) {
    let md = match fs::symlink_metadata(p) {
        Ok(md) => md,
        // Kernel overlayfs lists the whiteouts of a directory that comes
        // from one layer only, but a lookup of them fails: such a ghost is
        // not part of the visible tree (layerfs does not list it at all).
        Err(e) if e.kind() == io::ErrorKind::NotFound && p != root => return,
        Err(e) => panic!("lstat {p:?}: {e}"),
    };
    let kind = kind_of(md.file_type());
    let rel = p
        .strip_prefix(root)
        .unwrap()
        .as_os_str()
        .as_bytes()
        .to_vec();
    let node = Node {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        nlink: md.nlink(),
        size: if kind == "dir" { 0 } else { md.size() },
        mtime: (md.mtime(), md.mtime_nsec()),
        rdev: md.rdev(),
        ino: md.ino(),
        content: (kind == "file")
            .then(|| fs::read(p).unwrap_or_else(|e| panic!("read {p:?}: {e}"))),
        target: (kind == "symlink")
            .then(|| fs::read_link(p).unwrap().as_os_str().as_bytes().to_vec()),
        xattrs: user_xattrs(p),
    };
    out.insert(rel, node);
    if kind == "dir" {
        let mut names: Vec<_> = fs::read_dir(p)
            .unwrap_or_else(|e| panic!("readdir {p:?}: {e}"))
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            walk(root, &p.join(n), out);
        }
    }
}

/// Differences between two snapshots, one line each (empty when equal).
pub fn diff(a: &BTreeMap<Vec<u8>, Node>, b: &BTreeMap<Vec<u8>, Node>, cmp: Compare) -> Vec<String> {
    let mut d = Vec::new();
    let show = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
    for (k, na) in a {
        match b.get(k) {
            None => d.push(format!("only in first: {} {}", show(k), brief(na))),
            Some(nb) => {
                let mut x = na.clone();
                let mut y = nb.clone();
                if !cmp.ino {
                    x.ino = 0;
                    y.ino = 0;
                }
                if !cmp.nlink {
                    x.nlink = 0;
                    y.nlink = 0;
                }
                if !cmp.mtime || (!cmp.dir_mtime && x.kind == "dir") {
                    x.mtime = (0, 0);
                    y.mtime = (0, 0);
                }
                if x != y {
                    let mut xs = format!("{x:?}");
                    let mut ys = format!("{y:?}");
                    xs.truncate(400);
                    ys.truncate(400);
                    d.push(format!(
                        "differs: {}\n  first:  {xs}\n  second: {ys}",
                        show(k)
                    ));
                }
            }
        }
    }
    for (k, nb) in b {
        if !a.contains_key(k) {
            d.push(format!("only in second: {} {}", show(k), brief(nb)));
        }
    }
    d
}

/// A node as a diff line shows it (long contents cut).
fn brief(n: &Node) -> String {
    let mut s = format!("{n:?}");
    s.truncate(300);
    s
}

pub fn assert_same(a: &Path, b: &Path, cmp: Compare) {
    let d = diff(&snapshot(a), &snapshot(b), cmp);
    assert!(d.is_empty(), "trees differ:\n{}", d.join("\n"));
}

// ---- building layers -----------------------------------------------------

pub fn write(p: &Path, content: &[u8]) {
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(p, content).unwrap();
}

pub fn mkdir(p: &Path) {
    fs::create_dir_all(p).unwrap();
}

pub fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

pub fn link_sym(target: &str, p: &Path) {
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    symlink(target, p).unwrap();
}

pub fn mknod_whiteout(p: &Path) {
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    let st = Command::new("mknod")
        .arg(p)
        .args(["c", "0", "0"])
        .status()
        .unwrap();
    assert!(st.success(), "mknod {p:?}");
}

pub fn mkfifo(p: &Path) {
    let st = Command::new("mkfifo").arg(p).status().unwrap();
    assert!(st.success(), "mkfifo {p:?}");
}

pub fn setxattr(p: &Path, name: &str, value: &[u8]) {
    lsetxattr(p, name, value).unwrap_or_else(|e| panic!("setxattr {name} on {p:?}: {e}"));
}

/// lsetxattr(2): sets xattr `name` of `p` itself, not of a symlink's
/// target (through an O_PATH fd, which names the symlink).
pub fn lsetxattr(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let fd = layerfs::sys::open_path(p, libc::O_PATH | libc::O_NOFOLLOW)?;
    let c = std::ffi::CString::new(name).map_err(io::Error::other)?;
    layerfs::sys::setxattr_fd(std::os::fd::AsFd::as_fd(&fd), &c, value, 0)
}

/// The value of xattr `name` of `p` (not following a symlink).
pub fn getxattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    let fd = layerfs::sys::open_path(p, libc::O_PATH | libc::O_NOFOLLOW)?;
    let c = std::ffi::CString::new(name).unwrap();
    layerfs::sys::getxattr_fd(std::os::fd::AsFd::as_fd(&fd), &c)
}

/// Where Debian's busybox-static puts its binary, if installed.
pub fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

pub fn set_opaque(p: &Path) {
    setxattr(p, "trusted.overlay.opaque", b"y");
}

/// A byte-exact record of a tree (content, modes, owners, xattrs, times),
/// to prove the lower layers were not modified.
pub fn fingerprint(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    // atime is not recorded; every other field must stay equal.
    snapshot(root)
}

/// The OCI twins of `layers`, made under `base` as oci0, oci1, ...
pub fn oci_twins(layers: &[PathBuf], base: &Path) -> Vec<PathBuf> {
    layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let dst = base.join(format!("oci{i}"));
            to_oci(l, &dst);
            dst
        })
        .collect()
}

/// Mounts layerfs with its open-file limit set to `nofile`.
pub fn mount_layerfs_with_nofile(opts: &str, mnt: &Path, nofile: u32) -> Mounted {
    fs::create_dir_all(mnt).unwrap();
    let out = Command::new("prlimit")
        .arg(format!("--nofile={nofile}:{nofile}"))
        .arg(layerfs_bin())
        .args(["-o", opts])
        .arg(mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Mounted {
        dir: mnt.to_path_buf(),
    }
}

/// Converts a kernel-format layer tree into its OCI twin: char 0/0
/// whiteouts become `.wh.NAME` files and opaque dirs get `.wh..wh..opq`.
pub fn to_oci(src: &Path, dst: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success());
    convert_dir(dst);
}

fn convert_dir(dir: &Path) {
    let opaque = {
        let fd = layerfs::sys::open_path(dir, libc::O_PATH).unwrap();
        layerfs::sys::getxattr_fd(std::os::fd::AsFd::as_fd(&fd), c"trusted.overlay.opaque")
            .map(|v| v == b"y")
            .unwrap_or(false)
    };
    if opaque {
        remove_opaque_xattr(dir);
        fs::write(dir.join(".wh..wh..opq"), b"").unwrap();
    }
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        let md = e.metadata().unwrap();
        use std::os::unix::fs::FileTypeExt;
        if ft.is_char_device() && md.rdev() == 0 {
            let mut wh = b".wh.".to_vec();
            wh.extend_from_slice(e.file_name().as_bytes());
            fs::remove_file(e.path()).unwrap();
            fs::write(dir.join(OsStr::from_bytes(&wh)), b"").unwrap();
        } else if ft.is_dir() {
            convert_dir(&e.path());
        }
    }
}

/// A small deterministic PRNG (xorshift64*), so random stacks are
/// reproducible from their seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Fills `dir` (one layer) with a random tree over a small pool of names,
/// so that layers collide: files, dirs (some opaque), symlinks, fifos,
/// whiteouts, user xattrs, odd modes and owners.
pub fn random_layer(rng: &mut Rng, dir: &Path, depth: u32, is_bottom: bool) {
    const NAMES: &[&str] = &["a", "b", "c", "d", "e", "f"];
    mkdir(dir);
    for name in NAMES {
        if !rng.chance(45) {
            continue;
        }
        let p = dir.join(name);
        let roll = rng.below(100);
        if roll < 35 {
            let len = rng.below(3000) as usize;
            let content: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            write(&p, &content);
            chmod(&p, *rng.pick(&[0o644, 0o600, 0o755, 0o4755, 0o640]));
            if rng.chance(20) {
                chown(&p, 1000, 1000);
            }
            if rng.chance(20) {
                setxattr(&p, "user.test", format!("v{}", rng.below(9)).as_bytes());
            }
        } else if roll < 65 && depth > 0 {
            random_layer(rng, &p, depth - 1, is_bottom);
            chmod(&p, *rng.pick(&[0o755, 0o700, 0o1777, 0o750]));
            if rng.chance(15) {
                set_opaque(&p);
            }
            if rng.chance(15) {
                setxattr(&p, "user.dir", b"yes");
            }
        } else if roll < 75 {
            let target = rng.pick(&["a", "../b", "/nonexistent/target", "d/e"]);
            link_sym(target, &p);
        } else if roll < 80 {
            mkfifo(&p);
        } else if !is_bottom {
            mknod_whiteout(&p);
        }
    }
}

/// Builds a random stack of `n` layers under `base` (l0 is the top).
pub fn random_stack(seed: u64, n: usize, base: &Path) -> Vec<PathBuf> {
    let mut rng = Rng::new(seed);
    let mut layers = Vec::new();
    for i in 0..n {
        let dir = base.join(format!("l{i}"));
        random_layer(&mut rng, &dir, 3, i == n - 1);
        layers.push(dir);
    }
    layers
}

/// An OCI bundle (made by `runtime spec`) whose root is `rootfs`, running
/// `script` with sh.
pub fn oci_bundle(dir: &Path, rootfs: &Path, script: &str, runtime: &str) {
    mkdir(dir);
    let st = Command::new(runtime)
        .arg("spec")
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success());
    let spec = fs::read_to_string(dir.join("config.json")).unwrap();
    let script_json = script.replace('\\', "\\\\").replace('"', "\\\"");
    let spec = spec
        .replace("\"terminal\": true", "\"terminal\": false")
        .replace(
            "\"args\": [\n\t\t\t\"sh\"\n\t\t]",
            &format!("\"args\": [\"/bin/sh\", \"-c\", \"{script_json}\"]"),
        )
        .replace(
            "\"path\": \"rootfs\"",
            &format!("\"path\": \"{}\"", rootfs.display()),
        )
        .replace("\"readonly\": true", "\"readonly\": false");
    assert!(
        spec.contains("/bin/sh"),
        "runc spec changed its layout:\n{spec}"
    );
    fs::write(dir.join("config.json"), spec).unwrap();
}

/// The entries of each layer of a `docker-archive` image tarball, bottom
/// layer first (unpacked into `scratch`).
pub fn archive_layers(tar: &Path, scratch: &Path) -> Vec<Vec<String>> {
    mkdir(scratch);
    assert!(Command::new("tar")
        .arg("xf")
        .arg(tar)
        .arg("-C")
        .arg(scratch)
        .status()
        .unwrap()
        .success());
    let manifest = fs::read_to_string(scratch.join("manifest.json")).unwrap();
    let layers = manifest
        .split("\"Layers\":[")
        .nth(1)
        .unwrap()
        .split(']')
        .next()
        .unwrap();
    layers
        .split(',')
        .map(|l| l.trim_matches('"'))
        .map(|l| {
            let out = Command::new("tar")
                .arg("tf")
                .arg(scratch.join(l))
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|s| s.trim_start_matches("./").to_string())
                .collect()
        })
        .collect()
}

/// Rewrites a layer's `trusted.overlay.opaque` marks as
/// `user.overlay.opaque`, the form a rootless (`userxattr`) stack has.
pub fn to_user_xattrs(dir: &Path) {
    if let Ok(v) = getxattr(dir, "trusted.overlay.opaque") {
        remove_opaque_xattr(dir);
        setxattr(dir, "user.overlay.opaque", &v);
    }
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            to_user_xattrs(&e.path());
        }
    }
}

/// Runs the OCI bundle `bundle` as container `id` with `runtime` (runc or
/// crun) and returns its output.
pub fn run_oci(runtime: &str, bundle: &Path, id: &str) -> std::process::Output {
    if runtime == "crun" {
        // Debian's crun 1.8 refuses a hybrid cgroup layout: run it in a
        // private mount namespace without the cgroup2 mount.
        Command::new("unshare")
            .args(["-m", "sh", "-c"])
            .arg(format!(
                "umount /sys/fs/cgroup/unified 2>/dev/null; exec crun run --bundle '{}' '{id}'",
                bundle.display()
            ))
            .output()
            .unwrap()
    } else {
        Command::new(runtime)
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(id)
            .output()
            .unwrap()
    }
}

/// Mount options for `lowers` with a new upper and work dir in `base`
/// (named `u{tag}` and `w{tag}`), plus `extra`; returns them and the dirs.
pub fn rw_opts_tagged(
    base: &Path,
    tag: &str,
    lowers: &[PathBuf],
    extra: &str,
) -> (String, PathBuf, PathBuf) {
    let u = base.join(format!("u{tag}"));
    let w = base.join(format!("w{tag}"));
    mkdir(&u);
    mkdir(&w);
    let mut o = format!(
        "{},upperdir={},workdir={}",
        lowerdir_opt(lowers),
        u.display(),
        w.display()
    );
    if !extra.is_empty() {
        o.push(',');
        o.push_str(extra);
    }
    (o, u, w)
}

/// containers.conf for these machines: no systemd, no CAP_SYS_RESOURCE,
/// hybrid cgroups (cgroupfs, file events, fixed ulimits, runc).
pub const CONTAINERS_CONF: &str =
    "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
     [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n";

fn remove_opaque_xattr(dir: &Path) {
    let st = Command::new("setfattr")
        .args(["-x", "trusted.overlay.opaque"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success());
}
