//! Usage metering and quotas behind [`UsageGate`]: every assistant call is admitted before it
//! runs (one request counted, limits checked) and settled after (its tokens counted, credits
//! charged for tokens beyond the plan's month).
//!
//! Counters are rows of `usage_daily` (workspace × UTC day) changed with single atomic
//! `UPDATE … SET requests = requests + 1 WHERE requests < limit` statements, so they are exact
//! under any concurrency and across nodes. A workspace found over a limit is remembered in a
//! moka cache until the limit resets, so refused calls do not reach the database. Tokens are
//! known only after a call: a call admitted just under the token limit may end a little over
//! it, and the next one is refused.

use std::sync::Arc;

use chrono::{DateTime, Datelike as _, NaiveDate, TimeDelta, Utc};
use diesel::prelude::*;
use serde::Serialize;

use super::ledger::{self, EntryKind, NewEntry};
use crate::db::{Db, DbConnection, DbError, write_transaction};
use crate::schema::usage_daily;
use crate::settings::BillingSettings;

/// Which limit stopped a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    DailyRequests,
    DailyTokens,
    MonthlyTokens,
}

impl Limit {
    pub fn describe(self) -> &'static str {
        match self {
            Self::DailyRequests => "requests per day",
            Self::DailyTokens => "tokens per day",
            Self::MonthlyTokens => "tokens per month (and no credits left)",
        }
    }
}

/// A refused call: which limit, its value, and when it resets.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Exceeded {
    pub limit: Limit,
    pub allowed: u64,
    pub used: u64,
    pub plan: String,
    #[schema(value_type = String)]
    pub resets_at: DateTime<Utc>,
}

impl Exceeded {
    pub fn retry_after_secs(&self) -> u64 {
        (self.resets_at - Utc::now())
            .num_seconds()
            .max(1)
            .unsigned_abs()
    }

    pub fn message(&self) -> String {
        format!(
            "Your workspace has used its {} {} on the {} plan; it resets at {} UTC (in {}).",
            self.allowed,
            self.limit.describe(),
            self.plan,
            self.resets_at.format("%Y-%m-%d %H:%M"),
            in_words(self.retry_after_secs())
        )
    }
}

fn in_words(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7_199 => format!("{} min", secs / 60),
        _ => format!("{} h", secs / 3_600),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("{}", .0.message())]
    Exceeded(Exceeded),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// A call let through: settle it with its tokens.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    pub tenant_id: i64,
    pub user_id: Option<i64>,
    pub day: NaiveDate,
}

#[async_trait::async_trait]
pub trait UsageGate: Send + Sync {
    /// Counts one request for the workspace, or refuses it.
    async fn admit(&self, tenant_id: i64, user_id: Option<i64>) -> Result<Admission, GateError>;
    /// Counts the call's tokens; charges credits for what goes beyond the month's allowance.
    async fn settle(&self, admission: Admission, tokens: u64);
}

fn tomorrow(now: DateTime<Utc>) -> DateTime<Utc> {
    (now.date_naive() + TimeDelta::days(1))
        .and_hms_opt(0, 0, 0)
        .map_or(now + TimeDelta::hours(24), |t| t.and_utc())
}

