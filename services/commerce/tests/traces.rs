//! Traces through the binary, received by an OTLP collector of our own (a tonic TraceService
//! server on `opentelemetry-proto`'s generated code): one `PlaceOrder` sent over Connect with
//! the caller's `traceparent` is one trace from its SERVER span through the loyalty hold, the
//! PSP, the store commits and the `OrderPaid` publish to loyalty's CONSUMER span; a gRPC-web call
//! and a `WatchOrder` stream get their SERVER spans; sampling honours the parent; a dead
//! collector changes no answer and its losses are counted; log lines and exemplars carry the
//! trace id.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::client::{Client, Protocol};
use common::otlp::{Received, attribute, hex, named};
use common::shop::Shop;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

/// A W3C traceparent of a new trace, sampled or not: (header, trace id, parent span id).
fn traceparent(sampled: bool) -> (String, String, String) {
    let trace_id = format!("{:032x}", fastrand::u128(1..));
    let span_id = format!("{:016x}", fastrand::u64(1..));
    let flags = if sampled { "01" } else { "00" };
    (
        format!("00-{trace_id}-{span_id}-{flags}"),
        trace_id,
        span_id,
    )
}

fn client(addr: &str) -> Client {
    Client {
        protocol: Protocol::ConnectJson,
        addr: addr.to_owned(),
        token: common::token_for("traced"),
        tenant: "traced".into(),
        timeout: None,
    }
}

