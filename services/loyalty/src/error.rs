//! The loyalty service's domain errors and their one mapping to API errors.

use commerce_api::commerce::common::v1::ErrorReason;
use ledger::LedgerError;
use platform::ApiError;
use store::StoreError;
use tonic::Code;

/// Error domain of the loyalty services (their `error_domain` option).
pub const ERROR_DOMAIN: &str = "loyalty.commerce.dev";

/// Why a loyalty operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoyaltyError {
    /// No such resource in the tenant.
    #[error("{resource} {id} not found")]
    NotFound {
        /// `member`, `reward`, `redemption`, `order`.
        resource: &'static str,
        /// Its id.
        id: String,
    },
    /// Unregistered members accrue but cannot redeem.
    #[error("member {0} is not registered and cannot redeem")]
    NotRegistered(String),
    /// Too few active points.
    #[error("insufficient points: {available} available, {required} required")]
    InsufficientPoints {
        /// Points the member can spend now.
        available: i64,
        /// Points asked for.
        required: i64,
    },
    /// The reward cannot be redeemed now (inactive, outside its window, above the tier).
    #[error("reward {reward_id} is unavailable: {why}")]
    RewardUnavailable {
        /// The reward.
        reward_id: String,
        /// Why.
        why: String,
    },
    /// The redemption is not in the status the change needs (already resolved, or not yet posted).
    #[error("redemption {redemption_id} is {status}, which does not allow this change")]
    AlreadyResolved {
        /// The redemption.
        redemption_id: String,
        /// Its status name.
        status: String,
    },
    /// The order accrued before with other content.
    #[error("order {order_id} already accrued points with different content")]
    AccrualConflict {
        /// The order.
        order_id: String,
    },
    /// A request that breaks a rule the contract cannot express.
    #[error("{field}: {message}")]
    Invalid {
        /// The field concerned.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// Points computed from valid inputs (an accrual's earnings, a running sum) would pass their
    /// bound; nothing was written.
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
    /// `expected_version` did not match.
    #[error("{resource} is at version {actual}, not {expected}")]
    VersionMismatch {
        /// What was compared.
        resource: &'static str,
        /// Version the caller expected.
        expected: i64,
        /// Version it is at.
        actual: i64,
    },
    /// A concurrent call of the same operation wrote its ledger entry first (the entry id names
    /// the operation); the operation re-reads and answers as a repeat.
    #[error("ledger entry {entry_id} was written concurrently")]
    EntryRaced {
        /// The entry.
        entry_id: String,
    },
    /// Too many writers raced for the same member; the caller may retry.
    #[error("contended: {0}")]
    Contended(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The ledger refused or failed in a way the service should have prevented.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Stored data does not decode.
    #[error("stored loyalty data is unreadable: {0}")]
    Corrupt(String),
}

impl From<platform::page_token::InvalidPageToken> for LoyaltyError {
    fn from(_: platform::page_token::InvalidPageToken) -> Self {
        LoyaltyError::InvalidPageToken
    }
}

impl LoyaltyError {
    /// Invalid `field`.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        LoyaltyError::Invalid {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl From<LoyaltyError> for ApiError {
    fn from(error: LoyaltyError) -> Self {
        let message = error.to_string();
        match error {
            LoyaltyError::NotFound { resource, id } => {
                ApiError::new(Code::NotFound, ErrorReason::ResourceNotFound, message)
                    .with_metadata("resource", resource)
                    .with_metadata("id", id)
            }
            LoyaltyError::NotRegistered(_) => ApiError::new(
                Code::FailedPrecondition,
                ErrorReason::MemberNotRegistered,
                message,
            ),
            LoyaltyError::InsufficientPoints { available, .. } => ApiError::new(
                Code::FailedPrecondition,
                ErrorReason::InsufficientPoints,
                message,
            )
            .with_metadata("available_points", available.to_string()),
            LoyaltyError::RewardUnavailable { .. } => ApiError::new(
                Code::FailedPrecondition,
                ErrorReason::RewardUnavailable,
                message,
            ),
            LoyaltyError::AlreadyResolved { status, .. } => ApiError::new(
                Code::FailedPrecondition,
                ErrorReason::RedemptionAlreadyResolved,
                message,
            )
            .with_metadata("status", status),
            LoyaltyError::AccrualConflict { .. } => {
                ApiError::new(Code::AlreadyExists, ErrorReason::AccrualConflict, message)
            }
            LoyaltyError::Invalid { field, message } => ApiError::new(
                Code::InvalidArgument,
                ErrorReason::ValidationFailed,
                format!("{field}: {message}"),
            )
            .with_field_violation(field, message),
            LoyaltyError::OutOfRange { what, limit } => ApiError::out_of_range(what, limit),
            LoyaltyError::Ledger(LedgerError::AmountOutOfRange { account, .. }) => {
                ApiError::out_of_range(format!("balance of {account}"), i64::MAX)
            }
            LoyaltyError::InvalidPageToken => ApiError::new(
                Code::InvalidArgument,
                ErrorReason::InvalidPageToken,
                message,
            )
            .with_field_violation("page_token", "was not issued by this list"),
            LoyaltyError::VersionMismatch { .. } => {
                ApiError::new(Code::Aborted, ErrorReason::ConcurrentModification, message)
            }
            LoyaltyError::Contended(_)
            | LoyaltyError::EntryRaced { .. }
            | LoyaltyError::Store(StoreError::Conflict { .. }) => ApiError::new(
                Code::Aborted,
                ErrorReason::ConcurrentModification,
                "the member changed concurrently too often; retry",
            ),
            LoyaltyError::Store(StoreError::Backend(detail)) => {
                tracing::warn!(%detail, "loyalty: store unavailable");
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

impl store::Contention for LoyaltyError {
    /// A retry of the whole operation (re-reading everything) may succeed: a writer moved
    /// something this attempt read.
    fn is_conflict(&self) -> bool {
        matches!(
            self,
            LoyaltyError::Store(StoreError::Conflict { .. })
                | LoyaltyError::EntryRaced { .. }
                | LoyaltyError::Ledger(LedgerError::Store(StoreError::Conflict { .. }))
        )
    }

    fn contended(last: Self) -> Self {
        LoyaltyError::Contended(last.to_string())
    }
}

impl From<store::CorruptRecord> for LoyaltyError {
    fn from(corrupt: store::CorruptRecord) -> Self {
        LoyaltyError::Corrupt(corrupt.to_string())
    }
}
