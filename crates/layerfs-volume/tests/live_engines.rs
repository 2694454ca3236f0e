//! Live snapshots under real engines: a container started through the
//! Docker or podman volume plugin runs three writers at once (a SQLite
//! database in WAL mode, an fsync'ed append-only log with a second hard
//! link, a file replaced by renames) while `layerfs-volume backup` takes
//! 20 snapshots of the mounted volume, one more run being killed halfway.
//! Every backup point, restored on a fresh store, must be what a power cut
//! at that instant would leave: a sound database and gapless prefixes of
//! the transactions and records, holding at least everything acknowledged
//! before the snapshot began and nothing begun after it ended. The
//! containers never see an error and their inode numbers do not change.
//! Mounted: run as root.

// The mounted-test helpers of the filesystem crate, shared.
#[path = "../../../tests/common/mod.rs"]
mod common;
mod vol_common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use vol_common::{bin, podman_with_plugin, short_tmp, Engine, Fixture};

/// How many live backups a run takes, and how far apart they start.
const SNAPSHOTS: usize = 20;
const PERIOD: Duration = Duration::from_millis(500);

/// The size of one log record: `record NNNNNNNN ` and dots, then `\n`.
const RECORD: usize = 64;

/// Log record `n` (from 1), exactly `RECORD` bytes.
fn record(n: u64) -> String {
    format!("record {n:08} {}\n", ".".repeat(RECORD - 17))
}

/// The busybox applets the writers use.
const APPLETS: [&str; 8] = ["sh", "dd", "echo", "ln", "mv", "printf", "stat", "touch"];

/// An image root of host binaries (no registry here): busybox, and the
/// host's `sqlite3` with every library `ldd` lists, at the same paths.
/// Returns the tar to import.
fn image_tar(scratch: &Path) -> PathBuf {
    let root = vol_common::busybox_rootfs(scratch, &APPLETS);
    let sqlite = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v sqlite3"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let sqlite = Path::new(sqlite.trim()).canonicalize().unwrap();
    fs::copy(&sqlite, root.join("bin/sqlite3")).unwrap();
    let ldd = Command::new("ldd").arg(&sqlite).output().unwrap();
    assert!(ldd.status.success(), "{}", common::output_text(&ldd));
    // Lines are `name => /path (addr)` or `/path (addr)`; the vdso has no
    // path.
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(Path::new);
        if let Some(lib) = path {
            let to = root.join(lib.strip_prefix("/").unwrap());
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::copy(lib, &to).unwrap();
        }
    }
    fs::create_dir_all(root.join("tmp")).unwrap();
    common::chmod(&root.join("tmp"), 0o1777);
    vol_common::rootfs_tar(&root, scratch)
}

/// The writers, each named by its ack file in the container's /tmp
/// (`ack.NAME`): the database, the log, the renamed file.
const WRITERS: [&str; 3] = ["db", "log", "cur"];

