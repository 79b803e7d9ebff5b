//! SIGTERM through the real binary with `WatchOrder` streams open: health flips to NOT_SERVING
//! while the server still answers, then the streams end at once with UNAVAILABLE and a retry hint
//! (gRPC trailers, Connect end-stream message) instead of being held for the grace period and cut,
//! and the process exits long before the grace period would have passed.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use commerce_api::commerce::checkout::v1 as co;
use commerce_api::commerce::checkout::v1::order_service_client::OrderServiceClient;
use commerce_api::commerce::common::v1::Money;
use common::client::{Client, Protocol};
use http_body_util::BodyExt as _;
use prost::Message as _;
use tonic_types::StatusExt as _;

fn usd(cents: i64) -> Option<Money> {
    Some(Money {
        currency_code: "USD".into(),
        amount_minor: cents,
    })
}

/// A location, an item, a cart with one line, its quote, and the placed order's id.
async fn place_an_order(client: &Client) -> String {
    let every_day = [1, 2, 3, 4, 5, 6, 7].map(|day| co::OpeningHours {
        day,
        open_minute: 0,
        close_minute: 1440,
    });
    let location: co::CreateLocationResponse = client
        .call(
            "/commerce.checkout.v1.MenuService/CreateLocation",
            co::CreateLocationRequest {
                location: Some(co::Location {
                    display_name: "Harbour".into(),
                    time_zone: "UTC".into(),
                    currency_code: "USD".into(),
                    opening_hours: every_day.to_vec(),
                    fulfillment_modes: vec![co::FulfillmentMode::Pickup as i32],
                    ..Default::default()
                }),
            },
            Some("shutdown-location"),
        )
        .await
        .unwrap();
    let location = location.location.unwrap().location_id;
    let item: co::CreateMenuItemResponse = client
        .call(
            "/commerce.checkout.v1.MenuService/CreateMenuItem",
            co::CreateMenuItemRequest {
                item: Some(co::MenuItem {
                    sku: "TEA".into(),
                    display_name: "Tea".into(),
                    category: "drinks".into(),
                    tax_category: "food".into(),
                    base_price: usd(300),
                    active: true,
                    ..Default::default()
                }),
            },
            Some("shutdown-item"),
        )
        .await
        .unwrap();
    let item = item.item.unwrap().item_id;
    let cart: co::CreateCartResponse = client
        .call(
            "/commerce.checkout.v1.CartService/CreateCart",
            co::CreateCartRequest {
                location_id: location,
                customer_id: "cust-shutdown".into(),
                fulfillment: None,
            },
            Some("shutdown-cart"),
        )
        .await
        .unwrap();
    let cart = cart.cart.unwrap().cart_id;
    let _: co::AddCartLineResponse = client
        .call(
            "/commerce.checkout.v1.CartService/AddCartLine",
            co::AddCartLineRequest {
                cart_id: cart.clone(),
                item_id: item,
                quantity: 1,
                ..Default::default()
            },
            Some("shutdown-line"),
        )
        .await
        .unwrap();
    let quote: co::QuoteCartResponse = client
        .call(
            "/commerce.checkout.v1.CartService/QuoteCart",
            co::QuoteCartRequest {
                cart_id: cart.clone(),
            },
            None,
        )
        .await
        .unwrap();
    let quote = quote.quote.unwrap();
    let placed: co::PlaceOrderResponse = client
        .call(
            "/commerce.checkout.v1.OrderService/PlaceOrder",
            co::PlaceOrderRequest {
                cart_id: cart,
                quote_id: quote.quote_id,
                expected_total: quote.total,
                payment_token: "tok_ok".into(),
                ..Default::default()
            },
            Some("shutdown-order"),
        )
        .await
        .unwrap();
    placed.order.unwrap().order_id
}

/// `WatchOrder` over Connect JSON (HTTP/1.1): the end-stream message once the stream ends.
async fn watch_over_connect(addr: String, token: String, order_id: String) -> serde_json::Value {
    let request = serde_json::json!({ "orderId": order_id }).to_string();
    let mut envelope = vec![0u8];
    envelope.extend_from_slice(&(request.len() as u32).to_be_bytes());
    envelope.extend_from_slice(request.as_bytes());
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let response = http
        .request(
            http::Request::post(format!(
                "http://{addr}/commerce.checkout.v1.OrderService/WatchOrder"
            ))
            .header("content-type", "application/connect+json")
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Full::new(bytes::Bytes::from(envelope)))
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let mut rest = &body[..];
    while rest.len() >= 5 {
        let length = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        if rest[0] & 0x02 != 0 {
            return serde_json::from_slice(&rest[5..5 + length]).unwrap();
        }
        rest = &rest[5 + length..];
    }
    panic!("no end-stream message in {body:?}");
}

