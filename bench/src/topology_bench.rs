//! `topology-bench`: PlaceOrder redeeming a loyalty reward through the split topology and through
//! the all-in-one, same run, back to back (issue 15 "Measure"). Run by hand, it prints numbers; it
//! is not a test.
//!
//!   bench/topology.sh [--orders K] [--members M] [--connections C] [--shapes …]
//!                     [--callee-timeout-ms MS] [--shared-database] [--no-pin]
//!
//! (the script builds `commerce` and `bench` in release and runs `target/release/topology-bench`).
//!
//! What it starts, on free loopback ports, and kills at the end (also when it fails):
//!
//! - one `redis-server` from PATH, run for a benchmark (`--save "" --appendonly no`: nothing is
//!   written to disk; commerce warns about it, which is expected here), shared by every shape
//!   (each on its own database number), and a MongoDB-compatible server: SecantusDB
//!   (`.venv/bin/secantusd-py`, or `$SECANTUSD`; in memory, a single-node replica set) started
//!   empty for each shape with the same flags — it slows down as it holds more data, so one
//!   server for all would favour the shape measured first (`--shared-database` keeps one anyway,
//!   a database per shape) — or the server at `$MONGODB_URI` when set (a database per shape). So
//!   every shape starts from empty stores and the only difference is the topology;
//! - per shape, one after the other (the previous one stopped first):
//!   - **all-in-one**: `commerce serve` (every service; loyalty in process, the PSP simulator in
//!     process beside the store);
//!   - **all-in-one + PSP process**: the same, but charging through `commerce psp serve` over
//!     gRPC (`--psp-url`, signed with checkout's key), so against the split the only difference is
//!     loyalty in process vs over gRPC;
//!   - **split**: `commerce psp serve`, `commerce serve --services loyalty` and `commerce serve
//!     --services checkout --loyalty-url … --psp-url … --service-key-file … --service-name
//!     checkout` (the flags of `scripts/run-split`; no subscriptions process: PlaceOrder does not
//!     reach it).
//!
//!   Every process gets `--jwks-file` (checkout's key from `commerce keys generate`), the
//!   per-tenant rate limiter raised out of the way, info logs on stderr (one line per RPC: read
//!   below) and an admin port (`/metrics`: read below). The caller's `--callee-timeout-ms` stays
//!   the binary's default (2 s per attempt to loyalty; the PSP callee has its own 30 s) unless
//!   `--callee-timeout-ms` is given.
//!
//! Pinning: every server process (commerce, the PSP, Redis, SecantusDB) runs under `taskset -c`
//! on the first CPU this process may use, the load generator itself (this process, before its
//! runtime starts) on the second; with fewer than two CPUs, or `--no-pin`, nothing is pinned
//! (and it says so).
//!
//! Per shape, over gRPC and outside the timing: one location open always (UTC, USD, pickup, food
//! at 8.875%), one item (USD 8.99), the loyalty program set explicitly (1 point per USD 1.00,
//! points active at once and never expiring, holds live 24 h), one reward (USD 1.00 off for
//! `--point-cost` points) and M members (`--members`, registered, each given enough points with
//! AdjustPoints for every order it will redeem). Then a warm-up of 32 orders at 8 concurrent, and
//! for concurrency 1 and 32: K carts prepared (CreateCart for a member's customer, AddCartLine,
//! SetLoyaltyReward — the reward the order redeems is chosen on the cart — and QuoteCart), then
//! only the K `PlaceOrder` calls timed, each with its own idempotency key (order i redeems for
//! member i mod M); orders/s, p50, p99; failures counted by gRPC code and `ErrorInfo` reason.
//!
//! Where the time goes, measured around each timed run: the calling process's outbound metrics
//! (`outbound_call_duration_seconds` per callee and method: calls per order, mean, p50 from the
//! histogram buckets), every process's RPC log lines (`rpc finished`, `duration_ms`: what each
//! callee spent serving them, exact p50), each server process's CPU time (`/proc/<pid>/stat`)
//! per order, the database's operations per order (`serverStatus` opcounters, read through
//! SecantusDB's Python and pymongo), what the processes do idle (4 s before the runs, subtracted),
//! and the service-token costs (ES256 signing, cached and fresh, and verification) timed in this
//! process.
//!
//! Checked afterwards, per shape: GetOrder on every order placed answers it with payment CAPTURED
//! and a redemption; GetRedemption on each says POSTED; and over the members, the points that left
//! (available before − available after + points accrued meanwhile, read in the same balance) are
//! exactly orders × cost, with nothing left held. What is still open right after the runs (a
//! capture the saga left to the background round) is checked again every 2 s for up to 60 s and
//! both states are printed; the benchmark fails when it does not tie out by then.

#[path = "harness.rs"]
mod harness;

use harness::{
    ITEM_PRICE_MINOR, Menu, Process, Run, authorized, commerce_binary, connect, connect_many,
    create_menu, drive, free_port, keyed, tail, usd, wait_for,
};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::{Parser, ValueEnum};
use commerce_api::commerce::checkout::v1::cart_service_client::CartServiceClient;
use commerce_api::commerce::checkout::v1::order_service_client::OrderServiceClient;
use commerce_api::commerce::checkout::v1::{
    AddCartLineRequest, CreateCartRequest, GetOrderRequest, LoyaltyRewardSelection, PaymentStatus,
    PlaceOrderRequest, QuoteCartRequest, SetLoyaltyRewardRequest,
};
use commerce_api::commerce::common::v1::Money;
use commerce_api::commerce::loyalty::v1::member_service_client::MemberServiceClient;
use commerce_api::commerce::loyalty::v1::points_service_client::PointsServiceClient;
use commerce_api::commerce::loyalty::v1::program_service_client::ProgramServiceClient;
use commerce_api::commerce::loyalty::v1::reward_service_client::RewardServiceClient;
use commerce_api::commerce::loyalty::v1::{
    AdjustPointsRequest, Balance, CreateRewardRequest, EarningRule, EnrollMemberRequest,
    ExpiryKind, ExpiryPolicy, GetBalanceRequest, GetRedemptionRequest, LoyaltyProgram,
    RedemptionStatus, Reward, UpdateProgramRequest, reward,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Request, Status};

/// The tenant of the token, hence of everything created.
const TENANT: &str = "bench";
/// Concurrency of the preparation and verification phases.
const PREP_CONCURRENCY: usize = 32;
/// The concurrencies measured.
const CONCURRENCIES: [usize; 2] = [1, 32];
/// Orders placed (at 8 concurrent) before the measured runs.
const WARM_UP_ORDERS: usize = 32;
/// What the reward takes off, USD minor units.
const REWARD_OFF_MINOR: i64 = 100;
/// How long the verification waits for what the background rounds finish (captures left due).
const SETTLE_WITHIN: Duration = Duration::from_secs(60);
/// The payment token the PSP simulator authorizes and captures at once.
const PAYMENT_TOKEN: &str = "tok_ok";

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum Shape {
    /// `commerce serve`: loyalty and the PSP simulator in process.
    AllInOne,
    /// `commerce serve --psp-url …`: loyalty in process, the PSP process over gRPC.
    AllInOnePsp,
    /// PSP, loyalty and checkout processes.
    Split,
}

impl Shape {
    fn label(self) -> &'static str {
        match self {
            Shape::AllInOne => "all-in-one",
            Shape::AllInOnePsp => "all-in-one + PSP process",
            Shape::Split => "split",
        }
    }

    /// Its own database on the shared MongoDB-compatible server.
    fn database(self) -> &'static str {
        match self {
            Shape::AllInOne => "bench_all_in_one",
            Shape::AllInOnePsp => "bench_all_in_one_psp",
            Shape::Split => "bench_split",
        }
    }

    /// Its own database number on the shared Redis.
    fn redis_db(self) -> u8 {
        match self {
            Shape::AllInOne => 1,
            Shape::AllInOnePsp => 2,
            Shape::Split => 3,
        }
    }
}

