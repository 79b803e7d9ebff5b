//! What the loyalty service stores, as protobuf records of its own (the store keeps bytes).
//!
//! A member's points live in two places written by one atomic commit: the ledger (accounts
//! `member:<id>:pending` and `member:<id>:active`, the record of every point) and the member
//! record here (the lots: which points activate and expire when). The invariant, checked by the
//! property tests: the pending account holds exactly the points of the lots not yet activated,
//! and the active account's available balance is the activated lots' points minus the deficit.

use commerce_api::commerce::loyalty::v1::{Member, PointsEntry, Redemption};
use store::{AggregateKey, IndexEntry};

use crate::lots::Lot;

/// Aggregate kinds.
pub const MEMBER: &str = "loyalty_member";
/// Claims a customer id for one member, so concurrent enrolments make one member.
pub const CUSTOMER: &str = "loyalty_customer";
/// The points an order accrued, and what refunds reversed of them.
pub const ACCRUAL: &str = "loyalty_accrual";
/// A member's points entries, newest first by id.
pub const POINTS_ENTRY: &str = "loyalty_points_entry";
/// The rewards catalog.
pub const REWARD: &str = "loyalty_reward";
/// Redemptions.
pub const REDEMPTION: &str = "loyalty_redemption";
/// The tenant's program (one per tenant).
pub const PROGRAM: &str = "loyalty_program";
/// Id of the program aggregate.
pub const PROGRAM_ID: &str = "program";

/// Ledger unit of every loyalty account.
pub const POINTS: &str = "points";
/// Where accrued and adjusted points come from (unconstrained: the program's liability).
pub const ISSUED: &str = "loyalty:issued";
/// Where redeemed points go.
pub const REDEEMED: &str = "loyalty:redeemed";
/// Where expired points go.
pub const BREAKAGE: &str = "loyalty:breakage";

/// A member's pending-points account.
pub fn pending_account(member_id: &str) -> String {
    format!("member:{member_id}:pending")
}

/// A member's active-points account.
pub fn active_account(member_id: &str) -> String {
    format!("member:{member_id}:active")
}

/// Store key of an aggregate of the loyalty service.
pub fn key(tenant: &str, kind: &str, id: &str) -> AggregateKey {
    AggregateKey::new(tenant, kind, id)
}

/// Index of every member (the due-jobs sweep walks it).
pub fn all_members() -> IndexEntry {
    IndexEntry {
        name: "all".into(),
        value: "1".into(),
    }
}

/// Index of a member's points entries.
pub fn entries_of(member_id: &str) -> IndexEntry {
    IndexEntry {
        name: "member".into(),
        value: member_id.into(),
    }
}

/// Index of redemptions still held (the hold-expiry sweep walks it).
pub fn held_redemptions() -> IndexEntry {
    IndexEntry {
        name: "status".into(),
        value: "held".into(),
    }
}

/// Index of every reward.
pub fn all_rewards() -> IndexEntry {
    IndexEntry {
        name: "all".into(),
        value: "1".into(),
    }
}

/// Id of a member's `n`th points entry: ids sort ascending, so newest first.
pub fn points_entry_id(member_id: &str, n: u64) -> String {
    format!("{member_id}:{:020}", u64::MAX - n)
}

/// A member and their lots.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MemberRecord {
    /// The member as the API shows it.
    #[prost(message, optional, tag = "1")]
    pub member: Option<Member>,
    /// Points batches with points left (or pending), in creation order.
    #[prost(message, repeated, tag = "2")]
    pub lots: Vec<LotRecord>,
    /// Points the member owes: a refund reversal took the active balance below zero. New
    /// active points pay it off first.
    #[prost(int64, tag = "3")]
    pub deficit: i64,
    /// Points ever earned, less refund reversals.
    #[prost(int64, tag = "4")]
    pub lifetime_points: i64,
    /// When an evaluation first found the member below their tier (grace period start).
    #[prost(int64, optional, tag = "5")]
    pub tier_below_since: Option<i64>,
    /// What counts toward tiers, per accrual or reversal, within the program's window.
    #[prost(message, repeated, tag = "6")]
    pub qualifying: Vec<QualifyingRecord>,
    /// Points entries written so far (numbering for [`points_entry_id`]).
    #[prost(uint64, tag = "7")]
    pub entry_count: u64,
    /// Tenant-clock time (unix ms) of the last change to the member's points.
    #[prost(int64, tag = "8")]
    pub changed_at_ms: i64,
}

impl MemberRecord {
    /// A stored member record, refused as corrupt when it lacks its member (so
    /// [`crate::engine::MemberState::member`] always has one to show).
    pub(crate) fn load(
        stored: &store::Versioned,
    ) -> Result<MemberRecord, crate::error::LoyaltyError> {
        let record: MemberRecord = stored.decode("member")?;
        if record.member.is_none() {
            return Err(crate::error::LoyaltyError::Corrupt(
                "member record without its member".into(),
            ));
        }
        Ok(record)
    }
}

