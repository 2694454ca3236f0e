//! Operations that change a file's data or metadata: setattr, write,
//! fallocate, fsync, lseek, copy_file_range and the xattr setters. Each
//! first copies the object up; the lower layers are never written.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use fuser::FileAttr;

use crate::copyup::CopyMode;
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

/// Whether a file with this mode may need bits cleared by a write or
/// truncate: setuid or setgid set.
pub fn has_suidgid(mode: u32) -> bool {
    mode & (libc::S_ISUID | libc::S_ISGID) != 0
}

/// Clears what the VFS clears when a caller without CAP_FSETID (group
/// `caller_gid`) writes or truncates: setuid, and setgid when the file is
/// group-executable or the caller is not in its group (only the caller's
/// primary group is known here). True when the mode changed.
fn kill_suidgid(fd: BorrowedFd<'_>, caller_gid: u32) -> io::Result<bool> {
    let st = sys::fstat(fd)?;
    let mode = st.st_mode & 0o7777;
    let mut keep = mode & !libc::S_ISUID;
    if mode & libc::S_IXGRP != 0 || st.st_gid != caller_gid {
        keep &= !libc::S_ISGID;
    }
    if keep == mode {
        return Ok(false);
    }
    sys::fchmod_fd(fd, keep)?;
    Ok(true)
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
        if self.changes_nothing(&inode, &a)? {
            // With the writeback cache the kernel owns times, and writes
            // back the ctime of every file it saw change: after an unlink
            // too, with the unchanged mtime. Copying up a lower file (one
            // just deleted, at that) for it would cost a copy and an fsync
            // each: `rm -rf` of a lower tree ran 6x slower.
            return self.attr_of(&inode);
        }
        let up = match a.size {
            Some(0) => self.copy_up_with(&inode, CopyMode::Truncated)?,
            Some(_) => self.copy_up(&inode)?,
            None => self.copy_up_meta(&inode)?,
        };
        let held = up.fd.get()?;
        let fd = held.as_fd();
        if let Some(size) = a.size {
            match a.fh.and_then(|fh| self.file(fh).ok()) {
                Some(f) => sys::ftruncate(f.fd.as_fd(), size)?,
                None => {
                    let w = sys::reopen(fd, libc::O_WRONLY)?;
                    sys::ftruncate(w.as_fd(), size)?;
                }
            }
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
        self.attr_of(&inode)
    }

    /// Whether `a` sets nothing but times the object has already (the
    /// ctime it may carry is not settable, and moves by itself).
    fn changes_nothing(&self, inode: &crate::inode::Inode, a: &SetAttr) -> io::Result<bool> {
        if a.mode.is_some() || a.uid.is_some() || a.gid.is_some() || a.size.is_some() {
            return Ok(false);
        }
        let st = sys::fstat(inode.top().fd.get()?.as_fd())?;
        let same = |t: Option<TimeSpec>, sec: i64, nsec: i64| match t {
            None => true,
            Some(TimeSpec::Set(s, n)) => s == sec && n == nsec,
            Some(_) => false,
        };
        Ok(same(a.mtime, st.st_mtime, st.st_mtime_nsec)
            && same(a.atime, st.st_atime, st.st_atime_nsec))
    }

    /// Writes `data`; with `kill` (the group of a caller without
    /// CAP_FSETID) also clears setuid/setgid, saying whether the mode
    /// changed.
    pub fn write(
        &self,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        kill: Option<u32>,
    ) -> io::Result<(u32, bool)> {
        let file = self.file(fh)?;
        let killed = match kill {
            Some(gid) => kill_suidgid(file.fd.as_fd(), gid)?,
            None => false,
        };
        let mut done = 0;
        while done < data.len() {
            match sys::pwrite(file.fd.as_fd(), &data[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if done > 0 => {
                    log::debug!("short write after {done} bytes: {e}");
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok((done as u32, killed))
    }

    pub fn fsync(&self, fh: FileHandle, datasync: bool) -> io::Result<()> {
        if !self.opts.fsync {
            return Ok(());
        }
        let file = self.file(fh)?;
        sys::fsync(file.fd.as_fd(), datasync)
    }

    pub fn fsyncdir(&self, ino: NodeId, datasync: bool) -> io::Result<()> {
        if !self.opts.fsync {
            return Ok(());
        }
        let inode = self.inode(ino)?;
        let top = inode.top();
        if !self.is_upper(top.layer) {
            return Ok(());
        }
        let d = sys::reopen(top.fd.get()?.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)?;
        sys::fsync(d.as_fd(), datasync)
    }

    pub fn fallocate(&self, fh: FileHandle, offset: u64, len: u64, mode: i32) -> io::Result<()> {
        let file = self.file(fh)?;
        sys::fallocate(file.fd.as_fd(), mode, offset, len)
    }

    pub fn lseek(&self, fh: FileHandle, offset: i64, whence: i32) -> io::Result<i64> {
        let file = self.file(fh)?;
        sys::lseek(file.fd.as_fd(), offset, whence)
    }

    pub fn copy_file_range(
        &self,
        fh_in: FileHandle,
        off_in: u64,
        fh_out: FileHandle,
        off_out: u64,
        len: u64,
    ) -> io::Result<u32> {
        let fin = self.file(fh_in)?;
        let fout = self.file(fh_out)?;
        let len = len.min(u32::MAX as u64 & !0xfff) as usize;
        let n = sys::copy_file_range(fin.fd.as_fd(), off_in, fout.fd.as_fd(), off_out, len)?;
        Ok(n as u32)
    }
}
