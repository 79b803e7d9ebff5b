//! `checkout-bench`: checkout's QuoteCart and PlaceOrder measured end to end (issue 7 "Measure").
//! Run by hand, it prints numbers; it is not a test.
//!
//!   bench/checkout.sh [--quotes N] [--orders K] [--connections C]
//!
//! (the script builds `commerce` and `bench` in release and runs `target/release/checkout-bench`).
//! It starts the real `commerce serve` itself on free loopback ports and kills it at the end (also
//! when the benchmark fails): no Redis, so the embedded store in a temporary directory, carts in
//! that store and the in-process event bus; the binary's PSP simulator, which answers `tok_ok`
//! with no latency; the rate limiter raised out of the way. Tenant `bench`, token from
//! `commerce token`, generated tonic clients over C HTTP/2 connections (one at concurrency 1).
//!
//! Setup over gRPC: one location open every day all day (UTC, USD, pickup, tax category `food`
//! at 8.875%) and one active menu item (USD 8.99, tax category `food`).
//!
//! 1. **QuoteCart**: one cart with 3 lines, then N `CartService/QuoteCart` calls at concurrency 1
//!    and 32 or `--concurrency` (each call prices the cart and stores a quote); req/s, p50/p99.
//! 2. **PlaceOrder**: for each concurrency (`--concurrency`, default 1,32), K carts are prepared first, 32 at a time and
//!    outside the timing (CreateCart, AddCartLine, QuoteCart for `quote_id` and `total`); then only
//!    the K `OrderService/PlaceOrder` calls are timed (own idempotency key each, `tok_ok`,
//!    `expected_total` = the quote's total); orders/s, p50/p99. Failed calls are not retried:
//!    they are counted by gRPC code and `ErrorInfo` reason and printed. Afterwards, outside the
//!    timing: GetOrder on every order placed must answer it with payment CAPTURED, and ListOrders
//!    of the location must count exactly the orders placed.

#[path = "harness.rs"]
mod harness;
#[path = "workload.rs"]
mod workload;

