#!/usr/bin/env bash
# Makes sure a moto server (the AWS API emulator the sidecar and Lambda tests talk to) answers on loopback.
#
# Idempotent: creates the project-local virtualenv `.venv` when missing, installs `moto[server]` into it when
# `moto_server` is missing there, starts `moto_server` in the background when nothing answers on the port,
# waits (bounded) until it answers, and prints the endpoint to export as AWS_ENDPOINT_URL.
#
#   scripts/ensure-moto.sh               prints the endpoint (http://127.0.0.1:5055)
#   scripts/ensure-moto.sh --print-env   prints `export AWS_ENDPOINT_URL=...`, for eval
#   MOTO_PORT                            port to use (default 5055)
#
# Progress goes to stderr, so stdout holds only the answer.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv"
port="${MOTO_PORT:-5055}"
endpoint="http://127.0.0.1:${port}"

# shellcheck source=lib/endpoint.sh
source "$repo_root/scripts/lib/endpoint.sh"
parse_print_env "$@"
report() { report_endpoint AWS_ENDPOINT_URL "$endpoint"; }
log_dir="$venv"
log_file="$log_dir/moto-server.log"

answers() {
    # moto answers GET / with 200; any HTTP answer means the port is served.
    python3 - "$endpoint" <<'PY' >/dev/null 2>&1
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1] + "/moto-api/", timeout=2)
except urllib.error.HTTPError:
    pass
PY
}

if answers; then
    report
    exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
    echo "ensure-moto: creating virtualenv $venv" >&2
    python3 -m venv "$venv"
fi

if [[ ! -x "$venv/bin/moto_server" ]]; then
    echo "ensure-moto: installing moto[server] into $venv (takes a minute or two)" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "moto[server]" >&2
fi

mkdir -p "$log_dir"
echo "ensure-moto: starting moto_server on $endpoint (log: $log_file)" >&2
nohup "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log_file" 2>&1 </dev/null &
moto_pid=$!

wait_until_answers "ensure-moto: moto_server" "$moto_pid" "$log_file" "$endpoint"

report
