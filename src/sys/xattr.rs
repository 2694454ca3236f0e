//! Extended attributes of the file an fd refers to, O_PATH fds included
//! (the f* calls refuse those; their /proc magic link serves instead).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::layer_io::step_done;
use super::{cvt_size, proc_fd_path};

/// Runs an xattr call on the file `fd` refers to: its f* form, else (EBADF:
/// an O_PATH fd, which those refuse) its path form on the fd's /proc magic
/// link, kept in `proc` for the caller's next call. The f* form saves a
/// walk of /proc, about 4 µs a call (a copy-up makes two).
fn xattr_call(
    fd: BorrowedFd<'_>,
    proc: &mut Option<std::ffi::CString>,
    direct: impl Fn(libc::c_int) -> isize,
    by_path: impl Fn(*const libc::c_char) -> isize,
) -> io::Result<usize> {
    if proc.is_none() {
        match cvt_size(direct(fd.as_raw_fd())) {
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => {
                *proc = Some(proc_fd_path(fd));
            }
            done => return done,
        }
    }
    let p = proc.as_deref().map_or(std::ptr::null(), CStr::as_ptr);
    cvt_size(by_path(p))
}

/// The value a sized read gives (`call(buffer, length)`, the kernel's
/// xattr convention): grown and asked again on ERANGE, up to `limit`
/// bytes, with a size query (a null buffer) for the length needed.
fn read_sized(
    limit: usize,
    mut call: impl FnMut(*mut libc::c_void, usize) -> io::Result<usize>,
) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        match call(buf.as_mut_ptr().cast(), buf.len()) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) && buf.len() < limit => {
                let need = call(std::ptr::null_mut(), 0)?;
                buf.resize(need.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads an xattr of the file an fd refers to (O_PATH fds included, symlinks
/// included: the /proc magic link lands on the symlink itself).
pub fn getxattr_fd(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let mut proc = None;
    read_sized(1 << 20, |at, len| {
        xattr_call(
            fd,
            &mut proc,
            // SAFETY: `at` is null (a size query) or writable for `len`
            // bytes; the name is a valid C string.
            |f| unsafe { libc::fgetxattr(f, name.as_ptr(), at, len) },
            // SAFETY: as above, and the path is a valid C string.
            |p| unsafe { libc::getxattr(p, name.as_ptr(), at, len) },
        )
    })
}

/// Lists the xattr names of the file an fd refers to, as the kernel returns
/// them: NUL-terminated names back to back.
pub fn listxattr_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut proc = None;
    read_sized(1 << 24, |at, len| {
        xattr_call(
            fd,
            &mut proc,
            // SAFETY: `at` is null (a size query) or writable for `len` bytes.
            |f| unsafe { libc::flistxattr(f, at.cast(), len) },
            // SAFETY: as above, and the path is a valid C string.
            |p| unsafe { libc::listxattr(p, at.cast(), len) },
        )
    })
}

/// Sets an xattr on the file an fd refers to.
pub fn setxattr_fd(fd: BorrowedFd<'_>, name: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
    let (v, len) = (value.as_ptr().cast(), value.len());
    xattr_call(
        fd,
        &mut None,
        // SAFETY: all pointers valid for the given lengths.
        |f| unsafe { libc::fsetxattr(f, name.as_ptr(), v, len, flags) as isize },
        // SAFETY: as above, and the path is a valid C string.
        |p| unsafe { libc::setxattr(p, name.as_ptr(), v, len, flags) as isize },
    )?;
    step_done();
    Ok(())
}

/// Removes an xattr from the file an fd refers to.
pub fn removexattr_fd(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    xattr_call(
        fd,
        &mut None,
        // SAFETY: a valid fd number and C string.
        |f| unsafe { libc::fremovexattr(f, name.as_ptr()) as isize },
        // SAFETY: valid C strings.
        |p| unsafe { libc::removexattr(p, name.as_ptr()) as isize },
    )?;
    step_done();
    Ok(())
}
