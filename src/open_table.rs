//! The table of open regular files, by the handle given to the kernel.
//! It sits below the filesystem object that holds it: the operations on
//! open files live in `open_files`.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::ids::FileHandle;
use crate::inode::Inode;
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
    /// Registers an open file under a new handle: `fd`, opened with
    /// `flags` on what `node` showed then (at `rotation`, see `OpenFile`);
    /// `immutable` when `fd` is a lower layer's file.
    pub fn add(
        &self,
        fd: Arc<OwnedFd>,
        immutable: bool,
        node: Arc<Inode>,
        flags: i32,
        rotation: u64,
    ) -> FileHandle {
        let fh = FileHandle(self.next.fetch_add(1, Ordering::Relaxed));
        let version = node.data_version();
        self.files.insert(
            fh,
            Arc::new(OpenFile {
                fd: parking_lot::RwLock::new(DataFd::new(fd, immutable)),
                node,
                flags,
                version: AtomicU64::new(version),
                rotation: AtomicU64::new(rotation),
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

/// A lower file's whole mapping, made at its first large read and kept
/// until the file is released or its fd replaced (see `file_data`); None
/// where the file cannot be mapped.
pub type LowerMap = std::sync::OnceLock<Option<sys::FileRange>>;

/// An open file's fd, and for a lower layer's file its mapping's place.
#[derive(Debug)]
struct DataFd {
    fd: Arc<OwnedFd>,
    lower: Option<Arc<LowerMap>>,
}

impl DataFd {
    fn new(fd: Arc<OwnedFd>, immutable: bool) -> DataFd {
        DataFd {
            fd,
            lower: immutable.then(Default::default),
        }
    }
}

/// An open regular file. Its fd is replaced when its node's top real
/// object changes (a copy-up through another handle, or after a rotation
/// turned the upper into a lower layer): `open_files` reopens the node's
/// object with `flags`.
#[derive(Debug)]
pub struct OpenFile {
    /// Shared with other read-only opens of the same lower file.
    fd: parking_lot::RwLock<DataFd>,
    pub node: Arc<Inode>,
    /// How to open the node's object again (no O_CREAT, O_EXCL, O_TRUNC).
    pub flags: i32,
    /// The node's data version `fd` is of.
    version: AtomicU64,
    /// The rotation count when `fd` was last of the upper layer.
    rotation: AtomicU64,
    /// Its passthrough backing id, held until release.
    pub backing: std::sync::OnceLock<Arc<fuser::BackingId>>,
}

impl OpenFile {
    pub fn fd(&self) -> Arc<OwnedFd> {
        Arc::clone(&self.fd.read().fd)
    }

    /// The fd and, when its file is a lower layer's, whose bytes never
    /// change, the place for its mapping (one that was the upper when
    /// opened stays mutable: an unlinked file may still be written after a
    /// rotation).
    pub fn data_fd(&self) -> (Arc<OwnedFd>, Option<Arc<LowerMap>>) {
        let d = self.fd.read();
        (Arc::clone(&d.fd), d.lower.clone())
    }

    /// Whether `fd` is of the node's top object as it is now.
    pub fn is_current(&self) -> bool {
        self.version.load(Ordering::SeqCst) == self.node.data_version()
    }

    pub fn rotation(&self) -> u64 {
        self.rotation.load(Ordering::SeqCst)
    }

    pub fn set_rotation(&self, r: u64) {
        self.rotation.store(r, Ordering::SeqCst);
    }

    /// Puts `fd`, of the node's data version `version`, in place.
    pub fn replace(&self, fd: Arc<OwnedFd>, immutable: bool, version: u64) {
        *self.fd.write() = DataFd::new(fd, immutable);
        self.version.store(version, Ordering::SeqCst);
    }
}
