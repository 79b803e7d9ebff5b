//! How a service calls its dependencies.
//!
//! - [`Outbound`]: a dependency that is not a balanced gRPC callee (the PSP adapter): per-attempt
//!   timeouts inside the caller's deadline, retries with full jitter for idempotent calls, one
//!   circuit breaker for the whole dependency.
//! - the circuit breaker itself ([`BreakerConfig`]), to be shared with per-endpoint breakers.

mod breaker;
mod dependency;

pub use breaker::{BreakerConfig, BreakerState};
pub use dependency::{Classify, Idempotent, Outbound, OutboundError, OutboundPolicy};
