//! The subscriptions engine: the store, the money ledger, the tenant clock and the PSP, and the
//! one way a subscription changes — [`Subscriptions::subscription_commits`], which writes the
//! subscription record, moves its due marker and attaches its outbox events, for one atomic
//! `commit_all` with whatever else changes with it (invoices, the invoice counter, the ledger
//! entry). Every operation reads, decides with the pure rules, and commits; a concurrent writer
//! makes the commit fail and the operation start over (`retrying!`).

use platform::units::ms_or_epoch;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use commerce_api::commerce::subscriptions::v1::{
    ChangePlanResponse, CreateSubscriptionResponse, Invoice, Subscription, SubscriptionStatus,
};
use ledger::Ledger;
use payments::PaymentProvider;
use platform::clock::Clocks;
use platform::interceptors::IdempotencyContext;
use platform::outbound::{Outbound, OutboundPolicy};
use prost_reflect::{DynamicMessage, ReflectMessage};
use store::{Commit, IdempotencyRecord, Store};

use crate::dunning::RetryPolicy;
use crate::error::SubscriptionsError;
use crate::records::{self, DueMarker, SubscriptionRecord};
use crate::transitions::{INCOMPLETE_PAYMENT_WINDOW_MS, is_final};

/// The subscriptions engine. Cheap to share (`Arc`).
pub struct Subscriptions {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) ledger: Ledger,
    pub(crate) clocks: Clocks,
    pub(crate) psp: Arc<dyn PaymentProvider>,
    pub(crate) outbound: Outbound,
    pub(crate) policy: RetryPolicy,
    /// Tenant/currency pairs whose money accounts are known to be open, and `tenant:<id>` for
    /// tenants listed for the background billing run.
    pub(crate) known_accounts: Mutex<HashSet<String>>,
    /// Per tenant, the turn for its invoice counter that creations charging at once take in
    /// this process (see [`Subscriptions::counter_turn`]).
    pub(crate) counter_turns: Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A subscription as read, with the version its next commit must match.
#[derive(Debug, Clone)]
pub(crate) struct SubState {
    pub version: u64,
    pub record: SubscriptionRecord,
}

/// The response the commit that completes a call records under the call's idempotency key
/// ([`IdempotencyContext::record`]): the idempotency layer replays it byte for byte, so a crash
/// between that commit and the reply cannot make a retry run the call again. The call answers
/// with exactly the subscription and invoice that commit wrote.
#[derive(Clone, Copy, Default)]
pub(crate) enum Recorded<'a> {
    /// Nothing (no key, or the billing run).
    #[default]
    Nothing,
    /// `CreateSubscriptionResponse` with the subscription and its first invoice.
    CreateSubscription(&'a IdempotencyContext),
    /// `ChangePlanResponse` with the subscription and its proration invoice.
    ChangePlan(&'a IdempotencyContext),
}

impl Recorded<'_> {
    /// The record of the response showing `subscription` and `invoice`, if any.
    pub(crate) fn record(
        self,
        subscription: &Subscription,
        invoice: Option<&Invoice>,
    ) -> Option<IdempotencyRecord> {
        match self {
            Recorded::Nothing => None,
            Recorded::CreateSubscription(context) => {
                Some(context.record(&CreateSubscriptionResponse {
                    subscription: Some(subscription.clone()),
                    first_invoice: invoice.cloned(),
                }))
            }
            Recorded::ChangePlan(context) => Some(context.record(&ChangePlanResponse {
                subscription: Some(subscription.clone()),
                invoice: invoice.cloned(),
            })),
        }
    }
}

/// Adds `events` to `commit`, which takes its aggregate to `version`, as of `at_ms`.
pub(crate) fn with_events(
    mut commit: Commit,
    version: u64,
    at_ms: i64,
    events: &[DynamicMessage],
) -> Commit {
    let source = events::EventSource {
        aggregate: commit.key.clone(),
        version,
        occurred_at: std::time::UNIX_EPOCH + Duration::from_millis(at_ms.max(0) as u64),
        traceparent: None,
        tracestate: None,
    };
    commit.events = events
        .iter()
        .map(|event| events::envelope::outbox_event(&source, event))
        .collect();
    commit
}

/// An event as the outbox takes it.
pub(crate) fn event(message: &impl ReflectMessage) -> DynamicMessage {
    message.transcode_to_dynamic()
}

/// When the subscription's next action is due, by its state: the invoice being collected, the
/// first payment window, the trial's end, the period's end (renewal or cancellation) or the
/// scheduled resumption. `None` for final statuses and indefinite pauses.
pub(crate) fn next_due(record: &SubscriptionRecord) -> Option<i64> {
    let sub = record.sub();
    let status = sub.status();
    if is_final(status) {
        return None;
    }
    if let Some(at) = record.collect_at_ms {
        return Some(at);
    }
    match status {
        SubscriptionStatus::Incomplete => {
            Some(ms_or_epoch(&sub.create_time).saturating_add(INCOMPLETE_PAYMENT_WINDOW_MS))
        }
        SubscriptionStatus::Trialing | SubscriptionStatus::Active => {
            Some(ms_or_epoch(&sub.current_period_end))
        }
        SubscriptionStatus::Paused => sub
            .resume_time
            .as_ref()
            .map(|_| ms_or_epoch(&sub.resume_time)),
        _ => None,
    }
}

