//! Copy-up: giving a lower object an upper twin before its first change.
//!
//! The copy is built in the work directory — data (reflink, else
//! copy_file_range over data extents only, so holes stay holes), owner,
//! xattrs, the `overlay.origin` handle of the lower file, times and mode —
//! made durable, then put in the upper parent: a regular file's copy is
//! an unnamed (`O_TMPFILE`) file linked into place, anything else a staged
//! name renamed into place. A crash at any moment leaves either no upper
//! copy or a complete one; the staged leftovers are removed at the next
//! mount. Parents are copied up first. Each inode has
//! its own copy-up lock, so concurrent writers of one file produce one copy
//! and a long data copy never blocks other files.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::ids::{NodeId, RealKey};
use crate::inode::{Inode, RealEntry, RealFd};
use crate::origin;
use crate::overlay::{errno, LayerFs, UpperCtx};
use crate::sys::{self, TimeSpec};
use crate::whiteout::{self, DirMarks, XattrNs};
use crate::workdir::Staged;
use crate::xattrs::CAPS;

/// Set once FICLONE failed for lack of support.
static NO_REFLINK: AtomicBool = AtomicBool::new(false);
/// Set once the work directory could not make or link an `O_TMPFILE` copy.
static NO_TMPFILE: AtomicBool = AtomicBool::new(false);
/// Files up to this size are copied in one go, without looking for holes.
const SMALL_FILE: u64 = 64 * 1024;

/// Copies `len` bytes of file data, keeping holes: only the extents
/// SEEK_DATA reports are copied; the size is set at the end.
pub fn copy_data(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    if !NO_REFLINK.load(Ordering::Relaxed) {
        match sys::ficlone(dst, src) {
            Ok(()) => return Ok(()),
            // The upper filesystem cannot share extents: stop asking.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP)
                        | Some(libc::EXDEV)
                        | Some(libc::EINVAL)
                        | Some(libc::ENOTTY)
                ) =>
            {
                NO_REFLINK.store(true, Ordering::Relaxed)
            }
            Err(_) => {}
        }
    }
    if len <= SMALL_FILE {
        // Too small for holes to matter: one copy, no extent walk; the
        // size needs setting only if the source shrank meanwhile.
        if copy_range(src, dst, 0, len)? < len {
            return sys::ftruncate(dst, len);
        }
        return Ok(());
    }
    let mut off: u64 = 0;
    let mut end: u64 = 0;
    while off < len {
        let data = match sys::lseek(src, off as i64, libc::SEEK_DATA) {
            Ok(d) => d as u64,
            // No data past `off`: the rest is a hole.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
            Err(e) => return Err(e),
        };
        let hole = match sys::lseek(src, data as i64, libc::SEEK_HOLE) {
            Ok(h) => (h as u64).min(len),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => len,
            Err(e) => return Err(e),
        };
        end = copy_range(src, dst, data, hole)?;
        off = hole;
    }
    // A hole at the end (or a source that shrank) leaves the size short.
    if end < len {
        sys::ftruncate(dst, len)?;
    }
    Ok(())
}

/// Copies bytes `from..to`; returns where the copy ended (short of `to`
/// only if the source ended first).
fn copy_range(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, mut from: u64, to: u64) -> io::Result<u64> {
    let mut fallback = false;
    while from < to {
        let chunk = ((to - from) as usize).min(1 << 30);
        if !fallback {
            match sys::copy_file_range(src, from, dst, from, chunk) {
                Ok(0) => return Ok(from), // source shrank: nothing more to copy
                Ok(n) => {
                    from += n as u64;
                    continue;
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EXDEV)
                            | Some(libc::EINVAL)
                            | Some(libc::ENOSYS)
                            | Some(libc::EOPNOTSUPP)
                    ) =>
                {
                    fallback = true;
                }
                Err(e) => return Err(e),
            }
        }
        let mut buf = vec![0u8; chunk.min(1 << 20)];
        let n = sys::pread(src, &mut buf, from)?;
        if n == 0 {
            return Ok(from);
        }
        let mut done = 0;
        while done < n {
            done += sys::pwrite(dst, &buf[done..n], from + done as u64)?;
        }
        from += n as u64;
    }
    Ok(from)
}

