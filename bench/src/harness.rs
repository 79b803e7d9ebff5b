//! What the benchmark binaries share: child processes killed when dropped, free ports,
//! waiting for a server, gRPC channels and authorized requests. Included by each binary with
//! `#[path = "harness.rs"] mod harness;` (the bench crate has no library).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use commerce_api::commerce::checkout::v1::menu_service_client::MenuServiceClient;
use commerce_api::commerce::checkout::v1::{
    CreateLocationRequest, CreateMenuItemRequest, FulfillmentMode, Location, MenuItem,
    OpeningHours, TaxRate,
};
use commerce_api::commerce::common::v1::Money;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// A child process killed (and reaped) when dropped, also when the benchmark fails.
pub struct Process {
    pub child: Child,
}

impl Process {
    pub fn spawn(command: &mut Command, what: &str) -> anyhow::Result<Self> {
        let child = command
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(Process { child })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until `addr` accepts connections (or `process` dies).
pub async fn wait_for(addr: SocketAddr, process: &mut Process, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = process.child.try_wait()? {
            bail!("{what} exited early: {status}");
        }
        ensure!(Instant::now() < deadline, "{what} did not listen on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub async fn connect(addr: SocketAddr) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?)
}

pub async fn connect_many(addr: SocketAddr, count: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        channels.push(connect(addr).await?);
    }
    Ok(channels)
}

pub fn authorized<T>(message: T, bearer: &MetadataValue<Ascii>) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", bearer.clone());
    request
}

pub fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: "USD".into(),
        amount_minor,
    })
}

/// The `commerce` binary: `given`, or the one built beside this benchmark (`script` says how
/// to build it).
pub fn commerce_binary(
    given: Option<std::path::PathBuf>,
    script: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let path = match given {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .context("no directory")?
            .join("commerce"),
    };
    ensure!(
        path.exists(),
        "{} missing: cargo build --release -p commerce (or run {script})",
        path.display()
    );
    Ok(path)
}

// ---------------------------------------------------------------------------------------------
// Requests, errors and the load driver (shared by the benchmarks that drive gRPC calls).

/// An authorized request carrying `idempotency-key: key`.
pub fn keyed<T>(message: T, bearer: &MetadataValue<Ascii>, key: &str) -> Request<T> {
    let mut request = authorized(message, bearer);
    request.metadata_mut().insert(
        "idempotency-key",
        key.parse().expect("idempotency keys are ASCII"),
    );
    request
}

/// `google.rpc.Status` as carried in `grpc-status-details-bin` (only what is read here).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// `google.rpc.ErrorInfo` (reason and domain; metadata skipped).
#[derive(Clone, PartialEq, prost::Message)]
struct ErrorInfo {
    #[prost(string, tag = "1")]
    reason: String,
    #[prost(string, tag = "2")]
    domain: String,
}

/// How a failed call is counted: its gRPC code and, when the server sent one, the `ErrorInfo`
/// reason (e.g. `Aborted CONCURRENT_MODIFICATION`).
pub fn error_label(status: &Status) -> String {
    use prost::Message as _;
    let reason = RpcStatus::decode(status.details())
        .ok()
        .and_then(|rpc| {
            rpc.details
                .into_iter()
                .find(|any| any.type_url.ends_with("/google.rpc.ErrorInfo"))
        })
        .and_then(|any| ErrorInfo::decode(any.value.as_slice()).ok())
        .map(|info| info.reason);
    match reason {
        Some(reason) if !reason.is_empty() => format!("{:?} {reason}", status.code()),
        _ => format!("{:?} ({})", status.code(), status.message()),
    }
}

// ---------------------------------------------------------------------------------------------
// The load driver.

/// One load run's result: successes' latencies and values, failures counted by label.
pub struct Run<T> {
    pub calls: usize,
    pub elapsed: Duration,
    /// Latencies of the successful calls, sorted.
    pub latencies: Vec<Duration>,
    pub ok: Vec<T>,
    pub errors: BTreeMap<String, usize>,
}