#[derive(Parser)]
#[command(about = "PlaceOrder with a reward: the split topology against the all-in-one")]
struct Cli {
    /// Orders placed per run (at concurrency 1 and at 32), each from its own prepared cart.
    #[arg(long, default_value_t = 200)]
    orders: usize,
    /// Loyalty members the orders redeem for (order i: member i mod M).
    #[arg(long, default_value_t = 32)]
    members: usize,
    /// The reward's cost in points.
    #[arg(long, default_value_t = 10)]
    point_cost: i64,
    /// HTTP/2 connections the concurrent runs share (one at concurrency 1).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// The shapes measured, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_values_t = [Shape::AllInOne, Shape::AllInOnePsp, Shape::Split]
    )]
    shapes: Vec<Shape>,
    /// Pin nothing.
    #[arg(long)]
    no_pin: bool,
    /// `--callee-timeout-ms` for the processes that call others (checkout in the split, the
    /// all-in-one with the PSP process); unset: the binary's default (2000 ms).
    #[arg(long)]
    callee_timeout_ms: Option<u64>,
    /// One SecantusDB for every shape (each in its own database) instead of one started empty
    /// per shape.
    #[arg(long)]
    shared_database: bool,
    /// The CPU of every server process; default: the first this process may use.
    #[arg(long)]
    server_cpu: Option<usize>,
    /// The CPU of the load generator; default: the second this process may use.
    #[arg(long)]
    client_cpu: Option<usize>,
    /// The `commerce` binary; default: the one next to this binary (target/release/commerce).
    #[arg(long)]
    commerce: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    ensure!(
        cli.orders > 0 && cli.members > 0 && cli.point_cost > 0,
        "--orders, --members and --point-cost must be positive"
    );
    // Before the runtime starts its threads, so they inherit the pinning.
    let pinning = pin(&cli)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli, pinning))
}

// ---------------------------------------------------------------------------------------------
// Pinning.

/// Where the servers and the load generator run.
struct Pinning {
    server: Option<usize>,
    /// CPUs this process could use before pinning itself.
    cpus: usize,
    note: String,
}

/// The CPUs this process may run on (`Cpus_allowed_list`).
fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(list) = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
    else {
        return Vec::new();
    };
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|part| !part.is_empty()) {
        match part.split_once('-') {
            Some((from, to)) => {
                if let (Ok(from), Ok(to)) = (from.parse::<usize>(), to.parse::<usize>()) {
                    cpus.extend(from..=to);
                }
            }
            None => cpus.extend(part.parse::<usize>().ok()),
        }
    }
    cpus
}

fn pin(cli: &Cli) -> anyhow::Result<Pinning> {
    let cpus = allowed_cpus();
    let unpinned = |note: String| {
        eprintln!("topology-bench: WARNING {note}");
        Ok(Pinning {
            server: None,
            cpus: cpus.len(),
            note,
        })
    };
    if cli.no_pin {
        return unpinned(format!(
            "not pinned (--no-pin); {} CPU(s) available",
            cpus.len()
        ));
    }
    if cpus.len() < 2 {
        return unpinned(format!(
            "only {} CPU(s) available: servers and load generator share it, not pinned",
            cpus.len()
        ));
    }
    if Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .map_or(true, |status| !status.success())
    {
        return unpinned("taskset not found (util-linux): not pinned".into());
    }
    let server = cli.server_cpu.unwrap_or(cpus[0]);
    let client = cli.client_cpu.unwrap_or(cpus[1]);
    ensure!(
        server != client,
        "--server-cpu and --client-cpu must differ"
    );
    let status = Command::new("taskset")
        .args([
            "-p",
            "-c",
            &client.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .context("taskset -p")?;
    ensure!(status.success(), "pinning the load generator: {status}");
    Ok(Pinning {
        server: Some(server),
        cpus: cpus.len(),
        note: format!(
            "server processes (commerce, PSP, Redis, database) on CPU {server}, load generator on CPU {client} (of {} CPUs: {cpus:?})",
            cpus.len()
        ),
    })
}

/// `program`, under `taskset -c <server CPU>` when pinning, with no `COMMERCE_*` or `MONGODB_URI`
/// from this environment (everything is passed as flags).
fn server_command(pinning: &Pinning, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = match pinning.server {
        Some(cpu) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(cpu.to_string()).arg(program);
            command
        }
        None => Command::new(program),
    };
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text.starts_with("COMMERCE_") || text == "MONGODB_URI" {
            command.env_remove(&name);
        }
    }
    command
}

// ---------------------------------------------------------------------------------------------
// Redis, the database, the keys.

struct Infra {
    work: tempfile::TempDir,
    redis: Process,
    redis_port: u16,
    /// SecantusDB, when started here.
    database: Option<Process>,
    mongodb_uri: String,
    /// `$MONGODB_URI`: not started here.
    external_database: bool,
    /// One SecantusDB for every shape, not a fresh one each.
    shared_database: bool,
    secantusd: PathBuf,
    database_note: String,
    /// A Python with pymongo (SecantusDB's), to read the database's operation counters.
    db_python: Option<PathBuf>,
    keys: PathBuf,
    commerce: PathBuf,
}

impl Infra {
    /// Before a shape: a SecantusDB started empty (or the one already running, when shared or
    /// external).
    async fn database_for_shape(&mut self, pinning: &Pinning, shape: Shape) -> anyhow::Result<()> {
        if self.external_database || (self.shared_database && self.database.is_some()) {
            return Ok(());
        }
        drop(self.database.take());
        let port = free_port()?;
        let tmp = self.work.path().join(format!("db-{}", shape.database()));
        std::fs::create_dir_all(&tmp)?;
        let mut process = Process::spawn(
            server_command(pinning, &self.secantusd)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--storage-path", ":memory:", "--log-level", "WARNING"])
                .env("TMPDIR", &tmp)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(tmp.join("stderr.log"))?),
            "SecantusDB",
        )?;
        wait_for(
            SocketAddr::from(([127, 0, 0, 1], port)),
            &mut process,
            "SecantusDB",
        )
        .await?;
        self.database = Some(process);
        self.mongodb_uri = format!("mongodb://127.0.0.1:{port}/?directConnection=true");
        Ok(())
    }

    fn redis_url(&self, shape: Shape) -> String {
        format!("redis://127.0.0.1:{}/{}", self.redis_port, shape.redis_db())
    }

    fn jwks(&self) -> PathBuf {
        self.keys.join("jwks.json")
    }

    fn checkout_key(&self) -> PathBuf {
        self.keys.join("checkout.pem")
    }
}

