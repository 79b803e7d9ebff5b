//! Invoices and the billing run.
//!
//! # Invoices
//!
//! An invoice is assembled (draft) and finalized in the same commit that creates it: finalizing
//! takes the next number from the tenant's counter aggregate, compare-and-set in that commit, so
//! numbers are gap-free and never reused (a lost race re-reads the counter and starts over). A
//! period's invoice also creates the period's claim, so a period can be invoiced once only.
//!
//! # Collecting (one payment attempt)
//!
//! 1. The attempt number is written to the invoice (`attempt_count`, and `pending_attempt` while
//!    in flight) **before** the PSP is called.
//! 2. The PSP is called with keys derived from (invoice id, attempt number):
//!    `invoice:<id>:attempt:<n>:authorize` and `…:capture`. A crash or a lost reply leaves the
//!    attempt pending, and the next run repeats it with the *same* keys, so the PSP replays its
//!    answer instead of charging again. A retry after a decline is a new attempt, a new number,
//!    new keys: the PSP sees a new payment.
//! 3. The outcome is committed: a payment marks the invoice paid, posts the ledger entry
//!    `invoice:<id>` (`subscriptions:revenue:<CUR>` → `subscriptions:psp:<CUR>`) and moves the
//!    subscription on, all in one commit; a decline records the decline and applies the dunning
//!    policy.
//!
//! The same attempt runs on request (`PayInvoice`, a new payment method): same persisted
//! number, same keys, same commit of the outcome — except that a declined requested attempt
//! records the decline and leaves the dunning schedule as it was. A capture refused after its
//! authorization succeeded voids the authorization (key `…:void`) before the decline is
//! recorded, so no hold is left on the customer's funds.
//!
//! # The billing run
//!
//! [`Subscriptions::run_due`] reads the live due markers in time order (only what is due: the
//! marker ids start with the action time) and performs each subscription's next action at the
//! action's own time — a year's clock advance renews each month in turn, and two subscriptions'
//! actions happen in the order they fell due. Each action is its own commit, so a run that stops
//! part-way (crash, store failure) leaves every subscription at a consistent step, and the next
//! run continues from there: nothing is skipped, nothing billed twice.

use std::collections::HashSet;

use commerce_api::commerce::subscriptions::v1::{
    Invoice, InvoiceLine, InvoiceLineKind, InvoicePaid, InvoicePaymentFailed, InvoiceStatus,
    PaymentDecline, Subscription, SubscriptionCanceled, SubscriptionPastDue, SubscriptionRenewed,
    SubscriptionResumed, SubscriptionStatus,
};
use ledger::{NewEntry, Write};
use payments::{AuthorizeRequest, CaptureRequest, PspError, VoidRequest};
use platform::outbound::{Idempotent, OutboundError};
use prost_reflect::DynamicMessage;
use store::{Commit, Pages};

use crate::dunning::DunningStep;
use crate::engine::{
    Recorded, Subscriptions, commit, decode, event, millis, money, timestamp, with_events,
};
use crate::error::SubscriptionsError;
use crate::periods::{Period, next_period};
use crate::plans::version_of;
use crate::records::{self, CounterRecord, DueMarker, InvoiceRecord, PeriodClaim};
use crate::transitions::{InvoiceAction, SubscriptionAction, next, next_invoice};

/// Due markers read per page of the billing run.
const DUE_PAGE: usize = 256;

/// What one billing run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BillingReport {
    /// Periods started (renewals, trial ends, resumptions) with their invoice.
    pub renewals: i64,
    /// Invoices paid.
    pub invoices_paid: i64,
    /// Payment attempts declined.
    pub payment_failures: i64,
    /// Subscriptions that changed status.
    pub status_changes: i64,
    /// Subscriptions left for the next run because the PSP did not say how an attempt ended.
    pub outcomes_unknown: i64,
}

/// The system tenant under which tenants with subscriptions are listed.
const SYSTEM_TENANT: &str = "_system";
const TENANT: &str = "subscriptions_tenant";

impl std::ops::AddAssign for BillingReport {
    fn add_assign(&mut self, other: BillingReport) {
        self.renewals += other.renewals;
        self.invoices_paid += other.invoices_paid;
        self.payment_failures += other.payment_failures;
        self.status_changes += other.status_changes;
        self.outcomes_unknown += other.outcomes_unknown;
    }
}

