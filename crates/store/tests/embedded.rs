//! The embedded engine (redb) against the port suite, plus what only it has: group commit on and
//! off, reopening a file, and the operator's check and compact.

mod suite;

use std::sync::Arc;

use bytes::Bytes;
use store::{AggregateKey, Commit, EmbeddedOptions, EmbeddedStore, Store};

async fn open_fresh() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path().join("store.redb"), EmbeddedOptions::default())
        .expect("open");
    (Arc::new(store), dir)
}

port_suite!(open_fresh);

fn created(id: &str, data: &str) -> Commit {
    Commit {
        key: AggregateKey::new("tenant-a", "order", id),
        expected_version: 0,
        data: Bytes::from(data.to_owned()),
        index: Vec::new(),
        events: Vec::new(),
        idempotency: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_read_modify_write_loses_nothing_without_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions {
        group_commit: false,
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open(dir.path().join("store.redb"), options).unwrap();
    suite::concurrent_read_modify_write_loses_nothing(Arc::new(store)).await;
}

#[tokio::test]
async fn data_survives_reopening_and_the_file_checks_and_compacts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    {
        let store = EmbeddedStore::open(&path, EmbeddedOptions::default()).unwrap();
        store.commit(created("o1", "durable")).await.unwrap();
        for i in 0..200 {
            store
                .commit(created(&format!("bulk-{i}"), &"x".repeat(4096)))
                .await
                .unwrap();
        }
    }
    assert_eq!(EmbeddedStore::check(&path), Ok(true));
    EmbeddedStore::compact(&path).unwrap();
    assert_eq!(EmbeddedStore::check(&path), Ok(true));
    let store = EmbeddedStore::open(&path, EmbeddedOptions::default()).unwrap();
    let key = AggregateKey::new("tenant-a", "order", "o1");
    assert_eq!(
        &store.load(&key).await.unwrap().unwrap().data[..],
        b"durable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_commit_all_leaves_nothing_while_the_rest_of_its_group_commits() {
    let store = EmbeddedStore::in_memory().unwrap();
    store.commit(created("stale", "v1")).await.unwrap();
    let with_event = |id: &str| {
        let mut commit = created(id, id);
        commit.events = vec![store::OutboxEvent {
            event_id: id.into(),
            event_type: "test.Created".into(),
            envelope: Bytes::from(id.to_owned()),
        }];
        commit
    };
    // Submitted together, so the writer takes many jobs into one group transaction.
    let jobs: Vec<_> = (0..64)
        .map(|job| {
            let store = store.clone();
            let first = with_event(&format!("a-{job}"));
            let second = if job % 2 == 0 {
                Commit {
                    expected_version: 7,
                    ..created("stale", "lost")
                }
            } else {
                with_event(&format!("b-{job}"))
            };
            tokio::spawn(async move { store.commit_all(vec![first, second]).await })
        })
        .collect();
    for (job, outcome) in jobs.into_iter().enumerate() {
        let outcome = outcome.await.unwrap();
        let a = store
            .load(&AggregateKey::new("tenant-a", "order", format!("a-{job}")))
            .await
            .unwrap();
        if job % 2 == 0 {
            assert!(matches!(outcome, Err(store::StoreError::Conflict { .. })));
            assert_eq!(a, None, "job {job} left its first commit behind");
        } else {
            assert_eq!(outcome, Ok(vec![1, 1]));
            assert!(a.is_some());
        }
    }
    assert_eq!(store.pending_events(1000).await.unwrap().len(), 64);
}

/// `commit_each` applies its jobs in order in the writer's next transaction: a job may count on
/// the version an earlier one writes, a refused job leaves nothing, and jobs that did not count
/// on it still commit.
#[tokio::test]
async fn commit_each_chains_jobs_and_a_refused_one_stops_only_what_counted_on_it() {
    let store = EmbeddedStore::in_memory().unwrap();
    let update = |id: &str, expected: u64, data: &str| Commit {
        expected_version: expected,
        ..created(id, data)
    };
    let outcomes = store
        .commit_each(vec![
            vec![created("x", "x1")],
            vec![update("x", 1, "x2")],
            vec![update("y", 1, "never"), created("z", "never")],
            vec![update("x", 2, "x3")],
            vec![update("y", 1, "counted on the refused job")],
            vec![created("w", "w1"), created("w", "twice")],
            vec![],
        ])
        .await;
    assert_eq!(outcomes[0], Ok(vec![1]));
    assert_eq!(outcomes[1], Ok(vec![2]));
    assert!(matches!(
        outcomes[2],
        Err(store::StoreError::Conflict { .. })
    ));
    assert_eq!(outcomes[3], Ok(vec![3]));
    assert!(matches!(
        outcomes[4],
        Err(store::StoreError::Conflict { .. })
    ));
    assert!(matches!(outcomes[5], Err(store::StoreError::Backend(_))));
    assert_eq!(outcomes[6], Ok(vec![]));
    let stored = |id: &str| AggregateKey::new("tenant-a", "order", id);
    let x = store.load(&stored("x")).await.unwrap().unwrap();
    assert_eq!(&x.data[..], b"x3");
    assert_eq!(store.load(&stored("z")).await.unwrap(), None);
    assert_eq!(store.load(&stored("w")).await.unwrap(), None);
}

/// Outbox deliveries and idempotency records of their own go through the writer too, in order
/// with the commits queued around them.
#[tokio::test]
async fn bookkeeping_writes_go_through_the_writer_in_order() {
    let store = EmbeddedStore::in_memory().unwrap();
    let mut commit = created("o", "o");
    commit.events = vec![store::OutboxEvent {
        event_id: "e".into(),
        event_type: "test.Created".into(),
        envelope: Bytes::from_static(b"e"),
    }];
    store.commit(commit).await.unwrap();
    let pending = store.pending_events(10).await.unwrap();
    let record = store::IdempotencyRecord {
        tenant: "tenant-a".into(),
        method: "/m".into(),
        key: "k".into(),
        request_digest: Bytes::from_static(b"d"),
        response: Bytes::from_static(b"r"),
        expires_at: store::unix_now() + 60,
    };
    let (delivered, saved, again) = tokio::join!(
        store.mark_delivered(&pending),
        store.save_idempotency_record(record.clone()),
        store.save_idempotency_record(record.clone()),
    );
    delivered.unwrap();
    saved.unwrap();
    assert!(matches!(
        again,
        Err(store::StoreError::IdempotencyKeyTaken(_))
    ));
    assert!(store.pending_events(10).await.unwrap().is_empty());
    assert_eq!(
        store
            .idempotency_record("tenant-a", "/m", "k")
            .await
            .unwrap(),
        Some(record)
    );
}

/// Point reads answer without waiting, so each spends tokio's cooperative budget: a task that
/// loops over reads still lets the other tasks of its thread run (here the only thread).
#[tokio::test(flavor = "current_thread")]
async fn a_task_looping_over_reads_lets_others_run() {
    let store = EmbeddedStore::in_memory().unwrap();
    store.commit(created("o", "o")).await.unwrap();
    let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let other = {
        let ran = ran.clone();
        tokio::spawn(async move { ran.store(true, std::sync::atomic::Ordering::SeqCst) })
    };
    let key = AggregateKey::new("tenant-a", "order", "o");
    let mut reads = 0;
    while !ran.load(std::sync::atomic::Ordering::SeqCst) && reads < 10_000 {
        store.load(&key).await.unwrap();
        reads += 1;
    }
    assert!(
        ran.load(std::sync::atomic::Ordering::SeqCst),
        "the other task never ran during {reads} reads"
    );
    other.await.unwrap();
}

/// `count` aggregates in one `commit_all`, each with an idempotency record (key `k{n}`) that
/// lives ten minutes; with `some_expired`, every third one has expired already.
async fn keyed_records(store: &EmbeddedStore, count: usize, some_expired: bool) {
    let now = store::unix_now();
    let commits = (0..count)
        .map(|n| {
            let mut commit = created(&format!("o{n}"), "o");
            commit.idempotency = Some(store::IdempotencyRecord {
                tenant: "tenant-a".into(),
                method: "/m".into(),
                key: format!("k{n}"),
                request_digest: Bytes::from_static(b"d"),
                response: Bytes::from_static(b"r"),
                expires_at: if some_expired && n % 3 == 0 {
                    now - 1
                } else {
                    now + 600
                },
            });
            commit
        })
        .collect();
    store.commit_all(commits).await.unwrap();
}

/// The purge reads the table in slices (its own writer jobs): across slice boundaries it removes
/// exactly the expired records and keeps every live one.
#[tokio::test]
async fn purging_in_slices_removes_exactly_the_expired_records() {
    let store = EmbeddedStore::in_memory().unwrap();
    let count = 10_000; // more than two slices
    keyed_records(&store, count, true).await;
    let removed = store
        .purge_expired_idempotency(store::unix_now())
        .await
        .unwrap();
    assert_eq!(removed, count.div_ceil(3) as u64);
    for n in 0..count {
        let found = store
            .idempotency_record("tenant-a", "/m", &format!("k{n}"))
            .await
            .unwrap();
        assert_eq!(found.is_some(), n % 3 != 0, "record k{n}");
    }
    // A second pass finds nothing more.
    assert_eq!(
        store
            .purge_expired_idempotency(store::unix_now())
            .await
            .unwrap(),
        0
    );
}

/// A commit queued while a purge of a large table runs is not held until the purge ends: it
/// waits for a slice or two. (One job over the whole table held every commit behind it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_does_not_wait_for_a_whole_purge() {
    let store = EmbeddedStore::in_memory().unwrap();
    keyed_records(&store, 60_000, false).await;
    // Purging as of an hour from now removes every record — while reads, at the real time,
    // still see the ones not purged yet.
    let purging = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .purge_expired_idempotency(store::unix_now() + 3_600)
                .await
                .unwrap()
        }
    });
    let present = |key: &'static str| {
        let store = store.clone();
        async move {
            store
                .idempotency_record("tenant-a", "/m", key)
                .await
                .unwrap()
                .is_some()
        }
    };
    // "k0" sorts first, "k9999" last: wait for the first slice to be committed, then commit.
    while present("k0").await {
        tokio::task::yield_now().await;
    }
    store.commit(created("during", "d")).await.unwrap();
    assert!(
        present("k9999").await,
        "the commit waited until the purge reached the end of the table"
    );
    assert_eq!(purging.await.unwrap(), 60_000);
    assert!(!present("k9999").await);
}

/// A cache far smaller than the data (here 64 KiB for ~4 MiB) changes speed, never answers:
/// everything written reads back, before and after reopening.
#[tokio::test]
async fn a_store_with_a_tiny_cache_reads_back_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let options = EmbeddedOptions {
        cache_bytes: 64 << 10,
        ..EmbeddedOptions::default()
    };
    let payload = |n: usize| format!("{n:0>1000}");
    {
        let store = EmbeddedStore::open(&path, options).unwrap();
        for chunk in (0..4_000).collect::<Vec<_>>().chunks(500) {
            let commits = chunk
                .iter()
                .map(|&n| created(&format!("o{n}"), &payload(n)))
                .collect();
            store.commit_all(commits).await.unwrap();
        }
    }
    let store = EmbeddedStore::open(&path, options).unwrap();
    for n in (0..4_000).rev() {
        let stored = store
            .load(&AggregateKey::new("tenant-a", "order", format!("o{n}")))
            .await
            .unwrap()
            .expect("stored");
        assert_eq!(stored.data, payload(n).as_bytes());
    }
}
