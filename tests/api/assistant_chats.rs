//! Personal assistant chats and the assistant in group rooms: the message is stored, the
//! answer streams to open tabs over the realtime connection and is stored; stop, regenerate,
//! titles, artifacts, search, privacy tiers, and answers abandoned by a dying node.

use std::time::Duration;

use diesel::prelude::*;
use serde_json::{Value, json};

use crate::assistant::{settled_usage, team_with_fake};
use crate::helpers::{Device, TEAM_PASSWORD, TestApp, eventually};
use crate::realtime::{Client, join};
use crate::rooms::{create_room, delete, patch, post, unlock_private};

async fn new_chat(person: &Device, app: &TestApp, body: Value) -> i64 {
    let (status, chat) = post(person, app, "/api/v1/assistant/chats", body).await;
    assert_eq!(status, 201, "{chat}");
    chat["chat"]["id"].as_i64().unwrap()
}

async fn say(person: &Device, app: &TestApp, chat: i64, text: &str) -> Value {
    let (status, message) = post(
        person,
        app,
        &format!("/api/v1/assistant/chats/{chat}/messages"),
        json!({"body": text}),
    )
    .await;
    assert_eq!(status, 201, "{message}");
    message
}

/// Assistant frames of `room` until its reply finishes: (deltas joined, the finished reply,
/// the events seen; a stored message of the assistant counts as the event `message`).
async fn answer(client: &mut Client) -> (String, Value, Vec<String>) {
    let mut text = String::new();
    let mut events = Vec::new();
    let mut seq = 0;
    loop {
        let frame = client.next().await;
        if frame["type"] == "message" && frame["message"]["sender"]["kind"] == "assistant" {
            events.push(format!("message:{}", frame["message"]["id"]));
            continue;
        }
        if frame["type"] != "assistant" {
            continue;
        }
        let event = frame["event"].as_str().unwrap().to_owned();
        events.push(event.clone());
        match event.as_str() {
            "delta" => {
                let next = frame["seq"].as_u64().unwrap();
                assert_eq!(next, seq + 1, "deltas in order");
                seq = next;
                text.push_str(frame["text"].as_str().unwrap());
            }
            "finished" => return (text, frame["reply"].clone(), events),
            _ => {}
        }
    }
}

async fn chat_state(person: &Device, app: &TestApp, chat: i64) -> Value {
    person
        .get_json(app, &format!("/api/v1/assistant/chats/{chat}"))
        .await
}

