//! Volume size limits (`-o size=`, `resize`), through the CLI: sizes
//! refused with their text and nothing made; a mounted 64M volume filled
//! by dd until ENOSPC with nothing partial, `df` showing the limit and the
//! use, space freed and written again, a resize up and down (not below
//! the use) while mounted, a copy-up that does not fit, and the count
//! kept across a live snapshot and a remount; on a GlusterFS store, the
//! same limit enforced, and kept when another host takes the volume over.
//! Mounted tests: run as root.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::gluster::{child_base, role, Cluster};

const M: u64 = 1 << 20;

/// The mounted tests run one at a time: the namespaces of a GlusterFS
/// cluster copy every mount made before them, and a copy of a volume's
/// mount keeps its daemon, and so its control socket, alive after `umount`
/// (the volume then looks mounted in another namespace).
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static MOUNTS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    MOUNTS.lock().unwrap_or_else(|e| e.into_inner())
}

fn bin() -> &'static str {
    let _ = common::layerfs_bin();
    env!("CARGO_BIN_EXE_layerfs-volume")
}

/// A store (in a temp dir, or at a given path); on drop, what is mounted
/// under it is unmounted.
struct Store {
    tmp: Option<tempfile::TempDir>,
    root: PathBuf,
}

impl Store {
    fn new() -> Store {
        let tmp = common::tmp();
        let root = tmp.path().join("store");
        Store {
            tmp: Some(tmp),
            root,
        }
    }

    fn at(root: PathBuf) -> Store {
        Store { tmp: None, root }
    }

    fn scratch(&self) -> PathBuf {
        self.tmp.as_ref().unwrap().path().to_path_buf()
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut c = Command::new(bin());
        c.arg("--store").arg(&self.root).args(args);
        c.output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "layerfs-volume {args:?} failed: {}",
            common::output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "layerfs-volume {args:?} succeeded");
        common::output_text(&out)
    }

    fn size_of(&self, name: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["inspect", name])).unwrap();
        v["Size"].clone()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let text = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let Ok(root) = self.root.canonicalize() else {
            return;
        };
        let mounts: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| Path::new(m).starts_with(&root))
            .collect();
        for m in mounts.into_iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

