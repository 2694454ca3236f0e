//! From validated options to a served mount: checks that name the problem,
//! the fuser session, daemonizing, and clean shutdown on signals.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{Config, MountOption, SessionACL};

use crate::layers::LayerStack;
use crate::options::MountOptions;
use crate::overlay::{FsOptions, LayerFs};
use crate::sys;
use crate::workdir::WorkDir;

/// A start-up failure, worded for the person who typed the command; each
/// kind keeps what it is about, and a failed step the error of its syscall.
#[derive(Debug)]
pub enum MountError {
    /// Options missing, or not fitting together.
    Options(String),
    /// A directory given on the command line cannot serve.
    Dir {
        what: &'static str,
        path: PathBuf,
        problem: String,
    },
    /// Directories that must be apart overlap, or must share a filesystem
    /// and do not.
    Layout(String),
    /// The work dir cannot be used (held by another daemon, which is named;
    /// or not in a state to recover).
    WorkDir(String),
    /// A start-up step failed.
    Step { step: String, err: io::Error },
    /// The daemon failed before the mount was up, and said why.
    Daemon(String),
}

impl MountError {
    fn dir(what: &'static str, path: &Path, problem: impl Into<String>) -> MountError {
        MountError::Dir {
            what,
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }

    fn step(step: impl Into<String>) -> impl FnOnce(io::Error) -> MountError {
        let step = step.into();
        move |err| MountError::Step { step, err }
    }
}

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MountError::Options(m)
            | MountError::Layout(m)
            | MountError::WorkDir(m)
            | MountError::Daemon(m) => f.write_str(m),
            MountError::Dir {
                what,
                path,
                problem,
            } => write!(f, "{what} {}: {problem}", path.display()),
            MountError::Step { step, err } => write!(f, "{step}: {err}"),
        }
    }
}

impl std::error::Error for MountError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MountError::Step { err, .. } => Some(err),
            _ => None,
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone)]
pub struct MountRequest {
    /// Shown as the mount's source in /proc/mounts.
    pub source: Option<String>,
    pub mountpoint: PathBuf,
    pub options: MountOptions,
    pub foreground: bool,
}

/// Checked, absolute paths ready to open.
#[derive(Debug, Clone)]
pub struct Plan {
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    pub mountpoint: PathBuf,
}

fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) => "does not exist".into(),
        Some(libc::ENOTDIR) => "is not a directory".into(),
        Some(libc::EACCES) | Some(libc::EPERM) => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// The canonical path of the directory `fd` is open on, from one readlink
/// of /proc/self/fd/N (realpath(3) reads a link per path component, which
/// adds up over 50 layers). None where /proc does not give a usable path:
/// not mounted, a directory out of this process's root ("(unreachable)"),
/// or one just removed (" (deleted)").
fn canonical_from_fd(fd: std::os::fd::BorrowedFd<'_>) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ))
    .ok()?;
    (p.is_absolute() && !p.as_os_str().as_bytes().ends_with(b" (deleted)")).then_some(p)
}

/// Resolves `p` against the working directory and checks it is a
/// directory this process can read (and write, if `writable`).
fn check_dir(
    what: &'static str,
    p: &Path,
    writable: bool,
) -> Result<(PathBuf, sys::Stat), MountError> {
    let bad = |e: io::Error| MountError::dir(what, p, describe(&e));
    let abs = std::path::absolute(p).map_err(bad)?;
    let st = sys::stat_path(&abs).map_err(bad)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(MountError::dir(what, p, "is not a directory"));
    }
    let fd = sys::open_path(&abs, libc::O_RDONLY | libc::O_DIRECTORY)
        .map_err(|e| MountError::dir(what, p, format!("cannot be read: {}", describe(&e))))?;
    let canon = match canonical_from_fd(fd.as_fd()) {
        Some(c) => c,
        None => abs.canonicalize().map_err(bad)?,
    };
    drop(fd);
    // Entering it (search permission) is needed as well as listing it.
    sys::access_path(&canon, libc::R_OK | libc::X_OK)
        .map_err(|e| MountError::dir(what, p, format!("cannot be entered: {}", describe(&e))))?;
    if writable {
        if let Err(e) = sys::access_path(&canon, libc::W_OK | libc::X_OK) {
            return Err(MountError::dir(
                what,
                p,
                format!("is not writable: {}", describe(&e)),
            ));
        }
    }
    Ok((canon, st))
}

