//! Day-to-day operations: `/admin/rooms` (archive, retention, legal hold), `/admin/jobs`
//! (queued/running/dead, retry, drop) and `/admin/billing` (orders, ledger, manual
//! adjustments with a reason).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Action, Input, Notice, Staff, action, answer, audited, context, input, timestamp};
use crate::audit;
use crate::db::write_transaction;
use crate::error::AppError;
use crate::schema::{billing_orders, credit_entries, jobs, room_members, rooms, tenants};
use crate::web::pages::{Page, html};
use crate::web::{AppState, get};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/admin/rooms", rooms_page))
        .service(get("/api/v1/admin/rooms", rooms_api))
        .service(get("/admin/jobs", jobs_page))
        .service(get("/api/v1/admin/jobs", jobs_api))
        .service(get("/admin/billing", billing_page))
        .service(get("/api/v1/admin/billing", billing_api));
    action(cfg, "/api/v1/admin/rooms/{id}/archive", archive);
    action(cfg, "/api/v1/admin/rooms/{id}/unarchive", unarchive);
    action(cfg, "/api/v1/admin/rooms/{id}/retention", retention);
    action(cfg, "/api/v1/admin/rooms/{id}/legal-hold", legal_hold);
    action(cfg, "/api/v1/admin/jobs/{id}/retry", retry_job);
    action(cfg, "/api/v1/admin/jobs/{id}/drop", drop_job);
    action(cfg, "/api/v1/admin/billing/adjustments", adjust);
}

const PAGE_SIZE: i64 = 200;

/// id, workspace slug, kind, name, privacy, retention, legal hold, archived at, created at.
type RoomListRow = (
    i64,
    String,
    String,
    String,
    String,
    Option<i32>,
    bool,
    Option<NaiveDateTime>,
    NaiveDateTime,
);
/// workspace, name, retention, legal hold, archived at.
type RoomState = (i64, String, Option<i32>, bool, Option<NaiveDateTime>);
/// id, queue, kind, state, attempts, max attempts, run at, last error, updated at.
type JobListRow = (
    i64,
    String,
    String,
    String,
    i32,
    i32,
    NaiveDateTime,
    Option<String>,
    NaiveDateTime,
);
/// id, workspace slug, plan, amount, currency, provider, state, created at.
type OrderListRow = (
    i64,
    String,
    String,
    i64,
    String,
    String,
    String,
    NaiveDateTime,
);

#[derive(Debug, Serialize)]
pub struct RoomRow {
    id: i64,
    tenant: String,
    kind: String,
    name: String,
    privacy: String,
    members: i64,
    retention_days: Option<i32>,
    legal_hold: bool,
    archived: bool,
    created_at: String,
}

#[derive(Deserialize, Default)]
struct RoomQuery {
    q: Option<String>,
    notice: Option<String>,
    error: Option<String>,
}

async fn load_rooms(state: &AppState, q: Option<String>) -> Result<Vec<RoomRow>, AppError> {
    let q = q.map(|q| q.trim().to_lowercase()).filter(|q| !q.is_empty());
    state
        .db
        .run(move |conn| -> Result<_, AppError> {
            let mut query = rooms::table
                .inner_join(tenants::table)
                .filter(diesel::dsl::not(rooms::id.eq_any(personal_chats())))
                .order(rooms::id.desc())
                .limit(PAGE_SIZE)
                .select((
                    rooms::id,
                    tenants::slug,
                    rooms::kind,
                    rooms::name,
                    rooms::privacy,
                    rooms::retention_days,
                    rooms::legal_hold,
                    rooms::archived_at,
                    rooms::created_at,
                ))
                .into_boxed();
            if let Some(q) = &q {
                let pattern = super::contains_pattern(q);
                query = query.filter(
                    super::lower(rooms::name)
                        .like(pattern.clone())
                        .escape('\\')
                        .or(tenants::slug.like(pattern).escape('\\')),
                );
            }
            let rows: Vec<RoomListRow> = query.load(conn)?;
            let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
            let counts: Vec<(i64, i64)> = room_members::table
                .filter(room_members::room_id.eq_any(&ids))
                .group_by(room_members::room_id)
                .select((room_members::room_id, diesel::dsl::count_star()))
                .load(conn)?;
            Ok(rows
                .into_iter()
                .map(
                    |(id, tenant, kind, name, privacy, retention, hold, archived, created)| {
                        RoomRow {
                            id,
                            tenant,
                            kind,
                            name,
                            privacy,
                            members: counts.iter().find(|c| c.0 == id).map_or(0, |c| c.1),
                            retention_days: retention,
                            legal_hold: hold,
                            archived: archived.is_some(),
                            created_at: timestamp(created),
                        }
                    },
                )
                .collect())
        })
        .await
}

