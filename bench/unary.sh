#!/usr/bin/env bash
# Unary throughput and latency of EchoService/Echo: bare tonic (gRPC) as the baseline, beside the
# full platform stack (Connect + gRPC-web layers + every interceptor, JWT auth) over gRPC and over
# Connect JSON — all in the same run, so the ratios hold on a noisy machine.
#
#   bench/unary.sh [requests] [connections] [streams-per-connection]
#
# Needs h2load (Debian nghttp2-client). h2load counts HTTP statuses only, so the platform's
# rpc_calls_total{code="ok"} metric is checked afterwards to prove every call succeeded.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-40000}
connections=${2:-8}
streams=${3:-8}
command -v h2load >/dev/null || { echo "bench: h2load missing (apt-get install nghttp2-client)" >&2; exit 2; }

cargo build --release --quiet -p bench
server=target/release/echo-server
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

"$server" bodies "$work"
"$server" bare >"$work/bare.out" & pids+=($!)
"$server" platform >"$work/platform.out" 2>/dev/null & pids+=($!)
for file in bare platform; do
  for _ in $(seq 50); do grep -q '^listening' "$work/$file.out" 2>/dev/null && break; sleep 0.1; done
done
bare=$(awk '/^listening/ {print $2}' "$work/bare.out")
platform=$(awk '/^listening/ {print $2}' "$work/platform.out")
admin=$(awk '/^admin/ {print $2}' "$work/platform.out")
token=$(awk '/^token/ {print $2}' "$work/platform.out")
path=/protocol.test.v1.EchoService/Echo

# run NAME URL BODY-FILE HEADER... → prints "NAME req/s mean-ms" and records it
run() {
  local name=$1 url=$2 body=$3; shift 3
  local args=(-n "$requests" -c "$connections" -m "$streams" -t 1 -d "$body")
  for header in "$@"; do args+=(-H "$header"); done
  h2load "${args[@]}" "$url" >"$work/$name.h2load"
  local rps mean failed
  rps=$(awk '/^finished in/ {print $4}' "$work/$name.h2load")
  mean=$(awk '/^time for request:/ {print $6}' "$work/$name.h2load")
  failed=$(awk '/^requests:/ {print $10}' "$work/$name.h2load")
  printf '%-22s %10s req/s   mean latency %-9s  http failures %s\n' "$name" "$rps" "$mean" "$failed"
  echo "$rps" >"$work/$name.rps"
}

echo "EchoService/Echo, $requests requests, $connections connections x $streams streams, h2load -t 1"
# Warm-up (JIT-free, but page cache, connection setup, allocator).
h2load -n 2000 -c 2 -m 4 -d "$work/echo.grpc" -H 'content-type: application/grpc' -H 'te: trailers' "http://$bare$path" >/dev/null
h2load -n 2000 -c 2 -m 4 -d "$work/echo.grpc" -H 'content-type: application/grpc' -H 'te: trailers' -H "authorization: Bearer $token" "http://$platform$path" >/dev/null

run bare-tonic-grpc "http://$bare$path" "$work/echo.grpc" 'content-type: application/grpc' 'te: trailers'
run platform-grpc "http://$platform$path" "$work/echo.grpc" 'content-type: application/grpc' 'te: trailers' "authorization: Bearer $token"
run platform-connect-json "http://$platform$path" "$work/echo.json" 'content-type: application/json' "authorization: Bearer $token"

base=$(cat "$work/bare-tonic-grpc.rps")
ratio() { awk -v a="$(cat "$work/$1.rps")" -v b="$base" 'BEGIN {printf "%.2f", a / b}'; }
echo "ratio platform-grpc / bare-tonic-grpc:         $(ratio platform-grpc)   (goal >= 0.70)"
echo "ratio platform-connect-json / bare-tonic-grpc: $(ratio platform-connect-json)   (goal >= 0.60)"

ok=$(curl -s "http://$admin/metrics" | awk '/^rpc_calls_total\{.*EchoService\/Echo.*code="ok"/ {print $2}')
expected=$((2 * requests + 2000))
echo "platform rpc_calls_total{code=\"ok\"} for Echo: $ok (expected $expected)"
[ "$ok" = "$expected" ] || { echo "bench: not every platform call succeeded" >&2; exit 1; }
