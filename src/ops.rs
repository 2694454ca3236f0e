//! The filesystem state and the read-side operations (lookup, attributes,
//! readdir, reads, xattrs), one plain function each returning `io::Result`.
//! Name-changing operations are in `namespace.rs`, data and metadata
//! changes in `modify.rs`, copy-up in `copyup.rs`. `fs.rs` converts FUSE
//! arguments, calls these and replies.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Duration;

use fuser::FileAttr;

use crate::attr;
use crate::ids::{LayerMask, RealKey};
use crate::inode::{Inode, InodeState, InodeTable, RealEntry, RealFd, ROOT_INO};
use crate::layer_read::{probe_layer, probe_layer_with, read_dir_marks, read_redirect, Hit};
use crate::layers::{LayerIdx, LayerStack};
use crate::lookup::{self, Probe, Resolved};
use crate::numbering::{LayerHandles, Numbering};
use crate::open_files::OpenFiles;
use crate::sys::{self, Stat};
use crate::whiteout::{self, DirMarks, Redirect, XattrNs};
use crate::workdir::WorkDir;

pub(crate) fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// Tunables fixed at mount time.
#[derive(Debug, Clone)]
pub struct FsOptions {
    /// How long the kernel may cache attributes and entries.
    pub timeout: Duration,
    /// fsync copy-ups and honour fsync requests (off with `volatile`).
    pub fsync: bool,
    /// A read-only mount even though an upper layer is given.
    pub read_only: bool,
    /// Metadata-only copy-up (kernel overlayfs' `metacopy=on`).
    pub metacopy: bool,
    /// Try FUSE passthrough for regular files.
    pub passthrough: bool,
    /// Do without the kernel's writeback cache (`writeback=0`).
    pub no_writeback: bool,
    /// Ids shown to the kernel versus ids stored (applied in `fs`).
    pub ids: crate::idmap::IdMapping,
    /// Whiteouts as xattr-marked files (kernel 6.7+ reads them) instead of
    /// char 0/0 devices, for uppers that will be used where device nodes
    /// cannot be made; fuse-overlayfs' FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT.
    pub xattr_whiteouts: bool,
    /// `redirect_dir=`: whether directory renames write redirects and
    /// lookups follow them.
    pub redirect_dir: crate::options::RedirectDir,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            timeout: Duration::from_secs(86400),
            fsync: true,
            read_only: false,
            metacopy: false,
            passthrough: true,
            no_writeback: false,
            ids: Default::default(),
            xattr_whiteouts: false,
            redirect_dir: Default::default(),
        }
    }
}

/// What the writable upper layer needs besides its directory fd.
#[derive(Debug)]
pub struct UpperCtx {
    pub idx: LayerIdx,
    pub work: WorkDir,
    /// Namespace of the overlay xattrs written: trusted when privileged.
    pub ns: XattrNs,
    pub fsync: bool,
    /// Write xattr whiteouts instead of char 0/0 devices.
    pub xattr_whiteouts: bool,
    /// Renames, with the fallbacks the upper's filesystem needs.
    pub renames: crate::features::UpperRenames,
    /// Whiteouts and opaque marks as OCI `.wh.` files (an upper with no
    /// xattrs: `Features::oci_format`).
    pub oci_whiteouts: bool,
}

/// The whole filesystem state, shared by every worker thread.
#[derive(Debug)]
pub struct LayerFs {
    pub layers: LayerStack,
    pub inodes: InodeTable,
    pub opts: FsOptions,
    upper: Option<UpperCtx>,
    /// Inode numbers and the origin handles they come from.
    pub(crate) numbering: Numbering,
    /// Whether upper files can be reopened by file handle (see `RealFd`).
    upper_handles: bool,
    /// Past this fd number, new directory inodes hold file handles rather
    /// than fds (see `dir_ref`): three quarters of the open-file limit.
    fd_pressure: u64,
    pub(crate) files: OpenFiles,
    /// The session's notifier once mounted (shared with `fs.rs`).
    pub(crate) notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
}

