//! The doors people use: the command line (both forms), mount(8) and
//! /etc/fstab through mount.fuse3, signals, and the error messages for every
//! mistake in the validation list.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn mounts() -> String {
    fs::read_to_string("/proc/self/mounts").unwrap()
}

/// The mounts under one test's directory (other tests run in parallel).
fn mounts_under(base: &Path) -> Vec<String> {
    let b = base.canonicalize().unwrap();
    let b = b.to_str().unwrap();
    mounts()
        .lines()
        .filter(|l| l.contains(b))
        .map(String::from)
        .collect()
}

fn run(args: &[&str]) -> Output {
    Command::new(layerfs_bin()).args(args).output().unwrap()
}

/// A small stack: two lowers, an upper, a work dir, a mountpoint.
struct Dirs {
    _t: tempfile::TempDir,
    base: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let t = tmp();
        let base = t.path().to_path_buf();
        write(&base.join("l0/top"), b"top");
        write(&base.join("l1/bottom"), b"bottom");
        for d in ["u", "w", "m"] {
            mkdir(&base.join(d));
        }
        Dirs { _t: t, base }
    }
    fn p(&self, rel: &str) -> String {
        self.base.join(rel).to_string_lossy().into_owned()
    }
    fn opts(&self) -> String {
        format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            self.p("l0"),
            self.p("l1"),
            self.p("u"),
            self.p("w")
        )
    }
}

/// Runs layerfs with a mistake: it must fail with a one-line message that
/// contains `expect`, mount nothing and create nothing.
fn assert_refused(d: &Dirs, args: &[&str], expect: &str) {
    let before = mounts_under(&d.base);
    let listing = |p: &str| {
        fs::read_dir(d.p(p))
            .map(|r| r.count())
            .unwrap_or(usize::MAX)
    };
    let (u, w) = (listing("u"), listing("w"));
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} must fail");
    assert!(
        err.contains(expect),
        "{args:?}: message {err:?} must say {expect:?}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("layerfs: "), "{err:?}");
    assert_eq!(mounts_under(&d.base), before, "{args:?} must mount nothing");
    assert_eq!(
        (listing("u"), listing("w")),
        (u, w),
        "{args:?} must change nothing"
    );
}

#[test]
fn version_and_help() {
    let out = run(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("layerfs {}", env!("CARGO_PKG_VERSION"))
    );
    let out = run(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "lowerdir=",
        "upperdir=",
        "workdir=",
        "volatile",
        "uidmapping",
        "fuse.layerfs",
    ] {
        assert!(help.contains(word), "--help must mention {word}");
    }
}

/// The usage line of --help, and of every command-line error.
const USAGE: &str = "Usage: layerfs [-f] [-d] [-o OPTIONS]... [SOURCE] MOUNTPOINT";

#[test]
fn help_and_usage_errors_say_the_same() {
    let help = String::from_utf8_lossy(&run(&["--help"]).stdout).into_owned();
    assert!(help.contains(USAGE), "{help}");
    assert!(help.contains("--man"), "--help must list --man: {help}");
    assert!(
        help.contains("MOUNTPOINT  the directory") && help.contains("SOURCE      optional"),
        "--help must explain SOURCE and MOUNTPOINT: {help}"
    );
    for (args, expect) in [
        (&[][..], "no MOUNTPOINT given"),
        (&["-f", "-o", "lowerdir=/x"][..], "no MOUNTPOINT given"),
        (&["a", "b", "c"][..], "unexpected argument 'c'"),
        (&["--bogus", "m"][..], "--bogus"),
    ] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(expect) && err.contains(USAGE),
            "{args:?}: {err}"
        );
        assert!(
            !err.contains("<MOUNTPOINT>") && !err.contains("[PATHS]"),
            "{err}"
        );
    }
}

