#!/usr/bin/env bash
# Gateway benchmark: builds the gateway and loadgen in release mode, starts the gateway on a private
# queue and key prefix, drives it at CONCURRENCY (default 32) for SECONDS (default 10) per phase, then
# removes what it created. Usage: bench/gateway.sh [CONCURRENCY] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
concurrency=${1:-32}
seconds=${2:-10}
scripts/ensure-services.sh >/dev/null
cargo build --release -q -p gateway -p bench
run=bench$$
secret="bench-secret-$run"
port=18080
env PORT=$port HOST=127.0.0.1 SUPABASE_JWT_SECRET="$secret" DAILY_TICK_LIMIT=10000000 MAX_ACTIVE_TASKS_PER_USER=1000000 \
  AGENT_INPUT_QUEUE="bench.mandates.$run" REDIS_KEY_PREFIX="$run:" RUST_LOG=warn \
  target/release/gateway &
gateway=$!
cleanup() {
  kill "$gateway" 2>/dev/null || true
  wait "$gateway" 2>/dev/null || true
  remove_run_state "bench.mandates.$run" "$run"
}
trap cleanup EXIT
wait_for_health "$port"
machine "redis, rabbitmq, gateway and loadgen"
target/release/loadgen --url "http://127.0.0.1:$port" --secret "$secret" \
  --concurrency "$concurrency" --seconds "$seconds"
