//! The fault suite: the promises that must hold while processes and Redis die under load.
//!
//! A client places orders one after another (cart → line → quote → PlaceOrder, each step retried
//! with its own idempotency key until it answers) while the server is killed and restarted on its
//! files again and again — SIGKILL and SIGTERM, without Redis and with Redis as the bus — or while
//! Redis is killed and comes back empty. Afterwards, with a last server that settles what is due:
//!
//! - every acknowledged order exists exactly once and nothing else does;
//! - every order is captured once, and the PSP authorized each once (`ReconcilePayments` clean);
//! - every order earned its points exactly once (lifetime points = the sum over orders) and
//!   loyalty reconciliation is clean (it reports a paid order without accrual);
//! - the store's integrity check passes and nothing is left in the outbox.
//!
//! In CI the suite runs small; `scripts/faults --full` runs it at full size (300 orders, 40 kills
//! per loop) and prints the figures for each run.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use commerce_api::commerce::checkout::v1 as co;
use common::client::{Client, Protocol};
use common::shop::Shop;
use common::{Running, cli, start_in};

/// How big a run is: CI's bounded form, or `COMMERCE_FAULTS_FULL=1` (scripts/faults --full).
struct Size {
    orders: usize,
    kills: usize,
}

fn size() -> Size {
    if std::env::var("COMMERCE_FAULTS_FULL").is_ok_and(|full| full == "1") {
        Size {
            orders: 300,
            kills: 40,
        }
    } else {
        Size {
            orders: 24,
            kills: 4,
        }
    }
}

/// Flags every server of the suite runs with: background rounds often, so the last server
/// settles quickly, and a short grace so SIGTERM loops stay fast.
const SERVE: &[&str] = &[
    "--payment-resolver-seconds",
    "1",
    "--event-repair-seconds",
    "1",
    "--event-repair-after-seconds",
    "2",
    "--rate-limit-per-second",
    "100000",
    "--rate-limit-burst",
    "100000",
];

fn client_at(addr: &str) -> Client {
    Client {
        protocol: Protocol::Grpc,
        addr: addr.to_owned(),
        token: common::dev_token(None),
        tenant: "demo".into(),
        timeout: None,
    }
}

/// An error the client retries with the same key: the server is down or restarting, or a
/// duplicate of the request is still in flight.
fn transient(error: &str) -> bool {
    let lower = error.to_ascii_lowercase();
    // The connection went away mid-call (refused, reset, GOAWAY, closed).
    [
        "unavailable",
        "transport error",
        "h2 protocol error",
        "cancel",
        "connection",
    ]
    .iter()
    .any(|marker| lower.contains(marker))
        || [
            "IDEMPOTENCY_KEY_IN_USE",
            "DEADLINE_EXCEEDED",
            "DEPENDENCY_UNAVAILABLE",
            "PAYMENT_OUTCOME_UNKNOWN",
            "OVERLOADED",
            "RATE_LIMITED",
            "CONCURRENT_MODIFICATION",
            "INTERNAL",
        ]
        .contains(&error)
}

/// The cart is gone (Redis restarted empty): the order starts again with a new cart.
fn cart_gone(error: &str) -> bool {
    ["CART_EXPIRED", "RESOURCE_NOT_FOUND"].contains(&error)
}

/// The current address of a server that is restarted under the client.
#[derive(Clone, Default)]
struct Address(Arc<Mutex<String>>);

impl Address {
    fn get(&self) -> String {
        self.0.lock().unwrap().clone()
    }
    fn set(&self, addr: &str) {
        *self.0.lock().unwrap() = addr.to_owned();
    }
}

/// Calls `step` against the current server until it answers with something other than a
/// transient error.
async fn until_answered<T, F, Fut>(address: &Address, mut step: F) -> Result<T, String>
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match step(client_at(&address.get())).await {
            Err(error) if transient(&error) => {
                // An idempotency key a killed server held stays locked until its call's deadline
                // (10 s) has passed.
                assert!(
                    started.elapsed() < Duration::from_secs(90),
                    "still failing after 90 s: {error}"
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            outcome => return outcome,
        }
    }
}

/// What the client saw: for each acknowledged order, its id and total.
#[derive(Default)]
struct Ledger {
    orders: BTreeMap<String, i64>,
}

