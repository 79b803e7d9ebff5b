//! The consumer runner: reads a stream as one consumer of a group, hands each event to a handler,
//! and owns the failure policy so handlers are only domain logic:
//!
//! - **deduplication by event id**: a processed-event record (an idempotency record keyed
//!   `consumer:<group>` / event id) is checked first; the handler puts [`Processed::record`] into
//!   its own commit so "handled" and "recorded" are one atomic write, and concurrent duplicates
//!   end with one commit and `IdempotencyKeyTaken` for the rest;
//! - **retries** with exponential backoff and full jitter for [`HandlerError::Retry`], up to
//!   `max_attempts`, then a dead letter; [`HandlerError::Reject`] dead-letters at once;
//! - **claiming** messages left pending by a consumer that died (idle longer than `claim_after`);
//!   a message delivered more than `max_deliveries` times (it keeps killing consumers) is
//!   dead-lettered instead of handled again.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use commerce_api::commerce::common::v1::EventEnvelope;
use store::{IdempotencyRecord, Store, StoreError, unix_now};

use crate::bus::{Bus, BusError, Delivery};
use crate::envelope;

/// The idempotency-record method under which `group` records the events it processed (the
/// record's key is the event id).
pub fn processed_method(group: &str) -> String {
    format!("consumer:{group}")
}

/// A handler's verdict on an event it could not handle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Might work later (a dependency is down, a conflict): retry with backoff.
    #[error("retryable: {0}")]
    Retry(String),
    /// Will never work (malformed, violates a rule): dead-letter now.
    #[error("rejected: {0}")]
    Reject(String),
}

impl From<StoreError> for HandlerError {
    fn from(error: StoreError) -> Self {
        HandlerError::Retry(error.to_string())
    }
}

/// The processed-event record of the event being handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    record: IdempotencyRecord,
}

impl Processed {
    /// Put this into the `Commit` that applies the event. A commit refused with
    /// `IdempotencyKeyTaken` means another delivery already applied it: return `Ok(())`.
    pub fn record(&self) -> IdempotencyRecord {
        self.record.clone()
    }
}

/// What a consumer does with one event.
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Applies `event`. Called at least once per event; dedup by [`Processed`] makes it once.
    async fn handle(
        &self,
        event: &EventEnvelope,
        processed: &Processed,
    ) -> Result<(), HandlerError>;
}

/// A shared handler (e.g. one also used by an RPC) handles as itself.
#[async_trait]
impl<H: EventHandler> EventHandler for Arc<H> {
    async fn handle(
        &self,
        event: &EventEnvelope,
        processed: &Processed,
    ) -> Result<(), HandlerError> {
        H::handle(self, event, processed).await
    }
}

/// Consumer settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// Stream to read (see [`envelope::stream_of`]).
    pub stream: String,
    /// Consumer group: one per consuming service and purpose (e.g. `loyalty-accrual`).
    pub group: String,
    /// This consumer's name within the group (e.g. the pod name).
    pub consumer: String,
    /// Messages read at a time.
    pub batch: usize,
    /// Handler attempts per delivery before dead-lettering.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt (full jitter).
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Idle time after which another consumer's pending message is claimed.
    pub claim_after: Duration,
    /// Deliveries after which a message is dead-lettered unhandled.
    pub max_deliveries: u64,
    /// How long processed-event records are kept.
    pub dedup_retention: Duration,
    /// Pause when there is nothing to read.
    pub idle: Duration,
    /// On shutdown, how long the consumer keeps handling what is already on the bus before it
    /// stops (an in-process bus loses what is left; its events are published again at the next
    /// start).
    pub drain: Duration,
}

impl ConsumerConfig {
    /// Defaults for `group` reading `stream` as `consumer`.
    pub fn new(
        stream: impl Into<String>,
        group: impl Into<String>,
        consumer: impl Into<String>,
    ) -> Self {
        ConsumerConfig {
            stream: stream.into(),
            group: group.into(),
            consumer: consumer.into(),
            batch: 32,
            max_attempts: 5,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            claim_after: Duration::from_secs(30),
            max_deliveries: 5,
            dedup_retention: Duration::from_secs(90 * 24 * 3600),
            idle: Duration::from_millis(100),
            drain: Duration::from_secs(5),
        }
    }
}

/// Runs one consumer.
pub struct Consumer<H> {
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
    handler: H,
    config: ConsumerConfig,
    /// The group is known to exist. Cleared by any bus failure: a Redis that restarted empty has
    /// lost it, and the next round creates it again.
    group_ready: AtomicBool,
}

impl<H: EventHandler> Consumer<H> {
    /// A consumer handing events of `config.stream` to `handler`.
    pub fn new(
        bus: Arc<dyn Bus>,
        store: Arc<dyn Store>,
        handler: H,
        config: ConsumerConfig,
    ) -> Self {
        Consumer {
            bus,
            store,
            handler,
            config,
            group_ready: AtomicBool::new(false),
        }
    }

    /// One round: claims stale messages, reads new ones, handles them in order. Returns how many
    /// were settled (handled, skipped as duplicates or dead-lettered).
    pub async fn poll_once(&self) -> Result<usize, BusError> {
        let result = self.poll().await;
        if result.is_err() {
            self.group_ready.store(false, Ordering::Relaxed);
        }
        result
    }

