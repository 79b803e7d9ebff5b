//! `store-bench [seconds-per-run] [dir]`: durable commits per second on the embedded store with 1,
//! 16 and 64 concurrent writers, with and without group commit, measured in one run. Each commit
//! creates an aggregate with one outbox event and is fsynced before it is acknowledged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use store::{AggregateKey, Commit, EmbeddedOptions, EmbeddedStore, OutboxEvent, Store};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: f64 = std::env::args().nth(1).map_or(Ok(3.0), |s| s.parse())?;
    let base = std::env::args().nth(2).map(std::path::PathBuf::from);
    let dir = match &base {
        Some(path) => tempfile::tempdir_in(path)?,
        None => tempfile::tempdir()?,
    };
    println!(
        "durable commits/s, embedded store (redb), {seconds} s per run, files in {}",
        dir.path().display()
    );
    println!(
        "{:>8} {:>16} {:>16} {:>8}",
        "writers", "no group commit", "group commit", "ratio"
    );
    for writers in [1usize, 16, 64] {
        let mut rates = Vec::new();
        for group_commit in [false, true] {
            let path = dir.path().join(format!("w{writers}-g{group_commit}.redb"));
            let store = Arc::new(EmbeddedStore::open(
                &path,
                EmbeddedOptions {
                    group_commit,
                    ..EmbeddedOptions::default()
                },
            )?);
            rates.push(run(store, writers, Duration::from_secs_f64(seconds)).await);
        }
        println!(
            "{writers:>8} {:>16.0} {:>16.0} {:>7.1}x",
            rates[0],
            rates[1],
            rates[1] / rates[0]
        );
    }
    Ok(())
}

async fn run(store: Arc<EmbeddedStore>, writers: usize, duration: Duration) -> f64 {
    let committed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let (store, committed) = (store.clone(), committed.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while started.elapsed() < duration {
                let id = format!("w{writer}-{n}");
                let commit = Commit {
                    key: AggregateKey::new("bench", "order", id.clone()),
                    expected_version: 0,
                    data: Bytes::from_static(&[7; 256]),
                    index: Vec::new(),
                    events: vec![OutboxEvent {
                        event_id: id,
                        event_type: "bench.Created".into(),
                        envelope: Bytes::from_static(&[1; 128]),
                    }],
                    idempotency: None,
                };
                store.commit(commit).await.expect("commit");
                committed.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    committed.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}
