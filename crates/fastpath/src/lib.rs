//! The Redis fast path and its in-process stand-ins: a GCRA rate limiter (one Lua script, so the
//! check-and-update is atomic across service replicas), locks with expiry, and a read-through
//! cache with stampede protection. Every piece works without Redis, and keeps working — locally —
//! when a configured Redis fails; [`Degraded`] tells health checks when that is happening.
//!
//! Still to come (issue #5): Redis Cluster selection, Streams for the event bus.

mod cache;
mod degraded;
mod gcra;
mod lock;
#[cfg(feature = "testing")]
pub mod testing;

pub use cache::Cache;
pub use degraded::Degraded;
pub use gcra::{Decision, GcraLimit, RateLimiter};
pub use lock::{LockGuard, Locks};

/// A Redis connection shared by the fast-path parts; reconnects by itself.
pub type Redis = redis::aio::ConnectionManager;

/// Connects to Redis at `url` (`redis://host:port/db`).
pub async fn connect(url: &str) -> Result<Redis, redis::RedisError> {
    let client = redis::Client::open(url)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(std::time::Duration::from_millis(500)))
        .set_response_timeout(Some(std::time::Duration::from_millis(500)))
        .set_number_of_retries(1);
    client.get_connection_manager_with_config(config).await
}
