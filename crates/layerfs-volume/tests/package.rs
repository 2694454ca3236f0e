//! The Debian package, for real: `scripts/package/deb.sh` builds it from
//! this build's binaries, `apt-get install ./layerfs_*.deb` installs it,
//! mount(8) finds `fuse.layerfs`, the plugin's socket answers
//! `Plugin.Activate` (through systemd where it is PID 1, else through the
//! service's ExecStart given the socket as systemd would), and `apt-get
//! remove --purge` leaves nothing of it. And, without the package,
//! `serve` socket-activated as systemd does it.
//!
//! It installs into /usr: it runs only where no layerfs is installed (a
//! shared machine's own install is never replaced), one run at a time
//! (a lock), and purges the package however the test ends. Root only.

// The mounted-test helpers of the filesystem crate, shared.
#[path = "../../../tests/common/mod.rs"]
mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Paths an installed layerfs would be at: the test runs only when none
/// is there, so that it neither replaces nor tests another install.
const INSTALLED: &[&str] = &[
    "/usr/bin/layerfs",
    "/usr/bin/layerfs-volume",
    "/usr/local/bin/layerfs",
    "/usr/local/bin/layerfs-volume",
    "/usr/sbin/layerfs",
    "/sbin/layerfs",
];

/// What the package leaves behind only if it was there before.
const OUTSIDE_THE_PACKAGE: &[&str] = &["/etc/layerfs", "/var/lib/layerfs"];

/// Traces of the units' enablement, which a purge must take away.
const ENABLEMENT: &[&str] = &[
    "/etc/systemd/system/layerfs-volume.socket",
    "/etc/systemd/system/layerfs-volume.service",
    "/etc/systemd/system/sockets.target.wants/layerfs-volume.socket",
    "/etc/systemd/system/multi-user.target.wants/layerfs-volume.service",
    "/var/lib/systemd/deb-systemd-helper-enabled/layerfs-volume.socket.dsh-also",
    "/var/lib/systemd/deb-systemd-helper-enabled/sockets.target.wants/layerfs-volume.socket",
    "/var/lib/systemd/deb-systemd-helper-masked/layerfs-volume.socket",
    "/var/lib/systemd/deb-systemd-helper-masked/layerfs-volume.service",
];

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        common::output_text(&out)
    );
    out
}

fn package_status() -> String {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "layerfs"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One run of this test on the machine at a time (held while it lives).
struct HostLock {
    _file: fs::File,
}

impl HostLock {
    fn take() -> HostLock {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/lock/layerfs-package-test.lock")
            .unwrap();
        layerfs::sys::flock(f.as_fd(), libc::LOCK_EX).unwrap();
        HostLock { _file: f }
    }
}

/// The installed package; purged on drop unless the test did it.
struct Installed {
    purged: bool,
}

fn purge() -> Output {
    let out = Command::new("apt-get")
        .args([
            "remove",
            "--purge",
            "-y",
            "-o",
            "DPkg::Lock::Timeout=300",
            "layerfs",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if !out.status.success() {
        let _ = Command::new("dpkg").args(["--purge", "layerfs"]).status();
    }
    out
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.purged {
            purge();
        }
    }
}

/// A mount made by the test; unmounted on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        // Quiet: after the test's own umount there is nothing to do.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
    }
}

