#!/usr/bin/env bash
# Event-stream benchmark: builds the gateway and `streams` in release mode, starts the gateway on a private
# key prefix and queue, opens STREAMS event streams over TASKS tasks, then appends RATE tick events per
# second for SECONDS and reports the gateway's memory and the delivery latency. Removes what it created.
# Usage: bench/streams.sh [STREAMS] [TASKS] [RATE] [SECONDS]   (defaults 10000 2000 1000 20)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
streams=${1:-10000}
tasks=${2:-2000}
rate=${3:-1000}
seconds=${4:-20}
scripts/ensure-services.sh >/dev/null
cargo build --release -q -p gateway -p bench --bin gateway --bin streams
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
run=streams$$
secret="bench-secret-$run"
port=18080
env PORT=$port HOST=127.0.0.1 SUPABASE_JWT_SECRET="$secret" DAILY_TICK_LIMIT=10000000 MAX_TICKS_PER_TASK=1000 \
  MAX_ACTIVE_TASKS_PER_USER=1000 AGENT_INPUT_QUEUE="bench.mandates.$run" REDIS_KEY_PREFIX="$run:" RUST_LOG=warn \
  target/release/gateway &
gateway=$!
cleanup() {
  kill "$gateway" 2>/dev/null || true
  wait "$gateway" 2>/dev/null || true
  remove_run_state "bench.mandates.$run" "$run"
}
trap cleanup EXIT
wait_for_health "$port"
machine "redis, rabbitmq, the gateway and the client"
target/release/streams --url "http://127.0.0.1:$port" --secret "$secret" --prefix "$run:" --pid "$gateway" \
  --streams "$streams" --tasks "$tasks" --rate "$rate" --seconds "$seconds"
