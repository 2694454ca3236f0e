//! A real GlusterFS volume for tests, and "hosts" that mount it.
//!
//! glusterd refuses loopback addresses for bricks, so the server and its
//! clients live in a network namespace of their own (`lfs-gl-PID-N`) with a
//! TEST-NET address (192.0.2.1/32) on that namespace's `lo`. Every process
//! of a cluster runs in a mount namespace of its own, anchored by a `sleep`
//! process:
//! - the server's, where `/var/lib/glusterd`, `/var/log/glusterfs` and
//!   `/run` are temp dirs (glusterd keeps its state, logs, sockets and pid
//!   files there; the host's real ones are never touched);
//! - one per host, each with its own glusterfs FUSE client mounted at the
//!   same path (`BASE/gl`) and its own hostname (UTS namespace), as separate
//!   machines would have.
//!
//! Commands enter a namespace with `nsenter -t ANCHOR`. A test body that
//! must run on a host (to see its mounts) is the test binary run again
//! there: `Host::run_test` starts `current_exe() --exact NAME` inside the
//! host's namespaces with `LAYERFS_GLUSTER_ROLE` set, and the test function
//! dispatches on `role()`. Teardown (on Drop, so a failed test cleans up
//! too) ends every process of the cluster by pid — found by its namespace —
//! stops and deletes the volume and deletes the network namespace.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The server's address inside the cluster's network namespace.
pub const SERVER: &str = "192.0.2.1";
/// The volume every cluster creates.
pub const VOLUME: &str = "lfs";
/// The env var that marks a re-executed test body and names its role.
pub const ROLE_ENV: &str = "LAYERFS_GLUSTER_ROLE";
/// The env var that gives a re-executed test body the cluster's base dir.
pub const BASE_ENV: &str = "LAYERFS_GLUSTER_BASE";

/// What this machine lacks to run a GlusterFS cluster (root, /dev/fuse,
/// glusterd, glusterfs, gluster, ip, nsenter, unshare), or None.
pub fn missing() -> Option<String> {
    let tools = [
        ("glusterd", "glusterfs-server"),
        ("gluster", "glusterfs-server"),
        ("glusterfs", "glusterfs-client"),
        ("ip", "iproute2"),
        ("nsenter", "util-linux"),
        ("unshare", "util-linux"),
    ];
    let mut lacks: Vec<String> = super::missing(&[]).into_iter().collect();
    for (tool, package) in tools {
        if !super::have(tool) {
            lacks.push(format!("{tool} (package {package})"));
        }
    }
    for dir in ["/var/lib/glusterd", "/var/log/glusterfs"] {
        if !Path::new(dir).is_dir() {
            lacks.push(format!("{dir} (package glusterfs-server)"));
        }
    }
    (!lacks.is_empty()).then(|| lacks.join(", "))
}

/// Returns from the test unless a GlusterFS cluster can run here; fails
/// instead under CI (see `common::cannot_run`), so that a missing package
/// cannot pass silently.
#[macro_export]
macro_rules! require_gluster {
    () => {
        if let Some(why) = common::gluster::missing() {
            common::cannot_run(&why);
            return;
        }
    };
}

/// The role of this process when it is a re-executed test body.
pub fn role() -> Option<String> {
    std::env::var(ROLE_ENV).ok()
}

/// The cluster's base dir, in a re-executed test body.
pub fn child_base() -> PathBuf {
    PathBuf::from(std::env::var_os(BASE_ENV).expect("LAYERFS_GLUSTER_BASE set"))
}

/// A line for the parent to act on (see `RunningTest::wait_for`).
pub fn tell_parent(what: &str) {
    use std::io::Write;
    println!("GLUSTER-CHILD: {what}");
    let _ = io::stdout().flush();
}

fn run(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{cmd:?} failed: {}",
            super::output_text(&out)
        )));
    }
    Ok(out)
}

