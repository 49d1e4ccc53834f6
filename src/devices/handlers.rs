//! The registry's API and pages: claim codes for a workspace, the claim exchange a device
//! makes, listing, renaming and tagging, token rotation and revocation, deletion; and
//! `GET /api/v1/device`, where a device (with its token) reads its own entry.

use std::net::IpAddr;
use std::num::NonZeroU32;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use serde_json::json;

use super::{Claim, Device, NewDevice, Provisioned};
use crate::auth::identity::{Caller, Identity};
use crate::error::AppError;
use crate::settings::DeviceSettings;
use crate::web::pages::{Notice, Page, back_to, html};
use crate::web::{AppState, client_addr, client_ip, get, resource};

pub fn configure(cfg: &mut web::ServiceConfig) {
    super::api::configure(cfg);
    // Before `/devices/{id}`, which would take `/devices/firmware` for a device id.
    super::pages::configure(cfg);
    cfg.service(resource("/api/v1/tenants/{tenant}/devices/claims").post(create_claim))
        .service(resource("/api/v1/devices/claim").post(claim))
        .service(get("/api/v1/devices", list))
        .service(
            get("/api/v1/devices/{id}", show)
                .patch(update)
                .delete(remove),
        )
        .service(
            resource("/api/v1/devices/{id}/token")
                .post(rotate)
                .delete(revoke),
        )
        .service(get("/api/v1/devices/{id}/telemetry", telemetry))
        .service(get("/api/v1/device", me))
        .service(get("/devices", page))
        .service(resource("/devices/claims").post(claim_form))
        .service(get("/devices/{id}", device_page))
        .service(resource("/devices/{id}/rotate").post(rotate_form))
        .service(resource("/devices/{id}/revoke").post(revoke_form))
        .service(resource("/devices/{id}/delete").post(delete_form));
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct NewClaim {
    #[schema(
        max_length = 64,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    name: String,
    /// e.g. `sensor`, `esp32c3`.
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,32}$")]
    kind: String,
    #[serde(default)]
    #[schema(max_items = 16, value_type = Vec<crate::devices::Tag>)]
    tags: Vec<String>,
}

