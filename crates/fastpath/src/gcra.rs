//! GCRA (generic cell rate algorithm) rate limiting: each key keeps one number, its theoretical
//! arrival time (TAT). A call of cost c is allowed when TAT + c·interval − burst·interval ≤ now.
//! In Redis the check-and-update is one Lua script using the server's clock, so every replica
//! shares one limit; without Redis (or while it fails) the same arithmetic runs in process.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::expiring::{ExpiringMap, WhenFull};
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

    /// Time one unit of cost takes to refill; a rate of zero or less never refills (an interval
    /// of a year is "never" for any caller).
    fn interval(&self) -> Duration {
        const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);
        Duration::try_from_secs_f64(1.0 / self.rate_per_second)
            .map_or(NEVER, |interval| interval.min(NEVER))
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

/// Keys the in-process limiter keeps at most (per limiter). Keys whose state has run out are
/// forgotten long before this; the cap only bites when this many keys are *all* in debt at once,
/// and then the tenth closest to running out are forgotten (see [`RateLimiter::with_capacity`]).
pub const DEFAULT_LOCAL_KEYS: usize = 50_000;

/// A rate limiter: Redis when configured and reachable, in-process otherwise.
pub struct RateLimiter {
    limit: GcraLimit,
    redis: Option<Redis>,
    script: redis::Script,
    /// Each key's theoretical arrival time; a key whose TAT has passed is the same as no key.
    local: Mutex<ExpiringMap<()>>,
    degraded: Degraded,
}

impl RateLimiter {
    /// A limiter enforcing `limit` per key; `redis` shares the limit across processes.
    pub fn new(limit: GcraLimit, redis: Option<Redis>, degraded: Degraded) -> Self {
        RateLimiter {
            limit,
            redis,
            script: redis::Script::new(GCRA_SCRIPT),
            local: Mutex::new(ExpiringMap::new(
                DEFAULT_LOCAL_KEYS,
                WhenFull::EvictSoonestToExpire,
            )),
            degraded,
        }
    }

    /// Keeps at most `keys` keys in process. When that many keys are all in debt and another
    /// arrives, the tenth whose debt runs out soonest are forgotten: each gets a fresh burst on
    /// its next call. That only ever errs on the side of allowing, and it cannot be bought
    /// cheaply: to push one key out, a caller must first put thousands of other keys in debt,
    /// which costs far more calls than the one burst it wins back. Refusing unknown keys instead
    /// would turn a flood of made-up keys into a denial of service for every new caller.
    pub fn with_capacity(mut self, keys: usize) -> Self {
        self.local = Mutex::new(ExpiringMap::new(keys, WhenFull::EvictSoonestToExpire));
        self
    }

    /// Keys the in-process limiter currently holds.
    pub fn local_keys(&self) -> usize {
        self.local
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
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
        let interval = self.limit.interval();
        let tolerance = interval.saturating_mul(self.limit.burst);
        let mut tats = self
            .local
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Debt: how far the key's TAT is ahead of now once this call is charged.
        let debt = tats
            .get(key, now)
            .map_or(Duration::ZERO, |((), tat)| {
                tat.saturating_duration_since(now)
            })
            .saturating_add(interval.saturating_mul(cost));
        if debt > tolerance {
            return Decision::Limited {
                retry_after: debt - tolerance,
            };
        }
        match now.checked_add(debt) {
            Some(new_tat) => {
                tats.insert(key, (), new_tat, now);
            }
            // A TAT beyond what an Instant can hold: only with absurd limits; stay allowing.
            None => {
                tats.remove(key);
            }
        }
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
        let start = Instant::now();
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

    #[test]
    fn a_hundred_thousand_made_up_keys_leave_the_map_bounded_and_a_live_key_limited() {
        let limiter = RateLimiter::new(
            GcraLimit {
                rate_per_second: 10.0,
                burst: 3,
            },
            None,
            Degraded::default(),
        );
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check_locally("victim", 1, start), Decision::Allowed);
        }
        // A flood of one call per made-up key, all within the victim's 300 ms of debt.
        for i in 0..100_000u64 {
            let now = start + Duration::from_nanos(i * 500);
            limiter.check_locally(&format!("random-tenant-{i}"), 1, now);
        }
        assert!(
            limiter.local_keys() <= DEFAULT_LOCAL_KEYS,
            "{} keys held",
            limiter.local_keys()
        );
        assert!(
            matches!(
                limiter.check_locally("victim", 1, start + Duration::from_millis(60)),
                Decision::Limited { .. }
            ),
            "the key in debt is still limited"
        );

        // Keys spread out in time are forgotten as their debt runs out: the map stays small.
        let limiter = RateLimiter::new(
            GcraLimit {
                rate_per_second: 200.0,
                burst: 400,
            },
            None,
            Degraded::default(),
        );
        for i in 0..100_000u64 {
            let now = start + Duration::from_millis(i);
            limiter.check_locally(&format!("random-tenant-{i}"), 1, now);
        }
        assert!(
            limiter.local_keys() <= 2048,
            "{} keys held",
            limiter.local_keys()
        );
    }

    #[test]
    fn a_full_limiter_forgets_the_keys_closest_to_running_out_of_debt() {
        let limiter = RateLimiter::new(
            GcraLimit {
                rate_per_second: 1.0,
                burst: 5,
            },
            None,
            Degraded::default(),
        )
        .with_capacity(100);
        let start = Instant::now();
        for _ in 0..5 {
            assert_eq!(limiter.check_locally("heavy", 1, start), Decision::Allowed);
        }
        for i in 0..1000 {
            assert_eq!(
                limiter.check_locally(&format!("light-{i}"), 1, start),
                Decision::Allowed
            );
            assert!(limiter.local_keys() <= 100);
        }
        assert!(
            matches!(
                limiter.check_locally("heavy", 1, start),
                Decision::Limited { .. }
            ),
            "the key deepest in debt is kept"
        );
    }
}
