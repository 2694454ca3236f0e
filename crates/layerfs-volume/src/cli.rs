//! The `layerfs-volume` command line.

use std::fs;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::backup;
use crate::config::{Config, DEFAULT_LABEL};
use crate::options::CreateOptions;
use crate::plugin;
use crate::store::{err, rfc3339, Store};
use crate::stores::{open_store, StoreSet};
use crate::volumes::Volumes;

/// Persistent copy-on-write volumes as layerfs layer stacks, with
/// snapshots, clones, incremental export and the Docker volume plugin API.
#[derive(Parser, Debug)]
#[command(
    name = "layerfs-volume",
    version,
    after_long_help = "Volumes are mounted with layerfs(8), which must be installed beside \
        this binary. As a service: the systemd units layerfs-volume.socket and \
        layerfs-volume.service. Each command has a page of its own: \
        layerfs-volume-create(8), layerfs-volume-export(8) and so on."
)]
pub struct Cli {
    /// The volume store: a path, or a label of the configuration file
    /// ($LAYERFS_VOLUME_CONFIG, else /etc/layerfs/volumes.toml). Default:
    /// the file's `default` store, else /var/lib/layerfs/volumes as root,
    /// else $XDG_DATA_HOME/layerfs/volumes. `serve` takes several, as
    /// LABEL=PATH (a plain path is labelled `default`), or serves the
    /// file's stores.
    #[arg(long, global = true, value_name = "LABEL|PATH|LABEL=PATH")]
    pub store: Vec<String>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create a volume: empty, seeded from directories (top first; not
    /// copied), or cloned from VOLUME@SNAPSHOT.
    Create {
        /// The new volume's name: letters, digits, '_', '.', '-'.
        name: String,
        /// A seed directory, used in place as a read-only lower layer
        /// (repeat for several, top first), or VOLUME@SNAP alone to clone
        /// that snapshot. Through Docker's `-o from=` several seeds are one
        /// colon-separated list (`from=/a:/b`) instead.
        #[arg(long = "from", value_name = "DIR|VOLUME@SNAP")]
        from: Vec<String>,
        /// The size limit, size=SIZE (K, M, G or T, binary: size=10G), and
        /// the root directory's owner and mode: uid=U, gid=G, mode=OCTAL
        /// (several at once, comma-separated; the store's defaults fill the
        /// rest).
        #[arg(short = 'o', long = "opt", value_name = "KEY=VALUE[,...]")]
        opts: Vec<String>,
    },
    /// List volumes.
    Ls,
    /// Show a volume as JSON.
    Inspect {
        /// The volume.
        name: String,
    },
    /// Change a volume's size limit, mounted or not (refused below what
    /// the volume uses: its changes and its snapshots).
    Resize {
        /// The volume.
        name: String,
        /// The new limit: a whole number and K, M, G or T (binary: 10G).
        size: String,
    },
    /// Remove a volume (refused while mounted or cloned from).
    Rm {
        /// The volume.
        name: String,
    },
    /// Make the current changes a read-only snapshot. On a mounted volume
    /// the containers keep running: their changes wait at most --timeout.
    Snapshot {
        /// The volume (mounted or not).
        name: String,
        /// The snapshot's name (default s1, s2, ...).
        id: Option<String>,
        /// Longest time, in milliseconds, a mounted volume's changes may
        /// be held; past it the snapshot fails and nothing changes.
        #[arg(long, value_name = "MS", default_value_t = 1000,
              value_parser = clap::value_parser!(u64).range(1..=60000))]
        timeout: u64,
    },
    /// List a volume's snapshots, oldest first.
    Snapshots {
        /// The volume.
        name: String,
    },
    /// Remove a snapshot, merging its changes into the layer above.
    SnapshotRm {
        /// The volume.
        name: String,
        /// The snapshot.
        id: String,
    },
    /// Create a volume from another's snapshot, sharing its layers.
    Clone {
        /// The snapshot to start from, as VOLUME@SNAP.
        #[arg(value_name = "VOLUME@SNAP")]
        source: String,
        /// The new volume's name.
        name: String,
    },
    /// Merge all snapshots of a volume into one layer.
    Compact {
        /// The volume.
        name: String,
    },
    /// Write the volume as an OCI layer tar (to stdout without -o; refused
    /// when stdout is a terminal).
    Export {
        /// The volume (mounted or not).
        name: String,
        /// Only what changed since this snapshot.
        #[arg(long, value_name = "SNAP")]
        since: Option<String>,
        /// The volume as it was at this snapshot (default: as it is now;
        /// for a mounted volume, its newest snapshot).
        #[arg(long, value_name = "SNAP")]
        to: Option<String>,
        /// The tar file to write (written beside as FILE.partial, renamed
        /// when complete).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Build a volume from layer tars, full first then increments.
    Import {
        /// The new volume's name.
        name: String,
        /// The layer tars, in order: a full export, then the increments
        /// (`export --since`); each becomes a snapshot.
        #[arg(required = true, value_name = "TAR")]
        tars: Vec<PathBuf>,
    },
    /// Back a volume up into DIR: a snapshot, and what changed since the
    /// last backup as a layer tar listed in DIR's manifest.
    Backup {
        name: String,
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Merge away the volume's snapshots older than the last N backups.
        #[arg(long, value_name = "N")]
        keep: Option<usize>,
    },
    /// Build a volume from a backup directory, up to a snapshot (the
    /// newest without --at), checking every tar against the manifest.
    Restore {
        dir: PathBuf,
        name: String,
        #[arg(long, value_name = "SNAP")]
        at: Option<String>,
    },
    /// Mount a volume (prints the mountpoint).
    Mount {
        /// The volume.
        name: String,
    },
    /// Unmount a volume mounted with `mount`.
    Umount {
        /// The volume.
        name: String,
    },
    /// Serve the Docker volume plugin API on a unix socket.
    Serve {
        /// The socket to listen on, unless systemd passed one (socket
        /// activation).
        #[arg(long, default_value = plugin::DEFAULT_SOCKET, value_name = "PATH")]
        socket: PathBuf,
    },
    /// Write the manual pages and shell completions (for packaging).
    #[command(hide = true)]
    GenerateDocs {
        /// Gets man8/ and completions/{bash,zsh,fish}/.
        dir: PathBuf,
    },
}

