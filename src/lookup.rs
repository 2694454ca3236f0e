//! Lookup: finding a name in a merged directory across the layers
//! (following redirects, the index and metacopy data), numbering what is
//! found, and the kernel's references to the inodes it was given.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use fuser::FileAttr;

use crate::attr;
use crate::ids::{KnownLayers, LayerIdx, LayerMask, NodeId, RealKey};
use crate::inode::{Inode, InodeState, RealEntry, RealFd};
use crate::layer_read::{probe_layer, probe_layer_with, read_redirect, Hit};
use crate::numbering::{Holder, Lineage};
use crate::overlay::{errno, LayerFs};
use crate::resolve::{self, Probe, Resolved};
use crate::sys::{self, Stat};
use crate::whiteout::{self, DirMarks, Redirect, XattrNs};

/// Whether a live inode's top real object is the file `st` describes
/// (when it cannot be told, it is assumed to be: a failed check must not
/// split one object in two).
fn is_same_object(inode: &Inode, st: &Stat) -> bool {
    let same = || {
        let top = inode.state().reals[0].fd.clone();
        match top.get().and_then(|fd| sys::fstat(fd.as_fd())) {
            Ok(have) => have.st_dev == st.st_dev && have.st_ino == st.st_ino,
            Err(_) => true,
        }
    };
    if same() {
        return true;
    }
    // A copy-up of that inode may have just put its copy in place
    // (found by this lookup) without having switched the inode's top to it
    // yet: wait for it to finish, then compare again. No lookup runs under
    // a copy lock, so this cannot wait on itself.
    let _settled = inode.copy_lock.lock();
    same()
}

/// What an upper file's overlay xattrs say.
#[derive(Default)]
struct UpperFileInfo {
    /// The lower file it was copied up from, when its handle opens.
    origin: Option<OwnedFd>,
    /// Its data still lives in the lower file.
    metacopy: bool,
    nlink_delta: Option<i64>,
}

/// Names the kernel could send that must never reach a layer.
pub(crate) fn check_name(name: &OsStr) -> io::Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(errno(libc::EINVAL));
    }
    if b.len() > 255 {
        return Err(errno(libc::ENAMETOOLONG));
    }
    Ok(())
}