/// A FUSE mount whose daemon died answers ENOTCONN; detach it so that the
/// same mountpoint can be used again without manual cleanup.
fn clear_dead_mount(mountpoint: &Path) {
    let enotconn = |e: io::Error| e.raw_os_error() == Some(libc::ENOTCONN);
    // stat alone misses most dead mounts: the kernel answers it from the
    // root's cached attributes (cached for `timeout=`, a day by default)
    // without asking the daemon. statfs always goes to the daemon.
    let dead = match sys::stat_path(mountpoint) {
        Err(e) => enotconn(e),
        Ok(_) => sys::open_path(mountpoint, libc::O_PATH | libc::O_DIRECTORY)
            .and_then(|fd| sys::fstatvfs(fd.as_fd()))
            .is_err_and(enotconn),
    };
    if dead {
        log::warn!(
            "{}: a previous mount's daemon is gone; detaching it",
            mountpoint.display()
        );
        unmount(mountpoint);
    }
}

fn inside(child: &Path, parent: &Path) -> bool {
    child.starts_with(parent)
}

/// Validates the request without changing anything on disk.
pub fn plan(req: &MountRequest) -> Result<Plan, MountError> {
    let o = &req.options;
    if o.lowerdirs.is_empty() {
        return Err(MountError::Options(
            "no lower layer given: use -o lowerdir=DIR[:DIR...]".into(),
        ));
    }
    match (&o.upperdir, &o.workdir) {
        (Some(_), None) => {
            return Err(MountError::Options(
                "upperdir= needs workdir= as well".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(MountError::Options(
                "workdir= needs upperdir= as well".into(),
            ))
        }
        _ => {}
    }
    let mut lowers = Vec::with_capacity(o.lowerdirs.len());
    for l in &o.lowerdirs {
        lowers.push(check_dir("lowerdir", l, false)?.0);
    }
    clear_dead_mount(&req.mountpoint);
    let (mountpoint, _) = check_dir("mountpoint", &req.mountpoint, false)?;
    let mut upper = None;
    let mut work = None;
    if let (Some(u), Some(w)) = (&o.upperdir, &o.workdir) {
        let (u, ust) = check_dir("upperdir", u, !o.read_only)?;
        let (w, wst) = check_dir("workdir", w, !o.read_only)?;
        if ust.st_dev != wst.st_dev {
            return Err(MountError::Layout(format!(
                "workdir {} is on another filesystem than upperdir {}: they must share one filesystem",
                w.display(),
                u.display()
            )));
        }
        if u == w || inside(&u, &w) || inside(&w, &u) {
            return Err(MountError::Layout(format!(
                "upperdir {} and workdir {} must not be inside each other",
                u.display(),
                w.display()
            )));
        }
        for l in &lowers {
            for (what, d) in [("upperdir", &u), ("workdir", &w)] {
                if inside(d, l) || inside(l, d) {
                    return Err(MountError::Layout(format!(
                        "{what} {} overlaps lowerdir {}: layers must be separate trees",
                        d.display(),
                        l.display()
                    )));
                }
            }
        }
        upper = Some(u);
        work = Some(w);
    }
    for l in lowers.iter().chain(upper.iter()).chain(work.iter()) {
        if inside(&mountpoint, l) {
            return Err(MountError::Layout(format!(
                "mountpoint {} is inside layer {}: the mount would contain itself",
                mountpoint.display(),
                l.display()
            )));
        }
    }
    Ok(Plan {
        lowers,
        upper,
        work,
        mountpoint,
    })
}

/// How the FUSE mount itself is made, derived from the options.
#[derive(Debug, Clone)]
struct MountSettings {
    source: String,
    subtype: String,
    read_only: bool,
    dev: bool,
    suid: bool,
    noexec: bool,
    noatime: bool,
    sync: bool,
    dirsync: bool,
    acl: SessionACL,
    auto_unmount: bool,
    threads: usize,
}

fn settings(req: &MountRequest, plan: &Plan) -> MountSettings {
    let o = &req.options;
    let root = sys::geteuid() == 0;
    let acl = if o.allow_other || (root && !o.allow_root) {
        SessionACL::All
    } else if o.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    MountSettings {
        source: o
            .fsname
            .clone()
            .or_else(|| req.source.clone())
            .unwrap_or_else(|| "layerfs".into()),
        subtype: o.subtype.clone().unwrap_or_else(|| "layerfs".into()),
        read_only: o.read_only || plan.upper.is_none(),
        // As fuse-overlayfs: a root mount serves containers, which need
        // device nodes and setuid binaries; an explicit nodev/nosuid wins.
        dev: o.dev.unwrap_or(root),
        suid: o.suid.unwrap_or(root),
        noexec: o.exec == Some(false),
        noatime: o.atime == Some(false),
        sync: o.sync,
        dirsync: o.dirsync,
        auto_unmount: o.auto_unmount && acl != SessionACL::Owner,
        acl,
        threads: o.threads.unwrap_or_else(default_threads),
    }
}

/// The fuser configuration, for sessions fuser mounts itself (through
/// fusermount3, when this process may not call mount(2)).
fn fuse_config(s: &MountSettings) -> Config {
    let mut opts = vec![
        MountOption::FSName(s.source.clone()),
        MountOption::Subtype(s.subtype.clone()),
        // The kernel checks permissions against the attributes we report,
        // as kernel overlayfs checks them against the overlay inode.
        MountOption::DefaultPermissions,
    ];
    let flags = [
        (s.read_only, MountOption::RO),
        (s.dev, MountOption::Dev),
        (s.suid, MountOption::Suid),
        (s.noexec, MountOption::NoExec),
        (s.noatime, MountOption::NoAtime),
        (s.sync, MountOption::Sync),
        (s.dirsync, MountOption::DirSync),
        (s.auto_unmount, MountOption::AutoUnmount),
    ];
    opts.extend(flags.into_iter().filter(|(on, _)| *on).map(|(_, o)| o));
    let mut cfg = Config::default();
    cfg.mount_options = opts;
    cfg.acl = s.acl;
    cfg.n_threads = Some(s.threads);
    cfg.clone_fd = true;
    cfg
}

/// Mounts with mount(2) directly, so that the type reads `fuse.layerfs` in
/// /proc/mounts (fuser's own direct mount drops the subtype). Returns None
/// when not permitted, for the fusermount3 route.
fn mount_direct(s: &MountSettings, mountpoint: &Path) -> io::Result<Option<std::os::fd::OwnedFd>> {
    if s.auto_unmount {
        // Only fusermount3 can watch for our exit.
        return Ok(None);
    }
    let dev = sys::open_path(Path::new("/dev/fuse"), libc::O_RDWR).map_err(|e| {
        // fusermount3 (and libfuse) need it too: say what to fix.
        io::Error::new(
            e.kind(),
            format!("cannot open /dev/fuse: {e} (FUSE mounts need it readable and writable by the mounting user; it is usually mode 0666)"),
        )
    })?;
    let root_mode = sys::stat_path(mountpoint)?.st_mode & libc::S_IFMT;
    let (uid, gid) = sys::getuid_gid();
    let mut data = format!(
        "fd={},rootmode={:o},user_id={uid},group_id={gid},default_permissions",
        std::os::fd::AsRawFd::as_raw_fd(&dev),
        root_mode
    );
    if s.acl != SessionACL::Owner {
        data.push_str(",allow_other");
    }
    let mut flags: libc::c_ulong = 0;
    for (on, f) in [
        (s.read_only, libc::MS_RDONLY),
        (!s.dev, libc::MS_NODEV),
        (!s.suid, libc::MS_NOSUID),
        (s.noexec, libc::MS_NOEXEC),
        (s.noatime, libc::MS_NOATIME),
        (s.sync, libc::MS_SYNCHRONOUS),
        (s.dirsync, libc::MS_DIRSYNC),
    ] {
        if on {
            flags |= f;
        }
    }
    let fstype = format!("fuse.{}", s.subtype);
    match sys::mount(
        std::ffi::OsStr::new(&s.source),
        mountpoint,
        std::ffi::OsStr::new(&fstype),
        flags,
        std::ffi::OsStr::new(&data),
    ) {
        Ok(()) => Ok(Some(dev)),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(None),
        Err(e) => Err(e),
    }
}

/// How long a signalled daemon waits for its session to end after the
/// unmount before it exits anyway (see `serve`). The session normally ends
/// within milliseconds; this only bounds the wait for other holders.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

fn default_threads() -> usize {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    (cpus * 8).clamp(4, 16)
}

/// Unmounts `mountpoint`: a plain umount, lazily if busy, and through
/// fusermount3 when this process may not unmount itself.
pub fn unmount(mountpoint: &Path) {
    match sys::umount(mountpoint, 0) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            let _ = sys::umount(mountpoint, libc::MNT_DETACH);
        }
        Err(_) => {
            let _ = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(mountpoint)
                .status();
        }
    }
}

