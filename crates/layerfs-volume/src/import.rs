//! Builds overlay layers: from an OCI image-layer tar (untrusted input) or
//! from a stream of changes (compaction).
//!
//! Every path is checked before anything is made: no absolute paths, no
//! `..`, no component longer than NAME_MAX, no path longer than PATH_MAX,
//! and no path that goes through a symlink, in the layer being built or in
//! the layers below it. The layer directory is then walked one component at
//! a time with `O_NOFOLLOW`, so even a check that missed something could not
//! write outside it. Callers build into a temporary directory and remove it
//! on any error, so a failed import leaves nothing behind.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use layerfs::sys::{self, TimeSpec};
use layerfs::whiteout;

use crate::export::{Change, Kind, Node, Sink};
use crate::store::err;

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

/// The components of an archive path, or an error naming why it is refused.
/// An empty list is the root.
pub fn components(path: &[u8]) -> io::Result<Vec<&[u8]>> {
    let shown = String::from_utf8_lossy(path);
    if path.len() > libc::PATH_MAX as usize {
        return Err(err(format!(
            "refused entry: path longer than {} bytes",
            libc::PATH_MAX
        )));
    }
    if path.first() == Some(&b'/') {
        return Err(err(format!("refused entry {shown:?}: absolute path")));
    }
    if path.contains(&0) {
        return Err(err(format!("refused entry {shown:?}: NUL in path")));
    }
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(err(format!("refused entry {shown:?}: '..' in path"))),
            c if c.len() > 255 => {
                return Err(err(format!(
                    "refused entry {shown:?}: a name longer than 255 bytes"
                )))
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Writes changes into a new overlay layer directory (kernel format:
/// whiteouts as char 0/0 devices, opaque directories marked with
/// `trusted.overlay.opaque=y`).
pub struct LayerSink {
    root: OwnedFd,
    /// The layers below, top first: a path through a symlink there is
    /// refused as well.
    lowers: Vec<OwnedFd>,
    /// Directory times, set once their content is complete.
    dir_times: Vec<(Vec<u8>, i64)>,
    root_user: bool,
}

impl LayerSink {
    pub fn new(root: &Path, lowers: &[&Path]) -> io::Result<LayerSink> {
        let open = |p: &Path| sys::open_path(p, libc::O_RDONLY | libc::O_DIRECTORY);
        Ok(LayerSink {
            root: open(root)?,
            lowers: lowers.iter().map(|p| open(p)).collect::<io::Result<_>>()?,
            dir_times: Vec::new(),
            root_user: sys::geteuid() == 0,
        })
    }

    /// Opens the directory at `comps` in this layer, making missing ones,
    /// refusing any that is a symlink here or in a layer below.
    fn open_dir(&self, comps: &[&[u8]], shown: &str) -> io::Result<OwnedFd> {
        let mut cur = sys::reopen(self.root.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)?;
        for (i, c) in comps.iter().enumerate() {
            let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
            match sys::openat(cur.as_fd(), os(c), flags, 0) {
                Ok(fd) => cur = fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    self.check_lowers(&comps[..=i], shown)?;
                    sys::mkdirat(cur.as_fd(), os(c), 0o755)?;
                    cur = sys::openat(cur.as_fd(), os(c), flags, 0)?;
                }
                Err(_) => {
                    let st = sys::lstatat(cur.as_fd(), os(c))?;
                    if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
                        return Err(err(format!(
                            "refused entry {shown:?}: path through a symlink"
                        )));
                    }
                    // A file made earlier in this layer: a later entry
                    // replaces it, as tar does.
                    remove_tree(cur.as_fd(), c)?;
                    sys::mkdirat(cur.as_fd(), os(c), 0o755)?;
                    cur = sys::openat(cur.as_fd(), os(c), flags, 0)?;
                    if whiteout::is_chardev_whiteout(&st) {
                        set_opaque(cur.as_fd())?;
                    }
                }
            }
        }
        Ok(cur)
    }

    /// Refuses a directory path whose topmost entry in the layers below is a
    /// symlink (or which goes through one).
    fn check_lowers(&self, comps: &[&[u8]], shown: &str) -> io::Result<()> {
        let Some((last, parents)) = comps.split_last() else {
            return Ok(());
        };
        'layers: for layer in &self.lowers {
            let mut cur = sys::reopen(layer.as_fd(), libc::O_PATH | libc::O_DIRECTORY)?;
            for c in parents {
                match sys::openat(
                    cur.as_fd(),
                    os(c),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                ) {
                    Ok(fd) => cur = fd,
                    Err(_) => continue 'layers,
                }
            }
            match sys::lstatat(cur.as_fd(), os(last)) {
                Err(_) => continue,
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                    return Err(err(format!(
                        "refused entry {shown:?}: path through a symlink of an earlier layer"
                    )))
                }
                Ok(_) => return Ok(()),
            }
        }
        Ok(())
    }

    fn apply_meta(&self, fd: BorrowedFd<'_>, n: &Node, symlink: bool) -> io::Result<()> {
        if self.root_user {
            sys::fchown_fd(fd, n.uid as u32, n.gid as u32)?;
        }
        if !symlink {
            sys::fchmod_fd(fd, n.mode & 0o7777)?;
        }
        // After chown, which clears security.capability.
        for (k, v) in &n.xattrs {
            if whiteout::is_private_xattr(k) {
                continue;
            }
            sys::setxattr_fd(fd, &sys::cstr(os(k))?, v, 0)?;
        }
        Ok(())
    }
}

