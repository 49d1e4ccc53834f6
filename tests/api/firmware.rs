//! The firmware's logic (`conclave-device-core`, the same code the ESP32 runs) against the
//! real server, through the simulator's transport: the claim exchange over HTTP, the offline
//! buffer (dated readings, drops reported in `hello`), resends after a lost connection with
//! nothing doubled, commands, and an update downloaded in Range requests, verified, and then
//! confirmed — or rolled back — by the boot guard; the firmware's own WebSocket client
//! (`conclave_device_core::websocket`) over a plain socket. And `conclave device provision`
//! writing a record over a serial line to the firmware's console protocol.

use std::time::Duration;

use conclave::devices::simulator::Transport;
use conclave_device_core::endpoint::Endpoint;
use conclave_device_core::http;
use conclave_device_core::link::{Event, Identity, Link, State};
use conclave_device_core::ota::{self, Boot, Download, PendingUpdate, SlotState};
use conclave_device_core::provision::{Action, Console};
use conclave_protocol as wire;
use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::device_fleet::{claim_code, command_status, device_id, fleet_team, hex, json_of};
use crate::helpers::Team;

type DeviceLink = Link<8, 2>;

fn link(firmware: &str) -> DeviceLink {
    Link::new(
        Identity {
            firmware: firmware.into(),
            chip: "esp32c3".into(),
            capabilities: vec!["telemetry".into(), "commands".into(), "ota".into()],
        },
        60,
    )
}

/// What the firmware's uptime clock would say: milliseconds since the test started.
fn uptime(start: std::time::Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// One HTTP exchange over a fresh TCP connection, as the firmware does it.
async fn exchange(address: &str, request: &[u8]) -> (u16, Vec<u8>) {
    let endpoint = Endpoint::parse(address).expect("address");
    let mut stream = tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .expect("connect");
    stream.write_all(request).await.expect("write");
    let mut received = Vec::new();
    stream.read_to_end(&mut received).await.expect("read");
    let head = http::parse_head(&received)
        .expect("valid HTTP")
        .expect("a whole head");
    let body = received[head.length..head.length + head.content_length].to_vec();
    (head.status, body)
}

/// The claim as the firmware makes it (Connection: close, Content-Length body).
async fn claim(team: &Team, code: &str) -> Result<String, http::HttpError> {
    let server = Endpoint::parse(&team.app.address).expect("address");
    let request = http::claim_request(&server, code, "0.1.0", "esp32c3");
    let (status, body) = exchange(&team.app.address, &request).await;
    http::claim_answer(status, &body)
}

/// Sends what the link has to send and feeds it what the server says, until `done` holds
/// (or panics after 10 s). Events other than `None` are returned to the caller in order.
async fn pump(
    transport: &mut Transport,
    link: &mut DeviceLink,
    start: std::time::Instant,
    mut done: impl FnMut(&DeviceLink, &[Event]) -> bool,
) -> Vec<Event> {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        while let Some(frame) = link.next_frame() {
            transport.send(&frame).await.expect("sent");
        }
        if done(link, &events) {
            return events;
        }
        let message = tokio::time::timeout_at(deadline, transport.receive())
            .await
            .expect("the server answers in time")
            .expect("a readable frame")
            .expect("the connection stays open");
        match link.receive(message, uptime(start)) {
            Event::None => {}
            event => events.push(event),
        }
    }
}

async fn connect(team: &Team, token: &str, link: &mut DeviceLink) -> Transport {
    let mut transport = Transport::connect(&team.app.address, token, true)
        .await
        .expect("connects");
    transport.send(&link.connected()).await.expect("hello");
    transport
}

