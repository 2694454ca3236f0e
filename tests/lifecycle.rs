//! The daemon's life around the mount: what it holds once `umount` has
//! returned, how signals end it whatever other mount namespaces hold, and
//! where its log records go once it has detached from the terminal.

mod common;

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Runs a bash script in a private mount namespace of its own: whatever it
/// mounts disappears with it, even if the test fails half-way.
fn in_private_ns(script: &str, args: &[&Path]) -> String {
    let out = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "bash",
            "-c",
            script,
            "bash",
        ])
        .args(args)
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "script failed: {text}");
    text
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn gone(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.contains(") Z ") || s.contains(") X "))
        .unwrap_or(true)
}

/// A script that unmounts the union and then, at once, the filesystems of
/// its layers must not be told they are busy: the daemon's fds on them
/// (layer roots, inodes, open files, passthrough backing files) must not
/// pin their mounts once `umount` has returned. Read-only mounts (lower
/// files pass through) alternate with mounts whose upper and work dirs are
/// on a filesystem of their own, written to (copy-up, new files).
#[test]
fn layers_can_be_unmounted_as_soon_as_umount_returns() {
    require!("unshare", "nsenter");
    let t = tmp();
    let script = r#"
set -u
B=$1 T=$2
low=$T/low up=$T/up m=$T/m
mkdir -p "$low" "$up" "$m"
trap 'umount -l "$m" "$low" "$up" 2>/dev/null' EXIT
busy=0
for i in $(seq 1 100); do
  mount -t tmpfs -o size=4m lower "$low" || exit 2
  mkdir "$low/d" && echo data > "$low/d/f" && ln -s f "$low/d/s" || exit 2
  mount -o remount,ro "$low" || exit 2
  if [ $((i % 2)) = 0 ]; then
    opts=lowerdir=$low
  else
    mount -t tmpfs -o size=4m upper "$up" && mkdir "$up/u" "$up/w" || exit 2
    opts=lowerdir=$low,upperdir=$up/u,workdir=$up/w
  fi
  "$B" -o "$opts" "$m" || exit 3
  cat "$m/d/f" "$m/d/s" >/dev/null && ls -l "$m/d" >/dev/null || exit 4
  if [ $((i % 2)) = 1 ]; then
    echo more >> "$m/d/f" && echo new > "$m/d/n" && cat "$m/d/n" >/dev/null || exit 4
  fi
  umount "$m" || exit 5
  if ! umount "$low" 2>/dev/null; then
    busy=$((busy + 1))
    echo "lower busy in round $i"
    umount -l "$low"
  fi
  if [ $((i % 2)) = 1 ] && ! umount "$up" 2>/dev/null; then
    busy=$((busy + 1))
    echo "upper busy in round $i"
    umount -l "$up"
  fi
done
echo "busy=$busy"
"#;
    let text = in_private_ns(script, &[Path::new(layerfs_bin()), t.path()]);
    assert!(
        text.contains("busy=0"),
        "a layer was busy after umount returned: {text}"
    );
}

/// Kills a process when dropped (the test's helper processes).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGTERM and SIGINT end the daemon even while another mount namespace,
/// made after the mount, still holds a copy of it: the daemon exits, the
/// copy answers ENOTCONN as after any daemon's end, and the upper and work
/// dirs are free for the next mount at once.
#[test]
fn signals_end_the_daemon_whatever_other_namespaces_hold() {
    require!("unshare", "nsenter");
    for sig in ["TERM", "INT"] {
        let t = tmp();
        let b = t.path();
        write(&b.join("l/f"), b"lower");
        for d in ["u", "w", "m"] {
            mkdir(&b.join(d));
        }
        let mnt = b.join("m");
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            b.join("l").display(),
            b.join("u").display(),
            b.join("w").display()
        );
        let log = b.join("daemon.log");
        let mut m = try_mount_layerfs(&format!("{opts},logfile={}", log.display()), &mnt).unwrap();
        fs::write(mnt.join("new"), b"upper").unwrap();
        let pid = daemon_pid(&mnt).expect("daemon");
        // A namespace made now holds its own copy of the mount.
        let holder = KillOnDrop(
            Command::new("unshare")
                .args(["-m", "--propagation", "private", "sleep", "1000"])
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let holder_pid = holder.0.id();
        let canon = mnt.canonicalize().unwrap();
        let want = format!(" {} ", canon.display());
        wait_until("the other namespace", Duration::from_secs(10), || {
            fs::read_to_string(format!("/proc/{holder_pid}/mounts"))
                .is_ok_and(|s| s.contains(&want))
                && fs::read_link(format!("/proc/{holder_pid}/ns/mnt")).ok()
                    != fs::read_link("/proc/self/ns/mnt").ok()
        });
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        wait_until(
            &format!("the daemon to end on SIG{sig}"),
            Duration::from_secs(10),
            || gone(pid),
        );
        assert!(!is_mounted(&mnt), "SIG{sig} must unmount here");
        // Said in the log, since the other namespace's users lose the mount.
        let text = fs::read_to_string(&log).unwrap_or_default();
        assert!(
            text.contains("WARN") && text.contains("still in use"),
            "the log must say why the daemon ended: {text:?}"
        );
        // The copy in the other namespace is dead, not served: ENOTCONN, or
        // ECONNABORTED for a request that met the abort (the thread group
        // leader is a zombie before the last worker has closed its fds).
        let out = Command::new("nsenter")
            .args(["-t", &holder_pid.to_string(), "-m", "cat"])
            .arg(canon.join("f"))
            .output()
            .unwrap();
        let text = output_text(&out);
        assert!(
            !out.status.success()
                && (text.contains("not connected") || text.contains("connection abort")),
            "the other namespace's copy must answer ENOTCONN: {text}"
        );
        // The work dir lock went with the daemon: the next mount of the same
        // upper does not wait for the other namespace to let go.
        let again = try_mount_layerfs(&opts, &mnt).unwrap();
        assert_eq!(fs::read(again.path("new")).unwrap(), b"upper");
        drop(again);
        drop(holder);
        m.unmount();
    }
}

