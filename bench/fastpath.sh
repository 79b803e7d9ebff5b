#!/usr/bin/env bash
# Fast-path read cost beside plain Redis, same server, same run: redis-benchmark GET (the floor
# any client can reach) and fastpath's cache hit through the redis crate's connection manager.
#
#   bench/fastpath.sh [requests] [concurrency]
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-100000}
concurrency=${2:-50}
command -v redis-benchmark >/dev/null || { echo "bench: redis-benchmark missing (apt-get install redis-tools)" >&2; exit 2; }
cargo build --release --quiet -p bench
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$port" set cache:bench "$(head -c 64 /dev/zero | tr '\0' x)" >/dev/null

echo "redis-benchmark GET (no pipelining), $requests requests, $concurrency clients:"
redis-benchmark -p "$port" -t get -n "$requests" -c "$concurrency" -d 64 -q | tr '\r' '\n' | grep -E 'GET' | tail -1
redis-benchmark -p "$port" -t get -n "$requests" -c "$concurrency" -d 64 --precision 3 | grep -A2 -E 'latency summary' | tail -2 | sed 's/^/  latency ms: /'
target/release/fastpath-bench "redis://127.0.0.1:$port/" "$requests" "$concurrency"
