//! Extended attributes of merged objects, as kernel overlayfs shows them:
//! the topmost object's (a lower object's names cached, since lower layers
//! never change), with the `overlay.*` marks private; a change copies the
//! object up, metadata only.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use crate::ids::NodeId;
use crate::inode::Inode;
use crate::overlay::{errno, LayerFs};
use crate::sys;
use crate::whiteout;

/// The xattr the kernel asks for before every write, to drop it.
pub(crate) const CAPS: &[u8] = b"security.capability";

impl LayerFs {
    pub fn getxattr(&self, ino: NodeId, name: &OsStr) -> io::Result<Vec<u8>> {
        if whiteout::is_private_xattr(name.as_bytes()) {
            return Err(errno(libc::ENODATA));
        }
        let inode = self.inode(ino)?;
        if name.as_bytes() == CAPS && inode.caps_absent() {
            return Err(errno(libc::ENODATA));
        }
        if let Some(names) = self.lower_xattr_names(&inode)? {
            if !names.split(|&b| b == 0).any(|n| n == name.as_bytes()) {
                return Err(errno(libc::ENODATA));
            }
        }
        let c = sys::cstr(name)?;
        match sys::getxattr_fd(inode.top().fd.get()?.as_fd(), &c) {
            // A layer without POSIX ACLs (GlusterFS mounted without -o acl)
            // has none: passed on, EOPNOTSUPP would be the result of the
            // kernel's permission check instead of the mode bits' answer.
            Err(e)
                if e.raw_os_error() == Some(libc::EOPNOTSUPP)
                    && name.as_bytes().starts_with(b"system.posix_acl_") =>
            {
                Err(errno(libc::ENODATA))
            }
            r => r,
        }
    }

    pub fn listxattr(&self, ino: NodeId) -> io::Result<Vec<u8>> {
        let inode = self.inode(ino)?;
        let list = match self.lower_xattr_names(&inode)? {
            Some(l) => l,
            None => Arc::new(sys::listxattr_fd(inode.top().fd.get()?.as_fd())?),
        };
        Ok(whiteout::public_xattr_names(&list))
    }

    /// The xattr names of an inode whose top is a lower object, cached
    /// (lower objects never change); None for upper objects, whose xattrs
    /// the kernel may change behind us (a write through passthrough drops
    /// capabilities).
    fn lower_xattr_names(&self, inode: &Inode) -> io::Result<Option<Arc<Vec<u8>>>> {
        let top = inode.top();
        if self.is_upper(top.layer) {
            return Ok(None);
        }
        let list = inode.xattr_names(|| match sys::listxattr_fd(top.fd.get()?.as_fd()) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Ok(Vec::new()),
            r => r,
        })?;
        Ok(Some(list))
    }

    pub fn setxattr(&self, ino: NodeId, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
        if whiteout::is_private_xattr(name.as_bytes()) {
            return Err(errno(libc::EPERM));
        }
        let inode = self.inode(ino)?;
        let up = self.copy_up_meta(&inode)?;
        if name.as_bytes() == CAPS {
            // Before the change: a reader meanwhile sees no capability yet.
            inode.set_caps_absent(false);
        }
        sys::setxattr_fd(up.fd.get()?.as_fd(), &sys::cstr(name)?, value, flags)
    }

    pub fn removexattr(&self, ino: NodeId, name: &OsStr) -> io::Result<()> {
        if whiteout::is_private_xattr(name.as_bytes()) {
            return Err(errno(libc::ENODATA));
        }
        let inode = self.inode(ino)?;
        let c = sys::cstr(name)?;
        // Removing what is not there changes nothing: no copy-up for it.
        sys::getxattr_fd(inode.top().fd.get()?.as_fd(), &c)?;
        let up = self.copy_up_meta(&inode)?;
        sys::removexattr_fd(up.fd.get()?.as_fd(), &c)
    }
}
