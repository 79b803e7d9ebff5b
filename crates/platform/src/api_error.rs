//! The one mapping from a service's domain errors to the wire: handlers return [`ApiError`]
//! (usually via `From<TheirDomainError>`), and it becomes a gRPC status with `ErrorInfo` (a stable
//! reason from `commerce.common.v1.ErrorReason`, the service's error domain, metadata), plus
//! `BadRequest` or `RetryInfo` where they apply — the same details on gRPC, gRPC-web and Connect.

use std::time::Duration;

use commerce_api::commerce::common::v1::ErrorReason;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt as _};

/// An error a handler returns.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    code: Code,
    reason: ErrorReason,
    message: String,
    metadata: Vec<(String, String)>,
    field_violations: Vec<(String, String)>,
    retry_after: Option<Duration>,
}

impl ApiError {
    /// An error with a status code, a stable reason and a caller-facing message.
    pub fn new(code: Code, reason: ErrorReason, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            metadata: Vec::new(),
            field_violations: Vec::new(),
            retry_after: None,
        }
    }

    /// An unexpected fault. `detail` goes to the log (with the request id), never to the caller.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(target: "rpc", error = %detail, "internal error");
        ApiError::new(
            Code::Internal,
            ErrorReason::Internal,
            "internal error; see server logs",
        )
    }

    /// Adds a stable `ErrorInfo.metadata` entry (e.g. `available_points`).
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }

    /// Names a request field at fault (`BadRequest`), by its proto field path.
    pub fn with_field_violation(
        mut self,
        field: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        self.field_violations
            .push((field.into(), description.into()));
        self
    }

    /// Tells the caller when a retry may succeed (`RetryInfo`).
    pub fn with_retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// The status, with `domain` as `ErrorInfo.domain` — the service's `error_domain` from the
    /// contract, found in the request's extensions as `Arc<MethodPolicy>`.
    pub fn into_status(self, domain: &str) -> Status {
        let reason = self
            .reason
            .as_str_name()
            .trim_start_matches("ERROR_REASON_")
            .to_owned();
        let mut details = ErrorDetails::with_error_info(
            reason,
            domain,
            self.metadata
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        );
        if !self.field_violations.is_empty() {
            details.set_bad_request(
                self.field_violations
                    .into_iter()
                    .map(|(field, description)| FieldViolation::new(field, description))
                    .collect::<Vec<_>>(),
            );
        }
        if let Some(delay) = self.retry_after {
            details.set_retry_info(Some(delay));
        }
        Status::with_error_details(self.code, self.message, details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_errors_carry_a_stable_reason_domain_metadata_and_field_violations() {
        let status = ApiError::new(
            Code::FailedPrecondition,
            ErrorReason::InsufficientPoints,
            "not enough points",
        )
        .with_metadata("available_points", "120")
        .with_field_violation("reward_id", "costs 500 points")
        .into_status("loyalty.commerce.dev");
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "not enough points");
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("INSUFFICIENT_POINTS", "loyalty.commerce.dev")
        );
        assert_eq!(
            info.metadata.get("available_points").map(String::as_str),
            Some("120")
        );
        assert_eq!(
            details.bad_request().expect("BadRequest").field_violations[0].field,
            "reward_id"
        );
    }

    #[test]
    fn internal_errors_do_not_leak_their_detail() {
        let status = ApiError::internal("connection to 10.0.0.7:27017 refused")
            .into_status("checkout.commerce.dev");
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("10.0.0.7"));
        assert_eq!(
            status
                .get_error_details()
                .error_info()
                .map(|info| info.reason.clone()),
            Some("INTERNAL".to_owned())
        );
    }
}
