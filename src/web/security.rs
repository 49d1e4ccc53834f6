//! Security headers on every response, and the per-request CSP nonce that templates use for
//! inline `<script>`/`<style>` (there are none yet; the nonce keeps the policy strict when
//! they come).

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use base64::Engine as _;
use rand::RngCore as _;

use super::AppState;

/// The nonce of this request's Content-Security-Policy.
#[derive(Debug, Clone)]
pub struct CspNonce(pub String);

impl FromRequest for CspNonce {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let nonce = req
            .extensions()
            .get::<CspNonce>()
            .cloned()
            .unwrap_or_else(|| CspNonce(String::new()));
        std::future::ready(Ok(nonce))
    }
}

fn new_nonce() -> String {
    let mut bytes = [0u8; 18];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub async fn headers(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let nonce = new_nonce();
    req.extensions_mut().insert(CspNonce(nonce.clone()));
    // HSTS only makes sense over https: either this hop is TLS, or the public URL is https
    // (TLS terminated by a proxy in front).
    let https = req.connection_info().scheme() == "https"
        || req
            .app_data::<web::Data<AppState>>()
            .is_some_and(|state| state.public_url.starts_with("https://"));
    let request_id = req
        .extensions()
        .get::<tracing_actix_web::RequestId>()
        .map(ToString::to_string);
    let mut response = next.call(req).await?;
    let headers = response.headers_mut();

    let csp = format!(
        "default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'nonce-{nonce}'; \
         img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; \
         base-uri 'none'; form-action 'self'; frame-ancestors 'none'{}",
        if https {
            "; upgrade-insecure-requests"
        } else {
            ""
        }
    );
    let mut set = |name: HeaderName, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    set(header::CONTENT_SECURITY_POLICY, &csp);
    set(header::X_FRAME_OPTIONS, "DENY");
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::REFERRER_POLICY, "strict-origin-when-cross-origin");
    set(
        HeaderName::from_static("permissions-policy"),
        "camera=(), microphone=(), geolocation=(), payment=(), usb=(), interest-cohort=()",
    );
    set(
        HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
    if https {
        set(
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=63072000; includeSubDomains",
        );
    }
    if let Some(id) = request_id {
        set(HeaderName::from_static("x-request-id"), &id);
    }
    Ok(response)
}
