//! The consumer side: claims jobs and runs them with a concurrency limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::FutureExt as _;
use rand::Rng as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{Job, JobError, JobRegistry, Queue, store};
use crate::db::{Db, DbError};
use crate::settings::JobSettings;

/// How often succeeded jobs older than `keep_succeeded_hours` are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

pub struct Runner {
    db: Db,
    registry: Arc<JobRegistry>,
    settings: JobSettings,
    queue_name: String,
    worker_id: String,
    wake: Arc<tokio::sync::Notify>,
}

/// Stops the runner: no new claims, in-flight jobs get `grace` to finish. Jobs still running
/// after that keep their lease and are retried by any node once it expires.
pub struct RunnerHandle {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    worker_id: String,
}

impl RunnerHandle {
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    pub async fn shutdown(self, grace: Duration) {
        self.shutdown.cancel();
        let drained = tokio::time::timeout(grace + Duration::from_secs(1), self.task).await;
        if drained.is_err() {
            tracing::warn!(worker = %self.worker_id, "job runner did not stop in time");
        }
    }
}

impl Runner {
    pub fn new(queue: &Queue, registry: JobRegistry, settings: JobSettings) -> Self {
        Self {
            db: queue.db().clone(),
            registry: Arc::new(registry),
            settings,
            queue_name: super::DEFAULT_QUEUE.to_owned(),
            worker_id: format!("{}-{}", std::process::id(), uuid::Uuid::now_v7().simple()),
            wake: queue.wake_signal(),
        }
    }

    pub fn spawn(self, grace: Duration) -> RunnerHandle {
        let shutdown = CancellationToken::new();
        let worker_id = self.worker_id.clone();
        let task = tokio::spawn(self.run(shutdown.clone(), grace));
        RunnerHandle {
            shutdown,
            task,
            worker_id,
        }
    }

