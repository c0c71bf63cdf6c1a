#!/usr/bin/env bash
# Proxy benchmark (issue 6): Switchyard side by side with HAProxy (TCP mode, with and without
# splice) and nginx (stream module), in the same run, with the direct path as the limit.
# Loopback only. See tests/bench/README.md for what is measured and how to read it.
#
#   tests/bench/run.sh
#   BASELINE_BIN=../wt-base/target/release/switchyard BASELINE_LABEL=<commit> tests/bench/run.sh
#
# Environment (all optional):
#   REPS=3            runs of each measurement (medians are reported); systems alternate
#   BULK_SECS=5       iperf3 -t per bulk run (1 and 8 streams)
#   RATE_SECS=3       measured seconds per new-connection run (plus 0.5 s warm-up)
#   RATE_CONNS=32     concurrent connecting workers
#   RTT_SECS=5        sockperf ping-pong -t per latency run
#   HOLD_COUNT=10000  idle connections held for the memory measurement (capped by the fd limit)
#   PIN_BULK=split    where the proxy runs during each measurement (taskset; the load
#   PIN_RATE=same       generators and upstreams always run on CPU 0):
#   PIN_RTT=same        split: proxy on CPU 1; same: proxy on CPU 0 too; none: no pinning at all
#   PIN=              set all three at once (e.g. PIN=none)
#   CAP_PERCENT=50    CPU cap (percent of one CPU, cgroup CPU quota) on the proxy for the
#                     capped bulk runs; 0 skips them. Needs root and the cgroup cpu controller.
#   SYSTEMS="switchyard haproxy-splice haproxy nginx direct"
#                     (with BASELINE_BIN set: "switchyard switchyard-baseline haproxy-splice ...")
#   SKIP_INSTALL=0    1: do not apt-get missing tools
#   SKIP_BUILD=0      1: use the binaries already in target/release
#   BASELINE_BIN=     before and after a change, in one run: another switchyard binary (e.g.
#                     built from a git worktree of the commit before the change) that runs
#                     as the system switchyard-baseline, with the same config and placement as
#                     switchyard, on its own port block (265xx). It gets its own column
#                     Switchyard(baseline) and the ratio column SY/baseline (switchyard divided
#                     by switchyard-baseline) in run.txt, and its own entries in run.json.
#                     Unset: no baseline, nothing changes. switchyard-baseline in SYSTEMS
#                     without an executable BASELINE_BIN is an error.
#   BASELINE_LABEL=   what the baseline is (e.g. its commit), for the metadata and the notes;
#                     default: the BASELINE_BIN path. See tests/bench/README.md.
#
# Writes tests/bench/results/run.json and run.txt. Exit status 0 when the run completed (a
# measurement that failed shows as "-" and is listed in the notes), 1 on a setup failure.
set -euo pipefail

