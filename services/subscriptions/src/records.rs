//! What the subscriptions engine stores, as protobuf records of its own (the store keeps bytes),
//! and the keys and secondary indexes it finds them by.
//!
//! - A **plan** is the contract's `Plan` (versions inside).
//! - A **subscription** is [`SubscriptionRecord`]: the contract's `Subscription` plus the billing
//!   state the API does not show (anchor, the next action's time, the invoice being collected,
//!   carried-over credit).
//! - An **invoice** is [`InvoiceRecord`]: the contract's `Invoice` plus the payment attempt in
//!   flight, whose number the PSP idempotency key is derived from.
//! - The **invoice counter** ([`CounterRecord`], one per tenant) hands out gap-free numbers: it
//!   is compare-and-set in the same commit as the invoice it numbers.
//! - A **period claim** (one per subscription and period start) makes creating the invoice of a
//!   period idempotent: a second creation fails on the claim.
//! - A **create claim** ([`CreateClaim`]) per idempotency key that created something: what it
//!   created, committed with it.
//! - Subscription and invoice ids sort newest first ([`newest_first_id`]), so their lists are.
//! - A **due marker** ([`DueMarker`]) per subscription with a next action: its id starts with the
//!   zero-padded action time, so the `due` index lists subscriptions in the order their actions
//!   fall due and a billing run reads only what is due. A marker is retired by clearing its index
//!   in the same commit that moves the subscription's next action.

use commerce_api::commerce::subscriptions::v1::{Invoice, Subscription};
use store::{AggregateKey, IndexEntry};

use crate::error::SubscriptionsError;

/// Plans.
pub const PLAN: &str = "subscriptions_plan";
/// Subscriptions.
pub const SUBSCRIPTION: &str = "subscriptions_subscription";
/// Invoices.
pub const INVOICE: &str = "subscriptions_invoice";
/// The per-tenant invoice number counter.
pub const COUNTER: &str = "subscriptions_invoice_counter";
/// Id of the invoice counter aggregate.
pub const COUNTER_ID: &str = "invoice_number";
/// Claims of (subscription, period start) by the period's invoice.
pub const PERIOD_CLAIM: &str = "subscriptions_period_claim";
/// Due markers.
pub const DUE: &str = "subscriptions_due";
/// What an idempotency key created (see [`CreateClaim`]).
pub const CREATE_CLAIM: &str = "subscriptions_create_claim";

/// Store key of an aggregate of the subscriptions service.
pub fn key(tenant: &str, kind: &str, id: &str) -> AggregateKey {
    AggregateKey::new(tenant, kind, id)
}

fn index(name: &str, value: &str) -> IndexEntry {
    IndexEntry {
        name: name.into(),
        value: value.into(),
    }
}

/// Index of every aggregate of a kind.
pub fn all() -> IndexEntry {
    index("all", "1")
}

/// Index of a plan's status (`active` / `archived`).
pub fn plan_status(active: bool) -> IndexEntry {
    index("status", if active { "active" } else { "archived" })
}

/// Index of a customer's subscriptions.
pub fn customer(customer_id: &str) -> IndexEntry {
    index("customer", customer_id)
}

/// Index of a subscription's invoices.
pub fn invoices_of(subscription_id: &str) -> IndexEntry {
    index("subscription", subscription_id)
}

/// Index of live due markers.
pub fn pending_due() -> IndexEntry {
    index("due", "pending")
}

/// Id of the due marker of `subscription_id` at `due_ms`: sorts by time, then subscription.
pub fn due_marker_id(due_ms: i64, subscription_id: &str) -> String {
    format!("{:020}:{subscription_id}", due_ms.max(0))
}

/// The time a due marker id starts with.
pub fn due_marker_time(marker_id: &str) -> Option<i64> {
    marker_id.split_once(':')?.0.parse().ok()
}

