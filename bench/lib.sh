# Shared by the bench scripts that drive a release gateway on a private queue and key prefix. Source it.
#
#   remove_run_state QUEUE RUN   deletes QUEUE, QUEUE.dlq and QUEUE.dlq.parked, and the Redis keys RUN:*
#   wait_for_health PORT         waits up to 10 s until the gateway on PORT answers /health
#   machine WHO                  prints the machine's size and what shares it

remove_run_state() {
  local queue=$1 run=$2 suffix
  for suffix in "" .dlq .dlq.parked; do
    rabbitmqctl -q delete_queue "$queue$suffix" >/dev/null 2>&1 || true
  done
  redis-cli --scan --pattern "$run:*" | xargs -r -n 1000 redis-cli del >/dev/null
}

wait_for_health() {
  local _
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$1/health" >/dev/null && return 0
    sleep 0.1
  done
}

machine() {
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $1 share it"
}
