#!/usr/bin/env bash
# What exporting traces costs: unary throughput of the real `commerce serve` (all-in-one, embedded
# store) with trace export off, on at 1% (OTEL_TRACES_SAMPLER=traceidratio, _ARG=0.01) and on at
# 100% (_ARG=1.0), one after the other in the same run, repeated for several rounds (interleaved,
# so drift on a noisy machine hits every mode alike); the median of the rounds per mode and the
# ratios 1%/off and 100%/off. Goal (the tracing issue): >= 0.9 at 1%, >= 0.75 at 100%.
#
#   bench/traces.sh [requests] [connections] [streams-per-connection] [rounds]
#   (defaults 40000 8 8 3; BENCH_NO_BUILD=1 skips the release build)
#
# Two calls, each its own h2load run over gRPC (HTTP/2): `grpc.health.v1.Health/Check` (anonymous,
# one SERVER span) and `commerce.loyalty.v1.MemberService/GetBalance` of an enrolled member
# (authenticated read: SERVER span, rate-limit span, balance-cache span). Spans go to `otlp-sink`
# (bench/src/otlp_sink.rs), an OTLP/gRPC receiver that counts and discards them. The server is
# pinned to CPU 0 (`taskset -c 0`: its Tokio runtime, the SDK's export thread and everything else
# share that core), h2load and the sink to CPU 1. Logs stay at the binary's default (`info`: one
# JSON line per call, to a file), as deployed; COMMERCE_LOG=warn before the command drops them.
# Every call must succeed: h2load sees only HTTP statuses, so each server's
# rpc_calls_total{code="ok"} is compared with the calls sent. Also printed per traced mode: the
# server's trace_spans_total (ended / exported / failed; the rest were dropped by the full queue)
# and what the sink received. Results: docs/observability.md, "Overhead".
#
# Needs h2load (Debian nghttp2-client), taskset (util-linux), curl and 2 CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-40000}
connections=${2:-8}
streams=${3:-8}
rounds=${4:-3}
log=${COMMERCE_LOG:-info}
for tool in h2load taskset curl; do
  command -v "$tool" >/dev/null || { echo "traces.sh: $tool missing (h2load: apt-get install nghttp2-client)" >&2; exit 2; }
done
[ "$(nproc)" -ge 2 ] || { echo "traces.sh: needs 2 CPUs (server on one, load on the other)" >&2; exit 2; }

# BENCH_NO_BUILD=1 reuses the release binaries already built (e.g. while others edit the sources).
[ -n "${BENCH_NO_BUILD:-}" ] || cargo build --release --locked --quiet -p commerce -p bench
commerce=target/release/commerce
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
export COMMERCE_JWT_HS256_SECRET=traces-bench-secret
token=$("$commerce" token --tenant bench)

taskset -c 1 target/release/otlp-sink >"$work/sink.out" & pids+=($!)
for _ in $(seq 50); do grep -q '^listening' "$work/sink.out" 2>/dev/null && break; sleep 0.1; done
sink="http://$(awk '/^listening/ {print $2}' "$work/sink.out")"
sink_spans() { awk '/^spans/ {n = $2} END {print n + 0}' "$work/sink.out"; }

health=/grpc.health.v1.Health/Check
balance=/commerce.loyalty.v1.MemberService/GetBalance
printf '\x00\x00\x00\x00\x00' >"$work/health.grpc"
grpc=(-H 'content-type: application/grpc' -H 'te: trailers')

# start NAME [VAR=value...]: starts `commerce serve` pinned to CPU 0 with the variables, waits
# for it, enrols a member and writes its GetBalance request; sets $api and $admin.
start() {
  local name=$1; shift
  env "$@" COMMERCE_LOG="$log" taskset -c 0 "$commerce" serve \
    --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --data-dir "$work/data-$name" \
    --shutdown-delay-seconds 0 --shutdown-grace-seconds 2 \
    --rate-limit-per-second 1000000000 --rate-limit-burst 1000000000 \
    --anonymous-client-rate-limit-per-second 1000000000 --anonymous-client-rate-limit-burst 1000000000 \
    --anonymous-tenant-rate-limit-per-second 1000000000 --anonymous-tenant-rate-limit-burst 1000000000 \
    >"$work/$name.out" 2>"$work/$name.err" &
  server_pid=$!
  pids+=("$server_pid")
  for _ in $(seq 100); do grep -q 'admin:' "$work/$name.out" 2>/dev/null && break; sleep 0.1; done
  api=$(awk '/listening on/ {sub("http://", "", $NF); print $NF}' "$work/$name.out")
  admin=$(awk '/admin:/ {sub("/metrics", "", $2); print $2}' "$work/$name.out")
  [ -n "$api" ] && [ -n "$admin" ] || { echo "traces.sh: $name did not start:" >&2; cat "$work/$name.err" >&2; exit 1; }
  local member
  member=$(curl -sf -H 'content-type: application/json' -H "authorization: Bearer $token" \
    -d '{"customerId":"bench-customer"}' "http://$api/commerce.loyalty.v1.MemberService/EnrollMember" |
    sed -n 's/.*"memberId":"\([^"]*\)".*/\1/p')
  [ -n "$member" ] || { echo "traces.sh: EnrollMember failed on $name" >&2; exit 1; }
  # GetBalanceRequest{member_id} as one gRPC frame: field 1, length-delimited.
  { printf "\\x00\\x00\\x00\\x00\\x$(printf %02x $((${#member} + 2)))\\x0a\\x$(printf %02x ${#member})"
    printf '%s' "$member"; } >"$work/balance.grpc"
}

