//! The bus on Redis Streams: `XADD` (capped with `MAXLEN ~`), consumer groups (`XREADGROUP`),
//! `XACK`, `XAUTOCLAIM` for messages of dead consumers, and a dead-letter stream (`events:{pkg}:dead`, in the stream's cluster slot) for dead
//! letters. Reads never block on the shared connection (a blocking `XREADGROUP` would stall every
//! other fast-path call multiplexed on it); consumers poll instead.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fastpath::{Degraded, Redis};
use redis::streams::{
    StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamRangeReply, StreamReadOptions,
    StreamReadReply,
};
use redis::{AsyncCommands as _, Value};

use crate::bus::{Bus, BusError, BusMessage, DeadLetter, Delivery, dead_letter_stream};

/// Entries kept per stream (approximately); consumers must keep up within this window.
const MAX_STREAM_LEN: usize = 1_000_000;

/// How Redis keeps what it acknowledged, from `INFO persistence` (every node of a cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisPersistence {
    /// Every node appends writes to its AOF (`appendonly yes`); without it a restart loses what
    /// was written since the last snapshot, events on the bus included.
    pub append_only: bool,
}

/// The Redis Streams bus.
#[derive(Clone)]
pub struct RedisBus {
    redis: Redis,
    degraded: Degraded,
}

impl RedisBus {
    /// A bus on `redis`; failures are reported to `degraded`.
    pub fn new(redis: Redis, degraded: Degraded) -> Self {
        RedisBus { redis, degraded }
    }

    /// How Redis persists what it acknowledges (checked at start-up: a bus on a Redis that keeps
    /// nothing loses unconsumed events when it restarts, and only the repair sweep brings back
    /// the money-like ones).
    pub async fn persistence(&self) -> Result<RedisPersistence, BusError> {
        let result: redis::RedisResult<Value> = redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut self.conn())
            .await;
        let reply = self.check(result)?;
        let mut texts = Vec::new();
        collect_text(&reply, &mut texts);
        let flags: Vec<bool> = texts
            .iter()
            .flat_map(|text| text.lines())
            .filter_map(|line| line.trim().strip_prefix("aof_enabled:"))
            .map(|value| value.trim() == "1")
            .collect();
        if flags.is_empty() {
            return Err(BusError(
                "INFO persistence did not report aof_enabled".into(),
            ));
        }
        Ok(RedisPersistence {
            append_only: flags.iter().all(|enabled| *enabled),
        })
    }

    fn conn(&self) -> Redis {
        self.redis.clone()
    }

    fn check<T>(&self, result: redis::RedisResult<T>) -> Result<T, BusError> {
        self.degraded.record(&result);
        result.map_err(|error| BusError(error.to_string()))
    }
}

/// Every text in a reply (a cluster answers `INFO` with one text per node).
fn collect_text(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::BulkString(bytes) => into.push(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) | Value::VerbatimString { text, .. } => into.push(text.clone()),
        Value::Array(items) | Value::Set(items) => {
            items.iter().for_each(|item| collect_text(item, into))
        }
        Value::Map(pairs) => pairs.iter().for_each(|(_, item)| collect_text(item, into)),
        _ => {}
    }
}

