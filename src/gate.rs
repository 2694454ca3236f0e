//! The barrier a live snapshot puts before the filesystem's requests.
//!
//! Two shared locks, each request holding what it needs while it runs:
//! - every request holds `world`: the layer stack it resolved against
//!   stays the stack until it has answered;
//! - a request that may change the upper holds `mutations` as well,
//!   taken first.
//!
//! [`Gate::freeze`] takes `mutations` exclusively (reads go on), then the
//! caller makes its writes durable and takes `world` exclusively for the
//! moment the stack changes. Both are bounded waits, so a request that
//! never ends makes the snapshot fail, not the filesystem stop. The order
//! (`mutations` before `world`, for requests and the freezer alike) is
//! what rules out a deadlock between them.

use std::time::{Duration, Instant};

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

#[derive(Debug, Default)]
pub struct Gate {
    mutations: RwLock<()>,
    world: RwLock<()>,
}

/// What a request holds while it runs.
pub struct Pass<'a> {
    _mutation: Option<RwLockReadGuard<'a, ()>>,
    _world: RwLockReadGuard<'a, ()>,
}

/// Mutating requests are held while this lives.
pub struct Frozen<'a> {
    gate: &'a Gate,
    _mutations: RwLockWriteGuard<'a, ()>,
    deadline: Instant,
}

/// Every request is held while this lives.
pub struct Stopped<'a> {
    _world: RwLockWriteGuard<'a, ()>,
}

impl Gate {
    /// The pass of a request that only reads.
    pub fn read(&self) -> Pass<'_> {
        Pass {
            _mutation: None,
            _world: self.world.read(),
        }
    }

    /// The pass of a request that may change the upper layer.
    pub fn mutate(&self) -> Pass<'_> {
        let m = self.mutations.read();
        Pass {
            _mutation: Some(m),
            _world: self.world.read(),
        }
    }

    /// Waits at most `timeout` for the mutating requests under way to
    /// end, holding new ones back from then on. None if they did not end
    /// in time (nothing is held then).
    pub fn freeze(&self, timeout: Duration) -> Option<Frozen<'_>> {
        let deadline = Instant::now() + timeout;
        let m = self.mutations.try_write_for(timeout)?;
        Some(Frozen {
            gate: self,
            _mutations: m,
            deadline,
        })
    }
}

impl Frozen<'_> {
    /// Waits, within what is left of the freeze's time, for every request
    /// under way to end, holding all new ones back.
    pub fn stop(&self) -> Option<Stopped<'_>> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let w = self.gate.world.try_write_for(left)?;
        Some(Stopped { _world: w })
    }

    /// Time left of the freeze's bound.
    pub fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn reads_go_on_while_frozen_and_a_slow_mutation_times_the_freeze_out() {
        let g = Arc::new(Gate::default());
        {
            let f = g.freeze(Duration::from_millis(50)).unwrap();
            let g2 = Arc::clone(&g);
            // A reader is not held by a freeze.
            std::thread::spawn(move || drop(g2.read())).join().unwrap();
            let s = f.stop().unwrap();
            drop(s);
        }
        let held = g.mutate();
        let t = Instant::now();
        assert!(g.freeze(Duration::from_millis(30)).is_none());
        assert!(t.elapsed() >= Duration::from_millis(30));
        drop(held);
        assert!(g.freeze(Duration::from_millis(30)).is_some());
    }
}