/// `df -B1` of `dir`: (size, used, available).
fn df(dir: &Path) -> (u64, u64, u64) {
    let out = Command::new("df").arg("-B1").arg(dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<u64> = text
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(f.len() >= 3, "df {}: {text}", dir.display());
    (f[0], f[1], f[2])
}

/// `dd` of `count` MiB of zeros into `file` (appending with `append`):
/// whether it succeeded, the bytes it says it copied, and its message.
fn dd(file: &Path, count: u64, append: bool) -> (bool, u64, String) {
    let mut c = Command::new("dd");
    c.arg("if=/dev/zero")
        .arg(format!("of={}", file.display()))
        .args(["bs=1M", &format!("count={count}")]);
    if append {
        c.args(["oflag=append", "conv=notrunc"]);
    }
    let out = c.output().unwrap();
    let text = common::output_text(&out);
    let copied = text
        .lines()
        .find(|l| l.contains("bytes") && l.contains("copied"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (out.status.success(), copied, text)
}

fn len(p: &Path) -> u64 {
    fs::metadata(p).map_or(0, |m| m.len())
}

#[test]
fn bad_sizes_are_refused_with_their_text_and_nothing_is_made() {
    let st = Store::new();
    for (opt, want) in [
        (
            "size=10",
            "size=10: a unit is needed: a whole number then K, M, G or T",
        ),
        ("size=0G", "size=0G: a size of zero allows nothing"),
        ("Capacity=0", "Capacity=0: a unit is needed"),
        (
            "size=1.5G",
            "size=1.5G: expected a whole number then K, M, G or T",
        ),
        ("size=", "size=: expected a whole number then K, M, G or T"),
        ("size=ten", "size=ten: expected"),
    ] {
        let e = st.fails(&["create", "-o", opt, "v"]);
        assert!(e.contains(want), "{opt}: {e}");
        assert_eq!(st.ok(&["ls"]), "", "{opt}: nothing made");
    }
    st.ok(&["create", "-o", "size=64M", "v"]);
    assert_eq!(st.size_of("v"), 64 * M);
    st.ok(&["create", "-o", "Capacity=1G,mode=0750", "w"]);
    assert_eq!(st.size_of("w"), 1 << 30);
    st.ok(&["create", "plain"]);
    assert!(st.size_of("plain").is_null());

    let e = st.fails(&["resize", "v", "10"]);
    assert!(e.contains("size=10: a unit is needed"), "{e}");
    let e = st.fails(&["resize", "nosuch", "1G"]);
    assert!(e.contains("no such volume: nosuch"), "{e}");
    st.ok(&["resize", "v", "32M"]);
    assert_eq!(st.size_of("v"), 32 * M);
    // Unmounted, the use is measured from the layers.
    fs::write(st.root.join("v/upper/f"), vec![1u8; 3 << 20]).unwrap();
    let e = st.fails(&["resize", "v", "2M"]);
    assert!(
        e.contains("cannot resize volume v to 2097152 bytes (2.0M): it uses 3145728 bytes (3.0M)"),
        "{e}"
    );
    st.ok(&["resize", "v", "3M"]);
    // Every argument of the new command has its line of help.
    let help = st.ok(&["resize", "--help"]);
    assert!(help.contains("refused below what"), "{help}");
    assert!(help.contains("K, M, G or T"), "{help}");
}

#[test]
fn a_full_volume_refuses_whole_writes_until_space_is_freed() {
    require!("dd", "df");
    let _one = one_at_a_time();
    let st = Store::new();
    st.ok(&["create", "-o", "size=64M", "v"]);
    let mp = PathBuf::from(st.ok(&["mount", "v"]));
    assert_eq!(df(&mp), (64 * M, 0, 64 * M));

    // Filled until ENOSPC: the write that does not fit fails whole.
    let (ok, copied, _) = dd(&mp.join("a"), 40, false);
    assert!(ok && copied == 40 * M);
    let (ok, copied, text) = dd(&mp.join("b"), 40, false);
    assert!(!ok && text.contains("No space left on device"), "{text}");
    assert_eq!(copied, 24 * M, "{text}");
    assert_eq!(len(&mp.join("b")), copied, "b holds what dd says, no more");
    assert_eq!(len(&mp.join("a")), 40 * M);
    assert_eq!(df(&mp), (64 * M, 64 * M, 0));
    let (ok, copied, _) = dd(&mp.join("c"), 1, false);
    assert!(!ok && copied == 0);
    assert_eq!(len(&mp.join("c")), 0);
    assert!(fs::write(mp.join("d"), b"x").is_err(), "not even a byte");
    assert!(fs::create_dir(mp.join("dir")).is_err(), "nor a directory");

    // Space freed on the same mount is written again.
    fs::remove_file(mp.join("a")).unwrap();
    assert_eq!(df(&mp), (64 * M, 24 * M, 40 * M));
    let (ok, _, text) = dd(&mp.join("c"), 10, false);
    assert!(ok, "{text}");
    fs::create_dir(mp.join("dir")).unwrap();
    let used = 34 * M + 4096;
    assert_eq!(df(&mp).1, used);
    // Written over (truncated, then written): counted once.
    let (ok, _, text) = dd(&mp.join("c"), 10, false);
    assert!(ok, "{text}");
    fs::write(mp.join("x"), vec![1u8; 5000]).unwrap();
    fs::write(mp.join("x"), b"short").unwrap();
    assert_eq!(df(&mp).1, used + 4096);
    fs::remove_file(mp.join("x")).unwrap();
    assert_eq!(df(&mp).1, used);
    // A file renamed over another frees the one replaced.
    fs::write(mp.join("x"), vec![1u8; 5000]).unwrap();
    fs::write(mp.join("y"), b"y").unwrap();
    fs::rename(mp.join("y"), mp.join("x")).unwrap();
    assert_eq!(df(&mp).1, used + 4096);
    fs::create_dir_all(mp.join("d1/sub")).unwrap();
    fs::create_dir(mp.join("d2")).unwrap();
    fs::rename(mp.join("d2"), mp.join("d1/sub")).unwrap();
    assert_eq!(df(&mp).1, used + 3 * 4096);
    fs::remove_dir_all(mp.join("d1")).unwrap();
    fs::remove_file(mp.join("x")).unwrap();
    assert_eq!(df(&mp).1, used);

    // Resized while mounted: the daemon takes it at once.
    let e = st.fails(&["resize", "v", "10M"]);
    assert!(e.contains("it uses 35655680 bytes"), "{e}");
    st.ok(&["resize", "v", "128M"]);
    assert_eq!(df(&mp).0, 128 * M);
    st.ok(&["resize", "v", "60M"]);
    assert_eq!(df(&mp), (60 * M, used, 60 * M - used));
    assert_eq!(st.size_of("v"), 60 * M);

    // A live snapshot keeps the count: the old upper is still the
    // volume's. Removing a file the snapshot holds frees nothing.
    st.ok(&["snapshot", "v", "s1"]);
    assert_eq!(df(&mp).1, used);
    fs::remove_file(mp.join("b")).unwrap();
    assert_eq!(df(&mp).1, used);
    let (ok, copied, text) = dd(&mp.join("e"), 40, false);
    assert!(!ok && text.contains("No space left"), "{text}");
    assert_eq!(len(&mp.join("e")), copied);
    assert_eq!(copied, 25 * M, "the last MiB short of the limit by a block");
    // Appending to a file of the snapshot copies it up first, whole.
    let (ok, _, text) = dd(&mp.join("c"), 1, true);
    assert!(!ok, "{text}");
    assert_eq!(len(&mp.join("c")), 10 * M, "c as it was");
    let before = df(&mp);

    // Across a remount the limit and the count hold.
    st.ok(&["umount", "v"]);
    let mp = PathBuf::from(st.ok(&["mount", "v"]));
    assert_eq!(df(&mp), before);
    assert!(fs::write(mp.join("f"), vec![0u8; 2 << 20]).is_err());
    st.ok(&["resize", "v", "100M"]);
    let (ok, _, text) = dd(&mp.join("c"), 1, true);
    assert!(ok, "{text}");
    assert_eq!(len(&mp.join("c")), 11 * M);
    st.ok(&["umount", "v"]);
}

#[test]
fn a_copy_up_that_does_not_fit_leaves_the_lower_file() {
    require!("df");
    let _one = one_at_a_time();
    let st = Store::new();
    let seed = st.scratch().join("seed");
    fs::create_dir(&seed).unwrap();
    fs::write(seed.join("big"), vec![7u8; 8 << 20]).unwrap();
    fs::write(seed.join("small"), b"small").unwrap();
    st.ok(&[
        "create",
        "--from",
        seed.to_str().unwrap(),
        "-o",
        "size=4M",
        "v",
    ]);
    let mp = PathBuf::from(st.ok(&["mount", "v"]));
    // The seed is not the volume's: nothing is used.
    assert_eq!(df(&mp), (4 * M, 0, 4 * M));
    let e = fs::OpenOptions::new()
        .append(true)
        .open(mp.join("big"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    assert_eq!(fs::read(mp.join("big")).unwrap(), vec![7u8; 8 << 20]);
    assert!(!st.root.join("v/upper/big").exists(), "no partial copy");
    fs::write(mp.join("small"), b"changed").unwrap();
    assert_eq!(df(&mp).1, 4096);
    st.ok(&["umount", "v"]);
}

/// The store on the GlusterFS volume, as each host sees it.
fn gluster_store() -> Store {
    Store::at(child_base().join("gl/store"))
}

#[test]
fn a_limit_on_a_glusterfs_store_holds_when_another_host_takes_over() {
    const NAME: &str = "a_limit_on_a_glusterfs_store_holds_when_another_host_takes_over";
    match role().as_deref() {
        Some("fill") => return gluster_fill(),
        Some("takeover") => return gluster_takeover(),
        _ => {}
    }
    require_gluster!();
    let _one = one_at_a_time();
    let cluster = Cluster::start();
    cluster.host("a").run_test_ok(NAME, "fill");
    cluster.host("b").run_test_ok(NAME, "takeover");
}

/// Host a: filled until ENOSPC, space freed and written again.
fn gluster_fill() {
    let st = gluster_store();
    st.ok(&["create", "-o", "size=64M", "v"]);
    let mp = PathBuf::from(st.ok(&["mount", "v"]));
    let (ok, copied, text) = dd(&mp.join("a"), 100, false);
    assert!(!ok && copied == 64 * M, "{text}");
    assert_eq!(len(&mp.join("a")), copied);
    assert_eq!(df(&mp), (64 * M, 64 * M, 0));
    fs::remove_file(mp.join("a")).unwrap();
    let (ok, _, text) = dd(&mp.join("b"), 10, false);
    assert!(ok, "{text}");
    assert_eq!(df(&mp), (64 * M, 10 * M, 54 * M));
    st.ok(&["umount", "v"]);
}

/// Host b: the same limit and use, from the store alone.
fn gluster_takeover() {
    let st = gluster_store();
    let mp = PathBuf::from(st.ok(&["mount", "v"]));
    assert_eq!(df(&mp), (64 * M, 10 * M, 54 * M));
    let (ok, copied, text) = dd(&mp.join("c"), 100, false);
    assert!(!ok && copied == 54 * M, "{text}");
    st.ok(&["umount", "v"]);
}