async fn rooms_page(
    state: web::Data<AppState>,
    page: Page,
    staff: Staff,
    query: web::Query<RoomQuery>,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    let RoomQuery { q, notice, error } = query.into_inner();
    let rooms = load_rooms(&state, q.clone()).await?;
    let mut context = context(&state, &page, &staff, "rooms");
    context.insert("rooms", &rooms);
    context.insert("q", &q.unwrap_or_default());
    Notice { notice, error }.insert(&mut context);
    html(&state, "admin/rooms.html", &context, StatusCode::OK)
}

#[utoipa::path(get, path = "/api/v1/admin/rooms", tag = "admin", summary = "Rooms of every workspace, without people's personal chats (staff)", params(("q" = Option<String>, Query)), responses((status = 200, description = "OK"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn rooms_api(
    state: web::Data<AppState>,
    staff: Staff,
    query: web::Query<RoomQuery>,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    let rooms = load_rooms(&state, query.into_inner().q).await?;
    Ok(HttpResponse::Ok().json(json!({ "rooms": rooms })))
}

/// People's personal assistant chats: theirs alone, never listed or changed here.
fn personal_chats() -> diesel::dsl::Select<
    diesel::dsl::Filter<
        crate::schema::assistant_rooms::table,
        diesel::dsl::Eq<crate::schema::assistant_rooms::mode, &'static str>,
    >,
    crate::schema::assistant_rooms::room_id,
> {
    use crate::schema::assistant_rooms;
    assistant_rooms::table
        .filter(assistant_rooms::mode.eq("chat"))
        .select(assistant_rooms::room_id)
}

/// What an admin may change on a room.
enum RoomChange {
    Archived(bool),
    Retention(Option<i32>),
    LegalHold(bool),
}

async fn change_room(
    state: &AppState,
    staff: &Staff,
    request: &HttpRequest,
    room: i64,
    change: RoomChange,
) -> Result<serde_json::Value, AppError> {
    staff.require(Action::Operate)?;
    if let RoomChange::Retention(days) = change {
        crate::chat::rooms::check_retention(days)?;
    }
    let who = super::Who::of(staff, request);
    state
        .db
        .run(move |conn| {
            write_transaction(conn, |tx| -> Result<_, AppError> {
                let found: Option<RoomState> = rooms::table
                    .find(room)
                    .filter(diesel::dsl::not(rooms::id.eq_any(personal_chats())))
                    .select((
                        rooms::tenant_id,
                        rooms::name,
                        rooms::retention_days,
                        rooms::legal_hold,
                        rooms::archived_at,
                    ))
                    .first(tx)
                    .optional()?;
                let (tenant, name, retention, hold, archived) =
                    found.ok_or_else(|| AppError::NotFound("No such room.".to_owned()))?;
                let now = Utc::now().naive_utc();
                let target = rooms::table.find(room);
                let (event, before, after) = match change {
                    RoomChange::Archived(on) => {
                        if on != archived.is_some() {
                            diesel::update(target)
                                .set((
                                    rooms::archived_at.eq(on.then_some(now)),
                                    rooms::updated_at.eq(now),
                                ))
                                .execute(tx)?;
                        }
                        (
                            if on {
                                "room.archived"
                            } else {
                                "room.unarchived"
                            },
                            json!({ "archived": archived.is_some() }),
                            json!({ "archived": on }),
                        )
                    }
                    RoomChange::Retention(days) => {
                        diesel::update(target)
                            .set((rooms::retention_days.eq(days), rooms::updated_at.eq(now)))
                            .execute(tx)?;
                        (
                            "room.retention_changed",
                            json!({ "retention_days": retention }),
                            json!({ "retention_days": days }),
                        )
                    }
                    RoomChange::LegalHold(on) => {
                        diesel::update(target)
                            .set((rooms::legal_hold.eq(on), rooms::updated_at.eq(now)))
                            .execute(tx)?;
                        (
                            if on {
                                "room.legal_hold_set"
                            } else {
                                "room.legal_hold_lifted"
                            },
                            json!({ "legal_hold": hold }),
                            json!({ "legal_hold": on }),
                        )
                    }
                };
                let entry = audited(
                    event,
                    &who,
                    format!("room:{room}"),
                    Some(tenant),
                    before.clone(),
                    after.clone(),
                );
                audit::record(tx, &entry, now)?;
                Ok(json!({ "room_id": room, "name": name, "before": before, "after": after }))
            })
        })
        .await
}

