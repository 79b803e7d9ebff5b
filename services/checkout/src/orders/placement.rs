//! The `PlaceOrder` saga (its steps are in the `orders` module docs). A placement record named
//! by the idempotency key holds where the saga stands and is stored before every step that
//! reaches outside, so a retry — or a process that restarts — continues from there.
//! [`Orders::drive`] runs the steps in turn until an order or a final failure; each step is one
//! function below, chosen by the stored [`Step`].

use std::sync::{Mutex, PoisonError};

use commerce_api::commerce::checkout::v1::{
    CaptureMode, Cart, Location, Order, OrderLine, OrderPlaced, OrderStatus, OrderStatusChange,
    OrderTotals, Payment, PaymentStatus, Quote,
};
use commerce_api::commerce::common::v1::{ErrorReason, Money};
use platform::interceptors::IdempotencyContext;
use platform::outbound::OutboundError;
use platform::units::{minor, money, ms_of, ms_of_timestamp, timestamp_of_ms};
use store::{AggregateKey, Commit, Retry, StoreError, retry_on_conflict};

use super::payments::{card_data_in_token, psp_unavailable};
use super::records::{
    CartClaim, PlacementRecord, capture_due, external_order_id_commit, held_redemption,
    order_index, placement_index,
};
use super::{CART_CLAIM, EXTERNAL, ORDER, Orders, PLACEMENT, Recorded, event, precondition};
use crate::error::CheckoutError;
use crate::ids;
use crate::psp::{self, PspError, Transaction};
use crate::slots::Promise;

/// Where a placement stands. The numbers are the stored form (the record's `step`): never
/// renumber or reuse one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub(crate) enum Step {
    /// Recorded with its cart claimed; the reward (if any) not held yet.
    Started = 0,
    /// The reward is held, or there is none: authorize next.
    RewardHeld = 1,
    /// An authorization's reply was lost: ask the PSP before anything else.
    PaymentUnknown = 2,
    /// The order is committed.
    Placed = 3,
    /// Failed for good: every retry answers the stored failure.
    Failed = 4,
    /// Abandoned part-way: the authorization and the reward hold are being released.
    Compensating = 5,
}

/// A stored step this build does not know (written by a newer build, or damaged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown placement step {0}")]
pub(crate) struct UnknownStep(pub(crate) i32);

impl TryFrom<i32> for Step {
    type Error = UnknownStep;

