//! What the benchmark binaries share: child processes killed when dropped, free ports,
//! waiting for a server, gRPC channels and authorized requests. Included by each binary with
//! `#[path = "harness.rs"] mod harness;` (the bench crate has no library).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use commerce_api::commerce::common::v1::Money;
use tonic::Request;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

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
