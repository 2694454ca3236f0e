//! The middle test tier: the filesystem object built over temp dirs, as
//! the mount code builds it, and its operations called directly, with no
//! FUSE mount. Between the pure rules tested in `src/` and the mounted
//! tests: fast, and with `userxattr` (the `user.overlay.*` names) runnable
//! by an unprivileged user. What the operations leave in the upper layer
//! is checked in kernel overlayfs' on-disk format, as the mounted tests
//! check it, and the lower layers are compared with a fingerprint taken
//! before the filesystem was built.
//!
//! The operations are called as the kernel calls them, after the checks
//! its VFS makes first: create, mkdir and the like only for a name its
//! lookup found absent, unlink and rmdir for one found present, no
//! RENAME_EXCHANGE together with RENAME_NOREPLACE. Those checks are not
//! repeated by the filesystem object, and are not tested here.
//!
//! Every scenario runs twice: `trusted` (needs root for `trusted.*`
//! xattrs; a SKIP otherwise, a failure under CI) and `userxattr` (runs as
//! anyone who owns the temp dir).

mod common;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fuser::{FileAttr, FileType};
use layerfs::ids::NodeId;
use layerfs::inode::ROOT_INO;
use layerfs::modify::SetAttr;
use layerfs::mount::fs_options;
use layerfs::options::{MountOptions, RedirectDir};
use layerfs::{FsOptions, LayerFs, LayerStack, WorkDir};

use common::{chmod, chown, fingerprint, mkdir, mknod_whiteout, setxattr, write, Compare, Node};

const RENAME_NOREPLACE: u32 = libc::RENAME_NOREPLACE;
const RENAME_EXCHANGE: u32 = libc::RENAME_EXCHANGE;

// ---- fixture ---------------------------------------------------------------

/// A stack of temp dirs: lowers `l0` (top) to `lN`, `upper` and `work`.
struct Stack {
    t: tempfile::TempDir,
    lowers: Vec<PathBuf>,
    upper: PathBuf,
    work: PathBuf,
    userxattr: bool,
    /// `FsOptions::xattr_whiteouts`: whiteouts made as xattr-marked files.
    xattr_whiteouts: bool,
    /// The lowers' fingerprints when the filesystem was built.
    before: Vec<BTreeMap<Vec<u8>, Node>>,
}

impl Stack {
    fn new(n_lowers: usize, userxattr: bool) -> Stack {
        let mut t = tempfile::Builder::new().prefix("lfsu").tempdir().unwrap();
        if std::env::var_os("LAYERFS_KEEP_TEST_DIRS").is_some() {
            t.disable_cleanup(true);
        }
        let lowers: Vec<PathBuf> = (0..n_lowers)
            .map(|i| t.path().join(format!("l{i}")))
            .collect();
        for l in &lowers {
            mkdir(l);
        }
        let upper = t.path().join("upper");
        let work = t.path().join("work");
        mkdir(&upper);
        mkdir(&work);
        Stack {
            t,
            lowers,
            upper,
            work,
            userxattr,
            xattr_whiteouts: false,
            before: Vec::new(),
        }
    }

    fn l(&self, i: usize) -> &Path {
        &self.lowers[i]
    }

    fn up(&self, rel: &str) -> PathBuf {
        self.upper.join(rel)
    }

    /// The name of overlay xattr `what` in the namespace in use.
    fn x(&self, what: &str) -> String {
        let ns = if self.userxattr { "user" } else { "trusted" };
        format!("{ns}.overlay.{what}")
    }

    /// Marks lower dir `p` opaque.
    fn set_opaque(&self, p: &Path) {
        setxattr(p, &self.x("opaque"), b"y");
    }

    /// Builds the filesystem as the mount's daemon does, after fingerprinting
    /// the lowers.
    fn open(&mut self) -> LayerFs {
        self.before = self.lowers.iter().map(|l| fingerprint(l)).collect();
        let stack = LayerStack::open(Some(&self.upper), &self.lowers).unwrap();
        let work = WorkDir::prepare(&self.work, &self.upper, self.userxattr).unwrap();
        let opts = FsOptions {
            // Nothing here talks to a kernel: no backing files to set up.
            passthrough: false,
            xattr_whiteouts: self.xattr_whiteouts,
            ..Default::default()
        };
        LayerFs::new(stack, opts, Some(work)).unwrap()
    }

    /// The lower layers are exactly as they were before `open` (content,
    /// modes, owners, times, user xattrs, inode numbers).
    fn assert_lowers_untouched(&self) {
        for (l, before) in self.lowers.iter().zip(&self.before) {
            let d = common::diff(before, &fingerprint(l), Compare::ALL);
            assert!(d.is_empty(), "lower {l:?} changed:\n{}", d.join("\n"));
        }
    }

    /// Whether the upper's `rel` is a whiteout, in either kernel format: a
    /// char 0/0 device, or an empty file with `overlay.whiteout`.
    fn is_whiteout(&self, rel: &str) -> bool {
        let p = self.up(rel);
        let Ok(md) = fs::symlink_metadata(&p) else {
            return false;
        };
        (md.file_type().is_char_device() && md.rdev() == 0)
            || (md.is_file() && md.len() == 0 && xattr(&p, &self.x("whiteout")).is_some())
    }

    fn assert_whiteout(&self, rel: &str) {
        assert!(
            self.is_whiteout(rel),
            "upper {rel} must be a whiteout: {:?}",
            fs::symlink_metadata(self.up(rel))
        );
    }

    fn assert_absent(&self, rel: &str) {
        let r = fs::symlink_metadata(self.up(rel));
        assert!(r.is_err(), "upper {rel} must not exist: {r:?}");
    }

    /// The upper's overlay xattr `what` of `rel`.
    fn upper_x(&self, rel: &str, what: &str) -> Option<Vec<u8>> {
        xattr(&self.up(rel), &self.x(what))
    }

    /// The uid and gid this process gives new files.
    fn me(&self) -> (u32, u32) {
        let md = fs::metadata(self.t.path()).unwrap();
        (md.uid(), md.gid())
    }
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    common::getxattr(p, name).ok()
}

fn is_root() -> bool {
    common::is_root()
}

/// Whether a `trusted.` scenario can run: root only (a SKIP, or a failure
/// under CI, otherwise).
fn trusted_ok() -> bool {
    if !is_root() {
        common::cannot_run("needs root for trusted.* xattrs (the userxattr variant runs)");
        return false;
    }
    true
}

/// Each scenario as two tests: `NAME::trusted` and `NAME::userxattr`.
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn trusted() {
                if super::trusted_ok() {
                    super::$name(false);
                }
            }
            #[test]
            fn userxattr() {
                super::$name(true);
            }
        }
    )*};
}

// ---- operations by path ----------------------------------------------------

fn errno<T: std::fmt::Debug>(r: io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.raw_os_error().unwrap_or_else(|| panic!("no errno: {e}")),
    }
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Looks up a `/`-separated path from the root ("" is the root).
fn walk(fs: &LayerFs, path: &str) -> io::Result<FileAttr> {
    let mut attr = fs.getattr(ROOT_INO)?;
    let mut ino = ROOT_INO;
    for c in path.split('/').filter(|c| !c.is_empty()) {
        let (inode, a) = fs.lookup(ino, os(c))?;
        ino = inode.ino;
        attr = a;
    }
    Ok(attr)
}

/// The node id of a path (its parent's, for a name to make).
fn ino(fs: &LayerFs, path: &str) -> NodeId {
    if path.is_empty() {
        return ROOT_INO;
    }
    NodeId(
        walk(fs, path)
            .unwrap_or_else(|e| panic!("lookup {path}: {e}"))
            .ino
            .0,
    )
}

fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

fn read(fs: &LayerFs, path: &str) -> Vec<u8> {
    let (fh, _) = fs.open(ino(fs, path), libc::O_RDONLY).unwrap();
    let data = fs.read(fh, 0, 1 << 20).unwrap();
    fs.release(fh);
    data
}

