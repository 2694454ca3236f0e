//! An open file's data path: read, write, fsync, fallocate, lseek and
//! copy_file_range through the handle `open` gave (see `open_files`), and
//! the setuid/setgid clearing a write or truncate does. The handle's fd is
//! already the right real file (copied up when opened for writing), so
//! nothing here copies up.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use crate::ids::{FileHandle, NodeId};
use crate::overlay::LayerFs;
use crate::sys;

/// Whether a file with this mode may need bits cleared by a write or
/// truncate: setuid or setgid set.
pub fn has_suidgid(mode: u32) -> bool {
    mode & (libc::S_ISUID | libc::S_ISGID) != 0
}

/// Clears what the VFS clears when a caller without CAP_FSETID (group
/// `caller_gid`) writes or truncates: setuid, and setgid when the file is
/// group-executable or the caller is not in its group (only the caller's
/// primary group is known here). True when the mode changed.
pub(crate) fn kill_suidgid(fd: BorrowedFd<'_>, caller_gid: u32) -> io::Result<bool> {
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

/// Reads into `buf` from `offset`, as much as fits (less only at the end
/// of the file); returns how much.
fn read_at(fd: BorrowedFd<'_>, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match sys::pread(fd, &mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Writes `data` at `offset`, retrying where interrupted; a short write
/// after some bytes is reported as such, not as its error.
fn write_all_at(fd: BorrowedFd<'_>, data: &[u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        match sys::pwrite(fd, &data[done..], offset + done as u64) {
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
    Ok(done)
}

/// The smallest read served from the file's mapping: a small file is read
/// whole in one request, where mapping it costs more than the copy saved.
const MAP_AT_LEAST: usize = 64 * 1024;

impl LayerFs {
    pub fn read(&self, fh: FileHandle, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        // Into a buffer, never from a mapping: these bytes are read here,
        // where a lower file shrunk behind our back would raise SIGBUS.
        let mut buf = vec![0; size as usize];
        let done = read_at(self.read_fd(fh)?.as_fd(), offset, &mut buf)?;
        buf.truncate(done);
        Ok(buf)
    }

    /// Hands `reply` the bytes from `offset`, as many as `size` (fewer
    /// only at the end of the file), and returns what it returns.
    ///
    /// A lower file's bytes (immutable) come from its mapping, so that a
    /// reply written to /dev/fuse copies them once, from the page cache
    /// into the request, where reading them into a buffer first copies
    /// them twice (a 256 MiB first read: 30% less of the daemon's CPU).
    /// `reply` must only hand them to the kernel: should a lower file
    /// shrink after all, the kernel's copy fails with EFAULT where a read
    /// here would raise SIGBUS. Others are read into `buf`, which the FUSE
    /// glue keeps per worker thread (a fresh 128 KiB-or-larger buffer per
    /// request is an mmap, its page faults and a munmap).
    pub fn read_with<R>(
        &self,
        fh: FileHandle,
        offset: u64,
        size: usize,
        buf: &mut Vec<u8>,
        reply: impl FnOnce(&[u8]) -> R,
    ) -> io::Result<R> {
        let (fd, lower) = self.read_data_fd(fh)?;
        if let Some(map) = lower.filter(|_| size >= MAP_AT_LEAST) {
            let whole = map.get_or_init(|| {
                let mapped = sys::fstat(fd.as_fd())
                    .and_then(|st| sys::FileRange::map(fd.as_fd(), 0, st.st_size.max(0) as usize));
                // Some filesystems cannot map (a FUSE lower with direct
                // I/O): such a file is read into the buffer.
                mapped
                    .map_err(|e| log::debug!("lower file not mapped, read instead: {e}"))
                    .ok()
            });
            if let Some(whole) = whole {
                let bytes = whole.bytes();
                let start = (offset as usize).min(bytes.len());
                let end = start.saturating_add(size).min(bytes.len());
                return Ok(reply(&bytes[start..end]));
            }
        }
        if buf.len() < size {
            buf.resize(size, 0);
        }
        let done = read_at(fd.as_fd(), offset, &mut buf[..size])?;
        Ok(reply(&buf[..done]))
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
        let fd = self.write_fd(fh)?;
        let killed = match kill {
            Some(gid) => kill_suidgid(fd.as_fd(), gid)?,
            None => false,
        };
        // Where the write ends: an O_APPEND fd writes at its end, whatever
        // the offset says.
        let append =
            self.capacity().is_some() && self.file(fh).is_ok_and(|f| f.flags & libc::O_APPEND != 0);
        let end = |size: u64| (if append { size } else { offset }) + data.len() as u64;
        let done = crate::capacity::resize_file(
            self.capacity(),
            fd.as_fd(),
            |size| size.max(end(size)),
            || write_all_at(fd.as_fd(), data, offset),
        )?;
        Ok((done as u32, killed))
    }

    pub fn fsync(&self, fh: FileHandle, datasync: bool) -> io::Result<()> {
        if !self.opts.fsync {
            return Ok(());
        }
        sys::fsync(self.read_fd(fh)?.as_fd(), datasync)
    }

    /// fsync of a directory: by node (directories get no handle: `opendir`
    /// answers ENOSYS), under the same `volatile` rule as `fsync`.
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
        let fd = self.write_fd(fh)?;
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        if self.capacity().is_some() && keep_size && mode & libc::FALLOC_FL_PUNCH_HOLE == 0 {
            // Blocks past the end that no size shows: the count, made of
            // sizes, cannot see them (see `capacity`).
            return Err(crate::overlay::errno(libc::EOPNOTSUPP));
        }
        let most = |size: u64| {
            if mode & libc::FALLOC_FL_INSERT_RANGE != 0 {
                size.saturating_add(len)
            } else if mode & libc::FALLOC_FL_COLLAPSE_RANGE != 0 || keep_size {
                size
            } else {
                size.max(offset.saturating_add(len))
            }
        };
        crate::capacity::resize_file(self.capacity(), fd.as_fd(), most, || {
            sys::fallocate(fd.as_fd(), mode, offset, len)
        })
    }

    pub fn lseek(&self, fh: FileHandle, offset: i64, whence: i32) -> io::Result<i64> {
        sys::lseek(self.read_fd(fh)?.as_fd(), offset, whence)
    }

    pub fn copy_file_range(
        &self,
        fh_in: FileHandle,
        off_in: u64,
        fh_out: FileHandle,
        off_out: u64,
        len: u64,
    ) -> io::Result<u32> {
        let fin = self.read_fd(fh_in)?;
        let fout = self.write_fd(fh_out)?;
        let len = len.min(u32::MAX as u64 & !0xfff) as usize;
        let end = off_out.saturating_add(len as u64);
        let n = crate::capacity::resize_file(
            self.capacity(),
            fout.as_fd(),
            |size| size.max(end),
            || sys::copy_file_range(fin.as_fd(), off_in, fout.as_fd(), off_out, len),
        )?;
        Ok(n as u32)
    }
}
