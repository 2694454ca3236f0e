//! A real OCI runtime on a layerfs root filesystem: a busybox image split
//! into layers the way an image is (base; a layer that adds files; a layer
//! that deletes files and replaces a directory, in both whiteout formats),
//! run with runc; the container's changes must land in the upper dir as
//! kernel overlayfs would write them, and the lower layers stay untouched.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The three layers of a small image, in the kernel's whiteout format.
fn image_layers(base: &Path, bb: &Path) -> Vec<PathBuf> {
    let (top, mid, bottom) = (base.join("l2"), base.join("l1"), base.join("l0"));
    mkdir(&bottom.join("bin"));
    fs::copy(bb, bottom.join("bin/busybox")).unwrap();
    chmod(&bottom.join("bin/busybox"), 0o755);
    for tool in [
        "sh", "cat", "ls", "rm", "mv", "mkdir", "echo", "test", "stat",
    ] {
        link_sym("busybox", &bottom.join("bin").join(tool));
    }
    write(
        &bottom.join("etc/os-release"),
        b"NAME=\"layerfs test image\"\nID=layerfs-test\n",
    );
    write(&bottom.join("etc/old.conf"), b"deleted by the top layer");
    write(
        &bottom.join("var/lib/app/state"),
        b"replaced by the top layer",
    );
    write(&bottom.join("usr/share/doc/a"), b"a");
    for d in ["proc", "sys", "dev", "tmp"] {
        mkdir(&bottom.join(d));
    }
    write(&mid.join("usr/share/doc/b"), b"b");
    write(&mid.join("opt/tool/run"), b"tool");
    mknod_whiteout(&top.join("etc/old.conf"));
    write(&top.join("var/lib/app/fresh"), b"new state");
    set_opaque(&top.join("var/lib/app"));
    vec![top, mid, bottom]
}

fn run_container(t: &Path, lowers: &[PathBuf], format: &str, runtime: &str) -> (String, PathBuf) {
    let tag = format!("{runtime}-{format}");
    let u = t.join(format!("upper-{tag}"));
    let w = t.join(format!("work-{tag}"));
    mkdir(&u);
    mkdir(&w);
    let mnt = t.join(format!("rootfs-{tag}"));
    let opts = format!(
        "{},upperdir={},workdir={}",
        lowerdir_opt(lowers),
        u.display(),
        w.display()
    );
    let m = try_mount_layerfs(&opts, &mnt).unwrap();
    let script = "cat /etc/os-release; \
        test -e /etc/old.conf && echo OLD-CONF-VISIBLE; \
        ls /var/lib/app; ls /usr/share/doc; \
        rm /usr/share/doc/a; \
        mv /opt/tool /opt/tool-renamed; \
        mkdir -p /srv/data && echo written > /srv/data/file; \
        echo changed >> /etc/os-release; \
        ls /opt/tool-renamed";
    let b = t.join(format!("bundle-{tag}"));
    oci_bundle(&b, &m.dir, script, runtime);
    let id = format!("layerfs-test-{tag}-{}", std::process::id());
    let out = run_oci(runtime, &b, &id);
    let text = output_text(&out);
    assert!(out.status.success(), "{runtime} failed:\n{text}");
    drop(m);
    (text, u)
}

#[test]
fn runc_and_crun_run_a_container_on_layerfs_in_both_whiteout_formats() {
    require!("busybox");
    // CI installs runc, crun and busybox-static (see .ci/run); by hand,
    // the test runs with the runtimes there are.
    let runtimes = oci_runtimes();
    if runtimes.is_empty() {
        return;
    }
    let t = tempfile::Builder::new().prefix("lfso").tempdir().unwrap();
    let layers = image_layers(&t.path().join("ovl"), &busybox().unwrap());
    let oci = oci_twins(&layers, t.path());
    let runs = runtimes
        .iter()
        .flat_map(|r| [(*r, "overlay", &layers), (*r, "oci", &oci)]);
    for (runtime, fmt, lowers) in runs {
        let format = format!("{runtime}/{fmt}");
        let before: Vec<_> = lowers.iter().map(|l| fingerprint(l)).collect();
        let (out, upper) = run_container(t.path(), lowers, fmt, runtime);
        assert!(out.contains("layerfs test image"), "{format}: {out}");
        assert!(
            !out.contains("OLD-CONF-VISIBLE"),
            "{format}: whiteout ignored:\n{out}"
        );
        assert!(
            out.contains("fresh") && !out.contains("state"),
            "{format}: opaque dir:\n{out}"
        );
        assert!(
            out.contains("run"),
            "{format}: renamed dir lost its content:\n{out}"
        );
        // The changes, on disk, as kernel overlayfs writes them.
        let wh = fs::symlink_metadata(upper.join("usr/share/doc/a")).unwrap();
        assert!(
            wh.file_type().is_char_device() && wh.rdev() == 0,
            "{format}: whiteout"
        );
        assert_eq!(fs::read(upper.join("srv/data/file")).unwrap(), b"written\n");
        assert!(fs::read_to_string(upper.join("etc/os-release"))
            .unwrap()
            .ends_with("changed\n"));
        let redirect = getxattr(&upper.join("opt/tool-renamed"), "trusted.overlay.redirect");
        // Renamed within its directory: a relative redirect, its old name,
        // as kernel overlayfs writes it (`ovl_set_redirect`).
        assert_eq!(redirect.unwrap(), b"tool", "{format}: redirect");
        for (l, b) in lowers.iter().zip(&before) {
            let d = diff(b, &fingerprint(l), Compare::ALL);
            assert!(
                d.is_empty(),
                "{format}: lower {l:?} changed:\n{}",
                d.join("\n")
            );
        }
    }
}

