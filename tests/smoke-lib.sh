# shellcheck shell=bash disable=SC2034,SC2153,SC2004
# (STEP is read by the caller; the others are set by it; ALL_PIDS is its associative array.)
# tests/smoke-lib.sh: helpers the testnet smoke tests share (sourced, not run). They expect
# STATE (the testnet's state directory), TESTNET, SMOKE_NAME, PASSED, STEP, LAST, ALL_PIDS and
# DOWN_CHECKED as globals of the caller.
#
# Status JSON (`switchyard status --json`) is read with bash alone: flattened to one line, then
# matched with patterns that rely only on the document's shape (member objects hold no nested
# objects; an origin's observers are objects keyed by node id).

step() {
    STEP=$*
    printf '\n==> %s\n' "$*"
}

pass() {
    PASSED=$((PASSED + 1))
    printf '    ok: %s\n' "$*"
}

fail() {
    printf '    FAILED: %s\n' "$*" >&2
    exit 1
}

# Whether a pid is a live process (a zombie counts as gone).
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

switchyard_bin() {
    local dir=target/release
    [[ -s $STATE/bin-dir ]] && dir=$(<"$STATE/bin-dir")
    printf '%s/switchyard\n' "$dir"
}

# observer JSON ORIGIN NODE: whether NODE sees ORIGIN healthy (true/false), as the document
# reports in ORIGIN's "observers"; nothing when NODE is not among them. Every object with a
# name starts with "name", so cutting before each "name": keeps ORIGIN's fields together.
observer() {
    local chunk re="\"$3\":\\{[^}]*\"healthy\":(true|false)"
    while IFS= read -r chunk; do
        if [[ $chunk == '"name":"'"$2"'",'* && $chunk =~ $re ]]; then
            printf '%s\n' "${BASH_REMATCH[1]}"
            return 0
        fi
    done <<<"${1//'"name":"'/$'\n''"name":"'}"
    return 0
}

# within SECONDS WHAT CHECK...: polls CHECK until it succeeds; after SECONDS, fails saying
# WHAT did not happen, with what CHECK last saw (LAST).
within() {
    local secs=$1 what=$2 deadline=$((SECONDS + $1 + 1))
    shift 2
    until "$@"; do
        ((SECONDS < deadline)) || fail "$what within ${secs}s (last seen: ${LAST:-nothing})"
        sleep 0.2
    done
}

# members JSON: one "ID STATE GENERATION RTT_MS" line per member (RTT_MS - when none).
members() {
    local re='"members":\[([^]]*)\]' list obj id state gen rtt
    [[ $1 =~ $re ]] || return 0
    list=${BASH_REMATCH[1]}
    while IFS= read -r obj; do
        id='' state='' gen='' rtt=''
        re='"id":"([^"]*)"' && [[ $obj =~ $re ]] && id=${BASH_REMATCH[1]}
        re='"state":"([^"]*)"' && [[ $obj =~ $re ]] && state=${BASH_REMATCH[1]}
        re='"generation":([0-9]+)' && [[ $obj =~ $re ]] && gen=${BASH_REMATCH[1]}
        re='"rtt_ms":([0-9.]+)' && [[ $obj =~ $re ]] && rtt=${BASH_REMATCH[1]}
        if [[ -n $id ]]; then printf '%s %s %s %s\n' "$id" "${state:-?}" "${gen:-0}" "${rtt:--}"; fi
    done <<<"${list//\},\{/$'\n'}"
    return 0
}

# record_pids DIR...: remembers every pid in DIR/*.pid (in ALL_PIDS), to check at the end that
# none survived.
record_pids() {
    local d f pid
    for d in "$@"; do
        for f in "$d"/*.pid; do
            [[ -f $f ]] || continue
            pid=$(<"$f")
            [[ $pid =~ ^[0-9]+$ ]] && ALL_PIDS[$pid]=$f
        done
    done
    return 0
}

# check_pids_gone NOTE DIR...: no recorded process runs and no pid file remains in DIR...;
# NOTE is added to the first message.
check_pids_gone() {
    local note=$1 pid left=() d f
    shift
    for pid in "${!ALL_PIDS[@]}"; do
        is_alive "$pid" && left+=("$pid (${ALL_PIDS[$pid]})")
    done
    ((${#left[@]} == 0)) || fail "processes from the pid files still run: ${left[*]}"
    pass "none of the ${#ALL_PIDS[@]} processes from the pid files$note runs"
    for d in "$@"; do
        for f in "$d"/*.pid; do
            [[ -e $f ]] && fail "pid file $f remains"
        done
    done
    pass "no pid files remain"
}

# The EXIT trap. After a failure that came before the test's own `down` check (DOWN_CHECKED),
# takes the testnet down and reports what is left without failing again; then names the
# failed step. The caller sets SMOKE_NAME and defines record_run and check_all_gone.
on_exit() {
    local rc=$?
    trap - EXIT
    if ((DOWN_CHECKED == 0)); then
        printf '\n==> cleanup after failure: %s down\n' "$TESTNET"
        record_run
        "$TESTNET" down || true
        (check_all_gone) || true
    fi
    if ((rc != 0)); then
        printf '\n%s: %d passed, 1 failed (step: %s)\n' "$SMOKE_NAME" "$PASSED" "$STEP" >&2
    fi
    exit "$rc"
}
