//! Devices at work, with the simulator (`conclave device simulate`, the same protocol crate as
//! the firmware) against a live server: provisioning, telemetry through disconnects and
//! resends (nothing lost, nothing doubled) with hourly rollups and retention, commands from
//! the API and from rooms (`/cmd`), threshold rules posting room events, signed firmware with
//! a staged rollout that a failing cohort halts and that rolls back, and revocation.

use std::sync::Arc;
use std::time::Duration;

use conclave::devices::simulator::{self, Options, Stats};
use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::{Team, TestApp, eventually, team_with};
use crate::rooms::{create_room, get, post, say, send};

/// A team whose devices may send telemetry as fast as the tests do.
pub(crate) async fn fleet_team() -> Team {
    team_with(|settings| {
        settings.devices.telemetry_batches_per_second = 1_000;
    })
    .await
}

/// A claim code for a device called `name` (Carl is an admin of the team's workspace).
pub(crate) async fn claim_code(team: &Team, name: &str, tags: &[&str]) -> String {
    let created = team
        .carl
        .post(
            &team.app,
            &format!("/api/v1/tenants/{}/devices/claims", team.tenant),
            json!({ "name": name, "kind": "sensor", "tags": tags }),
        )
        .await;
    assert_eq!(created.status(), 201);
    created.json::<Value>().await.expect("json")["code"]
        .as_str()
        .expect("code")
        .to_owned()
}

/// Devices provisioned through the simulator's claim path: (id, token) by name.
async fn provision(team: &Team, names: &[&str], tags: &[&str]) -> Vec<(i64, String)> {
    let mut codes = Vec::new();
    for name in names {
        codes.push(claim_code(team, name, tags).await);
    }
    let tokens = simulator::tokens(&Options {
        url: team.app.address.clone(),
        count: names.len(),
        claim_codes: codes,
        ..Options::default()
    })
    .await
    .expect("claimed");
    let mut out = Vec::new();
    for token in tokens {
        out.push((device_id(team, &token).await, token));
    }
    out
}

/// The registry id of the device a token belongs to (`GET /api/v1/device`).
pub(crate) async fn device_id(team: &Team, token: &str) -> i64 {
    let me: Value = team
        .app
        .client
        .get(team.app.url("/api/v1/device"))
        .bearer_auth(token)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    me["device_id"].as_i64().expect("id")
}

fn fleet(app: &TestApp, tokens: Vec<String>) -> Options {
    Options {
        url: app.address.clone(),
        count: tokens.len(),
        tokens,
        interval: Some(Duration::from_millis(15)),
        ..Options::default()
    }
}

/// Starts a fleet in the background; stop it with the token.
fn start(
    options: Options,
) -> (
    CancellationToken,
    Arc<Stats>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let stop = CancellationToken::new();
    let stats = Arc::new(Stats::default());
    let running = tokio::spawn(simulator::run(options, stop.clone(), stats.clone()));
    (stop, stats, running)
}

/// Revokes a device's token (Carl is an admin).
async fn revoke(team: &Team, id: i64) {
    let (status, _) = send(
        &team.carl,
        &team.app,
        reqwest::Method::DELETE,
        &format!("/api/v1/devices/{id}/token"),
        None,
    )
    .await;
    assert_eq!(status, 204);
}

