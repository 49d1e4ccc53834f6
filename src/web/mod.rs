//! HTTP plumbing shared by every module: application state, middleware order, routes of the
//! foundation (landing page, health, metrics, static files), error rendering.

pub mod assets;
pub mod client_errors;
pub mod csrf;
pub mod errors;
pub mod health;
pub mod json;
pub mod pages;
pub mod security;
pub mod templates;

use std::sync::Arc;

use actix_web::middleware::{Compress, from_fn};
use actix_web::{App, Resource, web};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::db::Db;
use crate::jobs::Queue;
use crate::settings::Settings;

pub use json::Json;
pub use templates::Templates;

/// Everything a handler may need, built once at start-up.
pub struct AppState {
    pub settings: Arc<Settings>,
    /// `server.public_url`, or the address actually bound (port 0 resolved) when unset.
    pub public_url: String,
    /// The node's secret key; modules derive their own keys from it, never use it directly.
    pub master_key: Arc<crate::crypto::MasterKey>,
    pub db: Db,
    pub templates: Arc<Templates>,
    pub metrics: PrometheusHandle,
    pub queue: Queue,
    pub client_errors: client_errors::ClientErrorLimiter,
    pub sessions: crate::auth::sessions::Sessions,
    pub login: crate::auth::login::LoginService,
    pub signup: crate::auth::signup::SignupService,
    pub passwords: crate::auth::passwords::PasswordService,
    pub two_factor: crate::auth::two_factor::TwoFactor,
    pub hasher: crate::auth::PasswordHasher,
    pub federation: crate::auth::oidc::Federation,
    pub captcha: crate::auth::captcha::Captcha,
    pub chat: crate::chat::rooms::ChatService,
    pub assistant: crate::assistant::Assistant,
    pub replies: crate::assistant::replies::Replies,
    pub guests: crate::assistant::guests::Guests,
    pub billing: crate::billing::Billing,
    pub edge: crate::edge::Edge,
    pub devices: crate::devices::Registry,
    pub device_claims: crate::devices::handlers::ClaimLimiter,
    /// Unknown API tokens per client address (`accounts.invalid_tokens_per_ip_per_minute`).
    pub token_guard: crate::auth::api_tokens::TokenGuard,
    /// Wraps room data keys; `/readyz` reports whether it answers.
    pub key_provider: Arc<dyn crate::history::keys::KeyProvider>,
}

/// Longest User-Agent kept for logs and the audit log.
pub const MAX_USER_AGENT: usize = 300;

/// The client's address and (shortened) User-Agent, for rate limits and the audit log.
pub fn client_info(request: &actix_web::HttpRequest) -> (Option<std::net::IpAddr>, Option<String>) {
    let user_agent = request
        .headers()
        .get(actix_web::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.chars().take(MAX_USER_AGENT).collect());
    (client_addr(request), user_agent)
}

/// The client's address: as the edge resolved it (through the policy's trusted proxies), or
/// the TCP peer where the edge did not run.
pub fn client_addr(request: &actix_web::HttpRequest) -> Option<std::net::IpAddr> {
    use actix_web::HttpMessage as _;
    request
        .extensions()
        .get::<crate::edge::enforce::ClientAddr>()
        .map(|addr| addr.0)
        .or_else(|| request.peer_addr().map(|addr| addr.ip()))
}

/// The client's address as the audit log stores it.
pub fn client_ip(request: &actix_web::HttpRequest) -> Option<String> {
    client_addr(request).map(|ip| ip.to_string())
}

/// One path's routes, by method. Actix's `Resource` cannot list the methods its routes take,
/// so this builder records them as they are added and, for any other method, answers 405 (a
/// problem document) with the `Allow` header RFC 9110 requires, naming the methods that work.
pub struct Endpoint {
    path: String,
    resource: Resource,
    allowed: Vec<&'static str>,
}

/// A path with no routes yet; add them with `.get(…)`, `.post(…)`, `.put(…)`, `.patch(…)`,
/// `.delete(…)`.
pub fn resource(path: &str) -> Endpoint {
    Endpoint {
        path: path.to_owned(),
        resource: web::resource(path),
        allowed: Vec::new(),
    }
}

/// A path answering GET and HEAD (actix sends no body for HEAD) with `handler`.
pub fn get<F, Args>(path: &str, handler: F) -> Endpoint
where
    F: actix_web::Handler<Args> + Clone,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    resource(path).get(handler)
}

