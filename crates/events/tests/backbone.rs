//! Outbox → relay → bus → consumer, on both buses (in process, and Redis Streams on a
//! `redis-server` or a three-node Redis Cluster the test starts): order per aggregate, dedup by
//! event id, retries, dead letters and replay, claiming from a dead consumer, and events waiting
//! in the outbox while Redis is down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use commerce_api::commerce::checkout::v1::OrderPaid;
use commerce_api::commerce::common::v1::EventEnvelope;
use events::{
    Bus, BusMessage, Consumer, ConsumerConfig, EventHandler, EventSource, HandlerError, Journal,
    MemoryBus, Processed, RedisBus, Relay, RelayConfig, envelope,
};
use store::{AggregateKey, Commit, EmbeddedStore, Store, StoreError};

/// Spelled out rather than computed: operators and other services address the stream by this
/// name, so a change of `events::stream_of` must show up here.
const STREAM: &str = "events:{commerce.checkout.v1}";

/// Applies each event by committing a counter aggregate with the processed-event record, as a
/// real consumer does; fails on demand.
#[derive(Default)]
struct Recorder {
    store: Option<Arc<dyn Store>>,
    /// Event id → how many more attempts fail with Retry (u32::MAX: always).
    failures: Mutex<HashMap<String, u32>>,
    /// Event ids to reject.
    reject: Mutex<Vec<String>>,
    /// Event ids applied, in order.
    applied: Mutex<Vec<String>>,
    attempts: Mutex<HashMap<String, u32>>,
}

#[async_trait]
impl EventHandler for Recorder {
    async fn handle(
        &self,
        event: &EventEnvelope,
        processed: &Processed,
    ) -> Result<(), HandlerError> {
        *self
            .attempts
            .lock()
            .unwrap()
            .entry(event.event_id.clone())
            .or_default() += 1;
        if self.reject.lock().unwrap().contains(&event.event_id) {
            return Err(HandlerError::Reject("not for us".into()));
        }
        if let Some(left) = self.failures.lock().unwrap().get_mut(&event.event_id)
            && *left > 0
        {
            *left = left.saturating_sub(1);
            return Err(HandlerError::Retry("dependency down".into()));
        }
        let paid: OrderPaid =
            envelope::payload(event).map_err(|e| HandlerError::Reject(e.to_string()))?;
        let store = self.store.as_ref().unwrap();
        let key = AggregateKey::new(&event.tenant_id, "applied", &event.event_id);
        let commit = Commit {
            key,
            expected_version: 0,
            data: Bytes::from(paid.order_id.clone()),
            index: Vec::new(),
            events: Vec::new(),
            idempotency: Some(processed.record()),
        };
        match store.commit(commit).await {
            Ok(_) => {
                self.applied.lock().unwrap().push(event.event_id.clone());
                Ok(())
            }
            // Another delivery applied it first.
            Err(StoreError::IdempotencyKeyTaken(_)) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(other) => Err(other.into()),
        }
    }
}

struct Rig {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    relay: Relay,
    recorder: Arc<Recorder>,
}

fn rig(bus: Arc<dyn Bus>, locks: fastpath::Locks) -> Rig {
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory().unwrap());
    let relay = Relay::new(store.clone(), bus.clone(), locks, RelayConfig::default());
    let recorder = Arc::new(Recorder {
        store: Some(store.clone()),
        ..Recorder::default()
    });
    Rig {
        store,
        bus,
        relay,
        recorder,
    }
}

fn config(consumer: &str) -> ConsumerConfig {
    ConsumerConfig {
        backoff_base: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        max_attempts: 4,
        ..ConsumerConfig::new(STREAM, "loyalty-accrual", consumer)
    }
}

impl Rig {
    fn consumer(&self, config: ConsumerConfig) -> Consumer<Arc<Recorder>> {
        Consumer::new(
            self.bus.clone(),
            self.store.clone(),
            self.recorder.clone(),
            config,
        )
    }

