#!/usr/bin/env bash
# Footprint benchmark: what ONE agent process, with its headless Chromium, costs in memory and CPU per task it
# holds at once. For each N in 1 2 4 8 16 it starts a fresh release agent with AGENT_CONCURRENCY=N, runs one
# unmeasured warm-up task (Chromium launched, embedding model loaded, the model answering at once), measures
# the idle footprint, then submits N tasks at once and samples every 0.5 s until they all end.
#
# Each task (fixture-model --footprint): VISIT, THINK x 4 (the VISITs to JavaScript-built pages served on
# loopback by fixture-pages, each a few hundred DOM nodes and a few MB of JS objects; each THINK writes and
# queries memory), EXIT, then the synthesis; 9 ticks and 10 model calls, every answer paced 1-3 s (mean 2 s).
#
# Memory is PSS summed over the agent and all its descendants (Chromium and its renderers) from
# /proc/PID/smaps_rollup, with the RSS sum beside it; CPU is utime+stime of the agent and all descendants,
# exited ones included (each live process's cutime+cstime holds the children it reaped), over the measured
# batch. MB here are MiB; Fargate's "GB" are GiB.
#   bench/footprint.sh [N...]      (default 1 2 4 8 16)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
levels=("$@")
[ ${#levels[@]} -gt 0 ] || levels=(1 2 4 8 16)
scripts/ensure-services.sh >/dev/null
scripts/ensure-chromium.sh >/dev/null 2>&1
EMBEDDING_MODEL_DIR=$(scripts/fetch-embedding-model.sh | tail -n 1)
export EMBEDDING_MODEL_DIR
cargo build --release -q -p gateway -p agent -p euglena-tests --bins
bin=target/release
gateway_port=18380 agent_port=18381 model_port=18399 pages_port=18398
run="footprint$$"
run_dir=$(mktemp -d /tmp/euglena-footprint.XXXXXX)
pids=()
agent_pid=""
# The agent's process tree (Chromium and its helpers), listed before the agent stops so that any process it
# leaves behind can be stopped by its id.
tree_of() {
  local child
  echo "$1"
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do tree_of "$child"; done
}
stop_agent() {
  local tree pid
  if [ -n "$agent_pid" ]; then
    tree=$(tree_of "$agent_pid")
    kill -TERM "$agent_pid" 2>/dev/null || true
    wait "$agent_pid" 2>/dev/null || true
    sleep 1
    for pid in $tree; do
      # A zombie has exited already (its new parent reaps it); only a live process is stopped.
      if [ -n "$(ps -o stat= -p "$pid" 2>/dev/null | grep -v Z)" ]; then
        echo "left behind by the agent: $(ps -o pid=,args= -p "$pid" | cut -c1-100); stopping it" >&2
        kill -TERM "$pid" 2>/dev/null || true
      fi
    done
    agent_pid=""
  fi
}
stop_all() {
  stop_agent
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
  remove_run_state "bench.$run" "$run"
}
trap 'stop_all; rm -rf "$run_dir"' EXIT

export REDIS_KEY_PREFIX="$run:" AGENT_INPUT_QUEUE="bench.$run" SUPABASE_JWT_SECRET="s-$run" \
  DAILY_TICK_LIMIT=10000000 MAX_ACTIVE_TASKS_PER_USER=1000000 \
  MODEL_API_URL=http://127.0.0.1:$model_port/v1 MODEL_NAME=fixture-model \
  VISIT_ALLOWLIST=127.0.0.1:$pages_port CHROMIUM_PATH=${CHROMIUM_PATH:-/usr/bin/chromium} \
  LOG_FORMAT=json RUST_LOG=warn AGENT_STATUS_TIME=1
$bin/fixture-pages $pages_port >"$run_dir/pages.log" 2>&1 &
pids+=($!)
$bin/fixture-model $model_port --footprint "http://127.0.0.1:$pages_port" >"$run_dir/model.log" 2>&1 &
pids+=($!)
PORT=$gateway_port $bin/gateway 2>"$run_dir/gateway.log" &
pids+=($!)
wait_for_health $gateway_port
token=$(scripts/dev-jwt.sh "$SUPABASE_JWT_SECRET" footprint-user)

echo "release build; $("${CHROMIUM_PATH:-/usr/bin/chromium}" --version 2>/dev/null | tail -n 1)"
machine "redis, rabbitmq, the gateway, the fixture model and pages, the sampler and one agent"
echo "BROWSER_MAX_TABS=${BROWSER_MAX_TABS:-unset (agent default)}; AGENT_CONCURRENCY=N"
echo "each N: a fresh agent, one unmeasured warm-up task, 3 s idle, then N tasks at once (9 ticks each, model paced 1-3 s)"
for n in "${levels[@]}"; do
  AGENT_CONCURRENCY=$n HEALTH_PORT=$agent_port QDRANT_PATH="$run_dir/qdrant-$n" WORKER_ID="footprint-$n" \
    $bin/agent 2>"$run_dir/agent-$n.log" &
  agent_pid=$!
  for _ in $(seq 300); do curl -fs "http://127.0.0.1:$agent_port/health" >/dev/null 2>&1 && break; sleep 0.2; done
  python3 - "$n" "$token" "$agent_pid" "$gateway_port" "$pages_port" "$agent_port" >>"$run_dir/results.jsonl" <<'PY'
import json, os, sys, time, statistics, urllib.request
from collections import defaultdict
from datetime import datetime

n, token, agent, gateway_port, pages_port, agent_port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), *sys.argv[4:7]
CLK = os.sysconf("SC_CLK_TCK")
TERMINAL = ("completed", "failed", "cancelled")

def call(method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{gateway_port}" + path, method=method,
        data=json.dumps(body).encode() if body else None,
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)

def pages_stats():
    with urllib.request.urlopen(f"http://127.0.0.1:{pages_port}/stats") as r:
        return json.load(r)

def processes():
    # pid -> (ppid, own utime+stime, reaped children's cutime+cstime), in clock ticks.
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]))
    return table

