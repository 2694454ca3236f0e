//! What the upper layer's filesystem offers, probed once at mount in the
//! work directory, and the fallback used for each thing it lacks.
//!
//! Kernel overlayfs refuses uppers without `RENAME_WHITEOUT`, `O_TMPFILE`
//! or xattrs (network filesystems such as GlusterFS); layerfs takes them,
//! keeping its guarantees with what is there: the daemon is the only writer
//! to its upper, so a check-then-rename under the daemon's own lock is a
//! valid `RENAME_NOREPLACE`; a replacement of a directory by a file (or the
//! reverse) without `RENAME_EXCHANGE` moves the old entry into the work
//! directory first; a rename that must leave a whiteout without
//! `RENAME_WHITEOUT` makes the whiteout right after.

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use crate::sys;

/// `f_type` of FUSE filesystems (GlusterFS, sshfs, another layerfs...).
pub const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// What the upper's filesystem was seen to support.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    pub rename_noreplace: bool,
    pub rename_exchange: bool,
    pub rename_whiteout: bool,
    pub file_handles: bool,
    /// char 0/0 devices (the kernel's whiteout) can be made.
    pub whiteout_mknod: bool,
    pub xattr_trusted: bool,
    pub xattr_user: bool,
    /// getdents reports file types (else every entry costs an lstat).
    pub d_type: bool,
    pub flock: bool,
    /// Open-file-description record locks (`F_OFD_SETLK`): on network
    /// filesystems, the lock that other hosts see.
    pub ofd_locks: bool,
}

impl Features {
    /// Everything: what a local filesystem such as ext4 or xfs offers.
    pub const ALL: Features = Features {
        rename_noreplace: true,
        rename_exchange: true,
        rename_whiteout: true,
        file_handles: true,
        whiteout_mknod: true,
        xattr_trusted: true,
        xattr_user: true,
        d_type: true,
        flock: true,
        ofd_locks: true,
    };

    /// No xattrs at all: whiteouts are `.wh.NAME` files and opaque
    /// directories hold `.wh..wh..opq`, as fuse-overlayfs writes them; no
    /// redirects (renaming a directory with lower parts is EXDEV), no
    /// origin, index or metacopy. Kernel overlayfs cannot mount such an
    /// upper (layerfs and fuse-overlayfs read it).
    pub fn oci_format(&self) -> bool {
        !self.xattr_trusted && !self.xattr_user
    }

    /// The fallbacks in use that change how layerfs keeps its guarantees.
    pub fn fallbacks(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self.rename_noreplace {
            out.push("RENAME_NOREPLACE: check, then rename, under the daemon's lock");
        }
        if !self.rename_exchange {
            out.push("RENAME_EXCHANGE: through the work directory");
        }
        if !self.rename_whiteout {
            out.push("RENAME_WHITEOUT: whiteout made after the rename");
        }
        if !self.file_handles {
            out.push("file handles: upper files held open, no origin xattrs");
        }
        if !self.whiteout_mknod {
            out.push("char 0/0 whiteouts: xattr whiteouts");
        }
        if self.oci_format() {
            out.push("xattrs: OCI .wh. whiteouts, no redirects (kernel overlayfs cannot mount this upper)");
        } else if !self.xattr_trusted && self.xattr_user {
            out.push("trusted.* xattrs: user.overlay.* (userxattr rules)");
        }
        if !self.d_type {
            out.push("d_type: lstat of every listed entry");
        }
        if !self.ofd_locks {
            out.push("record locks: flock only, which other hosts may not see");
        }
        out
    }
}

/// Why each missing feature was judged missing (for `-d`).
#[derive(Debug, Default)]
pub struct ProbeNotes(Vec<(&'static str, String)>);

impl fmt::Display for ProbeNotes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (what, why)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{what}: {why}")?;
        }
        Ok(())
    }
}

/// Names of the probe's files in the work directory: `#` starts no name
/// that kernel overlayfs or the staging code (`#lfsN`) makes there.
const PROBE_A: &str = "#probe-a";
const PROBE_B: &str = "#probe-b";
const PROBE_C: &str = "#probe-c";
const PROBE_W: &str = "#probe-w";

/// Removes the probe's files however the probe ended. Freed data blocks
/// can cost a synchronous discard, hence no directory of its own.
struct ProbeFiles<'a>(BorrowedFd<'a>);

