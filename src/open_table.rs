//! The table of open regular files, by the handle given to the kernel.
//! It sits below the filesystem object that holds it: the operations on
//! open files live in `open_files`.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::ids::FileHandle;

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
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
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
