//! Files, directories, xattrs, links, renames, data and file handles in the
//! layers: everything the filesystem does to real objects.

use std::ffi::OsStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::{cstr, cvt, cvt_size, proc_fd_path, Stat};

/// A step that changes a layer succeeded: a crash test may end the
/// daemon here (`LAYERFS_CRASH_AT=any:N`, see `crashpoint`).
pub(super) fn step_done() {
    super::crashpoint::reached("step");
}

/// `openat(dir, name, flags, mode)`, always with O_CLOEXEC.
pub fn openat(dir: BorrowedFd<'_>, name: &OsStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call;
    // the returned fd is fresh and owned by nobody else.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })?;
    // SAFETY: `fd` was just returned by openat and is not owned elsewhere.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if flags & libc::O_CREAT != 0 {
        step_done();
    }
    Ok(fd)
}

/// `open(path, flags)` for paths the administrator gave at mount time.
pub fn open_path(path: &Path, flags: i32) -> io::Result<OwnedFd> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: valid C string; fresh fd.
    let fd = cvt(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: `fd` was just returned by open.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the file an fd (typically O_PATH) refers to again, with new flags.
/// Goes through /proc/self/fd, which lands on the very same inode without
/// resolving any path inside a layer.
pub fn reopen(fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    let p = proc_fd_path(fd);
    // SAFETY: valid C string; fresh fd.
    let raw = cvt(unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: `raw` was just returned by open.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Opens the directory an fd (typically O_PATH) refers to again, with new
/// flags: `openat(fd, ".")`, without the /proc walk of `reopen`. The walk
/// of "." needs search permission on the directory, which `reopen` does
/// not: for directories already known to be searchable (layer roots,
/// checked at mount).
pub fn reopen_dir(fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: valid C string; fresh fd.
    let raw = cvt(unsafe {
        libc::openat(
            fd.as_raw_fd(),
            c".".as_ptr(),
            flags | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `raw` was just returned by openat.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// `fstat(fd)`; works on O_PATH fds.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    let mut st = MaybeUninit::<Stat>::uninit();
    // SAFETY: `st` is a valid out-pointer for one `struct stat`.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn lstatat(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Stat> {
    let c = cstr(name)?;
    let mut st = MaybeUninit::<Stat>::uninit();
    // SAFETY: valid C string and out-pointer.
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

/// `stat(path)` for paths the administrator gave at mount time.
pub fn stat_path(path: &Path) -> io::Result<Stat> {
    let c = cstr(path.as_os_str())?;
    let mut st = MaybeUninit::<Stat>::uninit();
    // SAFETY: valid C string and out-pointer.
    cvt(unsafe { libc::stat(c.as_ptr(), st.as_mut_ptr()) })?;
    // SAFETY: stat succeeded.
    Ok(unsafe { st.assume_init() })
}

/// The target of the symlink an O_PATH fd refers to (`readlinkat(fd, "")`).
pub fn readlink_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: `buf` is writable for `buf.len()` bytes; "" is a valid C string.
    let n = cvt_size(unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// `fstatvfs(fd)`; works on O_PATH fds.
pub fn fstatvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
    let mut st = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: valid out-pointer.
    cvt(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatvfs succeeded.
    Ok(unsafe { st.assume_init() })
}

/// The filesystem type (`f_type`) of the filesystem holding an fd.
pub fn fstatfs_type(fd: BorrowedFd<'_>) -> io::Result<i64> {
    let mut st = MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: valid out-pointer.
    cvt(unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    #[allow(clippy::unnecessary_cast)] // f_type is not i64 on every target
    // SAFETY: fstatfs succeeded.
    Ok(unsafe { st.assume_init() }.f_type as i64)
}

/// One entry as getdents64 returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDirent {
    pub ino: u64,
    pub d_type: u8,
    pub name: Vec<u8>,
}

/// Reads every entry of a directory opened for reading, `.` and `..`
/// included, in the order the filesystem returns them.
pub fn read_dir_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<RawDirent>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is writable for its length; getdents64 writes at most
        // that many bytes of linux_dirent64 records.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(out);
        }
        parse_dirents(&buf[..n as usize], &mut out);
    }
}

/// Decodes a buffer of linux_dirent64 records (safe byte parsing).
fn parse_dirents(buf: &[u8], out: &mut Vec<RawDirent>) {
    let mut pos = 0;
    while pos + 19 <= buf.len() {
        let ino = u64::from_ne_bytes(buf[pos..pos + 8].try_into().unwrap_or([0; 8]));
        let reclen = u16::from_ne_bytes([buf[pos + 16], buf[pos + 17]]) as usize;
        let d_type = buf[pos + 18];
        if reclen == 0 || pos + reclen > buf.len() {
            break;
        }
        let name_area = &buf[pos + 19..pos + reclen];
        let len = name_area
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(name_area.len());
        out.push(RawDirent {
            ino,
            d_type,
            name: name_area[..len].to_vec(),
        });
        pos += reclen;
    }
}

/// `mkdirat(dir, name, mode)`.
pub fn mkdirat(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) })?;
    step_done();
    Ok(())
}

/// `mknodat(dir, name, mode, rdev)`.
pub fn mknodat(dir: BorrowedFd<'_>, name: &OsStr, mode: u32, rdev: u64) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string.
    cvt(unsafe {
        libc::mknodat(
            dir.as_raw_fd(),
            c.as_ptr(),
            mode as libc::mode_t,
            rdev as libc::dev_t,
        )
    })?;
    step_done();
    Ok(())
}

/// `symlinkat(target, dir, name)`.
pub fn symlinkat(target: &OsStr, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let t = cstr(target)?;
    let c = cstr(name)?;
    // SAFETY: valid C strings.
    cvt(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) })?;
    step_done();
    Ok(())
}

