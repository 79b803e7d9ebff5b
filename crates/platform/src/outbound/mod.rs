//! How a service calls its dependencies.
//!
//! - [`Callee`]: another service over gRPC, with a generated client on a [`CalleeChannel`] —
//!   balanced over the callee's replicas ([`target`]; `discovery`; p2c by in-flight calls), a
//!   circuit breaker per endpoint, the caller's deadline sent on as `grpc-timeout`, retries only
//!   where the callee's contract allows them ([`contract`]; `retry`), hedged reads, request id /
//!   trace propagation and a metadata hook ([`context`]), metrics on the admin registry.
//!   `docs/outbound.md` explains the rules.
//! - [`Outbound`]: a dependency that is not a balanced gRPC callee (the PSP adapter): per-attempt
//!   timeouts inside the caller's deadline, retries with full jitter for idempotent calls, one
//!   circuit breaker for the whole dependency.
//!
//! Both use the same circuit breaker ([`BreakerConfig`]).

mod attempt;
mod breaker;
mod callee;
mod channel;
pub mod context;
pub mod contract;
mod dependency;
mod discovery;
mod endpoint;
mod metrics;
mod retry;
pub mod target;

pub use breaker::{BreakerConfig, BreakerState};
pub use callee::{CallError, Callee, CalleeConfig, CalleeError};
pub use channel::CalleeChannel;
pub use context::{CallContext, MetadataHook, OutboundCall};
pub use contract::{RepeatRules, Repeatable};
pub use dependency::{Classify, Idempotent, Outbound, OutboundError, OutboundPolicy};
pub use discovery::EndpointStatus;
pub(crate) use metrics::OutboundMetrics;
pub use target::{Target, TargetError};
