#!/usr/bin/env bash
# Mesh benchmark: builds mesh-bench (release) and runs it for 5 and 50 in-process nodes on the
# loopback, prints both tables side by side and a summary against the targets, and writes the
# JSON lines to tests/bench/results/mesh.json.
#
#   tests/bench/mesh.sh
#
# Environment (all optional):
#   NODES="5 50"        node counts, in order (the last one is checked against the targets)
#   FLIPS=20            health flips per run
#   IDLE_SECS=10        idle traffic window
#   RTT_SECS=10         steady RTT updates after it (every node moves every RTT once a
#                       second): signatures made and verified per node, and CPU (0: skip)
#   PROFILE=lan         SWIM timings profile (lan|wan)
#   DEADLINE_SECS=120   bound on convergence, initial replication and each flip
#   RUN_TIMEOUT=900     hard bound on one run, in seconds
#   MESH_BENCH_NETNS=1  run each benchmark in a private network namespace (unshare -rn) when
#                       possible, so the loopback carries only its traffic and the bytes on
#                       the wire (IP + UDP + QUIC: headers, ACKs, keep-alives) can be measured
#   MESH_BENCH_STRICT=0 1: exit 2 when a target is missed
#
# Exit status: 0 when every run completed, 1 when one failed (no convergence, a flip that
# never arrived, a timeout), 2 with MESH_BENCH_STRICT=1 and a missed target.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

NODES="${NODES:-5 50}"
FLIPS="${FLIPS:-20}"
IDLE_SECS="${IDLE_SECS:-10}"
RTT_SECS="${RTT_SECS:-10}"
PROFILE="${PROFILE:-lan}"
DEADLINE_SECS="${DEADLINE_SECS:-120}"
RUN_TIMEOUT="${RUN_TIMEOUT:-900}"
MESH_BENCH_NETNS="${MESH_BENCH_NETNS:-1}"
MESH_BENCH_STRICT="${MESH_BENCH_STRICT:-0}"

# Targets at the largest node count.
TARGET_FLIP_P99_MS=250
TARGET_IDLE_KBIT=10

results="$root/tests/bench/results"
out_json="$results/mesh.json"
mkdir -p "$results"

echo "== building mesh-bench (release)" >&2
cargo build --release -p switchyard-tests --bin mesh-bench >&2
bin="${CARGO_TARGET_DIR:-$root/target}/release/mesh-bench"
[[ -x "$bin" ]] || { echo "mesh.sh: $bin not found after the build" >&2; exit 1; }

# Each node is one UDP socket plus a few tasks; raise the soft fd limit to the hard one anyway.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

netns=0
if [[ "$MESH_BENCH_NETNS" == 1 ]] && command -v unshare >/dev/null && command -v ip >/dev/null \
    && unshare -rn sh -c 'ip link set lo up' 2>/dev/null; then
    netns=1
else
    echo "mesh.sh: no private network namespace (unshare -rn); wire bytes will not be measured" >&2
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# jget KEY JSON: the raw value of KEY in a flat JSON object ("" when absent).
jget() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" <<<"$2"; }
# JSON string of arbitrary text.
jstr() { printf '"%s"' "$(printf '%s' "$1" | tr -d '\r\n' | sed 's/\\/\\\\/g; s/"/\\"/g')"; }
fmt() { # fmt VALUE DECIMALS: "-" for null or empty
    if [[ -z "$1" || "$1" == null ]]; then printf -- '-'; else printf "%.${2}f" "$1"; fi
}
kbit() { [[ -z "$1" || "$1" == null ]] && { printf -- '-'; return; }; awk -v b="$1" 'BEGIN { printf "%.2f", b * 8 / 1000 }'; }

failed=0
declare -a ran=()
: >"$tmp/mesh.json"
for n in $NODES; do
    args=(--nodes "$n" --flips "$FLIPS" --idle-secs "$IDLE_SECS" --profile "$PROFILE"
        --deadline-secs "$DEADLINE_SECS" --rtt-secs "$RTT_SECS")
    echo "== mesh-bench --nodes $n" >&2
    if [[ "$netns" == 1 ]]; then
        timeout "$RUN_TIMEOUT" unshare -rn sh -c 'ip link set lo up && exec "$@"' mesh-bench \
            "$bin" "${args[@]}" --lo-exclusive >"$tmp/$n.out" 2>"$tmp/$n.err" &
    else
        timeout "$RUN_TIMEOUT" "$bin" "${args[@]}" >"$tmp/$n.out" 2>"$tmp/$n.err" &
    fi
    pid=$!
    # Progress on stderr while it runs; tail ends with the run.
    tail -n +1 -f --pid="$pid" "$tmp/$n.err" >&2 || true
    rc=0
    wait "$pid" || rc=$?
    line="$(grep -m1 '^{' "$tmp/$n.out" || true)"
    if [[ "$rc" != 0 || -z "$line" ]]; then
        failed=1
        why="$(grep 'FAILED' "$tmp/$n.err" | tail -n1 || true)"
        [[ -n "$why" ]] || why="exit status $rc$([[ "$rc" == 124 ]] && echo " (timed out after ${RUN_TIMEOUT}s)")"
        echo "mesh.sh: the run with $n nodes failed: $why" >&2
        line="{\"nodes\":$n,\"failed\":true,\"error\":$(jstr "$why"),\"unix_ms\":$(date +%s%3N)}"
        echo "  mesh-bench: $n nodes FAILED: $why" >"$tmp/$n.table"
    else
        grep -v '^{' "$tmp/$n.out" >"$tmp/$n.table"
    fi
    echo "$line" >>"$tmp/mesh.json"
    echo "$line" >"$tmp/$n.json"
    ran+=("$n")