#[test]
fn man_page_is_a_section_8_page_listing_every_option() {
    let man = String::from_utf8_lossy(&run(&["--man"]).stdout).into_owned();
    assert!(man.contains(&format!(
        ".TH LAYERFS 8 \"\" \"layerfs {}\"",
        env!("CARGO_PKG_VERSION")
    )));
    for section in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "EXIT STATUS",
        "SIGNALS",
        "LOGGING",
        "FILES",
        "EXAMPLES",
        "SEE ALSO",
    ] {
        assert!(man.contains(&format!("\n.SH {section}\n")), "no {section}");
    }
    // Every option --help lists is described in the manual too.
    let help = String::from_utf8_lossy(&run(&["--help"]).stdout).into_owned();
    let block = help.split("Mount options").nth(1).unwrap();
    let block = block.split("Examples:").next().unwrap();
    let words = block
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.len() > 1 && w.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
    let roff = man.replace("\\-", "-");
    for w in words {
        assert!(roff.contains(w), "the manual does not mention {w}");
    }
    // It renders without a warning (groff-base, which man-db needs).
    if !have("groff") {
        cannot_run("needs groff (package groff-base) to check the manual renders");
    } else {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{} --man | groff -man -ww -z", layerfs_bin()))
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}",
            output_text(&out)
        );
    }
}

#[test]
fn the_ci_switch_decides_whether_a_test_may_skip() {
    assert!(!require_all(None, None));
    assert!(require_all(None, Some("true")));
    assert!(require_all(None, Some("1")));
    assert!(!require_all(None, Some("false")));
    assert!(!require_all(None, Some("")));
    assert!(require_all(Some("1"), None));
    assert!(!require_all(Some("0"), Some("true")), "an explicit 0 wins");
    assert!(require_all(Some("1"), Some("false")));
}

/// The fixture of the next test: a test whose tool is missing everywhere.
#[test]
#[ignore = "run by a_test_that_cannot_run_fails_under_ci"]
fn needs_a_tool_that_is_nowhere() {
    require!("layerfs-no-such-tool");
    panic!("ran without its tool");
}

/// A test that lacks a tool skips on a developer's machine and fails under
/// CI, naming what it lacks.
#[test]
fn a_test_that_cannot_run_fails_under_ci() {
    require_root!();
    let run_fixture = |env: &[(&str, &str)]| {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "needs_a_tool_that_is_nowhere"])
            .args(["--ignored", "--nocapture", "--test-threads=1"])
            .env_remove("CI")
            .env_remove("LAYERFS_REQUIRE_ALL")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (out.status.success(), output_text(&out))
    };
    let (ok, text) = run_fixture(&[]);
    assert!(
        ok && text.contains("SKIP: needs layerfs-no-such-tool") && text.contains("1 passed"),
        "{text}"
    );
    for env in [("CI", "true"), ("LAYERFS_REQUIRE_ALL", "1")] {
        let (ok, text) = run_fixture(&[env]);
        assert!(
            !ok && text.contains("cannot run: needs layerfs-no-such-tool"),
            "{env:?}: {text}"
        );
    }
    let (ok, text) = run_fixture(&[("CI", "true"), ("LAYERFS_REQUIRE_ALL", "0")]);
    assert!(ok, "LAYERFS_REQUIRE_ALL=0 allows skips under CI: {text}");
}

