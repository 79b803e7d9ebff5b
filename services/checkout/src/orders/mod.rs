//! Orders and the placement saga.
//!
//! `PlaceOrder` runs as a saga whose state is stored before every step that reaches outside
//! (loyalty, the PSP), in a placement record named by the idempotency key, so a retry — or a
//! process that restarts — continues where the last attempt stopped instead of starting over:
//!
//! 1. re-price the cart (a changed price → `QUOTE_STALE`, nothing charged);
//! 2. hold the loyalty reward (if any; the placement record names the reward still to hold
//!    until the hold is placed);
//! 3. authorize the payment at the PSP with the placement's payment id as the PSP idempotency
//!    key — never a new key, so the PSP can never authorize twice for one order;
//! 4. commit the order with its `OrderPlaced` event;
//! 5. capture — at once, or when the order is completed for locations that capture on
//!    completion (so the tip can be adjusted up to the authorized amount until then) — post the
//!    reward hold, post the capture to the money ledger and emit `OrderPaid` (loyalty accrues
//!    from it).
//!
//! A decline voids the reward hold and fails with `PAYMENT_DECLINED`; an authorization whose
//! reply was lost leaves the placement "payment unknown" and fails with
//! `PAYMENT_OUTCOME_UNKNOWN`: the next attempt (same key) asks the PSP what happened
//! (`lookup`) before doing anything else. Every call to the PSP — authorize, capture, void,
//! refund and lookup alike — goes through one wrapper (`payments::Psp`) and so through the
//! outbound policy (a deadline per attempt, retries with jitter — the PSP is idempotent by key —
//! and a circuit breaker): a PSP that stops answering cannot hang a request or a background
//! round.
//!
//! The background round ([`Orders::settle_payments`]) finishes what requests left: it asks the
//! PSP about unknown payments, captures orders whose capture is due but failed, and rolls back
//! placements abandoned part-way (void the authorization, return the reward).
//!
//! Money ledger: every capture and refund is posted, in the same commit as the order change, to
//! the tenant's `checkout:revenue:<CUR>` and `checkout:psp:<CUR>` accounts (the latter is what
//! the PSP holds for the merchant: captured minus refunded), as entries
//! `checkout:capture:<order id>` and `checkout:refund:<refund id>` — prefixed, because the
//! tenant's ledger is shared with loyalty's points. [`crate::reconcile`] ties orders, the PSP
//! and these entries out.
//!
//! The parts: `placement` (the saga, one function per step), `payments` (capture, refund,
//! cancel, void, tip adjustment, and the PSP wrapper), `settlement` (the background round, and
//! what reconciliation reads), `kitchen` (status moves), `queries` (get, list, watch) and
//! `records` (the stored records and their codecs). Every change to a committed order goes
//! through `Orders::update_order` here.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use commerce_api::commerce::checkout::v1::{Order, PlaceOrderResponse, RefundOrderResponse};
use commerce_api::commerce::common::v1::ErrorReason;
use ledger::{Ledger, NewEntry, Write};
use platform::clock::Clocks;
use platform::interceptors::IdempotencyContext;
use platform::outbound::OutboundPolicy;
use platform::units::timestamp_of_ms;
use store::{
    AggregateKey, Commit, IdempotencyRecord, OutboxEvent, Retry, Store, retry_on_conflict,
};

use crate::carts::Carts;
use crate::error::CheckoutError;
use crate::money_ledger;
use crate::psp::PaymentProvider;
use crate::quotes::{LoyaltyPort, Quotes};

mod kitchen;
mod payments;
mod placement;
mod queries;
mod records;
mod settlement;

pub(crate) use payments::Psp;
pub use placement::Placement;
pub use settlement::Settled;

/// Orders (id: the order id).
const ORDER: &str = "checkout_order";
/// Placements (id: the placement's idempotency key).
const PLACEMENT: &str = "checkout_placement";
/// The caller's own order id (`external_order_id`), naming the order placed under it; empty
/// data once a failed placement released it.
const EXTERNAL: &str = "checkout_external_order";
/// Which placement holds a cart (id: the cart id), see `records::CartClaim`.
const CART_CLAIM: &str = "checkout_cart_claim";
/// The system tenant under which tenants with placements are listed for the background round.
const SYSTEM_TENANT: &str = "_system";

