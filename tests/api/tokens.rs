//! Personal API tokens through HTTP.

use serde_json::{Value, json};

use crate::helpers::{Device, TestApp, spawn_app};

const PASSWORD: &str = "correct horse battery staple";

async fn signed_in() -> TestApp {
    let app = spawn_app().await;
    app.create_user("ada@example.com", PASSWORD, true).await;
    assert_eq!(app.login("ada@example.com", PASSWORD).await.status(), 200);
    app
}

async fn create(app: &TestApp, body: Value) -> reqwest::Response {
    app.post_signed("/api/v1/me/tokens", &body).await
}

#[tokio::test]
async fn a_token_is_shown_once_stored_hashed_and_works_as_a_bearer() {
    let app = signed_in().await;
    let response = create(
        &app,
        json!({"name": "backup script", "scopes": ["read"], "expires_at": "2999-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("cnv_") && token.len() > 40, "{token}");
    assert_eq!(created["scopes"], json!(["read"]));

    let listing: Value = app.get("/api/v1/me/tokens").await.json().await.unwrap();
    assert_eq!(listing["tokens"][0]["name"], "backup script");
    assert!(
        listing["tokens"][0].get("token").is_none(),
        "never shown again"
    );
    let stored: Vec<String> = app
        .state
        .db
        .run(|conn| {
            use diesel::prelude::*;
            conclave::schema::api_tokens::table
                .select(conclave::schema::api_tokens::token_hash)
                .load(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap();
    assert!(!stored[0].contains(&token[4..]), "only a hash is stored");

    let me = Device::new(None)
        .client
        .get(app.url("/api/v1/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["email"], "ada@example.com");
    assert_eq!(me["token"]["scopes"], json!(["read"]));

    let bogus = Device::new(None)
        .client
        .get(app.url("/api/v1/me"))
        .bearer_auth("cnv_nope")
        .send()
        .await
        .unwrap();
    assert_eq!(bogus.status(), 401);
    let problem: Value = bogus.json().await.unwrap();
    assert_eq!(problem["error"], "invalid_token");
}

#[tokio::test]
async fn scopes_limit_what_a_token_may_do_and_tokens_cannot_manage_security() {
    let app = signed_in().await;
    let read: Value = create(&app, json!({"name": "reader", "scopes": ["read"]}))
        .await
        .json()
        .await
        .unwrap();
    let write: Value = create(&app, json!({"name": "writer", "scopes": ["read", "write"]}))
        .await
        .json()
        .await
        .unwrap();
    let (read_token, write_token) = (
        read["token"].as_str().unwrap(),
        write["token"].as_str().unwrap(),
    );

    let refused = Device::new(None)
        .client
        .delete(app.url(&format!("/api/v1/me/tokens/{}", read["id"])))
        .bearer_auth(read_token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["error"], "insufficient_scope");

    // A leaked token cannot mint tokens or change the password.
    for (path, body) in [
        (
            "/api/v1/me/tokens",
            json!({"name": "more", "scopes": ["write"]}),
        ),
        (
            "/api/v1/me/password",
            json!({"current_password": PASSWORD, "new_password": "owned by the attacker now"}),
        ),
    ] {
        let response = Device::new(None)
            .client
            .post(app.url(path))
            .bearer_auth(write_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{path}");
    }

    // A write token may retire itself, but no other token: a leaked one cannot lock its
    // owner's other scripts out.
    let script = Device::new(None);
    let revoke = |id: &Value| {
        script
            .client
            .delete(app.url(&format!("/api/v1/me/tokens/{id}")))
            .bearer_auth(write_token)
            .send()
    };
    assert_eq!(revoke(&read["id"]).await.unwrap().status(), 403);
    assert_eq!(
        script.me_status_with_token(&app, read_token).await,
        200,
        "still works"
    );
    assert_eq!(revoke(&write["id"]).await.unwrap().status(), 204);
    assert_eq!(
        script.me_status_with_token(&app, write_token).await,
        401,
        "revoked tokens stop working at once"
    );
}

#[tokio::test]
async fn changing_the_password_revokes_every_token() {
    let app = signed_in().await;
    let created: Value = create(&app, json!({"name": "ci", "scopes": ["read"]}))
        .await
        .json()
        .await
        .unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    let changed = app
        .post_signed(
            "/api/v1/me/password",
            &json!({"current_password": PASSWORD, "new_password": "an entirely new passphrase"}),
        )
        .await;
    assert_eq!(changed.status(), 200);
    assert_eq!(
        Device::new(None).me_status_with_token(&app, &token).await,
        401
    );
}

#[tokio::test]
async fn expired_tokens_and_tokens_of_disabled_users_stop_working() {
    let app = signed_in().await;
    let created: Value = create(&app, json!({"name": "ci", "scopes": ["read"]}))
        .await
        .json()
        .await
        .unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    assert_eq!(
        Device::new(None).me_status_with_token(&app, &token).await,
        200
    );
    app.state
        .db
        .run(|conn| {
            use diesel::prelude::*;
            diesel::update(conclave::schema::api_tokens::table)
                .set(
                    conclave::schema::api_tokens::expires_at
                        .eq(Some(chrono::Utc::now().naive_utc())),
                )
                .execute(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap();
    assert_eq!(
        Device::new(None).me_status_with_token(&app, &token).await,
        401
    );

    let fresh: Value = create(&app, json!({"name": "ci2", "scopes": ["read"]}))
        .await
        .json()
        .await
        .unwrap();
    let fresh = fresh["token"].as_str().unwrap().to_owned();
    app.disable_user("ada@example.com").await;
    assert_eq!(
        Device::new(None).me_status_with_token(&app, &fresh).await,
        401
    );
}

#[tokio::test]
async fn invalid_token_requests_name_the_field() {
    let app = signed_in().await;
    for (body, expected) in [
        (
            json!({"name": "", "scopes": ["read"]}),
            "name: must be 1 to 80 printable characters",
        ),
        (
            json!({"name": "x", "scopes": []}),
            "scopes: choose at least one of read, write",
        ),
        (
            json!({"name": "x", "scopes": ["admin"]}),
            "scopes: \"admin\" is not one of read, write",
        ),
        (
            json!({"name": "x", "scopes": ["read"], "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at: must be in the future",
        ),
        (
            json!({"name": "x", "scopes": ["read"], "expires_at": "tomorrow"}),
            "expires_at: \"tomorrow\" is not an RFC 3339 time",
        ),
    ] {
        let response = create(&app, body.clone()).await;
        assert_eq!(response.status(), 400, "{body}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["detail"], expected);
    }
    let audit = app
        .state
        .db
        .run(|conn| conclave::audit::page(conn, 0, None, 100).map_err(conclave::db::DbError::from))
        .await
        .unwrap();
    assert!(!audit.iter().any(|e| e.event == "token.created"));
}

#[tokio::test]
async fn guessing_tokens_is_throttled_per_address_and_audited_once() {
    let app = crate::helpers::spawn_app_with(|settings| {
        settings.accounts.invalid_tokens_per_ip_per_minute = 3;
    })
    .await;
    app.create_user("ada@example.com", PASSWORD, true).await;
    assert_eq!(app.login("ada@example.com", PASSWORD).await.status(), 200);
    let created: Value = create(&app, json!({"name": "script", "scopes": ["read"]}))
        .await
        .json()
        .await
        .unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    let script = reqwest::Client::new();
    let me = |bearer: String| {
        script
            .get(app.url("/api/v1/rooms"))
            .bearer_auth(bearer)
            .send()
    };
    assert_eq!(
        me(token.clone()).await.unwrap().status(),
        200,
        "the token works"
    );
    for n in 0..3 {
        let guess = me(format!("cnv_guess{n}")).await.unwrap();
        assert_eq!(guess.status(), 401, "guess {n}");
    }
    // The next guess blocks the address for a minute: every token gets 429, the right one too,
    // on every surface that takes tokens.
    for bearer in [
        "cnv_guess3".to_owned(),
        "cnv_guess4".to_owned(),
        token.clone(),
    ] {
        let refused = me(bearer).await.unwrap();
        assert_eq!(refused.status(), 429);
        assert_eq!(refused.headers()["retry-after"], "60");
    }
    let models = script
        .get(app.url("/v1/models"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 429);
    let body: Value = models.json().await.unwrap();
    assert_eq!(
        body["error"]["code"], "rate_limited",
        "OpenAI-shaped: {body}"
    );
    // Recorded once, with the address, for the security team.
    let audit = app
        .state
        .db
        .run(|conn| conclave::audit::page(conn, 0, None, 100).map_err(conclave::db::DbError::from))
        .await
        .unwrap();
    let throttled: Vec<_> = audit
        .iter()
        .filter(|e| e.event == "token.guessing_throttled")
        .collect();
    assert_eq!(throttled.len(), 1, "{audit:?}");
    assert_eq!(throttled[0].ip.as_deref(), Some("127.0.0.1"));
}

#[tokio::test]
async fn the_tokens_page_creates_shows_once_and_revokes() {
    let app = crate::helpers::spawn_app().await;
    app.create_user("ada@example.com", "correct horse battery staple", true)
        .await;
    let browser =
        crate::helpers::Device::signed_in(&app, "ada@example.com", "correct horse battery staple")
            .await;
    let page = browser
        .client
        .get(app.url("/settings/tokens"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("No tokens yet."));
    let csrf = browser.csrf(&app);
    let form = |name: &'static str, access: &'static str, days: &'static str| {
        browser
            .client
            .post(app.url("/settings/tokens"))
            .form(&[
                ("csrf_token", csrf.as_str()),
                ("name", name),
                ("access", access),
                ("expires_in_days", days),
            ])
            .send()
    };
    let created = form("backup script", "read", "30").await.unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!(created.headers()["cache-control"], "no-store");
    let html = created.text().await.unwrap();
    let token = html
        .split("id=\"new-token\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .expect("the token is shown")
        .to_owned();
    assert!(token.starts_with("cnv_"), "{token}");
    assert_eq!(browser.me_status_with_token(&app, &token).await, 200);
    let listed = browser
        .client
        .get(app.url("/settings/tokens"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        listed.contains("backup script") && !listed.contains(&token),
        "never shown again"
    );

    let bad = form("x", "read", "forever").await.unwrap();
    assert_eq!(bad.status(), 400);
    let bad = form("", "read", "30").await.unwrap();
    assert_eq!(bad.status(), 400);

    let id = browser.get_json(&app, "/api/v1/me/tokens").await["tokens"][0]["id"]
        .as_i64()
        .unwrap();
    let revoked = browser
        .client
        .post(app.url(&format!("/settings/tokens/{id}/revoke")))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 303);
    assert_eq!(browser.me_status_with_token(&app, &token).await, 401);
}