/// The layer tarballs of an image, bottom first, from `podman image save`.
fn saved_layers(p: &Podman, image: &str) -> Vec<Vec<String>> {
    let tar = p.dir.join(format!("{image}.tar"));
    p.ok(&[
        "image",
        "save",
        "--format",
        "docker-archive",
        "-o",
        tar.to_str().unwrap(),
        image,
    ]);
    archive_layers(&tar, &p.dir.join(format!("{image}-x")))
}

#[test]
fn podman_uses_layerfs_as_mount_program() {
    require!("podman", "runc", "busybox");
    let t = tempfile::Builder::new().prefix("lfsp").tempdir().unwrap();
    let p = Podman::new(t.path(), PodmanStorage::LayerfsRoots, "");
    // A base image from a rootfs tarball.
    let rootfs = t.path().join("rootfs");
    mkdir(&rootfs.join("bin"));
    fs::copy(busybox().unwrap(), rootfs.join("bin/busybox")).unwrap();
    for tool in ["sh", "cat", "ls", "rm", "mv", "mkdir", "echo", "grep"] {
        link_sym("busybox", &rootfs.join("bin").join(tool));
    }
    write(&rootfs.join("etc/os-release"), b"ID=layerfs-podman-test\n");
    let tarball = t.path().join("rootfs.tar");
    assert!(Command::new("tar")
        .arg("cf")
        .arg(&tarball)
        .arg("-C")
        .arg(&rootfs)
        .arg(".")
        .status()
        .unwrap()
        .success());
    p.ok(&["import", tarball.to_str().unwrap(), "base"]);
    let out = p.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "base",
        "sh",
        "-c",
        "grep ' / ' /proc/mounts; cat /etc/os-release",
    ]);
    assert!(
        out.contains("fuse.layerfs"),
        "the container root must be a layerfs mount:\n{out}"
    );
    assert!(out.contains("layerfs-podman-test"), "{out}");
    // A build whose RUN steps add, change and delete files and rename a
    // directory (each step runs on a layerfs root).
    let ctx = t.path().join("ctx");
    write(
        &ctx.join("Containerfile"),
        b"FROM base\n\
          RUN mkdir -p /opt/app/sub && echo v1 > /opt/app/sub/file && echo keep > /etc/keep\n\
          RUN echo v2 > /opt/app/sub/file && rm /etc/os-release && mv /opt/app /opt/app2\n",
    );
    p.ok(&[
        "build",
        "--network",
        "none",
        "-t",
        "built",
        ctx.to_str().unwrap(),
    ]);
    let out = p.ok(&[
        "run",
        "--name",
        "c1",
        "--network",
        "none",
        "built",
        "sh",
        "-c",
        "cat /opt/app2/sub/file; ls /etc; rm /etc/keep; echo new > /newfile",
    ]);
    assert!(out.contains("v2") && !out.contains("os-release"), "{out}");
    let diff = p.ok(&["diff", "c1"]);
    assert!(
        diff.contains("D /etc/keep") && diff.contains("A /newfile"),
        "{diff}"
    );
    p.ok(&["commit", "c1", "committed"]);
    p.ok(&["rm", "c1"]);
    let layers = saved_layers(&p, "committed");
    let n = layers.len();
    assert!(n >= 4, "{layers:?}");
    let has = |i: usize, name: &str| layers[i].iter().any(|e| e == name);
    assert!(
        has(n - 2, "etc/.wh.os-release") && has(n - 2, "opt/.wh.app"),
        "build layer: {:?}",
        layers[n - 2]
    );
    assert!(
        has(n - 2, "opt/app2/sub/file"),
        "renamed dir: {:?}",
        layers[n - 2]
    );
    assert!(
        has(n - 1, "etc/.wh.keep") && has(n - 1, "newfile"),
        "committed layer: {:?}",
        layers[n - 1]
    );
    let out = p.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "committed",
        "sh",
        "-c",
        "ls /etc /; cat /newfile",
    ]);
    assert!(!out.contains("keep") && out.contains("new"), "{out}");
}