    fn try_from(stored: i32) -> Result<Self, UnknownStep> {
        Ok(match stored {
            0 => Step::Started,
            1 => Step::RewardHeld,
            2 => Step::PaymentUnknown,
            3 => Step::Placed,
            4 => Step::Failed,
            5 => Step::Compensating,
            unknown => return Err(UnknownStep(unknown)),
        })
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

/// Where a caller's own order id stands.
enum ExternalId {
    /// No order has it (`version`: of its released record, 0 when there is none).
    Free { version: u64 },
    /// The order placed under it.
    Taken(Box<Order>),
}

/// What starting a placement came to.
enum Started {
    /// The placement is recorded at `Started` (version 1).
    Recorded(PlacementRecord),
    /// The caller's order id already names an order: that order is the answer.
    AlreadyPlaced(Order),
}

/// The order a new placement makes, and the loyalty reward it is to hold (empty: none).
struct Draft {
    order: Order,
    reward_id: String,
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

/// One step's view of the placement: its key, the version the step read, and what the commit
/// completing the call records.
#[derive(Clone, Copy)]
struct Attempt<'a> {
    key: &'a AggregateKey,
    version: u64,
    recorded: Recorded<'a>,
}

impl Attempt<'_> {
    fn tenant(&self) -> &str {
        &self.key.tenant
    }
}

/// What a failed authorization means for the placement.
enum AuthorizationFailure {
    /// The PSP may have authorized (the reply was lost): ask it before anything else.
    OutcomeUnknown,
    /// Nothing was charged (unavailable after every attempt, breaker open, no time left): the
    /// placement stays where it is and the caller may retry with the same key.
    NothingHappened,
    /// Refused for good (declined, card data): the placement fails with this.
    Refused {
        message: String,
        reason: ErrorReason,
    },
}

fn authorization_failure(error: &OutboundError<PspError>) -> AuthorizationFailure {
    match error {
        error if error.outcome_unknown() => AuthorizationFailure::OutcomeUnknown,
        OutboundError::Failed(failure) if failure.is_outcome_unknown() => {
            AuthorizationFailure::OutcomeUnknown
        }
        OutboundError::Failed(PspError::Unavailable)
        | OutboundError::CircuitOpen { .. }
        | OutboundError::DeadlineExceeded
        | OutboundError::Timeout => AuthorizationFailure::NothingHappened,
        OutboundError::Failed(PspError::CardDataRejected) => AuthorizationFailure::Refused {
            message: "the payment token looks like card data".to_owned(),
            reason: ErrorReason::CardDataRejected,
        },
        OutboundError::Failed(failure) => AuthorizationFailure::Refused {
            message: match failure.declined() {
                Some((code, hard)) => format!(
                    "the payment was declined ({code}{})",
                    if hard { ", do not retry" } else { "" }
                ),
                None => format!("the payment failed: {failure}"),
            },
            reason: ErrorReason::PaymentDeclined,
        },
    }
}

/// What the placement authorizes: the payment id (the PSP's key), the currency of the order's
/// total, and the amount (the total plus any tip headroom).
struct Charge {
    payment_id: String,
    currency: String,
    amount_minor: i64,
}

impl Charge {
    fn of(order: &Order) -> Self {
        let payment = order.payment.as_ref();
        Charge {
            payment_id: payment.map_or_else(String::new, |payment| payment.payment_id.clone()),
            currency: order
                .totals
                .as_ref()
                .and_then(|totals| totals.total.as_ref())
                .map_or_else(String::new, |total| total.currency_code.clone()),
            amount_minor: payment.map_or(0, |payment| minor(&payment.authorized_amount)),
        }
    }
}

impl Orders {
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
            return Err(card_data_in_token());
        }
        let placement_key = AggregateKey::new(tenant, PLACEMENT, key);
        let (version, record) = match self.store.load(&placement_key).await? {
            Some(stored) => (stored.version, PlacementRecord::from_stored(&stored, key)?),
            None => match self.start(placement, &placement_key).await? {
                Started::Recorded(record) => (1, record),
                Started::AlreadyPlaced(order) => return Ok(order),
            },
        };
        self.drive(&placement_key, version, record, recorded).await
    }

    /// Records a new placement — with the cart's claim and the caller's order id, in one
    /// commit — unless its cart or order id is taken. The caller's own order id comes first: a
    /// POS retrying under it gets its order back, whatever key it sends.
    async fn start(
        &self,
        placement: &Placement,
        key: &AggregateKey,
    ) -> Result<Started, CheckoutError> {
        let tenant = key.tenant.as_str();
        let external_version = match self.external(tenant, &placement.external_order_id).await? {
            ExternalId::Taken(order) => return Ok(Started::AlreadyPlaced(*order)),
            ExternalId::Free { version } => version,
        };
        // A cart places at most one order: refuse before any work (and long before the PSP)
        // when another placement holds it.
        let cart_version = self.cart_free(tenant, &placement.cart_id, &key.id).await?;
        let draft = self.draft(tenant, placement, &key.id).await?;
        self.note_tenant(tenant).await?;
        let record = PlacementRecord::started(
            draft.order,
            placement.payment_token.clone(),
            draft.reward_id,
            self.clocks.now_ms(tenant).await?,
        );
        let commits = start_commits(key, &record, placement, cart_version, external_version);
        match self.store.commit_all(commits).await {
            Ok(_) => Ok(Started::Recorded(record)),
            Err(StoreError::Conflict { .. }) => self.lost_start_race(placement, key).await,
            Err(error) => Err(error.into()),
        }
    }

    /// A concurrent attempt recorded its placement first: with this caller's order id (answer
    /// its order), for this cart (`CART_ALREADY_ORDERED`), or with this key (a retryable
    /// conflict).
    async fn lost_start_race(
        &self,
        placement: &Placement,
        key: &AggregateKey,
    ) -> Result<Started, CheckoutError> {
        if let ExternalId::Taken(order) = self
            .external(&key.tenant, &placement.external_order_id)
            .await?
        {
            return Ok(Started::AlreadyPlaced(*order));
        }
        self.cart_free(&key.tenant, &placement.cart_id, &key.id)
            .await?;
        Err(CheckoutError::Store(StoreError::Conflict {
            key: key.to_string(),
            expected: 0,
            found: 1,
        }))
    }

    /// Runs a placement's saga from where it stands to an order or a final failure. A step
    /// that loses a race (another attempt moved the placement, or took the slot) re-reads the
    /// placement and carries on from where it is now, up to [`Retry::CONTENDED`]'s attempts.
    pub(super) async fn drive(
        &self,
        key: &AggregateKey,
        version: u64,
        record: PlacementRecord,
        recorded: Recorded<'_>,
    ) -> Result<Order, CheckoutError> {
        // The first attempt starts from the state the caller read; later ones re-read it.
        let first = &Mutex::new(Some((version, record)));
        retry_on_conflict(Retry::CONTENDED, || async move {
            let known = first.lock().unwrap_or_else(PoisonError::into_inner).take();
            let (mut version, mut record) = match known {
                Some(known) => known,
                None => self.load_placement(key).await?,
            };
            loop {
                let attempt = Attempt {
                    key,
                    version,
                    recorded,
                };
                match self.advance(attempt, record).await? {
                    Advanced::Saved(next_version, next) => (version, record) = (next_version, next),
                    Advanced::Placed(order) => return Ok(order),
                }
            }
        })
        .await
    }

    /// Runs the step the placement stands at, and stores where it got to.
    async fn advance(
        &self,
        attempt: Attempt<'_>,
        record: PlacementRecord,
    ) -> Result<Advanced, CheckoutError> {
        match record.step()? {
            Step::Started => self.hold_reward(attempt, record).await,
            Step::RewardHeld => self.authorize_payment(attempt, record).await,
            Step::PaymentUnknown => self.resolve_unknown_payment(attempt, record).await,
            Step::Placed => self
                .order(attempt.tenant(), record.order_id())
                .await
                .map(Advanced::Placed),
            Step::Failed | Step::Compensating => Err(record.final_error()),
        }
    }

    /// `Started`: holds the reward the draft named (if any) at loyalty, under the placement's
    /// key. A refusal (too few points, the reward gone, the member unregistered) holds nothing:
    /// the placement fails for good and hands its cart back.
    async fn hold_reward(
        &self,
        attempt: Attempt<'_>,
        mut record: PlacementRecord,
    ) -> Result<Advanced, CheckoutError> {
        if !record.pending_reward_id.is_empty() {
            let order = record.order.get_or_insert_default();
            let held = self
                .loyalty
                .hold(
                    attempt.tenant(),
                    &order.member_id,
                    &record.pending_reward_id,
                    &order.order_id,
                    &attempt.key.id,
                )
                .await;
            match held {
                Ok(redemption) => order.redemption_id = redemption,
                Err(CheckoutError::Precondition { reason, message }) => {
                    record.pending_reward_id.clear();
                    record.fail(message, reason);
                    return self
                        .save_placement(attempt.key, attempt.version, record)
                        .await
                        .map(Advanced::saved);
                }
                Err(error) => return Err(error),
            }
            record.pending_reward_id.clear();
        }
        record.set_step(Step::RewardHeld);
        self.save_placement(attempt.key, attempt.version, record)
            .await
            .map(Advanced::saved)
    }

    /// `RewardHeld`: authorizes the payment under the placement's payment id. Nothing to pay (a
    /// reward or promotion covers the order) needs no authorization — the PSP refuses zero
    /// amounts, and there is nothing to hold — and commits the order at once.
    async fn authorize_payment(
        &self,
        attempt: Attempt<'_>,
        record: PlacementRecord,
    ) -> Result<Advanced, CheckoutError> {
        let order = record.order.clone().unwrap_or_default();
        let charge = Charge::of(&order);
        if charge.amount_minor == 0 {
            return self.commit_order(attempt, record, String::new()).await;
        }
        let authorized = self
            .psp
            .authorize(
                &charge.payment_id,
                &record.payment_token,
                &charge.currency,
                charge.amount_minor,
                &order.order_id,
            )
            .await;
        self.after_authorization(attempt, record, authorized).await
    }

    /// `PaymentUnknown`: the last attempt's reply was lost, so ask the PSP what it recorded
    /// under the payment id before acting: an authorization there is the one; otherwise
    /// authorize (same key). A lookup that fails leaves the outcome unknown.
    async fn resolve_unknown_payment(
        &self,
        attempt: Attempt<'_>,
        record: PlacementRecord,
    ) -> Result<Advanced, CheckoutError> {
        let order = record.order.clone().unwrap_or_default();
        let charge = Charge::of(&order);
        let authorized = match self.psp.lookup(&charge.payment_id).await {
            Ok(Some(transaction)) if transaction.succeeded() => Ok(transaction),
            Ok(_) => {
                self.psp
                    .authorize(
                        &charge.payment_id,
                        &record.payment_token,
                        &charge.currency,
                        charge.amount_minor,
                        &order.order_id,
                    )
                    .await
            }
            Err(error) => {
                tracing::info!(%error, order = %order.order_id, "checkout: PSP lookup failed; the payment stays unknown");
                Err(OutboundError::Timeout)
            }
        };
        self.after_authorization(attempt, record, authorized).await
    }

    /// Commits the order on an authorization; otherwise records an unknown outcome, answers
    /// "unavailable" when nothing happened, or fails the placement for good on a refusal
    /// (returning the held reward).
    async fn after_authorization(
        &self,
        attempt: Attempt<'_>,
        mut record: PlacementRecord,
        authorized: Result<Transaction, OutboundError<PspError>>,
    ) -> Result<Advanced, CheckoutError> {
        let error = match authorized {
            Ok(authorization) => return self.commit_order(attempt, record, authorization.id).await,
            Err(error) => error,
        };
        match authorization_failure(&error) {
            AuthorizationFailure::OutcomeUnknown => {
                record.set_step(Step::PaymentUnknown);
                self.note_tenant(attempt.tenant()).await?;
                self.save_placement(attempt.key, attempt.version, record)
                    .await?;
                Err(CheckoutError::Unavailable {
                    what: "the payment provider",
                    reason: ErrorReason::PaymentOutcomeUnknown,
                })
            }
            AuthorizationFailure::NothingHappened => {
                tracing::warn!(%error, "checkout: PSP unavailable");
                Err(psp_unavailable())
            }
            AuthorizationFailure::Refused { message, reason } => {
                // Compensate: return the held reward.
                if let Some(redemption) = record.order.as_ref().and_then(held_redemption) {
                    self.loyalty.void(attempt.tenant(), redemption).await?;
                }
                record.fail(message, reason);
                self.save_placement(attempt.key, attempt.version, record)
                    .await
                    .map(Advanced::saved)
            }
        }
    }

    /// Commits the order — authorized under `authorization_id`, or with nothing to pay when it
    /// is empty — with `OrderPlaced`, taking its kitchen slot in the same commit; then, when
    /// due, captures it (posting the reward hold, the ledger entry and `OrderPaid`). Answers the
    /// order as its last commit left it, which recorded the response (`attempt.recorded`).
    async fn commit_order(
        &self,
        attempt: Attempt<'_>,
        mut record: PlacementRecord,
        authorization_id: String,
    ) -> Result<Advanced, CheckoutError> {
        let tenant = attempt.tenant();
        let now = self.clocks.now_ms(tenant).await?;
        let mut order = record.order.clone().unwrap_or_default();
        mark_placed(&mut order, &authorization_id, now);
        let promise = match self.reserve_slot(tenant, &order, now).await {
            Ok(promise) => promise,
            Err(full @ CheckoutError::SlotFull { .. }) => {
                return self
                    .release_for_full_slot(attempt, record, order, &authorization_id, &full)
                    .await;
            }
            Err(error) => return Err(error),
        };
        order.promised_time = Some(timestamp_of_ms(promise.promised_ms));
        record.set_step(Step::Placed);
        record.order = Some(order.clone());
        let capture_now = capture_due(&order);
        let order_key = AggregateKey::new(tenant, ORDER, &order.order_id);
        let placed = OrderPlaced {
            order: Some(order.clone()),
        };
        let created = Commit::record(order_key.clone(), 0, &order)
            .indexed(order_index(&order))
            .emitting(vec![event(&order_key, 1, now, &placed)])
            // Unless a capture follows, this commit completes the call.
            .answering(if capture_now {
                None
            } else {
                attempt.recorded.record(&order)
            });
        let mut commits = vec![
            created,
            Commit::record(attempt.key.clone(), attempt.version, &record)
                .indexed(placement_index(Step::Placed)),
        ];
        commits.extend(promise.reservation);
        self.store.commit_all(commits).await?;
        self.announce(tenant, &order.order_id);
        if !capture_now {
            return Ok(Advanced::Placed(order));
        }
        // A failure leaves the order placed and authorized with its capture due: the
        // background round captures it under the same key, never twice.
        match self
            .capture_recording(tenant, &order.order_id, attempt.recorded)
            .await
        {
            Ok(captured) => Ok(Advanced::Placed(captured)),
            Err(error) => {
                tracing::warn!(%error, order = %order.order_id, "checkout: capture failed; the background round retries it");
                Ok(Advanced::Placed(order))
            }
        }
    }

    /// The order's promise in its location's kitchen slots, with the write taking its place.
    async fn reserve_slot(
        &self,
        tenant: &str,
        order: &Order,
        now: i64,
    ) -> Result<Promise, CheckoutError> {
        let location = self
            .carts
            .catalog()
            .location(tenant, &order.location_id)
            .await?;
        let wanted = ms_of(&order.promised_time).unwrap_or(now);
        crate::slots::promise(
            self.store.as_ref(),
            tenant,
            &location,
            wanted,
            &order.order_id,
        )
        .await
    }

    /// The slot filled since the quote: void the authorization and return the reward, so
    /// nothing stays charged or held, and fail the placement for good with `SLOT_FULL`.
    async fn release_for_full_slot(
        &self,
        attempt: Attempt<'_>,
        mut record: PlacementRecord,
        order: Order,
        authorization_id: &str,
        full: &CheckoutError,
    ) -> Result<Advanced, CheckoutError> {
        if !authorization_id.is_empty() {
            let payment_id = order
                .payment
                .as_ref()
                .map_or("", |payment| payment.payment_id.as_str());
            self.psp.void(payment_id, authorization_id).await?;
        }
        if let Some(redemption) = held_redemption(&order) {
            self.loyalty.void(attempt.tenant(), redemption).await?;
        }
        record.fail(full.to_string(), ErrorReason::SlotFull);
        record.order = Some(order);
        self.save_placement(attempt.key, attempt.version, record)
            .await
            .map(Advanced::saved)
    }

    /// Stores where a placement got to (compare-and-set on its version). A placement failed
    /// for good hands back its cart and the caller's order id in the same commit.
    pub(super) async fn save_placement(
        &self,
        key: &AggregateKey,
        version: u64,
        record: PlacementRecord,
    ) -> Result<(u64, PlacementRecord), CheckoutError> {
        let step = record.step()?;
        let mut commits =
            vec![Commit::record(key.clone(), version, &record).indexed(placement_index(step))];
        if step == Step::Failed {
            commits.extend(self.releases(key, &record).await?);
        }
        let versions = self.store.commit_all(commits).await?;
        Ok((versions.first().copied().unwrap_or(version + 1), record))
    }

    /// The placement at `key`, and its version.
    async fn load_placement(
        &self,
        key: &AggregateKey,
    ) -> Result<(u64, PlacementRecord), CheckoutError> {
        let stored = self
            .store
            .load(key)
            .await?
            .ok_or_else(|| CheckoutError::NotFound {
                resource: "placement",
                id: key.id.clone(),
            })?;
        Ok((
            stored.version,
            PlacementRecord::from_stored(&stored, &key.id)?,
        ))
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
            let claim: CartClaim = stored.decode(&format!("claim of cart {}", order.cart_id))?;
            if claim.placement == key.id {
                released.push(Commit::record(cart, stored.version, &CartClaim::default()));
            }
        }
        if !order.external_order_id.is_empty() {
            let external = AggregateKey::new(&key.tenant, EXTERNAL, &order.external_order_id);
            if let Some(stored) = self.store.load(&external).await?
                && stored.data.as_ref() == order.order_id.as_bytes()
            {
                released.push(external_order_id_commit(external, stored.version, ""));
            }
        }
        Ok(released)
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
            Err(CheckoutError::NotFound { .. }) => Err(precondition(
                ErrorReason::IdempotencyKeyInUse,
                format!("order {external_id} is being placed by another request"),
            )),
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
        let claim: CartClaim = stored.decode(&format!("claim of cart {cart_id}"))?;
        if claim.placement.is_empty() || claim.placement == placement_id {
            Ok(stored.version)
        } else {
            Err(CheckoutError::CartAlreadyOrdered {
                cart_id: cart_id.to_owned(),
                order_id: claim.order_id,
            })
        }
    }

    /// Re-prices the cart and builds the order to place, with the reward to hold.
    async fn draft(
        &self,
        tenant: &str,
        placement: &Placement,
        key: &str,
    ) -> Result<Draft, CheckoutError> {
        let now = self.clocks.now_ms(tenant).await?;
        let fresh = self.requote(tenant, placement, now).await?;
        let cart = self.carts.get(tenant, &placement.cart_id).await?;
        let location = self
            .carts
            .catalog()
            .location(tenant, &cart.location_id)
            .await?;
        let lines = self.order_lines(tenant, &cart, &fresh).await?;
        let reward_id = cart
            .loyalty_reward
            .as_ref()
            .map_or_else(String::new, |reward| reward.reward_id.clone());
        let order = Order {
            // Newest first by id: the id leads with the time counted down.
            order_id: ids::from_key(
                &format!("ord-{:013}", 9_999_999_999_999_i64.saturating_sub(now)),
                key,
                12,
            ),
            external_order_id: placement.external_order_id.clone(),
            cart_id: cart.cart_id,
            location_id: cart.location_id,
            customer_id: cart.customer_id,
            member_id: cart.member_id,
            lines,
            payment: Some(draft_payment(&location, &fresh, key)),
            totals: Some(OrderTotals {
                items_subtotal: fresh.items_subtotal,
                discount_total: fresh.discount_total,
                reward_discount: fresh.reward_discount,
                fees_total: fresh.fees_total,
                tax_total: fresh.tax_total,
                tip: fresh.tip,
                total: fresh.total,
            }),
            fulfillment: cart.fulfillment,
            status: OrderStatus::Unspecified as i32,
            redemption_id: String::new(),
            promised_time: fresh.promised_time,
            ..Order::default()
        };
        Ok(Draft { order, reward_id })
    }

    /// The cart priced again now; `QUOTE_STALE` (nothing charged) unless it matches the
    /// accepted quote, still valid, and the total the caller expects.
    async fn requote(
        &self,
        tenant: &str,
        placement: &Placement,
        now: i64,
    ) -> Result<Quote, CheckoutError> {
        let accepted = self.quotes.stored(tenant, &placement.quote_id).await?;
        if accepted.cart_id != placement.cart_id {
            return Err(CheckoutError::invalid(
                "quote_id",
                "belongs to another cart",
            ));
        }
        if accepted
            .expire_time
            .as_ref()
            .is_some_and(|expire| ms_of_timestamp(expire) <= now)
        {
            return Err(precondition(
                ErrorReason::QuoteStale,
                "the quote has expired; quote again",
            ));
        }
        let fresh = self.quotes.quote(tenant, &placement.cart_id).await?;
        if fresh.total != accepted.total
            || fresh.total.as_ref() != Some(&placement.expected_total)
            || fresh.cart_version != accepted.cart_version
        {
            return Err(precondition(
                ErrorReason::QuoteStale,
                "the cart's price changed since the quote; quote again",
            ));
        }
        Ok(fresh)
    }

    /// The cart's lines as order lines, with the fresh quote's pricing and the menu's names.
    async fn order_lines(
        &self,
        tenant: &str,
        cart: &Cart,
        fresh: &Quote,
    ) -> Result<Vec<OrderLine>, CheckoutError> {
        let mut lines = Vec::new();
        for (cart_line, priced) in cart.lines.iter().zip(&fresh.lines) {
            let item = self
                .carts
                .catalog()
                .item(tenant, &cart_line.item_id)
                .await?;
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
        Ok(lines)
    }
}