#[tokio::test]
async fn the_firmware_link_claims_buffers_offline_and_loses_nothing_across_a_dropped_connection() {
    let team = fleet_team().await;
    let code = claim_code(&team, "esp-1", &["bench"]).await;
    let token = claim(&team, &code).await.expect("the claim gives a token");
    assert!(token.starts_with("cnd_"));
    match claim(&team, &code).await {
        Err(http::HttpError::Status(status, detail)) => {
            assert!((400..500).contains(&status), "{status}");
            assert!(!detail.is_empty(), "the device is told why");
        }
        other => panic!("a used claim code is refused, got {other:?}"),
    }
    let id = device_id(&team, &token).await;

    // Ten readings a second apart while the network is down (the device has been up for two
    // minutes): the buffer holds eight batches, so the two oldest (four readings) are dropped
    // and counted.
    let start = std::time::Instant::now()
        .checked_sub(Duration::from_secs(120))
        .expect("the clock is past its epoch");
    let mut link = link("0.1.0");
    for i in 0..10u16 {
        link.record(
            u64::from(i) * 1_000,
            &[
                ("chip_temperature", 30.0 + f32::from(i)),
                ("adc_mv", 1_000.0),
            ],
        );
    }
    assert_eq!(link.outbox.dropped(), 4);
    let mut transport = connect(&team, &token, &mut link).await;
    pump(&mut transport, &mut link, start, |l, _| {
        l.state() == State::Online && l.outbox.is_empty()
    })
    .await;
    assert_eq!(
        link.outbox.dropped(),
        0,
        "the welcome cleared what hello reported"
    );

    // Three more are sent, and the connection dies before their acks are read.
    for i in 10..13u16 {
        link.record(
            u64::from(i) * 1_000,
            &[
                ("chip_temperature", 30.0 + f32::from(i)),
                ("adc_mv", 1_000.0),
            ],
        );
    }
    while let Some(frame) = link.next_frame() {
        transport.send(&frame).await.expect("sent");
    }
    drop(transport);
    link.disconnected();
    assert_eq!(link.outbox.len(), 3, "unacknowledged batches are kept");
    let mut transport = connect(&team, &token, &mut link).await;
    pump(&mut transport, &mut link, start, |l, _| {
        l.state() == State::Online && l.outbox.is_empty()
    })
    .await;
    transport.close().await;

    let device = json_of(&team, &format!("/api/v1/devices/{id}")).await;
    assert_eq!(device["readings_dropped"], 4, "{device}");
    assert_eq!(device["firmware"], "0.1.0");
    assert_eq!(device["chip"], "esp32c3");
    assert_eq!(
        device["last_seq"], 13,
        "batches 3 to 13 (1 and 2 were dropped), each stored once"
    );
    let raw = json_of(
        &team,
        &format!("/api/v1/devices/{id}/telemetry?metric=chip_temperature"),
    )
    .await;
    let points = raw["series"][0]["points"].as_array().expect("points");
    let values: Vec<f64> = points
        .iter()
        .map(|p| p[1].as_f64().expect("value"))
        .collect();
    assert_eq!(
        values,
        (2..13).map(|i| 30.0 + f64::from(i)).collect::<Vec<_>>(),
        "the oldest two dropped, none doubled: {raw}"
    );
    // Readings taken offline are dated by when they were taken (a second apart), not by
    // when they arrived.
    let times: Vec<chrono::DateTime<chrono::FixedOffset>> = points
        .iter()
        .map(|p| {
            chrono::DateTime::parse_from_rfc3339(p[0].as_str().expect("time")).expect("rfc3339")
        })
        .collect();
    for pair in times.windows(2) {
        let gap = (pair[1] - pair[0]).num_milliseconds();
        assert!(
            (900..=1_100).contains(&gap),
            "readings a second apart: {raw}"
        );
    }
    let shown = team
        .carl
        .client
        .get(team.app.url(&format!("/devices/{id}")))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    assert!(
        shown.contains("Readings dropped offline"),
        "the device page says so"
    );
}

