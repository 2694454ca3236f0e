//! layerfs: a union filesystem on FUSE with the semantics of Linux kernel
//! overlayfs. The overlay rules live in plain modules (`lookup`, `dir`,
//! `whiteout`, `inode`, `ops`) testable without a mount; `fs` is the thin
//! fuser glue and `sys` the only module with `unsafe`.

pub mod attr;
pub mod dir;
pub mod fs;
pub mod inode;
pub mod layers;
pub mod lookup;
pub mod mount;
pub mod ops;
pub mod options;
pub mod sys;
pub mod whiteout;
