//! Several nodes on one PostgreSQL database: hub events, presence and revocations travel
//! between them over LISTEN/NOTIFY. A SQLite deployment is one node by design, so on SQLite
//! these tests only say they do not apply.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{TestBackend, backend, eventually, team};
use crate::realtime::{Client, join};
use crate::rooms::{create_room, delete, patch, post};

fn several_nodes_apply() -> bool {
    if backend() == TestBackend::Postgres {
        return true;
    }
    eprintln!("several nodes share a PostgreSQL database; nothing to check on SQLite");
    false
}

#[tokio::test]
async fn a_second_node_relays_messages_presence_and_revocations() {
    if !several_nodes_apply() {
        return;
    }
    let team = team().await;
    let a = &team.app;
    let (b, stop_b, running_b) = a.another_node().await;
    let [ada, carl, _] = team.ids;
    let room = create_room(&team.ada, a, "cluster", "public").await;
    join(&team.carl, a, room).await;
    let mut carl_on_a = Client::browser(a, &team.carl).await;
    carl_on_a.subscribe(room, None).await;
    // Sessions live in the shared database: Ada's cookie works on node B.
    let mut ada_on_b = Client::browser(&b, &team.ada).await;
    // Carl's presence reaches node B over NOTIFY a few milliseconds after he subscribed on A;
    // B then knows it for every subscription that follows.
    let knows_carl = |subscribed: &serde_json::Value| {
        subscribed["presence"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["user"]["id"] == carl && p["state"] == "online")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let subscribed = ada_on_b.subscribe(room, None).await;
        if knows_carl(&subscribed) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node B knows who is online on node A: {subscribed}"
        );
        ada_on_b
            .ask(
                serde_json::json!({"type": "unsubscribe", "room": room}),
                "unsubscribed",
            )
            .await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(carl_on_a.presence_of(ada).await["state"], "online");

    // Posted on B, delivered on A, in order.
    let mut slowest = Duration::ZERO;
    let mut posted = Vec::new();
    for n in 0..20 {
        let started = Instant::now();
        let ack = ada_on_b
            .ask(
                json!({"type": "post", "room": room, "body": format!("across {n}")}),
                "ack",
            )
            .await;
        let id = ack["message"]["id"].as_i64().unwrap();
        let seen = carl_on_a.expect("message").await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(seen["message"]["id"], id);
        assert_eq!(seen["message"]["body"], format!("across {n}"));
        posted.push(id);
    }
    assert!(
        slowest < Duration::from_secs(1),
        "slowest relay {slowest:?}"
    );
    // Changes made over HTTP on B.
    let last = *posted.last().unwrap();
    let (status, _) = patch(
        &team.ada,
        &b,
        &format!("/api/v1/rooms/{room}/messages/{last}"),
        json!({"body": "edited on B"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        carl_on_a.expect("message_edited").await["message"]["body"],
        "edited on B"
    );
    let (status, _) = delete(
        &team.ada,
        &b,
        &format!("/api/v1/rooms/{room}/messages/{last}"),
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(
        carl_on_a.expect("message_deleted").await["message_id"],
        last
    );
    ada_on_b.send(json!({"type": "typing", "room": room})).await;
    assert_eq!(carl_on_a.expect("typing").await["user"]["id"], ada);
    carl_on_a
        .send(json!({"type": "read", "room": room, "message_id": posted[0]}))
        .await;
    let read = ada_on_b.expect("read").await;
    assert_eq!(
        (read["user_id"].as_i64(), read["message_id"].as_i64()),
        (Some(carl), Some(posted[0]))
    );
    ada_on_b
        .send(json!({"type": "presence", "state": "away"}))
        .await;
    assert_eq!(carl_on_a.presence_of(ada).await["state"], "away");

    // Carl leaves node A and resumes on node B: exactly what he missed.
    drop(carl_on_a);
    let mut missed = Vec::new();
    for n in 0..5 {
        let (status, body) = post(
            &team.ada,
            a,
            &format!("/api/v1/rooms/{room}/messages"),
            json!({"body": format!("while away {n}")}),
        )
        .await;
        assert_eq!(status, 201);
        missed.push(body["id"].as_i64().unwrap());
    }
    let mut carl_on_b = Client::browser(&b, &team.carl).await;
    carl_on_b
        .send(json!({"type": "subscribe", "room": room, "since": posted[posted.len() - 2]}))
        .await;
    // The deleted message comes back as its tombstone, then what was missed, once each.
    let mut expected = vec![last];
    expected.extend(&missed);
    let mut resumed = Vec::new();
    while resumed.len() < expected.len() {
        let frame = carl_on_b.next().await;
        if frame["type"] == "message" {
            resumed.push(frame["message"]["id"].as_i64().unwrap());
        }
    }
    assert_eq!(resumed, expected);
    carl_on_b.expect("subscribed").await;

    // Signing out on B closes Carl's sockets on A at once, and A refuses the cookie.
    let mut carl_again_on_a = Client::browser(a, &team.carl).await;
    assert_eq!(team.carl.me_status(a).await, 200);
    let response = team
        .carl
        .client
        .post(b.url("/api/v1/auth/logout"))
        .header("X-CSRF-Token", team.carl.csrf(a))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    assert_eq!(carl_again_on_a.close_code().await, 4001);
    assert_eq!(carl_on_b.close_code().await, 4001);
    let refused = eventually(Duration::from_secs(3), || async {
        (team.carl.me_status(a).await == 401).then_some(())
    })
    .await;
    assert!(refused.is_some(), "node A forgot the cached session");

    // Node B stops: Ada (connected there) goes offline for node A's followers.
    let mut eve_on_a = Client::browser(a, &team.eve).await;
    eve_on_a.subscribe(room, None).await;
    stop_b.send(()).unwrap();
    assert_eq!(ada_on_b.close_code().await, 1012);
    assert_eq!(eve_on_a.presence_of(ada).await["state"], "offline");
    running_b.await.unwrap().unwrap();
}
