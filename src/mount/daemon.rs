//! The daemon's life: the fork that leaves the caller waiting for the
//! mount, serving the session, shutdown on signals, and stdio once
//! detached.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use super::session::{fuse_config, mount_direct, settings, unmount};
use super::{MountError, MountRequest, Plan};
use crate::layers::LayerStack;
use crate::options::MountOptions;
use crate::overlay::{FsOptions, LayerFs};
use crate::sys;
use crate::workdir::WorkDir;

/// How long a signalled daemon waits for its session to end after the
/// unmount before it exits anyway (see `serve`). The session normally ends
/// within milliseconds; this only bounds the wait for other holders.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The daemon's first byte to the waiting parent: the mount is up.
pub(super) const MOUNT_UP: u8 = b'+';
/// The daemon's first byte when the mount failed; why follows, to the end.
pub(super) const MOUNT_FAILED: u8 = b'!';

/// Which side of the fork this process is on.
pub(super) enum Side {
    /// The caller, to wait on this socket for the daemon's word.
    Parent(UnixStream),
    /// The daemon, in a session of its own, to say on this socket whether
    /// the mount came up.
    Daemon(UnixStream),
}

/// Forks the daemon off the calling process (see `Side`).
pub(super) fn fork() -> Result<Side, MountError> {
    let (parent_end, child_end) =
        UnixStream::pair().map_err(MountError::step("cannot create a socket pair"))?;
    match sys::fork().map_err(MountError::step("cannot fork"))? {
        sys::Forked::Parent { .. } => {
            drop(child_end);
            Ok(Side::Parent(parent_end))
        }
        sys::Forked::Child => {
            drop(parent_end);
            let _ = sys::setsid();
            Ok(Side::Daemon(child_end))
        }
    }
}

/// The foreground parent's side: waits for the daemon to say the mount is
/// up, or why it failed. Success is one byte, taken as it comes: waiting
/// for the daemon's end of the socket to close as well cost the mount
/// command up to 1.5 ms more (the daemon may be scheduled out between
/// its write and its close).
pub(super) fn wait_for_child(mut sock: UnixStream) -> Result<(), MountError> {
    let mut status = [0u8; 1];
    if sock.read_exact(&mut status).is_err() {
        return Err(MountError::Daemon(
            "the layerfs daemon exited before the mount was up".into(),
        ));
    }
    if status[0] == MOUNT_UP {
        return Ok(());
    }
    let mut msg = String::new();
    let _ = sock.read_to_string(&mut msg);
    Err(MountError::Daemon(msg))
}

pub(super) fn serve(
    req: &MountRequest,
    plan: &Plan,
    stack: LayerStack,
    fs_opts: FsOptions,
    work: Option<WorkDir>,
    notify: &mut Option<UnixStream>,
) -> Result<(), MountError> {
    // The kernel sends modes already masked by the caller's umask.
    sys::set_umask(0);
    reserve_fd_table(&stack);
    let locks = work.as_ref().and_then(|w| {
        w.lock_release()
            .map_err(|e| log::debug!("no early release of the work dir locks: {e}"))
            .ok()
    });
    let fs = LayerFs::new(stack, fs_opts, work).map_err(MountError::step("cannot start"))?;
    let fs = Arc::new(fs);
    // Kept past the session, which drops its own reference as it ends: the
    // locks are released before the state is torn down (see below).
    let state = Arc::clone(&fs);
    // Signals go to one waiting thread only; block them before any thread
    // (fuser's workers included) exists.
    sys::block_termination_signals().map_err(MountError::step("cannot set up signal handling"))?;
    let ms = settings(req, plan);
    let config = fuse_config(&ms);
    let fuse = crate::fs::Fuse::new(fs, ms.threads);
    let mount_err = |e: io::Error| {
        MountError::step(format!("cannot mount on {}", plan.mountpoint.display()))(e)
    };
    let session = match mount_direct(&ms, &plan.mountpoint).map_err(mount_err)? {
        Some(dev) => fuser::Session::from_fd(fuse, dev, ms.acl, config).map_err(|e| {
            unmount(&plan.mountpoint);
            mount_err(e)
        })?,
        None => fuser::Session::new(fuse, &plan.mountpoint, &config).map_err(mount_err)?,
    };
    state.set_notifier(session.notifier());
    if let Some(path) = req.options.control() {
        crate::control::serve(Arc::clone(&state), path).map_err(|e| {
            unmount(&plan.mountpoint);
            MountError::step("cannot start the control socket")(e)
        })?;
    }
    if let Some(l) = &locks {
        l.note_mount(&plan.mountpoint);
    }
    if let Some(mut n) = notify.take() {
        let _ = n.write_all(&[MOUNT_UP]);
        drop(n);
        detach_stdio(&req.options);
    }
    let mountpoint = plan.mountpoint.clone();
    std::thread::Builder::new()
        .name("layerfs-signals".into())
        .spawn(move || {
            let sig = sys::wait_termination_signal();
            log::info!("signal {sig}: unmounting {}", mountpoint.display());
            unmount(&mountpoint);
            // The session ends by itself once the kernel tears the mount
            // down, which it does within this unmount unless something
            // else still holds the mount: a copy in a mount namespace made
            // after the mount, or a busy mount's open files after the lazy
            // unmount. Those can last forever, and with them this daemon and
            // its locks on upper and work; the signal asks for an end. So
            // after a grace period the process exits: closing its /dev/fuse
            // fds makes the kernel abort the connection (the remaining
            // copies answer ENOTCONN, as after any daemon's end), whatever
            // holds the mount and with no privilege or fusectl needed. What
            // was in flight is safe as after a crash: changes are staged in
            // the work dir and renamed into place.
            std::thread::sleep(SHUTDOWN_GRACE);
            log::warn!(
                "{} is still in use (open files, or another mount namespace) {}s after signal {sig}: ending the daemon; those uses now get ENOTCONN",
                mountpoint.display(),
                SHUTDOWN_GRACE.as_secs()
            );
            std::process::exit(0);
        })
        .map_err(MountError::step("cannot start the signal thread"))?;
    let result = session.run();
    // While the work dir is still locked: no mount of the same volume can
    // have bound the path anew yet.
    if let Some(path) = req.options.control() {
        let _ = std::fs::remove_file(path);
    }
    if result.is_err() {
        unmount(&plan.mountpoint);
    } else if let Some(locks) = locks {
        // Every worker has been joined (an error may mean one panicked
        // and others still run): nothing uses the work dir any more. A
        // mount of the same upper need not wait for the teardown.
        locks.release();
    }
    if result.is_ok() {
        // Nothing is left to do with the state but free it, and the
        // process ends right after: the kernel takes its memory and fds in
        // one go. Freeing it piece by piece (an inode table of tens of
        // thousands of entries after a walk of an image, each with its
        // fds and allocations) took most of a daemon's CPU after `umount`
        // (16 ms after a 33,000-entry walk), beside whatever the host does
        // next, often the next mount.
        std::mem::forget(state);
    } else {
        drop(state);
    }
    result.map_err(MountError::step("session ended with an error"))
}

