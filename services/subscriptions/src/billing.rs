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
//!
//! The run works in **waves** of up to 64 due markers of distinct subscriptions, so commits share
//! group commits instead of waiting on one fsync each: the wave's renewals are one commit (their
//! invoices numbered in due order from one read of the counter — all or nothing, so still
//! gap-free), then the wave's actions (collections among them) run at once. Each subscription's
//! own actions stay in time order; an action that another action of the wave schedules inside the
//! wave's time span (a dunning retry shorter than the spread of the wave's due times) runs in the
//! next wave, after actions of other subscriptions that fell due later.

use platform::units;
use platform::units::{ms_or_epoch, timestamp_of_ms};
use std::collections::HashSet;

use store::{Retry, retry_on_conflict};
use tracing::Instrument as _;

use commerce_api::commerce::subscriptions::v1::{
    Invoice, InvoiceLine, InvoiceLineKind, InvoiceStatus, Subscription, SubscriptionCanceled,
    SubscriptionRenewed, SubscriptionResumed, SubscriptionStatus,
};
use ledger::{NewEntry, Write};
use prost_reflect::DynamicMessage;
use store::{Commit, Pages};

use crate::collect::Attempt;
use crate::engine::{Subscriptions, event};
use crate::error::SubscriptionsError;
use crate::periods::{Period, next_period};
use crate::plans::version_of;
use crate::records::{self, CounterRecord, DueMarker, InvoiceRecord, PeriodClaim};
use crate::transitions::{InvoiceAction, SubscriptionAction, next, next_invoice};

/// Due markers read per page of the billing run.
const DUE_PAGE: usize = 256;

/// Subscriptions one wave of the billing run works on at once.
const WAVE: usize = 64;

