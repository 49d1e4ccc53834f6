//! Devices on the realtime endpoint, as a device would use it: provisioned with a claim code,
//! connected with its token in JSON or binary, telemetry acknowledged by seq with nothing lost
//! and nothing doubled across reconnects and resends, limits, and a revoked token closing the
//! connection at once.

use std::time::Duration;

use conclave_protocol as wire;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::json;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest as _};

use crate::helpers::{TestApp, team};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A provisioned device's id and token.
async fn provision(app: &TestApp, team: &crate::helpers::Team, name: &str) -> (i64, String) {
    let created = team
        .carl
        .post(
            app,
            &format!("/api/v1/tenants/{}/devices/claims", team.tenant),
            json!({ "name": name, "kind": "sensor" }),
        )
        .await;
    assert_eq!(created.status(), 201);
    let code = created.json::<serde_json::Value>().await.expect("json")["code"]
        .as_str()
        .expect("code")
        .to_owned();
    let provisioned: serde_json::Value = reqwest::Client::new()
        .post(app.url("/api/v1/devices/claim"))
        .json(&json!({ "code": code }))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    (
        provisioned["device"]["id"].as_i64().expect("id"),
        provisioned["token"].as_str().expect("token").to_owned(),
    )
}

struct DeviceClient {
    socket: Socket,
    binary: bool,
}

impl DeviceClient {
    async fn connect(app: &TestApp, token: &str, binary: bool) -> Self {
        let url = app.url("/api/v1/ws").replace("http://", "ws://");
        let mut request = url.into_client_request().expect("request");
        let protocol = if binary {
            wire::SUBPROTOCOL_BINARY
        } else {
            wire::SUBPROTOCOL_JSON
        };
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            format!("{protocol}, bearer.{token}")
                .parse()
                .expect("header"),
        );
        let (socket, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("connects");
        assert_eq!(response.headers()["sec-websocket-protocol"], protocol);
        Self { socket, binary }
    }

    async fn send(&mut self, message: &wire::DeviceMessage) {
        let frame = if self.binary {
            Message::Binary(wire::to_binary(message).expect("encodes").into())
        } else {
            Message::Text(
                String::from_utf8(wire::to_json(message).expect("encodes"))
                    .expect("utf-8")
                    .into(),
            )
        };
        self.socket.send(frame).await.expect("sent");
    }

    async fn receive(&mut self) -> wire::ServerMessage {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), self.socket.next())
                .await
                .expect("an answer in time")
                .expect("open")
                .expect("a frame");
            match frame {
                Message::Text(text) => {
                    return wire::from_json(text.as_bytes()).expect("a server message");
                }
                Message::Binary(bytes) => {
                    return wire::from_binary(&bytes).expect("a server message");
                }
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    async fn hello(&mut self) -> wire::Welcome {
        self.send(&wire::DeviceMessage::Hello(wire::Hello {
            protocol: wire::VERSION,
            firmware: "1.0.0".into(),
            chip: "simulator".into(),
            capabilities: vec!["telemetry".into()],
            dropped_readings: 0,
        }))
        .await;
        match self.receive().await {
            wire::ServerMessage::Welcome(welcome) => welcome,
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    async fn telemetry(&mut self, seq: u64) -> wire::ServerMessage {
        self.send(&wire::DeviceMessage::Telemetry(wire::Telemetry {
            seq,
            at_ms: 0,
            readings: vec![
                wire::Reading {
                    metric: "temperature".into(),
                    value: 20.0 + seq as f64,
                },
                wire::Reading {
                    metric: "humidity".into(),
                    value: 40.0,
                },
            ],
        }))
        .await;
        self.receive().await
    }

    async fn close_code(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.socket.next()).await {
                Ok(Some(Ok(Message::Close(Some(frame))))) => return Some(frame.code.into()),
                Ok(Some(Ok(Message::Close(None)))) | Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(_))) => {}
                Err(_) => panic!("the connection was not closed in time"),
            }
        }
    }
}

