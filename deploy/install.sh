#!/usr/bin/env bash
# Install (or upgrade) Vigil as a systemd service on Debian 12 or a similar systemd distribution.
#
#   sudo deploy/install.sh [--source DIR] [--wheels DIR] [--no-start]
#
# * user and group `vigil` (system accounts, home /var/lib/vigil, no login shell)
# * /opt/vigil/venv: a virtualenv with Vigil from --source (default: the repository holding this script);
#   torch from PyTorch's CPU index like `make install` (TORCH_INDEX= takes PyPI's CUDA build), or, with
#   --wheels DIR, everything offline from a wheelhouse (Vigil's dependencies and its build requirements
#   setuptools and wheel: `pip wheel -w DIR . setuptools wheel` on a machine with the same Python)
# * /etc/vigil/config.toml from deploy/vigil.toml, only when there is none (an existing one is kept)
# * /etc/systemd/system/vigil.service from deploy/systemd/vigil.service, enabled and (re)started; the
#   start returns once the daemon reported READY=1. --no-start installs without enabling or starting.
#
# Running it again upgrades Vigil in place and restarts the service; the config and the state stay.
set -euo pipefail
umask 022          # the venv must be readable by the vigil user whatever the caller's umask

PREFIX=/opt/vigil
VENV=$PREFIX/venv
CONFIG_DIR=/etc/vigil
CONFIG=$CONFIG_DIR/config.toml
STATE_DIR=/var/lib/vigil
UNIT=/etc/systemd/system/vigil.service
TORCH_INDEX=${TORCH_INDEX-https://download.pytorch.org/whl/cpu}

say() { printf 'vigil install: %s\n' "$*"; }
die() { printf 'vigil install: error: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source_dir=$(dirname "$here")
wheels=""
start=1
while [ $# -gt 0 ]; do
  case "$1" in
    --source) [ $# -ge 2 ] || die "--source needs a directory"; source_dir=$2; shift 2 ;;
    --source=*) source_dir=${1#*=}; shift ;;
    --wheels) [ $# -ge 2 ] || die "--wheels needs a directory"; wheels=$2; shift 2 ;;
    --wheels=*) wheels=${1#*=}; shift ;;
    --no-start) start=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

[ "$(id -u)" = 0 ] || die "run me as root (sudo $0 $*)"
[ -f "$source_dir/pyproject.toml" ] || die "--source $source_dir: no pyproject.toml there (not a Vigil source tree)"
source_dir=$(cd "$source_dir" && pwd)
if [ -n "$wheels" ]; then
  [ -d "$wheels" ] || die "--wheels $wheels: no such directory"
  wheels=$(cd "$wheels" && pwd)
fi
for f in "$here/systemd/vigil.service" "$here/vigil.toml"; do
  [ -f "$f" ] || die "$f is missing: run the install.sh of a complete Vigil checkout"
done
command -v systemctl >/dev/null || die "systemctl not found: Vigil's service needs systemd"
command -v python3 >/dev/null || die "python3 not found (Debian: apt-get install python3 python3-venv)"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "Vigil needs Python >= 3.11, found $(python3 --version 2>&1)"

# --- the account ---------------------------------------------------------------------------------------------
if ! getent group vigil >/dev/null; then
  say "creating system group vigil"
  groupadd --system vigil
fi
if ! getent passwd vigil >/dev/null; then
  say "creating system user vigil"
  useradd --system --gid vigil --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin \
    --comment "Vigil anomaly detection" vigil
fi

# --- the virtualenv ------------------------------------------------------------------------------------------
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  command -v apt-get >/dev/null || die "python3 cannot create virtualenvs: install your distribution's python3-venv"
  say "installing python3-venv"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv >/dev/null; then
    apt-get update -q >/dev/null || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv >/dev/null \
      || die "apt-get install python3-venv failed"
  fi
fi
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
then
  say "upgrading the virtualenv $VENV"
else
  say "creating the virtualenv $VENV"
  rm -rf "$VENV"
  install -d -m 0755 "$PREFIX"
  python3 -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input)

# Build from a copy so the source tree gets no root-owned build/ or *.egg-info (and no .venv is copied).
build=$(mktemp -d /tmp/vigil-install.XXXXXX)
trap 'rm -rf "$build"' EXIT
tar -C "$source_dir" --exclude=./.git --exclude=./.venv --exclude=./state --exclude=./build --exclude=./dist \
  --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache --exclude=.mypy_cache --exclude=.ruff_cache \
  --exclude=.hypothesis -cf - . | tar -C "$build" -xf -

if [ -n "$wheels" ]; then
  say "installing Vigil from $source_dir, dependencies from $wheels (offline)"
  "${pip[@]}" install --quiet --no-index --find-links "$wheels" --upgrade pip 2>/dev/null || true
  "${pip[@]}" install --quiet --no-index --find-links "$wheels" "$build" \
    || die "pip could not install from the wheelhouse $wheels (are all dependencies, setuptools and wheel in it?)"
else
  torch_version=$(sed -n 's/^ *"torch==\([^"]*\)".*/\1/p' "$source_dir/pyproject.toml" | head -n 1)
  [ -n "$torch_version" ] || die "no torch==VERSION pin in $source_dir/pyproject.toml"
  "${pip[@]}" install --quiet --upgrade pip || say "could not upgrade pip; going on with $("${pip[@]}" --version)"
  say "installing torch $torch_version from ${TORCH_INDEX:-PyPI (the default, CUDA build)}"
  # A local copy (pip's configured find-links) first, as `make install` does; else the index.
  "${pip[@]}" install --quiet --no-index "torch==$torch_version" 2>/dev/null \
    || "${pip[@]}" install --quiet "torch==$torch_version" \
         ${TORCH_INDEX:+--index-url "$TORCH_INDEX" --extra-index-url https://pypi.org/simple} \
    || die "pip could not install torch $torch_version"
  say "installing Vigil from $source_dir"
  "${pip[@]}" install --quiet "$build" || die "pip could not install Vigil from $source_dir"
fi
install -m 0644 "$source_dir/README.md" "$PREFIX/README.md" 2>/dev/null || true
"$VENV/bin/vigil" --version >/dev/null || die "$VENV/bin/vigil does not run"

# --- the configuration ---------------------------------------------------------------------------------------
install -d -m 0755 "$CONFIG_DIR"
if [ -e "$CONFIG" ]; then
  say "keeping the existing $CONFIG"
else
  say "installing $CONFIG (the demo detector; edit it, then: systemctl reload vigil)"
  install -m 0640 -o root -g vigil "$here/vigil.toml" "$CONFIG"
fi
runuser -u vigil -- "$VENV/bin/vigil" config check --config "$CONFIG" >/dev/null \
  || die "$CONFIG does not pass 'vigil config check' as user vigil (readable by group vigil?); the service is left as it was"

# --- the unit ------------------------------------------------------------------------------------------------
say "installing $UNIT"
install -m 0644 "$here/systemd/vigil.service" "$UNIT"
if [ ! -d /run/systemd/system ]; then
  say "systemd is not running here (a chroot or image build?): enable it later with 'systemctl enable --now vigil'"
  exit 0
fi
systemctl daemon-reload
if [ "$start" = 0 ]; then
  say "installed, not started (--no-start): systemctl enable --now vigil"
  exit 0
fi
systemctl enable --quiet vigil
say "starting vigil (returns once the daemon is ready; the first start backfills the demo's week)"
if ! systemctl restart vigil; then
  systemctl status vigil --no-pager --lines=0 || true
  journalctl -u vigil -n 30 --no-pager -o cat || true
  die "vigil did not start; see above, and: journalctl -u vigil"
fi
systemctl status vigil --no-pager --lines=0 || true
cat <<EOF

Vigil is running.
  status:   systemctl status vigil;  sudo -u vigil $VENV/bin/vigil status --config $CONFIG
  logs:     journalctl -u vigil -o cat | jq
  API:      http://127.0.0.1:8321/  (token: $STATE_DIR/api-token)   metrics: http://127.0.0.1:8321/metrics
  config:   $CONFIG, then: systemctl reload vigil
EOF
