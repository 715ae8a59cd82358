#!/usr/bin/env bash
# A/B of gateway builds: runs `loadgen` against each given gateway binary in turn, RUNS rounds, alternating,
# so both see the same machine. Build the binaries first (for an older commit: a `git worktree` of it,
# `cargo build --release -p gateway`, and a copy of target/release/gateway).
# Usage: bench/gateway-ab.sh RUNS CONCURRENCY SECONDS BINARY...
set -euo pipefail
cd "$(dirname "$0")/.."
runs=$1 concurrency=$2 seconds=$3
shift 3
scripts/ensure-services.sh >/dev/null
cargo build --release -q -p bench --bin loadgen
port=18080
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; redis, rabbitmq, gateway and loadgen share it"
for round in $(seq "$runs"); do
  for binary in "$@"; do
    run=ab$$-$round
    secret="bench-secret-$run"
    env PORT=$port HOST=127.0.0.1 SUPABASE_JWT_SECRET="$secret" DAILY_TICK_LIMIT=10000000 \
      MAX_ACTIVE_TASKS_PER_USER=1000000 AGENT_INPUT_QUEUE="bench.mandates.$run" REDIS_KEY_PREFIX="$run:" \
      RUST_LOG=error "$binary" &
    gateway=$!
    for _ in $(seq 100); do
      curl -fs "http://127.0.0.1:$port/health" >/dev/null && break
      sleep 0.1
    done
    echo "== round $round: $binary"
    target/release/loadgen --url "http://127.0.0.1:$port" --secret "$secret" \
      --concurrency "$concurrency" --seconds "$seconds" | grep -v '^loadgen'
    kill "$gateway"; wait "$gateway" 2>/dev/null || true
    rabbitmqctl -q delete_queue "bench.mandates.$run" >/dev/null 2>&1 || true
    rabbitmqctl -q delete_queue "bench.mandates.$run.dlq" >/dev/null 2>&1 || true
    rabbitmqctl -q delete_queue "bench.mandates.$run.dlq.parked" >/dev/null 2>&1 || true
    redis-cli --scan --pattern "$run:*" | xargs -r -n 1000 redis-cli del >/dev/null
  done
done
