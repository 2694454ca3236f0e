//! The inode table: FUSE node ids to the real files behind them.
//!
//! Numbering: fuser sends `attr.ino` as the kernel's node id, so the number a
//! user sees as st_ino *is* the node id. It is derived from the identity of
//! the object's origin — its (st_dev, st_ino) in the layer it comes from — by
//! [`LayerStack::xino`](crate::layers::LayerStack::xino), so it is the same on
//! every mount of the same layers and unique while the kernel holds it. Node
//! id 1 is the root, whatever its real identity. Identities that do not fit
//! (or would land on 1) get a number from a reserved fallback range, stable
//! for the life of the mount (`numbering.rs` hands out every number).
//!
//! An inode owns its state: its kind (a directory, with its cached
//! listings, or a non-directory, with its link-count delta and shared lower
//! fd), its real objects and names, and its caches. Other modules read it
//! and tell it what happened (`copied_up`, `name_moved`, `unlinked_holding`,
//! `mark_upper_part`, `dir_changed`); only this module writes its fields.
//!
//! Concurrency rules:
//! - the table is a sharded `DashMap`; a guard is never held across a call
//!   that may touch the table again: callers get a cloned `Arc<Inode>`;
//! - a lookup count only changes under the shard lock of its entry
//!   (`entry()` to add, `remove_if()` to subtract), so a count that reached
//!   zero removes the entry in the same critical section and never comes
//!   back: a later lookup builds a fresh `Inode`;
//! - an inode's real files live behind its own `RwLock`, taken briefly to
//!   clone the `Arc` fds out; no syscall runs under a table guard.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use crate::ids::{InodeNo, KnownLayers, LayerIdx, NodeId};
use crate::whiteout::DirMarks;

/// The FUSE root node id.
pub const ROOT_INO: NodeId = NodeId::ROOT;

/// How an inode reaches one real object.
#[derive(Debug, Clone)]
pub enum RealFd {
    /// An O_PATH, O_NOFOLLOW fd of the object, held (for the length of a
    /// copy-up, its source may be held by an fd open for reading).
    Held(Arc<OwnedFd>),
    /// A lower non-directory, reopened by name in its parent's real
    /// directory when needed: lower layers never change, and holding no fd
    /// per file keeps a walk of a huge image under the open-file limit
    /// (directories still hold theirs).
    At {
        dir: Arc<OwnedFd>,
        name: Arc<std::ffi::OsStr>,
    },
    /// An upper non-directory, reopened by file handle when needed (needs
    /// CAP_DAC_READ_SEARCH): a copy-up of a whole image must not hold an
    /// fd per file either, and a handle survives renames.
    Handle {
        root: Arc<OwnedFd>,
        handle: Arc<crate::sys::FileHandleBytes>,
    },
    /// An upper non-directory with a single link, reopened by its name in
    /// its parent's upper directory: where handles cannot be opened
    /// (rootless, FUSE uppers) and the daemon's fds near their limit, so
    /// that copying up or creating a whole image does not hold an fd per
    /// file. Renames keep the name current ([`Inode::upper_name_moved`]);
    /// a second link turns it back into a held fd ([`Inode::hold_upper`]).
    Named(Arc<UpperName>),
}

/// Where a [`RealFd::Named`] object is, shared by every copy of its entry
/// so that a rename seen by one is seen by all.
#[derive(Debug)]
pub struct UpperName {
    at: Mutex<(Arc<OwnedFd>, Arc<std::ffi::OsStr>)>,
    /// Its (st_dev, st_ino): what is opened by name must be it.
    key: (u64, u64),
}

impl UpperName {
    pub fn new(dir: Arc<OwnedFd>, name: Arc<std::ffi::OsStr>, key: (u64, u64)) -> UpperName {
        UpperName {
            at: Mutex::new((dir, name)),
            key,
        }
    }

    pub fn key(&self) -> (u64, u64) {
        self.key
    }