# ok METHOD: the server's rpc_calls_total{code="ok"} for METHOD (0 when absent); bad METHOD: the
# calls of METHOD with any other code.
ok() { curl -s "$admin/metrics" | awk -v m="method=\"${1#/}\"" 'index($0, m) && /^rpc_calls_total/ && /code="ok"/ {n += $2} END {print n + 0}'; }
bad() { curl -s "$admin/metrics" | awk -v m="method=\"${1#/}\"" 'index($0, m) && /^rpc_calls_total/ && !/code="ok"/ {n += $2} END {print n + 0}'; }
spans() { curl -s "$admin/metrics" | awk -v o="outcome=\"$1\"" 'index($0, o) && /^trace_spans_total/ {n += $2} END {print n + 0}'; }

# load NAME PATH BODY [HEADER...]: one h2load run on CPU 1; records req/s in $work/NAME.rps.
load() {
  local name=$1 path=$2 body=$3; shift 3
  local args=(-n "$requests" -c "$connections" -m "$streams" -t 1 -d "$body" "${grpc[@]}")
  for header in "$@"; do args+=(-H "$header"); done
  taskset -c 1 h2load "${args[@]}" "http://$api$path" >"$work/$name.h2load"
  local rps mean failed
  rps=$(awk '/^finished in/ {print $4}' "$work/$name.h2load")
  mean=$(awk '/^time for request:/ {print $6}' "$work/$name.h2load")
  failed=$(awk '/^requests:/ {print $10 + $12}' "$work/$name.h2load")
  printf '  %-26s %10s req/s   mean %-9s  h2load failed/errored %s\n' "$name" "$rps" "$mean" "$failed"
  echo "$rps" >>"$work/$(echo "$name" | cut -d' ' -f1).rps"
}

echo "commerce serve (all-in-one, embedded store) pinned to CPU 0; h2load and the OTLP sink on CPU 1"
echo "$requests requests per run, $connections connections x $streams streams, h2load -t 1; logs: $log; $rounds rounds"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) (anything else running on the 2 CPUs skews the numbers)"
# MODES="off 0pct 1pct 100pct" adds `0pct`: export on but OTEL_TRACES_SAMPLER=always_off, which
# isolates what opening (unsampled) spans costs from what exporting them costs.
read -r -a modes <<<"${MODES:-off 1pct 100pct}"
[[ " ${modes[*]} " == *" off "* ]] || { echo "traces.sh: MODES must include off (the baseline)" >&2; exit 2; }
for round in $(seq "$rounds"); do
  echo "round $round"
  for mode in "${modes[@]}"; do
    case $mode in
      off) vars=() ;;
      0pct) vars=(OTEL_EXPORTER_OTLP_ENDPOINT="$sink" OTEL_TRACES_SAMPLER=always_off) ;;
      1pct) vars=(OTEL_EXPORTER_OTLP_ENDPOINT="$sink" OTEL_TRACES_SAMPLER=traceidratio OTEL_TRACES_SAMPLER_ARG=0.01) ;;
      100pct) vars=(OTEL_EXPORTER_OTLP_ENDPOINT="$sink" OTEL_TRACES_SAMPLER=traceidratio OTEL_TRACES_SAMPLER_ARG=1.0) ;;
      *) echo "traces.sh: unknown mode $mode (off, 0pct, 1pct, 100pct)" >&2; exit 2 ;;
    esac
    sink_before=$(sink_spans)
    start "$mode-$round" "${vars[@]}"
    # Warm-up: connections, allocator, page cache.
    taskset -c 1 h2load -n 2000 -c 2 -m 4 -d "$work/health.grpc" "${grpc[@]}" "http://$api$health" >/dev/null
    taskset -c 1 h2load -n 2000 -c 2 -m 4 -d "$work/balance.grpc" "${grpc[@]}" -H "authorization: Bearer $token" "http://$api$balance" >/dev/null
    load "health-$mode round-$round" "$health" "$work/health.grpc"
    load "balance-$mode round-$round" "$balance" "$work/balance.grpc" "authorization: Bearer $token"
    expected=$((requests + 2000))
    for path in "$health" "$balance"; do
      got=$(ok "$path"); wrong=$(bad "$path")
      if [ "$got" != "$expected" ] || [ "$wrong" != 0 ]; then
        echo "traces.sh: $mode round $round: $path ok=$got other=$wrong, expected ok=$expected" >&2
        exit 1
      fi
    done
    if [ "$mode" != off ]; then
      sleep 1.5 # one more batch delay: what is still queued gets exported
      ended=$(spans ended); exported=$(spans exported); failed=$(spans failed)
      printf '  %-26s ended %s, exported %s, failed %s, dropped (queue full) %s; the sink received %s\n' \
        "spans $mode" "$ended" "$exported" "$failed" "$((ended - exported - failed))" "$(( $(sink_spans) - sink_before ))"
    fi
    kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
  done
done

median() { sort -g "$work/$1.rps" | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
ratio() { awk -v a="$(median "$1")" -v b="$(median "$2")" 'BEGIN {printf "%.2f", a / b}'; }
echo "median of $rounds rounds (req/s), and its ratio to off:"
for call in health balance; do
  line=$(printf '  %-8s' "$call")
  for mode in "${modes[@]}"; do
    line+=$(printf '  %s %9s' "$mode" "$(median "$call-$mode")")
    [ "$mode" = off ] || line+=$(printf ' (%s)' "$(ratio "$call-$mode" "$call-off")")
  done
  echo "$line"
done
echo "goal: 1pct/off >= 0.90, 100pct/off >= 0.75"
echo "every call succeeded (rpc_calls_total{code=\"ok\"} = calls sent, no other code)"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
