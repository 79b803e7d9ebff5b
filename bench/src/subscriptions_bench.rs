//! `subscriptions-bench`: the subscriptions billing run measured on the real on-disk engine. Run
//! by hand, it prints numbers; it is not a test.
//!
//!   bench/subscriptions.sh [--subscriptions N] [--concurrency C] [--dir DIR]
//!
//! (the script builds `bench` in release and runs `target/release/subscriptions-bench`). Everything
//! runs in this process: the engine `subscriptions::Subscriptions` over an `EmbeddedStore` (redb,
//! fsync per commit, group commit on as `commerce serve` opens it) in a file in a temporary
//! directory, the tenant clock (`platform::clock::Clocks`, frozen) and the PSP simulator with no
//! latency (token `tok_ok`: every charge succeeds).
//!
//! 1. **Creation**: one monthly plan, then N subscriptions (`create_subscription`, C concurrent
//!    callers), each charged its first invoice at once; creations/s. They all share the tenant's
//!    invoice counter and ledger head, so concurrent creations race; the store's refused commits
//!    are printed beside the rate.
//! 2. **The billing run**: the clock is moved to 1 s past the first period's end (no runner
//!    attached, so nothing runs yet), then ONE `run_due(tenant, now)` is timed: it renews all N
//!    (new period, invoice numbered, attempt persisted, PSP authorize + capture, paid, ledger
//!    entry). Renewals/s, seconds, and what the run asked of the store per renewal (reads,
//!    transactions, aggregates written, time waiting on the store) from a counting wrapper
//!    around it — a few atomic adds per call, nothing the store would notice.
//! 3. **Baseline**, same store file: N sequential single-aggregate commits, half right before
//!    the billing run and half right after (a commit's cost grows with the file and drifts with
//!    the machine's load, so the halves bracket the run; both are printed), each with the average
//!    size of an aggregate creation wrote and a subscription's two index entries — what the disk
//!    and redb give one writer that waits for each commit. Renewals/s is printed as a ratio of
//!    that (the machine-independent number; the ideal for a renewal that needs k sequential
//!    commits is about 1/k).
//! 4. **Checks**, outside the timing (fail loudly): the report says N renewals and N invoices
//!    paid, no failures; every subscription is ACTIVE in its second period with exactly 2 paid
//!    invoices; invoice numbers over all of them are exactly 1..=2N; a second `run_due` at the
//!    same time finds nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use clap::Parser;
use commerce_api::commerce::common::v1::Money;
use commerce_api::commerce::subscriptions::v1::{
    BillingInterval, InvoiceStatus, PlanVersion, SubscriptionStatus,
};
use payments::PspSimulator;
use platform::clock::Clocks;
use store::{
    AggregateKey, Commit, EmbeddedOptions, EmbeddedStore, IdempotencyRecord, IndexEntry,
    PendingEvent, Store, StoreError, Versioned,
};
use subscriptions::Subscriptions;

/// The tenant of every plan and subscription.
const TENANT: &str = "bench";
/// 2027-01-15T00:00:00Z: the frozen clock's start (a clock only moves forward, so after wall
/// time).
const START_MS: i64 = 1_799_971_200_000;
/// The plan's price, minor units of USD.
const PRICE_MINOR: i64 = 1_000;

