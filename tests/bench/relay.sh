#!/usr/bin/env bash
# Relay benchmark (issue 13): a TCP connection relayed through a peer node (node A takes the
# client, node B carries it to the origin over the mesh's QUIC connection) side by side with
# the same connection going direct, without a proxy and through Switchyard without a relay,
# in one run: on the loopback, and across the WAN testbed (wan-emu between two network
# namespaces). Needs root (network namespaces, iptables). See tests/bench/README.md ("Relay
# benchmark").
#
#   tests/bench/relay.sh               # from the repo root, as root; about 4 minutes plus the build
#   WAN=0 tests/bench/relay.sh         # the loopback part only
#
# Environment (all optional):
#   REPS=3            runs of each measurement (medians and the spread, min-max, are reported);
#                     the three paths take turns, in an order that rotates from run to run
#   BULK_SECS=5       iperf3 -t of a loopback throughput run (one stream)
#   RTT_SECS=4        sockperf ping-pong -t of a loopback round-trip run (64 bytes)
#   PIN_BULK=split    loopback placement, as run.sh's: split: both nodes on CPU 1 (one core for
#   PIN_RTT=same        the two of them), load generators and origins on CPU 0; same: all on
#                       CPU 0; none: no pinning
#   WAN=auto          auto: the WAN part when root with /dev/net/tun and wan-emu; 1: required;
#                     0: skipped
#   WAN_RTT=170ms     round trip between the two regions: A's, and B's and the origin's
#   WAN_BULK_SECS=8   iperf3 -t across the WAN; the first WAN_OMIT_SECS=2 (slow start) are not
#   WAN_OMIT_SECS=2     counted in the throughput (they are in the CPU per GB)
#   WAN_RTT_SECS=3    sockperf ping-pong -t across the WAN
#   WAN_QUEUE=65536   wan-emu --queue: packets each directed link may hold in flight
#   WAN_TCP_MEM=67108864  the largest TCP buffer (tcp_rmem and tcp_wmem max) in the testbed's
#                     namespaces, so that TCP itself can fill a long path
#   WAN_TXQUEUE=10000 txqueuelen of the emulator's TUN devices; empty: the device's default
#                     (500), which drops bursts the emulator reads too late: kernel TCP rides
#                     that out, a QUIC relay loses its congestion window over it (see
#                     tests/bench/README.md)
#   LOOPBACK=1        0: skip the loopback part
#   KEEP_DIR=         a directory to keep every iperf3 and sockperf output and the nodes' logs
#                     in (for a closer look at a run); default: none kept
#   SKIP_INSTALL=0    1: do not apt-get missing tools
#   SKIP_BUILD=0      1: use the binaries already in the target directory
#
# Writes tests/bench/results/relay.txt (the table) and relay.json (every sample). Exit status
# 0 when the run completed (a measurement that failed shows as "-" and is listed in the
# notes), 1 on a setup failure. Targets are reported, not asserted.
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# log, die, uint, start_bg, stop_started, meta, note, apt_install, machine, pid_ticks, sample,
# stats, fmt (and the CPU cap).
# shellcheck source=tests/bench/lib.sh
source "$ROOT/tests/bench/lib.sh"

REPS=${REPS:-3}
BULK_SECS=${BULK_SECS:-5}
RTT_SECS=${RTT_SECS:-4}
PIN_BULK=${PIN_BULK:-split}
PIN_RTT=${PIN_RTT:-same}
WAN=${WAN:-auto}
WAN_RTT=${WAN_RTT:-170ms}
WAN_BULK_SECS=${WAN_BULK_SECS:-8}
WAN_OMIT_SECS=${WAN_OMIT_SECS:-2}
WAN_RTT_SECS=${WAN_RTT_SECS:-3}
WAN_QUEUE=${WAN_QUEUE:-65536}
WAN_TCP_MEM=${WAN_TCP_MEM:-67108864}
WAN_TXQUEUE=${WAN_TXQUEUE:-10000}
LOOPBACK=${LOOPBACK:-1}
KEEP_DIR=${KEEP_DIR:-}
SKIP_INSTALL=${SKIP_INSTALL:-0}
SKIP_BUILD=${SKIP_BUILD:-0}

# Targets (issue 13), for the relayed column.
TARGET_LO_GBPS=2
TARGET_WAN_GBPS=0.5
TARGET_LO_ADDED_P99_US=100

RESULTS="$ROOT/tests/bench/results"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
T0=$(date +%s)

for v in REPS BULK_SECS RTT_SECS WAN_BULK_SECS WAN_OMIT_SECS WAN_RTT_SECS WAN_QUEUE WAN_TCP_MEM; do
    uint "$v" "${!v}"
done
[[ -z $WAN_TXQUEUE ]] || uint WAN_TXQUEUE "$WAN_TXQUEUE"
((REPS >= 1 && REPS <= 20)) || die "REPS must be 1..20"
((BULK_SECS >= 1 && BULK_SECS <= 60 && RTT_SECS >= 1 && RTT_SECS <= 60)) || die "BULK_SECS and RTT_SECS must be 1..60"
((WAN_BULK_SECS > WAN_OMIT_SECS && WAN_BULK_SECS <= 120 && WAN_RTT_SECS >= 1 && WAN_RTT_SECS <= 60)) ||
    die "WAN_BULK_SECS must be above WAN_OMIT_SECS and at most 120; WAN_RTT_SECS 1..60"
[[ $WAN_RTT =~ ^[0-9]+(ms|us|s)$ ]] || die "WAN_RTT must be a duration such as 170ms (got $WAN_RTT)"
for p in "$PIN_BULK" "$PIN_RTT"; do
    case $p in split | same | none) ;; *) die "PIN_BULK and PIN_RTT must be split, same or none (got $p)" ;; esac