async fn stored_rows(app: &TestApp, device: i64) -> i64 {
    use diesel::prelude::*;
    app.state
        .db
        .run(move |conn| {
            conclave::schema::telemetry::table
                .filter(conclave::schema::telemetry::device_id.eq(device))
                .count()
                .get_result::<i64>(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .expect("count")
}

#[tokio::test]
async fn telemetry_is_acknowledged_by_seq_and_never_lost_or_doubled_across_reconnects() {
    let team = team().await;
    let app = &team.app;
    let (id, token) = provision(app, &team, "sensor-1").await;
    let mut device = DeviceClient::connect(app, &token, false).await;
    let welcome = device.hello().await;
    assert_eq!(welcome.device_id, id.unsigned_abs());
    assert_eq!(welcome.last_seq, 0);
    for seq in 1..=3 {
        assert_eq!(
            device.telemetry(seq).await,
            wire::ServerMessage::TelemetryAck(wire::TelemetryAck { seq })
        );
    }
    assert_eq!(stored_rows(app, id).await, 6);
    let listed = team
        .eve
        .get_json(app, &format!("/api/v1/devices/{id}"))
        .await;
    assert_eq!(listed["online"], true);
    assert_eq!(listed["firmware"], "1.0.0");
    drop(device);

    // Reconnected (binary this time): it resends 3 (its ack was lost) and goes on with 4.
    let mut device = DeviceClient::connect(app, &token, true).await;
    let welcome = device.hello().await;
    assert_eq!(welcome.last_seq, 3, "the device learns what is stored");
    assert_eq!(
        device.telemetry(3).await,
        wire::ServerMessage::TelemetryAck(wire::TelemetryAck { seq: 3 })
    );
    assert_eq!(
        device.telemetry(4).await,
        wire::ServerMessage::TelemetryAck(wire::TelemetryAck { seq: 4 })
    );
    assert_eq!(stored_rows(app, id).await, 8, "3 was not stored twice");
}

#[tokio::test]
async fn bad_frames_are_answered_and_hello_comes_first() {
    let team = team().await;
    let app = &team.app;
    let (_, token) = provision(app, &team, "sensor-2").await;
    let mut device = DeviceClient::connect(app, &token, false).await;
    match device.telemetry(1).await {
        wire::ServerMessage::Error(e) => assert_eq!(e.code, "hello_first"),
        other => panic!("{other:?}"),
    }
    device.hello().await;
    device
        .socket
        .send(Message::Text("{\"telemetry\": 5}".into()))
        .await
        .expect("sent");
    match device.receive().await {
        wire::ServerMessage::Error(e) => assert_eq!(e.code, "bad_frame"),
        other => panic!("{other:?}"),
    }
    device
        .socket
        .send(Message::Text(
            r#"{"telemetry":{"seq":1,"at_ms":0,"readings":[{"metric":"bad name","value":1}]}}"#
                .into(),
        ))
        .await
        .expect("sent");
    match device.receive().await {
        wire::ServerMessage::Error(e) => assert!(e.message.contains("metric"), "{}", e.message),
        other => panic!("{other:?}"),
    }
    // A binary frame on a JSON connection is not this protocol.
    device
        .socket
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .expect("sent");
    assert_eq!(device.close_code().await, Some(1003));
    // An unknown token, and an unsupported subprotocol, are refused at the handshake.
    let url = app.url("/api/v1/ws").replace("http://", "ws://");
    let mut request = url.clone().into_client_request().expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "conclave.v1, bearer.cnd_nope".parse().expect("h"),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        format!("conclave.v9, bearer.{token}").parse().expect("h"),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 400),
        other => panic!("expected 400, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn revoking_the_token_closes_the_connection_at_once() {
    let team = team().await;
    let app = &team.app;
    let (id, token) = provision(app, &team, "sensor-3").await;
    let mut device = DeviceClient::connect(app, &token, true).await;
    device.hello().await;
    let revoked = team
        .carl
        .client
        .delete(app.url(&format!("/api/v1/devices/{id}/token")))
        .header("X-CSRF-Token", team.carl.csrf(app))
        .send()
        .await
        .expect("sent");
    assert_eq!(revoked.status(), 204);
    assert_eq!(device.close_code().await, Some(4001));
    let url = app.url("/api/v1/ws").replace("http://", "ws://");
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        format!("conclave.v1.bin, bearer.{token}")
            .parse()
            .expect("h"),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    let listed = team
        .eve
        .get_json(app, &format!("/api/v1/devices/{id}"))
        .await;
    assert_eq!(listed["online"], false);
}

#[tokio::test]
async fn telemetry_faster_than_the_device_rate_is_not_acknowledged() {
    let team = crate::helpers::team_with(|s| s.devices.telemetry_batches_per_second = 1).await;
    let app = &team.app;
    let (id, token) = provision(app, &team, "chatty").await;
    let mut device = DeviceClient::connect(app, &token, false).await;
    device.hello().await;
    let mut acked = 0;
    let mut refused = 0;
    for seq in 1..=5 {
        match device.telemetry(seq).await {
            wire::ServerMessage::TelemetryAck(_) => acked += 1,
            wire::ServerMessage::Error(e) if e.code == "rate_limited" => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((acked, refused), (2, 3), "a burst of two, then refusals");
    assert_eq!(
        stored_rows(app, id).await,
        4,
        "refused batches are not stored"
    );
}

#[tokio::test]
async fn stored_telemetry_is_queried_raw_or_in_buckets_and_charted_on_the_device_page() {
    let team = team().await;
    let app = &team.app;
    let (id, token) = provision(app, &team, "sensor-4").await;
    let mut device = DeviceClient::connect(app, &token, false).await;
    device.hello().await;
    for seq in 1..=3 {
        device.telemetry(seq).await;
    }
    let raw = team
        .eve
        .get_json(
            app,
            &format!("/api/v1/devices/{id}/telemetry?metric=temperature"),
        )
        .await;
    let series = raw["series"].as_array().expect("series");
    assert_eq!(series.len(), 1);
    let values: Vec<f64> = series[0]["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| p[1].as_f64().expect("value"))
        .collect();
    assert_eq!(values, [21.0, 22.0, 23.0]);
    let bucketed = team
        .eve
        .get_json(app, &format!("/api/v1/devices/{id}/telemetry?step=1d"))
        .await;
    let series = bucketed["series"].as_array().expect("series");
    assert_eq!(series.len(), 2, "both metrics");
    let temperature = series
        .iter()
        .find(|s| s["metric"] == "temperature")
        .expect("temperature");
    let total: u64 = temperature["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| b["count"].as_u64().expect("count"))
        .sum();
    assert_eq!(total, 3);
    for bad in [
        "?step=fortnight",
        "?step=0s",
        "?from=yesterday",
        "?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
        "?step=1s&from=2020-01-01T00:00:00Z",
    ] {
        let response = team
            .eve
            .client
            .get(app.url(&format!("/api/v1/devices/{id}/telemetry{bad}")))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 400, "{bad}");
    }
    let page = team.eve.page(app, &format!("/devices/{id}")).await;
    assert!(
        page.contains("data-metric=\"temperature\""),
        "a chart per metric"
    );
    assert!(page.contains("<polyline") && page.contains("<circle"));
}

#[tokio::test]
async fn a_device_that_connects_again_replaces_its_old_connection_and_nothing_it_said_is_lost() {
    let team = team().await;
    let app = &team.app;
    let (id, token) = provision(app, &team, "rebooter").await;
    let mut old = DeviceClient::connect(app, &token, false).await;
    old.hello().await;
    // The old connection says something, then the device is back on a new one.
    old.send(&wire::DeviceMessage::Telemetry(wire::Telemetry {
        seq: 1,
        at_ms: 0,
        readings: vec![wire::Reading {
            metric: "temperature".into(),
            value: 20.0,
        }],
    }))
    .await;
    let mut new = DeviceClient::connect(app, &token, true).await;
    let welcome = new.hello().await;
    assert_eq!(
        welcome.last_seq, 1,
        "the old connection's batch is stored first"
    );
    assert_eq!(old.close_code().await, Some(4011));
    match new.telemetry(2).await {
        wire::ServerMessage::TelemetryAck(ack) => assert_eq!(ack.seq, 2),
        other => panic!("{other:?}"),
    }
    let listed = team
        .eve
        .get_json(app, &format!("/api/v1/devices/{id}"))
        .await;
    assert_eq!(listed["online"], true);
    assert_eq!(listed["last_seq"], 2);
}
