//! The operator commands of the binary, on real state: the embedded store a server left behind,
//! dead letters on a Redis the test starts, an idempotency record in the store.

mod common;

use std::process::{Command, Output};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use commerce_api::commerce::checkout::v1::OrderPaid;
use commerce_api::commerce::common::v1::EventEnvelope;
use events::{
    Bus as _, BusMessage, Consumer, ConsumerConfig, EventHandler, EventSource, HandlerError,
    Processed,
};
use store::{EmbeddedOptions, EmbeddedStore, IdempotencyRecord, Store as _, unix_now};

fn commerce(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_commerce"))
        .args(args)
        .env_remove("COMMERCE_REDIS_URL")
        .env_remove("MONGODB_URI")
        .output()
        .expect("run commerce")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn store_check_and_compact_work_on_the_file_a_server_left() {
    let mut server = common::start();
    let _ = server.child.kill();
    let _ = server.child.wait();
    let dir = server.data_dir.path().to_str().unwrap().to_owned();

    let check = commerce(&["store", "check", "--data-dir", &dir]);
    assert!(check.status.success(), "{check:?}");
    assert!(stdout(&check).contains("store.redb: intact"), "{check:?}");
    let compact = commerce(&["store", "compact", "--data-dir", &dir]);
    assert!(compact.status.success(), "{compact:?}");
    assert!(stdout(&compact).contains(" bytes"), "{compact:?}");

    let missing = commerce(&["store", "check", "--data-dir", "/nonexistent/dir"]);
    assert!(!missing.status.success());
}

#[test]
fn idempotency_show_prints_the_recorded_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store =
            EmbeddedStore::open(dir.path().join("store.redb"), EmbeddedOptions::default()).unwrap();
        store
            .save_idempotency_record(IdempotencyRecord {
                tenant: "demo".into(),
                method: "commerce.checkout.v1.OrderService/PlaceOrder".into(),
                key: "k-1".into(),
                request_digest: Bytes::from_static(&[0xab, 0xcd]),
                // An empty StoredResponse decodes as OK with no body.
                response: Bytes::new(),
                expires_at: unix_now() + 600,
            })
            .await
            .unwrap();
    });
    let dir = dir.path().to_str().unwrap();
    let method = "commerce.checkout.v1.OrderService/PlaceOrder";
    let show = commerce(&[
        "idempotency",
        "show",
        "--tenant",
        "demo",
        "--method",
        method,
        "--key",
        "k-1",
        "--data-dir",
        dir,
    ]);
    assert!(show.status.success(), "{show:?}");
    let text = stdout(&show);
    assert!(text.contains("request sha256:  abcd"), "{text}");
    assert!(text.contains("outcome:         OK"), "{text}");
    let unknown = commerce(&[
        "idempotency",
        "show",
        "--tenant",
        "demo",
        "--method",
        method,
        "--key",
        "nope",
        "--data-dir",
        dir,
    ]);
    assert!(!unknown.status.success());
}

