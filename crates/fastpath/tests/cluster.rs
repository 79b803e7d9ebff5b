//! The fast path on a real three-node Redis Cluster the test starts itself (and stops, even on
//! failure), selected by a `redis+cluster://` URL: shared GCRA limits, locks and single-flight
//! caching work with their keys spread over several nodes.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fastpath::testing::RedisCluster;
use fastpath::{Cache, Decision, Degraded, GcraLimit, Locks, RateLimiter, Redis};

async fn connect(cluster: &RedisCluster) -> Redis {
    let redis = fastpath::connect(&cluster.url()).await.unwrap();
    assert!(redis.is_cluster(), "{redis:?}");
    redis
}

/// The port of the node holding each of `keys` (looked up with `KEYS` on every node, since a
/// master keeps only its own slots' keys); panics when one is on no node.
async fn owners(cluster: &RedisCluster, keys: &[&str]) -> HashMap<String, u16> {
    let mut owners = HashMap::new();
    for (url, port) in cluster.node_urls().iter().zip(&cluster.ports) {
        let mut node = fastpath::connect(url).await.unwrap();
        let held: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut node)
            .await
            .unwrap();
        for key in held {
            owners.insert(key, *port);
        }
    }
    for key in keys {
        assert!(owners.contains_key(*key), "{key} is on no node: {owners:?}");
    }
    owners.retain(|key, _| keys.contains(&key.as_str()));
    owners
}

fn nodes(owners: &HashMap<String, u16>) -> BTreeSet<u16> {
    owners.values().copied().collect()
}

#[tokio::test]
async fn gcra_limits_are_shared_by_every_limiter_on_the_same_cluster() {
    let cluster = RedisCluster::start();
    let limit = GcraLimit {
        rate_per_second: 2.0,
        burst: 4,
    };
    let replica_a = RateLimiter::new(limit, Some(connect(&cluster).await), Degraded::default());
    let replica_b = RateLimiter::new(limit, Some(connect(&cluster).await), Degraded::default());
    let tenants = ["tenant-a", "tenant-b", "tenant-c", "tenant-d"];
    for tenant in tenants {
        // Two "replicas" spend each tenant's burst together, whichever node holds the tenant.
        for limiter in [&replica_a, &replica_b, &replica_a, &replica_b] {
            assert_eq!(
                limiter.check(tenant, 1).await,
                Decision::Allowed,
                "{tenant}"
            );
        }
        assert!(
            matches!(
                replica_a.check(tenant, 1).await,
                Decision::Limited { retry_after } if retry_after <= Duration::from_millis(500)
            ),
            "{tenant}: the shared burst was exceeded"
        );
    }
    let keys = tenants.map(|tenant| format!("gcra:{tenant}"));
    let owners = owners(&cluster, &keys.each_ref().map(String::as_str)).await;
    assert!(
        nodes(&owners).len() >= 2,
        "one node held them all: {owners:?}"
    );

    tokio::time::sleep(Duration::from_millis(550)).await;
    assert_eq!(
        replica_b.check("tenant-a", 1).await,
        Decision::Allowed,
        "the rate refills"
    );
}

#[tokio::test]
async fn locks_exclude_each_other_and_release_on_a_cluster() {
    let cluster = RedisCluster::start();
    let degraded = Degraded::default();
    let pod_a = Locks::new(Some(connect(&cluster).await), degraded.clone());
    let pod_b = Locks::new(Some(connect(&cluster).await), degraded.clone());
    let orders = ["order-1", "order-2", "order-3", "order-4"];
    let mut guards = Vec::new();
    for order in orders {
        guards.push(
            pod_a
                .try_acquire(order, Duration::from_secs(30))
                .await
                .unwrap()
                .expect("free lock"),
        );
        assert!(
            pod_b
                .try_acquire(order, Duration::from_secs(30))
                .await
                .unwrap()
                .is_none(),
            "{order} is held by the other pod"
        );
    }
    let keys = orders.map(|order| format!("lock:{order}"));
    let owners = owners(&cluster, &keys.each_ref().map(String::as_str)).await;
    assert!(
        nodes(&owners).len() >= 2,
        "one node held them all: {owners:?}"
    );

    for (order, guard) in orders.iter().zip(&guards) {
        // The release script runs on the node holding the lock's key.
        assert!(pod_a.release(guard).await.unwrap(), "{order}");
        assert!(
            !pod_a.release(guard).await.unwrap(),
            "{order}: released once"
        );
        assert!(
            pod_b
                .try_acquire(order, Duration::from_secs(30))
                .await
                .unwrap()
                .is_some(),
            "{order} is free again"
        );
    }
    assert!(!degraded.is_degraded());
}

