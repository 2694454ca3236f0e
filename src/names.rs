//! Operations that create and remove names: create, mknod, mkdir,
//! symlink, link, unlink and rmdir, with kernel overlayfs' on-disk results:
//! whiteouts where a lower name must stay hidden, opaque directories where
//! a new directory replaces a whiteout, and hard links of lower files kept
//! through the index. Rename lives in `rename`, the writing of whiteouts
//! and marks in `upper_write`.
//!
//! The VFS holds the parent directories' locks around each of these calls,
//! so two name operations never race inside one directory.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use fuser::FileAttr;

use crate::ids::{FileHandle, NodeId, RealKey};
use crate::inode::{Inode, InodeState, RealEntry};
use crate::layer_read::UpperSlot;
use crate::lookup::check_name;
use crate::numbering::{Holder, Lineage};
use crate::overlay::{errno, LayerFs};
use crate::resolve::Resolved;
use crate::sys;
use crate::upper_write::make_oci_marker;
use crate::whiteout::{self};
use crate::workdir::Staged;

/// Who a new object belongs to.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// An object [`LayerFs::place`] just made: an O_PATH fd of it, and its
/// attributes when nothing has changed them since they were read.
pub(crate) struct Made {
    path: OwnedFd,
    st: Option<sys::Stat>,
}

/// Decodes the 32-bit device number FUSE carries (`new_decode_dev`).
fn decode_rdev(rdev: u32) -> u64 {
    let major = (rdev & 0xfff00) >> 8;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    libc::makedev(major, minor)
}

