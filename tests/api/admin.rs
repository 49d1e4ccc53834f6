//! The admin area through HTTP: every action × every staff role (and someone with no staff
//! role who owns another workspace), the buttons each role is shown, audit entries with
//! before/after, the audit viewer's filters and JSONL export, settings and caches.

use serde_json::{Value, json};

use crate::helpers::{Device, TestApp, spawn_app};

const PASSWORD: &str = "correct horse battery staple";

pub struct Staffed {
    pub app: TestApp,
    pub owner: Device,
    pub admin: Device,
    pub operator: Device,
    pub viewer: Device,
    /// Owns a workspace of their own, but has no staff role.
    pub outsider: Device,
    pub target: i64,
}

/// An installation with one person per staff role, handed out by the owner through the API.
pub async fn staffed() -> Staffed {
    let app = spawn_app().await;
    let owner_id = app.create_user("owner@example.com", PASSWORD, true).await;
    let owner = Device::signed_in(&app, "owner@example.com", PASSWORD).await;
    let mut people = Vec::new();
    for (email, role) in [
        ("admin@example.com", "admin"),
        ("operator@example.com", "operator"),
        ("viewer@example.com", "viewer"),
    ] {
        let id = app.create_user(email, PASSWORD, true).await;
        let response = owner
            .post(
                &app,
                &format!("/api/v1/admin/users/{id}/role"),
                json!({ "role": role }),
            )
            .await;
        assert_eq!(response.status(), 200, "the owner makes {email} {role}");
        people.push(Device::signed_in(&app, email, PASSWORD).await);
    }
    app.create_user("outsider@example.com", PASSWORD, true)
        .await;
    let outsider = Device::signed_in(&app, "outsider@example.com", PASSWORD).await;
    let created = outsider
        .post(
            &app,
            "/api/v1/tenants",
            json!({ "name": "Outside", "slug": "outside" }),
        )
        .await;
    assert_eq!(created.status(), 201, "the outsider owns a workspace");
    let target = app.create_user("target@example.com", PASSWORD, true).await;
    assert!(owner_id < target);
    let mut people = people.into_iter();
    let (Some(admin), Some(operator), Some(viewer)) = (people.next(), people.next(), people.next())
    else {
        unreachable!("three people were made");
    };
    Staffed {
        app,
        owner,
        admin,
        operator,
        viewer,
        outsider,
        target,
    }
}

