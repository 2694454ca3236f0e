//! Faults of the upper filesystem: a full disk and I/O errors.
//!
//! Full disk: the upper and work dirs live on a small tmpfs (`size=`).
//! Writes and copy-ups that do not fit fail with ENOSPC, leave nothing
//! half-made (the lower content still reads back, no partial file in the
//! upper, an empty work dir, no index entry), and the same operations
//! succeed on the same mount once space is freed.
//!
//! I/O errors: the upper lives on ext4 on a loop device, which is then shut
//! down (`xfs_io -x -c 'shutdown -f'`, the ioctl xfstests uses): from then
//! on every access to it fails with EIO. Requests touching the upper get
//! EIO, the daemon stays up, and files of the lower layers keep working.

mod common;

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn errno_of<T>(r: io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

fn append(p: &Path, data: &[u8]) -> io::Result<()> {
    fs::OpenOptions::new().append(true).open(p)?.write_all(data)
}

/// Names in a directory (empty when it cannot be read).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The work dir holds nothing but its two empty subdirectories.
fn assert_work_clean(work: &Path) {
    for sub in ["work", "index"] {
        let p = work.join(sub);
        if p.exists() {
            assert_eq!(names(&p), Vec::<String>::new(), "{p:?} left behind");
        }
    }
}

fn daemon_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").trim_start().to_string();
            !state.starts_with('Z') && !state.starts_with('X')
        })
        .unwrap_or(false)
}

/// Unmounts and waits for the daemon to end.
fn unmount_and_wait(mut m: Mounted, pid: u32) {
    m.unmount();
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !daemon_alive(pid),
        "daemon {pid} still running after unmount"
    );
}

/// Deterministic content of `len` bytes.
fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

const MIB: usize = 1 << 20;

/// Copy-ups and writes that do not fit the upper fail with ENOSPC and
/// leave nothing behind; once space is freed, the same operations work on
/// the same mount. Then: files created until the disk is full, deleted.
#[test]
fn full_disk() {
    require!("mount", "umount");
    let t = tempfile::Builder::new()
        .prefix("lfsfull")
        .tempdir()
        .unwrap();
    let lower = t.path().join("lower");
    let big = content(6 * MIB, 1);
    let big2 = content(5 * MIB, 2);
    write(&lower.join("big"), &big);
    write(&lower.join("d/big2"), &big2);
    write(&lower.join("small"), b"small\n");
    write(&lower.join("hl"), &big2);
    fs::hard_link(lower.join("hl"), lower.join("hl2")).unwrap();
    let lower_before = fingerprint(&lower);

    // 20 MiB, 17 of them taken by a file beside the upper: 3 MiB free,
    // less than any of the big lower files.
    let disk = ScratchFs::tmpfs(&t.path().join("disk"), Some("20m"));
    let (upper, work) = (disk.path().join("u"), disk.path().join("w"));
    mkdir(&upper);
    mkdir(&work);
    let ballast = disk.path().join("ballast");
    fs::write(&ballast, content(17 * MIB, 9)).unwrap();
    let mnt = t.path().join("m");
    let m = try_mount_layerfs(
        &format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        ),
        &mnt,
    )
    .unwrap();
    let pid = daemon_pid(&mnt).unwrap();
    let p = |rel: &str| mnt.join(rel);

    // Copy-ups bigger than the whole disk.
    let failing: [(&str, &dyn Fn() -> io::Result<()>); 5] = [
        ("append to big", &|| append(&p("big"), b"+")),
        ("append to d/big2", &|| append(&p("d/big2"), b"+")),
        ("append to a hard link", &|| append(&p("hl"), b"+")),
        ("rename big", &|| fs::rename(p("big"), p("big.moved"))),
        ("open big for writing", &|| {
            fs::OpenOptions::new()
                .write(true)
                .open(p("big"))
                .map(|_| ())
        }),
    ];
    for (what, op) in failing {
        assert_eq!(errno_of(op()), Some(libc::ENOSPC), "{what}");
        // Nothing partial is visible, through the mount or in the upper.
        assert_eq!(fs::read(p("big")).unwrap(), big, "after {what}");
        assert_eq!(fs::read(p("d/big2")).unwrap(), big2, "after {what}");
        assert_eq!(fs::read(p("hl")).unwrap(), big2, "after {what}");
        assert_eq!(fs::read(p("hl2")).unwrap(), big2, "after {what}");
        assert!(!p("big.moved").exists(), "after {what}");
        for name in ["big", "big.moved", "hl", "hl2"] {
            assert!(
                !upper.join(name).exists(),
                "{name} in the upper after {what}"
            );
        }
        assert!(
            !upper.join("d/big2").exists(),
            "d/big2 in the upper after {what}"
        );
        assert_work_clean(&work);
        assert!(daemon_alive(pid));
    }

    // Fill the disk with new files, then a small copy-up fails too.
    let mut made = Vec::new();
    let mut last_err = None;
    for i in 0..64 {
        let name = format!("fill{i}");
        match fs::write(p(&name), content(256 * 1024, i as u8)) {
            Ok(()) => made.push(name),
            Err(e) => {
                last_err = e.raw_os_error();
                made.push(name);
                break;
            }
        }
    }
    assert_eq!(
        last_err,
        Some(libc::ENOSPC),
        "3 MiB took 64 files of 256 KiB"
    );
    assert_eq!(errno_of(append(&p("small"), b"+")), Some(libc::ENOSPC));
    assert_eq!(fs::read(p("small")).unwrap(), b"small\n");
    assert!(!upper.join("small").exists());
    // The files that fit read back whole.
    for (i, name) in made.iter().enumerate().take(made.len() - 1) {
        assert_eq!(
            fs::read(p(name)).unwrap(),
            content(256 * 1024, i as u8),
            "{name}"
        );
    }
    assert_work_clean(&work);

    // Deleting them frees the space: the small copy-up now works.
    for name in &made {
        fs::remove_file(p(name)).unwrap();
    }
    // (`d` was copied up before its file's copy-up failed, as the kernel
    // does: an empty directory, nothing partial.)
    assert_eq!(
        names(&upper),
        vec!["d"],
        "upper after deleting the fill files"
    );
    assert_eq!(names(&upper.join("d")), Vec::<String>::new());
    append(&p("small"), b"+").unwrap();
    assert_eq!(fs::read(p("small")).unwrap(), b"small\n+");

    // Freeing the rest: the big copy-ups that failed now work, on the
    // same mount.
    fs::remove_file(&ballast).unwrap();
    append(&p("big"), b"+").unwrap();
    assert_eq!(fs::read(p("big")).unwrap(), [&big[..], b"+"].concat());
    append(&p("hl"), b"+").unwrap();
    let hl = [&big2[..], b"+"].concat();
    assert_eq!(fs::read(p("hl")).unwrap(), hl);
    assert_eq!(
        fs::read(p("hl2")).unwrap(),
        hl,
        "the other name of the hard link"
    );
    fs::rename(p("d/big2"), p("big2.moved")).unwrap();
    assert_eq!(fs::read(p("big2.moved")).unwrap(), big2);
    assert!(!p("d/big2").exists());
    assert_eq!(names(&work.join("work")), Vec::<String>::new());
    assert!(daemon_alive(pid));
    unmount_and_wait(m, pid);
    drop(disk);
    let d = diff(&lower_before, &fingerprint(&lower), Compare::ALL);
    assert!(d.is_empty(), "lower changed:\n{}", d.join("\n"));
}

