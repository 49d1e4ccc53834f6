//! Server-rendered room pages: the room list, a room with its paged history and compose box,
//! and search. Everything works without JavaScript: every action is a plain form post that
//! redirects back (with a notice or the error's message).

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::rooms::{DEFAULT_PAGE, NewRoom, RoomPatch};
use super::{Privacy, RoomAction, RoomKind, RoomRole, Visibility};
use crate::auth::identity::Identity;
use crate::db::DbError;
use crate::error::AppError;
use crate::history::Cursor;
use crate::tenancy::{Authorizer, Role};
use crate::web::pages::{Page, back_to as back, html};
use crate::web::{AppState, client_ip, get, resource};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/rooms").get(rooms_page).post(create_form))
        .service(resource("/rooms/direct").post(direct_form))
        .service(get("/rooms/{id}", room_page))
        .service(get("/rooms/{id}/export", export_download))
        .service(resource("/rooms/{id}/messages").post(post_form))
        .service(
            resource("/rooms/{id}/messages/{msg}/edit")
                .get(edit_page)
                .post(edit_form),
        )
        .service(resource("/rooms/{id}/messages/{msg}/delete").post(delete_form))
        .service(resource("/rooms/{id}/join").post(join_form))
        .service(resource("/rooms/{id}/leave").post(leave_form))
        .service(resource("/rooms/{id}/members").post(invite_form))
        .service(resource("/rooms/{id}/members/{user}/role").post(role_form))
        .service(resource("/rooms/{id}/members/{user}/remove").post(remove_form))
        .service(resource("/rooms/{id}/settings").post(settings_form))
        .service(resource("/rooms/{id}/delete").post(delete_room_form))
        .service(get("/search", search_page));
}

#[derive(Deserialize)]
pub struct Notice {
    notice: Option<String>,
    error: Option<String>,
}

/// `GET /rooms`: my rooms, public rooms I could join, and the forms to start new ones.
async fn rooms_page(
    state: web::Data<AppState>,
    page: Page,
    identity: Identity,
    query: web::Query<Notice>,
) -> Result<HttpResponse, AppError> {
    let user_id = identity.user_id();
    let rooms = state.chat.list(user_id, None).await?;
    let (workspaces, people) = state
        .db
        .run(move |conn| {
            let workspaces = crate::tenancy::tenants_of(conn, user_id)?;
            let mut people = Vec::new();
            for (tenant_id, _, tenant_name, _) in &workspaces {
                for member in crate::tenancy::members::members_of(conn, *tenant_id)? {
                    if member.user_id != user_id {
                        people.push(json!({
                            "tenant_id": tenant_id,
                            "tenant_name": tenant_name,
                            "user_id": member.user_id,
                            "name": member.name,
                            "email": member.email,
                        }));
                    }
                }
            }
            Ok::<_, DbError>((workspaces, people))
        })
        .await?;
    let creatable: Vec<_> = workspaces
        .iter()
        .filter(|(_, _, _, role)| role.parse::<Role>().is_ok_and(Authorizer::may_create_room))
        .map(|(id, _, name, _)| json!({ "id": id, "name": name }))
        .collect();
    let list = |joined: bool| -> Vec<serde_json::Value> {
        rooms
            .iter()
            .filter(|r| r.my_role.is_some() == joined)
            .map(|r| {
                json!({
                    "id": r.room.id,
                    "title": r.title(),
                    "topic": r.room.topic,
                    "direct": r.room.kind == RoomKind::Direct,
                    "visibility": r.room.visibility,
                    "privacy": r.room.privacy,
                    "archived": r.room.archived_at.is_some(),
                    "members": r.member_count,
                    "workspace": r.tenant_name,
                    "role": r.my_role,
                })
            })
            .collect()
    };
    let mut context = page.context(&state);
    context.insert("my_rooms", &list(true));
    context.insert("joinable", &list(false));
    context.insert("creatable", &creatable);
    context.insert("people", &people);
    context.insert("notice", &query.notice);
    context.insert("error", &query.error);
    html(&state, "chat/rooms.html", &context, StatusCode::OK)
}