/// The orders engine.
#[derive(Clone)]
pub struct Orders {
    store: Arc<dyn Store>,
    carts: Carts,
    quotes: Quotes,
    loyalty: Arc<dyn LoyaltyPort>,
    /// The PSP, reachable only through its outbound policy.
    psp: Psp,
    clocks: Clocks,
    ledger: Ledger,
    /// Tenants (and `tenant/currency` money accounts) known to exist, to skip re-checking.
    known: Arc<Mutex<HashSet<String>>>,
    /// Placements still in flight this long after they started are rolled back.
    abandon_after_ms: i64,
    /// Orders changed in this process (`tenant/order id`), so watchers here hear at once;
    /// watchers also re-read periodically for changes made by other replicas.
    changes: tokio::sync::broadcast::Sender<String>,
}

impl Orders {
    /// Orders placed from `carts`, priced by `quotes`, paid through `psp`.
    pub fn new(
        store: Arc<dyn Store>,
        carts: Carts,
        quotes: Quotes,
        loyalty: Arc<dyn LoyaltyPort>,
        psp: Arc<dyn PaymentProvider>,
        clocks: Clocks,
    ) -> Self {
        let ledger = Ledger::new(store.clone());
        Orders {
            store,
            carts,
            quotes,
            loyalty,
            psp: Psp::new(psp),
            clocks,
            ledger,
            known: Arc::default(),
            abandon_after_ms: 300_000,
            changes: tokio::sync::broadcast::channel(1024).0,
        }
    }

    /// Rolls back placements still in flight `after` they started (default 5 minutes — far
    /// longer than an attempt can run: the PSP deadlines allow under 20 s), so an attempt that
    /// died part-way leaves no authorization and no held reward behind.
    pub fn with_abandon_after(mut self, after: Duration) -> Self {
        self.abandon_after_ms = i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
        self
    }

    /// Calls to the PSP with `policy` instead of the default (5 s per attempt, 3 attempts,
    /// breaker opening after 5 unhealthy answers for 10 s).
    pub fn with_psp_policy(mut self, policy: OutboundPolicy) -> Self {
        self.psp = self.psp.with_policy(policy);
        self
    }

    fn known(&self, what: &str) -> bool {
        // The set only caches what exists; a panic elsewhere while it was held cannot have
        // left it wrong, so a poisoned lock is used as is.
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(what)
    }

    fn remember(&self, what: &str) {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(what.to_owned());
    }

    /// Tells this process's watchers of the order that it changed (none listening is fine).
    fn announce(&self, tenant: &str, order_id: &str) {
        let _ = self.changes.send(format!("{tenant}/{order_id}"));
    }

    /// Opens the tenant's money accounts in `currency` (once per process).
    async fn open_money_accounts(&self, tenant: &str, currency: &str) -> Result<(), CheckoutError> {
        let known = format!("{tenant}/{currency}");
        if self.known(&known) {
            return Ok(());
        }
        for what in ["psp", "revenue"] {
            self.ledger
                .open_account(
                    tenant,
                    &money_ledger::account(what, currency),
                    currency,
                    None,
                )
                .await?;
        }
        self.remember(&known);
        Ok(())
    }

    /// Reads an order, lets `change` edit it and name its event (`None`: nothing to change),
    /// and commits it with the event — and with `posting` in the money ledger, when given.
    /// A lost race for the order or, with a posting, for the tenant's ledger chain (which every
    /// capture and refund of the tenant appends to) re-reads and tries again after a jittered,
    /// growing pause, so racing writers spread out — up to [`Retry::CONTENDED`]'s attempts,
    /// then `CheckoutError::Contended`.
    async fn update_order<E: prost_reflect::ReflectMessage>(
        &self,
        tenant: &str,
        order_id: &str,
        now: i64,
        posting: Option<NewEntry>,
        recorded: Recorded<'_>,
        change: impl Fn(&mut Order) -> Result<Option<E>, CheckoutError>,
    ) -> Result<Order, CheckoutError> {
        if let Some(entry) = &posting
            && let Some(unit) = entry.postings.first().map(|posting| posting.unit.clone())
        {
            self.open_money_accounts(tenant, &unit).await?;
        }
        let key = &AggregateKey::new(tenant, ORDER, order_id);
        let (posting, change) = (posting.as_ref(), &change);
        retry_on_conflict(Retry::CONTENDED, || async move {
            let stored = self.load_order(tenant, order_id).await?;
            let mut order: Order = stored.decode(&format!("order {order_id}"))?;
            let Some(emitted) = change(&mut order)? else {
                return Ok(order);
            };
            order.version += 1;
            order.update_time = Some(timestamp_of_ms(now));
            let commit = Commit::record(key.clone(), stored.version, &order)
                .indexed(records::order_index(&order))
                .emitting(vec![event(key, stored.version + 1, now, &emitted)])
                .answering(recorded.record(&order));
            self.commit_with_posting(tenant, commit, posting).await?;
            self.announce(tenant, order_id);
            Ok(order)
        })
        .await
    }

