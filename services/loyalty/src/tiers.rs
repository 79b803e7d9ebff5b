//! Which tier a member holds.
//!
//! A member *qualifies* for the highest tier whose `threshold` is at most their qualifying total:
//! points earned or eligible spend (per `tier_basis`) over the rolling `tier_window_days`, which
//! the caller sums. "Highest" is by threshold, then by position in `tiers`, so a misordered
//! program still ranks tiers by what they demand.
//!
//! - **Upgrades are immediate**: qualifying for a tier above the current one moves the member up.
//! - **Downgrades wait out the grace period**: the first evaluation that finds the member below
//!   their tier records `below_since`; only an evaluation at least `tier_downgrade_grace_days` ×
//!   86 400 s later moves them down — straight to the tier they then qualify for (or none), not
//!   one step at a time. Qualifying again before that clears `below_since`. Because
//!   `below_since` is when an evaluation *noticed*, callers should evaluate on every accrual and
//!   reversal and on a daily sweep, so a member is never noticed late.
//! - **`TIER_BASIS_UNSPECIFIED` turns tiers off**: nobody holds a tier, and a member who had one
//!   loses it at once (the program no longer has tiers to keep).
//! - A current tier the program no longer defines is dropped at once in favour of whatever the
//!   member qualifies for; there is nothing left to grant grace on.

use commerce_api::commerce::loyalty::v1::{LoyaltyProgram, Tier, TierBasis};

use crate::SECONDS_PER_DAY;

/// A member's tier state, as stored with the member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentTier {
    /// The tier held (see `LoyaltyProgram.tiers`).
    pub tier_id: String,
    /// When an evaluation first found the member below this tier's threshold; `None` while they
    /// qualify. Starts the downgrade grace period.
    pub below_since: Option<i64>,
}

/// The outcome of [`evaluate`]: the state to store, and whether the tier changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierEvaluation {
    /// The member's tier state after evaluation; `None` for no tier.
    pub tier: Option<CurrentTier>,
    /// Whether the tier id differs from before (emit `TierChanged`). A new `below_since` alone is
    /// not a change of tier, but still has to be stored.
    pub changed: bool,
}

/// Evaluates a member's tier at `now` (unix seconds) given their `qualifying_total` over the
/// program's window (see the [module docs](self) for the rules).
pub fn evaluate(
    program: &LoyaltyProgram,
    qualifying_total: i64,
    current: Option<&CurrentTier>,
    now: i64,
) -> TierEvaluation {
    let tiers_on =
        TierBasis::try_from(program.tier_basis).is_ok_and(|basis| basis != TierBasis::Unspecified);
    if !tiers_on {
        return TierEvaluation {
            tier: None,
            changed: current.is_some(),
        };
    }

    let qualified = program
        .tiers
        .iter()
        .enumerate()
        .filter(|(_, tier)| tier.threshold <= qualifying_total)
        .max_by_key(|&(index, tier)| rank(index, tier));
    let held = current.and_then(|current| {
        program
            .tiers
            .iter()
            .enumerate()
            .find(|(_, tier)| tier.tier_id == current.tier_id)
            .map(|(index, tier)| (rank(index, tier), current))
    });

    let Some((held_rank, current)) = held else {
        // No tier, or one the program dropped: take what the member qualifies for now.
        let tier = qualified.map(|(_, tier)| qualifying(tier));
        let changed =
            current.map(|c| c.tier_id.as_str()) != tier.as_ref().map(|t| t.tier_id.as_str());
        return TierEvaluation { tier, changed };
    };

    match qualified {
        Some((index, tier)) if rank(index, tier) >= held_rank => TierEvaluation {
            changed: tier.tier_id != current.tier_id,
            tier: Some(qualifying(tier)),
        },
        _ => {
            let below_since = current.below_since.unwrap_or(now);
            let grace = i64::from(program.tier_downgrade_grace_days.max(0)) * SECONDS_PER_DAY;
            if now.saturating_sub(below_since) >= grace {
                TierEvaluation {
                    tier: qualified.map(|(_, tier)| qualifying(tier)),
                    changed: true,
                }
            } else {
                TierEvaluation {
                    tier: Some(CurrentTier {
                        tier_id: current.tier_id.clone(),
                        below_since: Some(below_since),
                    }),
                    changed: false,
                }
            }
        }
    }
}

