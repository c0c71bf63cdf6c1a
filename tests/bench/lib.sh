# shellcheck shell=bash
# Shared by the benchmark scripts (run.sh, dns.sh); sourced, not run. Processes started in
# the background and stopped on exit, and the samples file's metadata and notes.
# The script defines log() and SAMPLES before calling these.

declare -a STARTED=()

start_bg() { # log-file command... ; sets LAST_PID and LAST_LOG
    local out=$1
    shift
    # shellcheck disable=SC2034 # read by run.sh (wait_port shows the log of what failed)
    LAST_LOG=$out
    "$@" >"$out" 2>&1 </dev/null &
    LAST_PID=$!
    STARTED+=("$LAST_PID")
}

# SIGTERM to everything start_bg started, up to 5 s each to exit, then SIGKILL.
stop_started() {
    local pid
    for pid in "${STARTED[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED[@]}"; do
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

meta() { printf 'M\t%s\t%s\n' "$1" "$2" >>"$SAMPLES"; }
note() {
    printf 'N\t%s\n' "$*" >>"$SAMPLES"
    log "note: $*"
}
