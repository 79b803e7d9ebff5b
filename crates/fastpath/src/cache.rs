//! Read-through cache with a TTL. On a miss, one caller per key (in this process) loads the value
//! while the others wait for it — no stampede on the store when a hot key expires. Values live in
//! Redis when configured (shared by replicas), in process otherwise; a failing Redis is bypassed:
//! every read goes to the loader, which is the source of truth anyway.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::{Degraded, Redis};

/// The cache.
#[derive(Clone)]
pub struct Cache {
    redis: Option<Redis>,
    local: Arc<Mutex<HashMap<String, (Bytes, Instant)>>>,
    loading: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    degraded: Degraded,
}

impl Cache {
    /// A cache in Redis when given, in process otherwise.
    pub fn new(redis: Option<Redis>, degraded: Degraded) -> Self {
        Cache {
            redis,
            local: Arc::default(),
            loading: Arc::default(),
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
        let _turn = gate.lock().await;
        // Whoever held the gate before us may have filled the cache.
        if let Some(value) = self.get(key).await {
            return Ok(value);
        }
        let value = load().await?;
        self.put(key, &value, ttl).await;
        self.loading
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(key);
        Ok(value)
    }

    /// Drops `key` (after a write changed the value).
    pub async fn invalidate(&self, key: &str) {
        self.local
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(key);
        if let Some(redis) = &self.redis {
            let mut connection = redis.clone();
            let result: Result<i64, _> = redis::cmd("DEL")
                .arg(format!("cache:{key}"))
                .query_async(&mut connection)
                .await;
            self.degraded.record(&result);
        }
    }

    async fn get(&self, key: &str) -> Option<Bytes> {
        match &self.redis {
            Some(redis) => {
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
                    .get(key)
                    .filter(|(_, expires)| *expires > Instant::now())
                    .map(|(value, _)| value.clone())
            }
        }
    }

    async fn put(&self, key: &str, value: &Bytes, ttl: Duration) {
        match &self.redis {
            Some(redis) => {
                let mut connection = redis.clone();
                let result: Result<(), _> = redis::cmd("SET")
                    .arg(format!("cache:{key}"))
                    .arg(value.as_ref())
                    .arg("PX")
                    .arg(ttl.as_millis().max(1) as u64)
                    .query_async(&mut connection)
                    .await;
                self.degraded.record(&result);
            }
            None => {
                let mut local = self
                    .local
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                local.insert(key.to_owned(), (value.clone(), Instant::now() + ttl));
            }
        }
    }
}
