//! Read-through / write-through cache with a TTL. On a miss, one caller per key (in this process)
//! loads the value while the others wait for it — no stampede on the store when a hot key expires.
//! After a write to the store, [`Cache::write_through`] puts the new value (or
//! [`Cache::invalidate`] drops the old one). Values live in Redis when configured (shared by
//! replicas), in process otherwise.
//!
//! With Redis, a small **near cache** ([`NearCache`], in process, bounded, 1 s by default) sits in
//! front of it, so a hot read makes no Redis round trip; see `near.rs` for its staleness bound
//! (a write in this process: at once; in another process: the pub/sub delay; a lost message the
//! connection did not notice: the near TTL). Round trips per read:
//!
//! | read | Redis round trips |
//! | --- | --- |
//! | near hit | 0 |
//! | near miss, Redis hit | 1 (`GET`, with any pending stale-key `DEL`s pipelined in front; on a cluster those go first: 2 while keys are stale) |
//! | miss, loaded from the store | 2 (`GET`, then `SET NX`); a caller that waited on another's load finds the value in the near cache (or asks Redis once more when it is off) |
//!
//! A write-through is one round trip too (`SET` and `PUBLISH` pipelined; on a Redis Cluster one
//! after the other, since they may go to different nodes and the message must not overtake the
//! value).
//!
//! A failing Redis is bypassed: every read goes to the loader, which is the source of truth anyway
//! (the near cache is off while its subscription is down, which it is while Redis is). A
//! write-through or invalidation that fails leaves the key marked *stale*: until Redis has deleted
//! it, reads of that key skip the Redis copy, so a Redis that comes back (or was only
//! unreachable) never serves a value older than the last write.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::expiring::{ExpiringMap, WhenFull};
use crate::near::{self, Near, NearCache, Ticket};
use crate::{Degraded, Redis};

/// Values the in-process cache keeps at most; expired ones are forgotten first, then those
/// expiring soonest (a cache may always forget: the next read loads again).
const MAX_LOCAL_VALUES: usize = 50_000;

/// The namespace of [`Cache::new`] (its invalidation channel is `cache-invalidations:cache`).
const DEFAULT_NAMESPACE: &str = "cache";

/// Whether a put replaces a cached value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    Always,
    IfAbsent,
}

/// The cache.
#[derive(Clone)]
pub struct Cache {
    redis: Option<Redis>,
    /// In front of Redis; `None` without Redis or with the near cache off.
    near: Option<Arc<Near>>,
    /// Where writes are announced to every process's near cache.
    channel: Arc<str>,
    local: Arc<Mutex<ExpiringMap<Bytes>>>,
    /// One gate per key being loaded right now (removed when its load ends, however it ends).
    loading: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Keys whose Redis copy may be older than the store (a write-through or invalidation failed).
    stale: Arc<Mutex<HashSet<String>>>,
    degraded: Degraded,
}

impl Cache {
    /// A cache in Redis when given (with the default near cache in front), in process otherwise.
    pub fn new(redis: Option<Redis>, degraded: Degraded) -> Self {
        Self::with_near_cache(redis, degraded, DEFAULT_NAMESPACE, NearCache::default())
    }

    /// A cache in Redis when given, with `near` in front of it; writes are announced on the
    /// pub/sub channel of `namespace` (every cache of one kind, in every process, names the same
    /// namespace, so they hear each other's writes).
    pub fn with_near_cache(
        redis: Option<Redis>,
        degraded: Degraded,
        namespace: &str,
        near: NearCache,
    ) -> Self {
        let near = (redis.is_some() && near.is_on()).then(|| Arc::new(Near::new(namespace, near)));
        // Subscribed from the start when built inside a runtime (else at the first call).
        if let (Some(near), Some(redis)) = (&near, &redis) {
            near.start(redis);
        }
        Cache {
            redis,
            near,
            channel: near::channel(namespace).into(),
            local: Arc::new(Mutex::new(ExpiringMap::new(
                MAX_LOCAL_VALUES,
                WhenFull::EvictSoonestToExpire,
            ))),
            loading: Arc::default(),
            stale: Arc::default(),
            degraded,
        }
    }

    /// Whether the near cache is serving: configured, and subscribed to invalidations.
    pub fn near_cache_is_serving(&self) -> bool {
        self.near.as_ref().is_some_and(|near| near.is_subscribed())
    }

    /// Values the near cache holds now.
    pub fn near_cache_len(&self) -> usize {
        self.near.as_ref().map_or(0, |near| near.len())
    }

    /// The near cache, its subscriber started.
    fn near(&self) -> Option<&Arc<Near>> {
        let near = self.near.as_ref()?;
        if let Some(redis) = &self.redis {
            near.start(redis);
        }
        Some(near)
    }