/// One lot: see [`Lot`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct LotRecord {
    /// Unique within the member.
    #[prost(string, tag = "1")]
    pub lot_id: String,
    /// Points left.
    #[prost(int64, tag = "2")]
    pub points_remaining: i64,
    /// When it activates (unix seconds).
    #[prost(int64, tag = "3")]
    pub activates_at: i64,
    /// When it expires (unix seconds, exclusive); unset for never.
    #[prost(int64, optional, tag = "4")]
    pub expires_at: Option<i64>,
    /// True once its points moved from the pending to the active account. Until then it is
    /// pending whatever the time: the ledger is what counts.
    #[prost(bool, tag = "5")]
    pub activated: bool,
    /// True once the expiry notice was sent.
    #[prost(bool, tag = "6")]
    pub noticed: bool,
}

impl LotRecord {
    /// The lot as the pure rules see it: not activated means pending, whatever the time.
    pub fn as_lot(&self) -> Lot {
        Lot {
            lot_id: self.lot_id.clone(),
            points_remaining: self.points_remaining,
            activates_at: if self.activated {
                self.activates_at
            } else {
                i64::MAX
            },
            expires_at: self.expires_at,
        }
    }
}

/// Tier qualification from one accrual (or, negative, one reversal).
#[derive(Clone, PartialEq, prost::Message)]
pub struct QualifyingRecord {
    /// When (unix seconds).
    #[prost(int64, tag = "1")]
    pub at: i64,
    /// Points earned.
    #[prost(int64, tag = "2")]
    pub points: i64,
    /// Eligible spend in minor units.
    #[prost(int64, tag = "3")]
    pub spend_minor: i64,
}

/// What an order accrued: the accrual's dedup record and the base of its refund reversals.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AccrualRecord {
    /// The member credited.
    #[prost(string, tag = "1")]
    pub member_id: String,
    /// Points accrued.
    #[prost(int64, tag = "2")]
    pub points: i64,
    /// Eligible amount in minor units.
    #[prost(int64, tag = "3")]
    pub eligible_minor: i64,
    /// Its currency.
    #[prost(string, tag = "4")]
    pub currency_code: String,
    /// Ledger entry of the accrual.
    #[prost(string, tag = "5")]
    pub entry_id: String,
    /// Eligible amount refunded so far.
    #[prost(int64, tag = "6")]
    pub refunded_minor: i64,
    /// Points reversed so far.
    #[prost(int64, tag = "7")]
    pub reversed_points: i64,
    /// Refunds applied, with their ledger entries (dedup by refund id).
    #[prost(message, repeated, tag = "8")]
    pub refunds: Vec<RefundRecord>,
    /// The accrual's points entry, as returned to callers.
    #[prost(message, optional, tag = "9")]
    pub entry: Option<PointsEntry>,
    /// Digest of the order lines, so a repeat with other lines is a conflict.
    #[prost(bytes = "vec", tag = "10")]
    pub lines_digest: Vec<u8>,
}

/// One applied refund.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RefundRecord {
    /// The refund.
    #[prost(string, tag = "1")]
    pub refund_id: String,
    /// Its eligible amount.
    #[prost(int64, tag = "2")]
    pub refunded_minor: i64,
    /// The reversal's points entry, as returned to callers.
    #[prost(message, optional, tag = "3")]
    pub entry: Option<PointsEntry>,
}

/// A redemption and the lots its points came from.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RedemptionRecord {
    /// The redemption as the API shows it.
    #[prost(message, optional, tag = "1")]
    pub redemption: Option<Redemption>,
    /// The lots the held points came from, whole, so voiding can return them even when a lot
    /// was emptied and dropped meanwhile.
    #[prost(message, repeated, tag = "2")]
    pub taken: Vec<LotRecord>,
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::error::LoyaltyError;

    fn stored(record: &MemberRecord) -> store::Versioned {
        store::Versioned {
            version: 1,
            data: record.encode_to_vec().into(),
        }
    }

    #[test]
    fn a_member_record_without_its_member_is_corrupt_not_a_panic() {
        let error = MemberRecord::load(&stored(&MemberRecord::default())).unwrap_err();
        assert!(matches!(error, LoyaltyError::Corrupt(_)), "{error:?}");
        let garbage = store::Versioned {
            version: 1,
            data: bytes::Bytes::from_static(&[0xff, 0xff]),
        };
        assert!(matches!(
            MemberRecord::load(&garbage),
            Err(LoyaltyError::Corrupt(_))
        ));
        let whole = MemberRecord {
            member: Some(Member {
                member_id: "m-1".into(),
                ..Member::default()
            }),
            ..MemberRecord::default()
        };
        assert_eq!(MemberRecord::load(&stored(&whole)).unwrap(), whole);
    }
}
