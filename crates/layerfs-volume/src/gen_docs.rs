//! The manual pages (section 8, one per command) and the shell
//! completions, from the command line's own definition, so they cannot
//! drift from `--help`. Run by the package build (`generate-docs DIR`).

use std::fs;
use std::io;
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// Writes `DIR/man8/layerfs-volume*.8` and
/// `DIR/completions/{bash,zsh,fish}/` files named as each shell looks
/// them up.
pub fn write_all(dir: &Path) -> io::Result<()> {
    // `help` is for the terminal: no page or completion of its own.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let man = dir.join("man8");
    fs::create_dir_all(&man)?;
    write_pages(&cmd, &man)?;
    let mut offered = without_hidden(&Cli::command());
    for (shell, sub) in [
        (Shell::Bash, "bash"),
        (Shell::Zsh, "zsh"),
        (Shell::Fish, "fish"),
    ] {
        let out = dir.join("completions").join(sub);
        fs::create_dir_all(&out)?;
        clap_complete::generate_to(shell, &mut offered, "layerfs-volume", &out)?;
    }
    Ok(())
}

/// A page for `cmd`, then one for each visible subcommand
/// (`layerfs-volume-create.8`, ...).
fn write_pages(cmd: &clap::Command, dir: &Path) -> io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir)?;
    }
    clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration")
        .source(concat!("layerfs ", env!("CARGO_PKG_VERSION")))
        .generate_to(dir)
        .map(|_| ())
}

/// `cmd` as a completion offers it: clap_complete would offer hidden
/// commands (`generate-docs`) too.
fn without_hidden(cmd: &clap::Command) -> clap::Command {
    clap::Command::new("layerfs-volume")
        .version(env!("CARGO_PKG_VERSION"))
        .args(cmd.get_arguments().filter(|a| !a.is_hide_set()).cloned())
        .subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
        .disable_help_subcommand(true)
}
