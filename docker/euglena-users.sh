#!/bin/sh
# The one place that says what each component may do in Redis and RabbitMQ (least privilege): the gateway,
# the agent and the metrics sidecar each get a user of their own. Everything that creates those users reads
# it from here: scripts/run-local.sh, the compose stack (this file is mounted into the redis and rabbitmq
# containers), the tests (tests/src/privilege.rs), and scripts/deploy-checks/check_env.py, which checks that
# the rules written out in ecs/euglena.yaml are these. docs/security.md explains each rule.
#
#   euglena-users.sh redis-rules COMPONENT           the ACL rules of COMPONENT, one per line (no name, no password)
#   euglena-users.sh redis-acl-file                  an ACL file (aclfile): default = the operators' admin, and
#                                                    the three users, with their passwords
#   euglena-users.sh rabbitmq-permissions COMPONENT  four lines: configure, write, read (regular expressions on
#                                                    the vhost's queue and exchange names), then the user tags
#   euglena-users.sh rabbitmq-definitions            a definitions file (load_definitions): vhost /, the admin,
#                                                    the three users with their permissions, and the topology
#   euglena-users.sh rabbitmq-topology               a definitions file with the topology only: the exchanges,
#                                                    the queues and the bindings (rabbitmqctl import_definitions)
#   euglena-users.sh name COMPONENT                  the user name of COMPONENT (euglena-COMPONENT)
#
# COMPONENT is gateway, agent or metrics-sidecar. Read from the environment:
#   REDIS_KEY_PREFIX (default empty), AGENT_INPUT_QUEUE (default agent.mandates), MAX_DELIVERIES (default 3);
#   redis-acl-file: REDIS_PASSWORD (the default user's) and GATEWAY_REDIS_PASSWORD, AGENT_REDIS_PASSWORD,
#     SIDECAR_REDIS_PASSWORD;
#   rabbitmq-definitions: RABBITMQ_DEFAULT_USER (default euglena), RABBITMQ_DEFAULT_PASS and
#     GATEWAY_RABBITMQ_PASSWORD, AGENT_RABBITMQ_PASSWORD, SIDECAR_RABBITMQ_PASSWORD.
# Passwords go into URLs, ACL and JSON files: only letters, digits and . _ ~ - are accepted (e.g. the output
# of `openssl rand -hex 24`). POSIX sh: it runs in the redis (busybox) and rabbitmq (dash) images too.
set -eu

prefix=${REDIS_KEY_PREFIX:-}
queue=${AGENT_INPUT_QUEUE:-agent.mandates}
max_deliveries=${MAX_DELIVERIES:-3}

fail() {
  printf 'euglena-users.sh: %s\n' "$*" >&2
  exit 2
}

case $prefix in
  *[[:space:]]* | *'"'*) fail "REDIS_KEY_PREFIX must not contain white space or quotes" ;;
esac
case $queue in
  '' | *[!A-Za-z0-9._:-]*) fail "AGENT_INPUT_QUEUE must be letters, digits and . _ : - only" ;;
esac
case $max_deliveries in
  '' | *[!0-9]*) fail "MAX_DELIVERIES must be a number" ;;
esac

# The prefix as a literal inside an ACL key or channel pattern (glob): * ? [ ] \ escaped.
p=$(printf '%s' "$prefix" | sed 's/[][*?\\]/\\&/g')
# The queue as a literal inside a RabbitMQ permission (regular expression).
q=$(printf '%s' "$queue" | sed 's/[.]/\\./g')
# A task id (a UUID: 36 characters), as a glob.
uuid='????????-????-????-????-????????????'

name() {
  case $1 in
    gateway | agent | metrics-sidecar) printf 'euglena-%s\n' "$1" ;;
    *) fail "unknown component '$1' (gateway, agent or metrics-sidecar)" ;;
  esac
}