/// The commits recording a new placement: the placement itself (created), the cart's claim
/// and, when given, the caller's order id naming the order — each at the version it was read
/// free at, so a concurrent placement of the same cart or id loses.
fn start_commits(
    key: &AggregateKey,
    record: &PlacementRecord,
    placement: &Placement,
    cart_version: u64,
    external_version: u64,
) -> Vec<Commit> {
    let claim = CartClaim {
        placement: key.id.clone(),
        order_id: record.order_id().to_owned(),
    };
    let mut commits = vec![
        Commit::record(key.clone(), 0, record).indexed(placement_index(Step::Started)),
        Commit::record(
            AggregateKey::new(&key.tenant, CART_CLAIM, &placement.cart_id),
            cart_version,
            &claim,
        ),
    ];
    if !placement.external_order_id.is_empty() {
        commits.push(external_order_id_commit(
            AggregateKey::new(&key.tenant, EXTERNAL, &placement.external_order_id),
            external_version,
            record.order_id(),
        ));
    }
    commits
}

/// The payment a placement authorizes: the quote's total plus, for a location capturing on
/// completion, room for a bigger tip before capture (a share of the total before tip); its id
/// derives from the placement's key.
fn draft_payment(location: &Location, fresh: &Quote, key: &str) -> Payment {
    let capture_mode = match CaptureMode::try_from(location.capture_mode) {
        Ok(CaptureMode::OnCompletion) => CaptureMode::OnCompletion,
        _ => CaptureMode::OnPlacement,
    };
    let total = minor(&fresh.total);
    let currency = fresh
        .total
        .as_ref()
        .map_or("", |total| total.currency_code.as_str());
    let headroom = if capture_mode == CaptureMode::OnCompletion {
        (total - minor(&fresh.tip)) * i64::from(location.tip_headroom_percent) / 100
    } else {
        0
    };
    Payment {
        payment_id: ids::from_key("pay", key, 32),
        status: PaymentStatus::Unspecified as i32,
        authorized_amount: money(currency, total + headroom),
        capture_mode: capture_mode as i32,
        ..Payment::default()
    }
}

