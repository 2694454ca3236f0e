//! Reading one layer's directory: what a name is there (probe, whiteouts
//! of every kind, OCI markers, directory marks and redirects), what an
//! upper name holds, and the listing of one layer's part of a directory.
//! The rules these apply are the pure ones of `whiteout.rs`; nothing here
//! writes to a layer.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use crate::attr;
use crate::dir::LayerEntry;
use crate::ids::LayerIdx;
use crate::inode::RealEntry;
use crate::resolve::Probe;
use crate::sys::{self, Stat};
use crate::whiteout::{self, DirMarks, Redirect, XattrNs};

/// What the filesystem found for one layer during a lookup.
pub(crate) struct Hit {
    pub layer: LayerIdx,
    pub fd: OwnedFd,
    /// For a non-directory: its parent's real directory and its name, to
    /// reach it again without holding `fd` (see `RealFd::At`).
    pub at: Option<(Arc<OwnedFd>, Arc<OsStr>)>,
    pub st: Stat,
    pub marks: DirMarks,
}

/// What layer entry `r` (a directory) holds under `name`. `more_below` says
/// whether any contributing layer lies below, which is when OCI whiteouts and
/// opaque markers matter.
pub(crate) fn probe_layer(r: &RealEntry, name: &OsStr, more_below: bool) -> io::Result<Probe<Hit>> {
    probe_layer_with(r, name, more_below, true)
}

/// `probe_layer`, told whether `r` may hold OCI `.wh.NAME` markers.
pub(crate) fn probe_layer_with(
    r: &RealEntry,
    name: &OsStr,
    more_below: bool,
    may_have_markers: bool,
) -> io::Result<Probe<Hit>> {
    let oci = more_below && may_have_markers;
    let fd = match sys::openat(
        r.fd.get()?.as_fd(),
        name,
        libc::O_PATH | libc::O_NOFOLLOW,
        0,
    ) {
        Ok(fd) => fd,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ENAMETOOLONG)
            ) =>
        {
            // Absent here: an OCI `.wh.NAME` beside it still hides it below.
            return Ok(if oci && oci_sibling_exists(r, name.as_bytes())? {
                Probe::Whiteout
            } else {
                Probe::Absent
            });
        }
        Err(e) => return Err(e),
    };
    let st = sys::fstat(fd.as_fd())?;
    if whiteout::is_chardev_whiteout(&st)
        || (r.marks.xwhiteouts && whiteout::may_be_xattr_whiteout(&st) && has_xattr_whiteout(&fd)?)
    {
        return Ok(Probe::Whiteout);
    }
    if (st.st_mode & libc::S_IFMT) != libc::S_IFDIR {
        return Ok(Probe::NonDir(Hit {
            layer: r.layer,
            fd,
            st,
            marks: DirMarks::default(),
            at: Some((r.fd.get()?, Arc::from(name))),
        }));
    }
    let mut marks = read_dir_marks(&fd)?;
    if more_below && !marks.opaque {
        // OCI: `.wh..wh..opq` inside, or `.wh.NAME` beside a re-added dir.
        marks.opaque =
            exists(&fd, whiteout::OCI_OPAQUE)? || (oci && oci_sibling_exists(r, name.as_bytes())?);
    }
    let opaque = marks.opaque;
    Ok(Probe::Dir(
        Hit {
            layer: r.layer,
            fd,
            st,
            marks,
            at: None,
        },
        opaque,
    ))
}

