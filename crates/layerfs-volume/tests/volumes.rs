//! Volumes (`layerfs-volume`): the CLI lifecycle with an incremental
//! backup restored on a fresh store, hostile tars, and the Docker volume
//! plugin API spoken over its unix socket. Mounted: run as root.

// The mounted-test helpers of the filesystem crate, shared.
#[path = "../../../tests/common/mod.rs"]
mod common;
mod vol_common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vol_common::{
    bin, busybox_rootfs, podman_with_plugin, rootfs_tar, short_tmp, start_plugin, start_plugin_cmd,
    Engine, Fixture,
};

fn groups_of_links(tree: &BTreeMap<Vec<u8>, common::Node>) -> BTreeSet<Vec<Vec<u8>>> {
    let mut by_ino: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
    for (p, n) in tree {
        if n.kind == "file" && n.nlink > 1 {
            by_ino.entry(n.ino).or_default().push(p.clone());
        }
    }
    by_ino.into_values().filter(|g| g.len() > 1).collect()
}

/// Compares two mounted volumes: every file's kind, content, owner, mode,
/// user xattrs, symlink target, file mtime (seconds) and hardlink sets.
fn assert_same_volume(a: &Path, b: &Path) {
    assert_same_tree(&common::snapshot(a), &common::snapshot(b));
}

/// [`assert_same_volume`] on trees taken earlier.
fn assert_same_tree(ta: &BTreeMap<Vec<u8>, common::Node>, tb: &BTreeMap<Vec<u8>, common::Node>) {
    let cmp = common::Compare {
        ino: false,
        nlink: false,
        mtime: false,
        dir_mtime: false,
    };
    let d = common::diff(ta, tb, cmp);
    assert!(d.is_empty(), "volumes differ:\n{}", d.join("\n"));
    for (p, n) in ta {
        if n.kind == "file" {
            assert_eq!(
                n.mtime.0,
                tb[p].mtime.0,
                "mtime of {}",
                String::from_utf8_lossy(p)
            );
        }
    }
    assert_eq!(groups_of_links(ta), groups_of_links(tb), "hardlink sets");
}

/// The entries of a tar, as (path, type, link target).
fn tar_entries(tar: &Path) -> Vec<(String, tar::EntryType, Option<String>)> {
    let mut a = tar::Archive::new(fs::File::open(tar).unwrap());
    a.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                e.header().entry_type(),
                e.link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned()),
            )
        })
        .collect()
}

