# shellcheck shell=bash
# Shared by the benchmark scripts (run.sh, dns.sh); sourced, not run. Processes started in
# the background and stopped on exit, the samples file's metadata and notes, and the CPU cap.
# The script defines log(), SAMPLES and CAP_PERCENT before calling these.

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

# CPU cap for the capped runs: a cgroup (v2 cpu.max, else v1 CFS quota) that holds the
# servers under test, unlimited except during those runs (CAP_PERCENT of one CPU). With 2
# CPUs the uncapped runs are bound by the load generator on the other CPU: every server then
# does what the generator can feed it. Capping each at the same CPU share makes the server
# the bottleneck, so the figure is what each does per CPU it is given.
CAP_DIR=
CAP_KIND=
cap_setup() {
    ((CAP_PERCENT > 0)) || return 1
    local d
    if [[ -f /sys/fs/cgroup/cgroup.controllers ]] && grep -qw cpu /sys/fs/cgroup/cgroup.controllers; then
        d=/sys/fs/cgroup/sy-bench.$$
        grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null ||
            echo +cpu >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || return 1
        mkdir "$d" 2>/dev/null || return 1
        CAP_KIND=v2
    elif [[ -d /sys/fs/cgroup/cpu && -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]]; then
        d=/sys/fs/cgroup/cpu/sy-bench.$$
        mkdir "$d" 2>/dev/null || return 1
        # A 10 ms period keeps the throttled stretches short next to TCP's timers.
        echo 10000 >"$d/cpu.cfs_period_us" || return 1
        CAP_KIND=v1
    else
        return 1
    fi
    CAP_DIR=$d
    cap_set off
}
cap_set() { # on|off
    [[ -n $CAP_DIR ]] || return 0
    local quota=$((CAP_PERCENT * 100))
    case $CAP_KIND:$1 in
    v2:on) echo "$quota 10000" >"$CAP_DIR/cpu.max" ;;
    v2:off) echo "max 10000" >"$CAP_DIR/cpu.max" ;;
    v1:on) echo "$quota" >"$CAP_DIR/cpu.cfs_quota_us" ;;
    v1:off) echo -1 >"$CAP_DIR/cpu.cfs_quota_us" ;;
    esac
}
cap_join() { # pid...
    [[ -n $CAP_DIR ]] || return 0
    local p
    for p in "$@"; do echo "$p" >"$CAP_DIR/cgroup.procs" 2>/dev/null || true; done
}
cap_teardown() {
    [[ -n $CAP_DIR && -d $CAP_DIR ]] || return 0
    local p parent
    parent=$(dirname "$CAP_DIR")
    while read -r p; do
        echo "$p" >"$parent/cgroup.procs" 2>/dev/null || true
    done < <(cat "$CAP_DIR/cgroup.procs" 2>/dev/null)
    rmdir "$CAP_DIR" 2>/dev/null || true
}
