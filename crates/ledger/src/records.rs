//! The storage format: prost messages (explicit, versionable) and the store keys and index
//! entries they live under. Public so that operators' tools (and tests that tamper with stored
//! entries on purpose) can read and write it; services use [`crate::Ledger`].
//!
//! Aggregates, per tenant: `ledger_entry/<entry id>` ([`EntryRecord`], immutable),
//! `ledger_account/<name>` ([`AccountRecord`]), `ledger_hold/<hold entry id>` ([`HoldRecord`])
//! and `ledger_head/head` ([`HeadRecord`], the chain's tip, which every entry write moves).

use std::collections::BTreeMap;

use prost::Message;
use sha2::{Digest, Sha256};
use store::{AggregateKey, IndexEntry};

use crate::model::{Account, Balances, Entry, EntryKind, GENESIS, Hash, Hold, HoldStatus, Posting};

/// Aggregate kinds.
pub const ENTRY: &str = "ledger_entry";
/// Aggregate kind of accounts.
pub const ACCOUNT: &str = "ledger_account";
/// Aggregate kind of hold states.
pub const HOLD: &str = "ledger_hold";
/// Aggregate kind of the chain head.
pub const HEAD: &str = "ledger_head";
/// Id of a tenant's chain head.
pub const HEAD_ID: &str = "head";

/// Entries are indexed by `seq_block` = sequence / `SEQUENCE_BLOCK`: the store finds by exact
/// value and pages by id, so a walk in sequence order reads one block at a time and sorts it —
/// memory stays bounded however long the chain grows.
pub const SEQUENCE_BLOCK: u64 = 1024;

/// Index of entries by sequence block.
pub const SEQ_BLOCK_INDEX: &str = "seq_block";
/// Index of entries by each account they change (account history).
pub const ACCOUNT_INDEX: &str = "account";
/// Index on pending holds (value `"1"`), removed when they resolve.
pub const OPEN_HOLD_INDEX: &str = "open_hold";
/// Index listing every account (value `"all"`), for reconciliation.
pub const ACCOUNT_LIST_INDEX: &str = "ledger_accounts";

/// A posting.
#[derive(Clone, PartialEq, Message)]
pub struct PostingRecord {
    #[prost(string, tag = "1")]
    pub account: String,
    #[prost(string, tag = "2")]
    pub unit: String,
    #[prost(sint64, tag = "3")]
    pub amount: i64,
}

/// Entry kinds on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum EntryKindCode {
    Unspecified = 0,
    Posted = 1,
    Hold = 2,
    HoldPosted = 3,
    HoldVoided = 4,
    HoldExpired = 5,
}

/// An entry. Its hash is SHA-256 of this message encoded with `hash` empty (prost encodes fields
/// in tag order and maps sorted, as `metadata` is a `BTreeMap`, so the encoding is canonical);
/// since `prev_hash` is inside, each hash covers the whole chain before it.
#[derive(Clone, PartialEq, Message)]
pub struct EntryRecord {
    #[prost(string, tag = "1")]
    pub tenant: String,
    #[prost(string, tag = "2")]
    pub id: String,
    #[prost(uint64, tag = "3")]
    pub sequence: u64,
    #[prost(enumeration = "EntryKindCode", tag = "4")]
    pub kind: i32,
    /// For holds: when they lapse (unix ms).
    #[prost(int64, tag = "5")]
    pub expires_at: i64,
    /// For resolutions: the hold resolved.
    #[prost(string, tag = "6")]
    pub hold_id: String,
    #[prost(message, repeated, tag = "7")]
    pub postings: Vec<PostingRecord>,
    #[prost(btree_map = "string, string", tag = "8")]
    pub metadata: BTreeMap<String, String>,
    #[prost(int64, tag = "9")]
    pub occurred_at: i64,
    #[prost(bytes = "vec", tag = "10")]
    pub prev_hash: Vec<u8>,
    #[prost(bytes = "vec", tag = "11")]
    pub hash: Vec<u8>,
}

/// An account with its cached balances.
#[derive(Clone, PartialEq, Message)]
pub struct AccountRecord {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub unit: String,
    #[prost(sint64, optional, tag = "3")]
    pub floor: Option<i64>,
    #[prost(sint64, tag = "4")]
    pub posted: i64,
    #[prost(sint64, tag = "5")]
    pub pending_debits: i64,
    #[prost(sint64, tag = "6")]
    pub pending_credits: i64,
}

