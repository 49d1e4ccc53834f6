//! Public pages, and `Page`: what every server-rendered page needs from its request.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage as _, HttpRequest, HttpResponse, web};

use super::AppState;
use super::csrf::CsrfToken;
use super::security::CspNonce;
use crate::auth::identity::{self, Identity};
use crate::error::AppError;

/// The per-request values of the layout: CSP nonce, CSRF token, who is signed in.
pub struct Page {
    pub nonce: String,
    pub csrf: String,
    pub identity: Option<Identity>,
    /// `light`, `dark` or `system`, from the preferences' cookie.
    pub theme: &'static str,
}

impl Page {
    pub fn context(&self, state: &AppState) -> tera::Context {
        let mut context = base_context(state, &self.nonce, &self.csrf);
        if let Some(identity) = &self.identity {
            context.insert("signed_in_as", &identity.session.display_name);
            context.insert("is_staff", &identity.session.staff);
        }
        // Unlike error pages, these know whether someone is signed in (static/js/offline.js
        // wipes the offline copy on a page that says nobody is).
        context.insert("session_known", &true);
        context.insert("theme", self.theme);
        context
    }
}

impl FromRequest for Page {
    type Error = AppError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let request = request.clone();
        Box::pin(async move {
            let extensions_value = |request: &HttpRequest| {
                let extensions = request.extensions();
                (
                    extensions
                        .get::<CspNonce>()
                        .map(|n| n.0.clone())
                        .unwrap_or_default(),
                    extensions
                        .get::<CsrfToken>()
                        .map(|t| t.0.clone())
                        .unwrap_or_default(),
                )
            };
            let (nonce, csrf) = extensions_value(&request);
            let identity = identity::resolve(&request).await?;
            let theme = match request
                .cookie(crate::auth::preferences::THEME_COOKIE)
                .as_ref()
                .map(|c| c.value())
            {
                Some("light") => "light",
                Some("dark") => "dark",
                _ => "system",
            };
            Ok(Page {
                nonce,
                csrf,
                identity,
                theme,
            })
        })
    }
}

/// Values every page's layout uses; error pages (which have no `Page`) use this directly.
pub fn base_context(state: &AppState, nonce: &str, csrf: &str) -> tera::Context {
    let mut context = tera::Context::new();
    context.insert("csp_nonce", nonce);
    context.insert("csrf_token", csrf);
    context.insert("version", env!("CARGO_PKG_VERSION"));
    context.insert("public_url", &state.public_url);
    context
}

/// Renders `template` as an HTML response with `status`.
pub fn html(
    state: &AppState,
    template: &str,
    context: &tera::Context,
    status: actix_web::http::StatusCode,
) -> Result<HttpResponse, AppError> {
    let body = state.templates.render(template, context)?;
    Ok(HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(body))
}

/// The answer to a form post: a redirect (303) back to the page `to`, with `?notice=<notice>`
/// on success (none when `notice` is empty), or `?error=<message>` when the error is the
/// person's to fix (bad input, not allowed, conflict). Other errors become the error page.
pub fn back_to(to: &str, outcome: Result<&str, AppError>) -> Result<HttpResponse, AppError> {
    let separator = if to.contains('?') { '&' } else { '?' };
    let location = match outcome {
        Ok("") => to.to_owned(),
        Ok(notice) => format!("{to}{separator}notice={notice}"),
        Err(
            error @ (AppError::BadRequest(_)
            | AppError::Forbidden(_)
            | AppError::Conflict(_)
            | AppError::PayloadTooLarge(_)
            | AppError::Coded { .. }),
        ) => {
            let message: String =
                url::form_urlencoded::byte_serialize(error.to_string().as_bytes()).collect();
            format!("{to}{separator}error={message}")
        }
        Err(other) => return Err(other),
    };
    Ok(HttpResponse::SeeOther()
        .insert_header((actix_web::http::header::LOCATION, location))
        .finish())
}

/// `?notice=…` and `?error=…` of a page a form sent back to ([`back_to`]).
#[derive(Debug, Default, serde::Deserialize)]
pub struct Notice {
    pub notice: Option<String>,
    pub error: Option<String>,
}

impl Notice {
    /// Puts `notice` and `error` into a page's context.
    pub fn insert(self, context: &mut tera::Context) {
        context.insert("notice", &self.notice);
        context.insert("error", &self.error);
    }
}

/// `?token=…` of the links sent by mail.
#[derive(serde::Deserialize)]
pub struct TokenQuery {
    pub token: Option<String>,
}

pub async fn landing(state: web::Data<AppState>, page: Page) -> Result<HttpResponse, AppError> {
    // Someone who chose a paid plan at sign-up is offered to pay for it on their first visit.
    if let Some(identity) = &page.identity {
        let user = identity.user_id();
        let chosen: Option<String> = state
            .db
            .run(move |conn| {
                use diesel::prelude::*;
                crate::schema::users::table
                    .find(user)
                    .select(crate::schema::users::signup_plan)
                    .first(conn)
                    .map_err(AppError::from)
            })
            .await?;
        if chosen.is_some() {
            return Ok(HttpResponse::SeeOther()
                .insert_header((actix_web::http::header::LOCATION, "/billing/welcome"))
                .finish());
        }
    }
    html(
        &state,
        "index.html",
        &page.context(&state),
        actix_web::http::StatusCode::OK,
    )
}
