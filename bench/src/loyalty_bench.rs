//! `loyalty-bench`: the loyalty service measured end to end (issue "Measure"). Run by hand, it
//! prints numbers; it is not a test.
//!
//!   bench/loyalty.sh [--requests N] [--events K] [--members M] [--connections C]
//!
//! (the script builds `commerce` and `bench` in release and runs `target/release/loyalty-bench`).
//! It starts everything itself on free loopback ports and kills it at the end: a `redis-server`
//! (`--save '' --appendonly no`), the real `commerce serve` (embedded store in a temporary
//! directory, `--redis-url`, rate limiter raised out of the way) and, as the baseline, a bare tonic
//! server answering `MemberService/GetBalance` with a fixed balance (this binary's hidden
//! `bare-server` command, a separate process as `echo-server bare` is for bench/unary.sh).
//!
//! 1. **GetBalance on the fast path**: enrols one member, accrues points for it, then drives
//!    `commerce.loyalty.v1.MemberService/GetBalance` with a tonic client at concurrency 1 and 32
//!    (N requests each, over C HTTP/2 connections) against the bare server and against commerce,
//!    identically (same client, same bearer token); prints req/s, p50/p99 and commerce/bare.
//! 2. **Accrual events**: enrols M members over gRPC (32 concurrent; members/s), then publishes K
//!    `commerce.checkout.v1.OrderPaid` events onto `events:{commerce.checkout.v1}` exactly as the
//!    outbox relay does (envelope from `events::envelope::outbox_event`, tenant `bench`, one
//!    `RedisBus::publish` after another). Events/s is K over the time from the first publish until
//!    the server's `loyalty-accrual` group has read and acknowledged all K (XINFO GROUPS:
//!    entries-read = K, pending = 0; the consumer acknowledges after the accrual's commit). Then
//!    it checks, outside the timing, that nothing was dead-lettered, that every member's
//!    `lifetime_points` is what its events earn, and runs `ProgramService/ReconcileLedger`.

#[path = "harness.rs"]
mod harness;
#[path = "workload.rs"]
mod workload;

use harness::{
    Process, authorized, commerce_binary, connect, connect_many, free_port, tail, usd, wait_for,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};
use workload::enrol;

use anyhow::{Context as _, ensure};
use clap::{Parser, Subcommand};
use commerce_api::commerce::checkout::v1::{OrderPaid, PaidLine};
use commerce_api::commerce::loyalty::v1::member_service_client::MemberServiceClient;
use commerce_api::commerce::loyalty::v1::member_service_server::{
    MemberService, MemberServiceServer,
};
use commerce_api::commerce::loyalty::v1::points_service_client::PointsServiceClient;
use commerce_api::commerce::loyalty::v1::program_service_client::ProgramServiceClient;
use commerce_api::commerce::loyalty::v1::{
    AccruePointsRequest, Balance, EnrollMemberRequest, GetBalanceRequest, GetBalanceResponse,
    ReconcileLedgerRequest,
};
use events::{Bus as _, BusMessage, EventSource};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// The tenant of the token, hence of every member and event.
const TENANT: &str = "bench";
/// The consumer group `commerce serve` reads checkout's stream as.
const ACCRUAL_GROUP: &str = "loyalty-accrual";
/// Concurrency of the enrolment phase.
const ENROL_CONCURRENCY: usize = 32;

#[derive(Parser)]
#[command(about = "Loyalty benchmark: GetBalance vs bare tonic, and accrual events per second")]
struct Cli {
    /// GetBalance requests per run (each of: bare and commerce, at concurrency 1 and 32).
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// OrderPaid events published.
    #[arg(long, default_value_t = 10_000)]
    events: usize,
    /// Members enrolled for the accrual phase (events go to them round robin).
    #[arg(long, default_value_t = 10_000)]
    members: usize,
    /// HTTP/2 connections the concurrent GetBalance runs share (one at concurrency 1).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// The `commerce` binary; default: the one next to this binary (target/release/commerce).
    #[arg(long)]
    commerce: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Internal>,
}

