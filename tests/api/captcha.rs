//! The proof-of-work CAPTCHA on sign-up and password reset. Solutions are computed here by
//! brute force, as a browser or a script would.

use base64::Engine as _;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app_with};

async fn app(enabled: bool) -> TestApp {
    spawn_app_with(move |settings| {
        settings.captcha.enabled = enabled;
        settings.captcha.max_number = 5_000;
    })
    .await
}

fn solve(challenge: &Value) -> String {
    let number = altcha_lib_rs::solve_challenge(
        challenge["challenge"].as_str().unwrap(),
        challenge["salt"].as_str().unwrap(),
        None,
        challenge["maxnumber"].as_u64(),
        0,
    )
    .expect("a solution exists");
    let payload = json!({
        "algorithm": challenge["algorithm"],
        "challenge": challenge["challenge"],
        "number": number,
        "salt": challenge["salt"],
        "signature": challenge["signature"],
    });
    base64::engine::general_purpose::STANDARD.encode(payload.to_string())
}

async fn challenge(app: &TestApp) -> Value {
    let response = app.get("/api/v1/auth/captcha").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    response.json().await.unwrap()
}

async fn signup(app: &TestApp, email: &str, captcha: Option<&str>) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/auth/signup"))
        .json(&json!({
            "email": email,
            "password": "correct horse battery staple",
            "captcha": captcha,
        }))
        .send()
        .await
        .unwrap()
}

async fn error_code(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["error"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn sign_up_needs_a_solved_challenge_and_each_solution_works_once() {
    let app = app(true).await;
    let missing = signup(&app, "a@example.com", None).await;
    assert_eq!(missing.status(), 400);
    assert_eq!(error_code(missing).await, "captcha_required");

    let challenge = challenge(&app).await;
    assert_eq!(challenge["algorithm"], "SHA-256");
    assert_eq!(challenge["maxnumber"], 5_000);
    let solution = solve(&challenge);

    let accepted = signup(&app, "a@example.com", Some(&solution)).await;
    assert_eq!(accepted.status(), 202);
    let replayed = signup(&app, "b@example.com", Some(&solution)).await;
    assert_eq!(replayed.status(), 400);
    assert_eq!(error_code(replayed).await, "captcha_spent");

    // A wrong number, a forged signature and garbage are all refused.
    let fresh = challenge_for_tampering(&app).await;
    for bad in [
        tamper(
            &fresh,
            "number",
            json!(fresh["solved_number"].as_u64().unwrap() + 1),
        ),
        tamper(&fresh, "signature", json!("00".repeat(32))),
        "not base64 at all".to_owned(),
        "x".repeat(5_000),
    ] {
        let refused = signup(&app, "c@example.com", Some(&bad)).await;
        assert_eq!(refused.status(), 400);
        assert_eq!(error_code(refused).await, "captcha_invalid");
    }
}

/// A challenge with its solved number, to build wrong payloads from.
async fn challenge_for_tampering(app: &TestApp) -> Value {
    let mut challenge = challenge(app).await;
    let solution = solve(&challenge);
    let payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(solution)
            .unwrap(),
    )
    .unwrap();
    challenge["solved_number"] = payload["number"].clone();
    challenge
}

fn tamper(challenge: &Value, field: &str, value: Value) -> String {
    let mut payload = json!({
        "algorithm": challenge["algorithm"],
        "challenge": challenge["challenge"],
        "number": challenge["solved_number"],
        "salt": challenge["salt"],
        "signature": challenge["signature"],
    });
    payload[field] = value;
    base64::engine::general_purpose::STANDARD.encode(payload.to_string())
}

#[tokio::test]
async fn the_sign_up_and_reset_pages_carry_a_challenge_and_refuse_forms_without_a_solution() {
    let app = app(true).await;
    for page in ["/signup", "/forgot"] {
        let html = app.get(page).await.text().await.unwrap();
        assert!(html.contains("data-captcha=\""), "{page}: {html}");
        // The widget script, by its content-hashed name.
        assert!(html.contains("src=\"/static/js/captcha."), "{page}");
        assert!(
            html.contains("<noscript>"),
            "{page} explains why JavaScript is needed"
        );
    }
    let csrf = app.csrf_token().await;
    let signup = app
        .client
        .post(app.url("/signup"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("email", "a@example.com"),
            ("password", "correct horse battery staple"),
            ("name", "Ada"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status(), 400);
    let html = signup.text().await.unwrap();
    assert!(html.contains("anti-spam check is missing"), "{html}");
    assert!(
        html.contains("value=\"a@example.com\""),
        "what was typed is kept"
    );

    let forgot = app
        .client
        .post(app.url("/forgot"))
        .form(&[("csrf_token", csrf.as_str()), ("email", "a@example.com")])
        .send()
        .await
        .unwrap();
    assert_eq!(forgot.status(), 400);

    let challenge = challenge(&app).await;
    let forgot = app
        .client
        .post(app.url("/forgot"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("email", "a@example.com"),
            ("captcha", solve(&challenge).as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(forgot.status(), 200);
    assert!(forgot.text().await.unwrap().contains("Check your inbox"));
}

#[tokio::test]
async fn the_password_reset_api_needs_a_solution_too() {
    let app = app(true).await;
    let refused = app
        .client
        .post(app.url("/api/v1/auth/password/forgot"))
        .json(&json!({"email": "a@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    assert_eq!(error_code(refused).await, "captcha_required");
    let solution = solve(&challenge(&app).await);
    let accepted = app
        .client
        .post(app.url("/api/v1/auth/password/forgot"))
        .json(&json!({"email": "a@example.com", "captcha": solution}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
}

#[tokio::test]
async fn switched_off_there_is_no_challenge_and_nothing_is_asked() {
    let app = app(false).await;
    let body = challenge(&app).await;
    assert_eq!(body, json!({"enabled": false}));
    assert!(
        !app.get("/signup")
            .await
            .text()
            .await
            .unwrap()
            .contains("data-captcha")
    );
    assert_eq!(signup(&app, "a@example.com", None).await.status(), 202);
}