#[derive(Deserialize)]
pub struct CreateForm {
    tenant_id: Option<i64>,
    name: String,
    #[serde(default)]
    topic: String,
    visibility: String,
    /// Empty: the workspace's default.
    #[serde(default)]
    privacy: String,
}

async fn create_form(
    state: web::Data<AppState>,
    request: HttpRequest,
    identity: Identity,
    form: web::Form<CreateForm>,
) -> Result<HttpResponse, AppError> {
    let form = form.into_inner();
    let outcome = async {
        let visibility: Visibility = form.visibility.parse().map_err(AppError::BadRequest)?;
        let privacy = match form.privacy.trim() {
            "" => None,
            text => Some(text.parse::<Privacy>().map_err(AppError::BadRequest)?),
        };
        state
            .chat
            .create(
                identity.user_id(),
                NewRoom {
                    tenant_id: form.tenant_id,
                    name: form.name,
                    topic: form.topic,
                    visibility,
                    privacy,
                },
                client_ip(&request),
            )
            .await
    }
    .await;
    match outcome {
        Ok(room) => back(&format!("/rooms/{}", room.id), Ok("")),
        Err(e) => back("/rooms", Err(e)),
    }
}

#[derive(Deserialize)]
pub struct DirectForm {
    /// `<tenant id>:<user id>` from the people list.
    with: String,
}

async fn direct_form(
    state: web::Data<AppState>,
    identity: Identity,
    form: web::Form<DirectForm>,
) -> Result<HttpResponse, AppError> {
    let parsed = form
        .with
        .split_once(':')
        .and_then(|(t, u)| Some((t.parse::<i64>().ok()?, u.parse::<i64>().ok()?)));
    let Some((tenant_id, other)) = parsed else {
        return back(
            "/rooms",
            Err(AppError::BadRequest(
                "Choose someone to talk to.".to_owned(),
            )),
        );
    };
    match state
        .chat
        .open_direct(identity.user_id(), Some(tenant_id), other)
        .await
    {
        Ok((room, _)) => back(&format!("/rooms/{}", room.id), Ok("")),
        Err(e) => back("/rooms", Err(e)),
    }
}

#[derive(Deserialize)]
pub struct RoomQuery {
    before: Option<i64>,
    after: Option<i64>,
    reply: Option<i64>,
    notice: Option<String>,
    error: Option<String>,
}

