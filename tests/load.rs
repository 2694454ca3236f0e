//! Load: many threads doing mixed operations at once, and memory use
//! while walking a large tree.
//!
//! How "the tree equals a sequential replay of the operations that
//! succeeded" is checked: concurrent operations on the same names have no
//! single replay order an observer can reconstruct (two renames of one name
//! racing, a link racing an unlink), so the namespace is split in two.
//! - **Private names** (`p{i}/`, lower files in it included, so copy-ups
//!   happen): only thread `i` touches them, so its operations are a
//!   sequence. The thread keeps a model of its directory (names, which
//!   names are one inode, contents) and every result — success or errno,
//!   bytes read, listings, link counts — must be the model's, call by call;
//!   at the end the directory must equal the model.
//! - **Shared names** (`shared/`, with lower files, lower hard links and
//!   lower directories): every thread creates, writes, renames, links,
//!   unlinks, makes and removes directories and lists there at once. Only
//!   invariants are checked: no errno outside the ones racing callers can
//!   get, no listing with a name twice, every listed name can be stat'ed
//!   (or is gone by then), and afterwards every file holds a complete write
//!   (all writes are one 1 KiB request: a lower file's content or a
//!   generated block naming its writer).
//!
//! A watchdog fails the test if no operation completes for 30 s. After the
//! run, kernel overlayfs (`index=on`) must read layerfs's upper as the same
//! tree, and the lowers must be unchanged.
//!
//! The same load also runs from 64 processes, half of them under other
//! uids and gids, with permission checks across owners (`load/processes.rs`).
//!
//! `LAYERFS_LOAD_SECS` (default 40) and `LAYERFS_LOAD_THREADS` (default 64)
//! size the run; `scripts/dev/load.sh` runs it for 5 minutes.

mod common;
#[path = "load/processes.rs"]
mod processes;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::hash::{Hash, Hasher};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Whether the test can run here (root, /dev/fuse, mount(8)); under CI
/// it must (common's skip rule).
fn can_run() -> bool {
    match missing(&["mount"]) {
        Some(why) => {
            cannot_run(&why);
            false
        }
        None => true,
    }
}