fn create(fs: &LayerFs, s: &Stack, path: &str, mode: u32, data: &[u8]) -> FileAttr {
    let (dir, name) = split(path);
    let (uid, gid) = s.me();
    let (_, attr, fh) = fs
        .create(ino(fs, dir), os(name), mode, libc::O_RDWR, uid, gid)
        .unwrap_or_else(|e| panic!("create {path}: {e}"));
    if !data.is_empty() {
        fs.write(fh, 0, data, None).unwrap();
    }
    fs.release(fh);
    attr
}

fn mkdir_at(fs: &LayerFs, s: &Stack, path: &str) -> io::Result<FileAttr> {
    let (dir, name) = split(path);
    let (uid, gid) = s.me();
    fs.mkdir(ino(fs, dir), os(name), 0o755, uid, gid)
        .map(|(_, a)| a)
}

fn unlink(fs: &LayerFs, path: &str) -> io::Result<()> {
    let (dir, name) = split(path);
    fs.unlink(ino(fs, dir), os(name))
}

fn rmdir(fs: &LayerFs, path: &str) -> io::Result<()> {
    let (dir, name) = split(path);
    fs.rmdir(ino(fs, dir), os(name))
}

fn rename(fs: &LayerFs, from: &str, to: &str, flags: u32) -> io::Result<()> {
    let (fd, fname) = split(from);
    let (td, tname) = split(to);
    fs.rename(ino(fs, fd), os(fname), ino(fs, td), os(tname), flags)
}

/// The merged listing of a directory, without `.` and `..`, sorted by
/// name, asserting that no name comes twice.
fn list(fs: &LayerFs, path: &str) -> Vec<(String, FileType)> {
    let page = fs.readdir(ino(fs, path), 0).unwrap();
    let e = &page.entries;
    assert!(e.len() >= 2, "no . and ..");
    assert_eq!(
        (e[0].name.as_os_str(), e[1].name.as_os_str()),
        (os("."), os(".."))
    );
    let mut out: Vec<(String, FileType)> = e[2..]
        .iter()
        .map(|e| (e.name.to_str().unwrap().to_string(), e.kind))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    for w in out.windows(2) {
        assert_ne!(w[0].0, w[1].0, "{path}: {} listed twice", w[0].0);
    }
    out
}

fn names(fs: &LayerFs, path: &str) -> Vec<String> {
    list(fs, path).into_iter().map(|(n, _)| n).collect()
}

/// Makes lower file `p` with `data`, then sets its mtime to a fixed past
/// instant so a copy that does not keep times is seen.
fn old_file(p: &Path, data: &[u8]) -> SystemTime {
    write(p, data);
    let t = SystemTime::UNIX_EPOCH + Duration::new(981_173_106, 123_456_789);
    let f = fs::File::options().write(true).open(p).unwrap();
    f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
    t
}

// ---- scenarios -------------------------------------------------------------

both!(
    lookup_through_three_layers_with_whiteouts_and_opaque_dirs,
    create_and_unlink_of_upper_and_lower_names,
    rmdir_of_upper_and_lower_dirs,
    rename_of_a_lower_file_copies_up_and_whites_out,
    rename_of_a_lower_dir_writes_a_redirect,
    rename_exchange,
    rename_noreplace,
    link_of_a_lower_file,
    copy_up_keeps_data_mode_owner_times_and_xattrs,
    setattr_and_write_copy_up,
    readdir_merges_and_dedups,
    overlay_xattrs_are_hidden,
    xattr_whiteouts_are_read,
    upper_dir_moved_onto_a_whited_out_lower_dir_is_opaque,
    new_names_get_the_callers_owner_and_a_setgid_parents_group,
    copy_up_of_a_read_only_file,
    xattr_whiteouts_are_made,
    lowers_changed_under_a_running_filesystem,
    upper_rotated_into_a_lower,
);

/// Three lowers: a whiteout in the middle one hides a name below it, an
/// opaque dir hides the lower dir of its name, a whiteout in the top one
/// hides a whole dir; merged dirs show nlink 1 (kernel overlayfs), dirs of
/// one layer their real count.
fn lookup_through_three_layers_with_whiteouts_and_opaque_dirs(userxattr: bool) {
    let mut s = Stack::new(3, userxattr);
    let (l0, l1, l2) = (
        s.l(0).to_path_buf(),
        s.l(1).to_path_buf(),
        s.l(2).to_path_buf(),
    );
    write(&l2.join("a/x"), b"x2");
    write(&l2.join("a/y"), b"y2");
    write(&l2.join("b/old"), b"old");
    write(&l2.join("c"), b"c2");
    write(&l2.join("d/deep/f"), b"f");
    write(&l2.join("same"), b"bottom");
    mknod_whiteout(&l1.join("a/x"));
    write(&l1.join("b/new"), b"new");
    s.set_opaque(&l1.join("b"));
    write(&l1.join("same"), b"middle");
    mkdir(&l1.join("e/inner"));
    write(&l0.join("a/z"), b"z0");
    mknod_whiteout(&l0.join("c"));
    mknod_whiteout(&l0.join("e"));
    write(&l0.join("same"), b"top");
    let fs = s.open();

    for gone in ["a/x", "b/old", "c", "e", "e/inner"] {
        assert_eq!(errno(walk(&fs, gone)), libc::ENOENT, "{gone}");
    }
    assert_eq!(read(&fs, "a/y"), b"y2");
    assert_eq!(read(&fs, "a/z"), b"z0");
    assert_eq!(read(&fs, "b/new"), b"new");
    assert_eq!(read(&fs, "d/deep/f"), b"f");
    assert_eq!(read(&fs, "same"), b"top", "the topmost layer wins");

    use FileType::*;
    let s_ = |n: &str| n.to_string();
    assert_eq!(
        list(&fs, ""),
        vec![
            (s_("a"), Directory),
            (s_("b"), Directory),
            (s_("d"), Directory),
            (s_("same"), RegularFile)
        ]
    );
    assert_eq!(
        names(&fs, "a"),
        ["y", "z"],
        "whiteout hidden, layers merged"
    );
    assert_eq!(names(&fs, "b"), ["new"], "opaque hides the lower dir");

    assert_eq!(walk(&fs, "a").unwrap().nlink, 1, "merged dir");
    assert_eq!(walk(&fs, "d").unwrap().nlink, 3, "dir of one layer");
    assert_eq!(
        walk(&fs, "b").unwrap().nlink,
        2,
        "an opaque dir is not merged with the dir below"
    );
    // All layers on one filesystem: st_ino is the real one, as the
    // kernel's (xino leaves fsid 0 numbers unchanged).
    let real = fs::metadata(l2.join("a/y")).unwrap().ino();
    assert_eq!(walk(&fs, "a/y").unwrap().ino.0, real);
    assert_eq!(walk(&fs, "a/y").unwrap().ino.0, real, "stable");
    assert_eq!(walk(&fs, "a/y").unwrap().kind, RegularFile);
    s.assert_lowers_untouched();
    assert_eq!(
        fs::read_dir(&s.upper).unwrap().count(),
        0,
        "lookups write nothing"
    );
}

