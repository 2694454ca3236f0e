//! The inode numbers shown at the mountpoint, and the origin handles they
//! are recovered from. One type owns every number handed out:
//!
//! - a real object's number follows its identity by the xino rule
//!   (`LayerStack::xino`), as kernel overlayfs' does;
//! - a copied-up object keeps its origin's number: remembered for copy-ups
//!   of this mount, decoded from the `overlay.origin` handle for older ones;
//! - an identity with no room in the xino range gets a fallback number,
//!   stable for the mount; an object that must not reuse its own (its
//!   number is still held by a deleted one) gets a fresh one.
//!
//! [`Numbering::number`] is the one place that applies these rules to an
//! object about to be shown; callers say what they know of it
//! ([`Lineage`]) and who holds a number in the inode table ([`Holder`]).

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::ids::LayerIdx;
use crate::ids::{InodeNo, RealKey};
use crate::inode::ROOT_INO;
use crate::layers::LayerStack;
use crate::origin;
use crate::sys;
use crate::whiteout::XattrNs;

/// What origin handles need of each layer: its filesystem's UUID (written
/// into an origin) and its root opened for reading (`open_by_handle_at`
/// wants a real fd on the filesystem, not an O_PATH one), where that
/// filesystem's handles last.
#[derive(Debug)]
pub struct LayerHandles {
    uuids: Vec<[u8; 16]>,
    roots: Vec<Option<Arc<OwnedFd>>>,
}

impl LayerHandles {
    pub fn open(layers: &LayerStack) -> LayerHandles {
        let mut uuids = Vec::with_capacity(layers.len());
        let mut roots = Vec::with_capacity(layers.len());
        // What one filesystem answers holds for every layer on it (50
        // layers of an image usually share one): (reopens handles, UUID).
        let mut per_dev: std::collections::HashMap<u64, (bool, [u8; 16])> = Default::default();
        for (_, layer) in layers.iter() {
            let Ok(rd) = sys::reopen_dir(layer.root.as_fd(), libc::O_RDONLY) else {
                uuids.push([0; 16]);
                roots.push(None);
                continue;
            };
            let (reopens, uuid) = *per_dev
                .entry(layer.dev)
                .or_insert_with(|| (handles_reopen(layer, &rd), sys::fs_uuid(rd.as_fd())));
            uuids.push(if reopens { uuid } else { [0; 16] });
            roots.push(reopens.then(|| Arc::new(rd)));
        }
        LayerHandles { uuids, roots }
    }

    /// The handles after a rotation (`LayerStack::rotated`): the new upper
    /// is on the old one's filesystem, so it shares its UUID and root.
    pub fn rotated(&self) -> LayerHandles {
        let mut uuids = self.uuids.clone();
        let mut roots = self.roots.clone();
        uuids.insert(0, uuids.first().copied().unwrap_or([0; 16]));
        roots.insert(0, roots.first().cloned().flatten());
        LayerHandles { uuids, roots }
    }

    /// The fd to open file handles of layer `idx` with, where its
    /// filesystem's handles last and this process may open them.
    pub fn root(&self, idx: LayerIdx) -> Option<&Arc<OwnedFd>> {
        self.roots[idx.0].as_ref()
    }

    pub fn uuid(&self, idx: LayerIdx) -> [u8; 16] {
        self.uuids[idx.0]
    }
}

/// Whether file handles of `layer`'s filesystem can be opened again by
/// this process. Handles of a FUSE filesystem name the kernel's node ids,
/// which change from mount to mount: no origin is recorded or followed
/// there (a stale one could name another file). And opening a handle needs
/// CAP_DAC_READ_SEARCH in the initial user namespace: a rootless daemon
/// makes handles but cannot open them (EPERM), so it must hold its
/// directories by fd and write no origin it could not follow.
fn handles_reopen(layer: &crate::layers::Layer, rd: &OwnedFd) -> bool {
    if sys::fstatfs_type(rd.as_fd()).map_or(true, |t| t == crate::features::FUSE_SUPER_MAGIC) {
        return false;
    }
    sys::name_to_handle(layer.root.as_fd())
        .and_then(|h| sys::open_by_handle(rd.as_fd(), &h))
        .is_ok()
}

