//! The assistant's providers and the OpenAI-compatible API, against the local fake provider
//! (realistic and broken streams), the third-party `mockllm` server, and with the official
//! `openai` Python package as a client.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use conclave::settings::{
    LlmModelSettings, LlmProviderKind, LlmProviderSettings, LlmRouteSettings, Settings,
};
use diesel::prelude::*;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::fake_llm::FakeLlm;
use crate::helpers::{Team, TestApp, eventually, team_with};
use crate::realtime::token_for;
use crate::rooms::post;

pub(crate) fn route(provider: &str, model: &str, weight: u32) -> LlmRouteSettings {
    LlmRouteSettings {
        provider: provider.to_owned(),
        model: model.to_owned(),
        weight,
    }
}

pub(crate) fn model(label: &str, routes: Vec<LlmRouteSettings>) -> LlmModelSettings {
    LlmModelSettings {
        label: label.to_owned(),
        routes,
        ..LlmModelSettings::default()
    }
}

/// Providers of every kind at the fake server, and a model per fake behaviour.
fn with_fake(settings: &mut Settings, fake: &str) {
    let assistant = &mut settings.assistant;
    assistant.providers.insert(
        "fake".to_owned(),
        LlmProviderSettings {
            kind: LlmProviderKind::Openai,
            base_url: format!("{fake}/v1"),
            api_key: Some(SecretString::from("sk-fake-openai-key")),
            idle_timeout_secs: 1,
            ..LlmProviderSettings::default()
        },
    );
    assistant.providers.insert(
        "fake-ollama".to_owned(),
        LlmProviderSettings {
            kind: LlmProviderKind::Ollama,
            base_url: fake.to_owned(),
            ..LlmProviderSettings::default()
        },
    );
    assistant.providers.insert(
        "fake-anthropic".to_owned(),
        LlmProviderSettings {
            kind: LlmProviderKind::Anthropic,
            base_url: fake.to_owned(),
            api_key: Some(SecretString::from("sk-ant-test")),
            ..LlmProviderSettings::default()
        },
    );
    for name in [
        "echo",
        "quiet",
        "cut",
        "malformed",
        "broken",
        "slow",
        "stall",
        "flood",
    ] {
        assistant
            .models
            .insert(name.to_owned(), model(name, vec![route("fake", name, 1)]));
    }
    assistant.models.insert(
        "local".to_owned(),
        model("Local", vec![route("fake-ollama", "llama3.2", 1)]),
    );
    assistant.models.insert(
        "claude".to_owned(),
        model("Claude", vec![route("fake-anthropic", "claude-test", 1)]),
    );
    assistant.default_model = "echo".to_owned();
}

pub(crate) async fn team_with_fake(
    customize: impl FnOnce(&mut Settings) + Send + 'static,
) -> (Team, FakeLlm, String) {
    let fake = FakeLlm::start().await;
    let url = fake.url.clone();
    let team = team_with(move |settings| {
        with_fake(settings, &url);
        customize(settings);
    })
    .await;
    let token = token_for(&team.ada, &team.app, &["read", "write"]).await;
    (team, fake, token)
}

async fn complete(app: &TestApp, token: &str, body: Value) -> (u16, Value) {
    let response = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A streamed answer: its `data:` payloads, and whether it ended with `[DONE]`.
async fn stream(app: &TestApp, token: &str, mut body: Value) -> (u16, Vec<Value>, bool) {
    body["stream"] = json!(true);
    let response = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    if status == 200 {
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
    }
    let text = response.text().await.unwrap();
    let mut events = Vec::new();
    let mut done = false;
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let data = block.strip_prefix("data: ").expect("every event is data");
        if data == "[DONE]" {
            done = true;
        } else {
            events.push(serde_json::from_str(data).expect("every event is JSON"));
        }
    }
    (status, events, done)
}

fn text_of(events: &[Value]) -> String {
    events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect()
}

fn ask(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": text},
    ]})
}

