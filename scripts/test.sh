#!/usr/bin/env bash
# The one test command (README "Test"): makes a fresh Debian machine with a Rust toolchain ready,
# then runs every test. Safe to repeat: each step does nothing when its part is already there.
#
#   1. Debian packages the tests use: chromium + chromium-driver (the browser test), docker-compose
#      (validates docker-compose.yml; no engine needed), PostgreSQL and Redis servers if absent.
#   2. tansu, the Kafka-protocol broker the Kafka tests start (cargo install; ~10 minutes once).
#   3. PostgreSQL (127.0.0.1:5432, trust auth, database `test`) and Redis (127.0.0.1:6379) started
#      where they are not running.
#   4. A Python environment (target/pyenv) for the deployment checks: Helm as a library, strict
#      Kubernetes schema validation, pytest.
#   5. cargo test --workspace (unit, property and integration tests), then the deployment checks
#      (deploy/checks: the chart, the compose file, every setting they pass to the binary, and
#      schemathesis against the server's /openapi.json).
#   6. Every cargo-fuzz target for a bounded time (scripts/fuzz.sh, FUZZ_SECONDS each, default 20;
#      cargo-fuzz is installed when missing; the stable toolchain is enough).
#
# Machines that already have all of this can run `cargo test --workspace` alone.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

echo "== system packages"
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v pg_ctlcluster >/dev/null 2>&1 || need+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  as_root apt-get update -qq
  as_root apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "== tansu (Kafka-protocol broker for the Kafka tests)"
if ! command -v tansu >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/tansu" ]; then
  echo "installing: cargo install --locked tansu --features dynostore,libsql (about 10 minutes, once)"
  cargo install --locked tansu --features dynostore,libsql
fi
"$(command -v tansu || echo "$HOME/.cargo/bin/tansu")" --version

echo "== services the tests use"
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "starting PostgreSQL"
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start
  for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432
# The tests connect as postgres to database `test` without a password (trust on loopback).
if ! psql -w -h 127.0.0.1 -U postgres -d test -Atc 'select 1' >/dev/null 2>&1; then
  echo "PostgreSQL: allowing trust on loopback and creating database test"
  conf=$(as_root su postgres -c "psql -Atc 'show hba_file'")
  as_root grep -q '^host all all 127.0.0.1/32 trust' "$conf" ||
    as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$conf"
  as_root su postgres -c "psql -Atc 'select pg_reload_conf()'" >/dev/null
  as_root su postgres -c "createdb test" 2>/dev/null || true
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "starting Redis"
  mkdir -p /tmp/crowdtick-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp/crowdtick-redis --logfile /tmp/crowdtick-redis/redis.log
  for _ in $(seq 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 1; done
fi
redis-cli -h 127.0.0.1 -p 6379 ping

echo "== Python environment for the deployment checks (target/pyenv)"
if [ ! -x target/pyenv/bin/python ]; then
  mkdir -p target
  python3 -m venv target/pyenv
fi
target/pyenv/bin/pip install -q --disable-pip-version-check -r deploy/checks/requirements.txt

echo "== cargo test --workspace"
cargo test --workspace

echo "== deployment checks (deploy/checks)"
# The binary `cargo test` built (in $CARGO_TARGET_DIR when it is set).
CROWDTICK_TEST_BIN="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/crowdtick" target/pyenv/bin/pytest -q deploy/checks

echo "== fuzz targets (scripts/fuzz.sh, ${FUZZ_SECONDS:-20}s each)"
scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
