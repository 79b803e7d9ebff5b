#!/usr/bin/env bash
# The loyalty service end to end (see the comment at the top of bench/src/loyalty_bench.rs):
# GetBalance over gRPC on the fast path beside a bare tonic MemberService (same run, ratio), and
# OrderPaid accrual events consumed per second with 10k enrolled members. Starts its own
# redis-server, `commerce serve` and bare server on free ports and stops them at the end.
#
#   bench/loyalty.sh [--requests N] [--events K] [--members M] [--connections C]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "bench: redis-server missing (apt-get install redis-server)" >&2; exit 2; }
cargo build --release --quiet -p commerce -p bench
exec target/release/loyalty-bench "$@"
