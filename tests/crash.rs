//! Crash at any point: the daemon is killed with SIGKILL at random moments
//! of heavy mixed work, then the same directories are mounted again and
//! checked.
//!
//! Six workers run at once, each on objects only it touches, so that what
//! may be visible after a kill is known exactly:
//! - `own/`: whole-file replacements (write a temp file, fsync, rename,
//!   fsync the directory) — what was fsync'ed must be there whole;
//! - `big/`: copy-up of large lower files (open for write, a marker at
//!   offset 0, fsync);
//! - `hl/`: copy-up of lower hard links through `WORKDIR/index`, new links
//!   to them (index linking) and removal of some of their names;
//! - `mv/`: renames of lower directories (redirects), some merged;
//! - `rm/`: emptying and rmdir of merged directories (whiteouts), then
//!   mkdir over the whiteout (an opaque directory) with a file in it;
//! - `files/`: whiteouts of lower files, atomic re-creation, renames over
//!   lower files.
//!
//! Every byte a worker writes is recognisable (a header naming the file
//! and generation, then bytes derived from them; or a marker over a lower
//! file's first bytes), so any file whose content is neither a lower
//! file's nor a complete write is a half-copied or torn file.
//!
//! After each kill: layerfs mounts the same directories again (clearing the
//! dead mount itself), `WORKDIR/work` is empty, every file is whole, every
//! fsync'ed write is there, each worker's objects are in a state its
//! operations allow (a renamed directory in exactly one place, an rmdir'ed
//! directory gone or showing a suffix of its entries, an opaque directory
//! showing nothing from below, all names of a hard-link set one file), no
//! index entry is left without a name, kernel overlayfs (`index=on`) reads
//! the upper as the same tree, and the lowers are byte-identical.
//!
//! Where each kill lands is decided by the seed: odd rounds end the daemon
//! at its Nth step that changes a layer (`LAYERFS_CRASH_AT=any:N`, the
//! daemon's own crash point, so the kill falls between two syscalls of a
//! multi-step change rather than wherever the clock says), even rounds and
//! any round whose step is not reached in time by `kill -9` after a seeded
//! delay. The workers' interleaving is still the scheduler's, so a round
//! replays the same kill points, not the same history.
//!
//! `LAYERFS_CRASH_KILLS` (default 50) sets the number of kills and
//! `LAYERFS_CRASH_SEED` (default 1) the seed; a failure prints both, and
//! `LAYERFS_CRASH_SEED=S LAYERFS_CRASH_KILLS=R+1 cargo test --release
//! --test crash` replays the run up to round R. `scripts/dev/crash.sh` runs a
//! long series.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const NB: usize = 6; // big lower files
const BIG_LEN: usize = 8 << 20;
const NS: usize = 24; // lower hard-link sets
const HL_LEN: usize = 256 << 10;
const NM: usize = 8; // lower directories to rename
const NR: usize = 8; // merged directories to remove
const NF: usize = 12; // lower files to white out
const NW: usize = 8; // files replaced whole in own/
const MARK_LEN: usize = 48;
/// The order in which rm/rK's entries are removed (p* from the top layer,
/// q* from the bottom one): a crash leaves a suffix of it.
const RM_ENTRIES: [&str; 5] = ["p0", "p1", "q0", "q1", "q2"];
/// The places mv/dK moves through, in turn.
const MV_PLACES: [&str; 3] = ["mv/d{}", "mv/d{}.r", "mv/sub/d{}"];
/// Resetting hl/ (upper copies and index) every this many kills brings
/// copy-ups through the index back into the mix.
const HL_RESET_EVERY: usize = 6;

fn mv_place(i: usize, k: usize) -> String {
    MV_PLACES[i].replace("{}", &k.to_string())
}

