//! The filesystem object: its state (layers, inode table, numbering, open
//! files, the upper's context, the session's notifier), its construction,
//! the accessors the operations share, and the few operations that only
//! read an inode's top object (getattr, readlink, statfs). The other
//! operations are grouped by concern in their own modules (`lookup`,
//! `listing`, `open_files`, `file_data`, `names`, `modify`, `xattrs`,
//! `copyup`), each a plain `impl LayerFs` block of functions returning
//! `io::Result`; `fs.rs` converts FUSE arguments, calls them and replies.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use fuser::FileAttr;

use crate::attr;
use crate::ids::{InodeNo, LayerIdx, NodeId, RealKey};
use crate::inode::{Inode, InodeState, RealEntry, RealFd, UpperName, ROOT_INO};
use crate::inode_table::InodeTable;
use crate::layer_read::read_dir_marks;
use crate::layers::LayerStack;
use crate::numbering::{LayerHandles, Numbering};
use crate::open_table::OpenFiles;
use crate::sys;
use crate::whiteout::XattrNs;
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
    /// `capacity=` and `capacity_used=`: the limit on the mount's own
    /// data, and what its read-only layers already hold of it.
    pub capacity: Option<(u64, u64)>,
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
            capacity: None,
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
    pub renames: crate::upper_renames::UpperRenames,
    /// Whiteouts and opaque marks as OCI `.wh.` files (an upper with no
    /// xattrs: `Features::oci_format`).
    pub oci_whiteouts: bool,
    /// The owner of what the daemon creates in the work dir (its own ids;
    /// None where a setgid work dir gives its group instead): a copy
    /// whose source has that owner needs no chown.
    pub created_owner: Option<(u32, u32)>,
}

