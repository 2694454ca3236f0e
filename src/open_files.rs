//! Open regular files: open and release (the handles given to the kernel
//! are kept in `open_table`, the data path through a handle is
//! `file_data`).

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;

use crate::copyup::CopyMode;
use crate::ids::{FileHandle, NodeId};
use crate::open_table::OpenFile;
use crate::overlay::LayerFs;
use crate::sys;

impl LayerFs {
    /// Opens a regular file, copying it up first when opened for writing.
    /// Returns the handle and whether its content is immutable (a lower
    /// file), so the kernel may keep its page cache.
    pub fn open(&self, ino: NodeId, flags: i32) -> io::Result<(FileHandle, bool)> {
        let inode = self.inode(ino)?;
        let wants_write = (flags & libc::O_ACCMODE) != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let top = if wants_write {
            let mode = if flags & libc::O_TRUNC != 0 {
                CopyMode::Truncated
            } else {
                CopyMode::Full
            };
            self.copy_up_with(&inode, mode)?
        } else {
            // A metacopy's data is in its lower file.
            let s = inode.state();
            s.reals.get(1).unwrap_or(&s.reals[0]).clone()
        };
        let lower = !self.is_upper(top.layer);
        let fd = if lower {
            // Lower files never change: one read-only fd serves every
            // read-only open of the file while any is open.
            inode.shared_lower_fd(|| sys::reopen(top.fd.get()?.as_fd(), libc::O_RDONLY))?
        } else {
            let keep = libc::O_ACCMODE | libc::O_APPEND | libc::O_NONBLOCK | libc::O_TRUNC;
            Arc::new(sys::reopen(
                top.fd.get()?.as_fd(),
                (flags & keep) | libc::O_NOCTTY,
            )?)
        };
        Ok((self.files.add(fd), lower))
    }

    pub fn file(&self, fh: FileHandle) -> io::Result<Arc<OpenFile>> {
        self.files.get(fh)
    }

    pub fn release(&self, fh: FileHandle) {
        self.files.remove(fh);
    }
}