#[tokio::test]
async fn the_firmware_link_runs_commands_once_and_answers_them() {
    let team = fleet_team().await;
    let code = claim_code(&team, "esp-2", &[]).await;
    let token = claim(&team, &code).await.expect("token");
    let start = std::time::Instant::now();
    let mut link = link("0.1.0");
    let mut transport = connect(&team, &token, &mut link).await;
    pump(&mut transport, &mut link, start, |l, _| {
        l.state() == State::Online
    })
    .await;
    let id: i64 = device_id(&team, &token).await;
    let posted = team
        .carl
        .post(
            &team.app,
            &format!("/api/v1/devices/{id}/commands"),
            json!({"name": "led", "args": ["on"]}),
        )
        .await;
    assert_eq!(posted.status(), 202);
    let command_id = posted.json::<Value>().await.expect("json")["id"]
        .as_i64()
        .expect("id");
    let events = pump(&mut transport, &mut link, start, |_, events| {
        !events.is_empty()
    })
    .await;
    let Event::Run(command) = &events[0] else {
        panic!("a command to run, got {events:?}");
    };
    assert_eq!(
        (command.name.as_str(), command.args.as_slice()),
        ("led", &["on".to_owned()][..])
    );
    link.command_done(command.id, wire::CommandStatus::Succeeded, Some("led on"));
    while let Some(frame) = link.next_frame() {
        transport.send(&frame).await.expect("sent");
    }
    let done = command_status(&team, id, command_id, "succeeded").await;
    assert_eq!(done["output"], "led on");
    transport.close().await;
}

/// Downloads an offered image as the firmware does: Range requests of 16 KiB on one
/// keep-alive connection, each answer checked and fed to the verifier.
async fn download(offer: &wire::OtaOffer, token: &str, download: &mut Download) {
    let url = Endpoint::parse(&offer.url).expect("the offer's URL");
    let mut stream = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
        .await
        .expect("connect");
    while !download.is_complete() {
        let from = download.received();
        let to = (from + 16 * 1_024).min(download.size()) - 1;
        stream
            .write_all(&http::range_request(&url, token, &offer.sha256, from, to))
            .await
            .expect("request");
        let mut received = Vec::new();
        let head = loop {
            let mut chunk = [0u8; 1_024];
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "the server keeps the connection open");
            received.extend_from_slice(&chunk[..n]);
            if let Some(head) = http::parse_head(&received).expect("valid HTTP") {
                break head;
            }
        };
        assert_eq!((head.status, head.range_start), (206, Some(from)));
        while received.len() < head.length + head.content_length {
            let mut chunk = [0u8; 4_096];
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0);
            received.extend_from_slice(&chunk[..n]);
        }
        download
            .update(&received[head.length..head.length + head.content_length])
            .expect("within the offer's size");
    }
}

fn status(offer: &wire::OtaOffer, state: wire::OtaState, received: u32) -> wire::OtaStatus {
    wire::OtaStatus {
        rollout: offer.rollout,
        version: offer.version.clone(),
        state,
        received,
        detail: None,
    }
}

