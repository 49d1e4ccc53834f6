//! The assistant's pages: `/assistant` (chats, a new chat, search, one's instructions) and
//! `/assistant/{id}` (a chat: conversation, answers streaming in with a stop button, model
//! picker, artifacts). Every action is a form post that works without JavaScript (the answer
//! then shows on reload); `static/js/assistant.js` streams answers in and posts in place.

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::artifacts;
use super::chat_api::own_chat;
use super::chats::{self, AssistantRoom, Mode, Preferences, ReplyState};
use super::replies::NEW_CHAT_TITLE;
use crate::auth::identity::Identity;
use crate::chat::Privacy;
use crate::chat::rooms::{RoomPatch, SearchParams};
use crate::error::AppError;
use crate::history::{Cursor, MemberKind};
use crate::web::pages::{Page, back_to as back, html};
use crate::web::{AppState, get, resource};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/assistant", chats_page))
        .service(resource("/assistant/new").post(new_form))
        .service(resource("/assistant/preferences").post(preferences_form))
        .service(get("/assistant/{id}", chat_page))
        .service(resource("/assistant/{id}/messages").post(send_form))
        .service(resource("/assistant/{id}/settings").post(settings_form))
        .service(resource("/assistant/{id}/regenerate").post(regenerate_form))
        .service(resource("/assistant/{id}/delete").post(delete_form))
        .service(resource("/assistant/replies/{id}/stop").post(stop_form))
        .service(resource("/rooms/{id}/assistant").post(room_form));
}

#[derive(Deserialize)]
struct ListQuery {
    q: Option<String>,
    notice: Option<String>,
    error: Option<String>,
}

/// The sidebar's list of chats and the models to pick from.
async fn common(
    state: &AppState,
    context: &mut tera::Context,
    user: i64,
    current: Option<i64>,
) -> Result<(), AppError> {
    let rows = state
        .db
        .run(move |conn| chats::chats_of(conn, user).map_err(AppError::from))
        .await?;
    let list: Vec<_> = rows
        .into_iter()
        .map(|(id, title, privacy, _, updated)| {
            json!({
                "id": id, "title": title, "privacy": privacy,
                "current": Some(id) == current,
                "updated": crate::time::rfc3339(updated).get(..10).unwrap_or_default().to_owned(),
            })
        })
        .collect();
    let catalog = state.assistant.catalog();
    context.insert("chats", &list);
    context.insert("models", &catalog.models());
    context.insert(
        "default_model",
        &catalog.default_model().map(|m| m.alias.clone()),
    );
    context.insert("bot_name", state.replies.bot_name());
    Ok(())
}

