//! Cross-site request forgery protection for every state-changing request, in one place so no
//! handler can forget it.
//!
//! 1. `Origin` (or, without it, `Referer`) must be this site: the configured public URL or the
//!    request's own `Host`. Browsers send `Origin` on every cross-site POST.
//! 2. Requests that carry the session cookie, and every HTML form post, must also present the
//!    CSRF token: the `csrf_token` form field or the `X-CSRF-Token` header, equal to the
//!    `conclave_csrf` cookie (double submit; `__Host-` prefixed over https so no subdomain can
//!    plant it). Pages render the token into forms and a `<meta name="csrf-token">` for fetch.
//!
//! Requests authenticated with `Authorization: Bearer` carry no ambient credentials and are
//! exempt. JSON requests without the session cookie need only (1): a cross-site page cannot
//! send `application/json` without a CORS preflight, which this server never grants.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::{Method, header};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use base64::Engine as _;
use rand::RngCore as _;
use subtle::ConstantTimeEq as _;

use super::AppState;
use crate::auth::identity::{secure_cookies, session_cookie_name};
use crate::error::AppError;

pub const FORM_FIELD: &str = "csrf_token";
pub const HEADER: &str = "x-csrf-token";

/// This request's CSRF token, for templates.
#[derive(Debug, Clone)]
pub struct CsrfToken(pub String);

impl FromRequest for CsrfToken {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let token = req
            .extensions()
            .get::<CsrfToken>()
            .cloned()
            .unwrap_or_else(|| CsrfToken(String::new()));
        std::future::ready(Ok(token))
    }
}

fn cookie_name(secure: bool) -> &'static str {
    if secure {
        "__Host-conclave_csrf"
    } else {
        "conclave_csrf"
    }
}

fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub async fn guard(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    };
    let secure = secure_cookies(&state);
    let existing = req
        .cookie(cookie_name(secure))
        .map(|c| c.value().to_owned())
        .filter(|value| value.len() >= 32);
    let token = existing.clone().unwrap_or_else(new_token);
    req.extensions_mut().insert(CsrfToken(token.clone()));

    let unsafe_method = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer "));
    if unsafe_method
        && !bearer
        && let Err(error) = check(&mut req, &state, secure, existing.as_deref()).await
    {
        metrics::counter!("csrf_rejections_total").increment(1);
        return Ok(req.error_response(error).map_into_right_body());
    }

    let mut response = next.call(req).await?;
    if existing.is_none() {
        let cookie = Cookie::build(cookie_name(secure), token)
            .path("/")
            .http_only(true)
            .secure(secure)
            .same_site(SameSite::Strict)
            .finish();
        let _ = response.response_mut().add_cookie(&cookie);
    }
    Ok(response.map_into_left_body())
}

async fn check(
    req: &mut ServiceRequest,
    state: &AppState,
    secure: bool,
    cookie_token: Option<&str>,
) -> Result<(), AppError> {
    let refused = || AppError::Forbidden("Cross-site request refused.".to_owned());
    let headers = req.headers();
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        if !same_site(origin, state, headers) {
            return Err(refused());
        }
    } else if let Some(referer) = headers.get(header::REFERER).and_then(|v| v.to_str().ok()) {
        let origin = url::Url::parse(referer)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        if !same_site(&origin, state, headers) {
            return Err(refused());
        }
    }

    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let is_form = content_type.starts_with("application/x-www-form-urlencoded")
        || content_type.starts_with("multipart/form-data");
    let has_session = req.cookie(session_cookie_name(secure)).is_some();
    if !has_session && !is_form {
        return Ok(());
    }

    let expired = || {
        AppError::Forbidden(
            "This form has expired or was sent from another site. Reload the page and try again."
                .to_owned(),
        )
    };
    let expected = cookie_token.ok_or_else(expired)?;
    let presented = match req.headers().get(HEADER).and_then(|v| v.to_str().ok()) {
        Some(value) => Some(value.to_owned()),
        None if content_type.starts_with("application/x-www-form-urlencoded") => {
            // Read the form to find the field, then put the body back for the handler.
            let body = req
                .extract::<web::Bytes>()
                .await
                .map_err(|e| AppError::BadRequest(format!("The form could not be read: {e}")))?;
            let field = url::form_urlencoded::parse(&body)
                .find(|(name, _)| name == FORM_FIELD)
                .map(|(_, value)| value.into_owned());
            req.set_payload(Payload::from(body));
            field
        }
        None => None,
    };
    match presented {
        Some(token) if bool::from(token.as_bytes().ct_eq(expected.as_bytes())) => Ok(()),
        _ => Err(expired()),
    }
}

/// True when `origin` (scheme://host[:port]) is the configured public URL's origin or the
/// origin this request was sent to (its `Host`, over the scheme it arrived on).
pub(crate) fn same_site(origin: &str, state: &AppState, headers: &header::HeaderMap) -> bool {
    let public = url::Url::parse(&state.public_url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default();
    if origin == public {
        return true;
    }
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    origin == format!("http://{host}") || origin == format!("https://{host}")
}
