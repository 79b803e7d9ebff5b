//! Checkout end to end through the running binary, once over Connect JSON and once over gRPC,
//! each in its own tenant: menu → cart → quote → place (PSP simulator) → a browser-style
//! `WatchOrder` stream over Connect sees every status change in order while the kitchen moves the
//! order to completed → loyalty accrued the points from checkout's `OrderPaid` event (outbox →
//! relay → bus → loyalty's consumer), with the redeemed reward's hold posted → a partial refund
//! reverses points in proportion (`OrderRefunded`), and no refund can exceed what was captured.

mod common;

use std::time::{Duration, Instant};

use commerce_api::commerce::checkout::v1 as co;
use commerce_api::commerce::common::v1::Money;
use commerce_api::commerce::loyalty::v1 as lo;
use common::client::{Client, Protocol};

fn usd(cents: i64) -> Option<Money> {
    Some(Money {
        currency_code: "USD".into(),
        amount_minor: cents,
    })
}

async fn scenario(client: &Client) {
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
                    display_name: "Downtown".into(),
                    time_zone: "America/New_York".into(),
                    currency_code: "USD".into(),
                    opening_hours: every_day.to_vec(),
                    fulfillment_modes: vec![co::FulfillmentMode::Pickup as i32],
                    tax_rates: vec![co::TaxRate {
                        tax_category: "food".into(),
                        rate_ppm: 88_750,
                    }],
                    ..Default::default()
                }),
            },
            Some("loc-1"),
        )
        .await
        .unwrap();
    let location = location.location.unwrap().location_id;
    let item: co::CreateMenuItemResponse = client
        .call(
            "/commerce.checkout.v1.MenuService/CreateMenuItem",
            co::CreateMenuItemRequest {
                item: Some(co::MenuItem {
                    sku: "BURGER".into(),
                    display_name: "Burger".into(),
                    category: "burgers".into(),
                    tax_category: "food".into(),
                    base_price: usd(1_000),
                    active: true,
                    ..Default::default()
                }),
            },
            Some("item-1"),
        )
        .await
        .unwrap();
    let burger = item.item.unwrap().item_id;

    // A registered member with 30 points and a $2-off reward costing 20.
    let member: lo::EnrollMemberResponse = client
        .call(
            "/commerce.loyalty.v1.MemberService/EnrollMember",
            lo::EnrollMemberRequest {
                customer_id: "cust-1".into(),
                registered: true,
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    let member = member.member.unwrap().member_id;
    let _: lo::AdjustPointsResponse = client
        .call(
            "/commerce.loyalty.v1.PointsService/AdjustPoints",
            lo::AdjustPointsRequest {
                member_id: member.clone(),
                points: 30,
                reason: "welcome bonus".into(),
            },
            Some("welcome"),
        )
        .await
        .unwrap();
    let reward: lo::CreateRewardResponse = client
        .call(
            "/commerce.loyalty.v1.RewardService/CreateReward",
            lo::CreateRewardRequest {
                reward: Some(lo::Reward {
                    display_name: "$2 off".into(),
                    point_cost: 20,
                    benefit: Some(lo::reward::Benefit::AmountOff(Money {
                        currency_code: "USD".into(),
                        amount_minor: 200,
                    })),
                    active: true,
                    ..Default::default()
                }),
            },
            Some("reward-1"),
        )
        .await
        .unwrap();
    let reward = reward.reward.unwrap().reward_id;

    // Cart: two burgers, the reward, quote.
    let cart: co::CreateCartResponse = client
        .call(
            "/commerce.checkout.v1.CartService/CreateCart",
            co::CreateCartRequest {
                location_id: location.clone(),
                customer_id: "cust-1".into(),
                fulfillment: None,
            },
            Some("cart-1"),
        )
        .await
        .unwrap();
    let cart = cart.cart.unwrap().cart_id;
    let _: co::AddCartLineResponse = client
        .call(
            "/commerce.checkout.v1.CartService/AddCartLine",
            co::AddCartLineRequest {
                cart_id: cart.clone(),
                item_id: burger.clone(),
                quantity: 2,
                ..Default::default()
            },
            Some("line-1"),
        )
        .await
        .unwrap();
    let _: co::SetLoyaltyRewardResponse = client
        .call(
            "/commerce.checkout.v1.CartService/SetLoyaltyReward",
            co::SetLoyaltyRewardRequest {
                cart_id: cart.clone(),
                member_id: member.clone(),
                reward: Some(co::LoyaltyRewardSelection {
                    reward_id: reward.clone(),
                }),
            },
            None,
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
    // 2 × 10.00 − 2.00 reward = 18.00 taxable; tax 8.875% = 1.5975 → 1.60; total 19.60.
    assert_eq!(
        (
            quote.items_subtotal.clone(),
            quote.reward_discount.clone(),
            quote.tax_total.clone(),
            quote.total.clone()
        ),
        (usd(2_000), usd(200), usd(160), usd(1_960))
    );

    // Place it twice with one key: one order.
    let place = || co::PlaceOrderRequest {
        cart_id: cart.clone(),
        quote_id: quote.quote_id.clone(),
        expected_total: quote.total.clone(),
        payment_token: "tok_ok".into(),
        ..Default::default()
    };
    let placed: co::PlaceOrderResponse = client
        .call(
            "/commerce.checkout.v1.OrderService/PlaceOrder",
            place(),
            Some("order-1"),
        )
        .await
        .unwrap();
    let order = placed.order.unwrap();
    let again: co::PlaceOrderResponse = client
        .call(
            "/commerce.checkout.v1.OrderService/PlaceOrder",
            place(),
            Some("order-1"),
        )
        .await
        .unwrap();
    assert_eq!(again.order.unwrap().order_id, order.order_id);
    // The same cart under another key: a cart places one order.
    let other_key: Result<co::PlaceOrderResponse, String> = client
        .call(
            "/commerce.checkout.v1.OrderService/PlaceOrder",
            place(),
            Some("order-2"),
        )
        .await;
    assert_eq!(other_key.unwrap_err(), "CART_ALREADY_ORDERED");
    let payment = order.payment.clone().unwrap();
    assert_eq!(payment.status, co::PaymentStatus::Captured as i32);
    assert_eq!(payment.captured_amount, usd(1_960));
    assert!(order.redemption_id.starts_with("rdm-"), "{order:?}");

    // A browser watches the order over Connect (server streaming, JSON) while the kitchen works.
    let watcher = tokio::spawn(watch_over_connect(
        client.addr.clone(),
        client.token.clone(),
        order.order_id.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The kitchen moves it to completed; skipping a step is refused.
    let skip: Result<co::AdvanceOrderStatusResponse, String> = client
        .call(
            "/commerce.checkout.v1.OrderService/AdvanceOrderStatus",
            co::AdvanceOrderStatusRequest {
                order_id: order.order_id.clone(),
                status: co::OrderStatus::Ready as i32,
            },
            None,
        )
        .await;
    assert_eq!(skip.unwrap_err(), "ORDER_TRANSITION_INVALID");
    for status in [
        co::OrderStatus::Accepted,
        co::OrderStatus::InPreparation,
        co::OrderStatus::Ready,
        co::OrderStatus::Completed,
    ] {
        let _: co::AdvanceOrderStatusResponse = client
            .call(
                "/commerce.checkout.v1.OrderService/AdvanceOrderStatus",
                co::AdvanceOrderStatusRequest {
                    order_id: order.order_id.clone(),
                    status: status as i32,
                },
                None,
            )
            .await
            .unwrap();
    }
    let listed: co::ListOrdersResponse = client
        .call(
            "/commerce.checkout.v1.OrderService/ListOrders",
            co::ListOrdersRequest {
                customer_id: "cust-1".into(),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(listed.orders.len(), 1);
    let seen = tokio::time::timeout(Duration::from_secs(20), watcher)
        .await
        .expect("the watch ends when the order completes")
        .unwrap();
    assert_eq!(
        seen,
        [
            "ORDER_STATUS_PLACED",
            "ORDER_STATUS_ACCEPTED",
            "ORDER_STATUS_IN_PREPARATION",
            "ORDER_STATUS_READY",
            "ORDER_STATUS_COMPLETED"
        ],
        "every status change, in order"
    );
    assert_eq!(listed.orders[0].status, co::OrderStatus::Completed as i32);

    // Loyalty: the reward's 20 points were spent (hold posted) and the paid order accrued
    // 18 points (1 per USD 1.00 of the 18.00 eligible after the reward), from OrderPaid.
    let deadline = Instant::now() + Duration::from_secs(20);
    let balance = loop {
        let balance: lo::GetBalanceResponse = client
            .call(
                "/commerce.loyalty.v1.MemberService/GetBalance",
                lo::GetBalanceRequest {
                    member_id: member.clone(),
                },
                None,
            )
            .await
            .unwrap();
        let balance = balance.balance.unwrap();
        if balance.lifetime_points > 0 || Instant::now() > deadline {
            break balance;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (balance.lifetime_points, balance.held_points),
        (18, 0),
        "{balance:?}"
    );
    assert_eq!(balance.active_points, 30 - 20 + 18, "{balance:?}");
    let redemption: lo::GetRedemptionResponse = client
        .call(
            "/commerce.loyalty.v1.RewardService/GetRedemption",
            lo::GetRedemptionRequest {
                redemption_id: order.redemption_id.clone(),
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        redemption.redemption.unwrap().status,
        lo::RedemptionStatus::Posted as i32
    );

    // Refund half: 9.80 of 19.60; loyalty reverses half the 18 points earned.
    let refund = || co::RefundOrderRequest {
        order_id: order.order_id.clone(),
        amount: usd(980),
        reason: "cold fries".into(),
    };
    let refunded: co::RefundOrderResponse = client
        .call(
            "/commerce.checkout.v1.OrderService/RefundOrder",
            refund(),
            Some("refund-1"),
        )
        .await
        .unwrap();
    let again: co::RefundOrderResponse = client
        .call(
            "/commerce.checkout.v1.OrderService/RefundOrder",
            refund(),
            Some("refund-1"),
        )
        .await
        .unwrap();
    assert_eq!(
        again.refund, refunded.refund,
        "a retried refund refunds once"
    );
    let paid = refunded.order.unwrap().payment.unwrap();
    assert_eq!(paid.status, co::PaymentStatus::PartiallyRefunded as i32);
    assert_eq!(paid.refunded_amount, usd(980));
    let too_much: Result<co::RefundOrderResponse, String> = client
        .call(
            "/commerce.checkout.v1.OrderService/RefundOrder",
            co::RefundOrderRequest {
                amount: usd(981),
                ..refund()
            },
            Some("refund-2"),
        )
        .await;
    assert_eq!(too_much.unwrap_err(), "REFUND_EXCEEDS_CAPTURED");
    let deadline = Instant::now() + Duration::from_secs(20);
    let balance = loop {
        let balance: lo::GetBalanceResponse = client
            .call(
                "/commerce.loyalty.v1.MemberService/GetBalance",
                lo::GetBalanceRequest {
                    member_id: member.clone(),
                },
                None,
            )
            .await
            .unwrap();
        let balance = balance.balance.unwrap();
        if balance.lifetime_points < 18 || Instant::now() > deadline {
            break balance;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (balance.lifetime_points, balance.active_points),
        (9, 19),
        "{balance:?}"
    );
}

/// `WatchOrder` as a browser's Connect client makes it: HTTP/1.1 POST, `application/connect+json`,
/// one enveloped request; returns the status of every message until the end-of-stream frame.
async fn watch_over_connect(addr: String, token: String, order_id: String) -> Vec<String> {
    use http_body_util::BodyExt as _;
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
            .header("connect-protocol-version", "1")
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Full::new(bytes::Bytes::from(envelope)))
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut buffer: Vec<u8> = Vec::new();
    let mut statuses = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            buffer.extend_from_slice(&data);
        }
        while buffer.len() >= 5 {
            let length = u32::from_be_bytes(buffer[1..5].try_into().unwrap()) as usize;
            if buffer.len() < 5 + length {
                break;
            }
            let flags = buffer[0];
            let message: serde_json::Value =
                serde_json::from_slice(&buffer[5..5 + length]).unwrap();
            buffer.drain(..5 + length);
            if flags & 0x02 != 0 {
                assert!(
                    message.get("error").is_none(),
                    "stream ended with {message}"
                );
                return statuses;
            }
            statuses.push(
                message["order"]["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_end_to_end_over_connect_json_and_grpc() {
    let server = common::start();
    for (protocol, tenant) in [
        (Protocol::ConnectJson, "shop-connect"),
        (Protocol::Grpc, "shop-grpc"),
    ] {
        let client = Client {
            protocol,
            addr: server.addr.clone(),
            token: common::token_for(tenant),
            tenant: tenant.into(),
        };
        scenario(&client).await;
        // The operator command ties the tenant's orders, PSP transactions and money ledger out
        // through the running server.
        let reconcile = std::process::Command::new(env!("CARGO_BIN_EXE_commerce"))
            .args(["checkout", "reconcile", "--tenant", tenant, "--server"])
            .arg(format!("http://{}", server.addr))
            .env("COMMERCE_JWT_HS256_SECRET", common::SECRET)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&reconcile.stdout);
        assert!(
            reconcile.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&reconcile.stderr)
        );
        // 19.60 captured, 9.80 refunded.
        assert!(
            stdout.contains("1 orders checked, net captured [980 USD]") && stdout.contains("clean"),
            "{stdout}"
        );
    }
}

const PLACE: &str = "/commerce.checkout.v1.OrderService/PlaceOrder";
const REFUND: &str = "/commerce.checkout.v1.OrderService/RefundOrder";
const GET: &str = "/commerce.checkout.v1.OrderService/GetOrder";

/// A location open every day (capturing on placement, or on completion) selling one $10
/// burger, untaxed; returns the location and the item.
async fn shop(client: &Client, key: &str, capture_mode: co::CaptureMode) -> (String, String) {
    let location: co::CreateLocationResponse = client
        .call(
            "/commerce.checkout.v1.MenuService/CreateLocation",
            co::CreateLocationRequest {
                location: Some(co::Location {
                    display_name: key.into(),
                    time_zone: "UTC".into(),
                    currency_code: "USD".into(),
                    opening_hours: (1..=7)
                        .map(|day| co::OpeningHours {
                            day,
                            open_minute: 0,
                            close_minute: 1440,
                        })
                        .collect(),
                    fulfillment_modes: vec![co::FulfillmentMode::Pickup as i32],
                    capture_mode: capture_mode as i32,
                    ..Default::default()
                }),
            },
            Some(&format!("{key}-location")),
        )
        .await
        .unwrap();
    let location = location.location.unwrap().location_id;
    let item: co::CreateMenuItemResponse = client
        .call(
            "/commerce.checkout.v1.MenuService/CreateMenuItem",
            co::CreateMenuItemRequest {
                item: Some(co::MenuItem {
                    sku: format!("{key}-BURGER"),
                    display_name: "Burger".into(),
                    category: "burgers".into(),
                    base_price: usd(1_000),
                    active: true,
                    ..Default::default()
                }),
            },
            Some(&format!("{key}-item")),
        )
        .await
        .unwrap();
    (location, item.item.unwrap().item_id)
}

/// A one-burger cart at `location`, quoted: the PlaceOrder request paying with `tok_ok`.
async fn quoted_cart(
    client: &Client,
    location: &str,
    item: &str,
    key: &str,
) -> co::PlaceOrderRequest {
    let cart: co::CreateCartResponse = client
        .call(
            "/commerce.checkout.v1.CartService/CreateCart",
            co::CreateCartRequest {
                location_id: location.into(),
                customer_id: "cust-1".into(),
                fulfillment: None,
            },
            Some(&format!("{key}-cart")),
        )
        .await
        .unwrap();
    let cart = cart.cart.unwrap().cart_id;
    let _: co::AddCartLineResponse = client
        .call(
            "/commerce.checkout.v1.CartService/AddCartLine",
            co::AddCartLineRequest {
                cart_id: cart.clone(),
                item_id: item.into(),
                quantity: 1,
                ..Default::default()
            },
            Some(&format!("{key}-line")),
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
    co::PlaceOrderRequest {
        cart_id: cart,
        quote_id: quote.quote_id,
        expected_total: quote.total,
        payment_token: "tok_ok".into(),
        ..Default::default()
    }
}

async fn order(client: &Client, order_id: &str) -> co::Order {
    let got: co::GetOrderResponse = client
        .call(
            GET,
            co::GetOrderRequest {
                order_id: order_id.into(),
            },
            None,
        )
        .await
        .unwrap();
    got.order.unwrap()
}

/// `commerce checkout reconcile` against the running server: its output, and whether it said
/// clean (exit 0).
fn reconcile(addr: &str, tenant: &str) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_commerce"))
        .args(["checkout", "reconcile", "--tenant", tenant, "--server"])
        .arg(format!("http://{addr}"))
        .env("COMMERCE_JWT_HS256_SECRET", common::SECRET)
        .output()
        .unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

fn grpc_client(addr: &str, tenant: &str) -> Client {
    Client {
        protocol: Protocol::Grpc,
        addr: addr.to_owned(),
        token: common::token_for(tenant),
        tenant: tenant.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sigkill_the_psp_still_knows_every_payment_and_captures_due_at_the_kill_complete() {
    let tenant = "shop-restart";
    // The second capture kills the process after the PSP took the money and before the order
    // recorded it.
    let mut server = common::start_with(
        tempfile::tempdir().unwrap(),
        &["--payment-resolver-seconds", "1"],
        &[("COMMERCE_FAILPOINTS", "checkout.capture.after_psp@2")],
    );
    let client = grpc_client(&server.addr, tenant);
    let (counter, burger) = shop(&client, "counter", co::CaptureMode::OnPlacement).await;
    let (table, steak) = shop(&client, "table", co::CaptureMode::OnCompletion).await;
    // Captured on placement, then partly refunded.
    let first: co::PlaceOrderResponse = client
        .call(
            PLACE,
            quoted_cart(&client, &counter, &burger, "o1").await,
            Some("o1"),
        )
        .await
        .unwrap();
    let first = first.order.unwrap();
    let _: co::RefundOrderResponse = client
        .call(
            REFUND,
            co::RefundOrderRequest {
                order_id: first.order_id.clone(),
                amount: usd(300),
                reason: "cold".into(),
            },
            Some("r1"),
        )
        .await
        .unwrap();
    // Authorized, captured when completed.
    let second: co::PlaceOrderResponse = client
        .call(
            PLACE,
            quoted_cart(&client, &table, &steak, "o2").await,
            Some("o2"),
        )
        .await
        .unwrap();
    let second = second.order.unwrap();
    assert_eq!(
        second.payment.clone().unwrap().status,
        co::PaymentStatus::Authorized as i32
    );
    // Dies in its capture.
    let third = quoted_cart(&client, &counter, &burger, "o3").await;
    let died: Result<co::PlaceOrderResponse, String> =
        client.call(PLACE, third.clone(), Some("o3")).await;
    assert!(died.is_err(), "{died:?}");
    let exit = server.child.wait().unwrap();
    assert!(!exit.success(), "killed by the crash point");

    let restarted = common::start_in(
        common::copy_of(server.data_dir.path()),
        &["--payment-resolver-seconds", "1"],
    );
    let client = grpc_client(&restarted.addr, tenant);
    // The capture due at the kill completes: the background round asks the PSP under the same
    // capture key, and the PSP — which remembers — replays it.
    let listed: co::ListOrdersResponse = client
        .call(
            "/commerce.checkout.v1.OrderService/ListOrders",
            co::ListOrdersRequest::default(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(listed.orders.len(), 3);
    let third = listed
        .orders
        .iter()
        .find(|order| order.cart_id == third.cart_id)
        .unwrap()
        .order_id
        .clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = order(&client, &third).await.payment.unwrap().status;
        if status == co::PaymentStatus::Captured as i32 {
            break;
        }
        assert!(Instant::now() < deadline, "still {status} after 20 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The authorization made before the kill is captured on completion; the capture made before
    // it is refunded further.
    for status in [
        co::OrderStatus::Accepted,
        co::OrderStatus::InPreparation,
        co::OrderStatus::Ready,
        co::OrderStatus::Completed,
    ] {
        let _: co::AdvanceOrderStatusResponse = client
            .call(
                "/commerce.checkout.v1.OrderService/AdvanceOrderStatus",
                co::AdvanceOrderStatusRequest {
                    order_id: second.order_id.clone(),
                    status: status as i32,
                },
                None,
            )
            .await
            .unwrap();
    }
    let completed = order(&client, &second.order_id).await.payment.unwrap();
    assert_eq!(completed.status, co::PaymentStatus::Captured as i32);
    let refunded: co::RefundOrderResponse = client
        .call(
            REFUND,
            co::RefundOrderRequest {
                order_id: first.order_id.clone(),
                amount: usd(700),
                reason: "cold".into(),
            },
            Some("r2"),
        )
        .await
        .unwrap();
    assert_eq!(
        refunded.order.unwrap().payment.unwrap().status,
        co::PaymentStatus::Refunded as i32
    );
    // Orders, the PSP and the money ledger tie out across the restart.
    let (clean, report) = reconcile(&restarted.addr, tenant);
    assert!(clean, "{report}");
    assert!(
        report.contains("3 orders checked, net captured [2000 USD]"),
        "{report}"
    );
}

/// A gRPC call with an idempotency key; returns whether the answer was a replay
/// (`idempotent-replayed: true`) and the response, or the status.
async fn keyed_grpc<Req, Resp>(
    client: &Client,
    path: &str,
    request: Req,
    key: &str,
) -> Result<(bool, Resp), tonic::Status>
where
    Req: prost::Message + 'static,
    Resp: prost::Message + Default + 'static,
{
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", client.addr))
        .unwrap()
        .connect()
        .await
        .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    let mut request = tonic::Request::new(request);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", client.token).parse().unwrap(),
    );
    request
        .metadata_mut()
        .insert("idempotency-key", key.parse().unwrap());
    let response = grpc
        .unary(
            request,
            path.parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await?;
    let replayed = response
        .metadata()
        .get("idempotent-replayed")
        .is_some_and(|value| value == "true");
    Ok((replayed, response.into_inner()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placements_and_refunds_killed_between_their_commit_and_the_reply_replay_after_a_restart() {
    let tenant = "shop-replay";
    let armed = |point: &str| vec![("COMMERCE_FAILPOINTS", point.to_owned())];
    let start = |data: tempfile::TempDir, env: Vec<(&'static str, String)>| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        common::start_with(data, &[], &env)
    };
    let mut server = start(
        tempfile::tempdir().unwrap(),
        armed("checkout.place_order.replying"),
    );
    let client = grpc_client(&server.addr, tenant);
    let (counter, burger) = shop(&client, "counter", co::CaptureMode::OnPlacement).await;
    let (table, steak) = shop(&client, "table", co::CaptureMode::OnCompletion).await;
    let captured_now = quoted_cart(&client, &counter, &burger, "o1").await;
    let captured_later = quoted_cart(&client, &table, &steak, "o2").await;

    // 1. A placement captured at once dies after its capture's commit, before the reply.
    let died =
        keyed_grpc::<_, co::PlaceOrderResponse>(&client, PLACE, captured_now.clone(), "o1").await;
    assert!(died.is_err(), "{died:?}");
    assert!(!server.child.wait().unwrap().success());
    let mut server = start(
        common::copy_of(server.data_dir.path()),
        armed("checkout.place_order.replying"),
    );
    let client = grpc_client(&server.addr, tenant);
    // Its retry is a replay of the committed answer (the handler does not run again: the
    // armed crash point would kill this server too).
    let (replayed, first) =
        keyed_grpc::<_, co::PlaceOrderResponse>(&client, PLACE, captured_now.clone(), "o1")
            .await
            .unwrap();
    assert!(replayed, "the retry must replay the recorded answer");
    let first = first.order.unwrap();
    assert_eq!(
        first.payment.clone().unwrap().status,
        co::PaymentStatus::Captured as i32
    );
    assert_eq!(
        first,
        order(&client, &first.order_id).await,
        "the final order"
    );

    // 2. A placement captured on completion dies after the order's commit.
    let died =
        keyed_grpc::<_, co::PlaceOrderResponse>(&client, PLACE, captured_later.clone(), "o2").await;
    assert!(died.is_err(), "{died:?}");
    assert!(!server.child.wait().unwrap().success());
    let mut server = start(
        common::copy_of(server.data_dir.path()),
        armed("checkout.refund_order.replying"),
    );
    let client = grpc_client(&server.addr, tenant);
    let (replayed, second) =
        keyed_grpc::<_, co::PlaceOrderResponse>(&client, PLACE, captured_later.clone(), "o2")
            .await
            .unwrap();
    assert!(replayed);
    let second = second.order.unwrap();
    assert_eq!(
        second.payment.clone().unwrap().status,
        co::PaymentStatus::Authorized as i32
    );
    assert_eq!(second, order(&client, &second.order_id).await);

    // 3. A refund dies after its commit.
    let refund = co::RefundOrderRequest {
        order_id: first.order_id.clone(),
        amount: usd(400),
        reason: "cold".into(),
    };
    let died =
        keyed_grpc::<_, co::RefundOrderResponse>(&client, REFUND, refund.clone(), "r1").await;
    assert!(died.is_err(), "{died:?}");
    assert!(!server.child.wait().unwrap().success());
    let server = common::start_in(common::copy_of(server.data_dir.path()), &[]);
    let client = grpc_client(&server.addr, tenant);
    let (replayed, refunded) =
        keyed_grpc::<_, co::RefundOrderResponse>(&client, REFUND, refund.clone(), "r1")
            .await
            .unwrap();
    assert!(replayed);
    let refunded_order = refunded.order.unwrap();
    assert_eq!(refunded_order.refunds.len(), 1, "refunded once");
    assert_eq!(refunded.refund.as_ref(), refunded_order.refunds.first());
    assert_eq!(refunded_order, order(&client, &first.order_id).await);

    // One order per key, and everything ties out.
    let listed: co::ListOrdersResponse = client
        .call(
            "/commerce.checkout.v1.OrderService/ListOrders",
            co::ListOrdersRequest::default(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(listed.orders.len(), 2);
    let (clean, report) = reconcile(&server.addr, tenant);
    assert!(clean, "{report}");
}
