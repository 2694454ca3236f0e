//! Capacity (`-o capacity=BYTES`): a limit on what the mount's own data
//! may take, enforced by the daemon itself so that it works alike on
//! every filesystem an upper can live on (ext4, XFS, GlusterFS), with no
//! quota support needed there.
//!
//! The count is kept here and nowhere else: one atomic, initialised at
//! mount from a walk of the upper plus `capacity_used=` (what the volume's
//! own read-only layers already hold, which the volume tool measures with
//! [`usage_of`]), charged before an operation makes something and
//! credited when something goes. A rotation keeps it as it is: the old
//! upper becomes a layer that still belongs to the volume.
//!
//! What an object costs is [`charge`]: a regular file its size rounded up
//! to 4 KiB, holes included; a whiteout nothing; anything else one 4 KiB
//! block. Sizes rather than allocated blocks, because a block count is
//! the filesystem's: XFS preallocates past the end of a growing file and
//! gives it back later, GlusterFS reports its bricks' blocks, and reading
//! it before and after each write costs two syscalls and still races with
//! another writer of the file. A size is known before the write is made,
//! so a write that would pass the limit is refused whole, before anything
//! is written.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys;

/// The unit of the count: what a directory, a symlink or a device costs,
/// and what a file's size is rounded up to.
pub const BLOCK: u64 = 4096;

/// What a regular file of `size` bytes costs.
pub fn file_charge(size: u64) -> u64 {
    size.div_ceil(BLOCK).saturating_mul(BLOCK)
}

/// What an object costs, from its stat.
pub fn charge(st: &sys::Stat) -> u64 {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => file_charge(st.st_size as u64),
        // A whiteout: a removal must never need space.
        libc::S_IFCHR if st.st_rdev == 0 => 0,
        _ => BLOCK,
    }
}

/// What the tree under `dir` costs, each inode once: the count a mount
/// starts from. `dir` itself is not counted (an empty upper costs nothing).
pub fn usage_of(dir: &Path) -> io::Result<u64> {
    let fd = sys::open_path(dir, libc::O_RDONLY | libc::O_DIRECTORY)?;
    usage_at(fd)
}

/// [`usage_of`] from an open directory.
pub fn usage_at(dir: OwnedFd) -> io::Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut dirs = vec![dir];
    while let Some(d) = dirs.pop() {
        for e in sys::read_dir_fd(d.as_fd())? {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            let name = OsStr::from_bytes(&e.name);
            let st = match sys::lstatat(d.as_fd(), name) {
                Ok(st) => st,
                // Gone since the listing (a store being cleaned up).
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(e),
            };
            let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            if !is_dir && st.st_nlink > 1 && !seen.insert((st.st_dev, st.st_ino)) {
                continue;
            }
            total = total.saturating_add(charge(&st));
            if is_dir {
                let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
                dirs.push(sys::openat(d.as_fd(), name, flags, 0)?);
            }
        }
    }
    Ok(total)
}

/// The limit and the count of one mount.
#[derive(Debug)]
pub struct Capacity {
    limit: AtomicU64,
    used: AtomicU64,
}

impl Capacity {
    pub fn new(limit: u64, used: u64) -> Capacity {
        Capacity {
            limit: AtomicU64::new(limit),
            used: AtomicU64::new(used),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Sets a new limit; refused (giving the count) below the count.
    pub fn set_limit(&self, limit: u64) -> Result<(), u64> {
        // Under the count's own update, so that no charge slips between
        // the check and the change.
        let mut refused = None;
        let _ = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                if limit < used {
                    refused = Some(used);
                } else {
                    self.limit.store(limit, Ordering::SeqCst);
                }
                None
            });
        refused.map_or(Ok(()), Err)
    }

    /// Takes `bytes` from what is left, or fails with ENOSPC taking nothing.
    pub fn reserve(&self, bytes: u64) -> io::Result<Reservation<'_>> {
        if bytes > 0 {
            self.used
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                    used.checked_add(bytes).filter(|&n| n <= self.limit())
                })
                .map_err(|_| io::Error::from_raw_os_error(libc::ENOSPC))?;
        }
        Ok(Reservation {
            cap: Some(self),
            bytes,
        })
    }

    /// Adds `bytes` whatever the limit: what must not fail for lack of
    /// space (a directory copied up on the way to a removal).
    pub fn force(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::SeqCst);
    }

    /// Gives `bytes` back.
    pub fn credit(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                Some(u.saturating_sub(bytes))
            });
    }

    /// What `statfs` shows for a filesystem of `frsize`-byte blocks
    /// whose real free blocks are `bavail`: (blocks, free, available).
    pub fn statfs_blocks(&self, frsize: u64, bavail: u64) -> (u64, u64, u64) {
        let frsize = frsize.max(1);
        let (limit, used) = (self.limit(), self.used());
        let free = limit.saturating_sub(used) / frsize;
        (limit / frsize, free, free.min(bavail))
    }
}

/// Space taken for a change under way: given back when dropped, unless
/// the change is made (`settle`, `keep`). An unlimited mount's is empty.
#[must_use]
pub struct Reservation<'a> {
    cap: Option<&'a Capacity>,
    bytes: u64,
}

