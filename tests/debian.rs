//! Package managers on a layerfs root: a minimal Debian (debootstrap
//! --variant=minbase, cached under the target directory between runs) as
//! the bottom layer, dpkg installing and removing a local package and
//! directories of the image being renamed, inside
//! `unshare --mount --pid --fork chroot`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The cached minbase tree, made on first use.
fn minbase() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let cache = tmp.join("debian-bookworm-minbase");
    let done = cache.join(".layerfs-complete");
    // Tests run in parallel: one builds the cache while the others wait.
    fs::create_dir_all(&tmp).unwrap();
    let lock = fs::File::create(tmp.join("debian-bookworm-minbase.lock")).unwrap();
    layerfs::sys::flock(std::os::fd::AsFd::as_fd(&lock), libc::LOCK_EX).unwrap();
    if done.exists() {
        return cache;
    }
    let _ = fs::remove_dir_all(&cache);
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", "bookworm"])
        .arg(&cache)
        .arg("http://deb.debian.org/debian")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "debootstrap failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(&done, b"").unwrap();
    cache
}

/// A tiny .deb with a file and a directory of its own.
fn build_deb(dir: &Path) -> PathBuf {
    let pkg = dir.join("pkg");
    write(
        &pkg.join("DEBIAN/control"),
        b"Package: layerfs-probe\nVersion: 1.0\nArchitecture: all\nMaintainer: layerfs tests <t@example.invalid>\nDescription: test package\n",
    );
    write(
        &pkg.join("usr/share/layerfs-probe/data/hello"),
        b"hello from a package\n",
    );
    write(
        &pkg.join("usr/bin/layerfs-probe"),
        b"#!/bin/sh\necho probe-ran\n",
    );
    chmod(&pkg.join("usr/bin/layerfs-probe"), 0o755);
    let deb = dir.join("layerfs-probe.deb");
    let st = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&pkg)
        .arg(&deb)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    deb
}

#[test]
fn dpkg_in_a_chroot_on_a_layerfs_debian() {
    require_root!();
    if !have("debootstrap") || !have("dpkg-deb") {
        eprintln!("SKIP: debootstrap or dpkg-deb is not installed");
        return;
    }
    let base = minbase();
    let t = tempfile::Builder::new().prefix("lfsd").tempdir().unwrap();
    // A layer above the base that adds a file and deletes one.
    let top = t.path().join("layer1");
    write(&top.join("etc/layerfs-layer"), b"from layer1\n");
    mknod_whiteout(&top.join("etc/motd"));
    let lowers = vec![top.clone(), base.clone()];
    let before = fingerprint(&top);
    let base_status = fs::read(base.join("var/lib/dpkg/status")).unwrap();
    let deb = build_deb(t.path());
    let u = t.path().join("upper");
    let w = t.path().join("work");
    mkdir(&u);
    mkdir(&w);
    let opts = format!(
        "{},upperdir={},workdir={}",
        lowerdir_opt(&lowers),
        u.display(),
        w.display()
    );
    let m = try_mount_layerfs(&opts, &t.path().join("root")).unwrap();
    fs::copy(&deb, m.path("tmp/layerfs-probe.deb")).unwrap();
    let script = "set -e; \
        test ! -e /etc/motd; cat /etc/layerfs-layer; \
        dpkg -i /tmp/layerfs-probe.deb; layerfs-probe; \
        mv /usr/share/doc/apt /usr/share/doc/apt.renamed; mv /usr/share/doc/apt.renamed /usr/share/doc/apt; \
        mv /var/lib/apt /var/lib/apt.old && mkdir /var/lib/apt && mv /var/lib/apt.old/* /var/lib/apt/ && rmdir /var/lib/apt.old; \
        dpkg -r layerfs-probe; dpkg -i /tmp/layerfs-probe.deb; \
        dpkg --audit; echo AUDIT-DONE; apt-get check; echo ALL-OK";
    let out = Command::new("unshare")
        .args(["--mount", "--pid", "--fork", "chroot"])
        .arg(&m.dir)
        .args(["/bin/sh", "-c", script])
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(
        out.status.success() && text.contains("ALL-OK"),
        "chroot script failed:\n{text}"
    );
    assert!(
        text.contains("from layer1") && text.contains("probe-ran"),
        "{text}"
    );
    let audit = text.split("AUDIT-DONE").next().unwrap();
    assert!(
        !audit.contains("The following packages"),
        "dpkg --audit found problems:\n{text}"
    );
    drop(m);
    // The package and dpkg's database changes live in the upper dir.
    assert!(u.join("usr/share/layerfs-probe/data/hello").exists());
    let status = fs::read_to_string(u.join("var/lib/dpkg/status")).unwrap();
    assert!(status.contains("Package: layerfs-probe"));
    // The lowers did not change.
    assert_eq!(
        fs::read(base.join("var/lib/dpkg/status")).unwrap(),
        base_status
    );
    assert!(!base.join("usr/share/layerfs-probe").exists());
    let d = diff(&before, &fingerprint(&top), Compare::ALL);
    assert!(d.is_empty(), "layer1 changed:\n{}", d.join("\n"));
}

#[test]
fn runc_container_installs_a_package_on_a_layerfs_debian() {
    require_root!();
    if !have("debootstrap") || !have("dpkg-deb") || !have("runc") {
        eprintln!("SKIP: debootstrap, dpkg-deb or runc is not installed");
        return;
    }
    let base = minbase();
    let t = tempfile::Builder::new().prefix("lfsr").tempdir().unwrap();
    let top = t.path().join("layer1");
    write(&top.join("usr/local/share/from-layer1"), b"layer1\n");
    let deb = build_deb(t.path());
    let u = t.path().join("upper");
    let w = t.path().join("work");
    mkdir(&u);
    mkdir(&w);
    let opts = format!(
        "{},upperdir={},workdir={}",
        lowerdir_opt(&[top, base.clone()]),
        u.display(),
        w.display()
    );
    let m = try_mount_layerfs(&opts, &t.path().join("rootfs")).unwrap();
    fs::copy(&deb, m.path("tmp/layerfs-probe.deb")).unwrap();
    let script = "set -e; . /etc/os-release; echo OS=$ID; \
        dpkg -i /tmp/layerfs-probe.deb; layerfs-probe; \
        rm -r /usr/share/doc/adduser; mv /usr/share/doc/apt /usr/share/doc/apt-moved; \
        dpkg --audit; echo DONE";
    let b = t.path().join("bundle");
    oci_bundle(&b, &m.dir, script, "runc");
    let out = Command::new("runc")
        .args(["run", "--bundle"])
        .arg(&b)
        .arg(format!("layerfs-debian-{}", std::process::id()))
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(
        out.status.success() && text.contains("DONE"),
        "container failed:\n{text}"
    );
    assert!(
        text.contains("OS=debian") && text.contains("probe-ran"),
        "{text}"
    );
    drop(m);
    assert!(u.join("usr/share/layerfs-probe/data/hello").exists());
    assert!(fs::read_to_string(u.join("var/lib/dpkg/status"))
        .unwrap()
        .contains("Package: layerfs-probe"));
    assert!(base.join("usr/share/doc/adduser").exists() && base.join("usr/share/doc/apt").exists());
}