/// Copies every xattr but overlay's private ones; returns whether the
/// source has a `security.capability` (listed: the copy may have it). A
/// failure fails the copy-up (a copy missing its capabilities or ACLs is
/// not a faithful copy), except an SELinux label the upper filesystem
/// assigns itself.
pub fn copy_xattrs(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> io::Result<bool> {
    let list = match sys::listxattr_fd(src) {
        Ok(l) => l,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(false),
        Err(e) => return Err(e),
    };
    let caps = list.split(|&b| b == 0).any(|n| n == CAPS);
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if whiteout::is_private_xattr(name) {
            continue;
        }
        let c = sys::cstr(OsStr::from_bytes(name))?;
        let value = match sys::getxattr_fd(src, &c) {
            Ok(v) => v,
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(e),
        };
        if let Err(e) = sys::setxattr_fd(dst, &c, &value, 0) {
            if name == b"security.selinux" {
                continue;
            }
            return Err(e);
        }
    }
    Ok(caps)
}

fn time_of(sec: i64, nsec: i64) -> TimeSpec {
    TimeSpec::Set(sec, nsec)
}

/// How much of a file a copy-up brings up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMode {
    /// Data and metadata.
    Full,
    /// Metadata only, the data staying in the lower file (kernel
    /// overlayfs' metacopy; only with `-o metacopy=on`).
    MetaOnly,
    /// Metadata and an empty file: the caller truncates it anyway.
    Truncated,
}

/// The index entry name of an origin: its handle in hex, as kernel
/// overlayfs names `WORKDIR/index` entries.
pub fn index_name(origin: &[u8]) -> std::ffi::OsString {
    let mut s = String::with_capacity(origin.len() * 2);
    for b in origin {
        s.push_str(&format!("{b:02x}"));
    }
    s.into()
}

/// Everything building one copy needs, and nothing more: the upper's
/// context, how to copy, and what the filesystem knows of the source.
pub struct CopyJob<'a> {
    pub upper: &'a UpperCtx,
    pub mode: CopyMode,
    /// The source, opened for reading (a copy of its data only).
    pub src_data: Option<BorrowedFd<'a>>,
    /// Link the copy into the index (a lower file with several names).
    pub indexed: bool,
    /// The source's origin handle, kernel format (None where its
    /// filesystem has no lasting handles).
    pub origin: Option<Vec<u8>>,
    /// Ids are squashed: an owner the upper cannot be given is no error.
    pub ids_squashed: bool,
}

impl CopyJob<'_> {
    fn chown(&self, fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
        if self.upper.created_owner == Some((uid, gid)) {
            // Made with that owner already (root-owned image files, as
            // root): the chown would change nothing.
            return Ok(());
        }
        match sys::fchown_fd(fd, uid, gid) {
            Err(e) if self.ids_squashed && e.raw_os_error() == Some(libc::EPERM) => Ok(()),
            r => r,
        }
    }

    /// Records where an upper object came from, in the kernel's format.
    /// Filesystems that cannot make file handles get no origin, as with
    /// kernel overlayfs.
    fn set_origin(&self, dst: BorrowedFd<'_>) -> io::Result<Option<Vec<u8>>> {
        let up = self.upper;
        if up.oci_whiteouts {
            return Ok(None);
        }
        let Some(v) = self.origin.clone() else {
            return Ok(None);
        };
        match sys::setxattr_fd(dst, &up.ns.name("origin"), &v, 0) {
            // user.* xattrs are refused on symlinks and devices: such an
            // upper simply has no origin, as with kernel userxattr mounts.
            Err(e) if up.ns == XattrNs::User && e.raw_os_error() == Some(libc::EPERM) => Ok(None),
            Err(e) => Err(e),
            Ok(()) => Ok(Some(v)),
        }
    }
}

