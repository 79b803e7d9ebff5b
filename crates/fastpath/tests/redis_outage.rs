//! Redis dies in the middle of a run of writes and reads, then comes back: no write is lost (the
//! store is the record), reads are served from the store meanwhile and never go back in time, and
//! the cache is used again once Redis returns. While Redis is known to be down — killed, or hung
//! — no call through the fast path waits on it, and once it answers a probe it is used again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastpath::testing::RedisServer;
use fastpath::{Cache, Decision, Degraded, GcraLimit, Locks, RateLimiter, TtlRecords};
use store::{AggregateKey, Commit, EmbeddedStore, Store, StoreError};

const WRITES: u64 = 300;
const TTL: Duration = Duration::from_secs(60);

fn balance() -> AggregateKey {
    AggregateKey::new("tenant-a", "balance", "m-1")
}

async fn read(cache: &Cache, store: &Arc<dyn Store>, loads: &AtomicU64) -> u64 {
    let value = cache
        .get_or_load("balance:m-1", TTL, || async {
            loads.fetch_add(1, Ordering::SeqCst);
            let stored = store.load(&balance()).await?.expect("created first");
            Ok::<_, StoreError>(stored.data)
        })
        .await
        .expect("the store answers even when Redis does not");
    std::str::from_utf8(&value).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_redis_mid_run_loses_no_write_and_reads_fall_back_to_the_store() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let degraded = Degraded::default();
    let connection = fastpath::connect(&redis.url()).await.unwrap();
    let cache = Cache::new(Some(connection), degraded.clone());
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory().unwrap());
    store
        .commit(Commit {
            key: balance(),
            expected_version: 0,
            data: Bytes::from_static(b"0"),
            index: Vec::new(),
            events: Vec::new(),
            idempotency: None,
        })
        .await
        .unwrap();

    // Highest value whose commit (and write-through) has returned.
    let committed = Arc::new(AtomicU64::new(0));
    let loads = Arc::new(AtomicU64::new(0));
    let writing = Arc::new(AtomicBool::new(true));
    let saw_degraded = Arc::new(AtomicBool::new(false));

    let reader = {
        let (cache, store, committed, loads, writing, degraded, saw_degraded) = (
            cache.clone(),
            store.clone(),
            committed.clone(),
            loads.clone(),
            writing.clone(),
            degraded.clone(),
            saw_degraded.clone(),
        );
        tokio::spawn(async move {
            let mut reads = 0u64;
            while writing.load(Ordering::SeqCst) {
                let floor = committed.load(Ordering::SeqCst);
                let value = read(&cache, &store, &loads).await;
                assert!(value >= floor, "read {value} after {floor} was committed");
                saw_degraded.fetch_or(degraded.is_degraded(), Ordering::SeqCst);
                reads += 1;
            }
            reads
        })
    };

    let mut restarted = None;
    for value in 1..=WRITES {
        if value == WRITES / 3 {
            redis.kill();
        }
        if value == 2 * WRITES / 3 {
            restarted = Some(RedisServer::start_on(port));
        }
        let data = Bytes::from(value.to_string());
        store
            .commit(Commit {
                key: balance(),
                expected_version: value,
                data: data.clone(),
                index: Vec::new(),
                events: Vec::new(),
                idempotency: None,
            })
            .await
            .expect("writes never depend on Redis");
        cache.write_through("balance:m-1", &data, TTL).await;
        committed.store(value, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    writing.store(false, Ordering::SeqCst);
    let reads = reader.await.unwrap();
    assert!(reads > 50, "the reader kept going ({reads} reads)");
    assert!(
        saw_degraded.load(Ordering::SeqCst),
        "the outage was noticed"
    );

    // Every write is in the store, and the cache agrees once Redis is back.
    let stored = store.load(&balance()).await.unwrap().unwrap();
    assert_eq!(
        (stored.version, &stored.data[..]),
        (WRITES + 1, WRITES.to_string().as_bytes())
    );
    let mut recovered = false;
    for _ in 0..50 {
        let before = loads.load(Ordering::SeqCst);
        assert_eq!(read(&cache, &store, &loads).await, WRITES);
        if loads.load(Ordering::SeqCst) == before && !degraded.is_degraded() {
            recovered = true; // served from Redis without touching the store
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the cache serves from Redis again");
    drop(restarted);
}

#[tokio::test]
async fn a_write_through_that_fails_keeps_the_old_cached_value_from_being_served() {
    let redis = RedisServer::start();
    let degraded = Degraded::default();
    let connection = fastpath::connect(&redis.url()).await.unwrap();
    let cache = Cache::new(Some(connection.clone()), degraded.clone());
    cache
        .write_through("k", &Bytes::from_static(b"old"), TTL)
        .await;

    // Redis refuses writes for a moment (it stays reachable and keeps the old value).
    let mut admin = connection.clone();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query_async(&mut admin)
        .await
        .unwrap();
    let big = Bytes::from(vec![b'x'; 1 << 20]);
    cache.write_through("k", &big, TTL).await;
    assert!(degraded.is_degraded(), "the refused write was noticed");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query_async(&mut admin)
        .await
        .unwrap();

    let value = cache
        .get_or_load("k", TTL, || async { Ok::<_, ()>(big.clone()) })
        .await
        .unwrap();
    assert_eq!(value.len(), big.len(), "never the old value");
}

/// How Redis fails.
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// The process is gone: connections are refused.
    Killed,
    /// The process is frozen (SIGSTOP): connections hang until the response timeout.
    Hung,
}

const ROUNDS: usize = 100;

async fn calls_during_an_outage_answer_at_once_and_use_redis_again_after(failure: Failure) {
    let mut server = RedisServer::start();
    let port = server.port;
    let limit = GcraLimit {
        rate_per_second: 0.5,
        burst: 3,
    };
    // Two replicas, each with its own connection.
    let replica_a = fastpath::connect(&server.url()).await.unwrap();
    let replica_b = fastpath::connect(&server.url()).await.unwrap();
    let degraded = Degraded::default();
    let limiter_a = RateLimiter::new(limit, Some(replica_a.clone()), degraded.clone());
    let limiter_b = RateLimiter::new(limit, Some(replica_b.clone()), degraded.clone());
    let cache = Cache::new(Some(replica_a.clone()), degraded.clone());
    let locks = Locks::new(Some(replica_a.clone()), degraded.clone());
    let records = TtlRecords::new(replica_a.clone());
    assert_eq!(limiter_a.check("warm-up", 1).await, Decision::Allowed);
    assert_eq!(limiter_b.check("warm-up", 1).await, Decision::Allowed);
    assert!(!replica_a.is_down() && !degraded.is_degraded());

    match failure {
        Failure::Killed => server.kill(),
        Failure::Hung => server.pause(),
    }
    // The first call on each connection finds out (refused at once, or after the response
    // timeout when Redis hangs)…
    limiter_a.check("tenant-0", 1).await;
    limiter_b.check("tenant-0", 1).await;
    assert!(replica_a.is_down() && replica_b.is_down(), "{failure:?}");
    assert!(degraded.is_degraded(), "health reports the fallback");

    // …and from then on no call waits on Redis: every part answers from its fallback at once.
    let mut rounds = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS {
        let started = Instant::now();
        let tenant = format!("tenant-{i}");
        assert_eq!(limiter_a.check(&tenant, 1).await, Decision::Allowed);
        assert_eq!(limiter_b.check(&tenant, 1).await, Decision::Allowed);
        let key = format!("balance:m-{i}");
        let value = cache
            .get_or_load(&key, TTL, || async {
                Ok::<_, ()>(Bytes::from_static(b"from the store"))
            })
            .await
            .unwrap();
        assert_eq!(&value[..], b"from the store");
        cache
            .write_through(&key, &Bytes::from_static(b"written"), TTL)
            .await;
        assert!(
            locks
                .try_acquire(&format!("order-{i}"), Duration::from_secs(5))
                .await
                .is_err(),
            "a configured Redis that is down is an error for locks, never a second holder"
        );
        assert!(records.load(&format!("cart-{i}")).await.is_err());
        rounds.push(started.elapsed());
    }
    rounds.sort();
    let (median, p99) = (rounds[ROUNDS / 2], rounds[ROUNDS * 99 / 100]);
    // A round is six fast-path calls; Redis's response timeout alone is 500 ms per call.
    assert!(
        median < Duration::from_millis(20) && p99 < Duration::from_millis(100),
        "{failure:?}: a round of calls took {median:?} (median), {p99:?} (p99)"
    );

    // Redis comes back: the background probe notices without any call having to wait on it.
    let _restarted = match failure {
        Failure::Killed => Some(RedisServer::start_on(port)),
        Failure::Hung => {
            server.resume();
            None
        }
    };
    let back = Instant::now();
    while replica_a.is_down() || replica_b.is_down() {
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "{failure:?}: the probe never reached Redis again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The replicas share one limit again (local limiters would each allow a burst of 3)…
    for limiter in [&limiter_a, &limiter_b, &limiter_a] {
        assert_eq!(limiter.check("after", 1).await, Decision::Allowed);
    }
    assert!(
        matches!(limiter_b.check("after", 1).await, Decision::Limited { .. }),
        "{failure:?}: the shared limit is enforced in Redis again"
    );
    assert!(!degraded.is_degraded(), "health is back to ok");
    // …a value written through is in Redis, and locks are taken there.
    cache
        .write_through("balance:after", &Bytes::from_static(b"42"), TTL)
        .await;
    let mut direct = replica_b.clone();
    let stored: Option<Vec<u8>> = redis::cmd("GET")
        .arg("cache:balance:after")
        .query_async(&mut direct)
        .await
        .unwrap();
    assert_eq!(stored.as_deref(), Some(&b"42"[..]));
    let held = locks
        .try_acquire("order-after", Duration::from_secs(5))
        .await
        .unwrap()
        .expect("free");
    let other_replica = Locks::new(Some(replica_b.clone()), Degraded::default());
    assert!(
        other_replica
            .try_acquire("order-after", Duration::from_secs(5))
            .await
            .unwrap()
            .is_none(),
        "the lock is held in Redis, across replicas"
    );
    assert!(locks.release(&held).await.unwrap());
}

#[tokio::test]
async fn while_a_killed_redis_is_down_no_call_waits_on_it_and_it_is_used_again_once_back() {
    calls_during_an_outage_answer_at_once_and_use_redis_again_after(Failure::Killed).await;
}

#[tokio::test]
async fn while_a_hung_redis_is_down_no_call_waits_on_it_and_it_is_used_again_once_back() {
    calls_during_an_outage_answer_at_once_and_use_redis_again_after(Failure::Hung).await;
}
