//! Browser error reports: the first JSON endpoint, so also where body limits and JSON errors
//! are checked through the real HTTP surface.

use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with};

const PATH: &str = "/api/v1/client-errors";

#[tokio::test]
async fn a_valid_report_is_accepted_and_counted() {
    let app = spawn_app().await;
    let response = app
        .post_json(
            PATH,
            &json!({
                "message": "TypeError: rooms is undefined",
                "source": "/static/js/chat.js",
                "line": 12,
                "column": 7,
                "stack": "at render (chat.js:12:7)",
                "page": "/rooms/3"
            }),
        )
        .await;
    assert_eq!(response.status(), 204);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("client_errors_total"), "{metrics}");
}

#[tokio::test]
async fn invalid_json_is_a_400_that_says_what_is_wrong() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url(PATH))
        .header("Content-Type", "application/json")
        .body(r#"{"message": 42}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: serde_json::Value = response.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail
            .starts_with("The JSON body is invalid: invalid type: integer `42`, expected a string"),
        "{detail}"
    );

    let truncated = app
        .client
        .post(app.url(PATH))
        .header("Content-Type", "application/json")
        .body(r#"{"message": "x"#)
        .send()
        .await
        .unwrap();
    assert_eq!(truncated.status(), 400);
}

#[tokio::test]
async fn field_rules_are_enforced_with_the_field_named() {
    let app = spawn_app().await;
    for (body, expected) in [
        (
            json!({"message": "   "}),
            "message: must be 1 to 2000 characters",
        ),
        (
            json!({"message": "x".repeat(2001)}),
            "message: must be 1 to 2000 characters",
        ),
        (
            json!({"message": "x", "page": "p".repeat(2001)}),
            "page: must be at most 2000 characters",
        ),
    ] {
        let response = app.post_json(PATH, &body).await;
        assert_eq!(response.status(), 400);
        let problem: serde_json::Value = response.json().await.unwrap();
        assert_eq!(problem["detail"], expected);
    }
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url(PATH))
        .header("Content-Type", "text/plain")
        .body("message=hi")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["detail"], "Send the body as application/json.");
}

#[tokio::test]
async fn bodies_over_the_json_limit_are_413_without_being_read() {
    let app = spawn_app_with(|s| s.server.json_limit_bytes = 4 * 1024).await;
    let big = json!({ "message": "x", "stack": "y".repeat(8 * 1024) });
    let response = app.post_json(PATH, &big).await;
    assert_eq!(response.status(), 413);
    let problem: serde_json::Value = response.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("the limit is 4096"), "{detail}");
}

#[tokio::test]
async fn reports_are_rate_limited_per_client_with_retry_after() {
    let app = spawn_app_with(|s| s.telemetry.client_errors_per_minute = 3).await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let response = app.post_json(PATH, &json!({"message": "boom"})).await;
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
        }
    }
    assert_eq!(statuses, vec![204, 204, 204, 429, 429]);
    let seconds: u64 = retry_after.expect("Retry-After on 429").parse().unwrap();
    assert!((1..=60).contains(&seconds), "{seconds}");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"rate_limited_total{scope="client_errors"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn reporting_can_be_switched_off() {
    let app = spawn_app_with(|s| s.telemetry.client_errors_per_minute = 0).await;
    let response = app.post_json(PATH, &json!({"message": "boom"})).await;
    assert_eq!(response.status(), 404);
}