#[tokio::test]
async fn concurrent_misses_load_once_per_key_on_a_cluster() {
    let cluster = RedisCluster::start();
    let degraded = Degraded::default();
    let cache = Cache::new(Some(connect(&cluster).await), degraded.clone());
    let members = ["m-1", "m-2", "m-3", "m-4"];
    let loads = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for member in members {
        for _ in 0..20 {
            let (cache, loads) = (cache.clone(), loads.clone());
            readers.push(tokio::spawn(async move {
                let key = format!("balance:{member}");
                let value = cache
                    .get_or_load(&key, Duration::from_secs(60), || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await; // a slow store read
                        Ok::<_, std::convert::Infallible>(Bytes::from(format!("{member}: 120")))
                    })
                    .await
                    .unwrap();
                assert_eq!(value, format!("{member}: 120"));
            }));
        }
    }
    for reader in readers {
        reader.await.unwrap();
    }
    assert_eq!(
        loads.load(Ordering::SeqCst),
        members.len(),
        "20 concurrent misses per key loaded once each"
    );
    assert!(!degraded.is_degraded());

    let keys = members.map(|member| format!("cache:balance:{member}"));
    let owners = owners(&cluster, &keys.each_ref().map(String::as_str)).await;
    assert!(
        nodes(&owners).len() >= 2,
        "one node held them all: {owners:?}"
    );

    // Read-through from the cluster: a cached value never reaches the loader.
    let cached = cache
        .get_or_load("balance:m-3", Duration::from_secs(60), || async {
            Ok::<_, std::convert::Infallible>(Bytes::from_static(b"from the store"))
        })
        .await
        .unwrap();
    assert_eq!(&cached[..], b"m-3: 120");

    // A second replica's near cache hears the first one's writes through the cluster's pub/sub
    // (the subscription is on one seed node; a message published on any node reaches it).
    let replica = Cache::with_near_cache(
        Some(connect(&cluster).await),
        degraded.clone(),
        "cache",
        fastpath::NearCache {
            ttl: Duration::from_secs(30),
            capacity: 100,
        },
    );
    let started = std::time::Instant::now();
    while !(cache.near_cache_is_serving() && replica.near_cache_is_serving()) {
        assert!(started.elapsed() < Duration::from_secs(5), "not subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let from_cache = async |cache: &Cache| {
        cache
            .get_or_load("balance:m-1", Duration::from_secs(60), || async {
                Err::<Bytes, _>("must come from a cache")
            })
            .await
            .unwrap()
    };
    assert_eq!(from_cache(&replica).await, "m-1: 120");
    cache
        .write_through(
            "balance:m-1",
            &Bytes::from_static(b"m-1: 90"),
            Duration::from_secs(60),
        )
        .await;
    let written = std::time::Instant::now();
    while from_cache(&replica).await != "m-1: 90" {
        assert!(
            written.elapsed() < Duration::from_secs(1),
            "the other replica's near cache kept the old value"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    // A batched limiter syncs keys living on several nodes in one pipeline.
    let limiter = RateLimiter::new(
        GcraLimit {
            rate_per_second: 10.0,
            burst: 100,
        },
        Some(connect(&cluster).await),
        degraded.clone(),
    )
    .with_sync(fastpath::RateLimitSync::Batched {
        interval: Duration::from_secs(3600),
    });
    for tenant in members {
        assert_eq!(limiter.check(tenant, 1).await, Decision::Allowed);
    }
    assert!(limiter.sync_now().await, "synced across nodes");
    assert!(!degraded.is_degraded());
}

#[tokio::test]
async fn a_cluster_url_with_an_empty_seed_is_refused() {
    let error = fastpath::connect("redis+cluster://127.0.0.1:1,,127.0.0.1:2")
        .await
        .unwrap_err();
    assert_eq!(error.kind(), redis::ErrorKind::InvalidClientConfig);
}
