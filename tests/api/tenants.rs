//! Workspaces, roles and invitations through HTTP — including that a member of one
//! workspace cannot read or change another by guessing ids.

use serde_json::{Value, json};

use crate::helpers::{Device, TestApp, spawn_app, wait_for_mail};

const PASSWORD: &str = "correct horse battery staple";

async fn tenants_of(person: &Device, app: &TestApp) -> Vec<Value> {
    let body = person.get_json(app, "/api/v1/tenants").await;
    body["tenants"].as_array().unwrap().clone()
}

#[tokio::test]
async fn workspaces_are_isolated_and_invitations_respect_roles() {
    let app = spawn_app().await;
    app.create_user("ada@example.com", PASSWORD, true).await; // owner of the default workspace
    app.create_user("eve@example.com", PASSWORD, true).await; // viewer of the default workspace
    app.create_user("bob@example.com", PASSWORD, true).await;
    let ada = Device::signed_in(&app, "ada@example.com", PASSWORD).await;
    let eve = Device::signed_in(&app, "eve@example.com", PASSWORD).await;
    let bob = Device::signed_in(&app, "bob@example.com", PASSWORD).await;

    // Bob creates his own workspace and owns it.
    let created = bob
        .post(
            &app,
            "/api/v1/tenants",
            json!({"name": "Bob's lab", "slug": "bobs-lab"}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let lab: Value = created.json().await.unwrap();
    let lab_id = lab["id"].as_i64().unwrap();
    let taken = ada
        .post(
            &app,
            "/api/v1/tenants",
            json!({"name": "Copy", "slug": "bobs-lab"}),
        )
        .await;
    assert_eq!(taken.status(), 409);
    let bad_slug = ada
        .post(
            &app,
            "/api/v1/tenants",
            json!({"name": "X", "slug": "Not A Slug"}),
        )
        .await;
    assert_eq!(bad_slug.status(), 400);

    let ada_tenants = tenants_of(&ada, &app).await;
    assert_eq!(ada_tenants.len(), 1, "{ada_tenants:?}");
    let default_id = ada_tenants[0]["id"].as_i64().unwrap();
    assert_eq!(ada_tenants[0]["role"], "owner");

    // Guessing Bob's workspace id gets the same answer as an id that does not exist.
    for id in [lab_id, 999_999] {
        let response = ada
            .post(
                &app,
                &format!("/api/v1/tenants/{id}/invitations"),
                json!({"email": "x@example.com", "role": "viewer"}),
            )
            .await;
        assert_eq!(response.status(), 404, "tenant {id}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["detail"], "No such workspace.");
    }

    // A viewer may not invite (everyone starts as a viewer of the default workspace).
    let by_viewer = eve
        .post(
            &app,
            &format!("/api/v1/tenants/{default_id}/invitations"),
            json!({"email": "x@example.com", "role": "viewer"}),
        )
        .await;
    assert_eq!(by_viewer.status(), 403);
    // An owner may; members already in are refused; roles are checked.
    let by_owner = bob
        .post(
            &app,
            &format!("/api/v1/tenants/{lab_id}/invitations"),
            json!({"email": "ada@example.com", "role": "admin"}),
        )
        .await;
    assert_eq!(by_owner.status(), 201);
    let member = bob
        .post(
            &app,
            &format!("/api/v1/tenants/{lab_id}/invitations"),
            json!({"email": "bob@example.com", "role": "admin"}),
        )
        .await;
    assert_eq!(member.status(), 409, "bob is already a member");
    let bad_role = bob
        .post(
            &app,
            &format!("/api/v1/tenants/{lab_id}/invitations"),
            json!({"email": "z@example.com", "role": "god"}),
        )
        .await;
    assert_eq!(bad_role.status(), 400);

    // Ada gets the mail and accepts; only Ada can.
    let mail = wait_for_mail(&app, "ada@example.com", "/invite?token=").await;
    assert!(
        mail.contains("invited you to join the workspace \"Bob's lab\" on Conclave as admin"),
        "{mail}"
    );
    let start = mail.find("/invite?token=").unwrap();
    let token: String = mail[start + 14..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let stolen = eve
        .post(&app, "/api/v1/invitations/accept", json!({"token": token}))
        .await;
    assert_eq!(stolen.status(), 403, "the invitation is for ada's address");
    let accepted = ada
        .post(&app, "/api/v1/invitations/accept", json!({"token": token}))
        .await;
    assert_eq!(accepted.status(), 200);
    let twice = ada
        .post(&app, "/api/v1/invitations/accept", json!({"token": token}))
        .await;
    assert_eq!(twice.status(), 410);
    let ada_tenants = tenants_of(&ada, &app).await;
    let roles: Vec<(&str, &str)> = ada_tenants
        .iter()
        .map(|t| (t["slug"].as_str().unwrap(), t["role"].as_str().unwrap()))
        .collect();
    assert_eq!(roles, vec![("default", "owner"), ("bobs-lab", "admin")]);

    // Eve, not a member of the lab, still cannot reach it.
    let outsider = eve
        .post(
            &app,
            &format!("/api/v1/tenants/{lab_id}/invitations"),
            json!({"email": "y@example.com", "role": "viewer"}),
        )
        .await;
    assert_eq!(outsider.status(), 404);
    // Ada is now an admin there: she may invite admins but not owners.
    let admin_owner = ada
        .post(
            &app,
            &format!("/api/v1/tenants/{lab_id}/invitations"),
            json!({"email": "y@example.com", "role": "owner"}),
        )
        .await;
    assert_eq!(admin_owner.status(), 403);
    let admin_admin = ada
        .post(
            &app,
            &format!("/api/v1/tenants/{lab_id}/invitations"),
            json!({"email": "y@example.com", "role": "admin"}),
        )
        .await;
    assert_eq!(admin_admin.status(), 201);
}
