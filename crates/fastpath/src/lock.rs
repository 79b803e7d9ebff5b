//! Locks with expiry: `SET key token NX PX ttl` to take, a compare-and-delete script to release,
//! so a holder whose lock expired can never release someone else's. In process without Redis.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::expiring::{ExpiringMap, WhenFull};
use crate::{Degraded, Redis};

/// Locks held in process at most. A lock lives only while a call holds it, so the live ones are
/// bounded by the calls in flight; expired ones (a holder that never released) are forgotten.
/// Should this many ever be live at once, a new lock is refused as busy (`None`) rather than
/// evicting one: evicting would let two holders in.
const MAX_LOCAL_LOCKS: usize = 100_000;

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
    local: Arc<Mutex<ExpiringMap<String>>>,
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
            local: Arc::new(Mutex::new(ExpiringMap::new(
                MAX_LOCAL_LOCKS,
                WhenFull::Refuse,
            ))),
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
                if held.get(&key, now).is_some() {
                    return Ok(None);
                }
                let Some(expires) = now.checked_add(ttl) else {
                    return Ok(None); // a TTL no clock can hold: never granted
                };
                Ok(held
                    .insert(&key, token.clone(), expires, now)
                    .then_some(LockGuard { key, token }))
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
                let ours = held
                    .get(&guard.key, Instant::now())
                    .is_some_and(|(token, _)| *token == guard.token);
                if ours {
                    held.remove(&guard.key);
                }
                Ok(ours)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn locks_never_released_are_forgotten_once_expired() {
        let locks = Locks::new(None, Degraded::default());
        for i in 0..20_000 {
            // Holders that vanish without releasing (a crashed call): 1 ms locks.
            let guard = locks
                .try_acquire(
                    &format!("idempotency:t:m:key-{i}"),
                    Duration::from_millis(1),
                )
                .await
                .unwrap();
            assert!(guard.is_some());
            if i % 1000 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let held = locks.local.lock().unwrap().len();
        assert!(held <= 2048, "{held} locks kept");
        let live = locks
            .try_acquire("held", Duration::from_secs(60))
            .await
            .unwrap()
            .expect("free");
        assert!(
            locks
                .try_acquire("held", Duration::from_secs(60))
                .await
                .unwrap()
                .is_none(),
            "a live lock still excludes"
        );
        assert!(locks.release(&live).await.unwrap());
    }
}
