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
