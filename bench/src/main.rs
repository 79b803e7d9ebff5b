//! `echo-server`: the protocol test service for benchmarks (see bench/unary.sh), either behind a
//! bare tonic server (the baseline) or behind the full platform (Connect + gRPC-web + interceptor
//! stack with JWT auth). Prints its address (and for the platform, an admin address and a token).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use platform::interceptors::{AuthConfig, Claims, InterceptorConfig, RateLimitConfig, mint_hs256};
use platform::{Server, ServerConfig};
use prost::Message as _;

const SECRET: &[u8] = b"bench-secret";

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Plain tonic server (HTTP/2 gRPC only): the baseline.
    Bare,
    /// Plain tonic server with tonic-web (gRPC-web over HTTP/1.1 too): the gRPC-web baseline.
    BareWeb,
    /// The platform: one port, all protocols, every interceptor, JWT auth.
    Platform,
    /// Write the request bodies the benchmark sends into DIR.
    Bodies { dir: PathBuf },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    match Cli::parse().command {
        Command::Bare => {
            let listener = tokio::net::TcpListener::bind(any_port).await?;
            println!("listening {}", listener.local_addr()?);
            tonic::transport::Server::builder()
                .add_service(protocol_testkit::Echo::server())
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await?;
        }
        Command::BareWeb => {
            let listener = tokio::net::TcpListener::bind(any_port).await?;
            println!("listening {}", listener.local_addr()?);
            tonic::transport::Server::builder()
                .accept_http1(true)
                .layer(tonic_web::GrpcWebLayer::new())
                .add_service(protocol_testkit::Echo::server())
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await?;
        }
        Command::Platform => {
            let config = ServerConfig {
                listen_addr: any_port,
                admin_addr: Some(any_port),
                interceptors: InterceptorConfig {
                    auth: Some(AuthConfig {
                        hs256_secret: Some(SECRET.to_vec()),
                        ..AuthConfig::default()
                    }),
                    // The limiter runs on every call but never trips during the benchmark.
                    rate_limit: RateLimitConfig {
                        tokens_per_second: 1e9,
                        burst: 1e9,
                    },
                    ..InterceptorConfig::default()
                },
                ..ServerConfig::default()
            };
            let bound = Server::new(config)
                .add_service(
                    protocol_testkit::Echo::server(),
                    protocol_testkit::FILE_DESCRIPTOR_SET,
                )
                .bind()
                .await?;
            let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
            let claims = Claims {
                sub: "bench".into(),
                tenant: "bench".into(),
                scope: "protocol.test".into(),
                exp,
            };
            println!("listening {}", bound.local_addr());
            println!(
                "admin {}",
                bound
                    .admin_addr()
                    .map(|addr| addr.to_string())
                    .unwrap_or_default()
            );
            println!("token {}", mint_hs256(SECRET, &claims)?);
            bound.serve(platform::termination_signal()).await?;
        }
        Command::Bodies { dir } => {
            let request = protocol_testkit::pb::EchoRequest {
                text: "hello, benchmark".into(),
                big_number: 42,
                ..Default::default()
            };
            let message = request.encode_to_vec();
            let mut framed = vec![0u8];
            framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
            framed.extend_from_slice(&message);
            std::fs::write(dir.join("echo.grpc"), framed)?;
            std::fs::write(
                dir.join("echo.json"),
                r#"{"text":"hello, benchmark","bigNumber":"42"}"#,
            )?;
        }
    }
    Ok(())
}