done
case $WAN in auto | 0 | 1) ;; *) die "WAN must be auto, 0 or 1 (got $WAN)" ;; esac
[[ $LOOPBACK == 0 || $LOOPBACK == 1 ]] || die "LOOPBACK must be 0 or 1 (got $LOOPBACK)"
if [[ -n $KEEP_DIR ]]; then
    mkdir -p "$KEEP_DIR" || die "cannot make KEEP_DIR=$KEEP_DIR"
    KEEP_DIR=$(cd "$KEEP_DIR" && pwd)
fi
[[ $(id -u) == 0 ]] || die "needs root: network namespaces, and iptables to cut node A's own path to the origin"

# ------------------------------------------------------------------------------------------
# Tools

need=()
command -v iperf3 >/dev/null || need+=(iperf3)
command -v sockperf >/dev/null || need+=(sockperf)
command -v jq >/dev/null || need+=(jq)
command -v curl >/dev/null || need+=(curl)
command -v iptables >/dev/null || need+=(iptables)
command -v ip >/dev/null || need+=(iproute2)
command -v taskset >/dev/null || need+=(util-linux)
if ((${#need[@]})); then
    [[ $SKIP_INSTALL == 1 ]] && die "missing ${need[*]} (SKIP_INSTALL=1)"
    apt_install "${need[@]}"
fi
if [[ $SKIP_BUILD != 1 ]]; then
    log "building (release)"
    timeout 1800 cargo build --release -p switchyard-node -p switchyard-tests --bins >&2 ||
        die "build failed"
fi
[[ -x $BIN/switchyard ]] || die "no $BIN/switchyard"

if [[ $WAN == auto ]]; then
    WAN=0
    [[ -c /dev/net/tun && -x $BIN/wan-emu ]] && WAN=1
    ((WAN)) || log "no /dev/net/tun or $BIN/wan-emu: the WAN part is skipped"
elif ((WAN)); then
    [[ -c /dev/net/tun && -x $BIN/wan-emu ]] || die "WAN=1 needs /dev/net/tun and $BIN/wan-emu"
fi
PARTS=()
((LOOPBACK)) && PARTS+=(loopback)
((WAN)) && PARTS+=(wan)
((${#PARTS[@]})) || die "nothing to run (LOOPBACK=0 and no WAN part)"

NCPU=$(nproc)
if ((NCPU < 2)); then PIN_BULK=none PIN_RTT=none; fi

# ------------------------------------------------------------------------------------------
# Layout. Each part runs in network namespaces of its own, so nothing here can collide with
# other work on the machine, and the rules that cut node A's path die with them.
#
# The paths (columns), each one TCP stream of the client's:
#   direct     client -> origin, no proxy
#   sy-direct  client -> node A -> origin                  (a load balancer with relay = "off")
#   sy-relay   client -> node A -> QUIC -> node B -> origin (relay = "failover"; A's own path
#              to that origin is cut: an iptables rule in A's namespace rejects the TCP
#              connections of A's process group, so A's probes find it down while B's reach it)
#
# loopback: one namespace; A on 127.0.3.1, B on 127.0.3.2, the origins on 127.0.0.1.
# wan: two regions joined by wan-emu, WEU (A and the client: 10.250.2.1) and SEAS (B:
#   10.250.3.1, the origins: 10.250.3.11), WAN_RTT apart; the direct paths and the relay's
#   QUIC leg cross the same emulated link once, B -> origin stays on SEAS's loopback.

COLS=(direct sy-direct sy-relay)
declare -A COL_TITLE=([direct]="direct (no proxy)" [sy-direct]="Switchyard direct" [sy-relay]="Switchyard relayed")
# Origins: an iperf3 server and a sockperf server for each path, so that the tail of one
# run never meets the next (iperf3 serves one test at a time). The pools' TCP monitors probe
# a health port of their own (`loadgen serve`), not iperf3's: iperf3 takes every connection
# for a test. A is cut from the relayed origins and their health port.
O_BULK_RELAY=7001
O_BULK_DIRECT=7002
O_BULK_NOPROXY=7003
O_RTT_RELAY=7011
O_RTT_DIRECT=7012
O_RTT_NOPROXY=7013
O_HEALTH_RELAY=7098
O_HEALTH_DIRECT=7099
# Apps on each node.
APP_BULK_RELAY=10001
APP_BULK_DIRECT=10002
APP_RTT_RELAY=10003
APP_RTT_DIRECT=10004
STATUS_PORT=9900
MESH_PORT=7946
# Node A runs with this group id: the iptables rule that cuts its path matches it.
A_GID=4747
A_ID=relay-a
B_ID=relay-b
TAG="syrb$$"

declare -A NS_A NS_B A_IP B_IP O_IP REGION_A REGION_B PROFILE MON_INTERVAL MON_TIMEOUT
NS_A[loopback]="$TAG-lo" NS_B[loopback]="$TAG-lo"
A_IP[loopback]=127.0.3.1 B_IP[loopback]=127.0.3.2 O_IP[loopback]=127.0.0.1
REGION_A[loopback]=WNAM REGION_B[loopback]=WEU PROFILE[loopback]=lan
MON_INTERVAL[loopback]=500ms MON_TIMEOUT[loopback]=300ms
NS_A[wan]="$TAG-weu" NS_B[wan]="$TAG-seas"
A_IP[wan]=10.250.2.1 B_IP[wan]=10.250.3.1 O_IP[wan]=10.250.3.11
REGION_A[wan]=WEU REGION_B[wan]=SEAS PROFILE[wan]=wan
MON_INTERVAL[wan]=1s MON_TIMEOUT[wan]=800ms
declare -A PID_A PID_B

TMP=$(mktemp -d /tmp/sy-relaybench.XXXXXX)
SAMPLES="$TMP/samples.tsv"
: >"$SAMPLES"
declare -a NETNS_MADE=()
EMU_FD=

cleanup() {
    stop_started
    [[ -n $EMU_FD ]] && exec {EMU_FD}>&- 2>/dev/null
    local ns p
    for ns in "${NETNS_MADE[@]}"; do
        [[ -e /run/netns/$ns ]] || continue
        # Anything still in it (a load generator cut off by a signal): stop it, then the namespace.
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
        ip netns delete "$ns" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs a command inside a namespace. A shell function: what start_bg and timeout run (whose
# pid is taken) is `ip netns exec` itself, which execs the command in place.
in_ns() { # namespace command...
    local ns=$1
    shift
    ip netns exec "$ns" "$@"
}
make_ns() { # name
    [[ -e /run/netns/$1 ]] && die "namespace $1 exists already"
    ip netns add "$1" || die "ip netns add $1 failed"
    NETNS_MADE+=("$1")
    in_ns "$1" ip link set lo up
}

# CPU placement: where the nodes and where everything else (load generators, origins) run.
node_cpus() { case $1 in split) echo 1 ;; same) echo 0 ;; none) echo "0-$((NCPU - 1))" ;; esac }
other_cpus() { case $1 in split | same) echo 0 ;; none) echo "0-$((NCPU - 1))" ;; esac }
declare -a ORIGIN_PIDS=()
place() { # part split|same|none: moves both nodes and the origins (all their threads)
    local p
    for p in "${PID_A[$1]}" "${PID_B[$1]}"; do taskset -a -p -c "$(node_cpus "$2")" "$p" >/dev/null 2>&1 || true; done
    for p in "${ORIGIN_PIDS[@]}"; do taskset -a -p -c "$(other_cpus "$2")" "$p" >/dev/null 2>&1 || true; done
    CLIENT_CPUS=$(other_cpus "$2")
}

# ------------------------------------------------------------------------------------------
# Nodes: the same config on A and B but for the node's own id, region and addresses (a peer
# relays only to a load balancer, pool and origin of its own config).

node_conf() { # part id region ip -> config path
    local part=$1 id=$2 region=$3 ip=$4 f="$TMP/$1-$2.toml" o=${O_IP[$1]} name
    cat >"$f" <<EOF
[node]
id = "$id"
region = "$region"
status_listen = "$ip:$STATUS_PORT"
drain_timeout = "1s"

[mesh]
cluster = "relaybench"
listen = "$ip:$MESH_PORT"
seeds = ["${A_IP[$part]}:$MESH_PORT", "${B_IP[$part]}:$MESH_PORT"]
profile = "${PROFILE[$part]}"
ca = "$TMP/certs/ca/ca.crt"
cert = "$TMP/certs/$part/$id.crt"
key = "$TMP/certs/$part/$id.key"
EOF
    for row in "relay $O_HEALTH_RELAY" "direct $O_HEALTH_DIRECT"; do
        read -r name oport <<<"$row"
        cat >>"$f" <<EOF

[[monitor]]
name = "$name"
type = "tcp"
port = $oport
interval = "${MON_INTERVAL[$part]}"
timeout = "${MON_TIMEOUT[$part]}"
retries = 0
EOF
    done
    # name relay-policy origin-port app-port
    for row in "bulk-relay failover $O_BULK_RELAY $APP_BULK_RELAY" "bulk-direct off $O_BULK_DIRECT $APP_BULK_DIRECT" \
        "rtt-relay failover $O_RTT_RELAY $APP_RTT_RELAY" "rtt-direct off $O_RTT_DIRECT $APP_RTT_DIRECT"; do
        read -r name policy oport aport <<<"$row"
        cat >>"$f" <<EOF

[[pool]]
name = "$name"
monitor = "${name#*-}"
origins = [{ name = "$name-1", address = "$o:$oport" }]

[[load_balancer]]
name = "$name"
steering = "failover"
default_pools = ["$name"]
relay = "$policy"

[[app]]
name = "$name"
listen = "$ip:$aport"
load_balancer = "$name"
idle_timeout = "60s"
EOF
    done
    "$BIN/switchyard" check --config "$f" >"$TMP/check.log" 2>&1 || die "switchyard rejected $f: $(cat "$TMP/check.log")"
    echo "$f"
}

status() { # part node(a|b) path -> the body (bounded)
    local ns ip
    if [[ $2 == a ]]; then ns=${NS_A[$1]} ip=${A_IP[$1]}; else ns=${NS_B[$1]} ip=${B_IP[$1]}; fi
    in_ns "$ns" curl -sf --max-time 2 "http://$ip:$STATUS_PORT$3"
}

# The path A's explain shows for a load balancer: "direct" or "via relay-b (...)".
path_of() { # part lb
    status "$1" a "/v1/explain?lb=$2&client=${A_IP[$1]}" 2>/dev/null | jq -r '.path // "none"' 2>/dev/null || echo unanswered
}

# Bytes on relay streams that B counts with A (both directions).
relay_bytes_b() { # part
    status "$1" b /metrics 2>/dev/null |
        awk -v peer="$A_ID" '/^switchyard_mesh_relay_bytes_total\{/ && index($0, "peer=\"" peer "\"") {s += $NF} END {printf "%.0f\n", s + 0}'
}

start_part() { # part
    local part=$1 conf p ok path lb want
    log "$part: starting the origins and nodes $A_ID and $B_ID"
    # Origins, in B's namespace.
    ORIGIN_PIDS=()
    local cpus
    cpus=$(other_cpus "$PIN_BULK")
    for p in $O_BULK_RELAY $O_BULK_DIRECT $O_BULK_NOPROXY; do
        start_bg "$TMP/$part-iperf3-$p.log" ip netns exec "${NS_B[$part]}" taskset -c "$cpus" iperf3 -s -B "${O_IP[$part]}" -p "$p"
        ORIGIN_PIDS+=("$LAST_PID")
    done
    for p in $O_RTT_RELAY $O_RTT_DIRECT $O_RTT_NOPROXY; do
        start_bg "$TMP/$part-sockperf-$p.log" ip netns exec "${NS_B[$part]}" taskset -c "$cpus" sockperf server --tcp -i "${O_IP[$part]}" -p "$p"
        ORIGIN_PIDS+=("$LAST_PID")
    done
    for p in $O_HEALTH_RELAY $O_HEALTH_DIRECT; do
        start_bg "$TMP/$part-health-$p.log" ip netns exec "${NS_B[$part]}" taskset -c "$cpus" "$BIN/loadgen" serve "${O_IP[$part]}:$p"
        ORIGIN_PIDS+=("$LAST_PID")
    done
    for p in $O_BULK_RELAY $O_BULK_DIRECT $O_BULK_NOPROXY $O_RTT_RELAY $O_RTT_DIRECT $O_RTT_NOPROXY $O_HEALTH_RELAY $O_HEALTH_DIRECT; do
        wait_listening "$part" "$p" || die "$part: nothing listens on ${O_IP[$part]}:$p after 10 s"
    done
    # Cut A's own path to the relayed load balancers' origins: TCP connections of A's group
    # to those ports are refused at once (a reset), so its probes find them down.
    in_ns "${NS_A[$part]}" iptables -w 5 -I OUTPUT -p tcp -d "${O_IP[$part]}" -m multiport --dports "$O_BULK_RELAY,$O_RTT_RELAY,$O_HEALTH_RELAY" \
        -m owner --gid-owner "$A_GID" -j REJECT --reject-with tcp-reset || die "iptables failed in ${NS_A[$part]}"
    # The nodes start on their CPUs: on one CPU, a node runs a current-thread runtime.
    conf=$(node_conf "$part" "$B_ID" "${REGION_B[$part]}" "${B_IP[$part]}")
    start_bg "$TMP/$part-$B_ID.log" ip netns exec "${NS_B[$part]}" taskset -c "$(node_cpus "$PIN_BULK")" "$BIN/switchyard" run --config "$conf"
    PID_B[$part]=$LAST_PID
    conf=$(node_conf "$part" "$A_ID" "${REGION_A[$part]}" "${A_IP[$part]}")
    start_bg "$TMP/$part-$A_ID.log" ip netns exec "${NS_A[$part]}" setpriv --regid="$A_GID" --clear-groups \
        taskset -c "$(node_cpus "$PIN_BULK")" "$BIN/switchyard" run --config "$conf"
    PID_A[$part]=$LAST_PID
    for p in a b; do
        ok=0
        for _ in $(seq 1 150); do
            status "$part" "$p" /ready >/dev/null 2>&1 && ok=1 && break
            sleep 0.2
        done
        ((ok)) || {
            tail -20 "$TMP/$part-relay-$p.log" >&2
            die "$part: relay-$p was not ready within 30 s"
        }
    done
    # Bounded: the mesh converges, B's rows arrive at A and A's probes find its path cut.
    for lb in bulk-relay rtt-relay bulk-direct rtt-direct; do
        want="via $B_ID"
        [[ $lb == *-direct ]] && want=direct
        ok=0
        for _ in $(seq 1 300); do
            path=$(path_of "$part" "$lb")
            [[ $path == "$want"* ]] && ok=1 && break
            sleep 0.2
        done
        ((ok)) || die "$part: A's explain for $lb says path '$path' after 60 s, not '$want'"
        meta "path_${part}_$lb" "$path: $(status "$part" a "/v1/explain?lb=$lb&client=${A_IP[$part]}" | jq -r '.path_reason // ""')"
    done
    log "$part: A's explain: bulk-relay and rtt-relay via $B_ID, the others direct"
    place "$part" "$PIN_BULK"
}

stop_part() { # part: the nodes and origins of the part (the namespaces go at exit)
    local p
    [[ -z $KEEP_DIR ]] || cp "$TMP/$1-"*.log "$TMP/$1-"*.toml "$KEEP_DIR/" 2>/dev/null || true
    for p in "${PID_A[$1]}" "${PID_B[$1]}" "${ORIGIN_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PID_A[$1]}" "${PID_B[$1]}" "${ORIGIN_PIDS[@]}"; do
        for _ in $(seq 1 50); do
            kill -0 "$p" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$p" 2>/dev/null || true
    done
}

# ------------------------------------------------------------------------------------------
# Measurements

target_of() { # part col bulk|rtt -> "host port" the client connects to; origin -> the bulk origin's port
    local a=${A_IP[$1]} o=${O_IP[$1]}
    case $2:$3 in
    direct:bulk) echo "$o $O_BULK_NOPROXY" ;;
    direct:rtt) echo "$o $O_RTT_NOPROXY" ;;
    sy-direct:bulk) echo "$a $APP_BULK_DIRECT" ;;
    sy-direct:rtt) echo "$a $APP_RTT_DIRECT" ;;
    sy-relay:bulk) echo "$a $APP_BULK_RELAY" ;;
    sy-relay:rtt) echo "$a $APP_RTT_RELAY" ;;
    direct:origin) echo "$O_BULK_NOPROXY" ;;
    sy-direct:origin) echo "$O_BULK_DIRECT" ;;
    sy-relay:origin) echo "$O_BULK_RELAY" ;;
    esac
}
# Waits (bounded) until the origins' namespace has a listener on the port.
wait_listening() { # part port
    for _ in $(seq 1 100); do
        [[ -n $(in_ns "${NS_B[$1]}" ss -Hltn "sport = :$2" 2>/dev/null) ]] && return 0
        sleep 0.1
    done
    return 1
}
# Waits (bounded, 20 s) until no connection to the origin's port is left from a run: a relayed
# run's last bytes may still be in flight when the client is done.
settle() { # part port
    for _ in $(seq 1 200); do
        [[ -z $(in_ns "${NS_B[$1]}" ss -Htn state established "sport = :$2" 2>/dev/null) ]] && return 0
        sleep 0.1
    done
    note "$1: a connection to port $2 was still open 20 s after its run"
}
keep() { [[ -z $KEEP_DIR ]] || cp "$1" "$KEEP_DIR/$2"; } # file name-in-KEEP_DIR
per_gb() { awk -v t="$1" -v k="$CLK_TCK" -v b="$2" 'BEGIN {printf "%.4f", (t / k) / (b / 1e9)}'; } # ticks bytes