/// The order as committed: placed `now`, its payment authorized under `authorization_id` — or,
/// with none, needing no payment (settled, at zero captured, once the reward is posted).
fn mark_placed(order: &mut Order, authorization_id: &str, now: i64) {
    let currency = order
        .totals
        .as_ref()
        .and_then(|totals| totals.total.as_ref())
        .map_or_else(String::new, |total| total.currency_code.clone());
    order.status = OrderStatus::Placed as i32;
    order.status_history = vec![OrderStatusChange {
        status: OrderStatus::Placed as i32,
        change_time: Some(timestamp_of_ms(now)),
        reason: String::new(),
    }];
    if let Some(payment) = order.payment.as_mut() {
        payment.psp_reference = authorization_id.to_owned();
        payment.refunded_amount = money(&currency, 0);
        if authorization_id.is_empty() {
            payment.status = PaymentStatus::NotRequired as i32;
            payment.captured_amount = None;
        } else {
            payment.status = PaymentStatus::Authorized as i32;
            payment.captured_amount = money(&currency, 0);
        }
    }
    order.create_time = Some(timestamp_of_ms(now));
    order.update_time = Some(timestamp_of_ms(now));
    order.version = 1;
}

#[cfg(test)]
mod tests {
    use super::{AuthorizationFailure, Step, UnknownStep, authorization_failure};
    use crate::psp::PspError;
    use platform::outbound::OutboundError;

