//! Restacking: a run of lower layers replaced, under a running mount, by
//! one layer that shows what they showed together (a merge of a volume's
//! snapshots: compaction, snapshot removal). The volume tool asks through
//! the control socket (`control`), then removes the old layers.
//!
//! Nothing the containers see changes: the merged layer holds the same
//! names and content, every live inode keeps its number, and an open file
//! keeps its fd. Under the gate's full stop the stack is replaced and each
//! live inode's parts in the old layers are found again in the new one:
//! a directory's by looking its name up in its (already restacked)
//! parent, top-down, as a lookup would; a lower file's likewise; what no
//! lookup reaches (an unlinked object, a metacopy's data) keeps an fd of
//! its old object, whose content outlives the old layer's names.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ids::{LayerIdx, LayerMask, NodeId};
use crate::inode::{Inode, RealEntry, RealFd, ROOT_INO};
use crate::overlay::LayerFs;
use crate::resolve::Resolved;
use crate::rotation::RotateError;
use crate::sys;

/// What a restack took.
#[derive(Debug, Clone, Copy)]
pub struct Restacked {
    /// How long every request was held.
    pub stopped: Duration,
    /// Live inodes looked at.
    pub inodes: usize,
    /// Of those, found again by a lookup in the new layer.
    pub relooked: usize,
}

impl LayerFs {
    /// Replaces the lower layers whose roots are `old` (their identities,
    /// top first, a contiguous run of the stack) with the directory at
    /// `merged`, a relative path from the upper dir's parent.
    pub fn restack(
        &self,
        old: &[(u64, u64)],
        merged: &OsStr,
        timeout: Duration,
    ) -> Result<Restacked, RotateError> {
        let usage = |m: String| RotateError::Io(io::Error::new(io::ErrorKind::InvalidInput, m));
        let up = self.upper_ctx()?;
        let layers = self.layers();
        let parent = sys::openat(
            layers.root_fd(up.idx),
            OsStr::new(".."),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )?;
        let root = open_beneath(parent, merged)
            .map_err(|e| usage(format!("merged layer {merged:?}: {e}")))?;
        let ids: Vec<(u64, u64)> = layers
            .iter()
            .map(|(_, l)| sys::fstat(l.root.as_fd()).map(|st| (st.st_dev, st.st_ino)))
            .collect::<io::Result<_>>()?;
        let a = old
            .first()
            .and_then(|first| ids.iter().position(|k| k == first))
            .filter(|&a| a > up.idx.0 && ids.get(a..a + old.len()) == Some(old))
            .ok_or_else(|| {
                usage("the layers named are not a run of this mount's lower layers".into())
            })?;
        let b = a + old.len() - 1;
        let next = layers.replaced(a..=b, root).map_err(|e| {
            usage(format!(
                "merged layer {merged:?}: not on the filesystem of the layers it replaces ({e})"
            ))
        })?;
        drop(layers);

        let frozen = self
            .gate
            .freeze(timeout)
            .ok_or(RotateError::Timeout(timeout))?;
        let stopped = frozen.stop().ok_or(RotateError::Timeout(timeout))?;
        crate::sys::crashpoint::reached("restack-stopped");
        let t0 = Instant::now();
        self.replace_layers(next);
        self.numbering.restack(a..=b);
        let shift = |l: LayerIdx| match l.0 {
            i if i > b => LayerIdx(i - (b - a)),
            i if i >= a => LayerIdx(a),
            _ => l,
        };
        let mut nodes = Vec::new();
        self.inodes.for_each(|i| nodes.push(i.ino));
        let nodes: Vec<Arc<Inode>> = nodes
            .into_iter()
            .filter_map(|n| self.inode(n).ok())
            .collect();
        let depth = depths(&nodes);
        let mut order: Vec<usize> = (0..nodes.len()).collect();
        // Parents first: a directory is found again in its restacked parent.
        order.sort_by_key(|&i| (!nodes[i].is_dir(), depth[i]));
        let mut relooked = 0;
        for &i in &order {
            let node = &nodes[i];
            let reals = node.reals();
            let in_range = |r: &RealEntry| !self.is_upper(r.layer) && (a..=b).contains(&r.layer.0);
            if !reals.iter().any(in_range) {
                node.restacked(
                    reals
                        .into_iter()
                        .map(|mut r| {
                            r.layer = shift(r.layer);
                            r
                        })
                        .collect(),
                );
                continue;
            }
            let found = if node.ino == ROOT_INO {
                Some(self.root_parts(&reals, a, b))
            } else {
                self.look_again(node, &reals)
            };
            let reals = match found {
                Some(r) => {
                    relooked += 1;
                    self.keep_number(node, &r);
                    r
                }
                None => {
                    let s = node.state();
                    log::warn!(
                        "restack: node {} ({:?} in node {}{}) not found again: held by fd",
                        node.ino,
                        s.name,
                        s.parent,
                        if node.is_unlinked() { ", unlinked" } else { "" }
                    );
                    drop(s);
                    held_parts(reals, a, b, shift)
                }
            };
            node.restacked(reals);
        }
        let stopped_for = t0.elapsed();
        drop(stopped);
        drop(frozen);
        crate::sys::crashpoint::reached("restack-swapped");
        log::info!(
            "restack: layers {a}..={b} replaced by {merged:?}; {} inodes, {relooked} found again, {:?} held",
            nodes.len(),
            stopped_for
        );
        Ok(Restacked {
            stopped: stopped_for,
            inodes: nodes.len(),
            relooked,
        })
    }