impl Reservation<'_> {
    /// The change is made and took all that was reserved.
    pub fn keep(mut self) {
        self.cap = None;
    }

    /// The change is made and took `actual` bytes (more than reserved when
    /// something else grew the file meanwhile, less when it ended short).
    pub fn settle(mut self, actual: i64) {
        if let Some(cap) = self.cap.take() {
            let reserved = self.bytes as i64;
            if actual > reserved {
                cap.force((actual - reserved) as u64);
            } else {
                cap.credit((reserved - actual) as u64);
            }
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(cap) = self.cap {
            cap.credit(self.bytes);
        }
    }
}

/// Serialises the size changes of one file (a write past its end, a
/// truncate, a fallocate), so that the size read before a change and the
/// one after belong to it alone: one of a few locks shared by all files.
fn size_lock(st: &sys::Stat) -> parking_lot::MutexGuard<'static, ()> {
    static LOCKS: [parking_lot::Mutex<()>; 64] = [const { parking_lot::Mutex::new(()) }; 64];
    let stripe = (st.st_ino ^ st.st_dev.rotate_left(32)) as usize % LOCKS.len();
    LOCKS[stripe].lock()
}

/// Reserves `bytes` for a change on a mount limited by `cap`, or ENOSPC;
/// nothing on an unlimited mount (`None`).
pub fn reserve(cap: Option<&Capacity>, bytes: u64) -> io::Result<Reservation<'_>> {
    match cap {
        Some(c) => c.reserve(bytes),
        None => Ok(Reservation { cap: None, bytes }),
    }
}

/// Gives back what the object `st` cost (its last name went).
pub fn credit_object(cap: Option<&Capacity>, st: &sys::Stat) {
    if let Some(c) = cap {
        c.credit(charge(st));
    }
}

/// Runs `run`, a change of the file `fd` that leaves it at most
/// `most(size before)` bytes long: a growth is reserved first (ENOSPC,
/// nothing done, where it does not fit) and settled to the size the file
/// has after. With no limit, or no growth or shrinking possible, `run`
/// alone.
pub fn resize_file<T>(
    cap: Option<&Capacity>,
    fd: BorrowedFd<'_>,
    most: impl Fn(u64) -> u64,
    run: impl FnOnce() -> io::Result<T>,
) -> io::Result<T> {
    let Some(cap) = cap else {
        return run();
    };
    let st = sys::fstat(fd)?;
    if file_charge(most(st.st_size as u64)) == file_charge(st.st_size as u64) {
        // Within the blocks the file is charged for already (a write
        // inside it, most writes): the kernel holds the inode's lock
        // around a write and a truncate, so its size cannot change under
        // this one.
        return run();
    }
    let _lock = size_lock(&st);
    let old = sys::fstat(fd)?.st_size as u64;
    let r = cap.reserve(file_charge(most(old)).saturating_sub(file_charge(old)))?;
    let out = run();
    let new = sys::fstat(fd).map_or(most(old), |s| s.st_size as u64);
    r.settle(file_charge(new) as i64 - file_charge(old) as i64);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_fit_whole_or_fail() {
        let c = Capacity::new(3 * BLOCK, BLOCK);
        let r = c.reserve(2 * BLOCK).unwrap();
        assert_eq!(c.used(), 3 * BLOCK);
        assert_eq!(
            c.reserve(1).err().and_then(|e| e.raw_os_error()),
            Some(libc::ENOSPC)
        );
        drop(r);
        assert_eq!(c.used(), BLOCK);
        c.reserve(BLOCK).unwrap().settle(10);
        assert_eq!(c.used(), BLOCK + 10);
        c.reserve(BLOCK).unwrap().keep();
        assert_eq!(c.used(), 2 * BLOCK + 10);
        c.credit(u64::MAX);
        assert_eq!(c.used(), 0);
    }

    #[test]
    fn limits_and_statfs() {
        let c = Capacity::new(10 * BLOCK, 4 * BLOCK);
        assert_eq!(c.set_limit(3 * BLOCK), Err(4 * BLOCK));
        assert_eq!(c.limit(), 10 * BLOCK);
        c.set_limit(8 * BLOCK).unwrap();
        assert_eq!(c.statfs_blocks(BLOCK, 1000), (8, 4, 4));
        assert_eq!(c.statfs_blocks(BLOCK, 2), (8, 4, 2));
        assert_eq!(file_charge(0), 0);
        assert_eq!(file_charge(1), BLOCK);
        assert_eq!(file_charge(BLOCK + 1), 2 * BLOCK);
    }

    #[test]
    fn usage_counts_each_inode_once_and_whiteouts_not() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("d/f"), vec![1u8; 5000]).unwrap();
        std::fs::hard_link(t.path().join("d/f"), t.path().join("g")).unwrap();
        std::os::unix::fs::symlink("x", t.path().join("s")).unwrap();
        assert_eq!(usage_of(t.path()).unwrap(), 4 * BLOCK);
    }
}
