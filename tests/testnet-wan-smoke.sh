#!/usr/bin/env bash
# tests/testnet-wan-smoke.sh: a smoke test of testnet.sh's WAN mode, run from the repo root as
# root (CI runs as root; anyone else gets a skip). Brings the testnet up with `up --wan` (one
# network namespace per region, joined through wan-emu) and checks that every process runs in
# its region's namespace, that the nodes form one mesh over the emulated WAN (with member RTTs
# no lower than the emulator's latencies), and that a WEU client reaches a weu origin through
# edge-wnam's geo app across the WAN. Then cuts WNAM-WEU: edge-wnam's relay app (pool weu only)
# still serves a WNAM client from weu, through edge-seas (explain: path via edge-seas); and fails
# edge-wnam's failover app (pools wnam, weu, seas) over: with the link cut and the wnam pool
# down, a WNAM client lands on weu, relayed (weu is down from WNAM alone, and relaying is the
# default); after `wan heal`, on weu directly, as on the relay app; with the wnam pool back, on
# wnam. Finally `down`, and checks that no process, pid file, namespace or device of this run
# is left.
#
# Deterministic: before each failover check it waits (bounded) until edge-wnam itself observes
# the origins it must steer around as down (or up again), because WNAM's view of an origin is
# edge-wnam's own health checks (the only observer in WNAM). Every wait polls with a deadline.
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=tests/smoke-lib.sh
source tests/smoke-lib.sh
TESTNET=./testnet.sh
SMOKE_NAME=testnet-wan-smoke
STATE=.testnet
WAN_DIR=$STATE/wan

if [[ $(id -u) != 0 ]]; then
    echo "testnet-wan-smoke: skipped: needs root (network namespaces and a TUN device; CI runs as root)"
    exit 0
fi

PASSED=0
STEP="start"
declare -A ALL_PIDS=()
declare -A RUN_NETNS=() # the namespaces this run's testbed made
DOWN_CHECKED=0

# Remembers every pid in the pid files (wan-emu's too) and this run's namespaces, to check
# at the end that none survived.
record_run() {
    local name netns
    record_pids "$STATE" "$WAN_DIR"
    if [[ -f $WAN_DIR/regions ]]; then
        while read -r name _ netns; do
            [[ -n $netns ]] && RUN_NETNS[$netns]=$name
        done <"$WAN_DIR/regions"
    fi
    return 0
}

netns_exists() { [[ -e /run/netns/$1 ]]; }

# ---- The topology (as testnet.sh's WAN mode lays it out) ---------------------------------------

NODES=(edge-wnam edge-weu edge-seas)
REGIONS=(WNAM WEU SEAS)
declare -A NODE_REGION=([edge-wnam]=WNAM [edge-weu]=WEU [edge-seas]=SEAS)
declare -A NETNS=([WNAM]=sy-wnam [WEU]=sy-weu [SEAS]=sy-seas) # read from the manifest below
declare -A STATUS_ADDR=([edge-wnam]=10.250.1.1:9900 [edge-weu]=10.250.2.1:9900 [edge-seas]=10.250.3.1:9900)
declare -A CLIENT_IP=([WNAM]=10.250.1.100 [WEU]=10.250.2.100 [SEAS]=10.250.3.100)
ORIGINS=(wnam-1 wnam-2 weu-1 weu-2 seas-1 seas-2)
# The emulator's default round-trip times (tests/wan/README.md); measured RTTs are never lower.
declare -A DEFAULT_RTT_MS=([WNAM/WEU]=75 [WNAM/SEAS]=160 [WEU/SEAS]=170)
LAST=

# status_json NODE: NODE's status document on one line, without whitespace (empty: no answer),
# asked from inside NODE's namespace.
status_json() {
    ip netns exec "${NETNS[${NODE_REGION[$1]}]}" "$(switchyard_bin)" status \
        --addr "${STATUS_ADDR[$1]}" --json 2>/dev/null | tr -d ' \t\r\n' || true
}

