//! HTTP surface of provider sign-in: `/login/oidc/{provider}` (start),
//! `/login/oidc/{provider}/callback` (finish), and the connected accounts of
//! `/settings/security` and `GET|DELETE /api/v1/me/identities[/{id}]`.
//!
//! Starting is a plain link (GET), not a form: the page's `form-action 'self'` policy would
//! stop a form whose answer redirects to the provider, and nothing changes until the
//! callback, which the `state` cookie binds to the browser that started it.

use actix_web::cookie::{Cookie, SameSite, time};
use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::handlers::{client, outcome_redirect, render_login, render_message, safe_next};
use super::identity::{self, Identity};
use super::login::LoginError;
use super::oidc::{Finished, OidcError, UnlinkError};
use crate::error::AppError;
use crate::web::AppState;
use crate::web::pages::Page;

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::web::{get, resource};
    cfg.service(get("/login/oidc/{provider}", start))
        .service(get("/login/oidc/{provider}/callback", callback))
        .service(get("/api/v1/me/identities", api_list))
        .service(resource("/api/v1/me/identities/{id}").delete(api_unlink))
        .service(resource("/settings/identities/{id}/disconnect").post(unlink_form));
}

fn flow_cookie_name(secure: bool) -> &'static str {
    if secure {
        "__Host-conclave_oidc"
    } else {
        "conclave_oidc"
    }
}

/// Carries `state` to the callback. Lax, because the provider sends the browser back with a
/// top-level GET from its own site.
fn flow_cookie(state: &AppState, value: String) -> Cookie<'static> {
    let secure = identity::secure_cookies(state);
    Cookie::build(flow_cookie_name(secure), value)
        .path("/")
        .http_only(true)
        .secure(secure)
        .same_site(SameSite::Lax)
        .max_age(time::Duration::minutes(super::oidc::FLOW_MINUTES))
        .finish()
}

impl From<OidcError> for AppError {
    fn from(error: OidcError) -> Self {
        let coded = |status, code| AppError::Coded {
            status,
            code,
            message: error.to_string(),
            retry_after_secs: None,
        };
        match &error {
            OidcError::UnknownProvider(_) => coded(StatusCode::NOT_FOUND, "unknown_provider"),
            OidcError::FlowExpired => coded(StatusCode::BAD_REQUEST, "flow_expired"),
            OidcError::Refused { .. } => coded(StatusCode::UNAUTHORIZED, "provider_refused"),
            OidcError::Provider { .. } => coded(StatusCode::BAD_GATEWAY, "provider_unavailable"),
            OidcError::EmailUnverified { .. } => coded(StatusCode::FORBIDDEN, "email_unverified"),
            OidcError::NeedsProof { .. } => coded(StatusCode::CONFLICT, "account_exists"),
            OidcError::LinkedElsewhere { .. } => coded(StatusCode::CONFLICT, "linked_elsewhere"),
            OidcError::SignupClosed => coded(StatusCode::FORBIDDEN, "signup_closed"),
            OidcError::Database(_) => AppError::internal(anyhow::anyhow!("{error}")),
        }
    }
}

#[derive(Deserialize)]
pub struct StartQuery {
    next: Option<String>,
    /// Present when a signed-in person connects the provider to their account.
    connect: Option<String>,
}

