//! Read-through / write-through cache with a TTL. On a miss, one caller per key (in this process)
//! loads the value while the others wait for it — no stampede on the store when a hot key expires.
//! After a write to the store, [`Cache::write_through`] puts the new value (or
//! [`Cache::invalidate`] drops the old one). Values live in Redis when configured (shared by
//! replicas), in process otherwise.
//!
//! A failing Redis is bypassed: every read goes to the loader, which is the source of truth anyway.
//! A write-through or invalidation that fails leaves the key marked *stale*: until Redis has
//! deleted it, reads of that key skip the cache, so a Redis that comes back (or was only
//! unreachable) never serves a value older than the last write.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::expiring::{ExpiringMap, WhenFull};
use crate::{Degraded, Redis};

/// Values the in-process cache keeps at most; expired ones are forgotten first, then those
/// expiring soonest (a cache may always forget: the next read loads again).
const MAX_LOCAL_VALUES: usize = 50_000;

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
    local: Arc<Mutex<ExpiringMap<Bytes>>>,
    /// One gate per key being loaded right now (removed when its load ends, however it ends).
    loading: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Keys whose Redis copy may be older than the store (a write-through or invalidation failed).
    stale: Arc<Mutex<HashSet<String>>>,
    degraded: Degraded,
}

impl Cache {
    /// A cache in Redis when given, in process otherwise.
    pub fn new(redis: Option<Redis>, degraded: Degraded) -> Self {
        Cache {
            redis,
            local: Arc::new(Mutex::new(ExpiringMap::new(
                MAX_LOCAL_VALUES,
                WhenFull::EvictSoonestToExpire,
            ))),
            loading: Arc::default(),
            stale: Arc::default(),
            degraded,
        }
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
        if let Some(value) = self.get(key).await {
            return Ok(value);
        }
        let gate = {
            let mut loading = self
                .loading
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            loading.entry(key.to_owned()).or_default().clone()
        };
        // The gate leaves the map when this load ends — also when the loader fails (a key that
        // does not exist, asked for by anyone) or the caller goes away — so the map holds only
        // keys being loaded right now.
        let _gate_entry = GateEntry {
            loading: &self.loading,
            key,
        };
        let _turn = gate.lock().await;
        // Whoever held the gate before us may have filled the cache.
        if let Some(value) = self.get(key).await {
            return Ok(value);
        }
        let value = load().await?;
        // Only if absent: a write-through that landed while we loaded holds the newer value.
        self.put(key, &value, ttl, Fill::IfAbsent).await;
        Ok(value)
    }

    /// Caches `value` as the new value of `key`, after the write that produced it committed.
    pub async fn write_through(&self, key: &str, value: &Bytes, ttl: Duration) {
        if !self.put(key, value, ttl, Fill::Always).await {
            self.mark_stale(key);
        }
    }

    /// Drops `key` (after a write changed the value).
    pub async fn invalidate(&self, key: &str) {
        self.local
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(key);
        if self.redis.is_some() && !self.delete(&[key.to_owned()]).await {
            self.mark_stale(key);
        }
    }

    fn mark_stale(&self, key: &str) {
        self.stale
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(key.to_owned());
    }

    /// Deletes `keys` from Redis; whether it worked.
    async fn delete(&self, keys: &[String]) -> bool {
        let Some(redis) = &self.redis else {
            return true;
        };
        let mut connection = redis.clone();
        let mut command = redis::cmd("DEL");
        for key in keys {
            command.arg(format!("cache:{key}"));
        }
        let result: Result<i64, _> = command.query_async(&mut connection).await;
        self.degraded.record(&result);
        result.is_ok()
    }

    /// Clears stale keys from Redis once it answers again; `false` while `key` is still stale.
    async fn settle_stale(&self, key: &str) -> bool {
        let stale: Vec<String> = {
            let stale = self
                .stale
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if stale.is_empty() {
                return true;
            }
            stale.iter().cloned().collect()
        };
        if self.delete(&stale).await {
            let mut still = self
                .stale
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for key in &stale {
                still.remove(key);
            }
            return true;
        }
        !stale.iter().any(|stale_key| stale_key == key)
    }

    async fn get(&self, key: &str) -> Option<Bytes> {
        match &self.redis {
            Some(redis) => {
                if !self.settle_stale(key).await {
                    return None;
                }
                let mut connection = redis.clone();
                let result: Result<Option<Vec<u8>>, _> = redis::cmd("GET")
                    .arg(format!("cache:{key}"))
                    .query_async(&mut connection)
                    .await;
                self.degraded.record(&result);
                result.ok().flatten().map(Bytes::from)
            }
            None => {
                let local = self
                    .local
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                local
                    .get(key, Instant::now())
                    .map(|(value, _)| value.clone())
            }
        }
    }

    /// Stores `value`; whether it worked.
    async fn put(&self, key: &str, value: &Bytes, ttl: Duration, fill: Fill) -> bool {
        match &self.redis {
            Some(redis) => {
                let mut connection = redis.clone();
                let mut command = redis::cmd("SET");
                command
                    .arg(format!("cache:{key}"))
                    .arg(value.as_ref())
                    .arg("PX")
                    .arg(ttl.as_millis().max(1) as u64);
                if fill == Fill::IfAbsent {
                    command.arg("NX");
                }
                let result: Result<redis::Value, _> = command.query_async(&mut connection).await;
                self.degraded.record(&result);
                result.is_ok()
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