# Checks for within; each sets LAST to what it saw.
lists_all_alive() { # NODE: lists exactly the three nodes, all alive
    local json list n=0 alive=0 id state gen rtt
    json=$(status_json "$1")
    [[ -n $json ]] || { LAST="$1's status did not answer"; return 1; }
    list=$(members "$json")
    while read -r id state gen rtt; do
        [[ -n $id ]] || continue
        n=$((n + 1))
        [[ $state == alive ]] && alive=$((alive + 1))
    done <<<"$list"
    LAST="$1 lists $n member(s): $(tr '\n' ';' <<<"$list")"
    ((n == 3 && alive == 3))
}
rtts_at_least_wan() { # NODE: has an RTT for both others, each >= the emulated round trip
    local json id state gen rtt want pair n=0 seen=''
    json=$(status_json "$1")
    [[ -n $json ]] || { LAST="$1's status did not answer"; return 1; }
    while read -r id state gen rtt; do
        [[ -n $id && $id != "$1" ]] || continue
        pair=${NODE_REGION[$1]}/${NODE_REGION[$id]}
        want=${DEFAULT_RTT_MS[$pair]:-${DEFAULT_RTT_MS[${NODE_REGION[$id]}/${NODE_REGION[$1]}]}}
        seen+="${seen:+, }$id ${rtt}ms (emulated ${want}ms)"
        [[ $rtt =~ ^[0-9]+(\.[0-9]+)?$ ]] || continue
        ((${rtt%.*} >= want)) || { LAST="$1 measures $seen"; return 1; }
        n=$((n + 1))
    done < <(members "$json")
    LAST="$1 measures $seen"
    ((n == 2))
}
observed() { # NODE ORIGIN OBSERVER true|false: NODE's status has ORIGIN so, as OBSERVER sees it
    local h
    h=$(observer "$(status_json "$1")" "$2" "$3")
    LAST="$1: $2 as $3 sees it: healthy=${h:-(no such observer)}"
    [[ $h == "$4" ]]
}
both_observed() { # NODE ORIGIN1 ORIGIN2 OBSERVER true|false
    local first
    observed "$1" "$2" "$4" "$5" || return 1
    first=$LAST
    observed "$1" "$3" "$4" "$5" || return 1
    LAST="$first; $LAST"
}

# client_via REGION APP NODE: the origin a connection from REGION's client address (inside
# REGION's namespace) to NODE's APP reaches, or nothing.
client_via() {
    "$TESTNET" client --from "$1" --app "$2" --node "$3" --timeout 3s 2>/dev/null || true
}

# reaches REGION APP NODE POOL: three connections in a row reach origins of POOL.
reaches() {
    local got
    LAST=
    for _ in 1 2 3; do
        got=$(client_via "$1" "$2" "$3")
        LAST+="${LAST:+, }${got:-no answer}"
        [[ $got == "$4"-[0-9]* ]] || return 1
    done
}