fn fields(message: &BusMessage) -> [(&'static str, Vec<u8>); 4] {
    [
        ("event_id", message.event_id.as_bytes().to_vec()),
        ("event_type", message.event_type.as_bytes().to_vec()),
        ("tenant", message.tenant.as_bytes().to_vec()),
        ("envelope", message.envelope.to_vec()),
    ]
}

fn field(map: &HashMap<String, Value>, name: &str) -> Vec<u8> {
    match map.get(name) {
        Some(Value::BulkString(bytes)) => bytes.clone(),
        Some(Value::SimpleString(text)) => text.as_bytes().to_vec(),
        _ => Vec::new(),
    }
}

fn text(map: &HashMap<String, Value>, name: &str) -> String {
    String::from_utf8_lossy(&field(map, name)).into_owned()
}

fn message(entry: &StreamId) -> BusMessage {
    BusMessage {
        event_id: text(&entry.map, "event_id"),
        event_type: text(&entry.map, "event_type"),
        tenant: text(&entry.map, "tenant"),
        envelope: Bytes::from(field(&entry.map, "envelope")),
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, stream: &str, message: &BusMessage) -> Result<(), BusError> {
        let result: redis::RedisResult<String> = self
            .conn()
            .xadd_maxlen(
                stream,
                redis::streams::StreamMaxlen::Approx(MAX_STREAM_LEN),
                "*",
                &fields(message),
            )
            .await;
        self.check(result).map(|_| ())
    }

    async fn ensure_group(&self, stream: &str, group: &str) -> Result<(), BusError> {
        let result: redis::RedisResult<()> =
            self.conn().xgroup_create_mkstream(stream, group, "0").await;
        match result {
            Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
            other => self.check(other),
        }
    }

    async fn read(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        let options = StreamReadOptions::default()
            .group(group, consumer)
            .count(count);
        let result: redis::RedisResult<Option<StreamReadReply>> =
            self.conn().xread_options(&[stream], &[">"], &options).await;
        let reply = self.check(result)?.unwrap_or_default();
        Ok(reply
            .keys
            .iter()
            .flat_map(|key| key.ids.iter())
            .map(|entry| Delivery {
                id: entry.id.clone(),
                message: message(entry),
                deliveries: 1,
            })
            .collect())
    }

    async fn claim_stale(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        let result: redis::RedisResult<StreamAutoClaimReply> = redis::cmd("XAUTOCLAIM")
            .arg(stream)
            .arg(group)
            .arg(consumer)
            .arg(min_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn())
            .await;
        let claimed = self.check(result)?.claimed;
        let mut deliveries = Vec::with_capacity(claimed.len());
        for entry in claimed {
            // XAUTOCLAIM does not say how often an entry was delivered; XPENDING does.
            let pending: redis::RedisResult<StreamPendingCountReply> = self
                .conn()
                .xpending_count(stream, group, &entry.id, &entry.id, 1)
                .await;
            let count = self
                .check(pending)?
                .ids
                .first()
                .map_or(1, |p| p.times_delivered as u64);
            deliveries.push(Delivery {
                id: entry.id.clone(),
                message: message(&entry),
                deliveries: count,
            });
        }
        Ok(deliveries)
    }

    async fn ack(&self, stream: &str, group: &str, id: &str) -> Result<(), BusError> {
        let result: redis::RedisResult<i64> = self.conn().xack(stream, group, &[id]).await;
        self.check(result).map(|_| ())
    }

    async fn dead_letter(
        &self,
        stream: &str,
        group: &str,
        delivery: &Delivery,
        error: &str,
    ) -> Result<(), BusError> {
        let mut entry: Vec<(&str, Vec<u8>)> = fields(&delivery.message).to_vec();
        entry.push(("group", group.as_bytes().to_vec()));
        entry.push(("error", error.as_bytes().to_vec()));
        // One MULTI/EXEC: the message is never both dead and pending, nor neither.
        let result: redis::RedisResult<()> = redis::pipe()
            .atomic()
            .xadd(dead_letter_stream(stream), "*", &entry)
            .ignore()
            .xack(stream, group, &[&delivery.id])
            .ignore()
            .query_async(&mut self.conn())
            .await;
        self.check(result)
    }

    async fn dead_letters(&self, stream: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        let result: redis::RedisResult<StreamRangeReply> = self
            .conn()
            // Redis takes a signed 64-bit COUNT; "all" arrives as usize::MAX.
            .xrange_count(
                dead_letter_stream(stream),
                "-",
                "+",
                limit.min(i64::MAX as usize),
            )
            .await;
        Ok(self
            .check(result)?
            .ids
            .iter()
            .map(|entry| DeadLetter {
                id: entry.id.clone(),
                message: message(entry),
                group: text(&entry.map, "group"),
                error: text(&entry.map, "error"),
            })
            .collect())
    }

    async fn replay_dead_letter(&self, stream: &str, id: &str) -> Result<bool, BusError> {
        let dead = dead_letter_stream(stream);
        let result: redis::RedisResult<StreamRangeReply> =
            self.conn().xrange_count(&dead, id, id, 1).await;
        let Some(entry) = self.check(result)?.ids.into_iter().next() else {
            return Ok(false);
        };
        let result: redis::RedisResult<()> = redis::pipe()
            .atomic()
            .xadd(stream, "*", &fields(&message(&entry)))
            .ignore()
            .xdel(&dead, &[id])
            .ignore()
            .query_async(&mut self.conn())
            .await;
        self.check(result)?;
        Ok(true)
    }
}
