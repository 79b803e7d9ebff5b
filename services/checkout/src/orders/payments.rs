//! Money on placed orders — capture, refund, cancel (void or refund, and the reward back),
//! void, tip adjustment — and [`Psp`], the only way to the payment provider: every PSP call,
//! the saga's authorizations and lookups included, goes through the outbound policy.

use std::sync::Arc;
use std::time::Duration;

use commerce_api::commerce::checkout::v1::{
    CaptureMode, Order, OrderCanceled, OrderPaid, OrderRefunded, OrderStatus, OrderStatusChange,
    OrderTipAdjusted, OrderTotals, PaidLine, Payment, PaymentStatus, Refund,
};
use commerce_api::commerce::common::v1::{ErrorReason, Money};
use ledger::NewEntry;
use platform::interceptors::IdempotencyContext;
use platform::outbound::{Idempotent, Outbound, OutboundError, OutboundPolicy};
use platform::units::{minor, money, ms_or_epoch, timestamp_of_ms};

use super::records::{capture_due, held_redemption, settled_without_payment};
use super::{Orders, Recorded, precondition};
use crate::error::CheckoutError;
use crate::psp::{
    self, AuthorizeRequest, CaptureRequest, PaymentProvider, PspError, RefundRequest, Transaction,
    VoidRequest,
};
use crate::{ids, money_ledger};

/// The PSP as checkout calls it. Every call — authorize, capture, void, refund, lookup, and the
/// transaction list reconciliation reads — goes through one [`Outbound`]: a deadline per
/// attempt, retries with jitter (every call is idempotent: mutations by their key, the rest are
/// reads) and one circuit breaker for them all. So no call can hang a request or the
/// background round on a PSP that stopped answering, and the provider is reachable only here.
#[derive(Clone)]
pub(crate) struct Psp {
    provider: Arc<dyn PaymentProvider>,
    outbound: Outbound,
}

impl Psp {
    /// `provider` under the default policy: 5 s per attempt, 3 attempts, the breaker opening
    /// after 5 unhealthy answers for 10 s.
    pub(super) fn new(provider: Arc<dyn PaymentProvider>) -> Self {
        let mut policy = OutboundPolicy::new("psp");
        policy.timeout = Duration::from_secs(5);
        Psp {
            provider,
            outbound: Outbound::new(policy),
        }
    }

    /// The same provider under `policy` (with a breaker of its own).
    pub(super) fn with_policy(&self, policy: OutboundPolicy) -> Self {
        Psp {
            provider: self.provider.clone(),
            outbound: Outbound::new(policy),
        }
    }

    /// Authorizes `amount_minor` of `currency` on `token` under `payment_id`, the PSP's key (a
    /// repeat replays the first answer). The raw outcome: the saga tells a lost reply from a
    /// refusal.
    pub(super) async fn authorize(
        &self,
        payment_id: &str,
        token: &str,
        currency: &str,
        amount_minor: i64,
        order_id: &str,
    ) -> Result<Transaction, OutboundError<PspError>> {
        self.outbound
            .call_op("authorize", Idempotent::Yes, |_| {
                self.provider.authorize(AuthorizeRequest {
                    idempotency_key: payment_id.to_owned(),
                    payment_token: token.to_owned(),
                    amount: psp::Money::new(currency, amount_minor),
                    reference: order_id.to_owned(),
                })
            })
            .await
    }

    /// What the PSP recorded under `payment_id`, if anything: for a caller whose reply was lost.
    pub(super) async fn lookup(
        &self,
        payment_id: &str,
    ) -> Result<Option<Transaction>, OutboundError<PspError>> {
        self.outbound
            .call_op("lookup", Idempotent::Yes, |_| {
                self.provider.lookup(payment_id)
            })
            .await
    }