/// `GET /rooms/{id}`: the history (newest page, or `?before=`/`?after=`), the compose box and
/// the members with exactly the controls my role allows.
async fn room_page(
    state: web::Data<AppState>,
    page: Page,
    identity: Identity,
    room: web::Path<i64>,
    query: web::Query<RoomQuery>,
) -> Result<HttpResponse, AppError> {
    let (user_id, room_id) = (identity.user_id(), room.into_inner());
    let cursor = super::api::cursor(query.before, query.after)?;
    let (access, members) = state.chat.members(user_id, room_id).await?;
    // A locked private room shows the unlock form instead of its history.
    let (messages, locked) = match state
        .chat
        .history(user_id, room_id, cursor, DEFAULT_PAGE)
        .await
    {
        Ok(messages) => (messages, false),
        Err(AppError::Coded {
            code: "private_locked",
            ..
        }) => (Vec::new(), true),
        Err(e) => return Err(e),
    };
    let full = messages.len() == DEFAULT_PAGE;
    let (older, newer) = match cursor {
        Cursor::Latest => (full, false),
        Cursor::Before(_) => (full, true),
        Cursor::After(_) => (true, full),
    };
    let first = messages.first().map(|m| m.id);
    let last = messages.last().map(|m| m.id);
    let can_moderate = Authorizer::room(&access, RoomAction::Moderate);
    let replying = match query.reply {
        // A reply to a message that is gone (or never was) is simply not offered.
        Some(id) => match state.chat.message(user_id, room_id, id).await {
            Ok(message) => Some(message).filter(|m| !m.deleted),
            Err(AppError::NotFound(_)) => None,
            Err(e) => return Err(e),
        },
        None => None,
    };
    let views: Vec<_> = messages
        .iter()
        .map(|m| {
            let mine = m.sender.kind == crate::history::MemberKind::User
                && m.sender.id == Some(user_id);
            json!({
                "id": m.id,
                "sender": m.sender.name,
                "at": m.created_at,
                "time": m.created_at.get(..16).unwrap_or_default().replace('T', " "),
                "html": m.html,
                "edited": m.edited,
                "deleted": m.deleted,
                "reply_to": m.reply_to,
                "reply_excerpt": m.reply_to.and_then(|r| messages.iter().find(|x| x.id == r)).and_then(|x| x.body.as_deref()).map(|b| excerpt(b, 80)),
                "can_edit": mine && !m.deleted && Authorizer::room(&access, RoomAction::Post),
                "can_delete": !m.deleted && (mine || can_moderate),
            })
        })
        .collect();
    let tenant_id = access.room.tenant_id;
    let workspace_people = state
        .db
        .run(move |conn| {
            crate::tenancy::members::members_of(conn, tenant_id).map_err(DbError::from)
        })
        .await?;
    let invitable: Vec<_> = workspace_people
        .iter()
        .filter(|p| {
            !members
                .iter()
                .any(|m| m.kind == crate::history::MemberKind::User && m.id == p.user_id)
        })
        .map(|p| json!({ "user_id": p.user_id, "name": p.name, "email": p.email }))
        .collect();
    let grantable: Vec<&str> = RoomRole::ALL
        .into_iter()
        .filter(|r| Authorizer::room_may_grant(&access, *r))
        .map(RoomRole::as_str)
        .collect();
    let member_views: Vec<_> = members
        .iter()
        .map(|m| {
            let me = m.kind == crate::history::MemberKind::User && m.id == user_id;
            let manage = m.kind == crate::history::MemberKind::User
                && !me
                && Authorizer::room_may_manage(&access, m.role);
            json!({
                "id": m.id,
                "name": m.name,
                "kind": m.kind,
                "role": m.role,
                "me": me,
                "can_change": manage,
                "can_remove": manage,
            })
        })
        .collect();
    let title = if access.room.kind == RoomKind::Direct {
        members
            .iter()
            .find(|m| m.id != user_id)
            .map_or_else(|| "Direct conversation".to_owned(), |m| m.name.clone())
    } else {
        access.room.name.clone()
    };
    let can = |action| Authorizer::room(&access, action);
    let mut context = page.context(&state);
    context.insert("room_id", &room_id);
    context.insert("title", &title);
    context.insert("topic", &access.room.topic);
    context.insert("direct", &(access.room.kind == RoomKind::Direct));
    context.insert("visibility", access.room.visibility.as_str());
    context.insert("privacy", access.room.privacy.as_str());
    context.insert("locked", &locked);
    context.insert(
        "private_idle_minutes",
        &(state.chat.personal_keys().idle().as_secs() / 60),
    );
    context.insert("archived", &access.room.archived_at.is_some());
    context.insert("my_role", &access.room_role);
    context.insert("messages", &views);
    context.insert("older", &(older && first.is_some()));
    context.insert("newer", &(newer && last.is_some()));
    context.insert("first_id", &first);
    context.insert("last_id", &last);
    context.insert("members", &member_views);
    context.insert("invitable", &invitable);
    context.insert("grantable", &grantable);
    context.insert("can_post", &can(RoomAction::Post));
    context.insert("can_join", &can(RoomAction::Join));
    context.insert("can_invite", &can(RoomAction::Invite));
    context.insert("can_rename", &can(RoomAction::Rename));
    context.insert("can_archive", &can(RoomAction::Archive));
    context.insert("can_delete", &can(RoomAction::Delete));
    context.insert("can_export", &can(RoomAction::Export));
    context.insert(
        "can_leave",
        &(access.room_role.is_some() && access.room.kind == RoomKind::Room),
    );
    context.insert("idempotency_key", &uuid::Uuid::new_v4().to_string());
    context.insert(
        "replying",
        &replying.map(|m| json!({ "id": m.id, "sender": m.sender.name, "excerpt": m.body.as_deref().map(|b| excerpt(b, 120)) })),
    );
    context.insert("max_bytes", &state.chat.settings().max_message_bytes);
    // The newest page goes live (new messages appear at its end); older pages stay as they are.
    context.insert("live", &(cursor == Cursor::Latest && !locked));
    context.insert("me", &user_id);
    context.insert("notice", &query.notice);
    context.insert("error", &query.error);
    // The assistant: on or off here, and who may switch it (a personal chat has its own page).
    let assistant = state.replies.room_setting(room_id).await?;
    if assistant
        .as_ref()
        .is_some_and(|s| s.mode == crate::assistant::chats::Mode::Chat)
    {
        return Ok(HttpResponse::SeeOther()
            .insert_header((header::LOCATION, format!("/assistant/{room_id}")))
            .finish());
    }
    let catalog = state.assistant.catalog();
    context.insert(
        "assistant_on",
        &assistant.as_ref().is_some_and(|s| s.enabled),
    );
    context.insert(
        "assistant_model",
        &assistant.map(|s| s.model).unwrap_or_default(),
    );
    context.insert("assistant_available", &!catalog.is_empty());
    context.insert("assistant_models", &catalog.models());
    context.insert("bot_name", state.replies.bot_name());
    context.insert(
        "can_switch_assistant",
        &matches!(
            access.room_role,
            Some(RoomRole::Owner | RoomRole::Moderator)
        ),
    );
    html(&state, "chat/room.html", &context, StatusCode::OK)
}