#[derive(Parser)]
#[command(
    about = "Subscriptions benchmark: renewals per second in one billing run on the embedded store"
)]
struct Cli {
    /// Subscriptions created, all due in the one billing run.
    #[arg(long, default_value_t = 100_000)]
    subscriptions: usize,
    /// Concurrent callers of `create_subscription` in the creation phase.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Directory the temporary store directory is made in (default: the system's temp dir).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

// ---------------------------------------------------------------------------------------------
// Counting what the engine asks of the store.

/// Calls, items and time waiting (ns) for one kind of store call.
#[derive(Default)]
struct Counter {
    calls: AtomicU64,
    items: AtomicU64,
    bytes: AtomicU64,
    refused: AtomicU64,
    waited_ns: AtomicU64,
}

impl Counter {
    fn record<T>(
        &self,
        started: Instant,
        items: usize,
        bytes: usize,
        result: &Result<T, StoreError>,
    ) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.items.fetch_add(items as u64, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        if result.is_err() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        self.waited_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Tally {
        Tally {
            calls: self.calls.load(Ordering::Relaxed),
            items: self.items.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            waited: Duration::from_nanos(self.waited_ns.load(Ordering::Relaxed)),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    calls: u64,
    items: u64,
    bytes: u64,
    refused: u64,
    waited: Duration,
}

impl std::ops::Sub for Tally {
    type Output = Tally;
    fn sub(self, before: Tally) -> Tally {
        Tally {
            calls: self.calls - before.calls,
            items: self.items - before.items,
            bytes: self.bytes - before.bytes,
            refused: self.refused - before.refused,
            waited: self.waited.saturating_sub(before.waited),
        }
    }
}

/// What the store was asked, by kind of call.
#[derive(Default)]
struct Counters {
    loads: Counter,
    finds: Counter,
    /// `commit` and `commit_all`: one transaction (one fsync for a lone writer) each; items are
    /// aggregates written, bytes their encoded state.
    transactions: Counter,
}

#[derive(Debug, Default, Clone, Copy)]
struct Tallies {
    loads: Tally,
    finds: Tally,
    transactions: Tally,
}

impl Counters {
    fn snapshot(&self) -> Tallies {
        Tallies {
            loads: self.loads.snapshot(),
            finds: self.finds.snapshot(),
            transactions: self.transactions.snapshot(),
        }
    }
}

impl std::ops::Sub for Tallies {
    type Output = Tallies;
    fn sub(self, before: Tallies) -> Tallies {
        Tallies {
            loads: self.loads - before.loads,
            finds: self.finds - before.finds,
            transactions: self.transactions - before.transactions,
        }
    }
}

/// The store, counting the calls made of it.
struct CountingStore {
    inner: Arc<dyn Store>,
    counters: Arc<Counters>,
}

fn state_bytes(commits: &[Commit]) -> usize {
    commits.iter().map(|commit| commit.data.len()).sum()
}

#[async_trait::async_trait]
impl Store for CountingStore {
    async fn load(&self, key: &AggregateKey) -> Result<Option<Versioned>, StoreError> {
        let started = Instant::now();
        let result = self.inner.load(key).await;
        self.counters.loads.record(started, 1, 0, &result);
        result
    }

    async fn commit(&self, commit: Commit) -> Result<u64, StoreError> {
        let started = Instant::now();
        let bytes = commit.data.len();
        let result = self.inner.commit(commit).await;
        self.counters
            .transactions
            .record(started, 1, bytes, &result);
        result
    }

    async fn commit_all(&self, commits: Vec<Commit>) -> Result<Vec<u64>, StoreError> {
        let started = Instant::now();
        let (items, bytes) = (commits.len(), state_bytes(&commits));
        let result = self.inner.commit_all(commits).await;
        self.counters
            .transactions
            .record(started, items, bytes, &result);
        result
    }

    /// One transaction: the embedded store commits the jobs in one group (the ledger's batched
    /// appends come this way).
    async fn commit_each(&self, jobs: Vec<Vec<Commit>>) -> Vec<Result<Vec<u64>, StoreError>> {
        let started = Instant::now();
        let items = jobs.iter().map(Vec::len).sum();
        let bytes = jobs.iter().map(|job| state_bytes(job)).sum();
        let outcomes = self.inner.commit_each(jobs).await;
        let first_refusal = outcomes
            .iter()
            .find_map(|outcome| outcome.as_ref().err().cloned())
            .map_or(Ok(()), Err);
        self.counters
            .transactions
            .record(started, items, bytes, &first_refusal);
        outcomes
    }

    async fn find(
        &self,
        tenant: &str,
        kind: &str,
        index: &IndexEntry,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        let started = Instant::now();
        let result = self.inner.find(tenant, kind, index, after_id, limit).await;
        let items = result.as_ref().map_or(0, Vec::len);
        self.counters.finds.record(started, items, 0, &result);
        result
    }

    async fn pending_events(&self, limit: usize) -> Result<Vec<PendingEvent>, StoreError> {
        self.inner.pending_events(limit).await
    }

    async fn mark_delivered(&self, events: &[PendingEvent]) -> Result<(), StoreError> {
        self.inner.mark_delivered(events).await
    }

    async fn idempotency_record(
        &self,
        tenant: &str,
        method: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.inner.idempotency_record(tenant, method, key).await
    }

    async fn save_idempotency_record(&self, record: IdempotencyRecord) -> Result<(), StoreError> {
        self.inner.save_idempotency_record(record).await
    }

    async fn purge_expired_idempotency(&self, now: u64) -> Result<u64, StoreError> {
        self.inner.purge_expired_idempotency(now).await
    }
}

// ---------------------------------------------------------------------------------------------
// The benchmark.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    ensure!(
        cli.subscriptions > 0 && cli.concurrency > 0,
        "--subscriptions and --concurrency must be positive"
    );
    let work = match &cli.dir {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    let path = work.path().join("subscriptions.redb");
    let embedded: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open(&path, EmbeddedOptions::default())?);
    let counters = Arc::new(Counters::default());
    let store: Arc<dyn Store> = Arc::new(CountingStore {
        inner: embedded.clone(),
        counters: counters.clone(),
    });
    // No due-job runner on the clock: moving it runs nothing, the benchmark calls `run_due`.
    let clocks = Clocks::new(store.clone());
    let engine = Arc::new(Subscriptions::new(
        store.clone(),
        clocks.clone(),
        Arc::new(PspSimulator::new()),
    ));
    clocks
        .advance(TENANT, START_MS)
        .await
        .context("freezing the clock")?;
    let n = cli.subscriptions;
    println!(
        "subscriptions-bench: {n} monthly subscriptions, tenant {TENANT}, embedded store (redb, group commit) at {}, PSP simulator with no latency",
        path.display()
    );

    // --- 1. Creation ---------------------------------------------------------------------------
    let plan_id = engine
        .create_plan(
            TENANT,
            "bench-plan",
            "Bench Club",
            "",
            PlanVersion {
                price: Some(Money {
                    currency_code: "USD".into(),
                    amount_minor: PRICE_MINOR,
                }),
                interval: BillingInterval::Month as i32,
                interval_count: 1,
                ..PlanVersion::default()
            },
        )
        .await?
        .plan_id;
    let before = counters.snapshot();
    let started = Instant::now();
    let (subscription_ids, period_end_ms) =
        create_all(&engine, &plan_id, n, cli.concurrency).await?;
    let creation = started.elapsed();
    let creation_store = counters.snapshot() - before;

    // --- 2. The billing run, bracketed by the baseline's two halves ---------------------------
    let aggregate_bytes = (creation_store.transactions.bytes
        / creation_store.transactions.items.max(1))
    .max(1) as usize;
    let started = Instant::now();
    baseline_commits(&embedded, 0..n / 2, aggregate_bytes).await?;
    let baseline_before = started.elapsed();
    let now_ms = period_end_ms + 1_000;
    clocks
        .advance(TENANT, now_ms)
        .await
        .context("moving the clock past the first period")?;
    let before = counters.snapshot();
    let progress = spawn_progress(counters.clone(), n);
    let started = Instant::now();
    let report = engine.run_due(TENANT, now_ms).await?;
    let billing = started.elapsed();
    progress.abort();
    let run_store = counters.snapshot() - before;

    let started = Instant::now();
    baseline_commits(&embedded, n / 2..n, aggregate_bytes).await?;
    let baseline_after = started.elapsed();
    let baseline = baseline_before + baseline_after;

    // --- 3. Checks -----------------------------------------------------------------------------
    ensure!(
        report.renewals == n as i64
            && report.invoices_paid == n as i64
            && report.payment_failures == 0
            && report.outcomes_unknown == 0,
        "billing run report {report:?}, expected {n} renewals and {n} invoices paid"
    );
    let checking = Instant::now();
    check_all(&engine, &subscription_ids, period_end_ms).await?;
    let again = engine.run_due(TENANT, now_ms).await?;
    ensure!(
        again.renewals == 0 && again.invoices_paid == 0,
        "a second run at the same time did something: {again:?}"
    );
    let checking = checking.elapsed();

    // --- Report --------------------------------------------------------------------------------
    let rate = |count: usize, elapsed: Duration| count as f64 / elapsed.as_secs_f64();
    let renewals_per_second = rate(n, billing);
    let baseline_per_second = rate(n, baseline);
    println!();
    println!("| step | count | seconds | per second |\n| --- | --- | --- | --- |");
    println!(
        "| create_subscription, {} concurrent (first invoice charged) | {n} | {:.2} | {:.0} |",
        cli.concurrency,
        creation.as_secs_f64(),
        rate(n, creation)
    );
    println!(
        "| run_due, one call: renewals (invoice created and paid) | {} | {:.2} | {renewals_per_second:.0} |",
        report.renewals,
        billing.as_secs_f64(),
    );
    for (when, count, elapsed) in [
        ("before", n / 2, baseline_before),
        ("after", n - n / 2, baseline_after),
    ] {
        println!(
            "| baseline {when} run_due: sequential single-aggregate commits ({aggregate_bytes} B, 2 index entries) | {count} | {:.2} | {:.0} |",
            elapsed.as_secs_f64(),
            rate(count, elapsed)
        );
    }
    println!(
        "| baseline, both halves | {n} | {:.2} | {baseline_per_second:.0} |",
        baseline.as_secs_f64(),
    );
    println!();
    println!(
        "renewals/s ÷ baseline commits/s = {:.3} (one sequential commit per renewal would be 1.0)",
        renewals_per_second / baseline_per_second
    );
    println!(
        "billing run report: {} renewals, {} invoices paid, {} payment failures, {} status changes",
        report.renewals, report.invoices_paid, report.payment_failures, report.status_changes
    );
    print_store_work("run_due", &run_store, n, billing);
    print_store_work("creation", &creation_store, n, creation);
    println!(
        "checked ({:.1} s): all {n} subscriptions ACTIVE in their second period with exactly 2 paid invoices; invoice numbers exactly 1..={}; a second run_due found nothing",
        checking.as_secs_f64(),
        2 * n
    );
    Ok(())
}

/// Prints what `phase` asked of the store, per subscription.
fn print_store_work(phase: &str, work: &Tallies, n: usize, elapsed: Duration) {
    let per = |count: u64| count as f64 / n as f64;
    let share = |waited: Duration| 100.0 * waited.as_secs_f64() / elapsed.as_secs_f64();
    println!(
        "{phase} per subscription: {:.2} transactions (commit/commit_all; {:.2} refused), {:.2} aggregates written ({:.0} B state each), {:.2} loads, {:.3} finds",
        per(work.transactions.calls),
        per(work.transactions.refused),
        per(work.transactions.items),
        work.transactions.bytes as f64 / work.transactions.items.max(1) as f64,
        per(work.loads.calls),
        per(work.finds.calls),
    );
    println!(
        "{phase} time waiting on the store (summed over callers): transactions {:.1} s ({:.0}%), loads {:.1} s ({:.0}%), finds {:.1} s ({:.0}%) of {:.1} s",
        work.transactions.waited.as_secs_f64(),
        share(work.transactions.waited),
        work.loads.waited.as_secs_f64(),
        share(work.loads.waited),
        work.finds.waited.as_secs_f64(),
        share(work.finds.waited),
        elapsed.as_secs_f64(),
    );
}

/// Creates `n` subscriptions (customers `bench-customer-<i>`) from `concurrency` callers, each
/// paid at once; their ids by index and the (common) end of their first period.
async fn create_all(
    engine: &Arc<Subscriptions>,
    plan_id: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<(Vec<String>, i64)> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (engine, next, plan_id) = (engine.clone(), next.clone(), plan_id.to_owned());
        callers.push(tokio::spawn(async move {
            let mut created = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= n {
                    return Ok::<_, anyhow::Error>(created);
                }
                let customer = format!("bench-customer-{index}");
                let made = engine
                    .create_subscription(
                        TENANT,
                        &format!("bench-create-{index}"),
                        &customer,
                        &plan_id,
                        "tok_ok",
                        false,
                    )
                    .await
                    .with_context(|| format!("creating the subscription of {customer}"))?;
                let sub = made.subscription;
                ensure!(
                    sub.status() == SubscriptionStatus::Active
                        && made
                            .first_invoice
                            .as_ref()
                            .is_some_and(|invoice| invoice.status() == InvoiceStatus::Paid),
                    "{customer}'s subscription was not paid at creation: {:?}",
                    sub.status()
                );
                created.push((
                    index,
                    sub.subscription_id,
                    platform::units::ms_or_epoch(&sub.current_period_end),
                ));
            }
        }));
    }
    let mut ids = vec![String::new(); n];
    let mut period_ends = std::collections::BTreeSet::new();
    for caller in callers {
        for (index, id, period_end) in caller.await?? {
            ids[index] = id;
            period_ends.insert(period_end);
        }
    }
    match (period_ends.first(), period_ends.len()) {
        (Some(&end), 1) => Ok((ids, end)),
        _ => bail!("the subscriptions' first periods end at different times: {period_ends:?}"),
    }
}

