#!/usr/bin/env bash
# testnet.sh: a Switchyard test network on loopback. Three nodes, one per region (WNAM, WEU,
# SEAS), in front of six test origins, two per region. Every process runs in the background
# with its pid file and log under .testnet/. Run `./testnet.sh help` for the commands.
#
# WAN mode (`up --wan`, root only) runs the same testnet with each region in its own network
# namespace, joined through wan-emu with a WAN's latencies (tests/wan/netns.sh; see the WAN mode
# section below and tests/wan/README.md).
#
# Needs bash 4+ and coreutils. Uses curl, setsid and flock when present; works without them.
# WAN mode also needs root, iproute2 (ip) and /dev/net/tun.
set -euo pipefail

if ((BASH_VERSINFO[0] < 4)); then
    echo "testnet.sh: needs bash 4 or later (this is $BASH_VERSION)" >&2
    exit 1
fi

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"
STATE=.testnet

# Seconds to wait for processes to come up, and to exit after SIGTERM before SIGKILL.
READY_TIMEOUT=${TESTNET_READY_TIMEOUT:-30}
# Seconds to wait, once the nodes are ready, until they see each other alive in the mesh.
MESH_TIMEOUT=${TESTNET_MESH_TIMEOUT:-30}
STOP_TIMEOUT=${TESTNET_STOP_TIMEOUT:-15}
# How long a node drains open connections on SIGTERM; below STOP_TIMEOUT.
DRAIN_TIMEOUT=5s

# ---- Topology --------------------------------------------------------------------------------

NODE_IDS=(edge-wnam edge-weu edge-seas)
declare -A NODE_REGION=([edge-wnam]=WNAM [edge-weu]=WEU [edge-seas]=SEAS)
declare -A NODE_STATUS=([edge-wnam]=127.0.0.1:9901 [edge-weu]=127.0.0.1:9902 [edge-seas]=127.0.0.1:9903)

# The mesh: SWIM over QUIC (UDP) with mutual TLS; every node seeds from all three addresses.
# The CA and node certificates are made once under $STATE/certs and reused by later runs.
CLUSTER=testnet
declare -A NODE_MESH=([edge-wnam]=127.0.0.1:7946 [edge-weu]=127.0.0.1:7947 [edge-seas]=127.0.0.1:7948)
# Timings short enough to watch a node go down and rejoin within seconds.
MESH_PROBE_PERIOD=500ms
MESH_PROBE_TIMEOUT=250ms
MESH_SUSPECT_TIMEOUT=2s
MESH_ANNOUNCE_INTERVAL=1s
MESH_ANTI_ENTROPY_INTERVAL=1s

# Apps every node runs, and where: APP_ADDR[node/app]. Each app has the load balancer of its
# name (see write_config): failover, geo, dynamic and proximity steering over the pools wnam,
# weu and seas; hash is geo steering over wnam-hash, weu-hash and seas-hash, the same origins
# picked by a consistent hash of the client address. Node i (0 edge-wnam, 1 edge-weu,
# 2 edge-seas) has app k of APP_NAMES on port 10001 + 10k + i.
APP_NAMES=(failover geo dynamic proximity hash)
declare -A APP_ADDR=(
    [edge-wnam/failover]=127.0.0.1:10001
    [edge-weu/failover]=127.0.0.1:10002
    [edge-seas/failover]=127.0.0.1:10003
    [edge-wnam/geo]=127.0.0.1:10011
    [edge-weu/geo]=127.0.0.1:10012
    [edge-seas/geo]=127.0.0.1:10013
    [edge-wnam/dynamic]=127.0.0.1:10021
    [edge-weu/dynamic]=127.0.0.1:10022
    [edge-seas/dynamic]=127.0.0.1:10023
    [edge-wnam/proximity]=127.0.0.1:10031
    [edge-weu/proximity]=127.0.0.1:10032
    [edge-seas/proximity]=127.0.0.1:10033
    [edge-wnam/hash]=127.0.0.1:10041
    [edge-weu/hash]=127.0.0.1:10042
    [edge-seas/hash]=127.0.0.1:10043
)

POOLS=(wnam weu seas)
declare -A POOL_REGION=([wnam]=WNAM [weu]=WEU [seas]=SEAS)
# Where each pool is (latitude,longitude), for proximity steering: Palo Alto, Frankfurt,
# Singapore. Its -hash twin is in the same place.
declare -A POOL_LOCATION=([wnam]="37.4,-122.1" [weu]="50.1,8.7" [seas]="1.35,103.8")

# Each origin has its own loopback IP, so one monitor port override (HEALTH_PORT) fits all.
ORIGIN_NAMES=(wnam-1 wnam-2 weu-1 weu-2 seas-1 seas-2)
declare -A ORIGIN_POOL=([wnam-1]=wnam [wnam-2]=wnam [weu-1]=weu [weu-2]=weu [seas-1]=seas [seas-2]=seas)
declare -A ORIGIN_IP=(
    [wnam-1]=127.0.11.1 [wnam-2]=127.0.11.2
    [weu-1]=127.0.12.1 [weu-2]=127.0.12.2
    [seas-1]=127.0.13.1 [seas-2]=127.0.13.2
)
ORIGIN_PORT=7000
HEALTH_PORT=7080

# A loopback source address per region, for clients. `up` builds a GeoIP database
# ($STATE/geo.mmdb, from $STATE/geo.csv) that places each region's client network
# (CLIENT_NET) in a country of that region, at the coordinates of a city there; every node's
# [geo] section reads it. CLIENT_GEO is the CSV's `country,subdivision,latitude,longitude`.
REGIONS=(WNAM WEU SEAS)
declare -A CLIENT_IP=([WNAM]=127.0.1.1 [WEU]=127.0.2.1 [SEAS]=127.0.3.1)
declare -A CLIENT_NET=([WNAM]=127.0.1.0/24 [WEU]=127.0.2.0/24 [SEAS]=127.0.3.0/24)
declare -A CLIENT_GEO=([WNAM]="US,CA,37.34,-121.89" [WEU]="DE,,50.11,8.68" [SEAS]="SG,,1.35,103.82")
declare -A CLIENT_PLACE=([WNAM]="San Jose, California" [WEU]=Frankfurt [SEAS]=Singapore)

# ---- WAN mode --------------------------------------------------------------------------------
# `up --wan` starts the WAN testbed (tests/wan/netns.sh, state in $WAN_DIR): one network
# namespace per region (sy-wnam, sy-weu, sy-seas), joined through wan-emu, a userspace WAN
# emulator with a latency matrix (`./testnet.sh wan set|cut|heal|show`). Region i (WNAM 1,
# WEU 2, SEAS 3) owns 10.250.i.0/24 inside its namespace: its node at .1 (apps on the ports of
# loopback mode, status :9900, mesh :7946), its origins at .11 and .12, its client at .100.
# Every process runs inside its region's namespace (`ip netns exec`); pid files as on loopback.
# $STATE/mode says "wan" while a WAN testnet is up, so the other commands follow it.
MODE=loopback
MODE_FILE=$STATE/mode
NETNS_SH=$ROOT/tests/wan/netns.sh
WAN_DIR=$STATE/wan
declare -A REGION_INDEX=([WNAM]=1 [WEU]=2 [SEAS]=3)
declare -A NETNS=() # region -> namespace, from $WAN_DIR/regions (what netns.sh made)

