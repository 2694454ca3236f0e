//! The upper layer's namespace, written in one place: whiteouts (a char
//! 0/0 device, a link to the work dir's shared whiteout inode, an xattr
//! whiteout, or an OCI `.wh.` marker), opaque marks, entries replaced or
//! removed through the work dir in one rename, and link-ups of hard links
//! kept through the index (whose link count must survive a crash at any
//! step). Creation, removal (`names`) and rename (`rename`) change the
//! upper's names through these.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use crate::ids::NodeId;
use crate::inode::{DirMark, Inode, RealEntry};
use crate::layer_read::UpperSlot;
use crate::overlay::LayerFs;
use crate::resolve::Resolved;
use crate::sys;
use crate::whiteout::{self};
use crate::workdir::Staged;

/// Name of the whiteout inode in the work dir that whiteouts link to.
pub(crate) const SHARED_WHITEOUT: &str = "#lfs-whiteout";

/// Who a new object belongs to.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

pub(crate) fn is_enoent(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOENT)
}

/// Whether a whiteout's creation that failed with `e` left one anyway: a
/// GlusterFS client under load can carry out a LINK and still answer
/// EEXIST (seen with the shared whiteout: the name then is that very
/// inode). The wanted state is there, so the caller goes on.
pub(crate) fn already_whiteout(at: BorrowedFd<'_>, name: &OsStr, e: &io::Error) -> bool {
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
pub(crate) fn make_oci_marker(at: BorrowedFd<'_>, marker: &OsStr) -> io::Result<()> {
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
    pub(crate) fn upper_slot(&self, pu: &RealEntry, name: &OsStr) -> io::Result<UpperSlot> {
        crate::layer_read::upper_slot(pu, name, self.upper_ctx()?.oci_whiteouts)
    }

    /// Whether `name` exists in `dir`'s lower layers: if so, removing or
    /// moving the upper name must leave a whiteout.
    pub(crate) fn lower_positive(&self, dir: &Inode, name: &OsStr) -> io::Result<bool> {
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
    pub(crate) fn make_whiteout(
        &self,
        at: BorrowedFd<'_>,
        name: &OsStr,
        dir: &Inode,
    ) -> io::Result<()> {
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

    pub(crate) fn link_shared_whiteout(&self, at: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
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

    pub(crate) fn mark_xwhiteouts(&self, dir: &Inode) -> io::Result<()> {
        let up = self.upper_ctx()?;
        dir.mark_upper_part(up.idx, DirMark::XattrWhiteouts, |r| {
            sys::setxattr_fd(r.fd.get()?.as_fd(), &up.ns.name("opaque"), b"x", 0)
        })
    }

    /// Atomically replaces the upper entry `name` with a whiteout (built in
    /// the work directory, exchanged into place); the old entry, a file or a
    /// directory holding only whiteouts, is then removed from the work dir.
    pub(crate) fn replace_with_whiteout(
        &self,
        pu: &RealEntry,
        name: &OsStr,
        dir: &Inode,
    ) -> io::Result<()> {
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
    pub(crate) fn remove_whiteout(&self, pu: &RealEntry, name: &OsStr) -> io::Result<()> {
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
    pub(crate) fn exchange_into_place(
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
    pub(crate) fn remove_upper(&self, pu: &RealEntry, name: &OsStr) -> io::Result<()> {
        let up = self.upper_ctx()?;
        let staged = Staged::new(&up.work);
        up.renames
            .noreplace(pu.fd.get()?.as_fd(), name, up.work.fd(), &staged.name)?;
        drop(staged);
        Ok(())
    }

    /// Gives `inode`'s upper object the name `name` in upper directory
    /// `pu`, where that name showed the lower file until now (kernel
    /// overlayfs' link-up): the upper count gains a link, the shown count
    /// stays. For a file kept through the index, the link is staged in the
    /// work dir under a name carrying the new `overlay.nlink` delta, so a
    /// crash at any step leaves the count right (`Staged::index_link`).
    pub(crate) fn link_up(&self, inode: &Inode, pu: &RealEntry, name: &OsStr) -> io::Result<()> {
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

    pub(crate) fn set_opaque(&self, inode: &Inode) -> io::Result<()> {
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
}
