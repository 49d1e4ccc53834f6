//! The device registry through HTTP: claim codes (operators only, once, expiring, within the
//! plan's device limit), the exchange for a token, the device reading itself with it, token
//! rotation and revocation taking effect at once, renaming and tagging, deletion, workspace
//! isolation, and the pages.

use serde_json::{Value, json};

use crate::helpers::{Device, TestApp, team, team_with};

async fn claim(app: &TestApp, who: &Device, tenant: i64, body: Value) -> (u16, Value) {
    let response = who
        .post(
            app,
            &format!("/api/v1/tenants/{tenant}/devices/claims"),
            body,
        )
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// What a device does with its code: no cookies, no CSRF token, just the code.
async fn redeem(app: &TestApp, code: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(app.url("/api/v1/devices/claim"))
        .json(&json!({ "code": code, "firmware": "1.0.0", "chip": "esp32c3" }))
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn device_me(app: &TestApp, token: &str) -> u16 {
    reqwest::Client::new()
        .get(app.url("/api/v1/device"))
        .bearer_auth(token)
        .send()
        .await
        .expect("sent")
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_device_is_provisioned_once_with_its_claim_code_and_its_token_can_be_rotated_and_revoked()
{
    let team = team().await;
    let app = &team.app;
    let (status, created) = claim(
        app,
        &team.carl,
        team.tenant,
        json!({"name": "Greenhouse sensor", "kind": "esp32c3", "tags": ["Lab", "floor-2"]}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let code = created["code"].as_str().expect("code").to_owned();
    assert_eq!(code.len(), 14, "XXXX-XXXX-XXXX: {code}");
    assert!(
        created["qr_svg"]
            .as_str()
            .is_some_and(|s| s.starts_with("<svg"))
    );
    assert!(created["uri"].as_str().is_some_and(|u| u.ends_with(&code)));

    // Typed by hand: lower case, spaces for dashes.
    let typed = code.to_lowercase().replace('-', " ");
    let (status, provisioned) = redeem(app, &typed).await;
    assert_eq!(status, 201, "{provisioned}");
    let token = provisioned["token"].as_str().expect("token").to_owned();
    assert!(token.starts_with("cnd_"));
    let id = provisioned["device"]["id"].as_i64().expect("id");
    assert_eq!(provisioned["device"]["tags"], json!(["floor-2", "lab"]));
    assert_eq!(provisioned["device"]["firmware"], "1.0.0");
    let (status, again) = redeem(app, &code).await;
    assert_eq!(status, 400, "a code works once: {again}");
    assert_eq!(again["error"], "invalid_claim");

    assert_eq!(device_me(app, &token).await, 200);
    assert_eq!(device_me(app, "cnd_not-a-token").await, 401);
    let seen = team
        .eve
        .get_json(app, &format!("/api/v1/devices/{id}"))
        .await;
    assert!(
        seen["last_seen_at"].is_string(),
        "using the token counts as seen: {seen}"
    );

    // Rotation: the old token stops at once, the new one works.
    let rotated = team
        .carl
        .post(app, &format!("/api/v1/devices/{id}/token"), json!({}))
        .await;
    assert_eq!(rotated.status(), 200);
    let new_token = rotated.json::<Value>().await.expect("json")["token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert_eq!(device_me(app, &token).await, 401);
    assert_eq!(device_me(app, &new_token).await, 200);
    // Revocation.
    let revoked = team
        .carl
        .client
        .delete(app.url(&format!("/api/v1/devices/{id}/token")))
        .header("X-CSRF-Token", team.carl.csrf(app))
        .send()
        .await
        .expect("sent");
    assert_eq!(revoked.status(), 204);
    assert_eq!(device_me(app, &new_token).await, 401);
    let listed = team.eve.get_json(app, "/api/v1/devices").await;
    assert_eq!(listed["devices"][0]["has_token"], false);

    let audit = app
        .command()
        .args(["audit", "export", "--format", "jsonl"])
        .output()
        .expect("conclave runs");
    let log = String::from_utf8_lossy(&audit.stdout);
    for event in [
        "device.claim_created",
        "device.provisioned",
        "device.token_rotated",
        "device.token_revoked",
    ] {
        assert!(log.contains(event), "{event} is audited");
    }
}

#[tokio::test]
async fn only_operators_manage_devices_and_other_workspaces_see_nothing() {
    let team = team().await;
    let app = &team.app;
    let (status, _) = claim(
        app,
        &team.eve,
        team.tenant,
        json!({"name": "x", "kind": "sensor"}),
    )
    .await;
    assert_eq!(status, 403, "a viewer cannot add devices");
    let (status, created) = claim(
        app,
        &team.ada,
        team.tenant,
        json!({"name": "door", "kind": "sensor"}),
    )
    .await;
    assert_eq!(status, 201);
    let (_, provisioned) = redeem(app, created["code"].as_str().expect("code")).await;
    let id = provisioned["device"]["id"].as_i64().expect("id");
    let renamed = team
        .eve
        .client
        .patch(app.url(&format!("/api/v1/devices/{id}")))
        .header("X-CSRF-Token", team.eve.csrf(app))
        .json(&json!({"name": "front door"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(renamed.status(), 403);
    let renamed = team
        .carl
        .client
        .patch(app.url(&format!("/api/v1/devices/{id}")))
        .header("X-CSRF-Token", team.carl.csrf(app))
        .json(&json!({"name": "front door", "tags": ["entry"]}))
        .send()
        .await
        .expect("sent");
    assert_eq!(renamed.status(), 200);
    let body: Value = renamed.json().await.expect("json");
    assert_eq!(body["name"], "front door");
    assert_eq!(body["tags"], json!(["entry"]));

    // Someone in another workspace only: the device does not exist for them.
    app.create_user("mallory@example.com", crate::helpers::TEAM_PASSWORD, true)
        .await;
    let mallory =
        Device::signed_in(app, "mallory@example.com", crate::helpers::TEAM_PASSWORD).await;
    let own = mallory
        .post(
            app,
            "/api/v1/tenants",
            json!({"name": "Mallory's", "slug": "mallory"}),
        )
        .await;
    assert_eq!(own.status(), 201);
    let own_id = own.json::<Value>().await.expect("json")["id"]
        .as_i64()
        .expect("id");
    let left = mallory
        .client
        .delete(app.url(&format!(
            "/api/v1/tenants/{}/members/{}",
            team.tenant,
            mallory.get_json(app, "/api/v1/me").await["id"]
        )))
        .header("X-CSRF-Token", mallory.csrf(app))
        .send()
        .await
        .expect("sent");
    assert!(
        left.status().is_success(),
        "she leaves the default workspace"
    );
    let seen = mallory
        .client
        .get(app.url(&format!("/api/v1/devices/{id}")))
        .send()
        .await
        .expect("sent");
    assert_eq!(seen.status(), 404);
    let listed = mallory.get_json(app, "/api/v1/devices").await;
    assert_eq!(listed["devices"], json!([]));
    let (status, _) = claim(
        app,
        &mallory,
        team.tenant,
        json!({"name": "y", "kind": "sensor"}),
    )
    .await;
    assert_eq!(status, 404, "not her workspace");
    let (status, _) = claim(
        app,
        &mallory,
        own_id,
        json!({"name": "y", "kind": "sensor"}),
    )
    .await;
    assert_eq!(status, 201, "her own workspace");

    let deleted = team
        .carl
        .client
        .delete(app.url(&format!("/api/v1/devices/{id}")))
        .header("X-CSRF-Token", team.carl.csrf(app))
        .send()
        .await
        .expect("sent");
    assert_eq!(deleted.status(), 204);
    let gone = team
        .eve
        .client
        .get(app.url(&format!("/api/v1/devices/{id}")))
        .send()
        .await
        .expect("sent");
    assert_eq!(gone.status(), 404);
}

#[tokio::test]
async fn bad_input_and_expired_codes_are_refused() {
    let team = team_with(|settings| settings.devices.claim_ttl_minutes = 0).await;
    let app = &team.app;
    for body in [
        json!({"name": "", "kind": "sensor"}),
        json!({"name": "ok", "kind": "bad kind!"}),
        json!({"name": "ok", "kind": "sensor", "tags": ["a b"]}),
        json!({"name": "ok"}),
    ] {
        let (status, problem) = claim(app, &team.ada, team.tenant, body.clone()).await;
        assert_eq!(status, 400, "{body}: {problem}");
    }
    let (status, created) = claim(
        app,
        &team.ada,
        team.tenant,
        json!({"name": "one", "kind": "sensor"}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, expired) = redeem(app, created["code"].as_str().expect("code")).await;
    assert_eq!(status, 400, "a claim_ttl of 0 expires at once: {expired}");
    let (status, _) = redeem(app, "").await;
    assert_eq!(status, 400);
    let garbage = reqwest::Client::new()
        .post(app.url("/api/v1/devices/claim"))
        .header("Content-Type", "application/json")
        .body("{\"code\": 5")
        .send()
        .await
        .expect("sent");
    assert_eq!(garbage.status(), 400);
}

#[tokio::test]
async fn guessing_claim_codes_is_throttled_per_address_and_audited_once() {
    let team = team_with(|settings| settings.devices.claims_per_minute_per_ip = 3).await;
    let app = &team.app;
    let (_, created) = claim(
        app,
        &team.ada,
        team.tenant,
        json!({"name": "door", "kind": "sensor"}),
    )
    .await;
    for guess in ["AAAA-BBBB-CCCC", "AAAA-BBBB-CCCD", "AAAA-BBBB-CCCE"] {
        let (status, _) = redeem(app, guess).await;
        assert_eq!(status, 400, "{guess}: a wrong code");
    }
    // The fourth attempt in the minute is refused before the code is even looked at: the
    // right code too, so guessing cannot go faster than the limit.
    let response = reqwest::Client::new()
        .post(app.url("/api/v1/devices/claim"))
        .json(&json!({ "code": created["code"] }))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "60");
    // Going on is refused too, and the run is recorded once, with the address.
    for guess in ["AAAA-BBBB-CCCF", "AAAA-BBBB-CCCG"] {
        let (status, _) = redeem(app, guess).await;
        assert_eq!(status, 429, "{guess}");
    }
    let audit = app
        .state
        .db
        .run(|conn| conclave::audit::page(conn, 0, None, 100).map_err(conclave::db::DbError::from))
        .await
        .expect("audit");
    let throttled: Vec<_> = audit
        .iter()
        .filter(|e| e.event == "device.claim_guessing_throttled")
        .collect();
    assert_eq!(throttled.len(), 1, "{audit:?}");
    assert_eq!(throttled[0].ip.as_deref(), Some("127.0.0.1"));
}

#[tokio::test]
async fn the_plan_caps_devices_counting_open_codes_and_names_are_unique() {
    let team = team_with(|settings| {
        settings.billing.plans.insert(
            "free".to_owned(),
            conclave::settings::PlanSettings {
                label: "Free".to_owned(),
                devices: Some(2),
                ..conclave::settings::PlanSettings::default()
            },
        );
    })
    .await;
    let app = &team.app;
    let (status, first) = claim(
        app,
        &team.ada,
        team.tenant,
        json!({"name": "one", "kind": "sensor"}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = redeem(app, first["code"].as_str().expect("code")).await;
    assert_eq!(status, 201);
    let (status, taken) = claim(
        app,
        &team.ada,
        team.tenant,
        json!({"name": "one", "kind": "sensor"}),
    )
    .await;
    assert_eq!(status, 409, "{taken}");
    let (status, _) = claim(
        app,
        &team.ada,
        team.tenant,
        json!({"name": "two", "kind": "sensor"}),
    )
    .await;
    assert_eq!(status, 201, "one device and one open code: the plan's two");
    let (status, refused) = claim(
        app,
        &team.ada,
        team.tenant,
        json!({"name": "three", "kind": "sensor"}),
    )
    .await;
    assert_eq!(status, 402, "{refused}");
    assert_eq!(refused["error"], "device_limit");
}

#[tokio::test]
async fn the_pages_list_devices_and_show_a_new_claim_code_once() {
    let team = team().await;
    let app = &team.app;
    let list = team.carl.page(app, "/devices").await;
    assert!(list.contains("No devices yet"));
    let created = team
        .carl
        .client
        .post(app.url("/devices/claims"))
        .header("Origin", app.address.clone())
        .form(&[
            ("csrf_token", team.carl.csrf(app)),
            ("tenant_id", team.tenant.to_string()),
            ("name", "Boiler".to_owned()),
            ("kind", "esp32c6".to_owned()),
            ("tags", "basement, heating".to_owned()),
        ])
        .send()
        .await
        .expect("sent");
    assert_eq!(created.status(), 201);
    let page = created.text().await.expect("page");
    assert!(page.contains("id=\"claim-code\""));
    assert!(page.contains("<svg"), "with its QR code");
    let start = page.find("id=\"claim-code\">").expect("code") + "id=\"claim-code\">".len();
    let code = &page[start..start + 14];
    let (status, provisioned) = redeem(app, code).await;
    assert_eq!(status, 201, "{provisioned}");
    let id = provisioned["device"]["id"].as_i64().expect("id");
    let list = team.eve.page(app, "/devices").await;
    assert!(list.contains("data-device=\"Boiler\""));
    let device = team.eve.page(app, &format!("/devices/{id}")).await;
    assert!(device.contains("basement, heating"));
    assert!(
        !device.contains("Revoke token"),
        "a viewer is shown no actions"
    );
    let device = team.carl.page(app, &format!("/devices/{id}")).await;
    assert!(device.contains("Revoke token"));
}
