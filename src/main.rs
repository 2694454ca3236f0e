//! The `layerfs` command: fuse-overlayfs compatible command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use layerfs::mount::{self, MountRequest};
use layerfs::options::MountOptions;

/// Mounts a stack of read-only lower directories under an optional writable
/// upper directory, with the semantics of Linux kernel overlayfs.
#[derive(Parser, Debug)]
#[command(
    name = "layerfs",
    version,
    about,
    after_help = "Examples:\n  layerfs -o lowerdir=/l1:/l2,upperdir=/u,workdir=/w /merged\n  layerfs -o lowerdir=/image/top:/image/base /mnt      (read-only)\n  mount -t fuse.layerfs layerfs /merged -o lowerdir=...,upperdir=...,workdir=...\n\nMount options (-o, comma-separated):\n  lowerdir=DIR[:DIR...]  lower layers, top first (\\: escapes a colon)\n  upperdir=DIR           writable layer (needs workdir)\n  workdir=DIR            empty dir on the upper's filesystem\n  timeout=SECONDS        kernel entry/attribute cache time (default 86400)\n  threaded=0|1, threads=N  worker threads\n  fsync=0, volatile      skip fsync on the upper layer\n  metacopy=on            chmod/chown/xattr changes copy metadata only\n  passthrough=off        no FUSE passthrough (on by default as root)\n  uidmapping=C:H:N[:C:H:N...], gidmapping=...  show ids stored as C..C+N\n                         as H..H+N (containers-storage's id shifting)\n  squash_to_uid=ID, squash_to_gid=ID, squash_to_root  show every file\n                         with this owner\n  userxattr              user.overlay.* xattrs (the default without root);\n                         no directory redirects, as in the kernel\n  ro, allow_other, allow_root, default_permissions, auto_unmount,\n  dev, nodev, suid, nosuid, exec, noexec, atime, noatime, sync, dirsync,\n  fsname=NAME, subtype=NAME, logfile=PATH\n  Accepted for compatibility: rw, defaults, relatime, auto, noauto, user,\n  users, nofail, _netdev, x-*, static_nlink, noacl, xattr_permissions,\n  fast_ino, writeback, noxattrs, redirect_dir, index, xino, ino32_t, context, max_read,\n  blksize."
)]
struct Cli {
    /// Mount options, comma-separated; may be repeated.
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Stay in the foreground (for systemd units and debugging).
    #[arg(short = 'f')]
    foreground: bool,
    /// Debug logging; implies -f.
    #[arg(short = 'd')]
    debug: bool,
    /// Print the layerfs(1) manual page (roff) and exit.
    #[arg(long, hide = true)]
    man: bool,
    /// [SOURCE] MOUNTPOINT: SOURCE, as mount(8) passes it, only names the
    /// mount in /proc/mounts.
    #[arg(value_name = "MOUNTPOINT", num_args = 1..=2, required_unless_present = "man")]
    paths: Vec<PathBuf>,
}

/// Escapes text for roff.
fn roff(s: &str) -> String {
    s.replace('\\', "\\e")
        .replace('-', "\\-")
        .lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The manual page, generated from the same definitions as --help.
fn man_page() -> String {
    let cmd = Cli::command();
    let mut out = String::new();
    out.push_str(&format!(
        ".TH LAYERFS 1 \"\" \"layerfs {}\" \"User Commands\"\n",
        env!("CARGO_PKG_VERSION")
    ));
    out.push_str(".SH NAME\nlayerfs \\- ");
    out.push_str(&roff(
        &cmd.get_about().map(|a| a.to_string()).unwrap_or_default(),
    ));
    out.push_str("\n.SH SYNOPSIS\n\\fBlayerfs\\fR [\\fB\\-f\\fR] [\\fB\\-d\\fR] [\\fB\\-o\\fR \\fIOPTIONS\\fR] [\\fISOURCE\\fR] \\fIMOUNTPOINT\\fR\n");
    out.push_str(".SH OPTIONS\n");
    for arg in cmd.get_arguments() {
        if arg.is_hide_set() || arg.get_id() == "paths" {
            continue;
        }
        let mut flag = String::new();
        if let Some(s) = arg.get_short() {
            flag.push_str(&format!("\\fB\\-{s}\\fR"));
        }
        if let Some(l) = arg.get_long() {
            if !flag.is_empty() {
                flag.push_str(", ");
            }
            flag.push_str(&format!("\\fB\\-\\-{}\\fR", roff(l)));
        }
        if let Some(v) = arg.get_value_names().and_then(|v| v.first()) {
            if arg.get_action().takes_values() {
                flag.push_str(&format!(" \\fI{v}\\fR"));
            }
        }
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        out.push_str(&format!(".TP\n{flag}\n{}\n", roff(&help)));
    }
    if let Some(after) = cmd.get_after_help() {
        out.push_str(".SH MOUNT OPTIONS AND EXAMPLES\n.nf\n");
        out.push_str(&roff(&after.to_string()));
        out.push_str("\n.fi\n");
    }
    out.push_str(".SH SEE ALSO\n\\fBmount\\fR(8), \\fBmount.fuse3\\fR(8), \\fBfusermount3\\fR(1), \\fBfuse-overlayfs\\fR(1)\n");
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.man {
        print!("{}", man_page());
        return ExitCode::SUCCESS;
    }
    let options = match MountOptions::parse(&cli.options) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("layerfs: {e}");
            return ExitCode::from(1);
        }
    };
    let debug = cli.debug || options.debug;
    // Records follow the daemon: stderr now, syslog or the log file once
    // it has detached.
    layerfs::logging::init(debug);
    let (source, mountpoint) = match cli.paths.as_slice() {
        [m] => (None, m.clone()),
        [s, m] => (Some(s.to_string_lossy().into_owned()), m.clone()),
        _ => unreachable!("clap enforces one or two paths"),
    };
    let req = MountRequest {
        source,
        mountpoint,
        options,
        foreground: cli.foreground || debug,
    };
    match mount::run(req) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("layerfs: {e}");
            ExitCode::from(1)
        }
    }
}
