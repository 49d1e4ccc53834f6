//! `Identity`: who is making this request. Handlers take it as an extractor; a request without
//! a live session gets 401 (API) or is sent to the sign-in page (browser).
//!
//! Cookies: `__Host-conclave_session` over https (the prefix forces Secure, Path=/ and no
//! Domain, so no subdomain can set or read it); plain `conclave_session` on http in
//! development, where browsers refuse `__Host-` cookies. Always HttpOnly and SameSite=Lax.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::cookie::{Cookie, SameSite, time};
use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage as _, HttpRequest, web};

use super::sessions::SessionInfo;
use crate::error::AppError;
use crate::web::AppState;

pub fn secure_cookies(state: &AppState) -> bool {
    state.public_url.starts_with("https://")
}

pub fn session_cookie_name(secure: bool) -> &'static str {
    if secure {
        "__Host-conclave_session"
    } else {
        "conclave_session"
    }
}

/// The cookie that carries a new session's token.
pub fn session_cookie(
    state: &AppState,
    token: String,
    max_age: chrono::TimeDelta,
) -> Cookie<'static> {
    let secure = secure_cookies(state);
    Cookie::build(session_cookie_name(secure), token)
        .path("/")
        .http_only(true)
        .secure(secure)
        .same_site(SameSite::Lax)
        .max_age(time::Duration::seconds(max_age.num_seconds()))
        .finish()
}

pub fn challenge_cookie_name(secure: bool) -> &'static str {
    if secure {
        "__Host-conclave_mfa"
    } else {
        "conclave_mfa"
    }
}

pub fn device_cookie_name(secure: bool) -> &'static str {
    if secure {
        "__Host-conclave_device"
    } else {
        "conclave_device"
    }
}

fn cookie(
    state: &AppState,
    name: &'static str,
    value: String,
    max_age: time::Duration,
    same_site: SameSite,
) -> Cookie<'static> {
    Cookie::build(name, value)
        .path("/")
        .http_only(true)
        .secure(secure_cookies(state))
        .same_site(same_site)
        .max_age(max_age)
        .finish()
}

/// Carries a pending second step (5 minutes).
pub fn challenge_cookie(state: &AppState, token: String) -> Cookie<'static> {
    cookie(
        state,
        challenge_cookie_name(secure_cookies(state)),
        token,
        time::Duration::minutes(5),
        SameSite::Strict,
    )
}

/// Marks this browser as remembered for the second step.
pub fn device_cookie(state: &AppState, token: String) -> Cookie<'static> {
    let days = super::two_factor::REMEMBER_DAYS;
    cookie(
        state,
        device_cookie_name(secure_cookies(state)),
        token,
        time::Duration::days(days),
        SameSite::Lax,
    )
}

/// A removal cookie for `name`.
pub fn expired_cookie(state: &AppState, name: &'static str) -> Cookie<'static> {
    let mut removal = cookie(
        state,
        name,
        String::new(),
        time::Duration::ZERO,
        SameSite::Lax,
    );
    removal.make_removal();
    removal
}

/// A cookie that makes the browser forget the session.
pub fn expired_session_cookie(state: &AppState) -> Cookie<'static> {
    let secure = secure_cookies(state);
    let mut cookie = Cookie::build(session_cookie_name(secure), "")
        .path("/")
        .http_only(true)
        .secure(secure)
        .same_site(SameSite::Lax)
        .finish();
    cookie.make_removal();
    cookie
}

/// The signed-in person behind a request.
#[derive(Debug, Clone)]
pub struct Identity {
    pub session: Arc<SessionInfo>,
}

impl Identity {
    pub fn user_id(&self) -> i64 {
        self.session.user_id
    }
}

/// Resolves the session cookie, if any, to a live session. The answer is kept in the
/// request's extensions, so `Page` and `Identity` in one handler cost one lookup.
pub async fn resolve(request: &HttpRequest) -> Result<Option<Identity>, AppError> {
    if let Some(resolved) = request.extensions().get::<Resolved>() {
        return Ok(resolved.0.clone());
    }
    let resolved = lookup(request).await?;
    request.extensions_mut().insert(Resolved(resolved.clone()));
    Ok(resolved)
}

/// The session this request resolved to (or that it has none).
#[derive(Clone)]
struct Resolved(Option<Identity>);

async fn lookup(request: &HttpRequest) -> Result<Option<Identity>, AppError> {
    let Some(state) = request.app_data::<web::Data<AppState>>() else {
        return Err(AppError::internal(anyhow::anyhow!(
            "application state missing"
        )));
    };
    let name = session_cookie_name(secure_cookies(state));
    let Some(cookie) = request.cookie(name) else {
        return Ok(None);
    };
    let session = state.sessions.resolve(cookie.value()).await?;
    if let Some(session) = &session {
        crate::telemetry::record_user(request, session.user_id);
    }
    Ok(session.map(|session| Identity { session }))
}

