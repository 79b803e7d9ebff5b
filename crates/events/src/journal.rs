//! The delivery journal and its repair sweep: proof that money-like events had their effect.
//!
//! A bus can lose what it acknowledged — a Redis without persistence that restarts forgets its
//! streams — and a consumer can give up on an event. For the events whose effect is money-like
//! (a paid order must earn its points, a refund must reverse them), losing one silently is not
//! acceptable. So the relay journals each such event (a store record per event, under its tenant)
//! before it leaves the outbox, and the sweep later checks, for every consumer group that must
//! handle the event's type, that the group's processed-event record exists — the consumer runner
//! commits that record atomically with the handler's effect, so its presence proves the effect.
//! An entry every group has processed is confirmed (and leaves the sweep's index); one still
//! missing after [`Journal::sweep`]'s grace period is published again under the same event id (the
//! consumers deduplicate by it) and reported.
//!
//! The journal reads the consumers' processed-event records from the store it writes to: the
//! producing and the consuming service must share the store (one database), as every shape of
//! this platform deploys them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use store::{AggregateKey, Commit, IndexEntry, Pages, Store, StoreError};

use crate::bus::{Bus, BusError, BusMessage};
use crate::consumer::processed_method;

/// The kind of a journal entry (one per event, under the event's tenant).
const ENTRY: &str = "events_journal";
/// The system tenant under which tenants with journal entries are listed.
const SYSTEM_TENANT: &str = "_system";
/// The kind of that list.
const TENANT: &str = "events_journal_tenant";
/// How often the sweep publishes one event again before leaving it to an operator: enough to
/// outlast a bus that keeps losing what it holds (a Redis without persistence restarting again
/// and again) — with the waits below, about 2.5 hours at the default one-minute grace.
const MAX_REPUBLISHED: u32 = 20;
/// Each copy waits twice as long as the one before, up to this many times the grace, so a
/// flapping bus is not handed copy after copy it loses at once, nor a slow consumer flooded.
const MAX_GRACE_FACTOR: u32 = 8;

fn unconfirmed() -> IndexEntry {
    IndexEntry {
        name: "unconfirmed".into(),
        value: "1".into(),
    }
}

fn all() -> IndexEntry {
    IndexEntry {
        name: "all".into(),
        value: "1".into(),
    }
}

/// A journal entry as stored.
#[derive(Clone, PartialEq, prost::Message)]
struct EntryRecord {
    #[prost(string, tag = "1")]
    stream: String,
    #[prost(string, tag = "2")]
    event_id: String,
    #[prost(string, tag = "3")]
    event_type: String,
    /// The encoded envelope, to publish again; cleared once confirmed.
    #[prost(bytes = "bytes", tag = "4")]
    envelope: Bytes,
    /// When it was first published (wall clock, unix ms).
    #[prost(int64, tag = "5")]
    published_ms: i64,
    /// Every group that must handle it has.
    #[prost(bool, tag = "6")]
    confirmed: bool,
    /// How often the sweep published it again.
    #[prost(uint32, tag = "7")]
    republished: u32,
}

/// An event whose effect is not proven: a consumer group that must handle it has no
/// processed-event record for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingEffect {
    /// The event.
    pub event_id: String,
    /// Its fully-qualified type.
    pub event_type: String,
    /// Its tenant.
    pub tenant: String,
    /// The group that has not handled it.
    pub group: String,
    /// The event's payload, for a reader to name what is missing (e.g. the order).
    pub envelope: Bytes,
    /// When it was first published, unix ms.
    pub published_ms: i64,
}

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Unconfirmed entries looked at.
    pub checked: usize,
    /// Entries every group had processed, now confirmed.
    pub confirmed: usize,
    /// Entries older than the grace period still missing an effect, published again.
    pub republished: usize,
}

/// Why a sweep stopped; what it did so far stays done.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// The journal: which event types need proof, and from which consumer groups.
#[derive(Clone)]
pub struct Journal {
    store: Arc<dyn Store>,
    /// Event type → the groups that must handle it.
    groups_by_type: Arc<HashMap<String, Vec<String>>>,
    /// Tenants known to be listed.
    listed: Arc<Mutex<HashSet<String>>>,
}

