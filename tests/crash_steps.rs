//! Crashes at named steps: the daemon dies (SIGKILL, from its own crash
//! point: `LAYERFS_CRASH_AT`, see src/crashpoint.rs) at exactly the step
//! of a multi-step upper change where a crash used to leave it wrong, and
//! the next mount must show what was there before the change or after it.
//!
//! The windows covered are those of a lower hard-link set kept through the
//! index, whose shown link count is the upper inode's count plus the delta
//! in `overlay.nlink`: no syscall changes both at once. tests/crash.rs
//! found them by chance (one run in three); here each is hit every time.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;

/// The set's names in the lower layer.
const NAMES: [&str; 3] = ["hl/a", "hl/b", "hl/sub/c"];

struct Stack {
    _t: tempfile::TempDir,
    lowers: Vec<PathBuf>,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
    kmnt: PathBuf,
}

impl Stack {
    fn new() -> Stack {
        let t = tempfile::Builder::new()
            .prefix("lfssteps")
            .tempdir()
            .unwrap();
        let base = t.path().to_path_buf();
        let (l1, l2) = (base.join("l1"), base.join("l2"));
        mkdir(&l1.join("hl/sub"));
        write(&l1.join(NAMES[0]), b"lower content\n");
        fs::hard_link(l1.join(NAMES[0]), l1.join(NAMES[1])).unwrap();
        fs::hard_link(l1.join(NAMES[0]), l1.join(NAMES[2])).unwrap();
        mkdir(&l2);
        write(&l2.join("other"), b"x");
        let (upper, work) = (base.join("u"), base.join("w"));
        mkdir(&upper);
        mkdir(&work);
        Stack {
            lowers: vec![l2, l1],
            upper,
            work,
            mnt: base.join("m"),
            kmnt: base.join("k"),
            _t: t,
        }
    }

    fn opts(&self) -> String {
        format!(
            "{},upperdir={},workdir={}",
            lowerdir_opt(&self.lowers),
            self.upper.display(),
            self.work.display()
        )
    }

    /// Mounts with the daemon set to die at `crash_at` (if any).
    fn mount(&self, crash_at: Option<&str>) -> Mounted {
        let env: Vec<(&str, &str)> = crash_at
            .map(|c| ("LAYERFS_CRASH_AT", c))
            .into_iter()
            .collect();
        try_mount_layerfs_env(&self.opts(), &self.mnt, &env).expect("mount layerfs")
    }

    /// Runs `op` on a mount whose daemon dies at `point`; the daemon must
    /// have died there (the operation fails, the mount is dead).
    fn crash_during(&self, point: &str, op: impl FnOnce(&Path) -> std::io::Result<()>) {
        let m = self.mount(Some(point));
        let pid = daemon_pid(&m.dir).expect("daemon pid");
        let r = op(&m.dir);
        assert!(
            r.is_err(),
            "the operation went through: the daemon did not die at {point}"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "daemon {pid} still alive after {point}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // The dead mount stays: the next mount must clear it.
        std::mem::forget(m);
    }

    /// The names of the set the mount shows, each with its link count.
    fn shown(&self, root: &Path) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for dir in ["hl", "hl/sub"] {
            for e in fs::read_dir(root.join(dir)).unwrap() {
                let e = e.unwrap();
                let md = fs::symlink_metadata(e.path()).unwrap();
                if md.is_file() {
                    let rel = format!("{dir}/{}", e.file_name().to_string_lossy());
                    out.push((rel, md.nlink()));
                }
            }
        }
        out.sort();
        out
    }