async fn chats_page(
    state: web::Data<AppState>,
    page: Page,
    identity: Identity,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, AppError> {
    let user = identity.user_id();
    let mut context = page.context(&state);
    common(&state, &mut context, user, None).await?;
    let preferences = state.replies.preferences(user).await?;
    context.insert("preferences", &preferences);
    let query = query.into_inner();
    if let Some(q) = query.q.filter(|q| !q.trim().is_empty()) {
        let mine: Vec<i64> = state
            .db
            .run(move |conn| chats::chats_of(conn, user).map_err(AppError::from))
            .await?
            .into_iter()
            .map(|(id, ..)| id)
            .collect();
        let hits = if mine.is_empty() {
            Vec::new()
        } else {
            match state
                .chat
                .search(
                    user,
                    SearchParams {
                        q: q.clone(),
                        room: None,
                        sender: None,
                        from: None,
                        to: None,
                        before: None,
                        limit: 50,
                        within: Some(mine),
                    },
                )
                .await
            {
                Ok(hits) => hits,
                Err(AppError::BadRequest(message)) => {
                    context.insert("error", &message);
                    Vec::new()
                }
                Err(e) => return Err(e),
            }
        };
        let hits: Vec<_> = hits
            .iter()
            .map(|h| {
                json!({
                    "chat": h.message.room_id, "title": h.room_name,
                    "message": h.message.id, "snippet": h.snippet_html,
                })
            })
            .collect();
        context.insert("q", &q);
        context.insert("hits", &hits);
    }
    context.insert("notice", &query.notice);
    if let Some(error) = query.error {
        context.insert("error", &error);
    }
    html(
        &state,
        "assistant/chats.html",
        &context,
        actix_web::http::StatusCode::OK,
    )
}

#[derive(Deserialize)]
struct ChatQuery {
    notice: Option<String>,
    error: Option<String>,
}

async fn chat_page(
    state: web::Data<AppState>,
    page: Page,
    identity: Identity,
    id: web::Path<i64>,
    query: web::Query<ChatQuery>,
) -> Result<HttpResponse, AppError> {
    let user = identity.user_id();
    let (access, setting) = own_chat(&state, user, *id).await?;
    let room_id = access.room.id;
    let (messages, locked) = match state
        .chat
        .history_of(&access, user, Cursor::Latest, 200)
        .await
    {
        Ok(messages) => (messages, false),
        Err(AppError::Coded {
            code: "private_locked",
            ..
        }) => (Vec::new(), true),
        Err(e) => return Err(e),
    };
    let replies = state.replies.replies_in(room_id).await?;
    let views: Vec<_> = messages
        .iter()
        .map(|m| {
            let reply = replies.iter().find(|r| r.message_id == Some(m.id));
            json!({
                "id": m.id,
                "assistant": m.sender.kind == MemberKind::Assistant,
                "sender": m.sender.name,
                "at": m.created_at,
                "time": m.created_at.get(..16).unwrap_or_default().replace('T', " "),
                "html": m.html,
                "deleted": m.deleted,
                "state": reply.map(|r| r.state.as_str()),
                "error": reply.and_then(|r| r.error.clone()),
            })
        })
        .collect();
    // Answers still coming, and failures that left no message, shown after the messages.
    let open: Vec<_> = replies
        .iter()
        .filter(|r| !r.state.is_done() || (r.state == ReplyState::Failed && r.message_id.is_none()))
        .map(|r| json!({ "id": r.id, "state": r.state.as_str(), "error": r.error }))
        .collect();
    let last_done = replies.last().is_some_and(|r| r.state.is_done());
    let mut found: Vec<artifacts::Artifact> = messages
        .iter()
        .filter(|m| m.sender.kind == MemberKind::Assistant)
        .filter_map(|m| m.body.as_deref().map(|b| artifacts::extract(m.id, b)))
        .flatten()
        .collect();
    artifacts::number_versions(&mut found);
    let mut context = page.context(&state);
    common(&state, &mut context, user, Some(room_id)).await?;
    context.insert("chat_id", &room_id);
    context.insert("me", &user);
    context.insert("title", &access.room.name);
    context.insert("privacy", access.room.privacy.as_str());
    context.insert("model", &setting.model);
    context.insert("system_prompt", &setting.system_prompt);
    context.insert("messages", &views);
    context.insert("open_replies", &open);
    context.insert("can_regenerate", &last_done);
    context.insert("artifacts", &found);
    context.insert("locked", &locked);
    context.insert("last_id", &messages.last().map(|m| m.id));
    context.insert("idempotency_key", &uuid::Uuid::new_v4().to_string());
    context.insert("max_bytes", &state.settings.chat.max_message_bytes);
    context.insert("notice", &query.notice);
    if let Some(error) = &query.error {
        context.insert("error", error);
    }
    html(
        &state,
        "assistant/chat.html",
        &context,
        actix_web::http::StatusCode::OK,
    )
}

fn see(location: String) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .finish()
}

#[derive(Deserialize)]
struct NewChatForm {
    #[serde(rename = "csrf_token")]
    _csrf: Option<String>,
    privacy: Option<String>,
    model: Option<String>,
    message: Option<String>,
}

