//! The security audit log: who did what, where, when. Written in the same transaction as the
//! change it records, so the log and the data never disagree. Read by the admin viewer and
//! exported with `conclave audit export --format jsonl`.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::Serialize;

use crate::db::{Db, DbConnection, DbError};
use crate::schema::audit_events;

/// Event names, `area.action`. Keep them stable: they are what security teams search for.
pub mod events {
    pub const USER_CREATED: &str = "user.created";
    pub const USER_DISABLED: &str = "user.disabled";
    pub const USER_ENABLED: &str = "user.enabled";
    pub const LOGIN_SUCCEEDED: &str = "login.succeeded";
    pub const LOGIN_FAILED: &str = "login.failed";
    pub const ACCOUNT_LOCKED: &str = "account.locked";
    pub const LOGOUT: &str = "logout";
    pub const EMAIL_VERIFIED: &str = "email.verified";
    pub const SESSION_REVOKED: &str = "session.revoked";
    pub const PASSWORD_CHANGED: &str = "password.changed";
    pub const PASSWORD_RESET_REQUESTED: &str = "password.reset_requested";
    pub const PASSWORD_RESET: &str = "password.reset";
    pub const TWO_FACTOR_ENABLED: &str = "2fa.enabled";
    pub const TWO_FACTOR_DISABLED: &str = "2fa.disabled";
    pub const RECOVERY_CODES_REGENERATED: &str = "2fa.recovery_codes_regenerated";
    pub const RECOVERY_CODE_USED: &str = "2fa.recovery_code_used";
    pub const TOKEN_CREATED: &str = "token.created";
    pub const TOKEN_REVOKED: &str = "token.revoked";
    /// An address presented too many unknown API tokens and is refused for a minute.
    pub const TOKEN_GUESSING_THROTTLED: &str = "token.guessing_throttled";
    /// An address tried more device claim codes than allowed and is refused for a minute.
    pub const CLAIM_GUESSING_THROTTLED: &str = "device.claim_guessing_throttled";
    pub const IDENTITY_LINKED: &str = "identity.linked";
    pub const IDENTITY_UNLINKED: &str = "identity.unlinked";
}

/// An event to record. `subject` names what it is about, e.g. `user:42`.
#[derive(Debug, Clone, Default)]
pub struct AuditEvent {
    pub event: &'static str,
    pub actor_user_id: Option<i64>,
    pub tenant_id: Option<i64>,
    pub subject: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub details: serde_json::Value,
}

impl AuditEvent {
    /// Something a person did to their own account (actor and subject are them).
    pub fn by_user(event: &'static str, user_id: i64) -> Self {
        Self {
            event,
            actor_user_id: Some(user_id),
            subject: Some(format!("user:{user_id}")),
            ..Self::default()
        }
    }
}

/// Records `event` on its own, now — for a change that was not itself a database write in a
/// transaction (a sign-out, a download); otherwise record in the change's transaction.
pub async fn record_now(db: &Db, event: AuditEvent) -> Result<(), DbError> {
    db.run(move |conn| record(conn, &event, chrono::Utc::now().naive_utc()).map_err(DbError::from))
        .await
}

pub fn record(conn: &mut DbConnection, event: &AuditEvent, at: NaiveDateTime) -> QueryResult<()> {
    let details = match &event.details {
        serde_json::Value::Null => "{}".to_owned(),
        other => other.to_string(),
    };
    diesel::insert_into(audit_events::table)
        .values((
            audit_events::at.eq(at),
            audit_events::event.eq(event.event),
            audit_events::actor_user_id.eq(event.actor_user_id),
            audit_events::tenant_id.eq(event.tenant_id),
            audit_events::subject.eq(&event.subject),
            audit_events::ip.eq(&event.ip),
            audit_events::user_agent.eq(&event.user_agent),
            audit_events::details.eq(details),
        ))
        .execute(conn)
        .map(drop)
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = audit_events)]
pub struct AuditRow {
    pub id: i64,
    pub at: NaiveDateTime,
    pub event: String,
    pub actor_user_id: Option<i64>,
    pub tenant_id: Option<i64>,
    pub subject: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub details: String,
}

/// One exported line: times in RFC 3339 UTC, details as a JSON object.
#[derive(Debug, Serialize)]
pub struct ExportedEvent {
    pub id: i64,
    pub at: String,
    pub event: String,
    pub actor_user_id: Option<i64>,
    pub tenant_id: Option<i64>,
    pub subject: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub details: serde_json::Value,
}

impl From<AuditRow> for ExportedEvent {
    fn from(row: AuditRow) -> Self {
        Self {
            id: row.id,
            at: row
                .at
                .and_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            event: row.event,
            actor_user_id: row.actor_user_id,
            tenant_id: row.tenant_id,
            subject: row.subject,
            ip: row.ip,
            user_agent: row.user_agent,
            details: serde_json::from_str(&row.details).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// Events with id greater than `after_id` (and at or after `since`), oldest first, at most
/// `limit`: callers page through the log without holding it all in memory.
pub fn page(
    conn: &mut DbConnection,
    after_id: i64,
    since: Option<NaiveDateTime>,
    limit: i64,
) -> QueryResult<Vec<AuditRow>> {
    let mut query = audit_events::table
        .filter(audit_events::id.gt(after_id))
        .order(audit_events::id)
        .limit(limit)
        .select(AuditRow::as_select())
        .into_boxed();
    if let Some(since) = since {
        query = query.filter(audit_events::at.ge(since));
    }
    query.load(conn)
}
