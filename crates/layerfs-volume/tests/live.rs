//! Snapshots of volumes in use (the daemon's rotation through its control
//! socket), through the CLI with ordinary processes as the writers: open
//! files across snapshots, renames and unlinks racing the barrier,
//! hardlink sets across a rotation, a barrier that times out, and kill -9
//! of the CLI and of the daemon in the middle of a snapshot. Run as root.

#[path = "../../../tests/common/mod.rs"]
mod common;
mod vol_common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vol_common::{assert_record_prefix, record_writer, tree, Fixture};

/// The CLI on the fixture's store, to spawn (and kill).
fn cmd(st: &Fixture, args: &[&str]) -> Command {
    let mut c = Command::new(vol_common::bin());
    c.arg("--store").arg(&st.store).args(args);
    c
}

fn snapshots(st: &Fixture, name: &str) -> Vec<String> {
    st.ok(&["snapshots", name])
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// The files of the volume as it was at snapshot `id`, from its tar.
fn files_at(st: &Fixture, name: &str, id: &str) -> BTreeMap<String, Vec<u8>> {
    let tar = st.path(&format!("{name}-{id}.tar"));
    st.ok(&["export", name, "--to", id, "-o", tar.to_str().unwrap()]);
    let mut out = BTreeMap::new();
    let mut a = tar::Archive::new(fs::File::open(&tar).unwrap());
    let mut links = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        match e.header().entry_type() {
            tar::EntryType::Regular => {
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                out.insert(path, data);
            }
            tar::EntryType::Link => {
                let target = e.link_name().unwrap().unwrap();
                links.push((path, target.to_string_lossy().into_owned()));
            }
            _ => {}
        }
    }
    for (path, target) in links {
        let data = out[&target].clone();
        out.insert(path, data);
    }
    fs::remove_file(&tar).unwrap();
    out
}

fn append(path: &Path, data: &[u8]) {
    let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(data).unwrap();
}

#[test]
fn a_file_kept_open_for_writing_goes_on_across_snapshots() {
    require!();
    let st = Fixture::new();
    st.ok(&["create", "v"]);
    let mp = PathBuf::from(st.ok(&["mount", "v"]));
    let mut w = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(mp.join("log"))
        .unwrap();
    let r = fs::File::open(mp.join("log")).unwrap();
    let ino = fs::metadata(mp.join("log")).unwrap().ino();
    let mut expect = Vec::new();
    for i in 1..=4 {
        let rec = format!("record {i}\n");
        w.write_all(rec.as_bytes()).unwrap();
        w.sync_all().unwrap();
        expect.extend_from_slice(rec.as_bytes());
        st.ok(&["snapshot", "v", &format!("s{i}")]);
        // The same file, through the descriptors opened before.
        assert_eq!(w.metadata().unwrap().ino(), ino);
        assert_eq!(fs::metadata(mp.join("log")).unwrap().ino(), ino);
    }
    w.write_all(b"after\n").unwrap();
    expect.extend_from_slice(b"after\n");
    let mut seen = Vec::new();
    std::os::unix::fs::FileExt::read_at(&r, &mut [0; 0], 0).unwrap();
    (&r).read_to_end(&mut seen).unwrap();
    assert_eq!(seen, expect, "a reader opened before the snapshots");
    // Each snapshot holds the records written before it, and no later one.
    for i in 1..=4 {
        let files = files_at(&st, "v", &format!("s{i}"));
        let want: String = (1..=i).map(|k| format!("record {k}\n")).collect();
        assert_eq!(files["log"], want.as_bytes(), "snapshot s{i}");
    }
    drop((w, r));
    st.ok(&["umount", "v"]);
    let mp = PathBuf::from(st.ok(&["mount", "v"]));
    assert_eq!(fs::read(mp.join("log")).unwrap(), expect);
    st.ok(&["umount", "v"]);
}