/// Places `count` orders through restarts, `clients` at a time (each client one order after
/// another); each order is one logical purchase whose every step is retried with the same key
/// until it answers (a new cart only when the old one vanished).
async fn shop_through_faults(address: Address, shop: Shop, count: usize, clients: usize) -> Ledger {
    let shoppers: Vec<_> = (0..clients)
        .map(|client| {
            let (address, shop) = (address.clone(), shop.clone());
            let orders = count / clients + usize::from(client < count % clients);
            tokio::spawn(async move { shop_one_by_one(&address, &shop, client, orders).await })
        })
        .collect();
    let mut ledger = Ledger::default();
    for shopper in shoppers {
        for (order_id, total) in shopper.await.unwrap().orders {
            assert!(
                ledger.orders.insert(order_id.clone(), total).is_none(),
                "order {order_id} acknowledged to two clients"
            );
        }
    }
    ledger
}

/// One client's orders, one after another.
async fn shop_one_by_one(address: &Address, shop: &Shop, client: usize, count: usize) -> Ledger {
    let mut ledger = Ledger::default();
    for n in 0..count {
        let mut attempt = 0;
        loop {
            let key = format!("client-{client}-order-{n}-{attempt}");
            match place(address, shop, &key).await {
                Ok((order_id, total)) => {
                    assert!(
                        ledger.orders.insert(order_id.clone(), total).is_none(),
                        "order {order_id} acknowledged twice"
                    );
                    break;
                }
                Err(error) if cart_gone(&error) => attempt += 1,
                Err(error) => panic!("order {n} failed for good: {error}"),
            }
        }
    }
    ledger
}

async fn place(address: &Address, shop: &Shop, key: &str) -> Result<(String, i64), String> {
    let cart: co::CreateCartResponse = until_answered(address, |client| {
        let request = co::CreateCartRequest {
            location_id: shop.location.clone(),
            customer_id: shop.customer.clone(),
            fulfillment: None,
        };
        let key = format!("{key}-cart");
        async move {
            client
                .call(
                    "/commerce.checkout.v1.CartService/CreateCart",
                    request,
                    Some(&key),
                )
                .await
        }
    })
    .await?;
    let cart = cart.cart.unwrap_or_default().cart_id;
    let _: co::AddCartLineResponse = until_answered(address, |client| {
        let request = co::AddCartLineRequest {
            cart_id: cart.clone(),
            item_id: shop.item.clone(),
            quantity: 1,
            ..Default::default()
        };
        let key = format!("{key}-line");
        async move {
            client
                .call(
                    "/commerce.checkout.v1.CartService/AddCartLine",
                    request,
                    Some(&key),
                )
                .await
        }
    })
    .await?;
    let quote: co::QuoteCartResponse = until_answered(address, |client| {
        let request = co::QuoteCartRequest {
            cart_id: cart.clone(),
        };
        async move {
            client
                .call("/commerce.checkout.v1.CartService/QuoteCart", request, None)
                .await
        }
    })
    .await?;
    let quote = quote.quote.unwrap_or_default();
    // The same request on every retry: the key is bound to it.
    let request = co::PlaceOrderRequest {
        cart_id: cart,
        quote_id: quote.quote_id.clone(),
        expected_total: quote.total.clone(),
        payment_token: "tok_ok".into(),
        ..Default::default()
    };
    let placed: co::PlaceOrderResponse = until_answered(address, |client| {
        let request = request.clone();
        async move {
            client
                .call(
                    "/commerce.checkout.v1.OrderService/PlaceOrder",
                    request,
                    Some(key),
                )
                .await
        }
    })
    .await?;
    let order = placed.order.unwrap_or_default();
    let total = order
        .totals
        .and_then(|totals| totals.total)
        .map_or(0, |total| total.amount_minor);
    Ok((order.order_id, total))
}

/// How a loop stops its server.
#[derive(Clone, Copy, Debug)]
enum Kill {
    Sigkill,
    Sigterm,
}

/// Kills and restarts the server `kills` times while the client shops; returns the last server.
async fn kill_loop(
    mut server: Running,
    extra: &[&str],
    address: &Address,
    kills: usize,
    how: impl Fn(usize) -> Kill,
    shopping: &tokio::task::JoinHandle<Ledger>,
) -> (Running, usize) {
    let mut done = 0;
    while done < kills && !shopping.is_finished() {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(150..500))).await;
        match how(done) {
            Kill::Sigkill => {
                let _ = server.child.kill();
            }
            Kill::Sigterm => server.terminate(),
        }
        let (_, data_dir) = server.wait_exit(Duration::from_secs(30));
        server = start_in(data_dir, extra);
        address.set(&server.addr);
        done += 1;
    }
    (server, done)
}