#[utoipa::path(post, path = "/api/v1/admin/rooms/{id}/archive", params(("id" = i64, Path)), tag = "admin", summary = "Archive a room (operators)", responses((status = 200, description = "Done: before and after"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "No such thing", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn archive(
    state: web::Data<AppState>,
    staff: Staff,
    request: HttpRequest,
    path: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let outcome = change_room(
        &state,
        &staff,
        &request,
        path.into_inner(),
        RoomChange::Archived(true),
    )
    .await;
    answer(&request, "/admin/rooms", "archived", outcome)
}

#[utoipa::path(post, path = "/api/v1/admin/rooms/{id}/unarchive", params(("id" = i64, Path)), tag = "admin", summary = "Unarchive a room (operators)", responses((status = 200, description = "Done: before and after"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "No such thing", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn unarchive(
    state: web::Data<AppState>,
    staff: Staff,
    request: HttpRequest,
    path: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let outcome = change_room(
        &state,
        &staff,
        &request,
        path.into_inner(),
        RoomChange::Archived(false),
    )
    .await;
    answer(&request, "/admin/rooms", "unarchived", outcome)
}

#[derive(Deserialize, utoipa::ToSchema)]
struct RetentionInput {
    /// Days to keep messages; empty or absent: the workspace's setting applies.
    #[serde(default, deserialize_with = "empty_as_none")]
    #[schema(minimum = 1, maximum = 36500)]
    retention_days: Option<i32>,
}

/// Forms send an empty field for "none"; JSON sends null or a number.
fn empty_as_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Number(i32),
        Text(String),
    }
    match Option::<Value>::deserialize(d)? {
        None => Ok(None),
        Some(Value::Number(n)) => Ok(Some(n)),
        Some(Value::Text(text)) if text.trim().is_empty() => Ok(None),
        Some(Value::Text(text)) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom("retention_days: a whole number of days")),
    }
}

#[utoipa::path(post, path = "/api/v1/admin/rooms/{id}/retention", params(("id" = i64, Path)), tag = "admin", summary = "Set a room's retention in days, or null for the workspace's (operators)", request_body = RetentionInput, responses((status = 200, description = "Done: before and after"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "No such thing", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn retention(
    state: web::Data<AppState>,
    staff: Staff,
    request: HttpRequest,
    path: web::Path<i64>,
    body: Input<RetentionInput>,
) -> Result<HttpResponse, AppError> {
    let days = input(body).retention_days;
    let outcome = change_room(
        &state,
        &staff,
        &request,
        path.into_inner(),
        RoomChange::Retention(days),
    )
    .await;
    answer(&request, "/admin/rooms", "retention_changed", outcome)
}

#[derive(Deserialize, utoipa::ToSchema)]
struct HoldInput {
    /// `true`/`false` (JSON) or `on`/`off` (forms).
    #[schema(value_type = bool)]
    on: serde_json::Value,
}

