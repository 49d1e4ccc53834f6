//! `POST /api/v1/client-errors`: browsers report uncaught JavaScript errors here
//! (`static/js/report-errors.js`) so operators see in the server log what breaks for users.
//!
//! Anyone can call it, so it is bounded everywhere: a small JSON body, capped field lengths, and
//! a per-IP rate limit (governor) whose excess answers 429 with `Retry-After`. It changes no
//! user data, so it needs no CSRF token; requiring `application/json` already forces a CORS
//! preflight on cross-site callers, which this server does not grant.

use std::net::IpAddr;
use std::num::NonZeroU32;

use actix_web::{HttpRequest, HttpResponse, web};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;

use super::AppState;
use crate::error::AppError;

const MAX_MESSAGE_CHARS: usize = 2_000;
const MAX_STACK_CHARS: usize = 16_000;
const MAX_LOCATION_CHARS: usize = 2_000;
/// Forget idle clients once this many are tracked, so the limiter's memory stays bounded.
const RETAIN_ABOVE_KEYS: usize = 10_000;

/// Per-IP limit on reports; `None` when reporting is switched off.
pub struct ClientErrorLimiter {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

impl ClientErrorLimiter {
    pub fn per_minute(reports: u32) -> Self {
        Self {
            limiter: NonZeroU32::new(reports).map(|n| RateLimiter::keyed(Quota::per_minute(n))),
        }
    }

    fn check(&self, ip: IpAddr) -> Result<(), AppError> {
        let Some(limiter) = &self.limiter else {
            return Err(AppError::NotFound(
                "Client error reporting is switched off.".to_owned(),
            ));
        };
        if limiter.len() > RETAIN_ABOVE_KEYS {
            limiter.retain_recent();
        }
        limiter.check_key(&ip).map_err(|not_until| {
            metrics::counter!("rate_limited_total", "scope" => "client_errors").increment(1);
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            AppError::RateLimited {
                retry_after_secs: Some(wait.as_secs().max(1)),
            }
        })
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ClientErrorReport {
    #[schema(max_length = 2000, pattern = r"\S")]
    message: String,
    #[schema(max_length = 2000)]
    source: Option<String>,
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 4294967295_i64)]
    line: Option<u32>,
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 4294967295_i64)]
    column: Option<u32>,
    #[schema(max_length = 16000)]
    stack: Option<String>,
    #[schema(max_length = 2000)]
    page: Option<String>,
}

impl ClientErrorReport {
    fn validate(&self) -> Result<(), AppError> {
        let message = self.message.trim();
        if message.is_empty() || message.chars().count() > MAX_MESSAGE_CHARS {
            return Err(AppError::BadRequest(format!(
                "message: must be 1 to {MAX_MESSAGE_CHARS} characters"
            )));
        }
        for (field, value, limit) in [
            ("stack", &self.stack, MAX_STACK_CHARS),
            ("source", &self.source, MAX_LOCATION_CHARS),
            ("page", &self.page, MAX_LOCATION_CHARS),
        ] {
            if value.as_ref().is_some_and(|v| v.chars().count() > limit) {
                return Err(AppError::BadRequest(format!(
                    "{field}: must be at most {limit} characters"
                )));
            }
        }
        Ok(())
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/client-errors",
    tag = "operations",
    summary = "Report a browser error to the server log",
    request_body = ClientErrorReport,
    responses(
        (status = 204, description = "Logged"),
        (status = 400, description = "Invalid report", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many reports", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
pub async fn report(
    state: web::Data<AppState>,
    request: HttpRequest,
    report: crate::web::Json<ClientErrorReport>,
) -> Result<HttpResponse, AppError> {
    let ip = super::client_addr(&request)
        .ok_or_else(|| AppError::BadRequest("The client address is unknown.".to_owned()))?;
    state.client_errors.check(ip)?;
    report.validate()?;
    let user_agent = super::client_info(&request).1.unwrap_or_default();
    metrics::counter!("client_errors_total").increment(1);
    // Everything the client sent is recorded with `?` (Debug, quoted and escaped), so a
    // report cannot forge log lines with embedded newlines; `js_message` keeps clear of the
    // event's own `message` field.
    tracing::warn!(
        target: "conclave::client",
        js_message = ?report.message.trim(),
        source = ?report.source.as_deref().unwrap_or(""),
        line = report.line,
        column = report.column,
        page = ?report.page.as_deref().unwrap_or(""),
        stack = ?report.stack.as_deref().unwrap_or(""),
        user_agent = ?user_agent,
        client_ip = %ip,
        "browser reported an error"
    );
    Ok(HttpResponse::NoContent().finish())
}

/// This module's part of the OpenAPI document (`/api/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(report))]
pub struct ApiDoc;
