//! JSON API of personal assistant chats (`/api/v1/assistant/chats…`), answers
//! (`/api/v1/assistant/replies/{id}/stop`), artifacts, a person's assistant preferences, and
//! the assistant's switch in group rooms (`/api/v1/rooms/{id}/assistant`).

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::artifacts::{self, Artifact};
use super::chats::{self, AssistantRoom, Mode, Preferences};
use super::replies::NEW_CHAT_TITLE;
use crate::auth::identity::Caller;
use crate::chat::rooms::{MessageView, RoomPatch, SearchParams};
use crate::chat::{Privacy, RoomAccess, RoomRole};
use crate::error::AppError;
use crate::history::{Cursor, MemberKind};
use crate::web::{AppState, get, resource};

/// Longest system prompt a person or chat may set, in characters.
const MAX_SYSTEM_PROMPT: usize = 4_000;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/api/v1/assistant/chats")
            .get(list_chats)
            .post(create_chat),
    )
    .service(get("/api/v1/assistant/chats/search", search_chats))
    .service(
        resource("/api/v1/assistant/chats/{id}")
            .get(get_chat)
            .patch(update_chat)
            .delete(delete_chat),
    )
    .service(resource("/api/v1/assistant/chats/{id}/messages").post(send))
    .service(resource("/api/v1/assistant/chats/{id}/regenerate").post(regenerate))
    .service(resource("/api/v1/assistant/chats/{id}/artifacts").get(list_artifacts))
    .service(
        resource("/api/v1/assistant/chats/{id}/artifacts/{message}/{index}").get(download_artifact),
    )
    .service(resource("/api/v1/assistant/replies/{id}/stop").post(stop))
    .service(
        resource("/api/v1/me/assistant")
            .get(get_preferences)
            .put(put_preferences),
    )
    .service(
        resource("/api/v1/rooms/{id}/assistant")
            .get(get_room_assistant)
            .put(put_room_assistant),
    );
}

fn check_prompt(field: &str, text: &str) -> Result<String, AppError> {
    if text.chars().count() > MAX_SYSTEM_PROMPT {
        return Err(AppError::BadRequest(format!(
            "{field}: at most {MAX_SYSTEM_PROMPT} characters"
        )));
    }
    Ok(super::prompt::strip_control(text.trim()))
}

fn check_model(state: &AppState, field: &str, model: &str) -> Result<String, AppError> {
    let model = model.trim();
    if model.is_empty() || state.assistant.catalog().model(model).is_some() {
        Ok(model.to_owned())
    } else {
        Err(AppError::BadRequest(format!(
            "{field}: {model:?} is not a model here (GET /api/v1/assistant/models)"
        )))
    }
}

/// A chat of the caller's own, or 404 (someone else's chat does not exist for them).
pub(crate) async fn own_chat(
    state: &AppState,
    user: i64,
    id: i64,
) -> Result<(RoomAccess, AssistantRoom), AppError> {
    let missing = || AppError::NotFound("No such chat.".to_owned());
    let access = state.chat.access(user, id).await.map_err(|e| match e {
        AppError::NotFound(_) => missing(),
        other => other,
    })?;
    let setting = state
        .replies
        .room_setting(id)
        .await?
        .filter(|s| s.mode == Mode::Chat)
        .ok_or_else(missing)?;
    if access.room_role != Some(RoomRole::Owner) {
        return Err(missing());
    }
    Ok((access, setting))
}

