//! The `layerfs` command: fuse-overlayfs compatible command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use layerfs::mount::{self, MountRequest};
use layerfs::options::MountOptions;

/// Mounts a stack of read-only lower directories under an optional writable
/// upper directory, with the semantics of Linux kernel overlayfs.
#[derive(Parser, Debug)]
#[command(
    name = "layerfs",
    version,
    about,
    after_help = "Examples:\n  layerfs -o lowerdir=/l1:/l2,upperdir=/u,workdir=/w /merged\n  layerfs -o lowerdir=/image/top:/image/base /mnt      (read-only)\n  mount -t fuse.layerfs layerfs /merged -o lowerdir=...,upperdir=...,workdir=...\n\nMount options (-o, comma-separated):\n  lowerdir=DIR[:DIR...]  lower layers, top first (\\: escapes a colon)\n  upperdir=DIR           writable layer (needs workdir)\n  workdir=DIR            empty dir on the upper's filesystem\n  timeout=SECONDS        kernel entry/attribute cache time (default 86400)\n  threaded=0|1, threads=N  worker threads\n  fsync=0, volatile      skip fsync on the upper layer\n  ro, allow_other, allow_root, default_permissions, auto_unmount,\n  dev, nodev, suid, nosuid, exec, noexec, atime, noatime, sync, dirsync,\n  fsname=NAME, subtype=NAME, logfile=PATH\n  Accepted for compatibility: rw, defaults, relatime, auto, noauto, user,\n  users, nofail, _netdev, x-*, uidmapping, gidmapping, squash_to_*,\n  static_nlink, noacl, xattr_permissions, fast_ino, writeback, noxattrs,\n  redirect_dir, index, metacopy, userxattr, xino, ino32_t, context, max_read,\n  blksize."
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
    /// [SOURCE] MOUNTPOINT: SOURCE, as mount(8) passes it, only names the
    /// mount in /proc/mounts.
    #[arg(value_name = "MOUNTPOINT", num_args = 1..=2, required = true)]
    paths: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let options = match MountOptions::parse(&cli.options) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("layerfs: {e}");
            return ExitCode::from(1);
        }
    };
    let debug = cli.debug || options.debug;
    let mut log =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(if debug {
            "debug"
        } else {
            "warn"
        }));
    log.init();
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
