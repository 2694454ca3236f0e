//! The `layerfs-volume` command line.

use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::options::CreateOptions;
use crate::plugin;
use crate::store::rfc3339;
use crate::stores::{open_store, StoreSet};
use crate::volumes::Volumes;

/// Persistent copy-on-write volumes as layerfs layer stacks, with
/// snapshots, clones, incremental export and the Docker volume plugin API.
#[derive(Parser, Debug)]
#[command(name = "layerfs-volume", version)]
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
        name: String,
        #[arg(long = "from", value_name = "DIR|VOLUME@SNAP")]
        from: Vec<String>,
        /// The root directory's owner and mode: uid=U, gid=G, mode=OCTAL
        /// (several at once, comma-separated; the store's defaults fill the
        /// rest).
        #[arg(short = 'o', long = "opt", value_name = "KEY=VALUE[,...]")]
        opts: Vec<String>,
    },
    /// List volumes.
    Ls,
    /// Show a volume as JSON.
    Inspect { name: String },
    /// Remove a volume (refused while mounted or cloned from).
    Rm { name: String },
    /// Make the current changes a read-only snapshot.
    Snapshot { name: String, id: Option<String> },
    /// List a volume's snapshots, oldest first.
    Snapshots { name: String },
    /// Remove a snapshot, merging its changes into the layer above.
    SnapshotRm { name: String, id: String },
    /// Create a volume from another's snapshot, sharing its layers.
    Clone { source: String, name: String },
    /// Merge all snapshots of a volume into one layer.
    Compact { name: String },
    /// Write the volume as an OCI layer tar (to stdout without -o).
    Export {
        name: String,
        /// Only what changed since this snapshot.
        #[arg(long)]
        since: Option<String>,
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Build a volume from layer tars, full first then increments.
    Import {
        name: String,
        #[arg(required = true)]
        tars: Vec<PathBuf>,
    },
    /// Mount a volume (prints the mountpoint).
    Mount { name: String },
    /// Unmount a volume mounted with `mount`.
    Umount { name: String },
    /// Serve the Docker volume plugin API on a unix socket.
    Serve {
        #[arg(long, default_value = plugin::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
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
    let vols = Volumes::new(open_store(&spec)?);
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
        Cmd::Rm { name } => vols.remove(&name),
        Cmd::Snapshot { name, id } => {
            let id = vols.snapshot(&name, id.as_deref())?;
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
            output,
        } => match output {
            Some(path) => {
                // Written beside, renamed when complete: a failed export
                // leaves no truncated backup under the name asked for.
                let tmp = path.with_extension("partial");
                let made = (|| {
                    let mut f = io::BufWriter::new(fs::File::create(&tmp)?);
                    vols.export(&name, since.as_deref(), &mut f)?;
                    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                    fs::rename(&tmp, &path)
                })();
                if made.is_err() {
                    let _ = fs::remove_file(&tmp);
                }
                made
            }
            None => vols.export(&name, since.as_deref(), &mut out),
        },
        Cmd::Import { name, tars } => {
            let set = StoreSet::for_cli(&spec, &config.stores)?;
            set.refuse_taken(&set.stores[0], &name)?;
            vols.import(&name, &tars)?;
            writeln!(out, "{name}")
        }
        Cmd::Mount { name } => {
            let mp = vols.mount(&name, "cli")?;
            writeln!(out, "{}", mp.display())
        }
        Cmd::Umount { name } => vols.unmount(&name, "cli"),
        // Served above, before a single store was opened.
        Cmd::Serve { .. } => Ok(()),
    }
}
