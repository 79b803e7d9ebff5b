//! GCRA (generic cell rate algorithm) rate limiting: each key keeps one number, its theoretical
//! arrival time (TAT). A call of cost c is allowed when TAT + c·interval − burst·interval ≤ now.
//! Without Redis (or while it fails) the arithmetic runs in process. With Redis, every replica
//! shares one limit, kept in one of two ways ([`RateLimitSync`]):
//!
//! - **exact**: the check-and-update is one Lua script using the server's clock, so the shared
//!   limit is exact — at the price of one Redis round trip on every call;
//! - **batched**: each call is decided in process (no round trip); a background task pushes each
//!   key's spent cost to Redis and pulls back the shared TAT, for every key touched since the last
//!   sync, in one pipeline — every `interval` (100 ms by default), or at once when a key's unsynced
//!   spend reaches a tenth of its burst. A replica's local TAT becomes the later of its own and
//!   the shared one, so debt run up by any replica is paid by all. What the others cannot see is
//!   each replica's unsynced spend, so the shared limit can be overshot by about
//!   `replicas × (burst / 10 + what one replica allows during one sync round trip)` — at worst
//!   (a sync round trip slower than a burst) what each local bucket allows between two syncs,
//!   `replicas × (burst + rate × interval)` — and the overshoot is paid back (the shared TAT goes into debt)
//!   at the next sync. Spend that cannot be pushed (Redis failing) is dropped: meanwhile each
//!   replica enforces the limit alone, as in exact mode's fallback.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
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

/// Batched sync: adds a key's spent cost (ARGV[2], in calls; ARGV[1] is the interval in ms) to
/// its shared TAT, and returns the TAT's lead over the server's clock in microseconds (0 when the
/// key is idle). A spend of 0 only reads.
const GCRA_SYNC_SCRIPT: &str = r"
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local interval = tonumber(ARGV[1])
local spent = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now_ms)
if tat < now_ms then tat = now_ms end
if spent > 0 then
  tat = tat + interval * spent
  redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil(tat - now_ms) + 1)
end
return math.floor((tat - now_ms) * 1000)
";

/// How a limiter with Redis shares its limit with other replicas (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitSync {
    /// One script per call: the shared limit is exact, and every call waits on Redis.
    Exact,
    /// Calls decided in process; spend pushed and the shared state pulled in one pipeline every
    /// `interval`, or sooner when a key's unsynced spend reaches a tenth of its burst.
    Batched {
        /// Longest time between syncs.
        interval: Duration,
    },
}

impl RateLimitSync {
    /// The default interval of batched syncs.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);

    /// Batched, every [`Self::DEFAULT_INTERVAL`].
    pub const fn batched() -> Self {
        RateLimitSync::Batched {
            interval: Self::DEFAULT_INTERVAL,
        }
    }
}

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
    local: Arc<Mutex<ExpiringMap<()>>>,
    degraded: Degraded,
    /// Batched sync state; `None` in exact mode or without Redis.
    batch: Option<Arc<Batch>>,
}

/// The spend not yet pushed to Redis, and what wakes the sync task early.
struct Batch {
    interval: Duration,
    /// Unsynced cost per key touched since the last sync (0: limited calls only; its shared
    /// state is still pulled).
    pending: Mutex<HashMap<String, u64>>,
    /// Unsynced cost of one key that triggers a sync at once.
    early: u64,
    wake: tokio::sync::Notify,
    started: AtomicBool,
}

impl RateLimiter {
    /// A limiter enforcing `limit` per key; `redis` shares the limit across processes.
    pub fn new(limit: GcraLimit, redis: Option<Redis>, degraded: Degraded) -> Self {
        RateLimiter {
            limit,
            redis,
            script: redis::Script::new(GCRA_SCRIPT),
            local: Arc::new(Mutex::new(ExpiringMap::new(
                DEFAULT_LOCAL_KEYS,
                WhenFull::EvictSoonestToExpire,
            ))),
            degraded,
            batch: None,
        }
    }

    /// Shares the limit through Redis as `sync` says (exact by default). Without Redis, changes
    /// nothing.
    pub fn with_sync(mut self, sync: RateLimitSync) -> Self {
        self.batch = match (sync, &self.redis) {
            (RateLimitSync::Batched { interval }, Some(_)) => Some(Arc::new(Batch {
                interval: interval.max(Duration::from_millis(1)),
                pending: Mutex::default(),
                early: u64::from(self.limit.burst / 10).max(1),
                wake: tokio::sync::Notify::new(),
                started: AtomicBool::new(false),
            })),
            _ => None,
        };
        self
    }