/// An upper filesystem that fails every access with EIO.
struct DeadDisk {
    fs: ScratchFs,
}

impl DeadDisk {
    fn new(dir: &Path) -> DeadDisk {
        let fs = ScratchFs::on_loop(
            &dir.join("upper"),
            &["mkfs.ext4", "-q", "-F"],
            64 * MIB as u64,
        );
        DeadDisk { fs }
    }

    fn path(&self) -> &Path {
        self.fs.path()
    }

    /// From now on every access to the filesystem fails with EIO.
    fn shut_down(&self) {
        let out = Command::new("xfs_io")
            .args(["-x", "-c", "shutdown -f"])
            .arg(self.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "xfs_io shutdown: {}",
            output_text(&out)
        );
    }
}

/// I/O errors from the upper: requests that need it get EIO, the daemon
/// stays up, lower files keep working, and the mount unmounts cleanly.
#[test]
fn io_errors_from_the_upper() {
    require!("mount", "umount", "losetup", "mkfs.ext4", "xfs_io");
    let t = tempfile::Builder::new().prefix("lfseio").tempdir().unwrap();
    let lower = t.path().join("lower");
    write(&lower.join("a"), b"lower a\n");
    write(&lower.join("b"), b"lower b\n");
    write(&lower.join("d/c"), b"lower d/c\n");
    write(&lower.join("m/x"), b"lower m/x\n");
    let lower_before = fingerprint(&lower);

    let disk = DeadDisk::new(t.path());
    let (upper, work) = (disk.path().join("u"), disk.path().join("w"));
    mkdir(&upper);
    mkdir(&work);
    let mnt = t.path().join("m");
    let m = try_mount_layerfs(
        &format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        ),
        &mnt,
    )
    .unwrap();
    let pid = daemon_pid(&mnt).unwrap();
    let p = |rel: &str| mnt.join(rel);
    fs::write(p("u1"), b"upper u1\n").unwrap();
    fs::write(p("m/y"), b"upper m/y\n").unwrap();
    assert_eq!(fs::read(p("a")).unwrap(), b"lower a\n");

    disk.shut_down();

    // Everything that needs the upper: EIO, never a hang or a crash.
    let eio: [(&str, &dyn Fn() -> io::Result<()>); 9] = [
        ("copy-up by append", &|| append(&p("a"), b"+")),
        ("create", &|| fs::write(p("new"), b"new")),
        ("read an upper file", &|| fs::read(p("u1")).map(|_| ())),
        ("write an upper file", &|| append(&p("u1"), b"+")),
        ("mkdir", &|| fs::create_dir(p("newdir"))),
        ("rm of a lower file (whiteout)", &|| fs::remove_file(p("b"))),
        ("rename", &|| fs::rename(p("d/c"), p("c.moved"))),
        ("create in a merged dir", &|| fs::write(p("m/z"), b"z")),
        ("create exclusive", &|| {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(p("excl"))
                .map(|_| ())
        }),
    ];
    for (what, op) in eio {
        assert_eq!(errno_of(op()), Some(libc::EIO), "{what}");
        assert!(daemon_alive(pid), "daemon died on {what}");
    }
    // Lower files keep working, also after the errors.
    assert_eq!(fs::read(p("a")).unwrap(), b"lower a\n");
    assert_eq!(fs::read(p("b")).unwrap(), b"lower b\n");
    assert_eq!(fs::read(p("d/c")).unwrap(), b"lower d/c\n");
    assert_eq!(names(&p("d")), vec!["c"]);
    assert!(fs::metadata(p("m/x")).is_ok());
    // And they still do after more failing requests in between.
    for _ in 0..20 {
        assert_eq!(errno_of(append(&p("a"), b"+")), Some(libc::EIO));
        assert_eq!(fs::read(p("d/c")).unwrap(), b"lower d/c\n");
    }
    assert!(daemon_alive(pid));
    unmount_and_wait(m, pid);
    drop(disk);
    let d = diff(&lower_before, &fingerprint(&lower), Compare::ALL);
    assert!(d.is_empty(), "lower changed:\n{}", d.join("\n"));
}

