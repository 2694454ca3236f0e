//! One-command incremental backups of a volume into a directory, and
//! restores from it (`doc/backup.md` is the user's side of this).
//!
//! A backup directory holds one volume's chain: layer tars named
//! `SEQ.full.SNAP.tar` or `SEQ.incr.SNAP.tar`, and the manifest
//! ([`Manifest`], `layerfs-backup.json`) listing them in order. Each run
//! takes a snapshot and writes what changed since the snapshot of the last
//! listed tar; the first run, or one whose base snapshot is gone from the
//! volume, writes a full tar.
//!
//! Crash safety comes from the order of writes: a tar is written under a
//! temporary name, fsynced and renamed, and only then listed by replacing
//! the manifest atomically. A run killed anywhere leaves the manifest as it
//! was, so every listed tar is complete. The next run adopts a complete tar
//! the killed run had not listed yet (its snapshot still in the volume) and
//! removes anything else of ours it finds unlisted; a snapshot taken by a
//! killed run with no complete tar is simply covered by the next increment,
//! which is taken since the last snapshot *in the manifest*.
//!
//! Tars in the directory are never removed once listed: `--keep` merges
//! away the volume's snapshots, not the backups, so every point listed
//! stays restorable.

use std::fs;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{check_name, err, now, write_atomic, Meta, Snapshot};
use crate::volumes::Volumes;

/// The manifest's file name in a backup directory.
pub const MANIFEST: &str = "layerfs-backup.json";
/// Held (flock) by a running backup, so two never write one chain.
const LOCK: &str = ".layerfs-backup.lock";
/// The manifest format this code writes and reads.
const FORMAT: u32 = 1;

/// `layerfs-backup.json`: one volume's chain of layer tars.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format: u32,
    /// The volume backed up.
    pub volume: String,
    /// Oldest first. The first is full; each later one is full or holds
    /// the changes since the one before it.
    pub chain: Vec<Entry>,
}

/// One tar of the chain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// The tar's file name in the backup directory.
    pub file: String,
    /// The snapshot the tar brings the volume to.
    pub snapshot: String,
    /// That snapshot's creation time in the volume (seconds since the
    /// epoch): with the id, what tells it from a same-named snapshot of a
    /// volume removed and made again.
    pub snapshot_created: u64,
    /// `None` for a full tar; else the snapshot of the entry before it,
    /// which this tar's changes apply to.
    pub since: Option<String>,
    /// Hex sha256 of the tar.
    pub sha256: String,
    pub size: u64,
    /// When the tar was written (seconds since the epoch).
    pub created: u64,
}

/// A tar's file name: its place in the chain, whether it is full, and
/// the snapshot it brings the volume to. Parsing it back is what lets a
/// run adopt the complete tar of a killed one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TarName {
    seq: usize,
    full: bool,
    snapshot: String,
}

impl TarName {
    fn file(&self) -> String {
        let kind = if self.full { "full" } else { "incr" };
        format!("{:06}.{kind}.{}.tar", self.seq, self.snapshot)
    }

    fn parse(file: &str) -> Option<TarName> {
        let rest = file.strip_suffix(".tar")?;
        let (seq, rest) = rest.split_once('.')?;
        let (kind, snapshot) = rest.split_once('.')?;
        if seq.len() < 6 || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        check_name("snapshot", snapshot).ok()?;
        Some(TarName {
            seq: seq.parse().ok()?,
            full: match kind {
                "full" => true,
                "incr" => false,
                _ => return None,
            },
            snapshot: snapshot.to_string(),
        })
    }
}

/// A file of ours being written: `.NAME.partial` beside its final name.
fn partial_name(file: &str) -> String {
    format!(".{file}.partial")
}

/// Whether a backup directory entry is one of the files backups make.
fn is_ours(file: &str) -> bool {
    file == MANIFEST
        || file == LOCK
        || file == format!(".{MANIFEST}.tmp")
        || (file.starts_with('.') && file.ends_with(".partial"))
        || TarName::parse(file).is_some()
}

impl Manifest {
    /// Refuses a manifest that does not describe a chain this code made:
    /// its names must stay inside the directory and each increment must
    /// follow the tar before it.
    fn check(&self, dir: &Path) -> io::Result<()> {
        let bad = |why: String| {
            err(format!(
                "{}: bad manifest: {why}",
                dir.join(MANIFEST).display()
            ))
        };
        if self.format != FORMAT {
            return Err(bad(format!(
                "format {} (this layerfs-volume reads {FORMAT})",
                self.format
            )));
        }
        check_name("volume", &self.volume).map_err(|e| bad(e.to_string()))?;
        for (i, e) in self.chain.iter().enumerate() {
            let want = TarName {
                seq: i + 1,
                full: e.since.is_none(),
                snapshot: e.snapshot.clone(),
            };
            if TarName::parse(&e.file).as_ref() != Some(&want) {
                return Err(bad(format!(
                    "entry {} names file {:?}, expected {:?}",
                    i + 1,
                    e.file,
                    want.file()
                )));
            }
            let before = i.checked_sub(1).map(|j| &self.chain[j].snapshot);
            if e.since.is_some() && e.since.as_ref() != before {
                return Err(bad(format!(
                    "{} is an increment since {:?}, but the tar before it holds {:?}",
                    e.file, e.since, before
                )));
            }
        }
        Ok(())
    }
}

