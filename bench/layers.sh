#!/usr/bin/env bash
# The per-request cost of the gateway's layers: `GET /tasks/{id}` on the gateway against a bare axum
# handler doing the same HGETALL (bench/src/bare.rs), alternating in one run over the same tasks, in
# release mode. Prints each phase and the gateway's throughput as a share of the bare handler's.
# Usage: bench/layers.sh [CONCURRENCY] [SECONDS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
concurrency=${1:-32}
seconds=${2:-5}
rounds=${3:-3}
scripts/ensure-services.sh >/dev/null
cargo build --release -q -p gateway -p bench --bin gateway --bin loadgen --bin bare
run=layers$$
secret="bench-secret-$run"
port=18080
bare_port=18090
env PORT=$port HOST=127.0.0.1 SUPABASE_JWT_SECRET="$secret" DAILY_TICK_LIMIT=10000000 MAX_ACTIVE_TASKS_PER_USER=1000000 \
  AGENT_INPUT_QUEUE="bench.mandates.$run" REDIS_KEY_PREFIX="$run:" RUST_LOG=warn \
  target/release/gateway &
gateway=$!
target/release/bare --port "$bare_port" --prefix "$run:" >/dev/null &
bare=$!
cleanup() {
  kill "$gateway" "$bare" 2>/dev/null || true
  wait "$gateway" "$bare" 2>/dev/null || true
  remove_run_state "bench.mandates.$run" "$run"
}
trap cleanup EXIT
wait_for_health "$port"
machine "redis, rabbitmq, both servers and loadgen"
target/release/loadgen --url "http://127.0.0.1:$port" --secret "$secret" \
  --concurrency "$concurrency" --seconds "$seconds" --bare "http://127.0.0.1:$bare_port" --rounds "$rounds"
