//! Rootless podman on layerfs: an unprivileged user (made by the test, in a
//! private mount namespace so the host's /etc stays untouched) runs podman
//! with layerfs as containers-storage's mount_program. podman puts itself
//! in a user namespace (newuidmap), where layerfs mounts with mount(2) and
//! writes `user.overlay.*` xattrs (trusted.* is refused there), with no
//! directory redirects, exactly as kernel overlayfs' `userxattr`. A container
//! with its own `--uidmap` gets `uidmapping=`/`gidmapping=` from
//! containers-storage. Everything is checked on disk afterwards, and the
//! upper dirs are read back by kernel overlayfs in `userxattr` mode.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The lower, upper, work and mount dirs of a test's stack in `base`.
fn layer_dirs(base: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let d = |n: &str| base.join(n);
    (d("lower"), d("upper"), d("work"), d("mnt"))
}

/// Mounts the stack of `layer_dirs(base)` (lower already filled) as `user`
/// with an open-file limit of `limit`, runs `script` (sh -e) as the user in
/// the mountpoint, and unmounts: whether all of it succeeded, and its
/// output (which ends with UNMOUNTED when the unmount was reached).
fn run_with_fd_limit(user: &TestUser, base: &Path, limit: u32, script: &str) -> (bool, String) {
    let (lower, upper, work, mnt) = layer_dirs(base);
    for d in [&upper, &work, &mnt] {
        mkdir(d);
    }
    user.own(&[&lower, &upper, &work, &mnt]);
    let script_path = base.join("in-mount.sh");
    fs::write(&script_path, format!("cd {}\n{script}", mnt.display())).unwrap();
    chmod(&script_path, 0o644);
    let as_user = format!("setpriv --reuid={0} --regid={0} --clear-groups", user.id);
    user.run_in_namespace(&format!(
        r#"
{as_user} sh -c 'ulimit -n {limit}; exec {bin} -o lowerdir={lower},upperdir={upper},workdir={work} {mnt}'
{as_user} sh -e {script}
{as_user} fusermount3 -u {mnt}
echo UNMOUNTED
"#,
        bin = user.bin.display(),
        lower = lower.display(),
        upper = upper.display(),
        work = work.display(),
        mnt = mnt.display(),
        script = script_path.display(),
    ))
}

/// Lines `KEY=value` printed by the script.
fn value<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} not printed:\n{out}"))
}

#[test]
fn rootless_podman_with_layerfs_as_mount_program() {
    require!(
        "podman",
        "runc",
        "newuidmap",
        "newgidmap",
        "setpriv",
        "unshare",
        "busybox"
    );
    let t = tempfile::Builder::new().prefix("lfsrl").tempdir().unwrap();
    let base = t.path();
    let home = base.join("home");
    let run = base.join("run");
    mkdir(&home);
    mkdir(&run);
    let user = TestUser::new(base, "lfsrootless", 1500, &home);
    let id = user.id;

    let conf = home.join("conf");
    mkdir(&conf);
    fs::write(
        conf.join("storage.conf"),
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n\
             [storage.options.overlay]\nmount_program = \"{}\"\n",
            home.join("storage").display(),
            run.join("storage").display(),
            user.bin.display()
        ),
    )
    .unwrap();
    fs::write(conf.join("containers.conf"), CONTAINERS_CONF).unwrap();

    // The image: busybox, plus a file owned by a non-root user.
    let rootfs = base.join("rootfs");
    mkdir(&rootfs.join("bin"));
    fs::copy(busybox().unwrap(), rootfs.join("bin/busybox")).unwrap();
    for tool in [
        "sh", "cat", "ls", "rm", "mv", "mkdir", "echo", "grep", "id", "touch", "chown", "stat",
    ] {
        link_sym("busybox", &rootfs.join("bin").join(tool));
    }
    write(&rootfs.join("etc/os-release"), b"ID=layerfs-rootless\n");
    write(&rootfs.join("srv/owned-by-33"), b"www");
    chown(&rootfs.join("srv/owned-by-33"), 33, 33);
    assert!(Command::new("tar")
        .arg("cf")
        .arg(home.join("rootfs.tar"))
        .args(["--numeric-owner", "-C"])
        .arg(&rootfs)
        .arg(".")
        .status()
        .unwrap()
        .success());
    write(
        &home.join("ctx/Containerfile"),
        b"FROM base\n\
          RUN mkdir -p /opt/app/sub && echo v1 > /opt/app/sub/file && echo keep > /etc/keep\n\
          RUN echo v2 > /opt/app/sub/file && rm /etc/os-release && mv /opt/app /opt/app2 \
              && chown 5:6 /etc/keep\n",
    );
    user.own(&[&home, &run]);
    chmod(&run, 0o700);

    // What the user runs; `podman unshare` prints paths as podman sees them.
    let user_script = r#"