/// An id that sorts newest first: `prefix`, the creation time counted down (as checkout's
/// order ids), then a counted-down UUIDv7 so ids made in the same millisecond (a frozen tenant
/// clock) also sort newest first. Lists in id order are therefore newest first.
pub fn newest_first_id(prefix: &str, at_ms: i64) -> String {
    let tiebreak = u128::MAX - uuid::Uuid::now_v7().as_u128();
    format!(
        "{prefix}-{:013}-{tiebreak:032x}",
        9_999_999_999_999 - at_ms.clamp(0, 9_999_999_999_999)
    )
}

/// Id of the claim of what idempotency key `id_key` created through `operation`.
pub fn create_claim_id(operation: &str, id_key: &str) -> String {
    format!("{operation}:{id_key}")
}

/// Id of the claim of `subscription_id`'s period starting at `period_start_ms`.
pub fn period_claim_id(subscription_id: &str, period_start_ms: i64) -> String {
    format!("{subscription_id}:{period_start_ms}")
}

/// The money ledger's account for `what` (`revenue`, `psp`) in `currency`.
pub fn money_account(what: &str, currency: &str) -> String {
    format!("subscriptions:{what}:{currency}")
}

/// Ledger entry id of an invoice's payment; prefixed because the tenant's ledger is shared with
/// checkout's money and loyalty's points.
pub fn payment_entry_id(invoice_id: &str) -> String {
    format!("subscriptions:invoice:{invoice_id}")
}

/// A subscription and its billing state.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SubscriptionRecord {
    /// The subscription as the API shows it.
    #[prost(message, optional, tag = "1")]
    pub subscription: Option<Subscription>,
    /// Billing anchor (unix ms): periods are laid out from it (creation, trial end, resumption).
    #[prost(int64, tag = "2")]
    pub anchor_ms: i64,
    /// When the next action is due (the live due marker's time); unset when nothing is.
    #[prost(int64, optional, tag = "3")]
    pub due_ms: Option<i64>,
    /// When the invoice being collected is charged next; unset when none is being collected.
    #[prost(int64, optional, tag = "4")]
    pub collect_at_ms: Option<i64>,
    /// The invoice being collected (first, renewal, dunning or proration); empty when none.
    #[prost(string, tag = "5")]
    pub collecting_invoice_id: String,
    /// Credit (minor units, ≥ 0) left by a downgrade, applied to the next invoices.
    #[prost(int64, tag = "6")]
    pub credit_minor: i64,
    /// The plan version the subscription moves to when its next period starts
    /// (`MigrateSubscription`); unset when it stays on its version.
    #[prost(int32, optional, tag = "7")]
    pub next_plan_version: Option<i32>,
}

impl SubscriptionRecord {
    /// The subscription (always present in a stored record).
    pub fn sub(&self) -> &Subscription {
        static NONE: std::sync::LazyLock<Subscription> =
            std::sync::LazyLock::new(Subscription::default);
        self.subscription.as_ref().unwrap_or(&NONE)
    }

    /// A stored subscription record, refused as corrupt when it lacks its subscription (so
    /// [`SubscriptionRecord::sub`]'s empty fallback is never reached from the store).
    pub fn load(stored: &store::Versioned) -> Result<SubscriptionRecord, SubscriptionsError> {
        let record: SubscriptionRecord = stored.decode("subscription")?;
        if record.subscription.is_none() {
            return Err(SubscriptionsError::Corrupt(
                "subscription record without its subscription".into(),
            ));
        }
        Ok(record)
    }

    /// The subscription, mutable.
    pub fn sub_mut(&mut self) -> &mut Subscription {
        self.subscription.get_or_insert_with(Subscription::default)
    }
}

/// An invoice and its payment attempt in flight.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InvoiceRecord {
    /// The invoice as the API shows it.
    #[prost(message, optional, tag = "1")]
    pub invoice: Option<Invoice>,
    /// The attempt number in flight (persisted before the PSP is called, so a replay after a
    /// crash reuses its idempotency key); 0 when no attempt is in flight.
    #[prost(int32, tag = "2")]
    pub pending_attempt: i32,
}

