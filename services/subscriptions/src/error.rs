//! The subscriptions engine's domain errors and their one mapping to API errors.

use commerce_api::commerce::common::v1::ErrorReason;
use ledger::LedgerError;
use platform::ApiError;
use store::StoreError;
use tonic::Code;

use crate::periods::PeriodError;
use crate::proration::ProrationError;
use crate::transitions::{IllegalInvoiceTransition, IllegalTransition};

/// Error domain of the subscriptions services (their `error_domain` option).
pub const ERROR_DOMAIN: &str = "subscriptions.commerce.dev";

/// Why a subscriptions operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionsError {
    /// No such resource in the tenant.
    #[error("{resource} {id} not found")]
    NotFound {
        /// `plan`, `subscription`, `invoice`.
        resource: &'static str,
        /// Its id.
        id: String,
    },
    /// The subscription state machine does not allow the action now.
    #[error(transparent)]
    Transition(#[from] IllegalTransition),
    /// The invoice state machine does not allow the action now.
    #[error(transparent)]
    InvoiceTransition(#[from] IllegalInvoiceTransition),
    /// The plan is archived: no new subscriptions or plan changes onto it.
    #[error("plan {0} is archived")]
    PlanArchived(String),
    /// A request that breaks a rule.
    #[error("{field}: {message}")]
    Invalid {
        /// The field concerned.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The payment token looks like a card number.
    #[error("card numbers are not accepted; send a payment provider token")]
    CardDataRejected,
    /// Two amounts in different currencies met (a plan change across currencies).
    #[error("currency mismatch: {0} and {1}")]
    CurrencyMismatch(String, String),
    /// The previewed net amount is no longer what the change would invoice.
    #[error("proration changed: previewed {expected} minor units, now {actual}")]
    ProrationStale {
        /// The caller's previewed net.
        expected: i64,
        /// The net now.
        actual: i64,
    },
    /// A sum of valid amounts (an invoice subtotal, a customer's credit) would not fit in 64
    /// bits; nothing was written.
    #[error("{what} would exceed {limit}")]
    OutOfRange {
        /// What was computed.
        what: String,
        /// The bound.
        limit: String,
    },
    /// A page token this list did not give out.
    #[error("the page token was not issued by this list")]
    InvalidPageToken,
    /// The PSP did not say how a payment attempt ended (timeout, unavailable); the attempt is
    /// kept and repeated with the same idempotency key by the next billing run.
    #[error("payment outcome unknown for invoice {0}; it is retried with the same key")]
    PaymentOutcomeUnknown(String),
    /// A payment attempt for the invoice is in flight with an unknown outcome; voiding or
    /// writing it off now could lose a payment that went through. `PayInvoice` (or the billing
    /// run) settles the attempt with the same PSP keys first.
    #[error(
        "a payment attempt for invoice {0} has an unknown outcome; settle it (PayInvoice) first"
    )]
    PaymentInProgress(String),
    /// Too many writers raced for the same aggregate; the caller may retry.
    #[error("contended: {0}")]
    Contended(String),
    /// A billing period could not be computed.
    #[error(transparent)]
    Period(#[from] PeriodError),
    /// A proration could not be computed.
    #[error(transparent)]
    Proration(#[from] ProrationError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The ledger refused or failed in a way the service should have prevented.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Stored data does not decode.
    #[error("stored subscriptions data is unreadable: {0}")]
    Corrupt(String),
}

impl From<platform::page_token::InvalidPageToken> for SubscriptionsError {
    fn from(_: platform::page_token::InvalidPageToken) -> Self {
        SubscriptionsError::InvalidPageToken
    }
}

impl SubscriptionsError {
    /// Invalid `field`.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        SubscriptionsError::Invalid {
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// Not found.
    pub(crate) fn not_found(resource: &'static str, id: &str) -> Self {
        SubscriptionsError::NotFound {
            resource,
            id: id.to_owned(),
        }
    }
}

impl From<SubscriptionsError> for ApiError {
    fn from(error: SubscriptionsError) -> Self {
        let message = error.to_string();
        match error {
            SubscriptionsError::NotFound { resource, id } => {
                ApiError::new(Code::NotFound, ErrorReason::ResourceNotFound, message)
                    .with_metadata("resource", resource)
                    .with_metadata("id", id)
            }
            SubscriptionsError::Transition(illegal) => ApiError::new(
                Code::FailedPrecondition,
                ErrorReason::SubscriptionTransitionInvalid,
                message,
            )
            .with_metadata("status", illegal.from.as_str_name()),
            SubscriptionsError::InvoiceTransition(illegal) => ApiError::new(
                Code::FailedPrecondition,
                ErrorReason::InvoiceNotPayable,
                message,
            )
            .with_metadata("status", illegal.from.as_str_name()),
            SubscriptionsError::PlanArchived(plan_id) => {
                ApiError::new(Code::FailedPrecondition, ErrorReason::PlanArchived, message)
                    .with_metadata("plan_id", plan_id)
            }
            SubscriptionsError::Invalid { field, message } => ApiError::new(
                Code::InvalidArgument,
                ErrorReason::ValidationFailed,
                format!("{field}: {message}"),
            )
            .with_field_violation(field, message),
            SubscriptionsError::CardDataRejected => ApiError::new(
                Code::InvalidArgument,
                ErrorReason::CardDataRejected,
                message,
            )
            .with_field_violation("payment_token", "looks like a card number"),
            SubscriptionsError::CurrencyMismatch(..) => ApiError::new(
                Code::FailedPrecondition,
                ErrorReason::CurrencyMismatch,
                message,
            ),
            SubscriptionsError::ProrationStale { actual, .. } => ApiError::new(
                Code::FailedPrecondition,
                ErrorReason::ProrationStale,
                message,
            )
            .with_metadata("net_minor", actual.to_string()),
            SubscriptionsError::OutOfRange { what, limit } => ApiError::out_of_range(what, limit),
            SubscriptionsError::Ledger(LedgerError::AmountOutOfRange { account, .. }) => {
                ApiError::out_of_range(format!("balance of {account}"), i64::MAX)
            }
            SubscriptionsError::InvalidPageToken => ApiError::new(
                Code::InvalidArgument,
                ErrorReason::InvalidPageToken,
                message,
            )
            .with_field_violation("page_token", "was not issued by this list"),
            SubscriptionsError::PaymentOutcomeUnknown(_) => ApiError::new(
                Code::Unavailable,
                ErrorReason::PaymentOutcomeUnknown,
                message,
            ),
            SubscriptionsError::PaymentInProgress(invoice_id) => ApiError::new(
                Code::FailedPrecondition,
                ErrorReason::PaymentOutcomeUnknown,
                message,
            )
            .with_metadata("invoice_id", invoice_id),
            SubscriptionsError::Contended(_)
            | SubscriptionsError::Store(StoreError::Conflict { .. }) => ApiError::new(
                Code::Aborted,
                ErrorReason::ConcurrentModification,
                "the subscription changed concurrently too often; retry",
            ),
            SubscriptionsError::Store(StoreError::Backend(detail)) => {
                tracing::warn!(%detail, "subscriptions: store unavailable");
                ApiError::new(
                    Code::Unavailable,
                    ErrorReason::DependencyUnavailable,
                    "the store is unavailable; retry later",
                )
            }
            other => ApiError::internal(other),
        }
    }
}

impl store::Contention for SubscriptionsError {
    /// A retry of the whole operation (re-reading everything) may succeed: a writer moved
    /// something this attempt read.
    fn is_conflict(&self) -> bool {
        matches!(
            self,
            SubscriptionsError::Store(StoreError::Conflict { .. })
                | SubscriptionsError::Ledger(LedgerError::Store(StoreError::Conflict { .. }))
        )
    }

    fn contended(last: Self) -> Self {
        SubscriptionsError::Contended(last.to_string())
    }
}

impl From<store::CorruptRecord> for SubscriptionsError {
    fn from(corrupt: store::CorruptRecord) -> Self {
        SubscriptionsError::Corrupt(corrupt.to_string())
    }
}
