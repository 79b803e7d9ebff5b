//! The MongoDB engine against the port suite, plus what only it has: its indexes, its document
//! layout, transactions for idempotent commits (and their refusal on a standalone server), write
//! concern options.
//!
//! The tests share one SecantusDB (MongoDB wire protocol, single-node replica set) started for
//! this test binary — or use the server `MONGODB_URI` points at. Each test gets a database of its
//! own, dropped afterwards.

mod suite;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use mongodb::bson::{Document, doc};
use store::testing::MongoServer;
use store::{
    AggregateKey, Commit, IdempotencyRecord, MongoOptions, MongoStore, OutboxEvent, Store,
    StoreError, unix_now,
};

/// The server's connection string: `MONGODB_URI`, or the one SecantusDB of this test binary
/// (its watchdog stops it when the binary exits, as statics are never dropped).
fn server_uri() -> String {
    static SERVER: OnceLock<MongoServer> = OnceLock::new();
    std::env::var("MONGODB_URI").unwrap_or_else(|_| SERVER.get_or_init(MongoServer::start).uri())
}

/// A database of one test, dropped when the test ends (also when it fails).
struct FreshDatabase {
    uri: String,
    name: String,
}

impl FreshDatabase {
    fn new() -> FreshDatabase {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        FreshDatabase {
            uri: server_uri(),
            name: format!(
                "store_test_{}_{}_{}",
                unix_now(),
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }

    async fn connect(&self, options: MongoOptions) -> MongoStore {
        MongoStore::connect(&self.uri, &self.name, options)
            .await
            .expect("connect")
    }

    /// The database through a client of the test's own, to look at the documents.
    async fn database(&self) -> mongodb::Database {
        mongodb::Client::with_uri_str(&self.uri)
            .await
            .expect("client")
            .database(&self.name)
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        // On a thread and runtime of its own: a destructor cannot await, and this one may run
        // while a failed test unwinds.
        let (uri, name) = (self.uri.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|error| error.to_string())?;
            runtime.block_on(async {
                let client = mongodb::Client::with_uri_str(&uri)
                    .await
                    .map_err(|error| error.to_string())?;
                client
                    .database(&name)
                    .drop()
                    .await
                    .map_err(|error| error.to_string())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

async fn open_fresh() -> (Arc<dyn Store>, FreshDatabase) {
    let database = FreshDatabase::new();
    let store = database.connect(MongoOptions::default()).await;
    (Arc::new(store), database)
}

port_suite!(open_fresh);

fn order(id: &str) -> AggregateKey {
    AggregateKey::new("tenant-a", "order", id)
}

fn created(id: &str, events: &[&str]) -> Commit {
    Commit {
        key: order(id),
        expected_version: 0,
        data: Bytes::from(id.to_owned()),
        index: Vec::new(),
        events: events
            .iter()
            .map(|event_id| OutboxEvent {
                event_id: (*event_id).into(),
                event_type: "commerce.checkout.v1.OrderPlaced".into(),
                envelope: Bytes::from(event_id.to_string()),
            })
            .collect(),
        idempotency: None,
    }
}

fn keyed(key: &str) -> IdempotencyRecord {
    IdempotencyRecord {
        tenant: "tenant-a".into(),
        method: "commerce.checkout.v1.OrderService/PlaceOrder".into(),
        key: key.into(),
        request_digest: Bytes::from_static(b"digest"),
        response: Bytes::from_static(b"response"),
        expires_at: unix_now() + 3600,
    }
}

async fn index_keys(collection: &mongodb::Collection<Document>) -> Vec<(String, Document)> {
    let mut cursor = collection.list_indexes().await.expect("list indexes");
    let mut indexes = Vec::new();
    while cursor.advance().await.expect("next index") {
        let index = cursor.deserialize_current().expect("index");
        let name = index
            .options
            .and_then(|options| options.name)
            .unwrap_or_default();
        indexes.push((name, index.keys));
    }
    indexes.sort_by(|a, b| a.0.cmp(&b.0));
    indexes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_creates_the_indexes_with_the_tenant_first_and_is_repeatable() {
    let database = FreshDatabase::new();
    let store = database.connect(MongoOptions::default()).await;
    // A second start-up finds the indexes in place.
    database.connect(MongoOptions::default()).await;
    let db = database.database().await;

    let aggregates = index_keys(&db.collection("aggregates")).await;
    assert_eq!(
        aggregates,
        [
            ("_id_".to_owned(), doc! { "_id": 1 }),
            ("pending".to_owned(), doc! { "pending": 1 }),
            (
                "tenant_kind_index_id".to_owned(),
                doc! { "tenant_id": 1, "kind": 1, "index.n": 1, "index.v": 1, "id": 1 }
            ),
        ]
    );
    let idempotency = index_keys(&db.collection("idempotency")).await;
    let mut expected = vec![("_id_".to_owned(), doc! { "_id": 1 })];
    if store.purges_expired_records() {
        expected.push(("expires".to_owned(), doc! { "expires": 1 }));
    }
    assert_eq!(idempotency, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregate_and_its_pending_events_are_one_document() {
    let database = FreshDatabase::new();
    let store = database.connect(MongoOptions::default()).await;
    store
        .commit(created("o1", &["e1", "e2"]))
        .await
        .expect("commit");
    let aggregates = database
        .database()
        .await
        .collection::<Document>("aggregates");
    let stored = || async {
        aggregates
            .find_one(doc! { "id": "o1" })
            .await
            .expect("find")
            .expect("stored")
    };
    let document = stored().await;
    assert_eq!(
        document.get_str("_id").ok(),
        Some("tenant-a\u{1f}order\u{1f}o1")
    );
    assert_eq!(document.get_i64("version").ok(), Some(1));
    assert_eq!(document.get_bool("pending").ok(), Some(true));
    let outbox = document.get_array("outbox").expect("outbox");
    assert_eq!(outbox.len(), 2);

    let pending = store.pending_events(10).await.expect("pending");
    store.mark_delivered(&pending).await.expect("delivered");
    let document = stored().await;
    assert!(document.get_array("outbox").expect("outbox").is_empty());
    assert!(
        !document.contains_key("pending"),
        "a delivered outbox leaves the relay's index"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_racing_idempotent_writers_leave_exactly_one_transaction_committed() {
    let database = FreshDatabase::new();
    let store = Arc::new(database.connect(MongoOptions::default()).await);
    assert!(
        store.supports_transactions(),
        "these tests need a replica set"
    );
    store.commit(created("o1", &[])).await.expect("create");
    let racers: Vec<_> = (0..8)
        .map(|racer| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut change = created("o1", &[&format!("event-{racer}")]);
                change.expected_version = 1;
                change.idempotency = Some(keyed(&format!("key-{racer}")));
                store.commit(change).await
            })
        })
        .collect();
    let mut results = Vec::new();
    for racer in racers {
        results.push(racer.await.expect("racer"));
    }
    let winners: Vec<usize> = (0..8).filter(|i| results[*i] == Ok(2)).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for (racer, result) in results.iter().enumerate() {
        if racer != winners[0] {
            assert!(
                matches!(result, Err(StoreError::Conflict { found: 2, .. })),
                "{result:?}"
            );
        }
    }
    let events: Vec<String> = store
        .pending_events(100)
        .await
        .expect("pending")
        .into_iter()
        .map(|pending| pending.event.event_id)
        .collect();
    assert_eq!(events, [format!("event-{}", winners[0])]);
    let db = database.database().await;
    let records = db
        .collection::<Document>("idempotency")
        .count_documents(doc! {})
        .await
        .expect("count");
    assert_eq!(records, 1, "only the winner's idempotency record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_by_the_primary_alone_works_the_same() {
    let database = FreshDatabase::new();
    let options = MongoOptions {
        majority: false,
        journal: false,
        retry_writes: false,
    };
    let store = Arc::new(database.connect(options).await);
    suite::versions_are_compare_and_set(store.clone()).await;
    let mut change = created("o2", &["e1"]);
    change.idempotency = Some(keyed("k"));
    assert_eq!(store.commit(change).await, Ok(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_server_refuses_idempotent_and_multi_commits_and_runs_the_rest() {
    if std::env::var_os("MONGODB_URI").is_some() {
        // The server is not ours to restart as a standalone one.
        return;
    }
    let server = MongoServer::start_standalone();
    let store = MongoStore::connect(&server.uri(), "standalone", MongoOptions::default())
        .await
        .expect("connect");
    assert!(!store.supports_transactions());

    let mut keyed_change = created("o1", &["e1"]);
    keyed_change.idempotency = Some(keyed("k1"));
    let refused = store.commit(keyed_change).await;
    assert!(
        matches!(&refused, Err(StoreError::Backend(message)) if message.contains("replica set")),
        "{refused:?}"
    );
    assert_eq!(store.load(&order("o1")).await, Ok(None));
    assert_eq!(
        store
            .idempotency_record("tenant-a", &keyed("k1").method, "k1")
            .await,
        Ok(None)
    );

    // Several commits at once need a transaction too; one alone is an ordinary commit.
    let refused = store
        .commit_all(vec![created("o1", &["e1"]), created("o2", &[])])
        .await;
    assert!(
        matches!(&refused, Err(StoreError::Backend(message)) if message.contains("replica set")),
        "{refused:?}"
    );
    assert_eq!(store.load(&order("o2")).await, Ok(None));
    assert_eq!(
        store.commit_all(vec![created("o1", &["e1"])]).await,
        Ok(vec![1])
    );
    store
        .save_idempotency_record(keyed("k2"))
        .await
        .expect("a record on its own is one document");
    assert_eq!(
        store.pending_events(10).await.map(|events| events.len()),
        Ok(1)
    );
}
