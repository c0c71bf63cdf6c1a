#!/usr/bin/env bash
# DNS benchmark (issue 12): one Switchyard node's DNS listener, in a three-node mesh on the
# loopback, side by side with gdnsd 3 serving an equivalent geoip zone, in the same run,
# measured with dnsperf. Loopback only. See tests/bench/README.md ("DNS benchmark").
#
#   tests/bench/dns.sh                 # from the repo root, as root; about 5 minutes plus the build
#   REPS=5 SECS=10 tests/bench/dns.sh
#   SYSTEMS=gdnsd tests/bench/dns.sh   # gdnsd alone (a switchyard without [dns] support, say)
#
# Environment (all optional):
#   REPS=3            runs of each measurement (medians and the spread are reported); the
#                     systems alternate, and the order flips from run to run
#   SECS=5            dnsperf -l of each rate run
#   CLIENTS=4         dnsperf -c (sockets); THREADS=1 dnsperf -T
#   OUTSTANDING=500   dnsperf -q (queries in flight)
#   LOSS_MAX=1        percent: a rate run losing this much or more is run again with -Q at 90%
#   TRIES=4           of what it completed (at most TRIES runs in all)
#   LAT_QPS=20000     the fixed rate of the latency runs (dnsperf -v, every query's latency:
#   LAT_SECS=3          this dnsperf has no latency histogram), for p50 and p99
#   ANSWERS=2         addresses per answer, in both systems ([dns] answers; gdnsd's dcmap)
#   IPV6=1            nodes also have an IPv6 public address (advertised only, never
#                     connected to) and a quarter of the queries are AAAA; 0: A only
#   HEALTH_REPS=3     health changes timed (down and up again); 0 skips them
#   HEALTH_POLL_MS=10 sleep between two dig polls while timing a health change
#   CAP_PERCENT=25    the rate runs again with the server capped at this share of one CPU
#                     (cgroup CPU quota, 10 ms period; needs root and the cpu controller), so
#                     that the server, not dnsperf, is the bottleneck; 0 skips them
#   SERVER_CPU=1      the core the DNS server under test runs on (taskset)
#   CLIENT_CPU=0      the core of dnsperf, dig, the other two nodes and the origin
#   SYSTEMS="switchyard gdnsd"
#   SKIP_BUILD=0      1: use the binaries already in the target directory
#
# Writes tests/bench/results/dns.txt (the table) and dns.json (every sample). Exit status 0
# when the run completed (a measurement that failed shows as "-" and is listed in the
# notes), 1 on a setup failure.
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# log, die, uint, start_bg, stop_started, meta, note, apt_install, machine, pid_ticks, sample,
# stats, fmt (and the CPU cap).
# shellcheck source=tests/bench/lib.sh
source "$ROOT/tests/bench/lib.sh"

REPS=${REPS:-3}
SECS=${SECS:-5}
CLIENTS=${CLIENTS:-4}
THREADS=${THREADS:-1}
OUTSTANDING=${OUTSTANDING:-500}
LOSS_MAX=${LOSS_MAX:-1}
TRIES=${TRIES:-4}
LAT_QPS=${LAT_QPS:-20000}
LAT_SECS=${LAT_SECS:-3}
ANSWERS=${ANSWERS:-2}
IPV6=${IPV6:-1}
HEALTH_REPS=${HEALTH_REPS:-3}
HEALTH_POLL_MS=${HEALTH_POLL_MS:-10}
CAP_PERCENT=${CAP_PERCENT:-25}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
SYSTEMS=${SYSTEMS:-"switchyard gdnsd"}
SKIP_BUILD=${SKIP_BUILD:-0}

RESULTS="$ROOT/tests/bench/results"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
T0=$(date +%s)

for v in REPS SECS CLIENTS THREADS OUTSTANDING TRIES LAT_QPS LAT_SECS ANSWERS HEALTH_REPS HEALTH_POLL_MS CAP_PERCENT SERVER_CPU CLIENT_CPU; do
    uint "$v" "${!v}"
done
((REPS >= 1 && REPS <= 20)) || die "REPS must be 1..20"
((SECS >= 1 && SECS <= 120)) || die "SECS must be 1..120"
((TRIES >= 1 && TRIES <= 10)) || die "TRIES must be 1..10"
((ANSWERS >= 1 && ANSWERS <= 3)) || die "ANSWERS must be 1..3 (three nodes)"
((HEALTH_REPS <= 20)) || die "HEALTH_REPS must be 0..20"
((CAP_PERCENT <= 100)) || die "CAP_PERCENT must be 0..100"
[[ $LOSS_MAX =~ ^[0-9]+([.][0-9]+)?$ ]] || die "LOSS_MAX must be a percentage"
[[ $IPV6 == 0 || $IPV6 == 1 ]] || die "IPV6 must be 0 or 1"
for s in $SYSTEMS; do
    case $s in switchyard | gdnsd) ;; *) die "unknown system $s (switchyard, gdnsd)" ;; esac
done
NCPU=$(nproc)
((SERVER_CPU < NCPU && CLIENT_CPU < NCPU)) || die "SERVER_CPU and CLIENT_CPU must be below $NCPU"
((SERVER_CPU != CLIENT_CPU)) || log "SERVER_CPU = CLIENT_CPU: server and dnsperf share one core"

# ------------------------------------------------------------------------------------------
# Tools

