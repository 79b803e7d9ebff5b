#!/usr/bin/env bash
# Checkout end to end (see the comment at the top of bench/src/checkout_bench.rs): QuoteCart
# throughput on a 3-line cart, and PlaceOrder alone (carts prepared and quoted beforehand) with
# the zero-latency PSP simulator, each at concurrency 1 and 32, then every order checked
# (GetOrder: payment CAPTURED; ListOrders count). Starts its own `commerce serve` without Redis
# (embedded store in a temporary directory, in-process bus) on free ports and stops it at the end.
#
#   bench/checkout.sh [--quotes N] [--orders K] [--connections C]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p commerce -p bench
exec target/release/checkout-bench "$@"
