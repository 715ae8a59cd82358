#!/usr/bin/env bash
# Makes sure Debian's Chromium (the browser the agent's VISIT action drives through chromiumoxide) is
# installed, then prints its version.
#
# Idempotent: does nothing but print the version when the binary is already there; otherwise runs
# `apt-get update` once and `apt-get install -y chromium` (~30 s, ~414 MB). Needs root (or sudo) for apt.
#
#   CHROMIUM_PATH   the binary to check (default /usr/bin/chromium, the path the Debian package installs)
set -euo pipefail

chromium="${CHROMIUM_PATH:-/usr/bin/chromium}"

if [[ ! -x "$chromium" ]]; then
    if [[ "$chromium" != /usr/bin/chromium ]]; then
        echo "ensure-chromium: $chromium is missing and is not the Debian package's path; install it yourself" >&2
        exit 1
    fi
    sudo=""
    if [[ "$(id -u)" -ne 0 ]]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "ensure-chromium: installing chromium needs root, and sudo is not installed: run as root" >&2
            exit 1
        fi
        sudo="sudo"
    fi
    echo "ensure-chromium: $chromium missing, installing Debian's chromium" >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
fi

"$chromium" --version
