//! The daemon's process: fork, sessions, signals, limits, credentials,
//! memory.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::cvt;

/// Raises the soft RLIMIT_NOFILE to the hard limit: every live inode holds an
/// O_PATH fd, so the default 1024 is far too low for an image's tree.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = MaybeUninit::<libc::rlimit>::uninit();
    // SAFETY: valid out-pointer.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, lim.as_mut_ptr()) })?;
    // SAFETY: getrlimit succeeded.
    let mut lim = unsafe { lim.assume_init() };
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: valid pointer to an initialised rlimit.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    }
    Ok(lim.rlim_cur)
}

/// Pins glibc's mmap threshold, so that each worker's 16 MiB request
/// buffer (fuser allocates it zeroed when the worker starts) is a fresh
/// mapping, faulted in only where requests land. Left dynamic, the
/// threshold rises to 16 MiB as soon as the handshake's buffer of that
/// size is freed; every worker's buffer then comes from a malloc arena,
/// whose reused part calloc must clear: 33 page faults and a 132 KiB
/// memset per worker, about 3 of the 12 ms of CPU a 16-thread daemon
/// spent over a mount, its first `ls` and its unmount (perf). The price
/// is at the end: each worker unmaps its buffer as it exits, about 1 ms
/// more of the exiting daemon's CPU. 4 MiB keeps smaller buffers (read
/// replies, copy chunks of 1 MiB) in the arenas, as before, and the trim
/// threshold stays where the dynamic rule would put it (twice), so
/// freeing them does not hand pages back only to fault them in again.
#[cfg(target_env = "gnu")]
pub fn tune_allocator() {
    const MMAP_AT_LEAST: libc::c_int = 4 << 20;
    // SAFETY: mallopt only changes allocator parameters; any value is
    // accepted or refused (returning 0), never undefined.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_AT_LEAST) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, 2 * MMAP_AT_LEAST) == 1
    };
    if !ok {
        log::debug!("mallopt refused the mmap/trim thresholds");
    }
}

/// Other C libraries have no dynamic mmap threshold to pin.
#[cfg(not(target_env = "gnu"))]
pub fn tune_allocator() {}

/// The open-file limit (soft) of this process.
pub fn nofile_limit() -> io::Result<u64> {
    let mut lim = MaybeUninit::<libc::rlimit>::uninit();
    // SAFETY: valid out-pointer.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, lim.as_mut_ptr()) })?;
    // SAFETY: getrlimit succeeded.
    Ok(unsafe { lim.assume_init() }.rlim_cur)
}

/// The outcome of `fork()` for the caller.
pub enum Forked {
    Parent { child: libc::pid_t },
    Child,
}

/// `fork()`. Only call while the process has a single thread.
pub fn fork() -> io::Result<Forked> {
    // SAFETY: the caller guarantees the process is single-threaded, so the
    // child inherits no lock held by another thread.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        child => Ok(Forked::Parent { child }),
    }
}

/// `setsid()`: the daemon leaves the caller's session and terminal.
pub fn setsid() -> io::Result<()> {
    // SAFETY: no pointers involved.
    cvt(unsafe { libc::setsid() })?;
    Ok(())
}

/// `dup2(from, to)`, used to point stdio at /dev/null in the daemon.
pub fn dup2(from: BorrowedFd<'_>, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 only manipulates the fd table; `to` is one of 0..=2.
    cvt(unsafe { libc::dup2(from.as_raw_fd(), to) })?;
    Ok(())
}

/// Blocks the termination signals in the calling thread (and in every thread
/// it creates afterwards), so that one thread can wait for them with
/// [`wait_termination_signal`].
pub fn block_termination_signals() -> io::Result<()> {
    let set = termination_sigset();
    // SAFETY: valid sigset pointer; null old-set pointer is allowed.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

fn termination_sigset() -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset only writes into it.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(set.as_mut_ptr(), s);
        }
        set.assume_init()
    }
}

/// Waits until SIGTERM, SIGINT or SIGHUP arrives; returns its number.
pub fn wait_termination_signal() -> i32 {
    let set = termination_sigset();
    let mut sig = 0;
    // SAFETY: valid pointers; the signals are blocked in this thread.
    unsafe { libc::sigwait(&set, &mut sig) };
    sig
}

/// Real uid and gid of this process.
pub fn getuid_gid() -> (u32, u32) {
    // SAFETY: no arguments, cannot fail.
    unsafe { (libc::getuid(), libc::getgid()) }
}

/// Gives freed heap memory back to the kernel (glibc `malloc_trim`):
/// glibc keeps what its per-thread arenas freed, so after the kernel
/// forgets a large walk's inodes the daemon's RSS would stay at the walk's
/// peak.
#[cfg(target_env = "gnu")]
pub fn malloc_trim() {
    // SAFETY: malloc_trim has no preconditions; it only walks the heap.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(target_env = "gnu"))]
pub fn malloc_trim() {}

/// Sets the process umask; the daemon runs with 0 so that the modes the
/// kernel sends (already masked by the caller's umask) land unchanged.
pub fn set_umask(mask: u32) -> u32 {
    // SAFETY: no pointers involved, cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

/// Effective uid of this process.
pub fn geteuid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() }
}

/// Effective gid of this process.
pub fn getegid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::getegid() }
}

/// Whether this process runs in the initial user namespace (where root
/// holds the capabilities FUSE passthrough needs), not in a container's.
pub fn in_initial_user_ns() -> bool {
    std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|m| {
        let f: Vec<&str> = m.split_whitespace().collect();
        f == ["0", "0", "4294967295"]
    })
}

/// This machine's host name, for lock holder notes.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length, and gethostname writes
    // at most that many bytes.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "unknown-host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Grows this process's fd table to hold at least `n` descriptors: a copy
/// of `fd` is made at a number at or above `n - 1` and closed again (the
/// kernel never shrinks the table). Growing the table of a process with
/// several threads waits for an RCU grace period (`expand_fdtable`,
/// milliseconds), during which every fd allocation of every thread waits;
/// a single-threaded process grows it without that wait.
pub fn reserve_fd_table(fd: BorrowedFd<'_>, n: RawFd) -> io::Result<()> {
    // SAFETY: F_DUPFD_CLOEXEC only creates a descriptor, owned right below.
    let copy = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, n.max(1) - 1) })?;
    // SAFETY: `copy` was just created and nothing else owns it.
    drop(unsafe { OwnedFd::from_raw_fd(copy) });
    Ok(())
}

/// Ends this process at once with SIGKILL, as `kill -9` from outside
/// would: no destructor, no buffered write, no reply to the kernel.
pub fn kill_self() -> ! {
    // SAFETY: getpid cannot fail; SIGKILL to ourselves ends the process
    // before kill returns.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    // Only reached if the signal was somehow not delivered.
    std::process::abort()
}

/// The effective uid of the process at the other end of a unix socket
/// (SO_PEERCRED, as it was when it connected).
pub fn peer_uid(sock: BorrowedFd<'_>) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}
