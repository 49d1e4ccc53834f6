//! The rooms and messages JSON API (`/api/v1/rooms…`, `/api/v1/search`, `/api/v1/me/export`).

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{NaiveDate, NaiveDateTime};
use serde::Deserialize;
use serde_json::json;

use super::rooms::{DEFAULT_PAGE, NewRoom, RoomPatch, SearchParams};
use super::{RoomAccess, RoomAction, RoomRole, Visibility};
use crate::auth::identity::Caller;
use crate::error::AppError;
use crate::history::Cursor;
use crate::tenancy::Authorizer;
use crate::web::{AppState, client_ip, get, resource};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/api/v1/rooms").get(list_rooms).post(create_room))
        .service(
            resource("/api/v1/rooms/{id}")
                .get(get_room)
                .patch(update_room)
                .delete(delete_room),
        )
        .service(
            resource("/api/v1/rooms/{id}/members")
                .get(list_members)
                .post(add_member),
        )
        .service(
            resource("/api/v1/rooms/{id}/members/{user}")
                .patch(change_member)
                .delete(remove_member),
        )
        .service(
            resource("/api/v1/rooms/{id}/messages")
                .get(list_messages)
                .post(post_message),
        )
        .service(
            resource("/api/v1/rooms/{id}/messages/{msg}")
                .patch(edit_message)
                .delete(delete_message),
        )
        .service(get("/api/v1/rooms/{id}/export", export_room))
        .service(get("/api/v1/search", search))
        .service(get("/api/v1/me/export", export));
}

