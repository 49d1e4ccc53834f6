//! Privacy tiers and the workspace's conversation defaults: `private` rooms sealed with their
//! owner's password, `ephemeral` rooms that never reach the disk, the workspace's default tier
//! and retention, and a room owner's export of a whole room.

use diesel::prelude::*;
use serde_json::{Value, json};

use crate::helpers::{Device, TEAM_PASSWORD, Team, backend, link_in, team, wait_for_mail};
use crate::rooms::{
    contains, create_room, create_room_with, delete, get, patch, post, say, unlock_private,
};

const NEW_PASSWORD: &str = "a brand new passphrase";

async fn count_where(app: &crate::helpers::TestApp, sql: &'static str) -> i64 {
    use conclave::db::DbConnection;
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    app.state
        .db
        .run(move |conn| {
            let rows: Vec<Count> = match conn {
                DbConnection::Sqlite(c) => diesel::sql_query(sql).load(c),
                DbConnection::Postgresql(c) => diesel::sql_query(sql).load(c),
            }
            .map_err(conclave::db::DbError::from)?;
            Ok::<_, conclave::db::DbError>(rows.first().map_or(0, |c| c.n))
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn members_read_the_workspace_defaults_and_owners_set_them() {
    let Team {
        app,
        tenant,
        ada,
        carl,
        eve,
        ..
    } = team().await;
    let path = format!("/api/v1/tenants/{tenant}");
    let (status, workspace) = get(&eve, &app, &path).await;
    assert_eq!(status, 200, "{workspace}");
    assert_eq!(workspace["role"], "viewer");
    assert_eq!(workspace["default_privacy"], "standard");
    assert!(workspace["retention_days"].is_null());

    let (status, refused) = patch(&carl, &app, &path, json!({"retention_days": 30})).await;
    assert_eq!(status, 403, "admins do not set workspace policy: {refused}");
    for (body, field) in [
        (json!({"default_privacy": "secret"}), "default_privacy"),
        (json!({"retention_days": 0}), "retention_days"),
        (json!({"name": " "}), "name"),
    ] {
        let (status, problem) = patch(&ada, &app, &path, body).await;
        assert_eq!(status, 400, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(field),
            "{problem}"
        );
    }
    let (status, _) = patch(&ada, &app, &path, json!({"colour": "red"})).await;
    assert_eq!(status, 400, "unknown fields are refused");

    let (status, changed) = patch(
        &ada,
        &app,
        &path,
        json!({"name": "Acme", "default_privacy": "ephemeral", "retention_days": 30}),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        (
            changed["name"].as_str(),
            changed["default_privacy"].as_str(),
            changed["retention_days"].as_i64()
        ),
        (Some("Acme"), Some("ephemeral"), Some(30))
    );
    assert_eq!(
        count_where(
            &app,
            "SELECT COUNT(*) AS n FROM audit_events WHERE event = 'tenant.settings_changed'"
        )
        .await,
        1
    );

    // New rooms follow the default; times are RFC 3339.
    let room = create_room_with(
        &ada,
        &app,
        json!({"name": "standup", "visibility": "private"}),
    )
    .await;
    assert_eq!(room["privacy"], "ephemeral");
    let created = room["created_at"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(created).is_ok() && created.ends_with('Z'),
        "{created}"
    );

    // A private default applies to invite-only rooms; a public room is shared by definition.
    patch(&ada, &app, &path, json!({"default_privacy": "private"})).await;
    let public =
        create_room_with(&ada, &app, json!({"name": "lobby", "visibility": "public"})).await;
    assert_eq!(public["privacy"], "standard");
    let own = create_room_with(
        &ada,
        &app,
        json!({"name": "notes", "visibility": "private"}),
    )
    .await;
    assert_eq!(own["privacy"], "private");

    let (_, cleared) = patch(&ada, &app, &path, json!({"retention_days": null})).await;
    assert!(cleared["retention_days"].is_null(), "{cleared}");

    // The page: a form for owners, the facts for everyone else.
    let workspace_page = format!("/workspaces/{tenant}");
    let owner_page = ada.page(&app, &workspace_page).await;
    assert!(owner_page.contains("Privacy of new rooms"), "{owner_page}");
    assert!(owner_page.contains(r#"action="/workspaces/"#));
    let viewer_page = eve.page(&app, &workspace_page).await;
    assert!(!viewer_page.contains("/settings\""), "no form for viewers");
    assert!(viewer_page.contains("Messages kept"));
    let form = |retention: &'static str| {
        let request = ada
            .client
            .post(app.url(&format!("/workspaces/{tenant}/settings")))
            .form(&[
                ("csrf_token", ada.csrf(&app).as_str()),
                ("name", "Acme Corp"),
                ("default_privacy", "standard"),
                ("retention_days", retention),
            ]);
        async move { request.send().await.unwrap() }
    };
    let saved = form("90").await;
    assert_eq!(saved.status(), 303);
    assert!(
        saved.headers()["location"]
            .to_str()
            .unwrap()
            .ends_with("notice=settings_saved")
    );
    let (_, now) = get(&eve, &app, &path).await;
    assert_eq!(
        (now["name"].as_str(), now["retention_days"].as_i64()),
        (Some("Acme Corp"), Some(90))
    );
    let bad = form("soon").await;
    assert!(
        bad.headers()["location"]
            .to_str()
            .unwrap()
            .contains("error=retention_days"),
        "{:?}",
        bad.headers()
    );
}

#[tokio::test]
async fn a_room_owner_downloads_the_whole_room() {
    let Team {
        app,
        ada,
        carl,
        eve,
        ..
    } = team().await;
    let room = create_room(&ada, &app, "general", "public").await;
    let (status, _) = post(
        &carl,
        &app,
        &format!("/api/v1/rooms/{room}/members"),
        json!({}),
    )
    .await;
    assert_eq!(status, 201);
    say(&ada, &app, room, "first, from Ada").await;
    let carls = say(&carl, &app, room, "second, from Carl").await;
    say(&carl, &app, room, "third, from Carl").await;
    let (status, _) = delete(
        &carl,
        &app,
        &format!("/api/v1/rooms/{room}/messages/{}", carls["id"]),
    )
    .await;
    assert_eq!(status, 204);

    let response = ada
        .client
        .get(app.url(&format!("/api/v1/rooms/{room}/export")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    let export: Value = response.json().await.unwrap();
    let messages = export["messages"].as_array().unwrap();
    let bodies: Vec<Option<&str>> = messages.iter().map(|m| m["body"].as_str()).collect();
    assert_eq!(
        bodies,
        [Some("first, from Ada"), None, Some("third, from Carl")],
        "everyone's messages, oldest first, the deleted one as a tombstone"
    );
    assert_eq!(messages[1]["deleted"], true);
    assert_eq!(export["room"]["name"], "general");
    assert_eq!(export["members"].as_array().unwrap().len(), 2);

    let (status, refused) = get(&carl, &app, &format!("/api/v1/rooms/{room}/export")).await;
    assert_eq!(status, 403, "members are not owners: {refused}");
    let (status, _) = get(&eve, &app, &format!("/api/v1/rooms/{room}/export")).await;
    assert_eq!(status, 403, "reading a public room is not owning it");
    let hidden = create_room(&ada, &app, "board", "private").await;
    let (status, _) = get(&eve, &app, &format!("/api/v1/rooms/{hidden}/export")).await;
    assert_eq!(status, 404, "a room one cannot read does not exist");
    assert_eq!(
        count_where(
            &app,
            "SELECT COUNT(*) AS n FROM audit_events WHERE event = 'room.exported'"
        )
        .await,
        1
    );

    // The room page offers the download to owners only, and the link works.
    let room_page = format!("/rooms/{room}");
    assert!(
        ada.page(&app, &room_page)
            .await
            .contains("Download history")
    );
    assert!(
        !carl
            .page(&app, &room_page)
            .await
            .contains("Download history")
    );
    let download = ada
        .client
        .get(app.url(&format!("/rooms/{room}/export")))
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), 200);
    let export: Value = download.json().await.unwrap();
    assert_eq!(export["messages"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn ephemeral_rooms_never_reach_the_disk_and_end_with_the_process() {
    let Team { app, ada, .. } = team().await;
    let room = create_room_with(
        &ada,
        &app,
        json!({"name": "huddle", "visibility": "private", "privacy": "ephemeral"}),
    )
    .await;
    let room = room["id"].as_i64().unwrap();
    let phrase = "walrus bicycle harmonica";
    let messages = format!("/api/v1/rooms/{room}/messages");
    let retry = json!({"body": format!("Say {phrase}"), "idempotency_key": "k-1"});
    let (first, stored) = post(&ada, &app, &messages, retry.clone()).await;
    let (again, same) = post(&ada, &app, &messages, retry).await;
    assert_eq!((first, again), (201, 200));
    assert_eq!(stored["id"], same["id"], "a retry is not a copy");
    let reply = say(&ada, &app, room, "and a reply").await;
    let (status, edited) = patch(
        &ada,
        &app,
        &format!("{messages}/{}", reply["id"]),
        json!({"body": "an edited reply"}),
    )
    .await;
    assert_eq!((status, edited["edited"].as_bool()), (200, Some(true)));
    let (_, page) = get(&ada, &app, &messages).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 2);

    // Searchable within the room; a search across rooms covers the stored history.
    let (_, inside) = get(&ada, &app, &format!("/api/v1/search?q=walrus&room={room}")).await;
    assert_eq!(inside["results"].as_array().unwrap().len(), 1, "{inside}");
    assert!(
        inside["results"][0]["snippet_html"]
            .as_str()
            .unwrap()
            .contains("<mark>walrus</mark>")
    );
    let (_, across) = get(&ada, &app, "/api/v1/search?q=walrus").await;
    assert_eq!(across["results"].as_array().unwrap().len(), 0);
    let export = ada.get_json(&app, "/api/v1/me/export").await;
    assert_eq!(export["messages"].as_array().unwrap().len(), 2);

    // Nothing in the database, not even sealed.
    assert_eq!(
        count_where(&app, "SELECT COUNT(*) AS n FROM messages").await,
        0,
        "no message rows"
    );
    assert_eq!(
        count_where(&app, "SELECT COUNT(*) AS n FROM conversation_keys").await,
        0
    );
    if matches!(backend(), crate::helpers::TestBackend::Sqlite) {
        let url =
            secrecy::ExposeSecret::expose_secret(app.state.settings.database.url.as_ref().unwrap())
                .to_owned();
        let path = url.strip_prefix("sqlite://").unwrap().to_owned();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend(std::fs::read(format!("{path}-wal")).unwrap_or_default());
        assert!(!contains(&bytes, b"walrus"), "walrus found on disk");
    }

    // A restart (a new process on the same database) starts empty; the room stays.
    let restarted = conclave::startup::Application::build((*app.state.settings).clone())
        .await
        .unwrap();
    let address = format!("http://127.0.0.1:{}", restarted.port());
    tokio::spawn(restarted.run_until(std::future::pending()));
    let after: Value = ada
        .client
        .get(format!("{address}{messages}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(after["messages"], json!([]), "{after}");
    let (status, _) = get(&ada, &app, &format!("/api/v1/rooms/{room}")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn private_rooms_open_only_with_their_owners_password() {
    let Team {
        app,
        ada,
        carl,
        ids: [ada_id, carl_id, _],
        ..
    } = team().await;
    let status = ada.get_json(&app, "/api/v1/me/private").await;
    assert_eq!(
        (status["set_up"].as_bool(), status["unlocked"].as_bool()),
        (Some(false), Some(false))
    );
    let (refused, problem) = post(
        &ada,
        &app,
        "/api/v1/rooms",
        json!({"name": "diary", "visibility": "public", "privacy": "private"}),
    )
    .await;
    assert_eq!(refused, 400, "{problem}");
    let room = create_room_with(
        &ada,
        &app,
        json!({"name": "diary", "visibility": "private", "privacy": "private"}),
    )
    .await;
    let room = room["id"].as_i64().unwrap();
    let messages = format!("/api/v1/rooms/{room}/messages");

    let (status, locked) = post(&ada, &app, &messages, json!({"body": "hello"})).await;
    assert_eq!(
        (status, locked["error"].as_str()),
        (423, Some("private_locked"))
    );
    assert_eq!(unlock_private(&ada, &app, "not my password").await, 400);
    assert_eq!(unlock_private(&ada, &app, TEAM_PASSWORD).await, 204);
    let status = ada.get_json(&app, "/api/v1/me/private").await;
    assert_eq!(
        (status["set_up"].as_bool(), status["unlocked"].as_bool()),
        (Some(true), Some(true))
    );
    say(&ada, &app, room, "the lighthouse pelican").await;
    let (_, page) = get(&ada, &app, &messages).await;
    assert_eq!(page["messages"][0]["body"], "the lighthouse pelican");
    let (_, found) = get(&ada, &app, "/api/v1/search?q=pelican").await;
    assert_eq!(found["results"].as_array().unwrap().len(), 1, "{found}");

    // The room key is wrapped by Ada's key, not the server's; rotation leaves it alone.
    assert_eq!(
        count_where(
            &app,
            "SELECT COUNT(*) AS n FROM conversation_keys WHERE kek_id LIKE 'user:%'"
        )
        .await,
        1
    );
    let store = conclave::startup::history_store(
        &app.state.settings,
        &app.state.master_key,
        app.state.db.clone(),
        app.state.chat.personal_keys().clone(),
    )
    .unwrap();
    let report = store.rotate_keys().await.unwrap();
    assert_eq!((report.rewrapped, report.current), (0, 0));

    // Nobody else gets in: not a workspace admin, not by invitation.
    let (status, _) = get(&carl, &app, &messages).await;
    assert_eq!(status, 404);
    let (status, problem) = post(
        &ada,
        &app,
        &format!("/api/v1/rooms/{room}/members"),
        json!({"user_id": carl_id}),
    )
    .await;
    assert_eq!(status, 403, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("personal"));

    // Locked: unreadable, left out of search and export, named in the export.
    assert_eq!(
        post(&ada, &app, "/api/v1/me/private/lock", json!({}))
            .await
            .0,
        204
    );
    let (status, _) = get(&ada, &app, &messages).await;
    assert_eq!(status, 423);
    let (status, found) = get(&ada, &app, "/api/v1/search?q=pelican").await;
    assert_eq!(
        (status, found["results"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let (status, _) = get(&ada, &app, &format!("/api/v1/search?q=pelican&room={room}")).await;
    assert_eq!(status, 423);
    let export = ada.get_json(&app, "/api/v1/me/export").await;
    assert_eq!(export["locked_rooms"], json!([room]));
    assert_eq!(export["messages"], json!([]));

    // The page shows the unlock form; the form unlocks and comes back.
    let html = ada.page(&app, &format!("/rooms/{room}")).await;
    assert!(html.contains("This private room is locked"), "{html}");
    assert!(!html.contains("pelican"));
    let unlocked = ada
        .client
        .post(app.url("/private/unlock"))
        .form(&[
            ("csrf_token", ada.csrf(&app).as_str()),
            ("password", TEAM_PASSWORD),
            ("next", &format!("/rooms/{room}")),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(unlocked.status(), 303);
    assert_eq!(
        unlocked.headers()["location"],
        format!("/rooms/{room}?notice=unlocked").as_str()
    );
    let (status, _) = get(&ada, &app, &messages).await;
    assert_eq!(status, 200);

    // A password change keeps the history: the key follows the password.
    let (status, problem) = post(
        &ada,
        &app,
        "/api/v1/me/password",
        json!({"current_password": TEAM_PASSWORD, "new_password": NEW_PASSWORD}),
    )
    .await;
    assert!(status == 200 || status == 204, "{status} {problem}");
    // (In process: password checks over HTTP are limited to five a minute per account.)
    let keys = app.state.chat.personal_keys();
    keys.lock(ada_id);
    assert!(matches!(
        keys.unlock(ada_id, TEAM_PASSWORD.to_owned().into()).await,
        Err(conclave::auth::personal_keys::PersonalKeyError::WrongPassword)
    ));
    keys.unlock(ada_id, NEW_PASSWORD.to_owned().into())
        .await
        .unwrap();
    let (_, page) = get(&ada, &app, &messages).await;
    assert_eq!(page["messages"][0]["body"], "the lighthouse pelican");

    // Signing out locks.
    let (status, _) = post(&ada, &app, "/api/v1/auth/logout", json!({})).await;
    assert_eq!(status, 204);
    let ada = Device::signed_in(&app, "ada@example.com", NEW_PASSWORD).await;
    ada.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(
        ada.get_json(&app, "/api/v1/me/private").await["unlocked"],
        false
    );

    // A reset by mail cannot carry the key: the page warns, and the history goes.
    let stranger = Device::new(None);
    stranger
        .client
        .post(app.url("/api/v1/auth/password/forgot"))
        .json(&json!({"email": "ada@example.com"}))
        .send()
        .await
        .unwrap();
    let mail = wait_for_mail(&app, "ada@example.com", "/reset?token=").await;
    let link = link_in(&mail);
    let token = link.split("token=").nth(1).unwrap();
    let warning = stranger
        .page(&app, link.strip_prefix(&app.address).unwrap())
        .await;
    assert!(
        warning.contains("Your private conversations will be erased"),
        "{warning}"
    );
    let reset = stranger
        .client
        .post(app.url("/api/v1/auth/password/reset"))
        .json(&json!({"token": token, "password": "third time lucky"}))
        .send()
        .await
        .unwrap();
    assert!(reset.status().is_success(), "{}", reset.status());
    assert_eq!(
        count_where(&app, "SELECT COUNT(*) AS n FROM messages").await,
        0,
        "the sealed messages are erased, not left unreadable"
    );
    assert_eq!(
        count_where(&app, "SELECT COUNT(*) AS n FROM personal_keys").await,
        0
    );
    let ada = Device::signed_in(&app, "ada@example.com", "third time lucky").await;
    ada.client.get(app.url("/healthz")).send().await.unwrap();
    let status = unlock_private(&ada, &app, "third time lucky").await;
    assert_eq!(status, 204, "a new key is made");
    let (status, page) = get(&ada, &app, &messages).await;
    assert_eq!((status, page["messages"].clone()), (200, json!([])));
    say(&ada, &app, room, "a fresh start").await;
}

#[tokio::test]
async fn deleting_an_account_erases_private_rooms_and_anonymises_the_rest() {
    let Team {
        app,
        ada,
        carl,
        eve,
        ..
    } = team().await;
    let ops = create_room(&carl, &app, "ops", "public").await;
    post(
        &ada,
        &app,
        &format!("/api/v1/rooms/{ops}/members"),
        json!({}),
    )
    .await;
    say(&carl, &app, ops, "the pager rota is on the wiki").await;
    say(&ada, &app, ops, "thanks Carl").await;
    let fleeting = create_room_with(
        &carl,
        &app,
        json!({"name": "standup", "visibility": "public", "privacy": "ephemeral"}),
    )
    .await;
    let fleeting = fleeting["id"].as_i64().unwrap();
    say(&carl, &app, fleeting, "back in five").await;
    assert_eq!(unlock_private(&carl, &app, TEAM_PASSWORD).await, 204);
    let diary = create_room_with(
        &carl,
        &app,
        json!({"name": "diary", "visibility": "private", "privacy": "private"}),
    )
    .await;
    let diary = diary["id"].as_i64().unwrap();
    say(&carl, &app, diary, "dear diary").await;

    let (status, _) = send_delete(&carl, &app, "wrong password").await;
    assert_eq!(status, 400);
    let (status, problem) = send_delete(&ada, &app, TEAM_PASSWORD).await;
    assert_eq!(
        status, 409,
        "the only owner of a shared workspace: {problem}"
    );
    assert!(problem["detail"].as_str().unwrap().contains("only owner"));

    let (status, erasure) = send_delete(&carl, &app, TEAM_PASSWORD).await;
    assert_eq!(status, 200, "{erasure}");
    assert_eq!(erasure["private_rooms_deleted"], 1);
    assert_eq!(erasure["messages_anonymised"], 1, "{erasure}");
    assert_eq!(
        erasure["rooms_handed_over"], 1,
        "ops (nobody else is in standup): {erasure}"
    );
    assert_eq!(carl.me_status(&app).await, 401, "signed out everywhere");
    let again = Device::new(None)
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"email": "carl@example.com", "password": TEAM_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 401);

    // The others keep the conversation, without its author.
    let (_, page) = get(&ada, &app, &format!("/api/v1/rooms/{ops}/messages")).await;
    let first = &page["messages"][0];
    assert_eq!(first["body"], "the pager rota is on the wiki");
    assert_eq!(first["sender"]["name"], "Deleted user");
    assert!(first["sender"]["id"].is_null());
    let (_, room) = get(&ada, &app, &format!("/api/v1/rooms/{ops}")).await;
    assert_eq!(room["my_role"], "owner", "the room passed to Ada");
    let (_, page) = get(&ada, &app, &format!("/api/v1/rooms/{fleeting}/messages")).await;
    assert_eq!(
        page["messages"][0]["sender"]["name"], "Deleted user",
        "{page}"
    );
    let (status, _) = get(&ada, &app, &format!("/api/v1/rooms/{diary}")).await;
    assert_eq!(status, 404);
    for (sql, expected) in [
        (
            "SELECT COUNT(*) AS n FROM users WHERE email = 'carl@example.com'",
            0,
        ),
        ("SELECT COUNT(*) AS n FROM personal_keys", 0),
        (
            "SELECT COUNT(*) AS n FROM messages WHERE sender_id IS NULL",
            1,
        ),
        ("SELECT COUNT(*) AS n FROM messages", 2),
        (
            "SELECT COUNT(*) AS n FROM audit_events WHERE event = 'account.deleted' AND actor_user_id IS NULL",
            1,
        ),
    ] {
        assert_eq!(count_where(&app, sql).await, expected, "{sql}");
    }

    // The form asks for a tick first.
    let form = |confirm: Option<&'static str>| {
        let mut fields = vec![
            ("csrf_token", eve.csrf(&app)),
            ("password", TEAM_PASSWORD.to_owned()),
        ];
        if let Some(confirm) = confirm {
            fields.push(("confirm", confirm.to_owned()));
        }
        let request = eve
            .client
            .post(app.url("/settings/account/delete"))
            .form(&fields);
        async move { request.send().await.unwrap() }
    };
    let unticked = form(None).await;
    assert!(
        unticked.headers()["location"]
            .to_str()
            .unwrap()
            .contains("error=confirm"),
        "{:?}",
        unticked.headers()
    );
    let deleted = form(Some("yes")).await;
    assert_eq!(
        deleted.headers()["location"],
        "/login?notice=account_deleted"
    );
    assert_eq!(eve.me_status(&app).await, 401);
}

async fn send_delete(
    person: &Device,
    app: &crate::helpers::TestApp,
    password: &str,
) -> (u16, Value) {
    crate::rooms::send(
        person,
        app,
        reqwest::Method::DELETE,
        "/api/v1/me",
        Some(json!({ "password": password })),
    )
    .await
}

#[tokio::test]
async fn an_unused_unlocked_key_leaves_memory_after_the_idle_time() {
    use conclave::auth::personal_keys::PersonalKeys;
    let Team {
        app,
        ids: [ada_id, ..],
        ..
    } = team().await;
    // The setting is in minutes; the same service with a short idle time.
    let keys = PersonalKeys::new(
        app.state.db.clone(),
        app.state.hasher.clone(),
        std::time::Duration::from_secs(1),
    );
    assert!(
        keys.unlock(ada_id, TEAM_PASSWORD.to_owned().into())
            .await
            .unwrap(),
        "made on first use"
    );
    for _ in 0..4 {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(keys.key(ada_id).is_some(), "use keeps it open");
    }
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(!keys.is_unlocked(ada_id), "idle: locked");
    assert!(
        !keys
            .unlock(ada_id, TEAM_PASSWORD.to_owned().into())
            .await
            .unwrap(),
        "unlocking again opens the same key"
    );
}