bulk() { # part col rep
    local part=$1 col=$2 rep=$3 host port secs omit a0 a1 b0 b1 r0 r1 out="$TMP/iperf.json" bytes bps relayed
    read -r host port <<<"$(target_of "$part" "$col" bulk)"
    secs=$BULK_SECS omit=0
    [[ $part == wan ]] && secs=$WAN_BULK_SECS omit=$WAN_OMIT_SECS
    a0=$(pid_ticks "${PID_A[$part]}") b0=$(pid_ticks "${PID_B[$part]}") r0=$(relay_bytes_b "$part")
    if ! timeout $((secs + 30)) ip netns exec "${NS_A[$part]}" taskset -c "$CLIENT_CPUS" iperf3 -c "$host" -p "$port" -t "$secs" -O "$omit" -J >"$out" 2>"$TMP/iperf.err"; then
        note "$part, ${COL_TITLE[$col]}, run $rep: iperf3 failed: $(jq -r '.error // empty' "$out" 2>/dev/null | head -c 200)$(head -c 200 "$TMP/iperf.err" | tr '\n\t' '  ')"
        return 0
    fi
    a1=$(pid_ticks "${PID_A[$part]}") b1=$(pid_ticks "${PID_B[$part]}") r1=$(relay_bytes_b "$part")
    keep "$out" "$part-bulk-$col-$rep.json"
    settle "$part" "$(target_of "$part" "$col" origin)"
    # Every byte sent, the omitted seconds included, for the CPU per GB; the throughput is
    # iperf3's received rate over the counted seconds.
    bytes=$(jq -r '[.intervals[].sum.bytes] | add // empty' "$out")
    bps=$(jq -r '.end.sum_received.bits_per_second // empty' "$out")
    [[ -n $bytes && -n $bps ]] || {
        note "$part, ${COL_TITLE[$col]}, run $rep: no result in iperf3's output ($(jq -r '.error // empty' "$out" 2>/dev/null | head -c 200))"
        return 0
    }
    # The path taken, from B's relay counters: a relayed stream shows there, a direct one not.
    relayed=$((r1 - r0))
    case $col in
    # (A relayed run's last bytes may still be in flight, up to a window: half is the bar.)
    sy-relay) if ((relayed * 2 < bytes)); then
        note "$part, ${COL_TITLE[$col]}, run $rep: B counted $relayed relay bytes for $bytes sent: not relayed; left out"
        return 0
    fi ;;
    *) if ((relayed * 100 > bytes)); then
        note "$part, ${COL_TITLE[$col]}, run $rep: B counted $relayed relay bytes for $bytes sent: relayed; left out"
        return 0
    fi ;;
    esac
    sample bulk_gbps "$part" "$col" "$rep" "$(awk -v b="$bps" 'BEGIN {printf "%.4f", b / 1e9}')"
    if [[ $col != direct ]]; then
        sample cpu_a "$part" "$col" "$rep" "$(per_gb $((a1 - a0)) "$bytes")"
    fi
    if [[ $col == sy-relay ]]; then
        sample cpu_b "$part" "$col" "$rep" "$(per_gb $((b1 - b0)) "$bytes")"
        sample cpu_ab "$part" "$col" "$rep" "$(per_gb $((a1 - a0 + b1 - b0)) "$bytes")"
    elif [[ $col == sy-direct ]]; then
        sample cpu_ab "$part" "$col" "$rep" "$(per_gb $((a1 - a0)) "$bytes")"
    fi
    # What one core moves at the nodes' CPU per GB (on the direct path, A's alone: B idles).
    local ticks=$((a1 - a0))
    [[ $col == sy-relay ]] && ticks=$((ticks + b1 - b0))
    if [[ $col != direct ]] && ((ticks > 0)); then
        sample core_gbps "$part" "$col" "$rep" "$(awk -v t="$ticks" -v k="$CLK_TCK" -v b="$bytes" 'BEGIN {printf "%.3f", 8 * (b / 1e9) / (t / k)}')"
    fi
    log "$part bulk ${COL_TITLE[$col]} run $rep: $(awk -v b="$bps" 'BEGIN {printf "%.3f", b / 1e9}') Gbit/s; CPU ticks A $((a1 - a0)), B $((b1 - b0)); B's relay bytes +$relayed of $bytes"
}