async fn start_infra(
    pinning: &Pinning,
    commerce: PathBuf,
    shared_database: bool,
) -> anyhow::Result<Infra> {
    let work = tempfile::tempdir()?;
    let redis_port = free_port()?;
    let mut redis = Process::spawn(
        server_command(pinning, "redis-server")
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(work.path())
            .stdout(std::fs::File::create(work.path().join("redis.log"))?)
            .stderr(Stdio::null()),
        "redis-server (is it on PATH? apt-get install redis-server)",
    )?;
    wait_for(
        SocketAddr::from(([127, 0, 0, 1], redis_port)),
        &mut redis,
        "redis-server",
    )
    .await?;

    let external = std::env::var("MONGODB_URI")
        .ok()
        .filter(|uri| !uri.is_empty());
    let secantusd = std::env::var_os("SECANTUSD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".venv/bin/secantusd-py"));
    ensure!(
        external.is_some() || secantusd.exists(),
        "{} missing: run bench/topology.sh (it installs SecantusDB into .venv from requirements-test.txt), set SECANTUSD, or set MONGODB_URI",
        secantusd.display()
    );
    let database_note = match &external {
        Some(_) => "the MongoDB at $MONGODB_URI, shared by every shape (not started here: not pinned, its CPU not measured)".to_owned(),
        None if shared_database => format!(
            "SecantusDB ({}; in memory, single-node replica set), one server for every shape (--shared-database)",
            secantusd.display()
        ),
        None => format!(
            "SecantusDB ({}; in memory, single-node replica set), started empty for each shape with the same flags: it slows down as it holds more data, so a shared server would favour the shape measured first",
            secantusd.display()
        ),
    };

    let keys = work.path().join("keys");
    std::fs::create_dir_all(&keys)?;
    let generated = Command::new(&commerce)
        .args(["keys", "generate", "--service", "checkout", "--out"])
        .arg(&keys)
        .output()
        .context("commerce keys generate")?;
    ensure!(
        generated.status.success(),
        "commerce keys generate: {}",
        String::from_utf8_lossy(&generated.stderr)
    );
    // SecantusDB's virtualenv has pymongo; with $MONGODB_URI, the repository's .venv if any.
    let db_python = [
        std::env::var_os("SECANTUSD")
            .map(PathBuf::from)
            .and_then(|program| program.parent().map(|dir| dir.join("python3"))),
        Some(PathBuf::from(".venv/bin/python3")),
    ]
    .into_iter()
    .flatten()
    .find(|python| python.exists());
    Ok(Infra {
        work,
        redis,
        redis_port,
        database: None,
        mongodb_uri: external.clone().unwrap_or_default(),
        external_database: external.is_some(),
        shared_database,
        secantusd,
        database_note,
        db_python,
        keys,
        commerce,
    })
}

// ---------------------------------------------------------------------------------------------
// The processes of a shape.

/// One server process of a shape.
struct Node {
    name: &'static str,
    process: Process,
    api: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
}

/// A shape's processes: which one serves checkout and which loyalty (the same in the
/// all-in-one).
struct Deployment {
    shape: Shape,
    nodes: Vec<Node>,
    checkout: usize,
    loyalty: usize,
}

impl Deployment {
    fn checkout(&self) -> &Node {
        &self.nodes[self.checkout]
    }

    fn loyalty(&self) -> &Node {
        &self.nodes[self.loyalty]
    }
}

async fn start_node(
    infra: &Infra,
    pinning: &Pinning,
    shape: Shape,
    name: &'static str,
    args: Vec<OsString>,
) -> anyhow::Result<Node> {
    let api = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let dir = infra
        .work
        .path()
        .join(format!("{}-{name}", shape.database()));
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("stderr.log");
    let mut process = Process::spawn(
        server_command(pinning, &infra.commerce)
            .args(&args)
            .args(["--listen", &api.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?),
        name,
    )?;
    if let Err(error) = wait_for(api, &mut process, name).await {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        bail!("{error}; its log:\n{}", tail(&text, 20));
    }
    Ok(Node {
        name,
        process,
        api,
        admin,
        log,
    })
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// The flags every `commerce serve` of every shape gets.
fn serve_args(infra: &Infra, shape: Shape) -> Vec<OsString> {
    let mut args = os(&[
        "serve",
        "--rate-limit-per-second",
        "1000000",
        "--rate-limit-burst",
        "1000000",
        "--shutdown-grace-seconds",
        "1",
        "--shutdown-delay-seconds",
        "0",
        "--redis-url",
        &infra.redis_url(shape),
        "--mongodb-uri",
        &infra.mongodb_uri,
        "--mongodb-database",
        shape.database(),
    ]);
    args.push("--jwks-file".into());
    args.push(infra.jwks().into());
    args
}

fn psp_args(infra: &Infra, shape: Shape) -> Vec<OsString> {
    let mut args = os(&[
        "psp",
        "serve",
        "--shutdown-grace-seconds",
        "1",
        "--mongodb-uri",
        &infra.mongodb_uri,
        "--mongodb-database",
        shape.database(),
    ]);
    args.push("--jwks-file".into());
    args.push(infra.jwks().into());
    args
}

/// Calls out as checkout: its key, its name (and the callee timeout, when given).
fn caller_args(infra: &Infra, callee_timeout_ms: Option<u64>) -> Vec<OsString> {
    let mut args = os(&["--service-key-file"]);
    args.push(infra.checkout_key().into());
    args.extend(os(&["--service-name", "checkout"]));
    if let Some(ms) = callee_timeout_ms {
        args.extend(os(&["--callee-timeout-ms", &ms.to_string()]));
    }
    args
}

async fn deploy(
    infra: &Infra,
    pinning: &Pinning,
    shape: Shape,
    callee_timeout_ms: Option<u64>,
) -> anyhow::Result<Deployment> {
    let url = |node: &Node| format!("http://{}", node.api);
    match shape {
        Shape::AllInOne => {
            let commerce =
                start_node(infra, pinning, shape, "commerce", serve_args(infra, shape)).await?;
            Ok(Deployment {
                shape,
                nodes: vec![commerce],
                checkout: 0,
                loyalty: 0,
            })
        }
        Shape::AllInOnePsp => {
            let psp = start_node(infra, pinning, shape, "psp", psp_args(infra, shape)).await?;
            let mut args = serve_args(infra, shape);
            args.extend(os(&["--psp-url", &url(&psp)]));
            args.extend(caller_args(infra, callee_timeout_ms));
            let commerce = start_node(infra, pinning, shape, "commerce", args).await?;
            Ok(Deployment {
                shape,
                nodes: vec![psp, commerce],
                checkout: 1,
                loyalty: 1,
            })
        }
        Shape::Split => {
            let psp = start_node(infra, pinning, shape, "psp", psp_args(infra, shape)).await?;
            let mut args = serve_args(infra, shape);
            args.extend(os(&["--services", "loyalty"]));
            let loyalty = start_node(infra, pinning, shape, "loyalty", args).await?;
            let mut args = serve_args(infra, shape);
            args.extend(os(&[
                "--services",
                "checkout",
                "--loyalty-url",
                &url(&loyalty),
                "--psp-url",
                &url(&psp),
            ]));
            args.extend(caller_args(infra, callee_timeout_ms));
            let checkout = start_node(infra, pinning, shape, "checkout", args).await?;
            Ok(Deployment {
                shape,
                nodes: vec![psp, loyalty, checkout],
                checkout: 2,
                loyalty: 1,
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The benchmark.

async fn run(cli: Cli, pinning: Pinning) -> anyhow::Result<()> {
    let commerce = commerce_binary(cli.commerce.clone(), "bench/topology.sh")?;
    let mut infra = start_infra(&pinning, commerce, cli.shared_database).await?;
    let token = Command::new(&infra.commerce)
        .args(["token", "--tenant", TENANT, "--ttl-minutes", "240"])
        .env_remove("COMMERCE_JWT_HS256_SECRET")
        .output()
        .context("commerce token")?;
    ensure!(token.status.success(), "commerce token: {}", token.status);
    let bearer: MetadataValue<Ascii> =
        format!("Bearer {}", String::from_utf8(token.stdout)?.trim()).parse()?;

    let mut results = Vec::new();
    for &shape in &cli.shapes {
        eprintln!("topology-bench: {} …", shape.label());
        infra.database_for_shape(&pinning, shape).await?;
        let deployment = deploy(&infra, &pinning, shape, cli.callee_timeout_ms).await?;
        let result = measure_shape(&cli, &infra, &deployment, &bearer).await;
        let complaints = complaints(&deployment);
        match result {
            Ok(mut result) => {
                result.complaints = complaints;
                results.push(result);
            }
            Err(error) => {
                for node in &deployment.nodes {
                    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                    eprintln!(
                        "topology-bench: {} failed; {}'s log:\n{}",
                        shape.label(),
                        node.name,
                        tail(&log, 8)
                    );
                }
                return Err(error);
            }
        }
        drop(deployment);
    }
    let tokens = token_costs(&infra)?;
    report(&cli, &pinning, &infra, &results, &tokens);
    drop(infra);
    let failed: Vec<&str> = results
        .iter()
        .filter(|result| !result.tied_out)
        .map(|result| result.shape.label())
        .collect();
    ensure!(
        failed.is_empty(),
        "orders or points do not tie out in: {} (see \"checked\" above)",
        failed.join(", ")
    );
    Ok(())
}

/// A shape's WARN/ERROR log lines (count, first few).
fn complaints(deployment: &Deployment) -> Vec<String> {
    let mut lines = Vec::new();
    for node in &deployment.nodes {
        let log = std::fs::read_to_string(&node.log).unwrap_or_default();
        for line in log.lines().filter(|line| {
            line.contains("\"level\":\"WARN\"") || line.contains("\"level\":\"ERROR\"")
        }) {
            lines.push(format!("{}: {line}", node.name));
        }
    }
    lines
}

/// What every order is made of.
struct Shop {
    location_id: String,
    item_id: String,
    reward_id: String,
    /// (member id, customer id).
    members: Vec<(String, String)>,
}

/// A PlaceOrder request ready to send, and the quote's total.
struct Prepared {
    request: PlaceOrderRequest,
    total: i64,
}

/// What a successful PlaceOrder answered.
struct Placed {
    order_id: String,
    captured: bool,
    redemption_id: String,
}

/// One timed run and what was read around it.
struct Measured {
    concurrency: usize,
    run: Run<Placed>,
    preparation: Duration,
    total: i64,
    breakdown: Breakdown,
}

struct ShapeResult {
    shape: Shape,
    idle: Idle,
    runs: Vec<Measured>,
    warm_up: Run<Placed>,
    check: String,
    /// Every order captured with its redemption posted, and the points tie out.
    tied_out: bool,
    complaints: Vec<String>,
}

async fn measure_shape(
    cli: &Cli,
    infra: &Infra,
    deployment: &Deployment,
    bearer: &MetadataValue<Ascii>,
) -> anyhow::Result<ShapeResult> {
    let checkout_addr = deployment.checkout().api;
    let loyalty_channel = connect(deployment.loyalty().api).await?;
    let prep_channels = connect_many(checkout_addr, cli.connections).await?;
    let total_orders = WARM_UP_ORDERS + CONCURRENCIES.len() * cli.orders;
    let per_member = total_orders.div_ceil(cli.members) as i64 + 1;
    let shop = open_shop(
        &prep_channels[0],
        &loyalty_channel,
        bearer,
        cli,
        per_member * cli.point_cost,
    )
    .await?;
    let before = balances(&loyalty_channel, bearer, &shop).await?;

    let warm_carts = prepare_carts(&prep_channels, bearer, &shop, "warm", WARM_UP_ORDERS).await?;
    let warm_up = place_orders(&prep_channels, bearer, "warm", warm_carts, 8).await?;
    let mut placed: Vec<(String, String)> = warm_up
        .ok
        .iter()
        .map(|p| (p.order_id.clone(), p.redemption_id.clone()))
        .collect();

    // Idle: what the processes do with no calls (measured after the warm-up has settled).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_start = snapshot(infra, deployment).await?;
    let idle_started = Instant::now();
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle_end = snapshot(infra, deployment).await?;
    let idle = Idle {
        seconds: idle_started.elapsed().as_secs_f64(),
        cpu: cpu_minus(&idle_end, &idle_start),
        db_ops: ops_minus(idle_end.db_ops, idle_start.db_ops),
    };

    let mut runs = Vec::new();
    for concurrency in CONCURRENCIES {
        let name = format!("c{concurrency}");
        let prepared_started = Instant::now();
        let carts = prepare_carts(&prep_channels, bearer, &shop, &name, cli.orders).await?;
        let preparation = prepared_started.elapsed();
        let total = carts.first().map_or(0, |cart| cart.total);
        let channels = connect_many(checkout_addr, cli.connections.min(concurrency)).await?;
        let start = snapshot(infra, deployment).await?;
        let run = place_orders(&channels, bearer, &name, carts, concurrency).await?;
        let end = snapshot(infra, deployment).await?;
        let breakdown = breakdown(deployment, &start, &end, run.calls)?;
        placed.extend(
            run.ok
                .iter()
                .map(|p| (p.order_id.clone(), p.redemption_id.clone())),
        );
        runs.push(Measured {
            concurrency,
            run,
            preparation,
            total,
            breakdown,
        });
    }

    // --- Verification, outside the timing -----------------------------------------------------
    // At once; if something is still open (a capture the saga left to the background round, a
    // hold not yet posted), again every 2 s for up to SETTLE_WITHIN, saying how long it took.
    let checked = Instant::now();
    let mut first = None;
    let (check, tied_out) = loop {
        let (found, captured, posted) =
            check_orders(&prep_channels, &loyalty_channel, bearer, &placed).await?;
        let after = balances(&loyalty_channel, bearer, &shop).await?;
        let spent: i64 = before
            .iter()
            .zip(&after)
            .map(|(before, after)| {
                before.available_points - after.available_points + after.lifetime_points
                    - before.lifetime_points
            })
            .sum();
        let held: i64 = after.iter().map(|balance| balance.held_points).sum();
        let accrued: i64 = before
            .iter()
            .zip(&after)
            .map(|(before, after)| after.lifetime_points - before.lifetime_points)
            .sum();
        let expected = placed.len();
        let check = format!(
            "{expected} orders placed ({} warm-up): GetOrder found {found}, {captured} with payment CAPTURED; GetRedemption: {posted} POSTED; members' points spent {spent} = {expected} × {} (accrued meanwhile {accrued}), held {held}",
            warm_up.ok.len(),
            cli.point_cost,
        );
        let tied_out = found == expected
            && captured == expected
            && posted == expected
            && spent == expected as i64 * cli.point_cost
            && held == 0;
        if tied_out || checked.elapsed() >= SETTLE_WITHIN {
            break match first {
                None => (check, tied_out),
                Some(first) => (
                    format!(
                        "right after the runs: {first}; {} s later: {check}",
                        checked.elapsed().as_secs()
                    ),
                    tied_out,
                ),
            };
        }
        first.get_or_insert(check);
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    Ok(ShapeResult {
        shape: deployment.shape,
        idle,
        runs,
        warm_up,
        check,
        tied_out,
        complaints: Vec::new(),
    })
}

/// The location, the item, the program, the reward and the members with `points` each.
async fn open_shop(
    checkout: &Channel,
    loyalty: &Channel,
    bearer: &MetadataValue<Ascii>,
    cli: &Cli,
    points: i64,
) -> anyhow::Result<Shop> {
    ensure!(
        points <= 1_000_000_000,
        "each member needs {points} points, more than one adjustment may give (10^9): use more --members or fewer --orders"
    );
    let Menu {
        location_id,
        item_id,
    } = create_menu(checkout.clone(), bearer)
        .await
        .context("the location and menu item")?;

    ProgramServiceClient::new(loyalty.clone())
        .update_program(keyed(
            UpdateProgramRequest {
                program: Some(LoyaltyProgram {
                    earning: Some(EarningRule {
                        points: 1,
                        per_spend: usd(100),
                    }),
                    pending_days: 0,
                    expiry: Some(ExpiryPolicy {
                        kind: ExpiryKind::Never as i32,
                        days: 0,
                        notice_days: 0,
                    }),
                    redemption_hold_hours: 24,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: ["earning", "pending_days", "expiry", "redemption_hold_hours"]
                        .map(String::from)
                        .to_vec(),
                }),
                expected_version: 0,
            },
            bearer,
            "bench-program",
        ))
        .await
        .context("UpdateProgram")?;
    let reward_id = RewardServiceClient::new(loyalty.clone())
        .create_reward(keyed(
            CreateRewardRequest {
                reward: Some(Reward {
                    display_name: "USD 1 off".into(),
                    point_cost: cli.point_cost,
                    benefit: Some(reward::Benefit::AmountOff(Money {
                        currency_code: "USD".into(),
                        amount_minor: REWARD_OFF_MINOR,
                    })),
                    active: true,
                    ..Default::default()
                }),
            },
            bearer,
            "bench-reward",
        ))
        .await
        .context("CreateReward")?
        .into_inner()
        .reward
        .context("CreateReward returned no reward")?
        .reward_id;

    let mut enrolment = MemberServiceClient::new(loyalty.clone());
    let mut adjust = PointsServiceClient::new(loyalty.clone());
    let mut members = Vec::with_capacity(cli.members);
    for index in 0..cli.members {
        let customer_id = format!("bench-customer-{index}");
        let member_id = enrolment
            .enroll_member(keyed(
                EnrollMemberRequest {
                    customer_id: customer_id.clone(),
                    registered: true,
                    ..Default::default()
                },
                bearer,
                &format!("bench-member-{index}"),
            ))
            .await
            .context("EnrollMember")?
            .into_inner()
            .member
            .context("EnrollMember returned no member")?
            .member_id;
        adjust
            .adjust_points(keyed(
                AdjustPointsRequest {
                    member_id: member_id.clone(),
                    points,
                    reason: "benchmark balance".into(),
                },
                bearer,
                &format!("bench-points-{index}"),
            ))
            .await
            .context("AdjustPoints")?;
        members.push((member_id, customer_id));
    }
    Ok(Shop {
        location_id,
        item_id,
        reward_id,
        members,
    })
}

async fn balances(
    loyalty: &Channel,
    bearer: &MetadataValue<Ascii>,
    shop: &Shop,
) -> anyhow::Result<Vec<Balance>> {
    let mut client = MemberServiceClient::new(loyalty.clone());
    let mut balances = Vec::with_capacity(shop.members.len());
    for (member_id, _) in &shop.members {
        balances.push(
            client
                .get_balance(authorized(
                    GetBalanceRequest {
                        member_id: member_id.clone(),
                    },
                    bearer,
                ))
                .await
                .context("GetBalance")?
                .into_inner()
                .balance
                .context("GetBalance returned no balance")?,
        );
    }
    Ok(balances)
}

/// Prepares `count` carts for run `run` at [`PREP_CONCURRENCY`]: CreateCart (cart i for member
/// i mod M's customer), AddCartLine (one item), SetLoyaltyReward (the member, the reward),
/// QuoteCart (which must show the reward). Fails on any error: preparation is not measured.
async fn prepare_carts(
    channels: &[Channel],
    bearer: &MetadataValue<Ascii>,
    shop: &Shop,
    run: &str,
    count: usize,
) -> anyhow::Result<Vec<Prepared>> {
    let next = Arc::new(AtomicUsize::new(0));
    let members = Arc::new(shop.members.clone());
    let mut callers = Vec::with_capacity(PREP_CONCURRENCY);
    for caller in 0..PREP_CONCURRENCY {
        let mut carts = CartServiceClient::new(channels[caller % channels.len()].clone());
        let (next, bearer, run, members) = (
            next.clone(),
            bearer.clone(),
            run.to_owned(),
            members.clone(),
        );
        let (location_id, item_id, reward_id) = (
            shop.location_id.clone(),
            shop.item_id.clone(),
            shop.reward_id.clone(),
        );
        callers.push(tokio::spawn(async move {
            let mut prepared = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    return Ok::<_, anyhow::Error>(prepared);
                }
                let (member_id, customer_id) = &members[index % members.len()];
                let cart_id = carts
                    .create_cart(keyed(
                        CreateCartRequest {
                            location_id: location_id.clone(),
                            customer_id: customer_id.clone(),
                            fulfillment: None,
                        },
                        &bearer,
                        &format!("bench-cart-{run}-{index}"),
                    ))
                    .await
                    .with_context(|| format!("CreateCart {run}/{index}"))?
                    .into_inner()
                    .cart
                    .context("CreateCart returned no cart")?
                    .cart_id;
                carts
                    .add_cart_line(keyed(
                        AddCartLineRequest {
                            cart_id: cart_id.clone(),
                            item_id: item_id.clone(),
                            quantity: 1,
                            ..Default::default()
                        },
                        &bearer,
                        &format!("bench-line-{run}-{index}"),
                    ))
                    .await
                    .with_context(|| format!("AddCartLine {run}/{index}"))?;
                carts
                    .set_loyalty_reward(keyed(
                        SetLoyaltyRewardRequest {
                            cart_id: cart_id.clone(),
                            member_id: member_id.clone(),
                            reward: Some(LoyaltyRewardSelection {
                                reward_id: reward_id.clone(),
                            }),
                        },
                        &bearer,
                        &format!("bench-reward-{run}-{index}"),
                    ))
                    .await
                    .with_context(|| format!("SetLoyaltyReward {run}/{index}"))?;
                let quote = carts
                    .quote_cart(authorized(
                        QuoteCartRequest {
                            cart_id: cart_id.clone(),
                        },
                        &bearer,
                    ))
                    .await
                    .with_context(|| format!("QuoteCart {run}/{index}"))?
                    .into_inner()
                    .quote
                    .context("QuoteCart returned no quote")?;
                ensure!(
                    minor(&quote.reward_discount) == REWARD_OFF_MINOR,
                    "the quote of cart {run}/{index} does not apply the reward: {quote:?}"
                );
                let total = minor(&quote.total);
                prepared.push((
                    index,
                    Prepared {
                        request: PlaceOrderRequest {
                            cart_id,
                            quote_id: quote.quote_id,
                            expected_total: quote.total,
                            payment_token: PAYMENT_TOKEN.into(),
                            ..Default::default()
                        },
                        total,
                    },
                ));
            }
        }));
    }
    let mut carts: Vec<Option<Prepared>> = (0..count).map(|_| None).collect();
    for caller in callers {
        for (index, cart) in caller.await?? {
            carts[index] = Some(cart);
        }
    }
    carts
        .into_iter()
        .map(|cart| cart.context("a cart was not prepared"))
        .collect()
}

fn minor(money: &Option<Money>) -> i64 {
    money.as_ref().map_or(0, |money| money.amount_minor)
}

/// PlaceOrder once per prepared cart from `concurrency` callers, with key
/// `bench-order-{run}-{index}`.
async fn place_orders(
    channels: &[Channel],
    bearer: &MetadataValue<Ascii>,
    run: &str,
    carts: Vec<Prepared>,
    concurrency: usize,
) -> anyhow::Result<Run<Placed>> {
    let clients: Arc<Vec<OrderServiceClient<Channel>>> = Arc::new(
        (0..concurrency)
            .map(|caller| OrderServiceClient::new(channels[caller % channels.len()].clone()))
            .collect(),
    );
    let calls = carts.len();
    // Requests built before the clock starts; each is taken once.
    let requests: Arc<Vec<std::sync::Mutex<Option<Request<PlaceOrderRequest>>>>> = Arc::new(
        carts
            .into_iter()
            .enumerate()
            .map(|(index, cart)| {
                std::sync::Mutex::new(Some(keyed(
                    cart.request,
                    bearer,
                    &format!("bench-order-{run}-{index}"),
                )))
            })
            .collect(),
    );
    drive(concurrency, calls, move |caller, index| {
        let mut client = clients[caller].clone();
        let request = requests[index].lock().expect("lock").take();
        async move {
            let request = request.ok_or_else(|| Status::internal("request taken twice"))?;
            let order = client
                .place_order(request)
                .await?
                .into_inner()
                .order
                .ok_or_else(|| Status::internal("PlaceOrder answered without an order"))?;
            let captured = order
                .payment
                .as_ref()
                .is_some_and(|payment| payment.status == PaymentStatus::Captured as i32);
            Ok(Placed {
                order_id: order.order_id,
                captured,
                redemption_id: order.redemption_id,
            })
        }
    })
    .await
}

/// GetOrder on every order and GetRedemption on its redemption, at [`PREP_CONCURRENCY`]:
/// (orders found, with payment CAPTURED, redemptions POSTED).
async fn check_orders(
    checkout: &[Channel],
    loyalty: &Channel,
    bearer: &MetadataValue<Ascii>,
    placed: &[(String, String)],
) -> anyhow::Result<(usize, usize, usize)> {
    let placed: Arc<Vec<(String, String)>> = Arc::new(placed.to_vec());
    let orders: Arc<Vec<OrderServiceClient<Channel>>> = Arc::new(
        (0..PREP_CONCURRENCY)
            .map(|caller| OrderServiceClient::new(checkout[caller % checkout.len()].clone()))
            .collect(),
    );
    let rewards = RewardServiceClient::new(loyalty.clone());
    let bearer = bearer.clone();
    let run = drive(PREP_CONCURRENCY, placed.len(), move |caller, index| {
        let (mut orders, mut rewards) = (orders[caller].clone(), rewards.clone());
        let (order_id, redemption_id) = placed[index].clone();
        let bearer = bearer.clone();
        async move {
            let order = orders
                .get_order(authorized(GetOrderRequest { order_id }, &bearer))
                .await?
                .into_inner()
                .order
                .ok_or_else(|| Status::internal("GetOrder answered without an order"))?;
            let captured = order
                .payment
                .as_ref()
                .is_some_and(|payment| payment.status == PaymentStatus::Captured as i32);
            let posted = if redemption_id.is_empty() || order.redemption_id != redemption_id {
                false
            } else {
                rewards
                    .get_redemption(authorized(GetRedemptionRequest { redemption_id }, &bearer))
                    .await?
                    .into_inner()
                    .redemption
                    .is_some_and(|r| r.status == RedemptionStatus::Posted as i32)
            };
            Ok((captured, posted))
        }
    })
    .await?;
    ensure!(
        run.errors.is_empty(),
        "GetOrder/GetRedemption failed: {}",
        run.errors_text()
    );
    Ok((
        run.ok.len(),
        run.ok.iter().filter(|(captured, _)| *captured).count(),
        run.ok.iter().filter(|(_, posted)| *posted).count(),
    ))
}

// ---------------------------------------------------------------------------------------------
// Where the time goes: metrics, logs and CPU time read around a run.

/// What is read from every process before and after a run.
struct Snapshot {
    /// Per node: its `/metrics` text.
    metrics: Vec<String>,
    /// Per node: its log's length.
    log_offsets: Vec<u64>,
    /// Per server process (nodes, then Redis and the database): CPU seconds so far.
    cpu: Vec<(String, f64)>,
    /// The database's operation counters (`serverStatus` opcounters), when they can be read.
    db_ops: Option<[f64; 6]>,
}

/// The opcounters, in this order.
const DB_OPS: [&str; 6] = ["insert", "query", "update", "delete", "getmore", "command"];

/// Prints the database's `serverStatus` opcounters (argv[1]: the connection string).
const DB_OPS_PROBE: &str = "import sys, pymongo
c = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=5000)
o = c.admin.command('serverStatus')['opcounters']
print(' '.join(str(o.get(k, 0)) for k in ('insert', 'query', 'update', 'delete', 'getmore', 'command')))
";

/// The database's opcounters (through a Python with pymongo; off the server CPU: this process's
/// children run on the load generator's).
async fn db_ops(infra: &Infra) -> Option<[f64; 6]> {
    let python = infra.db_python.clone()?;
    let uri = infra.mongodb_uri.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(["-c", DB_OPS_PROBE, &uri])
            .stderr(Stdio::null())
            .output()
    })
    .await
    .ok()?
    .ok()?;
    let numbers: Vec<f64> = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter_map(|number| number.parse().ok())
        .collect();
    numbers.try_into().ok()
}

fn ops_minus(after: Option<[f64; 6]>, before: Option<[f64; 6]>) -> Option<[f64; 6]> {
    let (after, before) = (after?, before?);
    Some(std::array::from_fn(|index| after[index] - before[index]))
}

/// CPU seconds per process between two snapshots.
fn cpu_minus(end: &Snapshot, start: &Snapshot) -> Vec<(String, f64)> {
    end.cpu
        .iter()
        .map(|(name, seconds)| {
            let earlier = start
                .cpu
                .iter()
                .find(|(other, _)| other == name)
                .map_or(0.0, |(_, seconds)| *seconds);
            (name.clone(), seconds - earlier)
        })
        .collect()
}

async fn snapshot(infra: &Infra, deployment: &Deployment) -> anyhow::Result<Snapshot> {
    let mut metrics = Vec::new();
    let mut log_offsets = Vec::new();
    let mut cpu = Vec::new();
    for node in &deployment.nodes {
        metrics.push(scrape(node.admin).await?);
        log_offsets.push(std::fs::metadata(&node.log)?.len());
        cpu.push((node.name.to_owned(), cpu_seconds(node.process.child.id())?));
    }
    cpu.push(("redis".into(), cpu_seconds(infra.redis.child.id())?));
    if let Some(database) = &infra.database {
        cpu.push(("database".into(), cpu_seconds(database.child.id())?));
    }
    let db_ops = db_ops(infra).await;
    Ok(Snapshot {
        metrics,
        log_offsets,
        cpu,
        db_ops,
    })
}

/// GET /metrics on an admin port (HTTP/1.0: the body ends with the connection).
async fn scrape(admin: SocketAddr) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(admin).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no HTTP response from the admin port")?;
    ensure!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "GET /metrics: {}",
        head.lines().next().unwrap_or_default()
    );
    Ok(body.to_owned())
}

/// User + system CPU time of a process (all its threads), from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime: fields 14 and 15 of the whole line, 12 and 13 after the name and state.
    let ticks: u64 = fields
        .get(11)
        .and_then(|f| f.parse::<u64>().ok())
        .zip(fields.get(12).and_then(|f| f.parse::<u64>().ok()))
        .map(|(user, system)| user + system)
        .context("malformed /proc/<pid>/stat")?;
    Ok(ticks as f64 / CLOCK_TICKS_PER_SECOND)
}

/// `getconf CLK_TCK` on Linux.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// One Prometheus histogram series: cumulative bucket counts by upper bound, sum, count.
#[derive(Default, Clone)]
struct Histogram {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

impl Histogram {
    fn minus(&self, before: Option<&Histogram>) -> Histogram {
        let Some(before) = before else {
            return self.clone();
        };
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|(le, count)| {
                    let earlier = before
                        .buckets
                        .iter()
                        .find(|(other, _)| other == le)
                        .map_or(0.0, |(_, count)| *count);
                    (*le, count - earlier)
                })
                .collect(),
            sum: self.sum - before.sum,
            count: self.count - before.count,
        }
    }

    fn mean(&self) -> Option<Duration> {
        (self.count > 0.0).then(|| Duration::from_secs_f64(self.sum / self.count))
    }

    /// The median, interpolated linearly inside its bucket (the buckets double from 0.25 ms, so
    /// this is an estimate).
    fn median(&self) -> Option<Duration> {
        if self.count <= 0.0 {
            return None;
        }
        let target = self.count / 2.0;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(le, cumulative) in &self.buckets {
            if cumulative >= target {
                if !le.is_finite() {
                    return Some(Duration::from_secs_f64(lower));
                }
                let inside = cumulative - below;
                let fraction = if inside > 0.0 {
                    (target - below) / inside
                } else {
                    0.0
                };
                return Some(Duration::from_secs_f64(lower + (le - lower) * fraction));
            }
            (lower, below) = (le, cumulative);
        }
        None
    }
}

