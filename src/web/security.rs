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
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let https = req.connection_info().scheme() == "https"
        || state
            .as_ref()
            .is_some_and(|state| state.public_url.starts_with("https://"));
    let edge = state.map(|state| state.edge.active());
    let request_id = req
        .extensions()
        .get::<tracing_actix_web::RequestId>()
        .map(ToString::to_string);
    let mut response = next.call(req).await?;
    let headers = response.headers_mut();

    let csp = content_security_policy(
        &nonce,
        https,
        edge.as_ref().map_or(&[], |edge| edge.policy.csp.as_slice()),
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
    // The edge policy's headers come last: they add to or replace the defaults above.
    if let Some(edge) = &edge {
        for (name, value) in &edge.headers {
            headers.insert(name.clone(), value.clone());
        }
    }
    Ok(response)
}

/// Conclave's Content-Security-Policy, with the edge policy's sources added to their
/// directives (a directive the base leaves to `default-src` starts from `'self'`; sources
/// replace a base of `'none'`).
fn content_security_policy(
    nonce: &str,
    https: bool,
    additions: &[crate::edge::policy::CspAddition],
) -> String {
    let script = format!("'self' 'nonce-{nonce}'");
    let mut directives: Vec<(&str, Vec<String>)> = [
        ("default-src", "'self'"),
        ("script-src", script.as_str()),
        ("style-src", script.as_str()),
        ("img-src", "'self' data:"),
        ("font-src", "'self'"),
        ("connect-src", "'self'"),
        ("object-src", "'none'"),
        ("base-uri", "'none'"),
        ("form-action", "'self'"),
        ("frame-ancestors", "'none'"),
    ]
    .into_iter()
    .map(|(name, sources)| (name, sources.split(' ').map(str::to_owned).collect()))
    .collect();
    for addition in additions {
        let index = match directives
            .iter()
            .position(|(name, _)| *name == addition.directive)
        {
            Some(index) => index,
            None => {
                let name = crate::edge::policy::CSP_DIRECTIVES
                    .iter()
                    .copied()
                    .find(|d| *d == addition.directive)
                    .unwrap_or("default-src");
                directives.push((name, vec!["'self'".to_owned()]));
                directives.len() - 1
            }
        };
        let sources = &mut directives[index].1;
        sources.retain(|s| s != "'none'");
        for source in &addition.sources {
            if !sources.contains(source) {
                sources.push(source.clone());
            }
        }
    }
    let mut text: Vec<String> = directives
        .into_iter()
        .map(|(name, sources)| format!("{name} {}", sources.join(" ")))
        .collect();
    if https {
        text.push("upgrade-insecure-requests".to_owned());
    }
    text.join("; ")
}
