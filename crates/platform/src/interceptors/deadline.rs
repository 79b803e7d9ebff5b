//! Deadlines: the caller's `grpc-timeout` (Connect's `Connect-Timeout-Ms` arrives translated),
//! capped by the method's `max_timeout_ms`, is enforced here and reported as DEADLINE_EXCEEDED —
//! tonic's own timeout would report CANCELLED. Handlers find it as [`Deadline`].

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use tokio::time::Instant;
use tonic::Code;
use tonic::body::Body;
use tower::{Layer, Service};

use super::context::Deadline;
use super::errors;
use super::policy::{PLATFORM_ERROR_DOMAIN, Policies};

/// Enforces per-call deadlines.
#[derive(Debug, Clone)]
pub struct DeadlineLayer {
    policies: Arc<Policies>,
    default_timeout: Option<Duration>,
}

impl DeadlineLayer {
    /// Deadlines from `grpc-timeout`, capped per method; `default_timeout` applies when the caller
    /// sets none.
    pub fn new(policies: Arc<Policies>, default_timeout: Option<Duration>) -> Self {
        DeadlineLayer {
            policies,
            default_timeout,
        }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService {
            layer: self.clone(),
            inner,
        }
    }
}

/// The service produced by [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    layer: DeadlineLayer,
    inner: S,
}

impl<S> Service<Request<Body>> for DeadlineService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let requested = request
            .headers_mut()
            .remove("grpc-timeout")
            .and_then(|value| parse_grpc_timeout(value.to_str().ok()?));
        let cap = self
            .layer
            .policies
            .get(request.uri().path())
            .and_then(|policy| policy.max_timeout);
        let timeout = match (requested.or(self.layer.default_timeout), cap) {
            (Some(requested), Some(cap)) => Some(requested.min(cap)),
            (requested, cap) => requested.or(cap),
        };
        let Some(timeout) = timeout else {
            return self.inner.call(request).boxed();
        };
        let deadline = Instant::now() + timeout;
        request
            .extensions_mut()
            .insert(Deadline(deadline.into_std()));
        let call = self.inner.call(request);
        async move {
            match tokio::time::timeout_at(deadline, call).await {
                Ok(result) => result,
                Err(_) => Ok(errors::response(errors::status(
                    Code::DeadlineExceeded,
                    "DEADLINE_EXCEEDED",
                    PLATFORM_ERROR_DOMAIN,
                    "the call's deadline passed",
                ))),
            }
        }
        .boxed()
    }
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
