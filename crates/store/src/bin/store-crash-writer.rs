//! Test helper for `tests/crash.rs`: commits to the store at PATH in a loop (read, compare-and-set,
//! one outbox event per commit) and prints `ack <id> <version>` after each commit returns — until
//! it is killed.

use bytes::Bytes;
use store::{AggregateKey, Commit, EmbeddedOptions, EmbeddedStore, OutboxEvent, Store};

#[tokio::main]
async fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: store-crash-writer PATH");
    let store = EmbeddedStore::open(&path, EmbeddedOptions::default()).expect("open store");
    let mut tasks = Vec::new();
    // Several concurrent writers, so group commits are in play when the kill lands.
    for writer in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0u64.. {
                let id = format!("agg-{writer}-{}", round % 4);
                let key = AggregateKey::new("t", "crash", id.clone());
                let current = store
                    .load(&key)
                    .await
                    .expect("load")
                    .map_or(0, |stored| stored.version);
                let commit = Commit {
                    key,
                    expected_version: current,
                    data: Bytes::from(format!("{id} v{}", current + 1)),
                    index: Vec::new(),
                    events: vec![OutboxEvent {
                        event_id: format!("{id}-{}", current + 1),
                        event_type: "test.Changed".into(),
                        envelope: Bytes::from_static(b"e"),
                    }],
                    idempotency: None,
                };
                let version = store.commit(commit).await.expect("commit");
                println!("ack {id} {version}");
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}