fn next_month(now: DateTime<Utc>) -> DateTime<Utc> {
    let (year, month) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    NaiveDate::from_ymd_opt(year, month, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map_or(now + TimeDelta::days(31), |t| t.and_utc())
}

pub fn day_key(day: NaiveDate) -> String {
    day.format("%Y-%m-%d").to_string()
}

/// Makes sure the workspace's row for `day` exists (portable `INSERT … ON CONFLICT DO
/// NOTHING`; both backends spell it the same, only the placeholders differ).
fn ensure_row(conn: &mut DbConnection, tenant_id: i64, day: &str) -> QueryResult<()> {
    use diesel::sql_types::{BigInt, Text};
    let sql = match conn {
        DbConnection::Postgresql(_) => {
            "INSERT INTO usage_daily (tenant_id, day, requests, tokens) VALUES ($1, $2, 0, 0) ON CONFLICT DO NOTHING"
        }
        DbConnection::Sqlite(_) => {
            "INSERT INTO usage_daily (tenant_id, day, requests, tokens) VALUES (?, ?, 0, 0) ON CONFLICT DO NOTHING"
        }
    };
    diesel::sql_query(sql)
        .bind::<BigInt, _>(tenant_id)
        .bind::<Text, _>(day)
        .execute(conn)
        .map(drop)
}

/// (requests, tokens) of a workspace on `day`.
pub fn day_totals(conn: &mut DbConnection, tenant_id: i64, day: &str) -> QueryResult<(i64, i64)> {
    Ok(usage_daily::table
        .find((tenant_id, day))
        .select((usage_daily::requests, usage_daily::tokens))
        .first(conn)
        .optional()?
        .unwrap_or((0, 0)))
}

/// Tokens of a workspace in the month of `day`.
pub fn month_tokens(conn: &mut DbConnection, tenant_id: i64, day: NaiveDate) -> QueryResult<i64> {
    let first = day_key(day.with_day(1).unwrap_or(day));
    let tokens: Vec<i64> = usage_daily::table
        .filter(usage_daily::tenant_id.eq(tenant_id))
        .filter(usage_daily::day.ge(first))
        .filter(usage_daily::day.le(day_key(day)))
        .select(usage_daily::tokens)
        .load(conn)?;
    Ok(tokens.into_iter().sum())
}

/// The gate over `usage_daily` and the credits ledger.
#[derive(Clone)]
pub struct DbUsageGate {
    db: Db,
    settings: Arc<BillingSettings>,
    /// Workspaces over a limit, until it resets.
    exhausted: moka::sync::Cache<i64, Exceeded>,
}

impl DbUsageGate {
    pub fn new(db: Db, settings: Arc<BillingSettings>) -> Self {
        Self {
            db,
            settings,
            exhausted: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(std::time::Duration::from_secs(300))
                .build(),
        }
    }

    /// Forgets what is cached about a workspace (its plan or credits changed).
    pub fn forget(&self, tenant_id: i64) {
        self.exhausted.invalidate(&tenant_id);
    }

    pub fn cached_entries(&self) -> u64 {
        self.exhausted.entry_count()
    }

    pub fn clear_cache(&self) {
        self.exhausted.invalidate_all();
    }
}

#[async_trait::async_trait]
impl UsageGate for DbUsageGate {
    async fn admit(&self, tenant_id: i64, user_id: Option<i64>) -> Result<Admission, GateError> {
        let now = Utc::now();
        if let Some(refused) = self.exhausted.get(&tenant_id) {
            if refused.resets_at > now {
                return Err(GateError::Exceeded(refused));
            }
            self.exhausted.invalidate(&tenant_id);
        }
        let settings = self.settings.clone();
        let day = now.date_naive();
        let outcome = self
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| {
                    let (plan_name, plan) = super::plans::plan_of(tx, &settings, tenant_id)?;
                    let key = day_key(day);
                    ensure_row(tx, tenant_id, &key)?;
                    let exceeded = |limit, allowed: u64, used: i64, resets_at| {
                        Ok::<_, DbError>(Err(Exceeded {
                            limit,
                            allowed,
                            used: used.max(0).unsigned_abs(),
                            plan: plan_name.clone(),
                            resets_at,
                        }))
                    };
                    let (requests, tokens) = day_totals(tx, tenant_id, &key)?;
                    if let Some(allowed) = plan.daily_tokens
                        && tokens >= i64::try_from(allowed).unwrap_or(i64::MAX)
                    {
                        return exceeded(Limit::DailyTokens, allowed, tokens, tomorrow(now));
                    }
                    if let Some(allowed) = plan.monthly_tokens {
                        let month = month_tokens(tx, tenant_id, day)?;
                        if month >= i64::try_from(allowed).unwrap_or(i64::MAX)
                            && ledger::balance(tx, tenant_id)? <= 0
                        {
                            return exceeded(Limit::MonthlyTokens, allowed, month, next_month(now));
                        }
                    }
                    // The one statement that makes the count exact: it increments only while
                    // under the limit, atomically.
                    let limit = plan
                        .daily_requests
                        .map_or(i64::MAX, |n| i64::try_from(n).unwrap_or(i64::MAX));
                    let counted = diesel::update(
                        usage_daily::table
                            .find((tenant_id, &key))
                            .filter(usage_daily::requests.lt(limit)),
                    )
                    .set(usage_daily::requests.eq(usage_daily::requests + 1))
                    .execute(tx)?;
                    if counted == 0 {
                        return exceeded(
                            Limit::DailyRequests,
                            plan.daily_requests.unwrap_or(0),
                            requests,
                            tomorrow(now),
                        );
                    }
                    Ok(Ok(()))
                })
            })
            .await?;
        match outcome {
            Ok(()) => Ok(Admission {
                tenant_id,
                user_id,
                day,
            }),
            Err(refused) => {
                metrics::counter!("billing_quota_refusals_total", "limit" => format!("{:?}", refused.limit))
                    .increment(1);
                self.exhausted.insert(tenant_id, refused.clone());
                Err(GateError::Exceeded(refused))
            }
        }
    }

    async fn settle(&self, admission: Admission, tokens: u64) {
        let settings = self.settings.clone();
        let tokens = i64::try_from(tokens).unwrap_or(i64::MAX);
        let settled = self
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| {
                    let key = day_key(admission.day);
                    ensure_row(tx, admission.tenant_id, &key)?;
                    diesel::update(usage_daily::table.find((admission.tenant_id, &key)))
                        .set(usage_daily::tokens.eq(usage_daily::tokens + tokens))
                        .execute(tx)?;
                    // Tokens beyond the month's allowance are paid with credits.
                    let (_, plan) = super::plans::plan_of(tx, &settings, admission.tenant_id)?;
                    if let Some(allowed) = plan.monthly_tokens {
                        let allowed = i64::try_from(allowed).unwrap_or(i64::MAX);
                        let month = month_tokens(tx, admission.tenant_id, admission.day)?;
                        let beyond = (month - allowed).clamp(0, tokens);
                        if beyond > 0 {
                            ledger::append_clamped(
                                tx,
                                &NewEntry {
                                    tenant_id: admission.tenant_id,
                                    kind: EntryKind::Usage,
                                    amount: -beyond,
                                    order_id: None,
                                    user_id: admission.user_id,
                                    reason: "assistant tokens beyond the plan's month",
                                },
                            )?;
                        }
                    }
                    Ok::<_, DbError>(())
                })
            })
            .await;
        if let Err(error) = settled {
            tracing::error!(error = %error, tenant = admission.tenant_id, "cannot record usage tokens");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_are_at_midnight_utc_and_the_first_of_the_month() {
        let now = DateTime::parse_from_rfc3339("2026-12-31T18:30:00Z")
            .expect("a valid time")
            .with_timezone(&Utc);
        assert_eq!(tomorrow(now).to_rfc3339(), "2027-01-01T00:00:00+00:00");
        assert_eq!(next_month(now).to_rfc3339(), "2027-01-01T00:00:00+00:00");
        let mid = DateTime::parse_from_rfc3339("2026-11-30T10:00:00Z")
            .expect("a valid time")
            .with_timezone(&Utc);
        assert_eq!(next_month(mid).to_rfc3339(), "2026-12-01T00:00:00+00:00");
        assert_eq!(in_words(7_300), "2 h");
    }
}
