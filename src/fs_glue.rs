//! What the FUSE handlers of `fs` share, and what those that run on the
//! blocking pool (`blocking`) take with them: the filesystem, the kernel's
//! caching terms agreed at INIT, and the replies built from `LayerFs`'s
//! answers.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    Errno, FileAttr, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyXattr, Request,
};

use crate::backing::{Backings, Passthrough};
use crate::fs_reply::answer;
use crate::ids::RealKey;
use crate::overlay::LayerFs;

/// What every handler uses, shared with those run on the blocking pool.
pub struct Glue {
    pub(crate) fs: Arc<LayerFs>,
    pub(crate) ttl: Duration,
    pub(crate) backings: Backings,
    /// The kernel caches writes (FUSE_WRITEBACK_CACHE), where passthrough
    /// is not to be had: see `open_flags`.
    pub(crate) writeback: bool,
    /// FORGETs received, to hand freed memory back now and then.
    pub(crate) forgets: std::sync::atomic::AtomicU64,
}

impl Glue {
    /// OPEN, with the caller's pass through the gate taken.
    pub(crate) fn answer_open(&self, ino: INodeNo, flags: i32, reply: ReplyOpen) {
        let opened = match self.fs.open(ino.into(), self.open_flags(flags)) {
            // A write-only file this daemon may not read: as asked, then
            // (partial pages are then written through, not cached).
            Err(e) if e.raw_os_error() == Some(libc::EACCES) && self.writeback => {
                self.fs.open(ino.into(), flags & !libc::O_APPEND)
            }
            r => r,
        };
        match opened {
            Ok((fh, immutable)) => {
                // Without a writable upper nothing is ever copied up, so a
                // lower file can pass through too.
                let may_pass = !immutable || !self.fs.is_writable();
                match self.serve_mode(ino.into(), fh, may_pass, |fd| reply.open_backing(fd)) {
                    Passthrough::Use(id) => {
                        reply.opened_passthrough(fh.into(), FopenFlags::FOPEN_NOFLUSH, &id)
                    }
                    Passthrough::Cached => {
                        // A lower file cannot change: keep its page cache.
                        // Flush does nothing here, so the kernel need not send it.
                        let f = if immutable {
                            FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH
                        } else {
                            FopenFlags::FOPEN_NOFLUSH
                        };
                        reply.opened(fh.into(), f)
                    }
                }
            }
            Err(e) => reply.error(answer("open", e)),
        }
    }