/// Reads `DIR/layerfs-backup.json`, or `None` when there is none.
fn read_manifest(dir: &Path) -> io::Result<Option<Manifest>> {
    let path = dir.join(MANIFEST);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(format!("{}: {e}", path.display()))),
    };
    let m: Manifest = serde_json::from_slice(&text)
        .map_err(|e| err(format!("{}: corrupt manifest: {e}", path.display())))?;
    m.check(dir)?;
    Ok(Some(m))
}

fn save_manifest(dir: &Path, m: &Manifest) -> io::Result<()> {
    write_atomic(dir, MANIFEST, &serde_json::to_vec_pretty(m)?)
}

/// A writer that hashes and counts what goes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 (hex) and size of a file.
fn digest_file(path: &Path) -> io::Result<(String, u64)> {
    let mut f = fs::File::open(path)?;
    let mut h = Hashing {
        inner: io::sink(),
        hash: Sha256::new(),
        size: 0,
    };
    io::copy(&mut f, &mut h)?;
    Ok((hex(&h.hash.finalize()), h.size))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Writes `DIR/file` through `fill`: under a temporary name, fsynced, then
/// renamed, so the name only ever shows a complete tar. Returns its sha256
/// and size.
fn write_tar(
    dir: &Path,
    file: &str,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<(String, u64)> {
    let tmp = dir.join(partial_name(file));
    let made = (|| {
        let mut w = Hashing {
            inner: io::BufWriter::new(fs::File::create(&tmp)?),
            hash: Sha256::new(),
            size: 0,
        };
        fill(&mut w)?;
        let f = w.inner.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(file))?;
        sync_dir(dir)?;
        Ok((hex(&w.hash.finalize()), w.size))
    })();
    if made.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    made
}

/// An exclusive lock on a backup directory for one run.
struct DirLock {
    _file: fs::File,
}

fn lock_dir(dir: &Path) -> io::Result<DirLock> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK))
        .map_err(|e| err(format!("{}: {e}", dir.join(LOCK).display())))?;
    layerfs::sys::flock(file.as_fd(), libc::LOCK_EX)?;
    Ok(DirLock { _file: file })
}

/// Opens a backup directory for a run, making it when missing (its parent
/// must exist). An existing directory must hold a manifest or only files
/// of ours (a killed first run's): backups never mix with other files.
fn open_backup_dir(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err(format!("backup directory {}: {e}", dir.display()))),
    }
    if !dir.is_dir() {
        return Err(err(format!(
            "backup directory {}: not a directory",
            dir.display()
        )));
    }
    if dir.join(MANIFEST).exists() {
        return Ok(());
    }
    for e in fs::read_dir(dir)? {
        let n = e?.file_name();
        if !n.to_str().is_some_and(is_ours) {
            return Err(err(format!(
                "{} is not a backup directory: it has no {MANIFEST} and holds other files ({})",
                dir.display(),
                n.to_string_lossy()
            )));
        }
    }
    Ok(())
}

/// The volume's snapshot that an entry names, if it is still that one.
fn snapshot_of<'a>(meta: &'a Meta, e: &Entry) -> Option<&'a Snapshot> {
    meta.snapshots
        .iter()
        .find(|s| s.id == e.snapshot && s.created == e.snapshot_created)
}

/// Finishes what a killed run left: its complete tar, the next in the
/// chain, is listed if its snapshot is still in the volume; every other
/// unlisted file of ours (partial tars, tars that cannot be adopted) is
/// removed. Runs under the directory lock.
fn finish_interrupted(dir: &Path, meta: &Meta, m: &mut Manifest) -> io::Result<()> {
    let mut names: Vec<String> = Vec::new();
    for e in fs::read_dir(dir)? {
        if let Some(n) = e?.file_name().to_str() {
            names.push(n.to_string());
        }
    }
    names.sort();
    let mut stale: Vec<String> = Vec::new();
    for n in names {
        if m.chain.iter().any(|e| e.file == n) {
            continue;
        }
        if n.starts_with('.') && n.ends_with(".partial") {
            stale.push(n);
            continue;
        }
        let Some(t) = TarName::parse(&n) else {
            continue;
        };
        let snap = meta.snapshots.iter().find(|s| s.id == t.snapshot);
        // The killed run chose full or incremental against this same
        // manifest, so an increment applies to its last entry.
        let since = m.chain.last().map(|e| e.snapshot.clone());
        let follows = t.seq == m.chain.len() + 1 && (t.full || since.is_some());
        match snap {
            Some(s) if follows => {
                let (sha256, size) = digest_file(&dir.join(&n))?;
                log::info!("listing {n}, written by an interrupted backup");
                m.chain.push(Entry {
                    file: n,
                    snapshot: s.id.clone(),
                    snapshot_created: s.created,
                    since: if t.full { None } else { since },
                    sha256,
                    size,
                    created: now(),
                });
                save_manifest(dir, m)?;
            }
            _ => stale.push(n),
        }
    }
    for n in stale {
        log::warn!("removing {n}, left by an interrupted backup");
        fs::remove_file(dir.join(&n))?;
    }
    Ok(())
}

