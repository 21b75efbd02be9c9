#!/usr/bin/env bash
# Runs the whole test suite. Sets up what the tests need on a fresh Debian machine first:
# C build tools, Redis and PostgreSQL (installed with apt-get if missing, started if stopped,
# PostgreSQL opened to trust auth on 127.0.0.1 for the `postgres` user if it refuses us),
# Chromium and promtool (Debian packages `chromium`, `prometheus`), a Python venv with the
# official Segment SDK. Then: format check, clippy, all tests.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

log() { printf '\n== %s\n' "$*" >&2; }

apt_install() {
  log "installing $*"
  if [ -z "${SLUICE_APT_UPDATED:-}" ]; then
    apt-get update -qq
    export SLUICE_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- C build tools (SQLite and jemalloc are compiled from source) --------------------------------
command -v cc >/dev/null && command -v make >/dev/null || apt_install build-essential

# --- Redis -------------------------------------------------------------------------------------
command -v redis-server >/dev/null || apt_install redis-server
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  log "starting Redis on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null || { echo "Redis did not start" >&2; exit 1; }

# --- PostgreSQL --------------------------------------------------------------------------------
if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
  apt_install postgresql
fi
PGVER=$(ls /etc/postgresql | sort -V | tail -1)
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  log "starting PostgreSQL $PGVER"
  pg_ctlcluster --skip-systemctl-redirect "$PGVER" main start || true
  for _ in $(seq 100); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.1; done
fi
pg_isready -h 127.0.0.1 -p 5432 -q || { echo "PostgreSQL did not start" >&2; exit 1; }
if ! psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
  log "allowing trust auth for postgres on 127.0.0.1 (test machine)"
  HBA=/etc/postgresql/$PGVER/main/pg_hba.conf
  sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$HBA"
  pg_ctlcluster --skip-systemctl-redirect "$PGVER" main reload
  sleep 1
  psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null
fi

# --- Headless Chromium (dashboard browser test) and promtool (/metrics format check) ------------
[ -x /usr/bin/chromium ] || apt_install chromium
[ -x /usr/bin/promtool ] || apt_install prometheus

# --- Python venv with the official Segment SDK ---------------------------------------------------
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import segment.analytics' 2>/dev/null; then
  log "creating .venv with the Segment SDK"
  python3 -m venv .venv 2>/dev/null || { apt_install python3-venv; python3 -m venv .venv; }
  .venv/bin/pip install -q -r tests/segment/requirements.txt
fi
export SLUICE_TEST_PYTHON="$ROOT/.venv/bin/python"

# --- Checks and tests --------------------------------------------------------------------------
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
log "cargo test"
TEST_LOG=$(mktemp)
trap 'rm -f "$TEST_LOG"' EXIT
set +e
cargo test --workspace --all-features -- --test-threads "${SLUICE_TEST_THREADS:-4}" 2>&1 | tee "$TEST_LOG"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary (cargo prints one per binary, the last often being an
# empty doc-test run).
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "total: %d passed, %d failed\n", passed, failed }' "$TEST_LOG"
exit "$status"
