//! Orders and the placement saga.
//!
//! `PlaceOrder` runs as a saga whose state is stored before every step that reaches outside
//! (loyalty, the PSP), in a placement record named by the idempotency key, so a retry — or a
//! process that restarts — continues where the last attempt stopped instead of starting over:
//!
//! 1. re-price the cart (a changed price → `QUOTE_STALE`, nothing charged);
//! 2. hold the loyalty reward (if any);
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
//! (`lookup`) before doing anything else. Calls to the PSP go through the outbound policy
//! (deadline, retries with jitter — the PSP is idempotent by key — and a circuit breaker).
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

use std::sync::Arc;
use std::time::Duration;

use commerce_api::commerce::checkout::v1::{
    CaptureMode, Order, OrderCanceled, OrderLine, OrderPaid, OrderPlaced, OrderRefunded,
    OrderStatus, OrderStatusChange, OrderStatusChanged, OrderTipAdjusted, OrderTotals, PaidLine,
    Payment, PaymentStatus, PlaceOrderResponse, Quote, RefundOrderResponse,
};
use commerce_api::commerce::common::v1::{ErrorReason, Money};
use ledger::{Ledger, NewEntry, Write};
use platform::clock::Clocks;
use platform::interceptors::IdempotencyContext;
use platform::outbound::{Idempotent, Outbound, OutboundError, OutboundPolicy};
use platform::page_token;
use prost::Message as _;
use store::{AggregateKey, Commit, IdempotencyRecord, IndexEntry, OutboxEvent, Pages, Store};

use crate::carts::Carts;
use crate::error::CheckoutError;
use crate::psp::{self, AuthorizeRequest, CaptureRequest, PaymentProvider, PspError, VoidRequest};
use crate::quotes::{LoyaltyPort, Quotes};

pub(crate) const ORDER: &str = "checkout_order";
pub(crate) const PLACEMENT: &str = "checkout_placement";
/// The caller's own order id (`external_order_id`), naming the order placed under it; empty
/// data once a failed placement released it.
const EXTERNAL: &str = "checkout_external_order";
/// Which placement holds a cart (id: the cart id), see [`CartClaim`].
const CART_CLAIM: &str = "checkout_cart_claim";
/// The system tenant under which tenants with unresolved payments are listed.
const SYSTEM_TENANT: &str = "_system";

/// Where a placement stands (stored as the record's `step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub(crate) enum Step {
    Started = 0,
    RewardHeld = 1,
    PaymentUnknown = 2,
    Placed = 3,
    Failed = 4,
    /// Abandoned part-way: the authorization and the reward hold are being released.
    Compensating = 5,
}

/// The placement saga's durable state.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PlacementRecord {
    #[prost(int32, tag = "1")]
    pub(crate) step: i32,
    /// The order as it will be committed (lines, totals, ids).
    #[prost(message, optional, tag = "2")]
    pub(crate) order: Option<Order>,
    #[prost(string, tag = "3")]
    payment_token: String,
    /// The error a failed placement answers every retry with.
    #[prost(string, tag = "4")]
    failure: String,
    #[prost(int32, tag = "5")]
    failure_reason: i32,
    /// When the placement started (tenant clock, unix ms): abandoned ones are rolled back after
    /// [`Orders::with_abandon_after`].
    #[prost(int64, tag = "6")]
    pub(crate) started_ms: i64,
}

/// A cart places at most one order. The first placement of a cart claims it in the store, in
/// the same commit that records the placement, so the claim holds across replicas and restarts
/// (carts themselves may live in Redis); every other placement of the cart — whatever its
/// idempotency key — is refused with `CART_ALREADY_ORDERED` before it reaches loyalty or the
/// PSP. A placement that fails for good (declined, slot full, reward refused, rolled back)
/// releases the claim in the commit that records the failure, so the cart can be placed again.
/// A canceled order keeps its cart: the cart did place an order.
#[derive(Clone, PartialEq, prost::Message)]
struct CartClaim {
    /// The placement (its key) holding the cart; empty once a failed placement released it.
    #[prost(string, tag = "1")]
    placement: String,
    /// The order that placement makes.
    #[prost(string, tag = "2")]
    order_id: String,
}

/// Where a caller's own order id stands.
enum ExternalId {
    /// No order has it (`version`: of its released record, 0 when there is none).
    Free { version: u64 },
    /// The order placed under it.
    Taken(Box<Order>),
}

/// The placement's index: every placement under `all` (reconciliation looks for authorizations
/// of failed ones), and the ones the background round works on under their `step`.
fn placement_index(step: i32) -> Vec<IndexEntry> {
    let mut entries = vec![index("all", "1")];
    let waiting = match step {
        s if s == Step::Started as i32 || s == Step::RewardHeld as i32 => Some("in_flight"),
        s if s == Step::PaymentUnknown as i32 => Some("payment_unknown"),
        s if s == Step::Compensating as i32 => Some("compensating"),
        _ => None,
    };
    entries.extend(waiting.map(|step| index("step", step)));
    entries
}

/// The money ledger's account for `what` (`psp`, `revenue`) in `currency`.
pub(crate) fn money_account(what: &str, currency: &str) -> String {
    format!("checkout:{what}:{currency}")
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

/// Where one step of the saga left the placement.
enum Advanced {
    /// Moved on (or failed for good): its new version and state.
    Saved(u64, PlacementRecord),
    /// The order was committed (and captured, when due): the placement's answer.
    Placed(Order),
}

impl Advanced {
    fn saved((version, record): (u64, PlacementRecord)) -> Self {
        Advanced::Saved(version, record)
    }
}

/// What one background round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settled {
    /// Placements whose unknown payment outcome became known (order placed or failed).
    pub payments_resolved: usize,
    /// Orders whose due capture went through.
    pub captured: usize,
    /// Abandoned placements rolled back.
    pub abandoned: usize,
}

fn timestamp_ms(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub(crate) fn money(currency: &str, minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: currency.to_owned(),
        amount_minor: minor,
    })
}

pub(crate) fn minor(money: &Option<Money>) -> i64 {
    money.as_ref().map_or(0, |money| money.amount_minor)
}

fn commit(
    key: AggregateKey,
    expected_version: u64,
    data: Vec<u8>,
    index: Vec<IndexEntry>,
) -> Commit {
    Commit {
        key,
        expected_version,
        data: data.into(),
        index,
        events: Vec::new(),
        idempotency: None,
    }
}

fn index(name: &str, value: &str) -> IndexEntry {
    IndexEntry {
        name: name.into(),
        value: value.into(),
    }
}