/// The histograms `name` in a `/metrics` text, by their labels (without `le`).
fn histograms(text: &str, name: &str) -> BTreeMap<String, Histogram> {
    let mut found: BTreeMap<String, Histogram> = BTreeMap::new();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (kind, rest) = match rest.split_once('{') {
            Some((kind, rest)) => (kind, rest),
            None => continue,
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let mut le = None;
        let mut key = Vec::new();
        for pair in labels.split("\",").map(|pair| pair.trim_end_matches('"')) {
            match pair.split_once("=\"") {
                Some(("le", bound)) => le = Some(bound.parse::<f64>().unwrap_or(f64::INFINITY)),
                Some((label, value)) => key.push(format!("{label}={value}")),
                None => {}
            }
        }
        let entry = found.entry(key.join(",")).or_default();
        match (kind, le) {
            ("_bucket", Some(le)) => entry.buckets.push((le, value)),
            ("_sum", _) => entry.sum = value,
            ("_count", _) => entry.count = value,
            _ => {}
        }
    }
    for histogram in found.values_mut() {
        histogram
            .buckets
            .sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    }
    found
}

/// A call some process made to another (its outbound histogram over the run).
struct Hop {
    callee: String,
    method: String,
    calls: f64,
    mean: Option<Duration>,
    median: Option<Duration>,
}