impl LayerFs {
    /// Builds the filesystem over an opened layer stack: the root inode is
    /// the merge of every layer's root directory. `work` is the prepared
    /// work directory when the stack has an upper layer.
    pub fn new(layers: LayerStack, opts: FsOptions, work: Option<WorkDir>) -> io::Result<LayerFs> {
        let mut reals = Vec::with_capacity(layers.len());
        for (idx, layer) in layers.iter() {
            let fd = sys::openat(layer.root.as_fd(), OsStr::new("."), libc::O_PATH, 0)?;
            let marks = read_dir_marks(&fd)?;
            reals.push(RealEntry {
                layer: idx,
                fd: fd.into(),
                marks,
            });
        }
        let handles = LayerHandles::open(&layers);
        if reals.is_empty() {
            return Err(errno(libc::EINVAL));
        }
        if let Some(w) = &work {
            w.note_holder();
        }
        let upper = match (layers.upper(), work) {
            (Some(idx), Some(work)) if !opts.read_only => Some(UpperCtx {
                idx,
                ns: work.xattr_ns(),
                renames: crate::features::UpperRenames::new(*work.features()),
                xattr_whiteouts: !work.features().oci_format()
                    && (opts.xattr_whiteouts || !work.features().whiteout_mknod),
                oci_whiteouts: work.features().oci_format(),
                work,
                fsync: opts.fsync,
            }),
            _ => None,
        };
        let top = sys::fstat(reals[0].fd.get()?.as_fd())?;
        let st_ino = layers.xino(top.st_dev, top.st_ino).unwrap_or(ROOT_INO);
        let root = Inode::new(
            ROOT_INO,
            st_ino,
            true,
            InodeState::new(reals, ROOT_INO, OsStr::new("")),
        );
        let upper_handles = upper.as_ref().is_some_and(|u| {
            u.work.features().file_handles
                && handles.root(u.idx).is_some_and(|root| {
                    sys::name_to_handle(layers.root_fd(u.idx))
                        .and_then(|h| sys::open_by_handle(root.as_fd(), &h))
                        .is_ok()
                })
        });
        let inodes = InodeTable::new(root);
        let numbering = Numbering::new(&layers, handles, upper.as_ref().map(|u| (u.idx, u.ns)));
        Ok(LayerFs {
            layers,
            inodes,
            opts,
            upper,
            numbering,
            upper_handles,
            fd_pressure: sys::nofile_limit().map_or(768, |n| n / 4 * 3),
            files: OpenFiles::default(),
            notifier: Default::default(),
        })
    }

    /// Drops the kernel's cached attributes of node `ino` after a change
    /// it cannot see (only an attribute-only invalidation: no page or
    /// inode locks are taken, so it is safe inside a request).
    pub(crate) fn attributes_changed(&self, ino: u64) {
        if let Some(n) = self.notifier.get() {
            if let Err(e) = n.inval_inode(fuser::INodeNo(ino), -1, 0) {
                log::debug!("inval_inode {ino}: {e}");
            }
        }
    }

    pub(crate) fn inode(&self, ino: u64) -> io::Result<Arc<Inode>> {
        self.inodes.get(ino).ok_or_else(|| errno(libc::ESTALE))
    }

    /// The writable layer, or EROFS.
    pub(crate) fn upper_ctx(&self) -> io::Result<&UpperCtx> {
        self.upper.as_ref().ok_or_else(|| errno(libc::EROFS))
    }

    pub fn is_writable(&self) -> bool {
        self.upper.is_some()
    }

    pub(crate) fn is_upper(&self, layer: LayerIdx) -> bool {
        self.upper.as_ref().is_some_and(|u| u.idx == layer)
    }

    /// How an inode keeps hold of an upper object: a file handle for a
    /// non-directory where possible, else the fd itself.
    pub(crate) fn upper_ref(&self, fd: OwnedFd, is_dir: bool) -> RealFd {
        if is_dir {
            return match &self.upper {
                Some(u) if self.upper_handles => self.dir_ref(u.idx, fd),
                _ => fd.into(),
            };
        }
        if self.upper_handles {
            if let (Some(u), Ok(handle)) = (&self.upper, sys::name_to_handle(fd.as_fd())) {
                if let Some(root) = &self.numbering.handles().root(u.idx) {
                    return RealFd::Handle {
                        root: Arc::clone(root),
                        handle: Arc::new(handle),
                    };
                }
            }
        }
        fd.into()
    }

