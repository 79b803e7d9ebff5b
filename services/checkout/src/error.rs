//! Checkout's domain errors and their one mapping to API errors.

use commerce_api::commerce::common::v1::ErrorReason;
use platform::ApiError;
use store::StoreError;
use tonic::Code;

/// Error domain of the checkout services (their `error_domain` option).
pub const ERROR_DOMAIN: &str = "checkout.commerce.dev";

/// Why a checkout operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckoutError {
    /// No such resource in the tenant.
    #[error("{resource} {id} not found")]
    NotFound {
        /// `location`, `menu item`, ...
        resource: &'static str,
        /// Its id.
        id: String,
    },
    /// A unique key is taken.
    #[error("{resource} {id} already exists")]
    AlreadyExists {
        /// What is unique (`sku`).
        resource: &'static str,
        /// The taken value.
        id: String,
    },
    /// A request that breaks a rule the contract's field constraints cannot state.
    #[error("{field}: {message}")]
    Invalid {
        /// The field concerned.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// Modifier choices break the item's groups.
    #[error("{message}")]
    ModifierInvalid {
        /// What is wrong.
        message: String,
    },
    /// A business rule refuses the request now (cart expired, store closed, item sold out...).
    #[error("{message}")]
    Precondition {
        /// The stable reason.
        reason: ErrorReason,
        /// What is wrong.
        message: String,
    },
    /// A dependency (Redis for carts, the tax hook, the PSP) failed; retry later.
    #[error("{what} is unavailable")]
    Unavailable {
        /// The dependency.
        what: &'static str,
        /// The stable reason.
        reason: ErrorReason,
    },
    /// The requested time slot is full and the location does not shift orders.
    #[error("the requested time slot is full")]
    SlotFull {
        /// The next slot with room (unix ms), if one was found.
        next_available_ms: Option<i64>,
    },
    /// The cart has placed an order already (or is placing one): a cart places at most one.
    #[error("cart {cart_id} has already placed order {order_id}")]
    CartAlreadyOrdered {
        /// The cart.
        cart_id: String,
        /// The order it placed (or is placing).
        order_id: String,
    },
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
    /// An amount computed from valid inputs (a cart's total) would pass its bound; nothing was
    /// written.
    #[error("{what} would exceed {limit}")]
    OutOfRange {
        /// What was computed.
        what: String,
        /// The bound.
        limit: String,
    },
    /// A page token this list did not give out.
    #[error(transparent)]
    PageToken(#[from] platform::page_token::InvalidPageToken),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stored data does not decode (or holds a value this build does not know, such as an
    /// unknown placement step).
    #[error("stored checkout data is unreadable: {0}")]
    Corrupt(String),
    /// Every attempt of a read-modify-write lost its race to another writer, up to the bounded
    /// number of attempts; the caller may retry.
    #[error("contended: {0}")]
    Contended(String),
    /// The money ledger refused a posting (a bug or tampering: postings are built balanced).
    #[error("money ledger: {0}")]
    Ledger(String),
}

impl From<ledger::LedgerError> for CheckoutError {
    fn from(error: ledger::LedgerError) -> Self {
        match error {
            ledger::LedgerError::Store(store) => CheckoutError::Store(store),
            other => CheckoutError::Ledger(other.to_string()),
        }
    }
}

impl From<store::CorruptRecord> for CheckoutError {
    fn from(corrupt: store::CorruptRecord) -> Self {
        CheckoutError::Corrupt(corrupt.to_string())
    }
}

impl CheckoutError {
    /// Invalid `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        CheckoutError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Whether re-reading and trying again may succeed (a concurrent writer won).
    pub fn is_conflict(&self) -> bool {
        matches!(self, CheckoutError::Store(StoreError::Conflict { .. }))
    }
}

impl store::Contention for CheckoutError {
    /// Only a lost compare-and-set is worth re-running the whole read-compute-commit; a
    /// [`CheckoutError::Contended`] from a nested retry already used up its attempts.
    fn is_conflict(&self) -> bool {
        CheckoutError::is_conflict(self)
    }

    fn contended(last: Self) -> Self {
        tracing::warn!(error = %last, "checkout: gave up after losing every attempt's race");
        CheckoutError::Contended(last.to_string())
    }
}

impl From<CheckoutError> for ApiError {
    fn from(error: CheckoutError) -> Self {
        let message = error.to_string();
        match error {
            CheckoutError::NotFound { resource, id } => {
                ApiError::new(Code::NotFound, ErrorReason::ResourceNotFound, message)
                    .with_metadata("resource", resource)
                    .with_metadata("id", id)
            }
            CheckoutError::AlreadyExists { resource, id } => ApiError::new(
                Code::AlreadyExists,
                ErrorReason::ResourceAlreadyExists,
                message,
            )
            .with_metadata("resource", resource)
            .with_metadata("id", id),
            CheckoutError::Invalid { field, message } => ApiError::new(
                Code::InvalidArgument,
                ErrorReason::ValidationFailed,
                format!("{field}: {message}"),
            )
            .with_field_violation(field, message),
            CheckoutError::ModifierInvalid { message } => ApiError::new(
                Code::InvalidArgument,
                ErrorReason::ModifierSelectionInvalid,
                message.clone(),
            )
            .with_field_violation("modifiers", message),
            CheckoutError::Precondition { reason, message } => {
                ApiError::new(Code::FailedPrecondition, reason, message)
            }
            CheckoutError::Unavailable { reason, .. } => {
                ApiError::new(Code::Unavailable, reason, message)
                    .with_retry_after(std::time::Duration::from_secs(1))
            }
            CheckoutError::SlotFull { next_available_ms } => {
                let error = ApiError::new(Code::FailedPrecondition, ErrorReason::SlotFull, message);
                match next_available_ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok()) {
                    Some(next) => error.with_metadata("next_available_time", next.to_string()),
                    None => error,
                }
            }
            CheckoutError::CartAlreadyOrdered { cart_id, order_id } => ApiError::new(
                Code::FailedPrecondition,
                ErrorReason::CartAlreadyOrdered,
                message,
            )
            .with_metadata("order_id", order_id)
            .with_metadata("cart_id", cart_id),
            CheckoutError::VersionMismatch { .. } => {
                ApiError::new(Code::Aborted, ErrorReason::ConcurrentModification, message)
            }
            CheckoutError::OutOfRange { what, limit } => ApiError::out_of_range(what, limit),
            CheckoutError::PageToken(invalid) => invalid.into(),
            CheckoutError::Store(StoreError::Conflict { .. }) => ApiError::new(
                Code::Aborted,
                ErrorReason::ConcurrentModification,
                "the resource changed concurrently; re-read and retry",
            ),
            CheckoutError::Contended(_) => ApiError::new(
                Code::Aborted,
                ErrorReason::ConcurrentModification,
                "the resource changed concurrently too often; retry",
            ),
            CheckoutError::Store(StoreError::Backend(detail)) => {
                tracing::warn!(%detail, "checkout: store unavailable");
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

#[cfg(test)]
mod tests {
    use super::{CheckoutError, ERROR_DOMAIN};
    use platform::ApiError;
    use tonic_types::StatusExt as _;

    #[test]
    fn a_cart_already_ordered_names_the_order_in_its_error_info() {
        let status = ApiError::from(CheckoutError::CartAlreadyOrdered {
            cart_id: "cart-1".into(),
            order_id: "ord-1".into(),
        })
        .into_status(ERROR_DOMAIN);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "CART_ALREADY_ORDERED");
        assert_eq!(
            info.metadata.get("order_id").map(String::as_str),
            Some("ord-1")
        );
        assert_eq!(
            info.metadata.get("cart_id").map(String::as_str),
            Some("cart-1")
        );
    }
}