# Every command a component sends, and only the keys and channels it touches. Redis checks the keys of every
# command a Lua script runs against the caller's rules, so the scripts' keys are here too (the transition
# script refunds the quota day and leaves the owner's active set named in the task record).
redis_rules() {
  name "$1" >/dev/null
  printf '%s\n' resetkeys resetchannels -@all
  case $1 in
    gateway)
      # Creates, reads, lists, cancels and deletes tasks: every key of a task, the owners' indexes and active
      # sets, quota days, idempotency entries, purge requests; reads (and prunes) the agents' presence.
      printf '%s\n' "~${p}task:*" "~${p}user:*" "~${p}quota:*" "~${p}idempotency:*" "~${p}memory:purges" \
        "~${p}workers:status" "%R~${p}worker:status:*" "&${p}events" \
        +ping +info +select +evalsha '+script|load' +multi +exec \
        +hget +hset +hgetall +hmget +exists +get +set +setex +del +incrby +decrby +expire \
        +zadd +zrem +zcard +zremrangebylex +zrevrangebylex +zremrangebyscore +zrangebyscore +mget \
        +xadd +xrange +xrevrange '+xinfo|stream' +publish +subscribe
      ;;
    agent)
      # A task's record, event log and checkpoint (the id is a UUID, so `task:{id}:abandoned` stays out), its
      # tombstone read-only; the quota day it refunds and the owner's active set it leaves; its presence; the
      # sweep lock; the purge requests, read-only. Never the owners' task indexes, the idempotency entries,
      # the abandon marks or another deployment's prefix.
      printf '%s\n' "~${p}task:${uuid}" "~${p}task:${uuid}:events" "~${p}task:${uuid}:state" \
        "%R~${p}task:${uuid}:deleted" "~${p}quota:*" "~${p}user:*:active" "~${p}workers:status" \
        "~${p}worker:status:*" "~${p}dlq:sweeper" "%R~${p}memory:purges" "&${p}events" \
        +ping +info +select +evalsha '+script|load' +time \
        +hget +hset +hincrby +hgetall +hmget +exists +get +set +setex +del +decrby +expire \
        +zadd +zrem +xadd +xrange +publish
      ;;
    metrics-sidecar)
      # Counts the tasks the live agents hold (when the management API is not used): prunes and reads the
      # presence set, reads the presence records.
      printf '%s\n' "~${p}workers:status" "%R~${p}worker:status:*" \
        +select +multi +exec +zremrangebyscore +zrangebyscore +mget
      ;;
  esac
}

# configure, write, read, tags. What RabbitMQ checks: declaring or deleting an exchange or a queue needs
# `configure` on it (so no component gets any: it could delete the queues), publishing needs `write` on the
# exchange (the default exchange counts as amq.default, and reaches every queue of the vhost, so nobody gets
# it), consuming, basic.get and purging need `read` on the queue, binding needs `write` on the queue and
# `read` on the exchange. A passive declare, which the components use to check that the topology exists and
# to read queue depths, needs none. The regular expressions match exchange and queue names alike, so every
# exchange has a name no queue has. The set-up creates the topology (the definitions below, run-local, or
# an administrator's credentials: docs/operations.md):
#   Q.in          direct, bound to Q                the gateway publishes tasks
#   Q.dlx         direct, bound to Q.dlq            Q's dead-letter exchange (only the broker publishes there)
#   Q.dlq.parking direct, bound to Q.dlq.parked     the agents' sweeper parks dead letters
rabbitmq_permissions() {
  name "$1" >/dev/null
  case $1 in
    gateway) printf '%s\n' '^$' "^${q}\\.in\$" '^$' '' ;;
    agent) printf '%s\n' '^$' "^${q}\\.dlq\\.parking\$" "^${q}(\\.dlq)?\$" '' ;;
    # The management API shows a `management` user the queues of the vhosts it may use; it may use `/`
    # without any permission on its queues or exchanges.
    metrics-sidecar) printf '%s\n' '^$' '^$' '^$' management ;;
  esac
}

password() { # variable
  eval "value=\${$1:-}"
  case $value in
    '') fail "$1 must be set" ;;
    *[!A-Za-z0-9._~-]*) fail "$1 may only hold letters, digits and . _ ~ -" ;;
  esac
  printf '%s' "$value"
}

redis_acl_file() {
  admin_pass=$(password REDIS_PASSWORD)
  printf 'user default on >%s ~* &* +@all\n' "$admin_pass"
  for component in gateway agent metrics-sidecar; do
    case $component in
      gateway) var=GATEWAY_REDIS_PASSWORD ;;
      agent) var=AGENT_REDIS_PASSWORD ;;
      metrics-sidecar) var=SIDECAR_REDIS_PASSWORD ;;
    esac
    secret=$(password "$var")
    printf 'user %s on >%s %s\n' "$(name "$component")" "$secret" "$(redis_rules "$component" | tr '\n' ' ' | sed 's/ $//')"
  done
}

# A regular expression as a JSON string's content (backslashes doubled).
json_regex() { printf '%s' "$1" | sed 's/\\/\\\\/g'; }

