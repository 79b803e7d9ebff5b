//! What changing plan in the middle of a billing period credits and charges.
//!
//! The customer paid the old price for the whole period `[start, end)` and changes plan at `t`.
//! With `remaining = end − t`:
//!
//! - **credit** = `floor(old_price × remaining / period_length)`: the unused part of the old price,
//!   returned as a negative invoice line;
//! - **charge** = `floor(new_price × remaining / period_length)`: the rest of the period on the new
//!   price;
//! - **net** = `charge − credit amount`: what the immediate invoice collects (or, when negative,
//!   the customer credit it leaves).
//!
//! # The rounding rule: round each line down, on whole milliseconds
//!
//! Each line is rounded down (toward zero; prices are never negative) once, from the exact
//! fraction computed with `i128` intermediates, so there is no floating point and no intermediate
//! rounding. Why down:
//!
//! - **No line is ever worth more than the time it covers.** The credit never gives back more
//!   than the exact unused value of what was paid, and the charge never bills more than the exact
//!   value of the time left. Each line is within one minor unit below its exact value.
//! - **The same price nets to exactly 0**: both lines are the same function of the same inputs,
//!   so changing between two plans of equal price never produces a stray cent either way.
//! - **An upgrade never credits and a downgrade never charges**: rounding down is monotonic in
//!   the price, so `new ≥ old` gives `net ≥ 0` and `new ≤ old` gives `net ≤ 0`.
//! - **The edges are exact**: at `t = start` the lines are the full prices; at `t = end`, zero.
//!
//! It is also the house rule elsewhere (loyalty points round down), so one rule reads everywhere.
//! Both prices must be in the same currency; the caller checks that, since only minor units
//! reach this module.

use crate::periods::Period;

/// The amounts a plan change produces, in minor units of the plans' currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proration {
    /// Credit for unused time on the old price, as a (negative or zero) invoice line amount.
    pub credit_minor: i64,
    /// Charge for the rest of the period on the new price (zero or positive).
    pub charge_minor: i64,
    /// `credit_minor + charge_minor`: collected when positive, left as customer credit when
    /// negative.
    pub net_minor: i64,
}

/// Why a plan change could not be prorated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProrationError {
    /// A price is negative; plan prices are amounts owed, never credits.
    #[error("price {0} minor units is negative")]
    NegativePrice(i64),
    /// The period ends at or before it starts, so there is no time to share out.
    #[error("period [{start_ms}, {end_ms}) is empty")]
    EmptyPeriod {
        /// Start of the period given.
        start_ms: i64,
        /// End of the period given.
        end_ms: i64,
    },
    /// A prorated line does not fit in 64 bits (cannot happen for a change inside the period; the
    /// narrowing is checked rather than trusted).
    #[error("a prorated amount overflows 64 bits")]
    Overflow,
    /// The change time is outside `[start, end]`: it belongs to another period.
    #[error("change time {change_ms} is outside the period [{start_ms}, {end_ms}]")]
    ChangeOutsidePeriod {
        /// The change time given.
        change_ms: i64,
        /// Start of the period.
        start_ms: i64,
        /// End of the period.
        end_ms: i64,
    },
}

/// Prorates a change from `old_price_minor` to `new_price_minor` (per period, same currency) at
/// `change_ms` within `period` (see the [module docs](self) for the rule). `change_ms` may equal
/// `period.end_ms`, where nothing is left to prorate.
pub fn prorate(
    old_price_minor: i64,
    new_price_minor: i64,
    period: Period,
    change_ms: i64,
) -> Result<Proration, ProrationError> {
    for price in [old_price_minor, new_price_minor] {
        if price < 0 {
            return Err(ProrationError::NegativePrice(price));
        }
    }
    let Period { start_ms, end_ms } = period;
    if end_ms <= start_ms {
        return Err(ProrationError::EmptyPeriod { start_ms, end_ms });
    }
    if change_ms < start_ms || change_ms > end_ms {
        return Err(ProrationError::ChangeOutsidePeriod {
            change_ms,
            start_ms,
            end_ms,
        });
    }
    // i128 because the differences of two i64 instants and the products with a price can both
    // exceed i64.
    let period_ms = i128::from(end_ms) - i128::from(start_ms);
    let remaining_ms = i128::from(end_ms) - i128::from(change_ms);
    let credit_minor = -unused_part(old_price_minor, remaining_ms, period_ms)?;
    let charge_minor = unused_part(new_price_minor, remaining_ms, period_ms)?;
    Ok(Proration {
        credit_minor,
        charge_minor,
        // Both lines are within [−i64::MAX, i64::MAX] with opposite signs, so the sum fits.
        net_minor: credit_minor + charge_minor,
    })
}

