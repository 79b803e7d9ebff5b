//! What the orders engine stores besides the orders, and how it is written and read back: the
//! placement record (the saga's durable state), the cart's claim, the caller's own order id,
//! and the index entries the background round and the order lists find records by.

use bytes::Bytes;
use commerce_api::commerce::checkout::v1::{
    CaptureMode, Order, OrderStatus, Payment, PaymentStatus,
};
use commerce_api::commerce::common::v1::ErrorReason;
use store::{AggregateKey, Commit, IndexEntry, Versioned};

use super::placement::Step;
use super::precondition;
use crate::error::CheckoutError;

/// How records written before [`PlacementRecord::pending_reward_id`] existed marked a reward
/// still to hold: the draft order's `redemption_id` held `pending:<reward id>`. Only read, to
/// understand those records; never written.
const LEGACY_PENDING_PREFIX: &str = "pending:";

/// The placement saga's durable state, named by the placement's idempotency key. Tags are the
/// stored form: never renumber or reuse one.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct PlacementRecord {
    /// Where the saga stands: a [`Step`]'s number, read and written only through
    /// [`PlacementRecord::step`] and [`PlacementRecord::set_step`], so a number this build does
    /// not know is an error, never a default.
    #[prost(int32, tag = "1")]
    step: i32,
    /// The order as it will be committed (lines, totals, ids).
    #[prost(message, optional, tag = "2")]
    pub(super) order: Option<Order>,
    #[prost(string, tag = "3")]
    pub(super) payment_token: String,
    /// The error a failed placement answers every retry with.
    #[prost(string, tag = "4")]
    pub(super) failure: String,
    #[prost(int32, tag = "5")]
    pub(super) failure_reason: i32,
    /// When the placement started (tenant clock, unix ms): abandoned ones are rolled back after
    /// `Orders::with_abandon_after`.
    #[prost(int64, tag = "6")]
    pub(super) started_ms: i64,
    /// The loyalty reward the placement is to hold; empty when there is none or once it is held
    /// (the order's `redemption_id` then names the hold).
    #[prost(string, tag = "7")]
    pub(super) pending_reward_id: String,
}

impl PlacementRecord {
    /// A placement just recorded: `Started`, with the reward still to hold — or, with no
    /// reward to hold, already `RewardHeld`: the step would only record that nothing happened,
    /// and skipping it saves a durable commit per order.
    pub(super) fn started(
        order: Order,
        payment_token: String,
        pending_reward_id: String,
        started_ms: i64,
    ) -> Self {
        let step = if pending_reward_id.is_empty() {
            Step::RewardHeld
        } else {
            Step::Started
        };
        PlacementRecord {
            step: step as i32,
            order: Some(order),
            payment_token,
            pending_reward_id,
            started_ms,
            ..PlacementRecord::default()
        }
    }

    /// The stored placement `id`, in today's shape: a record written before
    /// `pending_reward_id` existed kept the reward still to hold as `pending:<reward id>` in its
    /// order's `redemption_id`; it moves to the field, so nothing past here sees the marker.
    pub(super) fn from_stored(stored: &Versioned, id: &str) -> Result<Self, CheckoutError> {
        let mut record: PlacementRecord = stored.decode(&format!("placement {id}"))?;
        record.upgrade_legacy_pending_reward();
        Ok(record)
    }

    fn upgrade_legacy_pending_reward(&mut self) {
        let Some(order) = self.order.as_mut() else {
            return;
        };
        let Some(reward_id) = order
            .redemption_id
            .strip_prefix(LEGACY_PENDING_PREFIX)
            .map(str::to_owned)
        else {
            return;
        };
        order.redemption_id.clear();
        self.pending_reward_id = reward_id;
    }

    /// Where the saga stands; `Corrupt` for a step this build does not know.
    pub(super) fn step(&self) -> Result<Step, CheckoutError> {
        Step::try_from(self.step).map_err(|unknown| {
            CheckoutError::Corrupt(format!("placement of order {}: {unknown}", self.order_id()))
        })
    }

    pub(super) fn set_step(&mut self, step: Step) {
        self.step = step as i32;
    }

