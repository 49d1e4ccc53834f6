//! `/admin/audit`: the audit log, filtered by actor, workspace, action and time, newest first,
//! a page at a time; `/admin/audit/export` streams the same selection as JSON Lines.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Action, Staff, context};
use crate::audit::{AuditRow, ExportedEvent};
use crate::db::DbConnection;
use crate::error::AppError;
use crate::schema::{audit_events, tenants, users};
use crate::web::pages::{Page, html};
use crate::web::{AppState, get};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/admin/audit", page))
        .service(get("/api/v1/admin/audit", api))
        .service(get("/admin/audit/export", export))
        .service(get("/api/v1/admin/audit/export", export));
}

const PAGE_SIZE: i64 = 100;
/// Rows read per database round trip while exporting.
const EXPORT_BATCH: i64 = 1_000;

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct Filter {
    /// A user id or an email address.
    #[serde(default)]
    actor: String,
    /// A workspace id or slug.
    #[serde(default)]
    tenant: String,
    /// An event name (`login.failed`), or a prefix ending in `.` or `*` (`login.`, `2fa*`).
    #[serde(default)]
    action: String,
    /// From this time (UTC; `2026-11-30T10:00` or RFC 3339).
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    /// Only events older than this id (the next page).
    before: Option<i64>,
}

/// The filter with its names resolved to ids.
struct Resolved {
    actor: Option<i64>,
    tenant: Option<i64>,
    action: Option<(String, bool)>,
    from: Option<NaiveDateTime>,
    to: Option<NaiveDateTime>,
}

fn parse_time(field: &str, text: &str) -> Result<Option<NaiveDateTime>, AppError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(Some(at.naive_utc()));
    }
    for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(at) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(Some(at));
        }
    }
    if let Ok(day) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(day.and_hms_opt(0, 0, 0));
    }
    Err(AppError::BadRequest(format!(
        "{field}: {text:?} is not a time (use 2026-11-30T10:00 or RFC 3339, UTC)"
    )))
}

fn resolve(conn: &mut DbConnection, filter: &Filter) -> Result<Resolved, AppError> {
    let actor = match filter.actor.trim() {
        "" => None,
        text => match text.parse::<i64>() {
            Ok(id) => Some(id),
            Err(_) => {
                let id: Option<i64> = users::table
                    .filter(users::email.eq(text.to_lowercase()))
                    .select(users::id)
                    .first(conn)
                    .optional()?;
                // Nobody with that address: a filter that matches nothing, not everything.
                Some(id.unwrap_or(-1))
            }
        },
    };
    let tenant = match filter.tenant.trim() {
        "" => None,
        text => match text.parse::<i64>() {
            Ok(id) => Some(id),
            Err(_) => {
                let id: Option<i64> = tenants::table
                    .filter(tenants::slug.eq(text.to_lowercase()))
                    .select(tenants::id)
                    .first(conn)
                    .optional()?;
                Some(id.unwrap_or(-1))
            }
        },
    };
    let action = match filter.action.trim() {
        "" => None,
        text if text.len() > 100 => {
            return Err(AppError::BadRequest(
                "action: at most 100 characters".to_owned(),
            ));
        }
        text => match text.strip_suffix('*') {
            Some(prefix) => Some((prefix.to_owned(), true)),
            None if text.ends_with('.') => Some((text.to_owned(), true)),
            None => Some((text.to_owned(), false)),
        },
    };
    Ok(Resolved {
        actor,
        tenant,
        action,
        from: parse_time("from", &filter.from)?,
        to: parse_time("to", &filter.to)?,
    })
}

fn select(
    conn: &mut DbConnection,
    filter: &Resolved,
    before: Option<i64>,
    limit: i64,
) -> QueryResult<Vec<AuditRow>> {
    let mut query = audit_events::table
        .order(audit_events::id.desc())
        .limit(limit)
        .select(AuditRow::as_select())
        .into_boxed();
    if let Some(before) = before {
        query = query.filter(audit_events::id.lt(before));
    }
    if let Some(actor) = filter.actor {
        query = query.filter(audit_events::actor_user_id.eq(actor));
    }
    if let Some(tenant) = filter.tenant {
        query = query.filter(audit_events::tenant_id.eq(tenant));
    }
    if let Some((action, prefix)) = &filter.action {
        if *prefix {
            let escaped = action
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            query = query.filter(audit_events::event.like(format!("{escaped}%")).escape('\\'));
        } else {
            query = query.filter(audit_events::event.eq(action.clone()));
        }
    }
    if let Some(from) = filter.from {
        query = query.filter(audit_events::at.ge(from));
    }
    if let Some(to) = filter.to {
        query = query.filter(audit_events::at.le(to));
    }
    query.load(conn)
}

