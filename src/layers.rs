//! The layer stack: one directory fd per layer, top first, and the rule that
//! turns a real file's (st_dev, st_ino) into the inode number shown at the
//! mountpoint.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::ids::LayerIdx;
use crate::sys;

/// One layer of the stack.
#[derive(Debug)]
pub struct Layer {
    /// O_PATH fd of the layer's root directory. Every access to the layer's
    /// content is relative to this fd or to fds opened from it.
    pub root: OwnedFd,
    /// st_dev of the layer's root.
    pub dev: u64,
    /// Whether this is the writable upper layer.
    pub writable: bool,
}

/// Opens a lower layer's root through a private copy of its mounts, as
/// kernel overlayfs takes each layer (`clone_private_mount`). Whatever the
/// daemon holds open on the lower (layer roots, inodes, open files, the
/// kernel's passthrough backing files) then pins only the copy: `umount`
/// of the lower filesystem succeeds as soon as `umount` of the union has
/// returned, although the daemon closes its fds only a few milliseconds
/// later (for a non-block FUSE mount the kernel does not wait for the daemon:
/// it sends no FUSE_DESTROY, it only aborts the connection). Where the copy
/// may not be made (no CAP_SYS_ADMIN over the mount namespace, an
/// unbindable mount), the layer is opened as it is.
fn open_lower_root(path: &Path) -> io::Result<OwnedFd> {
    match sys::clone_mount_tree(path, true) {
        Ok(fd) => Ok(fd),
        Err(e) => {
            log::debug!(
                "lowerdir {}: no private mount copy ({e}); using the mount as it is",
                path.display()
            );
            sys::open_path(path, libc::O_PATH | libc::O_DIRECTORY)
        }
    }
}

/// The whole stack, top first.
#[derive(Debug)]
pub struct LayerStack {
    layers: Vec<Layer>,
    /// Distinct st_dev values in the stack, in order of first appearance from
    /// the top; an index here is a file's "fsid" in the inode number.
    devs: Vec<u64>,
    /// Number of high bits of an inode number that hold the fsid.
    xino_bits: u32,
}

impl LayerStack {
    /// Opens every layer directory. `upper` (if any) becomes layer 0.
    pub fn open(upper: Option<&Path>, lowers: &[PathBuf]) -> io::Result<LayerStack> {
        let mut layers = Vec::with_capacity(lowers.len() + 1);
        let all = upper
            .map(|u| (u, true))
            .into_iter()
            .chain(lowers.iter().map(|l| (l.as_path(), false)));
        for (path, writable) in all {
            let root = if writable {
                sys::open_path(path, libc::O_PATH | libc::O_DIRECTORY)?
            } else {
                open_lower_root(path)?
            };
            let st = sys::fstat(root.as_fd())?;
            layers.push(Layer {
                root,
                dev: st.st_dev,
                writable,
            });
        }
        Ok(LayerStack::from_layers(layers))
    }

    fn from_layers(layers: Vec<Layer>) -> LayerStack {
        let mut devs: Vec<u64> = Vec::new();
        for l in &layers {
            if !devs.contains(&l.dev) {
                devs.push(l.dev);
            }
        }
        LayerStack {
            xino_bits: xino_bits_for(devs.len()),
            layers,
            devs,
        }
    }

