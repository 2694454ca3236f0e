//! The skip rule: whether a test can run here, and what it does when it
//! cannot (a SKIP line on a developer's machine, a failure in CI).
use std::fs;
use std::io;
use std::path::Path;
use std::process::Command;

use super::*;

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
             with scripts/ci/test.sh, which installs the packages the tests use"
        );
    }
    eprintln!("SKIP: {why}");
    note_skip();
}

/// Appends this test to the file `LAYERFS_SKIP_LOG` names, if set, as
/// `BINARY TEST` (the test binary's file name, and libtest's name of the
/// test's thread, which is the test's path): cargo shows nothing of a
/// passing test, so this is how `scripts/ci/test.sh` counts a test that
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
