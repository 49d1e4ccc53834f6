//! Self-service sign-up and email verification, through HTTP and the mail that is sent.

use conclave::schema::{email_tokens, users};
use diesel::prelude::*;
use serde_json::json;

use crate::helpers::{link_in, read_mails, spawn_app, spawn_app_with, wait_for_mail};

const PASSWORD: &str = "correct horse battery staple";

async fn sign_up(app: &crate::helpers::TestApp, email: &str) -> reqwest::Response {
    app.post_json(
        "/api/v1/auth/signup",
        &json!({ "email": email, "password": PASSWORD, "name": "Grace Hopper" }),
    )
    .await
}

#[tokio::test]
async fn sign_up_verify_by_mail_then_sign_in() {
    let app = spawn_app().await;
    let response = sign_up(&app, "Grace@Example.com").await;
    assert_eq!(response.status(), 202);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "verification_sent");

    // Not yet: the address is unconfirmed.
    let early = app.login("grace@example.com", PASSWORD).await;
    assert_eq!(early.status(), 403);

    let mail = wait_for_mail(&app, "grace@example.com", "/verify?token=").await;
    assert!(
        mail.contains("Subject: Confirm your email address for Conclave"),
        "{mail}"
    );
    assert!(mail.contains("Hello Grace Hopper"), "{mail}");
    assert!(
        mail.contains("multipart/alternative"),
        "text and HTML versions: {mail}"
    );
    let link = link_in(&mail);
    assert!(
        link.starts_with(&format!("{}/verify?token=", app.address)),
        "{link}"
    );

    // Opening the link (as a mail scanner would) changes nothing; the button does.
    let page = app
        .get_with_accept(link.trim_start_matches(&app.address), "text/html")
        .await;
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Confirm my address"));
    assert_eq!(
        app.login("grace@example.com", PASSWORD).await.status(),
        403,
        "not verified by a GET"
    );
    let token = link.split("token=").nth(1).unwrap();
    let csrf = app.csrf_token().await;
    let confirmed = app
        .client
        .post(app.url("/verify"))
        .form(&[("token", token), ("csrf_token", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(confirmed.status(), 200);
    assert!(
        confirmed
            .text()
            .await
            .unwrap()
            .contains("Address confirmed")
    );
    assert_eq!(app.login("grace@example.com", PASSWORD).await.status(), 200);
    let me: serde_json::Value = app.get("/api/v1/me").await.json().await.unwrap();
    assert_eq!(me["name"], "Grace Hopper");
    assert_eq!(
        me["memberships"][0]["role"], "owner",
        "first account of the installation"
    );
}

#[tokio::test]
async fn a_verification_link_works_once_and_expires() {
    let app = spawn_app().await;
    sign_up(&app, "grace@example.com").await;
    let link = link_in(&wait_for_mail(&app, "grace@example.com", "/verify?token=").await);
    let token = link.split("token=").nth(1).unwrap().to_owned();

    let first = app
        .post_json("/api/v1/auth/verify", &json!({ "token": token }))
        .await;
    assert_eq!(first.status(), 200);
    let again = app
        .post_json("/api/v1/auth/verify", &json!({ "token": token }))
        .await;
    assert_eq!(again.status(), 410);
    let problem: serde_json::Value = again.json().await.unwrap();
    assert_eq!(problem["error"], "token_used");
    assert_eq!(problem["detail"], "This link was already used.");

    let bogus = app
        .post_json("/api/v1/auth/verify", &json!({ "token": "nope" }))
        .await;
    assert_eq!(bogus.status(), 400);
    let page = app.get_with_accept("/verify?token=nope", "text/html").await;
    assert_eq!(page.status(), 400);
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("This link is not valid.")
    );

    // A second account's link that is past its time.
    sign_up(&app, "linus@example.com").await;
    let link = link_in(&wait_for_mail(&app, "linus@example.com", "/verify?token=").await);
    let past = (chrono::Utc::now() - chrono::Duration::seconds(1)).naive_utc();
    app.state
        .db
        .run(move |conn| {
            diesel::update(email_tokens::table.filter(email_tokens::used_at.is_null()))
                .set(email_tokens::expires_at.eq(past))
                .execute(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap();
    let expired = app
        .get_with_accept(link.trim_start_matches(&app.address), "text/html")
        .await;
    assert_eq!(expired.status(), 410);
    assert!(
        expired
            .text()
            .await
            .unwrap()
            .contains("This link has expired.")
    );
}

#[tokio::test]
async fn signing_up_with_a_known_address_reveals_nothing_and_tells_the_owner() {
    let app = spawn_app().await;
    app.create_user("ada@example.com", PASSWORD, true).await;
    let fresh: serde_json::Value = sign_up(&app, "new@example.com").await.json().await.unwrap();
    let known: serde_json::Value = sign_up(&app, "ADA@example.com").await.json().await.unwrap();
    assert_eq!(fresh, known, "the same answer either way");
    let mail = wait_for_mail(&app, "ada@example.com", "you\r\nalready have one").await;
    assert!(mail.contains("/login"), "{mail}");
    let count: i64 = app
        .state
        .db
        .run(|conn| {
            users::table
                .count()
                .get_result(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap();
    assert_eq!(count, 2, "no second account for ada");
}

#[tokio::test]
async fn invalid_sign_ups_name_the_field() {
    let app = spawn_app().await;
    for (body, expected) in [
        (
            json!({"email": "nope", "password": PASSWORD}),
            "email: \"nope\" is not a valid address",
        ),
        (
            json!({"email": "a@example.com", "password": "short"}),
            "password: must be at least 10 characters",
        ),
        (
            json!({"email": "a@example.com", "password": "password123"}),
            "password: is one of the most common passwords; choose another",
        ),
        (
            json!({"email": "a@example.com", "password": PASSWORD, "name": "x".repeat(81)}),
            "name: must be 1 to 80 characters",
        ),
    ] {
        let response = app.post_json("/api/v1/auth/signup", &body).await;
        assert_eq!(response.status(), 400, "{body}");
        let problem: serde_json::Value = response.json().await.unwrap();
        assert_eq!(problem["detail"], expected);
    }
    let missing = app
        .post_json("/api/v1/auth/signup", &json!({"email": "a@example.com"}))
        .await;
    assert_eq!(missing.status(), 400);
    assert!(read_mails(&app.data_dir.path().join("mail")).is_empty());
}

#[tokio::test]
async fn sign_up_can_be_closed() {
    let app = spawn_app_with(|s| s.accounts.signup_enabled = false).await;
    let response = sign_up(&app, "grace@example.com").await;
    assert_eq!(response.status(), 403);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("Sign-up is closed")
    );
}

#[tokio::test]
async fn the_sign_up_form_keeps_what_was_typed_when_something_is_wrong() {
    let app = spawn_app().await;
    let token = app.csrf_token().await;
    let response = app
        .client
        .post(app.url("/signup"))
        .form(&[
            ("name", "Grace Hopper"),
            ("email", "grace@example.com"),
            ("password", "short"),
            ("csrf_token", &token),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let html = response.text().await.unwrap();
    assert!(
        html.contains("password: must be at least 10 characters"),
        "{html}"
    );
    assert!(
        html.contains("value=\"Grace Hopper\"") && html.contains("value=\"grace@example.com\""),
        "{html}"
    );

    let ok = app
        .client
        .post(app.url("/signup"))
        .form(&[
            ("name", "Grace Hopper"),
            ("email", "grace@example.com"),
            ("password", PASSWORD),
            ("csrf_token", &token),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok.text().await.unwrap().contains("Check your inbox"));
    let no_token = app
        .client
        .post(app.url("/signup"))
        .form(&[("email", "x@example.com"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 403);
}

#[tokio::test]
async fn concurrent_sign_ups_all_succeed() {
    // Each sign-up reads, then writes, in one transaction; on SQLite that used to fail with
    // "database is locked" whenever another writer committed in between.
    let app = spawn_app_with(|s| s.database.pool_max_size = 8).await;
    let attempts = (0..16).map(|n| {
        let (client, url) = (app.client.clone(), app.url("/api/v1/auth/signup"));
        tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({ "email": format!("person{n}@example.com"), "password": PASSWORD }))
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    });
    let statuses: Vec<u16> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    let count: i64 = app
        .state
        .db
        .run(|conn| {
            users::table
                .count()
                .get_result(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap();
    assert_eq!(count, 16);
}
