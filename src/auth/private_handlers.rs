//! Unlocking and locking one's private conversations (see [`super::personal_keys`]):
//! `GET /api/v1/me/private`, `POST /api/v1/me/private/unlock|lock`, and the same two as forms
//! (`POST /private/unlock|lock`) for the pages.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;

use super::identity::{Caller, Identity};
use super::personal_keys::PersonalKeyError;
use crate::audit::{self, AuditEvent};
use crate::error::AppError;
use crate::web::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::web::{get, resource};
    cfg.service(get("/api/v1/me/private", api_status))
        .service(resource("/api/v1/me/private/unlock").post(api_unlock))
        .service(resource("/api/v1/me/private/lock").post(api_lock))
        .service(resource("/private/unlock").post(unlock_form))
        .service(resource("/private/lock").post(lock_form));
}

impl From<PersonalKeyError> for AppError {
    fn from(error: PersonalKeyError) -> Self {
        match error {
            PersonalKeyError::WrongPassword => AppError::Conflict(
                "Your private conversations were sealed with an earlier password and can no \
                 longer be opened."
                    .to_owned(),
            ),
            PersonalKeyError::Hash(super::password::HashError::Busy) => AppError::RateLimited {
                retry_after_secs: Some(1),
            },
            PersonalKeyError::Hash(e) => AppError::internal(anyhow::Error::new(e)),
            PersonalKeyError::Db(e) => e.into(),
        }
    }
}

/// Checks the account password (limited and counted like a sign-in), then unlocks.
async fn unlock(
    state: &AppState,
    request: &HttpRequest,
    user_id: i64,
    password: String,
) -> Result<(), AppError> {
    let client = super::handlers::client(request);
    let password = SecretString::from(password);
    if !state
        .login
        .reauthenticate(user_id, password.clone(), &client)
        .await?
    {
        return Err(AppError::BadRequest("password: is not correct".to_owned()));
    }
    let created = state.chat.personal_keys().unlock(user_id, password).await?;
    if created {
        let event = AuditEvent {
            ip: crate::web::client_ip(request),
            ..AuditEvent::by_user("private.key_created", user_id)
        };
        audit::record_now(&state.db, event).await?;
    }
    Ok(())
}

#[utoipa::path(
    get,
    path = "/api/v1/me/private",
    tag = "me",
    summary = "Whether my private conversations are set up and unlocked on this server",
    responses((status = 200, description = "`{set_up, unlocked, idle_minutes}`"))
)]
async fn api_status(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, AppError> {
    let keys = state.chat.personal_keys();
    Ok(HttpResponse::Ok().json(json!({
        "set_up": keys.exists(caller.user_id).await?,
        "unlocked": keys.is_unlocked(caller.user_id),
        "idle_minutes": keys.idle().as_secs() / 60,
    })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnlockRequest {
    password: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/me/private/unlock",
    tag = "me",
    summary = "Unlock my private conversations with my password (made on first use)",
    request_body = UnlockRequest,
    responses(
        (status = 204, description = "Unlocked until sign-out or the idle timeout"),
        (status = 400, description = "Wrong password", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many password checks", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn api_unlock(
    state: web::Data<AppState>,
    request: HttpRequest,
    caller: Caller,
    body: crate::web::Json<UnlockRequest>,
) -> Result<HttpResponse, AppError> {
    unlock(&state, &request, caller.user_id, body.into_inner().password).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(
    post,
    path = "/api/v1/me/private/lock",
    tag = "me",
    summary = "Lock my private conversations now (the key leaves the server's memory)",
    responses((status = 204, description = "Locked"))
)]
async fn api_lock(state: web::Data<AppState>, caller: Caller) -> HttpResponse {
    state.chat.personal_keys().lock(caller.user_id);
    HttpResponse::NoContent().finish()
}

#[derive(Deserialize)]
pub struct UnlockForm {
    password: String,
    next: Option<String>,
}

async fn unlock_form(
    state: web::Data<AppState>,
    request: HttpRequest,
    identity: Identity,
    form: web::Form<UnlockForm>,
) -> Result<HttpResponse, AppError> {
    let form = form.into_inner();
    let next = super::handlers::safe_next(form.next.as_deref());
    let outcome = unlock(&state, &request, identity.user_id(), form.password)
        .await
        .map(|()| "unlocked");
    crate::web::pages::back_to(&next, outcome)
}

#[derive(Deserialize)]
pub struct LockForm {
    next: Option<String>,
}

async fn lock_form(
    state: web::Data<AppState>,
    identity: Identity,
    form: web::Form<LockForm>,
) -> HttpResponse {
    state.chat.personal_keys().lock(identity.user_id());
    let next = super::handlers::safe_next(form.next.as_deref());
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, next))
        .finish()
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(api_status, api_unlock, api_lock),
    components(schemas(UnlockRequest))
)]
pub struct ApiDoc;
