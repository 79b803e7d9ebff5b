//! The port's promises, checked the same way against every adapter: compare-and-set versions,
//! all-or-nothing commits of aggregate + index + outbox + idempotency record (also across several
//! aggregates with `commit_all`), ordered outbox, idempotency retention, concurrency. Each adapter's test file instantiates [`port_suite!`].

#![allow(dead_code)]

use std::sync::Arc;

use bytes::Bytes;
use store::{
    AggregateKey, Commit, IdempotencyRecord, IndexEntry, OutboxEvent, Store, StoreError, unix_now,
};

/// One `#[tokio::test]` per promise; `$open` is an async fn giving a fresh, empty store and a
/// guard that keeps it alive.
#[macro_export]
macro_rules! port_suite {
    ($open:path) => {
        $crate::port_suite!(@tests $open;
            versions_are_compare_and_set,
            racing_writers_on_one_aggregate_exactly_one_wins_and_the_loser_leaves_nothing,
            a_taken_idempotency_key_refuses_the_whole_commit,
            expired_idempotency_records_are_absent_and_can_be_replaced_and_purged,
            a_standalone_idempotency_record_is_saved_once,
            secondary_indexes_follow_the_aggregate_and_page_by_id,
            an_update_keeps_the_index_entries_it_keeps_and_replaces_the_rest,
            a_job_counting_on_a_refused_one_is_refused_though_another_writer_reached_its_version,
            the_outbox_keeps_each_aggregates_order_until_delivered,
            concurrent_read_modify_write_loses_nothing,
            commit_all_applies_every_commit_or_none,
            racing_commit_alls_over_overlapping_aggregates_lose_no_update,
            commit_all_refuses_commits_of_several_tenants,
        );
    };
    (@tests $open:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let (store, _guard) = $open().await;
                suite::$name(store).await;
            }
        )*
    };
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

