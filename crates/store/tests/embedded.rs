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