/// The RPCs a process served over the run, from its log lines.
struct Served {
    node: &'static str,
    method: String,
    latencies: Vec<Duration>,
}

impl Served {
    fn percentile(&self, p: f64) -> Option<Duration> {
        let n = self.latencies.len();
        (n > 0).then(|| self.latencies[((n as f64 * p) as usize).min(n - 1)])
    }

    fn mean(&self) -> Option<Duration> {
        let n = self.latencies.len();
        (n > 0).then(|| self.latencies.iter().sum::<Duration>() / n as u32)
    }
}

struct Breakdown {
    orders: usize,
    hops: Vec<Hop>,
    served: Vec<Served>,
    /// CPU seconds per server process over the run.
    cpu: Vec<(String, f64)>,
    /// Database operations over the run.
    db_ops: Option<[f64; 6]>,
}

/// What the shape's processes do with no call coming in (relays polling their outboxes,
/// background rounds), over a few seconds before the timed runs.
struct Idle {
    seconds: f64,
    cpu: Vec<(String, f64)>,
    db_ops: Option<[f64; 6]>,
}

impl Idle {
    /// CPU seconds per second of process `name` while idle.
    fn cpu_rate(&self, name: &str) -> f64 {
        self.cpu
            .iter()
            .find(|(other, _)| other == name)
            .map_or(0.0, |(_, seconds)| seconds / self.seconds)
    }
}

