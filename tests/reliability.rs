//! Mounted regression tests for defects found by real workloads and the
//! conformance suites: hard links whose first-seen name went away, link
//! counts of lower hard links, inode numbers of deleted objects, mknod of
//! the whiteout device, readdirplus losing names, and O_TMPFILE. Where
//! kernel overlayfs has an answer (with `index=on`, the mode whose on-disk
//! format layerfs writes), the same steps run on it and must give the same
//! results.

mod common;

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;

const KERNEL_OPTS: &str = "redirect_dir=on,index=on,metacopy=off";

/// A mount of either implementation over `lowers`, with a fresh upper.
fn mount_either(kernel: bool, base: &Path, tag: &str, lowers: &[PathBuf]) -> (Mounted, PathBuf) {
    let (opts, u, _w) = rw_opts_tagged(base, tag, lowers, "");
    let mnt = base.join(format!("m{tag}"));
    let m = if kernel {
        let extra = opts
            .split_once(',')
            .map(|(_, rest)| format!("{rest},{KERNEL_OPTS}"))
            .unwrap();
        mount_kernel(lowers, &mnt, &extra)
    } else {
        try_mount_layerfs(&opts, &mnt).unwrap()
    };
    (m, u)
}

fn outcome<T>(r: io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(0)),
    }
}

fn append(p: &Path, data: &[u8]) -> io::Result<()> {
    fs::OpenOptions::new().append(true).open(p)?.write_all(data)
}

