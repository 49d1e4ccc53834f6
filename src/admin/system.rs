//! `/admin/settings`: the effective configuration, secrets masked, each value labelled with
//! where it came from (environment, config file, built-in default) — all read-only here, as
//! the operator's env and config win. `/admin/caches`: the in-process caches, their sizes, and
//! a button to clear each.

use std::collections::BTreeSet;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use serde_json::json;

use super::{Action, Notice, Staff, action, answer, audited, context};
use crate::error::AppError;
use crate::web::pages::{Page, html};
use crate::web::{AppState, get};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/admin/settings", settings_page))
        .service(get("/api/v1/admin/settings", settings_api))
        .service(get("/admin/caches", caches_page))
        .service(get("/api/v1/admin/caches", caches_api));
    action(cfg, "/api/v1/admin/caches/{name}/clear", clear);
}

#[derive(Debug, Serialize)]
pub struct SettingRow {
    key: String,
    value: String,
    /// `env`, `file` or `default`.
    source: &'static str,
    /// The variable that set it, for `env`.
    variable: Option<String>,
}

fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) if !map.is_empty() => {
            for (key, inner) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&path, inner, out);
            }
        }
        serde_json::Value::String(text) => out.push((prefix.to_owned(), text.clone())),
        serde_json::Value::Null => out.push((prefix.to_owned(), "(unset)".to_owned())),
        other => out.push((prefix.to_owned(), other.to_string())),
    }
}

fn toml_keys(prefix: &str, value: &toml::Value, out: &mut BTreeSet<String>) {
    if let toml::Value::Table(table) = value {
        for (key, inner) in table {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            out.insert(path.clone());
            toml_keys(&path, inner, out);
        }
    }
}

fn effective(state: &AppState) -> Result<Vec<SettingRow>, AppError> {
    let settings = &state.settings;
    // Secrets serialize as a mask (settings::redact_*), never their value.
    let value = serde_json::to_value(settings.as_ref()).map_err(AppError::internal)?;
    let mut flat = Vec::new();
    flatten("", &value, &mut flat);
    let mut in_file = BTreeSet::new();
    if let Some(path) = &settings.source
        && let Ok(text) = std::fs::read_to_string(path)
        && let Ok(parsed) = text.parse::<toml::Value>()
    {
        toml_keys("", &parsed, &mut in_file);
    }
    Ok(flat
        .into_iter()
        .map(|(key, value)| {
            let variable = settings
                .from_env
                .iter()
                .find(|(path, _)| *path == key || key.starts_with(&format!("{path}.")))
                .map(|(_, name)| name.clone());
            let source = if variable.is_some() {
                "env"
            } else if in_file.contains(&key) {
                "file"
            } else {
                "default"
            };
            SettingRow {
                key,
                value,
                source,
                variable,
            }
        })
        .collect())
}

async fn settings_page(
    state: web::Data<AppState>,
    page: Page,
    staff: Staff,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    let rows = effective(&state)?;
    let mut context = context(&state, &page, &staff, "settings");
    context.insert("settings", &rows);
    context.insert(
        "config_file",
        &state
            .settings
            .source
            .as_ref()
            .map(|p| p.display().to_string()),
    );
    Notice::default().insert(&mut context);
    html(&state, "admin/settings.html", &context, StatusCode::OK)
}

#[utoipa::path(get, path = "/api/v1/admin/settings", tag = "admin", summary = "The effective configuration, secrets masked, with where each value came from (staff)", responses((status = 200, description = "OK"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn settings_api(state: web::Data<AppState>, staff: Staff) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    Ok(HttpResponse::Ok().json(json!({ "settings": effective(&state)? })))
}

#[derive(Debug, Serialize)]
pub struct CacheRow {
    name: &'static str,
    description: &'static str,
    entries: u64,
}

const CACHES: [(&str, &str); 4] = [
    (
        "sessions",
        "Signed-in sessions in front of the database (clearing signs nobody out).",
    ),
    (
        "quota",
        "Workspaces known to be over a daily or monthly limit, until it resets.",
    ),
    (
        "assistant_rooms",
        "Each room's assistant settings (on/off, model).",
    ),
    (
        "oidc_discovery",
        "Discovery documents of the single sign-on providers.",
    ),
];

fn entries(state: &AppState, name: &str) -> u64 {
    match name {
        "sessions" => state.sessions.cached_entries(),
        "quota" => state.billing.gate_cache().cached_entries(),
        "assistant_rooms" => state.replies.room_cache_entries(),
        "oidc_discovery" => state.federation.discovery_entries(),
        _ => 0,
    }
}

fn caches(state: &AppState) -> Vec<CacheRow> {
    CACHES
        .iter()
        .map(|(name, description)| CacheRow {
            name,
            description,
            entries: entries(state, name),
        })
        .collect()
}

async fn caches_page(
    state: web::Data<AppState>,
    page: Page,
    staff: Staff,
    query: web::Query<Notice>,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    let mut context = context(&state, &page, &staff, "caches");
    context.insert("caches", &caches(&state));
    query.into_inner().insert(&mut context);
    html(&state, "admin/caches.html", &context, StatusCode::OK)
}

#[utoipa::path(get, path = "/api/v1/admin/caches", tag = "admin", summary = "In-memory caches and their sizes (staff)", responses((status = 200, description = "OK"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn caches_api(state: web::Data<AppState>, staff: Staff) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    Ok(HttpResponse::Ok().json(json!({ "caches": caches(&state) })))
}

#[utoipa::path(post, path = "/api/v1/admin/caches/{name}/clear", params(("name" = String, Path, description = "sessions, quota, assistant_rooms or oidc_discovery", pattern = r"^[a-z_]{1,32}$")), tag = "admin", summary = "Clear a cache on this node (operators)", responses((status = 200, description = "Done: before and after"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "No such thing", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn clear(
    state: web::Data<AppState>,
    staff: Staff,
    request: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let name = path.into_inner();
    let outcome = async {
        staff.require(Action::Operate)?;
        let before = entries(&state, &name);
        match name.as_str() {
            "sessions" => state.sessions.clear_cache(),
            "quota" => state.billing.gate_cache().clear_cache(),
            "assistant_rooms" => state.replies.clear_room_cache(),
            "oidc_discovery" => state.federation.clear_discovery(),
            other => {
                return Err(AppError::NotFound(format!(
                    "There is no cache named {other:?}."
                )));
            }
        }
        let who = super::Who::of(&staff, &request);
        let entry = audited(
            "cache.cleared",
            &who,
            format!("cache:{name}"),
            None,
            json!({ "entries": before }),
            json!({ "entries": 0 }),
        );
        crate::audit::record_now(&state.db, entry).await?;
        Ok(json!({ "cache": name, "cleared": before }))
    }
    .await;
    answer(&request, "/admin/caches", "cleared", outcome)
}