    /// Remounts without a crash point and checks that every name of the
    /// set shows a link count equal to the number of names, that they are
    /// one file, and that kernel overlayfs (`index=on`) reads the same
    /// tree from the upper. Returns the names.
    fn check(&self, what: &str) -> Vec<String> {
        let m = self.mount(None);
        let shown = self.shown(&m.dir);
        let inos: std::collections::BTreeSet<u64> = shown
            .iter()
            .map(|(p, _)| fs::metadata(m.path(p)).unwrap().ino())
            .collect();
        assert_eq!(
            inos.len(),
            1,
            "{what}: the names are not one file: {shown:?}"
        );
        for (p, nlink) in &shown {
            assert_eq!(
                *nlink,
                shown.len() as u64,
                "{what}: {p} has nlink {nlink} with {} names ({shown:?})",
                shown.len()
            );
        }
        let tree = snapshot(&m.dir);
        drop(m);
        let kopts = format!(
            "upperdir={},workdir={},index=on,redirect_dir=on,metacopy=off",
            self.upper.display(),
            self.work.display()
        );
        let k = mount_kernel(&self.lowers, &self.kmnt, &kopts);
        let ktree = snapshot(&k.dir);
        drop(k);
        let d = diff(&tree, &ktree, Compare::ALL);
        assert!(
            d.is_empty(),
            "{what}: layerfs vs kernel overlayfs:\n{}",
            d.join("\n")
        );
        shown.into_iter().map(|(p, _)| p).collect()
    }
}

fn append(p: &Path) -> std::io::Result<()> {
    fs::OpenOptions::new()
        .append(true)
        .open(p)?
        .write_all(b"more\n")
}

/// The first write to a name of the set copies the file up into the index;
/// a crash between the index link and the rename into place used to leave
/// the index entry with one link too few counted (nlink 2 with 3 names).
#[test]
fn crash_between_index_link_and_rename_keeps_the_count() {
    require!();
    let s = Stack::new();
    s.crash_during("copyup-indexed", |m| append(&m.join(NAMES[1])));
    let names = s.check("after a crash in the copy-up");
    assert_eq!(names, NAMES, "every lower name still shows");
    // The set goes on working: a write, a new link, an unlink.
    let m = s.mount(None);
    append(&m.path(NAMES[0])).unwrap();
    fs::hard_link(m.path(NAMES[0]), m.path("hl/d")).unwrap();
    fs::remove_file(m.path(NAMES[2])).unwrap();
    drop(m);
    assert_eq!(s.check("after more changes"), ["hl/a", "hl/b", "hl/d"]);
}

/// Removing a name that still shows the lower file, once the set is in the
/// index: it is linked up first (staged in the work dir), then removed
/// with a whiteout. A crash after the staged link, before or after the
/// count was written, used to leave the count one too high (a whiteout
/// made, the count not yet lowered).
#[test]
fn crash_in_the_link_up_before_an_unlink_keeps_the_count() {
    require!();
    for point in ["linkup-staged", "linkup-counted"] {
        let s = Stack::new();
        // The set copied up through name b: a and sub/c still show it from
        // below.
        let m = s.mount(None);
        append(&m.path(NAMES[1])).unwrap();
        drop(m);
        s.crash_during(point, |m| fs::remove_file(m.join(NAMES[2])));
        let names = s.check(&format!("after a crash at {point}"));
        assert_eq!(names, NAMES, "{point}: the unlink never completed");
        let m = s.mount(None);
        fs::remove_file(m.path(NAMES[2])).unwrap();
        drop(m);
        assert_eq!(
            s.check(&format!("{point}: unlink after the crash")),
            ["hl/a", "hl/b"]
        );
    }
}

/// Renaming another file over a name that shows the lower file of an
/// indexed set: the name is linked up first, and a crash then leaves the
/// set's count right.
#[test]
fn crash_in_the_link_up_before_a_rename_over_keeps_the_count() {
    require!();
    let s = Stack::new();
    let m = s.mount(None);
    append(&m.path(NAMES[1])).unwrap();
    write(&m.path("hl/new"), b"new\n");
    drop(m);
    s.crash_during("linkup-counted", |m| {
        fs::rename(m.join("hl/new"), m.join(NAMES[0]))
    });
    // The rename never happened: the new file is still there (it is not
    // of the set, so it goes before the check).
    let m = s.mount(None);
    assert_eq!(fs::read(m.path("hl/new")).unwrap(), b"new\n");
    fs::remove_file(m.path("hl/new")).unwrap();
    drop(m);
    assert_eq!(s.check("after a crash before a rename over a name"), NAMES);
}