impl InvoiceRecord {
    /// The invoice (always present in a stored record).
    pub fn inv(&self) -> &Invoice {
        static NONE: std::sync::LazyLock<Invoice> = std::sync::LazyLock::new(Invoice::default);
        self.invoice.as_ref().unwrap_or(&NONE)
    }

    /// A stored invoice record, refused as corrupt when it lacks its invoice (so
    /// [`InvoiceRecord::inv`]'s empty fallback is never reached from the store).
    pub fn load(stored: &store::Versioned) -> Result<InvoiceRecord, SubscriptionsError> {
        let record: InvoiceRecord = stored.decode("invoice")?;
        if record.invoice.is_none() {
            return Err(SubscriptionsError::Corrupt(
                "invoice record without its invoice".into(),
            ));
        }
        Ok(record)
    }

    /// The invoice, mutable.
    pub fn inv_mut(&mut self) -> &mut Invoice {
        self.invoice.get_or_insert_with(Invoice::default)
    }
}

/// The tenant's last invoice number.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CounterRecord {
    /// Last number handed out (0 before the first invoice).
    #[prost(int64, tag = "1")]
    pub last_number: i64,
}

/// A due marker: the subscription whose action falls due at the time in the marker's id.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DueMarker {
    /// The subscription.
    #[prost(string, tag = "1")]
    pub subscription_id: String,
}

/// What an idempotency key created: written in the same commit as the resource, so a retried
/// create (same key, after a crash lost the first reply) finds it instead of making another.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateClaim {
    /// The resource created (plan, subscription).
    #[prost(string, tag = "1")]
    pub resource_id: String,
    /// The invoice created with it (a subscription's first invoice), or the plan version added.
    #[prost(string, tag = "2")]
    pub detail: String,
}

/// A period claim: the invoice that billed the period.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PeriodClaim {
    /// The invoice.
    #[prost(string, tag = "1")]
    pub invoice_id: String,
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    fn stored(data: Vec<u8>) -> store::Versioned {
        store::Versioned {
            version: 1,
            data: data.into(),
        }
    }

    #[test]
    fn records_without_their_subscription_or_invoice_are_corrupt_not_a_panic() {
        let empty_sub = stored(SubscriptionRecord::default().encode_to_vec());
        assert!(matches!(
            SubscriptionRecord::load(&empty_sub),
            Err(SubscriptionsError::Corrupt(_))
        ));
        let empty_invoice = stored(InvoiceRecord::default().encode_to_vec());
        assert!(matches!(
            InvoiceRecord::load(&empty_invoice),
            Err(SubscriptionsError::Corrupt(_))
        ));
        assert!(matches!(
            InvoiceRecord::load(&stored(vec![0xff, 0xff])),
            Err(SubscriptionsError::Corrupt(_))
        ));
        let whole = InvoiceRecord {
            invoice: Some(Invoice {
                invoice_id: "in-1".into(),
                ..Invoice::default()
            }),
            pending_attempt: 2,
        };
        assert_eq!(
            InvoiceRecord::load(&stored(whole.encode_to_vec())).unwrap(),
            whole
        );
    }

    #[test]
    fn newest_first_ids_sort_later_times_and_later_calls_first() {
        let early = newest_first_id("sub", 1_000);
        let late = newest_first_id("sub", 2_000);
        let late_again = newest_first_id("sub", 2_000);
        let mut ids = vec![early.clone(), late.clone(), late_again.clone()];
        ids.sort();
        assert_eq!(ids, [late_again, late, early]);
        assert!(ids.iter().all(|id| id.len() <= 64));
    }

    #[test]
    fn due_marker_ids_sort_by_time_then_subscription() {
        let mut ids = vec![
            due_marker_id(1_000_000, "b"),
            due_marker_id(999, "z"),
            due_marker_id(1_000_000, "a"),
        ];
        ids.sort();
        assert_eq!(
            ids,
            [
                due_marker_id(999, "z"),
                due_marker_id(1_000_000, "a"),
                due_marker_id(1_000_000, "b")
            ]
        );
        assert_eq!(due_marker_time(&ids[1]), Some(1_000_000));
    }
}
