# shellcheck shell=bash disable=SC2034,SC2153
# (STEP is read by the caller; STATE is set by it.)
# tests/smoke-lib.sh: helpers the testnet smoke tests share (sourced, not run). They expect
# STATE (the testnet's state directory), PASSED, STEP and LAST as globals of the caller.
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
