//! Every whiteout and opaque-directory format layerfs reads, as pure rules.
//!
//! Formats read:
//! - kernel overlayfs: a character device 0/0 hides the name below it; a
//!   directory with `trusted.overlay.opaque=y` (or `user.overlay.opaque=y`)
//!   hides everything below it;
//! - overlayfs xattr whiteouts (kernel 6.7+): a zero-size regular file with
//!   `overlay.whiteout` inside a directory marked `overlay.opaque=x`;
//! - OCI image layers: a file `.wh.NAME` hides NAME in the layers below, and
//!   `.wh..wh..opq` makes its directory opaque.
//!
//! The markers themselves are never shown at the mountpoint, and neither are
//! the private `trusted.overlay.*` / `user.overlay.*` xattrs.

use std::io;

use crate::sys::Stat;

/// Prefix of an OCI whiteout file name.
pub const OCI_WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Name of the OCI opaque marker inside a directory.
pub const OCI_OPAQUE: &[u8] = b".wh..wh..opq";

/// The xattr namespaces overlayfs keeps its private metadata in.
pub const PRIVATE_PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];

/// Which namespace layerfs writes its own metadata in: `trusted.` when it runs
/// with CAP_SYS_ADMIN (as kernel overlayfs does), `user.` otherwise (as kernel
/// overlayfs with `userxattr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrNs {
    Trusted,
    User,
}

impl XattrNs {
    /// The full name of overlay xattr `key` (e.g. "opaque") in this namespace.
    pub fn name(self, key: &str) -> std::ffi::CString {
        let prefix = match self {
            XattrNs::Trusted => "trusted.overlay.",
            XattrNs::User => "user.overlay.",
        };
        // Keys are fixed ASCII identifiers: no NUL possible.
        std::ffi::CString::new(format!("{prefix}{key}")).unwrap_or_default()
    }
}

/// If `name` is an OCI whiteout for another name, that name.
/// `.wh..wh..opq` is the opaque marker, not a whiteout of "..wh..opq".
pub fn oci_whiteout_target(name: &[u8]) -> Option<&[u8]> {
    if name == OCI_OPAQUE {
        return None;
    }
    let target = name.strip_prefix(OCI_WHITEOUT_PREFIX)?;
    if target.is_empty() {
        None
    } else {
        Some(target)
    }
}

/// True for every name that is an OCI marker and so never shown.
pub fn is_oci_marker(name: &[u8]) -> bool {
    name.starts_with(OCI_WHITEOUT_PREFIX)
}

/// The OCI whiteout name that hides `name`.
pub fn oci_whiteout_name(name: &[u8]) -> Vec<u8> {
    let mut v = OCI_WHITEOUT_PREFIX.to_vec();
    v.extend_from_slice(name);
    v
}

/// A character device with device number 0/0: the kernel's whiteout.
pub fn is_chardev_whiteout(st: &Stat) -> bool {
    is_whiteout_dev(st.st_mode, st.st_rdev)
}

/// Whether a device of this mode and number would be a whiteout.
pub fn is_whiteout_dev(mode: u32, rdev: u64) -> bool {
    (mode & libc::S_IFMT) == libc::S_IFCHR && rdev == 0
}

/// A file that may be an xattr whiteout (its xattr still has to be checked,
/// and only inside a directory marked `opaque=x`).
pub fn may_be_xattr_whiteout(st: &Stat) -> bool {
    (st.st_mode & libc::S_IFMT) == libc::S_IFREG && st.st_size == 0
}

/// What a directory's overlay marks say about it, in one layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirMarks {
    /// Hides every same-named directory in the layers below.
    pub opaque: bool,
    /// Contains xattr whiteouts (`overlay.opaque=x`): zero-size files must be
    /// checked for `overlay.whiteout`.
    pub xwhiteouts: bool,
    /// Carries `overlay.redirect`: its lower part lives under another path.
    pub redirect: bool,
}

impl DirMarks {
    /// Reads the value of an `overlay.opaque` xattr.
    pub fn from_opaque_value(value: &[u8]) -> DirMarks {
        match value {
            b"y" => DirMarks {
                opaque: true,
                ..DirMarks::default()
            },
            b"x" => DirMarks {
                xwhiteouts: true,
                ..DirMarks::default()
            },
            _ => DirMarks::default(),
        }
    }

    pub fn merge(self, other: DirMarks) -> DirMarks {
        DirMarks {
            opaque: self.opaque || other.opaque,
            xwhiteouts: self.xwhiteouts || other.xwhiteouts,
            redirect: self.redirect || other.redirect,
        }
    }
}

/// True for xattrs that hold overlay metadata and must stay hidden.
pub fn is_private_xattr(name: &[u8]) -> bool {
    PRIVATE_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Splits a listxattr buffer into names, dropping the private ones.
pub fn public_xattr_names(list: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(list.len());
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if !is_private_xattr(name) {
            out.extend_from_slice(name);
            out.push(0);
        }
    }
    out
}

/// Whether a listxattr buffer holds the overlay xattr `key` (the part after
/// the namespace prefix) in either namespace.
pub fn has_overlay_xattr(list: &[u8], key: &[u8]) -> bool {
    list.split(|&b| b == 0).any(|n| {
        PRIVATE_PREFIXES
            .iter()
            .any(|p| n.strip_prefix(*p).is_some_and(|rest| rest == key))
    })
}

