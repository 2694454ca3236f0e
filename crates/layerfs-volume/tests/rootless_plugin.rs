//! Rootless podman with the layerfs volume plugin, as a real unprivileged
//! user (made by the test, in a private mount namespace so the host's /etc
//! stays untouched): the user serves the plugin on a socket in their
//! runtime dir with a store of their own, and their podman (vfs storage in
//! their HOME) creates a volume, writes to it from one container and reads
//! it from another, is refused its removal while a container holds it, and
//! the user's CLI snapshots it live.
//!
//! podman runs its containers in its own user and mount namespace (the
//! pause process), made before the plugin mounts anything; the plugin's
//! mount (through fusermount3) reaches it only by propagation, so `/` is
//! made shared in the test's namespace, as a systemd host has it.

#[path = "../../../tests/common/mod.rs"]
mod common;
mod vol_common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use vol_common::{bin, busybox_rootfs, rootfs_tar, short_tmp};

/// The tools a rootless flow needs (`require!` with these, in the test).
macro_rules! require_rootless_podman {
    () => {
        require!(
            "podman",
            "runc",
            "newuidmap",
            "newgidmap",
            "fusermount3",
            "setpriv",
            "unshare",
            "busybox"
        )
    };
}

/// What the user runs, `sh -e`, in their HOME: `$LV` is their copy of
/// layerfs-volume.
const FLOW: &str = r#"
cd "$HOME"
SOCK=$XDG_RUNTIME_DIR/layerfs.sock
# Its output to a file: an inherited stdout would keep the test's pipe
# open after the flow ends.
$LV --store "$HOME/store" serve --socket "$SOCK" </dev/null >plugin.log 2>&1 &
PLUGIN=$!
i=0; while [ ! -S "$SOCK" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
podman import rootfs.tar base >/dev/null
podman volume create --driver layerfs data
podman run --rm --network none -v data:/data base sh -c 'grep " /data " /proc/mounts; echo hi > /data/f'
echo "READ=$(podman run --rm --network none -v data:/data base cat /data/f)"
podman run -d --name holder --network none -v data:/data base sleep 600 >/dev/null
if podman volume rm data 2>&1; then echo RM-WHILE-USED; else echo RM-REFUSED; fi
echo "SNAP=$($LV --store "$HOME/store" snapshot data)"
echo "IN-SNAPSHOT=$(cat store/data/snapshots/s1/f)"
podman rm -f -t 0 holder >/dev/null
echo "UNDER-MOUNTPOINT=$(ls -A store/data/merged)"
podman volume rm data
[ ! -e store/data ] && echo VOLUME-GONE
kill $PLUGIN
echo ROOTLESS-PLUGIN-DONE
"#;

/// What a flow printed (`text`), whether it ended well, the plugin's log.
struct Ran {
    ok: bool,
    text: String,
    log: String,
    home: PathBuf,
    uid: u32,
}

/// Makes a user `name` (uid from `first_id` on) with a HOME, runtime dir,
/// podman configuration naming the plugin's socket there, and a busybox
/// image tar; runs `flow` (sh -e) as the user in HOME, with `/` made
/// shared first when `shared`.
fn run_flow(t: &Path, name: &'static str, first_id: u32, shared: bool, flow: &str) -> Ran {
    let base = t;
    let (home, run) = (base.join("home"), base.join("run"));
    mkdir(&home);
    mkdir(&run);
    let user = TestUser::new(base, name, first_id, &home);
    // layerfs-volume runs the layerfs beside it.
    let lv = user.bin.with_file_name("layerfs-volume");
    fs::copy(bin(), &lv).unwrap();
    chmod(&lv, 0o755);

    let conf = home.join("conf");
    mkdir(&conf);
    fs::write(
        conf.join("storage.conf"),
        format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            home.join("storage").display(),
            run.join("storage").display()
        ),
    )
    .unwrap();
    fs::write(
        conf.join("containers.conf"),
        format!(
            "{CONTAINERS_CONF}[engine.volume_plugins]\nlayerfs = \"{}\"\n",
            run.join("layerfs.sock").display()
        ),
    )
    .unwrap();
    let rootfs = busybox_rootfs(base, &["sh", "cat", "echo", "grep", "sleep"]);
    fs::copy(rootfs_tar(&rootfs, base), home.join("rootfs.tar")).unwrap();
    fs::write(home.join("flow.sh"), flow).unwrap();
    user.own(&[&home, &run]);
    chmod(&run, 0o700);

    let (ok, text) = user.run_in_namespace(&format!(
        "{share}exec setpriv --reuid={id} --regid={id} --clear-groups env -i HOME={home} \\
           XDG_RUNTIME_DIR={run} USER={name} LOGNAME={name} LV={lv} \\
           PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \\
           CONTAINERS_STORAGE_CONF={home}/conf/storage.conf \\
           CONTAINERS_CONF={home}/conf/containers.conf sh -e {home}/flow.sh\n",
        share = if shared {
            "mount --make-rshared /\n"
        } else {
            ""
        },
        id = user.id,
        name = user.name,
        home = home.display(),
        run = run.display(),
        lv = lv.display(),
    ));
    let log = fs::read_to_string(home.join("plugin.log")).unwrap_or_default();
    Ran {
        ok,
        text,
        log,
        home,
        uid: user.id,
    }
}