impl Drop for ProbeFiles<'_> {
    fn drop(&mut self) {
        for n in [PROBE_A, PROBE_B, PROBE_C, PROBE_W] {
            match sys::unlinkat(self.0, OsStr::new(n), 0) {
                Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                    log::warn!("cannot remove the probe file {n}: {e}");
                }
                _ => {}
            }
        }
    }
}

/// Probes the filesystem holding `dir` (the work directory, emptied, which
/// no other thread uses yet) for every feature in [`Features`], and
/// removes what it made there. Only a failure to set up the probe itself
/// is an error; a feature that fails is recorded as missing, with why.
///
/// It makes as few inodes as it can (a file, the char 0/0 device and the
/// whiteout a rename leaves): every mount runs it, and an ext4 without a
/// journal makes each new inode scan past the inodes freed in the last
/// seconds (`recently_deleted`), about a millisecond each where uppers
/// come and go. What has a fallback at run time is not probed: reflink,
/// `copy_file_range` and `O_TMPFILE` are tried by the first copy-up
/// (`copyup`).
pub fn probe(dir: BorrowedFd<'_>) -> io::Result<(Features, ProbeNotes)> {
    let _cleanup = ProbeFiles(dir);
    let mut notes = ProbeNotes::default();
    let mut f = Features::ALL;
    let mut note = |what: &'static str, ok: &mut bool, r: io::Result<()>| match r {
        Ok(()) => {}
        Err(e) => {
            *ok = false;
            notes.0.push((what, e.to_string()));
        }
    };
    let name = |s: &str| OsStr::new(s).to_os_string();
    let (a, c) = (name(PROBE_A), name(PROBE_C));
    let create = |n: &OsStr| {
        sys::openat(
            dir,
            n,
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
            0o600,
        )
    };
    let fa = create(&a)?;
    sys::pwrite(fa.as_fd(), b"layerfs probe", 0)?;
    // The device, where it can be made, is also the second entry the
    // renames below need; a plain file only where it cannot.
    let w = name(PROBE_W);
    let r = sys::mknodat(dir, &w, libc::S_IFCHR | 0o600, 0);
    let b = if r.is_ok() {
        w
    } else {
        let b = name(PROBE_B);
        create(&b)?;
        b
    };
    note("char 0/0 mknod", &mut f.whiteout_mknod, r);

    // A rename that must not replace, to a free name: the VFS itself
    // answers EEXIST for a taken one, so only this shows whether the
    // filesystem knows the flag (GlusterFS answers EINVAL).
    let r = sys::renameat2(dir, &a, dir, &c, libc::RENAME_NOREPLACE)
        .and_then(|()| sys::renameat2(dir, &c, dir, &a, 0));
    note("RENAME_NOREPLACE", &mut f.rename_noreplace, r);
    let r = sys::renameat2(dir, &a, dir, &b, libc::RENAME_EXCHANGE).and_then(|()| {
        // Swap back: the probes below expect `a` to hold the data.
        sys::renameat2(dir, &a, dir, &b, libc::RENAME_EXCHANGE)
    });
    note("RENAME_EXCHANGE", &mut f.rename_exchange, r);
    // `b` has moved away: whatever is found at its name, the rename made.
    let r = sys::renameat2(dir, &b, dir, &c, libc::RENAME_WHITEOUT).and_then(|()| {
        let st = sys::lstatat(dir, &b)?;
        if !crate::whiteout::is_chardev_whiteout(&st) {
            return Err(io::Error::other("no whiteout was left"));
        }
        Ok(())
    });
    note("RENAME_WHITEOUT", &mut f.rename_whiteout, r);
    let r = sys::reopen(dir, libc::O_RDONLY | libc::O_DIRECTORY).and_then(|root| {
        // A FUSE filesystem's handles name the kernel's node ids: they go
        // stale once the kernel forgets the inode, and mean nothing on
        // another client.
        if sys::fstatfs_type(root.as_fd())? == FUSE_SUPER_MAGIC {
            return Err(io::Error::other(
                "FUSE file handles do not outlive the kernel's inode cache",
            ));
        }
        let h = sys::name_to_handle(fa.as_fd())?;
        sys::open_by_handle(root.as_fd(), &h).map(drop)
    });
    note("file handles", &mut f.file_handles, r);
    for (ns, ok, what) in [
        ("trusted", &mut f.xattr_trusted, "trusted.* xattrs"),
        ("user", &mut f.xattr_user, "user.* xattrs"),
    ] {
        let attr = sys::cstr(OsStr::new(&format!("{ns}.overlay.probe")))?;
        let r = sys::setxattr_fd(fa.as_fd(), &attr, b"1", 0);
        note(what, ok, r);
    }
    let r = sys::reopen(dir, libc::O_RDONLY | libc::O_DIRECTORY).and_then(|d| {
        let entries = sys::read_dir_fd(d.as_fd())?;
        if entries
            .iter()
            .any(|e| e.name == PROBE_A.as_bytes() && e.d_type == libc::DT_UNKNOWN)
        {
            return Err(io::Error::other("entries come as DT_UNKNOWN"));
        }
        Ok(())
    });
    note("d_type", &mut f.d_type, r);
    let r = sys::flock(fa.as_fd(), libc::LOCK_EX | libc::LOCK_NB)
        .and_then(|()| sys::flock(fa.as_fd(), libc::LOCK_UN));
    note("flock", &mut f.flock, r);
    let r = sys::ofd_setlk(fa.as_fd(), libc::F_WRLCK)
        .and_then(|()| sys::ofd_setlk(fa.as_fd(), libc::F_UNLCK));
    note("OFD record locks", &mut f.ofd_locks, r);
    Ok((f, notes))
}

