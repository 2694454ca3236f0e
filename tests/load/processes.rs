//! The load of `many_threads_mixed_operations_on_overlapping_names` from
//! many processes, as containers make it: the daemon sees each worker as a
//! pid with its own credentials.
//!
//! The mount is made as root, so it admits every user (`allow_other`)
//! and the kernel checks permissions on the attributes layerfs shows
//! (`default_permissions`), as the CLI mounts as root.
//!
//! The test re-executes its own binary once per worker (`worker_process`,
//! told which worker it is by `LAYERFS_LOAD_WORKER`); the odd workers
//! drop to uid 1000+i, with gid 1000+i or, for every other one, the group
//! `GROUP` of the setgid directory `grp/`. Each worker does
//! the threads' private and shared operations (its private directory and
//! lower files are its own; `shared/` and its lower directories are
//! sticky and world-writable, its lower files 0666, so racing owners get
//! EACCES and EPERM too) and, checked call by call against what
//! permissions say:
//! - on another worker's 0755 directory and its 0644 `keep` (non-root
//!   workers): reads succeed with the lower content; writing, creating,
//!   unlinking, renaming, mkdir answer EACCES; chmod, chown and a hard
//!   link (`fs.protected_hardlinks`) EPERM;
//! - in the sticky `sticky/`: its own `c{i}` comes and goes; another's
//!   `o{j}` (0666) may be written but not unlinked, renamed or replaced
//!   (EPERM);
//! - in the setgid `grp/` (root:`GROUP`, 2770): members create files and
//!   directories there, which take the group (and directories the setgid
//!   bit); others get EACCES, listing included.
//!
//! A worker stops when its stdin closes and reports on stdout (`LFSW`
//! lines): its operation count every 200 ms (the watchdog's progress), then
//! its errors, the errnos it saw, its private model and its own names.
//! The parent then checks each private directory against the model sent
//! (the sequential replay of what succeeded), every owner, and the tree as
//! the thread test does.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};

use super::*;

/// The group of the setgid directory, the primary group of a quarter of
/// the workers.
const GROUP: u32 = 2000;

#[derive(Debug, Clone, Copy)]
struct Who {
    uid: u32,
    gid: u32,
}

impl Who {
    fn root(self) -> bool {
        self.uid == 0
    }

    fn in_group(self) -> bool {
        self.root() || self.gid == GROUP
    }
}

/// Worker i's credentials: root for even i, else uid 1000+i with its own
/// group or `GROUP`.
fn who(i: usize) -> Who {
    if i % 2 == 0 {
        return Who { uid: 0, gid: 0 };
    }
    let id = 1000 + i as u32;
    Who {
        uid: id,
        gid: if i % 4 == 3 { GROUP } else { id },
    }
}

/// Errnos shared operations may get when their callers have different
/// owners: a sticky directory refuses to unlink or replace another's name,
/// a directory or file made by another is not writable.
fn expected_across_owners() -> Vec<i32> {
    let mut v = EXPECTED.to_vec();
    v.extend([libc::EACCES, libc::EPERM]);
    v
}

/// Gives the lowers their owners and modes (see the module comment), and
/// lets other users reach the mount.
fn across_owners(base: &Path, lowers: &[PathBuf], workers: usize) {
    chmod(base, 0o755);
    for l in lowers {
        let shared = l.join("shared");
        if !shared.exists() {
            continue;
        }
        chmod(&shared, 0o1777);
        for e in fs::read_dir(&shared).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                chmod(&e.path(), 0o1777);
                for f in fs::read_dir(e.path()).unwrap() {
                    chmod(&f.unwrap().path(), 0o666);
                }
            } else {
                chmod(&e.path(), 0o666);
            }
        }
    }
    let l1 = &lowers[1];
    for i in 0..workers {
        let w = who(i);
        let p = l1.join(format!("p{i}"));
        chown(&p, w.uid, w.gid);
        for q in PRIV_LOWER {
            chown(&p.join(q), w.uid, w.gid);
        }
        let o = l1.join(format!("sticky/o{i}"));
        write(&o, &block(&format!("lower:sticky/o{i}"), 0));
        chown(&o, w.uid, w.gid);
        chmod(&o, 0o666);
    }
    chmod(&l1.join("sticky"), 0o1777);
    let grp = l1.join("grp");
    mkdir(&grp);
    chown(&grp, 0, GROUP);
    chmod(&grp, 0o2770);
}