    /// Opens it by its recorded name. A rename of it runs the real rename
    /// before it records the new name: in between, the old name is gone or
    /// is another object, so the open is tried again until the record
    /// catches up (or, after about 50 ms, the object is taken to be gone).
    fn open(&self) -> std::io::Result<OwnedFd> {
        use std::os::fd::AsFd;
        for attempt in 0..64u32 {
            let (dir, name) = self.at.lock().clone();
            match crate::sys::openat(dir.as_fd(), &name, libc::O_PATH | libc::O_NOFOLLOW, 0) {
                Ok(fd) => {
                    let st = crate::sys::fstat(fd.as_fd())?;
                    if (st.st_dev, st.st_ino) == self.key {
                        return Ok(fd);
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
            if attempt < 8 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        Err(std::io::Error::from_raw_os_error(libc::ESTALE))
    }
}

impl RealFd {
    /// An O_PATH fd of the object.
    pub fn get(&self) -> std::io::Result<Arc<OwnedFd>> {
        match self {
            RealFd::Held(fd) => Ok(Arc::clone(fd)),
            RealFd::At { .. } => self.open(libc::O_PATH).map(Arc::new),
            RealFd::Handle { root, handle } => Ok(Arc::new(crate::sys::open_by_handle(
                std::os::fd::AsFd::as_fd(&**root),
                handle,
            )?)),
            RealFd::Named(n) => Ok(Arc::new(n.open()?)),
        }
    }

    /// The object's attributes. One reached by name is looked at by name:
    /// an O_PATH open, `fstat` and `close` were three syscalls where a
    /// `stat` of each lower file (every `ls -l`, every file `tar` reads)
    /// needs one.
    pub fn stat(&self) -> std::io::Result<crate::sys::Stat> {
        match self {
            RealFd::At { dir, name } => crate::sys::lstatat(std::os::fd::AsFd::as_fd(&**dir), name),
            other => crate::sys::fstat(std::os::fd::AsFd::as_fd(&*other.get()?)),
        }
    }

    /// Opens the object with `flags` (O_PATH included): one reached by
    /// name straight by its name, the others by reopening their O_PATH fd
    /// (through /proc, a path walk of its own).
    pub fn open(&self, flags: i32) -> std::io::Result<OwnedFd> {
        match self {
            RealFd::At { dir, name } => crate::sys::openat(
                std::os::fd::AsFd::as_fd(&**dir),
                name,
                flags | libc::O_NOFOLLOW,
                0,
            ),
            other => crate::sys::reopen(std::os::fd::AsFd::as_fd(&*other.get()?), flags),
        }
    }
}

impl From<OwnedFd> for RealFd {
    fn from(fd: OwnedFd) -> RealFd {
        RealFd::Held(Arc::new(fd))
    }
}

/// One real file or directory behind an inode, in one layer.
#[derive(Debug, Clone)]
pub struct RealEntry {
    pub layer: LayerIdx,
    /// How to reach the real object.
    pub fd: RealFd,
    /// For directories: the overlay marks found in this layer.
    pub marks: DirMarks,
}

/// What may change about an inode while it lives (copy-up adds an upper
/// entry, rename moves it).
#[derive(Debug, Clone)]
pub struct InodeState {
    /// The real objects, top layer first. A non-directory has exactly one;
    /// a directory has one per contributing layer.
    pub reals: Vec<RealEntry>,
    /// One name it is reachable by: its parent's node id and its name there.
    pub parent: NodeId,
    pub name: OsString,
    /// The other names a non-directory with several links is known by
    /// (lower hardlinks, links made through the mount). Copy-up places the
    /// copy at a name that still exists, so when one name goes, another
    /// takes its place.
    pub other_names: Vec<(NodeId, OsString)>,
}

impl InodeState {
    /// A state reachable by one name.
    pub fn new(reals: Vec<RealEntry>, parent: NodeId, name: &std::ffi::OsStr) -> InodeState {
        InodeState {
            reals,
            parent,
            name: name.to_os_string(),
            other_names: Vec::new(),
        }
    }

    fn is_named(&self, parent: NodeId, name: &std::ffi::OsStr) -> bool {
        (self.parent == parent && self.name == name)
            || self
                .other_names
                .iter()
                .any(|(p, n)| *p == parent && n == name)
    }
}

/// A mark the upper part of a directory can be given (see
/// `Inode::mark_upper_part`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirMark {
    /// `overlay.opaque=y` (or OCI `.wh..wh..opq`): hides the lower parts.
    Opaque,
    /// `overlay.opaque=x`: it holds xattr whiteouts.
    XattrWhiteouts,
    /// `overlay.redirect`: its lower parts are under another path.
    Redirect,
}

#[derive(Debug)]
pub struct Inode {
    /// FUSE node id.
    pub ino: NodeId,
    /// The number shown as st_ino (differs from `ino` only for the root).
    pub st_ino: InodeNo,
    /// A directory or not, with what only that kind keeps.
    kind: NodeKind,
    lookups: AtomicU64,
    /// Read through `state()`; written only by the methods below.
    state: RwLock<InodeState>,
    /// Serialises copy-up of this inode only (never held while taking a
    /// child's lock: copy-up locks go child to parent).
    pub copy_lock: Mutex<()>,
    /// Its last name is gone: its number must not be given to a new object
    /// while the kernel still holds it.
    unlinked: AtomicBool,
    /// The xattr names of the top real object, as listxattr returns them
    /// (dropped by xattr changes and copy-up): answers "no such xattr"
    /// without a syscall, which `ls -l` asks for every file.
    xattr_names: Mutex<Option<Arc<Vec<u8>>>>,
    /// Its top object is known to carry no `security.capability`: a copy
    /// made from a source without one. Only a setxattr through the mount
    /// can add one (the kernel only ever removes it, on write or chown), so
    /// the kernel's question at every write (file_remove_privs asks it) is
    /// answered without a syscall. Cleared whenever the top changes.
    caps_absent: AtomicBool,
    /// Bumped whenever its top real object becomes another one (copy-up):
    /// an open file made before reopens the new one (see `open_table`).
    data_version: AtomicU64,
}

/// The two kinds of node, each with the state only it has.
#[derive(Debug)]
enum NodeKind {
    Dir(DirState),
    NonDir(FileState),
}

/// What a directory keeps between requests.
#[derive(Debug, Default)]
struct DirState {
    /// Recent merged listings, newest first, each with the generation it
    /// was made at: the newest serves new readdirs while its generation is
    /// current.
    listings: Mutex<std::collections::VecDeque<(u64, Listing)>>,
    /// Bumped by every change of the directory's entries: a listing made
    /// while a change ran is not cached.
    listing_gen: AtomicU64,
    /// Bit i set: layer i's part of this directory holds no OCI `.wh.`
    /// markers (learnt from listing it), so lookups skip probing for them.
    oci_clean: AtomicU64,
    /// A listing of it was answered since the kernel's copy was last
    /// dropped, so the kernel may hold one (it caches what READDIR
    /// answers, and nothing else).
    listing_served: AtomicBool,
}

/// What a non-directory keeps between requests.
#[derive(Debug)]
struct FileState {
    /// For a copied-up lower hardlink (kept through the index): the link
    /// count shown is the upper inode's plus this (`NO_DELTA` when unused).
    nlink_delta: AtomicI64,
    /// A read-only fd of a lower file, shared by its read-only opens while
    /// any is open (weak: a closed file holds no fd).
    lower_read_fd: Mutex<std::sync::Weak<OwnedFd>>,
}

/// A directory's merged listing, as cached.
pub type Listing = Arc<Vec<crate::dir::DirEntryOut>>;

/// Listings kept per directory (the newest is the one served).
const LISTINGS_KEPT: usize = 1;

const NO_DELTA: i64 = i64::MIN;

impl Inode {
    pub fn new(ino: NodeId, st_ino: InodeNo, is_dir: bool, state: InodeState) -> Inode {
        let kind = if is_dir {
            NodeKind::Dir(DirState::default())
        } else {
            NodeKind::NonDir(FileState {
                nlink_delta: AtomicI64::new(NO_DELTA),
                lower_read_fd: Mutex::new(std::sync::Weak::new()),
            })
        };
        Inode {
            ino,
            st_ino,
            kind,
            lookups: AtomicU64::new(0),
            state: RwLock::new(state),
            copy_lock: Mutex::new(()),
            unlinked: AtomicBool::new(false),
            xattr_names: Mutex::new(None),
            caps_absent: AtomicBool::new(false),
            data_version: AtomicU64::new(0),
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind, NodeKind::Dir(_))
    }

    pub fn nlink_delta(&self) -> Option<i64> {
        match &self.kind {
            NodeKind::NonDir(f) => match f.nlink_delta.load(Ordering::Relaxed) {
                NO_DELTA => None,
                d => Some(d),
            },
            NodeKind::Dir(_) => None,
        }
    }

    /// Only a non-directory has a link count of its own to adjust.
    pub fn set_nlink_delta(&self, d: Option<i64>) {
        if let NodeKind::NonDir(f) = &self.kind {
            f.nlink_delta
                .store(d.unwrap_or(NO_DELTA), Ordering::Relaxed);
        }
    }

    /// A directory's entries changed (or are about to): its cached listing
    /// is stale, and one being made right now must not be cached.
    pub fn dir_changed(&self) {
        if let NodeKind::Dir(d) = &self.kind {
            d.listing_gen.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A listing of this directory is being (or was just) answered: the
    /// kernel may cache it.
    pub fn note_listing_served(&self) {
        if let NodeKind::Dir(d) = &self.kind {
            d.listing_served.store(true, Ordering::SeqCst);
        }
    }

    /// Whether the kernel may hold a cached listing of this directory,
    /// which a change of its names must drop; forgets it (the caller drops
    /// it). True for what is not a directory, to be safe.
    pub fn take_listing_served(&self) -> bool {
        match &self.kind {
            NodeKind::Dir(d) => d.listing_served.swap(false, Ordering::SeqCst),
            NodeKind::NonDir(_) => true,
        }
    }

    /// A directory's current listing with its generation: the cached one
    /// while no change came since it was made, else the one `make` makes
    /// (cached unless a change ran meanwhile). Concurrent readers of one
    /// directory wait for one listing instead of each making their own.
    pub fn listing(
        &self,
        make: impl FnOnce() -> std::io::Result<Vec<crate::dir::DirEntryOut>>,
    ) -> std::io::Result<(u64, Listing)> {
        let NodeKind::Dir(d) = &self.kind else {
            return Err(std::io::Error::from_raw_os_error(libc::ENOTDIR));
        };
        let mut cached = d.listings.lock();
        let gen = d.listing_gen.load(Ordering::SeqCst);
        if let Some((g, l)) = cached.front() {
            if *g == gen {
                return Ok((gen, Arc::clone(l)));
            }
        }
        let l = Arc::new(make()?);
        if d.listing_gen.load(Ordering::SeqCst) == gen {
            cached.push_front((gen, Arc::clone(&l)));
            cached.truncate(LISTINGS_KEPT);
        }
        Ok((gen, l))
    }

    /// The layers whose part of this directory was seen to hold no OCI
    /// markers.
    pub fn oci_clean(&self) -> KnownLayers {
        match &self.kind {
            NodeKind::Dir(d) => KnownLayers::from_bits(d.oci_clean.load(Ordering::Relaxed)),
            NodeKind::NonDir(_) => KnownLayers::NONE,
        }
    }

    /// A listing found no OCI markers in the parts of layers `clean`.
    pub fn saw_oci_clean(&self, clean: KnownLayers) {
        if let NodeKind::Dir(d) = &self.kind {
            d.oci_clean.fetch_or(clean.bits(), Ordering::Relaxed);
        }
    }

    /// The read-only fd of a lower file shared by its open handles: the
    /// one an open handle still holds, else the one `open` opens.
    pub fn shared_lower_fd(
        &self,
        open: impl FnOnce() -> std::io::Result<OwnedFd>,
    ) -> std::io::Result<Arc<OwnedFd>> {
        let NodeKind::NonDir(f) = &self.kind else {
            return open().map(Arc::new);
        };
        let mut cached = f.lower_read_fd.lock();
        if let Some(fd) = cached.upgrade() {
            return Ok(fd);
        }
        let fd = Arc::new(open()?);
        *cached = Arc::downgrade(&fd);
        Ok(fd)
    }

    fn forget_lower_fd(&self) {
        if let NodeKind::NonDir(f) = &self.kind {
            *f.lower_read_fd.lock() = std::sync::Weak::new();
        }
    }

    /// The top object's xattr names: the cached list, else the one `list`
    /// returns (cached).
    pub fn xattr_names(
        &self,
        list: impl FnOnce() -> std::io::Result<Vec<u8>>,
    ) -> std::io::Result<Arc<Vec<u8>>> {
        let mut cached = self.xattr_names.lock();
        if let Some(l) = &*cached {
            return Ok(Arc::clone(l));
        }
        let l = Arc::new(list()?);
        *cached = Some(Arc::clone(&l));
        Ok(l)
    }

    /// Whether its top object is known to have no `security.capability`.
    pub fn caps_absent(&self) -> bool {
        self.caps_absent.load(Ordering::SeqCst)
    }

    /// Records whether its top object is known to have no
    /// `security.capability` (false: not known, ask the object).
    pub fn set_caps_absent(&self, absent: bool) {
        self.caps_absent.store(absent, Ordering::SeqCst);
    }

    pub fn is_unlinked(&self) -> bool {
        self.unlinked.load(Ordering::Relaxed)
    }

    pub fn mark_unlinked(&self) {
        self.unlinked.store(true, Ordering::Relaxed);
    }

    /// Its real objects and names, for reading.
    pub fn state(&self) -> RwLockReadGuard<'_, InodeState> {
        self.state.read()
    }

    /// It was copied up to `upper`: a directory keeps its lower parts
    /// below the new one, and so does a metacopy (its lower file stays the
    /// data source); any other object is the copy alone from now on.
    pub fn copied_up(&self, upper: RealEntry, keeps_lowers: bool) {
        {
            let mut s = self.state.write();
            if keeps_lowers {
                s.reals.insert(0, upper);
            } else {
                s.reals = vec![upper];
            }
        }
        *self.xattr_names.lock() = None;
        self.set_caps_absent(false);
        self.forget_lower_fd();
        self.data_version.fetch_add(1, Ordering::SeqCst);
    }

    /// A metacopy's data was copied up: its lower file is no longer read.
    pub fn data_copied_up(&self) {
        self.state.write().reals.truncate(1);
        self.forget_lower_fd();
        self.data_version.fetch_add(1, Ordering::SeqCst);
    }

    pub fn data_version(&self) -> u64 {
        self.data_version.load(Ordering::SeqCst)
    }

    /// Its real objects after a restack (`restack`): what was learnt per
    /// layer index is forgotten, as in `rotated`.
    pub(crate) fn restacked(&self, reals: Vec<RealEntry>) {
        self.state.write().reals = reals;
        self.set_caps_absent(false);
        if let NodeKind::Dir(d) = &self.kind {
            d.oci_clean.store(0, Ordering::Relaxed);
            d.listing_gen.fetch_add(1, Ordering::SeqCst);
            d.listings.lock().clear();
        }
    }

    /// The upper it had became the top lower layer (a rotation: every
    /// layer moved one index down, `upper_root` is the new upper's root
    /// for the root directory). What was its upper part is a lower part
    /// now, so the next change copies it up again; what was learnt per
    /// layer index is forgotten, and a hardlink's count is the old upper
    /// file's own again (its index entry is gone).
    pub(crate) fn rotated(&self, upper_root: Option<RealEntry>) {
        let mut s = self.state.write();
        for r in s.reals.iter_mut() {
            r.layer = LayerIdx(r.layer.0 + 1);
        }
        if let Some(root) = upper_root {
            s.reals.insert(0, root);
        }
        drop(s);
        match &self.kind {
            NodeKind::Dir(d) => {
                d.oci_clean.store(0, Ordering::Relaxed);
                d.listing_gen.fetch_add(1, Ordering::SeqCst);
                d.listings.lock().clear();
            }
            NodeKind::NonDir(f) => f.nlink_delta.store(NO_DELTA, Ordering::Relaxed),
        }
    }

    /// Its last name in the upper is gone while the kernel may still hold
    /// it: it keeps `fd` (the unlinked object, for an open file's fstat)
    /// and its number is never given to a new object.
    pub fn unlinked_holding(&self, fd: Arc<OwnedFd>) {
        if let Some(r) = self.state.write().reals.first_mut() {
            r.fd = RealFd::Held(fd);
        }
        self.mark_unlinked();
    }

    /// Puts `mark` on this directory's part in layer `upper`: `write`
    /// records it on disk first, under the inode's lock, so two marks of
    /// one directory never race (opaque=x must not overwrite opaque=y).
    /// A mark already there (or one that supersedes it) is not written
    /// again. An opaque directory no longer merges with its lower parts.
    pub fn mark_upper_part(
        &self,
        upper: LayerIdx,
        mark: DirMark,
        write: impl FnOnce(&RealEntry) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let mut s = self.state.write();
        let Some(pos) = s.reals.iter().position(|r| r.layer == upper) else {
            // Only an opaque mark is asked for of a part that must exist.
            return match mark {
                DirMark::Opaque => {
                    log::warn!("node {}: no upper part to make opaque", self.ino);
                    Err(std::io::Error::from_raw_os_error(libc::EIO))
                }
                _ => Ok(()),
            };
        };
        let marks = &s.reals[pos].marks;
        let present = match mark {
            DirMark::Opaque => marks.opaque,
            DirMark::XattrWhiteouts => marks.opaque || marks.xwhiteouts,
            DirMark::Redirect => false,
        };
        if present {
            return Ok(());
        }
        write(&s.reals[pos])?;
        match mark {
            DirMark::Opaque => {
                s.reals[pos].marks.opaque = true;
                s.reals.truncate(pos + 1);
            }
            DirMark::XattrWhiteouts => s.reals[pos].marks.xwhiteouts = true,
            DirMark::Redirect => s.reals[pos].marks.redirect = true,
        }
        Ok(())
    }

    /// `name` in `parent` was found to lead to this inode (a non-directory
    /// can have several names).
    pub fn name_seen(&self, parent: NodeId, name: &std::ffi::OsStr) {
        if self.is_dir() || self.state.read().is_named(parent, name) {
            return;
        }
        let mut s = self.state.write();
        if !s.is_named(parent, name) {
            s.other_names.push((parent, name.to_os_string()));
        }
    }

    /// `name` in `parent` no longer leads to this inode: another of its
    /// names, if it has one, becomes the one it is reached by.
    pub fn name_gone(&self, parent: NodeId, name: &std::ffi::OsStr) {
        let mut s = self.state.write();
        if s.parent == parent && s.name == name {
            if let Some((p, n)) = s.other_names.pop() {
                s.parent = p;
                s.name = n;
            }
        } else {
            s.other_names.retain(|(p, n)| !(*p == parent && n == name));
        }
    }

    /// The name `from` of this inode is now `to` (a rename).
    pub fn name_moved(&self, from: (NodeId, &std::ffi::OsStr), to: (NodeId, &std::ffi::OsStr)) {
        let mut s = self.state.write();
        let to_owned = (to.0, to.1.to_os_string());
        if let Some(other) = s
            .other_names
            .iter_mut()
            .find(|(p, n)| *p == from.0 && n == from.1)
        {
            *other = to_owned;
        } else {
            // The primary name, or one never seen (a rename is always of a
            // name that leads here): it is the name to reach it by now.
            s.parent = to_owned.0;
            s.name = to_owned.1;
        }
        // Renaming onto another of its own names leaves one name.
        let (p, n) = (s.parent, s.name.clone());
        let mut seen = vec![(p, n)];
        s.other_names.retain(|e| {
            if seen.contains(e) {
                false
            } else {
                seen.push(e.clone());
                true
            }
        });
    }

    /// Its upper object, reached by name, was renamed to `name` in the
    /// upper directory `dir` (an inode reached otherwise needs nothing).
    pub fn upper_name_moved(&self, dir: Arc<OwnedFd>, name: &std::ffi::OsStr) {
        if let Some(RealEntry {
            fd: RealFd::Named(n),
            ..
        }) = self.state.read().reals.first()
        {
            *n.at.lock() = (dir, Arc::from(name));
        }
    }

    /// Its upper object, reached by name, is about to get a second name:
    /// from now on it is held by fd, as a name alone no longer follows it
    /// once either name is removed.
    pub fn hold_upper(&self) -> std::io::Result<()> {
        let named = match self.state.read().reals.first() {
            Some(RealEntry {
                fd: RealFd::Named(n),
                ..
            }) => Arc::clone(n),
            _ => return Ok(()),
        };
        let fd = Arc::new(named.open()?);
        let mut s = self.state.write();
        if let Some(r) = s.reals.first_mut() {
            if matches!(&r.fd, RealFd::Named(n) if Arc::ptr_eq(n, &named)) {
                r.fd = RealFd::Held(fd);
            }
        }
        Ok(())
    }

    /// A snapshot of the real entries, cheap to take (Arc clones).
    pub fn reals(&self) -> Vec<RealEntry> {
        self.state.read().reals.clone()
    }

    /// The topmost real entry.
    pub fn top(&self) -> RealEntry {
        // Every inode is built with at least one real entry.
        self.state.read().reals[0].clone()
    }

    pub fn lookup_count(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// One more lookup reference (the table's `lookup_insert`).
    pub(crate) fn add_lookups(&self, n: u64) {
        self.lookups.fetch_add(n, Ordering::Relaxed);
    }

    /// Drops up to `n` lookup references; true when none is left.
    pub(crate) fn drop_lookups(&self, n: u64) -> bool {
        self.lookups
            .fetch_sub(n.min(self.lookup_count()), Ordering::Relaxed)
            <= n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn names(i: &Inode) -> (NodeId, OsString, Vec<(NodeId, OsString)>) {
        let s = i.state.read();
        (s.parent, s.name.clone(), s.other_names.clone())
    }

    #[test]
    fn a_directory_asks_for_its_cached_listing_to_be_dropped_only_once_listed() {
        let dir = Inode::new(n(10), InodeNo(10), true, state());
        // Never listed: the kernel holds no listing of it to drop.
        assert!(!dir.take_listing_served());
        dir.note_listing_served();
        assert!(dir.take_listing_served());
        // Dropped once; the next change has nothing to drop.
        assert!(!dir.take_listing_served());
        // Not a directory: always dropped, to be safe.
        let file = Inode::new(n(11), InodeNo(11), false, state());
        assert!(file.take_listing_served());
    }

    #[test]
    fn names_of_a_hardlink_follow_unlink_and_rename() {
        use std::ffi::OsStr;
        let i = Inode::new(n(10), InodeNo(10), false, state());
        i.name_seen(ROOT_INO, OsStr::new("x"));
        i.name_seen(n(5), OsStr::new("y"));
        i.name_seen(n(5), OsStr::new("y"));
        assert_eq!(names(&i), (ROOT_INO, "x".into(), vec![(n(5), "y".into())]));
        // The primary name goes: the other one takes its place.
        i.name_gone(ROOT_INO, OsStr::new("x"));
        assert_eq!(names(&i), (n(5), "y".into(), vec![]));
        i.name_seen(n(6), OsStr::new("z"));
        i.name_moved((n(6), OsStr::new("z")), (n(7), OsStr::new("w")));
        assert_eq!(names(&i), (n(5), "y".into(), vec![(n(7), "w".into())]));
        i.name_moved((n(5), OsStr::new("y")), (n(8), OsStr::new("v")));
        assert_eq!(names(&i), (n(8), "v".into(), vec![(n(7), "w".into())]));
        // Renamed onto its other name: one name is left.
        i.name_moved((n(8), OsStr::new("v")), (n(7), OsStr::new("w")));
        assert_eq!(names(&i), (n(7), "w".into(), vec![]));
        // Its last name gone: it keeps the stale one (nothing reaches it).
        i.name_gone(n(7), OsStr::new("w"));
        assert_eq!(names(&i).1, OsString::from("w"));
    }

    #[test]
    fn directories_have_one_name() {
        let i = Inode::new(n(10), InodeNo(10), true, state());
        i.name_seen(n(5), std::ffi::OsStr::new("y"));
        assert!(names(&i).2.is_empty());
    }
}
