//! Changes to a member record's lots, deficit and tier, as plain functions: the bookkeeping the
//! engine does beside each ledger entry, kept here so each rule is stated once.

use commerce_api::commerce::loyalty::v1::{LoyaltyProgram, TierBasis, TierChanged};

use crate::SECONDS_PER_DAY;
use crate::lots::{self, Allocation, Lot};
use crate::records::{LotRecord, MemberRecord, QualifyingRecord};
use crate::tiers::{self, CurrentTier};

/// The lots as the pure rules see them (see [`LotRecord::as_lot`]).
pub fn domain_lots(record: &MemberRecord) -> Vec<Lot> {
    record.lots.iter().map(LotRecord::as_lot).collect()
}

/// Takes `allocations` out of the lots; returns the lots' state before, each with the points
/// taken, for [`give_back`].
pub fn take(record: &mut MemberRecord, allocations: &[Allocation]) -> Vec<LotRecord> {
    let mut taken = Vec::new();
    for allocation in allocations {
        if let Some(lot) = record
            .lots
            .iter_mut()
            .find(|lot| lot.lot_id == allocation.lot_id)
        {
            lot.points_remaining -= allocation.points;
            taken.push(LotRecord {
                points_remaining: allocation.points,
                ..lot.clone()
            });
        }
    }
    prune(record);
    taken
}

/// Returns points taken by [`take`] to their lots (re-creating a lot dropped meanwhile; an
/// expired one is then expired by the next sweep), then pays any deficit from them.
pub fn give_back(record: &mut MemberRecord, taken: &[LotRecord], now: i64) {
    for returned in taken {
        match record
            .lots
            .iter_mut()
            .find(|lot| lot.lot_id == returned.lot_id)
        {
            Some(lot) => lot.points_remaining += returned.points_remaining,
            None => record.lots.push(returned.clone()),
        }
    }
    settle_deficit(record, now);
}

/// Adds a lot; an activated one pays the deficit first.
pub fn add_lot(record: &mut MemberRecord, lot: LotRecord, now: i64) {
    record.lots.push(lot);
    settle_deficit(record, now);
}

/// Pays the deficit from active lots, soonest-expiring first, so a member who owes points never
/// also has active lots (which keeps "available = active lots − deficit" true).
pub fn settle_deficit(record: &mut MemberRecord, now: i64) {
    let active: i64 = domain_lots(record)
        .iter()
        .filter(|lot| lot.is_active(now))
        .map(|lot| lot.points_remaining)
        .sum();
    let pay = record.deficit.min(active);
    if pay <= 0 {
        return;
    }
    if let Ok(allocations) = lots::consume_for_redemption(&domain_lots(record), pay, now) {
        take(record, &allocations);
        record.deficit -= pay;
    }
}

/// Drops emptied lots.
pub fn prune(record: &mut MemberRecord) {
    record.lots.retain(|lot| lot.points_remaining > 0);
}

/// Points in active lots at `now`.
pub fn active_lot_points(record: &MemberRecord, now: i64) -> i64 {
    domain_lots(record)
        .iter()
        .filter(|lot| lot.is_active(now))
        .map(|lot| lot.points_remaining)
        .sum()
}

/// Records what an accrual (or, negative, a reversal) counts toward tiers, drops what fell out
/// of the window, and re-evaluates the tier. Returns the event when the tier changed.
pub fn qualify(
    record: &mut MemberRecord,
    program: &LoyaltyProgram,
    qualifying: Option<QualifyingRecord>,
    now: i64,
) -> Option<TierChanged> {
    if let Some(qualifying) = qualifying {
        record.qualifying.push(qualifying);
    }
    let window = i64::from(program.tier_window_days.max(0)) * SECONDS_PER_DAY;
    if window > 0 {
        record.qualifying.retain(|q| q.at > now - window);
    }
    let total: i64 = match TierBasis::try_from(program.tier_basis) {
        Ok(TierBasis::Spend) => record.qualifying.iter().map(|q| q.spend_minor).sum(),
        _ => record.qualifying.iter().map(|q| q.points).sum(),
    };
    let member = record.member.as_mut()?;
    let current = (!member.tier_id.is_empty()).then(|| CurrentTier {
        tier_id: member.tier_id.clone(),
        below_since: record.tier_below_since,
    });
    let evaluation = tiers::evaluate(program, total, current.as_ref(), now);
    let previous = std::mem::take(&mut member.tier_id);
    match evaluation.tier {
        Some(tier) => {
            member.tier_id = tier.tier_id;
            record.tier_below_since = tier.below_since;
        }
        None => record.tier_below_since = None,
    }
    (evaluation.changed && previous != member.tier_id).then(|| TierChanged {
        member_id: member.member_id.clone(),
        previous_tier_id: previous,
        tier_id: member.tier_id.clone(),
    })
}
