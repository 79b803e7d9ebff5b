//! The runtime kit every service uses. Today: the server that serves tonic services over gRPC,
//! gRPC-web and Connect on one port (HTTP/1.1 and cleartext HTTP/2), with health, reflection,
//! CORS and graceful shutdown. The interceptor stack (auth, limits, validation, metrics) and the
//! outbound client stack are still to come (issue #4).
//!
//! It knows nothing of commerce: services register themselves with their descriptor sets.

mod cors;
mod server;
mod shutdown;

pub use cors::CorsConfig;
pub use server::{BoundServer, Server, ServerConfig, ServerError};
pub use shutdown::termination_signal;
