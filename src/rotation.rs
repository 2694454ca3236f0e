//! Rotation: the running filesystem turns its upper layer into the top
//! lower layer and goes on in a new, empty upper — what a live snapshot
//! of a volume is made of (the volume tool asks for it through the
//! control socket, `control`).
//!
//! The point in time is the moment the stack is swapped, with every
//! mutating request held at the gate (`gate`): each change that was
//! answered is in the old upper, none that was not. Nothing is copied
//! while requests wait: the swap renumbers the layer index of every live
//! inode and forgets what was learnt per index; files are copied up to the
//! new upper by the next change, as from any lower layer, and an open
//! file follows its node there (`open_files`). The old upper is never
//! written again, so making it durable (syncfs) is done after the
//! requests go on.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::ids::LayerIdx;
use crate::inode::RealEntry;
use crate::layer_read::UpperSlot;
use crate::overlay::{errno, LayerFs};
use crate::sys;
use crate::whiteout::DirMarks;

/// Why a rotation did not happen. Nothing changed in any of these cases.
#[derive(Debug)]
pub enum RotateError {
    /// The requests under way did not end within the bound.
    Timeout(Duration),
    /// Hardlink sets copied up by one name only: their other names would
    /// show the old content once the upper is a lower layer without its
    /// index. Linking them up (a metadata change of each other name, such
    /// as a chown to the same owner) and asking again makes it whole.
    PartialLinks(usize),
    /// The new upper is not usable (named, found, empty, on the upper's
    /// filesystem), or a syscall failed.
    Io(io::Error),
}

impl std::fmt::Display for RotateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RotateError::Timeout(t) => write!(
                f,
                "requests under way did not pause within {} ms; nothing changed",
                t.as_millis()
            ),
            RotateError::PartialLinks(n) => write!(
                f,
                "{n} hardlink set(s) are copied up by one name only: link up their other names first"
            ),
            RotateError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<io::Error> for RotateError {
    fn from(e: io::Error) -> Self {
        RotateError::Io(e)
    }
}

/// What a rotation took.
#[derive(Debug, Clone, Copy)]
pub struct Rotated {
    /// How long mutating requests were held.
    pub barrier: Duration,
    /// How long every request was held (the swap itself).
    pub stopped: Duration,
    /// How long the old upper took to become durable afterwards.
    pub sync: Duration,
    /// Live inodes renumbered.
    pub inodes: usize,
}