#[utoipa::path(post, path = "/api/v1/admin/rooms/{id}/legal-hold", params(("id" = i64, Path)), tag = "admin", summary = "Put a room on legal hold or lift it (operators)", request_body = HoldInput, responses((status = 200, description = "Done: before and after"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "No such thing", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn legal_hold(
    state: web::Data<AppState>,
    staff: Staff,
    request: HttpRequest,
    path: web::Path<i64>,
    body: Input<HoldInput>,
) -> Result<HttpResponse, AppError> {
    let on = match input(body).on {
        serde_json::Value::Bool(on) => Ok(on),
        serde_json::Value::String(text) if text == "on" || text == "true" => Ok(true),
        serde_json::Value::String(text) if text == "off" || text == "false" => Ok(false),
        _ => Err(AppError::BadRequest("on: true or false".to_owned())),
    };
    let outcome = match on {
        Ok(on) => {
            change_room(
                &state,
                &staff,
                &request,
                path.into_inner(),
                RoomChange::LegalHold(on),
            )
            .await
        }
        Err(error) => Err(error),
    };
    answer(&request, "/admin/rooms", "legal_hold_changed", outcome)
}

#[derive(Debug, Serialize)]
pub struct JobRow {
    id: i64,
    queue: String,
    kind: String,
    state: String,
    attempts: i32,
    max_attempts: i32,
    run_at: String,
    last_error: Option<String>,
    updated_at: String,
}

#[derive(Deserialize, Default)]
struct JobQuery {
    state: Option<String>,
    notice: Option<String>,
    error: Option<String>,
}

const JOB_STATES: [&str; 4] = ["queued", "running", "dead", "succeeded"];

async fn load_jobs(
    state: &AppState,
    wanted: Option<String>,
) -> Result<(Vec<JobRow>, Vec<(String, i64)>), AppError> {
    let wanted = wanted.unwrap_or_else(|| "dead".to_owned());
    if !JOB_STATES.contains(&wanted.as_str()) {
        return Err(AppError::BadRequest(format!(
            "state: one of {}",
            JOB_STATES.join(", ")
        )));
    }
    state
        .db
        .run(move |conn| -> Result<_, AppError> {
            let counts: Vec<(String, i64)> = jobs::table
                .group_by(jobs::state)
                .select((jobs::state, diesel::dsl::count_star()))
                .load(conn)?;
            let rows: Vec<JobListRow> = jobs::table
                .filter(jobs::state.eq(&wanted))
                .order(jobs::updated_at.desc())
                .limit(PAGE_SIZE)
                .select((
                    jobs::id,
                    jobs::queue,
                    jobs::kind,
                    jobs::state,
                    jobs::attempts,
                    jobs::max_attempts,
                    jobs::run_at,
                    jobs::last_error,
                    jobs::updated_at,
                ))
                .load(conn)?;
            let rows = rows
                .into_iter()
                .map(
                    |(
                        id,
                        queue,
                        kind,
                        state,
                        attempts,
                        max_attempts,
                        run_at,
                        last_error,
                        updated,
                    )| JobRow {
                        id,
                        queue,
                        kind,
                        state,
                        attempts,
                        max_attempts,
                        run_at: timestamp(run_at),
                        last_error: last_error.map(|e| e.chars().take(500).collect()),
                        updated_at: timestamp(updated),
                    },
                )
                .collect();
            let counts = JOB_STATES
                .iter()
                .map(|s| {
                    let n = counts.iter().find(|c| c.0 == *s).map_or(0, |c| c.1);
                    ((*s).to_owned(), n)
                })
                .collect();
            Ok((rows, counts))
        })
        .await
}

async fn jobs_page(
    state: web::Data<AppState>,
    page: Page,
    staff: Staff,
    query: web::Query<JobQuery>,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    let JobQuery {
        state: wanted,
        notice,
        error,
    } = query.into_inner();
    let showing = wanted.clone().unwrap_or_else(|| "dead".to_owned());
    let (jobs, counts) = load_jobs(&state, wanted).await?;
    let mut context = context(&state, &page, &staff, "jobs");
    context.insert("jobs", &jobs);
    context.insert("counts", &counts);
    context.insert("showing", &showing);
    Notice { notice, error }.insert(&mut context);
    html(&state, "admin/jobs.html", &context, StatusCode::OK)
}

#[utoipa::path(get, path = "/api/v1/admin/jobs", tag = "admin", summary = "Jobs in a state, and the count in each (staff)", params(("state" = Option<String>, Query, description = "queued, running, dead (default) or succeeded", pattern = r"^(queued|running|dead|succeeded)$")), responses((status = 200, description = "OK"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn jobs_api(
    state: web::Data<AppState>,
    staff: Staff,
    query: web::Query<JobQuery>,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    let (jobs, counts) = load_jobs(&state, query.into_inner().state).await?;
    let counts: serde_json::Map<String, serde_json::Value> =
        counts.into_iter().map(|(s, n)| (s, n.into())).collect();
    Ok(HttpResponse::Ok().json(json!({ "jobs": jobs, "counts": counts })))
}

