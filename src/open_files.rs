//! Open regular files: the table of handles given to the kernel, and
//! open and release (the data path through a handle is `file_data`).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::copyup::CopyMode;
use crate::ids::{FileHandle, NodeId};
use crate::overlay::{errno, LayerFs};
use crate::sys;

/// The open files, by handle.
#[derive(Debug)]
pub struct OpenFiles {
    files: DashMap<FileHandle, Arc<OpenFile>>,
    next: AtomicU64,
}

impl Default for OpenFiles {
    fn default() -> Self {
        OpenFiles {
            files: DashMap::new(),
            next: AtomicU64::new(1),
        }
    }
}

impl OpenFiles {
    /// Registers an open file under a new handle.
    pub fn add(&self, fd: Arc<OwnedFd>) -> FileHandle {
        let fh = FileHandle(self.next.fetch_add(1, Ordering::Relaxed));
        self.files.insert(
            fh,
            Arc::new(OpenFile {
                fd,
                backing: Default::default(),
            }),
        );
        fh
    }

    pub fn get(&self, fh: FileHandle) -> io::Result<Arc<OpenFile>> {
        self.files
            .get(&fh)
            .map(|f| Arc::clone(f.value()))
            .ok_or_else(|| errno(libc::EBADF))
    }

    pub fn remove(&self, fh: FileHandle) {
        self.files.remove(&fh);
    }
}

/// An open regular file.
#[derive(Debug)]
pub struct OpenFile {
    /// Shared with other read-only opens of the same lower file.
    pub fd: Arc<OwnedFd>,
    /// Its passthrough backing id, held until release.
    pub backing: std::sync::OnceLock<Arc<fuser::BackingId>>,
}

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