#[test]
fn rootless_podman_uses_a_users_own_plugin_and_store() {
    require_rootless_podman!();
    // Short: the plugin's socket and the volumes' control sockets live
    // under it.
    let t = short_tmp("lfsrp");
    let Ran {
        ok,
        text,
        log,
        home,
        uid,
    } = run_flow(t.path(), "lfsrlplugin", 1850, true, FLOW);
    assert!(
        ok && text.contains("ROOTLESS-PLUGIN-DONE"),
        "rootless plugin flow failed:\n{text}\nplugin log:\n{log}"
    );
    let has = |want: &str| assert!(text.contains(want), "no {want:?} in:\n{text}\n{log}");
    // The container's /data was the plugin's mount, made by fusermount3
    // as the user, and what one container wrote the next one read.
    has("/data fuse.layerfs");
    has(&format!("user_id={uid}"));
    has("READ=hi\n");
    // podman refuses while a container holds the volume; the plugin was
    // not asked (its store still has the volume, snapshotted below).
    has("RM-REFUSED");
    assert!(!text.contains("RM-WHILE-USED"), "{text}");
    // The CLI reached the mount's daemon through its control socket.
    has("SNAP=s1\n");
    has("IN-SNAPSHOT=hi\n");
    // Nothing was written to the mountpoint directory itself, and the
    // last container's end unmounted the volume (as the user, through
    // fusermount3), so that it could be removed.
    has("UNDER-MOUNTPOINT=\n");
    has("VOLUME-GONE");
    assert!(!Path::new(&home.join("store/data")).exists());
}

/// Without propagation podman's containers would not see the volume's
/// mount and would write to the mountpoint directory: the plugin refuses
/// the mount, and podman fails the container with the plugin's reason.
#[test]
fn rootless_plugin_refuses_a_mount_its_engine_would_not_see() {
    require_rootless_podman!();
    let t = short_tmp("lfsrq");
    let flow = r#"
cd "$HOME"
SOCK=$XDG_RUNTIME_DIR/layerfs.sock
$LV --store "$HOME/store" serve --socket "$SOCK" </dev/null >plugin.log 2>&1 &
PLUGIN=$!
i=0; while [ ! -S "$SOCK" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
podman import rootfs.tar base >/dev/null
podman volume create --driver layerfs data
if podman run --rm --network none -v data:/data base sh -c 'echo hi > /data/f' 2>&1; then echo RAN; fi
echo "UNDER-MOUNTPOINT=$(ls -A store/data/merged 2>/dev/null)"
kill $PLUGIN
echo REFUSAL-FLOW-DONE
"#;
    let r = run_flow(t.path(), "lfsrlprivate", 1870, false, flow);
    assert!(
        r.ok && r.text.contains("REFUSAL-FLOW-DONE"),
        "flow failed:\n{}\n{}",
        r.text,
        r.log
    );
    assert!(!r.text.contains("RAN"), "{}", r.text);
    assert!(
        r.text.contains("does not propagate") && r.text.contains("mount --make-rshared /"),
        "{}",
        r.text
    );
    assert!(r.text.contains("UNDER-MOUNTPOINT=\n"), "{}", r.text);
    assert!(r.home.join("store/data").is_dir());
}
