//! The Connect protocol (<https://connectrpc.com/docs/protocol>) in front of any gRPC service, as a
//! tower layer: Connect unary (POST, and GET for side-effect-free methods), server, client and bidi
//! streaming, in JSON or binary, with gzip, deadlines and size limits, are translated to gRPC for
//! the inner service and its answers translated back. gRPC and gRPC-web requests pass through.
//!
//! It knows protobuf descriptors (for JSON and method shapes) and HTTP, nothing about the services
//! behind it — and nothing about tonic: the inner service is any `Service<http::Request<BoxBody>>`.

mod cache;
mod code;
mod codec;
mod compression;
mod envelope;
mod error;
mod grpc;
mod service;
mod streaming;
mod unary;

pub use cache::GetCaching;
pub use code::Code;
pub use codec::Codec;
pub use compression::Compression;
pub use error::{ConnectError, ErrorDetail, RpcStatus};
pub use service::{Connect, ConnectConfig, ConnectLayer};

/// Errors carried by bodies this crate produces.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
/// The body type of requests handed to the inner service and of every response.
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;
