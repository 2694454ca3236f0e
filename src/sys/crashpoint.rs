//! Fault injection for the crash tests: named points on the paths that
//! change the upper in several steps, where the daemon can be made to die
//! as `kill -9` would, at exactly that step.
//!
//! `LAYERFS_CRASH_AT=NAME` ends the daemon the first time it passes point
//! NAME, `NAME:N` the Nth time; `any:N` the Nth point of any name, so that
//! a seeded test can pick a step of the upper's history rather than a
//! moment in time: every successful call of `sys` that changes a layer is
//! point `step`. Points count only once the kernel's session has started
//! ([`arm`]), so that the mount itself always comes up. Without the
//! variable a point costs one atomic load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

struct Plan {
    /// The point to die at; `None`: any point.
    name: Option<String>,
    /// Points (of that name, or any) still to pass before dying.
    left: AtomicU64,
}

fn plan() -> Option<&'static Plan> {
    static PLAN: OnceLock<Option<Plan>> = OnceLock::new();
    PLAN.get_or_init(|| parse(&std::env::var("LAYERFS_CRASH_AT").ok()?))
        .as_ref()
}

fn parse(spec: &str) -> Option<Plan> {
    let (name, n) = match spec.split_once(':') {
        Some((name, n)) => (name, n.parse::<u64>().ok()?),
        None => (spec, 1),
    };
    if name.is_empty() || n == 0 {
        return None;
    }
    Some(Plan {
        name: (name != "any").then(|| name.to_string()),
        left: AtomicU64::new(n),
    })
}

static ARMED: AtomicBool = AtomicBool::new(false);

/// The filesystem is serving: from now on crash points count.
pub fn arm() {
    ARMED.store(true, Ordering::Release);
}

/// Passes crash point `name`: the daemon dies here if the plan says so.
pub fn reached(name: &'static str) {
    if !ARMED.load(Ordering::Acquire) {
        return;
    }
    let Some(p) = plan() else {
        return;
    };
    if p.name.as_deref().is_some_and(|n| n != name) {
        return;
    }
    if p.left.fetch_sub(1, Ordering::SeqCst) == 1 {
        log::warn!("LAYERFS_CRASH_AT: dying at crash point {name}");
        super::kill_self();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_a_point_and_a_count() {
        let p = parse("copyup-indexed").unwrap();
        assert_eq!(p.name.as_deref(), Some("copyup-indexed"));
        assert_eq!(p.left.load(Ordering::SeqCst), 1);
        let p = parse("any:17").unwrap();
        assert_eq!(p.name, None);
        assert_eq!(p.left.load(Ordering::SeqCst), 17);
        assert!(parse("x:0").is_none());
        assert!(parse("x:y").is_none());
        assert!(parse(":3").is_none());
    }
}
