# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run in a slim Debian with only libpq, CA
# certificates and the PostgreSQL client (pg_dump for `conclave backup`). The server runs as an
# unprivileged user; its data lives in /var/lib/conclave.

FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
# Dependencies first, so source edits do not rebuild them. The I/O-free core, the device
# protocol and logic are path dependencies (the firmware application is not needed).
COPY Cargo.toml Cargo.lock ./
COPY crates/conclave-core crates/conclave-core
COPY firmware/protocol firmware/protocol
COPY firmware/core firmware/core
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs && echo 'fn main() {}' > benches/startup.rs \
 && cargo build --release --locked \
 && rm -rf src benches
COPY src src
COPY benches benches
COPY migrations migrations
COPY templates templates
COPY static static
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq5 ca-certificates curl postgresql-client \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 conclave \
 && useradd --system --uid 10001 --gid conclave --home-dir /var/lib/conclave --shell /usr/sbin/nologin conclave \
 && install -d -o conclave -g conclave -m 0700 /var/lib/conclave
COPY --from=build /src/target/release/conclave /usr/local/bin/conclave
COPY config/conclave.example.toml /etc/conclave/conclave.example.toml

USER conclave:conclave
WORKDIR /var/lib/conclave
VOLUME ["/var/lib/conclave"]
ENV CONCLAVE__DATA_DIR=/var/lib/conclave \
    CONCLAVE__SERVER__LISTEN=0.0.0.0:8080 \
    CONCLAVE__TELEMETRY__LOG_FORMAT=json
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/conclave"]
CMD ["serve"]
