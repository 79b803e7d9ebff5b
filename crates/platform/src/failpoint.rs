//! Crash points for fault tests: the process dies at an exact step, as if SIGKILLed there.
//!
//! `COMMERCE_FAILPOINTS` holds a comma-separated list of points to arm, each `name` (die at its
//! first hit) or `name@n` (die at its n-th hit). Code marks a step with [`hit`]; an armed point
//! aborts the process there (no destructors, no flushing — what a kill does), after one line on
//! stderr naming it. Unset (every deployment), a hit is one relaxed atomic load.
//!
//! Tests use it where a signal cannot land precisely, e.g. between a handler's commit and the
//! idempotency layer's own record of the reply.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

/// The environment variable listing armed points.
pub const ENV: &str = "COMMERCE_FAILPOINTS";

struct Armed {
    /// Hits left before each armed point fires (1: the next hit).
    remaining: Mutex<HashMap<String, u64>>,
}

static ANY_ARMED: AtomicBool = AtomicBool::new(false);
static ARMED: OnceLock<Armed> = OnceLock::new();

/// Reads `COMMERCE_FAILPOINTS` once; called by the first [`hit`] (or explicitly at start-up so a
/// misspelled list is reported early).
pub fn init() {
    ARMED.get_or_init(|| {
        let spec = std::env::var(ENV).unwrap_or_default();
        let remaining = parse(&spec);
        if !remaining.is_empty() {
            eprintln!("commerce: failpoints armed: {spec}");
            ANY_ARMED.store(true, Ordering::Relaxed);
        }
        Armed {
            remaining: Mutex::new(remaining),
        }
    });
}

fn parse(spec: &str) -> HashMap<String, u64> {
    spec.split(',')
        .map(str::trim)
        .filter(|point| !point.is_empty())
        .map(|point| match point.rsplit_once('@') {
            Some((name, count)) => (name.to_owned(), count.parse().unwrap_or(1).max(1)),
            None => (point.to_owned(), 1),
        })
        .collect()
}

/// Whether any point is armed (cheap; lets callers skip building a point's name).
pub fn any_armed() -> bool {
    init();
    ANY_ARMED.load(Ordering::Relaxed)
}

/// Marks the step `name`: aborts the process if it is armed and this is the hit it waits for.
pub fn hit(name: &str) {
    if !any_armed() {
        return;
    }
    let Some(armed) = ARMED.get() else {
        return;
    };
    let fire = {
        let mut remaining = armed
            .remaining
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match remaining.get_mut(name) {
            Some(left) if *left <= 1 => true,
            Some(left) => {
                *left -= 1;
                false
            }
            None => false,
        }
    };
    if fire {
        eprintln!("commerce: failpoint {name} hit; aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn points_fire_at_their_first_or_nth_hit() {
        let parsed = parse(" a, b@3 ,,c@0");
        assert_eq!(parsed.get("a"), Some(&1));
        assert_eq!(parsed.get("b"), Some(&3));
        assert_eq!(parsed.get("c"), Some(&1), "@0 behaves as the first hit");
        assert_eq!(parsed.len(), 3);
    }
}