done
cp "$tmp/mesh.json" "$out_json"

echo
echo "== tables"
if [[ "${#ran[@]}" -ge 2 ]]; then
    files=()
    for n in "${ran[@]}"; do files+=("$tmp/$n.table"); done
    # One column per run; long values wrap inside their column.
    pr -m -t -w "$((100 * ${#ran[@]}))" "${files[@]}" | expand
else
    cat "$tmp/${ran[0]}.table"
fi

echo
echo "== summary (targets apply at the largest node count)"
header="$(printf '%-44s' metric)"
for n in "${ran[@]}"; do header+="$(printf '%14s' "$n nodes")"; done
header+="   target"
echo "$header"
summary_row() { # summary_row LABEL KEY DECIMALS TARGET [kbit]
    local label="$1" key="$2" dec="$3" target="$4" conv="${5:-}" out v
    out="$(printf '%-44s' "$label")"
    for n in "${ran[@]}"; do
        v="$(jget "$key" "$(cat "$tmp/$n.json")")"
        if [[ "$conv" == kbit ]]; then v="$(kbit "$v")"; else v="$(fmt "$v" "$dec")"; fi
        out+="$(printf '%14s' "$v")"
    done
    echo "$out   $target"
}
summary_row "membership convergence, all nodes (ms)" convergence_ms 0 ""
summary_row "membership convergence, median node (ms)" convergence_p50_ms 0 ""
summary_row "flip -> all others, p50 (ms)" flip_p50_ms 1 ""
summary_row "flip -> all others, p99 (ms)" flip_p99_ms 1 "< $TARGET_FLIP_P99_MS"
summary_row "flip -> all others, max (ms)" flip_max_ms 1 ""
summary_row "idle payload per node, mean (kbit/s)" idle_kbit_per_sec_mean 2 "< $TARGET_IDLE_KBIT (+ QUIC keep-alives)"
summary_row "idle payload per node, max (kbit/s)" idle_kbit_per_sec_max 2 "< $TARGET_IDLE_KBIT (+ QUIC keep-alives)"
summary_row "idle on the wire per node, mean (kbit/s)" idle_wire_bytes_per_sec_mean 2 "(all of it: IP/UDP/QUIC, ACKs, keep-alives)" kbit
summary_row "idle packets per node, mean (/s)" idle_wire_packets_per_sec_mean 1 ""
summary_row "process CPU while idle (% of a core)" idle_cpu_percent 1 ""
summary_row "signatures verified per node while idle (/s)" idle_sigs_verified_per_node_sec 2 ""
summary_row "signatures made per node, RTT updates (/s)" rtt_sigs_made_per_node_sec 2 ""
summary_row "signatures verified per node, RTT updates (/s)" rtt_sigs_verified_per_node_sec 2 ""
summary_row "one signature made (us of CPU)" sign_us 0 ""
summary_row "one signature verified (us of CPU)" verify_us 0 ""
summary_row "signing per node, RTT updates (% of a core)" rtt_signing_percent_per_node 2 ""
summary_row "process CPU, RTT updates (% of a core)" rtt_cpu_percent 1 ""
summary_row "UDP receive drops at startup" udp_rcv_drops_startup 0 ""
summary_row "nodes declared down and rejoined" rejoined_total 0 ""

last="${ran[${#ran[@]} - 1]}"
lj="$(cat "$tmp/$last.json")"
missed=0
verdict() { # verdict LABEL VALUE LIMIT
    if [[ -z "$2" || "$2" == null ]]; then
        echo "  $1: no figure (the run failed)"; missed=1
    elif awk -v v="$2" -v l="$3" 'BEGIN { exit !(v < l) }'; then
        echo "  $1: $(fmt "$2" 2) < $3  PASS"
    else
        echo "  $1: $(fmt "$2" 2) >= $3  MISS"; missed=1
    fi
}
echo
echo "== targets at $last nodes"
verdict "flip p99 (ms)" "$(jget flip_p99_ms "$lj")" "$TARGET_FLIP_P99_MS"
verdict "idle payload per node, max (kbit/s, keep-alives excluded)" "$(jget idle_kbit_per_sec_max "$lj")" "$TARGET_IDLE_KBIT"
echo
echo "JSON lines written to ${out_json#"$root"/}"

if [[ "$failed" == 1 ]]; then
    exit 1
fi
if [[ "$missed" == 1 && "$MESH_BENCH_STRICT" == 1 ]]; then
    exit 2
fi
exit 0
