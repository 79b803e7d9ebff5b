//! The split topology end to end, every part a real process (see `common::split`): the PSP,
//! loyalty, two checkout replicas and subscriptions, on Redis and a MongoDB-compatible server.
//!
//! - the ordering flow with a reward (checkout → loyalty over gRPC as a service, the PSP
//!   process), a partial refund, a subscription renewal; loyalty accrues and reverses through
//!   the Redis bus; every reconciliation is clean;
//! - loyalty killed: orders without a reward keep placing, an order with one fails fast with
//!   `unavailable` and nothing is charged; loyalty back: accruals catch up;
//! - a checkout replica killed: the client's calls move to the other;
//! - the PSP killed mid-authorization: the outcome-unknown path, settled by the background round
//!   with one authorization;
//! - a deadline on PlaceOrder bounds the call to loyalty;
//! - service identity: forged, expired and wrong-scope service tokens are refused, and a user
//!   token cannot reach loyalty's holds.

mod common;

use std::time::{Duration, Instant};

use commerce_api::commerce::checkout::v1 as co;
use commerce_api::commerce::loyalty::v1 as lo;
use commerce_api::commerce::subscriptions::v1 as su;
use common::client::{Caller, Client, Protocol};
use common::shop::{Shop, usd};
use common::split::{SETTLE, Split, service_token};

fn user_token() -> String {
    common::dev_token(None)
}

/// Waits until `check` holds (the topology settles things by itself: events, payment rounds).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < SETTLE, "{what}: not within {SETTLE:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`eventually`], saying `context()` when it gives up.
async fn eventually_or<F, Fut>(what: &str, context: impl Fn() -> String, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < SETTLE,
            "{what}: not within {SETTLE:?}; {}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn reconcile_payments(caller: &impl Caller) -> co::ReconcilePaymentsResponse {
    caller
        .call(
            "/commerce.checkout.v1.CheckoutAdminService/ReconcilePayments",
            co::ReconcilePaymentsRequest::default(),
            None,
        )
        .await
        .unwrap()
}