    /// How an inode keeps hold of a directory of layer `idx`: its fd,
    /// unless the daemon's open files near their limit (a path thousands
    /// of directories deep keeps every level alive in the kernel, each
    /// holding one fd per layer it has parts in): then by file handle
    /// where the layer's filesystem has lasting ones, reopened at each use.
    /// fds are handed out lowest first, so `fd`'s number is about how many
    /// are open.
    fn dir_ref(&self, idx: LayerIdx, fd: OwnedFd) -> RealFd {
        use std::os::fd::AsRawFd;
        if (fd.as_raw_fd() as u64) < self.fd_pressure {
            return fd.into();
        }
        match (
            self.numbering.handles().root(idx),
            sys::name_to_handle(fd.as_fd()),
        ) {
            (Some(root), Ok(handle)) => RealFd::Handle {
                root: Arc::clone(root),
                handle: Arc::new(handle),
            },
            _ => fd.into(),
        }
    }

    /// A directory's parts in the lower layers, top first.
    pub(crate) fn lower_reals(&self, dir: &Inode) -> Vec<RealEntry> {
        dir.reals()
            .into_iter()
            .filter(|r| !self.is_upper(r.layer))
            .collect()
    }

    /// The number shown for a real object of identity (dev, ino).
    pub(crate) fn number_for(&self, key: RealKey) -> u64 {
        self.numbering.number_for(&self.layers, key)
    }

    /// The number of a merged object: the identity of its origin. A copied
    /// up object keeps its lower origin's number (kernel overlayfs does the
    /// same), found through the in-memory map for copy-ups of this mount and
    /// through the `overlay.origin` handle for older ones; a merged
    /// directory's origin is its first lower part.
    pub(crate) fn number_for_hits(&self, hits: &[Hit]) -> u64 {
        let top = &hits[0];
        if self.is_upper(top.layer) {
            let key = RealKey::of(&top.st);
            if let Some(n) = self.numbering.remembered(key) {
                return n;
            }
            if let Some(lower) = hits.get(1) {
                return self.number_for(RealKey::of(&lower.st));
            }
            if let Some(origin) = self.numbering.origin_key(&self.layers, top.fd.as_fd()) {
                let n = self.number_for(origin);
                self.numbering.remember(key, n);
                return n;
            }
        }
        self.number_for(RealKey::of(&top.st))
    }

    pub(crate) fn attr_of(&self, inode: &Inode) -> io::Result<FileAttr> {
        let (top, data) = {
            let s = inode.state.read();
            let data = (!inode.is_dir)
                .then(|| s.reals.get(1).map(|r| r.fd.clone()))
                .flatten();
            (s.reals[0].fd.clone(), data)
        };
        let merged = inode.is_dir && inode.state.read().reals.len() > 1;
        let st = sys::fstat(top.get()?.as_fd())?;
        let data_st = match data {
            Some(d) => Some(sys::fstat(d.get()?.as_fd())?),
            None => None,
        };
        Ok(compose_attr(
            &st,
            inode.st_ino,
            merged,
            inode.nlink_delta(),
            data_st.as_ref(),
        ))
    }

    /// The index entry of a lower file with several names, if its set was
    /// copied up.
    fn index_hit(&self, lower: &Hit) -> Option<Hit> {
        let up = self.upper.as_ref()?;
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
            info.origin = self.numbering.decode_origin(&self.layers, hit.fd.as_fd());
        }
        info.metacopy = whiteout::has_overlay_xattr(&list, b"metacopy");
        if whiteout::has_overlay_xattr(&list, b"nlink") {
            for ns in [XattrNs::Trusted, XattrNs::User] {
                if let Ok(v) = sys::getxattr_fd(hit.fd.as_fd(), &ns.name("nlink")) {
                    info.nlink_delta = parse_nlink(&v, hit.st.st_nlink as i64);
                    break;
                }
            }
        }
        if info.metacopy && info.origin.is_none() {
            info.origin = self.numbering.decode_origin(&self.layers, hit.fd.as_fd());
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
            .layers
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

    // ---- lookup -------------------------------------------------------

    /// Looks `name` up in directory `parent`; on success the returned inode
    /// carries one more lookup reference, which the kernel will forget.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> io::Result<(Arc<Inode>, FileAttr)> {
        self.lookup_hinted(parent, name, LayerMask::ALL)
    }

