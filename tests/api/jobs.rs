//! The durable job queue on the configured backend: transactional enqueue, retries with
//! backoff, dead jobs, scheduling, lease recovery, and two worker pools racing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use conclave::db::Db;
use conclave::jobs::{JobError, JobRegistry, JobRow, NewJob, Queue, Runner, RunnerHandle};
use conclave::schema::jobs;
use conclave::settings::Settings;
use diesel::prelude::*;

use crate::helpers::{TestDatabase, eventually, test_settings, wait_for_job};

struct Fixture {
    settings: Settings,
    db: Db,
    queue: Queue,
    _dir: tempfile::TempDir,
    _database: TestDatabase,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::new();
    let settings = test_settings(dir.path().to_path_buf(), &database.url);
    let db = Db::connect(&settings).await.unwrap();
    db.migrate().await.unwrap();
    let queue = Queue::new(db.clone(), settings.jobs.max_attempts);
    Fixture {
        settings,
        db,
        queue,
        _dir: dir,
        _database: database,
    }
}

/// Runs a runner over `queue` with `registry`.
fn start(queue: &Queue, registry: JobRegistry, settings: &Settings) -> RunnerHandle {
    Runner::new(queue, registry, settings.jobs.clone()).spawn(Duration::from_secs(2))
}

async fn job(db: &Db, id: i64) -> JobRow {
    db.run(move |conn| {
        jobs::table
            .find(id)
            .select(JobRow::as_select())
            .first(conn)
            .map_err(conclave::db::DbError::from)
    })
    .await
    .unwrap()
}

async fn wait_for_state(f: &Fixture, id: i64, state: &str) -> JobRow {
    wait_for_job(&f.queue, id, |job| job.state == state).await
}

