#!/usr/bin/env bash
# Gateway benchmark: builds the gateway and loadgen in release mode, starts the gateway on a private
# queue and key prefix, drives it at CONCURRENCY (default 32) for SECONDS (default 10) per phase, then
# removes what it created. Usage: bench/gateway.sh [CONCURRENCY] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
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
  rabbitmqctl -q delete_queue "bench.mandates.$run" >/dev/null 2>&1 || true
  rabbitmqctl -q delete_queue "bench.mandates.$run.dlq" >/dev/null 2>&1 || true
  rabbitmqctl -q delete_queue "bench.mandates.$run.dlq.parked" >/dev/null 2>&1 || true
  redis-cli --scan --pattern "$run:*" | xargs -r -n 1000 redis-cli del >/dev/null
}
trap cleanup EXIT
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$port/health" >/dev/null && break
  sleep 0.1
done
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; redis, rabbitmq, gateway and loadgen share it"
target/release/loadgen --url "http://127.0.0.1:$port" --secret "$secret" \
  --concurrency "$concurrency" --seconds "$seconds"