/// `GET /login/oidc/{provider}`: off to the provider.
async fn start(
    state: web::Data<AppState>,
    request: HttpRequest,
    page: Page,
    provider: web::Path<String>,
    query: web::Query<StartQuery>,
) -> Result<HttpResponse, AppError> {
    let connecting = query.connect.is_some();
    let link_user_id = match (&page.identity, connecting) {
        (Some(identity), true) => Some(identity.user_id()),
        (None, true) => {
            return Ok(HttpResponse::SeeOther()
                .insert_header((header::LOCATION, "/login?next=/settings/security"))
                .finish());
        }
        (Some(_), false) => {
            return Ok(HttpResponse::SeeOther()
                .insert_header((header::LOCATION, safe_next(query.next.as_deref())))
                .finish());
        }
        (None, false) => None,
    };
    // Each start writes a row: it shares the sign-in limit of the client's address.
    state.login.check_rate(&client(&request))?;
    let next = if connecting {
        "/settings/security".to_owned()
    } else {
        safe_next(query.next.as_deref())
    };
    let started = match state.federation.begin(&provider, next, link_user_id).await {
        Ok(started) => started,
        Err(error) => return error_page(&state, &page, error),
    };
    Ok(HttpResponse::SeeOther()
        .cookie(flow_cookie(&state, started.state))
        .insert_header((header::LOCATION, started.authorize_url.to_string()))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish())
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /login/oidc/{provider}/callback`: the provider sends the browser back here.
async fn callback(
    state: web::Data<AppState>,
    request: HttpRequest,
    page: Page,
    provider: web::Path<String>,
    query: web::Query<CallbackQuery>,
) -> Result<HttpResponse, AppError> {
    let query = query.into_inner();
    let secure = identity::secure_cookies(&state);
    let forget_flow = identity::expired_cookie(&state, flow_cookie_name(secure));
    let cookie_state = request
        .cookie(flow_cookie_name(secure))
        .map(|c| c.value().to_owned());
    let result = match (query.code, query.state, query.error) {
        (_, _, Some(error)) => Err(OidcError::Refused {
            provider: state.federation.label(&provider),
            reason: query
                .error_description
                .filter(|d| !d.trim().is_empty())
                .unwrap_or(error)
                .chars()
                .take(200)
                .collect(),
        }),
        (Some(code), Some(flow_state), None) => {
            let ip = crate::web::client_ip(&request);
            state
                .federation
                .finish(&provider, code, &flow_state, cookie_state.as_deref(), ip)
                .await
        }
        _ => Err(OidcError::FlowExpired),
    };
    let mut response = match result {
        Ok(Finished::Connected { .. }) => HttpResponse::SeeOther()
            .insert_header((header::LOCATION, "/settings/security?notice=connected"))
            .finish(),
        Ok(Finished::SignIn { user_id, next }) => {
            match state
                .login
                .federated(user_id, &client(&request), &provider)
                .await
            {
                Ok(outcome) => outcome_redirect(&state, outcome, &next),
                Err(error @ (LoginError::Disabled | LoginError::Locked { .. })) => {
                    let message = error.to_string();
                    let status = actix_web::ResponseError::status_code(&AppError::from(error));
                    render_message(&state, &page, status, "Cannot sign in", &message, None)?
                }
                Err(other) => return Err(other.into()),
            }
        }
        Err(OidcError::NeedsProof { provider, email }) => {
            let message = OidcError::NeedsProof {
                provider,
                email: email.clone(),
            }
            .to_string();
            render_login(
                &state,
                &page,
                StatusCode::CONFLICT,
                &email,
                "/settings/security",
                Some(&message),
                None,
            )?
        }
        Err(error) => error_page(&state, &page, error)?,
    };
    response
        .add_cookie(&forget_flow)
        .map_err(|e| AppError::internal(anyhow::Error::from(e)))?;
    Ok(response)
}

fn error_page(state: &AppState, page: &Page, error: OidcError) -> Result<HttpResponse, AppError> {
    if matches!(error, OidcError::Database(_)) {
        return Err(error.into());
    }
    let message = error.to_string();
    let status = actix_web::ResponseError::status_code(&AppError::from(error));
    render_message(
        state,
        page,
        status,
        "Sign-in did not work",
        &message,
        Some(("/login", "Back to sign-in")),
    )
}

#[utoipa::path(
    get,
    path = "/api/v1/me/identities",
    tag = "identities",
    summary = "My connected sign-in providers",
    responses(
        (status = 200, description = "`{identities: [...]}`")
    )
)]
/// `GET /api/v1/me/identities`: my connected provider accounts.
async fn api_list(
    state: web::Data<AppState>,
    identity: Identity,
) -> Result<HttpResponse, AppError> {
    let linked = state.federation.linked(identity.user_id()).await?;
    let identities: Vec<_> = linked
        .iter()
        .map(|l| {
            json!({
                "id": l.id,
                "provider": l.provider,
                "provider_label": state.federation.label(&l.provider),
                "email": l.email,
                "created_at": l.created_at.and_utc().to_rfc3339(),
                "last_login_at": l.last_login_at.map(|t| t.and_utc().to_rfc3339()),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "identities": identities })))
}

impl From<UnlinkError> for AppError {
    fn from(error: UnlinkError) -> Self {
        match error {
            UnlinkError::LastWayIn => AppError::Coded {
                status: StatusCode::CONFLICT,
                code: "last_sign_in_method",
                message: UnlinkError::LastWayIn.to_string(),
                retry_after_secs: None,
            },
            UnlinkError::Database(e) => e.into(),
        }
    }
}

async fn unlink(
    state: &AppState,
    request: &HttpRequest,
    identity: &Identity,
    id: i64,
) -> Result<(), AppError> {
    let ip = crate::web::client_ip(request);
    if !state.federation.unlink(identity.user_id(), id, ip).await? {
        return Err(AppError::NotFound("No such connected account.".to_owned()));
    }
    Ok(())
}

#[utoipa::path(
    delete,
    path = "/api/v1/me/identities/{id}",
    tag = "identities",
    summary = "Disconnect a provider",
    params(("id" = i64, Path)),
    responses(
        (status = 204, description = "Disconnected"),
        (status = 404, description = "No such connection of mine", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`last_sign_in_method`", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
/// `DELETE /api/v1/me/identities/{id}`.
async fn api_unlink(
    state: web::Data<AppState>,
    request: HttpRequest,
    identity: Identity,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    unlink(&state, &request, &identity, *id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /settings/identities/{id}/disconnect`.
async fn unlink_form(
    state: web::Data<AppState>,
    request: HttpRequest,
    identity: Identity,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let notice = match unlink(&state, &request, &identity, *id).await {
        Ok(()) => "disconnected",
        Err(AppError::Coded {
            code: "last_sign_in_method",
            ..
        }) => "last_sign_in_method",
        Err(other) => return Err(other),
    };
    Ok(HttpResponse::SeeOther()
        .insert_header((
            header::LOCATION,
            format!("/settings/security?notice={notice}"),
        ))
        .finish())
}

/// This module's part of the OpenAPI document (`/api/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(api_list, api_unlink))]
pub struct ApiDoc;
