//! Locks with expiry: `SET key token NX PX ttl` to take, a compare-and-delete script to release,
//! so a holder whose lock expired can never release someone else's. In process without Redis.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{Degraded, Redis};

const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Proof of holding a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockGuard {
    key: String,
    token: String,
}

/// Takes and releases locks.
#[derive(Clone)]
pub struct Locks {
    redis: Option<Redis>,
    local: Arc<Mutex<HashMap<String, (String, Instant)>>>,
    degraded: Degraded,
}

/// Why a lock operation could not be done.
#[derive(Debug, thiserror::Error)]
#[error("lock backend failed: {0}")]
pub struct LockError(#[from] redis::RedisError);

impl Locks {
    /// Locks in Redis when given, in process otherwise.
    pub fn new(redis: Option<Redis>, degraded: Degraded) -> Self {
        Locks {
            redis,
            local: Arc::default(),
            degraded,
        }
    }

    /// Takes `key` for at most `ttl`; `None` when someone else holds it. A configured Redis that
    /// fails is an error, not a fallback: two processes must never both believe they hold a lock.
    pub async fn try_acquire(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<LockGuard>, LockError> {
        let token = uuid::Uuid::now_v7().to_string();
        let key = format!("lock:{key}");
        match &self.redis {
            Some(redis) => {
                let mut connection = redis.clone();
                let result: Result<Option<String>, _> = redis::cmd("SET")
                    .arg(&key)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis() as u64)
                    .query_async(&mut connection)
                    .await;
                self.degraded.record(&result);
                Ok(result?.map(|_| LockGuard { key, token }))
            }
            None => {
                let mut held = self
                    .local
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let now = Instant::now();
                if held.get(&key).is_some_and(|(_, expires)| *expires > now) {
                    return Ok(None);
                }
                held.insert(key.clone(), (token.clone(), now + ttl));
                Ok(Some(LockGuard { key, token }))
            }
        }
    }

    /// Releases a lock if `guard` still holds it; returns whether it did.
    pub async fn release(&self, guard: &LockGuard) -> Result<bool, LockError> {
        match &self.redis {
            Some(redis) => {
                let mut connection = redis.clone();
                let result: Result<i64, _> = redis::Script::new(RELEASE_SCRIPT)
                    .key(&guard.key)
                    .arg(&guard.token)
                    .invoke_async(&mut connection)
                    .await;
                self.degraded.record(&result);
                Ok(result? == 1)
            }
            None => {
                let mut held = self
                    .local
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let ours = held.get(&guard.key).is_some_and(|(token, expires)| {
                    *token == guard.token && *expires > Instant::now()
                });
                if ours {
                    held.remove(&guard.key);
                }
                Ok(ours)
            }
        }
    }
}
