//! What a newcomer meets in the first hour with `layerfs-volume`: help
//! text on every argument, commands that only read leave the host as it
//! was, and each error says what is wrong in words (checked for its text).
//! The tests that mount run as root.

// The mounted-test helpers of the filesystem crate, shared.
#[path = "../../../tests/common/mod.rs"]
mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    // Mounting runs the `layerfs` beside it: checked to be there.
    let _ = common::layerfs_bin();
    env!("CARGO_BIN_EXE_layerfs-volume")
}

/// A store in a temp dir; whatever is mounted under it is unmounted on
/// drop, even when the test fails.
struct Store {
    tmp: tempfile::TempDir,
}

impl Store {
    fn new() -> Store {
        Store { tmp: common::tmp() }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .arg("--store")
            .arg(self.path("store"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let text = common::output_text(&out);
        assert!(out.status.success(), "{args:?} failed: {text}");
        text
    }

    /// The one-line error of a command that must fail.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(out.stdout.is_empty(), "{args:?} wrote to stdout");
        String::from_utf8(out.stderr).expect("errors are text")
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let root = self.tmp.path().canonicalize().unwrap();
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for m in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
            if Path::new(m).starts_with(&root) {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
    }
}

#[test]
fn every_argument_has_help() {
    let help = |args: &[&str]| {
        let out = Command::new(bin()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let create = help(&["create", "--help"]);
    assert!(create.contains("--from <DIR|VOLUME@SNAP>"), "{create}");
    assert!(create.contains("repeat for several"), "{create}");
    assert!(create.contains("from=/a:/b"), "{create}");
    let export = help(&["export", "--help"]);
    assert!(export.contains("-o, --output <FILE>"), "{export}");
    assert!(export.contains("The tar file to write"), "{export}");
    let clone = help(&["clone", "--help"]);
    assert!(clone.contains("<VOLUME@SNAP>"), "{clone}");
    assert!(clone.contains("The snapshot to start from"), "{clone}");
    // No argument of any command is left without a line of help.
    for cmd in [
        "create",
        "inspect",
        "rm",
        "snapshot",
        "snapshots",
        "snapshot-rm",
        "clone",
        "compact",
        "export",
        "import",
        "mount",
        "umount",
        "serve",
    ] {
        let text = help(&[cmd, "--help"]);
        let bare: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
            .filter(|l| l.split_whitespace().count() == 1)
            .collect();
        assert!(bare.is_empty(), "{cmd}: no help for {bare:?}");
    }
    let man = Command::new(common::layerfs_bin())
        .arg("--man")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&man.stdout).contains(".BR layerfs\\-volume (8)"));
}

#[test]
fn reading_commands_create_no_store() {
    let s = Store::new();
    assert_eq!(s.ok(&["ls"]), "");
    let e = s.fails(&["inspect", "web"]);
    assert_eq!(e, "layerfs-volume: no such volume: web\n");
    s.fails(&["snapshots", "web"]);
    s.fails(&["export", "web", "-o", s.path("web.tar").to_str().unwrap()]);
    assert!(
        !s.path("store").exists(),
        "a reading command made the store"
    );
}

#[test]
fn import_says_what_is_wrong_with_a_file() {
    let s = Store::new();
    let gz = s.path("backup.tar.gz");
    fs::write(&gz, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3]).unwrap();
    let text = s.path("notes.txt");
    fs::write(&text, "these are notes, not a tar\n".repeat(40)).unwrap();
    let random = s.path("random.bin");
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(&random, &noise).unwrap();
    // A tar cut inside its first file's data, and one cut inside the
    // second header.
    let mut b = tar::Builder::new(Vec::new());
    for name in ["big", "next"] {
        let mut h = tar::Header::new_gnu();
        h.set_size(10_000);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, name, &vec![7u8; 10_000][..]).unwrap();
    }
    let whole = b.into_inner().unwrap();
    let cut = s.path("cut.tar");
    fs::write(&cut, &whole[..4096]).unwrap();
    let cut_header = s.path("cut-header.tar");
    fs::write(&cut_header, &whole[..512 + 10_240 + 100]).unwrap();