#[test]
fn renames_and_unlinks_racing_the_barrier_are_whole_in_each_snapshot() {
    require!();
    let st = Fixture::new();
    st.ok(&["create", "v"]);
    let mp = PathBuf::from(st.ok(&["mount", "v"]));
    fs::create_dir(mp.join("a")).unwrap();
    fs::create_dir(mp.join("b")).unwrap();
    fs::write(mp.join("a/x"), b"the one x").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mover = {
        let (mp, stop, errors) = (mp.clone(), Arc::clone(&stop), Arc::clone(&errors));
        std::thread::spawn(move || {
            let (mut from, mut to) = (mp.join("a/x"), mp.join("b/x"));
            while !stop.load(Ordering::Relaxed) {
                if fs::rename(&from, &to).is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                std::mem::swap(&mut from, &mut to);
            }
        })
    };
    let churner = {
        let (mp, stop, errors) = (mp.clone(), Arc::clone(&stop), Arc::clone(&errors));
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Each file is made whole under a temp name, renamed into
                // place, and its predecessor unlinked.
                let tmp = mp.join(format!("u.tmp{i}"));
                let ok = fs::write(&tmp, format!("payload {i}\n").repeat(64)).is_ok()
                    && fs::rename(&tmp, mp.join(format!("u{i}"))).is_ok()
                    && (i == 0 || fs::remove_file(mp.join(format!("u{}", i - 1))).is_ok());
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        })
    };
    for i in 1..=12 {
        std::thread::sleep(Duration::from_millis(40));
        st.ok(&["snapshot", "v", &format!("s{i}")]);
    }
    stop.store(true, Ordering::Relaxed);
    mover.join().unwrap();
    churner.join().unwrap();
    assert_eq!(errors.load(Ordering::Relaxed), 0, "the writers saw errors");
    for i in 1..=12 {
        let files = files_at(&st, "v", &format!("s{i}"));
        let xs: Vec<_> = ["a/x", "b/x"]
            .iter()
            .filter(|p| files.contains_key(**p))
            .collect();
        assert_eq!(xs.len(), 1, "snapshot s{i}: exactly one x, not {xs:?}");
        assert_eq!(files[*xs[0]], b"the one x");
        let us: Vec<_> = files.keys().filter(|k| k.starts_with('u')).collect();
        assert!(us.len() <= 3, "snapshot s{i}: {us:?}");
        for u in us {
            let n = u.trim_start_matches("u.tmp").trim_start_matches('u');
            let want = format!("payload {n}\n").repeat(64);
            if !u.starts_with("u.tmp") {
                assert_eq!(files[u], want.as_bytes(), "snapshot s{i}: {u} whole");
            }
        }
    }
    st.ok(&["umount", "v"]);
}