async fn new_form(
    state: web::Data<AppState>,
    identity: Identity,
    form: web::Form<NewChatForm>,
) -> Result<HttpResponse, AppError> {
    let user = identity.user_id();
    let form = form.into_inner();
    let privacy = match form.privacy.as_deref() {
        Some("private") => Privacy::Private,
        Some("ephemeral") => Privacy::Ephemeral,
        _ => Privacy::Standard,
    };
    let model = form.model.unwrap_or_default();
    if !model.is_empty() && state.assistant.catalog().model(&model).is_none() {
        return back(
            "/assistant",
            Err(AppError::BadRequest(format!(
                "model: {model:?} is not a model here"
            ))),
        );
    }
    if privacy == Privacy::Private && !state.chat.personal_keys().is_unlocked(user) {
        return back(
            "/assistant",
            Err(AppError::Conflict(
                "Private chats are sealed with your password: unlock your private conversations first (Security page or any private room).".to_owned(),
            )),
        );
    }
    let tenant = state
        .db
        .run(move |conn| super::usage::home_tenant(conn, user).map_err(AppError::from))
        .await?;
    let room = state
        .chat
        .create_personal_room(user, tenant, NEW_CHAT_TITLE.to_owned(), privacy)
        .await?;
    let setting = AssistantRoom {
        room_id: room.id,
        mode: Mode::Chat,
        enabled: true,
        model,
        system_prompt: String::new(),
        untitled: true,
    };
    state
        .db
        .run(move |conn| chats::insert_room(conn, &setting).map_err(AppError::from))
        .await?;
    state.replies.forget_room(room.id);
    if let Some(message) = form.message.filter(|m| !m.trim().is_empty())
        && let Err(e) = state.chat.post(user, room.id, message, None, None).await
    {
        return back(&format!("/assistant/{}", room.id), Err(e));
    }
    Ok(see(format!("/assistant/{}", room.id)))
}

#[derive(Deserialize)]
struct SendForm {
    #[serde(rename = "csrf_token")]
    _csrf: Option<String>,
    body: String,
    idempotency_key: Option<String>,
}

async fn send_form(
    state: web::Data<AppState>,
    identity: Identity,
    id: web::Path<i64>,
    form: web::Form<SendForm>,
) -> Result<HttpResponse, AppError> {
    let user = identity.user_id();
    let (access, _) = own_chat(&state, user, *id).await?;
    let form = form.into_inner();
    let key = form.idempotency_key.filter(|k| !k.is_empty());
    let to = format!("/assistant/{}", access.room.id);
    match state
        .chat
        .post(user, access.room.id, form.body, None, key)
        .await
    {
        Ok((message, _)) => Ok(see(format!("{to}#m{}", message.id))),
        Err(e) => back(&to, Err(e)),
    }
}

#[derive(Deserialize)]
struct SettingsForm {
    #[serde(rename = "csrf_token")]
    _csrf: Option<String>,
    title: Option<String>,
    model: Option<String>,
    system_prompt: Option<String>,
}

async fn settings_form(
    state: web::Data<AppState>,
    identity: Identity,
    id: web::Path<i64>,
    form: web::Form<SettingsForm>,
) -> Result<HttpResponse, AppError> {
    let user = identity.user_id();
    let (access, mut setting) = own_chat(&state, user, *id).await?;
    let to = format!("/assistant/{}", access.room.id);
    let form = form.into_inner();
    if let Some(model) = form.model {
        if !model.is_empty() && state.assistant.catalog().model(&model).is_none() {
            return back(
                &to,
                Err(AppError::BadRequest(format!(
                    "model: {model:?} is not a model here"
                ))),
            );
        }
        setting.model = model;
    }
    if let Some(prompt) = form.system_prompt {
        if prompt.chars().count() > 4_000 {
            return back(
                &to,
                Err(AppError::BadRequest(
                    "Instructions: at most 4000 characters".to_owned(),
                )),
            );
        }
        setting.system_prompt = super::prompt::strip_control(prompt.trim());
    }
    let renamed = form
        .title
        .filter(|t| t.trim() != access.room.name)
        .map(|t| t.trim().to_owned());
    if renamed.is_some() {
        setting.untitled = false;
    }
    if let Some(title) = renamed
        && let Err(e) = state
            .chat
            .update(
                user,
                access.room.id,
                RoomPatch {
                    name: Some(title),
                    ..RoomPatch::default()
                },
                None,
            )
            .await
    {
        return back(&to, Err(e));
    }
    state
        .db
        .run(move |conn| chats::save_room(conn, &setting).map_err(AppError::from))
        .await?;
    state.replies.forget_room(access.room.id);
    back(&to, Ok("saved"))
}

