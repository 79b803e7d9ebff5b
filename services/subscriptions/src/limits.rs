//! Every amount that reaches money here, checked here — behind the contract's validation, which a
//! handler never trusts to have run. The bound is the platform's ([`platform::limits`]: 10^12
//! minor units per amount). A field out of bounds is [`SubscriptionsError::Invalid`] naming it
//! (what validation would have said); a sum of valid amounts that would not fit (an invoice's
//! subtotal, a customer's credit) is [`SubscriptionsError::OutOfRange`].

use platform::limits::{self, Violation};

use crate::error::SubscriptionsError;

impl From<Violation> for SubscriptionsError {
    fn from(violation: Violation) -> Self {
        SubscriptionsError::Invalid {
            field: violation.field,
            message: violation.message,
        }
    }
}

/// A plan's price: `0..=10^12` minor units.
pub(crate) fn price(minor: i64) -> Result<i64, SubscriptionsError> {
    Ok(limits::amount("price.amount_minor", minor)?)
}

/// `total + change`, refused when it would not fit in 64 bits.
pub(crate) fn add(what: &str, total: i64, change: i64) -> Result<i64, SubscriptionsError> {
    total
        .checked_add(change)
        .ok_or_else(|| SubscriptionsError::OutOfRange {
            what: what.to_owned(),
            limit: i64::MAX.to_string(),
        })
}

/// The sum of `amounts`, refused when it would not fit in 64 bits.
pub(crate) fn sum(
    what: &str,
    amounts: impl IntoIterator<Item = i64>,
) -> Result<i64, SubscriptionsError> {
    amounts
        .into_iter()
        .try_fold(0i64, |total, amount| add(what, total, amount))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_are_bounded_and_sums_never_wrap() {
        assert!(price(platform::limits::MAX_AMOUNT_MINOR).is_ok());
        assert!(matches!(
            price(i64::MAX),
            Err(SubscriptionsError::Invalid { field, .. }) if field == "price.amount_minor"
        ));
        assert!(price(-1).is_err());
        assert_eq!(sum("subtotal", [5, -3, 10]).ok(), Some(12));
        assert!(matches!(
            sum("subtotal", [i64::MAX, 1]),
            Err(SubscriptionsError::OutOfRange { .. })
        ));
    }
}
