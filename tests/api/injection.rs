//! SQL metacharacters everywhere. Classic injection strings, LIKE wildcards, quotes,
//! backslashes and a NUL go into every string a client can send: each string query parameter
//! and each string field of each documented JSON request body, as the owner of the
//! installation and of a workspace (so the requests get past authorization and reach the
//! database). Nothing answers 5xx; afterwards the database is intact; where text is stored it
//! comes back verbatim; LIKE filters take `%` and `_` literally. The list of operations is the
//! OpenAPI document's, so a new route is covered the day it is documented.

use serde_json::{Map, Value, json};

use crate::helpers::{Device, spawn_app};
use crate::isolation::call;

const PASSWORD: &str = "correct horse battery staple";

/// What an attacker types where a query might be built from text.
const PAYLOADS: &[&str] = &[
    "' OR '1'='1",
    "\"; DROP TABLE users; --",
    "') UNION SELECT password_hash, email FROM users --",
    "%_\\%",
    "a\u{0}b",
    "1; SELECT pg_sleep(5); --",
    "$$; DELETE FROM messages; $$",
    "\\'; --",
];

fn query(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The schema `reference` points at (`#/components/schemas/X`), or the schema itself.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference.rsplit('/').next().unwrap_or_default();
            resolve(doc, &doc["components"]["schemas"][name])
        }
        None => match schema["oneOf"].as_array().or(schema["anyOf"].as_array()) {
            Some(choices) => choices
                .iter()
                .map(|choice| resolve(doc, choice))
                .find(|choice| choice["type"] != "null")
                .unwrap_or(schema),
            None => schema,
        },
    }
}

/// The first type of a schema that is not `null` (OpenAPI 3.1 allows a list).
fn type_of(schema: &Value) -> &str {
    match &schema["type"] {
        Value::String(kind) => kind,
        Value::Array(kinds) => kinds
            .iter()
            .filter_map(Value::as_str)
            .find(|kind| *kind != "null")
            .unwrap_or("null"),
        _ if schema["properties"].is_object() => "object",
        _ => "",
    }
}

/// A value for `schema` with every free-text string set to `text`: enums take their first
/// value, numbers the workspace's id (ids are what numbers mostly are), so that as many bodies
/// as possible pass validation and reach the database.
fn fill(doc: &Value, schema: &Value, text: &str, id: i64, depth: usize) -> Value {
    let schema = resolve(doc, schema);
    if let Some(first) = schema["enum"].as_array().and_then(|values| values.first()) {
        return first.clone();
    }
    match type_of(schema) {
        "string" => json!(text),
        "integer" | "number" => json!(id),
        "boolean" => json!(false),
        "array" => match type_of(resolve(doc, &schema["items"])) {
            "string" | "object" if depth < 3 => {
                json!([fill(doc, &schema["items"], text, id, depth + 1)])
            }
            _ => json!([]),
        },
        "object" if depth < 3 => {
            let mut object = Map::new();
            if let Some(properties) = schema["properties"].as_object() {
                for (name, property) in properties {
                    object.insert(name.clone(), fill(doc, property, text, id, depth + 1));
                }
            }
            Value::Object(object)
        }
        _ => Value::Null,
    }
}

/// Operations left out, each because it would end the run's own session or account (the
/// rest of the run would then measure only 401s); they are covered elsewhere with payloads.
fn ends_the_session(method: &str, path: &str) -> bool {
    method == "delete"
        || path.contains("logout")
        || path == "/api/v1/me/password"
        || path.starts_with("/api/v1/me/2fa/")
        || path.starts_with("/api/v1/me/sessions")
}

