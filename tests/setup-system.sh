#!/usr/bin/env bash
# The system parts the test suite runs against, set up once: PostgreSQL at 127.0.0.1:5432 (user postgres,
# trust auth), Prometheus with promtool, Alertmanager, systemd-nspawn with debootstrap, Chromium, shellcheck.
#
# As root with apt (a fresh Debian 12 machine, CI): installs what is missing from Debian's packages and starts
# PostgreSQL. Otherwise: names each missing part once with the command that installs it, and exits 0 (the
# tests that need it skip and say why; under CI=true they fail instead).
# `make test` and `.ci/run` both call this script; running it again when all is there does nothing.
set -uo pipefail

PATH="$PATH:/usr/sbin:/sbin"
missing_pkgs=()
missing_what=()

need() {   # need COMMAND PACKAGE WHAT
  if ! command -v "$1" >/dev/null 2>&1; then
    missing_pkgs+=("$2")
    missing_what+=("$3 ($1)")
  fi
}

need prometheus prometheus "Prometheus, for the observability tests"
need promtool prometheus "promtool, for the alert rule tests"
need prometheus-alertmanager prometheus-alertmanager "Alertmanager, for the alert delivery test"
need systemd-nspawn systemd-container "systemd-nspawn, for the service test"
need debootstrap debootstrap "debootstrap, for the service test's Debian 12 root"
need shellcheck shellcheck "shellcheck, for the install script test"
[ -x /usr/bin/chromium ] || { missing_pkgs+=(chromium); missing_what+=("Chromium, for the review page tests (/usr/bin/chromium)"); }
# playwright's own node (the browser tests' driver) links libatomic.so.1, which a bare Debian 12 lacks and
# chromium installed without recommends does not bring
ldconfig -p 2>/dev/null | grep -q 'libatomic\.so\.1' \
  || { missing_pkgs+=(libatomic1); missing_what+=("libatomic1, for playwright's driver (the browser tests)"); }
have_pg_server() { ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; }
have_pg_server || { missing_pkgs+=(postgresql); missing_what+=("PostgreSQL server, for the store tests"); }

can_install=false
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  can_install=true
fi

if [ ${#missing_pkgs[@]} -gt 0 ]; then
  # shellcheck disable=SC2207
  unique=($(printf '%s\n' "${missing_pkgs[@]}" | sort -u))
  if $can_install; then
    echo "setup-system: installing ${unique[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${unique[@]}" >/dev/null \
      || { echo "setup-system: apt-get install ${unique[*]} failed"; exit 1; }
  else
    echo "setup-system: missing (the tests that need them skip; under CI=true they fail):"
    printf '  - %s\n' "${missing_what[@]}"
    echo "  install them with: sudo apt-get install ${unique[*]}"
  fi
fi

# PostgreSQL: a running cluster answering at 127.0.0.1:5432 with trust auth for user postgres.
pg_trusts() { psql -h 127.0.0.1 -p 5432 -U postgres -w -Atc 'select 1' >/dev/null 2>&1; }
if have_pg_server && ! { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null && pg_trusts; }; then
  if $can_install; then
    versions=$(ls /etc/postgresql 2>/dev/null || true)
    if [ -z "$versions" ]; then
      version=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf "%f\n" | sort -n | tail -1)
      pg_createcluster "$version" main >/dev/null && versions=$version
    fi
    for v in $versions; do
      hba=/etc/postgresql/$v/main/pg_hba.conf
      # the suite connects as postgres over TCP without a password (127.0.0.1 only)
      grep -qE '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$hba" \
        || sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
      if pg_ctlcluster "$v" main status >/dev/null 2>&1; then
        pg_ctlcluster --skip-systemctl-redirect "$v" main reload || pg_ctlcluster "$v" main reload || true
      else
        pg_ctlcluster --skip-systemctl-redirect "$v" main start || pg_ctlcluster "$v" main start || true
      fi
    done
    for _ in $(seq 30); do pg_isready -h 127.0.0.1 -p 5432 -q && pg_trusts && break; sleep 1; done
    pg_trusts || echo "setup-system: PostgreSQL does not answer at 127.0.0.1:5432 with trust auth for postgres"
  else
    echo "setup-system: PostgreSQL does not answer at 127.0.0.1:5432 with trust auth for user postgres:"
    echo "  start it (sudo pg_ctlcluster \$(ls /etc/postgresql) main start) and add to its pg_hba.conf:"
    echo "  host all all 127.0.0.1/32 trust"
  fi
fi
exit 0