#[test]
fn hardlink_sets_stay_one_file_across_rotations() {
    require!();
    let st = Fixture::new();
    let seed = st.path("seed");
    fs::create_dir_all(seed.join("d")).unwrap();
    fs::write(seed.join("h1"), b"seed\n").unwrap();
    fs::hard_link(seed.join("h1"), seed.join("h2")).unwrap();
    fs::hard_link(seed.join("h1"), seed.join("d/h3")).unwrap();
    st.ok(&["create", "v", "--from", seed.to_str().unwrap()]);
    let mp = PathBuf::from(st.ok(&["mount", "v"]));
    let ino = fs::metadata(mp.join("h1")).unwrap().ino();
    // A directory merged with the seed, in the upper too.
    fs::write(mp.join("d/mine"), b"mine\n").unwrap();
    let dir_ino = fs::metadata(mp.join("d")).unwrap().ino();
    // One name written: the set is in the upper by that name only.
    append(&mp.join("h1"), b"one\n");
    st.ok(&["snapshot", "v", "s1"]);
    append(&mp.join("d/h3"), b"two\n");
    // A set made in the upper, written after the rotation.
    fs::write(mp.join("n1"), b"new\n").unwrap();
    fs::hard_link(mp.join("n1"), mp.join("n2")).unwrap();
    st.ok(&["snapshot", "v", "s2"]);
    append(&mp.join("n2"), b"more\n");
    for name in ["h1", "h2", "d/h3"] {
        let md = fs::metadata(mp.join(name)).unwrap();
        assert_eq!(
            fs::read(mp.join(name)).unwrap(),
            b"seed\none\ntwo\n",
            "{name}"
        );
        assert_eq!((md.ino(), md.nlink()), (ino, 3), "{name}");
    }
    assert_eq!(fs::read(mp.join("n1")).unwrap(), b"new\nmore\n");
    assert_eq!(fs::metadata(mp.join("n1")).unwrap().nlink(), 2);
    // Listed again (readdirplus looks each entry up): the same numbers.
    let listed: Vec<_> = fs::read_dir(&mp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(listed.iter().any(|n| n == "d"));
    assert_eq!(fs::metadata(mp.join("d")).unwrap().ino(), dir_ino);
    assert_eq!(fs::metadata(mp.join("h2")).unwrap().ino(), ino);
    let s1 = files_at(&st, "v", "s1");
    for name in ["h1", "h2", "d/h3"] {
        assert_eq!(s1[name], b"seed\none\n", "s1: {name}");
    }
    let s2 = files_at(&st, "v", "s2");
    for name in ["h1", "h2", "d/h3"] {
        assert_eq!(s2[name], b"seed\none\ntwo\n", "s2: {name}");
    }
    assert_eq!(s2["n2"], b"new\n");
    st.ok(&["umount", "v"]);
    let mp = PathBuf::from(st.ok(&["mount", "v"]));
    for name in ["h1", "h2", "d/h3"] {
        assert_eq!(
            fs::read(mp.join(name)).unwrap(),
            b"seed\none\ntwo\n",
            "{name}"
        );
        assert_eq!(fs::metadata(mp.join(name)).unwrap().nlink(), 3, "{name}");
    }
    assert_eq!(fs::read(mp.join("n2")).unwrap(), b"new\nmore\n");
    st.ok(&["umount", "v"]);
}

/// Whether a layerfs daemon is building a copy: it holds open a file of
/// its work dir, whose names all start with `#` (a regular file's copy is
/// an unnamed O_TMPFILE file, `#INODE (deleted)`; other copies are staged
/// as `#lfs…`). The daemon reaches its work dir through a private clone of
/// the mount, so the path it shows is not the store's.
fn copy_under_way() -> bool {
    let Ok(procs) = fs::read_dir("/proc") else {
        return false;
    };
    procs
        .flatten()
        .filter(|p| {
            let cmd = fs::read(p.path().join("cmdline")).unwrap_or_default();
            cmd.split(|&b| b == 0)
                .next()
                .is_some_and(|a| a.ends_with(b"layerfs"))
        })
        .filter_map(|p| fs::read_dir(p.path().join("fd")).ok())
        .flat_map(|fds| fds.flatten())
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .any(|target| {
            target
                .file_name()
                .is_some_and(|n| n.as_encoded_bytes().starts_with(b"#"))
        })
}

#[test]
fn a_barrier_that_times_out_changes_nothing() {
    require!();
    let st = Fixture::new();
    let seed = st.path("seed");
    fs::create_dir_all(&seed).unwrap();
    // Copying this up holds a mutating request long enough.
    let mut f = fs::File::create(seed.join("big")).unwrap();
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..384 {
        f.write_all(&chunk).unwrap();
    }
    drop(f);
    st.ok(&["create", "v", "--from", seed.to_str().unwrap()]);
    let mp = PathBuf::from(st.ok(&["mount", "v"]));
    let dir = st.store.join("v");
    let mut upper_ino = 0;
    let mut kept = String::new();
    let mut before = Vec::new();
    let mut timed_out = false;
    for attempt in 0..5 {
        upper_ino = fs::metadata(dir.join("upper")).unwrap().ino();
        before = snapshots(&st, "v");
        kept = format!("kept{attempt}");
        fs::write(mp.join(&kept), b"before").unwrap();
        let name = mp.join("big");
        let writer = std::thread::spawn(move || append(&name, b"!"));
        // Wait until the copy-up is under way.
        let t0 = std::time::Instant::now();
        while !copy_under_way() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::yield_now();
        }
        let out = st.run(&["snapshot", "v", "--timeout", "1"]);
        writer.join().unwrap();
        if out.status.success() {
            // The copy-up ended first: this attempt proves nothing.
            eprintln!("attempt {attempt}: the copy-up ended before the barrier");
            continue;
        }
        let msg = common::output_text(&out);
        assert!(msg.contains("did not pause within 1 ms"), "{msg}");
        timed_out = true;
        break;
    }
    assert!(timed_out, "no barrier timed out in 5 attempts");
    // Nothing changed: no snapshot, the same upper, no new one left over.
    assert_eq!(snapshots(&st, "v"), before);
    assert!(!dir.join("upper.next").exists());
    assert_eq!(fs::metadata(dir.join("upper")).unwrap().ino(), upper_ino);
    assert!(fs::read(dir.join("upper").join(&kept)).is_ok());
    assert_eq!(fs::read(mp.join(&kept)).unwrap(), b"before");
    // And the next snapshot is taken.
    st.ok(&["snapshot", "v", "later"]);
    assert!(snapshots(&st, "v").contains(&"later".to_string()));
    st.ok(&["umount", "v"]);
}

