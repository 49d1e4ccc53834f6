//! `/admin/backups`: the backups in `backup.dir`, newest first with what their manifests say,
//! how old the newest is, and "Back up now" (operators), which queues the scheduled backup
//! job at once.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Action, Notice, Staff, answer, audited, context};
use crate::audit;
use crate::backup;
use crate::db::write_transaction;
use crate::error::AppError;
use crate::jobs::NewJob;
use crate::web::pages::{Page, html};
use crate::web::{AppState, get};

pub fn configure(cfg: &mut web::ServiceConfig) {
    // One resource per path, so GET and POST share it (two would answer POST with 405).
    cfg.service(get("/admin/backups", page).post(back_up_now))
        .service(get("/api/v1/admin/backups", api).post(back_up_now));
}

/// One backup file as the admin area shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Row {
    file: String,
    bytes: u64,
    /// `bytes` for people: `508 KiB`, `3.2 MiB`.
    size: String,
    created_at: Option<String>,
    backend: Option<String>,
    schema_version: Option<String>,
    version: Option<String>,
    tables: usize,
    rows: i64,
    /// Why the file could not be read.
    problem: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Backups {
    dir: String,
    enabled: bool,
    interval_hours: u32,
    keep_daily: usize,
    keep_weekly: usize,
    /// When the newest readable backup was taken, and how long ago (hours, and for people).
    last_success: Option<String>,
    age_hours: Option<f64>,
    age: Option<String>,
    /// Older than two intervals: the schedule is not working.
    stale: bool,
    backups: Vec<Row>,
}

async fn load(state: &AppState) -> Result<Backups, AppError> {
    let settings = state.settings.clone();
    let dir = backup::backup_dir(&settings);
    let listed = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || backup::list(&dir))
            .await
            .map_err(|e| AppError::Internal(anyhow::anyhow!("{e}")))?
    };
    let newest = listed.iter().find_map(backup::Listed::created_at);
    let backups = listed
        .into_iter()
        .map(|l| {
            let manifest = l.manifest.as_ref();
            Row {
                created_at: manifest
                    .map(|m| m.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string()),
                backend: manifest.map(|m| m.backend.clone()),
                schema_version: manifest.map(|m| m.schema_version.clone()),
                version: manifest.map(|m| m.version.clone()),
                tables: manifest.map_or(0, |m| m.tables.len()),
                rows: manifest.map_or(0, |m| m.tables.values().sum()),
                file: l.file,
                size: human_size(l.bytes),
                bytes: l.bytes,
                problem: l.problem,
            }
        })
        .collect();
    Ok(Backups {
        dir: dir.display().to_string(),
        enabled: settings.backup.enabled,
        interval_hours: settings.backup.interval_hours,
        keep_daily: settings.backup.keep_daily,
        keep_weekly: settings.backup.keep_weekly,
        last_success: newest.map(|t| t.to_rfc3339()),
        age_hours: newest.map(|t| (Utc::now() - t).num_minutes() as f64 / 60.0),
        age: newest.map(|t| ago(Utc::now() - t)),
        stale: newest.is_none_or(|t| {
            Utc::now() - t > chrono::TimeDelta::hours(2 * i64::from(settings.backup.interval_hours))
        }),
        backups,
    })
}

fn ago(elapsed: chrono::TimeDelta) -> String {
    let minutes = elapsed.num_minutes().max(0);
    match minutes {
        0 => "just now".to_owned(),
        1 => "a minute ago".to_owned(),
        2..=89 => format!("{minutes} minutes ago"),
        90..=2_879 => format!("{:.1} hours ago", minutes as f64 / 60.0),
        _ => format!("{} days ago", minutes / 1_440),
    }
}

fn human_size(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b < KIB {
        format!("{bytes} B")
    } else if b < KIB * KIB {
        format!("{:.0} KiB", b / KIB)
    } else if b < KIB * KIB * KIB {
        format!("{:.1} MiB", b / KIB / KIB)
    } else {
        format!("{:.2} GiB", b / KIB / KIB / KIB)
    }
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    notice: Option<String>,
    error: Option<String>,
}

async fn page(
    state: web::Data<AppState>,
    page: Page,
    staff: Staff,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    let PageQuery { notice, error } = query.into_inner();
    let backups = load(&state).await?;
    let mut context = context(&state, &page, &staff, "backups");
    context.insert("view", &backups);
    Notice { notice, error }.insert(&mut context);
    html(&state, "admin/backups.html", &context, StatusCode::OK)
}

#[utoipa::path(get, path = "/api/v1/admin/backups", tag = "admin", summary = "The backups in backup.dir, newest first (staff)", responses((status = 200, description = "OK", body = Backups), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json")))]
pub(super) async fn api(
    state: web::Data<AppState>,
    staff: Staff,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    Ok(HttpResponse::Ok().json(load(&state).await?))
}

#[utoipa::path(post, path = "/api/v1/admin/backups", tag = "admin", summary = "Take a backup now: queues the scheduled backup job (operators)", responses((status = 200, description = "Queued"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json")))]
pub(super) async fn back_up_now(
    state: web::Data<AppState>,
    staff: Staff,
    request: HttpRequest,
) -> Result<HttpResponse, AppError> {
    let outcome = async {
        staff.require(Action::Operate)?;
        let who = super::Who::of(&staff, &request);
        let queue = state.queue.clone();
        let result = state
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| -> Result<_, AppError> {
                    let job = NewJob {
                        kind: backup::JOB.to_owned(),
                        payload: serde_json::Value::Null,
                        queue: crate::jobs::DEFAULT_QUEUE.to_owned(),
                        run_at: None,
                        max_attempts: Some(1),
                    };
                    let id = queue.enqueue_in(tx, &job)?;
                    let entry = audited(
                        "backup.requested",
                        &who,
                        format!("job:{id}"),
                        None,
                        json!({}),
                        json!({ "job_id": id }),
                    );
                    audit::record(tx, &entry, Utc::now().naive_utc())?;
                    Ok(json!({ "job_id": id, "state": "queued" }))
                })
            })
            .await;
        state.queue.wake();
        result
    }
    .await;
    answer(&request, "/admin/backups", "queued", outcome)
}
