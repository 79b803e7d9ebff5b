//! Subscriptions' lifecycle: create (trial, or the first invoice charged at once), read, list,
//! cancel (now or at period end), pause and resume, and plan changes with proration (and their
//! preview, which computes exactly what the change will invoice).

use commerce_api::commerce::subscriptions::v1::{
    Invoice, InvoiceLine, InvoiceLineKind, Plan, PlanStatus, Subscription, SubscriptionCreated,
    SubscriptionPaused, SubscriptionPlanChanged, SubscriptionStatus,
};
use platform::interceptors::IdempotencyContext;
use platform::units;
use platform::units::{ms_or_epoch, timestamp_of_ms};
use store::Commit;
use store::Pages;
use store::{Retry, retry_on_conflict};

use crate::MILLIS_PER_DAY;
use crate::billing::{BillingReport, NewInvoice, plan_line};
use crate::collect::Attempt;
use crate::engine::{Recorded, SubState, Subscriptions, event};
use crate::error::SubscriptionsError;
use crate::periods::{Period, period_containing};
use crate::plans::{current_version, page_size, version_of};
use crate::proration::prorate;
use crate::records::{self, CreateClaim, SubscriptionRecord};
use crate::transitions::{IllegalTransition, SubscriptionAction, can_change_plan, next};

/// What a plan change credits and charges, as the contract shows it (`PreviewPlanChange`).
pub use commerce_api::commerce::subscriptions::v1::Proration as ProrationPreview;

/// A created subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    /// The subscription after creation (ACTIVE or INCOMPLETE when charged, else TRIALING).
    pub subscription: Subscription,
    /// The first invoice, when one was charged at once.
    pub first_invoice: Option<Invoice>,
}

/// How one attempt at a creation ended.
enum Creation {
    /// The claim of the creation, committed now or by an earlier call with the key: the first
    /// charge is finished from it.
    Claimed(CreateClaim),
    /// A subscription that starts with a trial: nothing to charge, the commit completed it.
    Trial(Box<Created>),
}

/// A plan change's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanChange {
    /// The subscription on its new plan.
    pub subscription: Subscription,
    /// The proration invoice (none during a trial: nothing was paid, nothing to prorate).
    pub invoice: Option<Invoice>,
}

pub(crate) fn check_token(payment_token: &str) -> Result<(), SubscriptionsError> {
    if payments::looks_like_card_number(payment_token) {
        return Err(SubscriptionsError::CardDataRejected);
    }
    let mut chars = payment_token.chars();
    let well_formed = (4..=255).contains(&payment_token.len())
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !well_formed {
        return Err(SubscriptionsError::invalid(
            "payment_token",
            "must be a payment provider token (4..=255 letters, digits, _ or -)",
        ));
    }
    Ok(())
}

fn check_id(field: &str, id: &str) -> Result<(), SubscriptionsError> {
    if id.is_empty() || id.len() > 64 {
        return Err(SubscriptionsError::invalid(
            field,
            "must be 1..=64 characters",
        ));
    }
    Ok(())
}

/// `IllegalTransition` for `action` from `status`, as an error.
fn refuse(status: SubscriptionStatus, action: SubscriptionAction) -> SubscriptionsError {
    match next(status, action) {
        Err(illegal) => illegal.into(),
        Ok(to) => IllegalTransition {
            from: status,
            to,
            action,
        }
        .into(),
    }
}

/// A plan change computed at one time: the contract's proration and what it changes.
struct Computed {
    preview: ProrationPreview,
    new_version: i32,
}

impl Subscriptions {
    /// Subscribes `customer_id` to the plan's current version (see `CreateSubscription`):
    /// TRIALING when the version has a trial and `skip_trial` is false; otherwise the first
    /// period's invoice is created and charged at once — ACTIVE when paid, INCOMPLETE when not.
    ///
    /// `id_key` (the request's idempotency id) makes it idempotent: creating again with the same
    /// key finds the subscription the first call made (finishing its first charge if a crash
    /// interrupted it) instead of making another.
    pub async fn create_subscription(
        &self,
        tenant: &str,
        id_key: &str,
        customer_id: &str,
        plan_id: &str,
        payment_token: &str,
        skip_trial: bool,
    ) -> Result<Created, SubscriptionsError> {
        self.create_subscription_recording(
            tenant,
            id_key,
            customer_id,
            plan_id,
            payment_token,
            skip_trial,
            None,
        )
        .await
    }

