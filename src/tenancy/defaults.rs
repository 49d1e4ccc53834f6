//! A workspace's own settings: its name and the defaults new conversations get — the privacy
//! tier of new rooms and how long messages are kept (rooms may override the retention).
//! `GET|PATCH /api/v1/tenants/{id}` and the form on `/workspaces/{id}`.
//!
//! Every member may read them (they decide what happens to their messages); only owners
//! change them (`Permission::ManageTenant`).

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::handlers::event;
use super::{Authorizer, Permission, Role};
use crate::audit;
use crate::auth::identity::{Caller, Identity};
use crate::chat::Privacy;
use crate::db::{DbConnection, write_transaction};
use crate::error::AppError;
use crate::schema::tenants;
use crate::web::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::web::{get, resource};
    cfg.service(get("/api/v1/tenants/{id}", api_get).patch(api_update))
        .service(resource("/workspaces/{id}/settings").post(settings_form));
}

/// A workspace as its members see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Workspace {
    pub id: i64,
    pub slug: String,
    pub name: String,
    /// The caller's role.
    #[schema(value_type = String)]
    pub role: Role,
    /// The privacy tier of new rooms: `standard`, `private` or `ephemeral`.
    #[schema(value_type = String)]
    pub default_privacy: Privacy,
    /// Days messages are kept unless a room says otherwise; `null` keeps them.
    pub retention_days: Option<i32>,
}

/// What an owner may change; absent fields stay as they are.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspacePatch {
    #[schema(
        max_length = 80,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: Option<String>,
    #[schema(value_type = Option<crate::chat::Privacy>)]
    pub default_privacy: Option<String>,
    /// `null` keeps messages until deleted.
    #[serde(default, deserialize_with = "crate::chat::api::double_option")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 36500)]
    pub retention_days: Option<Option<i32>>,
}

/// The workspace for `user_id`; 404 when they are not a member.
pub fn load(conn: &mut DbConnection, tenant_id: i64, user_id: i64) -> Result<Workspace, AppError> {
    let role = super::role_of(conn, tenant_id, user_id)?
        .ok_or_else(|| AppError::NotFound("No such workspace.".to_owned()))?;
    let (slug, name, privacy, retention_days): (String, String, String, Option<i32>) =
        tenants::table
            .find(tenant_id)
            .select((
                tenants::slug,
                tenants::name,
                tenants::default_privacy,
                tenants::retention_days,
            ))
            .first(conn)?;
    Ok(Workspace {
        id: tenant_id,
        slug,
        name,
        role,
        default_privacy: privacy.parse().unwrap_or(Privacy::Standard),
        retention_days,
    })
}