def descendants(table):
    children = defaultdict(list)
    for pid, (ppid, _, _) in table.items():
        children[ppid].append(pid)
    found, todo = [], [agent]
    while todo:
        pid = todo.pop()
        if pid in table:
            found.append(pid)
            todo.extend(children[pid])
    return found

def memory(pid):
    # (PSS, RSS) in kB; (0, 0) for a process that just exited.
    pss = rss = 0
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss

def is_renderer(pid):
    try:
        return b"--type=renderer" in open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return False

def sample():
    table = processes()
    tree = descendants(table)
    agent_pss, agent_rss = memory(agent)
    chromium_pss = chromium_rss = 0
    for pid in tree:
        if pid != agent:
            pss, rss = memory(pid)
            chromium_pss += pss
            chromium_rss += rss
    total_cpu = sum(table[p][1] + table[p][2] for p in tree)
    agent_cpu = table[agent][1]
    return {"t": time.time(), "pss": (agent_pss + chromium_pss) / 1024, "rss": (agent_rss + chromium_rss) / 1024,
            "agent_pss": agent_pss / 1024, "chromium_pss": chromium_pss / 1024,
            "cpu": total_cpu / CLK, "agent_cpu": agent_cpu / CLK, "procs": len(tree),
            "renderers": sum(1 for p in tree if p != agent and is_renderer(p))}

def run_batch(count, mandate, samples=None, statuses=None):
    ids = [call("POST", "/tasks", {"mandate": f"{mandate} {i}", "max_ticks": 10})["correlation_id"] for i in range(count)]
    pending, records = set(ids), {}
    deadline = time.time() + 600
    while pending:
        assert time.time() < deadline, f"tasks still running after 600 s: {sorted(pending)}"
        started = time.time()
        if samples is not None:
            samples.append(sample())
        running = 0
        for i in list(pending):
            record = call("GET", "/tasks/" + i)
            if record["status"] in TERMINAL:
                records[i] = record
                pending.discard(i)
            elif record["status"] == "in_progress":
                running += 1
        if statuses is not None:
            statuses.append((running, len(pending)))
        time.sleep(max(0.0, 0.5 - (time.time() - started)))
    return [records[i] for i in ids]

