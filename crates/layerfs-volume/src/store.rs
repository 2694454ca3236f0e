//! The volume store: one directory per volume holding its layers and a
//! metadata file, and nothing kept only in a process.
//!
//! Layout of `STORE/NAME/`:
//! - `meta.json`: [`Meta`], replaced atomically (temp file, fsync, rename);
//! - `snapshots/ID/`: read-only layers, oldest first in `Meta::snapshots`;
//! - `upper/`, `work/`: the writable layer and layerfs' work directory;
//! - `empty/`: an empty bottom layer, so a volume with no lower content
//!   still has the lower layer overlayfs requires;
//! - `merged/`: where the volume is mounted.
//!
//! Seeds are recorded by path and never copied, so creating a volume from a
//! large tree costs what creating an empty one does.

use std::fs;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Longest volume or snapshot name accepted.
pub const MAX_NAME: usize = 128;

/// A volume's metadata, as stored in `meta.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    pub name: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// Read-only seed directories, top first (absolute paths, not copied).
    #[serde(default)]
    pub seeds: Vec<PathBuf>,
    /// The snapshot this volume was cloned from, if any.
    #[serde(default)]
    pub base: Option<Base>,
    /// Snapshots, oldest first.
    #[serde(default)]
    pub snapshots: Vec<Snapshot>,
    /// Who holds the mount: container ids from the engine, or "cli".
    #[serde(default)]
    pub holders: Vec<String>,
    /// Number given to the next unnamed snapshot.
    #[serde(default)]
    pub next_snapshot: u64,
    /// A snapshot being taken: written before the upper is renamed, so an
    /// interrupted snapshot is finished (or forgotten) by the next change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_snapshot: Option<String>,
    /// The pending snapshot is a live one, taken by the mounted volume's
    /// daemon (see `live`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending_live: bool,
    /// The most the volume's own data (upper and snapshots) may take, in
    /// bytes; None: no limit. Given to each mount (see `limits`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// A merged layer the mounted volume's daemon is asked to take
    /// (`compact`, `snapshot rm`): written before it is asked, so that a
    /// change cut by a crash after the daemon took it is finished, and one
    /// cut before is forgotten, by the next change (see `live`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_merge: Option<PendingMerge>,
}

/// See [`Meta::pending_merge`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PendingMerge {
    /// The merged layer's directory, in the volume's (`.merge-PID`).
    pub merged: String,
    /// Its root's identity, `DEV:INO`, as the daemon's `status` lists it.
    pub id: String,
    /// The layer whose place it takes, relative to the volume's directory.
    pub above: String,
    /// The snapshots it folds in, gone from the metadata once it is in place.
    pub dropped: Vec<String>,
}

/// `VOLUME@SNAPSHOT`: where a clone's lower layers come from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Base {
    pub volume: String,
    pub snapshot: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    pub id: String,
    pub created: u64,
}

/// An error that is an answer to the user: one line naming the problem.
pub fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// Checks a volume or snapshot name: what Docker accepts for volume names
/// (`[A-Za-z0-9][A-Za-z0-9_.-]*`), at most [`MAX_NAME`] bytes. This is what
/// keeps every name a single path component inside the store.
pub fn check_name(what: &str, name: &str) -> io::Result<()> {
    let bad = |why: &str| Err(err(format!("bad {what} name {name:?}: {why}")));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME {
        return bad(&format!("longer than {MAX_NAME} bytes"));
    }
    let mut chars = name.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        return bad("must start with a letter or digit");
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return bad("only letters, digits, '_', '.' and '-' are allowed");
    }
    Ok(())
}

/// Whether a `from` names a snapshot to clone (`VOLUME@SNAPSHOT`) rather
/// than seed directories, which are paths and so hold a `/`.
pub fn is_base_spec(from: &str) -> bool {
    from.contains('@') && !from.contains('/')
}

