//! HTTP throughput (`make bench`): requests per second and latency of
//! - an authenticated JSON call, `GET /api/v1/me` with an API token (token lookup, user and
//!   memberships from the database, JSON), and
//! - a server-rendered page, `GET /rooms` with a session cookie (session, CSRF, Tera, CSP
//!   nonce, compression negotiated away: the client asks for identity),
//!
//! closed loop, `CLIENTS` clients for `WINDOW` after `WARMUP`, the server on CPU 1 with one
//! HTTP worker, the load generator on CPU 0. Baseline, same run, same CPU and worker count: a
//! bare actix-web server answering a JSON object of the same shape and a static page of the
//! same size (`examples/baseline_server.rs`): the floor of the framework and the transfer.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    GENERATOR_CPU, SERVER_CPU, ServerWithUser, cpu_model, free_port, percentile, pin_self,
    refuse_if_busy, report, sign_in_for_token, write_into_benchmarks_md,
};

const EMAIL: &str = "bench@example.com";
const PASSWORD: &str = "bench-password-7731-otter";
const CLIENTS: usize = 32;
const WARMUP: Duration = Duration::from_secs(2);
const WINDOW: Duration = Duration::from_secs(10);

struct Load {
    per_sec: f64,
    /// Latency of every request in the window, in ms.
    latencies: Vec<f64>,
    failed: usize,
}

/// `CLIENTS` clients, each sending `url` again as soon as the answer is in, for the window.
async fn load(url: &str, headers: reqwest::header::HeaderMap) -> Load {
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .expect("client");
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (client, url) = (client.clone(), url.to_owned());
            let (measuring, stop) = (measuring.clone(), stop.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failed = 0;
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let ok = match client.get(&url).send().await {
                        Ok(response) => {
                            let status = response.status();
                            response.bytes().await.is_ok() && status == 200
                        }
                        Err(_) => false,
                    };
                    if measuring.load(Ordering::Relaxed) {
                        if ok {
                            latencies.push(sent.elapsed().as_secs_f64() * 1_000.0);
                        } else {
                            failed += 1;
                        }
                    }
                }
                (latencies, failed)
            })
        })
        .collect();
    tokio::time::sleep(WARMUP).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(WINDOW).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut failed = 0;
    for task in tasks {
        let (mine, my_failures) = task.await.expect("client task");
        latencies.extend(mine);
        failed += my_failures;
    }
    Load {
        per_sec: latencies.len() as f64 / elapsed,
        latencies,
        failed,
    }
}

/// The baseline server on CPU `SERVER_CPU`, one worker, serving a page of `page_bytes`.
fn start_baseline(page_bytes: usize) -> (Child, String) {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_conclave"))
        .parent()
        .expect("target dir")
        .join("examples/baseline_server");
    assert!(
        binary.exists(),
        "build the baseline first: cargo build --release --example baseline_server (make bench does)"
    );
    let port = free_port();
    let child = Command::new("taskset")
        .args(["-c", &SERVER_CPU.to_string()])
        .arg(&binary)
        .env("BASELINE_LISTEN", format!("127.0.0.1:{port}"))
        .env("BASELINE_WORKERS", "1")
        .env("BASELINE_PAGE_BYTES", page_bytes.to_string())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the baseline");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the baseline did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, base)
}

/// A signed-in browser's `Cookie` header.
async fn session_cookie(base: &str) -> String {
    use reqwest::cookie::CookieStore as _;
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let client = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .build()
        .expect("client");
    let login = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&serde_json::json!({ "email": EMAIL, "password": PASSWORD }))
        .send()
        .await
        .expect("login");
    assert_eq!(login.status(), 200);
    jar.cookies(&base.parse().expect("url"))
        .and_then(|c| c.to_str().ok().map(str::to_owned))
        .expect("cookies")
}

fn headers(pairs: &[(reqwest::header::HeaderName, String)]) -> reqwest::header::HeaderMap {
    let mut map = reqwest::header::HeaderMap::new();
    map.insert(
        reqwest::header::ACCEPT_ENCODING,
        "identity".parse().expect("header"),
    );
    for (name, value) in pairs {
        map.insert(name.clone(), value.parse().expect("header"));
    }
    map
}