    /// Records why the placement fails (its answer to every retry), leaving the step alone.
    pub(super) fn set_failure(&mut self, message: impl Into<String>, reason: ErrorReason) {
        self.failure = message.into();
        self.failure_reason = reason as i32;
    }

    /// Fails the placement for good with `message`.
    pub(super) fn fail(&mut self, message: impl Into<String>, reason: ErrorReason) {
        self.set_failure(message, reason);
        self.set_step(Step::Failed);
    }

    /// What a failed (or rolled-back) placement answers every retry with.
    pub(super) fn final_error(&self) -> CheckoutError {
        precondition(
            ErrorReason::try_from(self.failure_reason).unwrap_or(ErrorReason::PaymentDeclined),
            self.failure.clone(),
        )
    }

    /// The id of the order the placement makes.
    pub(super) fn order_id(&self) -> &str {
        self.order
            .as_ref()
            .map_or("", |order| order.order_id.as_str())
    }

    /// The payment id (the PSP's key for the authorization).
    pub(super) fn payment_id(&self) -> &str {
        self.order
            .as_ref()
            .and_then(|order| order.payment.as_ref())
            .map_or("", |payment| payment.payment_id.as_str())
    }
}

/// The loyalty redemption the order holds (or has posted), if any. An order's `redemption_id`
/// no longer names a reward still to hold (that is [`PlacementRecord::pending_reward_id`]); one
/// from an older build that still does holds nothing, as it did then.
pub(super) fn held_redemption(order: &Order) -> Option<&str> {
    let id = order.redemption_id.as_str();
    (!id.is_empty() && !id.starts_with(LEGACY_PENDING_PREFIX)).then_some(id)
}

/// A cart places at most one order. The first placement of a cart claims it in the store, in
/// the same commit that records the placement, so the claim holds across replicas and restarts
/// (carts themselves may live in Redis); every other placement of the cart — whatever its
/// idempotency key — is refused with `CART_ALREADY_ORDERED` before it reaches loyalty or the
/// PSP. A placement that fails for good (declined, slot full, reward refused, rolled back)
/// releases the claim in the commit that records the failure (the claim's default: empty), so
/// the cart can be placed again. A canceled order keeps its cart: the cart did place an order.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct CartClaim {
    /// The placement (its key) holding the cart; empty once a failed placement released it.
    #[prost(string, tag = "1")]
    pub(super) placement: String,
    /// The order that placement makes.
    #[prost(string, tag = "2")]
    pub(super) order_id: String,
}

/// The write of a caller's own order id: the order's id as UTF-8 bytes, or nothing once a
/// failed placement released it (`order_id` empty). Not a protobuf message: the format predates
/// them, and stays.
pub(super) fn external_order_id_commit(key: AggregateKey, version: u64, order_id: &str) -> Commit {
    Commit {
        data: Bytes::from(order_id.to_owned()),
        ..Commit::record(key, version, &())
    }
}

pub(super) fn index(name: &str, value: &str) -> IndexEntry {
    IndexEntry {
        name: name.into(),
        value: value.into(),
    }
}

/// The placement's index: every placement under `all` (reconciliation looks for authorizations
/// of failed ones), and the ones the background round works on under their `step`.
pub(super) fn placement_index(step: Step) -> Vec<IndexEntry> {
    let mut entries = vec![index("all", "1")];
    let waiting = match step {
        Step::Started | Step::RewardHeld => Some("in_flight"),
        Step::PaymentUnknown => Some("payment_unknown"),
        Step::Compensating => Some("compensating"),
        Step::Placed | Step::Failed => None,
    };
    entries.extend(waiting.map(|step| index("step", step)));
    entries
}

/// The order's index: every order, by location and customer, and the ones whose capture is
/// due (the background round finishes those).
pub(super) fn order_index(order: &Order) -> Vec<IndexEntry> {
    let mut entries = vec![index("all", "1"), index("location", &order.location_id)];
    if !order.customer_id.is_empty() {
        entries.push(index("customer", &order.customer_id));
    }
    if capture_due(order) {
        entries.push(index("capture_due", "1"));
    }
    entries
}

