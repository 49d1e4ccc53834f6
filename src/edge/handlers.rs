//! The edge policy's API (`/api/v1/admin/edge/…`), its agents' endpoints, and the editor page
//! (`/admin/edge`) with a live preview of exactly what `conclave edge render` exports.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::policy::{EdgePolicy, FieldError};
use super::render::{Format, render};
use super::{AgentReport, Version};
use crate::admin::{Action, Staff};
use crate::error::AppError;
use crate::web::pages::{Notice, Page, back_to, html};
use crate::web::{AppState, client_ip, get, resource};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/api/v1/admin/edge/policy")
            .get(current)
            .put(replace),
    )
    .service(get("/api/v1/admin/edge/versions", versions))
    .service(get("/api/v1/admin/edge/versions/{version}", version))
    .service(resource("/api/v1/admin/edge/rollback").post(rollback))
    .service(resource("/api/v1/admin/edge/preview").post(preview))
    .service(get("/api/v1/admin/edge/render", rendered))
    .service(get("/api/v1/admin/edge/agents", agents))
    .service(resource("/api/v1/admin/edge/agents/{name}").put(report))
    .service(get("/admin/edge", page))
    .service(resource("/admin/edge/preview").post(preview_form))
    .service(resource("/admin/edge/save").post(save_form))
    .service(resource("/admin/edge/rollback").post(rollback_form));
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ActivePolicy {
    /// 0: nothing saved yet, the built-in default is in force.
    version: i64,
    policy: EdgePolicy,
}

#[utoipa::path(get, path = "/api/v1/admin/edge/policy", tag = "admin",
    responses((status = 200, body = ActivePolicy), (status = 403, description = "Not staff")))]
async fn current(state: web::Data<AppState>, staff: Staff) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    let active = state.edge.active();
    Ok(HttpResponse::Ok().json(ActivePolicy {
        version: active.version,
        policy: active.policy.clone(),
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct NewPolicy {
    policy: serde_json::Value,
    #[serde(default)]
    comment: String,
}

/// A document that failed validation, every problem with its field.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PolicyErrors {
    title: &'static str,
    status: u16,
    detail: String,
    errors: Vec<FieldError>,
}

fn invalid(errors: Vec<FieldError>) -> HttpResponse {
    let detail = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    HttpResponse::UnprocessableEntity()
        .content_type("application/problem+json")
        .json(PolicyErrors {
            title: "The policy is invalid",
            status: 422,
            detail,
            errors,
        })
}

fn parse_value(value: &serde_json::Value) -> Result<EdgePolicy, Vec<FieldError>> {
    EdgePolicy::parse(&value.to_string()).map_err(|invalid| invalid.0)
}

#[utoipa::path(put, path = "/api/v1/admin/edge/policy", tag = "admin", request_body = NewPolicy,
    responses((status = 200, body = ActivePolicy), (status = 422, description = "The policy is refused; `errors` names each problem", body = PolicyErrors, content_type = "application/problem+json"),
              (status = 403, description = "Needs the admin role")))]
async fn replace(
    state: web::Data<AppState>,
    staff: Staff,
    request: HttpRequest,
    body: crate::web::Json<NewPolicy>,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::Edge)?;
    let body = body.into_inner();
    let policy = match parse_value(&body.policy) {
        Ok(policy) => policy,
        Err(errors) => return Ok(invalid(errors)),
    };
    let version = state
        .edge
        .save(
            policy.clone(),
            &body.comment,
            Some(staff.user_id()),
            client_ip(&request),
            None,
        )
        .await?;
    Ok(HttpResponse::Ok().json(ActivePolicy { version, policy }))
}

#[utoipa::path(get, path = "/api/v1/admin/edge/versions", tag = "admin",
    responses((status = 200, body = Vec<Version>)))]
async fn versions(state: web::Data<AppState>, staff: Staff) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    Ok(HttpResponse::Ok().json(state.edge.history(100).await?))
}

#[utoipa::path(get, path = "/api/v1/admin/edge/versions/{version}", params(("version" = i64, Path)), tag = "admin",
    responses((status = 200, body = ActivePolicy), (status = 404, description = "No such version")))]
async fn version(
    state: web::Data<AppState>,
    staff: Staff,
    path: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    let version = path.into_inner();
    let policy = state.edge.version(version).await?;
    Ok(HttpResponse::Ok().json(ActivePolicy { version, policy }))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct Rollback {
    version: i64,
}

#[utoipa::path(post, path = "/api/v1/admin/edge/rollback", tag = "admin", request_body = Rollback,
    responses((status = 200, body = ActivePolicy), (status = 404, description = "No such version")))]
