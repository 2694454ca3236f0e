//! layerfs: a union filesystem on FUSE with the semantics of Linux kernel
//! overlayfs. The overlay rules live in plain modules (`lookup`, `dir`,
//! `whiteout`, `inode`, `ops`) testable without a mount; `fs` is the thin
//! fuser glue and `sys` the only module with `unsafe`.

pub mod attr;
pub mod copyup;
pub mod dir;
pub mod features;
pub mod fs;
pub mod handles;
pub mod idmap;
pub mod ids;
pub mod inode;
pub mod layer_read;
pub mod layers;
pub mod listing;
pub mod logging;
pub mod lookup;
pub mod modify;
pub mod mount;
pub mod namespace;
pub mod numbering;
pub mod open_files;
pub mod ops;
pub mod options;
pub mod origin;
pub mod sys;
pub mod whiteout;
pub mod workdir;

// The filesystem object and what builds it, for callers (the mount code,
// the unmounted test tier) that need not know which module holds each.
pub use layers::LayerStack;
pub use ops::{FsOptions, LayerFs};
pub use workdir::WorkDir;