/// With `metacopy=on`, a chmod copies only metadata (which fits a full
/// disk); the data copy on the first write then fails with ENOSPC, the
/// file keeps reading its lower data, and the write works once space is
/// freed.
#[test]
fn full_disk_metacopy() {
    require!("mount", "umount");
    let t = tempfile::Builder::new()
        .prefix("lfsfullmc")
        .tempdir()
        .unwrap();
    let lower = t.path().join("lower");
    let big = content(6 * MIB, 3);
    write(&lower.join("big"), &big);
    let disk = ScratchFs::tmpfs(&t.path().join("disk"), Some("8m"));
    let (upper, work) = (disk.path().join("u"), disk.path().join("w"));
    mkdir(&upper);
    mkdir(&work);
    let ballast = disk.path().join("ballast");
    fs::write(&ballast, content(5 * MIB, 9)).unwrap();
    let mnt = t.path().join("m");
    let m = try_mount_layerfs(
        &format!(
            "lowerdir={},upperdir={},workdir={},metacopy=on",
            lower.display(),
            upper.display(),
            work.display()
        ),
        &mnt,
    )
    .unwrap();
    let pid = daemon_pid(&mnt).unwrap();
    let f = mnt.join("big");
    chmod(&f, 0o600);
    assert!(upper.join("big").exists(), "metadata copied up");
    for _ in 0..3 {
        assert_eq!(errno_of(append(&f, b"+")), Some(libc::ENOSPC));
        assert_eq!(
            fs::read(&f).unwrap(),
            big,
            "a failed data copy shows nothing partial"
        );
        assert_eq!(fs::metadata(&f).unwrap().len(), big.len() as u64);
        assert_work_clean(&work);
    }
    fs::remove_file(&ballast).unwrap();
    append(&f, b"+").unwrap();
    assert_eq!(fs::read(&f).unwrap(), [&big[..], b"+"].concat());
    assert!(daemon_alive(pid));
    unmount_and_wait(m, pid);
    // The upper reads back the same under kernel overlayfs.
    let k = t.path().join("k");
    mkdir(&k);
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={},metacopy=on,redirect_dir=on,index=off",
            lower.display(),
            upper.display(),
            work.display()
        ))
        .arg(&k)
        .output()
        .unwrap();
    assert!(out.status.success(), "kernel mount: {}", output_text(&out));
    let kernel = Mounted { dir: k };
    assert_eq!(
        fs::read(kernel.path("big")).unwrap(),
        [&big[..], b"+"].concat()
    );
    drop(kernel);
}