fn hash_of<T: Hash>(v: T) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// `len` bytes derived from `seed` (xorshift64*).
fn bytes_of(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        out.extend_from_slice(&s.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The content of the lower file at `rel`.
fn lower_content(rel: &str, len: usize) -> Vec<u8> {
    bytes_of(hash_of(("lower", rel)), len)
}

/// A complete write of generation `gen` of `name`: a header, then bytes
/// derived from both.
fn generated(name: &str, gen: u64, len: usize) -> Vec<u8> {
    let mut v = format!("LFSC {name} {gen} {len}\n").into_bytes();
    v.extend_from_slice(&bytes_of(hash_of((name, gen)), len));
    v
}

/// The (name, generation) of a complete generated content, None if torn.
fn parse_generated(data: &[u8]) -> Option<(String, u64)> {
    let nl = data.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&data[..nl]).ok()?;
    let f: Vec<&str> = head.split(' ').collect();
    if f.len() != 4 || f[0] != "LFSC" {
        return None;
    }
    let gen: u64 = f[2].parse().ok()?;
    let len: usize = f[3].parse().ok()?;
    (generated(f[1], gen, len) == data).then(|| (f[1].to_string(), gen))
}

/// The marker written over the first bytes of lower file `base`.
fn marker(base: &str, gen: u64) -> Vec<u8> {
    let mut m = format!("MARK {base} {gen:010}").into_bytes();
    m.resize(MARK_LEN - 1, b' ');
    m.push(b'\n');
    m
}

/// The generation of the marker `data` starts with (None: no marker, the
/// lower content); Err if it is neither, or the rest is not `lower`'s.
fn marker_gen(data: &[u8], base: &str, lower: &[u8]) -> Result<Option<u64>, String> {
    if data.len() != lower.len() {
        return Err(format!("size {} instead of {}", data.len(), lower.len()));
    }
    if data == lower {
        return Ok(None);
    }
    if data[MARK_LEN..] != lower[MARK_LEN..] {
        return Err("content after the marker is not the lower file's".into());
    }
    let head = String::from_utf8_lossy(&data[..MARK_LEN]);
    let gen = head
        .split_whitespace()
        .nth(2)
        .and_then(|g| g.parse::<u64>().ok())
        .ok_or_else(|| format!("bad marker {head:?}"))?;
    if data[..MARK_LEN] != marker(base, gen)[..] {
        return Err(format!("torn marker {head:?}"));
    }
    Ok(Some(gen))
}

fn hl_name(k: usize, which: &str) -> String {
    format!("s{k:02}_{which}")
}

/// Builds the two lower layers; returns them and the set of every lower
/// file's content hash.
fn build_lowers(base: &Path) -> (Vec<PathBuf>, HashSet<u64>) {
    let (l0, l1) = (base.join("l0"), base.join("l1"));
    let mut contents = HashSet::new();
    let mut put = |layer: &Path, rel: &str, len: usize| {
        let c = lower_content(rel, len);
        contents.insert(hash_of(&c));
        write(&layer.join(rel), &c);
    };
    for k in 0..NB {
        put(&l1, &format!("big/b{k}"), BIG_LEN);
    }
    mkdir(&l1.join("hl/sub"));
    for k in 0..NS {
        let a = format!("hl/{}", hl_name(k, "a"));
        put(&l1, &a, HL_LEN);
        fs::hard_link(l1.join(&a), l1.join("hl").join(hl_name(k, "b"))).unwrap();
        fs::hard_link(l1.join(&a), l1.join("hl/sub").join(hl_name(k, "c"))).unwrap();
    }
    mkdir(&l1.join("mv/sub"));
    for k in 0..NM {
        for x in 0..4 {
            put(&l1, &format!("mv/d{k}/x{x}"), 4096);
        }
        if k % 2 == 0 {
            put(&l0, &format!("mv/d{k}/y"), 1000);
        }
    }
    for k in 0..NR {
        for e in RM_ENTRIES {
            let layer = if e.starts_with('p') { &l0 } else { &l1 };
            put(layer, &format!("rm/r{k}/{e}"), 700);
        }
    }
    for k in 0..NF {
        // Odd ones in the top layer, so whiteouts cover both.
        let layer = if k % 2 == 1 { &l0 } else { &l1 };
        put(layer, &format!("files/f{k}"), 2048);
        put(&l1, &format!("files/h{k}"), 2048);
    }
    mkdir(&l0.join("own"));
    (vec![l0, l1], contents)
}

/// What the workers have made durable and what they were doing.
#[derive(Default)]
struct Track {
    /// own/fK: (last generation fsync'ed and renamed into place, the one
    /// in flight).
    own: HashMap<usize, (Option<u64>, Option<u64>)>,
    /// big/bK and hl set K: (last marker fsync'ed, marker in flight).
    big: HashMap<usize, (Option<u64>, Option<u64>)>,
    hl: HashMap<usize, (Option<u64>, Option<u64>)>,
}

/// Shared by the workers of one run.
struct Ctx {
    mnt: PathBuf,
    killed: AtomicBool,
    errors: Mutex<Vec<String>>,
    track: Mutex<Track>,
    gen: AtomicU64,
    /// Operations completed per worker, to see that each got going.
    done: [AtomicU64; 6],
    seed: u64,
    /// The daemon's.
    pid: u32,
    /// The daemon ends itself at a seeded step this round.
    step_round: bool,
}

impl Ctx {
    fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
    fn next_gen(&self) -> u64 {
        self.gen.fetch_add(1, Ordering::Relaxed)
    }
}

fn fsync_dir(p: &Path) -> io::Result<()> {
    fs::File::open(p)?.sync_all()
}

/// Writes `data` to `tmp`, fsyncs it, renames it to `dst` and fsyncs the
/// directory: the usual atomic replacement.
fn replace_whole(tmp: &Path, dst: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = fs::File::create(tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    fs::rename(tmp, dst)?;
    fsync_dir(dst.parent().unwrap())
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

fn worker_own(c: &Ctx) -> io::Result<()> {
    match fs::create_dir(c.p("own")) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let mut rng = Rng::new(c.seed ^ 1);
    loop {
        let k = rng.below(NW as u64) as usize;
        let g = c.next_gen();
        c.track.lock().unwrap().own.entry(k).or_default().1 = Some(g);
        let name = format!("own/f{k}");
        let data = generated(&name, g, rng.below(200_000) as usize);
        replace_whole(&c.p(&format!("own/.t{k}")), &c.p(&name), &data)?;
        c.track.lock().unwrap().own.entry(k).or_default().0 = Some(g);
        c.done[0].fetch_add(1, Ordering::Relaxed);
    }
}

/// Writes a marker at offset 0 of `p` (copying it up first) and fsyncs.
fn mark(p: &Path, base: &str, g: u64) -> io::Result<()> {
    let f = fs::OpenOptions::new().write(true).open(p)?;
    f.write_all_at(&marker(base, g), 0)?;
    f.sync_all()
}

fn worker_big(c: &Ctx) -> io::Result<()> {
    let mut rng = Rng::new(c.seed ^ 2);
    loop {
        let k = rng.below(NB as u64) as usize;
        let base = format!("big/b{k}");
        let g = c.next_gen();
        c.track.lock().unwrap().big.entry(k).or_default().1 = Some(g);
        mark(&c.p(&base), &base, g)?;
        c.track.lock().unwrap().big.entry(k).or_default().0 = Some(g);
        c.done[1].fetch_add(1, Ordering::Relaxed);
    }
}

/// The visible names (relative to the mount) of hard-link set `k`.
fn hl_names(root: &Path, k: usize) -> io::Result<Vec<String>> {
    let prefix = hl_name(k, "");
    let mut out = Vec::new();
    for dir in ["hl", "hl/sub"] {
        for e in fs::read_dir(root.join(dir))? {
            let n = e?.file_name().to_string_lossy().into_owned();
            if n.starts_with(&prefix) {
                out.push(format!("{dir}/{n}"));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn worker_hl(c: &Ctx) -> io::Result<()> {
    let mut rng = Rng::new(c.seed ^ 3);
    loop {
        let k = rng.below(NS as u64) as usize;
        let names = hl_names(&c.mnt, k)?;
        if names.is_empty() {
            return Err(io::Error::other(format!("hl set {k} has no name")));
        }
        let base = format!("hl/{}", hl_name(k, "a"));
        // Copy-up through the index (the first time) and a durable marker.
        let g = c.next_gen();
        c.track.lock().unwrap().hl.entry(k).or_default().1 = Some(g);
        mark(&c.p(rng.pick(&names).as_str()), &base, g)?;
        c.track.lock().unwrap().hl.entry(k).or_default().0 = Some(g);
        // A new name for the indexed file.
        let new = format!("hl/{}", hl_name(k, &format!("l{g}")));
        fs::hard_link(c.p(rng.pick(&names).as_str()), c.p(&new))?;
        // Drop one, keeping at least two.
        let names = hl_names(&c.mnt, k)?;
        if names.len() > 2 {
            fs::remove_file(c.p(rng.pick(&names).as_str()))?;
        }
        c.done[2].fetch_add(1, Ordering::Relaxed);
    }
}

fn worker_mv(c: &Ctx) -> io::Result<()> {
    let mut rng = Rng::new(c.seed ^ 4);
    loop {
        let k = rng.below(NM as u64) as usize;
        let at = (0..MV_PLACES.len())
            .find(|&i| exists(&c.p(&mv_place(i, k))))
            .ok_or_else(|| io::Error::other(format!("mv/d{k} is nowhere")))?;
        let to = (at + 1) % MV_PLACES.len();
        fs::rename(c.p(&mv_place(at, k)), c.p(&mv_place(to, k)))?;
        c.done[3].fetch_add(1, Ordering::Relaxed);
    }
}

fn worker_rm(c: &Ctx) -> io::Result<()> {
    let mut rng = Rng::new(c.seed ^ 5);
    loop {
        let k = rng.below(NR as u64) as usize;
        let d = c.p(&format!("rm/r{k}"));
        if exists(&d) {
            let mut names: Vec<_> = fs::read_dir(&d)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<_>>()?;
            names.sort();
            for n in names {
                fs::remove_file(d.join(n))?;
            }
            fs::remove_dir(&d)?;
        } else {
            fs::create_dir(&d)?;
            let g = c.next_gen();
            // One write: the file is empty or whole after a crash.
            let mut f = fs::File::create(d.join("z"))?;
            f.write_all(&generated(&format!("rm/r{k}/z"), g, 200))?;
            f.sync_all()?;
        }
        c.done[4].fetch_add(1, Ordering::Relaxed);
    }
}

fn worker_files(c: &Ctx) -> io::Result<()> {
    let mut rng = Rng::new(c.seed ^ 6);
    loop {
        let k = rng.below(NF as u64) as usize;
        let (f, h) = (format!("files/f{k}"), format!("files/h{k}"));
        match fs::read(c.p(&f)) {
            Ok(d) if d == lower_content(&f, 2048) => fs::rename(c.p(&f), c.p(&h))?,
            Ok(_) => fs::remove_file(c.p(&f))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let data = generated(&f, c.next_gen(), 3000);
                replace_whole(&c.p(&format!("files/.t{k}")), &c.p(&f), &data)?;
            }
            Err(e) => return Err(e),
        }
        c.done[5].fetch_add(1, Ordering::Relaxed);
    }
}

type Worker = fn(&Ctx) -> io::Result<()>;

const WORKERS: [(&str, Worker); 6] = [
    ("own", worker_own),
    ("big", worker_big),
    ("hl", worker_hl),
    ("mv", worker_mv),
    ("rm", worker_rm),
    ("files", worker_files),
];

/// Whether `pid` is still running (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Whether `pid` is gone within 2 s (a process killed by SIGKILL closes
/// its fds, and so ends its FUSE connection, before it is a zombie).
fn dies_soon(pid: u32) -> bool {
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        if !alive(pid) {
            return true;
        }
        thread::sleep(Duration::from_millis(5));
    }
    false
}

/// `d` of generation `g` is allowed when (synced, inflight) is `t`: at
/// least what was synced, at most what was in flight.
fn gen_allowed(got: Option<u64>, t: (Option<u64>, Option<u64>)) -> bool {
    match (got, t.0) {
        (None, None) => true,
        (None, Some(_)) => false,
        (Some(g), s) => s == Some(g) || t.1 == Some(g),
    }
}

type Tree = BTreeMap<Vec<u8>, Node>;

fn s(k: &[u8]) -> String {
    String::from_utf8_lossy(k).into_owned()
}

/// Every check of a tree seen after a crash; one message per problem.
fn check_tree(tree: &Tree, lower_hashes: &HashSet<u64>, track: &Track) -> Vec<String> {
    let mut bad = Vec::new();
    let file = |rel: &str| tree.get(rel.as_bytes()).and_then(|n| n.content.clone());
    // Every file is whole: a lower file's content, a complete write, or a
    // lower file under a complete marker.
    for (k, n) in tree {
        let Some(data) = &n.content else { continue };
        let rel = s(k);
        let base = rel.rsplit('/').next().unwrap_or("");
        if base.starts_with(".t") {
            continue; // an unsynced temp file may hold anything
        }
        if base == "z" && data.is_empty() {
            continue; // created, not yet written (checked below)
        }
        if lower_hashes.contains(&hash_of(data)) || parse_generated(data).is_some() {
            continue;
        }
        if data.starts_with(b"MARK ") && data.len() > MARK_LEN {
            let name = String::from_utf8_lossy(&data[5..MARK_LEN]);
            let name = name.split(' ').next().unwrap_or("").to_string();
            let len = if name.starts_with("big/") {
                BIG_LEN
            } else {
                HL_LEN
            };
            if marker_gen(data, &name, &lower_content(&name, len)).is_ok() {
                continue;
            }
        }
        bad.push(format!(
            "{rel}: content is neither a lower file's nor a complete write ({} bytes, starts {:?})",
            data.len(),
            String::from_utf8_lossy(&data[..data.len().min(40)])
        ));
    }
    // own/: every fsync'ed replacement is there whole.
    for k in 0..NW {
        let name = format!("own/f{k}");
        let t = track.own.get(&k).copied().unwrap_or_default();
        let got = file(&name).map(|d| parse_generated(&d).map(|(_, g)| g));
        match got {
            None if t.0.is_some() => bad.push(format!("{name}: fsync'ed {t:?} but missing")),
            Some(None) => bad.push(format!("{name}: torn")),
            Some(Some(g)) if !gen_allowed(Some(g), t) => {
                bad.push(format!("{name}: generation {g}, expected {t:?}"))
            }
            _ => {}
        }
    }
    // big/: the marker fsync'ed last, or the one in flight.
    for k in 0..NB {
        let name = format!("big/b{k}");
        let t = track.big.get(&k).copied().unwrap_or_default();
        match file(&name).map(|d| marker_gen(&d, &name, &lower_content(&name, BIG_LEN))) {
            None => bad.push(format!("{name}: missing")),
            Some(Err(e)) => bad.push(format!("{name}: {e}")),
            Some(Ok(g)) if !gen_allowed(g, t) => {
                bad.push(format!("{name}: marker {g:?}, expected {t:?}"))
            }
            _ => {}
        }
    }
    // hl/: each set is one file under all its names.
    for k in 0..NS {
        let prefix = hl_name(k, "");
        let names: Vec<&Vec<u8>> = tree
            .keys()
            .filter(|p| {
                let p = s(p);
                (p.starts_with(&format!("hl/{prefix}"))
                    || p.starts_with(&format!("hl/sub/{prefix}")))
                    && !p.ends_with('/')
            })
            .collect();
        let base = format!("hl/{}", hl_name(k, "a"));
        if names.len() < 2 {
            bad.push(format!(
                "hl set {k}: {} names, expected 2 or more",
                names.len()
            ));
            continue;
        }
        let first = &tree[names[0]];
        for n in &names {
            let node = &tree[*n];
            if node.ino != first.ino || node.content != first.content {
                bad.push(format!(
                    "hl set {k}: {} and {} are not one file",
                    s(names[0]),
                    s(n)
                ));
            }
            if node.nlink != names.len() as u64 {
                bad.push(format!(
                    "hl set {k}: {} has nlink {} with {} names",
                    s(n),
                    node.nlink,
                    names.len()
                ));
            }
        }
        let t = track.hl.get(&k).copied().unwrap_or_default();
        let data = first.content.clone().unwrap_or_default();
        match marker_gen(&data, &base, &lower_content(&base, HL_LEN)) {
            Err(e) => bad.push(format!("hl set {k}: {e}")),
            Ok(g) if !gen_allowed(g, t) => {
                bad.push(format!("hl set {k}: marker {g:?}, expected {t:?}"))
            }
            _ => {}
        }
    }
    // mv/: each renamed directory in exactly one place, whole.
    for k in 0..NM {
        let at: Vec<String> = (0..MV_PLACES.len())
            .map(|i| mv_place(i, k))
            .filter(|p| tree.contains_key(p.as_bytes()))
            .collect();
        if at.len() != 1 {
            bad.push(format!("mv/d{k}: found at {at:?}"));
            continue;
        }
        let mut want: BTreeSet<String> = (0..4).map(|x| format!("x{x}")).collect();
        if k % 2 == 0 {
            want.insert("y".into());
        }
        let got = children(tree, &at[0]);
        if got != want {
            bad.push(format!("{}: entries {got:?}, expected {want:?}", at[0]));
        }
        for x in &got {
            let orig = format!("mv/d{k}/{x}");
            let len = if x == "y" { 1000 } else { 4096 };
            if file(&format!("{}/{x}", at[0])) != Some(lower_content(&orig, len)) {
                bad.push(format!("{}/{x}: not the lower content", at[0]));
            }
        }
    }
    // rm/: gone, a suffix of the removal order, or the opaque new one.
    for k in 0..NR {
        let d = format!("rm/r{k}");
        if !tree.contains_key(d.as_bytes()) {
            continue;
        }
        let got: Vec<String> = children(tree, &d).into_iter().collect();
        let suffix = (0..=RM_ENTRIES.len()).any(|i| got == RM_ENTRIES[i..]);
        let opaque = got.is_empty() || got == ["z"];
        if !suffix && !opaque {
            bad.push(format!("{d}: entries {got:?}"));
        }
        if got == ["z"] {
            let z = file(&format!("{d}/z")).unwrap_or_default();
            if !z.is_empty() && parse_generated(&z).is_none() {
                bad.push(format!("{d}/z: torn"));
            }
        }
    }
    // files/: whiteouts hide, renames over lower files move whole files.
    for k in 0..NF {
        let (f, h) = (format!("files/f{k}"), format!("files/h{k}"));
        if let Some(d) = file(&f) {
            if d != lower_content(&f, 2048) && parse_generated(&d).is_none() {
                bad.push(format!("{f}: unexpected content"));
            }
        }
        match file(&h) {
            None => bad.push(format!("{h}: missing")),
            Some(d) if d != lower_content(&h, 2048) && d != lower_content(&f, 2048) => {
                bad.push(format!("{h}: unexpected content"))
            }
            _ => {}
        }
    }
    bad
}

/// The names directly under `dir` in `tree`.
fn children(tree: &Tree, dir: &str) -> BTreeSet<String> {
    let prefix = format!("{dir}/");
    tree.keys()
        .map(|k| s(k))
        .filter_map(|k| {
            k.strip_prefix(&prefix)
                .filter(|r| !r.contains('/'))
                .map(str::to_string)
        })
        .collect()
}

/// Index entries must be regular files that still have a name: another
/// link, or (a copy-up stopped between the index link and the rename, as
/// kernel overlayfs can leave too) a lower name of their set still visible
/// and reading that copy.
fn check_index(index: &Path, l1: &Path, tree: &Tree) -> Vec<String> {
    let mut bad = Vec::new();
    let Ok(rd) = fs::read_dir(index) else {
        return bad;
    };
    // Lower set K by its file handle.
    let mut sets = HashMap::new();
    for k in 0..NS {
        let p = l1.join("hl").join(hl_name(k, "a"));
        let fd = layerfs::sys::open_path(&p, libc::O_PATH | libc::O_NOFOLLOW).unwrap();
        let h = layerfs::sys::name_to_handle(std::os::fd::AsFd::as_fd(&fd)).unwrap();
        sets.insert(h.bytes, k);
    }
    for e in rd {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let md = fs::symlink_metadata(e.path()).unwrap();
        if !md.is_file() {
            bad.push(format!("index/{name}: not a regular file"));
            continue;
        }
        let origin = getxattr(&e.path(), "trusted.overlay.origin")
            .ok()
            .and_then(|v| layerfs::origin::decode(&v));
        let Some(k) = origin.and_then(|o| sets.get(&o.handle.bytes).copied()) else {
            bad.push(format!("index/{name}: origin is no lower hard link"));
            continue;
        };
        if md.nlink() > 1 {
            continue;
        }
        let content = fs::read(e.path()).unwrap();
        let named = tree.iter().any(|(p, n)| {
            let p = s(p);
            (p.starts_with(&format!("hl/{}", hl_name(k, "")))
                || p.starts_with(&format!("hl/sub/{}", hl_name(k, ""))))
                && n.content.as_ref() == Some(&content)
        });
        if !named {
            bad.push(format!(
                "index/{name} (set {k}): nlink 1 and no name shows it"
            ));
        }
    }
    bad
}

/// How many mounts sit on `dir` (stacked ones included).
fn mounts_at(dir: &Path) -> usize {
    let want = dir.to_string_lossy().replace(' ', "\\040");
    fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(1) == Some(want.as_str()))
        .count()
}

fn kill9(pid: u32) {
    let st = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -9 {pid}");
}

fn env_num(k: &str, default: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn kill_9_at_any_point_of_mixed_work() {
    require!("mount");
    let kills = env_num("LAYERFS_CRASH_KILLS", 50) as usize;
    let seed = env_num("LAYERFS_CRASH_SEED", 1);
    let mut t = tempfile::Builder::new()
        .prefix("lfscrash")
        .tempdir()
        .unwrap();
    if std::env::var_os("LAYERFS_KEEP_TEST_DIRS").is_some() {
        t.disable_cleanup(true);
    }
    let base = t.path();
    let (lowers, lower_hashes) = build_lowers(base);
    let before: Vec<_> = lowers.iter().map(|l| fingerprint(l)).collect();
    let (u, w) = (base.join("upper"), base.join("work"));
    mkdir(&u);
    mkdir(&w);
    let opts = format!(
        "{},upperdir={},workdir={}",
        lowerdir_opt(&lowers),
        u.display(),
        w.display()
    );
    let kopts = format!(
        "upperdir={},workdir={},index=on,redirect_dir=on,metacopy=off",
        u.display(),
        w.display()
    );
    let mnt = base.join("m");
    let kmnt = base.join("k");
    let mut rng = Rng::new(seed);
    let mut track = Track::default();
    let mut gen = 1u64;
    let mut hits = [0usize; 6];
    // Kills that left a staged copy in the work dir, and index entries
    // with no upper name yet: evidence the kills cut copy-ups midway.
    let mut cut_staging = 0;
    let mut half_indexed = 0;
    let mut at_steps = 0;
    let started = Instant::now();
    for round in 0..kills {
        // ---- work, then SIGKILL at a random moment
        // Odd rounds: the daemon ends itself at a seeded step; the timer
        // below is then only the fallback.
        let step = (round % 2 == 1).then(|| 20 + rng.below(3000));
        let crash_at = step.map(|n| format!("any:{n}"));
        let env: Vec<(&str, &str)> = crash_at
            .as_deref()
            .map(|c| ("LAYERFS_CRASH_AT", c))
            .into_iter()
            .collect();
        let m = try_mount_layerfs_env(&opts, &mnt, &env).unwrap();
        let pid = daemon_pid(&mnt).expect("daemon pid");
        let ctx = Arc::new(Ctx {
            mnt: mnt.clone(),
            killed: AtomicBool::new(false),
            errors: Mutex::new(Vec::new()),
            track: Mutex::new(std::mem::take(&mut track)),
            gen: AtomicU64::new(gen),
            done: Default::default(),
            seed: seed ^ ((round as u64) << 8),
            pid,
            step_round: step.is_some(),
        });
        let handles: Vec<_> = WORKERS
            .iter()
            .map(|&(name, f)| {
                let c = Arc::clone(&ctx);
                thread::spawn(move || {
                    if let Err(e) = f(&c) {
                        // A daemon that ends at its crash point fails the
                        // worker before the test knows it is dead (ENOTCONN
                        // while it is still exiting, or a name the worker's
                        // checks then cannot find): an error is its doing if
                        // the daemon is gone within moments.
                        let dead = c.step_round && dies_soon(c.pid);
                        if !c.killed.load(Ordering::SeqCst) && !dead {
                            c.errors.lock().unwrap().push(format!("{name}: {e}"));
                        }
                    }
                })
            })
            .collect();
        let delay = 10 + rng.below(500);
        let until = Instant::now() + Duration::from_millis(delay);
        while Instant::now() < until && alive(pid) {
            thread::sleep(Duration::from_millis(2));
        }
        ctx.killed.store(true, Ordering::SeqCst);
        let self_ended = !alive(pid);
        at_steps += usize::from(self_ended);
        if !self_ended {
            kill9(pid);
        }
        let how = match (step, self_ended) {
            (Some(n), true) => format!("the daemon ended at its step {n}"),
            (Some(n), false) => format!("step {n} not reached: kill -9 after {delay} ms"),
            (None, _) => format!("kill -9 after {delay} ms"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while alive(pid) || handles.iter().any(|h| !h.is_finished()) {
            assert!(
                Instant::now() < deadline,
                "round {round}: daemon or workers still running 20 s after kill -9"
            );
            thread::sleep(Duration::from_millis(5));
        }
        for h in handles {
            h.join().unwrap();
        }
        // The dead mount stays: the next mount must clear it itself.
        std::mem::forget(m);
        let errors = std::mem::take(&mut *ctx.errors.lock().unwrap());
        assert!(
            errors.is_empty(),
            "round {round}: errors before the kill: {errors:?}"
        );
        for (i, d) in ctx.done.iter().enumerate() {
            if d.load(Ordering::Relaxed) > 0 {
                hits[i] += 1;
            }
        }
        gen = ctx.gen.load(Ordering::Relaxed);
        track = std::mem::take(&mut *ctx.track.lock().unwrap());

        // ---- mount again and check
        if fs::read_dir(w.join("work")).unwrap().next().is_some() {
            cut_staging += 1;
        }
        half_indexed += fs::read_dir(w.join("index"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().metadata().unwrap().nlink() == 1)
            .count();
        let mut m = try_mount_layerfs(&opts, &mnt)
            .unwrap_or_else(|e| panic!("round {round}: remount after kill -9: {e}"));
        let stacked = mounts_at(&mnt);
        assert_eq!(
            stacked, 1,
            "round {round}: {stacked} mounts on {mnt:?}: the dead one was not cleared"
        );
        let leftovers: Vec<_> = fs::read_dir(w.join("work"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            leftovers.is_empty(),
            "round {round}: work dir not emptied at mount: {leftovers:?}"
        );
        let tree = snapshot(&m.dir);
        let mut bad = check_tree(&tree, &lower_hashes, &track);
        bad.extend(check_index(&w.join("index"), &lowers[1], &tree));
        m.unmount();
        // Kernel overlayfs reads the same tree from the upper.
        let k = mount_kernel(&lowers, &kmnt, &kopts);
        let ktree = snapshot(&k.dir);
        drop(k);
        bad.extend(
            diff(&tree, &ktree, Compare::ALL)
                .into_iter()
                .map(|d| format!("layerfs vs kernel overlayfs: {d}")),
        );
        assert!(
            bad.is_empty(),
            "round {round} (seed {seed}, {how}; replay with LAYERFS_CRASH_SEED={seed} \
             LAYERFS_CRASH_KILLS={}, keep dirs with LAYERFS_KEEP_TEST_DIRS):\n{}",
            round + 1,
            bad.join("\n")
        );
        // What survived this crash is the baseline of the next round: an
        // in-flight write that got as far as its rename is there now.
        for k in 0..NW {
            let got = tree
                .get(format!("own/f{k}").as_bytes())
                .and_then(|n| n.content.as_deref())
                .and_then(parse_generated)
                .map(|(_, g)| g);
            track.own.insert(k, (got, None));
        }
        for k in 0..NS {
            let base = format!("hl/{}", hl_name(k, "a"));
            let got = tree
                .iter()
                .find(|(p, _)| s(p).starts_with(&format!("hl/{}", hl_name(k, ""))))
                .and_then(|(_, n)| n.content.as_deref())
                .and_then(|d| marker_gen(d, &base, &lower_content(&base, HL_LEN)).ok())
                .flatten();
            track.hl.insert(k, (got, None));
        }
        // ---- bring copy-ups back into the mix: forget some upper copies
        let _ = fs::remove_dir_all(u.join("big"));
        track.big.clear();
        if round % HL_RESET_EVERY == HL_RESET_EVERY - 1 {
            let _ = fs::remove_dir_all(u.join("hl"));
            for e in fs::read_dir(w.join("index")).unwrap() {
                fs::remove_file(e.unwrap().path()).unwrap();
            }
            track.hl.clear();
        }
        if round % 10 == 9 || round == kills - 1 {
            for (l, b) in lowers.iter().zip(&before) {
                let d = diff(b, &fingerprint(l), Compare::ALL);
                assert!(d.is_empty(), "lower {l:?} changed:\n{}", d.join("\n"));
            }
        }
    }
    eprintln!(
        "{kills} kills ({at_steps} at a seeded step) in {:.1} s; kills during work of each worker {:?}: {hits:?}; \
         {cut_staging} left a staged object in the work dir, {half_indexed} index entries without an upper name",
        started.elapsed().as_secs_f64(),
        WORKERS.map(|w| w.0)
    );
    // Every kind of operation was cut by kills, not just the fast ones.
    for (i, &h) in hits.iter().enumerate() {
        assert!(
            h * 2 >= kills,
            "worker {} was running at only {h} of {kills} kills",
            WORKERS[i].0
        );
    }
}
