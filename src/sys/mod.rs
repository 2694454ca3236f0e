//! Thin, safe wrappers over the syscalls layerfs needs, by domain: reading
//! and writing layers (`layer_io`, `xattr`), the daemon's process
//! (`process`), and mounts (`mount`). Callers use them as `sys::NAME`.
//!
//! This is the only module allowed to use `unsafe`. Every wrapper takes
//! borrowed fds and byte names and returns owned fds or plain data, and turns
//! `-1`/errno into `std::io::Error` carrying the errno of the failed call.
#![allow(unsafe_code)]

pub mod crashpoint;
mod layer_io;
mod mapping;
mod mount;
mod process;
mod xattr;

pub use layer_io::*;
pub use mapping::FileRange;
pub use mount::*;
pub use process::*;
pub use xattr::*;

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

/// `struct stat` as the kernel fills it.
pub type Stat = libc::stat;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// A name or path as a NUL-terminated string; a name with an inner NUL is
/// EINVAL, as the kernel would say.
pub fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The path under /proc that reopens an fd, used for calls that have no
/// fd-relative form that accepts O_PATH fds (xattrs, reopen with new flags).
fn proc_fd_path(fd: BorrowedFd<'_>) -> CString {
    // Cannot contain NUL: digits only.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}