/// Prints the run's progress to stderr every 30 s (the run is one call, possibly long).
fn spawn_progress(counters: Arc<Counters>, n: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        let before = counters.snapshot();
        loop {
            tokio::time::sleep(Duration::from_secs(30)).await;
            let done = counters.snapshot() - before;
            eprintln!(
                "  run_due: {:.0} s, {} store transactions so far (~{:.0} renewals of {n} at 3 per renewal)",
                started.elapsed().as_secs_f64(),
                done.transactions.calls,
                done.transactions.calls as f64 / 3.0
            );
        }
    })
}

/// Single-aggregate commits (ids `baseline-<index>`) of `bytes` bytes with two index entries,
/// one after another.
async fn baseline_commits(
    store: &Arc<dyn Store>,
    indexes: std::ops::Range<usize>,
    bytes: usize,
) -> anyhow::Result<()> {
    let data = Bytes::from(vec![7u8; bytes]);
    for index in indexes {
        let id = format!("baseline-{index:08}");
        store
            .commit(Commit {
                key: AggregateKey::new(TENANT, "bench_baseline", id.clone()),
                expected_version: 0,
                data: data.clone(),
                index: vec![
                    IndexEntry {
                        name: "all".into(),
                        value: "1".into(),
                    },
                    IndexEntry {
                        name: "customer".into(),
                        value: id,
                    },
                ],
                events: Vec::new(),
                idempotency: None,
            })
            .await?;
    }
    Ok(())
}