macro_rules! endpoint_methods {
    ($($(#[$doc:meta])* $name:ident => $route:ident, $method:literal;)*) => {
        $(
            $(#[$doc])*
            pub fn $name<F, Args>(mut self, handler: F) -> Self
            where
                F: actix_web::Handler<Args>,
                Args: actix_web::FromRequest + 'static,
                F::Output: actix_web::Responder + 'static,
            {
                self.resource = self.resource.route(web::$route().to(handler));
                self.allowed.push($method);
                self
            }
        )*
    };
}

impl Endpoint {
    /// GET and HEAD.
    pub fn get<F, Args>(mut self, handler: F) -> Self
    where
        F: actix_web::Handler<Args> + Clone,
        Args: actix_web::FromRequest + 'static,
        F::Output: actix_web::Responder + 'static,
    {
        self.resource = self
            .resource
            .route(web::get().to(handler.clone()))
            .route(web::head().to(handler));
        self.allowed.extend(["GET", "HEAD"]);
        self
    }

    endpoint_methods! {
        post => post, "POST";
        put => put, "PUT";
        patch => patch, "PATCH";
        delete => delete, "DELETE";
    }
}

/// The methods each registered path pattern takes, for refusals made before routing (the
/// edge's denied methods) that must still name them in `Allow`. Filled as endpoints register;
/// every app built in the process registers the same routes.
static ALLOWED: std::sync::LazyLock<
    std::sync::RwLock<std::collections::HashMap<String, Vec<&'static str>>>,
> = std::sync::LazyLock::new(Default::default);

/// The methods the path of `request` takes, when it matches a registered endpoint.
pub fn allowed_methods(request: &actix_web::HttpRequest) -> Option<Vec<&'static str>> {
    let pattern = request.match_pattern()?;
    ALLOWED
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&pattern)
        .cloned()
}

impl actix_web::dev::HttpServiceFactory for Endpoint {
    fn register(self, config: &mut actix_web::dev::AppService) {
        ALLOWED
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(self.path.clone(), self.allowed.clone());
        let allow = self.allowed.join(", ");
        self.resource
            .default_service(web::to(move |request: actix_web::HttpRequest| {
                errors::method_not_allowed(request, allow.clone())
            }))
            .register(config);
    }
}

/// Routes of the foundation. Domain modules add theirs with their own `configure`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/", pages::landing))
        .service(get("/healthz", health::healthz))
        .service(get("/readyz", health::readyz))
        .service(get("/metrics", crate::metrics::render))
        .service(get("/api/openapi.json", crate::api_docs::serve))
        .service(get("/docs", crate::api_docs::page))
        .service(get("/static/{path:.*}", assets::serve))
        .service(get("/sw.js", assets::service_worker))
        .service(resource("/api/v1/client-errors").post(client_errors::report))
        .configure(crate::auth::handlers::configure)
        .configure(crate::auth::session_handlers::configure)
        .configure(crate::auth::password_handlers::configure)
        .configure(crate::auth::two_factor_handlers::configure)
        .configure(crate::auth::private_handlers::configure)
        .configure(crate::auth::deletion::configure)
        .configure(crate::auth::token_handlers::configure)
        .configure(crate::auth::preferences::configure)
        .configure(crate::auth::oidc_handlers::configure)
        .configure(crate::tenancy::handlers::configure)
        .configure(crate::tenancy::members::configure)
        .configure(crate::tenancy::defaults::configure)
        .configure(crate::chat::api::configure)
        .configure(crate::chat::ws::configure)
        .configure(crate::chat::pages::configure)
        .configure(crate::assistant::gateway::configure)
        .configure(crate::assistant::chat_api::configure)
        .configure(crate::assistant::pages::configure)
        .configure(crate::assistant::guests::configure)
        .configure(crate::billing::handlers::configure)
        .configure(crate::assistant::admin::configure)
        .configure(crate::edge::handlers::configure)
        .configure(crate::admin::configure)
        .configure(crate::devices::handlers::configure);
}

/// Builds the actix `App` with the middleware stack. Order matters: actix runs the last
/// `wrap` first, so a request passes tracing → metrics → security headers → compression →
/// error rendering → edge policy (admin listener, WAF, allowlists, rate limits) → CSRF guard →
/// handler, and responses go back the same way (edge refusals get the error page or problem
/// document, and the security headers, like any other error).
pub fn app(
    state: web::Data<AppState>,
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let limits = &state.settings.server;
    let json = web::JsonConfig::default()
        .limit(limits.json_limit_bytes)
        .error_handler(errors::json_error);
    let form = web::FormConfig::default()
        .limit(limits.form_limit_bytes)
        .error_handler(errors::form_error);
    let payload = web::PayloadConfig::new(limits.payload_limit_bytes);
    let query = web::QueryConfig::default().error_handler(errors::query_error);
    let path = web::PathConfig::default().error_handler(errors::path_error);
    App::new()
        .app_data(state)
        .app_data(json)
        .app_data(form)
        .app_data(query)
        .app_data(path)
        .app_data(payload)
        .configure(configure)
        .default_service(web::to(errors::not_found))
        .wrap(from_fn(csrf::guard))
        .wrap(from_fn(reject_nul))
        .wrap(from_fn(crate::edge::enforce::enforce))
        .wrap(from_fn(errors::render))
        .wrap(Compress::default())
        .wrap(from_fn(security::headers))
        .wrap(from_fn(crate::metrics::track_requests))
        .wrap(tracing_actix_web::TracingLogger::<
            crate::telemetry::RequestSpan,
        >::new())
}

/// A NUL character (`%00`) in the path or the query string is refused before any handler sees
/// it: PostgreSQL cannot store or compare one, and no route means to take one. (JSON bodies
/// are checked by [`Json`], with the field named.)
async fn reject_nul(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<
    actix_web::dev::ServiceResponse<actix_web::body::EitherBody<impl actix_web::body::MessageBody>>,
    actix_web::Error,
> {
    let has_nul = |text: &str| text.contains('\0') || text.contains("%00");
    let uri = req.uri();
    if has_nul(uri.path()) || uri.query().is_some_and(has_nul) {
        let refusal = crate::error::AppError::BadRequest(
            "The address may not contain the NUL character (%00).".to_owned(),
        );
        return Ok(req.error_response(refusal).map_into_right_body());
    }
    next.call(req)
        .await
        .map(|response| response.map_into_left_body())
}
