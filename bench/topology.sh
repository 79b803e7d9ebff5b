#!/usr/bin/env bash
# PlaceOrder redeeming a loyalty reward through the split topology (PSP, loyalty and checkout
# processes) against the all-in-one, same run, back to back (see the comment at the top of
# bench/src/topology_bench.rs): 1 and 32 clients, orders/s, p50/p99, the ratios, and where the
# added time goes (outbound metrics, the callees' RPC log lines, CPU time per process, database
# operations). Starts its own redis-server (from PATH; --save "" --appendonly no) and SecantusDB
# (installed into .venv from requirements-test.txt if missing; a fresh one per shape; or the
# MongoDB at $MONGODB_URI), pins every server process to one CPU and itself to another (taskset;
# not with fewer than 2 CPUs), and stops everything at the end. Results: docs/benchmarks.md.
#
#   bench/topology.sh [--orders K] [--members M] [--connections C]
#                     [--shapes all-in-one,all-in-one-psp,split] [--callee-timeout-ms MS]
#                     [--shared-database] [--no-pin]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null ||
  { echo "topology.sh: redis-server is not on PATH (apt-get install redis-server)" >&2; exit 2; }
if [ -z "${MONGODB_URI:-}" ] && [ -z "${SECANTUSD:-}" ] && [ ! -x .venv/bin/secantusd-py ]; then
  echo "topology.sh: installing SecantusDB into .venv (pip)" >&2
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements-test.txt
fi
echo "topology.sh: $(nproc) CPU(s)" >&2
cargo build --release --quiet -p commerce -p bench
exec target/release/topology-bench "$@"