fn create_and_unlink_of_upper_and_lower_names(userxattr: bool) {
    let mut s = Stack::new(1, userxattr);
    write(&s.l(0).join("lowerfile"), b"L");
    write(&s.l(0).join("ld/lf"), b"lf");
    let fs = s.open();
    let me = s.me();

    // An upper-only name: made in the upper, removed without a whiteout.
    let a = create(&fs, &s, "fresh", 0o640, b"new");
    assert_eq!(a.kind, FileType::RegularFile);
    assert_eq!(a.perm, 0o640);
    assert_eq!((a.uid, a.gid), me);
    let md = fs::symlink_metadata(s.up("fresh")).unwrap();
    assert!(md.is_file());
    assert_eq!(md.mode() & 0o7777, 0o640);
    assert_eq!((md.uid(), md.gid()), me);
    assert_eq!(fs::read(s.up("fresh")).unwrap(), b"new");
    assert_eq!(read(&fs, "fresh"), b"new");
    unlink(&fs, "fresh").unwrap();
    s.assert_absent("fresh");
    assert_eq!(errno(walk(&fs, "fresh")), libc::ENOENT);

    // In a lower dir: the dir is copied up first, keeping its number.
    let ld = walk(&fs, "ld").unwrap().ino;
    create(&fs, &s, "ld/nf", 0o600, b"nf");
    assert!(fs::metadata(s.up("ld")).unwrap().is_dir());
    assert_eq!(fs::read(s.up("ld/nf")).unwrap(), b"nf");
    s.assert_absent("ld/lf");
    assert_eq!(walk(&fs, "ld").unwrap().ino, ld);
    assert!(
        s.upper_x("ld", "origin").is_some(),
        "a copied-up dir records its origin too, as the kernel's"
    );
    assert_eq!(names(&fs, "ld"), ["lf", "nf"]);
    assert_eq!(walk(&fs, "ld").unwrap().nlink, 1, "now merged");

    // A lower name: its unlink leaves a whiteout. (No create over it
    // here: the kernel calls create and mkdir for names its lookup found
    // absent only, and so do these tests.)
    unlink(&fs, "lowerfile").unwrap();
    s.assert_whiteout("lowerfile");
    assert_eq!(errno(walk(&fs, "lowerfile")), libc::ENOENT);
    assert!(!names(&fs, "").contains(&"lowerfile".to_string()));
    unlink(&fs, "ld/lf").unwrap();
    s.assert_whiteout("ld/lf");
    assert_eq!(names(&fs, "ld"), ["nf"]);

    // A name made over a whiteout replaces it.
    create(&fs, &s, "lowerfile", 0o644, b"again");
    assert!(!s.is_whiteout("lowerfile"));
    assert_eq!(fs::read(s.up("lowerfile")).unwrap(), b"again");
    assert_eq!(read(&fs, "lowerfile"), b"again");

    // A new upper-only dir: not opaque (nothing below), gone without trace.
    mkdir_at(&fs, &s, "newdir").unwrap();
    assert!(fs::metadata(s.up("newdir")).unwrap().is_dir());
    assert_eq!(s.upper_x("newdir", "opaque"), None);
    rmdir(&fs, "newdir").unwrap();
    s.assert_absent("newdir");
    s.assert_lowers_untouched();
}

fn rmdir_of_upper_and_lower_dirs(userxattr: bool) {
    let mut s = Stack::new(2, userxattr);
    write(&s.l(1).join("full/a"), b"a");
    mkdir(&s.l(1).join("empty"));
    write(&s.l(1).join("gone/x"), b"x");
    write(&s.l(0).join("gone/y"), b"y");
    let fs = s.open();

    assert_eq!(errno(rmdir(&fs, "full")), libc::ENOTEMPTY);
    s.assert_absent("full");

    rmdir(&fs, "empty").unwrap();
    s.assert_whiteout("empty");
    assert_eq!(errno(walk(&fs, "empty")), libc::ENOENT);

    // A merged dir whose every name is whited out is empty.
    unlink(&fs, "gone/x").unwrap();
    assert_eq!(errno(rmdir(&fs, "gone")), libc::ENOTEMPTY);
    unlink(&fs, "gone/y").unwrap();
    rmdir(&fs, "gone").unwrap();
    s.assert_whiteout("gone");
    assert!(!names(&fs, "").contains(&"gone".to_string()));

    // Made again over its whiteout, the dir is opaque: nothing below shows.
    mkdir_at(&fs, &s, "gone").unwrap();
    assert!(fs::metadata(s.up("gone")).unwrap().is_dir());
    assert_eq!(s.upper_x("gone", "opaque").as_deref(), Some(&b"y"[..]));
    assert_eq!(names(&fs, "gone"), Vec::<String>::new());
    assert_eq!(errno(walk(&fs, "gone/x")), libc::ENOENT);
    assert_eq!(walk(&fs, "gone").unwrap().nlink, 2, "opaque: not merged");
    rmdir(&fs, "gone").unwrap();
    s.assert_whiteout("gone");
    s.assert_lowers_untouched();
}

fn rename_of_a_lower_file_copies_up_and_whites_out(userxattr: bool) {
    let mut s = Stack::new(1, userxattr);
    write(&s.l(0).join("dir/f"), b"data");
    chmod(&s.l(0).join("dir/f"), 0o604);
    mkdir(&s.l(0).join("other"));
    write(&s.l(0).join("a2"), b"a2");
    write(&s.l(0).join("victim"), b"victim");
    let fs = s.open();
    let before = walk(&fs, "dir/f").unwrap();

    // Onto another lower file: it is replaced, no whiteout at the target.
    let a2 = walk(&fs, "a2").unwrap().ino;
    rename(&fs, "a2", "victim", 0).unwrap();
    assert_eq!(fs::read(s.up("victim")).unwrap(), b"a2");
    s.assert_whiteout("a2");
    assert_eq!(read(&fs, "victim"), b"a2");
    assert_eq!(walk(&fs, "victim").unwrap().ino, a2);
    assert_eq!(errno(walk(&fs, "a2")), libc::ENOENT);

    rename(&fs, "dir/f", "moved", 0).unwrap();
    let md = fs::symlink_metadata(s.up("moved")).unwrap();
    assert!(md.is_file());
    assert_eq!(md.mode() & 0o7777, 0o604);
    assert_eq!(fs::read(s.up("moved")).unwrap(), b"data");
    assert!(s.upper_x("moved", "origin").is_some(), "origin recorded");
    s.assert_whiteout("dir/f");
    assert_eq!(errno(walk(&fs, "dir/f")), libc::ENOENT);
    assert_eq!(names(&fs, "dir"), Vec::<String>::new());
    let after = walk(&fs, "moved").unwrap();
    assert_eq!(after.ino, before.ino, "st_ino survives the copy-up");
    assert_eq!(read(&fs, "moved"), b"data");

    // Moved again (now an upper file): nothing below its old name, so no
    // whiteout is left there.
    rename(&fs, "moved", "other/again", 0).unwrap();
    s.assert_absent("moved");
    assert_eq!(fs::read(s.up("other/again")).unwrap(), b"data");
    assert_eq!(walk(&fs, "other/again").unwrap().ino, before.ino);
    assert_eq!(errno(rename(&fs, "dir/f", "x", 0)), libc::ENOENT);
    s.assert_lowers_untouched();
}

