//! `layerfs-volume`: persistent copy-on-write volumes built as layerfs
//! layer stacks, and the Docker volume plugin. A separate binary so that
//! nothing here can be mistaken for the mount command line
//! (`layerfs [SOURCE] MOUNTPOINT -o OPTS`) that mount(8) calls.

use std::process::ExitCode;

use clap::Parser;

#[path = "../volume/mod.rs"]
mod volume;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .init();
    let cli = volume::cli::Cli::parse();
    match volume::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("layerfs-volume: {e}");
            ExitCode::FAILURE
        }
    }
}