/// The names a worker makes outside its private directory.
#[derive(Default)]
struct Own {
    sticky: bool,
    grp_file: bool,
    grp_dir: bool,
}

/// Worker i's names outside its directory, in `Own`'s order.
fn own_paths(i: usize) -> [String; 3] {
    [
        format!("sticky/c{i}"),
        format!("grp/g{i}"),
        format!("grp/d{i}"),
    ]
}

impl Own {
    /// Those of `own_paths` that exist.
    fn existing(&self, i: usize) -> impl Iterator<Item = String> {
        let has = [self.sticky, self.grp_file, self.grp_dir];
        own_paths(i)
            .into_iter()
            .zip(has)
            .filter(|p| p.1)
            .map(|p| p.0)
    }
}

/// Another worker than i, at random.
fn other(i: usize, workers: usize, rng: &mut Rng) -> usize {
    (i + 1 + rng.below(workers as u64 - 1) as usize) % workers
}

type Outcome = (String, Result<(), i32>, Result<(), i32>);

fn en(r: io::Result<()>) -> Result<(), i32> {
    r.map_err(|e| errno(&e))
}

fn create_new(p: &Path) -> io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(p)
        .map(|_| ())
}

/// One operation on worker i's own names in `sticky/` and `grp/`.
fn own_op(
    mnt: &Path,
    i: usize,
    workers: usize,
    own: &mut Own,
    rng: &mut Rng,
) -> Result<(), String> {
    let me = who(i);
    let p = |r: String| mnt.join(r);
    // What a member gets; others cannot search `grp/`.
    let member = |r: Result<(), i32>| if me.in_group() { r } else { Err(libc::EACCES) };
    let exists = |b: bool, yes, no| if b { yes } else { no };
    let (what, got, want): Outcome = match rng.below(6) {
        0 => {
            let want = exists(own.sticky, Err(libc::EEXIST), Ok(()));
            own.sticky = true;
            (
                "create".into(),
                en(create_new(&p(format!("sticky/c{i}")))),
                want,
            )
        }
        1 => {
            let want = exists(own.sticky, Ok(()), Err(libc::ENOENT));
            own.sticky = false;
            (
                "unlink".into(),
                en(fs::remove_file(p(format!("sticky/c{i}")))),
                want,
            )
        }
        2 if !me.root() => {
            // Replacing another's name in a sticky directory.
            let j = other(i, workers, rng);
            let got = en(fs::rename(
                p(format!("sticky/c{i}")),
                p(format!("sticky/o{j}")),
            ));
            let want = exists(own.sticky, Err(libc::EPERM), Err(libc::ENOENT));
            ("rename over another's".into(), got, want)
        }
        2 => {
            let got = en(fs::symlink_metadata(p(format!("sticky/c{i}"))).map(|_| ()));
            (
                "stat".into(),
                got,
                exists(own.sticky, Ok(()), Err(libc::ENOENT)),
            )
        }
        3 | 4 => {
            // A file or a directory, made or removed.
            let dir = rng.chance(50);
            let (has, f) = if dir {
                (&mut own.grp_dir, p(format!("grp/d{i}")))
            } else {
                (&mut own.grp_file, p(format!("grp/g{i}")))
            };
            if rng.chance(50) {
                let want = member(exists(*has, Err(libc::EEXIST), Ok(())));
                *has |= want.is_ok();
                let got = en(if dir {
                    fs::create_dir(&f)
                } else {
                    create_new(&f)
                });
                if got.is_ok() {
                    check_group_owned(&f, me, dir)?;
                }
                (format!("make {f:?}"), got, want)
            } else {
                let want = member(exists(*has, Ok(()), Err(libc::ENOENT)));
                *has &= want.is_err();
                let got = en(if dir {
                    fs::remove_dir(&f)
                } else {
                    fs::remove_file(&f)
                });
                (format!("remove {f:?}"), got, want)
            }
        }
        _ => {
            let got = fs::read_dir(p("grp".into())).and_then(|rd| {
                rd.map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect::<io::Result<BTreeSet<String>>>()
            });
            match (got, me.in_group()) {
                (Ok(names), true) => {
                    let has = |n: String| names.contains(&n);
                    if has(format!("g{i}")) != own.grp_file || has(format!("d{i}")) != own.grp_dir {
                        return Err(format!(
                            "grp lists {names:?}: g{i} {} d{i} {} in the model",
                            own.grp_file, own.grp_dir
                        ));
                    }
                    return Ok(());
                }
                (got, member) => (
                    "list grp".into(),
                    got.map(|_| ()).map_err(|e| errno(&e)),
                    if member { Ok(()) } else { Err(libc::EACCES) },
                ),
            }
        }
    };
    if got != want {
        return Err(format!(
            "{what} (own names): {got:?}, permissions say {want:?}"
        ));
    }
    Ok(())
}