async fn regenerate_form(
    state: web::Data<AppState>,
    identity: Identity,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let user = identity.user_id();
    let (access, _) = own_chat(&state, user, *id).await?;
    let to = format!("/assistant/{}", access.room.id);
    match state.replies.regenerate(user, access.room.id).await {
        Ok(_) => back(&to, Ok("")),
        Err(e @ (AppError::Conflict(_) | AppError::NotFound(_))) => {
            back(&to, Err(AppError::Conflict(e.public_detail())))
        }
        Err(e) => back(&to, Err(e)),
    }
}

async fn delete_form(
    state: web::Data<AppState>,
    identity: Identity,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let user = identity.user_id();
    let (access, _) = own_chat(&state, user, *id).await?;
    state.chat.delete(user, access.room.id, None).await?;
    state.replies.forget_room(access.room.id);
    back("/assistant", Ok("deleted"))
}

async fn stop_form(
    state: web::Data<AppState>,
    identity: Identity,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let reply = state.replies.stop_reply(identity.user_id(), *id).await?;
    back(&format!("/assistant/{}", reply.room_id), Ok("stopped"))
}

#[derive(Deserialize)]
struct PreferencesForm {
    #[serde(rename = "csrf_token")]
    _csrf: Option<String>,
    system_prompt: String,
    model: String,
}

async fn preferences_form(
    state: web::Data<AppState>,
    identity: Identity,
    form: web::Form<PreferencesForm>,
) -> Result<HttpResponse, AppError> {
    let form = form.into_inner();
    if form.system_prompt.chars().count() > 4_000 {
        return back(
            "/assistant",
            Err(AppError::BadRequest(
                "Instructions: at most 4000 characters".to_owned(),
            )),
        );
    }
    if !form.model.is_empty() && state.assistant.catalog().model(&form.model).is_none() {
        return back(
            "/assistant",
            Err(AppError::BadRequest(format!(
                "model: {:?} is not a model here",
                form.model
            ))),
        );
    }
    let preferences = Preferences {
        system_prompt: super::prompt::strip_control(form.system_prompt.trim()),
        model: form.model,
    };
    let user = identity.user_id();
    state
        .db
        .run(move |conn| chats::save_preferences(conn, user, &preferences).map_err(AppError::from))
        .await?;
    back("/assistant", Ok("preferences_saved"))
}

#[derive(Deserialize)]
struct RoomForm {
    #[serde(rename = "csrf_token")]
    _csrf: Option<String>,
    /// A checkbox: present when ticked.
    enabled: Option<String>,
    model: Option<String>,
}

/// The room page's switch for the assistant (owners and moderators).
async fn room_form(
    state: web::Data<AppState>,
    identity: Identity,
    id: web::Path<i64>,
    form: web::Form<RoomForm>,
) -> Result<HttpResponse, AppError> {
    let user = identity.user_id();
    let access = state.chat.access(user, *id).await?;
    let to = format!("/rooms/{}", access.room.id);
    let form = form.into_inner();
    let model = form.model.unwrap_or_default();
    if !model.is_empty() && state.assistant.catalog().model(&model).is_none() {
        return back(
            &to,
            Err(AppError::BadRequest(format!(
                "model: {model:?} is not a model here"
            ))),
        );
    }
    let enabled = match state
        .replies
        .switch_in_room(&access, user, form.enabled.is_some(), model)
        .await
    {
        Ok(setting) => setting.enabled,
        Err(e) => return back(&to, Err(e)),
    };
    back(
        &to,
        Ok(if enabled {
            "assistant_on"
        } else {
            "assistant_off"
        }),
    )
}