def visit_seconds():
    # (sum, count) of the agent's agent_visit_duration_seconds histogram, every outcome: a visit's time
    # includes its wait for a tab (BROWSER_MAX_TABS).
    total = count = 0.0
    with urllib.request.urlopen(f"http://127.0.0.1:{agent_port}/metrics") as r:
        for line in r.read().decode().splitlines():
            if line.startswith("agent_visit_duration_seconds_sum"):
                total += float(line.split()[-1])
            elif line.startswith("agent_visit_duration_seconds_count"):
                count += float(line.split()[-1])
    return total, count

def ts(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

# Warm-up, not measured: Chromium starts, the embedding model loads, the memory store opens.
warm = run_batch(1, "footprint warm-up")
assert warm[0]["status"] == "completed", warm[0]
time.sleep(2)
idle = []
for _ in range(6):
    idle.append(sample())
    time.sleep(0.5)
pages_before, visits_before = pages_stats(), visit_seconds()
samples, statuses = [], []
first = sample()
records = run_batch(n, "footprint task", samples, statuses)
last = sample()
samples.append(last)
pages_after, visits_after = pages_stats(), visit_seconds()
time.sleep(2)
after = sample()

wall = last["t"] - first["t"]
ok = sum(1 for r in records if r["status"] == "completed" and r["result"] and r["result"]["success"])
ticks = sum((r["result"] or {}).get("ticks_used", r.get("tick", 0)) for r in records)
# Steady: the samples while all N tasks were in progress; the middle half of the run when there were none.
steady = [s["pss"] for s, (running, _) in zip(samples, statuses) if running == n]
if not steady:
    middle = samples[len(samples) // 4: max(len(samples) // 4 + 1, 3 * len(samples) // 4)]
    steady = [s["pss"] for s in middle]
task_walls = [ts(r["updated_at"]) - ts(r["created_at"]) for r in records]
cpu = last["cpu"] - first["cpu"]
agent_cpu = last["agent_cpu"] - first["agent_cpu"]
print(json.dumps({
    "n": n, "tasks": len(records), "ok": ok, "ticks": ticks, "wall": wall,
    "failures": [r.get("error") or r["status"] for r in records if r["status"] != "completed"],
    "visits": sum(r["usage"]["visits"] for r in records),
    "task_wall_mean": statistics.mean(task_walls), "task_wall_max": max(task_walls),
    "idle_pss": statistics.median(s["pss"] for s in idle), "idle_rss": statistics.median(s["rss"] for s in idle),
    "idle_procs": idle[-1]["procs"], "idle_renderers": idle[-1]["renderers"],
    "idle_cores": (idle[-1]["cpu"] - idle[0]["cpu"]) / (idle[-1]["t"] - idle[0]["t"]),
    "peak_pss": max(s["pss"] for s in samples), "steady_pss": statistics.median(steady),
    "peak_rss": max(s["rss"] for s in samples),
    "peak_agent_pss": max(s["agent_pss"] for s in samples), "peak_chromium_pss": max(s["chromium_pss"] for s in samples),
    "peak_procs": max(s["procs"] for s in samples), "peak_renderers": max(s["renderers"] for s in samples),
    "after_pss": after["pss"], "after_renderers": after["renderers"], "after_procs": after["procs"],
    "cpu": cpu, "agent_cpu": agent_cpu, "chromium_cpu": cpu - agent_cpu,
    "pages": {k: pages_after[k] - pages_before[k] for k in pages_after},
    "visit_mean": (visits_after[0] - visits_before[0]) / max(1, visits_after[1] - visits_before[1]),
}))
PY
  stop_agent
done

python3 - "$run_dir/results.jsonl" <<'PY'
import json, math, sys
runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
base = next((r["idle_pss"] for r in runs if r["n"] == 1), runs[0]["idle_pss"])
print()
print(f"idle baseline (started agent, warm Chromium, no task): {base:.0f} MB PSS (N=1 run; per-run idle below)")
print(f"{'N':>3} {'tasks':>5} {'ok':>3} {'ticks':>5} {'idle PSS':>9} {'peak PSS':>9} {'steady PSS':>10} "
      f"{'PSS/task':>9} {'peak RSS':>9} {'CPU ms/tick':>12} {'agent':>6} {'chromium':>8} {'mean cores':>10} "
      f"{'ticks/s':>7} {'task wall s':>12}")
for r in runs:
    per_task = (r["peak_pss"] - base) / r["n"]
    per_tick = lambda cpu: f"{cpu / r['ticks'] * 1000:.1f}" if r["ticks"] else "n/a"
    print(f"{r['n']:>3} {r['tasks']:>5} {r['ok']:>3} {r['ticks']:>5} {r['idle_pss']:>9.0f} {r['peak_pss']:>9.0f} "
          f"{r['steady_pss']:>10.0f} {per_task:>9.1f} {r['peak_rss']:>9.0f} {per_tick(r['cpu']):>12} "
          f"{per_tick(r['agent_cpu']):>6} {per_tick(r['chromium_cpu']):>8} {r['cpu'] / r['wall']:>10.2f} "
          f"{r['ticks'] / r['wall']:>7.2f} {r['task_wall_mean']:>5.1f}/{r['task_wall_max']:<6.1f}")
print("(MB = MiB; task wall mean/max, created to finished; PSS/task = (peak - N=1 idle) / N)")
print()
print("detail: peak PSS agent + chromium; processes and renderers at peak; 2 s after the batch; pages served")
for r in runs:
    p = r["pages"]
    print(f"  N={r['n']:<2} agent {r['peak_agent_pss']:.0f} + chromium {r['peak_chromium_pss']:.0f} MB; "
          f"{r['peak_procs']} procs, {r['peak_renderers']} renderers at most "
          f"(idle: {r['idle_procs']} procs, {r['idle_renderers']} renderers, {r['idle_cores']:.3f} cores); "
          f"after: {r['after_pss']:.0f} MB, {r['after_procs']} procs, {r['after_renderers']} renderers; "
          f"{r['visits']} visits (mean {r['visit_mean']:.2f} s), {p['pages']} pages / {p['scripts']} scripts / {p['rendered']} beacons"
          + (f"; FAILED: {r['failures']}" if r["failures"] else ""))

# Linear fits (least squares over the measured N) for the extrapolated column.
def fit(points):
    xs, ys = [x for x, _ in points], [y for _, y in points]
    if len(points) < 2:
        return 0.0, ys[0] / xs[0] if xs[0] else 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope
mem0, mem_slope = fit([(r["n"], r["peak_pss"]) for r in runs])
cpu0, cpu_slope = fit([(r["n"], r["cpu"] / r["wall"]) for r in runs])
print()
print(f"fits: peak PSS = {mem0:.0f} + {mem_slope:.1f} MB x N; mean cores = {cpu0:.3f} + {cpu_slope:.3f} x N")
print("which Fargate size saturates (peak PSS <= 90 % of memory, mean cores <= vCPU)")
print(f"  {'size':<13} {'largest measured N':>18}  {'extrapolated N':>14}  limit")
for vcpu, gb in [(0.5, 1), (1, 2), (1, 3), (1, 4), (2, 4), (2, 8)]:
    limit = 0.9 * gb * 1024
    fits = [r["n"] for r in runs if r["peak_pss"] <= limit and r["cpu"] / r["wall"] <= vcpu]
    n_mem = math.floor((limit - mem0) / mem_slope) if mem_slope > 0 else math.inf
    n_cpu = math.floor((vcpu - cpu0) / cpu_slope) if cpu_slope > 0 else math.inf
    extrapolated = max(0, min(n_mem, n_cpu))
    bound = "memory" if n_mem <= n_cpu else "CPU"
    size = f"{vcpu:g} vCPU/{gb} GB"
    print(f"  {size:<13} {(max(fits) if fits else 0):>18}  {extrapolated:>14}  {bound}")
PY
