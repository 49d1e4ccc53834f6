//! Public pages.

use actix_web::{HttpResponse, web};

use super::AppState;
use super::security::CspNonce;
use crate::error::AppError;

/// Values every page's layout uses.
pub fn base_context(state: &AppState, nonce: &str) -> tera::Context {
    let mut context = tera::Context::new();
    context.insert("csp_nonce", nonce);
    context.insert("version", env!("CARGO_PKG_VERSION"));
    context.insert("public_url", &state.public_url);
    context
}

pub async fn landing(
    state: web::Data<AppState>,
    nonce: CspNonce,
) -> Result<HttpResponse, AppError> {
    let context = base_context(&state, &nonce.0);
    let page = state.templates.render("index.html", &context)?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(page))
}
