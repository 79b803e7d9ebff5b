//! The fast path's hot calls against a real Redis: how many commands they send (counted by the
//! server, `INFO commandstats`), the near cache's invalidation across replicas (pub/sub) and when
//! the subscription or Redis is lost, and batched rate-limit syncing against the exact mode.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastpath::testing::RedisServer;
use fastpath::{
    Cache, Decision, Degraded, GcraLimit, NearCache, RateLimitSync, RateLimiter, Redis,
};

const TTL: Duration = Duration::from_secs(60);
/// Long enough that only an invalidation (never the TTL) can explain a fresh value in a test.
const LONG_NEAR: NearCache = NearCache {
    ttl: Duration::from_secs(30),
    capacity: 1000,
};

/// Commands that touch data (what a cache or limiter sends); the admin's own `CONFIG`/`INFO`
/// and the subscriber's `PING`/`SUBSCRIBE` are left out.
const DATA_COMMANDS: &[&str] = &["get", "set", "del", "publish", "evalsha", "eval", "script"];

async fn reset_stats(admin: &Redis) {
    let mut admin = admin.clone();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut admin)
        .await
        .unwrap();
}

/// Calls per data command since the last reset.
async fn data_calls(admin: &Redis) -> HashMap<String, u64> {
    let mut admin = admin.clone();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut admin)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))?
                .parse()
                .ok()?;
            DATA_COMMANDS
                .contains(&name)
                .then(|| (name.to_owned(), calls))
        })
        .collect()
}

fn total(calls: &HashMap<String, u64>) -> u64 {
    calls.values().sum()
}

async fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn replica(server: &RedisServer, degraded: &Degraded) -> Cache {
    let redis = fastpath::connect(&server.url()).await.unwrap();
    let cache = Cache::with_near_cache(Some(redis), degraded.clone(), "balances", LONG_NEAR);
    wait_until("subscribed", Duration::from_secs(5), || {
        cache.near_cache_is_serving()
    })
    .await;
    cache
}

/// A read that must be served by a cache.
async fn cached(cache: &Cache, key: &str) -> Bytes {
    cache
        .get_or_load(key, TTL, || async {
            Err::<Bytes, _>("the loader was not expected here")
        })
        .await
        .unwrap()
}

