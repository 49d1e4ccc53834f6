//! The edge policy, enforced on every request before routing: the admin listener split, the
//! client address (trusted proxies), WAF rules, IP allowlists and rate limits. Refusals are
//! ordinary `AppError`s, so browsers get the error page and API clients a problem document;
//! each is counted in `edge_denied_total{reason}`.

use std::net::IpAddr;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{HttpMessage as _, web};
use governor::clock::{Clock as _, DefaultClock};

use super::Active;
use super::policy::{LimitKey, covers};
use crate::error::AppError;
use crate::web::AppState;

/// The client's address as the edge resolved it (through trusted proxies); what rate limits,
/// sessions and the audit log record.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

/// Paths that exist only on the admin listener when `server.admin_listen` is set.
pub const ADMIN_PREFIXES: [&str; 2] = ["/admin", "/api/v1/admin"];

/// Rate limiters forget idle clients once this many are tracked (bounded memory).
const RETAIN_ABOVE_KEYS: usize = 50_000;

pub async fn enforce(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    };
    let active = state.edge.active();
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let client = active.client_ip(req.peer_addr().map(|a| a.ip()), forwarded);
    if let Some(ip) = client {
        req.extensions_mut().insert(ClientAddr(ip));
    }
    if let Some(admin) = state.edge.admin_listen {
        let path = req.path();
        let admin_path = ADMIN_PREFIXES.iter().any(|prefix| covers(prefix, path))
            || (path == "/metrics" && state.settings.telemetry.metrics_on_admin_listener);
        if admin_path && req.app_config().local_addr() != admin {
            return Ok(refuse(
                req,
                "admin_listener",
                AppError::NotFound("Not found.".to_owned()),
            ));
        }
    }
    if let Err((reason, error)) = judge(&active, &req, client).await {
        let mut response = refuse(req, reason, error);
        if reason == "method" {
            // RFC 9110: a 405 names the methods that do work here, less the denied ones.
            let denied = &active.policy.waf.deny_methods;
            let allow = crate::web::allowed_methods(response.request())
                .unwrap_or_default()
                .into_iter()
                .filter(|method| !denied.iter().any(|d| d.eq_ignore_ascii_case(method)))
                .collect::<Vec<_>>()
                .join(", ");
            if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&allow) {
                response
                    .headers_mut()
                    .insert(actix_web::http::header::ALLOW, value);
            }
        }
        return Ok(response);
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

fn refuse<B>(
    req: ServiceRequest,
    reason: &'static str,
    error: AppError,
) -> ServiceResponse<EitherBody<B>> {
    metrics::counter!("edge_denied_total", "reason" => reason).increment(1);
    tracing::info!(reason, path = %req.path(), "refused by the edge policy");
    req.error_response(error).map_into_right_body()
}

async fn judge(
    active: &Active,
    req: &ServiceRequest,
    client: Option<IpAddr>,
) -> Result<(), (&'static str, AppError)> {
    let waf = &active.policy.waf;
    let method = req.method().as_str();
    if waf.deny_methods.iter().any(|m| m == method) {
        return Err((
            "method",
            AppError::MethodNotAllowed(format!("{method} is not allowed here.")),
        ));
    }
    let path = req.path();
    // The path as it came on the request line, before any decoding.
    if waf.block_path_traversal && is_traversal(req.uri().path()) {
        return Err((
            "traversal",
            AppError::BadRequest("The path is not allowed.".to_owned()),
        ));
    }
    if active
        .denied_paths
        .as_ref()
        .is_some_and(|re| re.is_match(path))
    {
        return Err(("path", AppError::Forbidden("Forbidden.".to_owned())));
    }
    if let Some(agents) = &active.denied_agents {
        let agent = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if agents.is_match(agent) {
            return Err(("user_agent", AppError::Forbidden("Forbidden.".to_owned())));
        }
    }
    if let Some(max) = waf.max_body_bytes {
        let length = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if length.is_some_and(|length| length > max) {
            return Err((
                "body_size",
                AppError::PayloadTooLarge(format!("The request body is larger than {max} bytes.")),
            ));
        }
    }
    let allowlist = active
        .policy
        .allowlists
        .iter()
        .filter(|list| covers(&list.path_prefix, path))
        .max_by_key(|list| list.path_prefix.len());
    if let Some(list) = allowlist {
        let allowed = client.is_some_and(|ip| list.cidrs.iter().any(|net| net.contains(&ip)));
        if !allowed {
            return Err((
                "allowlist",
                AppError::Forbidden(format!(
                    "{} is only reachable from allowed networks.",
                    list.path_prefix
                )),
            ));
        }
    }
    let ip_key = client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    for limiter in &active.limiters {
        if !covers(&limiter.rule.path_prefix, path) {
            continue;
        }
        let key = match limiter.rule.key {
            LimitKey::Ip => ip_key.clone(),
            LimitKey::User => {
                // A session is resolved once per request and kept in its extensions for the
                // handler. An API token is counted by itself (a digest of it, never the
                // token): resolving it here would cost a database read per request.
                let bearer = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                match bearer {
                    Some(token) => {
                        use sha2::Digest as _;
                        let digest = sha2::Sha256::digest(token.trim().as_bytes());
                        let short: String =
                            digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
                        format!("token:{short}")
                    }
                    None => match crate::auth::identity::resolve(req.request()).await {
                        Ok(Some(identity)) => format!("user:{}", identity.user_id()),
                        _ => format!("ip:{ip_key}"),
                    },
                }
            }
        };
        if limiter.keyed.len() > RETAIN_ABOVE_KEYS {
            limiter.keyed.retain_recent();
        }
        if let Err(not_until) = limiter.keyed.check_key(&key) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err((
                "rate_limit",
                AppError::RateLimited {
                    retry_after_secs: Some(wait.as_secs().max(1)),
                },
            ));
        }
    }
    Ok(())
}

/// `..` as a segment or inside one, percent-encoded dots or backslashes, or a raw backslash:
/// nothing Conclave serves looks like that, and every proxy normalises them differently.
fn is_traversal(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains("..") || lower.contains("%2e") || lower.contains("%5c") || lower.contains('\\')
}

#[cfg(test)]
mod tests {
    use super::is_traversal;

    #[test]
    fn traversal_in_any_spelling_is_caught() {
        for bad in [
            "/static/../x",
            "/a/%2e%2e/b",
            "/a/%2E./b",
            "/a\\b",
            "/a%5cb",
            "/..",
        ] {
            assert!(is_traversal(bad), "{bad}");
        }
        for good in ["/static/js/app.js", "/rooms/12", "/.well-known/openid"] {
            assert!(!is_traversal(good), "{good}");
        }
    }
}
