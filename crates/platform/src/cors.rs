//! CORS for browser callers of gRPC-web and Connect: which origins may call, and the headers those
//! protocols need allowed and exposed.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Request headers browsers may send: the protocols' own plus the platform's.
const ALLOWED_HEADERS: &[&str] = &[
    "content-type",
    "authorization",
    "idempotency-key",
    "commerce-tenant",
    "x-request-id",
    "traceparent",
    "tracestate",
    "connect-protocol-version",
    "connect-timeout-ms",
    "connect-content-encoding",
    "connect-accept-encoding",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    // Revalidating a cached Connect GET answer.
    "if-none-match",
];

/// Response headers browsers may read: gRPC-web status lives in them, and every header the
/// platform sets that a caller acts on (a replay mark, a retry delay, a cache validator). Headers
/// CORS always exposes (`cache-control`, `content-type`, …) need no entry.
const EXPOSED_HEADERS: &[&str] = &[
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "grpc-encoding",
    "grpc-accept-encoding",
    "connect-content-encoding",
    "connect-accept-encoding",
    "content-encoding",
    "x-request-id",
    "retry-after",
    "deprecation",
    "sunset",
    // Tells a first answer from a replay of an idempotent call.
    "idempotent-replayed",
    // Connect GET answers carry a validator for `If-None-Match`.
    "etag",
    "vary",
];

/// Which browser origins may call the API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsConfig {
    /// Exact origins (`https://shop.example.com`); `*` allows any origin. Empty disables CORS.
    pub allowed_origins: Vec<String>,
}

impl CorsConfig {
    /// The CORS layer, or `None` when no origin is allowed.
    pub fn layer(&self) -> Option<CorsLayer> {
        if self.allowed_origins.is_empty() {
            return None;
        }
        let origins = if self.allowed_origins.iter().any(|origin| origin == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(
                self.allowed_origins
                    .iter()
                    .filter_map(|origin| HeaderValue::from_str(origin).ok()),
            )
        };
        Some(
            CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST])
                .allow_headers(
                    ALLOWED_HEADERS
                        .iter()
                        .map(|name| HeaderName::from_static(name))
                        .collect::<Vec<_>>(),
                )
                .expose_headers(
                    EXPOSED_HEADERS
                        .iter()
                        .map(|name| HeaderName::from_static(name))
                        .collect::<Vec<_>>(),
                )
                .max_age(Duration::from_secs(7200)),
        )
    }
}
