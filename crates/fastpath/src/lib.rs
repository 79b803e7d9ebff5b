//! The Redis fast path and its in-process stand-ins: a GCRA rate limiter (one Lua script per call,
//! so the check-and-update is atomic across service replicas — or, in [`RateLimitSync::Batched`]
//! mode, decided in process and synced to Redis in pipelined batches within a documented
//! overshoot), locks with expiry, a read-through cache with stampede protection and a near cache
//! in front of Redis invalidated over pub/sub ([`NearCache`]), and versioned records with a time
//! to live ([`TtlRecords`]). Every
//! piece works without Redis, and keeps working — locally — when a configured Redis fails;
//! [`Degraded`] tells health checks when that is happening. Once a call finds Redis unreachable,
//! the connection itself fails every call at once until a background probe reaches Redis again
//! ([`Redis::is_down`]), so no request waits on a Redis known to be down. The in-process state is
//! bounded however many keys callers invent. Redis is one server or a Redis Cluster, chosen by
//! the URL given to [`connect`].

mod cache;
mod connection;
mod degraded;
mod expiring;
mod gcra;
mod lock;
mod near;
mod outage;
mod records;
#[cfg(feature = "testing")]
pub mod testing;

pub use cache::Cache;
pub use connection::{Redis, connect};
pub use degraded::Degraded;
pub use gcra::{DEFAULT_LOCAL_KEYS, Decision, GcraLimit, RateLimitSync, RateLimiter};
pub use lock::{LockGuard, Locks};
pub use near::NearCache;
pub use records::{RecordError, TtlRecords};
