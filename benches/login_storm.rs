//! Login-storm benchmark (issue "Accounts", performance):
//!
//! - logins/s at 2× overload ≥ 0.85 × (argon2id hashes/s of the same parameters, measured in
//!   this run on one thread, × cores);
//! - p99 of `GET /api/v1/me` during that storm ≤ 2× its unloaded p99.
//!
//! The baseline is measured in the same run: the raw single-thread argon2id rate (in this
//! process, before the server starts) and the unloaded `/me` latency (same server, just
//! before the storm). The storm is open-loop: logins are sent at a fixed rate of twice the
//! hashing capacity, whatever the answers, for `STORM_SECS`; the `/me` probe runs beside it.
//! The release server is a child process with its normal settings except the per-IP sign-in
//! limit (every request here comes from 127.0.0.1), pinned to CPU 1 while this process (the
//! load generator, the probe and the baseline) is pinned to CPU 0: unpinned, the generator's
//! own work would be taken from the hashing the figure is about. The server then has one core
//! (it sizes its hashing pool and workers from its affinity), so its capacity is the
//! single-thread rate × 1. Run with `make bench`; results go to docs/benchmarks.md between
//! the `login-storm` markers.

use std::time::{Duration, Instant};

mod common;
use common::{
    GENERATOR_CPU, SERVER_CPU, ServerWithUser, cpu_model, percentile, pin_self, refuse_if_busy,
    report, write_into_benchmarks_md,
};

const EMAIL: &str = "storm@example.com";
const PASSWORD: &str = "correct horse battery staple";
const HASH_SAMPLES: u32 = 40;
const PROBES_UNLOADED: usize = 1_000;
const STORM_SECS: u64 = 15;
const PROBE_PAUSE: Duration = Duration::from_millis(5);
const LOGIN_RATIO_TARGET: f64 = 0.85;
const P99_RATIO_TARGET: f64 = 2.0;
/// Cores the pinned server hashes on.
const SERVER_CORES: usize = 1;

fn main() {
    conclave::crypto::install_tls_provider();
    refuse_if_busy();
    pin_self(GENERATOR_CPU);
    let hashes_per_sec = argon2_rate();
    let capacity = hashes_per_sec * SERVER_CORES as f64;
    eprintln!(
        "argon2id: {hashes_per_sec:.1} hashes/s on one thread; the server's capacity \
         {capacity:.1}/s on {SERVER_CORES} core"
    );

    // Every request here comes from 127.0.0.1: no per-IP sign-in limit.
    let server = ServerWithUser::start_on(
        EMAIL,
        PASSWORD,
        &[("CONCLAVE__ACCOUNTS__LOGIN_ATTEMPTS_PER_IP_PER_MINUTE", "0")],
        Some(SERVER_CPU),
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let result = runtime.block_on(storm(server.base.clone(), capacity));
    let report = report(&result, hashes_per_sec);
    println!("{report}");
    write_into_benchmarks_md("login-storm", &report);
}

/// argon2id verifications per second with the server's parameters, on one thread, in memory
/// kept from one to the next (as the server's hashing threads do): the raw rate of the hash.
fn argon2_rate() -> f64 {
    use argon2::{Algorithm, Argon2, Block, Params, Version};
    use conclave::auth::password::{ITERATIONS, MEMORY_KIB, PARALLELISM};
    let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None).expect("params");
    let mut memory = vec![Block::default(); params.block_count()];
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let salt = b"a salt of sixteen";
    let mut expected = [0u8; 32];
    argon2
        .hash_password_into_with_memory(PASSWORD.as_bytes(), salt, &mut expected, &mut memory)
        .expect("hash");
    let started = Instant::now();
    for _ in 0..HASH_SAMPLES {
        let mut output = [0u8; 32];
        argon2
            .hash_password_into_with_memory(PASSWORD.as_bytes(), salt, &mut output, &mut memory)
            .expect("hash");
        assert_eq!(output, expected, "verifies");
    }
    f64::from(HASH_SAMPLES) / started.elapsed().as_secs_f64()
}

struct StormResult {
    unloaded_ms: Vec<f64>,
    loaded_ms: Vec<f64>,
    offered_per_sec: f64,
    sent: u64,
    succeeded: u64,
    refused: u64,
    other: u64,
    storm_secs: f64,
    refusal_p99_ms: f64,
}

