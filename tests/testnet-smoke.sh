#!/usr/bin/env bash
# tests/testnet-smoke.sh: a smoke test of testnet.sh, run from the repo root (CI does). Brings the
# testnet up and checks that its three nodes form one mesh; that geo and proximity steering send
# each region's client (placed by the testnet's GeoIP database) to its region's pool through
# every node, and hash origin steering to one origin on every node; that the relay app (pool
# weu only, relay = "fastest") reaches weu through every node, directly; that `switchyard explain`
# and `switchyard status` show the client's region and the database; that every node answers
# DNS for the zone (dig), a WEU client's subnet getting edge-weu first. Then fails edge-wnam's
# failover app over from the wnam pool to weu and back (and checks that another node sees
# edge-wnam's view of the origin), restarts a node and watches it leave and rejoin the mesh
# (and leave and rejoin the DNS answers),
# and tears everything down, also on failure. Bounded: every wait polls with a deadline.
#
# Status JSON is read with bash alone: see tests/smoke-lib.sh. Where every app of every node
# listens is the topology's (tests/src/topology.rs), whose unit tests check the manifest.
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=tests/smoke-lib.sh
source tests/smoke-lib.sh
TESTNET=./testnet.sh
SMOKE_NAME=testnet-smoke
STATE=.testnet

PASSED=0
STEP="start"
declare -A ALL_PIDS=()
DOWN_CHECKED=0

# The HTTP status of GET http://ADDR/PATH, 000 when nothing answers.
http_code() {
    local addr=$1 path=$2
    if command -v curl >/dev/null 2>&1; then
        curl --noproxy '*' -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$addr$path" || true
    else
        # shellcheck disable=SC2016 # expanded by the inner bash
        timeout 3 bash -c '
            exec 3<>"/dev/tcp/$1/$2" || exit 1
            printf "GET %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n\r\n" "$3" "$1" "$2" >&3
            read -r _ code _ <&3 || exit 1
            printf "%s\n" "$code"
        ' _ "${addr%:*}" "${addr##*:}" "$path" 2>/dev/null || echo 000
    fi
}

# ---- Mesh checks over `switchyard status --json` ----------------------------------------------

NODES=(edge-wnam edge-weu edge-seas)
declare -A STATUS_ADDR=([edge-wnam]=127.0.21.1:9900 [edge-weu]=127.0.22.1:9900 [edge-seas]=127.0.23.1:9900)
LAST=

# status_json NODE: NODE's status document on one line, without whitespace (empty: no answer).
status_json() {
    "$(switchyard_bin)" status --addr "${STATUS_ADDR[$1]}" --json 2>/dev/null | tr -d ' \t\r\n' || true
}

# member JSON ID: "STATE GENERATION" of member ID; nothing when it is not listed.
member() {
    local id state gen
    while read -r id state gen _; do
        [[ $id == "$2" ]] && printf '%s %s\n' "$state" "$gen"
    done < <(members "$1")
    return 0
}

# Checks for within; each sets LAST to what it saw.
lists_all_alive() { # NODE: lists exactly the three nodes, all alive
    local json list n=0 alive=0 id state gen
    json=$(status_json "$1")
    [[ -n $json ]] || { LAST="$1's status did not answer"; return 1; }
    list=$(members "$json")
    while read -r id state gen _; do
        [[ -n $id ]] || continue
        n=$((n + 1))
        [[ $state == alive ]] && alive=$((alive + 1))
    done <<<"$list"
    LAST="$1 lists $n member(s): $(tr '\n' ';' <<<"$list")"
    ((n == 3 && alive == 3))
}
gone() { # NODE ID: NODE lists ID as down, or not at all
    local json m
    json=$(status_json "$1")
    [[ -n $json ]] || { LAST="$1's status did not answer"; return 1; }
    m=$(member "$json" "$2")
    LAST="$1 lists $2 as: ${m:-(not listed)}"
    [[ -z $m || ${m%% *} == down ]]
}
rejoined() { # NODE ID GEN: NODE lists ID alive with a generation above GEN
    local m state gen
    m=$(member "$(status_json "$1")" "$2")
    LAST="$1 lists $2 as: ${m:-(not listed)}"
    read -r state gen <<<"$m"
    [[ $state == alive ]] && ((${gen:-0} > $3))
}
observed_down() { # NODE ORIGIN OBSERVER: NODE's status has ORIGIN unhealthy as OBSERVER sees it
    local h
    h=$(observer "$(status_json "$1")" "$2" "$3")
    LAST="$1: $2 as $3 sees it: ${h:-(no such observer)}"
    [[ $h == false ]]
}

