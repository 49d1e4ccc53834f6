#!/usr/bin/env bash
# Runs schemathesis (PyPI) against a live server: every operation of /api/openapi.json is fed
# generated valid and invalid input, as a signed-in workspace owner with a personal API token,
# and every answer must conform to the document (documented status, content type, schema)
# and never be a 5xx. Settings and the reasoned exceptions: tests/schemathesis/schemathesis.toml.
# Usage: scripts/api-conformance.sh sqlite|postgres
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${1:-sqlite}
root=$PWD

# shellcheck source=scripts/test-server.sh
source scripts/test-server.sh
test_server_environment schemathesis "$backend"

email="ada@example.com"
password="correct horse battery staple"
(cd "$data" && "$root/target/debug/conclave" user create --email "$email" --password "$password" \
  --name "Ada Lovelace" --owner >/dev/null)

"$root/target/debug/conclave" serve >"$data/server.log" 2>&1 &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  test_server_drop_database
  rm -rf "$data"
}
trap cleanup EXIT

base="http://127.0.0.1:$port"
for _ in $(seq 1 200); do
  curl -fsS "$base/readyz" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat "$data/server.log" >&2; exit 1; }
  sleep 0.1
done

# Sign in, then make the personal API token the run authenticates with.
jar="$data/cookies"
curl -fsS -c "$jar" -b "$jar" "$base/healthz" >/dev/null
curl -fsS -c "$jar" -b "$jar" -H 'content-type: application/json' \
  -d "{\"email\":\"$email\",\"password\":\"$password\"}" "$base/api/v1/auth/login" >/dev/null
csrf=$(awk '$6 == "conclave_csrf" { print $7 }' "$jar")
token=$(curl -fsS -c "$jar" -b "$jar" -H "X-CSRF-Token: $csrf" -H 'content-type: application/json' \
  -d '{"name":"schemathesis","scopes":["read","write"]}' "$base/api/v1/me/tokens" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')

export CONCLAVE_API_TOKEN="$token"
status=0
# Extra options (e.g. `--report ndjson`) come from SCHEMATHESIS_ARGS.
# shellcheck disable=SC2086
schemathesis --config-file tests/schemathesis/schemathesis.toml run "$base/api/openapi.json" \
  --url "$base" ${SCHEMATHESIS_ARGS:-} || status=$?
if grep -q "panicked" "$data/server.log"; then
  echo "api-conformance: the server panicked:" >&2
  grep -A5 "panicked" "$data/server.log" >&2
  status=1
fi
if [ "$status" != 0 ]; then
  echo "api-conformance: schemathesis found problems ($backend); the server's log:" >&2
  grep -E "ERROR|panicked" "$data/server.log" | cut -c1-400 | tail -20 >&2
fi
exit "$status"