need=()
command -v gdnsd >/dev/null || need+=(gdnsd)
command -v dnsperf >/dev/null || need+=(dnsperf)
command -v dig >/dev/null || need+=(bind9-dnsutils)
command -v jq >/dev/null || need+=(jq)
command -v curl >/dev/null || need+=(curl)
# gdnsd's package may start a service of its own; this benchmark never uses it (it runs its
# own gdnsd from a private config dir, on its own port).
apt_install "${need[@]}"
if [[ " $SYSTEMS " == *" switchyard "* && $SKIP_BUILD != 1 ]]; then
    log "building (release)"
    timeout 1800 cargo build --release -p switchyard-node -p switchyard-tests --bins >&2 ||
        die "build failed"
fi
if [[ " $SYSTEMS " == *" switchyard "* ]]; then
    [[ -x $BIN/switchyard && -x $BIN/test-origin ]] || die "no $BIN/switchyard or $BIN/test-origin"
fi

# ------------------------------------------------------------------------------------------
# Layout. Region r (1 WNAM, 2 WEU, 3 SEAS): node on 127.0.2r.1 (public address, status, mesh
# and DNS listener), its client network 127.0.r.0/24 (client 127.0.r.1). Node 1, edge-wnam,
# is the one benchmarked; gdnsd listens on the same address, one port up.

ZONE=lb.example.com
NAMES=(game chat)
REGIONS=(WNAM WEU SEAS)
declare -A R_INDEX=([WNAM]=1 [WEU]=2 [SEAS]=3)
declare -A R_GEO=([WNAM]="US,CA,37.34,-121.89" [WEU]="DE,,50.11,8.68" [SEAS]="SG,,1.35,103.82")
# Each region's datacenter order for gdnsd: its own first, then the others.
declare -A R_ORDER=([WNAM]="WNAM WEU SEAS" [WEU]="WEU WNAM SEAS" [SEAS]="SEAS WNAM WEU")
node_id() { echo "edge-${1,,}"; }
node_ip() { echo "127.0.2${R_INDEX[$1]}.1"; }
node_ip6() { echo "fd00:5959:2${R_INDEX[$1]}::1"; }
client_ip() { echo "127.0.${R_INDEX[$1]}.1"; }
client_net() { echo "127.0.${R_INDEX[$1]}.0/24"; }

DNS_PORT=25353
GDNSD_PORT=25354
STATUS_PORT=25990
MESH_PORT=25946
APP_PORT=25001 # app k on 25001 + k
ORIGIN_PORT=25201
BENCH_REGION=WNAM
BENCH_IP=$(node_ip "$BENCH_REGION")
# The two cases: without ECS the resolver's address decides (a WEU resolver); with ECS the
# option names a SEAS /24 (from the same WEU resolver address, so the answer must change).
RESOLVER_REGION=WEU
ECS_REGION=SEAS
RESOLVER=$(client_ip "$RESOLVER_REGION")
ecs_hex() { # a.b.c.0/24 -> family 1, source prefix 24, scope 0, three address bytes
    local a b c _
    IFS=./ read -r a b c _ _ <<<"$1"
    printf '0001%02x00%02x%02x%02x' 24 "$a" "$b" "$c"
}
ECS_OPT="8:$(ecs_hex "$(client_net "$ECS_REGION")")"
CASES=(noecs ecs)
TYPES=(A)
if ((IPV6)); then TYPES+=(AAAA); fi
declare -A CASE_TITLE=([noecs]="no ECS ($RESOLVER_REGION resolver)" [ecs]="ECS /24 ($ECS_REGION subnet)")
declare -A CASE_REGION=([noecs]=$RESOLVER_REGION [ecs]=$ECS_REGION)
declare -A CASE_DIG=([noecs]="" [ecs]="+subnet=$(client_net "$ECS_REGION")")
for c in "${CASES[@]}"; do CASE_TITLE[${c}_capped]="${CASE_TITLE[$c]}, server capped at $CAP_PERCENT% CPU"; done
RATE_CASES=("${CASES[@]}") # and the capped ones, when the cap works

TMP=$(mktemp -d /tmp/sy-dnsbench.XXXXXX)
SAMPLES="$TMP/samples.tsv"
: >"$SAMPLES"
declare -A PID=()