pub async fn versions_are_compare_and_set(store: Arc<dyn Store>) {
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

pub async fn racing_writers_on_one_aggregate_exactly_one_wins_and_the_loser_leaves_nothing(
    store: Arc<dyn Store>,
) {
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
                expires_at: unix_now() + 3600,
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
        .pending_events(10)
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

pub async fn a_taken_idempotency_key_refuses_the_whole_commit(store: Arc<dyn Store>) {
    let record = IdempotencyRecord {
        tenant: "tenant-a".into(),
        method: "commerce.checkout.v1.OrderService/PlaceOrder".into(),
        key: "key-1".into(),
        request_digest: Bytes::from_static(b"d1"),
        response: Bytes::from_static(b"order o1"),
        expires_at: unix_now() + 86_400,
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
        store.pending_events(10).await.unwrap().len(),
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

pub async fn secondary_indexes_follow_the_aggregate_and_page_by_id(store: Arc<dyn Store>) {
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

/// Engines may skip index entries an update keeps (the embedded store does); what `find`
/// answers must be exactly the latest entries, also when chained jobs of one `commit_each`
/// change them back and forth inside one group.
pub async fn an_update_keeps_the_index_entries_it_keeps_and_replaces_the_rest(
    store: Arc<dyn Store>,
) {
    let entry = |name: &str, value: &str| IndexEntry {
        name: name.into(),
        value: value.into(),
    };
    let found = |name: &'static str, value: &'static str| {
        let store = store.clone();
        async move {
            store
                .find("tenant-a", "order", &entry(name, value), None, 10)
                .await
                .unwrap()
                .into_iter()
                .map(|(id, stored)| (id, stored.version))
                .collect::<Vec<_>>()
        }
    };
    let mut placed = commit(order("o1"), 0, "placed");
    placed.index = vec![
        customer("c-1"),
        entry("status", "placed"),
        entry("location", "l-1"),
    ];
    store.commit(placed).await.unwrap();
    // Keeps the customer, changes the status, drops the location, adds a region.
    let mut paid = commit(order("o1"), 1, "paid");
    paid.index = vec![
        entry("region", "r-1"),
        entry("status", "paid"),
        customer("c-1"),
    ];
    // Then the same entries again, and then back to a status it had, in one batch of chained jobs.
    let mut again = commit(order("o1"), 2, "paid again");
    again.index = paid.index.clone();
    let mut back = commit(order("o1"), 3, "placed again");
    back.index = vec![customer("c-1"), entry("status", "placed")];
    let outcomes = store.commit_each(vec![vec![paid], vec![again]]).await;
    assert_eq!(outcomes, [Ok(vec![2]), Ok(vec![3])]);
    let o1 = |version| vec![("o1".to_owned(), version)];
    assert_eq!(found("customer_id", "c-1").await, o1(3));
    assert_eq!(found("status", "paid").await, o1(3));
    assert_eq!(found("region", "r-1").await, o1(3));
    assert_eq!(found("status", "placed").await, []);
    assert_eq!(found("location", "l-1").await, []);

    store.commit(back).await.unwrap();
    assert_eq!(found("customer_id", "c-1").await, o1(4));
    assert_eq!(found("status", "placed").await, o1(4));
    assert_eq!(found("status", "paid").await, []);
    assert_eq!(found("region", "r-1").await, []);
}

/// Chained jobs of one `commit_each` count on each other's versions. When a job is refused
/// because another writer moved its aggregate first — to the very version the next job expects —
/// the next job must be refused too, not applied on top of the other writer's state: that is how
/// two replicas' ledger writers, each chaining a batch of entries on the head it had read,
/// linked an entry to one that was never written. A job that shares no aggregate with the
/// refused ones still commits.
pub async fn a_job_counting_on_a_refused_one_is_refused_though_another_writer_reached_its_version(
    store: Arc<dyn Store>,
) {
    store.commit(commit(order("head"), 0, "h1")).await.unwrap();
    // Our writer read version 1; another writer moves the head to 2 first.
    store
        .commit(commit(order("head"), 1, "theirs"))
        .await
        .unwrap();
    let outcomes = store
        .commit_each(vec![
            vec![commit(order("head"), 1, "mine")],
            vec![
                commit(order("head"), 2, "on top of mine"),
                commit(order("entry-2"), 0, "mine too"),
            ],
            vec![commit(order("entry-2"), 1, "on top of that")],
            vec![commit(order("elsewhere"), 0, "unrelated")],
        ])
        .await;
    assert!(
        matches!(outcomes[0], Err(StoreError::Conflict { .. })),
        "{outcomes:?}"
    );
    assert!(
        matches!(outcomes[1], Err(StoreError::Conflict { .. })),
        "a job counting on the refused one was applied: {outcomes:?}"
    );
    assert!(
        matches!(outcomes[2], Err(StoreError::Conflict { .. })),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[3], Ok(vec![1]));
    let head = store.load(&order("head")).await.unwrap().unwrap();
    assert_eq!((head.version, &head.data[..]), (2, &b"theirs"[..]));
    assert_eq!(store.load(&order("entry-2")).await.unwrap(), None);
    assert!(store.load(&order("elsewhere")).await.unwrap().is_some());
}

pub async fn the_outbox_keeps_each_aggregates_order_until_delivered(store: Arc<dyn Store>) {
    let mut first = commit(order("o1"), 0, "placed");
    first.events = vec![event("e1"), event("e2")];
    store.commit(first).await.unwrap();
    let mut other = commit(order("o2"), 0, "placed");
    other.events = vec![event("x1")];
    store.commit(other).await.unwrap();
    let mut second = commit(order("o1"), 1, "paid");
    second.events = vec![event("e3")];
    store.commit(second).await.unwrap();

    let pending = store.pending_events(10).await.unwrap();
    let of = |aggregate: &str| -> Vec<String> {
        pending
            .iter()
            .filter(|p| p.aggregate.id == aggregate)
            .map(|p| p.event.event_id.clone())
            .collect()
    };
    assert_eq!(of("o1"), ["e1", "e2", "e3"]);
    assert_eq!(of("o2"), ["x1"]);
    assert_eq!(pending.len(), 4);
    let o1: Vec<_> = pending
        .iter()
        .filter(|p| p.aggregate == order("o1"))
        .collect();
    assert!(
        o1.windows(2)
            .all(|pair| pair[0].sequence < pair[1].sequence)
    );

    let delivered: Vec<_> = pending
        .iter()
        .filter(|p| ["e1", "e2", "x1"].contains(&p.event.event_id.as_str()))
        .cloned()
        .collect();
    store.mark_delivered(&delivered).await.unwrap();
    // Marking twice (a relay retrying after a lost reply) is harmless.
    store.mark_delivered(&delivered).await.unwrap();
    let rest: Vec<String> = store
        .pending_events(10)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.event.event_id)
        .collect();
    assert_eq!(rest, ["e3"]);
    // A limit smaller than the backlog still starts at each aggregate's oldest event.
    let mut third = commit(order("o1"), 2, "ready");
    third.events = vec![event("e4")];
    store.commit(third).await.unwrap();
    let first_only = store.pending_events(1).await.unwrap();
    assert_eq!(first_only.len(), 1);
    assert_eq!(first_only[0].event.event_id, "e3");
}

pub async fn expired_idempotency_records_are_absent_and_can_be_replaced_and_purged(
    store: Arc<dyn Store>,
) {
    let method = "commerce.checkout.v1.OrderService/PlaceOrder";
    let record = |key: &str, expires_at: u64, response: &'static [u8]| IdempotencyRecord {
        tenant: "tenant-a".into(),
        method: method.into(),
        key: key.into(),
        request_digest: Bytes::from_static(b"digest"),
        response: Bytes::from_static(response),
        expires_at,
    };
    let now = unix_now();
    let mut old = commit(order("o1"), 0, "placed long ago");
    old.idempotency = Some(record("old", now - 10, b"first"));
    store.commit(old).await.unwrap();
    store
        .save_idempotency_record(record("live", now + 3600, b"kept"))
        .await
        .unwrap();
    assert_eq!(
        store
            .idempotency_record("tenant-a", method, "old")
            .await
            .unwrap(),
        None,
        "an expired record is absent"
    );
    // The expired key may be used again.
    let mut again = commit(order("o2"), 0, "placed again");
    again.idempotency = Some(record("old", now + 3600, b"second"));
    store.commit(again).await.unwrap();
    let replaced = store
        .idempotency_record("tenant-a", method, "old")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&replaced.response[..], b"second");

    store
        .save_idempotency_record(record("stale", now - 1, b"stale"))
        .await
        .unwrap();
    assert_eq!(store.purge_expired_idempotency(now).await.unwrap(), 1);
    assert!(
        store
            .idempotency_record("tenant-a", method, "live")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .idempotency_record("tenant-a", method, "old")
            .await
            .unwrap()
            .is_some()
    );
}

pub async fn a_standalone_idempotency_record_is_saved_once(store: Arc<dyn Store>) {
    let record = IdempotencyRecord {
        tenant: "tenant-a".into(),
        method: "commerce.checkout.v1.OrderService/PlaceOrder".into(),
        key: "declined".into(),
        request_digest: Bytes::from_static(b"d"),
        response: Bytes::from_static(b"error: card declined"),
        expires_at: unix_now() + 60,
    };
    store.save_idempotency_record(record.clone()).await.unwrap();
    let second = IdempotencyRecord {
        response: Bytes::from_static(b"other"),
        ..record.clone()
    };
    assert_eq!(
        store.save_idempotency_record(second).await,
        Err(StoreError::IdempotencyKeyTaken("declined".into()))
    );
    // A commit with the same key is refused too, whichever way the record was written.
    let mut change = commit(order("o9"), 0, "placed");
    change.idempotency = Some(record.clone());
    assert_eq!(
        store.commit(change).await,
        Err(StoreError::IdempotencyKeyTaken("declined".into()))
    );
    assert_eq!(store.load(&order("o9")).await.unwrap(), None);
    // Keys are scoped by tenant and method.
    let other_tenant = IdempotencyRecord {
        tenant: "tenant-b".into(),
        ..record.clone()
    };
    store.save_idempotency_record(other_tenant).await.unwrap();
    assert_eq!(
        store
            .idempotency_record("tenant-a", &record.method, "declined")
            .await
            .unwrap(),
        Some(record)
    );
}

pub async fn concurrent_read_modify_write_loses_nothing(store: Arc<dyn Store>) {
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
    assert_eq!((stored.version, &stored.data[..]), (161, &b"160"[..]));
    assert_eq!(store.pending_events(1000).await.unwrap().len(), 160);
}

fn keyed_record(key: &str) -> IdempotencyRecord {
    IdempotencyRecord {
        tenant: "tenant-a".into(),
        method: "commerce.loyalty.v1.LoyaltyService/RedeemReward".into(),
        key: key.into(),
        request_digest: Bytes::from_static(b"digest"),
        response: Bytes::from_static(b"response"),
        expires_at: unix_now() + 3600,
    }
}

/// Nothing of a refused `commit_all` is visible: no state, index entry, event or record.
async fn assert_untouched(store: &Arc<dyn Store>, ids: &[&str], events: usize, keys: &[&str]) {
    for id in ids {
        assert_eq!(store.load(&order(id)).await.unwrap(), None, "{id} written");
    }
    let indexed = store
        .find("tenant-a", "order", &customer("c-1"), None, 10)
        .await
        .unwrap();
    assert!(indexed.is_empty(), "index written: {indexed:?}");
    assert_eq!(store.pending_events(100).await.unwrap().len(), events);
    let method = keyed_record("").method;
    for key in keys {
        assert_eq!(
            store
                .idempotency_record("tenant-a", &method, key)
                .await
                .unwrap(),
            None,
            "record {key} written"
        );
    }
}

pub async fn commit_all_applies_every_commit_or_none(store: Arc<dyn Store>) {
    assert_eq!(store.commit_all(Vec::new()).await, Ok(Vec::new()));
    let mut existing = commit(order("o2"), 0, "o2 v1");
    existing.events = vec![event("o2-created")];
    store.commit(existing).await.unwrap();
    store
        .save_idempotency_record(keyed_record("taken"))
        .await
        .unwrap();

    let batch = |o2_expected: u64, o3_key: &str| {
        let mut first = commit(order("o1"), 0, "o1 v1");
        first.index = vec![customer("c-1")];
        first.events = vec![event("o1-created")];
        first.idempotency = Some(keyed_record("k-1"));
        let mut second = commit(order("o2"), o2_expected, "o2 v2");
        second.index = vec![customer("c-1")];
        second.events = vec![event("o2-changed")];
        let mut third = commit(order("o3"), 0, "o3 v1");
        third.events = vec![event("o3-created")];
        third.idempotency = Some(keyed_record(o3_key));
        vec![first, second, third]
    };

    // The middle commit is stale: none of the three happens.
    assert_eq!(
        store.commit_all(batch(7, "k-3")).await,
        Err(StoreError::Conflict {
            key: "tenant-a/order/o2".into(),
            expected: 7,
            found: 1
        })
    );
    assert_untouched(&store, &["o1", "o3"], 1, &["k-1", "k-3"]).await;
    assert_eq!(
        &store.load(&order("o2")).await.unwrap().unwrap().data[..],
        b"o2 v1"
    );

    // The last commit's key is taken: the first two, already checked, do not happen either.
    assert_eq!(
        store.commit_all(batch(1, "taken")).await,
        Err(StoreError::IdempotencyKeyTaken("taken".into()))
    );
    assert_untouched(&store, &["o1", "o3"], 1, &["k-1"]).await;

    // One key twice in one batch: taken by its first use.
    let mut twice = batch(1, "k-1");
    twice[2].idempotency = Some(keyed_record("k-1"));
    assert_eq!(
        store.commit_all(twice).await,
        Err(StoreError::IdempotencyKeyTaken("k-1".into()))
    );
    assert_untouched(&store, &["o1", "o3"], 1, &["k-1"]).await;

    // One aggregate twice in one batch is refused before anything is checked.
    let duplicate = vec![commit(order("o1"), 0, "a"), commit(order("o1"), 1, "b")];
    assert!(matches!(
        store.commit_all(duplicate).await,
        Err(StoreError::Backend(message)) if message.contains("twice")
    ));
    assert_untouched(&store, &["o1"], 1, &[]).await;

    // All valid: all three happen, with their index entries, events and records.
    assert_eq!(store.commit_all(batch(1, "k-3")).await, Ok(vec![1, 2, 1]));
    let indexed: Vec<String> = store
        .find("tenant-a", "order", &customer("c-1"), None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(indexed, ["o1", "o2"]);
    let mut events: Vec<String> = store
        .pending_events(100)
        .await
        .unwrap()
        .into_iter()
        .map(|pending| pending.event.event_id)
        .collect();
    events.sort();
    assert_eq!(
        events,
        ["o1-created", "o2-changed", "o2-created", "o3-created"]
    );
    let method = keyed_record("").method;
    for key in ["k-1", "k-3"] {
        assert!(
            store
                .idempotency_record("tenant-a", &method, key)
                .await
                .unwrap()
                .is_some()
        );
    }
}

pub async fn racing_commit_alls_over_overlapping_aggregates_lose_no_update(store: Arc<dyn Store>) {
    const COUNTERS: usize = 3;
    const START: i64 = 1000;
    let counter = |i: usize| order(&format!("counter-{i}"));
    for i in 0..COUNTERS {
        store
            .commit(commit(counter(i), 0, &START.to_string()))
            .await
            .unwrap();
    }
    let value = |data: &[u8]| -> i64 { std::str::from_utf8(data).unwrap().parse().unwrap() };
    let mut tasks = Vec::new();
    for task in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..20 {
                // Every pair of counters is moved by several tasks at once.
                let from = (task + round) % COUNTERS;
                let to = (from + 1 + round % 2) % COUNTERS;
                let amount = (task * 7 + round) as i64 % 13 + 1;
                loop {
                    let source = store.load(&counter(from)).await.unwrap().unwrap();
                    let target = store.load(&counter(to)).await.unwrap().unwrap();
                    let mut debit = commit(
                        counter(from),
                        source.version,
                        &(value(&source.data) - amount).to_string(),
                    );
                    debit.events = vec![event(&format!("t{task}-r{round}-debit"))];
                    let mut credit = commit(
                        counter(to),
                        target.version,
                        &(value(&target.data) + amount).to_string(),
                    );
                    credit.events = vec![event(&format!("t{task}-r{round}-credit"))];
                    match store.commit_all(vec![debit, credit]).await {
                        Ok(versions) => {
                            assert_eq!(versions, [source.version + 1, target.version + 1]);
                            break;
                        }
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(other) => panic!("{other}"),
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut total = 0;
    let mut versions = 0;
    for i in 0..COUNTERS {
        let stored = store.load(&counter(i)).await.unwrap().unwrap();
        total += value(&stored.data);
        versions += stored.version;
    }
    assert_eq!(total, START * COUNTERS as i64, "money was created or lost");
    // Each of the 160 transfers changed exactly two counters, once.
    assert_eq!(versions, COUNTERS as u64 + 2 * 160);
    assert_eq!(store.pending_events(1000).await.unwrap().len(), 2 * 160);
}

pub async fn commit_all_refuses_commits_of_several_tenants(store: Arc<dyn Store>) {
    let mut theirs = commit(AggregateKey::new("tenant-b", "order", "o1"), 0, "b");
    theirs.events = vec![event("b-created")];
    let refused = store
        .commit_all(vec![commit(order("o1"), 0, "a"), theirs])
        .await;
    assert!(
        matches!(&refused, Err(StoreError::Backend(message)) if message.contains("one tenant")),
        "{refused:?}"
    );
    assert_untouched(&store, &["o1"], 0, &[]).await;
    assert_eq!(
        store
            .load(&AggregateKey::new("tenant-b", "order", "o1"))
            .await
            .unwrap(),
        None
    );
}
