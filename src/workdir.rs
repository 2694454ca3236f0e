//! The work directory: where copy-ups and replacements are staged before an
//! atomic rename into the upper layer, as kernel overlayfs does with
//! `WORKDIR/work`. It is locked for the life of the mount and emptied at
//! mount time, which removes what a crash left half-built.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys;

#[derive(Debug)]
pub struct WorkDir {
    /// O_PATH fd of `WORKDIR/work`.
    fd: OwnedFd,
    path: PathBuf,
    /// WORKDIR itself, opened and flock'ed: a second mount on the same
    /// workdir is refused while this one lives.
    _lock: OwnedFd,
    /// O_PATH fd of `WORKDIR/index`: one link per copied-up lower hardlink,
    /// named by the lower file's origin handle (kernel overlayfs' layout).
    index: Option<OwnedFd>,
    next: AtomicU64,
}

impl WorkDir {
    /// Locks `workdir`, creates `workdir/work` if needed and empties it.
    pub fn prepare(workdir: &Path) -> io::Result<WorkDir> {
        let lock = sys::open_path(workdir, libc::O_RDONLY | libc::O_DIRECTORY)?;
        if let Err(e) = sys::flock(lock.as_fd(), libc::LOCK_EX | libc::LOCK_NB) {
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!("workdir {} is in use by another mount", workdir.display()),
                ));
            }
            return Err(e);
        }
        let path = workdir.join("work");
        // Kernel overlayfs makes it mode 0 (only the mounter's privileges get
        // in); an unprivileged mounter needs to reach it with its own rights.
        let mode = if sys::geteuid() == 0 { 0 } else { 0o700 };
        match sys::mkdirat(lock.as_fd(), OsStr::new("work"), mode) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        let fd = sys::openat(
            lock.as_fd(),
            OsStr::new("work"),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        let index = match sys::mkdirat(lock.as_fd(), OsStr::new("index"), mode) {
            Ok(()) => true,
            Err(e) => e.raw_os_error() == Some(libc::EEXIST),
        };
        let index = if index {
            sys::openat(
                lock.as_fd(),
                OsStr::new("index"),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )
            .ok()
        } else {
            None
        };
        let wd = WorkDir {
            fd,
            path,
            _lock: lock,
            index,
            next: AtomicU64::new(1),
        };
        wd.clean()?;
        Ok(wd)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn index_fd(&self) -> Option<BorrowedFd<'_>> {
        self.index.as_ref().map(|f| f.as_fd())
    }

    /// A name no other staging operation of this mount uses.
    pub fn temp_name(&self) -> OsString {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        OsString::from(format!("#lfs{n:x}"))
    }

    /// Removes a staged entry and everything below it.
    pub fn remove(&self, name: &OsStr) -> io::Result<()> {
        let p = self.path.join(name);
        match fs::symlink_metadata(&p) {
            Ok(md) if md.is_dir() => fs::remove_dir_all(&p),
            Ok(_) => fs::remove_file(&p),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Empties the work directory (leftovers of a crash).
    fn clean(&self) -> io::Result<()> {
        for e in fs::read_dir(&self.path)? {
            let e = e?;
            self.remove(&e.file_name())?;
        }
        Ok(())
    }
}

/// A staged entry in the work directory, removed on drop unless it was
/// renamed into place ([`Staged::commit`]).
pub struct Staged<'a> {
    work: &'a WorkDir,
    pub name: OsString,
    armed: bool,
}

impl<'a> Staged<'a> {
    pub fn new(work: &'a WorkDir) -> Staged<'a> {
        Staged {
            name: work.temp_name(),
            work,
            armed: true,
        }
    }

    /// The entry has left the work directory: nothing to clean.
    pub fn commit(mut self) {
        self.armed = false;
    }
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = self.work.remove(&self.name) {
                log::warn!("cannot remove staged {:?}: {e}", self.name);
            }
        }
    }
}