rtt() { # part col rep
    local part=$1 col=$2 rep=$3 host port secs out p50 p99
    read -r host port <<<"$(target_of "$part" "$col" rtt)"
    secs=$RTT_SECS
    [[ $part == wan ]] && secs=$WAN_RTT_SECS
    if ! out=$(timeout $((secs + 30)) ip netns exec "${NS_A[$part]}" taskset -c "$CLIENT_CPUS" sockperf ping-pong --tcp -i "$host" -p "$port" -m 64 --full-rtt -t "$secs" 2>&1); then
        note "$part, ${COL_TITLE[$col]}, run $rep: sockperf failed: $(tail -3 <<<"$out" | tr '\n\t' '  ' | head -c 300)"
        return 0
    fi
    [[ -z $KEEP_DIR ]] || printf '%s\n' "$out" >"$KEEP_DIR/$part-rtt-$col-$rep.txt"
    p50=$(awk '/percentile 50.000 =/ {print $NF}' <<<"$out")
    p99=$(awk '/percentile 99.000 =/ {print $NF}' <<<"$out")
    [[ -n $p50 && -n $p99 ]] || {
        note "$part, ${COL_TITLE[$col]}, run $rep: no percentiles in sockperf's output"
        return 0
    }
    sample rtt_p50 "$part" "$col" "$rep" "$p50"
    sample rtt_p99 "$part" "$col" "$rep" "$p99"
    log "$part rtt ${COL_TITLE[$col]} run $rep: p50 $p50 us, p99 $p99 us"
}

