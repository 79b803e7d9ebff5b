#!/usr/bin/env bash
# Latency against the amount of data stored (issue 19): GetBalance and PlaceOrder p50/p99 with the
# store holding N members and M orders, seeded through the API (bench/src/stored_bench.rs). The
# server is pinned to CPU 0 and this benchmark to CPU 1. Run it at two sizes and compare, e.g.
#   bench/stored.sh --members 10000 --orders 10000 --data-dir /var/tmp/stored-10k
#   bench/stored.sh --members 1000000 --orders 1000000 --data-dir /var/tmp/stored-1m
# A data directory is kept and reused (seeded further only as needed), so a large store is built
# once. BENCH_NO_BUILD=1 skips the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${BENCH_NO_BUILD:-}" ] || cargo build --release --locked --quiet -p commerce -p bench
exec taskset -c 1 target/release/stored-bench --server-cpus 0 "$@"