/// `ReconcilePayments`, which must answer while loyalty's accrual entries still land on the
/// tenant's one chain (the consumer catching up after the restarts): the ledger walk answers
/// under live writes, so `ABORTED` here is a failure, not a retry.
async fn reconcile_payments(client: &Client) -> co::ReconcilePaymentsResponse {
    client
        .call(
            "/commerce.checkout.v1.CheckoutAdminService/ReconcilePayments",
            co::ReconcilePaymentsRequest::default(),
            None,
        )
        .await
        .unwrap_or_else(|reason| panic!("ReconcilePayments: {reason}"))
}

/// Everything the suite proves once the faults stop (see the module docs).
async fn verify(server: Running, ledger: &Ledger, shop: &Shop) -> Running {
    let client = client_at(&server.addr);
    // Orders: exactly the acknowledged ones, each captured.
    let started = Instant::now();
    let listed = loop {
        let mut listed = BTreeMap::new();
        let mut token = String::new();
        loop {
            let page: co::ListOrdersResponse = client
                .call(
                    "/commerce.checkout.v1.OrderService/ListOrders",
                    co::ListOrdersRequest {
                        customer_id: shop.customer.clone(),
                        page_size: 500,
                        page_token: token.clone(),
                        ..Default::default()
                    },
                    None,
                )
                .await
                .unwrap();
            for order in page.orders {
                assert!(
                    listed.insert(order.order_id.clone(), order).is_none(),
                    "listed twice"
                );
            }
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let all_captured = listed.values().all(|order| {
            order.payment.as_ref().map(|p| p.status) == Some(co::PaymentStatus::Captured as i32)
        });
        if all_captured || started.elapsed() > Duration::from_secs(30) {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let acknowledged: BTreeSet<&String> = ledger.orders.keys().collect();
    let stored: BTreeSet<&String> = listed.keys().collect();
    assert_eq!(
        stored, acknowledged,
        "exactly the acknowledged orders exist"
    );
    for order in listed.values() {
        let payment = order.payment.clone().unwrap_or_default();
        assert_eq!(
            payment.status,
            co::PaymentStatus::Captured as i32,
            "order {} captured",
            order.order_id
        );
    }
    // Payments: orders, PSP and money ledger tie out (one authorization per order).
    let reconciled = reconcile_payments(&client).await;
    assert!(
        reconciled.mismatches.is_empty(),
        "payments tie out: {:?}",
        reconciled.mismatches
    );
    // Points: each order's $ total earned once (1 point per USD 1.00).
    let expected: i64 = ledger.orders.values().map(|total| total / 100).sum();
    let started = Instant::now();
    loop {
        let earned = shop.lifetime_points(&client).await.unwrap();
        if earned == expected {
            break;
        }
        assert!(
            earned < expected && started.elapsed() < Duration::from_secs(30),
            "points earned {earned}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server
}

/// Stops the last server and checks its files offline: loyalty reconciliation, store integrity,
/// an empty outbox.
fn verify_offline(server: Running) {
    server.terminate();
    let (status, data_dir) = server.wait_exit(Duration::from_secs(30));
    assert!(
        status.success(),
        "the last server stops cleanly: {status:?}"
    );
    let path = data_dir.path().to_str().unwrap();
    let reconciled = cli(&[
        "loyalty",
        "reconcile",
        "--tenant",
        "demo",
        "--settle-seconds",
        "0",
        "--data-dir",
        path,
    ]);
    assert!(
        reconciled.status.success(),
        "loyalty reconciliation clean: {}",
        String::from_utf8_lossy(&reconciled.stdout)
    );
    let check = cli(&["store", "check", "--data-dir", path]);
    let check = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(check.contains(": intact"), "{check}");
    assert!(check.contains("outbox: 0 event(s) waiting"), "{check}");
}

async fn restart_loop(extra: &[&str], label: &str, how: impl Fn(usize) -> Kill + Copy) {
    restart_loop_with(extra, label, how, size(), 1).await;
}

async fn restart_loop_with(
    extra: &[&str],
    label: &str,
    how: impl Fn(usize) -> Kill + Copy,
    size: Size,
    clients: usize,
) {
    let server = start_in(tempfile::tempdir().unwrap(), extra);
    let address = Address::default();
    address.set(&server.addr);
    let shop = Shop::open(&client_at(&server.addr)).await.unwrap();
    let started = Instant::now();
    let shopping = tokio::spawn(shop_through_faults(
        address.clone(),
        shop.clone(),
        size.orders,
        clients,
    ));
    let (server, kills) = kill_loop(server, extra, &address, size.kills, how, &shopping).await;
    let ledger = shopping.await.unwrap();
    let server = verify(server, &ledger, &shop).await;
    println!(
        "faults: {} orders from {clients} client(s) through {kills} restarts ({label}) in {:.1}s — lost 0, double charges 0, missing accruals 0",
        ledger.orders.len(),
        started.elapsed().as_secs_f64()
    );
    verify_offline(server);
}

fn serve_flags(extra: &[&str]) -> Vec<String> {
    SERVE
        .iter()
        .chain(extra)
        .map(|flag| (*flag).to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_points_and_payments_survive_a_sigkill_loop_without_redis() {
    let flags = serve_flags(&[]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    restart_loop(&flags, "SIGKILL, no Redis", |_| Kill::Sigkill).await;
}

/// 64 clients placing at once: their captures share group commits and batched ledger appends,
/// and SIGKILL lands in the middle of those batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_clients_placing_at_once_survive_a_sigkill_loop() {
    let flags = serve_flags(&[]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let size = if std::env::var("COMMERCE_FAULTS_FULL").is_ok_and(|full| full == "1") {
        Size {
            orders: 1280,
            kills: 20,
        }
    } else {
        Size {
            orders: 192,
            kills: 3,
        }
    };
    restart_loop_with(&flags, "SIGKILL, 64 clients", |_| Kill::Sigkill, size, 64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_points_and_payments_survive_a_sigterm_loop_without_redis() {
    let flags = serve_flags(&[]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    restart_loop(&flags, "SIGTERM, no Redis", |_| Kill::Sigterm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_points_and_payments_survive_a_restart_loop_with_redis_as_the_bus() {
    let redis = fastpath::testing::RedisServer::start();
    let url = redis.url();
    let flags = serve_flags(&["--redis-url", &url]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    restart_loop(&flags, "SIGKILL and SIGTERM, Redis bus", |n| {
        if n % 2 == 0 {
            Kill::Sigkill
        } else {
            Kill::Sigterm
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_when_redis_dies_mid_load_and_comes_back_empty() {
    let size = size();
    let mut redis = fastpath::testing::RedisServer::start();
    let (url, port) = (redis.url(), redis.port);
    let flags = serve_flags(&["--redis-url", &url]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = start_in(tempfile::tempdir().unwrap(), &flags);
    let address = Address::default();
    address.set(&server.addr);
    let shop = Shop::open(&client_at(&server.addr)).await.unwrap();
    let started = Instant::now();
    let shopping = tokio::spawn(shop_through_faults(
        address.clone(),
        shop.clone(),
        size.orders,
        1,
    ));
    let mut outages = 0;
    while !shopping.is_finished() && outages < size.kills.div_ceil(2) {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(300..800))).await;
        redis.kill();
        tokio::time::sleep(Duration::from_millis(fastrand::u64(300..1_000))).await;
        redis = fastpath::testing::RedisServer::start_on(port);
        outages += 1;
    }
    let ledger = shopping.await.unwrap();
    let server = verify(server, &ledger, &shop).await;
    println!(
        "faults: {} orders through {outages} Redis outages (restarted empty) in {:.1}s — lost 0, double charges 0, missing accruals 0",
        ledger.orders.len(),
        started.elapsed().as_secs_f64()
    );
    verify_offline(server);
}

/// The duplicate storm across two replicas: every order's PlaceOrder sent many times at once with
/// the same key, half to each checkout replica of the split topology (shared Redis, database and
/// PSP process). One authorization per key at the PSP, every success the same answer byte for
/// byte, payments reconciled clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_storm_across_two_replicas_authorizes_each_order_once() {
    use commerce_api::commerce::psp::v1 as psp;
    use common::client::Caller as _;
    use prost::Message as _;
    let (keys, duplicates) = if size().orders > 100 {
        (20, 30)
    } else {
        (10, 20)
    };
    // The storm is one tenant's legitimate retries, not abuse: the rate limit is out of the way,
    // and so is the per-address connection cap (this client opens a connection per call, all
    // from one address).
    let split = common::split::Split::start(
        2,
        &[
            "--rate-limit-per-second",
            "100000",
            "--rate-limit-burst",
            "100000",
            "--max-connections-per-address",
            "2048",
        ],
    );
    let token = common::dev_token(None);
    let replicas = [split.caller(0, &token), split.caller(1, &token)];
    let shop = Shop::open(&replicas[0]).await.unwrap();
    let mut requests = Vec::new();
    for key in 0..keys {
        let key = format!("storm-{key}");
        let request = shop.prepare(&replicas[0], &key, 1, None).await.unwrap();
        requests.push((key, request));
    }
    let retries = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    let calls = requests.iter().flat_map(|(key, request)| {
        (0..duplicates).map(|copy| {
            let caller = replicas[copy % 2].clone();
            let (key, request) = (key.clone(), request.clone());
            let retries = &retries;
            async move {
                // A duplicate that finds its key in flight is told to retry, and a call that
                // timed out or lost its connection under the storm is retried with the same
                // key, as a caller does.
                loop {
                    let answer: Result<co::PlaceOrderResponse, String> = caller
                        .call(
                            "/commerce.checkout.v1.OrderService/PlaceOrder",
                            request.clone(),
                            Some(&key),
                        )
                        .await;
                    match answer {
                        Err(reason) if transient(&reason) => {
                            retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        answer => return (key, answer.map(|placed| placed.encode_to_vec())),
                    }
                }
            }
        })
    });
    let answers = futures_util::future::join_all(calls).await;
    let elapsed = started.elapsed();
    let mut by_key: BTreeMap<String, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for (key, answer) in answers {
        let bytes = answer.unwrap_or_else(|error| panic!("{key}: {error}"));
        by_key.entry(key).or_default().insert(bytes);
    }
    let mut orders = Vec::new();
    for (key, answers) in &by_key {
        assert_eq!(answers.len(), 1, "{key}: every answer the same bytes");
        let placed = co::PlaceOrderResponse::decode(answers.first().unwrap().as_slice()).unwrap();
        orders.push(placed.order.unwrap().order_id);
    }
    assert_eq!(orders.iter().collect::<BTreeSet<_>>().len(), keys);
    // The PSP's own ledger: one successful authorization per order.
    let pem = std::fs::read(split.base.keys.path().join("checkout.pem")).unwrap();
    let reader = Client {
        protocol: Protocol::Grpc,
        addr: split.psp.addr.clone(),
        token: common::split::service_token(&pem, "psp.payments.read", 300),
        tenant: "demo".into(),
        timeout: None,
    };
    for order in &orders {
        let listed: psp::ListTransactionsResponse = reader
            .call(
                "/commerce.psp.v1.PspService/ListTransactions",
                psp::ListTransactionsRequest {
                    reference: order.clone(),
                    ..Default::default()
                },
                None,
            )
            .await
            .unwrap();
        let authorizations = listed
            .transactions
            .iter()
            .filter(|t| t.kind == psp::TransactionKind::Authorization as i32 && t.succeeded)
            .count();
        assert_eq!(authorizations, 1, "order {order}: {listed:?}");
    }
    // Calls that timed out mid-capture leave their capture to the background payment round:
    // payments must tie out once it has run (every second here), and stay so.
    let settled = Instant::now();
    loop {
        let reconciled: co::ReconcilePaymentsResponse = replicas[1]
            .call(
                "/commerce.checkout.v1.CheckoutAdminService/ReconcilePayments",
                co::ReconcilePaymentsRequest::default(),
                None,
            )
            .await
            .unwrap();
        if reconciled.mismatches.is_empty() {
            break;
        }
        assert!(
            settled.elapsed() < common::split::SETTLE,
            "payments tie out: {:?}",
            reconciled.mismatches
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "faults: duplicate storm — {} PlaceOrder calls ({keys} keys × {duplicates}) over 2 replicas in {:.1}s ({} retried after in-use or timeout): {keys} orders, {keys} authorizations, every answer byte-identical, payments tied out {:.1}s after",
        keys * duplicates,
        elapsed.as_secs_f64(),
        retries.into_inner(),
        settled.elapsed().as_secs_f64()
    );
}