set -e
cd "$HOME"
podman import rootfs.tar base >/dev/null
podman run --rm --network none base sh -c 'grep " / " /proc/mounts; id -u; cat /etc/os-release; stat -c "srv=%u:%g" /srv/owned-by-33'
podman build --network none -t built ctx >/dev/null
podman run --name c1 --network none built sh -c 'cat /opt/app2/sub/file; stat -c "keep=%u:%g" /etc/keep; rm /etc/keep /srv/owned-by-33; echo new > /newfile; mv /opt/app2 /opt/app3'
podman diff c1 | sed 's/^/DIFF /'
echo "C1_UPPER=$(podman inspect --format '{{.GraphDriver.Data.UpperDir}}' c1)"
echo "C1_LOWER=$(podman inspect --format '{{.GraphDriver.Data.LowerDir}}' c1)"
podman commit c1 committed >/dev/null
podman save --format docker-archive -o committed.tar committed
podman run --name c2 --network none --uidmap 0:100:5000 --gidmap 0:100:5000 built sh -c 'cat /proc/self/uid_map; stat -c "mapped-keep=%u:%g" /etc/keep; stat -c "mapped-srv=%u:%g" /srv/owned-by-33; touch /by-root; touch /by-seven; chown 7:8 /by-seven; rm /etc/keep'
echo "C2_UPPER=$(podman inspect --format '{{.GraphDriver.Data.UpperDir}}' c2)"
podman run --rm --network none committed sh -c 'ls /etc /opt /; cat /newfile'
echo ROOTLESS-FLOW-DONE
"#;
    fs::write(home.join("flow.sh"), user_script).unwrap();
    let (ok, text) = user.run_in_namespace(&format!(
        "exec setpriv --reuid={id} --regid={id} --clear-groups env -i HOME={home} \\
           XDG_RUNTIME_DIR={run} USER={name} LOGNAME={name} \\
           PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \\
           CONTAINERS_STORAGE_CONF={home}/conf/storage.conf \\
           CONTAINERS_CONF={home}/conf/containers.conf sh {home}/flow.sh\n",
        name = user.name,
        home = home.display(),
        run = run.display(),
    ));
    assert!(
        ok && text.contains("ROOTLESS-FLOW-DONE"),
        "rootless flow failed:\n{text}"
    );

    // The container's root was layerfs, seen as root inside.
    assert!(text.contains("fuse.layerfs"), "{text}");
    assert!(text.contains("ID=layerfs-rootless"), "{text}");
    assert!(text.contains("srv=33:33"), "{text}");
    assert!(text.contains("keep=5:6") && text.contains("v2"), "{text}");
    for d in ["D /etc/keep", "A /newfile", "D /srv/owned-by-33"] {
        assert!(
            text.contains(&format!("DIFF {d}")),
            "no '{d}' in diff:\n{text}"
        );
    }

    // c1's upper on disk: ids as the host sees them (container root is the
    // user), and kernel-format whiteouts.
    let c1_upper = PathBuf::from(value(&text, "C1_UPPER"));
    let nf = fs::symlink_metadata(c1_upper.join("newfile")).unwrap();
    assert_eq!((nf.uid(), nf.gid()), (id, id));
    for wh in ["etc/keep", "srv/owned-by-33", "opt/app2"] {
        let m = fs::symlink_metadata(c1_upper.join(wh)).unwrap();
        assert!(
            m.file_type().is_char_device() && m.rdev() == 0,
            "{wh} is not a whiteout"
        );
    }
    // No redirect in this mode (kernel overlayfs refuses user.overlay
    // redirects): renaming the lower directory was EXDEV and mv copied it.
    let redirect = getxattr(&c1_upper.join("opt/app3"), "user.overlay.redirect");
    assert!(redirect.is_err(), "opt/app3 has a redirect: {redirect:?}");
    assert_eq!(
        fs::read(c1_upper.join("opt/app3/sub/file")).unwrap(),
        b"v2\n"
    );

    // Kernel overlayfs in userxattr mode reads c1's upper as layerfs does.
    // (Only the upper's part is compared: the image layers below were
    // unpacked by containers-storage with OCI `.wh.` files, which the kernel
    // does not read.)
    let lowers: Vec<PathBuf> = std::iter::once(c1_upper.clone())
        .chain(value(&text, "C1_LOWER").split(':').map(PathBuf::from))
        .collect();
    let k = mount_kernel(&lowers, &base.join("kernel-view"), "userxattr");
    let ours = try_mount_layerfs(&lowerdir_opt(&lowers), &base.join("layerfs-view")).unwrap();
    for gone in ["etc/keep", "srv/owned-by-33", "opt/app2"] {
        assert!(
            fs::symlink_metadata(k.path(gone)).is_err(),
            "kernel shows {gone}"
        );
        assert!(
            fs::symlink_metadata(ours.path(gone)).is_err(),
            "layerfs shows {gone}"
        );
    }
    for (file, content) in [("opt/app3/sub/file", &b"v2\n"[..]), ("newfile", b"new\n")] {
        assert_eq!(fs::read(k.path(file)).unwrap(), content);
        assert_eq!(fs::read(ours.path(file)).unwrap(), content);
    }
    drop(ours);
    drop(k);

    // The committed layer carries the deletions as OCI whiteouts.
    let layers = archive_layers(&home.join("committed.tar"), &base.join("committed-x"));
    let top = layers.last().unwrap();
    for wh in [
        "etc/.wh.keep",
        "srv/.wh.owned-by-33",
        "opt/.wh.app2",
        "newfile",
    ] {
        assert!(top.iter().any(|e| e == wh), "no {wh} in {top:?}");
    }
    assert!(
        text.contains("ID=layerfs-rootless") && text.contains("new\n"),
        "{text}"
    );

    // c2 ran with its own id mapping: layerfs showed stored id N as 100+N,
    // which the container's namespace turned back into N.
    assert!(text.contains("mapped-keep=5:6"), "{text}");
    assert!(text.contains("mapped-srv=33:33"), "{text}");
    let c2_upper = PathBuf::from(value(&text, "C2_UPPER"));
    let host = |p: &str| {
        let m = fs::symlink_metadata(c2_upper.join(p)).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(host("by-root"), (id, id), "container root is the user");
    assert_eq!(
        host("by-seven"),
        (SUBID_BASE + 6, SUBID_BASE + 7),
        "container uid 7 / gid 8 are the user's 7th and 8th subordinate ids"
    );
}