fn env_num(k: &str, default: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn hash_of<T: Hash>(v: T) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// Every shared write is exactly this long: one FUSE request, so racing
/// writers leave one whole block, never a mix of sizes.
const BLOCK: usize = 1024;

/// A 1 KiB block naming its writer and a sequence number.
fn block(tag: &str, n: u64) -> Vec<u8> {
    let mut v = format!("LFSL {tag} {n}\n").into_bytes();
    let mut s = hash_of((tag, n)) | 1;
    while v.len() < BLOCK {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v.push(s as u8);
    }
    v
}

fn block_ok(data: &[u8]) -> bool {
    let Some(nl) = data.iter().position(|&b| b == b'\n') else {
        return false;
    };
    let head = String::from_utf8_lossy(&data[..nl]);
    let f: Vec<&str> = head.split(' ').collect();
    f.len() == 3 && f[0] == "LFSL" && f[2].parse().is_ok_and(|n| block(f[1], n) == data)
}

const SHARED_FILES: usize = 12;
const SHARED_DIRS: usize = 4;

/// Lower files of each worker's private directory: its model starts
/// with them (`keep` its owner never touches: other workers aim at it).
const PRIV_LOWER: [&str; 3] = ["q0", "q1", "keep"];

/// The lowers: shared/ with files, hard links and directories, and for
/// each worker p{i}/ with its `PRIV_LOWER` files. Returns the lower
/// contents.
fn build_lowers(base: &Path, threads: usize) -> (Vec<PathBuf>, HashSet<Vec<u8>>) {
    let (l0, l1) = (base.join("l0"), base.join("l1"));
    let mut contents = HashSet::new();
    let mut put = |layer: &Path, rel: &str| {
        let c = block(&format!("lower:{rel}"), 0);
        contents.insert(c.clone());
        write(&layer.join(rel), &c);
    };
    for k in 0..SHARED_FILES {
        put(if k % 3 == 0 { &l0 } else { &l1 }, &format!("shared/n{k}"));
    }
    for k in 0..4 {
        // Lower hard links: copy-up through the index, from many threads.
        fs::hard_link(
            l1.join(format!("shared/n{}", k * 3 + 1)),
            l1.join(format!("shared/h{k}")),
        )
        .unwrap();
    }
    for d in 0..SHARED_DIRS {
        for k in 0..4 {
            put(
                if k == 0 { &l0 } else { &l1 },
                &format!("shared/sd{d}/n{k}"),
            );
        }
    }
    for i in 0..threads {
        for q in PRIV_LOWER {
            put(&l1, &format!("p{i}/{q}"));
        }
    }
    put(&l0, "top");
    (vec![l0, l1], contents)
}

/// Errnos racing callers on shared names may get.
const EXPECTED: &[i32] = &[
    libc::ENOENT,
    libc::EEXIST,
    libc::ENOTEMPTY,
    libc::EISDIR,
    libc::ENOTDIR,
    // rename of a directory into its own subtree
    libc::EINVAL,
];

struct Shared {
    mnt: PathBuf,
    /// Errnos shared operations may get (`EXPECTED`, and more where
    /// owners differ).
    expected: Vec<i32>,
    stop: AtomicBool,
    /// Completed operations; the watchdog looks at it.
    ops: AtomicU64,
    errors: Mutex<Vec<String>>,
    errno_counts: Mutex<BTreeMap<i32, u64>>,
    /// Listings that showed a name twice.
    duplicates: Mutex<Vec<String>>,
}

impl Shared {
    fn new(mnt: &Path, expected: &[i32]) -> Shared {
        Shared {
            mnt: mnt.to_path_buf(),
            expected: expected.to_vec(),
            stop: AtomicBool::new(false),
            ops: AtomicU64::new(0),
            errors: Mutex::new(Vec::new()),
            errno_counts: Mutex::new(BTreeMap::new()),
            duplicates: Mutex::new(Vec::new()),
        }
    }

    fn fail(&self, msg: String) {
        let mut e = self.errors.lock().unwrap();
        if e.len() < 50 {
            e.push(msg);
        }
    }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// A shared path from the pool: top-level names, names in lower dirs, in
/// created dirs.
fn shared_path(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => format!("shared/n{}", rng.below(SHARED_FILES as u64)),
        1 => format!("shared/h{}", rng.below(4)),
        2 => format!(
            "shared/sd{}/n{}",
            rng.below(SHARED_DIRS as u64 + 2),
            rng.below(5)
        ),
        _ => format!("shared/sd{}", rng.below(SHARED_DIRS as u64 + 2)),
    }
}

/// One random operation on shared names; Err only for an unexpected errno
/// or a broken invariant.
fn shared_op(sh: &Shared, rng: &mut Rng, tag: &str, n: u64) -> Result<(), String> {
    let p = |r: &str| sh.mnt.join(r);
    let a = shared_path(rng);
    let b = shared_path(rng);
    let op = rng.below(12);
    let r: io::Result<()> = match op {
        0 | 1 => fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(p(&a))
            .and_then(|f| f.write_all_at(&block(tag, n), 0)),
        2 => match fs::read(p(&a)) {
            Ok(d) if d.len() != BLOCK && !d.is_empty() => {
                return Err(format!("read {a}: {} bytes", d.len()))
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        },
        3 => fs::rename(p(&a), p(&b)),
        4 => match fs::hard_link(p(&a), p(&b)) {
            // Linking a directory (racing renames and mkdirs make
            // directories of every name, so whether `a` was one when the
            // call ran cannot be told afterwards).
            Err(e) if errno(&e) == libc::EPERM => Ok(()),
            r => r,
        },
        5 => fs::remove_file(p(&a)),
        6 => fs::create_dir(p(&a)),
        7 => fs::remove_dir(p(&a)),
        8 | 9 => {
            let dir = if rng.chance(50) {
                "shared".to_string()
            } else {
                a.clone()
            };
            match fs::read_dir(p(&dir)) {
                Ok(rd) => {
                    let mut seen = HashSet::new();
                    for e in rd {
                        let e = e.map_err(|e| format!("readdir {dir}: {e}"))?;
                        let name = e.file_name();
                        if !seen.insert(name.clone()) {
                            // Checked last, so that the rest is checked too.
                            sh.duplicates
                                .lock()
                                .unwrap()
                                .push(format!("{dir}: {name:?}"));
                        }
                        match fs::symlink_metadata(e.path()) {
                            Ok(_) => {}
                            Err(e) if sh.expected.contains(&errno(&e)) => {}
                            Err(e) => return Err(format!("stat {dir}/{name:?}: {e}")),
                        }
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        10 => fs::symlink_metadata(p(&a)).map(|_| ()),
        _ => {
            // Copy-up of a lower file by many at once: open for write.
            let f = format!("shared/h{}", rng.below(4));
            fs::OpenOptions::new().write(true).open(p(&f)).map(|_| ())
        }
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if sh.expected.contains(&errno(&e)) => {
            *sh.errno_counts
                .lock()
                .unwrap()
                .entry(errno(&e))
                .or_default() += 1;
            Ok(())
        }
        Err(e) => Err(format!("op {op} on {a} / {b}: {e}")),
    }
}

/// Thread i's model of its private directory: name -> inode, inode ->
/// content.
#[derive(Default)]
struct Model {
    names: BTreeMap<String, u64>,
    data: BTreeMap<u64, Vec<u8>>,
    dirs: BTreeSet<String>,
    next: u64,
}

impl Model {
    /// Worker i's directory as the lowers make it.
    fn new(i: usize) -> Model {
        let mut m = Model::default();
        for q in PRIV_LOWER {
            m.next += 1;
            m.names.insert(q.into(), m.next);
            m.data.insert(m.next, block(&format!("lower:p{i}/{q}"), 0));
        }
        m
    }

    fn nlink(&self, ino: u64) -> u64 {
        self.names.values().filter(|&&i| i == ino).count() as u64
    }
}

const PRIV_FILES: [&str; 6] = ["q0", "q1", "f0", "f1", "f2", "f3"];
const PRIV_DIRS: [&str; 2] = ["d0", "d1"];

/// One operation on thread i's private names, checked against the model.
fn private_op(root: &Path, m: &mut Model, rng: &mut Rng, tag: &str, n: u64) -> Result<(), String> {
    let f = |rng: &mut Rng| rng.pick(&PRIV_FILES).to_string();
    let (a, b) = (f(rng), f(rng));
    let pa = root.join(&a);
    let pb = root.join(&b);
    let en = |r: io::Result<()>| r.map_err(|e| errno(&e));
    let (what, got, want): (String, Result<(), i32>, Result<(), i32>) = match rng.below(9) {
        0 | 1 => {
            let data = block(tag, n);
            let got = en(fs::write(&pa, &data));
            let ino = match m.names.get(&a) {
                Some(&i) => i,
                None => {
                    m.next += 1;
                    m.names.insert(a.clone(), m.next);
                    m.next
                }
            };
            m.data.insert(ino, data);
            (format!("write {a}"), got, Ok(()))
        }
        2 => {
            let got = fs::read(&pa).map_err(|e| errno(&e));
            let want = m
                .names
                .get(&a)
                .map(|i| m.data[i].clone())
                .ok_or(libc::ENOENT);
            if got != want {
                return Err(format!(
                    "read {a}: {:?} bytes, model {:?} bytes",
                    got.map(|d| d.len()),
                    want.map(|d| d.len())
                ));
            }
            return Ok(());
        }
        3 => {
            let got = en(fs::rename(&pa, &pb));
            let want = match m.names.get(&a).copied() {
                None => Err(libc::ENOENT),
                Some(i) => {
                    // Renaming a name over another name of the same inode
                    // does nothing.
                    if m.names.get(&b) != Some(&i) {
                        m.names.remove(&a);
                        m.names.insert(b.clone(), i);
                    }
                    Ok(())
                }
            };
            (format!("rename {a} {b}"), got, want)
        }
        4 => {
            let got = en(fs::hard_link(&pa, &pb));
            let want = match (m.names.get(&a).copied(), m.names.contains_key(&b)) {
                (None, _) => Err(libc::ENOENT),
                (Some(_), true) => Err(libc::EEXIST),
                (Some(i), false) => {
                    m.names.insert(b.clone(), i);
                    Ok(())
                }
            };
            (format!("link {a} {b}"), got, want)
        }
        5 => {
            let got = en(fs::remove_file(&pa));
            let want = m.names.remove(&a).map(|_| ()).ok_or(libc::ENOENT);
            (format!("unlink {a}"), got, want)
        }
        6 => {
            let d = rng.pick(&PRIV_DIRS).to_string();
            let got = en(fs::create_dir(root.join(&d)));
            let want = if m.dirs.insert(d.clone()) {
                Ok(())
            } else {
                Err(libc::EEXIST)
            };
            (format!("mkdir {d}"), got, want)
        }
        7 => {
            let d = rng.pick(&PRIV_DIRS).to_string();
            let got = en(fs::remove_dir(root.join(&d)));
            let want = if m.dirs.remove(&d) {
                Ok(())
            } else {
                Err(libc::ENOENT)
            };
            (format!("rmdir {d}"), got, want)
        }
        _ => {
            let got = private_listing(root).map_err(|e| format!("list: {e}"))?;
            let want = model_listing(m);
            if got != want {
                return Err(format!("listing {got:?}, model {want:?}"));
            }
            return Ok(());
        }
    };
    if got != want {
        return Err(format!("{what}: {got:?}, model says {want:?}"));
    }
    Ok(())
}

/// (name, nlink, content) of each entry of a private directory.
type Listing = BTreeMap<String, (u64, Option<Vec<u8>>)>;

fn private_listing(root: &Path) -> io::Result<Listing> {
    let mut out = BTreeMap::new();
    for e in fs::read_dir(root)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let md = fs::symlink_metadata(e.path())?;
        let content = if md.is_dir() {
            None
        } else {
            Some(fs::read(e.path())?)
        };
        let nlink = if md.is_dir() { 0 } else { md.nlink() };
        if out.insert(name.clone(), (nlink, content)).is_some() {
            return Err(io::Error::other(format!("{name} listed twice")));
        }
    }
    Ok(out)
}

/// A listing with each content as its hash: what a worker process
/// sends back of its model.
type Digest = BTreeMap<String, (u64, Option<u64>)>;

fn digest(l: &Listing) -> Digest {
    l.iter()
        .map(|(n, (nlink, c))| (n.clone(), (*nlink, c.as_ref().map(hash_of))))
        .collect()
}

fn model_listing(m: &Model) -> Listing {
    let mut out: Listing = m
        .names
        .iter()
        .map(|(n, i)| (n.clone(), (m.nlink(*i), Some(m.data[i].clone()))))
        .collect();
    for d in &m.dirs {
        out.insert(d.clone(), (0, None));
    }
    out
}

fn worker(sh: &Shared, i: usize, seed: u64) -> Model {
    let mut rng = Rng::new(seed ^ ((i as u64 + 1) * 0x1234_5678));
    let tag = format!("t{i}");
    let root = sh.mnt.join(format!("p{i}"));
    let mut m = Model::new(i);
    let mut n = 0u64;
    while !sh.stop.load(Ordering::Relaxed) {
        n += 1;
        let r = if rng.chance(50) {
            private_op(&root, &mut m, &mut rng, &tag, n).map_err(|e| format!("p{i}: {e}"))
        } else {
            shared_op(sh, &mut rng, &tag, n).map_err(|e| format!("shared ({tag}): {e}"))
        };
        if let Err(e) = r {
            sh.fail(e);
            break;
        }
        sh.ops.fetch_add(1, Ordering::Relaxed);
    }
    m
}

/// The stack a load run works on: lowers (with their fingerprints and
/// contents) and layerfs mounted over them with an upper.
struct Stack {
    t: tempfile::TempDir,
    lowers: Vec<PathBuf>,
    before: Vec<BTreeMap<Vec<u8>, Node>>,
    lower_contents: HashSet<Vec<u8>>,
    upper: PathBuf,
    work: PathBuf,
    m: Mounted,
}

impl Stack {
    /// Builds the lowers for `workers`, lets `adjust` change them (owners,
    /// modes), and mounts.
    fn mount(workers: usize, adjust: impl FnOnce(&Path, &[PathBuf])) -> Stack {
        let t = tempfile::Builder::new()
            .prefix("lfsload")
            .tempdir()
            .unwrap();
        let (lowers, lower_contents) = build_lowers(t.path(), workers);
        adjust(t.path(), &lowers);
        let before: Vec<_> = lowers.iter().map(|l| fingerprint(l)).collect();
        let (opts, upper, work) = rw_opts_tagged(t.path(), "", &lowers, "");
        let m = try_mount_layerfs(&opts, &t.path().join("m")).unwrap();
        Stack {
            t,
            lowers,
            before,
            lower_contents,
            upper,
            work,
            m,
        }
    }

    /// Fails unless worker i's directory is its model's.
    fn check_private(&self, i: usize, model: &Digest) {
        let got = digest(&private_listing(&self.m.path(&format!("p{i}"))).unwrap());
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            model.keys().collect::<Vec<_>>(),
            "p{i}"
        );
        assert!(
            &got == model,
            "p{i}: contents or link counts differ from the model"
        );
    }

    /// The checks after a run: every file holds a whole write, kernel
    /// overlayfs reads the upper as the same tree, the lowers are
    /// unchanged. Unmounts layerfs.
    fn check_after_run(&mut self) {
        let tree = snapshot(&self.m.dir);
        let mut bad = Vec::new();
        for (k, n) in &tree {
            if let Some(d) = &n.content {
                if !(d.is_empty() || self.lower_contents.contains(d) || block_ok(d)) {
                    bad.push(format!("{}: not a whole write", String::from_utf8_lossy(k)));
                }
            }
        }
        assert!(bad.is_empty(), "{}", bad.join("\n"));
        self.m.unmount();
        let k = mount_kernel(
            &self.lowers,
            &self.t.path().join("k"),
            &format!(
                "upperdir={},workdir={},index=on,redirect_dir=on,metacopy=off",
                self.upper.display(),
                self.work.display()
            ),
        );
        // Inode numbers are left out: while the kernel still holds the
        // number of a deleted object, layerfs shows a new object under
        // another one, which kernel overlayfs does not (README, known
        // limitations).
        // Directory times too: a create racing a copy-up into one
        // directory can have its mtime put back by the copy-up (which
        // restores the times it read before its rename), while the
        // kernel's cached attributes of the directory show the create's
        // (README, known limitations). Copy-ups racing each other keep
        // the times (`concurrent_copy_ups_keep_the_parent_times`).
        let cmp = Compare {
            ino: false,
            dir_mtime: false,
            ..Compare::ALL
        };
        let d = diff(&tree, &snapshot(&k.dir), cmp);
        assert!(
            d.is_empty(),
            "kernel overlayfs reads another tree:\n{}",
            d.join("\n")
        );
        drop(k);
        for (l, b) in self.lowers.iter().zip(&self.before) {
            let d = diff(b, &fingerprint(l), Compare::ALL);
            assert!(d.is_empty(), "lower {l:?} changed:\n{}", d.join("\n"));
        }
    }
}

/// Runs for `secs` or until `finished`, failing if `ops` (operations
/// completed so far) stays still for 30 s. Returns when the run began.
fn watch(secs: u64, ops: impl Fn() -> u64, finished: impl Fn() -> bool) -> Instant {
    let start = Instant::now();
    let (mut last_ops, mut last_progress) = (0, Instant::now());
    while start.elapsed() < Duration::from_secs(secs) {
        thread::sleep(Duration::from_millis(200));
        let ops = ops();
        if ops != last_ops {
            (last_ops, last_progress) = (ops, Instant::now());
        }
        assert!(
            last_progress.elapsed() < Duration::from_secs(30),
            "deadlock: no operation completed for 30 s ({ops} done)"
        );
        if finished() {
            break;
        }
    }
    start
}

/// Waits up to 30 s for `finished` after the stop.
fn wait_stopped(finished: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !finished() {
        assert!(
            Instant::now() < deadline,
            "deadlock: workers still in an operation 30 s after the stop"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn assert_no_duplicates(dups: &[String]) {
    assert!(
        dups.is_empty(),
        "{} listings showed a name twice (a readdir cookie whose snapshot was \
         dropped resumes by index in a newer one), e.g. {:?}",
        dups.len(),
        &dups[..dups.len().min(5)]
    );
}

#[test]
fn many_threads_mixed_operations_on_overlapping_names() {
    require!("mount");
    let secs = env_num("LAYERFS_LOAD_SECS", 40);
    let threads = env_num("LAYERFS_LOAD_THREADS", 64) as usize;
    let seed = env_num("LAYERFS_LOAD_SEED", 1);
    let mut st = Stack::mount(threads, |_, _| {});
    let sh = Arc::new(Shared::new(&st.m.dir, EXPECTED));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let sh = Arc::clone(&sh);
            thread::spawn(move || worker(&sh, i, seed))
        })
        .collect();
    let start = watch(
        secs,
        || sh.ops.load(Ordering::Relaxed),
        || handles.iter().all(|h| h.is_finished()),
    );
    sh.stop.store(true, Ordering::Relaxed);
    wait_stopped(|| handles.iter().all(|h| h.is_finished()));
    let models: Vec<Model> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ops = sh.ops.load(Ordering::Relaxed);
    let errors = sh.errors.lock().unwrap().clone();
    eprintln!(
        "{threads} threads, {ops} operations in {:.1} s; expected errnos seen: {:?}",
        start.elapsed().as_secs_f64(),
        sh.errno_counts.lock().unwrap()
    );
    assert!(
        errors.is_empty(),
        "errors under load:\n{}",
        errors.join("\n")
    );
    // Private names: the directory is the model's.
    for (i, model) in models.iter().enumerate() {
        st.check_private(i, &digest(&model_listing(model)));
    }
    st.check_after_run();
    assert_no_duplicates(&sh.duplicates.lock().unwrap());
}

/// A temp dir (named `prefix...`) with an empty lower `l0` and the path
/// of a lower `l1` for the caller to fill.
fn two_lowers(prefix: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
    mkdir(&l0);
    (t, l0, l1)
}

/// Copy-ups from many threads into the same directories leave the
/// directories' times as they were: each copy-up puts back the parent's
/// times after its rename, and two interleaved ones must not put back the
/// time the other's rename set.
#[test]
fn concurrent_copy_ups_keep_the_parent_times() {
    if !can_run() {
        return;
    }
    let (dirs, files, threads) = (8, 200, 16);
    let (t, l0, l1) = two_lowers("lfsload");
    let old = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    for d in 0..dirs {
        for f in 0..files {
            // Empty: no data to copy or fsync, so copy-ups come close
            // together.
            write(&l1.join(format!("d{d}/f{f}")), b"");
        }
        let dir = fs::File::open(l1.join(format!("d{d}"))).unwrap();
        dir.set_times(fs::FileTimes::new().set_modified(old).set_accessed(old))
            .unwrap();
    }
    let (opts, u, _w) = rw_opts_tagged(t.path(), "", &[l0, l1], "");
    let m = try_mount_layerfs(&opts, &t.path().join("m")).unwrap();
    let barrier = Arc::new(std::sync::Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|k| {
            let (mnt, barrier) = (m.dir.clone(), Arc::clone(&barrier));
            thread::spawn(move || {
                barrier.wait();
                for f in (k..files).step_by(threads) {
                    for d in 0..dirs {
                        let p = mnt.join(format!("d{d}/f{f}"));
                        fs::OpenOptions::new().write(true).open(&p).unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    drop(m);
    let changed: Vec<String> = (0..dirs)
        .filter_map(|d| {
            let got = fs::metadata(u.join(format!("d{d}")))
                .unwrap()
                .modified()
                .unwrap();
            (got != old).then(|| format!("d{d}: {got:?}"))
        })
        .collect();
    assert!(
        changed.is_empty(),
        "copy-ups changed the mtime of their directory in the upper, set to {old:?}: {changed:?}"
    );
}

// ---- memory -----------------------------------------------------------

/// Resident set size (KiB) and open fds of process `pid`.
fn rss_and_fds(pid: u32) -> (u64, usize) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    (rss, fds)
}

/// Walks `dir`, stat'ing every entry; returns how many.
fn walk_count(dir: &Path) -> u64 {
    let mut n = 0;
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = fs::symlink_metadata(e.path()).unwrap();
        n += 1;
        if md.is_dir() {
            n += walk_count(&e.path());
        }
    }
    n
}

fn drop_caches() {
    // Host-wide but harmless: the kernel forgets clean dentries and inodes,
    // which sends FORGET for every node of the walk.
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
}

/// The daemon's RSS (KiB) at the end of a walk, its RSS and open fds once
/// the kernel has forgotten the walk's inodes.
#[derive(Debug, Clone, Copy)]
struct WalkFigures {
    peak: u64,
    after: u64,
    fds: usize,
}

/// Builds `dirs` x `per_dir` empty files in a lower, walks the mount
/// (LAYERFS_WALKS, default 4, times) with the kernel's caches dropped after
/// each walk, and returns the daemon's figures at start and for each walk.
fn walk_memory(dirs: usize, per_dir: usize) -> Vec<WalkFigures> {
    let (t, l0, l1) = two_lowers("lfswalk");
    for d in 0..dirs {
        let dir = l1.join(format!("d{}/e{d}", d % 100));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..per_dir {
            fs::File::create(dir.join(format!("f{f}"))).unwrap();
        }
    }
    let (opts, _u, _w) = rw_opts_tagged(t.path(), "", &[l0, l1], "");
    let m = try_mount_layerfs(&opts, &t.path().join("m")).unwrap();
    let pid = daemon_pid(&m.dir).unwrap();
    let (rss, fds) = rss_and_fds(pid);
    let mut figures = vec![WalkFigures {
        peak: rss,
        after: rss,
        fds,
    }];
    let want = (dirs * (per_dir + 1) + dirs.min(100)) as u64;
    for _ in 0..env_num("LAYERFS_WALKS", 4) {
        let n = walk_count(&m.dir);
        assert_eq!(n, want, "entries walked");
        let peak = rss_and_fds(pid).0;
        drop_caches();
        // FORGETs arrive asynchronously.
        thread::sleep(Duration::from_millis(500));
        let (after, fds) = rss_and_fds(pid);
        figures.push(WalkFigures { peak, after, fds });
    }
    drop(m);
    figures
}

#[test]
fn walking_a_large_tree_keeps_memory_and_fds_flat() {
    require!("mount");
    let entries = env_num("LAYERFS_WALK_ENTRIES", 100_000) as usize;
    let per_dir = 100;
    let figures = walk_memory(entries / per_dir, per_dir);
    eprintln!("walk of {entries} entries: RSS KiB and fds at start and per walk: {figures:?}");
    // The inode table empties as the kernel forgets, and the daemon hands
    // the freed memory back (malloc_trim every 16384 FORGETs; glibc alone
    // keeps a walk's peak, about 600 bytes per entry). Once the kernel has
    // forgotten a walk, the RSS is within 32 MiB plus 32 bytes per entry of
    // the start, or (when another process's drop_caches kept the walk's
    // peak low) at most half of what the walk added stays, plus 16 MiB.
    let start = figures[0].after;
    let flat = start + 32 * 1024 + entries as u64 * 32 / 1024;
    for f in &figures[1..] {
        let half = start + 16 * 1024 + f.peak.saturating_sub(start) / 2;
        assert!(
            f.after <= flat || f.after <= half,
            "the RSS stays near the walk's peak after the kernel forgot it: {figures:?}"
        );
    }
    for f in &figures {
        assert!(f.fds <= figures[0].fds + 16, "open fds grow: {figures:?}");
    }
}