async fn rollback(
    state: web::Data<AppState>,
    staff: Staff,
    request: HttpRequest,
    body: crate::web::Json<Rollback>,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::Edge)?;
    let version = state
        .edge
        .rollback(body.version, Some(staff.user_id()), client_ip(&request))
        .await?;
    let policy = state.edge.active().policy.clone();
    Ok(HttpResponse::Ok().json(ActivePolicy { version, policy }))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct PreviewRequest {
    policy: serde_json::Value,
    format: Format,
}

/// Renders a draft without saving it: the text an export of it would be.
#[utoipa::path(post, path = "/api/v1/admin/edge/preview", tag = "admin", request_body = PreviewRequest,
    responses((status = 200, content_type = "text/plain"), (status = 422, description = "The policy is refused; `errors` names each problem", body = PolicyErrors, content_type = "application/problem+json")))]
async fn preview(
    staff: Staff,
    body: crate::web::Json<PreviewRequest>,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    match parse_value(&body.policy) {
        Ok(policy) => Ok(text(render(&policy, 0, body.format), None)),
        Err(errors) => Ok(invalid(errors)),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RenderQuery {
    /// `caddy`, `nginx` or `nftables`.
    #[param(value_type = crate::edge::render::Format)]
    format: String,
    /// A stored version; the active one when left out.
    version: Option<i64>,
}

fn text(body: String, version: Option<i64>) -> HttpResponse {
    let mut response = HttpResponse::Ok();
    response.content_type("text/plain; charset=utf-8");
    if let Some(version) = version {
        response.insert_header(("x-edge-version", version.to_string()));
    }
    response.body(body)
}

/// The rendered config of the active (or a stored) version; edge agents poll this, with the
/// version in `X-Edge-Version`.
#[utoipa::path(get, path = "/api/v1/admin/edge/render", tag = "admin", params(RenderQuery),
    responses((status = 200, content_type = "text/plain"), (status = 400, description = "Unknown format")))]
async fn rendered(
    state: web::Data<AppState>,
    staff: Staff,
    query: web::Query<RenderQuery>,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    let format: Format = query.format.parse().map_err(AppError::BadRequest)?;
    let (version, policy) = match query.version {
        Some(version) => (version, state.edge.version(version).await?),
        None => {
            let active = state.edge.active();
            (active.version, active.policy.clone())
        }
    };
    Ok(text(render(&policy, version, format), Some(version)))
}

#[utoipa::path(get, path = "/api/v1/admin/edge/agents", tag = "admin",
    responses((status = 200, body = Vec<AgentReport>)))]
async fn agents(state: web::Data<AppState>, staff: Staff) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    Ok(HttpResponse::Ok().json(state.edge.agents().await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct AgentStatus {
    #[schema(value_type = crate::edge::render::Format)]
    format: String,
    /// The version now in force on the agent's proxy (after a failed check: the one kept).
    applied_version: Option<i64>,
    /// `applied`, `check_failed` or `error`.
    #[schema(schema_with = crate::api_docs::agent_status)]
    status: String,
    error: Option<String>,
}

/// An edge agent reports what it applied. Needs the operator role (an agent's token).
#[utoipa::path(put, path = "/api/v1/admin/edge/agents/{name}", params(("name" = String, Path, pattern = r"^[A-Za-z0-9._-]{1,64}$")), tag = "admin", request_body = AgentStatus,
    responses((status = 204), (status = 400, description = "Bad name or status")))]
async fn report(
    state: web::Data<AppState>,
    staff: Staff,
    request: HttpRequest,
    path: web::Path<String>,
    body: crate::web::Json<AgentStatus>,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::Operate)?;
    let name = path.into_inner();
    let ok_name = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok_name {
        return Err(AppError::BadRequest(
            "name: 1-64 letters, digits, . _ or -".to_owned(),
        ));
    }
    let body = body.into_inner();
    let format: Format = body.format.parse().map_err(AppError::BadRequest)?;
    if !["applied", "check_failed", "error"].contains(&body.status.as_str()) {
        return Err(AppError::BadRequest(
            "status: one of applied, check_failed, error".to_owned(),
        ));
    }
    state
        .edge
        .report(AgentReport {
            name,
            format: format.as_str().to_owned(),
            applied_version: body.applied_version,
            status: body.status,
            error: body.error.map(|e| e.chars().take(2000).collect()),
            address: client_ip(&request),
            reported_at: chrono::Utc::now().naive_utc(),
        })
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
struct PolicyForm {
    policy: String,
    #[serde(default)]
    comment: String,
}