/// A file capability (VFS v2): cap_net_bind_service in the permitted set.
const CAP: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// A POSIX access ACL in the kernel's xattr format: user::rw-,
/// user:1234:r--, group::r--, mask::r--, other::---.
fn acl() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (1u16, 6u16, u32::MAX),
        (2, 4, 1234),
        (4, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// A seed tree: 200 files in 20 directories, with owners, modes, xattrs,
/// a hardlink set, a symlink and an empty directory.
fn make_seed(dir: &Path) {
    for d in 0..20 {
        for f in 0..10 {
            let p = dir.join(format!("d{d:02}/f{f}"));
            common::write(&p, format!("file {d} {f}\n").repeat(f + 1).as_bytes());
            common::chown(&p, 1000 + f as u32, 100 + d as u32);
            common::chmod(&p, 0o600 + f as u32);
        }
    }
    common::setxattr(&dir.join("d00/f0"), "user.note", b"seed");
    common::setxattr(&dir.join("d00/f1"), "security.capability", &CAP);
    common::setxattr(&dir.join("d00/f2"), "system.posix_acl_access", &acl());
    fs::hard_link(dir.join("d01/f1"), dir.join("d02/hardlink")).unwrap();
    fs::hard_link(dir.join("d01/f1"), dir.join("d03/hardlink")).unwrap();
    common::link_sym("../d00/f0", &dir.join("d04/sym"));
    common::mkdir(&dir.join("empty"));
    common::chmod(&dir.join("d05"), 0o750);
}

#[test]
fn lifecycle_incremental_backup_and_restore() {
    require!();
    let fx = Fixture::new();
    let seed = fx.path("seed");
    make_seed(&seed);
    let seed_before = common::snapshot(&seed);

    fx.ok(&["create", "data", "--from", seed.to_str().unwrap()]);
    assert!(fx.ok(&["ls"]).lines().any(|l| l == "data"));
    let mp = PathBuf::from(fx.ok(&["mount", "data"]));
    assert_eq!(
        fs::read(mp.join("d03/f3")).unwrap(),
        b"file 3 3\n".repeat(4)
    );
    common::write(&mp.join("d00/new"), b"new file\n");
    fs::remove_file(mp.join("d06/f6")).unwrap();
    // A volume in use is snapshotted by its daemon, the mount going on.
    fx.ok(&["snapshot", "data", "s1"]);
    assert!(common::is_mounted(&mp));
    assert_eq!(fs::read(mp.join("d00/new")).unwrap(), b"new file\n");
    fx.ok(&["umount", "data"]);
    assert!(!common::is_mounted(&mp));
    let full = fx.path("full.tar");
    fx.ok(&["export", "data", "-o", full.to_str().unwrap()]);

    // Change 1% of the files: two rewritten (one of them a name of the
    // hardlink set), one deleted, one directory replaced, one added.
    let mp = PathBuf::from(fx.ok(&["mount", "data"]));
    common::write(&mp.join("d07/f7"), b"changed\n");
    fs::OpenOptions::new()
        .append(true)
        .open(mp.join("d02/hardlink"))
        .unwrap()
        .write_all(b"appended\n")
        .unwrap();
    fs::remove_file(mp.join("d08/f8")).unwrap();
    fs::remove_dir_all(mp.join("d09")).unwrap();
    common::mkdir(&mp.join("d09"));
    common::write(&mp.join("d09/only"), b"replaced dir\n");
    common::write(&mp.join("added"), b"added\n");
    common::setxattr(&mp.join("added"), "user.kind", b"fresh");
    // A renamed directory (an overlay redirect) goes whole, its old name
    // as a whiteout.
    fs::rename(mp.join("d10"), mp.join("moved")).unwrap();
    fx.ok(&["umount", "data"]);

    let inc = fx.path("inc.tar");
    fx.ok(&[
        "export",
        "data",
        "--since",
        "s1",
        "-o",
        inc.to_str().unwrap(),
    ]);
    let entries = tar_entries(&inc);
    let names: BTreeSet<String> = entries.iter().map(|e| e.0.clone()).collect();
    let want: BTreeSet<String> = [
        ".",
        "added",
        "d01",
        "d01/f1",
        "d02",
        "d02/hardlink",
        "d03",
        "d03/hardlink",
        "d07",
        "d07/f7",
        "d08",
        "d08/.wh.f8",
        "d09",
        "d09/.wh..wh..opq",
        "d09/only",
        ".wh.d10",
        "moved",
        "moved/.wh..wh..opq",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain((0..10).map(|f| format!("moved/f{f}")))
    .collect();
    assert_eq!(names, want, "the increment holds exactly the changes");
    let links: Vec<_> = entries
        .iter()
        .filter(|e| e.1 == tar::EntryType::Link)
        .collect();
    assert_eq!(links.len(), 2, "one copy of the hardlink set: {entries:?}");
    let full_size = fs::metadata(&full).unwrap().len();
    let inc_size = fs::metadata(&inc).unwrap().len();
    assert!(
        inc_size * 5 < full_size,
        "increment {inc_size} vs full {full_size}"
    );
    // Same content, same bytes.
    let again = fx.path("inc2.tar");
    fx.ok(&[
        "export",
        "data",
        "--since",
        "s1",
        "-o",
        again.to_str().unwrap(),
    ]);
    assert_eq!(fs::read(&inc).unwrap(), fs::read(&again).unwrap());

    // Restore the chain on a fresh store, as another host would.
    let other = fx.path("other-store");
    let out = fx.run_in(
        &other,
        &[
            "import",
            "restored",
            full.to_str().unwrap(),
            inc.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", common::output_text(&out));
    let out = fx.run_in(&other, &["mount", "restored"]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    let restored = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let mp = PathBuf::from(fx.ok(&["mount", "data"]));
    assert_same_volume(&mp, &restored);
    assert_eq!(
        fs::read(restored.join("d02/hardlink")).unwrap(),
        fs::read(restored.join("d01/f1")).unwrap()
    );
    assert!(!restored.join("d09/f0").exists());
    // Capabilities and ACLs travel too.
    let cap = common::getxattr(&restored.join("d00/f1"), "security.capability").unwrap();
    assert_eq!(cap, CAP);
    let got = common::getxattr(&restored.join("d00/f2"), "system.posix_acl_access").unwrap();
    assert_eq!(got, acl());
    fx.ok(&["umount", "data"]);
    assert!(fx.run_in(&other, &["umount", "restored"]).status.success());

    // Clone, snapshot removal and compaction keep what is visible.
    fx.ok(&["snapshot", "data", "s2"]);
    fx.ok(&["clone", "data@s1", "copy"]);
    let msg = fx.fails(&["rm", "data"]);
    assert!(msg.contains("copy"), "rm names the clone: {msg}");
    let mp = PathBuf::from(fx.ok(&["mount", "copy"]));
    assert_eq!(
        fs::read(mp.join("d07/f7")).unwrap(),
        b"file 7 7\n".repeat(8)
    );
    assert!(mp.join("d00/new").exists() && !mp.join("added").exists());
    fx.ok(&["umount", "copy"]);
    fx.ok(&["rm", "copy"]);
    let mp = PathBuf::from(fx.ok(&["mount", "data"]));
    let before = common::snapshot(&mp);
    fx.ok(&["umount", "data"]);
    fx.ok(&["snapshot-rm", "data", "s1"]);
    assert_eq!(fx.ok(&["snapshots", "data"]).lines().count(), 1);
    fx.ok(&["snapshot", "data", "s3"]);
    fx.ok(&["compact", "data"]);
    assert_eq!(
        fx.ok(&["snapshots", "data"])
            .lines()
            .next()
            .unwrap()
            .split('\t')
            .next(),
        Some("s3")
    );
    let mp = PathBuf::from(fx.ok(&["mount", "data"]));
    let after = common::snapshot(&mp);
    let cmp = common::Compare {
        ino: false,
        nlink: false,
        mtime: false,
        dir_mtime: false,
    };
    let d = common::diff(&before, &after, cmp);
    assert!(
        d.is_empty(),
        "compaction changed the volume:\n{}",
        d.join("\n")
    );
    assert_eq!(groups_of_links(&before), groups_of_links(&after));
    fx.ok(&["umount", "data"]);
    let inspect: serde_json::Value = serde_json::from_str(&fx.ok(&["inspect", "data"])).unwrap();
    assert_eq!(inspect["Mounted"], false);
    assert_eq!(inspect["Snapshots"].as_array().unwrap().len(), 1);
    fx.ok(&["rm", "data"]);
    assert!(!fx.ok(&["ls"]).lines().any(|l| l == "data"));
    // The seed was never written to.
    let d = common::diff(&seed_before, &common::snapshot(&seed), common::Compare::ALL);
    assert!(d.is_empty(), "seed changed:\n{}", d.join("\n"));
}

#[test]
fn removing_the_newest_snapshot_merges_it_into_the_upper() {
    require!();
    let fx = Fixture::new();
    let seed = fx.path("seed");
    common::write(&seed.join("a"), b"a\n");
    common::write(&seed.join("c"), b"c\n");
    common::write(&seed.join("d/b"), b"b\n");
    fx.ok(&["create", "v", "--from", seed.to_str().unwrap()]);
    let mp = PathBuf::from(fx.ok(&["mount", "v"]));
    common::write(&mp.join("a"), b"a2\n");
    fs::remove_file(mp.join("d/b")).unwrap();
    common::write(&mp.join("d/n"), b"n\n");
    fx.ok(&["umount", "v"]);
    fx.ok(&["snapshot", "v", "s1"]);
    let mp = PathBuf::from(fx.ok(&["mount", "v"]));
    fs::remove_file(mp.join("c")).unwrap();
    fs::remove_dir_all(mp.join("d")).unwrap();
    common::write(&mp.join("d/x"), b"x\n");
    let before = common::snapshot(&mp);
    fx.ok(&["umount", "v"]);
    fx.ok(&["snapshot-rm", "v", "s1"]);
    assert_eq!(fx.ok(&["snapshots", "v"]), "");
    let mp = PathBuf::from(fx.ok(&["mount", "v"]));
    let cmp = common::Compare {
        ino: false,
        nlink: false,
        mtime: true,
        dir_mtime: false,
    };
    let mut after = common::snapshot(&mp);
    // Merged files keep their mtime to the second (a tar's precision).
    for (k, n) in after.iter_mut() {
        n.mtime = before.get(k).map_or(n.mtime, |b| (n.mtime.0, b.mtime.1));
    }
    let d = common::diff(&before, &after, cmp);
    assert!(
        d.is_empty(),
        "the merge changed the volume:\n{}",
        d.join("\n")
    );
    // Still writable, with the merged upper.
    common::write(&mp.join("y"), b"y\n");
    fx.ok(&["umount", "v"]);
}

#[test]
fn interrupted_changes_are_finished_by_the_next_one() {
    require!();
    let fx = Fixture::new();
    fx.ok(&["create", "v"]);
    let mp = PathBuf::from(fx.ok(&["mount", "v"]));
    common::write(&mp.join("f"), b"kept\n");
    fx.ok(&["umount", "v"]);
    let vol = fx.store.join("v");
    let set_pending = |id: &str| {
        let path = vol.join("meta.json");
        let mut meta: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        meta["pending_snapshot"] = serde_json::json!(id);
        fs::write(&path, serde_json::to_vec(&meta).unwrap()).unwrap();
    };
    // A snapshot interrupted after its upper was renamed...
    set_pending("s9");
    fs::rename(vol.join("upper"), vol.join("snapshots/s9")).unwrap();
    // ... and what an interrupted merge leaves.
    common::mkdir(&vol.join("snapshots/merged-away"));
    common::mkdir(&vol.join(".merge-1"));
    let mp = PathBuf::from(fx.ok(&["mount", "v"]));
    assert_eq!(fs::read(mp.join("f")).unwrap(), b"kept\n");
    fx.ok(&["umount", "v"]);
    assert_eq!(fx.ok(&["snapshots", "v"]).split('\t').next(), Some("s9"));
    assert!(!vol.join("snapshots/merged-away").exists());
    assert!(!vol.join(".merge-1").exists());
    // A snapshot interrupted before the rename is forgotten.
    set_pending("s10");
    fx.ok(&["snapshot", "v", "s11"]);
    let ids: Vec<String> = fx
        .ok(&["snapshots", "v"])
        .lines()
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["s9", "s11"]);
    let mp = PathBuf::from(fx.ok(&["mount", "v"]));
    assert_eq!(fs::read(mp.join("f")).unwrap(), b"kept\n");
    fx.ok(&["umount", "v"]);
}

#[test]
fn bad_requests_are_one_line_errors() {
    require!();
    let fx = Fixture::new();
    for bad in ["../x", "a/b", "", &"x".repeat(200)] {
        let msg = fx.fails(&["create", bad]);
        assert!(msg.contains("bad volume name"), "{bad:?}: {msg}");
        assert_eq!(msg.trim().lines().count(), 1, "{msg}");
    }
    let msg = fx.fails(&["create", "v", "--from", "/nonexistent/seed"]);
    assert!(msg.contains("/nonexistent/seed"), "{msg}");
    fx.ok(&["create", "v"]);
    assert!(fx.fails(&["create", "v"]).contains("already exists"));
    fs::write(fx.store.join("v/meta.json"), b"{not json").unwrap();
    let msg = fx.fails(&["inspect", "v"]);
    assert!(msg.contains("corrupt metadata"), "{msg}");
    assert!(fx
        .fails(&["clone", "nothere@s1", "w"])
        .contains("no such volume"));
}

/// A tar header with the name bytes written as they are (the tar crate
/// refuses to build hostile names, which is the point of these tests).
fn raw_entry(out: &mut Vec<u8>, name: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8]) {
    let mut h = tar::Header::new_old();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_entry_type(kind);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn finish_tar(mut out: Vec<u8>) -> Vec<u8> {
    out.extend_from_slice(&[0; 1024]);
    out
}

#[test]
fn hostile_tars_are_refused_whole() {
    require!();
    let fx = Fixture::new();
    let outside = fx.path("outside");
    common::mkdir(&outside);
    let outside_s = outside.to_str().unwrap().as_bytes().to_vec();
    let reg = tar::EntryType::Regular;
    let good = |t: &mut Vec<u8>| raw_entry(t, b"fine", reg, b"", b"ok\n");

    let mut cases: Vec<(&str, Vec<Vec<u8>>)> = Vec::new();
    let mut t = Vec::new();
    good(&mut t);
    raw_entry(&mut t, b"../../outside/slip", reg, b"", b"x");
    cases.push(("tar-slip", vec![finish_tar(t)]));
    let mut t = Vec::new();
    good(&mut t);
    let abs = [outside_s.clone(), b"/abs".to_vec()].concat();
    raw_entry(&mut t, &abs, reg, b"", b"x");
    cases.push(("absolute path", vec![finish_tar(t)]));
    let mut t = Vec::new();
    good(&mut t);
    raw_entry(&mut t, b"link", tar::EntryType::Symlink, &outside_s, b"");
    raw_entry(&mut t, b"link/through", reg, b"", b"x");
    cases.push(("symlink then file", vec![finish_tar(t)]));
    let mut t1 = Vec::new();
    raw_entry(&mut t1, b"link", tar::EntryType::Symlink, &outside_s, b"");
    let mut t2 = Vec::new();
    good(&mut t2);
    raw_entry(&mut t2, b"link/through", reg, b"", b"x");
    cases.push((
        "symlink in an earlier tar",
        vec![finish_tar(t1), finish_tar(t2)],
    ));
    let mut t = Vec::new();
    good(&mut t);
    raw_entry(
        &mut t,
        b"hl",
        tar::EntryType::Link,
        b"../../outside/target",
        b"",
    );
    cases.push(("hardlink out", vec![finish_tar(t)]));
    // A 300-byte name needs a GNU long-name record, which tar writes.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(1);
    h.set_mode(0o644);
    b.append_data(&mut h, "fine", &b"x"[..]).unwrap();
    b.append_data(&mut h, "y".repeat(300), &b"x"[..]).unwrap();
    cases.push(("huge name", vec![b.into_inner().unwrap()]));
    let mut t = Vec::new();
    good(&mut t);
    raw_entry(&mut t, b"sub/.wh...", reg, b"", b"");
    cases.push(("whiteout of ..", vec![finish_tar(t)]));

    for (i, (what, tars)) in cases.iter().enumerate() {
        let mut paths = Vec::new();
        for (j, t) in tars.iter().enumerate() {
            let p = fx.path(&format!("case{i}-{j}.tar"));
            fs::write(&p, t).unwrap();
            paths.push(p.to_str().unwrap().to_string());
        }
        let mut args = vec!["import".to_string(), format!("v{i}")];
        args.extend(paths);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let msg = fx.fails(&args);
        assert!(msg.contains("refused"), "{what}: {msg}");
        assert!(
            !fx.ok(&["ls"]).lines().any(|l| l == format!("v{i}")),
            "{what}"
        );
    }
    // Nothing outside, nothing half-written in the store.
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "written outside"
    );
    let left: Vec<_> = fs::read_dir(&fx.store)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != ".lock")
        .collect();
    assert!(left.is_empty(), "left in the store: {left:?}");
}

#[test]
fn import_applies_oci_whiteouts_layer_by_layer() {
    require!();
    let fx = Fixture::new();
    let reg = tar::EntryType::Regular;
    let dir = tar::EntryType::Directory;
    let mut t1 = Vec::new();
    raw_entry(&mut t1, b"d", dir, b"", b"");
    raw_entry(&mut t1, b"d/old", reg, b"", b"old\n");
    raw_entry(&mut t1, b"o", dir, b"", b"");
    raw_entry(&mut t1, b"o/hidden", reg, b"", b"x");
    raw_entry(&mut t1, b"keep", reg, b"", b"k\n");
    raw_entry(&mut t1, b"gone", reg, b"", b"g\n");
    let mut t2 = Vec::new();
    // Deleted then made again in the same layer: starts empty.
    raw_entry(&mut t2, b".wh.d", reg, b"", b"");
    raw_entry(&mut t2, b"d/new", reg, b"", b"new\n");
    // Made, then a whiteout of the same name: the whiteout hides only
    // what is below.
    raw_entry(&mut t2, b"o/mine", reg, b"", b"m");
    raw_entry(&mut t2, b".wh.o", reg, b"", b"");
    raw_entry(&mut t2, b".wh.gone", reg, b"", b"");
    let (p1, p2) = (fx.path("1.tar"), fx.path("2.tar"));
    fs::write(&p1, finish_tar(t1)).unwrap();
    fs::write(&p2, finish_tar(t2)).unwrap();
    fx.ok(&["import", "v", p1.to_str().unwrap(), p2.to_str().unwrap()]);
    let mp = PathBuf::from(fx.ok(&["mount", "v"]));
    let names = |d: &Path| {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&mp), ["d", "keep", "o"]);
    assert_eq!(names(&mp.join("d")), ["new"]);
    assert_eq!(names(&mp.join("o")), ["mine"]);
    fx.ok(&["umount", "v"]);
}

/// One HTTP POST over the plugin socket; the JSON answer.
fn call(sock: &Path, endpoint: &str, body: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).unwrap();
    write!(
        s,
        "POST /{endpoint} HTTP/1.1\r\nHost: plugin\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, json) = resp.split_once("\r\n\r\n").unwrap();
    let v: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{endpoint}: {e}: {json}"));
    // An error is a 500 (podman reads `Err` only then), success a 200.
    let failed = v["Err"].as_str().is_some_and(|e| !e.is_empty());
    let status = if failed {
        "HTTP/1.1 500"
    } else {
        "HTTP/1.1 200"
    };
    assert!(head.starts_with(status), "{head}: {json}");
    v
}

#[test]
fn plugin_api_refcounts_and_survives_restart() {
    require!();
    let mut fx = Fixture::new();
    let seed = fx.path("seed");
    common::write(&seed.join("hello"), b"from the seed\n");
    let sock = fx.path("plugins/layerfs.sock");
    // What a create killed half-way leaves is swept at start.
    common::mkdir(&fx.store.join(".new-web-1/upper"));
    start_plugin(&mut fx, &sock);
    // The plugin listens before it settles its stores and answers once
    // they are settled: the first answer, not the socket, says it is done.
    let r = call(&sock, "Plugin.Activate", "");
    assert_eq!(r["Implements"][0], "VolumeDriver");
    assert!(!fx.store.join(".new-web-1").exists());
    let r = call(&sock, "VolumeDriver.Capabilities", "");
    assert_eq!(r["Capabilities"]["Scope"], "local");
    let create = format!(r#"{{"Name":"web","Opts":{{"from":"{}"}}}}"#, seed.display());
    assert_eq!(call(&sock, "VolumeDriver.Create", &create)["Err"], "");
    let r = call(&sock, "VolumeDriver.Create", &create);
    assert!(r["Err"].as_str().unwrap().contains("already exists"), "{r}");
    let r = call(
        &sock,
        "VolumeDriver.Create",
        r#"{"Name":"x","Opts":{"colour":"red"}}"#,
    );
    assert!(r["Err"].as_str().unwrap().contains("colour"), "{r}");
    let r = call(&sock, "VolumeDriver.Create", r#"{"Name":"a/b"}"#);
    assert!(
        r["Err"].as_str().unwrap().contains("bad volume name"),
        "{r}"
    );

    // Two containers share one mount.
    let m1 = call(&sock, "VolumeDriver.Mount", r#"{"Name":"web","ID":"c1"}"#);
    assert_eq!(m1["Err"], "", "{m1}");
    let mp = PathBuf::from(m1["Mountpoint"].as_str().unwrap());
    let m2 = call(&sock, "VolumeDriver.Mount", r#"{"Name":"web","ID":"c2"}"#);
    assert_eq!(m2["Mountpoint"], m1["Mountpoint"]);
    assert_eq!(fs::read(mp.join("hello")).unwrap(), b"from the seed\n");
    common::write(&mp.join("written"), b"by c1\n");
    let r = call(&sock, "VolumeDriver.Remove", r#"{"Name":"web"}"#);
    let err = r["Err"].as_str().unwrap();
    assert!(
        err.contains("c1") && err.contains("c2"),
        "rm names the holders: {r}"
    );
    assert_eq!(
        call(&sock, "VolumeDriver.Unmount", r#"{"Name":"web","ID":"c1"}"#)["Err"],
        ""
    );
    assert!(common::is_mounted(&mp), "c2 still holds it");
    let r = call(&sock, "VolumeDriver.Path", r#"{"Name":"web"}"#);
    assert_eq!(r["Mountpoint"], m1["Mountpoint"]);

    // The plugin dies; the mount stays, and a new plugin knows it.
    let mut p = fx.plugin.take().unwrap();
    p.kill().unwrap();
    p.wait().unwrap();
    assert!(common::is_mounted(&mp));
    assert_eq!(fs::read(mp.join("written")).unwrap(), b"by c1\n");
    start_plugin(&mut fx, &sock);
    let r = call(&sock, "VolumeDriver.List", "");
    assert_eq!(r["Volumes"][0]["Name"], "web", "{r}");
    assert_eq!(r["Volumes"][0]["Mountpoint"], m1["Mountpoint"]);
    let r = call(&sock, "VolumeDriver.Get", r#"{"Name":"web"}"#);
    assert_eq!(r["Volume"]["Status"]["Holders"][0], "c2", "{r}");
    let r = call(&sock, "VolumeDriver.Remove", r#"{"Name":"web"}"#);
    assert!(r["Err"].as_str().unwrap().contains("c2"), "{r}");
    // A later mount works and shares the same mount.
    let m3 = call(&sock, "VolumeDriver.Mount", r#"{"Name":"web","ID":"c3"}"#);
    assert_eq!(m3["Mountpoint"], m1["Mountpoint"]);
    assert_eq!(
        call(&sock, "VolumeDriver.Unmount", r#"{"Name":"web","ID":"c2"}"#)["Err"],
        ""
    );
    assert!(common::is_mounted(&mp));
    assert_eq!(
        call(&sock, "VolumeDriver.Unmount", r#"{"Name":"web","ID":"c3"}"#)["Err"],
        ""
    );
    assert!(!common::is_mounted(&mp), "the last unmount ends the mount");
    // Path says whether it is mounted; Get shows where it mounts, as
    // Docker's `local` driver does.
    let r = call(&sock, "VolumeDriver.Path", r#"{"Name":"web"}"#);
    assert_eq!(r["Mountpoint"], "");
    let r = call(&sock, "VolumeDriver.Get", r#"{"Name":"web"}"#);
    assert_eq!(r["Volume"]["Mountpoint"], m1["Mountpoint"]);
    // -o from=VOLUME@SNAP clones; the clone keeps its base alive.
    fx.ok(&["snapshot", "web", "s1"]);
    let r = call(
        &sock,
        "VolumeDriver.Create",
        r#"{"Name":"web2","Opts":{"from":"web@s1"}}"#,
    );
    assert_eq!(r["Err"], "", "{r}");
    let m = call(&sock, "VolumeDriver.Mount", r#"{"Name":"web2","ID":"c9"}"#);
    let mp2 = PathBuf::from(m["Mountpoint"].as_str().unwrap());
    assert_eq!(fs::read(mp2.join("written")).unwrap(), b"by c1\n");
    let r = call(
        &sock,
        "VolumeDriver.Unmount",
        r#"{"Name":"web2","ID":"c9"}"#,
    );
    assert_eq!(r["Err"], "");
    let r = call(&sock, "VolumeDriver.Remove", r#"{"Name":"web"}"#);
    assert!(r["Err"].as_str().unwrap().contains("web2"), "{r}");
    let r = call(&sock, "VolumeDriver.Remove", r#"{"Name":"web2"}"#);
    assert_eq!(r["Err"], "");
    let r = call(&sock, "VolumeDriver.Remove", r#"{"Name":"web"}"#);
    assert_eq!(r["Err"], "");
    let r = call(&sock, "VolumeDriver.Get", r#"{"Name":"web"}"#);
    assert!(r["Err"].as_str().unwrap().contains("no such volume"), "{r}");
}

/// Seed directories named with the option string's separators and its
/// escape: through the CLI (one `--from` each) and through the plugin's
/// `from=` (Docker's `-o from=`, a lowerdir list: `\\` escapes the next
/// character, `:` separates).
#[test]
fn seeds_with_commas_backslashes_and_colons() {
    require!();
    let mut fx = Fixture::new();
    let names = ["a,b", "c\\d", "e:f"];
    let seeds: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let dir = fx.path(n);
            common::write(&dir.join(format!("f{i}")), n.as_bytes());
            common::write(&dir.join("top"), n.as_bytes());
            dir.to_str().unwrap().to_string()
        })
        .collect();
    let check = |mp: &Path| {
        for (i, n) in names.iter().enumerate() {
            assert_eq!(fs::read(mp.join(format!("f{i}"))).unwrap(), n.as_bytes());
        }
        assert_eq!(fs::read(mp.join("top")).unwrap(), b"a,b", "top first");
    };

    let mut args = vec!["create", "cli"];
    for s in &seeds {
        args.extend(["--from", s.as_str()]);
    }
    fx.ok(&args);
    let mp = PathBuf::from(fx.ok(&["mount", "cli"]));
    check(&mp);
    common::write(&mp.join("new"), b"n");
    fx.ok(&["umount", "cli"]);
    fx.ok(&["snapshot", "cli"]);
    let tar = fx.path("cli.tar");
    fx.ok(&["export", "cli", "-o", tar.to_str().unwrap()]);
    assert!(tar_entries(&tar).iter().any(|(p, ..)| p == "f1"));

    let sock = fx.path("plugins/layerfs.sock");
    start_plugin(&mut fx, &sock);
    let from = format!(
        "{}:{}:{}",
        seeds[0],
        seeds[1].replace('\\', "\\\\"),
        seeds[2].replace(':', "\\:")
    );
    let create = serde_json::json!({"Name": "docker", "Opts": {"from": from}});
    let r = call(&sock, "VolumeDriver.Create", &create.to_string());
    assert_eq!(r["Err"], "", "{r}");
    let m = call(
        &sock,
        "VolumeDriver.Mount",
        r#"{"Name":"docker","ID":"c1"}"#,
    );
    assert_eq!(m["Err"], "", "{m}");
    check(Path::new(m["Mountpoint"].as_str().unwrap()));
    let r = call(
        &sock,
        "VolumeDriver.Unmount",
        r#"{"Name":"docker","ID":"c1"}"#,
    );
    assert_eq!(r["Err"], "", "{r}");
}

/// The owner, group and permission bits of a path.
fn owner_mode(p: &Path) -> (u32, u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let md = fs::metadata(p).unwrap();
    (md.uid(), md.gid(), md.mode() & 0o7777)
}

/// Whether `t` reads as RFC 3339 in UTC, as Docker shows times.
fn is_rfc3339(t: &serde_json::Value) -> bool {
    let t = t.as_str().unwrap_or("");
    t.len() == 20 && t.as_bytes()[10] == b'T' && t.ends_with('Z') && t.starts_with("20")
}

/// The arguments of a `run --rm` of `script` in `bb:1` with `volume_at`
/// (`NAME:/data`) mounted, for either engine.
fn run_on<'a>(volume_at: &'a str, script: &'a str) -> Vec<&'a str> {
    let mut args: Vec<&str> = "run --rm --network none -v".split(' ').collect();
    args.extend([volume_at, "bb:1", "sh", "-c", script]);
    args
}

/// Three stores from the configuration file: `default` and `shared` on
/// this disk, `far` on a FUSE filesystem (a layerfs mount, standing in for
/// GlusterFS: statfs says FUSE either way) and `gone`, missing. Volumes by
/// label, one name in one store, ownership options and a store's
/// defaults, bad options refused with nothing made, Docker's view (Get),
/// and all of it again after the plugin restarts.
#[test]
fn plugin_serves_labelled_stores_with_ownership() {
    require!();
    let mut fx = Fixture::new();
    let shared = fx.path("shared");
    common::mkdir(&shared);
    for d in ["fl", "fu", "fw"] {
        common::mkdir(&fx.path(d));
    }
    let fuse = common::try_mount_layerfs(
        &common::stack_opts(&[fx.path("fl")], &fx.path("fu"), &fx.path("fw")),
        &fx.path("fuse"),
    )
    .unwrap();
    let far = fuse.path("far");
    common::mkdir(&far);
    let config = fx.path("volumes.toml");
    let text = format!(
        "[stores.default]\npath = \"{}\"\n\n[stores.shared]\npath = \"{}\"\nuid = 4242\nmode = \"0700\"\n\n\
         [stores.far]\npath = \"{}\"\n\n[stores.gone]\npath = \"{}\"\n",
        fx.store.display(),
        shared.display(),
        far.display(),
        fx.path("not-mounted/store").display()
    );
    fs::write(&config, text).unwrap();
    let cli = |args: &[&str]| {
        Command::new(bin())
            .env("LAYERFS_VOLUME_CONFIG", &config)
            .args(args)
            .output()
            .unwrap()
    };
    let sock = fx.path("plugins/layerfs.sock");
    let serve = || {
        let mut c = Command::new(bin());
        c.env("LAYERFS_VOLUME_CONFIG", &config);
        c
    };
    start_plugin_cmd(&mut fx, &sock, serve());
    let log = fs::read_to_string(fx.path("plugin.log")).unwrap();
    assert!(
        log.contains("store gone (") && log.contains("missing (is its filesystem mounted?)"),
        "{log}"
    );
    let create = |name: &str, opts: serde_json::Value| {
        let body = serde_json::json!({"Name": name, "Opts": opts});
        call(&sock, "VolumeDriver.Create", &body.to_string())["Err"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let none = serde_json::json!({});
    assert_eq!(create("a", none.clone()), "");
    let opts = serde_json::json!({"store": "shared", "o": "uid=1234,gid=2345,mode=0750"});
    assert_eq!(create("b", opts), "");
    // VIC's spelling; the store's defaults (uid 4242, mode 0700).
    assert_eq!(
        create("c", serde_json::json!({"VolumeStore": "shared"})),
        ""
    );
    assert_eq!(create("f", serde_json::json!({"store": "far"})), "");
    // A seeded volume: its root as asked, what is below as the seed has it.
    let seed = fx.path("seed");
    common::write(&seed.join("sub/file"), b"seeded\n");
    fs::set_permissions(&seed, std::os::unix::fs::PermissionsExt::from_mode(0o751)).unwrap();
    std::os::unix::fs::chown(seed.join("sub"), Some(777), Some(778)).unwrap();
    let opts = serde_json::json!({"from": seed.to_str().unwrap(), "uid": "1000", "gid": "1000"});
    assert_eq!(create("d", opts), "");

    // Refusals name the option, or both stores; nothing is made.
    // Each case: the volume's name, its options, what the Err says.
    let known = "(known: from, store (or VolumeStore), size (or Capacity), uid, gid, mode, o)";
    let colour = format!(r#"x|{{"o":"uid=1,colour=red"}}|unknown option "colour" {known}"#);
    for case in [
        r#"a|{"store":"shared"}|store shared: store default already has a volume a"#,
        r#"x|{"store":"nosuch"}|unknown store "nosuch" (stores: default, far, shared)"#,
        r#"x|{"store":"gone"}|missing (is its filesystem mounted?); it is not served"#,
        r#"x|{"uid":"bob"}|uid=bob: a number from 0 to 4294967294 is expected"#,
        r#"x|{"mode":"0799"}|mode=0799: octal permission bits from 0 to 7777"#,
        &colour,
    ] {
        let mut parts = case.splitn(3, '|');
        let (name, opts, want) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let e = create(name, serde_json::from_str(opts).unwrap());
        assert!(e.contains(want), "{opts}: {e}");
    }
    let listed = || -> Vec<String> {
        let r = call(&sock, "VolumeDriver.List", "");
        let mut names: Vec<String> = r["Volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["Name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    assert_eq!(listed(), ["a", "b", "c", "d", "f"]);
    assert!(!fx.store.join("x").exists() && !shared.join("x").exists());

    // Docker's view.
    let get = |name: &str| {
        call(
            &sock,
            "VolumeDriver.Get",
            &format!(r#"{{"Name":"{name}"}}"#),
        )
    };
    let r = get("b");
    let v = &r["Volume"];
    assert!(is_rfc3339(&v["CreatedAt"]), "{r}");
    assert_eq!(v["Mountpoint"], shared.join("b/merged").to_str().unwrap());
    assert_eq!(v["Status"]["Store"], "shared", "{r}");
    assert_eq!(v["Status"]["Scope"], "local", "{r}");
    assert_eq!(get("f")["Volume"]["Status"]["Scope"], "global");
    assert_eq!(
        get("d")["Volume"]["Status"]["Seeds"][0],
        seed.to_str().unwrap()
    );
    let r = call(&sock, "VolumeDriver.Capabilities", "");
    assert_eq!(r["Capabilities"]["Scope"], "local", "the default store's");

    // Ownership shows through the mount.
    let mount = |name: &str, id: &str| {
        let body = format!(r#"{{"Name":"{name}","ID":"{id}"}}"#);
        let m = call(&sock, "VolumeDriver.Mount", &body);
        assert_eq!(m["Err"], "", "{m}");
        PathBuf::from(m["Mountpoint"].as_str().unwrap())
    };
    let unmount = |name: &str, id: &str| {
        let body = format!(r#"{{"Name":"{name}","ID":"{id}"}}"#);
        assert_eq!(call(&sock, "VolumeDriver.Unmount", &body)["Err"], "");
    };
    let mb = mount("b", "c1");
    assert_eq!(owner_mode(&mb), (1234, 2345, 0o750));
    common::write(&mb.join("data"), &vec![7u8; 1 << 20]);
    unmount("b", "c1");
    let used = get("b")["Volume"]["Status"]["Used"].as_u64().unwrap();
    assert!(used >= 1 << 20, "Used {used}");
    let mc = mount("c", "c2");
    assert_eq!(owner_mode(&mc), (4242, 0, 0o700));
    let md = mount("d", "c3");
    // uid and gid as asked, the mode as the seed's root has it.
    assert_eq!(owner_mode(&md), (1000, 1000, 0o751));
    assert_eq!(owner_mode(&md.join("sub")).0, 777);
    assert_eq!(fs::read(md.join("sub/file")).unwrap(), b"seeded\n");
    unmount("d", "c3");

    // The CLI: a label, its store's volumes; RFC 3339; refusals.
    let out = cli(&["--store", "shared", "ls"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "b\nc\n",
        "{}",
        common::output_text(&out)
    );
    let out = cli(&["--store", "shared", "snapshots", "b"]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    let out = cli(&["--store", "shared", "snapshot", "b", "day0"]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    let out = cli(&["--store", "shared", "snapshots", "b"]);
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let (id, t) = line.trim().split_once('\t').unwrap();
    assert_eq!(id, "day0");
    assert!(is_rfc3339(&serde_json::json!(t)), "{line}");
    let out = cli(&["--store", "shared", "create", "a"]);
    assert!(!out.status.success());
    let msg = common::output_text(&out);
    assert!(
        msg.contains("store default already has a volume a"),
        "{msg}"
    );
    let out = cli(&["--store", "shared", "clone", "b@day0", "a"]);
    let msg = common::output_text(&out);
    assert!(
        msg.contains("store default already has a volume a"),
        "{msg}"
    );
    let out = cli(&["--store", "shared", "create", "y", "-o", "uid=bob"]);
    assert!(common::output_text(&out).contains("uid=bob: a number"));
    // A labelled store that is not there is not made on the local disk.
    let msg = common::output_text(&cli(&["--store", "gone", "ls"]));
    assert!(msg.contains("store gone ("), "{msg}");
    assert!(
        msg.contains("missing (is its filesystem mounted?)"),
        "{msg}"
    );
    assert!(!fx.path("not-mounted").exists());
    let out = cli(&["--store", "nosuch", "ls"]);
    let msg = common::output_text(&out);
    assert!(
        msg.contains("unknown store \"nosuch\" (labels: default, far, gone, shared in"),
        "{msg}"
    );
    let out = cli(&["--store", "shared", "create", "e", "-o", "uid=7,mode=0701"]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    let v: serde_json::Value =
        serde_json::from_slice(&cli(&["--store", "shared", "inspect", "e"]).stdout).unwrap();
    assert!(is_rfc3339(&v["Created"]), "{v}");
    assert_eq!(owner_mode(&shared.join("e/upper")), (7, 0, 0o701));
    // A reader that goes away: no "Broken pipe" message.
    let mut child = Command::new(bin())
        .env("LAYERFS_VOLUME_CONFIG", &config)
        .args(["--store", "shared", "inspect", "e"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");

    // The plugin restarts: the same volumes in the same stores, and c's
    // mount and holder are kept.
    let mut p = fx.plugin.take().unwrap();
    p.kill().unwrap();
    p.wait().unwrap();
    start_plugin_cmd(&mut fx, &sock, serve());
    assert_eq!(listed(), ["a", "b", "c", "d", "e", "f"]);
    let r = get("c");
    assert_eq!(r["Volume"]["Status"]["Store"], "shared");
    assert_eq!(r["Volume"]["Status"]["Holders"][0], "c2", "{r}");
    assert_eq!(r["Volume"]["Status"]["Mounted"], true, "{r}");
    assert_eq!(get("b")["Volume"]["Status"]["Snapshots"][0], "day0");
    assert_eq!(owner_mode(&mount("b", "c4")), (1234, 2345, 0o750));
    unmount("b", "c4");
    unmount("c", "c2");
    assert!(!common::is_mounted(&mc));
    for n in ["a", "b", "c", "d", "e", "f"] {
        let r = call(
            &sock,
            "VolumeDriver.Remove",
            &format!(r#"{{"Name":"{n}"}}"#),
        );
        assert_eq!(r["Err"], "", "{n}: {r}");
    }
    // The plugin goes before the FUSE filesystem holding a store.
    let mut p = fx.plugin.take().unwrap();
    p.kill().unwrap();
    p.wait().unwrap();
    drop(fuse);
}

/// A labelled store on GlusterFS beside a local one, the plugin on a
/// gluster "host" (its own namespaces, the volume mounted by its glusterfs
/// client): scope `global` there and `local` here, ownership through the
/// mount, and a restarted plugin that keeps both stores.
#[test]
fn plugin_serves_a_store_on_glusterfs() {
    require_gluster!();
    let cluster = common::gluster::Cluster::start();
    let host = cluster.host("a");
    let shared = host.gl().join("store");
    host.exec(&["mkdir", "-p", shared.to_str().unwrap()])
        .unwrap();
    let sock = cluster.base.join("plugin.sock");
    let stores = [
        format!("default={}", cluster.base.join("local").display()),
        format!("shared={}", shared.display()),
    ];
    let serve = |log: &str| {
        let log = fs::File::create(cluster.base.join(log)).unwrap();
        let mut argv = vec![bin()];
        for s in &stores {
            argv.extend(["--store", s.as_str()]);
        }
        argv.extend(["serve", "--socket", sock.to_str().unwrap()]);
        let child = host.cmd(&argv).stderr(log).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&sock).is_err() {
            assert!(Instant::now() < deadline, "plugin did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    };
    let mut plugin = serve("plugin.log");
    let create = |body: &str| call(&sock, "VolumeDriver.Create", body)["Err"].clone();
    assert_eq!(create(r#"{"Name":"l"}"#), "");
    let opts = r#"{"Name":"g","Opts":{"store":"shared","uid":"1234","mode":"0750"}}"#;
    assert_eq!(create(opts), "");
    let status = |name: &str| {
        let r = call(
            &sock,
            "VolumeDriver.Get",
            &format!(r#"{{"Name":"{name}"}}"#),
        );
        r["Volume"]["Status"].clone()
    };
    assert_eq!(status("g")["Scope"], "global", "{}", status("g"));
    assert_eq!(status("g")["Store"], "shared");
    assert_eq!(status("l")["Scope"], "local");
    let on_host = |script: &str| {
        let out = host.exec(&["sh", "-c", script]).unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let mount = r#"{"Name":"g","ID":"c1"}"#;
    let m = call(&sock, "VolumeDriver.Mount", mount);
    assert_eq!(m["Err"], "", "{m}");
    let mp = m["Mountpoint"].as_str().unwrap().to_string();
    assert_eq!(on_host(&format!("stat -c '%u %a' {mp}")), "1234 750");
    on_host(&format!("echo on-gluster > {mp}/f"));
    assert_eq!(call(&sock, "VolumeDriver.Unmount", mount)["Err"], "");

    plugin.kill().unwrap();
    plugin.wait().unwrap();
    let mut plugin = serve("plugin2.log");
    let r = call(&sock, "VolumeDriver.List", "");
    assert_eq!(r["Volumes"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(status("g")["Store"], "shared");
    assert!(status("g")["Used"].as_u64().unwrap() > 0);
    let m = call(&sock, "VolumeDriver.Mount", mount);
    assert_eq!(m["Err"], "", "{m}");
    assert_eq!(on_host(&format!("cat {mp}/f")), "on-gluster");
    assert_eq!(call(&sock, "VolumeDriver.Unmount", mount)["Err"], "");
    for n in ["g", "l"] {
        let r = call(
            &sock,
            "VolumeDriver.Remove",
            &format!(r#"{{"Name":"{n}"}}"#),
        );
        assert_eq!(r["Err"], "", "{r}");
    }
    plugin.kill().unwrap();
    plugin.wait().unwrap();
}

#[test]
fn docker_engine_uses_layerfs_volumes() {
    require!("dockerd", "docker", "busybox", "unshare", "nsenter", "tar");
    let tmp = short_tmp("lfv");
    let dir = tmp.path();
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::copy(common::busybox().unwrap(), rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "ls", "echo", "rm", "sleep", "test"] {
        common::link_sym("busybox", &rootfs.join("bin").join(applet));
    }
    let seed = dir.join("seed");
    common::write(&seed.join("keep"), b"kept\n");
    common::write(&seed.join("change"), b"old\n");
    common::write(&seed.join("gone"), b"to delete\n");

    let mut engine = Engine::start(dir);
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    let mut import = Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{}/docker.sock", dir.display()))
        .args(["import", "-", "bb:1"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    import.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
    assert!(import.wait().unwrap().success());

    let from = format!("from={}", seed.display());
    engine.ok(&["volume", "create", "-d", "layerfs", "-o", &from, "vol"]);
    let run = [
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        "vol:/data",
        "bb:1",
        "sh",
        "-c",
    ];
    let out = engine.ok(&[
        &run[..],
        &["cat /data/keep && echo new > /data/change && rm /data/gone && echo hi > /data/added"],
    ]
    .concat());
    assert_eq!(out, "kept");
    assert!(
        !engine.volume_mounted("vol"),
        "the last container's exit unmounts"
    );
    let out = engine.ok(&[&run[..], &["cat /data/change /data/added; ls /data"]].concat());
    assert_eq!(out, "new\nhi\nadded\nchange\nkeep");

    // Two containers on one volume at once see each other's writes.
    let detached = |name: &str| {
        engine.ok(&[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            name,
            "-v",
            "vol:/data",
            "bb:1",
            "sleep",
            "600",
        ])
    };
    detached("ca");
    detached("cb");
    engine.ok(&["exec", "ca", "sh", "-c", "echo from-a > /data/shared"]);
    assert_eq!(engine.ok(&["exec", "cb", "cat", "/data/shared"]), "from-a");
    let rm = engine.docker(&["volume", "rm", "vol"]);
    assert!(!rm.status.success(), "rm of a volume in use");
    let msg = common::output_text(&rm);
    assert!(msg.contains("in use"), "{msg}");

    // The plugin dies and comes back while the containers run.
    engine.kill_plugin();
    assert_eq!(engine.ok(&["exec", "ca", "cat", "/data/shared"]), "from-a");
    engine.ok(&["exec", "cb", "sh", "-c", "echo during > /data/outage"]);
    engine.restart_plugin();
    let out = engine.ok(&[&run[..], &["cat /data/outage"]].concat());
    assert_eq!(out, "during");
    engine.ok(&["rm", "-f", "ca"]);
    assert!(engine.volume_mounted("vol"), "b still holds it");
    engine.ok(&["rm", "-f", "cb"]);
    assert!(!engine.volume_mounted("vol"), "the last holder unmounts");
    engine.ok(&["volume", "rm", "vol"]);
    assert!(!engine.store.join("vol").exists());
    // The seed is untouched.
    assert_eq!(fs::read(seed.join("change")).unwrap(), b"old\n");
    assert!(seed.join("gone").exists());
    drop(engine);
}

/// Docker with two labelled stores: `-o store=` picks one, `-o uid= -o
/// gid= -o mode=` own the volume's root in the container, `docker volume
/// inspect` shows the store, the time and the mountpoint, a bad option is
/// refused naming it, and a restarted plugin keeps all of it.
#[test]
fn docker_volume_stores_and_ownership() {
    require!("dockerd", "docker", "busybox", "unshare", "nsenter", "tar");
    let tmp = short_tmp("lfs");
    let dir = tmp.path().join("e");
    let shared = dir.join("shared");
    fs::create_dir_all(&shared).unwrap();
    let stores = vec![
        format!("default={}", dir.join("store").display()),
        format!("shared={}", shared.display()),
    ];
    let mut engine = Engine::start_stores(&dir, "", stores);
    import_busybox(&engine, tmp.path());
    engine.ok(&["volume", "create", "-d", "layerfs", "plain"]);
    engine.ok(&[
        "volume",
        "create",
        "-d",
        "layerfs",
        "-o",
        "store=shared",
        "-o",
        "uid=1234",
        "-o",
        "gid=2345",
        "-o",
        "mode=0750",
        "owned",
    ]);
    assert!(shared.join("owned/meta.json").exists());
    assert!(dir.join("store/plain/meta.json").exists());
    let bad = engine.docker(&["volume", "create", "-d", "layerfs", "-o", "uid=bob", "bad"]);
    assert!(!bad.status.success());
    let msg = common::output_text(&bad);
    assert!(msg.contains("uid=bob: a number"), "{msg}");
    let bad = engine.docker(&["volume", "create", "-d", "layerfs", "-o", "store=x", "bad"]);
    let msg = common::output_text(&bad);
    assert!(
        msg.contains("unknown store \"x\" (stores: default, shared)"),
        "{msg}"
    );
    let check = |engine: &Engine| {
        let v: serde_json::Value =
            serde_json::from_str(&engine.ok(&["volume", "inspect", "owned"])).unwrap();
        let v = &v[0];
        assert_eq!(v["Status"]["Store"], "shared", "{v}");
        assert_eq!(v["Scope"], "local", "{v}");
        assert!(!v["CreatedAt"].as_str().unwrap().starts_with("0001"), "{v}");
        assert_eq!(
            v["Mountpoint"],
            shared.join("owned/merged").to_str().unwrap()
        );
        let ls = engine.ok(&["volume", "ls", "-q"]);
        assert_eq!(ls.lines().collect::<Vec<_>>(), ["owned", "plain"]);
        let out = engine.ok(&run_on("owned:/data", "busybox stat -c '%u %g %a' /data"));
        assert_eq!(out, "1234 2345 750");
    };
    check(&engine);
    // Docker's Mount id is not the container's, but the container keeps it
    // in its config (as doc/volume-stores.md tells how to find it).
    let cid = engine.ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "-v",
        "owned:/data",
        "bb:1",
        "sleep",
        "600",
    ]);
    let store_arg = format!("shared={}", shared.display());
    let out = engine
        .in_ns(&[bin(), "--store", &store_arg, "inspect", "owned"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let holder = v["Holders"][0].as_str().unwrap().to_string();
    let config = dir.join(format!("data/containers/{cid}/config.v2.json"));
    let config = fs::read_to_string(config).unwrap();
    assert!(
        config.contains(&format!("\"ID\":\"{holder}\"")),
        "{holder}: {config}"
    );
    engine.ok(&["rm", "-f", &cid]);
    engine.kill_plugin();
    engine.restart_plugin();
    check(&engine);
    engine.ok(&["volume", "rm", "owned", "plain"]);
    assert!(!shared.join("owned").exists());
    drop(engine);
}

/// A `size=64M` volume in a container (see doc/capacity.md): a size
/// without a unit refused with nothing made; `dd` until ENOSPC with
/// nothing partial; `df` inside showing the limit and the use; space freed
/// and written again; all of it kept when the plugin restarts.
#[test]
fn docker_volume_size_limit() {
    require!("dockerd", "docker", "busybox", "unshare", "nsenter", "tar");
    let tmp = short_tmp("lfc");
    let dir = tmp.path().join("e");
    let mut engine = Engine::start(&dir);
    import_busybox(&engine, tmp.path());
    let bad = engine.docker(&["volume", "create", "-d", "layerfs", "-o", "size=64", "bad"]);
    let msg = common::output_text(&bad);
    assert!(
        !bad.status.success() && msg.contains("size=64: a unit is needed"),
        "{msg}"
    );
    assert!(!dir.join("store/bad").exists());
    engine.ok(&["volume", "create", "-d", "layerfs", "-o", "size=64M", "cap"]);
    let v: serde_json::Value =
        serde_json::from_str(&engine.ok(&["volume", "inspect", "cap"])).unwrap();
    assert_eq!(v[0]["Status"]["Size"], 64 << 20, "{v}");
    // `df -k` inside: (size, used, available) in KiB.
    let df = |engine: &Engine, script: &str| -> (String, Vec<u64>) {
        let script = format!("{script}; busybox df -k /data | busybox tail -1");
        let out = engine.ok(&run_on("cap:/data", &script));
        let last = out.lines().last().unwrap_or_default().to_string();
        let f = last
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        (out, f)
    };
    let (_, f) = df(&engine, "true");
    assert_eq!(f[..3], [65536, 0, 65536]);
    let fill = "busybox dd if=/dev/zero of=/data/a bs=1M count=100 2>&1; echo rc=$?; \
                busybox stat -c %s /data/a";
    let (out, f) = df(&engine, fill);
    assert!(
        out.contains("No space left on device") && out.contains("rc=1"),
        "{out}"
    );
    assert!(
        out.contains("\n67108864\n"),
        "a holds what fits, whole: {out}"
    );
    assert_eq!(f[..3], [65536, 65536, 0], "{out}");
    let again = "busybox rm /data/a; busybox dd if=/dev/zero of=/data/b bs=1M count=10 2>&1; \
                 echo rc=$?";
    let (out, f) = df(&engine, again);
    assert!(out.contains("rc=0"), "{out}");
    assert_eq!(f[..3], [65536, 10240, 55296], "{out}");
    engine.kill_plugin();
    engine.restart_plugin();
    let (_, f) = df(&engine, "true");
    assert_eq!(f[..3], [65536, 10240, 55296]);
    engine.ok(&["volume", "rm", "cap"]);
    drop(engine);
}

#[test]
fn podman_uses_layerfs_volumes() {
    require!("podman", "runc", "busybox", "tar");
    let mut fx = Fixture::new();
    let sock = fx.path("plugins/layerfs.sock");
    let podman = podman_with_plugin(&mut fx, &sock);
    let rootfs = fx.path("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::copy(common::busybox().unwrap(), rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "ls", "echo", "rm", "sleep"] {
        common::link_sym("busybox", &rootfs.join("bin").join(applet));
    }
    let image = fx.path("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&image)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    podman.ok(&["import", image.to_str().unwrap(), "bb:1"]);
    let seed = fx.path("seed");
    common::write(&seed.join("keep"), b"kept\n");
    common::write(&seed.join("change"), b"old\n");
    common::write(&seed.join("gone"), b"to delete\n");

    let from = format!("from={}", seed.display());
    podman.ok(&[
        "volume", "create", "--driver", "layerfs", "-o", &from, "vol",
    ]);
    let mounted = |fx: &Fixture| {
        let v: serde_json::Value = serde_json::from_str(&fx.ok(&["inspect", "vol"])).unwrap();
        v["Mounted"] == true
    };
    let run = [
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        "vol:/data",
        "bb:1",
        "sh",
        "-c",
    ];
    let out = podman.ok(&[
        &run[..],
        &["cat /data/keep && echo new > /data/change && rm /data/gone && echo hi > /data/added"],
    ]
    .concat());
    assert_eq!(out, "kept");
    assert!(!mounted(&fx), "the container's exit unmounts");
    let out = podman.ok(&[&run[..], &["cat /data/change /data/added; ls /data"]].concat());
    assert_eq!(out, "new\nhi\nadded\nchange\nkeep");

    let detached = |name: &str| {
        podman.ok(&[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            name,
            "-v",
            "vol:/data",
            "bb:1",
            "sleep",
            "600",
        ])
    };
    detached("ca");
    detached("cb");
    podman.ok(&["exec", "ca", "sh", "-c", "echo from-a > /data/shared"]);
    assert_eq!(podman.ok(&["exec", "cb", "cat", "/data/shared"]), "from-a");
    let rm = podman.cmd(&["volume", "rm", "vol"]).output().unwrap();
    assert!(!rm.status.success(), "rm of a volume in use");
    let msg = fx.fails(&["rm", "vol"]);
    assert!(msg.contains("in use by"), "{msg}");

    // The plugin dies and comes back while the containers run.
    let mut p = fx.plugin.take().unwrap();
    p.kill().unwrap();
    p.wait().unwrap();
    assert_eq!(podman.ok(&["exec", "ca", "cat", "/data/shared"]), "from-a");
    podman.ok(&["exec", "cb", "sh", "-c", "echo during > /data/outage"]);
    start_plugin(&mut fx, &sock);
    let out = podman.ok(&[&run[..], &["cat /data/outage"]].concat());
    assert_eq!(out, "during");
    podman.ok(&["rm", "-f", "-t", "0", "ca"]);
    assert!(mounted(&fx), "cb still holds it");
    podman.ok(&["rm", "-f", "-t", "0", "cb"]);
    assert!(!mounted(&fx), "the last holder unmounts");
    podman.ok(&["volume", "rm", "vol"]);
    assert!(!fx.store.join("vol").exists());
    // podman's spelling of ownership options.
    podman.ok(&[
        "volume",
        "create",
        "--driver",
        "layerfs",
        "-o",
        "o=uid=1234,gid=2345",
        "owned",
    ]);
    let out = podman.ok(&run_on("owned:/data", "busybox stat -c '%u %g' /data"));
    assert_eq!(out, "1234 2345");
    podman.ok(&["volume", "rm", "owned"]);
    assert_eq!(fs::read(seed.join("change")).unwrap(), b"old\n");
}

/// Imports the busybox image into an engine as `bb:1`.
fn import_busybox(engine: &Engine, scratch: &Path) {
    let applets = ["sh", "cat", "ls", "echo", "rm", "mkdir", "tr", "sleep"];
    let rootfs = busybox_rootfs(scratch, &applets);
    let tar = rootfs_tar(&rootfs, scratch);
    engine.ok(&["import", tar.to_str().unwrap(), "bb:1"]);
}

/// Docker Engine with its own `fuse-overlayfs` storage driver, where the
/// `fuse-overlayfs` dockerd finds on its PATH is layerfs: build with RUN
/// steps, diff, commit, save, and load into another engine (overlay2).
#[test]
fn docker_fuse_overlayfs_storage_driver_runs_on_layerfs() {
    require!("dockerd", "docker", "busybox", "unshare", "nsenter", "tar");
    let tmp = short_tmp("lfd");
    let dir = tmp.path().join("a");
    fs::create_dir_all(dir.join("bin")).unwrap();
    std::os::unix::fs::symlink(common::layerfs_bin(), dir.join("bin/fuse-overlayfs")).unwrap();
    let engine = Engine::start_with(&dir, "--storage-driver fuse-overlayfs");
    assert!(engine
        .ok(&["info"])
        .contains("Storage Driver: fuse-overlayfs"));
    import_busybox(&engine, tmp.path());
    let ctx = tmp.path().join("ctx");
    common::write(
        &ctx.join("Dockerfile"),
        b"FROM bb:1\nRUN echo one > /one && mkdir /d && echo x > /d/x\n\
          RUN rm /d/x && echo two > /two\n",
    );
    let build = Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{}/docker.sock", dir.display()))
        .args(["build", "-t", "built:1"])
        .arg(&ctx)
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", common::output_text(&build));
    // The container roots are layerfs mounts.
    engine.ok(&[
        "run",
        "-d",
        "--name",
        "probe",
        "--network",
        "none",
        "built:1",
        "sleep",
        "600",
    ]);
    let mounts = engine
        .in_ns(&["cat", "/proc/self/mounts"])
        .output()
        .unwrap();
    let mounts = String::from_utf8_lossy(&mounts.stdout).into_owned();
    let data = dir.join("data");
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(" fuse.layerfs ") && l.contains(data.to_str().unwrap())),
        "no layerfs mount under the data root:\n{mounts}"
    );
    engine.ok(&["rm", "-f", "probe"]);
    let out = engine.ok(&[
        "run",
        "--name",
        "w1",
        "--network",
        "none",
        "built:1",
        "sh",
        "-c",
        "cat /one /two; ls /d; echo three > /three; rm /one; echo y > /d/y",
    ]);
    assert_eq!(out, "one\ntwo");
    let diff: BTreeSet<String> = engine
        .ok(&["diff", "w1"])
        .lines()
        .map(String::from)
        .collect();
    let want: BTreeSet<String> = ["C /d", "A /d/y", "A /three", "D /one"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(diff, want);
    engine.ok(&["commit", "w1", "committed:1"]);
    let saved = tmp.path().join("saved.tar");
    engine.ok(&["save", "committed:1", "-o", saved.to_str().unwrap()]);
    drop(engine);

    // Elsewhere: another engine, with its default storage driver.
    let other = tmp.path().join("b");
    let engine = Engine::start(&other);
    engine.ok(&["load", "-i", saved.to_str().unwrap()]);
    let out = engine.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "committed:1",
        "sh",
        "-c",
        "ls / | tr '\\n' ' '; ls /d; cat /two /three",
    ]);
    assert_eq!(out, "bin d dev etc proc sys three two y\ntwo\nthree");
}

/// The tree a volume shows now (mounted for the look, then unmounted).
fn volume_tree(fx: &Fixture, store: &Path, name: &str) -> BTreeMap<Vec<u8>, common::Node> {
    let out = fx.run_in(store, &["mount", name]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    let mp = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let tree = common::snapshot(&mp);
    let out = fx.run_in(store, &["umount", name]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    tree
}

/// Changes a volume through a mount.
fn change(fx: &Fixture, name: &str, f: impl FnOnce(&Path)) {
    let mp = PathBuf::from(fx.ok(&["mount", name]));
    f(&mp);
    fx.ok(&["umount", name]);
}

/// `backup NAME --to DIR` plus extra arguments; returns the snapshot made.
fn backup(fx: &Fixture, name: &str, dir: &Path, extra: &[&str]) -> String {
    let mut args = vec!["backup", name, "--to", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = fx.ok(&args);
    out.split('\t').next().unwrap().to_string()
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(dir.join("layerfs-backup.json")).unwrap()).unwrap()
}

/// Restores `dir` (at `at`) as volume `name` of `store` and checks it
/// shows `want`.
fn restore_equals(
    fx: &Fixture,
    store: &Path,
    dir: &Path,
    name: &str,
    at: Option<&str>,
    want: &BTreeMap<Vec<u8>, common::Node>,
) {
    let mut args = vec!["restore", dir.to_str().unwrap(), name];
    if let Some(at) = at {
        args.extend_from_slice(&["--at", at]);
    }
    let out = fx.run_in(store, &args);
    assert!(out.status.success(), "{}", common::output_text(&out));
    assert_same_tree(want, &volume_tree(fx, store, name));
}

/// Restores the newest backup in `dir` as `name` of `store`: it must
/// show what volume v of the fixture's store shows now.
fn restore_equals_volume(fx: &Fixture, store: &Path, dir: &Path, name: &str) {
    let want = volume_tree(fx, &fx.store, "v");
    restore_equals(fx, store, dir, name, None, &want);
}

/// Three rounds of changes, each backed up: files added, rewritten and
/// removed, a hardlink set made and cut, xattrs set and removed, a mode
/// changed, a directory renamed.
fn three_backups(fx: &Fixture, dir: &Path) -> Vec<(String, BTreeMap<Vec<u8>, common::Node>)> {
    let seed = fx.path("seed");
    common::write(&seed.join("keep"), b"seed file\n");
    common::write(&seed.join("sub/old"), b"old\n");
    fx.ok(&["create", "v", "--from", seed.to_str().unwrap()]);
    let mut points = Vec::new();
    change(fx, "v", |mp| {
        common::write(&mp.join("a"), b"a1\n");
        common::write(&mp.join("d/b"), b"b1\n");
        common::setxattr(&mp.join("a"), "user.tag", b"one");
        common::chmod(&mp.join("d/b"), 0o640);
    });
    points.push((backup(fx, "v", dir, &[]), volume_tree(fx, &fx.store, "v")));
    change(fx, "v", |mp| {
        common::write(&mp.join("a"), b"a2, longer\n");
        fs::remove_file(mp.join("sub/old")).unwrap();
        common::write(&mp.join("d/new"), b"new\n");
        fs::hard_link(mp.join("d/new"), mp.join("linked")).unwrap();
        common::setxattr(&mp.join("keep"), "user.tag", b"seeded");
    });
    points.push((backup(fx, "v", dir, &[]), volume_tree(fx, &fx.store, "v")));
    change(fx, "v", |mp| {
        fs::remove_file(mp.join("linked")).unwrap();
        fs::OpenOptions::new()
            .append(true)
            .open(mp.join("d/new"))
            .unwrap()
            .write_all(b"more\n")
            .unwrap();
        let x = std::ffi::CString::new("user.tag").unwrap();
        let fd = layerfs::sys::open_path(&mp.join("a"), libc::O_RDONLY).unwrap();
        layerfs::sys::removexattr_fd(std::os::fd::AsFd::as_fd(&fd), &x).unwrap();
        common::chmod(&mp.join("keep"), 0o600);
        fs::rename(mp.join("d"), mp.join("e")).unwrap();
    });
    points.push((backup(fx, "v", dir, &[]), volume_tree(fx, &fx.store, "v")));
    points
}

#[test]
fn backups_restore_at_every_point() {
    require!();
    let fx = Fixture::new();
    let dir = fx.path("backups");
    let points = three_backups(&fx, &dir);
    let m = manifest(&dir);
    assert_eq!(m["volume"], "v");
    let chain = m["chain"].as_array().unwrap();
    assert_eq!(chain.len(), 3);
    assert!(chain[0]["since"].is_null(), "the first backup is full");
    for (i, e) in chain.iter().enumerate() {
        assert_eq!(e["snapshot"], points[i].0.as_str());
        let tar = dir.join(e["file"].as_str().unwrap());
        assert_eq!(
            fs::metadata(&tar).unwrap().len(),
            e["size"].as_u64().unwrap()
        );
        if i > 0 {
            assert_eq!(e["since"], chain[i - 1]["snapshot"]);
        }
    }
    // Restored on a fresh store, as another host would, at each point.
    let other = fx.path("other-store");
    for (i, (snap, tree)) in points.iter().enumerate() {
        let name = format!("r{i}");
        restore_equals(&fx, &other, &dir, &name, Some(snap), tree);
        let out = fx.run_in(&other, &["snapshots", &name]);
        let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('\t').next().unwrap().to_string())
            .collect();
        let want: Vec<String> = points[..=i].iter().map(|p| p.0.clone()).collect();
        assert_eq!(names, want, "the restore keeps the snapshot names");
    }
    restore_equals(&fx, &other, &dir, "newest", None, &points[2].1);
    // The restored volume carries on: a new snapshot takes a fresh name.
    let out = fx.run_in(&other, &["snapshot", "newest"]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    // Restored under its own name on another host, it goes on backing up
    // into the same directory incrementally.
    let third = fx.path("third-store");
    restore_equals(&fx, &third, &dir, "v", None, &points[2].1);
    let out = fx.run_in(&third, &["backup", "v", "--to", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    let m = manifest(&dir);
    assert_eq!(m["chain"][3]["since"], points[2].0.as_str());
}

#[test]
fn backup_keep_merges_old_snapshots_and_every_point_stays_restorable() {
    require!();
    let fx = Fixture::new();
    let dir = fx.path("backups");
    fx.ok(&["create", "v"]);
    let mut points = Vec::new();
    for round in 0..4 {
        change(&fx, "v", |mp| {
            common::write(&mp.join(format!("f{round}")), b"x\n");
            if round > 0 {
                common::write(&mp.join("f0"), format!("round {round}\n").as_bytes());
            }
        });
        let snap = backup(&fx, "v", &dir, &["--keep", "2"]);
        points.push((snap, volume_tree(&fx, &fx.store, "v")));
        let have: Vec<String> = fx
            .ok(&["snapshots", "v"])
            .lines()
            .map(|l| l.split('\t').next().unwrap().to_string())
            .collect();
        let start = points.len().saturating_sub(2);
        let want: Vec<String> = points[start..].iter().map(|p| p.0.clone()).collect();
        assert_eq!(have, want, "the last two backed-up snapshots stay");
    }
    // --keep 0 would drop the next increment's base: refused, nothing changed.
    let before = fs::read(dir.join("layerfs-backup.json")).unwrap();
    let msg = fx.fails(&["backup", "v", "--to", dir.to_str().unwrap(), "--keep", "0"]);
    assert!(msg.contains("--keep 0"), "{msg}");
    assert_eq!(fs::read(dir.join("layerfs-backup.json")).unwrap(), before);
    assert_eq!(fx.ok(&["snapshots", "v"]).lines().count(), 2);
    // Every tar stays, so every point restores.
    let other = fx.path("other-store");
    for (i, (snap, tree)) in points.iter().enumerate() {
        restore_equals(&fx, &other, &dir, &format!("r{i}"), Some(snap), tree);
    }
    // The volume merged its snapshots but still takes increments.
    change(&fx, "v", |mp| common::write(&mp.join("last"), b"last\n"));
    backup(&fx, "v", &dir, &["--keep", "2"]);
    let m = manifest(&dir);
    let last = m["chain"].as_array().unwrap().last().unwrap().clone();
    assert!(!last["since"].is_null(), "an increment, not a new full");
    restore_equals_volume(&fx, &other, &dir, "r-last");
}

#[test]
fn restore_refuses_damaged_backups_and_bad_requests() {
    require!();
    let fx = Fixture::new();
    let dir = fx.path("backups");
    let points = three_backups(&fx, &dir);
    let other = fx.path("other-store");
    let d = dir.to_str().unwrap();
    let m = manifest(&dir);
    let second = dir.join(m["chain"][1]["file"].as_str().unwrap());
    let good = fs::read(&second).unwrap();
    let gone = |name: &str| !other.join(name).exists();

    // One byte changed: the same size, another sha256.
    let mut bad = good.clone();
    bad[600] ^= 1;
    fs::write(&second, &bad).unwrap();
    let out = fx.run_in(&other, &["restore", d, "r"]);
    let msg = common::output_text(&out);
    assert!(!out.status.success() && msg.contains("sha256"), "{msg}");
    assert!(
        msg.contains(second.file_name().unwrap().to_str().unwrap()),
        "{msg}"
    );
    assert!(gone("r"), "nothing created");
    // Truncated, then missing.
    fs::write(&second, &good[..good.len() - 512]).unwrap();
    let msg = common::output_text(&fx.run_in(&other, &["restore", d, "r"]));
    assert!(msg.contains("bytes, the manifest says"), "{msg}");
    fs::remove_file(&second).unwrap();
    let msg = common::output_text(&fx.run_in(&other, &["restore", d, "r"]));
    assert!(msg.contains("missing"), "{msg}");
    assert!(gone("r"));
    // A point before the damage needs only the tars before it.
    restore_equals(&fx, &other, &dir, "early", Some(&points[0].0), &points[0].1);
    fs::write(&second, &good).unwrap();

    let msg = common::output_text(&fx.run_in(&other, &["restore", d, "r", "--at", "nope"]));
    assert!(msg.contains("no backup of snapshot nope"), "{msg}");
    let msg = common::output_text(&fx.run_in(&other, &["restore", d, "early"]));
    assert!(msg.contains("already exists"), "{msg}");
    let missing = fx.path("missing");
    let msg = fx.fails(&["restore", missing.to_str().unwrap(), "r"]);
    assert!(msg.contains("no such directory"), "{msg}");
    let plain = fx.path("plain");
    common::write(&plain.join("notes"), b"mine\n");
    let msg = fx.fails(&["restore", plain.to_str().unwrap(), "r"]);
    assert!(msg.contains("not a backup directory"), "{msg}");
    // Backups never write into a directory holding other files, nor into
    // another volume's chain.
    let msg = fx.fails(&["backup", "v", "--to", plain.to_str().unwrap()]);
    assert!(msg.contains("not a backup directory"), "{msg}");
    assert_eq!(fs::read_dir(&plain).unwrap().count(), 1);
    fx.ok(&["create", "w"]);
    let msg = fx.fails(&["backup", "w", "--to", d]);
    assert!(msg.contains("backups of volume v, not w"), "{msg}");
    assert_eq!(manifest(&dir), m);
    assert_eq!(fx.ok(&["snapshots", "w"]), "", "no snapshot taken");
    let mut tampered = m.clone();
    tampered["chain"][1]["file"] = "../../etc/passwd".into();
    fs::write(
        dir.join("layerfs-backup.json"),
        serde_json::to_vec(&tampered).unwrap(),
    )
    .unwrap();
    let msg = common::output_text(&fx.run_in(&other, &["restore", d, "r"]));
    assert!(msg.contains("bad manifest"), "{msg}");
    assert!(gone("r"));
}

#[test]
fn killed_backups_leave_the_last_backup_valid() {
    require!();
    let fx = Fixture::new();
    let dir = fx.path("backups");
    let d = dir.to_str().unwrap();
    fx.ok(&["create", "v"]);
    change(&fx, "v", |mp| {
        for i in 0..50 {
            common::write(&mp.join(format!("d{}/f{i}", i % 5)), &vec![b'x'; 4096 * i]);
        }
    });
    backup(&fx, "v", &dir, &[]);
    // How long an incremental run takes here, so kills land all through
    // one (the slowest of three: the machine may be busy).
    let mut whole = 0;
    for i in 0..3 {
        change(&fx, "v", |mp| common::write(&mp.join("timed"), &[i]));
        let t = Instant::now();
        backup(&fx, "v", &dir, &["--keep", "3"]);
        whole = whole.max(t.elapsed().as_micros() as u64);
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}, an uninterrupted backup takes {whole} us");
    let mut rng = common::Rng::new(seed);
    let other = fx.path("other-store");
    let mut restored = 0;
    for round in 0..12 {
        change(&fx, "v", |mp| {
            common::write(&mp.join(format!("round{round}")), b"r\n");
            common::write(&mp.join("d1/f1"), format!("round {round}\n").as_bytes());
            if round == 3 {
                fs::hard_link(mp.join("d2/f2"), mp.join("link")).unwrap();
            }
            if round == 5 {
                fs::remove_file(mp.join("d3/f3")).unwrap();
            }
        });
        let listed = manifest(&dir);
        let mut child = Command::new(bin())
            .args([
                "--store",
                fx.store.to_str().unwrap(),
                "backup",
                "v",
                "--to",
                d,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(whole + 1)));
        let _ = child.kill();
        let status = child.wait().unwrap();
        println!("round {round}: {status}");
        // The manifest keeps what it listed, adding at most the run's tar
        // and one a killed run had completed; what it lists restores.
        let (old, now) = (listed["chain"].as_array().unwrap(), manifest(&dir));
        let new = now["chain"].as_array().unwrap();
        assert_eq!(&new[..old.len()], &old[..], "listed tars stay as they were");
        assert!(new.len() <= old.len() + 2, "{} -> {}", old.len(), new.len());
        let name = format!("r{round}");
        let out = fx.run_in(&other, &["restore", d, &name]);
        assert!(out.status.success(), "{}", common::output_text(&out));
        restored += 1;
        // The volume still mounts and shows the round's change.
        let mp = PathBuf::from(fx.ok(&["mount", "v"]));
        assert!(mp.join(format!("round{round}")).exists());
        fx.ok(&["umount", "v"]);
    }
    assert_eq!(restored, 12);
    // Killed runs may leave their read-only views mounted (the volume
    // tool does not clean them up yet); the fixture unmounts them.
    println!("mounts under the test dir: {:?}", fx.mounts_under());
    // The next run finishes what was left, and the chain equals the volume.
    change(&fx, "v", |mp| common::write(&mp.join("after"), b"after\n"));
    backup(&fx, "v", &dir, &[]);
    let names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.ends_with(".partial")),
        "partial tars are cleaned up: {names:?}"
    );
    let listed = manifest(&dir)["chain"].as_array().unwrap().len();
    assert_eq!(names.iter().filter(|n| n.ends_with(".tar")).count(), listed);
    restore_equals_volume(&fx, &other, &dir, "final");
}

#[test]
fn a_complete_tar_of_a_killed_backup_is_listed_by_the_next_run() {
    require!();
    let fx = Fixture::new();
    let dir = fx.path("backups");
    fx.ok(&["create", "v"]);
    change(&fx, "v", |mp| common::write(&mp.join("a"), b"a\n"));
    let s1 = backup(&fx, "v", &dir, &[]);
    // What a run killed after renaming its tar, before listing it, leaves:
    // a snapshot, its complete increment, and another run's partial tar.
    change(&fx, "v", |mp| common::write(&mp.join("b"), b"b\n"));
    let s2 = fx.ok(&["snapshot", "v"]);
    let tar = dir.join(format!("000002.incr.{s2}.tar"));
    fx.ok(&["export", "v", "--since", &s1, "-o", tar.to_str().unwrap()]);
    let at_s2 = volume_tree(&fx, &fx.store, "v");
    common::write(&dir.join(".000003.incr.s9.tar.partial"), b"half");
    // A complete tar whose snapshot is gone cannot be a base: removed.
    common::write(&dir.join("000003.incr.gone.tar"), b"stale");
    change(&fx, "v", |mp| common::write(&mp.join("c"), b"c\n"));
    let s3 = backup(&fx, "v", &dir, &[]);
    let m = manifest(&dir);
    let chain = m["chain"].as_array().unwrap();
    let snaps: Vec<&str> = chain
        .iter()
        .map(|e| e["snapshot"].as_str().unwrap())
        .collect();
    assert_eq!(snaps, [s1.as_str(), s2.as_str(), s3.as_str()]);
    assert_eq!(chain[1]["since"], s1.as_str());
    assert_eq!(chain[2]["since"], s2.as_str());
    assert!(!dir.join(".000003.incr.s9.tar.partial").exists());
    assert!(!dir.join("000003.incr.gone.tar").exists());
    let other = fx.path("other-store");
    restore_equals(&fx, &other, &dir, "at2", Some(&s2), &at_s2);
    restore_equals_volume(&fx, &other, &dir, "at3");
}
