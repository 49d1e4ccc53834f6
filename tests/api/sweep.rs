//! The recurring clean-up of expired sessions and mailed links.

use chrono::{Duration as TimeDelta, Utc};
use conclave::auth::sweep::{self, SWEEP_JOB};
use conclave::db::DbError;
use conclave::schema::{email_tokens, jobs, sessions};
use diesel::prelude::*;

use crate::helpers::{spawn_app, wait_for_job};

async fn queued_sweeps(app: &crate::helpers::TestApp) -> Vec<(i64, chrono::NaiveDateTime)> {
    app.state
        .db
        .run(|conn| {
            jobs::table
                .filter(jobs::kind.eq(SWEEP_JOB))
                .filter(jobs::state.eq("queued"))
                .select((jobs::id, jobs::run_at))
                .load(conn)
                .map_err(DbError::from)
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn expired_sessions_and_links_are_swept_and_the_sweep_reschedules_itself_once() {
    let app = spawn_app().await;
    let user = app
        .create_user("ada@example.com", "correct horse battery staple", false)
        .await;
    let sessions_store = &app.state.sessions;
    let live = sessions_store
        .create(user, None, None)
        .await
        .unwrap()
        .info
        .id;
    let expired = sessions_store
        .create(user, None, None)
        .await
        .unwrap()
        .info
        .id;
    let idle = sessions_store
        .create(user, None, None)
        .await
        .unwrap()
        .info
        .id;
    let (expired_id, idle_id) = (expired.clone(), idle.clone());
    app.state
        .db
        .run(move |conn| {
            let now = Utc::now().naive_utc();
            diesel::update(sessions::table.find(&expired_id))
                .set(sessions::expires_at.eq(now - TimeDelta::seconds(1)))
                .execute(conn)?;
            diesel::update(sessions::table.find(&idle_id))
                .set(sessions::last_seen_at.eq(now - TimeDelta::days(30)))
                .execute(conn)?;
            conclave::auth::email_tokens::issue(
                conn,
                user,
                conclave::auth::email_tokens::Purpose::Verify,
                TimeDelta::hours(1),
                now - TimeDelta::days(3),
            )?;
            Ok::<_, DbError>(())
        })
        .await
        .unwrap();

    // Start-up scheduled exactly one sweep; scheduling again (another node) adds none.
    sweep::schedule(&app.state.queue).await.unwrap();
    let scheduled = queued_sweeps(&app).await;
    assert_eq!(scheduled.len(), 1, "{scheduled:?}");

    // Make it due now and let the runner do it.
    let id = scheduled[0].0;
    app.state
        .db
        .run(move |conn| {
            diesel::update(jobs::table.find(id))
                .set(jobs::run_at.eq(Utc::now().naive_utc()))
                .execute(conn)
                .map_err(DbError::from)
        })
        .await
        .unwrap();
    app.state.queue.wake();
    wait_for_job(&app.state.queue, id, |job| job.state == "succeeded").await;

    let remaining: Vec<String> = app
        .state
        .db
        .run(|conn| {
            sessions::table
                .select(sessions::id)
                .load(conn)
                .map_err(DbError::from)
        })
        .await
        .unwrap();
    assert_eq!(remaining, vec![live]);
    let tokens: i64 = app
        .state
        .db
        .run(|conn| {
            email_tokens::table
                .count()
                .get_result(conn)
                .map_err(DbError::from)
        })
        .await
        .unwrap();
    assert_eq!(tokens, 0);

    let next = queued_sweeps(&app).await;
    assert_eq!(next.len(), 1, "exactly one next sweep: {next:?}");
    let in_ten = Utc::now().naive_utc() + TimeDelta::minutes(10);
    assert!(
        (next[0].1 - in_ten).num_seconds().abs() < 30,
        "next sweep at {}",
        next[0].1
    );
}