/// `backup NAME --to DIR [--keep N]`: takes a snapshot, writes its changes
/// since the last backup (all of it the first time) as a tar in `dir`,
/// lists it, then with `keep` merges away the volume's snapshots older
/// than the last `keep` backups. Returns the new entry.
pub fn backup(vols: &Volumes, name: &str, dir: &Path, keep: Option<usize>) -> io::Result<Entry> {
    if keep == Some(0) {
        return Err(err(
            "--keep 0: the newest backed-up snapshot is where the next increment starts; keep 1 or more",
        ));
    }
    vols.store.load(name)?;
    open_backup_dir(dir)?;
    let _lock = lock_dir(dir)?;
    let mut m = match read_manifest(dir)? {
        Some(m) if m.volume != name => {
            return Err(err(format!(
                "{} holds the backups of volume {}, not {name}",
                dir.display(),
                m.volume
            )))
        }
        Some(m) => m,
        None => Manifest {
            format: FORMAT,
            volume: name.to_string(),
            chain: Vec::new(),
        },
    };
    finish_interrupted(dir, &vols.store.load(name)?, &mut m)?;

    let meta = vols.store.load(name)?;
    let base = m
        .chain
        .last()
        .filter(|e| snapshot_of(&meta, e).is_some())
        .map(|e| e.snapshot.clone());
    if let (None, Some(last)) = (&base, m.chain.last()) {
        log::warn!(
            "volume {name} no longer has snapshot {} of the last backup: writing a full one",
            last.snapshot
        );
    }
    let snapshot = vols.snapshot(name, None)?;
    let snapshot_created = vols
        .store
        .load(name)?
        .snapshots
        .iter()
        .find(|s| s.id == snapshot)
        .map(|s| s.created)
        .ok_or_else(|| err(format!("volume {name}: snapshot {snapshot} vanished")))?;
    let file = TarName {
        seq: m.chain.len() + 1,
        full: base.is_none(),
        snapshot: snapshot.clone(),
    }
    .file();
    // From `base` to `snapshot` exactly, read from the immutable layers:
    // a mounted volume's upper goes on changing meanwhile.
    let (sha256, size) = write_tar(dir, &file, |w| {
        vols.export_range(name, base.as_deref(), Some(&snapshot), w)
    })?;
    let entry = Entry {
        file,
        snapshot,
        snapshot_created,
        since: base,
        sha256,
        size,
        created: now(),
    };
    m.chain.push(entry.clone());
    save_manifest(dir, &m)?;
    if let Some(keep) = keep {
        prune(vols, name, &m, keep).map_err(|e| {
            err(format!(
                "backup {} written and listed, but pruning old snapshots stopped: {e}",
                entry.file
            ))
        })?;
    }
    Ok(entry)
}

/// Merges away the volume's snapshots older than the oldest one of the
/// last `keep` backups still in it. The newest backed-up snapshot, where
/// the next increment starts, is always among those kept.
fn prune(vols: &Volumes, name: &str, m: &Manifest, keep: usize) -> io::Result<()> {
    let meta = vols.store.load(name)?;
    let kept: Vec<&Entry> = m.chain.iter().rev().take(keep).collect();
    let Some(cut) = meta.snapshots.iter().position(|s| {
        kept.iter()
            .any(|e| e.snapshot == s.id && e.snapshot_created == s.created)
    }) else {
        return Ok(());
    };
    for s in &meta.snapshots[..cut] {
        log::info!("volume {name}: merging away snapshot {}", s.id);
        vols.snapshot_remove(name, &s.id)?;
    }
    Ok(())
}

