//! The outbox relay: moves committed events from the store's outbox to the bus and marks them
//! delivered. Per aggregate it publishes in commit order and stops at the first failure (later
//! events of that aggregate wait for the next round), so consumers never see an aggregate's events
//! out of order from one relay. One relay runs at a time across replicas (a lease on the fast
//! path); while the bus is down, events simply stay in the outbox.
//!
//! When an event may leave the outbox depends on the bus ([`Bus::retains_messages`]): Redis
//! Streams holds what it acknowledged, so the event is marked delivered once `XADD` answered; the
//! in-process bus dies with the process, so the event stays in the outbox, *in flight*, until every
//! consumer group has settled it ([`Bus::settled`]) — consumers commit their effect first — and a
//! process killed before that publishes it again at its next start. Events a [`Journal`] wants
//! proof for are journaled before they leave the outbox, for the repair sweep.
//!
//! On shutdown the relay drains: it keeps publishing (and, in process, waiting for consumers to
//! settle) until the outbox is empty or [`RelayConfig::drain`] has passed.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use store::{AggregateKey, PendingEvent, Store, StoreError};

use crate::bus::{Bus, BusError, BusMessage};
use crate::envelope::stream_of;
use crate::journal::Journal;

/// Relay settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayConfig {
    /// Outbox events read per round.
    pub batch: usize,
    /// Pause when the outbox is empty.
    pub idle: Duration,
    /// How long one replica holds the relay lease.
    pub lease: Duration,
    /// Most events published to a bus that does not retain them and not yet settled by its
    /// consumers; the relay publishes no more until some settle.
    pub max_in_flight: usize,
    /// How long shutdown waits for the outbox to drain.
    pub drain: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            batch: 256,
            idle: Duration::from_millis(50),
            lease: Duration::from_secs(10),
            max_in_flight: 4096,
            drain: Duration::from_secs(5),
        }
    }
}

/// Why a relay round failed; the events stay in the outbox.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The outbox could not be read or updated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Nothing could be published.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// The outbox relay.
#[derive(Clone)]
pub struct Relay {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    locks: fastpath::Locks,
    config: RelayConfig,
    journal: Option<Journal>,
    /// Published to a bus that does not retain messages, waiting for its consumers, by outbox
    /// sequence.
    in_flight: Arc<Mutex<BTreeMap<u64, PendingEvent>>>,
}

impl Relay {
    /// A relay from `store` to `bus`; `locks` elect one relay among replicas.
    pub fn new(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        locks: fastpath::Locks,
        config: RelayConfig,
    ) -> Self {
        Relay {
            store,
            bus,
            locks,
            config,
            journal: None,
            in_flight: Arc::default(),
        }
    }

