#!/usr/bin/env bash
# The per-call cost of the platform against bare tonic, measured so that it cannot flatter:
# every server under test pinned to CPU 0 (`taskset -c 0`), h2load pinned to CPU 1, each platform
# run between two bare runs of the same case (bare / platform / bare, back to back), a fresh data
# directory per platform run, rate limits raised out of the way, and every call checked to have
# succeeded (the platform's rpc_calls_total{code="ok"} must equal the calls sent; h2load alone
# only sees HTTP statuses). The ratio is platform / mean(bare before, bare after); the table
# gives each case's median over the rounds.
#
#   bench/pinned.sh [requests] [connections] [streams-per-connection] [rounds]
#   (defaults 40000 16 16 3; CASES="health balance-grpc ..." picks cases; BENCH_NO_BUILD=1 skips
#   the release build)
#
# Cases (the bare baseline is `echo-server bare`, tonic's EchoService over gRPC, built with the
# same release profile; for gRPC-web it is `echo-server bare-web`, tonic + tonic-web over HTTP/1.1):
#   health         grpc.health.v1.Health/Check over gRPC, no token
#   balance-grpc   loyalty GetBalance of an enrolled member with a bearer token, gRPC (h2c)
#   balance-json   the same over Connect JSON (POST, h2c)
#   balance-get    the same as a Connect GET (?connect=v1&encoding=json&message=…)
#   balance-web    the same over gRPC-web on HTTP/1.1 (h2load --h1) against bare tonic-web
#   stream-first   checkout WatchOrder of a canceled order over gRPC: the stream's one message
#                  and its end (a server stream's first-message cost)
#   balance-redis  balance-grpc with `--redis-url` (a redis-server this script starts)
#
# Logs stay at the default (one JSON line per call, to a file). Needs h2load (Debian
# nghttp2-client), taskset, curl, redis-server and 2 CPUs. Results: docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-40000}
connections=${2:-16}
streams=${3:-16}
rounds=${4:-3}
read -r -a cases <<<"${CASES:-health balance-grpc balance-json balance-get balance-web stream-first balance-redis}"
for tool in h2load taskset curl redis-server; do
  command -v "$tool" >/dev/null || { echo "pinned.sh: $tool missing" >&2; exit 2; }
done
[ "$(nproc)" -ge 2 ] || { echo "pinned.sh: needs 2 CPUs (server on one, load on the other)" >&2; exit 2; }
[ -n "${BENCH_NO_BUILD:-}" ] || cargo build --release --locked --quiet -p commerce -p bench
# COMMERCE_BIN=… measures another build of the platform (e.g. an earlier commit) against the same bare server.
commerce=${COMMERCE_BIN:-target/release/commerce}
echo_server=target/release/echo-server
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
export COMMERCE_JWT_HS256_SECRET=pinned-bench-secret
token=$("$commerce" token --tenant bench)
"$echo_server" bodies "$work"

redis_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
taskset -c 1 redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 & pids+=($!)

grpc=(-H 'content-type: application/grpc' -H 'te: trailers')
web=(-H 'content-type: application/grpc-web+proto' -H 'x-grpc-web: 1')
json=(-H 'content-type: application/json' -H 'connect-protocol-version: 1')
auth="authorization: Bearer $token"
printf '\x00\x00\x00\x00\x00' >"$work/health.grpc"

# frame FILE STRING: a gRPC frame of a message whose field 1 is STRING (< 128 bytes).
frame() {
  { printf "\\x00\\x00\\x00\\x00\\x$(printf %02x $((${#2} + 2)))\\x0a\\x$(printf %02x ${#2})"; printf '%s' "$2"; } >"$1"
}

# h2 NAME URL ARGS...: one h2load run on CPU 1; prints and returns "req/s" in $rps.
h2() {
  local name=$1 url=$2; shift 2
  taskset -c 1 h2load -n "$requests" -c "$connections" -m "$streams" -t 1 "$@" "$url" >"$work/$name.h2load"
  rps=$(awk '/^finished in/ {print $4}' "$work/$name.h2load")
  local failed
  failed=$(awk '/^requests:/ {print $10 + $12 + $14}' "$work/$name.h2load")
  [ "$failed" = 0 ] || { echo "pinned.sh: $name: h2load saw $failed failed/errored/timed-out requests" >&2; cat "$work/$name.h2load" >&2; exit 1; }
}

