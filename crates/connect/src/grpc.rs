//! The gRPC side of the translation: building the inner request and reading its answer.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, TE};
use http::{HeaderMap, Method, Request, Version};
use http_body_util::{BodyExt as _, Full};

use crate::{BoxBody, BoxError};

/// Request headers that belong to the Connect or HTTP/1 layer and must not reach the gRPC service.
const CONNECT_ONLY_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "accept-encoding",
    "connect-protocol-version",
    "connect-timeout-ms",
    "connect-content-encoding",
    "connect-accept-encoding",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "te",
];

/// Response headers and trailers that describe the gRPC exchange itself, not the caller's metadata.
pub const GRPC_PROTOCOL_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "grpc-encoding",
    "grpc-accept-encoding",
    "trailer",
    "te",
];

/// Builds the gRPC request for a Connect call: same path, metadata and extensions; gRPC framing.
pub fn request(
    parts: &http::request::Parts,
    body: BoxBody,
    timeout: Option<Duration>,
) -> Request<BoxBody> {
    let mut request = Request::new(body);
    *request.method_mut() = Method::POST;
    *request.version_mut() = Version::HTTP_2;
    *request.uri_mut() = parts
        .uri
        .path()
        .parse()
        .unwrap_or_else(|_| parts.uri.clone());
    *request.extensions_mut() = parts.extensions.clone();
    let headers = request.headers_mut();
    for (name, value) in &parts.headers {
        if !CONNECT_ONLY_HEADERS.contains(&name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(TE, HeaderValue::from_static("trailers"));
    if let Some(timeout) = timeout {
        headers.insert(
            HeaderName::from_static("grpc-timeout"),
            grpc_timeout(timeout),
        );
    }
    request
}

/// `grpc-timeout` allows at most 8 digits; fall back to coarser units for long timeouts.
fn grpc_timeout(timeout: Duration) -> HeaderValue {
    let millis = timeout.as_millis();
    let text = if millis < 100_000_000 {
        format!("{millis}m")
    } else {
        format!("{}S", timeout.as_secs().min(99_999_999))
    };
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("99999999S"))
}

/// Copies caller-visible metadata (not gRPC protocol headers) into `into`, prefixing names.
pub fn copy_metadata(from: &HeaderMap, into: &mut HeaderMap, prefix: &str) {
    for (name, value) in from {
        if GRPC_PROTOCOL_HEADERS.contains(&name.as_str()) {
            continue;
        }
        if prefix.is_empty() {
            into.append(name.clone(), value.clone());
        } else if let Ok(prefixed) = HeaderName::from_bytes(format!("{prefix}{name}").as_bytes()) {
            into.append(prefixed, value.clone());
        }
    }
}

/// A body holding `data` whole.
pub fn full(data: impl Into<Bytes>) -> BoxBody {
    Full::new(data.into())
        .map_err(|never| -> BoxError { match never {} })
        .boxed_unsync()
}