/// What a scenario saw: each step's outcome, then every name's content and
/// link count.
fn hardlink_scenario(m: &Mounted, steps: &[&str]) -> Vec<String> {
    let mut seen = Vec::new();
    for step in steps {
        let words: Vec<&str> = step.split(' ').collect();
        let r = match words.as_slice() {
            ["stat", n] => outcome(fs::symlink_metadata(m.path(n))),
            ["rm", n] => outcome(fs::remove_file(m.path(n))),
            ["mv", a, b] => outcome(fs::rename(m.path(a), m.path(b))),
            ["append", n] => outcome(append(&m.path(n), b"+more")),
            _ => panic!("bad step {step}"),
        };
        seen.push(format!("{step}: {r}"));
    }
    let mut names: Vec<_> = fs::read_dir(m.path("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for n in names {
        let p = m.path("d").join(&n);
        let md = fs::symlink_metadata(&p).unwrap();
        seen.push(format!(
            "{}: {:?} nlink {}",
            n.to_string_lossy(),
            String::from_utf8_lossy(&fs::read(&p).unwrap()),
            md.nlink()
        ));
    }
    seen
}

/// Lower layer: `d/a` and `d/a.hl`, two names of one file, and `d/x`.
fn hardlink_lowers(base: &Path) -> Vec<PathBuf> {
    let (l0, l1) = (base.join("l0"), base.join("l1"));
    mkdir(&l0);
    write(&l1.join("d/a"), b"shared");
    fs::hard_link(l1.join("d/a"), l1.join("d/a.hl")).unwrap();
    write(&l1.join("d/x"), b"x");
    vec![l0, l1]
}

#[test]
fn hardlink_copy_up_after_its_first_name_is_gone() {
    require_root!();
    let t = tmp();
    let lowers = hardlink_lowers(t.path());
    let before = fingerprint(&lowers[1]);
    // The inode is first looked up under the name that then goes away, so
    // the copy-up must find the other name.
    let scenarios: &[&[&str]] = &[
        &["stat d/a", "stat d/a.hl", "rm d/a", "append d/a.hl"],
        &["stat d/a.hl", "stat d/a", "rm d/a.hl", "mv d/a d/b"],
        &["stat d/a", "stat d/a.hl", "mv d/x d/a", "append d/a.hl"],
        &[
            "stat d/a",
            "stat d/a.hl",
            "mv d/a d/b",
            "append d/a.hl",
            "append d/b",
        ],
        // Link counts of untouched lower hard links (defect 2).
        &["rm d/a", "stat d/a.hl"],
        &["mv d/x d/a.hl", "stat d/a"],
    ];
    for (i, steps) in scenarios.iter().enumerate() {
        let tag = format!("{i}");
        let (k, ku) = mount_either(true, t.path(), &format!("k{tag}"), &lowers);
        let want = hardlink_scenario(&k, steps);
        drop(k);
        let (mut m, mu) = mount_either(false, t.path(), &format!("o{tag}"), &lowers);
        let got = hardlink_scenario(&m, steps);
        assert_eq!(got, want, "scenario {steps:?}: layerfs vs kernel overlayfs");
        m.unmount();
        // Each upper reads back the same under the other implementation.
        let lower_opt = lowerdir_opt(&lowers);
        let work = t.path().join(format!("wo{tag}"));
        let k2 = mount_kernel(
            &lowers,
            &t.path().join(format!("k2{tag}")),
            &format!(
                "upperdir={},workdir={},{KERNEL_OPTS}",
                mu.display(),
                work.display()
            ),
        );
        let mut again: Vec<_> = hardlink_scenario(&k2, &[]);
        let mut expect: Vec<_> = want
            .iter()
            .filter(|l| !l.contains(": ok") && !l.contains(": errno"))
            .cloned()
            .collect();
        again.sort();
        expect.sort();
        assert_eq!(
            again, expect,
            "scenario {steps:?}: layerfs upper under kernel"
        );
        drop(k2);
        let kwork = t.path().join(format!("wk{tag}"));
        let m2 = try_mount_layerfs(
            &format!(
                "{lower_opt},upperdir={},workdir={}",
                ku.display(),
                kwork.display()
            ),
            &t.path().join(format!("m2{tag}")),
        )
        .unwrap();
        let mut back = hardlink_scenario(&m2, &[]);
        back.sort();
        assert_eq!(
            back, expect,
            "scenario {steps:?}: kernel upper under layerfs"
        );
        // Every index entry still counts at least one name (an orphan
        // would be left by a copy-up that failed half-way).
        for e in fs::read_dir(work.join("index")).unwrap() {
            let e = e.unwrap();
            let nlink = e.metadata().unwrap().nlink() as i64;
            let v = getxattr(&e.path(), "trusted.overlay.nlink").unwrap();
            let delta: i64 = String::from_utf8_lossy(&v[1..]).parse().unwrap();
            assert!(nlink + delta >= 1, "orphan index entry {:?}", e.path());
        }
    }
    assert_eq!(fingerprint(&lowers[1]), before, "lower layer untouched");
}

/// A small ext2 on a loop device, for an upper: ext2 gives a freed inode
/// number to the next new file at once, which makes number reuse by the
/// upper filesystem happen every time.
fn ext2(base: &Path) -> ScratchFs {
    ScratchFs::on_loop(&base.join("ext2"), &["mkfs.ext2", "-q", "-F"], 64 << 20)
}

/// A copied-up object keeps its origin's number, remembered by the upper
/// inode it lives in. Once it is deleted, the upper filesystem gives that
/// inode to the next new object, which must be numbered by its own
/// identity: not show the deleted object's number, and not change number
/// at the next mount.
#[test]
fn numbers_of_deleted_objects_are_not_given_to_new_ones() {
    require!("mkfs.ext2", "losetup");
    let t = tmp();
    let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
    mkdir(&l0);
    for i in 0..20 {
        write(&l1.join(format!("sub{i}/x")), b"f");
        write(&l1.join(format!("f{i}")), b"f");
    }
    let lowers = vec![l0, l1];
    let ext2 = ext2(t.path());
    let (opts, _u, _w) = rw_opts_tagged(ext2.path(), "", &lowers, "");
    let mnt = t.path().join("m");
    let mut m = try_mount_layerfs(&opts, &mnt).unwrap();
    let mut deleted = HashSet::new();
    for i in 0..20 {
        let sub = m.path(&format!("sub{i}"));
        let f = m.path(&format!("f{i}"));
        deleted.insert(fs::metadata(&sub).unwrap().ino());
        deleted.insert(fs::metadata(&f).unwrap().ino());
        // Copied up, then deleted.
        append(&f, b"+").unwrap();
        fs::remove_file(sub.join("x")).unwrap();
        fs::remove_dir(&sub).unwrap();
        fs::remove_file(&f).unwrap();
    }
    drop_caches();
    let mut numbers = Vec::new();
    for i in 0..20 {
        // Over the whiteouts: made where the copies were made.
        let (sub, f) = (format!("sub{i}"), format!("f{i}"));
        fs::create_dir(m.path(&sub)).unwrap();
        write(&m.path(&f), b"n");
        for name in [sub, f] {
            let n = fs::metadata(m.path(&name)).unwrap().ino();
            assert!(
                !deleted.contains(&n),
                "new {name} shows the number {n} of a deleted object"
            );
            numbers.push((name, n));
        }
    }
    m.unmount();
    let mut m = try_mount_layerfs(&opts, &mnt).unwrap();
    for (name, n) in &numbers {
        assert_eq!(
            fs::metadata(m.path(name)).unwrap().ino(),
            *n,
            "{name} keeps its number across a remount"
        );
    }
    m.unmount();
}

/// Makes the kernel let go of unused dentries and inodes (and so send the
/// FORGETs after which the daemon closes what it held of deleted objects).
fn drop_caches() {
    let _ = std::process::Command::new("sync").status();
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
}

fn mknod(p: &Path, mode: u32, dev: u64) -> io::Result<()> {
    let dir = fs::File::open(p.parent().unwrap())?;
    layerfs::sys::mknodat(dir.as_fd(), p.file_name().unwrap(), mode, dev)
}

#[test]
fn mknod_of_the_whiteout_device_is_refused() {
    require_root!();
    let t = tmp();
    let lowers = hardlink_lowers(t.path());
    for kernel in [true, false] {
        let tag = if kernel { "k" } else { "o" };
        let (m, _) = mount_either(kernel, t.path(), tag, &lowers);
        let r = mknod(&m.path("c"), libc::S_IFCHR | 0o644, 0);
        assert_eq!(
            r.map_err(|e| e.raw_os_error()),
            Err(Some(libc::EPERM)),
            "mknod c 0 0 (kernel: {kernel})"
        );
        // Other devices are fine.
        mknod(&m.path("null"), libc::S_IFCHR | 0o644, libc::makedev(1, 3)).unwrap();
        assert!(!m.path("c").exists());
        // A new directory that may get the number of a removed one answers
        // as itself, never ESTALE (400 rounds).
        for round in 0..400 {
            let d = m.path("d2");
            fs::create_dir(&d).unwrap();
            let _ = mknod(&d.join("c"), libc::S_IFCHR | 0o644, 0);
            write(&d.join("f"), b"f");
            let _ = fs::metadata(d.join("c"));
            fs::remove_file(d.join("f")).unwrap();
            fs::remove_dir(&d).unwrap();
            let n = m.path("n");
            fs::create_dir(&n).unwrap();
            fs::set_permissions(&n, fs::Permissions::from_mode(0o700))
                .unwrap_or_else(|e| panic!("round {round}: chmod of a new dir: {e}"));
            assert_eq!(fs::metadata(&n).unwrap().mode() & 0o7777, 0o700);
            fs::remove_dir(&n).unwrap();
        }
    }
}

#[test]
fn readdir_never_drops_a_name_whose_lookup_fails() {
    require_root!();
    let t = tmp();
    let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
    mkdir(&l0);
    write(&l1.join("dir/good"), b"g");
    let (opts, u, _w) = rw_opts_tagged(t.path(), "", &[l0, l1], "");
    // A metacopy file with no data anywhere: its lookup fails with EIO.
    write(&u.join("dir/broken"), b"");
    setxattr(&u.join("dir"), "trusted.overlay.opaque", b"n");
    setxattr(&u.join("dir/broken"), "trusted.overlay.metacopy", b"");
    let m = try_mount_layerfs(&format!("{opts},metacopy=on"), &t.path().join("m")).unwrap();
    let err = fs::metadata(m.path("dir/broken")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    // Either the name is listed or the listing reports the error; a
    // listing that silently lacks it is the defect.
    let mut names = Vec::new();
    let mut failed = None;
    for e in fs::read_dir(m.path("dir")).unwrap() {
        match e {
            Ok(e) => names.push(e.file_name()),
            Err(e) => failed = Some(e),
        }
    }
    assert!(
        names.iter().any(|n| n == "broken") || failed.is_some(),
        "listing lost a name silently: {names:?}"
    );
    // The daemon is still serving, and the rest of the tree reads.
    assert_eq!(fs::read(m.path("dir/good")).unwrap(), b"g");
}

#[test]
fn o_tmpfile_is_not_supported_until_fuser_has_tmpfile() {
    require_root!();
    let t = tmp();
    let lowers = hardlink_lowers(t.path());
    let (m, _) = mount_either(false, t.path(), "o", &lowers);
    let r = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(m.path("d"));
    // fuser 0.18 has no tmpfile operation: when this starts to succeed, the
    // README's limitation is out of date and O_TMPFILE should be tested for
    // real (kernel overlayfs supports it since 6.6).
    assert_eq!(
        r.map(|_| ()).map_err(|e| e.raw_os_error()),
        Err(Some(libc::EOPNOTSUPP)),
        "O_TMPFILE on layerfs"
    );
}

/// Busy loops, one process each, ended on drop: a machine kept busy.
struct BusyLoops(Vec<std::process::Child>);

impl BusyLoops {
    fn start(n: usize) -> BusyLoops {
        BusyLoops(
            (0..n)
                .map(|_| {
                    std::process::Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .unwrap()
                })
                .collect(),
        )
    }
}

impl Drop for BusyLoops {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A daemon stopped (SIGSTOP) for `for` and then continued, by a thread;
/// dropping waits for the continue, so no daemon is left stopped.
struct Stalled(Option<std::thread::JoinHandle<()>>);

impl Stalled {
    fn new(pid: u32, stall: std::time::Duration) -> Stalled {
        let signal = move |sig: &str| {
            let ok = std::process::Command::new("kill")
                .args([sig, &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill {sig} {pid}");
        };
        signal("-STOP");
        Stalled(Some(std::thread::spawn(move || {
            std::thread::sleep(stall);
            signal("-CONT");
        })))
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            let _ = t.join();
        }
    }
}

/// Other FUSE mounts coming and going in this mount namespace, as other
/// containers' do on a host: a device number an unmount frees is soon given
/// to one of them. Stopped and joined on drop.
struct MountChurn {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MountChurn {
    fn start(lowers: &[PathBuf], mnt: PathBuf) -> MountChurn {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let opts = lowerdir_opt(lowers);
        let s = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(mut m) = try_mount_layerfs(&opts, &mnt) {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    m.unmount();
                }
            }
        });
        MountChurn {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for MountChurn {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A mount right after an unmount of the same upper is not refused as in
/// use. umount(2) of a FUSE mount returns before the daemon has let go of
/// the work dir's locks (the kernel only aborts the connection), so the
/// next mount must wait for a holder whose mount is gone; a live holder is
/// still refused at once. Back to back, 200 rounds on each of tmpfs and a
/// loop-mounted ext2 under CPU load; in every 50th round the daemon is
/// stopped for 3 s just before the unmount, as a loaded machine may leave
/// it unscheduled (it once held the lock past the former 2 s wait). Other
/// FUSE mounts come and go meanwhile: the holder's mount is known by its
/// device and mountpoint, as a freed device number is soon reused (in CI,
/// another test's mount took it and the dying holder looked live).
#[test]
fn a_remount_right_after_an_unmount_is_not_refused() {
    require!("mkfs.ext2", "losetup");
    const ROUNDS: usize = 200;
    let t = tmp();
    let lowers = vec![t.path().join("l0"), t.path().join("l1")];
    mkdir(&lowers[0]);
    write(&lowers[1].join("f"), b"lower");
    let _load = BusyLoops::start(2);
    let _churn = MountChurn::start(&lowers, t.path().join("churn"));
    for scratch in [
        ScratchFs::tmpfs(&t.path().join("tmpfs"), None),
        ext2(t.path()),
    ] {
        let (opts, _u, _w) = rw_opts_tagged(scratch.path(), "", &lowers, "");
        let mnt = t.path().join("m");
        let mut refused = Vec::new();
        let mut stalled = None;
        for round in 0..ROUNDS {
            let m = try_mount_layerfs(&opts, &mnt);
            // The previous daemon has let go (or the mount was refused).
            drop(stalled.take());
            let mut m = match m {
                Ok(m) => m,
                Err(e) => {
                    refused.push(format!("round {round}: {e}"));
                    continue;
                }
            };
            write(&m.path(&format!("f{}", round % 8)), b"upper");
            assert_eq!(fs::read(m.path("f")).unwrap(), b"lower");
            if round == 0 {
                // A live holder is refused at once, not waited for.
                let other = t.path().join("m-other");
                let err = try_mount_layerfs(&opts, &other)
                    .err()
                    .map(|e| e.to_string());
                let err = err.expect("a second mount of a mounted upper");
                assert!(
                    err.contains("is in use by layerfs pid") && !err.contains("mount is gone"),
                    "{err}"
                );
            }
            if round % 50 == 49 {
                let pid = daemon_pid(&mnt).expect("the daemon");
                stalled = Some(Stalled::new(pid, std::time::Duration::from_secs(3)));
                // umount(8) asks the stopped daemon for statfs; the
                // syscall does not wait for it.
                layerfs::sys::umount(&mnt, 0).unwrap();
            }
            m.unmount();
        }
        drop(stalled);
        assert!(
            refused.is_empty(),
            "{}: {} of {ROUNDS} mounts refused:\n{}",
            scratch.path().display(),
            refused.len(),
            refused.join("\n")
        );
    }
}
