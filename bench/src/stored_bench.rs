//! `stored-bench`: does latency stay flat as stored data piles up? (issue 19, "latency flat").
//! Run by hand, it prints numbers; it is not a test.
//!
//!   bench/stored.sh --members N --orders M [--data-dir DIR] [--concurrency 1,64] …
//!
//! 1. **Seeding** (skipped for what `--data-dir` holds already, so a large store is built once
//!    and measured many times): the real `commerce serve` (embedded store, no Redis, rate limits
//!    out of the way, unpinned) enrols members `bench-member-{i}` until there are N and places
//!    orders until there are M, all through the public API — `EnrollMember`; `CreateCart`,
//!    `AddCartLine`, `QuoteCart`, `PlaceOrder` captured by the PSP simulator — never by writing
//!    into the store behind the server's back, so every table (aggregates, secondary index,
//!    idempotency records, the money ledger's chain, loyalty's) holds what production would.
//!    What was seeded is recorded in `DIR/stored-bench.state` and `DIR/members.txt`.
//! 2. **Measuring**: the server restarted on the directory (pinned with `--server-cpus`; pin this
//!    program to the other CPU yourself), then
//!    - `GetBalance` of members drawn uniformly at random from all N (fixed seed), first a warm-up
//!      of the same size as the measured run, at `--balance-concurrency`;
//!    - `PlaceOrder` at each `--concurrency`, carts prepared outside the timing (the orders placed
//!      are stored too and counted in the state).
//!
//! Compare a run at 10,000 with a run at 1,000,000: the target is p99 within 20 %.

#[path = "harness.rs"]
mod harness;
#[path = "workload.rs"]
mod workload;

use harness::{
    Menu, Process, Run, authorized, commerce_binary, connect, connect_many, create_menu, drive,
    free_port, micros, tail, wait_for,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, ensure};
use clap::Parser;
use commerce_api::commerce::loyalty::v1::GetBalanceRequest;
use commerce_api::commerce::loyalty::v1::member_service_client::MemberServiceClient;
use tonic::Status;
use tonic::metadata::{Ascii, MetadataValue};
use workload::{PREP_CONCURRENCY, enrol, place_orders, prepare_carts};

/// The tenant of the token, hence of everything stored.
const TENANT: &str = "bench";
/// Concurrency of seeding (as many callers as the server's batches take).
const SEED_CONCURRENCY: usize = 64;
/// Orders seeded per round: carts prepared, then placed.
const SEED_CHUNK: usize = 5_000;

#[derive(Parser)]
#[command(about = "Latency of GetBalance and PlaceOrder against the amount of data stored")]
struct Cli {
    /// Members the store must hold before measuring (seeded through the API as needed).
    #[arg(long, default_value_t = 10_000)]
    members: usize,
    /// Orders the store must hold before measuring (seeded through the API as needed).
    #[arg(long, default_value_t = 10_000)]
    orders: usize,
    /// The data directory; kept, and reused by the next run. Default: a temporary one.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Timed GetBalance calls (after a warm-up of as many).
    #[arg(long, default_value_t = 40_000)]
    balances: usize,
    /// Callers of the GetBalance run.
    #[arg(long, default_value_t = 16)]
    balance_concurrency: usize,
    /// Timed PlaceOrder calls at each concurrency.
    #[arg(long, default_value_t = 2_000)]
    place: usize,
    /// The PlaceOrder concurrencies measured, in order.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 64])]
    concurrency: Vec<usize>,
    /// HTTP/2 connections the concurrent runs share.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// The `commerce` binary; default: the one next to this binary (target/release/commerce).
    #[arg(long)]
    commerce: Option<PathBuf>,
    /// Pins the measured server to these CPUs (`taskset -c`), e.g. `0`. Seeding is not pinned.
    #[arg(long)]
    server_cpus: Option<String>,
    /// One more argument for `commerce serve` when measuring (repeat it), e.g.
    /// `--serve-arg=--store-cache-mib=8192`.
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    serve_args: Vec<String>,
}

/// What a data directory holds, as seeded and measured so far.
#[derive(Default)]
struct State {
    orders: usize,
    location_id: String,
    item_id: String,
    member_ids: Vec<String>,
}

impl State {
    fn load(dir: &Path) -> anyhow::Result<State> {
        let Ok(text) = std::fs::read_to_string(dir.join("stored-bench.state")) else {
            return Ok(State::default());
        };
        let mut state = State::default();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("orders", value)) => state.orders = value.parse()?,
                Some(("location_id", value)) => state.location_id = value.into(),
                Some(("item_id", value)) => state.item_id = value.into(),
                _ => {}
            }
        }
        state.member_ids = std::fs::read_to_string(dir.join("members.txt"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        Ok(state)
    }

    fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::write(dir.join("members.txt"), self.member_ids.join("\n"))?;
        std::fs::write(
            dir.join("stored-bench.state"),
            format!(
                "orders={}\nlocation_id={}\nitem_id={}\n",
                self.orders, self.location_id, self.item_id
            ),
        )?;
        Ok(())
    }

    fn menu(&self) -> Menu {
        Menu {
            location_id: self.location_id.clone(),
            item_id: self.item_id.clone(),
        }
    }
}

