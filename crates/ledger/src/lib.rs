//! A double-entry ledger on the store port, for points and money alike.
//!
//! - **Accounts** are named per tenant (`member:m-1:points`, `loyalty:issued:points`, `psp:USD`),
//!   opened explicitly with one unit and an optional floor (`Some(0)`: never negative;
//!   `Some(-500)`: may go 500 below zero; `None`: unconstrained, for issuers and clearing).
//! - **Entries** are immutable lists of postings that sum to zero per unit (sign convention in
//!   [`model`]: positive credits, negative debits); mistakes are fixed by correcting entries.
//!   The entry id makes writes idempotent.
//! - **Holds** reserve amounts (pending) until posted — in full or in part — voided, or expired.
//! - **Balances** are derived from the postings and cached on the accounts, written in the same
//!   atomic `commit_all` as the entry; the store is the record.
//! - **Hash chain**: each entry hashes its content and the previous entry's hash, and
//!   [`Ledger::reconcile`] proves chain, balances and holds from the entries alone.
//!
//! Every write is one [`store::Store::commit_all`] of the entry, its accounts, the hold's state
//! and the tenant's chain head. Two consequences, by design: a tenant's entries are written one
//! at a time (the head is their order; racing writers retry), and on MongoDB the ledger needs a
//! replica set or sharded cluster (several documents per write need a transaction; on a
//! standalone server every write fails with [`store::StoreError::Backend`]).
//!
//! Not here: caching balances on Redis, events (services emit their own), or any wire type.

mod error;
mod ledger;
pub mod model;
mod reconcile;
pub mod records;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::LedgerError;
pub use ledger::{EntryRecorder, Ledger, Write, Written};
pub use model::{Account, Balances, Entry, EntryKind, Hash, Hold, HoldStatus, NewEntry, Posting};
pub use reconcile::{Problem, ReconcileReport};