/// A warning logged by a detached daemon (here: the kernel refuses FUSE
/// passthrough for a file on a stacked filesystem inside the lower) reaches
/// `-o logfile=PATH`, and without it syslog's `/dev/log` (a socket of the
/// test's own, bound over /dev/log in a private namespace), as a
/// daemon-facility warning tagged with the daemon's name and pid.
#[test]
fn warnings_of_a_detached_daemon_reach_the_logfile_and_syslog() {
    require!("unshare", "nsenter");
    let t = tmp();
    let b = t.path();
    write(&b.join("low/top"), b"top");
    mkdir(&b.join("low/sub"));
    write(&b.join("a/f"), b"stacked");
    mkdir(&b.join("bb"));
    mkdir(&b.join("m"));
    let sock_path = b.join("log.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let script = r#"
set -eu
B=$1 T=$2
trap 'umount -l "$T/m" 2>/dev/null || true; umount -l "$T/low/sub" 2>/dev/null || true' EXIT
# A stacked filesystem inside the lower: the kernel refuses passthrough to
# its files (they are one stacking level too deep), and layerfs warns.
mount -t overlay overlay -o "lowerdir=$T/a:$T/bb" "$T/low/sub"
# With a log file.
"$B" -o "lowerdir=$T/low,logfile=$T/daemon.log" "$T/m"
cat "$T/m/sub/f"; echo
umount "$T/m"
# Without: syslog. /dev here gets a tmpfs with only what the daemon needs,
# and our socket as /dev/log.
mkdir "$T/olddev"
mount --rbind /dev "$T/olddev"
mount -t tmpfs dev /dev
for n in null fuse log; do touch "/dev/$n"; done
mount --bind "$T/olddev/null" /dev/null
mount --bind "$T/olddev/fuse" /dev/fuse
mount --bind "$T/log.sock" /dev/log
"$B" -o "lowerdir=$T/low" "$T/m"
cat "$T/m/sub/f"; echo
umount "$T/m"
"#;
    let text = in_private_ns(script, &[Path::new(layerfs_bin()), b]);
    assert_eq!(text.matches("stacked").count(), 2, "{text}");
    let wait_log = || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = fs::read_to_string(b.join("daemon.log")).unwrap_or_default();
            if log.contains("passthrough refused") || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let log = wait_log();
    assert!(
        log.contains("WARN") && log.contains("passthrough refused"),
        "the log file must have the warning: {log:?}"
    );
    let mut buf = vec![0u8; 65536];
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) => panic!("no syslog record from the detached daemon ({e}); got {got:?}"),
        };
        let rec = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = rec.contains("passthrough refused");
        got.push(rec);
        if done {
            break;
        }
    }
    let rec = got
        .iter()
        .find(|r| r.contains("passthrough refused"))
        .unwrap_or_else(|| panic!("no warning in syslog: {got:?}"));
    // <28>: facility daemon (3 << 3), severity warning (4).
    assert!(
        rec.starts_with("<28>layerfs[") && rec.contains("]: "),
        "a syslog record: {rec:?}"
    );
}