fn rename_of_a_lower_dir_writes_a_redirect(userxattr: bool) {
    let mut s = Stack::new(2, userxattr);
    write(&s.l(1).join("d/sub/f"), b"f");
    write(&s.l(1).join("d/g"), b"g");
    write(&s.l(0).join("d/top"), b"t");
    mkdir(&s.l(1).join("p"));
    let fs = s.open();
    let number = walk(&fs, "d").unwrap().ino;

    if userxattr {
        // Kernel overlayfs turns redirect_dir off with userxattr (anyone
        // could forge a user.overlay.redirect): EXDEV, and rename(2)
        // callers copy instead. Refused before any copy-up.
        assert_eq!(errno(rename(&fs, "d", "e", 0)), libc::EXDEV);
        assert_eq!(errno(rename(&fs, "d", "p/q", 0)), libc::EXDEV);
        s.assert_absent("d");
        s.assert_absent("e");
        assert_eq!(names(&fs, "d"), ["g", "sub", "top"]);
        // A dir of the upper alone moves.
        mkdir_at(&fs, &s, "new").unwrap();
        rename(&fs, "new", "p/new2", 0).unwrap();
        assert!(fs::metadata(s.up("p/new2")).unwrap().is_dir());
        assert_eq!(s.upper_x("p/new2", "redirect"), None);
        s.assert_absent("new");
        s.assert_lowers_untouched();
        return;
    }

    // Same parent: a redirect to the old name. The kernel writes it
    // relative ("d"), layerfs absolute ("/d"): both read the same (see
    // `same_dir_rename_of_a_lower_dir_writes_a_relative_redirect`). A cross-
    // directory rename gets an absolute one from both (checked against a
    // kernel mount: `mv d e` gives "d", `mv e p/q` then "/d").
    rename(&fs, "d", "e", 0).unwrap();
    let r = s.upper_x("e", "redirect");
    assert!(matches!(r.as_deref(), Some(b"d" | b"/d")), "redirect {r:?}");
    assert!(s.upper_x("e", "origin").is_some());
    s.assert_whiteout("d");
    let on_disk: Vec<_> = fs::read_dir(s.up("e")).unwrap().collect();
    assert!(
        on_disk.is_empty(),
        "only the dir itself is copied up: {on_disk:?}"
    );
    assert_eq!(errno(walk(&fs, "d")), libc::ENOENT);
    assert_eq!(names(&fs, "e"), ["g", "sub", "top"]);
    assert_eq!(read(&fs, "e/sub/f"), b"f");
    assert_eq!(read(&fs, "e/top"), b"t");
    assert_eq!(walk(&fs, "e").unwrap().ino, number, "st_ino kept");

    // Another parent: an absolute redirect to where the lower dirs are.
    rename(&fs, "e", "p/q", 0).unwrap();
    assert_eq!(s.upper_x("p/q", "redirect").as_deref(), Some(&b"/d"[..]));
    s.assert_absent("e");
    assert_eq!(names(&fs, "p/q"), ["g", "sub", "top"]);
    assert_eq!(read(&fs, "p/q/sub/f"), b"f");
    assert_eq!(walk(&fs, "p/q").unwrap().ino, number);

    // A new dir under the old name is opaque over the lower one.
    mkdir_at(&fs, &s, "d").unwrap();
    assert_eq!(s.upper_x("d", "opaque").as_deref(), Some(&b"y"[..]));
    assert_eq!(names(&fs, "d"), Vec::<String>::new());

    // A fresh filesystem object over the same layers reads it back.
    drop(fs);
    let fs = s.open_again();
    assert_eq!(names(&fs, "p/q"), ["g", "sub", "top"]);
    assert_eq!(read(&fs, "p/q/sub/f"), b"f");
    assert_eq!(walk(&fs, "p/q").unwrap().ino, number);
    assert_eq!(names(&fs, "d"), Vec::<String>::new());
    s.assert_lowers_untouched();
}

/// Kernel overlayfs (`ovl_set_redirect`, `ovl_need_absolute_redirect`)
/// writes a relative redirect, the old name alone, when a directory is
/// renamed within its parent; layerfs writes the absolute path. Seen on
/// Linux 6.18: over lower `d/f`, `mv m/d m/e` leaves
/// `trusted.overlay.redirect="d"` on `upper/e` (and a later `mv m/e m/p/q`
/// "/d"); layerfs writes "/d" for the first. Both read back the same.
#[test]
fn same_dir_rename_of_a_lower_dir_writes_a_relative_redirect() {
    if !trusted_ok() {
        return;
    }
    let mut s = Stack::new(1, false);
    write(&s.l(0).join("d/f"), b"f");
    let fs = s.open();
    rename(&fs, "d", "e", 0).unwrap();
    assert_eq!(s.upper_x("e", "redirect").as_deref(), Some(&b"d"[..]));
}

impl Stack {
    /// Builds the filesystem again over the same layers (a remount), the
    /// lowers' fingerprints kept from the first `open`.
    fn open_again(&mut self) -> LayerFs {
        let before = std::mem::take(&mut self.before);
        let fs = self.open();
        self.before = before;
        fs
    }
}

fn rename_exchange(userxattr: bool) {
    let mut s = Stack::new(1, userxattr);
    write(&s.l(0).join("lf"), b"lower");
    write(&s.l(0).join("ld/x"), b"x");
    let fs = s.open();
    create(&fs, &s, "uf", 0o644, b"upper");
    let (lf, uf) = (walk(&fs, "lf").unwrap().ino, walk(&fs, "uf").unwrap().ino);

    rename(&fs, "lf", "uf", RENAME_EXCHANGE).unwrap();
    assert_eq!(read(&fs, "lf"), b"upper");
    assert_eq!(read(&fs, "uf"), b"lower");
    assert_eq!(walk(&fs, "uf").unwrap().ino, lf, "the number goes with it");
    assert_eq!(walk(&fs, "lf").unwrap().ino, uf);
    assert_eq!(fs::read(s.up("lf")).unwrap(), b"upper");
    assert_eq!(fs::read(s.up("uf")).unwrap(), b"lower");
    assert!(s.upper_x("uf", "origin").is_some());

    // A lower dir exchanged with a file: copied up with a redirect (the
    // kernel's is relative, "ld"; see the rename-of-a-dir scenario), or
    // EXDEV with userxattr, where the kernel makes no redirects.
    if userxattr {
        assert_eq!(errno(rename(&fs, "ld", "lf", RENAME_EXCHANGE)), libc::EXDEV);
        s.assert_absent("ld");
        assert_eq!(read(&fs, "lf"), b"upper");
    } else {
        rename(&fs, "ld", "lf", RENAME_EXCHANGE).unwrap();
        assert!(fs::metadata(s.up("lf")).unwrap().is_dir());
        let r = s.upper_x("lf", "redirect");
        assert!(
            matches!(r.as_deref(), Some(b"ld" | b"/ld")),
            "redirect {r:?}"
        );
        assert_eq!(fs::read(s.up("ld")).unwrap(), b"upper");
        assert!(!s.is_whiteout("ld") && !s.is_whiteout("lf"));
        assert_eq!(names(&fs, "lf"), ["x"]);
        assert_eq!(read(&fs, "lf/x"), b"x");
        assert_eq!(read(&fs, "ld"), b"upper");
    }
    assert_eq!(names(&fs, ""), ["ld", "lf", "uf"]);

    assert_eq!(
        errno(rename(&fs, "uf", "missing", RENAME_EXCHANGE)),
        libc::ENOENT
    );
    s.assert_lowers_untouched();
}

fn rename_noreplace(userxattr: bool) {
    let mut s = Stack::new(1, userxattr);
    write(&s.l(0).join("a"), b"a");
    write(&s.l(0).join("b"), b"b");
    let fs = s.open();
    create(&fs, &s, "u", 0o644, b"u");

    for (from, to) in [("a", "b"), ("a", "u"), ("u", "a")] {
        assert_eq!(
            errno(rename(&fs, from, to, RENAME_NOREPLACE)),
            libc::EEXIST,
            "{from} -> {to}"
        );
    }
    // Refused before anything is copied up.
    s.assert_absent("a");
    s.assert_absent("b");
    assert_eq!(read(&fs, "a"), b"a");
    assert_eq!(read(&fs, "b"), b"b");

    // A whited-out name is free.
    unlink(&fs, "b").unwrap();
    rename(&fs, "a", "b", RENAME_NOREPLACE).unwrap();
    assert_eq!(fs::read(s.up("b")).unwrap(), b"a");
    s.assert_whiteout("a");
    assert_eq!(read(&fs, "b"), b"a");
    assert_eq!(names(&fs, ""), ["b", "u"]);
    rename(&fs, "u", "v", RENAME_NOREPLACE).unwrap();
    s.assert_absent("u");
    assert_eq!(names(&fs, ""), ["b", "v"]);
    s.assert_lowers_untouched();
}

fn link_of_a_lower_file(userxattr: bool) {
    let mut s = Stack::new(1, userxattr);
    write(&s.l(0).join("f"), b"data");
    mkdir(&s.l(0).join("dir"));
    let fs = s.open();
    let f = walk(&fs, "f").unwrap();
    assert_eq!(f.nlink, 1);

    let (_, attr) = fs.link(NodeId(f.ino.0), ino(&fs, "dir"), os("g")).unwrap();
    assert_eq!(attr.ino, f.ino, "the link is the same object");
    assert_eq!(attr.nlink, 2);
    let (uf, ug) = (
        fs::symlink_metadata(s.up("f")).unwrap(),
        fs::symlink_metadata(s.up("dir/g")).unwrap(),
    );
    assert_eq!(
        (uf.dev(), uf.ino()),
        (ug.dev(), ug.ino()),
        "a real hard link"
    );
    assert_eq!(uf.nlink(), 2);
    assert_eq!(fs::read(s.up("f")).unwrap(), b"data");
    assert!(s.upper_x("f", "origin").is_some());
    assert_eq!(walk(&fs, "f").unwrap().ino, f.ino, "st_ino kept");
    assert_eq!(walk(&fs, "dir/g").unwrap().ino, f.ino);
    assert_eq!(walk(&fs, "f").unwrap().nlink, 2);
    assert_eq!(names(&fs, "dir"), ["g"]);

    // Unlinked by its lower name, the link lives on.
    unlink(&fs, "f").unwrap();
    s.assert_whiteout("f");
    assert_eq!(read(&fs, "dir/g"), b"data");
    assert_eq!(walk(&fs, "dir/g").unwrap().nlink, 1);
    assert_eq!(
        errno(fs.link(ino(&fs, "dir"), ROOT_INO, os("d2"))),
        libc::EPERM
    );
    s.assert_lowers_untouched();
}

