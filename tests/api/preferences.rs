//! `GET|PATCH /api/v1/me/preferences` and the settings page: defaults, merge patches,
//! validation, the theme cookie, and version-1 documents migrating on read.

use serde_json::{Value, json};

use crate::helpers::{Device, TestApp, spawn_app};

const PASSWORD: &str = "correct horse battery staple";

async fn patch(app: &TestApp, who: &Device, body: Value) -> (u16, Value, Option<String>) {
    let response = who
        .client
        .patch(app.url("/api/v1/me/preferences"))
        .header("X-CSRF-Token", who.csrf(app))
        .json(&body)
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    let cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("conclave_theme="))
        .map(str::to_owned);
    (status, response.json().await.unwrap_or(Value::Null), cookie)
}

#[tokio::test]
async fn preferences_start_from_the_defaults_and_merge_patches() {
    let app = spawn_app().await;
    app.create_user("ada@example.com", PASSWORD, true).await;
    let ada = Device::signed_in(&app, "ada@example.com", PASSWORD).await;
    let start = ada.get_json(&app, "/api/v1/me/preferences").await;
    assert_eq!(start["version"], 2);
    assert_eq!(start["preferences"]["theme"], "system");
    assert_eq!(start["preferences"]["chat"]["enter_sends"], true);

    let (status, body, cookie) = patch(
        &app,
        &ada,
        json!({"theme": "dark", "chat": {"compact": true}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["preferences"]["theme"], "dark");
    assert_eq!(body["preferences"]["chat"]["compact"], true);
    assert_eq!(
        body["preferences"]["chat"]["enter_sends"], true,
        "untouched keys keep their value"
    );
    assert!(cookie.is_some_and(|c| c.starts_with("conclave_theme=dark")));
    let page = ada.page(&app, "/").await;
    assert!(
        page.contains("data-theme=\"dark\""),
        "pages follow the theme"
    );

    let (status, body, _) = patch(&app, &ada, json!({"theme": null})).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["preferences"]["theme"], "system",
        "null restores the default"
    );
    assert_eq!(body["preferences"]["chat"]["compact"], true);
}

#[tokio::test]
async fn bad_preferences_are_refused_with_their_field_and_change_nothing() {
    let app = spawn_app().await;
    app.create_user("ada@example.com", PASSWORD, true).await;
    let ada = Device::signed_in(&app, "ada@example.com", PASSWORD).await;
    let (status, _, _) = patch(&app, &ada, json!({"locale": "de"})).await;
    assert_eq!(status, 200);
    for (bad, field) in [
        (json!({"theme": "purple"}), "preferences"),
        (json!({"colour": "red"}), "preferences"),
        (json!({"chat": {"enter_sends": "yes"}}), "preferences"),
        (json!({"time_zone": "Mars/Base;rm -rf"}), "time_zone"),
        (json!({"locale": "<script>"}), "locale"),
        (json!([1, 2]), "preferences"),
    ] {
        let (status, body, _) = patch(&app, &ada, bad.clone()).await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert_eq!(body["errors"][0]["field"], field, "{bad}: {body}");
    }
    let now = ada.get_json(&app, "/api/v1/me/preferences").await;
    assert_eq!(now["preferences"]["locale"], "de", "nothing changed");
    let anonymous = app.get("/api/v1/me/preferences").await;
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn a_version_one_document_migrates_on_read() {
    use diesel::prelude::*;
    let app = spawn_app().await;
    let id = app.create_user("ada@example.com", PASSWORD, true).await;
    app.state
        .db
        .run(move |conn| {
            diesel::insert_into(conclave::schema::user_preferences::table)
                .values((
                    conclave::schema::user_preferences::user_id.eq(id),
                    conclave::schema::user_preferences::version.eq(1),
                    conclave::schema::user_preferences::document
                        .eq(r#"{"dark_mode": true, "email_notifications": true}"#),
                    conclave::schema::user_preferences::updated_at
                        .eq(chrono::Utc::now().naive_utc()),
                ))
                .execute(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .expect("stored");
    let ada = Device::signed_in(&app, "ada@example.com", PASSWORD).await;
    let read = ada.get_json(&app, "/api/v1/me/preferences").await;
    assert_eq!(read["preferences"]["theme"], "dark");
    assert_eq!(
        read["preferences"]["notifications"]["email_digest"],
        "daily"
    );
    // The next change writes the document in the current shape.
    let (status, _, _) = patch(&app, &ada, json!({"time_format": "12h"})).await;
    assert_eq!(status, 200);
    let read = ada.get_json(&app, "/api/v1/me/preferences").await;
    assert_eq!(read["preferences"]["theme"], "dark");
    assert_eq!(read["preferences"]["time_format"], "12h");
}

#[tokio::test]
async fn the_settings_page_saves_through_a_form() {
    let app = spawn_app().await;
    app.create_user("ada@example.com", PASSWORD, true).await;
    let ada = Device::signed_in(&app, "ada@example.com", PASSWORD).await;
    let page = ada.page(&app, "/settings/preferences").await;
    assert!(page.contains("name=\"enter_sends\" checked"));
    let saved = ada
        .client
        .post(app.url("/settings/preferences/save"))
        .header("Origin", app.address.clone())
        .form(&[
            ("csrf_token", ada.csrf(&app)),
            ("theme", "light".into()),
            ("locale", "pt-BR".into()),
            ("time_zone", "America/Sao_Paulo".into()),
            ("time_format", "24h".into()),
            ("email_digest", "weekly".into()),
            ("mentions", "on".into()),
        ])
        .send()
        .await
        .expect("sent");
    assert_eq!(saved.status(), 303);
    let read = ada.get_json(&app, "/api/v1/me/preferences").await;
    let p = &read["preferences"];
    assert_eq!(p["theme"], "light");
    assert_eq!(p["locale"], "pt-BR");
    assert_eq!(p["notifications"]["email_digest"], "weekly");
    assert_eq!(
        p["notifications"]["direct_messages"], false,
        "an unticked box is off"
    );
    assert_eq!(p["chat"]["enter_sends"], false);
    let refused = ada
        .client
        .post(app.url("/settings/preferences/save"))
        .header("Origin", app.address.clone())
        .form(&[
            ("csrf_token", ada.csrf(&app)),
            ("theme", "light".into()),
            ("locale", "pt-BR".into()),
            ("time_zone", "Nowhere".into()),
            ("time_format", "24h".into()),
            ("email_digest", "weekly".into()),
        ])
        .send()
        .await
        .expect("sent");
    assert_eq!(refused.status(), 303);
    let location = refused.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    assert!(location.contains("error="), "{location}");
    let page = ada.page(&app, &location).await;
    assert!(page.contains("time_zone"));
}