#[test]
fn every_mistake_gets_a_message_naming_it() {
    require_root!();
    let d = Dirs::new();
    let m = d.p("m");
    let lo = format!("lowerdir={}:{}", d.p("l0"), d.p("l1"));
    write(&d.base.join("afile"), b"");
    let cases: Vec<(String, &str)> = vec![
        ("upperdir=/x".to_string(), "no lower layer given"),
        (format!("lowerdir={}", d.p("missing")), "does not exist"),
        (format!("lowerdir={}", d.p("afile")), "is not a directory"),
        (
            format!("{lo},upperdir={}", d.p("u")),
            "upperdir= needs workdir=",
        ),
        (
            format!("{lo},workdir={}", d.p("w")),
            "workdir= needs upperdir=",
        ),
        (
            format!("{lo},control=/tmp/x.sock"),
            "control= needs a writable mount",
        ),
        (
            format!(
                "{lo},upperdir={},workdir={},control=x.sock",
                d.p("u"),
                d.p("w")
            ),
            "control=x.sock: must be an absolute path",
        ),
        (
            format!(
                "{lo},upperdir={},workdir={},control=/tmp/x.sock,metacopy=on",
                d.p("u"),
                d.p("w")
            ),
            "control= cannot go with metacopy=on",
        ),
        (
            format!("{lo},upperdir={},workdir={}", d.p("l0/sub"), d.p("w")),
            "does not exist",
        ),
        (
            format!("{lo},upperdir={},workdir={}", d.p("u"), d.p("u/w")),
            "does not exist",
        ),
        (
            format!("{lo},bogus_option=1"),
            "unknown mount option 'bogus_option=1'",
        ),
        (format!("{lo},timeout=soon"), "timeout=soon"),
        (
            format!("lowerdir={}::{}", d.p("l0"), d.p("l1")),
            "empty layer path",
        ),
    ];
    for (opts, expect) in &cases {
        assert_refused(&d, &["-o", opts, &m], expect);
    }
    // Layers inside each other, and the mountpoint inside a layer.
    mkdir(&d.base.join("l0/inner"));
    mkdir(&d.base.join("u/w2"));
    assert_refused(
        &d,
        &[
            "-o",
            &format!("{lo},upperdir={},workdir={}", d.p("l0/inner"), d.p("w")),
            &m,
        ],
        "overlaps lowerdir",
    );
    assert_refused(
        &d,
        &[
            "-o",
            &format!("{lo},upperdir={},workdir={}", d.p("u"), d.p("u/w2")),
            &m,
        ],
        "must not be inside each other",
    );
    assert_refused(&d, &["-o", &lo, &d.p("l1")], "is inside layer");
    assert_refused(&d, &["-o", &lo, &d.p("nomount")], "mountpoint");
    // An upper already served by a live mount.
    let first = try_mount_layerfs(&d.opts(), &d.base.join("m")).unwrap();
    mkdir(&d.base.join("w3"));
    mkdir(&d.base.join("m2"));
    let out = run(&[
        "-o",
        &format!("{lo},upperdir={},workdir={}", d.p("u"), d.p("w3")),
        &d.p("m2"),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another layerfs mount"));
    drop(first);
}

#[test]
fn unreadable_layer_is_named_for_an_unprivileged_user() {
    require_root!();
    let d = Dirs::new();
    chmod(&d.base, 0o755);
    chmod(&d.base.join("l1"), 0o700);
    let out = Command::new("setpriv")
        .args(["--reuid=1000", "--regid=1000", "--clear-groups"])
        .arg(layerfs_bin())
        .args([
            "-o",
            &format!("lowerdir={}:{}", d.p("l0"), d.p("l1")),
            &d.p("m"),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&d.p("l1")) && err.contains("permission denied"),
        "{err}"
    );
}

#[test]
fn workdir_on_another_filesystem_and_upper_without_xattrs() {
    require_root!();
    let d = Dirs::new();
    // Private mount namespace: the tmpfs and ramfs never reach the host.
    // ramfs has no xattrs at all: the upper then takes the OCI format
    // (`.wh.` markers), which the warning says kernel overlayfs cannot read.
    let script = format!(
        "mount -t tmpfs none {tmpfs} && mkdir {tmpfs}/w && \
         {bin} -o lowerdir={l0},upperdir={u},workdir={tmpfs}/w {m}; echo rc=$?; \
         mount -t ramfs none {ramfs} && mkdir {ramfs}/u {ramfs}/w && \
         {bin} -o lowerdir={l0},upperdir={ramfs}/u,workdir={ramfs}/w {m}; echo rc=$?; \
         rm {m}/top && ls -a {ramfs}/u && ls -a {m} && umount {m}",
        tmpfs = d.p("tmpfs"),
        ramfs = d.p("ramfs"),
        bin = layerfs_bin(),
        l0 = d.p("l0"),
        u = d.p("u"),
        m = d.p("m"),
    );
    mkdir(&d.base.join("tmpfs"));
    mkdir(&d.base.join("ramfs"));
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(
        text.contains("is on another filesystem than upperdir"),
        "{text}"
    );
    assert!(
        text.contains("kernel overlayfs cannot mount this upper"),
        "{text}"
    );
    assert_eq!(text.matches("rc=1").count(), 1, "{text}");
    assert_eq!(text.matches("rc=0").count(), 1, "{text}");
    // The deletion left an OCI whiteout, and the name is gone.
    assert!(text.contains(".wh.top"), "{text}");
    assert!(!text.lines().any(|l| l == "top"), "{text}");
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Layer paths may hold every character a path can: the option string
/// escapes `,` (the option separator), `:` (the lowerdir separator), `\\`
/// and a trailing space, as kernel overlayfs reads them.
#[test]
fn layer_paths_with_commas_backslashes_colons_and_spaces() {
    require_root!();
    let t = tmp();
    let b = t.path();
    let lowers = [b.join("a,b"), b.join("c\\d"), b.join("e:f")].to_vec();
    for (i, l) in lowers.iter().enumerate() {
        write(&l.join(format!("f{i}")), format!("lower {i}").as_bytes());
    }
    write(&b.join("c\\d/shadowed"), b"below");
    write(&b.join("a,b/shadowed"), b"above");
    let (upper, work) = (b.join("up,per\\"), b.join("work "));
    mkdir(&upper);
    mkdir(&work);
    let m = try_mount_layerfs(&stack_opts(&lowers, &upper, &work), &b.join("m")).unwrap();
    for i in 0..3 {
        let got = fs::read(m.path(&format!("f{i}"))).unwrap();
        assert_eq!(got, format!("lower {i}").as_bytes());
    }
    assert_eq!(fs::read(m.path("shadowed")).unwrap(), b"above");
    fs::write(m.path("new"), b"n").unwrap();
    drop(m);
    assert_eq!(fs::read(upper.join("new")).unwrap(), b"n");
}

#[test]
fn signals_unmount_and_exit_zero() {
    require_root!();
    for sig in ["TERM", "INT", "HUP"] {
        let d = Dirs::new();
        let mnt = d.base.join("m");
        let mut child = Command::new(layerfs_bin())
            .args(["-f", "-o", &d.opts()])
            .arg(&mnt)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let guard = Mounted { dir: mnt.clone() };
        wait_until("the mount", || is_mounted(&mnt));
        assert_eq!(fs::read(mnt.join("top")).unwrap(), b"top");
        Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status()
            .unwrap();
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "SIG{sig} must end with status 0: {status:?}"
        );
        assert!(!is_mounted(&mnt), "SIG{sig} must unmount");
        drop(guard);
    }
}

#[test]
fn umount_ends_the_daemon_and_a_dead_daemon_is_cleaned_up() {
    require_root!();
    let d = Dirs::new();
    let mnt = d.base.join("m");
    let mut m = try_mount_layerfs(&d.opts(), &mnt).unwrap();
    let pid = daemon_pid(&mnt).expect("daemon");
    m.unmount();
    wait_until("the daemon to exit", || {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z ") || s.contains(") X "))
            .unwrap_or(true)
    });
    // Kill the next daemon outright: the next mount must work anyway.
    let _m = try_mount_layerfs(&d.opts(), &mnt).unwrap();
    fs::write(mnt.join("new"), b"n").unwrap();
    let pid = daemon_pid(&mnt).expect("daemon");
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    wait_until("the daemon to die", || {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z ") || s.contains(") X "))
            .unwrap_or(true)
    });
    let again = try_mount_layerfs(&d.opts(), &mnt).unwrap();
    assert_eq!(fs::read(again.path("new")).unwrap(), b"n");
    assert_eq!(fs::read_dir(d.base.join("w/work")).unwrap().count(), 0);
}