/// The lock of the parent-times window of copy-ups into `parent`: one of a
/// few shared by all directories (a holder keeps it for one rename or
/// link), so
/// no directory needs a lock of its own.
fn parent_times_lock(parent: BorrowedFd<'_>) -> io::Result<parking_lot::MutexGuard<'static, ()>> {
    static LOCKS: [parking_lot::Mutex<()>; 64] = [const { parking_lot::Mutex::new(()) }; 64];
    let key = RealKey::of(&sys::fstat(parent)?);
    let stripe = (key.ino ^ key.dev.rotate_left(32)) as usize % LOCKS.len();
    Ok(LOCKS[stripe].lock())
}

/// The copy [`stage_copy`] made.
struct Copied {
    /// An O_PATH fd of the new object.
    fd: OwnedFd,
    /// It was linked into the index.
    indexed: bool,
    /// It has no `security.capability` (its source had none).
    caps_absent: bool,
}

/// Builds the copy of `src` (whose stat is `st`) and puts it at `name` in
/// `parent_upper`: a regular file as an unnamed file of the work
/// directory's filesystem, linked into place once complete (as kernel
/// overlayfs does); anything else, or a file linked into the index, under
/// a staged name in the work directory, renamed into place.
fn stage_copy(
    job: &CopyJob<'_>,
    src: &RealEntry,
    st: &sys::Stat,
    parent_upper: BorrowedFd<'_>,
    name: &OsStr,
) -> io::Result<Copied> {
    let copying = Copying {
        job,
        src,
        st,
        parent_upper,
        name,
    };
    let into_index = job.indexed && job.upper.work.index_fd().is_some();
    if st.st_mode & libc::S_IFMT == libc::S_IFREG
        && !into_index
        && !NO_TMPFILE.load(Ordering::Relaxed)
    {
        if let Some(copied) = copying.unnamed()? {
            return Ok(copied);
        }
    }
    copying.named()
}

/// One copy being made: of `src` (whose stat is `st`), to `name` in
/// `parent_upper`.
#[derive(Clone, Copy)]
struct Copying<'a> {
    job: &'a CopyJob<'a>,
    src: &'a RealEntry,
    st: &'a sys::Stat,
    parent_upper: BorrowedFd<'a>,
    name: &'a OsStr,
}

/// The data of a regular file's copy, as the mode asks; returns whether
/// data was copied (and so needs an fsync before the copy is named).
fn copy_file_data(job: &CopyJob<'_>, st: &sys::Stat, dst: BorrowedFd<'_>) -> io::Result<bool> {
    match job.mode {
        CopyMode::Full => {
            // `copy_up_with` opens a regular source for reading whenever
            // its data is copied.
            let srcf = job.src_data.ok_or_else(|| errno(libc::EBADF))?;
            copy_data(srcf, dst, st.st_size as u64)?;
            // Only copied data needs an fsync before the copy is named,
            // as with kernel overlayfs (metadata is journaled).
            Ok(st.st_size > 0)
        }
        // Same size, no blocks: reads go to the lower file.
        CopyMode::MetaOnly => sys::ftruncate(dst, st.st_size as u64).map(|()| false),
        CopyMode::Truncated => Ok(false),
    }
}

/// Sets what the copy `fd` takes from its source besides the data:
/// owner first (chown clears setuid bits and capabilities), then xattrs,
/// origin and times, as kernel overlayfs; the mode comes last, from the
/// caller. Returns the origin set and whether the source has a
/// `security.capability`.
fn copy_metadata(
    job: &CopyJob<'_>,
    src: &RealEntry,
    st: &sys::Stat,
    fd: BorrowedFd<'_>,
) -> io::Result<(Option<Vec<u8>>, bool)> {
    let up = job.upper;
    job.chown(fd, st.st_uid, st.st_gid)?;
    // An upper without xattrs (OCI format) cannot keep them.
    let caps = !up.oci_whiteouts && copy_xattrs(src.fd.get()?.as_fd(), fd)?;
    let origin = job.set_origin(fd)?;
    if job.mode == CopyMode::MetaOnly {
        sys::setxattr_fd(fd, &up.ns.name("metacopy"), b"", 0)?;
    }
    sys::utimens_at(
        fd,
        OsStr::new(""),
        time_of(st.st_atime, st.st_atime_nsec),
        time_of(st.st_mtime, st.st_mtime_nsec),
    )?;
    Ok((origin, caps))
}