/// How long the idle window lasts.
const IDLE_WINDOW: Duration = Duration::from_secs(4);

fn breakdown(
    deployment: &Deployment,
    start: &Snapshot,
    end: &Snapshot,
    orders: usize,
) -> anyhow::Result<Breakdown> {
    let mut hops = Vec::new();
    let mut served = Vec::new();
    for (index, node) in deployment.nodes.iter().enumerate() {
        let before = histograms(&start.metrics[index], "outbound_call_duration_seconds");
        for (labels, after) in histograms(&end.metrics[index], "outbound_call_duration_seconds") {
            let diff = after.minus(before.get(&labels));
            if diff.count <= 0.0 {
                continue;
            }
            let label = |name: &str| {
                labels
                    .split(',')
                    .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
                    .unwrap_or_default()
                    .to_owned()
            };
            hops.push(Hop {
                callee: format!("{} → {}", node.name, label("callee")),
                method: label("method"),
                calls: diff.count,
                mean: diff.mean(),
                median: diff.median(),
            });
        }
        // The log lines written during the run.
        let log = std::fs::read(&node.log)?;
        let from = (start.log_offsets[index] as usize).min(log.len());
        let to = (end.log_offsets[index] as usize).min(log.len());
        let mut by_method: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
        for line in String::from_utf8_lossy(&log[from..to])
            .lines()
            .filter(|line| line.contains("rpc finished"))
        {
            if let (Some(method), Some(ms)) = (
                json_string(line, "method"),
                json_number(line, "duration_ms"),
            ) {
                by_method
                    .entry(method)
                    .or_default()
                    .push(Duration::from_secs_f64(ms / 1000.0));
            }
        }
        for (method, mut latencies) in by_method {
            latencies.sort();
            served.push(Served {
                node: node.name,
                method,
                latencies,
            });
        }
    }
    Ok(Breakdown {
        orders,
        hops,
        served,
        cpu: cpu_minus(end, start),
        db_ops: ops_minus(end.db_ops, start.db_ops),
    })
}