impl LayerFs {
    /// Puts a new object at `name` in `parent`: built by `build` directly
    /// in the upper directory, or — over a whiteout — in the work directory,
    /// given its owner (and an opaque mark, for a directory) and exchanged
    /// with the whiteout in one rename.
    pub(crate) fn place(
        &self,
        parent: &Arc<Inode>,
        name: &OsStr,
        is_dir: bool,
        owner: Option<Owner>,
        mode: Option<u32>,
        build: impl FnOnce(BorrowedFd<'_>, &OsStr) -> io::Result<Option<OwnedFd>>,
    ) -> io::Result<(Option<OwnedFd>, Made)> {
        check_name(name)?;
        if whiteout::is_oci_marker(name.as_bytes()) {
            // Such a name would read back as a marker, not as the object.
            return Err(errno(libc::EINVAL));
        }
        let up = self.upper_ctx()?;
        let pu = self.upper_dir(parent)?;
        parent.dir_changed();
        // Owner and mode are set only where the creating call left them
        // otherwise (the daemon's own ids, its umask, a setgid bit the
        // kernel dropped): each change is an inode update in the upper's
        // journal, and most new objects need neither.
        let finish = |dir: BorrowedFd<'_>, n: &OsStr| -> io::Result<Made> {
            let fd = sys::openat(dir, n, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
            let st = sys::fstat(fd.as_fd())?;
            let mut changed = false;
            if let Some(o) = owner {
                if (st.st_uid, st.st_gid) != (o.uid, o.gid) {
                    self.chown_upper(fd.as_fd(), o.uid, o.gid)?;
                    changed = true;
                }
            }
            if let Some(m) = mode {
                // A chown may have cleared setuid/setgid bits: set after it.
                if changed || st.st_mode & 0o7777 != m {
                    sys::fchmod_fd(fd.as_fd(), m)?;
                    changed = true;
                }
            }
            Ok(Made {
                path: fd,
                st: (!changed).then_some(st),
            })
        };
        match self.upper_slot(&pu, name)? {
            UpperSlot::Entry(..) => Err(errno(libc::EEXIST)),
            UpperSlot::Empty => {
                let naming = up.renames.name_guard();
                let fd = build(pu.fd.get()?.as_fd(), name)?;
                drop(naming);
                match finish(pu.fd.get()?.as_fd(), name) {
                    Ok(path) => Ok((fd, path)),
                    Err(e) => {
                        let flag = if is_dir { libc::AT_REMOVEDIR } else { 0 };
                        let _ = sys::unlinkat(pu.fd.get()?.as_fd(), name, flag);
                        Err(e)
                    }
                }
            }
            UpperSlot::Whiteout if up.oci_whiteouts => {
                // Made in place, then (a directory) marked opaque, then the
                // marker goes: a crash in between leaves the new object
                // shown (a directory beside its marker counts as opaque).
                let fd = build(pu.fd.get()?.as_fd(), name)?;
                let mut made = finish(pu.fd.get()?.as_fd(), name)?;
                if is_dir {
                    make_oci_marker(made.path.as_fd(), OsStr::from_bytes(whiteout::OCI_OPAQUE))?;
                }
                self.remove_whiteout(&pu, name)?;
                made.st = None;
                Ok((fd, made))
            }
            UpperSlot::Whiteout => {
                let staged = Staged::new(&up.work);
                let fd = build(up.work.fd(), &staged.name)?;
                let mut made = finish(up.work.fd(), &staged.name)?;
                if is_dir {
                    sys::setxattr_fd(made.path.as_fd(), &up.ns.name("opaque"), b"y", 0)?;
                }
                self.exchange_into_place(staged, &pu, name)?;
                // The rename moved its ctime.
                made.st = None;
                Ok((fd, made))
            }
        }
    }

    /// The inode of an object this mount just created in the upper layer:
    /// nothing below can merge with it (a lower name there was hidden, or
    /// the kernel would not have asked to create it), so it is built from
    /// its one real object without a full lookup. Takes a lookup reference.
    pub(crate) fn new_upper_inode(
        &self,
        parent: NodeId,
        name: &OsStr,
        made: Made,
    ) -> io::Result<(Arc<Inode>, FileAttr)> {
        let up = self.upper_ctx()?;
        let Made { path, st } = made;
        let st = match st {
            Some(st) => st,
            None => sys::fstat(path.as_fd())?,
        };
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        // A new object is numbered by its own identity. A number remembered
        // for that identity belonged to a deleted object whose inode the
        // upper filesystem has reused; it must not follow the new one
        // (whose number would then change at the next mount).
        let number = self
            .numbering
            .number(&self.layers(), RealKey::of(&st), Lineage::New, |n| {
                match self.inodes.get(NodeId::of_number(n)) {
                    // Whatever the kernel still holds under this number is
                    // not the object just made: it was deleted (perhaps
                    // behind the node's back, as whiteouts inside a removed
                    // directory are), so it keeps the number and the new
                    // object gets a fresh one.
                    Some(old) => {
                        // Unless it lives on as another object: a node
                        // whose part was replaced by a merged layer's
                        // (`restack`) keeps the number of an identity the
                        // removed layer freed for reuse.
                        if !shows_another_object(&old, &st) {
                            old.mark_unlinked();
                        }
                        Holder::Other
                    }
                    None => Holder::Free,
                }
            });
        let attr = crate::attr::from_stat(&st, number, false);
        // Where it is, for reaching it by name: found before the table's
        // entry is locked (its parent lives in the same table).
        let at = self
            .reaches_by_name(&path, is_dir)
            .then(|| self.inode(parent).ok())
            .flatten()
            .map(|dir| dir.top())
            .filter(|dir| self.is_upper(dir.layer))
            .and_then(|dir| dir.fd.get().ok())
            .map(|dir_fd| (dir_fd, Arc::<OsStr>::from(name)));
        let inode = self.inodes.lookup_insert(NodeId::of_number(number), || {
            Inode::new(
                NodeId::of_number(number),
                number,
                is_dir,
                InodeState::new(
                    vec![RealEntry {
                        layer: up.idx,
                        fd: self.upper_ref(path, is_dir, || at),
                        marks: Default::default(),
                    }],
                    parent,
                    name,
                ),
            )
        });
        Ok((inode, attr))
    }

    /// Owner of a new object: the caller, with the group of a setgid parent.
    pub(crate) fn owner_for(
        &self,
        parent: &Inode,
        uid: u32,
        gid: u32,
    ) -> io::Result<(Owner, bool)> {
        let pattr = self.attr_of(parent)?;
        let sgid = pattr.perm as u32 & libc::S_ISGID != 0;
        Ok((
            Owner {
                uid,
                gid: if sgid { pattr.gid } else { gid },
            },
            sgid,
        ))
    }

    pub fn create(
        &self,
        parent: NodeId,
        name: &OsStr,
        mode: u32,
        flags: i32,
        uid: u32,
        gid: u32,
    ) -> io::Result<(Arc<Inode>, FileAttr, FileHandle)> {
        let dir = self.inode(parent)?;
        let (owner, _) = self.owner_for(&dir, uid, gid)?;
        let perm = mode & 0o7777;
        let keep = libc::O_ACCMODE | libc::O_APPEND | libc::O_NONBLOCK;
        let (fd, path) = self.place(&dir, name, false, Some(owner), Some(perm), |at, n| {
            let oflags = (flags & keep) | libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY;
            sys::openat(at, n, oflags, perm).map(Some)
        })?;
        dir.dir_changed();
        let (inode, attr) = self.new_upper_inode(parent, name, path)?;
        // `place` hands back what the closure made: always an fd here.
        let fd = fd.ok_or_else(|| {
            log::error!("create {name:?}: no fd from the open that made it");
            errno(libc::EIO)
        })?;
        let again = (flags & keep) | libc::O_NOCTTY;
        let fh = self.add_file(Arc::new(fd), false, Arc::clone(&inode), again);
        Ok((inode, attr, fh))
    }

    pub fn mknod(
        &self,
        parent: NodeId,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        uid: u32,
        gid: u32,
    ) -> io::Result<(Arc<Inode>, FileAttr)> {
        let dev = decode_rdev(rdev);
        if whiteout::is_whiteout_dev(mode, dev) {
            // As kernel overlayfs: a char 0/0 device is the whiteout, and
            // would vanish the moment it was made.
            return Err(errno(libc::EPERM));
        }
        let dir = self.inode(parent)?;
        let (owner, _) = self.owner_for(&dir, uid, gid)?;
        let room = crate::capacity::reserve(self.capacity(), crate::capacity::BLOCK)?;
        let (_, path) = self.place(
            &dir,
            name,
            false,
            Some(owner),
            Some(mode & 0o7777),
            |at, n| sys::mknodat(at, n, mode, dev).map(|_| None),
        )?;
        dir.dir_changed();
        room.keep();
        self.new_upper_inode(parent, name, path)
    }

    pub fn mkdir(
        &self,
        parent: NodeId,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> io::Result<(Arc<Inode>, FileAttr)> {
        let dir = self.inode(parent)?;
        let (owner, sgid) = self.owner_for(&dir, uid, gid)?;
        let mut perm = mode & 0o7777;
        if sgid {
            perm |= libc::S_ISGID;
        }
        let room = crate::capacity::reserve(self.capacity(), crate::capacity::BLOCK)?;
        let (_, path) = self.place(&dir, name, true, Some(owner), Some(perm), |at, n| {
            sys::mkdirat(at, n, perm).map(|_| None)
        })?;
        room.keep();
        dir.dir_changed();
        self.new_upper_inode(parent, name, path)
    }

    pub fn symlink(
        &self,
        parent: NodeId,
        name: &OsStr,
        target: &OsStr,
        uid: u32,
        gid: u32,
    ) -> io::Result<(Arc<Inode>, FileAttr)> {
        let dir = self.inode(parent)?;
        let (owner, _) = self.owner_for(&dir, uid, gid)?;
        let room = crate::capacity::reserve(self.capacity(), crate::capacity::BLOCK)?;
        let (_, path) = self.place(&dir, name, false, Some(owner), None, |at, n| {
            sys::symlinkat(target, at, n).map(|_| None)
        })?;
        room.keep();
        dir.dir_changed();
        self.new_upper_inode(parent, name, path)
    }

    pub fn link(
        &self,
        ino: NodeId,
        newparent: NodeId,
        newname: &OsStr,
    ) -> io::Result<(Arc<Inode>, FileAttr)> {
        let inode = self.inode(ino)?;
        if inode.is_dir() {
            return Err(errno(libc::EPERM));
        }
        self.copy_up(&inode)?;
        inode.hold_upper()?;
        let src = inode.top();
        let dir = self.inode(newparent)?;
        self.place(&dir, newname, false, None, None, |at, n| {
            sys::link_fd(src.fd.get()?.as_fd(), at, n).map(|_| None)
        })?;
        dir.dir_changed();
        self.lookup(newparent, newname)
    }

    pub fn unlink(&self, parent: NodeId, name: &OsStr) -> io::Result<()> {
        let dir = self.inode(parent)?;
        let pu = self.upper_dir(&dir)?;
        dir.dir_changed();
        // The name is looked at directly, layer by layer, rather than
        // through a full lookup of the child: the kernel checked it exists
        // and is not a directory.
        match self.upper_slot(&pu, name)? {
            UpperSlot::Entry(fd, st) => {
                let below = self.lower_positive(&dir, name)?;
                if below {
                    self.replace_with_whiteout(&pu, name, &dir)?;
                } else {
                    sys::unlinkat(pu.fd.get()?.as_fd(), name, 0)?;
                }
                // An unlinked only name needs no second look: no link can
                // have been added meanwhile, as the kernel holds the
                // object's inode lock across both link and unlink, and
                // nothing else writes the upper.
                let gone = (!below && st.st_nlink <= 1)
                    || sys::fstat(fd.as_fd())
                        .map(|s| s.st_nlink == 0)
                        .unwrap_or(true);
                if let Some(i) = self.live_inode_of(&st) {
                    i.name_gone(parent, name);
                }
                if gone {
                    crate::capacity::credit_object(self.capacity(), &st);
                    self.mark_gone(&st, fd);
                }
            }
            UpperSlot::Empty | UpperSlot::Whiteout => {
                let lowers = self.lower_reals(&dir);
                let hit = match self.resolve_in(&lowers, name)? {
                    Resolved::Absent => return Err(errno(libc::ENOENT)),
                    Resolved::NonDir(h) => h,
                    Resolved::Dir(_) => return Err(errno(libc::EISDIR)),
                };
                if hit.st.st_nlink > 1 && hit.st.st_mode & libc::S_IFMT == libc::S_IFREG {
                    let child = self.child(parent, name)?;
                    if self.index_before_removal(&child)? {
                        // Now in the index (and perhaps in the upper under
                        // this very name): remove it as such.
                        return self.unlink(parent, name);
                    }
                    if child.nlink_delta().is_some() && self.is_upper(child.top().layer) {
                        // As kernel overlayfs (`ovl_nlink_start`): the name
                        // is linked up first, so that its removal takes one
                        // upper link and one shown link together, and a
                        // crash in between leaves the count right.
                        self.link_up(&child, &pu, name)?;
                        return self.unlink(parent, name);
                    }
                }
                self.make_whiteout(pu.fd.get()?.as_fd(), name, &dir)?;
                // One name of a copied-up lower hardlink set (kept without
                // an index) went away.
                if hit.st.st_nlink > 1 {
                    if let Some(i) = self.live_inode_of(&hit.st) {
                        i.name_gone(parent, name);
                    }
                }
            }
        }
        dir.dir_changed();
        Ok(())
    }

    /// Before a name of a lower file with several names is removed or
    /// renamed over, the file is copied up into the index, as kernel
    /// overlayfs does with `index=on` (`ovl_nlink_start`): the index entry
    /// then carries the link count (`overlay.nlink`) the other names show.
    /// Returns whether it copied `inode` up. Only a file not copied up yet
    /// is concerned: its name then lives below and nowhere above.
    pub(crate) fn index_before_removal(&self, inode: &Arc<Inode>) -> io::Result<bool> {
        if inode.is_dir() || self.upper_ctx()?.work.index_fd().is_none() {
            return Ok(false);
        }
        let top = inode.top();
        if self.is_upper(top.layer) {
            return Ok(false);
        }
        let st = sys::fstat(top.fd.get()?.as_fd())?;
        if st.st_nlink < 2 || st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Ok(false);
        }
        self.copy_up(inode)?;
        Ok(true)
    }

    /// The live inode whose number comes from the real object `st`, if the
    /// kernel holds one.
    pub(crate) fn live_inode_of(&self, st: &sys::Stat) -> Option<Arc<Inode>> {
        let n = self.number_for(RealKey::of(st));
        self.inodes.get(NodeId::of_number(n))
    }

    /// The last name of the upper object `st` is gone: its number must not
    /// be reused while the kernel holds it (only objects numbered by their
    /// own upper inode can meet a reused inode number).
    pub(crate) fn mark_gone(&self, st: &sys::Stat, fd: OwnedFd) {
        let Some(i) = self.live_inode_of(st) else {
            return;
        };
        let Some(r) = i.state().reals.first().cloned() else {
            return;
        };
        if !self.is_upper(r.layer) || i.is_dir() {
            return;
        }
        let same = match &r.fd {
            // A handle no longer opens an unlinked file, nor a name.
            crate::inode::RealFd::Handle { handle, .. } => {
                sys::name_to_handle(fd.as_fd()).is_ok_and(|h| h == **handle)
            }
            crate::inode::RealFd::Named(n) => n.key() == (st.st_dev, st.st_ino),
            other => other
                .get()
                .and_then(|f| sys::fstat(f.as_fd()))
                .is_ok_and(|t| t.st_ino == st.st_ino && t.st_dev == st.st_dev),
        };
        if same {
            // Keep the fd for as long as the kernel holds the inode (an
            // open file's stat), and never give its number to a new object.
            i.unlinked_holding(Arc::new(fd));
        }
    }

    pub fn rmdir(&self, parent: NodeId, name: &OsStr) -> io::Result<()> {
        let dir = self.inode(parent)?;
        let child = self.child(parent, name)?;
        if !child.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        // Only "." and "..": empty.
        if self.current_listing(&child)?.1.len() > 2 {
            return Err(errno(libc::ENOTEMPTY));
        }
        let pu = self.upper_dir(&dir)?;
        let lower = self.lower_positive(&dir, name)?;
        dir.dir_changed();
        match self.upper_slot(&pu, name)? {
            UpperSlot::Entry(_, st) if lower => {
                self.replace_with_whiteout(&pu, name, &dir)?;
                crate::capacity::credit_object(self.capacity(), &st);
            }
            UpperSlot::Entry(_, st) => {
                self.remove_upper(&pu, name)?;
                crate::capacity::credit_object(self.capacity(), &st);
            }
            UpperSlot::Empty if lower => self.make_whiteout(pu.fd.get()?.as_fd(), name, &dir)?,
            UpperSlot::Empty | UpperSlot::Whiteout => return Err(errno(libc::ENOENT)),
        }
        dir.dir_changed();
        child.mark_unlinked();
        Ok(())
    }

    /// After a name of `inode` went away: if that was its last link, its
    /// number must not be reused while the kernel still holds it.
    /// `held` is an fd of its upper object taken before the change (a
    /// file handle no longer opens an unlinked file).
    pub(crate) fn note_removed(&self, inode: &Inode, held: Option<Arc<OwnedFd>>) {
        let top = inode.top();
        if !self.is_upper(top.layer) {
            return;
        }
        let Some(fd) = held.or_else(|| top.fd.get().ok()) else {
            inode.mark_unlinked();
            return;
        };
        match sys::fstat(fd.as_fd()) {
            Ok(st) if st.st_nlink > 0 => {}
            _ => inode.unlinked_holding(fd),
        }
    }
}

/// Whether `node`'s top real object is there and is not `st`'s.
fn shows_another_object(node: &Inode, st: &sys::Stat) -> bool {
    let top = node.top();
    top.fd
        .get()
        .and_then(|fd| sys::fstat(fd.as_fd()))
        .is_ok_and(|have| (have.st_dev, have.st_ino) != (st.st_dev, st.st_ino))
}