    async fn run(self, shutdown: CancellationToken, grace: Duration) {
        let concurrency = self.settings.concurrency.max(1);
        let slots = Arc::new(Semaphore::new(concurrency));
        let kinds = self.registry.kinds();
        let poll = Duration::from_millis(self.settings.poll_interval_ms.max(10));
        let this = Arc::new(self);
        let mut last_prune: Option<Instant> = None;
        tracing::info!(worker = %this.worker_id, concurrency, ?kinds, "job runner started");

        while !shutdown.is_cancelled() {
            if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                last_prune = Some(Instant::now());
                this.prune().await;
            }
            let free = slots.available_permits();
            if free == 0 {
                tokio::select! {
                    permit = slots.clone().acquire_owned() => drop(permit),
                    () = shutdown.cancelled() => break,
                }
                continue;
            }
            let claimed = match this.claim(&kinds, free).await {
                Ok(claimed) => claimed,
                Err(error) => {
                    tracing::warn!(error = %error, "cannot claim jobs; retrying");
                    metrics::counter!("jobs_claim_errors_total").increment(1);
                    Vec::new()
                }
            };
            let full_batch = claimed.len() == free;
            for job in claimed {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    break;
                };
                tokio::spawn(this.clone().execute(job, permit));
            }
            if full_batch {
                continue; // more may be waiting
            }
            tokio::select! {
                () = this.wake.notified() => {}
                () = tokio::time::sleep(jittered(poll)) => {}
                () = shutdown.cancelled() => break,
            }
        }

        // Waiting for every slot means every in-flight job has finished.
        let all = u32::try_from(concurrency).unwrap_or(u32::MAX);
        if tokio::time::timeout(grace, slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(worker = %this.worker_id, "jobs still running at shutdown; their leases will expire and they will be retried");
        }
        tracing::info!(worker = %this.worker_id, "job runner stopped");
    }

    async fn claim(&self, kinds: &[String], limit: usize) -> Result<Vec<Job>, DbError> {
        if kinds.is_empty() {
            return Ok(Vec::new());
        }
        let kinds = kinds.to_vec();
        let queue = self.queue_name.clone();
        let worker = self.worker_id.clone();
        let lease = secs(self.settings.lease_secs);
        let limit = i64::try_from(limit).unwrap_or(1);
        let rows = self
            .db
            .run(move |conn| {
                let now = Utc::now();
                store::claim(conn, &queue, &kinds, &worker, limit, later(now, lease), now)
                    .map_err(DbError::from)
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| Job {
                id: row.id,
                payload: serde_json::from_str(&row.payload).unwrap_or(serde_json::Value::Null),
                kind: row.kind,
                attempt: row.attempts,
                max_attempts: row.max_attempts,
            })
            .collect())
    }

    async fn execute(self: Arc<Self>, job: Job, _permit: OwnedSemaphorePermit) {
        let span = tracing::info_span!(
            "job",
            job.id = job.id,
            job.kind = %job.kind,
            job.attempt = job.attempt,
            trace_id = tracing::field::Empty
        );
        crate::telemetry::record_trace_id(&span);
        async move {
            let started = Instant::now();
            metrics::counter!("jobs_started_total", "kind" => job.kind.clone()).increment(1);
            // A job must finish well inside its lease or another node would start it again.
            let limit = Duration::from_secs(self.settings.lease_secs).mul_f64(0.9);
            let outcome = match self.registry.handler(&job.kind) {
                // A panicking handler is a failed attempt like any other, not a lost job.
                Some(handler) => {
                    let run = std::panic::AssertUnwindSafe(handler(job.clone())).catch_unwind();
                    match tokio::time::timeout(limit, run).await {
                        Ok(Ok(result)) => result,
                        Ok(Err(panic)) => Err(JobError::Retry(anyhow::anyhow!(
                            "the handler panicked: {}",
                            panic_message(panic.as_ref())
                        ))),
                        Err(_) => Err(JobError::Retry(anyhow::anyhow!(
                            "timed out after {limit:?}"
                        ))),
                    }
                }
                None => Err(JobError::Permanent(anyhow::anyhow!(
                    "no handler for job kind {}",
                    job.kind
                ))),
            };
            metrics::histogram!("job_duration_seconds", "kind" => job.kind.clone())
                .record(started.elapsed().as_secs_f64());
            self.record(&job, outcome).await;
        }
        .instrument(span)
        .await;
    }

    /// Writes the outcome. If the database is briefly unreachable the write is retried; if it
    /// never succeeds the lease expires and the job runs again (at-least-once).
    async fn record(&self, job: &Job, outcome: Result<(), JobError>) {
        let (label, retry_at, error) = match &outcome {
            Ok(()) => ("succeeded", None, None),
            Err(JobError::Retry(e)) if job.attempt < job.max_attempts => {
                let delay = self.backoff(job.attempt);
                (
                    "retried",
                    Some(later(Utc::now(), delay)),
                    Some(format!("{e:#}")),
                )
            }
            Err(JobError::Retry(e) | JobError::Permanent(e)) => {
                ("dead", None, Some(format!("{e:#}")))
            }
        };
        match (&error, label) {
            (Some(e), "dead") => tracing::error!(error = %e, "job failed for good"),
            (Some(e), _) => {
                tracing::warn!(error = %e, retry_at = ?retry_at, "job failed; will retry")
            }
            _ => tracing::debug!("job succeeded"),
        }
        metrics::counter!("jobs_finished_total", "kind" => job.kind.clone(), "outcome" => label)
            .increment(1);

        for retry in 0..5u32 {
            let (id, attempt, worker) = (job.id, job.attempt, self.worker_id.clone());
            let error = error.clone();
            let written = self
                .db
                .run(move |conn| {
                    let now = Utc::now();
                    match error {
                        None => store::mark_succeeded(conn, id, attempt, &worker, now),
                        Some(e) => {
                            store::mark_failed(conn, id, attempt, &worker, &e, retry_at, now)
                        }
                    }
                    .map_err(DbError::from)
                })
                .await;
            match written {
                Ok(true) => return,
                Ok(false) => {
                    tracing::warn!(
                        "job lease was lost before its outcome was written; another worker owns it now"
                    );
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record job outcome; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(retry))).await;
                }
            }
        }
    }

    /// Exponential backoff with "equal jitter": half the delay is fixed, half random, so
    /// jobs that failed together do not retry together.
    fn backoff(&self, attempt: i32) -> chrono::Duration {
        let exponent = u32::try_from(attempt.saturating_sub(1))
            .unwrap_or(0)
            .min(30);
        let base = self.settings.backoff_base_ms.max(1);
        let ceiling = self
            .settings
            .backoff_max_secs
            .saturating_mul(1_000)
            .max(base);
        let delay = base.saturating_mul(1u64 << exponent).min(ceiling);
        let half = delay / 2;
        let ms = half + rand::rng().random_range(0..=half.max(1));
        chrono::Duration::try_milliseconds(i64::try_from(ms).unwrap_or(i64::MAX))
            .unwrap_or(chrono::Duration::MAX)
    }

    async fn prune(&self) {
        let keep = secs(self.settings.keep_succeeded_hours.saturating_mul(3_600));
        let result = self
            .db
            .run(move |conn| {
                let before = Utc::now()
                    .checked_sub_signed(keep)
                    .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
                store::prune_succeeded(conn, before).map_err(DbError::from)
            })
            .await;
        match result {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "pruned old succeeded jobs"),
            Err(e) => tracing::warn!(error = %e, "cannot prune old jobs"),
        }
    }
}

/// Settings are validated to sane ranges, but the runner never panics on time arithmetic.
fn secs(seconds: u64) -> chrono::Duration {
    chrono::Duration::try_seconds(i64::try_from(seconds).unwrap_or(i64::MAX))
        .unwrap_or(chrono::Duration::MAX)
}

fn later(from: chrono::DateTime<Utc>, by: chrono::Duration) -> chrono::DateTime<Utc> {
    from.checked_add_signed(by)
        .unwrap_or(chrono::DateTime::<Utc>::MAX_UTC)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

fn jittered(base: Duration) -> Duration {
    base.mul_f64(rand::rng().random_range(0.8..1.2))
}
