//! The outbox relay: moves committed events from the store's outbox to the bus and marks them
//! delivered. Per aggregate it publishes in commit order and stops at the first failure (later
//! events of that aggregate wait for the next round), so consumers never see an aggregate's events
//! out of order from one relay. One relay runs at a time across replicas (a lease on the fast
//! path); while the bus is down, events simply stay in the outbox.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use store::{AggregateKey, Store, StoreError};

use crate::bus::{Bus, BusError, BusMessage};
use crate::envelope::stream_of;

/// Relay settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayConfig {
    /// Outbox events read per round.
    pub batch: usize,
    /// Pause when the outbox is empty.
    pub idle: Duration,
    /// How long one replica holds the relay lease.
    pub lease: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            batch: 256,
            idle: Duration::from_millis(50),
            lease: Duration::from_secs(10),
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
        }
    }

    /// One round: publishes up to a batch of outbox events; returns how many were delivered.
    pub async fn relay_once(&self) -> Result<usize, RelayError> {
        let pending = self.store.pending_events(self.config.batch).await?;
        let mut blocked: HashSet<AggregateKey> = HashSet::new();
        let mut delivered = Vec::with_capacity(pending.len());
        let mut failure = None;
        for event in pending {
            if blocked.contains(&event.aggregate) {
                continue;
            }
            let message = BusMessage {
                event_id: event.event.event_id.clone(),
                event_type: event.event.event_type.clone(),
                tenant: event.aggregate.tenant.clone(),
                envelope: event.event.envelope.clone(),
            };
            match self
                .bus
                .publish(&stream_of(&message.event_type), &message)
                .await
            {
                Ok(()) => delivered.push(event),
                Err(error) => {
                    blocked.insert(event.aggregate.clone());
                    failure = Some(error);
                }
            }
        }
        // Published but not marked (a crash here) means published again later: consumers
        // deduplicate by event id, so at-least-once is enough.
        if !delivered.is_empty() {
            self.store.mark_delivered(&delivered).await?;
        }
        match failure {
            Some(error) if delivered.is_empty() => Err(error.into()),
            _ => Ok(delivered.len()),
        }
    }

    /// Relays until `shutdown` completes, holding the lease while it works; backs off while the
    /// store or bus fails.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut pause = self.config.idle;
        loop {
            tokio::select! {
                () = &mut shutdown => return,
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
