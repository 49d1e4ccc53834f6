//! HTTP surface of sign-in: the JSON API and the server-rendered pages.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;

use super::email_tokens::TokenError;
use super::identity::{self, Caller, Identity};
use super::login::{Client, LoginError, LoginOutcome};
use super::password::HashError;
use super::sessions::NewSession;
use super::signup::SignupError;
use super::two_factor::TwoFactorError;
use crate::audit::{self, AuditEvent, events};
use crate::db::DbError;
use crate::error::AppError;
use crate::tenancy;
use crate::web::AppState;
use crate::web::pages::{Page, TokenQuery, html};

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::web::{get, resource};
    cfg.service(resource("/api/v1/auth/login").post(api_login))
        .service(resource("/api/v1/auth/logout").post(api_logout))
        .service(get("/api/v1/me", api_me).delete(super::deletion::api_delete))
        .service(get("/login", login_page).post(login_form))
        .service(resource("/api/v1/auth/login/mfa").post(api_login_mfa))
        .service(get("/login/2fa", second_factor_page).post(second_factor_form))
        .service(resource("/logout").post(logout_form))
        .service(resource("/api/v1/auth/signup").post(api_signup))
        .service(get("/api/v1/auth/captcha", super::captcha::api_challenge))
        .service(resource("/api/v1/auth/verify").post(api_verify))
        .service(get("/signup", signup_page).post(signup_form))
        .service(get("/verify", verify_page).post(verify_form));
}

impl From<SignupError> for AppError {
    fn from(error: SignupError) -> Self {
        match error {
            SignupError::Invalid(message) => AppError::BadRequest(message),
            SignupError::Closed => AppError::Forbidden(SignupError::Closed.to_string()),
            SignupError::Hash(HashError::Busy) => AppError::RateLimited {
                retry_after_secs: Some(1),
            },
            other => AppError::internal(anyhow::anyhow!("{other}")),
        }
    }
}

const SIGNUP_SENT: &str = "If this address can receive mail, a message is on its way: follow the link in it to confirm your address, then sign in.";

