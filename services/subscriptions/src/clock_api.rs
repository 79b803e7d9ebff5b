//! `commerce.subscriptions.v1.ClockService`: reads and advances the caller's tenant clock
//! ([`platform::clock::Clocks`]). Advancing runs every due job the process's modules registered
//! (loyalty's sweep, then the billing run, in the all-in-one).

use commerce_api::FILE_DESCRIPTOR_SET;
use commerce_api::commerce::common::v1::ErrorReason;
use commerce_api::commerce::subscriptions::v1::clock_service_server::{
    ClockService, ClockServiceServer,
};
use commerce_api::commerce::subscriptions::v1::{
    AdvanceClockRequest, AdvanceClockResponse, Clock, GetClockRequest, GetClockResponse,
};
use platform::clock::{ClockError, ClockReading, Clocks};
use platform::interceptors::Tenant;
use platform::units::timestamp_of_ms;
use platform::{ApiError, Server};
use prost_types::Timestamp;
use store::StoreError;
use tonic::{Code, Request, Response, Status};

use crate::ERROR_DOMAIN;

/// The ClockService handlers.
pub struct ClockApi {
    clocks: Clocks,
}

impl ClockApi {
    /// Handlers over `clocks`.
    pub fn new(clocks: Clocks) -> Self {
        ClockApi { clocks }
    }
}

/// Adds ClockService, backed by `clocks`, to `server`.
pub fn register_clock(server: Server, clocks: Clocks) -> Server {
    server.add_service(
        ClockServiceServer::new(ClockApi::new(clocks)),
        FILE_DESCRIPTOR_SET,
    )
}

#[tonic::async_trait]
impl ClockService for ClockApi {
    async fn get_clock(
        &self,
        request: Request<GetClockRequest>,
    ) -> Result<Response<GetClockResponse>, Status> {
        let tenant = tenant(&request)?;
        let reading = self
            .clocks
            .now(&tenant)
            .await
            .map_err(|error| store_error(error).into_status(ERROR_DOMAIN))?;
        Ok(Response::new(GetClockResponse {
            clock: Some(clock(reading)),
        }))
    }

    async fn advance_clock(
        &self,
        request: Request<AdvanceClockRequest>,
    ) -> Result<Response<AdvanceClockResponse>, Status> {
        let tenant = tenant(&request)?;
        let target_ms = request
            .get_ref()
            .target_time
            .as_ref()
            .and_then(unix_ms)
            .ok_or_else(|| {
                ApiError::new(
                    Code::InvalidArgument,
                    ErrorReason::ValidationFailed,
                    "target_time is required and must be a valid timestamp",
                )
                .with_field_violation("target_time", "required; a valid timestamp")
                .into_status(ERROR_DOMAIN)
            })?;
        let (reading, report) = self
            .clocks
            .advance(&tenant, target_ms)
            .await
            .map_err(|error| clock_error(error).into_status(ERROR_DOMAIN))?;
        Ok(Response::new(AdvanceClockResponse {
            clock: Some(clock(reading)),
            renewal_count: report.renewals,
            paid_invoice_count: report.invoices_paid,
            failed_payment_count: report.payment_failures,
            status_change_count: report.status_changes,
        }))
    }
}

/// The tenant the interceptors resolved for the call.
fn tenant<T>(request: &Request<T>) -> Result<String, Status> {
    request
        .extensions()
        .get::<Tenant>()
        .map(|tenant| tenant.0.clone())
        .ok_or_else(|| {
            ApiError::internal("ClockService called without a tenant in the request extensions")
                .into_status(ERROR_DOMAIN)
        })
}

fn clock(reading: ClockReading) -> Clock {
    Clock {
        now: Some(timestamp_of_ms(reading.now_ms)),
        frozen: reading.frozen,
    }
}

/// Unix milliseconds of `timestamp` (sub-millisecond precision is dropped); `None` when it does
/// not fit.
fn unix_ms(timestamp: &Timestamp) -> Option<i64> {
    let mut normalized = *timestamp;
    normalized.normalize();
    normalized
        .seconds
        .checked_mul(1000)?
        .checked_add(i64::from(normalized.nanos / 1_000_000))
}

/// A unix-millisecond time as RFC 3339, for error metadata.
fn rfc3339(unix_ms: i64) -> String {
    timestamp_of_ms(unix_ms).to_string()
}

fn clock_error(error: ClockError) -> ApiError {
    match error {
        ClockError::Backwards { now_ms, target_ms } => ApiError::new(
            Code::InvalidArgument,
            ErrorReason::ClockBackwards,
            format!(
                "the clock can only move forward: it reads {}, target_time is {}",
                rfc3339(now_ms),
                rfc3339(target_ms)
            ),
        )
        .with_metadata("now", rfc3339(now_ms))
        .with_metadata("target", rfc3339(target_ms)),
        ClockError::Store(error) => store_error(error),
        // The clock has moved; the runner's own error says what failed. Advancing to the same
        // time again re-runs the runners.
        ClockError::Job(error) => error,
    }
}

fn store_error(error: StoreError) -> ApiError {
    match error {
        StoreError::Conflict { .. } => ApiError::new(
            Code::Aborted,
            ErrorReason::ConcurrentModification,
            "the clock kept changing while moving it; re-read and retry",
        ),
        StoreError::Backend(_) => ApiError::new(
            Code::Unavailable,
            ErrorReason::DependencyUnavailable,
            "the clock's storage is unavailable; retry later",
        )
        .with_retry_after(std::time::Duration::from_secs(1)),
        StoreError::IdempotencyKeyTaken(_) => ApiError::internal(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_round_trip_through_timestamps_including_before_1970() {
        for ms in [0, 1, 999, 1_000, 1_893_456_000_123, -1, -1_001] {
            assert_eq!(unix_ms(&timestamp_of_ms(ms)), Some(ms), "{ms}");
        }
        assert_eq!(rfc3339(1_893_456_000_000), "2030-01-01T00:00:00Z");
    }

    #[test]
    fn backwards_is_invalid_argument_with_both_times_in_rfc_3339() {
        use tonic_types::StatusExt as _;
        let status = clock_error(ClockError::Backwards {
            now_ms: 1_893_456_000_000,
            target_ms: 1_893_455_999_500,
        })
        .into_status(ERROR_DOMAIN);
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "CLOCK_BACKWARDS");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.metadata["now"], "2030-01-01T00:00:00Z");
        assert_eq!(info.metadata["target"], "2029-12-31T23:59:59.500Z");
    }
}
