//! The checks made before anything changes on disk, worded to name the
//! problem, and the plan they give: absolute, checked paths ready to open.

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::{unmount, MountError, MountRequest};
use crate::sys;

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
    if let Some(c) = o.control() {
        if o.upperdir.is_none() || o.read_only {
            return Err(MountError::Options(
                "control= needs a writable mount (upperdir= and workdir=)".into(),
            ));
        }
        if !c.is_absolute() {
            return Err(MountError::Options(format!(
                "control={}: must be an absolute path",
                c.display()
            )));
        }
        if o.metacopy {
            // A metacopy's data is found from the upper only: once its
            // upper became a lower layer, the file would show no data.
            return Err(MountError::Options(
                "control= cannot go with metacopy=on (a rotated upper's metacopy files would lose their data)".into(),
            ));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