#[test]
fn source_form_names_the_mount() {
    require_root!();
    let d = Dirs::new();
    let mnt = d.base.join("m");
    let out = Command::new(layerfs_bin())
        .arg("my-image")
        .arg(&mnt)
        .args(["-o", &d.opts()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _g = Mounted { dir: mnt.clone() };
    let c = mnt.canonicalize().unwrap();
    let line = mounts()
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(c.to_str().unwrap()))
        .unwrap()
        .to_string();
    assert!(
        line.starts_with("my-image ") && line.contains(" fuse.layerfs "),
        "{line}"
    );
    assert!(
        line.contains("allow_other") && !line.contains("nosuid"),
        "root defaults: {line}"
    );
}

#[test]
fn containers_storage_style_invocation() {
    require_root!();
    let d = Dirs::new();
    // containers-storage: cwd is the overlay dir, lowers are relative
    // symlinks l/ID -> ../ID/diff, options may hold empty items.
    for id in ["A", "B"] {
        mkdir(&d.base.join(format!("{id}/diff")));
        symlink(format!("../{id}/diff"), d.base.join("l").join(id)).unwrap_or_else(|_| {
            mkdir(&d.base.join("l"));
            symlink(format!("../{id}/diff"), d.base.join("l").join(id)).unwrap();
        });
    }
    write(&d.base.join("A/diff/from-a"), b"a");
    write(&d.base.join("B/diff/from-b"), b"b");
    let mnt = d.base.join("m");
    let out = Command::new(layerfs_bin())
        .current_dir(&d.base)
        .args(["-o", "lowerdir=l/A:l/B,,ro,"])
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = Mounted { dir: mnt.clone() };
    assert_eq!(fs::read(m.path("from-a")).unwrap(), b"a");
    assert_eq!(fs::read(m.path("from-b")).unwrap(), b"b");
    drop(m);
    let out = Command::new(layerfs_bin())
        .current_dir(&d.base)
        .args([
            "-o",
            &format!(
                "lowerdir=l/A:l/B,upperdir={},workdir={},,volatile",
                d.p("u"),
                d.p("w")
            ),
        ])
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = Mounted { dir: mnt.clone() };
    fs::write(m.path("c"), b"c").unwrap();
    assert_eq!(fs::read(d.base.join("u/c")).unwrap(), b"c");
}

/// mount(8) runs mount.fuse3 with a cleared PATH, which finds `layerfs`
/// only in system directories: a private mount namespace bind-mounts a
/// directory holding the binary over /usr/local/bin, so the host is never
/// touched.
fn in_private_ns_with_layerfs_installed(d: &Dirs, script: &str) -> String {
    let bindir = d.base.join("bin");
    mkdir(&bindir);
    fs::copy(layerfs_bin(), bindir.join("layerfs")).unwrap();
    let full = format!(
        "set -e; mount --make-rprivate /; mount --bind {} /usr/local/bin; {script}",
        bindir.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &full])
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "script failed:\n{text}");
    text
}