/// The whole filesystem state, shared by every worker thread.
#[derive(Debug)]
pub struct LayerFs {
    /// The stack, replaced whole by a rotation (`rotation`): read it
    /// through `layers()`.
    layers: parking_lot::RwLock<Arc<LayerStack>>,
    /// Held by every request (see `gate`): what a rotation waits for.
    pub gate: crate::gate::Gate,
    /// How many times the upper was turned into a lower layer: an open
    /// file written since then is copied up to the new upper first.
    pub(crate) rotations: std::sync::atomic::AtomicU64,
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
    /// The session's notifier once mounted (see `set_notifier`).
    notifier: std::sync::OnceLock<fuser::Notifier>,
    /// The limit and the count, when `capacity=` was given.
    capacity: Option<crate::capacity::Capacity>,
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
        let upper = match (layers.upper(), work) {
            (Some(idx), Some(work)) if !opts.read_only => Some(UpperCtx {
                idx,
                ns: work.xattr_ns(),
                renames: crate::upper_renames::UpperRenames::new(*work.features()),
                xattr_whiteouts: !work.features().oci_format()
                    && (opts.xattr_whiteouts || !work.features().whiteout_mknod),
                oci_whiteouts: work.features().oci_format(),
                created_owner: sys::fstat(work.fd())
                    .ok()
                    .filter(|st| st.st_mode & libc::S_ISGID == 0)
                    .map(|_| (sys::geteuid(), sys::getegid())),
                work,
                fsync: opts.fsync,
            }),
            _ => None,
        };
        let top = sys::fstat(reals[0].fd.get()?.as_fd())?;
        let st_ino = InodeNo(layers.xino(top.st_dev, top.st_ino).unwrap_or(ROOT_INO.0));
        let root = Inode::new(
            ROOT_INO,
            st_ino,
            true,
            InodeState::new(reals, ROOT_INO, OsStr::new("")),
        );
        // `LayerHandles` offers a root only where a handle was reopened.
        let upper_handles = upper
            .as_ref()
            .is_some_and(|u| u.work.features().file_handles && handles.root(u.idx).is_some());
        let inodes = InodeTable::new(root);
        let capacity = match (opts.capacity, &upper) {
            (Some((limit, below)), Some(u)) => {
                let dir = sys::reopen(layers.root_fd(u.idx), libc::O_RDONLY | libc::O_DIRECTORY)?;
                let used = crate::capacity::usage_at(dir)?.saturating_add(below);
                Some(crate::capacity::Capacity::new(limit, used))
            }
            _ => None,
        };
        let numbering = Numbering::new(&layers, handles, upper.as_ref().map(|u| (u.idx, u.ns)));
        Ok(LayerFs {
            layers: parking_lot::RwLock::new(Arc::new(layers)),
            gate: Default::default(),
            rotations: Default::default(),
            inodes,
            opts,
            upper,
            numbering,
            upper_handles,
            fd_pressure: fd_pressure(),
            files: OpenFiles::default(),
            notifier: Default::default(),
            capacity,
        })
    }

    /// Gives the filesystem the mounted session's notifier, through which
    /// `attributes_changed` tells the kernel; unset (unmounted, or before
    /// the session exists) nothing is sent.
    pub fn set_notifier(&self, n: fuser::Notifier) {
        let _ = self.notifier.set(n);
    }

    /// Drops the kernel's cached listing of directory `ino` (its pages;
    /// see `fs.rs`, which calls it after every change of names), if it may
    /// hold one: a directory not listed since the last drop has none, and
    /// a burst of changes (`rm -rf`, an untar) then costs no notification
    /// each. A listing answered while a change runs is noted again after
    /// its reply (`listing_answered`), so the next change drops it.
    pub(crate) fn listing_changed(&self, ino: NodeId) {
        if self
            .inodes
            .get(ino)
            .is_some_and(|i| !i.take_listing_served())
        {
            return;
        }
        if let Some(n) = self.notifier.get() {
            if let Err(e) = n.inval_inode(ino.into(), 0, 0) {
                log::debug!("inval_inode {ino}: {e}");
            }
        }
    }

    /// A listing of directory `ino` was answered: the kernel may cache it
    /// until the next change of its names drops it.
    pub(crate) fn listing_answered(&self, ino: NodeId) {
        if let Some(i) = self.inodes.get(ino) {
            i.note_listing_served();
        }
    }

    /// Drops the kernel's cached attributes of node `ino` after a change
    /// it cannot see, such as setuid cleared by a write (only an
    /// attribute-only invalidation: no page or inode locks are taken, so
    /// it is safe inside a request).
    pub(crate) fn attributes_changed(&self, ino: NodeId) {
        if let Some(n) = self.notifier.get() {
            if let Err(e) = n.inval_inode(ino.into(), -1, 0) {
                log::debug!("inval_inode {ino}: {e}");
            }
        }
    }

    /// The layer stack as it is now (a request holds the gate, so it
    /// stays the stack until the request ends).
    pub fn layers(&self) -> Arc<LayerStack> {
        Arc::clone(&self.layers.read())
    }

    /// Puts `stack` in place of the stack (a rotation, all requests held).
    pub(crate) fn replace_layers(&self, stack: LayerStack) {
        *self.layers.write() = Arc::new(stack);
    }

    pub(crate) fn inode(&self, ino: NodeId) -> io::Result<Arc<Inode>> {
        self.inodes.get(ino).ok_or_else(|| errno(libc::ESTALE))
    }

    /// The writable layer, or EROFS.
    pub(crate) fn upper_ctx(&self) -> io::Result<&UpperCtx> {
        self.upper.as_ref().ok_or_else(|| errno(libc::EROFS))
    }

    /// The limit and the count, on a mount with `capacity=`.
    pub fn capacity(&self) -> Option<&crate::capacity::Capacity> {
        self.capacity.as_ref()
    }

    pub fn is_writable(&self) -> bool {
        self.upper.is_some()
    }

    pub(crate) fn is_upper(&self, layer: LayerIdx) -> bool {
        self.upper.as_ref().is_some_and(|u| u.idx == layer)
    }

    /// How an inode keeps hold of an upper object: a file handle for a
    /// non-directory where possible, else the fd itself; where handles do
    /// not reopen, a non-directory with one link is reached by its name
    /// (`at`: its upper parent and name) once fds grow scarce (see
    /// `reaches_by_name`), so that no fd is held per file.
    pub(crate) fn upper_ref(
        &self,
        fd: impl Into<Arc<OwnedFd>>,
        is_dir: bool,
        at: impl FnOnce() -> Option<(Arc<OwnedFd>, Arc<OsStr>)>,
    ) -> RealFd {
        let fd: Arc<OwnedFd> = fd.into();
        if self.reaches_by_name(&fd, is_dir) {
            if let (Ok(st), Some((dir, name))) = (sys::fstat(fd.as_fd()), at()) {
                if st.st_nlink == 1 {
                    return RealFd::Named(Arc::new(UpperName::new(
                        dir,
                        name,
                        (st.st_dev, st.st_ino),
                    )));
                }
            }
        }
        if is_dir {
            return match (&self.upper, Arc::try_unwrap(fd)) {
                (Some(u), Ok(fd)) if self.upper_handles => self.dir_ref(u.idx, fd),
                // Shared with the caller: held as it is.
                (_, Ok(fd)) => fd.into(),
                (_, Err(fd)) => RealFd::Held(fd),
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
        RealFd::Held(fd)
    }

    /// Whether `upper_ref` would reach the upper object `fd` by its name:
    /// a file, where handles do not reopen, once a quarter of the open-file
    /// limit is in use. Files yield early because directories have no such
    /// way out there: each cached one holds an fd per layer part, and a
    /// `chown -R` of 3,000 directories and 40,000 files still ran out of a
    /// 20,000-fd limit when files were held up to three quarters of it.
    pub(crate) fn reaches_by_name(&self, fd: &OwnedFd, is_dir: bool) -> bool {
        use std::os::fd::AsRawFd;
        !is_dir && !self.upper_handles && (fd.as_raw_fd() as u64) >= self.fd_pressure / 3
    }

    /// How an inode keeps hold of a directory of layer `idx`: its fd,
    /// unless the daemon's open files near their limit (a path thousands
    /// of directories deep keeps every level alive in the kernel, each
    /// holding one fd per layer it has parts in): then by file handle
    /// where the layer's filesystem has lasting ones, reopened at each use.
    /// fds are handed out lowest first, so `fd`'s number is about how many
    /// are open.
    pub(crate) fn dir_ref(&self, idx: LayerIdx, fd: OwnedFd) -> RealFd {
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
    pub(crate) fn number_for(&self, key: RealKey) -> InodeNo {
        self.numbering.number_for(&self.layers(), key)
    }

    pub(crate) fn attr_of(&self, inode: &Inode) -> io::Result<FileAttr> {
        let st = inode.top().fd.stat()?;
        self.attr_from(inode, &st)
    }

    /// [`Self::attr_of`], with `top` an fd of its top object the caller
    /// holds already.
    pub(crate) fn attr_at(&self, inode: &Inode, top: BorrowedFd<'_>) -> io::Result<FileAttr> {
        self.attr_from(inode, &sys::fstat(top)?)
    }

    /// The attributes shown for `inode`, whose top object's are `st`.
    pub(crate) fn attr_from(&self, inode: &Inode, st: &sys::Stat) -> io::Result<FileAttr> {
        let data = {
            let s = inode.state();
            (!inode.is_dir())
                .then(|| s.reals.get(1).map(|r| r.fd.clone()))
                .flatten()
        };
        let merged = inode.is_dir() && inode.state().reals.len() > 1;
        let data_st = match data {
            Some(d) => Some(d.stat()?),
            None => None,
        };
        Ok(attr::compose(
            st,
            inode.st_ino,
            merged,
            inode.nlink_delta(),
            data_st.as_ref(),
        ))
    }

    // ---- lookup -------------------------------------------------------

    pub fn getattr(&self, ino: NodeId) -> io::Result<FileAttr> {
        let inode = self.inode(ino)?;
        self.attr_of(&inode)
    }

    pub fn readlink(&self, ino: NodeId) -> io::Result<Vec<u8>> {
        let inode = self.inode(ino)?;
        sys::readlink_fd(inode.top().fd.get()?.as_fd())
    }

    /// Whether any layer lives on a stacked filesystem (overlayfs, FUSE):
    /// passthrough then needs a stacking depth of 2.
    pub fn layers_are_stacked(&self) -> bool {
        const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
        self.layers().iter().any(|(_, l)| {
            matches!(sys::fstatfs_type(l.root.as_fd()), Ok(t) if t == OVERLAYFS_SUPER_MAGIC || t == crate::features::FUSE_SUPER_MAGIC)
        })
    }

    // ---- metadata -----------------------------------------------------

    pub fn statfs(&self) -> io::Result<libc::statvfs> {
        let layers = self.layers();
        let idx = layers.upper().unwrap_or(LayerIdx(0));
        let mut st = sys::fstatvfs(layers.root_fd(idx))?;
        if let Some(c) = self.capacity() {
            // `df` shows the limit as the size and the count as used.
            let (blocks, free, avail) = c.statfs_blocks(st.f_frsize, st.f_bavail);
            st.f_blocks = blocks;
            st.f_bfree = free;
            st.f_bavail = avail;
        }
        Ok(st)
    }
}

/// The fd number past which the daemon stops holding an fd per object
/// where it can reach the object otherwise: three quarters of its open-file
/// limit. `LAYERFS_FD_PRESSURE` sets it, so that tests can run every
/// operation on objects reached that way.
fn fd_pressure() -> u64 {
    if let Some(n) = std::env::var("LAYERFS_FD_PRESSURE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    sys::nofile_limit().map_or(768, |n| n / 4 * 3)
}