    async fn poll(&self) -> Result<usize, BusError> {
        let config = &self.config;
        if !self.group_ready.load(Ordering::Relaxed) {
            self.bus.ensure_group(&config.stream, &config.group).await?;
            self.group_ready.store(true, Ordering::Relaxed);
        }
        let mut deliveries = self
            .bus
            .claim_stale(
                &config.stream,
                &config.group,
                &config.consumer,
                config.claim_after,
                config.batch,
            )
            .await?;
        deliveries.extend(
            self.bus
                .read(
                    &config.stream,
                    &config.group,
                    &config.consumer,
                    config.batch,
                )
                .await?,
        );
        let count = deliveries.len();
        for delivery in deliveries {
            self.settle(&delivery).await?;
        }
        Ok(count)
    }

    /// Polls until `shutdown` completes, backing off while the bus fails; then handles what is
    /// left on the bus for at most [`ConsumerConfig::drain`].
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut pause = Duration::ZERO;
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(pause) => {}
            }
            pause = match self.poll_once().await {
                Ok(0) => self.config.idle,
                Ok(_) => Duration::ZERO,
                Err(error) => {
                    tracing::warn!(%error, group = %self.config.group, "event consumer round failed");
                    (pause * 2).clamp(self.config.idle, Duration::from_secs(5))
                }
            };
        }
        let until = tokio::time::Instant::now() + self.config.drain;
        while tokio::time::Instant::now() < until {
            match tokio::time::timeout_at(until, self.poll_once()).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Moves a delivery to the dead-letter stream, saying so loudly: an event a consumer gives up
    /// on has not had its effect.
    async fn give_up(&self, delivery: &Delivery, error: &str) -> Result<(), BusError> {
        let message = &delivery.message;
        tracing::error!(
            group = %self.config.group,
            stream = %self.config.stream,
            event_id = %message.event_id,
            event_type = %message.event_type,
            tenant = %message.tenant,
            deliveries = delivery.deliveries,
            %error,
            "event dead-lettered: the consumer gave up on it (replay with `commerce dead-letters replay`)"
        );
        self.bus
            .dead_letter(&self.config.stream, &self.config.group, delivery, error)
            .await
    }

    /// Handles, skips or dead-letters one delivery, then acknowledges it. A store failure leaves
    /// it pending (it is claimed again later).
    async fn settle(&self, delivery: &Delivery) -> Result<(), BusError> {
        let event = match envelope::open(&delivery.message.envelope) {
            Ok(event) => event,
            Err(error) => return self.give_up(delivery, &error.to_string()).await,
        };
        // The handling is a CONSUMER span in the producer's trace: `OrderPaid`'s accrual shows
        // up under the request that paid the order.
        let span = crate::trace::consumer_span(
            &self.config.stream,
            &self.config.group,
            &event,
            delivery.deliveries,
        );
        use tracing::Instrument as _;
        let outcome = self
            .settle_event(delivery, event)
            .instrument(span.clone())
            .await;
        if let Err(error) = &outcome {
            crate::trace::failed(&span, &error.0);
        }
        outcome
    }

    async fn settle_event(
        &self,
        delivery: &Delivery,
        event: commerce_api::commerce::common::v1::EventEnvelope,
    ) -> Result<(), BusError> {
        let (stream, group) = (&self.config.stream, &self.config.group);
        if delivery.deliveries > self.config.max_deliveries {
            let error = format!(
                "delivered {} times without being acknowledged",
                delivery.deliveries
            );
            return self.give_up(delivery, &error).await;
        }
        let processed = self.processed(&event);
        match self
            .store
            .idempotency_record(&event.tenant_id, &processed.record.method, &event.event_id)
            .await
        {
            Ok(Some(_)) => return self.bus.ack(stream, group, &delivery.id).await,
            Ok(None) => {}
            Err(error) => return Err(BusError(format!("processed-event check: {error}"))),
        }
        let mut attempt = 1;
        loop {
            match self.handler.handle(&event, &processed).await {
                Ok(()) => {
                    // Handlers that commit recorded it already (taken); others rely on this.
                    match self.store.save_idempotency_record(processed.record()).await {
                        Ok(()) | Err(StoreError::IdempotencyKeyTaken(_)) => {}
                        Err(error) => {
                            tracing::warn!(%error, event_id = %event.event_id, "processed-event record not saved")
                        }
                    }
                    return self.bus.ack(stream, group, &delivery.id).await;
                }
                Err(HandlerError::Reject(error)) => {
                    return self.give_up(delivery, &error).await;
                }
                Err(HandlerError::Retry(error)) if attempt >= self.config.max_attempts => {
                    let error = format!("gave up after {attempt} attempts: {error}");
                    return self.give_up(delivery, &error).await;
                }
                Err(HandlerError::Retry(error)) => {
                    tracing::debug!(%error, attempt, event_id = %event.event_id, "retrying event");
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }

    fn processed(&self, event: &EventEnvelope) -> Processed {
        Processed {
            record: IdempotencyRecord {
                tenant: event.tenant_id.clone(),
                method: processed_method(&self.config.group),
                key: event.event_id.clone(),
                request_digest: Bytes::from(event.event_id.clone()),
                response: Bytes::new(),
                expires_at: unix_now() + self.config.dedup_retention.as_secs(),
            },
        }
    }

    /// Exponential backoff with full jitter: a random delay in [0, min(max, base·2^(n-1))].
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .config
            .backoff_base
            .saturating_mul(1 << (attempt - 1).min(20))
            .min(self.config.backoff_max);
        ceiling.mul_f64(fastrand::f64())
    }
}