/// Usage rows of the app, oldest first: (model, variant, source, prompt, completion,
/// estimated, outcome).
pub(crate) async fn usage_rows(
    app: &TestApp,
) -> Vec<(String, String, String, i64, i64, bool, String)> {
    use conclave::schema::assistant_usage as u;
    app.state
        .db
        .run(|conn| {
            u::table
                .order(u::id.asc())
                .select((
                    u::model,
                    u::variant,
                    u::source,
                    u::prompt_tokens,
                    u::completion_tokens,
                    u::estimated,
                    u::outcome,
                ))
                .load(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap()
}

/// Waits until `count` usage rows exist (they are written just after the answer ends).
pub(crate) async fn settled_usage(
    app: &TestApp,
    count: usize,
) -> Vec<(String, String, String, i64, i64, bool, String)> {
    eventually(Duration::from_secs(5), || async {
        let rows = usage_rows(app).await;
        (rows.len() >= count).then_some(rows)
    })
    .await
    .unwrap_or_else(|| panic!("{count} usage rows never appeared"))
}

#[tokio::test]
async fn scripts_get_streamed_and_whole_answers_with_usage() {
    let (team, fake, token) = team_with_fake(|_| {}).await;
    let app = &team.app;

    let mut body = ask("echo", "hello there");
    body["stream_options"] = json!({"include_usage": true});
    let (status, events, done) = stream(app, &token, body).await;
    assert_eq!(status, 200);
    assert!(done, "a complete stream ends with [DONE]");
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(text_of(&events), "You said: hello there");
    let finish = events
        .iter()
        .find(|e| e["choices"][0]["finish_reason"].is_string())
        .unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(finish["model"], "echo");
    let usage = events.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 11);
    assert_eq!(usage["usage"]["completion_tokens"], 4);
    assert_eq!(usage["usage"]["estimated"], false);
    let ids: std::collections::HashSet<&str> =
        events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), 1, "one id across the chunks of an answer");
    // The provider was asked for usage, with the conversation as sent.
    let sent = fake.seen.body("echo");
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_eq!(sent["messages"][0]["content"], "Be brief.");

    let (status, answer) = complete(app, &token, ask("echo", "and now whole")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "You said: and now whole"
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(answer["usage"]["total_tokens"], 11 + 5);

    let rows = settled_usage(app, 2).await;
    assert!(
        rows.iter()
            .all(|r| r.0 == "echo" && r.1 == "fake/echo" && r.2 == "api" && r.6 == "completed")
    );
    assert_eq!((rows[1].3, rows[1].4, rows[1].5), (11, 5, false));
    let mine = team.ada.get_json(app, "/api/v1/me/usage").await;
    assert_eq!(mine["days"][0]["requests"], 2, "{mine}");
    assert_eq!(mine["days"][0]["completion_tokens"], 9);
    assert_eq!(mine["days"][0]["variant"], "fake/echo");
    // Someone else's usage is their own.
    let theirs = team.carl.get_json(app, "/api/v1/me/usage").await;
    assert_eq!(theirs["days"], json!([]));
}

#[tokio::test]
async fn ollama_and_anthropic_stream_and_report_their_usage() {
    let (team, fake, token) = team_with_fake(|_| {}).await;
    let app = &team.app;
    let (status, events, done) = stream(app, &token, ask("local", "from ollama")).await;
    assert_eq!(status, 200);
    assert!(done);
    assert_eq!(text_of(&events), "You said: from ollama");
    assert_eq!(fake.seen.body("llama3.2")["stream"], true);

    let (status, answer) = complete(app, &token, ask("claude", "from claude")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "You said: from claude"
    );
    assert_eq!(answer["usage"]["prompt_tokens"], 31);
    assert_eq!(answer["usage"]["estimated"], false);
    // Anthropic takes the system prompt apart from the turns.
    let sent = fake.seen.body("claude-test");
    assert_eq!(sent["system"], "Be brief.");
    assert_eq!(sent["messages"].as_array().unwrap().len(), 1);

    let rows = settled_usage(app, 2).await;
    assert_eq!(rows[0].1, "fake-ollama/llama3.2");
    assert_eq!((rows[0].3, rows[0].5), (21, false));
    assert_eq!(rows[1].1, "fake-anthropic/claude-test");
}

#[tokio::test]
async fn a_provider_without_usage_is_estimated_and_marked() {
    let (team, _fake, token) = team_with_fake(|_| {}).await;
    let app = &team.app;
    // No usage and no [DONE], but a finish reason: complete, with our own count.
    let (status, answer) = complete(app, &token, ask("quiet", "count these words")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "You said: count these words"
    );
    assert_eq!(answer["usage"]["estimated"], true);
    assert!(answer["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(answer["usage"]["completion_tokens"], 7); // 28 characters / 4
    let rows = settled_usage(app, 1).await;
    assert!(rows[0].5, "estimated");
    assert_eq!(rows[0].6, "completed");
}

#[tokio::test]
async fn broken_streams_end_with_a_clear_error_and_are_billed_as_they_ended() {
    // Every failure here is the one fake provider's; keep its circuit closed throughout.
    let (team, _fake, token) =
        team_with_fake(|settings| settings.assistant.breaker_failures = 100).await;
    let app = &team.app;

    for model in ["cut", "malformed", "stall", "flood"] {
        let (status, events, done) = stream(app, &token, ask(model, "one two three")).await;
        assert_eq!(status, 200, "{model}: the stream had started");
        assert!(!done, "{model}: no [DONE] after a failure");
        assert!(
            text_of(&events).starts_with("You"),
            "{model}: the partial answer was streamed"
        );
        let error = &events.last().unwrap()["error"];
        assert_eq!(error["type"], "server_error", "{model}: {events:?}");
        assert!(error["message"].as_str().unwrap().contains("provider"));
    }
    let (status, answer) = complete(app, &token, ask("cut", "one two three")).await;
    assert_eq!(status, 502, "{answer}");
    assert_eq!(answer["error"]["code"], "provider_error");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cut off")
    );
    let (status, answer) = complete(app, &token, ask("stall", "x")).await;
    assert_eq!(status, 504, "{answer}");
    let (status, answer) = complete(app, &token, ask("broken", "x")).await;
    assert_eq!(status, 502, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("model exploded"),
        "the provider's own reason is passed on: {answer}"
    );

    // A provider that never ends its event is cut off at the answer cap, with a reason.
    let (_, events, _) = stream(app, &token, ask("flood", "x")).await;
    let error = events.last().unwrap()["error"]["message"].as_str().unwrap();
    assert!(error.contains("exceeds 4 MiB"), "{error}");

    let rows = settled_usage(app, 8).await;
    let outcomes: Vec<&str> = rows.iter().map(|r| r.6.as_str()).collect();
    assert_eq!(
        outcomes,
        [
            "incomplete",
            "incomplete",
            "incomplete",
            "incomplete",
            "incomplete",
            "incomplete",
            "failed",
            "incomplete"
        ]
    );
    assert!(rows[0].4 > 0, "the partial answer's tokens are counted");
}

#[tokio::test]
async fn bad_requests_get_openai_shaped_errors_that_name_the_field() {
    let (team, _fake, token) = team_with_fake(|settings| {
        settings
            .assistant
            .models
            .get_mut("echo")
            .unwrap()
            .context_tokens = 300;
        settings
            .assistant
            .models
            .get_mut("echo")
            .unwrap()
            .max_output_tokens = 100;
    })
    .await;
    let app = &team.app;
    let url = app.url("/v1/chat/completions");

    let response = app
        .client
        .post(&url)
        .json(&ask("echo", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let (status, body) = complete(app, "cnv_not-a-token", ask("echo", "hi")).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("invalid_api_key"))
    );
    let read_only = token_for(&team.ada, app, &["read"]).await;
    let (status, body) = complete(app, &read_only, ask("echo", "hi")).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (403, json!("insufficient_scope"))
    );

    let cases = [
        (
            json!({"messages": [{"role": "user", "content": "hi"}]}),
            "model",
        ),
        (json!({"model": "echo"}), "messages"),
        (json!({"model": "echo", "messages": []}), "messages"),
        (
            json!({"model": "echo", "messages": [{"role": "robot", "content": "hi"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": "echo", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            "messages[0].content",
        ),
        (
            json!({"model": "echo", "messages": [{"role": "system", "content": "only rules"}]}),
            "user",
        ),
        (
            json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}),
            "max_tokens",
        ),
        (
            json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}], "temperature": 7}),
            "temperature",
        ),
        (
            json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}),
            "stream",
        ),
        (
            json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}], "tools": [{}]}),
            "tools",
        ),
        (
            json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}], "n": 3}),
            "n:",
        ),
        (json!(["not", "an", "object"]), "object"),
    ];
    for (body, names) in cases {
        let (status, answer) = complete(app, &token, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["type"], "invalid_request_error");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(names), "{body}: {message}");
    }
    let response = app
        .client
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    let (status, answer) = complete(app, &token, ask("gpt-17", "hi")).await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (404, json!("model_not_found"))
    );
    let long = "word ".repeat(2_000);
    let (status, answer) = complete(app, &token, ask("echo", &long)).await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (400, json!("context_length_exceeded"))
    );
    let (status, answer) = complete(app, &token, json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000})).await;
    assert_eq!(
        status, 200,
        "max_tokens above the model's limit is capped: {answer}"
    );
}

