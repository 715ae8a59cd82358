#!/usr/bin/env bash
# Brings up what exists of the fleet on this machine, without Docker: Redis and RabbitMQ (started if
# not running) and the gateway on :8080. Prints a development JWT and a sample request, submits a
# sample mandate and shows its record. Ctrl-C stops what this script started, and nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-services.sh
cargo build -q -p gateway

export PORT=${PORT:-8080}
export SUPABASE_JWT_SECRET=${SUPABASE_JWT_SECRET:-local-dev-secret-$(date +%s)}
export LOG_FORMAT=${LOG_FORMAT:-pretty}
export RUST_LOG=${RUST_LOG:-info,gateway=info}

pids=()
stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped the gateway"
}
trap stop INT TERM EXIT

target/debug/gateway &
pids+=($!)
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$PORT/health"; echo

token=$(scripts/dev-jwt.sh "$SUPABASE_JWT_SECRET" dev-user)
cat <<MSG

Development JWT (user dev-user, valid 12 h):
  export TOKEN=$token

Sample requests:
  curl -s -X POST http://127.0.0.1:$PORT/tasks -H "Authorization: Bearer \$TOKEN" \\
       -H 'Content-Type: application/json' -d '{"mandate": "Summarise the Rust 2024 edition", "max_ticks": 5}'
  curl -s http://127.0.0.1:$PORT/tasks/<correlation_id> -H "Authorization: Bearer \$TOKEN"
  curl -s http://127.0.0.1:$PORT/agents/count

MSG
echo "Submitting a sample mandate:"
created=$(curl -fsS -X POST "http://127.0.0.1:$PORT/tasks" -H "Authorization: Bearer $token" \
  -H 'Content-Type: application/json' -d '{"mandate": "Summarise the Rust 2024 edition", "max_ticks": 5}')
echo "$created"
id=$(printf '%s' "$created" | sed -n 's/.*"correlation_id":"\([^"]*\)".*/\1/p')
curl -fsS "http://127.0.0.1:$PORT/tasks/$id" -H "Authorization: Bearer $token"; echo
echo
echo "No agent runs yet in this script (the agent issue is open), so the task waits in the queue."
echo "The gateway keeps running; press Ctrl-C to stop it."
wait