/// What is made in the setgid `grp/` has its group, directories its
/// setgid bit too, and the maker as owner.
fn check_group_owned(p: &Path, me: Who, dir: bool) -> Result<(), String> {
    let md = fs::symlink_metadata(p).map_err(|e| format!("stat {p:?}: {e}"))?;
    let setgid = md.mode() & libc::S_ISGID != 0;
    if md.uid() != me.uid || md.gid() != GROUP || setgid != dir {
        return Err(format!(
            "{p:?}: uid {} gid {} mode {:o}, made by uid {} in a setgid dir of group {GROUP}",
            md.uid(),
            md.gid(),
            md.mode(),
            me.uid
        ));
    }
    Ok(())
}

/// One operation of a non-root worker i on another worker's names, whose
/// outcome the permissions alone decide.
fn cross_op(
    sh: &Shared,
    i: usize,
    workers: usize,
    rng: &mut Rng,
    tag: &str,
    n: u64,
) -> Result<(), String> {
    let me = who(i);
    let j = other(i, workers, rng);
    let p = |r: String| sh.mnt.join(r);
    let keep = p(format!("p{j}/keep"));
    let mine = p(format!("p{i}/x"));
    let (acces, perm) = (Err(libc::EACCES), Err(libc::EPERM));
    let (what, got, want): Outcome = match rng.below(12) {
        0 => {
            let got = fs::read(&keep).map_err(|e| errno(&e));
            if got != Ok(block(&format!("lower:p{j}/keep"), 0)) {
                return Err(format!(
                    "read p{j}/keep (not ours): {:?}",
                    got.map(|d| d.len())
                ));
            }
            return Ok(());
        }
        1 => {
            let got = fs::OpenOptions::new().write(true).open(&keep).map(|_| ());
            ("open for write".into(), en(got), acces)
        }
        2 => (
            "create in".into(),
            en(create_new(&p(format!("p{j}/x{i}")))),
            acces,
        ),
        3 => ("unlink".into(), en(fs::remove_file(&keep)), acces),
        4 => {
            let got = en(fs::rename(&keep, p(format!("p{j}/y{i}"))));
            ("rename in its dir".into(), got, acces)
        }
        5 => (
            "rename to our dir".into(),
            en(fs::rename(&keep, &mine)),
            acces,
        ),
        6 => (
            "mkdir in".into(),
            en(fs::create_dir(p(format!("p{j}/x{i}")))),
            acces,
        ),
        7 => {
            let got = fs::set_permissions(&keep, fs::Permissions::from_mode(0o666));
            ("chmod".into(), en(got), perm)
        }
        8 => {
            let got = std::os::unix::fs::chown(&keep, Some(me.uid), None);
            ("chown to us".into(), en(got), perm)
        }
        9 if protected_hardlinks() => (
            "hard link to our dir".into(),
            en(fs::hard_link(&keep, &mine)),
            perm,
        ),
        9 | 10 => {
            let o = p(format!("sticky/o{j}"));
            if rng.chance(50) {
                ("unlink sticky/o".into(), en(fs::remove_file(&o)), perm)
            } else {
                let got = en(fs::rename(&o, p(format!("sticky/r{i}"))));
                ("rename sticky/o".into(), got, perm)
            }
        }
        _ => {
            // 0666 in a sticky directory: anyone may write it, as a copy-up
            // by a caller that does not own the file.
            let got = fs::OpenOptions::new()
                .write(true)
                .open(p(format!("sticky/o{j}")))
                .and_then(|f| f.write_all_at(&block(tag, n), 0));
            ("write sticky/o".into(), en(got), Ok(()))
        }
    };
    if got != want {
        return Err(format!(
            "{what} p{j} (uid {}) as uid {}: {got:?}, permissions say {want:?}",
            who(j).uid,
            me.uid
        ));
    }
    Ok(())
}

/// Whether the kernel refuses hard links to files the caller may not write
/// (`fs.protected_hardlinks`, on by default).
fn protected_hardlinks() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        fs::read_to_string("/proc/sys/fs/protected_hardlinks").is_ok_and(|v| v.trim() == "1")
    })
}

