//! Tree snapshots, to compare a layerfs mount with kernel overlayfs and to
//! prove a layer was not modified.
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What a snapshot records of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub size: u64,
    pub mtime: (i64, i64),
    pub rdev: u64,
    pub ino: u64,
    pub content: Option<Vec<u8>>,
    pub target: Option<Vec<u8>>,
    /// user.* xattrs, the overlay private ones excluded.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Which fields a comparison looks at.
#[derive(Debug, Clone, Copy)]
pub struct Compare {
    pub ino: bool,
    pub nlink: bool,
    pub mtime: bool,
    /// Directory mtimes (which differ in converted copies of a layer).
    pub dir_mtime: bool,
}

impl Compare {
    pub const ALL: Compare = Compare {
        ino: true,
        nlink: true,
        mtime: true,
        dir_mtime: true,
    };
    pub const CONTENT: Compare = Compare {
        ino: false,
        nlink: false,
        mtime: true,
        dir_mtime: false,
    };
}

fn kind_of(ft: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "chardev"
    } else {
        "blockdev"
    }
}

pub fn user_xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let Ok(fd) = layerfs::sys::open_path(p, libc::O_PATH | libc::O_NOFOLLOW) else {
        return out;
    };
    let list = layerfs::sys::listxattr_fd(std::os::fd::AsFd::as_fd(&fd)).unwrap_or_default();
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if !name.starts_with(b"user.") || name.starts_with(b"user.overlay.") {
            continue;
        }
        let c = std::ffi::CString::new(name).unwrap();
        let v = layerfs::sys::getxattr_fd(std::os::fd::AsFd::as_fd(&fd), &c).unwrap_or_default();
        out.insert(name.to_vec(), v);
    }
    out
}

/// Walks `root` without following symlinks.
pub fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, p: &Path, out: &mut BTreeMap<Vec<u8>, Node>) {
    let md = match fs::symlink_metadata(p) {
        Ok(md) => md,
        // Kernel overlayfs lists the whiteouts of a directory that comes
        // from one layer only, but a lookup of them fails: such a ghost is
        // not part of the visible tree (layerfs does not list it at all).
        Err(e) if e.kind() == io::ErrorKind::NotFound && p != root => return,
        Err(e) => panic!("lstat {p:?}: {e}"),
    };
    let kind = kind_of(md.file_type());
    let rel = p
        .strip_prefix(root)
        .unwrap()
        .as_os_str()
        .as_bytes()
        .to_vec();
    let node = Node {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        nlink: md.nlink(),
        size: if kind == "dir" { 0 } else { md.size() },
        mtime: (md.mtime(), md.mtime_nsec()),
        rdev: md.rdev(),
        ino: md.ino(),
        content: (kind == "file")
            .then(|| fs::read(p).unwrap_or_else(|e| panic!("read {p:?}: {e}"))),
        target: (kind == "symlink")
            .then(|| fs::read_link(p).unwrap().as_os_str().as_bytes().to_vec()),
        xattrs: user_xattrs(p),
    };
    out.insert(rel, node);
    if kind == "dir" {
        let mut names: Vec<_> = fs::read_dir(p)
            .unwrap_or_else(|e| panic!("readdir {p:?}: {e}"))
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            walk(root, &p.join(n), out);
        }
    }
}

/// Differences between two snapshots, one line each (empty when equal).
pub fn diff(a: &BTreeMap<Vec<u8>, Node>, b: &BTreeMap<Vec<u8>, Node>, cmp: Compare) -> Vec<String> {
    let mut d = Vec::new();
    let show = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
    for (k, na) in a {
        match b.get(k) {
            None => d.push(format!("only in first: {} {}", show(k), brief(na))),
            Some(nb) => {
                let mut x = na.clone();
                let mut y = nb.clone();
                if !cmp.ino {
                    x.ino = 0;
                    y.ino = 0;
                }
                if !cmp.nlink {
                    x.nlink = 0;
                    y.nlink = 0;
                }
                if !cmp.mtime || (!cmp.dir_mtime && x.kind == "dir") {
                    x.mtime = (0, 0);
                    y.mtime = (0, 0);
                }
                if x != y {
                    let mut xs = format!("{x:?}");
                    let mut ys = format!("{y:?}");
                    xs.truncate(400);
                    ys.truncate(400);
                    d.push(format!(
                        "differs: {}\n  first:  {xs}\n  second: {ys}",
                        show(k)
                    ));
                }
            }
        }
    }
    for (k, nb) in b {
        if !a.contains_key(k) {
            d.push(format!("only in second: {} {}", show(k), brief(nb)));
        }
    }
    d
}

/// A node as a diff line shows it (long contents cut).
fn brief(n: &Node) -> String {
    let mut s = format!("{n:?}");
    s.truncate(300);
    s
}

pub fn assert_same(a: &Path, b: &Path, cmp: Compare) {
    let d = diff(&snapshot(a), &snapshot(b), cmp);
    assert!(d.is_empty(), "trees differ:\n{}", d.join("\n"));
}

/// A byte-exact record of a tree (content, modes, owners, xattrs, times),
/// to prove the lower layers were not modified.
pub fn fingerprint(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    // atime is not recorded; every other field must stay equal.
    snapshot(root)
}
