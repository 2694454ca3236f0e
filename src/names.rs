//! Operations that change names: create, mknod, mkdir, symlink, link,
//! unlink, rmdir and rename, with kernel overlayfs' on-disk results:
//! whiteouts (char 0/0) where a lower name must stay hidden, opaque
//! directories where a new directory replaces a whiteout, and
//! `overlay.redirect` on a directory moved away from its lower parts.
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
use crate::inode::{DirMark, Inode, InodeState, RealEntry, ROOT_INO};
use crate::layer_read::UpperSlot;
use crate::lookup::check_name;
use crate::numbering::{Holder, Lineage};
use crate::overlay::{errno, LayerFs};
use crate::resolve::Resolved;
use crate::sys;
use crate::whiteout::{self, Redirect, XattrNs};
use crate::workdir::Staged;

/// Name of the whiteout inode in the work dir that whiteouts link to.
const SHARED_WHITEOUT: &str = "#lfs-whiteout";

/// Who a new object belongs to.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Decodes the 32-bit device number FUSE carries (`new_decode_dev`).
fn decode_rdev(rdev: u32) -> u64 {
    let major = (rdev & 0xfff00) >> 8;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    libc::makedev(major, minor)
}

fn is_enoent(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOENT)
}

/// The OCI whiteout name of `name`: `.wh.NAME` (ENAMETOOLONG where that
/// no longer fits in a name, as with fuse-overlayfs).
/// Whether a whiteout's creation that failed with `e` left one anyway: a
/// GlusterFS client under load can carry out a LINK and still answer
/// EEXIST (seen with the shared whiteout: the name then is that very
/// inode). The wanted state is there, so the caller goes on.
fn already_whiteout(at: BorrowedFd<'_>, name: &OsStr, e: &io::Error) -> bool {
    if e.raw_os_error() != Some(libc::EEXIST) {
        return false;
    }
    match sys::lstatat(at, name) {
        Ok(st) if whiteout::is_chardev_whiteout(&st) => {
            log::debug!("whiteout {name:?} was made despite EEXIST");
            true
        }
        _ => false,
    }
}