async fn storm(base: String, capacity: f64) -> StormResult {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    wait_ready(&client, &base).await;

    // A session for the probe.
    let login = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&serde_json::json!({ "email": EMAIL, "password": PASSWORD }))
        .send()
        .await
        .expect("login");
    assert_eq!(login.status(), 200, "the probe signs in");
    let cookie = login
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("conclave_session="))
        .and_then(|v| v.split(';').next())
        .expect("session cookie")
        .to_owned();

    // Baseline: the probe on the idle server (after a warm-up).
    let unloaded_ms = Probe::start(&base, &cookie, Until::Samples(PROBES_UNLOADED)).finish();

    // The storm: logins at twice the hashing capacity, open loop, with the probe beside it.
    let offered_per_sec = 2.0 * capacity;
    let interval = Duration::from_secs_f64(1.0 / offered_per_sec);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(STORM_SECS);
    let probe = Probe::start(&base, &cookie, Until::Deadline(deadline));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    // Each login task answers its status and how long it took.
    let mut tasks = Vec::new();
    while Instant::now() < deadline {
        ticker.tick().await;
        let (client, base) = (client.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let status = client
                .post(format!("{base}/api/v1/auth/login"))
                .json(&serde_json::json!({ "email": EMAIL, "password": PASSWORD }))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .ok();
            (status, sent.elapsed().as_secs_f64() * 1_000.0)
        }));
    }
    let mut answers = Vec::with_capacity(tasks.len());
    for task in tasks {
        answers.push(task.await.unwrap_or((None, 0.0)));
    }
    let storm_secs = started.elapsed().as_secs_f64();
    let loaded_ms = probe.finish();
    let count = |wanted: u16| answers.iter().filter(|(s, _)| *s == Some(wanted)).count() as u64;
    let refusal_ms: Vec<f64> = answers
        .iter()
        .filter(|(s, _)| *s == Some(429))
        .map(|(_, ms)| *ms)
        .collect();
    let (succeeded, refused) = (count(200), count(429));
    StormResult {
        unloaded_ms,
        loaded_ms,
        offered_per_sec,
        sent: answers.len() as u64,
        succeeded,
        refused,
        other: answers.len() as u64 - succeeded - refused,
        storm_secs,
        refusal_p99_ms: if refusal_ms.is_empty() {
            0.0
        } else {
            percentile(&refusal_ms, 99.0)
        },
    }
}

enum Until {
    Samples(usize),
    Deadline(Instant),
}

/// Timed `GET /api/v1/me` requests, one at a time, on a thread and connection of their own:
/// what it measures is the server's latency, not how busy the load generator's runtime is.
struct Probe(std::thread::JoinHandle<Vec<f64>>);

impl Probe {
    fn start(base: &str, cookie: &str, until: Until) -> Self {
        let (url, cookie) = (format!("{base}/api/v1/me"), cookie.to_owned());
        Self(std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("probe runtime");
            runtime.block_on(async move {
                let client = reqwest::Client::new();
                let once = || async {
                    let started = Instant::now();
                    let response = client
                        .get(&url)
                        .header(reqwest::header::COOKIE, &cookie)
                        .send()
                        .await
                        .expect("probe");
                    assert_eq!(response.status(), 200);
                    response.bytes().await.expect("body");
                    started.elapsed().as_secs_f64() * 1_000.0
                };
                for _ in 0..100 {
                    once().await;
                }
                let mut samples = Vec::new();
                loop {
                    match until {
                        Until::Samples(n) if samples.len() >= n => break,
                        Until::Deadline(at) if Instant::now() >= at => break,
                        _ => {}
                    }
                    samples.push(once().await);
                    tokio::time::sleep(PROBE_PAUSE).await;
                }
                samples
            })
        }))
    }

    fn finish(self) -> Vec<f64> {
        self.0.join().expect("probe thread")
    }
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await
            && response.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server did not become ready");
}

