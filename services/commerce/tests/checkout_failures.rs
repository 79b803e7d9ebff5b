//! Failure injection into every step of the placement saga, in process, with the real parts
//! the binary wires: the embedded store (behind a wrapper that refuses chosen commits, as a
//! failing database would), the loyalty engine through the same adapter `serve` uses (behind a
//! wrapper that makes chosen calls fail, as an unreachable loyalty service would), and the PSP
//! simulator (declines, lost replies, failing captures by token).
//!
//! For each step: inject the failure, place an order that redeems a reward, let the background
//! round (`settle_payments`) finish or roll back, and check that nothing is left half-done —
//! no authorization standing without an order, no reward points held, the order either
//! absent or captured once — and that `ReconcilePayments` and the loyalty ledger are clean.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use checkout::carts::LineChoice;
use checkout::error::CheckoutError;
use checkout::psp::{Behaviour, Outcome, PspSimulator, TransactionKind};
use checkout::reconcile::Period;
use checkout::{Carts, Catalog, LoyaltyPort, Orders, Placement, Promotions, Quotes, StoreCarts};
use commerce_api::commerce::checkout::v1::{
    FulfillmentMode, LoyaltyRewardSelection, MenuItem, OpeningHours, Order, PaymentStatus,
};
use commerce_api::commerce::common::v1::{ErrorReason, Money};
use commerce_api::commerce::loyalty::v1::{Reward, reward::Benefit};
use loyalty::members::Enrolment;
use platform::clock::Clocks;
use store::testing::FaultyStore;
use store::{EmbeddedStore, Store};

const TENANT: &str = "t-failures";

fn usd(minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: "USD".into(),
        amount_minor: minor,
    })
}

/// The loyalty adapter, with calls that can be made to fail.
struct FlakyLoyalty {
    inner: commerce::LoyaltyForCheckout,
    failing: Mutex<HashSet<&'static str>>,
}

impl FlakyLoyalty {
    fn check(&self, call: &'static str) -> Result<(), CheckoutError> {
        if self.failing.lock().unwrap().contains(call) {
            return Err(CheckoutError::Unavailable {
                what: "loyalty",
                reason: ErrorReason::DependencyUnavailable,
            });
        }
        Ok(())
    }

    fn set(&self, call: &'static str, failing: bool) {
        let mut calls = self.failing.lock().unwrap();
        if failing {
            calls.insert(call);
        } else {
            calls.remove(call);
        }
    }
}

#[async_trait]
impl LoyaltyPort for FlakyLoyalty {
    async fn reward(&self, tenant: &str, reward_id: &str) -> Result<Option<Reward>, CheckoutError> {
        self.inner.reward(tenant, reward_id).await
    }
    async fn hold(
        &self,
        tenant: &str,
        member_id: &str,
        reward_id: &str,
        order_id: &str,
        key: &str,
    ) -> Result<String, CheckoutError> {
        self.check("hold")?;
        self.inner
            .hold(tenant, member_id, reward_id, order_id, key)
            .await
    }
    async fn commit(&self, tenant: &str, redemption_id: &str) -> Result<(), CheckoutError> {
        self.check("commit")?;
        self.inner.commit(tenant, redemption_id).await
    }
    async fn void(&self, tenant: &str, redemption_id: &str) -> Result<(), CheckoutError> {
        self.check("void")?;
        self.inner.void(tenant, redemption_id).await
    }
    async fn reverse(&self, tenant: &str, redemption_id: &str) -> Result<(), CheckoutError> {
        self.check("reverse")?;
        self.inner.reverse(tenant, redemption_id).await
    }
}

struct World {
    store: Arc<FaultyStore>,
    psp: PspSimulator,
    loyalty: Arc<loyalty::Loyalty>,
    flaky: Arc<FlakyLoyalty>,
    carts: Carts,
    quotes: Quotes,
    orders: Orders,
    location: String,
    burger: String,
    member: String,
    reward: String,
}

