//! Whether the fast path is running on its local fallbacks because Redis failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Shared flag: set when a Redis call failed and a fallback answered, cleared by the next success.
/// While the connection knows Redis is down ([`crate::Redis::is_down`]) every call fails at once,
/// so the flag stays set until the probe has reached Redis and a call has succeeded again.
#[derive(Debug, Clone, Default)]
pub struct Degraded(Arc<AtomicBool>);

impl Degraded {
    /// True while the last Redis call failed.
    pub fn is_degraded(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Notes the outcome of a Redis call (used by every part that talks to Redis).
    pub fn record<T, E>(&self, result: &Result<T, E>) {
        self.0.store(result.is_err(), Ordering::Relaxed);
    }
}