    /// The cached value of `key`, or `load`'s result, cached for `ttl`.
    pub async fn get_or_load<F, Fut, E>(
        &self,
        key: &str,
        ttl: Duration,
        load: F,
    ) -> Result<Bytes, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, E>>,
    {
        let near = self.near();
        let ticket = match near.map(|near| near.get(key)) {
            Some(Ok(value)) => return Ok(value),
            Some(Err(ticket)) => Some(ticket),
            None => None,
        };
        if let Some(value) = self.get(key, ticket).await {
            return Ok(value);
        }
        let (gate, waited) = {
            let mut loading = self
                .loading
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match loading.entry(key.to_owned()) {
                std::collections::hash_map::Entry::Occupied(entry) => (entry.get().clone(), true),
                std::collections::hash_map::Entry::Vacant(entry) => {
                    (entry.insert(Arc::default()).clone(), false)
                }
            }
        };
        // The gate leaves the map when this load ends — also when the loader fails (a key that
        // does not exist, asked for by anyone) or the caller goes away — so the map holds only
        // keys being loaded right now.
        let _gate_entry = GateEntry {
            loading: &self.loading,
            key,
        };
        let _turn = gate.lock().await;
        if waited {
            // Whoever held the gate before us may have filled the cache (the near cache first:
            // no round trip).
            let ticket = match near.map(|near| near.get(key)) {
                Some(Ok(value)) => return Ok(value),
                Some(Err(ticket)) => Some(ticket),
                None => None,
            };
            if let Some(value) = self.get(key, ticket).await {
                return Ok(value);
            }
        }
        // Taken before the load: a write that lands while we load keeps our (older) value out
        // of the near cache.
        let ticket = near.map(|near| near.ticket(key));
        let value = load().await?;
        // Only if absent: a write-through that landed while we loaded holds the newer value.
        self.put(key, &value, ttl, Fill::IfAbsent).await;
        if let (Some(near), Some(ticket)) = (near, ticket) {
            near.fill(key, &value, ticket);
        }
        Ok(value)
    }

    /// Caches `value` as the new value of `key`, after the write that produced it committed.
    pub async fn write_through(&self, key: &str, value: &Bytes, ttl: Duration) {
        let near = self.near();
        let write = near.map(|near| near.begin_write(key));
        let stored = self.put(key, value, ttl, Fill::Always).await;
        if let (Some(near), Some(write)) = (near, write) {
            near.end_write(key, stored.then_some(value), write);
        }
        if !stored {
            self.mark_stale(key);
        }
    }

    /// Drops `key` (after a write changed the value).
    pub async fn invalidate(&self, key: &str) {
        self.local
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(key);
        let near = self.near();
        let write = near.map(|near| near.begin_write(key));
        let deleted = self.redis.is_none() || self.delete_and_announce(key).await;
        if let (Some(near), Some(write)) = (near, write) {
            near.end_write(key, None, write);
        }
        if !deleted {
            self.mark_stale(key);
        }
    }

    fn mark_stale(&self, key: &str) {
        self.stale
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(key.to_owned());
    }

    /// Runs `commands`: in one pipeline on one server (one round trip, in order), one after the
    /// other on a cluster (they may go to different nodes, and a cluster pipeline must stay within
    /// one slot).
    async fn run(&self, redis: &Redis, commands: Vec<redis::Cmd>) -> bool {
        let mut connection = redis.clone();
        let result: Result<(), redis::RedisError> = if redis.is_cluster() || commands.len() == 1 {
            let mut result = Ok(());
            for command in commands {
                result = command
                    .query_async::<redis::Value>(&mut connection)
                    .await
                    .map(|_| ());
                if result.is_err() {
                    break;
                }
            }
            result
        } else {
            let mut pipeline = redis::pipe();
            for command in commands {
                pipeline.add_command(command).ignore();
            }
            pipeline.query_async(&mut connection).await
        };
        self.degraded.record(&result);
        result.is_ok()
    }

    /// The announcement of a write of `key` to every process's near cache (made even with the
    /// near cache off here: other processes may have theirs on).
    fn announcement(&self, key: &str) -> redis::Cmd {
        let message = self
            .near
            .as_ref()
            .map_or_else(|| format!("- {key}"), |near| near.message(key));
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(&*self.channel).arg(message);
        publish
    }

    /// Deletes `key` from Redis and announces it; whether the delete worked.
    async fn delete_and_announce(&self, key: &str) -> bool {
        let Some(redis) = &self.redis else {
            return true;
        };
        let mut delete = redis::cmd("DEL");
        delete.arg(format!("cache:{key}"));
        let commands = vec![delete, self.announcement(key)];
        self.run(redis, commands).await
    }