/// A parsed `overlay.redirect` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// Another name in the same parent's lower directories.
    Relative(Vec<u8>),
    /// A path from the lower layers' roots, as components.
    Absolute(Vec<Vec<u8>>),
}

impl Redirect {
    /// Parses a value with the kernel's rules (`ovl_get_redirect_xattr`):
    /// the value is a C string (it ends at the first NUL); an empty value,
    /// a relative one with a `/`, and an absolute one with an empty
    /// component are invalid (EINVAL). `.`, `..` and empty names pass
    /// here and fail where they are looked up, with EACCES, as they do in
    /// the kernel (see [`check_redirect_name`]).
    pub fn parse(value: &[u8]) -> io::Result<Redirect> {
        let einval = || io::Error::from_raw_os_error(libc::EINVAL);
        if value.is_empty() {
            return Err(einval());
        }
        let value = value.split(|&b| b == 0).next().unwrap_or_default();
        if let Some(rest) = value.strip_prefix(b"/") {
            let comps: Vec<Vec<u8>> = rest.split(|&b| b == b'/').map(|c| c.to_vec()).collect();
            if comps.iter().any(|c| c.is_empty()) {
                return Err(einval());
            }
            Ok(Redirect::Absolute(comps))
        } else if value.contains(&b'/') {
            Err(einval())
        } else {
            Ok(Redirect::Relative(value.to_vec()))
        }
    }
}

/// A name taken from a redirect, before it is looked up in a layer: the
/// kernel's `lookup_one` refuses an empty name, `.` and `..` with EACCES,
/// which keeps a redirect from climbing out of the layer.
pub fn check_redirect_name(name: &[u8]) -> io::Result<()> {
    if name.is_empty() || name == b"." || name == b".." {
        return Err(io::Error::from_raw_os_error(libc::EACCES));
    }
    Ok(())
}

pub fn oci_marker(name: &std::ffi::OsStr) -> std::io::Result<std::ffi::OsString> {
    let mut m = std::ffi::OsString::from(".wh.");
    m.push(name);
    if m.len() > 255 {
        return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    #[test]
    fn redirects() {
        let ok = |v: &[u8]| Redirect::parse(v).ok();
        let errno = |v: &[u8]| Redirect::parse(v).err().and_then(|e| e.raw_os_error());
        assert_eq!(
            ok(b"/a/b"),
            Some(Redirect::Absolute(vec![b"a".to_vec(), b"b".to_vec()]))
        );
        assert_eq!(ok(b"old"), Some(Redirect::Relative(b"old".to_vec())));
        assert_eq!(ok(b"old\0/x"), Some(Redirect::Relative(b"old".to_vec())));
        for bad in [&b"a/b"[..], b"/", b"//a", b"/a//b", b"/a/", b"", b"../x"] {
            assert_eq!(errno(bad), Some(libc::EINVAL), "{bad:?}");
        }
        // Dots pass parsing and are refused where they are looked up.
        assert_eq!(
            ok(b"/a/../b"),
            Some(Redirect::Absolute(vec![
                b"a".to_vec(),
                b"..".to_vec(),
                b"b".to_vec()
            ]))
        );
        assert_eq!(ok(b".."), Some(Redirect::Relative(b"..".to_vec())));
        for bad in [&b""[..], b".", b".."] {
            assert_eq!(
                check_redirect_name(bad).unwrap_err().raw_os_error(),
                Some(libc::EACCES)
            );
        }
        assert!(check_redirect_name(b"...").is_ok());
    }

    use super::*;

    #[test]
    fn oci_names() {
        assert_eq!(oci_whiteout_target(b".wh.foo"), Some(&b"foo"[..]));
        assert_eq!(oci_whiteout_target(b".wh..wh..opq"), None);
        assert_eq!(oci_whiteout_target(b".wh."), None);
        assert_eq!(oci_whiteout_target(b"a.wh.b"), None);
        assert_eq!(oci_whiteout_target(b".whatever"), None);
        assert!(is_oci_marker(b".wh..wh..opq"));
        assert!(is_oci_marker(b".wh.x"));
        assert!(!is_oci_marker(b".whx"));
        assert!(!is_oci_marker(b"a.wh.b"));
        assert_eq!(oci_whiteout_name(b"x"), b".wh.x".to_vec());
    }

    #[test]
    fn opaque_values() {
        assert!(DirMarks::from_opaque_value(b"y").opaque);
        assert!(!DirMarks::from_opaque_value(b"x").opaque);
        assert!(DirMarks::from_opaque_value(b"x").xwhiteouts);
        assert_eq!(DirMarks::from_opaque_value(b"n"), DirMarks::default());
        assert_eq!(DirMarks::from_opaque_value(b""), DirMarks::default());
    }

    #[test]
    fn private_xattrs_are_filtered() {
        let list = b"user.a\0trusted.overlay.opaque\0security.selinux\0user.overlay.origin\0user.overlayx\0";
        assert_eq!(
            public_xattr_names(list),
            b"user.a\0security.selinux\0user.overlayx\0".to_vec()
        );
        assert!(has_overlay_xattr(list, b"opaque"));
        assert!(has_overlay_xattr(list, b"origin"));
        assert!(!has_overlay_xattr(list, b"whiteout"));
    }

    #[test]
    fn namespaces() {
        assert_eq!(
            XattrNs::Trusted.name("opaque").as_bytes(),
            b"trusted.overlay.opaque"
        );
        assert_eq!(
            XattrNs::User.name("whiteout").as_bytes(),
            b"user.overlay.whiteout"
        );
    }
}