    /// `lookup`, probing only the lower layers in `layers` (and the upper):
    /// what a directory listing saw there (`DirEntryOut::layers`). Lower
    /// layers never change, so the hint stays true.
    pub fn lookup_hinted(
        &self,
        parent: u64,
        name: &OsStr,
        layers: LayerMask,
    ) -> io::Result<(Arc<Inode>, FileAttr)> {
        check_name(name)?;
        let dir = self.inode(parent)?;
        if !dir.is_dir {
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
                    let data = data.ok_or_else(|| errno(libc::EIO))?;
                    // Its number is its data's, as in the kernel, whatever
                    // its origin says.
                    origin_id = Some(RealKey::of(&data.st));
                    hits.push(data);
                }
            }
        }
        let top = &hits[0].st;
        let mut number = match origin_id {
            Some(origin) if self.numbering.remembered(RealKey::of(top)).is_none() => {
                let n = self.number_for(origin);
                self.numbering.remember(RealKey::of(top), n);
                n
            }
            _ => self.number_for_hits(&hits),
        };
        // A number still held by the kernel for an unlinked object (whose
        // inode number the filesystem has since reused) must not be shared.
        //
        // Nor may two distinct objects share one: a number taken from an
        // `overlay.origin` (forged, or naming a lower file that another
        // name still shows) would otherwise make this lookup return the
        // live inode of the other object, with its content.
        if self
            .inodes
            .get(number)
            .is_some_and(|i| i.is_unlinked() || !is_same_object(&i, top))
        {
            number = self.numbering.fresh_number();
            self.numbering.remember(RealKey::of(top), number);
        }
        let data_st = (!is_dir && hits.len() > 1).then(|| &hits[1].st);
        let attr = compose_attr(top, number, is_dir && hits.len() > 1, delta, data_st);
        let inode = self.inodes.lookup_insert(number, || {
            let reals = hits
                .into_iter()
                .map(|h| RealEntry {
                    layer: h.layer,
                    // A lower file is reached by name when needed: no fd is
                    // held per file, whatever the size of the tree walked.
                    fd: match h.at {
                        Some((dir, name)) if !self.is_upper(h.layer) => RealFd::At { dir, name },
                        _ if self.is_upper(h.layer) => self.upper_ref(h.fd, is_dir),
                        _ if is_dir => self.dir_ref(h.layer, h.fd),
                        _ => h.fd.into(),
                    },
                    marks: h.marks,
                })
                .collect();
            let inode = Inode::new(number, number, is_dir, InodeState::new(reals, parent, name));
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
        let clean = dir
            .cache
            .oci_clean
            .load(std::sync::atomic::Ordering::Relaxed);
        self.resolve_masked(&reals, name, clean, layers)
    }

    pub(crate) fn resolve_in(
        &self,
        reals: &[RealEntry],
        name: &OsStr,
    ) -> io::Result<Resolved<Hit>> {
        self.resolve_masked(reals, name, 0, LayerMask::ALL)
    }

    /// `clean`: bit i set when layer i's part of the directory is known to
    /// hold no OCI markers (an upper written by fuse-overlayfs may hold
    /// them, so the upper is no exception).
    ///
    /// Redirects are followed as kernel overlayfs' `ovl_lookup` does, layer
    /// by layer: the name (or path) looked up in a layer is the one the
    /// layers above left, changed by any redirect met in this layer, on the
    /// entry itself or, for an absolute path, on a directory on the way.
    fn resolve_masked(
        &self,
        reals: &[RealEntry],
        name: &OsStr,
        clean: u64,
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
                if *next >= self.layers.len() {
                    return None;
                }
                let idx = LayerIdx(*next);
                *next += 1;
                let more = *next < self.layers.len();
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
                let known_clean = r.layer.0 < 64 && clean & (1 << r.layer.0) != 0;
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
                let redirect = hit.marks.redirect && hit.layer.0 + 1 < self.layers.len();
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
        lookup::resolve(probes)
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
            fd: sys::openat(self.layers.root_fd(idx), OsStr::new("."), libc::O_PATH, 0)?.into(),
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

    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
    }

    /// Looks a child up for a name operation, without keeping a reference
    /// (the kernel holds its own on a child it operates on).
    pub(crate) fn child(&self, parent: u64, name: &OsStr) -> io::Result<Arc<Inode>> {
        let (inode, _) = self.lookup(parent, name)?;
        self.inodes.forget(inode.ino, 1);
        Ok(inode)
    }

    pub fn getattr(&self, ino: u64) -> io::Result<FileAttr> {
        let inode = self.inode(ino)?;
        self.attr_of(&inode)
    }

    pub fn readlink(&self, ino: u64) -> io::Result<Vec<u8>> {
        let inode = self.inode(ino)?;
        sys::readlink_fd(inode.top().fd.get()?.as_fd())
    }

    /// Whether any layer lives on a stacked filesystem (overlayfs, FUSE):
    /// passthrough then needs a stacking depth of 2.
    pub fn layers_are_stacked(&self) -> bool {
        const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
        const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
        self.layers.iter().any(|(_, l)| {
            matches!(sys::fstatfs_type(l.root.as_fd()), Ok(t) if t == OVERLAYFS_SUPER_MAGIC || t == FUSE_SUPER_MAGIC)
        })
    }

    // ---- metadata -----------------------------------------------------

    pub fn statfs(&self) -> io::Result<libc::statvfs> {
        let idx = self.layers.upper().unwrap_or(LayerIdx(0));
        sys::fstatvfs(self.layers.root_fd(idx))
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> io::Result<Vec<u8>> {
        if whiteout::is_private_xattr(name.as_bytes()) {
            return Err(errno(libc::ENODATA));
        }
        let inode = self.inode(ino)?;
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

    pub fn listxattr(&self, ino: u64) -> io::Result<Vec<u8>> {
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
        let mut cached = inode.cache.xattr_names.lock();
        if let Some(l) = &*cached {
            return Ok(Some(Arc::clone(l)));
        }
        let list = match sys::listxattr_fd(top.fd.get()?.as_fd()) {
            Ok(l) => l,
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Vec::new(),
            Err(e) => return Err(e),
        };
        let list = Arc::new(list);
        *cached = Some(Arc::clone(&list));
        Ok(Some(list))
    }
}

/// Whether a live inode's top real object is the file `st` describes
/// (when it cannot be told, it is assumed to be: a failed check must not
/// split one object in two).
fn is_same_object(inode: &Inode, st: &Stat) -> bool {
    let same = || {
        let top = inode.state.read().reals[0].fd.clone();
        match top.get().and_then(|fd| sys::fstat(fd.as_fd())) {
            Ok(have) => have.st_dev == st.st_dev && have.st_ino == st.st_ino,
            Err(_) => true,
        }
    };
    if same() {
        return true;
    }
    // A copy-up of that inode may have just renamed its copy into place
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

/// Parses kernel overlayfs' `overlay.nlink` ("U+N" / "L-N"): the overlay
/// link count relative to the upper (U) or lower (L) inode's. Returned as a
/// delta to the upper count; an "L" value, written by kernel overlayfs with
/// the lower count as base, cannot be turned into one here and is ignored.
fn parse_nlink(v: &[u8], upper_nlink: i64) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?;
    let rest = s.strip_prefix('U')?;
    // The kernel reads the delta as an int (kstrtoint) and ignores a value
    // out of range or one giving a count below 1.
    let delta = rest.trim_end_matches('\n').parse::<i32>().ok()? as i64;
    (upper_nlink + delta > 0 && upper_nlink + delta <= u32::MAX as i64).then_some(delta)
}

/// Attributes of a merged object from its top real file: `merged_dir`
/// gives a merged directory nlink 1 (kernel overlayfs), `delta` corrects a
/// copied-up hardlink's count, and a metacopy file reports the blocks of
/// the lower file holding its data.
fn compose_attr(
    st: &Stat,
    number: u64,
    merged_dir: bool,
    delta: Option<i64>,
    data: Option<&Stat>,
) -> FileAttr {
    let mut a = attr::from_stat(st, number, merged_dir);
    if let Some(d) = delta {
        a.nlink = (a.nlink as i64 + d).clamp(1, u32::MAX as i64) as u32;
    }
    if let Some(data) = data {
        a.blocks = data.st_blocks as u64;
    }
    a
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