/// Mounts and serves until unmounted. In the background mode the calling
/// process returns (exit status 0) only once the mount is up.
pub fn run(req: MountRequest) -> Result<(), MountError> {
    let plan = plan(&req)?;
    if let Err(e) = sys::raise_nofile_limit() {
        log::warn!("cannot raise the open-file limit: {e}");
    }
    // Kept open for the daemon's life: the copy must stay mounted for
    // lookups to cross into it (see `PrivateUpper`).
    let private = match (&plan.upper, &plan.work) {
        (Some(u), Some(w)) => PrivateUpper::new(u, w),
        _ => None,
    };
    let upper_open = private
        .as_ref()
        .map(|p| p.upper.as_path())
        .or(plan.upper.as_deref());
    let stack = LayerStack::open(upper_open, &plan.lowers)
        .map_err(MountError::step("cannot open the layers"))?;
    let mut fs_opts = FsOptions {
        fsync: !req.options.no_fsync,
        read_only: req.options.read_only,
        metacopy: req.options.metacopy,
        redirect_dir: req.options.redirect_mode(),
        passthrough: !req.options.no_passthrough,
        no_writeback: req.options.no_writeback,
        ids: req.options.id_mapping(),
        xattr_whiteouts: std::env::var_os("FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT").is_some(),
        ..FsOptions::default()
    };
    if let Some(t) = req.options.timeout {
        fs_opts.timeout = t;
    }
    let work = match (&plan.work, &plan.upper, req.options.read_only) {
        (Some(w), Some(u), false) => {
            let (open_w, open_u) = match &private {
                Some(p) => (p.work.as_path(), p.upper.as_path()),
                None => (w.as_path(), u.as_path()),
            };
            Some(
                WorkDir::prepare_at(w, u, open_w, open_u, req.options.userxattr).map_err(|e| {
                    // Our own messages already name the directory.
                    if e.raw_os_error().is_some() {
                        MountError::dir("workdir", w, e.to_string())
                    } else {
                        MountError::WorkDir(e.to_string())
                    }
                })?,
            )
        }
        _ => None,
    };
    if let Some(w) = &work {
        if fs_opts.metacopy && w.xattr_ns() == crate::whiteout::XattrNs::User {
            // Kernel overlayfs refuses metacopy with userxattr too: anyone
            // could forge a user.overlay.metacopy pointing at other data.
            return Err(MountError::Options(
                "metacopy=on needs trusted.overlay.* xattrs (root, without userxattr)".into(),
            ));
        }
    }

    let mut notify: Option<UnixStream> = None;
    if !req.foreground {
        let (parent_end, child_end) =
            UnixStream::pair().map_err(MountError::step("cannot create a socket pair"))?;
        match sys::fork().map_err(MountError::step("cannot fork"))? {
            sys::Forked::Parent { .. } => {
                drop(child_end);
                return wait_for_child(parent_end);
            }
            sys::Forked::Child => {
                drop(parent_end);
                let _ = sys::setsid();
                notify = Some(child_end);
            }
        }
    }
    let result = serve(&req, &plan, stack, fs_opts, work, &mut notify);
    drop(private);
    if let (Err(e), Some(mut n)) = (&result, notify.take()) {
        // The parent reports it; the daemon child just leaves.
        let _ = n.write_all(format!("{e}").as_bytes());
        drop(n);
        std::process::exit(1);
    }
    result
}

