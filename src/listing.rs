//! Directory listings: the merge of a directory's parts in every layer,
//! cached in its inode until it changes, served by readdir cookie.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::Arc;

use fuser::FileType;

use crate::attr;
use crate::dir::{self, DirEntryOut, MergedEntry};
use crate::ids::{InodeNo, KnownLayers, LayerMask, NodeId, RealKey};
use crate::inode::{Inode, RealEntry, ROOT_INO};
use crate::layer_read;
use crate::numbering::{Holder, Lineage};
use crate::overlay::LayerFs;
use crate::resolve::Resolved;
use crate::sys;

/// Part of a directory listing for one readdir request.
#[derive(Debug)]
pub struct DirPage {
    pub entries: Arc<Vec<DirEntryOut>>,
    /// First entry to send.
    pub start: usize,
}

impl DirPage {
    /// The readdir cookie that resumes after entry `index`.
    pub fn cookie_after(&self, index: usize) -> u64 {
        self.entries[index].cookie
    }
}

/// The readdir cookie of a name: a position that depends on the name only,
/// so that an iteration resumed in a newer listing (the directory changed
/// between two readdir calls) continues after the same point and returns
/// no name twice, as ext4's hash-ordered directories do. A listing is
/// sorted by it; 1 and 2 are `.` and `..`; the values stay below 2^62 (the
/// kernel keeps directory positions as a signed offset). The hash is keyed
/// per process, so names cannot be chosen to collide.
fn name_cookie(name: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    3 + (KEY.get_or_init(Default::default).hash_one(name) >> 2)
}

/// The global layer mask of a listing's positional presence mask.
fn global_layers(present: u64, reals: &[RealEntry]) -> LayerMask {
    if present & (1 << 63) != 0 {
        return LayerMask::ALL;
    }
    let mut mask = LayerMask::EMPTY;
    for (pos, r) in reals.iter().enumerate().take(63) {
        if present & (1 << pos) != 0 {
            mask = mask.with(r.layer);
        }
    }
    mask
}

impl LayerFs {
    /// The current merged listing of a directory, cached in its inode.
    pub(crate) fn current_listing(
        &self,
        inode: &Inode,
    ) -> io::Result<(u64, Arc<Vec<DirEntryOut>>)> {
        inode.listing(|| self.list_dir(inode))
    }

    /// The merged listing of a directory inode, `.` and `..` first.
    fn list_dir(&self, inode: &Inode) -> io::Result<Vec<DirEntryOut>> {
        let (reals, parent) = {
            let s = inode.state();
            (s.reals.clone(), s.parent)
        };
        let merged = self.merged_listing(&reals, inode)?;
        let parent_ino = if inode.ino == ROOT_INO {
            inode.st_ino
        } else {
            self.inodes
                .get(parent)
                .map(|p| p.st_ino)
                .unwrap_or(inode.st_ino)
        };
        let mut entries = Vec::with_capacity(merged.len() + 2);
        entries.push(DirEntryOut {
            name: ".".into(),
            kind: FileType::Directory,
            ino: inode.st_ino,
            layers: LayerMask::ALL,
            cookie: 1,
        });
        entries.push(DirEntryOut {
            name: "..".into(),
            kind: FileType::Directory,
            ino: parent_ino,
            layers: LayerMask::ALL,
            cookie: 2,
        });
        let merged_dir = reals.len() > 1;
        for e in merged {
            let r = &reals[e.layer_pos];
            let dev = self.layers().layer(r.layer).dev;
            let ino = if merged_dir && self.is_upper(r.layer) {
                // An upper entry of a merged directory may be a copy-up
                // that shows its origin's number: find it as stat would.
                self.entry_number(&reals, r, &e.name)
                    .unwrap_or_else(|| self.number_for(RealKey { dev, ino: e.d_ino }))
            } else {
                self.number_for(RealKey { dev, ino: e.d_ino })
            };
            entries.push(DirEntryOut {
                ino,
                kind: attr::file_type_of_dtype(e.d_type),
                cookie: name_cookie(&e.name),
                name: OsString::from_vec(e.name),
                layers: global_layers(e.present, &reals),
            });
        }
        entries[2..]
            .sort_unstable_by(|a, b| a.cookie.cmp(&b.cookie).then_with(|| a.name.cmp(&b.name)));
        Ok(entries)
    }

    /// The number `stat` would show for an upper entry of a merged
    /// directory, so that d_ino matches st_ino across copy-up.
    fn entry_number(&self, reals: &[RealEntry], r: &RealEntry, name: &[u8]) -> Option<InodeNo> {
        let name = OsStr::from_bytes(name);
        let dir = r.fd.get().ok()?;
        let fd = sys::openat(dir.as_fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0).ok()?;
        let st = sys::fstat(fd.as_fd()).ok()?;
        let key = RealKey::of(&st);
        // Only the kernel's stat checks the inode table: d_ino is a hint.
        let free = |_| Holder::Free;
        if self.numbering.remembered(key).is_none() && (st.st_mode & libc::S_IFMT) == libc::S_IFDIR
        {
            // A merged subdirectory's number comes from its lower part.
            return match self.resolve_in(reals, name).ok()? {
                Resolved::Dir(hits) => {
                    let key = RealKey::of(&hits[0].st);
                    Some(
                        self.numbering
                            .number(&self.layers(), key, self.lineage_of(&hits), free),
                    )
                }
                _ => None,
            };
        }
        Some(
            self.numbering
                .number(&self.layers(), key, Lineage::MaybeOrigin(fd.as_fd()), free),
        )
    }

    /// The merged listing of a directory's real parts, top first,
    /// recording in `inode` which layers' parts hold no OCI markers (so
    /// later lookups need not probe for them).
    fn merged_listing(&self, reals: &[RealEntry], inode: &Inode) -> io::Result<Vec<MergedEntry>> {
        let mut listings = Vec::with_capacity(reals.len());
        let mut clean = KnownLayers::NONE;
        for r in reals {
            let (entries, markers) = layer_read::list_layer_dir(r)?;
            // An OCI-format upper gains markers as names are deleted.
            let oci_upper =
                self.is_upper(r.layer) && self.upper_ctx().is_ok_and(|u| u.oci_whiteouts);
            if !markers && !oci_upper {
                clean = clean.with(r.layer);
            }
            listings.push(entries);
        }
        inode.saw_oci_clean(clean);
        Ok(dir::merge_listings(listings))
    }

    /// The entries of directory `ino` after the readdir cookie `offset`.
    /// Directories are never opened (OPENDIR answers ENOSYS, so the kernel
    /// neither sends OPENDIR nor RELEASEDIR and caches listings itself), so
    /// there is no per-iteration snapshot to keep: a cookie is a position
    /// by name (`name_cookie`) and resumes in the current listing, which
    /// gives each name at most once per iteration however much the
    /// directory changes meanwhile (snapshots kept by generation ran out
    /// under load, and resuming by index then repeated names).
    pub fn readdir(&self, ino: NodeId, offset: u64) -> io::Result<DirPage> {
        let inode = self.inode(ino)?;
        // Before the names are read: a change after this point drops what
        // the kernel caches of the answer (see `listing_changed`).
        inode.note_listing_served();
        let (_, entries) = self.current_listing(&inode)?;
        let start = match offset {
            0..=2 => offset as usize,
            _ => 2 + entries[2..].partition_point(|e| e.cookie <= offset),
        };
        Ok(DirPage {
            start: start.min(entries.len()),
            entries,
        })
    }
}
