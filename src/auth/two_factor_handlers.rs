//! Setting up and managing two-factor authentication: the JSON API under `/api/v1/me/2fa` and
//! the pages under `/settings/2fa`.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, web};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;

use super::identity::Identity;
use super::two_factor::TwoFactorError;
use crate::error::AppError;
use crate::web::AppState;
use crate::web::pages::Page;

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::web::resource;
    cfg.service(resource("/api/v1/me/2fa/totp").post(api_enrol))
        .service(resource("/api/v1/me/2fa/totp/confirm").post(api_confirm))
        .service(resource("/api/v1/me/2fa/totp/disable").post(api_disable))
        .service(resource("/api/v1/me/2fa/recovery-codes").post(api_recovery_codes))
        .service(resource("/settings/2fa/start").post(start_form))
        .service(resource("/settings/2fa/confirm").post(confirm_form))
        .service(resource("/settings/2fa/recovery-codes").post(recovery_codes_form))
        .service(resource("/settings/2fa/disable").post(disable_form));
}

impl From<TwoFactorError> for AppError {
    fn from(error: TwoFactorError) -> Self {
        match error {
            TwoFactorError::AlreadyOn | TwoFactorError::NotOn | TwoFactorError::NotEnrolling => {
                AppError::Conflict(error.to_string())
            }
            TwoFactorError::InvalidCode => AppError::BadRequest(error.to_string()),
            TwoFactorError::ChallengeExpired => AppError::Unauthenticated(error.to_string()),
            TwoFactorError::Secret(_) | TwoFactorError::Database(_) => {
                AppError::internal(anyhow::anyhow!("{error}"))
            }
        }
    }
}