#[test]
fn kill_9_of_the_cli_or_the_daemon_mid_snapshot_loses_nothing() {
    require!();
    let st = Fixture::new();
    st.ok(&["create", "v"]);
    let mp = PathBuf::from(st.ok(&["mount", "v"]));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let w = record_writer(mp.join("log"), Arc::clone(&stop), Arc::clone(&acked));
    // The CLI killed at moments spread over a snapshot's few milliseconds.
    for round in 0..16u64 {
        let mut child = cmd(&st, &["snapshot", "v"]).spawn().unwrap();
        std::thread::sleep(Duration::from_micros(500 * (round % 8) + 100 * round));
        let _ = child.kill();
        let _ = child.wait();
    }
    // The next snapshot finishes or forgets what the killed ones left.
    let before = acked.load(Ordering::SeqCst);
    st.ok(&["snapshot", "v", "after-kills"]);
    let files = files_at(&st, "v", "after-kills");
    assert_record_prefix(&files["log"], before, "after-kills");
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    let total = acked.load(Ordering::SeqCst);
    st.ok(&["umount", "v"]);
    assert!(!st.store.join("v/upper.next").exists());

    // The daemon killed inside its rotation, before and after the swap.
    let mut total = total;
    for (round, point) in ["rotate-stopped", "rotate-swapped"].iter().enumerate() {
        let out = cmd(&st, &["mount", "v"])
            .env("LAYERFS_CRASH_AT", point)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::output_text(&out));
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(total));
        let w = record_writer(mp.join("log"), Arc::clone(&stop), Arc::clone(&acked));
        std::thread::sleep(Duration::from_millis(50));
        let msg = st.fails(&["snapshot", "v", &format!("k{round}")]);
        assert!(!msg.is_empty());
        stop.store(true, Ordering::Relaxed);
        w.join().unwrap();
        total = acked.load(Ordering::SeqCst);
        // The mount is dead; the next mount repairs.
        let _ = Command::new("umount").arg("-l").arg(&mp).status();
        let mp2 = PathBuf::from(st.ok(&["mount", "v"]));
        assert_eq!(mp2, mp);
        let log = fs::read(mp.join("log")).unwrap();
        assert_record_prefix(&log, total, point);
        // A record written but not acknowledged may be there too.
        total = log.len() as u64 / 9;
        assert!(!st.store.join("v/upper.next").exists(), "{point}");
        st.ok(&["snapshot", "v", &format!("after-{point}")]);
        st.ok(&["umount", "v"]);
    }
    let mp = PathBuf::from(st.ok(&["mount", "v"]));
    assert_record_prefix(&fs::read(mp.join("log")).unwrap(), total, "the end");
    st.ok(&["umount", "v"]);
}

