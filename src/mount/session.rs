//! How the FUSE session is made from the options: the mount's settings,
//! fuser's configuration, mount(2) itself (fusermount3 where this process
//! may not), the filesystem's tunables, and unmounting.

use std::ffi::OsString;
use std::io;
use std::path::Path;

use fuser::{Config, MountOption, SessionACL};

use super::{MountRequest, Plan};
use crate::options::MountOptions;
use crate::overlay::FsOptions;
use crate::sys;

/// How the FUSE mount itself is made, derived from the options.
#[derive(Debug, Clone)]
pub(super) struct MountSettings {
    source: String,
    subtype: String,
    read_only: bool,
    dev: bool,
    suid: bool,
    noexec: bool,
    noatime: bool,
    sync: bool,
    dirsync: bool,
    pub(super) acl: SessionACL,
    auto_unmount: bool,
    pub(super) threads: usize,
}

pub(super) fn settings(req: &MountRequest, plan: &Plan) -> MountSettings {
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
pub(super) fn fuse_config(s: &MountSettings) -> Config {
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
pub(super) fn mount_direct(
    s: &MountSettings,
    mountpoint: &Path,
) -> io::Result<Option<std::os::fd::OwnedFd>> {
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

/// fuser's workers when `threads=` is not given: two per CPU, at least
/// four. Each costs the mount a thread, a cloned `/dev/fuse` fd and a
/// request buffer, and its unmount their teardown, and fuser 0.18 starts
/// them all at once; requests that wait on the disk do not hold them up
/// (they go to the growing pool of `blocking` when the workers are all
/// waiting), so the workers need only cover the CPUs.
pub(super) fn default_threads() -> usize {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    (cpus * 2).clamp(4, 16)
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

/// The filesystem's tunables these options ask for. `env` reads the
/// environment (`std::env::var_os` in the daemon), where fuse-overlayfs'
/// FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT asks for xattr whiteouts.
pub fn fs_options(o: &MountOptions, env: impl Fn(&str) -> Option<OsString>) -> FsOptions {
    let mut fs_opts = FsOptions {
        fsync: !o.no_fsync,
        read_only: o.read_only,
        metacopy: o.metacopy,
        redirect_dir: o.redirect_mode(),
        // A write passed through never reaches the daemon, so no barrier
        // could hold it, no rotation redirect it (see `control`) and no
        // limit count it (see `capacity`).
        passthrough: !o.no_passthrough && o.control().is_none() && o.capacity.is_none(),
        // A write the kernel cached would meet the limit only at
        // writeback, where its ENOSPC reaches no one: every write of a
        // limited mount goes to the daemon before write(2) returns.
        no_writeback: o.no_writeback || o.capacity.is_some(),
        capacity: o.capacity.map(|c| (c, o.capacity_used)),
        ids: o.id_mapping(),
        xattr_whiteouts: env("FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT").is_some(),
        ..FsOptions::default()
    };
    if let Some(t) = o.timeout {
        fs_opts.timeout = t;
    }
    fs_opts
}
