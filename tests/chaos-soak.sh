#!/usr/bin/env bash
# tests/chaos-soak.sh: the chaos soak of the WAN testbed (issue 14), run from anywhere in the
# repository as root (anyone else gets a skip, exit 0, as the WAN smoke test does).
#
#   tests/chaos-soak.sh [--duration 10m] [--seed N] [--keep]
#
# Brings the testnet up in WAN mode (`./testnet.sh up --wan`, building the release binaries
# unless TESTNET_SKIP_BUILD=1), runs `chaos-soak` (tests/src/bin/chaos-soak.rs: client load
# through every node and app while a seeded schedule of faults runs for --duration, default
# 10m; then the table), and takes the testnet down again, whatever happened (--keep leaves it
# up to look at). Exits with chaos-soak's status: 0 when every target held, 1 when one was
# missed, 2 when the soak could not run. Records are in .testnet/chaos-soak/, the nodes' logs
# in .testnet/. WAN_NETNS_PREFIX names the namespaces (default sy-), as for testnet.sh.
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

usage() {
    echo "usage: tests/chaos-soak.sh [--duration 10m] [--seed N] [--keep]" >&2
    exit 2
}

SOAK_ARGS=()
KEEP=0
while (($#)); do
    case $1 in
        --duration | --seed)
            (($# >= 2)) || usage
            SOAK_ARGS+=("$1" "$2")
            shift 2
            ;;
        --keep)
            KEEP=1
            shift
            ;;
        *) usage ;;
    esac
done

if [[ $(id -u) != 0 ]]; then
    echo "chaos-soak: skipped: needs root (network namespaces and a TUN device; CI runs as root)"
    exit 0
fi

down() {
    if ((KEEP)); then
        echo "chaos-soak: --keep: the testnet stays up (./testnet.sh down when done)"
    else
        ./testnet.sh down >/dev/null 2>&1 || ./testnet.sh down || true
    fi
}

./testnet.sh down >/dev/null
trap down EXIT
UP_LOG=$(mktemp)
./testnet.sh up --wan >"$UP_LOG" 2>&1 || {
    cat "$UP_LOG" >&2
    rm -f "$UP_LOG"
    echo "chaos-soak: ./testnet.sh up --wan failed" >&2
    exit 2
}
rm -f "$UP_LOG"
BIN=$(<.testnet/bin-dir)
rc=0
"$BIN/chaos-soak" "${SOAK_ARGS[@]}" || rc=$?
exit "$rc"
