//! The work directory: where copy-ups and replacements are staged before an
//! atomic rename into the upper layer, as kernel overlayfs does with
//! `WORKDIR/work` (a regular file's copy-up makes an unnamed `O_TMPFILE`
//! file here instead, linked into place: see `copyup`). It is locked for
//! the life of the mount and emptied at mount time, which removes what a
//! crash left half-built.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::features::Features;
use crate::sys;
use crate::whiteout::XattrNs;

/// Opens (by `open`) and flock's a directory, refusing if another mount
/// holds it; `dir` is its name for messages.
fn lock_dir(open: &Path, dir: &Path, what: &str) -> io::Result<OwnedFd> {
    let fd = sys::open_path(open, libc::O_RDONLY | libc::O_DIRECTORY)?;
    // umount(8) returns before the previous daemon has exited: give a
    // mount that is going away a moment to let go.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match sys::flock(fd.as_fd(), libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => return Ok(fd),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::ResourceBusy,
                        format!(
                            "{what} {} is in use by another layerfs mount",
                            dir.display()
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// How long a mount waits for a holder that is going away (see
/// [`HolderNote::going_away`]). umount(2) of a FUSE mount returns once the
/// kernel has aborted the connection, without waiting for the daemon (it
/// sends no FUSE_DESTROY for a non-block mount); the daemon lets go of the
/// locks only once every worker has seen the abort, which on a loaded
/// machine has taken over 2 s. A live holder is refused at once.
const DYING_HOLDER_WAIT: Duration = Duration::from_secs(10);

/// The holder note and record lock of a work directory: a second mount of
/// it, on this host or another that shares the filesystem, is refused with
/// a message naming the holder. The lock goes with the holder's open file,
/// so a killed daemon (or a lost host, once its filesystem client is gone)
/// does not block the next mount; a holder whose mount is gone is waited
/// for. `None` where the filesystem has no record locks (the flock alone
/// then guards this host).
fn lock_holder(workdir: BorrowedFd<'_>, path: &Path) -> io::Result<Option<OwnedFd>> {
    let fd = sys::openat(
        workdir,
        OsStr::new(HOLDER_FILE),
        libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        0o600,
    )?;
    let deadline = Instant::now() + DYING_HOLDER_WAIT;
    loop {
        match sys::ofd_setlk(fd.as_fd(), libc::F_WRLCK) {
            Ok(()) => break,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => {
                // Read again each time: the holder may have changed.
                let mut held = vec![0u8; 512];
                let n = sys::pread(fd.as_fd(), &mut held, 0).unwrap_or(0);
                let note = String::from_utf8_lossy(&held[..n]).into_owned();
                let dying = HolderNote::parse(&note).is_some_and(|h| h.going_away());
                if !dying || Instant::now() >= deadline {
                    let who = note.lines().next().unwrap_or("").trim();
                    return Err(io::Error::new(
                        io::ErrorKind::ResourceBusy,
                        format!(
                            "workdir {} is in use by {}{}",
                            path.display(),
                            if who.is_empty() {
                                "another layerfs mount"
                            } else {
                                who
                            },
                            if dying {
                                ", whose mount is gone but which has not let go of it \
                                 (is the mount still held in another mount namespace?)"
                            } else {
                                ""
                            }
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                log::debug!(
                    "workdir {}: no record locks ({e}); flock only",
                    path.display()
                );
                return Ok(None);
            }
        }
    }
    write_holder_note(fd.as_fd(), None)?;
    Ok(Some(fd))
}

/// A work directory's holder, as its note names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    /// On this host, and its mount is gone (its daemon is ending).
    pub going_away: bool,
}

/// Who holds the work directory `workdir` now, if a mount holds its lock:
/// on this host or on another that shares the filesystem. None if no one
/// does (or the filesystem has no record locks). Nothing is locked by
/// asking.
pub fn current_holder(workdir: &Path) -> io::Result<Option<Holder>> {
    let fd = match sys::open_path(
        &workdir.join(HOLDER_FILE),
        libc::O_RDONLY | libc::O_NOFOLLOW,
    ) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    match sys::ofd_conflicts(fd.as_fd(), libc::F_RDLCK) {
        Ok(true) => {}
        Ok(false) => return Ok(None),
        Err(e) => {
            log::debug!("{}: no record locks ({e})", workdir.display());
            return Ok(None);
        }
    }
    let mut held = vec![0u8; 512];
    let n = sys::pread(fd.as_fd(), &mut held, 0).unwrap_or(0);
    let note = String::from_utf8_lossy(&held[..n]).into_owned();
    Ok(Some(match HolderNote::parse(&note) {
        Some(h) => Holder {
            going_away: h.going_away(),
            pid: h.pid,
            host: h.host,
        },
        None => Holder {
            pid: 0,
            host: String::new(),
            going_away: false,
        },
    }))
}

/// Who holds the work directory: this process on this host, and once its
/// mount is up, that mount (`major:minor` and its mountpoint as
/// mountinfo writes it).
fn write_holder_note(fd: BorrowedFd<'_>, mount: Option<&str>) -> io::Result<()> {
    let mut note = format!(
        "layerfs pid {} on host {}\n",
        std::process::id(),
        sys::hostname()
    );
    if let Some(dev) = mount {
        note.push_str(&format!("mount {dev}\n"));
    }
    // Written over the old note, then cut to length: a reader never sees
    // the file empty once it has named a holder.
    sys::pwrite(fd, note.as_bytes(), 0)?;
    sys::ftruncate(fd, note.len() as u64)?;
    Ok(())
}

/// Prefix of a staged link to an indexed file (see [`Staged::index_link`]).
const NLINK_TAG: &str = "#lfsnl";

/// The delta a staged name carries, if it is an index link's.
fn nlink_tag(name: &OsStr) -> Option<i64> {
    let rest = name.to_str()?.strip_prefix(NLINK_TAG)?;
    rest.split_once('.')?.0.parse().ok()
}

/// What a holder note says (see `write_holder_note`).
#[derive(Debug, PartialEq)]
struct HolderNote {
    pid: u32,
    host: String,
    /// The holder's mount once it is up: its device (`major:minor`), then
    /// its mountpoint as mountinfo escapes it (older notes name the device
    /// only).
    mount: Option<String>,
}

impl HolderNote {
    fn parse(note: &str) -> Option<HolderNote> {
        let mut lines = note.lines();
        let (pid, host) = lines
            .next()?
            .strip_prefix("layerfs pid ")?
            .split_once(" on host ")?;
        let mount = lines.find_map(|l| l.strip_prefix("mount ").map(|d| d.trim().to_string()));
        Some(HolderNote {
            pid: pid.parse().ok()?,
            host: host.trim().to_string(),
            mount,
        })
    }

    /// Whether the holder is on its way out: on this host, and its process
    /// is gone (a copy of its fds may live a moment longer) or its mount is
    /// no longer in its mount namespace (it was unmounted, and the daemon
    /// has not yet seen the connection end). A holder on another host, one
    /// still starting (no mount noted yet) or one that cannot be looked at
    /// counts as live.
    fn going_away(&self) -> bool {
        if self.host != sys::hostname() {
            return false;
        }
        match fs::read_to_string(format!("/proc/{}/mountinfo", self.pid)) {
            // A pid of another pid namespace is looked up here as a process
            // of ours: at worst a live holder is waited for, then refused.
            // The device alone does not name the mount: an anonymous device
            // number freed by the unmount is soon given to another FUSE mount
            // (another test's, another container's) in the same namespace.
            Ok(info) => self.mount.as_deref().is_some_and(|m| {
                let (dev, at) = match m.split_once(' ') {
                    Some((dev, at)) => (dev, Some(at)),
                    None => (m, None),
                };
                !info.lines().any(|l| {
                    let mut f = l.split(' ').skip(2);
                    f.next() == Some(dev) && (at.is_none() || f.nth(1) == at)
                })
            }),
            Err(e) => !matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)),
        }
    }
}

/// The mount on `mountpoint` in this process's mount namespace (the
/// topmost one there: the daemon's, just mounted), as "major:minor
/// mountpoint" with the mountpoint escaped as /proc/self/mountinfo writes
/// it, where `HolderNote::going_away` looks for it. The device comes from
/// the root's cached attributes (`sys::mounted_dev`): a plain stat would
/// ask the daemon, which does not serve yet, and reading mountinfo costs
/// a walk of every mount (hundreds on a container host).
fn fuse_mount_dev(mountpoint: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    // mountinfo escapes these as \ooo.
    let mut want = Vec::new();
    for &b in mountpoint.as_os_str().as_bytes() {
        match b {
            b' ' | b'\t' | b'\n' | b'\\' => want.extend(format!("\\{b:03o}").bytes()),
            _ => want.push(b),
        }
    }
    // Both read the same way where a name is not UTF-8.
    let want = String::from_utf8_lossy(&want);
    match sys::mounted_dev(mountpoint) {
        Ok((major, minor)) => Some(format!("{major}:{minor} {want}")),
        Err(e) => {
            log::debug!("{}: no device: {e}", mountpoint.display());
            None
        }
    }
}

/// Name of the holder note in WORKDIR (beside `work` and `index`, which
/// kernel overlayfs ignores).
const HOLDER_FILE: &str = "layerfs.lock";

#[derive(Debug)]
pub struct WorkDir {
    /// O_PATH fd of `WORKDIR/work`.
    fd: OwnedFd,
    path: PathBuf,
    /// WORKDIR itself, opened and flock'ed: a second mount on the same
    /// workdir is refused while this one lives.
    _lock: OwnedFd,
    _upper_lock: OwnedFd,
    /// `WORKDIR/layerfs.lock`, record-locked for the life of the mount:
    /// unlike flock, the lock other hosts see on a shared filesystem.
    holder: Option<OwnedFd>,
    /// Where overlay xattrs are written (see `probe_features`).
    ns: XattrNs,
    /// What the upper's filesystem offers.
    features: Features,
    /// O_PATH fd of `WORKDIR/index`: one link per copied-up lower hardlink,
    /// named by the lower file's origin handle (kernel overlayfs' layout).
    index: Option<OwnedFd>,
    next: AtomicU64,
}

impl WorkDir {
    /// Locks `upperdir` and `workdir` against a second mount, creates
    /// `workdir/work` if needed, empties it, and checks the filesystem has
    /// what overlay metadata needs (xattrs, d_type). `userxattr` asks for
    /// `user.overlay.*` xattrs even where `trusted.` could be written.
    pub fn prepare(workdir: &Path, upperdir: &Path, userxattr: bool) -> io::Result<WorkDir> {
        WorkDir::prepare_at(workdir, upperdir, workdir, upperdir, userxattr)
    }

    /// As `prepare`, opening the two directories by other paths than the
    /// names messages give them (the mount code reaches them through a
    /// private copy of their mount).
    pub fn prepare_at(
        workdir: &Path,
        upperdir: &Path,
        open_work: &Path,
        open_upper: &Path,
        userxattr: bool,
    ) -> io::Result<WorkDir> {
        // The record lock first: on a shared filesystem it is the one that
        // names the holder on another host (which would also meet the
        // flocks below, GlusterFS passing them on as record locks).
        let holder = {
            let root = sys::open_path(open_work, libc::O_RDONLY | libc::O_DIRECTORY)?;
            lock_holder(root.as_fd(), workdir)?
        };
        let upper_lock = lock_dir(open_upper, upperdir, "upperdir")?;
        let lock = lock_dir(open_work, workdir, "workdir")?;
        let path = open_work.join("work");
        // Kernel overlayfs makes it mode 0 (only the mounter's privileges get
        // in); an unprivileged mounter needs to reach it with its own rights.
        let mode = if sys::geteuid() == 0 { 0 } else { 0o700 };
        match sys::mkdirat(lock.as_fd(), OsStr::new("work"), mode) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        let fd = sys::openat(
            lock.as_fd(),
            OsStr::new("work"),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        let index = match sys::mkdirat(lock.as_fd(), OsStr::new("index"), mode) {
            Ok(()) => true,
            Err(e) => e.raw_os_error() == Some(libc::EEXIST),
        };
        let index = if index {
            sys::openat(
                lock.as_fd(),
                OsStr::new("index"),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )
            .ok()
        } else {
            None
        };
        let mut wd = WorkDir {
            fd,
            path,
            _lock: lock,
            _upper_lock: upper_lock,
            holder,
            index,
            ns: XattrNs::Trusted,
            features: Features::ALL,
            next: AtomicU64::new(1),
        };
        wd.clean()?;
        let (features, ns) = wd.probe_features(upperdir, userxattr)?;
        if features.oci_format() {
            // The index needs overlay.origin and overlay.nlink xattrs.
            wd.index = None;
        }
        wd.features = features;
        wd.ns = ns;
        Ok(wd)
    }

    /// Probes what the upper's filesystem offers (see `features`) in the
    /// emptied work dir, says which fallbacks are in use,
    /// and picks the namespace overlay xattrs are written in: `trusted.`
    /// where this process may (real root), else `user.` (as kernel
    /// overlayfs' `userxattr`). Fails, naming the problem, on a filesystem
    /// without xattrs.
    fn probe_features(&self, upperdir: &Path, userxattr: bool) -> io::Result<(Features, XattrNs)> {
        let (mut features, mut notes) = crate::features::probe(self.fd())?;
        crate::features::disable_from_env(&mut features, &mut notes);
        log::debug!(
            "upperdir {}: probed {features:?}; missing: {notes}",
            upperdir.display()
        );
        let fallbacks = features.fallbacks();
        if !fallbacks.is_empty() {
            log::warn!(
                "upperdir {}: its filesystem lacks some features; fallbacks in use: {} (-d says why)",
                upperdir.display(),
                fallbacks.join(", ")
            );
        }
        // Without any xattrs the upper takes fuse-overlayfs' format (see
        // `Features::oci_format`); `user.` then only names what is absent.
        let ns = if features.xattr_trusted && !userxattr {
            XattrNs::Trusted
        } else {
            XattrNs::User
        };
        if userxattr && !features.xattr_user && features.xattr_trusted {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "userxattr: the filesystem of upperdir {} does not take user.* xattrs",
                    upperdir.display()
                ),
            ));
        }
        Ok((features, ns))
    }

    /// Copies of the descriptors holding this work dir's locks, to let the
    /// locks go before the rest of the mount's state is torn down (see
    /// [`LockRelease`]).
    pub fn lock_release(&self) -> io::Result<LockRelease> {
        Ok(LockRelease {
            flocks: vec![self._lock.try_clone()?, self._upper_lock.try_clone()?],
            holder: self.holder.as_ref().map(|h| h.try_clone()).transpose()?,
        })
    }

    pub fn features(&self) -> &Features {
        &self.features
    }

    pub fn xattr_ns(&self) -> XattrNs {
        self.ns
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn index_fd(&self) -> Option<BorrowedFd<'_>> {
        self.index.as_ref().map(|f| f.as_fd())
    }

    /// A name no other staging operation of this mount uses.
    pub fn temp_name(&self) -> OsString {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        OsString::from(format!("#lfs{n:x}"))
    }

    /// A staging name for a link to an indexed file (see
    /// [`Staged::index_link`]): it carries the `overlay.nlink` delta that
    /// is right while the staged link exists.
    fn nlink_tagged_name(&self, delta: i64) -> OsString {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        OsString::from(format!("{NLINK_TAG}{delta:+}.{n:x}"))
    }

    /// Removes a staged entry and everything below it.
    pub fn remove(&self, name: &OsStr) -> io::Result<()> {
        let p = self.path.join(name);
        match fs::symlink_metadata(&p) {
            Ok(md) if md.is_dir() => fs::remove_dir_all(&p),
            Ok(_) => fs::remove_file(&p),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Empties the work directory (leftovers of a crash). A staged link to
    /// an indexed file first gives the file the link count it has without
    /// that link (see [`Staged::index_link`]).
    fn clean(&self) -> io::Result<()> {
        for e in fs::read_dir(&self.path)? {
            let name = e?.file_name();
            if let Some(delta) = nlink_tag(&name) {
                self.settle_nlink(&name, delta)?;
            }
            self.remove(&name)?;
        }
        Ok(())
    }

    /// Before the staged link `name`, tagged with `delta`, is removed: if it
    /// is still linked to an index entry, the entry's `overlay.nlink` (in
    /// whichever namespace it was written) becomes the delta right without
    /// it, whether or not the crash came before the value was updated.
    fn settle_nlink(&self, name: &OsStr, delta: i64) -> io::Result<()> {
        let fd = sys::openat(self.fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let st = sys::fstat(fd.as_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_nlink < 2 {
            return Ok(());
        }
        for ns in [XattrNs::Trusted, XattrNs::User] {
            let key = ns.name("nlink");
            if sys::getxattr_fd(fd.as_fd(), &key).is_ok() {
                let settled = delta + 1;
                log::info!(
                    "work dir: a link-up cut by a crash: overlay.nlink of inode {} is U{settled:+}",
                    st.st_ino
                );
                return sys::setxattr_fd(fd.as_fd(), &key, format!("U{settled:+}").as_bytes(), 0);
            }
        }
        Ok(())
    }
}

/// The work dir's locks, released early: a daemon whose mount is gone
/// still closes every fd it holds (one RCU grace period per private mount
/// copy of a layer, the inode table's fds), and a mount of the same upper
/// made right after `umount` waited for all of it. Flocks and OFD locks
/// belong to the open file, which these copies share, so unlocking through
/// them releases the locks the `WorkDir` holds.
#[derive(Debug)]
pub struct LockRelease {
    flocks: Vec<OwnedFd>,
    holder: Option<OwnedFd>,
}

impl LockRelease {
    /// Names the calling process (the daemon, forked from the process that
    /// took the lock) as the holder, with the mount on `mountpoint`, now
    /// up: a mount made once it is gone waits for this daemon to let go
    /// rather than being refused (see `HolderNote::going_away`).
    pub fn note_mount(&self, mountpoint: &Path) {
        let Some(h) = &self.holder else { return };
        let dev = fuse_mount_dev(mountpoint);
        if let Err(e) = write_holder_note(h.as_fd(), dev.as_deref()) {
            log::warn!("cannot update {HOLDER_FILE}: {e}");
        }
    }

    /// Lets another mount take the work and upper dirs. Only once nothing
    /// of this mount uses the work dir any more: the next mount empties it.
    pub fn release(self) {
        if let Some(h) = &self.holder {
            if let Err(e) = sys::ofd_setlk(h.as_fd(), libc::F_UNLCK) {
                log::debug!("cannot unlock {HOLDER_FILE}: {e}");
            }
        }
        for fd in &self.flocks {
            if let Err(e) = sys::flock(fd.as_fd(), libc::LOCK_UN) {
                log::debug!("cannot unlock the work or upper dir: {e}");
            }
        }
    }
}

/// A staged entry in the work directory, removed on drop unless it was
/// renamed into place ([`Staged::commit`]).
pub struct Staged<'a> {
    work: &'a WorkDir,
    pub name: OsString,
    armed: bool,
}

impl<'a> Staged<'a> {
    pub fn new(work: &'a WorkDir) -> Staged<'a> {
        Staged {
            name: work.temp_name(),
            work,
            armed: true,
        }
    }

    /// A staged name for a link to a file kept through the index (a lower
    /// hard-link set copied up), whose `overlay.nlink` is `U+delta` while
    /// this staged link exists.
    ///
    /// A link count and an xattr cannot change in one syscall, so a link-up
    /// (a new upper name for the index entry, which adds an upper link but
    /// no name the user sees) is staged here first: should the daemon die
    /// with the link still in the work dir, the next mount's cleanup knows
    /// from the name alone what `overlay.nlink` must say once the link is
    /// gone (`delta + 1`), whether the crash came before or after the
    /// xattr was written.
    pub fn index_link(work: &'a WorkDir, delta: i64) -> Staged<'a> {
        Staged {
            name: work.nlink_tagged_name(delta),
            work,
            armed: true,
        }
    }

    /// The entry has left the work directory: nothing to clean.
    pub fn commit(mut self) {
        self.armed = false;
    }
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Some(delta) = nlink_tag(&self.name) {
                if let Err(e) = self.work.settle_nlink(&self.name, delta) {
                    log::warn!("cannot settle the link count of {:?}: {e}", self.name);
                }
            }
            if let Err(e) = self.work.remove(&self.name) {
                log::warn!("cannot remove staged {:?}: {e}", self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether another open file could take the flock of `dir` now.
    fn flock_free(dir: &Path) -> bool {
        let fd = sys::open_path(dir, libc::O_RDONLY | libc::O_DIRECTORY).unwrap();
        sys::flock(fd.as_fd(), libc::LOCK_EX | libc::LOCK_NB).is_ok()
    }

    #[test]
    fn released_locks_let_the_next_mount_in_while_the_state_lives() {
        let t = tempfile::tempdir().unwrap();
        let (upper, work) = (t.path().join("upper"), t.path().join("work"));
        fs::create_dir(&upper).unwrap();
        fs::create_dir(&work).unwrap();
        let first = WorkDir::prepare(&work, &upper, false).unwrap();
        assert!(!flock_free(&work) && !flock_free(&upper));
        first.lock_release().unwrap().release();
        assert!(flock_free(&work) && flock_free(&upper));
        // The record lock on the holder note is gone too: a second work
        // dir state is made at once, not after a wait for a holder.
        let start = Instant::now();
        let second = WorkDir::prepare(&work, &upper, false).unwrap();
        assert!(start.elapsed() < Duration::from_secs(1));
        let note = fs::read_to_string(work.join(HOLDER_FILE)).unwrap();
        assert!(
            note.contains(&format!("pid {}", std::process::id())),
            "{note}"
        );
        drop(first);
        drop(second);
    }

    #[test]
    fn a_holder_is_going_away_once_its_process_or_its_mount_is_gone() {
        let me = std::process::id();
        let host = sys::hostname();
        let note = |pid: u32, host: &str, mount: Option<&str>| HolderNote {
            pid,
            host: host.to_string(),
            mount: mount.map(str::to_string),
        };
        let text = format!("layerfs pid {me} on host {host}\nmount 0:4242\n");
        assert_eq!(
            HolderNote::parse(&text),
            Some(note(me, &host, Some("0:4242")))
        );
        assert_eq!(HolderNote::parse("garbage"), None);
        // Still starting (no mount yet), or its mount still listed: live.
        assert!(!note(me, &host, None).going_away());
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let first: Vec<&str> = info.lines().next().unwrap().split(' ').collect();
        let listed = first[2];
        assert!(!note(me, &host, Some(listed)).going_away());
        let listed_at = format!("{} {}", first[2], first[4]);
        assert!(!note(me, &host, Some(&listed_at)).going_away());
        // Its device number given to a mount elsewhere: gone all the same.
        let elsewhere = format!("{} /no/such/mountpoint", first[2]);
        assert!(note(me, &host, Some(&elsewhere)).going_away());
        // Its mount gone, or its process: going away.
        assert!(note(me, &host, Some("0:999999")).going_away());
        assert!(note(u32::MAX, &host, None).going_away());
        // Another host's holder cannot be looked at: live.
        assert!(!note(u32::MAX, "another-host", None).going_away());
    }
}
