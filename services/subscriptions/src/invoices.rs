//! What callers do to one invoice: pay it now, void it, write it off.
//!
//! - **Pay** (`PayInvoice`) runs one payment attempt through the billing run's own code path
//!   ([`Subscriptions::attempt`](crate::engine::Subscriptions)): the attempt number is persisted
//!   before the PSP is called, and the PSP keys derive from (invoice, attempt), so calling again
//!   while an attempt's outcome is unknown repeats it with the same keys — the invoice is charged
//!   at most once. A decline is not an error: the invoice comes back with `last_decline` set, and
//!   the dunning schedule stays as it was. Paying a PAID invoice changes nothing.
//! - **Void** (OPEN or UNCOLLECTIBLE → VOID): nothing is owed. If the subscription was collecting
//!   it, collection stops; a PAST_DUE subscription is then owed nothing and is ACTIVE again (the
//!   same transition as a successful retry). Voiding a void invoice changes nothing.
//! - **Write off** (OPEN → UNCOLLECTIBLE; it may still be paid later): if the subscription was
//!   dunning it, dunning ends as if retries had run out — the retry policy's final action
//!   (CANCELED or UNPAID). Writing off an uncollectible invoice changes nothing.
//!
//! Voiding or writing off an invoice whose payment attempt has an unknown outcome is refused
//! ([`SubscriptionsError::PaymentInProgress`]): the charge may have gone through.

use commerce_api::commerce::subscriptions::v1::{
    Invoice, InvoiceStatus, SubscriptionCanceled, SubscriptionStatus,
};
use platform::units::timestamp_of_ms;
use store::Commit;
use store::{Retry, retry_on_conflict};

use crate::billing::BillingReport;
use crate::collect::Attempt;
use crate::engine::{Subscriptions, event};
use crate::error::SubscriptionsError;
use crate::records::{self, InvoiceRecord};
use crate::transitions::{InvoiceAction, SubscriptionAction, next, next_invoice};

impl Subscriptions {
    /// Collects an OPEN or UNCOLLECTIBLE invoice now with the subscription's payment token (see
    /// the [module docs](self)); returns the invoice after the attempt: PAID, or unpaid with
    /// `last_decline` set. A PAID invoice is returned as it is; a VOID or DRAFT one is refused
    /// (`INVOICE_NOT_PAYABLE`). An unknown outcome is
    /// [`SubscriptionsError::PaymentOutcomeUnknown`]; calling again repeats the same attempt.
    pub async fn pay_invoice(
        &self,
        tenant: &str,
        invoice_id: &str,
    ) -> Result<Invoice, SubscriptionsError> {
        let (_, record) = self.load_invoice(tenant, invoice_id).await?;
        let status = record.inv().status();
        if status == InvoiceStatus::Paid {
            return Ok(record.inv().clone());
        }
        next_invoice(status, InvoiceAction::Pay)?;
        let now = self.now_ms(tenant).await?;
        let subscription_id = record.inv().subscription_id.clone();
        let mut report = BillingReport::default();
        self.attempt(
            tenant,
            &subscription_id,
            invoice_id,
            now,
            Attempt::Requested,
            &mut report,
        )
        .await?;
        self.invoice(tenant, invoice_id).await
    }

    /// Voids an OPEN or UNCOLLECTIBLE invoice (see the [module docs](self)). A PAID or DRAFT
    /// invoice is refused (`INVOICE_NOT_PAYABLE`, with its status).
    pub async fn void_invoice(
        &self,
        tenant: &str,
        invoice_id: &str,
    ) -> Result<Invoice, SubscriptionsError> {
        self.close_invoice(tenant, invoice_id, InvoiceAction::Void)
            .await
    }

    /// Writes an OPEN invoice off as UNCOLLECTIBLE (see the [module docs](self)). A PAID, VOID or
    /// DRAFT invoice is refused (`INVOICE_NOT_PAYABLE`, with its status).
    pub async fn mark_invoice_uncollectible(
        &self,
        tenant: &str,
        invoice_id: &str,
    ) -> Result<Invoice, SubscriptionsError> {
        self.close_invoice(tenant, invoice_id, InvoiceAction::MarkUncollectible)
            .await
    }

    /// Voids or writes off the invoice, and stops its collection, in one commit.
    async fn close_invoice(
        &self,
        tenant: &str,
        invoice_id: &str,
        action: InvoiceAction,
    ) -> Result<Invoice, SubscriptionsError> {
        let now = self.now_ms(tenant).await?;
        retry_on_conflict(Retry::CONTENDED, || async move {
            let (invoice_version, mut invoice_record) =
                self.load_invoice(tenant, invoice_id).await?;
            let status = invoice_record.inv().status();
            let target = match action {
                InvoiceAction::Void => InvoiceStatus::Void,
                _ => InvoiceStatus::Uncollectible,
            };
            if status == target {
                return Ok(invoice_record.inv().clone());
            }
            let to = next_invoice(status, action)?;
            if invoice_record.pending_attempt > 0 {
                return Err(SubscriptionsError::PaymentInProgress(invoice_id.to_owned()));
            }
            let subscription_id = invoice_record.inv().subscription_id.clone();
            {
                let invoice = invoice_record.inv_mut();
                invoice.status = to as i32;
                invoice.close_time = Some(timestamp_of_ms(now));
                invoice.next_attempt_time = None;
            }
            let mut commits = Vec::new();
            let state = self.load_sub(tenant, &subscription_id).await?;
            let collecting = state.record.collect_at_ms.is_some()
                && state.record.collecting_invoice_id == invoice_id;
            if collecting {
                let mut record = state.record.clone();
                let before = record.sub().status();
                let mut events = Vec::new();
                record.collect_at_ms = None;
                record.collecting_invoice_id.clear();
                match (action, before) {
                    (InvoiceAction::Void, SubscriptionStatus::PastDue) => {
                        // Nothing is owed any more: the subscription is paid up.
                        record.sub_mut().status =
                            next(before, SubscriptionAction::RetrySucceeded)? as i32;
                    }
                    (_, SubscriptionStatus::PastDue) => {
                        let end = next(
                            before,
                            SubscriptionAction::RetriesExhausted(self.policy.final_action()),
                        )?;
                        let sub = record.sub_mut();
                        sub.status = end as i32;
                        if end == SubscriptionStatus::Canceled {
                            sub.cancel_time = Some(timestamp_of_ms(now));
                        }
                        events.push(event(&SubscriptionCanceled {
                            subscription_id: subscription_id.clone(),
                            status: end as i32,
                            reason: "invoice written off as uncollectible".into(),
                        }));
                    }
                    (InvoiceAction::Void, _) => {}
                    _ => {
                        // A renewal or first payment being charged right now: let it finish.
                        return Err(SubscriptionsError::invalid(
                            "invoice_id",
                            "the invoice is being collected; try again shortly",
                        ));
                    }
                }
                let (_, sub_commits) = self
                    .subscription_commits(tenant, Some(&state), record, now, &events)
                    .await?;
                commits = sub_commits;
            }
            commits.push(
                Commit::record(
                    records::key(tenant, records::INVOICE, invoice_id),
                    invoice_version,
                    &invoice_record,
                )
                .indexed(vec![records::all(), records::invoices_of(&subscription_id)]),
            );
            self.store.commit_all(commits).await?;
            Ok::<_, SubscriptionsError>(InvoiceRecord::inv(&invoice_record).clone())
        })
        .await
    }
}
