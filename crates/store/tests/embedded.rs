//! The embedded store against the port's promises: compare-and-set versions, all-or-nothing
//! commits of aggregate + index + outbox + idempotency record, ordered outbox, concurrency.

use std::sync::Arc;

use bytes::Bytes;
use store::{
    AggregateKey, Commit, EmbeddedOptions, EmbeddedStore, IdempotencyRecord, IndexEntry,
    OutboxEvent, Store, StoreError,
};

fn open(dir: &tempfile::TempDir, group_commit: bool) -> EmbeddedStore {
    EmbeddedStore::open(
        dir.path().join("store.redb"),
        EmbeddedOptions {
            group_commit,
            ..EmbeddedOptions::default()
        },
    )
    .expect("open")
}

fn order(id: &str) -> AggregateKey {
    AggregateKey::new("tenant-a", "order", id)
}

fn commit(key: AggregateKey, expected_version: u64, data: &str) -> Commit {
    Commit {
        key,
        expected_version,
        data: Bytes::from(data.to_owned()),
        index: Vec::new(),
        events: Vec::new(),
        idempotency: None,
    }
}

fn event(id: &str) -> OutboxEvent {
    OutboxEvent {
        event_id: id.into(),
        event_type: "commerce.checkout.v1.OrderPlaced".into(),
        envelope: Bytes::from(id.to_owned()),
    }
}

fn customer(value: &str) -> IndexEntry {
    IndexEntry {
        name: "customer_id".into(),
        value: value.into(),
    }
}

#[tokio::test]
async fn versions_are_compare_and_set() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, true);
    assert_eq!(store.commit(commit(order("o1"), 0, "placed")).await, Ok(1));
    assert_eq!(
        store.commit(commit(order("o1"), 1, "accepted")).await,
        Ok(2)
    );
    let stale = store.commit(commit(order("o1"), 1, "lost update")).await;
    assert_eq!(
        stale,
        Err(StoreError::Conflict {
            key: "tenant-a/order/o1".into(),
            expected: 1,
            found: 2
        })
    );
    let again = store.commit(commit(order("o1"), 0, "created twice")).await;
    assert!(matches!(again, Err(StoreError::Conflict { found: 2, .. })));
    let stored = store.load(&order("o1")).await.unwrap().unwrap();
    assert_eq!((stored.version, &stored.data[..]), (2, &b"accepted"[..]));
    assert_eq!(store.load(&order("missing")).await.unwrap(), None);
    // Tenants never see each other's aggregates.
    assert_eq!(
        store
            .load(&AggregateKey::new("tenant-b", "order", "o1"))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn racing_writers_on_one_aggregate_exactly_one_wins_and_the_loser_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir, true));
    store.commit(commit(order("o1"), 0, "v1")).await.unwrap();
    let racer = |name: &'static str| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut change = commit(order("o1"), 1, name);
            change.events = vec![event(name)];
            change.idempotency = Some(IdempotencyRecord {
                tenant: "tenant-a".into(),
                method: "commerce.checkout.v1.OrderService/CancelOrder".into(),
                key: name.into(),
                request_digest: Bytes::from_static(b"digest"),
                response: Bytes::from_static(b"response"),
                expires_at: 0,
            });
            store.commit(change).await
        })
    };
    let (a, b) = (racer("writer-a"), racer("writer-b"));
    let results = [a.await.unwrap(), b.await.unwrap()];
    let winners: Vec<usize> = (0..2).filter(|i| results[*i] == Ok(2)).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let (winner, loser) = if winners[0] == 0 {
        ("writer-a", "writer-b")
    } else {
        ("writer-b", "writer-a")
    };
    assert!(matches!(
        results[1 - winners[0]],
        Err(StoreError::Conflict { found: 2, .. })
    ));

    assert_eq!(
        &store.load(&order("o1")).await.unwrap().unwrap().data[..],
        winner.as_bytes()
    );
    let events: Vec<String> = store
        .pending_events(0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.event.event_id)
        .collect();
    assert_eq!(events, [winner]);
    let method = "commerce.checkout.v1.OrderService/CancelOrder";
    assert!(
        store
            .idempotency_record("tenant-a", method, winner)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .idempotency_record("tenant-a", method, loser)
            .await
            .unwrap()
            .is_none(),
        "the loser's record was not written"
    );
}

