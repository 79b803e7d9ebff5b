//! The runtime kit every service uses: the server that serves tonic services over gRPC, gRPC-web
//! and Connect on one port (HTTP/1.1 and cleartext HTTP/2) with health, reflection, CORS and
//! graceful shutdown; the interceptor stack (request id, load shedding, deadlines, JWT auth,
//! contract-driven authorization, tenant, rate limit, validation, RED metrics, logs); the admin
//! port; the outbound call stack ([`outbound`]: balanced gRPC callees with per-endpoint breakers,
//! deadline propagation, contract-driven retries and hedging; a breaker-guarded policy for other
//! dependencies); the tenant clock ([`clock`]); page tokens ([`page_token`]); crash points for
//! fault tests ([`failpoint`]); a service's own signed identity for calls to other services
//! ([`identity`]); the bounds of money and points amounts ([`limits`]).
//!
//! It knows nothing of commerce: services register themselves with their descriptor sets.

mod admin;
mod api_error;
pub mod clock;
mod connection;
mod cors;
mod drain;
pub mod failpoint;
pub mod identity;
pub mod interceptors;
pub mod limits;
mod listener;
pub mod outbound;
pub mod page_token;
pub mod request;
mod server;
mod shutdown;
pub mod telemetry;
pub mod units;

pub use api_error::ApiError;
pub use cors::CorsConfig;
pub use listener::ConnectionLimits;
pub use server::{BoundServer, ReadinessGate, Server, ServerConfig, ServerError};
pub use shutdown::termination_signal;