pub(crate) async fn json_of(team: &Team, path: &str) -> Value {
    let (status, body) = get(&team.carl, &team.app, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

#[tokio::test]
async fn a_fleet_sends_telemetry_through_disconnects_and_nothing_is_lost_or_doubled() {
    let team = fleet_team().await;
    let devices = provision(&team, &["t-1", "t-2", "t-3", "t-4"], &["lab"]).await;
    let tokens: Vec<String> = devices.iter().map(|(_, t)| t.clone()).collect();
    // Two in JSON, two in postcard; every 5th batch the connection drops before the ack.
    let json_fleet = Options {
        batches: Some(12),
        disconnect_every: Some(5),
        ..fleet(&team.app, tokens[..2].to_vec())
    };
    let binary_fleet = Options {
        binary: true,
        ..Options {
            batches: Some(12),
            disconnect_every: Some(5),
            ..fleet(&team.app, tokens[2..].to_vec())
        }
    };
    let stats = Arc::new(Stats::default());
    let (a, b) = tokio::join!(
        simulator::run(json_fleet, CancellationToken::new(), stats.clone()),
        simulator::run(binary_fleet, CancellationToken::new(), stats.clone()),
    );
    a.expect("the JSON fleet finished");
    b.expect("the binary fleet finished");
    assert_eq!(Stats::get(&stats.finished), 4);
    assert!(
        Stats::get(&stats.connections) >= 4 * 3,
        "the fleet reconnected after each drop"
    );
    assert_eq!(Stats::get(&stats.readings_acked), 4 * 12 * 3);
    for (id, _) in &devices {
        let device = json_of(&team, &format!("/api/v1/devices/{id}")).await;
        assert_eq!(device["last_seq"], 12);
        assert_eq!(device["firmware"], "1.0.0");
        let raw = json_of(
            &team,
            &format!("/api/v1/devices/{id}/telemetry?metric=temperature"),
        )
        .await;
        assert_eq!(
            raw["series"][0]["points"].as_array().expect("points").len(),
            12,
            "every batch stored once: {raw}"
        );
        // The hourly rollups agree with the raw readings.
        let hourly = json_of(&team, &format!("/api/v1/devices/{id}/telemetry?step=1h")).await;
        let series = hourly["series"].as_array().expect("series");
        assert_eq!(series.len(), 3, "temperature, humidity, rssi");
        for metric in series {
            let count: u64 = metric["buckets"]
                .as_array()
                .expect("buckets")
                .iter()
                .map(|b| b["count"].as_u64().expect("count"))
                .sum();
            assert_eq!(count, 12, "{metric}");
        }
    }
}

#[tokio::test]
async fn tokens_claimed_once_are_kept_in_the_token_file_and_the_sequence_continues() {
    let team = fleet_team().await;
    let code = claim_code(&team, "kept", &[]).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("tokens");
    let options = Options {
        url: team.app.address.clone(),
        claim_codes: vec![code.clone()],
        token_file: Some(file.clone()),
        batches: Some(3),
        interval: Some(Duration::from_millis(10)),
        ..Options::default()
    };
    simulator::run(
        options.clone(),
        CancellationToken::new(),
        Arc::new(Stats::default()),
    )
    .await
    .expect("first run");
    let saved = std::fs::read_to_string(&file).expect("token file");
    assert!(saved.trim().starts_with("cnd_"));
    // The code is spent: the second run uses the file alone, and continues above seq 3.
    simulator::run(
        Options {
            claim_codes: Vec::new(),
            ..options.clone()
        },
        CancellationToken::new(),
        Arc::new(Stats::default()),
    )
    .await
    .expect("second run");
    let devices = json_of(&team, "/api/v1/devices").await;
    assert_eq!(devices["devices"][0]["last_seq"], 6);
    // A spent code says why.
    let error = simulator::run(
        Options {
            token_file: None,
            ..options
        },
        CancellationToken::new(),
        Arc::new(Stats::default()),
    )
    .await
    .expect_err("a used code");
    assert!(error.to_string().contains("refused"), "{error}");
}

#[tokio::test]
async fn retention_drops_old_readings_and_the_hourly_rollups_outlive_them() {
    let team = fleet_team().await;
    let devices = provision(&team, &["old"], &[]).await;
    let id = devices[0].0;
    let old = chrono::Utc::now() - chrono::TimeDelta::days(10);
    let batch = |seq: u64, value: f64| conclave_protocol::Telemetry {
        seq,
        at_ms: u64::try_from(old.timestamp_millis()).expect("positive"),
        readings: vec![conclave_protocol::Reading {
            metric: "temperature".to_owned(),
            value,
        }],
    };
    let db = &team.app.state.db;
    for (seq, value) in [(1, 10.0), (2, 20.0), (3, 30.0)] {
        assert!(
            conclave::devices::gateway::ingest(db, id, batch(seq, value))
                .await
                .expect("stored")
        );
    }
    let from = (old - chrono::TimeDelta::hours(1)).to_rfc3339();
    let to = (old + chrono::TimeDelta::hours(1)).to_rfc3339();
    let query = |step: &str| {
        format!(
            "/api/v1/devices/{id}/telemetry?metric=temperature&from={}&to={}{step}",
            urlencode(&from),
            urlencode(&to)
        )
    };
    let raw = json_of(&team, &query("")).await;
    assert_eq!(
        raw["series"][0]["points"].as_array().expect("points").len(),
        3
    );
    let deleted = team
        .app
        .state
        .devices
        .purge_telemetry()
        .await
        .expect("purged");
    assert_eq!(
        deleted, 3,
        "the raw readings are past devices.telemetry_raw_days"
    );
    let raw = json_of(&team, &query("")).await;
    assert_eq!(raw["series"].as_array().expect("series").len(), 0);
    let hourly = json_of(&team, &query("&step=2h")).await;
    let bucket = &hourly["series"][0]["buckets"][0];
    assert_eq!(bucket["count"], 3, "{hourly}");
    assert_eq!(bucket["min"], 10.0);
    assert_eq!(bucket["max"], 30.0);
    assert_eq!(bucket["avg"], 20.0);
}

fn urlencode(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}

pub(crate) async fn command_status(team: &Team, device: i64, id: i64, wanted: &str) -> Value {
    eventually(Duration::from_secs(10), || async {
        let command = json_of(team, &format!("/api/v1/devices/{device}/commands/{id}")).await;
        (command["status"] == wanted).then_some(command)
    })
    .await
    .unwrap_or_else(|| panic!("command {id} became {wanted}"))
}

#[tokio::test]
async fn commands_reach_devices_now_or_when_they_come_back_and_their_answers_are_kept() {
    let team = fleet_team().await;
    let devices = provision(&team, &["relay"], &[]).await;
    let (id, token) = devices[0].clone();
    let (stop, _, running) = start(fleet(&team.app, vec![token.clone()]));
    let send_command = |name: &'static str, args: Value| {
        let team = &team;
        async move {
            let response = team
                .carl
                .post(
                    &team.app,
                    &format!("/api/v1/devices/{id}/commands"),
                    json!({ "name": name, "args": args }),
                )
                .await;
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("json"))
        }
    };
    let (status, echo) = send_command("echo", json!(["hello", "world"])).await;
    assert_eq!(status, 202, "{echo}");
    let done = command_status(&team, id, echo["id"].as_i64().expect("id"), "succeeded").await;
    assert_eq!(done["output"], "hello world");
    assert_eq!(done["args"], json!(["hello", "world"]));
    assert!(done["done_at"].is_string());
    let (_, unknown) = send_command("self-destruct", json!([])).await;
    command_status(&team, id, unknown["id"].as_i64().expect("id"), "unknown").await;
    let (_, failing) = send_command("fail", json!([])).await;
    let failed = command_status(&team, id, failing["id"].as_i64().expect("id"), "failed").await;
    assert_eq!(failed["output"], "failed as asked");

    // Offline: the command waits, and runs when the device is back.
    stop.cancel();
    running.await.expect("joined").expect("stopped cleanly");
    let (_, ping) = send_command("ping", json!([])).await;
    let ping_id = ping["id"].as_i64().expect("id");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Pending, or sent to the connection that was closing: either way it runs once the
    // device is back (sent but unanswered commands are sent again after `hello`).
    let waiting = json_of(&team, &format!("/api/v1/devices/{id}/commands/{ping_id}")).await;
    assert!(
        waiting["status"] == "pending" || waiting["status"] == "sent",
        "{waiting}"
    );
    let (stop, _, running) = start(fleet(&team.app, vec![token]));
    let pong = command_status(&team, id, ping_id, "succeeded").await;
    assert_eq!(pong["output"], "pong");
    let listed = json_of(&team, &format!("/api/v1/devices/{id}/commands")).await;
    assert_eq!(listed["commands"].as_array().expect("list").len(), 4);
    assert_eq!(listed["commands"][0]["id"], ping_id, "newest first");

    // Bad commands and callers.
    let (status, body) = send_command("two words", json!([])).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("command.name")
    );
    let (status, _) = send_command("echo", json!(vec!["x"; 33])).await;
    assert_eq!(status, 400);
    let eve = team
        .eve
        .post(
            &team.app,
            &format!("/api/v1/devices/{id}/commands"),
            json!({ "name": "ping" }),
        )
        .await;
    assert_eq!(eve.status(), 403, "viewers watch, operators command");
    let (status, _) = get(
        &team.eve,
        &team.app,
        &format!("/api/v1/devices/{id}/commands"),
    )
    .await;
    assert_eq!(status, 200);
    stop.cancel();
    running.await.expect("joined").expect("stopped cleanly");
}

