# Shared by the ensure-*.sh scripts that start a local emulator and print where it answers. Source it.
#
#   parse_print_env "$@"                    reads the script's one optional argument, --print-env
#   report_endpoint VAR URL                 prints URL, or `export VAR=URL` with --print-env
#   wait_until_answers NAME PID LOG URL     waits up to 30 s until the caller's `answers` function succeeds;
#                                           exits 1 with the log's tail if process PID dies first

parse_print_env() {
    case "${1:-}" in
        "") print_env="" ;;
        --print-env) print_env=1 ;;
        *)
            echo "usage: $0 [--print-env]" >&2
            exit 2
            ;;
    esac
}

report_endpoint() {
    if [[ -n "$print_env" ]]; then
        echo "export $1=$2"
    else
        echo "$2"
    fi
}

wait_until_answers() {
    local name=$1 pid=$2 log=$3 url=$4
    local deadline=$((SECONDS + 30))
    until answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$name exited; last lines of $log:" >&2
            tail -n 20 "$log" >&2 || true
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            echo "$name did not answer on $url within 30 s" >&2
            exit 1
        fi
        sleep 0.5
    done
}
