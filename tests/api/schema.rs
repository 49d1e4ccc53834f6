//! The SQLite and PostgreSQL migrations must produce the same schema: same tables, same
//! columns with the same type family and nullability, same indexes. Needs TEST_DATABASE_URL
//! (always set under `make test`); without it the comparison cannot run and the test says so.

use std::collections::BTreeMap;

use diesel::prelude::*;
use diesel::sql_types::{Integer, Text};
use diesel::{PgConnection, SqliteConnection};
use diesel_migrations::MigrationHarness as _;

use crate::helpers::{ADMIN_URL_ENV, PgDatabase};

#[derive(QueryableByName)]
struct Column {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Text)]
    data_type: String,
    #[diesel(sql_type = Integer)]
    nullable: i32,
}

#[derive(QueryableByName)]
struct Index {
    #[diesel(sql_type = Text)]
    name: String,
}

/// Type families both backends can agree on (SQLite INTEGER is 64-bit, as is BIGINT).
fn family(data_type: &str) -> &'static str {
    let t = data_type.to_ascii_lowercase();
    if t.contains("int") {
        "integer"
    } else if t.contains("char") || t == "text" {
        "text"
    } else if t.starts_with("timestamp") {
        "timestamp"
    } else if t.contains("bool") {
        "boolean"
    } else if t == "blob" || t == "bytea" {
        "binary"
    } else if t.contains("real") || t.contains("double") || t.contains("float") {
        "float"
    } else {
        "other"
    }
}

