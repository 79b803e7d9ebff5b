//! `commerce psp serve`: the PSP simulator as a process of its own, so every checkout and
//! subscriptions replica of the split topology charges the same PSP. It serves the internal
//! contract `commerce.psp.v1` behind the platform's stack (callers authenticate as services with
//! the `psp.payments.*` scopes), with health, reflection and an admin port, and keeps its state in
//! its own store (embedded by default, or MongoDB), so a restart forgets no payment.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use commerce_api::FILE_DESCRIPTOR_SET;
use commerce_api::commerce::psp::v1::psp_service_server::PspServiceServer;
use platform::interceptors::{InterceptorConfig, RateLimitConfig};
use platform::{Server, ServerConfig};

use crate::auth::AuthArgs;
use crate::storage::StoreArgs;

/// `commerce psp …`
#[derive(Subcommand, Debug)]
pub enum PspCommand {
    /// Serve the PSP simulator (internal API `commerce.psp.v1`) with durable state.
    Serve(Box<PspServeConfig>),
}

/// Configuration of `psp serve`.
#[derive(Args, Debug)]
pub struct PspServeConfig {
    /// Address of the PSP's port (gRPC, gRPC-web, Connect); port 0 picks a free one.
    #[arg(long, env = "COMMERCE_PSP_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// Address of its admin port (`/metrics`, `/healthz`).
    #[arg(
        long,
        env = "COMMERCE_PSP_ADMIN_LISTEN",
        default_value = "127.0.0.1:9091"
    )]
    pub admin_listen: SocketAddr,
    /// Seconds in-flight calls get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "COMMERCE_SHUTDOWN_GRACE_SECONDS", default_value_t = 10)]
    pub shutdown_grace_seconds: u64,
    /// Calls per second the services together may make (every caller acts for the platform's
    /// one PSP account).
    #[arg(
        long,
        env = "COMMERCE_PSP_RATE_LIMIT_PER_SECOND",
        default_value_t = 100_000.0
    )]
    pub rate_limit_per_second: f64,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
}

pub async fn psp(command: PspCommand) -> anyhow::Result<()> {
    let PspCommand::Serve(config) = command;
    let (traces, telemetry) = platform::telemetry::init("commerce-psp", Vec::new())?;
    eprintln!("commerce psp: configuration {config:?}");
    eprintln!("commerce psp: traces {traces}");
    let store = config.store.open().await?;
    let simulator = payments::PspSimulator::durable(store.clone())
        .await
        .context("loading the PSP simulator's state")?;
    let server = Server::new(ServerConfig {
        listen_addr: config.listen,
        admin_addr: Some(config.admin_listen),
        shutdown_grace: Duration::from_secs(config.shutdown_grace_seconds),
        interceptors: InterceptorConfig {
            auth: Some(config.auth.config()?),
            rate_limit: RateLimitConfig {
                tokens_per_second: config.rate_limit_per_second,
                burst: config.rate_limit_per_second.max(1.0),
            },
            ..InterceptorConfig::default()
        },
        ..ServerConfig::default()
    })
    .store(store)
    .add_service(
        PspServiceServer::new(payments::PspApi::new(Arc::new(simulator))),
        FILE_DESCRIPTOR_SET,
    );
    // Listening for SIGTERM/SIGINT before saying where we listen: a stop sent right after that
    // line is honoured, not lost.
    let stop = platform::termination_signal();
    let bound = server.bind().await?;
    println!("commerce psp: listening on http://{}", bound.local_addr());
    println!("  state: {}", config.store.describe());
    bound.serve(stop).await?;
    telemetry.shutdown();
    eprintln!("commerce psp: stopped");
    Ok(())
}
