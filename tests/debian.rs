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
    build_named_deb(dir, "layerfs-probe")
}

fn build_named_deb(dir: &Path, name: &str) -> PathBuf {
    let pkg = dir.join(format!("pkg-{name}"));
    write(
        &pkg.join("DEBIAN/control"),
        format!("Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: layerfs tests <t@example.invalid>\nDescription: test package\n").as_bytes(),
    );
    write(
        &pkg.join(format!("usr/share/{name}/data/hello")),
        b"hello from a package\n",
    );
    write(
        &pkg.join(format!("usr/bin/{name}")),
        b"#!/bin/sh\necho probe-ran\n",
    );
    chmod(&pkg.join(format!("usr/bin/{name}")), 0o755);
    let deb = dir.join(format!("{name}.deb"));
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

/// A flat apt repository (`deb [trusted=yes] file:/DIR ./`) holding `debs`.
fn apt_repo(dir: &Path, debs: &[PathBuf]) {
    mkdir(dir);
    let mut packages = String::new();
    for deb in debs {
        let name = deb.file_name().unwrap().to_str().unwrap();
        fs::copy(deb, dir.join(name)).unwrap();
        let control = Command::new("dpkg-deb")
            .arg("-f")
            .arg(deb)
            .output()
            .unwrap();
        assert!(control.status.success());
        let sum = Command::new("sha256sum").arg(deb).output().unwrap();
        let sha256 = String::from_utf8_lossy(&sum.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        packages += &String::from_utf8_lossy(&control.stdout);
        packages += &format!(
            "Filename: ./{name}\nSize: {}\nSHA256: {sha256}\n\n",
            fs::metadata(deb).unwrap().len()
        );
    }
    fs::write(dir.join("Packages"), packages).unwrap();
}

#[test]
fn dpkg_in_a_chroot_on_a_layerfs_debian() {
    require!("debootstrap", "dpkg-deb");
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
    let (opts, u, _) = rw_opts_tagged(t.path(), "", &lowers, "");
    let m = try_mount_layerfs(&opts, &t.path().join("root")).unwrap();
    fs::copy(&deb, m.path("tmp/layerfs-probe.deb")).unwrap();
    // apt against a local repository (no network here): it renames its
    // list files and directories while it works.
    let apt_deb = build_named_deb(t.path(), "layerfs-apt-probe");
    apt_repo(&m.path("srv/repo"), &[apt_deb]);
    fs::write(
        m.path("etc/apt/sources.list"),
        "deb [trusted=yes] file:/srv/repo ./\n",
    )
    .unwrap();
    let script = "set -e; \
        test ! -e /etc/motd; cat /etc/layerfs-layer; \
        apt-get update; apt-get install -y layerfs-apt-probe; layerfs-apt-probe; \
        apt-get remove -y --purge layerfs-apt-probe; test ! -e /usr/bin/layerfs-apt-probe; \
        apt-get install -y layerfs-apt-probe; echo APT-OK; \
        dpkg -i /tmp/layerfs-probe.deb; layerfs-probe; \
        mv /usr/share/doc/apt /usr/share/doc/apt.renamed; mv /usr/share/doc/apt.renamed /usr/share/doc/apt; \
        mv /var/lib/apt /var/lib/apt.old && mkdir /var/lib/apt && mv /var/lib/apt.old/* /var/lib/apt/ && rmdir /var/lib/apt.old; \
        dpkg -r layerfs-probe; dpkg -i /tmp/layerfs-probe.deb; \
        echo AUDIT-START; dpkg --audit; echo AUDIT-DONE; apt-get check; echo ALL-OK";
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
        text.contains("from layer1") && text.contains("probe-ran") && text.contains("APT-OK"),
        "{text}"
    );
    let audit = text.split("AUDIT-START").nth(1).unwrap();
    let audit = audit.split("AUDIT-DONE").next().unwrap();
    assert!(
        audit.trim().is_empty(),
        "dpkg --audit found problems:\n{text}"
    );
    drop(m);
    // The package and dpkg's database changes live in the upper dir.
    assert!(u.join("usr/share/layerfs-probe/data/hello").exists());
    let status = fs::read_to_string(u.join("var/lib/dpkg/status")).unwrap();
    assert!(status.contains("Package: layerfs-probe"));
    assert!(status.contains("Package: layerfs-apt-probe"));
    assert!(u.join("var/lib/apt/lists").read_dir().unwrap().count() > 1);
    // The lowers did not change.
    assert_eq!(
        fs::read(base.join("var/lib/dpkg/status")).unwrap(),
        base_status
    );
    assert!(!base.join("usr/share/layerfs-probe").exists());
    let d = diff(&before, &fingerprint(&top), Compare::ALL);
    assert!(d.is_empty(), "layer1 changed:\n{}", d.join("\n"));
}

/// The image above the Debian base, as a build makes it: one layer adding
/// files, one deleting files and replacing a directory (`format` "overlay":
/// char 0/0 whiteouts and an opaque xattr; "oci": `.wh.` files).
fn image_layers(t: &Path, format: &str) -> Vec<PathBuf> {
    let adds = t.join("adds");
    if !adds.exists() {
        write(&adds.join("usr/local/share/from-layer1"), b"layer1\n");
        write(&adds.join("etc/layerfs-release"), b"layered\n");
    }
    let deletes = t.join("deletes");
    if !deletes.exists() {
        mknod_whiteout(&deletes.join("etc/motd"));
        mknod_whiteout(&deletes.join("usr/share/doc/gzip"));
        write(
            &deletes.join("etc/apt/apt.conf.d/99layerfs"),
            b"// replaced\n",
        );
        set_opaque(&deletes.join("etc/apt/apt.conf.d"));
    }
    let top = if format == "oci" {
        let oci = t.join("deletes-oci");
        if !oci.exists() {
            to_oci(&deletes, &oci);
        }
        oci
    } else {
        deletes
    };
    vec![top, adds, minbase()]
}

#[test]
fn runc_and_crun_install_a_package_on_a_layered_debian() {
    require!("debootstrap", "dpkg-deb");
    let runtimes = oci_runtimes();
    if runtimes.is_empty() {
        return;
    }
    let t = tempfile::Builder::new().prefix("lfsr").tempdir().unwrap();
    let deb = build_deb(t.path());
    let base = minbase();
    let base_status = fs::read(base.join("var/lib/dpkg/status")).unwrap();
    for runtime in runtimes {
        for format in ["overlay", "oci"] {
            let tag = format!("{runtime}-{format}");
            let lowers = image_layers(t.path(), format);
            let before: Vec<_> = lowers[..2].iter().map(|l| fingerprint(l)).collect();
            let (opts, u, _) = rw_opts_tagged(t.path(), &tag, &lowers, "");
            let m = try_mount_layerfs(&opts, &t.path().join(format!("rootfs-{tag}"))).unwrap();
            fs::copy(&deb, m.path("tmp/layerfs-probe.deb")).unwrap();
            let script = "set -e; . /etc/os-release; echo OS=$ID; cat /etc/layerfs-release; \
                test ! -e /etc/motd && test ! -e /usr/share/doc/gzip && echo DELETED-GONE; \
                ls /etc/apt/apt.conf.d; \
                dpkg -i /tmp/layerfs-probe.deb; layerfs-probe; \
                rm -r /usr/share/doc/adduser; mv /usr/share/doc/apt /usr/share/doc/apt-moved; \
                mv /etc/os-release /etc/os-release.old; \
                dpkg --audit; echo AUDIT-DONE; apt-get check; echo DONE";
            let b = t.path().join(format!("bundle-{tag}"));
            oci_bundle(&b, &m.dir, script, runtime);
            let out = run_oci(
                runtime,
                &b,
                &format!("layerfs-debian-{tag}-{}", std::process::id()),
            );
            let text = output_text(&out);
            assert!(
                out.status.success() && text.contains("DONE"),
                "{tag}: container failed:\n{text}"
            );
            assert!(
                text.contains("OS=debian")
                    && text.contains("layered")
                    && text.contains("probe-ran"),
                "{tag}: {text}"
            );
            assert!(text.contains("DELETED-GONE"), "{tag}: whiteouts: {text}");
            let listed = text.split("DELETED-GONE").nth(1).unwrap();
            assert!(
                listed.trim_start().starts_with("99layerfs\n"),
                "{tag}: opaque apt.conf.d must hold only the layer's file:\n{text}"
            );
            let audit = text.split("AUDIT-DONE").next().unwrap();
            assert!(
                !audit.contains("The following packages"),
                "{tag}: dpkg --audit found problems:\n{text}"
            );
            drop(m);
            // The changes are in the upper dir, in the kernel's format.
            assert!(
                u.join("usr/share/layerfs-probe/data/hello").exists(),
                "{tag}"
            );
            assert!(fs::read_to_string(u.join("var/lib/dpkg/status"))
                .unwrap()
                .contains("Package: layerfs-probe"));
            let redirect = getxattr(
                &u.join("usr/share/doc/apt-moved"),
                "trusted.overlay.redirect",
            );
            // Renamed within its directory: relative, as the kernel's.
            assert_eq!(redirect.unwrap(), b"apt", "{tag}: redirect");
            for gone in [
                "usr/share/doc/adduser",
                "usr/share/doc/apt",
                "etc/os-release",
            ] {
                let st = fs::symlink_metadata(u.join(gone)).unwrap();
                assert!(
                    std::os::unix::fs::FileTypeExt::is_char_device(&st.file_type()),
                    "{tag}: {gone} is not a whiteout"
                );
            }
            // The lowers did not change.
            for (l, b) in lowers.iter().zip(&before) {
                let d = diff(b, &fingerprint(l), Compare::ALL);
                assert!(d.is_empty(), "{tag}: {l:?} changed:\n{}", d.join("\n"));
            }
            assert_eq!(
                fs::read(base.join("var/lib/dpkg/status")).unwrap(),
                base_status
            );
            assert!(
                base.join("usr/share/doc/adduser").exists()
                    && base.join("usr/share/doc/apt").exists()
            );
        }
    }
}

/// fsync(2) calls the daemon makes on the upper layer while `work` runs,
/// counted by strace attached to every daemon thread.
fn daemon_fsyncs(mnt: &Path, work: impl FnOnce()) -> usize {
    let pid = daemon_pid(mnt).expect("daemon pid");
    let log = mnt.with_extension("strace");
    let mut tracer = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=fsync,fdatasync,syncfs,sync_file_range",
        ])
        .arg("-o")
        .arg(&log)
        .arg("-p")
        .arg(pid.to_string())
        .spawn()
        .unwrap();
    // strace writes nothing until a call happens: wait until every thread
    // of the daemon shows a tracer.
    let attached = || {
        fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks.flatten().all(|t| {
                    fs::read_to_string(t.path().join("status"))
                        .map(|s| {
                            s.lines()
                                .any(|l| l.starts_with("TracerPid:") && l.trim() != "TracerPid:\t0")
                        })
                        .unwrap_or(false)
                })
            })
            .unwrap_or(false)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !attached() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(attached(), "strace did not attach to the daemon");
    work();
    let _ = Command::new("kill")
        .args(["-INT", &tracer.id().to_string()])
        .status();
    let _ = tracer.wait();
    fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("sync") && l.contains("= 0"))
        .count()
}

