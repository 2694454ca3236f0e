//! An unprivileged user made by a test, existing only in the test's
//! private mount namespace: for rootless layerfs and rootless engines.
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

/// Host ids of the test user and of its subordinate range.
pub const SUBID_BASE: u32 = 300000;
pub const SUBID_COUNT: u32 = 65536;

/// A uid (and gid of the same number) from `from` on that no account on
/// this host uses. Each test starts elsewhere: tests run in parallel and
/// each kills its user's processes at the end.
pub fn free_id(from: u32) -> u32 {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = fs::read_to_string("/etc/group").unwrap_or_default();
    let used = |text: &str, id: u32| {
        text.lines()
            .any(|l| l.split(':').nth(2) == Some(id.to_string().as_str()))
    };
    (from..60000)
        .find(|&id| !used(&passwd, id) && !used(&group, id))
        .expect("a free uid")
}

/// Kills every process of the test user (podman's pause process, layerfs
/// daemons, containers), which also ends the namespaces holding their
/// mounts.
struct UserProcesses(u32);

impl Drop for UserProcesses {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args(["-KILL", "-U", &self.0.to_string()])
            .status();
    }
}

/// An unprivileged user that exists only inside a test's private mount
/// namespace: its passwd, group and subuid/subgid entries and a /dev/fuse it
/// may open (this VM's is 0600) are bind-mounted there by `setup_script`,
/// so the host's /etc and /dev stay untouched. Its processes are killed
/// when it is dropped.
pub struct TestUser {
    pub id: u32,
    pub name: &'static str,
    /// World-traversable scratch dir holding the user's files.
    pub base: PathBuf,
    /// A copy of layerfs the user can run.
    pub bin: PathBuf,
    _processes: UserProcesses,
}

impl TestUser {
    pub fn new(base: &Path, name: &'static str, first_id: u32, home: &Path) -> TestUser {
        let id = free_id(first_id);
        fs::set_permissions(base, fs::Permissions::from_mode(0o755)).unwrap();
        let etc = base.join("etc");
        mkdir(&etc);
        let mut passwd = fs::read_to_string("/etc/passwd").unwrap();
        passwd += &format!("{name}:x:{id}:{id}::{}:/bin/sh\n", home.display());
        let mut group = fs::read_to_string("/etc/group").unwrap();
        group += &format!("{name}:x:{id}:\n");
        fs::write(etc.join("passwd"), passwd).unwrap();
        fs::write(etc.join("group"), group).unwrap();
        let sub = format!("{name}:{SUBID_BASE}:{SUBID_COUNT}\n");
        fs::write(etc.join("subuid"), &sub).unwrap();
        fs::write(etc.join("subgid"), &sub).unwrap();
        mkdir(&base.join("dev"));
        let bin = base.join("bin/layerfs");
        mkdir(&base.join("bin"));
        fs::copy(layerfs_bin(), &bin).unwrap();
        chmod(&bin, 0o755);
        TestUser {
            id,
            name,
            base: base.to_path_buf(),
            bin,
            _processes: UserProcesses(id),
        }
    }

    /// Makes `paths` (recursively) the user's.
    pub fn own(&self, paths: &[&Path]) {
        assert!(Command::new("chown")
            .args(["-R", &format!("{0}:{0}", self.id)])
            .args(paths)
            .status()
            .unwrap()
            .success());
    }

    /// Shell lines that, run as root in the private mount namespace, make
    /// the user exist there.
    pub fn setup_script(&self) -> String {
        format!(
            "for f in passwd group subuid subgid; do mount --bind {b}/etc/$f /etc/$f; done\n\
             mount -t tmpfs tmpfs {b}/dev && mknod -m 666 {b}/dev/fuse c 10 229\n\
             mount --bind {b}/dev/fuse /dev/fuse\n",
            b = self.base.display()
        )
    }

    /// Runs `script` (sh) as root in a new private mount namespace after
    /// `setup_script`; its combined output and whether it succeeded.
    pub fn run_in_namespace(&self, script: &str) -> (bool, String) {
        let script = format!("set -e\n{}{script}", self.setup_script());
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .current_dir(&self.base)
            .output()
            .unwrap();
        (out.status.success(), output_text(&out))
    }
}
