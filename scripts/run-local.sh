#!/usr/bin/env bash
# Brings up the whole fleet on this machine, without Docker, and runs a task end to end:
#   Redis and RabbitMQ (started if not running), the gateway (:8080), two agents (health :8081, :8083),
#   the metrics sidecar (:8082; CloudWatch off unless AWS settings are present).
# With no MODEL_API_URL set it starts the project's fixture model: a SCRIPTED STAND-IN, NOT AN LLM, so the
# pipeline can be seen working offline. With MODEL_API_URL (and OPENAI_API_KEY when needed) it uses that.
# It prints a development JWT, submits a sample mandate and follows it to its terminal status, printing
# each tick. Ctrl-C stops everything it started, and nothing else.
#
#   scripts/run-local.sh          keep the fleet running after the sample task (Ctrl-C to stop)
#   scripts/run-local.sh --once   stop after the sample task; exit 0 only if it completed
set -euo pipefail
cd "$(dirname "$0")/.."

once=""
[ "${1:-}" = "--once" ] && once=1
say() { printf '\033[1m[run-local]\033[0m %s\n' "$*"; }

scripts/ensure-services.sh
scripts/ensure-chromium.sh >/dev/null
EMBEDDING_MODEL_DIR=$(scripts/fetch-embedding-model.sh | tail -n 1)
export EMBEDDING_MODEL_DIR
say "building (debug) gateway, agent, metrics-sidecar, fixture-model, euglena (the CLI)"
cargo build -q -p gateway -p agent -p metrics-sidecar -p euglena-tests -p euglena-cli --bins

run_dir=$(mktemp -d /tmp/euglena-local.XXXXXX)
pids=()
stop() {
  trap - INT TERM EXIT
  say "stopping what this script started"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run_dir"
}
trap stop INT TERM EXIT

# Where cargo put the binaries (CARGO_TARGET_DIR when set, as cargo itself does).
bin=${CARGO_TARGET_DIR:-target}/debug
export REDIS_KEY_PREFIX=${REDIS_KEY_PREFIX:-local:}
export AGENT_INPUT_QUEUE=${AGENT_INPUT_QUEUE:-agent.mandates}
export SUPABASE_JWT_SECRET=${SUPABASE_JWT_SECRET:-local-dev-secret-$RANDOM$RANDOM}
export LOG_FORMAT=${LOG_FORMAT:-json}
export RUST_LOG=${RUST_LOG:-info}
# Heartbeat every second so the demo shows each tick as it happens.
export AGENT_STATUS_TIME=${AGENT_STATUS_TIME:-1}
export RABBITMQ_MANAGEMENT_URL=${RABBITMQ_MANAGEMENT_URL:-http://guest:guest@127.0.0.1:15672}

if [ -z "${MODEL_API_URL:-}" ]; then
  say "no MODEL_API_URL: starting the fixture model (a scripted stand-in, NOT an LLM) on :8099"
  "$bin"/fixture-model 8099 >"$run_dir/fixture-model.log" 2>&1 &
  pids+=($!)
  export MODEL_API_URL=http://127.0.0.1:8099/v1 MODEL_NAME=fixture-model
else
  say "using the model at $MODEL_API_URL (${MODEL_NAME:-gpt-4o-mini})"
fi

PORT=8080 "$bin"/gateway 2>"$run_dir/gateway.log" &
pids+=($!)
for n in 1 2; do
  HEALTH_PORT=$((8079 + 2 * n)) WORKER_ID="local-agent-$n" QDRANT_PATH="$run_dir/qdrant-$n" \
    "$bin"/agent 2>"$run_dir/agent-$n.log" &
  pids+=($!)
done
PORT=8082 "$bin"/metrics-sidecar 2>"$run_dir/metrics-sidecar.log" &
pids+=($!)

wait_http() { # url name
  for _ in $(seq 300); do
    curl -fs "$1" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  say "$2 did not come up; its log:"; tail -n 20 "$run_dir/$2.log" >&2; return 1
}
wait_http http://127.0.0.1:8080/health gateway
wait_http http://127.0.0.1:8081/health agent-1
wait_http http://127.0.0.1:8083/health agent-2
wait_http http://127.0.0.1:8082/health metrics-sidecar
say "fleet up; logs in $run_dir"
say "live agents: $(curl -fsS http://127.0.0.1:8080/agents/count)"

token=$(scripts/dev-jwt.sh "$SUPABASE_JWT_SECRET" local-user)
cat <<MSG

Dashboard (signs in with a development token for user local-user, valid 12 h; the token stays in the
link's fragment, which the browser never sends to a server):
  http://127.0.0.1:8080/#token=$token

The CLI:
  export EUGLENA_TOKEN=$token
  "$bin"/euglena submit "Find the tallest tree in the world" --max-ticks 5 --wait
  "$bin"/euglena list ; "$bin"/euglena agents

Or plain HTTP:
  export TOKEN=$token
  curl -s -X POST http://127.0.0.1:8080/tasks -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
       -d '{"mandate": "Find the tallest tree in the world", "max_ticks": 5}'
  curl -N http://127.0.0.1:8080/tasks/<correlation_id>/events -H "Authorization: Bearer \$TOKEN"
  curl -s http://127.0.0.1:8080/agents/count ; curl -s http://127.0.0.1:8082/metrics

MSG
created=$(curl -fsS -X POST http://127.0.0.1:8080/tasks -H "Authorization: Bearer $token" \
  -H 'Content-Type: application/json' -d '{"mandate": "Find the tallest tree in the world", "max_ticks": 5}')
id=$(printf '%s' "$created" | python3 -c 'import json,sys; print(json.load(sys.stdin)["correlation_id"])')
say "submitted task $id"
last=""
status=""
for _ in $(seq 600); do
  record=$(curl -fsS "http://127.0.0.1:8080/tasks/$id" -H "Authorization: Bearer $token")
  status=$(printf '%s' "$record" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
  line=$(printf '%s' "$record" | python3 -c 'import json,sys; t=json.load(sys.stdin); print("%s, tick %s/%s" % (t["status"], t["tick"], t["max_ticks"]))')
  [ "$line" != "$last" ] && say "task $id: $line" && last=$line
  case "$status" in completed|failed|cancelled) break ;; esac
  sleep 0.2
done
printf '%s' "$record" | python3 -m json.tool

if [ -n "$once" ]; then
  [ "$status" = completed ] || { say "the sample task did not complete"; exit 1; }
  say "the sample task completed; stopping (--once)"
  exit 0
fi
say "the fleet keeps running; press Ctrl-C to stop it"
wait