/// Rejects every event while `accept` is off (a poison event, as far as this consumer knows);
/// records what it handled.
#[derive(Default)]
struct Poisoned {
    accept: AtomicBool,
    handled: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl EventHandler for Poisoned {
    async fn handle(&self, event: &EventEnvelope, _: &Processed) -> Result<(), HandlerError> {
        if !self.accept.load(Ordering::SeqCst) {
            return Err(HandlerError::Reject("points service down".into()));
        }
        self.handled.lock().unwrap().push(event.event_id.clone());
        Ok(())
    }
}

#[test]
fn poison_events_land_in_dead_letters_and_the_command_replays_them() {
    let redis = fastpath::testing::RedisServer::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stream = &events::stream_of("commerce.checkout.v1.OrderPaid");
    let handler = Arc::new(Poisoned::default());
    let (bus, consumer, event_ids) = runtime.block_on(async {
        let connection = fastpath::connect(&redis.url()).await.unwrap();
        let bus = Arc::new(events::RedisBus::new(
            connection,
            fastpath::Degraded::default(),
        ));
        let store: Arc<dyn store::Store> = Arc::new(EmbeddedStore::in_memory().unwrap());
        let consumer = Consumer::new(
            bus.clone(),
            store,
            handler.clone(),
            ConsumerConfig::new(stream.as_str(), "loyalty-accrual", "c1"),
        );
        consumer.poll_once().await.unwrap(); // creates the group
        let mut event_ids = Vec::new();
        for order in ["o-1", "o-2"] {
            let source = EventSource {
                aggregate: store::AggregateKey::new("demo", "order", order),
                version: 1,
                occurred_at: std::time::SystemTime::now(),
                traceparent: None,
                tracestate: None,
            };
            let event = events::envelope::outbox_event(
                &source,
                &OrderPaid {
                    order_id: order.into(),
                    ..OrderPaid::default()
                },
            );
            event_ids.push(event.event_id.clone());
            let message = BusMessage {
                event_id: event.event_id,
                event_type: event.event_type,
                tenant: "demo".into(),
                envelope: event.envelope,
            };
            bus.publish(stream, &message).await.unwrap();
        }
        assert_eq!(consumer.poll_once().await.unwrap(), 2);
        (bus, consumer, event_ids)
    });
    let url = redis.url();
    let list = commerce(&[
        "dead-letters",
        "list",
        "--stream",
        "commerce.checkout.v1",
        "--redis-url",
        &url,
    ]);
    assert!(list.status.success(), "{list:?}");
    let text = stdout(&list);
    assert!(
        text.starts_with("2 dead letter(s) on events:{commerce.checkout.v1}\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("event {}", event_ids[0]))
            && text.contains("group loyalty-accrual")
            && text.contains("error: points service down"),
        "{text}"
    );
    let first_id = text
        .lines()
        .nth(1)
        .unwrap()
        .split('\t')
        .next()
        .unwrap()
        .to_owned();

    let replay = commerce(&[
        "dead-letters",
        "replay",
        "--stream",
        stream,
        "--redis-url",
        &url,
        "--id",
        &first_id,
    ]);
    assert!(replay.status.success(), "{replay:?}");
    let again = commerce(&[
        "dead-letters",
        "replay",
        "--stream",
        stream,
        "--redis-url",
        &url,
        "--id",
        &first_id,
    ]);
    assert!(!again.status.success(), "already replayed");
    let all = commerce(&[
        "dead-letters",
        "replay",
        "--stream",
        stream,
        "--redis-url",
        &url,
        "--all",
    ]);
    assert!(all.status.success(), "{all:?}");

    // Fixed: the replayed events are handled, once each.
    handler.accept.store(true, Ordering::SeqCst);
    runtime.block_on(async {
        assert!(bus.dead_letters(stream, 10).await.unwrap().is_empty());
        while consumer.poll_once().await.unwrap() > 0 {}
    });
    assert_eq!(*handler.handled.lock().unwrap(), event_ids);

    let without_redis = commerce(&["dead-letters", "list", "--stream", stream]);
    assert!(!without_redis.status.success());
    assert!(String::from_utf8_lossy(&without_redis.stderr).contains("no Redis configured"));
}

/// `keys generate` twice for one service: a new key under a new id, the old one still listed
/// (a rotation publishes both), each id the one the process derives from its PEM.
#[test]
fn generating_a_service_key_again_keeps_the_old_one_listed_for_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let generate = || commerce(&["keys", "generate", "--service", "checkout", "--out", out]);
    assert!(generate().status.success());
    let first_kid = platform::identity::key_id(
        "checkout",
        &std::fs::read(dir.path().join("checkout.pem")).unwrap(),
    )
    .unwrap();
    let again = generate();
    assert!(again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("still lists 1 older key(s) of checkout"),
        "{again:?}"
    );
    let second_kid = platform::identity::key_id(
        "checkout",
        &std::fs::read(dir.path().join("checkout.pem")).unwrap(),
    )
    .unwrap();
    let jwks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("jwks.json")).unwrap())
            .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["kid"].as_str().unwrap())
        .collect();
    assert_ne!(first_kid, second_kid);
    assert_eq!(kids, [first_kid.as_str(), second_kid.as_str()]);
}

/// A server that requires an issuer and audience refuses tokens without them; the operator
/// commands and `commerce token` sign with the ones configured (same flags or environment).
#[test]
fn operator_tokens_carry_the_issuer_and_audience_a_server_requires() {
    let required = [
        "--jwt-issuer",
        "https://id.example",
        "--jwt-audience",
        "commerce",
    ];
    let server = common::start_in(tempfile::tempdir().unwrap(), &required);
    let url = format!("http://{}", server.addr);
    let reconcile = |auth: &[&str]| {
        let mut args = vec!["checkout", "reconcile", "--tenant", "ops", "--server", &url];
        args.extend_from_slice(auth);
        common::cli(&args)
    };
    let bare = reconcile(&[]);
    assert!(!bare.status.success(), "a token without iss/aud is refused");
    assert!(
        String::from_utf8_lossy(&bare.stderr).contains("token signature or claims invalid"),
        "{bare:?}"
    );
    let signed = reconcile(&required);
    assert!(
        signed.status.success(),
        "{}{}",
        String::from_utf8_lossy(&signed.stdout),
        String::from_utf8_lossy(&signed.stderr)
    );
    assert!(String::from_utf8_lossy(&signed.stdout).contains("clean"));
}