#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/devices/claims", tag = "devices",
    summary = "A one-time claim code for a new device (operators)", request_body = NewClaim,
    params(("tenant" = i64, Path)),
    responses((status = 201, body = Claim),
        (status = 400, description = "Bad name, kind or tags", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 402, description = "The plan's device limit", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Below operator", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The name is taken", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn create_claim(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    path: web::Path<i64>,
    body: crate::web::Json<NewClaim>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    let claim = state
        .devices
        .create_claim(
            caller.user_id,
            path.into_inner(),
            NewDevice {
                name: body.name,
                kind: body.kind,
                tags: body.tags,
            },
            client_ip(&request),
        )
        .await?;
    Ok(HttpResponse::Created().json(claim))
}

/// Claim attempts per address: codes carry ~60 bits, so this is about noise and detection
/// rather than odds. An address over the limit is refused (429) and recorded in the audit log
/// once per minute it keeps trying, not once per attempt.
pub struct ClaimLimiter {
    attempts: DefaultKeyedRateLimiter<IpAddr>,
    /// Addresses refused within the last minute (already audited).
    refused: moka::sync::Cache<IpAddr, ()>,
}

impl ClaimLimiter {
    /// `per_minute` attempts per address (`devices.claims_per_minute_per_ip`).
    pub fn per_minute(per_minute: u32) -> Self {
        Self {
            attempts: RateLimiter::keyed(Quota::per_minute(
                NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN),
            )),
            refused: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(std::time::Duration::from_secs(60))
                .build(),
        }
    }

    /// `None` when `ip` may try; `Some(first)` when it is refused, `first` on the first
    /// refusal of a run (the one to audit). The cache's entry API decides `first` atomically,
    /// so two concurrent refusals audit once.
    fn refuse(&self, ip: IpAddr) -> Option<bool> {
        if self.attempts.check_key(&ip).is_ok() {
            return None;
        }
        Some(self.refused.entry(ip).or_insert(()).is_fresh())
    }
}

impl Default for ClaimLimiter {
    fn default() -> Self {
        Self::per_minute(DeviceSettings::default().claims_per_minute_per_ip)
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct ClaimRequest {
    code: String,
    firmware: Option<String>,
    chip: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/devices/claim", tag = "devices",
    summary = "A device exchanges its claim code for its token (shown once)", request_body = ClaimRequest,
    responses((status = 201, body = Provisioned),
        (status = 400, description = "Unknown, used or expired code (`invalid_claim`)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "A device with the code's name was added meanwhile: ask for a new code", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn claim(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: crate::web::Json<ClaimRequest>,
) -> Result<HttpResponse, AppError> {
    if let Some(ip) = client_addr(&request)
        && let Some(first) = state.device_claims.refuse(ip)
    {
        metrics::counter!("rate_limited_total", "scope" => "device_claim").increment(1);
        if first {
            let (_, user_agent) = crate::web::client_info(&request);
            let event = crate::audit::AuditEvent {
                event: crate::audit::events::CLAIM_GUESSING_THROTTLED,
                ip: Some(ip.to_string()),
                user_agent,
                ..crate::audit::AuditEvent::default()
            };
            if let Err(e) = crate::audit::record_now(&state.db, event).await {
                tracing::warn!(error = %e, "cannot audit a blocked claim-code guesser");
            }
        }
        return Err(AppError::RateLimited {
            retry_after_secs: Some(60),
        });
    }
    let body = body.into_inner();
    let provisioned = state
        .devices
        .redeem(&body.code, body.firmware, body.chip, client_ip(&request))
        .await?;
    Ok(HttpResponse::Created().json(provisioned))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this workspace's devices.
    tenant: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/devices", tag = "devices",
    summary = "Devices of my workspaces", params(ListQuery),
    responses((status = 200, description = "`{devices: [...]}`")))]
async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, AppError> {
    let devices = state.devices.list(caller.user_id, query.tenant).await?;
    Ok(HttpResponse::Ok().json(json!({ "devices": devices })))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}", tag = "devices", params(("id" = i64, Path)),
    responses((status = 200, body = Device), (status = 404, description = "No such device here", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn show(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    Ok(HttpResponse::Ok().json(state.devices.get(caller.user_id, path.into_inner()).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicePatch {
    #[schema(
        max_length = 64,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    name: Option<String>,
    #[schema(max_items = 16, value_type = Option<Vec<crate::devices::Tag>>)]
    tags: Option<Vec<String>>,
}

#[utoipa::path(patch, path = "/api/v1/devices/{id}", tag = "devices", params(("id" = i64, Path)),
    request_body = DevicePatch, responses((status = 200, body = Device),
        (status = 403, description = "Below operator", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn update(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<i64>,
    body: crate::web::Json<DevicePatch>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    let device = state
        .devices
        .update(caller.user_id, path.into_inner(), body.name, body.tags)
        .await?;
    Ok(HttpResponse::Ok().json(device))
}

#[utoipa::path(delete, path = "/api/v1/devices/{id}", tag = "devices", params(("id" = i64, Path)),
    responses((status = 204, description = "Deleted, with its token")))]
async fn remove(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    state
        .devices
        .delete(caller.user_id, path.into_inner())
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/token", tag = "devices", params(("id" = i64, Path)),
    summary = "A new token for the device (shown once); the old one stops working",
    responses((status = 200, description = "`{token}`")))]
async fn rotate(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let token = state
        .devices
        .rotate_token(caller.user_id, path.into_inner())
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "token": token })))
}

#[utoipa::path(delete, path = "/api/v1/devices/{id}/token", tag = "devices", params(("id" = i64, Path)),
    summary = "Revoke the device's token", responses((status = 204, description = "Revoked")))]
async fn revoke(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    state
        .devices
        .revoke_token(caller.user_id, path.into_inner())
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TelemetryQuery {
    /// One metric; all when left out.
    #[param(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    metric: Option<String>,
    /// RFC 3339; default 24 hours before `to`.
    #[param(format = DateTime)]
    from: Option<String>,
    /// RFC 3339; default now.
    #[param(format = DateTime)]
    to: Option<String>,
    /// Bucket size: `30s`, `5m`, `1h`, `1d` (or seconds); raw readings when left out.
    #[param(pattern = r"^[0-9]{1,9}[smhd]?$")]
    step: Option<String>,
}

fn parse_time(field: &str, text: &str) -> Result<chrono::NaiveDateTime, AppError> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.naive_utc())
        .map_err(|_| {
            AppError::BadRequest(format!(
                "{field}: an RFC 3339 time, e.g. 2026-11-30T10:00:00Z"
            ))
        })
}

fn parse_step(text: &str) -> Result<i64, AppError> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |at| text.split_at(at));
    let number: i64 = number
        .parse()
        .map_err(|_| AppError::BadRequest("step: like 30s, 5m, 1h or 1d".to_owned()))?;
    let unit = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => {
            return Err(AppError::BadRequest(
                "step: like 30s, 5m, 1h or 1d".to_owned(),
            ));
        }
    };
    number
        .checked_mul(unit)
        .ok_or_else(|| AppError::BadRequest("step: too large".to_owned()))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/telemetry", tag = "devices",
    summary = "A device's readings per metric, raw or in buckets (min, max, avg, count)",
    params(("id" = i64, Path), TelemetryQuery),
    responses((status = 200, description = "`{series: [{metric, points, buckets}]}`"),
        (status = 400, description = "Bad time, step or too many raw readings", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device here", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn telemetry(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<i64>,
    query: web::Query<TelemetryQuery>,
) -> Result<HttpResponse, AppError> {
    let query = query.into_inner();
    let to = match &query.to {
        Some(text) => parse_time("to", text)?,
        None => chrono::Utc::now().naive_utc(),
    };
    let from = match &query.from {
        Some(text) => parse_time("from", text)?,
        None => to - chrono::TimeDelta::hours(24),
    };
    let step = query.step.as_deref().map(parse_step).transpose()?;
    let series = state
        .devices
        .telemetry(
            caller.user_id,
            path.into_inner(),
            query.metric,
            from,
            to,
            step,
        )
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "from": crate::time::rfc3339(from),
        "to": crate::time::rfc3339(to),
        "series": series,
    })))
}