/// Marks a directory opaque, as kernel overlayfs does (as root).
fn set_opaque(dir: BorrowedFd<'_>) -> io::Result<()> {
    let name = whiteout::XattrNs::Trusted.name("opaque");
    sys::setxattr_fd(dir, &name, b"y", 0)
}

/// Removes `name` in `dir` and, for a directory, all it holds, never
/// following a symlink.
fn remove_tree(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let st = match sys::lstatat(dir, os(name)) {
        Ok(st) => st,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return sys::unlinkat(dir, os(name), 0);
    }
    let sub = sys::openat(
        dir,
        os(name),
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )?;
    for e in sys::read_dir_fd(sub.as_fd())? {
        if e.name != b"." && e.name != b".." {
            remove_tree(sub.as_fd(), &e.name)?;
        }
    }
    sys::unlinkat(dir, os(name), libc::AT_REMOVEDIR)
}

impl Sink for LayerSink {
    fn put(&mut self, change: &Change, data: Option<&mut dyn Read>) -> io::Result<()> {
        let path = match change {
            Change::Node(n) => &n.path,
            Change::Whiteout(p) | Change::Opaque(p) => p,
        };
        let shown = String::from_utf8_lossy(path).into_owned();
        let comps = components(path)?;
        if let Change::Opaque(_) = change {
            let dir = self.open_dir(&comps, &shown)?;
            return set_opaque(dir.as_fd());
        }
        let Some((name, parents)) = comps.split_last() else {
            // The root: only its metadata.
            return match change {
                Change::Node(n) if n.kind == Kind::Dir => {
                    self.apply_meta(self.root.as_fd(), n, false)?;
                    self.dir_times.push((Vec::new(), n.mtime));
                    Ok(())
                }
                _ => Err(err("refused entry: the root must be a directory")),
            };
        };
        let parent = self.open_dir(parents, &shown)?;
        let p = parent.as_fd();
        let n = match change {
            Change::Whiteout(_) => {
                if !self.root_user {
                    return Err(err("whiteouts need root (they are device nodes)"));
                }
                // A whiteout applies to the layers below only (OCI): a
                // directory this layer made stays, hiding what is below;
                // a file it made already hides it.
                return match sys::lstatat(p, os(name)) {
                    Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                        let fd = sys::openat(p, os(name), libc::O_PATH | libc::O_NOFOLLOW, 0)?;
                        set_opaque(fd.as_fd())
                    }
                    Ok(_) => Ok(()),
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                        sys::mknodat(p, os(name), libc::S_IFCHR, 0)
                    }
                    Err(e) => Err(e),
                };
            }
            Change::Node(n) => n,
            Change::Opaque(_) => return Ok(()),
        };
        // A directory entry keeps what this layer already has under it; any
        // other entry replaces what is there, as tar does.
        let existing = sys::lstatat(p, os(name)).ok();
        let existing_dir = existing.is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
        // A directory made where this layer deleted the name starts empty:
        // what the layers below held there stays hidden, as in the tar.
        let over_whiteout = existing.is_some_and(|st| whiteout::is_chardev_whiteout(&st));
        if !(n.kind == Kind::Dir && existing_dir) {
            remove_tree(p, name)?;
        }
        // A node over a lower symlink simply hides it; only paths through
        // one are refused (open_dir checks each parent made here).
        let opath = libc::O_PATH | libc::O_NOFOLLOW;
        match &n.kind {
            Kind::Dir => {
                if !existing_dir {
                    sys::mkdirat(p, os(name), 0o700)?;
                }
                let fd = sys::openat(p, os(name), opath | libc::O_DIRECTORY, 0)?;
                if over_whiteout {
                    set_opaque(fd.as_fd())?;
                }
                self.apply_meta(fd.as_fd(), n, false)?;
                self.dir_times.push((comps.join(&b'/'), n.mtime));
            }
            Kind::File => {
                let fd = sys::openat(
                    p,
                    os(name),
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
                    0o600,
                )?;
                let mut f = fs::File::from(fd);
                if let Some(data) = data {
                    let copied = io::copy(&mut data.take(n.size), &mut f)?;
                    if copied != n.size {
                        return Err(err(format!("entry {shown:?}: truncated content")));
                    }
                }
                self.apply_meta(f.as_fd(), n, false)?;
                let t = TimeSpec::Set(n.mtime, 0);
                sys::utimens_at(f.as_fd(), OsStr::new(""), t, t)?;
            }
            Kind::Symlink(target) => {
                sys::symlinkat(os(target), p, os(name))?;
                let fd = sys::openat(p, os(name), opath, 0)?;
                if self.root_user {
                    sys::fchown_fd(fd.as_fd(), n.uid as u32, n.gid as u32)?;
                }
                let t = TimeSpec::Set(n.mtime, 0);
                sys::utimens_at(p, os(name), t, t)?;
            }
            Kind::HardLink(target) => {
                let tshown = String::from_utf8_lossy(target).into_owned();
                let tcomps = components(target)?;
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(err(format!(
                        "refused entry {shown:?}: hardlink to the root"
                    )));
                };
                // The target must be a file of this same layer.
                let mut cur = sys::reopen(self.root.as_fd(), libc::O_PATH | libc::O_DIRECTORY)?;
                for c in tparents {
                    cur = sys::openat(
                        cur.as_fd(),
                        os(c),
                        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                        0,
                    )
                    .map_err(|_| {
                        err(format!(
                            "refused entry {shown:?}: hardlink target {tshown:?} is not in this layer"
                        ))
                    })?;
                }
                let st = sys::lstatat(cur.as_fd(), os(tname)).map_err(|_| {
                    err(format!(
                        "refused entry {shown:?}: hardlink target {tshown:?} is not in this layer"
                    ))
                })?;
                if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    return Err(err(format!(
                        "refused entry {shown:?}: hardlink to a directory"
                    )));
                }
                sys::linkat(cur.as_fd(), os(tname), p, os(name))?;
            }
            Kind::Char(rdev) | Kind::Block(rdev) => {
                if !self.root_user {
                    return Err(err(format!(
                        "refused entry {shown:?}: device nodes need root"
                    )));
                }
                let fmt = if matches!(n.kind, Kind::Char(_)) {
                    libc::S_IFCHR
                } else {
                    libc::S_IFBLK
                };
                sys::mknodat(p, os(name), fmt | 0o600, *rdev)?;
                let fd = sys::openat(p, os(name), opath, 0)?;
                self.apply_meta(fd.as_fd(), n, false)?;
                let t = TimeSpec::Set(n.mtime, 0);
                sys::utimens_at(p, os(name), t, t)?;
            }
            Kind::Fifo => {
                sys::mknodat(p, os(name), libc::S_IFIFO | 0o600, 0)?;
                let fd = sys::openat(p, os(name), opath, 0)?;
                self.apply_meta(fd.as_fd(), n, false)?;
                let t = TimeSpec::Set(n.mtime, 0);
                sys::utimens_at(p, os(name), t, t)?;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        // Deepest first would not matter: setting a directory's times does
        // not touch its parent's. Children were all made already.
        for (path, mtime) in std::mem::take(&mut self.dir_times) {
            let t = TimeSpec::Set(mtime, 0);
            let fd = if path.is_empty() {
                sys::reopen(self.root.as_fd(), libc::O_PATH | libc::O_DIRECTORY)?
            } else {
                let comps = components(&path)?;
                let mut cur = sys::reopen(self.root.as_fd(), libc::O_PATH | libc::O_DIRECTORY)?;
                for c in comps {
                    cur = sys::openat(
                        cur.as_fd(),
                        os(c),
                        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                        0,
                    )?;
                }
                cur
            };
            sys::utimens_at(fd.as_fd(), OsStr::new(""), t, t)?;
        }
        Ok(())
    }
}

