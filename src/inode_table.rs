//! The live inodes by node id, with their kernel lookup counts
//! (`numbering` hands out the numbers, `inode` holds each one's state).

use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::ids::NodeId;
use crate::inode::{Inode, ROOT_INO};

/// Sharded map of live inodes by node id (`numbering.rs` hands out the
/// numbers).
#[derive(Debug)]
pub struct InodeTable {
    map: DashMap<NodeId, Arc<Inode>>,
}

impl InodeTable {
    pub fn new(root: Inode) -> InodeTable {
        let map = DashMap::new();
        map.insert(ROOT_INO, Arc::new(root));
        InodeTable { map }
    }

    pub fn get(&self, ino: NodeId) -> Option<Arc<Inode>> {
        self.map.get(&ino).map(|r| Arc::clone(r.value()))
    }

    /// Returns the live inode with node id `ino`, or inserts the one `make`
    /// builds, and adds one lookup reference either way. `make` runs under
    /// the lock of the entry's shard: it must not touch the table.
    pub fn lookup_insert(&self, ino: NodeId, make: impl FnOnce() -> Inode) -> Arc<Inode> {
        match self.map.entry(ino) {
            Entry::Occupied(e) => {
                let inode = Arc::clone(e.get());
                inode.add_lookups(1);
                inode
            }
            Entry::Vacant(v) => {
                let inode = Arc::new(make());
                inode.add_lookups(1);
                v.insert(Arc::clone(&inode));
                inode
            }
        }
    }

    /// Drops `n` lookup references; the inode leaves the table when none is
    /// left. The root is never removed.
    pub fn forget(&self, ino: NodeId, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        self.map.remove_if(&ino, |_, inode| inode.drop_lookups(n));
    }

    /// Calls `f` on every live inode (a rotation, with every request held).
    pub fn for_each(&self, mut f: impl FnMut(&Inode)) {
        for e in self.map.iter() {
            f(e.value());
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{InodeNo, LayerIdx};
    use crate::inode::{InodeState, RealEntry};
    use crate::whiteout::DirMarks;
    use std::os::fd::AsFd;

    fn n(id: u64) -> NodeId {
        NodeId(id)
    }

    fn state() -> InodeState {
        let fd = std::fs::File::open("/").unwrap();
        InodeState::new(
            vec![RealEntry {
                layer: LayerIdx(0),
                fd: fd.as_fd().try_clone_to_owned().unwrap().into(),
                marks: DirMarks::default(),
            }],
            ROOT_INO,
            std::ffi::OsStr::new("x"),
        )
    }

    fn table() -> InodeTable {
        InodeTable::new(Inode::new(ROOT_INO, InodeNo(2), true, state()))
    }

    #[test]
    fn lookups_and_forget() {
        let t = table();
        let a = t.lookup_insert(n(10), || Inode::new(n(10), InodeNo(10), false, state()));
        let b = t.lookup_insert(n(10), || panic!("must reuse the live inode"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.lookup_count(), 2);
        t.forget(n(10), 1);
        assert!(t.get(n(10)).is_some());
        t.forget(n(10), 1);
        assert!(t.get(n(10)).is_none());
        // A count that reached zero never comes back: a new lookup builds a new inode.
        let c = t.lookup_insert(n(10), || Inode::new(n(10), InodeNo(10), false, state()));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.lookup_count(), 1);
    }

    #[test]
    fn batch_forget_more_than_held_removes() {
        let t = table();
        t.lookup_insert(n(11), || Inode::new(n(11), InodeNo(11), false, state()));
        t.forget(n(11), 5);
        assert!(t.get(n(11)).is_none());
        t.forget(ROOT_INO, 100);
        assert!(t.get(ROOT_INO).is_some());
    }

    #[test]
    fn concurrent_lookup_and_forget_keep_counts() {
        let t = Arc::new(table());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let t = Arc::clone(&t);
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        t.lookup_insert(n(20), || Inode::new(n(20), InodeNo(20), false, state()));
                        t.forget(n(20), 1);
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert!(t.get(n(20)).is_none());
        assert_eq!(t.len(), 1);
    }
}