    /// Takes what the kernel offers that this mount uses.
    pub(crate) fn init(&mut self, config: &mut KernelConfig) {
        if self.backings.enabled() {
            let depth = if self.fs.layers_are_stacked() { 2 } else { 1 };
            if config
                .add_capabilities(InitFlags::FUSE_PASSTHROUGH)
                .is_err()
                || config.set_max_stack_depth(depth).is_err()
            {
                log::info!("kernel without FUSE passthrough: data goes through the daemon");
                self.backings.disable();
            }
        }
        // Without passthrough, file data goes through the daemon: let the
        // kernel gather small writes in its page cache and send them in
        // large requests (it then owns size and mtime while it caches).
        if !self.backings.enabled() && !self.fs.opts.no_writeback {
            match config.add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE) {
                Ok(()) => self.writeback = true,
                Err(_) => log::debug!("kernel lacks FUSE_WRITEBACK_CACHE"),
            }
        }
        // Each is optional: a kernel without one simply does without.
        // POSIX_ACL: the kernel checks ACLs itself and caches them per
        // inode, so `ls -l` does not ask for system.posix_acl_* of every
        // file each time (those are read, written and copied up as xattrs).
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_POSIX_ACL,
            // The kernel then stops asking for security.capability before
            // every write (one round trip each) and refreshing attributes
            // before chown; setuid/setgid clearing is done here (write,
            // setattr) and passthrough is kept off for such files.
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
        ] {
            if config.add_capabilities(cap).is_err() {
                log::debug!("kernel lacks {cap:?}");
            }
        }
    }

    /// The flags to open a real file with for an open(2) with `flags`.
    /// With the writeback cache the kernel writes pages back at offsets it
    /// chose (so O_APPEND on the real file would misplace them) and reads
    /// in the rest of a partly written page even through a write-only
    /// open, as libfuse's passthrough examples also do.
    pub(crate) fn open_flags(&self, flags: i32) -> i32 {
        if !self.writeback {
            return flags;
        }
        let mut f = flags & !libc::O_APPEND;
        if f & libc::O_ACCMODE == libc::O_WRONLY {
            f = (f & !libc::O_ACCMODE) | libc::O_RDWR;
        }
        f
    }

    /// How to serve an open file: passthrough to its real file when the
    /// kernel allows (see `backing`), else through the daemon.
    pub(crate) fn serve_mode(
        &self,
        ino: u64,
        fh: crate::ids::FileHandle,
        may_pass: bool,
        open_backing: impl FnOnce(&std::os::fd::OwnedFd) -> io::Result<fuser::BackingId>,
    ) -> Passthrough {
        let Ok(file) = self.fs.file(fh) else {
            return Passthrough::Cached;
        };
        // The real file's identity, which a live backing id must match; not
        // needed (nor fetched) for a handle that cannot pass through.
        let st = (may_pass && self.backings.enabled())
            .then(|| crate::sys::fstat(std::os::fd::AsFd::as_fd(&*file.fd())).ok())
            .flatten();
        let key = st.as_ref().map_or(RealKey { dev: 0, ino: 0 }, RealKey::of);
        // A passthrough write never reaches the daemon, which must clear
        // setuid/setgid (FUSE_HANDLE_KILLPRIV_V2): such files are served here.
        let may_pass = st.is_some_and(|s| !crate::file_data::has_suidgid(s.st_mode));
        // Cached handles are counted too: one rules out passthrough opens.
        let p = self
            .backings
            .open(ino, key, may_pass, || open_backing(&file.fd()));
        if let Passthrough::Use(id) = &p {
            let _ = file.backing.set(Arc::clone(id));
        }
        p
    }

    /// Attributes as the kernel is to see them: owners through the mount's
    /// id mapping (`idmap`); everything below `fs` works with stored ids.
    pub(crate) fn shown(&self, mut attr: FileAttr) -> FileAttr {
        let ids = &self.fs.opts.ids;
        if !ids.is_identity() {
            attr.uid = ids.uid.shown(attr.uid);
            attr.gid = ids.gid.shown(attr.gid);
        }
        attr
    }

    /// The ids a new object of this caller is stored with.
    pub(crate) fn caller(&self, req: &Request) -> (u32, u32) {
        let ids = &self.fs.opts.ids;
        (ids.uid.stored(req.uid()), ids.gid.stored(req.gid()))
    }

    pub(crate) fn entry_reply(&self, op: &str, res: io::Result<FileAttr>, reply: ReplyEntry) {
        match res {
            Ok(attr) => reply.entry(&self.ttl, &self.shown(attr), Generation(0)),
            Err(e) => reply.error(answer(op, e)),
        }
    }

    /// The names in directory `dir` changed (or may have: also after a
    /// failure): the kernel's cached listing of it goes, before the reply
    /// lets the caller go on. Without it, with processes listing and
    /// changing one directory at once, the kernel's readdir cache (6.18)
    /// served names removed before a listing began and missed some made
    /// before it, although each change bumps the directory's i_version
    /// (fuse-overlayfs shows the same; `tests/read_path.rs`). Dropping the
    /// cache's pages makes the next listing ask again.
    pub(crate) fn listing_changed(&self, dir: INodeNo) {
        self.fs.listing_changed(dir.into());
    }

    pub(crate) fn empty_reply(op: &str, res: io::Result<()>, reply: ReplyEmpty) {
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(answer(op, e)),
        }
    }

    pub(crate) fn xattr_reply(
        &self,
        op: &str,
        res: io::Result<Vec<u8>>,
        size: u32,
        reply: ReplyXattr,
    ) {
        match res {
            Ok(data) if size == 0 => reply.size(data.len() as u32),
            Ok(data) if data.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(answer(op, e)),
        }
    }
}
