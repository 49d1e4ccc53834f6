//! Signing in and out through HTTP: the JSON API, the form, cookies, CSRF, lockout, limits.

use std::time::Duration;

use conclave::schema::users;
use diesel::prelude::*;
use serde_json::json;

use crate::helpers::{eventually, spawn_app, spawn_app_with};

const PASSWORD: &str = "correct horse battery staple";

#[tokio::test]
async fn signing_in_sets_a_session_cookie_that_me_accepts() {
    let app = spawn_app().await;
    app.create_user("ada@example.com", PASSWORD, true).await;
    let response = app.login("ADA@example.com ", PASSWORD).await;
    assert_eq!(response.status(), 200);
    let cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("conclave_session="))
        .expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=2592000"] {
        assert!(cookie.contains(flag), "{flag} missing: {cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain http in development: {cookie}"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["user"]["email"], "ada@example.com");

    let me: serde_json::Value = app.get("/api/v1/me").await.json().await.unwrap();
    assert_eq!(me["email"], "ada@example.com");
    assert_eq!(
        me["memberships"][0]["role"], "owner",
        "the first user owns the default workspace"
    );
    assert_eq!(me["memberships"][0]["tenant_slug"], "default");
}

#[tokio::test]
async fn over_https_the_session_cookie_is_host_prefixed_and_secure() {
    let app =
        spawn_app_with(|s| s.server.public_url = Some("https://chat.example.com".to_owned())).await;
    app.create_user("ada@example.com", PASSWORD, true).await;
    let response = app.login("ada@example.com", PASSWORD).await;
    assert_eq!(response.status(), 200);
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("__Host-conclave_session="), "{cookie}");
    for flag in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(flag), "{flag} missing: {cookie}");
    }
    assert!(!cookie.contains("Domain="), "{cookie}");
}

#[tokio::test]
async fn unknown_email_and_wrong_password_get_the_same_answer() {
    let app = spawn_app().await;
    app.create_user("ada@example.com", PASSWORD, true).await;
    let mut answers = Vec::new();
    for (email, password) in [
        ("ada@example.com", "wrong horse battery staple"),
        ("nobody@example.com", PASSWORD),
        ("not an email", PASSWORD),
    ] {
        let response = app.login(email, password).await;
        assert_eq!(response.status(), 401);
        let mut problem: serde_json::Value = response.json().await.unwrap();
        problem.as_object_mut().unwrap().remove("request_id");
        answers.push(problem);
    }
    assert_eq!(answers[0]["error"], "invalid_credentials");
    assert_eq!(answers[0]["detail"], "Email or password is incorrect.");
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    assert_eq!(app.get("/api/v1/me").await.status(), 401);
}