/// Noon UTC next Monday; the location is open every day anyway.
fn noon_ms() -> i64 {
    const DAY: i64 = 86_400_000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    (now / DAY + 1) * DAY + DAY / 2
}

async fn world() -> World {
    let inner: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory().unwrap());
    let store = Arc::new(FaultyStore::new(inner));
    let shared: Arc<dyn Store> = store.clone();
    let clocks = Clocks::new(shared.clone());
    clocks.advance(TENANT, noon_ms()).await.unwrap();
    let loyalty = Arc::new(loyalty::Loyalty::new(
        shared.clone(),
        clocks.clone(),
        fastpath::Cache::new(None, fastpath::Degraded::default()),
    ));
    let enrolment = Enrolment {
        customer_id: "cust-1".into(),
        registered: true,
        ..Enrolment::default()
    };
    let member = loyalty
        .enroll(TENANT, &enrolment)
        .await
        .unwrap()
        .0
        .member_id;
    loyalty
        .adjust(TENANT, &member, 100, "welcome", "welcome")
        .await
        .unwrap();
    let reward = Reward {
        display_name: "$1 off".into(),
        point_cost: 50,
        benefit: Some(Benefit::AmountOff(usd(100).unwrap())),
        active: true,
        ..Reward::default()
    };
    let reward = loyalty
        .create_reward(TENANT, &reward, "dollar")
        .await
        .unwrap()
        .reward_id;
    let flaky = Arc::new(FlakyLoyalty {
        inner: commerce::LoyaltyForCheckout(loyalty.clone()),
        failing: Mutex::default(),
    });
    let catalog = Catalog::new(shared.clone(), clocks.clone());
    let location = commerce_api::commerce::checkout::v1::Location {
        display_name: "Main".into(),
        time_zone: "UTC".into(),
        currency_code: "USD".into(),
        opening_hours: (1..=7)
            .map(|day| OpeningHours {
                day,
                open_minute: 0,
                close_minute: 1440,
            })
            .collect(),
        fulfillment_modes: vec![FulfillmentMode::Pickup as i32],
        ..Default::default()
    };
    let location = catalog
        .create_location(TENANT, &location, "main")
        .await
        .unwrap()
        .location_id;
    let burger = MenuItem {
        sku: "B-1".into(),
        display_name: "Burger".into(),
        base_price: usd(899),
        active: true,
        ..MenuItem::default()
    };
    let burger = catalog
        .create_item(TENANT, &burger, "burger")
        .await
        .unwrap()
        .item_id;
    let carts = Carts::new(
        Arc::new(StoreCarts(shared.clone())),
        catalog,
        Promotions::none(),
        clocks.clone(),
        Duration::from_secs(3600),
    );
    let port: Arc<dyn LoyaltyPort> = flaky.clone();
    let quotes = Quotes::new(
        carts.clone(),
        Promotions::none(),
        port.clone(),
        None,
        Duration::from_secs(2),
        shared.clone(),
        clocks.clone(),
    );
    let psp = PspSimulator::new();
    psp.set_timeout_delay(Duration::from_millis(10));
    let mut policy = platform::outbound::OutboundPolicy::new("psp");
    policy.breaker.failure_threshold = 1_000;
    // One attempt per call: a lost reply stays lost instead of being replayed by a retry.
    policy.max_attempts = 1;
    let orders = Orders::new(
        shared,
        carts.clone(),
        quotes.clone(),
        port,
        Arc::new(psp.clone()),
        clocks,
    )
    .with_psp_policy(policy)
    .with_abandon_after(Duration::ZERO);
    World {
        store,
        psp,
        loyalty,
        flaky,
        carts,
        quotes,
        orders,
        location,
        burger,
        member,
        reward,
    }
}

impl World {
    /// A cart with a burger and the reward, quoted, to be paid with `token`.
    async fn quoted(&self, token: &str) -> Placement {
        self.quoted_with(token, &self.reward).await
    }