/// Makes the empty file `marker` in `at` (an OCI whiteout or opaque mark);
/// one already there is as good.
fn make_oci_marker(at: BorrowedFd<'_>, marker: &OsStr) -> io::Result<()> {
    match sys::openat(
        at,
        marker,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
        0,
    ) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

impl LayerFs {
    /// What is at `name` in the upper directory `pu`.
    fn upper_slot(&self, pu: &RealEntry, name: &OsStr) -> io::Result<UpperSlot> {
        crate::layer_read::upper_slot(pu, name, self.upper_ctx()?.oci_whiteouts)
    }

    /// Whether `name` exists in `dir`'s lower layers: if so, removing or
    /// moving the upper name must leave a whiteout.
    fn lower_positive(&self, dir: &Inode, name: &OsStr) -> io::Result<bool> {
        let lowers = self.lower_reals(dir);
        if lowers.is_empty() {
            return Ok(false);
        }
        Ok(!matches!(self.resolve_in(&lowers, name)?, Resolved::Absent))
    }

    /// Creates a whiteout named `name` in `at`: a char 0/0 device (allowed
    /// unprivileged since Linux 5.8), else — where even that is refused —
    /// the xattr whiteout kernel overlayfs reads, marking `dir`'s upper part
    /// `opaque=x` so readers know to look for it.
    fn make_whiteout(&self, at: BorrowedFd<'_>, name: &OsStr, dir: &Inode) -> io::Result<()> {
        let up = self.upper_ctx()?;
        let _naming = up.renames.name_guard();
        if up.oci_whiteouts {
            return make_oci_marker(at, &whiteout::oci_marker(name)?);
        }
        if !up.xattr_whiteouts {
            // As kernel overlayfs does: every whiteout is a link to one shared
            // whiteout inode in the work dir, which is far cheaper than a new
            // inode each (an `rm -rf` of a lower tree makes thousands).
            match self.link_shared_whiteout(at, name) {
                Ok(()) => return Ok(()),
                Err(e) if already_whiteout(at, name, &e) => return Ok(()),
                Err(_) => {}
            }
            match sys::mknodat(at, name, libc::S_IFCHR, 0) {
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
                Err(e) if already_whiteout(at, name, &e) => return Ok(()),
                r => return r,
            }
        }
        // Mode 0600: an unprivileged daemon may set and read `user.*`
        // xattrs only on a file its mode lets it write and read.
        let f = sys::openat(
            at,
            name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            0o600,
        )?;
        sys::setxattr_fd(f.as_fd(), &up.ns.name("whiteout"), b"", 0)?;
        self.mark_xwhiteouts(dir)
    }

    fn link_shared_whiteout(&self, at: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        let up = self.upper_ctx()?;
        let shared = OsStr::new(SHARED_WHITEOUT);
        match sys::linkat(up.work.fd(), shared, at, name) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                match sys::mknodat(up.work.fd(), shared, libc::S_IFCHR, 0) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(e),
                }
                sys::linkat(up.work.fd(), shared, at, name)
            }
            Err(e) if e.raw_os_error() == Some(libc::EMLINK) => {
                // Too many links: start a new shared whiteout.
                let _ = sys::unlinkat(up.work.fd(), shared, 0);
                Err(e)
            }
            r => r,
        }
    }

    fn mark_xwhiteouts(&self, dir: &Inode) -> io::Result<()> {
        let up = self.upper_ctx()?;
        dir.mark_upper_part(up.idx, DirMark::XattrWhiteouts, |r| {
            sys::setxattr_fd(r.fd.get()?.as_fd(), &up.ns.name("opaque"), b"x", 0)
        })
    }

    /// Atomically replaces the upper entry `name` with a whiteout (built in
    /// the work directory, exchanged into place); the old entry, a file or a
    /// directory holding only whiteouts, is then removed from the work dir.
    fn replace_with_whiteout(&self, pu: &RealEntry, name: &OsStr, dir: &Inode) -> io::Result<()> {
        let up = self.upper_ctx()?;
        if up.oci_whiteouts {
            // The marker first: a crash before the entry is gone leaves the
            // entry shown (a directory as opaque), as before the change.
            self.make_whiteout(pu.fd.get()?.as_fd(), name, dir)?;
            return self.remove_upper(pu, name);
        }
        let staged = Staged::new(&up.work);
        self.make_whiteout(up.work.fd(), &staged.name, dir)?;
        self.exchange_into_place(staged, pu, name)
    }

    /// Removes the whiteout at `name` in upper directory `pu` (the name is
    /// about to be given to an object).
    fn remove_whiteout(&self, pu: &RealEntry, name: &OsStr) -> io::Result<()> {
        let up = self.upper_ctx()?;
        let (at, what) = if up.oci_whiteouts {
            (pu.fd.get()?, whiteout::oci_marker(name)?)
        } else {
            (pu.fd.get()?, name.to_os_string())
        };
        match sys::unlinkat(at.as_fd(), &what, 0) {
            Err(e) if is_enoent(&e) => Ok(()),
            r => r,
        }
    }

    /// Swaps a staged entry with `name` in upper directory `pu` in one
    /// rename; what was at `name` ends up staged, and is removed with it.
    fn exchange_into_place(
        &self,
        staged: Staged<'_>,
        pu: &RealEntry,
        name: &OsStr,
    ) -> io::Result<()> {
        let up = self.upper_ctx()?;
        up.renames
            .replace_from_work(&up.work, &staged.name, pu.fd.get()?.as_fd(), name)?;
        // What was at `name` is now staged: removed with it.
        drop(staged);
        Ok(())
    }

    /// Moves the upper entry `name` out of the way into the work directory
    /// and removes it there (a directory may still hold whiteouts).
    fn remove_upper(&self, pu: &RealEntry, name: &OsStr) -> io::Result<()> {
        let up = self.upper_ctx()?;
        let staged = Staged::new(&up.work);
        up.renames
            .noreplace(pu.fd.get()?.as_fd(), name, up.work.fd(), &staged.name)?;
        drop(staged);
        Ok(())
    }

    /// Puts a new object at `name` in `parent`: built by `build` directly
    /// in the upper directory, or — over a whiteout — in the work directory,
    /// given its owner (and an opaque mark, for a directory) and exchanged
    /// with the whiteout in one rename.
    fn place(
        &self,
        parent: &Arc<Inode>,
        name: &OsStr,
        is_dir: bool,
        owner: Option<Owner>,
        mode: Option<u32>,
        build: impl FnOnce(BorrowedFd<'_>, &OsStr) -> io::Result<Option<OwnedFd>>,
    ) -> io::Result<(Option<OwnedFd>, OwnedFd)> {
        check_name(name)?;
        if whiteout::is_oci_marker(name.as_bytes()) {
            // Such a name would read back as a marker, not as the object.
            return Err(errno(libc::EINVAL));
        }
        let up = self.upper_ctx()?;
        let pu = self.upper_dir(parent)?;
        parent.dir_changed();
        let finish = |dir: BorrowedFd<'_>, n: &OsStr| -> io::Result<OwnedFd> {
            let fd = sys::openat(dir, n, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
            if let Some(o) = owner {
                self.chown_upper(fd.as_fd(), o.uid, o.gid)?;
            }
            if let Some(m) = mode {
                sys::fchmod_fd(fd.as_fd(), m)?;
            }
            Ok(fd)
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
                let path = finish(pu.fd.get()?.as_fd(), name)?;
                if is_dir {
                    make_oci_marker(path.as_fd(), OsStr::from_bytes(whiteout::OCI_OPAQUE))?;
                }
                self.remove_whiteout(&pu, name)?;
                Ok((fd, path))
            }
            UpperSlot::Whiteout => {
                let staged = Staged::new(&up.work);
                let fd = build(up.work.fd(), &staged.name)?;
                let path = finish(up.work.fd(), &staged.name)?;
                if is_dir {
                    sys::setxattr_fd(path.as_fd(), &up.ns.name("opaque"), b"y", 0)?;
                }
                self.exchange_into_place(staged, &pu, name)?;
                Ok((fd, path))
            }
        }
    }

    /// The inode of an object this mount just created in the upper layer:
    /// nothing below can merge with it (a lower name there was hidden, or
    /// the kernel would not have asked to create it), so it is built from
    /// its one real object without a full lookup. Takes a lookup reference.
    fn new_upper_inode(
        &self,
        parent: NodeId,
        name: &OsStr,
        path: OwnedFd,
    ) -> io::Result<(Arc<Inode>, FileAttr)> {
        let up = self.upper_ctx()?;
        let st = sys::fstat(path.as_fd())?;
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        // A new object is numbered by its own identity. A number remembered
        // for that identity belonged to a deleted object whose inode the
        // upper filesystem has reused; it must not follow the new one
        // (whose number would then change at the next mount).
        let number = self
            .numbering
            .number(&self.layers, RealKey::of(&st), Lineage::New, |n| {
                match self.inodes.get(NodeId::of_number(n)) {
                    // Whatever the kernel still holds under this number is
                    // not the object just made: it was deleted (perhaps
                    // behind the node's back, as whiteouts inside a removed
                    // directory are), so it keeps the number and the new
                    // object gets a fresh one.
                    Some(old) => {
                        old.mark_unlinked();
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
    fn owner_for(&self, parent: &Inode, uid: u32, gid: u32) -> io::Result<(Owner, bool)> {
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
        Ok((inode, attr, self.files.add(Arc::new(fd))))
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
        let (_, path) = self.place(
            &dir,
            name,
            false,
            Some(owner),
            Some(mode & 0o7777),
            |at, n| sys::mknodat(at, n, mode, dev).map(|_| None),
        )?;
        dir.dir_changed();
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
        let (_, path) = self.place(&dir, name, true, Some(owner), Some(perm), |at, n| {
            sys::mkdirat(at, n, perm).map(|_| None)
        })?;
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
        let (_, path) = self.place(&dir, name, false, Some(owner), None, |at, n| {
            sys::symlinkat(target, at, n).map(|_| None)
        })?;
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
                if self.lower_positive(&dir, name)? {
                    self.replace_with_whiteout(&pu, name, &dir)?;
                } else {
                    sys::unlinkat(pu.fd.get()?.as_fd(), name, 0)?;
                }
                let gone = sys::fstat(fd.as_fd())
                    .map(|s| s.st_nlink == 0)
                    .unwrap_or(true);
                if let Some(i) = self.live_inode_of(&st) {
                    i.name_gone(parent, name);
                }
                if gone {
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
    fn index_before_removal(&self, inode: &Arc<Inode>) -> io::Result<bool> {
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

    /// Gives `inode`'s upper object the name `name` in upper directory
    /// `pu`, where that name showed the lower file until now (kernel
    /// overlayfs' link-up): the upper count gains a link, the shown count
    /// stays. For a file kept through the index, the link is staged in the
    /// work dir under a name carrying the new `overlay.nlink` delta, so a
    /// crash at any step leaves the count right (`Staged::index_link`).
    fn link_up(&self, inode: &Inode, pu: &RealEntry, name: &OsStr) -> io::Result<()> {
        let up = self.upper_ctx()?;
        // Two link-ups of one file must not both start from the same delta.
        let _one_at_a_time = inode.copy_lock.lock();
        let top_fd = inode.top().fd.get()?;
        if let UpperSlot::Whiteout = self.upper_slot(pu, name)? {
            self.remove_whiteout(pu, name)?;
        }
        let Some(delta) = inode.nlink_delta() else {
            return sys::link_fd(top_fd.as_fd(), pu.fd.get()?.as_fd(), name);
        };
        let linked = delta - 1;
        let staged = Staged::index_link(&up.work, linked);
        sys::link_fd(top_fd.as_fd(), up.work.fd(), &staged.name)?;
        crate::crashpoint::reached("linkup-staged");
        sys::setxattr_fd(
            top_fd.as_fd(),
            &up.ns.name("nlink"),
            format!("U{linked:+}").as_bytes(),
            0,
        )?;
        crate::crashpoint::reached("linkup-counted");
        // On failure the staged link goes, and the count with it.
        up.renames
            .noreplace(up.work.fd(), &staged.name, pu.fd.get()?.as_fd(), name)?;
        staged.commit();
        inode.set_nlink_delta(Some(linked));
        Ok(())
    }

    /// Gives the upper object `target` the name `name` in directory node
    /// `parent` too (a lower hard link copied up without an index).
    pub(crate) fn link_name_up(
        &self,
        target: BorrowedFd<'_>,
        parent: NodeId,
        name: &OsStr,
    ) -> io::Result<()> {
        let dir = self.inode(parent)?;
        let pu = self.upper_dir(&dir)?;
        match self.upper_slot(&pu, name)? {
            UpperSlot::Entry(..) => return Ok(()),
            UpperSlot::Whiteout => self.remove_whiteout(&pu, name)?,
            UpperSlot::Empty => {}
        }
        dir.dir_changed();
        sys::link_fd(target, pu.fd.get()?.as_fd(), name)
    }

    /// The live inode whose number comes from the real object `st`, if the
    /// kernel holds one.
    fn live_inode_of(&self, st: &sys::Stat) -> Option<Arc<Inode>> {
        let n = self.number_for(RealKey::of(st));
        self.inodes.get(NodeId::of_number(n))
    }

    /// The last name of the upper object `st` is gone: its number must not
    /// be reused while the kernel holds it (only objects numbered by their
    /// own upper inode can meet a reused inode number).
    fn mark_gone(&self, st: &sys::Stat, fd: OwnedFd) {
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
            UpperSlot::Entry(..) if lower => self.replace_with_whiteout(&pu, name, &dir)?,
            UpperSlot::Entry(..) => self.remove_upper(&pu, name)?,
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
    fn note_removed(&self, inode: &Inode, held: Option<Arc<OwnedFd>>) {
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

    /// The path of a directory's lower parts from the lower layers' roots:
    /// its own redirect if it has one, else its parent's lower path and its
    /// name.
    fn lower_path(&self, inode: &Inode) -> io::Result<Vec<u8>> {
        if inode.ino == ROOT_INO {
            return Ok(Vec::new());
        }
        let (parent, name) = {
            let s = inode.state();
            (s.parent, s.name.clone())
        };
        let redirect = self.upper_redirect(inode);
        let parent_path = || -> io::Result<Vec<u8>> {
            let p = self.inode(parent)?;
            self.lower_path(&p)
        };
        Ok(match redirect {
            Some(Redirect::Absolute(comps)) => {
                let mut out = Vec::new();
                for c in comps {
                    out.push(b'/');
                    out.extend_from_slice(&c);
                }
                out
            }
            Some(Redirect::Relative(n)) => {
                let mut out = parent_path()?;
                out.push(b'/');
                out.extend_from_slice(&n);
                out
            }
            None => {
                let mut out = parent_path()?;
                out.push(b'/');
                out.extend_from_slice(name.as_bytes());
                out
            }
        })
    }

    /// Whether renaming a directory with lower parts writes a redirect:
    /// not with `redirect_dir=follow|nofollow|off`, and never in the
    /// `user.overlay.*` namespace, as kernel overlayfs with userxattr
    /// (anyone could forge a user.overlay.redirect). Otherwise rename(2)
    /// answers EXDEV.
    fn creates_redirects(&self) -> io::Result<bool> {
        Ok(self.opts.redirect_dir.creates() && self.upper_ctx()?.ns != XattrNs::User)
    }

    /// The `overlay.redirect` on a directory's upper part, if any.
    fn upper_redirect(&self, inode: &Inode) -> Option<Redirect> {
        let upper = {
            let s = inode.state();
            s.reals.iter().find(|r| self.is_upper(r.layer)).cloned()
        }?;
        let f = upper.fd.get().ok()?;
        crate::layer_read::read_redirect(&f)?.ok()
    }

    fn has_lower_parts(&self, inode: &Inode) -> bool {
        inode.reals().iter().any(|r| !self.is_upper(r.layer))
    }

    /// Gets `inode`, known in `dir` as `name`, ready to be renamed in the
    /// upper layer: copied up, present under that very name (a lower
    /// hardlink may have been copied up under another name), and — for a
    /// directory with lower parts — carrying a redirect to them.
    fn prepare_rename_source(
        &self,
        inode: &Arc<Inode>,
        dir: &Arc<Inode>,
        name: &OsStr,
        samedir: bool,
    ) -> io::Result<()> {
        let up = self.upper_ctx()?;
        if inode.is_dir() && self.has_lower_parts(inode) {
            if !self.creates_redirects()? {
                // rename(2) callers copy instead (mv does).
                return Err(errno(libc::EXDEV));
            }
            // As kernel overlayfs (`ovl_set_redirect`): a directory that
            // stays in its parent gets a relative redirect, its name (it
            // has none yet, so that is its name in the lower layers); one
            // that leaves gets the absolute path of its lower parts. An
            // absolute redirect stays true wherever the directory goes, a
            // relative one while it stays in the same parent: either is
            // then kept.
            let path = if samedir {
                name.as_bytes().to_vec()
            } else {
                self.lower_path(inode)?
            };
            let top = self.copy_up(inode)?;
            let keep = top.marks.redirect
                && (samedir || matches!(self.upper_redirect(inode), Some(Redirect::Absolute(_))));
            if !keep {
                inode.mark_upper_part(up.idx, DirMark::Redirect, |r| {
                    sys::setxattr_fd(r.fd.get()?.as_fd(), &up.ns.name("redirect"), &path, 0)
                })?;
            }
            return Ok(());
        }
        let top = self.copy_up(inode)?;
        let pu = self.upper_dir(dir)?;
        if let UpperSlot::Empty | UpperSlot::Whiteout = self.upper_slot(&pu, name)? {
            if inode.is_dir() {
                log::warn!("rename: directory {name:?} is not in the upper after its copy-up");
                return Err(errno(libc::EIO));
            }
            // Another name of a lower hardlink set was copied up: give this
            // name the same upper inode.
            let top_fd = top.fd.get()?;
            match self.link_up(inode, &pu, name) {
                Ok(()) => {}
                // The name was there after all (a network filesystem's
                // client may answer a lookup of a name it just renamed
                // in with ENOENT): fine if it is this very file.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    let there = sys::lstatat(pu.fd.get()?.as_fd(), name)?;
                    let ours = sys::fstat(top_fd.as_fd())?;
                    if (there.st_dev, there.st_ino) != (ours.st_dev, ours.st_ino) {
                        return Err(e);
                    }
                    log::debug!("rename source {name:?} was in the upper already");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn set_opaque(&self, inode: &Inode) -> io::Result<()> {
        let up = self.upper_ctx()?;
        inode.mark_upper_part(up.idx, DirMark::Opaque, |r| {
            let fd = r.fd.get()?;
            if up.oci_whiteouts {
                make_oci_marker(fd.as_fd(), OsStr::from_bytes(whiteout::OCI_OPAQUE))
            } else {
                sys::setxattr_fd(fd.as_fd(), &up.ns.name("opaque"), b"y", 0)
            }
        })?;
        inode.dir_changed();
        Ok(())
    }

    pub fn rename(
        &self,
        parent: NodeId,
        name: &OsStr,
        newparent: NodeId,
        newname: &OsStr,
        flags: u32,
    ) -> io::Result<()> {
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 {
            return Err(errno(libc::EINVAL));
        }
        check_name(newname)?;
        if whiteout::is_oci_marker(newname.as_bytes()) {
            return Err(errno(libc::EINVAL));
        }
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let sdir = self.inode(parent)?;
        let ddir = self.inode(newparent)?;
        let src = self.child(parent, name)?;
        let dst = match self.child(newparent, newname) {
            Ok(i) => Some(i),
            Err(e) if is_enoent(&e) => None,
            Err(e) => return Err(e),
        };
        if exchange && dst.is_none() {
            return Err(errno(libc::ENOENT));
        }
        if noreplace && dst.is_some() {
            return Err(errno(libc::EEXIST));
        }
        if let Some(d) = &dst {
            if Arc::ptr_eq(d, &src) {
                // Two names of one file (or the same name): nothing to do.
                return Ok(());
            }
            if !exchange {
                if src.is_dir() && !d.is_dir() {
                    return Err(errno(libc::ENOTDIR));
                }
                if !src.is_dir() && d.is_dir() {
                    return Err(errno(libc::EISDIR));
                }
            }
        }
        if !self.creates_redirects()? {
            // Checked before emptiness, in the kernel's order.
            let immovable = |i: &Arc<Inode>| i.is_dir() && self.has_lower_parts(i);
            if immovable(&src) || (exchange && dst.as_ref().is_some_and(immovable)) {
                return Err(errno(libc::EXDEV));
            }
        }
        // Only a target with lower parts (or holding OCI markers) is checked
        // for emptiness here, as kernel overlayfs does (`ovl_rename` skips
        // pure upper ones): any other is left to the rename in the upper,
        // which fails with ENOTEMPTY after the source was copied up and
        // redirected, as in the kernel, whose upper then has those copies.
        let oci = self.upper_ctx()?.oci_whiteouts;
        let checked = |d: &Arc<Inode>| d.is_dir() && (oci || self.has_lower_parts(d));
        if let Some(d) = &dst {
            if !exchange && checked(d) && self.current_listing(d)?.1.len() > 2 {
                return Err(errno(libc::ENOTEMPTY));
            }
        }
        if let Some(d) = &dst {
            if !exchange && !d.is_dir() {
                self.index_before_removal(d)?;
            }
        }
        let src_lower = self.lower_positive(&sdir, name)?;
        // The object a rename may unlink, held open across it.
        let dst_held = match &dst {
            Some(d) if !d.is_dir() && !exchange => {
                let top = d.top();
                if self.is_upper(top.layer) {
                    top.fd.get().ok()
                } else {
                    None
                }
            }
            _ => None,
        };
        let spu = self.upper_dir(&sdir)?;
        let dpu = self.upper_dir(&ddir)?;
        sdir.dir_changed();
        ddir.dir_changed();
        self.prepare_rename_source(&src, &sdir, name, parent == newparent)?;
        if exchange {
            let d = dst.as_ref().ok_or_else(|| errno(libc::ENOENT))?;
            self.prepare_rename_source(d, &ddir, newname, parent == newparent)?;
            let up = self.upper_ctx()?;
            up.renames.exchange(
                &up.work,
                spu.fd.get()?.as_fd(),
                name,
                dpu.fd.get()?.as_fd(),
                newname,
            )?;
        } else {
            let mut slot = self.upper_slot(&dpu, newname)?;
            if let Some(d) = &dst {
                let mut in_upper = matches!(slot, UpperSlot::Entry(..));
                if !d.is_dir() && !in_upper && d.nlink_delta().is_some() {
                    // The target name of a file kept through the index lived
                    // only below: linked up first, the rename over it then
                    // takes one upper link and one shown link together.
                    self.link_up(d, &dpu, newname)?;
                    slot = self.upper_slot(&dpu, newname)?;
                    in_upper = true;
                }
                // An empty merged directory may still hold whiteouts in its
                // upper part; the rename needs it truly empty.
                if checked(d) && in_upper {
                    self.remove_upper(&dpu, newname)?;
                    slot = self.upper_slot(&dpu, newname)?;
                }
            }
            let (sfd, dfd) = (spu.fd.get()?, dpu.fd.get()?);
            let up = self.upper_ctx()?;
            let rename = || {
                if noreplace {
                    up.renames
                        .noreplace(sfd.as_fd(), name, dfd.as_fd(), newname)
                } else {
                    sys::renameat2(sfd.as_fd(), name, dfd.as_fd(), newname, 0)
                }
            };
            match slot {
                UpperSlot::Whiteout if up.oci_whiteouts => {
                    // Marks first, then the rename, then the target's
                    // marker goes: at no point does a crash show more or
                    // less than before or after.
                    if src_lower {
                        self.make_whiteout(sfd.as_fd(), name, &sdir)?;
                    }
                    if src.is_dir() && !self.has_lower_parts(&src) {
                        let top = src.top();
                        make_oci_marker(
                            top.fd.get()?.as_fd(),
                            OsStr::from_bytes(whiteout::OCI_OPAQUE),
                        )?;
                    }
                    sys::renameat2(sfd.as_fd(), name, dfd.as_fd(), newname, 0)?;
                    self.remove_whiteout(&dpu, newname)?;
                }
                _ if src_lower && up.oci_whiteouts => {
                    self.make_whiteout(sfd.as_fd(), name, &sdir)?;
                    rename()?;
                }
                UpperSlot::Whiteout => {
                    // As kernel overlayfs: exchange with the whiteout (a
                    // directory cannot replace a device node), which then
                    // serves as the source's whiteout or is removed.
                    up.renames
                        .exchange(&up.work, sfd.as_fd(), name, dfd.as_fd(), newname)?;
                    if !src_lower {
                        sys::unlinkat(sfd.as_fd(), name, 0)?;
                    } else if !matches!(sys::lstatat(sfd.as_fd(), name), Ok(st) if whiteout::is_chardev_whiteout(&st))
                    {
                        self.mark_xwhiteouts(&sdir)?;
                    }
                }
                _ if src_lower => {
                    // The kernel leaves the whiteout in the same rename where
                    // it can; else the name is whited out right after.
                    let with_whiteout = if up.xattr_whiteouts {
                        rename()?;
                        false
                    } else {
                        up.renames.with_whiteout(
                            sfd.as_fd(),
                            name,
                            dfd.as_fd(),
                            newname,
                            noreplace,
                        )?
                    };
                    if !with_whiteout {
                        self.make_whiteout(sfd.as_fd(), name, &sdir)?;
                    }
                }
                _ => rename()?,
            }
        }
        // A directory with no lower parts of its own moved into a merged
        // directory must not merge with whatever the lower layers hold (or
        // a layer stacked below later will hold) under its new name: it is
        // made opaque, as kernel overlayfs does (`ovl_rename`).
        if src.is_dir() && !self.has_lower_parts(&src) && self.has_lower_parts(&ddir) {
            self.set_opaque(&src)?;
        }
        if let Some(d) = &dst {
            if exchange && d.is_dir() && !self.has_lower_parts(d) && self.has_lower_parts(&sdir) {
                self.set_opaque(d)?;
            }
        }
        sdir.dir_changed();
        ddir.dir_changed();
        // A moved directory's ".." changed.
        src.dir_changed();
        if let Some(d) = &dst {
            d.dir_changed();
        }
        src.name_moved((parent, name), (newparent, newname));
        src.upper_name_moved(dpu.fd.get()?, newname);
        if let Some(d) = &dst {
            if exchange {
                d.name_moved((newparent, newname), (parent, name));
                d.upper_name_moved(spu.fd.get()?, name);
            } else if d.is_dir() {
                d.mark_unlinked();
            } else {
                d.name_gone(newparent, newname);
                self.note_removed(d, dst_held);
            }
        }
        Ok(())
    }
}
