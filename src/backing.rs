//! How each open file is served: FUSE passthrough or through the daemon.
//!
//! The kernel puts an inode in one I/O mode at a time: while any handle of
//! it is open through the page cache, a passthrough open fails, and while a
//! passthrough handle is open, every other open must pass through to the
//! same backing file. So passthrough is used for upper files only (a lower
//! file may be copied up while open, which would need a second backing
//! file) — and for lower files on mounts without a writable upper, where
//! nothing is copied up — and only while no cached handle of the inode is
//! open; one backing id per inode lives as long as any handle holds it.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use dashmap::DashMap;
use fuser::BackingId;

use crate::ids::RealKey;

#[derive(Debug, Default)]
struct IoState {
    /// Open handles served through the daemon (page cache mode).
    cached: usize,
    backing: Option<(RealKey, Weak<BackingId>)>,
}

#[derive(Debug)]
pub struct Backings {
    enabled: AtomicBool,
    map: DashMap<u64, IoState>,
}

/// What an open should do.
pub enum Passthrough {
    Use(Arc<BackingId>),
    /// Through the daemon and the page cache.
    Cached,
}

impl Backings {
    pub fn new(enabled: bool) -> Backings {
        Backings {
            enabled: AtomicBool::new(enabled),
            map: DashMap::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Turns passthrough off for good (the kernel refused it).
    pub fn disable(&self) {
        self.enabled.store(false, Ordering::Relaxed);
    }

    /// Decides how a new handle of `ino` (on real file `real`; `may_pass`: a
    /// file that may pass through) is served; registers a backing id with `open`
    /// when it is the first passthrough handle.
    pub fn open(
        &self,
        ino: u64,
        real: RealKey,
        may_pass: bool,
        open: impl FnOnce() -> io::Result<BackingId>,
    ) -> Passthrough {
        let mut st = self.map.entry(ino).or_default();
        if let Some((key, weak)) = &st.backing {
            if let Some(live) = weak.upgrade() {
                if *key == real {
                    return Passthrough::Use(live);
                }
            }
        }
        if !may_pass || st.cached > 0 || !self.enabled() {
            st.cached += 1;
            return Passthrough::Cached;
        }
        match open() {
            Ok(id) => {
                let id = Arc::new(id);
                st.backing = Some((real, Arc::downgrade(&id)));
                Passthrough::Use(id)
            }
            Err(e) => {
                log::warn!("FUSE passthrough refused ({e}); file data goes through the daemon");
                self.disable();
                st.cached += 1;
                Passthrough::Cached
            }
        }
    }

    /// A handle of `ino` was released; `passthrough` says how it was served.
    pub fn released(&self, ino: u64, passthrough: bool) {
        if let Some(mut st) = self.map.get_mut(&ino) {
            if !passthrough {
                st.cached = st.cached.saturating_sub(1);
            }
        }
        self.map.remove_if(&ino, |_, st| {
            st.cached == 0
                && st
                    .backing
                    .as_ref()
                    .is_none_or(|(_, w)| w.strong_count() == 0)
        });
    }
}
