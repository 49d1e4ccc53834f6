//! `/admin`: the state of the deployment at a glance — people, rooms, live connections on
//! this node, the job queue, the assistant's providers, today's usage and the latest security
//! events.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use serde_json::json;

use super::{Action, Notice, Staff, context, timestamp};
use crate::error::AppError;
use crate::schema::{audit_events, jobs, rooms, tenants, usage_daily, users};
use crate::web::pages::{Page, html};
use crate::web::{AppState, get};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/admin", page))
        .service(get("/api/v1/admin/dashboard", api));
}

/// Events a security team watches.
const SECURITY_EVENTS: [&str; 14] = [
    "login.failed",
    "account.locked",
    "user.disabled",
    "user.unlocked",
    "2fa.disabled",
    "2fa.reset_by_admin",
    "2fa.recovery_code_used",
    "password.reset",
    "token.created",
    "membership.role_changed",
    "membership.added",
    "edge.policy_saved",
    "edge.policy_rolled_back",
    "user.signed_out_everywhere",
];

#[derive(Debug, Serialize)]
pub struct Dashboard {
    users: i64,
    disabled_users: i64,
    workspaces: i64,
    rooms: i64,
    live_connections: usize,
    jobs: serde_json::Value,
    providers: Vec<serde_json::Value>,
    today: serde_json::Value,
    security_events: Vec<serde_json::Value>,
    edge_version: i64,
}

async fn load(state: &AppState) -> Result<Dashboard, AppError> {
    let today = Utc::now().format("%Y-%m-%d").to_string();
    type Event = (
        i64,
        NaiveDateTime,
        String,
        Option<i64>,
        Option<String>,
        Option<String>,
    );
    let (users_n, disabled, workspaces, rooms_n, job_counts, usage, events) = state
        .db
        .run(move |conn| -> Result<_, AppError> {
            let users_n: i64 = users::table.count().get_result(conn)?;
            let disabled: i64 = users::table
                .filter(users::disabled_at.is_not_null())
                .count()
                .get_result(conn)?;
            let workspaces: i64 = tenants::table.count().get_result(conn)?;
            let rooms_n: i64 = rooms::table
                .filter(rooms::archived_at.is_null())
                .count()
                .get_result(conn)?;
            let job_counts: Vec<(String, i64)> = jobs::table
                .group_by(jobs::state)
                .select((jobs::state, diesel::dsl::count_star()))
                .load(conn)?;
            let usage: Vec<(i64, i64)> = usage_daily::table
                .filter(usage_daily::day.eq(&today))
                .select((usage_daily::requests, usage_daily::tokens))
                .load(conn)?;
            let events: Vec<Event> = audit_events::table
                .filter(audit_events::event.eq_any(SECURITY_EVENTS))
                .order(audit_events::id.desc())
                .limit(15)
                .select((
                    audit_events::id,
                    audit_events::at,
                    audit_events::event,
                    audit_events::actor_user_id,
                    audit_events::subject,
                    audit_events::ip,
                ))
                .load(conn)?;
            Ok((
                users_n, disabled, workspaces, rooms_n, job_counts, usage, events,
            ))
        })
        .await?;
    let jobs: serde_json::Map<String, serde_json::Value> = ["queued", "running", "dead"]
        .iter()
        .map(|s| {
            let n = job_counts.iter().find(|c| c.0 == *s).map_or(0, |c| c.1);
            ((*s).to_owned(), n.into())
        })
        .collect();
    let providers = state
        .assistant
        .providers()
        .into_iter()
        .map(|p| {
            json!({
                "name": p.name,
                "kind": p.kind,
                "circuit": p.health.circuit,
                "up": p.health.last_check_ok,
            })
        })
        .collect();
    Ok(Dashboard {
        users: users_n,
        disabled_users: disabled,
        workspaces,
        rooms: rooms_n,
        live_connections: state.chat.hub().connections().len(),
        jobs: serde_json::Value::Object(jobs),
        providers,
        today: json!({
            "requests": usage.iter().map(|u| u.0).sum::<i64>(),
            "tokens": usage.iter().map(|u| u.1).sum::<i64>(),
        }),
        security_events: events
            .into_iter()
            .map(|(id, at, event, actor, subject, ip)| {
                json!({ "id": id, "at": timestamp(at), "event": event, "actor_user_id": actor, "subject": subject, "ip": ip })
            })
            .collect(),
        edge_version: state.edge.active().version,
    })
}

async fn page(
    state: web::Data<AppState>,
    page: Page,
    staff: Staff,
    query: web::Query<Notice>,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    let dashboard = load(&state).await?;
    let mut context = context(&state, &page, &staff, "dashboard");
    context.insert("d", &dashboard);
    query.into_inner().insert(&mut context);
    html(&state, "admin/dashboard.html", &context, StatusCode::OK)
}

#[utoipa::path(get, path = "/api/v1/admin/dashboard", tag = "admin", summary = "People, rooms, connections, jobs, providers, today's usage, security events (staff)", responses((status = 200, description = "OK"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn api(state: web::Data<AppState>, staff: Staff) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    Ok(HttpResponse::Ok().json(load(&state).await?))
}
