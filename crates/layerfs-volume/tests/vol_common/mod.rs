//! Fixtures of the volume tests shared by their files: the
//! `layerfs-volume` binary, a store in a temp dir, the plugin serving it,
//! and a Docker Engine of the test's own using it.
// Each test file is its own crate and uses a part of these.
#![allow(dead_code)]

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use crate::common;

/// `layerfs-volume`, which mounts with the `layerfs` beside it: checked
/// to be there, lest the one on PATH is tested instead.
pub fn bin() -> &'static str {
    let _ = common::layerfs_bin();
    env!("CARGO_BIN_EXE_layerfs-volume")
}

/// A store in a temp dir; on drop, everything mounted under it is
/// unmounted and a plugin started for it is killed.
pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub store: PathBuf,
    pub plugin: Option<Child>,
}

impl Fixture {
    pub fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        Fixture {
            tmp,
            store,
            plugin: None,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    pub fn run_in(&self, store: &Path, args: &[&str]) -> Output {
        Command::new(bin())
            .arg("--store")
            .arg(store)
            .args(args)
            .output()
            .unwrap()
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_in(&self.store, args)
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "layerfs-volume {args:?} failed: {}",
            common::output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs, asserts failure, returns the message.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "layerfs-volume {args:?} succeeded");
        common::output_text(&out)
    }

    pub fn mounts_under(&self) -> Vec<PathBuf> {
        let text = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let root = self.tmp.path().canonicalize().unwrap();
        text.lines()
            .filter_map(|l| l.split(' ').nth(1))
            .map(|m| PathBuf::from(m.replace("\\040", " ")))
            .filter(|m| m.starts_with(&root))
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mut p) = self.plugin.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        for m in self.mounts_under().into_iter().rev() {
            let ok = Command::new("umount")
                .arg(&m)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&m).status();
            }
        }
    }
}

/// Starts `layerfs-volume serve` for the fixture's store on `sock`, and
/// waits until it listens.
pub fn start_plugin(fx: &mut Fixture, sock: &Path) {
    let mut cmd = Command::new(bin());
    cmd.arg("--store").arg(&fx.store);
    start_plugin_cmd(fx, sock, cmd);
}