    /// The Redis value of `key` in one round trip: the stale keys' deletes (if any) pipelined in
    /// front of the `GET`. `None` on a miss, a failure, or while `key` is stale. A value found
    /// fills the near cache under `ticket`.
    async fn get(&self, key: &str, ticket: Option<Ticket>) -> Option<Bytes> {
        let Some(redis) = &self.redis else {
            let local = self
                .local
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            return local
                .get(key, Instant::now())
                .map(|(value, _)| value.clone());
        };
        let stale: Vec<String> = self
            .stale
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .cloned()
            .collect();
        let mut connection = redis.clone();
        let value = if stale.is_empty() {
            let result: Result<Option<Vec<u8>>, _> = redis::cmd("GET")
                .arg(format!("cache:{key}"))
                .query_async(&mut connection)
                .await;
            self.degraded.record(&result);
            result.ok().flatten()
        } else if redis.is_cluster() {
            // A cluster pipeline must stay within one slot: the stale keys' DELs go first (one
            // per key, concurrently), then the GET — two round trips, only while keys are stale.
            let deletes = futures_util::future::join_all(stale.iter().map(|stale_key| {
                let mut connection = redis.clone();
                async move {
                    redis::cmd("DEL")
                        .arg(format!("cache:{stale_key}"))
                        .query_async::<i64>(&mut connection)
                        .await
                }
            }))
            .await;
            let still_stale = {
                let mut still = self
                    .stale
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                for (stale_key, deleted) in stale.iter().zip(&deletes) {
                    if deleted.is_ok() {
                        still.remove(stale_key);
                    }
                }
                still.contains(key)
            };
            if let Some(failed) = deletes.into_iter().find(Result::is_err) {
                self.degraded.record(&failed);
            }
            if still_stale {
                return None;
            }
            let result: Result<Option<Vec<u8>>, _> = redis::cmd("GET")
                .arg(format!("cache:{key}"))
                .query_async(&mut connection)
                .await;
            self.degraded.record(&result);
            result.ok().flatten()
        } else {
            // The DELs precede the GET on the one connection, so a stale key reads as a miss.
            let mut pipeline = redis::pipe();
            for stale_key in &stale {
                pipeline
                    .cmd("DEL")
                    .arg(format!("cache:{stale_key}"))
                    .ignore();
            }
            pipeline.cmd("GET").arg(format!("cache:{key}"));
            let result: Result<(Option<Vec<u8>>,), _> = pipeline.query_async(&mut connection).await;
            self.degraded.record(&result);
            let (value,) = result.ok()?;
            let mut still = self
                .stale
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for stale_key in &stale {
                still.remove(stale_key);
            }
            value
        };
        let value = Bytes::from(value?);
        if let (Some(near), Some(ticket)) = (&self.near, ticket) {
            near.fill(key, &value, ticket);
        }
        Some(value)
    }

    /// Stores `value` (and, for a write-through, announces it); whether it worked.
    async fn put(&self, key: &str, value: &Bytes, ttl: Duration, fill: Fill) -> bool {
        match &self.redis {
            Some(redis) => {
                let mut set = redis::cmd("SET");
                set.arg(format!("cache:{key}"))
                    .arg(value.as_ref())
                    .arg("PX")
                    .arg(ttl.as_millis().max(1) as u64);
                if fill == Fill::IfAbsent {
                    // A fill from the store changes nothing other processes could have cached.
                    set.arg("NX");
                    return self.run(redis, vec![set]).await;
                }
                let commands = vec![set, self.announcement(key)];
                self.run(redis, commands).await
            }
            None => {
                let mut local = self
                    .local
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let now = Instant::now();
                let live = local.get(key, now).is_some();
                if fill == Fill::Always || !live {
                    match now.checked_add(ttl) {
                        Some(expires) => {
                            local.insert(key, value.clone(), expires, now);
                        }
                        None => {
                            local.remove(key);
                        }
                    }
                }
                true
            }
        }
    }
}

/// Removes a key's load gate from the map when dropped. Waiters already queued on the gate still
/// hold it and take their turns; a caller arriving later makes a new gate and finds the value
/// the first load cached.
struct GateEntry<'a> {
    loading: &'a Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    key: &'a str,
}

impl Drop for GateEntry<'_> {
    fn drop(&mut self) {
        self.loading
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loads_that_fail_or_are_abandoned_leave_no_gate_behind() {
        let cache = Cache::new(None, Degraded::default());
        for i in 0..1000 {
            let result = cache
                .get_or_load(
                    &format!("no-such-member-{i}"),
                    Duration::from_secs(60),
                    || async { Err::<Bytes, _>("not found") },
                )
                .await;
            assert!(result.is_err());
        }
        let abandoned = cache.get_or_load("slow", Duration::from_secs(60), || async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, ()>(Bytes::new())
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(10), abandoned)
                .await
                .is_err()
        );
        assert_eq!(cache.loading.lock().unwrap().len(), 0);
    }

    #[tokio::test]
    async fn the_local_cache_keeps_a_bounded_number_of_values() {
        let cache = Cache::new(None, Degraded::default());
        for i in 0..(MAX_LOCAL_VALUES + 10_000) {
            cache
                .write_through(
                    &format!("k{i}"),
                    &Bytes::from_static(b"v"),
                    Duration::from_secs(60),
                )
                .await;
        }
        assert!(cache.local.lock().unwrap().len() <= MAX_LOCAL_VALUES);
        let newest = format!("k{}", MAX_LOCAL_VALUES + 9_999);
        let value = cache
            .get_or_load(&newest, Duration::from_secs(60), || async {
                Err::<Bytes, _>("must come from the cache")
            })
            .await;
        assert_eq!(value.as_deref(), Ok(&b"v"[..]));
    }
}
