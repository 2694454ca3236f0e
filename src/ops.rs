//! The filesystem operations, one plain function each, returning
//! `io::Result`. `fs.rs` converts FUSE arguments, calls these and replies.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use fuser::{FileAttr, FileType};

use crate::attr;
use crate::dir::{self, LayerEntry};
use crate::inode::{Inode, InodeState, InodeTable, RealEntry, ROOT_INO};
use crate::layers::{LayerIdx, LayerStack};
use crate::lookup::{self, Probe, Resolved};
use crate::sys::{self, Stat};
use crate::whiteout::{self, DirMarks};

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// Tunables fixed at mount time.
#[derive(Debug, Clone)]
pub struct FsOptions {
    /// How long the kernel may cache attributes and entries.
    pub timeout: Duration,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            timeout: Duration::from_secs(86400),
        }
    }
}

/// An open regular file.
#[derive(Debug)]
pub struct OpenFile {
    pub fd: OwnedFd,
}

/// One entry of an open directory's snapshot.
#[derive(Debug, Clone)]
pub struct DirEntryOut {
    pub name: OsString,
    pub kind: FileType,
    pub ino: u64,
}

/// An open directory: the merged listing taken at opendir, served by
/// offset (entry i has offset i + 1), as POSIX wants for a stable readdir.
#[derive(Debug)]
pub struct OpenDir {
    pub ino: u64,
    pub entries: Vec<DirEntryOut>,
}

/// What the filesystem found for one layer during a lookup.
struct Hit {
    layer: LayerIdx,
    fd: OwnedFd,
    st: Stat,
    marks: DirMarks,
}

/// The whole filesystem state, shared by every worker thread.
#[derive(Debug)]
pub struct LayerFs {
    pub layers: LayerStack,
    pub inodes: InodeTable,
    pub opts: FsOptions,
    files: DashMap<u64, Arc<OpenFile>>,
    dirs: DashMap<u64, Arc<OpenDir>>,
    next_fh: AtomicU64,
}

impl LayerFs {
    /// Builds the filesystem over an opened layer stack: the root inode is
    /// the merge of every layer's root directory.
    pub fn new(layers: LayerStack, opts: FsOptions) -> io::Result<LayerFs> {
        let mut reals = Vec::with_capacity(layers.len());
        for (idx, layer) in layers.iter() {
            let fd = sys::openat(layer.root.as_fd(), OsStr::new("."), libc::O_PATH, 0)?;
            let marks = read_dir_marks(&fd)?;
            reals.push(RealEntry {
                layer: idx,
                fd: Arc::new(fd),
                marks,
            });
        }
        if reals.is_empty() {
            return Err(errno(libc::EINVAL));
        }
        let top = sys::fstat(reals[0].fd.as_fd())?;
        let st_ino = layers.xino(top.st_dev, top.st_ino).unwrap_or(ROOT_INO);
        let root = Inode::new(
            ROOT_INO,
            st_ino,
            true,
            InodeState {
                reals,
                parent: ROOT_INO,
                name: OsString::new(),
            },
        );
        let inodes = InodeTable::new(root, layers.fallback_base());
        Ok(LayerFs {
            layers,
            inodes,
            opts,
            files: DashMap::new(),
            dirs: DashMap::new(),
            next_fh: AtomicU64::new(1),
        })
    }

    fn inode(&self, ino: u64) -> io::Result<Arc<Inode>> {
        self.inodes.get(ino).ok_or_else(|| errno(libc::ESTALE))
    }

    /// The number shown for a real object of identity (dev, ino).
    fn number_for(&self, dev: u64, ino: u64) -> u64 {
        match self.layers.xino(dev, ino) {
            Some(n) if n != ROOT_INO && n != 0 => n,
            _ => self.inodes.fallback_number(dev, ino),
        }
    }

    fn attr_of(&self, inode: &Inode) -> io::Result<FileAttr> {
        let (top, merged) = {
            let s = inode.state.read();
            (s.reals[0].fd.clone(), s.reals.len() > 1)
        };
        let st = sys::fstat(top.as_fd())?;
        Ok(attr::from_stat(&st, inode.st_ino, merged))
    }

    // ---- lookup -------------------------------------------------------

