//! Workspace isolation across the whole API: Mallory, signed in but not a member of Ada's
//! workspace, replays every documented operation that names something by id with the ids of
//! Ada's things (workspace, room, message, device, invitation, token, session, …). Nothing may
//! succeed, nothing may fail with a 5xx, and the operations that change something must be
//! refused for who she is (403/404), not for a malformed body. Afterwards Ada's things are as
//! they were. The list of operations is the OpenAPI document's, so a new route is covered the
//! day it is documented (and `openapi.rs` fails until it is).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::helpers::{Device, TestApp, spawn_app};

const PASSWORD: &str = "correct horse battery staple";

/// Ada's things, by the path parameter names the document uses for them.
struct Secrets {
    tenant: i64,
    room: i64,
    message: i64,
    device: i64,
    invitation: i64,
    token: i64,
    session: String,
    ada: i64,
}

impl Secrets {
    /// The id of Ada's thing a path parameter names.
    fn value_for(&self, path: &str, name: &str) -> String {
        let under = |prefix: &str| path.starts_with(prefix);
        let id = match name {
            "tenant" => self.tenant,
            "id" if under("/api/v1/tenants/") => self.tenant,
            "id" if under("/api/v1/rooms/") => self.room,
            "room" => self.room,
            "id" if under("/api/v1/devices/") => self.device,
            "device" => self.device,
            "id" if under("/api/v1/me/tokens/") => self.token,
            "id" if under("/api/v1/me/sessions/") => return self.session.clone(),
            "msg" | "message" => self.message,
            "user" | "user_id" => self.ada,
            "invitation_id" => self.invitation,
            "name" => return "ada".to_owned(),
            // Things Ada has one of at most: the first id there is.
            _ => 1,
        };
        id.to_string()
    }
}

/// Bodies that are valid for the operations that change something, so a refusal can only be
/// about who asks. Operations not listed get `{}`.
fn valid_body(method: &str, path: &str, secrets: &Secrets) -> Value {
    match (method, path) {
        ("patch", "/api/v1/rooms/{id}") => json!({ "name": "taken over" }),
        ("post", "/api/v1/rooms/{id}/members") => json!({}),
        ("patch", "/api/v1/rooms/{id}/members/{user}") => json!({ "role": "readonly" }),
        ("post", "/api/v1/rooms/{id}/messages") => json!({ "body": "hello from outside" }),
        ("patch", "/api/v1/rooms/{id}/messages/{msg}") => json!({ "body": "rewritten" }),
        ("put", "/api/v1/rooms/{id}/assistant") => json!({ "enabled": true }),
        ("patch", "/api/v1/tenants/{id}") => json!({ "name": "Taken over" }),
        ("post", "/api/v1/tenants/{id}/invitations") => {
            json!({ "email": "mallory2@example.com", "role": "owner" })
        }
        ("patch", "/api/v1/tenants/{id}/members/{user_id}") => json!({ "role": "viewer" }),
        ("patch", "/api/v1/devices/{id}") => json!({ "name": "mine now" }),
        ("post", "/api/v1/devices/{id}/commands") => json!({ "name": "reboot" }),
        ("post", "/api/v1/devices/{id}/rules") => {
            json!({ "room_id": secrets.room, "metric": "temp", "op": "above", "threshold": 1.0 })
        }
        ("post", "/api/v1/tenants/{tenant}/devices/claims") => {
            json!({ "name": "implant", "kind": "sensor" })
        }
        ("post", "/api/v1/tenants/{tenant}/rollouts") => json!({ "image_id": 1, "tag": "lab" }),
        _ => json!({}),
    }
}

