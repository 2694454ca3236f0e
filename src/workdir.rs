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
use std::time::{Duration, Instant};

use std::os::unix::ffi::OsStrExt;

use crate::sys;
use crate::whiteout::XattrNs;

/// Opens (by `open`) and flock's a directory, refusing if another mount
/// holds it; `dir` is its name for messages.
fn lock_dir(open: &Path, dir: &Path, what: &str) -> io::Result<OwnedFd> {
    let fd = sys::open_path(open, libc::O_RDONLY | libc::O_DIRECTORY)?;
    // umount(8) returns before the previous daemon has exited: give a
    // mount that is going away a moment to let go.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match sys::flock(fd.as_fd(), libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => return Ok(fd),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::ResourceBusy,
                        format!(
                            "{what} {} is in use by another layerfs mount",
                            dir.display()
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    }
}

#[derive(Debug)]
pub struct WorkDir {
    /// O_PATH fd of `WORKDIR/work`.
    fd: OwnedFd,
    path: PathBuf,
    /// WORKDIR itself, opened and flock'ed: a second mount on the same
    /// workdir is refused while this one lives.
    _lock: OwnedFd,
    _upper_lock: OwnedFd,
    /// Where overlay xattrs are written (see `probe_features`).
    ns: XattrNs,
    /// O_PATH fd of `WORKDIR/index`: one link per copied-up lower hardlink,
    /// named by the lower file's origin handle (kernel overlayfs' layout).
    index: Option<OwnedFd>,
    next: AtomicU64,
}

impl WorkDir {
    /// Locks `upperdir` and `workdir` against a second mount, creates
    /// `workdir/work` if needed, empties it, and checks the filesystem has
    /// what overlay metadata needs (xattrs, d_type). `userxattr` asks for
    /// `user.overlay.*` xattrs even where `trusted.` could be written.
    pub fn prepare(workdir: &Path, upperdir: &Path, userxattr: bool) -> io::Result<WorkDir> {
        WorkDir::prepare_at(workdir, upperdir, workdir, upperdir, userxattr)
    }

    /// As `prepare`, opening the two directories by other paths than the
    /// names messages give them (the mount code reaches them through a
    /// private copy of their mount).
    pub fn prepare_at(
        workdir: &Path,
        upperdir: &Path,
        open_work: &Path,
        open_upper: &Path,
        userxattr: bool,
    ) -> io::Result<WorkDir> {
        let upper_lock = lock_dir(open_upper, upperdir, "upperdir")?;
        let lock = lock_dir(open_work, workdir, "workdir")?;
        let path = open_work.join("work");
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
        let mut wd = WorkDir {
            fd,
            path,
            _lock: lock,
            _upper_lock: upper_lock,
            index,
            ns: XattrNs::Trusted,
            next: AtomicU64::new(1),
        };
        wd.clean()?;
        wd.ns = wd.probe_features(upperdir, userxattr)?;
        Ok(wd)
    }

    /// The namespace overlay xattrs are written in: `trusted.` where this
    /// process may (real root), else `user.` (as kernel overlayfs'
    /// `userxattr`). Fails, naming the problem, on a filesystem without
    /// xattrs or without d_type in directory entries.
    fn probe_features(&self, upperdir: &Path, userxattr: bool) -> io::Result<XattrNs> {
        let staged = Staged::new(self);
        let f = sys::openat(
            self.fd(),
            &staged.name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            0o600,
        )?;
        let mut chosen = None;
        let order: &[XattrNs] = if userxattr {
            &[XattrNs::User]
        } else {
            &[XattrNs::Trusted, XattrNs::User]
        };
        for &ns in order {
            match sys::setxattr_fd(f.as_fd(), &ns.name("probe"), b"1", 0) {
                Ok(()) => {
                    chosen = Some(ns);
                    break;
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => break,
                Err(e) => return Err(e),
            }
        }
        let Some(ns) = chosen else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "the filesystem of upperdir {} does not support extended attributes, which overlay whiteouts and copy-up need",
                    upperdir.display()
                ),
            ));
        };
        let dir = sys::reopen(self.fd(), libc::O_RDONLY | libc::O_DIRECTORY)?;
        let entries = sys::read_dir_fd(dir.as_fd())?;
        if entries
            .iter()
            .any(|e| e.name == staged.name.as_bytes() && e.d_type == libc::DT_UNKNOWN)
        {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "the filesystem of upperdir {} does not report file types in directory entries (d_type)",
                    upperdir.display()
                ),
            ));
        }
        Ok(ns)
    }

    pub fn xattr_ns(&self) -> XattrNs {
        self.ns
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