impl Subscriptions {
    /// Lists `tenant` for [`Subscriptions::run_due_everywhere`] (idempotent; once per process).
    pub(crate) async fn note_tenant(&self, tenant: &str) -> Result<(), SubscriptionsError> {
        let known = format!("tenant:{tenant}");
        if self.known_accounts.lock().expect("known").contains(&known) {
            return Ok(());
        }
        let key = records::key(SYSTEM_TENANT, TENANT, tenant);
        if self.store.load(&key).await?.is_none() {
            let listed = store::Commit {
                key,
                expected_version: 0,
                data: Vec::new().into(),
                index: vec![store::IndexEntry {
                    name: "all".into(),
                    value: "1".into(),
                }],
                events: Vec::new(),
                idempotency: None,
            };
            match self.store.commit(listed).await {
                Ok(_) | Err(store::StoreError::Conflict { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
        self.known_accounts.lock().expect("known").insert(known);
        Ok(())
    }

    /// The billing run for every tenant with subscriptions, each at its own clock's time (wall
    /// time unless frozen), so renewals happen without an operator. A tenant whose run fails is
    /// logged and left for the next round; the others still run.
    pub async fn run_due_everywhere(&self) -> Result<BillingReport, SubscriptionsError> {
        let mut report = BillingReport::default();
        let mut tenants = store::Pages::new(
            self.store.as_ref(),
            SYSTEM_TENANT,
            TENANT,
            store::IndexEntry {
                name: "all".into(),
                value: "1".into(),
            },
            256,
        );
        while let Some(page) = tenants.next().await? {
            for (tenant, _) in page {
                let now = self.now_ms(&tenant).await?;
                match self.run_due(&tenant, now).await {
                    Ok(run) => report += run,
                    Err(error) => {
                        tracing::warn!(%error, %tenant, "subscriptions: billing run failed; next round retries")
                    }
                }
            }
        }
        Ok(report)
    }
}

/// The billing run as a tenant-clock job: advancing a tenant's clock runs it at the new time.
pub struct SubscriptionJobs(pub std::sync::Arc<Subscriptions>);

#[async_trait::async_trait]
impl platform::clock::DueJobs for SubscriptionJobs {
    async fn run_due(
        &self,
        tenant: &str,
        now_ms: i64,
    ) -> Result<platform::clock::DueJobsReport, platform::ApiError> {
        let report = self.0.run_due(tenant, now_ms).await?;
        Ok(platform::clock::DueJobsReport {
            renewals: report.renewals,
            invoices_paid: report.invoices_paid,
            payment_failures: report.payment_failures,
            status_changes: report.status_changes,
        })
    }
}

/// An invoice about to be created.
pub(crate) struct NewInvoice {
    /// The period billed.
    pub period: Period,
    /// Its lines (ids assigned on creation).
    pub lines: Vec<InvoiceLine>,
    /// Its currency.
    pub currency: String,
    /// Whether this is the period's invoice (claims the period).
    pub claims_period: bool,
}

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
enum Charge {
    Paid { psp_reference: String },
    Declined(PaymentDecline),
}

/// A plan-period line.
pub(crate) fn plan_line(
    sub: &Subscription,
    period: Period,
    price_minor: i64,
    currency: &str,
) -> InvoiceLine {
    InvoiceLine {
        kind: InvoiceLineKind::PlanPeriod as i32,
        description: format!("Plan {} v{}", sub.plan_id, sub.plan_version),
        amount: money(currency, price_minor),
        period_start: Some(timestamp(period.start_ms)),
        period_end: Some(timestamp(period.end_ms)),
        plan_id: sub.plan_id.clone(),
        plan_version: sub.plan_version,
        ..InvoiceLine::default()
    }
}

fn status_change(
    report: &mut BillingReport,
    before: SubscriptionStatus,
    after: SubscriptionStatus,
) {
    if before != after {
        report.status_changes += 1;
    }
}

impl Subscriptions {
    /// An invoice by id.
    pub async fn invoice(
        &self,
        tenant: &str,
        invoice_id: &str,
    ) -> Result<Invoice, SubscriptionsError> {
        Ok(self.load_invoice(tenant, invoice_id).await?.1.inv().clone())
    }

    /// A subscription's invoices (every invoice when `subscription_id` is empty), newest first
    /// (the ids sort so), a page at a time, optionally only those in `statuses`.
    pub async fn list_invoices(
        &self,
        tenant: &str,
        subscription_id: &str,
        statuses: &[InvoiceStatus],
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<Invoice>, String), SubscriptionsError> {
        let size = crate::plans::page_size(page_size)?;
        let scope = format!("invoices:{subscription_id}:{statuses:?}");
        let after = platform::page_token::decode(&scope, page_token)?;
        let index = if subscription_id.is_empty() {
            records::all()
        } else {
            records::invoices_of(subscription_id)
        };
        let mut pages =
            Pages::new(self.store.as_ref(), tenant, records::INVOICE, index, 256).after(after);
        let mut found = Vec::new();
        while let Some(page) = pages.next().await? {
            for (id, stored) in page {
                let record: InvoiceRecord = decode(&stored, "invoice")?;
                if statuses.is_empty() || statuses.contains(&record.inv().status()) {
                    found.push(record.inv().clone());
                    if found.len() == size {
                        return Ok((found, platform::page_token::encode(&scope, &id)));
                    }
                }
            }
        }
        Ok((found, String::new()))
    }

    pub(crate) async fn load_invoice(
        &self,
        tenant: &str,
        invoice_id: &str,
    ) -> Result<(u64, InvoiceRecord), SubscriptionsError> {
        let stored = self
            .store
            .load(&records::key(tenant, records::INVOICE, invoice_id))
            .await?
            .ok_or_else(|| SubscriptionsError::not_found("invoice", invoice_id))?;
        Ok((stored.version, decode(&stored, "invoice")?))
    }

    /// The commits that create `new` for `sub` at `at_ms`, finalized: the invoice (numbered
    /// from the tenant's counter), the counter, and the period's claim when it claims one.
    pub(crate) async fn invoice_commits(
        &self,
        tenant: &str,
        sub: &Subscription,
        new: NewInvoice,
        at_ms: i64,
    ) -> Result<(Invoice, Vec<Commit>), SubscriptionsError> {
        let counter_key = records::key(tenant, records::COUNTER, records::COUNTER_ID);
        let (counter_version, counter) = match self.store.load(&counter_key).await? {
            Some(stored) => (stored.version, decode::<CounterRecord>(&stored, "counter")?),
            None => (0, CounterRecord::default()),
        };
        let invoice_id = records::newest_first_id("inv", at_ms);
        let lines: Vec<InvoiceLine> = new
            .lines
            .into_iter()
            .enumerate()
            .map(|(n, line)| InvoiceLine {
                line_id: format!("{invoice_id}-{}", n + 1),
                ..line
            })
            .collect();
        let subtotal = crate::limits::sum(
            "invoice subtotal",
            lines
                .iter()
                .map(|line| line.amount.as_ref().map_or(0, |m| m.amount_minor)),
        )?;
        let status = next_invoice(InvoiceStatus::Draft, InvoiceAction::Finalize)?;
        let number = counter.last_number + 1;
        let invoice = Invoice {
            invoice_id: invoice_id.clone(),
            number,
            subscription_id: sub.subscription_id.clone(),
            customer_id: sub.customer_id.clone(),
            status: status as i32,
            lines,
            subtotal: money(&new.currency, subtotal),
            amount_due: money(&new.currency, subtotal.max(0)),
            amount_paid: money(&new.currency, 0),
            period_start: Some(timestamp(new.period.start_ms)),
            period_end: Some(timestamp(new.period.end_ms)),
            create_time: Some(timestamp(at_ms)),
            finalize_time: Some(timestamp(at_ms)),
            ..Invoice::default()
        };
        let record = InvoiceRecord {
            invoice: Some(invoice.clone()),
            pending_attempt: 0,
        };
        let mut commits = vec![
            commit(
                records::key(tenant, records::INVOICE, &invoice_id),
                0,
                &record,
                vec![records::all(), records::invoices_of(&sub.subscription_id)],
            ),
            commit(
                counter_key,
                counter_version,
                &CounterRecord {
                    last_number: number,
                },
                Vec::new(),
            ),
        ];
        if new.claims_period {
            commits.push(commit(
                records::key(
                    tenant,
                    records::PERIOD_CLAIM,
                    &records::period_claim_id(&sub.subscription_id, new.period.start_ms),
                ),
                0,
                &PeriodClaim {
                    invoice_id: invoice_id.clone(),
                },
                Vec::new(),
            ));
        }
        Ok((invoice, commits))
    }

    /// Runs everything due for `tenant` up to `now_ms`, each action at the time it fell due, in
    /// time order (see the module docs). Idempotent: running again finds nothing due. A store
    /// failure stops the run with the error (what was committed stays; the next run continues);
    /// a subscription whose payment outcome is unknown is left for the next run.
    pub async fn run_due(
        &self,
        tenant: &str,
        now_ms: i64,
    ) -> Result<BillingReport, SubscriptionsError> {
        let mut report = BillingReport::default();
        let mut skipped: HashSet<String> = HashSet::new();
        'run: loop {
            // The first page whose markers are not all skipped.
            let mut after: Option<String> = None;
            let page = loop {
                let page = self
                    .store
                    .find(
                        tenant,
                        records::DUE,
                        &records::pending_due(),
                        after.as_deref(),
                        DUE_PAGE,
                    )
                    .await?;
                let full = page.len() == DUE_PAGE;
                let live: Vec<_> = page
                    .iter()
                    .filter(|(id, _)| !skipped.contains(id))
                    .cloned()
                    .collect();
                if !live.is_empty() || !full {
                    break live;
                }
                after = page.last().map(|(id, _)| id.clone());
            };
            // Markers in time order, up to the earliest action a processed one scheduled: an
            // action at or before the next marker's time goes first, so re-read the page.
            let mut horizon = i64::MAX;
            let mut progressed = false;
            for (marker_id, stored) in page {
                let Some(due) = records::due_marker_time(&marker_id) else {
                    return Err(SubscriptionsError::Corrupt(format!(
                        "due marker {marker_id}"
                    )));
                };
                if due > now_ms {
                    break;
                }
                if due > horizon {
                    break;
                }
                let marker: DueMarker = decode(&stored, "due marker")?;
                match self
                    .perform_due(
                        tenant,
                        &marker.subscription_id,
                        &marker_id,
                        due,
                        &mut report,
                    )
                    .await
                {
                    Ok(Some(next_due)) => horizon = horizon.min(next_due),
                    Ok(None) => {}
                    Err(SubscriptionsError::PaymentOutcomeUnknown(_)) => {
                        report.outcomes_unknown += 1;
                        skipped.insert(marker_id.clone());
                    }
                    Err(error) => return Err(error),
                }
                progressed = true;
            }
            if !progressed {
                break 'run;
            }
        }
        Ok(report)
    }

    /// Performs the action due at `due_ms` for the subscription whose marker is `marker_id`;
    /// returns the subscription's next due time.
    async fn perform_due(
        &self,
        tenant: &str,
        subscription_id: &str,
        marker_id: &str,
        due_ms: i64,
        report: &mut BillingReport,
    ) -> Result<Option<i64>, SubscriptionsError> {
        let state = self.load_sub(tenant, subscription_id).await?;
        if state.record.due_ms != Some(due_ms) {
            // A marker the subscription no longer points at (cannot happen with atomic commits,
            // but must not stall the run): retire it.
            let key = records::key(tenant, records::DUE, marker_id);
            if let Some(stored) = self.store.load(&key).await? {
                self.store
                    .commit(Commit {
                        index: Vec::new(),
                        ..commit(key, stored.version, &DueMarker::default(), Vec::new())
                    })
                    .await?;
            }
            return Ok(state.record.due_ms);
        }
        let record = &state.record;
        let sub = record.sub();
        let status = sub.status();
        if record.collect_at_ms.is_some() {
            return self.collect(tenant, subscription_id, due_ms, report).await;
        }
        match status {
            SubscriptionStatus::Incomplete => {
                self.expire_incomplete(tenant, subscription_id, due_ms, report)
                    .await
            }
            SubscriptionStatus::Trialing | SubscriptionStatus::Active
                if sub.cancel_at_period_end =>
            {
                self.cancel_at(
                    tenant,
                    subscription_id,
                    due_ms,
                    "canceled at period end",
                    report,
                )
                .await
            }
            SubscriptionStatus::Trialing | SubscriptionStatus::Active => {
                let period = Period {
                    start_ms: millis(&sub.current_period_start),
                    end_ms: millis(&sub.current_period_end),
                };
                self.start_period(
                    tenant,
                    subscription_id,
                    Renewal::Next(period),
                    due_ms,
                    report,
                )
                .await?;
                self.collect(tenant, subscription_id, due_ms, report).await
            }
            SubscriptionStatus::Paused => {
                self.resume_at(tenant, subscription_id, due_ms, report)
                    .await
            }
            _ => Ok(None),
        }
    }

    /// Starts the subscription's next period at `at_ms` with its invoice (to be collected at
    /// once): one commit of the subscription, the invoice, the counter and the period claim.
    pub(crate) async fn start_period(
        &self,
        tenant: &str,
        subscription_id: &str,
        renewal: Renewal,
        at_ms: i64,
        report: &mut BillingReport,
    ) -> Result<(), SubscriptionsError> {
        retrying!({
            let state = self.load_sub(tenant, subscription_id).await?;
            let mut record = state.record.clone();
            // A migration (MigrateSubscription) takes effect with the new period.
            if let Some(version) = record.next_plan_version.take() {
                record.sub_mut().plan_version = version;
            }
            let sub = record.sub().clone();
            let (_, plan) = self.load_plan(tenant, &sub.plan_id).await?;
            let terms = version_of(&plan, sub.plan_version)?;
            let price = terms.price.clone().unwrap_or_default();
            let (period, anchor) = match renewal {
                Renewal::Next(current) => (
                    next_period(
                        record.anchor_ms,
                        current,
                        terms.interval(),
                        terms.interval_count,
                    )?,
                    record.anchor_ms,
                ),
                Renewal::FreshFrom(start) => (
                    crate::periods::period_containing(
                        start,
                        start,
                        terms.interval(),
                        terms.interval_count,
                    )?,
                    start,
                ),
            };
            let mut lines = vec![plan_line(
                &sub,
                period,
                price.amount_minor,
                &price.currency_code,
            )];
            let credit = record.credit_minor.min(price.amount_minor);
            if credit > 0 {
                lines.push(InvoiceLine {
                    kind: InvoiceLineKind::ProrationCredit as i32,
                    description: "Credit carried over from a plan change".into(),
                    amount: money(&price.currency_code, -credit),
                    period_start: Some(timestamp(period.start_ms)),
                    period_end: Some(timestamp(period.end_ms)),
                    plan_id: sub.plan_id.clone(),
                    plan_version: sub.plan_version,
                    ..InvoiceLine::default()
                });
                record.credit_minor = crate::limits::add("credit", record.credit_minor, -credit)?;
            }
            let (invoice, invoice_commits) = self
                .invoice_commits(
                    tenant,
                    &sub,
                    NewInvoice {
                        period,
                        lines,
                        currency: price.currency_code.clone(),
                        claims_period: true,
                    },
                    at_ms,
                )
                .await?;
            record.anchor_ms = anchor;
            record.collect_at_ms = Some(at_ms);
            record.collecting_invoice_id = invoice.invoice_id.clone();
            let resumed = sub.status() == SubscriptionStatus::Paused;
            {
                let sub = record.sub_mut();
                sub.current_period_start = Some(timestamp(period.start_ms));
                sub.current_period_end = Some(timestamp(period.end_ms));
                sub.latest_invoice_id = invoice.invoice_id.clone();
                if resumed {
                    sub.status =
                        next(SubscriptionStatus::Paused, SubscriptionAction::Resume)? as i32;
                    sub.pause_time = None;
                    sub.resume_time = None;
                }
            }
            let events: Vec<DynamicMessage> = if resumed {
                vec![event(&SubscriptionResumed {
                    subscription_id: subscription_id.to_owned(),
                    period_start: Some(timestamp(period.start_ms)),
                })]
            } else {
                vec![event(&SubscriptionRenewed {
                    subscription_id: subscription_id.to_owned(),
                    period_start: Some(timestamp(period.start_ms)),
                    period_end: Some(timestamp(period.end_ms)),
                    invoice_id: invoice.invoice_id.clone(),
                })]
            };
            let (_, mut commits) = self
                .subscription_commits(tenant, Some(&state), record, at_ms, &events)
                .await?;
            commits.extend(invoice_commits);
            self.store.commit_all(commits).await?;
            Ok(())
        })?;
        report.renewals += 1;
        Ok(())
    }

    /// One payment attempt for the invoice the subscription is collecting, at `at_ms` (see the
    /// module docs); returns the subscription's next due time.
    pub(crate) async fn collect(
        &self,
        tenant: &str,
        subscription_id: &str,
        at_ms: i64,
        report: &mut BillingReport,
    ) -> Result<Option<i64>, SubscriptionsError> {
        let state = self.load_sub(tenant, subscription_id).await?;
        if state.record.collect_at_ms.is_none() {
            return Ok(state.record.due_ms);
        }
        let invoice_id = state.record.collecting_invoice_id.clone();
        self.attempt(
            tenant,
            subscription_id,
            &invoice_id,
            at_ms,
            Attempt::Scheduled,
            report,
        )
        .await
    }

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
        let invoice_id = invoice_id.to_owned();
        // 1. The attempt, persisted before the PSP hears of it.
        let attempt = retrying!({
            let state = self.load_sub(tenant, subscription_id).await?;
            if mode == Attempt::Scheduled
                && (state.record.collect_at_ms.is_none()
                    || state.record.collecting_invoice_id != invoice_id)
            {
                return Ok(None);
            }
            let (version, mut record) = self.load_invoice(tenant, &invoice_id).await?;
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
                .commit(commit(
                    records::key(tenant, records::INVOICE, &invoice_id),
                    version,
                    &record,
                    vec![records::all(), records::invoices_of(subscription_id)],
                ))
                .await?;
            Ok(Some((attempt, record)))
        })?;
        let Some((attempt, record)) = attempt else {
            let due = self.load_sub(tenant, subscription_id).await?.record.due_ms;
            return Ok((due, None));
        };
        // 2. The charge.
        let charge = if attempt == 0 {
            None
        } else {
            let due = record.inv().amount_due.clone().unwrap_or_default();
            if due.amount_minor == 0 {
                Some(Charge::Paid {
                    psp_reference: String::new(),
                })
            } else {
                let token = self
                    .load_sub(tenant, subscription_id)
                    .await?
                    .record
                    .sub()
                    .payment_token
                    .clone();
                Some(self.charge(&invoice_id, attempt, &token, &due).await?)
            }
        };
        // 3. The outcome.
        retrying!({
            let state = self.load_sub(tenant, subscription_id).await?;
            let (invoice_version, mut invoice_record) =
                self.load_invoice(tenant, &invoice_id).await?;
            let mut record = state.record.clone();
            let collecting =
                record.collect_at_ms.is_some() && record.collecting_invoice_id == invoice_id;
            if invoice_record.pending_attempt != attempt
                || (mode == Attempt::Scheduled && !collecting)
            {
                // Someone else settled this attempt meanwhile.
                return Ok((record.due_ms, None));
            }
            let before = record.sub().status();
            let Some(charge) = &charge else {
                // Nothing to collect any more (the invoice was settled another way).
                if !collecting {
                    return Ok((record.due_ms, None));
                }
                record.collect_at_ms = None;
                record.collecting_invoice_id.clear();
                let (record, commits) = self
                    .subscription_commits(tenant, Some(&state), record, at_ms, &[])
                    .await?;
                self.store.commit_all(commits).await?;
                return Ok((record.due_ms, None));
            };
            invoice_record.pending_attempt = 0;
            let mut sub_events = Vec::new();
            let mut invoice_events = Vec::new();
            let mut posting = None;
            let currency = invoice_record
                .inv()
                .amount_due
                .as_ref()
                .map(|m| m.currency_code.clone())
                .unwrap_or_default();
            match charge {
                Charge::Paid { psp_reference } => {
                    let invoice = invoice_record.inv_mut();
                    invoice.status = next_invoice(invoice.status(), InvoiceAction::Pay)? as i32;
                    invoice.amount_paid.clone_from(&invoice.amount_due);
                    invoice.paid_time = Some(timestamp(at_ms));
                    invoice.next_attempt_time = None;
                    let paid = invoice.amount_paid.as_ref().map_or(0, |m| m.amount_minor);
                    invoice_events.push(event(&InvoicePaid {
                        invoice_id: invoice_id.clone(),
                        subscription_id: subscription_id.to_owned(),
                        amount_paid: invoice.amount_paid.clone(),
                        psp_reference: psp_reference.clone(),
                    }));
                    if paid > 0 {
                        posting = Some(
                            NewEntry::new(records::payment_entry_id(&invoice_id), at_ms)
                                .transfer(
                                    &records::money_account("revenue", &currency),
                                    &records::money_account("psp", &currency),
                                    &currency,
                                    paid,
                                )
                                .metadata("invoice_id", invoice_id.as_str())
                                .metadata("subscription_id", subscription_id)
                                .metadata("psp_reference", psp_reference.as_str()),
                        );
                    }
                    // What the subscription waited for: the invoice it is collecting, or the
                    // first invoice of an INCOMPLETE one (paid late, within its window).
                    let waiting = collecting
                        || (before == SubscriptionStatus::Incomplete
                            && record.sub().latest_invoice_id == invoice_id);
                    let action = match before {
                        _ if !waiting => None,
                        SubscriptionStatus::Incomplete => {
                            Some(SubscriptionAction::FirstPaymentSucceeded)
                        }
                        SubscriptionStatus::Trialing => Some(SubscriptionAction::TrialEndedPaid),
                        SubscriptionStatus::Active => Some(SubscriptionAction::RenewalPaid),
                        SubscriptionStatus::PastDue => Some(SubscriptionAction::RetrySucceeded),
                        _ => None,
                    };
                    if let Some(action) = action {
                        record.sub_mut().status = next(before, action)? as i32;
                    }
                    if collecting {
                        record.collect_at_ms = None;
                        record.collecting_invoice_id.clear();
                    }
                    report.invoices_paid += 1;
                }
                Charge::Declined(decline) => {
                    report.payment_failures += 1;
                    let attempts = invoice_record.inv().attempt_count;
                    let invoice = invoice_record.inv_mut();
                    invoice.last_decline = Some(decline.clone());
                    if before == SubscriptionStatus::Incomplete || mode == Attempt::Requested {
                        // No dunning for a first payment: the customer has the payment
                        // window to pay; then the subscription expires. A requested attempt
                        // leaves the dunning schedule as it was.
                        if before == SubscriptionStatus::Incomplete {
                            invoice.next_attempt_time = None;
                            if collecting {
                                record.collect_at_ms = None;
                                record.collecting_invoice_id.clear();
                            }
                        }
                        invoice_events.push(event(&InvoicePaymentFailed {
                            invoice_id: invoice_id.clone(),
                            subscription_id: subscription_id.to_owned(),
                            attempt_count: attempts,
                            decline: Some(decline.clone()),
                            next_attempt_time: invoice.next_attempt_time,
                        }));
                    } else {
                        let failed_from = match before {
                            SubscriptionStatus::Trialing => {
                                next(before, SubscriptionAction::TrialEndedPaymentFailed)?
                            }
                            SubscriptionStatus::Active => {
                                next(before, SubscriptionAction::RenewalFailed)?
                            }
                            other => other,
                        };
                        match self.policy.next_step(attempts as u32, at_ms, decline.hard) {
                            DunningStep::RetryAt(retry_at) => {
                                invoice.next_attempt_time = Some(timestamp(retry_at));
                                record.collect_at_ms = Some(retry_at);
                                record.sub_mut().status = failed_from as i32;
                                invoice_events.push(event(&InvoicePaymentFailed {
                                    invoice_id: invoice_id.clone(),
                                    subscription_id: subscription_id.to_owned(),
                                    attempt_count: attempts,
                                    decline: Some(decline.clone()),
                                    next_attempt_time: Some(timestamp(retry_at)),
                                }));
                                if before != SubscriptionStatus::PastDue {
                                    sub_events.push(event(&SubscriptionPastDue {
                                        subscription_id: subscription_id.to_owned(),
                                        invoice_id: invoice_id.clone(),
                                        next_attempt_time: Some(timestamp(retry_at)),
                                    }));
                                }
                            }
                            DunningStep::GiveUp(action) => {
                                invoice.next_attempt_time = None;
                                invoice.status = next_invoice(
                                    invoice.status(),
                                    InvoiceAction::MarkUncollectible,
                                )
                                .unwrap_or(invoice.status())
                                    as i32;
                                invoice.close_time = Some(timestamp(at_ms));
                                let end = if failed_from == SubscriptionStatus::PastDue {
                                    next(failed_from, SubscriptionAction::RetriesExhausted(action))?
                                } else {
                                    failed_from
                                };
                                record.collect_at_ms = None;
                                record.collecting_invoice_id.clear();
                                let sub = record.sub_mut();
                                sub.status = end as i32;
                                if end == SubscriptionStatus::Canceled {
                                    sub.cancel_time = Some(timestamp(at_ms));
                                }
                                invoice_events.push(event(&InvoicePaymentFailed {
                                    invoice_id: invoice_id.clone(),
                                    subscription_id: subscription_id.to_owned(),
                                    attempt_count: attempts,
                                    decline: Some(decline.clone()),
                                    next_attempt_time: None,
                                }));
                                sub_events.push(event(&SubscriptionCanceled {
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
                    }
                }
            }
            status_change(report, before, record.sub().status());
            let mut invoice_commit = with_events(
                commit(
                    records::key(tenant, records::INVOICE, &invoice_id),
                    invoice_version,
                    &invoice_record,
                    vec![records::all(), records::invoices_of(subscription_id)],
                ),
                invoice_version + 1,
                at_ms,
                &invoice_events,
            );
            let (record, mut commits) = self
                .subscription_commits(tenant, Some(&state), record, at_ms, &sub_events)
                .await?;
            let settled = (record.sub().clone(), invoice_record.inv().clone());
            invoice_commit.idempotency = recorded.record(&settled.0, Some(&settled.1));
            commits.push(invoice_commit);
            self.commit_with_posting(tenant, &currency, posting, commits)
                .await?;
            Ok((record.due_ms, Some(settled)))
        })
    }

    /// Commits `commits`, with the ledger entry `posting` in the same commit when there is one.
    pub(crate) async fn commit_with_posting(
        &self,
        tenant: &str,
        currency: &str,
        posting: Option<NewEntry>,
        commits: Vec<Commit>,
    ) -> Result<(), SubscriptionsError> {
        match posting {
            Some(entry) => {
                self.open_money_accounts(tenant, currency).await?;
                let written = self
                    .ledger
                    .write_with(tenant, Write::Post(entry), commits)
                    .await?;
                if !written.new {
                    return Err(SubscriptionsError::Corrupt(
                        "an invoice payment was posted twice".into(),
                    ));
                }
            }
            None => {
                self.store.commit_all(commits).await?;
            }
        }
        Ok(())
    }

    /// Charges `amount` for attempt `attempt` of the invoice: authorize and capture, with keys
    /// derived from (invoice, attempt) — see the module docs.
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
            .call(Idempotent::Yes, |_| {
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
            .call(Idempotent::Yes, |_| {
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
            .call(Idempotent::Yes, |_| {
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

    /// Ends an INCOMPLETE subscription whose first payment window passed: INCOMPLETE_EXPIRED,
    /// and its first invoice void.
    async fn expire_incomplete(
        &self,
        tenant: &str,
        subscription_id: &str,
        at_ms: i64,
        report: &mut BillingReport,
    ) -> Result<Option<i64>, SubscriptionsError> {
        retrying!({
            let state = self.load_sub(tenant, subscription_id).await?;
            let mut record = state.record.clone();
            let before = record.sub().status();
            record.sub_mut().status =
                next(before, SubscriptionAction::FirstPaymentWindowExpired)? as i32;
            record.collect_at_ms = None;
            record.collecting_invoice_id.clear();
            let invoice_id = record.sub().latest_invoice_id.clone();
            let mut commits = Vec::new();
            if !invoice_id.is_empty() {
                let (version, mut invoice) = self.load_invoice(tenant, &invoice_id).await?;
                if let Ok(status) = next_invoice(invoice.inv().status(), InvoiceAction::Void) {
                    invoice.pending_attempt = 0;
                    let inv = invoice.inv_mut();
                    inv.status = status as i32;
                    inv.close_time = Some(timestamp(at_ms));
                    commits.push(commit(
                        records::key(tenant, records::INVOICE, &invoice_id),
                        version,
                        &invoice,
                        vec![records::all(), records::invoices_of(subscription_id)],
                    ));
                }
            }
            let (record, sub_commits) = self
                .subscription_commits(tenant, Some(&state), record, at_ms, &[])
                .await?;
            commits.splice(0..0, sub_commits);
            self.store.commit_all(commits).await?;
            status_change(report, before, record.sub().status());
            Ok(record.due_ms)
        })
    }

    /// Cancels the subscription at `at_ms` (now, or its period end) with `reason`.
    ///
    /// The invoice being collected (a PAST_DUE subscription's dunning invoice) is voided in the
    /// same commit. Stripe stops automatic collection of a canceled subscription's invoices but
    /// leaves them open; here an open invoice of an ended subscription would stay payable by
    /// `PayInvoice` for service that is not delivered, so nothing is left collectible: it is
    /// void (nothing is owed). Written-off (UNCOLLECTIBLE) invoices are untouched. A payment
    /// attempt in flight with an unknown outcome refuses the cancellation
    /// ([`SubscriptionsError::PaymentInProgress`]) rather than void what may have been paid.
    pub(crate) async fn cancel_at(
        &self,
        tenant: &str,
        subscription_id: &str,
        at_ms: i64,
        reason: &str,
        report: &mut BillingReport,
    ) -> Result<Option<i64>, SubscriptionsError> {
        retrying!({
            let state = self.load_sub(tenant, subscription_id).await?;
            let mut record = state.record.clone();
            let before = record.sub().status();
            if before == SubscriptionStatus::Canceled {
                return Ok(None);
            }
            let status = next(before, SubscriptionAction::Cancel)?;
            let mut invoice_commit = None;
            let collecting = record.collecting_invoice_id.clone();
            if record.collect_at_ms.is_some() && !collecting.is_empty() {
                let (version, mut invoice) = self.load_invoice(tenant, &collecting).await?;
                if invoice.pending_attempt > 0 {
                    return Err(SubscriptionsError::PaymentInProgress(collecting));
                }
                if invoice.inv().status() == InvoiceStatus::Open {
                    let inv = invoice.inv_mut();
                    inv.status = next_invoice(InvoiceStatus::Open, InvoiceAction::Void)? as i32;
                    inv.close_time = Some(timestamp(at_ms));
                    inv.next_attempt_time = None;
                    invoice_commit = Some(commit(
                        records::key(tenant, records::INVOICE, &collecting),
                        version,
                        &invoice,
                        vec![records::all(), records::invoices_of(subscription_id)],
                    ));
                }
            }
            record.collect_at_ms = None;
            record.collecting_invoice_id.clear();
            let sub = record.sub_mut();
            sub.status = status as i32;
            sub.cancel_time = Some(timestamp(at_ms));
            sub.cancel_at_period_end = false;
            let events = [event(&SubscriptionCanceled {
                subscription_id: subscription_id.to_owned(),
                status: status as i32,
                reason: reason.to_owned(),
            })];
            let (record, mut commits) = self
                .subscription_commits(tenant, Some(&state), record, at_ms, &events)
                .await?;
            commits.extend(invoice_commit);
            self.store.commit_all(commits).await?;
            status_change(report, before, record.sub().status());
            Ok(record.due_ms)
        })
    }

    /// Resumes a paused subscription at `at_ms`: within the period already paid for, it goes on
    /// to that period's end; after it, a new period starts at `at_ms` with its invoice.
    pub(crate) async fn resume_at(
        &self,
        tenant: &str,
        subscription_id: &str,
        at_ms: i64,
        report: &mut BillingReport,
    ) -> Result<Option<i64>, SubscriptionsError> {
        let state = self.load_sub(tenant, subscription_id).await?;
        let before = state.record.sub().status();
        next(before, SubscriptionAction::Resume)?;
        if at_ms < millis(&state.record.sub().current_period_end) {
            let due = retrying!({
                let state = self.load_sub(tenant, subscription_id).await?;
                let mut record = state.record.clone();
                let status = next(record.sub().status(), SubscriptionAction::Resume)?;
                let sub = record.sub_mut();
                sub.status = status as i32;
                sub.pause_time = None;
                sub.resume_time = None;
                let events = [event(&SubscriptionResumed {
                    subscription_id: subscription_id.to_owned(),
                    period_start: sub.current_period_start,
                })];
                let (record, commits) = self
                    .subscription_commits(tenant, Some(&state), record, at_ms, &events)
                    .await?;
                self.store.commit_all(commits).await?;
                Ok(record.due_ms)
            })?;
            report.status_changes += 1;
            return Ok(due);
        }
        self.start_period(
            tenant,
            subscription_id,
            Renewal::FreshFrom(at_ms),
            at_ms,
            report,
        )
        .await?;
        report.status_changes += 1;
        self.collect(tenant, subscription_id, at_ms, report).await
    }
}

/// Which period a new invoice bills.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Renewal {
    /// The period after this one, on the subscription's anchor.
    Next(Period),
    /// A fresh schedule anchored at this time (a resumption).
    FreshFrom(i64),
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
