//! rename(2), with kernel overlayfs' on-disk results: a whiteout where the
//! source's lower name must stay hidden, `overlay.redirect` on a directory
//! moved away from its lower parts, an opaque mark on an upper-only
//! directory moved into a merged one, and exchanges.
//!
//! The VFS holds both parent directories' locks (and the rename lock for a
//! move between directories) around the call.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use crate::ids::NodeId;
use crate::inode::{DirMark, Inode, RealEntry, ROOT_INO};
use crate::layer_read::UpperSlot;
use crate::lookup::check_name;
use crate::overlay::{errno, LayerFs};
use crate::sys;
use crate::upper_write::{is_enoent, make_oci_marker};
use crate::whiteout::{self, Redirect, XattrNs};

impl LayerFs {
    /// The path of a directory's lower parts from the lower layers' roots:
    /// its own redirect if it has one, else its parent's lower path and its
    /// name.
    fn lower_path(&self, inode: &Inode) -> io::Result<Vec<u8>> {
        if inode.ino == ROOT_INO {
            return Ok(Vec::new());
        }
        let (parent, name) = {
            let s = inode.state();
            (s.parent, s.name.clone())
        };
        let redirect = self.upper_redirect(inode);
        let parent_path = || -> io::Result<Vec<u8>> {
            let p = self.inode(parent)?;
            self.lower_path(&p)
        };
        Ok(match redirect {
            Some(Redirect::Absolute(comps)) => {
                let mut out = Vec::new();
                for c in comps {
                    out.push(b'/');
                    out.extend_from_slice(&c);
                }
                out
            }
            Some(Redirect::Relative(n)) => {
                let mut out = parent_path()?;
                out.push(b'/');
                out.extend_from_slice(&n);
                out
            }
            None => {
                let mut out = parent_path()?;
                out.push(b'/');
                out.extend_from_slice(name.as_bytes());
                out
            }
        })
    }

    /// Whether renaming a directory with lower parts writes a redirect:
    /// not with `redirect_dir=follow|nofollow|off`, and never in the
    /// `user.overlay.*` namespace, as kernel overlayfs with userxattr
    /// (anyone could forge a user.overlay.redirect). Otherwise rename(2)
    /// answers EXDEV.
    fn creates_redirects(&self) -> io::Result<bool> {
        Ok(self.opts.redirect_dir.creates() && self.upper_ctx()?.ns != XattrNs::User)
    }

    /// The `overlay.redirect` on a directory's upper part, if any.
    fn upper_redirect(&self, inode: &Inode) -> Option<Redirect> {
        let upper = {
            let s = inode.state();
            s.reals.iter().find(|r| self.is_upper(r.layer)).cloned()
        }?;
        let f = upper.fd.get().ok()?;
        crate::layer_read::read_redirect(&f)?.ok()
    }

    fn has_lower_parts(&self, inode: &Inode) -> bool {
        inode.reals().iter().any(|r| !self.is_upper(r.layer))
    }