/// The first `chars` characters of a body, on one line.
fn excerpt(body: &str, chars: usize) -> String {
    let flat: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= chars {
        flat
    } else {
        let mut cut: String = flat.chars().take(chars).collect();
        cut.push('…');
        cut
    }
}

#[derive(Deserialize)]
pub struct PostForm {
    body: String,
    idempotency_key: Option<String>,
    reply_to: Option<String>,
}

async fn post_form(
    state: web::Data<AppState>,
    identity: Identity,
    room: web::Path<i64>,
    form: web::Form<PostForm>,
) -> Result<HttpResponse, AppError> {
    let room_id = room.into_inner();
    let form = form.into_inner();
    let reply_to = match form.reply_to.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => match text.parse() {
            Ok(id) => Some(id),
            Err(_) => {
                return back(
                    &format!("/rooms/{room_id}"),
                    Err(AppError::BadRequest(
                        "reply_to: not a message id".to_owned(),
                    )),
                );
            }
        },
    };
    let key = form.idempotency_key.filter(|k| !k.is_empty());
    match state
        .chat
        .post(identity.user_id(), room_id, form.body, reply_to, key)
        .await
    {
        Ok((message, _)) => Ok(HttpResponse::SeeOther()
            .insert_header((
                header::LOCATION,
                format!("/rooms/{room_id}#m{}", message.id),
            ))
            .finish()),
        Err(e) => back(&format!("/rooms/{room_id}"), Err(e)),
    }
}

/// `GET /rooms/{id}/messages/{msg}/edit`: the edit form.
async fn edit_page(
    state: web::Data<AppState>,
    page: Page,
    identity: Identity,
    path: web::Path<(i64, i64)>,
    query: web::Query<Notice>,
) -> Result<HttpResponse, AppError> {
    let (room_id, message_id) = path.into_inner();
    let user_id = identity.user_id();
    let access = state.chat.access(user_id, room_id).await?;
    let message = state.chat.message(user_id, room_id, message_id).await?;
    if message.deleted {
        return Err(AppError::NotFound("That message was deleted.".to_owned()));
    }
    if message.sender.kind != crate::history::MemberKind::User || message.sender.id != Some(user_id)
    {
        return Err(AppError::Forbidden(
            "Only its author can edit a message.".to_owned(),
        ));
    }
    let mut context = page.context(&state);
    context.insert("room_id", &room_id);
    context.insert("room_name", &access.room.name);
    context.insert("message_id", &message_id);
    context.insert("body", &message.body);
    context.insert("error", &query.error);
    html(&state, "chat/edit.html", &context, StatusCode::OK)
}

#[derive(Deserialize)]
pub struct EditForm {
    body: String,
}