#[derive(Subcommand)]
enum Internal {
    /// The baseline: a bare tonic server whose GetBalance returns a fixed balance; prints
    /// `listening ADDR`.
    #[command(hide = true)]
    BareServer,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Internal::BareServer) => bare_server().await,
        None => run(cli).await,
    }
}

// ---------------------------------------------------------------------------------------------
// The baseline server.

/// MemberService with nothing behind it: GetBalance answers a fixed balance of the same shape
/// commerce returns; every other method keeps the generated UNIMPLEMENTED stub.
struct FixedBalance;

#[tonic::async_trait]
impl MemberService for FixedBalance {
    async fn get_balance(
        &self,
        request: Request<GetBalanceRequest>,
    ) -> Result<Response<GetBalanceResponse>, Status> {
        Ok(Response::new(GetBalanceResponse {
            balance: Some(Balance {
                member_id: request.into_inner().member_id,
                available_points: 370,
                active_points: 370,
                held_points: 0,
                pending_points: 0,
                lifetime_points: 370,
                tier_id: String::new(),
                as_of_time: Some(prost_types::Timestamp {
                    seconds: 1_764_000_000,
                    nanos: 123_000_000,
                }),
            }),
        }))
    }
}

async fn bare_server() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    println!("listening {}", listener.local_addr()?);
    tonic::transport::Server::builder()
        .add_service(MemberServiceServer::new(FixedBalance))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Child processes.