/// The container's script: three writers on /data until /tmp/stop exists.
/// - One sqlite3 connection in WAL mode (synchronous=FULL: each commit
///   fsyncs the WAL) commits transaction N (row N) and only then writes N
///   to /tmp/ack.db.
/// - A loop appends record N to /data/log with one write, fsyncs it
///   (`dd conv=fsync`), and only then writes N to /tmp/ack.log. The log
///   has a second name, log.link: each rotation's first write copies the
///   file up by one name, and the set must stay one file.
/// - A loop writes N to cur.tmp and renames it over cur, then writes N to
///   /tmp/ack.cur: renames (each one unlinking the old cur) race the
///   barrier.
///
/// The acks live outside the volume. The inode numbers of the db, log and
/// log.link are printed before the writers start and after they stop;
/// then each writer's exit status.
fn writers_script() -> String {
    let rec = record(0).replace("00000000", "%08d").replace('\n', "\\n");
    format!(
        "set -e\n\
         cd /data\n\
         sqlite3 -bail db 'PRAGMA journal_mode=WAL; \
           CREATE TABLE t(n INTEGER PRIMARY KEY, pad BLOB NOT NULL);' >/dev/null\n\
         touch log\n\
         ln log log.link\n\
         echo ino $(stat -c %i db log log.link)\n\
         set +e\n\
         statements() {{\n\
           echo 'PRAGMA synchronous=FULL;'\n\
           i=0\n\
           while [ ! -e /tmp/stop ]; do\n\
             i=$((i+1))\n\
             echo \"INSERT INTO t VALUES($i, randomblob(300));\"\n\
             echo '.once /tmp/ack.db'\n\
             echo \"SELECT $i;\"\n\
           done\n\
         }}\n\
         records() {{\n\
           i=0\n\
           while [ ! -e /tmp/stop ]; do\n\
             i=$((i+1))\n\
             printf '{rec}' $i | dd of=/data/log bs={RECORD} count=1 iflag=fullblock \
               oflag=append conv=notrunc,fsync status=none || return 1\n\
             echo $i > /tmp/ack.log\n\
           done\n\
         }}\n\
         renames() {{\n\
           i=0\n\
           while [ ! -e /tmp/stop ]; do\n\
             i=$((i+1))\n\
             echo $i > /data/cur.tmp || return 1\n\
             mv /data/cur.tmp /data/cur || return 1\n\
             echo $i > /tmp/ack.cur\n\
           done\n\
         }}\n\
         statements | sqlite3 -bail /data/db >/dev/null & db=$!\n\
         records & log=$!\n\
         renames & cur=$!\n\
         wait $db; sdb=$?\n\
         wait $log; slog=$?\n\
         wait $cur; scur=$?\n\
         echo ino $(stat -c %i /data/db /data/log /data/log.link)\n\
         echo exit $sdb $slog $scur\n\
         [ $sdb = 0 ] && [ $slog = 0 ] && [ $scur = 0 ]\n"
    )
}

/// A writer's acknowledged counter, read from the container's /tmp
/// through /proc (0 before its first ack). The writer rewrites it in
/// place: a read that meets it half-written is retried.
fn acked(root: &Path, writer: &str) -> u64 {
    let path = root.join("tmp").join(format!("ack.{writer}"));
    for _ in 0..1000 {
        match fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
            Ok(s) if s.ends_with('\n') => return s.trim().parse().unwrap(),
            _ => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    panic!("{} stays half-written", path.display());
}

/// Every writer's ack, in the order of `WRITERS`.
fn acks(root: &Path) -> [u64; 3] {
    WRITERS.map(|w| acked(root, w))
}

/// One backup point: its snapshot, and the writers' acks read just
/// before the backup started and just after it ended.
struct Point {
    snap: String,
    before: [u64; 3],
    after: [u64; 3],
}

/// What the engine-specific part gives the common run: the engine's CLI
/// (docker or podman, same subcommands), the plugin's store, and a way to
/// run a command in the mount namespace where the plugin mounts volumes.
struct Setup<'a> {
    engine: &'a dyn Fn(&[&str]) -> Output,
    store: &'a Path,
    where_mounted: &'a dyn Fn(&[&str]) -> Command,
}

