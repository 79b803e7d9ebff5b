//! The placement saga against the PSP simulator: one authorization however many times (and
//! however concurrently) a key is retried, declines compensate and charge nothing, a lost reply
//! resolves to the one authorization, a changed price refuses the order, and the kitchen moves
//! only forward.

mod common;

use std::sync::Arc;
use std::time::Duration;

use checkout::carts::LineChoice;
use checkout::error::CheckoutError;
use checkout::psp::{PaymentProvider, PspSimulator};
use checkout::{NoLoyalty, Orders, Placement, Quotes};
use commerce_api::commerce::checkout::v1::{OrderStatus, PaymentStatus};
use commerce_api::commerce::common::v1::{ErrorReason, Money};
use common::{TENANT, World, usd, world};

fn engines(world: &World, psp: &PspSimulator) -> (Quotes, Orders) {
    let quotes = Quotes::new(
        world.carts.clone(),
        world.promotions.clone(),
        Arc::new(NoLoyalty),
        None,
        Duration::from_secs(2),
        world.store.clone(),
        world.clocks.clone(),
    );
    let orders = Orders::new(
        world.store.clone(),
        world.carts.clone(),
        quotes.clone(),
        Arc::new(NoLoyalty),
        Arc::new(psp.clone()),
        world.clocks.clone(),
    );
    (quotes, orders)
}