/// A running `commerce serve` on the data directory.
struct Server {
    process: Process,
    listen: SocketAddr,
    bearer: MetadataValue<Ascii>,
    log_path: PathBuf,
}

impl Server {
    async fn start(cli: &Cli, dir: &Path, pinned: bool, log_name: &str) -> anyhow::Result<Server> {
        let binary = commerce_binary(cli.commerce.clone(), "bench/stored.sh")?;
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let log_path = dir.join(log_name);
        let mut command = match (&cli.server_cpus, pinned) {
            (Some(cpus), true) => {
                let mut taskset = Command::new("taskset");
                taskset.args(["-c", cpus]).arg(&binary);
                taskset
            }
            _ => Command::new(&binary),
        };
        let mut process = Process::spawn(
            command
                .arg("serve")
                .args(["--listen", &listen.to_string()])
                .args(["--admin-listen", &admin.to_string()])
                .arg("--data-dir")
                .arg(dir.join("data"))
                .args(["--rate-limit-per-second", "1000000"])
                .args(["--rate-limit-burst", "1000000"])
                .args(["--shutdown-grace-seconds", "5"])
                .args(["--shutdown-delay-seconds", "0"])
                .args(if pinned { &cli.serve_args[..] } else { &[] })
                .env_remove("MONGODB_URI")
                .env_remove("COMMERCE_REDIS_URL")
                .env_remove("COMMERCE_PROMOTIONS_FILE")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log_path)?),
            "commerce serve",
        )?;
        wait_for(listen, &mut process, "commerce serve").await?;
        let token = Command::new(&binary)
            .args(["token", "--tenant", TENANT, "--ttl-minutes", "600"])
            .output()
            .context("commerce token")?;
        ensure!(token.status.success(), "commerce token: {}", token.status);
        let bearer = format!("Bearer {}", String::from_utf8(token.stdout)?.trim()).parse()?;
        Ok(Server {
            process,
            listen,
            bearer,
            log_path,
        })
    }

    /// Stops the server with SIGTERM (a clean shutdown) and waits for it.
    fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.process.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.process.child.try_wait()?.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The log's WARN/ERROR lines.
    fn complaints(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log_path)
            .unwrap_or_default()
            .lines()
            .filter(|line| {
                line.contains("\"level\":\"WARN\"") || line.contains("\"level\":\"ERROR\"")
            })
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    ensure!(cli.members > 0, "--members must be positive");
    let temporary = tempfile::tempdir()?;
    let dir = match &cli.data_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => temporary.path().to_owned(),
    };
    let mut state = State::load(&dir)?;
    seed(&cli, &dir, &mut state).await?;

    let server = Server::start(&cli, &dir, true, "measure.log").await?;
    let result = measure(&cli, &server, &dir, &mut state).await;
    if result.is_err() {
        let log = std::fs::read_to_string(&server.log_path).unwrap_or_default();
        eprintln!("stored-bench: failed; commerce's log:\n{}", tail(&log, 30));
    }
    let complaints = server.complaints();
    server.stop()?;
    state.save(&dir)?;
    println!(
        "commerce's log while measuring: {} WARN/ERROR lines",
        complaints.len()
    );
    for line in complaints.iter().take(5) {
        println!("  {line}");
    }
    result
}

/// Brings the directory up to `--members` and `--orders`, through the API.
async fn seed(cli: &Cli, dir: &Path, state: &mut State) -> anyhow::Result<()> {
    if state.member_ids.len() >= cli.members && state.orders >= cli.orders {
        return Ok(());
    }
    let server = Server::start(cli, dir, false, "seed.log").await?;
    let channels = connect_many(server.listen, cli.connections).await?;
    if state.location_id.is_empty() {
        let menu = create_menu(connect(server.listen).await?, &server.bearer).await?;
        (state.location_id, state.item_id) = (menu.location_id, menu.item_id);
        state.save(dir)?;
    }
    let began = Instant::now();
    let enrolled = state.member_ids.len();
    while state.member_ids.len() < cli.members {
        let from = state.member_ids.len();
        let to = cli.members.min(from + 50_000);
        let ids = enrol(&channels, &server.bearer, from..to, SEED_CONCURRENCY).await?;
        state.member_ids.extend(ids);
        state.save(dir)?;
        eprintln!(
            "seeded {to} members ({:.0}/s)",
            (to - enrolled) as f64 / began.elapsed().as_secs_f64()
        );
    }
    let began = Instant::now();
    let placed = state.orders;
    let menu = state.menu();
    while state.orders < cli.orders {
        let count = SEED_CHUNK.min(cli.orders - state.orders);
        // Unique per process too: a chunk interrupted part-way left carts and orders under its
        // keys, and a retry with those keys would replay them (or be refused as a reuse).
        let run = format!("seed{}-{}", state.orders, std::process::id());
        let carts = prepare_carts(&channels, &server.bearer, &menu, &run, count).await?;
        let orders = place_orders(&channels, &server.bearer, &run, carts, SEED_CONCURRENCY).await?;
        ensure!(
            orders.errors.is_empty(),
            "seeding orders failed: {}",
            orders.errors_text()
        );
        state.orders += count;
        state.save(dir)?;
        eprintln!(
            "seeded {} orders ({:.0}/s with their carts)",
            state.orders,
            (state.orders - placed) as f64 / began.elapsed().as_secs_f64()
        );
    }
    let complaints = server.complaints();
    server.stop()?;
    ensure!(
        complaints.is_empty(),
        "the server complained while seeding: {}",
        complaints.join("\n")
    );
    Ok(())
}