fn main() {
    conclave::crypto::install_tls_provider();
    refuse_if_busy();
    let server = ServerWithUser::start_on(
        EMAIL,
        PASSWORD,
        &[
            ("CONCLAVE__SERVER__WORKERS", "1"),
            // One address sends everything here: no per-address limits in the way.
            ("CONCLAVE__ACCOUNTS__LOGIN_ATTEMPTS_PER_IP_PER_MINUTE", "0"),
        ],
        Some(SERVER_CPU),
    );
    pin_self(GENERATOR_CPU);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (json, page, base_json, base_page, page_bytes) = runtime.block_on(async {
        let token = sign_in_for_token(&server.base, EMAIL, PASSWORD).await;
        let cookie = session_cookie(&server.base).await;
        let page_headers = headers(&[(reqwest::header::COOKIE, cookie)]);
        let page_bytes = reqwest::Client::new()
            .get(format!("{}/rooms", server.base))
            .headers(page_headers.clone())
            .send()
            .await
            .expect("the page")
            .bytes()
            .await
            .expect("its body")
            .len();
        eprintln!("GET /api/v1/me: {CLIENTS} clients");
        let json = load(
            &format!("{}/api/v1/me", server.base),
            headers(&[(reqwest::header::AUTHORIZATION, format!("Bearer {token}"))]),
        )
        .await;
        eprintln!("GET /rooms ({page_bytes} B): {CLIENTS} clients");
        let page = load(&format!("{}/rooms", server.base), page_headers).await;
        let (mut baseline, base) = start_baseline(page_bytes);
        eprintln!("baseline: /json and /page");
        let base_json = load(&format!("{base}/json"), headers(&[])).await;
        let base_page = load(&format!("{base}/page"), headers(&[])).await;
        let _ = baseline.kill();
        let _ = baseline.wait();
        (json, page, base_json, base_page, page_bytes)
    });
    drop(server);

    let rows = [
        ("JSON: `GET /api/v1/me` (API token)", &json, &base_json),
        ("page: `GET /rooms` (session cookie)", &page, &base_page),
    ];
    let mut table = String::from(
        "| request | Conclave | baseline (bare actix-web) | ratio | Conclave p50 / p99 | baseline p50 / p99 | failed |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for (name, ours, base) in rows {
        table.push_str(&format!(
            "| {name} | {:.0} /s | {:.0} /s | {:.2}× | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {} |\n",
            ours.per_sec,
            base.per_sec,
            ours.per_sec / base.per_sec,
            percentile(&ours.latencies, 50.0),
            percentile(&ours.latencies, 99.0),
            percentile(&base.latencies, 50.0),
            percentile(&base.latencies, 99.0),
            ours.failed + base.failed,
        ));
    }
    let chart = report::latency_chart(
        "http",
        &format!("HTTP latency, {CLIENTS} clients, closed loop"),
        &[
            report::Series {
                label: "Conclave JSON",
                samples: &json.latencies,
            },
            report::Series {
                label: "Conclave page",
                samples: &page.latencies,
            },
            report::Series {
                label: "baseline JSON",
                samples: &base_json.latencies,
            },
            report::Series {
                label: "baseline page",
                samples: &base_page.latencies,
            },
        ],
    );
    let section = format!(
        "<!-- http:begin -->\n### HTTP: JSON and page throughput\n\n\
         Measured by `make bench` (`benches/http.rs`), release build, SQLite, server pinned to CPU \
         {SERVER_CPU} with one HTTP worker, load generator pinned to CPU {GENERATOR_CPU}, {}. \
         {CLIENTS} clients in a closed loop (each sends again when its answer is in), {:.0} s \
         measured after {:.0} s of warm-up, no compression. Baseline, same run and CPU: a bare \
         actix-web server with one worker answering a JSON object of the same shape and a static \
         page of the same size ({page_bytes} B), `examples/baseline_server.rs`: what the framework \
         and the transfer cost, without sessions, database, templates or security headers.\n\n\
         {table}\n{chart}\n<!-- http:end -->",
        cpu_model(),
        WINDOW.as_secs_f64(),
        WARMUP.as_secs_f64(),
    );
    println!("{section}");
    write_into_benchmarks_md("http", &section);
    report::record(
        "http",
        &[
            report::Row::new(
                format!("HTTP JSON: `GET /api/v1/me`, {CLIENTS} clients"),
                format!("{:.0} req/s", json.per_sec),
                format!("{:.0} req/s (bare actix-web)", base_json.per_sec),
            )
            .ratio(json.per_sec, base_json.per_sec),
            report::Row::new(
                format!("HTTP page: `GET /rooms`, {CLIENTS} clients"),
                format!("{:.0} req/s", page.per_sec),
                format!("{:.0} req/s (bare actix-web, static)", base_page.per_sec),
            )
            .ratio(page.per_sec, base_page.per_sec),
        ],
    );
}
