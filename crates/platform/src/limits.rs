//! The bounds every money and points amount lives within — the same numbers as the contract's
//! `buf.validate` rules (`commerce.common.v1.Money.amount_minor`, `AdjustPointsRequest.points`,
//! …; a test keeps them equal) — and the checks services make with them behind validation, so
//! a handler never trusts that validation ran.
//!
//! Why these numbers: an int64 holds 9.2 × 10^18. One amount of at most 10^12 minor units (USD
//! 10 billion) and one points operation of at most 10^9 points are far beyond anything a
//! quick-service or SME merchant sees, yet millions (money) and billions (points) of maximal
//! operations would be needed before a tenant's 64-bit sums could overflow; and every sum is
//! checked anyway, so an overflow is refused, never wrapped.
//!
//! Two kinds of refusal, deliberately distinct:
//! - a request **field** outside its bound is the caller's mistake, answered as validation would
//!   have answered it: `invalid_argument` / `VALIDATION_FAILED` naming the field ([`Violation`]);
//! - an amount **computed** from valid fields (points earned, a cart's total, a balance after the
//!   change) beyond its bound is `out_of_range` / `AMOUNT_OUT_OF_RANGE` ([`ApiError::out_of_range`]):
//!   each input was fine, the combination is not, and nothing was changed.

use crate::ApiError;
use commerce_api::commerce::common::v1::ErrorReason;
use tonic::Code;

/// Largest magnitude of a money amount, in minor units: 10^12.
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000;

/// Largest magnitude of one points operation (an accrual, an adjustment, a reward's cost): 10^9.
pub const MAX_POINTS: i64 = 1_000_000_000;

/// A request field outside its bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The field's path in the request, e.g. `eligible_amount.amount_minor`.
    pub field: String,
    /// What the bound is.
    pub message: String,
}

impl Violation {
    fn new(field: &str, message: String) -> Self {
        Violation {
            field: field.to_owned(),
            message,
        }
    }
}

/// A money amount that must not be negative (a price, a tip, an eligible or refunded amount):
/// `0..=MAX_AMOUNT_MINOR`.
pub fn amount(field: &str, minor: i64) -> Result<i64, Violation> {
    if (0..=MAX_AMOUNT_MINOR).contains(&minor) {
        Ok(minor)
    } else {
        Err(Violation::new(
            field,
            format!("must be 0 to {MAX_AMOUNT_MINOR} minor units, got {minor}"),
        ))
    }
}

/// A positive money amount (a spend unit): `1..=MAX_AMOUNT_MINOR`.
pub fn positive_amount(field: &str, minor: i64) -> Result<i64, Violation> {
    if (1..=MAX_AMOUNT_MINOR).contains(&minor) {
        Ok(minor)
    } else {
        Err(Violation::new(
            field,
            format!("must be 1 to {MAX_AMOUNT_MINOR} minor units, got {minor}"),
        ))
    }
}

/// A points quantity that must not be negative (a cost, a bonus, an allowance):
/// `0..=MAX_POINTS`.
pub fn points(field: &str, points: i64) -> Result<i64, Violation> {
    if (0..=MAX_POINTS).contains(&points) {
        Ok(points)
    } else {
        Err(Violation::new(
            field,
            format!("must be 0 to {MAX_POINTS} points, got {points}"),
        ))
    }
}

/// A points change either way (an adjustment): `-MAX_POINTS..=MAX_POINTS`, never zero.
pub fn points_delta(field: &str, points: i64) -> Result<i64, Violation> {
    if points != 0 && (-MAX_POINTS..=MAX_POINTS).contains(&points) {
        Ok(points)
    } else {
        Err(Violation::new(
            field,
            format!("must be -{MAX_POINTS} to {MAX_POINTS} points and not 0, got {points}"),
        ))
    }
}

/// An integer field within `range` (a quantity, a percentage, basis points).
pub fn within(
    field: &str,
    value: i64,
    range: std::ops::RangeInclusive<i64>,
) -> Result<i64, Violation> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(Violation::new(
            field,
            format!("must be {} to {}, got {value}", range.start(), range.end()),
        ))
    }
}

impl From<Violation> for ApiError {
    fn from(violation: Violation) -> Self {
        ApiError::new(
            Code::InvalidArgument,
            ErrorReason::ValidationFailed,
            format!("{}: {}", violation.field, violation.message),
        )
        .with_field_violation(violation.field, violation.message)
    }
}

