//! Every amount that reaches money here, checked here — behind the contract's validation, which a
//! handler never trusts to have run. The bounds are the platform's ([`platform::limits`]: 10^12
//! minor units per amount) and the contract's (quantities 1..99, modifier repeats 0..20, tips in
//! basis points 0..10 000, tip headroom 0..100 %, tax rates 0..10^6 ppm). A field out of bounds
//! is [`CheckoutError::Invalid`] naming it (what validation would have said); an amount computed
//! from valid fields beyond the bound (a cart's total) is [`CheckoutError::OutOfRange`].

use commerce_api::commerce::checkout::v1::{Location, SelectedModifier, Tip, tip};
use commerce_api::commerce::common::v1::Money;
use platform::limits::{self, MAX_AMOUNT_MINOR, Violation};

use crate::error::CheckoutError;

impl From<Violation> for CheckoutError {
    fn from(violation: Violation) -> Self {
        CheckoutError::Invalid {
            field: violation.field,
            message: violation.message,
        }
    }
}

/// A price or other amount that must not be negative.
pub(crate) fn amount(field: &str, money: &Money) -> Result<(), CheckoutError> {
    limits::amount(&format!("{field}.amount_minor"), money.amount_minor)?;
    Ok(())
}

/// A location's percentages: the tip headroom authorized on top of the total (0..100 %, so a
/// $10 order can never authorize $10,000) and its tax rates (0..100 %).
pub(crate) fn location(location: &Location) -> Result<(), CheckoutError> {
    limits::within(
        "location.tip_headroom_percent",
        i64::from(location.tip_headroom_percent),
        0..=100,
    )?;
    for (index, rate) in location.tax_rates.iter().enumerate() {
        limits::within(
            &format!("location.tax_rates[{index}].rate_ppm"),
            i64::from(rate.rate_ppm),
            0..=1_000_000,
        )?;
    }
    Ok(())
}

/// A cart line's quantity and its modifiers' repeat counts.
pub(crate) fn line(quantity: i32, modifiers: &[SelectedModifier]) -> Result<(), CheckoutError> {
    limits::within("quantity", i64::from(quantity), 1..=99)?;
    for (index, modifier) in modifiers.iter().enumerate() {
        limits::within(
            &format!("modifiers[{index}].quantity"),
            i64::from(modifier.quantity),
            0..=20,
        )?;
    }
    Ok(())
}

/// A cart's tip: an amount, or basis points of the items subtotal (0..100 %).
pub(crate) fn cart_tip(tip: &Tip) -> Result<(), CheckoutError> {
    match &tip.kind {
        Some(tip::Kind::Amount(money)) => amount("tip.amount", money),
        Some(tip::Kind::PercentBps(bps)) => {
            limits::within("tip.percent_bps", i64::from(*bps), 0..=10_000)?;
            Ok(())
        }
        None => Ok(()),
    }
}

/// A cart's total as priced: each input was within bounds, but many lines of large prices can
/// add up past what one payment may move.
pub(crate) fn total(total_minor: i64) -> Result<i64, CheckoutError> {
    if total_minor > MAX_AMOUNT_MINOR {
        return Err(CheckoutError::OutOfRange {
            what: "total".into(),
            limit: MAX_AMOUNT_MINOR.to_string(),
        });
    }
    Ok(total_minor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use commerce_api::commerce::checkout::v1::TaxRate;

    #[test]
    fn a_tip_headroom_of_100000_percent_is_refused_naming_the_field() {
        let location = Location {
            tip_headroom_percent: 100_000,
            ..Location::default()
        };
        assert!(matches!(
            super::location(&location),
            Err(CheckoutError::Invalid { field, .. }) if field == "location.tip_headroom_percent"
        ));
        let taxed = Location {
            tip_headroom_percent: 100,
            tax_rates: vec![TaxRate {
                tax_category: "food".into(),
                rate_ppm: 1_000_001,
            }],
            ..Location::default()
        };
        assert!(super::location(&taxed).is_err());
    }

    #[test]
    fn quantities_tips_and_totals_are_bounded() {
        assert!(line(-5, &[]).is_err());
        assert!(line(1_000_000, &[]).is_err());
        assert!(line(99, &[]).is_ok());
        let repeated = SelectedModifier {
            quantity: 21,
            ..SelectedModifier::default()
        };
        assert!(line(1, &[repeated]).is_err());
        let huge_tip = Tip {
            kind: Some(tip::Kind::Amount(Money {
                currency_code: "USD".into(),
                amount_minor: i64::MAX,
            })),
        };
        assert!(cart_tip(&huge_tip).is_err());
        assert!(matches!(
            total(MAX_AMOUNT_MINOR + 1),
            Err(CheckoutError::OutOfRange { .. })
        ));
        assert_eq!(total(MAX_AMOUNT_MINOR).ok(), Some(MAX_AMOUNT_MINOR));
    }
}