impl Cmd {
    /// Commands that only read (or need no store): they do not create a
    /// missing store.
    fn reads_only(&self) -> bool {
        matches!(
            self,
            Cmd::Ls
                | Cmd::Inspect { .. }
                | Cmd::Snapshots { .. }
                | Cmd::Export { .. }
                | Cmd::GenerateDocs { .. }
        )
    }
}

pub fn run(cli: Cli) -> io::Result<()> {
    let config = Config::load()?;
    let cmd = match cli.cmd {
        Cmd::Serve { socket } => {
            let set = StoreSet::open(&config.serve_stores(&cli.store)?);
            return plugin::serve(&set, &socket);
        }
        cmd => cmd,
    };
    let spec = config.one_store(&cli.store)?;
    let store = if cmd.reads_only() && !spec.path.exists() && spec.label == DEFAULT_LABEL {
        // Nothing to read; every volume is missing. A first `ls` leaves
        // the host as it was (a missing labelled store is an error: see
        // `open_store`).
        Store {
            root: spec.path.clone(),
        }
    } else {
        open_store(&spec)?
    };
    let vols = Volumes::new(store);
    let mut out = io::stdout().lock();
    match cmd {
        Cmd::Create { name, from, opts } => {
            let (bases, seeds): (Vec<String>, Vec<String>) = from
                .into_iter()
                .partition(|f| crate::store::is_base_spec(f));
            if bases.len() > 1 || (!bases.is_empty() && !seeds.is_empty()) {
                return Err(crate::store::err(
                    "--from VOLUME@SNAP is given alone, not with directories",
                ));
            }
            let mut opts = CreateOptions::from_cli(&opts)?;
            opts.seeds = seeds.into_iter().map(PathBuf::from).collect();
            opts.base = bases.into_iter().next();
            // The file's other stores are asked too, so that a name stays
            // in one store.
            let set = StoreSet::for_cli(&spec, &config.stores)?;
            set.create(&set.stores[0], &name, &opts)?;
            writeln!(out, "{name}")
        }
        Cmd::Ls if !vols.store.root.exists() => Ok(()),
        Cmd::Ls => {
            for name in vols.store.list()? {
                writeln!(out, "{name}")?;
            }
            Ok(())
        }
        Cmd::Inspect { name } => {
            let v = vols.inspect(&name)?;
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)
        }
        Cmd::Resize { name, size } => {
            vols.resize(&name, crate::options::parse_size("size", &size)?)
        }
        Cmd::Rm { name } => vols.remove(&name),
        Cmd::Snapshot { name, id, timeout } => {
            let timeout = std::time::Duration::from_millis(timeout);
            let id = vols.snapshot_within(&name, id.as_deref(), timeout)?;
            writeln!(out, "{id}")
        }
        Cmd::Snapshots { name } => {
            for s in vols.store.load(&name)?.snapshots {
                writeln!(out, "{}\t{}", s.id, rfc3339(s.created))?;
            }
            Ok(())
        }
        Cmd::SnapshotRm { name, id } => vols.snapshot_remove(&name, &id),
        Cmd::Clone { source, name } => {
            let set = StoreSet::for_cli(&spec, &config.stores)?;
            set.refuse_taken(&set.stores[0], &name)?;
            vols.clone_volume(&source, &name)?;
            writeln!(out, "{name}")
        }
        Cmd::Compact { name } => vols.compact(&name),
        Cmd::Export {
            name,
            since,
            to,
            output,
        } => {
            // A missing volume (or store) is said before any file is made.
            vols.store.load(&name)?;
            let range = (since.as_deref(), to.as_deref());
            export(&vols, &name, range, output.as_deref(), &mut out)
        }
        Cmd::Import { name, tars } => {
            let set = StoreSet::for_cli(&spec, &config.stores)?;
            set.refuse_taken(&set.stores[0], &name)?;
            vols.import(&name, &tars)?;
            writeln!(out, "{name}")
        }
        Cmd::Backup { name, to, keep } => {
            let e = backup::backup(&vols, &name, &to, keep)?;
            writeln!(out, "{}\t{}", e.snapshot, e.file)
        }
        Cmd::Restore { dir, name, at } => {
            backup::restore(&vols, &dir, &name, at.as_deref())?;
            writeln!(out, "{name}")
        }
        Cmd::Mount { name } => {
            let mp = vols.mount(&name, "cli")?;
            writeln!(out, "{}", mp.display())
        }
        Cmd::Umount { name } => vols.unmount(&name, "cli"),
        Cmd::GenerateDocs { dir } => crate::gen_docs::write_all(&dir),
        // Served above, before a single store was opened.
        Cmd::Serve { .. } => Ok(()),
    }
}

/// `export`: to FILE, or to stdout unless it is a terminal.
fn export(
    vols: &Volumes,
    name: &str,
    (since, to): (Option<&str>, Option<&str>),
    output: Option<&Path>,
    out: &mut io::StdoutLock<'_>,
) -> io::Result<()> {
    let Some(path) = output else {
        // As tar does: binary on a terminal is of use to no one.
        if out.is_terminal() {
            return Err(err(
                "refusing to write a tar to a terminal: give -o FILE or redirect stdout",
            ));
        }
        return vols.export_range(name, since, to, out);
    };
    // Written beside, renamed when complete: a failed export leaves no
    // truncated backup under the name asked for.
    let tmp = path.with_extension("partial");
    let made = (|| {
        let f = fs::File::create(&tmp)
            .map_err(|e| err(format!("cannot write {}: {e}", path.display())))?;
        let mut f = io::BufWriter::new(f);
        vols.export_range(name, since, to, &mut f)?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if made.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    made
}