/// How many descriptors the daemon's fd table is made to hold before its
/// first thread starts (fewer if the open-file limit is lower).
const FD_TABLE_RESERVE: u64 = 8192;

/// Grows the fd table while the process has one thread (see
/// `sys::reserve_fd_table`). Each time a multi-threaded daemon crossed a
/// power of two of open fds (64, 128, ...) the request that opened the fd,
/// and every other fd allocation meanwhile, waited for an RCU grace period:
/// 5 to 10 ms, paid by the first `ls` of every mount (its lookups cross 64
/// fds with 10 layers, 256 with 50).
fn reserve_fd_table(stack: &LayerStack) {
    let Some((_, layer)) = stack.iter().next() else {
        return;
    };
    let n = sys::nofile_limit().map_or(1024, |l| l.min(FD_TABLE_RESERVE));
    if let Err(e) = sys::reserve_fd_table(layer.root.as_fd(), n as i32) {
        log::debug!("cannot grow the fd table to {n}: {e}");
    }
}

/// Points stdio at /dev/null (stderr at the log file, when one is given)
/// so the daemon holds no terminal.
fn detach_stdio(o: &MountOptions) {
    let Ok(null) = sys::open_path(Path::new("/dev/null"), libc::O_RDWR) else {
        return;
    };
    let _ = sys::dup2(null.as_fd(), 0);
    let _ = sys::dup2(null.as_fd(), 1);
    let logfile = o.extra.iter().find(|(k, _)| k == "logfile").map(|(_, p)| p);
    let log = logfile.map(|path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    });
    match log {
        Some(Ok(f)) => {
            let _ = sys::dup2(f.as_fd(), 2);
        }
        other => {
            let _ = sys::dup2(null.as_fd(), 2);
            crate::logging::to_syslog();
            if let (Some(Err(e)), Some(path)) = (other, logfile) {
                log::warn!("cannot open the log file {path}: {e}; logging to syslog");
            }
        }
    }
    let _ = std::env::set_current_dir("/");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FDSize in /proc/self/status: the slots of this process's fd table.
    fn fd_table_size() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("FDSize:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn reserving_grows_the_fd_table_and_leaves_no_fd_open() {
        let before = fd_table_size();
        let want = (before * 4).min(sys::nofile_limit().unwrap());
        assert!(want > before, "open-file limit {want} too low to test");
        let dir = tempfile::tempdir().unwrap();
        let fd = sys::open_path(dir.path(), libc::O_PATH | libc::O_DIRECTORY).unwrap();
        sys::reserve_fd_table(fd.as_fd(), want as i32).unwrap();
        assert!(fd_table_size() >= want, "{} < {want}", fd_table_size());
        // The copy made to grow it is closed again.
        let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
        assert!(open < want / 2, "{open} fds open");
    }
}