impl ApiError {
    /// An amount computed from the request (`what`: `points`, `total`, `balance of …`) would
    /// pass `limit`: OUT_OF_RANGE / `AMOUNT_OUT_OF_RANGE` with metadata `field` and `limit`.
    pub fn out_of_range(what: impl Into<String>, limit: impl std::fmt::Display) -> Self {
        let what = what.into();
        let limit = limit.to_string();
        ApiError::new(
            Code::OutOfRange,
            ErrorReason::AmountOutOfRange,
            format!("{what} would exceed {limit}; nothing was changed"),
        )
        .with_metadata("field", what)
        .with_metadata("limit", limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_accept_their_edges_and_refuse_one_past() {
        assert_eq!(amount("a", 0), Ok(0));
        assert_eq!(amount("a", MAX_AMOUNT_MINOR), Ok(MAX_AMOUNT_MINOR));
        assert!(amount("a", MAX_AMOUNT_MINOR + 1).is_err());
        assert!(amount("a", -1).is_err());
        assert!(amount("a", i64::MAX).is_err());
        assert!(positive_amount("a", 0).is_err());
        assert_eq!(points("p", MAX_POINTS), Ok(MAX_POINTS));
        assert!(points("p", MAX_POINTS + 1).is_err());
        assert_eq!(points_delta("p", -MAX_POINTS), Ok(-MAX_POINTS));
        assert!(points_delta("p", 0).is_err());
        assert!(points_delta("p", i64::MIN).is_err());
        assert!(within("q", 100, 1..=99).is_err());
    }

    /// The contract's rules are the same numbers: at the bound passes validation, one past fails.
    #[test]
    fn the_contract_bounds_money_and_points_with_these_numbers() {
        use commerce_api::commerce::common::v1::Money;
        use commerce_api::commerce::loyalty::v1::AdjustPointsRequest;
        use prost_reflect::ReflectMessage as _;
        let validator = prost_protovalidate::Validator::new();
        let valid = |message: &dyn Fn() -> prost_reflect::DynamicMessage| {
            validator.validate(&message()).is_ok()
        };
        let money = |minor: i64| {
            move || {
                Money {
                    currency_code: "USD".into(),
                    amount_minor: minor,
                }
                .transcode_to_dynamic()
            }
        };
        assert!(valid(&money(MAX_AMOUNT_MINOR)));
        assert!(
            valid(&money(-MAX_AMOUNT_MINOR)),
            "credits are as wide as debits"
        );
        assert!(!valid(&money(MAX_AMOUNT_MINOR + 1)));
        assert!(!valid(&money(-MAX_AMOUNT_MINOR - 1)));
        let adjust = |points: i64| {
            move || {
                AdjustPointsRequest {
                    member_id: "m".into(),
                    points,
                    reason: "why".into(),
                }
                .transcode_to_dynamic()
            }
        };
        assert!(valid(&adjust(MAX_POINTS)) && valid(&adjust(-MAX_POINTS)));
        assert!(!valid(&adjust(MAX_POINTS + 1)) && !valid(&adjust(-MAX_POINTS - 1)));
    }

    #[test]
    fn a_violation_is_answered_as_validation_would_answer_it() {
        use tonic_types::StatusExt as _;
        let status = ApiError::from(amount("eligible_amount.amount_minor", i64::MAX).unwrap_err())
            .into_status("loyalty.commerce.dev");
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "VALIDATION_FAILED");
        assert_eq!(
            details.bad_request().unwrap().field_violations[0].field,
            "eligible_amount.amount_minor"
        );
    }

    #[test]
    fn a_computed_amount_out_of_range_names_what_and_the_limit() {
        use tonic_types::StatusExt as _;
        let status = ApiError::out_of_range("points", MAX_POINTS).into_status("d");
        assert_eq!(status.code(), Code::OutOfRange);
        let info = status.get_error_details().error_info().unwrap().clone();
        assert_eq!(info.reason, "AMOUNT_OUT_OF_RANGE");
        assert_eq!(info.metadata["field"], "points");
        assert_eq!(info.metadata["limit"], MAX_POINTS.to_string());
    }
}