#[tokio::test]
async fn an_update_is_verified_on_the_device_then_confirmed_or_rolled_back_by_the_boot_guard() {
    let team = fleet_team().await;
    let tenant = team.tenant;
    let signing = SigningKey::from_bytes(&[21u8; 32]);
    let public_hex = hex(signing.verifying_key().as_bytes());
    let added = team
        .carl
        .post(
            &team.app,
            &format!("/api/v1/tenants/{tenant}/firmware/keys"),
            json!({"name": "release", "public_key": public_hex}),
        )
        .await;
    assert_eq!(added.status(), 201);
    let image: Vec<u8> = (0..70_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let uploaded = team
        .carl
        .client
        .post(team.app.url(&format!(
            "/api/v1/tenants/{tenant}/firmware?version=1.1.0&signature={}",
            hex(&signing.sign(&image).to_bytes())
        )))
        .header("X-CSRF-Token", team.carl.csrf(&team.app))
        .body(image.clone())
        .send()
        .await
        .expect("sent");
    assert_eq!(uploaded.status(), 201);
    let image_id = uploaded.json::<Value>().await.expect("json")["id"]
        .as_i64()
        .expect("id");

    // Two devices on 0.1.0: "good" boots the new image, "bad" restarts during its trial.
    let mut devices = Vec::new();
    for name in ["good", "bad"] {
        let code = claim_code(&team, name, &["lab"]).await;
        let token = claim(&team, &code).await.expect("token");
        let id = device_id(&team, &token).await;
        devices.push((id, token));
    }
    let created = team
        .carl
        .post(
            &team.app,
            &format!("/api/v1/tenants/{tenant}/rollouts"),
            json!({"image_id": image_id, "devices": [devices[0].0, devices[1].0], "failure_threshold": 100}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let rollout = created.json::<Value>().await.expect("json")["id"]
        .as_i64()
        .expect("id");
    // The key the firmware has compiled in, parsed as the firmware parses it.
    let key = ota::public_key(&public_hex).expect("a valid key");

    for (index, (_, token)) in devices.iter().enumerate() {
        let start = std::time::Instant::now();
        let mut old = link("0.1.0");
        let mut transport = connect(&team, token, &mut old).await;
        let events = pump(&mut transport, &mut old, start, |_, events| {
            events.iter().any(|e| matches!(e, Event::Offer(_)))
        })
        .await;
        let Some(Event::Offer(offer)) = events.into_iter().find(|e| matches!(e, Event::Offer(_)))
        else {
            unreachable!()
        };
        assert_eq!((offer.version.as_str(), offer.size), ("1.1.0", 70_000));
        // A device with another key compiled in refuses the image after downloading it.
        let stranger = SigningKey::from_bytes(&[5u8; 32]).verifying_key();
        let mut refused = Download::start(&offer, Some(&stranger), 1_966_080).expect("starts");
        download(&offer, token, &mut refused).await;
        assert_eq!(refused.finish(), Err(ota::OtaError::BadSignature));

        let mut checked = Download::start(&offer, Some(&key), 1_966_080).expect("starts");
        old.ota_status(status(&offer, wire::OtaState::Downloading, 0));
        download(&offer, token, &mut checked).await;
        old.ota_status(status(
            &offer,
            wire::OtaState::Verifying,
            checked.received(),
        ));
        checked.finish().expect("size, SHA-256 and signature match");
        old.ota_status(status(&offer, wire::OtaState::Installed, 70_000));
        while let Some(frame) = old.next_frame() {
            transport.send(&frame).await.expect("sent");
        }
        transport.close().await;
        let pending = PendingUpdate {
            rollout: offer.rollout,
            version: heapless::String::try_from("1.1.0").expect("short"),
        };

        // The restart, as the firmware's main() sees it.
        let (running, boot) = if index == 0 {
            (
                "1.1.0",
                ota::on_boot("1.1.0", SlotState::New, Some(pending)),
            )
        } else {
            // The new image crashed during its trial: the guard rolls back, and the old image
            // finds the record.
            let crashed = ota::on_boot("1.1.0", SlotState::PendingVerify, Some(pending.clone()));
            assert!(matches!(crashed, Boot::RollBack(_)));
            (
                "0.1.0",
                ota::on_boot("0.1.0", SlotState::Valid, Some(pending)),
            )
        };
        let start = std::time::Instant::now();
        let mut after = link(running);
        if let Some(report) = ota::boot_report(&boot) {
            after.report_after_welcome(report);
        }
        let mut transport = connect(&team, token, &mut after).await;
        pump(&mut transport, &mut after, start, |l, _| {
            l.state() == State::Online
        })
        .await;
        transport.close().await;
    }

    // Half the devices failed, so the rollout neither completes (90 % must succeed) nor halts
    // (the failure threshold is 100 %): it is the devices' states that matter here.
    let settled = crate::helpers::eventually(Duration::from_secs(10), || async {
        let shown = json_of(
            &team,
            &format!("/api/v1/tenants/{tenant}/rollouts/{rollout}"),
        )
        .await;
        (shown["counts"]["booted_ok"] == 1 && shown["counts"]["rolled_back"] == 1).then_some(shown)
    })
    .await
    .expect("both devices reported");
    let states: Vec<&str> = settled["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| d["state"].as_str().expect("state"))
        .collect();
    assert_eq!(states, ["booted_ok", "rolled_back"], "{settled}");
    let good = json_of(&team, &format!("/api/v1/devices/{}", devices[0].0)).await;
    assert_eq!(good["firmware"], "1.1.0");
    let bad = json_of(&team, &format!("/api/v1/devices/{}", devices[1].0)).await;
    assert_eq!(bad["firmware"], "0.1.0");
}

/// The device's side of a serial line: the firmware's console protocol on a pseudo-terminal,
/// printing log lines in between as the real firmware does.
fn fake_device(mut port: serialport::TTYPort) -> std::thread::JoinHandle<Vec<Action>> {
    use serialport::SerialPort as _;
    use std::io::{Read as _, Write as _};
    std::thread::spawn(move || {
        port.set_timeout(Duration::from_millis(100))
            .expect("timeout");
        let mut console = Console::new(None, "esp32c3", "0.1.0");
        let mut actions = Vec::new();
        let _ = port.write_all(b"I (312) boot: not provisioned\r\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut buffer = [0u8; 64];
        while std::time::Instant::now() < deadline {
            let n = match port.read(&mut buffer) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                Err(_) => break,
            };
            for byte in &buffer[..n] {
                let Some(output) = console.feed(*byte) else {
                    continue;
                };
                let _ = port.write_all(b"I (900) wifi: scanning\r\n");
                for line in output.lines {
                    let _ = port.write_all(format!("{line}\r\n").as_bytes());
                }
                match output.action {
                    Some(Action::Save(record)) => {
                        console.saved();
                        let _ = port.write_all(b"@conclave OK saved\r\n");
                        actions.push(Action::Save(record));
                    }
                    Some(Action::Reboot) => {
                        actions.push(Action::Reboot);
                        return actions;
                    }
                    Some(other) => actions.push(other),
                    None => {}
                }
            }
        }
        actions
    })
}

#[test]
fn conclave_device_provision_writes_the_record_over_a_serial_line() {
    use serialport::SerialPort as _;
    let (device_end, host_end) = serialport::TTYPort::pair().expect("a pseudo-terminal");
    let path = host_end.name().expect("the pty's path");
    let device = fake_device(device_end);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_conclave"))
        .args([
            "device",
            "provision",
            "--port",
            &path,
            "--wifi-ssid",
            "Lab Network",
            "--server",
            "https://conclave.example.com",
            "--claim-code",
            "K7QX-M2PD-4TRW",
        ])
        .env("CONCLAVE_WIFI_PASSWORD", "correct horse")
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("chip=esp32c3"), "{stdout}");
    assert!(stdout.contains("restarting"), "{stdout}");
    assert!(
        !stdout.contains("correct horse"),
        "the passphrase is never printed"
    );
    let actions = device.join().expect("the device thread");
    let Some(Action::Save(record)) = actions.first() else {
        panic!("the record was saved: {actions:?}");
    };
    assert_eq!(record.wifi_ssid.as_str(), "Lab Network");
    assert_eq!(record.wifi_password.as_str(), "correct horse");
    assert_eq!(record.server_url.as_str(), "https://conclave.example.com");
    assert_eq!(record.claim_code.as_str(), "K7QX-M2PD-4TRW");
    assert!(record.token.is_empty());
    assert_eq!(actions.last(), Some(&Action::Reboot));
    drop(host_end);
}

#[test]
fn conclave_device_provision_refuses_bad_settings_and_silent_ports() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_conclave"))
            .args(["device", "provision"])
            .args(args)
            .env_remove("CONCLAVE_WIFI_PASSWORD")
            .output()
            .expect("runs")
    };
    // Checked before anything is sent, with the firmware's own rules.
    let short = run(&[
        "--port",
        "/dev/null",
        "--wifi-ssid",
        "x",
        "--wifi-password",
        "short",
        "--server",
        "https://h.example",
        "--claim-code",
        "C",
    ]);
    assert_eq!(short.status.code(), Some(65));
    assert!(
        String::from_utf8_lossy(&short.stderr).contains("8 to 63"),
        "{short:?}"
    );
    let scheme = run(&[
        "--port",
        "/dev/null",
        "--wifi-ssid",
        "x",
        "--server",
        "ftp://h",
        "--token",
        "cnd_x",
    ]);
    assert_eq!(scheme.status.code(), Some(65));
    // A port where nothing answers: a clear message within the timeout.
    let (_device_end, host_end) = serialport::TTYPort::pair().expect("a pseudo-terminal");
    use serialport::SerialPort as _;
    let path = host_end.name().expect("path");
    let silent = run(&[
        "--port",
        &path,
        "--wifi-ssid",
        "x",
        "--server",
        "http://h:8080",
        "--token",
        "cnd_x",
        "--timeout-secs",
        "2",
    ]);
    assert_eq!(silent.status.code(), Some(69));
    assert!(
        String::from_utf8_lossy(&silent.stderr).contains("no Conclave firmware answered"),
        "{silent:?}"
    );
    let missing = run(&[
        "--port",
        "/dev/does-not-exist",
        "--wifi-ssid",
        "x",
        "--server",
        "http://h",
        "--token",
        "cnd_x",
    ]);
    assert_eq!(missing.status.code(), Some(69));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("cannot open"),
        "{missing:?}"
    );
}

