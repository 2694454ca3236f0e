//! setattr, which changes a file's metadata (and size) after copying the
//! object up, and the owner change creations share (`chown_upper`); the
//! lower layers are never written. Writes through an open handle are in
//! `file_data`.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use fuser::FileAttr;

use crate::copyup::CopyMode;
use crate::file_data::kill_suidgid;
use crate::ids::{FileHandle, NodeId};
use crate::overlay::LayerFs;
use crate::sys::{self, TimeSpec};

/// The attribute changes of one setattr request.
#[derive(Debug, Default, Clone, Copy)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSpec>,
    pub mtime: Option<TimeSpec>,
    pub fh: Option<FileHandle>,
    /// A size change by a caller without CAP_FSETID, of this group: clear
    /// setuid/setgid (the kernel leaves it to us under
    /// FUSE_HANDLE_KILLPRIV_V2).
    pub kill_suidgid: Option<u32>,
}

impl LayerFs {
    /// Sets the owner of an upper file. Under `squash_to_*` every file
    /// shows the squashed owner anyway, so a refused chown (a daemon
    /// without CAP_CHOWN) is not an error, as with fuse-overlayfs.
    pub(crate) fn chown_upper(&self, fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
        match sys::fchown_fd(fd, uid, gid) {
            Err(e) if self.opts.ids.squashed() && e.raw_os_error() == Some(libc::EPERM) => Ok(()),
            r => r,
        }
    }

    pub fn setattr(&self, ino: NodeId, a: SetAttr) -> io::Result<FileAttr> {
        let inode = self.inode(ino)?;
        // One fd of an upper top serves the whole request: each `get` of an
        // upper file reopens it by handle or name, and the times the
        // writeback cache sends back after every write come here.
        let top = inode.top();
        let upper_fd = self.is_upper(top.layer).then(|| top.fd.get()).transpose()?;
        if times_only(&a) {
            // A lower top is looked at without being opened.
            let st = match &upper_fd {
                Some(fd) => sys::fstat(fd.as_fd())?,
                None => top.fd.stat()?,
            };
            if same_times(&st, &a) {
                // With the writeback cache the kernel owns times, and
                // writes back the ctime of every file it saw change: after
                // an unlink too, with the unchanged mtime. Copying up a
                // lower file (one just deleted, at that) for it would cost
                // a copy and an fsync each: `rm -rf` of a lower tree ran 6x
                // slower.
                return self.attr_from(&inode, &st);
            }
        }
        let held = match upper_fd {
            // Already up, and no data to bring up (a metacopy's is, for a
            // size change): the copy-up would return this very object.
            Some(fd) if a.size.is_none() => fd,
            _ => {
                let up = match a.size {
                    Some(0) => self.copy_up_with(&inode, CopyMode::Truncated)?,
                    Some(_) => self.copy_up(&inode)?,
                    None => self.copy_up_meta(&inode)?,
                };
                up.fd.get()?
            }
        };
        let fd = held.as_fd();
        if let Some(size) = a.size {
            let w = match a.fh.and_then(|fh| self.write_fd(fh).ok()) {
                Some(f) => f,
                None => std::sync::Arc::new(sys::reopen(fd, libc::O_WRONLY)?),
            };
            crate::capacity::resize_file(
                self.capacity(),
                w.as_fd(),
                |_| size,
                || sys::ftruncate(w.as_fd(), size),
            )?;
        }
        // Owner before mode: chown clears setuid/setgid.
        if a.uid.is_some() || a.gid.is_some() {
            self.chown_upper(fd, a.uid.unwrap_or(u32::MAX), a.gid.unwrap_or(u32::MAX))?;
        }
        if let Some(mode) = a.mode {
            sys::fchmod_fd(fd, mode & 0o7777)?;
        } else if let (Some(gid), Some(_)) = (a.kill_suidgid, a.size) {
            kill_suidgid(fd, gid)?;
        }
        if a.atime.is_some() || a.mtime.is_some() {
            sys::utimens_at(
                fd,
                OsStr::new(""),
                a.atime.unwrap_or(TimeSpec::Omit),
                a.mtime.unwrap_or(TimeSpec::Omit),
            )?;
        }
        self.attr_at(&inode, fd)
    }
}

/// Whether `a` changes times only.
fn times_only(a: &SetAttr) -> bool {
    a.mode.is_none() && a.uid.is_none() && a.gid.is_none() && a.size.is_none()
}

/// Whether the object, whose attributes are `st`, has the times `a` sets
/// already (the ctime it may carry is not settable, and moves by itself).
fn same_times(st: &sys::Stat, a: &SetAttr) -> bool {
    let same = |t: Option<TimeSpec>, sec: i64, nsec: i64| match t {
        None => true,
        Some(TimeSpec::Set(s, n)) => s == sec && n == nsec,
        Some(_) => false,
    };
    same(a.mtime, st.st_mtime, st.st_mtime_nsec) && same(a.atime, st.st_atime, st.st_atime_nsec)
}
