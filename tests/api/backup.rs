//! Backups through the command line and the admin area, on SQLite and PostgreSQL: taken while
//! messages are being written, verified by restoring into a throwaway database, restored into
//! a new database that a new node then serves with every message readable; damaged or foreign
//! files refused; keys never inside; the scheduled job, retention and the last-success metric.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{Device, TEAM_PASSWORD, TestBackend, TestDatabase, backend, team};
use crate::rooms::{create_room, get, say};

fn run(mut command: std::process::Command) -> std::process::Output {
    command.output().expect("conclave runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The archive's bytes after gunzip (a tar stream).
fn unpacked(path: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).expect("open"))
        .read_to_end(&mut bytes)
        .expect("gunzip");
    bytes
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn a_backup_taken_under_write_load_restores_every_acknowledged_message() {
    let team = team().await;
    let room = create_room(&team.ada, &team.app, "ledger", "public").await;
    let mut first = None;
    for i in 0..20 {
        let said = say(
            &team.ada,
            &team.app,
            room,
            &format!("before the backup {i}"),
        )
        .await;
        first.get_or_insert(said["id"].as_i64().expect("id"));
    }
    let first = first.expect("twenty messages");
    // A writer keeps posting while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written) = (stop.clone(), written.clone());
        let ada = Device::signed_in(&team.app, "ada@example.com", TEAM_PASSWORD).await;
        let app_address = team.app.address.clone();
        let csrf = ada.csrf(&team.app);
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let response = ada
                    .client
                    .post(format!("{app_address}/api/v1/rooms/{room}/messages"))
                    .header("X-CSRF-Token", &csrf)
                    .json(&serde_json::json!({ "body": format!("during the backup {n}") }))
                    .send()
                    .await
                    .expect("sent");
                assert_eq!(response.status(), 201);
                n += 1;
                written.store(n, Ordering::Relaxed);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out_dir = tempfile::tempdir().expect("dir");
    let mut create = team.app.command();
    create
        .args(["backup", "create", "--out"])
        .arg(out_dir.path());
    let created = tokio::task::spawn_blocking(move || run(create))
        .await
        .expect("joined");
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("the writer never failed");
    assert!(created.status.success(), "{created:?}");
    assert!(
        written.load(Ordering::Relaxed) > 0,
        "writes ran during the backup"
    );
    let file = PathBuf::from(
        text(&created.stdout)
            .lines()
            .next()
            .expect("the path")
            .trim(),
    );
    assert!(
        file.starts_with(out_dir.path()) && file.exists(),
        "{file:?}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).expect("file").permissions().mode();
        assert_eq!(mode & 0o077, 0, "a backup is readable by its owner only");
    }
    let manifest = conclave::backup::read_manifest(&file).expect("a manifest");
    assert_eq!(manifest.version, env!("CARGO_PKG_VERSION"));
    assert!(!manifest.schema_version.is_empty());
    let in_backup = manifest.tables["messages"];
    assert!(in_backup >= 20, "{manifest:?}");

    let mut verify = team.app.command();
    verify.args(["backup", "verify"]).arg(&file);
    let verified = run(verify);
    assert!(verified.status.success(), "{verified:?}");
    assert!(text(&verified.stdout).starts_with("OK "), "{verified:?}");

    // Restore into a new database and serve it with the same keys.
    let fresh = TestDatabase::new();
    let mut restore = team.app.command();
    restore
        .env("CONCLAVE__DATABASE__URL", &fresh.url)
        .args(["backup", "restore"])
        .arg(&file);
    let restored = run(restore);
    assert!(restored.status.success(), "{restored:?}");
    let (node, stop_node, _running) = team.app.node_on(fresh).await;
    let ada = Device::signed_in(&node, "ada@example.com", TEAM_PASSWORD).await;
    let (status, page) = get(
        &ada,
        &node,
        &format!("/api/v1/rooms/{room}/messages?after={}&limit=20", first - 1),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let bodies: Vec<String> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["body"].as_str().unwrap_or_default().to_owned())
        .collect();
    for i in 0..20 {
        let wanted = format!("before the backup {i}");
        assert!(
            bodies.iter().any(|b| b.contains(&wanted)),
            "{wanted} is readable: {bodies:?}"
        );
    }
    let restored_count = node
        .state
        .db
        .run(|conn| {
            use diesel::prelude::*;
            conclave::schema::messages::table
                .count()
                .get_result::<i64>(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .expect("count");
    assert_eq!(
        restored_count, in_backup,
        "exactly what the manifest counted"
    );
    let _ = stop_node.send(());
}

#[tokio::test]
async fn damaged_or_foreign_files_are_refused_and_restore_needs_force() {
    let team = team().await;
    let out_dir = tempfile::tempdir().expect("dir");
    let mut create = team.app.command();
    create
        .args(["backup", "create", "--out"])
        .arg(out_dir.path());
    let created = run(create);
    assert!(created.status.success(), "{created:?}");
    let file = PathBuf::from(text(&created.stdout).lines().next().expect("path").trim());

    // A flipped byte inside the compressed stream.
    let mut bytes = std::fs::read(&file).expect("read");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    let damaged = out_dir.path().join("conclave-damaged.tar.gz");
    std::fs::write(&damaged, &bytes).expect("write");
    let mut verify = team.app.command();
    verify.args(["backup", "verify"]).arg(&damaged);
    let refused = run(verify);
    assert_eq!(refused.status.code(), Some(65), "{refused:?}");
    assert!(!text(&refused.stderr).is_empty());

    let foreign = out_dir.path().join("notes.tar.gz");
    std::fs::write(&foreign, b"these are not the droids").expect("write");
    let mut verify = team.app.command();
    verify.args(["backup", "verify"]).arg(&foreign);
    let refused = run(verify);
    assert_eq!(refused.status.code(), Some(65));
    assert!(
        text(&refused.stderr).contains("not a readable Conclave backup"),
        "{refused:?}"
    );

    // The live database exists: restoring over it needs --force (and Conclave stopped).
    let mut restore = team.app.command();
    restore.args(["backup", "restore"]).arg(&file);
    let refused = run(restore);
    assert_eq!(refused.status.code(), Some(65));
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("--force"), "{stderr}");

    // Keys are never inside: not the generated key file, not the key it holds.
    let tar = unpacked(&file);
    for entry in std::fs::read_dir(team.app.data_dir.path()).expect("data dir") {
        let path = entry.expect("entry").path();
        if !path.is_file()
            || path
                .extension()
                .is_some_and(|e| e == "db" || e == "db-wal" || e == "db-shm")
        {
            continue;
        }
        let Ok(content) = std::fs::read_to_string(&path) else {
            continue;
        };
        let content = content.trim();
        assert!(
            !contains(&tar, content.as_bytes()),
            "{} is in the backup",
            path.display()
        );
        if let Ok(key) = conclave::crypto::decode_key(content) {
            assert!(
                !contains(&tar, &key),
                "the key in {} is in the backup",
                path.display()
            );
        }
    }
    // A listing reads only manifests: a cut-off file shows as unreadable.
    std::fs::write(out_dir.path().join("conclave-cut.tar.gz"), &bytes[..20]).expect("write");
    let listed = {
        let mut list = team.app.command();
        list.args(["backup", "list", "--dir"]).arg(out_dir.path());
        run(list)
    };
    let listing = text(&listed.stdout);
    assert!(
        listing.contains(file.file_name().and_then(|n| n.to_str()).expect("name")),
        "{listing}"
    );
    assert!(
        listing.contains("conclave-cut.tar.gz  unreadable"),
        "the cut-off copy is flagged: {listing}"
    );
}

#[tokio::test]
async fn scheduled_backups_are_listed_in_admin_and_exported_as_a_metric() {
    let team = team().await;
    let (status, before) = get(&team.ada, &team.app, "/api/v1/admin/backups").await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(before["backups"].as_array().map(Vec::len), Some(0));
    assert!(before["last_success"].is_null());
    // Eve is no staff member.
    let (status, _) = get(&team.eve, &team.app, "/api/v1/admin/backups").await;
    assert_eq!(status, 403);

    let (status, queued) = crate::rooms::post(
        &team.ada,
        &team.app,
        "/api/v1/admin/backups",
        serde_json::json!({}),
    )
    .await;
    assert_eq!(status, 200, "{queued}");
    let listed = crate::helpers::eventually(Duration::from_secs(20), || async {
        let (_, view) = get(&team.ada, &team.app, "/api/v1/admin/backups").await;
        (view["backups"].as_array().map(Vec::len) == Some(1)).then_some(view)
    })
    .await
    .expect("the queued backup was written");
    let row = &listed["backups"][0];
    assert_eq!(
        row["backend"],
        match backend() {
            TestBackend::Sqlite => "sqlite",
            TestBackend::Postgres => "postgres",
        }
    );
    assert!(row["rows"].as_i64().expect("rows") > 0);
    assert!(listed["age_hours"].as_f64().expect("age") < 0.1);
    let dir = team.app.data_dir.path().join("backups");
    assert!(dir.join(row["file"].as_str().expect("file")).exists());

    // The file appears (by rename) before the job records its outcome: wait for the job.
    let line = crate::helpers::eventually(Duration::from_secs(20), || async {
        let metrics = team.app.get("/metrics").await.text().await.ok()?;
        metrics
            .lines()
            .find(|l| l.starts_with("backup_last_success_timestamp_seconds"))
            .map(str::to_owned)
    })
    .await
    .expect("the job finished and exported backup_last_success_timestamp_seconds");
    let at: f64 = line
        .rsplit(' ')
        .next()
        .expect("value")
        .parse()
        .expect("a number");
    assert!(
        (chrono::Utc::now().timestamp() as f64 - at).abs() < 120.0,
        "{line}"
    );

    let page = team
        .ada
        .client
        .get(team.app.url("/admin/backups"))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    assert!(
        page.contains("Back up now") && page.contains(row["file"].as_str().expect("file")),
        "{page}"
    );
    let value: Value = listed;
    assert!(value["enabled"].as_bool().expect("enabled"));
}
