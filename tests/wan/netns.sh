#!/usr/bin/env bash
# tests/wan/netns.sh: the WAN testbed as a script, for testnet.sh's --wan mode. One network
# namespace per region (sy-wnam, sy-weu, sy-seas by default) joined through wan-emu, the
# userspace WAN emulator (this kernel has no tc netem). Region i of the list gets
# 10.250.i.0/24 on its namespace's loopback; other regions are reached through the TUN
# device sy-wan0, with the pair's latency. See tests/wan/README.md. Needs root and iproute2.
#
# It removes only what it created: the namespaces it made are listed in $WAN_STATE/regions,
# and `up` refuses a namespace name that already exists.
set -Eeuo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)
STATE=${WAN_STATE:-$ROOT/.testnet/wan}
# Namespace names: <prefix><region in lower case>. Must start with sy-.
PREFIX=${WAN_NETNS_PREFIX:-sy-}
# wan-emu exits by itself (and removes the namespaces) after this long.
LIFETIME=${WAN_LIFETIME:-12h}
# Seconds to wait for wan-emu to come up, and for processes to exit on down.
READY_TIMEOUT=${WAN_READY_TIMEOUT:-15}
STOP_TIMEOUT=${WAN_STOP_TIMEOUT:-10}
DEFAULT_REGIONS=(WNAM WEU SEAS)

REGIONS_FILE=$STATE/regions
PID_FILE=$STATE/wan-emu.pid
CONTROL=$STATE/control.sock
LOG=$STATE/wan-emu.log

say() { printf '%s\n' "$*"; }
warn() { printf 'netns.sh: %s\n' "$*" >&2; }
die() {
    warn "$*"
    exit 1
}

usage() {
    cat <<'EOF'
usage: tests/wan/netns.sh COMMAND

  up [REGION...]       create a namespace per region (default: WNAM WEU SEAS; region i gets
                       10.250.i.0/24) and start wan-emu between them
  down                 stop wan-emu and every process in the namespaces; delete them
  set A B DUR          round-trip time between regions A and B, e.g. set WNAM WEU 120ms
  cut A B              drop everything between A and B (B may be '*': all other regions)
  heal A B             undo cut
  loss A B PCT         drop each packet between A and B with this probability, e.g. 5%
  show                 the latency matrix and the emulator's counters
  exec REGION CMD...   run CMD inside the region's namespace
  addr REGION [N]      print the region's address N (default 1): 10.250.<i>.N
  netns REGION         print the region's namespace name
  status               exit 0 when up (prints the regions), 3 when not

Environment: WAN_EMU (the wan-emu binary; default target/release/wan-emu, else
target/debug/wan-emu, under CARGO_TARGET_DIR when set), WAN_STATE (default .testnet/wan),
WAN_NETNS_PREFIX (default sy-), WAN_LIFETIME (default 12h), WAN_READY_TIMEOUT (s, default 15),
WAN_STOP_TIMEOUT (s, default 10).
EOF
}