    /// Journals the events `journal` wants proof of before they leave the outbox.
    pub fn with_journal(mut self, journal: Journal) -> Self {
        self.journal = Some(journal);
        self
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, PendingEvent>> {
        self.in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One round: publishes up to a batch of outbox events and marks delivered what may leave
    /// the outbox; returns how many events moved (published, or settled in flight).
    pub async fn relay_once(&self) -> Result<usize, RelayError> {
        let retains = self.bus.retains_messages();
        let (in_flight, limit) = {
            let in_flight = self.in_flight();
            let keys: HashSet<u64> = in_flight.keys().copied().collect();
            let limit = self.config.batch + keys.len();
            (keys, limit)
        };
        let pending = self.store.pending_events(limit).await?;
        let mut blocked: HashSet<AggregateKey> = HashSet::new();
        let mut delivered = Vec::new();
        let mut published = 0;
        let mut failure = None;
        for event in pending {
            if in_flight.contains(&event.sequence) {
                continue;
            }
            if !retains && self.in_flight().len() >= self.config.max_in_flight {
                break;
            }
            if blocked.contains(&event.aggregate) {
                continue;
            }
            match self.publish(&event).await {
                Ok(()) => {
                    published += 1;
                    if retains {
                        delivered.push(event);
                    } else {
                        self.in_flight().insert(event.sequence, event);
                    }
                }
                Err(error) => {
                    blocked.insert(event.aggregate.clone());
                    failure = Some(error);
                }
            }
        }
        let settled = if retains {
            0
        } else {
            let settled = self.take_settled().await?;
            let count = settled.len();
            delivered.extend(settled);
            count
        };
        // Published but not marked (a crash here) means published again later: consumers
        // deduplicate by event id, so at-least-once is enough.
        if !delivered.is_empty() {
            self.store.mark_delivered(&delivered).await?;
        }
        match failure {
            Some(error) if published == 0 && settled == 0 => Err(error),
            _ => Ok(published + settled),
        }
    }

    /// Publishes one outbox event, journaled first when the journal wants it (a journal that
    /// cannot be written blocks the event like a bus failure: it is published again later).
    async fn publish(&self, event: &PendingEvent) -> Result<(), RelayError> {
        let message = BusMessage {
            event_id: event.event.event_id.clone(),
            event_type: event.event.event_type.clone(),
            tenant: event.aggregate.tenant.clone(),
            envelope: event.event.envelope.clone(),
        };
        let stream = stream_of(&message.event_type);
        // A PRODUCER span in the trace of the request that wrote the event.
        let span = crate::trace::publish_span(&stream, &event.event);
        use tracing::Instrument as _;
        self.bus.publish(&stream, &message).instrument(span).await?;
        if let Some(journal) = &self.journal
            && journal.wants(&message.event_type)
        {
            journal.record(&stream, &message).await?;
        }
        Ok(())
    }

    /// Removes from the in-flight set the events every consumer group has settled.
    async fn take_settled(&self) -> Result<Vec<PendingEvent>, RelayError> {
        let by_stream: BTreeMap<String, Vec<String>> = {
            let in_flight = self.in_flight();
            let mut by_stream: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for event in in_flight.values() {
                by_stream
                    .entry(stream_of(&event.event.event_type))
                    .or_default()
                    .push(event.event.event_id.clone());
            }
            by_stream
        };
        let mut settled_ids = HashSet::new();
        for (stream, ids) in by_stream {
            settled_ids.extend(self.bus.settled(&stream, &ids).await?);
        }
        let mut in_flight = self.in_flight();
        let sequences: Vec<u64> = in_flight
            .iter()
            .filter(|(_, event)| settled_ids.contains(&event.event.event_id))
            .map(|(sequence, _)| *sequence)
            .collect();
        Ok(sequences
            .into_iter()
            .filter_map(|sequence| in_flight.remove(&sequence))
            .collect())
    }

    /// Relays until `shutdown` completes, holding the lease while it works and backing off while
    /// the store or bus fails; then drains (see the module docs).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut pause = self.config.idle;
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(pause) => {}
            }
            pause = match self.drain_with_lease().await {
                Ok(_) => self.config.idle,
                Err(error) => {
                    tracing::warn!(%error, "event relay round failed; events stay in the outbox");
                    (pause * 2).clamp(self.config.idle, Duration::from_secs(5))
                }
            };
        }
        self.drain().await;
    }

    /// Publishes what is left in the outbox and, in process, waits for consumers to settle it,
    /// for at most [`RelayConfig::drain`]. Another replica holding the lease relays the rest.
    pub async fn drain(&self) {
        let until = tokio::time::Instant::now() + self.config.drain;
        loop {
            let moved = self.drain_with_lease().await;
            let in_flight = self.in_flight().len();
            let waiting = match self.store.pending_events(in_flight + 1).await {
                Ok(pending) => pending.len(),
                Err(_) => usize::MAX,
            };
            let holder_elsewhere = matches!(moved, Ok(0)) && in_flight == 0 && waiting > 0;
            if waiting == 0 || holder_elsewhere || tokio::time::Instant::now() >= until {
                if waiting > 0 && !holder_elsewhere {
                    tracing::warn!(
                        in_flight,
                        "event relay stopped with events still in the outbox; they are published at the next start"
                    );
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Relays until the outbox is empty or the lease is half used; nothing when another replica
    /// holds the lease.
    async fn drain_with_lease(&self) -> Result<usize, RelayError> {
        let lease = match self
            .locks
            .try_acquire("events:relay", self.config.lease)
            .await
        {
            Ok(Some(lease)) => lease,
            Ok(None) => return Ok(0),
            Err(error) => return Err(BusError(error.to_string()).into()),
        };
        let started = tokio::time::Instant::now();
        let mut total = 0;
        let outcome = loop {
            match self.relay_once().await {
                Ok(0) => break Ok(total),
                Ok(count) => total += count,
                Err(error) => break Err(error),
            }
            if started.elapsed() > self.config.lease / 2 {
                break Ok(total);
            }
        };
        let _ = self.locks.release(&lease).await;
        outcome
    }
}
