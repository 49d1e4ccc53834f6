# Sourced by the scripts that test a running server (browser-test.sh, api-conformance.sh):
# `test_server_environment NAME BACKEND` makes a fresh data directory ($data), picks a free
# port ($port), points conclave at both through CONCLAVE__* variables and, for postgres, creates
# a throwaway database on TEST_DATABASE_URL ($db); `test_server_drop_database` removes it.

test_server_environment() {
  local name=$1 backend=$2
  data=$(mktemp -d "/tmp/conclave-$name.XXXXXX")
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  export CONCLAVE__DATA_DIR="$data"
  export CONCLAVE__SERVER__LISTEN="127.0.0.1:$port"
  export CONCLAVE__TELEMETRY__LOG_FILTER=warn
  db=""
  if [ "$backend" = postgres ]; then
    : "${TEST_DATABASE_URL:?$name on postgres needs TEST_DATABASE_URL}"
    db="conclave_${name//-/_}_$$"
    psql "$TEST_DATABASE_URL" -qc "CREATE DATABASE $db" >/dev/null
    export CONCLAVE__DATABASE__URL="${TEST_DATABASE_URL%/*}/$db"
  fi
}

test_server_drop_database() {
  if [ -n "${db:-}" ]; then
    psql "$TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || true
  fi
}