#[tokio::test]
async fn a_taken_idempotency_key_refuses_the_whole_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, true);
    let record = IdempotencyRecord {
        tenant: "tenant-a".into(),
        method: "commerce.checkout.v1.OrderService/PlaceOrder".into(),
        key: "key-1".into(),
        request_digest: Bytes::from_static(b"d1"),
        response: Bytes::from_static(b"order o1"),
        expires_at: 1_900_000_000,
    };
    let mut first = commit(order("o1"), 0, "placed");
    first.idempotency = Some(record.clone());
    first.events = vec![event("placed-o1")];
    store.commit(first).await.unwrap();

    let mut second = commit(order("o2"), 0, "placed again");
    second.idempotency = Some(IdempotencyRecord {
        response: Bytes::from_static(b"order o2"),
        ..record.clone()
    });
    second.events = vec![event("placed-o2")];
    assert_eq!(
        store.commit(second).await,
        Err(StoreError::IdempotencyKeyTaken("key-1".into()))
    );
    assert_eq!(
        store.load(&order("o2")).await.unwrap(),
        None,
        "no aggregate from a refused commit"
    );
    assert_eq!(
        store.pending_events(0, 10).await.unwrap().len(),
        1,
        "no event from a refused commit"
    );
    assert_eq!(
        store
            .idempotency_record("tenant-a", &record.method, "key-1")
            .await
            .unwrap(),
        Some(record)
    );
}

#[tokio::test]
async fn secondary_indexes_follow_the_aggregate_and_page_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, true);
    for id in ["o3", "o1", "o2"] {
        let mut change = commit(order(id), 0, id);
        change.index = vec![customer("c-42")];
        store.commit(change).await.unwrap();
    }
    let page = |after: Option<&'static str>| {
        let store = store.clone();
        async move {
            store
                .find("tenant-a", "order", &customer("c-42"), after, 2)
                .await
                .unwrap()
                .into_iter()
                .map(|(id, _)| id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(page(None).await, ["o1", "o2"]);
    assert_eq!(page(Some("o2")).await, ["o3"]);

    // Moving o1 to another customer removes it from the old index value.
    let mut moved = commit(order("o1"), 1, "o1 moved");
    moved.index = vec![customer("c-7")];
    store.commit(moved).await.unwrap();
    assert_eq!(page(None).await, ["o2", "o3"]);
    let other = store
        .find("tenant-a", "order", &customer("c-7"), None, 10)
        .await
        .unwrap();
    assert_eq!(
        other
            .iter()
            .map(|(id, v)| (id.as_str(), v.version))
            .collect::<Vec<_>>(),
        [("o1", 2)]
    );
    assert!(
        store
            .find("tenant-b", "order", &customer("c-42"), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn the_outbox_keeps_commit_order_until_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, true);
    let mut first = commit(order("o1"), 0, "placed");
    first.events = vec![event("e1"), event("e2")];
    store.commit(first).await.unwrap();
    let mut second = commit(order("o1"), 1, "paid");
    second.events = vec![event("e3")];
    store.commit(second).await.unwrap();

    let pending = store.pending_events(0, 10).await.unwrap();
    let ids: Vec<(u64, &str)> = pending
        .iter()
        .map(|p| (p.sequence, p.event.event_id.as_str()))
        .collect();
    assert_eq!(ids, [(1, "e1"), (2, "e2"), (3, "e3")]);
    assert_eq!(pending[0].aggregate, order("o1"));
    store.mark_delivered(&[1, 2]).await.unwrap();
    let rest: Vec<u64> = store
        .pending_events(0, 10)
        .await
        .unwrap()
        .iter()
        .map(|p| p.sequence)
        .collect();
    assert_eq!(rest, [3]);
    assert!(store.pending_events(3, 10).await.unwrap().is_empty());
}

async fn increment_concurrently(group_commit: bool) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir, group_commit));
    store
        .commit(commit(order("counter"), 0, "0"))
        .await
        .unwrap();
    let mut writers = Vec::new();
    for writer in 0..16 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for _ in 0..10 {
                // Read-modify-write with retries on conflict: no update may be lost.
                loop {
                    let current = store.load(&order("counter")).await.unwrap().unwrap();
                    let next: u64 = std::str::from_utf8(&current.data)
                        .unwrap()
                        .parse::<u64>()
                        .unwrap()
                        + 1;
                    let mut change = commit(order("counter"), current.version, &next.to_string());
                    change.events = vec![event(&format!("w{writer}-{next}"))];
                    match store.commit(change).await {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(other) => panic!("{other}"),
                    }
                }
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let stored = store.load(&order("counter")).await.unwrap().unwrap();
    assert_eq!(
        (stored.version, &stored.data[..]),
        (161, &b"160"[..]),
        "group commit {group_commit}"
    );
    assert_eq!(store.pending_events(0, 1000).await.unwrap().len(), 160);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_read_modify_write_loses_nothing_with_and_without_group_commit() {
    increment_concurrently(true).await;
    increment_concurrently(false).await;
}

#[tokio::test]
async fn data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir, true);
        store
            .commit(commit(order("o1"), 0, "durable"))
            .await
            .unwrap();
    }
    let store = open(&dir, true);
    assert_eq!(
        &store.load(&order("o1")).await.unwrap().unwrap().data[..],
        b"durable"
    );
}
