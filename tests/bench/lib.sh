# shellcheck shell=bash
# Shared by the benchmark scripts (run.sh, dns.sh, relay.sh); sourced, not run, first thing:
# messages and errors, processes started in the background and stopped on exit, the samples
# file's metadata and notes, the CPU cap, the machine line and the report's statistics. The
# script defines SAMPLES (and CAP_PERCENT for the cap) before calling what uses them.

log() { printf '== %s\n' "$*" >&2; }
die() {
    printf '%s: %s\n' "${0##*/}" "$*" >&2
    exit 1
}
uint() { [[ $2 =~ ^[0-9]+$ ]] || die "$1 must be a whole number (got $2)"; } # name value

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

# Installs the Debian packages named (apt-get, bounded) when any is missing; the caller says
# which are missing. Needs root.
apt_install() { # package...
    (($#)) || return 0
    [[ $(id -u) == 0 ]] || die "missing $*; run as root or install them"
    log "installing $*"
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -qq >&2 || die "apt-get update failed"
    timeout 300 apt-get install -y -qq --no-install-recommends "$@" >&2 || die "could not install $*"
}

# The machine, for the header of a result: cores, CPU model, kernel, virtualization.
machine() {
    local model virt
    model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
    virt=$(systemd-detect-virt 2>/dev/null || true)
    echo "$(nproc) cores, ${model:-unknown CPU}, Linux $(uname -r)${virt:+, virtualized ($virt)}"
}
# Other work on the machine (builds, tests of other trees) shows in the figures: say how much.
others() { echo "rustc/clippy processes: $(($(pgrep -c -x rustc || true) + $(pgrep -c -x clippy-driver || true)))"; }

# utime+stime of processes (every thread of each), in clock ticks of CLK_TCK.
# shellcheck disable=SC2034 # read by the scripts that source this
CLK_TCK=$(getconf CLK_TCK)
pid_ticks() { # pid...
    local total=0 p
    for p in "$@"; do
        # After "pid (comm) ": field 1 is the state; utime and stime are fields 12 and 13.
        total=$((total + $(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}')))
    done
    echo "$total"
}

# Samples as dns.sh and relay.sh keep them in SAMPLES: "S metric case system rep value".
sample() { printf 'S\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$SAMPLES"; } # metric case system rep value
values() { # metric case system -> its samples, one a line
    awk -F'\t' -v m="$1" -v c="$2" -v s="$3" '$1 == "S" && $2 == m && $3 == c && $4 == s && $6 != "" {print $6}' "$SAMPLES"
}
stats() { # metric case system -> "median min max n" (nothing without samples)
    values "$@" | sort -g |
        awk '{v[NR] = $1} END {if (NR) printf "%s %s %s %d\n", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2), v[1], v[NR], NR}'
}
samples() { values "$@" | jq -s -c .; } # metric case system -> a JSON array
fmt() { # value decimals -> with thousands separators, "-" when empty
    [[ -n $1 ]] || {
        echo -
        return
    }
    LC_ALL=C awk -v v="$1" -v d="$2" 'BEGIN {
        s = sprintf("%." d "f", v); i = s; f = ""
        if (index(s, ".")) { i = substr(s, 1, index(s, ".") - 1); f = substr(s, index(s, ".")) }
        neg = (substr(i, 1, 1) == "-"); if (neg) i = substr(i, 2)
        o = ""; while (length(i) > 3) { o = "," substr(i, length(i) - 2) o; i = substr(i, 1, length(i) - 3) }
        print (neg ? "-" : "") i o f }'
}
# The M and N lines of SAMPLES as JSON: meta_json -> {key: value, ...}; notes_json -> [...].
meta_json() { awk -F'\t' '$1 == "M" {print $2 "\t" $3}' "$SAMPLES" | jq -R -s 'split("\n") | map(select(length > 0) | split("\t") | {(.[0]): .[1]}) | add // {}'; }
notes_json() { awk -F'\t' '$1 == "N" {print $2}' "$SAMPLES" | jq -R -s 'split("\n") | map(select(length > 0))'; }