/// Makes job `id` look claimed by a node that died: running, lease expired, `attempts` used.
async fn simulate_crashed_claim(db: &Db, id: i64, attempts: i32) {
    let past = (Utc::now() - chrono::Duration::seconds(5)).naive_utc();
    db.run(move |conn| {
        diesel::update(jobs::table.find(id))
            .set((
                jobs::state.eq("running"),
                jobs::attempts.eq(attempts),
                jobs::locked_by.eq(Some("crashed-node")),
                jobs::locked_until.eq(Some(past)),
            ))
            .execute(conn)
            .map_err(conclave::db::DbError::from)
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_job_runs_once_and_is_marked_succeeded() {
    let f = fixture().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut registry = JobRegistry::default();
    let sink = seen.clone();
    registry.register("test.echo", move |job| {
        let sink = sink.clone();
        async move {
            let text: String = job.payload()?;
            sink.lock().unwrap().push(text);
            Ok(())
        }
    });
    let runner = start(&f.queue, registry, &f.settings);
    let id = f
        .queue
        .enqueue(NewJob::new("test.echo", &"hello").unwrap())
        .await
        .unwrap();
    let row = wait_for_state(&f, id, "succeeded").await;
    assert_eq!(row.attempts, 1);
    assert!(row.finished_at.is_some());
    assert!(row.locked_by.is_none());
    assert_eq!(*seen.lock().unwrap(), vec!["hello".to_owned()]);
    runner.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn enqueue_commits_and_rolls_back_with_the_callers_transaction() {
    let f = fixture().await;
    let queue = f.queue.clone();
    let kept =
        f.db.run(move |conn| {
            conn.transaction(|tx| queue.enqueue_in(tx, &NewJob::new("test.kept", &1).unwrap()))
                .map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap();
    let queue = f.queue.clone();
    let rolled_back: Result<i64, diesel::result::Error> =
        f.db.run(move |conn| {
            Ok::<_, conclave::db::DbError>(conn.transaction(|tx| {
                queue.enqueue_in(tx, &NewJob::new("test.lost", &2).unwrap())?;
                Err(diesel::result::Error::RollbackTransaction)
            }))
        })
        .await
        .unwrap();
    assert!(rolled_back.is_err());
    let kinds: Vec<String> =
        f.db.run(|conn| {
            jobs::table
                .select(jobs::kind)
                .load(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap();
    assert_eq!(kinds, vec!["test.kept".to_owned()]);
    assert_eq!(f.queue.get(kept).await.unwrap().unwrap().state, "queued");
}

#[tokio::test]
async fn failures_retry_with_backoff_then_go_dead_after_max_attempts() {
    let f = fixture().await;
    let attempts_seen = Arc::new(Mutex::new(Vec::new()));
    let mut registry = JobRegistry::default();
    let sink = attempts_seen.clone();
    registry.register("test.flaky", move |job| {
        let sink = sink.clone();
        async move {
            sink.lock()
                .unwrap()
                .push((job.attempt, std::time::Instant::now()));
            Err(JobError::Retry(anyhow::anyhow!(
                "upstream said no (attempt {})",
                job.attempt
            )))
        }
    });
    let runner = start(&f.queue, registry, &f.settings);
    let id = f
        .queue
        .enqueue(NewJob::new("test.flaky", &()).unwrap().max_attempts(3))
        .await
        .unwrap();
    let row = wait_for_state(&f, id, "dead").await;
    assert_eq!(row.attempts, 3);
    assert_eq!(
        row.last_error.as_deref(),
        Some("upstream said no (attempt 3)")
    );
    let seen = attempts_seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    // Backoff grows: base 20 ms → at least 10 ms before try 2, at least 20 ms before try 3.
    assert!(seen[1].1 - seen[0].1 >= Duration::from_millis(10));
    assert!(seen[2].1 - seen[1].1 >= Duration::from_millis(20));
    runner.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn permanent_failures_and_bad_payloads_go_dead_at_once() {
    let f = fixture().await;
    let mut registry = JobRegistry::default();
    registry.register("test.permanent", |_job| async {
        Err(JobError::Permanent(anyhow::anyhow!(
            "recipient does not exist"
        )))
    });
    registry.register("test.typed", |job| async move {
        let _: u32 = job.payload()?;
        Ok(())
    });
    let runner = start(&f.queue, registry, &f.settings);
    let permanent = f
        .queue
        .enqueue(NewJob::new("test.permanent", &()).unwrap())
        .await
        .unwrap();
    let bad_payload = f
        .queue
        .enqueue(NewJob::new("test.typed", &"not a number").unwrap())
        .await
        .unwrap();
    let row = wait_for_state(&f, permanent, "dead").await;
    assert_eq!(row.attempts, 1);
    assert_eq!(row.last_error.as_deref(), Some("recipient does not exist"));
    let row = wait_for_state(&f, bad_payload, "dead").await;
    assert_eq!(row.attempts, 1);
    assert!(
        row.last_error
            .unwrap()
            .contains("payload of test.typed job is invalid")
    );
    runner.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn scheduled_jobs_wait_for_their_time() {
    let f = fixture().await;
    let mut registry = JobRegistry::default();
    registry.register("test.later", |_job| async { Ok(()) });
    let runner = start(&f.queue, registry, &f.settings);
    let at = Utc::now() + chrono::Duration::milliseconds(1_500);
    let id = f
        .queue
        .enqueue(NewJob::new("test.later", &()).unwrap().run_at(at))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(job(&f.db, id).await.state, "queued", "ran before its time");
    let row = wait_for_state(&f, id, "succeeded").await;
    let finished = row.finished_at.unwrap().and_utc();
    assert!(
        finished >= at - chrono::Duration::milliseconds(5),
        "finished {finished} before {at}"
    );
    runner.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn jobs_of_a_crashed_worker_are_retried_when_the_lease_expires() {
    let f = fixture().await;
    let id = f
        .queue
        .enqueue(NewJob::new("test.orphan", &()).unwrap())
        .await
        .unwrap();
    simulate_crashed_claim(&f.db, id, 1).await;
    let mut registry = JobRegistry::default();
    registry.register("test.orphan", |_job| async { Ok(()) });
    let runner = start(&f.queue, registry, &f.settings);
    let row = wait_for_state(&f, id, "succeeded").await;
    assert_eq!(row.attempts, 2, "the crashed attempt counts");
    runner.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_runner_leaves_kinds_it_does_not_know_for_another_node() {
    let f = fixture().await;
    let mut registry = JobRegistry::default();
    registry.register("test.known", |_job| async { Ok(()) });
    let runner = start(&f.queue, registry, &f.settings);
    let unknown = f
        .queue
        .enqueue(NewJob::new("test.from_newer_version", &()).unwrap())
        .await
        .unwrap();
    let known = f
        .queue
        .enqueue(NewJob::new("test.known", &()).unwrap())
        .await
        .unwrap();
    wait_for_state(&f, known, "succeeded").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let row = job(&f.db, unknown).await;
    assert_eq!((row.state.as_str(), row.attempts), ("queued", 0));
    runner.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn two_worker_pools_racing_run_every_job_exactly_once() {
    let f = fixture().await;
    const JOBS: i64 = 120;
    // Two independent pools, as two nodes would have.
    let other_db = Db::connect(&f.settings).await.unwrap();
    let other_queue = Queue::new(other_db, f.settings.jobs.max_attempts);

    let runs: Arc<Mutex<HashMap<i64, Vec<String>>>> = Arc::default();
    let make_registry = |node: &'static str| {
        let runs = runs.clone();
        let mut registry = JobRegistry::default();
        registry.register("test.count", move |job| {
            let runs = runs.clone();
            async move {
                let n: i64 = job.payload()?;
                runs.lock()
                    .unwrap()
                    .entry(n)
                    .or_default()
                    .push(node.to_owned());
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(())
            }
        });
        registry
    };
    for n in 0..JOBS {
        f.queue
            .enqueue(NewJob::new("test.count", &n).unwrap())
            .await
            .unwrap();
    }
    let a = start(&f.queue, make_registry("a"), &f.settings);
    let b = start(&other_queue, make_registry("b"), &f.settings);

    let done = eventually(Duration::from_secs(60), || async {
        let succeeded: i64 =
            f.db.run(|conn| {
                jobs::table
                    .filter(jobs::state.eq("succeeded"))
                    .count()
                    .get_result(conn)
                    .map_err(conclave::db::DbError::from)
            })
            .await
            .unwrap();
        (succeeded == JOBS).then_some(())
    })
    .await;
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
    assert!(done.is_some(), "not every job succeeded in time");

    let runs = runs.lock().unwrap();
    assert_eq!(runs.len() as i64, JOBS);
    let twice: Vec<_> = runs.iter().filter(|(_, nodes)| nodes.len() != 1).collect();
    assert!(twice.is_empty(), "jobs ran more than once: {twice:?}");
    let by_a = runs.values().filter(|nodes| nodes[0] == "a").count();
    let by_b = runs.values().filter(|nodes| nodes[0] == "b").count();
    assert!(
        by_a > 0 && by_b > 0,
        "both pools should have worked: a={by_a} b={by_b}"
    );
}

#[tokio::test]
async fn a_panicking_handler_is_a_failed_attempt_not_a_lost_job() {
    let f = fixture().await;
    let mut registry = JobRegistry::default();
    registry.register("test.panics", |_job| async {
        let empty: Vec<u8> = Vec::new();
        if empty.is_empty() {
            panic!("index out of bounds in a handler");
        }
        Ok(())
    });
    let runner = start(&f.queue, registry, &f.settings);
    let id = f
        .queue
        .enqueue(NewJob::new("test.panics", &()).unwrap().max_attempts(2))
        .await
        .unwrap();
    let row = wait_for_state(&f, id, "dead").await;
    assert_eq!(row.attempts, 2, "retried once, then dead");
    assert_eq!(
        row.last_error.as_deref(),
        Some("the handler panicked: index out of bounds in a handler")
    );
    // The runner survived the panics and still runs jobs.
    let mut check = JobRegistry::default();
    check.register("test.after", |_job| async { Ok(()) });
    runner.shutdown(Duration::from_secs(1)).await;
    let runner = start(&f.queue, check, &f.settings);
    let after = f
        .queue
        .enqueue(NewJob::new("test.after", &()).unwrap())
        .await
        .unwrap();
    wait_for_state(&f, after, "succeeded").await;
    runner.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_job_whose_last_attempt_was_lost_is_marked_dead_not_rerun() {
    let f = fixture().await;
    let id = f
        .queue
        .enqueue(NewJob::new("test.doomed", &()).unwrap().max_attempts(3))
        .await
        .unwrap();
    simulate_crashed_claim(&f.db, id, 3).await;
    let ran = Arc::new(Mutex::new(0));
    let counter = ran.clone();
    let mut registry = JobRegistry::default();
    registry.register("test.doomed", move |_job| {
        let counter = counter.clone();
        async move {
            *counter.lock().unwrap() += 1;
            Ok(())
        }
    });
    let runner = start(&f.queue, registry, &f.settings);
    let row = wait_for_state(&f, id, "dead").await;
    assert_eq!(row.attempts, 3);
    assert!(
        row.last_error
            .unwrap()
            .contains("worker running the last attempt was lost")
    );
    assert_eq!(*ran.lock().unwrap(), 0, "no fourth attempt");
    runner.shutdown(Duration::from_secs(1)).await;
}
