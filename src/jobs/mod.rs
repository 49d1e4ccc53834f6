//! The durable job queue: slow or retryable work (mail, webhooks, LLM completions, sweeps)
//! stored in the same database as the data it belongs to.
//!
//! - `Queue::enqueue_in(conn, job)` inserts with the caller's connection, so a job commits or
//!   rolls back with the transaction that made it necessary.
//! - `Runner` claims jobs in batches (`FOR UPDATE SKIP LOCKED` on PostgreSQL, an immediate
//!   transaction on SQLite), runs them with a concurrency limit, retries failures with
//!   exponential backoff and jitter, and marks a job `dead` after its last attempt.
//! - A claim is a lease: a job whose worker died is claimed again once `locked_until` passes.
//!   Delivery is therefore at-least-once; handlers must be idempotent.

mod runner;
mod store;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use diesel::RunQueryDsl as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::db::{Db, DbConnection, DbError};

pub use runner::{Runner, RunnerHandle};
pub use store::{JobRow, JobState};

pub const DEFAULT_QUEUE: &str = "default";

/// A job to be inserted.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: String,
    pub payload: serde_json::Value,
    pub queue: String,
    pub run_at: Option<DateTime<Utc>>,
    pub max_attempts: Option<i32>,
}

impl NewJob {
    pub fn new(kind: impl Into<String>, payload: &impl Serialize) -> anyhow::Result<Self> {
        Ok(Self {
            kind: kind.into(),
            payload: serde_json::to_value(payload)?,
            queue: DEFAULT_QUEUE.to_owned(),
            run_at: None,
            max_attempts: None,
        })
    }

    /// Runs no earlier than `at`.
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }

    pub fn max_attempts(mut self, attempts: i32) -> Self {
        self.max_attempts = Some(attempts.max(1));
        self
    }

    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }
}

/// A claimed job as a handler sees it.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub payload: serde_json::Value,
    /// 1 on the first try.
    pub attempt: i32,
    pub max_attempts: i32,
}

impl Job {
    /// Decodes the payload; a payload that cannot decode will never succeed, so it is permanent.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, JobError> {
        serde_json::from_value(self.payload.clone()).map_err(|e| {
            JobError::Permanent(anyhow::anyhow!(
                "payload of {} job is invalid: {e}",
                self.kind
            ))
        })
    }
}

/// How a handler failed: `Retry` tries again later (until attempts run out), `Permanent` goes
/// straight to `dead`.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0:#}")]
    Retry(anyhow::Error),
    #[error("{0:#}")]
    Permanent(anyhow::Error),
}

impl From<anyhow::Error> for JobError {
    fn from(error: anyhow::Error) -> Self {
        Self::Retry(error)
    }
}

pub type JobFuture = Pin<Box<dyn Future<Output = Result<(), JobError>> + Send>>;
type Handler = Arc<dyn Fn(Job) -> JobFuture + Send + Sync>;

/// Which handler runs which job kind. A runner only claims kinds it has a handler for, so a
/// node that does not know a new kind (during a rolling upgrade) leaves it to one that does.
#[derive(Clone, Default)]
pub struct JobRegistry {
    handlers: HashMap<String, Handler>,
}

impl JobRegistry {
    pub fn register<F, Fut>(&mut self, kind: &str, handler: F)
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        self.handlers
            .insert(kind.to_owned(), Arc::new(move |job| Box::pin(handler(job))));
    }

    pub fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self.handlers.keys().cloned().collect();
        kinds.sort();
        kinds
    }

    fn handler(&self, kind: &str) -> Option<Handler> {
        self.handlers.get(kind).cloned()
    }
}

/// The producer side: inserts jobs and wakes this node's runner.
#[derive(Clone)]
pub struct Queue {
    db: Db,
    wake: Arc<Notify>,
    default_max_attempts: i32,
}

impl Queue {
    pub fn new(db: Db, default_max_attempts: i32) -> Self {
        Self {
            db,
            wake: Arc::new(Notify::new()),
            default_max_attempts,
        }
    }

    /// Inserts `job` on `conn`, inside whatever transaction the caller has open. Call
    /// [`Queue::wake`] after committing so a local worker picks it up without waiting a poll.
    pub fn enqueue_in(&self, conn: &mut DbConnection, job: &NewJob) -> diesel::QueryResult<i64> {
        store::insert(conn, job, self.default_max_attempts, Utc::now())
    }

    /// Inserts `job` in its own transaction and wakes the local runner.
    pub async fn enqueue(&self, job: NewJob) -> anyhow::Result<i64> {
        let queue = self.clone();
        let id = self
            .db
            .run(move |conn| queue.enqueue_in(conn, &job).map_err(anyhow::Error::from))
            .await?;
        self.wake();
        Ok(id)
    }

    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn wake_signal(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Makes sure one job of `kind` is waiting to run (at `run_at`), for recurring work such
    /// as clean-ups. Safe to call from every node at start-up: the check and the insert happen
    /// under a lock, so exactly one job is scheduled. A job rescheduling itself passes
    /// `count_running = false`, since it is itself the running one.
    pub fn ensure_scheduled_in(
        &self,
        conn: &mut DbConnection,
        kind: &str,
        run_at: DateTime<Utc>,
        count_running: bool,
    ) -> diesel::QueryResult<bool> {
        crate::db::write_transaction(conn, |tx| {
            if let DbConnection::Postgresql(pg) = tx {
                diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext($1))")
                    .bind::<diesel::sql_types::Text, _>(kind)
                    .execute(pg)?;
            }
            if store::pending_of_kind(tx, kind, count_running)? {
                return Ok(false);
            }
            let job = NewJob {
                kind: kind.to_owned(),
                payload: serde_json::Value::Null,
                queue: DEFAULT_QUEUE.to_owned(),
                run_at: Some(run_at),
                max_attempts: None,
            };
            store::insert(tx, &job, self.default_max_attempts, Utc::now()).map(|_| true)
        })
    }

    /// Schedules the first run of a recurring job of `kind` in `first_in`, unless one is
    /// already waiting or running (call at start-up, from every node).
    pub async fn schedule_recurring(
        &self,
        kind: &'static str,
        first_in: chrono::TimeDelta,
    ) -> Result<(), DbError> {
        let scheduler = self.clone();
        self.db
            .run(move |conn| {
                scheduler
                    .ensure_scheduled_in(conn, kind, Utc::now() + first_in, true)
                    .map(drop)
                    .map_err(DbError::from)
            })
            .await
    }

    /// One job row, for admin pages and tests.
    pub async fn get(&self, id: i64) -> Result<Option<JobRow>, DbError> {
        self.db
            .run(move |conn| store::find(conn, id).map_err(DbError::from))
            .await
    }

    pub fn db(&self) -> &Db {
        &self.db
    }
}