    /// A node found again keeps its number: the object its number derives
    /// from (its first lower part) is a new one in the merged layer, which
    /// later lookups must number as before.
    fn keep_number(&self, node: &Inode, reals: &[RealEntry]) {
        let Some(part) = reals.iter().find(|r| !self.is_upper(r.layer)) else {
            return;
        };
        if let Ok(st) = part.fd.get().and_then(|fd| sys::fstat(fd.as_fd())) {
            self.numbering
                .keep(crate::ids::RealKey::of(&st), node.st_ino);
        }
    }

    /// The root's parts in the new stack: one per layer.
    fn root_parts(&self, old: &[RealEntry], a: usize, b: usize) -> Vec<RealEntry> {
        let layers = self.layers();
        let mut out = Vec::new();
        for (idx, l) in layers.iter() {
            let kept = match idx.0 {
                i if i < a => old.iter().find(|r| r.layer.0 == i).cloned(),
                i if i > a => {
                    old.iter()
                        .find(|r| r.layer.0 == i + (b - a))
                        .cloned()
                        .map(|mut r| {
                            r.layer = idx;
                            r
                        })
                }
                _ => None,
            };
            match kept {
                Some(r) => out.push(r),
                None => match sys::openat(l.root.as_fd(), OsStr::new("."), libc::O_PATH, 0) {
                    Ok(fd) => out.push(RealEntry {
                        layer: idx,
                        fd: fd.into(),
                        marks: Default::default(),
                    }),
                    Err(e) => log::warn!("restack: root of layer {}: {e}", idx.0),
                },
            }
        }
        out
    }

    /// A node's parts found again by looking its name up in its parent
    /// (restacked before it): its upper part as it was, the lower ones as
    /// the lookup finds them. None where no lookup reaches it.
    fn look_again(&self, node: &Inode, old: &[RealEntry]) -> Option<Vec<RealEntry>> {
        if node.is_unlinked() {
            return None;
        }
        let (parent, name) = {
            let s = node.state();
            (s.parent, s.name.clone())
        };
        let dir = self.inodes.get(parent).filter(|d| d.is_dir())?;
        let upper: Vec<RealEntry> = old
            .iter()
            .filter(|r| self.is_upper(r.layer))
            .cloned()
            .collect();
        match self.resolve_name(&dir, &name, LayerMask::ALL) {
            Ok(Resolved::Dir(hits)) if node.is_dir() => {
                let mut out = upper;
                for h in hits.into_iter().filter(|h| !self.is_upper(h.layer)) {
                    out.push(RealEntry {
                        layer: h.layer,
                        fd: self.dir_ref(h.layer, h.fd),
                        marks: h.marks,
                    });
                }
                Some(out)
            }
            // A lower file (its top part was in the old layers).
            Ok(Resolved::NonDir(h))
                if !node.is_dir() && upper.is_empty() && !self.is_upper(h.layer) =>
            {
                Some(vec![RealEntry {
                    layer: h.layer,
                    fd: match h.at {
                        Some((dir, name)) => RealFd::At { dir, name },
                        None => h.fd.into(),
                    },
                    marks: h.marks,
                }])
            }
            Ok(_) => None,
            Err(e) => {
                log::warn!("restack: node {}: {e}", node.ino);
                None
            }
        }
    }
}

/// A node's parts where no lookup reaches it: each part in the old layers
/// held by an fd of its object (its name there goes with the old layer).
fn held_parts(
    reals: Vec<RealEntry>,
    a: usize,
    b: usize,
    shift: impl Fn(LayerIdx) -> LayerIdx,
) -> Vec<RealEntry> {
    let mut out: Vec<RealEntry> = Vec::new();
    for mut r in reals {
        let moved = (a..=b).contains(&r.layer.0);
        r.layer = shift(r.layer);
        if moved {
            if out.iter().any(|o| o.layer == r.layer) {
                // A directory's second part in the merged run: the first
                // one shows the merge's top.
                continue;
            }
            if let (RealFd::At { .. }, Ok(fd)) = (&r.fd, r.fd.get()) {
                r.fd = RealFd::Held(fd);
            }
        }
        out.push(r);
    }
    out
}

/// Each node's distance from the root by its parents (unknown parents
/// count as far).
fn depths(nodes: &[Arc<Inode>]) -> Vec<usize> {
    let parent: std::collections::HashMap<NodeId, NodeId> =
        nodes.iter().map(|n| (n.ino, n.state().parent)).collect();
    nodes
        .iter()
        .map(|n| {
            let mut d = 0;
            let mut cur = n.ino;
            while cur != ROOT_INO && d < 4096 {
                match parent.get(&cur) {
                    Some(p) => cur = *p,
                    None => return usize::MAX,
                }
                d += 1;
            }
            d
        })
        .collect()
}

/// Opens `rel`, a relative path of plain names, from `dir`, following no
/// symlink.
fn open_beneath(dir: OwnedFd, rel: &OsStr) -> io::Result<OwnedFd> {
    let mut cur = dir;
    let parts: Vec<&[u8]> = rel.as_bytes().split(|c| *c == b'/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == b"." || *p == b"..")
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "expected a relative path of plain names",
        ));
    }
    for p in parts {
        cur = sys::openat(
            cur.as_fd(),
            OsStr::from_bytes(p),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
    }
    Ok(cur)
}