#[test]
fn unprivileged_user_mounts_through_fusermount3() {
    require!("fusermount3", "setpriv", "unshare");
    let t = tempfile::Builder::new().prefix("lfsfm").tempdir().unwrap();
    let base = t.path();
    let user = TestUser::new(base, "lfsfuser", 1700, Path::new("/nonexistent"));
    let id = user.id;
    let (lower, upper, work, mnt) = layer_dirs(base);
    write(&lower.join("dir/file"), b"lower data\n");
    write(&lower.join("gone"), b"deleted through the mount\n");
    write(&lower.join("root-owned"), b"read only\n");
    for d in [&upper, &work, &mnt] {
        mkdir(d);
    }
    user.own(&[&lower, &upper, &work, &mnt]);
    chown(&lower.join("root-owned"), 0, 0);

    // fusermount3 needs the user in passwd and a /dev/fuse the user may
    // open: `TestUser` provides both inside the namespace.
    let as_user = format!("setpriv --reuid={id} --regid={id} --clear-groups");
    let (ok, text) = user.run_in_namespace(&format!(
        r#"
{as_user} {bin} -o lowerdir={lower},upperdir={upper},workdir={work} {mnt}
grep " {mnt} " /proc/mounts
{as_user} sh -c 'cd {mnt}; cat dir/file root-owned; echo new > new; rm gone; chmod 600 dir/file; mv dir moved; ls; cat moved/file'
{as_user} fusermount3 -u {mnt}
echo UNMOUNTED
"#,
        bin = user.bin.display(),
        lower = lower.display(),
        upper = upper.display(),
        work = work.display(),
        mnt = mnt.display(),
    ));
    assert!(
        ok && text.contains("UNMOUNTED"),
        "unprivileged mount failed:\n{text}"
    );
    // mount(2) is refused to a plain user: fusermount3 made this mount.
    assert!(
        text.contains(&format!("user_id={id}")) && text.contains("fuse.layerfs"),
        "{text}"
    );
    assert!(
        text.contains("lower data") && text.contains("read only"),
        "{text}"
    );
    assert!(text.contains("moved") && !text.contains("gone\n"), "{text}");

    // On disk: the user's files, a device whiteout, user.overlay xattrs.
    let m = fs::symlink_metadata(upper.join("new")).unwrap();
    assert_eq!((m.uid(), m.gid()), (id, id));
    let wh = fs::symlink_metadata(upper.join("gone")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert_eq!(fs::read(upper.join("moved/file")).unwrap(), b"lower data\n");
    assert_eq!(
        fs::symlink_metadata(upper.join("moved/file"))
            .unwrap()
            .mode()
            & 0o777,
        0o600
    );
    // Kernel overlayfs in userxattr mode shows the same tree.
    let lowers = vec![upper.clone(), lower.clone()];
    let k = mount_kernel(&lowers, &base.join("kernel-view"), "userxattr");
    let ours = try_mount_layerfs(&lowerdir_opt(&lowers), &base.join("layerfs-view")).unwrap();
    assert_same(&k.dir, &ours.dir, Compare::ALL);
    assert!(
        fs::symlink_metadata(k.path("gone")).is_err()
            && fs::symlink_metadata(k.path("dir")).is_err()
    );
    drop(ours);
    drop(k);
    assert_eq!(
        fs::read(lower.join("gone")).unwrap(),
        b"deleted through the mount\n"
    );
}

/// An unprivileged daemon may make file handles but not open them
/// (CAP_DAC_READ_SEARCH in the initial namespace): past three quarters of
/// its open-file limit it must keep holding directories by fd, not switch
/// to handles that answer EPERM (seen as `chown -R` failing with "cannot
/// read directory: Operation not permitted" on a large tree).
#[test]
fn unprivileged_daemon_reaches_every_directory_past_three_quarters_of_its_fd_limit() {
    require!("fusermount3", "setpriv", "unshare");
    let t = tempfile::Builder::new().prefix("lfsfd").tempdir().unwrap();
    let base = t.path();
    let user = TestUser::new(base, "lfsfduser", 1750, Path::new("/nonexistent"));
    let (lower, ..) = layer_dirs(base);
    // 420 directories: over 3/4 of a 512-fd limit (384), under the limit
    // (read only: a copied-up directory holds one more fd).
    for i in 0..420 {
        write(&lower.join(format!("d{i:03}/f")), b"x\n");
    }
    let (ok, text) = run_with_fd_limit(
        &user,
        base,
        512,
        r#"echo DIRS $(ls -d d* | wc -l); echo FILES $(cat d*/f | wc -l); echo LISTED $(ls -R | grep -c "^f$")"#,
    );
    assert!(ok && text.contains("UNMOUNTED"), "{text}");
    for want in ["DIRS 420", "FILES 420", "LISTED 420"] {
        assert!(text.contains(want), "{want} expected:\n{text}");
    }
    assert!(!text.contains("not permitted"), "{text}");
}

/// A rootless daemon cannot open file handles, so it cannot trade the fd it
/// holds per upper file for one as a root daemon does: near its open-file
/// limit it must reach upper files by parent and name instead (seen as
/// `chown -R` and untar of a 30,000-file image failing with EMFILE at a
/// 20,000-fd limit). Far more files than fds are copied up, created,
/// renamed, linked, written through open handles and removed here.
#[test]
fn unprivileged_daemon_copies_up_and_creates_more_files_than_it_may_open() {
    require!("fusermount3", "setpriv", "unshare");
    let t = tempfile::Builder::new().prefix("lfsnf").tempdir().unwrap();
    let base = t.path();
    let user = TestUser::new(base, "lfsnfuser", 1800, Path::new("/nonexistent"));
    let (lower, upper, ..) = layer_dirs(base);
    // 1,200 lower files and 800 new ones against a 256-fd limit, in 80
    // directories: copied up, they hold 160 fds (held files must leave
    // them room).
    for d in 0..80 {
        for f in 0..15 {
            write(
                &lower.join(format!("d{d:02}/f{f:02}")),
                format!("{d}/{f}\n").as_bytes(),
            );
        }
    }
    let (ok, text) = run_with_fd_limit(
        &user,
        base,
        256,
        r#"chmod -R g+w d*; echo CHMOD done
for f in d*/f*; do echo more >> $f; done; echo APPENDED done
i=0; while [ $i -lt 800 ]; do echo new$i > n$i; i=$((i+1)); done; echo CREATED done
i=0; while [ $i -lt 400 ]; do mv n$i m$i; i=$((i+1)); done; echo MOVED done
exec 3>>m5; mv m5 m5b; echo through-handle >&3; exec 3>&-
mv m6 m7
ln m0 hard0; ln d00/f00 hard1; rm d00/f00
rm n799 m1
mv d01/f01 d02/moved
echo M5B $(cat m5b | tr "\n" " ")
echo M7 $(cat m7)
echo HARD0 $(cat hard0) $(stat -c %h hard0)
echo HARD1 $(cat hard1 | tr "\n" " ")
echo MOVEDF $(cat d02/moved | tr "\n" " ")
echo LOWERS $(cat d*/f* | grep -c more)
echo NEWS $(cat n* m* | wc -l)
"#,
    );
    assert!(ok && text.contains("UNMOUNTED"), "{text}");
    assert!(!text.contains("Too many open files"), "{text}");
    for want in [
        "CHMOD done",
        "APPENDED done",
        "CREATED done",
        "MOVED done",
        "M5B new5 through-handle",
        "M7 new6",
        "HARD0 new0 2",
        "HARD1 0/0 more",
        "MOVEDF 1/1 more",
        // 1,200 lower files, one removed, one moved out of d*/f*.
        "LOWERS 1198",
        // 800 new ones: n799 and m1 removed, m6 renamed over m7; m5b has
        // two lines.
        "NEWS 798",
    ] {
        assert!(text.contains(want), "{want} expected:\n{text}");
    }
    // On disk: every copied-up file carries the change, the lowers none.
    let copied = fs::read_to_string(upper.join("d05/f07")).unwrap();
    assert_eq!(copied, "5/7\nmore\n");
    let mode = fs::metadata(upper.join("d05/f07")).unwrap().mode();
    assert_eq!(mode & 0o020, 0o020, "g+w on the copy");
    assert_eq!(fs::read_to_string(lower.join("d05/f07")).unwrap(), "5/7\n");
    assert_eq!(
        fs::metadata(upper.join("m0")).unwrap().ino(),
        fs::metadata(upper.join("hard0")).unwrap().ino()
    );
    assert!(!upper.join("m1").exists() && !upper.join("n799").exists());
    assert_eq!(fs::read_to_string(upper.join("m399")).unwrap(), "new399\n");
    assert_eq!(fs::read_to_string(upper.join("n400")).unwrap(), "new400\n");
    assert!(upper
        .join("d00/f00")
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_char_device());
}