    /// Captures `amount` of authorization `authorization_id` under the payment's capture key,
    /// so every repeat (a retry, the background round, another replica) captures once.
    pub(super) async fn capture(
        &self,
        payment_id: &str,
        authorization_id: &str,
        amount: &Money,
    ) -> Result<Transaction, CheckoutError> {
        self.outbound
            .call_op("capture", Idempotent::Yes, |_| {
                self.provider.capture(CaptureRequest {
                    idempotency_key: format!("{payment_id}:capture"),
                    authorization_id: authorization_id.to_owned(),
                    amount: psp::Money::new(&amount.currency_code, amount.amount_minor),
                })
            })
            .await
            .map_err(|error| psp_failure("capture", &error))
    }

    /// Voids authorization `authorization_id` under the payment's void key (a repeat voids
    /// once).
    pub(super) async fn void(
        &self,
        payment_id: &str,
        authorization_id: &str,
    ) -> Result<(), CheckoutError> {
        self.outbound
            .call_op("void", Idempotent::Yes, |_| {
                self.provider.void(VoidRequest {
                    idempotency_key: format!("{payment_id}:void"),
                    authorization_id: authorization_id.to_owned(),
                })
            })
            .await
            .map(drop)
            .map_err(|error| psp_failure("void", &error))
    }

    /// Refunds `amount_minor` of `currency` from capture `capture_id` under `refund_id`, the
    /// PSP's key.
    pub(super) async fn refund(
        &self,
        refund_id: &str,
        capture_id: &str,
        currency: &str,
        amount_minor: i64,
    ) -> Result<Transaction, CheckoutError> {
        self.outbound
            .call_op("refund", Idempotent::Yes, |_| {
                self.provider.refund(RefundRequest {
                    idempotency_key: refund_id.to_owned(),
                    capture_id: capture_id.to_owned(),
                    amount: psp::Money::new(currency, amount_minor),
                })
            })
            .await
            .map_err(|error| psp_failure("refund", &error))
    }

    /// The PSP's transactions for order `reference` (for reconciliation); any failure is
    /// `unavailable`.
    pub(crate) async fn transactions(
        &self,
        reference: &str,
    ) -> Result<Vec<Transaction>, CheckoutError> {
        self.outbound
            .call_op("transactions", Idempotent::Yes, |_| {
                self.provider.transactions(Some(reference))
            })
            .await
            .map_err(|error| {
                tracing::warn!(%error, "checkout: PSP transactions unavailable for reconciliation");
                psp_unavailable()
            })
    }
}

pub(super) fn psp_unavailable() -> CheckoutError {
    CheckoutError::Unavailable {
        what: "the payment provider",
        reason: ErrorReason::DependencyUnavailable,
    }
}

/// A payment token that looks like card data: checkout never handles card numbers.
pub(super) fn card_data_in_token() -> CheckoutError {
    CheckoutError::Invalid {
        field: "payment_token".into(),
        message: "looks like a card number; send the PSP's token".into(),
    }
}

/// What a PSP call that did not succeed means for checkout's caller (`operation`: `capture`,
/// `void`, `refund`). Only "nothing happened" (the PSP unavailable, the breaker open, no time
/// left) is `unavailable`, which tells clients to retry; an unknown outcome (the reply was
/// lost) is `unavailable` with `PAYMENT_OUTCOME_UNKNOWN` — retrying with the same key is safe,
/// the PSP replays what it did; a refusal is final, `failed_precondition` with the reason that
/// names it.
fn psp_failure(operation: &str, error: &OutboundError<PspError>) -> CheckoutError {
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
        OutboundError::Failed(PspError::CardDataRejected) => card_data_in_token(),
        OutboundError::Failed(failure) => refused(ErrorReason::PaymentRefused, failure),
    }
}

impl Orders {
    /// Captures an order whose capture is due (see `records::capture_due`): its total now (with
    /// an adjusted tip) at the PSP under the payment's capture key, posts the reward hold, and
    /// records the capture — with its money-ledger entry and `OrderPaid` — in one commit. Each
    /// step is idempotent, so a repeat after any failure finishes the job once.
    pub async fn capture(&self, tenant: &str, order_id: &str) -> Result<Order, CheckoutError> {
        self.capture_recording(tenant, order_id, Recorded::Nothing)
            .await
    }

