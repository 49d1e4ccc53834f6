//! HTTP surface of password change and reset.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;

use super::email_tokens::TokenError;
use super::identity::{self, Identity};
use super::password::HashError;
use super::passwords::PasswordError;
use crate::error::AppError;
use crate::web::AppState;
use crate::web::pages::{Page, TokenQuery, html};

const RESET_SENT: &str = "If this address has an account, a link to choose a new password is on its way. It works for 30 minutes.";

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::web::{get, resource};
    cfg.service(resource("/api/v1/me/password").post(api_change))
        .service(resource("/api/v1/auth/password/forgot").post(api_forgot))
        .service(resource("/api/v1/auth/password/reset").post(api_reset))
        .service(resource("/settings/password").post(change_form))
        .service(get("/forgot", forgot_page).post(forgot_form))
        .service(get("/reset", reset_page).post(reset_form));
}

impl From<PasswordError> for AppError {
    fn from(error: PasswordError) -> Self {
        match error {
            PasswordError::WrongCurrent | PasswordError::Policy(_) => {
                AppError::BadRequest(error.to_string())
            }
            PasswordError::Token(token) => super::handlers::token_problem(token),
            PasswordError::Reauth(login) => login.into(),
            PasswordError::Hash(HashError::Busy) => AppError::RateLimited {
                retry_after_secs: Some(1),
            },
            other => AppError::internal(anyhow::anyhow!("{other}")),
        }
    }
}