#[tokio::test]
async fn the_firmware_websocket_client_greets_sends_and_closes_cleanly() {
    use conclave_device_core::websocket::{Incoming, WebSocket, WsFailure};
    use embedded_io_adapters::tokio_1::FromTokio;

    let team = fleet_team().await;
    let code = claim_code(&team, "esp-ws", &[]).await;
    let token = claim(&team, &code).await.expect("token");
    let endpoint = Endpoint::websocket(&team.app.address).expect("endpoint");
    let open = || async {
        let socket = tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .expect("connect");
        FromTokio::new(socket)
    };

    // A revoked or unknown token is refused at the handshake with 401.
    let refused =
        WebSocket::connect(open().await, rand_core_06::OsRng, &endpoint, "cnd_nope").await;
    assert!(matches!(refused, Err(WsFailure::Refused(Some(401)))));

    let start = std::time::Instant::now();
    let mut link = link("0.1.0");
    link.record(0, &[("chip_temperature", 41.5), ("adc_mv", 1_650.0)]);
    let mut ws = WebSocket::connect(open().await, rand_core_06::OsRng, &endpoint, &token)
        .await
        .expect("upgraded");
    ws.send(&link.connected()).await.expect("hello");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // The firmware's loop: decode what arrived, send what is due, then wait for more.
    loop {
        while let Some(incoming) = ws.process().await.expect("a valid frame") {
            match incoming {
                Incoming::Message(message) => {
                    link.receive(message, uptime(start));
                }
                Incoming::Nothing => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        while let Some(frame) = link.next_frame() {
            ws.send(&frame).await.expect("sent");
        }
        if link.state() == State::Online && link.outbox.is_empty() {
            break;
        }
        tokio::time::timeout_at(deadline, ws.fill())
            .await
            .expect("the server answers")
            .expect("the connection stays open");
    }
    ws.ping().await.expect("a ping");
    tokio::time::timeout(Duration::from_secs(5), ws.close())
        .await
        .expect("the server answers the close");

    let id = device_id(&team, &token).await;
    let raw = json_of(
        &team,
        &format!("/api/v1/devices/{id}/telemetry?metric=adc_mv"),
    )
    .await;
    assert_eq!(raw["series"][0]["points"][0][1], 1_650.0, "{raw}");
    let device = json_of(&team, &format!("/api/v1/devices/{id}")).await;
    assert_eq!(device["online"], false, "the close was clean and seen");
}