type Schema = BTreeMap<String, BTreeMap<String, (&'static str, bool)>>;

fn collect(columns: Vec<Column>) -> Schema {
    let mut schema = Schema::new();
    for c in columns {
        schema
            .entry(c.table_name)
            .or_default()
            .insert(c.column_name, (family(&c.data_type), c.nullable != 0));
    }
    schema
}

/// Column names of every `table!` in src/schema.rs, read from the SQL diesel generates for a
/// select of all columns. Add each new table here.
fn diesel_tables() -> Vec<(&'static str, Vec<String>)> {
    use conclave::schema::{
        api_tokens, assistant_preferences, assistant_replies, assistant_rooms, assistant_usage,
        audit_events, billing_orders, captcha_spent, conversation_keys, credit_entries,
        device_claims, device_commands, device_rules, device_tokens, devices, edge_agents,
        edge_policies, email_tokens, firmware_images, firmware_keys, invitations, jobs,
        memberships, message_terms, messages, mfa_challenges, oidc_flows, ota_assignments,
        ota_rollouts, personal_keys, read_markers, recovery_codes, remembered_devices,
        room_members, rooms, sessions, telemetry, telemetry_hourly, tenants, totp_secrets,
        usage_daily, user_identities, user_preferences, users,
    };
    let columns = |sql: String, table: &str| -> Vec<String> {
        let marker = format!("\"{table}\".\"");
        sql.split(&marker)
            .skip(1)
            .filter_map(|rest| rest.split('"').next().map(str::to_owned))
            .collect()
    };
    macro_rules! table_columns {
        ($($table:ident),*) => {
            vec![$((
                stringify!($table),
                columns(
                    diesel::debug_query::<diesel::pg::Pg, _>(&$table::table.select($table::all_columns)).to_string(),
                    stringify!($table),
                ),
            )),*]
        };
    }
    table_columns!(
        jobs,
        rooms,
        room_members,
        conversation_keys,
        personal_keys,
        read_markers,
        assistant_usage,
        assistant_rooms,
        assistant_replies,
        assistant_preferences,
        billing_orders,
        credit_entries,
        usage_daily,
        edge_policies,
        edge_agents,
        user_preferences,
        devices,
        device_tokens,
        device_claims,
        telemetry,
        device_commands,
        device_rules,
        telemetry_hourly,
        firmware_keys,
        firmware_images,
        ota_rollouts,
        ota_assignments,
        messages,
        message_terms,
        tenants,
        users,
        sessions,
        email_tokens,
        totp_secrets,
        recovery_codes,
        remembered_devices,
        mfa_challenges,
        api_tokens,
        invitations,
        memberships,
        audit_events,
        oidc_flows,
        user_identities,
        captcha_spent
    )
}

#[test]
fn sqlite_and_postgres_migrations_produce_the_same_schema() {
    if std::env::var(ADMIN_URL_ENV).is_err() {
        // Passing silently would hide that the comparison never ran.
        assert!(
            std::env::var_os("CONCLAVE_TEST_SKIP_SCHEMA").is_some(),
            "set {ADMIN_URL_ENV} (make test does) or CONCLAVE_TEST_SKIP_SCHEMA=1 to skip"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut sqlite =
        SqliteConnection::establish(dir.path().join("s.db").to_str().unwrap()).unwrap();
    sqlite
        .run_pending_migrations(conclave::db::SQLITE_MIGRATIONS)
        .unwrap();
    let pg_db = PgDatabase::create();
    let mut pg = PgConnection::establish(&pg_db.url).unwrap();
    pg.run_pending_migrations(conclave::db::POSTGRES_MIGRATIONS)
        .unwrap();

    // A primary key column is NOT NULL even where SQLite's table_info does not say so.
    let sqlite_columns: Vec<Column> = diesel::sql_query(
        "SELECT m.name AS table_name, p.name AS column_name, p.type AS data_type,
                CASE WHEN p.\"notnull\" = 1 OR p.pk > 0 THEN 0 ELSE 1 END AS nullable
         FROM sqlite_master m JOIN pragma_table_info(m.name) p
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'
         ORDER BY 1, 2",
    )
    .load(&mut sqlite)
    .unwrap();
    let pg_columns: Vec<Column> = diesel::sql_query(
        "SELECT table_name::text AS table_name, column_name::text AS column_name,
                data_type::text AS data_type,
                CASE WHEN is_nullable = 'YES' THEN 1 ELSE 0 END AS nullable
         FROM information_schema.columns WHERE table_schema = 'public'
         ORDER BY 1, 2",
    )
    .load(&mut pg)
    .unwrap();
    let (sqlite_schema, pg_schema) = (collect(sqlite_columns), collect(pg_columns));
    assert!(sqlite_schema.contains_key("jobs"), "{sqlite_schema:?}");
    // src/schema.rs must name exactly the tables and columns the migrations create.
    let declared_tables: Vec<&str> = diesel_tables().iter().map(|(t, _)| *t).collect();
    for table in pg_schema.keys().filter(|t| !t.starts_with("__diesel")) {
        assert!(
            declared_tables.contains(&table.as_str()),
            "table {table} is missing from src/schema.rs (and from diesel_tables here)"
        );
    }
    for (table, diesel_columns) in diesel_tables() {
        let migrated: Vec<&String> = pg_schema
            .get(table)
            .map(|c| c.keys().collect())
            .unwrap_or_default();
        let declared: Vec<&String> = diesel_columns.iter().collect();
        let mut declared_sorted = declared.clone();
        declared_sorted.sort();
        assert_eq!(
            declared_sorted, migrated,
            "src/schema.rs and the migrations disagree on {table}"
        );
    }
    for table in sqlite_schema.keys().chain(pg_schema.keys()) {
        assert_eq!(
            sqlite_schema.get(table),
            pg_schema.get(table),
            "table {table} differs between SQLite and PostgreSQL"
        );
    }

    let sqlite_indexes: Vec<String> = diesel::sql_query(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_autoindex%' ORDER BY name",
    )
    .load::<Index>(&mut sqlite)
    .unwrap()
    .into_iter()
    .map(|i| i.name)
    .collect();
    let pg_indexes: Vec<String> = diesel::sql_query(
        "SELECT indexname::text AS name FROM pg_indexes
         WHERE schemaname = 'public' AND indexname NOT LIKE '%_pkey' AND indexname NOT LIKE '%_key'
         ORDER BY 1",
    )
    .load::<Index>(&mut pg)
    .unwrap()
    .into_iter()
    .map(|i| i.name)
    .collect();
    assert_eq!(sqlite_indexes, pg_indexes, "indexes differ");
}
