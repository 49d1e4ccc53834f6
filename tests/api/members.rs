//! Workspace members: listing, role changes, removal, invitations — the API answers 403 for
//! what a role may not do, and the pages do not offer it.

use serde_json::{Value, json};

use crate::helpers::{Device, Team, TestApp, team};

use crate::helpers::TEAM_PASSWORD as PASSWORD;

async fn send(
    person: &Device,
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = person
        .client
        .request(method, app.url(path))
        .header("X-CSRF-Token", person.csrf(app));
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

async fn set_role(person: &Device, app: &TestApp, member: &str, role: &str) -> reqwest::Response {
    send(
        person,
        app,
        reqwest::Method::PATCH,
        member,
        Some(json!({ "role": role })),
    )
    .await
}

#[tokio::test]
async fn roles_decide_who_may_change_whom_and_a_workspace_keeps_an_owner() {
    let Team {
        app,
        tenant,
        ada,
        carl,
        eve,
        ids: [ada_id, carl_id, eve_id],
    } = team().await;
    let member = |id: i64| format!("/api/v1/tenants/{tenant}/members/{id}");

    let listed = eve
        .get_json(&app, &format!("/api/v1/tenants/{tenant}/members"))
        .await;
    assert_eq!(listed["your_role"], "viewer");
    assert_eq!(listed["members"].as_array().unwrap().len(), 3);
    assert!(
        listed.get("invitations").is_none(),
        "viewers do not see invitations"
    );

    // A viewer changes nobody.
    for (method, body) in [
        (reqwest::Method::PATCH, Some(json!({"role": "owner"}))),
        (reqwest::Method::DELETE, None),
    ] {
        let refused = send(&eve, &app, method, &member(carl_id), body).await;
        assert_eq!(refused.status(), 403);
    }
    // An admin cannot touch the owner, nor make anyone owner.
    let on_owner = set_role(&carl, &app, &member(ada_id), "viewer").await;
    assert_eq!(on_owner.status(), 403);
    let to_owner = set_role(&carl, &app, &member(eve_id), "owner").await;
    assert_eq!(to_owner.status(), 403);
    let bad_role = set_role(&carl, &app, &member(eve_id), "god").await;
    assert_eq!(bad_role.status(), 400);
    let promoted = set_role(&carl, &app, &member(eve_id), "operator").await;
    assert_eq!(promoted.status(), 200);

    // The only owner can neither step down nor leave.
    let step_down = set_role(&ada, &app, &member(ada_id), "admin").await;
    assert_eq!(step_down.status(), 409);
    let leave = send(&ada, &app, reqwest::Method::DELETE, &member(ada_id), None).await;
    assert_eq!(leave.status(), 409);
    // With a second owner she can.
    let second = set_role(&ada, &app, &member(carl_id), "owner").await;
    assert_eq!(second.status(), 200);
    let step_down = set_role(&ada, &app, &member(ada_id), "admin").await;
    assert_eq!(step_down.status(), 200);

    // Anyone may leave; then the workspace is gone for them.
    let left = send(&eve, &app, reqwest::Method::DELETE, &member(eve_id), None).await;
    assert_eq!(left.status(), 204);
    let after = eve
        .client
        .get(app.url(&format!("/api/v1/tenants/{tenant}/members")))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 404);
    let gone = send(&carl, &app, reqwest::Method::DELETE, &member(eve_id), None).await;
    assert_eq!(gone.status(), 404, "no longer a member");

    let changes = app
        .state
        .db
        .run(|conn| {
            use diesel::prelude::*;
            conclave::schema::audit_events::table
                .filter(
                    conclave::schema::audit_events::event
                        .eq_any(["membership.role_changed", "membership.removed"]),
                )
                .count()
                .get_result::<i64>(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap();
    assert_eq!(
        changes, 5,
        "4 role changes (one in setup) and 1 departure are audited"
    );
}

#[tokio::test]
async fn invitations_are_listed_and_withdrawn_by_those_who_manage_members() {
    let Team {
        app,
        tenant,
        carl,
        eve,
        ..
    } = team().await;
    let invited = send(
        &carl,
        &app,
        reqwest::Method::POST,
        &format!("/api/v1/tenants/{tenant}/invitations"),
        Some(json!({"email": "new@example.com", "role": "operator"})),
    )
    .await;
    assert_eq!(invited.status(), 201);
    let id = invited.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let listed = carl
        .get_json(&app, &format!("/api/v1/tenants/{tenant}/members"))
        .await;
    assert_eq!(listed["invitations"][0]["email"], "new@example.com");

    let path = format!("/api/v1/tenants/{tenant}/invitations/{id}");
    assert_eq!(
        send(&eve, &app, reqwest::Method::DELETE, &path, None)
            .await
            .status(),
        403
    );
    assert_eq!(
        send(&carl, &app, reqwest::Method::DELETE, &path, None)
            .await
            .status(),
        204
    );
    assert_eq!(
        send(&carl, &app, reqwest::Method::DELETE, &path, None)
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn another_workspace_cannot_be_read_or_changed_by_guessing_ids() {
    let Team {
        app,
        tenant,
        ids: [ada_id, ..],
        ..
    } = team().await;
    app.create_user("mallory@example.com", PASSWORD, true).await;
    let mallory = Device::signed_in(&app, "mallory@example.com", PASSWORD).await;
    mallory
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .unwrap();
    // Mallory is a viewer of the default workspace too: make her own workspace and leave.
    let own = mallory
        .post(
            &app,
            "/api/v1/tenants",
            json!({"name": "M", "slug": "mallory"}),
        )
        .await;
    assert_eq!(own.status(), 201);
    let mallory_id = mallory.get_json(&app, "/api/v1/me").await["id"]
        .as_i64()
        .unwrap();
    let left = send(
        &mallory,
        &app,
        reqwest::Method::DELETE,
        &format!("/api/v1/tenants/{tenant}/members/{mallory_id}"),
        None,
    )
    .await;
    assert_eq!(left.status(), 204);
    for (method, path, body) in [
        (
            reqwest::Method::GET,
            format!("/api/v1/tenants/{tenant}/members"),
            None,
        ),
        (
            reqwest::Method::PATCH,
            format!("/api/v1/tenants/{tenant}/members/{ada_id}"),
            Some(json!({"role": "viewer"})),
        ),
        (
            reqwest::Method::DELETE,
            format!("/api/v1/tenants/{tenant}/members/{ada_id}"),
            None,
        ),
        (
            reqwest::Method::DELETE,
            format!("/api/v1/tenants/{tenant}/invitations/1"),
            None,
        ),
        (reqwest::Method::GET, format!("/workspaces/{tenant}"), None),
    ] {
        let response = send(&mallory, &app, method.clone(), &path, body).await;
        assert_eq!(response.status(), 404, "{method} {path}");
    }
}

#[tokio::test]
async fn the_workspace_page_offers_only_what_the_role_allows() {
    let Team {
        app,
        tenant,
        ada,
        carl,
        eve,
        ids: [_, _, eve_id],
    } = team().await;
    let path = format!("/workspaces/{tenant}");

    let viewer = eve.page(&app, &path).await;
    assert!(viewer.contains("eve@example.com") && viewer.contains("ada@example.com"));
    assert!(!viewer.contains("Invite someone"), "viewers cannot invite");
    assert!(!viewer.contains("Change role"), "viewers change no roles");
    assert_eq!(viewer.matches(">Remove<").count(), 0);
    assert_eq!(viewer.matches(">Leave<").count(), 1, "only leaving");

    let admin = carl.page(&app, &path).await;
    assert!(admin.contains("Invite someone"));
    assert!(
        !admin.contains(r#"<option value="owner""#),
        "admins cannot grant owner"
    );
    assert_eq!(
        admin.matches("Change role").count(),
        2,
        "Carl may change himself and Eve, not the owner"
    );

    let owner = ada.page(&app, &path).await;
    assert!(owner.contains(r#"<option value="owner""#));
    assert_eq!(owner.matches("Change role").count(), 3);

    // The forms work and report back on the page.
    let csrf = carl.csrf(&app);
    let changed = carl
        .client
        .post(app.url(&format!("/workspaces/{tenant}/members/{eve_id}/role")))
        .form(&[("csrf_token", csrf.as_str()), ("role", "operator")])
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 303);
    let location = changed.headers()["location"].to_str().unwrap().to_owned();
    assert!(carl.page(&app, &location).await.contains("Role changed."));

    let refused = eve
        .client
        .post(app.url(&format!("/workspaces/{tenant}/invite")))
        .form(&[
            ("csrf_token", eve.csrf(&app).as_str()),
            ("email", "x@example.com"),
            ("role", "viewer"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 303);
    let location = refused.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        eve.page(&app, &location)
            .await
            .contains("cannot invite people"),
        "a forged form post is refused with the reason"
    );
}