fn chat_json(access: &RoomAccess, setting: &AssistantRoom) -> serde_json::Value {
    json!({
        "id": access.room.id,
        "title": access.room.name,
        "privacy": access.room.privacy,
        "model": setting.model,
        "system_prompt": setting.system_prompt,
        "created_at": crate::time::rfc3339(access.room.created_at),
        "updated_at": crate::time::rfc3339(access.room.updated_at),
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/assistant/chats",
    tag = "assistant",
    summary = "Your assistant chats, newest activity first",
    responses(
        (status = 200, description = "Your chats"),
        (status = 401, description = "Not signed in", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn list_chats(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, AppError> {
    let user = caller.user_id;
    let rows = state
        .db
        .run(move |conn| chats::chats_of(conn, user).map_err(AppError::from))
        .await?;
    let chats: Vec<_> = rows
        .into_iter()
        .map(|(id, title, privacy, model, updated_at)| {
            json!({
                "id": id, "title": title, "privacy": privacy, "model": model,
                "updated_at": crate::time::rfc3339(updated_at),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "chats": chats })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewChat {
    /// `standard` (default), `private` (your password unlocks it) or `ephemeral` (memory only).
    #[schema(value_type = Option<crate::chat::Privacy>)]
    privacy: Option<String>,
    /// A model from `GET /api/v1/assistant/models`; default: yours, else the server's.
    model: Option<String>,
    system_prompt: Option<String>,
    /// The first message, answered at once.
    message: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/assistant/chats",
    tag = "assistant",
    summary = "Start a chat (titled New chat until the first exchange names it)",
    request_body = NewChat,
    responses(
        (status = 201, description = "The chat, and the first message if one was given"),
        (status = 400, description = "Bad privacy, model or instructions", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 423, description = "A private chat needs your private conversations unlocked", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn create_chat(
    state: web::Data<AppState>,
    caller: Caller,
    body: crate::web::Json<NewChat>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    let privacy = match body.privacy.as_deref().map(str::trim) {
        None | Some("standard") => Privacy::Standard,
        Some("private") => Privacy::Private,
        Some("ephemeral") => Privacy::Ephemeral,
        Some(other) => {
            return Err(AppError::BadRequest(format!(
                "privacy: {other:?} is not one of standard, private, ephemeral"
            )));
        }
    };
    let model = check_model(&state, "model", body.model.as_deref().unwrap_or(""))?;
    let system_prompt = check_prompt("system_prompt", body.system_prompt.as_deref().unwrap_or(""))?;
    if privacy == Privacy::Private && !state.chat.personal_keys().is_unlocked(caller.user_id) {
        return Err(crate::history::HistoryError::Locked(0).into());
    }
    let user = caller.user_id;
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
        system_prompt,
        untitled: true,
    };
    let saved = setting.clone();
    state
        .db
        .run(move |conn| chats::insert_room(conn, &saved).map_err(AppError::from))
        .await?;
    state.replies.forget_room(room.id);
    let access = state.chat.access(user, room.id).await?;
    let mut answer = json!({ "chat": chat_json(&access, &setting) });
    if let Some(first) = body.message {
        let (message, _) = state.chat.post(user, room.id, first, None, None).await?;
        answer["message"] = json!(message);
    }
    Ok(HttpResponse::Created().json(answer))
}

/// The chat, its messages (oldest first) and the state of each answer.
#[utoipa::path(
    get,
    path = "/api/v1/assistant/chats/{id}",
    tag = "assistant",
    summary = "A chat: its messages and the state of each answer",
    params(("id" = i64, Path)),
    responses(
        (status = 200, description = "The chat"),
        (status = 404, description = "No such chat of yours", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn get_chat(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let (access, setting) = own_chat(&state, caller.user_id, *id).await?;
    let messages = state
        .chat
        .history_of(&access, caller.user_id, Cursor::Latest, 200)
        .await?;
    let replies = state.replies.replies_in(access.room.id).await?;
    Ok(HttpResponse::Ok().json(json!({
        "chat": chat_json(&access, &setting),
        "messages": messages,
        "replies": replies,
    })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatPatch {
    title: Option<String>,
    model: Option<String>,
    system_prompt: Option<String>,
}

#[utoipa::path(
    patch,
    path = "/api/v1/assistant/chats/{id}",
    tag = "assistant",
    summary = "Rename a chat, pick its model, set its instructions",
    params(("id" = i64, Path)), request_body = ChatPatch,
    responses(
        (status = 200, description = "The chat"),
        (status = 400, description = "Bad title, model or instructions", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such chat of yours", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn update_chat(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<i64>,
    body: crate::web::Json<ChatPatch>,
) -> Result<HttpResponse, AppError> {
    let (access, mut setting) = own_chat(&state, caller.user_id, *id).await?;
    let body = body.into_inner();
    if let Some(model) = &body.model {
        setting.model = check_model(&state, "model", model)?;
    }
    if let Some(prompt) = &body.system_prompt {
        setting.system_prompt = check_prompt("system_prompt", prompt)?;
    }
    if body.title.is_some() {
        // A name given by its owner is final: the title job will not replace it.
        setting.untitled = false;
    }
    let saved = setting.clone();
    state
        .db
        .run(move |conn| chats::save_room(conn, &saved).map_err(AppError::from))
        .await?;
    state.replies.forget_room(access.room.id);
    if let Some(title) = body.title {
        state
            .chat
            .update(
                caller.user_id,
                access.room.id,
                RoomPatch {
                    name: Some(title),
                    ..RoomPatch::default()
                },
                None,
            )
            .await
            .map_err(|e| match e {
                AppError::BadRequest(m) => AppError::BadRequest(m.replacen("name:", "title:", 1)),
                other => other,
            })?;
    }
    let access = state.chat.access(caller.user_id, access.room.id).await?;
    Ok(HttpResponse::Ok().json(json!({ "chat": chat_json(&access, &setting) })))
}

#[utoipa::path(
    delete,
    path = "/api/v1/assistant/chats/{id}",
    tag = "assistant",
    summary = "Delete a chat with all its messages",
    params(("id" = i64, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such chat of yours", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn delete_chat(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let (access, _) = own_chat(&state, caller.user_id, *id).await?;
    state
        .chat
        .delete(caller.user_id, access.room.id, None)
        .await?;
    state.replies.forget_room(access.room.id);
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    #[schema(pattern = r"\S")]
    body: String,
    #[schema(min_length = 1, max_length = 200)]
    idempotency_key: Option<String>,
}

/// Posts a message to the chat; the answer follows on the realtime connection (and in
/// `GET /api/v1/assistant/chats/{id}`).
#[utoipa::path(
    post,
    path = "/api/v1/assistant/chats/{id}/messages",
    tag = "assistant",
    summary = "Ask in a chat; the answer streams over the realtime connection",
    params(("id" = i64, Path)), request_body = SendMessage,
    responses(
        (status = 201, description = "The stored question"),
        (status = 200, description = "Already posted with this idempotency key"),
        (status = 400, description = "Empty message", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such chat of yours", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Message too long", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn send(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<i64>,
    body: crate::web::Json<SendMessage>,
) -> Result<HttpResponse, AppError> {
    let (access, _) = own_chat(&state, caller.user_id, *id).await?;
    let body = body.into_inner();
    let (message, created) = state
        .chat
        .post(
            caller.user_id,
            access.room.id,
            body.body,
            None,
            body.idempotency_key,
        )
        .await?;
    Ok(if created {
        HttpResponse::Created().json(message)
    } else {
        HttpResponse::Ok()
            .insert_header(("Idempotent-Replayed", "true"))
            .json(message)
    })
}

#[utoipa::path(
    post,
    path = "/api/v1/assistant/chats/{id}/regenerate",
    tag = "assistant",
    summary = "Answer the last question again (the previous answer is deleted)",
    params(("id" = i64, Path)),
    responses(
        (status = 202, description = "The new answer, queued"),
        (status = 404, description = "Nothing to regenerate", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "An answer is still coming", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn regenerate(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let reply = state.replies.regenerate(caller.user_id, *id).await?;
    Ok(HttpResponse::Accepted().json(json!({ "reply": reply })))
}

/// Stops an answer; what was generated is kept, marked stopped.
#[utoipa::path(
    post,
    path = "/api/v1/assistant/replies/{id}/stop",
    tag = "assistant",
    summary = "Stop an answer; what was written so far is kept, marked stopped",
    params(("id" = i64, Path)),
    responses(
        (status = 200, description = "The answer"),
        (status = 404, description = "No such answer you can see", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn stop(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let reply = state.replies.stop_reply(caller.user_id, *id).await?;
    Ok(HttpResponse::Ok().json(json!({ "reply": reply })))
}

#[derive(Deserialize)]
struct SearchQuery {
    q: String,
}

/// Searches the messages of one's own chats (private ones while unlocked).
#[utoipa::path(
    get,
    path = "/api/v1/assistant/chats/search",
    tag = "assistant",
    summary = "Search the messages of your chats",
    params(("q" = String, Query, description = "Words to find", pattern = r"[^\W_]")),
    responses(
        (status = 200, description = "Matching messages"),
        (status = 400, description = "No words to search for", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn search_chats(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<SearchQuery>,
) -> Result<HttpResponse, AppError> {
    let user = caller.user_id;
    let mine: Vec<i64> = state
        .db
        .run(move |conn| chats::chats_of(conn, user).map_err(AppError::from))
        .await?
        .into_iter()
        .map(|(id, ..)| id)
        .collect();
    if mine.is_empty() {
        return Ok(HttpResponse::Ok().json(json!({ "hits": [] })));
    }
    let hits = state
        .chat
        .search(
            user,
            SearchParams {
                q: query.into_inner().q,
                room: None,
                sender: None,
                from: None,
                to: None,
                before: None,
                limit: 50,
                within: Some(mine),
            },
        )
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "hits": hits })))
}

/// Every artifact of a chat, in order, versions numbered.
async fn chat_artifacts(state: &AppState, user: i64, id: i64) -> Result<Vec<Artifact>, AppError> {
    let (access, _) = own_chat(state, user, id).await?;
    let messages: Vec<MessageView> = state
        .chat
        .history_of(&access, user, Cursor::Latest, 200)
        .await?;
    let mut found: Vec<Artifact> = messages
        .iter()
        .filter(|m| m.sender.kind == MemberKind::Assistant)
        .filter_map(|m| m.body.as_deref().map(|body| artifacts::extract(m.id, body)))
        .flatten()
        .collect();
    artifacts::number_versions(&mut found);
    Ok(found)
}

#[utoipa::path(
    get,
    path = "/api/v1/assistant/chats/{id}/artifacts",
    tag = "assistant",
    summary = "Code blocks and documents in the answers of a chat, with versions",
    params(("id" = i64, Path)),
    responses(
        (status = 200, description = "The artifacts"),
        (status = 404, description = "No such chat of yours", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn list_artifacts(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let found = chat_artifacts(&state, caller.user_id, *id).await?;
    Ok(HttpResponse::Ok().json(json!({ "artifacts": found })))
}

#[utoipa::path(
    get,
    path = "/api/v1/assistant/chats/{id}/artifacts/{message}/{index}",
    tag = "assistant",
    summary = "Download one artifact as a file",
    params(("id" = i64, Path), ("message" = i64, Path), ("index" = usize, Path)),
    responses(
        (status = 200, description = "The artifact"),
        (status = 404, description = "No such artifact", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn download_artifact(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(i64, i64, usize)>,
) -> Result<HttpResponse, AppError> {
    let (id, message, index) = path.into_inner();
    let artifact = chat_artifacts(&state, caller.user_id, id)
        .await?
        .into_iter()
        .find(|a| a.message_id == message && a.index == index)
        .ok_or_else(|| AppError::NotFound("No such artifact in this chat.".to_owned()))?;
    let file_name = artifact.file_name();
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .insert_header((
            header::CONTENT_DISPOSITION,
            header::ContentDisposition::attachment(file_name),
        ))
        .insert_header(("x-content-type-options", "nosniff"))
        .body(artifact.content))
}

#[utoipa::path(
    get,
    path = "/api/v1/me/assistant",
    tag = "assistant",
    summary = "Your instructions for the assistant and your default model",
    responses(
        (status = 200, description = "Your preferences")
    )
)]
async fn get_preferences(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, AppError> {
    let preferences = state.replies.preferences(caller.user_id).await?;
    Ok(HttpResponse::Ok().json(preferences))
}

#[utoipa::path(
    put,
    path = "/api/v1/me/assistant",
    tag = "assistant",
    summary = "Set your instructions and default model",
    request_body = Preferences,
    responses(
        (status = 200, description = "Saved"),
        (status = 400, description = "Unknown model or instructions too long", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn put_preferences(
    state: web::Data<AppState>,
    caller: Caller,
    body: crate::web::Json<Preferences>,
) -> Result<HttpResponse, AppError> {
    let preferences = Preferences {
        system_prompt: check_prompt("system_prompt", &body.system_prompt)?,
        model: check_model(&state, "model", &body.model)?,
    };
    let (user, saved) = (caller.user_id, preferences.clone());
    state
        .db
        .run(move |conn| chats::save_preferences(conn, user, &saved).map_err(AppError::from))
        .await?;
    Ok(HttpResponse::Ok().json(preferences))
}

#[utoipa::path(
    get,
    path = "/api/v1/rooms/{id}/assistant",
    tag = "assistant",
    summary = "Whether the assistant answers mentions in a room, and with which model",
    params(("id" = i64, Path)),
    responses(
        (status = 200, description = "The setting"),
        (status = 404, description = "No such room", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn get_room_assistant(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let access = state.chat.access(caller.user_id, *id).await?;
    let setting = state.replies.room_setting(access.room.id).await?;
    Ok(HttpResponse::Ok().json(json!({
        "enabled": setting.as_ref().is_some_and(|s| s.enabled),
        "model": setting.as_ref().map(|s| s.model.clone()).unwrap_or_default(),
        "bot_name": state.replies.bot_name(),
    })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoomAssistant {
    enabled: bool,
    model: Option<String>,
}

/// Switches the assistant on or off in a group room (room owners and moderators).
#[utoipa::path(
    put,
    path = "/api/v1/rooms/{id}/assistant",
    tag = "assistant",
    summary = "Switch the assistant on or off in a room (owners and moderators)",
    params(("id" = i64, Path)), request_body = RoomAssistant,
    responses(
        (status = 200, description = "The setting"),
        (status = 400, description = "Unknown model", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an owner or moderator of the room", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "A personal chat", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn put_room_assistant(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<i64>,
    body: crate::web::Json<RoomAssistant>,
) -> Result<HttpResponse, AppError> {
    let access = state.chat.access(caller.user_id, *id).await?;
    let model = check_model(&state, "model", body.model.as_deref().unwrap_or(""))?;
    let setting = state
        .replies
        .switch_in_room(&access, caller.user_id, body.enabled, model)
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "enabled": setting.enabled,
        "model": setting.model,
        "bot_name": state.replies.bot_name(),
    })))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    list_chats,
    create_chat,
    get_chat,
    update_chat,
    delete_chat,
    send,
    regenerate,
    stop,
    search_chats,
    list_artifacts,
    download_artifact,
    get_preferences,
    put_preferences,
    get_room_assistant,
    put_room_assistant
))]
pub struct ApiDoc;
