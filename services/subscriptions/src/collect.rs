//! Collecting an invoice: one payment attempt, in three steps, each restart-safe.
//!
//! 1. [`Subscriptions::begin_attempt`] writes the attempt number to the invoice
//!    (`attempt_count`, and `pending_attempt` while in flight) **before** the PSP is called.
//! 2. [`Subscriptions::charge`] authorizes and captures with keys derived from (invoice id,
//!    attempt number): `invoice:<id>:attempt:<n>:authorize`, `…:capture` (and `…:void` when a
//!    capture is refused after its authorization succeeded, so no hold is left on the customer's
//!    funds). A crash or a lost reply leaves the attempt pending, and the next try repeats it
//!    with the *same* keys, so the PSP replays its answer instead of charging again.
//! 3. [`Subscriptions::record_outcome`] commits what happened: a payment marks the invoice paid,
//!    posts the ledger entry and moves the subscription on ([`paid`]); a decline records it and
//!    applies the dunning policy ([`declined`]) — all in one commit.
//!
//! The billing counters ([`BillingReport`]) are counted once the outcome is committed, never
//! inside an attempt that may lose a race and run again.

use commerce_api::commerce::subscriptions::v1::{
    Invoice, InvoicePaid, InvoicePaymentFailed, InvoiceStatus, PaymentDecline, Subscription,
    SubscriptionCanceled, SubscriptionPastDue, SubscriptionStatus,
};
use ledger::NewEntry;
use payments::{AuthorizeRequest, CaptureRequest, PspError, VoidRequest};
use platform::outbound::{Idempotent, OutboundError};
use platform::units::timestamp_of_ms;
use prost_reflect::DynamicMessage;
use store::{Commit, Retry, retry_on_conflict};

use crate::billing::BillingReport;
use crate::dunning::DunningStep;
use crate::engine::{Recorded, Subscriptions, event, with_events};
use crate::error::SubscriptionsError;
use crate::records::{self, InvoiceRecord, SubscriptionRecord};
use crate::transitions::{InvoiceAction, SubscriptionAction, next, next_invoice};

/// Who asked for a payment attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// The billing run, for the invoice the subscription is collecting; a decline is a dunning
    /// step.
    Scheduled,
    /// A caller (`PayInvoice`, a new payment method), for any open or uncollectible invoice; a
    /// decline is recorded and leaves the dunning schedule alone.
    Requested,
}

/// How a payment attempt ended.
pub(crate) enum Charge {
    Paid { psp_reference: String },
    Declined(PaymentDecline),
}

/// The attempt being collected: whose, which, when, and who asked.
#[derive(Clone, Copy)]
struct AttemptOf<'a> {
    tenant: &'a str,
    subscription_id: &'a str,
    invoice_id: &'a str,
    at_ms: i64,
    mode: Attempt,
}

/// What a committed outcome changes in the billing counters.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    paid: bool,
    declined: bool,
    status_changed: bool,
}

impl Tally {
    fn add_to(self, report: &mut BillingReport) {
        report.invoices_paid += i64::from(self.paid);
        report.payment_failures += i64::from(self.declined);
        report.status_changes += i64::from(self.status_changed);
    }
}

/// The events and ledger posting an outcome emits.
#[derive(Default)]
struct Effects {
    subscription_events: Vec<DynamicMessage>,
    invoice_events: Vec<DynamicMessage>,
    posting: Option<NewEntry>,
}

impl Subscriptions {
    /// One payment attempt for `invoice_id` at `at_ms`, by the billing run or on request
    /// (`PayInvoice`, a new payment method): persist the attempt number, charge with keys
    /// derived from it, commit the outcome (see the module docs). A requested attempt that is
    /// declined leaves the dunning schedule as it was; one that pays settles whatever the
    /// subscription was waiting for. Returns the subscription's next due time.
    pub(crate) async fn attempt(
        &self,
        tenant: &str,
        subscription_id: &str,
        invoice_id: &str,
        at_ms: i64,
        mode: Attempt,
        report: &mut BillingReport,
    ) -> Result<Option<i64>, SubscriptionsError> {
        let (due, _) = self
            .attempt_recording(
                tenant,
                subscription_id,
                invoice_id,
                at_ms,
                mode,
                report,
                Recorded::Nothing,
            )
            .await?;
        Ok(due)
    }