fn ns_inode(pid: u32, kind: &str) -> Option<u64> {
    fs::metadata(format!("/proc/{pid}/ns/{kind}"))
        .ok()
        .map(|m| m.ino())
}

/// Every process whose namespace `kind` is the one with inode `ino`.
fn pids_in_ns(kind: &str, ino: u64) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if ns_inode(pid, kind) == Some(ino) {
            out.push(pid);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    // A zombie has no namespaces left to read; count it as gone.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

pub fn kill(pids: &[u32], signal: &str) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .args(pids.iter().map(|p| p.to_string()))
        .stderr(Stdio::null())
        .status();
}

/// Sends SIGKILL to `pids` and waits (up to 10 s) until they are gone.
fn kill_and_wait(pids: &[u32]) {
    kill(pids, "KILL");
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process that holds new mount and UTS namespaces inside the cluster's
/// network namespace; commands enter them with `nsenter -t PID`.
struct Anchor {
    child: Child,
    pid: u32,
}

impl Anchor {
    fn start(netns: &str, hostname: &str) -> io::Result<Anchor> {
        // `ip netns exec` and `unshare` both exec, so the child's pid is the
        // sleep's: the namespaces live as long as that pid.
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .args(["unshare", "-m", "-u", "--propagation", "private"])
            .args(["sleep", "infinity"])
            .stdin(Stdio::null())
            .spawn()?;
        let pid = child.id();
        let our_mnt = ns_inode(std::process::id(), "mnt");
        let ok = wait_until(Duration::from_secs(10), || {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
                && ns_inode(pid, "mnt") != our_mnt
        });
        let mut a = Anchor { child, pid };
        if !ok {
            a.kill();
            return Err(io::Error::other("namespace anchor did not start"));
        }
        a.exec(&["hostname", hostname])?;
        a.drop_copied_fuse_mounts();
        Ok(a)
    }

    /// The new mount namespace copied every mount of this one, the layerfs
    /// mounts of tests running beside included: a copy keeps its
    /// filesystem mounted (and its daemon alive) after the test that made
    /// it has unmounted it. They are detached here; the host mounts its
    /// own.
    fn drop_copied_fuse_mounts(&self) {
        let mounts = fs::read_to_string(format!("/proc/{}/mounts", self.pid)).unwrap_or_default();
        let mut fuse: Vec<String> = mounts
            .lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
                (kind == "fuse.layerfs" && !at.contains('\\')).then(|| at.to_string())
            })
            .collect();
        fuse.sort();
        for at in fuse.iter().rev() {
            let _ = self.exec(&["umount", "-l", at]);
        }
    }

    /// `nsenter` into the anchor's namespaces (mount, net, UTS).
    fn cmd(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.pid.to_string())
            .args(["-m", "-n", "-u", "--"])
            .args(argv);
        c
    }

    fn exec(&self, argv: &[&str]) -> io::Result<Output> {
        run(&mut self.cmd(argv))
    }

    fn mnt_ns(&self) -> Option<u64> {
        ns_inode(self.pid, "mnt")
    }

    /// The mount points of the anchor's mount namespace.
    fn mounts(&self) -> Vec<(String, String)> {
        fs::read_to_string(format!("/proc/{}/mounts", self.pid))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                let _src = f.next()?;
                let dir = f.next()?.replace("\\040", " ");
                let ty = f.next()?.to_string();
                Some((dir, ty))
            })
            .collect()
    }

    /// Ends every process of the anchor's mount namespace, the anchor
    /// last; the namespace and its mounts go with them.
    fn kill(&mut self) {
        if let Some(mnt) = self.mnt_ns() {
            let others: Vec<u32> = pids_in_ns("mnt", mnt)
                .into_iter()
                .filter(|&p| p != self.pid)
                .collect();
            kill_and_wait(&others);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A GlusterFS server with one started volume (`VOLUME`), one brick.
pub struct Cluster {
    /// Everything of the cluster is under here (a local temp dir).
    pub base: PathBuf,
    pub netns: String,
    netns_ino: Option<u64>,
    server: Option<Anchor>,
    glusterd: Option<Child>,
    /// How long `start` took.
    pub setup: Duration,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// Starts glusterd and a started volume; panics (after tearing down
    /// what was made) when it cannot.
    pub fn start() -> Cluster {
        let t0 = Instant::now();
        let tmp = tempfile::Builder::new()
            .prefix("lfs-gluster")
            .tempdir()
            .expect("temp dir");
        let netns = format!(
            "lfs-gl-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let mut c = Cluster {
            base: tmp.path().to_path_buf(),
            netns,
            netns_ino: None,
            server: None,
            glusterd: None,
            setup: Duration::ZERO,
            _tmp: tmp,
        };
        if let Err(e) = c.bring_up() {
            let logs = c.server_logs();
            drop(c);
            panic!("GlusterFS cluster setup failed: {e}\n{logs}");
        }
        c.setup = t0.elapsed();
        eprintln!(
            "gluster: cluster {} up in {:.2?} (volume {VOLUME}, brick {})",
            c.netns,
            c.setup,
            c.brick().display()
        );
        c
    }

    fn bring_up(&mut self) -> io::Result<()> {
        let t0 = Instant::now();
        reap_stale_clusters();
        run(Command::new("ip").args(["netns", "add", &self.netns]))?;
        self.netns_ino = fs::metadata(format!("/run/netns/{}", self.netns))
            .ok()
            .map(|m| m.ino());
        run(Command::new("ip").args([
            "-n",
            &self.netns,
            "addr",
            "add",
            &format!("{SERVER}/32"),
            "dev",
            "lo",
        ]))?;
        run(Command::new("ip").args(["-n", &self.netns, "link", "set", "lo", "up"]))?;

        let srv = self.base.join("server");
        let (lib, log) = (srv.join("lib"), srv.join("log"));
        fs::create_dir_all(&lib)?;
        fs::create_dir_all(&log)?;
        fs::create_dir_all(self.brick())?;
        // The package's option groups, but not its hook scripts: those set
        // up Samba, CTDB and NFS-Ganesha shares on the host at volume start.
        let groups = Path::new("/var/lib/glusterd/groups");
        if groups.exists() {
            run(Command::new("cp").arg("-a").arg(groups).arg(&lib))?;
        }
        let server = Anchor::start(&self.netns, "gluster-server")?;
        let (lib_s, log_s) = (lib.to_string_lossy(), log.to_string_lossy());
        // glusterd's CLI socket is /run/glusterd.socket and its bricks'
        // sockets and pid files go under /run/gluster: a tmpfs on /run
        // keeps them in this namespace.
        server.exec(&[
            "sh",
            "-ec",
            &format!(
                "mount --bind '{lib_s}' /var/lib/glusterd; \
                 mount --bind '{log_s}' /var/log/glusterfs; \
                 mount -t tmpfs -o mode=0755 lfs-gluster-run /run; mkdir -p /run/gluster"
            ),
        ])?;
        let out = fs::File::create(srv.join("glusterd.out"))?;
        let glusterd = server
            .cmd(&["glusterd", "-N"])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        self.server = Some(server);
        self.glusterd = Some(glusterd);
        let ready = wait_until(Duration::from_secs(30), || {
            self.gluster(&["volume", "list"]).is_ok()
        });
        if !ready {
            return Err(io::Error::other("glusterd did not answer in 30 s"));
        }
        let t_glusterd = t0.elapsed();
        let brick = format!("{SERVER}:{}", self.brick().display());
        self.gluster(&["volume", "create", VOLUME, &brick, "force"])?;
        // The client's caching translators serve a name from a cache that
        // a rename just made stale (see the README's shared-storage
        // section): an overlay upper wants the volume without them.
        for opt in UPPER_VOLUME_OPTIONS {
            self.gluster(&["volume", "set", VOLUME, opt, "off"])?;
        }
        self.gluster(&["volume", "start", VOLUME])?;
        eprintln!(
            "gluster: glusterd answered after {t_glusterd:.2?}, volume started after {:.2?}",
            t0.elapsed()
        );
        Ok(())
    }

    /// The brick directory: the volume's files as the server stores them
    /// (on the local filesystem, readable from the test directly).
    pub fn brick(&self) -> PathBuf {
        self.base.join("brick")
    }

    /// Runs the gluster CLI against this cluster's glusterd.
    pub fn gluster(&self, args: &[&str]) -> io::Result<Output> {
        let server = self
            .server
            .as_ref()
            .ok_or_else(|| io::Error::other("no server"))?;
        let mut argv = vec!["gluster", "--mode=script"];
        argv.extend_from_slice(args);
        server.exec(&argv)
    }

    /// The tail of the server's logs, for failure messages.
    pub fn server_logs(&self) -> String {
        let mut s = String::new();
        for f in ["server/glusterd.out", "server/log/glusterd.log"] {
            let text = fs::read_to_string(self.base.join(f)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            s += &format!(
                "--- {f} (tail)\n{}\n",
                lines[lines.len().saturating_sub(15)..].join("\n")
            );
        }
        s
    }

    /// A new host: its own mount and UTS namespaces (hostname `host-NAME`)
    /// and its own glusterfs client mounted at `BASE/gl`.
    pub fn host(&self, name: &str) -> Host {
        let t0 = Instant::now();
        let dir = self.base.join(format!("host-{name}"));
        fs::create_dir_all(dir.join("log")).unwrap();
        fs::create_dir_all(self.base.join("gl")).unwrap();
        fs::create_dir_all(self.base.join("mnt")).unwrap();
        let anchor = Anchor::start(&self.netns, &format!("host-{name}")).expect("host namespaces");
        let mut h = Host {
            name: name.to_string(),
            base: self.base.clone(),
            dir,
            anchor,
            client: None,
            setup: Duration::ZERO,
        };
        let log = h.dir.join("log");
        if let Err(e) = h.anchor.exec(&[
            "mount",
            "--bind",
            &log.to_string_lossy(),
            "/var/log/glusterfs",
        ]) {
            panic!("host {name}: {e}");
        }
        if let Err(e) = h.mount_client() {
            let logs = h.client_log();
            drop(h);
            panic!("host {name}: glusterfs client mount failed: {e}\n{logs}");
        }
        h.setup = t0.elapsed();
        eprintln!("gluster: host-{name} mounted the volume in {:.2?}", h.setup);
        h
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.glusterd.is_some() {
            if let Err(e) = self.gluster(&["volume", "stop", VOLUME, "force"]) {
                eprintln!("gluster teardown: {e}");
            }
            let _ = self.gluster(&["volume", "delete", VOLUME]);
        }
        if let Some(mut g) = self.glusterd.take() {
            kill(&[g.id()], "TERM");
            let pid = g.id();
            if !wait_until(Duration::from_secs(5), || !alive(pid)) {
                let _ = g.kill();
            }
            let _ = g.wait();
        }
        // Whatever is left in the network namespace (brick processes, a
        // host's client or daemon that a test left behind), by pid.
        if let Some(ino) = self.netns_ino {
            let anchor = self.server.as_ref().map(|a| a.pid);
            let left: Vec<u32> = pids_in_ns("net", ino)
                .into_iter()
                .filter(|&p| Some(p) != anchor)
                .collect();
            kill_and_wait(&left);
        }
        if let Some(mut s) = self.server.take() {
            s.kill();
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.netns])
            .status();
    }
}

/// Ends the clusters of test processes that died without their Drop (a
/// test binary killed by a timeout): their processes by pid, then their
/// network namespace, which is named after the dead pid.
fn reap_stale_clusters() {
    let Ok(rd) = fs::read_dir("/run/netns") else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(owner) = name
            .strip_prefix("lfs-gl-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if owner == std::process::id() || alive(owner) {
            continue;
        }
        if let Ok(md) = fs::metadata(e.path()) {
            kill_and_wait(&pids_in_ns("net", md.ino()));
        }
        let _ = Command::new("ip").args(["netns", "delete", &name]).status();
        eprintln!("gluster: removed the stale cluster {name}");
    }
}

/// One "host": its own namespaces and glusterfs client.
pub struct Host {
    pub name: String,
    /// The cluster's base dir.
    pub base: PathBuf,
    /// This host's own local dir (logs).
    pub dir: PathBuf,
    anchor: Anchor,
    client: Option<Child>,
    /// How long making the host and mounting its client took.
    pub setup: Duration,
}

impl Host {
    /// Where this host's glusterfs client mounts the volume (the same path
    /// on every host, each in its own mount namespace).
    pub fn gl(&self) -> PathBuf {
        self.base.join("gl")
    }

    fn mount_client(&mut self) -> io::Result<()> {
        let gl = self.gl();
        let log = self.dir.join("client.log");
        let out = fs::File::create(self.dir.join("client.out"))?;
        let child = self
            .anchor
            .cmd(&[
                "glusterfs",
                "-N",
                &format!("--volfile-server={SERVER}"),
                &format!("--volfile-id={VOLUME}"),
                &format!("--log-file={}", log.display()),
                &gl.to_string_lossy(),
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        self.client = Some(child);
        let want = gl.to_string_lossy().into_owned();
        let up = wait_until(Duration::from_secs(30), || {
            self.anchor
                .mounts()
                .iter()
                .any(|(d, t)| *d == want && t == "fuse.glusterfs")
                || self
                    .client
                    .as_mut()
                    .is_some_and(|c| c.try_wait().ok().flatten().is_some())
        });
        let mounted = self
            .anchor
            .mounts()
            .iter()
            .any(|(d, t)| *d == want && t == "fuse.glusterfs");
        if !up || !mounted {
            return Err(io::Error::other("the client did not mount"));
        }
        // The first lookups wait for the brick connection: make one now.
        self.exec(&["stat", "-f", &want])?;
        Ok(())
    }

    pub fn client_log(&self) -> String {
        let text = fs::read_to_string(self.dir.join("client.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The pid of this host's glusterfs client.
    pub fn client_pid(&self) -> Option<u32> {
        self.client.as_ref().map(|c| c.id())
    }

    /// A command in this host's namespaces.
    pub fn cmd(&self, argv: &[&str]) -> Command {
        self.anchor.cmd(argv)
    }

    /// Runs a command on this host; an error carries its output.
    pub fn exec(&self, argv: &[&str]) -> io::Result<Output> {
        self.anchor.exec(argv)
    }

    /// Every pid in this host's mount namespace but the anchor's.
    pub fn pids(&self) -> BTreeSet<u32> {
        let Some(mnt) = self.anchor.mnt_ns() else {
            return BTreeSet::new();
        };
        pids_in_ns("mnt", mnt)
            .into_iter()
            .filter(|&p| p != self.anchor.pid)
            .collect()
    }

    /// The mounts of type `fstype` in this host's namespace.
    pub fn mounts_of(&self, fstype: &str) -> Vec<String> {
        self.anchor
            .mounts()
            .into_iter()
            .filter(|(_, t)| t == fstype)
            .map(|(d, _)| d)
            .collect()
    }

    /// The host dies: SIGKILL to its glusterfs client and to `others`
    /// (e.g. its layerfs daemon) in one `kill` call.
    pub fn crash(&mut self, others: &[u32]) {
        let mut pids: Vec<u32> = others.to_vec();
        pids.extend(self.client_pid());
        kill(&pids, "KILL");
        if let Some(mut c) = self.client.take() {
            let _ = c.wait();
        }
        let ok = wait_until(Duration::from_secs(10), || pids.iter().all(|&p| !alive(p)));
        assert!(ok, "host-{}: {pids:?} still alive after SIGKILL", self.name);
    }

    /// Runs test `name` of this test binary again inside this host's
    /// namespaces, as role `role`, and waits for it.
    pub fn run_test(&self, name: &str, role: &str) -> Output {
        let t0 = Instant::now();
        let out = self
            .test_cmd(name, role)
            .stdin(Stdio::null())
            .output()
            .expect("run the test binary on the host");
        eprintln!(
            "gluster: host-{} ran {role} in {:.2?}:\n{}",
            self.name,
            t0.elapsed(),
            indent(&super::output_text(&out))
        );
        out
    }

    /// As `run_test`, and fails the test if that body failed.
    pub fn run_test_ok(&self, name: &str, role: &str) -> Output {
        let out = self.run_test(name, role);
        assert!(
            out.status.success(),
            "host-{}: {role} failed (output above); client log tail:\n{}",
            self.name,
            self.client_log()
        );
        out
    }

    /// Starts test `name` as role `role` on this host without waiting; its
    /// `tell_parent` lines can be waited for.
    pub fn spawn_test(&self, name: &str, role: &str) -> RunningTest {
        let mut child = self
            .test_cmd(name, role)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the test binary on the host");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let tag = format!("host-{} {role}", self.name);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("  [{tag}] {line}");
                // libtest may have printed "test NAME ... " on that line.
                if let Some((_, msg)) = line.split_once("GLUSTER-CHILD: ") {
                    if tx.send(msg.to_string()).is_err() {
                        break;
                    }
                }
            }
        });
        RunningTest { child, rx }
    }

    fn test_cmd(&self, name: &str, role: &str) -> Command {
        let exe = std::env::current_exe().expect("current exe");
        let exe = exe.to_string_lossy();
        let mut c = self
            .anchor
            .cmd(&[&exe, "--exact", name, "--nocapture", "--test-threads=1"]);
        c.env(ROLE_ENV, role)
            .env(BASE_ENV, &self.base)
            .env("RUST_BACKTRACE", "1");
        c
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Unmount what is mounted on top of the volume first (layerfs,
        // overlayfs), then the client, so nothing waits on a dead client.
        let base = self.base.to_string_lossy().into_owned();
        let mut mine: Vec<(String, String)> = self
            .anchor
            .mounts()
            .into_iter()
            .filter(|(d, _)| d.starts_with(&base))
            .collect();
        mine.reverse();
        for (d, t) in &mine {
            if t != "fuse.glusterfs" {
                let _ = self.anchor.exec(&["umount", "-l", d]);
            }
        }
        for (d, t) in &mine {
            if t == "fuse.glusterfs" {
                let _ = self.anchor.exec(&["umount", "-l", d]);
            }
        }
        self.anchor.kill();
        if let Some(mut c) = self.client.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A test body running on a host.
pub struct RunningTest {
    pub child: Child,
    rx: mpsc::Receiver<String>,
}

impl RunningTest {
    /// Waits for a `tell_parent` line starting with `prefix`; returns the
    /// rest of the line.
    pub fn wait_for(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_string();
                    }
                }
                Err(_) => {
                    let st = self.child.try_wait().ok().flatten();
                    panic!("no `{prefix}` from the host's test body (exit: {st:?})");
                }
            }
        }
    }

    /// Waits for the body to end (killing it after `timeout`).
    pub fn finish(mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().ok().flatten() {
                return st;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                return self.child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RunningTest {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Client caches turned off on a volume that holds overlay uppers.
pub const UPPER_VOLUME_OPTIONS: &[&str] = &[
    "performance.stat-prefetch",
    "performance.quick-read",
    "performance.io-cache",
    "performance.read-ahead",
    "performance.readdir-ahead",
    "performance.open-behind",
    "performance.nl-cache",
    // Reorder namespace operations of a busy client (README).
    "performance.write-behind",
    "performance.client-io-threads",
];