/// `floor(price × remaining / period)` for `0 ≤ remaining ≤ period` and `price ≥ 0`; the result
/// is at most `price`, so it fits an i64 — narrowed with a check all the same, never a panic.
fn unused_part(
    price_minor: i64,
    remaining_ms: i128,
    period_ms: i128,
) -> Result<i64, ProrationError> {
    let part = i128::from(price_minor) * remaining_ms / period_ms;
    i64::try_from(part).map_err(|_| ProrationError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MILLIS_PER_DAY;
    use proptest::prelude::*;

    const THIRTY_DAYS: Period = Period {
        start_ms: 0,
        end_ms: 30 * MILLIS_PER_DAY,
    };

    #[test]
    fn halfway_upgrade_credits_half_the_old_price_and_charges_half_the_new() {
        let proration = prorate(1_000, 3_000, THIRTY_DAYS, 15 * MILLIS_PER_DAY).unwrap();
        assert_eq!(
            proration,
            Proration {
                credit_minor: -500,
                charge_minor: 1_500,
                net_minor: 1_000,
            }
        );
    }

    #[test]
    fn downgrade_leaves_a_negative_net_as_customer_credit() {
        let proration = prorate(3_000, 1_000, THIRTY_DAYS, 10 * MILLIS_PER_DAY).unwrap();
        assert_eq!(proration.credit_minor, -2_000);
        assert_eq!(proration.charge_minor, 666); // 666.67 rounded down
        assert_eq!(proration.net_minor, -1_334);
    }

    #[test]
    fn each_line_rounds_down_on_its_own() {
        // One third of the period left: 999 → 333 exactly, 1_000 → 333.33 → 333.
        let proration = prorate(999, 1_000, THIRTY_DAYS, 20 * MILLIS_PER_DAY).unwrap();
        assert_eq!(proration.credit_minor, -333);
        assert_eq!(proration.charge_minor, 333);
        assert_eq!(proration.net_minor, 0);
        // One millisecond in: just under the full price, rounded down.
        let proration = prorate(1_000, 1_000, THIRTY_DAYS, 1).unwrap();
        assert_eq!(proration.credit_minor, -999);
        assert_eq!(proration.charge_minor, 999);
    }

    #[test]
    fn edges_of_the_period_are_exact() {
        let at_start = prorate(1_234, 5_678, THIRTY_DAYS, 0).unwrap();
        assert_eq!(
            (at_start.credit_minor, at_start.charge_minor),
            (-1_234, 5_678)
        );
        let at_end = prorate(1_234, 5_678, THIRTY_DAYS, THIRTY_DAYS.end_ms).unwrap();
        assert_eq!(
            at_end,
            Proration {
                credit_minor: 0,
                charge_minor: 0,
                net_minor: 0,
            }
        );
    }

    #[test]
    fn huge_prices_and_periods_do_not_overflow() {
        let period = Period {
            start_ms: i64::MIN,
            end_ms: i64::MAX,
        };
        let proration = prorate(i64::MAX, i64::MAX, period, 0).unwrap();
        assert_eq!(proration.credit_minor, -(i64::MAX / 2));
        assert_eq!(proration.net_minor, 0);
    }

    #[test]
    fn invalid_inputs_are_rejected() {
        assert_eq!(
            prorate(-1, 100, THIRTY_DAYS, 0),
            Err(ProrationError::NegativePrice(-1))
        );
        assert_eq!(
            prorate(100, -5, THIRTY_DAYS, 0),
            Err(ProrationError::NegativePrice(-5))
        );
        let empty = Period {
            start_ms: 10,
            end_ms: 10,
        };
        assert_eq!(
            prorate(100, 100, empty, 10),
            Err(ProrationError::EmptyPeriod {
                start_ms: 10,
                end_ms: 10,
            })
        );
        assert_eq!(
            prorate(100, 100, THIRTY_DAYS, -1),
            Err(ProrationError::ChangeOutsidePeriod {
                change_ms: -1,
                start_ms: 0,
                end_ms: THIRTY_DAYS.end_ms,
            })
        );
        assert!(prorate(100, 100, THIRTY_DAYS, THIRTY_DAYS.end_ms + 1).is_err());
    }

    /// A period of 1 ms to ~10 years starting anywhere in a wide range, and a time within it.
    fn period_and_time() -> impl Strategy<Value = (Period, i64)> {
        (
            -1_000_000_000_000i64..4_000_000_000_000,
            1i64..320_000_000_000,
        )
            .prop_flat_map(|(start_ms, length_ms)| {
                let period = Period {
                    start_ms,
                    end_ms: start_ms + length_ms,
                };
                (Just(period), period.start_ms..=period.end_ms)
            })
    }

    proptest! {
        #[test]
        fn lines_stay_within_their_prices_and_round_down_from_the_exact_value(
            old in 0i64..=i64::MAX,
            new in 0i64..=i64::MAX,
            (period, change) in period_and_time(),
        ) {
            let proration = prorate(old, new, period, change).unwrap();
            prop_assert!(proration.credit_minor <= 0 && -proration.credit_minor <= old);
            prop_assert!(proration.charge_minor >= 0 && proration.charge_minor <= new);
            prop_assert_eq!(proration.net_minor, proration.credit_minor + proration.charge_minor);
            // line × period ≤ price × remaining < (line + 1) × period: floor of the exact value.
            let remaining = i128::from(period.end_ms - change);
            let length = i128::from(period.length_ms());
            for (line, price) in [(-proration.credit_minor, old), (proration.charge_minor, new)] {
                let exact_times_length = i128::from(price) * remaining;
                prop_assert!(i128::from(line) * length <= exact_times_length);
                prop_assert!(exact_times_length < (i128::from(line) + 1) * length);
            }
        }

        #[test]
        fn full_prices_at_the_start_and_nothing_at_the_end(
            old in 0i64..=i64::MAX,
            new in 0i64..=i64::MAX,
            (period, _) in period_and_time(),
        ) {
            let at_start = prorate(old, new, period, period.start_ms).unwrap();
            prop_assert_eq!((at_start.credit_minor, at_start.charge_minor), (-old, new));
            let at_end = prorate(old, new, period, period.end_ms).unwrap();
            prop_assert_eq!((at_end.credit_minor, at_end.charge_minor, at_end.net_minor), (0, 0, 0));
        }

        #[test]
        fn changing_between_equal_prices_nets_exactly_zero(
            price in 0i64..=i64::MAX,
            (period, change) in period_and_time(),
        ) {
            prop_assert_eq!(prorate(price, price, period, change).unwrap().net_minor, 0);
        }

        #[test]
        fn upgrades_never_credit_and_downgrades_never_charge_on_net(
            old in 0i64..=i64::MAX,
            new in 0i64..=i64::MAX,
            (period, change) in period_and_time(),
        ) {
            let net = prorate(old, new, period, change).unwrap().net_minor;
            if new >= old {
                prop_assert!(net >= 0);
            }
            if new <= old {
                prop_assert!(net <= 0);
            }
        }

        #[test]
        fn a_later_change_never_credits_or_charges_more(
            old in 0i64..=i64::MAX,
            new in 0i64..=i64::MAX,
            (period, change) in period_and_time(),
            later_by in 0i64..1_000_000_000,
        ) {
            let later = change.saturating_add(later_by).min(period.end_ms);
            let earlier = prorate(old, new, period, change).unwrap();
            let then = prorate(old, new, period, later).unwrap();
            prop_assert!(then.credit_minor >= earlier.credit_minor);
            prop_assert!(then.charge_minor <= earlier.charge_minor);
        }
    }
}