/// Turns off the features named in `LAYERFS_DISABLE_FEATURES` (a comma
/// separated list of [`Features`] field names), so that the fallbacks for a
/// filesystem that lacks them can be exercised on one that has them.
pub fn disable_from_env(f: &mut Features, notes: &mut ProbeNotes) {
    let Some(list) = std::env::var_os("LAYERFS_DISABLE_FEATURES") else {
        return;
    };
    for name in list.to_string_lossy().split(',').map(str::trim) {
        let field = match name {
            "rename_noreplace" => &mut f.rename_noreplace,
            "rename_exchange" => &mut f.rename_exchange,
            "rename_whiteout" => &mut f.rename_whiteout,
            "file_handles" => &mut f.file_handles,
            "whiteout_mknod" => &mut f.whiteout_mknod,
            "d_type" => &mut f.d_type,
            "xattr_trusted" => &mut f.xattr_trusted,
            "xattr_user" => &mut f.xattr_user,
            "" => continue,
            other => {
                log::warn!("LAYERFS_DISABLE_FEATURES: unknown feature {other:?}");
                continue;
            }
        };
        *field = false;
        notes.0.push((
            name_of(name),
            "turned off by LAYERFS_DISABLE_FEATURES".into(),
        ));
    }
}

fn name_of(field: &str) -> &'static str {
    match field {
        "rename_noreplace" => "RENAME_NOREPLACE",
        "rename_exchange" => "RENAME_EXCHANGE",
        "rename_whiteout" => "RENAME_WHITEOUT",
        "file_handles" => "file handles",
        "whiteout_mknod" => "char 0/0 mknod",
        "xattr_trusted" => "trusted.* xattrs",
        "xattr_user" => "user.* xattrs",
        _ => "d_type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_filesystem_needs_no_fallback() {
        let t = tempfile::tempdir().unwrap();
        let d = sys::open_path(t.path(), libc::O_PATH | libc::O_DIRECTORY).unwrap();
        let (f, notes) = probe(d.as_fd()).unwrap();
        // The probe leaves the directory as it found it: empty.
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
        // trusted.* needs root: not a fallback of concern here.
        assert!(f.rename_noreplace && f.rename_exchange, "{notes}");
        assert!(f.d_type && f.flock && f.ofd_locks, "{notes}");
        // The device doubles as the renames' second entry.
        assert!(f.whiteout_mknod && f.rename_whiteout, "{notes}");
        assert!(f
            .fallbacks()
            .iter()
            .all(|s| !s.starts_with("RENAME_NOREPLACE")));
    }

    #[test]
    fn fallbacks_are_listed() {
        let f = Features {
            rename_noreplace: false,
            rename_exchange: false,
            ..Features::ALL
        };
        assert_eq!(f.fallbacks().len(), 2);
        assert!(Features::ALL.fallbacks().is_empty());
    }
}
