//! The recurring clean-up of the accounts module: deletes sessions past their idle or absolute
//! expiry, mailed links that expired, unfinished provider sign-ins and spent CAPTCHAs, then schedules its next run. It runs as a durable job,
//! so exactly one node does it each time, and a crash only delays it.

use std::sync::Arc;

use chrono::{TimeDelta, Utc};
use diesel::prelude::*;

use super::email_tokens;
use crate::db::{Db, DbError, write_transaction};
use crate::jobs::{JobError, JobRegistry, Queue};
use crate::schema::sessions;
use crate::settings::SessionSettings;

pub const SWEEP_JOB: &str = "auth.sweep";
pub const SWEEP_EVERY: TimeDelta = TimeDelta::minutes(10);

/// Counts of what one sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub sessions: usize,
    pub email_tokens: usize,
    pub provider_flows: usize,
    pub captchas: usize,
}

pub fn register_jobs(registry: &mut JobRegistry, db: Db, queue: Queue, settings: SessionSettings) {
    let idle = TimeDelta::try_hours(i64::try_from(settings.idle_timeout_hours).unwrap_or(72))
        .unwrap_or(TimeDelta::MAX);
    let shared = Arc::new((db, queue));
    registry.register(SWEEP_JOB, move |_job| {
        let shared = shared.clone();
        async move {
            let (db, queue) = (&shared.0, shared.1.clone());
            let swept = db
                .run(move |conn| {
                    write_transaction(conn, |tx| {
                        let now = Utc::now().naive_utc();
                        let idle_since = now
                            .checked_sub_signed(idle)
                            .unwrap_or(chrono::NaiveDateTime::MIN);
                        let sessions = diesel::delete(
                            sessions::table.filter(
                                sessions::expires_at
                                    .le(now)
                                    .or(sessions::last_seen_at.le(idle_since)),
                            ),
                        )
                        .execute(tx)?;
                        let email_tokens = email_tokens::prune(tx, now)?;
                        let provider_flows = super::oidc::sweep_flows(tx, now)?;
                        let captchas = super::captcha::sweep_spent(tx, now)?;
                        queue.ensure_scheduled_in(
                            tx,
                            SWEEP_JOB,
                            Utc::now() + SWEEP_EVERY,
                            false,
                        )?;
                        Ok::<_, DbError>(Swept {
                            sessions,
                            email_tokens,
                            provider_flows,
                            captchas,
                        })
                    })
                })
                .await
                .map_err(|e| JobError::Retry(e.into()))?;
            if swept != Swept::default() {
                tracing::info!(
                    sessions = swept.sessions,
                    email_tokens = swept.email_tokens,
                    provider_flows = swept.provider_flows,
                    captchas = swept.captchas,
                    "swept expired sign-in data"
                );
            }
            Ok(())
        }
    });
}

/// Schedules the first run unless one is already waiting (call at start-up).
pub async fn schedule(queue: &Queue) -> Result<(), DbError> {
    queue
        .schedule_recurring(SWEEP_JOB, TimeDelta::minutes(1))
        .await
}