/// Reads an OCI image-layer tar and sends its entries, in order, to `sink`
/// (`.wh.NAME` as a whiteout, `.wh..wh..opq` as an opaque directory, PAX
/// `SCHILY.xattr.*` as xattrs). Stops at the first refused entry.
/// Each error says what is wrong with the input in words: not a tar (and
/// which compression it looks like), a truncated one, never the raw bytes
/// of a bad header field.
pub fn apply_tar(mut input: impl Read, sink: &mut dyn Sink) -> io::Result<()> {
    let first = first_header(&mut input)?;
    let mut archive = tar::Archive::new(io::Cursor::new(first).chain(input));
    for entry in archive.entries().map_err(readable)? {
        let mut entry = entry.map_err(readable)?;
        let path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&path).into_owned();
        let comps = components(&path)?;
        let name = comps.last().copied().unwrap_or(b".");
        let parent: Vec<u8> = if comps.len() > 1 {
            comps[..comps.len() - 1].join(&b'/')
        } else {
            b".".to_vec()
        };
        if name == whiteout::OCI_OPAQUE {
            sink.put(&Change::Opaque(parent), None)?;
            continue;
        }
        if let Some(target) = whiteout::oci_whiteout_target(name) {
            if target == b".." || target == b"." {
                return Err(err(format!(
                    "refused entry {shown:?}: whiteout of {target:?}"
                )));
            }
            let p = crate::export::join(&parent, target);
            sink.put(&Change::Whiteout(p), None)?;
            continue;
        }
        let h = entry.header();
        let link = || -> io::Result<Vec<u8>> {
            entry
                .link_name_bytes()
                .map(|l| l.into_owned())
                .ok_or_else(|| err(format!("refused entry {shown:?}: link without a target")))
        };
        let rdev = || -> io::Result<u64> {
            let major = h.device_major()?.unwrap_or(0);
            let minor = h.device_minor()?.unwrap_or(0);
            Ok(libc::makedev(major, minor))
        };
        let kind = match h.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => Kind::Symlink(link()?),
            tar::EntryType::Link => Kind::HardLink(link()?),
            tar::EntryType::Char => Kind::Char(rdev()?),
            tar::EntryType::Block => Kind::Block(rdev()?),
            tar::EntryType::Fifo => Kind::Fifo,
            tar::EntryType::XGlobalHeader => continue,
            other => {
                return Err(err(format!(
                    "refused entry {shown:?}: unsupported entry type {other:?}"
                )))
            }
        };
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions()? {
            for ext in pax {
                let ext = ext?;
                if let Some(k) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((k.to_vec(), ext.value_bytes().to_vec()));
                }
            }
        }
        let h = entry.header();
        let node = Node {
            path: if comps.is_empty() {
                b".".to_vec()
            } else {
                comps.join(&b'/')
            },
            size: if kind == Kind::File { entry.size() } else { 0 },
            kind,
            mode: h.mode()? & 0o7777,
            uid: h.uid()?,
            gid: h.gid()?,
            mtime: h.mtime()? as i64,
            xattrs,
        };
        if node.kind == Kind::File {
            sink.put(&Change::Node(node), Some(&mut entry))?;
        } else {
            sink.put(&Change::Node(node), None)?;
        }
    }
    sink.finish()
}

