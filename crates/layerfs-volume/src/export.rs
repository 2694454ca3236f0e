//! What changed in a volume, as a stream of [`Change`]s, and the OCI
//! image-layer tar that carries them.
//!
//! The content always comes from a read-only layerfs mount of the whole
//! stack (the *view*), so every overlay rule (whiteouts, opaque
//! directories, redirects, hardlink sets) is the mount's, not re-implemented
//! here. Which names changed comes from the layers above the reference
//! point: a name present in any of them (as an entry or a whiteout) changed.
//! A directory that does not merge down to the reference (opaque, renamed,
//! or made over a deleted name) is sent whole, after an opaque marker.
//!
//! Names go out sorted bytewise, with fixed header fields, so the same
//! content gives the same tar.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use layerfs::sys;
use layerfs::whiteout;

use crate::mounts::View;
use crate::progress::{self, Progress};
use crate::store::err;

/// What a node is, with what its kind needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink(Vec<u8>),
    /// Another name of a file sent earlier in the same stream.
    HardLink(Vec<u8>),
    Char(u64),
    Block(u64),
    Fifo,
}

/// One file, directory or other node, with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Relative path, components separated by '/'; "." is the root.
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Permission bits with setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds since the epoch.
    pub mtime: i64,
    pub size: u64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// One item of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Node(Node),
    /// The name at this path is deleted.
    Whiteout(Vec<u8>),
    /// The directory at this path hides everything below it.
    Opaque(Vec<u8>),
}

/// Where changes go: a tar, or a layer directory.
pub trait Sink {
    /// `data` is the content of a regular file (exactly `size` bytes).
    fn put(&mut self, change: &Change, data: Option<&mut dyn Read>) -> io::Result<()>;
    fn finish(&mut self) -> io::Result<()>;
}

/// Joins a relative path and a name.
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir == b"." || dir.is_empty() {
        return name.to_vec();
    }
    let mut p = dir.to_vec();
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

/// What one layer holds under a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Missing,
    Whiteout,
    /// A directory; `stops` when it hides what is below it (opaque or
    /// redirected).
    Dir {
        stops: bool,
    },
    Other,
}

fn overlay_xattr(fd: &OwnedFd, key: &str) -> Option<Vec<u8>> {
    [whiteout::XattrNs::Trusted, whiteout::XattrNs::User]
        .into_iter()
        .find_map(|ns| sys::getxattr_fd(fd.as_fd(), &ns.name(key)).ok())
}

fn held(dir: &OwnedFd, name: &[u8]) -> io::Result<Held> {
    let st = match sys::lstatat(dir.as_fd(), os(name)) {
        Ok(st) => st,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Held::Missing),
        Err(e) => return Err(e),
    };
    if whiteout::is_chardev_whiteout(&st) {
        return Ok(Held::Whiteout);
    }
    let fmt = st.st_mode & libc::S_IFMT;
    if fmt != libc::S_IFDIR && !whiteout::may_be_xattr_whiteout(&st) {
        return Ok(Held::Other);
    }
    let fd = sys::openat(dir.as_fd(), os(name), libc::O_PATH | libc::O_NOFOLLOW, 0)?;
    if fmt != libc::S_IFDIR {
        // A zero-size file: an xattr whiteout if it says so.
        return Ok(if overlay_xattr(&fd, "whiteout").is_some() {
            Held::Whiteout
        } else {
            Held::Other
        });
    }
    let opaque = overlay_xattr(&fd, "opaque").is_some_and(|v| v == b"y");
    let redirect = overlay_xattr(&fd, "redirect").is_some();
    Ok(Held::Dir {
        stops: opaque || redirect,
    })
}

/// Walks the view and sends changes to a sink.
pub struct Walker<'a> {
    view: PathBuf,
    sink: &'a mut dyn Sink,
    /// First path sent for each multiply-linked file, by (dev, ino).
    links: HashMap<(u64, u64), Vec<u8>>,
}