    /// [`Subscriptions::attempt`], with `recorded` of the subscription and invoice put into the
    /// commit of the outcome, which completes the call that asked for the attempt; returns them
    /// as committed too (`None` when this attempt committed no outcome).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn attempt_recording(
        &self,
        tenant: &str,
        subscription_id: &str,
        invoice_id: &str,
        at_ms: i64,
        mode: Attempt,
        report: &mut BillingReport,
        recorded: Recorded<'_>,
    ) -> Result<(Option<i64>, Option<(Subscription, Invoice)>), SubscriptionsError> {
        let of = AttemptOf {
            tenant,
            subscription_id,
            invoice_id,
            at_ms,
            mode,
        };
        let Some((attempt, record)) = self.begin_attempt(of).await? else {
            let due = self.load_sub(tenant, subscription_id).await?.record.due_ms;
            return Ok((due, None));
        };
        let charge = if attempt == 0 {
            None
        } else {
            Some(self.charge_invoice(of, attempt, &record).await?)
        };
        let (due, settled, tally) = self
            .record_outcome(of, attempt, charge.as_ref(), recorded)
            .await?;
        tally.add_to(report);
        Ok((due, settled))
    }

    /// Step 1: the attempt's number, persisted on the invoice before the PSP hears of it — or
    /// the one already in flight. `Some((0, _))` when the invoice is not collectable any more;
    /// `None` when a scheduled attempt finds the subscription collecting something else.
    async fn begin_attempt(
        &self,
        of: AttemptOf<'_>,
    ) -> Result<Option<(i32, InvoiceRecord)>, SubscriptionsError> {
        let AttemptOf {
            tenant,
            subscription_id,
            invoice_id,
            mode,
            ..
        } = of;
        retry_on_conflict(Retry::CONTENDED, || async move {
            let state = self.load_sub(tenant, subscription_id).await?;
            if mode == Attempt::Scheduled
                && (state.record.collect_at_ms.is_none()
                    || state.record.collecting_invoice_id != invoice_id)
            {
                return Ok(None);
            }
            let (version, mut record) = self.load_invoice(tenant, invoice_id).await?;
            if !matches!(
                record.inv().status(),
                InvoiceStatus::Open | InvoiceStatus::Uncollectible
            ) {
                return Ok(Some((0, record)));
            }
            if record.pending_attempt > 0 {
                let attempt = record.pending_attempt;
                return Ok(Some((attempt, record)));
            }
            let invoice = record.inv_mut();
            invoice.attempt_count += 1;
            let attempt = invoice.attempt_count;
            record.pending_attempt = attempt;
            self.store
                .commit(invoice_commit(of, version, &record))
                .await?;
            Ok::<_, SubscriptionsError>(Some((attempt, record)))
        })
        .await
    }

    /// Step 2: charges what the invoice says is due with the subscription's payment method (an
    /// invoice due nothing is paid without the PSP).
    async fn charge_invoice(
        &self,
        of: AttemptOf<'_>,
        attempt: i32,
        record: &InvoiceRecord,
    ) -> Result<Charge, SubscriptionsError> {
        let due = record.inv().amount_due.clone().unwrap_or_default();
        if due.amount_minor == 0 {
            return Ok(Charge::Paid {
                psp_reference: String::new(),
            });
        }
        let token = self
            .load_sub(of.tenant, of.subscription_id)
            .await?
            .record
            .sub()
            .payment_token
            .clone();
        self.charge(of.invoice_id, attempt, &token, &due).await
    }

    /// Authorizes and captures `amount` for attempt `attempt` of the invoice, with keys derived
    /// from (invoice, attempt); voids the authorization when the capture is refused.
    async fn charge(
        &self,
        invoice_id: &str,
        attempt: i32,
        token: &str,
        amount: &commerce_api::commerce::common::v1::Money,
    ) -> Result<Charge, SubscriptionsError> {
        let base = format!("invoice:{invoice_id}:attempt:{attempt}");
        let amount = payments::Money::new(&amount.currency_code, amount.amount_minor);
        let authorized = self
            .outbound
            .call_op("authorize", Idempotent::Yes, |_| {
                self.psp.authorize(AuthorizeRequest {
                    idempotency_key: format!("{base}:authorize"),
                    payment_token: token.to_owned(),
                    amount: amount.clone(),
                    reference: invoice_id.to_owned(),
                })
            })
            .await;
        let authorization = match authorized {
            Ok(transaction) => transaction,
            Err(error) => return declined_or_unknown(invoice_id, error),
        };
        let captured = self
            .outbound
            .call_op("capture", Idempotent::Yes, |_| {
                self.psp.capture(CaptureRequest {
                    idempotency_key: format!("{base}:capture"),
                    authorization_id: authorization.id.clone(),
                    amount: amount.clone(),
                })
            })
            .await;
        let outcome = match captured {
            Ok(transaction) => {
                return Ok(Charge::Paid {
                    psp_reference: transaction.id,
                });
            }
            Err(error) => declined_or_unknown(invoice_id, error)?,
        };
        // The capture was refused after the authorization succeeded: release the hold, so the
        // customer's funds are not held for a payment that did not happen. Its key derives from
        // the attempt too; if its outcome is unknown the attempt stays pending, and the next
        // try replays the authorization and the capture's decline and voids again.
        let voided = self
            .outbound
            .call_op("void", Idempotent::Yes, |_| {
                self.psp.void(VoidRequest {
                    idempotency_key: format!("{base}:void"),
                    authorization_id: authorization.id.clone(),
                })
            })
            .await;
        match voided {
            Ok(_) => Ok(outcome),
            Err(error) => {
                tracing::warn!(%error, invoice = %invoice_id, "subscriptions: voiding a declined capture's authorization failed");
                Err(SubscriptionsError::PaymentOutcomeUnknown(
                    invoice_id.to_owned(),
                ))
            }
        }
    }

    /// Step 3: commits the outcome of `charge` (`None`: nothing was left to collect) unless
    /// another caller settled this attempt first. Returns the subscription's next due time, the
    /// subscription and invoice as committed, and what to count.
    async fn record_outcome(
        &self,
        of: AttemptOf<'_>,
        attempt: i32,
        charge: Option<&Charge>,
        recorded: Recorded<'_>,
    ) -> Result<(Option<i64>, Option<(Subscription, Invoice)>, Tally), SubscriptionsError> {
        let AttemptOf {
            tenant,
            subscription_id,
            invoice_id,
            at_ms,
            mode,
        } = of;
        retry_on_conflict(Retry::CONTENDED, || async move {
            let state = self.load_sub(tenant, subscription_id).await?;
            let (invoice_version, mut invoice_record) =
                self.load_invoice(tenant, invoice_id).await?;
            let mut record = state.record.clone();
            let collecting =
                record.collect_at_ms.is_some() && record.collecting_invoice_id == invoice_id;
            if invoice_record.pending_attempt != attempt
                || (mode == Attempt::Scheduled && !collecting)
            {
                // Someone else settled this attempt meanwhile.
                return Ok((record.due_ms, None, Tally::default()));
            }
            let before = record.sub().status();
            let Some(charge) = charge else {
                // Nothing to collect any more (the invoice was settled another way).
                if !collecting {
                    return Ok((record.due_ms, None, Tally::default()));
                }
                stop_collecting(&mut record);
                let (record, commits) = self
                    .subscription_commits(tenant, Some(&state), record, at_ms, &[])
                    .await?;
                self.store.commit_all(commits).await?;
                return Ok((record.due_ms, None, Tally::default()));
            };
            invoice_record.pending_attempt = 0;
            let currency = invoice_record
                .inv()
                .amount_due
                .as_ref()
                .map(|m| m.currency_code.clone())
                .unwrap_or_default();
            let mut tally = Tally::default();
            let effects = match charge {
                Charge::Paid { psp_reference } => {
                    tally.paid = true;
                    paid(
                        of,
                        &mut record,
                        &mut invoice_record,
                        collecting,
                        psp_reference,
                        &currency,
                    )?
                }
                Charge::Declined(decline) => {
                    tally.declined = true;
                    self.declined(of, &mut record, &mut invoice_record, collecting, decline)?
                }
            };
            tally.status_changed = before != record.sub().status();
            let mut invoice_commit = with_events(
                invoice_commit(of, invoice_version, &invoice_record),
                invoice_version + 1,
                at_ms,
                &effects.invoice_events,
            );
            let (record, mut commits) = self
                .subscription_commits(
                    tenant,
                    Some(&state),
                    record,
                    at_ms,
                    &effects.subscription_events,
                )
                .await?;
            let settled = (record.sub().clone(), invoice_record.inv().clone());
            invoice_commit.idempotency = recorded.record(&settled.0, Some(&settled.1));
            commits.push(invoice_commit);
            self.commit_with_posting(tenant, &currency, effects.posting, commits)
                .await?;
            Ok::<_, SubscriptionsError>((record.due_ms, Some(settled), tally))
        })
        .await
    }

    /// A declined attempt: the decline recorded, and — for a scheduled attempt of a subscription
    /// past its first payment — the dunning policy's next step: a retry time (PAST_DUE) or the
    /// end it gives up with.
    fn declined(
        &self,
        of: AttemptOf<'_>,
        record: &mut SubscriptionRecord,
        invoice_record: &mut InvoiceRecord,
        collecting: bool,
        decline: &PaymentDecline,
    ) -> Result<Effects, SubscriptionsError> {
        let AttemptOf {
            subscription_id,
            invoice_id,
            at_ms,
            mode,
            ..
        } = of;
        let mut effects = Effects::default();
        let before = record.sub().status();
        let attempts = invoice_record.inv().attempt_count;
        let invoice = invoice_record.inv_mut();
        invoice.last_decline = Some(decline.clone());
        let failed = |next_attempt_time| {
            event(&InvoicePaymentFailed {
                invoice_id: invoice_id.to_owned(),
                subscription_id: subscription_id.to_owned(),
                attempt_count: attempts,
                decline: Some(decline.clone()),
                next_attempt_time,
            })
        };
        if before == SubscriptionStatus::Incomplete || mode == Attempt::Requested {
            // No dunning for a first payment: the customer has the payment window to pay; then
            // the subscription expires. A requested attempt leaves the dunning schedule as it was.
            if before == SubscriptionStatus::Incomplete {
                invoice.next_attempt_time = None;
                if collecting {
                    stop_collecting(record);
                }
            }
            effects
                .invoice_events
                .push(failed(invoice.next_attempt_time));
            return Ok(effects);
        }
        let failed_from = match before {
            SubscriptionStatus::Trialing => {
                next(before, SubscriptionAction::TrialEndedPaymentFailed)?
            }
            SubscriptionStatus::Active => next(before, SubscriptionAction::RenewalFailed)?,
            other => other,
        };
        match self.policy.next_step(attempts as u32, at_ms, decline.hard) {
            DunningStep::RetryAt(retry_at) => {
                invoice.next_attempt_time = Some(timestamp_of_ms(retry_at));
                record.collect_at_ms = Some(retry_at);
                record.sub_mut().status = failed_from as i32;
                effects
                    .invoice_events
                    .push(failed(Some(timestamp_of_ms(retry_at))));
                if before != SubscriptionStatus::PastDue {
                    effects
                        .subscription_events
                        .push(event(&SubscriptionPastDue {
                            subscription_id: subscription_id.to_owned(),
                            invoice_id: invoice_id.to_owned(),
                            next_attempt_time: Some(timestamp_of_ms(retry_at)),
                        }));
                }
            }
            DunningStep::GiveUp(action) => {
                invoice.next_attempt_time = None;
                invoice.status = next_invoice(invoice.status(), InvoiceAction::MarkUncollectible)
                    .unwrap_or(invoice.status()) as i32;
                invoice.close_time = Some(timestamp_of_ms(at_ms));
                let end = if failed_from == SubscriptionStatus::PastDue {
                    next(failed_from, SubscriptionAction::RetriesExhausted(action))?
                } else {
                    failed_from
                };
                stop_collecting(record);
                let sub = record.sub_mut();
                sub.status = end as i32;
                if end == SubscriptionStatus::Canceled {
                    sub.cancel_time = Some(timestamp_of_ms(at_ms));
                }
                effects.invoice_events.push(failed(None));
                effects
                    .subscription_events
                    .push(event(&SubscriptionCanceled {
                        subscription_id: subscription_id.to_owned(),
                        status: end as i32,
                        reason: if decline.hard {
                            format!("hard decline: {}", decline.code)
                        } else {
                            "payment retries exhausted".into()
                        },
                    }));
            }
        }
        Ok(effects)
    }
}

