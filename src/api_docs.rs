//! The OpenAPI 3.1 document of the JSON API, generated from the handlers' `#[utoipa::path]`
//! annotations (each module contributes its `ApiDoc`) and served at `/api/openapi.json`.

use actix_web::HttpResponse;
use utoipa::OpenApi as _;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Conclave",
        description = "Secure rooms for people, AI assistants and devices. Authenticate with the \
            session cookie (browsers; unsafe requests then need the `X-CSRF-Token` header from \
            the `csrf-token` meta tag or the `conclave_csrf` cookie) or with \
            `Authorization: Bearer <personal API token>`. Errors are RFC 9457 problem documents \
            whose `error` field is a stable code.",
        license(name = "Proprietary")
    ),
    components(schemas(crate::error::Problem)),
    tags(
        (name = "auth", description = "Sign-up, sign-in, verification, password reset"),
        (name = "me", description = "The signed-in person"),
        (name = "2fa", description = "Two-factor authentication"),
        (name = "sessions", description = "Where I am signed in"),
        (name = "tokens", description = "Personal API tokens"),
        (name = "identities", description = "Connected sign-in providers"),
        (name = "tenants", description = "Workspaces, members, invitations"),
        (name = "operations", description = "Running the service"),
        (name = "realtime", description = "The WebSocket endpoint and live connections"),
    )
)]
struct Root;

/// The whole document.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = Root::openapi();
    for part in [
        crate::auth::handlers::ApiDoc::openapi(),
        crate::auth::captcha::ApiDoc::openapi(),
        crate::auth::password_handlers::ApiDoc::openapi(),
        crate::auth::two_factor_handlers::ApiDoc::openapi(),
        crate::auth::private_handlers::ApiDoc::openapi(),
        crate::auth::deletion::ApiDoc::openapi(),
        crate::auth::token_handlers::ApiDoc::openapi(),
        crate::auth::session_handlers::ApiDoc::openapi(),
        crate::auth::oidc_handlers::ApiDoc::openapi(),
        crate::tenancy::handlers::ApiDoc::openapi(),
        crate::tenancy::members::ApiDoc::openapi(),
        crate::tenancy::defaults::ApiDoc::openapi(),
        crate::chat::api::ApiDoc::openapi(),
        crate::chat::ws::ApiDoc::openapi(),
        crate::assistant::gateway::ApiDoc::openapi(),
        crate::assistant::chat_api::ApiDoc::openapi(),
        crate::assistant::guests::ApiDoc::openapi(),
        crate::billing::handlers::ApiDoc::openapi(),
        crate::edge::handlers::ApiDoc::openapi(),
        crate::admin::ApiDoc::openapi(),
        crate::devices::handlers::ApiDoc::openapi(),
        crate::devices::api::ApiDoc::openapi(),
        crate::auth::preferences::ApiDoc::openapi(),
        crate::web::client_errors::ApiDoc::openapi(),
    ] {
        doc.merge(part);
    }
    doc
}

/// `GET /api/openapi.json`.
pub async fn serve() -> HttpResponse {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let json = DOCUMENT.get_or_init(|| document().to_json().unwrap_or_default());
    HttpResponse::Ok()
        .content_type("application/json")
        .body(json.clone())
}