/// A read whose loader answers `value`.
async fn read(cache: &Cache, key: &str, value: &'static [u8]) -> Bytes {
    cache
        .get_or_load(key, TTL, || async {
            Ok::<_, ()>(Bytes::from_static(value))
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_near_hit_sends_redis_nothing_a_near_miss_one_command_and_a_full_miss_two() {
    let server = RedisServer::start();
    let admin = fastpath::connect(&server.url()).await.unwrap();
    let cache = replica(&server, &Degraded::default()).await;
    let mut direct = admin.clone();
    let _: () = redis::cmd("SET")
        .arg("cache:balance:m-1")
        .arg("120")
        .query_async(&mut direct)
        .await
        .unwrap();

    reset_stats(&admin).await;
    assert_eq!(cached(&cache, "balance:m-1").await, "120");
    let calls = data_calls(&admin).await;
    assert_eq!(
        (calls.get("get").copied(), total(&calls)),
        (Some(1), 1),
        "a near miss that Redis answers is one GET: {calls:?}"
    );

    reset_stats(&admin).await;
    for _ in 0..100 {
        assert_eq!(cached(&cache, "balance:m-1").await, "120");
    }
    let calls = data_calls(&admin).await;
    assert_eq!(total(&calls), 0, "near hits never reach Redis: {calls:?}");

    reset_stats(&admin).await;
    assert_eq!(read(&cache, "balance:m-2", b"80").await, "80");
    let calls = data_calls(&admin).await;
    assert_eq!(
        (
            calls.get("get").copied(),
            calls.get("set").copied(),
            total(&calls)
        ),
        (Some(1), Some(1), 2),
        "a full miss: one GET, then one SET NX of the loaded value: {calls:?}"
    );
    assert_eq!(cached(&cache, "balance:m-2").await, "80");

    // Fifty concurrent misses: one load, and the waiters find the value in the near cache
    // rather than asking Redis a second time each.
    reset_stats(&admin).await;
    let loads = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..50 {
        let (cache, loads) = (cache.clone(), loads.clone());
        readers.push(tokio::spawn(async move {
            cache
                .get_or_load("balance:m-3", TTL, || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, ()>(Bytes::from_static(b"7"))
                })
                .await
                .unwrap()
        }));
    }
    for reader in readers {
        assert_eq!(reader.await.unwrap(), "7");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    let calls = data_calls(&admin).await;
    assert!(
        calls.get("get").copied().unwrap_or(0) <= 50 && calls.get("set").copied() == Some(1),
        "at most one GET per caller: {calls:?}"
    );
}

#[tokio::test]
async fn a_write_in_one_replica_drops_the_near_value_of_another_within_the_pubsub_delay() {
    let server = RedisServer::start();
    let degraded = Degraded::default();
    let (a, b) = (
        replica(&server, &degraded).await,
        replica(&server, &degraded).await,
    );
    assert_eq!(read(&b, "balance:m-1", b"v1").await, "v1");
    assert_eq!(cached(&b, "balance:m-1").await, "v1", "B's near copy");

    let written = Instant::now();
    a.write_through("balance:m-1", &Bytes::from_static(b"v2"), TTL)
        .await;
    assert_eq!(
        cached(&a, "balance:m-1").await,
        "v2",
        "A's own write, at once"
    );
    loop {
        if cached(&b, "balance:m-1").await == "v2" {
            break;
        }
        assert!(
            written.elapsed() < Duration::from_secs(1),
            "B still serves the old value (near TTL is 30 s)"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    a.invalidate("balance:m-1").await;
    let invalidated = Instant::now();
    loop {
        if read(&b, "balance:m-1", b"v3").await == "v3" {
            break;
        }
        assert!(invalidated.elapsed() < Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(!degraded.is_degraded());
}

#[tokio::test]
async fn a_lost_subscription_clears_the_near_cache_and_redis_down_leaves_reads_to_the_loader() {
    let mut server = RedisServer::start();
    let admin = fastpath::connect(&server.url()).await.unwrap();
    let degraded = Degraded::default();
    let cache = replica(&server, &degraded).await;
    assert_eq!(read(&cache, "balance:m-1", b"v1").await, "v1");
    assert_eq!(cache.near_cache_len(), 1);
    // An idle subscription answers its pings (one a second) and stays up.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(cache.near_cache_is_serving() && cache.near_cache_len() == 1);

    // The subscription is killed and a write's message is lost with it (here: written to Redis
    // without any announcement).
    let mut direct = admin.clone();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut direct)
        .await
        .unwrap();
    assert!(killed >= 1);
    let _: () = redis::cmd("SET")
        .arg("cache:balance:m-1")
        .arg("v2")
        .query_async(&mut direct)
        .await
        .unwrap();
    let lost = Instant::now();
    loop {
        if cached(&cache, "balance:m-1").await == "v2" {
            break;
        }
        assert!(
            lost.elapsed() < Duration::from_secs(2),
            "the near cache kept a value across a lost subscription"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_until("subscribed again", Duration::from_secs(5), || {
        cache.near_cache_is_serving()
    })
    .await;
    assert_eq!(cached(&cache, "balance:m-1").await, "v2");

    // Redis dies: the near cache goes off with its subscription, and reads come from the loader.
    server.kill();
    wait_until("near cache off", Duration::from_secs(5), || {
        !cache.near_cache_is_serving()
    })
    .await;
    assert_eq!(cache.near_cache_len(), 0);
    assert_eq!(
        read(&cache, "balance:m-1", b"from the store").await,
        "from the store"
    );
    assert!(degraded.is_degraded());
}

#[tokio::test]
async fn with_the_near_cache_on_a_failed_write_through_never_lets_the_old_value_be_served() {
    let server = RedisServer::start();
    let degraded = Degraded::default();
    let (a, b) = (
        replica(&server, &degraded).await,
        replica(&server, &degraded).await,
    );
    a.write_through("k", &Bytes::from_static(b"old"), TTL).await;
    assert_eq!(cached(&a, "k").await, "old");

    let mut admin = fastpath::connect(&server.url()).await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query_async(&mut admin)
        .await
        .unwrap();
    let big = Bytes::from(vec![b'x'; 1 << 20]);
    a.write_through("k", &big, TTL).await;
    assert!(degraded.is_degraded(), "the refused write was noticed");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query_async(&mut admin)
        .await
        .unwrap();

    let value = a
        .get_or_load("k", TTL, || async { Ok::<_, ()>(big.clone()) })
        .await
        .unwrap();
    assert_eq!(
        value.len(),
        big.len(),
        "never the old value, near or in Redis"
    );
    assert_eq!(cached(&a, "k").await.len(), big.len());
    // The other replica never cached "old" near; once A's read settled the stale key, Redis
    // holds no old value for it either.
    let other = b
        .get_or_load("k", TTL, || async { Ok::<_, ()>(big.clone()) })
        .await
        .unwrap();
    assert_eq!(other.len(), big.len());
}

const SHARED: GcraLimit = GcraLimit {
    rate_per_second: 50.0,
    burst: 20,
};

/// Two replicas call as fast as every millisecond for about a second; what they were allowed in
/// total, and for how long they ran.
async fn hammer(a: Arc<RateLimiter>, b: Arc<RateLimiter>) -> (u64, Duration) {
    let started = Instant::now();
    let run = |limiter: Arc<RateLimiter>| {
        tokio::spawn(async move {
            let mut allowed = 0u64;
            while started.elapsed() < Duration::from_secs(1) {
                if limiter.check("tenant-a", 1).await == Decision::Allowed {
                    allowed += 1;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            allowed
        })
    };
    let (first, second) = (run(a), run(b));
    let allowed = first.await.unwrap() + second.await.unwrap();
    (allowed, started.elapsed())
}

async fn limiter(server: &RedisServer, sync: RateLimitSync, degraded: &Degraded) -> RateLimiter {
    RateLimiter::new(
        SHARED,
        Some(fastpath::connect(&server.url()).await.unwrap()),
        degraded.clone(),
    )
    .with_sync(sync)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_replicas_share_a_limit_within_the_documented_overshoot_and_exact_stays_exact() {
    let server = RedisServer::start();
    let degraded = Degraded::default();
    let exact_share = |elapsed: Duration| {
        f64::from(SHARED.burst) + SHARED.rate_per_second * elapsed.as_secs_f64()
    };

    let (a, b) = (
        limiter(&server, RateLimitSync::Exact, &degraded).await,
        limiter(&server, RateLimitSync::Exact, &degraded).await,
    );
    let (allowed, elapsed) = hammer(Arc::new(a), Arc::new(b)).await;
    assert!(
        allowed as f64 <= exact_share(elapsed) + 1.0,
        "exact: {allowed} allowed in {elapsed:?}"
    );

    let batched = RateLimitSync::batched();
    let (a, b) = (
        limiter(&server, batched, &degraded).await,
        limiter(&server, batched, &degraded).await,
    );
    // On the same key as a fresh tenant: the exact run's debt must not count.
    let (a, b) = (Arc::new(a), Arc::new(b));
    let admin = fastpath::connect(&server.url()).await.unwrap();
    let mut direct = admin.clone();
    let _: () = redis::cmd("DEL")
        .arg("gcra:tenant-a")
        .query_async(&mut direct)
        .await
        .unwrap();
    let (allowed, elapsed) = hammer(a.clone(), b.clone()).await;
    // The documented bound: replicas × (burst / 10 + what one replica allows during one sync
    // round trip — here at most a call or two, at one call per millisecond).
    let overshoot = 2.0 * (f64::from(SHARED.burst / 10) + 2.0);
    let exact = exact_share(elapsed);
    assert!(
        allowed as f64 <= exact + overshoot,
        "batched: {allowed} allowed in {elapsed:?}; exact {exact:.0} + overshoot {overshoot}"
    );
    assert!(
        allowed as f64 >= exact - 10.0,
        "batched: only {allowed} allowed in {elapsed:?} (exact {exact:.0})"
    );
    assert!(!degraded.is_degraded());

    eprintln!("batched: {allowed} allowed in {elapsed:?} (exact {exact:.0})");
}

#[tokio::test]
async fn a_batched_call_sends_redis_nothing_and_one_sync_is_one_pipeline() {
    let server = RedisServer::start();
    let admin = fastpath::connect(&server.url()).await.unwrap();
    // A burst too large for the early sync, an interval longer than the test.
    let limiter = RateLimiter::new(
        GcraLimit {
            rate_per_second: 100.0,
            burst: 1000,
        },
        Some(fastpath::connect(&server.url()).await.unwrap()),
        Degraded::default(),
    )
    .with_sync(RateLimitSync::Batched {
        interval: Duration::from_secs(3600),
    });
    reset_stats(&admin).await;
    for i in 0..30 {
        assert_eq!(
            limiter.check(&format!("tenant-{}", i % 3), 1).await,
            Decision::Allowed
        );
    }
    let calls = data_calls(&admin).await;
    assert_eq!(total(&calls), 0, "{calls:?}");
    assert!(limiter.sync_now().await);
    let calls = data_calls(&admin).await;
    // `SCRIPT LOAD` once (a fresh Redis), then one script per key touched, in one pipeline
    // (the scripts' own GET/SET are counted by Redis too).
    let scripts = calls.get("evalsha").copied().unwrap_or(0);
    assert!((3..=6).contains(&scripts), "{calls:?}");
    let mut direct = admin.clone();
    let tat: Option<String> = redis::cmd("GET")
        .arg("gcra:tenant-0")
        .query_async(&mut direct)
        .await
        .unwrap();
    assert!(tat.is_some(), "the spend reached Redis");
}

#[tokio::test]
async fn a_batched_limiter_with_redis_down_limits_locally_and_says_it_is_degraded() {
    let mut server = RedisServer::start();
    let degraded = Degraded::default();
    let limiter = limiter(&server, RateLimitSync::batched(), &degraded).await;
    assert_eq!(limiter.check("t", 1).await, Decision::Allowed);
    assert!(limiter.sync_now().await);
    assert!(!degraded.is_degraded());

    server.kill();
    let mut allowed = 1;
    while limiter.check("t", 1).await == Decision::Allowed {
        allowed += 1;
        assert!(allowed <= SHARED.burst, "the local limit holds");
    }
    assert_eq!(allowed, SHARED.burst);
    assert!(!limiter.sync_now().await);
    assert!(degraded.is_degraded(), "health can report the fallback");
}