    /// A cart with a burger and reward `reward`, quoted, to be paid with `token`.
    async fn quoted_with(&self, token: &str, reward: &str) -> Placement {
        let cart = self
            .carts
            .create(TENANT, &self.location, "cust-1", None, "cart")
            .await
            .unwrap();
        let one = LineChoice {
            quantity: 1,
            ..LineChoice::default()
        };
        self.carts
            .add_line(TENANT, &cart.cart_id, &self.burger, &one, "line")
            .await
            .unwrap();
        let selection = LoyaltyRewardSelection {
            reward_id: reward.to_owned(),
        };
        self.carts
            .set_loyalty_reward(TENANT, &cart.cart_id, &self.member, Some(selection))
            .await
            .unwrap();
        let quote = self.quotes.quote(TENANT, &cart.cart_id).await.unwrap();
        assert_ne!(quote.reward_discount, usd(0), "the reward applies");
        Placement {
            cart_id: cart.cart_id,
            quote_id: quote.quote_id,
            expected_total: quote.total.unwrap(),
            payment_token: token.into(),
            external_order_id: String::new(),
        }
    }

    async fn orders(&self) -> Vec<Order> {
        self.orders
            .orders(TENANT, "", "", &[], 100, "")
            .await
            .unwrap()
            .0
    }

    /// Nothing half-done: every order captured once (or none), every authorization without an
    /// order voided, the reward's points spent exactly for captured orders, and both
    /// reconciliations clean.
    async fn assert_settled(&self, step: &str) {
        let orders = self.orders().await;
        let transactions = self.psp_transactions().await;
        let succeeded = |kind| {
            transactions
                .iter()
                .filter(|transaction| transaction.kind == kind && transaction.succeeded())
                .count()
        };
        let authorizations = succeeded(TransactionKind::Authorization);
        let voids = succeeded(TransactionKind::Void);
        let captures = succeeded(TransactionKind::Capture);
        assert_eq!(captures, orders.len(), "{step}: one capture per order");
        assert_eq!(
            authorizations,
            orders.len() + voids,
            "{step}: every authorization became an order or was voided"
        );
        for order in &orders {
            let payment = order.payment.clone().unwrap();
            let captured = [
                PaymentStatus::Captured as i32,
                PaymentStatus::PartiallyRefunded as i32,
                PaymentStatus::Refunded as i32,
            ];
            assert!(captured.contains(&payment.status), "{step}: {payment:?}");
        }
        let balance = self.loyalty.balance(TENANT, &self.member).await.unwrap();
        assert_eq!(balance.held_points, 0, "{step}: no points left held");
        assert_eq!(
            balance.available_points,
            100 - 50 * orders.len() as i64,
            "{step}: points spent only for the order placed"
        );
        let report = self
            .orders
            .reconcile_payments(TENANT, Period::default())
            .await
            .unwrap();
        assert!(
            report.mismatches.is_empty(),
            "{step}: {:#?}",
            report.mismatches
        );
        assert_eq!(report.orders_checked, orders.len() as i64);
        let points = self.loyalty.reconcile(TENANT).await.unwrap();
        assert!(points.clean, "{step}: {:#?}", points.discrepancies);
    }

