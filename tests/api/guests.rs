//! Guest mode: off by default; when on, a visitor gets a random id in a cookie (not their
//! address), an ephemeral conversation streamed over the response, and a strict quota.

use serde_json::{Value, json};

use crate::assistant::team_with_fake;
use crate::helpers::{TestApp, eventually};

fn visitor() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Sends a guest message; (status, the `data:` events, the body when not a stream).
async fn ask(app: &TestApp, client: &reqwest::Client, text: &str) -> (u16, Vec<Value>, Value) {
    let response = client
        .post(app.url("/api/v1/guest/messages"))
        .header("origin", &app.address)
        .json(&json!({ "body": text }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    if status != 200 {
        let mut body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        body["retry_after"] = json!(retry_after);
        return (status, Vec::new(), body);
    }
    let events = text
        .split("\n\n")
        .filter_map(|block| block.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    (status, events, Value::Null)
}

fn text_of(events: &[Value]) -> String {
    events.iter().filter_map(|e| e["text"].as_str()).collect()
}

#[tokio::test]
async fn guest_mode_is_off_by_default() {
    let (team, _fake, _) = team_with_fake(|_| {}).await;
    let app = &team.app;
    let page = visitor().get(app.url("/guest")).send().await.unwrap();
    assert_eq!(page.status(), 404);
    let (status, _, _) = ask(app, &visitor(), "hello").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn guests_get_a_random_id_an_ephemeral_conversation_and_a_strict_quota() {
    let (team, fake, _) = team_with_fake(|settings| {
        settings.assistant.guests_enabled = true;
        settings.assistant.guest_messages_per_day = 2;
        settings.assistant.guest_max_output_tokens = 64;
    })
    .await;
    let app = &team.app;
    let guest = visitor();
    let page = guest.get(app.url("/guest")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let cookie = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("conclave_guest="))
        .expect("a guest cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let id = cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("conclave_guest=")
        .to_owned();
    assert_eq!(id.len(), 22, "128 random bits, not an address: {id}");
    assert!(!id.contains("127"), "{id}");
    assert!(
        page.text()
            .await
            .unwrap()
            .contains(r#"class="remaining">2</span> left today"#)
    );

    let (status, events, _) = ask(app, &guest, "hello from a guest").await;
    assert_eq!(status, 200);
    assert_eq!(text_of(&events), "You said: hello from a guest");
    let done = events.last().unwrap();
    assert_eq!(
        (done["done"].clone(), done["state"].clone()),
        (json!(true), json!("completed"))
    );
    assert_eq!(done["remaining"], 1);
    assert_eq!(
        fake.seen.body("echo")["max_tokens"],
        64,
        "guests get short answers"
    );

    // The conversation continues (the first exchange is sent along), and is shown on the page.
    let (_, events, _) = ask(app, &guest, "and more").await;
    assert_eq!(text_of(&events), "You said: and more");
    let sent = fake.seen.body("echo")["messages"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(sent.len(), 4, "{sent:?}");
    let page = guest
        .get(app.url("/guest"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("hello from a guest") && page.contains("You said: and more"));
    assert!(page.contains(r#"class="remaining">0</span> left today"#));

    // The quota is per guest and per day.
    let (status, _, problem) = ask(app, &guest, "one more?").await;
    assert_eq!(status, 429, "{problem}");
    assert_eq!(problem["error"], "guest_quota");
    assert!(
        problem["retry_after"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            <= 86_400
    );
    let other = visitor();
    let (status, events, _) = ask(app, &other, "a different visitor").await;
    assert_eq!(status, 200, "same address, another guest, their own quota");
    assert_eq!(text_of(&events), "You said: a different visitor");

    // Nothing of it is kept in the database but the usage, with no person attached.
    let rows = eventually(std::time::Duration::from_secs(5), || async {
        let rows: Vec<(Option<i64>, String)> = app
            .state
            .db
            .run(|conn| {
                use conclave::schema::assistant_usage as u;
                use diesel::prelude::*;
                u::table
                    .select((u::user_id, u::source))
                    .load(conn)
                    .map_err(conclave::db::DbError::from)
            })
            .await
            .unwrap();
        (rows.len() == 3).then_some(rows)
    })
    .await
    .expect("three usage rows");
    assert!(
        rows.iter()
            .all(|(user, source)| user.is_none() && source == "guest")
    );

    // Bad input is refused clearly; starting over keeps the quota.
    let (status, _, _) = ask(app, &other, "   ").await;
    assert_eq!(status, 400);
    let page = other
        .get(app.url("/guest"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf_token\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let reset = other
        .post(app.url("/guest/reset"))
        .header("origin", &app.address)
        .form(&[("csrf_token", csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 303);
    let page = other
        .get(app.url("/guest"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("a different visitor"),
        "the conversation is gone"
    );
    assert!(
        page.contains(r#"class="remaining">1</span> left today"#),
        "the quota is not"
    );
}

#[tokio::test]
async fn the_whole_server_caps_guest_messages_per_minute() {
    let (team, _fake, _) = team_with_fake(|settings| {
        settings.assistant.guests_enabled = true;
        settings.assistant.guest_messages_per_minute = 2;
    })
    .await;
    let app = &team.app;
    for _ in 0..2 {
        let (status, _, _) = ask(app, &visitor(), "hi").await;
        assert_eq!(status, 200);
    }
    let (status, _, problem) = ask(app, &visitor(), "hi").await;
    assert_eq!(status, 429, "{problem}");
    assert_eq!(problem["error"], "guests_busy");
    // Signed-in people go to their own assistant.
    let response = team.ada.client.get(app.url("/guest")).send().await.unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/assistant");
}