impl Setup<'_> {
    /// `layerfs-volume --store STORE ARGS`, where the volume is mounted.
    fn tool(&self, args: &[&str]) -> Command {
        let mut all = vec![bin(), "--store", self.store.to_str().unwrap()];
        all.extend_from_slice(args);
        (self.where_mounted)(&all)
    }

    /// A `backup` killed with SIGKILL after a random time below `within`;
    /// then the read-only view it may leave mounted (the tool does not
    /// clean it up yet) is unmounted, lest its daemon outlive the test.
    fn killed_backup(&self, backups: &Path, within: Duration) {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let after =
            Duration::from_micros(common::Rng::new(seed).below(within.as_micros() as u64 + 1));
        let mut child = self
            .tool(&["backup", "vol", "--to", backups.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(after);
        let _ = child.kill();
        let status = child.wait().unwrap();
        eprintln!("a backup killed after {after:?} (seed {seed}): {status}");
        let views = format!(
            "for v in '{}'/vol/.view-*; do mountpoint -q \"$v\" && umount \"$v\"; done; true",
            self.store.display()
        );
        let out = (self.where_mounted)(&["sh", "-c", &views])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::output_text(&out));
    }

    fn engine_ok(&self, args: &[&str]) -> String {
        let out = (self.engine)(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            common::output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// Runs the writers in a container on volume `vol` (made by the plugin)
/// of image `img`, takes the live backups into `backups`, stops the
/// writers and checks what the container saw. Returns the points.
fn backups_while_writing(s: &Setup, img: &str, backups: &Path) -> Vec<Point> {
    let id = s.engine_ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "writers",
        "-v",
        "vol:/data",
        img,
        "sh",
        "-c",
        &writers_script(),
    ]);
    let pid = s.engine_ok(&["inspect", "-f", "{{.State.Pid}}", &id]);
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while acks(&root).contains(&0) {
        assert!(
            Instant::now() < deadline,
            "the writers did not start: {}",
            common::output_text(&(s.engine)(&["logs", &id]))
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The files the writers hold open, as the container sees them (its
    // mount, reached through /proc): their inode numbers stay.
    let inos = || {
        use std::os::unix::fs::MetadataExt;
        ["db", "db-wal", "db-shm", "log", "log.link"]
            .map(|f| fs::metadata(root.join("data").join(f)).unwrap().ino())
    };
    let first = inos();
    let mut points = Vec::new();
    let mut longest = Duration::ZERO;
    let start = Instant::now();
    for n in 0..SNAPSHOTS {
        let due = start + PERIOD * n as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if n == SNAPSHOTS / 2 {
            // Halfway, a run is killed at any step: the next ones finish
            // or redo what it left, and the writers see nothing of it.
            s.killed_backup(backups, longest);
        }
        let before = acks(&root);
        let t = Instant::now();
        let out = s
            .tool(&["backup", "vol", "--to", backups.to_str().unwrap()])
            .output()
            .unwrap();
        longest = longest.max(t.elapsed());
        let after = acks(&root);
        assert!(
            out.status.success(),
            "backup {n}: {}",
            common::output_text(&out)
        );
        assert_eq!(
            inos(),
            first,
            "inode numbers of db, db-wal, db-shm, log, log.link"
        );
        let snap = String::from_utf8_lossy(&out.stdout);
        let snap = snap.split('\t').next().unwrap().trim().to_string();
        points.push(Point {
            snap,
            before,
            after,
        });
    }
    let took = start.elapsed();
    fs::write(root.join("tmp/stop"), b"").unwrap();
    let status = s.engine_ok(&["wait", &id]);
    let logs = (s.engine)(&["logs", &id]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&logs.stdout),
        String::from_utf8_lossy(&logs.stderr),
    );
    assert_eq!(status, "0", "the writers failed:\n{stdout}{stderr}");
    assert!(stderr.is_empty(), "the writers saw errors:\n{stderr}");
    let inos: Vec<&str> = stdout.lines().filter(|l| l.starts_with("ino ")).collect();
    assert_eq!(inos.len(), 2, "{stdout}");
    assert_eq!(inos[0], inos[1], "inode numbers changed: {stdout}");
    let ino: Vec<&str> = inos[0].split(' ').collect();
    assert_eq!(ino[2], ino[3], "log and log.link are one file: {stdout}");
    let last = points.last().unwrap();
    eprintln!(
        "{SNAPSHOTS} live backups in {took:?}; acked by the last one: {:?} ({WRITERS:?})",
        last.before
    );
    points
}

/// Restores each point from `backups` on the fresh store `store` and
/// checks what it holds.
fn check_points(fx: &Fixture, store: &Path, backups: &Path, points: &[Point]) {
    let mut last = [0; 3];
    for (n, p) in points.iter().enumerate() {
        let name = format!("r{n}");
        let out = fx.run_in(
            store,
            &["restore", backups.to_str().unwrap(), &name, "--at", &p.snap],
        );
        assert!(out.status.success(), "{}", common::output_text(&out));
        let out = fx.run_in(store, &["mount", &name]);
        assert!(out.status.success(), "{}", common::output_text(&out));
        let mp = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let held = [
            db_prefix(&mp.join("db")),
            log_prefix(&mp),
            renamed_value(&mp.join("cur")),
        ];
        let out = fx.run_in(store, &["umount", &name]);
        assert!(out.status.success(), "{}", common::output_text(&out));
        let what = format!(
            "snapshot {} holds {held:?} of {WRITERS:?}; acked before it {:?}, after it {:?}",
            p.snap, p.before, p.after
        );
        // Everything acknowledged before the snapshot began is in it...
        // ...and nothing begun after it ended: each writer starts N+2
        // only after N+1 is acknowledged. Nor does a later point hold less.
        for w in 0..WRITERS.len() {
            assert!(held[w] >= p.before[w], "{what}");
            assert!(held[w] <= p.after[w] + 1, "{what}");
            assert!(held[w] >= last[w], "{what}; the point before held {last:?}");
        }
        last = held;
    }
}

/// Checks the restored database and returns how many transactions it
/// holds: it must pass `integrity_check` and hold rows 1..=k, no gap.
fn db_prefix(db: &Path) -> u64 {
    let sql = |q: &str| {
        let out = Command::new("sqlite3").arg(db).arg(q).output().unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "sqlite3 {q}: {}",
            common::output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(sql("PRAGMA integrity_check"), "ok");
    let counts = sql("SELECT count(*), coalesce(min(n), 1), coalesce(max(n), 0) FROM t");
    let v: Vec<u64> = counts.split('|').map(|x| x.parse().unwrap()).collect();
    assert!(v[1] == 1 && v[0] == v[2], "rows are no prefix: {counts}");
    v[0]
}

/// Checks the restored log in volume `mp` and returns how many records it
/// holds: whole records 1..=k, in order, nothing torn; and log.link still
/// the same file.
fn log_prefix(mp: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let (log, link) = (mp.join("log"), mp.join("log.link"));
    let (a, b) = (fs::metadata(&log).unwrap(), fs::metadata(&link).unwrap());
    assert!(
        a.ino() == b.ino() && a.nlink() == 2,
        "log and log.link are no longer one file: inodes {} and {}, {} links",
        a.ino(),
        b.ino(),
        a.nlink()
    );
    let data = fs::read(log).unwrap();
    assert_eq!(
        data.len() % RECORD,
        0,
        "a torn record: {} bytes",
        data.len()
    );
    for (i, r) in data.chunks(RECORD).enumerate() {
        let want = record(i as u64 + 1);
        assert_eq!(
            r,
            want.as_bytes(),
            "record {}: {:?}",
            i + 1,
            String::from_utf8_lossy(r)
        );
    }
    (data.len() / RECORD) as u64
}

/// The number the restored `cur` holds, written whole (0 when it was not
/// made yet): it is only ever replaced by a rename.
fn renamed_value(cur: &Path) -> u64 {
    match fs::read_to_string(cur) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Ok(s) => s
            .strip_suffix('\n')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("cur holds {s:?}")),
        Err(e) => panic!("{}: {e}", cur.display()),
    }
}

#[test]
fn docker_writers_survive_live_backups() {
    require!("dockerd", "docker", "unshare", "nsenter", "busybox", "sqlite3", "ldd", "tar");
    let tmp = short_tmp("lfl");
    let dir = tmp.path();
    let engine = Engine::start(dir);
    engine.ok(&["import", image_tar(dir).to_str().unwrap(), "lt:1"]);
    engine.ok(&["volume", "create", "-d", "layerfs", "vol"]);
    let docker = |args: &[&str]| engine.docker(args);
    // The plugin mounts in dockerd's namespace: the tool runs there.
    let in_ns = |args: &[&str]| engine.in_ns(args);
    let setup = Setup {
        engine: &docker,
        store: &engine.store,
        where_mounted: &in_ns,
    };
    let backups = dir.join("backups");
    let points = backups_while_writing(&setup, "lt:1", &backups);
    let fx = Fixture::new();
    check_points(&fx, &fx.path("fresh"), &backups, &points);
    drop(engine);
}

#[test]
fn podman_writers_survive_live_backups() {
    require!("podman", "runc", "busybox", "sqlite3", "ldd", "tar");
    let mut fx = Fixture::new();
    let sock = fx.path("plugins/layerfs.sock");
    let podman = podman_with_plugin(&mut fx, &sock);
    podman.ok(&[
        "import",
        image_tar(&fx.path("image")).to_str().unwrap(),
        "lt:1",
    ]);
    podman.ok(&["volume", "create", "--driver", "layerfs", "vol"]);
    let engine = |args: &[&str]| podman.cmd(args).output().unwrap();
    // The plugin mounts in the test's namespace.
    let here = |args: &[&str]| {
        let mut c = Command::new(args[0]);
        c.args(&args[1..]);
        c
    };
    let setup = Setup {
        engine: &engine,
        store: &fx.store,
        where_mounted: &here,
    };
    let backups = fx.path("backups");
    let points = backups_while_writing(&setup, "lt:1", &backups);
    check_points(&fx, &fx.path("fresh"), &backups, &points);
}

/// A daemon mounted in a mount namespace of its own (as a plugin started
/// in dockerd's private namespace mounts its volumes): on drop, its mount
/// is undone there, and the daemon ends.
struct ForeignMount {
    pid: u32,
    mnt: PathBuf,
}

impl ForeignMount {
    /// Mounts volume `name` of the fixture's store with `layerfs-volume
    /// mount` run in a new mount namespace, which its daemon keeps alive.
    fn new(fx: &Fixture, name: &str) -> ForeignMount {
        let out = Command::new("unshare")
            .args(["-m", "--propagation", "private", bin(), "--store"])
            .arg(&fx.store)
            .args(["mount", name])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::output_text(&out));
        let mnt = fx.store.join(name).join("merged");
        let pid = common::daemon_pid(&mnt).expect("the volume's daemon");
        assert!(!common::is_mounted(&mnt), "not mounted in this namespace");
        ForeignMount { pid, mnt }
    }

    /// The mount as the daemon's namespace sees it.
    fn seen(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid)).join(self.mnt.strip_prefix("/").unwrap())
    }
}