/// The upper and work dirs reached through one private copy of the mount
/// that holds them, as kernel overlayfs takes its upper
/// (`clone_private_mount`); lower layers get theirs in `LayerStack::open`.
/// What the daemon holds open on the upper filesystem then pins only the
/// copy, so that filesystem can be unmounted as soon as `umount` of the
/// union has returned, although the daemon closes its fds a few
/// milliseconds later: for a (non-block) FUSE mount the kernel sends no
/// FUSE_DESTROY to wait for, it only aborts the connection.
///
/// One copy for both, of their deepest common directory, because renames
/// from work into upper need one mount. The copy is not recursive (a mount
/// inside the upper dir is not part of the upper, as for kernel overlayfs),
/// so both must be reached in it as the same directories as by their paths;
/// if not (they live in different mounts), or if the copy may not be made
/// (no CAP_SYS_ADMIN over the mount namespace), the paths are used as they
/// are.
struct PrivateUpper {
    /// O_PATH fd of the copy's root; the copy lives while it is open.
    _root: std::os::fd::OwnedFd,
    /// `upper` and `work` as paths through `root` (/proc/self/fd/N/...).
    upper: PathBuf,
    work: PathBuf,
}

impl PrivateUpper {
    fn new(upper: &Path, work: &Path) -> Option<PrivateUpper> {
        let common: PathBuf = upper
            .components()
            .zip(work.components())
            .take_while(|(a, b)| a == b)
            .map(|(a, _)| a)
            .collect();
        let root = match sys::clone_mount_tree(&common, false) {
            Ok(fd) => fd,
            Err(e) => {
                log::debug!(
                    "{}: no private mount copy ({e}); using upper and work as they are",
                    common.display()
                );
                return None;
            }
        };
        let base = PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&root)
        ));
        let through = |p: &Path| -> Option<PathBuf> {
            let rel = p.strip_prefix(&common).ok()?;
            let q = base.join(rel);
            let (a, b) = (sys::stat_path(p).ok()?, sys::stat_path(&q).ok()?);
            (a.st_dev == b.st_dev && a.st_ino == b.st_ino).then_some(q)
        };
        match (through(upper), through(work)) {
            (Some(upper), Some(work)) => Some(PrivateUpper {
                _root: root,
                upper,
                work,
            }),
            _ => {
                log::debug!(
                    "upper {} and work {} are not both in the mount of {}: using them as they are",
                    upper.display(),
                    work.display(),
                    common.display()
                );
                None
            }
        }
    }
}

