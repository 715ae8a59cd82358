#!/usr/bin/env bash
# A/B of gateway builds: runs `loadgen` against each given gateway binary in turn, RUNS rounds, alternating,
# so both see the same machine. Build the binaries first (for an older commit: a `git worktree` of it,
# `cargo build --release -p gateway`, and a copy of target/release/gateway).
# Usage: bench/gateway-ab.sh RUNS CONCURRENCY SECONDS BINARY...
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
runs=$1 concurrency=$2 seconds=$3
shift 3
scripts/ensure-services.sh >/dev/null
cargo build --release -q -p bench --bin loadgen
port=18080
machine "redis, rabbitmq, gateway and loadgen"
for round in $(seq "$runs"); do
  for binary in "$@"; do
    run=ab$$-$round
    secret="bench-secret-$run"
    env PORT=$port HOST=127.0.0.1 SUPABASE_JWT_SECRET="$secret" DAILY_TICK_LIMIT=10000000 \
      MAX_ACTIVE_TASKS_PER_USER=1000000 AGENT_INPUT_QUEUE="bench.mandates.$run" REDIS_KEY_PREFIX="$run:" \
      RUST_LOG=error "$binary" &
    gateway=$!
    wait_for_health "$port"
    echo "== round $round: $binary"
    target/release/loadgen --url "http://127.0.0.1:$port" --secret "$secret" \
      --concurrency "$concurrency" --seconds "$seconds" | grep -v '^loadgen'
    kill "$gateway"; wait "$gateway" 2>/dev/null || true
    remove_run_state "bench.mandates.$run" "$run"
  done
done
