//! Operator commands: check and compact the embedded store, list and replay dead letters, look up
//! an idempotency record. Each prints what it found and exits non-zero when something is wrong.

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use events::Bus as _;
use platform::interceptors::RecordedOutcome;

use crate::storage::StoreArgs;

/// `commerce store …`
#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Verify the embedded store's checksums and structure.
    Check(StoreArgs),
    /// Compact the embedded store file, returning free space to the file system.
    Compact(StoreArgs),
}

/// `commerce dead-letters …`
#[derive(Subcommand, Debug)]
pub enum DeadLetterCommand {
    /// List the dead letters of a stream.
    List {
        #[command(flatten)]
        bus: BusArgs,
        /// Most entries to print.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Publish dead letters to their stream again (after fixing what made them fail).
    Replay {
        #[command(flatten)]
        bus: BusArgs,
        /// Dead-letter entry ids to replay (as `list` prints them).
        #[arg(long = "id", required_unless_present = "all")]
        ids: Vec<String>,
        /// Replay every dead letter of the stream.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

/// Which bus and stream.
#[derive(Args, Debug)]
pub struct BusArgs {
    /// Stream: an event package (`commerce.checkout.v1`, on stream `events:{commerce.checkout.v1}`)
    /// or a stream name (`events:…`).
    #[arg(long)]
    stream: String,
    /// Redis holding the bus. Without Redis the bus lives inside the serving process and its dead
    /// letters cannot be reached from outside.
    #[arg(long, env = "COMMERCE_REDIS_URL")]
    redis_url: Option<String>,
}

impl BusArgs {
    fn stream(&self) -> String {
        if self.stream.starts_with("events:") {
            self.stream.clone()
        } else {
            events::envelope::stream_of_package(&self.stream)
        }
    }

    async fn bus(&self) -> anyhow::Result<events::RedisBus> {
        let Some(url) = &self.redis_url else {
            bail!(
                "no Redis configured (COMMERCE_REDIS_URL): without Redis the event bus and its dead letters live in the serving process's memory"
            );
        };
        let redis = fastpath::connect(url)
            .await
            .context("connecting to Redis")?;
        Ok(events::RedisBus::new(redis, fastpath::Degraded::default()))
    }
}

/// `commerce idempotency …`
#[derive(Subcommand, Debug)]
pub enum IdempotencyCommand {
    /// Print the recorded outcome of a key.
    Show {
        /// Tenant of the request.
        #[arg(long)]
        tenant: String,
        /// Fully-qualified method, e.g. `commerce.checkout.v1.OrderService/PlaceOrder`.
        #[arg(long)]
        method: String,
        /// The `Idempotency-Key` the caller sent.
        #[arg(long)]
        key: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// `commerce loyalty …`
#[derive(Subcommand, Debug)]
pub enum LoyaltyCommand {
    /// Prove a tenant's points ledger: hash chain, balanced entries, cached balances, and every
    /// member's lots against their accounts. Exits 1 and lists each problem when not clean.
    Reconcile {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Seconds a paid order or refund may wait for loyalty before it is reported missing
        /// (`accrual_missing`, `reversal_missing`).
        #[arg(long, default_value_t = 60)]
        settle_seconds: u64,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// `commerce checkout …`
#[derive(Subcommand, Debug)]
pub enum CheckoutCommand {
    /// Tie a tenant's orders, PSP transactions and money ledger out to the minor unit, through a
    /// running server's ReconcilePayments (the PSP simulator lives in the server). Exits 1 and
    /// lists each mismatch when they do not tie out.
    Reconcile {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The server's address.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        #[command(flatten)]
        auth: crate::AuthArgs,
    },
}

pub async fn checkout(command: CheckoutCommand) -> anyhow::Result<()> {
    use commerce_api::commerce::checkout::v1::{
        ReconcilePaymentsRequest, checkout_admin_service_client::CheckoutAdminServiceClient,
    };
    let CheckoutCommand::Reconcile {
        tenant,
        server,
        auth,
    } = command;
    let token = crate::token(&crate::TokenArgs {
        tenant: tenant.clone(),
        subject: "operator".into(),
        scopes: Some("checkout.admin".into()),
        ttl_minutes: 10,
        customer: None,
        auth,
    })?;
    let mut client = CheckoutAdminServiceClient::connect(server.clone())
        .await
        .with_context(|| format!("connecting to {server}"))?;
    let mut request = tonic::Request::new(ReconcilePaymentsRequest::default());
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let report = client.reconcile_payments(request).await?.into_inner();
    let net: Vec<String> = report
        .net_captured
        .iter()
        .map(|money| format!("{} {}", money.amount_minor, money.currency_code))
        .collect();
    println!(
        "tenant {tenant}: {} orders checked, net captured [{}]",
        report.orders_checked,
        net.join(", ")
    );
    if report.mismatches.is_empty() {
        println!("clean");
        return Ok(());
    }
    let amount = |money: &Option<commerce_api::commerce::common::v1::Money>| {
        money
            .as_ref()
            .map_or("-".to_owned(), |money| money.amount_minor.to_string())
    };
    for mismatch in &report.mismatches {
        println!(
            "{} order={:?} order_amount={} psp_amount={} ledger_amount={}",
            mismatch.field,
            mismatch.order_id,
            amount(&mismatch.order_amount),
            amount(&mismatch.psp_amount),
            amount(&mismatch.ledger_amount)
        );
    }
    bail!("{} mismatch(es) found", report.mismatches.len())
}

pub async fn loyalty(command: LoyaltyCommand) -> anyhow::Result<()> {
    let LoyaltyCommand::Reconcile {
        tenant,
        settle_seconds,
        store,
    } = command;
    let settle = std::time::Duration::from_secs(settle_seconds);
    let store = store.open().await?;
    let journal = loyalty::consumer::expect_effects(events::Journal::new(store.clone()));
    let engine = loyalty::Loyalty::new(
        store.clone(),
        platform::clock::Clocks::new(store),
        fastpath::Cache::new(None, fastpath::Degraded::default()),
    )
    .with_event_journal(journal, settle);
    let report = engine.reconcile(&tenant).await?;
    println!(
        "tenant {tenant}: {} entries, {} accounts checked",
        report.entries_checked, report.accounts_checked
    );
    if report.clean {
        println!("clean");
        return Ok(());
    }
    for problem in &report.discrepancies {
        println!(
            "{} entry={:?} account={:?} expected={:?} actual={:?}",
            problem.problem, problem.entry_id, problem.account_id, problem.expected, problem.actual
        );
    }
    bail!("{} problem(s) found", report.discrepancies.len())
}

pub async fn store(command: StoreCommand) -> anyhow::Result<()> {
    use store::Store as _;
    match command {
        StoreCommand::Check(args) => {
            let path = args.embedded_path();
            let intact = store::EmbeddedStore::check(&path)
                .with_context(|| format!("checking {}", path.display()))?;
            if intact {
                println!("{}: intact", path.display());
            } else {
                println!("{}: damaged pages were repaired", path.display());
            }
            // Events committed but not yet handed on (a stopped server publishes them at its
            // next start).
            let opened = store::EmbeddedStore::open(&path, args.embedded_options())
                .with_context(|| format!("opening {}", path.display()))?;
            let waiting = opened.pending_events(usize::MAX).await?.len();
            println!("outbox: {waiting} event(s) waiting for the relay");
        }
        StoreCommand::Compact(args) => {
            let path = args.embedded_path();
            let before = std::fs::metadata(&path)?.len();
            store::EmbeddedStore::compact(&path)
                .with_context(|| format!("compacting {}", path.display()))?;
            let after = std::fs::metadata(&path)?.len();
            println!("{}: {before} -> {after} bytes", path.display());
        }
    }
    Ok(())
}

pub async fn dead_letters(command: DeadLetterCommand) -> anyhow::Result<()> {
    match command {
        DeadLetterCommand::List { bus: args, limit } => {
            let (bus, stream) = (args.bus().await?, args.stream());
            let dead = bus.dead_letters(&stream, limit).await?;
            println!("{} dead letter(s) on {stream}", dead.len());
            for letter in dead {
                println!(
                    "{}\tevent {}\t{}\ttenant {}\tgroup {}\terror: {}",
                    letter.id,
                    letter.message.event_id,
                    letter.message.event_type,
                    letter.message.tenant,
                    letter.group,
                    letter.error
                );
            }
        }
        DeadLetterCommand::Replay {
            bus: args,
            ids,
            all,
        } => {
            let (bus, stream) = (args.bus().await?, args.stream());
            let ids = if all {
                bus.dead_letters(&stream, usize::MAX)
                    .await?
                    .into_iter()
                    .map(|letter| letter.id)
                    .collect()
            } else {
                ids
            };
            let mut missing = Vec::new();
            for id in &ids {
                if bus.replay_dead_letter(&stream, id).await? {
                    println!("replayed {id}");
                } else {
                    missing.push(id.clone());
                }
            }
            if !missing.is_empty() {
                bail!("no such dead letter(s) on {stream}: {}", missing.join(", "));
            }
        }
    }
    Ok(())
}

pub async fn idempotency(command: IdempotencyCommand) -> anyhow::Result<()> {
    let IdempotencyCommand::Show {
        tenant,
        method,
        key,
        store,
    } = command;
    let store = store.open().await?;
    let Some(record) = store.idempotency_record(&tenant, &method, &key).await? else {
        bail!("no live record for key {key:?} of {method} in tenant {tenant}");
    };
    let digest: String = record
        .request_digest
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    println!("tenant:          {}", record.tenant);
    println!("method:          {}", record.method);
    println!("key:             {}", record.key);
    println!("request sha256:  {digest}");
    println!("expires at:      {} (unix seconds)", record.expires_at);
    match RecordedOutcome::decode(&record.response) {
        Ok(outcome) if outcome.code == tonic::Code::Ok => {
            println!("outcome:         OK, {} response bytes", outcome.body.len());
        }
        Ok(outcome) => println!("outcome:         {:?}: {}", outcome.code, outcome.message),
        Err(error) => println!("outcome:         unreadable ({error})"),
    }
    Ok(())
}
