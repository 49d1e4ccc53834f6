//! "My sessions": where I am signed in, and ending those sessions — `GET|DELETE
//! /api/v1/me/sessions[/{id}]` and the `/settings/security` page.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::identity::Identity;
use super::sessions::SessionRow;
use crate::audit::{self, AuditEvent, events};
use crate::error::AppError;
use crate::web::AppState;
use crate::web::pages::Page;

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::web::{get, resource};
    cfg.service(get("/api/v1/me/sessions", list_sessions).delete(revoke_other_sessions))
        .service(resource("/api/v1/me/sessions/{id}").delete(revoke_session))
        .service(get("/settings/security", security_page))
        .service(resource("/settings/sessions/{id}/revoke").post(revoke_session_form))
        .service(resource("/settings/sessions/revoke-others").post(revoke_others_form));
}

fn describe(row: &SessionRow, current: &str) -> serde_json::Value {
    json!({
        "id": row.id,
        "current": row.id == current,
        "created_at": row.created_at.and_utc().to_rfc3339(),
        "last_seen_at": row.last_seen_at.and_utc().to_rfc3339(),
        "expires_at": row.expires_at.and_utc().to_rfc3339(),
        "ip": row.ip,
        "user_agent": row.user_agent,
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/me/sessions",
    tag = "sessions",
    summary = "Where I am signed in",
    responses(
        (status = 200, description = "`{sessions: [...]}`")
    )
)]
async fn list_sessions(
    state: web::Data<AppState>,
    identity: Identity,
) -> Result<HttpResponse, AppError> {
    let rows = state.sessions.list_for_user(identity.user_id()).await?;
    let sessions: Vec<_> = rows
        .iter()
        .map(|row| describe(row, &identity.session.id))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "sessions": sessions })))
}

async fn audit_revoked(
    state: &AppState,
    request: &HttpRequest,
    user_id: i64,
    details: serde_json::Value,
) -> Result<(), AppError> {
    let (ip, user_agent) = crate::web::client_info(request);
    let ip = ip.map(|ip| ip.to_string());
    let event = AuditEvent {
        ip,
        user_agent,
        details,
        ..AuditEvent::by_user(events::SESSION_REVOKED, user_id)
    };
    audit::record_now(&state.db, event).await?;
    Ok(())
}

/// Ends one of my sessions (another device, or this one). 404 for anyone else's.
async fn revoke(
    state: &AppState,
    request: &HttpRequest,
    identity: &Identity,
    id: &str,
) -> Result<(), AppError> {
    if !state.sessions.revoke_own(identity.user_id(), id).await? {
        return Err(AppError::NotFound("No such session.".to_owned()));
    }
    audit_revoked(
        state,
        request,
        identity.user_id(),
        json!({ "scope": "one" }),
    )
    .await
}

async fn revoke_others(
    state: &AppState,
    request: &HttpRequest,
    identity: &Identity,
) -> Result<usize, AppError> {
    let count = state
        .sessions
        .revoke_all_for_user(identity.user_id(), Some(&identity.session.id))
        .await?;
    audit_revoked(
        state,
        request,
        identity.user_id(),
        json!({ "scope": "others", "count": count }),
    )
    .await?;
    Ok(count)
}

#[utoipa::path(
    delete,
    path = "/api/v1/me/sessions/{id}",
    tag = "sessions",
    summary = "End one of my sessions",
    params(("id" = String, Path)),
    responses(
        (status = 204, description = "Ended"),
        (status = 404, description = "No such session of mine", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn revoke_session(
    state: web::Data<AppState>,
    request: HttpRequest,
    identity: Identity,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    revoke(&state, &request, &identity, &id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(
    delete,
    path = "/api/v1/me/sessions",
    tag = "sessions",
    summary = "Sign out everywhere else",
    responses(
        (status = 200, description = "`{revoked: n}`")
    )
)]
async fn revoke_other_sessions(
    state: web::Data<AppState>,
    request: HttpRequest,
    identity: Identity,
) -> Result<HttpResponse, AppError> {
    let revoked = revoke_others(&state, &request, &identity).await?;
    Ok(HttpResponse::Ok().json(json!({ "revoked": revoked })))
}

#[derive(serde::Deserialize)]
pub struct SecurityQuery {
    notice: Option<String>,
    error: Option<String>,
}

async fn security_page(
    state: web::Data<AppState>,
    page: Page,
    identity: Identity,
    query: web::Query<SecurityQuery>,
) -> Result<HttpResponse, AppError> {
    let rows = state.sessions.list_for_user(identity.user_id()).await?;
    let sessions: Vec<_> = rows
        .iter()
        .map(|row| {
            json!({
                "id": row.id,
                "current": row.id == identity.session.id,
                "device": row.user_agent.as_deref().map(summarise_user_agent).unwrap_or("Unknown device"),
                "ip": row.ip.as_deref().unwrap_or("unknown"),
                "signed_in": row.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
                "last_seen": row.last_seen_at.format("%Y-%m-%d %H:%M UTC").to_string(),
            })
        })
        .collect();
    let mut context = page.context(&state);
    context.insert("sessions", &sessions);
    context.insert("notice", &query.notice);
    context.insert("error", &query.error);
    context.insert(
        "two_factor_on",
        &state.two_factor.is_enabled(identity.user_id()).await?,
    );
    context.insert("min_length", &state.settings.accounts.password_min_length);
    let linked = state.federation.linked(identity.user_id()).await?;
    let identities: Vec<_> = linked
        .iter()
        .map(|l| {
            json!({
                "id": l.id,
                "label": state.federation.label(&l.provider),
                "email": l.email,
                "connected": l.created_at.format("%Y-%m-%d").to_string(),
            })
        })
        .collect();
    let connectable: Vec<_> = state
        .federation
        .buttons()
        .into_iter()
        .filter(|b| !linked.iter().any(|l| l.provider == b.name))
        .collect();
    context.insert("identities", &identities);
    context.insert("connectable", &connectable);
    crate::web::pages::html(&state, "settings/security.html", &context, StatusCode::OK)
}

fn back_to_security() -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/settings/security"))
        .finish()
}

async fn revoke_session_form(
    state: web::Data<AppState>,
    request: HttpRequest,
    identity: Identity,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    revoke(&state, &request, &identity, &id).await?;
    if *id == identity.session.id {
        return Ok(HttpResponse::SeeOther()
            .cookie(super::identity::expired_session_cookie(&state))
            .insert_header((header::LOCATION, "/"))
            .finish());
    }
    Ok(back_to_security())
}

async fn revoke_others_form(
    state: web::Data<AppState>,
    request: HttpRequest,
    identity: Identity,
) -> Result<HttpResponse, AppError> {
    revoke_others(&state, &request, &identity).await?;
    Ok(back_to_security())
}

/// The browser's name from a User-Agent header; enough to recognise one's own devices. Order
/// matters: Edge's header also says Chrome and Safari, Chrome's also says Safari.
fn summarise_user_agent(user_agent: &str) -> &'static str {
    [
        ("Edg/", "Edge"),
        ("Firefox/", "Firefox"),
        ("Chrome/", "Chrome"),
        ("Safari/", "Safari"),
        ("curl/", "curl"),
    ]
    .into_iter()
    .find(|(marker, _)| user_agent.contains(marker))
    .map_or("Other client", |(_, name)| name)
}

/// This module's part of the OpenAPI document (`/api/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(list_sessions, revoke_other_sessions, revoke_session))]
pub struct ApiDoc;