/// The string value of `"key":"…"` in a JSON log line.
fn json_string(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let end = line[start..].find('"')?;
    Some(line[start..start + end].to_owned())
}

/// The number value of `"key":…` in a JSON log line.
fn json_number(line: &str, key: &str) -> Option<f64> {
    let start = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let end = line[start..]
        .find([',', '}'])
        .map_or(line.len(), |end| start + end);
    line[start..end].trim().parse().ok()
}

/// Service-token costs, timed in this process (on the load generator's CPU).
struct TokenCosts {
    sign_fresh: Duration,
    sign_cached: Duration,
    verify: Duration,
}

fn token_costs(infra: &Infra) -> anyhow::Result<TokenCosts> {
    const ROUNDS: u32 = 2_000;
    let pem = std::fs::read(infra.checkout_key())?;
    let kid = platform::identity::key_id("checkout", &pem)?;
    let identity = platform::identity::ServiceIdentity::from_pem("checkout", &kid, &pem)?;
    let scopes = vec!["loyalty.rewards.redeem".to_owned()];
    // Fresh: a tenant per call, so nothing is cached.
    let started = Instant::now();
    for round in 0..ROUNDS {
        identity.token(&format!("tenant-{round}"), &scopes)?;
    }
    let sign_fresh = started.elapsed() / ROUNDS;
    let token = identity.token(TENANT, &scopes)?;
    let started = Instant::now();
    for _ in 0..ROUNDS {
        identity.token(TENANT, &scopes)?;
    }
    let sign_cached = started.elapsed() / ROUNDS;
    let verifier =
        platform::interceptors::Authenticate::new(&platform::interceptors::AuthConfig {
            hs256_secret: None,
            jwks_json: Some(std::fs::read_to_string(infra.jwks())?),
            issuer: None,
            audience: None,
        })?;
    let started = Instant::now();
    for _ in 0..ROUNDS {
        verifier
            .verify(&token)
            .map_err(|status| anyhow::anyhow!("verifying a service token: {status:?}"))?;
    }
    let verify = started.elapsed() / ROUNDS;
    Ok(TokenCosts {
        sign_fresh,
        sign_cached,
        verify,
    })
}

// ---------------------------------------------------------------------------------------------
// The report.

fn ms(duration: Option<Duration>) -> String {
    duration.map_or_else(
        || "–".into(),
        |duration| format!("{:.2} ms", duration.as_secs_f64() * 1e3),
    )
}

fn us(duration: Duration) -> String {
    format!("{:.0} µs", duration.as_secs_f64() * 1e6)
}

fn find(results: &[ShapeResult], shape: Shape, concurrency: usize) -> Option<&Measured> {
    results
        .iter()
        .find(|result| result.shape == shape)?
        .runs
        .iter()
        .find(|run| run.concurrency == concurrency)
}

/// `a / b` as a ratio, or a dash.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    }
}

/// CPU seconds per process over a run, less what the process burns idle in as long.
fn net_cpu(idle: &Idle, measured: &Measured) -> Vec<(String, f64)> {
    let seconds = measured.run.elapsed.as_secs_f64();
    measured
        .breakdown
        .cpu
        .iter()
        .map(|(name, cpu)| (name.clone(), cpu - idle.cpu_rate(name) * seconds))
        .collect()
}