fn metrics(admin: &str) -> String {
    let mut stream = std::net::TcpStream::connect(admin).unwrap();
    use std::io::{Read as _, Write as _};
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_place_order_is_one_trace_from_the_callers_span_to_loyaltys_accrual() {
    let received = Received::default();
    let endpoint = received.start().await;
    let admin = format!("127.0.0.1:{}", common::free_port());
    let mut server = common::start_with(
        tempfile::tempdir().unwrap(),
        &["--admin-listen", &admin],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    let caller = client(&server.addr);
    let shop = Shop::open(&caller).await.unwrap();
    let reward = shop.reward(&caller, 30).await;
    let place = shop
        .prepare(&caller, "traced-order", 1, Some(&reward))
        .await
        .unwrap();

    let (header, trace_id, parent) = traceparent(true);
    let body = serde_json::json!({
        "cartId": place.cart_id,
        "quoteId": place.quote_id,
        "expectedTotal": {"currencyCode": "USD", "amountMinor": place.expected_total.unwrap().amount_minor.to_string()},
        "paymentToken": "tok_ok",
    })
    .to_string();
    let (status, placed) = common::connect_json(
        &server.addr,
        "/commerce.checkout.v1.OrderService/PlaceOrder",
        &body,
        Some(&caller.token),
        &[
            ("Idempotency-Key", "traced-order"),
            ("traceparent", &header),
        ],
    );
    assert_eq!(status, 200, "{placed}");

    let spans = received
        .trace(&trace_id, |spans| {
            spans
                .iter()
                .any(|span| span.kind == SpanKind::Consumer as i32)
        })
        .await;
    let summary: Vec<String> = spans
        .iter()
        .map(|span| {
            format!(
                "{} kind={} parent={} {:.1}ms",
                span.name,
                span.kind,
                hex(&span.parent_span_id),
                (span.end_time_unix_nano - span.start_time_unix_nano) as f64 / 1e6
            )
        })
        .collect();
    let shown = summary.join("\n  ");
    eprintln!("trace {trace_id}:\n  {shown}");

    // The SERVER span, a child of the caller's span, with the RPC conventions.
    let server_spans = named(&spans, "commerce.checkout.v1.OrderService/PlaceOrder");
    assert_eq!(server_spans.len(), 1, "one server span:\n  {shown}");
    let rpc = server_spans[0];
    assert_eq!(rpc.kind, SpanKind::Server as i32);
    assert_eq!(hex(&rpc.parent_span_id), parent, "parented on the caller");
    assert_eq!(attribute(rpc, "rpc.system").as_deref(), Some("connect_rpc"));
    assert_eq!(
        attribute(rpc, "rpc.service").as_deref(),
        Some("commerce.checkout.v1.OrderService")
    );
    assert_eq!(attribute(rpc, "rpc.method").as_deref(), Some("PlaceOrder"));
    assert_eq!(
        attribute(rpc, "commerce.service").as_deref(),
        Some("checkout")
    );
    assert!(attribute(rpc, "request_id").is_some_and(|id| !id.is_empty()));
    assert!(
        attribute(rpc, "rpc.connect_rpc.error_code").is_none(),
        "it succeeded"
    );

    // Every other span hangs under it (through its own parents), except the event's spans,
    // which are children of the span that wrote the event.
    let ids: HashMap<String, &Span> = spans.iter().map(|s| (hex(&s.span_id), s)).collect();
    let under_rpc = |span: &Span| {
        let mut at = span;
        for _ in 0..32 {
            if at.span_id == rpc.span_id {
                return true;
            }
            match ids.get(&hex(&at.parent_span_id)) {
                Some(parent) => at = parent,
                None => return false,
            }
        }
        false
    };
    for span in &spans {
        if span.span_id != rpc.span_id {
            assert!(
                under_rpc(span),
                "{} is not under the server span:\n  {shown}",
                span.name
            );
        }
    }
    // The loyalty hold (in process in the all-in-one), the PSP, the store.
    assert!(
        spans.iter().any(|s| s.name == "loyalty RedeemReward"),
        "the loyalty hold:\n  {shown}"
    );
    let psp: Vec<&Span> = spans
        .iter()
        .filter(|s| {
            s.kind == SpanKind::Client as i32
                && attribute(s, "rpc.system").as_deref() == Some("psp")
        })
        .collect();
    assert!(
        psp.iter().any(|s| s.name == "authorize"),
        "the PSP authorization attempt:\n  {shown}"
    );
    assert!(
        spans.iter().any(|s| s.kind == SpanKind::Client as i32
            && attribute(s, "db.system").as_deref() == Some("redb")
            && attribute(s, "db.operation.name").as_deref() == Some("commit_all")
            && attribute(s, "db.group_commit.size")
                .is_some_and(|n| n.parse::<u32>().unwrap() >= 1)),
        "a store commit, with the size of the group commit it shared:\n  {shown}"
    );
    // OrderPaid: published (PRODUCER) and handled by loyalty (CONSUMER), in this trace.
    let publish = spans
        .iter()
        .find(|s| {
            s.kind == SpanKind::Producer as i32
                && attribute(s, "commerce.event_type").as_deref()
                    == Some("commerce.checkout.v1.OrderPaid")
        })
        .unwrap_or_else(|| panic!("OrderPaid's publish:\n  {shown}"));
    assert!(attribute(publish, "messaging.destination.name").is_some());
    let consumer = spans
        .iter()
        .find(|s| {
            s.kind == SpanKind::Consumer as i32
                && attribute(s, "commerce.event_type").as_deref()
                    == Some("commerce.checkout.v1.OrderPaid")
        })
        .unwrap_or_else(|| panic!("loyalty's handling of OrderPaid:\n  {shown}"));
    assert_eq!(
        attribute(consumer, "messaging.operation.type").as_deref(),
        Some("process")
    );
    assert!(
        spans
            .iter()
            .any(|s| s.parent_span_id == consumer.span_id && s.kind == SpanKind::Client as i32),
        "the accrual's store work is under the consumer span:\n  {shown}"
    );
    assert!(received.services().iter().all(|s| s == "commerce"));

    // The duration histogram carries the trace as an exemplar; the exports are counted.
    let exposition = metrics(&admin);
    assert!(
        exposition.contains(&format!("trace_id=\"{trace_id}\"")),
        "an exemplar with the trace id"
    );
    let started = Instant::now();
    while !metrics(&admin).contains("trace_spans_total{outcome=\"exported\"}") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "exports are not counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The log line of the call carries the trace id.
    server.terminate();
    let _ = server.child.wait();
    let logs = server.stderr_after_exit();
    assert!(
        logs.lines().any(|line| line.contains("rpc finished")
            && line.contains(&format!("\"trace_id\":\"{trace_id}\""))
            && line.contains("PlaceOrder")),
        "a log line with the trace id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_calls_and_server_streams_get_server_spans_and_sampling_follows_the_parent() {
    let received = Received::default();
    let endpoint = received.start().await;
    // Ratio 0: no root is sampled, but a sampled parent is honoured.
    let server = common::start_with(
        tempfile::tempdir().unwrap(),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0"),
            ("OTEL_SERVICE_NAME", "traced-commerce"),
        ],
    );
    let caller = client(&server.addr);
    let shop = Shop::open(&caller).await.unwrap();
    let placed = shop.place(&caller, "stream-order", 1).await.unwrap();
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    use http_body_util::BodyExt as _;
    use prost::Message as _;

    // gRPC-web (binary, HTTP/1.1), sampled parent.
    let (header, web_trace, _) = traceparent(true);
    let message = commerce_api::commerce::checkout::v1::GetOrderRequest {
        order_id: placed.order_id.clone(),
    }
    .encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let response = http
        .request(
            http::Request::post(format!(
                "http://{}/commerce.checkout.v1.OrderService/GetOrder",
                server.addr
            ))
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .header("authorization", format!("Bearer {}", caller.token))
            .header("traceparent", &header)
            .body(http_body_util::Full::new(bytes::Bytes::from(frame)))
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let _ = response.into_body().collect().await.unwrap();

    // WatchOrder over Connect streaming, sampled parent; it ends at its deadline.
    let (header, stream_trace, _) = traceparent(true);
    let request = serde_json::json!({ "orderId": placed.order_id }).to_string();
    let mut envelope = vec![0u8];
    envelope.extend_from_slice(&(request.len() as u32).to_be_bytes());
    envelope.extend_from_slice(request.as_bytes());
    let response = http
        .request(
            http::Request::post(format!(
                "http://{}/commerce.checkout.v1.OrderService/WatchOrder",
                server.addr
            ))
            .header("content-type", "application/connect+json")
            .header("connect-protocol-version", "1")
            .header("connect-timeout-ms", "800")
            .header("authorization", format!("Bearer {}", caller.token))
            .header("traceparent", &header)
            .body(http_body_util::Full::new(bytes::Bytes::from(envelope)))
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let streamed = response.into_body().collect().await.unwrap().to_bytes();
    eprintln!("WatchOrder: {}", String::from_utf8_lossy(&streamed));

    // An unsampled parent and no parent: nothing exported (ratio 0).
    let (header, unsampled_trace, _) = traceparent(false);
    let (status, _) = common::connect_json(
        &server.addr,
        "/commerce.checkout.v1.OrderService/GetOrder",
        &serde_json::json!({ "orderId": placed.order_id }).to_string(),
        Some(&caller.token),
        &[("traceparent", &header)],
    );
    assert_eq!(status, 200);

    // A "sampled" flag from a caller without a service or staff token does not force a trace:
    // anonymous callers (a public read) and customer tokens get the ratio, here 0. Otherwise
    // anyone could make every call they send traced and exported.
    let (header, anonymous_trace, _) = traceparent(true);
    let (status, listed) = common::connect_json(
        &server.addr,
        "/commerce.checkout.v1.MenuService/ListLocations",
        "{}",
        None,
        &[("traceparent", &header), ("commerce-tenant", "traced")],
    );
    assert_eq!(status, 200, "{listed}");
    let (header, customer_trace, _) = traceparent(true);
    let customer = common::customer_token("traced", "cust-traced", "loyalty.members.read");
    let (status, _) = common::connect_json(
        &server.addr,
        "/commerce.loyalty.v1.MemberService/GetMember",
        r#"{"customerId":"cust-traced"}"#,
        Some(&customer),
        &[("traceparent", &header)],
    );
    assert_eq!(status, 404, "no such member; the call ran all the same");

    let web = received
        .trace(&web_trace, |spans| {
            !named(spans, "commerce.checkout.v1.OrderService/GetOrder").is_empty()
        })
        .await;
    let web = named(&web, "commerce.checkout.v1.OrderService/GetOrder")
        .first()
        .copied()
        .cloned()
        .expect("the gRPC-web call's server span");
    assert_eq!(web.kind, SpanKind::Server as i32);
    assert_eq!(attribute(&web, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        attribute(&web, "network.protocol.name").as_deref(),
        Some("grpc-web")
    );
    assert_eq!(
        attribute(&web, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );

    let stream = received
        .trace(&stream_trace, |spans| {
            !named(spans, "commerce.checkout.v1.OrderService/WatchOrder").is_empty()
        })
        .await;
    let watch = named(&stream, "commerce.checkout.v1.OrderService/WatchOrder")
        .first()
        .copied()
        .cloned()
        .expect("the stream's server span");
    assert_eq!(
        attribute(&watch, "rpc.system").as_deref(),
        Some("connect_rpc")
    );
    // The span lasts as long as the stream did (its deadline), not just until the first message.
    let lasted = (watch.end_time_unix_nano - watch.start_time_unix_nano) as f64 / 1e6;
    assert!(lasted >= 700.0, "the stream's span lasted {lasted} ms");

    // Give the batch a moment; nothing of the unsampled call (nor of the unparented setup calls).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        received.trace(&unsampled_trace, |_| true).await.is_empty(),
        "an unsampled parent's call was exported"
    );
    for (who, trace) in [
        ("an anonymous caller", &anonymous_trace),
        ("a customer token", &customer_trace),
    ] {
        assert!(
            received.trace(trace, |_| true).await.is_empty(),
            "{who} forced its call to be traced"
        );
    }
    let everything = received.0.lock().unwrap().clone();
    assert!(
        everything
            .iter()
            .all(|(_, span)| [web_trace.as_str(), stream_trace.as_str()]
                .contains(&hex(&span.trace_id).as_str())),
        "only the sampled parents' traces are exported at ratio 0"
    );
    assert!(received.services().iter().all(|s| s == "traced-commerce"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_changes_no_answer_and_its_losses_are_counted() {
    // A collector that is not there: the port refuses connections.
    let endpoint = format!("http://127.0.0.1:{}", common::free_port());
    let admin = format!("127.0.0.1:{}", common::free_port());
    let server = common::start_with(
        tempfile::tempdir().unwrap(),
        &["--admin-listen", &admin],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
        ],
    );
    let caller = client(&server.addr);
    let shop = Shop::open(&caller).await.unwrap();
    let mut slowest = Duration::ZERO;
    for n in 0..20 {
        let started = Instant::now();
        let balance: commerce_api::commerce::loyalty::v1::GetBalanceResponse =
            common::client::Caller::call(
                &caller,
                "/commerce.loyalty.v1.MemberService/GetBalance",
                commerce_api::commerce::loyalty::v1::GetBalanceRequest {
                    member_id: shop.member.clone(),
                },
                None,
            )
            .await
            .unwrap_or_else(|error| panic!("call {n}: {error}"));
        assert!(balance.balance.is_some());
        slowest = slowest.max(started.elapsed());
    }
    // Export happens on its own thread: no call waits for the collector's timeout.
    assert!(
        slowest < Duration::from_millis(900),
        "slowest call {slowest:?}"
    );
    let started = Instant::now();
    loop {
        let exposition = metrics(&admin);
        let failed = exposition
            .lines()
            .find(|line| line.starts_with("trace_spans_total{outcome=\"failed\"}"))
            .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        if failed > 0.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the losses are not counted:\n{exposition}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