/// Checks one listed tar against the manifest: present, same size, same
/// sha256.
fn verify(dir: &Path, e: &Entry) -> io::Result<PathBuf> {
    let path = dir.join(&e.file);
    let (sha256, size) = match digest_file(&path) {
        Ok(d) => d,
        Err(x) if x.kind() == io::ErrorKind::NotFound => {
            return Err(err(format!(
                "{}: listed in the manifest but missing",
                path.display()
            )))
        }
        Err(x) => return Err(err(format!("{}: {x}", path.display()))),
    };
    if size != e.size {
        return Err(err(format!(
            "{}: {size} bytes, the manifest says {}; refusing to restore",
            path.display(),
            e.size
        )));
    }
    if sha256 != e.sha256 {
        return Err(err(format!(
            "{}: sha256 {sha256}, the manifest says {}; refusing to restore",
            path.display(),
            e.sha256
        )));
    }
    Ok(path)
}

/// `restore DIR NAME [--at SNAP]`: builds volume `name` from the chain in
/// `dir` up to snapshot `at` (the newest without it): the tars from the
/// last full one before it, each checked against the manifest first, each
/// becoming the snapshot it was made from. Nothing is created on any
/// error.
pub fn restore(vols: &Volumes, dir: &Path, name: &str, at: Option<&str>) -> io::Result<Meta> {
    check_name("volume", name)?;
    if !dir.is_dir() {
        return Err(err(format!(
            "backup directory {}: {}",
            dir.display(),
            if dir.exists() {
                "not a directory"
            } else {
                "no such directory"
            }
        )));
    }
    let m = read_manifest(dir)?.ok_or_else(|| {
        err(format!(
            "{} is not a backup directory: it has no {MANIFEST}",
            dir.display()
        ))
    })?;
    let Some(last) = m.chain.len().checked_sub(1) else {
        return Err(err(format!("{} lists no backups yet", dir.display())));
    };
    // A snapshot id may be listed twice (a volume made again under the
    // same name starts a new full chain): the newest is meant.
    let k = match at {
        None => last,
        Some(at) => m
            .chain
            .iter()
            .rposition(|e| e.snapshot == at)
            .ok_or_else(|| {
                let have: Vec<&str> = m.chain.iter().map(|e| e.snapshot.as_str()).collect();
                err(format!(
                    "{} holds no backup of snapshot {at}; it holds {}",
                    dir.display(),
                    have.join(", ")
                ))
            })?,
    };
    if vols.store.dir(name).exists() {
        return Err(err(format!("volume {name} already exists")));
    }
    // check() made sure the first entry is full.
    let first = m.chain[..=k]
        .iter()
        .rposition(|e| e.since.is_none())
        .unwrap_or(0);
    let mut chain = Vec::new();
    for e in &m.chain[first..=k] {
        let path = verify(dir, e)?;
        let snap = Snapshot {
            id: e.snapshot.clone(),
            created: e.snapshot_created,
        };
        chain.push((path, snap));
    }
    vols.import_named(name, &chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_names_round_trip() {
        for (seq, full, snap) in [(1, true, "s1"), (12, false, "a.b-c"), (3, false, "x.full")] {
            let t = TarName {
                seq,
                full,
                snapshot: snap.to_string(),
            };
            assert_eq!(TarName::parse(&t.file()), Some(t));
        }
        for bad in [
            "1.full.s1.tar",
            "000001.part.s1.tar",
            "000001.full..tar",
            "x.tar",
        ] {
            assert_eq!(TarName::parse(bad), None, "{bad}");
        }
        assert!(is_ours(".000001.full.s1.tar.partial"));
        assert!(!is_ours("notes.txt"));
    }

    #[test]
    fn hashing_writer_hashes_what_it_writes() {
        let mut h = Hashing {
            inner: Vec::new(),
            hash: Sha256::new(),
            size: 0,
        };
        h.write_all(b"abc").unwrap();
        assert_eq!(
            hex(&h.hash.finalize()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(h.inner, b"abc");
    }

    #[test]
    fn manifests_that_break_the_chain_are_refused() {
        let entry = |seq: usize, snap: &str, since: Option<&str>| Entry {
            file: TarName {
                seq,
                full: since.is_none(),
                snapshot: snap.to_string(),
            }
            .file(),
            snapshot: snap.to_string(),
            snapshot_created: 1,
            since: since.map(str::to_string),
            sha256: String::new(),
            size: 0,
            created: 1,
        };
        let mut m = Manifest {
            format: FORMAT,
            volume: "v".into(),
            chain: vec![entry(1, "s1", None), entry(2, "s2", Some("s1"))],
        };
        let dir = Path::new("/nonexistent");
        assert!(m.check(dir).is_ok());
        m.chain.push(entry(3, "s4", Some("s3")));
        assert!(
            m.check(dir).is_err(),
            "increment over a snapshot not before it"
        );
        m.chain.pop();
        m.chain[1].file = "../../etc/passwd".into();
        assert!(m.check(dir).is_err(), "a file outside the directory");
        m.chain.truncate(1);
        m.chain[0].since = Some("s0".into());
        assert!(m.check(dir).is_err(), "a chain starting with an increment");
    }
}