async fn load(state: &AppState, filter: Filter) -> Result<Vec<ExportedEvent>, AppError> {
    state
        .db
        .run(move |conn| -> Result<_, AppError> {
            let resolved = resolve(conn, &filter)?;
            let rows = select(conn, &resolved, filter.before, PAGE_SIZE)?;
            Ok(rows.into_iter().map(ExportedEvent::from).collect())
        })
        .await
}

async fn page(
    state: web::Data<AppState>,
    page: Page,
    staff: Staff,
    query: web::Query<Filter>,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    let filter = query.into_inner();
    let (events, error) = match load(&state, filter.clone()).await {
        Ok(events) => (events, None),
        Err(AppError::BadRequest(message)) => (Vec::new(), Some(message)),
        Err(other) => return Err(other),
    };
    let next = (events.len() as i64 == PAGE_SIZE)
        .then(|| events.last().map(|e| e.id))
        .flatten();
    let export_query = serde_urlencoded_filter(&filter);
    let mut context = context(&state, &page, &staff, "audit");
    let shown: Vec<_> = events
        .iter()
        .map(|e| {
            json!({
                "id": e.id, "at": e.at, "event": e.event, "actor_user_id": e.actor_user_id,
                "tenant_id": e.tenant_id, "subject": e.subject, "ip": e.ip,
                "details": serde_json::to_string(&e.details).unwrap_or_default(),
            })
        })
        .collect();
    context.insert("events", &shown);
    context.insert("filter", &filter);
    context.insert("next", &next);
    context.insert("export_query", &export_query);
    context.insert("notice", &None::<String>);
    context.insert("error", &error);
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    html(&state, "admin/audit.html", &context, status)
}

/// The filter as a query string (without the page cursor), for the export link.
fn serde_urlencoded_filter(filter: &Filter) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in [
        ("actor", &filter.actor),
        ("tenant", &filter.tenant),
        ("action", &filter.action),
        ("from", &filter.from),
        ("to", &filter.to),
    ] {
        if !value.trim().is_empty() {
            out.append_pair(key, value.trim());
        }
    }
    out.finish()
}

#[utoipa::path(get, path = "/api/v1/admin/audit", tag = "admin", summary = "Audit events, newest first, filtered (staff)", params(("actor" = Option<String>, Query), ("tenant" = Option<String>, Query), ("action" = Option<String>, Query), ("from" = Option<String>, Query, format = DateTime), ("to" = Option<String>, Query, format = DateTime), ("before" = Option<i64>, Query)), responses((status = 200, description = "OK"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn api(
    state: web::Data<AppState>,
    staff: Staff,
    query: web::Query<Filter>,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    let events = load(&state, query.into_inner()).await?;
    Ok(HttpResponse::Ok().json(json!({ "events": events })))
}

/// Every matching event, newest first, as JSON Lines (one event per line), read from the
/// database in batches and streamed, so a large log never sits in memory.
#[utoipa::path(get, path = "/api/v1/admin/audit/export", tag = "admin", summary = "The same selection as JSON Lines (staff)", responses((status = 200, description = "OK"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn export(
    state: web::Data<AppState>,
    staff: Staff,
    query: web::Query<Filter>,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    let filter = query.into_inner();
    let check = filter.clone();
    let resolved = state.db.run(move |conn| resolve(conn, &check)).await?;
    let resolved = std::sync::Arc::new(resolved);
    let db = state.db.clone();
    let start = filter.before;
    let stream = futures_util::stream::unfold(Some(start), move |cursor| {
        let db = db.clone();
        let resolved = resolved.clone();
        async move {
            let before = cursor?;
            let batch = db
                .run(move |conn| -> Result<_, AppError> {
                    Ok(select(conn, &resolved, before, EXPORT_BATCH)?)
                })
                .await;
            match batch {
                Ok(rows) if rows.is_empty() => None,
                Ok(rows) => {
                    let next = if rows.len() as i64 == EXPORT_BATCH {
                        rows.last().map(|r| Some(r.id))
                    } else {
                        None
                    };
                    let mut text = String::new();
                    for row in rows {
                        if let Ok(line) = serde_json::to_string(&ExportedEvent::from(row)) {
                            text.push_str(&line);
                            text.push('\n');
                        }
                    }
                    Some((Ok::<_, actix_web::Error>(web::Bytes::from(text)), next))
                }
                Err(error) => {
                    tracing::error!(%error, "audit export failed part-way");
                    Some((
                        Err(actix_web::error::ErrorInternalServerError("export failed")),
                        None,
                    ))
                }
            }
        }
    });
    let name = format!(
        "attachment; filename=\"conclave-audit-{}.jsonl\"",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    );
    crate::audit::record_now(
        &state.db,
        crate::audit::AuditEvent {
            event: "audit.exported",
            actor_user_id: Some(staff.user_id()),
            subject: Some("audit".to_owned()),
            details: json!({ "filter": filter }),
            ..crate::audit::AuditEvent::default()
        },
    )
    .await?;
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .insert_header(("content-disposition", name))
        .streaming(stream))
}
