//! Operations on volumes as layer stacks: create, clone, snapshot, merge
//! (snapshot removal, compaction), mount and unmount, export and import.
//!
//! Every change takes the store lock and ends with an atomic metadata
//! write, so a CLI and a plugin can share one store.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::export::Walker;
use crate::import::{apply_tar, LayerSink};
use crate::mounts::{in_proc_mounts, run_layerfs, stack_options, unmount_dir, View};
use crate::options::{CreateOptions, Ownership};
use crate::progress::Progress;
use crate::store::{check_name, err, now, parse_base, rfc3339, Base, Meta, Snapshot, Store};

/// How long a live snapshot may hold the containers' changes by default.
pub const DEFAULT_BARRIER: std::time::Duration = std::time::Duration::from_secs(1);

/// Which layers a merge folds into one: top first, and what stays below.
struct MergeRange {
    range: Vec<PathBuf>,
    below: Vec<PathBuf>,
}

pub struct Volumes {
    pub store: Store,
}

impl Volumes {
    pub fn new(store: Store) -> Volumes {
        Volumes { store }
    }

    pub fn mountpoint(&self, name: &str) -> PathBuf {
        self.store.dir(name).join("merged")
    }

    /// Whether the volume is mounted and its daemon answers: here (a
    /// killed daemon leaves a mountpoint that fails with ENOTCONN), or in
    /// another mount namespace (the plugin's in dockerd's, say), where
    /// only its control socket is seen; or on another host sharing the
    /// store, whose daemon holds the work dir's lock.
    pub fn is_mounted(&self, name: &str) -> bool {
        let dir = self.store.dir(name);
        self.is_mounted_here(name)
            || crate::live::daemon_answers(&dir)
            || crate::live::held_elsewhere(&dir).is_some()
    }

    /// Whether the volume is mounted, with its daemon answering, in this
    /// process' mount namespace.
    pub fn is_mounted_here(&self, name: &str) -> bool {
        let mp = self.mountpoint(name);
        in_proc_mounts(&mp) && fs::metadata(&mp).is_ok()
    }

    fn refuse_if_mounted(&self, meta: &Meta, what: &str) -> io::Result<()> {
        if self.is_mounted(&meta.name) {
            let holders = if meta.holders.is_empty() {
                "unknown holders".to_string()
            } else {
                meta.holders.join(", ")
            };
            // How to end the mount: the CLI's own, or the engine's.
            let how = if meta.holders.iter().any(|h| h == "cli") {
                format!("unmount it first: layerfs-volume umount {}", meta.name)
            } else {
                format!(
                    "stop the containers using it first (docker ps --filter volume={})",
                    meta.name
                )
            };
            return Err(err(format!(
                "cannot {what} volume {}: it is mounted, in use by {holders}; {how}",
                meta.name
            )));
        }
        Ok(())
    }

    /// Creates a volume: empty, seeded from directories (top first; recorded,
    /// not copied), or cloned from `VOLUME@SNAPSHOT`, its root owned as
    /// `opts.owner` asks (set in the upper before the volume appears).
    pub fn create(&self, name: &str, opts: &CreateOptions) -> io::Result<Meta> {
        let (seeds, base) = (&opts.seeds, opts.base.as_deref());
        check_name("volume", name)?;
        let _lock = self.store.lock()?;
        if self.store.dir(name).exists() {
            return Err(err(format!("volume {name} already exists")));
        }
        let mut canon = Vec::new();
        for s in seeds {
            let c = s
                .canonicalize()
                .map_err(|e| err(format!("seed {}: {e}", s.display())))?;
            if !c.is_dir() {
                return Err(err(format!("seed {} is not a directory", s.display())));
            }
            if c.starts_with(&self.store.root) {
                return Err(err(format!("seed {} is inside the store", s.display())));
            }
            // Refused now, not at the first mount.
            stack_options(std::slice::from_ref(&c), None)?;
            canon.push(c);
        }
        let base = match base {
            None => None,
            Some(spec) => {
                let b = parse_base(spec)?;
                let bmeta = self.store.load(&b.volume)?;
                if !bmeta.snapshots.iter().any(|s| s.id == b.snapshot) {
                    return Err(err(format!(
                        "volume {} has no snapshot {}",
                        b.volume, b.snapshot
                    )));
                }
                Some(b)
            }
        };
        let meta = Meta {
            name: name.to_string(),
            created: now(),
            seeds: canon,
            base,
            snapshots: Vec::new(),
            holders: Vec::new(),
            next_snapshot: 1,
            pending_snapshot: None,
            pending_live: false,
            pending_merge: None,
            size: opts.size,
        };
        // What is not asked for comes from the root the upper covers (the
        // base's snapshot, the top seed), as a copy-up would keep it.
        let below = self.store.lower_stack(&meta)?;
        let owner = match below
            .first()
            .filter(|_| meta.base.is_some() || !meta.seeds.is_empty())
        {
            Some(top) => opts.owner.or(Ownership::of(top)?),
            None => opts.owner,
        };
        self.build(&meta, |tmp| owner.apply(&tmp.join("upper")))?;
        Ok(meta)
    }