impl<T> Run<T> {
    pub fn per_second(&self) -> f64 {
        self.ok.len() as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let n = self.latencies.len();
        (n > 0).then(|| self.latencies[((n as f64 * p) as usize).min(n - 1)])
    }

    pub fn errors_text(&self) -> String {
        if self.errors.is_empty() {
            return "0".into();
        }
        self.errors
            .iter()
            .map(|(label, count)| format!("{count} × {label}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Calls `call(index)` for every index in `0..calls` from `concurrency` callers, each caller
/// taking the next index when its previous call has answered; times every call.
pub async fn drive<T, F, Fut>(concurrency: usize, calls: usize, call: F) -> anyhow::Result<Run<T>>
where
    T: Send + 'static,
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<T, Status>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut callers = Vec::with_capacity(concurrency);
    for caller in 0..concurrency {
        let (next, call) = (next.clone(), call.clone());
        callers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(calls / concurrency + 1);
            let mut ok = Vec::with_capacity(calls / concurrency + 1);
            let mut errors = BTreeMap::<String, usize>::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= calls {
                    return (latencies, ok, errors);
                }
                let began = Instant::now();
                let result = call(caller, index).await;
                let latency = began.elapsed();
                match result {
                    Ok(value) => {
                        latencies.push(latency);
                        ok.push(value);
                    }
                    Err(status) => *errors.entry(error_label(&status)).or_default() += 1,
                }
            }
        }));
    }
    let mut run = Run {
        calls,
        elapsed: Duration::ZERO,
        latencies: Vec::with_capacity(calls),
        ok: Vec::with_capacity(calls),
        errors: BTreeMap::new(),
    };
    for caller in callers {
        let (latencies, ok, errors) = caller.await?;
        run.latencies.extend(latencies);
        run.ok.extend(ok);
        for (label, count) in errors {
            *run.errors.entry(label).or_default() += count;
        }
    }
    run.elapsed = started.elapsed();
    run.latencies.sort();
    Ok(run)
}

pub fn micros(duration: Option<Duration>) -> String {
    duration.map_or_else(
        || "–".into(),
        |duration| format!("{:.0} µs", duration.as_secs_f64() * 1e6),
    )
}

/// The menu item's base price, USD minor units.
pub const ITEM_PRICE_MINOR: i64 = 899;

/// What every cart is made of.
pub struct Menu {
    pub location_id: String,
    pub item_id: String,
}

/// The location (open always, UTC, USD, pickup, food at 8.875%) and the item (USD 8.99, food).
pub async fn create_menu(channel: Channel, bearer: &MetadataValue<Ascii>) -> anyhow::Result<Menu> {
    let mut menus = MenuServiceClient::new(channel);
    let every_day = (1..=7)
        .map(|day| OpeningHours {
            day,
            open_minute: 0,
            close_minute: 1440,
        })
        .collect();
    let location_id = menus
        .create_location(keyed(
            CreateLocationRequest {
                location: Some(Location {
                    display_name: "Bench Downtown".into(),
                    time_zone: "UTC".into(),
                    currency_code: "USD".into(),
                    opening_hours: every_day,
                    fulfillment_modes: vec![FulfillmentMode::Pickup as i32],
                    tax_rates: vec![TaxRate {
                        tax_category: "food".into(),
                        rate_ppm: 88_750,
                    }],
                    ..Default::default()
                }),
            },
            bearer,
            "bench-location",
        ))
        .await?
        .into_inner()
        .location
        .context("CreateLocation returned no location")?
        .location_id;
    let item_id = menus
        .create_menu_item(keyed(
            CreateMenuItemRequest {
                item: Some(MenuItem {
                    sku: "BENCH-BURGER".into(),
                    display_name: "Bench Burger".into(),
                    category: "burgers".into(),
                    tax_category: "food".into(),
                    base_price: usd(ITEM_PRICE_MINOR),
                    active: true,
                    ..Default::default()
                }),
            },
            bearer,
            "bench-item",
        ))
        .await?
        .into_inner()
        .item
        .context("CreateMenuItem returned no item")?
        .item_id;
    Ok(Menu {
        location_id,
        item_id,
    })
}