fn order_index(order: &Order) -> Vec<IndexEntry> {
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
fn capture_due(order: &Order) -> bool {
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
fn settled_without_payment(payment: &Payment) -> bool {
    payment.captured_amount.is_some()
}

pub(crate) fn psp_unavailable() -> CheckoutError {
    CheckoutError::Unavailable {
        what: "the payment provider",
        reason: ErrorReason::DependencyUnavailable,
    }
}

/// What a PSP call that did not succeed means for checkout's caller (`operation`: `capture`,
/// `void`, `refund`). Only "nothing happened" (the PSP unavailable, the breaker open, no time
/// left) is `unavailable`, which tells clients to retry; an unknown outcome (the reply was
/// lost) is `unavailable` with `PAYMENT_OUTCOME_UNKNOWN` — retrying with the same key is safe,
/// the PSP replays what it did; a refusal is final, `failed_precondition` with the reason that
/// names it.
pub(crate) fn psp_failure(operation: &str, error: &OutboundError<PspError>) -> CheckoutError {
    let refused = |reason, failure: &PspError| {
        tracing::info!(%failure, operation, "checkout: the PSP refused");
        precondition(
            reason,
            format!("the payment provider refused the {operation}: {failure}"),
        )
    };
    match error {
        OutboundError::Timeout | OutboundError::Failed(PspError::Timeout) => {
            tracing::warn!(operation, "checkout: PSP outcome unknown");
            CheckoutError::Unavailable {
                what: "the payment provider",
                reason: ErrorReason::PaymentOutcomeUnknown,
            }
        }
        OutboundError::CircuitOpen { .. }
        | OutboundError::DeadlineExceeded
        | OutboundError::Failed(PspError::Unavailable) => {
            tracing::warn!(%error, operation, "checkout: PSP unavailable");
            psp_unavailable()
        }
        OutboundError::Failed(failure @ PspError::ExceedsCaptured) => {
            refused(ErrorReason::RefundExceedsCaptured, failure)
        }
        OutboundError::Failed(failure @ PspError::Declined { .. }) => {
            refused(ErrorReason::PaymentDeclined, failure)
        }
        OutboundError::Failed(PspError::CardDataRejected) => CheckoutError::Invalid {
            field: "payment_token".into(),
            message: "looks like a card number; send the PSP's token".into(),
        },
        OutboundError::Failed(failure) => refused(ErrorReason::PaymentRefused, failure),
    }
}

fn precondition(reason: ErrorReason, message: impl Into<String>) -> CheckoutError {
    CheckoutError::Precondition {
        reason,
        message: message.into(),
    }
}

/// What `PlaceOrder` asks for.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// The cart.
    pub cart_id: String,
    /// The quote accepted.
    pub quote_id: String,
    /// Its total, checked again.
    pub expected_total: Money,
    /// PSP token.
    pub payment_token: String,
    /// The caller's order id, unique per tenant when set.
    pub external_order_id: String,
}

/// The orders engine.
#[derive(Clone)]
pub struct Orders {
    store: Arc<dyn Store>,
    carts: Carts,
    quotes: Quotes,
    loyalty: Arc<dyn LoyaltyPort>,
    pub(crate) psp: Arc<dyn PaymentProvider>,
    outbound: Outbound,
    clocks: Clocks,
    pub(crate) ledger: Ledger,
    /// Tenants (and `tenant/currency` money accounts) known to exist, to skip re-checking.
    known: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
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
        let mut policy = OutboundPolicy::new("psp");
        policy.timeout = Duration::from_secs(5);
        let ledger = Ledger::new(store.clone());
        Orders {
            store,
            carts,
            quotes,
            loyalty,
            psp,
            outbound: Outbound::new(policy),
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
        self.abandon_after_ms = after.as_millis() as i64;
        self
    }

    /// Calls to the PSP with `policy` instead of the default (5 s per attempt, 3 attempts,
    /// breaker opening after 5 unhealthy answers for 10 s).
    pub fn with_psp_policy(mut self, policy: OutboundPolicy) -> Self {
        self.outbound = Outbound::new(policy);
        self
    }

    async fn now_ms(&self, tenant: &str) -> Result<i64, CheckoutError> {
        Ok(self.clocks.now(tenant).await?.now_ms)
    }

    /// Places an order (see the module docs); `key` is the request's idempotency key (derived).
    pub async fn place(
        &self,
        tenant: &str,
        placement: &Placement,
        key: &str,
    ) -> Result<Order, CheckoutError> {
        self.place_recording(tenant, placement, key, None).await
    }

    /// [`Orders::place`], with the `PlaceOrderResponse` carrying the returned order recorded
    /// under `idempotency` in the commit that completes the placement (the capture's, or the
    /// order's own when nothing is captured yet). A call that finds the placement already done,
    /// or fails, records nothing here: the idempotency layer records its answer.
    pub async fn place_recording(
        &self,
        tenant: &str,
        placement: &Placement,
        key: &str,
        idempotency: Option<&IdempotencyContext>,
    ) -> Result<Order, CheckoutError> {
        let recorded = idempotency.map_or(Recorded::Nothing, Recorded::PlaceOrder);
        if psp::looks_like_card_number(&placement.payment_token) {
            return Err(CheckoutError::Invalid {
                field: "payment_token".into(),
                message: "looks like a card number; send the PSP's token".into(),
            });
        }
        let placement_key = AggregateKey::new(tenant, PLACEMENT, key);
        let (version, record) = match self.store.load(&placement_key).await? {
            Some(stored) => (
                stored.version,
                decode::<PlacementRecord>(&stored.data, "placement")?,
            ),
            None => {
                // The caller's own order id first: a POS retrying under it gets its order back,
                // whatever key it sends.
                let external_version =
                    match self.external(tenant, &placement.external_order_id).await? {
                        ExternalId::Taken(order) => return Ok(*order),
                        ExternalId::Free { version } => version,
                    };
                // A cart places at most one order: refuse before any work (and long before
                // the PSP) when another placement holds it.
                let cart_version = self.cart_free(tenant, &placement.cart_id, key).await?;
                let order = self.draft(tenant, placement, key).await?;
                self.note_tenant(tenant).await?;
                let order_id = order.order_id.clone();
                let record = PlacementRecord {
                    step: Step::Started as i32,
                    order: Some(order),
                    payment_token: placement.payment_token.clone(),
                    started_ms: self.now_ms(tenant).await?,
                    ..PlacementRecord::default()
                };
                let claim = CartClaim {
                    placement: key.to_owned(),
                    order_id: order_id.clone(),
                };
                let mut commits = vec![
                    commit(
                        placement_key.clone(),
                        0,
                        record.encode_to_vec(),
                        placement_index(record.step),
                    ),
                    commit(
                        AggregateKey::new(tenant, CART_CLAIM, &placement.cart_id),
                        cart_version,
                        claim.encode_to_vec(),
                        Vec::new(),
                    ),
                ];
                if !placement.external_order_id.is_empty() {
                    commits.push(commit(
                        AggregateKey::new(tenant, EXTERNAL, &placement.external_order_id),
                        external_version,
                        order_id.into_bytes(),
                        Vec::new(),
                    ));
                }
                match self.store.commit_all(commits).await {
                    Ok(_) => (1, record),
                    Err(store::StoreError::Conflict { .. }) => {
                        // A concurrent attempt won: with this external id, for this cart, or
                        // with this key (a retryable conflict).
                        if let ExternalId::Taken(order) =
                            self.external(tenant, &placement.external_order_id).await?
                        {
                            return Ok(*order);
                        }
                        self.cart_free(tenant, &placement.cart_id, key).await?;
                        return Err(CheckoutError::Store(store::StoreError::Conflict {
                            key: placement_key.to_string(),
                            expected: 0,
                            found: 1,
                        }));
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        };
        self.drive(tenant, &placement_key, version, record, recorded)
            .await
    }

    /// Runs a placement's saga from where it stands to an order or a final failure.
    async fn drive(
        &self,
        tenant: &str,
        placement_key: &AggregateKey,
        mut version: u64,
        mut record: PlacementRecord,
        recorded: Recorded<'_>,
    ) -> Result<Order, CheckoutError> {
        let key = placement_key.id.as_str();
        let mut lost_races = 0;
        loop {
            let step = record.step;
            match step {
                s if s == Step::Placed as i32 => {
                    let order_id = record
                        .order
                        .as_ref()
                        .map(|o| o.order_id.clone())
                        .unwrap_or_default();
                    return self.order(tenant, &order_id).await;
                }
                s if s == Step::Failed as i32 || s == Step::Compensating as i32 => {
                    return Err(precondition(
                        ErrorReason::try_from(record.failure_reason)
                            .unwrap_or(ErrorReason::PaymentDeclined),
                        record.failure.clone(),
                    ));
                }
                _ => {}
            }
            match self
                .advance(tenant, placement_key, version, record.clone(), recorded)
                .await
            {
                Ok(Advanced::Saved(next_version, next)) => (version, record) = (next_version, next),
                Ok(Advanced::Placed(order)) => return Ok(order),
                // Another attempt moved the placement (or took the slot) first: re-read it and
                // carry on from where it is now.
                Err(error) if error.is_conflict() && lost_races < 16 => {
                    lost_races += 1;
                    let stored = self.store.load(placement_key).await?.ok_or_else(|| {
                        CheckoutError::NotFound {
                            resource: "placement",
                            id: key.to_owned(),
                        }
                    })?;
                    version = stored.version;
                    record = decode(&stored.data, "placement")?;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// One background round over every tenant with placements: placements whose payment
    /// outcome is unknown are driven on (the PSP is asked under the placement's key — never a
    /// second authorization), orders whose capture is due are captured, and placements still in
    /// flight [`Orders::with_abandon_after`] they started are rolled back. Failures are logged
    /// and left for the next round.
    pub async fn settle_payments(&self) -> Result<Settled, CheckoutError> {
        let mut settled = Settled::default();
        let mut tenants = Pages::new(
            self.store.as_ref(),
            SYSTEM_TENANT,
            "checkout_tenant",
            index("all", "1"),
            256,
        );
        while let Some(page) = tenants.next().await? {
            for (tenant, _) in page {
                self.settle_tenant(&tenant, &mut settled).await?;
            }
        }
        Ok(settled)
    }

    async fn settle_tenant(
        &self,
        tenant: &str,
        settled: &mut Settled,
    ) -> Result<(), CheckoutError> {
        let now = self.now_ms(tenant).await?;
        for (id, stored) in self
            .all(tenant, PLACEMENT, index("step", "payment_unknown"))
            .await?
        {
            let record: PlacementRecord = decode(&stored.data, "placement")?;
            let key = AggregateKey::new(tenant, PLACEMENT, &id);
            match self
                .drive(tenant, &key, stored.version, record, Recorded::Nothing)
                .await
            {
                Ok(_) | Err(CheckoutError::Precondition { .. }) => settled.payments_resolved += 1,
                Err(error) => {
                    tracing::info!(%error, placement = %id, "checkout: payment still unresolved")
                }
            }
        }
        for step in ["in_flight", "compensating"] {
            for (id, stored) in self.all(tenant, PLACEMENT, index("step", step)).await? {
                let record: PlacementRecord = decode(&stored.data, "placement")?;
                if step == "in_flight" && record.started_ms + self.abandon_after_ms > now {
                    continue;
                }
                let key = AggregateKey::new(tenant, PLACEMENT, &id);
                match self.abandon(tenant, &key, stored.version, record).await {
                    Ok(()) => settled.abandoned += 1,
                    Err(error) => {
                        tracing::warn!(%error, placement = %id, "checkout: rollback of an abandoned placement failed")
                    }
                }
            }
        }
        for (id, _) in self.all(tenant, ORDER, index("capture_due", "1")).await? {
            match self.capture(tenant, &id).await {
                Ok(order) if !capture_due(&order) => settled.captured += 1,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, order = %id, "checkout: capture still failing")
                }
            }
        }
        Ok(())
    }

    /// Every record of `kind`.
    pub(crate) async fn every(
        &self,
        tenant: &str,
        kind: &str,
    ) -> Result<Vec<(String, store::Versioned)>, CheckoutError> {
        self.all(tenant, kind, index("all", "1")).await
    }

    /// Every record of `kind` under `filter` (read before acting, so acting cannot disturb the
    /// walk).
    async fn all(
        &self,
        tenant: &str,
        kind: &str,
        filter: IndexEntry,
    ) -> Result<Vec<(String, store::Versioned)>, CheckoutError> {
        let mut pages = Pages::new(self.store.as_ref(), tenant, kind, filter, 256);
        let mut all = Vec::new();
        while let Some(page) = pages.next().await? {
            all.extend(page);
        }
        Ok(all)
    }

    /// Rolls an abandoned placement back: first marks it compensating (so no later attempt can
    /// commit its order), then voids whatever the PSP authorized under its key and returns the
    /// held reward, then marks it failed with `PLACEMENT_ABANDONED`.
    async fn abandon(
        &self,
        tenant: &str,
        key: &AggregateKey,
        version: u64,
        mut record: PlacementRecord,
    ) -> Result<(), CheckoutError> {
        let mut version = version;
        if record.step != Step::Compensating as i32 {
            record.step = Step::Compensating as i32;
            record.failure =
                "the placement was abandoned part-way and rolled back; place the order again"
                    .into();
            record.failure_reason = ErrorReason::PlacementAbandoned as i32;
            (version, record) = self.save_placement(key, version, record).await?;
        }
        let order = record.order.clone().unwrap_or_default();
        let payment_id = order
            .payment
            .as_ref()
            .map(|payment| payment.payment_id.clone())
            .unwrap_or_default();
        let authorized = self
            .outbound
            .call(Idempotent::Yes, |_| self.psp.lookup(&payment_id))
            .await
            .map_err(|_| psp_unavailable())?;
        if let Some(authorization) = authorized.filter(psp::Transaction::succeeded) {
            self.void_authorization(&payment_id, &authorization.id)
                .await?;
        }
        if !order.redemption_id.is_empty() && !order.redemption_id.starts_with("pending:") {
            self.loyalty.void(tenant, &order.redemption_id).await?;
        }
        record.step = Step::Failed as i32;
        self.save_placement(key, version, record).await.map(drop)
    }

    /// Notes that `tenant` has placements for the background round (idempotent).
    async fn note_tenant(&self, tenant: &str) -> Result<(), CheckoutError> {
        if self.known(tenant) {
            return Ok(());
        }
        let key = AggregateKey::new(SYSTEM_TENANT, "checkout_tenant", tenant);
        if self.store.load(&key).await?.is_none() {
            match self
                .store
                .commit(commit(key, 0, Vec::new(), vec![index("all", "1")]))
                .await
            {
                Ok(_) | Err(store::StoreError::Conflict { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
        self.remember(tenant);
        Ok(())
    }

    fn known(&self, what: &str) -> bool {
        self.known.lock().expect("known set").contains(what)
    }

    fn remember(&self, what: &str) {
        self.known
            .lock()
            .expect("known set")
            .insert(what.to_owned());
    }

    /// Opens the tenant's money accounts in `currency` (once per process).
    async fn open_money_accounts(&self, tenant: &str, currency: &str) -> Result<(), CheckoutError> {
        let known = format!("{tenant}/{currency}");
        if self.known(&known) {
            return Ok(());
        }
        for what in ["psp", "revenue"] {
            self.ledger
                .open_account(tenant, &money_account(what, currency), currency, None)
                .await?;
        }
        self.remember(&known);
        Ok(())
    }

    /// Where the caller's own order id stands: free, or the order placed under it.
    async fn external(&self, tenant: &str, external_id: &str) -> Result<ExternalId, CheckoutError> {
        if external_id.is_empty() {
            return Ok(ExternalId::Free { version: 0 });
        }
        let Some(claim) = self
            .store
            .load(&AggregateKey::new(tenant, EXTERNAL, external_id))
            .await?
        else {
            return Ok(ExternalId::Free { version: 0 });
        };
        if claim.data.is_empty() {
            // Released by a placement that failed.
            return Ok(ExternalId::Free {
                version: claim.version,
            });
        }
        let order_id = String::from_utf8_lossy(&claim.data).into_owned();
        match self.order(tenant, &order_id).await {
            Ok(order) => Ok(ExternalId::Taken(Box::new(order))),
            // Claimed by a placement still running: report it as in flight.
            Err(CheckoutError::NotFound { .. }) => Err(CheckoutError::Precondition {
                reason: ErrorReason::IdempotencyKeyInUse,
                message: format!("order {external_id} is being placed by another request"),
            }),
            Err(error) => Err(error),
        }
    }

    /// The version of the cart's claim when placement `placement_id` may take it (0: never
    /// claimed); `CART_ALREADY_ORDERED` naming the order when another placement holds it.
    async fn cart_free(
        &self,
        tenant: &str,
        cart_id: &str,
        placement_id: &str,
    ) -> Result<u64, CheckoutError> {
        let key = AggregateKey::new(tenant, CART_CLAIM, cart_id);
        let Some(stored) = self.store.load(&key).await? else {
            return Ok(0);
        };
        let claim: CartClaim = decode(&stored.data, "cart claim")?;
        if claim.placement.is_empty() || claim.placement == placement_id {
            Ok(stored.version)
        } else {
            Err(CheckoutError::CartAlreadyOrdered {
                cart_id: cart_id.to_owned(),
                order_id: claim.order_id,
            })
        }
    }

    /// The commits that hand back what a failed placement held — its cart and the caller's
    /// order id — so both can be placed again.
    async fn releases(
        &self,
        key: &AggregateKey,
        record: &PlacementRecord,
    ) -> Result<Vec<Commit>, CheckoutError> {
        let Some(order) = record.order.as_ref() else {
            return Ok(Vec::new());
        };
        let mut released = Vec::new();
        let cart = AggregateKey::new(&key.tenant, CART_CLAIM, &order.cart_id);
        if let Some(stored) = self.store.load(&cart).await? {
            let claim: CartClaim = decode(&stored.data, "cart claim")?;
            if claim.placement == key.id {
                released.push(commit(cart, stored.version, Vec::new(), Vec::new()));
            }
        }
        if !order.external_order_id.is_empty() {
            let external = AggregateKey::new(&key.tenant, EXTERNAL, &order.external_order_id);
            if let Some(stored) = self.store.load(&external).await?
                && stored.data.as_ref() == order.order_id.as_bytes()
            {
                released.push(commit(external, stored.version, Vec::new(), Vec::new()));
            }
        }
        Ok(released)
    }

    /// Re-prices the cart and builds the order to place.
    async fn draft(
        &self,
        tenant: &str,
        placement: &Placement,
        key: &str,
    ) -> Result<Order, CheckoutError> {
        let accepted = self.quotes.stored(tenant, &placement.quote_id).await?;
        let now = self.now_ms(tenant).await?;
        if accepted.cart_id != placement.cart_id {
            return Err(CheckoutError::invalid(
                "quote_id",
                "belongs to another cart",
            ));
        }
        if accepted
            .expire_time
            .is_some_and(|expire| expire.seconds * 1000 <= now)
        {
            return Err(precondition(
                ErrorReason::QuoteStale,
                "the quote has expired; quote again",
            ));
        }
        let fresh: Quote = self.quotes.quote(tenant, &placement.cart_id).await?;
        if fresh.total != accepted.total
            || fresh.total.as_ref() != Some(&placement.expected_total)
            || fresh.cart_version != accepted.cart_version
        {
            return Err(precondition(
                ErrorReason::QuoteStale,
                "the cart's price changed since the quote; quote again",
            ));
        }
        let cart = self.carts.get(tenant, &placement.cart_id).await?;
        let catalog = self.carts.catalog();
        let location = catalog.location(tenant, &cart.location_id).await?;
        let capture_mode = match CaptureMode::try_from(location.capture_mode) {
            Ok(CaptureMode::OnCompletion) => CaptureMode::OnCompletion,
            _ => CaptureMode::OnPlacement,
        };
        let total = minor(&fresh.total);
        let currency = fresh
            .total
            .as_ref()
            .map(|total| total.currency_code.clone())
            .unwrap_or_default();
        // Room for a bigger tip before capture: a share of the total before tip.
        let headroom = if capture_mode == CaptureMode::OnCompletion {
            (total - minor(&fresh.tip)) * i64::from(location.tip_headroom_percent) / 100
        } else {
            0
        };
        let mut lines = Vec::new();
        for (cart_line, priced) in cart.lines.iter().zip(&fresh.lines) {
            let item = catalog.item(tenant, &cart_line.item_id).await?;
            lines.push(OrderLine {
                line_id: cart_line.line_id.clone(),
                item_id: cart_line.item_id.clone(),
                sku: item.sku,
                category: item.category,
                display_name: item.display_name,
                quantity: cart_line.quantity,
                modifiers: cart_line.modifiers.clone(),
                pricing: Some(priced.clone()),
            });
        }
        // Newest first by id: the id leads with the time counted down.
        let order_id = format!(
            "ord-{:013}-{}",
            9_999_999_999_999 - now,
            &key[..key.len().min(12)]
        );
        Ok(Order {
            order_id: order_id.clone(),
            external_order_id: placement.external_order_id.clone(),
            cart_id: cart.cart_id.clone(),
            location_id: cart.location_id.clone(),
            customer_id: cart.customer_id.clone(),
            member_id: cart.member_id.clone(),
            lines,
            totals: Some(OrderTotals {
                items_subtotal: fresh.items_subtotal,
                discount_total: fresh.discount_total,
                reward_discount: fresh.reward_discount,
                fees_total: fresh.fees_total,
                tax_total: fresh.tax_total,
                tip: fresh.tip,
                total: fresh.total.clone(),
            }),
            fulfillment: cart.fulfillment,
            status: OrderStatus::Unspecified as i32,
            payment: Some(Payment {
                payment_id: format!("pay-{}", &key[..key.len().min(32)]),
                status: PaymentStatus::Unspecified as i32,
                authorized_amount: money(&currency, total + headroom),
                capture_mode: capture_mode as i32,
                ..Payment::default()
            }),
            redemption_id: String::new(),
            promised_time: fresh.promised_time,
            ..Order::default()
        })
        .map(|mut order| {
            if let Some(reward) = &cart.loyalty_reward {
                // Remembered in the draft so the reward step knows what to hold.
                order.redemption_id = format!("pending:{}", reward.reward_id);
            }
            order
        })
    }

    /// Runs the next step of the saga and stores where it got to.
    async fn advance(
        &self,
        tenant: &str,
        key: &AggregateKey,
        version: u64,
        mut record: PlacementRecord,
        recorded: Recorded<'_>,
    ) -> Result<Advanced, CheckoutError> {
        let mut order = record.order.clone().unwrap_or_default();
        let currency = order
            .totals
            .as_ref()
            .and_then(|totals| totals.total.as_ref())
            .map(|total| total.currency_code.clone())
            .unwrap_or_default();
        let total = order
            .payment
            .as_ref()
            .map_or(0, |payment| minor(&payment.authorized_amount));
        let payment_id = order
            .payment
            .as_ref()
            .map(|payment| payment.payment_id.clone())
            .unwrap_or_default();
        let step = record.step;
        if step == Step::Started as i32 {
            if let Some(reward_id) = order
                .redemption_id
                .strip_prefix("pending:")
                .map(str::to_owned)
            {
                let held = self
                    .loyalty
                    .hold(
                        tenant,
                        &order.member_id,
                        &reward_id,
                        &order.order_id,
                        &key.id,
                    )
                    .await;
                match held {
                    Ok(redemption) => order.redemption_id = redemption,
                    // Refused (too few points, reward gone, member unregistered): nothing is
                    // held, the placement fails for good and hands its cart back.
                    Err(CheckoutError::Precondition { reason, message }) => {
                        order.redemption_id.clear();
                        record.step = Step::Failed as i32;
                        record.failure = message;
                        record.failure_reason = reason as i32;
                        record.order = Some(order);
                        return self
                            .save_placement(key, version, record)
                            .await
                            .map(Advanced::saved);
                    }
                    Err(error) => return Err(error),
                }
            }
            record.step = Step::RewardHeld as i32;
        } else if step == Step::RewardHeld as i32 && total == 0 {
            // Nothing to pay (a reward or promotion covers the order): no authorization — the
            // PSP refuses zero amounts, and there is nothing to hold.
            return self
                .commit_order(tenant, key, version, record, order, String::new(), recorded)
                .await;
        } else if step == Step::RewardHeld as i32 || step == Step::PaymentUnknown as i32 {
            let authorized = if step == Step::PaymentUnknown as i32 {
                // The last attempt's reply was lost: ask before acting.
                match self.psp.lookup(&payment_id).await {
                    Ok(Some(transaction)) if transaction.succeeded() => Ok(transaction),
                    Ok(Some(_)) | Ok(None) => {
                        self.authorize(
                            &payment_id,
                            &record.payment_token,
                            &currency,
                            total,
                            &order.order_id,
                        )
                        .await
                    }
                    Err(_) => Err(OutboundError::Timeout),
                }
            } else {
                self.authorize(
                    &payment_id,
                    &record.payment_token,
                    &currency,
                    total,
                    &order.order_id,
                )
                .await
            };
            match authorized {
                Ok(authorization) => {
                    return self
                        .commit_order(
                            tenant,
                            key,
                            version,
                            record,
                            order,
                            authorization.id,
                            recorded,
                        )
                        .await;
                }
                Err(error)
                    if error.outcome_unknown()
                        || matches!(&error, OutboundError::Failed(failure) if failure.is_outcome_unknown()) =>
                {
                    record.step = Step::PaymentUnknown as i32;
                    record.order = Some(order);
                    self.note_tenant(tenant).await?;
                    self.save_placement(key, version, record).await?;
                    return Err(CheckoutError::Unavailable {
                        what: "the payment provider",
                        reason: ErrorReason::PaymentOutcomeUnknown,
                    });
                }
                Err(error) => {
                    let (message, reason) = match &error {
                        // Nothing was charged (unavailable after every attempt, breaker open,
                        // no time left): the placement stays where it is and the caller may
                        // retry with the same key.
                        other @ (OutboundError::Failed(PspError::Unavailable)
                        | OutboundError::CircuitOpen { .. }
                        | OutboundError::DeadlineExceeded
                        | OutboundError::Timeout) => {
                            tracing::warn!(error = %other, "checkout: PSP unavailable");
                            return Err(CheckoutError::Unavailable {
                                what: "the payment provider",
                                reason: ErrorReason::DependencyUnavailable,
                            });
                        }
                        OutboundError::Failed(PspError::CardDataRejected) => (
                            "the payment token looks like card data".to_owned(),
                            ErrorReason::CardDataRejected,
                        ),
                        OutboundError::Failed(failure) => match failure.declined() {
                            Some((code, hard)) => (
                                format!(
                                    "the payment was declined ({code}{})",
                                    if hard { ", do not retry" } else { "" }
                                ),
                                ErrorReason::PaymentDeclined,
                            ),
                            None => (
                                format!("the payment failed: {failure}"),
                                ErrorReason::PaymentDeclined,
                            ),
                        },
                    };
                    // Compensate: return the held reward.
                    if !order.redemption_id.is_empty()
                        && !order.redemption_id.starts_with("pending:")
                    {
                        self.loyalty.void(tenant, &order.redemption_id).await?;
                    }
                    record.step = Step::Failed as i32;
                    record.failure = message;
                    record.failure_reason = reason as i32;
                }
            }
        }
        record.order = Some(order);
        self.save_placement(key, version, record)
            .await
            .map(Advanced::saved)
    }

    /// Stores where a placement got to (compare-and-set on its version).
    async fn save_placement(
        &self,
        key: &AggregateKey,
        version: u64,
        record: PlacementRecord,
    ) -> Result<(u64, PlacementRecord), CheckoutError> {
        let index = placement_index(record.step);
        let mut commits = vec![commit(key.clone(), version, record.encode_to_vec(), index)];
        if record.step == Step::Failed as i32 {
            // Failed for good: the cart (and the caller's order id) go back in the same commit.
            commits.extend(self.releases(key, &record).await?);
        }
        let versions = self.store.commit_all(commits).await?;
        Ok((versions.first().copied().unwrap_or(version + 1), record))
    }

    async fn authorize(
        &self,
        payment_id: &str,
        token: &str,
        currency: &str,
        total: i64,
        order_id: &str,
    ) -> Result<psp::Transaction, OutboundError<PspError>> {
        self.outbound
            .call(Idempotent::Yes, |_| {
                self.psp.authorize(AuthorizeRequest {
                    idempotency_key: payment_id.to_owned(),
                    payment_token: token.to_owned(),
                    amount: psp::Money::new(currency, total),
                    reference: order_id.to_owned(),
                })
            })
            .await
    }

    /// Commits the authorized order with `OrderPlaced`, then captures, posts the reward hold
    /// and marks it paid with `OrderPaid`; returns the order as its last commit left it, which
    /// recorded the response (`recorded`).
    #[allow(clippy::too_many_arguments)]
    async fn commit_order(
        &self,
        tenant: &str,
        key: &AggregateKey,
        version: u64,
        mut record: PlacementRecord,
        mut order: Order,
        authorization_id: String,
        recorded: Recorded<'_>,
    ) -> Result<Advanced, CheckoutError> {
        let now = self.now_ms(tenant).await?;
        let currency = order
            .totals
            .as_ref()
            .and_then(|t| t.total.clone())
            .map(|t| t.currency_code)
            .unwrap_or_default();
        order.status = OrderStatus::Placed as i32;
        order.status_history = vec![OrderStatusChange {
            status: OrderStatus::Placed as i32,
            change_time: Some(timestamp_ms(now)),
            reason: String::new(),
        }];
        if let Some(payment) = order.payment.as_mut() {
            payment.psp_reference = authorization_id.clone();
            payment.refunded_amount = money(&currency, 0);
            if authorization_id.is_empty() {
                // Nothing to pay; settled (captured 0) once the reward is posted.
                payment.status = PaymentStatus::NotRequired as i32;
                payment.captured_amount = None;
            } else {
                payment.status = PaymentStatus::Authorized as i32;
                payment.captured_amount = money(&currency, 0);
            }
        }
        order.create_time = Some(timestamp_ms(now));
        order.update_time = Some(timestamp_ms(now));
        order.version = 1;
        // Take the order's place in its kitchen slot, in the same commit as the order.
        let location = self
            .carts
            .catalog()
            .location(tenant, &order.location_id)
            .await?;
        let wanted = order.promised_time.map_or(now, |time| {
            time.seconds * 1000 + i64::from(time.nanos) / 1_000_000
        });
        let promise = match crate::slots::promise(
            self.store.as_ref(),
            tenant,
            &location,
            wanted,
            &order.order_id,
        )
        .await
        {
            Ok(promise) => promise,
            Err(full @ CheckoutError::SlotFull { .. }) => {
                // Filled since the quote: compensate, nothing stays charged or held.
                if !authorization_id.is_empty() {
                    self.void_authorization(
                        &order
                            .payment
                            .as_ref()
                            .map(|p| p.payment_id.clone())
                            .unwrap_or_default(),
                        &authorization_id,
                    )
                    .await?;
                }
                if !order.redemption_id.is_empty() {
                    self.loyalty.void(tenant, &order.redemption_id).await?;
                }
                record.step = Step::Failed as i32;
                record.failure = full.to_string();
                record.failure_reason = ErrorReason::SlotFull as i32;
                record.order = Some(order);
                return self
                    .save_placement(key, version, record)
                    .await
                    .map(Advanced::saved);
            }
            Err(error) => return Err(error),
        };
        order.promised_time = Some(timestamp_ms(promise.promised_ms));
        record.step = Step::Placed as i32;
        record.order = Some(order.clone());
        let order_key = AggregateKey::new(tenant, ORDER, &order.order_id);
        let mut created = commit(
            order_key.clone(),
            0,
            order.encode_to_vec(),
            order_index(&order),
        );
        created.events = vec![event(
            &order_key,
            1,
            now,
            &OrderPlaced {
                order: Some(order.clone()),
            },
        )];
        let capture_now = capture_due(&order);
        if !capture_now {
            // Nothing follows this commit: it completes the call.
            created.idempotency = recorded.record(&order);
        }
        let mut commits = vec![
            created,
            commit(
                key.clone(),
                version,
                record.encode_to_vec(),
                placement_index(record.step),
            ),
        ];
        commits.extend(promise.reservation);
        self.store.commit_all(commits).await?;
        let _ = self.changes.send(format!("{tenant}/{}", order.order_id));
        if capture_now {
            // A failure leaves the order placed and authorized with its capture due: the
            // background round captures it under the same key, never twice.
            match self
                .capture_recording(tenant, &order.order_id, recorded)
                .await
            {
                Ok(captured) => return Ok(Advanced::Placed(captured)),
                Err(error) => {
                    tracing::warn!(%error, order = %order.order_id, "checkout: capture failed; the background round retries it");
                }
            }
        }
        Ok(Advanced::Placed(order))
    }

    /// Captures an order whose capture is due (see [`capture_due`]): its total now (with an
    /// adjusted tip) at the PSP under the payment's capture key, posts the reward hold, and
    /// records the capture — with its money-ledger entry and `OrderPaid` — in one commit. Each
    /// step is idempotent, so a repeat after any failure finishes the job once.
    pub async fn capture(&self, tenant: &str, order_id: &str) -> Result<Order, CheckoutError> {
        self.capture_recording(tenant, order_id, Recorded::Nothing)
            .await
    }

    /// [`Orders::capture`], recording `recorded` in the commit that marks the order captured.
    async fn capture_recording(
        &self,
        tenant: &str,
        order_id: &str,
        recorded: Recorded<'_>,
    ) -> Result<Order, CheckoutError> {
        let order = self.order(tenant, order_id).await?;
        if !capture_due(&order) {
            return Ok(order);
        }
        let payment = order.payment.clone().unwrap_or_default();
        let total = order
            .totals
            .as_ref()
            .and_then(|totals| totals.total.clone())
            .unwrap_or_default();
        // An order with nothing to pay settles without the PSP and without a money movement.
        let nothing_to_pay = payment.status == PaymentStatus::NotRequired as i32;
        let captured = if nothing_to_pay {
            None
        } else {
            let captured = self
                .outbound
                .call(Idempotent::Yes, |_| {
                    self.psp.capture(CaptureRequest {
                        idempotency_key: format!("{}:capture", payment.payment_id),
                        authorization_id: payment.psp_reference.clone(),
                        amount: psp::Money::new(&total.currency_code, total.amount_minor),
                    })
                })
                .await
                .map_err(|error| psp_failure("capture", &error))?;
            // Fault tests die here: captured at the PSP, not yet recorded on the order.
            platform::failpoint::hit("checkout.capture.after_psp");
            Some(captured)
        };
        if !order.redemption_id.is_empty() && !order.redemption_id.starts_with("pending:") {
            self.loyalty.commit(tenant, &order.redemption_id).await?;
        }
        let now = self.now_ms(tenant).await?;
        // The entry's content must not depend on the attempt: two captures of one order (the
        // request path and the background round, two replicas, a retry after a crash) post
        // the same entry, so the second finds it posted instead of conflicting with it.
        let entry = captured.as_ref().map(|captured| {
            NewEntry::new(
                format!("checkout:capture:{order_id}"),
                capture_due_ms(&order),
            )
            .transfer(
                &money_account("revenue", &total.currency_code),
                &money_account("psp", &total.currency_code),
                &total.currency_code,
                total.amount_minor,
            )
            .metadata("order_id", order_id)
            .metadata("psp_reference", captured.id.as_str())
        });
        self.update_order(tenant, order_id, now, entry, recorded, |order| {
            let Some(payment) = order.payment.as_mut() else {
                return Ok(None);
            };
            match &captured {
                None if payment.status == PaymentStatus::NotRequired as i32
                    && !settled_without_payment(payment) =>
                {
                    payment.captured_amount = money(&total.currency_code, 0);
                }
                Some(captured) if payment.status == PaymentStatus::Authorized as i32 => {
                    payment.status = PaymentStatus::Captured as i32;
                    payment.captured_amount = Some(Money {
                        currency_code: total.currency_code.clone(),
                        amount_minor: total.amount_minor,
                    });
                    payment.psp_reference.clone_from(&captured.id);
                }
                _ => return Ok(None),
            }
            Ok(Some(paid_event(order, now)))
        })
        .await
    }

    /// Sets the tip of an order captured on completion and not completed yet (see the RPC).
    pub async fn adjust_tip(
        &self,
        tenant: &str,
        order_id: &str,
        tip: &Money,
    ) -> Result<Order, CheckoutError> {
        if tip.amount_minor < 0 {
            return Err(CheckoutError::invalid(
                "tip.amount_minor",
                "must not be negative",
            ));
        }
        let now = self.now_ms(tenant).await?;
        self.update_order(tenant, order_id, now, None, Recorded::Nothing, |order| {
            let payment = order.payment.clone().unwrap_or_default();
            let mut totals = order.totals.clone().unwrap_or_default();
            let previous_tip = totals.tip.clone().unwrap_or_default();
            let currency = payment
                .authorized_amount
                .as_ref()
                .map(|amount| amount.currency_code.clone())
                .unwrap_or_default();
            if tip.currency_code != currency {
                return Err(CheckoutError::invalid(
                    "tip.currency_code",
                    format!("the order is paid in {currency}"),
                ));
            }
            let open = payment.status == PaymentStatus::Authorized as i32
                && payment.capture_mode == CaptureMode::OnCompletion as i32
                && ![OrderStatus::Completed as i32, OrderStatus::Canceled as i32]
                    .contains(&order.status);
            if !open {
                return Err(precondition(
                    ErrorReason::PaymentAlreadyCaptured,
                    "the tip can change only before an order captured on completion is completed",
                ));
            }
            if previous_tip.amount_minor == tip.amount_minor {
                return Ok(None);
            }
            let total = minor(&totals.total) - previous_tip.amount_minor + tip.amount_minor;
            let authorized = minor(&payment.authorized_amount);
            if total > authorized {
                return Err(precondition(
                    ErrorReason::TipExceedsAuthorization,
                    format!(
                        "the total with this tip, {total}, exceeds the {authorized} authorized"
                    ),
                ));
            }
            totals.tip = Some(tip.clone());
            totals.total = money(&currency, total);
            order.totals = Some(totals);
            Ok(Some(OrderTipAdjusted {
                order_id: order.order_id.clone(),
                previous_tip: Some(previous_tip),
                tip: Some(tip.clone()),
                total: money(&currency, total),
            }))
        })
        .await
    }

    /// Reads an order, lets `change` edit it and name its event (`None`: nothing to change),
    /// and commits it with the event — and with `posting` in the money ledger, when given —
    /// re-reading on a lost race.
    async fn update_order<E: prost_reflect::ReflectMessage>(
        &self,
        tenant: &str,
        order_id: &str,
        now: i64,
        posting: Option<NewEntry>,
        recorded: Recorded<'_>,
        mut change: impl FnMut(&mut Order) -> Result<Option<E>, CheckoutError>,
    ) -> Result<Order, CheckoutError> {
        if let Some(entry) = &posting
            && let Some(unit) = entry.postings.first().map(|posting| posting.unit.clone())
        {
            self.open_money_accounts(tenant, &unit).await?;
        }
        let key = AggregateKey::new(tenant, ORDER, order_id);
        let mut lost_races = 0u32;
        loop {
            let stored = self
                .store
                .load(&key)
                .await?
                .ok_or_else(|| CheckoutError::NotFound {
                    resource: "order",
                    id: order_id.to_owned(),
                })?;
            let mut order: Order = decode(&stored.data, "order")?;
            let Some(emitted) = change(&mut order)? else {
                return Ok(order);
            };
            order.version += 1;
            order.update_time = Some(timestamp_ms(now));
            let mut commit = commit(
                key.clone(),
                stored.version,
                order.encode_to_vec(),
                order_index(&order),
            );
            commit.events = vec![event(&key, stored.version + 1, now, &emitted)];
            commit.idempotency = recorded.record(&order);
            let committed = match &posting {
                None => self.store.commit(commit).await.map(drop),
                Some(entry) => match self
                    .ledger
                    .write_with(tenant, Write::Post(entry.clone()), vec![commit.clone()])
                    .await
                {
                    Ok(written) if written.new => Ok(()),
                    // Already posted by a concurrent attempt that changed the order too:
                    // this commit then loses the race for the order, and the re-read finds
                    // nothing left to change.
                    Ok(_) => self.store.commit(commit).await.map(drop),
                    Err(ledger::LedgerError::EntryConflict { .. })
                        if self.posted_as(tenant, entry).await? =>
                    {
                        self.store.commit(commit).await.map(drop)
                    }
                    Err(ledger::LedgerError::Store(error)) => Err(error),
                    Err(error) => return Err(error.into()),
                },
            };
            match committed {
                Ok(()) => {
                    let _ = self.changes.send(format!("{tenant}/{order_id}"));
                    return Ok(order);
                }
                Err(store::StoreError::Conflict { .. }) => {
                    // Lost a race for the order or, with a posting, for the tenant's ledger
                    // chain, which every capture and refund of the tenant appends to: pause a
                    // jittered, growing while so racing writers spread out instead of colliding
                    // again at once.
                    lost_races += 1;
                    let ceiling = 200u64 << lost_races.min(7);
                    tokio::time::sleep(Duration::from_micros(fastrand::u64(0..ceiling))).await;
                }
                Err(error) => return Err(error.into()),
            }
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

    /// An order by id.
    pub async fn order(&self, tenant: &str, order_id: &str) -> Result<Order, CheckoutError> {
        let stored = self
            .store
            .load(&AggregateKey::new(tenant, ORDER, order_id))
            .await?
            .ok_or_else(|| CheckoutError::NotFound {
                resource: "order",
                id: order_id.to_owned(),
            })?;
        decode(&stored.data, "order")
    }

    /// Orders newest first, filtered by customer, location and statuses.
    pub async fn orders(
        &self,
        tenant: &str,
        customer_id: &str,
        location_id: &str,
        statuses: &[i32],
        page_size: usize,
        token: &str,
    ) -> Result<(Vec<Order>, String), CheckoutError> {
        let scope = format!("orders:{customer_id}:{location_id}:{statuses:?}");
        let start = page_token::decode(&scope, token)?;
        let filter = if !customer_id.is_empty() {
            index("customer", customer_id)
        } else if !location_id.is_empty() {
            index("location", location_id)
        } else {
            index("all", "1")
        };
        let mut pages = Pages::new(self.store.as_ref(), tenant, ORDER, filter, 256).after(start);
        let mut orders = Vec::new();
        while let Some(page) = pages.next().await? {
            for (id, stored) in page {
                let order: Order = decode(&stored.data, "order")?;
                let keep = (location_id.is_empty() || order.location_id == location_id)
                    && (statuses.is_empty() || statuses.contains(&order.status));
                if keep {
                    orders.push(order);
                    if orders.len() == page_size {
                        return Ok((orders, page_token::encode(&scope, &id)));
                    }
                }
            }
        }
        Ok((orders, String::new()))
    }

    /// Moves the order forward in the kitchen; the same status again is a no-op; anything else
    /// than the next step is `ORDER_TRANSITION_INVALID`.
    pub async fn advance_status(
        &self,
        tenant: &str,
        order_id: &str,
        status: OrderStatus,
    ) -> Result<Order, CheckoutError> {
        let now = self.now_ms(tenant).await?;
        let order = self
            .update_order(tenant, order_id, now, None, Recorded::Nothing, |order| {
                let current = OrderStatus::try_from(order.status).unwrap_or_default();
                if current == status {
                    return Ok(None);
                }
                let next = match current {
                    OrderStatus::Placed => OrderStatus::Accepted,
                    OrderStatus::Accepted => OrderStatus::InPreparation,
                    OrderStatus::InPreparation => OrderStatus::Ready,
                    OrderStatus::Ready => OrderStatus::Completed,
                    _ => OrderStatus::Unspecified,
                };
                if status != next {
                    return Err(precondition(
                        ErrorReason::OrderTransitionInvalid,
                        format!(
                            "an order {} cannot move to {}",
                            current.as_str_name(),
                            status.as_str_name()
                        ),
                    ));
                }
                order.status = status as i32;
                order.status_history.push(OrderStatusChange {
                    status: status as i32,
                    change_time: Some(timestamp_ms(now)),
                    reason: String::new(),
                });
                Ok(Some(OrderStatusChanged {
                    order_id: order.order_id.clone(),
                    previous_status: current as i32,
                    status: status as i32,
                    change_time: Some(timestamp_ms(now)),
                }))
            })
            .await?;
        if !capture_due(&order) {
            return Ok(order);
        }
        // Completed with its capture due: capture now; on failure the order stays completed
        // and authorized, and the background round captures it.
        match self.capture(tenant, order_id).await {
            Ok(captured) => Ok(captured),
            Err(error) => {
                tracing::warn!(%error, order = %order_id, "checkout: capture on completion failed; the background round retries it");
                Ok(order)
            }
        }
    }

    /// Refunds `amount` (all that is left when `None`) of the captured payment, never more
    /// than captured minus refunded (`REFUND_EXCEEDS_CAPTURED`). The refund id derives from
    /// `key`, which is also the PSP's idempotency key: a retry after a crash repeats the PSP
    /// call (which replays) and records the refund once.
    pub async fn refund(
        &self,
        tenant: &str,
        order_id: &str,
        amount: Option<&Money>,
        reason: &str,
        key: &str,
    ) -> Result<(Order, commerce_api::commerce::checkout::v1::Refund), CheckoutError> {
        self.refund_recording(tenant, order_id, amount, reason, key, None)
            .await
    }

    /// [`Orders::refund`], with the `RefundOrderResponse` carrying the returned order and
    /// refund recorded under `idempotency` in the commit that records the refund. A repeat that
    /// finds the refund done, or a failure, records nothing here: the idempotency layer records
    /// its answer.
    pub async fn refund_recording(
        &self,
        tenant: &str,
        order_id: &str,
        amount: Option<&Money>,
        reason: &str,
        key: &str,
        idempotency: Option<&IdempotencyContext>,
    ) -> Result<(Order, commerce_api::commerce::checkout::v1::Refund), CheckoutError> {
        let refund_id = format!("rf-{}", &key[..key.len().min(24)]);
        let recorded = idempotency.map_or(Recorded::Nothing, |context| {
            Recorded::RefundOrder(context, &refund_id)
        });
        let order = self.order(tenant, order_id).await?;
        if let Some(done) = order
            .refunds
            .iter()
            .find(|refund| refund.refund_id == refund_id)
        {
            return Ok((order.clone(), done.clone()));
        }
        let payment = order.payment.clone().unwrap_or_default();
        if payment.status == PaymentStatus::NotRequired as i32 {
            return Err(precondition(
                ErrorReason::RefundExceedsCaptured,
                format!(
                    "order {order_id} cost nothing: no payment was taken, so nothing can be refunded"
                ),
            ));
        }
        let captured = minor(&payment.captured_amount);
        let left = captured - minor(&payment.refunded_amount);
        let currency = payment
            .captured_amount
            .as_ref()
            .map(|m| m.currency_code.clone())
            .unwrap_or_default();
        let wanted = match amount {
            Some(amount) if amount.currency_code != currency => {
                return Err(CheckoutError::invalid(
                    "amount.currency_code",
                    format!("the order was paid in {currency}"),
                ));
            }
            Some(amount) if amount.amount_minor <= 0 => {
                return Err(CheckoutError::invalid("amount", "must be positive"));
            }
            Some(amount) => amount.amount_minor,
            None => left,
        };
        if captured == 0 || wanted > left || wanted <= 0 {
            return Err(precondition(
                ErrorReason::RefundExceedsCaptured,
                format!("{wanted} exceeds the {left} captured and not refunded"),
            ));
        }
        let refunded = self
            .outbound
            .call(Idempotent::Yes, |_| {
                self.psp.refund(psp::RefundRequest {
                    idempotency_key: refund_id.clone(),
                    capture_id: payment.psp_reference.clone(),
                    amount: psp::Money::new(&currency, wanted),
                })
            })
            .await
            .map_err(|error| psp_failure("refund", &error))?;
        let now = self.now_ms(tenant).await?;
        let refund = commerce_api::commerce::checkout::v1::Refund {
            refund_id: refund_id.clone(),
            amount: money(&currency, wanted),
            reason: reason.to_owned(),
            psp_reference: refunded.id,
            create_time: Some(timestamp_ms(now)),
        };
        let entry = NewEntry::new(format!("checkout:refund:{refund_id}"), now)
            .transfer(
                &money_account("psp", &currency),
                &money_account("revenue", &currency),
                &currency,
                wanted,
            )
            .metadata("order_id", order_id)
            .metadata("psp_reference", refund.psp_reference.as_str());
        let order = self
            .update_order(tenant, order_id, now, Some(entry), recorded, |order| {
                if order.refunds.iter().any(|done| done.refund_id == refund_id) {
                    return Ok(None);
                }
                let payment = order.payment.get_or_insert_with(Payment::default);
                let total_refunded = minor(&payment.refunded_amount) + wanted;
                payment.refunded_amount = money(&currency, total_refunded);
                payment.status = if total_refunded >= minor(&payment.captured_amount) {
                    PaymentStatus::Refunded
                } else {
                    PaymentStatus::PartiallyRefunded
                } as i32;
                let captured_amount = payment.captured_amount.clone();
                order.refunds.push(refund.clone());
                let totals = order.totals.clone().unwrap_or_default();
                Ok(Some(OrderRefunded {
                    order_id: order.order_id.clone(),
                    refund_id: refund_id.clone(),
                    amount: money(&currency, wanted),
                    total_refunded: money(&currency, total_refunded),
                    captured_amount,
                    eligible_amount: money(&currency, eligible_minor(&totals)),
                    member_id: order.member_id.clone(),
                }))
            })
            .await?;
        let recorded = order
            .refunds
            .iter()
            .find(|done| done.refund_id == refund_id)
            .cloned()
            .unwrap_or(refund);
        Ok((order, recorded))
    }

    /// Cancels an order that is not completed: voids an uncaptured authorization or refunds
    /// what is captured and not refunded (with `OrderRefunded`, so loyalty reverses the
    /// points), returns the reward (voids the hold, or reverses a posted redemption), and marks
    /// it canceled with `OrderCanceled`. Canceling a canceled order returns it unchanged. Every
    /// outside call is idempotent by a key derived from the order, so a retried cancel never
    /// moves money twice.
    pub async fn cancel(
        &self,
        tenant: &str,
        order_id: &str,
        reason: &str,
    ) -> Result<Order, CheckoutError> {
        let order = self.order(tenant, order_id).await?;
        match OrderStatus::try_from(order.status).unwrap_or_default() {
            OrderStatus::Canceled => return Ok(order),
            OrderStatus::Completed => {
                return Err(precondition(
                    ErrorReason::OrderTransitionInvalid,
                    "a completed order cannot be canceled; refund it instead",
                ));
            }
            _ => {}
        }
        let payment = order.payment.clone().unwrap_or_default();
        let currency = payment
            .authorized_amount
            .as_ref()
            .map(|amount| amount.currency_code.clone())
            .unwrap_or_default();
        let status = PaymentStatus::try_from(payment.status).unwrap_or_default();
        let mut refunded_now = 0;
        match status {
            PaymentStatus::Authorized => {
                self.void_authorization(&payment.payment_id, &payment.psp_reference)
                    .await?;
            }
            PaymentStatus::Captured | PaymentStatus::PartiallyRefunded => {
                let left = minor(&payment.captured_amount) - minor(&payment.refunded_amount);
                if left > 0 {
                    let amount = Money {
                        currency_code: currency.clone(),
                        amount_minor: left,
                    };
                    let key = format!("{order_id}:cancel");
                    self.refund(tenant, order_id, Some(&amount), reason, &key)
                        .await?;
                    refunded_now = left;
                }
            }
            _ => {}
        }
        if !order.redemption_id.is_empty() && !order.redemption_id.starts_with("pending:") {
            match status {
                PaymentStatus::Authorized => {
                    self.loyalty.void(tenant, &order.redemption_id).await?
                }
                // Nothing paid: the reward is held (not settled yet) or posted (settled) —
                // and a settlement may be racing this cancel. Void, then reverse: whichever
                // state the redemption is in, the other call is a no-op, and the points
                // come back.
                PaymentStatus::NotRequired => {
                    self.loyalty.void(tenant, &order.redemption_id).await?;
                    self.loyalty.reverse(tenant, &order.redemption_id).await?;
                }
                _ => self.loyalty.reverse(tenant, &order.redemption_id).await?,
            }
        }
        let now = self.now_ms(tenant).await?;
        self.update_order(tenant, order_id, now, None, Recorded::Nothing, |order| {
            if order.status == OrderStatus::Canceled as i32 {
                return Ok(None);
            }
            order.status = OrderStatus::Canceled as i32;
            order.status_history.push(OrderStatusChange {
                status: OrderStatus::Canceled as i32,
                change_time: Some(timestamp_ms(now)),
                reason: reason.to_owned(),
            });
            if let Some(payment) = order.payment.as_mut()
                && payment.status == PaymentStatus::Authorized as i32
            {
                payment.status = PaymentStatus::Voided as i32;
            }
            Ok(Some(OrderCanceled {
                order_id: order.order_id.clone(),
                reason: reason.to_owned(),
                refunded_amount: money(&currency, refunded_now),
                member_id: order.member_id.clone(),
            }))
        })
        .await
    }

    /// The order now, then after every change, until it is completed or canceled (or the
    /// receiver goes away). Changes made in this process arrive at once; others within
    /// `WATCH_POLL`.
    pub async fn watch(
        &self,
        tenant: &str,
        order_id: &str,
    ) -> Result<tokio::sync::mpsc::Receiver<Order>, CheckoutError> {
        const WATCH_POLL: Duration = Duration::from_secs(1);
        let mut changes = self.changes.subscribe();
        let first = self.order(tenant, order_id).await?;
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        let (orders, tenant, order_id) = (self.clone(), tenant.to_owned(), order_id.to_owned());
        let topic = format!("{tenant}/{order_id}");
        tokio::spawn(async move {
            let mut last = first.version;
            let mut current = first;
            loop {
                let done = [OrderStatus::Completed as i32, OrderStatus::Canceled as i32]
                    .contains(&current.status);
                if sender.send(current).await.is_err() || done {
                    return;
                }
                loop {
                    tokio::select! {
                        heard = changes.recv() => match heard {
                            Ok(changed) if changed != topic => continue,
                            // Ours, or we missed some: re-read either way.
                            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        },
                        () = tokio::time::sleep(WATCH_POLL) => {}
                        () = sender.closed() => return,
                    }
                    match orders.order(&tenant, &order_id).await {
                        Ok(order) if order.version > last => {
                            last = order.version;
                            current = order;
                            break;
                        }
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!(%error, order = %order_id, "checkout: watch read failed");
                        }
                    }
                }
            }
        });
        Ok(receiver)
    }

    /// Voids an authorization that was never captured (a canceled order, a placement rolled
    /// back), through the outbound policy under the payment's void key, so a repeat voids once.
    pub async fn void_authorization(
        &self,
        payment_id: &str,
        authorization_id: &str,
    ) -> Result<(), CheckoutError> {
        self.outbound
            .call(Idempotent::Yes, |_| {
                self.psp.void(VoidRequest {
                    idempotency_key: format!("{payment_id}:void"),
                    authorization_id: authorization_id.to_owned(),
                })
            })
            .await
            .map(drop)
            .map_err(|error| psp_failure("void", &error))
    }
}

/// When the order's capture became due (unix ms on the tenant clock): when it was placed, or,
/// for a location capturing on completion, when it was completed. Fixed once due, so every
/// attempt at the capture stamps its ledger entry with the same time.
fn capture_due_ms(order: &Order) -> i64 {
    let on_completion = order
        .payment
        .as_ref()
        .is_some_and(|payment| payment.capture_mode == CaptureMode::OnCompletion as i32);
    let due = if on_completion {
        order
            .status_history
            .iter()
            .rev()
            .find(|change| change.status == OrderStatus::Completed as i32)
            .and_then(|change| change.change_time)
    } else {
        order.create_time
    };
    due.map_or(0, |time| {
        time.seconds * 1000 + i64::from(time.nanos) / 1_000_000
    })
}

/// What loyalty earns on: items after promotions and the reward, before tax, fees and tip.
fn eligible_minor(totals: &OrderTotals) -> i64 {
    minor(&totals.items_subtotal) - minor(&totals.discount_total) - minor(&totals.reward_discount)
}

/// `OrderPaid` for a captured order.
fn paid_event(order: &Order, now: i64) -> OrderPaid {
    let totals = order.totals.clone().unwrap_or_default();
    let currency = totals
        .total
        .as_ref()
        .map(|total| total.currency_code.clone())
        .unwrap_or_default();
    OrderPaid {
        order_id: order.order_id.clone(),
        location_id: order.location_id.clone(),
        customer_id: order.customer_id.clone(),
        member_id: order.member_id.clone(),
        lines: order
            .lines
            .iter()
            .map(|line| {
                let pricing = line.pricing.clone().unwrap_or_default();
                PaidLine {
                    item_id: line.item_id.clone(),
                    sku: line.sku.clone(),
                    category: line.category.clone(),
                    quantity: line.quantity,
                    amount: money(
                        &currency,
                        minor(&pricing.line_subtotal) - minor(&pricing.line_discount),
                    ),
                }
            })
            .collect(),
        eligible_amount: money(&currency, eligible_minor(&totals)),
        captured_amount: totals.total.clone(),
        paid_time: Some(timestamp_ms(now)),
    }
}

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

pub(crate) fn decode<M: prost::Message + Default>(
    data: &[u8],
    what: &str,
) -> Result<M, CheckoutError> {
    M::decode(data).map_err(|error| CheckoutError::Corrupt(format!("{what}: {error}")))
}