/// A cart with one burger, quoted; returns the placement request for `token`.
async fn quoted(world: &World, quotes: &Quotes, cart_key: &str, token: &str) -> Placement {
    let cart = world
        .carts
        .create(TENANT, &world.location, "c-1", None, cart_key)
        .await
        .unwrap();
    let one = LineChoice {
        quantity: 1,
        ..LineChoice::default()
    };
    world
        .carts
        .add_line(TENANT, &cart.cart_id, &world.burger, &one, cart_key)
        .await
        .unwrap();
    let quote = quotes.quote(TENANT, &cart.cart_id).await.unwrap();
    Placement {
        cart_id: cart.cart_id,
        quote_id: quote.quote_id,
        expected_total: quote.total.unwrap(),
        payment_token: token.into(),
        external_order_id: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_placements_with_one_key_make_one_authorization_and_one_order() {
    let world = world(None).await;
    let psp = PspSimulator::new();
    let (quotes, orders) = engines(&world, &psp);
    let placement = quoted(&world, &quotes, "cart-1", "tok_ok").await;
    let attempts = (0..50).map(|_| {
        let (orders, placement) = (orders.clone(), placement.clone());
        tokio::spawn(async move { orders.place(TENANT, &placement, "key-1").await })
    });
    let outcomes: Vec<_> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|joined| joined.unwrap())
        .collect();
    let placed: Vec<_> = outcomes
        .iter()
        .filter_map(|outcome| outcome.as_ref().ok())
        .collect();
    assert!(!placed.is_empty(), "{outcomes:?}");
    // The rest lost a race and say so (retryable); none placed another order.
    for outcome in &outcomes {
        if let Err(error) = outcome {
            assert!(error.is_conflict(), "{error:?}");
        }
    }
    let order_id = &placed[0].order_id;
    assert!(placed.iter().all(|order| &order.order_id == order_id));
    // A retry after all that returns the same order.
    assert_eq!(
        &orders
            .place(TENANT, &placement, "key-1")
            .await
            .unwrap()
            .order_id,
        order_id
    );
    assert_eq!(psp.authorization_count(order_id), 1);
    let order = orders.order(TENANT, order_id).await.unwrap();
    assert_eq!(order.status, OrderStatus::Placed as i32);
    let payment = order.payment.unwrap();
    assert_eq!(payment.status, PaymentStatus::Captured as i32);
    assert_eq!(
        payment.captured_amount,
        Some(placement.expected_total.clone())
    );
    let (all, _) = orders.orders(TENANT, "", "", &[], 50, "").await.unwrap();
    assert_eq!(all.len(), 1);
}

#[tokio::test]
async fn a_decline_charges_nothing_and_every_retry_says_so() {
    let world = world(None).await;
    let psp = PspSimulator::new();
    let (quotes, orders) = engines(&world, &psp);
    let placement = quoted(&world, &quotes, "cart-1", "tok_decline_insufficient_funds").await;
    for _ in 0..2 {
        let declined = orders.place(TENANT, &placement, "key-1").await;
        assert!(
            matches!(
                declined,
                Err(CheckoutError::Precondition {
                    reason: ErrorReason::PaymentDeclined,
                    ..
                })
            ),
            "{declined:?}"
        );
    }
    let (all, _) = orders.orders(TENANT, "", "", &[], 50, "").await.unwrap();
    assert!(all.is_empty(), "no order");
    let charged: Vec<_> = psp
        .transactions(None)
        .await
        .unwrap()
        .into_iter()
        .filter(|transaction| transaction.succeeded())
        .collect();
    assert!(charged.is_empty(), "{charged:?}");
}

#[tokio::test]
async fn a_lost_reply_resolves_to_exactly_one_authorization() {
    let world = world(None).await;
    let psp = PspSimulator::new();
    psp.set_timeout_delay(Duration::from_millis(10));
    let (quotes, orders) = engines(&world, &psp);
    // The PSP authorizes but the reply is lost: the retry (same key) gets the recorded one.
    let placement = quoted(&world, &quotes, "cart-1", "tok_reply_lost").await;
    let order = orders.place(TENANT, &placement, "key-1").await.unwrap();
    assert_eq!(psp.authorization_count(&order.order_id), 1);
    assert_eq!(order.status, OrderStatus::Placed as i32);
}

#[tokio::test]
async fn a_psp_that_never_answers_leaves_the_payment_unknown_until_asked_again() {
    let world = world(None).await;
    let psp = PspSimulator::new();
    psp.set_timeout_delay(Duration::from_millis(10));
    let (quotes, orders) = engines(&world, &psp);
    let placement = quoted(&world, &quotes, "cart-1", "tok_timeout").await;
    let unknown = orders.place(TENANT, &placement, "key-1").await;
    assert!(
        matches!(
            unknown,
            Err(CheckoutError::Unavailable {
                reason: ErrorReason::PaymentOutcomeUnknown,
                ..
            })
        ),
        "{unknown:?}"
    );
    let (none, _) = orders.orders(TENANT, "", "", &[], 50, "").await.unwrap();
    assert!(none.is_empty(), "no order while the payment is unknown");
    // The PSP recovers; the retry asks it first, then authorizes once with the same key.
    psp.configure("tok_timeout", checkout::psp::Behaviour::succeed());
    let order = orders.place(TENANT, &placement, "key-1").await.unwrap();
    assert_eq!(psp.authorization_count(&order.order_id), 1);
    assert_eq!(
        order.payment.unwrap().status,
        PaymentStatus::Captured as i32
    );
}

#[tokio::test]
async fn a_changed_price_or_a_card_number_is_refused_before_any_charge() {
    let world = world(None).await;
    let psp = PspSimulator::new();
    let (quotes, orders) = engines(&world, &psp);
    let mut placement = quoted(&world, &quotes, "cart-1", "tok_ok").await;
    placement.expected_total = Money {
        amount_minor: placement.expected_total.amount_minor - 1,
        ..placement.expected_total
    };
    assert!(matches!(
        orders.place(TENANT, &placement, "key-1").await,
        Err(CheckoutError::Precondition {
            reason: ErrorReason::QuoteStale,
            ..
        })
    ));
    let mut card = quoted(&world, &quotes, "cart-2", "tok_ok").await;
    card.payment_token = "4242 4242 4242 4242".into();
    assert!(matches!(
        orders.place(TENANT, &card, "key-2").await,
        Err(CheckoutError::Invalid { .. })
    ));
    assert!(psp.transactions(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_kitchen_moves_orders_only_forward() {
    let world = world(None).await;
    let psp = PspSimulator::new();
    let (quotes, orders) = engines(&world, &psp);
    let placement = quoted(&world, &quotes, "cart-1", "tok_ok").await;
    let order = orders.place(TENANT, &placement, "key-1").await.unwrap();
    let skip = orders
        .advance_status(TENANT, &order.order_id, OrderStatus::Ready)
        .await;
    assert!(matches!(
        skip,
        Err(CheckoutError::Precondition {
            reason: ErrorReason::OrderTransitionInvalid,
            ..
        })
    ));
    for status in [
        OrderStatus::Accepted,
        OrderStatus::Accepted,
        OrderStatus::InPreparation,
        OrderStatus::Ready,
        OrderStatus::Completed,
    ] {
        let order = orders
            .advance_status(TENANT, &order.order_id, status)
            .await
            .unwrap();
        assert_eq!(order.status, status as i32);
    }
    let order = orders.order(TENANT, &order.order_id).await.unwrap();
    assert_eq!(
        order.status_history.len(),
        5,
        "placed + four moves; the repeat changed nothing"
    );
    assert_eq!(order.totals.unwrap().total, usd(979));
}

#[tokio::test]
async fn cancel_refunds_what_was_captured_once_and_completed_orders_cannot_be_canceled() {
    let world = world(None).await;
    let psp = PspSimulator::new();
    let (quotes, orders) = engines(&world, &psp);
    let placement = quoted(&world, &quotes, "cart-1", "tok_ok").await;
    let order = orders.place(TENANT, &placement, "key-1").await.unwrap();
    let canceled = orders
        .cancel(TENANT, &order.order_id, "customer left")
        .await
        .unwrap();
    assert_eq!(canceled.status, OrderStatus::Canceled as i32);
    let payment = canceled.payment.clone().unwrap();
    assert_eq!(payment.status, PaymentStatus::Refunded as i32);
    assert_eq!(payment.refunded_amount, usd(979));
    // Again: unchanged, nothing more refunded at the PSP.
    let again = orders
        .cancel(TENANT, &order.order_id, "customer left")
        .await
        .unwrap();
    assert_eq!(again, canceled);
    let refunds = psp
        .transactions(Some(&order.order_id))
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.kind == checkout::psp::TransactionKind::Refund)
        .count();
    assert_eq!(refunds, 1);

    let second = quoted(&world, &quotes, "cart-2", "tok_ok").await;
    let done = orders.place(TENANT, &second, "key-2").await.unwrap();
    for status in [
        OrderStatus::Accepted,
        OrderStatus::InPreparation,
        OrderStatus::Ready,
        OrderStatus::Completed,
    ] {
        orders
            .advance_status(TENANT, &done.order_id, status)
            .await
            .unwrap();
    }
    assert!(matches!(
        orders.cancel(TENANT, &done.order_id, "too late").await,
        Err(CheckoutError::Precondition {
            reason: ErrorReason::OrderTransitionInvalid,
            ..
        })
    ));
}

#[tokio::test]
async fn a_full_kitchen_slot_shifts_the_promise_or_refuses_with_slot_full() {
    use commerce_api::commerce::checkout::v1::{Location, SlotCapacity};
    let world = world(None).await;
    let psp = PspSimulator::new();
    let (quotes, orders) = engines(&world, &psp);
    let catalog = world.carts.catalog();
    let throttle = |shift: bool| Location {
        location_id: world.location.clone(),
        display_name: "Main".into(),
        time_zone: "UTC".into(),
        currency_code: "USD".into(),
        slot_capacity: Some(SlotCapacity {
            slot_minutes: 15,
            max_orders_per_slot: 1,
            prep_minutes: 0,
            shift_when_full: shift,
        }),
        ..Location::default()
    };
    let mask = ["slot_capacity".to_owned()];
    catalog
        .update_location(TENANT, &throttle(false), &mask, 0)
        .await
        .unwrap();
    let first = quoted(&world, &quotes, "cart-1", "tok_ok").await;
    let first = orders.place(TENANT, &first, "key-1").await.unwrap();
    // The slot holds one order: the next quote is refused, with the next free time.
    let cart = world
        .carts
        .create(TENANT, &world.location, "", None, "cart-2")
        .await
        .unwrap();
    let one = LineChoice {
        quantity: 1,
        ..LineChoice::default()
    };
    world
        .carts
        .add_line(TENANT, &cart.cart_id, &world.burger, &one, "l")
        .await
        .unwrap();
    let full = quotes.quote(TENANT, &cart.cart_id).await;
    assert!(
        matches!(
            full,
            Err(CheckoutError::SlotFull {
                next_available_ms: Some(_)
            })
        ),
        "{full:?}"
    );
    // Shifting: the promise moves to the next slot (15 minutes on), and the order takes it.
    catalog
        .update_location(TENANT, &throttle(true), &mask, 0)
        .await
        .unwrap();
    let quote = quotes.quote(TENANT, &cart.cart_id).await.unwrap();
    let promised = |time: Option<prost_types::Timestamp>| time.unwrap().seconds;
    assert!(promised(quote.promised_time) >= promised(first.promised_time) + 14 * 60);
    let second = Placement {
        cart_id: cart.cart_id.clone(),
        quote_id: quote.quote_id.clone(),
        expected_total: quote.total.clone().unwrap(),
        payment_token: "tok_ok".into(),
        external_order_id: String::new(),
    };
    let second = orders.place(TENANT, &second, "key-2").await.unwrap();
    assert_eq!(second.promised_time, quote.promised_time);
}

#[tokio::test]
async fn the_background_resolver_settles_an_unknown_payment_without_a_second_authorization() {
    let world = world(None).await;
    let psp = PspSimulator::new();
    psp.set_timeout_delay(Duration::from_millis(10));
    let (quotes, orders) = engines(&world, &psp);
    // A breaker that stays closed, so the rounds below reach the PSP (the default would open
    // after these timeouts and fail fast for 10 s — right in production, slow in a test).
    let mut policy = platform::outbound::OutboundPolicy::new("psp");
    policy.breaker.failure_threshold = 1_000;
    let orders = orders.with_psp_policy(policy);
    let placement = quoted(&world, &quotes, "cart-1", "tok_timeout").await;
    assert!(orders.place(TENANT, &placement, "key-1").await.is_err());
    // The PSP still does not answer: the resolver leaves it for the next round.
    assert_eq!(orders.settle_payments().await.unwrap().payments_resolved, 0);
    // It recovers; the resolver (not the caller) finishes the order, once.
    psp.configure("tok_timeout", checkout::psp::Behaviour::succeed());
    assert_eq!(orders.settle_payments().await.unwrap().payments_resolved, 1);
    assert_eq!(
        orders.settle_payments().await.unwrap().payments_resolved,
        0,
        "nothing left"
    );
    let (placed, _) = orders.orders(TENANT, "", "", &[], 10, "").await.unwrap();
    assert_eq!(placed.len(), 1);
    assert_eq!(psp.authorization_count(&placed[0].order_id), 1);
    // The caller's late retry gets the same order.
    let retried = orders.place(TENANT, &placement, "key-1").await.unwrap();
    assert_eq!(retried.order_id, placed[0].order_id);
}

/// Switches the test location to capture on completion with `headroom` percent for tips.
async fn capture_on_completion(world: &World, headroom: i32) {
    let update = commerce_api::commerce::checkout::v1::Location {
        location_id: world.location.clone(),
        capture_mode: commerce_api::commerce::checkout::v1::CaptureMode::OnCompletion as i32,
        tip_headroom_percent: headroom,
        ..Default::default()
    };
    let mask = ["capture_mode".to_owned(), "tip_headroom_percent".to_owned()];
    world
        .carts
        .catalog()
        .update_location(TENANT, &update, &mask, 0)
        .await
        .unwrap();
}

fn refused_with(
    result: Result<commerce_api::commerce::checkout::v1::Order, CheckoutError>,
    reason: ErrorReason,
) {
    match result {
        Err(CheckoutError::Precondition { reason: got, .. }) if got == reason => {}
        other => panic!("expected {reason:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn capture_on_completion_takes_the_adjusted_tip_up_to_the_authorized_amount() {
    use checkout::psp::{PaymentProvider as _, TransactionKind};
    use checkout::reconcile::Period;
    let world = world(None).await;
    capture_on_completion(&world, 20).await;
    let psp = PspSimulator::new();
    let (quotes, orders) = engines(&world, &psp);
    let placement = quoted(&world, &quotes, "cart-1", "tok_ok").await;
    let order = orders.place(TENANT, &placement, "key-1").await.unwrap();
    let payment = order.payment.clone().unwrap();
    // 979 plus 20% of it (195) held for the tip; nothing captured yet.
    assert_eq!(payment.status, PaymentStatus::Authorized as i32);
    assert_eq!(payment.authorized_amount, usd(979 + 195));
    let captures = |transactions: &[checkout::psp::Transaction]| -> Vec<i64> {
        transactions
            .iter()
            .filter(|t| t.kind == TransactionKind::Capture && t.succeeded())
            .map(|t| t.amount.amount_minor)
            .collect()
    };
    let id = order.order_id.clone();
    assert!(captures(&psp.transactions(Some(&id)).await.unwrap()).is_empty());
    let tip = |minor| Money {
        currency_code: "USD".into(),
        amount_minor: minor,
    };
    // Over the authorization: refused, nothing changes.
    refused_with(
        orders.adjust_tip(TENANT, &id, &tip(196)).await,
        ErrorReason::TipExceedsAuthorization,
    );
    let adjusted = orders.adjust_tip(TENANT, &id, &tip(150)).await.unwrap();
    assert_eq!(adjusted.totals.as_ref().unwrap().total, usd(979 + 150));
    assert_eq!(adjusted.totals.as_ref().unwrap().tip, usd(150));
    let again = orders.adjust_tip(TENANT, &id, &tip(150)).await.unwrap();
    assert_eq!(
        again.version, adjusted.version,
        "the same tip again changes nothing"
    );
    // A tip in another currency is invalid.
    let euros = Money {
        currency_code: "EUR".into(),
        amount_minor: 100,
    };
    assert!(matches!(
        orders.adjust_tip(TENANT, &id, &euros).await,
        Err(CheckoutError::Invalid { .. })
    ));
    for status in [
        OrderStatus::Accepted,
        OrderStatus::InPreparation,
        OrderStatus::Ready,
    ] {
        orders.advance_status(TENANT, &id, status).await.unwrap();
    }
    assert!(captures(&psp.transactions(Some(&id)).await.unwrap()).is_empty());
    let completed = orders
        .advance_status(TENANT, &id, OrderStatus::Completed)
        .await
        .unwrap();
    let payment = completed.payment.unwrap();
    assert_eq!(payment.status, PaymentStatus::Captured as i32);
    assert_eq!(payment.captured_amount, usd(979 + 150));
    assert_eq!(
        captures(&psp.transactions(Some(&id)).await.unwrap()),
        [979 + 150],
        "captured once, the adjusted total"
    );
    refused_with(
        orders.adjust_tip(TENANT, &id, &tip(10)).await,
        ErrorReason::PaymentAlreadyCaptured,
    );
    // Orders captured on placement cannot change their tip.
    let update = commerce_api::commerce::checkout::v1::Location {
        location_id: world.location.clone(),
        ..Default::default()
    };
    world
        .carts
        .catalog()
        .update_location(TENANT, &update, &["capture_mode".to_owned()], 0)
        .await
        .unwrap();
    let placement = quoted(&world, &quotes, "cart-2", "tok_ok").await;
    let immediate = orders.place(TENANT, &placement, "key-2").await.unwrap();
    assert_eq!(
        immediate.payment.as_ref().unwrap().status,
        PaymentStatus::Captured as i32
    );
    refused_with(
        orders
            .adjust_tip(TENANT, &immediate.order_id, &tip(10))
            .await,
        ErrorReason::PaymentAlreadyCaptured,
    );
    // Orders, PSP and money ledger tie out: 1129 + 979 captured.
    let report = orders
        .reconcile_payments(TENANT, Period::default())
        .await
        .unwrap();
    assert!(report.mismatches.is_empty(), "{:#?}", report.mismatches);
    assert_eq!(report.orders_checked, 2);
    assert_eq!(report.net_captured, [usd(979 + 150 + 979).unwrap()]);
}

#[tokio::test]
async fn canceling_an_order_captured_on_completion_voids_its_authorization() {
    let world = world(None).await;
    capture_on_completion(&world, 10).await;
    let psp = PspSimulator::new();
    let (quotes, orders) = engines(&world, &psp);
    let placement = quoted(&world, &quotes, "cart-1", "tok_ok").await;
    let order = orders.place(TENANT, &placement, "key-1").await.unwrap();
    let canceled = orders
        .cancel(TENANT, &order.order_id, "customer left")
        .await
        .unwrap();
    assert_eq!(
        canceled.payment.unwrap().status,
        PaymentStatus::Voided as i32
    );
    let report = orders
        .reconcile_payments(TENANT, checkout::reconcile::Period::default())
        .await
        .unwrap();
    assert!(report.mismatches.is_empty(), "{:#?}", report.mismatches);
    assert_eq!(report.net_captured, [usd(0).unwrap()]);
}

/// An order captured on completion, authorized and moved to READY, paid with `token`; returns
/// the engines and the order id.
async fn ready_to_complete(world: &World, psp: &PspSimulator, token: &str) -> (Orders, String) {
    capture_on_completion(world, 0).await;
    let (quotes, orders) = engines(world, psp);
    let placement = quoted(world, &quotes, "cart-1", token).await;
    let order = orders.place(TENANT, &placement, "key-1").await.unwrap();
    for status in [
        OrderStatus::Accepted,
        OrderStatus::InPreparation,
        OrderStatus::Ready,
    ] {
        orders
            .advance_status(TENANT, &order.order_id, status)
            .await
            .unwrap();
    }
    (orders, order.order_id)
}

/// One capture at the PSP, one `checkout:capture:<order>` entry with the order's total, and the
/// order captured.
async fn assert_captured_once(world: &World, psp: &PspSimulator, orders: &Orders, id: &str) {
    use checkout::psp::TransactionKind;
    let order = orders.order(TENANT, id).await.unwrap();
    let payment = order.payment.unwrap();
    assert_eq!(payment.status, PaymentStatus::Captured as i32);
    assert_eq!(payment.captured_amount, usd(979));
    let captures = psp
        .transactions(Some(id))
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.kind == TransactionKind::Capture && t.succeeded())
        .count();
    assert_eq!(captures, 1);
    let ledger = ledger::Ledger::new(world.store.clone());
    let entries: Vec<_> = ledger
        .entries(TENANT, 0, 1_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|entry| entry.id.starts_with("checkout:capture:"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:#?}");
    assert_eq!(entries[0].id, format!("checkout:capture:{id}"));
    let report = orders
        .reconcile_payments(TENANT, checkout::reconcile::Period::default())
        .await
        .unwrap();
    assert!(report.mismatches.is_empty(), "{:#?}", report.mismatches);
}

/// A real store whose next commit posting an order's capture entry waits until released, and
/// which counts loads of orders — so a test can hold one capture's commit while another capture
/// of the same order reads the order.
struct GatedStore {
    inner: Arc<dyn store::Store>,
    armed: std::sync::atomic::AtomicBool,
    /// Set, every commit of an order loses its race (another writer always got there first).
    orders_contended: std::sync::atomic::AtomicBool,
    held: tokio::sync::Notify,
    release: tokio::sync::Notify,
    order_loads: std::sync::atomic::AtomicUsize,
}

impl GatedStore {
    fn new() -> Arc<Self> {
        Arc::new(GatedStore {
            inner: Arc::new(store::EmbeddedStore::in_memory().unwrap()),
            armed: false.into(),
            orders_contended: false.into(),
            held: tokio::sync::Notify::new(),
            release: tokio::sync::Notify::new(),
            order_loads: 0.into(),
        })
    }

    fn order_loads(&self) -> usize {
        self.order_loads.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl store::Store for GatedStore {
    async fn load(
        &self,
        key: &store::AggregateKey,
    ) -> Result<Option<store::Versioned>, store::StoreError> {
        if key.kind == "checkout_order" {
            self.order_loads
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.inner.load(key).await
    }
    async fn commit(&self, commit: store::Commit) -> Result<u64, store::StoreError> {
        if commit.key.kind == "checkout_order"
            && self
                .orders_contended
                .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(store::StoreError::Conflict {
                key: commit.key.to_string(),
                expected: commit.expected_version,
                found: commit.expected_version + 1,
            });
        }
        self.inner.commit(commit).await
    }
    async fn commit_all(&self, commits: Vec<store::Commit>) -> Result<Vec<u64>, store::StoreError> {
        let capture = commits
            .iter()
            .any(|commit| commit.key.id.starts_with("checkout:capture:"));
        if capture && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            let released = self.release.notified();
            self.held.notify_one();
            released.await;
        }
        self.inner.commit_all(commits).await
    }
    async fn find(
        &self,
        tenant: &str,
        kind: &str,
        index: &store::IndexEntry,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, store::Versioned)>, store::StoreError> {
        self.inner.find(tenant, kind, index, after_id, limit).await
    }
    async fn pending_events(
        &self,
        limit: usize,
    ) -> Result<Vec<store::PendingEvent>, store::StoreError> {
        self.inner.pending_events(limit).await
    }
    async fn mark_delivered(
        &self,
        events: &[store::PendingEvent],
    ) -> Result<(), store::StoreError> {
        self.inner.mark_delivered(events).await
    }
    async fn idempotency_record(
        &self,
        tenant: &str,
        method: &str,
        key: &str,
    ) -> Result<Option<store::IdempotencyRecord>, store::StoreError> {
        self.inner.idempotency_record(tenant, method, key).await
    }
    async fn save_idempotency_record(
        &self,
        record: store::IdempotencyRecord,
    ) -> Result<(), store::StoreError> {
        self.inner.save_idempotency_record(record).await
    }
    async fn purge_expired_idempotency(&self, now: u64) -> Result<u64, store::StoreError> {
        self.inner.purge_expired_idempotency(now).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_path_and_another_replicas_round_capturing_one_order_at_once_post_one_entry() {
    let gate = GatedStore::new();
    let world = common::world_on(gate.clone(), None).await;
    let psp = PspSimulator::new();
    let (first, id) = ready_to_complete(&world, &psp, "tok_ok").await;
    let (_, second) = engines(&world, &psp);
    // Completing the order on one replica captures it on the request path; its commit is held
    // back (as a busy store or the tenant's ledger queue would) ...
    gate.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let held = gate.held.notified();
    let completing = {
        let (first, id) = (first.clone(), id.clone());
        tokio::spawn(async move {
            first
                .advance_status(TENANT, &id, OrderStatus::Completed)
                .await
        })
    };
    held.await;
    // ... while the other replica's background round, a second later on the tenant clock,
    // captures the same order: the PSP replays the capture, and the round reads the order
    // still authorized.
    world
        .clocks
        .advance(TENANT, common::next_monday_noon_ms() + 1_000)
        .await
        .unwrap();
    let loads = gate.order_loads();
    let round = tokio::spawn(async move { second.settle_payments().await });
    while gate.order_loads() < loads + 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.release.notify_one();
    let completed = completing.await.unwrap().unwrap();
    let round = round.await.unwrap().unwrap();
    assert_eq!(
        completed.payment.unwrap().status,
        PaymentStatus::Captured as i32
    );
    assert_eq!(
        round.captured, 1,
        "the round's capture found the same capture posted and finished without an error"
    );
    assert_captured_once(&world, &psp, &first, &id).await;
}

#[tokio::test]
async fn a_capture_repeated_after_its_ledger_entry_was_posted_finishes_the_order() {
    use checkout::psp::{Behaviour, CaptureRequest, Outcome, TransactionKind};
    let world = world(None).await;
    let psp = PspSimulator::new();
    psp.configure_for(
        "tok_ok",
        TransactionKind::Capture,
        Behaviour::new(Outcome::Unavailable),
    );
    let (quotes, orders) = engines(&world, &psp);
    let placement = quoted(&world, &quotes, "cart-1", "tok_ok").await;
    let order = orders.place(TENANT, &placement, "key-1").await.unwrap();
    let payment = order.payment.clone().unwrap();
    assert_eq!(payment.status, PaymentStatus::Authorized as i32);
    // An earlier attempt captured at the PSP under the capture key and posted the ledger entry
    // (stamped with that attempt's time), but the order never recorded the capture.
    psp.configure_for("tok_ok", TransactionKind::Capture, Behaviour::succeed());
    let captured = psp
        .capture(CaptureRequest {
            idempotency_key: format!("{}:capture", payment.payment_id),
            authorization_id: payment.psp_reference.clone(),
            amount: checkout::psp::Money::new("USD", 979),
        })
        .await
        .unwrap();
    let ledger = ledger::Ledger::new(world.store.clone());
    for account in ["checkout:psp:USD", "checkout:revenue:USD"] {
        ledger
            .open_account(TENANT, account, "USD", None)
            .await
            .unwrap();
    }
    ledger
        .post(
            TENANT,
            ledger::NewEntry::new(
                format!("checkout:capture:{}", order.order_id),
                common::next_monday_noon_ms() - 5_000,
            )
            .transfer("checkout:revenue:USD", "checkout:psp:USD", "USD", 979)
            .metadata("order_id", order.order_id.as_str())
            .metadata("psp_reference", captured.id.as_str()),
        )
        .await
        .unwrap();
    // The repeat finds its capture posted and finishes the order instead of failing forever.
    let finished = orders.capture(TENANT, &order.order_id).await;
    assert!(finished.is_ok(), "{finished:?}");
    assert_captured_once(&world, &psp, &orders, &order.order_id).await;
}

/// The orders engine with a PSP policy whose breaker never opens (the tests below make the
/// PSP fail on purpose) and short backoffs.
fn patient(orders: Orders) -> Orders {
    let mut policy = platform::outbound::OutboundPolicy::new("psp");
    policy.breaker.failure_threshold = 1_000;
    policy.backoff_base = Duration::from_millis(1);
    policy.backoff_max = Duration::from_millis(5);
    orders.with_psp_policy(policy)
}

fn failed_with<T: std::fmt::Debug>(result: Result<T, CheckoutError>, expected: ErrorReason) {
    match result {
        Err(CheckoutError::Precondition { reason, .. }) if reason == expected => {}
        other => panic!("expected failed_precondition {expected:?}, got {other:?}"),
    }
}

fn unavailable_with<T: std::fmt::Debug>(result: Result<T, CheckoutError>, expected: ErrorReason) {
    match result {
        Err(CheckoutError::Unavailable { reason, .. }) if reason == expected => {}
        other => panic!("expected unavailable {expected:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_refund_the_psp_refuses_is_a_failed_precondition_never_a_retry_later() {
    use checkout::psp::{Behaviour, RefundRequest, TransactionKind};
    let world = world(None).await;
    let psp = PspSimulator::new();
    psp.configure("tok_refunds", Behaviour::succeed());
    let (quotes, orders) = engines(&world, &psp);
    let orders = patient(orders);
    let placement = quoted(&world, &quotes, "cart-1", "tok_refunds").await;
    let order = orders.place(TENANT, &placement, "key-1").await.unwrap();
    let capture_id = order.payment.clone().unwrap().psp_reference;
    let cents = |minor| Money {
        currency_code: "USD".into(),
        amount_minor: minor,
    };
    // Part of the capture was refunded at the PSP behind the order's back (a dashboard, say):
    // the PSP refuses a refund the order still thinks possible.
    psp.refund(RefundRequest {
        idempotency_key: "dashboard-refund".into(),
        capture_id,
        amount: checkout::psp::Money::new("USD", 500),
    })
    .await
    .unwrap();
    failed_with(
        orders
            .refund(TENANT, &order.order_id, Some(&cents(979)), "all", "r-1")
            .await,
        ErrorReason::RefundExceedsCaptured,
    );
    // An issuer's refusal is a decline.
    psp.configure_for(
        "tok_refunds",
        TransactionKind::Refund,
        Behaviour::decline("card_closed", true),
    );
    failed_with(
        orders
            .refund(TENANT, &order.order_id, Some(&cents(100)), "some", "r-2")
            .await,
        ErrorReason::PaymentDeclined,
    );
    // Only "nothing happened" is unavailable ...
    psp.configure_for(
        "tok_refunds",
        TransactionKind::Refund,
        Behaviour::new(checkout::psp::Outcome::Unavailable),
    );
    unavailable_with(
        orders
            .refund(TENANT, &order.order_id, Some(&cents(100)), "some", "r-3")
            .await,
        ErrorReason::DependencyUnavailable,
    );
    // ... and an unknown outcome says so, and is safe to retry with the same key.
    psp.set_timeout_delay(Duration::from_millis(5));
    psp.configure_for(
        "tok_refunds",
        TransactionKind::Refund,
        Behaviour::new(checkout::psp::Outcome::Timeout),
    );
    unavailable_with(
        orders
            .refund(TENANT, &order.order_id, Some(&cents(100)), "some", "r-4")
            .await,
        ErrorReason::PaymentOutcomeUnknown,
    );
    psp.configure_for("tok_refunds", TransactionKind::Refund, Behaviour::succeed());
    let (refunded, _) = orders
        .refund(TENANT, &order.order_id, Some(&cents(100)), "some", "r-4")
        .await
        .unwrap();
    assert_eq!(refunded.refunds.len(), 1);
    assert_eq!(refunded.payment.unwrap().refunded_amount, usd(100));
}

#[tokio::test]
async fn canceling_an_authorization_the_psp_already_captured_is_refused_not_retried() {
    use checkout::psp::CaptureRequest;
    let world = world(None).await;
    capture_on_completion(&world, 0).await;
    let psp = PspSimulator::new();
    let (quotes, orders) = engines(&world, &psp);
    let orders = patient(orders);
    let placement = quoted(&world, &quotes, "cart-1", "tok_ok").await;
    let order = orders.place(TENANT, &placement, "key-1").await.unwrap();
    let payment = order.payment.clone().unwrap();
    // Captured at the PSP by a capture the order has not recorded yet: the void is refused.
    psp.capture(CaptureRequest {
        idempotency_key: format!("{}:capture", payment.payment_id),
        authorization_id: payment.psp_reference.clone(),
        amount: checkout::psp::Money::new("USD", 979),
    })
    .await
    .unwrap();
    failed_with(
        orders
            .cancel(TENANT, &order.order_id, "customer left")
            .await,
        ErrorReason::PaymentRefused,
    );
}

#[tokio::test]
async fn an_unavailable_psp_fails_the_placement_as_unavailable_and_a_retry_places_it() {
    use checkout::psp::{Behaviour, Outcome};
    let world = world(None).await;
    let psp = PspSimulator::new();
    psp.configure("tok_flaky", Behaviour::new(Outcome::Unavailable));
    let (quotes, orders) = engines(&world, &psp);
    let orders = patient(orders);
    let placement = quoted(&world, &quotes, "cart-1", "tok_flaky").await;
    // Every attempt found the PSP unavailable: nothing happened, so the caller may retry —
    // not a decline that fails the placement for good.
    unavailable_with(
        orders.place(TENANT, &placement, "key-1").await,
        ErrorReason::DependencyUnavailable,
    );
    psp.configure("tok_flaky", Behaviour::succeed());
    let order = orders.place(TENANT, &placement, "key-1").await.unwrap();
    assert_eq!(psp.authorization_count(&order.order_id), 1);
    assert_eq!(
        order.payment.unwrap().status,
        PaymentStatus::Captured as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_placements_of_one_cart_with_ten_keys_make_one_order_and_one_authorization() {
    use checkout::psp::{Behaviour, TransactionKind};
    let world = world(None).await;
    let psp = PspSimulator::new();
    // Authorizations take a moment, so the placements would overlap at the PSP if nothing
    // stopped the losers before it.
    psp.configure(
        "tok_slow",
        Behaviour::succeed().with_latency(Duration::from_millis(50)),
    );
    let (quotes, one_replica) = engines(&world, &psp);
    let (_, other_replica) = engines(&world, &psp);
    let placement = quoted(&world, &quotes, "cart-1", "tok_slow").await;
    let attempts = (0..10).map(|attempt| {
        let orders = if attempt % 2 == 0 {
            one_replica.clone()
        } else {
            other_replica.clone()
        };
        let placement = placement.clone();
        tokio::spawn(async move {
            orders
                .place(TENANT, &placement, &format!("key-{attempt}"))
                .await
        })
    });
    let outcomes: Vec<_> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|joined| joined.unwrap())
        .collect();
    let placed: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
    assert_eq!(placed.len(), 1, "{outcomes:#?}");
    let order_id = placed[0].order_id.clone();
    for outcome in &outcomes {
        match outcome {
            Ok(_) => {}
            Err(CheckoutError::CartAlreadyOrdered {
                cart_id,
                order_id: named,
            }) => {
                assert_eq!(cart_id, &placement.cart_id);
                assert_eq!(named, &order_id, "the refusal names the cart's order");
            }
            Err(other) => panic!("expected CART_ALREADY_ORDERED, got {other:?}"),
        }
    }
    let authorizations = psp
        .transactions(None)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.kind == TransactionKind::Authorization)
        .count();
    assert_eq!(authorizations, 1, "the losers never reached the PSP");
    let (all, _) = one_replica
        .orders(TENANT, "", "", &[], 50, "")
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    // The winner's key still answers its order.
    assert_eq!(
        one_replica
            .place(TENANT, &placement, &placed[0].order_id.replace("ord", "x"))
            .await
            .map(|order| order.order_id),
        Err(CheckoutError::CartAlreadyOrdered {
            cart_id: placement.cart_id.clone(),
            order_id: order_id.clone(),
        })
    );
}

#[tokio::test]
async fn a_declined_placement_leaves_the_cart_and_its_external_id_placeable() {
    let world = world(None).await;
    let psp = PspSimulator::new();
    let (quotes, orders) = engines(&world, &psp);
    let mut placement = quoted(&world, &quotes, "cart-1", "tok_decline_insufficient_funds").await;
    placement.external_order_id = "pos-17".into();
    failed_with(
        orders.place(TENANT, &placement, "key-1").await,
        ErrorReason::PaymentDeclined,
    );
    // The customer pays with another card: a new key, the same cart and the same POS id.
    placement.payment_token = "tok_ok".into();
    let order = orders.place(TENANT, &placement, "key-2").await.unwrap();
    assert_eq!(order.external_order_id, "pos-17");
    assert_eq!(psp.authorization_count(&order.order_id), 1);
    // The POS retrying under its own id gets that order; another key without it is refused.
    let again = orders.place(TENANT, &placement, "key-3").await.unwrap();
    assert_eq!(again.order_id, order.order_id);
    placement.external_order_id.clear();
    assert_eq!(
        orders.place(TENANT, &placement, "key-4").await,
        Err(CheckoutError::CartAlreadyOrdered {
            cart_id: placement.cart_id.clone(),
            order_id: order.order_id.clone(),
        })
    );
    // The declined key still answers its decline.
    placement.payment_token = "tok_decline_insufficient_funds".into();
    placement.external_order_id = "pos-17".into();
    failed_with(
        orders.place(TENANT, &placement, "key-1").await,
        ErrorReason::PaymentDeclined,
    );
}

/// The placement record as builds before `pending_reward_id` wrote it (tags 1–6): a reward still
/// to hold was `pending:<reward id>` in the order's `redemption_id`.
#[derive(Clone, PartialEq, prost::Message)]
struct LegacyPlacementRecord {
    #[prost(int32, tag = "1")]
    step: i32,
    #[prost(message, optional, tag = "2")]
    order: Option<commerce_api::commerce::checkout::v1::Order>,
    #[prost(string, tag = "3")]
    payment_token: String,
    #[prost(string, tag = "4")]
    failure: String,
    #[prost(int32, tag = "5")]
    failure_reason: i32,
    #[prost(int64, tag = "6")]
    started_ms: i64,
}

/// Stores `record` as placement `key`, listed where the background round looks for `step`.
async fn store_placement(world: &World, key: &str, record: &LegacyPlacementRecord, step: &str) {
    let index = |name: &str, value: &str| store::IndexEntry {
        name: name.into(),
        value: value.into(),
    };
    world
        .store
        .commit(
            store::Commit::record(
                store::AggregateKey::new(TENANT, "checkout_placement", key),
                0,
                record,
            )
            .indexed(vec![index("all", "1"), index("step", step)]),
        )
        .await
        .unwrap();
}

/// A started placement of one burger (979 USD cents, captured on placement) for member `m-1`,
/// as an older build stored it: the reward `rw-1` still to hold, marked in the order.
fn legacy_started(world: &World, order_id: &str) -> LegacyPlacementRecord {
    use commerce_api::commerce::checkout::v1::{CaptureMode, Order, OrderTotals, Payment};
    LegacyPlacementRecord {
        step: 0,
        order: Some(Order {
            order_id: order_id.into(),
            cart_id: format!("cart-of-{order_id}"),
            location_id: world.location.clone(),
            member_id: "m-1".into(),
            totals: Some(OrderTotals {
                items_subtotal: usd(899),
                tax_total: usd(80),
                total: usd(979),
                ..OrderTotals::default()
            }),
            payment: Some(Payment {
                payment_id: format!("pay-{order_id}"),
                authorized_amount: usd(979),
                capture_mode: CaptureMode::OnPlacement as i32,
                ..Payment::default()
            }),
            redemption_id: "pending:rw-1".into(),
            ..Order::default()
        }),
        payment_token: "tok_ok".into(),
        ..LegacyPlacementRecord::default()
    }
}

/// Loyalty that holds any reward (as `red-<reward>`) and remembers every call.
#[derive(Default)]
struct RecordingLoyalty {
    calls: std::sync::Mutex<Vec<String>>,
}

impl RecordingLoyalty {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn note(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
}

#[async_trait::async_trait]
impl checkout::LoyaltyPort for RecordingLoyalty {
    async fn reward(
        &self,
        _: &str,
        _: &str,
    ) -> Result<Option<commerce_api::commerce::loyalty::v1::Reward>, CheckoutError> {
        Ok(None)
    }
    async fn hold(
        &self,
        _: &str,
        member_id: &str,
        reward_id: &str,
        order_id: &str,
        _: &str,
    ) -> Result<String, CheckoutError> {
        self.note(format!("hold {member_id} {reward_id} {order_id}"));
        Ok(format!("red-{reward_id}"))
    }
    async fn commit(&self, _: &str, redemption_id: &str) -> Result<(), CheckoutError> {
        self.note(format!("commit {redemption_id}"));
        Ok(())
    }
    async fn void(&self, _: &str, redemption_id: &str) -> Result<(), CheckoutError> {
        self.note(format!("void {redemption_id}"));
        Ok(())
    }
    async fn reverse(&self, _: &str, redemption_id: &str) -> Result<(), CheckoutError> {
        self.note(format!("reverse {redemption_id}"));
        Ok(())
    }
}

/// The engines with `loyalty` and `psp` in place of the defaults.
fn engines_with(
    world: &World,
    loyalty: Arc<dyn checkout::LoyaltyPort>,
    psp: Arc<dyn PaymentProvider>,
) -> Orders {
    let quotes = Quotes::new(
        world.carts.clone(),
        world.promotions.clone(),
        loyalty.clone(),
        None,
        Duration::from_secs(2),
        world.store.clone(),
        world.clocks.clone(),
    );
    Orders::new(
        world.store.clone(),
        world.carts.clone(),
        quotes,
        loyalty,
        psp,
        world.clocks.clone(),
    )
}

#[tokio::test]
async fn a_legacy_placement_with_a_pending_reward_holds_it_and_places_the_order() {
    let world = world(None).await;
    let psp = PspSimulator::new();
    let loyalty = Arc::new(RecordingLoyalty::default());
    let orders = engines_with(&world, loyalty.clone(), Arc::new(psp.clone()));
    store_placement(
        &world,
        "legacy-key",
        &legacy_started(&world, "ord-legacy-1"),
        "in_flight",
    )
    .await;
    // The retry of the request that started it carries on from the stored step.
    let retry = Placement {
        payment_token: "tok_ok".into(),
        ..Placement::default()
    };
    let order = orders.place(TENANT, &retry, "legacy-key").await.unwrap();
    assert_eq!(order.order_id, "ord-legacy-1");
    assert_eq!(order.redemption_id, "red-rw-1", "the reward was held");
    assert_eq!(
        order.payment.unwrap().status,
        PaymentStatus::Captured as i32
    );
    assert_eq!(
        loyalty.calls(),
        ["hold m-1 rw-1 ord-legacy-1", "commit red-rw-1"],
        "held once under the reward the marker named, then posted at capture"
    );
    assert_eq!(psp.authorization_count("ord-legacy-1"), 1);
    // Again: the same order, nothing held or charged twice.
    let again = orders.place(TENANT, &retry, "legacy-key").await.unwrap();
    assert_eq!(again.order_id, "ord-legacy-1");
    assert_eq!(loyalty.calls().len(), 2);
}

#[tokio::test]
async fn a_legacy_placement_abandoned_before_its_reward_was_held_rolls_back_holding_nothing() {
    let world = world(None).await;
    let psp = PspSimulator::new();
    let loyalty = Arc::new(RecordingLoyalty::default());
    let orders = engines_with(&world, loyalty.clone(), Arc::new(psp.clone()))
        .with_abandon_after(Duration::ZERO);
    store_placement(
        &world,
        "legacy-key",
        &legacy_started(&world, "ord-legacy-2"),
        "in_flight",
    )
    .await;
    // Registers the tenant for the background round, as starting the placement did.
    let other = quoted(&world, &engines(&world, &psp).0, "cart-1", "tok_ok").await;
    orders.place(TENANT, &other, "key-1").await.unwrap();
    let settled = orders.settle_payments().await.unwrap();
    assert_eq!(settled.abandoned, 1);
    assert!(
        loyalty.calls().is_empty(),
        "a reward still to hold was never held, so nothing is voided: {:?}",
        loyalty.calls()
    );
    assert_eq!(psp.authorization_count("ord-legacy-2"), 0);
    let retry = Placement {
        payment_token: "tok_ok".into(),
        ..Placement::default()
    };
    failed_with(
        orders.place(TENANT, &retry, "legacy-key").await,
        ErrorReason::PlacementAbandoned,
    );
}

#[tokio::test]
async fn an_unknown_stored_step_is_a_corrupt_record_not_a_panic_or_a_default() {
    let world = world(None).await;
    let psp = PspSimulator::new();
    let (quotes, orders) = engines(&world, &psp);
    let mut record = legacy_started(&world, "ord-future-1");
    record.step = 99;
    store_placement(&world, "future-key", &record, "payment_unknown").await;
    let retry = Placement {
        payment_token: "tok_ok".into(),
        ..Placement::default()
    };
    let placed = orders.place(TENANT, &retry, "future-key").await;
    match &placed {
        Err(CheckoutError::Corrupt(message)) => {
            assert!(message.contains("99"), "{message}")
        }
        other => panic!("expected a corrupt record, got {other:?}"),
    }
    let status =
        platform::ApiError::from(placed.unwrap_err()).into_status(checkout::error::ERROR_DOMAIN);
    assert_eq!(status.code(), tonic::Code::Internal);
    // The background round reports it and carries on with the rest.
    let placement = quoted(&world, &quotes, "cart-1", "tok_ok").await;
    orders.place(TENANT, &placement, "key-1").await.unwrap();
    assert_eq!(orders.settle_payments().await.unwrap().payments_resolved, 0);
    assert_eq!(psp.authorization_count("ord-future-1"), 0);
}

/// The simulator, except that `lookup` never answers (a PSP hung on that one endpoint).
struct HangingLookup(PspSimulator);

#[async_trait::async_trait]
impl PaymentProvider for HangingLookup {
    async fn authorize(
        &self,
        request: checkout::psp::AuthorizeRequest,
    ) -> Result<checkout::psp::Transaction, checkout::psp::PspError> {
        self.0.authorize(request).await
    }
    async fn capture(
        &self,
        request: checkout::psp::CaptureRequest,
    ) -> Result<checkout::psp::Transaction, checkout::psp::PspError> {
        self.0.capture(request).await
    }
    async fn void(
        &self,
        request: checkout::psp::VoidRequest,
    ) -> Result<checkout::psp::Transaction, checkout::psp::PspError> {
        self.0.void(request).await
    }
    async fn refund(
        &self,
        request: checkout::psp::RefundRequest,
    ) -> Result<checkout::psp::Transaction, checkout::psp::PspError> {
        self.0.refund(request).await
    }
    async fn lookup(
        &self,
        _: &str,
    ) -> Result<Option<checkout::psp::Transaction>, checkout::psp::PspError> {
        std::future::pending().await
    }
    async fn transactions(
        &self,
        reference: Option<&str>,
    ) -> Result<Vec<checkout::psp::Transaction>, checkout::psp::PspError> {
        self.0.transactions(reference).await
    }
}

#[tokio::test]
async fn a_psp_whose_lookup_hangs_holds_the_payment_round_no_longer_than_the_outbound_deadline() {
    let world = world(None).await;
    let psp = PspSimulator::new();
    psp.set_timeout_delay(Duration::from_millis(10));
    let (quotes, _) = engines(&world, &psp);
    let mut policy = platform::outbound::OutboundPolicy::new("psp");
    policy.timeout = Duration::from_millis(200);
    policy.max_attempts = 2;
    policy.backoff_base = Duration::from_millis(1);
    policy.backoff_max = Duration::from_millis(5);
    policy.breaker.failure_threshold = 1_000;
    let orders = engines_with(
        &world,
        Arc::new(NoLoyalty),
        Arc::new(HangingLookup(psp.clone())),
    )
    .with_psp_policy(policy)
    .with_abandon_after(Duration::from_secs(3600));
    let placement = quoted(&world, &quotes, "cart-1", "tok_timeout").await;
    unavailable_with(
        orders.place(TENANT, &placement, "key-1").await,
        ErrorReason::PaymentOutcomeUnknown,
    );
    // The round asks the PSP about the unknown payment: the lookup is cut at its deadline
    // (2 attempts of 200 ms), and the payment stays unknown for the next round.
    let started = std::time::Instant::now();
    let round = tokio::time::timeout(Duration::from_secs(10), orders.settle_payments())
        .await
        .expect("the round ends although the PSP's lookup never answers")
        .unwrap();
    assert_eq!(round.payments_resolved, 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The caller's retry asks too, and is answered as unknown in the same bounded time.
    let retried = tokio::time::timeout(
        Duration::from_secs(10),
        orders.place(TENANT, &placement, "key-1"),
    )
    .await
    .expect("the retry ends although the PSP's lookup never answers");
    unavailable_with(retried, ErrorReason::PaymentOutcomeUnknown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_change_that_loses_every_race_gives_up_as_contended() {
    let gate = GatedStore::new();
    let world = common::world_on(gate.clone(), None).await;
    let psp = PspSimulator::new();
    let (quotes, orders) = engines(&world, &psp);
    let placement = quoted(&world, &quotes, "cart-1", "tok_ok").await;
    let order = orders.place(TENANT, &placement, "key-1").await.unwrap();
    gate.orders_contended
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let moved = tokio::time::timeout(
        Duration::from_secs(20),
        orders.advance_status(TENANT, &order.order_id, OrderStatus::Accepted),
    )
    .await
    .expect("a bounded number of attempts");
    match moved {
        Err(CheckoutError::Contended(_)) => {}
        other => panic!("expected contended, got {other:?}"),
    }
    gate.orders_contended
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let moved = orders
        .advance_status(TENANT, &order.order_id, OrderStatus::Accepted)
        .await
        .unwrap();
    assert_eq!(moved.status, OrderStatus::Accepted as i32);
}