/// A new session replaces the current one after a privilege change, so a token captured before
/// the change is worthless afterwards.
async fn rotate_session(
    state: &AppState,
    request: &HttpRequest,
    identity: &Identity,
) -> Result<actix_web::cookie::Cookie<'static>, AppError> {
    state.sessions.revoke(&identity.session.id).await?;
    let (ip, user_agent) = crate::web::client_info(request);
    let ip = ip.map(|ip| ip.to_string());
    let session = state
        .sessions
        .create(identity.user_id(), ip, user_agent)
        .await?;
    Ok(identity::session_cookie(
        state,
        session.token,
        state.sessions.lifetime(),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct ChangeRequest {
    current_password: String,
    new_password: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/me/password",
    tag = "me",
    summary = "Change my password (signs out every other session)",
    request_body = ChangeRequest,
    responses(
        (status = 200, description = "Changed"),
        (status = 400, description = "Wrong current password or policy violation", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many password checks, or the account is locked", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
/// `POST /api/v1/me/password`.
async fn api_change(
    state: web::Data<AppState>,
    request: HttpRequest,
    identity: Identity,
    body: crate::web::Json<ChangeRequest>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    state
        .passwords
        .change(
            identity.user_id(),
            SecretString::from(body.current_password),
            SecretString::from(body.new_password),
            &identity.session.id,
            &super::handlers::client(&request),
        )
        .await?;
    let cookie = rotate_session(&state, &request, &identity).await?;
    Ok(HttpResponse::Ok()
        .cookie(cookie)
        .json(json!({ "status": "changed" })))
}

/// `POST /settings/password`: back to the security page with the outcome.
async fn change_form(
    state: web::Data<AppState>,
    request: HttpRequest,
    identity: Identity,
    form: web::Form<ChangeRequest>,
) -> Result<HttpResponse, AppError> {
    let form = form.into_inner();
    let outcome = state
        .passwords
        .change(
            identity.user_id(),
            SecretString::from(form.current_password),
            SecretString::from(form.new_password),
            &identity.session.id,
            &super::handlers::client(&request),
        )
        .await;
    let (cookie, notice) = match outcome {
        Ok(()) => (
            Some(rotate_session(&state, &request, &identity).await?),
            "password_changed".to_owned(),
        ),
        // Codes, not text: the page must not display words taken from a URL.
        Err(PasswordError::WrongCurrent) => (None, "wrong_current".to_owned()),
        Err(PasswordError::Policy(policy)) => (None, policy.code().to_owned()),
        Err(PasswordError::Reauth(_)) => (None, "too_many_checks".to_owned()),
        Err(other) => return Err(other.into()),
    };
    let mut response = HttpResponse::SeeOther();
    if let Some(cookie) = cookie {
        response.cookie(cookie);
    }
    Ok(response
        .insert_header((
            header::LOCATION,
            format!("/settings/security?notice={notice}"),
        ))
        .finish())
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct ForgotRequest {
    email: String,
    /// The solved proof-of-work challenge, when `captcha.enabled`.
    captcha: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/password/forgot",
    tag = "auth",
    summary = "Mail a password-reset link",
    request_body = ForgotRequest,
    responses(
        (status = 202, description = "Accepted whatever the address"),
        (status = 400, description = "Missing or invalid CAPTCHA", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
/// `POST /api/v1/auth/password/forgot`: 202 whatever the address.
async fn api_forgot(
    state: web::Data<AppState>,
    body: crate::web::Json<ForgotRequest>,
) -> Result<HttpResponse, AppError> {
    state.captcha.check(body.captcha.as_deref()).await?;
    state.passwords.forgot(&body.email).await?;
    Ok(HttpResponse::Accepted().json(json!({ "status": "reset_link_sent", "detail": RESET_SENT })))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct ResetRequest {
    token: String,
    password: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/password/reset",
    tag = "auth",
    summary = "Set a new password with a reset token (signs out everywhere)",
    request_body = ResetRequest,
    responses(
        (status = 200, description = "Password set"),
        (status = 400, description = "Policy violation or malformed token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 410, description = "Token used or expired", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
/// `POST /api/v1/auth/password/reset`.
async fn api_reset(
    state: web::Data<AppState>,
    body: crate::web::Json<ResetRequest>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    state
        .passwords
        .reset(body.token, SecretString::from(body.password))
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "status": "password_reset" })))
}

fn render(
    state: &AppState,
    page: &Page,
    status: StatusCode,
    template: &str,
    values: &[(&str, &str)],
) -> Result<HttpResponse, AppError> {
    let mut context = page.context(state);
    for (key, value) in values {
        context.insert(*key, value);
    }
    context.insert("min_length", &state.settings.accounts.password_min_length);
    if template == "auth/forgot.html" {
        super::captcha::insert_challenge(state, &mut context);
    }
    html(state, template, &context, status)
}

async fn forgot_page(state: web::Data<AppState>, page: Page) -> Result<HttpResponse, AppError> {
    render(&state, &page, StatusCode::OK, "auth/forgot.html", &[])
}

async fn forgot_form(
    state: web::Data<AppState>,
    page: Page,
    form: web::Form<ForgotRequest>,
) -> Result<HttpResponse, AppError> {
    if let Err(error) = state.captcha.check(form.captcha.as_deref()).await {
        let message = error.to_string();
        let status = actix_web::ResponseError::status_code(&AppError::from(error));
        return render(
            &state,
            &page,
            status,
            "auth/forgot.html",
            &[("error", &message), ("email", form.email.trim())],
        );
    }
    state.passwords.forgot(&form.email).await?;
    render(
        &state,
        &page,
        StatusCode::OK,
        "auth/message.html",
        &[("heading", "Check your inbox"), ("message", RESET_SENT)],
    )
}

fn link_broken(state: &AppState, page: &Page, error: TokenError) -> Result<HttpResponse, AppError> {
    let status = actix_web::ResponseError::status_code(&super::handlers::token_problem(error));
    let message = format!("{error} You can ask for a new link.");
    render(
        state,
        page,
        status,
        "auth/message.html",
        &[
            ("heading", "This link does not work"),
            ("message", &message),
            ("action_url", "/forgot"),
            ("action_label", "Ask for a new link"),
        ],
    )
}

async fn reset_page(
    state: web::Data<AppState>,
    page: Page,
    query: web::Query<TokenQuery>,
) -> Result<HttpResponse, AppError> {
    let token = query.into_inner().token.unwrap_or_default();
    match state.passwords.check_reset_token(token.clone()).await? {
        Ok(user_id) => {
            // A reset cannot carry the personal key over: say so before it happens.
            let private = state.chat.personal_keys().exists(user_id).await?;
            render(
                &state,
                &page,
                StatusCode::OK,
                "auth/reset.html",
                &[
                    ("token", &token),
                    ("private_history", if private { "yes" } else { "" }),
                ],
            )
        }
        Err(error) => link_broken(&state, &page, error),
    }
}

async fn reset_form(
    state: web::Data<AppState>,
    page: Page,
    form: web::Form<ResetRequest>,
) -> Result<HttpResponse, AppError> {
    let form = form.into_inner();
    match state
        .passwords
        .reset(form.token.clone(), SecretString::from(form.password))
        .await
    {
        Ok(()) => Ok(HttpResponse::SeeOther()
            .cookie(identity::expired_session_cookie(&state))
            .insert_header((header::LOCATION, "/login?notice=password_reset"))
            .finish()),
        Err(PasswordError::Token(error)) => link_broken(&state, &page, error),
        Err(error @ PasswordError::Policy(_)) => {
            let message = error.to_string();
            render(
                &state,
                &page,
                StatusCode::BAD_REQUEST,
                "auth/reset.html",
                &[("token", &form.token), ("error", &message)],
            )
        }
        Err(other) => Err(other.into()),
    }
}

/// This module's part of the OpenAPI document (`/api/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(api_change, api_forgot, api_reset))]
pub struct ApiDoc;
