//! Mounts: mount(2), umount, private copies of a layer's mount tree.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::{cstr, cvt};

/// `access(path, mode)` for paths the administrator gave at mount time.
pub fn access_path(path: &Path, mode: i32) -> io::Result<()> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: valid C string.
    cvt(unsafe { libc::access(c.as_ptr(), mode) })?;
    Ok(())
}

/// The device (major, minor) of the filesystem whose root is at `path`,
/// from the kernel's cached attributes: `statx` asking for no attribute,
/// with AT_STATX_DONT_SYNC, which a FUSE mount answers without sending its
/// daemon a request, so its own daemon may call this before it serves.
pub fn mounted_dev(path: &Path) -> io::Result<(u32, u32)> {
    let c = cstr(path.as_os_str())?;
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: valid C string and out-pointer for one `struct statx`.
    cvt(unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_STATX_DONT_SYNC | libc::AT_SYMLINK_NOFOLLOW,
            0,
            stx.as_mut_ptr(),
        )
    })?;
    // SAFETY: statx succeeded; the device is filled whatever the mask.
    let stx = unsafe { stx.assume_init() };
    Ok((stx.stx_dev_major, stx.stx_dev_minor))
}

/// `umount2(path, flags)`.
pub fn umount(path: &Path, flags: i32) -> io::Result<()> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: valid C string.
    cvt(unsafe { libc::umount2(c.as_ptr(), flags) })?;
    Ok(())
}

/// A detached, private copy of the mount at `path` (and of the mounts below
/// it if `recursive`), as an O_PATH fd of its root: `open_tree` with
/// `OPEN_TREE_CLONE`, then `mount_setattr` to stop mount events propagating
/// into or out of it.
/// Files opened through it pin the copy, not the mounts the admin sees,
/// which can then be unmounted while the copy lives on (the superblock is
/// shared); the copy goes away with its last open file. Needs
/// CAP_SYS_ADMIN in the mount namespace's user namespace.
pub fn clone_mount_tree(path: &Path, recursive: bool) -> io::Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
    // libc's MS_PRIVATE is a c_ulong; mount_attr wants a u64 on every arch.
    const MS_PRIVATE: u64 = 1 << 18;
    /// `struct mount_attr` (MOUNT_ATTR_SIZE_VER0).
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let c = cstr(path.as_os_str())?;
    let mut flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: valid C string; open_tree returns a new fd or -1.
    let ret = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd was just returned to us and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(ret as RawFd) };
    let attr = MountAttr {
        attr_set: 0,
        attr_clr: 0,
        propagation: MS_PRIVATE,
        userns_fd: 0,
    };
    // SAFETY: the fd is valid, the path is a static empty C string and attr
    // is a live struct of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// `mount(2)`.
pub fn mount(
    source: &OsStr,
    target: &Path,
    fstype: &OsStr,
    flags: libc::c_ulong,
    data: &OsStr,
) -> io::Result<()> {
    let (s, t, f, d) = (
        cstr(source)?,
        cstr(target.as_os_str())?,
        cstr(fstype)?,
        cstr(data)?,
    );
    // SAFETY: all four are valid NUL-terminated strings for the call.
    cvt(unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, d.as_ptr().cast()) })?;
    Ok(())
}
