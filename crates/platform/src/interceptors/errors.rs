//! The one error model: a gRPC status carrying `google.rpc.ErrorInfo` (stable reason from
//! `commerce.common.v1.ErrorReason`, the service's domain, metadata) plus `BadRequest` or
//! `RetryInfo` where they apply. Connect and gRPC-web callers receive the same details.

use std::collections::HashMap;
use std::time::Duration;

use http::Response;
use tonic::body::Body;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt as _};

/// A status with an `ErrorInfo`.
pub fn status(code: Code, reason: &str, domain: &str, message: impl Into<String>) -> Status {
    status_with(
        code,
        message,
        ErrorDetails::with_error_info(reason, domain, HashMap::new()),
    )
}

/// A status with an `ErrorInfo` with metadata.
pub fn status_with_metadata(
    code: Code,
    reason: &str,
    domain: &str,
    message: impl Into<String>,
    metadata: impl IntoIterator<Item = (String, String)>,
) -> Status {
    status_with(
        code,
        message,
        ErrorDetails::with_error_info(
            reason,
            domain,
            metadata.into_iter().collect::<HashMap<_, _>>(),
        ),
    )
}

/// A status with an `ErrorInfo` and `RetryInfo` (rate limits, load shedding).
pub fn retryable(
    code: Code,
    reason: &str,
    domain: &str,
    message: impl Into<String>,
    retry_after: Duration,
) -> Status {
    let mut details = ErrorDetails::with_error_info(reason, domain, HashMap::new());
    details.set_retry_info(Some(retry_after));
    status_with(code, message, details)
}

/// INVALID_ARGUMENT with `ErrorInfo` VALIDATION_FAILED and one `BadRequest` violation per field.
pub fn validation_failed(domain: &str, violations: Vec<FieldViolation>) -> Status {
    let summary = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    let mut details = ErrorDetails::with_error_info("VALIDATION_FAILED", domain, HashMap::new());
    details.set_bad_request(violations);
    status_with(
        Code::InvalidArgument,
        format!("invalid request: {summary}"),
        details,
    )
}

fn status_with(code: Code, message: impl Into<String>, details: ErrorDetails) -> Status {
    Status::with_error_details(code, message, details)
}

/// The gRPC (trailers-only) response for `status`; Connect and gRPC-web layers translate it.
pub fn response(status: Status) -> Response<Body> {
    status.into_http()
}