# ---- DNS checks with dig ----------------------------------------------------------------------

declare -A PUBLIC=([edge-wnam]=127.0.21.1 [edge-weu]=127.0.22.1 [edge-seas]=127.0.23.1)
DNS_PORT=5300
ZONE=sy.test

# answers NODE NAME [CLIENT]: the A records NODE answers for NAME (for a client in CLIENT's
# subnet when given), one a line, in the answer's order.
answers() {
    local subnet=()
    [[ -n ${3:-} ]] && subnet=(+subnet="$3/32")
    dig @"${PUBLIC[$1]}" -p "$DNS_PORT" +short +tries=1 +time=1 "${subnet[@]}" "$2" A 2>/dev/null |
        grep -E '^[0-9.]+$' || true
}

# first_answer_is NODE NAME CLIENT WANT: NODE's first address for NAME, for CLIENT, is WANT.
first_answer_is() {
    local got
    got=$(answers "$1" "$2" "$3" | tr '\n' ' ')
    LAST="$1 answers $2 for $3 with: ${got:-nothing}"
    [[ ${got%% *} == "$4" ]]
}

# not_answered NODE NAME CLIENT ADDR: NODE answers NAME for CLIENT, without ADDR.
not_answered() {
    local got
    got=$(answers "$1" "$2" "$3" | tr '\n' ' ')
    LAST="$1 answers $2 for $3 with: ${got:-nothing}"
    [[ -n $got && " $got" != *" $4 "* ]]
}

# Connects through edge-wnam's failover app (127.0.21.1:10001); prints the origin, or nothing.
through_wnam() {
    "$TESTNET" client --node edge-wnam --app failover --timeout 2s 2>/dev/null || true
}

# expect_origin PATTERN SECONDS: polls connections until one reaches an origin matching PATTERN.
expect_origin() {
    local pattern=$1 deadline=$((SECONDS + $2 + 1)) got tries=0
    while :; do
        got=$(through_wnam)
        tries=$((tries + 1))
        # shellcheck disable=SC2053 # PATTERN is a glob
        if [[ $got == $pattern ]]; then
            pass "127.0.21.1:10001 reached $got (after $tries connection(s))"
            return 0
        fi
        ((SECONDS < deadline)) || fail "no $pattern origin through 127.0.21.1:10001 within $2s (last: '${got:-no answer}')"
        sleep 0.2
    done
}

# ---- Steering checks over the apps geo, proximity, hash and dynamic -------------------------

REGIONS=(WNAM WEU SEAS)
declare -A CLIENT_IP=([WNAM]=127.0.1.1 [WEU]=127.0.2.1 [SEAS]=127.0.3.1)

# client_via REGION APP NODE: the origin a connection from REGION's client address to NODE's
# APP reaches, or nothing.
client_via() {
    "$TESTNET" client --from "$1" --app "$2" --node "$3" --timeout 2s 2>/dev/null || true
}

# Checks for within; each sets LAST to what it saw.
in_pool() { # REGION APP NODE POOL: three connections in a row reach origins of POOL
    local got
    LAST=
    for _ in 1 2 3; do
        got=$(client_via "$1" "$2" "$3")
        LAST+="${LAST:+, }${got:-no answer}"
        [[ $got == "$4"-[0-9]* ]] || return 1
    done
}
in_region_pool() { # REGION APP NODE: three connections in a row reach origins of REGION's pool
    in_pool "$1" "$2" "$3" "${1,,}"
}
HASHED=
same_everywhere() { # REGION: hash from every node, twice, reaches one origin of REGION's pool
    local region=$1 node got
    local -a seen=()
    for _ in 1 2; do
        for node in "${NODES[@]}"; do
            got=$(client_via "$region" hash "$node")
            seen+=("$node:${got:-no answer}")
            [[ $got == "${region,,}"-[0-9]* ]] || { LAST="${seen[*]}"; return 1; }
            [[ -z $HASHED || $got == "$HASHED" ]] || { LAST="${seen[*]}"; return 1; }
            HASHED=$got
        done
    done
    LAST="${seen[*]}"
}
any_origin() { # APP NODE REGION: a connection from REGION to NODE's APP reaches an origin
    local got
    got=$(client_via "$3" "$1" "$2")
    LAST="${got:-no answer}"
    [[ $got =~ ^(wnam|weu|seas)-[0-9]+$ ]]
}