impl LayerFs {
    /// What the number of the object found as `hits` derives from: a
    /// merged directory's first lower part; an upper object's origin, if it
    /// carries one; else its own identity.
    pub(crate) fn lineage_of<'a>(&self, hits: &'a [Hit]) -> Lineage<'a> {
        let top = &hits[0];
        if !self.is_upper(top.layer) {
            return Lineage::Own;
        }
        match hits.get(1) {
            Some(lower) => Lineage::LowerPart(RealKey::of(&lower.st)),
            None => Lineage::MaybeOrigin(top.fd.as_fd()),
        }
    }

    /// The index entry of a lower file with several names, if its set was
    /// copied up.
    fn index_hit(&self, lower: &Hit) -> Option<Hit> {
        let up = self.upper_ctx().ok()?;
        let index = up.work.index_fd()?;
        let entry = RealEntry {
            layer: lower.layer,
            fd: sys::reopen(lower.fd.as_fd(), libc::O_PATH).ok()?.into(),
            marks: DirMarks::default(),
        };
        let origin = self.origin_of(&entry)?;
        let name = crate::copyup::index_name(&origin);
        let fd = sys::openat(index, &name, libc::O_PATH | libc::O_NOFOLLOW, 0).ok()?;
        let st = sys::fstat(fd.as_fd()).ok()?;
        Some(Hit {
            layer: up.idx,
            fd,
            st,
            marks: DirMarks::default(),
            at: None,
        })
    }

    /// What an upper file's overlay xattrs say (one listxattr, then only
    /// the values present).
    fn upper_file_info(&self, hit: &Hit) -> UpperFileInfo {
        let mut info = UpperFileInfo::default();
        let Ok(list) = sys::listxattr_fd(hit.fd.as_fd()) else {
            return info;
        };
        if whiteout::has_overlay_xattr(&list, b"origin")
            && self.numbering.remembered(RealKey::of(&hit.st)).is_none()
        {
            info.origin = self.numbering.decode_origin(&self.layers(), hit.fd.as_fd());
        }
        info.metacopy = whiteout::has_overlay_xattr(&list, b"metacopy");
        if whiteout::has_overlay_xattr(&list, b"nlink") {
            for ns in [XattrNs::Trusted, XattrNs::User] {
                if let Ok(v) = sys::getxattr_fd(hit.fd.as_fd(), &ns.name("nlink")) {
                    info.nlink_delta = attr::parse_nlink(&v, hit.st.st_nlink as i64);
                    break;
                }
            }
        }
        if info.metacopy && info.origin.is_none() {
            info.origin = self.numbering.decode_origin(&self.layers(), hit.fd.as_fd());
        }
        info
    }

    /// The data of a metacopy file whose origin handle cannot be opened:
    /// the same name in the parent's lower layers, as kernel overlayfs
    /// finds it.
    fn find_lowerdata(&self, dir: &Inode, name: &OsStr) -> io::Result<Option<Hit>> {
        let lowers = self.lower_reals(dir);
        Ok(match self.resolve_in(&lowers, name)? {
            Resolved::NonDir(h) if h.st.st_mode & libc::S_IFMT == libc::S_IFREG => Some(h),
            _ => None,
        })
    }

    /// The data of a metacopy file renamed by kernel overlayfs, which
    /// records the file's lower path as an absolute `overlay.redirect`.
    fn find_lowerdata_at(&self, path: &[Vec<u8>]) -> io::Result<Option<Hit>> {
        let lowers: Vec<LayerIdx> = self
            .layers()
            .iter()
            .map(|(idx, _)| idx)
            .filter(|idx| !self.is_upper(*idx))
            .collect();
        for (i, idx) in lowers.iter().enumerate() {
            let mut path = path.to_vec();
            match self.probe_path(*idx, &mut path, i + 1 < lowers.len())?.0 {
                Probe::Absent => continue,
                Probe::NonDir(h) if h.st.st_mode & libc::S_IFMT == libc::S_IFREG => {
                    return Ok(Some(h))
                }
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Looks `name` up in directory `parent`; on success the returned inode
    /// carries one more lookup reference, which the kernel will forget.
    pub fn lookup(&self, parent: NodeId, name: &OsStr) -> io::Result<(Arc<Inode>, FileAttr)> {
        self.lookup_hinted(parent, name, LayerMask::ALL)
    }

    /// `lookup`, probing only the lower layers in `layers` (and the upper):
    /// what a directory listing saw there (`DirEntryOut::layers`). Lower
    /// layers never change, so the hint stays true.
    pub fn lookup_hinted(
        &self,
        parent: NodeId,
        name: &OsStr,
        layers: LayerMask,
    ) -> io::Result<(Arc<Inode>, FileAttr)> {
        check_name(name)?;
        let dir = self.inode(parent)?;
        if !dir.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        if whiteout::is_oci_marker(name.as_bytes()) {
            return Err(errno(libc::ENOENT));
        }
        let mut hits = match self.resolve_name(&dir, name, layers)? {
            Resolved::Absent => return Err(errno(libc::ENOENT)),
            Resolved::NonDir(h) => vec![h],
            Resolved::Dir(hs) => hs,
        };
        let is_dir = (hits[0].st.st_mode & libc::S_IFMT) == libc::S_IFDIR;
        let mut delta = None;
        let mut origin_id = None;
        if !is_dir {
            // A lower hardlink whose set was copied up: the index holds the
            // one upper copy every name must reach.
            if !self.is_upper(hits[0].layer) && hits[0].st.st_nlink > 1 {
                if let Some(h) = self.index_hit(&hits[0]) {
                    hits[0] = h;
                }
            }
            if self.is_upper(hits[0].layer) {
                let info = self.upper_file_info(&hits[0]);
                delta = info.nlink_delta;
                if let Some(fd) = &info.origin {
                    let st = sys::fstat(fd.as_fd())?;
                    origin_id = Some(RealKey::of(&st));
                }
                if info.metacopy {
                    // The data is found by path, as kernel overlayfs finds
                    // it, never through the origin handle: a forged handle
                    // could name any file of the lower's filesystem, the
                    // host's included.
                    let data = match read_redirect(&hits[0].fd) {
                        Some(Ok(Redirect::Absolute(path))) => self.find_lowerdata_at(&path)?,
                        _ => self.find_lowerdata(&dir, name)?,
                    };
                    // A metacopy whose data cannot be found cannot be read.
                    let data = data.ok_or_else(|| {
                        log::warn!("metacopy {name:?}: its data is in no lower layer");
                        errno(libc::EIO)
                    })?;
                    // Its number is its data's, as in the kernel, whatever
                    // its origin says.
                    origin_id = Some(RealKey::of(&data.st));
                    hits.push(data);
                }
            }
        }
        let top = &hits[0].st;
        let lineage = match origin_id {
            Some(origin) => Lineage::Origin(origin),
            // An upper non-directory's xattrs were read above: no origin
            // that opens.
            None if !is_dir && self.is_upper(hits[0].layer) => Lineage::Own,
            None => self.lineage_of(&hits),
        };
        // A number still held by the kernel for an unlinked object (whose
        // inode number the filesystem has since reused) must not be shared.
        //
        // Nor may two distinct objects share one: a number taken from an
        // `overlay.origin` (forged, or naming a lower file that another
        // name still shows) would otherwise make this lookup return the
        // live inode of the other object, with its content.
        let number =
            self.numbering
                .number(&self.layers(), RealKey::of(top), lineage, |n| {
                    match self.inodes.get(NodeId::of_number(n)) {
                        Some(i) if i.is_unlinked() || !is_same_object(&i, top) => Holder::Other,
                        _ => Holder::Free,
                    }
                });
        let data_st = (!is_dir && hits.len() > 1).then(|| &hits[1].st);
        let attr = attr::compose(top, number, is_dir && hits.len() > 1, delta, data_st);
        let inode = self.inodes.lookup_insert(NodeId::of_number(number), || {
            let reals = hits
                .into_iter()
                .map(|h| RealEntry {
                    layer: h.layer,
                    // A lower file is reached by name when needed: no fd is
                    // held per file, whatever the size of the tree walked.
                    fd: match h.at {
                        _ if self.is_upper(h.layer) => self.upper_ref(h.fd, is_dir, || h.at),
                        Some((dir, name)) => RealFd::At { dir, name },
                        None if is_dir => self.dir_ref(h.layer, h.fd),
                        None => h.fd.into(),
                    },
                    marks: h.marks,
                })
                .collect();
            let inode = Inode::new(
                NodeId::of_number(number),
                number,
                is_dir,
                InodeState::new(reals, parent, name),
            );
            inode.set_nlink_delta(delta);
            inode
        });
        inode.name_seen(parent, name);
        Ok((inode, attr))
    }

    /// Applies the overlay lookup rule to `name` in `dir`, following
    /// `overlay.redirect` on directories: a relative redirect renames the
    /// entry in the lower layers, an absolute one restarts the lookup from
    /// the lower layers' roots.
    pub(crate) fn resolve_name(
        &self,
        dir: &Inode,
        name: &OsStr,
        layers: LayerMask,
    ) -> io::Result<Resolved<Hit>> {
        let reals = dir.reals();
        let clean = dir.oci_clean();
        self.resolve_masked(&reals, name, clean, layers)
    }

    pub(crate) fn resolve_in(
        &self,
        reals: &[RealEntry],
        name: &OsStr,
    ) -> io::Result<Resolved<Hit>> {
        self.resolve_masked(reals, name, KnownLayers::NONE, LayerMask::ALL)
    }

    /// `clean`: the layers whose part of the directory is known to hold no
    /// OCI markers (an upper written by fuse-overlayfs may hold them, so
    /// the upper is no exception); `layers`: those that may hold the name.
    ///
    /// Redirects are followed as kernel overlayfs' `ovl_lookup` does, layer
    /// by layer: the name (or path) looked up in a layer is the one the
    /// layers above left, changed by any redirect met in this layer, on the
    /// entry itself or, for an absolute path, on a directory on the way.
    fn resolve_masked(
        &self,
        reals: &[RealEntry],
        name: &OsStr,
        clean: KnownLayers,
        mut layers: LayerMask,
    ) -> io::Result<Resolved<Hit>> {
        let n = reals.len();
        let follow = self.opts.redirect_dir.follows();
        let mut pos = 0;
        let mut cur_name: Vec<u8> = name.as_bytes().to_vec();
        // With an absolute redirect: the path, and the next layer to probe.
        let mut absolute: Option<(Vec<Vec<u8>>, usize)> = None;
        let probes = std::iter::from_fn(|| -> Option<io::Result<Probe<Hit>>> {
            // `stop`: an opaque directory on the way of an absolute path
            // ends the merge in this layer (unless an absolute redirect
            // further on starts it again).
            let (result, more, mut stop) = if let Some((path, next)) = absolute.as_mut() {
                if *next >= self.layers().len() {
                    return None;
                }
                let idx = LayerIdx(*next);
                *next += 1;
                let more = *next < self.layers().len();
                match self.probe_path(idx, path, more) {
                    Ok((probe, stop)) => (Ok(probe), more, stop),
                    Err(e) => (Err(e), more, false),
                }
            } else {
                if pos >= n {
                    return None;
                }
                let r = &reals[pos];
                pos += 1;
                let skip = !layers.contains(r.layer);
                if skip && !self.is_upper(r.layer) {
                    return Some(Ok(Probe::Absent));
                }
                let known_clean = clean.contains(r.layer);
                if let Err(e) = whiteout::check_redirect_name(&cur_name) {
                    return Some(Err(e));
                }
                let name = OsStr::from_bytes(&cur_name);
                (
                    probe_layer_with(r, name, pos < n, !known_clean),
                    pos < n,
                    false,
                )
            };
            // As the kernel: a redirect matters (and a malformed one is an
            // error) only above the bottom layer of the stack (not of the
            // parent: an absolute one restarts from the roots).
            if let Ok(Probe::Dir(hit, false)) = &result {
                let redirect = hit.marks.redirect && hit.layer.0 + 1 < self.layers().len();
                if redirect && !follow {
                    // redirect_dir=nofollow: kernel overlayfs refuses the
                    // lookup when the parent has layers below this one,
                    // rather than show the directory without the lower
                    // parts its redirect names.
                    if more {
                        log::warn!(
                            "refusing to follow the redirect of {:?} (redirect_dir=nofollow)",
                            name
                        );
                        return Some(Err(errno(libc::EPERM)));
                    }
                } else if redirect {
                    // The name changes below: the listing says nothing.
                    layers = LayerMask::ALL;
                    match read_redirect(&hit.fd) {
                        Some(Ok(Redirect::Relative(new))) => match absolute.as_mut() {
                            // It renames the last component of the path.
                            Some((path, _)) => {
                                if let Some(last) = path.last_mut() {
                                    *last = new;
                                }
                            }
                            None => cur_name = new,
                        },
                        Some(Ok(Redirect::Absolute(path))) => {
                            absolute = Some((path, hit.layer.0 + 1));
                            stop = false;
                        }
                        Some(Err(e)) => return Some(Err(e)),
                        None => {}
                    }
                }
            }
            Some(match result {
                Ok(Probe::Dir(hit, _)) if stop => Ok(Probe::Dir(hit, true)),
                Ok(Probe::Absent) if stop => Ok(Probe::Whiteout),
                other => other,
            })
        });
        resolve::resolve(probes)
    }

    /// Probes an absolute path from the root of one layer. A missing
    /// component is absence; a whiteout or non-directory on the way hides
    /// the path in this and every lower layer. A redirect on a directory on
    /// the way is applied to `path` for the layers below (`/a/moved/x` with
    /// `a/moved` redirected to `/a/orig` is `/a/orig/x` there), while the
    /// walk goes on in this layer's directory, as the kernel's
    /// `ovl_lookup_layer` does. Also returns whether an opaque directory
    /// on the way ends the merge in this layer.
    fn probe_path(
        &self,
        idx: LayerIdx,
        path: &mut Vec<Vec<u8>>,
        more: bool,
    ) -> io::Result<(Probe<Hit>, bool)> {
        if path.is_empty() {
            return Ok((Probe::Absent, false));
        }
        let mut cur = RealEntry {
            layer: idx,
            fd: sys::openat(self.layers().root_fd(idx), OsStr::new("."), libc::O_PATH, 0)?.into(),
            marks: DirMarks::default(),
        };
        let mut stop = false;
        let mut i = 0;
        // Ends: each step leaves one component fewer to walk after `i`
        // (a redirect replaces only the components walked so far).
        while i + 1 < path.len() {
            whiteout::check_redirect_name(&path[i])?;
            match probe_layer(&cur, OsStr::from_bytes(&path[i]), true)? {
                Probe::Absent => return Ok((Probe::Absent, stop)),
                Probe::Whiteout | Probe::NonDir(_) => return Ok((Probe::Whiteout, false)),
                Probe::Dir(hit, opaque) => {
                    if opaque {
                        stop = true;
                    } else if hit.marks.redirect && self.opts.redirect_dir.follows() {
                        match read_redirect(&hit.fd).transpose()? {
                            Some(Redirect::Relative(new)) => path[i] = new,
                            Some(Redirect::Absolute(mut prefix)) if !prefix.is_empty() => {
                                let rest = path.split_off(i + 1);
                                i = prefix.len() - 1;
                                prefix.extend(rest);
                                *path = prefix;
                                stop = false;
                            }
                            _ => {}
                        }
                    }
                    cur = RealEntry {
                        layer: idx,
                        fd: hit.fd.into(),
                        marks: hit.marks,
                    };
                }
            }
            i += 1;
        }
        let last = &path[path.len() - 1];
        whiteout::check_redirect_name(last)?;
        Ok((probe_layer(&cur, OsStr::from_bytes(last), more)?, stop))
    }

    pub fn forget(&self, ino: NodeId, n: u64) {
        self.inodes.forget(ino, n);
    }

    /// Looks a child up for a name operation, without keeping a reference
    /// (the kernel holds its own on a child it operates on).
    pub(crate) fn child(&self, parent: NodeId, name: &OsStr) -> io::Result<Arc<Inode>> {
        let (inode, _) = self.lookup(parent, name)?;
        self.inodes.forget(inode.ino, 1);
        Ok(inode)
    }
}
