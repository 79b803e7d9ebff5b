#!/usr/bin/env bash
# The subscriptions billing run on the real on-disk engine (see the comment at the top of
# bench/src/subscriptions_bench.rs): N monthly subscriptions created (creations/s, C concurrent
# callers), the tenant clock moved just past their first period's end, then ONE
# `Subscriptions::run_due` timed — renewals/s, as a ratio of N sequential single-aggregate
# commits on the same store file, half right before and half right after it (the baseline), with
# the store work per renewal. Then every subscription is checked (2 paid invoices; numbers exactly 1..=2N).
# Everything runs in one process: embedded store (redb) in a temporary directory, PSP simulator
# with no latency. No Redis, no server.
#
#   bench/subscriptions.sh [--subscriptions N] [--concurrency C] [--dir DIR]
#
# Defaults: N = 100000, C = 4, DIR = the system temp dir (give a directory on the disk you want
# measured). At N = 100k on a 2-core VM the whole run takes about 20 minutes (the billing run
# alone about 12) and the store file passes 1 GB; --subscriptions 10000 takes about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p bench --bin subscriptions-bench
exec target/release/subscriptions-bench "$@"
