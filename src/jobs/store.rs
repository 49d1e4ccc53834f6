//! Job rows: insert, claim, finish. Claiming is the one backend-specific statement.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Text, Timestamp};

use super::NewJob;
use crate::db::DbConnection;
use crate::schema::jobs;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Dead,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Dead => "dead",
        }
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = jobs)]
pub struct JobRow {
    pub id: i64,
    pub queue: String,
    pub kind: String,
    pub payload: String,
    pub state: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: NaiveDateTime,
    pub locked_by: Option<String>,
    pub locked_until: Option<NaiveDateTime>,
    pub last_error: Option<String>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub finished_at: Option<NaiveDateTime>,
}

/// What a claim hands back: enough to run the job.
#[derive(Debug, QueryableByName)]
pub(super) struct ClaimedRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Text)]
    pub payload: String,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    #[diesel(sql_type = Integer)]
    pub max_attempts: i32,
}

/// Stored times are naive UTC with microsecond precision on both backends.
pub(super) fn db_time(at: DateTime<Utc>) -> NaiveDateTime {
    let naive = at.naive_utc();
    naive
        .with_nanosecond((naive.nanosecond() / 1_000) * 1_000)
        .unwrap_or(naive)
}

use chrono::Timelike as _;

pub(super) fn insert(
    conn: &mut DbConnection,
    job: &NewJob,
    default_max_attempts: i32,
    now: DateTime<Utc>,
) -> QueryResult<i64> {
    let now = db_time(now);
    diesel::insert_into(jobs::table)
        .values((
            jobs::queue.eq(&job.queue),
            jobs::kind.eq(&job.kind),
            jobs::payload.eq(job.payload.to_string()),
            jobs::state.eq(JobState::Queued.as_str()),
            jobs::attempts.eq(0),
            jobs::max_attempts.eq(job.max_attempts.unwrap_or(default_max_attempts)),
            jobs::run_at.eq(job.run_at.map(db_time).unwrap_or(now)),
            jobs::created_at.eq(now),
            jobs::updated_at.eq(now),
        ))
        .returning(jobs::id)
        .get_result(conn)
}

pub(super) fn find(conn: &mut DbConnection, id: i64) -> QueryResult<Option<JobRow>> {
    jobs::table
        .find(id)
        .select(JobRow::as_select())
        .first(conn)
        .optional()
}

/// Claims up to `limit` runnable jobs of `kinds` for `worker`: queued jobs that are due, and
/// running jobs whose lease expired (their worker died). Each claim counts as an attempt.
pub(super) fn claim(
    conn: &mut DbConnection,
    queue: &str,
    kinds: &[String],
    worker: &str,
    limit: i64,
    lease_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> QueryResult<Vec<ClaimedRow>> {
    // The kinds go in as one JSON array so the statement has a fixed shape on both backends.
    let kinds_json = serde_json::Value::from(kinds.to_vec()).to_string();
    let (now, lease_until) = (db_time(now), db_time(lease_until));
    match conn {
        DbConnection::Postgresql(pg) => diesel::sql_query(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1,
                    locked_by = $1, locked_until = $2, updated_at = $3
             WHERE id IN (
                 SELECT id FROM jobs
                 WHERE queue = $4
                   AND kind IN (SELECT jsonb_array_elements_text($5::jsonb))
                   AND ((state = 'queued' AND run_at <= $3)
                        OR (state = 'running' AND locked_until < $3))
                 ORDER BY run_at, id
                 LIMIT $6
                 FOR UPDATE SKIP LOCKED)
             RETURNING id, kind, payload, attempts, max_attempts",
        )
        .bind::<Text, _>(worker)
        .bind::<Timestamp, _>(lease_until)
        .bind::<Timestamp, _>(now)
        .bind::<Text, _>(queue)
        .bind::<Text, _>(&kinds_json)
        .bind::<BigInt, _>(limit)
        .load(pg),
        // SQLite has one writer at a time; an immediate transaction takes the write lock
        // before reading, so two claimers can never pick the same row from a stale snapshot.
        DbConnection::Sqlite(sqlite) => sqlite.immediate_transaction(|tx| {
            diesel::sql_query(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1,
                        locked_by = ?1, locked_until = ?2, updated_at = ?3
                 WHERE id IN (
                     SELECT id FROM jobs
                     WHERE queue = ?4
                       AND kind IN (SELECT value FROM json_each(?5))
                       AND ((state = 'queued' AND run_at <= ?3)
                            OR (state = 'running' AND locked_until < ?3))
                     ORDER BY run_at, id
                     LIMIT ?6)
                 RETURNING id, kind, payload, attempts, max_attempts",
            )
            .bind::<Text, _>(worker)
            .bind::<Timestamp, _>(lease_until)
            .bind::<Timestamp, _>(now)
            .bind::<Text, _>(queue)
            .bind::<Text, _>(&kinds_json)
            .bind::<BigInt, _>(limit)
            .load(tx)
        }),
    }
}

/// Marks a job done. Guarded by the lease owner: a worker whose lease expired and was
/// re-claimed elsewhere must not overwrite the new owner's state. Returns false then.
pub(super) fn mark_succeeded(
    conn: &mut DbConnection,
    id: i64,
    worker: &str,
    now: DateTime<Utc>,
) -> QueryResult<bool> {
    let now = db_time(now);
    let updated = diesel::update(
        jobs::table
            .filter(jobs::id.eq(id))
            .filter(jobs::locked_by.eq(worker)),
    )
    .set((
        jobs::state.eq(JobState::Succeeded.as_str()),
        jobs::locked_by.eq(None::<String>),
        jobs::locked_until.eq(None::<NaiveDateTime>),
        jobs::last_error.eq(None::<String>),
        jobs::finished_at.eq(Some(now)),
        jobs::updated_at.eq(now),
    ))
    .execute(conn)?;
    Ok(updated == 1)
}

/// Puts a failed job back in the queue at `retry_at`, or marks it dead when `retry_at` is None.
pub(super) fn mark_failed(
    conn: &mut DbConnection,
    id: i64,
    worker: &str,
    error: &str,
    retry_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> QueryResult<bool> {
    let now = db_time(now);
    let target = jobs::table
        .filter(jobs::id.eq(id))
        .filter(jobs::locked_by.eq(worker));
    let cleared = (
        jobs::locked_by.eq(None::<String>),
        jobs::locked_until.eq(None::<NaiveDateTime>),
        jobs::last_error.eq(Some(truncate(error, 2_000))),
        jobs::updated_at.eq(now),
    );
    let updated = match retry_at {
        Some(at) => diesel::update(target)
            .set((
                jobs::state.eq(JobState::Queued.as_str()),
                jobs::run_at.eq(db_time(at)),
                cleared,
            ))
            .execute(conn)?,
        None => diesel::update(target)
            .set((
                jobs::state.eq(JobState::Dead.as_str()),
                jobs::finished_at.eq(Some(now)),
                cleared,
            ))
            .execute(conn)?,
    };
    Ok(updated == 1)
}

/// Deletes succeeded jobs finished before `before`. Dead jobs stay for an operator to see.
pub(super) fn prune_succeeded(
    conn: &mut DbConnection,
    before: DateTime<Utc>,
) -> QueryResult<usize> {
    diesel::delete(
        jobs::table
            .filter(jobs::state.eq(JobState::Succeeded.as_str()))
            .filter(jobs::finished_at.lt(db_time(before))),
    )
    .execute(conn)
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}