/// `linkat(olddir, old, newdir, new, 0)`.
pub fn linkat(
    olddir: BorrowedFd<'_>,
    old: &OsStr,
    newdir: BorrowedFd<'_>,
    new: &OsStr,
) -> io::Result<()> {
    let (o, n) = (cstr(old)?, cstr(new)?);
    // SAFETY: valid C strings.
    cvt(unsafe {
        libc::linkat(
            olddir.as_raw_fd(),
            o.as_ptr(),
            newdir.as_raw_fd(),
            n.as_ptr(),
            0,
        )
    })?;
    step_done();
    Ok(())
}

/// Links the file `fd` refers to (an unnamed `O_TMPFILE` file included) at
/// `name` in `dir`: by the fd itself (`AT_EMPTY_PATH`, allowed to a caller
/// with CAP_DAC_READ_SEARCH or, since Linux 6.10, to the opener of the
/// file), else through its /proc magic link, which costs a walk of /proc;
/// a refusal of the first way is remembered.
pub fn link_fd(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    static BY_FD_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    use std::sync::atomic::Ordering::Relaxed;
    let c = cstr(name)?;
    if !BY_FD_REFUSED.load(Relaxed) {
        // SAFETY: valid fds and C strings.
        match cvt(unsafe {
            libc::linkat(
                fd.as_raw_fd(),
                c"".as_ptr(),
                dir.as_raw_fd(),
                c.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        }) {
            Ok(_) => {
                step_done();
                return Ok(());
            }
            // Refused for want of the capability: ENOENT.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    let p = proc_fd_path(fd);
    // SAFETY: valid C strings.
    cvt(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            p.as_ptr(),
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })?;
    // The magic link worked where the fd did not: not a file without links.
    BY_FD_REFUSED.store(true, Relaxed);
    step_done();
    Ok(())
}

/// `unlinkat(dir, name, flags)` (AT_REMOVEDIR for directories).
pub fn unlinkat(dir: BorrowedFd<'_>, name: &OsStr, flags: i32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) })?;
    step_done();
    Ok(())
}

/// `renameat2(olddir, old, newdir, new, flags)`.
pub fn renameat2(
    olddir: BorrowedFd<'_>,
    old: &OsStr,
    newdir: BorrowedFd<'_>,
    new: &OsStr,
    flags: u32,
) -> io::Result<()> {
    let o = cstr(old)?;
    let n = cstr(new)?;
    // SAFETY: valid C strings.
    cvt(unsafe {
        libc::renameat2(
            olddir.as_raw_fd(),
            o.as_ptr(),
            newdir.as_raw_fd(),
            n.as_ptr(),
            flags,
        )
    })?;
    step_done();
    Ok(())
}

/// Changes owner of the file an fd refers to, never following a symlink
/// (`fchownat(fd, "", ..., AT_EMPTY_PATH)`). `u32::MAX` leaves an id as is.
pub fn fchown_fd(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: "" is a valid C string.
    cvt(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    step_done();
    Ok(())
}

/// chmod of the file an fd refers to (not for symlinks, which have no mode
/// of their own on Linux).
pub fn fchmod_fd(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    let p = proc_fd_path(fd);
    // SAFETY: valid C string.
    cvt(unsafe { libc::chmod(p.as_ptr(), mode as libc::mode_t) })?;
    step_done();
    Ok(())
}

/// `fchmod(fd, mode)` of an fd open for I/O (an O_PATH fd needs
/// [`fchmod_fd`]): no walk of `/proc`.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed fd.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) })?;
    step_done();
    Ok(())
}

/// A timestamp for [`utimens_at`]: a time, now, or left alone.
#[derive(Debug, Clone, Copy)]
pub enum TimeSpec {
    Set(i64, i64),
    Now,
    Omit,
}

fn timespec(t: TimeSpec) -> libc::timespec {
    match t {
        TimeSpec::Set(sec, nsec) => libc::timespec {
            tv_sec: sec as libc::time_t,
            tv_nsec: nsec as libc::c_long,
        },
        TimeSpec::Now => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        TimeSpec::Omit => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    }
}

/// `utimensat(dir, name, times, AT_SYMLINK_NOFOLLOW)`; with an empty name,
/// the file `dir` itself refers to (AT_EMPTY_PATH, O_PATH fds included).
pub fn utimens_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    atime: TimeSpec,
    mtime: TimeSpec,
) -> io::Result<()> {
    let ts = [timespec(atime), timespec(mtime)];
    let mut flags = libc::AT_SYMLINK_NOFOLLOW;
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    let c = cstr(name)?;
    // SAFETY: valid C string and a two-element timespec array.
    cvt(unsafe { libc::utimensat(dir.as_raw_fd(), c.as_ptr(), ts.as_ptr(), flags) })?;
    step_done();
    Ok(())
}

/// `ftruncate(fd, len)`.
pub fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    // SAFETY: no pointers involved.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) })?;
    step_done();
    Ok(())
}

