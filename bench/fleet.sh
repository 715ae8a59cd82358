#!/usr/bin/env bash
# Fleet benchmark: tasks of 5 ticks (THINK x4, each writing and querying memory, then EXIT) through the
# whole fleet with the fixture model answering instantly. Prints tasks/s for each (agents, concurrency)
# pair; the p50/p99 of the agents' own work per tick (prompt, answer parsing, memory; not the model's
# time), wall-clock, read from the agents' debug lines; and the agents' CPU time per tick (everything the
# agent processes did during the run, from /proc, divided by the ticks they ran). Each configuration first
# runs two tasks per task slot, unmeasured, in which each agent loads its embedding model.
#   bench/fleet.sh [TASKS]      (default 40 tasks per configuration)
#   PROFILE=debug bench/fleet.sh   use the debug build (the embedding model is optimised in it too) instead of release
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
tasks=${1:-40}
scripts/ensure-services.sh >/dev/null
EMBEDDING_MODEL_DIR=$(scripts/fetch-embedding-model.sh | tail -n 1)
export EMBEDDING_MODEL_DIR
profile=${PROFILE:-release}
if [ "$profile" = release ]; then
  cargo build --release -q -p gateway -p agent -p euglena-tests --bins
else
  cargo build -q -p gateway -p agent -p euglena-tests --bins
fi
bin=target/$profile
run_dir=$(mktemp -d /tmp/euglena-fleet-bench.XXXXXX)
pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}
trap 'stop_all; rm -rf "$run_dir"' EXIT
echo "profile $profile; machine: $(nproc) cores; redis, rabbitmq, gateway, agents and the fixture model share it"
printf '%-7s %-12s %-8s %-10s %-16s %-16s %-16s\n' agents concurrency tasks "tasks/s" "tick work p50" "tick work p99" "agent CPU/tick"
for agents in 1 2; do
  for concurrency in 1 8; do
    run="fleetbench$$-$agents-$concurrency"
    export REDIS_KEY_PREFIX="$run:" AGENT_INPUT_QUEUE="bench.$run" SUPABASE_JWT_SECRET="s-$run" \
      DAILY_TICK_LIMIT=10000000 MAX_ACTIVE_TASKS_PER_USER=1000000 AGENT_CONCURRENCY=$concurrency \
      MODEL_API_URL=http://127.0.0.1:18099/v1 \
      MODEL_NAME=fixture-model LOG_FORMAT=json RUST_LOG=warn,agent::mind=debug AGENT_STATUS_TIME=1
    $bin/fixture-model 18099 --bench >/dev/null 2>&1 &
    pids+=($!)
    PORT=18080 $bin/gateway 2>/dev/null &
    pids+=($!)
    agent_pids=()
    for n in $(seq "$agents"); do
      HEALTH_PORT=$((18180 + n)) QDRANT_PATH="$run_dir/$run-$n" WORKER_ID="bench-$n" \
        $bin/agent 2>"$run_dir/agent-$run-$n.log" &
      pids+=($!)
      agent_pids+=($!)
    done
    for port in 18080 $(seq 18181 $((18180 + agents))); do
      for _ in $(seq 300); do curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break; sleep 0.2; done
    done
    token=$(scripts/dev-jwt.sh "$SUPABASE_JWT_SECRET" bench-user)
    python3 - "$tasks" "$token" "$agents" "$concurrency" "$run_dir" "$run" "${agent_pids[*]}" <<'PY'
import json, os, sys, time, urllib.request, glob, statistics
tasks, token, agents, concurrency, run_dir, run = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
agent_pids = sys.argv[7].split()
def agent_cpu_seconds():
    # utime + stime (fields 14 and 15 of /proc/PID/stat, after the command name in parentheses).
    total = 0
    for pid in agent_pids:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")

def call(method, path, body=None):
    req = urllib.request.Request("http://127.0.0.1:18080" + path, method=method,
        data=json.dumps(body).encode() if body else None,
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)
def run_tasks(count):
    ids = [call("POST", "/tasks", {"mandate": "benchmark mandate", "max_ticks": 10})["correlation_id"] for _ in range(count)]
    pending = set(ids)
    while pending:
        for i in list(pending):
            status = call("GET", "/tasks/" + i)["status"]
            if status in ("completed", "failed"):
                assert status == "completed", status
                pending.discard(i)
        time.sleep(0.05)
def work_samples():
    # The agents' own work per tick, in microseconds, one list per agent log.
    logs = []
    for path in sorted(glob.glob(f"{run_dir}/agent-{run}-*.log")):
        logs.append([json.loads(line)["fields"]["local_work_us"] for line in open(path) if '"local_work_us"' in line])
    return logs
# Warm-up, not measured: each agent loads its embedding model and opens its store on its first memory tick.
run_tasks(2 * int(agents) * int(concurrency))
warm = [len(samples) for samples in work_samples()]
cpu_before = agent_cpu_seconds()
started = time.time()
run_tasks(tasks)
elapsed = time.time() - started
cpu = agent_cpu_seconds() - cpu_before
work = sorted(w for samples, skip in zip(work_samples(), warm) for w in samples[skip:])
p = lambda q: f"{work[min(len(work) - 1, int(q * len(work)))] / 1000:.2f} ms" if work else "n/a"
cpu_per_tick = f"{cpu / len(work) * 1000:.2f} ms" if work else "n/a"
print(f"{agents:<7} {concurrency:<12} {tasks:<8} {tasks / elapsed:<10.1f} {p(0.5):<16} {p(0.99):<16} {cpu_per_tick:<16}")
PY
    stop_all
    remove_run_state "bench.$run" "$run"
  done
done
