#!/bin/sh
# Install or upgrade edgemq as a systemd service on Raspberry Pi OS / Debian.
# Safe to run again: it upgrades the package and the unit, and never overwrites
# /etc/edgemq/broker.toml or the data in /var/lib/edgemq.
#
#   sudo deploy/install.sh                # from a checkout of the project
#   sudo deploy/install.sh --source 'edgemq==0.2.0'   # any pip requirement
#
# --prefix DIR installs below DIR instead of / and touches nothing else (no user,
# no systemctl): CI uses it to test this script in a throwaway directory.
set -eu

PREFIX=""
SOURCE=""
PIP_ARGS=""
START=yes
usage() {
    echo "usage: $0 [--prefix DIR] [--source PIP-REQUIREMENT-OR-PATH] [--pip-args ARGS] [--no-start]" >&2
    exit 2
}
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || usage; PREFIX="${2%/}"; shift 2 ;;
        --source) [ $# -ge 2 ] || usage; SOURCE="$2"; shift 2 ;;
        --pip-args) [ $# -ge 2 ] || usage; PIP_ARGS="$2"; shift 2 ;;
        --no-start) START=no; shift ;;
        -h|--help) usage ;;
        *) echo "unknown option: $1" >&2; usage ;;
    esac
done

HERE="$(cd "$(dirname "$0")" && pwd)"
PROJECT="$(dirname "$HERE")"
[ -n "$SOURCE" ] || SOURCE="$PROJECT"
PYTHON="${PYTHON:-python3}"
OPT="$PREFIX/opt/edgemq"
ETC="$PREFIX/etc/edgemq"
UNITS="$PREFIX/etc/systemd/system"
DATA="$PREFIX/var/lib/edgemq"
USER_NAME=edgemq

say() { printf '==> %s\n' "$*"; }

if [ -z "$PREFIX" ] && [ "$(id -u)" -ne 0 ]; then
    echo "run as root (sudo $0), or give --prefix DIR for a trial install" >&2
    exit 1
fi

"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"edgemq needs Python 3.11 or newer; this is {sys.version.split()[0]}")
PY
if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
    if [ -z "$PREFIX" ] && command -v apt-get >/dev/null; then
        say "installing python3-venv"
        apt-get install -y -q python3-venv
    else
        echo "the Python venv module is missing (apt install python3-venv)" >&2
        exit 1
    fi
fi

if [ -z "$PREFIX" ]; then
    if ! getent passwd "$USER_NAME" >/dev/null; then
        say "creating the system user $USER_NAME"
        useradd --system --user-group --no-create-home --home-dir /var/lib/edgemq \
            --shell /usr/sbin/nologin --comment "edgemq MQTT broker" "$USER_NAME"
    fi
else
    say "prefix $PREFIX: no system user, no systemctl"
fi

say "virtual environment $OPT/venv"
mkdir -p "$OPT"
[ -x "$OPT/venv/bin/python" ] || "$PYTHON" -m venv "$OPT/venv"
# shellcheck disable=SC2086  # PIP_ARGS holds several arguments
"$OPT/venv/bin/python" -m pip install --disable-pip-version-check -q --upgrade $PIP_ARGS "$SOURCE"
"$OPT/venv/bin/edgemq-broker" --version
# The guide, where the unit's Documentation= points.
cp "$PROJECT/docs/raspberry-pi.md" "$OPT/raspberry-pi.md.new" && mv "$OPT/raspberry-pi.md.new" "$OPT/raspberry-pi.md"

mkdir -p "$ETC" "$UNITS" "$DATA"
if [ -e "$ETC/broker.toml" ]; then
    say "keeping the existing $ETC/broker.toml"
else
    say "writing $ETC/broker.toml (every key, with its default; edit bind to accept devices)"
    sed -e 's#^data_dir = .*#data_dir = "/var/lib/edgemq"#' \
        "$PROJECT/config/broker.toml" > "$ETC/broker.toml.new"
    chmod 0644 "$ETC/broker.toml.new"
    mv "$ETC/broker.toml.new" "$ETC/broker.toml"
fi

say "installing $UNITS/edgemq.service"
sed -e "s#/opt/edgemq#$OPT#g" -e "s#/etc/edgemq#$ETC#g" "$HERE/edgemq.service" > "$UNITS/edgemq.service.new"
chmod 0644 "$UNITS/edgemq.service.new"
mv "$UNITS/edgemq.service.new" "$UNITS/edgemq.service"

"$OPT/venv/bin/edgemq-broker" --check-config -c "$ETC/broker.toml" --data-dir "$DATA"

if [ -z "$PREFIX" ]; then
    chown "$USER_NAME:$USER_NAME" "$DATA"
    chmod 0750 "$DATA"
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        systemctl enable edgemq.service >/dev/null 2>&1
        if [ "$START" = yes ]; then
            if systemctl is-active --quiet edgemq.service; then
                say "restarting edgemq (upgrade)"
                systemctl restart edgemq.service
            else
                say "starting edgemq"
                systemctl start edgemq.service
            fi
            systemctl --no-pager --lines=5 status edgemq.service || true
        fi
    else
        say "systemd is not running here: start it later with systemctl enable --now edgemq"
    fi
fi
say "done"