/// Operations whose refusal must be about access (403 or 404) given a valid body.
fn must_refuse_access(method: &str, path: &str) -> bool {
    matches!(
        (method, path),
        ("patch", "/api/v1/rooms/{id}")
            | ("post", "/api/v1/rooms/{id}/members")
            | ("patch", "/api/v1/rooms/{id}/members/{user}")
            | ("post", "/api/v1/rooms/{id}/messages")
            | ("patch", "/api/v1/rooms/{id}/messages/{msg}")
            | ("delete", "/api/v1/rooms/{id}/messages/{msg}")
            | ("delete", "/api/v1/rooms/{id}")
            | ("get", "/api/v1/rooms/{id}")
            | ("get", "/api/v1/rooms/{id}/messages")
            | ("patch", "/api/v1/tenants/{id}")
            | ("post", "/api/v1/tenants/{id}/invitations")
            | ("patch", "/api/v1/tenants/{id}/members/{user_id}")
            | ("delete", "/api/v1/tenants/{id}/members/{user_id}")
            | ("get", "/api/v1/devices/{id}")
            | ("patch", "/api/v1/devices/{id}")
            | ("delete", "/api/v1/devices/{id}")
            | ("post", "/api/v1/devices/{id}/commands")
            | ("post", "/api/v1/devices/{id}/rules")
            | ("post", "/api/v1/devices/{id}/token")
            | ("get", "/api/v1/devices/{id}/telemetry")
            | ("post", "/api/v1/tenants/{tenant}/devices/claims")
            | ("delete", "/api/v1/me/tokens/{id}")
            | ("delete", "/api/v1/me/sessions/{id}")
    )
}