#[test]
fn snapshot_removal_and_compaction_under_a_running_writer() {
    require!();
    let st = Fixture::new();
    let seed = st.path("seed");
    fs::create_dir_all(seed.join("d/e")).unwrap();
    fs::write(seed.join("d/e/x"), b"seed x\n").unwrap();
    fs::write(seed.join("top"), b"seed top\n").unwrap();
    st.ok(&["create", "v", "--from", seed.to_str().unwrap()]);
    let mp = PathBuf::from(st.ok(&["mount", "v"]));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let w = record_writer(mp.join("log"), Arc::clone(&stop), Arc::clone(&acked));
    fs::write(mp.join("a"), b"a1\n").unwrap();
    st.ok(&["snapshot", "v", "s1"]);
    append(&mp.join("d/e/x"), b"s2\n");
    fs::write(mp.join("d/e/y"), b"y\n").unwrap();
    fs::create_dir(mp.join("d/f")).unwrap();
    fs::write(mp.join("d/f/z"), b"z\n").unwrap();
    st.ok(&["snapshot", "v", "s2"]);
    fs::remove_file(mp.join("a")).unwrap();
    fs::rename(mp.join("d/f"), mp.join("d/g")).unwrap();
    st.ok(&["snapshot", "v", "s3"]);
    append(&mp.join("top"), b"upper\n");
    // Held across the changes of the stack: a file and a directory.
    let held = fs::File::open(mp.join("d/e/x")).unwrap();
    let cwd = fs::File::open(mp.join("d/e")).unwrap();
    let before = tree(&mp);

    let msg = st.fails(&["snapshot-rm", "v", "s3"]);
    assert!(msg.contains("take another snapshot first"), "{msg}");
    st.ok(&["snapshot-rm", "v", "s2"]);
    assert_eq!(tree(&mp), before, "after snapshot-rm");
    assert_eq!(snapshots(&st, "v"), ["s1", "s3"]);
    assert!(!st.store.join("v/snapshots/s2").exists());
    st.ok(&["compact", "v"]);
    assert_eq!(tree(&mp), before, "after compact");
    assert_eq!(snapshots(&st, "v"), ["s3"]);
    let layers: Vec<_> = fs::read_dir(st.store.join("v/snapshots"))
        .unwrap()
        .collect();
    assert_eq!(layers.len(), 1, "old layers are gone");
    let mut seen = String::new();
    (&held).read_to_string(&mut seen).unwrap();
    assert_eq!(seen, "seed x\ns2\n");
    assert!(cwd.metadata().unwrap().is_dir());
    // The merged layer is a lower layer like any other.
    append(&mp.join("d/e/x"), b"after\n");
    fs::write(mp.join("d/g/new"), b"new\n").unwrap();
    let files = files_at(&st, "v", "s3");
    assert_eq!(files["d/e/x"], b"seed x\ns2\n");
    assert_eq!(files["d/g/z"], b"z\n");
    assert!(!files.contains_key("a") && !files.contains_key("d/f/z"));
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    let total = acked.load(Ordering::SeqCst);
    let now = tree(&mp);
    drop((held, cwd));
    st.ok(&["umount", "v"]);
    let mp = PathBuf::from(st.ok(&["mount", "v"]));
    let again = tree(&mp);
    let contents = |t: &BTreeMap<String, (Vec<u8>, u64)>| -> BTreeMap<String, Vec<u8>> {
        t.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect()
    };
    assert_eq!(contents(&again), contents(&now));
    assert_record_prefix(&fs::read(mp.join("log")).unwrap(), total, "log");
    st.ok(&["umount", "v"]);
}

#[test]
fn kill_9_of_the_cli_or_the_daemon_mid_compaction_loses_nothing() {
    require!();
    let st = Fixture::new();
    st.ok(&["create", "v"]);
    let mp = PathBuf::from(st.ok(&["mount", "v"]));
    let layered = |round: usize| {
        for i in 0..3 {
            fs::create_dir_all(mp.join(format!("r{round}/d{i}"))).unwrap();
            fs::write(
                mp.join(format!("r{round}/d{i}/f")),
                format!("{round} {i}\n"),
            )
            .unwrap();
            st.ok(&["snapshot", "v"]);
        }
    };
    let contents = |mp: &Path| -> BTreeMap<String, Vec<u8>> {
        tree(mp).into_iter().map(|(k, v)| (k, v.0)).collect()
    };
    // The CLI killed at moments spread over a compaction.
    for round in 0..6u64 {
        layered(round as usize);
        let before = contents(&mp);
        let mut child = cmd(&st, &["compact", "v"]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(3 * round + 1));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(contents(&mp), before, "round {round}: after the kill");
        st.ok(&["compact", "v"]);
        assert_eq!(contents(&mp), before, "round {round}: compacted");
        assert_eq!(snapshots(&st, "v").len(), 1);
    }
    // The views of the killed commands are gone with them.
    let left: Vec<_> = fs::read_dir(st.store.join("v"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".view-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    st.ok(&["umount", "v"]);
    // The daemon killed inside its restack, before and after the swap.
    for (round, point) in ["restack-stopped", "restack-swapped"].iter().enumerate() {
        let out = cmd(&st, &["mount", "v"])
            .env("LAYERFS_CRASH_AT", point)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::output_text(&out));
        layered(10 + round);
        let before = contents(&mp);
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let log = mp.join(format!("log{round}"));
        let w = record_writer(log.clone(), Arc::clone(&stop), Arc::clone(&acked));
        std::thread::sleep(Duration::from_millis(30));
        let _ = st.run(&["compact", "v"]);
        stop.store(true, Ordering::Relaxed);
        w.join().unwrap();
        let _ = Command::new("umount").arg("-l").arg(&mp).status();
        st.ok(&["mount", "v"]);
        let after = contents(&mp);
        assert_eq!(after, before, "{point}: the volume after a remount");
        assert_record_prefix(
            &fs::read(&log).unwrap(),
            acked.load(Ordering::SeqCst),
            point,
        );
        st.ok(&["compact", "v"]);
        assert_eq!(
            contents(&mp),
            before,
            "{point}: compacted after the remount"
        );
        st.ok(&["umount", "v"]);
    }
}

/// A daemon met on its way out of an unmount: `umount` returns before the
/// daemon ends, so a `snapshot` right after it can see the daemon answer
/// whether it serves, then find its control socket gone when it asks for
/// the rotation. The volume is no longer mounted then: the snapshot is
/// taken offline, not refused. A stand-in daemon answers `status` and
/// leaves; the CLI asks `status` once to settle what a crash may have
/// left, once to choose the live path, so leaving after the second answer
/// is the race (after the first, the live path is not chosen at all).
#[test]
fn a_snapshot_racing_the_daemons_exit_is_taken_offline() {
    for answers in [1, 2] {
        let st = Fixture::new();
        st.ok(&["create", "v"]);
        let dir = st.store.join("v");
        common::write(&dir.join("upper/kept"), b"before\n");
        let socket = dir.join("control.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let asked = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for _ in 0..answers {
                let (s, _) = listener.accept().unwrap();
                let mut line = String::new();
                std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut line).unwrap();
                lines.push(line.trim_end().to_string());
                let answer = if line.starts_with("status") {
                    "ok upper=0:0\n"
                } else {
                    "err 1 stand-in\n"
                };
                (&s).write_all(answer.as_bytes()).unwrap();
            }
            fs::remove_file(&socket).unwrap();
            lines
        });
        let id = st.ok(&["snapshot", "v"]);
        assert_eq!(asked.join().unwrap(), vec!["status"; answers]);
        assert_eq!(snapshots(&st, "v"), std::slice::from_ref(&id));
        assert_eq!(files_at(&st, "v", &id)["kept"], b"before\n");
        // Numbered once: the next snapshot takes the next number.
        let next = st.ok(&["snapshot", "v"]);
        assert_ne!(next, id);
        assert_eq!(snapshots(&st, "v"), [id, next]);
    }
}