rabbitmq_definitions() {
  admin=${RABBITMQ_DEFAULT_USER:-euglena}
  case $admin in *[!A-Za-z0-9._~-]*) fail "RABBITMQ_DEFAULT_USER may only hold letters, digits and . _ ~ -" ;; esac
  admin_pass=$(password RABBITMQ_DEFAULT_PASS)
  printf '{\n  "vhosts": [{"name": "/"}],\n  "users": [\n'
  printf '    {"name": "%s", "password": "%s", "tags": "administrator"}' "$admin" "$admin_pass"
  for component in gateway agent metrics-sidecar; do
    case $component in
      gateway) var=GATEWAY_RABBITMQ_PASSWORD ;;
      agent) var=AGENT_RABBITMQ_PASSWORD ;;
      metrics-sidecar) var=SIDECAR_RABBITMQ_PASSWORD ;;
    esac
    secret=$(password "$var")
    tags=$(rabbitmq_permissions "$component" | sed -n 4p)
    printf ',\n    {"name": "%s", "password": "%s", "tags": "%s"}' "$(name "$component")" "$secret" "$tags"
  done
  printf '\n  ],\n  "permissions": [\n'
  printf '    {"user": "%s", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}' "$admin"
  for component in gateway agent metrics-sidecar; do
    configure=$(json_regex "$(rabbitmq_permissions "$component" | sed -n 1p)")
    write=$(json_regex "$(rabbitmq_permissions "$component" | sed -n 2p)")
    read=$(json_regex "$(rabbitmq_permissions "$component" | sed -n 3p)")
    printf ',\n    {"user": "%s", "vhost": "/", "configure": "%s", "write": "%s", "read": "%s"}' \
      "$(name "$component")" "$configure" "$write" "$read"
  done
  printf '\n  ],\n'
  topology
  printf '}\n'
}

# The exchanges, queues and bindings of shared/src/queue.rs, with the arguments it declares (RabbitMQ refuses
# a re-declaration with other arguments; an import leaves an existing queue's arguments as they are).
topology() {
  exchange='"vhost": "/", "type": "direct", "durable": true, "auto_delete": false, "internal": false, "arguments": {}'
  printf '  "exchanges": [\n'
  printf '    {"name": "%s.in", %s},\n' "$queue" "$exchange"
  printf '    {"name": "%s.dlx", %s},\n' "$queue" "$exchange"
  printf '    {"name": "%s.dlq.parking", %s}\n' "$queue" "$exchange"
  printf '  ],\n  "queues": [\n'
  printf '    {"name": "%s.dlq.parked", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {"x-max-length": 100000, "x-overflow": "drop-head", "x-message-ttl": 1209600000}},\n' "$queue"
  printf '    {"name": "%s.dlq", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {}},\n' "$queue"
  printf '    {"name": "%s", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {"x-queue-type": "quorum", "x-delivery-limit": %s, "x-dead-letter-exchange": "%s.dlx", "x-dead-letter-routing-key": "%s.dlq"}}\n' \
    "$queue" "$max_deliveries" "$queue" "$queue"
  printf '  ],\n  "bindings": [\n'
  binding='"vhost": "/", "destination_type": "queue", "arguments": {}'
  printf '    {"source": "%s.in", "destination": "%s", "routing_key": "%s", %s},\n' "$queue" "$queue" "$queue" "$binding"
  printf '    {"source": "%s.dlx", "destination": "%s.dlq", "routing_key": "%s.dlq", %s},\n' "$queue" "$queue" "$queue" "$binding"
  printf '    {"source": "%s.dlq.parking", "destination": "%s.dlq.parked", "routing_key": "%s.dlq.parked", %s}\n' \
    "$queue" "$queue" "$queue" "$binding"
  printf '  ]\n'
}

rabbitmq_topology() {
  printf '{\n  "vhosts": [{"name": "/"}],\n'
  topology
  printf '}\n'
}

command=${1:-}
case $command in
  redis-rules) redis_rules "${2:-}" ;;
  redis-acl-file) redis_acl_file ;;
  rabbitmq-permissions) rabbitmq_permissions "${2:-}" ;;
  rabbitmq-definitions) rabbitmq_definitions ;;
  rabbitmq-topology) rabbitmq_topology ;;
  name) name "${2:-}" ;;
  *) fail "usage: euglena-users.sh redis-rules|rabbitmq-permissions|name COMPONENT, or redis-acl-file|rabbitmq-definitions|rabbitmq-topology" ;;
esac