/// Starts this binary's `bare-server` and reads its address.
fn start_bare_server() -> anyhow::Result<(Process, SocketAddr)> {
    use std::io::BufRead as _;
    let mut process = Process::spawn(
        Command::new(std::env::current_exe()?)
            .arg("bare-server")
            .stdout(Stdio::piped()),
        "the bare tonic server",
    )?;
    let stdout = process.child.stdout.take().context("bare server stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .with_context(|| format!("bare server said {line:?}"))?
        .parse()?;
    Ok((process, addr))
}

// ---------------------------------------------------------------------------------------------
// The benchmark.

/// One load run's result.
struct Run {
    requests: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    ensure!(
        cli.members > 0 && cli.requests > 0,
        "--members and --requests must be positive"
    );
    let commerce_bin = commerce_binary(cli.commerce.clone(), "bench/loyalty.sh")?;
    let work = tempfile::tempdir()?;

    // Redis, then commerce on it.
    let redis_port = free_port()?;
    let mut redis = Process::spawn(
        Command::new("redis-server")
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null()),
        "redis-server (apt-get install redis-server)",
    )?;
    wait_for(
        SocketAddr::from(([127, 0, 0, 1], redis_port)),
        &mut redis,
        "redis-server",
    )
    .await?;
    let redis_url = format!("redis://127.0.0.1:{redis_port}/");

    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let log_path = work.path().join("commerce.log");
    let mut commerce = Process::spawn(
        Command::new(&commerce_bin)
            .arg("serve")
            .args(["--listen", &listen.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .arg("--data-dir")
            .arg(work.path().join("data"))
            .args(["--redis-url", &redis_url])
            .args(["--rate-limit-per-second", "1000000"])
            .args(["--rate-limit-burst", "1000000"])
            .args([
                "--shutdown-grace-seconds",
                "1",
                "--shutdown-delay-seconds",
                "0",
            ])
            .env_remove("MONGODB_URI")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?),
        "commerce serve",
    )?;
    wait_for(listen, &mut commerce, "commerce serve").await?;
    let token = String::from_utf8(
        Command::new(&commerce_bin)
            .args(["token", "--tenant", TENANT, "--ttl-minutes", "240"])
            .output()
            .context("commerce token")?
            .stdout,
    )?;
    let bearer: MetadataValue<Ascii> = format!("Bearer {}", token.trim()).parse()?;
    let (_bare, bare_addr) = start_bare_server()?;

    let result = measure(&cli, listen, bare_addr, &bearer, &redis_url).await;
    if result.is_err() {
        eprintln!(
            "loyalty-bench: failed; commerce's log:\n{}",
            tail(&std::fs::read_to_string(&log_path).unwrap_or_default(), 30)
        );
    }
    result
}

async fn measure(
    cli: &Cli,
    commerce: SocketAddr,
    bare: SocketAddr,
    bearer: &MetadataValue<Ascii>,
    redis_url: &str,
) -> anyhow::Result<()> {
    let channel = connect(commerce).await?;
    let mut members = MemberServiceClient::new(channel.clone());
    let mut points = PointsServiceClient::new(channel.clone());

    // --- 1. GetBalance beside bare tonic -----------------------------------------------------
    let member_id = members
        .enroll_member(authorized(
            EnrollMemberRequest {
                customer_id: "bench-balance".into(),
                display_name: "Balance Bench".into(),
                registered: true,
                ..Default::default()
            },
            bearer,
        ))
        .await?
        .into_inner()
        .member
        .context("EnrollMember returned no member")?
        .member_id;
    for (order, amount_minor) in [(1, 12_345), (2, 9_900), (3, 14_800)] {
        points
            .accrue_points(authorized(
                AccruePointsRequest {
                    member_id: member_id.clone(),
                    order_id: format!("bench-balance-order-{order}"),
                    eligible_amount: usd(amount_minor),
                    ..Default::default()
                },
                bearer,
            ))
            .await?;
    }
    let balance = members
        .get_balance(authorized(
            GetBalanceRequest {
                member_id: member_id.clone(),
            },
            bearer,
        ))
        .await?
        .into_inner()
        .balance
        .context("GetBalance returned no balance")?;
    ensure!(
        balance.available_points > 0,
        "accrued points not available: {balance:?}"
    );

    let targets = [("bare tonic", bare), ("commerce", commerce)];
    // Warm-up: connections, caches, allocator.
    for (_, addr) in targets {
        let channels = connect_many(addr, cli.connections).await?;
        get_balances(&channels, bearer, &member_id, 8, 2_000).await?;
    }
    println!(
        "GetBalance over gRPC (tonic client), {} requests per run, {} connection(s) when concurrent; {} points on the member",
        cli.requests, cli.connections, balance.available_points
    );
    println!(
        "| target | concurrency | req/s | p50 | p99 | commerce / bare |\n| --- | --- | --- | --- | --- | --- |"
    );
    for concurrency in [1, 32] {
        let mut base = None;
        for (name, addr) in targets {
            let channels = connect_many(addr, cli.connections.min(concurrency)).await?;
            let run =
                get_balances(&channels, bearer, &member_id, concurrency, cli.requests).await?;
            let ratio = run.per_second() / *base.get_or_insert(run.per_second());
            println!(
                "| {name} | {concurrency} | {:.0} | {} | {} | {ratio:.2} |",
                run.per_second(),
                micros(run.p50),
                micros(run.p99),
            );
        }
    }

    // --- 2. Accrual events end to end --------------------------------------------------------
    let channels = connect_many(commerce, cli.connections).await?;
    let started = Instant::now();
    let member_ids = enrol(&channels, bearer, 0..cli.members, ENROL_CONCURRENCY).await?;
    let enrolment = started.elapsed();

    let stream = events::stream_of("commerce.checkout.v1.OrderPaid");
    let mut expected_points = vec![0i64; cli.members];
    let mut messages = Vec::with_capacity(cli.events);
    for index in 0..cli.events {
        let member = index % cli.members;
        // Whole dollars, so the default program (1 point per USD 1.00) earns exactly this.
        let dollars = 1 + (index % 50) as i64;
        expected_points[member] += dollars;
        messages.push(order_paid(
            index,
            &member_ids[member],
            &format!("bench-member-{member}"),
            dollars * 100,
        ));
    }
    let redis = fastpath::connect(redis_url).await?;
    let bus = Arc::new(events::RedisBus::new(
        redis.clone(),
        fastpath::Degraded::default(),
    ));
    let mut watcher = redis.clone();
    let before = accrual_group(&mut watcher, &stream).await?;
    ensure!(
        before.as_ref().is_none_or(|g| g.pending == 0),
        "accrual group busy before the run: {before:?}"
    );
    let already_read = before.and_then(|group| group.entries_read).unwrap_or(0);

    let started = Instant::now();
    let publisher = {
        let (bus, stream) = (bus.clone(), stream.clone());
        tokio::spawn(async move {
            // One publish after another, as `Relay::relay_once` does.
            for message in &messages {
                bus.publish(&stream, message).await?;
            }
            Ok::<Duration, events::BusError>(started.elapsed())
        })
    };
    let target = already_read + cli.events;
    let deadline = Duration::from_secs(600);
    let consumed = loop {
        let group = accrual_group(&mut watcher, &stream).await?;
        if let Some(group) = &group
            && group.entries_read.unwrap_or(0) >= target
            && group.pending == 0
        {
            break started.elapsed();
        }
        ensure!(
            started.elapsed() < deadline,
            "accruals not consumed within {deadline:?}: {group:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let published = publisher.await??;

    // Checks, outside the timing.
    let dead: usize =
        redis::AsyncCommands::xlen(&mut watcher, events::dead_letter_stream(&stream)).await?;
    ensure!(dead == 0, "{dead} OrderPaid events were dead-lettered");
    let wrong = check_balances(&channels, bearer, &member_ids, &expected_points).await?;
    ensure!(
        wrong == 0,
        "{wrong} members' lifetime points differ from what their events earn"
    );
    let reconcile_started = Instant::now();
    let reconciled = ProgramServiceClient::new(channel)
        .reconcile_ledger(authorized(ReconcileLedgerRequest {}, bearer))
        .await?
        .into_inner();
    let reconcile = reconcile_started.elapsed();

    let rate = |count: usize, elapsed: Duration| count as f64 / elapsed.as_secs_f64();
    println!();
    println!(
        "Accrual: {} OrderPaid events on {stream} for {} members (tenant {TENANT})",
        cli.events, cli.members
    );
    println!("| step | count | seconds | per second |\n| --- | --- | --- | --- |");
    println!(
        "| EnrollMember over gRPC, {ENROL_CONCURRENCY} concurrent | {} | {:.2} | {:.0} |",
        cli.members,
        enrolment.as_secs_f64(),
        rate(cli.members, enrolment)
    );
    println!(
        "| OrderPaid published (RedisBus::publish, one after another) | {} | {:.2} | {:.0} |",
        cli.events,
        published.as_secs_f64(),
        rate(cli.events, published)
    );
    println!(
        "| OrderPaid consumed: first publish → last accrual committed and acked | {} | {:.2} | {:.0} |",
        cli.events,
        consumed.as_secs_f64(),
        rate(cli.events, consumed)
    );
    println!(
        "checked: 0 dead letters; lifetime points of all {} members match their events; ReconcileLedger: {} entries, {} accounts, clean={} ({:.2} s)",
        cli.members,
        reconciled.entries_checked,
        reconciled.accounts_checked,
        reconciled.clean,
        reconcile.as_secs_f64()
    );
    ensure!(reconciled.clean, "ledger not clean: {reconciled:?}");
    Ok(())
}

fn micros(duration: Duration) -> String {
    format!("{:.0} µs", duration.as_secs_f64() * 1e6)
}

/// Drives GetBalance `requests` times from `concurrency` callers spread over `channels`.
async fn get_balances(
    channels: &[Channel],
    bearer: &MetadataValue<Ascii>,
    member_id: &str,
    concurrency: usize,
    requests: usize,
) -> anyhow::Result<Run> {
    let remaining = Arc::new(AtomicUsize::new(requests));
    let started = Instant::now();
    let mut callers = Vec::with_capacity(concurrency);
    for caller in 0..concurrency {
        let mut client = MemberServiceClient::new(channels[caller % channels.len()].clone());
        let (remaining, bearer, member_id) =
            (remaining.clone(), bearer.clone(), member_id.to_owned());
        callers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(requests / concurrency + 1);
            while remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let request = authorized(
                    GetBalanceRequest {
                        member_id: member_id.clone(),
                    },
                    &bearer,
                );
                let call = Instant::now();
                let response = client.get_balance(request).await?.into_inner();
                latencies.push(call.elapsed());
                ensure!(response.balance.is_some(), "no balance in the response");
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(requests);
    for caller in callers {
        latencies.extend(caller.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let percentile =
        |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    Ok(Run {
        requests,
        elapsed,
        p50: percentile(0.50),
        p99: percentile(0.99),
    })
}

/// The bus message the relay would publish for order `index` paid by `member_id`: the outbox
/// entry of an `order` aggregate of tenant `bench`, with its tenant beside the envelope.
fn order_paid(index: usize, member_id: &str, customer_id: &str, eligible_minor: i64) -> BusMessage {
    let order_id = format!("bench-order-{index}");
    let source = EventSource {
        aggregate: store::AggregateKey::new(TENANT, "order", order_id.clone()),
        version: 4,
        occurred_at: SystemTime::now(),
        traceparent: None,
        tracestate: None,
    };
    let paid = OrderPaid {
        order_id,
        location_id: "bench-location".into(),
        customer_id: customer_id.into(),
        member_id: member_id.into(),
        lines: vec![PaidLine {
            item_id: "bench-item".into(),
            sku: "BENCH-LATTE".into(),
            category: "drinks".into(),
            quantity: 1,
            amount: usd(eligible_minor),
        }],
        eligible_amount: usd(eligible_minor),
        captured_amount: usd(eligible_minor + eligible_minor / 10),
        paid_time: Some(prost_types::Timestamp::from(SystemTime::now())),
    };
    let event = events::envelope::outbox_event(&source, &paid);
    // As `Relay::relay_once` builds it from the outbox entry.
    BusMessage {
        event_id: event.event_id,
        event_type: event.event_type,
        tenant: source.aggregate.tenant,
        envelope: event.envelope,
    }
}

/// The `loyalty-accrual` group on `stream`, once the server's consumer has created it.
async fn accrual_group(
    redis: &mut fastpath::Redis,
    stream: &str,
) -> anyhow::Result<Option<redis::streams::StreamInfoGroup>> {
    let exists: bool = redis::AsyncCommands::exists(redis, stream).await?;
    if !exists {
        return Ok(None);
    }
    let reply: redis::streams::StreamInfoGroupsReply =
        redis::AsyncCommands::xinfo_groups(redis, stream).await?;
    Ok(reply
        .groups
        .into_iter()
        .find(|group| group.name == ACCRUAL_GROUP))
}

/// How many members' `lifetime_points` differ from `expected` (read through GetBalance).
async fn check_balances(
    channels: &[Channel],
    bearer: &MetadataValue<Ascii>,
    member_ids: &[String],
    expected: &[i64],
) -> anyhow::Result<usize> {
    let next = Arc::new(AtomicUsize::new(0));
    let wrong = Arc::new(AtomicUsize::new(0));
    let shared: Arc<Vec<(String, i64)>> = Arc::new(
        member_ids
            .iter()
            .cloned()
            .zip(expected.iter().copied())
            .collect(),
    );
    let mut callers = Vec::new();
    for caller in 0..ENROL_CONCURRENCY {
        let mut client = MemberServiceClient::new(channels[caller % channels.len()].clone());
        let (next, wrong, shared, bearer) =
            (next.clone(), wrong.clone(), shared.clone(), bearer.clone());
        callers.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some((member_id, points)) = shared.get(index) else {
                    return Ok::<_, anyhow::Error>(());
                };
                let balance = client
                    .get_balance(authorized(
                        GetBalanceRequest {
                            member_id: member_id.clone(),
                        },
                        &bearer,
                    ))
                    .await?
                    .into_inner()
                    .balance
                    .unwrap_or_default();
                if balance.lifetime_points != *points {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for caller in callers {
        caller.await??;
    }
    Ok(wrong.load(Ordering::Relaxed))
}