/// `pwrite(fd, buf, offset)`.
pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> io::Result<usize> {
    // SAFETY: `buf` is readable for its length.
    cvt_size(unsafe {
        libc::pwrite(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            offset as libc::off_t,
        )
    })
}

/// `fsync` or `fdatasync`.
pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()> {
    // SAFETY: no pointers involved.
    cvt(unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })?;
    step_done();
    Ok(())
}

/// `fallocate(fd, mode, offset, len)`.
pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: no pointers involved.
    cvt(unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    })?;
    Ok(())
}

/// `lseek(fd, offset, whence)`.
pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: no pointers involved.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), offset as libc::off_t, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as i64)
    }
}

/// `copy_file_range` between explicit offsets; returns bytes copied.
pub fn copy_file_range(
    fd_in: BorrowedFd<'_>,
    off_in: u64,
    fd_out: BorrowedFd<'_>,
    off_out: u64,
    len: usize,
) -> io::Result<usize> {
    let mut oi = off_in as libc::loff_t;
    let mut oo = off_out as libc::loff_t;
    // SAFETY: both offsets are valid in/out pointers for the call.
    cvt_size(unsafe {
        libc::copy_file_range(
            fd_in.as_raw_fd(),
            &mut oi,
            fd_out.as_raw_fd(),
            &mut oo,
            len,
            0,
        )
    })
}

/// `ioctl(dst, FICLONE, src)`: a reflink copy of the whole file.
pub fn ficlone(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> io::Result<()> {
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: FICLONE takes the source fd as its integer argument.
    cvt(unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) })?;
    Ok(())
}

/// A file handle as name_to_handle_at returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHandleBytes {
    pub handle_type: i32,
    pub bytes: Vec<u8>,
}

#[repr(C)]
struct RawHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; 128],
}

/// `name_to_handle_at(fd, "", AT_EMPTY_PATH)`: the handle of the file an fd
/// refers to (what overlayfs records as a copy-up origin).
pub fn name_to_handle(fd: BorrowedFd<'_>) -> io::Result<FileHandleBytes> {
    let mut h = RawHandle {
        handle_bytes: 128,
        handle_type: 0,
        f_handle: [0; 128],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `h` is a file_handle header followed by 128 bytes of room, as
    // handle_bytes says; mount_id is a valid out-pointer.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            fd.as_raw_fd(),
            c"".as_ptr(),
            &mut h as *mut RawHandle,
            &mut mount_id as *mut libc::c_int,
            libc::AT_EMPTY_PATH,
        ) as libc::c_int
    })?;
    let n = (h.handle_bytes as usize).min(128);
    Ok(FileHandleBytes {
        handle_type: h.handle_type,
        bytes: h.f_handle[..n].to_vec(),
    })
}