/// A due marker of the billing run: whose action falls due when.
struct Due {
    marker_id: String,
    subscription_id: String,
    due_ms: i64,
}

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
                let span = platform::telemetry::step_span("tenant", &tenant);
                let now = self.now_ms(&tenant).await?;
                match self.run_due(&tenant, now).instrument(span.clone()).await {
                    Ok(run) => report += run,
                    Err(error) => {
                        platform::telemetry::mark_failed(&span, &error);
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
        amount: units::money(currency, price_minor),
        period_start: Some(timestamp_of_ms(period.start_ms)),
        period_end: Some(timestamp_of_ms(period.end_ms)),
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
                let record = InvoiceRecord::load(&stored)?;
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
        Ok((stored.version, InvoiceRecord::load(&stored)?))
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
        let mut counter = self.counter(tenant).await?;
        let number = counter.take();
        let (invoice, mut commits) = numbered_invoice(tenant, sub, new, at_ms, number)?;
        commits.insert(1, counter.commit());
        Ok((invoice, commits))
    }

    /// The tenant's invoice counter as stored (its version and last number).
    pub(crate) async fn counter(&self, tenant: &str) -> Result<Counter, SubscriptionsError> {
        let key = records::key(tenant, records::COUNTER, records::COUNTER_ID);
        let (version, stored) = match self.store.load(&key).await? {
            Some(stored) => (stored.version, stored.decode::<CounterRecord>("counter")?),
            None => (0, CounterRecord::default()),
        };
        Ok(Counter {
            key,
            version,
            last_number: stored.last_number,
        })
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
            // Markers in time order, up to the earliest action a processed one scheduled (an
            // action at or before the next marker's time goes first, so re-read the page), in
            // waves of distinct subscriptions worked on at once.
            let mut horizon = i64::MAX;
            let mut progressed = false;
            let mut markers = page.into_iter().peekable();
            loop {
                let mut wave: Vec<Due> = Vec::new();
                while let Some((marker_id, stored)) = markers.peek() {
                    let Some(due_ms) = records::due_marker_time(marker_id) else {
                        return Err(SubscriptionsError::Corrupt(format!(
                            "due marker {marker_id}"
                        )));
                    };
                    if due_ms > now_ms || due_ms > horizon || wave.len() == WAVE {
                        break;
                    }
                    let marker: DueMarker = stored.decode("due marker")?;
                    if wave
                        .iter()
                        .any(|due| due.subscription_id == marker.subscription_id)
                    {
                        break;
                    }
                    wave.push(Due {
                        marker_id: marker_id.clone(),
                        subscription_id: marker.subscription_id,
                        due_ms,
                    });
                    markers.next();
                }
                if wave.is_empty() {
                    break;
                }
                progressed = true;
                let mut failure = None;
                for (due, outcome) in wave
                    .iter()
                    .zip(self.perform_wave(tenant, &wave, &mut report).await?)
                {
                    match outcome {
                        Ok(Some(next_due)) => horizon = horizon.min(next_due),
                        Ok(None) => {}
                        Err(SubscriptionsError::PaymentOutcomeUnknown(_)) => {
                            report.outcomes_unknown += 1;
                            skipped.insert(due.marker_id.clone());
                        }
                        Err(error) => {
                            failure.get_or_insert(error);
                        }
                    }
                }
                if let Some(error) = failure {
                    return Err(error);
                }
            }
            if !progressed {
                break 'run;
            }
        }
        Ok(report)
    }

    /// Performs a wave's actions at once, each subscription's at its own due time: first the
    /// renewals together (their invoices numbered in due order in one commit), then every
    /// action — a renewed subscription's collection among them — concurrently, so their commits
    /// share group commits and their ledger entries batch. Returns each action's outcome, as
    /// [`Subscriptions::perform_due`] does.
    async fn perform_wave(
        &self,
        tenant: &str,
        wave: &[Due],
        report: &mut BillingReport,
    ) -> Result<Vec<Result<Option<i64>, SubscriptionsError>>, SubscriptionsError> {
        let Some(renewed) = self.renew_together(tenant, wave).await? else {
            // Something in the wave moved under the batch: one action after another, as the
            // run did before waves (every action then reads the counter it numbers from).
            let mut outcomes = Vec::with_capacity(wave.len());
            for due in wave {
                outcomes.push(
                    self.perform_due(
                        tenant,
                        &due.subscription_id,
                        &due.marker_id,
                        due.due_ms,
                        report,
                    )
                    .instrument(platform::telemetry::step_span(
                        "subscription",
                        &due.subscription_id,
                    ))
                    .await,
                );
            }
            return Ok(outcomes);
        };
        report.renewals += renewed;
        let actions = wave.iter().map(|due| async move {
            let mut own = BillingReport::default();
            let outcome = self
                .perform_due(
                    tenant,
                    &due.subscription_id,
                    &due.marker_id,
                    due.due_ms,
                    &mut own,
                )
                .instrument(platform::telemetry::step_span(
                    "subscription",
                    &due.subscription_id,
                ))
                .await;
            (own, outcome)
        });
        let mut outcomes = Vec::with_capacity(wave.len());
        for (own, outcome) in futures_util::future::join_all(actions).await {
            *report += own;
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// Starts the next period of every subscription of the wave whose due action is a renewal,
    /// in **one commit** with the counter: their invoices take a run of numbers in due order,
    /// gap-free, with one counter compare-and-set instead of one each. Returns how many it
    /// renewed (0 when fewer than two are due for renewal: [`Subscriptions::perform_due`] renews
    /// the one), or `None` when anything moved meanwhile (a lost race): nothing was renewed.
    async fn renew_together(
        &self,
        tenant: &str,
        wave: &[Due],
    ) -> Result<Option<i64>, SubscriptionsError> {
        let mut counter = self.counter(tenant).await?;
        let mut commits = Vec::new();
        let mut renewed = 0;
        for due in wave {
            let state = self.load_sub(tenant, &due.subscription_id).await?;
            let Some(period) = renewal_due(&state.record, due.due_ms) else {
                continue;
            };
            // A renewal that cannot be composed (its plan gone, say) is left to perform_due,
            // which reports why; the numbers it took go back.
            let before = counter.clone();
            match self
                .period_commits(
                    tenant,
                    &due.subscription_id,
                    Renewal::Next(period),
                    due.due_ms,
                    &mut counter,
                )
                .await
            {
                Ok(period_commits) => {
                    commits.extend(period_commits);
                    renewed += 1;
                }
                Err(_) => counter = before,
            }
        }
        if renewed < 2 {
            return Ok(Some(0));
        }
        commits.push(counter.commit());
        match self.store.commit_all(commits).await {
            Ok(_) => Ok(Some(renewed)),
            Err(store::StoreError::Conflict { .. }) => Ok(None),
            Err(error) => Err(error.into()),
        }
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
                        ..Commit::record(key, stored.version, &DueMarker::default())
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
                let period = current_period(sub);
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
        retry_on_conflict(Retry::CONTENDED, || async move {
            let mut counter = self.counter(tenant).await?;
            let mut commits = self
                .period_commits(tenant, subscription_id, renewal, at_ms, &mut counter)
                .await?;
            commits.push(counter.commit());
            self.store.commit_all(commits).await?;
            Ok::<_, SubscriptionsError>(())
        })
        .await?;
        report.renewals += 1;
        Ok(())
    }

    /// The commits that start the subscription's next period at `at_ms` with its invoice,
    /// numbered from `counter` (whose commit is the caller's): the subscription, its due
    /// markers, the invoice and the period claim.
    async fn period_commits(
        &self,
        tenant: &str,
        subscription_id: &str,
        renewal: Renewal,
        at_ms: i64,
        counter: &mut Counter,
    ) -> Result<Vec<Commit>, SubscriptionsError> {
        {
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
                    amount: units::money(&price.currency_code, -credit),
                    period_start: Some(timestamp_of_ms(period.start_ms)),
                    period_end: Some(timestamp_of_ms(period.end_ms)),
                    plan_id: sub.plan_id.clone(),
                    plan_version: sub.plan_version,
                    ..InvoiceLine::default()
                });
                record.credit_minor = crate::limits::add("credit", record.credit_minor, -credit)?;
            }
            let (invoice, invoice_commits) = numbered_invoice(
                tenant,
                &sub,
                NewInvoice {
                    period,
                    lines,
                    currency: price.currency_code.clone(),
                    claims_period: true,
                },
                at_ms,
                counter.take(),
            )?;
            record.anchor_ms = anchor;
            record.collect_at_ms = Some(at_ms);
            record.collecting_invoice_id = invoice.invoice_id.clone();
            let resumed = sub.status() == SubscriptionStatus::Paused;
            {
                let sub = record.sub_mut();
                sub.current_period_start = Some(timestamp_of_ms(period.start_ms));
                sub.current_period_end = Some(timestamp_of_ms(period.end_ms));
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
                    period_start: Some(timestamp_of_ms(period.start_ms)),
                })]
            } else {
                vec![event(&SubscriptionRenewed {
                    subscription_id: subscription_id.to_owned(),
                    period_start: Some(timestamp_of_ms(period.start_ms)),
                    period_end: Some(timestamp_of_ms(period.end_ms)),
                    invoice_id: invoice.invoice_id.clone(),
                })]
            };
            let (_, mut commits) = self
                .subscription_commits(tenant, Some(&state), record, at_ms, &events)
                .await?;
            commits.extend(invoice_commits);
            Ok(commits)
        }
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

    /// Ends an INCOMPLETE subscription whose first payment window passed: INCOMPLETE_EXPIRED,
    /// and its first invoice void.
    async fn expire_incomplete(
        &self,
        tenant: &str,
        subscription_id: &str,
        at_ms: i64,
        report: &mut BillingReport,
    ) -> Result<Option<i64>, SubscriptionsError> {
        let changed = retry_on_conflict(Retry::CONTENDED, || async move {
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
                    inv.close_time = Some(timestamp_of_ms(at_ms));
                    commits.push(
                        Commit::record(
                            records::key(tenant, records::INVOICE, &invoice_id),
                            version,
                            &invoice,
                        )
                        .indexed(vec![records::all(), records::invoices_of(subscription_id)]),
                    );
                }
            }
            let (record, sub_commits) = self
                .subscription_commits(tenant, Some(&state), record, at_ms, &[])
                .await?;
            commits.splice(0..0, sub_commits);
            self.store.commit_all(commits).await?;
            Ok::<_, SubscriptionsError>(Some((before, record.sub().status(), record.due_ms)))
        })
        .await?;
        Ok(changed.and_then(|(before, after, due_ms)| {
            status_change(report, before, after);
            due_ms
        }))
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
        let changed = retry_on_conflict(Retry::CONTENDED, || async move {
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
                    inv.close_time = Some(timestamp_of_ms(at_ms));
                    inv.next_attempt_time = None;
                    invoice_commit = Some(
                        Commit::record(
                            records::key(tenant, records::INVOICE, &collecting),
                            version,
                            &invoice,
                        )
                        .indexed(vec![records::all(), records::invoices_of(subscription_id)]),
                    );
                }
            }
            record.collect_at_ms = None;
            record.collecting_invoice_id.clear();
            let sub = record.sub_mut();
            sub.status = status as i32;
            sub.cancel_time = Some(timestamp_of_ms(at_ms));
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
            Ok::<_, SubscriptionsError>(Some((before, record.sub().status(), record.due_ms)))
        })
        .await?;
        Ok(changed.and_then(|(before, after, due_ms)| {
            status_change(report, before, after);
            due_ms
        }))
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
        if at_ms < ms_or_epoch(&state.record.sub().current_period_end) {
            let due = retry_on_conflict(Retry::CONTENDED, || async move {
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
                Ok::<_, SubscriptionsError>(record.due_ms)
            })
            .await?;
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

/// The subscription's current period.
fn current_period(sub: &Subscription) -> Period {
    Period {
        start_ms: ms_or_epoch(&sub.current_period_start),
        end_ms: ms_or_epoch(&sub.current_period_end),
    }
}

/// The period to renew from when the subscription's action due at `due_ms` is a renewal (what
/// [`Subscriptions::perform_due`] would do: active or trialing, nothing being collected, not
/// canceling at the period's end).
fn renewal_due(record: &records::SubscriptionRecord, due_ms: i64) -> Option<Period> {
    let sub = record.sub();
    let renews = record.due_ms == Some(due_ms)
        && record.collect_at_ms.is_none()
        && matches!(
            sub.status(),
            SubscriptionStatus::Trialing | SubscriptionStatus::Active
        )
        && !sub.cancel_at_period_end;
    renews.then(|| current_period(sub))
}

/// The tenant's invoice counter, read once and handing out numbers in order: every invoice it
/// numbers must be committed together with [`Counter::commit`] (compare-and-set on the version
/// read), so numbers stay gap-free — a batch of invoices in one commit takes a run of numbers.
#[derive(Clone)]
pub(crate) struct Counter {
    key: store::AggregateKey,
    version: u64,
    last_number: i64,
}

impl Counter {
    /// The next number.
    pub(crate) fn take(&mut self) -> i64 {
        self.last_number += 1;
        self.last_number
    }

    /// The counter after the numbers taken.
    pub(crate) fn commit(&self) -> Commit {
        Commit::record(
            self.key.clone(),
            self.version,
            &CounterRecord {
                last_number: self.last_number,
            },
        )
    }
}

/// The commits that create `new` for `sub` at `at_ms`, finalized as invoice `number`: the
/// invoice and the period's claim when it claims one (the counter is the caller's).
fn numbered_invoice(
    tenant: &str,
    sub: &Subscription,
    new: NewInvoice,
    at_ms: i64,
    number: i64,
) -> Result<(Invoice, Vec<Commit>), SubscriptionsError> {
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
    let invoice = Invoice {
        invoice_id: invoice_id.clone(),
        number,
        subscription_id: sub.subscription_id.clone(),
        customer_id: sub.customer_id.clone(),
        status: status as i32,
        lines,
        subtotal: units::money(&new.currency, subtotal),
        amount_due: units::money(&new.currency, subtotal.max(0)),
        amount_paid: units::money(&new.currency, 0),
        period_start: Some(timestamp_of_ms(new.period.start_ms)),
        period_end: Some(timestamp_of_ms(new.period.end_ms)),
        create_time: Some(timestamp_of_ms(at_ms)),
        finalize_time: Some(timestamp_of_ms(at_ms)),
        ..Invoice::default()
    };
    let record = InvoiceRecord {
        invoice: Some(invoice.clone()),
        pending_attempt: 0,
    };
    let mut commits = vec![
        Commit::record(
            records::key(tenant, records::INVOICE, &invoice_id),
            0,
            &record,
        )
        .indexed(vec![
            records::all(),
            records::invoices_of(&sub.subscription_id),
        ]),
    ];
    if new.claims_period {
        commits.push(Commit::record(
            records::key(
                tenant,
                records::PERIOD_CLAIM,
                &records::period_claim_id(&sub.subscription_id, new.period.start_ms),
            ),
            0,
            &PeriodClaim {
                invoice_id: invoice_id.clone(),
            },
        ));
    }
    Ok((invoice, commits))
}

/// Which period a new invoice bills.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Renewal {
    /// The period after this one, on the subscription's anchor.
    Next(Period),
    /// A fresh schedule anchored at this time (a resumption).
    FreshFrom(i64),
}
