//! fuse-overlayfs' `uidmapping=`/`gidmapping=` and `squash_to_*`, as
//! containers-storage uses them: files show shifted owners at the mount and
//! keep the stored ids on disk, in both directions (stat, chown, create,
//! ACL entries).

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::*;

fn owner(p: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {p:?}: {e}"));
    (m.uid(), m.gid())
}

/// Runs `cmd` as `uid:gid` (no supplementary groups).
fn run_as(uid: u32, gid: u32, cmd: &[&str]) {
    let out = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .args(cmd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} as {uid}: {}",
        output_text(&out)
    );
}

/// A POSIX ACL xattr value: owner, one named user, one named group, mask,
/// other.
fn acl(user: u32, group: u32) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, id) in [
        (0x01u16, u32::MAX),
        (0x02, user),
        (0x04, u32::MAX),
        (0x08, group),
        (0x10, u32::MAX),
        (0x20, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&6u16.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

fn acl_ids(v: &[u8]) -> (u32, u32) {
    let id = |i: usize| u32::from_le_bytes(v[4 + i * 8 + 4..4 + i * 8 + 8].try_into().unwrap());
    (id(1), id(3))
}

fn get_acl(p: &Path) -> Vec<u8> {
    getxattr(p, "system.posix_acl_access").unwrap()
}

#[test]
fn uidmapping_shifts_owners_both_ways() {
    require_root!();
    let t = tempfile::Builder::new().prefix("lfsid").tempdir().unwrap();
    let lower = t.path().join("lower");
    write(&lower.join("root-file"), b"0");
    write(&lower.join("user-file"), b"1");
    write(&lower.join("unmapped-file"), b"x");
    mkdir(&lower.join("shared"));
    chmod(&lower.join("shared"), 0o777);
    chown(&lower.join("user-file"), 1, 1);
    chown(&lower.join("unmapped-file"), 70000, 70000);
    setxattr(
        &lower.join("root-file"),
        "system.posix_acl_access",
        &acl(5, 7),
    );
    let (u, w) = (t.path().join("upper"), t.path().join("work"));
    mkdir(&u);
    mkdir(&w);
    // As in fuse-overlayfs' manual, with containers-storage's leading colon.
    let map = ":0:1000:1:1:110000:65536";
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},uidmapping={map},gidmapping={map}",
        lower.display(),
        u.display(),
        w.display()
    );
    let m = try_mount_layerfs(&opts, &t.path().join("mnt")).unwrap();

    // Stored ids show shifted; ids outside the mapping show as nobody.
    assert_eq!(owner(&m.path("root-file")), (1000, 1000));
    assert_eq!(owner(&m.path("user-file")), (110000, 110000));
    assert_eq!(owner(&m.path("unmapped-file")), (65534, 65534));
    assert_eq!(owner(&m.path("shared")), (1000, 1000));
    assert_eq!(acl_ids(&get_acl(&m.path("root-file"))), (110004, 110006));

    // chown through the mount stores the unshifted id.
    std::os::unix::fs::lchown(m.path("user-file"), Some(110005), Some(110009)).unwrap();
    assert_eq!(owner(&m.path("user-file")), (110005, 110009));
    assert_eq!(owner(&u.join("user-file")), (6, 10));

    // New files get the caller's unshifted ids.
    run_as(
        1000,
        1000,
        &["touch", m.path("shared/by-root").to_str().unwrap()],
    );
    run_as(
        110010,
        110010,
        &["mkdir", m.path("shared/by-user").to_str().unwrap()],
    );
    assert_eq!(owner(&u.join("shared/by-root")), (0, 0));
    assert_eq!(owner(&u.join("shared/by-user")), (11, 11));
    assert_eq!(owner(&m.path("shared/by-user")), (110010, 110010));

    // An ACL written through the mount is stored unshifted.
    setxattr(
        &m.path("shared/by-root"),
        "system.posix_acl_access",
        &acl(110001, 1000),
    );
    assert_eq!(acl_ids(&get_acl(&u.join("shared/by-root"))), (2, 0));
    assert_eq!(acl_ids(&get_acl(&m.path("shared/by-root"))), (110001, 1000));

    // Copy-up kept the stored owner of the file chmod'ed through the mount.
    fs::set_permissions(m.path("root-file"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(owner(&u.join("root-file")), (0, 0));
    assert_eq!(owner(&lower.join("user-file")), (1, 1), "lower untouched");
}

#[test]
fn squash_to_uid_shows_one_owner() {
    require_root!();
    let t = tempfile::Builder::new().prefix("lfsid").tempdir().unwrap();
    let lower = t.path().join("lower");
    write(&lower.join("a"), b"a");
    chown(&lower.join("a"), 123, 456);
    mkdir(&lower.join("d"));
    let (u, w) = (t.path().join("upper"), t.path().join("work"));
    mkdir(&u);
    mkdir(&w);
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},squash_to_uid=4242,squash_to_gid=4343",
        lower.display(),
        u.display(),
        w.display()
    );
    let m = try_mount_layerfs(&opts, &t.path().join("mnt")).unwrap();
    assert_eq!(owner(&m.path("a")), (4242, 4343));
    assert_eq!(owner(&m.path("d")), (4242, 4343));
    write(&m.path("d/new"), b"n");
    assert_eq!(owner(&m.path("d/new")), (4242, 4343));
    // The owner on disk is still the real one.
    assert_eq!(owner(&u.join("d/new")), (0, 0));
    fs::OpenOptions::new()
        .append(true)
        .open(m.path("a"))
        .unwrap();
    assert_eq!(owner(&u.join("a")), (123, 456));

    // squash_to_root: everything shows as root.
    drop(m);
    let opts = format!("lowerdir={},squash_to_root", lower.display());
    let m = try_mount_layerfs(&opts, &t.path().join("mnt2")).unwrap();
    assert_eq!(owner(&m.path("a")), (0, 0));
}