/// A crash at every step of the first write to a lower file (its parent's
/// copy-up, then its own: an unnamed copy linked into place where the
/// upper has `O_TMPFILE`) leaves the file as it was below, or a complete
/// copy of it: same data, mode, times and xattrs, as layerfs and kernel
/// overlayfs both read it; nothing staged survives the next mount.
#[test]
fn crash_at_each_step_of_a_copy_up_leaves_no_copy_or_a_whole_one() {
    require!();
    let t = tmp();
    let base = t.path();
    let (lower, upper, work) = (base.join("l"), base.join("u"), base.join("w"));
    mkdir(&lower.join("d"));
    write(&lower.join("d/f"), b"lower data\n");
    setxattr(&lower.join("d/f"), "user.note", b"kept");
    chmod(&lower.join("d/f"), 0o640);
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    fs::File::options()
        .write(true)
        .open(lower.join("d/f"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    mkdir(&upper);
    mkdir(&work);
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let kopts = format!(
        "upperdir={},workdir={},index=on,redirect_dir=on,metacopy=off",
        upper.display(),
        work.display()
    );
    let (mnt, kmnt) = (base.join("m"), base.join("k"));
    let m = try_mount_layerfs(&opts, &mnt).expect("mount layerfs");
    let before = snapshot(&m.dir);
    drop(m);
    // Where the upper's filesystem makes O_TMPFILE files, the file's copy
    // must be one: nothing regular is ever staged by name in the work dir.
    let tmpfile = {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .open(&work)
            .is_ok()
    };
    let (mut crashes, mut copies_seen) = (0, false);
    for step in 1.. {
        assert!(step < 100, "the first write never completed");
        let point = format!("any:{step}");
        let m = match try_mount_layerfs_env(&opts, &mnt, &[("LAYERFS_CRASH_AT", &point)]) {
            Ok(m) => m,
            // A step of the mount itself (the holder note): the mount
            // failed, with nothing of the copy-up done yet (its dead
            // mount is cleared by the next, as after any crash).
            Err(e) if e.to_string().contains("dying at crash point") => continue,
            Err(e) => panic!("mount layerfs: {e}"),
        };
        let pid = daemon_pid(&m.dir).expect("daemon pid");
        if append(&m.path("d/f")).is_ok() {
            // Fewer steps than `step`: the copy-up and the write are done.
            assert_eq!(fs::read(m.path("d/f")).unwrap(), b"lower data\nmore\n");
            break;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(std::time::Instant::now() < deadline, "daemon {pid} alive");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::mem::forget(m);
        crashes += 1;
        if tmpfile {
            let staged_files: Vec<_> = fs::read_dir(work.join("work"))
                .unwrap()
                .map(|e| e.unwrap())
                .filter(|e| e.file_type().unwrap().is_file())
                .map(|e| e.file_name())
                .collect();
            assert!(
                staged_files.is_empty(),
                "crash at step {step}: a file copy was staged by name: {staged_files:?}"
            );
        }
        // The file as it was below, its copy complete or absent. (Its
        // parent may show a new mtime: a crash between the copy's rename
        // or link and the restore of the parent's times leaves that, as
        // with kernel overlayfs.)
        let m = try_mount_layerfs(&opts, &mnt).expect("mount after the crash");
        let after = snapshot(&m.dir);
        drop(m);
        let leftovers: Vec<_> = fs::read_dir(work.join("work")).unwrap().collect();
        assert!(
            leftovers.is_empty(),
            "crash at step {step}: left in the work dir: {leftovers:?}"
        );
        let k = mount_kernel(std::slice::from_ref(&lower), &kmnt, &kopts);
        let ktree = snapshot(&k.dir);
        drop(k);
        for (reader, tree) in [("layerfs", &after), ("kernel overlayfs", &ktree)] {
            assert_eq!(
                tree.get(&b"d/f"[..]),
                before.get(&b"d/f"[..]),
                "crash at step {step}: {reader} reads another file"
            );
        }
        let copied = upper.join("d/f").exists();
        copies_seen |= copied;
        if copied {
            assert_eq!(fs::read(upper.join("d/f")).unwrap(), b"lower data\n");
        }
    }
    assert!(copies_seen, "no crash fell after the copy was in place");
    // The parent's copy-up and the file's each take several steps.
    assert!(crashes >= 4, "only {crashes} steps were cut");
}
