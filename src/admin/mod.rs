//! The operator's area: server-rendered pages under `/admin` and their JSON twins under
//! `/api/v1/admin`. Who may use it is decided by one's staff role (`users.staff_role`), apart
//! from workspace roles: the default workspace holds everyone who signs up, so its roles
//! cannot double as admin powers. People without a staff role get 403 everywhere here,
//! whatever they are in their own workspaces. The installation's first person is its owner;
//! `conclave user create --role admin` and the users page hand out the others.
//!
//! Owner > admin > operator > viewer: viewers see every page and change nothing; operators run
//! the day-to-day actions (disable/unlock people, sign them out, archive rooms, retry jobs,
//! clear caches, reload providers); admins and owners also change roles, workspaces' plans,
//! billing and the edge policy. Pages show only the buttons `Staff::may` allows, and every
//! action checks again with `Staff::require`, answering 403 when called anyway.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use serde::Serialize;

use crate::auth::identity::Caller;
use crate::error::AppError;
use crate::tenancy::Role;
use crate::web::AppState;

/// What an admin action needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// See pages, lists, the audit log, the settings.
    View,
    /// Day-to-day operations.
    Operate,
    /// Change roles, workspaces' plans, billing, reset someone's 2FA.
    Administer,
    /// Edit the edge policy.
    Edge,
}

impl Action {
    pub fn minimum_role(self) -> Role {
        match self {
            Self::View => Role::Viewer,
            Self::Operate => Role::Operator,
            Self::Administer | Self::Edge => Role::Admin,
        }
    }
}

/// Someone with a staff role using the admin area.
#[derive(Debug, Clone)]
pub struct Staff {
    pub caller: Caller,
    pub role: Role,
}

/// What a page may offer, for templates: `{% if may.operate %}`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Powers {
    pub role: Role,
    pub operate: bool,
    pub administer: bool,
    pub edge: bool,
    pub owner: bool,
}

impl Staff {
    pub fn user_id(&self) -> i64 {
        self.caller.user_id
    }

    pub fn may(&self, action: Action) -> bool {
        self.role.at_least(action.minimum_role())
    }

    pub fn require(&self, action: Action) -> Result<(), AppError> {
        if self.may(action) {
            return Ok(());
        }
        let needed = action.minimum_role();
        Err(AppError::Forbidden(format!(
            "This needs the {needed} staff role or above; you are {}.",
            self.role
        )))
    }

    pub fn powers(&self) -> Powers {
        Powers {
            role: self.role,
            operate: self.may(Action::Operate),
            administer: self.may(Action::Administer),
            edge: self.may(Action::Edge),
            owner: self.role == Role::Owner,
        }
    }
}

impl FromRequest for Staff {
    type Error = AppError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let caller = Caller::from_request(request, payload);
        let state = request.app_data::<web::Data<AppState>>().cloned();
        Box::pin(async move {
            let caller = caller.await?;
            let state = state
                .ok_or_else(|| AppError::internal(anyhow::anyhow!("application state missing")))?;
            let user = caller.user_id;
            let role = state
                .db
                .run(move |conn| crate::tenancy::staff_role_of(conn, user).map_err(AppError::from))
                .await?;
            let role = role.ok_or_else(|| {
                AppError::Forbidden(
                    "The admin area is for Conclave's staff; ask an admin for a staff role."
                        .to_owned(),
                )
            })?;
            Ok(Staff { caller, role })
        })
    }
}

pub mod audit_log;
pub mod backups;
pub mod dashboard;
pub mod operations;
pub mod people;
pub mod system;

use actix_web::HttpResponse;
use actix_web::http::header;

use crate::web::pages::{Page, back_to};

