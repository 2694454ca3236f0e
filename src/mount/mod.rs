//! From validated options to a served mount, one concern per module:
//! the checks and the mount plan (`plan`), the session's settings and
//! mount(2) (`session`), the daemon's life: fork, serve, signals and stdio
//! (`daemon`), and the private copy of the upper's mount
//! (`private_upper`). `run` strings them together.

mod daemon;
mod plan;
mod private_upper;
mod session;

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::layers::LayerStack;
use crate::options::MountOptions;
use crate::sys;
use crate::workdir::WorkDir;

pub use plan::{plan, Plan};
pub use session::{fs_options, unmount};

use private_upper::PrivateUpper;

/// A start-up failure, worded for the person who typed the command; each
/// kind keeps what it is about, and a failed step the error of its syscall.
#[derive(Debug)]
pub enum MountError {
    /// Options missing, or not fitting together.
    Options(String),
    /// A directory given on the command line cannot serve.
    Dir {
        what: &'static str,
        path: PathBuf,
        problem: String,
    },
    /// Directories that must be apart overlap, or must share a filesystem
    /// and do not.
    Layout(String),
    /// The work dir cannot be used (held by another daemon, which is named;
    /// or not in a state to recover).
    WorkDir(String),
    /// A start-up step failed.
    Step { step: String, err: io::Error },
    /// The daemon failed before the mount was up, and said why.
    Daemon(String),
}

impl MountError {
    pub(super) fn dir(what: &'static str, path: &Path, problem: impl Into<String>) -> MountError {
        MountError::Dir {
            what,
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }

    pub(super) fn step(step: impl Into<String>) -> impl FnOnce(io::Error) -> MountError {
        let step = step.into();
        move |err| MountError::Step { step, err }
    }
}

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MountError::Options(m)
            | MountError::Layout(m)
            | MountError::WorkDir(m)
            | MountError::Daemon(m) => f.write_str(m),
            MountError::Dir {
                what,
                path,
                problem,
            } => write!(f, "{what} {}: {problem}", path.display()),
            MountError::Step { step, err } => write!(f, "{step}: {err}"),
        }
    }
}

impl std::error::Error for MountError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MountError::Step { err, .. } => Some(err),
            _ => None,
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone)]
pub struct MountRequest {
    /// Shown as the mount's source in /proc/mounts.
    pub source: Option<String>,
    pub mountpoint: PathBuf,
    pub options: MountOptions,
    pub foreground: bool,
}

/// Mounts and serves until unmounted. In the background mode the calling
/// process returns (exit status 0) only once the mount is up.
pub fn run(req: MountRequest) -> Result<(), MountError> {
    let plan = plan(&req)?;
    sys::tune_allocator();
    if let Err(e) = sys::raise_nofile_limit() {
        log::warn!("cannot raise the open-file limit: {e}");
    }
    // Kept open for the daemon's life: the copy must stay mounted for
    // lookups to cross into it (see `PrivateUpper`).
    let private = match (&plan.upper, &plan.work) {
        (Some(u), Some(w)) => PrivateUpper::new(u, w),
        _ => None,
    };
    let upper_open = private
        .as_ref()
        .map(|p| p.upper.as_path())
        .or(plan.upper.as_deref());
    let stack = LayerStack::open(upper_open, &plan.lowers)
        .map_err(MountError::step("cannot open the layers"))?;
    let fs_opts = fs_options(&req.options, |k| std::env::var_os(k));
    let work = match (&plan.work, &plan.upper, req.options.read_only) {
        (Some(w), Some(u), false) => {
            let (open_w, open_u) = match &private {
                Some(p) => (p.work.as_path(), p.upper.as_path()),
                None => (w.as_path(), u.as_path()),
            };
            Some(
                WorkDir::prepare_at(w, u, open_w, open_u, req.options.userxattr).map_err(|e| {
                    // Our own messages already name the directory.
                    if e.raw_os_error().is_some() {
                        MountError::dir("workdir", w, e.to_string())
                    } else {
                        MountError::WorkDir(e.to_string())
                    }
                })?,
            )
        }
        _ => None,
    };
    if let Some(w) = &work {
        if fs_opts.metacopy && w.xattr_ns() == crate::whiteout::XattrNs::User {
            // Kernel overlayfs refuses metacopy with userxattr too: anyone
            // could forge a user.overlay.metacopy pointing at other data.
            return Err(MountError::Options(
                "metacopy=on needs trusted.overlay.* xattrs (root, without userxattr)".into(),
            ));
        }
    }

    let mut notify = None;
    if !req.foreground {
        match daemon::fork()? {
            daemon::Side::Parent(sock) => return daemon::wait_for_child(sock),
            daemon::Side::Daemon(sock) => notify = Some(sock),
        }
    }
    let result = daemon::serve(&req, &plan, stack, fs_opts, work, &mut notify);
    drop(private);
    if let (Err(e), Some(mut n)) = (&result, notify.take()) {
        // The parent reports it; the daemon child just leaves.
        let mut msg = vec![daemon::MOUNT_FAILED];
        msg.extend_from_slice(format!("{e}").as_bytes());
        let _ = n.write_all(&msg);
        drop(n);
        std::process::exit(1);
    }
    result
}