# expect_ready ADDR CODE SECONDS: polls GET /ready until the answer is CODE (000: no answer).
expect_ready() {
    local addr=$1 want=$2 deadline=$((SECONDS + $3 + 1)) code
    while :; do
        code=$(http_code "$addr" /ready)
        if [[ $code == "$want" ]]; then
            return 0
        fi
        ((SECONDS < deadline)) || fail "GET http://$addr/ready answered $code, not $want, within $3s"
        sleep 0.2
    done
}

# Everything this run started is gone.
check_all_gone() {
    check_pids_gone "" "$STATE"
}

# What `down` must stop: every pid in the pid files.
record_run() {
    record_pids "$STATE"
}

trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "clean slate: $TESTNET down"
"$TESTNET" down >/dev/null || fail "testnet.sh down failed"
pass "nothing left running"

step "$TESTNET up"
"$TESTNET" up || fail "testnet.sh up exited $?"
record_run
pass "testnet is up"

step "manifest"
[[ -f $STATE/manifest.json ]] || fail "$STATE/manifest.json is missing"
nodes=$(grep -o '"id": *"[^"]*"' "$STATE/manifest.json" | wc -l)
((nodes == 3)) || fail "the manifest lists $nodes nodes, not 3"
grep -q '"id": *"edge-wnam".*"failover": *"127.0.21.1:10001"' "$STATE/manifest.json" ||
    fail "the manifest does not put edge-wnam's failover app at 127.0.21.1:10001"
grep -q '"id": *"edge-wnam".*"relay": *"127.0.21.1:10051"' "$STATE/manifest.json" ||
    fail "the manifest does not put edge-wnam's relay app at 127.0.21.1:10051"
origins=$(grep -o '"pool": *"[^"]*"' "$STATE/manifest.json" | wc -l)
((origins == 6)) || fail "the manifest lists $origins origins, not 6"
pass "$STATE/manifest.json lists 3 nodes and 6 origins"
[[ -s $STATE/geo.mmdb && -s $STATE/geo.csv ]] || fail "$STATE/geo.mmdb or $STATE/geo.csv is missing"
pass "$STATE/geo.mmdb was built from $STATE/geo.csv"

step "mesh: every node lists 3 members, all alive"
for node in "${NODES[@]}"; do
    within 10 "$node does not list 3 alive members" lists_all_alive "$node"
    pass "$LAST"