async fn call(
    app: &TestApp,
    who: &Device,
    method: &str,
    path: &str,
    body: &Value,
) -> (u16, String) {
    let url = app.url(path);
    let request = match method {
        "GET" => who.client.get(url),
        "PUT" => who
            .client
            .put(url)
            .header("X-CSRF-Token", who.csrf(app))
            .json(body),
        _ => who
            .client
            .post(url)
            .header("X-CSRF-Token", who.csrf(app))
            .json(body),
    };
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

async fn first_room(app: &TestApp, owner: &Device) -> i64 {
    let created = owner
        .post(app, "/api/v1/rooms", json!({ "name": "ops-room" }))
        .await;
    assert_eq!(created.status(), 201);
    created.json::<Value>().await.expect("json")["id"]
        .as_i64()
        .expect("room id")
}

async fn dead_job(app: &TestApp) -> i64 {
    use diesel::prelude::*;
    let job = conclave::jobs::NewJob::new("test.never_registered", &json!({})).expect("job");
    let queue = app.state.queue.clone();
    app.state
        .db
        .run(move |conn| {
            let id = queue.enqueue_in(conn, &job)?;
            diesel::update(conclave::schema::jobs::table.find(id))
                .set((
                    conclave::schema::jobs::state.eq("dead"),
                    conclave::schema::jobs::run_at
                        .eq(chrono::Utc::now().naive_utc() + chrono::TimeDelta::days(365)),
                ))
                .execute(conn)?;
            Ok::<_, conclave::db::DbError>(id)
        })
        .await
        .expect("a dead job")
}

#[tokio::test]
async fn every_action_answers_each_role_as_its_powers_say() {
    let s = staffed().await;
    let app = &s.app;
    let room = first_room(app, &s.owner).await;
    let job = dead_job(app).await;
    let tenant = {
        let tenants = s.owner.get_json(app, "/api/v1/admin/tenants").await;
        tenants["tenants"][0]["id"].as_i64().expect("a workspace")
    };
    let t = s.target;
    // (method, path, body, least role, statuses the allowed roles may get)
    let actions: Vec<(&str, String, Value, &str, &[u16])> = vec![
        (
            "GET",
            "/api/v1/admin/dashboard".into(),
            json!(null),
            "viewer",
            &[200],
        ),
        (
            "GET",
            "/api/v1/admin/users?q=example".into(),
            json!(null),
            "viewer",
            &[200],
        ),
        (
            "GET",
            "/api/v1/admin/tenants".into(),
            json!(null),
            "viewer",
            &[200],
        ),
        (
            "GET",
            format!("/api/v1/admin/tenants/{tenant}/members"),
            json!(null),
            "viewer",
            &[200],
        ),
        (
            "GET",
            "/api/v1/admin/rooms".into(),
            json!(null),
            "viewer",
            &[200],
        ),
        (
            "GET",
            "/api/v1/admin/jobs?state=dead".into(),
            json!(null),
            "viewer",
            &[200],
        ),
        (
            "GET",
            "/api/v1/admin/billing".into(),
            json!(null),
            "viewer",
            &[200],
        ),
        (
            "GET",
            "/api/v1/admin/settings".into(),
            json!(null),
            "viewer",
            &[200],
        ),
        (
            "GET",
            "/api/v1/admin/caches".into(),
            json!(null),
            "viewer",
            &[200],
        ),
        (
            "GET",
            "/api/v1/admin/audit".into(),
            json!(null),
            "viewer",
            &[200],
        ),
        (
            "GET",
            "/api/v1/admin/audit/export".into(),
            json!(null),
            "viewer",
            &[200],
        ),
        (
            "GET",
            "/api/v1/admin/edge/policy".into(),
            json!(null),
            "viewer",
            &[200],
        ),
        (
            "GET",
            "/api/v1/admin/edge/versions".into(),
            json!(null),
            "viewer",
            &[200],
        ),
        (
            "GET",
            "/api/v1/admin/edge/render?format=nginx".into(),
            json!(null),
            "viewer",
            &[200],
        ),
        (
            "GET",
            "/api/v1/admin/edge/agents".into(),
            json!(null),
            "viewer",
            &[200],
        ),
        (
            "GET",
            "/api/v1/admin/assistant/providers".into(),
            json!(null),
            "viewer",
            &[200],
        ),
        (
            "POST",
            "/api/v1/admin/edge/preview".into(),
            json!({"policy": {}, "format": "caddy"}),
            "viewer",
            &[200],
        ),
        (
            "POST",
            format!("/api/v1/admin/users/{t}/disable"),
            json!(null),
            "operator",
            &[200],
        ),
        (
            "POST",
            format!("/api/v1/admin/users/{t}/enable"),
            json!(null),
            "operator",
            &[200],
        ),
        (
            "POST",
            format!("/api/v1/admin/users/{t}/unlock"),
            json!(null),
            "operator",
            &[200],
        ),
        (
            "POST",
            format!("/api/v1/admin/users/{t}/sign-out"),
            json!(null),
            "operator",
            &[200],
        ),
        (
            "POST",
            format!("/api/v1/admin/rooms/{room}/archive"),
            json!(null),
            "operator",
            &[200],
        ),
        (
            "POST",
            format!("/api/v1/admin/rooms/{room}/unarchive"),
            json!(null),
            "operator",
            &[200],
        ),
        (
            "POST",
            format!("/api/v1/admin/rooms/{room}/retention"),
            json!({"retention_days": 30}),
            "operator",
            &[200],
        ),
        (
            "POST",
            format!("/api/v1/admin/rooms/{room}/legal-hold"),
            json!({"on": true}),
            "operator",
            &[200],
        ),
        (
            "POST",
            format!("/api/v1/admin/jobs/{job}/retry"),
            json!(null),
            "operator",
            &[200, 409],
        ),
        (
            "POST",
            "/api/v1/admin/caches/sessions/clear".into(),
            json!(null),
            "operator",
            &[200],
        ),
        (
            "POST",
            "/api/v1/admin/assistant/reload".into(),
            json!(null),
            "operator",
            &[200],
        ),
        (
            "PUT",
            "/api/v1/admin/edge/agents/proxy-1".into(),
            json!({"format": "nginx", "applied_version": 0, "status": "applied"}),
            "operator",
            &[204],
        ),
        (
            "POST",
            format!("/api/v1/admin/users/{t}/reset-2fa"),
            json!(null),
            "admin",
            &[409],
        ),
        (
            "POST",
            format!("/api/v1/admin/users/{t}/role"),
            json!({"role": "viewer"}),
            "admin",
            &[200],
        ),
        (
            "POST",
            format!("/api/v1/admin/tenants/{tenant}/plan"),
            json!({"plan": "pro"}),
            "admin",
            &[200],
        ),
        (
            "POST",
            "/api/v1/admin/billing/adjustments".into(),
            json!({"tenant_id": tenant, "amount": 100, "reason": "goodwill"}),
            "admin",
            &[200],
        ),
        (
            "PUT",
            "/api/v1/admin/edge/policy".into(),
            json!({"policy": {}, "comment": "matrix"}),
            "admin",
            &[200],
        ),
        (
            "POST",
            "/api/v1/admin/edge/rollback".into(),
            json!({"version": 1}),
            "admin",
            &[200],
        ),
        (
            "POST",
            format!("/api/v1/admin/jobs/{job}/drop"),
            json!(null),
            "operator",
            &[200, 404],
        ),
    ];
    let rank = |role: &str| match role {
        "owner" => 4,
        "admin" => 3,
        "operator" => 2,
        "viewer" => 1,
        _ => 0,
    };
    // Refused callers first, so an allowed call's side effect never decides a refusal.
    let people: [(&str, &Device); 5] = [
        ("outsider", &s.outsider),
        ("viewer", &s.viewer),
        ("operator", &s.operator),
        ("admin", &s.admin),
        ("owner", &s.owner),
    ];
    let mut failures = Vec::new();
    for (method, path, body, least, allowed) in &actions {
        for (role, device) in people {
            let (status, text) = call(app, device, method, path, body).await;
            let ok = if rank(role) >= rank(least) {
                allowed.contains(&status)
            } else {
                status == 403
            };
            if !ok {
                failures.push(format!("{role} {method} {path}: {status} {text}"));
            }
        }
    }
    // Workspaces need distinct slugs, so creation is checked per role on its own.
    for (role, device) in people {
        let (status, text) = call(
            app,
            device,
            "POST",
            "/api/v1/admin/tenants",
            &json!({"name": format!("By {role}"), "slug": format!("by-{role}"), "owner_email": "target@example.com"}),
        )
        .await;
        let expected = if rank(role) >= rank("admin") {
            200
        } else {
            403
        };
        if status != expected {
            failures.push(format!(
                "{role} POST /api/v1/admin/tenants: {status} {text}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn pages_show_each_role_only_the_buttons_it_can_use() {
    let s = staffed().await;
    let app = &s.app;
    for path in [
        "/admin",
        "/admin/users",
        "/admin/tenants",
        "/admin/rooms",
        "/admin/jobs",
        "/admin/billing",
        "/admin/settings",
        "/admin/caches",
        "/admin/audit",
        "/admin/edge",
        "/admin/assistant",
    ] {
        for who in [&s.owner, &s.viewer] {
            let page = who.page(app, path).await;
            assert!(page.contains("id=\"admin-title\""), "{path}");
        }
        let refused = s
            .outsider
            .client
            .get(app.url(path))
            .header("Accept", "text/html")
            .send()
            .await
            .expect("sent");
        assert_eq!(
            refused.status(),
            403,
            "{path} for someone without a staff role"
        );
    }
    let users = s.viewer.page(app, "/admin/users").await;
    assert!(users.contains("target@example.com"));
    assert!(!users.contains("/disable\""), "viewers see no actions");
    let users = s.operator.page(app, "/admin/users").await;
    assert!(users.contains("/disable\""), "operators may disable");
    assert!(!users.contains("/role\""), "operators may not change roles");
    let users = s.admin.page(app, "/admin/users").await;
    assert!(users.contains("/role\""));
    assert!(
        !users.contains("<option value=\"owner\""),
        "admins cannot make owners"
    );
    let users = s.owner.page(app, "/admin/users").await;
    assert!(users.contains("<option value=\"owner\""));
    let edge = s.operator.page(app, "/admin/edge").await;
    assert!(
        edge.contains("readonly"),
        "operators cannot edit the edge policy"
    );
    assert!(!edge.contains("Save as a new version"));
    let edge = s.admin.page(app, "/admin/edge").await;
    assert!(!edge.contains("readonly"));
    let layout = s.viewer.page(app, "/").await;
    assert!(
        layout.contains("href=\"/admin\""),
        "staff see the Admin link"
    );
    let layout = s.outsider.page(app, "/").await;
    assert!(!layout.contains("href=\"/admin\""));
}

#[tokio::test]
async fn forms_go_back_to_their_page_with_a_notice_or_the_reason() {
    let s = staffed().await;
    let app = &s.app;
    let form = |who: &Device, path: &str, fields: &[(&str, &str)]| {
        let mut all: Vec<(String, String)> = vec![("csrf_token".into(), who.csrf(app))];
        all.extend(
            fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        who.client
            .post(app.url(path))
            .header("Origin", app.address.clone())
            .form(&all)
            .send()
    };
    let done = form(
        &s.operator,
        &format!("/admin/users/{}/disable", s.target),
        &[],
    )
    .await
    .expect("sent");
    assert_eq!(done.status(), 303);
    assert_eq!(
        done.headers()["location"].to_str().expect("location"),
        "/admin/users?notice=disabled"
    );
    let refused = form(
        &s.operator,
        &format!("/admin/users/{}/role", s.target),
        &[("role", "admin")],
    )
    .await
    .expect("sent");
    assert_eq!(refused.status(), 303);
    let location = refused.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    assert!(location.starts_with("/admin/users?error="), "{location}");
    let page = s.operator.page(app, &location).await;
    assert!(page.contains("staff role or above"), "the reason is shown");
    // An admin cannot hand out a role above their own, nor act on the owner.
    let (status, _) = call(
        app,
        &s.admin,
        "POST",
        &format!("/api/v1/admin/users/{}/role", s.target),
        &json!({"role": "owner"}),
    )
    .await;
    assert_eq!(status, 403);
    let owner_id = s.owner.get_json(app, "/api/v1/me").await["id"]
        .as_i64()
        .expect("id");
    let (status, _) = call(
        app,
        &s.admin,
        "POST",
        &format!("/api/v1/admin/users/{owner_id}/disable"),
        &json!(null),
    )
    .await;
    assert_eq!(status, 403, "an admin cannot disable the owner");
    // The last owner cannot step down.
    let (status, text) = call(
        app,
        &s.owner,
        "POST",
        &format!("/api/v1/admin/users/{owner_id}/role"),
        &json!({"role": "admin"}),
    )
    .await;
    assert_eq!(status, 409, "{text}");
    let (status, text) = call(
        app,
        &s.owner,
        "POST",
        &format!("/api/v1/admin/users/{}/role", s.target),
        &json!({"role": "deity"}),
    )
    .await;
    assert_eq!(status, 400, "{text}");
}

#[tokio::test]
async fn disabling_ends_sessions_and_is_audited_with_before_and_after() {
    let s = staffed().await;
    let app = &s.app;
    let victim = Device::signed_in(app, "target@example.com", PASSWORD).await;
    assert_eq!(victim.me_status(app).await, 200);
    let (status, _) = call(
        app,
        &s.operator,
        "POST",
        &format!("/api/v1/admin/users/{}/disable", s.target),
        &json!(null),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(victim.me_status(app).await, 401, "signed out at once");
    let login = Device::new(None)
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"email": "target@example.com", "password": PASSWORD}))
        .send()
        .await
        .expect("sent");
    assert_ne!(login.status(), 200, "a disabled account cannot sign in");
    let events = s
        .viewer
        .get_json(
            app,
            "/api/v1/admin/audit?action=user.disabled&actor=operator@example.com",
        )
        .await;
    let event = &events["events"][0];
    assert_eq!(event["subject"], format!("user:{}", s.target));
    assert_eq!(event["details"]["before"]["disabled"], false);
    assert_eq!(event["details"]["after"]["disabled"], true);
    // A filter on another actor, or a prefix, or a time window.
    let none = s
        .viewer
        .get_json(
            app,
            "/api/v1/admin/audit?action=user.disabled&actor=admin@example.com",
        )
        .await;
    assert_eq!(none["events"].as_array().map(Vec::len), Some(0));
    let prefixed = s
        .viewer
        .get_json(app, "/api/v1/admin/audit?action=staff.")
        .await;
    assert!(prefixed["events"].as_array().is_some_and(|e| e.len() >= 3));
    let future = s
        .viewer
        .get_json(app, "/api/v1/admin/audit?from=2999-01-01T00:00")
        .await;
    assert_eq!(future["events"].as_array().map(Vec::len), Some(0));
    let bad = s
        .viewer
        .client
        .get(app.url("/api/v1/admin/audit?from=yesterday"))
        .send()
        .await
        .expect("sent");
    assert_eq!(bad.status(), 400);
    // The export is JSON Lines of the same selection.
    let export = s
        .viewer
        .client
        .get(app.url("/api/v1/admin/audit/export?action=staff."))
        .send()
        .await
        .expect("sent");
    assert_eq!(export.status(), 200);
    assert_eq!(export.headers()["content-type"], "application/x-ndjson");
    let text = export.text().await.expect("body");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert!(lines.len() >= 3);
    assert!(lines.iter().all(|l| l["event"] == "staff.role_changed"));
}

#[tokio::test]
async fn settings_mask_secrets_and_say_where_each_value_came_from() {
    let s = staffed().await;
    let settings = s.viewer.get_json(&s.app, "/api/v1/admin/settings").await;
    let rows = settings["settings"].as_array().expect("rows");
    let find = |key: &str| rows.iter().find(|r| r["key"] == key).cloned();
    let url = find("database.url").expect("the database URL is listed");
    assert!(
        !url["value"].as_str().unwrap_or_default().contains("://"),
        "masked: {url}"
    );
    let listen = find("server.listen").expect("listen");
    assert!(["default", "file", "env"].contains(&listen["source"].as_str().unwrap_or_default()));
    let page = s.viewer.page(&s.app, "/admin/settings").await;
    assert!(page.contains("read-only"));
}

#[tokio::test]
async fn unlocking_resets_the_lockout_and_caches_can_be_cleared() {
    let s = staffed().await;
    let app = &s.app;
    for _ in 0..3 {
        let _ = Device::new(None)
            .client
            .post(app.url("/api/v1/auth/login"))
            .json(&json!({"email": "target@example.com", "password": "wrong wrong wrong"}))
            .send()
            .await;
    }
    let users = s.viewer.get_json(app, "/api/v1/admin/users?q=TARGET").await;
    let row = &users["users"][0];
    assert_eq!(row["email"], "target@example.com", "search ignores case");
    assert!(row["failed_logins"].as_i64().is_some_and(|n| n >= 1));
    let (status, _) = call(
        app,
        &s.operator,
        "POST",
        &format!("/api/v1/admin/users/{}/unlock", s.target),
        &json!(null),
    )
    .await;
    assert_eq!(status, 200);
    let users = s.viewer.get_json(app, "/api/v1/admin/users?q=target").await;
    assert_eq!(users["users"][0]["failed_logins"], 0);
    let caches = s.viewer.get_json(app, "/api/v1/admin/caches").await;
    assert!(caches["caches"].as_array().is_some_and(|c| c.len() == 4));
    let (status, _) = call(
        app,
        &s.operator,
        "POST",
        "/api/v1/admin/caches/nonsense/clear",
        &json!(null),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = call(
        app,
        &s.operator,
        "POST",
        "/api/v1/admin/caches/sessions/clear",
        &json!(null),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        s.viewer.me_status(app).await,
        200,
        "clearing the cache signs nobody out"
    );
}

#[tokio::test]
async fn a_read_only_token_of_an_operator_can_look_but_not_act() {
    let s = staffed().await;
    let app = &s.app;
    let created = s
        .operator
        .post(
            app,
            "/api/v1/me/tokens",
            json!({"name": "watch", "scopes": ["read"]}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let token = created.json::<Value>().await.expect("json")["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let client = reqwest::Client::new();
    let seen = client
        .get(app.url("/api/v1/admin/jobs"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent");
    assert_eq!(seen.status(), 200);
    let acted = client
        .post(app.url("/api/v1/admin/caches/sessions/clear"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent");
    assert_eq!(acted.status(), 403);
}
