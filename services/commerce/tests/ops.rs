//! The operator commands of the binary, on real state: the embedded store a server left behind,
//! dead letters on a Redis the test starts, an idempotency record in the store.

mod common;

use std::process::{Command, Output};

use bytes::Bytes;
use events::{Bus as _, BusMessage, Delivery};
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

#[test]
fn dead_letters_are_listed_and_replayed_through_redis() {
    let redis = fastpath::testing::RedisServer::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stream = "events:commerce.checkout.v1";
    let bus = runtime.block_on(async {
        let connection = fastpath::connect(&redis.url()).await.unwrap();
        let bus = events::RedisBus::new(connection, fastpath::Degraded::default());
        bus.ensure_group(stream, "loyalty-accrual").await.unwrap();
        for id in ["e-1", "e-2"] {
            let message = BusMessage {
                event_id: id.into(),
                event_type: "commerce.checkout.v1.OrderPaid".into(),
                tenant: "demo".into(),
                envelope: Bytes::from_static(b"envelope"),
            };
            bus.publish(stream, &message).await.unwrap();
        }
        for delivery in bus.read(stream, "loyalty-accrual", "c1", 10).await.unwrap() {
            let delivery: Delivery = delivery;
            bus.dead_letter(stream, "loyalty-accrual", &delivery, "points service down")
                .await
                .unwrap();
        }
        bus
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
        text.starts_with("2 dead letter(s) on events:commerce.checkout.v1"),
        "{text}"
    );
    assert!(
        text.contains("event e-1") && text.contains("error: points service down"),
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

    runtime.block_on(async {
        assert!(bus.dead_letters(stream, 10).await.unwrap().is_empty());
        let replayed = bus.read(stream, "loyalty-accrual", "c1", 10).await.unwrap();
        let ids: Vec<&str> = replayed
            .iter()
            .map(|d| d.message.event_id.as_str())
            .collect();
        assert_eq!(ids, ["e-1", "e-2"]);
    });

    let without_redis = commerce(&["dead-letters", "list", "--stream", stream]);
    assert!(!without_redis.status.success());
    assert!(String::from_utf8_lossy(&without_redis.stderr).contains("no Redis configured"));
}