done
weu_generation=$(member "$(status_json edge-wnam)" edge-weu)
weu_generation=${weu_generation#* }
[[ $weu_generation =~ ^[0-9]+$ ]] || fail "no generation for edge-weu in edge-wnam's status"
pass "edge-wnam lists edge-weu at generation $weu_generation"

step "connect through edge-wnam's failover app"
got=$(through_wnam)
[[ $got == wnam-* ]] || fail "expected a wnam-* origin, got '${got:-no answer}'"
pass "127.0.21.1:10001 reached $got"

# All origins run here: every pool is healthy, so steering alone decides.
step "geo steering: each region's clients reach their region's pool through every node"
for region in "${REGIONS[@]}"; do
    for node in "${NODES[@]}"; do
        within 10 "$region client on $node's geo app did not reach the ${region,,} pool" \
            in_region_pool "$region" geo "$node"
        pass "$region client (${CLIENT_IP[$region]}) on $node's geo app: $LAST"
    done
done

step "proximity steering: each region's clients reach the nearest pool, their region's"
for region in "${REGIONS[@]}"; do
    for node in "${NODES[@]}"; do
        within 10 "$region client on $node's proximity app did not reach the ${region,,} pool" \
            in_region_pool "$region" proximity "$node"
        pass "$region client (${CLIENT_IP[$region]}) on $node's proximity app: $LAST"
    done
done

step "hash origin steering: each region's client reaches the same origin through every node"
for region in "${REGIONS[@]}"; do
    HASHED=
    within 10 "the hash app did not send the $region client to one ${region,,} origin from all nodes" \
        same_everywhere "$region"
    pass "$region client (${CLIENT_IP[$region]}) always reaches $HASHED ($LAST)"
done

step "dynamic steering: every node's dynamic app reaches an origin"
for node in "${NODES[@]}"; do
    region=${node#edge-}
    within 10 "$node's dynamic app did not reach an origin" any_origin dynamic "$node" "${region^^}"
    pass "${region^^} client on $node's dynamic app reached $LAST"
done

# The relay app's load balancer has one pool, weu, and relay = "fastest": on loopback no path
# through a peer beats the direct one by the margin, so every node connects directly.
step "relay app: each region's clients reach the weu pool (its only pool) through every node"
for region in "${REGIONS[@]}"; do
    for node in "${NODES[@]}"; do
        within 10 "$region client on $node's relay app did not reach the weu pool" \
            in_pool "$region" relay "$node" weu
        pass "$region client (${CLIENT_IP[$region]}) on $node's relay app: $LAST"
    done
done
explained=$("$(switchyard_bin)" explain --lb relay --client 127.0.1.1 --addr 127.0.21.1:9900 2>&1) ||
    fail "switchyard explain --lb relay exited non-zero: $explained"
path=$(grep -m1 -E '^ *path ' <<<"$explained" || true)
[[ $path =~ ^\ *path\ direct ]] ||
    fail "edge-wnam's relay path for a WNAM client is not direct: ${path:-no path line in: $explained}"
pass "switchyard explain --lb relay on edge-wnam: ${path#"${path%%[! ]*}"}"

step "switchyard explain --lb geo --client 127.0.2.1 --addr 127.0.21.1:9900"
explained=$("$(switchyard_bin)" explain --lb geo --client 127.0.2.1 --addr 127.0.21.1:9900 2>&1) ||
    fail "switchyard explain exited non-zero: $explained"
printf '%s\n' "$explained" | sed 's/^/    | /'
[[ $explained == *WEU* ]] || fail "the explanation does not mention the client's region WEU"
[[ $explained =~ weu-[0-9] ]] || fail "the explanation names no weu origin"
pass "explain exits 0 and names region WEU and origin ${BASH_REMATCH[0]}"

step "switchyard status --addr 127.0.21.1:9900 shows the GeoIP database"
geo_db=$ROOT/$STATE/geo.mmdb
node_status=$("$(switchyard_bin)" status --addr 127.0.21.1:9900 2>&1) ||
    fail "switchyard status exited non-zero: $node_status"
[[ $node_status == *"$geo_db"* ]] ||
    fail "edge-wnam's status does not mention $geo_db: $(head -n 3 <<<"$node_status")"
pass "$(grep -m1 -F "$geo_db" <<<"$node_status")"

step "DNS: every node answers for the zone, with the nodes' public addresses"
command -v dig >/dev/null || fail "dig is missing: apt-get install bind9-dnsutils"
for node in "${NODES[@]}"; do
    got=$(answers "$node" "failover.$ZONE" | tr '\n' ' ')
    n=$(wc -w <<<"$got")
    ((n == 2)) || fail "$node answers failover.$ZONE with ${got:-nothing}, not 2 addresses"
    for a in $got; do
        [[ " ${PUBLIC[*]} " == *" $a "* ]] || fail "$node answers failover.$ZONE with $a, no node's address"
    done
    pass "dig @${PUBLIC[$node]} -p $DNS_PORT failover.$ZONE: $got"
done
soa=$(dig @"${PUBLIC[edge-wnam]}" -p "$DNS_PORT" +short "$ZONE" SOA 2>/dev/null || true)
[[ -n $soa ]] || fail "edge-wnam gives no SOA for $ZONE"
nx=$(dig @"${PUBLIC[edge-wnam]}" -p "$DNS_PORT" "nothing.$ZONE" A 2>/dev/null || true)
[[ $nx == *"status: NXDOMAIN"* ]] || fail "nothing.$ZONE is not NXDOMAIN: $(grep -m1 status: <<<"$nx")"
pass "the apex has an SOA ($soa); an unknown name is NXDOMAIN"

step "DNS: a WEU client (EDNS Client Subnet ${CLIENT_IP[WEU]}) gets edge-weu first from every node"
for node in "${NODES[@]}"; do
    within 10 "$node does not answer geo.$ZONE for a WEU client with edge-weu first" \
        first_answer_is "$node" "geo.$ZONE" "${CLIENT_IP[WEU]}" "${PUBLIC[edge-weu]}"
    pass "$LAST"
done

step "take the wnam pool down: origin down wnam-1, wnam-2"
"$TESTNET" origin down wnam-1 || fail "origin down wnam-1 failed"
"$TESTNET" origin down wnam-2 || fail "origin down wnam-2 failed"
pass "both wnam origins stopped"
expect_origin 'weu-*' 15

step "mesh-wide view: edge-seas sees wnam-1 down as edge-wnam observes it"
within 15 "edge-seas's status did not show wnam-1 unhealthy for observer edge-wnam" \
    observed_down edge-seas wnam-1 edge-wnam
pass "$LAST"

step "bring the wnam pool back: origin up wnam-1, wnam-2"
"$TESTNET" origin up wnam-1 || fail "origin up wnam-1 failed"
"$TESTNET" origin up wnam-2 || fail "origin up wnam-2 failed"
record_run
pass "both wnam origins started"
expect_origin 'wnam-*' 15

step "node down edge-weu"
"$TESTNET" node down edge-weu || fail "node down edge-weu failed"
expect_ready 127.0.22.1:9900 000 10
pass "edge-weu's status endpoint 127.0.22.1:9900 no longer answers"
started=$SECONDS
within 10 "edge-wnam did not see edge-weu leave the mesh" gone edge-wnam edge-weu
pass "$LAST (within $((SECONDS - started + 1))s)"
within 10 "edge-wnam still answers edge-weu's address to a WEU client" \
    not_answered edge-wnam "geo.$ZONE" "${CLIENT_IP[WEU]}" "${PUBLIC[edge-weu]}"
pass "$LAST"

step "node up edge-weu"
"$TESTNET" node up edge-weu || fail "node up edge-weu failed"
record_run
expect_ready 127.0.22.1:9900 200 10
pass "edge-weu's GET /ready answers 200 again"
started=$SECONDS
within 15 "edge-wnam did not see edge-weu rejoin with a generation above $weu_generation" \
    rejoined edge-wnam edge-weu "$weu_generation"
pass "$LAST (was $weu_generation; within $((SECONDS - started + 1))s)"
within 15 "edge-wnam does not answer edge-weu first to a WEU client again" \
    first_answer_is edge-wnam "geo.$ZONE" "${CLIENT_IP[WEU]}" "${PUBLIC[edge-weu]}"
pass "$LAST"

step "$TESTNET status"
"$TESTNET" status >"$STATE/smoke-status.txt" 2>&1 ||
    fail "testnet.sh status exited $? (output in $STATE/smoke-status.txt)"
pass "status exits 0 ($(grep -c '^== edge-' "$STATE/smoke-status.txt") nodes reported)"
# Each node lists itself alive, so each node's section of a member list says "alive".
declare -A alive_in=()
section=
while IFS= read -r line; do
    if [[ $line == '== '* ]]; then
        section=
        [[ $line =~ ^==\ (edge-[a-z]+) ]] && section=${BASH_REMATCH[1]}
    fi
    [[ -n $section && $line =~ (^|[[:space:]])alive([[:space:]]|$) ]] &&
        alive_in[$section]=$((${alive_in[$section]:-0} + 1))
done <"$STATE/smoke-status.txt"
for node in "${NODES[@]}"; do
    [[ -n ${alive_in[$node]:-} ]] ||
        fail "testnet.sh status shows no member list for $node (see $STATE/smoke-status.txt)"
done
pass "status shows each node's member list (alive: edge-wnam ${alive_in[edge-wnam]}, edge-weu ${alive_in[edge-weu]}, edge-seas ${alive_in[edge-seas]})"

step "$TESTNET down"
record_run
"$TESTNET" down || fail "testnet.sh down failed"
check_all_gone
DOWN_CHECKED=1

printf '\ntestnet-smoke: %d passed, 0 failed\n' "$PASSED"
