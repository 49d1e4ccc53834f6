//! Rooms and history through the HTTP API: membership and room roles, messages (edit, delete,
//! reply, idempotency, paging), safe Markdown, search on the encrypted history, and that
//! nothing readable is left at rest.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Device, Team, TestApp, backend, team, team_with};

pub(crate) async fn send(
    person: &Device,
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = person
        .client
        .request(method, app.url(path))
        .header("X-CSRF-Token", person.csrf(app));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub(crate) async fn get(person: &Device, app: &TestApp, path: &str) -> (u16, Value) {
    send(person, app, Method::GET, path, None).await
}

pub(crate) async fn post(person: &Device, app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    send(person, app, Method::POST, path, Some(body)).await
}

pub(crate) async fn patch(person: &Device, app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    send(person, app, Method::PATCH, path, Some(body)).await
}

pub(crate) async fn delete(person: &Device, app: &TestApp, path: &str) -> (u16, Value) {
    send(person, app, Method::DELETE, path, None).await
}

pub(crate) async fn create_room(
    person: &Device,
    app: &TestApp,
    name: &str,
    visibility: &str,
) -> i64 {
    let room = create_room_with(
        person,
        app,
        json!({"name": name, "topic": "talk", "visibility": visibility}),
    )
    .await;
    room["id"].as_i64().unwrap()
}

/// Creates a room from `body`, which must succeed; answers the room.
pub(crate) async fn create_room_with(person: &Device, app: &TestApp, body: Value) -> Value {
    let (status, room) = post(person, app, "/api/v1/rooms", body).await;
    assert_eq!(status, 201, "{room}");
    room
}

/// Unlocks the person's private conversations; answers the status.
pub(crate) async fn unlock_private(person: &Device, app: &TestApp, password: &str) -> u16 {
    post(
        person,
        app,
        "/api/v1/me/private/unlock",
        json!({ "password": password }),
    )
    .await
    .0
}

pub(crate) async fn say(person: &Device, app: &TestApp, room: i64, body: &str) -> Value {
    let (status, message) = post(
        person,
        app,
        &format!("/api/v1/rooms/{room}/messages"),
        json!({"body": body}),
    )
    .await;
    assert_eq!(status, 201, "{message}");
    message
}

#[tokio::test]
async fn rooms_have_members_with_roles_and_private_rooms_stay_hidden() {
    let Team {
        app,
        ada,
        carl,
        eve,
        ids: [ada_id, carl_id, eve_id],
        ..
    } = team().await;
    let general = create_room(&ada, &app, "general", "public").await;
    let secret = create_room(&ada, &app, "secret", "private").await;

    // Carl sees the public room (not yet joined) and not the private one.
    let (_, listed) = get(&carl, &app, "/api/v1/rooms").await;
    let names: Vec<_> = listed["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["general"]);
    assert_eq!(listed["rooms"][0]["my_role"], Value::Null);
    for path in [
        format!("/api/v1/rooms/{secret}"),
        format!("/api/v1/rooms/{secret}/messages"),
        format!("/api/v1/rooms/{secret}/members"),
    ] {
        assert_eq!(get(&carl, &app, &path).await.0, 404, "{path}");
    }
    let (status, _) = post(
        &carl,
        &app,
        &format!("/api/v1/rooms/{secret}/messages"),
        json!({"body": "hi"}),
    )
    .await;
    assert_eq!(status, 404);
    // Viewers read public rooms but do not create rooms, and join read-only.
    let (status, _) = post(&eve, &app, "/api/v1/rooms", json!({"name": "mine"})).await;
    assert_eq!(status, 403);
    assert_eq!(
        get(&eve, &app, &format!("/api/v1/rooms/{general}/messages"))
            .await
            .0,
        200
    );
    let (status, joined) = post(
        &eve,
        &app,
        &format!("/api/v1/rooms/{general}/members"),
        json!({}),
    )
    .await;
    assert_eq!((status, joined["role"].as_str()), (201, Some("readonly")));
    let (status, _) = post(
        &eve,
        &app,
        &format!("/api/v1/rooms/{general}/messages"),
        json!({"body": "hi"}),
    )
    .await;
    assert_eq!(status, 403);
    let (status, joined) = post(
        &carl,
        &app,
        &format!("/api/v1/rooms/{general}/members"),
        json!({}),
    )
    .await;
    assert_eq!((status, joined["role"].as_str()), (201, Some("member")));
    say(&carl, &app, general, "hello all").await;

    // Members may not rename, remove others or hand out roles; the owner may.
    let (status, _) = patch(
        &carl,
        &app,
        &format!("/api/v1/rooms/{general}"),
        json!({"name": "x"}),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = delete(
        &carl,
        &app,
        &format!("/api/v1/rooms/{general}/members/{eve_id}"),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = patch(
        &ada,
        &app,
        &format!("/api/v1/rooms/{general}/members/{carl_id}"),
        json!({"role": "moderator"}),
    )
    .await;
    assert_eq!(status, 200);
    // A moderator manages those below, not other moderators, and never grants owner.
    let (status, _) = patch(
        &carl,
        &app,
        &format!("/api/v1/rooms/{general}/members/{eve_id}"),
        json!({"role": "owner"}),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = patch(
        &carl,
        &app,
        &format!("/api/v1/rooms/{general}/members/{eve_id}"),
        json!({"role": "member"}),
    )
    .await;
    assert_eq!(status, 200);
    say(&eve, &app, general, "now I can talk").await;
    let (status, renamed) = patch(
        &carl,
        &app,
        &format!("/api/v1/rooms/{general}"),
        json!({"name": "lobby", "topic": "everything"}),
    )
    .await;
    assert_eq!((status, renamed["name"].as_str()), (200, Some("lobby")));
    let (status, _) = delete(
        &carl,
        &app,
        &format!("/api/v1/rooms/{general}/members/{eve_id}"),
    )
    .await;
    assert_eq!(status, 204);

    // The only owner cannot leave while others remain.
    let (status, _) = delete(
        &ada,
        &app,
        &format!("/api/v1/rooms/{general}/members/{ada_id}"),
    )
    .await;
    assert_eq!(status, 409);

    // Inviting into the private room makes it visible to the invitee.
    let (status, added) = post(
        &ada,
        &app,
        &format!("/api/v1/rooms/{secret}/members"),
        json!({"user_id": eve_id, "role": "member"}),
    )
    .await;
    assert_eq!((status, added["role"].as_str()), (201, Some("member")));
    let (status, _) = post(
        &ada,
        &app,
        &format!("/api/v1/rooms/{secret}/members"),
        json!({"user_id": eve_id}),
    )
    .await;
    assert_eq!(status, 409, "already a member");
    let (status, _) = post(
        &ada,
        &app,
        &format!("/api/v1/rooms/{secret}/members"),
        json!({"user_id": 999_999}),
    )
    .await;
    assert_eq!(status, 404, "not in the workspace");
    say(&eve, &app, secret, "thanks for the invite").await;
    let (_, members) = get(&eve, &app, &format!("/api/v1/rooms/{secret}/members")).await;
    assert_eq!(members["members"].as_array().unwrap().len(), 2);

    // Archived rooms are read-only until unarchived.
    let (status, _) = patch(
        &ada,
        &app,
        &format!("/api/v1/rooms/{secret}"),
        json!({"archived": true}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, problem) = post(
        &eve,
        &app,
        &format!("/api/v1/rooms/{secret}/messages"),
        json!({"body": "still here?"}),
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("archived"),
        "{problem}"
    );
    let (status, _) = patch(
        &ada,
        &app,
        &format!("/api/v1/rooms/{secret}"),
        json!({"archived": false}),
    )
    .await;
    assert_eq!(status, 200);

    // Legal hold is for workspace admins; retention for the room owner.
    let (status, _) = patch(
        &eve,
        &app,
        &format!("/api/v1/rooms/{secret}"),
        json!({"legal_hold": true}),
    )
    .await;
    assert_eq!(status, 403);
    let (status, room) = patch(
        &ada,
        &app,
        &format!("/api/v1/rooms/{secret}"),
        json!({"legal_hold": true, "retention_days": 30}),
    )
    .await;
    assert_eq!(
        (
            status,
            room["legal_hold"].as_bool(),
            room["retention_days"].as_i64()
        ),
        (200, Some(true), Some(30))
    );
    let (status, _) = patch(
        &ada,
        &app,
        &format!("/api/v1/rooms/{secret}"),
        json!({"retention_days": 0}),
    )
    .await;
    assert_eq!(status, 400);

    // A workspace admin may delete a private room they are not in; then it is gone for all.
    let (status, _) = delete(&carl, &app, &format!("/api/v1/rooms/{secret}")).await;
    assert_eq!(status, 204);
    assert_eq!(
        get(&eve, &app, &format!("/api/v1/rooms/{secret}")).await.0,
        404
    );

    // Bad input is a clear 400.
    for body in [
        json!({"name": ""}),
        json!({"name": "x", "visibility": "secretive"}),
        json!({"name": "x", "colour": "red"}),
        json!({"name": "x".repeat(81)}),
    ] {
        let (status, problem) = post(&ada, &app, "/api/v1/rooms", body.clone()).await;
        assert_eq!(status, 400, "{body} → {problem}");
    }
    let (status, problem) = post(
        &ada,
        &app,
        "/api/v1/rooms",
        json!({"name": "x", "privacy": "secret"}),
    )
    .await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(get(&ada, &app, "/api/v1/rooms/abc").await.0, 404);

    // The audit log has the room events.
    let audit = app
        .state
        .db
        .run(|conn| {
            use conclave::schema::audit_events;
            use diesel::prelude::*;
            audit_events::table
                .select(audit_events::event)
                .load::<String>(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap();
    for event in [
        "room.created",
        "room.member_added",
        "room.role_changed",
        "room.member_removed",
        "room.archived",
        "room.legal_hold_changed",
        "room.deleted",
    ] {
        assert!(audit.iter().any(|e| e == event), "{event} in {audit:?}");
    }
}

#[tokio::test]
async fn direct_rooms_are_one_per_pair_and_only_for_the_two() {
    let Team {
        app,
        ada,
        carl,
        eve,
        ids: [ada_id, _, eve_id],
        ..
    } = team().await;
    let (status, room) = post(&ada, &app, "/api/v1/rooms", json!({"direct_with": eve_id})).await;
    assert_eq!(status, 201, "{room}");
    let id = room["id"].as_i64().unwrap();
    let (status, again) = post(&eve, &app, "/api/v1/rooms", json!({"direct_with": ada_id})).await;
    assert_eq!((status, again["id"].as_i64()), (200, Some(id)));
    say(&eve, &app, id, "psst").await;
    assert_eq!(
        get(&carl, &app, &format!("/api/v1/rooms/{id}")).await.0,
        404
    );
    let (_, listed) = get(&ada, &app, "/api/v1/rooms").await;
    let direct = listed["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap()
        .clone();
    assert_eq!(direct["title"], "eve");
    let (status, _) = post(&ada, &app, "/api/v1/rooms", json!({"direct_with": ada_id})).await;
    assert_eq!(status, 400);
    let (status, _) = post(
        &ada,
        &app,
        &format!("/api/v1/rooms/{id}/members"),
        json!({"user_id": ada_id + 1}),
    )
    .await;
    assert_eq!(status, 403, "nobody is added to a direct room");
}

#[tokio::test]
async fn messages_are_edited_deleted_replied_to_and_never_duplicated() {
    let Team { app, ada, carl, .. } = team().await;
    let room = create_room(&ada, &app, "general", "public").await;
    post(
        &carl,
        &app,
        &format!("/api/v1/rooms/{room}/members"),
        json!({}),
    )
    .await;
    let path = format!("/api/v1/rooms/{room}/messages");

    // Idempotency: the retry answers the stored message, and there is one copy.
    let body = json!({"body": "deploy at noon", "idempotency_key": "k-1"});
    let (status, first) = post(&ada, &app, &path, body.clone()).await;
    assert_eq!(status, 201);
    let (status, retry) = post(&ada, &app, &path, body).await;
    assert_eq!((status, retry["id"].clone()), (200, first["id"].clone()));
    // Another person's key space is their own.
    let (status, other) = post(
        &carl,
        &app,
        &path,
        json!({"body": "ok", "idempotency_key": "k-1"}),
    )
    .await;
    assert_eq!(status, 201);
    assert_ne!(other["id"], first["id"]);
    let (_, page) = get(&ada, &app, &path).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 2);

    // Replies point at a message of the same room.
    let (status, reply) = post(
        &carl,
        &app,
        &path,
        json!({"body": "noon works", "reply_to": first["id"]}),
    )
    .await;
    assert_eq!(
        (status, reply["reply_to"].clone()),
        (201, first["id"].clone())
    );
    let (status, _) = post(
        &carl,
        &app,
        &path,
        json!({"body": "x", "reply_to": 999_999}),
    )
    .await;
    assert_eq!(status, 400);

    // Edits: only the author; the message is marked edited.
    let first_id = first["id"].as_i64().unwrap();
    let one = format!("{path}/{first_id}");
    let (status, _) = patch(&carl, &app, &one, json!({"body": "hijacked"})).await;
    assert_eq!(status, 403);
    let (status, edited) = patch(&ada, &app, &one, json!({"body": "deploy at **one**"})).await;
    assert_eq!(status, 200);
    assert_eq!(edited["edited"], true);
    assert_eq!(edited["html"], "<p>deploy at <strong>one</strong></p>\n");

    // Deletion leaves a tombstone; it cannot be edited any more; members cannot delete others'.
    let reply_id = reply["id"].as_i64().unwrap();
    let (status, _) = delete(&ada, &app, &format!("{path}/{reply_id}")).await;
    assert_eq!(status, 204, "the room owner moderates");
    let (status, _) = delete(&carl, &app, &one).await;
    assert_eq!(status, 403);
    let (_, page) = get(&ada, &app, &path).await;
    let tombstone = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == reply_id)
        .unwrap()
        .clone();
    assert_eq!(
        (
            tombstone["deleted"].clone(),
            tombstone["body"].clone(),
            tombstone["html"].clone()
        ),
        (json!(true), Value::Null, Value::Null)
    );
    let (status, _) = patch(
        &carl,
        &app,
        &format!("{path}/{reply_id}"),
        json!({"body": "back"}),
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = patch(&ada, &app, &format!("{path}/424242"), json!({"body": "x"})).await;
    assert_eq!(status, 404);

    // Bad input.
    let (status, _) = post(&ada, &app, &path, json!({"body": "   "})).await;
    assert_eq!(status, 400);
    let (status, _) = post(
        &ada,
        &app,
        &path,
        json!({"body": "x".repeat(16 * 1024 + 1)}),
    )
    .await;
    assert_eq!(status, 413);
    let (status, _) = post(&ada, &app, &path, json!({"text": "wrong field"})).await;
    assert_eq!(status, 400);
    for query in ["?limit=0", "?limit=201", "?before=1&after=1", "?before=abc"] {
        assert_eq!(
            get(&ada, &app, &format!("{path}{query}")).await.0,
            400,
            "{query}"
        );
    }
}

#[tokio::test]
async fn history_pages_both_ways_and_stays_correct_while_messages_arrive() {
    let Team { app, ada, .. } = team().await;
    let room = create_room(&ada, &app, "busy", "public").await;
    let path = format!("/api/v1/rooms/{room}/messages");
    let mut ids = Vec::new();
    for n in 0..120 {
        ids.push(
            say(&ada, &app, room, &format!("message {n}")).await["id"]
                .as_i64()
                .unwrap(),
        );
    }
    let page_ids = |page: &Value| -> Vec<i64> {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_i64().unwrap())
            .collect()
    };
    let (_, latest) = get(&ada, &app, &path).await;
    assert_eq!(
        page_ids(&latest),
        ids[70..].to_vec(),
        "the newest 50, oldest first"
    );
    let (_, older) = get(&ada, &app, &format!("{path}?before={}", ids[70])).await;
    assert_eq!(page_ids(&older), ids[20..70].to_vec());
    let (_, oldest) = get(&ada, &app, &format!("{path}?before={}&limit=50", ids[20])).await;
    assert_eq!(page_ids(&oldest), ids[..20].to_vec());
    let (_, none) = get(&ada, &app, &format!("{path}?before={}", ids[0])).await;
    assert!(page_ids(&none).is_empty());
    let (_, forward) = get(&ada, &app, &format!("{path}?after={}&limit=30", ids[9])).await;
    assert_eq!(page_ids(&forward), ids[10..40].to_vec());

    // Catching up with `after=<last seen>` while others keep posting: nothing missed, nothing twice.
    let mut seen = ids[..100].to_vec();
    let poster = {
        let (client, url, csrf) = (ada.client.clone(), app.url(&path), ada.csrf(&app));
        tokio::spawn(async move {
            let mut posted = Vec::new();
            for n in 0..60 {
                let response = client
                    .post(&url)
                    .header("X-CSRF-Token", &csrf)
                    .json(&json!({"body": format!("live {n}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 201);
                posted.push(
                    response.json::<Value>().await.unwrap()["id"]
                        .as_i64()
                        .unwrap(),
                );
            }
            posted
        })
    };
    loop {
        let last = *seen.last().unwrap();
        // Finished before the read: an empty page then means everything was seen.
        let finished = poster.is_finished();
        let (_, page) = get(&ada, &app, &format!("{path}?after={last}&limit=7")).await;
        let fresh = page_ids(&page);
        if fresh.is_empty() && finished {
            break;
        }
        seen.extend(fresh);
    }
    let posted = poster.await.unwrap();
    let mut expected = ids.clone();
    expected.extend(posted);
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn markdown_names_and_topics_cannot_carry_script() {
    let Team { app, ada, .. } = team().await;
    let (status, room) = post(
        &ada,
        &app,
        "/api/v1/rooms",
        json!({"name": "<img src=x onerror=alert(1)>", "topic": "<script>alert(2)</script>"}),
    )
    .await;
    assert_eq!(status, 201);
    let room = room["id"].as_i64().unwrap();
    let message = say(&ada, &app, room, "**bold** <script>alert(3)</script> [x](javascript:alert(4)) <a href=\"https://e.example\" onclick=\"alert(5)\">y</a>\n\n<script>alert(6)</script>").await;
    let html = message["html"].as_str().unwrap();
    assert!(html.contains("<strong>bold</strong>"), "{html}");
    for bad in [
        "<script",
        "href=\"javascript",
        "<a href=\"https://e.example\" onclick",
        "<img",
    ] {
        assert!(!html.contains(bad), "{bad} in {html}");
    }
    assert!(
        html.contains("&lt;script&gt;alert(6)"),
        "raw HTML is shown as text: {html}"
    );
    for page in ["/rooms".to_owned(), format!("/rooms/{room}")] {
        let body = ada
            .client
            .get(app.url(&page))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for bad in [
            "<img src=x",
            "<script>alert",
            "javascript:alert",
            "<a href=\"https://e.example\" onclick",
        ] {
            assert!(!body.contains(bad), "{bad} on {page}");
        }
        assert!(
            body.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "the name is shown as text on {page}"
        );
    }
}

/// Leaves a gap of `n` message ids, as a busy server's other rooms would.
async fn skip_message_ids(app: &TestApp, n: i64) {
    app.state
        .db
        .run(move |conn| {
            use diesel::RunQueryDsl as _;
            let sql = match conn {
                conclave::db::DbConnection::Sqlite(_) => {
                    format!("UPDATE sqlite_sequence SET seq = seq + {n} WHERE name = 'messages'")
                }
                conclave::db::DbConnection::Postgresql(_) => format!(
                    "SELECT setval('messages_id_seq', (SELECT MAX(id) FROM messages) + {n})"
                ),
            };
            diesel::sql_query(sql)
                .execute(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn search_walks_back_through_a_long_history_for_rare_words_and_pages_on() {
    let Team { app, ada, .. } = team().await;
    let general = create_room(&ada, &app, "general", "public").await;
    let random = create_room(&ada, &app, "random", "public").await;
    // Old messages far behind the newest, in both rooms, then many newer ones.
    say(&ada, &app, general, "walrus and carpenter, long ago").await;
    say(&ada, &app, random, "the carpenter met a walrus too").await;
    skip_message_ids(&app, 30_000).await;
    say(&ada, &app, random, "a carpenter alone").await;
    skip_message_ids(&app, 9_000).await;
    say(&ada, &app, general, "carpenter").await;
    say(&ada, &app, general, "walrus").await;
    for n in 0..30 {
        let room = if n % 2 == 0 { general } else { random };
        say(&ada, &app, room, &format!("carpenter news {n}")).await;
    }
    let search = |query: String| {
        let (ada, app) = (&ada, &app);
        async move {
            let (status, found) = get(ada, app, &format!("/api/v1/search?{query}")).await;
            assert_eq!(status, 200, "{found}");
            found["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["message"]["body"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    // Both words, found only in the oldest messages, across the gap and in both rooms.
    assert_eq!(
        search("q=walrus+carpenter".to_owned()).await,
        [
            "the carpenter met a walrus too",
            "walrus and carpenter, long ago"
        ]
    );
    // The common word: newest first, then the next page goes on across the gaps.
    let first = search("q=carpenter&limit=20".to_owned()).await;
    assert_eq!(first.len(), 20);
    assert_eq!(first[0], "carpenter news 29");
    let (_, page) = get(&ada, &app, "/api/v1/search?q=carpenter&limit=20").await;
    let last = page["results"][19]["message"]["id"].as_i64().unwrap();
    let (_, rest) = get(
        &ada,
        &app,
        &format!("/api/v1/search?q=carpenter&limit=20&before={last}"),
    )
    .await;
    let rest: Vec<&str> = rest["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["message"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        rest[rest.len() - 4..],
        [
            "carpenter",
            "a carpenter alone",
            "the carpenter met a walrus too",
            "walrus and carpenter, long ago"
        ]
    );
    assert_eq!(rest.len(), 10 + 4);
    // A cursor before the first possible id finds nothing (it once overflowed: a 500).
    for before in ["1", "0", "-9223372036854775808"] {
        let (status, nothing) = get(
            &ada,
            &app,
            &format!("/api/v1/search?q=carpenter&before={before}"),
        )
        .await;
        assert_eq!(status, 200, "before={before}");
        assert_eq!(nothing["results"], serde_json::json!([]), "before={before}");
    }
    // A filter narrows the walk without losing the old match.
    assert_eq!(
        search(format!("q=walrus&room={general}")).await,
        ["walrus", "walrus and carpenter, long ago"]
    );
}

#[tokio::test]
async fn search_finds_word_forms_across_readable_rooms_only() {
    let Team {
        app,
        ada,
        carl,
        eve,
        ids: [ada_id, carl_id, _],
        ..
    } = team().await;
    let general = create_room(&ada, &app, "general", "public").await;
    let secret = create_room(&ada, &app, "secret", "private").await;
    post(
        &carl,
        &app,
        &format!("/api/v1/rooms/{general}/members"),
        json!({}),
    )
    .await;
    say(
        &ada,
        &app,
        secret,
        "The quarterly budget meetings are moved",
    )
    .await;
    say(&ada, &app, general, "Budget review tomorrow at the Café").await;
    say(&carl, &app, general, "I will bring the budget numbers").await;
    let deleted = say(&ada, &app, general, "budget draft that I regret").await;
    let edited = say(&carl, &app, general, "old wording").await;
    let search = |person: &Device, query: &str| {
        let path = format!("/api/v1/search?{query}");
        let app = &app;
        let person = person.client.clone();
        async move {
            let response = person.get(app.url(&path)).send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let bodies = |found: &Value| -> Vec<String> {
        found["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["message"]["body"].as_str().unwrap().to_owned())
            .collect()
    };

    delete(
        &ada,
        &app,
        &format!("/api/v1/rooms/{general}/messages/{}", deleted["id"]),
    )
    .await;
    patch(
        &carl,
        &app,
        &format!("/api/v1/rooms/{general}/messages/{}", edited["id"]),
        json!({"body": "new wording about the budget"}),
    )
    .await;

    // Eve (not in the private room) finds only public messages; newest first.
    let (status, found) = search(&eve, "q=budget").await;
    assert_eq!(status, 200);
    assert_eq!(
        bodies(&found),
        [
            "new wording about the budget",
            "I will bring the budget numbers",
            "Budget review tomorrow at the Café"
        ]
    );
    // Ada finds the private one too; word forms and AND.
    let (_, found) = search(&ada, "q=meeting+budgets").await;
    assert_eq!(bodies(&found), ["The quarterly budget meetings are moved"]);
    let snippet = found["results"][0]["snippet_html"].as_str().unwrap();
    assert!(
        snippet.contains("<mark>budget</mark>") && snippet.contains("<mark>meetings</mark>"),
        "{snippet}"
    );
    // Diacritics fold both ways.
    let (_, found) = search(&eve, "q=cafe").await;
    assert_eq!(bodies(&found), ["Budget review tomorrow at the Café"]);
    let (_, found) = search(&eve, "q=caf%C3%A9").await;
    assert_eq!(bodies(&found).len(), 1);
    // Deleted text and replaced words are not found.
    assert!(bodies(&search(&ada, "q=regret").await.1).is_empty());
    assert!(bodies(&search(&ada, "q=old+wording").await.1).is_empty());
    // Filters: room, sender, dates.
    let (_, found) = search(&ada, &format!("q=budget&room={general}&sender={carl_id}")).await;
    assert_eq!(
        bodies(&found),
        [
            "new wording about the budget",
            "I will bring the budget numbers"
        ]
    );
    let (_, found) = search(&ada, &format!("q=budget&sender={ada_id}")).await;
    assert_eq!(bodies(&found).len(), 2);
    let (_, found) = search(&ada, "q=budget&to=2000-01-01").await;
    assert!(bodies(&found).is_empty());
    let today = chrono::Utc::now().date_naive();
    let (_, found) = search(&ada, &format!("q=budget&from={today}&to={today}")).await;
    assert_eq!(bodies(&found).len(), 4);
    let (_, found) = search(&ada, "q=budget&limit=2").await;
    assert_eq!(bodies(&found).len(), 2);
    let before = found["results"][1]["message"]["id"].as_i64().unwrap();
    let (_, rest) = search(&ada, &format!("q=budget&before={before}")).await;
    assert_eq!(bodies(&rest).len(), 2, "the next page");
    // A room I cannot read is 404, not an empty result.
    assert_eq!(
        search(&eve, &format!("q=budget&room={secret}")).await.0,
        404
    );
    // Bad input.
    for query in [
        "q=",
        "q=%21%21",
        "q=a&from=yesterday",
        "q=a&from=2026-02-02&to=2026-01-01",
        "q=a&limit=500",
    ] {
        assert_eq!(search(&ada, query).await.0, 400, "{query}");
    }
}

#[tokio::test]
async fn nothing_readable_is_left_at_rest() {
    let Team { app, ada, .. } = team().await;
    let room = create_room(&ada, &app, "vault", "private").await;
    let phrase = "xylophone marmalade quokka";
    say(&ada, &app, room, &format!("The code word is {phrase}")).await;
    let found = ada
        .client
        .get(app.url("/api/v1/search?q=quokka"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(found["results"].as_array().unwrap().len(), 1, "searchable");
    let words = ["xylophone", "marmalade", "quokka", "code word"];
    match backend() {
        crate::helpers::TestBackend::Sqlite => {
            let url = secrecy::ExposeSecret::expose_secret(
                app.state.settings.database.url.as_ref().unwrap(),
            )
            .to_owned();
            let path = url.strip_prefix("sqlite://").unwrap().to_owned();
            // The WAL holds the newest pages; check it and the main file, after a checkpoint too.
            let mut bytes = std::fs::read(&path).unwrap();
            bytes.extend(std::fs::read(format!("{path}-wal")).unwrap_or_default());
            for word in words {
                assert!(
                    !contains(&bytes, word.as_bytes()),
                    "{word} found in the SQLite files"
                );
            }
        }
        crate::helpers::TestBackend::Postgres => {
            let url = secrecy::ExposeSecret::expose_secret(
                app.state.settings.database.url.as_ref().unwrap(),
            )
            .to_owned();
            let dump = std::process::Command::new("pg_dump")
                .args([
                    "--data-only",
                    "--table=messages",
                    "--table=message_terms",
                    "--table=conversation_keys",
                ])
                .arg(&url)
                .output()
                .unwrap();
            assert!(
                dump.status.success(),
                "{}",
                String::from_utf8_lossy(&dump.stderr)
            );
            let text = String::from_utf8_lossy(&dump.stdout).to_string();
            assert!(
                text.contains("COPY public.messages"),
                "the dump has the table"
            );
            for word in words {
                assert!(!text.contains(word), "{word} found in the dump");
            }
        }
    }
}

pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn a_user_exports_their_messages() {
    let Team { app, ada, carl, .. } = team().await;
    let room = create_room(&ada, &app, "general", "public").await;
    post(
        &carl,
        &app,
        &format!("/api/v1/rooms/{room}/members"),
        json!({}),
    )
    .await;
    say(&ada, &app, room, "mine one").await;
    say(&carl, &app, room, "not mine").await;
    say(&ada, &app, room, "mine two").await;
    let response = ada
        .client
        .get(app.url("/api/v1/me/export"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()[reqwest::header::CONTENT_DISPOSITION]
            .to_str()
            .unwrap()
            .contains("attachment")
    );
    let export: Value = response.json().await.unwrap();
    let bodies: Vec<_> = export["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["mine one", "mine two"]);
    assert_eq!(export["rooms"][0]["name"], "general");
}

#[tokio::test]
async fn keys_rotate_rewraps_room_keys_without_touching_messages() {
    use base64::Engine as _;
    let old = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let new = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    let kek = old.clone();
    let Team { app, ada, .. } =
        team_with(move |s| s.keys.kek = Some(secrecy::SecretString::from(kek))).await;
    let room = create_room(&ada, &app, "general", "public").await;
    say(&ada, &app, room, "before rotation").await;
    let sealed = || async {
        app.state
            .db
            .run(|conn| {
                use conclave::schema::{conversation_keys, messages};
                use diesel::prelude::*;
                let bodies = messages::table
                    .select(messages::body_sealed)
                    .load::<Option<Vec<u8>>>(conn)?;
                let keks = conversation_keys::table
                    .select(conversation_keys::kek_id)
                    .load::<String>(conn)?;
                Ok::<_, conclave::db::DbError>((bodies, keks))
            })
            .await
            .unwrap()
    };
    let (bodies_before, keks_before) = sealed().await;

    let rotate = || {
        app.command()
            .env("CONCLAVE__KEYS__KEK", &new)
            .env("CONCLAVE__KEYS__PREVIOUS_KEKS", &old)
            .args(["keys", "rotate"])
            .output()
            .unwrap()
    };
    let output = rotate();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("re-wrapped 1 room key"),
        "{output:?}"
    );
    let (bodies_after, keks_after) = sealed().await;
    assert_eq!(bodies_after, bodies_before, "messages are not re-encrypted");
    assert_ne!(keks_after, keks_before);
    let again = rotate();
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("re-wrapped 0 room key(s); 1 already"),
        "{again:?}"
    );

    // Only the new key opens the history now.
    let open_with = |kek: &str| {
        let mut settings = (*app.state.settings).clone();
        settings.keys.kek = Some(secrecy::SecretString::from(kek.to_owned()));
        settings.keys.previous_keks = Vec::new();
        let master = conclave::crypto::load_master_key(&settings).unwrap();
        conclave::startup::history_store(
            &settings,
            &master,
            app.state.db.clone(),
            app.state.chat.personal_keys().clone(),
        )
        .unwrap()
    };
    let page = open_with(&new)
        .page(room, conclave::history::Cursor::Latest, 10)
        .await
        .unwrap();
    assert_eq!(page[0].body.as_deref(), Some("before rotation"));
    assert!(
        open_with(&old)
            .page(room, conclave::history::Cursor::Latest, 10)
            .await
            .is_err()
    );
}

/// Posts a form and follows the redirect (the test clients do not follow on their own);
/// answers the final URL path and page.
async fn submit(
    person: &Device,
    app: &TestApp,
    path: &str,
    fields: &[(&str, &str)],
) -> (String, String) {
    let mut all: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    all.push(("csrf_token".to_owned(), person.csrf(app)));
    let response = person
        .client
        .post(app.url(path))
        .form(&all)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303, "{path} redirects");
    let location = response.headers()[reqwest::header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    let page = person.client.get(app.url(&location)).send().await.unwrap();
    assert_eq!(page.status(), 200, "{location}");
    (location, page.text().await.unwrap())
}

#[tokio::test]
async fn room_pages_work_without_javascript() {
    let Team { app, ada, carl, .. } = team().await;
    let (location, _) = submit(
        &ada,
        &app,
        "/rooms",
        &[
            ("name", "planning"),
            ("topic", "Q4"),
            ("visibility", "public"),
        ],
    )
    .await;
    assert!(location.starts_with("/rooms/"), "{location}");
    let room_url = location.split('?').next().unwrap().to_owned();
    for _ in 0..2 {
        submit(
            &ada,
            &app,
            &format!("{room_url}/messages"),
            &[("body", "Hello *world*"), ("idempotency_key", "form-key-1")],
        )
        .await;
    }
    let page = ada
        .client
        .get(app.url(&room_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        page.matches("Hello <em>world</em>").count(),
        1,
        "a resubmitted form posts once"
    );
    // Carl (not a member) sees a join button, no compose box; joining gives him one.
    let carl_view = carl
        .client
        .get(app.url(&room_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(carl_view.contains("Join this room to post") && !carl_view.contains("compose-body"));
    let (_, joined) = submit(&carl, &app, &format!("{room_url}/join"), &[]).await;
    assert!(joined.contains("You joined the room.") && joined.contains("compose-body"));
    // Errors come back as a message on the page.
    let (_, empty) = submit(
        &ada,
        &app,
        &format!("{room_url}/messages"),
        &[("body", " ")],
    )
    .await;
    assert!(empty.contains("body: must not be empty"), "{empty}");
    // Rooms list, search page with highlights.
    let list = ada
        .client
        .get(app.url("/rooms"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(list.contains("planning"));
    let results = ada
        .client
        .get(app.url("/search?q=worlds"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(results.contains("<mark>world</mark>"), "{results}");
    let bad = ada
        .client
        .get(app.url("/search?q=x&from=nonsense"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 200);
    assert!(bad.text().await.unwrap().contains("from: give a day"));
    // Odd ids are a 404 or an ignored reply, never a crash.
    let edit = ada
        .client
        .get(app.url(&format!("{room_url}/messages/-9223372036854775808/edit")))
        .send()
        .await
        .unwrap();
    assert_eq!(edit.status(), 404);
    let odd = ada
        .client
        .get(app.url(&format!("{room_url}?reply=-9223372036854775808")))
        .send()
        .await
        .unwrap();
    assert_eq!(odd.status(), 200);
    // A form post without the CSRF token is refused.
    let forged = ada
        .client
        .post(app.url(&format!("{room_url}/messages")))
        .form(&[("body", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
}

#[tokio::test]
async fn retention_deletes_expired_messages_and_their_index_unless_on_legal_hold() {
    use conclave::history::retention::{RETENTION_JOB, purge_expired};
    use conclave::schema::{jobs, message_terms, messages};
    use diesel::prelude::*;
    let Team { app, ada, .. } = team().await;
    let kept = create_room(&ada, &app, "kept", "public").await;
    let held = create_room(&ada, &app, "held", "public").await;
    let old = say(&ada, &app, kept, "ancient launch codes").await["id"]
        .as_i64()
        .unwrap();
    let fresh = say(&ada, &app, kept, "fresh launch plans").await["id"]
        .as_i64()
        .unwrap();
    let reply = post(
        &ada,
        &app,
        &format!("/api/v1/rooms/{kept}/messages"),
        json!({"body": "about the codes", "reply_to": old}),
    )
    .await
    .1["id"]
        .as_i64()
        .unwrap();
    let on_hold = say(&ada, &app, held, "ancient held launch records").await["id"]
        .as_i64()
        .unwrap();
    for (room, hold) in [(kept, false), (held, true)] {
        let (status, _) = patch(
            &ada,
            &app,
            &format!("/api/v1/rooms/{room}"),
            json!({"retention_days": 30, "legal_hold": hold}),
        )
        .await;
        assert_eq!(status, 200);
    }
    // Age two messages past the 30 days.
    let aged = chrono::Utc::now().naive_utc() - chrono::TimeDelta::days(31);
    app.state
        .db
        .run(move |conn| {
            diesel::update(messages::table.filter(messages::id.eq_any([old, on_hold])))
                .set(messages::created_at.eq(aged))
                .execute(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap();

    // The scheduled job does it (made due now).
    let job: i64 = app
        .state
        .db
        .run(|conn| {
            let id = jobs::table
                .filter(jobs::kind.eq(RETENTION_JOB))
                .filter(jobs::state.eq("queued"))
                .select(jobs::id)
                .first::<i64>(conn)?;
            diesel::update(jobs::table.find(id))
                .set(jobs::run_at.eq(chrono::Utc::now().naive_utc()))
                .execute(conn)?;
            Ok::<_, conclave::db::DbError>(id)
        })
        .await
        .unwrap();
    app.state.queue.wake();
    crate::helpers::wait_for_job(&app.state.queue, job, |j| j.state == "succeeded").await;

    let (_, page) = get(&ada, &app, &format!("/api/v1/rooms/{kept}/messages")).await;
    let ids: Vec<i64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [fresh, reply], "the expired message is gone");
    assert_eq!(
        page["messages"][1]["reply_to"],
        Value::Null,
        "a reply outlives what it replied to"
    );
    let (_, page) = get(&ada, &app, &format!("/api/v1/rooms/{held}/messages")).await;
    assert_eq!(
        page["messages"][0]["id"].as_i64(),
        Some(on_hold),
        "legal hold keeps it"
    );
    let terms: i64 = app
        .state
        .db
        .run(move |conn| {
            message_terms::table
                .filter(message_terms::message_id.eq(old))
                .count()
                .get_result(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap();
    assert_eq!(terms, 0, "its index entries went with it");
    let found = ada
        .client
        .get(app.url("/api/v1/search?q=ancient"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        found["results"].as_array().unwrap().len(),
        1,
        "only the held one is found"
    );
    // Running again deletes nothing more.
    let again = app
        .state
        .db
        .run(|conn| {
            purge_expired(conn, chrono::Utc::now().naive_utc()).map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap();
    assert_eq!(again, 0);
}