async fn edit_form(
    state: web::Data<AppState>,
    identity: Identity,
    path: web::Path<(i64, i64)>,
    form: web::Form<EditForm>,
) -> Result<HttpResponse, AppError> {
    let (room_id, message_id) = path.into_inner();
    match state
        .chat
        .edit(
            identity.user_id(),
            room_id,
            message_id,
            form.into_inner().body,
        )
        .await
    {
        Ok(_) => Ok(HttpResponse::SeeOther()
            .insert_header((header::LOCATION, format!("/rooms/{room_id}#m{message_id}")))
            .finish()),
        Err(e) => back(
            &format!("/rooms/{room_id}/messages/{message_id}/edit"),
            Err(e),
        ),
    }
}

async fn delete_form(
    state: web::Data<AppState>,
    request: HttpRequest,
    identity: Identity,
    path: web::Path<(i64, i64)>,
) -> Result<HttpResponse, AppError> {
    let (room_id, message_id) = path.into_inner();
    let outcome = state
        .chat
        .delete_message(identity.user_id(), room_id, message_id, client_ip(&request))
        .await
        .map(|()| "message_deleted");
    back(&format!("/rooms/{room_id}"), outcome)
}

async fn join_form(
    state: web::Data<AppState>,
    identity: Identity,
    room: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let room_id = room.into_inner();
    let outcome = state
        .chat
        .join(identity.user_id(), room_id)
        .await
        .map(|_| "joined");
    back(&format!("/rooms/{room_id}"), outcome)
}

async fn leave_form(
    state: web::Data<AppState>,
    request: HttpRequest,
    identity: Identity,
    room: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let room_id = room.into_inner();
    let user_id = identity.user_id();
    match state
        .chat
        .remove_member(user_id, room_id, user_id, client_ip(&request))
        .await
    {
        Ok(()) => back("/rooms", Ok("left")),
        Err(e) => back(&format!("/rooms/{room_id}"), Err(e)),
    }
}

#[derive(Deserialize)]
pub struct InviteForm {
    user_id: i64,
    role: Option<String>,
}

async fn invite_form(
    state: web::Data<AppState>,
    request: HttpRequest,
    identity: Identity,
    room: web::Path<i64>,
    form: web::Form<InviteForm>,
) -> Result<HttpResponse, AppError> {
    let room_id = room.into_inner();
    let outcome = async {
        let role = form
            .role
            .as_deref()
            .filter(|r| !r.is_empty())
            .map(str::parse::<RoomRole>)
            .transpose()
            .map_err(AppError::BadRequest)?;
        state
            .chat
            .add_member(
                identity.user_id(),
                room_id,
                form.user_id,
                role,
                client_ip(&request),
            )
            .await
    }
    .await
    .map(|_| "member_added");
    back(&format!("/rooms/{room_id}"), outcome)
}

#[derive(Deserialize)]
pub struct RoleForm {
    role: String,
}

async fn role_form(
    state: web::Data<AppState>,
    request: HttpRequest,
    identity: Identity,
    path: web::Path<(i64, i64)>,
    form: web::Form<RoleForm>,
) -> Result<HttpResponse, AppError> {
    let (room_id, target) = path.into_inner();
    let outcome = match form.role.parse::<RoomRole>() {
        Ok(role) => state
            .chat
            .set_role(
                identity.user_id(),
                room_id,
                target,
                role,
                client_ip(&request),
            )
            .await
            .map(|()| "role_changed"),
        Err(message) => Err(AppError::BadRequest(message)),
    };
    back(&format!("/rooms/{room_id}"), outcome)
}

async fn remove_form(
    state: web::Data<AppState>,
    request: HttpRequest,
    identity: Identity,
    path: web::Path<(i64, i64)>,
) -> Result<HttpResponse, AppError> {
    let (room_id, target) = path.into_inner();
    let outcome = state
        .chat
        .remove_member(identity.user_id(), room_id, target, client_ip(&request))
        .await
        .map(|()| "member_removed");
    back(&format!("/rooms/{room_id}"), outcome)
}

#[derive(Deserialize)]
pub struct SettingsForm {
    name: Option<String>,
    topic: Option<String>,
    archived: Option<String>,
}