/// A process started by the test; killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `Plugin.Activate` over the socket: the answer's body.
fn activate(sock: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut s = loop {
        match UnixStream::connect(sock) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => panic!("{}: {e}", sock.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"POST /Plugin.Activate HTTP/1.1\r\nHost: p\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// Whether systemd runs this machine (what the maintainer scripts ask
/// too), so that the units can be started.
fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
        && fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd")
}

/// A key's value in the installed unit file.
fn unit_value(unit: &str, key: &str) -> String {
    let text = fs::read_to_string(format!("/lib/systemd/system/{unit}")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{unit} has no {key}="))
        .to_string()
}

#[test]
fn the_deb_installs_mounts_serves_and_purges_cleanly() {
    require!("dpkg-deb", "dpkg-query", "apt-get", "mount", "umount");
    let _lock = HostLock::take();
    let there: Vec<&str> = INSTALLED
        .iter()
        .copied()
        .filter(|p| Path::new(p).exists())
        .collect();
    let status = package_status();
    if !there.is_empty() || status.contains("installed") && !status.contains("not-installed") {
        common::cannot_run(&format!(
            "layerfs is installed on this machine ({}{status}); the package test does not replace it",
            there.join(", ")
        ));
        return;
    }
    let unit_started = systemd_runs();
    if !unit_started && !common::have("systemd-socket-activate") {
        common::cannot_run("needs systemd as PID 1 or systemd-socket-activate (package systemd)");
        return;
    }
    let before: Vec<&str> = OUTSIDE_THE_PACKAGE
        .iter()
        .copied()
        .filter(|p| Path::new(p).exists())
        .collect();

    // The package, from this build's binaries. apt reads it as its own
    // user: the temp dir is opened to it.
    let tmp = common::tmp();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let bins = tmp.path().join("bin");
    fs::create_dir(&bins).unwrap();
    fs::copy(common::layerfs_bin(), bins.join("layerfs")).unwrap();
    fs::copy(
        env!("CARGO_BIN_EXE_layerfs-volume"),
        bins.join("layerfs-volume"),
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/package/deb.sh");
    let out = run(Command::new(&script)
        .arg("--bin-dir")
        .arg(&bins)
        .arg("--out")
        .arg(tmp.path()));
    let deb = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        deb.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("layerfs_")),
        "{}",
        deb.display()
    );
    fs::set_permissions(&deb, fs::Permissions::from_mode(0o644)).unwrap();

    // Before: mount(8) has no helper for the type.
    let merged = tmp.path().join("merged");
    for d in ["lower", "upper", "work", "merged"] {
        fs::create_dir(tmp.path().join(d)).unwrap();
    }
    fs::write(tmp.path().join("lower/hello"), "from the lower layer\n").unwrap();
    let opts = format!(
        "lowerdir={0}/lower,upperdir={0}/upper,workdir={0}/work",
        tmp.path().display()
    );
    let mount = || {
        Command::new("mount")
            .args(["-t", "fuse.layerfs", "layerfs"])
            .arg(&merged)
            .args(["-o", &opts])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    assert!(!mount().status.success(), "mount worked before the install");

    let mut installed = Installed { purged: false };
    run(Command::new("apt-get")
        .args(["install", "-y", "-o", "DPkg::Lock::Timeout=300"])
        .arg(&deb)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    assert!(package_status().contains("install ok installed"));
    let listed =
        String::from_utf8(run(Command::new("dpkg").args(["-L", "layerfs"])).stdout).unwrap();
    let files: Vec<&str> = listed.lines().filter(|p| Path::new(p).is_file()).collect();
    for want in [
        "/usr/bin/layerfs",
        "/usr/bin/layerfs-volume",
        "/usr/share/man/man8/layerfs.8.gz",
        "/usr/share/man/man8/layerfs-volume.8.gz",
        "/usr/share/man/man8/layerfs-volume-export.8.gz",
        "/usr/share/bash-completion/completions/layerfs-volume",
        "/usr/share/zsh/vendor-completions/_layerfs",
        "/usr/share/fish/vendor_completions.d/layerfs-volume.fish",
        "/lib/systemd/system/layerfs-volume.service",
        "/lib/systemd/system/layerfs-volume.socket",
        "/etc/layerfs/volumes.toml",
    ] {
        assert!(files.contains(&want), "the package lacks {want}:\n{listed}");
    }
    assert_eq!(unit_value("layerfs-volume.service", "KillMode"), "process");
    let conffiles = run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "layerfs"]));
    assert!(String::from_utf8_lossy(&conffiles.stdout).contains("/etc/layerfs/volumes.toml"));

    // mount(8) finds layerfs as fuse.layerfs, through mount.fuse3's
    // cleared PATH, so the packaged one.
    let out = mount();
    assert!(out.status.success(), "{}", common::output_text(&out));
    let mounted = Mounted(merged.clone());
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(merged.to_str().unwrap()))
        .expect("the mount in /proc/self/mounts");
    assert_eq!(line.split(' ').nth(2), Some("fuse.layerfs"), "{line}");
    assert_eq!(
        fs::read_to_string(merged.join("hello")).unwrap(),
        "from the lower layer\n"
    );
    fs::write(merged.join("new"), "written through the mount\n").unwrap();
    run(Command::new("umount").arg(&merged));
    drop(mounted);
    assert!(tmp.path().join("upper/new").is_file());

    // The plugin's socket answers.
    if unit_started {
        let active = |unit: &str| {
            let out = Command::new("systemctl")
                .args(["is-active", unit])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let enabled = Command::new("systemctl")
            .args(["is-enabled", "layerfs-volume.socket"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&enabled.stdout).trim(), "enabled");
        assert_eq!(active("layerfs-volume.socket"), "active");
        let sock = unit_value("layerfs-volume.socket", "ListenStream");
        let body = activate(Path::new(&sock));
        assert!(body.contains(r#""Implements":["VolumeDriver"]"#), "{body}");
        assert_eq!(
            active("layerfs-volume.service"),
            "active",
            "not started by its socket"
        );
    } else {
        // No systemd here: its socket activation, by systemd's own tool,
        // of the unit's ExecStart (a temp store, not the machine's).
        let exec = unit_value("layerfs-volume.service", "ExecStart");
        let mut words = exec.split_whitespace();
        let program = words.next().unwrap();
        assert_eq!(program, "/usr/bin/layerfs-volume");
        let mut args: Vec<std::ffi::OsString> = words.map(Into::into).collect();
        args.extend(["--store".into(), tmp.path().join("store").into()]);
        activated_answers(tmp.path(), Path::new(program), &args);
    }

    // Removed with --purge: nothing of it is left.
    installed.purged = true;
    let out = purge();
    assert!(out.status.success(), "{}", common::output_text(&out));
    let status = package_status();
    assert!(
        status.is_empty() || status.contains("not-installed"),
        "{status}"
    );
    let left: Vec<&str> = files
        .iter()
        .copied()
        .chain(ENABLEMENT.iter().copied())
        .chain(
            OUTSIDE_THE_PACKAGE
                .iter()
                .copied()
                .filter(|p| !before.contains(p)),
        )
        .filter(|p| Path::new(p).symlink_metadata().is_ok())
        .collect();
    assert!(left.is_empty(), "left after the purge: {left:?}");
    if unit_started {
        let sock = Path::new("/run/docker/plugins/layerfs.sock");
        assert!(!sock.exists(), "the socket outlived the package");
    }
}

/// Socket activation without the package: `serve` given a listening
/// socket as systemd passes one (LISTEN_FDS, fd 3) serves on it, and says
/// where it listens.
#[test]
fn serve_takes_the_socket_systemd_passes() {
    require!("systemd-socket-activate");
    let tmp = common::tmp();
    let unused = tmp.path().join("unused/plugin.sock");
    let args = [
        "--store".into(),
        tmp.path().join("store").into_os_string(),
        "serve".into(),
        // Not the socket used: systemd's is.
        "--socket".into(),
        unused.clone().into_os_string(),
    ];
    let bin = Path::new(env!("CARGO_BIN_EXE_layerfs-volume"));
    activated_answers(tmp.path(), bin, &args);
    assert!(
        !unused.parent().unwrap().exists(),
        "serve bound its own socket"
    );
}

/// Runs `program args` socket-activated by systemd-socket-activate on a
/// socket in `dir`, as systemd would: it must answer `Plugin.Activate`
/// there and log where it listens.
fn activated_answers(dir: &Path, program: &Path, args: &[std::ffi::OsString]) {
    let sock = dir.join("plugin.sock");
    let log = dir.join("plugin.log");
    let child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&sock)
        .arg(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let plugin = Killed(child);
    let body = activate(&sock);
    assert!(body.contains(r#""Implements":["VolumeDriver"]"#), "{body}");
    drop(plugin);
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!("listening on {}", sock.display())),
        "{text}"
    );
}