fn exists(dir: &OwnedFd, name: &[u8]) -> io::Result<bool> {
    match sys::lstatat(dir.as_fd(), OsStr::from_bytes(name)) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

fn oci_sibling_exists(r: &RealEntry, name: &[u8]) -> io::Result<bool> {
    let wh = whiteout::oci_whiteout_name(name);
    if wh.len() > 255 {
        return Ok(false);
    }
    match sys::lstatat(r.fd.get()?.as_fd(), OsStr::from_bytes(&wh)) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A directory's `overlay.redirect`, in either namespace (None when absent
/// or malformed).
/// The `overlay.redirect` of a layer directory: None without one, EINVAL
/// for a malformed value (kernel overlayfs fails the lookup so too).
pub(crate) fn read_redirect(fd: &OwnedFd) -> Option<io::Result<Redirect>> {
    for ns in [XattrNs::Trusted, XattrNs::User] {
        if let Ok(v) = sys::getxattr_fd(fd.as_fd(), &ns.name("redirect")) {
            return Some(Redirect::parse(&v).map_err(|e| {
                log::warn!(
                    "invalid overlay.redirect {:?}: {e}",
                    String::from_utf8_lossy(&v[..v.len().min(100)])
                );
                e
            }));
        }
    }
    None
}

/// Reads a directory's overlay marks (opaque y/x, redirect) in either
/// namespace. One listxattr in the common case of a directory without
/// xattrs.
pub fn read_dir_marks(fd: &OwnedFd) -> io::Result<DirMarks> {
    let list = match sys::listxattr_fd(fd.as_fd()) {
        Ok(l) => l,
        // A layer on a filesystem without xattrs has no marks.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(DirMarks::default()),
        Err(e) => return Err(e),
    };
    let mut marks = DirMarks {
        redirect: whiteout::has_overlay_xattr(&list, b"redirect"),
        ..DirMarks::default()
    };
    if !whiteout::has_overlay_xattr(&list, b"opaque") {
        return Ok(marks);
    }
    for ns in [XattrNs::Trusted, XattrNs::User] {
        match sys::getxattr_fd(fd.as_fd(), &ns.name("opaque")) {
            Ok(v) => marks = marks.merge(DirMarks::from_opaque_value(&v)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA) | Some(libc::ENOTSUP)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(marks)
}

fn is_xattr_whiteout_at(r: &RealEntry, name: &[u8]) -> io::Result<bool> {
    let fd = sys::openat(
        r.fd.get()?.as_fd(),
        OsStr::from_bytes(name),
        libc::O_PATH | libc::O_NOFOLLOW,
        0,
    )?;
    has_xattr_whiteout(&fd)
}

/// True when a file carries `overlay.whiteout` in either namespace.
pub(crate) fn has_xattr_whiteout(fd: &OwnedFd) -> io::Result<bool> {
    for ns in [XattrNs::Trusted, XattrNs::User] {
        let name: CString = ns.name("whiteout");
        match sys::getxattr_fd(fd.as_fd(), &name) {
            Ok(_) => return Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA) | Some(libc::ENOTSUP)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Reads one layer's part of a directory and classifies each entry;
/// also says whether it holds OCI markers.
pub(crate) fn list_layer_dir(r: &RealEntry) -> io::Result<(Vec<LayerEntry>, bool)> {
    let dfd = sys::openat(
        r.fd.get()?.as_fd(),
        OsStr::new("."),
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )?;
    let raw = sys::read_dir_fd(dfd.as_fd())?;
    let mut out = Vec::with_capacity(raw.len());
    let mut markers = false;
    for e in raw {
        if e.name == b"." || e.name == b".." {
            continue;
        }
        if whiteout::is_oci_marker(&e.name) {
            markers = true;
            if let Some(target) = whiteout::oci_whiteout_target(&e.name) {
                out.push(LayerEntry::Whiteout {
                    name: target.to_vec(),
                });
            }
            continue;
        }
        let needs_stat = e.d_type == libc::DT_UNKNOWN
            || e.d_type == libc::DT_CHR
            || (r.marks.xwhiteouts && e.d_type == libc::DT_REG);
        let mut d_type = e.d_type;
        if needs_stat {
            let st = match sys::lstatat(r.fd.get()?.as_fd(), OsStr::from_bytes(&e.name)) {
                Ok(st) => st,
                // Gone since getdents: skip it, as a later lookup would.
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(err) => return Err(err),
            };
            d_type = attr::dtype_of_mode(st.st_mode);
            if whiteout::is_chardev_whiteout(&st)
                || (r.marks.xwhiteouts
                    && whiteout::may_be_xattr_whiteout(&st)
                    && is_xattr_whiteout_at(r, &e.name)?)
            {
                out.push(LayerEntry::Whiteout { name: e.name });
                continue;
            }
        }
        out.push(LayerEntry::Visible {
            name: e.name,
            d_type,
            d_ino: e.ino,
        });
    }
    Ok((out, markers))
}

/// What occupies a name in an upper directory.
pub(crate) enum UpperSlot {
    Empty,
    Whiteout,
    /// An object, with an O_PATH fd and its stat.
    Entry(OwnedFd, sys::Stat),
}

/// What is at `name` in the upper directory `pu`.
pub(crate) fn upper_slot(
    pu: &RealEntry,
    name: &OsStr,
    oci_whiteouts: bool,
) -> io::Result<UpperSlot> {
    let fd = match sys::openat(
        pu.fd.get()?.as_fd(),
        name,
        libc::O_PATH | libc::O_NOFOLLOW,
        0,
    ) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            if oci_whiteouts
                && sys::lstatat(pu.fd.get()?.as_fd(), &whiteout::oci_marker(name)?).is_ok()
            {
                return Ok(UpperSlot::Whiteout);
            }
            return Ok(UpperSlot::Empty);
        }
        Err(e) => return Err(e),
    };
    let st = sys::fstat(fd.as_fd())?;
    if whiteout::is_chardev_whiteout(&st)
        || (pu.marks.xwhiteouts && whiteout::may_be_xattr_whiteout(&st) && has_xattr_whiteout(&fd)?)
    {
        return Ok(UpperSlot::Whiteout);
    }
    Ok(UpperSlot::Entry(fd, st))
}
