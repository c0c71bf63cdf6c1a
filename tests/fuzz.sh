#!/usr/bin/env bash
# Runs every fuzz target (fuzz/, see fuzz/README.md) for SECONDS_PER_TARGET seconds (default
# 16; CI runs the default, `tests/fuzz.sh 600` is a longer run), one after the other, from the
# seed corpus in fuzz/corpus/<target>/, and prints per target what AFL++ did: executions,
# corpus size (seeds plus what it found), crashes and hangs. Exits 1 if any target crashed,
# naming the inputs and how to replay them; 2 if a tool is missing (it installs nothing).
#
# Nothing on the host is changed: instead of rewriting /proc/sys/kernel/core_pattern and the
# CPU governor as afl-fuzz would like, the run tells afl-fuzz to do without them
# (AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES, AFL_SKIP_CPUFREQ), and not to pin itself to a core
# (AFL_NO_AFFINITY: the machine is shared). Crashes are still caught: a panic aborts the
# target, which afl-fuzz sees as a signal.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-16}
if ! [[ $secs =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
    echo "usage: tests/fuzz.sh [SECONDS_PER_TARGET]" >&2
    exit 2
fi
targets=(mesh swim machine proxy_protocol dns http_probe geoip geoip_csv config)

if ! command -v cargo-afl >/dev/null; then
    echo "fuzz: cargo-afl is missing: cargo install cargo-afl --locked" \
        "(it builds AFL++ too; needs make and a C compiler)" >&2
    exit 2
fi
# `afl-fuzz -h` exits 1 even when all is well: its message tells the cases apart.
if [[ $(cargo afl fuzz -h 2>&1 || true) == *"runtime was not built"* ]]; then
    echo "fuzz: cargo-afl has no AFL++ built for this Rust toolchain: cargo afl config --build" >&2
    exit 2
fi

echo "== building the fuzz targets (cargo afl build --release, in fuzz/)"
# The fuzz crate is a workspace of its own, with its own target directory: its flags
# (coverage instrumentation) differ from the workspace's, so sharing would rebuild both.
export CARGO_TARGET_DIR="$PWD/fuzz/target"
# Without --cfg fuzzing: dependencies that read it (quinn-proto) would run otherwise than
# in the node, and the point is to fuzz what runs.
# Not --locked: fuzz/Cargo.lock follows the workspace's dependencies, and a dependency the
# workspace adds is resolved here at its first build.
(cd fuzz && AFL_NO_CFG_FUZZING=1 cargo afl build --release --bins)

export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1
export AFL_NO_UI=1 AFL_QUIET=1
out=fuzz/out
rm -rf "$out"
mkdir -p "$out"
stat_of() { awk -F' *: *' -v k="$2" '$1 == k { print $2 }' "$1"; }

failed=0
rows=()
for t in "${targets[@]}"; do
    echo "== fuzzing $t for ${secs}s"
    # -t: an input still running after 1 s is a hang (the slowest seed takes milliseconds).
    # The log is kept in fuzz/out/<target>.log; only its end is shown on failure.
    if ! cargo afl fuzz -V "$secs" -t 1000 -i "fuzz/corpus/$t" -o "$out/$t" \
        "fuzz/target/release/$t" >"$out/$t.log" 2>&1; then
        tail -n 30 "$out/$t.log" >&2
        echo "fuzz: afl-fuzz failed on $t (log: $out/$t.log)" >&2
        failed=1
        rows+=("$(printf '%-16s %12s %8s %8s %8s' "$t" "-" "-" "-" "-")")
        continue
    fi
    stats="$out/$t/default/fuzzer_stats"
    execs=$(stat_of "$stats" execs_done)
    corpus=$(stat_of "$stats" corpus_count)
    found=$(stat_of "$stats" corpus_found)
    crashes=$(stat_of "$stats" saved_crashes)
    hangs=$(stat_of "$stats" saved_hangs)
    rows+=("$(printf '%-16s %12s %8s %8s %8s %8s' "$t" "$execs" "$corpus" "$found" "$crashes" "$hangs")")
    if [ "${crashes:-0}" != 0 ]; then
        failed=1
        for f in "$out/$t/default/crashes"/id:*; do
            echo "fuzz: $t crashed on $f; replay: fuzz/target/release/$t < '$f'" >&2
        done
    fi
    if [ "${hangs:-0}" != 0 ]; then
        echo "fuzz: $t hung (over 1 s) on $hangs input(s) in $out/$t/default/hangs/;" \
            "replay one with: time fuzz/target/release/$t < FILE" >&2
    fi
done

echo
echo "fuzz: ${secs}s per target"
printf '%-16s %12s %8s %8s %8s %8s\n' target execs corpus found crashes hangs
printf '%s\n' "${rows[@]}"
if [ "$failed" != 0 ]; then
    echo "fuzz: FAILED: a target crashed or afl-fuzz could not run (see above)" >&2
    exit 1
fi
echo "fuzz: no crashes"
