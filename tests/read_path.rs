//! Mounted tests of the read path: layerfs over real layer stacks, compared
//! with kernel overlayfs mounted over the same layers.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Mounts layerfs and kernel overlayfs over `lowers` and asserts they show
/// the same tree; returns nothing, the guards unmount on the way out.
fn assert_matches_kernel(base: &Path, lowers: &[PathBuf], kernel_lowers: &[PathBuf], cmp: Compare) {
    let ours = mount_layerfs(lowers, &base.join("m"));
    let kernel = mount_kernel(kernel_lowers, &base.join("k"), "");
    assert_same(&ours.dir, &kernel.dir, cmp);
}

/// The fixture most tests share: three layers exercising every rule.
fn classic_stack(base: &Path) -> Vec<PathBuf> {
    let (l0, l1, l2) = (base.join("l0"), base.join("l1"), base.join("l2"));
    write(&l2.join("a"), b"bottom a");
    write(&l2.join("gone"), b"deleted above");
    write(&l2.join("d/x"), b"x from l2");
    write(&l2.join("d/y"), b"y from l2");
    write(&l2.join("d/sub/deep"), b"deep");
    write(&l2.join("op/hidden"), b"hidden by opaque");
    write(&l2.join("replaced/child"), b"dir replaced by a file");
    write(&l2.join("file_then_dir"), b"file replaced by a dir");
    link_sym("/nonexistent/target", &l2.join("dangling"));
    link_sym("d/x", &l2.join("rel"));
    setxattr(&l2.join("a"), "user.origin", b"l2");

    write(&l1.join("d/y"), b"y from l1");
    mknod_whiteout(&l1.join("d/x"));
    mknod_whiteout(&l1.join("gone"));
    write(&l1.join("d/new"), b"new in l1");
    write(&l1.join("replaced"), b"now a file");
    write(&l1.join("file_then_dir/inner"), b"inner");
    mkfifo(&l1.join("pipe"));

    write(&l0.join("a"), b"top a");
    setxattr(&l0.join("a"), "user.origin", b"l0");
    write(&l0.join("op/visible"), b"visible");
    set_opaque(&l0.join("op"));
    write(
        &l0.join("a.wh.b"),
        b"ordinary file that looks like a marker",
    );
    write(&l0.join(".whatever"), b"ordinary dotfile");
    write(
        &l0.join("solo/real"),
        b"in a directory only the top layer has",
    );
    mknod_whiteout(&l0.join("solo/ghost"));
    chmod(&l0.join("a"), 0o4755);
    chown(&l0.join("a"), 1000, 1001);
    vec![l0, l1, l2]
}

