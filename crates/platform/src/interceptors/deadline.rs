//! Deadlines: the caller's `grpc-timeout` (Connect's `Connect-Timeout-Ms` arrives translated),
//! capped by the method's `max_timeout_ms` (from the policy `ResolvePolicy` put in the request), is enforced here and reported as DEADLINE_EXCEEDED —
//! tonic's own timeout would report CANCELLED. Handlers find it as [`Deadline`].
//!
//! The deadline bounds the whole call: the response headers, and then the response body, so a
//! server stream still open when it passes ends with DEADLINE_EXCEEDED trailers after the
//! messages already sent ([`EndsWhen`]). gRPC-web sits outside this layer and turns those
//! trailers into its trailer frame; Connect ends its streams at the same deadline by itself.

use commerce_api::commerce::common::v1::ErrorReason;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use tokio::time::Instant;
use tonic::body::Body;
use tonic::{Code, Status};

use super::around::{Around, Next};
use super::context::Deadline;
use super::ends_when::EndsWhen;
use super::errors;
use super::policy::{MethodPolicy, PLATFORM_ERROR_DOMAIN};

/// Enforces per-call deadlines.
#[derive(Debug, Clone)]
pub struct Deadlines {
    default_timeout: Option<Duration>,
}

impl Deadlines {
    /// Deadlines from `grpc-timeout`, capped per method; `default_timeout` applies when the caller
    /// sets none.
    pub fn new(default_timeout: Option<Duration>) -> Self {
        Deadlines { default_timeout }
    }
}

impl Around for Deadlines {
    fn around(&self, mut request: Request<Body>, next: Next) -> BoxFuture<'static, Response<Body>> {
        // A timeout that cannot be read is refused, not ignored: the caller meant a deadline.
        let requested = match request.headers_mut().remove("grpc-timeout") {
            None => None,
            Some(value) => match value.to_str().ok().and_then(parse_grpc_timeout) {
                Some(timeout) => Some(timeout),
                None => {
                    return futures_util::future::ready(errors::response(malformed_timeout()))
                        .boxed();
                }
            },
        };
        // The policy was resolved once, earlier in the stack.
        let cap = request
            .extensions()
            .get::<Arc<MethodPolicy>>()
            .and_then(|policy| policy.max_timeout);
        let timeout = match (requested.or(self.default_timeout), cap) {
            (Some(requested), Some(cap)) => Some(requested.min(cap)),
            (requested, cap) => requested.or(cap),
        };
        let Some(timeout) = timeout else {
            return next.run(request);
        };
        let deadline = Instant::now() + timeout;
        request
            .extensions_mut()
            .insert(Deadline(deadline.into_std()));
        let call = next.run(request);
        async move {
            match tokio::time::timeout_at(deadline, call).await {
                Err(_) => errors::response(deadline_exceeded()),
                // Trailers-only: the call already ended, there is no body left to bound.
                Ok(response) if response.headers().contains_key("grpc-status") => response,
                Ok(response) => response.map(|body| Body::new(ends_at(body, deadline))),
            }
        }
        .boxed()
    }
}

/// The status of a call whose `grpc-timeout` is not 1–8 digits and a unit.
fn malformed_timeout() -> Status {
    errors::status(
        Code::InvalidArgument,
        ErrorReason::MalformedRequest,
        PLATFORM_ERROR_DOMAIN,
        "grpc-timeout must be 1 to 8 digits followed by a unit (H, M, S, m, u, n)",
    )
}

/// The status of a call whose deadline passed, before its headers or during its body.
fn deadline_exceeded() -> Status {
    errors::status(
        Code::DeadlineExceeded,
        ErrorReason::DeadlineExceeded,
        PLATFORM_ERROR_DOMAIN,
        "the call's deadline passed",
    )
}

/// `body`, ended with [`deadline_exceeded`] trailers at `deadline`.
fn ends_at(body: Body, deadline: Instant) -> EndsWhen {
    EndsWhen::new(body, tokio::time::sleep_until(deadline), deadline_exceeded)
}

/// Parses `grpc-timeout`: at most 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::stream::{self, StreamExt as _};
    use http::HeaderMap;
    use http_body::{Body as _, Frame};
    use http_body_util::{BodyExt as _, StreamBody};

    type Frames = Vec<Result<Frame<Bytes>, Status>>;

    /// A body sending `frames`, then staying open forever (or ending, when `then_end`).
    fn body(frames: Frames, then_end: bool) -> Body {
        let frames = stream::iter(frames);
        if then_end {
            Body::new(StreamBody::new(frames))
        } else {
            Body::new(StreamBody::new(frames.chain(stream::pending())))
        }
    }

    fn grpc_status(frame: &Frame<Bytes>) -> Option<&str> {
        frame.trailers_ref()?.get("grpc-status")?.to_str().ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_open_at_its_deadline_ends_with_deadline_exceeded_after_its_messages() {
        let deadline = Instant::now() + Duration::from_millis(500);
        let inner = body(vec![Ok(Frame::data(Bytes::from_static(b"one")))], false);
        let mut body = ends_at(inner, deadline);
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "one");
        let last = body.frame().await.unwrap().unwrap();
        assert_eq!(Instant::now(), deadline);
        assert_eq!(grpc_status(&last), Some("4"));
        let trailers = last.trailers_ref().unwrap();
        assert!(
            trailers.contains_key("grpc-status-details-bin"),
            "ErrorInfo"
        );
        assert!(body.frame().await.is_none());
        assert!(body.is_end_stream());
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_ends_before_its_deadline_is_passed_through_untouched() {
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut ok = HeaderMap::new();
        ok.insert("grpc-status", "0".parse().unwrap());
        let frames = vec![
            Ok(Frame::data(Bytes::from_static(b"one"))),
            Ok(Frame::trailers(ok)),
        ];
        let mut body = ends_at(body(frames, true), deadline);
        assert!(body.frame().await.unwrap().unwrap().is_data());
        let trailers = body.frame().await.unwrap().unwrap();
        assert_eq!(grpc_status(&trailers), Some("0"));
        tokio::time::sleep_until(deadline + Duration::from_millis(1)).await;
        // Past the deadline, but the call already ended: no second set of trailers.
        assert!(body.frame().await.is_none());
    }

    #[test]
    fn grpc_timeouts_parse_every_unit_and_reject_garbage() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "m", "123456789m", "10x", "-1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }
}