/// Parses `VOLUME@SNAPSHOT`.
pub fn parse_base(spec: &str) -> io::Result<Base> {
    let Some((volume, snapshot)) = spec.split_once('@') else {
        return Err(err(format!("{spec:?}: expected VOLUME@SNAPSHOT")));
    };
    check_name("volume", volume)?;
    check_name("snapshot", snapshot)?;
    Ok(Base {
        volume: volume.to_string(),
        snapshot: snapshot.to_string(),
    })
}

/// Seconds since the epoch as RFC 3339 (`2026-12-07T03:36:47Z`), as
/// Docker shows times.
pub fn rfc3339(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map(|t| t.to_string())
        .unwrap_or_else(|| format!("@{secs}"))
}

/// Most entries [`used_bytes`] reads: Docker asks `Get` before each use
/// of a volume, and the plugin serves one request at a time, so a volume
/// of millions of files must not hold up the others' mounts.
pub const USED_WALK_LIMIT: usize = 100_000;

/// Bytes a directory tree takes on disk, each inode counted once (as
/// `du -s` does): what a volume's upper holds. Past [`USED_WALK_LIMIT`]
/// entries it stops; the bool says whether the count is whole.
pub fn used_bytes(dir: &Path) -> io::Result<(u64, bool)> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let (mut total, mut entries) = (0, 0);
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d)? {
            entries += 1;
            if entries > USED_WALK_LIMIT {
                return Ok((total, false));
            }
            let e = e?;
            let md = e.metadata()?;
            if md.nlink() > 1 && !md.is_dir() && !seen.insert((md.dev(), md.ino())) {
                continue;
            }
            total += md.blocks() * 512;
            if md.is_dir() {
                dirs.push(e.path());
            }
        }
    }
    Ok((total, true))
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The default store: `/var/lib/layerfs/volumes` as root, else under
/// `$XDG_DATA_HOME` (or `~/.local/share`).
pub fn default_store() -> PathBuf {
    if layerfs::sys::geteuid() == 0 {
        return PathBuf::from("/var/lib/layerfs/volumes");
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("layerfs/volumes")
}

/// An open volume store.
#[derive(Debug, Clone)]
pub struct Store {
    pub root: PathBuf,
}

/// An exclusive lock on the store, held for the length of one change so a
/// CLI and a plugin working on the same store never interleave.
pub struct StoreLock {
    _file: fs::File,
}

impl Store {
    /// Opens (creating if needed) the store at `root`. The path goes into
    /// layerfs mount options, where ',' separates options: refused.
    pub fn open(root: &Path) -> io::Result<Store> {
        fs::create_dir_all(root)
            .map_err(|e| err(format!("cannot create store {}: {e}", root.display())))?;
        let root = root
            .canonicalize()
            .map_err(|e| err(format!("store {}: {e}", root.display())))?;
        if root.as_os_str().as_encoded_bytes().contains(&b',') {
            return Err(err(format!(
                "store path {} contains ',', which mount options cannot carry",
                root.display()
            )));
        }
        Ok(Store { root })
    }

    pub fn lock(&self) -> io::Result<StoreLock> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(".lock"))?;
        layerfs::sys::flock(file.as_fd(), libc::LOCK_EX)?;
        Ok(StoreLock { _file: file })
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn exists(&self, name: &str) -> bool {
        self.dir(name).join("meta.json").exists()
    }

    /// Reads a volume's metadata; a missing volume and a corrupt file are
    /// each a one-line error naming the problem.
    pub fn load(&self, name: &str) -> io::Result<Meta> {
        check_name("volume", name)?;
        let path = self.dir(name).join("meta.json");
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(err(format!("no such volume: {name}")))
            }
            Err(e) => return Err(err(format!("volume {name}: {}: {e}", path.display()))),
        };
        let meta: Meta = serde_json::from_slice(&text).map_err(|e| {
            err(format!(
                "volume {name}: corrupt metadata file {}: {e}",
                path.display()
            ))
        })?;
        if meta.name != name {
            return Err(err(format!(
                "volume {name}: corrupt metadata file {}: it names volume {:?}",
                path.display(),
                meta.name
            )));
        }
        Ok(meta)
    }

    /// Writes a volume's metadata atomically: a temp file, fsync, rename
    /// over the old one, fsync of the directory. A crash leaves the old or
    /// the new file, never a torn one.
    pub fn save(&self, meta: &Meta) -> io::Result<()> {
        let dir = self.dir(&meta.name);
        write_atomic(&dir, "meta.json", &serde_json::to_vec_pretty(meta)?)
    }

    /// Every volume in the store, by name. Directories that are not volumes
    /// (an import in progress, a half-removed volume) are left out.
    pub fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in fs::read_dir(&self.root)? {
            let e = e?;
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if check_name("volume", &name).is_ok() && self.exists(&name) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// A snapshot's layer directory.
    pub fn snapshot_dir(&self, volume: &str, id: &str) -> PathBuf {
        self.dir(volume).join("snapshots").join(id)
    }

    /// The read-only layers under a volume's upper, top first: its
    /// snapshots newest first, then its base's chain, then its seeds, then
    /// its empty bottom layer.
    pub fn lower_stack(&self, meta: &Meta) -> io::Result<Vec<PathBuf>> {
        let mut out: Vec<PathBuf> = meta
            .snapshots
            .iter()
            .rev()
            .map(|s| self.snapshot_dir(&meta.name, &s.id))
            .collect();
        out.extend(self.base_chain(meta, 0)?);
        out.extend(meta.seeds.iter().cloned());
        out.push(self.dir(&meta.name).join("empty"));
        Ok(out)
    }

    /// The layers a clone sees from its base: the base volume's snapshots up
    /// to the one named, newest first, then the base's own lower chain.
    fn base_chain(&self, meta: &Meta, depth: usize) -> io::Result<Vec<PathBuf>> {
        let Some(base) = &meta.base else {
            return Ok(Vec::new());
        };
        if depth > 64 {
            return Err(err(format!("volume {}: clone chain too deep", meta.name)));
        }
        let bmeta = self.load(&base.volume)?;
        let Some(pos) = bmeta.snapshots.iter().position(|s| s.id == base.snapshot) else {
            return Err(err(format!(
                "volume {}: its base {}@{} no longer exists",
                meta.name, base.volume, base.snapshot
            )));
        };
        let mut out: Vec<PathBuf> = bmeta.snapshots[..=pos]
            .iter()
            .rev()
            .map(|s| self.snapshot_dir(&bmeta.name, &s.id))
            .collect();
        out.extend(self.base_chain(&bmeta, depth + 1)?);
        out.extend(bmeta.seeds.iter().cloned());
        Ok(out)
    }

    /// The volumes cloned from `volume`'s snapshots, with the snapshot each
    /// one uses.
    pub fn clones_of(&self, volume: &str) -> io::Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for name in self.list()? {
            if let Ok(m) = self.load(&name) {
                if let Some(b) = m.base.filter(|b| b.volume == volume) {
                    out.push((name, b.snapshot));
                }
            }
        }
        Ok(out)
    }
}

/// Writes `data` to `dir/name` atomically (temp, fsync, rename, dir fsync).
pub fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("volume", "data-1.x_y").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "-x", "a b", &"x".repeat(129)] {
            assert!(check_name("volume", bad).is_err(), "{bad:?}");
        }
        assert!(parse_base("v@s1").is_ok());
        assert!(parse_base("v").is_err());
        assert!(parse_base("v@../s").is_err());
    }

    #[test]
    fn used_counts_each_inode_once() {
        let t = tempfile::tempdir().unwrap();
        let (empty, whole) = used_bytes(t.path()).unwrap();
        assert!(whole);
        fs::create_dir(t.path().join("d")).unwrap();
        fs::write(t.path().join("d/f"), vec![1u8; 1 << 20]).unwrap();
        let (one, _) = used_bytes(t.path()).unwrap();
        assert!(one >= empty + (1 << 20), "{one}");
        fs::hard_link(t.path().join("d/f"), t.path().join("g")).unwrap();
        assert_eq!(used_bytes(t.path()).unwrap(), (one, true));
    }
}