fn report(
    cli: &Cli,
    pinning: &Pinning,
    infra: &Infra,
    results: &[ShapeResult],
    tokens: &TokenCosts,
) {
    println!(
        "topology-bench: PlaceOrder redeeming a reward (USD {:.2} off for {} points), {} orders per run from prepared carts (1 item USD {:.2}, quoted), {} members, tenant {TENANT}, PSP simulator `{PAYMENT_TOKEN}` (no latency), no retries",
        REWARD_OFF_MINOR as f64 / 100.0,
        cli.point_cost,
        cli.orders,
        ITEM_PRICE_MINOR as f64 / 100.0,
        cli.members
    );
    println!(
        "  machine: {} CPU(s) available (before pinning); pinning: {}",
        pinning.cpus, pinning.note
    );
    println!(
        "  callee timeout of the calling process: {}\n  shared by every shape: redis-server (--save \"\" --appendonly no; database 1, 2, 3 per shape), {} (a database per shape); tonic clients over {} HTTP/2 connection(s) when concurrent, 1 at concurrency 1",
        cli.callee_timeout_ms
            .map_or("the default (2000 ms per attempt)".into(), |ms| format!(
                "{ms} ms per attempt (--callee-timeout-ms)"
            )),
        infra.database_note,
        cli.connections
    );
    println!();
    println!(
        "| shape | clients | orders | ok | errors | captured in reply | orders/s | p50 | p99 | seconds | cart preparation (not timed) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for concurrency in CONCURRENCIES {
        for result in results {
            if let Some(measured) = find(results, result.shape, concurrency) {
                let run = &measured.run;
                println!(
                    "| {} | {concurrency} | {} | {} | {} | {} | {:.0} | {} | {} | {:.2} | {:.1} s, total {} each |",
                    result.shape.label(),
                    run.calls,
                    run.ok.len(),
                    run.errors_text(),
                    run.ok.iter().filter(|placed| placed.captured).count(),
                    run.per_second(),
                    ms(run.percentile(0.50)),
                    ms(run.percentile(0.99)),
                    run.elapsed.as_secs_f64(),
                    measured.preparation.as_secs_f64(),
                    measured.total,
                );
            }
        }
    }
    println!();
    println!("Ratios to the all-in-one (same run):");
    println!("| shape | clients | orders/s | p50 | p99 |");
    println!("| --- | --- | --- | --- | --- |");
    for concurrency in CONCURRENCIES {
        let Some(base) = find(results, Shape::AllInOne, concurrency) else {
            continue;
        };
        for shape in [Shape::AllInOnePsp, Shape::Split] {
            let Some(other) = find(results, shape, concurrency) else {
                continue;
            };
            let secs = |run: &Run<Placed>, p| run.percentile(p).map(|d| d.as_secs_f64());
            println!(
                "| {} / all-in-one | {concurrency} | {} | {} | {} |",
                shape.label(),
                ratio(Some(other.run.per_second()), Some(base.run.per_second())),
                ratio(secs(&other.run, 0.50), secs(&base.run, 0.50)),
                ratio(secs(&other.run, 0.99), secs(&base.run, 0.99)),
            );
        }
    }

    println!();
    println!("Where the time goes");
    println!();
    println!(
        "Calls between processes per order (per PlaceOrder call of the run; the caller's outbound_call_duration_seconds: mean, and p50 ≈ from its doubling buckets) and what the callee spent serving them (its `rpc finished` log lines, exact):"
    );
    println!(
        "| shape | clients | caller → callee | method | calls/order | caller mean | caller p50 ≈ | callee p50 | callee mean | caller − callee (mean) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for result in results {
        for measured in &result.runs {
            let breakdown = &measured.breakdown;
            for hop in &breakdown.hops {
                let method = hop.method.trim_start_matches('/');
                let served = breakdown
                    .served
                    .iter()
                    .find(|served| served.node != "checkout" && served.method == method)
                    .filter(|served| served.node != "commerce" || result.shape == Shape::AllInOne);
                let gap = match (hop.mean, served.and_then(Served::mean)) {
                    (Some(caller), Some(callee)) => {
                        format!(
                            "{:.2} ms",
                            (caller.as_secs_f64() - callee.as_secs_f64()) * 1e3
                        )
                    }
                    _ => "–".into(),
                };
                println!(
                    "| {} | {} | {} | {} | {:.2} | {} | {} | {} | {} | {gap} |",
                    result.shape.label(),
                    measured.concurrency,
                    hop.callee,
                    method,
                    hop.calls / breakdown.orders.max(1) as f64,
                    ms(hop.mean),
                    ms(hop.median),
                    ms(served.and_then(|s| s.percentile(0.50))),
                    ms(served.and_then(Served::mean)),
                );
            }
        }
    }
    println!();
    println!("RPCs each process served during the timed runs (its log lines):");
    println!("| shape | clients | process | method | calls/order | p50 | p99 | mean |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for result in results {
        for measured in &result.runs {
            let breakdown = &measured.breakdown;
            for served in &breakdown.served {
                println!(
                    "| {} | {} | {} | {} | {:.2} | {} | {} | {} |",
                    result.shape.label(),
                    measured.concurrency,
                    served.node,
                    served.method,
                    served.latencies.len() as f64 / breakdown.orders.max(1) as f64,
                    ms(served.percentile(0.50)),
                    ms(served.percentile(0.99)),
                    ms(served.mean()),
                );
            }
        }
    }
    println!();
    let mut names: Vec<String> = Vec::new();
    for result in results {
        for (name, _) in &result.idle.cpu {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
    println!(
        "Idle ({:.0} s with no calls, after the warm-up): CPU ms per second of each server process, database operations per second:",
        IDLE_WINDOW.as_secs_f64()
    );
    println!("| shape | {} | database ops/s |", names.join(" | "));
    println!("| --- |{} --- |", " --- |".repeat(names.len()));
    for result in results {
        let cells: Vec<String> = names
            .iter()
            .map(
                |name| match result.idle.cpu.iter().any(|(other, _)| other == name) {
                    true => format!("{:.1}", result.idle.cpu_rate(name) * 1e3),
                    false => "–".into(),
                },
            )
            .collect();
        println!(
            "| {} | {} | {} |",
            result.shape.label(),
            cells.join(" | "),
            result.idle.db_ops.map_or("–".into(), |ops| format!(
                "{:.0}",
                ops.iter().sum::<f64>() / result.idle.seconds
            )),
        );
    }
    println!();
    println!(
        "CPU time per order of each server process over the timed run (/proc/<pid>/stat, 10 ms ticks), less its idle rate × the run's duration; then the gross total:"
    );
    println!(
        "| shape | clients | {} | total | gross total |",
        names.join(" | ")
    );
    println!("| --- | --- |{} --- | --- |", " --- |".repeat(names.len()));
    for result in results {
        for measured in &result.runs {
            let net = net_cpu(&result.idle, measured);
            let orders = measured.breakdown.orders.max(1) as f64;
            let cells: Vec<String> = names
                .iter()
                .map(|name| {
                    net.iter()
                        .find(|(other, _)| other == name)
                        .map_or("–".into(), |(_, seconds)| {
                            us(Duration::from_secs_f64(seconds.max(0.0) / orders))
                        })
                })
                .collect();
            let total: f64 = net.iter().map(|(_, s)| s).sum();
            let gross: f64 = measured.breakdown.cpu.iter().map(|(_, s)| s).sum();
            println!(
                "| {} | {} | {} | {} | {} |",
                result.shape.label(),
                measured.concurrency,
                cells.join(" | "),
                us(Duration::from_secs_f64(total.max(0.0) / orders)),
                us(Duration::from_secs_f64(gross / orders)),
            );
        }
    }
    println!();
    println!(
        "Database operations per order over the timed run (serverStatus opcounters; total less the idle rate × the run's duration):"
    );
    println!(
        "| shape | clients | {} | total | net of idle |",
        DB_OPS.join(" | ")
    );
    println!("| --- | --- |{} --- | --- |", " --- |".repeat(DB_OPS.len()));
    for result in results {
        for measured in &result.runs {
            let Some(ops) = measured.breakdown.db_ops else {
                continue;
            };
            let orders = measured.breakdown.orders.max(1) as f64;
            let total: f64 = ops.iter().sum();
            let idle = result.idle.db_ops.map_or(0.0, |idle| {
                idle.iter().sum::<f64>() / result.idle.seconds * measured.run.elapsed.as_secs_f64()
            });
            let cells: Vec<String> = ops.iter().map(|n| format!("{:.1}", n / orders)).collect();
            println!(
                "| {} | {} | {} | {:.1} | {:.1} |",
                result.shape.label(),
                measured.concurrency,
                cells.join(" | "),
                total / orders,
                (total - idle) / orders,
            );
        }
    }
    println!();
    println!(
        "Service tokens (timed here, on the load generator's CPU): ES256 signing {} fresh, {} cached (a caller signs once per tenant and scope set and reuses the token for half its life); verification {} (every callee verifies every call's token)",
        us(tokens.sign_fresh),
        us(tokens.sign_cached),
        us(tokens.verify)
    );
    println!();
    for concurrency in CONCURRENCIES {
        let (Some(base), Some(split)) = (
            find(results, Shape::AllInOne, concurrency),
            find(results, Shape::Split, concurrency),
        ) else {
            continue;
        };
        let p50 = |run: &Run<Placed>| run.percentile(0.50).map_or(0.0, |d| d.as_secs_f64());
        let hop_total: f64 = split
            .breakdown
            .hops
            .iter()
            .filter_map(|hop| {
                hop.mean.map(|mean| {
                    mean.as_secs_f64() * hop.calls / split.breakdown.orders.max(1) as f64
                })
            })
            .sum();
        let gap_total: f64 = split
            .breakdown
            .hops
            .iter()
            .filter_map(|hop| {
                let method = hop.method.trim_start_matches('/');
                let callee = split
                    .breakdown
                    .served
                    .iter()
                    .find(|served| served.node != "checkout" && served.method == method)?;
                Some(
                    (hop.mean?.as_secs_f64() - callee.mean()?.as_secs_f64()) * hop.calls
                        / split.breakdown.orders.max(1) as f64,
                )
            })
            .sum();
        let idle_of = |shape: Shape| {
            results
                .iter()
                .find(|result| result.shape == shape)
                .map(|result| &result.idle)
        };
        let cpu = |shape: Shape, m: &Measured| {
            idle_of(shape).map_or(0.0, |idle| {
                net_cpu(idle, m).iter().map(|(_, s)| s).sum::<f64>()
                    / m.breakdown.orders.max(1) as f64
            })
        };
        let ops = |shape: Shape, m: &Measured| {
            let idle = idle_of(shape)?;
            let ops = m.breakdown.db_ops?.iter().sum::<f64>();
            let idle_ops = idle.db_ops.map_or(0.0, |idle_ops| {
                idle_ops.iter().sum::<f64>() / idle.seconds * m.run.elapsed.as_secs_f64()
            });
            Some((ops - idle_ops) / m.breakdown.orders.max(1) as f64)
        };
        println!(
            "At {concurrency} client(s): split p50 {} vs all-in-one {} ({:+.2} ms); per order the split's checkout waits {:.2} ms in calls to other processes (mean, all hops), of which {:.2} ms is outside the callees' handlers (transport, HTTP/2, encoding, scheduling on the shared CPU); server CPU per order (net of idle) {} vs {}; database operations per order (net of idle) {} vs {}",
            ms(split.run.percentile(0.50)),
            ms(base.run.percentile(0.50)),
            (p50(&split.run) - p50(&base.run)) * 1e3,
            hop_total * 1e3,
            gap_total * 1e3,
            us(Duration::from_secs_f64(cpu(Shape::Split, split).max(0.0))),
            us(Duration::from_secs_f64(cpu(Shape::AllInOne, base).max(0.0))),
            ops(Shape::Split, split).map_or("–".into(), |n| format!("{n:.1}")),
            ops(Shape::AllInOne, base).map_or("–".into(), |n| format!("{n:.1}")),
        );
    }
    println!();
    for result in results {
        println!(
            "checked, {}: {}{}",
            result.shape.label(),
            result.check,
            if result.tied_out { "" } else { " — FAILED" }
        );
        if !result.warm_up.errors.is_empty() {
            println!(
                "  warm-up PlaceOrder errors: {}",
                result.warm_up.errors_text()
            );
        }
        println!(
            "  logs: {} WARN/ERROR lines{}",
            result.complaints.len(),
            if result.complaints.is_empty() {
                ""
            } else {
                ", by process and message:"
            }
        );
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        for line in &result.complaints {
            let (process, json) = line.split_once(": ").unwrap_or(("?", line));
            let message = json_string(json, "message").unwrap_or_default();
            let detail = json_string(json, "reason")
                .or_else(|| json_string(json, "error"))
                .unwrap_or_default();
            *kinds
                .entry(format!(
                    "{process}: {message} ({})",
                    without_numbers(truncate(&detail, 160))
                ))
                .or_default() += 1;
        }
        for (kind, count) in kinds {
            println!("    {count} × {kind}");
        }
    }
}

/// `text` with every run of digits (ports, delays, ids) as `N`, so alike lines count together.
fn without_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if !c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('N') {
            out.push('N');
        }
    }
    out
}

fn truncate(text: &str, at: usize) -> &str {
    match text.char_indices().nth(at) {
        Some((index, _)) => &text[..index],
        None => text,
    }
}