/// Size of a tar block, and so of a header.
const BLOCK: usize = 512;

/// Reads the first block of a tar and checks it is a header (its checksum
/// holds) or the end-of-archive block; a file that is not a tar is refused
/// here, before the tar crate reads it as a broken header.
fn first_header(input: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut block = Vec::with_capacity(BLOCK);
    input.take(BLOCK as u64).read_to_end(&mut block)?;
    if let Some(kind) = compression(&block) {
        return Err(err(format!(
            "not a tar archive ({kind}-compressed?): decompress it first"
        )));
    }
    if block.is_empty() {
        return Err(err("not a tar archive: the file is empty"));
    }
    let end_block = block.len() == BLOCK && block.iter().all(|&b| b == 0);
    if !end_block && !header_checksum_holds(&block) {
        return Err(err("not a tar archive"));
    }
    Ok(block)
}

/// The compression a file's first bytes announce.
fn compression(start: &[u8]) -> Option<&'static str> {
    const MAGIC: &[(&[u8], &str)] = &[
        (&[0x1f, 0x8b], "gzip"),
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd"),
        (b"BZh", "bzip2"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0], "xz"),
    ];
    MAGIC
        .iter()
        .find(|(magic, _)| start.starts_with(magic))
        .map(|(_, kind)| *kind)
}

