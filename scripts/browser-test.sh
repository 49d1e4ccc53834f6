#!/usr/bin/env bash
# Starts the debug build of conclave (the same profile the tests use) on a free port with a
# fresh data directory, then runs the Chromium tests in tests/browser against it.
# Usage: scripts/browser-test.sh sqlite|postgres
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${1:-sqlite}

# shellcheck source=scripts/test-server.sh
source scripts/test-server.sh
test_server_environment browser "$backend"

# A person to sign in as, created the way an operator would.
export CONCLAVE_TEST_EMAIL="ada@example.com"
export CONCLAVE_TEST_PASSWORD="correct horse battery staple"
export CONCLAVE_RESET_EMAIL="katherine@example.com"
for who in "$CONCLAVE_TEST_EMAIL:Ada Lovelace" "$CONCLAVE_RESET_EMAIL:Katherine Johnson"; do
  (cd "$data" && "$OLDPWD/target/debug/conclave" user create --email "${who%%:*}" \
    --password "$CONCLAVE_TEST_PASSWORD" --name "${who#*:}" >/dev/null)
done
# Grace, a second owner, is the rooms test's own (no other test turns on her 2FA or resets her).
export CONCLAVE_ROOMS_EMAIL="grace@example.com"
(cd "$data" && "$OLDPWD/target/debug/conclave" user create --email "$CONCLAVE_ROOMS_EMAIL" \
  --password "$CONCLAVE_TEST_PASSWORD" --name "Grace Hopper" --owner >/dev/null)

# Hedy and Alan, operators, are the live-room test's own.
export CONCLAVE_LIVE_EMAILS="hedy@example.com alan@example.com"
for who in "hedy@example.com:Hedy Lamarr" "alan@example.com:Alan Turing"; do
  (cd "$data" && "$OLDPWD/target/debug/conclave" user create --email "${who%%:*}" \
    --password "$CONCLAVE_TEST_PASSWORD" --name "${who#*:}" --role operator >/dev/null)
done

# Bill, an owner, is the billing test's own (he upgrades the workspace with the fake provider).
export CONCLAVE_BILLING_EMAIL="bill@example.com"
(cd "$data" && "$OLDPWD/target/debug/conclave" user create --email "$CONCLAVE_BILLING_EMAIL" \
  --password "$CONCLAVE_TEST_PASSWORD" --name "Bill Gosper" --owner >/dev/null)

# Edsger, a staff owner, is the admin test's own.
export CONCLAVE_ADMIN_EMAIL="edsger@example.com"
(cd "$data" && "$OLDPWD/target/debug/conclave" user create --email "$CONCLAVE_ADMIN_EMAIL" \
  --password "$CONCLAVE_TEST_PASSWORD" --name "Edsger Dijkstra" --owner >/dev/null)

# Xavier, a staff owner whose display name is itself a payload, is the XSS test's own.
export CONCLAVE_XSS_EMAIL="xavier@example.com"
(cd "$data" && "$OLDPWD/target/debug/conclave" user create --email "$CONCLAVE_XSS_EMAIL" \
  --password "$CONCLAVE_TEST_PASSWORD" --name 'Xavier <img src=x id=xss-name onerror="window.__pwned=1">' \
  --owner >/dev/null)

# Lise, an operator, is the devices test's own.
export CONCLAVE_DEVICES_EMAIL="lise@example.com"
(cd "$data" && "$OLDPWD/target/debug/conclave" user create --email "$CONCLAVE_DEVICES_EMAIL" \
  --password "$CONCLAVE_TEST_PASSWORD" --name "Lise Meitner" --role operator >/dev/null)

# Mary is the assistant test's own.
export CONCLAVE_ASSISTANT_EMAIL="mary@example.com"
(cd "$data" && "$OLDPWD/target/debug/conclave" user create --email "$CONCLAVE_ASSISTANT_EMAIL" \
  --password "$CONCLAVE_TEST_PASSWORD" --name "Mary Somerville" --role operator >/dev/null)

# A real OpenID provider (and a fake GitHub) to sign in with; it runs until its stdin closes.
coproc IDP { exec node tests/browser/oidc-provider.mjs --port 0 2>"$data/idp.log"; }
read -r idp_line <&"${IDP[0]}"
issuer=$(sed -E 's/.*"issuer":"([^"]+)".*/\1/' <<<"$idp_line")
export CONCLAVE__OIDC__PROVIDERS__SSO__KIND=oidc
export CONCLAVE__OIDC__PROVIDERS__SSO__DISPLAY_NAME="Test SSO"
export CONCLAVE__OIDC__PROVIDERS__SSO__ISSUER_URL="$issuer"
export CONCLAVE__OIDC__PROVIDERS__SSO__CLIENT_ID=conclave
export CONCLAVE__OIDC__PROVIDERS__SSO__CLIENT_SECRET=conclave-secret

# A fake LLM provider behind the assistant's two models.
node tests/browser/fake-llm.mjs >"$data/llm.json" 2>"$data/llm.log" &
llm=$!
for _ in $(seq 1 100); do [ -s "$data/llm.json" ] && break; sleep 0.05; done
llm_url=$(sed -E 's/.*"url":"([^"]+)".*/\1/' "$data/llm.json")
cat >"$data/conclave.toml" <<TOML
[assistant]
guests_enabled = true

[assistant.providers.fake]
kind = "openai"
base_url = "$llm_url"

[assistant.models.quick]
label = "Quick"
tier = "free"
routes = [{ provider = "fake", model = "fake-quick" }]

[assistant.models.smart]
label = "Smart"
tier = "pro"
routes = [{ provider = "fake", model = "fake-smart" }]
TOML
export CONCLAVE_CONFIG="$data/conclave.toml"

target/debug/conclave serve >"$data/server.log" 2>&1 &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  kill "$IDP_PID" 2>/dev/null || true
  kill "$llm" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  test_server_drop_database
  rm -rf "$data"
}
trap cleanup EXIT

ready=no
for _ in $(seq 1 200); do
  if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then ready=yes; break; fi
  kill -0 "$server" 2>/dev/null || break
  sleep 0.1
done
if [ "$ready" != yes ]; then
  echo "browser-test: conclave did not become ready on port $port; its log:" >&2
  cat "$data/server.log" >&2
  exit 1
fi

export CONCLAVE_URL="http://127.0.0.1:$port"
export CONCLAVE_BACKEND="$backend"
node --test --test-concurrency=1 --test-reporter=spec "${BROWSER_TESTS:-tests/browser/}"