fn bearer(request: &HttpRequest) -> Option<String> {
    request
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|token| token.trim().to_owned())
}

/// `Identity` is a signed-in browser session. Endpoints that manage the account's own
/// security (password, 2FA, sessions, tokens) take it, so a leaked API token cannot be used
/// to take over the account.
impl FromRequest for Identity {
    type Error = AppError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let request = request.clone();
        Box::pin(async move {
            if let Some(identity) = resolve(&request).await? {
                return Ok(identity);
            }
            if bearer(&request).is_some() {
                return Err(AppError::Forbidden(
                    "This needs a signed-in session; API tokens cannot manage account security."
                        .to_owned(),
                ));
            }
            Err(AppError::Unauthenticated("Sign in first.".to_owned()))
        })
    }
}

/// Whoever is calling an API endpoint: a signed-in session, or an API token (`Authorization:
/// Bearer cnv_…`). A token with only the `read` scope may not use unsafe methods.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: i64,
    pub email: String,
    pub display_name: String,
    pub session: Option<Arc<SessionInfo>>,
    pub token: Option<super::api_tokens::TokenIdentity>,
}

impl FromRequest for Caller {
    type Error = AppError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let request = request.clone();
        Box::pin(async move {
            if let Some(presented) = bearer(&request) {
                let Some(state) = request.app_data::<web::Data<AppState>>() else {
                    return Err(AppError::internal(anyhow::anyhow!(
                        "application state missing"
                    )));
                };
                let token = resolve_token(state, &request, presented).await?;
                let safe = matches!(
                    *request.method(),
                    actix_web::http::Method::GET | actix_web::http::Method::HEAD
                );
                if !safe && !token.scopes.iter().any(|s| s == "write") {
                    return Err(AppError::Coded {
                        status: actix_web::http::StatusCode::FORBIDDEN,
                        code: "insufficient_scope",
                        message: "This token has only the read scope.".to_owned(),
                        retry_after_secs: None,
                    });
                }
                crate::telemetry::record_user(&request, token.user_id);
                return Ok(Caller {
                    user_id: token.user_id,
                    email: token.email.clone(),
                    display_name: token.display_name.clone(),
                    session: None,
                    token: Some(token),
                });
            }
            let identity = resolve(&request)
                .await?
                .ok_or_else(|| AppError::Unauthenticated("Sign in first.".to_owned()))?;
            Ok(Caller {
                user_id: identity.session.user_id,
                email: identity.session.email.clone(),
                display_name: identity.session.display_name.clone(),
                session: Some(identity.session),
                token: None,
            })
        })
    }
}

/// The API token a client presented, or 401 `invalid_token`; 429 while the client's address
/// is blocked for guessing (`TokenGuard`).
pub async fn resolve_token(
    state: &AppState,
    request: &HttpRequest,
    presented: String,
) -> Result<super::api_tokens::TokenIdentity, AppError> {
    let client = crate::web::client_addr(request);
    let throttled = || AppError::RateLimited {
        retry_after_secs: Some(super::api_tokens::TOKEN_BLOCK.as_secs()),
    };
    if client.is_some_and(|ip| state.token_guard.is_blocked(ip)) {
        return Err(throttled());
    }
    let found = state
        .db
        .run(move |conn| {
            super::api_tokens::resolve(conn, &presented).map_err(crate::db::DbError::from)
        })
        .await?;
    if let Some(token) = found {
        return Ok(token);
    }
    if let Some(ip) = client
        && state.token_guard.failed(ip)
    {
        metrics::counter!("rate_limited_total", "scope" => "api_token").increment(1);
        let (_, user_agent) = crate::web::client_info(request);
        let event = crate::audit::AuditEvent {
            event: crate::audit::events::TOKEN_GUESSING_THROTTLED,
            ip: Some(ip.to_string()),
            user_agent,
            ..crate::audit::AuditEvent::default()
        };
        if let Err(e) = crate::audit::record_now(&state.db, event).await {
            tracing::warn!(error = %e, "cannot audit a blocked token guesser");
        }
        return Err(throttled());
    }
    Err(AppError::Coded {
        status: actix_web::http::StatusCode::UNAUTHORIZED,
        code: "invalid_token",
        message: "The API token is not valid, expired or was revoked.".to_owned(),
        retry_after_secs: None,
    })
}

/// `Option<Identity>` for pages that look different when signed in.
pub struct MaybeIdentity(pub Option<Identity>);

impl FromRequest for MaybeIdentity {
    type Error = AppError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let request = request.clone();
        Box::pin(async move { Ok(MaybeIdentity(resolve(&request).await?)) })
    }
}