impl LayerFs {
    /// Turns the upper into the top lower layer and goes on in `next`, an
    /// empty directory beside the upper dir (one name, reached from the
    /// upper's parent as the daemon sees it, so it is on the same mount
    /// as the work dir). Mutating requests wait at most `timeout`.
    pub fn rotate(&self, next: &OsStr, timeout: Duration) -> Result<Rotated, RotateError> {
        let up = self.upper_ctx()?;
        let name = next.as_encoded_bytes();
        if name.is_empty() || name.contains(&b'/') || name == b"." || name == b".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("new upper {next:?}: expected the name of a directory beside the upper"),
            )
            .into());
        }
        let layers = self.layers();
        let old = layers.root_fd(up.idx);
        let parent = sys::openat(old, OsStr::new(".."), libc::O_PATH | libc::O_DIRECTORY, 0)?;
        let root = sys::openat(
            parent.as_fd(),
            next,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
        .map_err(|e| io::Error::new(e.kind(), format!("new upper {next:?}: {e}")))?;
        let list = sys::reopen(root.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)?;
        if sys::read_dir_fd(list.as_fd())?.len() > 2 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("new upper {next:?} is not empty"),
            )
            .into());
        }
        let new_stack = layers.rotated(root.try_clone()?).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("new upper {next:?}: not on the upper's filesystem"),
            )
        })?;
        drop(layers);
        // Most of the dirty data becomes durable before anything waits.
        if self.opts.fsync {
            sys::syncfs(old_root(self)?.as_fd())?;
        }

        {
            let _pass = self.gate.mutate();
            self.link_up_known_names()?;
        }

        let t0 = Instant::now();
        let frozen = self
            .gate
            .freeze(timeout)
            .ok_or(RotateError::Timeout(timeout))?;
        if self.partial_link_sets()? > 0 {
            // Sets copied up since the pass above.
            self.link_up_known_names()?;
        }
        let partial = self.partial_link_sets()?;
        if partial > 0 {
            return Err(RotateError::PartialLinks(partial));
        }
        let stopped = frozen.stop().ok_or(RotateError::Timeout(timeout))?;
        crate::sys::crashpoint::reached("rotate-stopped");
        let t1 = Instant::now();
        self.drop_index()?;
        let upper_root = RealEntry {
            layer: LayerIdx(0),
            fd: sys::openat(root.as_fd(), OsStr::new("."), libc::O_PATH, 0)?.into(),
            marks: DirMarks::default(),
        };
        let mut inodes = 0;
        let mut root_entry = Some(upper_root);
        let root_ino = crate::inode::ROOT_INO;
        self.inodes.for_each(|inode| {
            inodes += 1;
            self.keep_upper_number(inode);
            let top = if inode.ino == root_ino {
                root_entry.take()
            } else {
                None
            };
            inode.rotated(top);
        });
        self.numbering.rotate();
        let old_upper = old_root(self)?;
        self.replace_layers(new_stack);
        self.rotations.fetch_add(1, Ordering::SeqCst);
        let t2 = Instant::now();
        drop(stopped);
        drop(frozen);
        crate::sys::crashpoint::reached("rotate-swapped");
        // Nothing writes the old upper any more: its content is the
        // snapshot's once this returns.
        let t3 = Instant::now();
        if self.opts.fsync {
            sys::syncfs(old_upper.as_fd())?;
        }
        log::info!(
            "rotation: upper is now a lower layer ({} live inodes); barrier {:?}",
            inodes,
            t2 - t0
        );
        Ok(Rotated {
            barrier: t2 - t0,
            stopped: t2 - t1,
            sync: t3.elapsed(),
            inodes,
        })
    }

    /// An object numbered by a part below its upper one (a merged
    /// directory, by its first lower part; a metacopy, by its data) is
    /// numbered by its own identity once the upper is a lower layer: its
    /// number is kept for that identity, so that a lookup finds it again.
    fn keep_upper_number(&self, inode: &crate::inode::Inode) {
        let s = inode.state();
        if s.reals.len() < 2 || !self.is_upper(s.reals[0].layer) {
            return;
        }
        if let Ok(st) = s.reals[0].fd.get().and_then(|fd| sys::fstat(fd.as_fd())) {
            self.numbering
                .keep(crate::ids::RealKey::of(&st), inode.st_ino);
        }
    }

    /// Links up every name known of a hardlink set kept through the index
    /// (one copied up by some of its names): in the old upper, once a
    /// lower layer without its index, each name then shows the copy.
    /// Names the daemon never looked up stay out: the caller looks them
    /// up (a walk of the mount) and asks again.
    fn link_up_known_names(&self) -> io::Result<()> {
        let mut sets = Vec::new();
        self.inodes.for_each(|i| {
            if !i.is_dir() && i.nlink_delta().is_some_and(|d| d != -1) {
                sets.push(i.ino);
            }
        });
        for ino in sets {
            let Ok(node) = self.inode(ino) else {
                continue;
            };
            if !self.is_upper(node.top().layer) || node.is_unlinked() {
                continue;
            }
            let names: Vec<_> = {
                let s = node.state();
                std::iter::once((s.parent, s.name.clone()))
                    .chain(s.other_names.iter().cloned())
                    .collect()
            };
            for (parent, name) in names {
                let dir = self.inode(parent)?;
                let pu = self.upper_dir(&dir)?;
                if let UpperSlot::Entry(..) = self.upper_slot(&pu, &name)? {
                    continue;
                }
                self.link_up(&node, &pu, &name)?;
                dir.dir_changed();
            }
        }
        Ok(())
    }

    /// Index entries whose set still has names only in lower layers
    /// (`overlay.nlink` other than U-1: the shown count is more than the
    /// upper names, the index link aside).
    fn partial_link_sets(&self) -> io::Result<usize> {
        let up = self.upper_ctx()?;
        let Some(index) = up.work.index_fd() else {
            return Ok(0);
        };
        let list = sys::reopen(index, libc::O_RDONLY | libc::O_DIRECTORY)?;
        let mut partial = 0;
        for e in sys::read_dir_fd(list.as_fd())? {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            let name = OsStr::from_bytes(&e.name);
            let fd = sys::openat(index, name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
            let st = sys::fstat(fd.as_fd())?;
            let Ok(v) = sys::getxattr_fd(fd.as_fd(), &up.ns.name("nlink")) else {
                continue;
            };
            let names = st.st_nlink as i64 - 1;
            match crate::attr::parse_nlink(&v, st.st_nlink as i64) {
                Some(delta) if names > 0 && st.st_nlink as i64 + delta > names => partial += 1,
                _ => {}
            }
        }
        Ok(partial)
    }

    /// Removes every index entry: they are links to files of the old
    /// upper, which is read-only from now on; a copy-up from it starts a
    /// new entry.
    fn drop_index(&self) -> io::Result<()> {
        let up = self.upper_ctx()?;
        let Some(index) = up.work.index_fd() else {
            return Ok(());
        };
        let list = sys::reopen(index, libc::O_RDONLY | libc::O_DIRECTORY)?;
        for e in sys::read_dir_fd(list.as_fd())? {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            let name = OsStr::from_bytes(&e.name);
            // The set is whole in the old upper: its count is the plain
            // link count once this link is gone, whichever layer the old
            // upper stays (a crash here leaves it the upper).
            if let Ok(fd) = sys::openat(index, name, libc::O_RDONLY | libc::O_NOFOLLOW, 0) {
                let _ = sys::removexattr_fd(fd.as_fd(), &up.ns.name("nlink"));
            }
            sys::unlinkat(index, name, 0).or_else(|e| match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(()),
                _ => Err(e),
            })?;
        }
        if self.opts.fsync {
            sys::fsync(list.as_fd(), false)?;
        }
        Ok(())
    }
}

/// The current upper's root, opened for reading (syncfs wants more than
/// an O_PATH fd).
fn old_root(fs: &LayerFs) -> io::Result<std::os::fd::OwnedFd> {
    let layers = fs.layers();
    let idx = layers.upper().ok_or_else(|| errno(libc::EROFS))?;
    sys::reopen(layers.root_fd(idx), libc::O_RDONLY | libc::O_DIRECTORY)
}
