//! The interceptor stack against the real commerce contract (its auth, scopes, validation rules
//! and error domains), over Connect JSON so the error details are visible on the wire.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use commerce_api::FILE_DESCRIPTOR_SET;
use commerce_api::commerce::checkout::v1::menu_service_server::{MenuService, MenuServiceServer};
use commerce_api::commerce::checkout::v1::order_service_server::{
    OrderService, OrderServiceServer,
};
use common::{Reply, send};
use http::Request;
use http_body_util::Full;
use platform::interceptors::{
    AnonymousRateLimitConfig, AuthConfig, Claims, InterceptorConfig, RateLimitConfig, mint_hs256,
};
use platform::{Server, ServerConfig};
use prost::Message as _;
use serde_json::json;

const SECRET: &[u8] = b"interceptor-test-secret";

/// Handlers are not built: an authorized, valid call reaches the default stub → UNIMPLEMENTED.
#[derive(Clone)]
struct Stub;
impl OrderService for Stub {}
impl MenuService for Stub {}

struct Api {
    addr: SocketAddr,
    admin: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(rate_limit: RateLimitConfig) -> Api {
    start_with_redis(rate_limit, None).await
}

async fn start_with_redis(rate_limit: RateLimitConfig, redis_url: Option<String>) -> Api {
    start_with(rate_limit, AnonymousRateLimitConfig::default(), redis_url).await
}

async fn start_with(
    rate_limit: RateLimitConfig,
    anonymous_rate_limit: AnonymousRateLimitConfig,
    redis_url: Option<String>,
) -> Api {
    let config = ServerConfig {
        listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        interceptors: InterceptorConfig {
            auth: Some(AuthConfig {
                hs256_secret: Some(SECRET.to_vec()),
                jwks_json: Some(include_str!("fixtures/jwks.json").to_owned()),
                ..AuthConfig::default()
            }),
            rate_limit,
            anonymous_rate_limit,
            ..InterceptorConfig::default()
        },
        redis_url,
        ..ServerConfig::default()
    };
    let bound = Server::new(config)
        .add_service(OrderServiceServer::new(Stub), FILE_DESCRIPTOR_SET)
        .add_service(MenuServiceServer::new(Stub), FILE_DESCRIPTOR_SET)
        .bind()
        .await
        .expect("bind");
    let (addr, admin) = (bound.local_addr(), bound.admin_addr().expect("admin port"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(bound.serve(async {
        let _ = stopped.await;
    }));
    Api {
        addr,
        admin,
        _stop: stop,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(scope: &str, exp: u64) -> String {
    mint_hs256(
        SECRET,
        &Claims {
            sub: "pos-7".into(),
            tenant: "tenant-a".into(),
            scope: scope.into(),
            exp,
        },
    )
    .unwrap()
}

async fn call(
    api: &Api,
    method: &str,
    body: serde_json::Value,
    headers: &[(&str, String)],
) -> Reply {
    let mut request = Request::post(format!("http://{}/commerce.checkout.v1.{method}", api.addr))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    send(
        request
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap(),
        false,
    )
    .await
}

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

/// (code, ErrorInfo reason, ErrorInfo metadata) of a Connect error.
fn error_info(reply: &Reply) -> (String, String, std::collections::HashMap<String, String>) {
    let error = reply.json();
    let detail = error["details"]
        .as_array()
        .and_then(|details| details.iter().find(|d| d["type"] == "google.rpc.ErrorInfo"))
        .unwrap_or_else(|| panic!("no ErrorInfo in {error}"));
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(detail["value"].as_str().unwrap())
        .unwrap();
    let info = tonic_types::pb::ErrorInfo::decode(bytes.as_slice()).unwrap();
    (
        error["code"].as_str().unwrap().to_owned(),
        info.reason,
        info.metadata,
    )
}

const GET_ORDER: &str = "OrderService/GetOrder";

#[tokio::test]
async fn calls_without_a_valid_token_are_unauthenticated_with_a_stable_reason() {
    let api = start(RateLimitConfig::default()).await;
    let body = json!({"orderId": "o-1"});
    let missing = call(&api, GET_ORDER, body.clone(), &[]).await;
    assert_eq!(missing.status, 401);
    assert_eq!(error_info(&missing).1, "TOKEN_MISSING");

    let expired = call(
        &api,
        GET_ORDER,
        body.clone(),
        &[bearer(&token("checkout.orders.read", now() - 3600))],
    )
    .await;
    assert_eq!(
        (expired.status, error_info(&expired).1.as_str()),
        (401, "TOKEN_EXPIRED")
    );

    let forged = mint_hs256(
        b"someone else's secret",
        &Claims {
            sub: "x".into(),
            tenant: "t".into(),
            scope: "checkout.orders.read".into(),
            exp: now() + 60,
        },
    )
    .unwrap();
    let reply = call(&api, GET_ORDER, body.clone(), &[bearer(&forged)]).await;
    assert_eq!(
        (reply.status, error_info(&reply).1.as_str()),
        (401, "TOKEN_INVALID")
    );

    let b64 = |value: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
    };
    let unsigned = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(json!({"sub": "x", "tenant": "t", "scope": "checkout.orders.read", "exp": now() + 60}))
    );
    let reply = call(&api, GET_ORDER, body.clone(), &[bearer(&unsigned)]).await;
    assert_eq!(
        (reply.status, error_info(&reply).1.as_str()),
        (401, "TOKEN_INVALID")
    );

    let reply = call(
        &api,
        GET_ORDER,
        body,
        &[("authorization", "Basic dXNlcjpwdw==".into())],
    )
    .await;
    assert_eq!(
        (reply.status, error_info(&reply).1.as_str()),
        (401, "TOKEN_INVALID")
    );
}

/// An HS256 token with `claims` as given (time claims included), signed with the server's secret.
fn signed(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

#[tokio::test]
async fn tokens_not_valid_yet_or_issued_in_the_future_are_refused_as_invalid() {
    let api = start(RateLimitConfig::default()).await;
    let body = json!({"orderId": "o-1"});
    let claims = |extra: serde_json::Value| {
        let mut claims = json!({
            "sub": "pos-7",
            "tenant": "tenant-a",
            "scope": "checkout.orders.read",
            "exp": now() + 3600,
        });
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        signed(claims)
    };
    for (what, extra) in [
        ("nbf an hour ahead", json!({"nbf": now() + 3600})),
        ("nbf not a time", json!({"nbf": "tomorrow"})),
        ("iat an hour ahead", json!({"iat": now() + 3600})),
    ] {
        let reply = call(&api, GET_ORDER, body.clone(), &[bearer(&claims(extra))]).await;
        assert_eq!(
            (reply.status, error_info(&reply).1.as_str()),
            (401, "TOKEN_INVALID"),
            "{what}: {reply:?}"
        );
    }
    // Past or present times, and clocks a couple of seconds apart, are fine.
    for (what, extra) in [
        (
            "nbf and iat in the past",
            json!({"nbf": now() - 60, "iat": now() - 60}),
        ),
        (
            "nbf and iat within the leeway",
            json!({"nbf": now() + 2, "iat": now() + 2}),
        ),
        (
            "fractional times",
            json!({"nbf": now() as f64 - 0.5, "iat": now() as f64 - 0.5}),
        ),
    ] {
        let reply = call(&api, GET_ORDER, body.clone(), &[bearer(&claims(extra))]).await;
        assert_eq!(reply.status, 501, "{what}: {reply:?}");
    }
}

#[tokio::test]
async fn scopes_come_from_the_contract() {
    let api = start(RateLimitConfig::default()).await;
    let reply = call(
        &api,
        GET_ORDER,
        json!({"orderId": "o-1"}),
        &[bearer(&token("checkout.carts.read", now() + 60))],
    )
    .await;
    assert_eq!(reply.status, 403);
    let (code, reason, metadata) = error_info(&reply);
    assert_eq!(
        (code.as_str(), reason.as_str()),
        ("permission_denied", "SCOPE_MISSING")
    );
    assert_eq!(
        metadata.get("missing_scopes").map(String::as_str),
        Some("checkout.orders.read")
    );

    // With the scope the call reaches the (not yet built) handler.
    let reply = call(
        &api,
        GET_ORDER,
        json!({"orderId": "o-1"}),
        &[bearer(&token("checkout.orders.read", now() + 60))],
    )
    .await;
    assert_eq!(
        (reply.status, reply.json()["code"].as_str().unwrap()),
        (501, "unimplemented")
    );
}

/// A token signed with `key` under `kid` verifies against the JWKS; the same token under another
/// key's id does not.
async fn check_jwks_signature(
    algorithm: jsonwebtoken::Algorithm,
    key: jsonwebtoken::EncodingKey,
    kid: &str,
    wrong_kid: &str,
) {
    let api = start(RateLimitConfig::default()).await;
    let claims = Claims {
        sub: "svc".into(),
        tenant: "tenant-c".into(),
        scope: "checkout.orders.read".into(),
        exp: now() + 60,
    };
    let mut header = jsonwebtoken::Header::new(algorithm);
    header.kid = Some(kid.into());
    let signed = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let reply = call(
        &api,
        GET_ORDER,
        json!({"orderId": "o-1"}),
        &[bearer(&signed)],
    )
    .await;
    assert_eq!(reply.status, 501, "{algorithm:?}: {reply:?}");

    header.kid = Some(wrong_kid.into());
    let signed = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let reply = call(
        &api,
        GET_ORDER,
        json!({"orderId": "o-1"}),
        &[bearer(&signed)],
    )
    .await;
    assert_eq!(
        (reply.status, error_info(&reply).1.as_str()),
        (401, "TOKEN_INVALID"),
        "{algorithm:?}"
    );
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_against_the_jwks() {
    let rsa =
        jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!("fixtures/rs256.pem")).unwrap();
    check_jwks_signature(
        jsonwebtoken::Algorithm::RS256,
        rsa,
        "test-rs256",
        "test-es256",
    )
    .await;
    let ec = jsonwebtoken::EncodingKey::from_ec_pem(include_bytes!("fixtures/es256.pem")).unwrap();
    check_jwks_signature(
        jsonwebtoken::Algorithm::ES256,
        ec,
        "test-es256",
        "unknown-key",
    )
    .await;
}

#[tokio::test]
async fn public_methods_need_a_tenant_but_no_token() {
    let api = start(RateLimitConfig::default()).await;
    let reply = call(&api, "MenuService/ListLocations", json!({}), &[]).await;
    assert_eq!(reply.status, 400);
    let (code, reason, _) = error_info(&reply);
    assert_eq!(
        (code.as_str(), reason.as_str()),
        ("invalid_argument", "TENANT_MISSING")
    );
    let reply = call(
        &api,
        "MenuService/ListLocations",
        json!({}),
        &[("commerce-tenant", "tenant-a".into())],
    )
    .await;
    assert_eq!(reply.status, 501);
}

#[tokio::test]
async fn requests_breaking_the_contract_rules_are_invalid_argument_with_field_violations() {
    let api = start(RateLimitConfig::default()).await;
    let reply = call(
        &api,
        GET_ORDER,
        json!({"orderId": ""}),
        &[bearer(&token("checkout.orders.read", now() + 60))],
    )
    .await;
    assert_eq!(reply.status, 400);
    let (code, reason, _) = error_info(&reply);
    assert_eq!(
        (code.as_str(), reason.as_str()),
        ("invalid_argument", "VALIDATION_FAILED")
    );
    let error = reply.json();
    let bad_request = error["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["type"] == "google.rpc.BadRequest")
        .expect("BadRequest");
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(bad_request["value"].as_str().unwrap())
        .unwrap();
    let violations = tonic_types::pb::BadRequest::decode(bytes.as_slice())
        .unwrap()
        .field_violations;
    assert_eq!(
        violations
            .iter()
            .map(|v| v.field.as_str())
            .collect::<Vec<_>>(),
        ["order_id"]
    );

    // The error domain is the service's, from the contract.
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(error["details"][0]["value"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        tonic_types::pb::ErrorInfo::decode(bytes.as_slice())
            .unwrap()
            .domain,
        "checkout.commerce.dev"
    );
}

#[tokio::test]
async fn each_tenant_is_rate_limited_with_a_retry_hint() {
    let api = start(RateLimitConfig {
        tokens_per_second: 0.5,
        burst: 2.0,
    })
    .await;
    let auth = [bearer(&token("checkout.orders.read", now() + 60))];
    for _ in 0..2 {
        assert_eq!(
            call(&api, GET_ORDER, json!({"orderId": "o-1"}), &auth)
                .await
                .status,
            501
        );
    }
    let limited = call(&api, GET_ORDER, json!({"orderId": "o-1"}), &auth).await;
    assert_eq!(limited.status, 429);
    assert_eq!(error_info(&limited).1, "RATE_LIMITED");
    let types: Vec<String> = limited.json()["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["type"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        types.contains(&"google.rpc.RetryInfo".to_owned()),
        "{types:?}"
    );

    // Another tenant has its own bucket.
    let other = mint_hs256(
        SECRET,
        &Claims {
            sub: "s".into(),
            tenant: "tenant-z".into(),
            scope: "checkout.orders.read".into(),
            exp: now() + 60,
        },
    )
    .unwrap();
    assert_eq!(
        call(
            &api,
            GET_ORDER,
            json!({"orderId": "o-1"}),
            &[bearer(&other)]
        )
        .await
        .status,
        501
    );
}

#[tokio::test]
async fn health_stays_open_and_calls_are_counted_by_method_and_code() {
    let api = start(RateLimitConfig::default()).await;
    let health = send(
        Request::post(format!("http://{}/grpc.health.v1.Health/Check", api.addr))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from("{}")))
            .unwrap(),
        false,
    )
    .await;
    assert_eq!(health.json(), json!({"status": "SERVING"}));

    let reply = call(
        &api,
        GET_ORDER,
        json!({"orderId": "o-1"}),
        &[("x-request-id", "req-123".into())],
    )
    .await;
    assert_eq!(reply.header("x-request-id"), Some("req-123"));
    let generated = call(&api, GET_ORDER, json!({"orderId": "o-1"}), &[]).await;
    assert_eq!(
        generated.header("x-request-id").map(str::len),
        Some(36),
        "a UUID is generated"
    );

    let metrics = send(
        Request::get(format!("http://{}/metrics", api.admin))
            .body(Full::default())
            .unwrap(),
        false,
    )
    .await;
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    let line = text
        .lines()
        .find(|line| {
            line.starts_with("rpc_calls_total{")
                && line.contains("OrderService/GetOrder")
                && line.contains("unauthenticated")
        })
        .unwrap_or_else(|| panic!("no GetOrder counter in:\n{text}"));
    assert!(line.ends_with(" 2"), "{line}");
    assert!(text.contains("rpc_duration_seconds_bucket"), "{text}");
}

#[tokio::test]
async fn calls_beyond_the_concurrency_limit_are_shed_at_once() {
    // Open mode with the protocol test service, whose Sleep holds a slot.
    let config = ServerConfig {
        listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        interceptors: InterceptorConfig {
            max_in_flight: 1,
            ..InterceptorConfig::default()
        },
        ..ServerConfig::default()
    };
    let bound = Server::new(config)
        .add_service(
            protocol_testkit::Echo::server(),
            protocol_testkit::FILE_DESCRIPTOR_SET,
        )
        .bind()
        .await
        .unwrap();
    let addr = bound.local_addr();
    tokio::spawn(bound.serve(std::future::pending()));
    let sleep = |millis: u64| {
        send(
            Request::post(format!("http://{addr}/protocol.test.v1.EchoService/Sleep"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(
                    json!({"millis": millis}).to_string(),
                )))
                .unwrap(),
            false,
        )
    };
    let slow = tokio::spawn(sleep(1500));
    // Probe until the slow call holds the only slot (it needs a moment to arrive), then expect
    // refusal at once rather than queueing.
    let mut shed = None;
    for _ in 0..100 {
        let probe = sleep(0).await;
        if probe.status != 200 {
            shed = Some(probe);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let shed = shed.expect("a call was shed while the slot was taken");
    assert_eq!(
        (shed.status, shed.json()["code"].as_str().unwrap()),
        (503, "unavailable")
    );
    assert_eq!(slow.await.unwrap().status, 200);
    assert_eq!(
        sleep(0).await.status,
        200,
        "capacity is back once the slow call ended"
    );
}

#[tokio::test]
async fn replicas_sharing_redis_share_each_tenants_limit_and_degrade_to_local_limits() {
    let mut redis = fastpath::testing::RedisServer::start();
    let limit = RateLimitConfig {
        tokens_per_second: 0.5,
        burst: 3.0,
    };
    let replica_a = start_with_redis(limit, Some(redis.url())).await;
    let replica_b = start_with_redis(limit, Some(redis.url())).await;
    let auth = [bearer(&token("checkout.orders.read", now() + 60))];
    // The tenant's burst of 3 is spent across both replicas.
    for replica in [&replica_a, &replica_b, &replica_a] {
        assert_eq!(
            call(replica, GET_ORDER, json!({"orderId": "o-1"}), &auth)
                .await
                .status,
            501
        );
    }
    let limited = call(&replica_b, GET_ORDER, json!({"orderId": "o-1"}), &auth).await;
    assert_eq!(
        (limited.status, error_info(&limited).1.as_str()),
        (429, "RATE_LIMITED")
    );

    let healthz = |api: &Api| {
        send(
            Request::get(format!("http://{}/healthz", api.admin))
                .body(Full::default())
                .unwrap(),
            false,
        )
    };
    assert_eq!(&healthz(&replica_a).await.body[..], b"ok\n");

    // Redis dies: each replica limits on its own (a fresh local bucket), and says it is degraded.
    redis.kill();
    assert_eq!(
        call(&replica_a, GET_ORDER, json!({"orderId": "o-1"}), &auth)
            .await
            .status,
        501
    );
    let health = healthz(&replica_a).await;
    assert_eq!(health.status, 200, "still live");
    assert!(
        String::from_utf8_lossy(&health.body).starts_with("degraded"),
        "{health:?}"
    );
}

const LIST_LOCATIONS: &str = "MenuService/ListLocations";

/// An anonymous (public, no token) call under `tenant`, forwarded for `client` by the proxy the
/// test stands for.
async fn anonymous(api: &Api, tenant: &str, client: &str) -> Reply {
    call(
        api,
        LIST_LOCATIONS,
        json!({}),
        &[
            ("commerce-tenant", tenant.into()),
            ("x-forwarded-for", client.into()),
        ],
    )
    .await
}

/// Asserts `reply` is RESOURCE_EXHAUSTED / RATE_LIMITED for `budget`, with a retry hint.
fn assert_limited(reply: &Reply, budget: &str) {
    let (code, reason, metadata) = error_info(reply);
    assert_eq!(
        (reply.status, code.as_str(), reason.as_str()),
        (429, "resource_exhausted", "RATE_LIMITED"),
        "{reply:?}"
    );
    assert_eq!(metadata.get("limit").map(String::as_str), Some(budget));
    assert!(
        reply.json()["details"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["type"] == "google.rpc.RetryInfo"),
        "{reply:?}"
    );
}

/// Limits that never refill within a test, so counts are exact.
fn slow(burst: f64) -> RateLimitConfig {
    RateLimitConfig {
        tokens_per_second: 0.01,
        burst,
    }
}

#[tokio::test]
async fn x_forwarded_for_names_anonymous_clients_only_behind_a_trusted_proxy() {
    let behind_proxy = start_with(
        RateLimitConfig::default(),
        AnonymousRateLimitConfig {
            per_client: slow(2.0),
            per_tenant: slow(100.0),
            trusted_proxies: "127.0.0.1".parse().unwrap(),
        },
        None,
    )
    .await;
    for _ in 0..2 {
        assert_eq!(
            anonymous(&behind_proxy, "tenant-a", "198.51.100.1")
                .await
                .status,
            501
        );
    }
    assert_limited(
        &anonymous(&behind_proxy, "tenant-a", "198.51.100.1").await,
        "anonymous_client",
    );
    // The client's budget spans tenants.
    assert_limited(
        &anonymous(&behind_proxy, "tenant-b", "198.51.100.1").await,
        "anonymous_client",
    );
    // Another client behind the same proxy has its own budget; a forged entry left of the
    // proxy's does not buy the first client a new one.
    assert_eq!(
        anonymous(&behind_proxy, "tenant-a", "198.51.100.2")
            .await
            .status,
        501
    );
    assert_limited(
        &anonymous(&behind_proxy, "tenant-a", "203.0.113.66, 198.51.100.1").await,
        "anonymous_client",
    );

    // Without a trusted proxy the header is the caller's own word: ignored, the peer counts.
    let direct = start_with(
        RateLimitConfig::default(),
        AnonymousRateLimitConfig {
            per_client: slow(2.0),
            per_tenant: slow(100.0),
            ..AnonymousRateLimitConfig::default()
        },
        None,
    )
    .await;
    assert_eq!(
        anonymous(&direct, "tenant-a", "198.51.100.1").await.status,
        501
    );
    assert_eq!(
        anonymous(&direct, "tenant-a", "198.51.100.2").await.status,
        501
    );
    assert_limited(
        &anonymous(&direct, "tenant-a", "198.51.100.3").await,
        "anonymous_client",
    );
}

#[tokio::test]
async fn anonymous_callers_of_a_tenant_share_a_budget_apart_from_its_signed_in_callers() {
    let api = start_with(
        slow(3.0),
        AnonymousRateLimitConfig {
            per_client: slow(10.0),
            per_tenant: slow(3.0),
            trusted_proxies: "127.0.0.0/8".parse().unwrap(),
        },
        None,
    )
    .await;
    for client in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        assert_eq!(anonymous(&api, "tenant-a", client).await.status, 501);
    }
    assert_limited(
        &anonymous(&api, "tenant-a", "198.51.100.4").await,
        "anonymous_tenant",
    );
    // Other tenants' anonymous budgets are their own.
    assert_eq!(
        anonymous(&api, "tenant-b", "198.51.100.4").await.status,
        501
    );

    // The tenant's signed-in callers still have their whole budget, on public methods too…
    let auth = [bearer(&token("checkout.orders.read", now() + 60))];
    for _ in 0..2 {
        assert_eq!(
            call(&api, LIST_LOCATIONS, json!({}), &auth).await.status,
            501
        );
    }
    assert_eq!(
        call(&api, GET_ORDER, json!({"orderId": "o-1"}), &auth)
            .await
            .status,
        501
    );
    // …and only that budget: it is spent now, while anonymous calls stay refused by their own.
    assert_limited(
        &call(&api, GET_ORDER, json!({"orderId": "o-1"}), &auth).await,
        "tenant",
    );
    assert_limited(
        &anonymous(&api, "tenant-a", "198.51.100.5").await,
        "anonymous_tenant",
    );
}