impl Journal {
    /// A journal in `store` that wants nothing yet (see [`Journal::expect`]).
    pub fn new(store: Arc<dyn Store>) -> Self {
        Journal {
            store,
            groups_by_type: Arc::default(),
            listed: Arc::default(),
        }
    }

    /// Consumer group `group` must handle every event of `event_types`.
    pub fn expect(mut self, group: &str, event_types: &[&str]) -> Self {
        let mut groups = (*self.groups_by_type).clone();
        for event_type in event_types {
            let groups = groups.entry((*event_type).to_owned()).or_default();
            if !groups.iter().any(|known| known == group) {
                groups.push(group.to_owned());
            }
        }
        self.groups_by_type = Arc::new(groups);
        self
    }

    /// Whether events of `event_type` are journaled.
    pub fn wants(&self, event_type: &str) -> bool {
        self.groups_by_type.contains_key(event_type)
    }

    /// Journals `message`, published to `stream` (once: a repeat finds the entry and keeps it).
    pub async fn record(&self, stream: &str, message: &BusMessage) -> Result<(), StoreError> {
        self.list_tenant(&message.tenant).await?;
        let entry = EntryRecord {
            stream: stream.to_owned(),
            event_id: message.event_id.clone(),
            event_type: message.event_type.clone(),
            envelope: message.envelope.clone(),
            published_ms: platform::units::unix_now_ms(),
            confirmed: false,
            republished: 0,
        };
        let commit = Commit {
            key: AggregateKey::new(&message.tenant, ENTRY, &message.event_id),
            expected_version: 0,
            data: entry.encode_to_vec().into(),
            index: vec![unconfirmed()],
            events: Vec::new(),
            idempotency: None,
        };
        match self.store.commit(commit).await {
            Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    async fn list_tenant(&self, tenant: &str) -> Result<(), StoreError> {
        if self.known(tenant) {
            return Ok(());
        }
        let key = AggregateKey::new(SYSTEM_TENANT, TENANT, tenant);
        if self.store.load(&key).await?.is_none() {
            let commit = Commit {
                key,
                expected_version: 0,
                data: Bytes::new(),
                index: vec![all()],
                events: Vec::new(),
                idempotency: None,
            };
            match self.store.commit(commit).await {
                Ok(_) | Err(StoreError::Conflict { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        self.listed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(tenant.to_owned());
        Ok(())
    }

    fn known(&self, tenant: &str) -> bool {
        self.listed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(tenant)
    }

    /// The groups among those `event_type` needs that have no processed record of `event_id`.
    async fn unhandled_by(
        &self,
        tenant: &str,
        event_type: &str,
        event_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut missing = Vec::new();
        for group in self.groups_by_type.get(event_type).into_iter().flatten() {
            let processed = self
                .store
                .idempotency_record(tenant, &processed_method(group), event_id)
                .await?;
            if processed.is_none() {
                missing.push(group.clone());
            }
        }
        Ok(missing)
    }

    /// Journaled events of `tenant` published more than `older_than` ago that `group` has not
    /// handled: what a reconciliation reports as a missing effect. Read-only.
    pub async fn missing(
        &self,
        tenant: &str,
        group: &str,
        older_than: Duration,
    ) -> Result<Vec<MissingEffect>, StoreError> {
        let cutoff = platform::units::unix_now_ms().saturating_sub(older_than.as_millis() as i64);
        let mut found = Vec::new();
        let mut pages = Pages::new(self.store.as_ref(), tenant, ENTRY, unconfirmed(), 256);
        while let Some(page) = pages.next().await? {
            for (_, stored) in page {
                let Ok(entry) = EntryRecord::decode(stored.data) else {
                    continue;
                };
                if entry.published_ms > cutoff
                    || !self
                        .groups_by_type
                        .get(&entry.event_type)
                        .is_some_and(|groups| groups.iter().any(|g| g == group))
                {
                    continue;
                }
                let processed = self
                    .store
                    .idempotency_record(tenant, &processed_method(group), &entry.event_id)
                    .await?;
                if processed.is_none() {
                    found.push(MissingEffect {
                        event_id: entry.event_id,
                        event_type: entry.event_type,
                        tenant: tenant.to_owned(),
                        group: group.to_owned(),
                        envelope: entry.envelope,
                        published_ms: entry.published_ms,
                    });
                }
            }
        }
        Ok(found)
    }

    /// One repair sweep over every tenant: confirms entries every group has processed, and
    /// publishes again those published more than `grace` ago that a group has not (a lost
    /// message, or one a consumer dead-lettered), logging each.
    pub async fn sweep(&self, bus: &dyn Bus, grace: Duration) -> Result<SweepReport, SweepError> {
        let mut report = SweepReport::default();
        let mut tenants = Pages::new(self.store.as_ref(), SYSTEM_TENANT, TENANT, all(), 256);
        while let Some(page) = tenants.next().await? {
            for (tenant, _) in page {
                self.sweep_tenant(bus, &tenant, grace, &mut report).await?;
            }
        }
        Ok(report)
    }

    async fn sweep_tenant(
        &self,
        bus: &dyn Bus,
        tenant: &str,
        grace: Duration,
        report: &mut SweepReport,
    ) -> Result<(), SweepError> {
        // Read the whole list first: confirming an entry takes it out of the index being walked.
        let mut entries = Vec::new();
        let mut pages = Pages::new(self.store.as_ref(), tenant, ENTRY, unconfirmed(), 256);
        while let Some(page) = pages.next().await? {
            entries.extend(page);
        }
        for (event_id, stored) in entries {
            report.checked += 1;
            let Ok(mut entry) = EntryRecord::decode(stored.data) else {
                tracing::warn!(tenant, event_id, "unreadable event journal entry");
                continue;
            };
            let missing = self
                .unhandled_by(tenant, &entry.event_type, &entry.event_id)
                .await?;
            let key = AggregateKey::new(tenant, ENTRY, &event_id);
            if missing.is_empty() {
                entry.confirmed = true;
                entry.envelope = Bytes::new();
                let commit = Commit {
                    key,
                    expected_version: stored.version,
                    data: entry.encode_to_vec().into(),
                    index: Vec::new(),
                    events: Vec::new(),
                    idempotency: None,
                };
                match self.store.commit(commit).await {
                    Ok(_) => report.confirmed += 1,
                    Err(StoreError::Conflict { .. }) => {}
                    Err(error) => return Err(error.into()),
                }
                continue;
            }
            let factor = 1u32
                .checked_shl(entry.republished)
                .unwrap_or(u32::MAX)
                .min(MAX_GRACE_FACTOR);
            let wait = grace.saturating_mul(factor);
            if entry.published_ms
                > platform::units::unix_now_ms().saturating_sub(wait.as_millis() as i64)
            {
                continue; // consumers may simply not have got to it (or its last copy) yet
            }
            if entry.republished >= MAX_REPUBLISHED {
                continue; // reconciliation keeps reporting it; an operator decides
            }
            tracing::warn!(
                tenant,
                event_id = %entry.event_id,
                event_type = %entry.event_type,
                groups = %missing.join(","),
                "repair sweep: an event has no effect yet; publishing it again"
            );
            let message = BusMessage {
                event_id: entry.event_id.clone(),
                event_type: entry.event_type.clone(),
                tenant: tenant.to_owned(),
                envelope: entry.envelope.clone(),
            };
            bus.publish(&entry.stream, &message).await?;
            entry.republished += 1;
            if entry.republished == MAX_REPUBLISHED {
                tracing::error!(
                    tenant,
                    event_id = %entry.event_id,
                    event_type = %entry.event_type,
                    groups = %missing.join(","),
                    "repair sweep: published {MAX_REPUBLISHED} times and still without effect; \
                     not publishing it again (reconciliation reports it)"
                );
            }
            // Restart the grace period, so a slow consumer is not flooded with copies.
            entry.published_ms = platform::units::unix_now_ms();
            let commit = Commit {
                key,
                expected_version: stored.version,
                data: entry.encode_to_vec().into(),
                index: vec![unconfirmed()],
                events: Vec::new(),
                idempotency: None,
            };
            match self.store.commit(commit).await {
                Ok(_) | Err(StoreError::Conflict { .. }) => report.republished += 1,
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }
}