fn job_state(
    conn: &mut crate::db::DbConnection,
    id: i64,
) -> Result<(String, String, i32), AppError> {
    let found: Option<(String, String, i32)> = jobs::table
        .find(id)
        .select((jobs::state, jobs::kind, jobs::attempts))
        .first(conn)
        .optional()?;
    found.ok_or_else(|| AppError::NotFound("No such job.".to_owned()))
}

#[utoipa::path(post, path = "/api/v1/admin/jobs/{id}/retry", params(("id" = i64, Path)), tag = "admin", summary = "Queue a dead job again (operators)", responses((status = 200, description = "Queued"), (status = 409, description = "Not dead", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "No such thing", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn retry_job(
    state: web::Data<AppState>,
    staff: Staff,
    request: HttpRequest,
    path: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let id = path.into_inner();
    let outcome = async {
        staff.require(Action::Operate)?;
        let who = super::Who::of(&staff, &request);
        let result = state
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| -> Result<_, AppError> {
                    let (current, kind, attempts) = job_state(tx, id)?;
                    if current != "dead" {
                        return Err(AppError::Conflict(format!(
                            "Only dead jobs can be retried; this one is {current}."
                        )));
                    }
                    let now = Utc::now().naive_utc();
                    diesel::update(jobs::table.find(id))
                        .set((
                            jobs::state.eq("queued"),
                            jobs::attempts.eq(0),
                            jobs::run_at.eq(now),
                            jobs::locked_by.eq(None::<String>),
                            jobs::locked_until.eq(None::<NaiveDateTime>),
                            jobs::finished_at.eq(None::<NaiveDateTime>),
                            jobs::updated_at.eq(now),
                        ))
                        .execute(tx)?;
                    let entry = audited(
                        "job.retried",
                        &who,
                        format!("job:{id}"),
                        None,
                        json!({ "state": current, "attempts": attempts }),
                        json!({ "state": "queued", "attempts": 0 }),
                    );
                    audit::record(tx, &entry, now)?;
                    Ok(json!({ "job_id": id, "kind": kind, "state": "queued" }))
                })
            })
            .await;
        state.queue.wake();
        result
    }
    .await;
    answer(&request, "/admin/jobs?state=dead", "retried", outcome)
}

#[utoipa::path(post, path = "/api/v1/admin/jobs/{id}/drop", params(("id" = i64, Path)), tag = "admin", summary = "Delete a job that is not running (operators)", responses((status = 200, description = "Done: before and after"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "No such thing", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn drop_job(
    state: web::Data<AppState>,
    staff: Staff,
    request: HttpRequest,
    path: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let id = path.into_inner();
    let outcome = async {
        staff.require(Action::Operate)?;
        let who = super::Who::of(&staff, &request);
        state
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| -> Result<_, AppError> {
                    let (current, kind, attempts) = job_state(tx, id)?;
                    if current == "running" {
                        return Err(AppError::Conflict(
                            "A running job cannot be dropped; wait for it to finish or fail."
                                .to_owned(),
                        ));
                    }
                    diesel::delete(jobs::table.find(id)).execute(tx)?;
                    let entry = audited(
                        "job.dropped",
                        &who,
                        format!("job:{id}"),
                        None,
                        json!({ "state": current, "kind": kind, "attempts": attempts }),
                        json!(null),
                    );
                    audit::record(tx, &entry, Utc::now().naive_utc())?;
                    Ok(json!({ "job_id": id, "kind": kind, "dropped": true }))
                })
            })
            .await
    }
    .await;
    answer(&request, "/admin/jobs", "dropped", outcome)
}

#[derive(Debug, Serialize)]
pub struct OrderRow {
    id: i64,
    tenant: String,
    plan: String,
    amount: String,
    provider: String,
    state: String,
    created_at: String,
}

#[derive(Debug, Serialize)]
pub struct EntryRow {
    id: i64,
    tenant: String,
    kind: String,
    amount: i64,
    balance_after: i64,
    reason: String,
    created_at: String,
}

