//! `fastpath-bench REDIS_URL [requests] [concurrency]`: cache hits through the fast path
//! (`Cache::get_or_load` on a warm key) against Redis — throughput and per-call latency. Run by
//! bench/fastpath.sh beside `redis-benchmark -t get` on the same server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastpath::{Cache, Degraded};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".into());
    let requests: usize = args.next().map_or(Ok(100_000), |s| s.parse())?;
    let concurrency: usize = args.next().map_or(Ok(50), |s| s.parse())?;
    let cache = Arc::new(Cache::new(
        Some(fastpath::connect(&url).await?),
        Degraded::default(),
    ));
    let value = Bytes::from(vec![b'x'; 64]);
    let warm = value.clone();
    cache
        .get_or_load("bench", Duration::from_secs(600), || async move {
            Ok::<_, anyhow::Error>(warm)
        })
        .await?;

    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (cache, value) = (cache.clone(), value.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(requests / concurrency);
            for _ in 0..requests / concurrency {
                let value = value.clone();
                let call = Instant::now();
                cache
                    .get_or_load("bench", Duration::from_secs(600), || async move {
                        Ok::<_, anyhow::Error>(value)
                    })
                    .await
                    .expect("hit");
                latencies.push(call.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await?);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let percentile =
        |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "fastpath cache GET: {:.0} req/s, p50 {:?}, p99 {:?} ({} requests, {concurrency} concurrent)",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(0.50),
        percentile(0.99),
        latencies.len()
    );
    Ok(())
}