cleanup() {
    cap_teardown
    stop_started
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ports=("$BENCH_IP:$GDNSD_PORT" "127.0.0.1:$ORIGIN_PORT")
for r in "${REGIONS[@]}"; do
    ip=$(node_ip "$r")
    ports+=("$ip:$DNS_PORT" "$ip:$STATUS_PORT" "$ip:$MESH_PORT" "$ip:$APP_PORT" "$ip:$((APP_PORT + 1))")
done
in_use=$(ss -Hlntu 2>/dev/null | awk '{print $5}')
for p in "${ports[@]}"; do
    grep -qxF "$p" <<<"$in_use" && die "$p is already in use; stop whatever holds it"
done

# ------------------------------------------------------------------------------------------
# Machine and versions

MACHINE=$(machine)
GDNSD_VERSION=$( (gdnsd -h 2>&1 || true) | awk '/^gdnsd version/ {print $3; exit}')
DNSPERF_VERSION=$( (dnsperf -h 2>&1 || true) | awk '/^Version/ {print $2; exit}')
meta machine "$MACHINE"
meta date "$(date -u '+%Y-%m-%d %H:%M UTC')"
meta commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"
meta versions "gdnsd ${GDNSD_VERSION:-?}, dnsperf ${DNSPERF_VERSION:-?}$([[ -x $BIN/switchyard ]] && echo ", $("$BIN/switchyard" --version)")"
meta placement "the DNS server under test on CPU $SERVER_CPU (taskset, all its threads); dnsperf, dig, the other two nodes and the origin on CPU $CLIENT_CPU"
meta load_before "loadavg $(cut -d' ' -f1-3 /proc/loadavg); $(others)"
log "machine: $MACHINE"

# ------------------------------------------------------------------------------------------
# The query file: every name, A (three in four) and AAAA (one in four) with IPV6=1.

QUERIES="$TMP/queries.txt"
for n in "${NAMES[@]}"; do
    printf '%s.%s A\n' "$n" "$ZONE" "$n" "$ZONE" "$n" "$ZONE"
    if ((IPV6)); then printf '%s.%s AAAA\n' "$n" "$ZONE"; fi
done >"$QUERIES"
meta queries "$(sort "$QUERIES" | uniq -c | awk '{printf "%s%s %s x%s", sep, $2, $3, $1; sep=", "}') in a loop; EDNS0 on every query (dnsperf -e)"

# The GeoIP CSV both systems are built from (the region of each row in its comment).
GEO_CSV="$TMP/geo.csv"
{
    echo "cidr,country,subdivision,latitude,longitude"
    for r in "${REGIONS[@]}"; do echo "$(client_net "$r"),${R_GEO[$r]}  # $r"; done
} >"$GEO_CSV"

# ------------------------------------------------------------------------------------------
# gdnsd: the geoip plugin with `nets` from the CSV (no GeoIP2 database), ECS on (its default).
# Each region's datacenter answers with ANSWERS node addresses: that region's node first, then
# the next in its order, as Switchyard answers ANSWERS addresses per family.

commas() { # words -> "a, b, c"
    local out=$1
    shift
    for w in "$@"; do out+=", $w"; done
    echo "$out"
}
gdnsd_addrs() { # region family(4|6) -> "[a, b]"
    local r=$1 fam=$2 out=() d
    for d in ${R_ORDER[$r]}; do
        ((${#out[@]} < ANSWERS)) || break
        if [[ $fam == 4 ]]; then out+=("$(node_ip "$d")"); else out+=("$(node_ip6 "$d")"); fi
    done
    echo "[$(commas "${out[@]}")]"
}

gdnsd_setup() {
    local d="$TMP/gdnsd" r cidr region
    mkdir -p "$d/zones" "$d/run" "$d/state"
    {
        echo "options => {"
        echo "  listen => { $BENCH_IP:$GDNSD_PORT => { udp_threads => 1, tcp_threads => 1 } }"
        echo "  run_dir => $d/run"
        echo "  state_dir => $d/state"
        echo "  zones_default_ttl => 30"
        echo "}"
        echo "plugins => { geoip => {"
        echo "  maps => { regions => {"
        echo "    datacenters => [$(commas "${REGIONS[@]}")]"
        echo "    nets => {"
        # cidr,country,...  # REGION
        while IFS=, read -r cidr _; do
            region=$(grep -F "$cidr," "$GEO_CSV" | sed 's/.*# *//')
            # shellcheck disable=SC2086 # the order is a list of words
            echo "      $cidr => [$(commas ${R_ORDER[$region]})]"
        done < <(tail -n +2 "$GEO_CSV")
        echo "    }"
        echo "  } }"
        echo "  resources => { app => {"
        echo "    map => regions"
        echo "    dcmap => {"
        for r in "${REGIONS[@]}"; do
            if ((IPV6)); then
                echo "      $r => { addrs_v4 => $(gdnsd_addrs "$r" 4), addrs_v6 => $(gdnsd_addrs "$r" 6) }"
            else
                echo "      $r => $(gdnsd_addrs "$r" 4)"
            fi
        done
        echo "    }"
        echo "  } }"
        echo "} }"
    } >"$d/config"
    {
        echo "\$TTL 30"
        echo "@ SOA $(node_id WNAM).ns hostmaster 1 3600 600 86400 30"
        for r in "${REGIONS[@]}"; do echo "@ NS $(node_id "$r").ns"; done
        for r in "${REGIONS[@]}"; do echo "$(node_id "$r").ns A $(node_ip "$r")"; done
        for n in "${NAMES[@]}"; do echo "$n 30 DYNA geoip!app"; done
    } >"$d/zones/$ZONE"
    gdnsd -c "$d" checkconf >"$TMP/gdnsd-check.log" 2>&1 || {
        cat "$TMP/gdnsd-check.log" >&2
        die "gdnsd rejected $d/config"
    }
    echo "$d"
}

# ------------------------------------------------------------------------------------------
# Switchyard: three nodes, one per region, in one mesh; each with [dns] on its own address,
# two apps with hostnames over a pool of its own (one origin, no monitor: healthy while
# enabled, so a reload with the origin disabled takes the node's pools down in its own view).

sy_conf() { # region origin-enabled(true|false) -> writes the node's config, prints its path
    local r=$1 enabled=$2 id ip f k seeds=() s public
    id=$(node_id "$r")
    ip=$(node_ip "$r")
    f="$TMP/$id.toml"
    public="\"$ip\""
    if ((IPV6)); then public+=", \"$(node_ip6 "$r")\""; fi
    for s in "${REGIONS[@]}"; do seeds+=("\"$(node_ip "$s"):$MESH_PORT\""); done
    local IFS=,
    cat >"$f.new" <<EOF
[node]
id = "$id"
region = "$r"
status_listen = "$ip:$STATUS_PORT"
drain_timeout = "1s"
public_addresses = [$public]

[geo]
database = "$TMP/geo.mmdb"

[dns]
listen = "$ip:$DNS_PORT"
zone = "$ZONE"
ttl = 30
answers = $ANSWERS

[mesh]
cluster = "dnsbench"
listen = "$ip:$MESH_PORT"
seeds = [${seeds[*]}]
ca = "$TMP/certs/ca/ca.crt"
cert = "$TMP/certs/$id.crt"
key = "$TMP/certs/$id.key"
probe_period = "500ms"
probe_timeout = "250ms"
suspect_timeout = "2s"
announce_interval = "1s"
anti_entropy_interval = "1s"

[[pool]]
name = "$id"
origins = [{ name = "$id-1", address = "127.0.0.1:$ORIGIN_PORT", enabled = $enabled }]
EOF
    for k in "${!NAMES[@]}"; do
        cat >>"$f.new" <<EOF

[[load_balancer]]
name = "${NAMES[$k]}"
steering = "failover"
default_pools = ["$id"]

[[app]]
name = "${NAMES[$k]}"
listen = "$ip:$((APP_PORT + k))"
load_balancer = "${NAMES[$k]}"
hostname = "${NAMES[$k]}"
EOF
    done
    mv "$f.new" "$f"
    echo "$f"
}

sy_setup() {
    local sy=$BIN/switchyard r id conf ok out
    mkdir -p "$TMP/certs"
    "$sy" ca init --out "$TMP/certs/ca" --cluster dnsbench >"$TMP/ca.log" 2>&1 || die "switchyard ca init: $(cat "$TMP/ca.log")"
    for r in "${REGIONS[@]}"; do
        "$sy" cert issue --ca "$TMP/certs/ca" --node "$(node_id "$r")" --region "$r" --out "$TMP/certs" >"$TMP/cert.log" 2>&1 ||
            die "switchyard cert issue: $(cat "$TMP/cert.log")"
    done
    "$sy" geoip build --from "$GEO_CSV" --out "$TMP/geo.mmdb" >"$TMP/geo.log" 2>&1 || die "switchyard geoip build: $(cat "$TMP/geo.log")"
    for r in "${REGIONS[@]}"; do
        out=$("$sy" geoip lookup "$(client_ip "$r")" --db "$TMP/geo.mmdb" 2>&1) || true
        grep -qw "region $r" <<<"$out" || die "the GeoIP database does not place $(client_ip "$r") in $r: $out"
    done
    start_bg "$TMP/origin.log" taskset -c "$CLIENT_CPU" "$BIN/test-origin" --name origin --listen "127.0.0.1:$ORIGIN_PORT"
    for r in "${REGIONS[@]}"; do
        id=$(node_id "$r")
        conf=$(sy_conf "$r" true)
        "$sy" check --config "$conf" >"$TMP/check.log" 2>&1 || die "switchyard rejected $conf: $(cat "$TMP/check.log")"
        # The node under test starts on its one core, so it runs a current-thread runtime.
        local cpu=$CLIENT_CPU
        [[ $r == "$BENCH_REGION" ]] && cpu=$SERVER_CPU
        start_bg "$TMP/$id.log" taskset -c "$cpu" "$sy" run --config "$conf"
        PID[$id]=$LAST_PID
    done
    for r in "${REGIONS[@]}"; do
        ok=0
        for _ in $(seq 1 100); do
            curl -sf -o /dev/null --max-time 1 "http://$(node_ip "$r"):$STATUS_PORT/ready" && ok=1 && break
            sleep 0.1
        done
        ((ok)) || {
            tail -20 "$TMP/$(node_id "$r").log" >&2
            die "$(node_id "$r") was not ready within 10 s"
        }
    done
    PID[switchyard]=${PID[$(node_id "$BENCH_REGION")]}
}

# ------------------------------------------------------------------------------------------
# Queries

server_port() { if [[ $1 == gdnsd ]]; then echo "$GDNSD_PORT"; else echo "$DNS_PORT"; fi; }
# The addresses answered (one line, in order) for NAME and TYPE to a client of CASE.
ask() { # system case name type [server-ip]
    local ip=${5:-$BENCH_IP}
    # shellcheck disable=SC2086 # CASE_DIG is one option or none
    timeout 5 dig +short +tries=1 +time=1 -b "$RESOLVER" @"$ip" -p "$(server_port "$1")" ${CASE_DIG[$2]} "$3.$ZONE" "$4" 2>/dev/null |
        paste -sd' ' - || true
}
# The address each answer must have: the case's region's node's.
expect_first() { # case type
    if [[ $2 == AAAA ]]; then node_ip6 "${CASE_REGION[$1]}"; else node_ip "${CASE_REGION[$1]}"; fi
}

# Waits (bounded) until SYSTEM answers every name of every case with ANSWERS addresses, among
# them the case's region's node (first, for Switchyard): for Switchyard, once the mesh has
# converged and every advert arrived.
wait_answers() { # system
    local sys=$1 c n t ans bad
    for _ in $(seq 1 300); do
        bad=
        for c in "${CASES[@]}"; do
            for n in "${NAMES[@]}"; do
                for t in "${TYPES[@]}"; do
                    ans=$(ask "$sys" "$c" "$n" "$t")
                    read -ra got <<<"$ans"
                    # gdnsd shuffles the addresses of an answer; Switchyard ranks them.
                    if ((${#got[@]} != ANSWERS)) || [[ " $ans " != *" $(expect_first "$c" "$t") "* ]] ||
                        [[ $sys == switchyard && ${got[0]} != "$(expect_first "$c" "$t")" ]]; then
                        bad="$c $n $t: '$ans'"
                        break 3
                    fi
                done
            done
        done
        [[ -z $bad ]] && return 0
        sleep 0.1
    done
    die "$sys never gave the expected answers within 30 s ($bad; expected $ANSWERS addresses, with the case's region's node)"
}

field() { # dnsperf-output label -> the first number after "label:"
    awk -v l="$2" 'index($0, l ":") {sub(/^[^:]*:[ \t]*/, ""); print $1 + 0; exit}' <<<"$1"
}

dnsperf_args() { # system case
    local a=(-s "$BENCH_IP" -p "$(server_port "$1")" -a "$RESOLVER" -d "$QUERIES" -e -c "$CLIENTS" -T "$THREADS" -q "$OUTSTANDING")
    [[ $2 == ecs ]] && a+=(-E "$ECS_OPT")
    printf '%s\n' "${a[@]}"
}

# One rate measurement: unthrottled, then (at most TRIES runs) throttled while it loses
# LOSS_MAX percent or more. Its samples go under CASE, or CASE_capped with the suffix.
rate() { # system case rep [_capped]
    local sys=$1 c=$2${4:-} rep=$3 pid=${PID[$1]} try qps_cap="" out c0 c1 sent lost qps secs avg loss codes
    local -a args
    mapfile -t args < <(dnsperf_args "$sys" "$2")
    for try in $(seq 1 "$TRIES"); do
        c0=$(pid_ticks "$pid")
        if ! out=$(timeout $((SECS + 30)) taskset -c "$CLIENT_CPU" dnsperf "${args[@]}" -l "$SECS" ${qps_cap:+-Q "$qps_cap"} 2>&1); then
            note "$sys, ${CASE_TITLE[$c]}, run $rep: dnsperf failed: $(tail -3 <<<"$out" | tr '\n\t' '  ' | head -c 300)"
            return 0
        fi
        c1=$(pid_ticks "$pid")
        sent=$(field "$out" "Queries sent")
        lost=$(field "$out" "Queries lost")
        qps=$(field "$out" "Queries per second")
        secs=$(field "$out" "Run time (s)")
        avg=$(field "$out" "Average Latency (s)")
        codes=$(awk -F':[ \t]*' '/Response codes/ {print $2; exit}' <<<"$out")
        loss=$(awk -v s="$sent" -v l="$lost" 'BEGIN {printf "%.3f", (s > 0 ? 100 * l / s : 100)}')
        log "$sys ${CASE_TITLE[$c]} run $rep try $try${qps_cap:+ (-Q $qps_cap)}: $qps q/s, loss $loss%, avg latency $avg s, $codes"
        [[ $codes == "NOERROR "* && $codes != *","* ]] || note "$sys, ${CASE_TITLE[$c]}, run $rep: response codes $codes"
        if awk -v l="$loss" -v m="$LOSS_MAX" 'BEGIN {exit !(l < m)}'; then
            local completed=$((sent - lost))
            sample qps "$c" "$sys" "$rep" "$qps"
            sample loss_pct "$c" "$sys" "$rep" "$loss"
            sample avg_latency_ms "$c" "$sys" "$rep" "$(awk -v a="$avg" 'BEGIN {printf "%.3f", a * 1000}')"
            sample cpu_ms_per_100k "$c" "$sys" "$rep" "$(awk -v t=$((c1 - c0)) -v k="$CLK_TCK" -v n="$completed" 'BEGIN {printf "%.1f", (n > 0 ? t / k * 1000 * 100000 / n : 0)}')"
            sample busy_pct "$c" "$sys" "$rep" "$(awk -v t=$((c1 - c0)) -v k="$CLK_TCK" -v s="$secs" 'BEGIN {printf "%.0f", (s > 0 ? 100 * t / k / s : 0)}')"
            sample throttled_qps "$c" "$sys" "$rep" "${qps_cap:-0}"
            [[ -z $qps_cap ]] || note "$sys, ${CASE_TITLE[$c]}, run $rep: lost ${LOSS_MAX}% or more unthrottled; the figure is at -Q $qps_cap (try $try)"
            if ((rep == 1)); then
                meta "packets_${sys}_$c" "$(awk -F':[ \t]*' '/Average packet size/ {print $2; exit}' <<<"$out")"
            fi
            return 0
        fi
        qps_cap=$(awk -v q="$qps" -v c="${qps_cap:-0}" 'BEGIN {r = q * 0.9; if (c > 0 && c * 0.8 < r) r = c * 0.8; printf "%d", r}')
    done
    note "$sys, ${CASE_TITLE[$c]}, run $rep: still losing ${LOSS_MAX}% or more after $TRIES runs (last: $loss% at -Q $qps_cap); no rate recorded"
}

# Latency at a fixed rate: dnsperf -v prints every query's latency.
latency() { # system case rep
    local sys=$1 c=$2 rep=$3 n p50 p99
    local -a args
    mapfile -t args < <(dnsperf_args "$sys" "$c")
    if ! timeout $((LAT_SECS + 30)) taskset -c "$CLIENT_CPU" dnsperf "${args[@]}" -l "$LAT_SECS" -Q "$LAT_QPS" -v >"$TMP/lat.out" 2>&1; then
        note "$sys, ${CASE_TITLE[$c]}, run $rep: the latency run failed: $(tail -3 "$TMP/lat.out" | tr '\n\t' '  ' | head -c 300)"
        return 0
    fi
    awk '/^> / {print $NF * 1e6}' "$TMP/lat.out" | sort -g >"$TMP/lat.sorted"
    n=$(wc -l <"$TMP/lat.sorted")
    if ((n < 100)); then
        note "$sys, ${CASE_TITLE[$c]}, run $rep: only $n latencies in the latency run"
        return 0
    fi
    p50=$(sed -n "$(((n * 50 + 99) / 100))p" "$TMP/lat.sorted")
    p99=$(sed -n "$(((n * 99 + 99) / 100))p" "$TMP/lat.sorted")
    sample p50_us "$c" "$sys" "$rep" "$(printf '%.0f' "$p50")"
    sample p99_us "$c" "$sys" "$rep" "$(printf '%.0f' "$p99")"
    log "$sys ${CASE_TITLE[$c]} run $rep at $LAT_QPS q/s: p50 $p50 us, p99 $p99 us ($n queries)"
}

# ------------------------------------------------------------------------------------------
# Start

ACTIVE=()
for sys in $SYSTEMS; do
    case $sys in
    switchyard)
        log "starting three Switchyard nodes"
        sy_setup
        ;;
    gdnsd)
        log "starting gdnsd"
        d=$(gdnsd_setup)
        start_bg "$TMP/gdnsd.log" taskset -c "$SERVER_CPU" gdnsd -c "$d" start
        PID[gdnsd]=$LAST_PID
        ;;
    esac
    ACTIVE+=("$sys")
done
for sys in "${ACTIVE[@]}"; do
    wait_answers "$sys"
    for c in "${CASES[@]}"; do
        for t in "${TYPES[@]}"; do
            meta "answer_${sys}_${c}_$t" "${NAMES[0]}.$ZONE $t: $(ask "$sys" "$c" "${NAMES[0]}" "$t")"
        done
    done
done
log "answers checked: $ANSWERS addresses, with the case's region's node (first, for Switchyard)"

CAPPED=0
if ((CAP_PERCENT > 0)); then
    if cap_setup; then
        CAPPED=1
        for sys in "${ACTIVE[@]}"; do cap_join "${PID[$sys]}"; done
        for c in "${CASES[@]}"; do RATE_CASES+=("${c}_capped"); done
        meta capped "the rate runs again with the server limited to $CAP_PERCENT% of one CPU (cgroup $CAP_KIND CPU quota, 10 ms period)"
    else
        note "capped runs skipped: cannot make a cgroup with a CPU quota (they need root and the cgroup cpu controller)"
    fi
fi

# ------------------------------------------------------------------------------------------
# Rate, latency and CPU: the systems alternate, the order flips from run to run.

for rep in $(seq 1 "$REPS"); do
    log "run $rep of $REPS (loadavg $(cut -d' ' -f1-3 /proc/loadavg))"
    meta "load_run_$rep" "loadavg $(cut -d' ' -f1-3 /proc/loadavg) at the start; $(others)"
    order=("${ACTIVE[@]}")
    if ((rep % 2 == 0)); then
        order=()
        for ((i = ${#ACTIVE[@]} - 1; i >= 0; i--)); do order+=("${ACTIVE[$i]}"); done
    fi
    for c in "${CASES[@]}"; do
        for sys in "${order[@]}"; do rate "$sys" "$c" "$rep"; done
        for sys in "${order[@]}"; do latency "$sys" "$c" "$rep"; done
        if ((CAPPED)); then
            cap_set on
            for sys in "${order[@]}"; do rate "$sys" "$c" "$rep" _capped; done
            cap_set off
        fi
    done
done

# ------------------------------------------------------------------------------------------
# Syscalls and context switches per query (perf stat on the server during one more rate run
# without ECS), when perf works: what the CPU per query goes to.

PERF_EVENTS=syscalls:sys_enter_recvfrom,syscalls:sys_enter_recvmsg,syscalls:sys_enter_recvmmsg,syscalls:sys_enter_sendto,syscalls:sys_enter_sendmsg,syscalls:sys_enter_sendmmsg,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait,context-switches
if command -v perf >/dev/null && timeout 10 perf stat -e "$PERF_EVENTS" -o /dev/null true >/dev/null 2>&1; then
    for sys in "${ACTIVE[@]}"; do
        mapfile -t args < <(dnsperf_args "$sys" noecs)
        timeout 60 perf stat -e "$PERF_EVENTS" -p "${PID[$sys]}" -o "$TMP/perf.out" &
        perf_pid=$!
        sleep 0.3
        out=$(timeout 60 taskset -c "$CLIENT_CPU" dnsperf "${args[@]}" -l 2 2>&1) || true
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
        done_q=$(($(field "$out" "Queries sent") - $(field "$out" "Queries lost")))
        ((done_q > 0)) || continue
        meta "syscalls_per_query_$sys" "$(awk -v n="$done_q" '$1 ~ /^[0-9,]+$/ {gsub(",", "", $1); sub("syscalls:sys_enter_", "", $2)
            if ($1 > 0) {printf "%s%s %.3f", sep, $2, $1 / n; sep = ", "}} END {printf " per query (%d queries, no ECS)", n}' "$TMP/perf.out")"
    done
else
    note "perf is not usable here; syscall counts skipped"
fi

# ------------------------------------------------------------------------------------------
# A health change in the mesh, seen in the answers: edge-seas's pools go down in its own
# view (a reload with its origin disabled), and the benchmarked node's answer to the SEAS
# subnet is polled with dig until edge-seas leaves it; then the same back up.

health() { # rep down|up
    local rep=$1 dir=$2 down_ip enabled t0 t1 polls=0 ans done_=0 start
    down_ip=$(node_ip SEAS)
    enabled=true
    [[ $dir == down ]] && enabled=false
    sy_conf SEAS "$enabled" >/dev/null
    start=$(reloads_ok SEAS)
    t0=$EPOCHREALTIME
    kill -HUP "${PID[$(node_id SEAS)]}"
    for _ in $(seq 1 1000); do # 10 s at the least
        ans=$(ask switchyard ecs "${NAMES[0]}" A)
        polls=$((polls + 1))
        if [[ $dir == down && -n $ans && " $ans " != *" $down_ip "* ]] ||
            [[ $dir == up && " $ans " == *" $down_ip "* ]]; then
            done_=1
            break
        fi
        sleep "$(awk -v m="$HEALTH_POLL_MS" 'BEGIN {printf "%.3f", m / 1000}')"
    done
    t1=$EPOCHREALTIME
    local ms
    ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", (b - a) * 1000}')
    if ((!done_)); then
        note "health $dir, run $rep: the answer did not change within $ms ms ($polls polls; last answer: $ans)"
        return 0
    fi
    (($(reloads_ok SEAS) > start)) || note "health $dir, run $rep: edge-seas counted no successful reload"
    sample "health_${dir}_ms" mesh switchyard "$rep" "$ms"
    sample health_polls mesh switchyard "$rep-$dir" "$polls"
    sample health_poll_ms mesh switchyard "$rep-$dir" "$(awk -v t="$ms" -v n="$polls" 'BEGIN {printf "%.0f", t / n}')"
    log "health $dir, run $rep: $ms ms ($polls polls; now $ans)"
}
reloads_ok() { # region -> switchyard_config_reloads_total{result="ok"} on that node
    curl -sf --max-time 2 "http://$(node_ip "$1"):$STATUS_PORT/metrics" |
        awk '/^switchyard_config_reloads_total\{result="ok"\}/ {print $2 + 0; f=1} END {if (!f) print 0}'
}

if [[ -n ${PID[switchyard]:-} ]] && ((HEALTH_REPS > 0)); then
    log "health changes: edge-seas's pools down and up, $HEALTH_REPS times"
    for rep in $(seq 1 "$HEALTH_REPS"); do
        health "$rep" down
        sleep 1
        health "$rep" up
        sleep 1
    done
fi

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
meta load_after "loadavg $LOAD_AFTER; $(others)"
meta duration "$(($(date +%s) - T0)) s"

# ------------------------------------------------------------------------------------------
# Report: medians, spread (min-max over the runs), Switchyard / gdnsd (lib.sh: stats, fmt).

# key|title|unit|decimals|cases
ROWS=(
    "qps|queries/s at under ${LOSS_MAX}% loss|q/s|0|${RATE_CASES[*]}"
    "loss_pct|loss in that run|%|2|${RATE_CASES[*]}"
    "avg_latency_ms|average latency at that rate (dnsperf)|ms|3|${RATE_CASES[*]}"
    "p50_us|latency p50 at $LAT_QPS q/s|us|0|noecs ecs"
    "p99_us|latency p99 at $LAT_QPS q/s|us|0|noecs ecs"
    "cpu_ms_per_100k|server CPU per 100k queries|CPU ms|1|${RATE_CASES[*]}"
    "busy_pct|server CPU busy during the rate run|%|0|${RATE_CASES[*]}"
    "health_down_ms|pools down on edge-seas -> gone from edge-wnam's answer|ms|0|mesh"
    "health_up_ms|pools up again -> back in the answer|ms|0|mesh"
    "health_polls|dig polls until the change showed (down and up)|polls|0|mesh"
    "health_poll_ms|one poll: dig's own time + ${HEALTH_POLL_MS} ms sleep|ms|0|mesh"
)
# Lower is better for all but qps.
TABLE="$TMP/table.txt"
JSONL="$TMP/metrics.jsonl"
: >"$JSONL"
{
    printf '%-80s %-7s %12s %20s %12s %20s %9s\n' measurement unit Switchyard "(min-max)" gdnsd "(min-max)" SY/gdnsd
    printf '%s\n' "$(printf '%168s' '' | tr ' ' -)"
    for row in "${ROWS[@]}"; do
        IFS='|' read -r key title unit dec cases <<<"$row"
        for c in $cases; do
            label=$title
            [[ $c == mesh ]] || label="${CASE_TITLE[$c]}: $title"
            read -r sm smin smax _ <<<"$(stats "$key" "$c" switchyard)" || true
            read -r gm gmin gmax _ <<<"$(stats "$key" "$c" gdnsd)" || true
            ratio=-
            if [[ -n ${sm:-} && -n ${gm:-} ]] && awk -v g="$gm" 'BEGIN {exit !(g > 0)}'; then
                ratio=$(awk -v s="$sm" -v g="$gm" 'BEGIN {printf "%.2f", s / g}')
            fi
            sr=""
            [[ -n ${sm:-} ]] && sr="$(fmt "$smin" "$dec")-$(fmt "$smax" "$dec")"
            gr=""
            [[ -n ${gm:-} ]] && gr="$(fmt "$gmin" "$dec")-$(fmt "$gmax" "$dec")"
            [[ $c == mesh ]] && gr="(not measured)"
            printf '%-80s %-7s %12s %20s %12s %20s %9s\n' "$label" "$unit" "$(fmt "${sm:-}" "$dec")" "$sr" "$(fmt "${gm:-}" "$dec")" "$gr" "$ratio"
            jq -n -c --arg key "$key" --arg case "$c" --arg title "$label" --arg unit "$unit" \
                --argjson sy "$(samples "$key" "$c" switchyard)" --argjson gd "$(samples "$key" "$c" gdnsd)" \
                --arg ratio "$ratio" --argjson hib "$([[ $key == qps ]] && echo true || echo false)" '
                def med: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
                {key: $key, case: $case, title: $title, unit: $unit, higher_is_better: $hib,
                 median: {switchyard: ($sy | med), gdnsd: ($gd | med)},
                 min: {switchyard: ($sy | min), gdnsd: ($gd | min)},
                 max: {switchyard: ($sy | max), gdnsd: ($gd | max)},
                 samples: {switchyard: $sy, gdnsd: $gd},
                 ratio_switchyard_over_gdnsd: (if $ratio == "-" then null else ($ratio | tonumber) end)}' >>"$JSONL"
            unset sm smin smax gm gmin gmax
        done
    done
} >"$TABLE"

# Runs pair up (the systems take turns within a run): the ratio of each pair, as the medians
# of a noisy machine can come from different runs.
for c in "${RATE_CASES[@]}"; do
    pairs=$(awk -F'\t' -v c="$c" '$1 == "S" && $2 == "qps" && $3 == c {v[$4, $5] = $6; r[$5] = 1}
        END {for (k in r) if ((("switchyard", k) in v) && (("gdnsd", k) in v)) printf "%s %.2f\n", k, v["switchyard", k] / v["gdnsd", k]}' "$SAMPLES" |
        sort -n | awk '{printf "%srun %s: %s", sep, $1, $2; sep = ", "}')
    [[ -z $pairs ]] || note "q/s Switchyard/gdnsd run by run, ${CASE_TITLE[$c]}: $pairs"
done

# Notes that explain the figures.
note "Both servers run on CPU $SERVER_CPU and dnsperf on CPU $CLIENT_CPU: on a 2-core machine dnsperf has one core, so when the server's CPU is far from busy the rate is dnsperf's limit, not the server's; CPU per 100k queries then compares the servers, and so do the capped runs (each server limited to the same $CAP_PERCENT% of a CPU, so that it is the bottleneck)"
note "p50/p99 come from a separate run at a fixed $LAT_QPS q/s (dnsperf -v, every query's latency): dnsperf $DNSPERF_VERSION has no latency histogram; the average latency is dnsperf's, at the rate of the rate run"
note "Switchyard's CPU is the whole node (mesh and status included); gdnsd's is its whole process"
note "The health change is Switchyard's alone (gdnsd learns health from its own monitors, not from a mesh): edge-seas reloads its config with its pools' only origin disabled (SIGHUP), and edge-wnam's answer to the SEAS subnet is polled with dig until edge-seas leaves it (then the same back). Timed from the SIGHUP to the end of the first poll that shows the change: an upper bound, one poll (dig's own time plus ${HEALTH_POLL_MS} ms) coarse; one poll means the first query already saw it"
note "Response sizes differ (see packets): Switchyard writes every record's owner name in full (no compression pointer to the question; node/src/dns/zone.rs), gdnsd compresses it: 19 bytes more per answer record for these names"

HEADER="DNS benchmark: Switchyard vs gdnsd, $(awk -F'\t' '$1 == "M" && $2 == "date" {print $3}' "$SAMPLES")
machine: $MACHINE
$(awk -F'\t' '$1 == "M" && ($2 == "versions" || $2 == "placement" || $2 == "queries" || $2 == "load_before" || $2 == "load_after" || $2 == "duration") {print $2 ": " $3}' "$SAMPLES")
medians of $REPS runs (health: $HEALTH_REPS), min-max in brackets; SY/gdnsd above 1 is better for q/s, below 1 for the rest"

mkdir -p "$RESULTS"
{
    echo "$HEADER"
    echo
    cat "$TABLE"
    echo
    echo "answers:"
    awk -F'\t' '$1 == "M" && $2 ~ /^answer_/ {sub(/^answer_/, "", $2); print "  " $2 ": " $3}' "$SAMPLES"
    echo "packets (request, response bytes):"
    awk -F'\t' '$1 == "M" && $2 ~ /^packets_/ {sub(/^packets_/, "", $2); print "  " $2 ": " $3}' "$SAMPLES"
    echo "syscalls (perf stat on the server):"
    awk -F'\t' '$1 == "M" && $2 ~ /^syscalls_per_query_/ {sub(/^syscalls_per_query_/, "", $2); print "  " $2 ": " $3}' "$SAMPLES"
    echo "notes:"
    awk -F'\t' '$1 == "N" {print "  - " $2}' "$SAMPLES"
} >"$RESULTS/dns.txt"

jq -n --slurpfile metrics "$JSONL" \
    --argjson meta "$(meta_json)" \
    --argjson notes "$(notes_json)" \
    --argjson systems "$(printf '%s\n' "${ACTIVE[@]}" | jq -R -s 'split("\n") | map(select(length > 0))')" \
    --arg cases "$(for c in "${RATE_CASES[@]}"; do printf '%s: %s; ' "$c" "${CASE_TITLE[$c]}"; done)mesh: the health change" \
    '{meta: $meta, systems: $systems, cases: $cases, metrics: $metrics, notes: $notes}' >"$RESULTS/dns.json"

cat "$RESULTS/dns.txt"
log "wrote $RESULTS/dns.txt and $RESULTS/dns.json"
