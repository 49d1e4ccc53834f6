//! Retention: a recurring job deletes messages older than their room's retention (or, when the
//! room sets none, its workspace's), with their search-index entries — unless the room is under
//! legal hold. Deletion removes the rows (not a tombstone); SQLite runs with `secure_delete`,
//! so the freed pages are zeroed, and PostgreSQL's autovacuum reclaims the dead rows.

use std::sync::Arc;

use chrono::{NaiveDateTime, TimeDelta, Utc};
use diesel::prelude::*;

use super::MemoryHistoryStore;
use crate::db::{Db, DbConnection, DbError, write_transaction};
use crate::jobs::{JobError, JobRegistry, Queue};
use crate::schema::{message_terms, messages, rooms, tenants};

pub const RETENTION_JOB: &str = "history.retention";
pub const RETENTION_EVERY: TimeDelta = TimeDelta::hours(1);
/// Messages deleted per statement, so one sweep never holds the write lock for long.
const BATCH: i64 = 500;

/// Deletes what retention says is expired; answers how many messages went.
pub fn purge_expired(conn: &mut DbConnection, now: NaiveDateTime) -> QueryResult<usize> {
    let mut deleted = 0;
    for (room_id, cutoff) in cutoffs(conn, now)? {
        deleted += purge_room(conn, room_id, cutoff)?;
    }
    Ok(deleted)
}

/// Every room with a retention period and not under legal hold, with the instant before which
/// its messages are expired.
fn cutoffs(conn: &mut DbConnection, now: NaiveDateTime) -> QueryResult<Vec<(i64, NaiveDateTime)>> {
    let rules: Vec<(i64, Option<i32>, Option<i32>)> = rooms::table
        .inner_join(tenants::table)
        .filter(rooms::legal_hold.eq(false))
        .filter(
            rooms::retention_days
                .is_not_null()
                .or(tenants::retention_days.is_not_null()),
        )
        .select((rooms::id, rooms::retention_days, tenants::retention_days))
        .load(conn)?;
    Ok(rules
        .into_iter()
        .filter_map(|(room_id, own, workspace)| {
            let days = own.or(workspace)?;
            let cutoff = now
                .checked_sub_signed(TimeDelta::days(i64::from(days)))
                .unwrap_or(NaiveDateTime::MIN);
            Some((room_id, cutoff))
        })
        .collect())
}

fn purge_room(conn: &mut DbConnection, room_id: i64, cutoff: NaiveDateTime) -> QueryResult<usize> {
    let mut deleted = 0;
    {
        loop {
            let ids: Vec<i64> = messages::table
                .filter(messages::room_id.eq(room_id))
                .filter(messages::created_at.lt(cutoff))
                .select(messages::id)
                .order(messages::id)
                .limit(BATCH)
                .load(conn)?;
            if ids.is_empty() {
                break;
            }
            diesel::delete(message_terms::table.filter(message_terms::message_id.eq_any(&ids)))
                .execute(conn)?;
            // Replies to a deleted message keep their place; their `reply_to` goes.
            diesel::update(messages::table.filter(messages::reply_to.eq_any(&ids)))
                .set(messages::reply_to.eq(None::<i64>))
                .execute(conn)?;
            deleted +=
                diesel::delete(messages::table.filter(messages::id.eq_any(&ids))).execute(conn)?;
        }
    }
    Ok(deleted)
}

/// Registers the job; it purges the stored history and the in-memory one of ephemeral rooms.
pub fn register_jobs(
    registry: &mut JobRegistry,
    db: Db,
    ephemeral: Arc<MemoryHistoryStore>,
    queue: Queue,
) {
    let shared = Arc::new((db, queue, ephemeral));
    registry.register(RETENTION_JOB, move |_job| {
        let shared = shared.clone();
        async move {
            let (db, queue, ephemeral) = (&shared.0, shared.1.clone(), shared.2.clone());
            let deleted = db
                .run(move |conn| {
                    write_transaction(conn, |tx| {
                        let now = Utc::now().naive_utc();
                        let mut deleted = 0;
                        for (room_id, cutoff) in cutoffs(tx, now)? {
                            deleted += purge_room(tx, room_id, cutoff)?;
                            deleted += ephemeral.purge_before(room_id, cutoff);
                        }
                        queue.ensure_scheduled_in(
                            tx,
                            RETENTION_JOB,
                            Utc::now() + RETENTION_EVERY,
                            false,
                        )?;
                        Ok::<_, DbError>(deleted)
                    })
                })
                .await
                .map_err(|e| JobError::Retry(e.into()))?;
            if deleted > 0 {
                tracing::info!(messages = deleted, "retention deleted expired messages");
            }
            Ok(())
        }
    });
}

/// Schedules the first run unless one is already waiting (call at start-up).
pub async fn schedule(queue: &Queue) -> Result<(), DbError> {
    queue
        .schedule_recurring(RETENTION_JOB, TimeDelta::minutes(2))
        .await
}
