//! The realtime endpoint `/api/v1/ws` through a real WebSocket client: refusals before the
//! upgrade, live events, presence, resume without gaps or duplicates, slow consumers, limits
//! and their close codes, revocation, the admin API and shutdown.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::helpers::{Device, TestApp, eventually, team, team_with};
use crate::rooms::{create_room, delete, patch, post};

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How a client connects.
pub(crate) enum Auth<'a> {
    /// A browser: its cookies, from this origin.
    Browser(&'a Device, Option<&'a str>),
    /// A script: the token in `Sec-WebSocket-Protocol`.
    Token(&'a str),
    Nothing,
}

pub(crate) fn request(app: &TestApp, auth: Auth<'_>) -> tungstenite::handshake::client::Request {
    let url = app.url("/api/v1/ws").replace("http://", "ws://");
    let mut request = url.into_client_request().unwrap();
    let headers = request.headers_mut();
    match auth {
        Auth::Browser(person, origin) => {
            headers.insert("Cookie", person.cookie_header(app).parse().unwrap());
            if let Some(origin) = origin {
                headers.insert("Origin", origin.parse().unwrap());
            }
        }
        Auth::Token(token) => {
            headers.insert(
                "Sec-WebSocket-Protocol",
                format!("conclave.v1, bearer.{token}").parse().unwrap(),
            );
        }
        Auth::Nothing => {}
    }
    request
}

/// The HTTP status a refused handshake got.
pub(crate) async fn refused(request: tungstenite::handshake::client::Request) -> u16 {
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, the upgrade happened"),
    }
}

pub(crate) struct Client {
    pub stream: Stream,
    pub hello: Value,
}

impl Client {
    pub(crate) async fn open(request: tungstenite::handshake::client::Request) -> Self {
        let (stream, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let mut client = Self {
            stream,
            hello: Value::Null,
        };
        client.hello = client.expect("hello").await;
        client
    }

    pub(crate) async fn browser(app: &TestApp, person: &Device) -> Self {
        Self::open(request(app, Auth::Browser(person, Some(&app.address)))).await
    }

    pub(crate) async fn send(&mut self, frame: Value) {
        self.stream
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }

    /// The next text frame, as JSON (pings are answered by the client library).
    pub(crate) async fn next(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.stream.next())
                .await
                .expect("a frame within 10 s")
                .expect("the connection is open")
                .expect("a valid frame");
            match message {
                Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
                Message::Close(frame) => panic!("closed: {frame:?}"),
                _ => {}
            }
        }
    }

    /// The next frame of `kind`, skipping others (presence and typing come at any time).
    pub(crate) async fn expect(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.next().await;
            if frame["type"] == kind {
                return frame;
            }
            assert_ne!(frame["type"], "error", "while waiting for {kind}: {frame}");
        }
    }

    /// The next presence change of `user` (a person's own changes reach them too).
    pub(crate) async fn presence_of(&mut self, user: i64) -> Value {
        loop {
            let frame = self.expect("presence").await;
            if frame["user"]["id"] == user {
                return frame;
            }
        }
    }

    /// Sends a frame and waits for the answer of `kind` carrying the same `ref`.
    pub(crate) async fn ask(&mut self, mut frame: Value, kind: &str) -> Value {
        let reference = uuid::Uuid::new_v4().to_string();
        frame["ref"] = json!(reference);
        self.send(frame).await;
        loop {
            let answer = self.next().await;
            if answer["ref"] == reference.as_str() {
                assert_eq!(answer["type"], kind, "{answer}");
                return answer;
            }
        }
    }

    pub(crate) async fn subscribe(&mut self, room: i64, since: Option<i64>) -> Value {
        let mut frame = json!({"type": "subscribe", "room": room});
        if let Some(since) = since {
            frame["since"] = json!(since);
        }
        self.ask(frame, "subscribed").await
    }

    /// Reads until the server closes; answers the close code.
    pub(crate) async fn close_code(&mut self) -> u16 {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), self.stream.next())
                .await
                .expect("closed within 10 s");
            match next {
                Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
                Some(Ok(Message::Close(None))) | None => return 1005,
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("the connection broke without a close frame: {e}"),
            }
        }
    }

    /// No frame of `kind` arrives within `wait`.
    pub(crate) async fn quiet(&mut self, kind: &str, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout_at(deadline, self.stream.next()).await
        {
            if let Message::Text(text) = message {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                assert_ne!(frame["type"], kind, "unexpected {frame}");
            }
        }
    }
}