# relayed NODE APP REGION PEER: NODE's explain for APP and REGION's client gives a path through
# PEER (`path via PEER (...)`).
relayed() {
    local out path
    out=$(ip netns exec "${NETNS[${NODE_REGION[$1]}]}" "$(switchyard_bin)" explain --lb "$2" \
        --client "${CLIENT_IP[$3]}" --addr "${STATUS_ADDR[$1]}" 2>&1) || true
    path=$(grep -m1 -E '^ *path ' <<<"$out" || true)
    path=${path#"${path%%[! ]*}"}
    LAST="$1 explains $2 for a $3 client: ${path:-no path line in: $out}"
    [[ $path == "path via $4 "* ]]
}

# expect REGION APP NODE POOL SECONDS: polls until reaches passes; passes the check.
expect() {
    local started=$SECONDS
    within "$5" "$1 client (${CLIENT_IP[$1]}) on $3's $2 app did not reach the $4 pool" \
        reaches "$1" "$2" "$3" "$4"
    pass "$1 client (${CLIENT_IP[$1]}) on $3's $2 app: $LAST (within $((SECONDS - started + 1))s)"
}

# ---- End checks ---------------------------------------------------------------------------------

check_all_gone() {
    local left=() f netns
    check_pids_gone " (wan-emu's too)" "$STATE" "$WAN_DIR"
    ((${#RUN_NETNS[@]} > 0)) || fail "no namespaces were recorded for this run"
    left=()
    for netns in "${!RUN_NETNS[@]}"; do
        netns_exists "$netns" && left+=("$netns")
    done
    ((${#left[@]} == 0)) || fail "namespaces of this run remain: ${left[*]}"
    pass "this run's namespaces are gone: ${!RUN_NETNS[*]}"
    if ip -br link 2>/dev/null | grep -q '^sy-'; then
        fail "a sy- device is in the root namespace: $(ip -br link | grep '^sy-' | tr '\n' ' ')"
    fi
    pass "no sy- device in the root namespace"
    for f in "$WAN_DIR/regions" "$WAN_DIR/control.sock" "$STATE/mode" "$STATE/manifest.json"; do
        [[ -e $f ]] && fail "$f remains"
    done
    pass "no testbed state (regions, control socket), mode file or manifest remains"
}

# ---- The test -------------------------------------------------------------------------------------

step "preflight: iproute2 and /dev/net/tun"
command -v ip >/dev/null 2>&1 || fail "ip (iproute2) is not installed; the WAN testbed needs it"
[[ -c /dev/net/tun ]] || fail "/dev/net/tun is missing; the WAN testbed needs it (modprobe tun)"
pass "ip is $(command -v ip); /dev/net/tun is there"

trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "clean slate: $TESTNET down"
"$TESTNET" down >/dev/null || fail "testnet.sh down failed"
for region in "${REGIONS[@]}"; do
    netns=${WAN_NETNS_PREFIX:-sy-}${region,,}
    ! netns_exists "$netns" || fail "namespace $netns exists, and testnet.sh did not make it" \
        "(another testbed? ./testnet.sh down, or ip netns delete $netns)"
done
pass "nothing left running; no sy- namespace of ours exists"

step "$TESTNET up --wan"
"$TESTNET" up --wan || fail "testnet.sh up --wan exited $?"
record_run
pass "testnet is up in WAN mode (namespaces ${!RUN_NETNS[*]})"

step "manifest"
manifest=$STATE/manifest.json
[[ -f $manifest ]] || fail "$manifest is missing"
grep -q '"mode": *"wan"' "$manifest" || fail "the manifest does not say \"mode\": \"wan\""
nodes=$(grep -o '"id": *"[^"]*"' "$manifest" | wc -l)
((nodes == 3)) || fail "the manifest lists $nodes nodes, not 3"
origins=$(grep -o '"pool": *"[^"]*"' "$manifest" | wc -l)
((origins == 6)) || fail "the manifest lists $origins origins, not 6"
grep -q '"id": *"edge-wnam".*"status": *"10.250.1.1:9900".*"failover": *"10.250.1.1:10001"' "$manifest" ||
    fail "the manifest does not put edge-wnam's status at 10.250.1.1:9900 and failover app at 10.250.1.1:10001"
for region in "${REGIONS[@]}"; do
    grep -q "\"$region\": *\"${CLIENT_IP[$region]}\"" "$manifest" ||
        fail "the manifest does not give $region the client address ${CLIENT_IP[$region]}"
    re="\"netns\": *\\{[^}]*\"$region\": *\"([^\"]+)\""
    [[ $(<"$manifest") =~ $re ]] || fail "the manifest names no namespace for $region"
    NETNS[$region]=${BASH_REMATCH[1]}
done
pass "$manifest: mode wan, 3 nodes, 6 origins; clients and namespaces:$(for r in "${REGIONS[@]}"; do
    printf ' %s %s %s' "$r" "${CLIENT_IP[$r]}" "${NETNS[$r]}"
done)"

step "every process runs in its region's namespace"
for name in "${NODES[@]}" "${ORIGINS[@]}"; do
    pid=$(<"$STATE/$name.pid")
    region=${NODE_REGION[$name]:-${name%-*}}
    region=${region^^}
    in=$(ip netns identify "$pid" 2>/dev/null || true)
    [[ $in == "${NETNS[$region]}" ]] ||
        fail "$name (pid $pid) runs in namespace '${in:-the root namespace}', not ${NETNS[$region]}"
done
pass "3 nodes and 6 origins each run in their region's namespace"

step "mesh over the WAN: every node lists 3 members, all alive"
for node in "${NODES[@]}"; do
    within 20 "$node does not list 3 alive members" lists_all_alive "$node"
    pass "$LAST"
done
for node in "${NODES[@]}"; do
    within 20 "$node has no member RTTs at or above the emulated latencies" rtts_at_least_wan "$node"
    pass "$LAST"
done

step "geo steering across the WAN: a WEU client through edge-wnam's geo app gets a weu origin"
expect WEU geo edge-wnam weu 15

step "$TESTNET wan cut WNAM WEU"
"$TESTNET" wan cut WNAM WEU >/dev/null || fail "testnet.sh wan cut WNAM WEU failed"
show=$("$TESTNET" wan show) || fail "testnet.sh wan show failed"
grep -Eq '^link WNAM->WEU .*state=cut' <<<"$show" || fail "wan show does not list WNAM->WEU as cut"
grep -Eq '^link WEU->WNAM .*state=cut' <<<"$show" || fail "wan show does not list WEU->WNAM as cut"
pass "wan show lists WNAM->WEU and WEU->WNAM cut"
expect WNAM failover edge-wnam wnam 15

step "edge-wnam sees the weu origins down from WNAM (its health checks cross the cut link)"
started=$SECONDS
within 30 "edge-wnam did not observe weu-1 and weu-2 down" \
    both_observed edge-wnam weu-1 weu-2 edge-wnam false
pass "$LAST (within $((SECONDS - started + 1))s)"

# The relay app's only pool is weu: down from WNAM alone (edge-seas reaches it), it stays a
# candidate, and edge-wnam's connections go through edge-seas, the one peer that reaches weu
# and that edge-wnam reaches (edge-weu is across the cut link).
step "relay app: a WNAM client on edge-wnam's relay app (pool weu only) is served by weu, through edge-seas"
within 15 "edge-wnam does not relay the relay app for a WNAM client through edge-seas" \
    relayed edge-wnam relay WNAM edge-seas
pass "$LAST"
expect WNAM relay edge-wnam weu 15

step "take the wnam pool down: origin down wnam-1, wnam-2"
"$TESTNET" origin down wnam-1 || fail "origin down wnam-1 failed"
"$TESTNET" origin down wnam-2 || fail "origin down wnam-2 failed"
pass "both wnam origins stopped"
started=$SECONDS
within 30 "edge-wnam did not observe wnam-1 and wnam-2 down" \
    both_observed edge-wnam wnam-1 wnam-2 edge-wnam false
pass "$LAST (within $((SECONDS - started + 1))s)"
# wnam is down; weu is unreachable from WNAM alone, and a peer reaches it: the failover app
# (relay = "failover", the default) keeps weu, through that peer, before its last pool, seas.
within 15 "edge-wnam does not relay the failover app for a WNAM client through edge-seas" \
    relayed edge-wnam failover WNAM edge-seas
pass "$LAST"
expect WNAM failover edge-wnam weu 15

step "$TESTNET wan heal WNAM WEU"
"$TESTNET" wan heal WNAM WEU >/dev/null || fail "testnet.sh wan heal WNAM WEU failed"
grep -Eq '^link WNAM->WEU .*state=up' <<<"$("$TESTNET" wan show)" ||
    fail "wan show does not list WNAM->WEU as up after heal"
pass "wan show lists WNAM->WEU up"
started=$SECONDS
within 30 "edge-wnam did not observe weu-1 and weu-2 up again" \
    both_observed edge-wnam weu-1 weu-2 edge-wnam true
pass "$LAST (within $((SECONDS - started + 1))s)"
# wnam is still down; weu is reachable again and comes before seas (directly: this node's
# own path is up, relay = "failover").
expect WNAM failover edge-wnam weu 15
expect WNAM relay edge-wnam weu 15

step "bring the wnam pool back: origin up wnam-1, wnam-2"
"$TESTNET" origin up wnam-1 || fail "origin up wnam-1 failed"
"$TESTNET" origin up wnam-2 || fail "origin up wnam-2 failed"
record_run
pass "both wnam origins started"
expect WNAM failover edge-wnam wnam 20

step "$TESTNET status"
"$TESTNET" status >"$STATE/wan-smoke-status.txt" 2>&1 ||
    fail "testnet.sh status exited $? (output in $STATE/wan-smoke-status.txt)"
grep -q '^== WAN testbed' "$STATE/wan-smoke-status.txt" ||
    fail "testnet.sh status does not show the WAN testbed (see $STATE/wan-smoke-status.txt)"
pass "status exits 0 ($(grep -c '^== edge-' "$STATE/wan-smoke-status.txt") nodes reported, and the WAN testbed)"

step "$TESTNET down"
record_run
"$TESTNET" down || fail "testnet.sh down failed"
DOWN_CHECKED=1
check_all_gone

printf '\ntestnet-wan-smoke: %d passed, 0 failed\n' "$PASSED"
