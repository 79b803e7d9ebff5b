//! Points as lots: each accrual is a lot that is *pending* until it activates, *active* until it
//! expires, and *expired* from then on. These functions decide which lots a redemption, a refund
//! reversal or an expiry run draws from; the caller records the result in the ledger.
//!
//! A lot is pending while `now < activates_at`, expired once `now ≥ expires_at` (expiry is
//! exclusive, see [`crate::expiry`]), and active in between. Lots with no points left are ignored.

use std::cmp::Ordering;
use std::collections::BTreeMap;

/// A batch of points from one accrual.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lot {
    /// Stable id, used to break ties and to name the lot in allocations.
    pub lot_id: String,
    /// Points not yet spent, reversed or expired.
    pub points_remaining: i64,
    /// When the points become spendable (unix seconds).
    pub activates_at: i64,
    /// When the points expire (unix seconds, exclusive); `None` for never.
    pub expires_at: Option<i64>,
}

impl Lot {
    /// Whether the lot has not activated yet at `now`.
    pub fn is_pending(&self, now: i64) -> bool {
        now < self.activates_at
    }

    /// Whether the lot has expired at `now`.
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|expires_at| now >= expires_at)
    }

    /// Whether the lot's points can be spent at `now`.
    pub fn is_active(&self, now: i64) -> bool {
        !self.is_pending(now) && !self.is_expired(now)
    }

    fn has_points(&self) -> bool {
        self.points_remaining > 0
    }
}

/// Points taken from one lot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The lot.
    pub lot_id: String,
    /// Points taken from it; always positive.
    pub points: i64,
}

/// Why a redemption cannot be allocated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedemptionError {
    /// The member's active points do not cover the redemption.
    #[error("insufficient points: {available} active, {requested} requested")]
    InsufficientPoints {
        /// Active points at `now`.
        available: i64,
        /// Points the redemption asked for.
        requested: i64,
    },
    /// A redemption must take a positive number of points.
    #[error("a redemption must take a positive number of points, got {amount}")]
    NonPositiveAmount {
        /// The amount asked for.
        amount: i64,
    },
}

/// Picks the lots a redemption of `amount` points spends at `now`.
///
/// Only active lots count; pending points cannot be spent and expired ones belong to breakage.
/// Lots are drained soonest-expiring first (the reference's "oldest-expiry first", so members lose
/// as little as possible to expiry), never-expiring lots last, ties by activation time and then
/// lot id so the choice is deterministic. Either the whole amount is allocated or nothing is.
pub fn consume_for_redemption(
    lots: &[Lot],
    amount: i64,
    now: i64,
) -> Result<Vec<Allocation>, RedemptionError> {
    if amount <= 0 {
        return Err(RedemptionError::NonPositiveAmount { amount });
    }
    let mut active: Vec<&Lot> = lots
        .iter()
        .filter(|lot| lot.has_points() && lot.is_active(now))
        .collect();
    let available = active
        .iter()
        .map(|lot| lot.points_remaining)
        .fold(0, i64::saturating_add);
    if available < amount {
        return Err(RedemptionError::InsufficientPoints {
            available,
            requested: amount,
        });
    }
    active.sort_by(|a, b| soonest_expiry_first(a, b));
    let (allocations, _) = take(active, amount);
    Ok(allocations)
}

/// How a refund reversal of some points is covered, in the order the steps are applied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReversalPlan {
    /// Taken from active lots, oldest first.
    pub from_active: Vec<Allocation>,
    /// Taken as a negative active balance, within the allowance.
    pub negative_balance: i64,
    /// Clawed back from pending lots, latest-activating first.
    pub from_pending: Vec<Allocation>,
    /// Left over after all of the above; the caller writes it off.
    pub written_off: i64,
}