/// Sends `method path` as `who` (with the CSRF token), the body as JSON unless it is a GET.
pub(crate) async fn call(
    who: &Device,
    app: &TestApp,
    method: &str,
    path: &str,
    body: &Value,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
    let mut request = who
        .client
        .request(method.clone(), app.url(path))
        .header("X-CSRF-Token", who.csrf(app));
    if method != reqwest::Method::GET {
        request = request.json(body);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn ok_json(who: &Device, app: &TestApp, method: &str, path: &str, body: Value) -> Value {
    let (status, answer) = call(who, app, method, path, &body).await;
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {answer}"
    );
    answer
}

#[tokio::test]
async fn nobody_reaches_another_workspaces_things_by_guessing_ids_on_any_route() {
    let app = spawn_app().await;
    let ada_id = app.create_user("ada@example.com", PASSWORD, true).await;
    app.create_user("mallory@example.com", PASSWORD, true).await;
    let ada = Device::signed_in(&app, "ada@example.com", PASSWORD).await;
    let mallory = Device::signed_in(&app, "mallory@example.com", PASSWORD).await;
    for who in [&ada, &mallory] {
        who.client
            .get(app.url("/healthz"))
            .send()
            .await
            .expect("sent");
    }

    // Ada's own workspace, which Mallory is not in, and her things in it.
    let tenant = ok_json(
        &ada,
        &app,
        "post",
        "/api/v1/tenants",
        json!({ "name": "Secret lab", "slug": "secret-lab" }),
    )
    .await["id"]
        .as_i64()
        .expect("workspace id");
    let room = ok_json(
        &ada,
        &app,
        "post",
        "/api/v1/rooms",
        json!({ "tenant_id": tenant, "name": "plans", "visibility": "public" }),
    )
    .await["id"]
        .as_i64()
        .expect("room id");
    let message = ok_json(
        &ada,
        &app,
        "post",
        &format!("/api/v1/rooms/{room}/messages"),
        json!({ "body": "the launch is on tuesday" }),
    )
    .await["id"]
        .as_i64()
        .expect("message id");
    let claim = ok_json(
        &ada,
        &app,
        "post",
        &format!("/api/v1/tenants/{tenant}/devices/claims"),
        json!({ "name": "door", "kind": "sensor", "tags": ["lab"] }),
    )
    .await;
    let redeemed: Value = reqwest::Client::new()
        .post(app.url("/api/v1/devices/claim"))
        .json(&json!({ "code": claim["code"], "firmware": "1.0.0", "chip": "esp32c3" }))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("claimed");
    let device = redeemed["device"]["id"].as_i64().expect("device id");
    let invitation = ok_json(
        &ada,
        &app,
        "post",
        &format!("/api/v1/tenants/{tenant}/invitations"),
        json!({ "email": "grace@example.com", "role": "viewer" }),
    )
    .await["id"]
        .as_i64()
        .expect("invitation id");
    let token = ok_json(
        &ada,
        &app,
        "post",
        "/api/v1/me/tokens",
        json!({ "name": "script", "scopes": ["read"] }),
    )
    .await["id"]
        .as_i64()
        .expect("token id");
    let sessions = ada.get_json(&app, "/api/v1/me/sessions").await;
    let session = sessions["sessions"][0]["id"]
        .as_str()
        .expect("session id")
        .to_owned();
    let secrets = Secrets {
        tenant,
        room,
        message,
        device,
        invitation,
        token,
        session,
        ada: ada_id,
    };

    // Every documented operation that names something, with Ada's ids, as Mallory.
    let doc: Value = app
        .get("/api/openapi.json")
        .await
        .json()
        .await
        .expect("doc");
    let mut answers: BTreeMap<String, u16> = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        if !path.contains('{') {
            continue;
        }
        for (method, _) in item.as_object().expect("item") {
            let mut concrete = path.clone();
            for name in path
                .split('{')
                .skip(1)
                .filter_map(|rest| rest.split('}').next())
            {
                concrete = concrete.replace(&format!("{{{name}}}"), &secrets.value_for(path, name));
            }
            let body = valid_body(method, path, &secrets);
            let (status, answer) = call(&mallory, &app, method, &concrete, &body).await;
            let what = format!("{} {path} ({concrete})", method.to_uppercase());
            assert!(
                !(200..400).contains(&status),
                "{what} succeeded for an outsider: {status} {answer}"
            );
            assert!(status < 500, "{what}: {status} {answer}");
            if must_refuse_access(method, path) {
                assert!(
                    status == 403 || status == 404,
                    "{what} must be refused as not hers (403/404), got {status} {answer}"
                );
            }
            answers.insert(what, status);
        }
    }
    assert!(answers.len() > 60, "the document's operations: {answers:?}");

    // Ids in query strings and bodies are checked too.
    for path in [
        format!("/api/v1/devices?tenant={tenant}"),
        format!("/api/v1/rooms?tenant={tenant}"),
    ] {
        let (status, answer) = call(&mallory, &app, "get", &path, &json!({})).await;
        let listed = answer.to_string();
        assert!(
            status == 403 || status == 404 || !listed.contains("plans") && !listed.contains("door"),
            "{path}: {status} {answer}"
        );
    }
    let (status, found) = call(&mallory, &app, "get", "/api/v1/search?q=launch", &json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(
        found["results"],
        json!([]),
        "search reaches only readable rooms"
    );
    for path in [
        format!("/api/v1/billing/credits?tenant={tenant}"),
        format!("/api/v1/billing/orders?tenant={tenant}"),
    ] {
        let (status, answer) = call(&mallory, &app, "get", &path, &json!({})).await;
        assert!(status == 403 || status == 404, "{path}: {status} {answer}");
    }
    let (status, answer) = call(
        &mallory,
        &app,
        "post",
        "/api/v1/rooms",
        &json!({ "tenant_id": tenant, "name": "squatter" }),
    )
    .await;
    assert!(
        status == 403 || status == 404,
        "a room in her workspace: {status} {answer}"
    );

    // Ada's things are as they were.
    let (status, room_now) = call(
        &ada,
        &app,
        "get",
        &format!("/api/v1/rooms/{room}"),
        &json!({}),
    )
    .await;
    assert_eq!(status, 200, "{room_now}");
    assert_eq!(room_now["name"], "plans");
    let history = ada
        .get_json(&app, &format!("/api/v1/rooms/{room}/messages"))
        .await;
    let bodies: Vec<&str> = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["body"].as_str())
        .collect();
    assert_eq!(bodies, ["the launch is on tuesday"]);
    let device_now = ada
        .get_json(&app, &format!("/api/v1/devices/{device}"))
        .await;
    assert_eq!(device_now["name"], "door", "{device_now}");
    let tenants = ada.get_json(&app, "/api/v1/tenants").await;
    assert!(
        tenants.to_string().contains("Secret lab"),
        "the workspace keeps its name: {tenants}"
    );
    assert_eq!(
        ada.me_status(&app).await,
        200,
        "Ada's session was not revoked"
    );
}