/// A paid attempt: the invoice paid (with its ledger posting when money moved), and what the
/// subscription waited for settled — the invoice it is collecting, or the first invoice of an
/// INCOMPLETE one (paid late, within its window).
fn paid(
    of: AttemptOf<'_>,
    record: &mut SubscriptionRecord,
    invoice_record: &mut InvoiceRecord,
    collecting: bool,
    psp_reference: &str,
    currency: &str,
) -> Result<Effects, SubscriptionsError> {
    let AttemptOf {
        subscription_id,
        invoice_id,
        at_ms,
        ..
    } = of;
    let mut effects = Effects::default();
    let invoice = invoice_record.inv_mut();
    invoice.status = next_invoice(invoice.status(), InvoiceAction::Pay)? as i32;
    invoice.amount_paid.clone_from(&invoice.amount_due);
    invoice.paid_time = Some(timestamp_of_ms(at_ms));
    invoice.next_attempt_time = None;
    let paid = invoice.amount_paid.as_ref().map_or(0, |m| m.amount_minor);
    effects.invoice_events.push(event(&InvoicePaid {
        invoice_id: invoice_id.to_owned(),
        subscription_id: subscription_id.to_owned(),
        amount_paid: invoice.amount_paid.clone(),
        psp_reference: psp_reference.to_owned(),
    }));
    if paid > 0 {
        effects.posting = Some(
            NewEntry::new(records::payment_entry_id(invoice_id), at_ms)
                .transfer(
                    &records::money_account("revenue", currency),
                    &records::money_account("psp", currency),
                    currency,
                    paid,
                )
                .metadata("invoice_id", invoice_id)
                .metadata("subscription_id", subscription_id)
                .metadata("psp_reference", psp_reference),
        );
    }
    let before = record.sub().status();
    let waiting = collecting
        || (before == SubscriptionStatus::Incomplete
            && record.sub().latest_invoice_id == invoice_id);
    let action = match before {
        _ if !waiting => None,
        SubscriptionStatus::Incomplete => Some(SubscriptionAction::FirstPaymentSucceeded),
        SubscriptionStatus::Trialing => Some(SubscriptionAction::TrialEndedPaid),
        SubscriptionStatus::Active => Some(SubscriptionAction::RenewalPaid),
        SubscriptionStatus::PastDue => Some(SubscriptionAction::RetrySucceeded),
        _ => None,
    };
    if let Some(action) = action {
        record.sub_mut().status = next(before, action)? as i32;
    }
    if collecting {
        stop_collecting(record);
    }
    Ok(effects)
}

