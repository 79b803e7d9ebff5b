//! The port's values on the wire of the PSP's internal contract (`commerce.psp.v1`): transactions
//! both ways, and each [`PspError`] as a gRPC status whose `ErrorInfo` names it exactly
//! (metadata `psp_error`), so the remote adapter gives callers the very error the simulator gave.

use std::time::{Duration, UNIX_EPOCH};

use commerce_api::commerce::common::v1::{ErrorReason, Money as WireMoney};
use commerce_api::commerce::psp::v1 as wire;
use platform::ApiError;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

use crate::{Money, PspError, Transaction, TransactionKind, TransactionStatus};

/// `ErrorInfo.domain` of the PSP service (its contract's `error_domain`).
pub(crate) const DOMAIN: &str = "psp.commerce.dev";
/// The `ErrorInfo` metadata key naming the port's error.
const PSP_ERROR: &str = "psp_error";

pub(crate) fn money_to_wire(money: &Money) -> Option<WireMoney> {
    Some(WireMoney {
        currency_code: money.currency_code.clone(),
        amount_minor: money.amount_minor,
    })
}

pub(crate) fn money_from_wire(money: Option<WireMoney>) -> Money {
    let money = money.unwrap_or_default();
    Money::new(money.currency_code, money.amount_minor)
}

pub(crate) fn transaction_to_wire(transaction: &Transaction) -> wire::Transaction {
    let (succeeded, decline_code, hard_decline) = match &transaction.status {
        TransactionStatus::Succeeded => (true, String::new(), false),
        TransactionStatus::Declined { code, hard } => (false, code.clone(), *hard),
    };
    let kind = match transaction.kind {
        TransactionKind::Authorization => wire::TransactionKind::Authorization,
        TransactionKind::Capture => wire::TransactionKind::Capture,
        TransactionKind::Void => wire::TransactionKind::Void,
        TransactionKind::Refund => wire::TransactionKind::Refund,
    };
    wire::Transaction {
        id: transaction.id.clone(),
        kind: kind as i32,
        succeeded,
        decline_code,
        hard_decline,
        amount: money_to_wire(&transaction.amount),
        reference: transaction.reference.clone(),
        idempotency_key: transaction.idempotency_key.clone(),
        parent_id: transaction.parent_id.clone().unwrap_or_default(),
        create_time: Some(prost_types::Timestamp::from(
            UNIX_EPOCH + Duration::from_millis(transaction.created_at_ms.max(0) as u64),
        )),
    }
}

/// A transaction as the PSP sent it; `None` when it is not one the port knows.
pub(crate) fn transaction_from_wire(transaction: wire::Transaction) -> Option<Transaction> {
    let kind = match wire::TransactionKind::try_from(transaction.kind).ok()? {
        wire::TransactionKind::Authorization => TransactionKind::Authorization,
        wire::TransactionKind::Capture => TransactionKind::Capture,
        wire::TransactionKind::Void => TransactionKind::Void,
        wire::TransactionKind::Refund => TransactionKind::Refund,
        wire::TransactionKind::Unspecified => return None,
    };
    let status = if transaction.succeeded {
        TransactionStatus::Succeeded
    } else {
        TransactionStatus::Declined {
            code: transaction.decline_code,
            hard: transaction.hard_decline,
        }
    };
    let created_at_ms = platform::units::ms_or_epoch(&transaction.create_time);
    Some(Transaction {
        id: transaction.id,
        kind,
        status,
        amount: money_from_wire(transaction.amount),
        reference: transaction.reference,
        idempotency_key: transaction.idempotency_key,
        parent_id: Some(transaction.parent_id).filter(|parent| !parent.is_empty()),
        created_at_ms,
    })
}

/// The status the PSP service answers a port error with.
pub(crate) fn error_to_status(error: &PspError) -> Status {
    let (code, reason, name) = match error {
        PspError::Declined { .. } => (
            Code::FailedPrecondition,
            ErrorReason::PaymentDeclined,
            "declined",
        ),
        PspError::Timeout => (
            Code::DeadlineExceeded,
            ErrorReason::PaymentOutcomeUnknown,
            "timeout",
        ),
        PspError::Unavailable => (
            Code::Unavailable,
            ErrorReason::DependencyUnavailable,
            "unavailable",
        ),
        PspError::CardDataRejected => (
            Code::InvalidArgument,
            ErrorReason::CardDataRejected,
            "card_data_rejected",
        ),
        PspError::InvalidRequest(_) => (
            Code::InvalidArgument,
            ErrorReason::ValidationFailed,
            "invalid_request",
        ),
        PspError::ExceedsAuthorized => (
            Code::FailedPrecondition,
            ErrorReason::TipExceedsAuthorization,
            "exceeds_authorized",
        ),
        PspError::ExceedsCaptured => (
            Code::FailedPrecondition,
            ErrorReason::RefundExceedsCaptured,
            "exceeds_captured",
        ),
        PspError::NotFound => (Code::NotFound, ErrorReason::ResourceNotFound, "not_found"),
        PspError::IdempotencyKeyReused => (
            Code::InvalidArgument,
            ErrorReason::IdempotencyKeyReused,
            "idempotency_key_reused",
        ),
    };
    let mut api = ApiError::new(code, reason, error.to_string()).with_metadata(PSP_ERROR, name);
    if let PspError::Declined { code, hard } = error {
        api = api
            .with_metadata("decline_code", code.clone())
            .with_metadata("hard", hard.to_string());
    }
    if let PspError::InvalidRequest(detail) = error {
        api = api.with_metadata("detail", detail.clone());
    }
    api.into_status(DOMAIN)
}

/// How a call's failure reached the caller: answered by the PSP, or lost on the way.
pub(crate) enum Failure {
    /// The PSP answered with this port error.
    Answered(PspError),
    /// No answer: the request never left (nothing happened) or its reply was lost (unknown).
    Transport { sent: bool },
}

/// Reads a status back into the port's error. A status without the PSP's `psp_error` did not
/// come from the simulator itself: the server's interceptors refused it (nothing happened, unless
/// its deadline cut the handler short), or the transport lost it on the way — whether the request
/// may have been acted on decides between `Unavailable` and `Timeout`.
pub(crate) fn status_to_failure(status: &Status) -> Failure {
    let details = status.get_error_details();
    if let Some(info) = details.error_info() {
        let metadata = |key: &str| info.metadata.get(key).cloned().unwrap_or_default();
        let error = match metadata(PSP_ERROR).as_str() {
            "declined" => PspError::Declined {
                code: metadata("decline_code"),
                hard: metadata("hard") == "true",
            },
            "timeout" => PspError::Timeout,
            "unavailable" => PspError::Unavailable,
            "card_data_rejected" => PspError::CardDataRejected,
            "invalid_request" => PspError::InvalidRequest(metadata("detail")),
            "exceeds_authorized" => PspError::ExceedsAuthorized,
            "exceeds_captured" => PspError::ExceedsCaptured,
            "not_found" => PspError::NotFound,
            "idempotency_key_reused" => PspError::IdempotencyKeyReused,
            _ => {
                let acted = matches!(
                    status.code(),
                    Code::DeadlineExceeded | Code::Cancelled | Code::Internal | Code::Unknown
                );
                return Failure::Transport { sent: acted };
            }
        };
        return Failure::Answered(error);
    }
    let message = status.message().to_ascii_lowercase();
    let never_sent = message.contains("tcp connect error")
        || message.contains("connection refused")
        || message.contains("error trying to connect");
    Failure::Transport { sent: !never_sent }
}
