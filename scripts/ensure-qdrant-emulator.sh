#!/usr/bin/env bash
# Makes sure the Qdrant gRPC emulator (scripts/qdrant-emulator/server.py, built on qdrant-client's local mode,
# because no Qdrant server can be installed here) answers on loopback, for the RemoteStore tests.
#
# Idempotent: creates the project-local virtualenv `.venv` when missing, installs `qdrant-client==1.20.0`
# into it when it is not importable there, starts the emulator in the background when nothing answers a
# HealthCheck on the port, waits (bounded) until it answers, and prints its URL. The memory tests read it
# from QDRANT_EMULATOR_URL (not QDRANT_URL, which would switch every agent the tests start to the server).
#
#   scripts/ensure-qdrant-emulator.sh               prints the URL (http://127.0.0.1:16334)
#   scripts/ensure-qdrant-emulator.sh --print-env   prints `export QDRANT_EMULATOR_URL=...`, for eval
#   QDRANT_EMULATOR_PORT                            port to use (default 16334)
#
# The instance started here requires no API key (QDRANT_EMULATOR_API_KEY is ignored); a test that needs one
# starts its own instance on another port:
#   QDRANT_EMULATOR_API_KEY=... .venv/bin/python scripts/qdrant-emulator/server.py --port N
#
# Progress goes to stderr, so stdout holds only the answer.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv"
port="${QDRANT_EMULATOR_PORT:-16334}"
endpoint="http://127.0.0.1:${port}"
server="$repo_root/scripts/qdrant-emulator/server.py"

# shellcheck source=lib/endpoint.sh
source "$repo_root/scripts/lib/endpoint.sh"
parse_print_env "$@"
report() { report_endpoint QDRANT_EMULATOR_URL "$endpoint"; }
log_dir="$venv"
log_file="$log_dir/qdrant-emulator.log"

answers() {
    # A gRPC HealthCheck (exempt from any API key) with the venv's grpcio; the empty request encodes as no
    # bytes, so raw bytes spare importing qdrant-client and keep the check fast.
    [[ -x "$venv/bin/python" ]] || return 1
    "$venv/bin/python" - "127.0.0.1:${port}" <<'PY' >/dev/null 2>&1
import sys, grpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    channel.unary_unary("/qdrant.Qdrant/HealthCheck")(b"", timeout=2)
PY
}

# Installed even when an emulator already answers (say, one started from another checkout): tests start
# emulators of their own from this checkout's `.venv`.
if [[ ! -x "$venv/bin/python" ]]; then
    echo "ensure-qdrant-emulator: creating virtualenv $venv" >&2
    python3 -m venv "$venv"
fi

if ! "$venv/bin/python" -c "import importlib.metadata as m, qdrant_client.grpc
assert m.version('qdrant-client') == '1.20.0'" >/dev/null 2>&1; then
    echo "ensure-qdrant-emulator: installing qdrant-client==1.20.0 into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "qdrant-client==1.20.0" >&2
fi

if answers; then
    report
    exit 0
fi

mkdir -p "$log_dir"
echo "ensure-qdrant-emulator: starting the emulator on $endpoint (log: $log_file)" >&2
QDRANT_EMULATOR_API_KEY="" nohup "$venv/bin/python" "$server" --host 127.0.0.1 --port "$port" \
    >"$log_file" 2>&1 </dev/null &
emulator_pid=$!

wait_until_answers "ensure-qdrant-emulator: the emulator" "$emulator_pid" "$log_file" "$endpoint"

report