# use_wan: switches the topology above to WAN mode's addresses and timings.
use_wan() {
    local id i app name r
    MODE=wan
    for id in "${NODE_IDS[@]}"; do
        i=${REGION_INDEX[${NODE_REGION[$id]}]}
        NODE_STATUS[$id]=10.250.$i.1:9900
        NODE_MESH[$id]=10.250.$i.1:7946
        for app in "${APP_NAMES[@]}"; do
            APP_ADDR[$id/$app]=10.250.$i.1:${APP_ADDR[$id/$app]##*:}
        done
    done
    for name in "${ORIGIN_NAMES[@]}"; do # wnam-1 -> 10.250.1.11, wnam-2 -> 10.250.1.12
        i=${REGION_INDEX[${POOL_REGION[${ORIGIN_POOL[$name]}]}]}
        ORIGIN_IP[$name]=10.250.$i.$((10 + ${name##*-}))
    done
    for r in "${REGIONS[@]}"; do
        i=${REGION_INDEX[$r]}
        CLIENT_IP[$r]=10.250.$i.100
        CLIENT_NET[$r]=10.250.$i.0/24
    done
    # Timings for round trips of 75-170 ms: a probe, its timeout and suspicion with room to
    # spare, so only a cut link or a stopped node makes a member suspect.
    MESH_PROBE_PERIOD=1s
    MESH_PROBE_TIMEOUT=500ms
    MESH_SUSPECT_TIMEOUT=5s
    MESH_ANNOUNCE_INTERVAL=2s
    MESH_ANTI_ENTROPY_INTERVAL=1s
    load_netns
}

# load_netns: NETNS from the namespaces netns.sh recorded (default: sy-<region>).
load_netns() {
    local r name index netns
    for r in "${REGIONS[@]}"; do NETNS[$r]=${WAN_NETNS_PREFIX:-sy-}${r,,}; done
    [[ -f $WAN_DIR/regions ]] || return 0
    while read -r name index netns; do
        [[ -n $name && -n $netns ]] && NETNS[$name]=$netns
    done <"$WAN_DIR/regions"
    return 0
}

# The mode the running (or last started) testnet is in: wan or loopback.
recorded_mode() {
    if [[ -f $MODE_FILE && $(<"$MODE_FILE") == wan ]]; then echo wan; else echo loopback; fi
}

# ---- Helpers ---------------------------------------------------------------------------------
# Deadlines are SECONDS + N + 1: SECONDS counts whole seconds, so this waits at least N.

say() { printf '%s\n' "$*"; }
warn() { printf 'testnet.sh: %s\n' "$*" >&2; }
die() {
    warn "$*"
    exit 1
}

usage() {
    cat <<'EOF'
usage: ./testnet.sh COMMAND

  up                         build, start 6 origins and 3 nodes on loopback, wait until ready
                             and the nodes form one mesh (certificates in .testnet/certs/)
  up --wan                   the same in WAN mode (root only): each region in its own network
                             namespace (sy-wnam, sy-weu, sy-seas), joined through wan-emu with
                             a WAN's latencies (tests/wan/netns.sh); region i is 10.250.i.0/24:
                             node .1 (status :9900, mesh :7946), origins .11 .12, client .100.
                             The commands below then act inside the namespaces
  down                       stop everything testnet.sh started (logs stay in .testnet/);
                             in WAN mode also wan-emu and the namespaces it made
  status                     each node's `switchyard status` (with its mesh members), and
                             which origins run
                             (exit 3 when something is not running)
  origin down|up NAME        stop / start one origin (wnam-1 wnam-2 weu-1 weu-2 seas-1 seas-2)
  node down|up ID            stop (SIGTERM, graceful drain, leaves the mesh) / start one
                             node and wait until it rejoins (edge-wnam edge-weu edge-seas)
  client [--from REGION] [--app NAME] [--node ID] [--timeout DUR]
                             connect through a node's app (default: edge-wnam, failover) from
                             the region's client address (default: the node's region) and
                             print the origin's name. Apps: failover, geo, dynamic, proximity,
                             hash (see .testnet/manifest.json); regions: WNAM WEU SEAS
  wan set A B DUR            WAN mode: the round-trip time between regions A and B (e.g. 120ms)
  wan cut A B | heal A B     WAN mode: drop everything between A and B (B may be '*') / undo
  wan loss A B PCT           WAN mode: drop each packet between A and B with this probability
  wan show                   WAN mode: the latency matrix and wan-emu's counters
  help                       this text

Environment: TESTNET_READY_TIMEOUT (s, default 30), TESTNET_MESH_TIMEOUT (s, default 30),
TESTNET_STOP_TIMEOUT (s, default 15), TESTNET_SKIP_BUILD=1 (up: use the binaries already
built), RUST_LOG (default info), WAN_NETNS_PREFIX and WAN_LIFETIME (up --wan; see
tests/wan/netns.sh).
EOF
}

bad_usage() {
    [[ $# -gt 0 ]] && warn "$*"
    usage >&2
    exit 2
}

contains() { # contains WORD LIST...: whether WORD is one of LIST
    local word=$1 w
    shift
    for w; do [[ $w == "$word" ]] && return 0; done
    return 1
}

is_node() { contains "$1" "${NODE_IDS[@]}"; }
is_origin() { contains "$1" "${ORIGIN_NAMES[@]}"; }

# The region a node or origin is in.
region_of() {
    if is_node "$1"; then
        printf '%s\n' "${NODE_REGION[$1]}"
    else
        printf '%s\n' "${POOL_REGION[${ORIGIN_POOL[$1]}]}"
    fi
}

# in_ns REGION CMD...: runs CMD (a program) in REGION's namespace in WAN mode; on loopback,
# or with an empty REGION, runs it as it is.
in_ns() {
    local region=$1
    shift
    if [[ $MODE == wan && -n $region ]]; then
        ip netns exec "${NETNS[$region]}" "$@"
    else
        "$@"
    fi
}

# need_root WHAT: exits 2 unless root (WAN mode makes namespaces and runs processes in them).
need_root() {
    [[ $(id -u) == 0 ]] && return 0
    warn "$* needs root (network namespaces, a TUN device); run it as root, e.g. with sudo"
    exit 2
}

# netns_sh ARG...: tests/wan/netns.sh with this testnet's wan-emu and state directory. The
# lock (fd 9) is not passed on: wan-emu outlives this script.
netns_sh() {
    WAN_EMU=$BIN/wan-emu WAN_STATE=$ROOT/$WAN_DIR "$NETNS_SH" "$@" 9>&-
}

# Whether the WAN testbed runs (its wan-emu answers to its pid file).
wan_running() {
    WAN_STATE=$ROOT/$WAN_DIR "$NETNS_SH" status >/dev/null 2>&1 9>&-
}

# Whether netns.sh has state under $WAN_DIR: a testbed up, or what one left behind.
wan_state_present() {
    [[ -s $WAN_DIR/regions || -f $WAN_DIR/wan-emu.pid ]]
}

# wan_down: stops the WAN testbed: wan-emu, every process left in its namespaces, and the
# namespaces with their TUN devices (netns.sh down removes only what it recorded making).
wan_down() {
    wan_state_present || return 0
    BIN=${BIN:-$(bin_dir)}
    netns_sh down || die "tests/wan/netns.sh down failed; see $WAN_DIR/wan-emu.log"
}

pidfile() { printf '%s/%s.pid\n' "$STATE" "$1"; }
logfile() { printf '%s/%s.log\n' "$STATE" "$1"; }
config_of() { printf '%s/%s.toml\n' "$STATE" "$1"; }

# Where cargo puts release binaries: recorded by `up`, else CARGO_TARGET_DIR or target/.
bin_dir() {
    if [[ -s $STATE/bin-dir ]]; then
        cat "$STATE/bin-dir"
    else
        printf '%s/release\n' "${CARGO_TARGET_DIR:-target}"
    fi
}

# Shortens $ROOT/x to x for messages.
rel() {
    local p=$1
    [[ $p == "$ROOT"/* ]] && p=${p#"$ROOT"/}
    printf '%s\n' "$p"
}

need_bins() {
    local bin bins=(switchyard test-origin sy-client)
    BIN=$(bin_dir)
    [[ $MODE == wan ]] && bins+=(wan-emu)
    for bin in "${bins[@]}"; do
        [[ -x $BIN/$bin ]] || die "$BIN/$bin is missing; run ./testnet.sh up (it builds them)"
    done
}

# One lock for commands that start or stop processes, so two never race into duplicates.
# Held on fd 9, which started processes must not inherit (see launch).
lock() {
    mkdir -p "$STATE"
    command -v flock >/dev/null 2>&1 || return 0
    exec 9>"$STATE/lock"
    flock -w 120 9 || die "another testnet.sh has held $STATE/lock for 2 minutes; giving up"
}

# Whether a process exists and is not a zombie (orphans may wait unreaped).
is_alive() {
    local pid=$1 stat
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ -r /proc/$pid/stat ]]; then
        { stat=$(<"/proc/$pid/stat"); } 2>/dev/null || return 1
        stat=${stat##*) }
        [[ ${stat%% *} != Z ]] || return 1
    fi
    return 0
}

# What the command line of NAME's process contains, so a reused pid is never taken for it.
marker() {
    if is_node "$1"; then
        printf ' run --config %s\n' "$(config_of "$1")"
    else
        printf ' --name %s --listen \n' "$1"
    fi
}

# Prints the pid of NAME's process if it runs; fails otherwise.
running_pid() {
    local name=$1 file pid cmd
    file=$(pidfile "$name")
    [[ -f $file ]] || return 1
    { pid=$(<"$file"); } 2>/dev/null || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    is_alive "$pid" || return 1
    if [[ -r /proc/$pid/cmdline ]]; then
        { cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline"); } 2>/dev/null || return 1
        [[ $cmd == *"$(marker "$name")"* ]] || return 1
    fi
    printf '%s\n' "$pid"
}

# Prints the HTTP status code of GET http://ADDR/PATH, or 000 when nothing answers.
HAVE_CURL=$(command -v curl >/dev/null 2>&1 && echo 1 || echo 0)
HAVE_DEVTCP=
devtcp_works() {
    if [[ -z $HAVE_DEVTCP ]]; then
        # Without network redirections bash opens a file named /dev/tcp/..., which is missing.
        if [[ $(LC_ALL=C timeout 2 bash -c ': </dev/tcp/127.0.0.1/1' 2>&1) == *"No such file"* ]]; then
            HAVE_DEVTCP=0
        else
            HAVE_DEVTCP=1
        fi
    fi
    [[ $HAVE_DEVTCP == 1 ]]
}

# http_code ADDR PATH [REGION]: in WAN mode, asked from inside REGION's namespace.
http_code() {
    local addr=$1 path=$2 region=${3:-}
    if [[ $HAVE_CURL == 1 ]]; then
        in_ns "$region" curl --noproxy '*' -s -o /dev/null -w '%{http_code}' --max-time 2 \
            "http://$addr$path" || true
    elif devtcp_works; then
        # shellcheck disable=SC2016 # expanded by the inner bash
        in_ns "$region" timeout 3 bash -c '
            exec 3<>"/dev/tcp/$1/$2" || exit 1
            printf "GET %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n\r\n" "$3" "$1" "$2" >&3
            read -r _ code _ <&3 || exit 1
            printf "%s\n" "$code"
        ' _ "${addr%:*}" "${addr##*:}" "$path" 2>/dev/null || echo 000
    else
        echo 000
    fi
}

# Whether a node's GET /ready answers 200.
node_ready() {
    local addr=${NODE_STATUS[$1]} region=${NODE_REGION[$1]}
    if [[ $HAVE_CURL == 1 ]] || devtcp_works; then
        [[ $(http_code "$addr" /ready "$region") == 200 ]]
    else
        in_ns "$region" "$BIN/switchyard" status --addr "$addr" >/dev/null 2>&1
    fi
}

# port_taken ADDR [REGION]: whether something accepts connections on ADDR (in REGION's
# namespace in WAN mode; unknown without /dev/tcp: says no).
port_taken() {
    devtcp_works || return 1
    # shellcheck disable=SC2016 # expanded by the inner bash
    in_ns "${2:-}" timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "${1%:*}" "${1##*:}" 2>/dev/null
}

# udp_taken ADDR [REGION]: whether a UDP socket is bound to ADDR's port on ADDR's IP (also
# IPv4-mapped) or on a wildcard address, from /proc/net/udp and udp6 (unknown without them:
# says no; in WAN mode, read inside REGION's namespace). Their local_address column is
# HEXIP:HEXPORT, the IP in host byte order.
udp_taken() {
    local a b c d ip port re f local_addr region=${2:-}
    IFS=. read -r a b c d <<<"${1%:*}"
    printf -v ip '(%02X%02X%02X%02X|%02X%02X%02X%02X)' "$d" "$c" "$b" "$a" "$a" "$b" "$c" "$d"
    printf -v port '%04X' "${1##*:}"
    re="^((0000000000000000FFFF0000)?$ip|0+):$port\$"
    for f in /proc/net/udp /proc/net/udp6; do
        [[ -r $f ]] || continue
        if [[ $MODE == wan && -n $region ]]; then
            # /proc/net is the reader's namespace's.
            while read -r _ local_addr _; do
                [[ ${local_addr^^} =~ $re ]] && return 0
            done < <(in_ns "$region" cat "$f" 2>/dev/null)
        else
            while read -r _ local_addr _; do
                [[ ${local_addr^^} =~ $re ]] && return 0
            done <"$f"
        fi
    done
    return 1
}

# The addresses a component binds over TCP (a node's mesh address is UDP: NODE_MESH).
addrs_of() {
    local name=$1 app
    if is_node "$name"; then
        printf '%s\n' "${NODE_STATUS[$name]}"
        for app in "${APP_NAMES[@]}"; do printf '%s\n' "${APP_ADDR[$name/$app]}"; done
    else
        printf '%s\n' "${ORIGIN_IP[$name]}:$ORIGIN_PORT" "${ORIGIN_IP[$name]}:$HEALTH_PORT"
    fi
}

check_free() {
    local name addr region
    for name; do
        region=$(region_of "$name")
        while read -r addr; do
            if port_taken "$addr" "$region"; then
                die "$addr (for $name) is already in use; is another testnet running?" \
                    "(./testnet.sh down there, or find it with: ss -ltnp)"
            fi
        done < <(addrs_of "$name")
        if is_node "$name" && udp_taken "${NODE_MESH[$name]}" "$region"; then
            die "UDP ${NODE_MESH[$name]} (the mesh address of $name) is already in use; is" \
                "another testnet running? (./testnet.sh down there, or find it with: ss -lunp)"
        fi
    done
}

# launch NAME CMD...: starts CMD in the background, logging to NAME's log, pid to its pid file.
# Its own session (setsid) keeps it out of the terminal's Ctrl-C; fd 9 (the lock) is not passed.
# NO_COLOR keeps escape codes out of the logs.
# In WAN mode CMD runs in NAME's region's namespace: `ip netns exec` execs it, so the pid
# recorded is still CMD's.
launch() {
    local name=$1 log
    shift
    if [[ $MODE == wan ]]; then
        set -- ip netns exec "${NETNS[$(region_of "$name")]}" "$@"
    fi
    log=$(logfile "$name")
    printf -- '--- testnet.sh: starting %s at %s\n' "$name" "$(date '+%F %T')" >>"$log"
    if command -v setsid >/dev/null 2>&1; then
        NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} setsid "$@" </dev/null >>"$log" 2>&1 9>&- &
    else
        NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} "$@" </dev/null >>"$log" 2>&1 9>&- &
    fi
    printf '%s\n' "$!" >"$(pidfile "$name")"
}

start_origin() {
    local name=$1 ip=${ORIGIN_IP[$1]}
    launch "$name" "$BIN/test-origin" --name "$name" --listen "$ip:$ORIGIN_PORT" \
        --http "$ip:$HEALTH_PORT"
}

start_node() {
    launch "$1" "$BIN/switchyard" run --config "$(config_of "$1")"
}

# Fails with the log's tail when NAME's process has exited.
check_alive() {
    local name=$1 log
    running_pid "$name" >/dev/null && return 0
    log=$(logfile "$name")
    warn "$name exited during startup; the end of $log:"
    tail -n 15 "$log" | sed 's/^/    /' >&2
    exit 1
}

# Whether NAME is ready: a node's /ready answers 200; an origin's health port answers 200.
is_ready() {
    if is_node "$1"; then
        node_ready "$1"
    elif [[ $HAVE_CURL == 1 ]] || devtcp_works; then
        [[ $(http_code "${ORIGIN_IP[$1]}:$HEALTH_PORT" / "$(region_of "$1")") == 200 ]]
    else
        tail -n 5 "$(logfile "$1")" | grep -q 'test origin listening'
    fi
}

# wait_ready NAME...: polls until all are ready, failing with the log of one that is not.
wait_ready() {
    local deadline=$((SECONDS + READY_TIMEOUT + 1)) name what
    local -a pending=("$@") left
    while ((${#pending[@]} > 0)); do
        left=()
        for name in "${pending[@]}"; do
            check_alive "$name"
            is_ready "$name" || left+=("$name")
        done
        pending=("${left[@]+"${left[@]}"}")
        ((${#pending[@]} == 0)) && break
        if ((SECONDS >= deadline)); then
            name=${pending[0]}
            if is_node "$name"; then
                what="GET http://${NODE_STATUS[$name]}/ready did not answer 200"
            else
                what="its health check http://${ORIGIN_IP[$name]}:$HEALTH_PORT/ did not answer 200"
            fi
            [[ $MODE == wan ]] && what+=" (asked inside namespace ${NETNS[$(region_of "$name")]})"
            die "$name is not ready after ${READY_TIMEOUT}s: $what; see $(logfile "$name")"
        fi
        sleep 0.1
    done
}

# mesh_members ID: ID's mesh members as its status reports them, one "ID STATE GENERATION
# REGION ADDR RTT_MS" line each (nothing without [mesh]); fails when its status does not answer.
# The JSON is flattened first; member objects hold no nested objects or arrays.
mesh_members() {
    local json body obj f re
    local -A m
    json=$(in_ns "${NODE_REGION[$1]}" "$BIN/switchyard" status --addr "${NODE_STATUS[$1]}" \
        --json 2>/dev/null) || return 1
    json=$(tr -d ' \t\r\n' <<<"$json")
    re='"members":\[([^]]*)\]'
    [[ $json =~ $re ]] || return 0
    body=${BASH_REMATCH[1]}
    while IFS= read -r obj; do
        [[ -n $obj ]] || continue
        m=()
        for f in id state region addr; do
            re="\"$f\":\"([^\"]*)\""
            [[ $obj =~ $re ]] && m[$f]=${BASH_REMATCH[1]}
        done
        for f in generation rtt_ms; do
            re="\"$f\":([0-9.]+)"
            [[ $obj =~ $re ]] && m[$f]=${BASH_REMATCH[1]}
        done
        printf '%s %s %s %s %s %s\n' "${m[id]:-?}" "${m[state]:-?}" "${m[generation]:--}" \
            "${m[region]:--}" "${m[addr]:--}" "${m[rtt_ms]:--}"
    done <<<"${body//\},\{/$'\n'}"
}

# sees_alive ID WANT...: whether ID lists every WANT alive. Sets SEEN to what it lists.
SEEN=
sees_alive() {
    local id=$1 members mid state want
    local -A alive=()
    shift
    if ! members=$(mesh_members "$id"); then
        SEEN="its status (${NODE_STATUS[$id]}) did not answer"
        return 1
    fi
    SEEN=
    while read -r mid state _; do
        [[ -n $mid ]] || continue
        SEEN+="${SEEN:+, }$mid $state"
        [[ $state == alive ]] && alive[$mid]=1
    done <<<"$members"
    SEEN="it lists ${SEEN:-no members}"
    for want; do
        [[ -n ${alive[$want]:-} ]] || return 1
    done
    return 0
}

# wait_mesh ID...: polls until each of them lists all of them alive; fails naming one that
# does not, with what it lists, and its log.
wait_mesh() {
    local deadline=$((SECONDS + MESH_TIMEOUT + 1)) id
    local -a pending=("$@") left
    local -A seen=()
    while :; do
        left=()
        for id in "${pending[@]}"; do
            check_alive "$id"
            if ! sees_alive "$id" "$@"; then
                seen[$id]=$SEEN
                left+=("$id")
            fi
        done
        pending=("${left[@]+"${left[@]}"}")
        ((${#pending[@]} == 0)) && return 0
        if ((SECONDS >= deadline)); then
            id=${pending[0]}
            die "the mesh did not form within ${MESH_TIMEOUT}s: $id does not list $* all" \
                "alive (${seen[$id]}); see $(logfile "$id")"
        fi
        sleep 0.2
    done
}

# stop NAME...: SIGTERM, then SIGKILL after STOP_TIMEOUT; removes pid files. Only processes
# whose pid file names them, and still run what testnet.sh started, are signalled.
stop() {
    local name pid deadline
    local -A pids=() killed=()
    for name; do
        if pid=$(running_pid "$name"); then
            kill -TERM "$pid" 2>/dev/null || true
            pids[$name]=$pid
        else
            rm -f "$(pidfile "$name")"
        fi
    done
    deadline=$((SECONDS + STOP_TIMEOUT + 1))
    while ((${#pids[@]} > 0)); do
        for name in "${!pids[@]}"; do
            pid=${pids[$name]}
            if ! is_alive "$pid"; then
                say "stopped $name (pid $pid)"
                rm -f "$(pidfile "$name")"
                unset "pids[$name]"
            elif ((SECONDS >= deadline)) && [[ -z ${killed[$name]:-} ]]; then
                warn "$name (pid $pid) did not exit ${STOP_TIMEOUT}s after SIGTERM; sending SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
                killed[$name]=1
            fi
        done
        ((${#pids[@]} == 0)) && break
        if ((SECONDS >= deadline + 5)); then
            die "could not stop: ${!pids[*]}"
        fi
        sleep 0.1
    done
}

all_names() { printf '%s\n' "${NODE_IDS[@]}" "${ORIGIN_NAMES[@]}"; }

# ---- Files -----------------------------------------------------------------------------------

CERTS=$STATE/certs

# ensure_certs ID...: creates the cluster CA unless it exists, and a certificate for each ID
# that has none, or one older than the CA (so from another CA).
ensure_certs() {
    local ca=$CERTS/ca id out
    if [[ ! -s $ca/ca.crt || ! -s $ca/ca.key ]]; then
        rm -f "$ca/ca.crt" "$ca/ca.key" # half a CA is of no use
        out=$("$BIN/switchyard" ca init --out "$ca" --cluster "$CLUSTER" 2>&1) ||
            die "cannot create the cluster CA in $ca: $out"
        say "  $out"
    fi
    for id; do
        if [[ ! -s $CERTS/$id.crt || ! -s $CERTS/$id.key || $CERTS/$id.crt -ot $ca/ca.crt ]]; then
            out=$("$BIN/switchyard" cert issue --ca "$ca" --node "$id" --out "$CERTS" 2>&1) ||
                die "cannot issue a certificate for $id: $out"
            say "  $out"
        fi
    done
}

GEO_CSV=$STATE/geo.csv
GEO_DB=$STATE/geo.mmdb

# build_geoip: writes $GEO_CSV, builds $GEO_DB from it with `switchyard geoip build`, and checks
# with `switchyard geoip lookup` that each region's client address is placed in that region.
build_geoip() {
    local r out re
    {
        printf '# Written by ./testnet.sh up: where the testnet clients are. Built into\n'
        printf '# %s with: switchyard geoip build --from %s --out %s\n' "$GEO_DB" "$GEO_CSV" "$GEO_DB"
        printf 'cidr,country,subdivision,latitude,longitude\n'
        for r in "${REGIONS[@]}"; do
            printf '%s,%s  # %s: %s\n' "${CLIENT_NET[$r]}" "${CLIENT_GEO[$r]}" "$r" "${CLIENT_PLACE[$r]}"
        done
    } >"$GEO_CSV.tmp"
    mv "$GEO_CSV.tmp" "$GEO_CSV"
    out=$("$BIN/switchyard" geoip build --from "$GEO_CSV" --out "$GEO_DB" 2>&1) ||
        die "cannot build the GeoIP database $GEO_DB from $GEO_CSV: $out"
    say "  $out"
    for r in "${REGIONS[@]}"; do
        out=$("$BIN/switchyard" geoip lookup "${CLIENT_IP[$r]}" --db "$GEO_DB" 2>&1) ||
            die "switchyard geoip lookup ${CLIENT_IP[$r]} --db $GEO_DB failed: $out"
        re="(^|[[:space:]])region $r([[:space:],]|\$)"
        [[ $out =~ $re ]] ||
            die "the GeoIP database $GEO_DB does not place ${CLIENT_IP[$r]} (the $r client) in" \
                "region $r; switchyard geoip lookup ${CLIENT_IP[$r]} --db $GEO_DB says: $out"
        say "  ${out%%$'\n'*}"
    done
}

# The seeds of every node: all mesh addresses, as TOML strings.
mesh_seeds() {
    local id sep=
    for id in "${NODE_IDS[@]}"; do
        printf '%s"%s"' "$sep" "${NODE_MESH[$id]}"
        sep=', '
    done
}

# lb_toml NAME STEERING SUFFIX: a [[load_balancer]] over the pools wnam, weu and seas, each
# with SUFFIX appended; geo steering sends each region to its own pool.
lb_toml() {
    local name=$1 steering=$2 x=$3 pool r sep=
    printf '\n[[load_balancer]]\nname = "%s"\nsteering = "%s"\n' "$name" "$steering"
    printf 'default_pools = ["wnam%s", "weu%s", "seas%s"]\nfallback_pool = "seas%s"\n' "$x" "$x" "$x" "$x"
    if [[ $steering == geo ]]; then
        printf 'region_pools = {'
        for pool in "${POOLS[@]}"; do
            r=${POOL_REGION[$pool]}
            printf '%s %s = ["%s%s"]' "$sep" "$r" "$pool" "$x"
            sep=,
        done
        printf ' }\n'
    fi
}

write_config() {
    local id=$1 pool name file app x
    file=$(config_of "$id")
    {
        cat <<EOF
# Written by ./testnet.sh up.
[node]
id = "$id"
region = "${NODE_REGION[$id]}"
status_listen = "${NODE_STATUS[$id]}"
drain_timeout = "$DRAIN_TIMEOUT"

[geo]
database = '$ROOT/$GEO_DB'

[[monitor]]
name = "http"
type = "http"
port = $HEALTH_PORT
path = "/"
expected_codes = "200"
interval = "2s"
timeout = "1s"
retries = 1
EOF
        # Each pool, then its -hash twin: the same origins, picked by client address.
        for x in '' -hash; do
            for pool in "${POOLS[@]}"; do
                printf '\n[[pool]]\nname = "%s%s"\nmonitor = "http"\n' "$pool" "$x"
                [[ -z $x ]] || printf 'origin_steering = "hash"\n'
                printf 'latitude = %s\nlongitude = %s\norigins = [\n' \
                    "${POOL_LOCATION[$pool]%,*}" "${POOL_LOCATION[$pool]#*,}"
                for name in "${ORIGIN_NAMES[@]}"; do
                    [[ ${ORIGIN_POOL[$name]} == "$pool" ]] || continue
                    printf '  { name = "%s", address = "%s:%s" },\n' \
                        "$name" "${ORIGIN_IP[$name]}" "$ORIGIN_PORT"
                done
                printf ']\n'
            done
        done
        lb_toml failover failover ''
        lb_toml geo geo ''
        lb_toml dynamic dynamic ''
        lb_toml proximity proximity ''
        lb_toml hash geo -hash
        for app in "${APP_NAMES[@]}"; do
            printf '\n[[app]]\nname = "%s"\nlisten = "%s"\nload_balancer = "%s"\n' \
                "$app" "${APP_ADDR[$id/$app]}" "$app"
        done
        cat <<EOF

[mesh]
cluster = "$CLUSTER"
listen = "${NODE_MESH[$id]}"
seeds = [$(mesh_seeds)]
ca = '$ROOT/$CERTS/ca/ca.crt'
cert = '$ROOT/$CERTS/$id.crt'
key = '$ROOT/$CERTS/$id.key'
probe_period = "$MESH_PROBE_PERIOD"
probe_timeout = "$MESH_PROBE_TIMEOUT"
suspect_timeout = "$MESH_SUSPECT_TIMEOUT"
announce_interval = "$MESH_ANNOUNCE_INTERVAL"
anti_entropy_interval = "$MESH_ANTI_ENTROPY_INTERVAL"
EOF
    } >"$file.tmp"
    mv "$file.tmp" "$file"
}

check_config() {
    local out
    if ! out=$("$BIN/switchyard" check --config "$(config_of "$1")" 2>&1); then
        die "$(config_of "$1") is invalid: $out"
    fi
    say "  $out"
}

write_manifest() {
    local file=$STATE/manifest.json i n id app name sep r
    {
        printf '{\n'
        # WAN mode adds the mode and each region's namespace; loopback's manifest is as it was.
        if [[ $MODE == wan ]]; then
            printf '  "mode": "wan",\n  "netns": {'
            sep=
            for r in "${REGIONS[@]}"; do
                printf '%s"%s": "%s"' "$sep" "$r" "${NETNS[$r]}"
                sep=', '
            done
            printf '},\n'
        fi
        printf '  "nodes": [\n'
        n=${#NODE_IDS[@]}
        for ((i = 0; i < n; i++)); do
            id=${NODE_IDS[i]}
            printf '    {"id": "%s", "region": "%s", "status": "%s", "mesh": "%s", "apps": {' \
                "$id" "${NODE_REGION[$id]}" "${NODE_STATUS[$id]}" "${NODE_MESH[$id]}"
            sep=
            for app in "${APP_NAMES[@]}"; do
                printf '%s"%s": "%s"' "$sep" "$app" "${APP_ADDR[$id/$app]}"
                sep=', '
            done
            printf '}}%s\n' "$( ((i < n - 1)) && echo ,)"
        done
        printf '  ],\n  "origins": [\n'
        n=${#ORIGIN_NAMES[@]}
        for ((i = 0; i < n; i++)); do
            name=${ORIGIN_NAMES[i]}
            printf '    {"name": "%s", "pool": "%s", "region": "%s", "addr": "%s:%s"}%s\n' \
                "$name" "${ORIGIN_POOL[$name]}" "${POOL_REGION[${ORIGIN_POOL[$name]}]}" \
                "${ORIGIN_IP[$name]}" "$ORIGIN_PORT" "$( ((i < n - 1)) && echo ,)"
        done
        printf '  ],\n  "clients": {'
        sep=
        for i in "${REGIONS[@]}"; do
            printf '%s"%s": "%s"' "$sep" "$i" "${CLIENT_IP[$i]}"
            sep=', '
        done
        printf '}\n}\n'
    } >"$file.tmp"
    mv "$file.tmp" "$file"
}

print_summary() {
    local id app apps name r b pid
    b=$(rel "$BIN")
    say "nodes:"
    for id in "${NODE_IDS[@]}"; do
        pid=$(running_pid "$id" || echo -)
        printf '  %-10s %-5s status %-15s  mesh %s  pid %-7s log %s\n' "$id" "${NODE_REGION[$id]}" \
            "${NODE_STATUS[$id]}" "${NODE_MESH[$id]}" "$pid" "$(logfile "$id")"
        apps=
        for app in "${APP_NAMES[@]}"; do apps+="${apps:+  }$app ${APP_ADDR[$id/$app]}"; done
        printf '  %-10s apps: %s\n' '' "$apps"
    done
    say "origins:"
    for name in "${ORIGIN_NAMES[@]}"; do
        pid=$(running_pid "$name" || echo -)
        printf '  %-7s pool %-5s %-5s %s:%s  health http://%s:%s/  pid %-7s log %s\n' \
            "$name" "${ORIGIN_POOL[$name]}" "${POOL_REGION[${ORIGIN_POOL[$name]}]}" \
            "${ORIGIN_IP[$name]}" "$ORIGIN_PORT" "${ORIGIN_IP[$name]}" "$HEALTH_PORT" \
            "$pid" "$(logfile "$name")"
    done
    printf 'client source addresses:'
    for r in "${REGIONS[@]}"; do printf '  %s %s' "$r" "${CLIENT_IP[$r]}"; done
    printf '\nconfigs: %s/<node>.toml   manifest: %s/manifest.json   mesh certificates: %s/\n' \
        "$STATE" "$STATE" "$CERTS"
    printf 'GeoIP database: %s (from %s)\n\n' "$GEO_DB" "$GEO_CSV"
    if [[ $MODE == wan ]]; then
        print_wan_summary
        return
    fi
    cat <<EOF
try:
  $b/sy-client ${APP_ADDR[edge-wnam/failover]}          # prints the origin's name
  ./testnet.sh client --from WEU --node edge-weu
  ./testnet.sh client --from WEU --app geo --node edge-wnam        # WEU client, WNAM node: a weu origin
  ./testnet.sh client --from SEAS --app proximity --node edge-weu  # the nearest pool's: a seas origin
  ./testnet.sh client --from WNAM --app hash --node edge-seas      # the same origin from every node
  ./testnet.sh client --from WEU --app dynamic                     # the pool of lowest RTT from WEU
  $b/switchyard explain --lb geo --client ${CLIENT_IP[WEU]} --addr ${NODE_STATUS[edge-wnam]}   # why that origin
  $b/switchyard geoip lookup ${CLIENT_IP[WEU]} --db $GEO_DB   # where a client is
  $b/switchyard status --addr ${NODE_STATUS[edge-wnam]}   # members, and who sees which origin
  ./testnet.sh origin down wnam-1                 # and wnam-2: edge-wnam fails over to weu
  ./testnet.sh node down edge-weu                 # it leaves the mesh; then watch it go down:
  $b/switchyard status --addr ${NODE_STATUS[edge-wnam]}   # edge-weu is down in the member list
  ./testnet.sh node up edge-weu                   # it rejoins, with a new generation
  ./testnet.sh status
  ./testnet.sh down
EOF
}

# The WAN part of the summary: namespaces, latencies, and what to try.
print_wan_summary() {
    local b r ns_wnam=${NETNS[WNAM]}
    b=$(rel "$BIN")
    say "WAN mode: every process runs in its region's namespace; wan-emu joins them"
    for r in "${REGIONS[@]}"; do
        printf '  %-5s namespace %-8s 10.250.%s.0/24   (ip netns exec %s CMD...)\n' \
            "$r" "${NETNS[$r]}" "${REGION_INDEX[$r]}" "${NETNS[$r]}"
    done
    say "  testbed state, wan-emu log and control socket: $WAN_DIR/"
    netns_sh show 2>/dev/null | sed -n '1,/^link /{/^link /d;s/^/  /;p}' || true
    cat <<EOF

try:
  ./testnet.sh client --from WNAM                                  # edge-wnam's failover app: a wnam origin
  ./testnet.sh client --from WEU --app geo --node edge-wnam        # across the WAN: a weu origin
  ./testnet.sh client --from SEAS --app proximity --node edge-weu  # the nearest pool's: a seas origin
  ./testnet.sh client --from WEU --app dynamic                     # the pool of lowest RTT from WEU
  ./testnet.sh wan show                           # latencies and per-link counters
  ./testnet.sh wan set WNAM WEU 300ms             # a round-trip time between two regions
  ./testnet.sh wan cut WNAM WEU                   # and: ./testnet.sh wan heal WNAM WEU
  ip netns exec $ns_wnam $b/switchyard status --addr ${NODE_STATUS[edge-wnam]}   # members and RTTs
  ip netns exec $ns_wnam $b/switchyard explain --lb geo --client ${CLIENT_IP[WEU]} --addr ${NODE_STATUS[edge-wnam]}
  ./testnet.sh origin down wnam-1                 # and wnam-2: edge-wnam fails over to weu
  ./testnet.sh node down edge-weu                 # and: ./testnet.sh node up edge-weu
  ./testnet.sh status
  ./testnet.sh down                               # also removes the namespaces
EOF
}

# ---- Commands --------------------------------------------------------------------------------

# A command that starts processes arms this, so leaving early (an error, Ctrl-C, kill, a closed
# pipe) stops what it started: the named components, and any child not yet in a pid file.
ABORT_NAMES=()
ARMED=0
# Set once `up --wan` has started the WAN testbed, which leaving early then stops too.
ABORT_WAN=0
abort_cleanup() {
    local rc=$? pid deadline
    local -a strays=()
    ((ARMED == 1)) || return 0
    trap - EXIT INT TERM HUP PIPE
    warn "$ABORT_WHAT did not finish; stopping what it started"
    stop "${ABORT_NAMES[@]}" >&2 || true
    for pid in $(jobs -p); do is_alive "$pid" && strays+=("$pid"); done
    if ((${#strays[@]} > 0)); then
        kill -TERM "${strays[@]}" 2>/dev/null || true
        deadline=$((SECONDS + STOP_TIMEOUT + 1))
        for pid in "${strays[@]}"; do
            while is_alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
        done
    fi
    if ((ABORT_WAN == 1)) && (wan_down) >&2; then
        rm -f "$MODE_FILE"
    fi
    exit "$((rc == 0 ? 1 : rc))"
}

arm_abort() { # arm_abort WHAT NAME...
    ABORT_WHAT=$1
    shift
    ABORT_NAMES=("$@")
    ARMED=1
    trap abort_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
    trap 'exit 141' PIPE
}

disarm_abort() {
    ARMED=0
    trap - EXIT INT TERM HUP PIPE
}

cmd_up() {
    local name running=0 total=0 target prev
    while [[ $# -gt 0 ]]; do
        case $1 in
            --wan) use_wan ;;
            *) bad_usage "unknown up option $1 (up takes only --wan)" ;;
        esac
        shift
    done
    [[ $MODE == wan ]] && need_root "./testnet.sh up --wan"
    lock
    prev=$(recorded_mode)
    # Switching from WAN mode takes root too: its processes and namespaces are root's.
    [[ $prev == wan ]] && need_root "stopping the WAN testnet (it is up in WAN mode)"
    if [[ $MODE == wan && $prev != wan ]] && wan_state_present; then
        die "a WAN testbed that testnet.sh did not start is up ($WAN_DIR; tests/wan/netns.sh" \
            "by hand?); stop it first: tests/wan/netns.sh down"
    fi
    while read -r name; do
        total=$((total + 1))
        running_pid "$name" >/dev/null && running=$((running + 1))
    done < <(all_names)
    if ((running == total)) && [[ -f $STATE/manifest.json && $prev == "$MODE" ]] &&
        { [[ $MODE != wan ]] || wan_running; }; then
        BIN=$(bin_dir)
        say "testnet is already up$([[ $MODE == wan ]] && echo ' in WAN mode') (stop it with ./testnet.sh down)"
        print_summary
        return 0
    fi
    arm_abort up "${NODE_IDS[@]}" "${ORIGIN_NAMES[@]}"

    if [[ $prev != "$MODE" ]] && ((running > 0)); then
        say "testnet is up in $prev mode ($running of $total processes); stopping it for $MODE mode"
    elif ((running > 0)); then
        say "testnet is partly up ($running of $total processes); restarting it cleanly"
    fi
    stop "${NODE_IDS[@]}" "${ORIGIN_NAMES[@]}"
    rm -f "$STATE/manifest.json"
    if [[ $prev == wan ]]; then
        wan_down
        rm -f "$MODE_FILE"
    fi

    if [[ ${TESTNET_SKIP_BUILD:-0} != 1 ]]; then
        command -v cargo >/dev/null 2>&1 || die "cargo is not on PATH; install Rust (https://rustup.rs)"
        say "building: cargo build --release -p switchyard-node -p switchyard-tests --bins"
        cargo build --release -p switchyard-node -p switchyard-tests --bins
        target=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
            sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p') || true
        printf '%s/release\n' "$(rel "${target:-${CARGO_TARGET_DIR:-target}}")" >"$STATE/bin-dir"
    fi
    need_bins

    if [[ $MODE == wan ]]; then
        # Recorded first, so `down` cleans up after an `up --wan` that was killed.
        printf 'wan\n' >"$MODE_FILE"
        ABORT_WAN=1
        say "starting the WAN testbed: WAN_EMU=$BIN/wan-emu tests/wan/netns.sh up ${REGIONS[*]}"
        netns_sh up "${REGIONS[@]}" || die "tests/wan/netns.sh up failed"
        load_netns
        check_wan_regions
    fi

    say "mesh certificates in $CERTS/ (cluster $CLUSTER)"
    ensure_certs "${NODE_IDS[@]}"
    say "GeoIP database $GEO_DB (from $GEO_CSV)"
    build_geoip
    say "writing and checking configs"
    for name in "${NODE_IDS[@]}"; do
        write_config "$name"
        check_config "$name"
    done
    check_free "${ORIGIN_NAMES[@]}" "${NODE_IDS[@]}"

    for name in "${ORIGIN_NAMES[@]}" "${NODE_IDS[@]}"; do : >"$(logfile "$name")"; done
    say "starting origins: ${ORIGIN_NAMES[*]}"
    for name in "${ORIGIN_NAMES[@]}"; do start_origin "$name"; done
    wait_ready "${ORIGIN_NAMES[@]}"
    say "starting nodes: ${NODE_IDS[*]}"
    for name in "${NODE_IDS[@]}"; do start_node "$name"; done
    wait_ready "${NODE_IDS[@]}"
    say "waiting for the mesh: ${NODE_IDS[*]} on ${NODE_MESH[*]}"
    wait_mesh "${NODE_IDS[@]}"
    say "mesh formed: ${#NODE_IDS[@]} members alive"
    write_manifest
    disarm_abort

    say ""
    say "testnet is up$([[ $MODE == wan ]] && echo ' in WAN mode')"
    print_summary
}

# check_wan_regions: fails unless netns.sh gave each region the index its addresses assume.
check_wan_regions() {
    local name index netns
    local -A seen=()
    while read -r name index netns; do
        [[ -n $name ]] || continue
        [[ ${REGION_INDEX[$name]:-} == "$index" ]] ||
            die "the WAN testbed gave region $name index $index, not ${REGION_INDEX[$name]:-none}" \
                "($WAN_DIR/regions)"
        seen[$name]=1
    done <"$WAN_DIR/regions"
    for name in "${REGIONS[@]}"; do
        [[ -n ${seen[$name]:-} ]] || die "the WAN testbed has no region $name ($WAN_DIR/regions)"
    done
}

# need_wan WHAT: in WAN mode, checks for root and that the testbed runs.
need_wan() {
    [[ $MODE == wan ]] || return 0
    need_root "$*"
    wan_running || die "the WAN testbed is down (wan-emu is not running); start afresh:" \
        "./testnet.sh down; ./testnet.sh up --wan"
}

cmd_down() {
    [[ $# -eq 0 ]] || bad_usage "down takes no arguments"
    if [[ ! -d $STATE ]]; then
        say "testnet is not running"
        return 0
    fi
    # In WAN mode the testbed goes too: netns.sh down stops wan-emu and removes the namespaces
    # (and their TUN devices) it recorded making, and nothing else.
    local wan=0
    [[ $MODE == wan ]] && wan=1 && need_root "./testnet.sh down (the testnet is up in WAN mode)"
    lock
    local name any=0
    while read -r name; do
        running_pid "$name" >/dev/null && any=1
    done < <(all_names)
    stop "${NODE_IDS[@]}" "${ORIGIN_NAMES[@]}"
    rm -f "$STATE/manifest.json"
    if ((wan == 1)); then
        wan_state_present && any=1
        wan_down
        rm -f "$MODE_FILE"
    fi
    if ((any == 1)); then
        say "testnet is down (logs stay in $STATE/)"
    else
        say "testnet is not running"
    fi
}

cmd_status() {
    [[ $# -eq 0 ]] || bad_usage "status takes no arguments"
    local id name pid rc=0 out='' members m_id m_state m_gen m_region m_addr m_rtt where=''
    BIN=$(bin_dir)
    [[ $MODE == wan ]] && need_root "./testnet.sh status (the testnet is up in WAN mode)"
    for id in "${NODE_IDS[@]}"; do
        [[ $MODE == wan ]] && where=", namespace ${NETNS[${NODE_REGION[$id]}]}"
        if pid=$(running_pid "$id"); then
            say "== $id (${NODE_REGION[$id]}, pid $pid, status ${NODE_STATUS[$id]}$where)"
            if [[ -x $BIN/switchyard ]] &&
                out=$(in_ns "${NODE_REGION[$id]}" "$BIN/switchyard" status \
                    --addr "${NODE_STATUS[$id]}" 2>&1); then
                printf '%s\n' "$out"
                # A node lists itself alive, so a status without "alive" lacks the member
                # table (an older switchyard): print the members from its JSON.
                if [[ $out != *alive* ]] && members=$(mesh_members "$id") && [[ -n $members ]]; then
                    printf '\n%-10s  %-7s  %-13s  %-6s  %-15s  %s\n' \
                        MEMBER STATE GENERATION REGION ADDRESS RTT
                    while read -r m_id m_state m_gen m_region m_addr m_rtt; do
                        [[ $m_rtt == - ]] || m_rtt=${m_rtt}ms
                        printf '%-10s  %-7s  %-13s  %-6s  %-15s  %s\n' \
                            "$m_id" "$m_state" "$m_gen" "$m_region" "$m_addr" "$m_rtt"
                    done <<<"$members"
                fi
            else
                say "$id runs but its status did not answer: $out"
                rc=3
            fi
        else
            say "== $id (${NODE_REGION[$id]}): down"
            rc=3
        fi
        say ""
    done
    say "== origins"
    for name in "${ORIGIN_NAMES[@]}"; do
        if pid=$(running_pid "$name"); then
            printf '  %-7s %-5s %s:%s  running (pid %s)\n' \
                "$name" "${ORIGIN_POOL[$name]}" "${ORIGIN_IP[$name]}" "$ORIGIN_PORT" "$pid"
        else
            printf '  %-7s %-5s %s:%s  down\n' \
                "$name" "${ORIGIN_POOL[$name]}" "${ORIGIN_IP[$name]}" "$ORIGIN_PORT"
            rc=3
        fi
    done
    if [[ $MODE == wan ]]; then
        say ""
        if wan_running; then
            say "== WAN testbed (wan-emu; state in $WAN_DIR/)"
            netns_sh show 2>&1 | sed 's/^/  /' || true
        else
            say "== WAN testbed: down"
            rc=3
        fi
    fi
    return "$rc"
}

cmd_origin() {
    [[ $# -eq 2 ]] || bad_usage "usage: ./testnet.sh origin down|up NAME"
    local action=$1 name=$2 pid
    is_origin "$name" || bad_usage "unknown origin $name; one of: ${ORIGIN_NAMES[*]}"
    [[ $MODE == wan ]] && need_root "./testnet.sh origin (the testnet is up in WAN mode)"
    case $action in
        down)
            lock
            if running_pid "$name" >/dev/null; then
                stop "$name"
            else
                rm -f "$(pidfile "$name")"
                say "$name is not running"
            fi
            ;;
        up)
            lock
            if pid=$(running_pid "$name"); then
                say "$name is already running (pid $pid)"
                return 0
            fi
            need_bins
            need_wan "./testnet.sh origin up"
            check_free "$name"
            arm_abort "origin up $name" "$name"
            start_origin "$name"
            wait_ready "$name"
            disarm_abort
            say "started $name (pid $(running_pid "$name")) on ${ORIGIN_IP[$name]}:$ORIGIN_PORT"
            ;;
        *) bad_usage "usage: ./testnet.sh origin down|up NAME" ;;
    esac
}

cmd_node() {
    [[ $# -eq 2 ]] || bad_usage "usage: ./testnet.sh node down|up ID"
    local action=$1 id=$2 pid other
    is_node "$id" || bad_usage "unknown node $id; one of: ${NODE_IDS[*]}"
    [[ $MODE == wan ]] && need_root "./testnet.sh node (the testnet is up in WAN mode)"
    case $action in
        down)
            lock
            if running_pid "$id" >/dev/null; then
                stop "$id"
            else
                rm -f "$(pidfile "$id")"
                say "$id is not running"
            fi
            ;;
        up)
            lock
            if pid=$(running_pid "$id"); then
                say "$id is already running (pid $pid)"
                return 0
            fi
            need_bins
            need_wan "./testnet.sh node up"
            [[ -s $CERTS/ca/ca.crt && -s $CERTS/ca/ca.key ]] ||
                die "the cluster CA ($CERTS/ca) is missing; start afresh: ./testnet.sh down; ./testnet.sh up"
            ensure_certs "$id"
            [[ -s $GEO_DB ]] || build_geoip
            [[ -f $(config_of "$id") ]] || write_config "$id"
            check_config "$id"
            check_free "$id"
            arm_abort "node up $id" "$id"
            start_node "$id"
            wait_ready "$id"
            # It rejoins once it and the other running nodes list each other alive.
            local -a mesh=()
            for other in "${NODE_IDS[@]}"; do
                running_pid "$other" >/dev/null && mesh+=("$other")
            done
            wait_mesh "${mesh[@]}"
            disarm_abort
            say "started $id (pid $(running_pid "$id")), status ${NODE_STATUS[$id]}, mesh ${NODE_MESH[$id]}"
            say "$id is in the mesh: ${mesh[*]} alive"
            ;;
        *) bad_usage "usage: ./testnet.sh node down|up ID" ;;
    esac
}

cmd_client() {
    local node=${NODE_IDS[0]} app=failover region='' timeout=5s
    while [[ $# -gt 0 ]]; do
        [[ $# -ge 2 ]] || bad_usage "$1 needs a value"
        case $1 in
            --from) region=${2^^} ;;
            --app) app=$2 ;;
            --node) node=$2 ;;
            --timeout) timeout=$2 ;;
            *) bad_usage "unknown client option $1" ;;
        esac
        shift 2
    done
    is_node "$node" || bad_usage "unknown node $node; one of: ${NODE_IDS[*]}"
    contains "$app" "${APP_NAMES[@]}" || bad_usage "unknown app $app; one of: ${APP_NAMES[*]}"
    region=${region:-${NODE_REGION[$node]}}
    contains "$region" "${REGIONS[@]}" || bad_usage "unknown region $region; one of: ${REGIONS[*]}"
    need_bins
    if [[ $MODE == wan ]]; then
        # From inside the client's region's namespace, so it crosses the WAN to other regions.
        need_wan "./testnet.sh client"
        exec ip netns exec "${NETNS[$region]}" "$BIN/sy-client" "${APP_ADDR[$node/$app]}" \
            --from "${CLIENT_IP[$region]}" --timeout "$timeout"
    fi
    exec "$BIN/sy-client" "${APP_ADDR[$node/$app]}" --from "${CLIENT_IP[$region]}" \
        --timeout "$timeout"
}

# wan set A B DUR | cut A B | heal A B | loss A B PCT | show: tests/wan/netns.sh's commands.
cmd_wan() {
    local usage_msg="usage: ./testnet.sh wan set A B DUR | cut A B | heal A B | loss A B PCT | show"
    [[ $# -ge 1 ]] || bad_usage "$usage_msg"
    case "$1/$#" in
        set/4 | loss/4 | cut/3 | heal/3 | show/1) ;;
        *) bad_usage "$usage_msg" ;;
    esac
    local arg
    for arg in "${@:2:2}"; do
        [[ $arg == '*' ]] || contains "${arg^^}" "${REGIONS[@]}" ||
            bad_usage "unknown region $arg; one of: ${REGIONS[*]} (B may be '*': all others)"
    done
    [[ $MODE == wan ]] || die "the testnet is not in WAN mode; start it with ./testnet.sh up --wan"
    BIN=$(bin_dir)
    need_wan "./testnet.sh wan"
    netns_sh "$@"
    if [[ $1 != show ]]; then # the matrix as it is now
        netns_sh show | sed -n '1,/^link /{/^link /d;p}'
    fi
}

main() {
    [[ $# -gt 0 ]] || bad_usage
    local cmd=$1
    shift
    # `up` picks its mode (--wan); the other commands follow the running testnet's.
    if [[ $cmd != up && $(recorded_mode) == wan ]]; then
        use_wan
    fi
    case $cmd in
        up) cmd_up "$@" ;;
        down) cmd_down "$@" ;;
        status) cmd_status "$@" ;;
        origin) cmd_origin "$@" ;;
        node) cmd_node "$@" ;;
        client) cmd_client "$@" ;;
        wan) cmd_wan "$@" ;;
        help | -h | --help) usage ;;
        *) bad_usage "unknown command: $cmd" ;;
    esac
}

main "$@"
