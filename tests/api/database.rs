//! Connection setup: the SQLite file is in WAL mode, and every pooled connection (not just the
//! first) has foreign keys on and the configured busy timeout — both are per-connection
//! settings. PostgreSQL connections that died are replaced.

use conclave::db::{DbConnection, DbError};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use crate::helpers::{TestBackend, backend, spawn_app_with};

#[derive(QueryableByName)]
struct TextValue {
    #[diesel(sql_type = Text)]
    value: String,
}

#[derive(QueryableByName)]
struct NumberValue {
    #[diesel(sql_type = BigInt)]
    value: i64,
}

#[tokio::test]
async fn every_sqlite_connection_has_wal_foreign_keys_and_a_busy_timeout() {
    if backend() != TestBackend::Sqlite {
        return; // PRAGMAs are SQLite's; the PostgreSQL run covers the other test below.
    }
    let app = spawn_app_with(|s| s.database.sqlite_busy_timeout_ms = 4321).await;
    // Hold several connections at once so more than the first one is checked.
    let checks = (0..3).map(|_| {
        let db = app.state.db.clone();
        tokio::spawn(async move {
            db.run(|conn| {
                let DbConnection::Sqlite(sqlite) = conn else {
                    unreachable!("sqlite backend")
                };
                let mode: TextValue =
                    diesel::sql_query("SELECT journal_mode AS value FROM pragma_journal_mode")
                        .get_result(sqlite)?;
                let fk: NumberValue =
                    diesel::sql_query("SELECT foreign_keys AS value FROM pragma_foreign_keys")
                        .get_result(sqlite)?;
                let busy: NumberValue =
                    diesel::sql_query("SELECT timeout AS value FROM pragma_busy_timeout")
                        .get_result(sqlite)?;
                std::thread::sleep(std::time::Duration::from_millis(50));
                Ok::<_, DbError>((mode.value, fk.value, busy.value))
            })
            .await
        })
    });
    for check in checks {
        let (mode, foreign_keys, busy) = check.await.unwrap().unwrap();
        assert_eq!((mode.as_str(), foreign_keys, busy), ("wal", 1, 4321));
    }
}

#[tokio::test]
async fn postgres_connections_killed_by_the_server_are_replaced() {
    if backend() != TestBackend::Postgres {
        return;
    }
    let app = spawn_app_with(|s| s.database.pool_max_size = 2).await;
    let name: TextValue = app
        .state
        .db
        .run(|conn| {
            diesel::sql_query("SELECT current_database() AS value")
                .get_result(conn)
                .map_err(DbError::from)
        })
        .await
        .unwrap();
    // Kill every connection of the app's pool from outside, as a restart or failover would.
    let mut admin =
        diesel::PgConnection::establish(&std::env::var(crate::helpers::ADMIN_URL_ENV).unwrap())
            .unwrap();
    let killed = diesel::sql_query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
    )
    .bind::<Text, _>(&name.value)
    .execute(&mut admin)
    .unwrap();
    assert!(killed >= 1, "the pool had open connections");
    // The next requests must not fail on a dead connection.
    for _ in 0..4 {
        let response = app.get("/readyz").await;
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
}
