#!/usr/bin/env bash
# Brings up the whole fleet on this machine, without Docker, and runs a task end to end:
#   Redis and RabbitMQ (started if not running), the gateway (:8080), two agents (health :8081, :8083),
#   the metrics sidecar (:8082; CloudWatch off unless AWS settings are present).
# With no MODEL_API_URL set it starts the project's fixture model: a SCRIPTED STAND-IN, NOT AN LLM, so the
# pipeline can be seen working offline. With MODEL_API_URL (and OPENAI_API_KEY when needed) it uses that.
# It prints a development JWT, submits a sample mandate and follows it to its terminal status, printing
# each tick. Ctrl-C stops everything it started, and nothing else.
# Each component connects as a user of its own (least privilege, docs/security.md): the script creates (or
# updates) euglena-gateway, euglena-agent and euglena-metrics-sidecar in the local Redis (ACL SETUSER) and
# RabbitMQ (rabbitmqctl, as root or through sudo) with the rules of docker/euglena-users.sh, and passwords
# generated once into .local/credentials (mode 600), and imports the queue topology, which those users may
# not create. Redis's default user and RabbitMQ's guest are left as they are.
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
# The sidecar signs in to the management API with its own user (from its RABBITMQ_URL).
export RABBITMQ_MANAGEMENT_URL=${RABBITMQ_MANAGEMENT_URL:-http://127.0.0.1:15672}

# --- a Redis and a RabbitMQ user per component -------------------------------------------------------------
users=docker/euglena-users.sh
components=(gateway agent metrics-sidecar)
credentials=.local/credentials
if [ ! -s "$credentials" ]; then
  mkdir -p .local
  (umask 077 && for c in "${components[@]}"; do printf '%s=%s\n' "$c" "$(openssl rand -hex 24)"; done >"$credentials")
fi
password_of() { sed -n "s/^$1=//p" "$credentials"; }
# rabbitmqctl needs root (the node's Erlang cookie).
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
say "creating the components' users in Redis and RabbitMQ (passwords in $credentials)"
existing_users=$(as_root rabbitmqctl -q list_users | awk '{print $1}')
for component in "${components[@]}"; do
  user=$(sh "$users" name "$component")
  password=$(password_of "$component")
  [ -n "$password" ] || { say "$credentials has no password for $component: delete the file and rerun"; exit 1; }
  mapfile -t rules < <(sh "$users" redis-rules "$component")
  mapfile -t permissions < <(sh "$users" rabbitmq-permissions "$component")
  [ "${#rules[@]}" -gt 3 ] && [ "${#permissions[@]}" -eq 4 ] || { say "$users failed for $component"; exit 1; }
  redis-cli -h 127.0.0.1 ACL SETUSER "$user" reset on ">$password" "${rules[@]}" >/dev/null
  if grep -qx -- "$user" <<<"$existing_users"; then
    as_root rabbitmqctl -q change_password "$user" "$password" >/dev/null
  else
    as_root rabbitmqctl -q add_user "$user" "$password" >/dev/null
  fi
  as_root rabbitmqctl -q set_permissions -p / "$user" "${permissions[0]}" "${permissions[1]}" "${permissions[2]}" >/dev/null
  # shellcheck disable=SC2086 # no tags is an empty list
  as_root rabbitmqctl -q set_user_tags "$user" ${permissions[3]} >/dev/null
done
# The topology (exchanges, queues, bindings): the components' users may not create it. An existing queue
# keeps its arguments (an import never changes them).
say "creating the queue topology of $AGENT_INPUT_QUEUE"
sh "$users" rabbitmq-topology | as_root rabbitmqctl -q import_definitions >/dev/null
# REDIS_URL and RABBITMQ_URL of a component: its own user (the names and passwords are URL-safe).
redis_url() { printf 'redis://%s:%s@127.0.0.1:6379/0' "$(sh "$users" name "$1")" "$(password_of "$1")"; }
amqp_url() { printf 'amqp://%s:%s@127.0.0.1:5672/%%2f' "$(sh "$users" name "$1")" "$(password_of "$1")"; }

if [ -z "${MODEL_API_URL:-}" ]; then
  say "no MODEL_API_URL: starting the fixture model (a scripted stand-in, NOT an LLM) on :8099"
  "$bin"/fixture-model 8099 >"$run_dir/fixture-model.log" 2>&1 &
  pids+=($!)
  export MODEL_API_URL=http://127.0.0.1:8099/v1 MODEL_NAME=fixture-model
else
  say "using the model at $MODEL_API_URL (${MODEL_NAME:-gpt-4o-mini})"
fi

wait_http() { # url name [text the answer must contain]
  for _ in $(seq 300); do
    body=$(curl -fs "$1" 2>/dev/null) && [[ $body == *"${3:-}"* ]] && return 0
    sleep 0.2
  done
  say "$2 did not come up; its log:"; tail -n 20 "$run_dir/$2.log" >&2; return 1
}

# The agents first, so that the gateway's first task finds one waiting.
for n in 1 2; do
  REDIS_URL=$(redis_url agent) RABBITMQ_URL=$(amqp_url agent) \
    HEALTH_PORT=$((8079 + 2 * n)) WORKER_ID="local-agent-$n" QDRANT_PATH="$run_dir/qdrant-$n" \
    "$bin"/agent 2>"$run_dir/agent-$n.log" &
  pids+=($!)
done
wait_http http://127.0.0.1:8081/health agent-1 '"status":"ok"'
wait_http http://127.0.0.1:8083/health agent-2 '"status":"ok"'
REDIS_URL=$(redis_url gateway) RABBITMQ_URL=$(amqp_url gateway) PORT=8080 \
  "$bin"/gateway 2>"$run_dir/gateway.log" &
pids+=($!)
REDIS_URL=$(redis_url metrics-sidecar) RABBITMQ_URL=$(amqp_url metrics-sidecar) PORT=8082 \
  "$bin"/metrics-sidecar 2>"$run_dir/metrics-sidecar.log" &
pids+=($!)
wait_http http://127.0.0.1:8080/health gateway
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
  # The sidecar reads the depths and in-flight count with its own user every 10 s (a new queue's management
  # statistics take a few seconds to appear).
  wait_http http://127.0.0.1:8082/health metrics-sidecar '"status":"ok"' \
    || { say "the metrics sidecar cannot read the queue figures with its user"; exit 1; }
  say "the sample task completed; the sidecar reads the queue; stopping (--once)"
  exit 0
fi
say "the fleet keeps running; press Ctrl-C to stop it"
wait
