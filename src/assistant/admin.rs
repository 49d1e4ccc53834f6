//! The assistant's admin page (`/admin/assistant`; staff see it, operators reload): each provider's circuit
//! and health, the configured models, and a button that reloads them from the configuration
//! (as SIGHUP does).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use crate::admin::{Action, Staff};
use crate::error::AppError;
use crate::web::pages::{Notice, Page, back_to as back, html};
use crate::web::{AppState, get, resource};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/admin/assistant", page))
        .service(resource("/admin/assistant/reload").post(reload_form));
}

async fn page(
    state: web::Data<AppState>,
    page: Page,
    staff: Staff,
    query: web::Query<Notice>,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    let catalog = state.assistant.catalog();
    let providers: Vec<_> = state
        .assistant
        .providers()
        .into_iter()
        .map(|p| {
            json!({
                "name": p.name,
                "kind": p.kind,
                "circuit": p.health.circuit,
                "failures": p.health.failures_in_a_row,
                "last_error": p.health.last_error,
                "last_check_ok": p.health.last_check_ok,
                "last_check_at": p.health.last_check_at.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string()),
            })
        })
        .collect();
    let models: Vec<_> = catalog
        .models()
        .into_iter()
        .filter_map(|m| catalog.model(&m.name).cloned())
        .map(|m| {
            json!({
                "name": m.alias,
                "label": m.label,
                "tier": m.tier,
                "routes": m.routes.iter().map(|r| format!("{} ×{}", r.variant(), r.weight)).collect::<Vec<_>>(),
                "fallback": m.fallback,
            })
        })
        .collect();
    let mut context = page.context(&state);
    context.insert("may", &staff.powers());
    context.insert("section", "assistant");
    context.insert("providers", &providers);
    context.insert("models", &models);
    query.into_inner().insert(&mut context);
    html(&state, "admin/assistant.html", &context, StatusCode::OK)
}

async fn reload_form(
    state: web::Data<AppState>,
    staff: Staff,
    request: HttpRequest,
) -> Result<HttpResponse, AppError> {
    let outcome = crate::assistant::gateway::reload_audited(&state, &staff, &request).await;
    back("/admin/assistant", outcome.map(|_| "reloaded"))
}
