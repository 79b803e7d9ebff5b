//! The fast path against a real Redis the test starts itself on a free port (and stops, even on
//! failure): shared GCRA limits, locks with expiry, single-flight caching, and degradation to
//! local fallbacks when Redis dies — then recovery when it returns on the same port.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastpath::testing::RedisServer;
use fastpath::{Cache, Decision, Degraded, GcraLimit, Locks, RateLimiter};

#[tokio::test]
async fn gcra_limits_are_shared_by_every_limiter_on_the_same_redis() {
    let server = RedisServer::start();
    let limit = GcraLimit {
        rate_per_second: 2.0,
        burst: 4,
    };
    let replica_a = RateLimiter::new(
        limit,
        Some(fastpath::connect(&server.url()).await.unwrap()),
        Degraded::default(),
    );
    let replica_b = RateLimiter::new(
        limit,
        Some(fastpath::connect(&server.url()).await.unwrap()),
        Degraded::default(),
    );
    // Two "replicas" spend one tenant's burst together.
    for limiter in [&replica_a, &replica_b, &replica_a, &replica_b] {
        assert_eq!(limiter.check("tenant-a", 1).await, Decision::Allowed);
    }
    match replica_a.check("tenant-a", 1).await {
        Decision::Limited { retry_after } => assert!(
            retry_after > Duration::ZERO && retry_after <= Duration::from_millis(500),
            "{retry_after:?}"
        ),
        Decision::Allowed => panic!("the shared burst was exceeded"),
    }
    assert_eq!(
        replica_b.check("tenant-b", 1).await,
        Decision::Allowed,
        "tenants are independent"
    );
    tokio::time::sleep(Duration::from_millis(550)).await;
    assert_eq!(
        replica_b.check("tenant-a", 1).await,
        Decision::Allowed,
        "the rate refills"
    );
}

#[tokio::test]
async fn when_redis_dies_limits_fall_back_locally_and_recover_when_it_returns() {
    let mut server = RedisServer::start();
    let port = server.port;
    let degraded = Degraded::default();
    let limiter = RateLimiter::new(
        GcraLimit {
            rate_per_second: 1000.0,
            burst: 1000,
        },
        Some(fastpath::connect(&server.url()).await.unwrap()),
        degraded.clone(),
    );
    assert_eq!(limiter.check("t", 1).await, Decision::Allowed);
    assert!(!degraded.is_degraded());

    server.kill();
    assert_eq!(
        limiter.check("t", 1).await,
        Decision::Allowed,
        "the local limiter answers"
    );
    assert!(degraded.is_degraded(), "health can report the fallback");

    let _server = RedisServer::start_on(port);
    let started = Instant::now();
    loop {
        limiter.check("t", 1).await;
        if !degraded.is_degraded() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn locks_exclude_each_other_expire_and_release_only_for_their_holder() {
    let server = RedisServer::start();
    let redis = fastpath::connect(&server.url()).await.unwrap();
    let locks = Locks::new(Some(redis), Degraded::default());
    let first = locks
        .try_acquire("order-1", Duration::from_millis(300))
        .await
        .unwrap()
        .expect("free lock");
    assert!(
        locks
            .try_acquire("order-1", Duration::from_millis(300))
            .await
            .unwrap()
            .is_none(),
        "held"
    );
    assert!(
        locks
            .try_acquire("order-2", Duration::from_millis(300))
            .await
            .unwrap()
            .is_some(),
        "other keys are free"
    );

    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = locks
        .try_acquire("order-1", Duration::from_secs(5))
        .await
        .unwrap()
        .expect("expired lock can be taken");
    assert!(
        !locks.release(&first).await.unwrap(),
        "an expired holder cannot release the new holder's lock"
    );
    assert!(locks.release(&second).await.unwrap());
    assert!(
        locks
            .try_acquire("order-1", Duration::from_secs(5))
            .await
            .unwrap()
            .is_some()
    );
}

async fn single_flight(cache: Cache) {
    let loads = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..50 {
        let (cache, loads) = (cache.clone(), loads.clone());
        readers.push(tokio::spawn(async move {
            cache
                .get_or_load("balance:m-1", Duration::from_secs(60), || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await; // a slow store read
                    Ok::<_, std::convert::Infallible>(Bytes::from_static(b"120 points"))
                })
                .await
                .unwrap()
        }));
    }
    for reader in readers {
        assert_eq!(&reader.await.unwrap()[..], b"120 points");
    }
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "50 concurrent misses loaded once"
    );

    cache.invalidate("balance:m-1").await;
    let reloaded = cache
        .get_or_load("balance:m-1", Duration::from_secs(60), || async {
            Ok::<_, std::convert::Infallible>(Bytes::from_static(b"80 points"))
        })
        .await
        .unwrap();
    assert_eq!(
        &reloaded[..],
        b"80 points",
        "invalidation makes the next read load again"
    );
}

#[tokio::test]
async fn concurrent_misses_load_once_in_redis_and_in_process() {
    let server = RedisServer::start();
    single_flight(Cache::new(
        Some(fastpath::connect(&server.url()).await.unwrap()),
        Degraded::default(),
    ))
    .await;
    single_flight(Cache::new(None, Degraded::default())).await;
}

#[tokio::test]
async fn a_dead_redis_is_bypassed_by_the_cache_and_reads_still_work() {
    let mut server = RedisServer::start();
    let degraded = Degraded::default();
    let cache = Cache::new(
        Some(fastpath::connect(&server.url()).await.unwrap()),
        degraded.clone(),
    );
    server.kill();
    let value = cache
        .get_or_load("k", Duration::from_secs(1), || async {
            Ok::<_, std::convert::Infallible>(Bytes::from_static(b"from the store"))
        })
        .await
        .unwrap();
    assert_eq!(&value[..], b"from the store");
    assert!(degraded.is_degraded());
}

#[tokio::test]
async fn ttl_records_compare_and_set_and_expire() {
    let server = RedisServer::start();
    let records = fastpath::TtlRecords::new(fastpath::connect(&server.url()).await.unwrap());
    let ttl = std::time::Duration::from_millis(300);
    assert!(records.load("cart:1").await.unwrap().is_none());
    let first = bytes::Bytes::from_static(b"one");
    assert_eq!(records.save("cart:1", 0, &first, ttl).await.unwrap(), 1);
    // A writer that read version 0 loses to the one that wrote version 1.
    assert!(matches!(
        records.save("cart:1", 0, &first, ttl).await,
        Err(fastpath::RecordError::Conflict { found: 1, .. })
    ));
    let second = bytes::Bytes::from_static(b"two");
    assert_eq!(records.save("cart:1", 1, &second, ttl).await.unwrap(), 2);
    assert_eq!(records.load("cart:1").await.unwrap(), Some((2, second)));
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(records.load("cart:1").await.unwrap().is_none(), "expired");
    assert_eq!(
        records.save("cart:1", 0, &first, ttl).await.unwrap(),
        1,
        "recreated"
    );
}