# Each run's difference of two paths' round trips (run by run: the paths take turns within
# a run, so the pair saw the same machine).
differences() { # part metric base-col col out-metric
    local rep a b
    for rep in $(seq 1 "$REPS"); do
        a=$(awk -F'\t' -v m="$2" -v c="$1" -v s="$3" -v r="$rep" '$1 == "S" && $2 == m && $3 == c && $4 == s && $5 == r {print $6}' "$SAMPLES")
        b=$(awk -F'\t' -v m="$2" -v c="$1" -v s="$4" -v r="$rep" '$1 == "S" && $2 == m && $3 == c && $4 == s && $5 == r {print $6}' "$SAMPLES")
        [[ -n $a && -n $b ]] || continue
        sample "$5" "$1" "$4" "$rep" "$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.3f", b - a}')"
    done
}

rotated() { # rep -> the columns in this run's order
    local i n=${#COLS[@]}
    for ((i = 0; i < n; i++)); do echo "${COLS[$(((i + $1) % n))]}"; done
}

run_part() { # part
    local part=$1 rep col order
    for rep in $(seq 1 "$REPS"); do
        log "$part: run $rep of $REPS (loadavg $(cut -d' ' -f1-3 /proc/loadavg))"
        meta "load_${part}_run_$rep" "loadavg $(cut -d' ' -f1-3 /proc/loadavg) at the start; $(others)"
        order=$(rotated "$rep")
        [[ $part == wan ]] || place "$part" "$PIN_BULK"
        for col in $order; do bulk "$part" "$col" "$rep"; done
        [[ $part == wan ]] || place "$part" "$PIN_RTT"
        for col in $order; do rtt "$part" "$col" "$rep"; done
    done
    for col in sy-direct sy-relay; do
        differences "$part" rtt_p50 direct "$col" added_p50
        differences "$part" rtt_p99 direct "$col" added_p99
    done
    differences "$part" rtt_p50 sy-direct sy-relay relay_p50
    differences "$part" rtt_p99 sy-direct sy-relay relay_p99
}

# ------------------------------------------------------------------------------------------
# Certificates, metadata

mkdir -p "$TMP/certs"
"$BIN/switchyard" ca init --out "$TMP/certs/ca" --cluster relaybench >"$TMP/ca.log" 2>&1 || die "switchyard ca init: $(cat "$TMP/ca.log")"
for part in "${PARTS[@]}"; do
    mkdir -p "$TMP/certs/$part"
    for pair in "$A_ID:${REGION_A[$part]}" "$B_ID:${REGION_B[$part]}"; do
        "$BIN/switchyard" cert issue --ca "$TMP/certs/ca" --node "${pair%%:*}" --region "${pair#*:}" --out "$TMP/certs/$part" >"$TMP/cert.log" 2>&1 ||
            die "switchyard cert issue: $(cat "$TMP/cert.log")"
    done
done

MACHINE=$(machine)
meta machine "$MACHINE"
meta date "$(date -u '+%Y-%m-%d %H:%M UTC')"
meta commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"
meta versions "$("$BIN/switchyard" --version), $(iperf3 --version 2>&1 | head -1 | awk '{print $1 " " $2}'), sockperf $(sockperf --version 2>&1 | awk '/version/ {print $NF; exit}')"
meta placement "loopback: bulk with both nodes on CPU $(node_cpus "$PIN_BULK") (PIN_BULK=$PIN_BULK), round trips with both on CPU $(node_cpus "$PIN_RTT") (PIN_RTT=$PIN_RTT); iperf3, sockperf and the origins on CPU $(other_cpus "$PIN_BULK"); wan: as loopback's bulk throughout, wan-emu unpinned"
meta method "$REPS runs, the three paths in rotating order within each; one TCP stream: iperf3 -t $BULK_SECS (wan: -t $WAN_BULK_SECS -O $WAN_OMIT_SECS); sockperf ping-pong --tcp -m 64 --full-rtt -t $RTT_SECS (wan: $WAN_RTT_SECS); node CPU is utime+stime from /proc/PID/stat over each throughput run, per GB sent"
meta load_before "loadavg $(cut -d' ' -f1-3 /proc/loadavg); $(others)"
log "machine: $MACHINE"

# ------------------------------------------------------------------------------------------
# Loopback

if ((LOOPBACK)); then
    make_ns "${NS_A[loopback]}"
    start_part loopback
    run_part loopback
    stop_part loopback
fi

# ------------------------------------------------------------------------------------------
# WAN: wan-emu between WEU and SEAS; it stops what runs in its namespaces and deletes them
# when it exits (it exits when this script's end of its stdin closes, on failure too).

if ((WAN)); then
    make_ns "${NS_A[wan]}"
    make_ns "${NS_B[wan]}"
    for ns in "${NS_A[wan]}" "${NS_B[wan]}"; do
        in_ns "$ns" sysctl -q -w "net.ipv4.tcp_rmem=4096 131072 $WAN_TCP_MEM" "net.ipv4.tcp_wmem=4096 16384 $WAN_TCP_MEM" ||
            die "could not set the TCP buffers in $ns"
    done
    mkfifo "$TMP/emu.stdin"
    exec {EMU_FD}<>"$TMP/emu.stdin"
    "$BIN/wan-emu" run --control "$TMP/emu.sock" --region "WEU:2:${NS_A[wan]}" --region "SEAS:3:${NS_B[wan]}" \
        --rtt "WEU-SEAS=$WAN_RTT" --queue "$WAN_QUEUE" --lifetime 20m --exit-on-stdin-eof --owns-netns \
        <"$TMP/emu.stdin" >"$TMP/wan-emu.log" 2>&1 &
    STARTED+=("$!")
    ok=0
    for _ in $(seq 1 100); do
        "$BIN/wan-emu" ctl --control "$TMP/emu.sock" show >/dev/null 2>&1 && ok=1 && break
        sleep 0.1
    done
    ((ok)) || {
        tail -20 "$TMP/wan-emu.log" >&2
        die "wan-emu did not answer within 10 s"
    }
    if [[ -n $WAN_TXQUEUE ]]; then
        for ns in "${NS_A[wan]}" "${NS_B[wan]}"; do ip -n "$ns" link set sy-wan0 txqueuelen "$WAN_TXQUEUE"; done
    fi
    meta wan "wan-emu (userspace, TUN) between WEU (node A, the client) and SEAS (node B, the origins), round trip $WAN_RTT, queue $WAN_QUEUE packets per direction, TUN txqueuelen ${WAN_TXQUEUE:-500 (the default)}; TCP buffers up to $WAN_TCP_MEM bytes (tcp_rmem, tcp_wmem) in both namespaces; the direct paths and the relay's QUIC leg cross the emulated link once"
    start_part wan
    run_part wan
    meta wan_emu "$("$BIN/wan-emu" ctl --control "$TMP/emu.sock" show 2>/dev/null | grep -E '^(link|drops)' | paste -sd';' - | tr -s ' ')"
    stop_part wan
fi

meta load_after "loadavg $(cut -d' ' -f1-3 /proc/loadavg); $(others)"
meta duration "$(($(date +%s) - T0)) s"

# ------------------------------------------------------------------------------------------
# Report: per part, one table; medians and the spread (min-max over the runs) per path.

# key|title|unit|decimals
ROWS=(
    "bulk_gbps|single-stream throughput (iperf3)|Gbit/s|2"
    "rtt_p50|round trip p50 (64 B ping-pong)|us|1"
    "rtt_p99|round trip p99|us|1"
    "added_p50|added vs no proxy, p50|us|1"
    "added_p99|added vs no proxy, p99|us|1"
    "relay_p50|added by the relay (relayed - SY direct), p50|us|1"
    "relay_p99|added by the relay (relayed - SY direct), p99|us|1"
    "cpu_a|node A CPU per GB (takes the client)|CPU s/GB|3"
    "cpu_b|node B CPU per GB (the relaying peer)|CPU s/GB|3"
    "cpu_ab|both nodes, CPU per GB|CPU s/GB|3"
    "core_gbps|one core at that CPU per GB: 8 / (A + B)|Gbit/s|2"
)
declare -A PART_TITLE=([loopback]="loopback" [wan]="WAN testbed, $WAN_RTT round trip")
verdict() { # part key -> the target's text, met or missed, for the relayed median
    local m
    m=$(stats "$2" "$1" sy-relay | awk '{print $1}')
    case $1:$2 in
    loopback:bulk_gbps) [[ -n $m ]] && awk -v m="$m" -v t="$TARGET_LO_GBPS" 'BEGIN {printf ">= %s: %s", t, (m >= t ? "met" : "missed")}' ;;
    wan:bulk_gbps) [[ -n $m ]] && awk -v m="$m" -v t="$TARGET_WAN_GBPS" 'BEGIN {printf ">= %s: %s", t, (m >= t ? "met" : "missed")}' ;;
    loopback:relay_p99) [[ -n $m ]] && awk -v m="$m" -v t="$TARGET_LO_ADDED_P99_US" 'BEGIN {printf "< %s: %s", t, (m < t ? "met" : "missed")}' ;;
    esac
    return 0
}
cell() { # key part col decimals -> "median (min-max)" or "-"
    local sm smin smax
    read -r sm smin smax _ <<<"$(stats "$1" "$2" "$3")" || true
    if [[ -z ${sm:-} ]]; then
        echo -
    elif [[ $smin == "$smax" ]]; then
        fmt "$sm" "$4"
    else
        echo "$(fmt "$sm" "$4") ($(fmt "$smin" "$4")-$(fmt "$smax" "$4"))"
    fi
}
TABLE="$TMP/table.txt"
JSONL="$TMP/metrics.jsonl"
: >"$JSONL"
{
    for part in "${PARTS[@]}"; do
        echo "${PART_TITLE[$part]}"
        printf '%-48s %-9s %28s %28s %28s   %s\n' measurement unit "${COL_TITLE[direct]}" "${COL_TITLE[sy-direct]}" "${COL_TITLE[sy-relay]}" "target (relayed)"
        printf '%s\n' "$(printf '%166s' '' | tr ' ' -)"
        for row in "${ROWS[@]}"; do
            IFS='|' read -r key title unit dec <<<"$row"
            # Across the WAN a round trip is some 170,000 us: whole microseconds are plenty.
            [[ $part == wan && $unit == us ]] && dec=0
            [[ -n $(values "$key" "$part" sy-relay; values "$key" "$part" sy-direct; values "$key" "$part" direct) ]] || continue
            printf '%-48s %-9s %28s %28s %28s   %s\n' "$title" "$unit" "$(cell "$key" "$part" direct "$dec")" \
                "$(cell "$key" "$part" sy-direct "$dec")" "$(cell "$key" "$part" sy-relay "$dec")" "$(verdict "$part" "$key")"
            jq -n -c --arg key "$key" --arg part "$part" --arg title "$title" --arg unit "$unit" --arg target "$(verdict "$part" "$key")" \
                --argjson d "$(samples "$key" "$part" direct)" --argjson s "$(samples "$key" "$part" sy-direct)" --argjson r "$(samples "$key" "$part" sy-relay)" '
                def med: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
                {key: $key, part: $part, title: $title, unit: $unit, target: (if $target == "" then null else $target end),
                 median: {direct: ($d | med), "sy-direct": ($s | med), "sy-relay": ($r | med)},
                 min: {direct: ($d | min), "sy-direct": ($s | min), "sy-relay": ($r | min)},
                 max: {direct: ($d | max), "sy-direct": ($s | max), "sy-relay": ($r | max)},
                 samples: {direct: $d, "sy-direct": $s, "sy-relay": $r}}' >>"$JSONL"
        done
        echo
    done
} >"$TABLE"

