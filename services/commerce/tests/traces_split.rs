//! One trace across processes in the split topology: a `PlaceOrder` with a reward, sent to a
//! checkout replica with the caller's `traceparent`, reaches loyalty (the hold, over gRPC) and
//! the PSP process as CLIENT → SERVER span pairs in the same trace, and loyalty's handling of
//! `OrderPaid` — in another process, through Redis Streams — joins it too. Every process exports
//! to the test's collector under its own service name.

mod common;

use common::otlp::{Received, attribute, hex};
use common::shop::Shop;
use common::split::Split;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reward_order_is_one_trace_across_checkout_loyalty_the_psp_and_the_event_bus() {
    let received = Received::default();
    let endpoint = received.start().await;
    // Every process of the topology inherits the collector's address (this binary has this one
    // test, so nothing else reads the environment while it changes).
    unsafe { std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint) };
    let split = Split::start(1, &[]);
    let token = common::token_for("demo");
    let caller = split.caller(0, &token);
    let shop = Shop::open(&caller).await.unwrap();
    let reward = shop.reward(&caller, 30).await;
    let place = shop
        .prepare(&caller, "split-traced", 1, Some(&reward))
        .await
        .unwrap();

    let trace_id = format!("{:032x}", fastrand::u128(1..));
    let parent = format!("{:016x}", fastrand::u64(1..));
    let body = serde_json::json!({
        "cartId": place.cart_id,
        "quoteId": place.quote_id,
        "expectedTotal": {"currencyCode": "USD", "amountMinor": place.expected_total.unwrap().amount_minor.to_string()},
        "paymentToken": "tok_ok",
    })
    .to_string();
    let (status, placed) = common::connect_json(
        &split.checkout[0].addr,
        "/commerce.checkout.v1.OrderService/PlaceOrder",
        &body,
        Some(&token),
        &[
            ("Idempotency-Key", "split-traced"),
            ("traceparent", &format!("00-{trace_id}-{parent}-01")),
        ],
    );
    assert_eq!(status, 200, "{placed}");

    let is_accrual = |(service, span): &(String, Span)| {
        service == "commerce-loyalty"
            && span.kind == SpanKind::Consumer as i32
            && attribute(span, "commerce.event_type").as_deref()
                == Some("commerce.checkout.v1.OrderPaid")
    };
    let spans = received
        .trace_by_service(&trace_id, |spans| {
            spans.iter().any(is_accrual)
                && spans.iter().any(|(service, span)| {
                    service == "commerce-checkout"
                        && span.name == "commerce.checkout.v1.OrderService/PlaceOrder"
                })
        })
        .await;
    let shown: Vec<String> = spans
        .iter()
        .map(|(service, span)| {
            format!(
                "[{service}] {} kind={} id={} parent={}",
                span.name,
                span.kind,
                hex(&span.span_id),
                hex(&span.parent_span_id)
            )
        })
        .collect();
    let shown = shown.join("\n  ");
    let find = |service: &str, name: &str, kind: SpanKind| {
        spans
            .iter()
            .find(|(s, span)| s == service && span.name == name && span.kind == kind as i32)
            .map(|(_, span)| span.clone())
            .unwrap_or_else(|| panic!("no {kind:?} span {name} from {service}:\n  {shown}"))
    };

    let rpc = find(
        "commerce-checkout",
        "commerce.checkout.v1.OrderService/PlaceOrder",
        SpanKind::Server,
    );
    assert_eq!(hex(&rpc.parent_span_id), parent);
    // The hold: checkout's attempt is the parent of loyalty's server span.
    let redeem = "commerce.loyalty.v1.RewardService/RedeemReward";
    let hold_client = find("commerce-checkout", redeem, SpanKind::Client);
    let hold_server = find("commerce-loyalty", redeem, SpanKind::Server);
    assert_eq!(hold_server.parent_span_id, hold_client.span_id, "{shown}");
    assert_eq!(
        attribute(&hold_client, "commerce.attempt").as_deref(),
        Some("1")
    );
    // The PSP, another process.
    let authorize_server = spans
        .iter()
        .find(|(s, span)| {
            s == "commerce-psp"
                && span.kind == SpanKind::Server as i32
                && span.name.ends_with("/Authorize")
        })
        .map(|(_, span)| span.clone())
        .unwrap_or_else(|| panic!("the PSP's authorization:\n  {shown}"));
    let authorize_client = spans
        .iter()
        .find(|(_, span)| span.span_id == authorize_server.parent_span_id)
        .unwrap_or_else(|| panic!("the PSP call's client span:\n  {shown}"));
    assert_eq!(authorize_client.0, "commerce-checkout");
    assert_eq!(authorize_client.1.kind, SpanKind::Client as i32);
    // OrderPaid crossed Redis Streams to loyalty's process, in the same trace.
    assert!(
        spans.iter().any(is_accrual),
        "loyalty's accrual:\n  {shown}"
    );
}
