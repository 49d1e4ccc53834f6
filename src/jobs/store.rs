//! Job rows: insert, claim, finish. Claiming is the one backend-specific statement.

use chrono::{DateTime, NaiveDateTime, Timelike as _, Utc};
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

/// Whether a job of `kind` is queued (or, with `count_running`, running).
pub(super) fn pending_of_kind(
    conn: &mut DbConnection,
    kind: &str,
    count_running: bool,
) -> QueryResult<bool> {
    let mut states = vec![JobState::Queued.as_str()];
    if count_running {
        states.push(JobState::Running.as_str());
    }
    diesel::select(diesel::dsl::exists(
        jobs::table
            .filter(jobs::kind.eq(kind))
            .filter(jobs::state.eq_any(states)),
    ))
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
    bury_abandoned(conn, now)?;
    match conn {
        DbConnection::Postgresql(pg) => diesel::sql_query(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1,
                    locked_by = $1, locked_until = $2, updated_at = $3
             WHERE id IN (
                 SELECT id FROM jobs
                 WHERE queue = $4
                   AND kind IN (SELECT jsonb_array_elements_text($5::jsonb))
                   AND ((state = 'queued' AND run_at <= $3)
                        OR (state = 'running' AND locked_until < $3 AND attempts < max_attempts))
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
                            OR (state = 'running' AND locked_until < ?3 AND attempts < max_attempts))
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

/// A job whose lease expired after its last attempt (its worker crashed or hung every time)
/// will not be retried: it is marked dead so an operator sees it.
fn bury_abandoned(conn: &mut DbConnection, now: NaiveDateTime) -> QueryResult<usize> {
    diesel::update(
        jobs::table
            .filter(jobs::state.eq(JobState::Running.as_str()))
            .filter(jobs::locked_until.lt(now))
            .filter(jobs::attempts.ge(jobs::max_attempts)),
    )
    .set((
        jobs::state.eq(JobState::Dead.as_str()),
        jobs::locked_by.eq(None::<String>),
        jobs::locked_until.eq(None::<NaiveDateTime>),
        jobs::last_error.eq(Some(
            "the worker running the last attempt was lost (crash or lease expiry)",
        )),
        jobs::finished_at.eq(Some(now)),
        jobs::updated_at.eq(now),
    ))
    .execute(conn)
}

/// Marks a job done. Guarded by owner and attempt number (a fencing token): if this attempt's
/// lease expired and the job was claimed again, even by this same node, the late write of
/// the old attempt must not overwrite the new one's state. Returns false then.
pub(super) fn mark_succeeded(
    conn: &mut DbConnection,
    id: i64,
    attempt: i32,
    worker: &str,
    now: DateTime<Utc>,
) -> QueryResult<bool> {
    let now = db_time(now);
    let updated = diesel::update(
        jobs::table
            .filter(jobs::id.eq(id))
            .filter(jobs::state.eq(JobState::Running.as_str()))
            .filter(jobs::attempts.eq(attempt))
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
    attempt: i32,
    worker: &str,
    error: &str,
    retry_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> QueryResult<bool> {
    let now = db_time(now);
    let target = jobs::table
        .filter(jobs::id.eq(id))
        .filter(jobs::state.eq(JobState::Running.as_str()))
        .filter(jobs::attempts.eq(attempt))
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

#[cfg(test)]
mod tests {
    use diesel::Connection as _;
    use diesel_migrations::MigrationHarness as _;

    use super::*;

    fn sqlite() -> (tempfile::TempDir, DbConnection) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("jobs.db");
        let mut conn = diesel::SqliteConnection::establish(&path.to_string_lossy()).expect("open");
        conn.run_pending_migrations(crate::db::SQLITE_MIGRATIONS)
            .expect("migrate");
        (dir, DbConnection::Sqlite(conn))
    }

    #[test]
    fn a_late_outcome_of_an_expired_attempt_does_not_overwrite_the_next_attempt() {
        let (_dir, mut conn) = sqlite();
        let now = Utc::now();
        let job = NewJob::new("test.fence", &()).expect("job");
        let id = insert(&mut conn, &job, 5, now).expect("insert");
        let kinds = vec!["test.fence".to_owned()];
        // Attempt 1 claims with a lease that has already run out by the time of attempt 2.
        let first = claim(&mut conn, "default", &kinds, "node-a", 1, now, now).expect("claim");
        assert_eq!(first[0].attempts, 1);
        let later = now + chrono::Duration::seconds(1);
        let second = claim(
            &mut conn,
            "default",
            &kinds,
            "node-a",
            1,
            later + chrono::Duration::seconds(60),
            later,
        )
        .expect("claim again");
        assert_eq!(
            second[0].attempts, 2,
            "the expired lease was re-claimed by the same node"
        );
        // Attempt 1's result arrives late: it must not count.
        assert!(
            !mark_failed(&mut conn, id, 1, "node-a", "late failure", None, later).expect("update")
        );
        assert!(mark_succeeded(&mut conn, id, 2, "node-a", later).expect("update"));
        let row = find(&mut conn, id).expect("find").expect("row");
        assert_eq!((row.state.as_str(), row.attempts), ("succeeded", 2));
    }
}
