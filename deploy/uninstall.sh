#!/usr/bin/env bash
# Remove the Vigil service that deploy/install.sh installed.
#
#   sudo deploy/uninstall.sh [--purge]
#
# Stops and disables vigil.service, removes /etc/systemd/system/vigil.service and /opt/vigil.
# The configuration (/etc/vigil), the state (/var/lib/vigil: the store, models, the API token), drop-ins
# (/etc/systemd/system/vigil.service.d) and the user stay, so a later install carries on where this one
# stopped. --purge removes those too, and the vigil user and group: everything Vigil stored is lost.
set -euo pipefail

PREFIX=/opt/vigil
CONFIG_DIR=/etc/vigil
STATE_DIR=/var/lib/vigil
UNIT=/etc/systemd/system/vigil.service

say() { printf 'vigil uninstall: %s\n' "$*"; }
die() { printf 'vigil uninstall: error: %s\n' "$*" >&2; exit 1; }

purge=0
while [ $# -gt 0 ]; do
  case "$1" in
    --purge) purge=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[ "$(id -u)" = 0 ] || die "run me as root (sudo $0 $*)"

if [ -d /run/systemd/system ] && systemctl cat vigil.service >/dev/null 2>&1; then
  say "stopping and disabling vigil.service"
  systemctl disable --now --quiet vigil.service || say "could not stop vigil.service cleanly; removing it anyway"
elif [ -e "$UNIT" ]; then
  systemctl disable --quiet vigil.service 2>/dev/null || true
fi
if [ -e "$UNIT" ]; then
  say "removing $UNIT"
  rm -f "$UNIT"
fi
if [ "$purge" = 1 ] && [ -d "$UNIT.d" ]; then
  say "removing the drop-ins $UNIT.d"
  rm -rf "$UNIT.d"
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl reset-failed vigil.service 2>/dev/null || true
fi
if [ -d "$PREFIX" ]; then
  say "removing $PREFIX"
  rm -rf "$PREFIX"
fi

if [ "$purge" = 0 ]; then
  kept=()
  for path in "$CONFIG_DIR" "$STATE_DIR" "$UNIT.d"; do [ -e "$path" ] && kept+=("$path"); done
  getent passwd vigil >/dev/null && kept+=("user vigil")
  if [ ${#kept[@]} -gt 0 ]; then
    say "kept: ${kept[*]} (--purge removes them)"
  fi
  say "done"
  exit 0
fi

for path in "$CONFIG_DIR" "$STATE_DIR"; do
  if [ -e "$path" ]; then
    say "removing $path"
    rm -rf "$path"
  fi
done
# systemd may have moved a StateDirectory of a DynamicUser= unit here; harmless when absent.
rm -rf /var/lib/private/vigil
if getent passwd vigil >/dev/null; then
  say "removing user vigil"
  userdel vigil
fi
if getent group vigil >/dev/null; then
  say "removing group vigil"
  groupdel vigil
fi
say "done (purged)"
