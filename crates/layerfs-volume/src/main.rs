//! `layerfs-volume`: persistent copy-on-write volumes built as layerfs
//! layer stacks, and the Docker volume plugin. A separate binary so that
//! nothing here can be mistaken for the mount command line
//! (`layerfs [SOURCE] MOUNTPOINT -o OPTS`) that mount(8) calls, and a
//! crate of its own so that its JSON, tar and HTTP crates stay out of the
//! filesystem's: it uses only the `layerfs` library's public API, and
//! mounts by running the `layerfs` binary.

use std::process::ExitCode;

use clap::Parser;

mod backup;
mod cli;
mod config;
mod export;
mod gen_docs;
mod import;
mod limits;
mod live;
mod mounts;
mod options;
mod plugin;
mod progress;
mod store;
mod stores;
mod swap;
mod volumes;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .init();
    // The crash tests' points (`LAYERFS_CRASH_AT`) count in this process
    // too (`compact-taken`); without the variable none does anything.
    layerfs::sys::crashpoint::arm();
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`inspect | head`): what it wanted, it has.
        // Quiet, with the status a shell gives a command SIGPIPE ended.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::from(141),
        Err(e) => {
            eprintln!("layerfs-volume: {e}");
            ExitCode::FAILURE
        }
    }
}