/// Turning 2FA off needs the password: a borrowed, unlocked laptop must not be enough. The
/// check is limited and counted like a sign-in (`LoginService::reauthenticate`).
async fn check_password(
    state: &AppState,
    request: &actix_web::HttpRequest,
    user_id: i64,
    password: String,
) -> Result<(), AppError> {
    let client = super::handlers::client(request);
    if state
        .login
        .reauthenticate(user_id, SecretString::from(password), &client)
        .await?
    {
        Ok(())
    } else {
        Err(AppError::BadRequest("password: is not correct".to_owned()))
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/me/2fa/totp",
    tag = "2fa",
    summary = "Start TOTP enrolment",
    responses(
        (status = 201, description = "`{secret, otpauth_url, qr_svg}`"),
        (status = 409, description = "Already on", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn api_enrol(
    state: web::Data<AppState>,
    identity: Identity,
) -> Result<HttpResponse, AppError> {
    let enrolment = state
        .two_factor
        .enrol(identity.user_id(), &identity.session.email)
        .await?;
    Ok(HttpResponse::Created().json(enrolment))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct CodeRequest {
    code: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/me/2fa/totp/confirm",
    tag = "2fa",
    summary = "Confirm enrolment with a code; returns recovery codes once",
    request_body = CodeRequest,
    responses(
        (status = 200, description = "`{recovery_codes: [...]}`"),
        (status = 400, description = "Wrong code", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn api_confirm(
    state: web::Data<AppState>,
    identity: Identity,
    body: crate::web::Json<CodeRequest>,
) -> Result<HttpResponse, AppError> {
    let codes = state
        .two_factor
        .confirm(identity.user_id(), body.into_inner().code)
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "status": "enabled", "recovery_codes": codes })))
}

#[utoipa::path(
    post,
    path = "/api/v1/me/2fa/recovery-codes",
    tag = "2fa",
    summary = "New recovery codes (the old ones stop working)",
    request_body = PasswordRequest,
    responses(
        (status = 200, description = "`{codes: [...]}`"),
        (status = 400, description = "Wrong password", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
/// New recovery codes replace a way past the second step, so they need the password, like
/// turning 2FA off: a borrowed session alone must not be enough.
async fn api_recovery_codes(
    state: web::Data<AppState>,
    request: actix_web::HttpRequest,
    identity: Identity,
    body: crate::web::Json<PasswordRequest>,
) -> Result<HttpResponse, AppError> {
    check_password(
        &state,
        &request,
        identity.user_id(),
        body.into_inner().password,
    )
    .await?;
    let codes = state
        .two_factor
        .regenerate_recovery_codes(identity.user_id())
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "codes": codes })))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct PasswordRequest {
    password: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/me/2fa/totp/disable",
    tag = "2fa",
    summary = "Turn 2FA off",
    request_body = PasswordRequest,
    responses(
        (status = 204, description = "Off"),
        (status = 400, description = "Wrong password", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn api_disable(
    state: web::Data<AppState>,
    request: actix_web::HttpRequest,
    identity: Identity,
    body: crate::web::Json<PasswordRequest>,
) -> Result<HttpResponse, AppError> {
    check_password(
        &state,
        &request,
        identity.user_id(),
        body.into_inner().password,
    )
    .await?;
    state.two_factor.disable(identity.user_id()).await?;
    Ok(HttpResponse::NoContent().finish())
}

fn render(
    state: &AppState,
    page: &Page,
    status: StatusCode,
    values: serde_json::Value,
) -> Result<HttpResponse, AppError> {
    let mut context = page.context(state);
    if let serde_json::Value::Object(map) = values {
        for (key, value) in map {
            context.insert(key, &value);
        }
    }
    crate::web::pages::html(state, "settings/two_factor.html", &context, status)
}

fn back(notice: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((
            header::LOCATION,
            format!("/settings/security?notice={notice}"),
        ))
        .finish()
}

/// `POST /settings/2fa/start`: the QR code and key to scan, and the confirm form.
async fn start_form(
    state: web::Data<AppState>,
    page: Page,
    identity: Identity,
) -> Result<HttpResponse, AppError> {
    let enrolment = match state
        .two_factor
        .enrol(identity.user_id(), &identity.session.email)
        .await
    {
        Err(TwoFactorError::AlreadyOn) => return Ok(back("2fa_already_on")),
        other => other?,
    };
    render(
        &state,
        &page,
        StatusCode::OK,
        json!({ "step": "scan", "enrolment": enrolment }),
    )
}

/// `POST /settings/2fa/confirm`: on success the recovery codes, shown this once.
async fn confirm_form(
    state: web::Data<AppState>,
    page: Page,
    identity: Identity,
    form: web::Form<CodeRequest>,
) -> Result<HttpResponse, AppError> {
    match state
        .two_factor
        .confirm(identity.user_id(), form.into_inner().code)
        .await
    {
        Ok(codes) => render(
            &state,
            &page,
            StatusCode::OK,
            json!({ "step": "codes", "codes": codes, "enabled": true }),
        ),
        Err(TwoFactorError::InvalidCode) => {
            let enrolment = state
                .two_factor
                .pending_enrolment(identity.user_id(), &identity.session.email)
                .await?;
            match enrolment {
                Some(enrolment) => render(
                    &state,
                    &page,
                    StatusCode::BAD_REQUEST,
                    json!({ "step": "scan", "enrolment": enrolment, "error": TwoFactorError::InvalidCode.to_string() }),
                ),
                None => Ok(back("2fa_restart")),
            }
        }
        Err(TwoFactorError::NotEnrolling | TwoFactorError::AlreadyOn) => Ok(back("2fa_restart")),
        Err(other) => Err(other.into()),
    }
}

/// For the forms: `None` when the password is right, otherwise the notice the security page
/// shows (a wrong password, or too many checks / a locked account). Other errors stay errors.
async fn password_notice(
    state: &AppState,
    request: &actix_web::HttpRequest,
    user_id: i64,
    password: String,
) -> Result<Option<&'static str>, AppError> {
    match check_password(state, request, user_id, password).await {
        Ok(()) => Ok(None),
        Err(AppError::BadRequest(_)) => Ok(Some("2fa_wrong_password")),
        Err(AppError::Coded {
            status: StatusCode::TOO_MANY_REQUESTS,
            ..
        }) => Ok(Some("too_many_checks")),
        Err(other) => Err(other),
    }
}

async fn recovery_codes_form(
    state: web::Data<AppState>,
    request: actix_web::HttpRequest,
    page: Page,
    identity: Identity,
    form: web::Form<PasswordRequest>,
) -> Result<HttpResponse, AppError> {
    if let Some(notice) = password_notice(
        &state,
        &request,
        identity.user_id(),
        form.into_inner().password,
    )
    .await?
    {
        return Ok(back(notice));
    }
    let codes = state
        .two_factor
        .regenerate_recovery_codes(identity.user_id())
        .await?;
    render(
        &state,
        &page,
        StatusCode::OK,
        json!({ "step": "codes", "codes": codes }),
    )
}

async fn disable_form(
    state: web::Data<AppState>,
    request: actix_web::HttpRequest,
    identity: Identity,
    form: web::Form<PasswordRequest>,
) -> Result<HttpResponse, AppError> {
    if let Some(notice) = password_notice(
        &state,
        &request,
        identity.user_id(),
        form.into_inner().password,
    )
    .await?
    {
        return Ok(back(notice));
    }
    state.two_factor.disable(identity.user_id()).await?;
    Ok(back("2fa_disabled"))
}

/// This module's part of the OpenAPI document (`/api/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(api_enrol, api_confirm, api_recovery_codes, api_disable))]
pub struct ApiDoc;
