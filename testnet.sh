#!/usr/bin/env bash
# testnet.sh: a Switchyard test network on loopback (or, with `up --wan`, across emulated WAN
# regions). Three nodes, one per region (WNAM, WEU, SEAS), in front of six test origins, two
# per region. Run `./testnet.sh help` for the commands.
#
# This is a wrapper: the testnet is the `testnet` binary of the tests crate
# (tests/src/bin/testnet.rs, laid out by tests/src/topology.rs). `up` builds the release
# binaries first (unless TESTNET_SKIP_BUILD=1); other commands build only when the binary is
# missing. Then it runs from the repository root, with the environment passed through
# (TESTNET_READY_TIMEOUT, TESTNET_MESH_TIMEOUT, TESTNET_STOP_TIMEOUT, RUST_LOG,
# WAN_NETNS_PREFIX, WAN_LIFETIME, WAN_READY_TIMEOUT, WAN_STOP_TIMEOUT).
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"

# Where cargo puts release binaries: what the last `up` recorded, else the target directory.
bin_dir() {
    if [[ -s .testnet/bin-dir ]]; then
        cat .testnet/bin-dir
    else
        printf '%s/release\n' "${CARGO_TARGET_DIR:-target}"
    fi
}

BIN=$(bin_dir)
if [[ ${1:-} == up && ${TESTNET_SKIP_BUILD:-0} != 1 ]] || [[ ! -x $BIN/testnet ]]; then
    if ! command -v cargo >/dev/null 2>&1; then
        echo "testnet.sh: cargo is not on PATH; install Rust (https://rustup.rs)" >&2
        exit 1
    fi
    echo "building: cargo build --release -p switchyard-node -p switchyard-tests --bins"
    cargo build --release -p switchyard-node -p switchyard-tests --bins
    target=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p') || true
    BIN=${target:-${CARGO_TARGET_DIR:-target}}/release
fi
exec "$BIN/testnet" "$@"
