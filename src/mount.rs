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
use crate::ops::{FsOptions, LayerFs};
use crate::options::MountOptions;
use crate::sys;
use crate::workdir::WorkDir;

/// A start-up failure, worded for the person who typed the command.
#[derive(Debug)]
pub struct MountError(pub String);

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MountError {}

fn fail<T>(msg: impl Into<String>) -> Result<T, MountError> {
    Err(MountError(msg.into()))
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

/// Resolves `p` against the working directory and checks it is a
/// directory this process can read (and write, if `writable`).
fn check_dir(what: &str, p: &Path, writable: bool) -> Result<(PathBuf, sys::Stat), MountError> {
    let abs = std::path::absolute(p)
        .map_err(|e| MountError(format!("{what} {}: {}", p.display(), describe(&e))))?;
    let canon = abs
        .canonicalize()
        .map_err(|e| MountError(format!("{what} {}: {}", p.display(), describe(&e))))?;
    let st = sys::stat_path(&canon)
        .map_err(|e| MountError(format!("{what} {}: {}", p.display(), describe(&e))))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return fail(format!("{what} {}: is not a directory", p.display()));
    }
    let fd = sys::open_path(&canon, libc::O_RDONLY | libc::O_DIRECTORY).map_err(|e| {
        MountError(format!(
            "{what} {}: cannot be read: {}",
            p.display(),
            describe(&e)
        ))
    })?;
    drop(fd);
    // Entering it (search permission) is needed as well as listing it.
    sys::access_path(&canon, libc::R_OK | libc::X_OK).map_err(|e| {
        MountError(format!(
            "{what} {}: cannot be entered: {}",
            p.display(),
            describe(&e)
        ))
    })?;
    if writable {
        if let Err(e) = sys::access_path(&canon, libc::W_OK | libc::X_OK) {
            return fail(format!(
                "{what} {}: is not writable: {}",
                p.display(),
                describe(&e)
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
        return fail("no lower layer given: use -o lowerdir=DIR[:DIR...]");
    }
    match (&o.upperdir, &o.workdir) {
        (Some(_), None) => return fail("upperdir= needs workdir= as well"),
        (None, Some(_)) => return fail("workdir= needs upperdir= as well"),
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
            return fail(format!(
                "workdir {} is on another filesystem than upperdir {}: they must share one filesystem",
                w.display(),
                u.display()
            ));
        }
        if u == w || inside(&u, &w) || inside(&w, &u) {
            return fail(format!(
                "upperdir {} and workdir {} must not be inside each other",
                u.display(),
                w.display()
            ));
        }
        for l in &lowers {
            for (what, d) in [("upperdir", &u), ("workdir", &w)] {
                if inside(d, l) || inside(l, d) {
                    return fail(format!(
                        "{what} {} overlaps lowerdir {}: layers must be separate trees",
                        d.display(),
                        l.display()
                    ));
                }
            }
        }
        upper = Some(u);
        work = Some(w);
    }
    for l in lowers.iter().chain(upper.iter()).chain(work.iter()) {
        if inside(&mountpoint, l) {
            return fail(format!(
                "mountpoint {} is inside layer {}: the mount would contain itself",
                mountpoint.display(),
                l.display()
            ));
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
    let stack = LayerStack::open(plan.upper.as_deref(), &plan.lowers)
        .map_err(|e| MountError(format!("cannot open the layers: {e}")))?;
    let mut fs_opts = FsOptions {
        fsync: !req.options.no_fsync,
        read_only: req.options.read_only,
        metacopy: req.options.metacopy,
        passthrough: !req.options.no_passthrough,
        ids: req.options.id_mapping(),
        xattr_whiteouts: std::env::var_os("FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT").is_some(),
        ..FsOptions::default()
    };
    if let Some(t) = req.options.timeout {
        fs_opts.timeout = t;
    }
    let work = match (&plan.work, &plan.upper, req.options.read_only) {
        (Some(w), Some(u), false) => {
            Some(WorkDir::prepare(w, u, req.options.userxattr).map_err(|e| {
                // Our own messages already name the directory.
                if e.raw_os_error().is_some() {
                    MountError(format!("workdir {}: {e}", w.display()))
                } else {
                    MountError(e.to_string())
                }
            })?)
        }
        _ => None,
    };
    if let Some(w) = &work {
        if fs_opts.metacopy && w.xattr_ns() == crate::whiteout::XattrNs::User {
            // Kernel overlayfs refuses metacopy with userxattr too: anyone
            // could forge a user.overlay.metacopy pointing at other data.
            return Err(MountError(
                "metacopy=on needs trusted.overlay.* xattrs (root, without userxattr)".into(),
            ));
        }
    }

    let mut notify: Option<UnixStream> = None;
    if !req.foreground {
        let (parent_end, child_end) = UnixStream::pair()
            .map_err(|e| MountError(format!("cannot create a socket pair: {e}")))?;
        match sys::fork().map_err(|e| MountError(format!("cannot fork: {e}")))? {
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
    if let (Err(e), Some(mut n)) = (&result, notify.take()) {
        // The parent reports it; the daemon child just leaves.
        let _ = n.write_all(format!("{e}").as_bytes());
        drop(n);
        std::process::exit(1);
    }
    result
}

/// The foreground parent's side: waits for the daemon to say the mount is
/// up (an empty message) or why it failed.
fn wait_for_child(mut sock: UnixStream) -> Result<(), MountError> {
    let mut msg = String::new();
    let _ = sock.read_to_string(&mut msg);
    if msg == "ok" {
        Ok(())
    } else if msg.is_empty() {
        fail("the layerfs daemon exited before the mount was up")
    } else {
        Err(MountError(msg))
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
    let fs =
        LayerFs::new(stack, fs_opts, work).map_err(|e| MountError(format!("cannot start: {e}")))?;
    let fs = Arc::new(fs);
    // Signals go to one waiting thread only; block them before any thread
    // (fuser's workers included) exists.
    sys::block_termination_signals()
        .map_err(|e| MountError(format!("cannot set up signal handling: {e}")))?;
    let ms = settings(req, plan);
    let config = fuse_config(&ms);
    let fuse = crate::fs::Fuse::new(fs);
    let notifier = fuse.notifier_slot();
    let mount_err = |e: io::Error| {
        MountError(format!(
            "cannot mount on {}: {e}",
            plan.mountpoint.display()
        ))
    };
    let session = match mount_direct(&ms, &plan.mountpoint).map_err(mount_err)? {
        Some(dev) => fuser::Session::from_fd(fuse, dev, ms.acl, config).map_err(|e| {
            unmount(&plan.mountpoint);
            mount_err(e)
        })?,
        None => fuser::Session::new(fuse, &plan.mountpoint, &config).map_err(mount_err)?,
    };
    let _ = notifier.set(session.notifier());
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
        })
        .map_err(|e| MountError(format!("cannot start the signal thread: {e}")))?;
    let result = session.run();
    if result.is_err() {
        unmount(&plan.mountpoint);
    }
    result.map_err(|e| MountError(format!("session ended with an error: {e}")))
}

/// Points stdio at /dev/null (stderr at the log file, when one is given)
/// so the daemon holds no terminal.
fn detach_stdio(o: &MountOptions) {
    let Ok(null) = sys::open_path(Path::new("/dev/null"), libc::O_RDWR) else {
        return;
    };
    let _ = sys::dup2(null.as_fd(), 0);
    let _ = sys::dup2(null.as_fd(), 1);
    let log = o
        .extra
        .iter()
        .find(|(k, _)| k == "logfile")
        .and_then(|(_, path)| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
        });
    match log {
        Some(f) => {
            let _ = sys::dup2(f.as_fd(), 2);
        }
        None => {
            let _ = sys::dup2(null.as_fd(), 2);
            crate::logging::to_syslog();
        }
    }
    let _ = std::env::set_current_dir("/");
}
