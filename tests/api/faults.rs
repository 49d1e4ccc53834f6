//! Faults, on the real binary: a node killed with SIGKILL under write load, PostgreSQL
//! restarted under load, one of two nodes killed while WebSocket clients follow a room, and the
//! SQLite volume filling up. (A provider that hangs or sends garbage is in `assistant` and
//! `assistant_chats`; the job queue's crashed workers in `jobs`.)
//!
//! What every test holds the server to: nothing it acknowledged is lost, a failure is a clear
//! answer (503 to retry, 507 storage full; never a 500 and never a hang), and the node recovers
//! by itself once the fault is gone.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::cli::{AdaClient, ada_client, conclave, http_get, serve, serve_with_ada};
use crate::helpers::{TestBackend, TestDatabase, backend};

const PASSWORD: &str = "Lantern-Harbour-5521-quartz";

/// A personal API token of Ada's with read and write scopes.
async fn writer_token(base: &str, ada: &AdaClient) -> String {
    let token: Value = ada
        .client
        .post(format!("{base}/api/v1/me/tokens"))
        .header("X-CSRF-Token", &ada.csrf)
        .json(&json!({ "name": "writer", "scopes": ["read", "write"] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    token["token"].as_str().expect("a token").to_owned()
}

async fn create_room(script: &reqwest::Client, base: &str, token: &str, name: &str) -> i64 {
    let room: Value = script
        .post(format!("{base}/api/v1/rooms"))
        .bearer_auth(token)
        .json(&json!({ "name": name }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    room["id"].as_i64().expect("room id")
}

/// Every message of a room as (id, body), oldest first, paged through the API.
async fn history(
    script: &reqwest::Client,
    base: &str,
    token: &str,
    room: i64,
) -> Vec<(i64, String)> {
    let mut stored = Vec::new();
    let mut after = 0_i64;
    loop {
        let page: Value = script
            .get(format!(
                "{base}/api/v1/rooms/{room}/messages?after={after}&limit=200"
            ))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let messages = page["messages"].as_array().expect("messages");
        if messages.is_empty() {
            return stored;
        }
        for message in messages {
            let id = message["id"].as_i64().expect("id");
            stored.push((id, message["body"].as_str().expect("readable").to_owned()));
            after = after.max(id);
        }
    }
}

/// What the writers of a load saw.
#[derive(Default)]
struct Outcomes {
    /// Acknowledged messages (201): id and body.
    acknowledged: Vec<(i64, String)>,
    /// Every other answer: status and body (or the transport error).
    refused: Vec<(u16, String)>,
}

/// `writers` tasks posting messages to `room` on `base` until `stop`; with `keep_going` they
/// go on after a refusal (a fault they must ride through), otherwise they stop at the first.
fn post_messages(
    writers: usize,
    base: &str,
    token: &str,
    room: i64,
    stop: &Arc<AtomicBool>,
    keep_going: bool,
) -> (Arc<Mutex<Outcomes>>, Vec<tokio::task::JoinHandle<()>>) {
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let script = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let tasks = (0..writers)
        .map(|writer| {
            let (script, token, base) = (script.clone(), token.to_owned(), base.to_owned());
            let (outcomes, stop) = (outcomes.clone(), stop.clone());
            tokio::spawn(async move {
                for n in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let body = format!("entry {writer}-{n}");
                    let sent = script
                        .post(format!("{base}/api/v1/rooms/{room}/messages"))
                        .bearer_auth(&token)
                        .json(&json!({ "body": body }))
                        .send()
                        .await;
                    let refusal = match sent {
                        Ok(answer) if answer.status() == 201 => {
                            let id = answer.json::<Value>().await.unwrap()["id"]
                                .as_i64()
                                .expect("id");
                            outcomes.lock().unwrap().acknowledged.push((id, body));
                            continue;
                        }
                        Ok(answer) => {
                            let status = answer.status().as_u16();
                            let retry_after = answer.headers().contains_key("retry-after");
                            let text = answer.text().await.unwrap_or_default();
                            (status, format!("{text} (Retry-After: {retry_after})"))
                        }
                        Err(e) => (0, e.to_string()),
                    };
                    outcomes.lock().unwrap().refused.push(refusal);
                    if !keep_going {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        })
        .collect();
    (outcomes, tasks)
}

/// Stops the writers of [`post_messages`], waits for them, and answers what they saw.
async fn finish(
    stop: &AtomicBool,
    writers: Vec<tokio::task::JoinHandle<()>>,
    outcomes: &Mutex<Outcomes>,
) -> Outcomes {
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
    std::mem::take(&mut *outcomes.lock().unwrap())
}

/// Waits until `done` holds, checking every 20 ms; fails after `limit`.
async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a realtime follower saw.
struct Followed {
    /// Message ids in the order they arrived, across every connection.
    received: Vec<i64>,
    /// Connections opened (1 = never had to reconnect).
    connections: usize,
}

/// A realtime client following one room the way the browser does: when its connection ends
/// it reconnects — to the next node of `nodes` when one cannot be reached — and resumes from
/// the last message it saw. Returns once it has seen `until`'s id (or after 60 s).
fn follow(
    nodes: Vec<u16>,
    token: String,
    room: i64,
    mut until: tokio::sync::watch::Receiver<Option<i64>>,
) -> tokio::task::JoinHandle<Followed> {
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut followed = Followed {
            received: Vec::new(),
            connections: 0,
        };
        let seen_all = |until: &tokio::sync::watch::Receiver<Option<i64>>, followed: &Followed| {
            until
                .borrow()
                .is_some_and(|last| followed.received.last() >= Some(&last))
        };
        let mut node = 0;
        while !seen_all(&until, &followed) && tokio::time::Instant::now() < deadline {
            let url = format!("ws://127.0.0.1:{}/api/v1/ws", nodes[node]);
            let mut request = url.into_client_request().unwrap();
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                format!("conclave.v1, bearer.{token}").parse().unwrap(),
            );
            let Ok(Ok((mut socket, _))) = tokio::time::timeout(
                Duration::from_secs(5),
                tokio_tungstenite::connect_async(request),
            )
            .await
            else {
                // Gone or refusing (503 while its database is away): try the next node.
                node = (node + 1) % nodes.len();
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            followed.connections += 1;
            let since = followed.received.last().copied().unwrap_or(0);
            let subscribe = json!({ "type": "subscribe", "room": room, "since": since });
            if socket
                .send(Message::text(subscribe.to_string()))
                .await
                .is_err()
            {
                continue;
            }
            while !seen_all(&until, &followed) {
                let frame = tokio::select! {
                    // The test says what to wait for once its writers are done.
                    Ok(()) = until.changed() => continue,
                    frame = tokio::time::timeout_at(deadline, socket.next()) => frame,
                };
                let Ok(Some(Ok(message))) = frame else {
                    break; // closed, broken or out of time: reconnect (or give up)
                };
                let Message::Text(text) = message else {
                    continue;
                };
                let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                match frame["type"].as_str() {
                    Some("message") => followed
                        .received
                        .push(frame["message"]["id"].as_i64().expect("id")),
                    // The subscription failed (its database is away): start again.
                    Some("error") => break,
                    _ => {}
                }
            }
            if !seen_all(&until, &followed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        followed
    })
}

/// A device provisioned in Ada's workspace: its id and token.
async fn provision_device(base: &str, ada: &AdaClient) -> (i64, String) {
    let claim: Value = ada
        .client
        .post(format!("{base}/api/v1/tenants/1/devices/claims"))
        .header("X-CSRF-Token", &ada.csrf)
        .json(&json!({ "name": "probe", "kind": "sensor" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let provisioned: Value = reqwest::Client::new()
        .post(format!("{base}/api/v1/devices/claim"))
        .json(&json!({ "code": claim["code"].as_str().expect("a claim code") }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        provisioned["device"]["id"].as_i64().expect("device id"),
        provisioned["token"]
            .as_str()
            .expect("device token")
            .to_owned(),
    )
}

/// A device sending one reading (`n` = its batch's seq) per telemetry batch and waiting for
/// each acknowledgement, until the connection dies. Answers the highest acknowledged seq.
fn send_telemetry(port: u16, token: String) -> tokio::task::JoinHandle<u64> {
    use conclave_protocol as wire;
    tokio::spawn(async move {
        let mut request = format!("ws://127.0.0.1:{port}/api/v1/ws")
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            format!("{}, bearer.{token}", wire::SUBPROTOCOL_JSON)
                .parse()
                .unwrap(),
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let send = |message: wire::DeviceMessage| {
            Message::text(String::from_utf8(wire::to_json(&message).unwrap()).unwrap())
        };
        let hello = wire::DeviceMessage::Hello(wire::Hello {
            protocol: wire::VERSION,
            firmware: "1.0.0".into(),
            chip: "simulator".into(),
            capabilities: vec!["telemetry".into()],
            dropped_readings: 0,
        });
        socket.send(send(hello)).await.unwrap();
        let mut acknowledged = 0;
        let mut seq = 0;
        let batch = |seq: u64| {
            send(wire::DeviceMessage::Telemetry(wire::Telemetry {
                seq,
                at_ms: 0,
                readings: vec![wire::Reading {
                    metric: "n".into(),
                    value: seq as f64,
                }],
            }))
        };
        loop {
            let Ok(Some(Ok(frame))) =
                tokio::time::timeout(Duration::from_secs(10), socket.next()).await
            else {
                return acknowledged; // the server is gone
            };
            let Message::Text(text) = frame else {
                continue;
            };
            match wire::from_json(text.as_bytes()).expect("a server message") {
                wire::ServerMessage::Welcome(_) => {}
                wire::ServerMessage::TelemetryAck(ack) => {
                    assert_eq!(ack.seq, seq, "acknowledged in order");
                    acknowledged = ack.seq;
                }
                // Faster than the gateway allows: like the firmware, wait and send it again.
                wire::ServerMessage::Error(refusal) if refusal.code == "rate_limited" => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if socket.send(batch(seq)).await.is_err() {
                        return acknowledged;
                    }
                    continue;
                }
                other => panic!("unexpected {other:?}"),
            }
            seq += 1;
            if socket.send(batch(seq)).await.is_err() {
                return acknowledged;
            }
        }
    })
}

/// A fault: the process is killed (SIGKILL, no shutdown) while four writers post messages, a
/// fifth adds credits to the ledger one at a time and a device sends telemetry. Every message,
/// ledger entry and reading the server acknowledged is there after a restart on the same data,
/// and the node answers ready at once.
#[tokio::test]
async fn kill_9_under_write_load_loses_no_acknowledged_message_reading_or_credit() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::new();
    let mut server = serve_with_ada(dir.path(), &db.url, PASSWORD, &[]);
    let base = format!("http://127.0.0.1:{}", server.port);
    let ada = ada_client(&base, PASSWORD).await;
    let token = writer_token(&base, &ada).await;
    let (device, device_token) = provision_device(&base, &ada).await;
    let script = reqwest::Client::new();
    let room = create_room(&script, &base, &token, "ledger").await;

    let stop = Arc::new(AtomicBool::new(false));
    let (outcomes, mut writers) = post_messages(4, &base, &token, room, &stop, false);
    let credited = Arc::new(AtomicI64::new(0));
    {
        let (script, token, base) = (script.clone(), token.clone(), base.clone());
        let credited = credited.clone();
        writers.push(tokio::spawn(async move {
            loop {
                let sent = script
                    .post(format!("{base}/api/v1/billing/credits/adjustments"))
                    .bearer_auth(&token)
                    .json(&json!({ "tenant_id": 1, "amount": 1, "reason": "fault test" }))
                    .send()
                    .await;
                match sent {
                    Ok(answer) if answer.status() == 201 => {
                        credited.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => break,
                }
            }
        }));
    }
    let telemetry = send_telemetry(server.port, device_token);
    // Kill once a good number of posts are acknowledged (and more are in flight).
    wait_until("200 acknowledged messages", Duration::from_secs(60), || {
        outcomes.lock().unwrap().acknowledged.len() >= 200
    })
    .await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    for writer in writers {
        writer.await.unwrap();
    }
    let readings = telemetry.await.unwrap();
    let acknowledged = std::mem::take(&mut outcomes.lock().unwrap().acknowledged);

    // Back on the same data: ready at once, and every acknowledged message is there.
    let server = serve(conclave(dir.path(), &db.url));
    let (status, body) = http_get(server.port, "/readyz");
    assert_eq!(status, 200, "{body}");
    let base = format!("http://127.0.0.1:{}", server.port);
    let stored: HashSet<String> = history(&script, &base, &token, room)
        .await
        .into_iter()
        .map(|(_, body)| body)
        .collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .map(|(_, body)| body)
        .filter(|body| !stored.contains(*body))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost: {lost:?}",
        lost.len(),
        acknowledged.len()
    );
    // Each acknowledged +1 is in the balance (one in flight may have committed unacknowledged).
    let credited = credited.load(Ordering::SeqCst);
    assert!(credited > 0, "the ledger writer got answers");
    let ledger: Value = script
        .get(format!("{base}/api/v1/billing/credits?tenant=1"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let balance = ledger["balance"].as_i64().expect("a balance");
    assert!(
        balance == credited || balance == credited + 1,
        "{credited} acknowledged credits, balance {balance}"
    );
    // Every acknowledged reading is stored (and the unacknowledged one in flight may be).
    eprintln!(
        "killed after {} messages, {credited} credits and {readings} readings were acknowledged",
        acknowledged.len()
    );
    assert!(readings > 0, "the device got acknowledgements");
    let series: Value = script
        .get(format!("{base}/api/v1/devices/{device}/telemetry?metric=n"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let values: HashSet<u64> = series["series"][0]["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|point| point[1].as_f64().expect("a value") as u64)
        .collect();
    let missing: Vec<u64> = (1..=readings).filter(|n| !values.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "{} of {readings} acknowledged readings lost: {missing:?}",
        missing.len()
    );
}

/// A PostgreSQL cluster of the test's own (the shared one serves every other test), so that it
/// can be stopped and started again.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    fn new() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed (scripts/ensure-tools.sh)")
            .map(|entry| entry.unwrap().path().join("bin"))
            .filter(|bin| bin.join("initdb").exists())
            .max()
            .expect("an initdb");
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Self { dir, bin, port };
        if cluster.as_root() {
            // PostgreSQL refuses to run as root: the cluster runs as the postgres user.
            let exists = Command::new("id").arg("postgres").output().unwrap();
            if !exists.status.success() {
                let made = Command::new("useradd")
                    .args(["--system", "--shell", "/usr/sbin/nologin", "postgres"])
                    .status()
                    .unwrap();
                assert!(made.success());
            }
            let owned = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(cluster.dir.path())
                .status()
                .unwrap();
            assert!(owned.success());
        }
        cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
        );
        cluster.start();
        cluster
    }

    fn as_root(&self) -> bool {
        let id = Command::new("id").arg("-u").output().unwrap();
        String::from_utf8_lossy(&id.stdout).trim() == "0"
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let program = self.bin.join(tool);
        let mut command = if self.as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        let output = command.args(args).output().unwrap();
        assert!(
            output.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-w",
                "-o",
                &options,
                "start",
            ],
        );
    }

    /// A fast shutdown: sessions are terminated, as on a restart for maintenance.
    fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
        if self.as_root() {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .args(["-D", &self.data(), "-m", "immediate", "stop"])
                .output();
        }
    }
}

fn postgres_only(what: &str) -> bool {
    if backend() == TestBackend::Postgres {
        return true;
    }
    eprintln!("{what} is a PostgreSQL deployment's fault; nothing to check on SQLite");
    false
}

/// PostgreSQL restarted under load: while it is away, requests get 503 with Retry-After (no
/// 500, no hang) and /readyz says not ready; once it is back the same process serves again —
/// writes, and a WebSocket follower that resumes with every acknowledged message once.
#[tokio::test]
async fn postgres_restarted_under_load_answers_503_then_the_node_recovers_by_itself() {
    if !postgres_only("a PostgreSQL restart") {
        return;
    }
    let postgres = PrivatePostgres::new();
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve_with_ada(
        dir.path(),
        &postgres.url(),
        PASSWORD,
        &[("CONCLAVE__DATABASE__CONNECT_TIMEOUT_SECS", "2")],
    );
    let base = format!("http://127.0.0.1:{}", server.port);
    let ada = ada_client(&base, PASSWORD).await;
    let token = writer_token(&base, &ada).await;
    let script = reqwest::Client::new();
    let room = create_room(&script, &base, &token, "maintenance").await;
    let (until, last_id) = tokio::sync::watch::channel(None);
    let follower = follow(vec![server.port], token.clone(), room, last_id);

    let stop = Arc::new(AtomicBool::new(false));
    let (outcomes, writers) = post_messages(3, &base, &token, room, &stop, true);
    wait_until("50 acknowledged messages", Duration::from_secs(30), || {
        outcomes.lock().unwrap().acknowledged.len() >= 50
    })
    .await;

    postgres.stop();
    let before_outage = outcomes.lock().unwrap().acknowledged.len();
    wait_until(
        "writers refused during the outage",
        Duration::from_secs(30),
        || outcomes.lock().unwrap().refused.len() >= 3,
    )
    .await;
    let (status, body) = http_get(server.port, "/readyz");
    assert_eq!(status, 503, "not ready while the database is away: {body}");

    postgres.start();
    wait_until("writes after the restart", Duration::from_secs(30), || {
        outcomes.lock().unwrap().acknowledged.len() >= before_outage + 50
    })
    .await;
    let outcomes = finish(&stop, writers, &outcomes).await;
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the same process recovered"
    );
    let (status, body) = http_get(server.port, "/readyz");
    assert_eq!(status, 200, "{body}");

    let unclear: Vec<&(u16, String)> = outcomes
        .refused
        .iter()
        .filter(|(status, body)| *status != 503 || !body.contains("(Retry-After: true)"))
        .collect();
    assert!(unclear.is_empty(), "only 503 with Retry-After: {unclear:?}");
    let problem: Value =
        serde_json::from_str(outcomes.refused[0].1.split(" (Retry-After").next().unwrap()).unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("retry"),
        "{problem}"
    );

    let stored = history(&script, &base, &token, room).await;
    let ids: HashSet<i64> = stored.iter().map(|(id, _)| *id).collect();
    let lost: Vec<&(i64, String)> = outcomes
        .acknowledged
        .iter()
        .filter(|(id, _)| !ids.contains(id))
        .collect();
    assert!(lost.is_empty(), "acknowledged then lost: {lost:?}");

    until.send_replace(stored.last().map(|(id, _)| *id));
    let followed = follower.await.unwrap();
    let all: Vec<i64> = stored.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        followed.received, all,
        "the follower saw every message once, in order (over {} connections)",
        followed.connections
    );
}

/// Two nodes on one PostgreSQL database; node B is killed (SIGKILL) while clients follow a
/// room on it and writers post through node A. The followers reconnect to A and resume: every
/// message once, in order, no gap.
#[tokio::test]
async fn a_killed_nodes_websocket_clients_resume_on_the_other_with_no_gap() {
    if !postgres_only("a second node") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::new();
    let a = serve_with_ada(dir.path(), &db.url, PASSWORD, &[]);
    // The same data directory: the same keys, as nodes of one deployment share them.
    let mut b = serve(conclave(dir.path(), &db.url));
    let base_a = format!("http://127.0.0.1:{}", a.port);
    let ada = ada_client(&base_a, PASSWORD).await;
    let token = writer_token(&base_a, &ada).await;
    let script = reqwest::Client::new();
    let room = create_room(&script, &base_a, &token, "failover").await;

    let (until, last_id) = tokio::sync::watch::channel(None);
    let followers: Vec<_> = (0..3)
        .map(|_| follow(vec![b.port, a.port], token.clone(), room, last_id.clone()))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (outcomes, writers) = post_messages(2, &base_a, &token, room, &stop, false);
    wait_until("100 acknowledged messages", Duration::from_secs(30), || {
        outcomes.lock().unwrap().acknowledged.len() >= 100
    })
    .await;
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let at_kill = outcomes.lock().unwrap().acknowledged.len();
    wait_until(
        "writes go on after the kill",
        Duration::from_secs(30),
        || outcomes.lock().unwrap().acknowledged.len() >= at_kill + 100,
    )
    .await;
    let outcomes = finish(&stop, writers, &outcomes).await;
    assert!(outcomes.refused.is_empty(), "{:?}", outcomes.refused);
    let mut acknowledged: Vec<i64> = outcomes.acknowledged.iter().map(|(id, _)| *id).collect();
    acknowledged.sort_unstable();
    until.send_replace(acknowledged.last().copied());
    for follower in followers {
        let followed = follower.await.unwrap();
        assert_eq!(
            followed.received, acknowledged,
            "every message once, in order, across the failover"
        );
        assert!(followed.connections >= 2, "the follower moved to node A");
    }
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct SmallVolume {
    path: PathBuf,
}

impl SmallVolume {
    /// None where this user may not mount (not root): the test says so and checks nothing.
    fn mount(at: &Path, megabytes: u32) -> Option<Self> {
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m")])
            .arg("tmpfs")
            .arg(at)
            .output()
            .ok()?;
        if !mounted.status.success() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs as root and must mount a tmpfs: {}",
                String::from_utf8_lossy(&mounted.stderr)
            );
            return None;
        }
        Some(Self {
            path: at.to_owned(),
        })
    }

    /// Fills what is left with a ballast file; answers its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let ballast = self.path.join("ballast");
        let mut file = std::fs::File::create(&ballast).unwrap();
        let chunk = vec![0_u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        // Down to the last bytes, so that not even a small page fits.
        while file.write_all(&chunk[..512]).is_ok() {}
        ballast
    }
}

impl Drop for SmallVolume {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// The SQLite volume fills up: writes are refused with 507 and a clear message, reads go on,
/// nothing acknowledged is lost, the database is not corrupted, and writes work again as soon
/// as space is freed, without a restart.
#[tokio::test]
async fn a_full_disk_refuses_writes_clearly_corrupts_nothing_and_recovers() {
    if backend() != TestBackend::Sqlite {
        eprintln!("the disk of a PostgreSQL deployment is PostgreSQL's; checked on SQLite");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(volume) = SmallVolume::mount(dir.path(), 48) else {
        eprintln!("cannot mount a tmpfs here (not root): the full-disk test did not run");
        return;
    };
    let database = dir.path().join("conclave.db");
    let url = format!("sqlite://{}", database.display());
    let mut server = serve_with_ada(dir.path(), &url, PASSWORD, &[]);
    let base = format!("http://127.0.0.1:{}", server.port);
    let ada = ada_client(&base, PASSWORD).await;
    let token = writer_token(&base, &ada).await;
    let script = reqwest::Client::new();
    let room = create_room(&script, &base, &token, "full").await;

    let ballast = volume.fill();
    let stop = Arc::new(AtomicBool::new(false));
    let (outcomes, writers) = post_messages(2, &base, &token, room, &stop, true);
    wait_until("writes refused", Duration::from_secs(60), || {
        outcomes.lock().unwrap().refused.len() >= 10
    })
    .await;
    // Reads go on while the disk is full.
    let page = script
        .get(format!("{base}/api/v1/rooms/{room}/messages"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "reading works on a full disk");
    let (status, body) = http_get(server.port, "/healthz");
    assert_eq!(status, 200, "{body}");

    std::fs::remove_file(&ballast).unwrap();
    let refused_while_full = outcomes.lock().unwrap().refused.len();
    let acknowledged_while_full = outcomes.lock().unwrap().acknowledged.len();
    wait_until(
        "writes after space is freed",
        Duration::from_secs(30),
        || outcomes.lock().unwrap().acknowledged.len() >= acknowledged_while_full + 20,
    )
    .await;
    let outcomes = finish(&stop, writers, &outcomes).await;
    eprintln!(
        "{} writes acknowledged, {} refused while the disk was full",
        outcomes.acknowledged.len(),
        outcomes.refused.len()
    );
    assert!(refused_while_full >= 10);
    for (status, body) in &outcomes.refused {
        assert_eq!(*status, 507, "{body}");
        assert!(body.contains("storage is full"), "{body}");
        assert!(body.contains("storage_full"), "{body}");
    }

    // Every acknowledged message is there, after a clean restart too, and SQLite finds no
    // damage.
    Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    server.child.wait().unwrap();
    drop(server);
    let check = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('PRAGMA integrity_check').fetchone()[0])",
        ])
        .arg(&database)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let server = serve(conclave(dir.path(), &url));
    let base = format!("http://127.0.0.1:{}", server.port);
    let stored: HashSet<i64> = history(&script, &base, &token, room)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let lost: Vec<&(i64, String)> = outcomes
        .acknowledged
        .iter()
        .filter(|(id, _)| !stored.contains(id))
        .collect();
    assert!(lost.is_empty(), "acknowledged then lost: {lost:?}");
    drop(server);
    drop(volume);
}