/// `copy_up` called directly: data, mode (setuid and setgid too), owner,
/// times and user xattrs are kept, the parent dir copied up with its own
/// mode and times, and the origin recorded.
fn copy_up_keeps_data_mode_owner_times_and_xattrs(userxattr: bool) {
    let mut s = Stack::new(2, userxattr);
    let tool = s.l(1).join("dir/tool");
    let t = old_file(&tool, b"#!/bin/sh\necho hi\n");
    // Another owner where this process may give one (before the mode:
    // chown clears setuid and setgid).
    let owner = if is_root() { (1000, 1001) } else { s.me() };
    chown(&tool, owner.0, owner.1);
    chmod(&tool, 0o6750);
    setxattr(&tool, "user.keep", b"me");
    chmod(&s.l(1).join("dir"), 0o750);
    let dir_mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs::File::open(s.l(1).join("dir"))
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(dir_mtime))
        .unwrap();
    let fs = s.open();
    let before = walk(&fs, "dir/tool").unwrap();
    assert_eq!(before.perm, 0o6750);

    let (inode, _) = fs.lookup(ino(&fs, "dir"), os("tool")).unwrap();
    fs.copy_up(&inode).unwrap();
    let up = s.up("dir/tool");
    let md = fs::symlink_metadata(&up).unwrap();
    assert_eq!(fs::read(&up).unwrap(), b"#!/bin/sh\necho hi\n");
    assert_eq!(md.mode() & 0o7777, 0o6750);
    assert_eq!((md.uid(), md.gid()), owner);
    assert_eq!(md.modified().unwrap(), t, "mtime kept to the nanosecond");
    assert_eq!(
        xattr(&up, "user.keep").as_deref(),
        Some(&b"me"[..]),
        "user xattrs copied"
    );
    assert!(s.upper_x("dir/tool", "origin").is_some(), "origin recorded");
    let dmd = fs::metadata(s.up("dir")).unwrap();
    assert_eq!(dmd.mode() & 0o7777, 0o750, "parent copied with its mode");
    assert_eq!(dmd.modified().unwrap(), dir_mtime, "and its times");

    let after = walk(&fs, "dir/tool").unwrap();
    assert_eq!(after.ino, before.ino, "st_ino survives copy-up");
    assert_eq!(
        after.ino.0,
        fs::metadata(&tool).unwrap().ino(),
        "the origin's"
    );
    assert_eq!(
        (after.perm, after.uid, after.gid),
        (0o6750, owner.0, owner.1)
    );
    assert_eq!(after.mtime, t);
    assert_eq!(after.size, before.size);
    // Twice is once.
    fs.copy_up(&inode).unwrap();
    assert_eq!(fs::read(&up).unwrap(), b"#!/bin/sh\necho hi\n");
    s.assert_lowers_untouched();
}

