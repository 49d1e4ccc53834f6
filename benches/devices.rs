//! Device benchmark (`make bench`): telemetry ingest from 1,000 simulated devices and 15,000
//! idle device connections, against a release `conclave serve` on SQLite pinned to CPU 1, the
//! simulator (`conclave::devices::simulator`, the protocol crate the firmware speaks) pinned
//! to CPU 0.
//!
//! - Ingest: 1,000 devices send a batch of `READINGS` readings (over `METRICS` metrics) every
//!   second, over postcard frames; the rate is the readings the server acknowledged (stored,
//!   rolled up, rules checked) per second over a measured window. Baseline (the limit): a
//!   plain batched insert loop of the same rows into a SQLite file with the same schema,
//!   pragmas and index, one transaction per batch, in this process.
//! - Idle: RSS growth of the server per connected device with 15,000 devices connected
//!   and greeted (idle: their first batch is an hour away), against the realtime memory
//!   target.
//!
//! `BENCH_QUICK=1` shortens every phase for a try-out.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    GENERATOR_CPU, SERVER_CPU, ServerWithUser, cpu_model, cpu_seconds, pin_self, refuse_if_busy,
    report, resident_kib, write_into_benchmarks_md,
};
use conclave::devices::simulator::{self, Options, Stats};
use diesel::connection::SimpleConnection as _;
use diesel::prelude::*;
use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;

const EMAIL: &str = "bench@example.com";
const PASSWORD: &str = "correct horse battery staple";
const INGEST_DEVICES: usize = 1_000;
const IDLE_DEVICES: usize = 15_000;
const READINGS: usize = 100;
const METRICS: usize = 10;
const TARGET_READINGS_PER_SEC: f64 = 50_000.0;
/// The realtime issue's memory target per idle connection.
const TARGET_KIB_PER_CONNECTION: f64 = 16.0;

fn main() {
    refuse_if_busy();
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    raise_open_files();
    conclave::crypto::install_tls_provider();
    pin_self(GENERATOR_CPU);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(quick));
}

/// 15,000 client sockets need more than the default 1,024 open files: raise the soft limit
/// to the hard one (20,000 here; the server gets the same through `prlimit`).
fn raise_open_files() {
    let raised = std::process::Command::new("sh")
        .args([
            "-c",
            &format!(
                "prlimit --pid {} --nofile=$(ulimit -Hn):$(ulimit -Hn)",
                std::process::id()
            ),
        ])
        .status();
    if !raised.is_ok_and(|s| s.success()) {
        eprintln!("could not raise this process's open-file limit (prlimit)");
    }
}

