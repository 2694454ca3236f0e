//! The private copy of the mount holding the upper and work dirs.

use std::path::{Path, PathBuf};

use crate::sys;

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
pub(super) struct PrivateUpper {
    /// O_PATH fd of the copy's root; the copy lives while it is open.
    _root: std::os::fd::OwnedFd,
    /// `upper` and `work` as paths through `root` (/proc/self/fd/N/...).
    pub(super) upper: PathBuf,
    pub(super) work: PathBuf,
}

impl PrivateUpper {
    pub(super) fn new(upper: &Path, work: &Path) -> Option<PrivateUpper> {
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
