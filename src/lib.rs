//! layerfs: a union filesystem on FUSE with the semantics of Linux kernel
//! overlayfs. The overlay rules live in plain modules (`resolve`, `dir`,
//! `whiteout`) and the filesystem object `overlay::LayerFs`, whose
//! operations are grouped by concern (`lookup`, `listing`, `open_files`,
//! `file_data`, `names`, `modify`, `xattrs`, `copyup`), all testable
//! without a mount;
//! `fs` is the thin fuser glue and `sys` the only module with `unsafe`.

pub mod attr;
pub mod backing;
pub mod blocking;
pub mod capacity;
pub mod control;
pub mod copyup;
pub mod dir;
pub mod features;
pub mod file_data;
pub mod fs;
pub mod fs_glue;
pub mod fs_reply;
pub mod gate;
pub mod idmap;
pub mod ids;
pub mod inode;
pub mod inode_table;
pub mod layer_read;
pub mod layers;
pub mod listing;
pub mod logging;
pub mod lookup;
pub mod modify;
pub mod mount;
pub mod names;
pub mod numbering;
pub mod open_files;
pub mod open_table;
pub mod options;
pub mod origin;
pub mod overlay;
pub mod rename;
pub mod resolve;
pub mod restack;
pub mod rotation;
pub mod sys;
pub mod upper_renames;
pub mod upper_write;
pub mod whiteout;
pub mod workdir;
pub mod xattrs;

// The filesystem object and what builds it, for callers (the mount code,
// the unmounted test tier) that need not know which module holds each.
pub use layers::LayerStack;
pub use overlay::{FsOptions, LayerFs};
pub use workdir::WorkDir;
