//! `commerce`: the platform's one binary. `serve` runs checkout, loyalty and subscriptions (all of
//! them, or the subset `--services` names) on one port over gRPC, gRPC-web and Connect, behind the
//! platform's interceptor stack; it needs no Redis or MongoDB. `psp serve` runs the PSP simulator
//! as a process of its own. `token` mints a development token, `demo` seeds a demo tenant on a
//! running server, and `keys` makes a service's signing key;
//! `store`, `dead-letters`, `idempotency`, `loyalty` and `checkout` are the operator commands.

mod auth;
mod demo;
mod keys;
mod ops;
mod psp;
mod serve;
mod storage;
mod topology;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: the request path and the store's page reads allocate and
/// free many small and page-sized buffers from several threads, and glibc's allocator showed as a
/// fifth of the server's CPU in profiles (`malloc`, `free`, `malloc_consolidate`); see
/// docs/benchmarks.md for the A/B.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub(crate) use auth::{AuthArgs, TokenArgs, token};

/// Commerce API platform.
#[derive(Parser)]
#[command(version, about, args_override_self = true)] // a repeated flag: the last one wins
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the platform's services on one port (all of them, or `--services …`).
    Serve(Box<serve::ServeConfig>),
    /// The PSP simulator as a process of its own (the split topology).
    #[command(subcommand)]
    Psp(psp::PspCommand),
    /// Print an HS256 development token (signed with the same secret `serve` uses).
    Token(TokenArgs),
    /// Seed a demo tenant on a running server and print its ids as shell exports
    /// (`eval "$(commerce demo)"`) with the next calls to try.
    Demo(demo::DemoArgs),
    /// Make a service's signing key and the JWKS entry its callees trust it by.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Check or compact the embedded store (stop `serve` first: it holds the file).
    #[command(subcommand)]
    Store(ops::StoreCommand),
    /// List or replay events that consumers gave up on (Redis Streams bus).
    #[command(subcommand)]
    DeadLetters(ops::DeadLetterCommand),
    /// Look up the recorded outcome of an idempotency key.
    #[command(subcommand)]
    Idempotency(ops::IdempotencyCommand),
    /// Loyalty operator tools (reconcile a tenant's points ledger).
    #[command(subcommand)]
    Loyalty(ops::LoyaltyCommand),
    /// Checkout operator tools (reconcile a tenant's payments on a running server).
    #[command(subcommand)]
    Checkout(ops::CheckoutCommand),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(config) => serve::serve(*config).await,
        Command::Psp(command) => psp::psp(command).await,
        Command::Token(args) => {
            println!("{}", token(&args)?);
            Ok(())
        }
        Command::Demo(args) => demo::demo(args).await,
        Command::Keys(command) => keys::keys(command),
        Command::Store(command) => ops::store(command).await,
        Command::DeadLetters(command) => ops::dead_letters(command).await,
        Command::Idempotency(command) => ops::idempotency(command).await,
        Command::Loyalty(command) => ops::loyalty(command).await,
        Command::Checkout(command) => ops::checkout(command).await,
    }
}