#[test]
fn mount_8_with_type_fuse_layerfs() {
    require_root!();
    if !Path::new("/sbin/mount.fuse3").exists() && !Path::new("/usr/sbin/mount.fuse3").exists() {
        panic!("mount.fuse3 is missing: install fuse3");
    }
    let d = Dirs::new();
    let m = d.p("m");
    let script = format!(
        "mount -t fuse.layerfs layerfs {m} -o {opts}; grep ' {m} ' /proc/mounts; \
         cat {m}/top {m}/bottom; echo written > {m}/via-mount; umount {m}; \
         if grep -q ' {m} ' /proc/mounts; then echo STILL-MOUNTED; fi",
        opts = d.opts()
    );
    let text = in_private_ns_with_layerfs_installed(&d, &script);
    assert!(text.contains("fuse.layerfs"), "{text}");
    assert!(text.contains("topbottom"), "{text}");
    assert!(!text.contains("STILL-MOUNTED"), "{text}");
    assert_eq!(fs::read(d.base.join("u/via-mount")).unwrap(), b"written\n");
}

#[test]
fn fstab_line_mounts_with_mount_dash_t_fstab() {
    require_root!();
    let d = Dirs::new();
    let m = d.p("m");
    let fstab = d.base.join("fstab");
    fs::write(
        &fstab,
        format!(
            "# test fstab\nlayerfs {m} fuse.layerfs {},nofail,x-test.opt 0 0\n",
            d.opts()
        ),
    )
    .unwrap();
    let script = format!(
        "mount -T {fstab} {m}; grep ' {m} ' /proc/mounts; ls {m}; touch {m}/from-fstab; umount {m}",
        fstab = fstab.display()
    );
    let text = in_private_ns_with_layerfs_installed(&d, &script);
    assert!(
        text.contains("fuse.layerfs") && text.contains("top"),
        "{text}"
    );
    assert!(d.base.join("u/from-fstab").exists());
}