    /// The stack after a rotation: `upper` (a directory on the upper's
    /// filesystem) on top, the old upper below it as a read-only layer,
    /// the lower layers unchanged. Each layer keeps its place relative to
    /// the others, one index further down; the filesystems, and so every
    /// number the xino rule gives, stay the same.
    pub fn rotated(&self, upper: OwnedFd) -> io::Result<LayerStack> {
        let old = self
            .upper()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EROFS))?;
        let dev = sys::fstat(upper.as_fd())?.st_dev;
        if dev != self.layer(old).dev {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        let mut layers = Vec::with_capacity(self.layers.len() + 1);
        layers.push(Layer {
            root: upper,
            dev,
            writable: true,
        });
        for l in &self.layers {
            layers.push(Layer {
                root: l.root.try_clone()?,
                dev: l.dev,
                writable: false,
            });
        }
        Ok(LayerStack::from_layers(layers))
    }

    /// The stack with the lower layers `range` replaced by `root`, a layer
    /// that shows what they showed together (a merge of them): refused
    /// (EXDEV) unless every filesystem keeps its place in the xino rule.
    pub fn replaced(
        &self,
        range: std::ops::RangeInclusive<usize>,
        root: OwnedFd,
    ) -> io::Result<LayerStack> {
        let dev = sys::fstat(root.as_fd())?.st_dev;
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            if i == *range.start() {
                layers.push(Layer {
                    root: root.try_clone()?,
                    dev,
                    writable: false,
                });
            }
            if !range.contains(&i) {
                layers.push(Layer {
                    root: l.root.try_clone()?,
                    dev: l.dev,
                    writable: l.writable,
                });
            }
        }
        let next = LayerStack::from_layers(layers);
        if next.devs != self.devs {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        Ok(next)
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    pub fn layer(&self, idx: LayerIdx) -> &Layer {
        &self.layers[idx.0]
    }

    pub fn root_fd(&self, idx: LayerIdx) -> BorrowedFd<'_> {
        self.layers[idx.0].root.as_fd()
    }

    pub fn iter(&self) -> impl Iterator<Item = (LayerIdx, &Layer)> {
        self.layers
            .iter()
            .enumerate()
            .map(|(i, l)| (LayerIdx(i), l))
    }

    /// The writable layer, if the mount has one.
    pub fn upper(&self) -> Option<LayerIdx> {
        match self.layers.first() {
            Some(l) if l.writable => Some(LayerIdx(0)),
            _ => None,
        }
    }

    /// The persistent inode number for a real file, or None when it does not
    /// fit (unknown device, or an inode number using the fsid bits).
    pub fn xino(&self, dev: u64, ino: u64) -> Option<u64> {
        let fsid = self.devs.iter().position(|&d| d == dev)? as u64;
        compose_xino(fsid, ino, self.xino_bits)
    }

    /// The first number of the range used for files whose identity does not
    /// fit [`LayerStack::xino`]: the fsid one past the last real one.
    pub fn fallback_base(&self) -> u64 {
        (self.devs.len() as u64) << (64 - self.xino_bits)
    }
}

/// How many high bits hold the fsid: enough for every device of the stack
/// plus one extra value reserved for fallback numbers. With all layers on one
/// filesystem this is 1 bit, and the inode number equals the real one.
pub fn xino_bits_for(ndevs: usize) -> u32 {
    let values = ndevs as u64 + 1;
    (64 - (values - 1).leading_zeros()).max(1)
}

/// Composes `fsid` and a real inode number the way kernel overlayfs' xino
/// does: the fsid goes into the high bits; fsid 0 leaves the number unchanged.
pub fn compose_xino(fsid: u64, ino: u64, bits: u32) -> Option<u64> {
    let shift = 64 - bits;
    if ino >> shift != 0 {
        return None;
    }
    Some(ino | (fsid << shift))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xino_bits() {
        assert_eq!(xino_bits_for(1), 1);
        assert_eq!(xino_bits_for(2), 2);
        assert_eq!(xino_bits_for(3), 2);
        assert_eq!(xino_bits_for(4), 3);
    }

    #[test]
    fn xino_compose() {
        assert_eq!(compose_xino(0, 1234, 1), Some(1234));
        assert_eq!(compose_xino(1, 5, 2), Some((1 << 62) | 5));
        assert_eq!(compose_xino(0, 1 << 63, 1), None);
        assert_eq!(compose_xino(2, 7, 2), Some((2 << 62) | 7));
    }
}
