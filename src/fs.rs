//! The `fuser::Filesystem` glue: converts arguments, calls `LayerFs`'s operations, replies.
//! No overlay logic lives here.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use std::path::Path;
use std::time::SystemTime;

use fuser::{
    BsdFileFlags, CopyFileRangeFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation,
    INodeNo, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::backing::{Backings, Passthrough};
use crate::blocking::Blocking;
use crate::fs_glue::Glue;
use crate::modify::SetAttr;
use crate::overlay::LayerFs;

use crate::fs_reply::{answer, negative_entry, time_spec};

/// The filesystem as fuser sees it: what its handlers share, and where
/// those that may wait on the disk run.
pub struct Fuse {
    glue: Arc<Glue>,
    /// Where a request that may wait on the disk runs when every other
    /// worker waits already (see `blocking`).
    blocking: Blocking,
}

impl std::ops::Deref for Fuse {
    type Target = Glue;
    fn deref(&self) -> &Glue {
        &self.glue
    }
}

/// FORGETs between two `malloc_trim`s: a walk of a million entries frees
/// hundreds of MiB that glibc would otherwise keep.
const FORGETS_PER_TRIM: u64 = 1 << 14;

impl Fuse {
    /// For a session served by `workers` of fuser's threads.
    pub fn new(fs: Arc<LayerFs>, workers: usize) -> Fuse {
        let ttl = fs.opts.timeout;
        // Registering backing files needs CAP_SYS_ADMIN in the initial user
        // namespace: root inside a container's user namespace is not enough.
        let backings = Backings::new(
            fs.opts.passthrough && crate::sys::geteuid() == 0 && crate::sys::in_initial_user_ns(),
        );
        Fuse {
            glue: Arc::new(Glue {
                fs,
                ttl,
                backings,
                writeback: false,
                forgets: Default::default(),
            }),
            blocking: Blocking::new(workers),
        }
    }

    /// The handlers' shared part, for a job run elsewhere.
    fn share(&self) -> Arc<Glue> {
        Arc::clone(&self.glue)
    }
}

// No `access`: every mount has `default_permissions`, so the kernel checks
// permissions itself and never sends ACCESS.
impl Filesystem for Fuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Crash tests count steps of the served filesystem only.
        crate::sys::crashpoint::arm();
        // No request has been served, so nothing shares the glue yet.
        let glue = Arc::get_mut(&mut self.glue)
            .ok_or_else(|| io::Error::other("the FUSE glue is shared before init"))?;
        glue.init(config);
        Ok(())
    }

    fn destroy(&mut self) {
        // fuser has joined its workers; jobs still on the pool use the
        // work dir, whose locks go once the session has ended.
        self.blocking.settle();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _pass = self.fs.gate.read();
        match self.fs.lookup(parent.into(), name) {
            Ok((_, attr)) => reply.entry(&self.ttl, &self.shown(attr), Generation(0)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                reply.entry(&self.ttl, &negative_entry(), Generation(0))
            }
            Err(e) => reply.error(answer("lookup", e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _pass = self.fs.gate.read();
        self.fs.forget(ino.into(), nlookup);
        let n = self
            .forgets
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % FORGETS_PER_TRIM == FORGETS_PER_TRIM - 1 {
            crate::sys::malloc_trim();
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _pass = self.fs.gate.read();
        match self.fs.getattr(ino.into()) {
            Ok(attr) => reply.attr(&self.ttl, &self.shown(attr)),
            Err(e) => reply.error(answer("getattr", e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _pass = self.fs.gate.read();
        match self.fs.readlink(ino.into()) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(answer("readlink", e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        // Opening for writing copies up, which may wait on the disk.
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            let g = self.share();
            self.blocking.run(move || {
                let _pass = g.fs.gate.mutate();
                g.answer_open(ino, flags.0, reply)
            });
        } else {
            let _pass = self.fs.gate.read();
            self.answer_open(ino, flags.0, reply)
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let _pass = self.fs.gate.read();
        // One buffer per worker thread, grown to the largest read asked
        // (max_read bounds it); the reply is written out before it returns.
        thread_local! {
            static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        // The reply is taken only by the read that produced the bytes.
        let mut reply = Some(reply);
        READ_BUF.with_borrow_mut(|buf| {
            let sent = self
                .fs
                .read_with(fh.into(), offset, size as usize, buf, |data| {
                    if let Some(r) = reply.take() {
                        r.data(data)
                    }
                });
            if let (Err(e), Some(r)) = (sent, reply.take()) {
                r.error(answer("read", e))
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to do at close: data reaches the real file at each write
        // (or, with the writeback cache, before the kernel sends FLUSH) and
        // locks are the kernel's own. FOPEN_NOFLUSH spares the round trip,
        // except with the writeback cache, where the kernel sends FLUSH at
        // every close until one answers ENOSYS: then never again.
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _pass = self.fs.gate.read();
        let passthrough = self
            .fs
            .file(fh.into())
            .map(|f| f.backing.get().is_some())
            .unwrap_or(false);
        self.fs.release(fh.into());
        self.backings.released(ino.into(), passthrough);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // No per-open state is needed (listings live in the inode), so the
        // kernel is told not to send OPENDIR and RELEASEDIR at all; it then
        // treats every directory as cache_dir + keep_cache. Every change of
        // a directory's names drops that cache (`listing_changed`).
        reply.error(Errno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _pass = self.fs.gate.read();
        let page = match self.fs.readdir(ino.into(), offset) {
            Ok(p) => p,
            Err(e) => return reply.error(answer("readdir", e)),
        };
        for (i, e) in page.entries.iter().enumerate().skip(page.start) {
            if reply.add(e.ino.into(), page.cookie_after(i), e.kind, &e.name) {
                break;
            }
        }
        reply.ok();
        // After the reply too: a change that ran meanwhile dropped the
        // cache before this answer reached it.
        self.fs.listing_answered(ino.into());
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _pass = self.fs.gate.read();
        let page = match self.fs.readdir(ino.into(), offset) {
            Ok(p) => p,
            Err(e) => return reply.error(answer("readdirplus", e)),
        };
        let mut added = 0usize;
        for (i, e) in page.entries.iter().enumerate().skip(page.start) {
            let off = page.cookie_after(i);
            if e.name == "." || e.name == ".." {
                // The kernel takes no reference for these two; any attrs do.
                let mut attr = match self.fs.getattr(ino.into()) {
                    Ok(a) => self.shown(a),
                    Err(err) => return reply.error(answer("readdirplus", err)),
                };
                attr.ino = e.ino.into();
                if reply.add(e.ino.into(), off, &e.name, &self.ttl, &attr, Generation(0)) {
                    break;
                }
                added += 1;
                continue;
            }
            // Each entry returned counts as a lookup; one that does not fit
            // in the buffer is given back at once.
            let (inode, attr) = match self.fs.lookup_hinted(ino.into(), &e.name, e.layers) {
                Ok(found) => found,
                // Gone since the listing was made: not an entry any more.
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => continue,
                // A name must not silently drop out of a listing: the page
                // ends before it, and the next readdir, starting at it,
                // reports the error.
                Err(err) if added == 0 => {
                    log::warn!("readdirplus of {:?} in node {}: {err}", e.name, ino.0);
                    return reply.error(answer("readdirplus", err));
                }
                Err(_) => break,
            };
            let attr = self.shown(attr);
            if reply.add(attr.ino, off, &e.name, &self.ttl, &attr, Generation(0)) {
                self.fs.forget(inode.ino, 1);
                break;
            }
            added += 1;
        }
        reply.ok();
        self.fs.listing_answered(ino.into());
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _pass = self.fs.gate.read();
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(answer("statfs", e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _pass = self.fs.gate.read();
        let value = self.fs.getxattr(ino.into(), name).map(|mut v| {
            crate::idmap::map_acl(&self.fs.opts.ids, name.as_bytes(), &mut v, true);
            v
        });
        self.xattr_reply("getxattr", value, size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _pass = self.fs.gate.read();
        self.xattr_reply("listxattr", self.fs.listxattr(ino.into()), size, reply);
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let ids = &self.fs.opts.ids;
        let a = SetAttr {
            mode,
            uid: uid.map(|u| ids.uid.stored(u)),
            gid: gid.map(|g| ids.gid.stored(g)),
            size,
            atime: atime.map(time_spec),
            mtime: mtime.map(time_spec),
            fh: fh.map(Into::into),
            // FATTR_KILL_SUIDGID is not passed on by fuser: a truncate by
            // anyone but root stands for a caller without CAP_FSETID.
            kill_suidgid: (req.uid() != 0).then(|| self.caller(req).1),
        };
        // A truncate or chown of a lower file copies it up.
        let g = self.share();
        self.blocking.run(move || {
            let _pass = g.fs.gate.mutate();
            match g.fs.setattr(ino.into(), a) {
                Ok(attr) => reply.attr(&g.ttl, &g.shown(attr)),
                Err(e) => reply.error(answer("setattr", e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (uid, gid) = self.caller(req);
        let (g, name) = (self.share(), name.to_owned());
        self.blocking.run(move || {
            let _pass = g.fs.gate.mutate();
            let r = g.fs.mknod(parent.into(), &name, mode, rdev, uid, gid);
            g.listing_changed(parent);
            g.entry_reply("mknod", r.map(|(_, a)| a), reply);
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let (uid, gid) = self.caller(req);
        let (g, name) = (self.share(), name.to_owned());
        self.blocking.run(move || {
            let _pass = g.fs.gate.mutate();
            let r = g.fs.mkdir(parent.into(), &name, mode, uid, gid);
            g.listing_changed(parent);
            g.entry_reply("mkdir", r.map(|(_, a)| a), reply);
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (g, name) = (self.share(), name.to_owned());
        self.blocking.run(move || {
            let _pass = g.fs.gate.mutate();
            let r = g.fs.unlink(parent.into(), &name);
            g.listing_changed(parent);
            Glue::empty_reply("unlink", r, reply);
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (g, name) = (self.share(), name.to_owned());
        self.blocking.run(move || {
            let _pass = g.fs.gate.mutate();
            let r = g.fs.rmdir(parent.into(), &name);
            g.listing_changed(parent);
            Glue::empty_reply("rmdir", r, reply);
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (uid, gid) = self.caller(req);
        let g = self.share();
        let (name, target) = (link_name.to_owned(), target.as_os_str().to_owned());
        self.blocking.run(move || {
            let _pass = g.fs.gate.mutate();
            let r = g.fs.symlink(parent.into(), &name, &target, uid, gid);
            g.listing_changed(parent);
            g.entry_reply("symlink", r.map(|(_, a)| a), reply);
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let g = self.share();
        let (name, newname) = (name.to_owned(), newname.to_owned());
        self.blocking.run(move || {
            let _pass = g.fs.gate.mutate();
            let r = g.fs.rename(
                parent.into(),
                &name,
                newparent.into(),
                &newname,
                flags.bits(),
            );
            g.listing_changed(parent);
            if newparent != parent {
                g.listing_changed(newparent);
            }
            Glue::empty_reply("rename", r, reply);
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (g, newname) = (self.share(), newname.to_owned());
        self.blocking.run(move || {
            let _pass = g.fs.gate.mutate();
            let r = g.fs.link(ino.into(), newparent.into(), &newname);
            g.listing_changed(newparent);
            g.entry_reply("link", r.map(|(_, a)| a), reply);
        });
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _pass = self.fs.gate.mutate();
        let kill = write_flags
            .contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            .then(|| self.caller(req).1);
        match self.fs.write(fh.into(), offset, data, kill) {
            Ok((n, killed)) => {
                if killed {
                    self.fs.attributes_changed(ino.into());
                }
                reply.written(n)
            }
            Err(e) => reply.error(answer("write", e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let g = self.share();
        self.blocking.run(move || {
            let _pass = g.fs.gate.read();
            Glue::empty_reply("fsync", g.fs.fsync(fh.into(), datasync), reply);
        });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let g = self.share();
        self.blocking.run(move || {
            let _pass = g.fs.gate.read();
            Glue::empty_reply("fsyncdir", g.fs.fsyncdir(ino.into(), datasync), reply);
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let mut value = value.to_vec();
        let ids = &self.fs.opts.ids;
        if !ids.is_identity() {
            crate::idmap::map_acl(ids, name.as_bytes(), &mut value, false);
        }
        let (g, name) = (self.share(), name.to_owned());
        self.blocking.run(move || {
            let _pass = g.fs.gate.mutate();
            let r = g.fs.setxattr(ino.into(), &name, &value, flags);
            Glue::empty_reply("setxattr", r, reply);
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (g, name) = (self.share(), name.to_owned());
        self.blocking.run(move || {
            let _pass = g.fs.gate.mutate();
            Glue::empty_reply("removexattr", g.fs.removexattr(ino.into(), &name), reply);
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (uid, gid) = self.caller(req);
        let (g, name) = (self.share(), name.to_owned());
        self.blocking.run(move || {
            let _pass = g.fs.gate.mutate();
            let r =
                g.fs.create(parent.into(), &name, mode, g.open_flags(flags), uid, gid);
            g.listing_changed(parent);
            match r {
                Ok((_, attr, fh)) => {
                    let attr = g.shown(attr);
                    match g.serve_mode(attr.ino.into(), fh, true, |fd| reply.open_backing(fd)) {
                        Passthrough::Use(id) => reply.created_passthrough(
                            &g.ttl,
                            &attr,
                            Generation(0),
                            fh.into(),
                            FopenFlags::FOPEN_NOFLUSH,
                            &id,
                        ),
                        Passthrough::Cached => reply.created(
                            &g.ttl,
                            &attr,
                            Generation(0),
                            fh.into(),
                            FopenFlags::FOPEN_NOFLUSH,
                        ),
                    }
                }
                Err(e) => reply.error(answer("create", e)),
            }
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let g = self.share();
        self.blocking.run(move || {
            let _pass = g.fs.gate.mutate();
            let r = g.fs.fallocate(fh.into(), offset, length, mode);
            Glue::empty_reply("fallocate", r, reply);
        });
    }

    /// No ioctl is served: ENOTTY, what the kernel makes of the ENOSYS
    /// fuser's default would answer, but without its warning in the log.
    /// Every `open()` in Python asks TCGETS (isatty) on the new file, so
    /// that default logged a line per file opened, for nothing.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let _pass = self.fs.gate.read();
        match self.fs.lseek(fh.into(), offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(answer("lseek", e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let g = self.share();
        self.blocking.run(move || {
            let _pass = g.fs.gate.mutate();
            match g
                .fs
                .copy_file_range(fh_in.into(), offset_in, fh_out.into(), offset_out, len)
            {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(answer("copy_file_range", e)),
            }
        });
    }
}