    /// Commits an order change, with `posting` in the money ledger in the same commit when
    /// given.
    async fn commit_with_posting(
        &self,
        tenant: &str,
        commit: Commit,
        posting: Option<&NewEntry>,
    ) -> Result<(), CheckoutError> {
        let Some(entry) = posting else {
            self.store.commit(commit).await?;
            return Ok(());
        };
        match self
            .ledger
            .write_with(tenant, Write::Post(entry.clone()), vec![commit.clone()])
            .await
        {
            Ok(written) if written.new => Ok(()),
            // Already posted by a concurrent attempt that changed the order too: this commit
            // then loses the race for the order, and the re-read finds nothing left to change.
            Ok(_) => Ok(self.store.commit(commit).await.map(drop)?),
            Err(ledger::LedgerError::EntryConflict { .. })
                if self.posted_as(tenant, entry).await? =>
            {
                Ok(self.store.commit(commit).await.map(drop)?)
            }
            // A store conflict (the order or the ledger chain moved) is retried by the caller.
            Err(error) => Err(error.into()),
        }
    }

    /// Whether the ledger holds `entry`'s id with the same postings for the same order — the
    /// same money movement, recorded by an earlier attempt whose time or PSP reference was
    /// stamped differently (entries written before captures took a deterministic time). The
    /// movement is what counts: the order update goes ahead instead of failing for ever.
    async fn posted_as(&self, tenant: &str, entry: &NewEntry) -> Result<bool, CheckoutError> {
        let Some(posted) = self.ledger.entry(tenant, &entry.id).await? else {
            return Ok(false);
        };
        Ok(posted.kind == ledger::EntryKind::Posted
            && posted.postings == entry.postings
            && posted.metadata.get("order_id") == entry.metadata.get("order_id"))
    }
}

/// The response the commit that completes a call records under the call's idempotency key
/// ([`IdempotencyContext::record`]): the idempotency layer replays it byte for byte, so a crash
/// between that commit and the reply cannot make a retry run the call again. The handler
/// answers with exactly the order that commit wrote.
#[derive(Clone, Copy, Default)]
enum Recorded<'a> {
    /// Nothing (no key, or a background round).
    #[default]
    Nothing,
    /// `PlaceOrderResponse` with the order.
    PlaceOrder(&'a IdempotencyContext),
    /// `RefundOrderResponse` with the order and its refund of this id.
    RefundOrder(&'a IdempotencyContext, &'a str),
}

impl Recorded<'_> {
    /// The record of the response carrying `order`, if any.
    fn record(self, order: &Order) -> Option<IdempotencyRecord> {
        match self {
            Recorded::Nothing => None,
            Recorded::PlaceOrder(context) => Some(context.record(&PlaceOrderResponse {
                order: Some(order.clone()),
            })),
            Recorded::RefundOrder(context, refund_id) => Some(
                context.record(&RefundOrderResponse {
                    order: Some(order.clone()),
                    refund: order
                        .refunds
                        .iter()
                        .find(|refund| refund.refund_id == refund_id)
                        .cloned(),
                }),
            ),
        }
    }
}

/// The outbox event `message` of the aggregate at `key` as of `version`.
fn event(
    key: &AggregateKey,
    version: u64,
    now_ms: i64,
    message: &impl prost_reflect::ReflectMessage,
) -> OutboxEvent {
    events::envelope::outbox_event(
        &events::EventSource {
            aggregate: key.clone(),
            version,
            occurred_at: std::time::UNIX_EPOCH + Duration::from_millis(now_ms.max(0) as u64),
            traceparent: None,
            tracestate: None,
        },
        message,
    )
}

fn precondition(reason: ErrorReason, message: impl Into<String>) -> CheckoutError {
    CheckoutError::Precondition {
        reason,
        message: message.into(),
    }
}