impl Drop for ForeignMount {
    fn drop(&mut self) {
        let _ = Command::new("nsenter")
            .arg("-t")
            .arg(self.pid.to_string())
            .args(["-m", "--", "umount", "-l"])
            .arg(&self.mnt)
            .status();
        let proc = PathBuf::from(format!("/proc/{}", self.pid));
        let deadline = Instant::now() + Duration::from_secs(10);
        while proc.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if proc.exists() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
        }
    }
}

/// A volume mounted in another mount namespace (Docker's plugin in a
/// daemon with private mounts, a service unit with PrivateMounts=) is
/// mounted for `snapshot` (and so `backup`) too: its daemon's control
/// socket answers, and the snapshot is a live one. (It once took the
/// offline path and renamed `upper/` under the running daemon, whose
/// later writes then landed in the "immutable" snapshot.)
#[test]
fn snapshot_from_another_mount_namespace_is_taken_live() {
    require!("unshare", "nsenter");
    let fx = Fixture::new();
    fx.ok(&["create", "v"]);
    let mount = ForeignMount::new(&fx, "v");
    let seen = mount.seen();
    common::write(&seen.join("a"), b"before\n");
    let mut held = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(seen.join("log"))
        .unwrap();
    held.write_all(b"before\n").unwrap();

    let out = fx.run(&["snapshot", "v"]);
    if !out.status.success() {
        // A refusal changes nothing: fine.
        assert!(!fx.store.join("v/snapshots/s1").exists());
        return;
    }
    held.write_all(b"after\n").unwrap();
    common::write(&seen.join("b"), b"after\n");
    let snap = fx.store.join("v/snapshots/s1");
    assert!(
        !snap.join("b").exists(),
        "a file made after snapshot s1 is in it: the snapshot was renamed under the running daemon"
    );
    assert_eq!(
        fs::read(snap.join("log")).unwrap(),
        b"before\n",
        "a write after snapshot s1 changed it"
    );
}

/// Nor may `rm` delete a volume mounted in another namespace (it once
/// did: the data under the running daemon was gone, and the containers'
/// mount with it).
#[test]
fn rm_from_another_mount_namespace_is_refused_while_in_use() {
    require!("unshare", "nsenter");
    let fx = Fixture::new();
    fx.ok(&["create", "v"]);
    let mount = ForeignMount::new(&fx, "v");
    common::write(&mount.seen().join("data"), b"precious\n");
    let out = fx.run(&["rm", "v"]);
    assert!(
        !out.status.success(),
        "rm of a volume mounted in another namespace succeeded"
    );
    assert_eq!(fs::read(mount.seen().join("data")).unwrap(), b"precious\n");
}