#[tokio::test]
async fn sql_metacharacters_in_every_field_are_data_never_code() {
    let app = spawn_app().await;
    // The first account owns the installation, so the admin operations are reachable too.
    app.create_user("ada@example.com", PASSWORD, true).await;
    let carl_id = app.create_user("carl@example.com", PASSWORD, true).await;
    let ada = Device::signed_in(&app, "ada@example.com", PASSWORD).await;
    let (status, tenant) = call(
        &ada,
        &app,
        "post",
        "/api/v1/tenants",
        &json!({ "name": "Lab", "slug": "lab" }),
    )
    .await;
    assert_eq!(status, 201, "{tenant}");
    let tenant = tenant["id"].as_i64().expect("tenant id");
    let (_, room) = call(
        &ada,
        &app,
        "post",
        "/api/v1/rooms",
        &json!({ "tenant_id": tenant, "name": "plans" }),
    )
    .await;
    let room = room["id"].as_i64().expect("room id");

    // Stored text comes back as it was sent.
    let mut stored = 0;
    for payload in PAYLOADS {
        let (status, created) = call(
            &ada,
            &app,
            "post",
            "/api/v1/rooms",
            &json!({ "tenant_id": tenant, "name": payload, "topic": payload }),
        )
        .await;
        if status == 201 {
            let id = created["id"].as_i64().expect("id");
            let (_, read) = call(
                &ada,
                &app,
                "get",
                &format!("/api/v1/rooms/{id}"),
                &json!({}),
            )
            .await;
            assert_eq!(read["name"], *payload);
            assert_eq!(read["topic"], *payload);
            stored += 1;
        } else {
            assert!(
                status == 400 || status == 422,
                "{payload:?} as a room name: {status} {created}"
            );
        }
        let (status, said) = call(
            &ada,
            &app,
            "post",
            &format!("/api/v1/rooms/{room}/messages"),
            &json!({ "body": payload }),
        )
        .await;
        if status == 201 {
            stored += 1;
        } else {
            assert!(
                status == 400 || status == 422,
                "{payload:?} as a message: {status} {said}"
            );
        }
    }
    assert!(stored >= PAYLOADS.len(), "most payloads are ordinary text");
    let (_, history) = call(
        &ada,
        &app,
        "get",
        &format!("/api/v1/rooms/{room}/messages?limit=100"),
        &json!({}),
    )
    .await;
    let bodies: Vec<&str> = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["body"].as_str())
        .collect();
    for payload in PAYLOADS.iter().filter(|p| !p.contains('\0')) {
        assert!(
            bodies.contains(payload),
            "{payload:?} stored verbatim: {bodies:?}"
        );
    }

    // LIKE filters take wildcards literally: no address or name here has `%`, `_` or `\`.
    for (needle, expected) in [("%", 0), ("_", 0), ("ada", 1), ("\\", 0)] {
        let (status, found) = call(
            &ada,
            &app,
            "get",
            &format!("/api/v1/admin/users?q={}", query(needle)),
            &json!({}),
        )
        .await;
        assert_eq!(status, 200, "{found}");
        let emails: Vec<&str> = found["users"]
            .as_array()
            .expect("users")
            .iter()
            .filter_map(|u| u["email"].as_str())
            .collect();
        assert_eq!(emails.len(), expected, "{needle:?} found {emails:?}");
    }
    let (status, found) = call(&ada, &app, "get", "/api/v1/search?q=%25", &json!({})).await;
    assert!(status < 500, "{found}");
    if status == 200 {
        assert_eq!(
            found["results"],
            json!([]),
            "`%` is not a wildcard: {found}"
        );
    }

    // Every string query parameter and body field of every documented operation.
    let doc: Value = app
        .get("/api/openapi.json")
        .await
        .json()
        .await
        .expect("doc");
    let mut operations: Vec<(String, String, Value)> = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("item") {
            if !ends_the_session(method, path) {
                operations.push((method.clone(), path.clone(), operation.clone()));
            }
        }
    }
    // The edge policy can shut the door on the run's own address: last.
    operations.sort_by_key(|(_, path, _)| path.starts_with("/api/v1/admin/edge"));
    let mut failures = Vec::new();
    let mut sent = 0;
    for (method, path, operation) in &operations {
        let mut concrete = path.clone();
        for name in path
            .split('{')
            .skip(1)
            .filter_map(|rest| rest.split('}').next())
        {
            let value = match name {
                "tenant" => tenant.to_string(),
                "id" if path.starts_with("/api/v1/tenants/") => tenant.to_string(),
                "id" if path.starts_with("/api/v1/admin/tenants/") => tenant.to_string(),
                "id" if path.starts_with("/api/v1/rooms/") => room.to_string(),
                "id" if path.starts_with("/api/v1/admin/rooms/") => room.to_string(),
                "room" => room.to_string(),
                "id" | "user" | "user_id" => carl_id.to_string(),
                "name" => "bot".to_owned(),
                _ => "1".to_owned(),
            };
            concrete = concrete.replace(&format!("{{{name}}}"), &value);
        }
        let strings: Vec<String> = operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "query" && type_of(resolve(&doc, &p["schema"])) == "string")
            .filter(|p| resolve(&doc, &p["schema"])["enum"].is_null())
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect();
        let body_schema = &operation["requestBody"]["content"]["application/json"]["schema"];
        for payload in PAYLOADS {
            let body = if body_schema.is_null() {
                json!({})
            } else {
                fill(&doc, body_schema, payload, tenant, 0)
            };
            let mut targets = vec![concrete.clone()];
            targets.extend(
                strings
                    .iter()
                    .map(|name| format!("{concrete}?{name}={}", query(payload))),
            );
            if body_schema.is_null() && strings.is_empty() {
                continue;
            }
            for target in targets {
                let (status, answer) = call(&ada, &app, method, &target, &body).await;
                sent += 1;
                if status >= 500 {
                    failures.push(format!(
                        "{} {target} {body}: {status} {answer}",
                        method.to_uppercase()
                    ));
                }
            }
        }
    }
    eprintln!("{sent} requests over {} operations", operations.len());
    assert!(sent > 400, "requests sent: {sent}");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The database is intact: the accounts, the room and its messages are all there.
    let carl = Device::signed_in(&app, "carl@example.com", PASSWORD).await;
    assert_eq!(carl.me_status(&app).await, 200);
    let (status, history) = call(
        &ada,
        &app,
        "get",
        &format!("/api/v1/rooms/{room}/messages?limit=100"),
        &json!({}),
    )
    .await;
    assert!(
        status == 200 || status == 403,
        "the room is still there: {status} {history}"
    );
}