# bare NAME MODE: runs the case's baseline against `echo-server MODE` pinned to CPU 0.
bare() {
  local name=$1 mode=$2
  taskset -c 0 "$echo_server" "$mode" >"$work/$name.out" & local pid=$!; pids+=("$pid")
  for _ in $(seq 50); do grep -q '^listening' "$work/$name.out" 2>/dev/null && break; sleep 0.1; done
  local addr; addr=$(awk '/^listening/ {print $2}' "$work/$name.out")
  local url="http://$addr/protocol.test.v1.EchoService/Echo"
  if [ "$mode" = bare-web ]; then
    taskset -c 1 h2load -n 2000 -c 2 -m 1 --h1 -d "$work/echo.grpc" "${web[@]}" "$url" >/dev/null
    h2 "$name" "$url" --h1 -d "$work/echo.grpc" "${web[@]}"
  else
    taskset -c 1 h2load -n 2000 -c 2 -m 4 -d "$work/echo.grpc" "${grpc[@]}" "$url" >/dev/null
    h2 "$name" "$url" -d "$work/echo.grpc" "${grpc[@]}"
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

# platform NAME CASE: `commerce serve` (all-in-one, embedded store, fresh data dir) pinned to
# CPU 0; seeds what the case reads, warms up, runs it and checks every call succeeded.
platform() {
  local name=$1 case=$2 extra=()
  [ "$case" = balance-redis ] && extra=(--redis-url "redis://127.0.0.1:$redis_port")
  taskset -c 0 "$commerce" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --data-dir "$work/data-$name" --shutdown-delay-seconds 0 --shutdown-grace-seconds 2 \
    --rate-limit-per-second 1000000000 --rate-limit-burst 1000000000 \
    --anonymous-client-rate-limit-per-second 1000000000 --anonymous-client-rate-limit-burst 1000000000 \
    --anonymous-tenant-rate-limit-per-second 1000000000 --anonymous-tenant-rate-limit-burst 1000000000 \
    "${extra[@]}" >"$work/$name.out" 2>"$work/$name.err" & local pid=$!; pids+=("$pid")
  for _ in $(seq 100); do grep -q 'admin:' "$work/$name.out" 2>/dev/null && break; sleep 0.1; done
  local api admin
  api=$(awk '/listening on/ {sub("http://", "", $NF); print $NF}' "$work/$name.out")
  admin=$(awk '/admin:/ {sub("/metrics", "", $2); print $2}' "$work/$name.out")
  [ -n "$api" ] && [ -n "$admin" ] || { echo "pinned.sh: $name did not start:" >&2; cat "$work/$name.err" >&2; exit 1; }
  local path args=() h1=()
  case $case in
    health)
      path=/grpc.health.v1.Health/Check; args=(-d "$work/health.grpc" "${grpc[@]}") ;;
    stream-first)
      path=/commerce.checkout.v1.OrderService/WatchOrder
      local order; order=$(seed_canceled_order "$api")
      frame "$work/watch.grpc" "$order"
      args=(-d "$work/watch.grpc" "${grpc[@]}" -H "$auth") ;;
    *)
      path=/commerce.loyalty.v1.MemberService/GetBalance
      local member
      member=$(curl -sf -H 'content-type: application/json' -H "$auth" -d '{"customerId":"bench-customer"}' \
        "http://$api/commerce.loyalty.v1.MemberService/EnrollMember" | sed -n 's/.*"memberId":"\([^"]*\)".*/\1/p')
      [ -n "$member" ] || { echo "pinned.sh: EnrollMember failed on $name" >&2; exit 1; }
      frame "$work/balance.grpc" "$member"
      printf '{"memberId":"%s"}' "$member" >"$work/balance.json"
      case $case in
        balance-grpc|balance-redis) args=(-d "$work/balance.grpc" "${grpc[@]}" -H "$auth") ;;
        balance-json) args=(-d "$work/balance.json" "${json[@]}" -H "$auth") ;;
        balance-get) path="$path?connect=v1&encoding=json&message=%7B%22memberId%22%3A%22$member%22%7D"; args=(-H "$auth") ;;
        balance-web) args=(-d "$work/balance.grpc" "${web[@]}" -H "$auth"); h1=(--h1) ;;
      esac ;;
  esac
  taskset -c 1 h2load -n 2000 -c 2 -m 1 "${h1[@]}" "${args[@]}" "http://$api$path" >/dev/null
  h2 "$name" "http://$api$path" "${h1[@]}" "${args[@]}"
  local method=${path%%\?*}; method=${method#/}
  local ok other
  ok=$(curl -s "$admin/metrics" | awk -v m="method=\"$method\"" 'index($0, m) && /^rpc_calls_total/ && /code="ok"/ {n += $2} END {print n + 0}')
  other=$(curl -s "$admin/metrics" | awk -v m="method=\"$method\"" 'index($0, m) && /^rpc_calls_total/ && !/code="ok"/ {n += $2} END {print n + 0}')
  if [ "$ok" != $((requests + 2000)) ] || [ "$other" != 0 ]; then
    echo "pinned.sh: $name: rpc_calls_total ok=$ok other=$other, expected ok=$((requests + 2000))" >&2; exit 1
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

# seed_canceled_order API: `commerce demo` seeds tenant bench (location, menu, cart, quote); the
# order is placed and canceled, so WatchOrder sends it once and ends. Prints the order id.
seed_canceled_order() {
  local api=$1
  eval "$("$commerce" demo --server "http://$api" --tenant bench | grep '^export ')"
  local order
  order=$(curl -sf -H 'content-type: application/json' -H "$auth" -H "idempotency-key: bench-order" \
    -d "{\"cartId\":\"$CART_ID\",\"quoteId\":\"$QUOTE_ID\",\"expectedTotal\":{\"currencyCode\":\"USD\",\"amountMinor\":\"$TOTAL_MINOR\"},\"paymentToken\":\"tok_ok\"}" \
    "http://$api/commerce.checkout.v1.OrderService/PlaceOrder" | sed -n 's/.*"orderId":"\([^"]*\)".*/\1/p')
  [ -n "$order" ] || { echo "pinned.sh: PlaceOrder failed" >&2; exit 1; }
  curl -sf -o /dev/null -H 'content-type: application/json' -H "$auth" -d "{\"orderId\":\"$order\",\"reason\":\"bench\"}" \
    "http://$api/commerce.checkout.v1.OrderService/CancelOrder" || { echo "pinned.sh: CancelOrder failed" >&2; exit 1; }
  echo "$order"
}

echo "servers pinned to CPU 0, h2load to CPU 1; $requests requests per run, -c $connections -m $streams -t 1; $rounds rounds"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$rounds"); do
  for case in "${cases[@]}"; do
    mode=bare; [ "$case" = balance-web ] && mode=bare-web
    bare "$case-bare1-$round" "$mode"; before=$rps
    platform "$case-platform-$round" "$case"; subject=$rps
    bare "$case-bare2-$round" "$mode"; after=$rps
    ratio=$(awk -v p="$subject" -v a="$before" -v b="$after" 'BEGIN {printf "%.2f", p / ((a + b) / 2)}')
    printf '  round %s %-14s bare %9s  platform %9s  bare %9s  ratio %s\n' "$round" "$case" "$before" "$subject" "$after" "$ratio"
    echo "$ratio $subject $before $after" >>"$work/$case.results"
  done
done
echo "median over $rounds rounds: platform req/s, bare req/s (mean of its two runs), ratio"
for case in "${cases[@]}"; do
  sort -g "$work/$case.results" | awk -v c="$case" '{r[NR] = $1; p[NR] = $2; b[NR] = ($3 + $4) / 2}
    END {m = int((NR + 1) / 2); printf "  %-14s platform %9.0f  bare %9.0f  ratio %s\n", c, p[m], b[m], r[m]}'
done
echo "every platform call succeeded (rpc_calls_total{code=\"ok\"} = calls sent, no other code)"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
