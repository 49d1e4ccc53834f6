//! Each person's preferences: `GET|PATCH /api/v1/me/preferences` and `/settings/preferences`.
//!
//! The document has one typed shape ([`Preferences`], unknown keys refused, every value
//! checked) and a version. What is stored is only what differs from the defaults' shape at
//! the time it was written; reading merges it over the defaults, so a key added later gets
//! its default without a migration. A document of an older version is migrated on read
//! ([`migrate`]) and written back in the new shape on the next change.
//!
//! PATCH takes a JSON merge patch (RFC 7396): objects merge, `null` puts a key back to its
//! default. The merge is hand-written (a dozen lines over `serde_json::Value`) rather than a
//! crate because it must also keep the result inside the typed shape.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::identity::{Caller, Identity};
use crate::error::AppError;
use crate::schema::user_preferences;
use crate::web::pages::{Notice, Page, back_to, html};
use crate::web::{AppState, get, resource};

/// The shape's version. 1 had `dark_mode` and `email_notifications` booleans.
pub const VERSION: i32 = 2;
/// The cookie that carries the theme to pages (read by `Page`, no database read per page).
pub const THEME_COOKIE: &str = "conclave_theme";
const MAX_DOCUMENT: usize = 8 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/api/v1/me/preferences", api_get).patch(api_patch))
        .service(get("/settings/preferences", page))
        .service(resource("/settings/preferences/save").post(save_form));
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = UserPreferences)]
#[serde(deny_unknown_fields, default)]
pub struct Preferences {
    /// `system`, `light` or `dark`.
    pub theme: Theme,
    /// A language tag such as `en` or `pt-BR`.
    pub locale: String,
    /// An IANA time zone such as `Europe/Berlin`, or `UTC`.
    pub time_zone: String,
    /// `24h` or `12h`.
    pub time_format: TimeFormat,
    pub notifications: Notifications,
    pub chat: ChatPreferences,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Theme {
    System,
    Light,
    Dark,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum TimeFormat {
    #[serde(rename = "24h")]
    H24,
    #[serde(rename = "12h")]
    H12,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Notifications {
    pub mentions: bool,
    pub direct_messages: bool,
    /// `off`, `daily` or `weekly`.
    pub email_digest: Digest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Digest {
    Off,
    Daily,
    Weekly,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ChatPreferences {
    /// Enter sends (Shift+Enter for a new line); off: Ctrl/⌘+Enter sends.
    pub enter_sends: bool,
    pub compact: bool,
    pub show_presence: bool,
}

impl Default for Preferences {
    fn default() -> Self {
        Self {
            theme: Theme::System,
            locale: "en".to_owned(),
            time_zone: "UTC".to_owned(),
            time_format: TimeFormat::H24,
            notifications: Notifications::default(),
            chat: ChatPreferences::default(),
        }
    }
}

impl Default for Notifications {
    fn default() -> Self {
        Self {
            mentions: true,
            direct_messages: true,
            email_digest: Digest::Off,
        }
    }
}

impl Default for ChatPreferences {
    fn default() -> Self {
        Self {
            enter_sends: true,
            compact: false,
            show_presence: true,
        }
    }
}

impl Theme {
    fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::Light => "light",
            Self::Dark => "dark",
        }
    }
}

/// A refused value, named by its path in the document.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = FieldProblem)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl Preferences {
    fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let locale_ok = {
            let mut parts = self.locale.split('-');
            let language = parts.next().unwrap_or_default();
            (2..=3).contains(&language.len())
                && language.bytes().all(|b| b.is_ascii_alphabetic())
                && parts.all(|p| {
                    (2..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric())
                })
        };
        if !locale_ok {
            problems.push(Problem {
                field: "locale".to_owned(),
                message: "a language tag such as en, de or pt-BR".to_owned(),
            });
        }
        let zone_ok = self.time_zone.len() <= 64
            && !self.time_zone.is_empty()
            && self.time_zone.split('/').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_+-".contains(&b))
            })
            && (self.time_zone == "UTC" || self.time_zone.contains('/'));
        if !zone_ok {
            problems.push(Problem {
                field: "time_zone".to_owned(),
                message: "an IANA time zone such as Europe/Berlin, or UTC".to_owned(),
            });
        }
        problems
    }
}