#[tokio::test]
async fn commands_for_a_device_that_stays_away_expire_and_the_room_hears_it() {
    let team = team_with(|settings| settings.devices.command_ttl_secs = 1).await;
    let devices = provision(&team, &["sleepy"], &[]).await;
    let (id, _) = devices[0].clone();
    let room = create_room(&team.ada, &team.app, "sleepers", "public").await;
    let (status, _) = send(
        &team.ada,
        &team.app,
        reqwest::Method::PUT,
        &format!("/api/v1/rooms/{room}/devices/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let asked = say(&team.ada, &team.app, room, "/cmd sleepy ping").await;
    let answer = eventually(Duration::from_secs(15), || async {
        let (_, history) = get(
            &team.ada,
            &team.app,
            &format!("/api/v1/rooms/{room}/messages"),
        )
        .await;
        history["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .find(|m| m["sender"]["kind"] == "device")
            .cloned()
    })
    .await
    .expect("the room hears the command expired");
    assert_eq!(answer["reply_to"], asked["id"]);
    assert_eq!(answer["sender"]["name"], "sleepy");
    assert!(
        answer["body"].as_str().expect("body").contains("expired"),
        "{answer}"
    );
    let listed = json_of(&team, &format!("/api/v1/devices/{id}/commands")).await;
    assert_eq!(listed["commands"][0]["status"], "expired");
}

#[tokio::test]
async fn devices_in_rooms_post_rule_events_and_answer_slash_commands() {
    let team = fleet_team().await;
    let devices = provision(&team, &["lamp", "fan"], &[]).await;
    let (lamp, lamp_token) = devices[0].clone();
    let (fan, _) = devices[1].clone();
    let room = create_room(&team.ada, &team.app, "plant", "public").await;
    let put = |room: i64, device: i64, person: &'static str| {
        let team = &team;
        async move {
            let who = match person {
                "ada" => &team.ada,
                _ => &team.eve,
            };
            send(
                who,
                &team.app,
                reqwest::Method::PUT,
                &format!("/api/v1/rooms/{room}/devices/{device}"),
                None,
            )
            .await
        }
    };
    assert_eq!(put(room, lamp, "ada").await.0, 204);
    assert_eq!(put(room, lamp, "ada").await.0, 409, "already a member");
    assert_eq!(
        put(room, fan, "eve").await.0,
        403,
        "viewers cannot operate devices"
    );
    let (_, members) = get(
        &team.ada,
        &team.app,
        &format!("/api/v1/rooms/{room}/members"),
    )
    .await;
    assert!(
        members["members"]
            .as_array()
            .expect("members")
            .iter()
            .any(|m| m["kind"] == "device" && m["name"] == "lamp"),
        "{members}"
    );
    let (_, rooms) = get(
        &team.ada,
        &team.app,
        &format!("/api/v1/devices/{lamp}/rooms"),
    )
    .await;
    assert_eq!(rooms["rooms"][0]["name"], "plant");

    // A rule: rssi below -62.5. The simulator's rssi is -60 - (seq % 7): batch 3 crosses it
    // (-63), batch 7 comes back (-60).
    let rule = |device: i64, body: Value| {
        let team = &team;
        async move {
            let response = team
                .ada
                .post(&team.app, &format!("/api/v1/devices/{device}/rules"), body)
                .await;
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("json"))
        }
    };
    let (status, created) = rule(
        lamp,
        json!({"room_id": room, "metric": "rssi", "op": "below", "threshold": -62.5}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let (status, _) = rule(
        fan,
        json!({"room_id": room, "metric": "rssi", "op": "below", "threshold": 0}),
    )
    .await;
    assert_eq!(status, 409, "the fan is not in the room");
    let (status, bad) = rule(
        lamp,
        json!({"room_id": room, "metric": "rssi", "op": "sideways", "threshold": 1}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(bad["detail"].as_str().expect("detail").contains("op"));

    let (stop, _, running) = start(Options {
        batches: Some(8),
        ..fleet(&team.app, vec![lamp_token.clone()])
    });
    running.await.expect("joined").expect("finished");
    drop(stop);
    let device_messages = |history: &Value| -> Vec<Value> {
        history["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .filter(|m| m["sender"]["kind"] == "device")
            .cloned()
            .collect()
    };
    let (_, history) = get(
        &team.ada,
        &team.app,
        &format!("/api/v1/rooms/{room}/messages"),
    )
    .await;
    let events = device_messages(&history);
    assert_eq!(events.len(), 2, "one crossing, one return: {events:?}");
    assert!(
        events[0]["body"]
            .as_str()
            .expect("body")
            .contains("rssi is -63 — below -62.5"),
        "{}",
        events[0]["body"]
    );
    assert!(
        events[1]["body"]
            .as_str()
            .expect("body")
            .contains("back to -60"),
        "{}",
        events[1]["body"]
    );
    assert_eq!(events[0]["sender"]["name"], "lamp");

    // /cmd in the room: the lamp answers there, replying to the command.
    let (stop, _, running) = start(fleet(&team.app, vec![lamp_token]));
    let asked = say(
        &team.ada,
        &team.app,
        room,
        "/cmd lamp echo \"hello there\" `x`",
    )
    .await;
    let answer = eventually(Duration::from_secs(10), || async {
        let (_, history) = get(
            &team.ada,
            &team.app,
            &format!("/api/v1/rooms/{room}/messages"),
        )
        .await;
        device_messages(&history)
            .into_iter()
            .find(|m| m["reply_to"] == asked["id"])
    })
    .await
    .expect("the lamp answers in the room");
    let body = answer["body"].as_str().expect("body");
    assert!(body.contains("`echo` ✓"), "{body}");
    assert!(body.contains("hello there `x`"), "{body}");
    assert!(answer["html"].as_str().expect("html").contains("<code>"));
    // Commands that cannot run are refused before anything is stored.
    let (status, refused) = post(
        &team.ada,
        &team.app,
        &format!("/api/v1/rooms/{room}/messages"),
        json!({"body": "/cmd toaster ping"}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        refused["detail"]
            .as_str()
            .expect("detail")
            .contains("devices in this room: lamp"),
        "{refused}"
    );
    let (status, usage) = post(
        &team.ada,
        &team.app,
        &format!("/api/v1/rooms/{room}/messages"),
        json!({"body": "/cmd lamp"}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(usage["detail"].as_str().expect("detail").contains("Usage"));
    let (status, _) = post(
        &team.ada,
        &team.app,
        &format!("/api/v1/rooms/{room}/messages"),
        json!({"body": "/cmd lamp 'unbalanced"}),
    )
    .await;
    assert_eq!(status, 400);
    stop.cancel();
    running.await.expect("joined").expect("stopped");

    // Out of the room: its rules there go too, and /cmd no longer finds it.
    let (status, _) = send(
        &team.ada,
        &team.app,
        reqwest::Method::DELETE,
        &format!("/api/v1/rooms/{room}/devices/{lamp}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let rules = json_of(&team, &format!("/api/v1/devices/{lamp}/rules")).await;
    assert_eq!(rules["rules"].as_array().expect("rules").len(), 0);
    let (status, _) = post(
        &team.ada,
        &team.app,
        &format!("/api/v1/rooms/{room}/messages"),
        json!({"body": "/cmd lamp ping"}),
    )
    .await;
    assert_eq!(status, 400);
    // Private rooms keep devices out.
    let (status, private) = post(
        &team.ada,
        &team.app,
        "/api/v1/rooms",
        json!({"name": "secret", "topic": "", "visibility": "private", "privacy": "private"}),
    )
    .await;
    if status == 201 {
        let private = private["id"].as_i64().expect("id");
        let refused = put(private, lamp, "ada").await;
        assert_eq!(refused.0, 403, "{}", refused.1);
        assert!(
            refused.1["detail"]
                .as_str()
                .expect("detail")
                .contains("personal")
        );
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn firmware_is_signed_with_the_cli_and_checked_on_upload() {
    let team = fleet_team().await;
    let dir = tempfile::tempdir().expect("dir");
    let key = dir.path().join("fw.key");
    let image = dir.path().join("app.bin");
    std::fs::write(&image, b"an image of some firmware").expect("image");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_conclave"))
            .args(args)
            .env("CONCLAVE__DATA_DIR", dir.path())
            .output()
            .expect("runs")
    };
    let keygen = run(&["firmware", "keygen", "--out", key.to_str().expect("path")]);
    assert!(keygen.status.success(), "{keygen:?}");
    let public = std::fs::read_to_string(dir.path().join("fw.key.pub")).expect("public key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the private key is the owner's alone");
    }
    let again = run(&["firmware", "keygen", "--out", key.to_str().expect("path")]);
    assert_eq!(again.status.code(), Some(65), "keys are never overwritten");
    let signed = run(&[
        "firmware",
        "sign",
        "--key",
        key.to_str().expect("path"),
        image.to_str().expect("path"),
    ]);
    assert!(signed.status.success(), "{signed:?}");
    let signature = std::fs::read_to_string(dir.path().join("app.bin.sig")).expect("signature");
    assert_eq!(
        signature.trim(),
        String::from_utf8_lossy(&signed.stdout).trim()
    );
    let bad_key = run(&[
        "firmware",
        "sign",
        "--key",
        image.to_str().expect("path"),
        image.to_str().expect("path"),
    ]);
    assert_eq!(bad_key.status.code(), Some(65));

    let tenant = team.tenant;
    let upload = |version: &str, signature: &str, body: Vec<u8>| {
        let team = &team;
        let path = format!(
            "/api/v1/tenants/{tenant}/firmware?version={version}&signature={}",
            signature.trim()
        );
        async move {
            let response = team
                .carl
                .client
                .post(team.app.url(&path))
                .header("X-CSRF-Token", team.carl.csrf(&team.app))
                .header("Content-Type", "application/octet-stream")
                .body(body)
                .send()
                .await
                .expect("sent");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or_default())
        }
    };
    let bytes = std::fs::read(&image).expect("image");
    let (status, body) = upload("1.1.0", &signature, bytes.clone()).await;
    assert_eq!(status, 409, "no keys yet: {body}");

    let add_key = |person: &'static str, body: Value| {
        let team = &team;
        async move {
            let who = if person == "eve" {
                &team.eve
            } else {
                &team.carl
            };
            let response = who
                .post(
                    &team.app,
                    &format!("/api/v1/tenants/{tenant}/firmware/keys"),
                    body,
                )
                .await;
            response.status().as_u16()
        }
    };
    assert_eq!(
        add_key("eve", json!({"name": "release", "public_key": public})).await,
        403
    );
    assert_eq!(
        add_key("carl", json!({"name": "release", "public_key": "zz"})).await,
        400
    );
    assert_eq!(
        add_key("carl", json!({"name": "release", "public_key": public})).await,
        201
    );
    assert_eq!(
        add_key("carl", json!({"name": "again", "public_key": public})).await,
        409
    );

    let (status, stored) = upload("1.1.0", &signature, bytes.clone()).await;
    assert_eq!(status, 201, "{stored}");
    assert_eq!(stored["size"], bytes.len());
    let (status, _) = upload("1.1.0", &signature, bytes.clone()).await;
    assert_eq!(status, 409, "versions are unique");
    let mut tampered = bytes.clone();
    tampered[0] ^= 1;
    let (status, refused) = upload("1.1.1", &signature, tampered).await;
    assert_eq!(status, 400);
    assert!(
        refused["detail"]
            .as_str()
            .expect("detail")
            .contains("does not verify")
    );
    let other = SigningKey::from_bytes(&[9u8; 32]);
    let (status, _) = upload("1.1.2", &hex(&other.sign(&bytes).to_bytes()), bytes.clone()).await;
    assert_eq!(status, 400, "signed by a key the workspace does not know");
    let (status, _) = upload("bad version", &signature, bytes.clone()).await;
    assert_eq!(status, 400);
    let (status, _) = upload("1.1.3", "abc", bytes).await;
    assert_eq!(status, 400);
    let listed = json_of(&team, &format!("/api/v1/tenants/{tenant}/firmware")).await;
    assert_eq!(listed["images"].as_array().expect("images").len(), 1);
}

async fn rollout_state(team: &Team, id: i64, wanted: &str, timeout: Duration) -> Value {
    let found = eventually(timeout, || async {
        let rollout = json_of(
            team,
            &format!("/api/v1/tenants/{}/rollouts/{id}", team.tenant),
        )
        .await;
        (rollout["state"] == wanted).then_some(rollout)
    })
    .await;
    match found {
        Some(rollout) => rollout,
        None => {
            let last = json_of(
                team,
                &format!("/api/v1/tenants/{}/rollouts/{id}", team.tenant),
            )
            .await;
            panic!("rollout {id} did not become {wanted}: {last}")
        }
    }
}

#[tokio::test]
async fn a_staged_rollout_advances_halts_on_a_failing_cohort_and_rolls_back() {
    let team = fleet_team().await;
    let tenant = team.tenant;
    let signing = SigningKey::from_bytes(&[42u8; 32]);
    let added = team
        .carl
        .post(
            &team.app,
            &format!("/api/v1/tenants/{tenant}/firmware/keys"),
            json!({"name": "release", "public_key": hex(signing.verifying_key().as_bytes())}),
        )
        .await;
    assert_eq!(added.status(), 201);
    let mut images = Vec::new();
    for (version, size) in [("1.0.0", 20_000usize), ("2.0.0", 40_000)] {
        let bytes: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let response = team
            .carl
            .client
            .post(team.app.url(&format!(
                "/api/v1/tenants/{tenant}/firmware?version={version}&signature={}",
                hex(&signing.sign(&bytes).to_bytes())
            )))
            .header("X-CSRF-Token", team.carl.csrf(&team.app))
            .body(bytes)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 201);
        images.push(
            response.json::<Value>().await.expect("json")["id"]
                .as_i64()
                .expect("id"),
        );
    }
    let names: Vec<String> = (1..=10).map(|n| format!("unit-{n:02}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let devices = provision(&team, &names, &["field"]).await;
    // Devices 8, 9 and 10 (the last stage) cannot boot the new image.
    let healthy: Vec<String> = devices[..7].iter().map(|(_, t)| t.clone()).collect();
    let failing: Vec<String> = devices[7..].iter().map(|(_, t)| t.clone()).collect();
    let with_key = |tokens: Vec<String>, fail: bool| Options {
        public_key: Some(signing.verifying_key()),
        fail_updates: fail,
        interval: Some(Duration::from_millis(100)),
        download_chunk: 8 * 1024,
        binary: !fail,
        ..fleet(&team.app, tokens)
    };
    let (stop_healthy, healthy_stats, healthy_run) = start(with_key(healthy, false));
    let (stop_failing, failing_stats, failing_run) = start(with_key(failing, true));

    let bad = team
        .carl
        .post(
            &team.app,
            &format!("/api/v1/tenants/{tenant}/rollouts"),
            json!({"image_id": images[1], "tag": "field", "stages": [50, 25, 100]}),
        )
        .await;
    assert_eq!(bad.status(), 400);
    let created = team
        .carl
        .post(
            &team.app,
            &format!("/api/v1/tenants/{tenant}/rollouts"),
            json!({"image_id": images[1], "previous_image_id": images[0], "tag": "field",
                "stages": [10, 50, 100], "success_threshold": 80, "failure_threshold": 20}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let rollout: Value = created.json().await.expect("json");
    let id = rollout["id"].as_i64().expect("id");
    assert_eq!(rollout["total"], 10);
    let stages: Vec<i64> = rollout["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| d["stage"].as_i64().expect("stage"))
        .collect();
    assert_eq!(stages, vec![0, 1, 1, 1, 1, 2, 2, 2, 2, 2]);
    let busy = team
        .carl
        .post(
            &team.app,
            &format!("/api/v1/tenants/{tenant}/rollouts"),
            json!({"image_id": images[0], "devices": [devices[0].0]}),
        )
        .await;
    assert_eq!(busy.status(), 409, "one unfinished rollout per device");

    // Stages 0 and 1 boot the image; stage 2's three failures (30 % > 20 %) halt it.
    let halted = rollout_state(&team, id, "halted", Duration::from_secs(60)).await;
    assert!(
        halted["reason"]
            .as_str()
            .expect("reason")
            .contains("3 of 10"),
        "{halted}"
    );
    assert_eq!(halted["stage"], 2);
    let states = |rollout: &Value| -> Vec<String> {
        rollout["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .map(|d| d["state"].as_str().expect("state").to_owned())
            .collect()
    };
    assert_eq!(
        &states(&halted)[7..],
        ["rolled_back", "rolled_back", "rolled_back"],
        "{halted}"
    );
    // Devices already updating finish; then every healthy one runs 2.0.0.
    let settled = eventually(Duration::from_secs(20), || async {
        let rollout = json_of(&team, &format!("/api/v1/tenants/{tenant}/rollouts/{id}")).await;
        (rollout["counts"]["booted_ok"] == 7).then_some(rollout)
    })
    .await
    .expect("the healthy devices booted the image");
    assert_eq!(settled["devices"][0]["received"], 40_000, "{settled}");
    for (device, _) in &devices[..7] {
        let shown = json_of(&team, &format!("/api/v1/devices/{device}")).await;
        assert_eq!(shown["firmware"], "2.0.0");
    }
    let shown = json_of(&team, &format!("/api/v1/devices/{}", devices[9].0)).await;
    assert_eq!(
        shown["firmware"], "1.0.0",
        "a failed device keeps its version"
    );
    assert!(Stats::get(&failing_stats.updates_failed) >= 3);

    // Rolled back: the devices that took 2.0.0 are offered 1.0.0.
    let steer = |action: &'static str| {
        let team = &team;
        async move {
            team.carl
                .post(
                    &team.app,
                    &format!("/api/v1/tenants/{tenant}/rollouts/{id}/{action}"),
                    json!({}),
                )
                .await
                .status()
                .as_u16()
        }
    };
    assert_eq!(steer("dance").await, 400);
    let eve = team
        .eve
        .post(
            &team.app,
            &format!("/api/v1/tenants/{tenant}/rollouts/{id}/rollback"),
            json!({}),
        )
        .await;
    assert_eq!(eve.status(), 403);
    assert_eq!(steer("rollback").await, 200);
    assert_eq!(
        steer("resume").await,
        409,
        "a rolling-back rollout cannot resume"
    );
    rollout_state(&team, id, "rolled_back", Duration::from_secs(30)).await;
    for (device, _) in &devices[..7] {
        let shown = json_of(&team, &format!("/api/v1/devices/{device}")).await;
        assert_eq!(shown["firmware"], "1.0.0");
    }
    assert!(Stats::get(&healthy_stats.updates_booted) >= 14);
    stop_healthy.cancel();
    stop_failing.cancel();
    healthy_run.await.expect("joined").expect("stopped");
    failing_run.await.expect("joined").expect("stopped");

    // Downloads: the device's token, Range requests, only images offered to it now (a
    // failed device still has 2.0.0 on offer; the rolled-back ones have 1.0.0).
    let token = devices[9].1.clone();
    let url = team
        .app
        .url(&format!("/api/v1/device/firmware/{}", images[1]));
    let client = reqwest::Client::new();
    let part = client
        .get(&url)
        .bearer_auth(&token)
        .header("Range", "bytes=10-19")
        .send()
        .await
        .expect("sent");
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], "bytes 10-19/40000");
    assert_eq!(part.bytes().await.expect("body").len(), 10);
    let beyond = client
        .get(&url)
        .bearer_auth(&token)
        .header("Range", "bytes=50000-")
        .send()
        .await
        .expect("sent");
    assert_eq!(beyond.status(), 416);
    let whole = client
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent");
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.bytes().await.expect("body").len(), 40_000);
    let anonymous = client.get(&url).send().await.expect("sent");
    assert_eq!(anonymous.status(), 401);
    let rolled_back = client
        .get(&url)
        .bearer_auth(&devices[0].1)
        .send()
        .await
        .expect("sent");
    assert_eq!(rolled_back.status(), 404, "no longer offered to it");
}

#[tokio::test]
async fn revoking_a_token_stops_a_simulated_device_for_good() {
    let team = fleet_team().await;
    let devices = provision(&team, &["rogue"], &[]).await;
    let (id, token) = devices[0].clone();
    let (_stop, stats, running) = start(fleet(&team.app, vec![token]));
    eventually(Duration::from_secs(5), || async {
        (Stats::get(&stats.batches_acked) > 2).then_some(())
    })
    .await
    .expect("the device is sending");
    revoke(&team, id).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the simulator gives up")
        .expect("joined");
    let error = ended.expect_err("refused after revocation");
    assert!(error.to_string().contains("revoked"), "{error}");
    assert_eq!(Stats::get(&stats.connected), 0);
}

#[tokio::test]
async fn commands_and_revocations_reach_a_device_connected_to_another_node() {
    if crate::helpers::backend() != crate::helpers::TestBackend::Postgres {
        eprintln!("several nodes share a PostgreSQL database; nothing to check on SQLite");
        return;
    }
    let team = fleet_team().await;
    let (b, _stop_b, _running_b) = team.app.another_node().await;
    let devices = provision(&team, &["far"], &[]).await;
    let (id, token) = devices[0].clone();
    // The device is connected to node B; the operator works on node A.
    let (_stop, stats, running) = start(fleet(&b, vec![token]));
    eventually(Duration::from_secs(5), || async {
        (Stats::get(&stats.batches_acked) > 0).then_some(())
    })
    .await
    .expect("the device talks to node B");
    let sent = team
        .carl
        .post(
            &team.app,
            &format!("/api/v1/devices/{id}/commands"),
            json!({ "name": "echo", "args": ["across"] }),
        )
        .await;
    assert_eq!(sent.status(), 202);
    let command: Value = sent.json().await.expect("json");
    let done = command_status(&team, id, command["id"].as_i64().expect("id"), "succeeded").await;
    assert_eq!(done["output"], "across");
    revoke(&team, id).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("node B closed the device's connection")
        .expect("joined");
    assert!(ended.is_err(), "refused after revocation");
}

#[tokio::test]
async fn the_simulate_command_claims_runs_and_reports() {
    let team = fleet_team().await;
    let code = claim_code(&team, "cli-sim", &[]).await;
    let dir = tempfile::tempdir().expect("dir");
    let tokens = dir.path().join("tokens");
    let run = |args: Vec<String>| {
        let dir = dir.path().to_owned();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_conclave"))
                .args(args)
                .env("CONCLAVE__DATA_DIR", dir)
                .env("RUST_LOG", "error")
                .output()
                .await
                .expect("runs")
        }
    };
    let args = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "device",
            "simulate",
            "--url",
            &team.app.address,
            "--token-file",
            tokens.to_str().expect("path"),
            "--batches",
            "2",
            "--interval-ms",
            "20",
            "--binary",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    };
    let output = run(args(&["--claim-code", &code])).await;
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("readings acked 6"), "{stdout}");
    assert!(
        std::fs::read_to_string(&tokens)
            .expect("tokens")
            .starts_with("cnd_")
    );
    // Two devices, one token: a clear refusal.
    let output = run(args(&["--count", "2"])).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("2 devices need 2 tokens"),
        "{output:?}"
    );
    let output = run(vec![
        "device".into(),
        "simulate".into(),
        "--url".into(),
        "https://example.com".into(),
    ])
    .await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("ws://"));
}
