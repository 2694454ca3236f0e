//! Persistent copy-on-write volumes as layerfs layer stacks, for the
//! `layerfs-volume` command and the Docker volume plugin it serves.

pub mod cli;
pub mod export;
pub mod import;
pub mod plugin;
pub mod stack;
pub mod store;
