//! Shared fixtures of the test files, one concern per module, all
//! re-exported here so a test file's `use common::*;` sees them:
//! - `skip`: the one rule deciding whether a test can run (`require!`);
//! - `mounts`: the binaries, mount guards that always unmount (even when
//!   the test panics), and stack option strings;
//! - `tree`: snapshots to compare a layerfs mount with kernel overlayfs;
//! - `layers`: building layers (random stacks, OCI twins);
//! - `engines`: OCI runtimes and podman;
//! - `fsguards`: scratch filesystems (tmpfs, loop devices) for an upper;
//! - `users`: an unprivileged user of a test's own, for rootless runs;
//! - `gluster`: a gluster cluster in network namespaces (used by name).
// Each test file is its own crate and uses a part of these.
#![allow(dead_code)]

pub mod gluster;

mod engines;
mod fsguards;
mod layers;
mod mounts;
mod skip;
mod tree;
mod users;

// A test file that uses nothing of one module would warn of its glob.
#[allow(unused_imports)]
pub use engines::*;
#[allow(unused_imports)]
pub use fsguards::*;
#[allow(unused_imports)]
pub use layers::*;
#[allow(unused_imports)]
pub use mounts::*;
#[allow(unused_imports)]
pub use skip::*;
#[allow(unused_imports)]
pub use tree::*;
#[allow(unused_imports)]
pub use users::*;

/// A temp dir for one test, named after its test file; kept for a look
/// after the run when `LAYERFS_KEEP_TEST_DIRS` is set.
pub fn tmp() -> tempfile::TempDir {
    let prefix = format!("lfs-{}-", env!("CARGO_CRATE_NAME"));
    let mut t = tempfile::Builder::new().prefix(&prefix).tempdir().unwrap();
    if std::env::var_os("LAYERFS_KEEP_TEST_DIRS").is_some() {
        t.disable_cleanup(true);
    }
    t
}

/// A command's stdout and stderr as one text, for messages and checks.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