async fn settings_form(
    state: web::Data<AppState>,
    request: HttpRequest,
    identity: Identity,
    room: web::Path<i64>,
    form: web::Form<SettingsForm>,
) -> Result<HttpResponse, AppError> {
    let room_id = room.into_inner();
    let form = form.into_inner();
    let archived = form.archived.as_deref().map(|a| a == "true");
    let notice = match archived {
        Some(true) => "archived",
        Some(false) => "unarchived",
        None => "renamed",
    };
    let outcome = state
        .chat
        .update(
            identity.user_id(),
            room_id,
            RoomPatch {
                name: form.name,
                topic: form.topic,
                archived,
                ..RoomPatch::default()
            },
            client_ip(&request),
        )
        .await
        .map(|_| notice);
    back(&format!("/rooms/{room_id}"), outcome)
}

async fn delete_room_form(
    state: web::Data<AppState>,
    request: HttpRequest,
    identity: Identity,
    room: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let room_id = room.into_inner();
    match state
        .chat
        .delete(identity.user_id(), room_id, client_ip(&request))
        .await
    {
        Ok(()) => back("/rooms", Ok("room_deleted")),
        Err(e) => back(&format!("/rooms/{room_id}"), Err(e)),
    }
}

#[derive(Deserialize)]
pub struct SearchForm {
    q: Option<String>,
    room: Option<String>,
    from: Option<String>,
    to: Option<String>,
    before: Option<i64>,
}

/// `GET /search`: the search form, and results with the matches highlighted.
async fn search_page(
    state: web::Data<AppState>,
    page: Page,
    identity: Identity,
    query: web::Query<SearchForm>,
) -> Result<HttpResponse, AppError> {
    let user_id = identity.user_id();
    let query = query.into_inner();
    let rooms = state.chat.readable_rooms(user_id).await?;
    let room = query
        .room
        .as_deref()
        .filter(|r| !r.is_empty())
        .and_then(|r| r.parse::<i64>().ok());
    let q = query.q.clone().unwrap_or_default();
    let (results, error) = if q.trim().is_empty() {
        (Vec::new(), None)
    } else {
        let outcome = match super::api::search_params(
            q.clone(),
            room,
            None,
            query.from.as_deref(),
            query.to.as_deref(),
            query.before,
            Some(20),
        ) {
            Ok(params) => state.chat.search(user_id, params).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(results) => (results, None),
            Err(e @ (AppError::BadRequest(_) | AppError::NotFound(_))) => {
                (Vec::new(), Some(e.to_string()))
            }
            Err(e) => return Err(e),
        }
    };
    let more = results.len() == 20;
    let next_before = results.last().map(|r| r.message.id);
    let results: Vec<_> = results
        .iter()
        .map(|r| {
            json!({
                "room_id": r.message.room_id,
                "room_name": r.room_name,
                "message_id": r.message.id,
                "sender": r.message.sender.name,
                "time": r.message.created_at.get(..16).unwrap_or_default().replace('T', " "),
                "snippet_html": r.snippet_html,
            })
        })
        .collect();
    let rooms: Vec<_> = rooms
        .iter()
        .map(|(id, name)| json!({ "id": id, "name": name }))
        .collect();
    let mut context = page.context(&state);
    context.insert("q", &q);
    context.insert("room", &room);
    let (from, to) = (
        query.from.clone().unwrap_or_default(),
        query.to.clone().unwrap_or_default(),
    );
    context.insert("from", &from);
    context.insert("to", &to);
    context.insert("rooms", &rooms);
    context.insert("results", &results);
    context.insert("searched", &!q.trim().is_empty());
    context.insert("error", &error);
    let next_url = next_before.filter(|_| more).map(|before| {
        let mut url = url::form_urlencoded::Serializer::new(String::new());
        url.append_pair("q", &q);
        if let Some(room) = room {
            url.append_pair("room", &room.to_string());
        }
        for (name, value) in [("from", &from), ("to", &to)] {
            if !value.is_empty() {
                url.append_pair(name, value);
            }
        }
        url.append_pair("before", &before.to_string());
        format!("/search?{}", url.finish())
    });
    context.insert("next_url", &next_url);
    html(&state, "chat/search.html", &context, StatusCode::OK)
}

/// `GET /rooms/{id}/export`: the whole history as a JSON download (room owners).
async fn export_download(
    state: web::Data<AppState>,
    request: HttpRequest,
    identity: Identity,
    room: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    super::api::room_download(
        &state,
        identity.user_id(),
        room.into_inner(),
        client_ip(&request),
    )
    .await
}