/// Copy-up as a side effect: a chmod (setattr) and a write through a
/// handle opened for writing; O_TRUNC copies up no data.
fn setattr_and_write_copy_up(userxattr: bool) {
    let mut s = Stack::new(1, userxattr);
    let t = old_file(&s.l(0).join("chm"), b"keep");
    setxattr(&s.l(0).join("chm"), "user.k", b"v");
    old_file(&s.l(0).join("wr"), b"0123456789");
    write(&s.l(0).join("tr"), b"gone soon");
    let fs = s.open();
    let numbers: Vec<u64> = ["chm", "wr", "tr"]
        .iter()
        .map(|p| walk(&fs, p).unwrap().ino.0)
        .collect();

    let a = fs
        .setattr(
            ino(&fs, "chm"),
            SetAttr {
                mode: Some(0o600),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(a.perm, 0o600);
    let md = fs::symlink_metadata(s.up("chm")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o600);
    assert_eq!(md.modified().unwrap(), t, "a chmod keeps the mtime");
    assert_eq!(fs::read(s.up("chm")).unwrap(), b"keep");
    assert_eq!(xattr(&s.up("chm"), "user.k").as_deref(), Some(&b"v"[..]));

    let (fh, lower) = fs.open(ino(&fs, "wr"), libc::O_RDWR).unwrap();
    assert!(!lower, "a handle for writing is on the upper copy");
    assert_eq!(fs::read(s.up("wr")).unwrap(), b"0123456789");
    assert_eq!(fs.write(fh, 2, b"ab", None).unwrap().0, 2);
    fs.release(fh);
    assert_eq!(fs::read(s.up("wr")).unwrap(), b"01ab456789");
    assert_eq!(read(&fs, "wr"), b"01ab456789");

    let (fh, _) = fs
        .open(ino(&fs, "tr"), libc::O_WRONLY | libc::O_TRUNC)
        .unwrap();
    fs.release(fh);
    assert_eq!(fs::read(s.up("tr")).unwrap(), b"");
    assert_eq!(walk(&fs, "tr").unwrap().size, 0);

    let after: Vec<u64> = ["chm", "wr", "tr"]
        .iter()
        .map(|p| walk(&fs, p).unwrap().ino.0)
        .collect();
    assert_eq!(after, numbers, "st_ino survives copy-up");
    s.assert_lowers_untouched();
}

/// A merged listing: each name once, with the kind of its topmost layer;
/// `.` and `..` first; cookies rising, and a listing resumed at any
/// cookie goes on with the next name; entry numbers are lookup's st_ino.
fn readdir_merges_and_dedups(userxattr: bool) {
    let mut s = Stack::new(2, userxattr);
    let (l0, l1) = (s.l(0).to_path_buf(), s.l(1).to_path_buf());
    for i in 0..150 {
        write(&l1.join(format!("big/n{i:03}")), b"1");
    }
    for i in 100..200 {
        write(&l0.join(format!("big/n{i:03}")), b"0");
    }
    write(&l1.join("kind"), b"file below");
    mkdir(&l0.join("kind"));
    write(&l1.join("dupe"), b"1");
    write(&l0.join("dupe"), b"0");
    write(&l1.join("n1"), b"1");
    mkdir(&l0.join("ldir"));
    let fs = s.open();
    for i in 150..250 {
        create(&fs, &s, &format!("big/n{i:03}"), 0o644, b"u");
    }
    create(&fs, &s, "dupe", 0o644, b"u");
    mkdir_at(&fs, &s, "udir").unwrap();

    use FileType::*;
    let l = list(&fs, "");
    let want: Vec<(String, FileType)> = [
        ("big", Directory),
        ("dupe", RegularFile),
        ("kind", Directory),
        ("ldir", Directory),
        ("n1", RegularFile),
        ("udir", Directory),
    ]
    .iter()
    .map(|(n, k)| (n.to_string(), *k))
    .collect();
    assert_eq!(l, want);
    let big = names(&fs, "big");
    let want: Vec<String> = (0..250).map(|i| format!("n{i:03}")).collect();
    assert_eq!(big, want, "every name once");

    let page = fs.readdir(ino(&fs, "big"), 0).unwrap();
    let e = page.entries.clone();
    assert_eq!(page.start, 0);
    for w in e[2..].windows(2) {
        assert!(w[0].cookie < w[1].cookie, "cookies rise");
    }
    for k in [2, 3, 100, e.len() - 2, e.len() - 1] {
        let resumed = fs.readdir(ino(&fs, "big"), page.cookie_after(k)).unwrap();
        assert_eq!(resumed.start, k + 1, "resumed after entry {k}");
    }
    let big_ino = ino(&fs, "big");
    for ent in e[2..].iter().step_by(17) {
        let (_, a) = fs.lookup(big_ino, &ent.name).unwrap();
        assert_eq!(
            ent.ino.0, a.ino.0,
            "readdir and lookup agree on {:?}",
            ent.name
        );
    }
    s.assert_lowers_untouched();
}

/// The overlay's own xattrs (origin, opaque, redirect) are neither listed
/// nor readable through the filesystem; other xattrs are, before and
/// after copy-up.
fn overlay_xattrs_are_hidden(userxattr: bool) {
    let mut s = Stack::new(2, userxattr);
    write(&s.l(1).join("f"), b"f");
    setxattr(&s.l(1).join("f"), "user.a", b"1");
    write(&s.l(1).join("o/hidden"), b"h");
    write(&s.l(0).join("o/shown"), b"s");
    s.set_opaque(&s.l(0).join("o"));
    mkdir(&s.l(1).join("d"));
    let fs = s.open();
    let has = |list: &[u8], name: &str| list.split(|&b| b == 0).any(|n| n == name.as_bytes());

    let l = fs.listxattr(ino(&fs, "f")).unwrap();
    assert!(has(&l, "user.a"));
    assert_eq!(fs.getxattr(ino(&fs, "f"), os("user.a")).unwrap(), b"1");
    let l = fs.listxattr(ino(&fs, "o")).unwrap();
    assert!(!has(&l, &s.x("opaque")), "{l:?}");
    assert_eq!(
        errno(fs.getxattr(ino(&fs, "o"), os(&s.x("opaque")))),
        libc::ENODATA
    );
    assert_eq!(names(&fs, "o"), ["shown"]);

    fs.setxattr(ino(&fs, "f"), os("user.b"), b"2", 0).unwrap();
    assert!(s.upper_x("f", "origin").is_some());
    let l = fs.listxattr(ino(&fs, "f")).unwrap();
    assert!(has(&l, "user.a") && has(&l, "user.b"), "{l:?}");
    assert!(!has(&l, &s.x("origin")), "{l:?}");
    assert_eq!(
        errno(fs.getxattr(ino(&fs, "f"), os(&s.x("origin")))),
        libc::ENODATA
    );
    // Refused (EPERM, as kernels before 6.7) or escaped (6.7+): either
    // way the real origin is not overwritten.
    let origin = s.upper_x("f", "origin");
    let _ = fs.setxattr(ino(&fs, "f"), os(&s.x("origin")), b"x", 0);
    assert_eq!(s.upper_x("f", "origin"), origin);

    // Redirects (none with userxattr, as in the kernel).
    if !userxattr {
        rename(&fs, "d", "d2", 0).unwrap();
        assert!(s.upper_x("d2", "redirect").is_some());
        let l = fs.listxattr(ino(&fs, "d2")).unwrap();
        assert!(!has(&l, &s.x("redirect")), "{l:?}");
        assert_eq!(
            errno(fs.getxattr(ino(&fs, "d2"), os(&s.x("redirect")))),
            libc::ENODATA
        );
    }
    s.assert_lowers_untouched();
}

/// Lower layers with whiteouts of the xattr kind (kernel 6.7+ reads them):
/// an empty file with `overlay.whiteout` in a dir marked `overlay.opaque`
/// "x" hides the name below; such a dir is merged, not opaque.
fn xattr_whiteouts_are_read(userxattr: bool) {
    let mut s = Stack::new(2, userxattr);
    xattr_whiteout_layers(&s);
    let fs = s.open();
    assert_eq!(errno(walk(&fs, "dir/w")), libc::ENOENT);
    assert_eq!(names(&fs, "dir"), ["k", "sub"]);
    assert_eq!(read(&fs, "dir/k"), b"k");
    assert_eq!(
        walk(&fs, "dir").unwrap().nlink,
        1,
        "merged: \"x\" is not opaque"
    );
    let root: Vec<String> = names(&fs, "");
    assert_eq!(root, ["dir"]);
    s.assert_lowers_untouched();
}

fn xattr_whiteout_layers(s: &Stack) {
    let (l0, l1) = (s.l(0), s.l(1));
    write(&l1.join("dir/w"), b"below");
    write(&l1.join("dir/k"), b"k");
    write(&l1.join("dir/sub/x"), b"x");
    write(&l0.join("dir/w"), b"");
    setxattr(&l0.join("dir/w"), &s.x("whiteout"), b"");
    setxattr(&l0.join("dir"), &s.x("opaque"), b"x");
}

/// With `xattr_whiteouts`, the filesystem makes whiteouts of the xattr
/// kind, marking the upper dir "x", and reads them back.
fn xattr_whiteouts_are_made(userxattr: bool) {
    let mut s = Stack::new(2, userxattr);
    s.xattr_whiteouts = true;
    xattr_whiteout_layers(&s);
    let fs = s.open();

    unlink(&fs, "dir/k").unwrap();
    assert!(s.is_whiteout("dir/k"));
    let md = fs::symlink_metadata(s.up("dir/k")).unwrap();
    assert!(md.is_file() && md.len() == 0, "the xattr kind: {md:?}");
    assert_eq!(s.upper_x("dir/k", "whiteout").as_deref(), Some(&b""[..]));
    assert_eq!(s.upper_x("dir", "opaque").as_deref(), Some(&b"x"[..]));
    unlink(&fs, "dir/sub/x").unwrap();
    rmdir(&fs, "dir/sub").unwrap();
    s.assert_whiteout("dir/sub");
    assert_eq!(names(&fs, "dir"), Vec::<String>::new());
    for gone in ["dir/k", "dir/sub", "dir/w"] {
        assert_eq!(errno(walk(&fs, gone)), libc::ENOENT, "{gone}");
    }

    // Read back by a new filesystem object, and replaced by a new name.
    drop(fs);
    let fs = s.open_again();
    assert_eq!(names(&fs, "dir"), Vec::<String>::new());
    create(&fs, &s, "dir/k", 0o644, b"new");
    assert!(!s.is_whiteout("dir/k"));
    assert_eq!(read(&fs, "dir/k"), b"new");
    assert_eq!(names(&fs, "dir"), ["k"]);
    s.assert_lowers_untouched();
}

/// A file its owner may not write (0444) copied up with its user xattrs
/// and origin: kernel overlayfs sets the xattrs first and the mode last
/// (`ovl_copy_up_metadata`), so an unprivileged copy-up works too.
fn copy_up_of_a_read_only_file(userxattr: bool) {
    let mut s = Stack::new(1, userxattr);
    let ro = s.l(0).join("ro");
    let t = old_file(&ro, b"ro");
    setxattr(&ro, "user.r", b"1");
    chmod(&ro, 0o444);
    write(&s.l(0).join("plain"), b"p");
    chmod(&s.l(0).join("plain"), 0o400);
    let fs = s.open();
    let number = walk(&fs, "ro").unwrap().ino;
    let (inode, _) = fs.lookup(ROOT_INO, os("ro")).unwrap();
    fs.copy_up(&inode).unwrap();
    let md = fs::symlink_metadata(s.up("ro")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o444);
    assert_eq!(md.modified().unwrap(), t);
    assert_eq!(fs::read(s.up("ro")).unwrap(), b"ro");
    assert_eq!(xattr(&s.up("ro"), "user.r").as_deref(), Some(&b"1"[..]));
    assert!(s.upper_x("ro", "origin").is_some(), "origin recorded");
    assert_eq!(walk(&fs, "ro").unwrap().ino, number);
    // Without xattrs of its own: the origin alone.
    let (inode, _) = fs.lookup(ROOT_INO, os("plain")).unwrap();
    fs.copy_up(&inode).unwrap();
    assert_eq!(
        fs::symlink_metadata(s.up("plain")).unwrap().mode() & 0o7777,
        0o400
    );
    assert!(s.upper_x("plain", "origin").is_some(), "origin recorded");
    s.assert_lowers_untouched();
}

/// A directory of the upper alone renamed onto the whiteout of a lower
/// directory is marked opaque: the lower one stays hidden.
fn upper_dir_moved_onto_a_whited_out_lower_dir_is_opaque(userxattr: bool) {
    let mut s = Stack::new(1, userxattr);
    write(&s.l(0).join("e/x"), b"x");
    let fs = s.open();
    unlink(&fs, "e/x").unwrap();
    rmdir(&fs, "e").unwrap();
    mkdir_at(&fs, &s, "nd").unwrap();
    assert_eq!(s.upper_x("nd", "opaque"), None, "nothing below: not marked");
    create(&fs, &s, "nd/inside", 0o644, b"i");
    rename(&fs, "nd", "e", 0).unwrap();
    assert_eq!(names(&fs, "e"), ["inside"], "lower e/x must stay hidden");
    assert_eq!(errno(walk(&fs, "e/x")), libc::ENOENT);
    assert_eq!(s.upper_x("e", "opaque").as_deref(), Some(&b"y"[..]));
    assert!(!s.is_whiteout("e"));
    s.assert_absent("nd");
    s.assert_lowers_untouched();
}

/// Kernel overlayfs marks a directory of the upper alone opaque whenever
/// it is moved into a merged directory (`ovl_rename`), whether or not a
/// lower layer holds its new name: seen on Linux 6.18, over lower `ld/f`,
/// `mkdir m/nd; mv m/nd m/ld/moved` leaves `overlay.opaque="y"` on
/// `upper/ld/moved`. layerfs marks it only when a lower layer has the
/// name, so the upper it leaves differs, and such a dir would merge with
/// a directory of that name in a lower layer stacked under it later.
#[test]
fn upper_dir_moved_into_a_merged_dir_is_opaque() {
    let mut s = Stack::new(1, true);
    write(&s.l(0).join("ld/f"), b"f");
    let fs = s.open();
    mkdir_at(&fs, &s, "nd").unwrap();
    rename(&fs, "nd", "ld/moved", 0).unwrap();
    assert_eq!(s.upper_x("ld/moved", "opaque").as_deref(), Some(&b"y"[..]));
}

/// create and mkdir give new objects the caller's ids, the group of a
/// setgid parent, and a setgid parent's bit to new dirs.
fn new_names_get_the_callers_owner_and_a_setgid_parents_group(userxattr: bool) {
    let mut s = Stack::new(1, userxattr);
    let me = s.me();
    // As root, a caller and a group that are not the process' own.
    let (caller, group) = if is_root() {
        ((1000, 1000), 1001)
    } else {
        (me, me.1)
    };
    mkdir(&s.l(0).join("sg"));
    chown(&s.l(0).join("sg"), me.0, group);
    chmod(&s.l(0).join("sg"), 0o2777);
    let fs = s.open();
    let sg = ino(&fs, "sg");
    let (_, a, fh) = fs
        .create(sg, os("f"), 0o640, libc::O_RDWR, caller.0, caller.1)
        .unwrap();
    fs.release(fh);
    assert_eq!((a.uid, a.gid), (caller.0, group));
    let md = fs::symlink_metadata(s.up("sg/f")).unwrap();
    assert_eq!((md.uid(), md.gid()), (caller.0, group));
    assert_eq!(md.mode() & 0o7777, 0o640);
    let (_, a) = fs.mkdir(sg, os("d"), 0o750, caller.0, caller.1).unwrap();
    assert_eq!((a.uid, a.gid), (caller.0, group));
    let md = fs::symlink_metadata(s.up("sg/d")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o2750, "setgid inherited");
    assert_eq!((md.uid(), md.gid()), (caller.0, group));
    // Elsewhere: the caller's own ids.
    let (_, a) = fs
        .mkdir(ROOT_INO, os("plain"), 0o755, caller.0, caller.1)
        .unwrap();
    assert_eq!((a.uid, a.gid), caller);
    assert_eq!(a.perm, 0o755);
    s.assert_lowers_untouched();
}

// ---- the filesystem's tunables from the mount options ------------------------

/// `-o` and the environment reach the filesystem as the daemon builds its
/// options (`mount::fs_options`): each option sets its tunable, the rest
/// keep their defaults, and FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT in the
/// environment asks for xattr whiteouts.
#[test]
fn mount_options_become_the_filesystems_tunables() {
    let no_env = |_: &str| None;
    let parse = |o: &str| MountOptions::parse(&[o]).unwrap();
    let tunables = |f: &FsOptions| {
        (
            f.timeout,
            f.fsync,
            f.read_only,
            f.metacopy,
            f.passthrough,
            f.no_writeback,
            f.xattr_whiteouts,
            f.redirect_dir,
        )
    };

    let plain = fs_options(&parse("lowerdir=/l"), no_env);
    assert_eq!(tunables(&plain), tunables(&FsOptions::default()));
    // Ids as stored, by the options' mapping (whose overflow id is read
    // from the system: FsOptions::default() has 0 there).
    assert!(plain.ids.is_identity());
    assert_eq!(plain.ids, parse("lowerdir=/l").id_mapping());

    let o = parse(
        "lowerdir=/l,upperdir=/u,workdir=/w,volatile,ro,metacopy=on,passthrough=off,writeback=0,timeout=5,squash_to_root",
    );
    let f = fs_options(&o, no_env);
    assert_eq!(f.timeout, Duration::from_secs(5));
    assert!(!f.fsync && f.read_only && f.metacopy);
    assert!(!f.passthrough && f.no_writeback && !f.xattr_whiteouts);
    assert_eq!(f.redirect_dir, RedirectDir::On);
    assert!(f.ids.squashed());
    assert_eq!(f.ids, o.id_mapping());

    let f = fs_options(&parse("lowerdir=/l,redirect_dir=nofollow"), no_env);
    assert_eq!(f.redirect_dir, RedirectDir::NoFollow);

    // Only the variable's presence counts: an empty value too.
    let env = |k: &str| (k == "FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT").then(OsString::new);
    assert!(fs_options(&parse("lowerdir=/l"), env).xattr_whiteouts);
}

// ---- stacks that change: what live snapshots will build on ---------------

/// An error a running filesystem may give for a lower entry that changed
/// under it: the name is gone (ENOENT) or its handle is (ESTALE). Kernel
/// overlayfs calls changes to the lowers of a mounted stack undefined;
/// layerfs promises no more than this, and no crash.
fn changed_lower_errno<T>(r: &io::Result<T>, what: &str) {
    if let Err(e) = r {
        let n = e.raw_os_error();
        assert!(
            n == Some(libc::ENOENT) || n == Some(libc::ESTALE),
            "{what}: {e} (only ENOENT or ESTALE for a changed lower)"
        );
    }
}

/// Files added to, changed in and removed from the lowers after the
/// filesystem was built: the running one may show the old or the new
/// state, answering only ENOENT or ESTALE for what went away; a new one
/// built over the same dirs shows the new state.
fn lowers_changed_under_a_running_filesystem(userxattr: bool) {
    let mut s = Stack::new(2, userxattr);
    write(&s.l(0).join("d/a"), b"a");
    write(&s.l(1).join("d/b"), b"b");
    write(&s.l(1).join("d/sub/x"), b"x");
    let fs = s.open();
    assert_eq!(names(&fs, "d"), ["a", "b", "sub"]);
    assert_eq!(read(&fs, "d/a"), b"a");
    assert_eq!(names(&fs, "d/sub"), ["x"]);

    write(&s.l(1).join("d/c"), b"c");
    write(&s.l(0).join("top"), b"top");
    fs::remove_file(s.l(0).join("d/a")).unwrap();
    fs::write(s.l(1).join("d/b"), b"b changed").unwrap();
    fs::remove_dir_all(s.l(1).join("d/sub")).unwrap();

    // The running filesystem: any of the two states, no other error.
    for path in ["d/a", "d/b", "d/c", "top", "d/sub", "d/sub/x"] {
        changed_lower_errno(&walk(&fs, path), &format!("lookup {path}"));
    }
    for path in ["d/a", "d/b"] {
        if let Ok(a) = walk(&fs, path) {
            let opened = fs.open(NodeId(a.ino.0), libc::O_RDONLY);
            changed_lower_errno(&opened, &format!("open {path}"));
            if let Ok((fh, _)) = opened {
                changed_lower_errno(&fs.read(fh, 0, 1 << 20), &format!("read {path}"));
                fs.release(fh);
            }
        }
    }
    for dir in ["", "d"] {
        let page = walk(&fs, dir).map(|a| fs.readdir(NodeId(a.ino.0), 0));
        changed_lower_errno(&page.and_then(|p| p), &format!("readdir {dir:?}"));
    }
    drop(fs);

    // A filesystem built now sees the lowers as they are.
    let fs = s.open();
    assert_eq!(names(&fs, ""), ["d", "top"]);
    assert_eq!(names(&fs, "d"), ["b", "c"]);
    assert_eq!(read(&fs, "d/b"), b"b changed");
    assert_eq!(read(&fs, "d/c"), b"c");
    assert_eq!(errno(walk(&fs, "d/a")), libc::ENOENT);
    assert_eq!(errno(walk(&fs, "d/sub")), libc::ENOENT);
    s.assert_lowers_untouched();
}

/// What a merged tree shows of one entry, as read through the filesystem.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    kind: FileType,
    perm: u16,
    /// File content or symlink target.
    data: Vec<u8>,
    nlink: u32,
}

/// Every entry of the merged tree under `path`, by path, and which paths
/// are one object (one inode number): the link groups of more than one.
fn seen_tree(fs: &LayerFs) -> (BTreeMap<String, Seen>, Vec<Vec<String>>) {
    fn go(
        fs: &LayerFs,
        dir: &str,
        out: &mut BTreeMap<String, Seen>,
        by_ino: &mut BTreeMap<u64, Vec<String>>,
    ) {
        for (name, _) in list(fs, dir) {
            let path = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            let a = walk(fs, &path).unwrap();
            let data = match a.kind {
                FileType::RegularFile => read(fs, &path),
                FileType::Symlink => fs.readlink(NodeId(a.ino.0)).unwrap(),
                _ => Vec::new(),
            };
            if a.kind != FileType::Directory {
                by_ino.entry(a.ino.0).or_default().push(path.clone());
            }
            let kind = a.kind;
            out.insert(
                path.clone(),
                Seen {
                    kind,
                    perm: a.perm,
                    data,
                    nlink: if kind == FileType::Directory {
                        0
                    } else {
                        a.nlink
                    },
                },
            );
            if kind == FileType::Directory {
                go(fs, &path, out, by_ino);
            }
        }
    }
    let (mut out, mut by_ino) = (BTreeMap::new(), BTreeMap::new());
    go(fs, "", &mut out, &mut by_ino);
    let groups = by_ino.into_values().filter(|g| g.len() > 1).collect();
    (out, groups)
}

/// The same view of a mounted tree (kernel overlayfs), by the VFS.
fn seen_mounted(root: &Path) -> (BTreeMap<String, Seen>, Vec<Vec<String>>) {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(root.join(&dir)).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let path = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            let md = fs::symlink_metadata(root.join(&path)).unwrap();
            let (kind, data) = if md.is_dir() {
                stack.push(path.clone());
                (FileType::Directory, Vec::new())
            } else if md.file_type().is_symlink() {
                let t = fs::read_link(root.join(&path)).unwrap();
                (FileType::Symlink, t.into_os_string().into_encoded_bytes())
            } else {
                (FileType::RegularFile, fs::read(root.join(&path)).unwrap())
            };
            if kind != FileType::Directory {
                by_ino.entry(md.ino()).or_default().push(path.clone());
            }
            let nlink = if kind == FileType::Directory {
                0
            } else {
                md.nlink() as u32
            };
            let perm = (md.permissions().mode() & 0o7777) as u16;
            out.insert(
                path,
                Seen {
                    kind,
                    perm,
                    data,
                    nlink,
                },
            );
        }
    }
    let mut groups: Vec<Vec<String>> = by_ino.into_values().filter(|g| g.len() > 1).collect();
    for g in &mut groups {
        g.sort();
    }
    (out, groups)
}

