//! Renames in the upper layer, with the fallbacks its filesystem needs
//! (found by `features::probe`): RENAME_NOREPLACE emulated under a lock,
//! RENAME_EXCHANGE through the work directory, RENAME_WHITEOUT or a
//! whiteout made after.

use std::ffi::OsStr;
use std::io;
use std::os::fd::BorrowedFd;

use parking_lot::{Mutex, MutexGuard};

use crate::features::Features;
use crate::sys;
use crate::workdir::WorkDir;

/// Renames in the upper layer, with the fallbacks its filesystem needs.
#[derive(Debug)]
pub struct UpperRenames {
    features: Features,
    /// Held from the check to the rename of an emulated NOREPLACE, and by
    /// whoever makes a name in the upper meanwhile (see `name_guard`).
    lock: Mutex<()>,
}

impl UpperRenames {
    pub fn new(features: Features) -> UpperRenames {
        UpperRenames {
            features,
            lock: Mutex::new(()),
        }
    }

    pub fn features(&self) -> &Features {
        &self.features
    }

    /// To be held while making a name in an upper directory where a
    /// NOREPLACE rename may race (only needed, and only taken, while
    /// NOREPLACE is emulated): the check-then-rename must not move over a
    /// name made between its check and its rename.
    pub fn name_guard(&self) -> Option<MutexGuard<'_, ()>> {
        (!self.features.rename_noreplace).then(|| self.lock.lock())
    }

    /// `rename(2)` that fails with EEXIST rather than replace `new`.
    pub fn noreplace(
        &self,
        olddir: BorrowedFd<'_>,
        old: &OsStr,
        newdir: BorrowedFd<'_>,
        new: &OsStr,
    ) -> io::Result<()> {
        if self.features.rename_noreplace {
            return sys::renameat2(olddir, old, newdir, new, libc::RENAME_NOREPLACE);
        }
        let _held = self.lock.lock();
        match sys::lstatat(newdir, new) {
            Ok(_) => Err(io::Error::from_raw_os_error(libc::EEXIST)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                sys::renameat2(olddir, old, newdir, new, 0)
            }
            Err(e) => Err(e),
        }
    }

    /// Puts the entry `staged` of the work directory at `new`, whatever is
    /// there, and leaves what was there (if anything) at `staged`, for the
    /// caller to remove: one RENAME_EXCHANGE; without it, one rename where
    /// the kinds allow (a file over a file is atomic), else — a directory
    /// over a file or the reverse, which rename(2) refuses — by moving
    /// what is at `new` to `staged`'s place first. In that last case the
    /// name is briefly absent, and a crash right then leaves it so.
    pub fn replace_from_work(
        &self,
        work: &WorkDir,
        staged: &OsStr,
        newdir: BorrowedFd<'_>,
        new: &OsStr,
    ) -> io::Result<()> {
        if self.features.rename_exchange {
            return sys::renameat2(work.fd(), staged, newdir, new, libc::RENAME_EXCHANGE);
        }
        match sys::renameat2(work.fd(), staged, newdir, new, 0) {
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EISDIR)
                        | Some(libc::ENOTDIR)
                        | Some(libc::ENOTEMPTY)
                        | Some(libc::EEXIST)
                ) =>
            {
                let aside = work.temp_name();
                sys::renameat2(newdir, new, work.fd(), &aside, 0)?;
                let r = sys::renameat2(work.fd(), staged, newdir, new, 0);
                if r.is_err() {
                    // Put it back: nothing changed.
                    sys::renameat2(work.fd(), &aside, newdir, new, 0)?;
                    return r;
                }
                sys::renameat2(work.fd(), &aside, work.fd(), staged, 0)
            }
            r => r,
        }
    }

    /// Swaps `a` and `b`: one RENAME_EXCHANGE, else three renames through
    /// the work directory.
    pub fn exchange(
        &self,
        work: &WorkDir,
        adir: BorrowedFd<'_>,
        a: &OsStr,
        bdir: BorrowedFd<'_>,
        b: &OsStr,
    ) -> io::Result<()> {
        if self.features.rename_exchange {
            return sys::renameat2(adir, a, bdir, b, libc::RENAME_EXCHANGE);
        }
        let _held = self.lock.lock();
        let tmp = work.temp_name();
        sys::renameat2(bdir, b, work.fd(), &tmp, 0)?;
        if let Err(e) = sys::renameat2(adir, a, bdir, b, 0) {
            // Put `b` back: nothing changed.
            sys::renameat2(work.fd(), &tmp, bdir, b, 0)?;
            return Err(e);
        }
        sys::renameat2(work.fd(), &tmp, adir, a, 0)
    }

    /// Renames `old` to `new` (failing with EEXIST if `noreplace`) and
    /// leaves a char 0/0 whiteout at `old` in the same rename where the
    /// filesystem can. Returns whether it did; if not, the caller makes
    /// the whiteout.
    pub fn with_whiteout(
        &self,
        olddir: BorrowedFd<'_>,
        old: &OsStr,
        newdir: BorrowedFd<'_>,
        new: &OsStr,
        noreplace: bool,
    ) -> io::Result<bool> {
        if self.features.rename_whiteout && (self.features.rename_noreplace || !noreplace) {
            let nr = if noreplace { libc::RENAME_NOREPLACE } else { 0 };
            match sys::renameat2(olddir, old, newdir, new, nr | libc::RENAME_WHITEOUT) {
                Ok(()) => return Ok(true),
                // Refused for this caller (unprivileged): the plain way.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EINVAL)) => {}
                Err(e) => return Err(e),
            }
        }
        if noreplace {
            self.noreplace(olddir, old, newdir, new)?;
        } else {
            sys::renameat2(olddir, old, newdir, new, 0)?;
        }
        Ok(false)
    }
}