use harness::{
    ITEM_PRICE_MINOR, Process, Run, authorized, commerce_binary, connect, connect_many,
    create_menu, drive, free_port, keyed, micros, tail, wait_for,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;
use workload::{PAYMENT_TOKEN, PREP_CONCURRENCY, check_orders, place_orders, prepare_carts};

use anyhow::{Context as _, ensure};
use clap::Parser;
use commerce_api::commerce::checkout::v1::cart_service_client::CartServiceClient;
use commerce_api::commerce::checkout::v1::order_service_client::OrderServiceClient;
use commerce_api::commerce::checkout::v1::{
    AddCartLineRequest, CreateCartRequest, ListOrdersRequest, Quote, QuoteCartRequest,
};
use commerce_api::commerce::common::v1::Money;
use tonic::Status;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

/// The tenant of the token, hence of everything created.
const TENANT: &str = "bench";

#[derive(Parser)]
#[command(about = "Checkout benchmark: QuoteCart and PlaceOrder through `commerce serve`")]
struct Cli {
    /// QuoteCart calls per run (at each concurrency).
    #[arg(long, default_value_t = 2_000)]
    quotes: usize,
    /// Orders placed per run (at each concurrency), each from its own prepared cart.
    #[arg(long, default_value_t = 1_000)]
    orders: usize,
    /// HTTP/2 connections the concurrent runs share (one at concurrency 1).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// The `commerce` binary; default: the one next to this binary (target/release/commerce).
    #[arg(long)]
    commerce: Option<PathBuf>,
    /// The concurrencies measured, in order.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 32])]
    concurrency: Vec<usize>,
    /// Pins the server to these CPUs (`taskset -c`), e.g. `0`; pin this program to the others
    /// yourself (`taskset -c 1 …`), so the load generator does not compete with the server.
    #[arg(long)]
    server_cpus: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run(Cli::parse()).await
}

// ---------------------------------------------------------------------------------------------
// The server process.

async fn run(cli: Cli) -> anyhow::Result<()> {
    ensure!(
        cli.quotes > 0 && cli.orders > 0,
        "--quotes and --orders must be positive"
    );
    let commerce_bin = commerce_binary(cli.commerce.clone(), "bench/checkout.sh")?;
    let work = tempfile::tempdir()?;

    // commerce without Redis: embedded store, carts in the store, in-process bus.
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let log_path = work.path().join("commerce.log");
    let mut server = match &cli.server_cpus {
        Some(cpus) => {
            let mut pinned = Command::new("taskset");
            pinned.args(["-c", cpus]).arg(&commerce_bin);
            pinned
        }
        None => Command::new(&commerce_bin),
    };
    let mut commerce = Process::spawn(
        server
            .arg("serve")
            .args(["--listen", &listen.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .arg("--data-dir")
            .arg(work.path().join("data"))
            .args(["--rate-limit-per-second", "1000000"])
            .args(["--rate-limit-burst", "1000000"])
            .args([
                "--shutdown-grace-seconds",
                "1",
                "--shutdown-delay-seconds",
                "0",
            ])
            .env_remove("MONGODB_URI")
            .env_remove("COMMERCE_REDIS_URL")
            .env_remove("COMMERCE_PROMOTIONS_FILE")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?),
        "commerce serve",
    )?;
    wait_for(listen, &mut commerce, "commerce serve").await?;
    let token = Command::new(&commerce_bin)
        .args(["token", "--tenant", TENANT, "--ttl-minutes", "240"])
        .output()
        .context("commerce token")?;
    ensure!(token.status.success(), "commerce token: {}", token.status);
    let bearer: MetadataValue<Ascii> =
        format!("Bearer {}", String::from_utf8(token.stdout)?.trim()).parse()?;

    let result = measure(&cli, listen, &bearer).await;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    if result.is_err() {
        eprintln!(
            "checkout-bench: failed; commerce's log:\n{}",
            tail(&log, 30)
        );
    } else {
        // Anything the server complained about while being measured.
        let complaints: Vec<&str> = log
            .lines()
            .filter(|line| {
                line.contains("\"level\":\"WARN\"") || line.contains("\"level\":\"ERROR\"")
            })
            .collect();
        println!("commerce's log: {} WARN/ERROR lines", complaints.len());
        for line in complaints.iter().take(5) {
            println!("  {line}");
        }
    }
    drop(commerce);
    result
}

// ---------------------------------------------------------------------------------------------
// Clients.

fn minor(money: &Option<Money>) -> i64 {
    money.as_ref().map_or(0, |money| money.amount_minor)
}

// ---------------------------------------------------------------------------------------------
// The benchmark.

async fn measure(cli: &Cli, addr: SocketAddr, bearer: &MetadataValue<Ascii>) -> anyhow::Result<()> {
    let channel = connect(addr).await?;
    let menu = create_menu(channel.clone(), bearer).await?;
    let prep_channels = connect_many(addr, cli.connections).await?;

    // --- 1. QuoteCart ------------------------------------------------------------------------
    let quote_cart = {
        let mut carts = CartServiceClient::new(channel.clone());
        let cart_id = carts
            .create_cart(keyed(
                CreateCartRequest {
                    location_id: menu.location_id.clone(),
                    customer_id: "bench-quote".into(),
                    fulfillment: None,
                },
                bearer,
                "bench-quote-cart",
            ))
            .await?
            .into_inner()
            .cart
            .context("CreateCart returned no cart")?
            .cart_id;
        for quantity in 1..=3 {
            carts
                .add_cart_line(keyed(
                    AddCartLineRequest {
                        cart_id: cart_id.clone(),
                        item_id: menu.item_id.clone(),
                        quantity,
                        special_instructions: format!("line {quantity}"),
                        ..Default::default()
                    },
                    bearer,
                    &format!("bench-quote-line-{quantity}"),
                ))
                .await?;
        }
        cart_id
    };
    let sample = quote(&prep_channels[0], bearer, &quote_cart).await?;
    ensure!(
        sample.lines.len() == 3 && minor(&sample.items_subtotal) == 6 * ITEM_PRICE_MINOR,
        "unexpected quote of the 3-line cart: {sample:?}"
    );
    // Warm-up: connections, caches, allocator.
    quotes(&prep_channels, bearer, &quote_cart, 8, 200.min(cli.quotes)).await?;

    let mut quote_rows = Vec::new();
    for &concurrency in &cli.concurrency {
        let channels = connect_many(addr, cli.connections.min(concurrency)).await?;
        let run = quotes(&channels, bearer, &quote_cart, concurrency, cli.quotes).await?;
        quote_rows.push((concurrency, run));
    }

    // --- 2. PlaceOrder -----------------------------------------------------------------------
    // Warm-up (counted in the orders the location must list).
    let warm_carts =
        prepare_carts(&prep_channels, bearer, &menu, "warm", 32.min(cli.orders)).await?;
    let warm = place_orders(&prep_channels, bearer, "warm", warm_carts, 8).await?;
    let mut placed_ids: Vec<String> = warm.ok.iter().map(|p| p.order_id.clone()).collect();

    let mut order_rows = Vec::new();
    for &concurrency in &cli.concurrency {
        let run_name = format!("c{concurrency}");
        let prepared_started = Instant::now();
        let carts = prepare_carts(&prep_channels, bearer, &menu, &run_name, cli.orders).await?;
        let preparation = prepared_started.elapsed();
        let total = carts.first().map(|cart| minor(&cart.total)).unwrap_or(0);
        let channels = connect_many(addr, cli.connections.min(concurrency)).await?;
        let run = place_orders(&channels, bearer, &run_name, carts, concurrency).await?;
        placed_ids.extend(run.ok.iter().map(|p| p.order_id.clone()));
        order_rows.push((concurrency, preparation, total, run));
    }

    // --- Verification, outside the timing -----------------------------------------------------
    let checked = Instant::now();
    let (found, captured, missing) = check_orders(&prep_channels, bearer, &placed_ids).await?;
    let listed = count_listed(channel.clone(), bearer, &menu.location_id).await?;
    let verification = checked.elapsed();

    // --- Report --------------------------------------------------------------------------------
    println!(
        "checkout-bench: commerce serve without Redis (embedded store, carts in the store, in-process bus), PSP simulator `{PAYMENT_TOKEN}` (no latency); tenant {TENANT}; tonic clients over {} HTTP/2 connection(s) when concurrent, 1 at concurrency 1",
        cli.connections
    );
    println!();
    println!(
        "QuoteCart: one cart with 3 lines (1 + 2 + 3 × USD {:.2}), items subtotal {}, tax {}, total {}; {} calls per run (each stores a quote)",
        ITEM_PRICE_MINOR as f64 / 100.0,
        minor(&sample.items_subtotal),
        minor(&sample.tax_total),
        minor(&sample.total),
        cli.quotes
    );
    println!("| concurrency | calls | ok | errors | seconds | req/s | p50 | p99 |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (concurrency, run) in &quote_rows {
        println!(
            "| {concurrency} | {} | {} | {} | {:.2} | {:.0} | {} | {} |",
            run.calls,
            run.ok.len(),
            run.errors_text(),
            run.elapsed.as_secs_f64(),
            run.per_second(),
            micros(run.percentile(0.50)),
            micros(run.percentile(0.99)),
        );
    }
    println!();
    println!(
        "PlaceOrder: {} orders per run, each from its own cart (1 line, quoted beforehand); only the PlaceOrder calls are timed; no retries",
        cli.orders
    );
    println!(
        "| concurrency | orders | ok | errors | captured in reply | seconds | orders/s | p50 | p99 | cart preparation (not timed) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (concurrency, preparation, total, run) in &order_rows {
        println!(
            "| {concurrency} | {} | {} | {} | {} | {:.2} | {:.0} | {} | {} | {:.2} s, {} carts at {PREP_CONCURRENCY} concurrent, total {} each |",
            run.calls,
            run.ok.len(),
            run.errors_text(),
            run.ok.iter().filter(|placed| placed.captured).count(),
            run.elapsed.as_secs_f64(),
            run.per_second(),
            micros(run.percentile(0.50)),
            micros(run.percentile(0.99)),
            preparation.as_secs_f64(),
            run.calls,
            total,
        );
    }
    println!();
    let expected = placed_ids.len();
    println!(
        "checked ({:.2} s): {expected} orders placed in all ({} warm-up); GetOrder found {found}, {captured} with payment CAPTURED, {missing} missing; ListOrders of the location lists {listed}",
        verification.as_secs_f64(),
        warm.ok.len(),
    );
    if !warm.errors.is_empty() {
        println!("warm-up PlaceOrder errors: {}", warm.errors_text());
    }
    ensure!(
        found == expected && captured == expected && missing == 0,
        "not every placed order is there with its payment captured"
    );
    ensure!(
        listed == expected,
        "ListOrders lists {listed} orders, {expected} were placed"
    );
    Ok(())
}

async fn quote(
    channel: &Channel,
    bearer: &MetadataValue<Ascii>,
    cart_id: &str,
) -> anyhow::Result<Quote> {
    CartServiceClient::new(channel.clone())
        .quote_cart(authorized(
            QuoteCartRequest {
                cart_id: cart_id.into(),
            },
            bearer,
        ))
        .await?
        .into_inner()
        .quote
        .context("QuoteCart returned no quote")
}

/// `calls` QuoteCart calls on `cart_id` from `concurrency` callers.
async fn quotes(
    channels: &[Channel],
    bearer: &MetadataValue<Ascii>,
    cart_id: &str,
    concurrency: usize,
    calls: usize,
) -> anyhow::Result<Run<()>> {
    let clients: Arc<Vec<CartServiceClient<Channel>>> = Arc::new(
        (0..concurrency)
            .map(|caller| CartServiceClient::new(channels[caller % channels.len()].clone()))
            .collect(),
    );
    let (bearer, cart_id) = (bearer.clone(), cart_id.to_owned());
    drive(concurrency, calls, move |caller, _| {
        let mut client = clients[caller].clone();
        let request = authorized(
            QuoteCartRequest {
                cart_id: cart_id.clone(),
            },
            &bearer,
        );
        async move {
            let quote = client.quote_cart(request).await?.into_inner().quote;
            match quote {
                Some(quote) if !quote.quote_id.is_empty() => Ok(()),
                _ => Err(Status::internal("QuoteCart answered without a quote")),
            }
        }
    })
    .await
}

/// How many orders ListOrders lists for the location (every page).
async fn count_listed(
    channel: Channel,
    bearer: &MetadataValue<Ascii>,
    location_id: &str,
) -> anyhow::Result<usize> {
    let mut orders = OrderServiceClient::new(channel);
    let mut count = 0;
    let mut page_token = String::new();
    loop {
        let page = orders
            .list_orders(authorized(
                ListOrdersRequest {
                    page_size: 500,
                    page_token: page_token.clone(),
                    location_id: location_id.into(),
                    ..Default::default()
                },
                bearer,
            ))
            .await?
            .into_inner();
        count += page.orders.len();
        if page.next_page_token.is_empty() {
            return Ok(count);
        }
        page_token = page.next_page_token;
    }
}