/// Whether the order's payment should be captured now: authorized, and placed by a location
/// capturing on placement or completed — or, for an order with nothing to pay, not yet settled
/// (its reward posted and `OrderPaid` sent; see [`settled_without_payment`]) and not canceled.
pub(super) fn capture_due(order: &Order) -> bool {
    let Some(payment) = order.payment.as_ref() else {
        return false;
    };
    match PaymentStatus::try_from(payment.status) {
        Ok(PaymentStatus::Authorized) => {
            payment.capture_mode != CaptureMode::OnCompletion as i32
                || order.status == OrderStatus::Completed as i32
        }
        Ok(PaymentStatus::NotRequired) => {
            !settled_without_payment(payment) && order.status != OrderStatus::Canceled as i32
        }
        _ => false,
    }
}

/// Whether an order with nothing to pay (`PAYMENT_STATUS_NOT_REQUIRED`) has been settled: its
/// `captured_amount` stays unset until the reward is posted and `OrderPaid` is sent, then
/// records the zero captured — the marker the background round finishes unsettled ones by.
pub(super) fn settled_without_payment(payment: &Payment) -> bool {
    payment.captured_amount.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn stored(record: &PlacementRecord) -> Versioned {
        Versioned {
            version: 1,
            data: record.encode_to_vec().into(),
        }
    }

    #[test]
    fn a_legacy_pending_reward_in_the_order_is_read_as_the_reward_to_hold() {
        let legacy = PlacementRecord {
            order: Some(Order {
                order_id: "ord-1".into(),
                redemption_id: "pending:rw-7".into(),
                ..Order::default()
            }),
            ..PlacementRecord::default()
        };
        let read = PlacementRecord::from_stored(&stored(&legacy), "key-1").unwrap();
        assert_eq!(read.pending_reward_id, "rw-7");
        assert_eq!(read.order.as_ref().unwrap().redemption_id, "");
        assert_eq!(read.step().unwrap(), Step::Started);
        // A held redemption is left alone, and an order still carrying the marker holds none.
        let held = PlacementRecord {
            order: Some(Order {
                redemption_id: "red-1".into(),
                ..Order::default()
            }),
            ..PlacementRecord::default()
        };
        let read = PlacementRecord::from_stored(&stored(&held), "key-2").unwrap();
        assert_eq!(read.pending_reward_id, "");
        assert_eq!(held_redemption(read.order.as_ref().unwrap()), Some("red-1"));
        let marked = Order {
            redemption_id: "pending:rw-7".into(),
            ..Order::default()
        };
        assert_eq!(held_redemption(&marked), None);
    }

    #[test]
    fn an_unknown_stored_step_is_a_corrupt_record_not_a_default() {
        let mut record = PlacementRecord::started(
            Order {
                order_id: "ord-9".into(),
                ..Order::default()
            },
            "tok_ok".into(),
            String::new(),
            0,
        );
        record.step = 42;
        let read = PlacementRecord::from_stored(&stored(&record), "key-9").unwrap();
        match read.step() {
            Err(CheckoutError::Corrupt(message)) => {
                assert!(
                    message.contains("ord-9") && message.contains("42"),
                    "{message}"
                )
            }
            other => panic!("expected a corrupt record, got {other:?}"),
        }
        let garbage = Versioned {
            version: 1,
            data: Bytes::from_static(&[0xff, 0xff, 0xff]),
        };
        assert!(matches!(
            PlacementRecord::from_stored(&garbage, "key-10"),
            Err(CheckoutError::Corrupt(_))
        ));
    }

    #[test]
    fn released_claims_are_empty_as_before() {
        let key = AggregateKey::new("t", "k", "1");
        assert!(
            Commit::record(key.clone(), 3, &CartClaim::default())
                .data
                .is_empty()
        );
        assert!(external_order_id_commit(key.clone(), 3, "").data.is_empty());
        assert_eq!(
            external_order_id_commit(key, 0, "ord-1").data.as_ref(),
            b"ord-1"
        );
    }
}
