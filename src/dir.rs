//! Merged readdir: the union of a directory's contributing layers, top first,
//! minus whiteouts and markers, each name once.

use std::collections::HashMap;
use std::ffi::OsString;

use fuser::FileType;

use crate::ids::{InodeNo, LayerMask};

/// One raw entry of one layer, already classified by the caller (which may
/// need a stat or an xattr to tell a whiteout from a file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerEntry {
    /// An ordinary entry: shown unless hidden by a layer above.
    Visible {
        name: Vec<u8>,
        d_type: u8,
        d_ino: u64,
    },
    /// A whiteout for `name` (char device, xattr whiteout or OCI `.wh.name`):
    /// hides `name` in the layers below.
    Whiteout { name: Vec<u8> },
}

/// One entry of the merged listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedEntry {
    pub name: Vec<u8>,
    pub d_type: u8,
    /// The real inode number in the layer it came from.
    pub d_ino: u64,
    /// Index of the contributing layer (in the directory's own list) it came
    /// from, to turn `d_ino` into the mount's inode number.
    pub layer_pos: usize,
    /// Bit i set when the name appears (as an entry or a whiteout) in
    /// layer i of the list; positions past 63 are all folded into bit 63.
    /// A lookup of the name need not probe the other layers.
    pub present: u64,
}

fn position_bit(pos: usize) -> u64 {
    1 << pos.min(63)
}

/// Merges per-layer listings, top layer first. Within one layer, an entry
/// and a whiteout of the same name can both exist (OCI layers that delete
/// then re-add): the layer's own entry stays, lower ones are hidden.
pub fn merge_listings<I>(layers: I) -> Vec<MergedEntry>
where
    I: IntoIterator<Item = Vec<LayerEntry>>,
{
    // Name -> index in `out` (None: hidden by a whiteout).
    let mut seen: HashMap<Vec<u8>, Option<usize>> = HashMap::new();
    let mut out: Vec<MergedEntry> = Vec::new();
    for (pos, entries) in layers.into_iter().enumerate() {
        let bit = position_bit(pos);
        let mut hidden_below = Vec::new();
        for e in entries {
            match e {
                LayerEntry::Visible {
                    name,
                    d_type,
                    d_ino,
                } => match seen.get(&name) {
                    Some(Some(i)) => out[*i].present |= bit,
                    Some(None) => {}
                    None => {
                        seen.insert(name.clone(), Some(out.len()));
                        out.push(MergedEntry {
                            name,
                            d_type,
                            d_ino,
                            layer_pos: pos,
                            present: bit,
                        });
                    }
                },
                LayerEntry::Whiteout { name } => {
                    if let Some(Some(i)) = seen.get(&name) {
                        out[*i].present |= bit;
                    }
                    hidden_below.push(name);
                }
            }
        }
        for name in hidden_below {
            seen.entry(name).or_insert(None);
        }
    }
    out
}

/// One entry of an open directory's snapshot.
#[derive(Debug, Clone)]
pub struct DirEntryOut {
    pub name: OsString,
    pub kind: FileType,
    pub ino: InodeNo,
    /// Lower layers (bit = layer index) whose part of the directory holds
    /// the name, as an entry or a whiteout: a lookup from the listing
    /// (readdirplus) probes only those, plus the upper. `LayerMask::ALL` when
    /// unknown.
    pub layers: LayerMask,
    /// The readdir cookie that resumes after this entry (see
    /// `name_cookie`).
    pub cookie: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(name: &str, t: u8) -> LayerEntry {
        LayerEntry::Visible {
            name: name.as_bytes().to_vec(),
            d_type: t,
            d_ino: 1,
        }
    }
    fn w(name: &str) -> LayerEntry {
        LayerEntry::Whiteout {
            name: name.as_bytes().to_vec(),
        }
    }
    fn names(m: &[MergedEntry]) -> Vec<(String, usize)> {
        m.iter()
            .map(|e| (String::from_utf8(e.name.clone()).unwrap(), e.layer_pos))
            .collect()
    }

    #[test]
    fn presence_masks_name_every_layer_holding_the_name() {
        let m = merge_listings(vec![
            vec![v("d", 4), w("gone")],
            vec![v("x", 8)],
            vec![v("d", 4), v("gone", 8), w("x")],
        ]);
        let mask = |n: &str| m.iter().find(|e| e.name == n.as_bytes()).unwrap().present;
        assert_eq!(mask("d"), 0b101);
        assert_eq!(mask("x"), 0b110);
        assert!(m.iter().all(|e| e.name != b"gone"));
    }

    #[test]
    fn union_top_first() {
        let m = merge_listings(vec![vec![v("a", 8), v("b", 4)], vec![v("b", 4), v("c", 8)]]);
        assert_eq!(
            names(&m),
            vec![("a".into(), 0), ("b".into(), 0), ("c".into(), 1)]
        );
    }

    #[test]
    fn whiteouts_hide_only_below() {
        let m = merge_listings(vec![
            vec![w("x"), v("y", 8)],
            vec![v("x", 8), w("y"), v("z", 8)],
            vec![v("z", 8), v("x", 8)],
        ]);
        assert_eq!(names(&m), vec![("y".into(), 0), ("z".into(), 1)]);
    }

    #[test]
    fn same_layer_entry_survives_its_whiteout() {
        let m = merge_listings(vec![vec![w("x"), v("x", 4)], vec![v("x", 8)]]);
        assert_eq!(names(&m), vec![("x".into(), 0)]);
        assert_eq!(m[0].d_type, 4);
    }
}
