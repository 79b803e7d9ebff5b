//! The event backbone: outbox → relay → bus → consumers.
//!
//! - [`envelope`]: contract events wrapped in `commerce.common.v1.EventEnvelope`, and the outbox
//!   entry a service puts into its commit.
//! - [`Relay`]: publishes outbox events to the bus in order per aggregate, marks them delivered.
//! - [`Bus`]: Redis Streams consumer groups ([`RedisBus`]), or in process ([`MemoryBus`]).
//! - [`Consumer`]: runs an [`EventHandler`] with dedup by event id, retries with backoff and
//!   jitter, claiming of stuck messages, dead letters (listed and replayed through the [`Bus`]).
//! - [`Journal`]: proof that money-like events had their effect, and the repair sweep that
//!   publishes again what a non-durable bus lost or a consumer gave up on.
//!
//! Delivery is at least once end to end: an event leaves the outbox once the bus holds it
//! (Redis) or once every consumer group has committed its effect (in process); consumers are
//! idempotent by event id.

mod bus;
mod consumer;
pub mod envelope;
mod journal;
mod memory;
mod redis_bus;
mod relay;
mod trace;

pub use bus::{Bus, BusError, BusMessage, DeadLetter, Delivery, dead_letter_stream};
pub use consumer::{
    Consumer, ConsumerConfig, EventHandler, HandlerError, Processed, processed_method,
};
pub use envelope::{EventSource, stream_of};
pub use journal::{Journal, MissingEffect, SweepError, SweepReport};
pub use memory::MemoryBus;
pub use redis_bus::{RedisBus, RedisPersistence};
pub use relay::{Relay, RelayConfig, RelayError};