/// Where an object's number comes from, as far as the caller knows.
#[derive(Debug, Clone, Copy)]
pub enum Lineage<'a> {
    /// Its own identity: a lower object, or an upper one already known to
    /// carry no origin that opens.
    Own,
    /// An upper object that may carry an `overlay.origin` not read yet.
    MaybeOrigin(BorrowedFd<'a>),
    /// An upper object whose origin (or metacopy data) the caller found:
    /// its number is the origin's, remembered for the upper object.
    Origin(RealKey),
    /// The upper part of a merged directory: the number of its first
    /// lower part (found again by every lookup, so not remembered).
    LowerPart(RealKey),
    /// An object just made in the upper: its own identity, whatever a
    /// deleted object whose inode the upper reused left remembered.
    New,
}

/// Who holds a number in the inode table, for [`Numbering::number`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// Nobody, or the very object being numbered.
    Free,
    /// Another object (or a deleted one the kernel still holds): the
    /// number must not be shared.
    Other,
}

/// Every number handed out, and how they are found again.
#[derive(Debug)]
pub struct Numbering {
    /// Numbers of upper objects whose number is not their own identity:
    /// copy-ups (which keep the origin's number) and renumbered objects.
    remembered: DashMap<RealKey, InodeNo>,
    fallback: DashMap<RealKey, InodeNo>,
    next_fallback: AtomicU64,
    /// Replaced whole by a rotation.
    handles: parking_lot::RwLock<Arc<LayerHandles>>,
    /// The upper layer and the namespace of its `overlay.*` xattrs.
    upper: Option<(LayerIdx, XattrNs)>,
}

impl Numbering {
    pub fn new(
        layers: &LayerStack,
        handles: LayerHandles,
        upper: Option<(LayerIdx, XattrNs)>,
    ) -> Numbering {
        Numbering {
            remembered: DashMap::new(),
            fallback: DashMap::new(),
            next_fallback: AtomicU64::new(layers.fallback_base().max(2)),
            handles: parking_lot::RwLock::new(Arc::new(handles)),
            upper,
        }
    }

    pub fn handles(&self) -> Arc<LayerHandles> {
        Arc::clone(&self.handles.read())
    }

    /// After a restack (`LayerStack::replaced`): the merged layer, on the
    /// filesystem of the first layer it replaces, takes its handles.
    pub(crate) fn restack(&self, range: std::ops::RangeInclusive<usize>) {
        let old = self.handles();
        let mut uuids = Vec::new();
        let mut roots = Vec::new();
        for i in 0..old.uuids.len() {
            if i == *range.start() || !range.contains(&i) {
                uuids.push(old.uuids[i]);
                roots.push(old.roots[i].clone());
            }
        }
        *self.handles.write() = Arc::new(LayerHandles { uuids, roots });
    }

    /// Object `key` shows number `n` from now on (an object of a merged
    /// layer standing for one a live inode was numbered by).
    pub(crate) fn keep(&self, key: RealKey, n: InodeNo) {
        self.remembered.insert(key, n);
    }

    /// After a rotation: the handles of the new stack.
    pub(crate) fn rotate(&self) {
        let next = self.handles().rotated();
        *self.handles.write() = Arc::new(next);
    }

    /// The number an object whose top real object is `top` shows: a number
    /// remembered for `top`, else the one its lineage gives (an origin's is
    /// remembered for `top`), else its own identity's. Should `holder` say
    /// another object holds that number, `top` gets a fresh one instead,
    /// remembered. This is the one rule: every object shown is numbered
    /// here.
    pub fn number(
        &self,
        layers: &LayerStack,
        top: RealKey,
        lineage: Lineage<'_>,
        holder: impl FnOnce(InodeNo) -> Holder,
    ) -> InodeNo {
        let remembered = match lineage {
            Lineage::New => {
                self.forget(top);
                None
            }
            _ => self.remembered(top),
        };
        let n = match (remembered, lineage) {
            (Some(n), _) => n,
            (None, Lineage::Own | Lineage::New) => self.number_for(layers, top),
            (None, Lineage::LowerPart(lower)) => self.number_for(layers, lower),
            (None, Lineage::Origin(origin)) => self.number_from_origin(layers, top, origin),
            (None, Lineage::MaybeOrigin(fd)) => match self.origin_key(layers, fd) {
                Some(origin) => self.number_from_origin(layers, top, origin),
                None => self.number_for(layers, top),
            },
        };
        match holder(n) {
            Holder::Free => n,
            Holder::Other => {
                let fresh = self.fresh_number();
                self.remember(top, fresh);
                fresh
            }
        }
    }