/// Starts `cmd` (the binary with its stores) as `serve` on `sock`.
pub fn start_plugin_cmd(fx: &mut Fixture, sock: &Path, mut cmd: Command) {
    let log = fs::File::create(fx.path("plugin.log")).unwrap();
    let child = cmd
        .args(["serve", "--socket"])
        .arg(sock)
        .stderr(log)
        .spawn()
        .unwrap();
    fx.plugin = Some(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(sock).is_err() {
        assert!(Instant::now() < deadline, "plugin did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A Docker Engine of the test's own: its data root, exec root, socket and
/// pidfile in a temp dir, in a private mount namespace where a temp dir is
/// bind-mounted over /run/docker/plugins (so the host's is untouched) and
/// the layerfs plugin serves there. Everything is stopped by pid on drop.
pub struct Engine {
    pub dir: PathBuf,
    pub store: PathBuf,
    pub dockerd: Child,
    /// The plugin's `--store` arguments.
    pub stores: Vec<String>,
    pub plugin_pid: Option<u32>,
    /// The plugin restarted by the test (the first one is dockerd's child).
    pub plugin: Option<Child>,
}

impl Engine {
    pub fn start(dir: &Path) -> Engine {
        Engine::start_with(dir, "")
    }

    /// `extra`: more dockerd options. A `bin/` in `dir` comes first on
    /// dockerd's PATH.
    pub fn start_with(dir: &Path, extra: &str) -> Engine {
        let store = dir.join("store");
        Engine::start_stores(dir, extra, vec![store.to_str().unwrap().to_string()])
    }

    /// `stores`: the plugin's `--store` arguments; `dir/store` is still
    /// the one `volume_mounted` asks.
    pub fn start_stores(dir: &Path, extra: &str, stores: Vec<String>) -> Engine {
        let store = dir.join("store");
        let store_args: String = stores.iter().map(|s| format!("--store {s} ")).collect();
        for d in ["data", "exec", "plugins"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        let script = format!(
            "set -e\nexport PATH={d}/bin:$PATH\nmkdir -p /run/docker/plugins\n\
             mount --bind {d}/plugins /run/docker/plugins\n\
             {bin} {store_args}serve > {d}/plugin.log 2>&1 &\necho $! > {d}/plugin.pid\n\
             exec dockerd --data-root {d}/data --exec-root {d}/exec -H unix://{d}/docker.sock \
             --pidfile {d}/docker.pid --config-file {d}/daemon.json --iptables=false --ip6tables=false --bridge=none \
             {extra} > {d}/dockerd.log 2>&1\n",
            d = dir.display(),
            bin = bin()
        );
        fs::write(dir.join("start.sh"), script).unwrap();
        // Its own config file: a host's /etc/docker/daemon.json is not read,
        // and the trust key goes here, not to /etc/docker/key.json.
        let config = format!(r#"{{"deprecated-key-path": "{}/key.json"}}"#, dir.display());
        fs::write(dir.join("daemon.json"), config).unwrap();
        let dockerd = Command::new("unshare")
            .args(["-m", "--propagation", "private", "bash"])
            .arg(dir.join("start.sh"))
            .spawn()
            .unwrap();
        let mut e = Engine {
            dir: dir.to_path_buf(),
            store,
            dockerd,
            stores,
            plugin_pid: None,
            plugin: None,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if e.plugin_pid.is_none() {
                e.plugin_pid = fs::read_to_string(dir.join("plugin.pid"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
            }
            if e.docker(&["info"]).status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not start: {}",
                fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        e
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}/docker.sock", self.dir.display()))
            .args(args)
            .output()
            .unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            common::output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs a command in dockerd's mount namespace.
    pub fn in_ns(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.dockerd.id().to_string())
            .arg("-m")
            .arg("--")
            .args(args);
        c
    }

    pub fn volume_mounted(&self, name: &str) -> bool {
        let out = self
            .in_ns(&[
                bin(),
                "--store",
                self.store.to_str().unwrap(),
                "inspect",
                name,
            ])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("inspect {name}: {e}: {}", common::output_text(&out)));
        v["Mounted"] == true
    }

    pub fn kill_plugin(&mut self) {
        if let Some(pid) = self.plugin_pid.take() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if let Some(mut p) = self.plugin.take() {
            let _ = p.wait();
        }
    }

    pub fn restart_plugin(&mut self) {
        let log = fs::File::create(self.dir.join("plugin2.log")).unwrap();
        let mut args = vec![bin()];
        for s in &self.stores {
            args.extend(["--store", s.as_str()]);
        }
        args.push("serve");
        let child = self.in_ns(&args).stderr(log).spawn().unwrap();
        self.plugin_pid = Some(child.id());
        self.plugin = Some(child);
        let sock = self.dir.join("plugins/layerfs.sock");
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&sock).is_err() {
            assert!(Instant::now() < deadline, "plugin did not come back");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Containers first, so that dockerd unmounts their volumes.
        let ids = self.docker(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.dockerd.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.dockerd.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.dockerd.kill();
        let _ = self.dockerd.wait();
        self.kill_plugin();
    }
}

/// A temp dir directly under /tmp: the unix sockets an engine makes under
/// it must stay within the 108 bytes of a socket path.
pub fn short_tmp(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap()
}

/// An image root in `scratch/rootfs` of the host's busybox with
/// `applets` linked to it in `bin/`; returns the root.
pub fn busybox_rootfs(scratch: &Path, applets: &[&str]) -> PathBuf {
    let rootfs = scratch.join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::copy(common::busybox().unwrap(), rootfs.join("bin/busybox")).unwrap();
    for applet in applets {
        common::link_sym("busybox", &rootfs.join("bin").join(applet));
    }
    rootfs
}

/// Tars `root` into `scratch/rootfs.tar`, for an engine to import;
/// returns the tar.
pub fn rootfs_tar(root: &Path, scratch: &Path) -> PathBuf {
    let tar = scratch.join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    tar
}

/// A podman of the test's own (vfs storage) whose containers.conf names
/// the layerfs plugin, started for the fixture's store on `sock`.
pub fn podman_with_plugin(fx: &mut Fixture, sock: &Path) -> common::Podman {
    start_plugin(fx, sock);
    // The plugin named in containers.conf; containers removed on drop.
    let plugin = format!(
        "[engine.volume_plugins]\nlayerfs = \"{}\"\n",
        sock.display()
    );
    common::Podman::new(&fx.path("podman"), common::PodmanStorage::Vfs, &plugin)
}
