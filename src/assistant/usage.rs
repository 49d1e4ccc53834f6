//! Usage records: one row per assistant call, written however the call ended (finished, cut
//! off, failed, or the client went away), so billing counts what was really spent.

use chrono::Utc;
use diesel::prelude::*;
use serde::Serialize;

use crate::db::DbConnection;
use crate::schema::{assistant_usage, memberships};

/// Where a call came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `/v1/chat/completions`.
    Api,
    /// A personal assistant chat.
    Chat,
    /// `@assistant` in a room.
    Room,
    /// A visitor in guest mode.
    Guest,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Chat => "chat",
            Self::Room => "room",
            Self::Guest => "guest",
        }
    }
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Completed,
    /// The provider stopped before finishing (cut off, timed out mid-answer).
    Incomplete,
    /// No answer at all.
    Failed,
    /// The caller stopped it (stop button, client disconnected).
    Cancelled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Incomplete => "incomplete",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Who a call is billed to.
#[derive(Debug, Clone, Copy)]
pub struct Payer {
    /// `None` for a guest.
    pub user_id: Option<i64>,
    /// The workspace; `None`: the person's home workspace (their oldest membership).
    pub tenant_id: Option<i64>,
    pub source: Source,
}

#[derive(Debug, Clone)]
pub struct Record {
    pub payer: Payer,
    pub model: String,
    pub variant: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub estimated: bool,
    pub outcome: Outcome,
    pub first_token_ms: Option<i64>,
}

pub fn insert(conn: &mut DbConnection, record: &Record) -> QueryResult<()> {
    let tenant = match (record.payer.tenant_id, record.payer.user_id) {
        (Some(tenant), _) => tenant,
        (None, Some(user)) => home_tenant(conn, user)?,
        (None, None) => crate::tenancy::default_tenant_id(conn)?,
    };
    let now = Utc::now();
    diesel::insert_into(assistant_usage::table)
        .values((
            assistant_usage::tenant_id.eq(tenant),
            assistant_usage::user_id.eq(record.payer.user_id),
            assistant_usage::day.eq(now.format("%Y-%m-%d").to_string()),
            assistant_usage::model.eq(&record.model),
            assistant_usage::variant.eq(&record.variant),
            assistant_usage::source.eq(record.payer.source.as_str()),
            assistant_usage::prompt_tokens.eq(i64::from(record.prompt_tokens)),
            assistant_usage::completion_tokens.eq(i64::from(record.completion_tokens)),
            assistant_usage::estimated.eq(record.estimated),
            assistant_usage::outcome.eq(record.outcome.as_str()),
            assistant_usage::first_token_ms.eq(record.first_token_ms),
            assistant_usage::created_at.eq(now.naive_utc()),
        ))
        .execute(conn)
        .map(drop)
}

/// The workspace a person's calls are billed to when the call names none: the one they joined
/// first, or the installation's default.
pub fn home_tenant(conn: &mut DbConnection, user_id: i64) -> QueryResult<i64> {
    let first = memberships::table
        .filter(memberships::user_id.eq(user_id))
        .order(memberships::tenant_id.asc())
        .select(memberships::tenant_id)
        .first::<i64>(conn)
        .optional()?;
    match first {
        Some(tenant) => Ok(tenant),
        None => crate::tenancy::default_tenant_id(conn),
    }
}

/// A person's usage per day, model and variant: what the usage page and API show.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DailyUsage {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub model: String,
    pub variant: String,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// Requests whose counts are estimated (the provider reported none).
    pub estimated_requests: i64,
    pub failed_requests: i64,
}

/// The last `days` days of `user_id`'s usage, newest day first.
pub fn daily_of(conn: &mut DbConnection, user_id: i64, days: u32) -> QueryResult<Vec<DailyUsage>> {
    let since = (Utc::now() - chrono::TimeDelta::days(i64::from(days.saturating_sub(1))))
        .format("%Y-%m-%d")
        .to_string();
    type Row = (String, String, String, bool, String, i64, i64);
    let rows: Vec<Row> = assistant_usage::table
        .filter(assistant_usage::user_id.eq(user_id))
        .filter(assistant_usage::day.ge(since))
        .select((
            assistant_usage::day,
            assistant_usage::model,
            assistant_usage::variant,
            assistant_usage::estimated,
            assistant_usage::outcome,
            assistant_usage::prompt_tokens,
            assistant_usage::completion_tokens,
        ))
        .load(conn)?;
    // Summed here rather than with GROUP BY: a person's rows for a few weeks are few, and the
    // one query then reads the same on both backends.
    let mut days: std::collections::BTreeMap<(String, String, String), DailyUsage> =
        std::collections::BTreeMap::new();
    for (day, model, variant, estimated, outcome, prompt, completion) in rows {
        let entry = days
            .entry((day.clone(), model.clone(), variant.clone()))
            .or_insert_with(|| DailyUsage {
                day,
                model,
                variant,
                requests: 0,
                prompt_tokens: 0,
                completion_tokens: 0,
                estimated_requests: 0,
                failed_requests: 0,
            });
        entry.requests += 1;
        entry.prompt_tokens += prompt;
        entry.completion_tokens += completion;
        entry.estimated_requests += i64::from(estimated);
        entry.failed_requests += i64::from(outcome == Outcome::Failed.as_str());
    }
    let mut out: Vec<DailyUsage> = days.into_values().collect();
    out.sort_by(|a, b| b.day.cmp(&a.day).then(a.model.cmp(&b.model)));
    Ok(out)
}
