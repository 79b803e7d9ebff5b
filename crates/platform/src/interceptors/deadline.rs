//! Deadlines: the caller's `grpc-timeout` (Connect's `Connect-Timeout-Ms` arrives translated),
//! capped by the method's `max_timeout_ms` (from the policy `ResolvePolicy` put in the request), is enforced here and reported as DEADLINE_EXCEEDED —
//! tonic's own timeout would report CANCELLED. Handlers find it as [`Deadline`].

use commerce_api::commerce::common::v1::ErrorReason;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use tokio::time::Instant;
use tonic::Code;
use tonic::body::Body;

use super::around::{Around, Next};
use super::context::Deadline;
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
        let requested = request
            .headers_mut()
            .remove("grpc-timeout")
            .and_then(|value| parse_grpc_timeout(value.to_str().ok()?));
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
            tokio::time::timeout_at(deadline, call)
                .await
                .unwrap_or_else(|_| {
                    errors::response(errors::status(
                        Code::DeadlineExceeded,
                        ErrorReason::DeadlineExceeded,
                        PLATFORM_ERROR_DOMAIN,
                        "the call's deadline passed",
                    ))
                })
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