/// Makes `name` in `parent_upper` by `place`, keeping the parent's times:
/// kernel overlayfs keeps them across a copy-up, as the directory did not
/// change as the user sees it. Held from the read of the times to their
/// restore: two copy-ups into one directory interleaved there would have
/// one put back the time the other's entry had set.
fn name_keeping_parent_times(
    parent_upper: BorrowedFd<'_>,
    place: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
    let _times = parent_times_lock(parent_upper)?;
    let pst = sys::fstat(parent_upper)?;
    place()?;
    let _ = sys::utimens_at(
        parent_upper,
        OsStr::new(""),
        time_of(pst.st_atime, pst.st_atime_nsec),
        time_of(pst.st_mtime, pst.st_mtime_nsec),
    );
    Ok(())
}

impl Copying<'_> {
    /// The copy of a regular file made as an unnamed (`O_TMPFILE`) file in
    /// the work directory's filesystem and linked at `name` once complete and
    /// durable. A crash before the link leaves nothing to clean up, and its
    /// fsync writes the file alone, not a work-directory entry as well.
    /// `None` where the upper cannot make or link such a file: the caller
    /// stages a named copy instead, and later copy-ups go that way at once.
    fn unnamed(self) -> io::Result<Option<Copied>> {
        let (job, src, st) = (self.job, self.src, self.st);
        let (parent_upper, name) = (self.parent_upper, self.name);
        let up = job.upper;
        // The upper cannot do it: this copy and every later one are
        // staged by name.
        let refused = |what: &str, e: io::Error| {
            log::info!("copy-up: {what} ({e}); staging copies by name");
            NO_TMPFILE.store(true, Ordering::Relaxed);
            Ok(None)
        };
        let dst = match sys::openat(
            up.work.fd(),
            OsStr::new("."),
            libc::O_TMPFILE | libc::O_RDWR,
            0o600,
        ) {
            Ok(fd) => fd,
            // EISDIR/EINVAL: kernels and filesystems that predate the flag.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL)
                ) =>
            {
                return refused("no O_TMPFILE in the work directory", e)
            }
            Err(e) => return Err(e),
        };
        let synced = copy_file_data(job, st, dst.as_fd())?;
        let (_origin, caps) = copy_metadata(job, src, st, dst.as_fd())?;
        sys::fchmod(dst.as_fd(), st.st_mode & 0o7777)?;
        if synced && up.fsync {
            sys::fsync(dst.as_fd(), false)?;
        }
        // The copy is held by an O_PATH fd, as every upper object is (an
        // fd open for writing would make the file busy to exec). Taken
        // before the link: once the copy has its name, nothing may fail.
        let fd = sys::reopen(dst.as_fd(), libc::O_PATH)?;
        let linked = name_keeping_parent_times(parent_upper, || {
            // A link makes a name as a NOREPLACE rename does; where that
            // rename is emulated, its check must not race this name.
            let _names = up.renames.name_guard();
            sys::link_fd(dst.as_fd(), parent_upper, name)
        });
        match linked {
            Ok(()) => {}
            // An upper that makes no hard links (the file is dropped at
            // close): EPERM from most, ENOSYS/EOPNOTSUPP from a FUSE or
            // network filesystem without the operation.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EPERM) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
                ) =>
            {
                return refused("cannot link an O_TMPFILE copy", e)
            }
            Err(e) => return Err(e),
        }
        Ok(Some(Copied {
            fd,
            indexed: false,
            caps_absent: !caps,
        }))
    }

    /// The copy built under a staged name in the work directory and renamed
    /// to `name` in `parent_upper`.
    fn named(self) -> io::Result<Copied> {
        let Copying { job, src, st, .. } = self;
        let (parent_upper, name) = (self.parent_upper, self.name);
        let (up, indexed) = (job.upper, job.indexed);
        let work = &up.work;
        // A copy that will be linked into the index carries, in its staged
        // name, the nlink delta right while it is staged (see
        // `Staged::index_link`).
        let staged = if indexed && work.index_fd().is_some() {
            Staged::index_link(work, st.st_nlink as i64 - 2)
        } else {
            Staged::new(work)
        };
        let fmt = st.st_mode & libc::S_IFMT;
        let mut data_fd = None;
        match fmt {
            libc::S_IFREG => {
                let dst = sys::openat(
                    work.fd(),
                    &staged.name,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                    0o600,
                )?;
                if copy_file_data(job, st, dst.as_fd())? {
                    data_fd = Some(dst);
                }
            }
            libc::S_IFDIR => sys::mkdirat(work.fd(), &staged.name, 0o700)?,
            libc::S_IFLNK => {
                let target = sys::readlink_fd(src.fd.get()?.as_fd())?;
                sys::symlinkat(OsStr::from_bytes(&target), work.fd(), &staged.name)?;
            }
            _ => sys::mknodat(work.fd(), &staged.name, st.st_mode, st.st_rdev)?,
        }
        let fd = sys::openat(work.fd(), &staged.name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        // The mode last, as kernel overlayfs: an unprivileged daemon may set
        // `user.*` xattrs only on a file its mode lets it write (a 0400 lower
        // file would fail its copy-up).
        let (origin, caps) = copy_metadata(job, src, st, fd.as_fd())?;
        if let Some(d) = &data_fd {
            if up.fsync {
                sys::fsync(d.as_fd(), false)?;
            }
        }
        let index_at = match (indexed, origin, work.index_fd()) {
            (true, Some(origin), Some(index)) => Some((origin, index)),
            _ => None,
        };
        if index_at.is_some() {
            // Overlay nlink = upper nlink + delta: the lower names all
            // stay visible, while the upper inode gains the index link
            // and the target name.
            let delta = st.st_nlink as i64 - 2;
            sys::setxattr_fd(
                fd.as_fd(),
                &up.ns.name("nlink"),
                format!("U{delta:+}").as_bytes(),
                0,
            )?;
        }
        if fmt != libc::S_IFLNK {
            sys::fchmod_fd(fd.as_fd(), st.st_mode & 0o7777)?;
        }
        let in_index = index_at.is_some();
        if let Some((origin, index)) = index_at {
            sys::link_fd(fd.as_fd(), index, &index_name(&origin))?;
            crate::sys::crashpoint::reached("copyup-indexed");
        }
        name_keeping_parent_times(parent_upper, || {
            up.renames
                .noreplace(work.fd(), &staged.name, parent_upper, name)
        })?;
        staged.commit();
        Ok(Copied {
            fd,
            indexed: in_index,
            caps_absent: !caps,
        })
    }
}

