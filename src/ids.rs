//! Types for the id domains, so that one cannot stand for another: the
//! kernel's node ids, the identity of a real object, the open-file handles
//! given to the kernel, layers and sets of layers. Each converts from and to
//! fuser's types once, at the FUSE boundary (`fs.rs`).

use crate::sys::Stat;

/// A node id: how the kernel names an inode in every request. It is the
/// inode number the node shows (see `numbering.rs`), except for the root,
/// whose id is always 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

impl NodeId {
    pub const ROOT: NodeId = NodeId(1);

    /// The node of an object other than the root is named by the inode
    /// number it shows: the kernel then answers stat with the node id.
    pub fn of_number(number: InodeNo) -> NodeId {
        NodeId(number.0)
    }
}

/// An inode number shown at the mountpoint (st_ino, d_ino). Only
/// `numbering.rs` decides one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InodeNo(pub u64);

impl From<InodeNo> for fuser::INodeNo {
    fn from(n: InodeNo) -> Self {
        fuser::INodeNo(n.0)
    }
}

impl std::fmt::Display for InodeNo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<fuser::INodeNo> for NodeId {
    fn from(n: fuser::INodeNo) -> Self {
        NodeId(n.0)
    }
}

impl From<NodeId> for fuser::INodeNo {
    fn from(n: NodeId) -> Self {
        fuser::INodeNo(n.0)
    }
}

/// A real object's identity: (st_dev, st_ino) on its filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RealKey {
    pub dev: u64,
    pub ino: u64,
}

impl RealKey {
    pub fn of(st: &Stat) -> RealKey {
        RealKey {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}

/// The handle of an open file, as given to the kernel in OPEN's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileHandle(pub u64);

impl From<fuser::FileHandle> for FileHandle {
    fn from(fh: fuser::FileHandle) -> Self {
        FileHandle(fh.0)
    }
}

impl From<FileHandle> for fuser::FileHandle {
    fn from(fh: FileHandle) -> Self {
        fuser::FileHandle(fh.0)
    }
}

/// Index of a layer in the stack: 0 is the top (the upper dir when there is
/// one), the last is the bottom lower layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LayerIdx(pub usize);

/// A set of layers, by index (layers past the 128th are always members:
/// a mask cannot tell them apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerMask(u128);

impl LayerMask {
    /// Every layer: nothing is known of where a name lies.
    pub const ALL: LayerMask = LayerMask(u128::MAX);
    pub const EMPTY: LayerMask = LayerMask(0);

    pub fn contains(self, idx: LayerIdx) -> bool {
        idx.0 >= 128 || self.0 & (1 << idx.0) != 0
    }

    /// This set with `idx` added.
    pub fn with(self, idx: LayerIdx) -> LayerMask {
        if idx.0 >= 128 {
            return LayerMask::ALL;
        }
        LayerMask(self.0 | 1 << idx.0)
    }
}

/// Layers known to have some property of one directory (their part of it
/// holds no OCI markers, say), by index. Unlike [`LayerMask`], nothing is
/// assumed of a layer it cannot hold: past the 64th (the set fits one
/// atomic word in the inode), no layer is ever known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KnownLayers(u64);

impl KnownLayers {
    pub const NONE: KnownLayers = KnownLayers(0);

    pub fn contains(self, idx: LayerIdx) -> bool {
        idx.0 < 64 && self.0 & (1 << idx.0) != 0
    }

    /// This set with `idx` added (a layer past the 64th stays unknown).
    pub fn with(self, idx: LayerIdx) -> KnownLayers {
        if idx.0 >= 64 {
            return self;
        }
        KnownLayers(self.0 | 1 << idx.0)
    }

    /// The set as one word, for an atomic store.
    pub fn bits(self) -> u64 {
        self.0
    }

    pub fn from_bits(bits: u64) -> KnownLayers {
        KnownLayers(bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mask_holds_what_was_added_and_every_layer_past_128() {
        let m = LayerMask::EMPTY.with(LayerIdx(3));
        assert!(m.contains(LayerIdx(3)));
        assert!(!m.contains(LayerIdx(2)));
        assert!(m.contains(LayerIdx(200)));
        assert_eq!(m.with(LayerIdx(128)), LayerMask::ALL);
        assert!(LayerMask::ALL.contains(LayerIdx(0)));
    }

    #[test]
    fn known_layers_know_nothing_past_64() {
        let k = KnownLayers::NONE.with(LayerIdx(5)).with(LayerIdx(70));
        assert!(k.contains(LayerIdx(5)));
        assert!(!k.contains(LayerIdx(70)));
        assert!(!k.contains(LayerIdx(4)));
        assert_eq!(KnownLayers::from_bits(k.bits()), k);
    }
}