BASELINE_BIN=${BASELINE_BIN:-}
# Relative to where the script was started from, not to the repo root it moves to.
[[ -z $BASELINE_BIN || $BASELINE_BIN == /* ]] || BASELINE_BIN=$PWD/$BASELINE_BIN
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# log, die, uint, start_bg, stop_started, meta, note, apt_install, machine, pid_ticks, sample,
# stats, fmt (and the CPU cap).
# shellcheck source=tests/bench/lib.sh
source "$ROOT/tests/bench/lib.sh"

REPS=${REPS:-3}
BULK_SECS=${BULK_SECS:-5}
RATE_SECS=${RATE_SECS:-3}
RATE_CONNS=${RATE_CONNS:-32}
RTT_SECS=${RTT_SECS:-5}
HOLD_COUNT=${HOLD_COUNT:-10000}
PIN=${PIN:-}
PIN_BULK=${PIN_BULK:-${PIN:-split}}
PIN_RATE=${PIN_RATE:-${PIN:-same}}
PIN_RTT=${PIN_RTT:-${PIN:-same}}
if [[ -n $BASELINE_BIN ]]; then
    SYSTEMS=${SYSTEMS:-"switchyard switchyard-baseline haproxy-splice haproxy nginx direct"}
else
    SYSTEMS=${SYSTEMS:-"switchyard haproxy-splice haproxy nginx direct"}
fi
BASELINE_LABEL=${BASELINE_LABEL:-$BASELINE_BIN}
SKIP_INSTALL=${SKIP_INSTALL:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
CAP_PERCENT=${CAP_PERCENT:-50}

RESULTS="$ROOT/tests/bench/results"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN="$TARGET_DIR/release"
T0=$(date +%s)

[[ $REPS =~ ^[0-9]+$ && $REPS -ge 1 && $REPS -le 20 ]] || die "REPS must be 1..20"
[[ $CAP_PERCENT =~ ^[0-9]+$ && $CAP_PERCENT -le 100 ]] || die "CAP_PERCENT must be 0..100"
for p in "$PIN_BULK" "$PIN_RATE" "$PIN_RTT"; do
    case $p in split | same | none) ;; *) die "PIN_* must be split, same or none (got $p)" ;; esac
done
BASELINE=0
if [[ " $SYSTEMS " == *" switchyard-baseline "* ]]; then
    [[ -n $BASELINE_BIN ]] ||
        die "switchyard-baseline is in SYSTEMS but BASELINE_BIN is not set; set BASELINE_BIN=/path/to/the/baseline/switchyard (see tests/bench/README.md)"
    [[ -f $BASELINE_BIN && -x $BASELINE_BIN ]] ||
        die "BASELINE_BIN=$BASELINE_BIN is not an executable file (switchyard-baseline is in SYSTEMS)"
    BASELINE=1
elif [[ -n $BASELINE_BIN ]]; then
    log "BASELINE_BIN is set but SYSTEMS has no switchyard-baseline; the baseline is not run"
fi

# ------------------------------------------------------------------------------------------
# Tools

need_install=()
command -v haproxy >/dev/null || need_install+=(haproxy)
command -v nginx >/dev/null || need_install+=(nginx)
[[ -e /usr/lib/nginx/modules/ngx_stream_module.so ]] || need_install+=(libnginx-mod-stream)
command -v iperf3 >/dev/null || need_install+=(iperf3)
command -v sockperf >/dev/null || need_install+=(sockperf)
command -v jq >/dev/null || need_install+=(jq)
command -v taskset >/dev/null || need_install+=(util-linux)
command -v perf >/dev/null || need_install+=(linux-perf)
if ((${#need_install[@]})); then
    if [[ $SKIP_INSTALL == 1 ]]; then
        log "missing: ${need_install[*]} (SKIP_INSTALL=1; carrying on without them)"
    else
        [[ $(id -u) == 0 ]] || die "missing ${need_install[*]}; run as root or install them"
        log "installing ${need_install[*]}"
        export DEBIAN_FRONTEND=noninteractive
        timeout 300 apt-get update -qq >&2 || die "apt-get update failed"
        # sockperf and perf are optional (loadgen's ping-pong stands in for sockperf; perf
        # only adds the syscall counts).
        for p in "${need_install[@]}"; do
            timeout 300 apt-get install -y -qq --no-install-recommends "$p" >&2 ||
                log "could not install $p"
        done
    fi
fi
for t in haproxy nginx iperf3 jq; do
    command -v "$t" >/dev/null || die "$t is required"
done
[[ -e /usr/lib/nginx/modules/ngx_stream_module.so ]] || die "nginx's stream module is required (libnginx-mod-stream)"
HAVE_SOCKPERF=0
command -v sockperf >/dev/null && HAVE_SOCKPERF=1

if [[ $SKIP_BUILD != 1 ]]; then
    log "building (release)"
    timeout 1800 cargo build --release -p switchyard-node -p switchyard-tests --bins >&2 ||
        die "build failed"
fi
[[ -x $BIN/switchyard && -x $BIN/loadgen ]] || die "no $BIN/switchyard or $BIN/loadgen"

# ------------------------------------------------------------------------------------------
# Limits, pinning, scratch

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
# A proxied connection holds two descriptors in the proxy; leave room for the rest.
MAX_HOLD=$(((NOFILE - 300) / 2))
HOLD_N=$HOLD_COUNT
((HOLD_N > MAX_HOLD)) && HOLD_N=$MAX_HOLD
CLK_TCK=$(getconf CLK_TCK)
NCPU=$(nproc)

if ((NCPU < 2)); then
    PIN_BULK=none PIN_RATE=none PIN_RTT=none
fi
# The proxies start with one thread/worker on CPU 1 unless nothing is pinned; the measurements
# then move them (all threads) with taskset -a -p. Switchyard picks its tokio runtime from
# the CPU mask it starts with: with one CPU, a current-thread runtime.
if [[ $PIN_BULK == none && $PIN_RATE == none && $PIN_RTT == none ]]; then
    PROXY_PIN=()
    CLIENT_PIN=()
    PROXY_THREADS=$NCPU
else
    PROXY_PIN=(taskset -c 1)
    CLIENT_PIN=(taskset -c 0)
    PROXY_THREADS=1
fi
pin_desc() {
    case $1 in
    split) echo "proxy on CPU 1, load generators and upstreams on CPU 0" ;;
    same) echo "proxy, load generators and upstreams all on CPU 0" ;;
    none) echo "no pinning" ;;
    esac
}
PIN_DESC="bulk: $(pin_desc "$PIN_BULK"); new connections: $(pin_desc "$PIN_RATE"); RTT: $(pin_desc "$PIN_RTT"); idle memory: placed as bulk"

TMP=$(mktemp -d /tmp/sy-bench.XXXXXX)
SAMPLES="$TMP/samples.tsv"
: >"$SAMPLES"
declare -a UPSTREAM_PIDS=()
HOLD_PID=

cleanup() {
    cap_teardown
    [[ -n $HOLD_PID ]] && kill -KILL "$HOLD_PID" 2>/dev/null
    stop_started
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

sample() { printf 'S\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$SAMPLES"; }

# ------------------------------------------------------------------------------------------
# Ports: upstreams on 252xx; each proxy on its own block, same last digit per upstream.

UP_IPERF=25201
UP_SOCKPERF=25202
UP_ECHO=25203
declare -A BASE=([switchyard]=26100 [haproxy-splice]=26200 [haproxy]=26300 [nginx]=26400 [switchyard-baseline]=26500)
port_of() { # system upstream-port -> the port to connect to
    local sys=$1 up=$2
    if [[ $sys == direct ]]; then echo "$up"; else echo $((BASE[$sys] + up - 25200)); fi
}
# Switchyard's status listener, at the end of its block.
declare -A SY_STATUS=([switchyard]=26199 [switchyard-baseline]=26599)
all_ports=("$UP_IPERF" "$UP_SOCKPERF" "$UP_ECHO" "${SY_STATUS[switchyard]}")
port_systems=(switchyard haproxy-splice haproxy nginx)
if ((BASELINE)); then
    all_ports+=("${SY_STATUS[switchyard-baseline]}")
    port_systems+=(switchyard-baseline)
fi
for sys in "${port_systems[@]}"; do
    for up in "$UP_IPERF" "$UP_SOCKPERF" "$UP_ECHO"; do all_ports+=("$(port_of "$sys" "$up")"); done
done
listening=$(ss -Hltn 2>/dev/null | awk '{print $4}')
for p in "${all_ports[@]}"; do
    if grep -qE "[:.]$p\$" <<<"$listening"; then
        die "port $p is already in use; stop whatever holds it"
    fi
done

# Waits (bounded) until 127.0.0.1:port accepts; on failure shows the log of what was started last.
wait_port() {
    local port=$1 what=$2
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    [[ -n ${LAST_LOG:-} && -s $LAST_LOG ]] && tail -20 "$LAST_LOG" >&2
    die "$what did not listen on $port within 10 s"
}

# ------------------------------------------------------------------------------------------
# Upstreams

log "starting upstreams ($PIN_DESC)"
start_bg "$TMP/iperf3.log" "${CLIENT_PIN[@]}" iperf3 -s -B 127.0.0.1 -p "$UP_IPERF"
UPSTREAM_PIDS+=("$LAST_PID")
wait_port "$UP_IPERF" iperf3
if ((HAVE_SOCKPERF)); then
    start_bg "$TMP/sockperf.log" "${CLIENT_PIN[@]}" sockperf server --tcp -i 127.0.0.1 -p "$UP_SOCKPERF"
else
    # Without sockperf, RTT runs loadgen pingpong against the echo server on this port.
    start_bg "$TMP/echo2.log" "${CLIENT_PIN[@]}" "$BIN/loadgen" serve "127.0.0.1:$UP_SOCKPERF"
fi
UPSTREAM_PIDS+=("$LAST_PID")
wait_port "$UP_SOCKPERF" "the latency server"
start_bg "$TMP/echo.log" "${CLIENT_PIN[@]}" "$BIN/loadgen" serve "127.0.0.1:$UP_ECHO"
UPSTREAM_PIDS+=("$LAST_PID")
wait_port "$UP_ECHO" "loadgen serve"

# ------------------------------------------------------------------------------------------
# Proxies

declare -A PID=()
HAP_MAXCONN=$((HOLD_N + 50))
# HAProxy reserves two fds per pipe it may use (maxpipes, default maxconn/4) and refuses to
# start past the fd limit, so give its splicing what is left. Pipes are held only while data
# is in flight: the benchmark needs a few dozen at most; past maxpipes HAProxy copies instead.
HAP_MAXPIPES=$(((NOFILE - 2 * HAP_MAXCONN - 100) / 2))
((HAP_MAXPIPES > HAP_MAXCONN / 4)) && HAP_MAXPIPES=$((HAP_MAXCONN / 4))
((HAP_MAXPIPES < 16)) && HAP_MAXPIPES=16

# switchyard and switchyard-baseline get the same config but for their ports.
sy_conf() { # system -> config path
    local sys=$1 f="$TMP/$1.toml" name up
    cat >"$f" <<EOF
[node]
id = "bench"
region = "WNAM"
status_listen = "127.0.0.1:${SY_STATUS[$sys]}"
drain_timeout = "1s"
EOF
    for pair in iperf:$UP_IPERF sockperf:$UP_SOCKPERF echo:$UP_ECHO; do
        name=${pair%%:*}
        up=${pair#*:}
        cat >>"$f" <<EOF

[[pool]]
name = "$name"
origins = [{ name = "$name", address = "127.0.0.1:$up" }]

[[load_balancer]]
name = "$name"
steering = "failover"
default_pools = ["$name"]

[[app]]
name = "$name"
listen = "127.0.0.1:$(port_of "$sys" "$up")"
load_balancer = "$name"
connect_timeout = "5s"
idle_timeout = "300s"
EOF
    done
    echo "$f"
}

hap_conf() { # system -> config path
    local sys=$1 f="$TMP/$1.cfg" up
    {
        echo "global"
        echo "    maxconn $HAP_MAXCONN"
        echo "    maxpipes $HAP_MAXPIPES"
        echo "    nbthread $PROXY_THREADS"
        echo "defaults"
        echo "    mode tcp"
        echo "    maxconn $HAP_MAXCONN"
        echo "    timeout connect 5s"
        echo "    timeout client 300s"
        echo "    timeout server 300s"
        # Forced: on HAProxy 2.6 in TCP mode, option splice-auto made no splice(2) call at
        # all in our runs (perf stat), so it would only repeat the no-splice column.
        if [[ $sys == haproxy-splice ]]; then
            echo "    option splice-request"
            echo "    option splice-response"
        fi
        for up in "$UP_IPERF" "$UP_SOCKPERF" "$UP_ECHO"; do
            echo "listen p$up"
            echo "    bind 127.0.0.1:$(port_of "$sys" "$up")"
            echo "    server s 127.0.0.1:$up"
        done
    } >"$f"
    echo "$f"
}

nginx_conf() {
    local d="$TMP/nginx" up
    mkdir -p "$d"
    {
        echo "load_module /usr/lib/nginx/modules/ngx_stream_module.so;"
        echo "worker_processes $PROXY_THREADS;"
        echo "worker_rlimit_nofile $NOFILE;"
        echo "pid $d/nginx.pid;"
        echo "error_log $d/error.log warn;"
        echo "events { worker_connections $((NOFILE - 100)); }"
        echo "stream {"
        for up in "$UP_IPERF" "$UP_SOCKPERF" "$UP_ECHO"; do
            echo "    server {"
            echo "        listen 127.0.0.1:$(port_of nginx "$up");"
            echo "        proxy_pass 127.0.0.1:$up;"
            echo "        proxy_buffer_size 64k;"
            echo "        proxy_connect_timeout 5s;"
            echo "        proxy_timeout 300s;"
            echo "        proxy_half_close on;"
            echo "    }"
        done
        echo "}"
    } >"$d/nginx.conf"
    echo "$d"
}

for sys in $SYSTEMS; do
    case $sys in
    switchyard | switchyard-baseline)
        sy_bin=$BIN/switchyard
        [[ $sys == switchyard-baseline ]] && sy_bin=$BASELINE_BIN
        conf=$(sy_conf "$sys")
        "$sy_bin" check --config "$conf" >&2 || die "$sys ($sy_bin) rejected $conf"
        start_bg "$TMP/$sys.log" "${PROXY_PIN[@]}" "$sy_bin" run --config "$conf"
        ;;
    haproxy | haproxy-splice)
        conf=$(hap_conf "$sys")
        haproxy -c -q -f "$conf" >&2 || die "haproxy rejected $conf"
        start_bg "$TMP/$sys.log" "${PROXY_PIN[@]}" haproxy -db -f "$conf"
        ;;
    nginx)
        d=$(nginx_conf)
        nginx -t -q -p "$d" -e "$d/error.log" -c "$d/nginx.conf" >&2 || die "nginx rejected $d/nginx.conf"
        start_bg "$TMP/nginx.log" "${PROXY_PIN[@]}" nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -g "daemon off;"
        ;;
    direct) continue ;;
    *) die "unknown system $sys" ;;
    esac
    PID[$sys]=$LAST_PID
    for up in "$UP_IPERF" "$UP_SOCKPERF" "$UP_ECHO"; do wait_port "$(port_of "$sys" "$up")" "$sys"; done
done

# The proxy's processes: the one started, plus its children (nginx's workers).
proxy_pids() {
    local p=${PID[$1]:-}
    [[ -n $p ]] || return 0
    echo "$p"
    pgrep -P "$p" 2>/dev/null || true
}

# utime+stime of the system's processes, in clock ticks.
cpu_ticks() {
    local total=0 p rest
    for p in $(proxy_pids "$1"); do
        rest=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null) || continue
        # After "pid (comm) ": field 1 is the state; utime and stime are fields 12 and 13.
        total=$((total + $(awk '{print $12 + $13}' <<<"$rest")))
    done
    echo "$total"
}

# Resident and proportional set size of the system's processes, in kB: "rss pss".
mem_kb() {
    local rss=0 pss=0 p r s
    for p in $(proxy_pids "$1"); do
        r=$(awk '/^Rss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null) || continue
        s=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null) || continue
        rss=$((rss + ${r:-0}))
        pss=$((pss + ${s:-0}))
    done
    echo "$rss $pss"
}

# ------------------------------------------------------------------------------------------
# Smoke check: every path answers a 64-byte request.

ACTIVE=()
for sys in $SYSTEMS; do
    if timeout 20 "$BIN/loadgen" rate "127.0.0.1:$(port_of "$sys" "$UP_ECHO")" --conns 2 --secs 0.3 --warmup 0 >/dev/null 2>"$TMP/smoke.err"; then
        ACTIVE+=("$sys")
    else
        note "$sys failed the smoke check ($(head -c 300 "$TMP/smoke.err" | tr '\n\t' '  ')); left out"
    fi
done
((${#ACTIVE[@]})) || die "no system answered"

CAPPED=0
if ((CAP_PERCENT > 0)); then
    if cap_setup; then
        CAPPED=1
        for sys in "${ACTIVE[@]}"; do
            mapfile -t pids < <(proxy_pids "$sys")
            cap_join "${pids[@]}"
        done
    else
        note "capped bulk runs skipped: cannot make a cgroup with a CPU quota (they need root and the cgroup cpu controller)"
    fi
fi

# ------------------------------------------------------------------------------------------
# Metadata and machine load

busy_others() { # processes in state R right now, other than this script's (e.g. a concurrent build)
    ps -eo stat=,comm= 2>/dev/null | awk '$1 ~ /^R/ && $2 != "ps" && $2 != "awk" {printf "%s%s", sep, $2; sep=", "}' | head -c 300
}
rustc_count() { pgrep -c -x rustc 2>/dev/null || true; }
# Share of all CPUs busy over one second (run while our processes are idle, it is the others').
cpu_busy_1s() {
    local a b
    a=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6}' /proc/stat)
    sleep 1
    b=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6}' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN {split(a, x, " "); split(b, y, " "); busy = y[1] - x[1]; idle = y[2] - x[2];
        if (busy + idle > 0) printf "%.0f%%", 100 * busy / (busy + idle); else print "?"}'
}

meta date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
meta host "$(uname -sr); $NCPU CPUs: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
meta switchyard "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet -- node 2>/dev/null || echo ' (node/ modified)')"
if ((BASELINE)); then
    meta switchyard-baseline "$BASELINE_LABEL: $BASELINE_BIN ($("$BASELINE_BIN" --version 2>/dev/null | head -1 || true), sha256 $(sha256sum "$BASELINE_BIN" | cut -c1-16))"
fi
meta versions "$(haproxy -v 2>&1 | head -1 | awk '{print "HAProxy " $3}'); $(nginx -v 2>&1 | sed 's/.*nginx\//nginx /'); $(iperf3 --version 2>&1 | head -1 | awk '{print $1 " " $2}'); $( ((HAVE_SOCKPERF)) && sockperf --version 2>&1 | awk '/version/ {print "sockperf " $NF; exit}' || echo 'sockperf: not installed')"
meta pinning "$PIN_DESC; proxy threads/workers: $PROXY_THREADS (Switchyard: a current-thread tokio runtime when started on one CPU)"
if ((CAPPED)); then
    meta capped "capped bulk: the proxy (placed as bulk) limited to $CAP_PERCENT% of one CPU by a cgroup $CAP_KIND CPU quota (10 ms period); uncapped, every proxy here is bound by the load generator (iperf3 client and server share CPU 0), so the capped runs compare what each proxy moves per CPU"
fi
meta settings "HAProxy mode tcp, maxconn $HAP_MAXCONN, maxpipes $HAP_MAXPIPES (fd limit), defaults otherwise (tune.bufsize 16k, kernel-default 64k pipes); HAProxy(splice) adds option splice-request and splice-response (splice-auto never spliced). nginx stream proxy_pass, proxy_buffer_size 64k, proxy_half_close on. Switchyard: one pool per upstream, no monitor, failover LB, its default log level (info) and 1 MiB relay pipes$( ((BASELINE)) && echo "; switchyard-baseline: the same config and placement as switchyard, its own ports")"
meta method "$REPS runs per measurement, systems alternated in rotating order within each run; iperf3 -t $BULK_SECS; loadgen rate --conns $RATE_CONNS --secs $RATE_SECS; $( ((HAVE_SOCKPERF)) && echo "sockperf ping-pong --tcp -m 64 --full-rtt -t $RTT_SECS" || echo "loadgen pingpong --secs $RTT_SECS"); $HOLD_N idle connections held once per proxy; proxy CPU is utime+stime from /proc/PID/stat over each run"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
meta load_before "loadavg $LOAD_BEFORE; CPU busy while the benchmark idled: $(cpu_busy_1s); rustc processes: $(rustc_count); top: $(busy_others)"

# ------------------------------------------------------------------------------------------
# Placement: moves every proxy (all threads of all its processes) and every upstream.

PLACED=
place() { # split|same|none
    [[ $1 == "$PLACED" ]] && return 0
    local proxy_cpus client_cpus sys p
    case $1 in
    split) proxy_cpus=1 client_cpus=0 ;;
    same) proxy_cpus=0 client_cpus=0 ;;
    none) proxy_cpus=0-$((NCPU - 1)) client_cpus=0-$((NCPU - 1)) ;;
    esac
    for sys in "${!PID[@]}"; do
        for p in $(proxy_pids "$sys"); do
            taskset -a -p -c "$proxy_cpus" "$p" >/dev/null 2>&1 || true
        done
    done
    for p in "${UPSTREAM_PIDS[@]}"; do
        taskset -a -p -c "$client_cpus" "$p" >/dev/null 2>&1 || true
    done
    if [[ $1 == none ]]; then CLIENT_PIN=(); else CLIENT_PIN=(taskset -c 0); fi
    PLACED=$1
}

# ------------------------------------------------------------------------------------------
# Measurements

bulk() { # system streams rep [key-suffix]
    local sys=$1 n=$2 rep=$3 key="bulk${2}${4:-}" port c0 c1 out="$TMP/iperf.json"
    port=$(port_of "$sys" "$UP_IPERF")
    c0=$(cpu_ticks "$sys")
    if ! timeout $((BULK_SECS + 20)) "${CLIENT_PIN[@]}" iperf3 -c 127.0.0.1 -p "$port" -t "$BULK_SECS" -P "$n" -J >"$out" 2>"$TMP/iperf.err"; then
        note "bulk $n stream(s) through $sys, run $rep failed: $(jq -r '.error // empty' "$out" 2>/dev/null | head -c 200)$(head -c 200 "$TMP/iperf.err" | tr '\n\t' '  ')"
        return 0
    fi
    c1=$(cpu_ticks "$sys")
    local bytes bps
    bytes=$(jq -r '.end.sum_received.bytes // empty' "$out")
    bps=$(jq -r '.end.sum_received.bits_per_second // empty' "$out")
    [[ -n $bytes && -n $bps ]] || {
        note "bulk $n through $sys, run $rep: no result in iperf3's output"
        return 0
    }
    sample "${key}_gbps" "$sys" "$rep" "$(awk -v b="$bps" 'BEGIN {printf "%.4f", b / 1e9}')"
    if [[ $sys != direct ]]; then
        sample "${key}_cpu_s_per_gb" "$sys" "$rep" "$(awk -v c=$((c1 - c0)) -v t="$CLK_TCK" -v b="$bytes" 'BEGIN {printf "%.5f", (c / t) / (b / 1e9)}')"
    fi
    log "$key $sys run $rep: $(awk -v b="$bps" 'BEGIN {printf "%.2f", b / 1e9}') Gbit/s, proxy CPU $((c1 - c0)) ticks"
}

rate() { # system rep
    local sys=$1 rep=$2 line c0 c1
    c0=$(cpu_ticks "$sys")
    # No warm-up (the proxies are warm by now), so the CPU window matches the count.
    if ! line=$(timeout $((RATE_SECS + 30)) "${CLIENT_PIN[@]}" "$BIN/loadgen" rate "127.0.0.1:$(port_of "$sys" "$UP_ECHO")" --conns "$RATE_CONNS" --secs "$RATE_SECS" --warmup 0 2>"$TMP/rate.err"); then
        note "new connections through $sys, run $rep failed: $(head -c 300 "$TMP/rate.err" | tr '\n\t' '  ')"
        return 0
    fi
    c1=$(cpu_ticks "$sys")
    local cps p50 p99 errs completed
    completed=$(grep -o 'completed=[0-9]*' <<<"$line" | cut -d= -f2)
    if [[ $sys != direct && ${completed:-0} -gt 0 ]]; then
        sample rate_cpu_us_per_conn "$sys" "$rep" "$(awk -v c=$((c1 - c0)) -v t="$CLK_TCK" -v n="$completed" 'BEGIN {printf "%.2f", (c / t) * 1e6 / n}')"
    fi
    cps=$(grep -o 'cps=[0-9.]*' <<<"$line" | cut -d= -f2)
    p50=$(grep -o 'p50_us=[0-9.]*' <<<"$line" | cut -d= -f2)
    p99=$(grep -o 'p99_us=[0-9.]*' <<<"$line" | cut -d= -f2)
    errs=$(grep -o 'errors=[0-9]*' <<<"$line" | cut -d= -f2)
    sample rate_cps "$sys" "$rep" "$cps"
    sample rate_p50_us "$sys" "$rep" "$p50"
    sample rate_p99_us "$sys" "$rep" "$p99"
    [[ ${errs:-0} == 0 ]] || note "new connections through $sys, run $rep: $errs errors ($(head -c 200 "$TMP/rate.err" | tr '\n\t' '  '))"
    log "rate $sys run $rep: $line"
}

rtt() { # system rep
    local sys=$1 rep=$2 port out p50 p99 count c0 c1
    port=$(port_of "$sys" "$UP_SOCKPERF")
    c0=$(cpu_ticks "$sys")
    if ((HAVE_SOCKPERF)); then
        if ! out=$(timeout $((RTT_SECS + 20)) "${CLIENT_PIN[@]}" sockperf ping-pong --tcp -i 127.0.0.1 -p "$port" -m 64 --full-rtt -t "$RTT_SECS" 2>&1); then
            note "RTT through $sys, run $rep failed: $(tail -3 <<<"$out" | tr '\n\t' '  ' | head -c 300)"
            return 0
        fi
        p50=$(awk '/percentile 50.000 =/ {print $NF}' <<<"$out")
        p99=$(awk '/percentile 99.000 =/ {print $NF}' <<<"$out")
        # Every message of the run, warm-up included, to match the CPU window.
        count=$(grep -o 'Total Run.*ReceivedMessages=[0-9]*' <<<"$out" | grep -o '[0-9]*$' || true)
    else
        if ! out=$(timeout $((RTT_SECS + 20)) "${CLIENT_PIN[@]}" "$BIN/loadgen" pingpong "127.0.0.1:$port" --secs "$RTT_SECS" --warmup 0 2>&1); then
            note "RTT through $sys, run $rep failed: $(head -c 300 <<<"$out" | tr '\n\t' '  ')"
            return 0
        fi
        p50=$(grep -o 'p50_us=[0-9.]*' <<<"$out" | cut -d= -f2)
        p99=$(grep -o 'p99_us=[0-9.]*' <<<"$out" | cut -d= -f2)
        count=$(grep -o 'count=[0-9]*' <<<"$out" | cut -d= -f2)
    fi
    c1=$(cpu_ticks "$sys")
    if [[ $sys != direct && ${count:-0} -gt 0 ]]; then
        sample rtt_cpu_us_per_rt "$sys" "$rep" "$(awk -v c=$((c1 - c0)) -v t="$CLK_TCK" -v n="$count" 'BEGIN {printf "%.3f", (c / t) * 1e6 / n}')"
    fi
    [[ -n $p50 && -n $p99 ]] || {
        note "RTT through $sys, run $rep: no percentiles in the output"
        return 0
    }
    sample rtt_p50_us "$sys" "$rep" "$p50"
    sample rtt_p99_us "$sys" "$rep" "$p99"
    log "rtt $sys run $rep: p50 $p50 us, p99 $p99 us"
}

hold() { # system
    local sys=$1 port before after out hp line open
    port=$(port_of "$sys" "$UP_ECHO")
    sleep 1
    before=$(mem_kb "$sys")
    out="$TMP/hold.out"
    : >"$out"
    "${CLIENT_PIN[@]}" "$BIN/loadgen" hold "127.0.0.1:$port" --count "$HOLD_N" --secs 120 --open-secs 60 >"$out" 2>"$TMP/hold.err" </dev/null &
    hp=$!
    HOLD_PID=$hp
    line=""
    for _ in $(seq 1 700); do # up to 70 s: the opening phase is bounded at 60 s
        line=$(grep -m1 '^ready' "$out" || true)
        [[ -n $line ]] && break
        kill -0 "$hp" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -z $line ]]; then
        note "hold through $sys: loadgen never got ready ($(head -c 200 "$TMP/hold.err" | tr '\n\t' '  '))"
        kill -TERM "$hp" 2>/dev/null || true
        wait "$hp" 2>/dev/null || true
        HOLD_PID=
        return 0
    fi
    # Let lazily freed buffers and timers settle.
    sleep 2
    after=$(mem_kb "$sys")
    kill -TERM "$hp" 2>/dev/null || true
    for _ in $(seq 1 400); do # the alive check is bounded at 30 s in loadgen
        kill -0 "$hp" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$hp" 2>/dev/null || true
    wait "$hp" 2>/dev/null || true
    HOLD_PID=
    open=$(grep -o 'open=[0-9]*' <<<"$line" | cut -d= -f2)
    local done_line
    done_line=$(grep -m1 '^done' "$out" || echo "done: none")
    log "hold $sys: $line; $done_line; rss/pss kB before $before, after $after"
    if [[ ${open:-0} -lt 1 ]]; then
        note "hold through $sys: no connection opened"
        return 0
    fi
    ((open == HOLD_N)) || note "hold through $sys: only $open of $HOLD_N connections opened ($(head -c 200 "$TMP/hold.err" | tr '\n\t' '  '))"
    grep -q "alive=$open " "$out" || note "hold through $sys: after the hold, $done_line"
    read -r rb pb <<<"$before"
    read -r ra pa <<<"$after"
    sample idle_rss_per_conn "$sys" 1 "$(awk -v a="$ra" -v b="$rb" -v n="$open" 'BEGIN {printf "%.1f", (a - b) * 1024 / n}')"
    sample idle_pss_per_conn "$sys" 1 "$(awk -v a="$pa" -v b="$pb" -v n="$open" 'BEGIN {printf "%.1f", (a - b) * 1024 / n}')"
    meta "hold_$sys" "$line; RSS $rb -> $ra kB, PSS $pb -> $pa kB"
    # Let the proxy close its side of the held connections before the next one starts.
    sleep 2
}

rotated() { # rep -> the systems in this run's order
    local r=$1 n=${#ACTIVE[@]} i
    for ((i = 0; i < n; i++)); do echo "${ACTIVE[$(((i + r) % n))]}"; done
}

for rep in $(seq 1 "$REPS"); do
    log "run $rep of $REPS (loadavg $(cut -d' ' -f1-3 /proc/loadavg))"
    meta "load_run_$rep" "loadavg $(cut -d' ' -f1-3 /proc/loadavg) at the start; rustc processes: $(rustc_count)"
    order=$(rotated "$rep")
    place "$PIN_BULK"
    for n in 1 8; do
        for sys in $order; do bulk "$sys" "$n" "$rep"; done
    done
    if ((CAPPED)); then
        cap_set on
        for n in 1 8; do
            for sys in $order; do
                [[ $sys == direct ]] || bulk "$sys" "$n" "$rep" _capped
            done
        done
        cap_set off
    fi
    place "$PIN_RATE"
    for sys in $order; do rate "$sys" "$rep"; done
    place "$PIN_RTT"
    for sys in $order; do rtt "$sys" "$rep"; done
done

# ------------------------------------------------------------------------------------------
# Syscalls per GB and per round trip (perf stat on syscall tracepoints), when perf works.

PERF_EVENTS=syscalls:sys_enter_splice,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_readv,syscalls:sys_enter_writev,syscalls:sys_enter_epoll_wait,context-switches
perf_ok=0
if command -v perf >/dev/null && timeout 10 perf stat -e "$PERF_EVENTS" -o /dev/null true >/dev/null 2>&1; then
    perf_ok=1
fi
# Runs a workload under perf stat attached to the proxy; prints "name count" lines.
perf_counts() { # system command...
    local sys=$1 pids
    shift
    pids=$(proxy_pids "$sys" | paste -sd, -)
    timeout 60 perf stat -e "$PERF_EVENTS" -p "$pids" -o "$TMP/perf.out" &
    local pp=$!
    sleep 0.3
    "$@" >"$TMP/perf.work" 2>&1 || true
    kill -INT "$pp" 2>/dev/null || true
    wait "$pp" 2>/dev/null || true
    awk '$1 ~ /^[0-9,]+$/ {gsub(",", "", $1); sub("syscalls:sys_enter_", "", $2); print $2, $1}' "$TMP/perf.out"
}
per_unit() { # counts-text divisor unit -> "splice 123, ... per unit"
    awk -v d="$2" -v u="$3" '$2 > 0 {printf "%s%s %.1f", sep, $1, $2 / d; sep=", "} END {printf " per %s", u}' <<<"$1"
}
if ((perf_ok)); then
    log "syscall counts (perf stat)"
    for sys in "${ACTIVE[@]}"; do
        [[ $sys == direct ]] && continue
        place "$PIN_BULK"
        counts=$(perf_counts "$sys" "${CLIENT_PIN[@]}" iperf3 -c 127.0.0.1 -p "$(port_of "$sys" "$UP_IPERF")" -t 2 -J)
        gb=$(jq -r '.end.sum_received.bytes / 1e9' "$TMP/perf.work" 2>/dev/null || echo 0)
        if awk -v g="$gb" 'BEGIN {exit !(g > 0)}'; then
            meta "syscalls_bulk_$sys" "$(per_unit "$counts" "$gb" GB) (iperf3 1 stream, $(awk -v g="$gb" 'BEGIN {printf "%.1f", g}') GB)"
        fi
        place "$PIN_RTT"
        counts=$(perf_counts "$sys" "${CLIENT_PIN[@]}" "$BIN/loadgen" pingpong "127.0.0.1:$(port_of "$sys" "$UP_ECHO")" --secs 2 --warmup 0)
        rts=$(grep -o 'count=[0-9]*' "$TMP/perf.work" | cut -d= -f2 || true)
        if [[ ${rts:-0} -gt 0 ]]; then
            meta "syscalls_rtt_$sys" "$(per_unit "$counts" "$rts" "round trip") (64-byte ping-pong, $rts round trips)"
        fi
    done
else
    note "perf is not usable here; syscall counts skipped"
fi

log "idle memory: $HOLD_N connections per proxy"
place "$PIN_BULK"
for sys in "${ACTIVE[@]}"; do
    [[ $sys == direct ]] && continue
    hold "$sys"
done
((HOLD_N == HOLD_COUNT)) || note "idle connections: $HOLD_N instead of $HOLD_COUNT, because the fd limit is $NOFILE (hard) and the proxy holds two per connection"
note "Steering cost and mesh spread are measured separately: cargo bench -p switchyard-node --bench steering; tests/bench/mesh.sh"

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
meta load_after "loadavg $LOAD_AFTER; CPU busy while the benchmark idled: $(cpu_busy_1s); rustc processes: $(rustc_count); top: $(busy_others)"
meta duration "$(($(date +%s) - T0)) s"

# With a baseline: loadgen report has a fixed set of columns (the five systems above), so it
# runs once more on the switchyard and switchyard-baseline samples alone, the baseline
# standing in for HAProxy(splice). The baseline's medians, their rounding and the ratio
# switchyard / switchyard-baseline then come from the same code as the rest of the table, and
# are spliced into the main report: run.txt gets the columns Switchyard(baseline) (after
# Switchyard) and SY/baseline (after SY/direct); run.json gets switchyard-baseline after
# switchyard in systems, medians and samples, and ratio_switchyard_over_switchyard_baseline.
baseline_report() { # json-out txt-out
    local json=$1 txt=$2 d="$TMP/baseline" changed
    mkdir -p "$d"
    awk -F'\t' -v OFS='\t' '$1 == "S" && $3 == "switchyard" {print}
        $1 == "S" && $3 == "switchyard-baseline" {$3 = "haproxy-splice"; print}' "$SAMPLES" >"$d/samples.tsv"
    "$BIN/loadgen" report --samples "$d/samples.tsv" --json "$d/base.json" --txt "$d/base.txt" >/dev/null
    note "switchyard-baseline is $BASELINE_LABEL ($BASELINE_BIN), run with the same config and placement as switchyard on ports $((BASE[switchyard-baseline] + 1))-$((BASE[switchyard-baseline] + 3)); SY/baseline = switchyard / switchyard-baseline (above 1 is better for Gbit/s and conn/s, below 1 for times, CPU and memory)"
    changed=$(jq -r '.metrics[] | select(.ratio_switchyard_over_haproxy_splice != null)
        | [.title, .ratio_switchyard_over_haproxy_splice, .higher_is_better] | @tsv' "$d/base.json" |
        awk -F'\t' '{n++; r = sprintf("%.2f", $2)} r + 0 > 1.1 || r + 0 < 0.9 {
                better = ($3 == "true") == (r + 0 > 1)
                printf "%s%s %s (%s)", sep, $1, r, better ? "better" : "worse"; sep = "; "; k++}
            END {if (!n) printf "nothing to compare"; else if (!k) printf "none of %d measurements", n}')
    note "switchyard against switchyard-baseline, SY/baseline beyond 10% (about the noise level here): $changed"
    "$BIN/loadgen" report --samples "$SAMPLES" --json "$d/main.json" --txt "$d/main.txt" >/dev/null
    # Same layout as loadgen's run.json: one line per metric.
    jq -r --slurpfile b "$d/base.json" '
        def after_sy(k; v): to_entries | map(., (select(.key == "switchyard") | {key: k, value: v})) | from_entries;
        ($b[0].metrics | map({key: .key, value: .}) | from_entries) as $base
        | .systems |= map(., (select(. == "switchyard") | "switchyard-baseline"))
        | .metrics |= map(($base[.key] // {}) as $x
            | .median |= after_sy("switchyard-baseline"; $x.median["haproxy-splice"])
            | .samples |= after_sy("switchyard-baseline"; $x.samples["haproxy-splice"] // [])
            | to_entries
            | map(., (select(.key == "ratio_switchyard_over_direct")
                | {key: "ratio_switchyard_over_switchyard_baseline", value: $x.ratio_switchyard_over_haproxy_splice}))
            | from_entries)
        | "{\n  \"meta\": {" + ([.meta | to_entries[] | "\n    \(.key | tojson): \(.value | tojson)"] | join(","))
          + "\n  },\n  \"systems\": [" + (.systems | map(tojson) | join(", "))
          + "],\n  \"metrics\": [\n    " + (.metrics | map(tojson) | join(",\n    "))
          + "\n  ],\n  \"notes\": [" + ([.notes[] | "\n    \(tojson)"] | join(",")) + "\n  ]\n}"' \
        "$d/main.json" >"$json"
    # The table is the block after the first blank line; cells are separated by two spaces or
    # more. Columns: measurement, unit, the five systems, SY/HAP(splice), SY/direct, target
    # (empty cells at the end of a row are trimmed). Realigned as loadgen aligns it.
    awk -v bt="Switchyard(baseline)" -v rt="SY/baseline" '
        function cells(line, c) { sub(/^ +/, "", line); return split(line, c, /  +/) }
        FNR == 1 { part = 0 }
        part == 0 { if (NR != FNR) print; if ($0 == "") part = 1; next }
        part == 1 && $0 == "" { part = 2 }
        part == 1 && NR == FNR { if ($0 !~ /^-+$/) { cells($0, c); bv[c[1]] = c[4]; br[c[1]] = c[8] }; next }
        part == 1 {
            if ($0 ~ /^-+$/) next
            n = cells($0, c)
            r = rows++
            hdr = r == 0
            split("", o)
            o[1] = c[1]; o[2] = c[2]; o[3] = c[3]
            o[4] = hdr ? bt : (c[1] in bv ? bv[c[1]] : "-")
            for (i = 4; i <= 9; i++) o[i + 1] = c[i]
            o[11] = hdr ? rt : (c[1] in br ? br[c[1]] : "-")
            o[12] = n >= 10 ? c[10] : ""
            for (i = 1; i <= 12; i++) {
                cell[r, i] = o[i]
                if (length(o[i]) > w[i]) w[i] = length(o[i])
            }
            next
        }
        NR != FNR && part == 2 && !done {
            for (r = 0; r < rows; r++) {
                line = ""
                for (i = 1; i <= 12; i++) {
                    pad = sprintf("%" (w[i] - length(cell[r, i])) "s", "")
                    line = line (i <= 2 || i == 12 ? cell[r, i] pad : pad cell[r, i]) (i < 12 ? "  " : "")
                }
                sub(/ +$/, "", line)
                print line
                if (r == 0) {
                    total = 22
                    for (i = 1; i <= 12; i++) total += w[i]
                    if (total > 200) total = 200
                    dash = sprintf("%" total "s", "")
                    gsub(/ /, "-", dash)
                    print dash
                }
            }
            done = 1
        }
        NR != FNR && part == 2 { print }' "$d/base.txt" "$d/main.txt" >"$txt"
    cat "$txt"
}

mkdir -p "$RESULTS"
if ((BASELINE)); then
    baseline_report "$RESULTS/run.json" "$RESULTS/run.txt"
else
    "$BIN/loadgen" report --samples "$SAMPLES" --json "$RESULTS/run.json" --txt "$RESULTS/run.txt"
fi
log "wrote $RESULTS/run.json and $RESULTS/run.txt"
