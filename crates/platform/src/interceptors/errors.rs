//! Errors the interceptors raise, through the same mapping handlers use ([`crate::ApiError`]):
//! reasons come from the contract's `commerce.common.v1.ErrorReason`.

use std::time::Duration;

use commerce_api::commerce::common::v1::ErrorReason;
use http::Response;
use tonic::body::Body;
use tonic::{Code, Status};
use tonic_types::FieldViolation;

use crate::ApiError;

/// A status with an `ErrorInfo`.
pub fn status(code: Code, reason: ErrorReason, domain: &str, message: impl Into<String>) -> Status {
    ApiError::new(code, reason, message).into_status(domain)
}

/// A status with an `ErrorInfo` carrying metadata.
pub fn status_with_metadata(
    code: Code,
    reason: ErrorReason,
    domain: &str,
    message: impl Into<String>,
    metadata: impl IntoIterator<Item = (String, String)>,
) -> Status {
    metadata
        .into_iter()
        .fold(
            ApiError::new(code, reason, message),
            |error, (key, value)| error.with_metadata(key, value),
        )
        .into_status(domain)
}

/// A status with `ErrorInfo` and `RetryInfo` (rate limits, load shedding).
pub fn retryable(
    code: Code,
    reason: ErrorReason,
    domain: &str,
    message: impl Into<String>,
    retry_after: Duration,
) -> Status {
    ApiError::new(code, reason, message)
        .with_retry_after(retry_after)
        .into_status(domain)
}

/// INVALID_ARGUMENT / VALIDATION_FAILED with one `BadRequest` violation per field.
pub fn validation_failed(domain: &str, violations: Vec<FieldViolation>) -> Status {
    let summary = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    violations
        .into_iter()
        .fold(
            ApiError::new(
                Code::InvalidArgument,
                ErrorReason::ValidationFailed,
                format!("invalid request: {summary}"),
            ),
            |error, violation| error.with_field_violation(violation.field, violation.description),
        )
        .into_status(domain)
}

/// The gRPC (trailers-only) response for `status`; the Connect and gRPC-web layers translate it.
pub fn response(status: Status) -> Response<Body> {
    status.into_http()
}