impl Subscriptions {
    /// The engine over `store` (records and money ledger), `clocks` (the tenant clock every
    /// decision reads) and `psp` (the payment provider invoices are charged through), with the
    /// default dunning policy and PSP call policy (5 s per attempt, 3 attempts, breaker).
    pub fn new(store: Arc<dyn Store>, clocks: Clocks, psp: Arc<dyn PaymentProvider>) -> Self {
        let mut policy = OutboundPolicy::new("psp");
        policy.timeout = Duration::from_secs(5);
        Subscriptions {
            ledger: Ledger::new(store.clone()),
            store,
            clocks,
            psp,
            outbound: Outbound::new(policy),
            policy: RetryPolicy::default(),
            known_accounts: Mutex::default(),
            counter_turns: Mutex::default(),
        }
    }

    /// Waits for the tenant's turn at its invoice counter. Every creation that charges at once
    /// takes the counter's next number, so creations of one tenant racing for it would mostly
    /// lose (a dozen lost races each at 16 at once, sometimes all of their attempts) and redo
    /// their reads; in one process they queue here instead. Replicas, and the billing run
    /// (which numbers a whole wave in one commit), still race for it and retry.
    pub(crate) async fn counter_turn(&self, tenant: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let turn = self
            .counter_turns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(tenant.to_owned())
            .or_default()
            .clone();
        turn.lock_owned().await
    }

    /// Uses `policy` for dunning instead of the default (1, 3, 5, 5 days, then cancel).
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Calls the PSP with `policy` instead of the default.
    pub fn with_psp_policy(mut self, policy: OutboundPolicy) -> Self {
        self.outbound = Outbound::new(policy);
        self
    }

    /// The money ledger (for operators and tests).
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The tenant's clock now, in unix ms.
    pub async fn now_ms(&self, tenant: &str) -> Result<i64, SubscriptionsError> {
        Ok(self.clocks.now(tenant).await?.now_ms)
    }

    /// A subscription by id.
    pub(crate) async fn load_sub(
        &self,
        tenant: &str,
        subscription_id: &str,
    ) -> Result<SubState, SubscriptionsError> {
        let stored = self
            .store
            .load(&records::key(
                tenant,
                records::SUBSCRIPTION,
                subscription_id,
            ))
            .await?
            .ok_or_else(|| SubscriptionsError::not_found("subscription", subscription_id))?;
        Ok(SubState {
            version: stored.version,
            record: SubscriptionRecord::load(&stored)?,
        })
    }

    /// The commits that take the subscription from `state` to `record` at `at_ms` with
    /// `events`: the record (its version and next due time set), and the due markers moved when
    /// the due time changed (the old one retired, the new one live).
    pub(crate) async fn subscription_commits(
        &self,
        tenant: &str,
        state: Option<&SubState>,
        mut record: SubscriptionRecord,
        at_ms: i64,
        events: &[DynamicMessage],
    ) -> Result<(SubscriptionRecord, Vec<Commit>), SubscriptionsError> {
        let expected = state.map_or(0, |state| state.version);
        let version = expected + 1;
        let before_due = state.and_then(|state| state.record.due_ms);
        let due = next_due(&record);
        record.due_ms = due;
        record.sub_mut().version = version as i64;
        let sub = record.sub().clone();
        let mut commits = vec![with_events(
            Commit::record(
                records::key(tenant, records::SUBSCRIPTION, &sub.subscription_id),
                expected,
                &record,
            )
            .indexed(vec![records::all(), records::customer(&sub.customer_id)]),
            version,
            at_ms,
            events,
        )];
        if before_due != due {
            let marker = DueMarker {
                subscription_id: sub.subscription_id.clone(),
            };
            if let Some(before) = before_due {
                let key = records::key(
                    tenant,
                    records::DUE,
                    &records::due_marker_id(before, &sub.subscription_id),
                );
                if let Some(stored) = self.store.load(&key).await? {
                    commits.push(Commit::record(key, stored.version, &marker));
                }
            }
            if let Some(due) = due {
                let key = records::key(
                    tenant,
                    records::DUE,
                    &records::due_marker_id(due, &sub.subscription_id),
                );
                let version = self.store.load(&key).await?.map_or(0, |s| s.version);
                commits.push(
                    Commit::record(key, version, &marker).indexed(vec![records::pending_due()]),
                );
            }
        }
        Ok((record, commits))
    }

    /// Opens the tenant's money accounts in `currency` (once per process).
    pub(crate) async fn open_money_accounts(
        &self,
        tenant: &str,
        currency: &str,
    ) -> Result<(), SubscriptionsError> {
        let known = format!("{tenant}/{currency}");
        if self
            .known_accounts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(&known)
        {
            return Ok(());
        }
        for what in ["revenue", "psp"] {
            self.ledger
                .open_account(
                    tenant,
                    &records::money_account(what, currency),
                    currency,
                    None,
                )
                .await?;
        }
        self.known_accounts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(known);
        Ok(())
    }
}
