//! How records are laid out on disk: protobuf messages (prost), so the format is explicit and
//! versionable, and table keys that sort by tenant, kind and id.

use bytes::Bytes;
use prost::Message;

use crate::port::{AggregateKey, IdempotencyRecord, IndexEntry, OutboxEvent};

/// Separator inside composite keys; ids never contain it.
pub const SEP: char = '\u{1f}';

#[derive(Clone, PartialEq, Message)]
pub struct AggregateRecord {
    #[prost(uint64, tag = "1")]
    pub version: u64,
    #[prost(bytes = "bytes", tag = "2")]
    pub data: Bytes,
    #[prost(message, repeated, tag = "3")]
    pub index: Vec<IndexRecord>,
}

/// An [`AggregateRecord`] read without its state: what a write checks and replaces (version and
/// index entries). Decoding skips the state's bytes instead of copying them.
#[derive(Clone, PartialEq, Message)]
pub struct AggregateHead {
    #[prost(uint64, tag = "1")]
    pub version: u64,
    #[prost(message, repeated, tag = "3")]
    pub index: Vec<IndexRecord>,
}

#[derive(Clone, PartialEq, Message)]
pub struct IndexRecord {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct OutboxRecord {
    #[prost(string, tag = "1")]
    pub tenant: String,
    #[prost(string, tag = "2")]
    pub kind: String,
    #[prost(string, tag = "3")]
    pub id: String,
    #[prost(string, tag = "4")]
    pub event_id: String,
    #[prost(string, tag = "5")]
    pub event_type: String,
    #[prost(bytes = "bytes", tag = "6")]
    pub envelope: Bytes,
}

#[derive(Clone, PartialEq, Message)]
pub struct IdempotencyRow {
    #[prost(bytes = "bytes", tag = "1")]
    pub request_digest: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub response: Bytes,
    #[prost(uint64, tag = "3")]
    pub expires_at: u64,
}

pub fn aggregate_key(key: &AggregateKey) -> String {
    format!("{}{SEP}{}{SEP}{}", key.tenant, key.kind, key.id)
}

pub fn index_key(tenant: &str, kind: &str, entry: &IndexEntry, id: &str) -> String {
    format!(
        "{}{SEP}{}{SEP}{}{SEP}{}{SEP}{}",
        tenant, kind, entry.name, entry.value, id
    )
}

pub fn index_prefix(tenant: &str, kind: &str, entry: &IndexEntry) -> String {
    format!(
        "{}{SEP}{}{SEP}{}{SEP}{}{SEP}",
        tenant, kind, entry.name, entry.value
    )
}

pub fn idempotency_key(tenant: &str, method: &str, key: &str) -> String {
    format!("{tenant}{SEP}{method}{SEP}{key}")
}

impl From<&IndexEntry> for IndexRecord {
    fn from(entry: &IndexEntry) -> Self {
        IndexRecord {
            name: entry.name.clone(),
            value: entry.value.clone(),
        }
    }
}

impl From<&IndexRecord> for IndexEntry {
    fn from(record: &IndexRecord) -> Self {
        IndexEntry {
            name: record.name.clone(),
            value: record.value.clone(),
        }
    }
}

impl OutboxRecord {
    pub fn new(key: &AggregateKey, event: &OutboxEvent) -> Self {
        OutboxRecord {
            tenant: key.tenant.clone(),
            kind: key.kind.clone(),
            id: key.id.clone(),
            event_id: event.event_id.clone(),
            event_type: event.event_type.clone(),
            envelope: event.envelope.clone(),
        }
    }
}

impl IdempotencyRow {
    pub fn new(record: &IdempotencyRecord) -> Self {
        IdempotencyRow {
            request_digest: record.request_digest.clone(),
            response: record.response.clone(),
            expires_at: record.expires_at,
        }
    }
}