/// The upper a filesystem wrote, rotated under a fresh empty upper as the
/// top lower (what taking a snapshot of a live volume does): the new
/// filesystem shows the same tree, names, content, modes, whiteouts still
/// hiding what they hid, a redirected dir with its lower content, and a
/// hard link still one file. Kernel overlayfs, mounting the rotated stack
/// read-only, shows the same tree too (as root).
fn upper_rotated_into_a_lower(userxattr: bool) {
    let mut s = Stack::new(2, userxattr);
    write(&s.l(1).join("d/sub/f"), b"deep");
    write(&s.l(1).join("d/g"), b"g");
    write(&s.l(0).join("d/top"), b"top");
    write(&s.l(1).join("gone"), b"to be whited out");
    write(&s.l(1).join("gonedir/x"), b"x");
    write(&s.l(0).join("old"), b"lower old");
    write(&s.l(1).join("f"), b"linked");
    mkdir(&s.l(0).join("dir"));
    common::link_sym("old", &s.l(0).join("sym"));
    let fs = s.open();

    create(&fs, &s, "new", 0o640, b"new file");
    let (fh, _) = fs.open(ino(&fs, "old"), libc::O_RDWR).unwrap();
    fs.write(fh, 0, b"upper", None).unwrap();
    fs.release(fh);
    fs.setattr(
        ino(&fs, "old"),
        SetAttr {
            mode: Some(0o600),
            ..Default::default()
        },
    )
    .unwrap();
    unlink(&fs, "gone").unwrap();
    unlink(&fs, "gonedir/x").unwrap();
    rmdir(&fs, "gonedir").unwrap();
    if !userxattr {
        // Redirects are off with userxattr, as in kernel overlayfs.
        rename(&fs, "d", "dir/e", 0).unwrap();
    }
    let f = walk(&fs, "f").unwrap();
    fs.link(NodeId(f.ino.0), ino(&fs, "dir"), os("f2")).unwrap();
    let (before, links) = seen_tree(&fs);
    assert_eq!(links, [vec!["dir/f2".to_string(), "f".to_string()]]);
    assert!(!before.contains_key("gone") && !before.contains_key("gonedir"));
    if !userxattr {
        assert_eq!(before["dir/e/sub/f"].data, b"deep");
        assert!(!before.contains_key("d"));
    }
    drop(fs);

    // Rotate: the old upper becomes the top lower, under a new empty upper.
    let old_upper = s.upper.clone();
    s.lowers.insert(0, old_upper);
    s.upper = s.t.path().join("upper2");
    s.work = s.t.path().join("work2");
    mkdir(&s.upper);
    mkdir(&s.work);
    let fs = s.open();
    let (after, after_links) = seen_tree(&fs);
    let diffs: Vec<String> = before
        .keys()
        .chain(after.keys())
        .filter(|p| before.get(*p) != after.get(*p))
        .map(|p| format!("{p}: {:?} then {:?}", before.get(p), after.get(p)))
        .collect();
    assert!(
        diffs.is_empty(),
        "the rotated stack differs:\n{}",
        diffs.join("\n")
    );
    assert_eq!(after_links, links, "a hard link stays one file");
    drop(fs);
    let upper2: Vec<_> = fs::read_dir(&s.upper).unwrap().collect();
    assert!(
        upper2.is_empty(),
        "reading wrote to the new upper: {upper2:?}"
    );
    s.assert_lowers_untouched();

    if !is_root() {
        return;
    }
    let extra = if userxattr {
        "userxattr"
    } else {
        "redirect_dir=follow"
    };
    let k = common::mount_kernel(&s.lowers, &s.t.path().join("kernel"), extra);
    let (kernel, kernel_links) = seen_mounted(&k.dir);
    let diffs: Vec<String> = before
        .keys()
        .chain(kernel.keys())
        .filter(|p| before.get(*p) != kernel.get(*p))
        .map(|p| {
            format!(
                "{p}: layerfs {:?}, kernel {:?}",
                before.get(p),
                kernel.get(p)
            )
        })
        .collect();
    assert!(
        diffs.is_empty(),
        "kernel overlayfs reads the rotated stack otherwise:\n{}",
        diffs.join("\n")
    );
    assert_eq!(kernel_links, links);
}