async fn load_billing(
    state: &AppState,
) -> Result<(Vec<OrderRow>, Vec<EntryRow>, Vec<(i64, String)>), AppError> {
    state
        .db
        .run(|conn| -> Result<_, AppError> {
            let orders: Vec<OrderListRow> = billing_orders::table
                .inner_join(tenants::table)
                .order(billing_orders::id.desc())
                .limit(PAGE_SIZE)
                .select((
                    billing_orders::id,
                    tenants::slug,
                    billing_orders::plan,
                    billing_orders::amount_minor,
                    billing_orders::currency,
                    billing_orders::provider,
                    billing_orders::state,
                    billing_orders::created_at,
                ))
                .load(conn)?;
            let entries: Vec<(i64, String, String, i64, i64, String, NaiveDateTime)> =
                credit_entries::table
                    .inner_join(tenants::table)
                    .order(credit_entries::id.desc())
                    .limit(PAGE_SIZE)
                    .select((
                        credit_entries::id,
                        tenants::slug,
                        credit_entries::kind,
                        credit_entries::amount,
                        credit_entries::balance_after,
                        credit_entries::reason,
                        credit_entries::created_at,
                    ))
                    .load(conn)?;
            let tenants: Vec<(i64, String)> = tenants::table
                .order(tenants::id)
                .limit(1000)
                .select((tenants::id, tenants::slug))
                .load(conn)?;
            Ok((
                orders
                    .into_iter()
                    .map(
                        |(id, tenant, plan, amount, currency, provider, state, created)| OrderRow {
                            id,
                            tenant,
                            plan,
                            amount: crate::billing::plans::money(amount, &currency),
                            provider,
                            state,
                            created_at: timestamp(created),
                        },
                    )
                    .collect(),
                entries
                    .into_iter()
                    .map(
                        |(id, tenant, kind, amount, balance_after, reason, created)| EntryRow {
                            id,
                            tenant,
                            kind,
                            amount,
                            balance_after,
                            reason,
                            created_at: timestamp(created),
                        },
                    )
                    .collect(),
                tenants,
            ))
        })
        .await
}

async fn billing_page(
    state: web::Data<AppState>,
    page: Page,
    staff: Staff,
    query: web::Query<Notice>,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    let (orders, entries, tenants) = load_billing(&state).await?;
    let mut context = context(&state, &page, &staff, "billing");
    context.insert("orders", &orders);
    context.insert("entries", &entries);
    context.insert("tenants", &tenants);
    query.into_inner().insert(&mut context);
    html(&state, "admin/billing.html", &context, StatusCode::OK)
}

#[utoipa::path(get, path = "/api/v1/admin/billing", tag = "admin", summary = "Recent orders and credit entries of every workspace (staff)", responses((status = 200, description = "OK"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn billing_api(state: web::Data<AppState>, staff: Staff) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    let (orders, entries, _) = load_billing(&state).await?;
    Ok(HttpResponse::Ok().json(json!({ "orders": orders, "ledger": entries })))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct AdjustInput {
    tenant_id: i64,
    #[schema(schema_with = crate::api_docs::nonzero_integer)]
    amount: i64,
    #[schema(max_length = 500, pattern = r"\S")]
    reason: String,
}

#[utoipa::path(post, path = "/api/v1/admin/billing/adjustments", tag = "admin", summary = "Add or take away credits with a reason (admins)", request_body = AdjustInput, responses((status = 200, description = "Done: before and after"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "No such thing", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn adjust(
    state: web::Data<AppState>,
    staff: Staff,
    request: HttpRequest,
    body: Input<AdjustInput>,
) -> Result<HttpResponse, AppError> {
    let body = input(body);
    let outcome = async {
        staff.require(Action::Administer)?;
        let balance = crate::billing::handlers::adjust_credits(
            &state,
            staff.user_id(),
            crate::web::client_ip(&request),
            body.tenant_id,
            body.amount,
            &body.reason,
        )
        .await?;
        Ok(json!({ "tenant_id": body.tenant_id, "balance": balance }))
    }
    .await;
    answer(&request, "/admin/billing", "adjusted", outcome)
}