/// A compaction of a mounted volume whose command dies right after the
/// daemon took the merged layer (crash point `compact-taken`: before the
/// layer is put in place of the newest snapshot and the metadata written)
/// is finished by the next change: the same view, one snapshot, nothing
/// left over, and later compactions and removals work. Before, every later
/// one was refused until the volume was mounted again.
#[test]
fn a_compaction_cut_after_the_daemon_took_the_merged_layer_is_finished() {
    require!();
    let st = Fixture::new();
    st.ok(&["create", "v"]);
    let mp = PathBuf::from(st.ok(&["mount", "v"]));
    let contents = |mp: &Path| -> BTreeMap<String, Vec<u8>> {
        tree(mp).into_iter().map(|(k, v)| (k, v.0)).collect()
    };
    for i in 0..3 {
        fs::write(mp.join(format!("f{i}")), format!("{i}\n")).unwrap();
        st.ok(&["snapshot", "v"]);
    }
    let before = contents(&mp);
    let out = cmd(&st, &["compact", "v"])
        .env("LAYERFS_CRASH_AT", "compact-taken")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the compaction was not cut");
    assert_eq!(
        snapshots(&st, "v").len(),
        3,
        "cut before its metadata write"
    );
    assert_eq!(contents(&mp), before);
    st.ok(&["compact", "v"]);
    assert_eq!(snapshots(&st, "v").len(), 1);
    assert_eq!(contents(&mp), before);
    let left: Vec<_> = fs::read_dir(st.store.join("v"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".merge-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        fs::read_dir(st.store.join("v/snapshots")).unwrap().count(),
        1
    );
    // Later changes of the stack go through the daemon again.
    for i in 3..5 {
        fs::write(mp.join(format!("f{i}")), format!("{i}\n")).unwrap();
        st.ok(&["snapshot", "v"]);
    }
    let before = contents(&mp);
    let oldest = snapshots(&st, "v")[0].clone();
    st.ok(&["snapshot-rm", "v", &oldest]);
    st.ok(&["compact", "v"]);
    assert_eq!(snapshots(&st, "v").len(), 1);
    assert_eq!(contents(&mp), before);
    st.ok(&["umount", "v"]);
    st.ok(&["mount", "v"]);
    assert_eq!(contents(&mp), before);
}