/// The editor: the active (or a draft) document, its problems, the three previews, the
/// history with rollback, and the agents.
#[allow(clippy::too_many_arguments)]
async fn render_page(
    state: &AppState,
    page: &Page,
    staff: &Staff,
    draft: Option<String>,
    errors: Vec<FieldError>,
    notice: Option<String>,
    error: Option<String>,
    status: StatusCode,
) -> Result<HttpResponse, AppError> {
    let active = state.edge.active();
    let (document, previewed) = match &draft {
        Some(text) => (
            text.clone(),
            EdgePolicy::parse(text).ok().map(|policy| (0, policy)),
        ),
        None => (
            serde_json::to_string_pretty(&active.policy).map_err(AppError::internal)?,
            Some((active.version, active.policy.clone())),
        ),
    };
    let previews: Vec<_> = previewed
        .map(|(version, policy)| {
            Format::ALL
                .iter()
                .map(|f| json!({ "format": f.as_str(), "text": render(&policy, version, *f) }))
                .collect()
        })
        .unwrap_or_default();
    let versions = state.edge.history(50).await?;
    let authors: Vec<i64> = versions.iter().filter_map(|v| v.created_by).collect();
    let emails: Vec<(i64, String)> = state
        .db
        .run(move |conn| {
            use diesel::prelude::*;
            crate::schema::users::table
                .filter(crate::schema::users::id.eq_any(authors))
                .select((crate::schema::users::id, crate::schema::users::email))
                .load(conn)
                .map_err(AppError::from)
        })
        .await?;
    let history: Vec<_> = versions
        .into_iter()
        .map(|v| {
            let by = v.created_by.and_then(|id| {
                emails
                    .iter()
                    .find(|(u, _)| *u == id)
                    .map(|(_, e)| e.clone())
            });
            json!({
                "version": v.version,
                "comment": v.comment,
                "rolled_back_from": v.rolled_back_from,
                "created_by": by,
                "created_at": v.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            })
        })
        .collect();
    let agents: Vec<_> = state
        .edge
        .agents()
        .await?
        .into_iter()
        .map(|a| {
            json!({
                "name": a.name, "format": a.format, "applied_version": a.applied_version,
                "status": a.status, "error": a.error, "address": a.address,
                "reported_at": a.reported_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            })
        })
        .collect();
    let mut context = page.context(state);
    context.insert("may", &staff.powers());
    context.insert("section", "edge");
    context.insert("active_version", &active.version);
    context.insert("document", &document);
    context.insert("draft", &draft.is_some());
    context.insert("field_errors", &errors);
    context.insert("previews", &previews);
    context.insert("history", &history);
    context.insert("agents", &agents);
    context.insert("notice", &notice);
    context.insert("error", &error);
    context.insert(
        "admin_listen",
        &state.edge.admin_listen.map(|a| a.to_string()),
    );
    html(state, "admin/edge.html", &context, status)
}

async fn page(
    state: web::Data<AppState>,
    page: Page,
    staff: Staff,
    query: web::Query<Notice>,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    let Notice { notice, error } = query.into_inner();
    render_page(
        &state,
        &page,
        &staff,
        None,
        Vec::new(),
        notice,
        error,
        StatusCode::OK,
    )
    .await
}

fn form_errors(text: &str) -> Vec<FieldError> {
    match EdgePolicy::parse(text) {
        Ok(_) => Vec::new(),
        Err(invalid) => invalid.0,
    }
}

async fn preview_form(
    state: web::Data<AppState>,
    page: Page,
    staff: Staff,
    form: web::Form<PolicyForm>,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    let errors = form_errors(&form.policy);
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let notice = errors.is_empty().then(|| "preview".to_owned());
    render_page(
        &state,
        &page,
        &staff,
        Some(form.into_inner().policy),
        errors,
        notice,
        None,
        status,
    )
    .await
}

async fn save_form(
    state: web::Data<AppState>,
    page: Page,
    staff: Staff,
    request: HttpRequest,
    form: web::Form<PolicyForm>,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::Edge)?;
    let form = form.into_inner();
    let policy = match EdgePolicy::parse(&form.policy) {
        Ok(policy) => policy,
        Err(invalid) => {
            return render_page(
                &state,
                &page,
                &staff,
                Some(form.policy),
                invalid.0,
                None,
                None,
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await;
        }
    };
    let saved = state
        .edge
        .save(
            policy,
            &form.comment,
            Some(staff.user_id()),
            client_ip(&request),
            None,
        )
        .await;
    back_to("/admin/edge", saved.map(|_| "saved"))
}

#[derive(Deserialize)]
struct RollbackForm {
    version: i64,
}

async fn rollback_form(
    state: web::Data<AppState>,
    staff: Staff,
    request: HttpRequest,
    form: web::Form<RollbackForm>,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::Edge)?;
    let outcome = state
        .edge
        .rollback(form.version, Some(staff.user_id()), client_ip(&request))
        .await;
    back_to("/admin/edge", outcome.map(|_| "rolled_back"))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        current, replace, versions, version, rollback, preview, rendered, agents, report
    ),
    components(schemas(
        ActivePolicy,
        NewPolicy,
        PolicyErrors,
        Rollback,
        PreviewRequest,
        AgentStatus,
        AgentReport,
        Version,
        FieldError,
        EdgePolicy
    ))
)]
pub struct ApiDoc;