/// `open_by_handle_at(mount_fd, handle, O_PATH)` (needs
/// CAP_DAC_READ_SEARCH).
pub fn open_by_handle(mount_fd: BorrowedFd<'_>, handle: &FileHandleBytes) -> io::Result<OwnedFd> {
    if handle.bytes.len() > 128 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut h = RawHandle {
        handle_bytes: handle.bytes.len() as u32,
        handle_type: handle.handle_type,
        f_handle: [0; 128],
    };
    h.f_handle[..handle.bytes.len()].copy_from_slice(&handle.bytes);
    // SAFETY: `h` is a valid file_handle; the returned fd is fresh.
    let fd = cvt(unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_raw_fd(),
            &mut h as *mut RawHandle,
            libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        ) as libc::c_int
    })?;
    // SAFETY: `fd` was just returned by the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The filesystem UUID (`FS_IOC_GETFSUUID`, kernel 6.8+) of the filesystem
/// holding an fd opened for reading; all zeros when the filesystem has none.
pub fn fs_uuid(fd: BorrowedFd<'_>) -> [u8; 16] {
    #[repr(C)]
    struct FsUuid2 {
        len: u8,
        uuid: [u8; 16],
    }
    const FS_IOC_GETFSUUID: libc::c_ulong = 0x8011_1500;
    let mut u = FsUuid2 {
        len: 0,
        uuid: [0; 16],
    };
    // SAFETY: the ioctl writes one struct fsuuid2 into `u`.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            FS_IOC_GETFSUUID as _,
            &mut u as *mut FsUuid2,
        )
    };
    if r == 0 && u.len == 16 {
        u.uuid
    } else {
        [0; 16]
    }
}

/// `flock(fd, op)`.
pub fn flock(fd: BorrowedFd<'_>, op: i32) -> io::Result<()> {
    // SAFETY: no pointers involved.
    cvt(unsafe { libc::flock(fd.as_raw_fd(), op) })?;
    Ok(())
}

/// `pread` into a buffer, retried on EINTR by the caller's loop.
pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length.
    cvt_size(unsafe {
        libc::pread(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            offset as libc::off_t,
        )
    })
}

/// Takes (or, with `F_UNLCK`, drops) an open-file-description lock on the
/// whole file, without waiting. Unlike flock, such a record lock is passed
/// to network filesystems' servers (GlusterFS, NFS), so it excludes other
/// hosts too; unlike a classic POSIX lock, it belongs to the open file, so
/// it survives the daemon's fork and goes when the file is closed.
pub fn ofd_setlk(fd: BorrowedFd<'_>, kind: i32) -> io::Result<()> {
    // SAFETY: an all-zero flock is a valid value of this plain C struct.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: `fl` is a valid flock that outlives the call.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &fl) })?;
    Ok(())
}

/// Whether another open file description holds a lock on the file that
/// would conflict with a `kind` lock (`F_OFD_GETLK`: nothing is taken).
pub fn ofd_conflicts(fd: BorrowedFd<'_>, kind: i32) -> io::Result<bool> {
    // SAFETY: an all-zero flock is a valid value of this plain C struct.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: `fl` is a valid flock that outlives the call, which fills it.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) })?;
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// `syncfs`: everything written to the filesystem holding `fd` is durable.
pub fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: no pointers involved.
    cvt(unsafe { libc::syncfs(fd.as_raw_fd()) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dirent_records() {
        // Two records: "a" (ino 5, DT_REG) and "bc" (ino 7, DT_DIR), 24 bytes each.
        let mut buf = Vec::new();
        for (ino, t, name) in [(5u64, 8u8, &b"a"[..]), (7, 4, b"bc")] {
            let mut rec = vec![0u8; 24];
            rec[..8].copy_from_slice(&ino.to_ne_bytes());
            rec[16..18].copy_from_slice(&24u16.to_ne_bytes());
            rec[18] = t;
            rec[19..19 + name.len()].copy_from_slice(name);
            buf.extend(rec);
        }
        let mut out = Vec::new();
        parse_dirents(&buf, &mut out);
        assert_eq!(
            out,
            vec![
                RawDirent {
                    ino: 5,
                    d_type: 8,
                    name: b"a".to_vec()
                },
                RawDirent {
                    ino: 7,
                    d_type: 4,
                    name: b"bc".to_vec()
                },
            ]
        );
    }
}