/// Whether a 512-byte block's checksum field (octal, at 148..156) is the
/// sum of its bytes with that field counted as spaces, as POSIX defines it.
fn header_checksum_holds(block: &[u8]) -> bool {
    if block.len() != BLOCK {
        return false;
    }
    let field = &block[148..156];
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(b))
        .collect();
    let Some(stored) = std::str::from_utf8(&digits)
        .ok()
        .and_then(|d| u32::from_str_radix(d, 8).ok())
    else {
        return false;
    };
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    stored == sum
}

/// The tar crate's error in words a user can act on: a short read is a
/// truncated archive, and a message quoting a header field's bytes has
/// them escaped (a random file would otherwise print binary to the
/// terminal).
fn readable(e: io::Error) -> io::Error {
    let text = e.to_string();
    let short = [
        "failed to read entire block",
        "unexpected EOF",
        "failed to read extension",
    ];
    if e.kind() == io::ErrorKind::UnexpectedEof || short.iter().any(|s| text.contains(s)) {
        return err("truncated tar archive (it ends inside an entry)");
    }
    if text.chars().any(|c| c.is_control()) {
        return io::Error::new(e.kind(), text.escape_debug().to_string());
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_a_tar_is_named() {
        let check = |bytes: &[u8]| first_header(&mut &bytes[..]).map_err(|e| e.to_string());
        let gz = check(&[0x1f, 0x8b, 8, 0, 0, 0]).unwrap_err();
        assert_eq!(
            gz,
            "not a tar archive (gzip-compressed?): decompress it first"
        );
        assert_eq!(check(b"hello\n").unwrap_err(), "not a tar archive");
        assert_eq!(check(&[7u8; 600]).unwrap_err(), "not a tar archive");
        assert!(check(&[0u8; 512]).is_ok(), "an empty archive");
        let mut h = tar::Header::new_gnu();
        h.set_path("a").unwrap();
        h.set_size(0);
        h.set_cksum();
        assert!(check(h.as_bytes()).is_ok());
        let bad = readable(io::Error::other("bad field \u{1}\u{7f}x"));
        assert_eq!(bad.to_string(), "bad field \\u{1}\\u{7f}x");
    }

    #[test]
    fn paths() {
        assert_eq!(components(b"./a/b/").unwrap(), vec![&b"a"[..], &b"b"[..]]);
        assert!(components(b".").unwrap().is_empty());
        assert!(components(b"../x").is_err());
        assert!(components(b"a/../../x").is_err());
        assert!(components(b"/etc/passwd").is_err());
        assert!(components(&[b'a'; 300]).is_err());
        assert!(components(&[b'a'; 5000]).is_err());
    }
}
