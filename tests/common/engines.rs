//! Container engines and runtimes: OCI bundles, runc/crun, podman.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

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

/// Where Debian's busybox-static puts its binary, if installed.
pub fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
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

/// containers.conf for these machines: no systemd, no CAP_SYS_RESOURCE,
/// hybrid cgroups (cgroupfs, file events, fixed ulimits, runc).
pub const CONTAINERS_CONF: &str =
    "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
     [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n";

/// Where a podman under test keeps its images and containers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PodmanStorage {
    /// The overlay driver with layerfs as its `mount_program`: every
    /// container root is a layerfs mount. Dropping the engine resets the
    /// storage and undoes any mount left under it.
    LayerfsRoots,
    /// The vfs driver, plain copies: for tests of something else (a volume
    /// plugin). Dropping the engine removes its containers.
    Vfs,
}

/// An isolated podman in a temp dir: its own storage.conf (graph root and
/// run root under `dir`) and containers.conf (`CONTAINERS_CONF` plus
/// `conf_extra`).
pub struct Podman {
    pub dir: PathBuf,
    storage: PodmanStorage,
}

impl Podman {
    pub fn new(dir: &Path, storage: PodmanStorage, conf_extra: &str) -> Podman {
        let conf = dir.join("conf");
        mkdir(&conf);
        let (driver, table) = match storage {
            PodmanStorage::LayerfsRoots => (
                "overlay",
                format!(
                    "[storage.options.overlay]\nmount_program = \"{}\"\n",
                    layerfs_bin()
                ),
            ),
            PodmanStorage::Vfs => ("vfs", String::new()),
        };
        fs::write(
            conf.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"{driver}\"\ngraphroot = \"{0}/root\"\nrunroot = \"{0}/runroot\"\n{table}",
                dir.display()
            ),
        )
        .unwrap();
        fs::write(
            conf.join("containers.conf"),
            format!("{CONTAINERS_CONF}{conf_extra}"),
        )
        .unwrap();
        Podman {
            dir: dir.to_path_buf(),
            storage,
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("podman");
        c.args(args)
            .env(
                "CONTAINERS_STORAGE_CONF",
                self.dir.join("conf/storage.conf"),
            )
            .env("CONTAINERS_CONF", self.dir.join("conf/containers.conf"))
            .current_dir(&self.dir);
        c
    }

    /// Runs podman and returns its stdout, trimmed; fails the test (with
    /// podman's stdout and stderr) if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        assert!(
            out.status.success(),
            "podman {args:?} failed:\n{}",
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        match self.storage {
            PodmanStorage::LayerfsRoots => {
                let _ = self.cmd(&["system", "reset", "-f"]).output();
                let me = self.dir.to_string_lossy().into_owned();
                let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
                for m in mounts
                    .lines()
                    .filter_map(|l| l.split(' ').nth(1))
                    .filter(|m| m.starts_with(&me))
                {
                    let _ = Command::new("umount").arg("-l").arg(m).status();
                }
            }
            PodmanStorage::Vfs => {
                let _ = self.cmd(&["rm", "-fa", "-t", "0"]).output();
            }
        }
    }
}