    /// Commits order `id` at `version` with one OrderPaid event; returns the event id.
    async fn pay(&self, id: &str, version: u64) -> String {
        let key = AggregateKey::new("tenant-a", "order", id);
        let source = EventSource {
            aggregate: key.clone(),
            version: version + 1,
            occurred_at: SystemTime::now(),
            traceparent: None,
            tracestate: None,
        };
        let event = envelope::outbox_event(
            &source,
            &OrderPaid {
                order_id: id.into(),
                ..OrderPaid::default()
            },
        );
        let event_id = event.event_id.clone();
        self.store
            .commit(Commit {
                key,
                expected_version: version,
                data: Bytes::from_static(b"paid"),
                index: Vec::new(),
                events: vec![event],
                idempotency: None,
            })
            .await
            .unwrap();
        event_id
    }

    fn applied(&self) -> Vec<String> {
        self.recorder.applied.lock().unwrap().clone()
    }
}

async fn drain(consumer: &Consumer<Arc<Recorder>>) {
    while consumer.poll_once().await.unwrap() > 0 {}
}

/// Everything that holds for any bus.
async fn backbone(bus: Arc<dyn Bus>, locks: fastpath::Locks) {
    let rig = rig(bus, locks);
    let consumer = rig.consumer(config("c1"));
    consumer.poll_once().await.unwrap(); // the group exists before anything is published

    // Order per aggregate, through relay and bus.
    let mut expected = Vec::new();
    for version in 0..3 {
        expected.push(rig.pay("o1", version).await);
    }
    assert_eq!(rig.relay.relay_once().await.unwrap(), 3);
    drain(&consumer).await;
    assert_eq!(rig.applied(), expected);
    // In process the events left the outbox only now that the consumer settled them; Redis
    // held them from the XADD on.
    rig.relay.relay_once().await.unwrap();
    assert!(
        rig.store.pending_events(10).await.unwrap().is_empty(),
        "marked delivered"
    );

    // The same event published again (a relay that crashed before marking) is applied once.
    let duplicate = BusMessage {
        event_id: expected[0].clone(),
        event_type: "commerce.checkout.v1.OrderPaid".into(),
        tenant: "tenant-a".into(),
        envelope: resent(&expected[0]),
    };
    rig.bus.publish(STREAM, &duplicate).await.unwrap();
    drain(&consumer).await;
    assert_eq!(rig.applied().len(), 3, "duplicate skipped");

    // Retries: three transient failures, then success — applied once in effect, also when the
    // same event arrives again afterwards.
    let flaky = rig.pay("o2", 0).await;
    rig.recorder
        .failures
        .lock()
        .unwrap()
        .insert(flaky.clone(), 3);
    rig.relay.relay_once().await.unwrap();
    drain(&consumer).await;
    assert_eq!(rig.recorder.attempts.lock().unwrap()[&flaky], 4);
    assert_eq!(rig.applied().last(), Some(&flaky));
    let again = BusMessage {
        event_id: flaky.clone(),
        event_type: "commerce.checkout.v1.OrderPaid".into(),
        tenant: "tenant-a".into(),
        envelope: resent(&flaky),
    };
    rig.bus.publish(STREAM, &again).await.unwrap();
    drain(&consumer).await;
    let applied_flaky = rig.applied().iter().filter(|id| **id == flaky).count();
    assert_eq!(applied_flaky, 1, "processed exactly once in effect");

    // Always failing: dead-lettered after max_attempts; replayed once fixed.
    let broken = rig.pay("o3", 0).await;
    rig.recorder
        .failures
        .lock()
        .unwrap()
        .insert(broken.clone(), u32::MAX);
    let rejected = rig.pay("o4", 0).await;
    rig.recorder.reject.lock().unwrap().push(rejected.clone());
    rig.relay.relay_once().await.unwrap();
    drain(&consumer).await;
    let dead = rig.bus.dead_letters(STREAM, 10).await.unwrap();
    let dead_ids: Vec<&str> = dead.iter().map(|d| d.message.event_id.as_str()).collect();
    assert_eq!(dead_ids, [broken.as_str(), rejected.as_str()]);
    assert!(
        dead[0].error.contains("gave up after 4 attempts"),
        "{}",
        dead[0].error
    );
    assert_eq!(dead[1].error, "not for us");
    assert_eq!(dead[0].group, "loyalty-accrual");
    assert_eq!(
        rig.recorder.attempts.lock().unwrap()[&rejected],
        1,
        "no retry on reject"
    );
    assert!(!rig.applied().contains(&broken));

    rig.recorder.failures.lock().unwrap().remove(&broken);
    assert!(
        rig.bus
            .replay_dead_letter(STREAM, &dead[0].id)
            .await
            .unwrap()
    );
    assert!(
        !rig.bus
            .replay_dead_letter(STREAM, &dead[0].id)
            .await
            .unwrap(),
        "gone"
    );
    drain(&consumer).await;
    assert_eq!(rig.applied().last(), Some(&broken));
    assert_eq!(rig.bus.dead_letters(STREAM, 10).await.unwrap().len(), 1);

    // A consumer that took a message and died: another claims it after the idle time.
    let stuck = rig.pay("o5", 0).await;
    rig.relay.relay_once().await.unwrap();
    let taken = rig
        .bus
        .read(STREAM, "loyalty-accrual", "dead-pod", 10)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    let rescuer = rig.consumer(ConsumerConfig {
        claim_after: Duration::from_millis(100),
        ..config("c2")
    });
    drain(&rescuer).await;
    assert!(
        !rig.applied().contains(&stuck),
        "not claimed before the idle time"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    drain(&rescuer).await;
    assert_eq!(rig.applied().last(), Some(&stuck));

    // A message that keeps killing its consumers is dead-lettered unhandled.
    let poison = rig.pay("o6", 0).await;
    rig.relay.relay_once().await.unwrap();
    rig.bus
        .read(STREAM, "loyalty-accrual", "dead-pod", 10)
        .await
        .unwrap();
    let picky = rig.consumer(ConsumerConfig {
        claim_after: Duration::ZERO,
        max_deliveries: 2,
        ..config("c3")
    });
    for pod in ["dead-pod-2", "dead-pod-3"] {
        rig.bus
            .claim_stale(STREAM, "loyalty-accrual", pod, Duration::ZERO, 10)
            .await
            .unwrap();
    }
    drain(&picky).await;
    assert!(!rig.applied().contains(&poison));
    let last = rig
        .bus
        .dead_letters(STREAM, 10)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(last.message.event_id, poison);
    assert!(last.error.contains("delivered"), "{}", last.error);
}

/// The encoded envelope of an already-published event, as a relay re-sending after a crash
/// would publish it again.
fn resent(event_id: &str) -> Bytes {
    let source = EventSource {
        aggregate: AggregateKey::new("tenant-a", "order", "o1"),
        version: 1,
        occurred_at: SystemTime::now(),
        traceparent: None,
        tracestate: None,
    };
    let mut envelope = envelope::wrap(
        &source,
        &OrderPaid {
            order_id: "o1".into(),
            ..OrderPaid::default()
        },
    );
    envelope.event_id = event_id.to_owned();
    Bytes::from(prost::Message::encode_to_vec(&envelope))
}

#[tokio::test]
async fn the_backbone_on_the_in_process_bus() {
    backbone(
        Arc::new(MemoryBus::new()),
        fastpath::Locks::new(None, fastpath::Degraded::default()),
    )
    .await;
}

#[tokio::test]
async fn the_backbone_on_redis_streams() {
    let redis = fastpath::testing::RedisServer::start();
    let connection = fastpath::connect(&redis.url()).await.unwrap();
    let degraded = fastpath::Degraded::default();
    backbone(
        Arc::new(RedisBus::new(connection.clone(), degraded.clone())),
        fastpath::Locks::new(Some(connection), degraded),
    )
    .await;
}

#[tokio::test]
async fn the_backbone_on_a_redis_cluster() {
    let cluster = fastpath::testing::RedisCluster::start();
    let connection = fastpath::connect(&cluster.url()).await.unwrap();
    let degraded = fastpath::Degraded::default();

    // Dead-lettering and replay move a message between a stream and its dead-letter stream in
    // one MULTI/EXEC, which a cluster refuses across hash slots (as with the old, untagged names).
    let mut probe = connection.clone();
    let old_names: redis::RedisResult<()> = redis::pipe()
        .atomic()
        .xadd("events:commerce.checkout.v1", "*", &[("f", "v")])
        .xadd("events:commerce.checkout.v1:dead", "*", &[("f", "v")])
        .query_async(&mut probe)
        .await;
    assert_eq!(
        old_names.unwrap_err().kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::CrossSlot)
    );
    let slot = |key: String| {
        let mut connection = connection.clone();
        async move {
            redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query_async::<i64>(&mut connection)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        slot(STREAM.to_owned()).await,
        slot(events::dead_letter_stream(STREAM)).await
    );

    backbone(
        Arc::new(RedisBus::new(connection.clone(), degraded.clone())),
        fastpath::Locks::new(Some(connection), degraded.clone()),
    )
    .await;
    assert!(!degraded.is_degraded());
}

#[tokio::test]
async fn events_wait_in_the_outbox_while_redis_is_down_and_flow_when_it_returns() {
    let mut redis = fastpath::testing::RedisServer::start();
    let port = redis.port;
    let connection = fastpath::connect(&redis.url()).await.unwrap();
    let degraded = fastpath::Degraded::default();
    let bus: Arc<dyn Bus> = Arc::new(RedisBus::new(connection.clone(), degraded.clone()));
    let rig = rig(
        bus,
        fastpath::Locks::new(Some(connection), degraded.clone()),
    );
    let consumer = rig.consumer(config("c1"));
    consumer.poll_once().await.unwrap();

    redis.kill();
    let first = rig.pay("o1", 0).await;
    let second = rig.pay("o1", 1).await;
    assert!(rig.relay.relay_once().await.is_err());
    assert!(degraded.is_degraded());
    assert_eq!(rig.store.pending_events(10).await.unwrap().len(), 2, "kept");

    let _redis = fastpath::testing::RedisServer::start_on(port);
    // The connection manager reconnects on its own; the relay's next rounds succeed.
    let mut delivered = 0;
    for _ in 0..50 {
        if let Ok(count) = rig.relay.relay_once().await {
            delivered += count;
            if delivered == 2 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(delivered, 2);
    assert!(!degraded.is_degraded());
    // A fresh Redis lost the group: the consumer's next round fails (NOGROUP), the one after
    // recreates the group and reads from the beginning.
    let lost = consumer.poll_once().await.unwrap_err();
    assert!(lost.0.contains("NOGROUP"), "{lost}");
    drain(&consumer).await;
    assert_eq!(rig.applied(), [first, second]);
}

/// A memory bus with its consumer group, as `commerce serve` creates it before the relay runs.
async fn in_process_bus() -> Arc<dyn Bus> {
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    bus.ensure_group(STREAM, "loyalty-accrual").await.unwrap();
    bus
}

fn local_locks() -> fastpath::Locks {
    fastpath::Locks::new(None, fastpath::Degraded::default())
}

#[tokio::test]
async fn in_process_an_event_leaves_the_outbox_only_after_its_consumer_committed() {
    let rig = rig(in_process_bus().await, local_locks());
    let consumer = rig.consumer(config("c1"));
    let paid = rig.pay("o1", 0).await;

    assert_eq!(rig.relay.relay_once().await.unwrap(), 1, "published");
    assert_eq!(
        rig.relay.relay_once().await.unwrap(),
        0,
        "not published twice while in flight"
    );
    assert_eq!(
        rig.store.pending_events(10).await.unwrap().len(),
        1,
        "still in the outbox: nothing handled it yet"
    );
    drain(&consumer).await;
    assert_eq!(rig.applied(), std::slice::from_ref(&paid));
    assert_eq!(rig.relay.relay_once().await.unwrap(), 1, "settled");
    assert!(rig.store.pending_events(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn in_process_a_process_that_dies_before_its_consumer_ran_publishes_again_and_applies_once() {
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory().unwrap());
    let recorder = Arc::new(Recorder {
        store: Some(store.clone()),
        ..Recorder::default()
    });
    // The first process publishes both events onto its memory bus and dies before its relay
    // sees them settled; the bus goes with it, the store stays.
    let first = Rig {
        store: store.clone(),
        bus: in_process_bus().await,
        relay: Relay::new(
            store.clone(),
            in_process_bus().await,
            local_locks(),
            RelayConfig::default(),
        ),
        recorder: recorder.clone(),
    };
    let lost = first.pay("o1", 0).await;
    let handled = first.pay("o2", 0).await;
    assert_eq!(first.relay.relay_once().await.unwrap(), 2);
    drop(first);
    // o2 was handled before the kill: its effect committed with its processed-event record.
    store
        .commit(Commit {
            key: AggregateKey::new("tenant-a", "applied", &handled),
            expected_version: 0,
            data: Bytes::from_static(b"o2"),
            index: Vec::new(),
            events: Vec::new(),
            idempotency: Some(store::IdempotencyRecord {
                tenant: "tenant-a".into(),
                method: events::processed_method("loyalty-accrual"),
                key: handled.clone(),
                request_digest: Bytes::from(handled.clone()),
                response: Bytes::new(),
                expires_at: store::unix_now() + 3600,
            }),
        })
        .await
        .unwrap();

    let bus = in_process_bus().await;
    let second = Rig {
        store: store.clone(),
        bus: bus.clone(),
        relay: Relay::new(store.clone(), bus, local_locks(), RelayConfig::default()),
        recorder,
    };
    let consumer = second.consumer(config("c1"));
    assert_eq!(
        second.relay.relay_once().await.unwrap(),
        2,
        "published again"
    );
    drain(&consumer).await;
    second.relay.relay_once().await.unwrap();
    assert!(store.pending_events(10).await.unwrap().is_empty());
    assert_eq!(
        second.applied(),
        [lost],
        "the lost one applied now, the handled one not again"
    );
}

#[tokio::test]
async fn shutdown_drains_the_relay_then_the_consumers() {
    let rig = rig(in_process_bus().await, local_locks());
    let mut ids = Vec::new();
    for order in 0..20 {
        ids.push(rig.pay(&format!("o{order}"), 0).await);
    }
    let (stop_relay, relay_stopped) = tokio::sync::oneshot::channel::<()>();
    let (stop_consumer, consumer_stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(rig.relay.clone().run(async {
        let _ = relay_stopped.await;
    }));
    let consumer = tokio::spawn(rig.consumer(config("c1")).run(async {
        let _ = consumer_stopped.await;
    }));
    // Stop at once: nothing has had time to flow yet.
    stop_relay.send(()).unwrap();
    // The consumer keeps running while the relay drains (it waits for their settlement).
    tokio::time::timeout(Duration::from_secs(10), relay)
        .await
        .expect("relay drained within its drain time")
        .unwrap();
    stop_consumer.send(()).unwrap();
    consumer.await.unwrap();
    assert!(rig.store.pending_events(100).await.unwrap().is_empty());
    let mut applied = rig.applied();
    applied.sort();
    ids.sort();
    assert_eq!(applied, ids);
}

/// A rig whose relay journals OrderPaid for the `loyalty-accrual` group.
fn journaled_rig(bus: Arc<dyn Bus>, locks: fastpath::Locks) -> (Rig, Journal) {
    let mut rig = rig(bus, locks);
    let journal = Journal::new(rig.store.clone())
        .expect("loyalty-accrual", &["commerce.checkout.v1.OrderPaid"]);
    rig.relay = rig.relay.clone().with_journal(journal.clone());
    (rig, journal)
}

fn missing_ids(missing: &[events::MissingEffect]) -> Vec<String> {
    missing.iter().map(|m| m.event_id.clone()).collect()
}

#[tokio::test]
async fn events_a_restarted_redis_forgot_are_found_by_the_repair_sweep_and_published_again() {
    let mut redis = fastpath::testing::RedisServer::start();
    let port = redis.port;
    let connection = fastpath::connect(&redis.url()).await.unwrap();
    let degraded = fastpath::Degraded::default();
    let bus: Arc<dyn Bus> = Arc::new(RedisBus::new(connection.clone(), degraded.clone()));
    let (rig, journal) = journaled_rig(
        bus.clone(),
        fastpath::Locks::new(Some(connection), degraded),
    );
    let consumer = rig.consumer(config("c1"));
    consumer.poll_once().await.unwrap();

    let kept = rig.pay("o1", 0).await;
    rig.relay.relay_once().await.unwrap();
    drain(&consumer).await;
    // Published and acknowledged by Redis, so it left the outbox; then Redis restarts without
    // persistence before the consumer read it.
    let lost = rig.pay("o2", 0).await;
    assert_eq!(rig.relay.relay_once().await.unwrap(), 1);
    assert!(rig.store.pending_events(10).await.unwrap().is_empty());
    redis.kill();
    let _redis = fastpath::testing::RedisServer::start_on(port);
    let mut polled = false;
    for _ in 0..50 {
        if consumer.poll_once().await.is_ok() {
            polled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(polled, "the consumer recreated its group on the new Redis");
    drain(&consumer).await;
    assert_eq!(
        rig.applied(),
        std::slice::from_ref(&kept),
        "the lost event never arrived"
    );

    let missing = journal
        .missing("tenant-a", "loyalty-accrual", Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(missing_ids(&missing), std::slice::from_ref(&lost));
    assert_eq!(missing[0].event_type, "commerce.checkout.v1.OrderPaid");

    // Within the grace period the sweep only confirms what was handled.
    let patient = journal
        .sweep(bus.as_ref(), Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(
        (patient.checked, patient.confirmed, patient.republished),
        (2, 1, 0)
    );
    let report = journal.sweep(bus.as_ref(), Duration::ZERO).await.unwrap();
    assert_eq!(
        (report.checked, report.confirmed, report.republished),
        (1, 0, 1)
    );
    drain(&consumer).await;
    assert_eq!(rig.applied(), [kept, lost]);
    let report = journal.sweep(bus.as_ref(), Duration::ZERO).await.unwrap();
    assert_eq!((report.confirmed, report.republished), (1, 0));
    assert!(
        journal
            .missing("tenant-a", "loyalty-accrual", Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn an_event_a_consumer_gives_up_on_is_logged_reported_and_republished_a_bounded_number_of_times()
 {
    let logs = Logs::default();
    let _logging = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .json()
            .with_writer(logs.clone())
            .finish(),
    );
    let bus = in_process_bus().await;
    let (rig, journal) = journaled_rig(bus.clone(), local_locks());
    let consumer = rig.consumer(config("c1"));
    let refused = rig.pay("o1", 0).await;
    rig.recorder.reject.lock().unwrap().push(refused.clone());
    rig.relay.relay_once().await.unwrap();
    drain(&consumer).await;
    rig.relay.relay_once().await.unwrap();
    assert!(
        rig.store.pending_events(10).await.unwrap().is_empty(),
        "a dead-lettered event is settled"
    );
    let line = logs.lines_with(&refused);
    assert!(
        line.iter().any(|line| line.contains("\"level\":\"ERROR\"")
            && line.contains("dead-lettered")
            && line.contains("not for us")
            && line.contains("loyalty-accrual")),
        "{line:?}"
    );

    let missing = journal
        .missing("tenant-a", "loyalty-accrual", Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(missing_ids(&missing), std::slice::from_ref(&refused));
    let mut republished = 0;
    for _ in 0..25 {
        republished += journal
            .sweep(bus.as_ref(), Duration::ZERO)
            .await
            .unwrap()
            .republished;
        drain(&consumer).await;
    }
    assert_eq!(republished, 20, "published again at most twenty times");
    assert_eq!(
        rig.recorder.attempts.lock().unwrap()[&refused],
        21,
        "the consumer saw each copy"
    );
    assert_eq!(
        missing_ids(
            &journal
                .missing("tenant-a", "loyalty-accrual", Duration::ZERO)
                .await
                .unwrap()
        ),
        [refused],
        "still reported"
    );
}

/// Each copy waits twice as long as the one before (up to 8× the grace): a bus that keeps
/// losing what it holds is not handed copy after copy at once.
#[tokio::test]
async fn each_copy_of_an_event_without_effect_waits_twice_as_long_as_the_last() {
    // A subscriber of its own, as the test beside it has: a thread without one that reaches the
    // dead-letter log line first would make tracing cache "not interested" for both.
    let _logging = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .json()
            .with_writer(Logs::default())
            .finish(),
    );
    let bus = in_process_bus().await;
    let (rig, journal) = journaled_rig(bus.clone(), local_locks());
    let consumer = rig.consumer(config("c1"));
    let refused = rig.pay("o1", 0).await;
    rig.recorder.reject.lock().unwrap().push(refused.clone());
    rig.relay.relay_once().await.unwrap();
    drain(&consumer).await;
    let grace = Duration::from_millis(200);
    let sweep = || async {
        journal
            .sweep(bus.as_ref(), grace)
            .await
            .unwrap()
            .republished
    };
    tokio::time::sleep(grace + Duration::from_millis(50)).await;
    assert_eq!(sweep().await, 1, "first copy after the grace");
    // The second copy waits 2× the grace (400 ms) from the first.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(sweep().await, 0, "not yet: 250 ms < 400 ms");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(sweep().await, 1, "second copy after 2× the grace");
    // The third waits 4× (800 ms).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sweep().await, 0, "not yet: 500 ms < 800 ms");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(sweep().await, 1, "third copy after 4× the grace");
}

/// Log lines written by a test's subscriber.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn lines_with(&self, needle: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}