    /// [`Orders::capture`], recording `recorded` in the commit that marks the order captured.
    pub(super) async fn capture_recording(
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
        let captured = if payment.status == PaymentStatus::NotRequired as i32 {
            None
        } else {
            let captured = self
                .psp
                .capture(&payment.payment_id, &payment.psp_reference, &total)
                .await?;
            // Fault tests die here: captured at the PSP, not yet recorded on the order.
            platform::failpoint::hit("checkout.capture.after_psp");
            Some(captured)
        };
        if let Some(redemption) = held_redemption(&order) {
            self.loyalty.commit(tenant, redemption).await?;
        }
        let now = self.clocks.now_ms(tenant).await?;
        let entry = captured
            .as_ref()
            .map(|captured| capture_entry(&order, &total, &captured.id));
        self.update_order(tenant, order_id, now, entry, recorded, |order| {
            Ok(record_capture(order, captured.as_ref(), &total, now))
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
        let now = self.clocks.now_ms(tenant).await?;
        self.update_order(tenant, order_id, now, None, Recorded::Nothing, |order| {
            retip(order, tip)
        })
        .await
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
    ) -> Result<(Order, Refund), CheckoutError> {
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
    ) -> Result<(Order, Refund), CheckoutError> {
        let refund_id = ids::from_key("rf", key, 24);
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
        let (currency, wanted) = refundable(order_id, &payment, amount)?;
        let refunded = self
            .psp
            .refund(&refund_id, &payment.psp_reference, &currency, wanted)
            .await?;
        let now = self.clocks.now_ms(tenant).await?;
        let refund = Refund {
            refund_id: refund_id.clone(),
            amount: money(&currency, wanted),
            reason: reason.to_owned(),
            psp_reference: refunded.id,
            create_time: Some(timestamp_of_ms(now)),
        };
        let entry = refund_entry(order_id, &refund, now);
        let order = self
            .update_order(tenant, order_id, now, Some(entry), recorded, |order| {
                Ok(record_refund(order, &refund, &currency, wanted))
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
        let status = PaymentStatus::try_from(payment.status).unwrap_or_default();
        let refunded_now = self
            .release_payment(tenant, order_id, &payment, status, reason)
            .await?;
        if let Some(redemption) = held_redemption(&order) {
            self.return_reward(tenant, redemption, status).await?;
        }
        let currency = authorized_currency(&payment);
        let now = self.clocks.now_ms(tenant).await?;
        self.update_order(tenant, order_id, now, None, Recorded::Nothing, |order| {
            Ok(mark_canceled(order, reason, currency, refunded_now, now))
        })
        .await
    }

    /// Gives back what a canceled order's payment holds: voids an uncaptured authorization, or
    /// refunds what is captured and not refunded (under a key derived from the order, so a
    /// repeated cancel refunds once). Returns what it refunded.
    async fn release_payment(
        &self,
        tenant: &str,
        order_id: &str,
        payment: &Payment,
        status: PaymentStatus,
        reason: &str,
    ) -> Result<i64, CheckoutError> {
        match status {
            PaymentStatus::Authorized => {
                self.void_authorization(&payment.payment_id, &payment.psp_reference)
                    .await?;
                Ok(0)
            }
            PaymentStatus::Captured | PaymentStatus::PartiallyRefunded => {
                let left = minor(&payment.captured_amount) - minor(&payment.refunded_amount);
                if left <= 0 {
                    return Ok(0);
                }
                let amount = Money {
                    currency_code: authorized_currency(payment).to_owned(),
                    amount_minor: left,
                };
                let key = format!("{order_id}:cancel");
                self.refund(tenant, order_id, Some(&amount), reason, &key)
                    .await?;
                Ok(left)
            }
            _ => Ok(0),
        }
    }

    /// Returns a canceled order's reward: voids the hold of an order not paid yet, reverses a
    /// posted redemption.
    async fn return_reward(
        &self,
        tenant: &str,
        redemption: &str,
        status: PaymentStatus,
    ) -> Result<(), CheckoutError> {
        match status {
            PaymentStatus::Authorized => self.loyalty.void(tenant, redemption).await,
            // Nothing paid: the reward is held (not settled yet) or posted (settled) — and a
            // settlement may be racing this cancel. Void, then reverse: whichever state the
            // redemption is in, the other call is a no-op, and the points come back.
            PaymentStatus::NotRequired => {
                self.loyalty.void(tenant, redemption).await?;
                self.loyalty.reverse(tenant, redemption).await
            }
            _ => self.loyalty.reverse(tenant, redemption).await,
        }
    }

    /// Voids an authorization that was never captured (a canceled order, a placement rolled
    /// back), through the outbound policy under the payment's void key, so a repeat voids once.
    pub async fn void_authorization(
        &self,
        payment_id: &str,
        authorization_id: &str,
    ) -> Result<(), CheckoutError> {
        self.psp.void(payment_id, authorization_id).await
    }
}

/// The currency the payment was authorized in.
fn authorized_currency(payment: &Payment) -> &str {
    payment
        .authorized_amount
        .as_ref()
        .map_or("", |amount| amount.currency_code.as_str())
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
    ms_or_epoch(&due)
}

/// The capture's money-ledger entry. Its content must not depend on the attempt: two captures
/// of one order (the request path and the background round, two replicas, a retry after a
/// crash) post the same entry, so the second finds it posted instead of conflicting with it.
fn capture_entry(order: &Order, total: &Money, psp_reference: &str) -> NewEntry {
    let currency = total.currency_code.as_str();
    NewEntry::new(
        money_ledger::capture_entry(&order.order_id),
        capture_due_ms(order),
    )
    .transfer(
        &money_ledger::account("revenue", currency),
        &money_ledger::account("psp", currency),
        currency,
        total.amount_minor,
    )
    .metadata("order_id", order.order_id.as_str())
    .metadata("psp_reference", psp_reference)
}

/// Marks the order captured for `total` (or, with nothing to pay, settled at zero) and names
/// its `OrderPaid`; `None` when another attempt recorded it first.
fn record_capture(
    order: &mut Order,
    captured: Option<&Transaction>,
    total: &Money,
    now: i64,
) -> Option<OrderPaid> {
    let payment = order.payment.as_mut()?;
    match captured {
        None if payment.status == PaymentStatus::NotRequired as i32
            && !settled_without_payment(payment) =>
        {
            payment.captured_amount = money(&total.currency_code, 0);
        }
        Some(captured) if payment.status == PaymentStatus::Authorized as i32 => {
            payment.status = PaymentStatus::Captured as i32;
            payment.captured_amount = Some(total.clone());
            payment.psp_reference.clone_from(&captured.id);
        }
        _ => return None,
    }
    Some(paid_event(order, now))
}

/// Sets `tip` on an order still open to it, keeping its total within the authorization.
fn retip(order: &mut Order, tip: &Money) -> Result<Option<OrderTipAdjusted>, CheckoutError> {
    let payment = order.payment.clone().unwrap_or_default();
    let mut totals = order.totals.clone().unwrap_or_default();
    let previous_tip = totals.tip.clone().unwrap_or_default();
    let currency = authorized_currency(&payment);
    if tip.currency_code != currency {
        return Err(CheckoutError::invalid(
            "tip.currency_code",
            format!("the order is paid in {currency}"),
        ));
    }
    let open = payment.status == PaymentStatus::Authorized as i32
        && payment.capture_mode == CaptureMode::OnCompletion as i32
        && ![OrderStatus::Completed as i32, OrderStatus::Canceled as i32].contains(&order.status);
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
            format!("the total with this tip, {total}, exceeds the {authorized} authorized"),
        ));
    }
    totals.tip = Some(tip.clone());
    totals.total = money(currency, total);
    order.totals = Some(totals);
    Ok(Some(OrderTipAdjusted {
        order_id: order.order_id.clone(),
        previous_tip: Some(previous_tip),
        tip: Some(tip.clone()),
        total: money(currency, total),
    }))
}

/// The currency and amount of a refund of `amount` (all that is left when `None`): positive,
/// in the captured currency, and within what is captured and not refunded.
fn refundable(
    order_id: &str,
    payment: &Payment,
    amount: Option<&Money>,
) -> Result<(String, i64), CheckoutError> {
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
        .map_or_else(String::new, |captured| captured.currency_code.clone());
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
    Ok((currency, wanted))
}

/// The refund's money-ledger entry, posted `now`: back out of the PSP account into revenue.
fn refund_entry(order_id: &str, refund: &Refund, now: i64) -> NewEntry {
    let currency = refund
        .amount
        .as_ref()
        .map_or("", |amount| amount.currency_code.as_str());
    NewEntry::new(money_ledger::refund_entry(&refund.refund_id), now)
        .transfer(
            &money_ledger::account("psp", currency),
            &money_ledger::account("revenue", currency),
            currency,
            minor(&refund.amount),
        )
        .metadata("order_id", order_id)
        .metadata("psp_reference", refund.psp_reference.as_str())
}

/// Records `refund` on the order and names its `OrderRefunded`; `None` when another attempt
/// recorded it first.
fn record_refund(
    order: &mut Order,
    refund: &Refund,
    currency: &str,
    amount_minor: i64,
) -> Option<OrderRefunded> {
    if order
        .refunds
        .iter()
        .any(|done| done.refund_id == refund.refund_id)
    {
        return None;
    }
    let payment = order.payment.get_or_insert_with(Payment::default);
    let total_refunded = minor(&payment.refunded_amount) + amount_minor;
    payment.refunded_amount = money(currency, total_refunded);
    payment.status = if total_refunded >= minor(&payment.captured_amount) {
        PaymentStatus::Refunded
    } else {
        PaymentStatus::PartiallyRefunded
    } as i32;
    let captured_amount = payment.captured_amount.clone();
    order.refunds.push(refund.clone());
    let totals = order.totals.clone().unwrap_or_default();
    Some(OrderRefunded {
        order_id: order.order_id.clone(),
        refund_id: refund.refund_id.clone(),
        amount: money(currency, amount_minor),
        total_refunded: money(currency, total_refunded),
        captured_amount,
        eligible_amount: money(currency, eligible_minor(&totals)),
        member_id: order.member_id.clone(),
    })
}

/// Marks the order canceled `now` and names its `OrderCanceled`; `None` when it already is.
fn mark_canceled(
    order: &mut Order,
    reason: &str,
    currency: &str,
    refunded_now: i64,
    now: i64,
) -> Option<OrderCanceled> {
    if order.status == OrderStatus::Canceled as i32 {
        return None;
    }
    order.status = OrderStatus::Canceled as i32;
    order.status_history.push(OrderStatusChange {
        status: OrderStatus::Canceled as i32,
        change_time: Some(timestamp_of_ms(now)),
        reason: reason.to_owned(),
    });
    if let Some(payment) = order.payment.as_mut()
        && payment.status == PaymentStatus::Authorized as i32
    {
        payment.status = PaymentStatus::Voided as i32;
    }
    Some(OrderCanceled {
        order_id: order.order_id.clone(),
        reason: reason.to_owned(),
        refunded_amount: money(currency, refunded_now),
        member_id: order.member_id.clone(),
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
        .map_or_else(String::new, |total| total.currency_code.clone());
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
        paid_time: Some(timestamp_of_ms(now)),
    }
}
