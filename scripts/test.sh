#!/usr/bin/env bash
# Runs every test of the workspace against real services: installs and starts what the tests need
# (Redis, RabbitMQ, moto), then the tests that share the services in parallel, then the ones that
# restart a service ("disruptive") alone.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-services.sh
if [ -x scripts/ensure-moto.sh ]; then
  eval "$(scripts/ensure-moto.sh --print-env)"
fi

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast -E 'not test(/disruptive/)'
  cargo nextest run --workspace --no-fail-fast --no-tests=pass -j 1 -E 'test(/disruptive/)'
else
  echo "[test] cargo-nextest not found; using cargo test"
  cargo test --workspace --no-fail-fast -- --skip disruptive
  cargo test --workspace --no-fail-fast -- --test-threads=1 disruptive
fi