#[derive(Deserialize, utoipa::ToSchema)]
pub struct SignupRequest {
    email: String,
    password: String,
    name: Option<String>,
    /// The solved proof-of-work challenge, when `captcha.enabled`.
    captcha: Option<String>,
    /// A paid plan to pay for after confirming the address (`GET /api/v1/billing/plans`).
    plan: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/signup",
    tag = "auth",
    summary = "Create an account; a verification link is mailed",
    request_body = SignupRequest,
    responses(
        (status = 202, description = "Accepted whether or not the address already had an account"),
        (status = 400, description = "Invalid field or missing/invalid CAPTCHA", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Sign-up is closed", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Hashing busy", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
/// `POST /api/v1/auth/signup`: 202 whether or not the address already had an account.
async fn api_signup(
    state: web::Data<AppState>,
    body: crate::web::Json<SignupRequest>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    let plan = state
        .billing
        .signup_plan(body.plan.as_deref())
        .map_err(AppError::BadRequest)?;
    state.captcha.check(body.captcha.as_deref()).await?;
    state
        .signup
        .sign_up(
            &body.email,
            SecretString::from(body.password),
            body.name.as_deref(),
            plan,
        )
        .await?;
    Ok(HttpResponse::Accepted()
        .json(json!({ "status": "verification_sent", "detail": SIGNUP_SENT })))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct VerifyRequest {
    token: String,
}

pub(crate) fn token_problem(error: TokenError) -> AppError {
    let (status, code) = match error {
        TokenError::Unknown => (StatusCode::BAD_REQUEST, "invalid_token"),
        TokenError::Used => (StatusCode::GONE, "token_used"),
        TokenError::Expired => (StatusCode::GONE, "token_expired"),
    };
    AppError::Coded {
        status,
        code,
        message: error.to_string(),
        retry_after_secs: None,
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/verify",
    tag = "auth",
    summary = "Verify an email address with the mailed token",
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "Verified"),
        (status = 400, description = "Malformed token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 410, description = "Token used or expired", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
/// `POST /api/v1/auth/verify`: `{"token"}` from the verification link.
async fn api_verify(
    state: web::Data<AppState>,
    body: crate::web::Json<VerifyRequest>,
) -> Result<HttpResponse, AppError> {
    match state.signup.verify(body.into_inner().token).await? {
        Ok(email) => Ok(HttpResponse::Ok().json(json!({ "status": "verified", "email": email }))),
        Err(error) => Err(token_problem(error)),
    }
}

/// `GET /signup`.
async fn signup_page(state: web::Data<AppState>, page: Page) -> Result<HttpResponse, AppError> {
    if page.identity.is_some() {
        return Ok(HttpResponse::SeeOther()
            .insert_header((header::LOCATION, "/"))
            .finish());
    }
    render_signup(&state, &page, StatusCode::OK, "", "", None)
}

fn render_signup(
    state: &AppState,
    page: &Page,
    status: StatusCode,
    name: &str,
    email: &str,
    error: Option<&str>,
) -> Result<HttpResponse, AppError> {
    let mut context = page.context(state);
    context.insert("name", name);
    context.insert("email", email);
    context.insert("error", &error);
    context.insert("min_length", &state.settings.accounts.password_min_length);
    context.insert("providers", &state.federation.buttons());
    context.insert("plans", &state.billing.signup_plans());
    super::captcha::insert_challenge(state, &mut context);
    html(state, "auth/signup.html", &context, status)
}

pub(crate) fn render_message(
    state: &AppState,
    page: &Page,
    status: StatusCode,
    heading: &str,
    message: &str,
    action: Option<(&str, &str)>,
) -> Result<HttpResponse, AppError> {
    let mut context = page.context(state);
    context.insert("heading", heading);
    context.insert("message", message);
    context.insert("action_url", &action.map(|(url, _)| url));
    context.insert("action_label", &action.map(|(_, label)| label));
    html(state, "auth/message.html", &context, status)
}

#[derive(Deserialize)]
pub struct SignupForm {
    email: String,
    password: String,
    name: Option<String>,
    captcha: Option<String>,
    plan: Option<String>,
}

/// `POST /signup`: "check your inbox", or the form again with the problem and what was typed.
async fn signup_form(
    state: web::Data<AppState>,
    page: Page,
    form: web::Form<SignupForm>,
) -> Result<HttpResponse, AppError> {
    let form = form.into_inner();
    let name = form.name.clone().unwrap_or_default();
    if let Err(error) = state.captcha.check(form.captcha.as_deref()).await {
        let message = error.to_string();
        let status = actix_web::ResponseError::status_code(&AppError::from(error));
        return render_signup(
            &state,
            &page,
            status,
            name.trim(),
            form.email.trim(),
            Some(&message),
        );
    }
    let plan = match state.billing.signup_plan(form.plan.as_deref()) {
        Ok(plan) => plan,
        Err(message) => {
            return render_signup(
                &state,
                &page,
                StatusCode::BAD_REQUEST,
                name.trim(),
                form.email.trim(),
                Some(&message),
            );
        }
    };
    let outcome = state
        .signup
        .sign_up(
            &form.email,
            SecretString::from(form.password),
            form.name.as_deref(),
            plan,
        )
        .await;
    match outcome {
        Ok(()) => render_message(
            &state,
            &page,
            StatusCode::OK,
            "Check your inbox",
            SIGNUP_SENT,
            None,
        ),
        Err(
            error @ (SignupError::Invalid(_)
            | SignupError::Closed
            | SignupError::Hash(HashError::Busy)),
        ) => {
            let message = error.to_string();
            let status = actix_web::ResponseError::status_code(&AppError::from(error));
            render_signup(
                &state,
                &page,
                status,
                name.trim(),
                form.email.trim(),
                Some(&message),
            )
        }
        Err(other) => Err(other.into()),
    }
}

/// `GET /verify?token=…`: the link from the verification mail. It only shows a button: mail
/// scanners fetch links, and a GET must not verify an address on their behalf.
async fn verify_page(
    state: web::Data<AppState>,
    page: Page,
    query: web::Query<TokenQuery>,
) -> Result<HttpResponse, AppError> {
    let token = query.into_inner().token.unwrap_or_default();
    match state.signup.check_verify_token(token.clone()).await? {
        Ok(_) => {
            let mut context = page.context(&state);
            context.insert("token", &token);
            html(&state, "auth/verify.html", &context, StatusCode::OK)
        }
        Err(error) => broken_verify_link(&state, &page, error),
    }
}

fn broken_verify_link(
    state: &AppState,
    page: &Page,
    error: TokenError,
) -> Result<HttpResponse, AppError> {
    let status = actix_web::ResponseError::status_code(&token_problem(error));
    render_message(
        state,
        page,
        status,
        "This link does not work",
        &error.to_string(),
        Some(("/login", "Go to sign in")),
    )
}

#[derive(Deserialize)]
pub struct VerifyForm {
    token: String,
}

/// `POST /verify`: the button on the verification page.
async fn verify_form(
    state: web::Data<AppState>,
    page: Page,
    form: web::Form<VerifyForm>,
) -> Result<HttpResponse, AppError> {
    match state.signup.verify(form.into_inner().token).await? {
        Ok(_) => render_message(
            &state,
            &page,
            StatusCode::OK,
            "Address confirmed",
            "Thank you: your email address is confirmed and your account is ready.",
            Some(("/login", "Sign in")),
        ),
        Err(error) => broken_verify_link(&state, &page, error),
    }
}

pub(crate) fn client(request: &HttpRequest) -> Client {
    let secure = request
        .app_data::<web::Data<AppState>>()
        .is_some_and(|state| identity::secure_cookies(state));
    let (ip, user_agent) = crate::web::client_info(request);
    Client {
        ip,
        user_agent,
        remembered_device: request
            .cookie(identity::device_cookie_name(secure))
            .map(|c| c.value().to_owned()),
    }
}

/// The response to a right password when a second step is needed: the challenge travels in
/// a short-lived cookie, so the code form needs nothing else.
fn second_factor_needed(
    state: &AppState,
    builder: &mut actix_web::HttpResponseBuilder,
    challenge: String,
) {
    builder.cookie(identity::challenge_cookie(state, challenge));
}

/// Where a browser goes after the first factor: on to `next` signed in, or to the code form
/// (which then continues to `next`).
pub(crate) fn outcome_redirect(
    state: &AppState,
    outcome: LoginOutcome,
    next: &str,
) -> HttpResponse {
    let mut response = HttpResponse::SeeOther();
    match outcome {
        LoginOutcome::Session(session) => {
            signed_in(state, &mut response, &session, None);
            response.insert_header((header::LOCATION, next.to_owned()));
        }
        LoginOutcome::SecondFactor { challenge } => {
            second_factor_needed(state, &mut response, challenge);
            response.insert_header((header::LOCATION, format!("/login/2fa{}", next_query(next))));
        }
    }
    response.finish()
}

/// `?next=<next>` (encoded), or nothing when `next` is the start page.
pub(crate) fn next_query(next: &str) -> String {
    if next == "/" {
        return String::new();
    }
    let encoded: String = url::form_urlencoded::byte_serialize(next.as_bytes()).collect();
    format!("?next={encoded}")
}

/// Sets the session (and remembered-device) cookies of a finished sign-in.
fn signed_in(
    state: &AppState,
    builder: &mut actix_web::HttpResponseBuilder,
    session: &NewSession,
    device: Option<String>,
) {
    builder.cookie(identity::session_cookie(
        state,
        session.token.clone(),
        state.sessions.lifetime(),
    ));
    builder.cookie(identity::expired_cookie(
        state,
        identity::challenge_cookie_name(identity::secure_cookies(state)),
    ));
    if let Some(device) = device {
        builder.cookie(identity::device_cookie(state, device));
    }
}

fn user_json(session: &NewSession) -> serde_json::Value {
    json!({
        "user": {
            "id": session.info.user_id,
            "email": session.info.email,
            "name": session.info.display_name,
        },
        "session_expires_at": session.info.expires_at.and_utc().to_rfc3339(),
    })
}

impl From<LoginError> for AppError {
    fn from(error: LoginError) -> Self {
        let coded = |status, code, error: &LoginError, retry_after_secs| AppError::Coded {
            status,
            code,
            message: error.to_string(),
            retry_after_secs,
        };
        match &error {
            LoginError::InvalidCredentials => coded(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                &error,
                None,
            ),
            LoginError::Locked { minutes } => coded(
                StatusCode::TOO_MANY_REQUESTS,
                "account_locked",
                &error,
                Some(u64::try_from(*minutes).unwrap_or(1).saturating_mul(60)),
            ),
            LoginError::EmailUnverified => {
                coded(StatusCode::FORBIDDEN, "email_unverified", &error, None)
            }
            LoginError::Disabled => coded(StatusCode::FORBIDDEN, "account_disabled", &error, None),
            LoginError::RateLimited { retry_after_secs } => coded(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                &error,
                Some(*retry_after_secs),
            ),
            LoginError::Hash(super::password::HashError::Busy) => {
                coded(StatusCode::TOO_MANY_REQUESTS, "busy", &error, Some(1))
            }
            LoginError::SecondFactor(TwoFactorError::InvalidCode) => {
                coded(StatusCode::UNAUTHORIZED, "invalid_code", &error, None)
            }
            LoginError::SecondFactor(TwoFactorError::ChallengeExpired) => {
                coded(StatusCode::UNAUTHORIZED, "mfa_expired", &error, None)
            }
            LoginError::SecondFactor(_) | LoginError::Hash(_) | LoginError::Database(_) => {
                AppError::internal(anyhow::anyhow!("{error}"))
            }
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct LoginRequest {
    email: String,
    password: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    tag = "auth",
    summary = "Sign in with email and password (sets the session cookie)",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in: `{user, session_expires_at}`"),
        (status = 401, description = "`invalid_credentials`, or `mfa_required` (then POST /api/v1/auth/login/mfa)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "`email_unverified` or `account_disabled`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "`account_locked`, `rate_limited` or `busy`; see Retry-After", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
/// `POST /api/v1/auth/login`: `{"email","password"}` → 200 with the user and a session cookie.
async fn api_login(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: crate::web::Json<LoginRequest>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    let outcome = state
        .login
        .login(
            &body.email,
            SecretString::from(body.password),
            &client(&request),
        )
        .await?;
    match outcome {
        LoginOutcome::Session(session) => {
            let mut response = HttpResponse::Ok();
            signed_in(&state, &mut response, &session, None);
            Ok(response.json(user_json(&session)))
        }
        LoginOutcome::SecondFactor { challenge } => {
            let mut response = HttpResponse::Unauthorized();
            second_factor_needed(&state, &mut response, challenge);
            let mut problem = crate::error::Problem::new(
                StatusCode::UNAUTHORIZED,
                "Enter the code from your authenticator app (or a recovery code) at POST /api/v1/auth/login/mfa.",
            );
            problem.error = Some("mfa_required");
            Ok(response
                .content_type("application/problem+json")
                .json(problem))
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct SecondFactorRequest {
    code: String,
    #[serde(default)]
    remember_device: bool,
    next: Option<String>,
}

fn challenge_of(request: &HttpRequest, state: &AppState) -> Result<String, AppError> {
    request
        .cookie(identity::challenge_cookie_name(identity::secure_cookies(
            state,
        )))
        .map(|c| c.value().to_owned())
        .ok_or_else(|| AppError::from(LoginError::SecondFactor(TwoFactorError::ChallengeExpired)))
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/login/mfa",
    tag = "auth",
    summary = "Second step: a TOTP or recovery code",
    request_body = SecondFactorRequest,
    responses(
        (status = 200, description = "Signed in"),
        (status = 401, description = "`invalid_code` or `mfa_expired`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Locked or rate limited", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
/// `POST /api/v1/auth/login/mfa`: `{"code", "remember_device"}` after `mfa_required`.
async fn api_login_mfa(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: crate::web::Json<SecondFactorRequest>,
) -> Result<HttpResponse, AppError> {
    let challenge = challenge_of(&request, &state)?;
    let (session, device) = state
        .login
        .complete_second_factor(
            &challenge,
            &body.code,
            body.remember_device,
            &client(&request),
        )
        .await?;
    let mut response = HttpResponse::Ok();
    signed_in(&state, &mut response, &session, device);
    Ok(response.json(user_json(&session)))
}

/// `GET /login/2fa`: the code form of the second step.
async fn second_factor_page(
    state: web::Data<AppState>,
    page: Page,
    query: web::Query<LoginQuery>,
) -> Result<HttpResponse, AppError> {
    render_second_factor(
        &state,
        &page,
        StatusCode::OK,
        &safe_next(query.next.as_deref()),
        None,
    )
}

fn render_second_factor(
    state: &AppState,
    page: &Page,
    status: StatusCode,
    next: &str,
    error: Option<&str>,
) -> Result<HttpResponse, AppError> {
    let mut context = page.context(state);
    context.insert("next", next);
    context.insert("error", &error);
    context.insert("remember_days", &super::two_factor::REMEMBER_DAYS);
    html(state, "auth/second_factor.html", &context, status)
}

/// `POST /login/2fa`.
async fn second_factor_form(
    state: web::Data<AppState>,
    request: HttpRequest,
    page: Page,
    form: web::Form<SecondFactorRequest>,
) -> Result<HttpResponse, AppError> {
    let form = form.into_inner();
    let next = safe_next(form.next.as_deref());
    let Ok(challenge) = challenge_of(&request, &state) else {
        return Ok(HttpResponse::SeeOther()
            .insert_header((header::LOCATION, "/login"))
            .finish());
    };
    match state
        .login
        .complete_second_factor(
            &challenge,
            &form.code,
            form.remember_device,
            &client(&request),
        )
        .await
    {
        Ok((session, device)) => {
            let mut response = HttpResponse::SeeOther();
            signed_in(&state, &mut response, &session, device);
            Ok(response.insert_header((header::LOCATION, next)).finish())
        }
        Err(LoginError::SecondFactor(TwoFactorError::ChallengeExpired)) => {
            Ok(HttpResponse::SeeOther()
                .insert_header((header::LOCATION, "/login"))
                .finish())
        }
        Err(
            error @ (LoginError::SecondFactor(TwoFactorError::InvalidCode)
            | LoginError::RateLimited { .. }),
        ) => {
            let message = error.to_string();
            let status = actix_web::ResponseError::status_code(&AppError::from(error));
            render_second_factor(&state, &page, status, &next, Some(&message))
        }
        Err(other) => Err(other.into()),
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/logout",
    tag = "auth",
    summary = "End this session",
    responses(
        (status = 204, description = "Signed out")
    )
)]
/// `POST /api/v1/auth/logout`: ends this session.
async fn api_logout(
    state: web::Data<AppState>,
    request: HttpRequest,
    identity: Identity,
) -> Result<HttpResponse, AppError> {
    end_session(&state, &request, &identity).await?;
    Ok(HttpResponse::NoContent()
        .cookie(identity::expired_session_cookie(&state))
        .finish())
}

async fn end_session(
    state: &AppState,
    request: &HttpRequest,
    identity: &Identity,
) -> Result<(), AppError> {
    state.sessions.revoke(&identity.session.id).await?;
    // Signing out closes private conversations on this server at once.
    state.chat.personal_keys().lock(identity.user_id());
    let client = client(request);
    let event = AuditEvent {
        ip: client.ip.map(|ip| ip.to_string()),
        user_agent: client.user_agent,
        ..AuditEvent::by_user(events::LOGOUT, identity.user_id())
    };
    audit::record_now(&state.db, event).await?;
    Ok(())
}

#[utoipa::path(
    get,
    path = "/api/v1/me",
    tag = "me",
    summary = "Who is calling: user, memberships, session or token",
    responses(
        (status = 200, description = "`{id, email, name, memberships, session?|token?}`"),
        (status = 401, description = "Not signed in", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
/// `GET /api/v1/me`: the signed-in user (by session or API token) and their workspaces.
async fn api_me(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, AppError> {
    let user_id = caller.user_id;
    let memberships = state
        .db
        .run(move |conn| tenancy::memberships_of(conn, &[user_id]).map_err(DbError::from))
        .await?;
    let memberships: Vec<_> = memberships.into_iter().map(|(_, m)| m).collect();
    let mut body = json!({
        "id": user_id,
        "email": caller.email,
        "name": caller.display_name,
        "memberships": memberships,
    });
    if let Some(session) = &caller.session {
        body["session"] = json!({
            "created_at": session.created_at.and_utc().to_rfc3339(),
            "expires_at": session.expires_at.and_utc().to_rfc3339(),
        });
    }
    if let Some(token) = &caller.token {
        body["token"] = json!({ "id": token.token_id, "scopes": token.scopes });
    }
    Ok(HttpResponse::Ok().json(body))
}

#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
    /// A message from the step before, e.g. `password_reset`.
    notice: Option<String>,
}

/// Only paths on this site: `//evil.example` and `/\evil.example` are other sites to a browser.
/// Browsers drop tabs and newlines from URLs, so `/\t/evil.example` means `//evil.example`:
/// any whitespace or control character, or a second character that starts an authority,
/// makes the path unsafe.
pub(crate) fn safe_next(next: Option<&str>) -> String {
    let is_local = |path: &str| {
        path.starts_with('/')
            && !matches!(path.chars().nth(1), Some('/' | '\\'))
            && !path
                .chars()
                .any(|c| c == '\\' || c.is_whitespace() || c.is_control())
    };
    match next {
        Some(path) if is_local(path) => path.to_owned(),
        _ => "/".to_owned(),
    }
}

/// `GET /login`.
async fn login_page(
    state: web::Data<AppState>,
    page: Page,
    query: web::Query<LoginQuery>,
) -> Result<HttpResponse, AppError> {
    let next = safe_next(query.next.as_deref());
    if page.identity.is_some() {
        return Ok(HttpResponse::SeeOther()
            .insert_header((header::LOCATION, next))
            .finish());
    }
    let mut response = render_login(
        &state,
        &page,
        StatusCode::OK,
        "",
        &next,
        None,
        query.notice.as_deref(),
    )?;
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

pub(crate) fn render_login(
    state: &AppState,
    page: &Page,
    status: StatusCode,
    email: &str,
    next: &str,
    error: Option<&str>,
    notice: Option<&str>,
) -> Result<HttpResponse, AppError> {
    let mut context = page.context(state);
    context.insert("notice", &notice);
    context.insert("email", email);
    context.insert("next", next);
    context.insert("error", &error);
    context.insert("providers", &state.federation.buttons());
    context.insert("next_query", &next_query(next));
    html(state, "auth/login.html", &context, status)
}

#[derive(Deserialize)]
pub struct LoginForm {
    email: String,
    password: String,
    next: Option<String>,
}

/// `POST /login`: on success back to where the person was going; on failure the same page
/// with the reason and the email they typed.
async fn login_form(
    state: web::Data<AppState>,
    request: HttpRequest,
    page: Page,
    form: web::Form<LoginForm>,
) -> Result<HttpResponse, AppError> {
    let form = form.into_inner();
    let next = safe_next(form.next.as_deref());
    match state
        .login
        .login(
            &form.email,
            SecretString::from(form.password),
            &client(&request),
        )
        .await
    {
        Ok(outcome) => Ok(outcome_redirect(&state, outcome, &next)),
        Err(
            error @ (LoginError::Hash(super::password::HashError::Failed(_))
            | LoginError::Database(_)),
        ) => Err(error.into()),
        Err(error) => {
            let message = error.to_string();
            let status = actix_web::ResponseError::status_code(&AppError::from(error));
            render_login(
                &state,
                &page,
                status,
                form.email.trim(),
                &next,
                Some(&message),
                None,
            )
        }
    }
}

/// `POST /logout`.
async fn logout_form(
    state: web::Data<AppState>,
    request: HttpRequest,
    page: Page,
) -> Result<HttpResponse, AppError> {
    if let Some(identity) = &page.identity {
        end_session(&state, &request, identity).await?;
    }
    Ok(HttpResponse::SeeOther()
        .cookie(identity::expired_session_cookie(&state))
        .insert_header((header::LOCATION, "/"))
        .finish())
}

/// This module's part of the OpenAPI document (`/api/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(api_signup, api_verify, api_login, api_login_mfa, api_logout, api_me))]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(safe_next(Some("/rooms/3?tab=files")), "/rooms/3?tab=files");
        for hostile in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "evil",
            "/\t/evil.example",
            "/\n/evil.example",
            "/ /evil.example",
            "\t//evil.example",
        ] {
            assert_eq!(safe_next(Some(hostile)), "/", "{hostile}");
        }
        assert_eq!(safe_next(None), "/");
    }
}