fn health_over_connect(addr: &str) -> Option<serde_json::Value> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let body = r#"{"service":"commerce.checkout.v1.OrderService"}"#;
    write!(
        stream,
        "POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    serde_json::from_str(response.split("\r\n\r\n").nth(1)?).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flips_health_first_then_ends_open_watch_order_streams_at_once_with_unavailable() {
    let mut server = common::start_in(
        tempfile::tempdir().unwrap(),
        &[
            "--shutdown-delay-seconds",
            "2",
            "--shutdown-grace-seconds",
            "20",
        ],
    );
    let token = common::token_for("shop-shutdown");
    let client = Client {
        protocol: Protocol::ConnectJson,
        addr: server.addr.clone(),
        token: token.clone(),
        tenant: "shop-shutdown".into(),
        timeout: None,
    };
    let order_id = place_an_order(&client).await;

    // One stream over gRPC, one over Connect.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut request = tonic::Request::new(co::WatchOrderRequest {
        order_id: order_id.clone(),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut grpc_stream = OrderServiceClient::new(channel)
        .watch_order(request)
        .await
        .expect("stream")
        .into_inner();
    let first = grpc_stream.message().await.unwrap().expect("current state");
    assert_eq!(first.order.unwrap().order_id, order_id);
    let connect = tokio::spawn(watch_over_connect(
        server.addr.clone(),
        token.clone(),
        order_id.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    // Health says NOT_SERVING while the server still accepts (the 2 s window).
    let addr = server.addr.clone();
    let not_serving = tokio::task::spawn_blocking(move || {
        let asked = Instant::now();
        loop {
            let health = health_over_connect(&addr);
            if health
                .as_ref()
                .is_some_and(|h| h["status"] == "NOT_SERVING")
            {
                return asked.elapsed();
            }
            assert!(
                asked.elapsed() < Duration::from_millis(1500),
                "health never said NOT_SERVING before the listener closed: {health:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    assert!(not_serving < Duration::from_millis(1500));

    // The streams end when the window closes, not at the end of the 20 s grace period.
    let status = tokio::time::timeout(Duration::from_secs(8), grpc_stream.message())
        .await
        .expect("the gRPC stream was held open")
        .expect_err("the stream ends with an error");
    let ended = started.elapsed();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let details = status.get_error_details();
    assert_eq!(
        details.error_info().map(|info| info.reason.as_str()),
        Some("SERVER_SHUTTING_DOWN")
    );
    assert!(details.retry_info().is_some(), "a retry hint");
    assert!(
        ended >= Duration::from_millis(1500) && ended < Duration::from_secs(6),
        "gRPC stream ended {ended:?} after SIGTERM (window 2 s, grace 20 s)"
    );

    let end = tokio::time::timeout(Duration::from_secs(8), connect)
        .await
        .expect("the Connect stream was held open")
        .unwrap();
    assert_eq!(end["error"]["code"], "unavailable", "{end}");
    let info = end["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|detail| detail["type"] == "google.rpc.ErrorInfo")
        .expect("ErrorInfo");
    let info = tonic_types::pb::ErrorInfo::decode(
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(info["value"].as_str().unwrap())
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    assert_eq!(info.reason, "SERVER_SHUTTING_DOWN");

    // Nothing is left to wait for: the process exits well inside the grace period.
    let exit = loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still running {:?} after SIGTERM",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
}

/// A SIGTERM sent the moment the server says where it listens is honoured: a clean, prompt exit
/// every time (the signal listeners were once registered only after that line, and a stop sent
/// in between was lost — the process kept serving until killed).
#[test]
fn a_sigterm_right_after_start_up_stops_the_server_cleanly() {
    for _ in 0..10 {
        let server = common::start_in(
            tempfile::tempdir().unwrap(),
            &[
                "--shutdown-grace-seconds",
                "2",
                "--shutdown-delay-seconds",
                "0",
            ],
        );
        server.terminate();
        let (status, _) = server.wait_exit(std::time::Duration::from_secs(15));
        assert!(status.success(), "{status:?}");
    }
}