#[tokio::test]
async fn a_new_chat_streams_its_answer_to_open_tabs_stores_it_and_gets_a_title() {
    let (team, fake, _) = team_with_fake(|_| {}).await;
    let app = &team.app;
    let chat = new_chat(&team.ada, app, json!({})).await;
    let state = chat_state(&team.ada, app, chat).await;
    assert_eq!(state["chat"]["title"], "New chat");
    assert_eq!(state["chat"]["privacy"], "standard");

    // Two tabs of the same person both see the answer stream in.
    let mut tab1 = Client::browser(app, &team.ada).await;
    let mut tab2 = Client::browser(app, &team.ada).await;
    tab1.subscribe(chat, None).await;
    tab2.subscribe(chat, None).await;
    let question = say(&team.ada, app, chat, "hello there friend").await;
    let (text, reply, events) = answer(&mut tab1).await;
    assert_eq!(text, "You said: hello there friend");
    assert_eq!(events.first().map(String::as_str), Some("queued"));
    assert!(events.contains(&"started".to_owned()));
    assert_eq!(reply["state"], "completed");
    assert_eq!(reply["prompt_message_id"], question["id"]);
    let (text2, _, _) = answer(&mut tab2).await;
    assert_eq!(text2, text);
    // The stored answer arrives as an ordinary message too, before the reply says it ended.
    assert!(
        events.contains(&format!("message:{}", reply["message_id"])),
        "{events:?}"
    );

    let state = chat_state(&team.ada, app, chat).await;
    let messages = state["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1]["sender"]["kind"], "assistant");
    assert_eq!(state["replies"][0]["state"], "completed");
    // The deployment's instructions come first; the question last.
    let sent = fake.seen.nth(0);
    assert_eq!(sent["messages"][0]["role"], "system");
    assert!(
        sent["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("helpful assistant")
    );
    assert_eq!(sent["messages"][1]["content"], "hello there friend");

    // A title replaces "New chat" after the first exchange.
    let titled = tab1.expect("assistant").await;
    assert_eq!(titled["event"], "titled", "{titled}");
    let title = titled["title"].as_str().unwrap();
    assert!(!title.is_empty() && title != "New chat" && title.chars().count() <= 61);
    assert_eq!(
        chat_state(&team.ada, app, chat).await["chat"]["title"],
        title
    );
    let rows = settled_usage(app, 2).await;
    assert!(rows.iter().all(|r| r.2 == "chat"), "{rows:?}");

    // A second message gets the whole conversation.
    say(&team.ada, app, chat, "and again").await;
    let (text, _, _) = answer(&mut tab1).await;
    assert_eq!(text, "You said: and again");
    // Requests so far: the first answer, the title, this answer.
    let sent = fake.seen.nth(2)["messages"].as_array().unwrap().clone();
    assert_eq!(
        sent.len(),
        4,
        "system, question, answer, question: {sent:?}"
    );
    assert_eq!(sent[2]["role"], "assistant");
}

#[tokio::test]
async fn stop_keeps_the_partial_answer_marked_stopped_and_bills_what_was_made() {
    let (team, fake, _) = team_with_fake(|_| {}).await;
    let app = &team.app;
    let chat = new_chat(&team.ada, app, json!({"model": "slow"})).await;
    let mut tab = Client::browser(app, &team.ada).await;
    tab.subscribe(chat, None).await;
    say(&team.ada, app, chat, "tell me everything").await;
    let mut reply_id = None;
    let mut text = String::new();
    while text.len() < 6 {
        let frame = tab.expect("assistant").await;
        if frame["event"] == "delta" {
            reply_id = frame["reply_id"].as_i64();
            text.push_str(frame["text"].as_str().unwrap());
        }
    }
    let reply_id = reply_id.unwrap();
    let (status, stopped) = post(
        &team.ada,
        app,
        &format!("/api/v1/assistant/replies/{reply_id}/stop"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{stopped}");
    let (_, reply, _) = answer(&mut tab).await;
    assert_eq!(reply["state"], "stopped");
    let state = chat_state(&team.ada, app, chat).await;
    let kept = state["messages"][1]["body"].as_str().unwrap();
    assert!(
        kept.starts_with("w1 "),
        "the partial answer is kept: {kept}"
    );
    assert!(!kept.contains("w20"), "stopped before the end: {kept}");
    assert_eq!(state["replies"][0]["state"], "stopped");
    eventually(Duration::from_secs(5), || async {
        (fake
            .seen
            .abandoned
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1)
            .then_some(())
    })
    .await
    .expect("the provider call was dropped");
    let rows = settled_usage(app, 1).await;
    assert_eq!(rows[0].6, "cancelled");
    // Stopping again, or someone else stopping it, changes nothing / finds nothing.
    let (status, again) = post(
        &team.ada,
        app,
        &format!("/api/v1/assistant/replies/{reply_id}/stop"),
        json!({}),
    )
    .await;
    assert_eq!(
        (status, again["reply"]["state"].clone()),
        (200, json!("stopped"))
    );
    let (status, _) = post(
        &team.carl,
        app,
        &format!("/api/v1/assistant/replies/{reply_id}/stop"),
        json!({}),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn failed_answers_are_visible_and_regenerate_replaces_the_last_answer() {
    let (team, _fake, _) = team_with_fake(|s| s.assistant.breaker_failures = 100).await;
    let app = &team.app;
    let chat = new_chat(&team.ada, app, json!({"model": "broken"})).await;
    let mut tab = Client::browser(app, &team.ada).await;
    tab.subscribe(chat, None).await;
    say(&team.ada, app, chat, "will this work").await;
    let (_, reply, _) = answer(&mut tab).await;
    assert_eq!(reply["state"], "failed");
    assert!(
        reply["error"].as_str().unwrap().contains("model exploded"),
        "{reply}"
    );
    assert!(reply["message_id"].is_null(), "nothing was generated");

    let (status, _) = patch(
        &team.ada,
        app,
        &format!("/api/v1/assistant/chats/{chat}"),
        json!({"model": "echo"}),
    )
    .await;
    assert_eq!(status, 200);
    let regenerate = format!("/api/v1/assistant/chats/{chat}/regenerate");
    let (status, again) = post(&team.ada, app, &regenerate, json!({})).await;
    assert_eq!(status, 202, "{again}");
    let (text, reply, _) = answer(&mut tab).await;
    assert_eq!(
        (text.as_str(), reply["state"].as_str()),
        ("You said: will this work", Some("completed"))
    );
    let first_answer = reply["message_id"].as_i64().unwrap();

    // Regenerating a completed answer deletes it and answers anew.
    let (status, _) = post(&team.ada, app, &regenerate, json!({})).await;
    assert_eq!(status, 202);
    let deleted = tab.expect("message_deleted").await;
    assert_eq!(deleted["message_id"], first_answer);
    let (_, reply, _) = answer(&mut tab).await;
    assert_eq!(reply["state"], "completed");
    let state = chat_state(&team.ada, app, chat).await;
    let bodies: Vec<Value> = state["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].clone())
        .collect();
    assert_eq!(
        bodies,
        [
            json!("will this work"),
            Value::Null,
            json!("You said: will this work")
        ]
    );
    assert_eq!(state["replies"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn an_answer_whose_node_died_becomes_a_failed_retryable_answer() {
    let (team, _fake, _) = team_with_fake(|_| {}).await;
    let app = &team.app;
    let chat = new_chat(&team.ada, app, json!({})).await;
    let question = say(&team.ada, app, chat, "first").await;
    let mut tab = Client::browser(app, &team.ada).await;
    tab.subscribe(chat, None).await;
    answer(&mut tab).await;
    // A reply that a node was streaming when it died: its lease lapsed a while ago.
    let question_id = question["id"].as_i64().unwrap();
    let user = team.ids[0];
    let stale: i64 = app
        .state
        .db
        .run(move |conn| {
            use conclave::schema::assistant_replies as r;
            let past = chrono::Utc::now().naive_utc() - chrono::TimeDelta::seconds(60);
            diesel::insert_into(r::table)
                .values((
                    r::room_id.eq(chat),
                    r::user_id.eq(user),
                    r::prompt_message_id.eq(question_id),
                    r::model.eq("echo"),
                    r::state.eq("streaming"),
                    r::stop_requested.eq(false),
                    r::lease_until.eq(past),
                    r::created_at.eq(past),
                    r::updated_at.eq(past),
                ))
                .returning(r::id)
                .get_result(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap();
    app.state.replies.sweep().await.unwrap();
    let (_, reply, _) = answer(&mut tab).await;
    assert_eq!(reply["id"], stale);
    assert_eq!(reply["state"], "failed");
    assert!(reply["error"].as_str().unwrap().contains("interrupted"));
    let state = chat_state(&team.ada, app, chat).await;
    assert_eq!(state["replies"][1]["state"], "failed");
    let (status, _) = post(
        &team.ada,
        app,
        &format!("/api/v1/assistant/chats/{chat}/regenerate"),
        json!({}),
    )
    .await;
    assert_eq!(status, 202);
    let (text, reply, _) = answer(&mut tab).await;
    assert_eq!(
        (text.as_str(), reply["state"].as_str()),
        ("You said: first", Some("completed"))
    );
}

#[tokio::test]
async fn the_assistant_answers_mentions_in_rooms_that_switched_it_on() {
    let (team, fake, _) = team_with_fake(|_| {}).await;
    let app = &team.app;
    let room = create_room(&team.ada, app, "Planning", "public").await;
    join(&team.carl, app, room).await;
    let setting = format!("/api/v1/rooms/{room}/assistant");
    let put = |person: &Device, body: Value| {
        let (client, url, csrf) = (person.client.clone(), app.url(&setting), person.csrf(app));
        async move {
            let response = client
                .put(url)
                .header("x-csrf-token", csrf)
                .json(&body)
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap_or_default(),
            )
        }
    };
    assert_eq!(
        put(&team.carl, json!({"enabled": true})).await.0,
        403,
        "members cannot"
    );
    let (status, on) = put(&team.ada, json!({"enabled": true, "model": "echo"})).await;
    assert_eq!(status, 200, "{on}");
    assert_eq!(on["bot_name"], "assistant");
    assert_eq!(
        put(&team.ada, json!({"enabled": true, "model": "gpt-99"}))
            .await
            .0,
        400
    );
    assert_eq!(team.carl.get_json(app, &setting).await["enabled"], true);

    let mut ada_tab = Client::browser(app, &team.ada).await;
    ada_tab.subscribe(room, None).await;
    let messages = format!("/api/v1/rooms/{room}/messages");
    let (status, _) = post(&team.carl, app, &messages, json!({"body": "hello all"})).await;
    assert_eq!(status, 201);
    ada_tab.quiet("assistant", Duration::from_millis(500)).await;
    assert_eq!(fake.seen.calls("echo"), 0, "no mention, no answer");
    let (status, _) = post(
        &team.carl,
        app,
        &messages,
        json!({"body": "@assistant what is up"}),
    )
    .await;
    assert_eq!(status, 201);
    let (text, reply, _) = answer(&mut ada_tab).await;
    assert_eq!(reply["state"], "completed");
    assert!(text.ends_with("what is up"), "{text}");
    // The room's recent messages, with their authors, are the context.
    let sent = fake.seen.body("echo")["messages"]
        .as_array()
        .unwrap()
        .clone();
    let contents: Vec<&str> = sent.iter().filter_map(|m| m["content"].as_str()).collect();
    assert!(contents[0].contains("Planning"), "{contents:?}");
    assert!(
        contents.iter().any(|c| c.ends_with(": hello all")),
        "{contents:?}"
    );
    let rows = settled_usage(app, 1).await;
    assert_eq!(rows[0].2, "room");

    // A long answer is stopped by who asked or a moderator, not by any reader.
    assert_eq!(
        put(&team.ada, json!({"enabled": true, "model": "slow"}))
            .await
            .0,
        200
    );
    post(
        &team.carl,
        app,
        &messages,
        json!({"body": "@assistant tell a long one"}),
    )
    .await;
    let reply = loop {
        let frame = ada_tab.expect("assistant").await;
        if frame["event"] == "delta" {
            break frame["reply_id"].as_i64().unwrap();
        }
    };
    let stop = format!("/api/v1/assistant/replies/{reply}/stop");
    let (status, _) = post(&team.eve, app, &stop, json!({})).await;
    assert_eq!(status, 403, "a reader who did not ask");
    let (status, _) = post(&team.ada, app, &stop, json!({})).await;
    assert_eq!(status, 200, "the room's owner");
    let (_, reply, _) = answer(&mut ada_tab).await;
    assert_eq!(reply["state"], "stopped");

    // Switched off, mentions are just text.
    assert_eq!(put(&team.ada, json!({"enabled": false})).await.0, 200);
    post(
        &team.carl,
        app,
        &messages,
        json!({"body": "@assistant again?"}),
    )
    .await;
    ada_tab.quiet("assistant", Duration::from_millis(500)).await;
    assert_eq!(fake.seen.calls("echo"), 1);
}

#[tokio::test]
async fn chats_are_personal_listed_searched_renamed_and_deleted() {
    let (team, _fake, _) = team_with_fake(|_| {}).await;
    let app = &team.app;
    let chat = new_chat(
        &team.ada,
        app,
        json!({"message": "remember the zanzibar plan", "system_prompt": "Talk like a pirate."}),
    )
    .await;
    let done = eventually(Duration::from_secs(5), || async {
        let state = chat_state(&team.ada, app, chat).await;
        (state["replies"][0]["state"] == "completed").then_some(state)
    })
    .await
    .expect("answered");
    assert_eq!(done["chat"]["system_prompt"], "Talk like a pirate.");

    // Not a room in the room list, and nobody else's business.
    let rooms = team.ada.get_json(app, "/api/v1/rooms").await;
    assert!(
        !rooms.to_string().contains(&format!("\"id\":{chat},")),
        "{rooms}"
    );
    let response = team
        .carl
        .client
        .get(app.url(&format!("/api/v1/assistant/chats/{chat}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        team.carl.get_json(app, "/api/v1/assistant/chats").await["chats"],
        json!([])
    );

    let list = team.ada.get_json(app, "/api/v1/assistant/chats").await;
    assert_eq!(list["chats"][0]["id"], chat);
    let hits = team
        .ada
        .get_json(app, "/api/v1/assistant/chats/search?q=zanzibar")
        .await;
    assert_eq!(hits["hits"].as_array().unwrap().len(), 2, "{hits}");
    let none = team
        .carl
        .get_json(app, "/api/v1/assistant/chats/search?q=zanzibar")
        .await;
    assert_eq!(none["hits"], json!([]));

    let path = format!("/api/v1/assistant/chats/{chat}");
    let (status, renamed) = patch(&team.ada, app, &path, json!({"title": "Zanzibar"})).await;
    assert_eq!(status, 200, "{renamed}");
    assert_eq!(renamed["chat"]["title"], "Zanzibar");
    let (status, bad) = patch(&team.ada, app, &path, json!({"title": "  "})).await;
    assert_eq!(status, 400, "{bad}");
    assert!(bad["detail"].as_str().unwrap().contains("title"), "{bad}");
    let (status, _) = patch(&team.ada, app, &path, json!({"model": "nope"})).await;
    assert_eq!(status, 400);
    let (status, _) = patch(&team.ada, app, &path, json!({"colour": "red"})).await;
    assert_eq!(status, 400);
    let (status, _) = post(
        &team.ada,
        app,
        "/api/v1/assistant/chats",
        json!({"privacy": "secret"}),
    )
    .await;
    assert_eq!(status, 400);

    let (status, _) = delete(&team.carl, app, &path).await;
    assert_eq!(status, 404);
    let (status, _) = delete(&team.ada, app, &path).await;
    assert_eq!(status, 204);
    let response = team.ada.client.get(app.url(&path)).send().await.unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn artifacts_are_listed_versioned_and_downloaded() {
    let (team, _fake, _) = team_with_fake(|_| {}).await;
    let app = &team.app;
    let chat = new_chat(&team.ada, app, json!({})).await;
    let mut tab = Client::browser(app, &team.ada).await;
    tab.subscribe(chat, None).await;
    say(
        &team.ada,
        app,
        chat,
        "\n```rust src/main.rs\nfn main() {}\n```",
    )
    .await;
    answer(&mut tab).await;
    say(
        &team.ada,
        app,
        chat,
        "\n```rust src/main.rs\nfn main() { go() }\n```",
    )
    .await;
    answer(&mut tab).await;
    let list = team
        .ada
        .get_json(app, &format!("/api/v1/assistant/chats/{chat}/artifacts"))
        .await;
    let artifacts = list["artifacts"].as_array().unwrap();
    assert_eq!(artifacts.len(), 2, "{list}");
    assert_eq!(artifacts[0]["title"], "src/main.rs");
    assert_eq!(artifacts[0]["kind"], "code");
    assert_eq!(artifacts[0]["language"], "rust");
    assert_eq!(
        (
            artifacts[0]["version"].clone(),
            artifacts[1]["version"].clone()
        ),
        (json!(1), json!(2))
    );
    let response = team
        .ada
        .client
        .get(app.url(&format!(
            "/api/v1/assistant/chats/{chat}/artifacts/{}/0",
            artifacts[1]["message_id"]
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("src-main.rs")
    );
    assert_eq!(response.text().await.unwrap(), "fn main() { go() }\n");
    let missing = team
        .ada
        .client
        .get(app.url(&format!("/api/v1/assistant/chats/{chat}/artifacts/1/9")))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn preferences_and_chat_prompts_reach_the_model_and_ephemeral_and_private_chats_work() {
    let (team, fake, _) = team_with_fake(|_| {}).await;
    let app = &team.app;
    let put = team
        .ada
        .client
        .put(app.url("/api/v1/me/assistant"))
        .header("x-csrf-token", team.ada.csrf(app))
        .json(&json!({"system_prompt": "Always rhyme.", "model": "local"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let chat = new_chat(
        &team.ada,
        app,
        json!({"privacy": "ephemeral", "system_prompt": "Talk like a pirate."}),
    )
    .await;
    let mut tab = Client::browser(app, &team.ada).await;
    tab.subscribe(chat, None).await;
    say(&team.ada, app, chat, "ahoy").await;
    let (text, reply, _) = answer(&mut tab).await;
    assert_eq!(
        (text.as_str(), reply["model"].as_str()),
        ("You said: ahoy", Some("local"))
    );
    let system = fake.seen.body("llama3.2")["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        system.contains("Always rhyme.") && system.contains("Talk like a pirate."),
        "{system}"
    );
    // Ephemeral: nothing of it is written to the database.
    let stored: i64 = app
        .state
        .db
        .run(move |conn| {
            use conclave::schema::messages as m;
            m::table
                .filter(m::room_id.eq(chat))
                .count()
                .get_result(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap();
    assert_eq!(stored, 0);

    // Private chats need the person's unlocked key.
    let (status, locked) = post(
        &team.ada,
        app,
        "/api/v1/assistant/chats",
        json!({"privacy": "private"}),
    )
    .await;
    assert_eq!(status, 423, "{locked}");
    assert_eq!(unlock_private(&team.ada, app, TEAM_PASSWORD).await, 204);
    let private = new_chat(
        &team.ada,
        app,
        json!({"privacy": "private", "model": "echo"}),
    )
    .await;
    tab.subscribe(private, None).await;
    say(&team.ada, app, private, "secret stuff").await;
    let (text, _, _) = answer(&mut tab).await;
    assert_eq!(text, "You said: secret stuff");
}

#[tokio::test]
async fn deleting_an_account_deletes_its_assistant_chats() {
    let (team, _fake, _) = team_with_fake(|_| {}).await;
    let app = &team.app;
    let chat = new_chat(&team.carl, app, json!({"message": "my secret plan"})).await;
    eventually(Duration::from_secs(5), || async {
        let state = chat_state(&team.carl, app, chat).await;
        (state["replies"][0]["state"] == "completed").then_some(())
    })
    .await
    .expect("answered");
    let (status, erasure) = crate::rooms::send(
        &team.carl,
        app,
        reqwest::Method::DELETE,
        "/api/v1/me",
        Some(json!({ "password": TEAM_PASSWORD })),
    )
    .await;
    assert_eq!(status, 200, "{erasure}");
    assert_eq!(erasure["private_rooms_deleted"], 1, "the chat: {erasure}");
    let left: i64 = app
        .state
        .db
        .run(move |conn| {
            use conclave::schema::messages as m;
            m::table
                .filter(m::room_id.eq(chat))
                .count()
                .get_result(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap();
    assert_eq!(left, 0, "nothing of the chat is left");
}