/// Moves a stored document of version `from` to the current shape.
pub fn migrate(from: i32, mut document: Value) -> Value {
    if from < 2
        && let Some(object) = document.as_object_mut()
    {
        // Version 1: `dark_mode: bool` became `theme`, `email_notifications: bool` became
        // `notifications.email_digest` (daily when it was on).
        if let Some(dark) = object.remove("dark_mode") {
            let theme = if dark.as_bool() == Some(true) {
                "dark"
            } else {
                "light"
            };
            object.insert("theme".to_owned(), json!(theme));
        }
        if let Some(email) = object.remove("email_notifications") {
            let digest = if email.as_bool() == Some(true) {
                "daily"
            } else {
                "off"
            };
            let notifications = object.entry("notifications").or_insert_with(|| json!({}));
            if let Some(n) = notifications.as_object_mut() {
                n.insert("email_digest".to_owned(), json!(digest));
            }
        }
    }
    document
}

/// RFC 7396: objects merge key by key, `null` removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// The typed preferences of a (stored or patched) document, or every problem in it.
fn parse(document: &Value) -> Result<Preferences, Vec<Problem>> {
    let preferences: Preferences = serde_json::from_value(document.clone()).map_err(|e| {
        vec![Problem {
            field: "preferences".to_owned(),
            message: e.to_string(),
        }]
    })?;
    let problems = preferences.problems();
    if problems.is_empty() {
        Ok(preferences)
    } else {
        Err(problems)
    }
}

/// The stored document (migrated to the current shape), `{}` when none.
async fn stored(state: &AppState, user: i64) -> Result<Value, AppError> {
    let row: Option<(i32, String)> = state
        .db
        .run(move |conn| {
            user_preferences::table
                .find(user)
                .select((user_preferences::version, user_preferences::document))
                .first(conn)
                .optional()
                .map_err(AppError::from)
        })
        .await?;
    Ok(match row {
        None => json!({}),
        Some((version, text)) => {
            let value = serde_json::from_str(&text).unwrap_or_else(|_| json!({}));
            migrate(version, value)
        }
    })
}

/// A person's preferences merged over the defaults. A stored document that no longer fits
/// (it cannot, unless written by a newer server) falls back to the defaults, logged.
pub async fn load(state: &AppState, user: i64) -> Result<Preferences, AppError> {
    let document = stored(state, user).await?;
    Ok(parse(&document).unwrap_or_else(|problems| {
        tracing::warn!(
            user,
            ?problems,
            "stored preferences do not fit; using the defaults"
        );
        Preferences::default()
    }))
}

/// Applies `patch` and stores the result; the new preferences, or what is wrong.
pub async fn update(
    state: &AppState,
    user: i64,
    patch: &Value,
) -> Result<Result<Preferences, Vec<Problem>>, AppError> {
    if !patch.is_object() {
        return Ok(Err(vec![Problem {
            field: "preferences".to_owned(),
            message: "send a JSON object (a merge patch)".to_owned(),
        }]));
    }
    let mut document = stored(state, user).await?;
    merge_patch(&mut document, patch);
    let preferences = match parse(&document) {
        Ok(preferences) => preferences,
        Err(problems) => return Ok(Err(problems)),
    };
    let text = document.to_string();
    if text.len() > MAX_DOCUMENT {
        return Ok(Err(vec![Problem {
            field: "preferences".to_owned(),
            message: format!("at most {MAX_DOCUMENT} bytes"),
        }]));
    }
    state
        .db
        .run(move |conn| {
            let now = Utc::now().naive_utc();
            crate::db::write_transaction(conn, |tx| {
                diesel::delete(user_preferences::table.find(user)).execute(tx)?;
                diesel::insert_into(user_preferences::table)
                    .values((
                        user_preferences::user_id.eq(user),
                        user_preferences::version.eq(VERSION),
                        user_preferences::document.eq(&text),
                        user_preferences::updated_at.eq(now),
                    ))
                    .execute(tx)
            })
            .map_err(AppError::from)
        })
        .await?;
    Ok(Ok(preferences))
}

fn theme_cookie(state: &AppState, theme: Theme) -> Cookie<'static> {
    Cookie::build(THEME_COOKIE, theme.as_str())
        .path("/")
        .same_site(SameSite::Lax)
        .secure(crate::auth::identity::secure_cookies(state))
        .permanent()
        .finish()
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PreferencesView {
    version: i32,
    preferences: Preferences,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PreferenceErrors {
    title: &'static str,
    status: u16,
    detail: String,
    errors: Vec<Problem>,
}

fn refused(problems: Vec<Problem>) -> HttpResponse {
    let detail = problems
        .iter()
        .map(|p| format!("{}: {}", p.field, p.message))
        .collect::<Vec<_>>()
        .join("; ");
    HttpResponse::UnprocessableEntity()
        .content_type("application/problem+json")
        .json(PreferenceErrors {
            title: "Those preferences are not valid",
            status: 422,
            detail,
            errors: problems,
        })
}

#[utoipa::path(get, path = "/api/v1/me/preferences", tag = "account",
    summary = "My preferences, merged over the defaults",
    responses((status = 200, body = PreferencesView)))]