bad_usage() {
    [[ $# -gt 0 ]] && warn "$*"
    usage >&2
    exit 2
}

need_root() {
    [[ $(id -u) == 0 ]] || die "needs root (network namespaces and TUN devices)"
    command -v ip >/dev/null || die "needs ip (iproute2)"
}

wan_emu() {
    if [[ -n ${WAN_EMU:-} ]]; then
        [[ -x $WAN_EMU ]] || die "WAN_EMU=$WAN_EMU is not an executable"
        printf '%s\n' "$WAN_EMU"
        return
    fi
    local target=${CARGO_TARGET_DIR:-$ROOT/target} profile
    for profile in release debug; do
        if [[ -x $target/$profile/wan-emu ]]; then
            printf '%s\n' "$target/$profile/wan-emu"
            return
        fi
    done
    die "no wan-emu under $target: cargo build --release -p switchyard-tests --bin wan-emu (or set WAN_EMU)"
}

netns_exists() { [[ -e /run/netns/$1 ]]; }

# The running wan-emu's pid, if its pid file names a live wan-emu with our control socket.
emu_pid() {
    local pid
    [[ -f $PID_FILE ]] || return 1
    pid=$(<"$PID_FILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF -- "--control $CONTROL" || return 1
    printf '%s\n' "$pid"
}

# Prints the recorded "NAME INDEX NETNS" lines.
recorded() { [[ -f $REGIONS_FILE ]] && cat "$REGIONS_FILE"; }

region_line() { # region_line NAME: its recorded line, or fail
    local want=${1^^} name index netns
    while read -r name index netns; do
        if [[ $name == "$want" ]]; then
            printf '%s %s %s\n' "$name" "$index" "$netns"
            return
        fi
    done < <(recorded)
    die "no region ${1} in the testbed (up: $(recorded | awk '{printf "%s ", $1}'))"
}

ctl() {
    emu_pid >/dev/null || die "the WAN testbed is not up (tests/wan/netns.sh up)"
    "$(wan_emu)" ctl --control "$CONTROL" "$@"
}

# The pids of every process in the namespaces that exist.
ns_pids() {
    local ns
    for ns; do
        if netns_exists "$ns"; then ip netns pids "$ns" 2>/dev/null || true; fi
    done | tr '\n' ' '
}

# Stops every process in the namespaces (SIGTERM, then SIGKILL after STOP_TIMEOUT).
stop_processes() {
    local sig pids deadline
    for sig in TERM KILL; do
        pids=$(ns_pids "$@")
        [[ -z ${pids// /} ]] && return 0
        # shellcheck disable=SC2086 # word splitting intended: one pid per word
        kill -s "$sig" $pids 2>/dev/null || true
        deadline=$((SECONDS + STOP_TIMEOUT + 1))
        while ((SECONDS < deadline)); do
            pids=$(ns_pids "$@")
            [[ -z ${pids// /} ]] && return 0
            sleep 0.1
        done
    done
    warn "processes still in the namespaces: $(ns_pids "$@")"
}

cmd_down() {
    need_root
    local pid deadline names=() name index netns
    while read -r name index netns; do names+=("$netns"); done < <(recorded)
    if pid=$(emu_pid); then
        # wan-emu was started with --owns-netns: on SIGTERM it stops the namespaces'
        # processes and deletes them itself; the rest below only checks and finishes.
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + STOP_TIMEOUT + 5))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            warn "wan-emu $pid did not exit; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    if ((${#names[@]})); then
        stop_processes "${names[@]}"
        for netns in "${names[@]}"; do
            if netns_exists "$netns"; then
                ip netns delete "$netns" || warn "could not delete namespace $netns"
            fi
        done
    fi
    rm -f "$PID_FILE" "$REGIONS_FILE" "$CONTROL"
    say "WAN testbed down${names[*]:+ (removed ${names[*]})}"
}

cmd_up() {
    need_root
    local emu regions=("$@") i name netns args=() pid deadline
    ((${#regions[@]})) || regions=("${DEFAULT_REGIONS[@]}")
    ((${#regions[@]} >= 2 && ${#regions[@]} <= 254)) || die "need 2..254 regions"
    [[ $PREFIX == sy-* ]] || die "WAN_NETNS_PREFIX must start with sy- (is $PREFIX)"
    emu=$(wan_emu)
    if emu_pid >/dev/null; then
        die "the WAN testbed is already up (tests/wan/netns.sh down first)"
    fi
    if [[ -s $REGIONS_FILE ]]; then
        warn "removing what a previous up left behind"
        cmd_down >/dev/null
    fi
    for name in "${regions[@]}"; do
        [[ $name =~ ^[A-Za-z0-9_]{1,16}$ ]] || die "bad region name $name"
        netns=$PREFIX${name,,}
        ! netns_exists "$netns" || die "namespace $netns exists and netns.sh did not create it; remove it (ip netns pids $netns; ip netns delete $netns) or set WAN_NETNS_PREFIX"
    done
    mkdir -p "$STATE"
    : >"$REGIONS_FILE"
    # From here on a failure (or Ctrl-C) removes what was made.
    trap 'warn "up failed; cleaning up"; cmd_down >/dev/null 2>&1 || true' ERR
    trap 'warn "interrupted; cleaning up"; cmd_down >/dev/null 2>&1 || true; exit 130' INT TERM
    i=0
    for name in "${regions[@]}"; do
        i=$((i + 1))
        netns=$PREFIX${name,,}
        ip netns add "$netns"
        printf '%s %s %s\n' "${name^^}" "$i" "$netns" >>"$REGIONS_FILE"
        args+=(--region "${name^^}:$i:$netns")
    done
    : >"$LOG"
    # Its own session, so the testnet's process group signals don't reach it; it exits by
    # itself after LIFETIME and then removes the namespaces (--owns-netns).
    setsid "$emu" run --control "$CONTROL" --lifetime "$LIFETIME" --owns-netns "${args[@]}" \
        </dev/null >>"$LOG" 2>&1 &
    pid=$!
    printf '%s\n' "$pid" >"$PID_FILE"
    deadline=$((SECONDS + READY_TIMEOUT + 1))
    until "$emu" ctl --control "$CONTROL" --timeout 1s show >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            cat "$LOG" >&2
            false # ERR trap: clean up
        fi
        if ((SECONDS >= deadline)); then
            warn "wan-emu not ready within ${READY_TIMEOUT}s"
            cat "$LOG" >&2
            false
        fi
        sleep 0.1
    done
    trap - ERR INT TERM
    say "WAN testbed up (wan-emu pid $pid, control $CONTROL, log $LOG):"
    local index
    while read -r name index netns; do
        say "  $name  namespace $netns  addresses 10.250.$index.0/24"
    done < <(recorded)
    "$emu" ctl --control "$CONTROL" show | sed -n '1,/^link /{/^link /d;p}'
}

cmd_status() {
    local pid name index netns
    if ! pid=$(emu_pid); then
        say "WAN testbed: down"
        exit 3
    fi
    say "WAN testbed: up (wan-emu pid $pid)"
    while read -r name index netns; do
        say "  $name  namespace $netns  addresses 10.250.$index.0/24"
    done < <(recorded)
}

main() {
    (($#)) || bad_usage
    local cmd=$1
    shift
    case $cmd in
    up) cmd_up "$@" ;;
    down) (($# == 0)) || bad_usage "down takes no arguments"; cmd_down ;;
    set) (($# == 3)) || bad_usage "set A B DUR"; ctl set "$@" ;;
    loss) (($# == 3)) || bad_usage "loss A B PCT"; ctl loss "$@" ;;
    cut | heal) (($# == 2)) || bad_usage "$cmd A B"; ctl "$cmd" "$@" ;;
    show) (($# == 0)) || bad_usage "show takes no arguments"; ctl show ;;
    exec)
        (($# >= 2)) || bad_usage "exec REGION CMD..."
        local line
        line=$(region_line "$1")
        shift
        exec ip netns exec "${line##* }" "$@"
        ;;
    addr)
        (($# == 1 || $# == 2)) || bad_usage "addr REGION [N]"
        local line n=${2:-1} index
        if ! [[ $n =~ ^[0-9]+$ ]] || ((n < 1 || n > 254)); then die "N must be 1..254"; fi
        line=$(region_line "$1")
        index=${line#* }
        index=${index%% *}
        say "10.250.$index.$n"
        ;;
    netns) (($# == 1)) || bad_usage "netns REGION"; region_line "$1" | awk '{print $3}' ;;
    status) cmd_status ;;
    help | -h | --help) usage ;;
    *) bad_usage "unknown command $cmd" ;;
    esac
}

main "$@"