impl LayerFs {
    /// Ensures `inode` has an upper object with its data, and returns it.
    /// Directories get only the directory itself; their entries stay below.
    pub fn copy_up(&self, inode: &Arc<Inode>) -> io::Result<RealEntry> {
        self.copy_up_with(inode, CopyMode::Full)
    }

    /// Copy-up for a change that does not touch the data (chmod, chown,
    /// utimens, xattrs): metadata only where metacopy is on.
    pub fn copy_up_meta(&self, inode: &Arc<Inode>) -> io::Result<RealEntry> {
        self.copy_up_with(inode, CopyMode::MetaOnly)
    }

    pub fn copy_up_with(&self, inode: &Arc<Inode>, mode: CopyMode) -> io::Result<RealEntry> {
        let up = self.upper_ctx()?;
        {
            let s = inode.state();
            let top = &s.reals[0];
            if top.layer == up.idx
                && (inode.is_dir() || s.reals.len() == 1 || mode == CopyMode::MetaOnly)
            {
                return Ok(top.clone());
            }
        }
        let _guard = inode.copy_lock.lock();
        // Another thread may have finished the copy while we waited.
        let (top, nreals) = {
            let s = inode.state();
            (s.reals[0].clone(), s.reals.len())
        };
        if top.layer == up.idx {
            if inode.is_dir() || nreals == 1 || mode == CopyMode::MetaOnly {
                return Ok(top);
            }
            return self.complete_metacopy(inode, mode);
        }
        let st = top.fd.stat()?;
        let regular = st.st_mode & libc::S_IFMT == libc::S_IFREG;
        let mode = match mode {
            CopyMode::MetaOnly if !(self.opts.metacopy && regular && st.st_nlink == 1) => {
                CopyMode::Full
            }
            m => m,
        };
        // One fd of the source for the whole copy (a lower file is
        // otherwise reopened by name at every use). A file whose data is
        // copied is opened for reading at once: that fd serves the data
        // copy as well, where an O_PATH one would be reopened through
        // /proc for it.
        let reads_data = regular && mode == CopyMode::Full;
        let src_fd = if reads_data {
            Arc::new(top.fd.open(libc::O_RDONLY)?)
        } else {
            top.fd.get()?
        };
        let top = RealEntry {
            fd: RealFd::Held(Arc::clone(&src_fd)),
            ..top
        };
        let (parent_ino, name) = {
            let s = inode.state();
            (s.parent, s.name.clone())
        };
        self.copy_up_ancestors(parent_ino)?;
        let parent = self.inode(parent_ino)?;
        let parent_up = self.copy_up(&parent)?;
        // A lower file with several names goes through the index, so that
        // every name keeps reaching the one upper copy.
        let hardlinked = regular && st.st_nlink > 1 && mode != CopyMode::MetaOnly;
        let job = CopyJob {
            upper: self.upper_ctx()?,
            mode,
            src_data: reads_data.then(|| src_fd.as_fd()),
            indexed: hardlinked,
            origin: self.origin_of(&top),
            ids_squashed: self.opts.ids.squashed(),
        };
        // The whole copy fits or none is made; a directory is charged
        // whatever is left, so that a full volume can still be cleaned.
        let cost = match mode {
            CopyMode::Truncated => 0,
            _ => crate::capacity::charge(&st),
        };
        let room =
            crate::capacity::reserve(self.capacity(), if inode.is_dir() { 0 } else { cost })?;
        let parent_fd = parent_up.fd.get()?;
        let Copied {
            fd,
            indexed,
            caps_absent,
        } = stage_copy(&job, &top, &st, parent_fd.as_fd(), &name)?;
        room.keep();
        if let Some(c) = self.capacity().filter(|_| inode.is_dir()) {
            c.force(cost);
        }
        let ust = sys::fstat(fd.as_fd())?;
        self.numbering.copied_up(RealKey::of(&ust), inode.st_ino);
        if indexed {
            inode.set_nlink_delta(Some(st.st_nlink as i64 - ust.st_nlink as i64));
        } else if hardlinked {
            // No index here (the lower's filesystem has no lasting file
            // handles, or the upper no xattrs): every name of the file this
            // mount has seen is linked to the copy in the upper, so each
            // keeps showing the one file, now and after a remount; names
            // not seen yet stay the lower file, under a node of their own
            // (as with kernel overlayfs' index=off).
            self.numbering.renumber(RealKey::of(&st));
            let others = inode.state().other_names.clone();
            for (parent, other) in others {
                if let Err(e) = self.link_name_up(fd.as_fd(), parent, &other) {
                    log::warn!("cannot link {other:?} to the copy of its hard link: {e}");
                }
            }
        }
        let fd = Arc::new(fd);
        let in_hand = (!inode.is_dir()).then(|| Arc::clone(&fd));
        let entry = RealEntry {
            layer: up.idx,
            // An indexed copy has several names: it is held, never named.
            fd: self.upper_ref(fd, inode.is_dir(), || {
                (!indexed).then(|| (parent_fd, Arc::from(name.as_os_str())))
            }),
            marks: DirMarks::default(),
        };
        inode.copied_up(entry.clone(), inode.is_dir() || mode == CopyMode::MetaOnly);
        inode.set_caps_absent(caps_absent);
        if inode.is_dir() {
            // Now merged, it shows nlink 1 as kernel overlayfs does; the
            // kernel refreshes only the directory a change was made in,
            // not the ancestors copied up on the way.
            self.attributes_changed(inode.ino);
        }
        // The caller acts on a file's copy at once (an open reopens it):
        // the fd in hand saves reaching it again by handle or name. The
        // inode keeps the lasting reference.
        Ok(match in_hand {
            Some(fd) => RealEntry {
                fd: RealFd::Held(fd),
                ..entry
            },
            None => entry,
        })
    }