    /// Keeps at most `keys` keys in process. When that many keys are all in debt and another
    /// arrives, the tenth whose debt runs out soonest are forgotten: each gets a fresh burst on
    /// its next call. That only ever errs on the side of allowing, and it cannot be bought
    /// cheaply: to push one key out, a caller must first put thousands of other keys in debt,
    /// which costs far more calls than the one burst it wins back. Refusing unknown keys instead
    /// would turn a flood of made-up keys into a denial of service for every new caller.
    pub fn with_capacity(mut self, keys: usize) -> Self {
        self.local = Arc::new(Mutex::new(ExpiringMap::new(
            keys,
            WhenFull::EvictSoonestToExpire,
        )));
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
        if let Some(batch) = &self.batch {
            return self.check_batched(batch, key, cost);
        }
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

    /// Batched mode: decides in process and notes the spend for the next sync.
    fn check_batched(&self, batch: &Arc<Batch>, key: &str, cost: u32) -> Decision {
        self.start_sync(batch);
        let decision = self.check_locally(key, cost, Instant::now());
        let spent = u64::from(cost) * u64::from(decision == Decision::Allowed);
        let mut pending = batch
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let held = pending.len();
        let unsynced = match pending.get_mut(key) {
            Some(unsynced) => {
                *unsynced += spent;
                *unsynced
            }
            // Bounded like the local map: past that, new keys are decided locally only until
            // the next sync empties the batch.
            None if held < DEFAULT_LOCAL_KEYS => {
                pending.insert(key.to_owned(), spent);
                spent
            }
            None => {
                batch.wake.notify_one();
                return decision;
            }
        };
        drop(pending);
        if unsynced >= batch.early {
            batch.wake.notify_one();
        }
        decision
    }

    /// Starts the batch's sync task (once; it ends when the limiter is dropped).
    fn start_sync(&self, batch: &Arc<Batch>) {
        if batch.started.load(Ordering::Relaxed) || batch.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(sync) = self.sync_task(batch) else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(sync.run());
            }
            // Outside a runtime nothing is synced: the limit is enforced locally.
            Err(_) => batch.started.store(false, Ordering::Release),
        }
    }

    fn sync_task(&self, batch: &Arc<Batch>) -> Option<Syncer> {
        Some(Syncer {
            batch: Arc::downgrade(batch),
            local: Arc::downgrade(&self.local),
            redis: self.redis.clone()?,
            script: redis::Script::new(GCRA_SYNC_SCRIPT),
            interval_ms: self.limit.interval_ms(),
            interval: self.limit.interval(),
            degraded: self.degraded.clone(),
        })
    }

    /// Pushes the unsynced spend and pulls the shared state now (batched mode; for tests and
    /// shutdown). Whether it reached Redis.
    pub async fn sync_now(&self) -> bool {
        let Some(batch) = &self.batch else {
            return true;
        };
        let Some(sync) = self.sync_task(batch) else {
            return true;
        };
        sync.once().await
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

/// The batched mode's sync task.
struct Syncer {
    batch: Weak<Batch>,
    local: Weak<Mutex<ExpiringMap<()>>>,
    redis: Redis,
    script: redis::Script,
    interval_ms: f64,
    interval: Duration,
    degraded: Degraded,
}

impl Syncer {
    async fn run(self) {
        loop {
            {
                let Some(batch) = self.batch.upgrade() else {
                    return;
                };
                tokio::select! {
                    _ = tokio::time::sleep(batch.interval) => {}
                    _ = batch.wake.notified() => {}
                }
            }
            if self.batch.strong_count() == 0 {
                return;
            }
            self.once().await;
        }
    }

    /// One sync: every key touched since the last, in one pipeline (concurrent scripts on a
    /// cluster). Whether it reached Redis.
    async fn once(&self) -> bool {
        let Some(batch) = self.batch.upgrade() else {
            return true;
        };
        let taken: Vec<(String, u64)> = std::mem::take(
            &mut *batch
                .pending
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
        .into_iter()
        .collect();
        if taken.is_empty() {
            return true;
        }
        let mut connection = self.redis.clone();
        let result: Result<Vec<i64>, redis::RedisError> = if self.redis.is_cluster() {
            // A cluster pipeline must stay within one slot: one script per key, concurrently
            // (one round trip of wall time).
            futures_util::future::join_all(taken.iter().map(|(key, spent)| {
                let mut connection = self.redis.clone();
                let mut invocation = self.script.prepare_invoke();
                invocation
                    .key(format!("gcra:{key}"))
                    .arg(self.interval_ms)
                    .arg(*spent);
                async move { invocation.invoke_async::<i64>(&mut connection).await }
            }))
            .await
            .into_iter()
            .collect()
        } else {
            let pipeline = || {
                let mut pipeline = redis::pipe();
                for (key, spent) in &taken {
                    pipeline.invoke_script(
                        self.script
                            .key(format!("gcra:{key}"))
                            .arg(self.interval_ms)
                            .arg(*spent),
                    );
                }
                pipeline
            };
            let result = pipeline().query_async(&mut connection).await;
            if matches!(&result, Err(error) if error.code() == Some("NOSCRIPT")) {
                // A Redis that restarted (or a new one) does not know the script yet.
                match self
                    .script
                    .prepare_invoke()
                    .load_async(&mut connection)
                    .await
                {
                    Ok(_) => pipeline().query_async(&mut connection).await,
                    Err(error) => Err(error),
                }
            } else {
                result
            }
        };
        self.degraded.record(&result);
        // On failure the spend is dropped: each replica has been enforcing the limit on its own.
        let Ok(leads) = result else {
            return false;
        };
        let Some(local) = self.local.upgrade() else {
            return true;
        };
        let pending = batch
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut tats = local
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        for ((key, _), lead_us) in taken.iter().zip(leads) {
            // The shared TAT, plus what this replica spent since the batch was taken (it is in
            // the next batch, not yet in Redis).
            let since = pending.get(key).copied().unwrap_or(0);
            let since = u32::try_from(since).unwrap_or(u32::MAX);
            let shared = now
                .checked_add(Duration::from_micros(lead_us.max(0) as u64))
                .and_then(|tat| tat.checked_add(self.interval.saturating_mul(since)));
            let Some(shared) = shared else {
                continue;
            };
            let own = tats.get(key, now).map(|((), tat)| tat);
            if own.is_none_or(|own| own < shared) && shared > now {
                tats.insert(key, (), shared, now);
            }
        }
        true
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