/// Orders tiers by threshold, then by position in the program.
fn rank(index: usize, tier: &Tier) -> (i64, usize) {
    (tier.threshold, index)
}

fn qualifying(tier: &Tier) -> CurrentTier {
    CurrentTier {
        tier_id: tier.tier_id.clone(),
        below_since: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = SECONDS_PER_DAY;

    fn program(grace_days: i32) -> LoyaltyProgram {
        let tier = |id: &str, threshold| Tier {
            tier_id: id.into(),
            threshold,
            ..Tier::default()
        };
        LoyaltyProgram {
            tier_basis: TierBasis::PointsEarned as i32,
            tier_downgrade_grace_days: grace_days,
            tiers: vec![
                tier("silver", 100),
                tier("gold", 1_000),
                tier("platinum", 5_000),
            ],
            ..LoyaltyProgram::default()
        }
    }

    fn held(tier_id: &str, below_since: Option<i64>) -> CurrentTier {
        CurrentTier {
            tier_id: tier_id.into(),
            below_since,
        }
    }

    fn result(tier: Option<CurrentTier>, changed: bool) -> TierEvaluation {
        TierEvaluation { tier, changed }
    }

    #[test]
    fn new_member_gets_the_highest_tier_they_qualify_for() {
        let p = program(30);
        assert_eq!(evaluate(&p, 50, None, 0), result(None, false));
        assert_eq!(
            evaluate(&p, 100, None, 0),
            result(Some(held("silver", None)), true)
        );
        assert_eq!(
            evaluate(&p, 4_999, None, 0),
            result(Some(held("gold", None)), true)
        );
    }

    #[test]
    fn upgrade_is_immediate_and_clears_a_pending_downgrade() {
        let p = program(30);
        let silver_slipping = held("silver", Some(0));
        assert_eq!(
            evaluate(&p, 6_000, Some(&silver_slipping), DAY),
            result(Some(held("platinum", None)), true)
        );
    }

    #[test]
    fn requalifying_keeps_the_tier_and_clears_below_since() {
        let p = program(30);
        assert_eq!(
            evaluate(&p, 1_200, Some(&held("gold", Some(0))), 5 * DAY),
            result(Some(held("gold", None)), false)
        );
    }

    #[test]
    fn downgrade_waits_for_the_grace_period_then_drops_to_the_qualified_tier() {
        let p = program(30);
        let gold = held("gold", None);

        // First time below: keep gold, start the clock.
        let noticed = evaluate(&p, 500, Some(&gold), 10 * DAY);
        assert_eq!(noticed, result(Some(held("gold", Some(10 * DAY))), false));

        // One second short of 30 days: still gold.
        let state = noticed.tier.expect("still has a tier");
        assert_eq!(
            evaluate(&p, 500, Some(&state), 40 * DAY - 1),
            result(Some(held("gold", Some(10 * DAY))), false)
        );

        // 30 days on: silver.
        assert_eq!(
            evaluate(&p, 500, Some(&state), 40 * DAY),
            result(Some(held("silver", None)), true)
        );
        // Below every threshold: no tier at all.
        assert_eq!(evaluate(&p, 0, Some(&state), 40 * DAY), result(None, true));
    }

    #[test]
    fn zero_grace_downgrades_at_once() {
        let p = program(0);
        assert_eq!(
            evaluate(&p, 200, Some(&held("platinum", None)), 0),
            result(Some(held("silver", None)), true)
        );
    }

    #[test]
    fn unspecified_basis_means_no_tiers() {
        let mut p = program(30);
        p.tier_basis = TierBasis::Unspecified as i32;
        assert_eq!(evaluate(&p, 10_000, None, 0), result(None, false));
        assert_eq!(
            evaluate(&p, 10_000, Some(&held("gold", None)), 0),
            result(None, true)
        );
    }

    #[test]
    fn a_tier_the_program_dropped_is_replaced_at_once() {
        let p = program(30);
        assert_eq!(
            evaluate(&p, 1_500, Some(&held("bronze", None)), 0),
            result(Some(held("gold", None)), true)
        );
        assert_eq!(
            evaluate(&p, 0, Some(&held("bronze", None)), 0),
            result(None, true)
        );
    }

    #[test]
    fn tiers_are_ranked_by_threshold_even_when_misordered() {
        let mut p = program(30);
        p.tiers.reverse();
        assert_eq!(
            evaluate(&p, 1_500, None, 0),
            result(Some(held("gold", None)), true)
        );
    }
}