pub(crate) async fn token_for(person: &Device, app: &TestApp, scopes: &[&str]) -> String {
    let (status, body) = post(
        person,
        app,
        "/api/v1/me/tokens",
        json!({"name": "realtime test", "scopes": scopes}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

pub(crate) async fn join(person: &Device, app: &TestApp, room: i64) {
    let (status, body) = post(
        person,
        app,
        &format!("/api/v1/rooms/{room}/members"),
        json!({}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

async fn metrics(app: &TestApp) -> String {
    app.get("/metrics").await.text().await.unwrap()
}

/// The value of one series in a Prometheus text page (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn handshakes_are_refused_before_the_upgrade_and_tokens_are_never_echoed() {
    let team = team().await;
    let app = &team.app;
    assert_eq!(refused(request(app, Auth::Nothing)).await, 401);
    assert_eq!(
        refused(request(app, Auth::Token("cnv_not-a-token"))).await,
        401
    );
    // The session cookie counts only from our own pages.
    assert_eq!(
        refused(request(
            app,
            Auth::Browser(&team.ada, Some("https://evil.example"))
        ))
        .await,
        403
    );
    assert_eq!(
        refused(request(app, Auth::Browser(&team.ada, None))).await,
        403
    );
    let mut other_version = request(app, Auth::Browser(&team.ada, Some(&app.address)));
    other_version
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "conclave.v9".parse().unwrap());
    assert_eq!(refused(other_version).await, 400);
    // Signed in, but not a WebSocket handshake.
    let plain = team
        .ada
        .client
        .get(app.url("/api/v1/ws"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 400);

    let token = token_for(&team.carl, app, &["read", "write"]).await;
    let (mut stream, response) =
        tokio_tungstenite::connect_async(request(app, Auth::Token(&token)))
            .await
            .unwrap();
    let protocol = response.headers()["sec-websocket-protocol"]
        .to_str()
        .unwrap();
    assert_eq!(protocol, "conclave.v1", "the token is never echoed");
    let hello = stream.next().await.unwrap().unwrap();
    let hello: Value = serde_json::from_str(hello.to_text().unwrap()).unwrap();
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["protocol"], "conclave.v1");
    assert_eq!(hello["user"]["id"], team.ids[1]);
    // Scripts may also use the Authorization header.
    let mut with_header = app
        .url("/api/v1/ws")
        .replace("http://", "ws://")
        .into_client_request()
        .unwrap();
    with_header
        .headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    Client::open(with_header).await;
    // And browsers from our own origin.
    let browser = Client::browser(app, &team.ada).await;
    assert_eq!(browser.hello["user"]["id"], team.ids[0]);
    assert!(
        metrics(app)
            .await
            .contains("ws_refusals_total{reason=\"origin\"} 2")
    );
}

#[tokio::test]
async fn events_reach_every_follower_whichever_way_they_were_made() {
    let team = team().await;
    let app = &team.app;
    let room = create_room(&team.ada, app, "live", "public").await;
    join(&team.carl, app, room).await;
    let mut ada = Client::browser(app, &team.ada).await;
    let mut carl = Client::browser(app, &team.carl).await;
    let subscribed = ada.subscribe(room, None).await;
    assert_eq!(subscribed["last_id"], Value::Null, "an empty room");
    carl.subscribe(room, None).await;

    // Posted over the socket: acknowledged with the stored id, delivered to everyone.
    let ack = carl
        .ask(
            json!({"type": "post", "room": room, "body": "hello **there**", "idempotency_key": "k1"}),
            "ack",
        )
        .await;
    let id = ack["message"]["id"].as_i64().unwrap();
    assert_eq!(ack["duplicate"], false);
    let seen = ada.expect("message").await;
    assert_eq!(seen["message"]["id"], id);
    assert_eq!(
        seen["message"]["html"],
        "<p>hello <strong>there</strong></p>\n"
    );
    assert_eq!(seen["replay"], false);
    assert_eq!(
        carl.expect("message").await["message"]["id"],
        id,
        "the poster too"
    );
    // A retried post is acknowledged again and announced once.
    let again = carl
        .ask(
            json!({"type": "post", "room": room, "body": "hello **there**", "idempotency_key": "k1"}),
            "ack",
        )
        .await;
    assert_eq!(
        (
            again["message"]["id"].as_i64(),
            again["duplicate"].as_bool()
        ),
        (Some(id), Some(true))
    );

    // Made over HTTP: the same events.
    let (status, posted) = post(
        &team.ada,
        app,
        &format!("/api/v1/rooms/{room}/messages"),
        json!({"body": "from the API"}),
    )
    .await;
    assert_eq!(status, 201);
    let second = posted["id"].as_i64().unwrap();
    let seen = carl.expect("message").await;
    assert_eq!(
        seen["message"]["id"], second,
        "the retry was not announced: {seen}"
    );
    let (status, _) = patch(
        &team.ada,
        app,
        &format!("/api/v1/rooms/{room}/messages/{second}"),
        json!({"body": "edited over HTTP"}),
    )
    .await;
    assert_eq!(status, 200);
    let edited = carl.expect("message_edited").await;
    assert_eq!(edited["message"]["body"], "edited over HTTP");
    assert_eq!(edited["message"]["edited"], true);
    let tombstone = carl
        .ask(
            json!({"type": "delete", "room": room, "message_id": id}),
            "ack",
        )
        .await;
    assert_eq!(tombstone["message"]["deleted"], true);
    assert_eq!(carl.expect("message_deleted").await["message_id"], id);
    let deleted = ada.expect("message_deleted").await;
    assert_eq!(
        (deleted["room"].as_i64(), deleted["message_id"].as_i64()),
        (Some(room), Some(id))
    );
    let (status, _) = delete(
        &team.ada,
        app,
        &format!("/api/v1/rooms/{room}/messages/{second}"),
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(carl.expect("message_deleted").await["message_id"], second);

    // Typing goes to the others; read markers are kept and shared.
    carl.send(json!({"type": "typing", "room": room})).await;
    let typing = ada.expect("typing").await;
    assert_eq!(typing["user"]["id"], team.ids[1]);
    assert_eq!(typing["user"]["name"], "carl");
    ada.send(json!({"type": "read", "room": room, "message_id": second}))
        .await;
    let read = carl.expect("read").await;
    assert_eq!(
        (read["user_id"].as_i64(), read["message_id"].as_i64()),
        (Some(team.ids[0]), Some(second))
    );
    ada.send(json!({"type": "read", "room": room, "message_id": id}))
        .await;
    let mut later = Client::browser(app, &team.ada).await;
    assert_eq!(
        later.subscribe(room, None).await["read"],
        second,
        "markers only move forward"
    );
    // Unsubscribed: nothing more arrives.
    ada.ask(json!({"type": "unsubscribe", "room": room}), "unsubscribed")
        .await;
    post(
        &team.carl,
        app,
        &format!("/api/v1/rooms/{room}/messages"),
        json!({"body": "bye"}),
    )
    .await;
    assert_eq!(later.expect("message").await["message"]["body"], "bye");
    ada.quiet("message", Duration::from_millis(300)).await;
}

#[tokio::test]
async fn presence_aggregates_every_tab_of_a_person() {
    let team = team().await;
    let app = &team.app;
    let room = create_room(&team.ada, app, "presence", "public").await;
    join(&team.carl, app, room).await;
    let mut carl = Client::browser(app, &team.carl).await;
    let subscribed = carl.subscribe(room, None).await;
    assert_eq!(
        subscribed["presence"],
        json!([{"user": {"id": team.ids[1], "name": "carl"}, "state": "online"}])
    );
    let mut tab1 = Client::browser(app, &team.ada).await;
    let mut tab2 = Client::browser(app, &team.ada).await;
    tab1.subscribe(room, None).await;
    let online = carl.presence_of(team.ids[0]).await;
    assert_eq!(
        (online["user"]["id"].as_i64(), online["state"].as_str()),
        (Some(team.ids[0]), Some("online"))
    );
    let with_ada = tab2.subscribe(room, None).await;
    assert_eq!(with_ada["presence"].as_array().unwrap().len(), 2);
    // Away only once every tab is away.
    tab1.send(json!({"type": "presence", "state": "away"}))
        .await;
    carl.quiet("presence", Duration::from_millis(300)).await;
    tab2.send(json!({"type": "presence", "state": "away"}))
        .await;
    assert_eq!(carl.presence_of(team.ids[0]).await["state"], "away");
    tab2.send(json!({"type": "presence", "state": "online"}))
        .await;
    assert_eq!(carl.presence_of(team.ids[0]).await["state"], "online");
    // One tab left, and it is away; offline once it closes too.
    tab2.stream.close(None).await.unwrap();
    assert_eq!(carl.presence_of(team.ids[0]).await["state"], "away");
    drop(tab1);
    let offline = carl.presence_of(team.ids[0]).await;
    assert_eq!(
        (offline["user"]["id"].as_i64(), offline["state"].as_str()),
        (Some(team.ids[0]), Some("offline"))
    );
}

#[tokio::test]
async fn resume_sends_exactly_what_was_missed_then_live_events() {
    let team = team().await;
    let app = &team.app;
    let room = create_room(&team.ada, app, "resume", "public").await;
    join(&team.carl, app, room).await;
    let ada = &team.ada;
    let say = |n: usize| async move {
        let (status, body) = post(
            ada,
            app,
            &format!("/api/v1/rooms/{room}/messages"),
            json!({"body": format!("message {n}")}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_i64().unwrap()
    };
    let first = say(0).await;
    let mut carl = Client::browser(app, &team.carl).await;
    carl.subscribe(room, Some(0)).await;
    drop(carl);
    // Missed while away: more than two replay pages.
    let mut posted = Vec::new();
    for n in 1..=450 {
        posted.push(say(n).await);
    }
    // More arrive while Carl reconnects and catches up.
    let posting = async {
        let mut ids = Vec::new();
        for n in 451..=550 {
            ids.push(say(n).await);
        }
        ids
    };
    let resuming = async {
        let mut carl = Client::browser(app, &team.carl).await;
        carl.send(json!({"type": "subscribe", "room": room, "since": first}))
            .await;
        let mut received = Vec::new();
        let mut subscribed = Value::Null;
        while received.len() < 550 {
            let frame = carl.next().await;
            match frame["type"].as_str() {
                Some("message") => received.push(frame["message"]["id"].as_i64().unwrap()),
                Some("subscribed") => subscribed = frame,
                _ => {}
            }
        }
        (carl, received, subscribed)
    };
    let (during, (mut carl, received, subscribed)) = tokio::join!(posting, resuming);
    posted.extend(during);
    assert!(
        subscribed["replayed"].as_u64().unwrap() >= 450,
        "{subscribed}"
    );
    assert_eq!(
        received, posted,
        "every missed message once, in order, then live ones"
    );
    carl.quiet("message", Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_slow_consumer_is_closed_and_the_room_goes_on() {
    let team = team_with(|s| {
        s.realtime.queue_capacity = 4;
        s.chat.max_message_bytes = 200_000;
    })
    .await;
    let app = &team.app;
    let room = create_room(&team.ada, app, "firehose", "public").await;
    join(&team.carl, app, room).await;
    let mut reader = Client::browser(app, &team.carl).await;
    reader.subscribe(room, None).await;
    // Eve follows the room and then stops reading.
    let mut stuck = Client::browser(app, &team.eve).await;
    stuck.subscribe(room, None).await;
    let big = "lorem ipsum dolor ".repeat(8_000);
    let mut posted = Vec::new();
    let mut closed = false;
    for n in 0..120 {
        let (status, body) = post(
            &team.ada,
            app,
            &format!("/api/v1/rooms/{room}/messages"),
            json!({"body": format!("{n} {big}")}),
        )
        .await;
        assert_eq!(status, 201, "posting never waits for a slow reader");
        posted.push(body["id"].as_i64().unwrap());
        while let Ok(frame) =
            tokio::time::timeout(Duration::from_millis(1), reader.expect("message")).await
        {
            assert!(posted.contains(&frame["message"]["id"].as_i64().unwrap()));
        }
        if metrics(app).await.contains("ws_slow_consumers_total 1") {
            closed = true;
            break;
        }
    }
    assert!(closed, "the stuck connection was closed as a slow consumer");
    let gone = eventually(Duration::from_secs(5), || async {
        let list = team.ada.get_json(app, "/api/v1/admin/connections").await;
        let people: Vec<i64> = list["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["user_id"].as_i64().unwrap())
            .collect();
        (!people.contains(&team.ids[2])).then_some(())
    })
    .await;
    assert!(gone.is_some(), "its memory is released");
    assert!(
        metrics(app)
            .await
            .contains("ws_closes_total{code=\"4009\"} 1")
    );
    // Eve comes back and resumes from where she was.
    let mut back = Client::browser(app, &team.eve).await;
    back.send(json!({"type": "subscribe", "room": room, "since": 0}))
        .await;
    let mut replayed = Vec::new();
    while replayed.len() < posted.len() {
        let frame = back.next().await;
        if frame["type"] == "message" {
            replayed.push(frame["message"]["id"].as_i64().unwrap());
        }
    }
    assert_eq!(replayed, posted);
}

#[tokio::test]
async fn limits_close_with_documented_codes_and_are_counted() {
    let team = team_with(|s| {
        s.realtime.messages_per_second = 2;
        s.realtime.message_burst = 3;
        s.realtime.max_frame_bytes = 1024;
        s.realtime.connections_per_user = 2;
    })
    .await;
    let app = &team.app;
    let mut flood = Client::browser(app, &team.ada).await;
    for _ in 0..10 {
        flood.send(json!({"type": "ping"})).await;
    }
    assert_eq!(flood.close_code().await, 4008);
    let mut big = Client::browser(app, &team.ada).await;
    big.send(json!({"type": "ping", "ref": "x".repeat(2000)}))
        .await;
    assert_eq!(big.close_code().await, 1009);
    let mut binary = Client::browser(app, &team.ada).await;
    binary
        .stream
        .send(Message::binary(vec![1, 2, 3]))
        .await
        .unwrap();
    assert_eq!(binary.close_code().await, 1003);

    let _one = Client::browser(app, &team.carl).await;
    let _two = Client::browser(app, &team.carl).await;
    let third = request(app, Auth::Browser(&team.carl, Some(&app.address)));
    assert_eq!(refused(third).await, 429);
    let text = metrics(app).await;
    for line in [
        "ws_closes_total{code=\"4008\"} 1",
        "ws_closes_total{code=\"1009\"} 1",
        "ws_closes_total{code=\"1003\"} 1",
        "ws_refusals_total{reason=\"connections_per_user\"} 1",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}

#[tokio::test]
async fn handshakes_and_connections_per_ip_are_limited() {
    let team = team_with(|s| s.realtime.handshakes_per_ip_per_minute = 3).await;
    let app = &team.app;
    for _ in 0..3 {
        Client::browser(app, &team.ada).await;
    }
    let fourth = request(app, Auth::Browser(&team.ada, Some(&app.address)));
    assert_eq!(refused(fourth).await, 429);

    // Every test client comes from 127.0.0.1: two people, one address.
    let team = team_with(|s| s.realtime.connections_per_ip = 2).await;
    let app = &team.app;
    let _ada = Client::browser(app, &team.ada).await;
    let carl = Client::browser(app, &team.carl).await;
    let third = request(app, Auth::Browser(&team.eve, Some(&app.address)));
    assert_eq!(refused(third).await, 429);
    drop(carl);
    let freed = eventually(Duration::from_secs(5), || async {
        let retry = request(app, Auth::Browser(&team.eve, Some(&app.address)));
        tokio_tungstenite::connect_async(retry)
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    assert!(freed.is_some(), "a closed connection frees its slot");
    // Counted once for the third connection, and again for each retry refused before the
    // closed one was forgotten.
    let series = "ws_refusals_total{reason=\"connections_per_ip\"}";
    let refusals = metric(&metrics(app).await, series);
    assert!(refusals >= 1.0, "{series} = {refusals}");
}

/// A client that never writes a byte after its handshake (so it answers no ping): reads raw
/// frames until the close frame and answers its code.
async fn silent_client_close_code(app: &TestApp, person: &Device) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut socket = tokio::net::TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap();
    let handshake = format!(
        "GET /api/v1/ws HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nCookie: {cookie}\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        host = app.address.trim_start_matches("http://"),
        origin = app.address,
        cookie = person.cookie_header(app),
    );
    socket.write_all(handshake.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            let n = socket.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the server closed without a close frame");
            bytes.extend_from_slice(&chunk[..n]);
            let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let mut at = end + 4;
            // Server frames are unmasked: opcode, length (7 bits, or 16/64 bits), payload.
            while at + 2 <= bytes.len() {
                let opcode = bytes[at] & 0x0f;
                let (len, header) = match bytes[at + 1] & 0x7f {
                    126 if at + 4 <= bytes.len() => (
                        usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]])),
                        4,
                    ),
                    127 | 126 => break,
                    short => (usize::from(short), 2),
                };
                if at + header + len > bytes.len() {
                    break;
                }
                if opcode == 8 {
                    return u16::from_be_bytes([bytes[at + header], bytes[at + header + 1]]);
                }
                at += header + len;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("closed within 10 s")
}

#[tokio::test]
async fn a_silent_connection_times_out() {
    let team = team_with(|s| {
        s.realtime.heartbeat_secs = 1;
        s.realtime.heartbeat_timeout_secs = 2;
    })
    .await;
    let started = std::time::Instant::now();
    assert_eq!(silent_client_close_code(&team.app, &team.ada).await, 4000);
    assert!(started.elapsed() >= Duration::from_secs(2));
    // A client that answers pings stays.
    let mut alive = Client::browser(&team.app, &team.ada).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(200), alive.stream.next()).await;
    }
    assert_eq!(
        alive.ask(json!({"type": "ping"}), "pong").await["type"],
        "pong"
    );
}

#[tokio::test]
async fn bad_frames_get_clear_errors_and_the_connection_stays() {
    let team = team().await;
    let app = &team.app;
    let room = create_room(&team.ada, app, "rules", "public").await;
    let private = create_room(&team.ada, app, "secret", "private").await;
    let mut carl = Client::browser(app, &team.carl).await;
    carl.stream.send(Message::text("hello")).await.unwrap();
    assert_eq!(carl.next().await["code"], "not_json");
    carl.send(json!({"type": "dance"})).await;
    let unknown = carl.next().await;
    assert_eq!(unknown["code"], "bad_frame");
    assert!(
        unknown["message"].as_str().unwrap().contains("dance"),
        "{unknown}"
    );
    let hidden = carl
        .ask(json!({"type": "subscribe", "room": private}), "error")
        .await;
    assert_eq!(
        hidden["code"], "not_found",
        "a private room does not exist for outsiders"
    );
    let not_member = carl
        .ask(json!({"type": "post", "room": room, "body": "hi"}), "error")
        .await;
    assert_eq!(not_member["code"], "forbidden");
    join(&team.carl, app, room).await;
    let empty = carl
        .ask(json!({"type": "post", "room": room, "body": "  "}), "error")
        .await;
    assert_eq!(empty["code"], "bad_request");
    let typing = carl
        .ask(
            json!({"type": "subscribe", "room": room, "since": -5}),
            "error",
        )
        .await;
    assert_eq!(typing["code"], "bad_request");
    let read = carl
        .ask(
            json!({"type": "read", "room": room, "message_id": 999_999}),
            "error",
        )
        .await;
    assert_eq!(read["code"], "not_found");
    // A read-only token follows rooms but does not post.
    let token = token_for(&team.carl, app, &["read"]).await;
    let mut script = Client::open(request(app, Auth::Token(&token))).await;
    script.subscribe(room, None).await;
    let scoped = script
        .ask(json!({"type": "post", "room": room, "body": "hi"}), "error")
        .await;
    assert_eq!(scoped["code"], "insufficient_scope");
    assert_eq!(
        carl.ask(json!({"type": "ping"}), "pong").await["type"],
        "pong"
    );

    // A `since` beyond the room's newest message hides nothing that comes after it.
    let future = carl.subscribe(room, Some(1_000_000_000_000)).await;
    assert_eq!(future["last_id"], Value::Null, "{future}");
    let (status, posted) = post(
        &team.ada,
        app,
        &format!("/api/v1/rooms/{room}/messages"),
        json!({"body": "still delivered"}),
    )
    .await;
    assert_eq!(status, 201, "{posted}");
    assert_eq!(carl.expect("message").await["message"]["id"], posted["id"]);
}

#[tokio::test]
async fn removed_members_stop_hearing_a_private_room() {
    let team = team().await;
    let app = &team.app;
    let room = create_room(&team.ada, app, "inner circle", "private").await;
    let (status, _) = post(
        &team.ada,
        app,
        &format!("/api/v1/rooms/{room}/members"),
        json!({"user_id": team.ids[1]}),
    )
    .await;
    assert_eq!(status, 201);
    let mut carl = Client::browser(app, &team.carl).await;
    carl.subscribe(room, None).await;
    let (status, _) = delete(
        &team.ada,
        app,
        &format!("/api/v1/rooms/{room}/members/{}", team.ids[1]),
    )
    .await;
    assert_eq!(status, 204);
    let gone = carl.expect("unsubscribed").await;
    assert_eq!(
        (gone["room"].as_i64(), gone["reason"].as_str()),
        (Some(room), Some("removed"))
    );
    post(
        &team.ada,
        app,
        &format!("/api/v1/rooms/{room}/messages"),
        json!({"body": "not for carl"}),
    )
    .await;
    carl.quiet("message", Duration::from_millis(300)).await;
}

#[tokio::test]
async fn signing_out_or_revoking_a_token_closes_the_socket() {
    let team = team().await;
    let app = &team.app;
    let mut browser = Client::browser(app, &team.carl).await;
    let response = team
        .carl
        .client
        .post(app.url("/api/v1/auth/logout"))
        .header("X-CSRF-Token", team.carl.csrf(app))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(browser.close_code().await, 4001);

    let token = token_for(&team.ada, app, &["read", "write"]).await;
    let mut script = Client::open(request(app, Auth::Token(&token))).await;
    let tokens = team.ada.get_json(app, "/api/v1/me/tokens").await;
    let id = tokens["tokens"][0]["id"].as_i64().unwrap();
    let (status, _) = delete(&team.ada, app, &format!("/api/v1/me/tokens/{id}")).await;
    assert_eq!(status, 204);
    assert_eq!(script.close_code().await, 4001);
    assert_eq!(refused(request(app, Auth::Token(&token))).await, 401);
}

#[tokio::test]
async fn admins_list_and_disconnect_live_connections() {
    let team = team().await;
    let app = &team.app;
    let room = create_room(&team.ada, app, "watched", "public").await;
    let mut eve = Client::browser(app, &team.eve).await;
    eve.subscribe(room, None).await;
    let (status, _) = crate::rooms::get(&team.eve, app, "/api/v1/admin/connections").await;
    assert_eq!(
        status, 403,
        "someone without a staff role does not see connections"
    );
    let promoted = team
        .ada
        .post(
            app,
            &format!("/api/v1/admin/users/{}/role", team.ids[1]),
            serde_json::json!({ "role": "operator" }),
        )
        .await;
    assert_eq!(
        promoted.status(),
        200,
        "the owner makes Carl a staff operator"
    );
    let (status, list) = crate::rooms::get(&team.carl, app, "/api/v1/admin/connections").await;
    assert_eq!(status, 200, "staff do");
    let connection = list["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["user_id"] == team.ids[2])
        .unwrap()
        .clone();
    assert_eq!(connection["kind"], "browser");
    assert_eq!(connection["rooms"], json!([room]));
    assert_eq!(connection["ip"], "127.0.0.1");
    let id = connection["id"].as_u64().unwrap();
    assert_eq!(eve.hello["connection_id"], id);
    let (status, _) = delete(&team.eve, app, &format!("/api/v1/admin/connections/{id}")).await;
    assert_eq!(status, 403);
    let (status, _) = delete(&team.carl, app, &format!("/api/v1/admin/connections/{id}")).await;
    assert_eq!(status, 204);
    assert_eq!(eve.close_code().await, 4010);
    let (status, _) = delete(&team.carl, app, &format!("/api/v1/admin/connections/{id}")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn shutting_down_tells_clients_to_reconnect_elsewhere() {
    let (app, stop, running) = crate::helpers::spawn_stoppable_app().await;
    app.create_user("ada@example.com", "correct horse battery staple", true)
        .await;
    let ada = Device::signed_in(&app, "ada@example.com", "correct horse battery staple").await;
    ada.client.get(app.url("/healthz")).send().await.unwrap();
    let token = token_for(&ada, &app, &["read"]).await;
    let mut client = Client::open(request(&app, Auth::Token(&token))).await;
    let started = std::time::Instant::now();
    stop.send(()).unwrap();
    assert_eq!(client.close_code().await, 1012);
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the node stops within its drain time")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        tokio_tungstenite::connect_async(request(&app, Auth::Token(&token)))
            .await
            .is_err(),
        "no new connections"
    );
}
