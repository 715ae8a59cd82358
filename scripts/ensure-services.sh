#!/usr/bin/env bash
# Makes sure Redis and RabbitMQ (with its management plugin) are installed and answering on 127.0.0.1.
# Idempotent: installs only what is missing, starts only what is not running.
#
# Installing and starting need root: run as root, or as a user with sudo (each privileged command then goes
# through sudo, which may ask for a password). Without either it stops with a message saying so.
set -euo pipefail

log() { printf '[ensure-services] %s\n' "$*"; }

# Runs "$@" as root: directly when we are root, else through sudo.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    log "this step needs root, and sudo is not installed: run this script as root (command: $*)"
    return 1
  fi
}

# Whether systemd manages services here (a full machine), as opposed to a container with no init system.
have_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

port_open() { (echo >"/dev/tcp/127.0.0.1/$1") >/dev/null 2>&1; }

wait_port() { # port seconds name
  local deadline=$((SECONDS + $2))
  until port_open "$1"; do
    if ((SECONDS > deadline)); then
      log "$3 did not open port $1 within $2 s"
      return 1
    fi
    sleep 0.5
  done
}

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  log "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- Redis -------------------------------------------------------------------------------------------
command -v redis-server >/dev/null || apt_install redis-server
if ! port_open 6379 && have_systemd; then
  # The Debian package's own service (started by the install, or stopped since).
  log "starting the redis-server service"
  as_root systemctl start redis-server || true
  wait_port 6379 15 redis || true
fi
if ! port_open 6379; then
  log "starting redis-server"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port 6379 30 redis
fi
redis-cli -h 127.0.0.1 ping >/dev/null
log "redis answers on 127.0.0.1:6379"

# --- RabbitMQ ----------------------------------------------------------------------------------------
command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
if ! port_open 5672 && have_systemd; then
  log "starting the rabbitmq-server service (a fresh start takes 10-20 s)"
  as_root systemctl start rabbitmq-server || true
  wait_port 5672 90 rabbitmq || true
fi
if ! port_open 5672; then
  log "starting rabbitmq-server (a fresh start takes 10-20 s)"
  as_root rabbitmq-server -detached
  wait_port 5672 90 rabbitmq
fi
# The metrics sidecar reads in-flight counts from the management API.
if ! port_open 15672; then
  log "enabling rabbitmq_management"
  as_root rabbitmq-plugins enable --quiet rabbitmq_management >/dev/null
  wait_port 15672 60 rabbitmq_management
fi
log "rabbitmq answers on 127.0.0.1:5672 (management on 15672)"