/// The subscription no longer waits for a payment.
fn stop_collecting(record: &mut SubscriptionRecord) {
    record.collect_at_ms = None;
    record.collecting_invoice_id.clear();
}

/// The commit writing the attempt's invoice record at `version`.
fn invoice_commit(of: AttemptOf<'_>, version: u64, record: &InvoiceRecord) -> Commit {
    Commit::record(
        records::key(of.tenant, records::INVOICE, of.invoice_id),
        version,
        record,
    )
    .indexed(vec![
        records::all(),
        records::invoices_of(of.subscription_id),
    ])
}

/// A failed PSP call as an attempt outcome: declines (and refusals that retrying cannot fix)
/// are declines; anything that leaves the outcome unknown keeps the attempt pending.
fn declined_or_unknown(
    invoice_id: &str,
    error: OutboundError<PspError>,
) -> Result<Charge, SubscriptionsError> {
    let decline = |code: &str, hard: bool, message: &str| {
        Ok(Charge::Declined(PaymentDecline {
            code: code.to_owned(),
            hard,
            message: message.to_owned(),
        }))
    };
    match error {
        OutboundError::Failed(PspError::Declined { code, hard }) => {
            decline(&code, hard, "The payment was declined.")
        }
        OutboundError::Failed(PspError::CardDataRejected) => decline(
            "card_data_rejected",
            true,
            "The payment method is not a payment provider token.",
        ),
        OutboundError::Failed(PspError::InvalidRequest(_)) => decline(
            "invalid_payment_method",
            true,
            "The payment method cannot be charged.",
        ),
        OutboundError::Failed(PspError::Timeout | PspError::Unavailable)
        | OutboundError::Timeout
        | OutboundError::CircuitOpen { .. }
        | OutboundError::DeadlineExceeded => Err(SubscriptionsError::PaymentOutcomeUnknown(
            invoice_id.to_owned(),
        )),
        OutboundError::Failed(other) => {
            tracing::warn!(error = %other, invoice = %invoice_id, "subscriptions: PSP refused the charge");
            Err(SubscriptionsError::PaymentOutcomeUnknown(
                invoice_id.to_owned(),
            ))
        }
    }
}