async fn api_get(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, AppError> {
    let preferences = load(&state, caller.user_id).await?;
    Ok(HttpResponse::Ok().json(PreferencesView {
        version: VERSION,
        preferences,
    }))
}

#[utoipa::path(patch, path = "/api/v1/me/preferences", tag = "account",
    summary = "Change preferences with a JSON merge patch (null restores a default)",
    request_body(content = Preferences, description = "A JSON merge patch (RFC 7396) of the preferences: only the fields to change; `null` restores a default"),
    responses((status = 200, body = PreferencesView), (status = 422, description = "A value is refused; `errors` names each", body = PreferenceErrors, content_type = "application/problem+json")))]
async fn api_patch(
    state: web::Data<AppState>,
    caller: Caller,
    patch: crate::web::Json<Value>,
) -> Result<HttpResponse, AppError> {
    match update(&state, caller.user_id, &patch).await? {
        Ok(preferences) => {
            let cookie = theme_cookie(&state, preferences.theme);
            Ok(HttpResponse::Ok().cookie(cookie).json(PreferencesView {
                version: VERSION,
                preferences,
            }))
        }
        Err(problems) => Ok(refused(problems)),
    }
}

async fn page(
    state: web::Data<AppState>,
    page: Page,
    identity: Identity,
    query: web::Query<Notice>,
) -> Result<HttpResponse, AppError> {
    let preferences = load(&state, identity.user_id()).await?;
    let mut context = page.context(&state);
    context.insert("p", &preferences);
    query.into_inner().insert(&mut context);
    html(
        &state,
        "settings/preferences.html",
        &context,
        StatusCode::OK,
    )
}

#[derive(Deserialize)]
struct PreferencesForm {
    theme: String,
    locale: String,
    time_zone: String,
    time_format: String,
    email_digest: String,
    mentions: Option<String>,
    direct_messages: Option<String>,
    enter_sends: Option<String>,
    compact: Option<String>,
    show_presence: Option<String>,
}

async fn save_form(
    state: web::Data<AppState>,
    identity: Identity,
    _request: HttpRequest,
    form: web::Form<PreferencesForm>,
) -> Result<HttpResponse, AppError> {
    let f = form.into_inner();
    // Unticked checkboxes are absent from a form: absent means off.
    let patch = json!({
        "theme": f.theme,
        "locale": f.locale.trim(),
        "time_zone": f.time_zone.trim(),
        "time_format": f.time_format,
        "notifications": {
            "mentions": f.mentions.is_some(),
            "direct_messages": f.direct_messages.is_some(),
            "email_digest": f.email_digest,
        },
        "chat": {
            "enter_sends": f.enter_sends.is_some(),
            "compact": f.compact.is_some(),
            "show_presence": f.show_presence.is_some(),
        }
    });
    match update(&state, identity.user_id(), &patch).await? {
        Ok(preferences) => {
            let mut response = back_to("/settings/preferences", Ok("saved"))?;
            response
                .add_cookie(&theme_cookie(&state, preferences.theme))
                .map_err(AppError::internal)?;
            Ok(response)
        }
        Err(problems) => {
            let message = problems
                .iter()
                .map(|p| format!("{}: {}", p.field, p.message))
                .collect::<Vec<_>>()
                .join("; ");
            back_to("/settings/preferences", Err(AppError::BadRequest(message)))
        }
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(api_get, api_patch),
    components(schemas(
        Preferences,
        PreferencesView,
        PreferenceErrors,
        Problem,
        Theme,
        TimeFormat,
        Notifications,
        Digest,
        ChatPreferences
    ))
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
    }

    #[test]
    fn version_one_documents_migrate() {
        let migrated = migrate(
            1,
            json!({"dark_mode": true, "email_notifications": true, "locale": "de"}),
        );
        let preferences = parse(&migrated).expect("fits the current shape");
        assert_eq!(preferences.theme, Theme::Dark);
        assert_eq!(preferences.notifications.email_digest, Digest::Daily);
        assert_eq!(preferences.locale, "de");
        assert!(preferences.chat.enter_sends, "defaults fill the rest");
    }
}