/// The room as JSON, with the caller's role and what they may do in it.
pub fn room_json(access: &RoomAccess) -> serde_json::Value {
    let can = |action| Authorizer::room(access, action);
    let mut value = serde_json::to_value(&access.room).unwrap_or_default();
    value["my_role"] = json!(access.room_role);
    value["can"] = json!({
        "join": can(RoomAction::Join),
        "post": can(RoomAction::Post),
        "invite": can(RoomAction::Invite),
        "rename": can(RoomAction::Rename),
        "archive": can(RoomAction::Archive),
        "delete": can(RoomAction::Delete),
        "moderate": can(RoomAction::Moderate),
        "set_retention": can(RoomAction::SetRetention),
        "legal_hold": can(RoomAction::LegalHold),
        "export": can(RoomAction::Export),
    });
    value
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only rooms of this workspace.
    tenant: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/api/v1/rooms",
    tag = "rooms",
    summary = "Rooms I am in, and public rooms of my workspaces",
    params(ListQuery),
    responses((status = 200, description = "`{rooms: [...]}`; `my_role` is null for rooms I could join"))
)]
async fn list_rooms(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, AppError> {
    let rooms = state.chat.list(caller.user_id, query.tenant).await?;
    let rooms: Vec<_> = rooms
        .iter()
        .map(|r| {
            let mut value = serde_json::to_value(r).unwrap_or_default();
            value["title"] = json!(r.title());
            value
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "rooms": rooms })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoom {
    /// The workspace; default: my first.
    tenant_id: Option<i64>,
    /// Required unless `direct_with` is given.
    #[schema(
        min_length = 1,
        max_length = 80,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    name: Option<String>,
    #[serde(default)]
    #[schema(max_length = 500)]
    topic: String,
    /// `public` (default) or `private`.
    #[schema(value_type = Option<crate::chat::Visibility>)]
    visibility: Option<String>,
    /// `standard` (default: the workspace's default).
    #[schema(value_type = Option<crate::chat::Privacy>)]
    privacy: Option<String>,
    /// Open the direct room with this user instead (made once per pair).
    direct_with: Option<i64>,
}

#[utoipa::path(
    post,
    path = "/api/v1/rooms",
    tag = "rooms",
    summary = "Create a room, or open a direct room with someone",
    request_body = CreateRoom,
    responses(
        (status = 201, description = "Created; the room"),
        (status = 200, description = "The direct room already existed"),
        (status = 400, description = "Invalid field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Your workspace role cannot create rooms", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "That privacy tier is not available", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn create_room(
    state: web::Data<AppState>,
    request: HttpRequest,
    caller: Caller,
    body: crate::web::Json<CreateRoom>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    let user_id = caller.user_id;
    if let Some(other) = body.direct_with {
        if body.name.is_some() || body.visibility.is_some() {
            return Err(AppError::BadRequest(
                "direct_with: a direct room has no name or visibility".to_owned(),
            ));
        }
        let (room, created) = state
            .chat
            .open_direct(user_id, body.tenant_id, other)
            .await?;
        let access = state.chat.access(user_id, room.id).await?;
        let status = if created {
            actix_web::http::StatusCode::CREATED
        } else {
            actix_web::http::StatusCode::OK
        };
        return Ok(HttpResponse::build(status)
            .insert_header((header::LOCATION, format!("/api/v1/rooms/{}", room.id)))
            .json(room_json(&access)));
    }
    let visibility = match body.visibility.as_deref() {
        None => Visibility::Public,
        Some(text) => text.parse().map_err(AppError::BadRequest)?,
    };
    let privacy = body
        .privacy
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(AppError::BadRequest)?;
    let room = state
        .chat
        .create(
            user_id,
            NewRoom {
                tenant_id: body.tenant_id,
                name: body
                    .name
                    .ok_or_else(|| AppError::BadRequest("name: is required".to_owned()))?,
                topic: body.topic,
                visibility,
                privacy,
            },
            client_ip(&request),
        )
        .await?;
    let access = state.chat.access(user_id, room.id).await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/rooms/{}", room.id)))
        .json(room_json(&access)))
}

#[utoipa::path(
    get,
    path = "/api/v1/rooms/{id}",
    tag = "rooms",
    summary = "A room, my role in it and what I may do",
    params(("id" = i64, Path)),
    responses(
        (status = 200, description = "The room"),
        (status = 404, description = "No such room (or a private one I am not in)", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn get_room(
    state: web::Data<AppState>,
    caller: Caller,
    room: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let access = state.chat.access(caller.user_id, room.into_inner()).await?;
    Ok(HttpResponse::Ok().json(room_json(&access)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRoom {
    #[schema(
        min_length = 1,
        max_length = 80,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    name: Option<String>,
    #[schema(max_length = 500)]
    topic: Option<String>,
    archived: Option<bool>,
    /// Days to keep messages; `null` to follow the workspace's setting.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 36500)]
    retention_days: Option<Option<i32>>,
    legal_hold: Option<bool>,
}

/// Tells a missing field (`None`) from an explicit `null` (`Some(None)`).
pub(crate) fn double_option<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[utoipa::path(
    patch,
    path = "/api/v1/rooms/{id}",
    tag = "rooms",
    summary = "Rename, change the topic, archive, set retention or legal hold",
    params(("id" = i64, Path)),
    request_body = UpdateRoom,
    responses(
        (status = 200, description = "The room as changed"),
        (status = 403, description = "Your role cannot", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such room", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn update_room(
    state: web::Data<AppState>,
    request: HttpRequest,
    caller: Caller,
    room: web::Path<i64>,
    body: crate::web::Json<UpdateRoom>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    let room_id = room.into_inner();
    state
        .chat
        .update(
            caller.user_id,
            room_id,
            RoomPatch {
                name: body.name,
                topic: body.topic,
                archived: body.archived,
                retention_days: body.retention_days,
                legal_hold: body.legal_hold,
            },
            client_ip(&request),
        )
        .await?;
    Ok(match state.chat.access(caller.user_id, room_id).await {
        Ok(access) => HttpResponse::Ok().json(room_json(&access)),
        // A workspace admin changed a private room they are not in: done, but not theirs to see.
        Err(AppError::NotFound(_)) => HttpResponse::NoContent().finish(),
        Err(other) => return Err(other),
    })
}

#[utoipa::path(
    delete,
    path = "/api/v1/rooms/{id}",
    tag = "rooms",
    summary = "Delete a room with all its messages",
    params(("id" = i64, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Your role cannot", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such room", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn delete_room(
    state: web::Data<AppState>,
    request: HttpRequest,
    caller: Caller,
    room: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    state
        .chat
        .delete(caller.user_id, room.into_inner(), client_ip(&request))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(
    get,
    path = "/api/v1/rooms/{id}/members",
    tag = "rooms",
    summary = "The room's members and their roles",
    params(("id" = i64, Path)),
    responses(
        (status = 200, description = "`{members: [...]}`"),
        (status = 404, description = "No such room", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn list_members(
    state: web::Data<AppState>,
    caller: Caller,
    room: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let (_, members) = state
        .chat
        .members(caller.user_id, room.into_inner())
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "members": members })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// Who to add; leave out (or give your own id) to join a public room.
    user_id: Option<i64>,
    /// `owner`, `moderator`, `member` or `readonly`; default: member (read-only for
    /// workspace viewers).
    #[schema(value_type = Option<crate::chat::RoomRole>)]
    role: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/rooms/{id}/members",
    tag = "rooms",
    summary = "Add someone to the room, or join a public room",
    params(("id" = i64, Path)),
    request_body = AddMember,
    responses(
        (status = 201, description = "`{user_id, role}`"),
        (status = 403, description = "Your role cannot", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such room or person", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already a member", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn add_member(
    state: web::Data<AppState>,
    request: HttpRequest,
    caller: Caller,
    room: web::Path<i64>,
    body: crate::web::Json<AddMember>,
) -> Result<HttpResponse, AppError> {
    let room_id = room.into_inner();
    let role: Option<RoomRole> = body
        .role
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(AppError::BadRequest)?;
    let target = body.user_id.unwrap_or(caller.user_id);
    let role = if target == caller.user_id {
        if role.is_some() {
            return Err(AppError::BadRequest(
                "role: you join with the role the room gives".to_owned(),
            ));
        }
        state.chat.join(caller.user_id, room_id).await?
    } else {
        state
            .chat
            .add_member(caller.user_id, room_id, target, role, client_ip(&request))
            .await?
    };
    Ok(HttpResponse::Created().json(json!({ "user_id": target, "role": role })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeMember {
    #[schema(value_type = crate::chat::RoomRole)]
    role: String,
}

#[utoipa::path(
    patch,
    path = "/api/v1/rooms/{id}/members/{user}",
    tag = "rooms",
    summary = "Change a member's room role",
    params(("id" = i64, Path), ("user" = i64, Path)),
    request_body = ChangeMember,
    responses(
        (status = 200, description = "`{user_id, role}`"),
        (status = 403, description = "Your role cannot", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such room or member", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The last owner", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn change_member(
    state: web::Data<AppState>,
    request: HttpRequest,
    caller: Caller,
    path: web::Path<(i64, i64)>,
    body: crate::web::Json<ChangeMember>,
) -> Result<HttpResponse, AppError> {
    let (room_id, target) = path.into_inner();
    let role: RoomRole = body.role.parse().map_err(AppError::BadRequest)?;
    state
        .chat
        .set_role(caller.user_id, room_id, target, role, client_ip(&request))
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "user_id": target, "role": role })))
}

#[utoipa::path(
    delete,
    path = "/api/v1/rooms/{id}/members/{user}",
    tag = "rooms",
    summary = "Remove a member, or leave",
    params(("id" = i64, Path), ("user" = i64, Path)),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "Your role cannot", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such room or member", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The last owner, or a direct room", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn remove_member(
    state: web::Data<AppState>,
    request: HttpRequest,
    caller: Caller,
    path: web::Path<(i64, i64)>,
) -> Result<HttpResponse, AppError> {
    let (room_id, target) = path.into_inner();
    state
        .chat
        .remove_member(caller.user_id, room_id, target, client_ip(&request))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Messages just before this id (the previous page).
    before: Option<i64>,
    /// Messages just after this id (the next page, or what arrived since).
    after: Option<i64>,
    /// 1 to 200; default 50.
    limit: Option<usize>,
}

/// The history cursor a query asks for.
pub fn cursor(before: Option<i64>, after: Option<i64>) -> Result<Cursor, AppError> {
    match (before, after) {
        (Some(_), Some(_)) => Err(AppError::BadRequest(
            "before, after: give one or the other, not both".to_owned(),
        )),
        (Some(id), None) => Ok(Cursor::Before(id)),
        (None, Some(id)) => Ok(Cursor::After(id)),
        (None, None) => Ok(Cursor::Latest),
    }
}

fn page_limit(limit: Option<usize>) -> Result<usize, AppError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=super::rooms::MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(AppError::BadRequest(format!(
            "limit: must be between 1 and {}",
            super::rooms::MAX_PAGE
        ))),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/rooms/{id}/messages",
    tag = "rooms",
    summary = "A page of history, in chronological order",
    params(("id" = i64, Path), PageQuery),
    responses(
        (status = 200, description = "`{messages: [...]}`; `before=<first id>` pages back, `after=<last id>` forward"),
        (status = 404, description = "No such room", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn list_messages(
    state: web::Data<AppState>,
    caller: Caller,
    room: web::Path<i64>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, AppError> {
    let cursor = cursor(query.before, query.after)?;
    let limit = page_limit(query.limit)?;
    let messages = state
        .chat
        .history(caller.user_id, room.into_inner(), cursor, limit)
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "messages": messages })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    /// Markdown.
    #[schema(pattern = r"\S")]
    body: String,
    reply_to: Option<i64>,
    /// A retried post with the same key answers the stored message instead of a copy.
    #[schema(min_length = 1, max_length = 200)]
    idempotency_key: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/rooms/{id}/messages",
    tag = "rooms",
    summary = "Post a message",
    params(("id" = i64, Path)),
    request_body = PostMessage,
    responses(
        (status = 201, description = "The stored message"),
        (status = 200, description = "Already posted with this idempotency key; the stored message"),
        (status = 400, description = "Empty body, bad reply_to", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only here, or archived", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such room", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too long", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn post_message(
    state: web::Data<AppState>,
    caller: Caller,
    room: web::Path<i64>,
    body: crate::web::Json<PostMessage>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    let (message, created) = state
        .chat
        .post(
            caller.user_id,
            room.into_inner(),
            body.body,
            body.reply_to,
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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditMessage {
    #[schema(pattern = r"\S")]
    body: String,
}

#[utoipa::path(
    patch,
    path = "/api/v1/rooms/{id}/messages/{msg}",
    tag = "rooms",
    summary = "Edit my message",
    params(("id" = i64, Path), ("msg" = i64, Path)),
    request_body = EditMessage,
    responses(
        (status = 200, description = "The message, marked edited"),
        (status = 403, description = "Not the author", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such room or message", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The message was deleted", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn edit_message(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(i64, i64)>,
    body: crate::web::Json<EditMessage>,
) -> Result<HttpResponse, AppError> {
    let (room_id, message_id) = path.into_inner();
    let message = state
        .chat
        .edit(caller.user_id, room_id, message_id, body.into_inner().body)
        .await?;
    Ok(HttpResponse::Ok().json(message))
}

#[utoipa::path(
    delete,
    path = "/api/v1/rooms/{id}/messages/{msg}",
    tag = "rooms",
    summary = "Delete a message (mine, or any as a moderator); a tombstone stays",
    params(("id" = i64, Path), ("msg" = i64, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Not the author nor a moderator", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such room or message", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn delete_message(
    state: web::Data<AppState>,
    request: HttpRequest,
    caller: Caller,
    path: web::Path<(i64, i64)>,
) -> Result<HttpResponse, AppError> {
    let (room_id, message_id) = path.into_inner();
    state
        .chat
        .delete_message(caller.user_id, room_id, message_id, client_ip(&request))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SearchQueryParams {
    /// Words; every one must match (any form: "meetings" finds "meeting").
    #[param(pattern = r"[^\W_]")]
    q: String,
    /// Only this room.
    room: Option<i64>,
    /// Only messages by this user.
    sender: Option<i64>,
    /// From this time (RFC 3339) or day (YYYY-MM-DD), inclusive.
    from: Option<String>,
    /// Until this time (RFC 3339, exclusive) or day (YYYY-MM-DD, inclusive).
    to: Option<String>,
    /// The next page: results older than this message id.
    before: Option<i64>,
    /// 1 to 100; default 20.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
}

/// Parses a `from`/`to` bound: a full RFC 3339 time, or a day (`to` then means its end).
pub fn parse_bound(name: &str, text: &str, end_of_day: bool) -> Result<NaiveDateTime, AppError> {
    let text = text.trim();
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(at.naive_utc());
    }
    let day = NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        AppError::BadRequest(format!(
            "{name}: give a day (2026-11-22) or a time (2026-11-22T10:00:00Z)"
        ))
    })?;
    let day = if end_of_day {
        day.succ_opt().unwrap_or(day)
    } else {
        day
    };
    Ok(day.and_hms_opt(0, 0, 0).unwrap_or_default())
}

/// Search parameters from a query string (shared with the search page).
pub fn search_params(
    q: String,
    room: Option<i64>,
    sender: Option<i64>,
    from: Option<&str>,
    to: Option<&str>,
    before: Option<i64>,
    limit: Option<usize>,
) -> Result<SearchParams, AppError> {
    let from = from
        .filter(|t| !t.trim().is_empty())
        .map(|t| parse_bound("from", t, false))
        .transpose()?;
    let to = to
        .filter(|t| !t.trim().is_empty())
        .map(|t| parse_bound("to", t, true))
        .transpose()?;
    if let (Some(from), Some(to)) = (from, to)
        && from >= to
    {
        return Err(AppError::BadRequest(
            "from, to: from must be before to".to_owned(),
        ));
    }
    let limit = match limit {
        None => 20,
        Some(n) if (1..=100).contains(&n) => n,
        Some(_) => {
            return Err(AppError::BadRequest(
                "limit: must be between 1 and 100".to_owned(),
            ));
        }
    };
    Ok(SearchParams {
        q,
        room,
        sender,
        from,
        to,
        before,
        limit,
        within: None,
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/search",
    tag = "rooms",
    summary = "Search every room I can read, newest first",
    params(SearchQueryParams),
    responses(
        (status = 200, description = "`{results: [{message, room_name, snippet_html}]}`; `snippet_html` is escaped text with the matches in `<mark>`"),
        (status = 400, description = "No words, or a bad filter", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such room", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn search(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<SearchQueryParams>,
) -> Result<HttpResponse, AppError> {
    let query = query.into_inner();
    let params = search_params(
        query.q,
        query.room,
        query.sender,
        query.from.as_deref(),
        query.to.as_deref(),
        query.before,
        query.limit,
    )?;
    let results = state.chat.search(caller.user_id, params).await?;
    Ok(HttpResponse::Ok().json(json!({ "results": results })))
}

#[utoipa::path(
    get,
    path = "/api/v1/me/export",
    tag = "rooms",
    summary = "Download every message I wrote, as JSON",
    responses((status = 200, description = "`{exported_at, rooms, messages}`"))
)]
async fn export(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, AppError> {
    let export = state.chat.export_mine(caller.user_id).await?;
    Ok(HttpResponse::Ok()
        .insert_header((
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"conclave-messages.json\"",
        ))
        .json(export))
}

#[utoipa::path(
    get,
    path = "/api/v1/rooms/{id}/export",
    tag = "rooms",
    summary = "Download a room's whole history as JSON (room owners)",
    params(("id" = i64, Path)),
    responses(
        (status = 200, description = "`{exported_at, room, members, messages}`, messages oldest first, deleted ones as tombstones"),
        (status = 403, description = "Only the room's owners", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such room", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn export_room(
    state: web::Data<AppState>,
    request: HttpRequest,
    caller: Caller,
    room: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    room_download(
        &state,
        caller.user_id,
        room.into_inner(),
        client_ip(&request),
    )
    .await
}

/// The room's history as a JSON attachment; the API and the room page share it.
pub async fn room_download(
    state: &AppState,
    user_id: i64,
    room_id: i64,
    ip: Option<String>,
) -> Result<HttpResponse, AppError> {
    let export = state.chat.export_room(user_id, room_id, ip).await?;
    Ok(HttpResponse::Ok()
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"conclave-room-{room_id}.json\""),
        ))
        .json(export))
}

/// This module's part of the OpenAPI document (`/api/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    list_rooms,
    create_room,
    get_room,
    update_room,
    delete_room,
    list_members,
    add_member,
    change_member,
    remove_member,
    list_messages,
    post_message,
    edit_message,
    delete_message,
    search,
    export,
    export_room
))]
pub struct ApiDoc;