async fn measure(cli: &Cli, server: &Server, dir: &Path, state: &mut State) -> anyhow::Result<()> {
    let bearer = &server.bearer;
    let channels = connect_many(server.listen, cli.connections).await?;
    let members = state.member_ids.len().min(cli.members);
    let stored_orders = state.orders;

    // GetBalance of random members: a warm-up, then the measured run.
    let ids: Arc<Vec<String>> = Arc::new(state.member_ids[..members].to_vec());
    let mut balance_runs = Vec::new();
    for round in 0..2u64 {
        let (ids, channels, bearer) = (ids.clone(), channels.clone(), bearer.clone());
        let run = drive(
            cli.balance_concurrency,
            cli.balances,
            move |caller, index| {
                let mut client =
                    MemberServiceClient::new(channels[caller % channels.len()].clone());
                let pick = splitmix64(round << 40 | index as u64) as usize % ids.len();
                let request = authorized(
                    GetBalanceRequest {
                        member_id: ids[pick].clone(),
                    },
                    &bearer,
                );
                async move {
                    client.get_balance(request).await?;
                    Ok::<_, Status>(())
                }
            },
        )
        .await?;
        balance_runs.push(run);
    }
    let balances = balance_runs.pop().context("a GetBalance run")?;
    ensure!(
        balances.errors.is_empty(),
        "GetBalance failed: {}",
        balances.errors_text()
    );

    // PlaceOrder at each concurrency, carts prepared outside the timing.
    let menu = state.menu();
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs();
    let mut order_rows: Vec<(usize, Run<workload::Placed>)> = Vec::new();
    for &concurrency in &cli.concurrency {
        let run_name = format!("m{stamp}-c{concurrency}");
        let carts = prepare_carts(&channels, bearer, &menu, &run_name, cli.place).await?;
        let timed = connect_many(server.listen, cli.connections.min(concurrency)).await?;
        let run = place_orders(&timed, bearer, &run_name, carts, concurrency).await?;
        state.orders += run.ok.len();
        order_rows.push((concurrency, run));
    }

    println!(
        "stored-bench: commerce serve{}{} on an embedded store holding {members} members and {stored_orders} orders of tenant {TENANT} ({:.2} GiB on disk)",
        cli.server_cpus
            .as_ref()
            .map_or_else(String::new, |cpus| format!(" pinned to CPU {cpus}")),
        if cli.serve_args.is_empty() {
            String::new()
        } else {
            format!(" with {}", cli.serve_args.join(" "))
        },
        directory_bytes(&dir.join("data")) as f64 / (1u64 << 30) as f64,
    );
    println!("| call | stored | concurrency | calls | errors | per second | p50 | p99 |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| GetBalance (random member) | {members} members | {} | {} | {} | {:.0} | {} | {} |",
        cli.balance_concurrency,
        balances.calls,
        balances.errors_text(),
        balances.per_second(),
        micros(balances.percentile(0.50)),
        micros(balances.percentile(0.99)),
    );
    for (concurrency, run) in &order_rows {
        println!(
            "| PlaceOrder | {stored_orders} orders | {concurrency} | {} | {} | {:.0} | {} | {} |",
            run.calls,
            run.errors_text(),
            run.per_second(),
            micros(run.percentile(0.50)),
            micros(run.percentile(0.99)),
        );
    }
    println!("(cart preparation for PlaceOrder: {PREP_CONCURRENCY} concurrent, not timed)");
    Ok(())
}

/// A well-mixed 64-bit hash (SplitMix64's finalizer): random member picks with a fixed seed.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Bytes of the files under `dir`.
fn directory_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|entry| match entry.metadata() {
                Ok(meta) if meta.is_dir() => directory_bytes(&entry.path()),
                Ok(meta) => meta.len(),
                Err(_) => 0,
            })
            .sum()
    })
}