note "Paths: direct = the client to the origin, no proxy; Switchyard direct = through node A, whose load balancer has relay = \"off\"; Switchyard relayed = through node A, relay = \"failover\", with A's own TCP connections to that origin refused (iptables, by A's group id), so A's probes find its path down and B's reach the origin: the connection goes A -> QUIC stream on the mesh connection -> B -> origin. A's explain showed each load balancer's path before the runs (see path_*), and every relayed run is checked against B's relay byte counters (a run whose bytes B did not carry is left out, as is a direct run B carried)"
note "CPU per GB: each node's utime+stime over the throughput run, per GB the client sent (the whole run, slow start included); 'one core at that CPU per GB' is 8 / (A + B): what one core would move if the nodes, not the load generator, were the limit. On 2 cores the load generator (iperf3 client and server on one core, and on the loopback the kernel's TCP work for both) saturates first, so throughput alone does not show the nodes' limit"
note "Round trips: sockperf's full round trip of a 64-byte message; added = the path's percentile minus the no-proxy path's (or Switchyard direct's) in the same run, then the median over runs"
if ((WAN)); then
    note "WAN: the direct (no proxy) column is the emulator's own ceiling on that path in this run (wan-emu moves every packet through user space, on the same 2 cores); the relayed path crosses the emulated link once (A -> B, QUIC), like the direct paths"