    fn number_from_origin(&self, layers: &LayerStack, top: RealKey, origin: RealKey) -> InodeNo {
        let n = self.number_for(layers, origin);
        self.remember(top, n);
        n
    }

    /// The number shown for a real object of identity `key` by its
    /// identity alone (a remembered number first).
    pub fn number_for(&self, layers: &LayerStack, key: RealKey) -> InodeNo {
        if let Some(n) = self.remembered.get(&key) {
            return *n;
        }
        match layers.xino(key.dev, key.ino) {
            Some(n) if n != ROOT_INO.0 && n != 0 => InodeNo(n),
            _ => self.fallback_number(key),
        }
    }

    /// The number remembered for the upper object `key`, if any.
    pub fn remembered(&self, key: RealKey) -> Option<InodeNo> {
        self.remembered.get(&key).map(|n| *n)
    }

    /// The upper object `key` is the copy of an object showing `number`,
    /// which it keeps.
    pub fn copied_up(&self, key: RealKey, number: InodeNo) {
        self.remember(key, number);
    }

    /// The real object `key` no longer shows its own number (a lower hard
    /// link copied up without an index: its copy took the number, and the
    /// names not linked up yet are another file now): a fresh one.
    pub fn renumber(&self, key: RealKey) {
        self.remember(key, self.fresh_number());
    }

    fn remember(&self, key: RealKey, number: InodeNo) {
        self.remembered.insert(key, number);
    }

    /// The upper object `key` is gone: a new object that gets its inode
    /// number is numbered afresh.
    pub fn forget(&self, key: RealKey) {
        self.remembered.remove(&key);
    }

    /// The number for an identity that has no persistent number.
    fn fallback_number(&self, key: RealKey) -> InodeNo {
        *self
            .fallback
            .entry(key)
            .or_insert_with(|| self.fresh_number())
    }

    /// A number never handed out before, for objects that cannot use their
    /// own (see `Inode::is_unlinked`).
    fn fresh_number(&self) -> InodeNo {
        InodeNo(self.next_fallback.fetch_add(1, Ordering::Relaxed))
    }

    /// The identity of the lower file an upper one was copied up from, by
    /// its origin handle (needs CAP_DAC_READ_SEARCH; without it the upper's
    /// own number is used, stable for the mount but not across copy-up).
    pub fn origin_key(&self, layers: &LayerStack, fd: BorrowedFd<'_>) -> Option<RealKey> {
        let found = self.decode_origin(layers, fd)?;
        let st = sys::fstat(found.as_fd()).ok()?;
        Some(RealKey::of(&st))
    }

    /// Opens the lower file an upper one was copied up from.
    pub fn decode_origin(&self, layers: &LayerStack, fd: BorrowedFd<'_>) -> Option<OwnedFd> {
        let (upper, ns) = self.upper?;
        let value = sys::getxattr_fd(fd, &ns.name("origin")).ok()?;
        let o = origin::decode(&value)?;
        let handles = self.handles();
        for (idx, _) in layers.iter() {
            if idx == upper || handles.uuid(idx) != o.uuid {
                continue;
            }
            let Some(root) = handles.root(idx) else {
                continue;
            };
            if let Ok(found) = sys::open_by_handle(root.as_fd(), &o.handle) {
                let st = sys::fstat(found.as_fd()).ok()?;
                // As the kernel's `ovl_acceptable`: a directory origin
                // must lie inside the layer (a handle decodes anything on
                // the filesystem); a non-directory is used only for its
                // number, which the kernel takes wherever it lies.
                let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
                if st.st_nlink > 0 && (!is_dir || dir_in_layer(layers, &found, idx)) {
                    return Some(found);
                }
            }
        }
        None
    }
}

