//! The idempotency layer against a side effect that counts its executions (`Charge`, which the
//! test contract marks IDEMPOTENCY_KEY_REQUIRED): replay, key reuse, concurrent duplicates —
//! within one replica and across two sharing Redis and a store — and restarts.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use common::{Reply, envelope, send};
use http::Request;
use http_body_util::Full;
use platform::interceptors::{AuthConfig, Claims, InterceptorConfig, mint_hs256};
use platform::{Server, ServerConfig};
use prost::Message as _;
use protocol_testkit::Echo;
use protocol_testkit::pb::{ChargeRequest, ChargeResponse};
use serde_json::json;
use store::{EmbeddedOptions, EmbeddedStore, Store};

const SECRET: &[u8] = b"idempotency-test-secret";
const CHARGE: &str = "/protocol.test.v1.EchoService/Charge";

struct Replica {
    addr: SocketAddr,
    echo: Echo,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn replica(store: Arc<dyn Store>, redis_url: Option<String>, echo: Echo) -> Replica {
    let config = ServerConfig {
        listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        interceptors: InterceptorConfig {
            auth: Some(AuthConfig {
                hs256_secret: Some(SECRET.to_vec()),
                ..AuthConfig::default()
            }),
            ..InterceptorConfig::default()
        },
        redis_url,
        ..ServerConfig::default()
    };
    let bound = Server::new(config)
        .store(store)
        .add_service(
            echo.clone().into_server(),
            protocol_testkit::FILE_DESCRIPTOR_SET,
        )
        .bind()
        .await
        .expect("bind");
    let addr = bound.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(bound.serve(async {
        let _ = stopped.await;
    }));
    Replica {
        addr,
        echo,
        _stop: stop,
    }
}

async fn single() -> Replica {
    replica(
        Arc::new(EmbeddedStore::in_memory().unwrap()),
        None,
        Echo::default(),
    )
    .await
}

fn token(tenant: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    mint_hs256(
        SECRET,
        &Claims {
            sub: "pos-1".into(),
            tenant: tenant.into(),
            scope: "protocol.test".into(),
            exp,
        },
    )
    .unwrap()
}

/// A Connect JSON call of Charge.
async fn charge(
    replica: &Replica,
    tenant: &str,
    key: Option<&str>,
    body: serde_json::Value,
) -> Reply {
    let mut request = Request::post(format!("http://{}{CHARGE}", replica.addr))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", token(tenant)));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    send(
        request
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap(),
        false,
    )
    .await
}

/// A gRPC (HTTP/2, binary) call of Charge.
async fn charge_grpc(replica: &Replica, key: &str, request: &ChargeRequest) -> Reply {
    let request = Request::post(format!("http://{}{CHARGE}", replica.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {}", token("tenant-a")))
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from(envelope(
            0,
            &request.encode_to_vec(),
        ))))
        .unwrap();
    send(request, true).await
}

fn reason(reply: &Reply) -> String {
    let error = reply.json();
    let detail = error["details"]
        .as_array()
        .and_then(|details| details.iter().find(|d| d["type"] == "google.rpc.ErrorInfo"))
        .unwrap_or_else(|| panic!("no ErrorInfo in {error}"));
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(detail["value"].as_str().unwrap())
        .unwrap();
    tonic_types::pb::ErrorInfo::decode(bytes.as_slice())
        .unwrap()
        .reason
}

#[tokio::test]
async fn a_retry_replays_the_first_outcome_byte_for_byte_and_the_charge_runs_once() {
    let api = single().await;
    let body = json!({"account": "acct-1", "amount": "1250"});
    let first = charge(&api, "tenant-a", Some("key-1"), body.clone()).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.json()["executions"], "1");
    assert_eq!(first.header("idempotent-replayed"), None);
    for _ in 0..3 {
        let retry = charge(&api, "tenant-a", Some("key-1"), body.clone()).await;
        assert_eq!(retry.status, 200);
        assert_eq!(retry.body, first.body, "same charge id, same bytes");
        assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    }
    assert_eq!(api.echo.charges(), 1);

    // Over gRPC the replayed message is the same bytes too, with a proper OK trailer.
    let request = ChargeRequest {
        account: "acct-2".into(),
        amount: 99,
        ..ChargeRequest::default()
    };
    let grpc_first = charge_grpc(&api, "key-grpc", &request).await;
    let grpc_retry = charge_grpc(&api, "key-grpc", &request).await;
    assert_eq!(grpc_first.body, grpc_retry.body);
    let trailer = |reply: &Reply| {
        reply
            .trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(trailer(&grpc_retry).as_deref(), Some("0"));
    let decoded = ChargeResponse::decode(&grpc_retry.body[5..]).unwrap();
    assert_eq!((decoded.amount, decoded.executions), (99, 2));
    assert_eq!(api.echo.charges(), 2);
}

#[tokio::test]
async fn keys_are_required_well_formed_and_bound_to_one_request() {
    let api = single().await;
    let body = json!({"account": "acct-1", "amount": "100"});
    let missing = charge(&api, "tenant-a", None, body.clone()).await;
    assert_eq!(
        (missing.status, reason(&missing).as_str()),
        (400, "IDEMPOTENCY_KEY_REQUIRED")
    );
    let long = "k".repeat(256);
    let malformed = charge(&api, "tenant-a", Some(&long), body.clone()).await;
    assert_eq!(
        (malformed.status, reason(&malformed).as_str()),
        (400, "VALIDATION_FAILED")
    );
    assert_eq!(api.echo.charges(), 0, "nothing ran");

    charge(&api, "tenant-a", Some("key-2"), body).await;
    let reused = charge(
        &api,
        "tenant-a",
        Some("key-2"),
        json!({"account": "acct-1", "amount": "101"}),
    )
    .await;
    assert_eq!(
        (reused.status, reason(&reused).as_str()),
        (400, "IDEMPOTENCY_KEY_REUSED")
    );
    assert_eq!(api.echo.charges(), 1);

    // The same key from another tenant is another operation.
    let other = charge(
        &api,
        "tenant-b",
        Some("key-2"),
        json!({"account": "acct-9", "amount": "5"}),
    )
    .await;
    assert_eq!(other.status, 200);
    assert_eq!(api.echo.charges(), 2);
}