fi

HEADER="Relay benchmark (issue 13): relayed through a peer against direct, $(awk -F'\t' '$1 == "M" && $2 == "date" {print $3}' "$SAMPLES")
machine: $MACHINE
$(awk -F'\t' '$1 == "M" && ($2 == "commit" || $2 == "versions" || $2 == "placement" || $2 == "method" || $2 == "wan" || $2 == "load_before" || $2 == "load_after" || $2 == "duration") {print $2 ": " $3}' "$SAMPLES")
medians of $REPS runs, (min-max) over them"

mkdir -p "$RESULTS"
{
    echo "$HEADER"
    echo
    cat "$TABLE"
    echo "paths (node A's /v1/explain before the runs):"
    awk -F'\t' '$1 == "M" && $2 ~ /^path_/ {sub(/^path_/, "", $2); print "  " $2 ": " $3}' "$SAMPLES"
    awk -F'\t' '$1 == "M" && $2 == "wan_emu" {print "wan-emu counters after the runs: " $3}' "$SAMPLES"
    echo "notes:"
    awk -F'\t' '$1 == "N" {print "  - " $2}' "$SAMPLES"
} >"$RESULTS/relay.txt"

jq -n --slurpfile metrics "$JSONL" --argjson meta "$(meta_json)" --argjson notes "$(notes_json)" \
    --argjson parts "$(printf '%s\n' "${PARTS[@]}" | jq -R -s 'split("\n") | map(select(length > 0))')" \
    '{meta: $meta, parts: $parts, columns: {direct: "direct (no proxy)", "sy-direct": "Switchyard direct (relay off)", "sy-relay": "Switchyard relayed through a peer"},
      targets: {loopback_relayed_gbps_min: '"$TARGET_LO_GBPS"', wan_relayed_gbps_min: '"$TARGET_WAN_GBPS"', loopback_relay_added_p99_us_max: '"$TARGET_LO_ADDED_P99_US"'},
      metrics: $metrics, notes: $notes}' >"$RESULTS/relay.json"

cat "$RESULTS/relay.txt"
log "wrote $RESULTS/relay.txt and $RESULTS/relay.json"