    /// Copies up the ancestors of directory `ino` that are not in the
    /// upper yet, top down, so that the copy-up of an object deep in a
    /// lower tree recurses one level only: a recursion as deep as the tree
    /// (10,000 levels in a hostile image) would overflow the worker
    /// thread's stack and end the daemon.
    fn copy_up_ancestors(&self, ino: NodeId) -> io::Result<()> {
        let up = self.upper_ctx()?;
        let mut missing = Vec::new();
        let mut cur = ino;
        // The parent links end at the root; the bound only guards a bug.
        for _ in 0..(1 << 24) {
            let inode = self.inode(cur)?;
            let (in_upper, parent) = {
                let s = inode.state();
                (s.reals[0].layer == up.idx, s.parent)
            };
            if in_upper || cur == crate::inode::ROOT_INO {
                for dir in missing.iter().rev() {
                    self.copy_up(dir)?;
                }
                return Ok(());
            }
            missing.push(inode);
            cur = parent;
        }
        Err(io::Error::from_raw_os_error(libc::ELOOP))
    }

    /// Brings the data of a metacopy file up, in place: the metacopy mark
    /// is removed only once the data is durable, so a crash leaves a
    /// metacopy that still reads from below.
    fn complete_metacopy(&self, inode: &Arc<Inode>, mode: CopyMode) -> io::Result<RealEntry> {
        let up = self.upper_ctx()?;
        let (upper, lower) = {
            let s = inode.state();
            (s.reals[0].clone(), s.reals[1].clone())
        };
        if mode == CopyMode::Full {
            let st = sys::fstat(upper.fd.get()?.as_fd())?;
            let dst = sys::reopen(upper.fd.get()?.as_fd(), libc::O_WRONLY)?;
            let src = sys::reopen(lower.fd.get()?.as_fd(), libc::O_RDONLY)?;
            copy_data(src.as_fd(), dst.as_fd(), st.st_size as u64)?;
            if up.fsync {
                sys::fsync(dst.as_fd(), false)?;
            }
        }
        match sys::removexattr_fd(upper.fd.get()?.as_fd(), &up.ns.name("metacopy")) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(e),
        }
        inode.data_copied_up();
        Ok(upper)
    }

    /// The origin value (kernel format) of a lower object, if its
    /// filesystem can make file handles.
    pub(crate) fn origin_of(&self, src: &RealEntry) -> Option<Vec<u8>> {
        // Only where handles can be opened again (see `handle_roots`).
        self.numbering.handles().root(src.layer)?;
        let handle = sys::name_to_handle(src.fd.get().ok()?.as_fd()).ok()?;
        origin::encode(&self.numbering.handles().uuid(src.layer), &handle)
    }

    /// Copies up the parent directory of a name operation: the upper dir
    /// fd to act in.
    pub fn upper_dir(&self, dir: &Arc<Inode>) -> io::Result<RealEntry> {
        if !dir.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        self.copy_up(dir)
    }
}