/// Whether directory `fd` is layer `idx`'s root or below it, found by
/// walking `..` up to the layer root or the filesystem's root.
fn dir_in_layer(layers: &LayerStack, fd: &OwnedFd, idx: LayerIdx) -> bool {
    let Ok(root) = sys::fstat(layers.root_fd(idx)) else {
        return false;
    };
    let Ok(mut cur) = sys::reopen(fd.as_fd(), libc::O_PATH | libc::O_DIRECTORY) else {
        return false;
    };
    // Bounded: a directory tree is finite, but a bound costs nothing.
    for _ in 0..1_000_000 {
        let Ok(st) = sys::fstat(cur.as_fd()) else {
            return false;
        };
        if st.st_dev == root.st_dev && st.st_ino == root.st_ino {
            return true;
        }
        let Ok(up) = sys::openat(
            cur.as_fd(),
            OsStr::new(".."),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        ) else {
            return false;
        };
        match sys::fstat(up.as_fd()) {
            Ok(ust) if ust.st_dev == st.st_dev && ust.st_ino != st.st_ino => cur = up,
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbering() -> (tempfile::TempDir, LayerStack, Numbering) {
        let t = tempfile::tempdir().unwrap();
        let l = t.path().join("l");
        std::fs::create_dir(&l).unwrap();
        let layers = LayerStack::open(None, &[l]).unwrap();
        let handles = LayerHandles::open(&layers);
        let n = Numbering::new(&layers, handles, None);
        (t, layers, n)
    }

    #[test]
    fn fallback_numbers_are_stable_and_distinct() {
        let (_t, _layers, n) = numbering();
        let k = |ino| RealKey { dev: 1, ino };
        let a = n.fallback_number(k(2));
        let b = n.fallback_number(k(3));
        assert_ne!(a, b);
        assert_eq!(a, n.fallback_number(k(2)));
        assert_ne!(n.fresh_number(), a);
    }

    #[test]
    fn the_rule_takes_remembered_then_lineage_then_own_and_never_shares() {
        let (_t, layers, n) = numbering();
        let st = sys::fstat(layers.root_fd(LayerIdx(0))).unwrap();
        let upper = RealKey::of(&st);
        let free = |_| Holder::Free;
        let lower = RealKey {
            dev: st.st_dev,
            ino: st.st_ino + 7,
        };
        // A merged directory's upper part shows its lower part's number,
        // not remembered.
        let own = n.number(&layers, upper, Lineage::Own, free);
        assert_eq!(own, InodeNo(st.st_ino));
        let part = n.number(&layers, upper, Lineage::LowerPart(lower), free);
        assert_eq!(part, InodeNo(lower.ino));
        assert_eq!(n.remembered(upper), None);
        // An origin's number is remembered, and wins from then on.
        let o = n.number(&layers, upper, Lineage::Origin(lower), free);
        assert_eq!(o, InodeNo(lower.ino));
        assert_eq!(n.number(&layers, upper, Lineage::Own, free), o);
        // A new object forgets what a deleted one left.
        assert_eq!(n.number(&layers, upper, Lineage::New, free), own);
        // A number another object holds is never shared: a fresh one,
        // remembered.
        let fresh = n.number(&layers, upper, Lineage::New, |_| Holder::Other);
        assert_ne!(fresh, own);
        assert_eq!(n.number(&layers, upper, Lineage::Own, free), fresh);
    }

    #[test]
    fn a_remembered_number_wins_until_forgotten() {
        let (_t, layers, n) = numbering();
        let st = sys::fstat(layers.root_fd(LayerIdx(0))).unwrap();
        let key = RealKey::of(&st);
        let own = n.number_for(&layers, key);
        assert_eq!(own, InodeNo(st.st_ino), "one filesystem: the real number");
        n.remember(key, InodeNo(4242));
        assert_eq!(n.number_for(&layers, key), InodeNo(4242));
        n.forget(key);
        assert_eq!(n.number_for(&layers, key), own);
    }
}
