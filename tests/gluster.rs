//! layerfs with its layers on a real GlusterFS volume (issue 12): writes
//! through it match kernel overlayfs with a local upper, a host that dies
//! leaves every change it had synced to the next host, and a second host
//! cannot mount a volume that is in use.
//!
//! Each test starts its own GlusterFS server in a network namespace (see
//! tests/common/gluster.rs) and runs its steps on "hosts": the test binary
//! started again inside a host's namespaces with `LAYERFS_GLUSTER_ROLE`
//! naming the step, which the test function dispatches on first.

mod common;

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::gluster::{child_base, role, tell_parent, Cluster};
use common::*;

/// The layers of one volume: lowers on the volume too, as a user who keeps
/// everything on shared storage has them.
struct Layout {
    gl: PathBuf,
    mnt: PathBuf,
}

impl Layout {
    fn here() -> Layout {
        let base = child_base();
        Layout {
            gl: base.join("gl"),
            mnt: base.join("mnt"),
        }
    }
    fn lower(&self) -> PathBuf {
        self.gl.join("lower")
    }
    fn upper(&self) -> PathBuf {
        self.gl.join("vol/upper")
    }
    fn work(&self) -> PathBuf {
        self.gl.join("vol/work")
    }
    /// The same options on every host (each mounts the volume at `gl`).
    fn opts(&self) -> String {
        let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let log = child_base().join(format!("layerfs-{}.log", host.trim()));
        format!(
            "{},upperdir={},workdir={},logfile={}",
            lowerdir_opt(&[self.lower()]),
            self.upper().display(),
            self.work().display(),
            log.display()
        )
    }
    fn mount(&self) -> Mounted {
        try_mount_layerfs(&self.opts(), &self.mnt).unwrap_or_else(|e| {
            panic!(
                "mount layerfs with upper on GlusterFS: {e}\n{}",
                self.log_tail()
            )
        })
    }
    fn log_tail(&self) -> String {
        let mut s = String::new();
        for e in fs::read_dir(child_base()).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("layerfs-") {
                let t = fs::read_to_string(e.path()).unwrap_or_default();
                let lines: Vec<&str> = t.lines().collect();
                s += &format!(
                    "--- {n}\n{}\n",
                    lines[lines.len().saturating_sub(20)..].join("\n")
                );
            }
        }
        s
    }
}

/// A lower tree with a config file to append to, files and dirs to
/// rename and delete, a merged dir to empty, and lower hard links.
fn build_lower(l: &Path) {
    write(&l.join("etc/app/conf"), b"conf\n");
    write(&l.join("etc/app/other"), b"other\n");
    write(&l.join("etc/app/mode"), b"mode\n");
    write(&l.join("docs/readme"), b"readme\n");
    write(&l.join("docs/keep"), b"keep\n");
    write(&l.join("dir/d1/file"), b"d1 file\n");
    write(&l.join("dir/d1/sub/deep"), b"deep\n");
    write(&l.join("merged/x"), b"x\n");
    write(&l.join("links/a"), b"shared\n");
    fs::hard_link(l.join("links/a"), l.join("links/b")).unwrap();
    link_sym("../etc/app/conf", &l.join("links/sym"));
}