/// Checks every subscription (ACTIVE, in its second period, exactly 2 paid invoices for the
/// first two periods) and that the invoice numbers are exactly 1..=2N; fails on the first
/// difference.
async fn check_all(
    engine: &Arc<Subscriptions>,
    ids: &[String],
    first_period_end_ms: i64,
) -> anyhow::Result<()> {
    const CHECKERS: usize = 8;
    let ids: Arc<Vec<String>> = Arc::new(ids.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let mut checkers = Vec::with_capacity(CHECKERS);
    for _ in 0..CHECKERS {
        let (engine, ids, next) = (engine.clone(), ids.clone(), next.clone());
        checkers.push(tokio::spawn(async move {
            let mut numbers = Vec::new();
            loop {
                let Some(id) = ids.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    return Ok::<_, anyhow::Error>(numbers);
                };
                let sub = engine.subscription(TENANT, id).await?;
                ensure!(
                    sub.status() == SubscriptionStatus::Active
                        && platform::units::ms_or_epoch(&sub.current_period_start)
                            == first_period_end_ms,
                    "subscription {id}: {:?}, period from {}",
                    sub.status(),
                    platform::units::ms_or_epoch(&sub.current_period_start)
                );
                let (invoices, more) = engine.list_invoices(TENANT, id, &[], 10, "").await?;
                ensure!(
                    invoices.len() == 2 && more.is_empty(),
                    "subscription {id} has {} invoices, not 2",
                    invoices.len()
                );
                for invoice in invoices {
                    ensure!(
                        invoice.status() == InvoiceStatus::Paid
                            && invoice.amount_paid.as_ref().map(|m| m.amount_minor)
                                == Some(PRICE_MINOR),
                        "invoice {} of subscription {id} is {:?}, paid {:?}",
                        invoice.number,
                        invoice.status(),
                        invoice.amount_paid
                    );
                    numbers.push(invoice.number);
                }
            }
        }));
    }
    let mut numbers = Vec::with_capacity(2 * ids.len());
    for checker in checkers {
        numbers.extend(checker.await??);
    }
    numbers.sort_unstable();
    let expected = 1..=2 * ids.len() as i64;
    if !numbers.iter().copied().eq(expected.clone()) {
        let missing = expected.clone().find(|n| numbers.binary_search(n).is_err());
        let repeated = numbers.windows(2).find(|pair| pair[0] == pair[1]);
        bail!(
            "invoice numbers are not exactly 1..={}: {} numbers, first missing {missing:?}, first repeated {repeated:?}",
            2 * ids.len(),
            numbers.len()
        );
    }
    Ok(())
}