#[tokio::test]
async fn final_errors_are_replayed_and_transient_errors_let_the_retry_run() {
    let api = single().await;
    let declined = json!({"account": "acct-1", "amount": "100", "failCode": 9});
    let first = charge(&api, "tenant-a", Some("declined"), declined.clone()).await;
    assert_eq!(first.status, 400, "FAILED_PRECONDITION over Connect");
    let again = charge(&api, "tenant-a", Some("declined"), declined).await;
    assert_eq!((again.status, &again.body), (first.status, &first.body));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(api.echo.charges(), 1);

    let flaky = json!({"account": "acct-1", "amount": "100", "failCode": 14});
    for attempt in 2..=3 {
        let reply = charge(&api, "tenant-a", Some("flaky"), flaky.clone()).await;
        assert_eq!(reply.status, 503);
        assert_eq!(api.echo.charges(), attempt, "UNAVAILABLE is not recorded");
    }
}

/// The loser of a race past the lock (each replica on its own lock while Redis is down) fails
/// transiently because the winner committed this key's answer with its effect: the caller gets
/// that answer, not the loser's INTERNAL. The hook plays the winner, committing mid-call.
#[tokio::test]
async fn a_call_that_fails_transiently_after_its_key_was_recorded_answers_with_the_record() {
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory().unwrap());
    let winner_store = store.clone();
    let echo = Echo::default().with_charge_hook(Arc::new(move |extensions| {
        let store = winner_store.clone();
        Box::pin(async move {
            let context = extensions
                .get::<platform::interceptors::IdempotencyContext>()
                .expect("the layer hands handlers the call's context")
                .clone();
            let winner = ChargeResponse {
                charge_id: "ch-winner".into(),
                amount: 100,
                executions: 1,
            };
            store
                .save_idempotency_record(context.record(&winner))
                .await
                .unwrap();
        })
    }));
    let api = replica(store, None, echo).await;
    let internal = json!({"account": "acct-1", "amount": "100", "failCode": 13});
    let reply = charge(&api, "tenant-a", Some("raced"), internal).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.json()["chargeId"], "ch-winner");
    assert_eq!(reply.header("idempotent-replayed"), Some("true"));
}

/// 200 duplicates of one keyed request, all at once, spread over `replicas`: the charge runs
/// once; every caller gets either that outcome or IDEMPOTENCY_KEY_IN_USE, and retrying those
/// gives that outcome too.
async fn concurrent_duplicates(replicas: Vec<Replica>) {
    let replicas: Vec<Arc<Replica>> = replicas.into_iter().map(Arc::new).collect();
    let body = json!({"account": "acct-1", "amount": "700", "delayMillis": "300"});
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..200 {
        let replica = replicas[i % replicas.len()].clone();
        let body = body.clone();
        calls.spawn(async move { charge(&replica, "tenant-a", Some("burst"), body).await });
    }
    let mut successes = Vec::new();
    let mut in_use = 0;
    while let Some(reply) = calls.join_next().await {
        let reply = reply.unwrap();
        match reply.status {
            200 => successes.push(reply.body),
            409 => {
                assert_eq!(reason(&reply), "IDEMPOTENCY_KEY_IN_USE");
                in_use += 1;
            }
            other => panic!("unexpected {other}: {reply:?}"),
        }
    }
    assert!(!successes.is_empty());
    assert!(successes.iter().all(|body| *body == successes[0]));
    let executions: u64 = replicas.iter().map(|r| r.echo.charges()).sum();
    assert_eq!(executions, 1, "{in_use} callers were told to retry");
    for replica in &replicas {
        let retry = charge(replica, "tenant-a", Some("burst"), body.clone()).await;
        assert_eq!(retry.body, successes[0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_duplicates_charge_once_on_one_replica() {
    concurrent_duplicates(vec![single().await]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_duplicates_charge_once_across_replicas_sharing_redis() {
    let redis = fastpath::testing::RedisServer::start();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory().unwrap());
    let a = replica(store.clone(), Some(redis.url()), Echo::default()).await;
    let b = replica(store, Some(redis.url()), Echo::default()).await;
    concurrent_duplicates(vec![a, b]).await;
}

#[tokio::test]
async fn recorded_outcomes_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let body = json!({"account": "acct-1", "amount": "300"});
    let first = {
        let store = Arc::new(EmbeddedStore::open(&path, EmbeddedOptions::default()).unwrap());
        let api = replica(store, None, Echo::default()).await;
        charge(&api, "tenant-a", Some("durable"), body.clone()).await
    };
    // Let the stopped server release the file.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let store = Arc::new(EmbeddedStore::open(&path, EmbeddedOptions::default()).unwrap());
    let api = replica(store, None, Echo::default()).await;
    let after = charge(&api, "tenant-a", Some("durable"), body).await;
    assert_eq!(after.body, first.body);
    assert_eq!(
        api.echo.charges(),
        0,
        "replayed from the store, not run again"
    );
}