    async fn psp_transactions(&self) -> Vec<checkout::psp::Transaction> {
        use checkout::psp::PaymentProvider as _;
        self.psp.transactions(None).await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_reward_hold_charges_nothing_and_holds_nothing() {
    let world = world().await;
    world.flaky.set("hold", true);
    let placement = world.quoted("tok_ok").await;
    let error = world
        .orders
        .place(TENANT, &placement, "k")
        .await
        .unwrap_err();
    assert!(
        matches!(error, CheckoutError::Unavailable { .. }),
        "{error:?}"
    );
    assert!(
        world.psp_transactions().await.is_empty(),
        "never reached the PSP"
    );
    let settled = world.orders.settle_payments().await.unwrap();
    assert_eq!(settled.abandoned, 1);
    world.assert_settled("reward hold").await;
    // The caller's retry is told the placement was rolled back.
    let error = world
        .orders
        .place(TENANT, &placement, "k")
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            CheckoutError::Precondition {
                reason: ErrorReason::PlacementAbandoned,
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_authorization_returns_the_held_reward() {
    let world = world().await;
    let placement = world.quoted("tok_decline_insufficient_funds").await;
    let error = world
        .orders
        .place(TENANT, &placement, "k")
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            CheckoutError::Precondition {
                reason: ErrorReason::PaymentDeclined,
                ..
            }
        ),
        "{error:?}"
    );
    world.assert_settled("authorization declined").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_authorization_reply_ends_in_one_captured_order() {
    let world = world().await;
    let placement = world.quoted("tok_reply_lost").await;
    // Authorized at the PSP, but every reply is lost: the outcome is unknown.
    let error = world
        .orders
        .place(TENANT, &placement, "k")
        .await
        .unwrap_err();
    assert!(
        matches!(error, CheckoutError::Unavailable { .. }),
        "{error:?}"
    );
    world.psp.configure("tok_reply_lost", Behaviour::succeed());
    let settled = world.orders.settle_payments().await.unwrap();
    assert_eq!(settled.payments_resolved, 1);
    assert_eq!(world.orders().await.len(), 1);
    world.assert_settled("authorization reply lost").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_order_commit_voids_the_authorization_and_returns_the_reward() {
    let world = world().await;
    let placement = world.quoted("tok_ok").await;
    world.store.fail_commits("checkout_order", 1);
    let error = world
        .orders
        .place(TENANT, &placement, "k")
        .await
        .unwrap_err();
    assert!(matches!(error, CheckoutError::Store(_)), "{error:?}");
    // Authorized and held, but no order: the background round rolls it back.
    let before = world.loyalty.balance(TENANT, &world.member).await.unwrap();
    assert_eq!(before.held_points, 50);
    let settled = world.orders.settle_payments().await.unwrap();
    assert_eq!(settled.abandoned, 1);
    assert!(world.orders().await.is_empty());
    world.assert_settled("order commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_capture_is_finished_by_the_background_round() {
    let world = world().await;
    world.psp.configure_for(
        "tok_ok",
        TransactionKind::Capture,
        Behaviour::new(Outcome::Unavailable),
    );
    let placement = world.quoted("tok_ok").await;
    let order = world.orders.place(TENANT, &placement, "k").await.unwrap();
    let payment = order.payment.unwrap();
    assert_eq!(payment.status, PaymentStatus::Authorized as i32);
    // An order authorized and not yet captured ties out as it stands.
    let report = world
        .orders
        .reconcile_payments(TENANT, Period::default())
        .await
        .unwrap();
    assert!(report.mismatches.is_empty(), "{:#?}", report.mismatches);
    // Still failing: the round leaves it for later.
    assert_eq!(world.orders.settle_payments().await.unwrap().captured, 0);
    world
        .psp
        .configure_for("tok_ok", TransactionKind::Capture, Behaviour::succeed());
    assert_eq!(world.orders.settle_payments().await.unwrap().captured, 1);
    world.assert_settled("capture").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_reward_post_after_capture_shows_in_reconciliation_until_settled() {
    let world = world().await;
    world.flaky.set("commit", true);
    let placement = world.quoted("tok_ok").await;
    let order = world.orders.place(TENANT, &placement, "k").await.unwrap();
    // Captured at the PSP, but the order could not record it: reconciliation says so.
    let report = world
        .orders
        .reconcile_payments(TENANT, Period::default())
        .await
        .unwrap();
    let fields: Vec<&str> = report
        .mismatches
        .iter()
        .map(|mismatch| mismatch.field.as_str())
        .collect();
    assert_eq!(fields, ["captured_amount"], "{:#?}", report.mismatches);
    let mismatch = &report.mismatches[0];
    assert_eq!(mismatch.order_id, order.order_id);
    assert_eq!(mismatch.order_amount, usd(0));
    assert_eq!(mismatch.psp_amount, order.totals.unwrap().total);
    world.flaky.set("commit", false);
    assert_eq!(world.orders.settle_payments().await.unwrap().captured, 1);
    world.assert_settled("reward post").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_names_a_refund_the_ledger_does_not_have() {
    let world = world().await;
    let placement = world.quoted("tok_ok").await;
    let order = world.orders.place(TENANT, &placement, "k").await.unwrap();
    let refund = Money {
        currency_code: "USD".into(),
        amount_minor: 250,
    };
    world
        .orders
        .refund(TENANT, &order.order_id, Some(&refund), "cold", "refund-1")
        .await
        .unwrap();
    world.assert_settled("refund").await;
    // Edit the refund's ledger entry away from what the PSP and the order say.
    ledger::testing::tamper(
        world.store.as_ref(),
        TENANT,
        "checkout:refund:rf-refund-1",
        true,
    )
    .await;
    let report = world
        .orders
        .reconcile_payments(TENANT, Period::default())
        .await
        .unwrap();
    assert!(
        report
            .mismatches
            .iter()
            .any(|mismatch| mismatch.order_id == order.order_id
                && mismatch.field == "refund_missing_in_ledger"),
        "{:#?}",
        report.mismatches
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_placement_hands_its_cart_back_and_the_cart_places_once() {
    let world = world().await;
    let placement = world.quoted("tok_ok").await;
    world.store.fail_commits("checkout_order", 1);
    let error = world
        .orders
        .place(TENANT, &placement, "k")
        .await
        .unwrap_err();
    assert!(matches!(error, CheckoutError::Store(_)), "{error:?}");
    // While that placement is unfinished it holds the cart: another key is refused before the
    // PSP, naming the order being placed.
    let held = world.orders.place(TENANT, &placement, "k2").await;
    assert!(
        matches!(&held, Err(CheckoutError::CartAlreadyOrdered { order_id, .. }) if order_id.starts_with("ord-")),
        "{held:?}"
    );
    // Rolled back: the cart is free again, and places one order.
    assert_eq!(world.orders.settle_payments().await.unwrap().abandoned, 1);
    let order = world.orders.place(TENANT, &placement, "k3").await.unwrap();
    assert_eq!(
        order.payment.clone().unwrap().status,
        PaymentStatus::Captured as i32
    );
    assert!(matches!(
        world.orders.place(TENANT, &placement, "k4").await,
        Err(CheckoutError::CartAlreadyOrdered { order_id, .. }) if order_id == order.order_id
    ));
    world.assert_settled("rolled back, then placed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reward_fails_the_placement_for_good_and_hands_its_cart_back() {
    let world = world().await;
    let placement = world.quoted("tok_ok").await;
    // The member spent their points elsewhere since the quote.
    world
        .loyalty
        .adjust(TENANT, &world.member, -60, "spent", "spent")
        .await
        .unwrap();
    for _ in 0..2 {
        let refused = world.orders.place(TENANT, &placement, "k").await;
        assert!(
            matches!(
                &refused,
                Err(CheckoutError::Precondition {
                    reason: ErrorReason::InsufficientPoints,
                    ..
                })
            ),
            "{refused:?}"
        );
    }
    assert!(world.psp_transactions().await.is_empty(), "never charged");
    // Nothing is left for the background round, and the cart places once the points are back.
    assert_eq!(world.orders.settle_payments().await.unwrap().abandoned, 0);
    world
        .loyalty
        .adjust(TENANT, &world.member, 60, "refund", "back")
        .await
        .unwrap();
    let order = world.orders.place(TENANT, &placement, "k2").await.unwrap();
    assert!(order.redemption_id.starts_with("rdm-"), "{order:?}");
    world.assert_settled("reward refused, then placed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reward_covering_the_whole_order_places_it_without_the_psp() {
    use commerce_api::commerce::loyalty::v1::RedemptionStatus;
    let world = world().await;
    let free_burger = Reward {
        display_name: "Free burger".into(),
        point_cost: 80,
        benefit: Some(Benefit::AmountOff(usd(2_000).unwrap())),
        active: true,
        ..Reward::default()
    };
    let free_burger = world
        .loyalty
        .create_reward(TENANT, &free_burger, "free-burger")
        .await
        .unwrap()
        .reward_id;
    let placement = world.quoted_with("tok_ok", &free_burger).await;
    assert_eq!(
        Some(placement.expected_total.clone()),
        usd(0),
        "nothing to pay"
    );
    // Loyalty cannot post the reward at first: the order is placed, its payment settles later.
    world.flaky.set("commit", true);
    let order = world.orders.place(TENANT, &placement, "k").await.unwrap();
    let payment = order.payment.clone().unwrap();
    assert_eq!(payment.status, PaymentStatus::NotRequired as i32);
    assert_eq!(payment.authorized_amount, usd(0));
    assert!(payment.psp_reference.is_empty());
    let paid_events = |events: &[store::PendingEvent]| {
        events
            .iter()
            .filter(|event| event.event.event_type == "commerce.checkout.v1.OrderPaid")
            .count()
    };
    assert_eq!(
        paid_events(&world.store.pending_events(1_000).await.unwrap()),
        0
    );
    world.flaky.set("commit", false);
    assert_eq!(world.orders.settle_payments().await.unwrap().captured, 1);
    let order = world.orders.order(TENANT, &order.order_id).await.unwrap();
    assert_eq!(order.payment.clone().unwrap().captured_amount, usd(0));
    assert_eq!(
        paid_events(&world.store.pending_events(1_000).await.unwrap()),
        1,
        "OrderPaid went out once, for loyalty"
    );
    // No PSP call at all, the reward's points spent, nothing held.
    assert!(world.psp_transactions().await.is_empty());
    let redemption = world
        .loyalty
        .redemption(TENANT, &order.redemption_id)
        .await
        .unwrap();
    assert_eq!(redemption.status, RedemptionStatus::Posted as i32);
    let balance = world.loyalty.balance(TENANT, &world.member).await.unwrap();
    assert_eq!((balance.available_points, balance.held_points), (20, 0));
    // Nothing was paid, so nothing can be refunded.
    let refund = world
        .orders
        .refund(TENANT, &order.order_id, None, "cold", "refund-1")
        .await;
    assert!(
        matches!(
            &refund,
            Err(CheckoutError::Precondition {
                reason: ErrorReason::RefundExceedsCaptured,
                message,
            }) if message.contains("no payment")
        ),
        "{refund:?}"
    );
    // Reconciliation expects no PSP transactions for it and finds none.
    let report = world
        .orders
        .reconcile_payments(TENANT, Period::default())
        .await
        .unwrap();
    assert!(report.mismatches.is_empty(), "{:#?}", report.mismatches);
    assert_eq!(report.orders_checked, 1);
    // Canceling gives the points back.
    let canceled = world
        .orders
        .cancel(TENANT, &order.order_id, "changed their mind")
        .await
        .unwrap();
    assert_eq!(
        canceled.status,
        commerce_api::commerce::checkout::v1::OrderStatus::Canceled as i32
    );
    let balance = world.loyalty.balance(TENANT, &world.member).await.unwrap();
    assert_eq!((balance.available_points, balance.held_points), (100, 0));
    assert!(world.psp_transactions().await.is_empty());
    let report = world
        .orders
        .reconcile_payments(TENANT, Period::default())
        .await
        .unwrap();
    assert!(report.mismatches.is_empty(), "{:#?}", report.mismatches);
    let points = world.loyalty.reconcile(TENANT).await.unwrap();
    assert!(points.clean, "{:#?}", points.discrepancies);
}