fn errno(r: io::Result<()>) -> Result<(), i32> {
    r.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

fn append(p: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = fs::OpenOptions::new().append(true).open(p)?;
    f.write_all(data)?;
    f.sync_all()
}

/// The steps of `writes_on_a_glusterfs_upper_match_kernel_overlayfs`, as
/// (name, operation) applied to a merged root.
type Step = (&'static str, fn(&Path) -> io::Result<()>);

const STEPS: &[Step] = &[
    ("copy-up by append", |m| {
        append(&m.join("etc/app/conf"), b"more\n")
    }),
    ("create", |m| fs::write(m.join("new.txt"), b"new\n")),
    // GlusterFS mounted without `-o acl` has no POSIX ACLs: the kernel
    // asks for them when root writes a file it does not own.
    ("give a file to another user", |m| {
        fs::write(m.join("owned"), b"owned\n")?;
        std::os::unix::fs::chown(m.join("owned"), Some(1000), Some(1000))?;
        fs::set_permissions(m.join("owned"), fs::Permissions::from_mode(0o664))
    }),
    ("root writes a file it does not own", |m| {
        append(&m.join("owned"), b"by root\n")
    }),
    ("mkdir and create in it", |m| {
        fs::create_dir(m.join("newdir"))?;
        fs::write(m.join("newdir/f"), b"f\n")
    }),
    ("rename a lower file", |m| {
        fs::rename(m.join("etc/app/other"), m.join("etc/app/other2"))
    }),
    ("rename a lower dir", |m| {
        fs::rename(m.join("dir/d1"), m.join("moved"))
    }),
    ("write in the renamed dir", |m| {
        append(&m.join("moved/sub/deep"), b"+\n")
    }),
    ("rename a new file over a lower one", |m| {
        fs::write(m.join("tmp"), b"replaced\n")?;
        fs::rename(m.join("tmp"), m.join("docs/keep"))
    }),
    ("chmod a lower file", |m| {
        fs::set_permissions(m.join("etc/app/mode"), fs::Permissions::from_mode(0o600))
    }),
    ("unlink a lower file", |m| {
        fs::remove_file(m.join("docs/readme"))
    }),
    ("unlink again is ENOENT", |m| {
        fs::remove_file(m.join("docs/readme"))
    }),
    ("add to a merged dir", |m| {
        fs::write(m.join("merged/y"), b"y\n")
    }),
    ("rmdir of a non-empty merged dir", |m| {
        fs::remove_dir(m.join("merged"))
    }),
    ("empty the merged dir", |m| {
        fs::remove_file(m.join("merged/x"))?;
        fs::remove_file(m.join("merged/y"))
    }),
    ("rmdir of the merged dir", |m| {
        fs::remove_dir(m.join("merged"))
    }),
    ("recreate the removed dir", |m| {
        fs::create_dir(m.join("merged"))?;
        fs::write(m.join("merged/z"), b"z\n")
    }),
    ("hard link a new file", |m| {
        fs::hard_link(m.join("new.txt"), m.join("new-link"))
    }),
    ("hard link a copied-up file", |m| {
        fs::hard_link(m.join("etc/app/conf"), m.join("conf-link"))
    }),
    ("write through a hard link", |m| {
        append(&m.join("new-link"), b"via link\n")
    }),
    ("rename over a hard link", |m| {
        fs::rename(m.join("newdir/f"), m.join("new-link"))
    }),
    ("rename a dir with new content", |m| {
        fs::rename(m.join("newdir"), m.join("newdir2"))
    }),
    ("rmdir of a lower dir that is not empty", |m| {
        fs::remove_dir(m.join("etc"))
    }),
];

const CMP: Compare = Compare {
    ino: false,
    nlink: true,
    mtime: false,
    dir_mtime: false,
};

/// lower, upper and work dir on GlusterFS: the steps give what kernel
/// overlayfs gives with a local upper, call for call, the upper reads back
/// the same after a remount, the lower is untouched, and the daemon lives.
#[test]
fn writes_on_a_glusterfs_upper_match_kernel_overlayfs() {
    const NAME: &str = "writes_on_a_glusterfs_upper_match_kernel_overlayfs";
    if let Some(r) = role() {
        assert_eq!(r, "body");
        return writes_body();
    }
    require_gluster!();
    let cluster = Cluster::start();
    let host = cluster.host("a");
    host.run_test_ok(NAME, "body");
}

fn writes_body() {
    let lay = Layout::here();
    let base = child_base();
    build_lower(&lay.lower());
    mkdir(&lay.upper());
    mkdir(&lay.work());
    let lower_before = fingerprint(&lay.lower());
    let mut ours = lay.mount();
    let daemon = daemon_pid(&lay.mnt).expect("layerfs daemon");

    // The reference: kernel overlayfs, everything local.
    let klower = base.join("k-lower");
    build_lower(&klower);
    let (ku, kw) = (base.join("k-upper"), base.join("k-work"));
    mkdir(&ku);
    mkdir(&kw);
    let kernel = mount_kernel(
        &[klower],
        &base.join("k-mnt"),
        &format!(
            "upperdir={},workdir={},redirect_dir=on,index=off,metacopy=off",
            ku.display(),
            kw.display()
        ),
    );
    assert_same(&ours.dir, &kernel.dir, CMP);

    for (what, step) in STEPS {
        let t0 = Instant::now();
        let got = errno(step(&ours.dir));
        let want = errno(step(&kernel.dir));
        eprintln!("step {what}: {got:?} in {:.2?}", t0.elapsed());
        assert_eq!(
            got,
            want,
            "step `{what}`: layerfs on GlusterFS vs kernel overlayfs\n{}",
            lay.log_tail()
        );
        let d = diff(&snapshot(&ours.dir), &snapshot(&kernel.dir), CMP);
        assert!(d.is_empty(), "after `{what}`:\n{}", d.join("\n"));
    }
    assert_eq!(
        daemon_pid(&lay.mnt),
        Some(daemon),
        "the layerfs daemon must survive"
    );

    // Lower hard links written to: with an index they stay one file (the
    // other name sees the write), without one (no usable file handles on
    // a FUSE lower) the written name is a copy, as kernel overlayfs does
    // with index=off. Either way, what is shown now must survive the
    // remount below.
    append(&ours.path("links/a"), b"+more\n").unwrap();
    let (a, b) = (
        fs::metadata(ours.path("links/a")).unwrap(),
        fs::metadata(ours.path("links/b")).unwrap(),
    );
    assert_eq!(fs::read(ours.path("links/a")).unwrap(), b"shared\n+more\n");
    let b_data = fs::read(ours.path("links/b")).unwrap();
    if a.ino() == b.ino() {
        assert_eq!((a.nlink(), b_data.as_slice()), (2, &b"shared\n+more\n"[..]));
    } else {
        assert_eq!(b_data, b"shared\n", "a broken link keeps the old data");
    }

    // What the upper on GlusterFS holds reads back the same after a remount.
    let before = snapshot(&ours.dir);
    ours.unmount();
    let again = lay.mount();
    let d = diff(&before, &snapshot(&again.dir), Compare::CONTENT);
    assert!(d.is_empty(), "after a remount:\n{}", d.join("\n"));
    let d = diff(&lower_before, &fingerprint(&lay.lower()), Compare::ALL);
    assert!(d.is_empty(), "the lower changed:\n{}", d.join("\n"));
}

// ---- two hosts -----------------------------------------------------------

/// The big lower file a copy-up is killed in the middle of.
const BIG: usize = 128 << 20;

fn big_content() -> Vec<u8> {
    (0..(BIG / 4) as u32)
        .flat_map(|i| i.to_le_bytes())
        .collect()
}

fn fsync_dir(p: &Path) {
    fs::File::open(p)
        .and_then(|d| d.sync_all())
        .unwrap_or_else(|e| panic!("fsync {p:?}: {e}"));
}

fn write_synced(p: &Path, data: &[u8]) {
    let mut f = fs::File::create(p).unwrap_or_else(|e| panic!("create {p:?}: {e}"));
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
    fsync_dir(p.parent().unwrap());
}

/// Host A writes and syncs through layerfs, then dies (its daemon and its
/// glusterfs client killed at once) in the middle of a large copy-up; host
/// B mounts the same upper and work dir and finds every synced change and
/// the big file whole (old or new), then goes on writing.
#[test]
fn a_second_host_takes_over_after_the_first_dies() {
    const NAME: &str = "a_second_host_takes_over_after_the_first_dies";
    match role().as_deref() {
        Some("a-write") => return takeover_a(),
        Some("b-verify") => return takeover_b(),
        Some(r) => panic!("unknown role {r}"),
        None => {}
    }
    require_gluster!();
    let cluster = Cluster::start();
    let mut a = cluster.host("a");
    let b = cluster.host("b");

    let mut body = a.spawn_test(NAME, "a-write");
    let daemon: u32 = body
        .wait_for("DAEMON ", Duration::from_secs(120))
        .parse()
        .unwrap();
    body.wait_for("COPYUP", Duration::from_secs(60));
    // Kill while the copy-up is half done: the staging file in the work
    // dir (seen on the brick) has some of the data but not all.
    let work = cluster.brick().join("vol/work");
    let t0 = Instant::now();
    let mut partial = None;
    while t0.elapsed() < Duration::from_secs(60) {
        if let Some(n) = partial_file(&work, BIG as u64) {
            partial = Some(n);
            break;
        }
        if body.child.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    a.crash(&[daemon]);
    eprintln!("host-a killed with a staging file of {partial:?} bytes");
    drop(body);
    assert!(
        partial.is_some(),
        "the copy-up was never seen half done in the work dir"
    );
    b.run_test_ok(NAME, "b-verify");
}

/// The size of a regular file under `dir` that is bigger than any
/// bookkeeping file there (the lock file holds a pid and a host name) but
/// not `full` bytes long: a copy-up being staged.
fn partial_file(dir: &Path, full: u64) -> Option<u64> {
    for e in fs::read_dir(dir).ok()?.flatten() {
        let md = e.metadata().ok()?;
        if md.is_dir() {
            if let Some(n) = partial_file(&e.path(), full) {
                return Some(n);
            }
        } else if md.is_file() && md.len() > 64 * 1024 && md.len() < full {
            return Some(md.len());
        }
    }
    None
}

fn takeover_a() {
    let lay = Layout::here();
    build_lower(&lay.lower());
    write(&lay.lower().join("big"), &big_content());
    mkdir(&lay.upper());
    mkdir(&lay.work());
    let m = lay.mount();
    let mnt = &m.dir;
    write_synced(&mnt.join("created"), b"created on a\n");
    append(&mnt.join("etc/app/conf"), b"more\n").expect("copy-up by append");
    fsync_dir(&mnt.join("etc/app"));
    fs::rename(mnt.join("etc/app/other"), mnt.join("etc/app/renamed")).unwrap();
    fsync_dir(&mnt.join("etc/app"));
    fs::remove_file(mnt.join("docs/readme")).unwrap();
    fsync_dir(&mnt.join("docs"));
    fs::rename(mnt.join("dir/d1"), mnt.join("d1-moved")).unwrap();
    fsync_dir(mnt);
    fsync_dir(&mnt.join("dir"));
    fs::set_permissions(mnt.join("etc/app/mode"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::File::open(mnt.join("etc/app/mode"))
        .and_then(|f| f.sync_all())
        .unwrap();
    fs::create_dir(mnt.join("newdir")).unwrap();
    write_synced(&mnt.join("newdir/f"), b"f\n");
    fsync_dir(mnt);
    // Not synced: may or may not be there on host B, but never half.
    fs::write(mnt.join("unsynced"), b"maybe\n").unwrap();

    let daemon = daemon_pid(mnt).expect("layerfs daemon");
    tell_parent(&format!("DAEMON {daemon}"));
    tell_parent("COPYUP");
    // Opening for write copies the whole big file up; the host dies first.
    let r = fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("big"))
        .and_then(|mut f| {
            f.write_all(b"NEW!")?;
            f.sync_all()
        });
    eprintln!("big copy-up on host a: {r:?}");
    // The parent kills this host now; keep the mount as it is.
    std::mem::forget(m);
    std::thread::sleep(Duration::from_secs(600));
}

fn takeover_b() {
    let lay = Layout::here();
    let m = lay.mount();
    let p = |s: &str| m.dir.join(s);
    let read = |s: &str| fs::read(p(s)).unwrap_or_else(|e| panic!("read {s}: {e}"));
    assert_eq!(read("created"), b"created on a\n");
    assert_eq!(read("etc/app/conf"), b"conf\nmore\n");
    assert_eq!(read("etc/app/renamed"), b"other\n");
    assert!(!p("etc/app/other").exists(), "renamed away");
    assert!(!p("docs/readme").exists(), "deleted");
    assert_eq!(read("docs/keep"), b"keep\n");
    assert_eq!(read("d1-moved/file"), b"d1 file\n");
    assert_eq!(read("d1-moved/sub/deep"), b"deep\n");
    assert!(!p("dir/d1").exists(), "dir renamed away");
    assert_eq!(
        fs::metadata(p("etc/app/mode")).unwrap().mode() & 0o7777,
        0o600
    );
    assert_eq!(read("newdir/f"), b"f\n");
    if let Ok(d) = fs::read(p("unsynced")) {
        assert!(d.is_empty() || d == b"maybe\n", "unsynced: {d:?}");
    }
    // The big file is the lower one or the whole copy (with or without
    // the 4 bytes written after it): never a part.
    let got = read("big");
    let old = big_content();
    assert_eq!(got.len(), old.len(), "big: size");
    assert!(
        got[4..] == old[4..] && (got[..4] == old[..4] || &got[..4] == b"NEW!"),
        "big: a partial copy-up is visible"
    );
    // The dead host's staging files are gone (recovered at mount).
    let leftovers: Vec<_> = fs::read_dir(lay.work().join("work"))
        .expect("the work dir's work/")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "work dir leftovers: {leftovers:?}");

    // And host B goes on writing.
    append(&p("created"), b"and on b\n").unwrap();
    append(&p("big"), b"tail").unwrap();
    fs::rename(p("etc/app/renamed"), p("etc/app/renamed-on-b")).unwrap();
    fs::remove_file(p("docs/keep")).unwrap();
    write_synced(&p("from-b"), b"b\n");
    let mut m = m;
    m.unmount();
    let m = lay.mount();
    let p = |s: &str| m.dir.join(s);
    assert_eq!(fs::read(p("created")).unwrap(), b"created on a\nand on b\n");
    assert_eq!(fs::read(p("etc/app/renamed-on-b")).unwrap(), b"other\n");
    assert!(!p("docs/keep").exists());
    assert_eq!(fs::read(p("from-b")).unwrap(), b"b\n");
    let mut f = fs::File::open(p("big")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), (BIG + 4) as u64);
    let mut tail = [0u8; 4];
    f.seek(SeekFrom::End(-4)).unwrap();
    f.read_exact(&mut tail).unwrap();
    assert_eq!(&tail, b"tail");
}

/// While host A has the volume mounted, host B is refused with a message
/// naming host A, and nothing in the volume changes; once A unmounts, B
/// mounts it and sees A's work.
#[test]
fn a_second_host_is_refused_while_the_volume_is_in_use() {
    const NAME: &str = "a_second_host_is_refused_while_the_volume_is_in_use";
    match role().as_deref() {
        Some("a-hold") => return refused_a_hold(),
        Some("b-refused") => return refused_b(),
        Some("a-release") => return refused_a_release(),
        Some("b-after") => return refused_b_after(),
        Some(r) => panic!("unknown role {r}"),
        None => {}
    }
    require_gluster!();
    let cluster = Cluster::start();
    let a = cluster.host("a");
    let b = cluster.host("b");
    // Counted at the step's own mountpoint: another GlusterFS test running
    // beside this one has its own hosts, whose mounts must not count.
    let layerfs_at_mnt = |h: &common::gluster::Host| {
        let mnt = h.gl().with_file_name("mnt").to_string_lossy().into_owned();
        ["fuse.layerfs", "fuse"]
            .iter()
            .flat_map(|t| h.mounts_of(t))
            .filter(|d| *d == mnt)
            .count()
    };
    a.run_test_ok(NAME, "a-hold");
    assert_eq!(
        layerfs_at_mnt(&a),
        1,
        "host a keeps layerfs mounted between steps: {:?}",
        a.mounts_of("fuse.layerfs")
    );
    let vol = cluster.brick().join("vol");
    let before = snapshot(&vol);
    b.run_test_ok(NAME, "b-refused");
    let d = diff(&before, &snapshot(&vol), Compare::ALL);
    assert!(
        d.is_empty(),
        "the refused mount changed the volume:\n{}",
        d.join("\n")
    );
    assert_eq!(layerfs_at_mnt(&b), 0, "nothing mounted on host b");
    a.run_test_ok(NAME, "a-release");
    b.run_test_ok(NAME, "b-after");
}

fn refused_a_hold() {
    let lay = Layout::here();
    build_lower(&lay.lower());
    mkdir(&lay.upper());
    mkdir(&lay.work());
    let m = lay.mount();
    write_synced(&m.path("held"), b"a\n");
    append(&m.path("etc/app/conf"), b"more\n").expect("copy-up by append");
    // The mount stays up on host a after this step.
    std::mem::forget(m);
}

fn refused_b() {
    let lay = Layout::here();
    let err = match try_mount_layerfs(&lay.opts(), &lay.mnt) {
        Ok(mut m) => {
            m.unmount();
            panic!("host b mounted a volume that host a has mounted");
        }
        Err(e) => e.to_string(),
    };
    eprintln!("host b was refused: {err}");
    assert!(
        err.contains("host-a"),
        "the refusal must name the holder (host-a): {err}"
    );
    assert!(!is_mounted(&lay.mnt), "nothing mounted after the refusal");
}

fn refused_a_release() {
    let lay = Layout::here();
    assert!(is_mounted(&lay.mnt), "host a's mount is still up");
    assert_eq!(fs::read(lay.mnt.join("held")).unwrap(), b"a\n");
    write_synced(&lay.mnt.join("later"), b"later\n");
    Mounted { dir: lay.mnt }.unmount();
}

fn refused_b_after() {
    let lay = Layout::here();
    let m = lay.mount();
    assert_eq!(fs::read(m.path("held")).unwrap(), b"a\n");
    assert_eq!(fs::read(m.path("later")).unwrap(), b"later\n");
    assert_eq!(fs::read(m.path("etc/app/conf")).unwrap(), b"conf\nmore\n");
}

/// The volume plugin, with its store on the GlusterFS volume, tells Docker
/// its volumes are `global`: engines on every host see one set.
#[test]
fn the_volume_plugin_is_global_with_its_store_on_glusterfs() {
    const NAME: &str = "the_volume_plugin_is_global_with_its_store_on_glusterfs";
    if role().as_deref() == Some("scope") {
        let base = child_base();
        let store = base.join("gl/store");
        let sock = base.join("plugin.sock");
        let mut plugin = std::process::Command::new(layerfs_volume_bin())
            .arg("--store")
            .arg(&store)
            .args(["serve", "--socket"])
            .arg(&sock)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(Instant::now() < deadline, "plugin did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        write!(
            s,
            "POST /VolumeDriver.Capabilities HTTP/1.1\r\nHost: plugin\r\n\
             Connection: close\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let _ = plugin.kill();
        let _ = plugin.wait();
        assert!(
            resp.contains(r#""Scope":"global""#),
            "capabilities on a GlusterFS store: {resp}"
        );
        return;
    }
    require_gluster!();
    let cluster = Cluster::start();
    cluster.host("a").run_test_ok(NAME, "scope");
}