    #[test]
    fn every_stored_step_reads_back_and_an_unknown_one_is_refused() {
        for step in [
            Step::Started,
            Step::RewardHeld,
            Step::PaymentUnknown,
            Step::Placed,
            Step::Failed,
            Step::Compensating,
        ] {
            assert_eq!(Step::try_from(step as i32), Ok(step));
        }
        assert_eq!(Step::try_from(6), Err(UnknownStep(6)));
        assert_eq!(Step::try_from(-1), Err(UnknownStep(-1)));
    }

    #[test]
    fn a_lost_reply_is_unknown_an_outage_changes_nothing_and_a_decline_fails() {
        assert!(matches!(
            authorization_failure(&OutboundError::Timeout),
            AuthorizationFailure::OutcomeUnknown
        ));
        assert!(matches!(
            authorization_failure(&OutboundError::Failed(PspError::Timeout)),
            AuthorizationFailure::OutcomeUnknown
        ));
        assert!(matches!(
            authorization_failure(&OutboundError::Failed(PspError::Unavailable)),
            AuthorizationFailure::NothingHappened
        ));
        assert!(matches!(
            authorization_failure(&OutboundError::<PspError>::DeadlineExceeded),
            AuthorizationFailure::NothingHappened
        ));
        match authorization_failure(&OutboundError::Failed(PspError::Declined {
            code: "card_closed".into(),
            hard: true,
        })) {
            AuthorizationFailure::Refused { message, .. } => {
                assert_eq!(
                    message,
                    "the payment was declined (card_closed, do not retry)"
                )
            }
            _ => panic!("a decline is a refusal"),
        }
    }
}
