//! The `layerfs` command: fuse-overlayfs compatible command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};

use layerfs::mount::{self, MountRequest};
use layerfs::options::MountOptions;

/// What `--help` says before the options: the arguments, in words.
const ARGUMENTS: &str = "\
Arguments:
  MOUNTPOINT  the directory the merged tree is mounted on
  SOURCE      optional; only names the mount in /proc/mounts (default
              \"layerfs\"). mount(8) passes it before MOUNTPOINT.";

/// What `--help` says after the options.
const AFTER_HELP: &str = "\
Mount options (-o, comma-separated):
  lowerdir=DIR[:DIR...]  lower layers, top first (in a path, \\ escapes the
                         next character: \\: \\, \\\\)
  upperdir=DIR           writable layer (needs workdir)
  workdir=DIR            empty dir on the upper's filesystem
  timeout=SECONDS        kernel entry/attribute cache time (default 86400)
  threaded=0, threads=N  one or N worker threads
  fsync=0, volatile      skip fsync on the upper layer
  metacopy=on            chmod/chown/xattr changes copy metadata only
  passthrough=off        no FUSE passthrough (on by default as root)
  writeback=0            no kernel writeback cache (on where passthrough
                         is not used: rootless, passthrough=off)
  userxattr              user.overlay.* xattrs (the default without root);
                         no directory redirects, as in the kernel
  redirect_dir=on|follow|nofollow|off
                         directory renames write redirects (on, default)
                         or fail with EXDEV; nofollow also refuses them
  uidmapping=C:H:N[:C:H:N...], gidmapping=...
                         show ids stored as C..C+N-1 as H..H+N-1
                         (containers-storage's id shifting)
  squash_to_uid=ID, squash_to_gid=ID, squash_to_root
                         show every file with this owner
  logfile=PATH           log here instead of syslog once mounted
  control=PATH           a control socket for live snapshots (rotations
                         of the upper); implies passthrough=off
  capacity=BYTES         most the upper may hold (ENOSPC past it; df shows
                         it); implies passthrough=off, writeback=0
  capacity_used=BYTES    counted against capacity= besides the upper
  ro, allow_other, allow_root, auto_unmount, dev, nodev, suid, nosuid,
  exec, noexec, atime, noatime, sync, async, dirsync, fsname=NAME,
  subtype=NAME, debug, default_permissions (always on)
  Accepted and ignored: rw, defaults, relatime, auto, noauto, user, users,
  nofail, _netdev, x-*, max_read, blksize, context, static_nlink, noacl,
  xattr_permissions, fast_ino, noxattrs, index, xino, ino32_t,
  and the like.

Examples:
  layerfs -o lowerdir=/l1:/l2,upperdir=/u,workdir=/w /merged
  layerfs -o lowerdir=/image/top:/image/base /mnt      (read-only)
  mount -t fuse.layerfs layerfs /merged -o lowerdir=...,upperdir=...,workdir=...
  umount /merged

The whole manual: layerfs --man | man -l -";

/// Mounts a stack of read-only lower directories under an optional writable
/// upper directory, with the semantics of Linux kernel overlayfs.
#[derive(Parser, Debug)]
#[command(
    name = "layerfs",
    version,
    about,
    // The positional arguments are described in ARGUMENTS: clap cannot
    // show an optional SOURCE before a required MOUNTPOINT.
    override_usage = "layerfs [-f] [-d] [-o OPTIONS]... [SOURCE] MOUNTPOINT\n       layerfs --man",
    help_template = "{about-with-newline}\n{usage-heading} {usage}\n\n{before-help}{all-args}{after-help}",
    before_help = ARGUMENTS,
    after_help = AFTER_HELP
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
    /// Print the layerfs(8) manual page (roff) and exit.
    #[arg(long)]
    man: bool,
    /// Print the completion script for SHELL (bash, zsh, fish) and exit
    /// (for packaging).
    #[arg(long, value_name = "SHELL", hide = true)]
    completions: Option<clap_complete::Shell>,
    /// [SOURCE] MOUNTPOINT; counted in `main`, so that a mistake is
    /// reported in the words of the usage line.
    #[arg(hide = true)]
    paths: Vec<PathBuf>,
}

/// The manual page, a roff source kept in `doc/layerfs.8`.
fn man_page() -> String {
    include_str!("../doc/layerfs.8").replace("@VERSION@", env!("CARGO_PKG_VERSION"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.man {
        print!("{}", man_page());
        return ExitCode::SUCCESS;
    }
    if let Some(shell) = cli.completions {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "layerfs",
            &mut std::io::stdout(),
        );
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
        [] => Cli::command()
            .error(ErrorKind::MissingRequiredArgument, "no MOUNTPOINT given")
            .exit(),
        [_, _, extra, ..] => Cli::command()
            .error(
                ErrorKind::TooManyValues,
                format!(
                    "unexpected argument '{}': expected [SOURCE] MOUNTPOINT",
                    extra.display()
                ),
            )
            .exit(),
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