async fn reconcile_loyalty(caller: &impl Caller) -> lo::ReconcileLedgerResponse {
    caller
        .call(
            "/commerce.loyalty.v1.ProgramService/ReconcileLedger",
            lo::ReconcileLedgerRequest::default(),
            None,
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ordering_flow_with_a_reward_a_refund_and_a_renewal_crosses_processes_and_ties_out() {
    let split = Split::start(2, &[]);
    let caller = split.caller(0, &user_token());
    let other_replica = split.caller(1, &user_token());
    let shop = Shop::open(&caller).await.unwrap();
    let reward = shop.reward(&caller, 30).await;

    // Quoted on one replica (which asks loyalty for the reward), placed on the other.
    let place = shop
        .prepare(&caller, "order-1", 2, Some(&reward))
        .await
        .unwrap();
    // 2 × 10.00 − 2.00 = 18.00
    assert_eq!(place.expected_total, usd(1_800));
    let placed: co::PlaceOrderResponse = other_replica
        .call(
            "/commerce.checkout.v1.OrderService/PlaceOrder",
            place,
            Some("order-1"),
        )
        .await
        .unwrap();
    let order = placed.order.unwrap();
    assert_eq!(
        order.payment.as_ref().unwrap().status,
        co::PaymentStatus::Captured as i32
    );
    assert!(order.redemption_id.starts_with("rdm-"), "{order:?}");

    // Loyalty (another process) accrues from OrderPaid on the Redis bus: 18 points earned (the 30
    // granted by hand are not earnings).
    eventually("the accrual", || async {
        shop.lifetime_points(&caller).await.unwrap() == 18
    })
    .await;
    let refund: co::RefundOrderResponse = caller
        .call(
            "/commerce.checkout.v1.OrderService/RefundOrder",
            co::RefundOrderRequest {
                order_id: order.order_id.clone(),
                amount: usd(900),
                reason: "half of it".into(),
            },
            Some("refund-1"),
        )
        .await
        .unwrap();
    assert_eq!(refund.refund.unwrap().amount, usd(900));
    // Half the eligible amount refunded: 9 of the 18 points reversed.
    eventually("the reversal", || async {
        shop.lifetime_points(&caller).await.unwrap() == 9
    })
    .await;

    // Subscriptions charge through the same PSP process; the clock advance renews once.
    let plan: su::CreatePlanResponse = caller
        .call(
            "/commerce.subscriptions.v1.PlanService/CreatePlan",
            su::CreatePlanRequest {
                display_name: "Coffee Club".into(),
                terms: Some(su::PlanVersion {
                    price: usd(999),
                    interval: su::BillingInterval::Month as i32,
                    interval_count: 1,
                    ..Default::default()
                }),
                ..Default::default()
            },
            Some("plan-1"),
        )
        .await
        .unwrap();
    let created: su::CreateSubscriptionResponse = caller
        .call(
            "/commerce.subscriptions.v1.SubscriptionService/CreateSubscription",
            su::CreateSubscriptionRequest {
                customer_id: shop.customer.clone(),
                plan_id: plan.plan.unwrap().plan_id,
                payment_token: "tok_ok".into(),
                ..Default::default()
            },
            Some("subscription-1"),
        )
        .await
        .unwrap();
    let subscription = created.subscription.unwrap();
    assert_eq!(
        subscription.status,
        su::SubscriptionStatus::Active as i32,
        "{subscription:?}"
    );
    let period_end = subscription.current_period_end.unwrap();
    let advanced: su::AdvanceClockResponse = caller
        .call(
            "/commerce.subscriptions.v1.ClockService/AdvanceClock",
            su::AdvanceClockRequest {
                target_time: Some(prost_types::Timestamp {
                    seconds: period_end.seconds + 60,
                    nanos: 0,
                }),
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(advanced.renewal_count, 1);
    assert_eq!(advanced.paid_invoice_count, 1);

    let payments = reconcile_payments(&caller).await;
    assert!(payments.mismatches.is_empty(), "{:?}", payments.mismatches);
    assert_eq!(payments.orders_checked, 1);
    let points = reconcile_loyalty(&caller).await;
    assert!(points.clean, "{:?}", points.discrepancies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_loyalty_down_plain_orders_place_reward_orders_fail_fast_and_accruals_catch_up() {
    let mut split = Split::start(1, &[]);
    let caller = split.caller(0, &user_token());
    let shop = Shop::open(&caller).await.unwrap();
    let reward = shop.reward(&caller, 100).await;
    let with_reward = shop
        .prepare(&caller, "rewarded", 1, Some(&reward))
        .await
        .unwrap();

    let _ = split.loyalty.child.kill();
    let _ = split.loyalty.child.wait();
    // Checkout alone: orders without a reward place (their accrual waits on the bus).
    let mut placed = 0;
    for n in 0..3 {
        let order = shop.place(&caller, &format!("plain-{n}"), 1).await;
        assert!(order.is_ok(), "{order:?}");
        placed += 1;
    }
    // An order that redeems a reward fails fast, naming the dependency; nothing is charged.
    let started = Instant::now();
    let refused: Result<co::PlaceOrderResponse, String> = caller
        .call(
            "/commerce.checkout.v1.OrderService/PlaceOrder",
            with_reward.clone(),
            Some("rewarded"),
        )
        .await;
    assert_eq!(refused.unwrap_err(), "DEPENDENCY_UNAVAILABLE");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failed fast: {:?}",
        started.elapsed()
    );

    // Loyalty back: the accruals of the orders placed meanwhile catch up, and the reward order
    // places on retry with the same key.
    split.restart_loyalty();
    let caller = split.caller(0, &user_token());
    eventually("the accruals placed while loyalty was down", || async {
        shop.lifetime_points(&caller).await.unwrap() == 10 * placed
    })
    .await;
    // The client retries as RetryInfo says: checkout's breaker for loyalty half-opens within
    // seconds of loyalty answering again.
    let started = Instant::now();
    let retried: co::PlaceOrderResponse = loop {
        match caller
            .call(
                "/commerce.checkout.v1.OrderService/PlaceOrder",
                with_reward.clone(),
                Some("rewarded"),
            )
            .await
        {
            Err(error) if error == "DEPENDENCY_UNAVAILABLE" => {
                assert!(started.elapsed() < SETTLE, "loyalty never reached again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            outcome => break outcome.unwrap(),
        }
    };
    assert!(retried.order.unwrap().redemption_id.starts_with("rdm-"));
    let payments = reconcile_payments(&caller).await;
    assert!(payments.mismatches.is_empty(), "{:?}", payments.mismatches);
    assert_eq!(
        payments.orders_checked, 4,
        "three plain orders and the rewarded one"
    );
    eventually("loyalty reconciliation", || async {
        reconcile_loyalty(&caller).await.clean
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_checkout_replica_moves_the_clients_calls_to_the_other() {
    use platform::outbound::{CallContext, Callee, CalleeConfig};
    let mut split = Split::start(2, &[]);
    let shop = Shop::open(&split.caller(0, &user_token())).await.unwrap();
    // A client of both replicas, balancing and retrying per the contract (keyed calls retry with
    // their key), as a service team's gRPC client would.
    let targets = format!(
        "http://{},http://{}",
        split.checkout[0].addr, split.checkout[1].addr
    );
    let token = user_token();
    let client = Callee::new(
        CalleeConfig::new("checkout", targets),
        &commerce_api::DESCRIPTOR_POOL,
        &platform::interceptors::Metrics::default(),
    )
    .unwrap()
    .with_metadata_hook(
        move |_: &platform::outbound::OutboundCall<'_>,
              metadata: &mut tonic::metadata::MetadataMap| {
            metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
            Ok(())
        },
    );
    let routed = split.caller(0, &user_token());
    let place = |n: usize| {
        let client = client.clone();
        let caller = routed.clone();
        let shop = shop.clone();
        async move {
            let request = shop
                .prepare(&caller, &format!("o{n}"), 1, None)
                .await
                .unwrap();
            client
                .unary(
                    &CallContext::default(),
                    "/commerce.checkout.v1.OrderService/PlaceOrder",
                    request,
                    Some(&format!("o{n}")),
                    |channel, request| async move {
                        co::order_service_client::OrderServiceClient::new(channel)
                            .place_order(request)
                            .await
                    },
                )
                .await
        }
    };
    for n in 0..4 {
        place(n).await.unwrap();
    }
    let _ = split.checkout[1].child.kill();
    let _ = split.checkout[1].child.wait();
    for n in 4..10 {
        let placed = place(n).await;
        assert!(placed.is_ok(), "order {n} after the kill: {placed:?}");
    }
    let payments = reconcile_payments(&split.caller(0, &user_token())).await;
    assert_eq!(payments.orders_checked, 10);
    assert!(payments.mismatches.is_empty(), "{:?}", payments.mismatches);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_psp_killed_mid_authorization_is_settled_with_one_authorization() {
    let mut split = Split::start(1, &[]);
    let caller = split.caller(0, &user_token());
    let shop = Shop::open(&caller).await.unwrap();
    let mut request = shop.prepare(&caller, "slow", 1, None).await.unwrap();
    request.payment_token = "tok_latency_1500".into();
    let placing = {
        let caller = split.caller(0, &user_token());
        let request = request.clone();
        tokio::spawn(async move {
            caller
                .call::<_, co::PlaceOrderResponse>(
                    "/commerce.checkout.v1.OrderService/PlaceOrder",
                    request,
                    Some("slow"),
                )
                .await
        })
    };
    // The PSP has taken the authorization and dies before it replies; it comes back on its files.
    tokio::time::sleep(Duration::from_millis(700)).await;
    split.restart_psp();
    let outcome = placing.await.unwrap();
    assert!(
        outcome.is_ok()
            || matches!(
                outcome.as_ref().map_err(String::as_str),
                Err("PAYMENT_OUTCOME_UNKNOWN" | "DEPENDENCY_UNAVAILABLE")
            ),
        "{outcome:?}"
    );
    // Answered or not, the placement ends with one order, captured, authorized once.
    let checkout_logs = split.checkout[0].stderr.clone();
    let psp_logs = split.psp.stderr.clone();
    eventually_or(
        "the placement settled and captured",
        || {
            format!(
                "checkout: {}\n\npsp: {}",
                checkout_logs.lock().unwrap(),
                psp_logs.lock().unwrap()
            )
        },
        || async {
            let listed: co::ListOrdersResponse = caller
                .call(
                    "/commerce.checkout.v1.OrderService/ListOrders",
                    co::ListOrdersRequest::default(),
                    None,
                )
                .await
                .unwrap();
            listed.orders.len() == 1
                && listed.orders[0].payment.as_ref().map(|p| p.status)
                    == Some(co::PaymentStatus::Captured as i32)
        },
    )
    .await;
    let payments = reconcile_payments(&caller).await;
    assert_eq!(payments.orders_checked, 1);
    assert!(payments.mismatches.is_empty(), "{:?}", payments.mismatches);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_on_place_order_bounds_the_call_to_loyalty() {
    let split = Split::start(1, &[]);
    let caller = split.caller(0, &user_token());
    let shop = Shop::open(&caller).await.unwrap();
    let reward = shop.reward(&caller, 100).await;
    let request = shop
        .prepare(&caller, "timed", 1, Some(&reward))
        .await
        .unwrap();
    let placed: co::PlaceOrderResponse = Client {
        timeout: Some(Duration::from_millis(200)),
        ..client(&split.checkout[0].addr)
    }
    .call(
        "/commerce.checkout.v1.OrderService/PlaceOrder",
        request,
        Some("timed"),
    )
    .await
    .unwrap();
    let order = placed.order.unwrap();
    // Loyalty's log line for the hold shows the deadline it was given: what was left of 200 ms.
    let logs = split.loyalty.stderr.lock().unwrap().clone();
    let hold = logs
        .lines()
        .find(|line| line.contains("RewardService/RedeemReward") && line.contains("rpc finished"))
        .unwrap_or_else(|| panic!("no hold in loyalty's log: {logs}"));
    let line: serde_json::Value = serde_json::from_str(hold).unwrap();
    let timeout = line["fields"]["grpc_timeout"].as_str().unwrap_or_default();
    let given = grpc_timeout(timeout)
        .unwrap_or_else(|| panic!("a grpc-timeout, got {timeout:?} in {hold}"));
    assert!(
        given > Duration::ZERO && given < Duration::from_millis(200),
        "{given:?}"
    );
    assert!(order.redemption_id.starts_with("rdm-"));
}

/// A `grpc-timeout` value (digits and a unit: H, M, S, m, u, n).
fn grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

fn client(addr: &str) -> Client {
    Client {
        protocol: Protocol::Grpc,
        addr: addr.to_owned(),
        token: user_token(),
        tenant: "demo".into(),
        timeout: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loyalty_refuses_forged_expired_and_wrong_scope_service_tokens_and_user_tokens_without_the_scope()
 {
    let split = Split::start(1, &[]);
    let shop = Shop::open(&split.caller(0, &user_token())).await.unwrap();
    let hold = || lo::RedeemRewardRequest {
        member_id: shop.member.clone(),
        reward_id: "rwd-none".into(),
        order_id: "ord-1".into(),
    };
    let redeem = |token: String| {
        let request = hold();
        let addr = split.loyalty.addr.clone();
        async move {
            Client {
                token,
                ..client(&addr)
            }
            .call::<_, lo::RedeemRewardResponse>(
                "/commerce.loyalty.v1.RewardService/RedeemReward",
                request,
                Some("hold-1"),
            )
            .await
        }
    };
    let real_key = std::fs::read(split.base.keys.path().join("checkout.pem")).unwrap();
    let (forged_key, _) = platform::identity::generate_es256("checkout").unwrap();
    let scope = "loyalty.redemptions.write";
    assert_eq!(
        redeem(service_token(forged_key.as_bytes(), scope, 300))
            .await
            .unwrap_err(),
        "TOKEN_INVALID",
        "a key loyalty does not trust"
    );
    let real_kid = platform::identity::key_id("checkout", &real_key).unwrap();
    assert_eq!(
        redeem(common::split::service_token_as(
            &real_kid,
            forged_key.as_bytes(),
            scope,
            300
        ))
        .await
        .unwrap_err(),
        "TOKEN_INVALID",
        "a forged token under the trusted key's id"
    );
    assert_eq!(
        redeem(service_token(&real_key, scope, -60))
            .await
            .unwrap_err(),
        "TOKEN_EXPIRED"
    );
    assert_eq!(
        redeem(service_token(&real_key, "loyalty.members.read", 300))
            .await
            .unwrap_err(),
        "SCOPE_MISSING"
    );
    assert_eq!(
        redeem(common::dev_token(Some("checkout.orders.write")))
            .await
            .unwrap_err(),
        "SCOPE_MISSING",
        "a user who may place orders cannot hold points directly"
    );
    // The real service token with the scope gets through to loyalty's own answer.
    assert_eq!(
        redeem(service_token(&real_key, scope, 300))
            .await
            .unwrap_err(),
        "RESOURCE_NOT_FOUND"
    );
}

/// The health status a server reports for `service` ("" for the whole server).
async fn health(addr: &str, service: &str) -> i32 {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    client
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_replica_is_not_serving_until_loyalty_answers() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let base = common::split::Base::start(&[]);
    let psp = base.start_psp();
    let loyalty_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let loyalty_addr = format!("127.0.0.1:{loyalty_port}");
    let checkout =
        base.start_checkout_at(&format!("http://{loyalty_addr}"), &common::split::url(&psp));
    for service in ["", "commerce.checkout.v1.OrderService"] {
        assert_eq!(
            health(&checkout.addr, service).await,
            ServingStatus::NotServing as i32,
            "{service:?} while loyalty does not answer"
        );
    }
    let _loyalty = base.start_service("loyalty", &["--listen", &loyalty_addr]);
    let logs = checkout.stderr.clone();
    eventually_or(
        "checkout SERVING once loyalty answers",
        || logs.lock().unwrap().clone(),
        || async {
            health(&checkout.addr, "commerce.checkout.v1.OrderService").await
                == ServingStatus::Serving as i32
        },
    )
    .await;
}
