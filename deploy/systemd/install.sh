#!/bin/bash
# Installs gpuscope as a systemd service: a virtual environment in /opt/gpuscope/venv, the unit,
# and /etc/default/gpuscope for flags (kept if it exists); then enables and starts it.
#   deploy/systemd/install.sh [SOURCE]      SOURCE: what pip installs (default: this checkout)
#   deploy/systemd/install.sh --uninstall   stops and removes all of it but /etc/default/gpuscope
# Run as root. ROOT (default /) installs into another tree; SYSTEMCTL (default systemctl) and PIP
# (default the venv's pip) can be replaced, as the tests do.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="${ROOT:-/}"
venv="$root/opt/gpuscope/venv"
unit="$root/etc/systemd/system/gpuscope.service"
defaults="$root/etc/default/gpuscope"
systemctl="${SYSTEMCTL:-systemctl}"

if [ "${1:-}" = "--uninstall" ]; then
    $systemctl disable --now gpuscope.service 2>/dev/null || true
    rm -f "$unit"
    rm -rf "$root/opt/gpuscope"
    $systemctl daemon-reload
    echo "gpuscope removed ($defaults kept)"
    exit 0
fi

source="${1:-$here/../..}"
mkdir -p "$root/opt/gpuscope" "$(dirname "$unit")" "$(dirname "$defaults")"
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv"  # an upgrade reuses its environment
${PIP:-"$venv/bin/pip"} install --quiet --upgrade "$source"
install -m 0644 "$here/gpuscope.service" "$unit"
[ -e "$defaults" ] || install -m 0644 "$here/gpuscope.default" "$defaults"
$systemctl daemon-reload
$systemctl enable --now gpuscope.service
echo "gpuscope installed: $unit, flags in $defaults"