#[tokio::test]
async fn unverified_and_disabled_accounts_cannot_sign_in() {
    let app = spawn_app().await;
    app.create_user("ada@example.com", PASSWORD, true).await;
    app.create_user("new@example.com", PASSWORD, false).await;
    let response = app.login("new@example.com", PASSWORD).await;
    assert_eq!(response.status(), 403);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["error"], "email_unverified");
    // With a wrong password the account's state is not revealed.
    assert_eq!(
        app.login("new@example.com", "wrong horse battery staple")
            .await
            .status(),
        401
    );

    app.disable_user("ada@example.com").await;
    let response = app.login("ada@example.com", PASSWORD).await;
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn repeated_failures_lock_the_account_mail_its_owner_and_the_lock_expires() {
    let app = spawn_app_with(|s| s.accounts.lockout_threshold = 3).await;
    let user_id = app.create_user("ada@example.com", PASSWORD, true).await;
    for _ in 0..3 {
        assert_eq!(
            app.login("ada@example.com", "wrong horse battery staple")
                .await
                .status(),
            401
        );
    }
    // Locked now. A wrong password gets the ordinary answer (the lock is not revealed to
    // someone who does not know the password) and does not extend the lock...
    let wrong = app.login("ada@example.com", "still not it at all").await;
    assert_eq!(wrong.status(), 401);
    // ...and the right password is refused, with how long to wait.
    let response = app.login("ada@example.com", PASSWORD).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "900");
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["error"], "account_locked");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("locked for 15 more minute(s)")
    );

    // The owner is told by mail.
    let mail_dir = app.data_dir.path().join("mail");
    let mail = eventually(Duration::from_secs(10), || {
        let dir = mail_dir.clone();
        async move {
            let entry = std::fs::read_dir(&dir).ok()?.flatten().next()?;
            std::fs::read_to_string(entry.path()).ok()
        }
    })
    .await
    .expect("a lockout mail");
    assert!(mail.contains("To: ada@example.com"), "{mail}");
    assert!(mail.contains("locked the account for 15 minutes"), "{mail}");

    // The lock ends by itself: move it into the past, as 15 minutes passing would.
    let past = (chrono::Utc::now() - chrono::Duration::seconds(1)).naive_utc();
    app.state
        .db
        .run(move |conn| {
            diesel::update(users::table.find(user_id))
                .set(users::locked_until.eq(Some(past)))
                .execute(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap();
    assert_eq!(app.login("ada@example.com", PASSWORD).await.status(), 200);
}

#[tokio::test]
async fn each_client_ip_gets_a_limited_number_of_attempts() {
    let app = spawn_app_with(|s| s.accounts.login_attempts_per_ip_per_minute = 2).await;
    let statuses = [
        app.login("a@example.com", PASSWORD).await.status().as_u16(),
        app.login("b@example.com", PASSWORD).await.status().as_u16(),
        app.login("c@example.com", PASSWORD).await.status().as_u16(),
    ];
    assert_eq!(statuses, [401, 401, 429]);
    let response = app.login("d@example.com", PASSWORD).await;
    assert!(response.headers().contains_key("retry-after"));
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["error"], "rate_limited");
}

#[tokio::test]
async fn signing_out_needs_the_csrf_token_and_ends_the_session() {
    let app = spawn_app().await;
    app.create_user("ada@example.com", PASSWORD, true).await;
    assert_eq!(app.login("ada@example.com", PASSWORD).await.status(), 200);
    // The session cookie alone is not enough to change anything.
    let forged = app
        .client
        .post(app.url("/api/v1/auth/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert_eq!(app.get("/api/v1/me").await.status(), 200, "still signed in");

    let token = app.csrf_token().await;
    let response = app
        .client
        .post(app.url("/api/v1/auth/logout"))
        .header("X-CSRF-Token", token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(app.get("/api/v1/me").await.status(), 401);
}

#[tokio::test]
async fn the_sign_in_form_needs_its_csrf_token_and_same_origin() {
    let app = spawn_app().await;
    app.create_user("ada@example.com", PASSWORD, true).await;
    let page = app.get_with_accept("/login", "text/html").await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let token = app.csrf_token().await;
    assert!(
        html.contains(&format!("name=\"csrf_token\" value=\"{token}\"")),
        "the form carries the token"
    );

    let form = |csrf: Option<&str>| {
        let mut fields = vec![
            ("email", "ada@example.com"),
            ("password", PASSWORD),
            ("next", "/rooms"),
        ];
        if let Some(csrf) = csrf {
            fields.push(("csrf_token", csrf));
        }
        app.client.post(app.url("/login")).form(&fields)
    };
    assert_eq!(form(None).send().await.unwrap().status(), 403, "no token");
    assert_eq!(
        form(Some("forged-token-forged-token-forged-token"))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let cross_site = form(Some(&token))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 403);
    let problem = cross_site.text().await.unwrap();
    assert!(problem.contains("Cross-site request refused."), "{problem}");

    let ok = form(Some(&token))
        .header("Origin", app.address.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 303);
    assert_eq!(ok.headers()["location"], "/rooms");
    assert_eq!(app.get("/api/v1/me").await.status(), 200);
}

#[tokio::test]
async fn a_failed_form_sign_in_shows_the_reason_and_keeps_the_email() {
    let app = spawn_app().await;
    app.create_user("ada@example.com", PASSWORD, true).await;
    let token = app.csrf_token().await;
    let response = app
        .client
        .post(app.url("/login"))
        .form(&[
            ("email", "ada@example.com"),
            ("password", "nope nope nope"),
            ("csrf_token", &token),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let html = response.text().await.unwrap();
    assert!(html.contains("Email or password is incorrect."), "{html}");
    assert!(html.contains("value=\"ada@example.com\""), "{html}");
}

#[tokio::test]
async fn pages_that_need_a_session_send_browsers_to_sign_in_and_back() {
    let app = spawn_app().await;
    let response = app.get_with_accept("/api/v1/me?x=1", "text/html").await;
    assert_eq!(response.status(), 303);
    assert_eq!(
        response.headers()["location"],
        "/login?next=%2Fapi%2Fv1%2Fme%3Fx%3D1"
    );
    let api = app.get_with_accept("/api/v1/me", "application/json").await;
    assert_eq!(api.status(), 401);
    assert_eq!(api.headers()["www-authenticate"], "Bearer");
}

#[tokio::test]
async fn sign_ins_and_failures_are_audited_with_ip_and_user_agent() {
    let app = spawn_app().await;
    app.create_user("ada@example.com", PASSWORD, true).await;
    app.login("ada@example.com", "wrong horse battery staple")
        .await;
    app.client
        .post(app.url("/api/v1/auth/login"))
        .header("User-Agent", "audit-test/1.0")
        .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let rows = app
        .state
        .db
        .run(|conn| conclave::audit::page(conn, 0, None, 100).map_err(conclave::db::DbError::from))
        .await
        .unwrap();
    let events: Vec<&str> = rows.iter().map(|r| r.event.as_str()).collect();
    assert_eq!(
        events,
        vec!["user.created", "login.failed", "login.succeeded"]
    );
    let succeeded = &rows[2];
    assert_eq!(succeeded.ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(succeeded.user_agent.as_deref(), Some("audit-test/1.0"));
    assert!(
        rows[1].details.contains("\"reason\":\"password\""),
        "{}",
        rows[1].details
    );
}

#[tokio::test]
async fn sign_in_never_redirects_to_another_site() {
    let app = spawn_app().await;
    app.create_user("ada@example.com", PASSWORD, true).await;
    app.login("ada@example.com", PASSWORD).await;
    // Signed in, /login redirects straight to `next`: only ever to a path on this site.
    for (next, expected) in [
        ("%2Frooms%2F3", "/rooms/3"),
        ("%2F%09%2Fevil.example", "/"),
        ("%2F%2Fevil.example", "/"),
        ("%2F%5Cevil.example", "/"),
        ("https%3A%2F%2Fevil.example", "/"),
    ] {
        let response = app
            .get_with_accept(&format!("/login?next={next}"), "text/html")
            .await;
        assert_eq!(response.status(), 303, "{next}");
        assert_eq!(response.headers()["location"], expected, "{next}");
    }
}
