//! Redis dies in the middle of a run of writes and reads, then comes back: no write is lost (the
//! store is the record), reads are served from the store meanwhile and never go back in time, and
//! the cache is used again once Redis returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fastpath::testing::RedisServer;
use fastpath::{Cache, Degraded};
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