/// The foreground parent's side: waits for the daemon to say the mount is
/// up (an empty message) or why it failed.
fn wait_for_child(mut sock: UnixStream) -> Result<(), MountError> {
    let mut msg = String::new();
    let _ = sock.read_to_string(&mut msg);
    if msg == "ok" {
        Ok(())
    } else if msg.is_empty() {
        Err(MountError::Daemon(
            "the layerfs daemon exited before the mount was up".into(),
        ))
    } else {
        Err(MountError::Daemon(msg))
    }
}

fn serve(
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
    let fuse = crate::fs::Fuse::new(fs);
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
    if let Some(mut n) = notify.take() {
        let _ = n.write_all(b"ok");
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
    if result.is_err() {
        unmount(&plan.mountpoint);
    } else if let Some(locks) = locks {
        // Every worker has been joined (an error may mean one panicked
        // and others still run): nothing uses the work dir any more. A
        // mount of the same upper need not wait for the teardown.
        locks.release();
    }
    drop(state);
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

    #[test]
    fn a_directory_is_named_by_its_canonical_path() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, t.path().join("link")).unwrap();
        let (canon, st) = check_dir("lowerdir", &t.path().join("link/./"), false).unwrap();
        assert_eq!(canon, real.canonicalize().unwrap());
        assert_eq!(st.st_ino, sys::stat_path(&real).unwrap().st_ino);
        let err = check_dir("lowerdir", &t.path().join("missing"), false).unwrap_err();
        assert!(
            matches!(&err, MountError::Dir { what: "lowerdir", problem, .. } if problem == "does not exist"),
            "{err}"
        );
        std::fs::write(t.path().join("file"), b"").unwrap();
        let err = check_dir("lowerdir", &t.path().join("file"), false).unwrap_err();
        assert!(
            matches!(&err, MountError::Dir { problem, .. } if problem == "is not a directory"),
            "{err}"
        );
        assert!(
            err.to_string().ends_with("file: is not a directory"),
            "{err}"
        );
    }
}
