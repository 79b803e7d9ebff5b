//! Checkout's events into loyalty: `OrderPaid` accrues points, `OrderRefunded` reverses them.
//! The consumer runner deduplicates by event id (the processed record goes into the member's
//! commit); accrual is also deduplicated by order and reversal by refund, so a replayed or
//! re-published event cannot count twice either.

use std::sync::Arc;

use async_trait::async_trait;
use commerce_api::commerce::checkout::v1::{OrderPaid, OrderRefunded};
use commerce_api::commerce::common::v1::EventEnvelope;
use events::{EventHandler, HandlerError, Processed};

use crate::engine::Loyalty;
use crate::error::LoyaltyError;
use crate::points::{PaidLine, PaidOrder, Refund, RefundAmount};

/// The consumer group loyalty reads checkout's stream as.
pub const GROUP: &str = "loyalty-accrual";

/// The package whose stream it reads.
pub const CHECKOUT_PACKAGE: &str = "commerce.checkout.v1";

/// The events whose effect loyalty must have (points earned, points reversed): the relay
/// journals them and the repair sweep proves loyalty handled each (see `events::Journal`).
pub const MUST_HANDLE: [&str; 2] = [
    "commerce.checkout.v1.OrderPaid",
    "commerce.checkout.v1.OrderRefunded",
];

/// `journal` expecting loyalty to handle [`MUST_HANDLE`].
pub fn expect_effects(journal: events::Journal) -> events::Journal {
    journal.expect(GROUP, &MUST_HANDLE)
}

/// Handles checkout's events.
pub struct CheckoutEvents {
    engine: Arc<Loyalty>,
}

impl CheckoutEvents {
    /// A handler over `engine`.
    pub fn new(engine: Arc<Loyalty>) -> Self {
        CheckoutEvents { engine }
    }
}

/// Maps an engine failure to the consumer's verdict: bad data is rejected (dead letter),
/// anything else retried.
fn verdict(error: LoyaltyError) -> HandlerError {
    match error {
        LoyaltyError::Invalid { .. }
        | LoyaltyError::OutOfRange { .. }
        | LoyaltyError::Ledger(ledger::LedgerError::AmountOutOfRange { .. })
        | LoyaltyError::AccrualConflict { .. }
        | LoyaltyError::NotFound { .. } => HandlerError::Reject(error.to_string()),
        LoyaltyError::Store(store::StoreError::IdempotencyKeyTaken(_)) => {
            HandlerError::Retry(error.to_string())
        }
        other => HandlerError::Retry(other.to_string()),
    }
}

/// Treats "another delivery already applied it" as done.
fn settled(outcome: Result<(), LoyaltyError>) -> Result<(), HandlerError> {
    match outcome {
        Ok(()) | Err(LoyaltyError::Store(store::StoreError::IdempotencyKeyTaken(_))) => Ok(()),
        Err(error) => Err(verdict(error)),
    }
}

#[async_trait]
impl EventHandler for CheckoutEvents {
    async fn handle(
        &self,
        event: &EventEnvelope,
        processed: &Processed,
    ) -> Result<(), HandlerError> {
        let tenant = event.tenant_id.as_str();
        let record = Some(processed.record());
        match event.event_type.rsplit('.').next().unwrap_or_default() {
            "OrderPaid" => {
                // Fault tests kill the process here: the event was read, its effect not committed.
                platform::failpoint::hit("loyalty.before-accrual");
                let paid: OrderPaid = events::envelope::payload(event)
                    .map_err(|error| HandlerError::Reject(error.to_string()))?;
                let Some(member_id) = self
                    .member_of(tenant, &paid.member_id, &paid.customer_id)
                    .await?
                else {
                    return Ok(()); // no member: nothing to accrue
                };
                let eligible = paid.eligible_amount.unwrap_or_default();
                let order = PaidOrder {
                    member_id,
                    order_id: paid.order_id,
                    currency_code: eligible.currency_code,
                    lines: paid
                        .lines
                        .into_iter()
                        .map(|line| PaidLine {
                            sku: line.sku,
                            category: line.category,
                            amount_minor: line.amount.unwrap_or_default().amount_minor,
                        })
                        .collect(),
                    eligible_minor: eligible.amount_minor,
                    paid_at: paid.paid_time.map(|time| time.seconds),
                };
                settled(self.engine.accrue(tenant, &order, record).await.map(drop))
            }
            "OrderRefunded" => {
                let refunded: OrderRefunded = events::envelope::payload(event)
                    .map_err(|error| HandlerError::Reject(error.to_string()))?;
                if refunded.member_id.is_empty() {
                    return Ok(());
                }
                let eligible = refunded.eligible_amount.unwrap_or_default();
                let total = refunded.total_refunded.unwrap_or_default().amount_minor;
                let captured = refunded.captured_amount.unwrap_or_default().amount_minor;
                // The eligible share of everything refunded so far (floor), so tax and tip
                // refunds reverse points only in proportion.
                let cumulative = if captured > 0 {
                    (i128::from(eligible.amount_minor) * i128::from(total.min(captured))
                        / i128::from(captured)) as i64
                } else {
                    0
                };
                let refund = Refund {
                    member_id: refunded.member_id,
                    order_id: refunded.order_id,
                    refund_id: refunded.refund_id,
                    currency_code: eligible.currency_code,
                    amount: RefundAmount::Cumulative(cumulative),
                };
                settled(
                    self.engine
                        .reverse_accrual(tenant, &refund, record)
                        .await
                        .map(drop),
                )
            }
            _ => Ok(()),
        }
    }
}

impl CheckoutEvents {
    /// The member credited: the event's, or the customer's if enrolled.
    async fn member_of(
        &self,
        tenant: &str,
        member_id: &str,
        customer_id: &str,
    ) -> Result<Option<String>, HandlerError> {
        if !member_id.is_empty() {
            return Ok(Some(member_id.to_owned()));
        }
        if customer_id.is_empty() {
            return Ok(None);
        }
        match self.engine.member_by_customer(tenant, customer_id).await {
            Ok(member) => Ok(Some(member.member_id)),
            Err(LoyaltyError::NotFound { .. }) => Ok(None),
            Err(error) => Err(verdict(error)),
        }
    }
}
