#!/usr/bin/env bash
# Installs what `make test` needs when it is missing, so a fresh machine needs no manual steps:
# PostgreSQL server binaries, Chromium, Node.js + npm, nginx, Caddy, nftables, promtool and amtool, the playwright-core package, cargo-fuzz, and the
# rustfmt/clippy components. Uses Debian packages and the npm registry only.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_packages+=(postgresql)
[ -x /usr/bin/chromium ] || apt_packages+=(chromium)
command -v node >/dev/null 2>&1 || apt_packages+=(nodejs)
command -v npm >/dev/null 2>&1 || apt_packages+=(npm)
command -v curl >/dev/null 2>&1 || apt_packages+=(curl)
command -v python3 >/dev/null 2>&1 || apt_packages+=(python3)
/usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1 || apt_packages+=(python3-aiosmtpd)
command -v systemd-analyze >/dev/null 2>&1 || apt_packages+=(systemd)
# `size` reports what the firmware puts into flash (scripts/firmware-size.sh).
command -v size >/dev/null 2>&1 || apt_packages+=(binutils)
# The real front proxies and firewall the edge policy renders for (`nginx -t`,
# `caddy validate`, `nft -c`), and openssl for the test certificate nginx needs.
[ -x /usr/sbin/nginx ] || apt_packages+=(nginx)
command -v caddy >/dev/null 2>&1 || apt_packages+=(caddy)
[ -x /usr/sbin/nft ] || apt_packages+=(nftables)
command -v openssl >/dev/null 2>&1 || apt_packages+=(openssl)
# promtool and amtool check the alert rules, their unit tests and the routing example
# (config/prometheus); the packages' services are not started.
command -v promtool >/dev/null 2>&1 || apt_packages+=(prometheus)
command -v amtool >/dev/null 2>&1 || apt_packages+=(prometheus-alertmanager)
# docker-compose (v1, Python) validates config/compose.yaml without a Docker engine.
command -v docker-compose >/dev/null 2>&1 || apt_packages+=(docker-compose)

if [ ${#apt_packages[@]} -gt 0 ]; then
  echo "ensure-tools: installing ${apt_packages[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
fi

# The firmware's targets (ESP32-C3, ESP32-C6): `make test` builds the firmware for both.
for target in riscv32imc-unknown-none-elf riscv32imac-unknown-none-elf; do
  if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    rustup target add "$target"
  fi
done

for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
    rustup component add "$component"
  fi
done

if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "ensure-tools: installing playwright-core"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi

# Real peers of the assistant tests: the official OpenAI SDK as a client of /v1, and mockllm as
# a third-party provider.
# kubernetes-validate checks config/kubernetes against the Kubernetes schemas it bundles.
if ! python3 -c 'import kubernetes_validate' >/dev/null 2>&1; then
  echo "ensure-tools: installing kubernetes-validate"
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate
fi

if ! python3 -c 'import openai, mockllm' >/dev/null 2>&1; then
  echo "ensure-tools: installing the openai and mockllm Python packages"
  python3 -m pip install --quiet --disable-pip-version-check openai mockllm
fi

# schemathesis feeds every operation of the OpenAPI document generated input
# (scripts/api-conformance.sh); pinned, as its checks change between versions.
SCHEMATHESIS_VERSION=4.32.5
if [ "$(schemathesis --version 2>/dev/null | awk '{print $NF}')" != "$SCHEMATHESIS_VERSION" ]; then
  echo "ensure-tools: installing schemathesis $SCHEMATHESIS_VERSION"
  python3 -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

# cargo-fuzz runs the fuzz targets (`make fuzz`); pinned, built once from crates.io (~1 min).
CARGO_FUZZ_VERSION=0.13.2
if [ "$(cargo fuzz --version 2>/dev/null | awk '{print $NF}')" != "$CARGO_FUZZ_VERSION" ]; then
  echo "ensure-tools: installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install --quiet --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