/// Hold statuses on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum HoldStatusCode {
    Unspecified = 0,
    Pending = 1,
    Posted = 2,
    Voided = 3,
    Expired = 4,
}

/// A hold's state. Kept apart from the (immutable) hold entry, so resolving a hold is a
/// compare-and-set on this record: each hold resolves at most once.
#[derive(Clone, PartialEq, Message)]
pub struct HoldRecord {
    #[prost(enumeration = "HoldStatusCode", tag = "1")]
    pub status: i32,
    #[prost(int64, tag = "2")]
    pub expires_at: i64,
    #[prost(string, tag = "3")]
    pub resolved_by: String,
}

/// The tip of a tenant's chain.
#[derive(Clone, PartialEq, Message)]
pub struct HeadRecord {
    #[prost(uint64, tag = "1")]
    pub last_sequence: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub last_hash: Vec<u8>,
}

/// The store key of an aggregate of the ledger.
pub fn key(tenant: &str, kind: &str, id: &str) -> AggregateKey {
    AggregateKey::new(tenant, kind, id)
}

fn index(name: &str, value: impl Into<String>) -> IndexEntry {
    IndexEntry {
        name: name.to_owned(),
        value: value.into(),
    }
}

/// An entry's index entries: its sequence block and every account it changes (`accounts`).
pub fn entry_index<'a>(
    sequence: u64,
    accounts: impl IntoIterator<Item = &'a str>,
) -> Vec<IndexEntry> {
    let mut entries = vec![seq_block(sequence / SEQUENCE_BLOCK)];
    entries.extend(
        accounts
            .into_iter()
            .map(|account| index(ACCOUNT_INDEX, account)),
    );
    entries
}

/// The index entry of sequence block `block`.
pub fn seq_block(block: u64) -> IndexEntry {
    index(SEQ_BLOCK_INDEX, block.to_string())
}

/// The index entry of an account's history.
pub fn account_history(account: &str) -> IndexEntry {
    index(ACCOUNT_INDEX, account)
}

/// The index entry of pending holds.
pub fn open_hold() -> IndexEntry {
    index(OPEN_HOLD_INDEX, "1")
}

/// The index entry listing accounts.
pub fn account_list() -> IndexEntry {
    index(ACCOUNT_LIST_INDEX, "all")
}

/// SHA-256 of the record's canonical encoding without its hash.
pub fn entry_hash(record: &EntryRecord) -> Hash {
    let unhashed = EntryRecord {
        hash: Vec::new(),
        ..record.clone()
    };
    Sha256::digest(unhashed.encode_to_vec()).into()
}

fn to_hash(bytes: &[u8], what: &str) -> Result<Hash, String> {
    bytes
        .try_into()
        .map_err(|_| format!("{what} has {} bytes, not 32", bytes.len()))
}

impl From<&Posting> for PostingRecord {
    fn from(posting: &Posting) -> Self {
        PostingRecord {
            account: posting.account.clone(),
            unit: posting.unit.clone(),
            amount: posting.amount,
        }
    }
}

impl From<&PostingRecord> for Posting {
    fn from(record: &PostingRecord) -> Self {
        Posting {
            account: record.account.clone(),
            unit: record.unit.clone(),
            amount: record.amount,
        }
    }
}

impl EntryRecord {
    /// The record of an entry (its `hash` as given).
    pub fn from_entry(entry: &Entry) -> Self {
        let (kind, expires_at, hold_id) = match &entry.kind {
            EntryKind::Posted => (EntryKindCode::Posted, 0, ""),
            EntryKind::Hold { expires_at } => (EntryKindCode::Hold, *expires_at, ""),
            EntryKind::HoldPosted { hold_id } => (EntryKindCode::HoldPosted, 0, hold_id.as_str()),
            EntryKind::HoldVoided { hold_id } => (EntryKindCode::HoldVoided, 0, hold_id.as_str()),
            EntryKind::HoldExpired { hold_id } => (EntryKindCode::HoldExpired, 0, hold_id.as_str()),
        };
        EntryRecord {
            tenant: entry.tenant.clone(),
            id: entry.id.clone(),
            sequence: entry.sequence,
            kind: kind as i32,
            expires_at,
            hold_id: hold_id.to_owned(),
            postings: entry.postings.iter().map(PostingRecord::from).collect(),
            metadata: entry.metadata.clone(),
            occurred_at: entry.occurred_at,
            prev_hash: entry.prev_hash.to_vec(),
            hash: entry.hash.to_vec(),
        }
    }

