//! Every amount that reaches points, checked here — behind the contract's validation, which a
//! handler never trusts to have run, and for checkout's events, which no validation sees. The
//! bounds are the platform's ([`platform::limits`]: 10^12 minor units per money amount, 10^9
//! points per operation). A field out of bounds is [`LoyaltyError::Invalid`] naming it (what
//! validation would have said); points computed from valid fields beyond the bound, or a sum
//! that would not fit, are [`LoyaltyError::OutOfRange`]. Either way nothing is written.

use commerce_api::commerce::common::v1::Money;
use commerce_api::commerce::loyalty::v1::{LoyaltyProgram, Reward, reward::Benefit};
use platform::limits::{self, MAX_POINTS, Violation};

use crate::error::LoyaltyError;
use crate::points::{PaidOrder, RefundAmount};

impl From<Violation> for LoyaltyError {
    fn from(violation: Violation) -> Self {
        LoyaltyError::Invalid {
            field: violation.field,
            message: violation.message,
        }
    }
}

/// A paid order's eligible amount and lines.
pub(crate) fn paid_order(order: &PaidOrder) -> Result<(), LoyaltyError> {
    limits::amount("eligible_amount.amount_minor", order.eligible_minor)?;
    for (index, line) in order.lines.iter().enumerate() {
        limits::amount(
            &format!("lines[{index}].amount.amount_minor"),
            line.amount_minor,
        )?;
    }
    Ok(())
}

/// A refund's amount: this refund's, or the order's cumulative refunded amount.
pub(crate) fn refund(amount: &RefundAmount) -> Result<(), LoyaltyError> {
    let minor = match amount {
        RefundAmount::ThisRefund(minor) | RefundAmount::Cumulative(minor) => *minor,
    };
    limits::amount("refunded_amount.amount_minor", minor)?;
    Ok(())
}

/// A manual adjustment: never zero, at most 10^9 points either way.
pub(crate) fn adjustment(points: i64) -> Result<(), LoyaltyError> {
    limits::points_delta("points", points)?;
    Ok(())
}

/// The points an order earns under the program: valid inputs can still multiply (multipliers up
/// to 100×, tiers, campaigns) past the bound of one operation.
pub(crate) fn earned(points: i64) -> Result<i64, LoyaltyError> {
    if points > MAX_POINTS {
        return Err(LoyaltyError::OutOfRange {
            what: "points".into(),
            limit: MAX_POINTS.to_string(),
        });
    }
    Ok(points)
}

/// `total + change` for a per-member running sum (lifetime points, a deficit), refused when it
/// would not fit in 64 bits.
pub(crate) fn add(what: &str, total: i64, change: i64) -> Result<i64, LoyaltyError> {
    total
        .checked_add(change)
        .ok_or_else(|| LoyaltyError::OutOfRange {
            what: what.to_owned(),
            limit: i64::MAX.to_string(),
        })
}

fn money(field: &str, money: Option<&Money>) -> Result<(), LoyaltyError> {
    if let Some(money) = money {
        limits::amount(&format!("{field}.amount_minor"), money.amount_minor)?;
    }
    Ok(())
}

/// A reward's cost and the amounts of its benefit.
pub(crate) fn reward(reward: &Reward) -> Result<(), LoyaltyError> {
    if reward.point_cost <= 0 {
        return Err(LoyaltyError::invalid(
            "reward.point_cost",
            "must be positive",
        ));
    }
    limits::points("reward.point_cost", reward.point_cost)?;
    if let Some(Benefit::AmountOff(amount_off)) = &reward.benefit {
        money("reward.amount_off", Some(amount_off))?;
    }
    if let Some(Benefit::PercentOffBps(bps)) = &reward.benefit {
        limits::within("reward.percent_off_bps", i64::from(*bps), 1..=10_000)?;
    }
    money("reward.max_discount", reward.max_discount.as_ref())
}

/// The program's points and amounts: the spend unit, points per unit, multipliers, bonuses,
/// thresholds, the negative-balance allowance.
pub(crate) fn program(program: &LoyaltyProgram) -> Result<(), LoyaltyError> {
    if let Some(earning) = &program.earning {
        limits::points("program.earning.points", earning.points)?;
        if let Some(per_spend) = &earning.per_spend {
            limits::positive_amount(
                "program.earning.per_spend.amount_minor",
                per_spend.amount_minor,
            )?;
        }
    }
    for (index, multiplier) in program.multipliers.iter().enumerate() {
        limits::within(
            &format!("program.multipliers[{index}].multiplier_bps"),
            i64::from(multiplier.multiplier_bps),
            0..=1_000_000,
        )?;
    }
    for (index, campaign) in program.campaigns.iter().enumerate() {
        let field = format!("program.campaigns[{index}]");
        limits::within(
            &format!("{field}.multiplier_bps"),
            i64::from(campaign.multiplier_bps),
            0..=1_000_000,
        )?;
        limits::points(&format!("{field}.bonus_points"), campaign.bonus_points)?;
        money(&format!("{field}.min_spend"), campaign.min_spend.as_ref())?;
    }
    for (index, tier) in program.tiers.iter().enumerate() {
        let field = format!("program.tiers[{index}]");
        limits::amount(&format!("{field}.threshold"), tier.threshold)?;
        limits::within(
            &format!("{field}.multiplier_bps"),
            i64::from(tier.multiplier_bps),
            0..=1_000_000,
        )?;
    }
    limits::points("program.max_negative_points", program.max_negative_points)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::points::PaidLine;

    #[test]
    fn an_order_beyond_the_money_bound_is_refused_naming_the_field() {
        let order = PaidOrder {
            eligible_minor: i64::MAX,
            ..PaidOrder::default()
        };
        assert!(matches!(
            paid_order(&order),
            Err(LoyaltyError::Invalid { field, .. }) if field == "eligible_amount.amount_minor"
        ));
        let line = PaidOrder {
            eligible_minor: 100,
            lines: vec![
                PaidLine::default(),
                PaidLine {
                    amount_minor: -1,
                    ..PaidLine::default()
                },
            ],
            ..PaidOrder::default()
        };
        assert!(matches!(
            paid_order(&line),
            Err(LoyaltyError::Invalid { field, .. }) if field == "lines[1].amount.amount_minor"
        ));
    }

    #[test]
    fn computed_points_and_sums_beyond_their_bounds_are_out_of_range() {
        assert_eq!(earned(MAX_POINTS).ok(), Some(MAX_POINTS));
        assert!(matches!(
            earned(MAX_POINTS + 1),
            Err(LoyaltyError::OutOfRange { .. })
        ));
        assert!(matches!(
            add("lifetime_points", i64::MAX, 1),
            Err(LoyaltyError::OutOfRange { .. })
        ));
        assert_eq!(add("lifetime_points", -5, 5).ok(), Some(0));
    }
}