impl<'a> Walker<'a> {
    pub fn new(view: &Path, sink: &'a mut dyn Sink) -> Walker<'a> {
        Walker {
            view: view.to_path_buf(),
            sink,
            links: HashMap::new(),
        }
    }

    fn real(&self, rel: &[u8]) -> PathBuf {
        if rel == b"." {
            self.view.clone()
        } else {
            self.view.join(os(rel))
        }
    }

    /// Sends the whole view.
    pub fn full(&mut self) -> io::Result<()> {
        self.emit(b".")?;
        self.full_dir(b".")?;
        self.sink.finish()
    }

    /// Sends what the layers `above` (top first) change in the view.
    pub fn since(&mut self, above: &[PathBuf]) -> io::Result<()> {
        let mut fds = Vec::new();
        for l in above {
            fds.push(Some(sys::open_path(l, libc::O_RDONLY | libc::O_DIRECTORY)?));
        }
        self.emit(b".")?;
        self.diff_dir(b".", &fds)?;
        self.sink.finish()
    }

    fn sorted_children(&self, rel: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let mut names: Vec<Vec<u8>> = fs::read_dir(self.real(rel))?
            .map(|e| e.map(|e| e.file_name().as_bytes().to_vec()))
            .collect::<io::Result<_>>()?;
        names.sort();
        Ok(names)
    }

    fn full_dir(&mut self, rel: &[u8]) -> io::Result<()> {
        for name in self.sorted_children(rel)? {
            let child = join(rel, &name);
            if self.emit(&child)? == Some(true) {
                self.full_dir(&child)?;
            }
        }
        Ok(())
    }

    fn diff_dir(&mut self, rel: &[u8], layers: &[Option<OwnedFd>]) -> io::Result<()> {
        let mut names: Vec<Vec<u8>> = Vec::new();
        for fd in layers.iter().flatten() {
            for e in sys::read_dir_fd(fd.as_fd())? {
                if e.name != b"." && e.name != b".." && !whiteout::is_oci_marker(&e.name) {
                    names.push(e.name);
                }
            }
        }
        names.sort();
        names.dedup();
        for name in names {
            let child = join(rel, &name);
            let mut holds = Vec::with_capacity(layers.len());
            for fd in layers {
                holds.push(match fd {
                    Some(fd) => held(fd, &name)?,
                    None => Held::Missing,
                });
            }
            match self.emit(&child)? {
                None => self.sink.put(&Change::Whiteout(child), None)?,
                Some(false) => {}
                Some(true) => {
                    // Does this directory merge down to the reference? Only
                    // if every layer holding the name has a plain directory.
                    let merges = holds.iter().all(|h| match h {
                        Held::Missing => true,
                        Held::Dir { stops } => !stops,
                        Held::Whiteout | Held::Other => false,
                    });
                    if merges {
                        let mut sub = Vec::with_capacity(layers.len());
                        for (fd, h) in layers.iter().zip(&holds) {
                            sub.push(match (fd, h) {
                                (Some(fd), Held::Dir { .. }) => Some(sys::openat(
                                    fd.as_fd(),
                                    os(&name),
                                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                                    0,
                                )?),
                                _ => None,
                            });
                        }
                        self.diff_dir(&child, &sub)?;
                    } else {
                        self.sink.put(&Change::Opaque(child.clone()), None)?;
                        self.full_dir(&child)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends the view's node at `rel`. None when it does not exist, else
    /// whether it is a directory.
    fn emit(&mut self, rel: &[u8]) -> io::Result<Option<bool>> {
        let real = self.real(rel);
        let md = match fs::symlink_metadata(&real) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let ft = md.file_type();
        let mut size = 0;
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink(fs::read_link(&real)?.into_os_string().into_encoded_bytes())
        } else if ft.is_file() {
            let key = (md.dev(), md.ino());
            match self.links.get(&key) {
                Some(first) if md.nlink() > 1 => Kind::HardLink(first.clone()),
                _ => {
                    if md.nlink() > 1 {
                        self.links.insert(key, rel.to_vec());
                    }
                    size = md.len();
                    Kind::File
                }
            }
        } else if ft.is_char_device() {
            Kind::Char(md.rdev())
        } else if ft.is_block_device() {
            Kind::Block(md.rdev())
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            // Sockets have no place in a tar; like tar(1), leave them out.
            return Ok(Some(false));
        };
        let xattrs = if matches!(kind, Kind::HardLink(_)) {
            Vec::new()
        } else {
            read_xattrs(&real)?
        };
        let is_dir = kind == Kind::Dir;
        let node = Node {
            path: rel.to_vec(),
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid() as u64,
            gid: md.gid() as u64,
            mtime: md.mtime(),
            size,
            xattrs,
        };
        if node.kind == Kind::File {
            let mut f = fs::File::open(&real)?;
            self.sink.put(&Change::Node(node), Some(&mut f))?;
        } else {
            self.sink.put(&Change::Node(node), None)?;
        }
        Ok(Some(is_dir))
    }
}

/// The xattrs of a file (not following a symlink), sorted by name, overlay
/// private ones left out.
fn read_xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let fd = sys::open_path(path, libc::O_PATH | libc::O_NOFOLLOW)?;
    let list = match sys::listxattr_fd(fd.as_fd()) {
        Ok(l) => l,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in whiteout::public_xattr_names(&list).split(|&b| b == 0) {
        if name.is_empty() {
            continue;
        }
        let c = sys::cstr(os(name))?;
        match sys::getxattr_fd(fd.as_fd(), &c) {
            Ok(v) => out.push((name.to_vec(), v)),
            // Gone since the listing: nothing to send.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort();
    Ok(out)
}

/// Writes changes as an OCI image-layer tar: deletions as `.wh.NAME`, opaque
/// directories as `.wh..wh..opq`, xattrs as PAX `SCHILY.xattr.*` records,
/// and every header field that is not content fixed (no user or group
/// names, no atime), so equal content gives equal bytes.
pub struct TarSink<W: Write> {
    builder: tar::Builder<W>,
}

impl<W: Write> TarSink<W> {
    pub fn new(out: W) -> TarSink<W> {
        let mut builder = tar::Builder::new(out);
        builder.mode(tar::HeaderMode::Complete);
        TarSink { builder }
    }
}

/// The OCI marker name beside `path`'s last component.
fn marker(path: &[u8], prefix_of_name: &[u8]) -> Vec<u8> {
    let (dir, name) = match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&b"."[..], path),
    };
    let mut n = prefix_of_name.to_vec();
    n.extend_from_slice(name);
    join(dir, &n)
}

impl<W: Write> Sink for TarSink<W> {
    fn put(&mut self, change: &Change, data: Option<&mut dyn Read>) -> io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match change {
            Change::Whiteout(p) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(0);
                let name = marker(p, whiteout::OCI_WHITEOUT_PREFIX);
                self.builder
                    .append_data(&mut h, Path::new(os(&name)), io::empty())
            }
            Change::Opaque(p) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(0);
                let name = join(p, whiteout::OCI_OPAQUE);
                self.builder
                    .append_data(&mut h, Path::new(os(&name)), io::empty())
            }
            Change::Node(n) => {
                if !n.xattrs.is_empty() {
                    let keys: Vec<(String, &[u8])> = n
                        .xattrs
                        .iter()
                        .map(|(k, v)| {
                            (
                                format!("SCHILY.xattr.{}", String::from_utf8_lossy(k)),
                                v.as_slice(),
                            )
                        })
                        .collect();
                    self.builder
                        .append_pax_extensions(keys.iter().map(|(k, v)| (k.as_str(), *v)))?;
                }
                h.set_mode(n.mode);
                h.set_uid(n.uid);
                h.set_gid(n.gid);
                h.set_mtime(n.mtime.max(0) as u64);
                h.set_size(0);
                let path = Path::new(os(&n.path));
                let dev = |h: &mut tar::Header, rdev: u64| -> io::Result<()> {
                    h.set_device_major(libc::major(rdev as libc::dev_t))?;
                    h.set_device_minor(libc::minor(rdev as libc::dev_t))
                };
                match &n.kind {
                    Kind::File => {
                        h.set_entry_type(tar::EntryType::Regular);
                        h.set_size(n.size);
                        let data = data.ok_or_else(|| io::Error::other("file without data"))?;
                        // Exactly `size` bytes: a file that grew since the
                        // stat would otherwise corrupt the archive.
                        let mut limited = data.take(n.size);
                        self.builder.append_data(&mut h, path, &mut limited)
                    }
                    Kind::Dir => {
                        h.set_entry_type(tar::EntryType::Directory);
                        self.builder.append_data(&mut h, path, io::empty())
                    }
                    Kind::Symlink(t) => {
                        h.set_entry_type(tar::EntryType::Symlink);
                        self.builder.append_link(&mut h, path, Path::new(os(t)))
                    }
                    Kind::HardLink(t) => {
                        h.set_entry_type(tar::EntryType::Link);
                        self.builder.append_link(&mut h, path, Path::new(os(t)))
                    }
                    Kind::Char(r) => {
                        h.set_entry_type(tar::EntryType::Char);
                        dev(&mut h, *r)?;
                        self.builder.append_data(&mut h, path, io::empty())
                    }
                    Kind::Block(r) => {
                        h.set_entry_type(tar::EntryType::Block);
                        dev(&mut h, *r)?;
                        self.builder.append_data(&mut h, path, io::empty())
                    }
                    Kind::Fifo => {
                        h.set_entry_type(tar::EntryType::Fifo);
                        self.builder.append_data(&mut h, path, io::empty())
                    }
                }
            }
        }
    }

    fn finish(&mut self) -> io::Result<()> {
        self.builder.finish()
    }
}

impl crate::volumes::Volumes {
    /// Writes the volume as it was at snapshot `to` (the newest one of a
    /// mounted volume, whose upper is changing; the volume as it is now
    /// when unmounted), all of it or what changed since snapshot `since`.
    /// Read from the immutable layers, so the containers go on meanwhile.
    pub fn export_range(
        &self,
        name: &str,
        since: Option<&str>,
        to: Option<&str>,
        out: &mut dyn Write,
    ) -> io::Result<()> {
        let (meta, mounted) = {
            let _lock = self.store.lock()?;
            let mut meta = self.store.load(name)?;
            self.repair(&mut meta)?;
            let mounted = self.is_mounted(name);
            if !mounted && to.is_none() {
                self.settle_hardlinks(&meta)?;
            }
            (meta, mounted)
        };
        let position = |id: &str| {
            meta.snapshots
                .iter()
                .position(|s| s.id == id)
                .ok_or_else(|| err(format!("volume {name} has no snapshot {id}")))
        };
        let n = meta.snapshots.len();
        // The newest snapshot exported; None: the upper too.
        let top = match to {
            Some(id) => Some(position(id)?),
            None if mounted => Some(n.checked_sub(1).ok_or_else(|| {
                err(format!(
                    "volume {name} is mounted and has no snapshot to export: take one first (layerfs-volume snapshot {name})"
                ))
            })?),
            None => None,
        };
        let stack = self.store.lower_stack(&meta)?;
        let layers = match top {
            None => {
                let mut l = vec![self.store.dir(name).join("upper")];
                l.extend(stack);
                l
            }
            Some(t) => stack[n - 1 - t..].to_vec(),
        };
        let above = match since {
            None => None,
            Some(id) => {
                let k = position(id)?;
                let newer = match top {
                    None => n - k,
                    Some(t) if t > k => t - k,
                    Some(t) => {
                        return Err(err(format!(
                            "snapshot {id} is not older than snapshot {} of volume {name}",
                            meta.snapshots[t].id
                        )))
                    }
                };
                Some(layers[..newer].to_vec())
            }
        };
        let dir = self.store.dir(name);
        let exported = above.as_deref().unwrap_or(&layers);
        let total = Progress::wanted().then(|| {
            progress::tar_size_of(&exported.iter().map(|p| p.as_path()).collect::<Vec<_>>())
        });
        let progress = Progress::new(&format!("export {name}"), total);
        let view = View::mount(dir.join(format!(".view-{}", std::process::id())), &layers)?;
        let mut tar = TarSink::new(progress.writer(out));
        let mut sink = progress.sink(&mut tar);
        let mut walker = Walker::new(&view.dir, &mut sink);
        match above {
            None => walker.full(),
            Some(above) => walker.since(&above),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_names() {
        assert_eq!(marker(b"a/b", b".wh."), b"a/.wh.b".to_vec());
        assert_eq!(marker(b"x", b".wh."), b".wh.x".to_vec());
        assert_eq!(join(b".", b"x"), b"x".to_vec());
        assert_eq!(join(b"a", b"x"), b"a/x".to_vec());
    }
}
