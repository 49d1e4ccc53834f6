//! Changing and resetting passwords through HTTP.

use serde_json::json;

use crate::helpers::{Device, link_in, spawn_app, spawn_app_with, wait_for_mail};

const OLD: &str = "correct horse battery staple";
const NEW: &str = "a new and different passphrase";

#[tokio::test]
async fn changing_the_password_needs_the_current_one_and_signs_out_other_devices() {
    let app = spawn_app().await;
    app.create_user("ada@example.com", OLD, true).await;
    app.login("ada@example.com", OLD).await;
    let phone = Device::new(None);
    phone
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"email": "ada@example.com", "password": OLD}))
        .send()
        .await
        .unwrap();
    let token = app.csrf_token().await;
    let change = |current: &str, new: &str| {
        app.client
            .post(app.url("/api/v1/me/password"))
            .header("X-CSRF-Token", &token)
            .json(&json!({"current_password": current, "new_password": new}))
    };

    let wrong = change("not my password", NEW).send().await.unwrap();
    assert_eq!(wrong.status(), 400);
    let problem: serde_json::Value = wrong.json().await.unwrap();
    assert_eq!(problem["detail"], "current_password: is not correct");
    let weak = change(OLD, "short").send().await.unwrap();
    assert_eq!(weak.status(), 400);

    let before = app.cookie("conclave_session").unwrap();
    let ok = change(OLD, NEW).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let after = app.cookie("conclave_session").unwrap();
    assert_ne!(before, after, "the session is rotated");
    assert_eq!(
        app.get("/api/v1/me").await.status(),
        200,
        "this device stays signed in"
    );
    assert_eq!(phone.me_status(&app).await, 401, "the phone is signed out");

    assert_eq!(app.login("ada@example.com", OLD).await.status(), 401);
    assert_eq!(app.login("ada@example.com", NEW).await.status(), 200);
    let mail = wait_for_mail(
        &app,
        "ada@example.com",
        "password of your Conclave account was just changed",
    )
    .await;
    assert!(mail.contains("/settings/security"), "{mail}");
}

#[tokio::test]
async fn a_reset_link_sets_a_new_password_once_and_signs_out_everywhere() {
    let app = spawn_app_with(|s| s.accounts.lockout_threshold = 2).await;
    app.create_user("ada@example.com", OLD, true).await;
    let phone = Device::new(None);
    phone
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"email": "ada@example.com", "password": OLD}))
        .send()
        .await
        .unwrap();
    // Locked out after forgetting the password.
    for _ in 0..2 {
        app.login("ada@example.com", "what was it again").await;
    }
    assert_eq!(app.login("ada@example.com", OLD).await.status(), 429);

    let forgot = app
        .post_json(
            "/api/v1/auth/password/forgot",
            &json!({"email": "ADA@example.com"}),
        )
        .await;
    assert_eq!(forgot.status(), 202);
    let unknown = app
        .post_json(
            "/api/v1/auth/password/forgot",
            &json!({"email": "nobody@example.com"}),
        )
        .await;
    assert_eq!(
        unknown.status(),
        202,
        "the same answer for unknown addresses"
    );
    let mail = wait_for_mail(&app, "ada@example.com", "/reset?token=").await;
    assert!(mail.contains("for 30 minutes"), "{mail}");
    let link = link_in(&mail);
    let token = link.split("token=").nth(1).unwrap().to_owned();

    let page = app
        .get_with_accept(link.trim_start_matches(&app.address), "text/html")
        .await;
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Choose a new password"));

    let weak = app
        .post_json(
            "/api/v1/auth/password/reset",
            &json!({"token": token, "password": "password123"}),
        )
        .await;
    assert_eq!(
        weak.status(),
        400,
        "a weak password does not spend the link"
    );
    let reset = app
        .post_json(
            "/api/v1/auth/password/reset",
            &json!({"token": token, "password": NEW}),
        )
        .await;
    assert_eq!(reset.status(), 200);
    let again = app
        .post_json(
            "/api/v1/auth/password/reset",
            &json!({"token": token, "password": NEW}),
        )
        .await;
    assert_eq!(again.status(), 410, "the link works once");

    assert_eq!(phone.me_status(&app).await, 401, "every session ended");
    assert_eq!(
        app.login("ada@example.com", NEW).await.status(),
        200,
        "the lockout is lifted"
    );
}

#[tokio::test]
async fn the_reset_form_and_the_password_form_work_without_javascript() {
    let app = spawn_app().await;
    app.create_user("ada@example.com", OLD, true).await;
    let csrf = app.csrf_token().await;
    let sent = app
        .client
        .post(app.url("/forgot"))
        .form(&[("email", "ada@example.com"), ("csrf_token", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    assert!(sent.text().await.unwrap().contains("Check your inbox"));
    let link = link_in(&wait_for_mail(&app, "ada@example.com", "/reset?token=").await);
    let token = link.split("token=").nth(1).unwrap().to_owned();
    let done = app
        .client
        .post(app.url("/reset"))
        .form(&[
            ("token", token.as_str()),
            ("password", NEW),
            ("csrf_token", &csrf),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 303);
    assert_eq!(done.headers()["location"], "/login?notice=password_reset");
    let login = app
        .get_with_accept("/login?notice=password_reset", "text/html")
        .await
        .text()
        .await
        .unwrap();
    assert!(login.contains("Your password was changed. Sign in with the new one."));

    app.login("ada@example.com", NEW).await;
    let wrong = app
        .client
        .post(app.url("/settings/password"))
        .form(&[
            ("current_password", "nope"),
            ("new_password", OLD),
            ("csrf_token", &csrf),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 303);
    assert_eq!(
        wrong.headers()["location"],
        "/settings/security?notice=wrong_current"
    );
    let page = app
        .get_with_accept("/settings/security?notice=wrong_current", "text/html")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("The current password is not correct"),
        "{page}"
    );
}

#[tokio::test]
async fn password_checks_inside_a_session_count_towards_lockout() {
    let app = spawn_app_with(|settings| settings.accounts.lockout_threshold = 3).await;
    app.create_user("ada@example.com", "correct horse battery staple", true)
        .await;
    let thief = Device::signed_in(&app, "ada@example.com", "correct horse battery staple").await;
    thief.client.get(app.url("/healthz")).send().await.unwrap();
    let guess = |password: &'static str| {
        thief.post(
            &app,
            "/api/v1/me/password",
            json!({"current_password": password, "new_password": "a brand new passphrase"}),
        )
    };
    for wrong in ["guess one", "guess two"] {
        assert_eq!(guess(wrong).await.status(), 400);
    }
    // The third wrong guess, here through "turn off 2FA", locks the account.
    let third = thief
        .post(
            &app,
            "/api/v1/me/2fa/totp/disable",
            json!({"password": "guess three"}),
        )
        .await;
    assert_eq!(third.status(), 400);
    let locked = guess("correct horse battery staple").await;
    assert_eq!(
        locked.status(),
        429,
        "even the right password waits for the lock"
    );
    let problem: serde_json::Value = locked.json().await.unwrap();
    assert_eq!(problem["error"], "account_locked");
    let sign_in = Device::new(None)
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"email": "ada@example.com", "password": "correct horse battery staple"}))
        .send()
        .await
        .unwrap();
    assert_eq!(sign_in.status(), 429, "and so does signing in");
    wait_for_mail(&app, "ada@example.com", "locked").await;
}