async fn run(quick: bool) {
    let idle_devices = if quick { 2_000 } else { IDLE_DEVICES };
    let (warmup, window) = if quick {
        (Duration::from_secs(3), Duration::from_secs(5))
    } else {
        (Duration::from_secs(5), Duration::from_secs(20))
    };
    let server = ServerWithUser::start_on(
        EMAIL,
        PASSWORD,
        &[
            ("CONCLAVE__DEVICES__TELEMETRY_BATCHES_PER_SECOND", "100"),
            ("CONCLAVE__DEVICES__CLAIMS_PER_MINUTE_PER_IP", "10000000"),
            (
                "CONCLAVE__REALTIME__HANDSHAKES_PER_IP_PER_MINUTE",
                "1000000",
            ),
        ],
        Some(SERVER_CPU),
    );
    let token = common::sign_in_for_token(&server.base, EMAIL, PASSWORD).await;
    let http = reqwest::Client::new();
    let tenants: serde_json::Value = http
        .get(format!("{}/api/v1/tenants", server.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("tenants")
        .json()
        .await
        .expect("json");
    let tenant = tenants["tenants"][0]["id"].as_i64().expect("a workspace");

    eprintln!("provisioning {idle_devices} devices");
    let started = Instant::now();
    let tokens = provision(&http, &server.base, &token, tenant, idle_devices).await;
    let provisioning = started.elapsed();
    eprintln!(
        "provisioned {} devices in {:.1} s",
        tokens.len(),
        provisioning.as_secs_f64()
    );

    // Ingest.
    eprintln!("ingest: {INGEST_DEVICES} devices × {READINGS} readings/s");
    let stop = CancellationToken::new();
    let stats = Arc::new(Stats::default());
    let fleet = tokio::spawn(simulator::run(
        Options {
            url: server.base.clone(),
            count: INGEST_DEVICES,
            tokens: tokens[..INGEST_DEVICES].to_vec(),
            binary: true,
            interval: Some(Duration::from_secs(1)),
            readings: READINGS,
            metrics: METRICS,
            ..Options::default()
        },
        stop.clone(),
        stats.clone(),
    ));
    tokio::time::sleep(warmup).await;
    let (acked_before, cpu_before, at_before) = (
        Stats::get(&stats.readings_acked),
        cpu_seconds(server.pid()),
        Instant::now(),
    );
    tokio::time::sleep(window).await;
    let elapsed = at_before.elapsed().as_secs_f64();
    let ingested = (Stats::get(&stats.readings_acked) - acked_before) as f64 / elapsed;
    let server_cpu = (cpu_seconds(server.pid()) - cpu_before) / elapsed;
    let offered = (INGEST_DEVICES * READINGS) as f64;
    let refused = Stats::get(&stats.refused);
    stop.cancel();
    let _ = fleet.await;
    eprintln!("ingested {ingested:.0} readings/s ({server_cpu:.2} cores)");

    eprintln!("baseline: plain batched SQLite inserts");
    let baseline = tokio::task::spawn_blocking(move || baseline_inserts(window))
        .await
        .expect("baseline");
    eprintln!("baseline {baseline:.0} readings/s");

    // Idle connections.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = resident_kib(server.pid());
    eprintln!("idle: connecting {idle_devices} devices");
    let stop = CancellationToken::new();
    let stats = Arc::new(Stats::default());
    let idle_started = Instant::now();
    let fleet = tokio::spawn(simulator::run(
        Options {
            url: server.base.clone(),
            count: idle_devices,
            tokens: tokens.clone(),
            binary: true,
            interval: Some(Duration::from_secs(3_600)),
            readings: 1,
            metrics: 1,
            ..Options::default()
        },
        stop.clone(),
        stats.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(300);
    while Stats::get(&stats.greeted) < idle_devices as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let connect_time = idle_started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let connected = Stats::get(&stats.connected);
    let after = resident_kib(server.pid());
    let per =
        |after: u64, before: u64| after.saturating_sub(before) as f64 / connected.max(1) as f64;
    let per_connection = per(after.total, before.total);
    let (anon_per_connection, mapped_per_connection) = (
        per(after.private, before.private),
        per(after.mapped, before.mapped),
    );
    stop.cancel();
    let _ = fleet.await;
    eprintln!(
        "{connected} idle devices: {per_connection:.1} KiB each ({anon_per_connection:.1} private, \
         {mapped_per_connection:.1} mapped; {:.1} s to connect)",
        connect_time.as_secs_f64()
    );

    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    let section = format!(
        "<!-- devices:begin -->\n### Devices: telemetry ingest and idle connections\n\n\
         Measured by `make bench` (`benches/devices.rs`), release build, SQLite, server pinned to CPU {SERVER_CPU}, \
         the simulator (`conclave::devices::simulator`, postcard frames) pinned to CPU {GENERATOR_CPU}, {}. \
         Ingest: {INGEST_DEVICES} devices each send one batch of {READINGS} readings over {METRICS} metrics per second \
         ({offered:.0} readings/s offered) for {:.0} s after {:.0} s of warm-up; counted are the readings the server \
         acknowledged (stored in one transaction per batch, folded into the hourly rollups, rules checked). \
         Baseline (the limit): the same rows inserted by a plain loop into a SQLite file with the same table, index \
         and pragmas (WAL, synchronous=NORMAL), one multi-row INSERT transaction per batch of {READINGS}, in the \
         benchmark process. Idle: RSS growth of the server with every device connected and greeted (no telemetry \
         yet: idle), divided by the devices.\n\n\
         | measure | value | baseline | ratio | target | verdict |\n|---|---|---|---|---|---|\n\
         | telemetry ingest, sustained | {ingested:.0} readings/s | {baseline:.0} readings/s (plain batched inserts) | {:.2} | ≥ {TARGET_READINGS_PER_SEC:.0} /s | {} |\n\
         | server CPU during ingest | {server_cpu:.2} cores | | | | |\n\
         | RSS per idle device connection | {per_connection:.1} KiB | | | ≤ {TARGET_KIB_PER_CONNECTION:.0} KiB (realtime target) | {} |\n\n\
         Devices provisioned through the API (claim code, then claim): {} in {:.1} s. Idle devices connected: {connected} \
         in {:.1} s. Frames refused during ingest: {refused}.\n<!-- devices:end -->",
        cpu_model(),
        window.as_secs_f64(),
        warmup.as_secs_f64(),
        ingested / baseline,
        verdict(ingested >= TARGET_READINGS_PER_SEC),
        verdict(per_connection <= TARGET_KIB_PER_CONNECTION && connected as usize == idle_devices),
        tokens.len(),
        provisioning.as_secs_f64(),
        connect_time.as_secs_f64(),
    );
    if quick {
        eprintln!("{section}\n(BENCH_QUICK: docs/benchmarks.md left alone)");
    } else {
        write_into_benchmarks_md("devices", &section);
        report::record(
            "devices",
            &[
                report::Row::new(
                    "devices: telemetry ingest, sustained",
                    format!("{ingested:.0} readings/s"),
                    format!("{baseline:.0} readings/s (plain batched SQLite inserts)"),
                )
                .ratio(ingested, baseline)
                .target(
                    format!("≥ {TARGET_READINGS_PER_SEC:.0} /s"),
                    ingested >= TARGET_READINGS_PER_SEC,
                ),
                report::Row::new(
                    "devices: RSS per idle device connection",
                    format!("{per_connection:.1} KiB"),
                    "",
                )
                .target(
                    format!("≤ {TARGET_KIB_PER_CONNECTION:.0} KiB"),
                    per_connection <= TARGET_KIB_PER_CONNECTION,
                ),
            ],
        );
    }
}

/// Claim codes and claims for `count` devices, 32 at a time; their tokens.
async fn provision(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    tenant: i64,
    count: usize,
) -> Vec<String> {
    futures_util::stream::iter(0..count)
        .map(|n| {
            let (http, base, token) = (http.clone(), base.to_owned(), token.to_owned());
            async move {
                let claim: serde_json::Value = http
                    .post(format!("{base}/api/v1/tenants/{tenant}/devices/claims"))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({ "name": format!("bench-{n:05}"), "kind": "simulator" }))
                    .send()
                    .await
                    .expect("claim code")
                    .json()
                    .await
                    .expect("json");
                let code = claim["code"].as_str().expect("a code").to_owned();
                let device: serde_json::Value = http
                    .post(format!("{base}/api/v1/devices/claim"))
                    .json(&serde_json::json!({ "code": code }))
                    .send()
                    .await
                    .expect("claim")
                    .json()
                    .await
                    .expect("json");
                device["token"].as_str().expect("a token").to_owned()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await
}

/// The limit: the same rows, batched the same way, into plain SQLite. Readings per second.
fn baseline_inserts(window: Duration) -> f64 {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("baseline.db");
    let mut conn =
        SqliteConnection::establish(path.to_str().expect("path")).expect("baseline database");
    conn.batch_execute(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;
         CREATE TABLE devices (id INTEGER PRIMARY KEY, last_seq BIGINT NOT NULL);
         CREATE TABLE telemetry (id INTEGER PRIMARY KEY AUTOINCREMENT, device_id BIGINT NOT NULL,
             metric TEXT NOT NULL, at TIMESTAMP NOT NULL, value DOUBLE NOT NULL, seq BIGINT NOT NULL);
         CREATE INDEX telemetry_device_metric_at ON telemetry (device_id, metric, at);",
    )
    .expect("schema");
    let placeholders = vec!["(?, ?, ?, ?, ?)"; READINGS].join(", ");
    let sql =
        format!("INSERT INTO telemetry (device_id, metric, at, value, seq) VALUES {placeholders}");
    let metrics: Vec<String> = (0..METRICS).map(|m| format!("m{m}")).collect();
    let started = Instant::now();
    let mut rows = 0u64;
    let mut seq = 0i64;
    while started.elapsed() < window {
        seq += 1;
        for device in 0..INGEST_DEVICES as i64 {
            let at = chrono::Utc::now().naive_utc();
            conn.transaction::<_, diesel::result::Error, _>(|tx| {
                use diesel::sql_types::{BigInt, Double, Text, Timestamp};
                let mut query = diesel::sql_query(&sql).into_boxed();
                for i in 0..READINGS {
                    query = query
                        .bind::<BigInt, _>(device)
                        .bind::<Text, _>(metrics[i % METRICS].clone())
                        .bind::<Timestamp, _>(at)
                        .bind::<Double, _>(i as f64 + seq as f64 / 10.0)
                        .bind::<BigInt, _>(seq);
                }
                query.execute(tx)?;
                Ok(())
            })
            .expect("insert");
            rows += READINGS as u64;
            if started.elapsed() >= window {
                break;
            }
        }
    }
    rows as f64 / started.elapsed().as_secs_f64()
}