    /// Looks `name` up in directory `parent`; on success the returned inode
    /// carries one more lookup reference, which the kernel will forget.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> io::Result<(Arc<Inode>, FileAttr)> {
        check_name(name)?;
        let dir = self.inode(parent)?;
        if !dir.is_dir {
            return Err(errno(libc::ENOTDIR));
        }
        if whiteout::is_oci_marker(name.as_bytes()) {
            return Err(errno(libc::ENOENT));
        }
        let reals = dir.reals();
        let n = reals.len();
        let probes = reals
            .iter()
            .enumerate()
            .map(|(pos, r)| probe_layer(r, name, pos + 1 < n));
        let hits = match lookup::resolve(probes)? {
            Resolved::Absent => return Err(errno(libc::ENOENT)),
            Resolved::NonDir(h) => vec![h],
            Resolved::Dir(hs) => hs,
        };
        let top = &hits[0].st;
        let is_dir = (top.st_mode & libc::S_IFMT) == libc::S_IFDIR;
        let number = self.number_for(top.st_dev, top.st_ino);
        let attr = attr::from_stat(top, number, hits.len() > 1);
        let inode = self.inodes.lookup_insert(number, || {
            let reals = hits
                .into_iter()
                .map(|h| RealEntry {
                    layer: h.layer,
                    fd: Arc::new(h.fd),
                    marks: h.marks,
                })
                .collect();
            Inode::new(
                number,
                number,
                is_dir,
                InodeState {
                    reals,
                    parent,
                    name: name.to_os_string(),
                },
            )
        });
        Ok((inode, attr))
    }

    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
    }

    pub fn getattr(&self, ino: u64) -> io::Result<FileAttr> {
        let inode = self.inode(ino)?;
        self.attr_of(&inode)
    }

    pub fn readlink(&self, ino: u64) -> io::Result<Vec<u8>> {
        let inode = self.inode(ino)?;
        sys::readlink_fd(inode.top().fd.as_fd())
    }

    // ---- files --------------------------------------------------------

    /// Opens a regular file. Returns the handle and whether its content is
    /// immutable (a lower file), so the kernel may keep its page cache.
    pub fn open(&self, ino: u64, flags: i32) -> io::Result<(u64, bool)> {
        let inode = self.inode(ino)?;
        let top = inode.top();
        let writable = self.layers.layer(top.layer).writable;
        let wants_write = (flags & libc::O_ACCMODE) != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if wants_write && !writable {
            return Err(errno(libc::EROFS));
        }
        let keep = libc::O_ACCMODE | libc::O_APPEND | libc::O_NONBLOCK | libc::O_TRUNC;
        let fd = sys::reopen(top.fd.as_fd(), (flags & keep) | libc::O_NOCTTY)?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.files.insert(fh, Arc::new(OpenFile { fd }));
        Ok((fh, !writable))
    }

    fn file(&self, fh: u64) -> io::Result<Arc<OpenFile>> {
        self.files
            .get(&fh)
            .map(|f| Arc::clone(f.value()))
            .ok_or_else(|| errno(libc::EBADF))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let file = self.file(fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match sys::pread(file.fd.as_fd(), &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    pub fn release(&self, fh: u64) {
        self.files.remove(&fh);
    }

    // ---- directories --------------------------------------------------

    pub fn opendir(&self, ino: u64) -> io::Result<u64> {
        let inode = self.inode(ino)?;
        if !inode.is_dir {
            return Err(errno(libc::ENOTDIR));
        }
        let (reals, parent) = {
            let s = inode.state.read();
            (s.reals.clone(), s.parent)
        };
        let mut listings = Vec::with_capacity(reals.len());
        for r in &reals {
            listings.push(self.list_layer_dir(r)?);
        }
        let merged = dir::merge_listings(listings);
        let parent_ino = if ino == ROOT_INO {
            ROOT_INO
        } else {
            self.inodes
                .get(parent)
                .map(|p| p.st_ino)
                .unwrap_or(inode.st_ino)
        };
        let mut entries = Vec::with_capacity(merged.len() + 2);
        entries.push(DirEntryOut {
            name: ".".into(),
            kind: FileType::Directory,
            ino: inode.st_ino,
        });
        entries.push(DirEntryOut {
            name: "..".into(),
            kind: FileType::Directory,
            ino: parent_ino,
        });
        for e in merged {
            let dev = self.layers.layer(reals[e.layer_pos].layer).dev;
            entries.push(DirEntryOut {
                ino: self.number_for(dev, e.d_ino),
                kind: attr::file_type_of_dtype(e.d_type),
                name: OsString::from_vec(e.name),
            });
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.insert(fh, Arc::new(OpenDir { ino, entries }));
        Ok(fh)
    }

    /// Reads one layer's part of a directory and classifies each entry.
    fn list_layer_dir(&self, r: &RealEntry) -> io::Result<Vec<LayerEntry>> {
        let dfd = sys::openat(
            r.fd.as_fd(),
            OsStr::new("."),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )?;
        let raw = sys::read_dir_fd(dfd.as_fd())?;
        let mut out = Vec::with_capacity(raw.len());
        for e in raw {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            if whiteout::is_oci_marker(&e.name) {
                if let Some(target) = whiteout::oci_whiteout_target(&e.name) {
                    out.push(LayerEntry::Whiteout {
                        name: target.to_vec(),
                    });
                }
                continue;
            }
            let needs_stat = e.d_type == libc::DT_UNKNOWN
                || e.d_type == libc::DT_CHR
                || (r.marks.xwhiteouts && e.d_type == libc::DT_REG);
            let mut d_type = e.d_type;
            if needs_stat {
                let st = match sys::lstatat(r.fd.as_fd(), OsStr::from_bytes(&e.name)) {
                    Ok(st) => st,
                    // Gone since getdents: skip it, as a later lookup would.
                    Err(err) if err.raw_os_error() == Some(libc::ENOENT) => continue,
                    Err(err) => return Err(err),
                };
                d_type = attr::dtype_of_mode(st.st_mode);
                if whiteout::is_chardev_whiteout(&st)
                    || (r.marks.xwhiteouts
                        && whiteout::may_be_xattr_whiteout(&st)
                        && self.is_xattr_whiteout(r, &e.name)?)
                {
                    out.push(LayerEntry::Whiteout { name: e.name });
                    continue;
                }
            }
            out.push(LayerEntry::Visible {
                name: e.name,
                d_type,
                d_ino: e.ino,
            });
        }
        Ok(out)
    }

    fn is_xattr_whiteout(&self, r: &RealEntry, name: &[u8]) -> io::Result<bool> {
        let fd = sys::openat(
            r.fd.as_fd(),
            OsStr::from_bytes(name),
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
        )?;
        has_xattr_whiteout(&fd)
    }

    fn open_dir(&self, fh: u64) -> io::Result<Arc<OpenDir>> {
        self.dirs
            .get(&fh)
            .map(|d| Arc::clone(d.value()))
            .ok_or_else(|| errno(libc::EBADF))
    }

    /// The entries of an open directory from `offset` on.
    pub fn readdir(&self, fh: u64, offset: u64) -> io::Result<(Arc<OpenDir>, usize)> {
        let d = self.open_dir(fh)?;
        let start = (offset as usize).min(d.entries.len());
        Ok((d, start))
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.remove(&fh);
    }

    // ---- metadata -----------------------------------------------------

    pub fn statfs(&self) -> io::Result<libc::statvfs> {
        let idx = self.layers.upper().unwrap_or(LayerIdx(0));
        sys::fstatvfs(self.layers.root_fd(idx))
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> io::Result<Vec<u8>> {
        if whiteout::is_private_xattr(name.as_bytes()) {
            return Err(errno(libc::ENODATA));
        }
        let inode = self.inode(ino)?;
        let c = sys::cstr(name)?;
        sys::getxattr_fd(inode.top().fd.as_fd(), &c)
    }

    pub fn listxattr(&self, ino: u64) -> io::Result<Vec<u8>> {
        let inode = self.inode(ino)?;
        let list = sys::listxattr_fd(inode.top().fd.as_fd())?;
        Ok(whiteout::public_xattr_names(&list))
    }

    /// access(2) for mounts without default_permissions: the classic
    /// owner/group/other check against the merged attributes.
    pub fn access(&self, ino: u64, mask: i32, uid: u32, gid: u32) -> io::Result<()> {
        let attr = self.getattr(ino)?;
        if mask == libc::F_OK {
            return Ok(());
        }
        if mask & libc::W_OK != 0 && self.layers.upper().is_none() {
            return Err(errno(libc::EROFS));
        }
        let perm = attr.perm as i32;
        if uid == 0 {
            let any_x = perm & 0o111 != 0 || attr.kind == FileType::Directory;
            return if mask & libc::X_OK == 0 || any_x {
                Ok(())
            } else {
                Err(errno(libc::EACCES))
            };
        }
        let bits = if uid == attr.uid {
            (perm >> 6) & 7
        } else if gid == attr.gid {
            (perm >> 3) & 7
        } else {
            perm & 7
        };
        if mask & bits == mask {
            Ok(())
        } else {
            Err(errno(libc::EACCES))
        }
    }
}

/// Names the kernel could send that must never reach a layer.
fn check_name(name: &OsStr) -> io::Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(errno(libc::EINVAL));
    }
    if b.len() > 255 {
        return Err(errno(libc::ENAMETOOLONG));
    }
    Ok(())
}

/// What layer entry `r` (a directory) holds under `name`. `more_below` says
/// whether any contributing layer lies below, which is when OCI whiteouts and
/// opaque markers matter.
fn probe_layer(r: &RealEntry, name: &OsStr, more_below: bool) -> io::Result<Probe<Hit>> {
    let fd = match sys::openat(r.fd.as_fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            // Absent here: an OCI `.wh.NAME` beside it still hides it below.
            return Ok(if more_below && oci_sibling_exists(r, name.as_bytes())? {
                Probe::Whiteout
            } else {
                Probe::Absent
            });
        }
        Err(e) => return Err(e),
    };
    let st = sys::fstat(fd.as_fd())?;
    if whiteout::is_chardev_whiteout(&st)
        || (r.marks.xwhiteouts && whiteout::may_be_xattr_whiteout(&st) && has_xattr_whiteout(&fd)?)
    {
        return Ok(Probe::Whiteout);
    }
    if (st.st_mode & libc::S_IFMT) != libc::S_IFDIR {
        return Ok(Probe::NonDir(Hit {
            layer: r.layer,
            fd,
            st,
            marks: DirMarks::default(),
        }));
    }
    let mut marks = read_dir_marks(&fd)?;
    if more_below && !marks.opaque {
        // OCI: `.wh..wh..opq` inside, or `.wh.NAME` beside a re-added dir.
        marks.opaque =
            exists(&fd, whiteout::OCI_OPAQUE)? || oci_sibling_exists(r, name.as_bytes())?;
    }
    let opaque = marks.opaque;
    Ok(Probe::Dir(
        Hit {
            layer: r.layer,
            fd,
            st,
            marks,
        },
        opaque,
    ))
}

fn exists(dir: &OwnedFd, name: &[u8]) -> io::Result<bool> {
    match sys::lstatat(dir.as_fd(), OsStr::from_bytes(name)) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

fn oci_sibling_exists(r: &RealEntry, name: &[u8]) -> io::Result<bool> {
    let wh = whiteout::oci_whiteout_name(name);
    if wh.len() > 255 {
        return Ok(false);
    }
    match sys::lstatat(r.fd.as_fd(), OsStr::from_bytes(&wh)) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads a directory's `overlay.opaque` mark (trusted or user namespace).
/// One listxattr in the common case of a directory without xattrs.
pub fn read_dir_marks(fd: &OwnedFd) -> io::Result<DirMarks> {
    let list = match sys::listxattr_fd(fd.as_fd()) {
        Ok(l) => l,
        // A layer on a filesystem without xattrs has no marks.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(DirMarks::default()),
        Err(e) => return Err(e),
    };
    if !whiteout::has_overlay_xattr(&list, b"opaque") {
        return Ok(DirMarks::default());
    }
    let mut marks = DirMarks::default();
    for ns in [whiteout::XattrNs::Trusted, whiteout::XattrNs::User] {
        match sys::getxattr_fd(fd.as_fd(), &ns.name("opaque")) {
            Ok(v) => marks = marks.merge(DirMarks::from_opaque_value(&v)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA) | Some(libc::ENOTSUP)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(marks)
}

/// True when a file carries `overlay.whiteout` in either namespace.
fn has_xattr_whiteout(fd: &OwnedFd) -> io::Result<bool> {
    for ns in [whiteout::XattrNs::Trusted, whiteout::XattrNs::User] {
        let name: CString = ns.name("whiteout");
        match sys::getxattr_fd(fd.as_fd(), &name) {
            Ok(_) => return Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA) | Some(libc::ENOTSUP)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}