#[tokio::test]
async fn long_conversations_are_trimmed_to_the_window_keeping_the_system_prompt() {
    let (team, fake, token) = team_with_fake(|settings| {
        let echo = settings.assistant.models.get_mut("echo").unwrap();
        echo.context_tokens = 400;
        echo.max_output_tokens = 100;
    })
    .await;
    let mut messages = vec![json!({"role": "system", "content": "Rules \u{1b}[31mhere."})];
    for i in 0..40 {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages
            .push(json!({"role": role, "content": format!("turn {i} {}", "filler ".repeat(10))}));
    }
    messages.push(json!({"role": "user", "content": "the newest question"}));
    let (status, answer) = complete(
        &team.app,
        &token,
        json!({"model": "echo", "messages": messages}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let sent = fake.seen.body("echo")["messages"]
        .as_array()
        .unwrap()
        .clone();
    assert!(sent.len() < 42, "older turns were dropped: {}", sent.len());
    assert!(sent.len() > 3, "as many recent turns as fit were kept");
    assert_eq!(sent[0]["role"], "system");
    assert_eq!(
        sent[0]["content"], "Rules [31mhere.",
        "control characters stripped"
    );
    assert_eq!(sent.last().unwrap()["content"], "the newest question");
    assert_eq!(fake.seen.body("echo")["max_tokens"], 100);
}

#[tokio::test]
async fn weights_split_calls_between_variants_and_usage_names_each() {
    let (team, fake, token) = team_with_fake(|settings| {
        settings.assistant.models.insert(
            "ab".to_owned(),
            model(
                "A/B",
                vec![route("fake", "echo", 3), route("fake", "quiet", 1)],
            ),
        );
    })
    .await;
    for _ in 0..40 {
        let (status, answer) = complete(&team.app, &token, ask("ab", "which one")).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["model"], "ab");
    }
    let (a, b) = (fake.seen.calls("echo"), fake.seen.calls("quiet"));
    assert_eq!(a + b, 40);
    assert!(a > b && b > 0, "a 3:1 split, got {a}:{b}");
    settled_usage(&team.app, 40).await;
    let mine = team.ada.get_json(&team.app, "/api/v1/me/usage").await;
    let variants: BTreeMap<String, i64> = mine["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["variant"].as_str().unwrap().to_owned(),
                d["requests"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(variants.get("fake/echo").copied(), Some(a as i64));
    assert_eq!(variants.get("fake/quiet").copied(), Some(b as i64));
}

#[tokio::test]
async fn an_open_circuit_sends_calls_to_the_fallback_and_shows_in_admin_and_metrics() {
    let down = FakeLlm::start().await;
    down.seen.down.store(true, Ordering::SeqCst);
    let down_url = down.url.clone();
    let (team, fake, token) = team_with_fake(move |settings| {
        let assistant = &mut settings.assistant;
        assistant.breaker_failures = 2;
        assistant.breaker_cooldown_secs = 600;
        assistant.health_interval_secs = 3_600;
        assistant.providers.insert(
            "flaky".to_owned(),
            LlmProviderSettings {
                kind: LlmProviderKind::Openai,
                base_url: format!("{down_url}/v1"),
                ..LlmProviderSettings::default()
            },
        );
        let mut primary = model("Primary", vec![route("flaky", "big", 1)]);
        primary.fallback = Some("echo".to_owned());
        assistant.models.insert("primary".to_owned(), primary);
    })
    .await;
    let app = &team.app;
    // The start-up health check already counts one failure.
    let health = eventually(Duration::from_secs(5), || async {
        let report = team
            .ada
            .get_json(app, "/api/v1/admin/assistant/providers")
            .await;
        let flaky = report["providers"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == "flaky")?
            .clone();
        (flaky["last_check_ok"] == false).then_some(flaky)
    })
    .await
    .expect("the health check ran");
    assert_eq!(health["kind"], "openai");
    assert!(
        health.get("base_url").is_none(),
        "no URLs or keys in the report"
    );

    for _ in 0..3 {
        let (status, answer) = complete(app, &token, ask("primary", "still there?")).await;
        assert_eq!(status, 200, "the fallback answered: {answer}");
        assert_eq!(
            answer["choices"][0]["message"]["content"],
            "You said: still there?"
        );
        assert_eq!(answer["model"], "primary", "billed to the model asked for");
    }
    // Health check + first call opened the circuit: the later calls went straight to the
    // fallback.
    assert_eq!(down.seen.calls("big"), 1);
    assert_eq!(fake.seen.calls("echo"), 3);
    let report = team
        .ada
        .get_json(app, "/api/v1/admin/assistant/providers")
        .await;
    let flaky = report["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "flaky")
        .unwrap();
    assert_eq!(flaky["circuit"], "open");
    assert!(
        flaky["last_error"]
            .as_str()
            .unwrap()
            .contains("model exploded")
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("assistant_provider_circuit{provider=\"flaky\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("assistant_provider_up{provider=\"flaky\"} 0"));
    // The admin page shows the same.
    let page = team.ada.page(app, "/admin/assistant").await;
    assert!(
        page.contains(r#"data-provider="flaky""#) && page.contains(r#"data-circuit="open""#),
        "{page}"
    );
    assert!(page.contains("model exploded"));
    let response = team
        .eve
        .client
        .get(app.url("/admin/assistant"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    // Providers are the deployment's business.
    let (status, _) = post(&team.eve, app, "/api/v1/admin/assistant/reload", json!({})).await;
    assert_eq!(status, 403);
    let response = team
        .eve
        .client
        .get(app.url("/api/v1/admin/assistant/providers"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);

    // A model with no fallback and its only provider down: a clear 503, billed as failed.
    let mut alone = model("Alone", vec![route("flaky", "big", 1)]);
    alone.fallback = None;
    let mut settings = (*app.state.settings).clone();
    settings.assistant.models.insert("alone".to_owned(), alone);
    app.state.assistant.reload_from(&settings.assistant);
    let (status, answer) = complete(app, &token, ask("alone", "hello?")).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "provider_unavailable");
}

#[tokio::test]
async fn reload_swaps_models_without_cutting_an_answer_in_flight() {
    let fake = FakeLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("conclave.toml");
    let write = |models: &str| {
        std::fs::write(
            &config,
            format!(
                "[assistant.providers.fake]\nkind = \"openai\"\nbase_url = \"{}/v1\"\n\n{models}",
                fake.url
            ),
        )
        .unwrap();
    };
    write("[assistant.models.slow]\nroutes = [{ provider = \"fake\", model = \"slow\" }]\n");
    let source = config.clone();
    let team = team_with(move |settings| {
        let loaded = Settings::load_from(Some(&source), Vec::new()).unwrap();
        settings.assistant = loaded.assistant;
        settings.source = Some(source);
    })
    .await;
    let app = &team.app;
    let token = token_for(&team.ada, app, &["write"]).await;

    // An answer of 20 words over 2 s is under way when the configuration changes.
    let in_flight = {
        let (app_url, client, token) = (
            app.url("/v1/chat/completions"),
            app.client.clone(),
            token.clone(),
        );
        tokio::spawn(async move {
            client
                .post(app_url)
                .bearer_auth(token)
                .json(&json!({"model": "slow", "stream": true,
                    "messages": [{"role": "user", "content": "take your time"}]}))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    };
    eventually(Duration::from_secs(5), || async {
        (fake.seen.calls("slow") == 1).then_some(())
    })
    .await
    .unwrap();
    write(
        "[assistant.models.quick]\nlabel = \"Quick\"\ntier = \"free\"\nroutes = [{ provider = \"fake\", model = \"echo\" }]\n",
    );
    let (status, body) = post(&team.ada, app, "/api/v1/admin/assistant/reload", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["models"], 1);

    let listed: Value = app
        .client
        .get(app.url("/v1/models"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["quick"]);
    let (status, _) = complete(app, &token, ask("slow", "gone?")).await;
    assert_eq!(status, 404, "the old model is gone for new answers");

    let text = in_flight.await.unwrap();
    assert!(
        text.contains("w20"),
        "the answer in flight finished: {text}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"));

    // A broken configuration changes nothing and says why.
    write("[assistant.models.bad]\nroutes = [{ provider = \"nowhere\", model = \"x\" }]\n");
    let (status, body) = post(&team.ada, app, "/api/v1/admin/assistant/reload", json!({})).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("nowhere"),
        "{body}"
    );
    let (status, _) = complete(app, &token, ask("quick", "still here")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn browsers_see_only_names_labels_and_tiers() {
    let (team, _fake, token) = team_with_fake(|_| {}).await;
    let app = &team.app;
    let response = team
        .carl
        .client
        .get(app.url("/api/v1/assistant/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    for secret in ["sk-", "http://", "127.0.0.1", "fake-ollama", "llama3.2"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list["default"], "echo");
    let claude = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "claude")
        .unwrap();
    assert_eq!(
        claude,
        &json!({"name": "claude", "label": "Claude", "tier": "standard"})
    );
    let anonymous = reqwest::get(app.url("/api/v1/assistant/models"))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let openai: Value = app
        .client
        .get(app.url("/v1/models"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(openai["object"], "list");
    assert!(!openai.to_string().contains("127.0.0.1"));
    let openapi = app.get("/api/openapi.json").await.text().await.unwrap();
    assert!(openapi.contains("/api/v1/assistant/models"));
}

#[tokio::test]
async fn a_client_that_goes_away_stops_the_provider_call_and_is_billed_for_what_it_got() {
    let (team, fake, token) = team_with_fake(|_| {}).await;
    let app = &team.app;
    let mut response = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .json(&json!({"model": "slow", "stream": true,
            "messages": [{"role": "user", "content": "long answer please"}]}))
        .send()
        .await
        .unwrap();
    let mut received = String::new();
    while !received.contains("w2") {
        let chunk = response.chunk().await.unwrap().expect("more of the stream");
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(response);
    eventually(Duration::from_secs(5), || async {
        (fake.seen.abandoned.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await
    .expect("the provider's stream was dropped, not run to its end");
    let rows = settled_usage(app, 1).await;
    assert_eq!(rows[0].6, "cancelled");
    assert!(rows[0].4 >= 1, "the words it got are billed");
}

/// A free port for a helper server (bound and released: a small race, fine on loopback).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn python_has(module: &str) -> bool {
    std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test]
async fn the_official_openai_python_package_works_against_our_api() {
    assert!(
        python_has("openai"),
        "the openai Python package is missing: run scripts/ensure-tools.sh (make test does)"
    );
    let (team, _fake, token) = team_with_fake(|_| {}).await;
    let script = r#"
import os, sys
from openai import OpenAI, NotFoundError
client = OpenAI(base_url=os.environ["BASE_URL"], api_key=os.environ["TOKEN"])
print("models:", ",".join(sorted(m.id for m in client.models.list())))
whole = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "from python"}])
print("whole:", whole.choices[0].message.content, whole.usage.completion_tokens)
parts = []
usage = None
for chunk in client.chat.completions.create(model="claude", stream=True, stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "streamed too"}]):
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
    if chunk.usage:
        usage = chunk.usage.prompt_tokens
print("stream:", "".join(parts), usage)
try:
    client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
except NotFoundError as e:
    print("missing:", e.status_code)
"#;
    let output = tokio::process::Command::new("python3")
        .args(["-c", script])
        .env("BASE_URL", team.app.url("/v1"))
        .env("TOKEN", &token)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("models: broken,claude,cut,echo,flood,local,malformed,quiet,slow,stall"),
        "{stdout}"
    );
    assert!(
        stdout.contains("whole: You said: from python 4"),
        "{stdout}"
    );
    assert!(
        stdout.contains("stream: You said: streamed too 31"),
        "{stdout}"
    );
    assert!(stdout.contains("missing: 404"), "{stdout}");
}

#[tokio::test]
async fn mockllm_serves_as_a_third_party_provider() {
    assert!(
        python_has("mockllm"),
        "the mockllm Python package is missing: run scripts/ensure-tools.sh (make test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let responses = dir.path().join("responses.yml");
    // mockllm's stream path answers its default; both say the same so either path is checked.
    std::fs::write(
        &responses,
        "responses:\n  \"ping\": \"Pong from mockllm.\"\ndefaults:\n  unknown_response: \"Pong from mockllm.\"\n",
    )
    .unwrap();
    let port = free_port();
    let mut server = tokio::process::Command::new("python3")
        .args([
            "-c",
            "from mockllm.cli import cli; cli()",
            "start",
            "--host",
            "127.0.0.1",
        ])
        .args(["--port", &port.to_string(), "--responses"])
        .arg(&responses)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    conclave::crypto::install_tls_provider();
    let up = eventually(Duration::from_secs(20), || async {
        reqwest::Client::new()
            .post(format!("{base}/v1/chat/completions"))
            .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "ping"}]}))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(drop)
    })
    .await;
    assert!(up.is_some(), "mockllm did not start on port {port}");

    let team = team_with(move |settings| {
        settings.assistant.providers.insert(
            "mock".to_owned(),
            LlmProviderSettings {
                kind: LlmProviderKind::Openai,
                base_url: format!("{base}/v1"),
                ..LlmProviderSettings::default()
            },
        );
        settings.assistant.models.insert(
            "mock".to_owned(),
            model("Mock", vec![route("mock", "gpt-4o", 1)]),
        );
    })
    .await;
    let token = token_for(&team.ada, &team.app, &["write"]).await;
    let (status, events, done) = stream(
        &team.app,
        &token,
        json!({"model": "mock", "messages": [{"role": "user", "content": "ping"}]}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(done);
    assert_eq!(text_of(&events), "Pong from mockllm.");
    let (status, answer) = complete(
        &team.app,
        &token,
        json!({"model": "mock", "messages": [{"role": "user", "content": "ping"}]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "Pong from mockllm."
    );
    assert_eq!(
        answer["usage"]["estimated"], true,
        "mockllm streams no usage"
    );
    let _ = server.kill().await;
}