/// Plans how a refund reversal of `amount` points is taken at `now`, following the contract's
/// `LoyaltyProgram.max_negative_points`: "How far below zero a refund reversal may take a member
/// whose points were already spent; the excess beyond this is taken from pending points and then
/// written off." So, in order:
///
/// 1. **Active points**, oldest lot first (activation time, then id). Expired lots are not
///    touched; their points already belong to breakage.
/// 2. **Negative balance**, up to `negative_allowance` points. Pass the program's
///    `max_negative_points` minus how far below zero the member already is, so repeated
///    reversals cannot dig past the limit.
/// 3. **Pending points** (clawback), the latest-activating lot first: those are furthest from
///    being spendable, and the refunded order's own accrual is usually the newest.
/// 4. **Write-off**: whatever is still uncovered.
///
/// The parts sum exactly to `amount`; a non-positive `amount` (e.g. a refund too small to round
/// to a point) yields an empty plan.
pub fn consume_for_reversal(
    lots: &[Lot],
    amount: i64,
    now: i64,
    negative_allowance: i64,
) -> ReversalPlan {
    if amount <= 0 {
        return ReversalPlan::default();
    }
    let mut active: Vec<&Lot> = lots
        .iter()
        .filter(|lot| lot.has_points() && lot.is_active(now))
        .collect();
    active.sort_by(|a, b| {
        a.activates_at
            .cmp(&b.activates_at)
            .then_with(|| a.lot_id.cmp(&b.lot_id))
    });
    let (from_active, left) = take(active, amount);

    let negative_balance = left.min(negative_allowance.max(0));
    let left = left - negative_balance;

    let mut pending: Vec<&Lot> = lots
        .iter()
        .filter(|lot| lot.has_points() && lot.is_pending(now))
        .collect();
    pending.sort_by(|a, b| {
        b.activates_at
            .cmp(&a.activates_at)
            .then_with(|| a.lot_id.cmp(&b.lot_id))
    });
    let (from_pending, written_off) = take(pending, left);

    ReversalPlan {
        from_active,
        negative_balance,
        from_pending,
        written_off,
    }
}

/// The lots that have expired at `now` with points left, each with all its remaining points, for
/// the caller to move to breakage. Sorted by expiry, then lot id.
pub fn expired(lots: &[Lot], now: i64) -> Vec<Allocation> {
    let mut due: Vec<&Lot> = lots
        .iter()
        .filter(|lot| lot.has_points() && lot.is_expired(now))
        .collect();
    due.sort_by(|a, b| soonest_expiry_first(a, b));
    due.into_iter()
        .map(|lot| Allocation {
            lot_id: lot.lot_id.clone(),
            points: lot.points_remaining,
        })
        .collect()
}

/// Points that will expire at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpcomingExpiry {
    /// When they expire (unix seconds).
    pub expires_at: i64,
    /// How many.
    pub points: i64,
}

/// Points that have not expired at `now` but will within `horizon_seconds` (`now < expires_at ≤
/// now + horizon_seconds`), summed per expiry instant, soonest first. Pending lots count too:
/// their points will be the member's, and expire, all the same.
pub fn upcoming_expiries(lots: &[Lot], now: i64, horizon_seconds: i64) -> Vec<UpcomingExpiry> {
    let until = now.saturating_add(horizon_seconds.max(0));
    let mut by_instant: BTreeMap<i64, i64> = BTreeMap::new();
    for lot in lots.iter().filter(|lot| lot.has_points()) {
        if let Some(expires_at) = lot.expires_at.filter(|&e| now < e && e <= until) {
            let points = by_instant.entry(expires_at).or_default();
            *points = points.saturating_add(lot.points_remaining);
        }
    }
    by_instant
        .into_iter()
        .map(|(expires_at, points)| UpcomingExpiry { expires_at, points })
        .collect()
}

/// Soonest expiry first, never-expiring last, then activation time, then id.
fn soonest_expiry_first(a: &Lot, b: &Lot) -> Ordering {
    let expiry = match (a.expires_at, b.expires_at) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    };
    expiry
        .then(a.activates_at.cmp(&b.activates_at))
        .then_with(|| a.lot_id.cmp(&b.lot_id))
}