    let import = |f: &Path| s.fails(&["import", "v", f.to_str().unwrap()]);
    let shown = |f: &Path| f.display().to_string();
    assert_eq!(
        import(&gz),
        format!(
            "layerfs-volume: {}: not a tar archive (gzip-compressed?): decompress it first\n",
            shown(&gz)
        )
    );
    assert_eq!(
        import(&text),
        format!("layerfs-volume: {}: not a tar archive\n", shown(&text))
    );
    assert_eq!(
        import(&random),
        format!("layerfs-volume: {}: not a tar archive\n", shown(&random))
    );
    assert_eq!(
        import(&cut),
        format!(
            "layerfs-volume: {}: entry \"big\": truncated content\n",
            shown(&cut)
        )
    );
    assert_eq!(
        import(&cut_header),
        format!(
            "layerfs-volume: {}: truncated tar archive (it ends inside an entry)\n",
            shown(&cut_header)
        )
    );
    assert_eq!(s.ok(&["ls"]), "", "a refused import left a volume");
}

#[test]
fn export_names_the_file_it_cannot_write_and_refuses_a_terminal() {
    require!("script");
    let s = Store::new();
    s.ok(&["create", "web"]);
    let missing = s.path("no/such/dir/web.tar");
    let e = s.fails(&["export", "web", "-o", missing.to_str().unwrap()]);
    assert_eq!(
        e,
        format!(
            "layerfs-volume: cannot write {}: No such file or directory (os error 2)\n",
            missing.display()
        )
    );
    // Without a terminal (a pipe here) the tar goes to stdout, and nothing
    // is drawn on stderr.
    let out = s.run(&["export", "web"]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    assert!(out.stdout.len() >= 1024, "a tar of at least its end blocks");
    assert!(out.stderr.is_empty(), "{}", common::output_text(&out));
    // On a terminal (script(1) gives it one): refused, as tar does.
    let cmd = format!("{} --store {} export web", bin(), s.path("store").display());
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = common::output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("refusing to write a tar to a terminal: give -o FILE or redirect stdout"),
        "{text}"
    );
}

#[test]
fn refusals_while_mounted_say_how_to_unmount() {
    require!();
    let s = Store::new();
    s.ok(&["create", "web"]);
    s.ok(&["snapshot", "web", "day0"]);
    s.ok(&["mount", "web"]);
    let how = "unmount it first: layerfs-volume umount web";
    // The newest snapshot of a mounted volume holds its upper up.
    let e = s.fails(&["snapshot-rm", "web", "day0"]);
    assert_eq!(
        e,
        format!(
            "layerfs-volume: cannot remove snapshot day0 of volume web while it is mounted: it is the newest, under the upper the containers write to; take another snapshot first, or {how}\n"
        )
    );
    let e = s.fails(&["rm", "web"]);
    assert!(e.contains(how), "{e}");
    s.ok(&["umount", "web"]);
    s.ok(&["snapshot-rm", "web", "day0"]);
}

/// A POST to the plugin, for its effect on the log.
fn post(sock: &Path, endpoint: &str, body: &str) {
    let mut s = UnixStream::connect(sock).unwrap();
    let req = format!(
        "POST /{endpoint} HTTP/1.1\r\nHost: p\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    // Answered: 200, or 500 with the `Err` podman reads.
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.1 500"),
        "{answer}"
    );
}

#[test]
fn the_plugin_logs_where_it_listens_and_not_routine_misses() {
    let s = Store::new();
    let sock = s.path("layerfs.sock");
    let log = s.path("plugin.log");
    let mut plugin = Command::new(bin())
        .arg("--store")
        .arg(s.path("store"))
        .args(["serve", "--socket"])
        .arg(&sock)
        .env("RUST_LOG", "info")
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&sock).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Docker asks for a volume before it creates it.
    post(&sock, "VolumeDriver.Get", r#"{"Name":"web"}"#);
    post(
        &sock,
        "VolumeDriver.Create",
        r#"{"Name":"web","Opts":{"colour":"red"}}"#,
    );
    let _ = plugin.kill();
    let _ = plugin.wait();
    let text = fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(
            format!(
                "[INFO  layerfs_volume::plugin] listening on {}",
                sock.display()
            )
            .as_str()
        ),
        "{text}"
    );
    assert!(!text.contains("volumes still mounted"), "{text}");
    assert!(!text.contains("no such volume"), "{text}");
    // A refused request is still worth a line.
    assert!(text.contains("unknown option \"colour\""), "{text}");
}
