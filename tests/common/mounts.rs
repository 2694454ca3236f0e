//! Mounting: the binaries under test, mount guards that always unmount
//! (even when the test panics), and the option strings of a stack.
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::*;

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