/// Takes up to `amount` points from `lots` in the given order; returns the allocations and what
/// was left uncovered.
fn take(lots: Vec<&Lot>, amount: i64) -> (Vec<Allocation>, i64) {
    let mut left = amount.max(0);
    let mut allocations = Vec::new();
    for lot in lots {
        if left == 0 {
            break;
        }
        let points = lot.points_remaining.min(left);
        allocations.push(Allocation {
            lot_id: lot.lot_id.clone(),
            points,
        });
        left -= points;
    }
    (allocations, left)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lot(id: &str, points: i64, activates_at: i64, expires_at: Option<i64>) -> Lot {
        Lot {
            lot_id: id.into(),
            points_remaining: points,
            activates_at,
            expires_at,
        }
    }

    fn alloc(id: &str, points: i64) -> Allocation {
        Allocation {
            lot_id: id.into(),
            points,
        }
    }

    #[test]
    fn redemption_consumes_soonest_expiring_first_and_never_expiring_last() {
        let lots = [
            lot("forever", 100, 0, None),
            lot("late", 50, 10, Some(5_000)),
            lot("soon", 30, 20, Some(2_000)),
        ];
        assert_eq!(
            consume_for_redemption(&lots, 100, 1_000),
            Ok(vec![
                alloc("soon", 30),
                alloc("late", 50),
                alloc("forever", 20)
            ])
        );
    }

    #[test]
    fn redemption_ties_break_by_activation_then_id() {
        let lots = [
            lot("b", 10, 5, Some(9_000)),
            lot("a", 10, 5, Some(9_000)),
            lot("early", 10, 1, Some(9_000)),
        ];
        assert_eq!(
            consume_for_redemption(&lots, 25, 100),
            Ok(vec![alloc("early", 10), alloc("a", 10), alloc("b", 5)])
        );
    }

    #[test]
    fn redemption_ignores_pending_and_expired_points() {
        let lots = [
            lot("pending", 500, 2_000, None),
            lot("expired", 500, 0, Some(1_000)),
            lot("active", 40, 0, Some(3_000)),
        ];
        assert_eq!(
            consume_for_redemption(&lots, 50, 1_000),
            Err(RedemptionError::InsufficientPoints {
                available: 40,
                requested: 50
            })
        );
        assert_eq!(
            consume_for_redemption(&lots, 40, 1_000),
            Ok(vec![alloc("active", 40)])
        );
    }

    #[test]
    fn lot_is_active_from_activation_until_just_before_expiry() {
        let l = lot("l", 1, 100, Some(200));
        assert!(l.is_pending(99) && !l.is_active(99));
        assert!(l.is_active(100) && l.is_active(199));
        assert!(l.is_expired(200) && !l.is_active(200));
    }

    #[test]
    fn redemption_of_nothing_is_rejected() {
        assert_eq!(
            consume_for_redemption(&[], 0, 0),
            Err(RedemptionError::NonPositiveAmount { amount: 0 })
        );
    }

    #[test]
    fn reversal_takes_active_oldest_first() {
        let lots = [
            lot("newer", 50, 200, None),
            lot("older", 30, 100, Some(10_000)),
        ];
        assert_eq!(
            consume_for_reversal(&lots, 60, 1_000, 0),
            ReversalPlan {
                from_active: vec![alloc("older", 30), alloc("newer", 30)],
                ..ReversalPlan::default()
            }
        );
    }

    #[test]
    fn reversal_goes_negative_within_the_allowance_then_claws_back_pending_then_writes_off() {
        let lots = [
            lot("active", 20, 0, None),
            lot("expired", 999, 0, Some(500)),
            lot("pending-early", 30, 2_000, None),
            lot("pending-late", 25, 3_000, None),
        ];
        // 100 = 20 active + 10 negative + 25 pending-late + 30 pending-early + 15 written off.
        assert_eq!(
            consume_for_reversal(&lots, 100, 1_000, 10),
            ReversalPlan {
                from_active: vec![alloc("active", 20)],
                negative_balance: 10,
                from_pending: vec![alloc("pending-late", 25), alloc("pending-early", 30)],
                written_off: 15,
            }
        );
    }

    #[test]
    fn reversal_within_the_negative_allowance_leaves_pending_points_alone() {
        let lots = [lot("pending", 100, 2_000, None)];
        assert_eq!(
            consume_for_reversal(&lots, 40, 1_000, 50),
            ReversalPlan {
                negative_balance: 40,
                ..ReversalPlan::default()
            }
        );
    }

    #[test]
    fn reversal_of_nothing_is_an_empty_plan() {
        let lots = [lot("a", 10, 0, None)];
        assert_eq!(
            consume_for_reversal(&lots, 0, 1, 5),
            ReversalPlan::default()
        );
    }

    #[test]
    fn expired_lists_lots_past_expiry_with_points_left() {
        let lots = [
            lot("later", 5, 0, Some(900)),
            lot("first", 7, 0, Some(800)),
            lot("empty", 0, 0, Some(100)),
            lot("not-yet", 9, 0, Some(1_001)),
            lot("exactly-now", 3, 0, Some(1_000)),
            lot("forever", 9, 0, None),
        ];
        assert_eq!(
            expired(&lots, 1_000),
            vec![
                alloc("first", 7),
                alloc("later", 5),
                alloc("exactly-now", 3)
            ]
        );
    }

    #[test]
    fn upcoming_expiries_are_grouped_by_instant_within_the_horizon() {
        let lots = [
            lot("a", 10, 0, Some(2_000)),
            lot("b", 5, 0, Some(2_000)),
            lot("pending", 7, 1_500, Some(3_000)),
            lot("past-horizon", 100, 0, Some(3_001)),
            lot("already-expired", 100, 0, Some(1_000)),
            lot("forever", 100, 0, None),
        ];
        assert_eq!(
            upcoming_expiries(&lots, 1_000, 2_000),
            vec![
                UpcomingExpiry {
                    expires_at: 2_000,
                    points: 15
                },
                UpcomingExpiry {
                    expires_at: 3_000,
                    points: 7
                },
            ]
        );
    }

    fn arb_lots() -> impl Strategy<Value = Vec<Lot>> {
        prop::collection::vec(
            (0i64..1_000, 0i64..2_000, prop::option::of(0i64..3_000)),
            0..12,
        )
        .prop_map(|specs| {
            specs
                .into_iter()
                .enumerate()
                .map(|(i, (points, activates_at, expires_at))| Lot {
                    lot_id: format!("lot-{i:02}"),
                    points_remaining: points,
                    activates_at,
                    expires_at,
                })
                .collect()
        })
    }

    fn points_in(allocations: &[Allocation]) -> i64 {
        allocations.iter().map(|a| a.points).sum()
    }

    /// Every allocation names a distinct lot and takes no more than it holds.
    fn within_lots(allocations: &[Allocation], lots: &[Lot]) -> bool {
        let mut seen = std::collections::HashSet::new();
        allocations.iter().all(|a| {
            seen.insert(a.lot_id.clone())
                && lots
                    .iter()
                    .any(|l| l.lot_id == a.lot_id && a.points > 0 && a.points <= l.points_remaining)
        })
    }

    fn find<'a>(lots: &'a [Lot], lot_id: &str) -> &'a Lot {
        lots.iter()
            .find(|l| l.lot_id == lot_id)
            .expect("allocations name existing lots")
    }

    proptest! {
        #[test]
        fn redemption_takes_exactly_the_amount_from_active_lots_or_nothing(
            lots in arb_lots(),
            amount in 1i64..5_000,
            now in 0i64..3_000,
        ) {
            let available: i64 =
                lots.iter().filter(|l| l.is_active(now)).map(|l| l.points_remaining).sum();
            match consume_for_redemption(&lots, amount, now) {
                Ok(allocations) => {
                    prop_assert!(amount <= available);
                    prop_assert_eq!(points_in(&allocations), amount);
                    prop_assert!(within_lots(&allocations, &lots));
                    for a in &allocations {
                        let lot = find(&lots, &a.lot_id);
                        prop_assert!(lot.is_active(now), "never from pending or expired lots");
                    }
                }
                Err(RedemptionError::InsufficientPoints { available: reported, .. }) => {
                    prop_assert!(amount > available);
                    prop_assert_eq!(reported, available);
                }
                Err(other) => prop_assert!(false, "unexpected {other:?}"),
            }
        }

        #[test]
        fn reversal_parts_sum_to_the_amount_and_respect_the_allowance(
            lots in arb_lots(),
            amount in 0i64..5_000,
            now in 0i64..3_000,
            allowance in 0i64..500,
        ) {
            let plan = consume_for_reversal(&lots, amount, now, allowance);
            let covered = points_in(&plan.from_active) + plan.negative_balance;
            let covered = covered + points_in(&plan.from_pending) + plan.written_off;
            prop_assert_eq!(covered, amount);
            prop_assert!((0..=allowance).contains(&plan.negative_balance));
            prop_assert!(plan.written_off >= 0);
            prop_assert!(within_lots(&plan.from_active, &lots));
            prop_assert!(within_lots(&plan.from_pending, &lots));
            for a in &plan.from_active {
                let lot = find(&lots, &a.lot_id);
                prop_assert!(lot.is_active(now));
            }
            for a in &plan.from_pending {
                let lot = find(&lots, &a.lot_id);
                prop_assert!(lot.is_pending(now));
            }
        }
    }
}
