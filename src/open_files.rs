//! Open regular files: open and release (the handles given to the kernel
//! are kept in `open_table`, the data path through a handle is
//! `file_data`).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::copyup::CopyMode;
use crate::ids::{FileHandle, NodeId};
use crate::inode::Inode;
use crate::open_table::OpenFile;
use crate::overlay::LayerFs;

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
        let keep = libc::O_ACCMODE | libc::O_APPEND | libc::O_NONBLOCK;
        let again = (flags & keep) | libc::O_NOCTTY;
        let fd = if lower {
            // Lower files never change: one read-only fd serves every
            // read-only open of the file while any is open.
            inode.shared_lower_fd(|| top.fd.open(libc::O_RDONLY))?
        } else {
            Arc::new(top.fd.open(again | (flags & libc::O_TRUNC))?)
        };
        Ok((self.add_file(fd, lower, inode, again), lower))
    }

    /// Registers an open file of `node` (fd opened with `flags`, as it
    /// would be opened again; `immutable` for a lower layer's file).
    pub(crate) fn add_file(
        &self,
        fd: Arc<OwnedFd>,
        immutable: bool,
        node: Arc<Inode>,
        flags: i32,
    ) -> FileHandle {
        let rotation = self.rotations.load(std::sync::atomic::Ordering::SeqCst);
        self.files.add(fd, immutable, node, flags, rotation)
    }

    pub fn file(&self, fh: FileHandle) -> io::Result<Arc<OpenFile>> {
        self.files.get(fh)
    }

    /// The fd to read an open file through: its node's top object as it
    /// is now (reopened if a copy-up replaced the one it was opened on).
    pub(crate) fn read_fd(&self, fh: FileHandle) -> io::Result<Arc<OwnedFd>> {
        let file = self.file(fh)?;
        self.current_fd(&file)
    }

    /// As `read_fd`, with a lower layer's file's mapping place.
    pub(crate) fn read_data_fd(
        &self,
        fh: FileHandle,
    ) -> io::Result<(Arc<OwnedFd>, Option<Arc<crate::open_table::LowerMap>>)> {
        let file = self.file(fh)?;
        self.current_data(&file)
    }

    /// The fd to change an open file through: after a rotation, the file
    /// opened in what is now a lower layer is copied up to the new upper
    /// first (an unlinked one is not: no name of a snapshot reaches it).
    pub(crate) fn write_fd(&self, fh: FileHandle) -> io::Result<Arc<OwnedFd>> {
        let file = self.file(fh)?;
        let now = self.rotations.load(std::sync::atomic::Ordering::SeqCst);
        if file.rotation() != now {
            if !file.node.is_unlinked() && !self.is_upper(file.node.top().layer) {
                self.copy_up_with(&file.node, CopyMode::Full)?;
            }
            file.set_rotation(now);
        }
        self.current_fd(&file)
    }

    fn current_fd(&self, file: &OpenFile) -> io::Result<Arc<OwnedFd>> {
        self.current_data(file).map(|(fd, _)| fd)
    }

    /// The open file's fd of its node's top object as it is now (reopened
    /// if a copy-up replaced it), with its mapping's place.
    fn current_data(
        &self,
        file: &OpenFile,
    ) -> io::Result<(Arc<OwnedFd>, Option<Arc<crate::open_table::LowerMap>>)> {
        if file.is_current() {
            return Ok(file.data_fd());
        }
        let version = file.node.data_version();
        let top = {
            // A metacopy's data is in its lower file.
            let s = file.node.state();
            let writable = file.flags & libc::O_ACCMODE != libc::O_RDONLY;
            match s.reals.get(1) {
                Some(data) if !writable => data.clone(),
                _ => s.reals[0].clone(),
            }
        };
        let fd = Arc::new(top.fd.open(file.flags)?);
        file.replace(fd, !self.is_upper(top.layer), version);
        Ok(file.data_fd())
    }

    pub fn release(&self, fh: FileHandle) {
        self.files.remove(fh);
    }
}
