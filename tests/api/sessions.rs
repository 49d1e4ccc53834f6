//! "Where am I signed in?": listing and ending my sessions, through the API and the page.

use serde_json::Value;

use crate::helpers::{Device, spawn_app};

const PASSWORD: &str = "correct horse battery staple";

const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0";

#[tokio::test]
async fn i_can_see_my_sessions_and_end_the_one_on_another_device() {
    let app = spawn_app().await;
    app.create_user("ada@example.com", PASSWORD, true).await;
    app.create_user("eve@example.com", PASSWORD, true).await;
    assert_eq!(app.login("ada@example.com", PASSWORD).await.status(), 200);
    let phone = Device::new(Some(FIREFOX));
    let body = serde_json::json!({"email": "ada@example.com", "password": PASSWORD});
    assert_eq!(
        phone
            .client
            .post(app.url("/api/v1/auth/login"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let listing: Value = app.get("/api/v1/me/sessions").await.json().await.unwrap();
    let sessions = listing["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    let mine = sessions.iter().find(|s| s["current"] == true).unwrap();
    let theirs = sessions.iter().find(|s| s["current"] == false).unwrap();
    assert_eq!(mine["ip"], "127.0.0.1");
    assert!(theirs["user_agent"].as_str().unwrap().contains("Firefox"));

    // Someone else's session id is simply not found.
    let eve = Device::new(Some(FIREFOX));
    let eve_login = serde_json::json!({"email": "eve@example.com", "password": PASSWORD});
    eve.client
        .post(app.url("/api/v1/auth/login"))
        .json(&eve_login)
        .send()
        .await
        .unwrap();
    let eve_sessions = eve.get_json(&app, "/api/v1/me/sessions").await;
    let eve_session = eve_sessions["sessions"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = app.csrf_token().await;
    let foreign = app
        .client
        .delete(app.url(&format!("/api/v1/me/sessions/{eve_session}")))
        .header("X-CSRF-Token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 404);
    assert_eq!(eve.me_status(&app).await, 200, "eve is untouched");

    let revoked = app
        .client
        .delete(app.url(&format!(
            "/api/v1/me/sessions/{}",
            theirs["id"].as_str().unwrap()
        )))
        .header("X-CSRF-Token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    assert_eq!(phone.me_status(&app).await, 401, "the phone is signed out");
    assert_eq!(
        app.get("/api/v1/me").await.status(),
        200,
        "this device stays signed in"
    );
}

#[tokio::test]
async fn signing_out_everywhere_else_keeps_only_this_session() {
    let app = spawn_app().await;
    app.create_user("ada@example.com", PASSWORD, true).await;
    let body = serde_json::json!({"email": "ada@example.com", "password": PASSWORD});
    let mut devices = Vec::new();
    for _ in 0..3 {
        let client = Device::new(Some(FIREFOX));
        client
            .client
            .post(app.url("/api/v1/auth/login"))
            .json(&body)
            .send()
            .await
            .unwrap();
        devices.push(client);
    }
    app.login("ada@example.com", PASSWORD).await;
    let token = app.csrf_token().await;
    let response = app
        .client
        .delete(app.url("/api/v1/me/sessions"))
        .header("X-CSRF-Token", &token)
        .send()
        .await
        .unwrap();
    let result: Value = response.json().await.unwrap();
    assert_eq!(result["revoked"], 3);
    for device in devices {
        assert_eq!(device.me_status(&app).await, 401);
    }
    let listing: Value = app.get("/api/v1/me/sessions").await.json().await.unwrap();
    assert_eq!(listing["sessions"].as_array().unwrap().len(), 1);

    let audit = app
        .state
        .db
        .run(|conn| conclave::audit::page(conn, 0, None, 100).map_err(conclave::db::DbError::from))
        .await
        .unwrap();
    let revoked = audit
        .iter()
        .find(|e| e.event == "session.revoked")
        .expect("audited");
    assert!(
        revoked.details.contains("\"count\":3"),
        "{}",
        revoked.details
    );
}

#[tokio::test]
async fn the_security_page_lists_devices_and_needs_a_session() {
    let app = spawn_app().await;
    let anonymous = app.get_with_accept("/settings/security", "text/html").await;
    assert_eq!(anonymous.status(), 303);
    assert_eq!(
        anonymous.headers()["location"],
        "/login?next=%2Fsettings%2Fsecurity"
    );

    app.create_user("ada@example.com", PASSWORD, true).await;
    app.login("ada@example.com", PASSWORD).await;
    let page = app.get_with_accept("/settings/security", "text/html").await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("Where you are signed in"), "{html}");
    assert!(html.contains("This device"), "{html}");
    assert!(
        !html.contains("Sign out everywhere else"),
        "only one session: {html}"
    );
}