    /// [`Subscriptions::create_subscription`], with the `CreateSubscriptionResponse` carrying
    /// the returned subscription and first invoice recorded under `idempotency` in the commit
    /// that completes the call: the first charge's outcome, or the creation itself for a trial.
    /// A call whose charge has an unknown outcome, or that fails, records nothing here: the
    /// idempotency layer records its answer.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_subscription_recording(
        &self,
        tenant: &str,
        id_key: &str,
        customer_id: &str,
        plan_id: &str,
        payment_token: &str,
        skip_trial: bool,
        idempotency: Option<&IdempotencyContext>,
    ) -> Result<Created, SubscriptionsError> {
        let recorded = idempotency.map_or(Recorded::Nothing, Recorded::CreateSubscription);
        check_id("customer_id", customer_id)?;
        check_id("plan_id", plan_id)?;
        check_token(payment_token)?;
        let claim_key = records::key(
            tenant,
            records::CREATE_CLAIM,
            &records::create_claim_id("create_subscription", id_key),
        );
        // A lost race (the counter moved since it was read, or a call with the same key won)
        // starts over, in a loop with jittered pauses: a retry by recursion nested one more
        // future per lost race, and a burst of concurrent creations in a tenant (a dozen lost
        // races each on average at 16 at once) overflowed the worker thread's stack.
        let claim_key = &claim_key;
        let creation = retry_on_conflict(Retry::CONTENDED, || async move {
            self.try_create(
                tenant,
                claim_key,
                customer_id,
                plan_id,
                payment_token,
                skip_trial,
                recorded,
            )
            .await
        })
        .await?;
        match creation {
            Creation::Claimed(claim) => self.finish_creation(tenant, &claim, recorded).await,
            Creation::Trial(created) => Ok(*created),
        }
    }

    /// One attempt at a creation: finds the claim of an earlier call with the key, or commits
    /// the subscription (with its first invoice, unless it starts with a trial) and the claim.
    /// A conflict means the attempt lost a race and wrote nothing.
    #[allow(clippy::too_many_arguments)]
    async fn try_create(
        &self,
        tenant: &str,
        claim_key: &store::AggregateKey,
        customer_id: &str,
        plan_id: &str,
        payment_token: &str,
        skip_trial: bool,
        recorded: Recorded<'_>,
    ) -> Result<Creation, SubscriptionsError> {
        if let Some(claim) = self.load_claim(claim_key).await? {
            return Ok(Creation::Claimed(claim));
        }
        let (_, plan) = self.load_plan(tenant, plan_id).await?;
        if plan.status() == PlanStatus::Archived {
            return Err(SubscriptionsError::PlanArchived(plan_id.to_owned()));
        }
        let terms = current_version(&plan)?.clone();
        let price = terms.price.clone().unwrap_or_default();
        self.note_tenant(tenant).await?;
        let now = self.now_ms(tenant).await?;
        let subscription_id = records::newest_first_id("sub", now);
        let mut sub = Subscription {
            subscription_id: subscription_id.clone(),
            customer_id: customer_id.to_owned(),
            plan_id: plan_id.to_owned(),
            plan_version: terms.version,
            payment_token: payment_token.to_owned(),
            create_time: Some(timestamp_of_ms(now)),
            ..Subscription::default()
        };
        let mut record = SubscriptionRecord::default();
        let mut extra = Vec::new();
        // Held from reading the invoice counter until the commit that moves it is done.
        let mut _counter_turn = None;
        if terms.trial_days > 0 && !skip_trial {
            let trial_end = now + i64::from(terms.trial_days) * MILLIS_PER_DAY;
            sub.status = SubscriptionStatus::Trialing as i32;
            sub.current_period_start = Some(timestamp_of_ms(now));
            sub.current_period_end = Some(timestamp_of_ms(trial_end));
            sub.trial_end = Some(timestamp_of_ms(trial_end));
            record.anchor_ms = trial_end;
        } else {
            let period = period_containing(now, now, terms.interval(), terms.interval_count)?;
            sub.status = SubscriptionStatus::Incomplete as i32;
            sub.current_period_start = Some(timestamp_of_ms(period.start_ms));
            sub.current_period_end = Some(timestamp_of_ms(period.end_ms));
            _counter_turn = Some(self.counter_turn(tenant).await);
            let (invoice, commits) = self
                .invoice_commits(
                    tenant,
                    &sub,
                    NewInvoice {
                        period,
                        lines: vec![plan_line(
                            &sub,
                            period,
                            price.amount_minor,
                            &price.currency_code,
                        )],
                        currency: price.currency_code.clone(),
                        claims_period: true,
                    },
                    now,
                )
                .await?;
            sub.latest_invoice_id = invoice.invoice_id.clone();
            record.anchor_ms = now;
            record.collect_at_ms = Some(now);
            record.collecting_invoice_id = invoice.invoice_id;
            extra = commits;
        }
        record.subscription = Some(sub.clone());
        let created = [event(&SubscriptionCreated {
            subscription: Some(Subscription { version: 1, ..sub }),
        })];
        let (record, mut commits) = self
            .subscription_commits(tenant, None, record, now, &created)
            .await?;
        commits.extend(extra);
        let claim = CreateClaim {
            resource_id: subscription_id.clone(),
            detail: record.collecting_invoice_id.clone(),
        };
        let mut claimed = Commit::record(claim_key.clone(), 0, &claim);
        if record.collect_at_ms.is_none() {
            // A trial: nothing to charge, this commit completes the call.
            claimed.idempotency = recorded.record(record.sub(), None);
        }
        commits.push(claimed);
        self.store.commit_all(commits).await?;
        if record.collect_at_ms.is_none() {
            return Ok(Creation::Trial(Box::new(Created {
                subscription: record.sub().clone(),
                first_invoice: None,
            })));
        }
        Ok(Creation::Claimed(claim))
    }

    /// The created subscription of `claim`, its first invoice charged (the attempt in flight
    /// repeated with the same PSP keys if a crash interrupted it), `recorded` in the commit of
    /// the charge's outcome.
    async fn finish_creation(
        &self,
        tenant: &str,
        claim: &CreateClaim,
        recorded: Recorded<'_>,
    ) -> Result<Created, SubscriptionsError> {
        let subscription_id = &claim.resource_id;
        let state = self.load_sub(tenant, subscription_id).await?;
        if state.record.collect_at_ms.is_some()
            && state.record.collecting_invoice_id == claim.detail
        {
            let now = self.now_ms(tenant).await?;
            let mut report = BillingReport::default();
            match self
                .attempt_recording(
                    tenant,
                    subscription_id,
                    &claim.detail,
                    now,
                    Attempt::Scheduled,
                    &mut report,
                    recorded,
                )
                .await
            {
                // Exactly what the outcome's commit recorded.
                Ok((_, Some((subscription, invoice)))) => {
                    return Ok(Created {
                        subscription,
                        first_invoice: Some(invoice),
                    });
                }
                Ok(_) | Err(SubscriptionsError::PaymentOutcomeUnknown(_)) => {}
                Err(error) => return Err(error),
            }
        }
        let first_invoice = if claim.detail.is_empty() {
            None
        } else {
            Some(self.invoice(tenant, &claim.detail).await?)
        };
        Ok(Created {
            subscription: self.subscription(tenant, subscription_id).await?,
            first_invoice,
        })
    }

    /// A subscription by id.
    pub async fn subscription(
        &self,
        tenant: &str,
        subscription_id: &str,
    ) -> Result<Subscription, SubscriptionsError> {
        Ok(self
            .load_sub(tenant, subscription_id)
            .await?
            .record
            .sub()
            .clone())
    }

    /// A customer's subscriptions (every subscription when `customer_id` is empty), newest
    /// first (the ids sort so), a page at a time, optionally only those in `statuses`.
    pub async fn list_subscriptions(
        &self,
        tenant: &str,
        customer_id: &str,
        statuses: &[SubscriptionStatus],
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<Subscription>, String), SubscriptionsError> {
        let size = self::page_size(page_size)?;
        let scope = format!("subscriptions:{customer_id}:{statuses:?}");
        let after = platform::page_token::decode(&scope, page_token)?;
        let index = if customer_id.is_empty() {
            records::all()
        } else {
            records::customer(customer_id)
        };
        let mut pages = Pages::new(
            self.store.as_ref(),
            tenant,
            records::SUBSCRIPTION,
            index,
            256,
        )
        .after(after);
        let mut found = Vec::new();
        let mut last_seen = None;
        'pages: while let Some(page) = pages.next().await? {
            for (id, stored) in page {
                let record = SubscriptionRecord::load(&stored)?;
                if found.len() == size {
                    break 'pages;
                }
                last_seen = Some(id);
                if statuses.is_empty() || statuses.contains(&record.sub().status()) {
                    found.push(record.sub().clone());
                }
            }
            last_seen = None;
        }
        let next = match (found.len() == size, last_seen) {
            (true, Some(id)) => platform::page_token::encode(&scope, &id),
            _ => String::new(),
        };
        Ok((found, next))
    }

    /// Cancels now, or at the end of the current period (`at_period_end`; ACTIVE or TRIALING
    /// only). Canceling a canceled subscription changes nothing.
    pub async fn cancel_subscription(
        &self,
        tenant: &str,
        subscription_id: &str,
        at_period_end: bool,
        reason: &str,
    ) -> Result<Subscription, SubscriptionsError> {
        let now = self.now_ms(tenant).await?;
        let state = self.load_sub(tenant, subscription_id).await?;
        let status = state.record.sub().status();
        if status == SubscriptionStatus::Canceled {
            return Ok(state.record.sub().clone());
        }
        next(status, SubscriptionAction::Cancel)?;
        if !at_period_end {
            let mut report = BillingReport::default();
            let reason = if reason.is_empty() {
                "canceled"
            } else {
                reason
            };
            self.cancel_at(tenant, subscription_id, now, reason, &mut report)
                .await?;
            return self.subscription(tenant, subscription_id).await;
        }
        retry_on_conflict(Retry::CONTENDED, || async move {
            let state = self.load_sub(tenant, subscription_id).await?;
            let status = state.record.sub().status();
            if !matches!(
                status,
                SubscriptionStatus::Active | SubscriptionStatus::Trialing
            ) {
                return Err(SubscriptionsError::invalid(
                    "at_period_end",
                    format!(
                        "a {} subscription has no period to finish; cancel it now",
                        status.as_str_name()
                    ),
                ));
            }
            let mut record = state.record.clone();
            record.sub_mut().cancel_at_period_end = true;
            let (record, commits) = self
                .subscription_commits(tenant, Some(&state), record, now, &[])
                .await?;
            self.store.commit_all(commits).await?;
            Ok(record.sub().clone())
        })
        .await
    }

    /// Pauses collection (ACTIVE only): no invoices while paused. With `resume_time_ms`, the
    /// billing run resumes it then. Pausing a paused subscription changes nothing.
    pub async fn pause_subscription(
        &self,
        tenant: &str,
        subscription_id: &str,
        resume_time_ms: Option<i64>,
    ) -> Result<Subscription, SubscriptionsError> {
        let now = self.now_ms(tenant).await?;
        if resume_time_ms.is_some_and(|at| at <= now) {
            return Err(SubscriptionsError::invalid(
                "resume_time",
                "must be in the future",
            ));
        }
        retry_on_conflict(Retry::CONTENDED, || async move {
            let state = self.load_sub(tenant, subscription_id).await?;
            let status = state.record.sub().status();
            if status == SubscriptionStatus::Paused {
                return Ok(state.record.sub().clone());
            }
            let paused = next(status, SubscriptionAction::Pause)?;
            if state.record.collect_at_ms.is_some() {
                return Err(SubscriptionsError::invalid(
                    "subscription_id",
                    "a payment is in progress; try again shortly",
                ));
            }
            let mut record = state.record.clone();
            let sub = record.sub_mut();
            sub.status = paused as i32;
            sub.pause_time = Some(timestamp_of_ms(now));
            sub.resume_time = resume_time_ms.map(timestamp_of_ms);
            let events = [event(&SubscriptionPaused {
                subscription_id: subscription_id.to_owned(),
                resume_time: sub.resume_time,
            })];
            let (record, commits) = self
                .subscription_commits(tenant, Some(&state), record, now, &events)
                .await?;
            self.store.commit_all(commits).await?;
            Ok(record.sub().clone())
        })
        .await
    }

    /// Resumes a paused subscription now, or schedules it for `resume_time_ms`. Within the
    /// period already paid for it runs to that period's end; after it, a new period (and its
    /// invoice) starts on resumption. Resuming anything but a PAUSED subscription is refused.
    pub async fn resume_subscription(
        &self,
        tenant: &str,
        subscription_id: &str,
        resume_time_ms: Option<i64>,
    ) -> Result<Subscription, SubscriptionsError> {
        let now = self.now_ms(tenant).await?;
        let state = self.load_sub(tenant, subscription_id).await?;
        next(state.record.sub().status(), SubscriptionAction::Resume)?;
        match resume_time_ms {
            Some(at) if at > now => {
                retry_on_conflict(Retry::CONTENDED, || async move {
                    let state = self.load_sub(tenant, subscription_id).await?;
                    next(state.record.sub().status(), SubscriptionAction::Resume)?;
                    let mut record = state.record.clone();
                    record.sub_mut().resume_time = Some(timestamp_of_ms(at));
                    let (record, commits) = self
                        .subscription_commits(tenant, Some(&state), record, now, &[])
                        .await?;
                    self.store.commit_all(commits).await?;
                    Ok(record.sub().clone())
                })
                .await
            }
            _ => {
                let mut report = BillingReport::default();
                match self
                    .resume_at(tenant, subscription_id, now, &mut report)
                    .await
                {
                    Ok(_) | Err(SubscriptionsError::PaymentOutcomeUnknown(_)) => {}
                    Err(error) => return Err(error),
                }
                self.subscription(tenant, subscription_id).await
            }
        }
    }

    /// Replaces the payment token (refused like creation's: card numbers are
    /// [`SubscriptionsError::CardDataRejected`]). A PAST_DUE subscription's open invoice is
    /// retried with the new token at once (an attempt on request: a decline leaves the dunning
    /// schedule as it was). Setting the token it already has changes nothing (and retries
    /// nothing).
    pub async fn update_payment_method(
        &self,
        tenant: &str,
        subscription_id: &str,
        payment_token: &str,
    ) -> Result<Subscription, SubscriptionsError> {
        check_token(payment_token)?;
        let now = self.now_ms(tenant).await?;
        let retry = retry_on_conflict(Retry::CONTENDED, || async move {
            let state = self.load_sub(tenant, subscription_id).await?;
            let status = state.record.sub().status();
            if crate::transitions::is_final(status) {
                return Err(refuse(status, SubscriptionAction::ChangePlan));
            }
            if state.record.sub().payment_token == payment_token {
                return Ok(None);
            }
            let mut record = state.record.clone();
            record.sub_mut().payment_token = payment_token.to_owned();
            let (record, commits) = self
                .subscription_commits(tenant, Some(&state), record, now, &[])
                .await?;
            self.store.commit_all(commits).await?;
            let past_due = record.sub().status() == SubscriptionStatus::PastDue
                && record.collect_at_ms.is_some();
            Ok(past_due.then(|| record.collecting_invoice_id.clone()))
        })
        .await?;
        if let Some(invoice_id) = retry {
            let mut report = BillingReport::default();
            match self
                .attempt(
                    tenant,
                    subscription_id,
                    &invoice_id,
                    now,
                    Attempt::Requested,
                    &mut report,
                )
                .await
            {
                // The token is replaced either way; the attempt's outcome shows on the invoice
                // (or, unknown, is settled by the next run with the same keys).
                Ok(_) | Err(SubscriptionsError::PaymentOutcomeUnknown(_)) => {}
                Err(error) => return Err(error),
            }
        }
        self.subscription(tenant, subscription_id).await
    }

    /// Moves the subscription to its plan's current version from its next period on (the
    /// current period was billed at its version's price and stays so); returns the subscription
    /// and the version in force from the next period. The switch happens when the billing run
    /// starts that period (a renewal, the end of a trial, a resumption after the paid period).
    /// Already on the current version: changes nothing. Final subscriptions are refused
    /// (`SUBSCRIPTION_TRANSITION_INVALID`).
    pub async fn migrate_subscription(
        &self,
        tenant: &str,
        subscription_id: &str,
    ) -> Result<(Subscription, i32), SubscriptionsError> {
        let now = self.now_ms(tenant).await?;
        retry_on_conflict(Retry::CONTENDED, || async move {
            let state = self.load_sub(tenant, subscription_id).await?;
            let sub = state.record.sub();
            let status = sub.status();
            if crate::transitions::is_final(status) {
                return Err(refuse(status, SubscriptionAction::ChangePlan));
            }
            let (_, plan) = self.load_plan(tenant, &sub.plan_id).await?;
            let current = current_version(&plan)?.version;
            let pending = (current != sub.plan_version).then_some(current);
            if state.record.next_plan_version == pending {
                return Ok((sub.clone(), current));
            }
            let mut record = state.record.clone();
            record.next_plan_version = pending;
            let (record, commits) = self
                .subscription_commits(tenant, Some(&state), record, now, &[])
                .await?;
            self.store.commit_all(commits).await?;
            Ok((record.sub().clone(), current))
        })
        .await
    }

    /// What changing to `new_plan_id`'s current version now would credit and charge — exactly
    /// the amounts and lines [`change_plan`](Self::change_plan) invoices at the same clock time.
    pub async fn preview_plan_change(
        &self,
        tenant: &str,
        subscription_id: &str,
        new_plan_id: &str,
    ) -> Result<ProrationPreview, SubscriptionsError> {
        let now = self.now_ms(tenant).await?;
        let state = self.load_sub(tenant, subscription_id).await?;
        let (_, new_plan) = self.load_plan(tenant, new_plan_id).await?;
        Ok(self
            .compute_change(tenant, &state, &new_plan, now)
            .await?
            .preview)
    }

    /// Moves the subscription to `new_plan_id`'s current version now, with proration: the
    /// unused time on the old price is credited and the rest of the period on the new price is
    /// charged, on an invoice collected at once (a negative net is kept as credit for the next
    /// invoices). With `expected_net_minor` (a preview's `net`), a different amount now fails
    /// with [`SubscriptionsError::ProrationStale`] and changes nothing.
    ///
    /// `id_key` (the request's idempotency id) makes it idempotent: changing again with the
    /// same key returns the first change's outcome (its invoice collected, if a crash
    /// interrupted that) instead of changing and invoicing again.
    pub async fn change_plan(
        &self,
        tenant: &str,
        id_key: &str,
        subscription_id: &str,
        new_plan_id: &str,
        expected_net_minor: Option<i64>,
    ) -> Result<PlanChange, SubscriptionsError> {
        self.change_plan_recording(
            tenant,
            id_key,
            subscription_id,
            new_plan_id,
            expected_net_minor,
            None,
        )
        .await
    }

    /// [`Subscriptions::change_plan`], with the `ChangePlanResponse` carrying the returned
    /// subscription and invoice recorded under `idempotency` in the commit that completes the
    /// call: the proration invoice's payment outcome, or the change itself when nothing is
    /// invoiced (a trial). A call whose charge has an unknown outcome, or that fails, records
    /// nothing here: the idempotency layer records its answer.
    pub async fn change_plan_recording(
        &self,
        tenant: &str,
        id_key: &str,
        subscription_id: &str,
        new_plan_id: &str,
        expected_net_minor: Option<i64>,
        idempotency: Option<&IdempotencyContext>,
    ) -> Result<PlanChange, SubscriptionsError> {
        let recorded = idempotency.map_or(Recorded::Nothing, Recorded::ChangePlan);
        let now = self.now_ms(tenant).await?;
        let claim_key = records::key(
            tenant,
            records::CREATE_CLAIM,
            &records::create_claim_id("change_plan", id_key),
        );
        let claim_key = &claim_key;
        let (invoice_id, changed) = retry_on_conflict(Retry::CONTENDED, || async move {
            if let Some(claim) = self.load_claim(claim_key).await? {
                // A retry of a change already made: its invoice, not a second change.
                return Ok(((!claim.detail.is_empty()).then_some(claim.detail), None));
            }
            let state = self.load_sub(tenant, subscription_id).await?;
            let (_, new_plan) = self.load_plan(tenant, new_plan_id).await?;
            let computed = self.compute_change(tenant, &state, &new_plan, now).await?;
            let net = computed.preview.net.as_ref().map_or(0, |m| m.amount_minor);
            if let Some(expected) = expected_net_minor
                && expected != net
            {
                return Err(SubscriptionsError::ProrationStale {
                    expected,
                    actual: net,
                });
            }
            let mut record = state.record.clone();
            let previous_plan_id = record.sub().plan_id.clone();
            {
                let sub = record.sub_mut();
                sub.plan_id = new_plan_id.to_owned();
                sub.plan_version = computed.new_version;
            }
            // Already on the new plan's current version: a pending migration is moot.
            record.next_plan_version = None;
            let events = [event(&SubscriptionPlanChanged {
                subscription_id: subscription_id.to_owned(),
                previous_plan_id,
                plan_id: new_plan_id.to_owned(),
                net: computed.preview.net.clone(),
            })];
            let mut extra = Vec::new();
            let mut invoice_id = None;
            if !computed.preview.lines.is_empty() {
                let currency = computed
                    .preview
                    .net
                    .as_ref()
                    .map(|m| m.currency_code.clone())
                    .unwrap_or_default();
                let sub = record.sub().clone();
                let (invoice, commits) = self
                    .invoice_commits(
                        tenant,
                        &sub,
                        NewInvoice {
                            period: Period {
                                start_ms: now,
                                end_ms: ms_or_epoch(&sub.current_period_end),
                            },
                            lines: computed.preview.lines.clone(),
                            currency,
                            claims_period: false,
                        },
                        now,
                    )
                    .await?;
                if net < 0 {
                    record.credit_minor = crate::limits::add("credit", record.credit_minor, -net)?;
                }
                record.collect_at_ms = Some(now);
                record.collecting_invoice_id = invoice.invoice_id.clone();
                record.sub_mut().latest_invoice_id = invoice.invoice_id.clone();
                invoice_id = Some(invoice.invoice_id);
                extra = commits;
            }
            let (record, mut commits) = self
                .subscription_commits(tenant, Some(&state), record, now, &events)
                .await?;
            commits.extend(extra);
            let claim = CreateClaim {
                resource_id: subscription_id.to_owned(),
                detail: invoice_id.clone().unwrap_or_default(),
            };
            let mut claimed = Commit::record(claim_key.clone(), 0, &claim);
            // Nothing invoiced (a trial): this commit completes the call.
            let completed = invoice_id.is_none().then(|| record.sub().clone());
            if let Some(subscription) = &completed {
                claimed.idempotency = recorded.record(subscription, None);
            }
            commits.push(claimed);
            self.store.commit_all(commits).await?;
            Ok((invoice_id, completed))
        })
        .await?;
        let Some(invoice_id) = invoice_id else {
            let subscription = match changed {
                Some(subscription) => subscription,
                None => self.subscription(tenant, subscription_id).await?,
            };
            return Ok(PlanChange {
                subscription,
                invoice: None,
            });
        };
        let mut report = BillingReport::default();
        match self
            .attempt_recording(
                tenant,
                subscription_id,
                &invoice_id,
                now,
                Attempt::Scheduled,
                &mut report,
                recorded,
            )
            .await
        {
            // Exactly what the outcome's commit recorded.
            Ok((_, Some((subscription, invoice)))) => {
                return Ok(PlanChange {
                    subscription,
                    invoice: Some(invoice),
                });
            }
            Ok(_) | Err(SubscriptionsError::PaymentOutcomeUnknown(_)) => {}
            Err(error) => return Err(error),
        }
        let invoice = self.invoice(tenant, &invoice_id).await?;
        Ok(PlanChange {
            subscription: self.subscription(tenant, subscription_id).await?,
            invoice: Some(invoice),
        })
    }

    /// The plan change from `state` to `new_plan`'s current version at `now`.
    async fn compute_change(
        &self,
        tenant: &str,
        state: &SubState,
        new_plan: &Plan,
        now: i64,
    ) -> Result<Computed, SubscriptionsError> {
        let sub = state.record.sub();
        let status = sub.status();
        if !can_change_plan(status) {
            return Err(refuse(status, SubscriptionAction::ChangePlan));
        }
        if state.record.collect_at_ms.is_some() {
            return Err(SubscriptionsError::invalid(
                "subscription_id",
                "a payment is in progress; try again shortly",
            ));
        }
        if new_plan.status() == PlanStatus::Archived {
            return Err(SubscriptionsError::PlanArchived(new_plan.plan_id.clone()));
        }
        let (_, old_plan) = self.load_plan(tenant, &sub.plan_id).await?;
        let old_terms = version_of(&old_plan, sub.plan_version)?;
        let new_terms = current_version(new_plan)?;
        let old_price = old_terms.price.clone().unwrap_or_default();
        let new_price = new_terms.price.clone().unwrap_or_default();
        if old_price.currency_code != new_price.currency_code {
            return Err(SubscriptionsError::CurrencyMismatch(
                old_price.currency_code,
                new_price.currency_code,
            ));
        }
        let currency = new_price.currency_code.clone();
        let zero = || units::money(&currency, 0);
        if status == SubscriptionStatus::Trialing {
            // Nothing was paid for the trial: the trial converts to the new plan.
            return Ok(Computed {
                preview: ProrationPreview {
                    effective_time: Some(timestamp_of_ms(now)),
                    credit: zero(),
                    charge: zero(),
                    net: zero(),
                    lines: Vec::new(),
                },
                new_version: new_terms.version,
            });
        }
        let period = Period {
            start_ms: ms_or_epoch(&sub.current_period_start),
            end_ms: ms_or_epoch(&sub.current_period_end),
        };
        let proration = prorate(old_price.amount_minor, new_price.amount_minor, period, now)?;
        let line = |kind: InvoiceLineKind, description: String, amount, plan_id: &str, version| {
            InvoiceLine {
                kind: kind as i32,
                description,
                amount: units::money(&currency, amount),
                period_start: Some(timestamp_of_ms(now)),
                period_end: Some(timestamp_of_ms(period.end_ms)),
                plan_id: plan_id.to_owned(),
                plan_version: version,
                ..InvoiceLine::default()
            }
        };
        let lines = vec![
            line(
                InvoiceLineKind::ProrationCredit,
                format!("Unused time on plan {} v{}", sub.plan_id, sub.plan_version),
                proration.credit_minor,
                &sub.plan_id,
                sub.plan_version,
            ),
            line(
                InvoiceLineKind::ProrationCharge,
                format!(
                    "Remaining time on plan {} v{}",
                    new_plan.plan_id, new_terms.version
                ),
                proration.charge_minor,
                &new_plan.plan_id,
                new_terms.version,
            ),
        ];
        Ok(Computed {
            preview: ProrationPreview {
                effective_time: Some(timestamp_of_ms(now)),
                credit: units::money(&currency, proration.credit_minor),
                charge: units::money(&currency, proration.charge_minor),
                net: units::money(&currency, proration.net_minor),
                lines,
            },
            new_version: new_terms.version,
        })
    }
}
