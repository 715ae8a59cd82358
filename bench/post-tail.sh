#!/usr/bin/env bash
# POST /tasks against the broker's own floor: alternates, ROUNDS times, the broker alone (32 publishers,
# persistent, confirmed, mandatory, quorum queue: what one POST costs the broker) and the gateway's POST
# phase at the same concurrency, so both p99s come from the same minutes of the same machine.
# Usage: bench/post-tail.sh [ROUNDS] [CONCURRENCY] [SECONDS]   (defaults 3 32 10)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3} concurrency=${2:-32} seconds=${3:-10}
cargo build --release -q -p gateway -p bench --bin gateway --bin loadgen --bin broker
for round in $(seq "$rounds"); do
  echo "== round $round"
  target/release/broker --concurrency "$concurrency" --seconds "$seconds"
  bench/gateway-ab.sh 1 "$concurrency" "$seconds" target/release/gateway | grep -E '^POST'
done
