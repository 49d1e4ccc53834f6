//! One error type for the web layer.
//!
//! Which error belongs where:
//! - domain and infrastructure code returns `anyhow::Error` (with `.context(…)` at each
//!   fallible step) or a small module-specific `thiserror` enum when callers must branch on it;
//! - handlers return `AppError`, choosing the HTTP-meaningful kind and the message a user may
//!   read. `Internal` keeps its cause for the log only: users see a reference, never the cause.
//!
//! `AppError` renders as `application/problem+json` (RFC 9457); `web::errors` turns it into an
//! HTML page when the client asked for HTML.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request is malformed or a value is invalid; the message says which and why.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("too many requests; try again later")]
    RateLimited { retry_after_secs: Option<u64> },
    /// A failure API clients branch on: `code` goes into the problem document as `error`.
    #[error("{message}")]
    Coded {
        status: StatusCode,
        code: &'static str,
        message: String,
        retry_after_secs: Option<u64>,
    },
    /// A dependency (database, provider) is down; the client may retry.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// RFC 9457 problem details, the JSON body of every error.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: &'static str,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// A stable machine-readable code, e.g. `invalid_credentials`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            type_uri: "about:blank",
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            error: None,
            request_id: None,
        }
    }
}

impl AppError {
    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        Self::from(error.into())
    }

    /// What a user is told. For server-side failures this is deliberately vague.
    pub fn public_detail(&self) -> String {
        match self {
            Self::Internal(_) => {
                "Something went wrong on our side. It has been logged; please try again.".to_owned()
            }
            other => other.to_string(),
        }
    }

    /// A stable machine-readable code, for clients that see no HTTP status (WebSocket
    /// frames): the `Coded` code, else one per kind.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge(_) => "too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::RateLimited { .. } => "rate_limited",
            Self::Coded { code, .. } => code,
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    pub fn problem(&self) -> Problem {
        let mut problem = Problem::new(self.status_code(), self.public_detail());
        if let Self::Coded { code, .. } = self {
            problem.error = Some(code);
        }
        problem
    }
}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Coded { status, .. } => *status,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response.content_type("application/problem+json");
        if let Self::RateLimited {
            retry_after_secs: Some(secs),
        }
        | Self::Coded {
            retry_after_secs: Some(secs),
            ..
        } = self
        {
            response.insert_header((header::RETRY_AFTER, HeaderValue::from(*secs)));
        }
        if let Self::Unauthenticated(_) = self {
            response.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        if let Self::Unavailable(_) = self {
            response.insert_header((header::RETRY_AFTER, HeaderValue::from_static("5")));
        }
        response.json(self.problem())
    }
}

impl From<crate::db::DbError> for AppError {
    fn from(error: crate::db::DbError) -> Self {
        match error {
            crate::db::DbError::PoolTimeout(_) => Self::database_unreachable(),
            other => Self::from(anyhow::Error::new(other)),
        }
    }
}

impl From<diesel::result::Error> for AppError {
    fn from(error: diesel::result::Error) -> Self {
        match error {
            diesel::result::Error::NotFound => Self::NotFound("Not found.".to_owned()),
            other => Self::from(anyhow::Error::new(other).context("database query failed")),
        }
    }
}

/// Every internal failure passes here: an outage of the database or of the disk, wherever it
/// is in the chain of causes, is answered as what it is (503 to retry, 507 storage full)
/// instead of a bare 500, on every route alike.
impl From<anyhow::Error> for AppError {
    fn from(error: anyhow::Error) -> Self {
        if crate::db::nul_refused_in(error.as_ref()) {
            return Self::BadRequest(
                "Text may not contain the NUL character (\\u0000).".to_owned(),
            );
        }
        match crate::db::outage_in(error.as_ref()) {
            Some(crate::db::Outage::Unreachable) => {
                tracing::warn!(error = ?error, "database unreachable");
                Self::database_unreachable()
            }
            Some(crate::db::Outage::StorageFull) => {
                tracing::error!(error = ?error, "storage full: a write was refused");
                Self::Coded {
                    status: StatusCode::INSUFFICIENT_STORAGE,
                    code: "storage_full",
                    message: "The server's storage is full, so nothing was saved. Reading still \
                              works; the operator has been alerted."
                        .to_owned(),
                    retry_after_secs: Some(60),
                }
            }
            None => Self::Internal(error),
        }
    }
}

impl AppError {
    fn database_unreachable() -> Self {
        Self::Unavailable("The database is busy or unreachable; please retry.".to_owned())
    }
}
