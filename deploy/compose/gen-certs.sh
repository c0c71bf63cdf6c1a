#!/usr/bin/env bash
# deploy/compose/gen-certs.sh: makes what the compose demo mounts into its nodes, under
# deploy/compose/certs/ (git-ignored):
#
#   certs/ca/ca.crt, certs/ca/ca.key     the demo cluster's CA ("demo"); the key never leaves here
#   certs/ca.crt                         a copy of the CA certificate, mounted into every node
#   certs/edge-{wnam,weu,seas}.crt/.key  one certificate per node, for the mesh's mutual TLS,
#                                        naming the node's region (from configs/NODE.toml)
#   certs/geo.mmdb                       the demo GeoIP database, built from geo.csv
#
# Usage: deploy/compose/gen-certs.sh [--force]
# The switchyard binary is $SWITCHYARD, else target/release/switchyard in the repository
# (build it with `cargo build --release`), else `switchyard` on PATH.
# Without --force, an existing CA is reused (node certificates are reissued from it); with
# --force, everything is made anew.
#
# The nodes run as uid 10001 in their containers and must read their keys: run as root, the
# keys are given to uid 10001 (mode 0600); run as another user, they are made readable by
# everyone (0644), which is acceptable only for this throwaway demo on one machine.
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd -- "$HERE/../.." && pwd)
OUT=$HERE/certs
NODES=(edge-wnam edge-weu edge-seas)
CLUSTER=demo
NODE_UID=10001

force=0
case "${1:-}" in
    "") ;;
    --force) force=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "gen-certs.sh: unknown argument: $1 (try --help)" >&2
        exit 2
        ;;
esac

if [[ -n ${SWITCHYARD:-} ]]; then
    SY=$SWITCHYARD
elif [[ -x $ROOT/target/release/switchyard ]]; then
    SY=$ROOT/target/release/switchyard
elif command -v switchyard >/dev/null 2>&1; then
    SY=$(command -v switchyard)
else
    echo "gen-certs.sh: no switchyard binary: build it with 'cargo build --release' or set SWITCHYARD=/path/to/switchyard" >&2
    exit 1
fi

if ((force)); then
    rm -rf -- "$OUT"
fi
mkdir -p -- "$OUT"
umask 077

if [[ -f $OUT/ca/ca.crt && -f $OUT/ca/ca.key ]]; then
    echo "reusing the demo CA in $OUT/ca (--force makes a new one)"
else
    rm -rf -- "$OUT/ca"
    "$SY" ca init --out "$OUT/ca" --cluster "$CLUSTER"
fi
cp -- "$OUT/ca/ca.crt" "$OUT/ca.crt"

for node in "${NODES[@]}"; do
    # The region the node's config gives it: peers drop its claims about any other region.
    region=$(sed -n 's/^region = "\([A-Z]*\)"$/\1/p' "$HERE/configs/$node.toml" | head -n 1)
    if [[ -z $region ]]; then
        echo "gen-certs.sh: no region = \"...\" in $HERE/configs/$node.toml" >&2
        exit 1
    fi
    rm -f -- "$OUT/$node.crt" "$OUT/$node.key"
    "$SY" cert issue --ca "$OUT/ca" --node "$node" --region "$region" --out "$OUT"
done

"$SY" geoip build --from "$HERE/geo.csv" --out "$OUT/geo.mmdb"

# What the containers read: certificates and the database by anyone, keys by uid 10001.
chmod 0755 -- "$OUT"
chmod 0644 -- "$OUT/ca.crt" "$OUT/geo.mmdb"
for node in "${NODES[@]}"; do
    chmod 0644 -- "$OUT/$node.crt"
    if [[ $(id -u) == 0 ]]; then
        chown "$NODE_UID:$NODE_UID" -- "$OUT/$node.key"
        chmod 0600 -- "$OUT/$node.key"
    else
        chmod 0644 -- "$OUT/$node.key"
    fi
done
chmod 0700 -- "$OUT/ca"
if [[ $(id -u) != 0 ]]; then
    echo "note: the node keys are readable by everyone (0644) so that uid 10001 in the containers can read them; demo only"
fi
echo "done: $OUT (next: docker compose -f deploy/compose/compose.yaml up -d --build)"