/// Applies `patch` as `user_id` (an owner), audited; answers the workspace as changed.
pub async fn update(
    state: &AppState,
    user_id: i64,
    tenant_id: i64,
    patch: WorkspacePatch,
    ip: Option<String>,
) -> Result<Workspace, AppError> {
    let name = patch
        .name
        .as_deref()
        .map(crate::auth::users::parse_display_name)
        .transpose()
        .map_err(|e| AppError::BadRequest(e.replacen("display_name", "name", 1)))?;
    let privacy = patch
        .default_privacy
        .as_deref()
        .map(str::parse::<Privacy>)
        .transpose()
        .map_err(|e| AppError::BadRequest(e.replacen("privacy", "default_privacy", 1)))?;
    if let Some(days) = patch.retention_days {
        crate::chat::rooms::check_retention(days)?;
    }
    state
        .db
        .run(move |conn| {
            write_transaction(conn, |tx| {
                let before = load(tx, tenant_id, user_id)?;
                if !Authorizer::can(before.role, Permission::ManageTenant) {
                    return Err(AppError::Forbidden(format!(
                        "Your role ({}) cannot change the workspace's settings; owners can.",
                        before.role
                    )));
                }
                // Only what differs, in one statement; the audit event lists it.
                let name = name.filter(|name| *name != before.name);
                let privacy = privacy.filter(|privacy| *privacy != before.default_privacy);
                let retention = patch
                    .retention_days
                    .filter(|days| *days != before.retention_days);
                let mut changed = serde_json::Map::new();
                if let Some(name) = &name {
                    changed.insert("name".to_owned(), json!(name));
                }
                if let Some(privacy) = privacy {
                    changed.insert("default_privacy".to_owned(), json!(privacy.as_str()));
                }
                if let Some(days) = retention {
                    changed.insert("retention_days".to_owned(), json!(days));
                }
                if !changed.is_empty() {
                    diesel::update(tenants::table.find(tenant_id))
                        .set((
                            name.map(|name| tenants::name.eq(name)),
                            privacy.map(|privacy| tenants::default_privacy.eq(privacy.as_str())),
                            retention.map(|days| tenants::retention_days.eq(days)),
                        ))
                        .execute(tx)?;
                    let mut audited = event(
                        "tenant.settings_changed",
                        user_id,
                        tenant_id,
                        serde_json::Value::Object(changed),
                    );
                    audited.ip = ip;
                    audit::record(tx, &audited, Utc::now().naive_utc())?;
                }
                load(tx, tenant_id, user_id)
            })
        })
        .await
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants/{id}",
    tag = "tenants",
    summary = "A workspace: name, my role, and the defaults of new conversations",
    params(("id" = i64, Path)),
    responses(
        (status = 200, body = Workspace),
        (status = 404, description = "No such workspace of yours", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn api_get(
    state: web::Data<AppState>,
    caller: Caller,
    tenant: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let (tenant_id, user_id) = (tenant.into_inner(), caller.user_id);
    let workspace = state
        .db
        .run(move |conn| load(conn, tenant_id, user_id))
        .await?;
    Ok(HttpResponse::Ok().json(workspace))
}

#[utoipa::path(
    patch,
    path = "/api/v1/tenants/{id}",
    tag = "tenants",
    summary = "Rename the workspace or change its conversation defaults (owners)",
    params(("id" = i64, Path)),
    request_body = WorkspacePatch,
    responses(
        (status = 200, body = Workspace),
        (status = 400, description = "An invalid value", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Only owners", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such workspace of yours", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn api_update(
    state: web::Data<AppState>,
    request: HttpRequest,
    caller: Caller,
    tenant: web::Path<i64>,
    body: crate::web::Json<WorkspacePatch>,
) -> Result<HttpResponse, AppError> {
    let workspace = update(
        &state,
        caller.user_id,
        tenant.into_inner(),
        body.into_inner(),
        crate::web::client_ip(&request),
    )
    .await?;
    Ok(HttpResponse::Ok().json(workspace))
}

#[derive(Deserialize)]
pub struct SettingsForm {
    name: String,
    default_privacy: String,
    /// Empty: keep messages.
    retention_days: String,
}

async fn settings_form(
    state: web::Data<AppState>,
    request: HttpRequest,
    identity: Identity,
    tenant: web::Path<i64>,
    form: web::Form<SettingsForm>,
) -> Result<HttpResponse, AppError> {
    let tenant_id = tenant.into_inner();
    let form = form.into_inner();
    let retention = form.retention_days.trim();
    let outcome = match retention.parse::<i32>() {
        Err(_) if !retention.is_empty() => Err(AppError::BadRequest(
            "retention_days: give a number of days, or leave it empty to keep messages".to_owned(),
        )),
        parsed => {
            update(
                &state,
                identity.user_id(),
                tenant_id,
                WorkspacePatch {
                    name: Some(form.name),
                    default_privacy: Some(form.default_privacy),
                    retention_days: Some(parsed.ok()),
                },
                crate::web::client_ip(&request),
            )
            .await
        }
    };
    crate::web::pages::back_to(
        &format!("/workspaces/{tenant_id}"),
        outcome.map(|_| "settings_saved"),
    )
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(api_get, api_update),
    components(schemas(Workspace, WorkspacePatch))
)]
pub struct ApiDoc;