/// The device token of a request (`Authorization: Bearer cnd_…`).
pub(super) fn device_token(request: &HttpRequest) -> Option<&str> {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

#[utoipa::path(get, path = "/api/v1/device", tag = "devices",
    summary = "The calling device's own entry (device token)",
    responses((status = 200, description = "`{device_id, tenant_id, name}`"),
        (status = 401, description = "No live device token", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn me(state: web::Data<AppState>, request: HttpRequest) -> Result<HttpResponse, AppError> {
    let presented = device_token(&request).ok_or_else(|| {
        AppError::Unauthenticated("Send the device token: Authorization: Bearer cnd_…".to_owned())
    })?;
    let identity = state
        .devices
        .authenticate(presented)
        .await?
        .ok_or_else(|| {
            AppError::Unauthenticated("This device token is unknown or revoked.".to_owned())
        })?;
    Ok(HttpResponse::Ok().json(json!({
        "device_id": identity.device_id,
        "tenant_id": identity.tenant_id,
        "name": identity.name,
    })))
}

async fn page(
    state: web::Data<AppState>,
    page: Page,
    identity: Identity,
    query: web::Query<Notice>,
) -> Result<HttpResponse, AppError> {
    let user = identity.user_id();
    let devices = state.devices.list(user, None).await?;
    let workspaces: Vec<_> = state
        .db
        .run(move |conn| crate::tenancy::tenants_of(conn, user).map_err(AppError::from))
        .await?
        .into_iter()
        .map(|(id, slug, name, role)| json!({ "id": id, "slug": slug, "name": name, "role": role }))
        .collect();
    let mut context = page.context(&state);
    context.insert("devices", &devices);
    context.insert("workspaces", &workspaces);
    query.into_inner().insert(&mut context);
    html(&state, "devices/list.html", &context, StatusCode::OK)
}

#[derive(Deserialize)]
struct ClaimForm {
    tenant_id: i64,
    name: String,
    kind: String,
    #[serde(default)]
    tags: String,
}

async fn claim_form(
    state: web::Data<AppState>,
    page: Page,
    identity: Identity,
    request: HttpRequest,
    form: web::Form<ClaimForm>,
) -> Result<HttpResponse, AppError> {
    let form = form.into_inner();
    let tags: Vec<String> = form
        .tags
        .split([',', ' '])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    let created = state
        .devices
        .create_claim(
            identity.user_id(),
            form.tenant_id,
            NewDevice {
                name: form.name.clone(),
                kind: form.kind,
                tags,
            },
            client_ip(&request),
        )
        .await;
    let claim = match created {
        Ok(claim) => claim,
        Err(error) => return back_to("/devices", Err(error)),
    };
    // Shown once, on this page: the code is not stored in clear.
    let mut context = page.context(&state);
    context.insert("claim", &claim);
    context.insert("name", &form.name);
    html(&state, "devices/claim.html", &context, StatusCode::CREATED)
}

async fn device_page(
    state: web::Data<AppState>,
    page: Page,
    identity: Identity,
    path: web::Path<i64>,
    query: web::Query<Notice>,
) -> Result<HttpResponse, AppError> {
    let device = state
        .devices
        .get(identity.user_id(), path.into_inner())
        .await?;
    let workspace = state.devices.tenant_name(device.row.tenant_id).await?;
    let mut context = page.context(&state);
    context.insert("device", &device);
    context.insert("workspace", &workspace);
    context.insert(
        "may_operate",
        &may_operate(&state, identity.user_id(), device.row.tenant_id).await?,
    );
    // The last 24 hours, in 15-minute buckets, one chart per metric.
    let to = chrono::Utc::now().naive_utc();
    let from = to - chrono::TimeDelta::hours(24);
    let series = state
        .devices
        .telemetry(
            identity.user_id(),
            device.row.id,
            None,
            from,
            to,
            Some(15 * 60),
        )
        .await?;
    let charts: Vec<_> = series
        .iter()
        .map(|s| {
            json!({
                "metric": s.metric,
                "svg": super::chart_svg(s, from, to),
                "min": s.buckets.iter().map(|b| b.min).fold(f64::INFINITY, f64::min),
                "max": s.buckets.iter().map(|b| b.max).fold(f64::NEG_INFINITY, f64::max),
                "last": s.buckets.last().map_or(0.0, |b| b.avg),
            })
        })
        .collect();
    context.insert("charts", &charts);
    super::pages::device_context(
        &state,
        identity.user_id(),
        device.row.id,
        device.row.tenant_id,
        &mut context,
    )
    .await?;
    query.into_inner().insert(&mut context);
    context.insert("new_token", &None::<String>);
    html(&state, "devices/device.html", &context, StatusCode::OK)
}

async fn rotate_form(
    state: web::Data<AppState>,
    page: Page,
    identity: Identity,
    path: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let id = path.into_inner();
    let token = match state.devices.rotate_token(identity.user_id(), id).await {
        Ok(token) => token,
        Err(error) => return back_to(&format!("/devices/{id}"), Err(error)),
    };
    let device = state.devices.get(identity.user_id(), id).await?;
    let workspace = state.devices.tenant_name(device.row.tenant_id).await?;
    let mut context = page.context(&state);
    context.insert("device", &device);
    context.insert("workspace", &workspace);
    context.insert("may_operate", &true);
    context.insert("charts", &Vec::<serde_json::Value>::new());
    super::pages::device_context(
        &state,
        identity.user_id(),
        id,
        device.row.tenant_id,
        &mut context,
    )
    .await?;
    Notice::default().insert(&mut context);
    context.insert("new_token", &Some(token));
    html(&state, "devices/device.html", &context, StatusCode::OK)
}

/// Whether `user` may operate devices in `tenant` (pages show the buttons only then).
pub(super) async fn may_operate(
    state: &AppState,
    user: i64,
    tenant: i64,
) -> Result<bool, AppError> {
    let role = state
        .db
        .run(move |conn| crate::tenancy::role_of(conn, tenant, user).map_err(AppError::from))
        .await?;
    Ok(role
        .is_some_and(|r| crate::tenancy::Authorizer::can(r, crate::tenancy::Permission::Operate)))
}

async fn revoke_form(
    state: web::Data<AppState>,
    identity: Identity,
    path: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let id = path.into_inner();
    let outcome = state.devices.revoke_token(identity.user_id(), id).await;
    back_to(&format!("/devices/{id}"), outcome.map(|_| "revoked"))
}

async fn delete_form(
    state: web::Data<AppState>,
    identity: Identity,
    path: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let id = path.into_inner();
    match state.devices.delete(identity.user_id(), id).await {
        Ok(()) => back_to("/devices", Ok("deleted")),
        Err(error) => back_to(&format!("/devices/{id}"), Err(error)),
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        create_claim,
        claim,
        list,
        show,
        update,
        remove,
        rotate,
        revoke,
        telemetry,
        me
    ),
    components(schemas(
        super::Series,
        super::Bucket,
        NewClaim,
        ClaimRequest,
        DevicePatch,
        Claim,
        Provisioned,
        Device,
        super::DeviceRow
    ))
)]
pub struct ApiDoc;