    /// Gets `inode`, known in `dir` as `name`, ready to be renamed in the
    /// upper layer: copied up, present under that very name (a lower
    /// hardlink may have been copied up under another name), and — for a
    /// directory with lower parts — carrying a redirect to them.
    fn prepare_rename_source(
        &self,
        inode: &Arc<Inode>,
        dir: &Arc<Inode>,
        name: &OsStr,
        samedir: bool,
    ) -> io::Result<()> {
        let up = self.upper_ctx()?;
        if inode.is_dir() && self.has_lower_parts(inode) {
            if !self.creates_redirects()? {
                // rename(2) callers copy instead (mv does).
                return Err(errno(libc::EXDEV));
            }
            // As kernel overlayfs (`ovl_set_redirect`): a directory that
            // stays in its parent gets a relative redirect, its name (it
            // has none yet, so that is its name in the lower layers); one
            // that leaves gets the absolute path of its lower parts. An
            // absolute redirect stays true wherever the directory goes, a
            // relative one while it stays in the same parent: either is
            // then kept.
            let path = if samedir {
                name.as_bytes().to_vec()
            } else {
                self.lower_path(inode)?
            };
            let top = self.copy_up(inode)?;
            let keep = top.marks.redirect
                && (samedir || matches!(self.upper_redirect(inode), Some(Redirect::Absolute(_))));
            if !keep {
                inode.mark_upper_part(up.idx, DirMark::Redirect, |r| {
                    sys::setxattr_fd(r.fd.get()?.as_fd(), &up.ns.name("redirect"), &path, 0)
                })?;
            }
            return Ok(());
        }
        let top = self.copy_up(inode)?;
        let pu = self.upper_dir(dir)?;
        if let UpperSlot::Empty | UpperSlot::Whiteout = self.upper_slot(&pu, name)? {
            if inode.is_dir() {
                log::warn!("rename: directory {name:?} is not in the upper after its copy-up");
                return Err(errno(libc::EIO));
            }
            // Another name of a lower hardlink set was copied up: give this
            // name the same upper inode.
            let top_fd = top.fd.get()?;
            match self.link_up(inode, &pu, name) {
                Ok(()) => {}
                // The name was there after all (a network filesystem's
                // client may answer a lookup of a name it just renamed
                // in with ENOENT): fine if it is this very file.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    let there = sys::lstatat(pu.fd.get()?.as_fd(), name)?;
                    let ours = sys::fstat(top_fd.as_fd())?;
                    if (there.st_dev, there.st_ino) != (ours.st_dev, ours.st_ino) {
                        return Err(e);
                    }
                    log::debug!("rename source {name:?} was in the upper already");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn rename(
        &self,
        parent: NodeId,
        name: &OsStr,
        newparent: NodeId,
        newname: &OsStr,
        flags: u32,
    ) -> io::Result<()> {
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 {
            return Err(errno(libc::EINVAL));
        }
        check_name(newname)?;
        if whiteout::is_oci_marker(newname.as_bytes()) {
            return Err(errno(libc::EINVAL));
        }
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let sdir = self.inode(parent)?;
        let ddir = self.inode(newparent)?;
        let src = self.child(parent, name)?;
        let dst = match self.child(newparent, newname) {
            Ok(i) => Some(i),
            Err(e) if is_enoent(&e) => None,
            Err(e) => return Err(e),
        };
        if !self.rename_allowed(&src, dst.as_ref(), exchange, noreplace)? {
            return Ok(());
        }
        if let Some(d) = &dst {
            if !exchange && !d.is_dir() {
                self.index_before_removal(d)?;
            }
        }
        let src_lower = self.lower_positive(&sdir, name)?;
        // The object a rename may unlink, held open across it.
        let dst_held = match &dst {
            Some(d) if !d.is_dir() && !exchange => {
                let top = d.top();
                if self.is_upper(top.layer) {
                    top.fd.get().ok()
                } else {
                    None
                }
            }
            _ => None,
        };
        let m = Move {
            spu: self.upper_dir(&sdir)?,
            dpu: self.upper_dir(&ddir)?,
            sdir,
            ddir,
            name,
            newname,
        };
        m.sdir.dir_changed();
        m.ddir.dir_changed();
        self.prepare_rename_source(&src, &m.sdir, name, parent == newparent)?;
        if exchange {
            let d = dst.as_ref().ok_or_else(|| errno(libc::ENOENT))?;
            self.prepare_rename_source(d, &m.ddir, newname, parent == newparent)?;
            let up = self.upper_ctx()?;
            up.renames.exchange(
                &up.work,
                m.spu.fd.get()?.as_fd(),
                name,
                m.dpu.fd.get()?.as_fd(),
                newname,
            )?;
        } else {
            self.move_in_upper(&m, &src, dst.as_ref(), src_lower, noreplace)?;
        }
        self.mark_renamed(
            &m,
            (parent, newparent),
            &src,
            dst.as_ref(),
            exchange,
            dst_held,
        )
    }

    /// The checks of rename(2) the kernel leaves to the filesystem, in
    /// kernel overlayfs' order; `false`: nothing to do (two names of one
    /// file).
    fn rename_allowed(
        &self,
        src: &Arc<Inode>,
        dst: Option<&Arc<Inode>>,
        exchange: bool,
        noreplace: bool,
    ) -> io::Result<bool> {
        if exchange && dst.is_none() {
            return Err(errno(libc::ENOENT));
        }
        if noreplace && dst.is_some() {
            return Err(errno(libc::EEXIST));
        }
        if let Some(d) = dst {
            if Arc::ptr_eq(d, src) {
                // Two names of one file (or the same name): nothing to do.
                return Ok(false);
            }
            if !exchange {
                if src.is_dir() && !d.is_dir() {
                    return Err(errno(libc::ENOTDIR));
                }
                if !src.is_dir() && d.is_dir() {
                    return Err(errno(libc::EISDIR));
                }
            }
        }
        if !self.creates_redirects()? {
            // Checked before emptiness, in the kernel's order.
            let immovable = |i: &Arc<Inode>| i.is_dir() && self.has_lower_parts(i);
            if immovable(src) || (exchange && dst.is_some_and(immovable)) {
                return Err(errno(libc::EXDEV));
            }
        }
        // Only a target with lower parts (or holding OCI markers) is checked
        // for emptiness here, as kernel overlayfs does (`ovl_rename` skips
        // pure upper ones): any other is left to the rename in the upper,
        // which fails with ENOTEMPTY after the source was copied up and
        // redirected, as in the kernel, whose upper then has those copies.
        if let Some(d) = dst {
            if !exchange && self.checked_for_emptiness(d)? && self.current_listing(d)?.1.len() > 2 {
                return Err(errno(libc::ENOTEMPTY));
            }
        }
        Ok(true)
    }

    /// Whether a rename target directory is checked for emptiness before
    /// the rename: only one with lower parts (or holding OCI markers), as
    /// kernel overlayfs does (`ovl_rename` skips pure upper ones).
    fn checked_for_emptiness(&self, d: &Inode) -> io::Result<bool> {
        Ok(d.is_dir() && (self.upper_ctx()?.oci_whiteouts || self.has_lower_parts(d)))
    }

    /// Moves the prepared source to its new name in the upper, over a
    /// target, a whiteout or nothing, leaving a whiteout behind where the
    /// source's name also lives below.
    fn move_in_upper(
        &self,
        m: &Move<'_>,
        src: &Arc<Inode>,
        dst: Option<&Arc<Inode>>,
        src_lower: bool,
        noreplace: bool,
    ) -> io::Result<()> {
        let Move {
            sdir,
            spu,
            dpu,
            name,
            newname,
            ..
        } = m;
        let mut slot = self.upper_slot(dpu, newname)?;
        if let Some(d) = dst {
            let mut in_upper = matches!(slot, UpperSlot::Entry(..));
            if !d.is_dir() && !in_upper && d.nlink_delta().is_some() {
                // The target name of a file kept through the index lived
                // only below: linked up first, the rename over it then
                // takes one upper link and one shown link together.
                self.link_up(d, dpu, newname)?;
                slot = self.upper_slot(dpu, newname)?;
                in_upper = true;
            }
            // An empty merged directory may still hold whiteouts in its
            // upper part; the rename needs it truly empty.
            if self.checked_for_emptiness(d)? && in_upper {
                self.remove_upper(dpu, newname)?;
                slot = self.upper_slot(dpu, newname)?;
            }
        }
        let (sfd, dfd) = (spu.fd.get()?, dpu.fd.get()?);
        let up = self.upper_ctx()?;
        let rename = || {
            if noreplace {
                up.renames
                    .noreplace(sfd.as_fd(), name, dfd.as_fd(), newname)
            } else {
                sys::renameat2(sfd.as_fd(), name, dfd.as_fd(), newname, 0)
            }
        };
        match slot {
            UpperSlot::Whiteout if up.oci_whiteouts => {
                // Marks first, then the rename, then the target's
                // marker goes: at no point does a crash show more or
                // less than before or after.
                if src_lower {
                    self.make_whiteout(sfd.as_fd(), name, sdir)?;
                }
                if src.is_dir() && !self.has_lower_parts(src) {
                    let top = src.top();
                    make_oci_marker(
                        top.fd.get()?.as_fd(),
                        OsStr::from_bytes(whiteout::OCI_OPAQUE),
                    )?;
                }
                sys::renameat2(sfd.as_fd(), name, dfd.as_fd(), newname, 0)?;
                self.remove_whiteout(dpu, newname)?;
            }
            _ if src_lower && up.oci_whiteouts => {
                self.make_whiteout(sfd.as_fd(), name, sdir)?;
                rename()?;
            }
            UpperSlot::Whiteout => {
                // As kernel overlayfs: exchange with the whiteout (a
                // directory cannot replace a device node), which then
                // serves as the source's whiteout or is removed.
                up.renames
                    .exchange(&up.work, sfd.as_fd(), name, dfd.as_fd(), newname)?;
                if !src_lower {
                    sys::unlinkat(sfd.as_fd(), name, 0)?;
                } else if !matches!(sys::lstatat(sfd.as_fd(), name), Ok(st) if whiteout::is_chardev_whiteout(&st))
                {
                    self.mark_xwhiteouts(sdir)?;
                }
            }
            _ if src_lower => {
                // The kernel leaves the whiteout in the same rename where
                // it can; else the name is whited out right after.
                let with_whiteout = if up.xattr_whiteouts {
                    rename()?;
                    false
                } else {
                    up.renames
                        .with_whiteout(sfd.as_fd(), name, dfd.as_fd(), newname, noreplace)?
                };
                if !with_whiteout {
                    self.make_whiteout(sfd.as_fd(), name, sdir)?;
                }
            }
            _ => rename()?,
        }
        Ok(())
    }

    /// After the upper changed: marks what must not merge with what lies
    /// below its new name, and tells the inodes what happened.
    fn mark_renamed(
        &self,
        m: &Move<'_>,
        (parent, newparent): (NodeId, NodeId),
        src: &Arc<Inode>,
        dst: Option<&Arc<Inode>>,
        exchange: bool,
        dst_held: Option<Arc<std::os::fd::OwnedFd>>,
    ) -> io::Result<()> {
        let Move {
            sdir,
            ddir,
            spu,
            dpu,
            name,
            newname,
        } = m;
        // A directory with no lower parts of its own moved into a merged
        // directory must not merge with whatever the lower layers hold (or
        // a layer stacked below later will hold) under its new name: it is
        // made opaque, as kernel overlayfs does (`ovl_rename`).
        if src.is_dir() && !self.has_lower_parts(src) && self.has_lower_parts(ddir) {
            self.set_opaque(src)?;
        }
        if let Some(d) = dst {
            if exchange && d.is_dir() && !self.has_lower_parts(d) && self.has_lower_parts(sdir) {
                self.set_opaque(d)?;
            }
        }
        sdir.dir_changed();
        ddir.dir_changed();
        // A moved directory's ".." changed.
        src.dir_changed();
        if let Some(d) = dst {
            d.dir_changed();
        }
        src.name_moved((parent, name), (newparent, newname));
        src.upper_name_moved(dpu.fd.get()?, newname);
        if let Some(d) = dst {
            if exchange {
                d.name_moved((newparent, newname), (parent, name));
                d.upper_name_moved(spu.fd.get()?, name);
            } else if d.is_dir() {
                if let Some(c) = self.capacity().filter(|_| self.is_upper(d.top().layer)) {
                    c.credit(crate::capacity::BLOCK);
                }
                d.mark_unlinked();
            } else {
                d.name_gone(newparent, newname);
                // What the replaced file cost is free once its last name
                // went (see `capacity`).
                let gone = dst_held.as_ref().and_then(|f| sys::fstat(f.as_fd()).ok());
                if let Some(st) = gone.filter(|st| st.st_nlink == 0) {
                    crate::capacity::credit_object(self.capacity(), &st);
                }
                self.note_removed(d, dst_held);
            }
        }
        Ok(())
    }
}

/// The two directories of a rename, with their upper parts, and the names.
struct Move<'a> {
    sdir: Arc<Inode>,
    ddir: Arc<Inode>,
    spu: RealEntry,
    dpu: RealEntry,
    name: &'a OsStr,
    newname: &'a OsStr,
}