fn report(result: &StormResult, hashes_per_sec: f64) -> String {
    let cores = SERVER_CORES;
    let capacity = hashes_per_sec * cores as f64;
    let logins_per_sec = result.succeeded as f64 / result.storm_secs;
    let login_ratio = logins_per_sec / capacity;
    let unloaded_p99 = percentile(&result.unloaded_ms, 99.0);
    let loaded_p99 = percentile(&result.loaded_ms, 99.0);
    let p99_ratio = loaded_p99 / unloaded_p99;
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let chart = report::latency_chart(
        "login_storm",
        "GET /api/v1/me during a login storm",
        &[
            report::Series {
                label: "during the storm",
                samples: &result.loaded_ms,
            },
            report::Series {
                label: "unloaded (baseline)",
                samples: &result.unloaded_ms,
            },
        ],
    );
    report::record(
        "login_storm",
        &[
            report::Row::new(
                "login storm: successful logins/s",
                format!("{logins_per_sec:.1} /s"),
                format!("{capacity:.1} /s (argon2id × {cores} core)"),
            )
            .ratio(logins_per_sec, capacity)
            .target(
                format!("≥ {LOGIN_RATIO_TARGET}×"),
                login_ratio >= LOGIN_RATIO_TARGET,
            ),
            report::Row::new(
                "login storm: `GET /api/v1/me` p99",
                format!("{loaded_p99:.2} ms"),
                format!("{unloaded_p99:.2} ms (unloaded)"),
            )
            .ratio(loaded_p99, unloaded_p99)
            .target(
                format!("≤ {P99_RATIO_TARGET}×"),
                p99_ratio <= P99_RATIO_TARGET,
            ),
        ],
    );
    format!(
        "<!-- login-storm:begin -->\n\
         ### Login storm\n\n\
         Measured by `make bench` (`benches/login_storm.rs`), release build, SQLite, {cpu}: the server \
         pinned to CPU {SERVER_CPU} (so it hashes on {cores} core), the load generator, the probe and \
         the argon2id baseline pinned to CPU {GENERATOR_CPU}. \
         Baselines from the same run: argon2id (m=19 MiB, t=2, p=1) verifications on one thread in \
         the benchmark process, in memory kept from one hash to the next as the server's hashing \
         threads keep theirs, and `GET /api/v1/me` on the idle server just before the storm. \
         The storm offers {offered:.0} logins/s (2× the hashing capacity) for {secs} s, open loop, \
         with a `/me` probe beside it (its own thread and connection); hashing runs on `SCHED_IDLE` \
         threads, and a sign-in is admitted to the hashing queue before any database work.\n\n\
         | measure | value | baseline | ratio | target | verdict |\n\
         |---|---|---|---|---|---|\n\
         | successful logins/s during the storm | {logins_per_sec:.1} | {capacity:.1} ({hashes_per_sec:.1} hashes/s × {cores}) | {login_ratio:.2} | ≥ {LOGIN_RATIO_TARGET} | {} |\n\
         | `GET /api/v1/me` p99 | {loaded_p99:.2} ms | {unloaded_p99:.2} ms (unloaded) | {p99_ratio:.2}× | ≤ {P99_RATIO_TARGET}× | {} |\n\
         | `GET /api/v1/me` p50 | {:.2} ms | {:.2} ms (unloaded) | {:.2}× | | |\n\n\
         Logins sent {sent}: {ok} signed in, {refused} refused with 429 (p99 {refusal:.1} ms to the refusal), \
         {other} other. `/me` samples: {n_unloaded} unloaded, {n_loaded} during the storm. \
         Before 2026-12-01 the server allocated fresh argon2 memory for every hash (the kernel \
         mapping and zeroing 19 MiB took ~40% of a hashing thread, seen with `perf`), and the \
         benchmark ran unpinned, the load generator sharing the server's cores: 0.57–0.95× \
         depending on the machine and the pinning.\n\n\
         {chart}\n\
         <!-- login-storm:end -->",
        verdict(login_ratio >= LOGIN_RATIO_TARGET),
        verdict(p99_ratio <= P99_RATIO_TARGET),
        percentile(&result.loaded_ms, 50.0),
        percentile(&result.unloaded_ms, 50.0),
        percentile(&result.loaded_ms, 50.0) / percentile(&result.unloaded_ms, 50.0),
        cpu = cpu_model(),
        offered = result.offered_per_sec,
        secs = STORM_SECS,
        sent = result.sent,
        ok = result.succeeded,
        refused = result.refused,
        refusal = result.refusal_p99_ms,
        other = result.other,
        n_unloaded = result.unloaded_ms.len(),
        n_loaded = result.loaded_ms.len(),
    )
}