fn process_worker(sh: &Shared, i: usize, workers: usize, seed: u64) -> (Model, Own) {
    let me = who(i);
    let mut rng = Rng::new(seed ^ ((i as u64 + 1) * 0x1234_5678));
    let tag = format!("w{i}");
    let root = sh.mnt.join(format!("p{i}"));
    let mut m = Model::new(i);
    let mut own = Own::default();
    let mut n = 0u64;
    while !sh.stop.load(Ordering::Relaxed) {
        n += 1;
        let r = match rng.below(10) {
            0..=3 => private_op(&root, &mut m, &mut rng, &tag, n).map_err(|e| format!("p{i}: {e}")),
            4..=7 => shared_op(sh, &mut rng, &tag, n).map_err(|e| format!("shared ({tag}): {e}")),
            9 if !me.root() => cross_op(sh, i, workers, &mut rng, &tag, n),
            _ => own_op(&sh.mnt, i, workers, &mut own, &mut rng),
        };
        if let Err(e) = r {
            sh.fail(format!("worker {i} (uid {} gid {}): {e}", me.uid, me.gid));
            break;
        }
        sh.ops.fetch_add(1, Ordering::Relaxed);
    }
    (m, own)
}

/// A worker process, started by `many_processes_...` (it does nothing
/// without `LAYERFS_LOAD_WORKER`).
#[test]
#[ignore = "a worker of many_processes_mixed_operations_across_owners, which starts it"]
fn worker_process() {
    let Ok(i) = std::env::var("LAYERFS_LOAD_WORKER") else {
        return;
    };
    let i: usize = i.parse().unwrap();
    let mnt = PathBuf::from(std::env::var_os("LAYERFS_LOAD_MNT").unwrap());
    let workers = env_num("LAYERFS_LOAD_PROCS", 64) as usize;
    let seed = env_num("LAYERFS_LOAD_SEED", 1);
    let sh = Arc::new(Shared::new(&mnt, &expected_across_owners()));
    {
        let sh = Arc::clone(&sh);
        thread::spawn(move || {
            let _ = io::copy(&mut io::stdin(), &mut io::sink());
            sh.stop.store(true, Ordering::Relaxed);
        });
    }
    let done = Arc::new(AtomicBool::new(false));
    let progress = {
        let (sh, done) = (Arc::clone(&sh), Arc::clone(&done));
        thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                println!("LFSW ops {}", sh.ops.load(Ordering::Relaxed));
                thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let (model, own) = process_worker(&sh, i, workers, seed);
    done.store(true, Ordering::Relaxed);
    progress.join().unwrap();
    let mut out = io::stdout().lock();
    let mut line = |s: String| writeln!(out, "LFSW {s}").unwrap();
    line(format!("ops {}", sh.ops.load(Ordering::Relaxed)));
    for e in sh.errors.lock().unwrap().iter() {
        line(format!("error {}", e.replace('\n', " ")));
    }
    for d in sh.duplicates.lock().unwrap().iter() {
        line(format!("dup {d}"));
    }
    for (e, c) in sh.errno_counts.lock().unwrap().iter() {
        line(format!("errno {e} {c}"));
    }
    for (name, (nlink, h)) in digest(&model_listing(&model)) {
        let h = h.map_or("-".to_string(), |h| h.to_string());
        line(format!("model {name} {nlink} {h}"));
    }
    for name in own.existing(i) {
        line(format!("own {name}"));
    }
    line("end".into());
}

/// What a worker process sent back.
#[derive(Default)]
struct Report {
    ops: u64,
    errors: Vec<String>,
    duplicates: Vec<String>,
    errnos: BTreeMap<i32, u64>,
    model: Digest,
    own: BTreeSet<String>,
    ended: bool,
}

/// Reads a worker's `LFSW` lines until it exits; `ops` follows its count.
fn read_report(out: impl io::Read, ops: &AtomicU64) -> Report {
    let mut r = Report::default();
    for l in BufReader::new(out).lines() {
        let Ok(l) = l else { break };
        let Some(rest) = l.strip_prefix("LFSW ") else {
            continue;
        };
        let (key, val) = rest.split_once(' ').unwrap_or((rest, ""));
        let f: Vec<&str> = val.split(' ').collect();
        match key {
            "ops" => {
                r.ops = val.parse().unwrap_or(r.ops);
                ops.store(r.ops, Ordering::Relaxed);
            }
            "error" => r.errors.push(val.to_string()),
            "dup" => r.duplicates.push(val.to_string()),
            "errno" => {
                r.errnos
                    .insert(f[0].parse().unwrap(), f[1].parse().unwrap());
            }
            "model" => {
                let h = (f[2] != "-").then(|| f[2].parse().unwrap());
                r.model.insert(f[0].to_string(), (f[1].parse().unwrap(), h));
            }
            "own" => {
                r.own.insert(val.to_string());
            }
            "end" => r.ended = true,
            _ => {}
        }
    }
    r
}

/// The worker processes: killed if still running when dropped (a test
/// that fails early must not leave them in the mount).
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

#[test]
fn many_processes_mixed_operations_across_owners() {
    if !can_run() {
        return;
    }
    let secs = env_num("LAYERFS_LOAD_SECS", 40);
    let procs = env_num("LAYERFS_LOAD_PROCS", 64) as usize;
    let seed = env_num("LAYERFS_LOAD_SEED", 1);
    assert!(procs >= 2, "LAYERFS_LOAD_PROCS: at least 2");
    let mut st = Stack::mount(procs, |base, lowers| across_owners(base, lowers, procs));
    let exe = std::env::current_exe().unwrap();
    let mut workers = Workers(Vec::new());
    let mut stdins: Vec<ChildStdin> = Vec::new();
    let mut readers = Vec::new();
    let mut counts = Vec::new();
    for i in 0..procs {
        let mut c = Command::new(&exe);
        c.args(["--exact", "processes::worker_process", "--ignored"])
            .args(["--nocapture", "--test-threads=1"])
            .env("LAYERFS_LOAD_WORKER", i.to_string())
            .env("LAYERFS_LOAD_MNT", &st.m.dir)
            .env("LAYERFS_LOAD_PROCS", procs.to_string())
            .env("LAYERFS_LOAD_SEED", seed.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let w = who(i);
        if !w.root() {
            // std drops the supplementary groups (setgroups(0)), then sets
            // the gid and the uid.
            c.uid(w.uid).gid(w.gid);
        }
        let mut child = c.spawn().unwrap();
        stdins.push(child.stdin.take().unwrap());
        let out = child.stdout.take().unwrap();
        workers.0.push(child);
        let ops = Arc::new(AtomicU64::new(0));
        counts.push(Arc::clone(&ops));
        readers.push(thread::spawn(move || read_report(out, &ops)));
    }
    let total = || {
        counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let start = watch(secs, total, || readers.iter().all(|r| r.is_finished()));
    stdins.clear();
    wait_stopped(|| readers.iter().all(|r| r.is_finished()));
    let elapsed = start.elapsed().as_secs_f64();
    let reports: Vec<Report> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    let mut errnos = BTreeMap::<i32, u64>::new();
    let mut errors = Vec::new();
    for (i, (r, c)) in reports.iter().zip(&mut workers.0).enumerate() {
        let status = c.wait().unwrap();
        if !r.ended || !status.success() {
            errors.push(format!("worker {i} ended without its report: {status}"));
        }
        errors.extend(r.errors.iter().cloned());
        for (e, n) in &r.errnos {
            *errnos.entry(*e).or_default() += n;
        }
    }
    eprintln!(
        "{procs} processes ({} under other uids), seed {seed}: {} operations in {elapsed:.1} s; \
         expected errnos seen: {errnos:?}",
        procs / 2,
        reports.iter().map(|r| r.ops).sum::<u64>(),
    );
    assert!(
        errors.is_empty(),
        "errors under load:\n{}",
        errors.join("\n")
    );
    for (i, r) in reports.iter().enumerate() {
        // The private directory is the replay of what its worker did.
        st.check_private(i, &r.model);
        let w = who(i);
        let p = st.m.path(&format!("p{i}"));
        let mut owned = vec![p.clone()];
        owned.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        owned.push(st.m.path(&format!("sticky/o{i}")));
        for f in owned {
            let md = fs::symlink_metadata(&f).unwrap();
            assert_eq!((md.uid(), md.gid()), (w.uid, w.gid), "owner of {f:?}");
        }
        for name in own_paths(i) {
            let exists = r.own.contains(&name);
            match fs::symlink_metadata(st.m.path(&name)) {
                Ok(md) => assert!(exists && md.uid() == w.uid, "{name}: uid {}", md.uid()),
                Err(e) => assert!(!exists && errno(&e) == libc::ENOENT, "{name}: {e}"),
            }
        }
    }
    st.check_after_run();
    let dups: Vec<String> = reports.into_iter().flat_map(|r| r.duplicates).collect();
    assert_no_duplicates(&dups);
}