    /// The entry it stores, or why it is not one.
    pub fn to_entry(&self) -> Result<Entry, String> {
        let hold_id = || self.hold_id.clone();
        let kind = match EntryKindCode::try_from(self.kind) {
            Ok(EntryKindCode::Posted) => EntryKind::Posted,
            Ok(EntryKindCode::Hold) => EntryKind::Hold {
                expires_at: self.expires_at,
            },
            Ok(EntryKindCode::HoldPosted) => EntryKind::HoldPosted { hold_id: hold_id() },
            Ok(EntryKindCode::HoldVoided) => EntryKind::HoldVoided { hold_id: hold_id() },
            Ok(EntryKindCode::HoldExpired) => EntryKind::HoldExpired { hold_id: hold_id() },
            Ok(EntryKindCode::Unspecified) | Err(_) => {
                return Err(format!("unknown entry kind {}", self.kind));
            }
        };
        Ok(Entry {
            tenant: self.tenant.clone(),
            id: self.id.clone(),
            sequence: self.sequence,
            kind,
            postings: self.postings.iter().map(Posting::from).collect(),
            metadata: self.metadata.clone(),
            occurred_at: self.occurred_at,
            prev_hash: to_hash(&self.prev_hash, "prev_hash")?,
            hash: to_hash(&self.hash, "hash")?,
        })
    }
}

impl AccountRecord {
    /// The record of an account.
    pub fn from_account(account: &Account) -> Self {
        AccountRecord {
            name: account.name.clone(),
            unit: account.unit.clone(),
            floor: account.floor,
            posted: account.balances.posted,
            pending_debits: account.balances.pending_debits,
            pending_credits: account.balances.pending_credits,
        }
    }

    /// The account it stores.
    pub fn to_account(&self) -> Account {
        Account {
            name: self.name.clone(),
            unit: self.unit.clone(),
            floor: self.floor,
            balances: Balances {
                posted: self.posted,
                pending_debits: self.pending_debits,
                pending_credits: self.pending_credits,
            },
        }
    }
}

impl HoldRecord {
    /// The record of a hold's state.
    pub fn from_hold(hold: &Hold) -> Self {
        let status = match hold.status {
            HoldStatus::Pending => HoldStatusCode::Pending,
            HoldStatus::Posted => HoldStatusCode::Posted,
            HoldStatus::Voided => HoldStatusCode::Voided,
            HoldStatus::Expired => HoldStatusCode::Expired,
        };
        HoldRecord {
            status: status as i32,
            expires_at: hold.expires_at,
            resolved_by: hold.resolved_by.clone().unwrap_or_default(),
        }
    }

    /// The hold state it stores (`id` is the aggregate id), or why it is not one.
    pub fn to_hold(&self, id: &str) -> Result<Hold, String> {
        let status = match HoldStatusCode::try_from(self.status) {
            Ok(HoldStatusCode::Pending) => HoldStatus::Pending,
            Ok(HoldStatusCode::Posted) => HoldStatus::Posted,
            Ok(HoldStatusCode::Voided) => HoldStatus::Voided,
            Ok(HoldStatusCode::Expired) => HoldStatus::Expired,
            Ok(HoldStatusCode::Unspecified) | Err(_) => {
                return Err(format!("hold {id}: unknown status {}", self.status));
            }
        };
        Ok(Hold {
            id: id.to_owned(),
            status,
            expires_at: self.expires_at,
            resolved_by: Some(self.resolved_by.clone()).filter(|by| !by.is_empty()),
        })
    }
}

impl HeadRecord {
    /// The hash the next entry chains to.
    pub fn tip(&self) -> Result<Hash, String> {
        if self.last_sequence == 0 {
            return Ok(GENESIS);
        }
        to_hash(&self.last_hash, "head hash")
    }
}