#[test]
fn dpkg_fsyncs_reach_the_upper_layer_unless_volatile() {
    require!("debootstrap", "dpkg-deb", "strace");
    let base = minbase();
    let t = tempfile::Builder::new().prefix("lfsf").tempdir().unwrap();
    let deb = build_deb(t.path());
    let mut counts = Vec::new();
    for extra in ["", ",volatile", ",fsync=0"] {
        let tag = if extra.is_empty() {
            "default"
        } else {
            &extra[1..]
        };
        let tag = tag.replace('=', "");
        let (opts, _, _) = rw_opts_tagged(t.path(), &tag, std::slice::from_ref(&base), extra);
        let m = try_mount_layerfs(&opts, &t.path().join(format!("root-{tag}"))).unwrap();
        fs::copy(&deb, m.path("tmp/layerfs-probe.deb")).unwrap();
        let n = daemon_fsyncs(&m.dir, || {
            // dpkg fsyncs every unpacked file and its database.
            let out = Command::new("unshare")
                .args(["--mount", "--pid", "--fork", "chroot"])
                .arg(&m.dir)
                .args(["dpkg", "-i", "/tmp/layerfs-probe.deb"])
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .output()
                .unwrap();
            assert!(out.status.success(), "{tag}: {}", output_text(&out));
        });
        counts.push((tag, n));
    }
    eprintln!("daemon fsyncs during dpkg -i: {counts:?}");
    assert!(
        counts[0].1 >= 3,
        "dpkg's fsyncs must reach the disk: {counts:?}"
    );
    assert_eq!(counts[1].1, 0, "volatile must skip fsync: {counts:?}");
    assert_eq!(counts[2].1, 0, "fsync=0 must skip fsync: {counts:?}");
}