    /// Makes a volume's directories in a temporary place, lets `fill` add
    /// layers, writes the metadata and renames it into the store: a volume
    /// appears whole or not at all.
    fn build(&self, meta: &Meta, fill: impl FnOnce(&Path) -> io::Result<()>) -> io::Result<()> {
        let tmp = self
            .store
            .root
            .join(format!(".new-{}-{}", meta.name, std::process::id()));
        let made = (|| {
            for d in ["snapshots", "upper", "work", "empty", "merged"] {
                fs::create_dir_all(tmp.join(d))?;
            }
            fill(&tmp)?;
            crate::store::write_atomic(&tmp, "meta.json", &serde_json::to_vec_pretty(meta)?)?;
            fs::rename(&tmp, self.store.dir(&meta.name))
        })();
        if made.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        made
    }

    /// Removes a volume; refused while mounted or while clones use its
    /// snapshots (they are shared, not copied).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        let _lock = self.store.lock()?;
        let meta = self.store.load(name)?;
        self.refuse_if_mounted(&meta, "remove")?;
        let clones = self.store.clones_of(name)?;
        if !clones.is_empty() {
            let list: Vec<String> = clones.iter().map(|(c, s)| format!("{c} (@{s})")).collect();
            return Err(err(format!(
                "cannot remove volume {name}: its snapshots are used by {}",
                list.join(", ")
            )));
        }
        // Out of sight first, so a crash never leaves half a volume listed.
        let gone = self
            .store
            .root
            .join(format!(".rm-{name}-{}", std::process::id()));
        fs::rename(self.store.dir(name), &gone)?;
        fs::remove_dir_all(&gone)
    }

    /// The current upper becomes a read-only snapshot; a new empty upper
    /// starts. On a mounted volume the daemon does it with the containers
    /// running (see `live`), holding their changes at most `timeout`.
    pub fn snapshot(&self, name: &str, id: Option<&str>) -> io::Result<String> {
        self.snapshot_within(name, id, DEFAULT_BARRIER)
    }

    pub fn snapshot_within(
        &self,
        name: &str,
        id: Option<&str>,
        timeout: std::time::Duration,
    ) -> io::Result<String> {
        let _lock = self.store.lock()?;
        let mut meta = self.store.load(name)?;
        self.repair(&mut meta)?;
        let id = match id {
            Some(id) => id.to_string(),
            None => format!("s{}", meta.next_snapshot.max(1)),
        };
        check_name("snapshot", &id)?;
        if meta.snapshots.iter().any(|s| s.id == id) {
            return Err(err(format!("volume {name} already has a snapshot {id}")));
        }
        if self.is_mounted(name) && self.snapshot_live(&mut meta, &id, timeout)? {
            return Ok(id);
        }
        self.settle_hardlinks(&meta)?;
        // Intent first: a crash between the renames is finished by repair().
        meta.pending_snapshot = Some(id.clone());
        meta.next_snapshot = meta.next_snapshot.max(1) + 1;
        self.store.save(&meta)?;
        let dir = self.store.dir(name);
        fs::rename(dir.join("upper"), self.store.snapshot_dir(name, &id))?;
        self.repair(&mut meta)?;
        Ok(id)
    }

    /// Finishes what an interrupted change left: a snapshot whose upper was
    /// renamed gets its new upper and its place in the metadata (one whose
    /// rename did not happen is forgotten); the layers an interrupted
    /// merge was replacing, no longer in the metadata, are removed. Runs
    /// under the store lock, so no other change is under way.
    pub(crate) fn repair(&self, meta: &mut Meta) -> io::Result<()> {
        crate::mounts::remove_stale_views(&self.store.dir(&meta.name));
        if self.is_mounted(&meta.name) {
            // Its daemon uses the layers: only a live snapshot or merge
            // cut by a crash of this side is settled, by asking the daemon.
            self.settle_merge(meta, true)?;
            return self.repair_live_mounted(meta);
        }
        crate::swap::settle(&self.store.dir(&meta.name))?;
        self.settle_merge(meta, false)?;
        if meta.pending_live {
            self.repair_live(meta)?;
        }
        let name = meta.name.clone();
        let dir = self.store.dir(&name);
        if let Some(id) = meta.pending_snapshot.take() {
            if self.store.snapshot_dir(&name, &id).exists() {
                meta.snapshots.push(Snapshot { id, created: now() });
                if !dir.join("upper").exists() {
                    self.make_upper(meta)?;
                }
                // The index refers to the old upper.
                reset_dir(&dir.join("work"))?;
            }
            self.store.save(meta)?;
        }
        if !dir.join("upper").exists() {
            self.make_upper(meta)?;
        }
        for e in fs::read_dir(&dir)? {
            let n = e?.file_name();
            let n = n.to_string_lossy();
            if n.starts_with(".merge-") || n.starts_with(".old-") {
                log::warn!("volume {name}: removing {n}, left by an interrupted change");
                fs::remove_dir_all(dir.join(&*n))?;
            }
        }
        for e in fs::read_dir(dir.join("snapshots"))? {
            let n = e?.file_name();
            let n = n.to_string_lossy();
            if !meta.snapshots.iter().any(|s| s.id == n) {
                log::warn!("volume {name}: removing layer {n}, merged by an interrupted change");
                fs::remove_dir_all(dir.join("snapshots").join(&*n))?;
            }
        }
        Ok(())
    }

    /// Makes a volume's empty upper after a snapshot. Its root is what the
    /// mount shows as the volume's root, so it takes the owner and mode of
    /// the snapshot it now covers: a snapshot must not give the root (set
    /// by `uid=`, `mode=` or by a container) back to root.
    fn make_upper(&self, meta: &Meta) -> io::Result<()> {
        let upper = self.store.dir(&meta.name).join("upper");
        fs::create_dir(&upper)?;
        if let Some(s) = meta.snapshots.last() {
            let md = fs::metadata(self.store.snapshot_dir(&meta.name, &s.id))?;
            std::os::unix::fs::chown(&upper, Some(md.uid()), Some(md.gid()))?;
            fs::set_permissions(&upper, md.permissions())?;
        }
        Ok(())
    }

    /// Clones `VOLUME@SNAPSHOT` into a new volume sharing its layers.
    pub fn clone_volume(&self, spec: &str, name: &str) -> io::Result<Meta> {
        let opts = CreateOptions {
            base: Some(spec.to_string()),
            ..Default::default()
        };
        self.create(name, &opts)
    }

    fn refuse_if_cloned(&self, meta: &Meta, from: usize, what: &str) -> io::Result<()> {
        let later: Vec<&str> = meta.snapshots[from..]
            .iter()
            .map(|s| s.id.as_str())
            .collect();
        let users: Vec<String> = self
            .store
            .clones_of(&meta.name)?
            .into_iter()
            .filter(|(_, s)| later.contains(&s.as_str()))
            .map(|(c, s)| format!("{c} (@{s})"))
            .collect();
        if !users.is_empty() {
            return Err(err(format!(
                "cannot {what} of volume {}: clones use those layers: {}",
                meta.name,
                users.join(", ")
            )));
        }
        Ok(())
    }

    /// Folds `range` (top first) into one new layer made at `out`, through
    /// a read-only mount of range + below.
    fn merge(&self, meta: &Meta, m: &MergeRange, out: &Path) -> io::Result<()> {
        let mut all = m.range.clone();
        all.extend(m.below.iter().cloned());
        let view = View::mount(
            self.store
                .dir(&meta.name)
                .join(format!(".view-{}", std::process::id())),
            &all,
        )?;
        fs::create_dir(out)?;
        let made = (|| {
            let mut sink = LayerSink::new(out, &[])?;
            Walker::new(&view.dir, &mut sink).since(&m.range)
        })();
        if made.is_err() {
            let _ = fs::remove_dir_all(out);
        }
        made
    }

    /// Removes a snapshot: its changes are merged into the layer above (the
    /// next snapshot, or the upper), so nothing visible changes.
    pub fn snapshot_remove(&self, name: &str, id: &str) -> io::Result<()> {
        let _lock = self.store.lock()?;
        let mut meta = self.store.load(name)?;
        crate::live::refuse_elsewhere(name, &self.store.dir(name))?;
        self.repair(&mut meta)?;
        let mounted = self.is_mounted(name);
        let Some(k) = meta.snapshots.iter().position(|s| s.id == id) else {
            return Err(err(format!("volume {name} has no snapshot {id}")));
        };
        if mounted && k + 1 == meta.snapshots.len() {
            return Err(err(format!(
                "cannot remove snapshot {id} of volume {name} while it is mounted: it is the newest, under the upper the containers write to; take another snapshot first, or unmount it first: layerfs-volume umount {name}"
            )));
        }
        if !mounted {
            self.settle_hardlinks(&meta)?;
        }
        self.refuse_if_cloned(&meta, k, &format!("remove snapshot {id}"))?;
        let stack = self.store.lower_stack(&meta)?;
        // stack[0] is the newest snapshot; snapshot k is at n-1-k.
        let n = meta.snapshots.len();
        let pos = n - 1 - k;
        let dir = self.store.dir(name);
        let above = if k + 1 == n {
            dir.join("upper")
        } else {
            self.store.snapshot_dir(name, &meta.snapshots[k + 1].id)
        };
        let m = MergeRange {
            range: vec![above.clone(), stack[pos].clone()],
            below: stack[pos + 1..].to_vec(),
        };
        let tmp = dir.join(format!(".merge-{}", std::process::id()));
        self.merge(&meta, &m, &tmp)?;
        if mounted {
            // The running daemon takes the merged layer first: the old
            // ones can then go.
            self.merge_live(&mut meta, &m.range, &tmp, &above, vec![id.to_string()])?;
        }
        if k + 1 == n {
            // The index refers to the upper being replaced (its sets were
            // made whole in the upper by settle_hardlinks).
            reset_dir(&dir.join("work"))?;
        }
        // The merged layer holds every name of both, so the view is the
        // same whether the snapshot is still below it or not: swapping it
        // in atomically, then dropping the snapshot from the metadata,
        // leaves no moment where a crash changes what the volume shows.
        crate::swap::exchange(&tmp, &above, &dir)?;
        meta.snapshots.remove(k);
        meta.pending_merge = None;
        self.store.save(&meta)?;
        fs::remove_dir_all(&tmp)?;
        fs::remove_dir_all(self.store.snapshot_dir(name, id))
    }

    /// Folds every snapshot into one layer (keeping the newest one's name),
    /// so the stack stays short.
    pub fn compact(&self, name: &str) -> io::Result<()> {
        let _lock = self.store.lock()?;
        let mut meta = self.store.load(name)?;
        crate::live::refuse_elsewhere(name, &self.store.dir(name))?;
        self.repair(&mut meta)?;
        let n = meta.snapshots.len();
        if n < 2 {
            return Ok(());
        }
        self.refuse_if_cloned(&meta, 0, "compact the snapshots")?;
        let stack = self.store.lower_stack(&meta)?;
        let m = MergeRange {
            range: stack[..n].to_vec(),
            below: stack[n..].to_vec(),
        };
        let dir = self.store.dir(name);
        let tmp = dir.join(format!(".merge-{}", std::process::id()));
        self.merge(&meta, &m, &tmp)?;
        let newest = meta.snapshots[n - 1].clone();
        if self.is_mounted(name) {
            let older = meta.snapshots[..n - 1]
                .iter()
                .map(|s| s.id.clone())
                .collect();
            let above = self.store.snapshot_dir(name, &newest.id);
            self.merge_live(&mut meta, &m.range, &tmp, &above, older)?;
            layerfs::sys::crashpoint::reached("compact-taken");
        }
        // As in snapshot_remove: the merged layer shadows every older one,
        // so the swap and the metadata write can each be the last thing a
        // crash lets happen; repair() removes what is left.
        crate::swap::exchange(&tmp, &self.store.snapshot_dir(name, &newest.id), &dir)?;
        let older: Vec<Snapshot> = meta.snapshots[..n - 1].to_vec();
        meta.snapshots = vec![newest];
        meta.pending_merge = None;
        self.store.save(&meta)?;
        fs::remove_dir_all(&tmp)?;
        for s in older {
            fs::remove_dir_all(self.store.snapshot_dir(name, &s.id))?;
        }
        Ok(())
    }

    /// Builds a new volume from a chain of layer tars (full first, then
    /// increments), one snapshot per tar, named s1..sN.
    pub fn import(&self, name: &str, tars: &[PathBuf]) -> io::Result<Meta> {
        let chain: Vec<(PathBuf, Snapshot)> = tars
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let id = format!("s{}", i + 1);
                (t.clone(), Snapshot { id, created: now() })
            })
            .collect();
        self.import_named(name, &chain)
    }

    /// Builds a new volume from a chain of layer tars (full first, then
    /// increments), each becoming the snapshot given beside it (a restore
    /// keeps the names and times a backup recorded). Any refused entry
    /// fails the whole import and leaves nothing behind.
    pub fn import_named(&self, name: &str, chain: &[(PathBuf, Snapshot)]) -> io::Result<Meta> {
        check_name("volume", name)?;
        for (i, (_, s)) in chain.iter().enumerate() {
            check_name("snapshot", &s.id)?;
            if chain[..i].iter().any(|(_, o)| o.id == s.id) {
                return Err(err(format!("snapshot {} named twice", s.id)));
            }
        }
        let _lock = self.store.lock()?;
        if self.store.dir(name).exists() {
            return Err(err(format!("volume {name} already exists")));
        }
        let snapshots: Vec<Snapshot> = chain.iter().map(|(_, s)| s.clone()).collect();
        // The next unnamed snapshot must not take a name the chain holds.
        let numbered = snapshots
            .iter()
            .filter_map(|s| s.id.strip_prefix('s')?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        let meta = Meta {
            name: name.to_string(),
            created: now(),
            seeds: Vec::new(),
            base: None,
            next_snapshot: numbered.max(snapshots.len() as u64) + 1,
            snapshots,
            holders: Vec::new(),
            pending_snapshot: None,
            pending_live: false,
            pending_merge: None,
            size: None,
        };
        let total = chain
            .iter()
            .filter_map(|(t, _)| fs::metadata(t).ok())
            .map(|m| m.len());
        let progress = Progress::new(&format!("import {name}"), Some(total.sum()));
        self.build(&meta, |tmp| {
            let mut below: Vec<PathBuf> = Vec::new();
            for (tar, snap) in chain {
                let layer = tmp.join("snapshots").join(&snap.id);
                fs::create_dir(&layer)?;
                let f = fs::File::open(tar).map_err(|e| err(format!("{}: {e}", tar.display())))?;
                let lowers: Vec<&Path> = below.iter().map(|p| p.as_path()).collect();
                let mut layer_sink = LayerSink::new(&layer, &lowers)?;
                let mut sink = progress.sink(&mut layer_sink);
                apply_tar(io::BufReader::new(progress.reader(f)), &mut sink)
                    .map_err(|e| err(format!("{}: {e}", tar.display())))?;
                below.insert(0, layer);
            }
            Ok(())
        })?;
        Ok(meta)
    }

    /// Mounts the volume for `holder` (a container id, or "cli"); a volume
    /// already mounted is shared, and the holder is counted.
    pub fn mount(&self, name: &str, holder: &str) -> io::Result<PathBuf> {
        let _lock = self.store.lock()?;
        let mut meta = self.store.load(name)?;
        let mp = self.mountpoint(name);
        if let Some(h) = crate::live::held_elsewhere(&self.store.dir(name)) {
            return Err(err(format!(
                "volume {name} is mounted on another host ({h}): unmount it there first"
            )));
        }
        // A daemon unmounted a moment ago may still answer while it ends.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while !self.is_mounted_here(name)
            && self.is_mounted(name)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if !self.is_mounted_here(name) && self.is_mounted(name) {
            return Err(err(format!(
                "volume {name} is mounted in another mount namespace (its daemon answers on {}): use it there, or unmount it there first",
                crate::live::control_socket(&self.store.dir(name)).display()
            )));
        }
        if !self.is_mounted(name) {
            self.repair(&mut meta)?;
            let dir = self.store.dir(name);
            for d in ["upper", "work", "merged"] {
                fs::create_dir_all(dir.join(d))?;
            }
            let mut opts = stack_options(
                &self.store.lower_stack(&meta)?,
                Some((&dir.join("upper"), &dir.join("work"))),
            )?;
            // The control socket through which a snapshot is taken while
            // the volume is in use (see `live`).
            let socket = crate::live::control_socket(&dir);
            let socket = layerfs::options::encode_path(&socket).map_err(|e| err(e.0))?;
            opts.push_str(&format!(",control={socket}"));
            opts.push_str(&self.capacity_options(&meta)?);
            run_layerfs(&opts, &mp)?;
            meta.holders.clear();
        }
        if !meta.holders.iter().any(|h| h == holder) {
            meta.holders.push(holder.to_string());
        }
        self.store.save(&meta)?;
        Ok(mp)
    }

    /// Drops `holder`'s use; the last one unmounts.
    pub fn unmount(&self, name: &str, holder: &str) -> io::Result<()> {
        let _lock = self.store.lock()?;
        let mut meta = self.store.load(name)?;
        meta.holders.retain(|h| h != holder);
        if meta.holders.is_empty() && in_proc_mounts(&self.mountpoint(name)) {
            unmount_dir(&self.mountpoint(name))?;
        }
        self.store.save(&meta)
    }

    /// After a restart: a volume whose mount is gone (host reboot, killed
    /// daemon) has no holders any more. Returns the volumes still mounted.
    pub fn recover(&self) -> io::Result<Vec<String>> {
        let _lock = self.store.lock()?;
        // Half-made or half-removed volumes of a killed process: creation,
        // import and removal hold the lock throughout, so none is running.
        for e in fs::read_dir(&self.store.root)? {
            let n = e?.file_name();
            let n = n.to_string_lossy();
            if n.starts_with(".new-") || n.starts_with(".rm-") {
                log::warn!("removing {n}, left by an interrupted create or rm");
                fs::remove_dir_all(self.store.root.join(&*n))?;
            }
        }
        let mut mounted = Vec::new();
        for name in self.store.list()? {
            let Ok(mut meta) = self.store.load(&name) else {
                continue;
            };
            crate::mounts::remove_stale_views(&self.store.dir(&name));
            if self.is_mounted(&name) {
                mounted.push(name);
            } else if !meta.holders.is_empty() {
                log::warn!(
                    "volume {name}: mount gone, forgetting holders {}",
                    meta.holders.join(", ")
                );
                meta.holders.clear();
                self.store.save(&meta)?;
            }
        }
        Ok(mounted)
    }

    /// Makes every hardlink set whole in the upper. When one name of a lower
    /// file with several names is written, layerfs copies it up under that
    /// name only and finds the copy for the other names through the work
    /// directory's index, as kernel overlayfs does. A layer read without
    /// that index (a snapshot, an export's view) would show the other names
    /// with the old content: so before the upper is read that way, each
    /// other name of a set that is partly in the upper is linked to the
    /// copy there (what the kernel's link-up does), its parents copied up
    /// first through a mount.
    pub(crate) fn settle_hardlinks(&self, meta: &Meta) -> io::Result<()> {
        let dir = self.store.dir(&meta.name);
        let index_empty = fs::read_dir(dir.join("work/index"))
            .map(|mut d| d.next().is_none())
            .unwrap_or(true);
        if index_empty {
            return Ok(());
        }
        let at = dir.join(format!(".settle-{}", std::process::id()));
        fs::create_dir_all(&at)?;
        let opts = stack_options(
            &self.store.lower_stack(meta)?,
            Some((&dir.join("upper"), &dir.join("work"))),
        )?;
        run_layerfs(&opts, &at)?;
        let view = View { dir: at };
        let mut groups: std::collections::HashMap<u64, Vec<PathBuf>> = Default::default();
        collect_linked(&view.dir, Path::new(""), &mut groups)?;
        let upper = dir.join("upper");
        let in_upper =
            |rel: &PathBuf| fs::symlink_metadata(upper.join(rel)).is_ok_and(|m| m.is_file());
        let mut links = Vec::new();
        for names in groups.values() {
            let Some(copy) = names.iter().find(|r| in_upper(r)) else {
                continue;
            };
            for rel in names.iter().filter(|r| !in_upper(r)) {
                // Copies the parent directories up (a chown to the same
                // owner), so that the name can be linked in the upper.
                if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
                    let p = view.dir.join(parent);
                    let md = fs::symlink_metadata(&p)?;
                    std::os::unix::fs::lchown(&p, Some(md.uid()), Some(md.gid()))?;
                }
                links.push((copy.clone(), rel.clone()));
            }
        }
        drop(view);
        for (copy, rel) in links {
            fs::hard_link(upper.join(&copy), upper.join(&rel))?;
        }
        Ok(())
    }

    /// What `inspect` prints.
    pub fn inspect(&self, name: &str) -> io::Result<serde_json::Value> {
        let meta = self.store.load(name)?;
        let mut layers = vec![self.store.dir(name).join("upper")];
        layers.extend(self.store.lower_stack(&meta)?);
        Ok(serde_json::json!({
            "Name": meta.name,
            "Created": rfc3339(meta.created),
            "Mountpoint": self.mountpoint(name),
            "Mounted": self.is_mounted(name),
            "Holders": meta.holders,
            "Size": meta.size,
            "Seeds": meta.seeds,
            "Base": meta.base.as_ref().map(|b: &Base| format!("{}@{}", b.volume, b.snapshot)),
            "Snapshots": meta.snapshots.iter().map(|s| serde_json::json!({
                "id": s.id,
                "created": rfc3339(s.created),
            })).collect::<Vec<_>>(),
            "Layers": layers,
        }))
    }
}

/// Regular files with several names under `root/rel`, grouped by inode.
fn collect_linked(
    root: &Path,
    rel: &Path,
    groups: &mut std::collections::HashMap<u64, Vec<PathBuf>>,
) -> io::Result<()> {
    for e in fs::read_dir(root.join(rel))? {
        let e = e?;
        let child = rel.join(e.file_name());
        let md = e.metadata()?;
        if md.is_dir() {
            collect_linked(root, &child, groups)?;
        } else if md.is_file() && md.nlink() > 1 {
            groups.entry(md.ino()).or_default().push(child);
        }
    }
    Ok(())
}

/// Empties a directory by replacing it (the work dir after its upper
/// changed: its index refers to the old upper).
fn reset_dir(dir: &Path) -> io::Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    fs::create_dir(dir)
}
