//! GCRA (generic cell rate algorithm) rate limiting: each key keeps one number, its theoretical
//! arrival time (TAT). A call of cost c is allowed when TAT + c·interval − burst·interval ≤ now.
//! In Redis the check-and-update is one Lua script using the server's clock, so every replica
//! shares one limit; without Redis (or while it fails) the same arithmetic runs in process.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{Degraded, Redis};

/// A limit: `rate_per_second` on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GcraLimit {
    /// Sustained calls per second.
    pub rate_per_second: f64,
    /// Calls allowed at once from a full bucket.
    pub burst: u32,
}

impl GcraLimit {
    fn interval_ms(&self) -> f64 {
        1000.0 / self.rate_per_second
    }
}

/// The verdict for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allowed,
    /// Not now; retry after this long.
    Limited {
        /// When a retry can be allowed.
        retry_after: Duration,
    },
}

const GCRA_SCRIPT: &str = r"
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now_ms)
if tat < now_ms then tat = now_ms end
local new_tat = tat + interval * cost
local allow_at = new_tat - tolerance
if allow_at > now_ms then
  return {0, math.ceil(allow_at - now_ms)}
end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now_ms) + 1)
return {1, 0}
";

/// A rate limiter: Redis when configured and reachable, in-process otherwise.
pub struct RateLimiter {
    limit: GcraLimit,
    redis: Option<Redis>,
    script: redis::Script,
    local: Mutex<HashMap<String, f64>>,
    epoch: Instant,
    degraded: Degraded,
}

impl RateLimiter {
    /// A limiter enforcing `limit` per key; `redis` shares the limit across processes.
    pub fn new(limit: GcraLimit, redis: Option<Redis>, degraded: Degraded) -> Self {
        RateLimiter {
            limit,
            redis,
            script: redis::Script::new(GCRA_SCRIPT),
            local: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            degraded,
        }
    }

    /// Charges `cost` to `key`.
    pub async fn check(&self, key: &str, cost: u32) -> Decision {
        if let Some(redis) = &self.redis {
            let mut connection = redis.clone();
            let result: Result<(i64, i64), _> = self
                .script
                .key(format!("gcra:{key}"))
                .arg(self.limit.interval_ms())
                .arg(self.limit.interval_ms() * f64::from(self.limit.burst))
                .arg(cost)
                .invoke_async(&mut connection)
                .await;
            self.degraded.record(&result);
            if let Ok((allowed, wait_ms)) = result {
                return if allowed == 1 {
                    Decision::Allowed
                } else {
                    Decision::Limited {
                        retry_after: Duration::from_millis(wait_ms.max(1) as u64),
                    }
                };
            }
        }
        self.check_locally(key, cost, Instant::now())
    }

    /// The in-process GCRA, also the fallback while Redis fails.
    pub fn check_locally(&self, key: &str, cost: u32, now: Instant) -> Decision {
        let now_ms = now.saturating_duration_since(self.epoch).as_secs_f64() * 1000.0;
        let interval = self.limit.interval_ms();
        let tolerance = interval * f64::from(self.limit.burst);
        let mut tats = self
            .local
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let tat = tats.get(key).copied().unwrap_or(now_ms).max(now_ms);
        let new_tat = tat + interval * f64::from(cost);
        let allow_at = new_tat - tolerance;
        if allow_at > now_ms {
            return Decision::Limited {
                retry_after: Duration::from_secs_f64((allow_at - now_ms) / 1000.0),
            };
        }
        tats.insert(key.to_owned(), new_tat);
        Decision::Allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_gcra_allows_the_burst_then_the_rate() {
        let limiter = RateLimiter::new(
            GcraLimit {
                rate_per_second: 10.0,
                burst: 3,
            },
            None,
            Degraded::default(),
        );
        let start = limiter.epoch + Duration::from_secs(1);
        for _ in 0..3 {
            assert_eq!(limiter.check_locally("t", 1, start), Decision::Allowed);
        }
        match limiter.check_locally("t", 1, start) {
            Decision::Limited { retry_after } => assert!(
                (retry_after.as_secs_f64() - 0.1).abs() < 1e-6,
                "{retry_after:?}"
            ),
            Decision::Allowed => panic!("burst exceeded"),
        }
        assert_eq!(
            limiter.check_locally("other", 1, start),
            Decision::Allowed,
            "keys are independent"
        );
        assert_eq!(
            limiter.check_locally("t", 1, start + Duration::from_millis(100)),
            Decision::Allowed
        );
        assert!(matches!(
            limiter.check_locally("t", 2, start + Duration::from_millis(100)),
            Decision::Limited { .. }
        ));
    }
}