#[test]
fn chardev_whiteouts_and_opaque_match_kernel() {
    require_root!();
    let t = tmp();
    let lowers = classic_stack(t.path());
    let ours = mount_layerfs(&lowers, &t.path().join("m"));
    let kernel = mount_kernel(&lowers, &t.path().join("k"), "");
    assert_same(&ours.dir, &kernel.dir, Compare::ALL);
    // Spot checks that say what the rules mean.
    assert_eq!(fs::read(ours.path("a")).unwrap(), b"top a");
    assert_eq!(fs::read(ours.path("d/y")).unwrap(), b"y from l1");
    assert!(!ours.path("d/x").exists(), "whiteout must hide d/x");
    assert!(!ours.path("gone").exists());
    assert!(
        !ours.path("op/hidden").exists(),
        "opaque dir must hide below"
    );
    assert!(ours.path("op/visible").exists());
    assert!(ours.path("replaced").is_file());
    assert!(ours.path("file_then_dir/inner").exists());
    assert!(ours.path("a.wh.b").exists() && ours.path(".whatever").exists());
    // Kernel overlayfs lists "ghost" here (then fails to stat it); layerfs
    // never shows a whiteout.
    let solo: Vec<_> = fs::read_dir(ours.path("solo"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(solo, vec![OsStr::new("real").to_os_string()]);
    assert_eq!(
        fs::read_link(ours.path("dangling")).unwrap(),
        PathBuf::from("/nonexistent/target")
    );
    // "rel" points at d/x, which a whiteout hides: both mounts say ENOENT.
    assert!(fs::read(ours.path("rel")).is_err() && fs::read(kernel.path("rel")).is_err());
}

#[test]
fn oci_whiteouts_match_kernel_on_the_overlay_twin() {
    require_root!();
    let t = tmp();
    let lowers = classic_stack(&t.path().join("ovl"));
    let oci = oci_twins(&lowers, t.path());
    assert!(oci[1].join(".wh.gone").exists());
    assert!(oci[0].join("op/.wh..wh..opq").exists());
    let ours = mount_layerfs(&oci, &t.path().join("m"));
    let kernel = mount_kernel(&lowers, &t.path().join("k"), "");
    // Inode numbers differ (the twin's files are copies).
    assert_same(&ours.dir, &kernel.dir, Compare::CONTENT);
    let names: Vec<_> = fs::read_dir(ours.path("op"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![OsStr::new("visible").to_os_string()]);
    assert!(!ours.path(".wh.gone").exists(), "markers are never visible");
}

#[test]
fn user_xattr_opaque_matches_kernel_userxattr() {
    require_root!();
    let t = tmp();
    let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
    write(&l1.join("dir/old"), b"old");
    write(&l1.join("keep/k"), b"k");
    write(&l0.join("dir/new"), b"new");
    setxattr(&l0.join("dir"), "user.overlay.opaque", b"y");
    write(&l0.join("keep/k2"), b"k2");
    let lowers = vec![l0, l1];
    let ours = mount_layerfs(&lowers, &t.path().join("m"));
    let kernel = mount_kernel(&lowers, &t.path().join("k"), "userxattr");
    assert_same(&ours.dir, &kernel.dir, Compare::ALL);
    assert!(!ours.path("dir/old").exists());
    assert!(ours.path("keep/k").exists() && ours.path("keep/k2").exists());
}

#[test]
fn xattr_whiteouts_match_kernel() {
    require_root!();
    let t = tmp();
    let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
    write(&l1.join("dir/victim"), b"to be hidden");
    write(&l1.join("dir/stays"), b"stays");
    write(&l0.join("dir/victim"), b"");
    setxattr(&l0.join("dir/victim"), "trusted.overlay.whiteout", b"");
    setxattr(&l0.join("dir"), "trusted.overlay.opaque", b"x");
    let lowers = vec![l0, l1];
    let ours = mount_layerfs(&lowers, &t.path().join("m"));
    let kernel = mount_kernel(&lowers, &t.path().join("k"), "");
    assert_same(&ours.dir, &kernel.dir, Compare::ALL);
    assert!(!ours.path("dir/victim").exists());
    assert!(ours.path("dir/stays").exists());
}

#[test]
fn private_xattrs_are_hidden() {
    require_root!();
    let t = tmp();
    let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
    write(&l1.join("dir/f"), b"f");
    write(&l0.join("dir/g"), b"g");
    set_opaque(&l0.join("dir"));
    setxattr(&l0.join("dir"), "user.visible", b"1");
    setxattr(&l0.join("dir"), "user.overlay.origin", b"private");
    let ours = mount_layerfs(&[l0, l1], &t.path().join("m"));
    let list = Command::new("getfattr")
        .args(["-d", "-m", "-"])
        .arg(ours.path("dir"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("user.visible"), "{text}");
    assert!(!text.contains("overlay"), "private xattrs leaked: {text}");
    let get = Command::new("getfattr")
        .args(["-n", "trusted.overlay.opaque"])
        .arg(ours.path("dir"))
        .output()
        .unwrap();
    assert!(
        !get.status.success(),
        "getxattr of a private name must fail"
    );
}

#[test]
fn random_stacks_match_kernel_in_both_formats() {
    require_root!();
    for seed in [1u64, 2, 3, 5, 8, 13, 21, 34] {
        let t = tmp();
        let n = 3 + (seed % 3) as usize;
        let lowers = random_stack(seed, n, &t.path().join("ovl"));
        {
            let ours = mount_layerfs(&lowers, &t.path().join("m"));
            let kernel = mount_kernel(&lowers, &t.path().join("k"), "");
            let d = diff(&snapshot(&ours.dir), &snapshot(&kernel.dir), Compare::ALL);
            assert!(
                d.is_empty(),
                "seed {seed} (overlay format):\n{}",
                d.join("\n")
            );
        }
        let oci = oci_twins(&lowers, t.path());
        let ours = mount_layerfs(&oci, &t.path().join("m2"));
        let kernel = mount_kernel(&lowers, &t.path().join("k2"), "");
        let d = diff(
            &snapshot(&ours.dir),
            &snapshot(&kernel.dir),
            Compare::CONTENT,
        );
        assert!(d.is_empty(), "seed {seed} (OCI twin):\n{}", d.join("\n"));
    }
}

#[test]
fn fifty_five_layers() {
    require_root!();
    let t = tmp();
    let mut lowers = Vec::new();
    for i in 0..55 {
        let l = t.path().join(format!("{i}"));
        write(&l.join(format!("only{i}")), format!("{i}").as_bytes());
        write(&l.join("shared/all"), format!("layer {i}").as_bytes());
        write(&l.join(format!("shared/f{i}")), b"x");
        if i % 7 == 3 {
            mknod_whiteout(&l.join(format!("only{}", i + 1)));
        }
        lowers.push(l);
    }
    assert_matches_kernel(t.path(), &lowers, &lowers, Compare::ALL);
    let ours = mount_layerfs(&lowers, &t.path().join("m3"));
    assert_eq!(fs::read(ours.path("shared/all")).unwrap(), b"layer 0");
    assert_eq!(fs::read_dir(ours.path("shared")).unwrap().count(), 56);
    assert!(!ours.path("only4").exists());
}

#[test]
fn deep_tree_and_big_directory() {
    require_root!();
    let t = tmp();
    let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
    let mut deep = l1.clone();
    for i in 0..60 {
        deep = deep.join(format!("level{i}"));
    }
    write(&deep.join("bottom"), b"deep file");
    let mut deep0 = l0.clone();
    for i in 0..30 {
        deep0 = deep0.join(format!("level{i}"));
    }
    write(&deep0.join("mid"), b"mid file");
    let big = l1.join("big");
    mkdir(&big);
    for i in 0..10_000 {
        fs::write(big.join(format!("entry{i:05}")), b"").unwrap();
    }
    mkdir(&l0.join("big"));
    for i in (0..10_000).step_by(10) {
        mknod_whiteout(&l0.join(format!("big/entry{i:05}")));
    }
    let lowers = vec![l0, l1];
    assert_matches_kernel(t.path(), &lowers, &lowers, Compare::ALL);
    let ours = mount_layerfs(&lowers, &t.path().join("m2"));
    assert_eq!(fs::read_dir(ours.path("big")).unwrap().count(), 9_000);
    let rel: PathBuf = (0..60).map(|i| format!("level{i}")).collect();
    assert_eq!(
        fs::read(ours.dir.join(rel).join("bottom")).unwrap(),
        b"deep file"
    );
}

#[test]
fn non_utf8_and_marker_lookalike_names() {
    require_root!();
    let t = tmp();
    let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
    let odd = OsStr::from_bytes(b"caf\xe9\xff name");
    write(&l1.join(odd), b"latin-1 name");
    write(&l1.join("dir").join(odd), b"nested");
    for name in ["a.wh.b", ".whatever", ".wh", "wh.x", "..wh..opq", ".wh-not"] {
        write(&l0.join(name), name.as_bytes());
    }
    let lowers = vec![l0, l1];
    assert_matches_kernel(t.path(), &lowers, &lowers, Compare::ALL);
    let ours = mount_layerfs(&lowers, &t.path().join("m2"));
    assert_eq!(fs::read(ours.dir.join(odd)).unwrap(), b"latin-1 name");
    assert_eq!(fs::read(ours.path(".wh")).unwrap(), b".wh");
}

#[test]
fn inode_numbers_are_stable_across_remounts_and_st_dev_is_uniform() {
    require_root!();
    let t = tmp();
    let lowers = classic_stack(t.path());
    let first = {
        let m = mount_layerfs(&lowers, &t.path().join("m"));
        snapshot(&m.dir)
    };
    let m = mount_layerfs(&lowers, &t.path().join("m"));
    let second = snapshot(&m.dir);
    let d = diff(&first, &second, Compare::ALL);
    assert!(d.is_empty(), "{}", d.join("\n"));
    let dev = fs::metadata(&m.dir).unwrap().dev();
    for rel in ["a", "d", "d/y", "dangling", "pipe"] {
        assert_eq!(
            fs::symlink_metadata(m.path(rel)).unwrap().dev(),
            dev,
            "{rel}"
        );
    }
    // Distinct files, distinct numbers.
    let mut inos: Vec<u64> = second.values().map(|n| n.ino).collect();
    let total = inos.len();
    inos.sort();
    inos.dedup();
    assert_eq!(inos.len(), total);
}

#[test]
fn lower_layers_are_never_modified() {
    require_root!();
    let t = tmp();
    let lowers = classic_stack(t.path());
    let before: Vec<_> = lowers.iter().map(|l| fingerprint(l)).collect();
    {
        let m = mount_layerfs(&lowers, &t.path().join("m"));
        let _ = snapshot(&m.dir);
        assert!(fs::write(m.path("a"), b"x").is_err(), "read-only mount");
        assert!(fs::create_dir(m.path("newdir")).is_err());
        assert!(fs::remove_file(m.path("d/y")).is_err());
    }
    let after: Vec<_> = lowers.iter().map(|l| fingerprint(l)).collect();
    for (b, a) in before.iter().zip(&after) {
        let d = diff(b, a, Compare::ALL);
        assert!(d.is_empty(), "lower changed:\n{}", d.join("\n"));
    }
}

/// Counts the fds the daemon holds: each live directory inode holds one
/// per layer it comes from (files are reached by name and hold none).
fn daemon_fd_count(mnt: &Path) -> usize {
    daemon_pid(mnt)
        .and_then(|pid| fs::read_dir(format!("/proc/{pid}/fd")).ok())
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn forget_bounds_the_inode_table() {
    require_root!();
    let t = tmp();
    let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
    for d in 0..20 {
        for f in 0..200 {
            write(&l1.join(format!("d{d}/sub{f}/f")), b"x");
        }
    }
    write(&l0.join("top"), b"t");
    let mnt = t.path().join("m");
    let m = try_mount_layerfs(&lowerdir_opt(&[l0, l1]), &mnt).unwrap();
    let idle = daemon_fd_count(&m.dir);
    let _ = snapshot(&m.dir);
    let walked = daemon_fd_count(&m.dir);
    assert!(
        walked > idle + 4000,
        "walking 4000 files should hold inodes: {idle} -> {walked}"
    );
    // Make the kernel drop its dentries and inodes: it sends FORGET.
    fs::write("/proc/sys/vm/drop_caches", b"2").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut now = daemon_fd_count(&m.dir);
    while now > idle + 100 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        now = daemon_fd_count(&m.dir);
    }
    assert!(
        now <= idle + 100,
        "forget must release inodes: {idle} -> {walked} -> {now}"
    );
}

#[test]
fn statfs_and_readlink_and_reads() {
    require_root!();
    let t = tmp();
    let lowers = classic_stack(t.path());
    let m = mount_layerfs(&lowers, &t.path().join("m"));
    let out = Command::new("stat")
        .args(["-f", "-c", "%T %l"])
        .arg(&m.dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(fs::read_link(m.path("rel")).unwrap(), PathBuf::from("d/x"));
    // Large file read in chunks through the mount.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    drop(m);
    write(&lowers[2].join("bigfile"), &big);
    let m = mount_layerfs(&lowers, &t.path().join("m"));
    assert_eq!(fs::read(m.path("bigfile")).unwrap(), big);
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        mounts.lines().any(|l| l.contains(" fuse.layerfs ")
            && l.contains(m.dir.canonicalize().unwrap().to_str().unwrap())),
        "the mount type must read fuse.layerfs"
    );
}

#[test]
fn walking_more_files_than_the_open_file_limit() {
    require_root!();
    let t = tmp();
    let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
    for d in 0..10 {
        for f in 0..300 {
            write(
                &l1.join(format!("d{d}/f{f}")),
                format!("{d}/{f}").as_bytes(),
            );
        }
    }
    write(&l0.join("d0/top"), b"top");
    // The daemon may hold at most 256 fds: an fd per inode would run out.
    let m = mount_layerfs_with_nofile(&lowerdir_opt(&[l0, l1]), &t.path().join("m"), 256);
    let snap = snapshot(&m.dir);
    assert_eq!(snap.len(), 1 + 10 + 3000 + 1);
    assert_eq!(fs::read(m.path("d7/f299")).unwrap(), b"7/299");
}

/// Reads `len` bytes at `off` with O_DIRECT, which sends the kernel's READ
/// with this offset and size (no page cache, no readahead).
fn read_direct(path: &Path, off: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap();
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = f.read_at(&mut buf[done..], off + done as u64).unwrap();
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    buf
}

#[test]
fn lower_files_read_through_the_daemon_at_any_offset_and_after_a_copy_up() {
    require_root!();
    let t = tmp();
    // Large reads of a lower file on a writable mount are served from its
    // mapping (small ones from a buffer): every offset, the end of the file,
    // a size past it, and a file copied up while a reader holds it.
    let size = 3_000_001usize;
    let big: Vec<u8> = (0..size as u32).map(|i| (i % 251) as u8).collect();
    write(&t.path().join("l/big"), &big);
    write(&t.path().join("l/small"), b"small file");
    let lowers = vec![t.path().join("l")];
    for extra in ["", "passthrough=off"] {
        let tag = if extra.is_empty() { "a" } else { "b" };
        let (opts, upper, _) = rw_opts_tagged(t.path(), tag, &lowers, extra);
        let m = try_mount_layerfs(&opts, &t.path().join(format!("m{tag}"))).unwrap();
        assert_eq!(fs::read(m.path("big")).unwrap(), big);
        for (off, len) in [
            (0usize, 1usize << 20),
            (1, 200_000),
            (4095, 131_072),
            (size - 70_000, 65_536),
            (size - 100, 1 << 20),
            (size, 65_536),
            (size + 4096, 65_536),
        ] {
            let want = &big[off.min(size)..(off + len).min(size)];
            assert_eq!(
                read_direct(&m.path("big"), off as u64, len),
                want,
                "{extra}: {len} bytes at {off}"
            );
        }
        assert_eq!(read_direct(&m.path("small"), 0, 4096), b"small file");
        // A reader opened on the lower file, then a write through another
        // handle copies it up: the reader's next read sees the new bytes.
        use std::os::unix::fs::{FileExt, OpenOptionsExt};
        let reader = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(m.path("big"))
            .unwrap();
        let mut buf = vec![0u8; 1 << 18];
        reader.read_exact_at(&mut buf, 8192).unwrap();
        assert_eq!(buf, &big[8192..8192 + (1 << 18)]);
        let writer = fs::OpenOptions::new()
            .write(true)
            .open(m.path("big"))
            .unwrap();
        writer.write_all_at(&[7u8; 100_000], 10_000).unwrap();
        drop(writer);
        reader.read_exact_at(&mut buf, 8192).unwrap();
        let mut want = big[8192..8192 + (1 << 18)].to_vec();
        want[10_000 - 8192..110_000 - 8192].fill(7);
        assert_eq!(buf, want, "{extra}: the reader after the copy-up");
        assert!(upper.join("big").exists());
        assert_eq!(
            fs::read(lowers[0].join("big")).unwrap(),
            big,
            "the lower is unchanged"
        );
    }
}

/// Readers and writers of one directory at once: each thread makes and
/// removes its own file and directory in a shared directory and lists it
/// between its changes; every listing must show the thread's own names as
/// its last completed change left them. The kernel's readdir cache, which
/// FUSE uses when OPENDIR is not answered, broke this in every run of 16
/// threads before each change dropped it (a name removed before the
/// listing began still listed, one made before it missing); kernel
/// overlayfs is the reference.
#[test]
fn listings_show_every_change_made_before_them_while_others_list_and_change() {
    let base = tmp();
    let lower = base.path().join("l");
    mkdir(&lower.join("shared"));
    let (opts, _u, _w) = rw_opts_tagged(base.path(), "lfs", std::slice::from_ref(&lower), "");
    let mnt = base.path().join("m");
    mkdir(&mnt);
    let m = try_mount_layerfs(&opts, &mnt).expect("mount layerfs");
    let kmnt = base.path().join("k");
    mkdir(&kmnt);
    let (ku, kw) = (base.path().join("ku"), base.path().join("kw"));
    mkdir(&ku);
    mkdir(&kw);
    let kopts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        ku.display(),
        kw.display()
    );
    let ok = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &kopts])
        .arg(&kmnt)
        .status()
        .expect("mount(8)")
        .success();
    assert!(ok, "kernel overlayfs mount failed");
    let k = Mounted { dir: kmnt };
    for (what, dir) in [
        ("kernel overlayfs", k.path("shared")),
        ("layerfs", m.path("shared")),
    ] {
        let errors = churn_and_list(&dir, 16, std::time::Duration::from_secs(6));
        assert!(errors.is_empty(), "{what}: {}", errors.join("\n"));
    }
}

/// `threads` threads changing and listing `dir` for `time`; what each saw
/// wrong.
fn churn_and_list(dir: &Path, threads: usize, time: std::time::Duration) -> Vec<String> {
    let end = std::time::Instant::now() + time;
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let dir = dir.to_path_buf();
            std::thread::spawn(move || -> Option<String> {
                let (d, g) = (format!("d{i}"), format!("g{i}"));
                let (mut has_d, mut has_g) = (false, false);
                let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ i as u64;
                let mut op = 0u64;
                while std::time::Instant::now() < end {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    op += 1;
                    let add = (seed >> 40) & 1 == 0;
                    match (seed >> 33) % 3 {
                        0 if add => has_d |= fs::create_dir(dir.join(&d)).is_ok(),
                        0 => has_d &= fs::remove_dir(dir.join(&d)).is_err(),
                        1 if add => {
                            has_g |= fs::OpenOptions::new()
                                .write(true)
                                .create_new(true)
                                .open(dir.join(&g))
                                .is_ok()
                        }
                        1 => has_g &= fs::remove_file(dir.join(&g)).is_err(),
                        _ => {
                            let names: std::collections::BTreeSet<String> = fs::read_dir(&dir)
                                .expect("list the shared directory")
                                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                                .collect();
                            let (ld, lg) = (names.contains(&d), names.contains(&g));
                            if (ld, lg) != (has_d, has_g) {
                                return Some(format!(
                                    "thread {i}, operation {op}: {d} {has_d} and {g} {has_g} by its own changes, listed {ld} and {lg}"
                                ));
                            }
                        }
                    }
                }
                None
            })
        })
        .collect();
    handles
        .into_iter()
        .filter_map(|h| h.join().expect("a churning thread panicked"))
        .collect()
}
