//! `commerce serve`: checkout, subscriptions and loyalty on one port over gRPC, gRPC-web and
//! Connect. Needs no Redis or MongoDB. Services whose issues have not landed yet answer every RPC
//! with UNIMPLEMENTED — the contract is served, no data is faked.

mod unbuilt;

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use platform::{CorsConfig, Server, ServerConfig};

/// Commerce API platform.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every service on one port.
    Serve(ServeConfig),
}

/// Configuration of `serve`; every flag can also come from the environment.
#[derive(Args, Debug)]
struct ServeConfig {
    /// Address of the API port (gRPC, gRPC-web, Connect); port 0 picks a free one.
    #[arg(long, env = "COMMERCE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Browser origins allowed by CORS (comma-separated; `*` for any).
    #[arg(long, env = "COMMERCE_CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Vec<String>,
    /// Seconds in-flight calls get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "COMMERCE_SHUTDOWN_GRACE_SECONDS", default_value_t = 10)]
    shutdown_grace_seconds: u64,
    /// Largest Connect message in bytes.
    #[arg(long, env = "COMMERCE_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    max_message_bytes: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Command::Serve(config) = Cli::parse().command;
    // No secrets in this configuration yet; when there are, they are redacted here.
    eprintln!("commerce: configuration {config:?}");
    let server_config = ServerConfig {
        listen_addr: config.listen,
        cors: CorsConfig {
            allowed_origins: config.cors_origins.clone(),
        },
        shutdown_grace: Duration::from_secs(config.shutdown_grace_seconds),
        max_message_bytes: config.max_message_bytes,
    };
    let bound = unbuilt::register(Server::new(server_config)).bind().await?;
    print_banner(bound.local_addr());
    bound.serve(platform::termination_signal()).await?;
    eprintln!("commerce: stopped");
    Ok(())
}

fn print_banner(addr: SocketAddr) {
    let url = format!("http://{addr}");
    println!("commerce: listening on {url}");
    println!(
        "  protocols: gRPC (HTTP/2 cleartext), gRPC-web and Connect (HTTP/1.1 and HTTP/2) on this one port"
    );
    println!(
        "  services:  checkout, subscriptions, loyalty (RPCs answer `unimplemented` until their issues land)"
    );
    println!("  auth:      not enforced yet (the interceptor stack is still being built)");
    println!("  try:");
    println!("    npx buf curl --http2-prior-knowledge {url}/grpc.health.v1.Health/Check");
    println!("    npx buf curl --http2-prior-knowledge --list-methods {url}");
    println!(
        "    curl -s -H 'content-type: application/json' -d '{{\"service\":\"commerce.checkout.v1.OrderService\"}}' {url}/grpc.health.v1.Health/Check"
    );
    println!(
        "    curl -s -H 'content-type: application/json' -d '{{}}' {url}/commerce.checkout.v1.MenuService/ListLocations"
    );
}
