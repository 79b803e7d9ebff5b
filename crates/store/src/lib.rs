//! Persistence for the services: the ports they write against, and the adapters behind them.
//!
//! A service changes an aggregate with one [`Commit`]: the aggregate's new state (compare-and-set
//! on its `version`), its secondary-index entries, the outbox events the change emits, and the
//! idempotency record of the request that caused it — all or nothing. Events then leave through
//! the outbox ([`Store::pending_events`]), so a change and its events can never disagree.
//! A change that spans several aggregates of one tenant (a ledger entry and the accounts it moves)
//! is one [`Store::commit_all`]: every commit or none.
//!
//! Adapters: [`EmbeddedStore`] (redb, the default when no MongoDB is configured) and
//! [`MongoStore`] (MongoDB; commits with an idempotency record and `commit_all` of several
//! commits need a replica set or sharded cluster).

mod embedded;
mod kit;
mod mongo;
mod pages;
mod port;
mod records;
#[cfg(feature = "testing")]
pub mod testing;

pub use embedded::{EmbeddedOptions, EmbeddedStore};
pub use kit::{Contention, CorruptRecord, Retry, retry_on_conflict};
pub use mongo::{MongoOptions, MongoStore};
pub use pages::Pages;
pub use port::{
    AggregateKey, Commit, IdempotencyRecord, IndexEntry, OutboxEvent, PendingEvent, Store,
    StoreError, Versioned, unix_now,
};
