#!/usr/bin/env bash
# Runs every test of the workspace against real services. First it installs and starts what the tests
# need (Redis, RabbitMQ with its management plugin, Chromium, the moto AWS emulator, the Qdrant emulator, the
# embedding model), skipping whatever is already there; then it runs the tests that share those services in
# parallel, then the ones that restart a service ("disruptive") one at a time, then the offline deployment
# checks.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-services.sh
scripts/ensure-chromium.sh
eval "$(scripts/ensure-moto.sh --print-env)"
eval "$(scripts/ensure-qdrant-emulator.sh --print-env)"
EMBEDDING_MODEL_DIR=$(scripts/fetch-embedding-model.sh | tail -n 1)
export EMBEDDING_MODEL_DIR

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast -E 'not test(/disruptive/)'
  cargo nextest run --workspace --no-fail-fast --no-tests=pass -j 1 -E 'test(/disruptive/)'
else
  echo "[test] cargo-nextest not found; using cargo test"
  cargo test --workspace --no-fail-fast -- --skip disruptive
  cargo test --workspace --no-fail-fast -- --test-threads=1 disruptive
fi

scripts/check-deploy.sh