/// Registers `handler` for a POST at `api` (`/api/v1/admin/…`, JSON) and at the same path
/// under `/admin/…` (HTML forms).
fn action<F, Args>(cfg: &mut web::ServiceConfig, api: &str, handler: F)
where
    F: actix_web::Handler<Args> + Clone,
    Args: FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    let form = api.replacen("/api/v1/admin", "/admin", 1);
    cfg.service(crate::web::resource(&form).post(handler.clone()))
        .service(crate::web::resource(api).post(handler));
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    dashboard::configure(cfg);
    people::configure(cfg);
    operations::configure(cfg);
    system::configure(cfg);
    audit_log::configure(cfg);
    backups::configure(cfg);
}

/// Whether a request came from an HTML form (answered with a redirect back to its page).
fn from_form(request: &HttpRequest) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

/// The answer to an admin action: forms go back to `page` with `?notice=` (or `?error=`), API
/// calls get the JSON `outcome`.
fn answer(
    request: &HttpRequest,
    page: &str,
    notice: &str,
    outcome: Result<serde_json::Value, AppError>,
) -> Result<HttpResponse, AppError> {
    if from_form(request) {
        back_to(page, outcome.map(|_| notice))
    } else {
        outcome.map(|body| HttpResponse::Ok().json(body))
    }
}

/// The body of an action: JSON from the API, or the fields of an HTML form.
type Input<T> = actix_web::Either<crate::web::Json<T>, web::Form<T>>;

fn input<T>(body: Input<T>) -> T {
    match body {
        actix_web::Either::Left(json) => json.into_inner(),
        actix_web::Either::Right(form) => form.into_inner(),
    }
}

/// The context every admin page starts from.
fn context(state: &AppState, page: &Page, staff: &Staff, section: &str) -> tera::Context {
    let mut context = page.context(state);
    context.insert("may", &staff.powers());
    context.insert("section", section);
    context
}

use crate::web::pages::Notice;

diesel::define_sql_function!(fn lower(x: diesel::sql_types::Text) -> diesel::sql_types::Text);

/// A case-insensitive `LIKE` pattern for `text` anywhere, its own `%`, `_` and `\` literal
/// (use with `.escape('\\')`).
fn contains_pattern(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{}%", escaped.to_lowercase())
}

/// Who made an admin change, from where: what its audit entry records.
#[derive(Debug, Clone)]
struct Who {
    actor: i64,
    ip: Option<String>,
    user_agent: Option<String>,
}

impl Who {
    fn of(staff: &Staff, request: &HttpRequest) -> Self {
        Self {
            actor: staff.user_id(),
            ip: crate::web::client_ip(request),
            user_agent: crate::web::client_info(request).1,
        }
    }
}

/// An audit entry for an admin change, with the state before and after.
fn audited(
    event: &'static str,
    who: &Who,
    subject: String,
    tenant_id: Option<i64>,
    before: serde_json::Value,
    after: serde_json::Value,
) -> crate::audit::AuditEvent {
    crate::audit::AuditEvent {
        event,
        actor_user_id: Some(who.actor),
        tenant_id,
        subject: Some(subject),
        ip: who.ip.clone(),
        user_agent: who.user_agent.clone(),
        details: serde_json::json!({ "before": before, "after": after }),
    }
}

fn timestamp(at: chrono::NaiveDateTime) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        dashboard::api,
        people::users_api,
        people::tenants_api,
        people::members_api,
        people::disable,
        people::enable,
        people::unlock,
        people::sign_out,
        people::reset_two_factor,
        people::change_role,
        people::create_tenant,
        people::change_plan,
        operations::rooms_api,
        operations::jobs_api,
        operations::billing_api,
        operations::archive,
        operations::unarchive,
        operations::retention,
        operations::legal_hold,
        operations::retry_job,
        operations::drop_job,
        operations::adjust,
        system::settings_api,
        system::caches_api,
        system::clear,
        audit_log::api,
        audit_log::export,
        backups::api,
        backups::back_up_now,
    ),
    components(schemas(backups::Backups, backups::Row))
)]
pub struct ApiDoc;
