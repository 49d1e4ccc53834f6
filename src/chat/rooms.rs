//! Room and message operations shared by the JSON API and the pages. Every operation takes
//! the caller, asks the [`Authorizer`] and only then touches the database or the history.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use serde_json::json;

use super::hub::{Frame, Hub, Outbound};
use super::{
    Privacy, Room, RoomAccess, RoomAction, RoomKind, RoomRole, Visibility, markdown, protocol,
};
use crate::audit::{self, AuditEvent};
use crate::auth::personal_keys::PersonalKeys;
use crate::db::{Db, DbConnection, DbError, write_transaction};
use crate::error::AppError;
use crate::history::{
    Cursor, HistoryStore, MemberKind, MemoryHistoryStore, NewMessage, SearchQuery, Sender,
    StoredMessage, words,
};
use crate::schema::{memberships, room_members, rooms, tenants, users};
use crate::settings::ChatSettings;
use crate::tenancy::{Authorizer, Role};

/// Rooms and messages for the API and the pages.
#[derive(Clone)]
pub struct ChatService {
    db: Db,
    /// `standard` and `private` rooms.
    history: Arc<dyn HistoryStore>,
    /// `ephemeral` rooms.
    ephemeral: Arc<MemoryHistoryStore>,
    personal: PersonalKeys,
    settings: ChatSettings,
    /// This node's realtime connections: every stored change is published here.
    hub: Hub,
    /// Told of every new message posted by a person (the assistant listens), set once at
    /// start-up: the assistant is built after the chat it answers in.
    listener: Arc<std::sync::OnceLock<Arc<dyn PostListener>>>,
    /// Runs slash commands posted in rooms (`/cmd` for devices), set once at start-up.
    slash: Arc<std::sync::OnceLock<Arc<dyn SlashCommands>>>,
}

/// Commands written as messages (`/cmd …`). A message this handles is checked before it is
/// stored (a bad one is refused with the check's error, nothing stored) and run after it is
/// stored and published, with the stored message (the answer replies to it).
#[async_trait::async_trait]
pub trait SlashCommands: Send + Sync {
    /// Whether `body` is a command this runs.
    fn handles(&self, body: &str) -> bool;
    /// Refuses a command that cannot run: unknown device, bad syntax, no permission.
    async fn check(&self, room: &Room, author: i64, body: &str) -> Result<(), AppError>;
    /// Runs a checked command; `author` is the person it runs for.
    async fn run(&self, room: &Room, author: i64, message: &MessageView);
}

/// Hears about messages people post, after they are stored and published. Must not block:
/// whatever it does with them happens in its own task.
pub trait PostListener: Send + Sync {
    fn posted(&self, room: &Room, author: i64, message: &MessageView);
}

/// A room as listed for someone: their role in it (if a member) and, for a direct room, who
/// the other person is.
#[derive(Debug, Clone, Serialize)]
pub struct RoomSummary {
    #[serde(flatten)]
    pub room: Room,
    pub tenant_name: String,
    pub my_role: Option<RoomRole>,
    pub member_count: i64,
    /// For direct rooms: the other person's display name.
    pub direct_with: Option<String>,
}

impl RoomSummary {
    /// What to call the room: its name, or for a direct room the other person.
    pub fn title(&self) -> String {
        match (&self.room.kind, &self.direct_with) {
            (RoomKind::Direct, Some(other)) => other.clone(),
            _ => self.room.name.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RoomMember {
    pub kind: MemberKind,
    pub id: i64,
    pub name: String,
    pub role: RoomRole,
    #[serde(serialize_with = "crate::time::serialize")]
    pub joined_at: NaiveDateTime,
}

#[derive(Debug, Clone, Serialize)]
pub struct MessageSender {
    pub kind: MemberKind,
    pub id: Option<i64>,
    pub name: String,
}

/// A message as the API and pages show it.
#[derive(Debug, Clone, Serialize)]
pub struct MessageView {
    pub id: i64,
    pub room_id: i64,
    pub sender: MessageSender,
    /// The Markdown source; `null` once deleted.
    pub body: Option<String>,
    /// The body rendered to safe HTML; `null` once deleted.
    pub html: Option<String>,
    pub reply_to: Option<i64>,
    pub created_at: String,
    pub edited_at: Option<String>,
    pub edited: bool,
    pub deleted: bool,
}

/// A search result.
#[derive(Debug, Clone, Serialize)]
pub struct SearchHit {
    pub message: MessageView,
    pub room_name: String,
    /// Escaped text around the first match, the matching words in `<mark>`.
    pub snippet_html: String,
}

pub struct NewRoom {
    pub tenant_id: Option<i64>,
    pub name: String,
    pub topic: String,
    pub visibility: Visibility,
    pub privacy: Option<Privacy>,
}

#[derive(Default)]
pub struct RoomPatch {
    pub name: Option<String>,
    pub topic: Option<String>,
    pub archived: Option<bool>,
    /// `Some(None)` removes the room's own retention (the workspace's applies).
    pub retention_days: Option<Option<i32>>,
    pub legal_hold: Option<bool>,
}

pub struct SearchParams {
    pub q: String,
    pub room: Option<i64>,
    pub sender: Option<i64>,
    pub from: Option<NaiveDateTime>,
    pub to: Option<NaiveDateTime>,
    pub before: Option<i64>,
    pub limit: usize,
    /// Only these rooms (e.g. one's assistant chats); `None`: every readable room.
    pub within: Option<Vec<i64>>,
}

pub const MAX_PAGE: usize = 200;
pub const DEFAULT_PAGE: usize = 50;
const MAX_IDEMPOTENCY_KEY: usize = 200;

type RoomRow = (
    i64,
    i64,
    String,
    String,
    String,
    String,
    String,
    Option<i32>,
    bool,
    Option<NaiveDateTime>,
    NaiveDateTime,
    NaiveDateTime,
);

macro_rules! room_columns {
    () => {
        (
            rooms::id,
            rooms::tenant_id,
            rooms::kind,
            rooms::name,
            rooms::topic,
            rooms::visibility,
            rooms::privacy,
            rooms::retention_days,
            rooms::legal_hold,
            rooms::archived_at,
            rooms::created_at,
            rooms::updated_at,
        )
    };
}

fn room_of(row: RoomRow) -> Room {
    let (
        id,
        tenant_id,
        kind,
        name,
        topic,
        visibility,
        privacy,
        retention_days,
        legal_hold,
        archived_at,
        created_at,
        updated_at,
    ) = row;
    Room {
        id,
        tenant_id,
        kind: if kind == "direct" {
            RoomKind::Direct
        } else {
            RoomKind::Room
        },
        name,
        topic,
        visibility: visibility.parse().unwrap_or(Visibility::Private),
        privacy: privacy.parse().unwrap_or(Privacy::Standard),
        retention_days,
        legal_hold,
        archived_at,
        created_at,
        updated_at,
    }
}

const NO_ROOM: &str = "No such room.";

fn not_found() -> AppError {
    AppError::NotFound(NO_ROOM.to_owned())
}

fn room_event(
    name: &'static str,
    actor: i64,
    room: &Room,
    ip: Option<String>,
    details: serde_json::Value,
) -> AuditEvent {
    AuditEvent {
        event: name,
        actor_user_id: Some(actor),
        tenant_id: Some(room.tenant_id),
        subject: Some(format!("room:{}", room.id)),
        ip,
        details,
        ..AuditEvent::default()
    }
}

/// `user_id`'s view of a room: 404 unless they may read it (a private room they are not in
/// does not exist for them), except that workspace admins see it for `Delete`/`Archive`.
pub fn access_in(
    conn: &mut DbConnection,
    room_id: i64,
    user_id: i64,
) -> Result<RoomAccess, AppError> {
    // One query for the room and both roles: every room request starts here.
    let row: Option<(RoomRow, Option<String>, Option<String>)> = rooms::table
        .left_join(
            memberships::table.on(memberships::tenant_id
                .eq(rooms::tenant_id)
                .and(memberships::user_id.eq(user_id))),
        )
        .left_join(
            room_members::table.on(room_members::room_id
                .eq(rooms::id)
                .and(room_members::member_kind.eq(MemberKind::User.as_str()))
                .and(room_members::member_id.eq(user_id))),
        )
        .filter(rooms::id.eq(room_id))
        .select((
            room_columns!(),
            memberships::role.nullable(),
            room_members::role.nullable(),
        ))
        .first(conn)
        .optional()?;
    let (row, tenant_role, room_role) = row.ok_or_else(not_found)?;
    let room = room_of(row);
    let tenant_role: Role = tenant_role
        .and_then(|r| r.parse().ok())
        .ok_or_else(not_found)?;
    let room_role = room_role.and_then(|r| r.parse().ok());
    Ok(RoomAccess {
        room,
        tenant_role,
        room_role,
    })
}

fn member_role(
    conn: &mut DbConnection,
    room_id: i64,
    kind: MemberKind,
    id: i64,
) -> QueryResult<Option<RoomRole>> {
    let role: Option<String> = room_members::table
        .find((room_id, kind.as_str(), id))
        .select(room_members::role)
        .first(conn)
        .optional()?;
    Ok(role.and_then(|r| r.parse().ok()))
}

/// The access, or 404 when the caller may not even read the room, or 403 when they may read
/// it but not do `action`.
fn require(
    conn: &mut DbConnection,
    room_id: i64,
    user_id: i64,
    action: RoomAction,
) -> Result<RoomAccess, AppError> {
    let access = access_in(conn, room_id, user_id)?;
    if Authorizer::room(&access, action) {
        Ok(access)
    } else if Authorizer::room(&access, RoomAction::Read) {
        Err(AppError::Forbidden(forbidden_reason(&access, action)))
    } else {
        Err(not_found())
    }
}

fn forbidden_reason(access: &RoomAccess, action: RoomAction) -> String {
    if access.room.archived_at.is_some()
        && matches!(
            action,
            RoomAction::Post | RoomAction::Invite | RoomAction::Rename | RoomAction::Join
        )
    {
        return "The room is archived: it is read-only until it is unarchived.".to_owned();
    }
    if action == RoomAction::Invite && access.room.privacy == Privacy::Private {
        return "A private room is personal: nobody else can be added.".to_owned();
    }
    let role = access
        .room_role
        .map_or("not a member".to_owned(), |r| format!("{r}"));
    let what = match action {
        RoomAction::Read => "read this room",
        RoomAction::Join => "join this room",
        RoomAction::Post => "post in this room",
        RoomAction::Invite => "add people to this room",
        RoomAction::Rename => "rename this room",
        RoomAction::Archive => "archive this room",
        RoomAction::Delete => "delete this room",
        RoomAction::Moderate => "delete other people's messages",
        RoomAction::SetRetention => "change this room's retention",
        RoomAction::LegalHold => "change the legal hold",
        RoomAction::Export => "download this room's whole history",
    };
    format!("Your role ({role}) cannot {what}.")
}

fn check_name(settings: &ChatSettings, name: &str) -> Result<String, AppError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(AppError::BadRequest("name: must not be empty".to_owned()));
    }
    if name.chars().count() > settings.max_name_chars {
        return Err(AppError::BadRequest(format!(
            "name: must be at most {} characters",
            settings.max_name_chars
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(AppError::BadRequest(
            "name: must not contain control characters".to_owned(),
        ));
    }
    Ok(name.to_owned())
}

fn check_topic(settings: &ChatSettings, topic: &str) -> Result<String, AppError> {
    let topic = topic.trim();
    if topic.chars().count() > settings.max_topic_chars {
        return Err(AppError::BadRequest(format!(
            "topic: must be at most {} characters",
            settings.max_topic_chars
        )));
    }
    Ok(topic.to_owned())
}

fn check_body(settings: &ChatSettings, body: &str) -> Result<(), AppError> {
    if body.trim().is_empty() {
        return Err(AppError::BadRequest("body: must not be empty".to_owned()));
    }
    if body.len() > settings.max_message_bytes {
        return Err(AppError::PayloadTooLarge(format!(
            "body: must be at most {} bytes, got {}",
            settings.max_message_bytes,
            body.len()
        )));
    }
    Ok(())
}

pub(crate) fn check_retention(days: Option<i32>) -> Result<(), AppError> {
    match days {
        Some(d) if !(1..=36_500).contains(&d) => Err(AppError::BadRequest(
            "retention_days: must be between 1 and 36500, or null".to_owned(),
        )),
        _ => Ok(()),
    }
}

/// Display names of the given users (absent ones are simply missing).
/// `text` cut to at most `max` bytes, at a character boundary.
fn cut_to_bytes(mut text: String, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

/// Device names by id.
fn device_names_of(conn: &mut DbConnection, ids: Vec<i64>) -> QueryResult<HashMap<i64, String>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(crate::schema::devices::table
        .filter(crate::schema::devices::id.eq_any(ids))
        .select((crate::schema::devices::id, crate::schema::devices::name))
        .load::<(i64, String)>(conn)?
        .into_iter()
        .collect())
}

fn names_of(conn: &mut DbConnection, ids: Vec<i64>) -> QueryResult<HashMap<i64, String>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(users::table
        .filter(users::id.eq_any(ids))
        .select((users::id, users::display_name))
        .load::<(i64, String)>(conn)?
        .into_iter()
        .collect())
}

impl ChatService {
    pub fn new(
        db: Db,
        history: Arc<dyn HistoryStore>,
        ephemeral: Arc<MemoryHistoryStore>,
        personal: PersonalKeys,
        settings: ChatSettings,
        hub: Hub,
    ) -> Self {
        Self {
            db,
            history,
            ephemeral,
            personal,
            settings,
            hub,
            listener: Arc::new(std::sync::OnceLock::new()),
            slash: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// Sets who runs slash commands (once; later calls are ignored).
    pub fn set_slash_commands(&self, slash: Arc<dyn SlashCommands>) {
        let _ = self.slash.set(slash);
    }

    /// Sets who hears about new messages (once; later calls are ignored).
    pub fn set_post_listener(&self, listener: Arc<dyn PostListener>) {
        let _ = self.listener.set(listener);
    }

    /// This node's realtime connections.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Announces an edited message to the room's live connections.
    pub fn publish_edited(&self, view: &MessageView) {
        self.hub
            .publish_frame(view.room_id, protocol::message_edited(view).into());
    }

    /// A stored message as every reader sees it, for relaying another node's change; `None`
    /// when this node cannot read it (gone, ephemeral rooms live on their own node, a private
    /// room whose owner has not unlocked it here).
    pub async fn stored_view(
        &self,
        room_id: i64,
        message_id: i64,
    ) -> Result<Option<MessageView>, AppError> {
        let privacy: Option<String> = self
            .db
            .run(move |conn| {
                rooms::table
                    .find(room_id)
                    .select(rooms::privacy)
                    .first(conn)
                    .optional()
                    .map_err(DbError::from)
            })
            .await?;
        if privacy.is_none_or(|p| p == Privacy::Ephemeral.as_str()) {
            return Ok(None);
        }
        match self.history.get(room_id, message_id).await {
            Ok(Some(message)) => Ok(Some(self.view(message).await?)),
            Ok(None) | Err(crate::history::HistoryError::Locked(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Announces a stored new message to the room's live connections.
    pub fn publish_new(&self, view: &MessageView) {
        self.hub.publish(
            view.room_id,
            Outbound::Frame(Arc::new(Frame {
                room: view.room_id,
                new_message: Some(view.id),
                json: protocol::message(view, false).into(),
            })),
        );
    }

    /// Where `room`'s messages live — for `user_id`, whose personal key must be unlocked when
    /// the room is private (a private room is personal: the reader is its owner). Checked
    /// here as well as by the store, so an empty private room shows as locked too.
    fn store(&self, room: &Room, user_id: i64) -> Result<&dyn HistoryStore, AppError> {
        if room.privacy == Privacy::Private && !self.personal.is_unlocked(user_id) {
            return Err(crate::history::HistoryError::Locked(room.id).into());
        }
        Ok(match room.privacy {
            Privacy::Ephemeral => self.ephemeral.as_ref(),
            Privacy::Standard | Privacy::Private => self.history.as_ref(),
        })
    }

    /// The in-memory history of ephemeral rooms (retention reaches it through here).
    pub fn ephemeral(&self) -> &Arc<MemoryHistoryStore> {
        &self.ephemeral
    }

    pub fn personal_keys(&self) -> &PersonalKeys {
        &self.personal
    }

    pub fn settings(&self) -> &ChatSettings {
        &self.settings
    }

    pub async fn access(&self, user_id: i64, room_id: i64) -> Result<RoomAccess, AppError> {
        let access = self
            .db
            .run(move |conn| access_in(conn, room_id, user_id))
            .await?;
        if !Authorizer::room(&access, RoomAction::Read) {
            return Err(not_found());
        }
        Ok(access)
    }

    /// Rooms `user_id` is in, and public rooms of their workspaces they could join.
    pub async fn list(
        &self,
        user_id: i64,
        tenant: Option<i64>,
    ) -> Result<Vec<RoomSummary>, AppError> {
        self.db
            .run(move |conn| {
                let readable: Vec<i64> = readable_in(conn, user_id, tenant)?
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect();
                // Personal assistant chats have their own list (the assistant's page).
                let chats = crate::schema::assistant_rooms::table
                    .filter(crate::schema::assistant_rooms::mode.eq("chat"))
                    .select(crate::schema::assistant_rooms::room_id);
                let query = rooms::table
                    .inner_join(tenants::table)
                    .filter(rooms::id.eq_any(readable))
                    .filter(diesel::dsl::not(rooms::id.eq_any(chats)))
                    .select((room_columns!(), tenants::name))
                    .order((rooms::archived_at.is_not_null(), rooms::name, rooms::id));
                let rows: Vec<(RoomRow, String)> = query.load(conn)?;
                let ids: Vec<i64> = rows.iter().map(|(r, _)| r.0).collect();
                let members: Vec<(i64, String, i64, String)> = room_members::table
                    .filter(room_members::room_id.eq_any(&ids))
                    .select((
                        room_members::room_id,
                        room_members::member_kind,
                        room_members::member_id,
                        room_members::role,
                    ))
                    .load(conn)?;
                let direct_others: Vec<i64> = members
                    .iter()
                    .filter(|(_, kind, id, _)| kind == "user" && *id != user_id)
                    .map(|(_, _, id, _)| *id)
                    .collect();
                let names = names_of(conn, direct_others)?;
                Ok::<_, AppError>(
                    rows.into_iter()
                        .map(|(row, tenant_name)| {
                            let room = room_of(row);
                            let in_room: Vec<_> =
                                members.iter().filter(|m| m.0 == room.id).collect();
                            let my_role = in_room
                                .iter()
                                .find(|m| m.1 == "user" && m.2 == user_id)
                                .and_then(|m| m.3.parse().ok());
                            let direct_with = (room.kind == RoomKind::Direct)
                                .then(|| {
                                    in_room
                                        .iter()
                                        .find(|m| m.1 == "user" && m.2 != user_id)
                                        .and_then(|m| names.get(&m.2).cloned())
                                })
                                .flatten();
                            RoomSummary {
                                member_count: in_room.len() as i64,
                                room,
                                tenant_name,
                                my_role,
                                direct_with,
                            }
                        })
                        .collect(),
                )
            })
            .await
    }

    /// The workspace to use when the caller names none: their only one, else the default.
    fn pick_tenant(
        conn: &mut DbConnection,
        user_id: i64,
        tenant: Option<i64>,
    ) -> Result<(i64, Role), AppError> {
        if let Some(tenant_id) = tenant {
            let role = crate::tenancy::role_of(conn, tenant_id, user_id)?
                .ok_or_else(|| AppError::NotFound("No such workspace.".to_owned()))?;
            return Ok((tenant_id, role));
        }
        let mine = crate::tenancy::tenants_of(conn, user_id)?;
        let (tenant_id, _, _, role) = mine.first().ok_or_else(|| {
            AppError::Forbidden("You are not a member of any workspace.".to_owned())
        })?;
        let role: Role = role.parse().map_err(AppError::BadRequest)?;
        Ok((*tenant_id, role))
    }

    pub async fn create(
        &self,
        user_id: i64,
        new: NewRoom,
        ip: Option<String>,
    ) -> Result<Room, AppError> {
        let name = check_name(&self.settings, &new.name)?;
        let topic = check_topic(&self.settings, &new.topic)?;
        let room = self
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| {
                    let (tenant_id, role) = Self::pick_tenant(tx, user_id, new.tenant_id)?;
                    if !Authorizer::may_create_room(role) {
                        return Err(AppError::Forbidden(format!(
                            "Your role ({role}) cannot create rooms in this workspace."
                        )));
                    }
                    let privacy = match new.privacy {
                        Some(Privacy::Private) if new.visibility == Visibility::Public => {
                            return Err(AppError::BadRequest(
                                "privacy: private rooms are personal and cannot be public; \
                                 use standard or ephemeral"
                                    .to_owned(),
                            ));
                        }
                        Some(privacy) => privacy,
                        None => match tenant_privacy(tx, tenant_id)? {
                            // The workspace's default applies where it can: a public room is
                            // shared by definition, so it is never private.
                            Privacy::Private if new.visibility == Visibility::Public => {
                                Privacy::Standard
                            }
                            privacy => privacy,
                        },
                    };
                    let now = Utc::now().naive_utc();
                    let id: i64 = diesel::insert_into(rooms::table)
                        .values((
                            rooms::tenant_id.eq(tenant_id),
                            rooms::kind.eq("room"),
                            rooms::name.eq(&name),
                            rooms::topic.eq(&topic),
                            rooms::visibility.eq(new.visibility.as_str()),
                            rooms::privacy.eq(privacy.as_str()),
                            rooms::created_by.eq(user_id),
                            rooms::created_at.eq(now),
                            rooms::updated_at.eq(now),
                        ))
                        .returning(rooms::id)
                        .get_result(tx)?;
                    add_member_row(tx, id, MemberKind::User, user_id, RoomRole::Owner, now)?;
                    let access = access_in(tx, id, user_id)?;
                    audit::record(
                        tx,
                        &room_event(
                            "room.created",
                            user_id,
                            &access.room,
                            ip,
                            json!({ "visibility": new.visibility.as_str() }),
                        ),
                        now,
                    )?;
                    Ok(access.room)
                })
            })
            .await?;
        Ok(room)
    }

    /// The direct room between the caller and `other` (made on first use); `true` when made.
    pub async fn open_direct(
        &self,
        user_id: i64,
        tenant: Option<i64>,
        other: i64,
    ) -> Result<(Room, bool), AppError> {
        if other == user_id {
            return Err(AppError::BadRequest(
                "direct_with: choose someone other than yourself".to_owned(),
            ));
        }
        self.db
            .run(move |conn| {
                write_transaction(conn, |tx| {
                    let (tenant_id, _) = Self::pick_tenant(tx, user_id, tenant)?;
                    if crate::tenancy::role_of(tx, tenant_id, other)?.is_none() {
                        return Err(AppError::NotFound(
                            "direct_with: no such member in this workspace".to_owned(),
                        ));
                    }
                    let key = format!("{tenant_id}:{}:{}", user_id.min(other), user_id.max(other));
                    let existing: Option<i64> = rooms::table
                        .filter(rooms::direct_key.eq(&key))
                        .select(rooms::id)
                        .first(tx)
                        .optional()?;
                    if let Some(id) = existing {
                        return Ok((access_in(tx, id, user_id)?.room, false));
                    }
                    // Private rooms are personal; a conversation of two is ephemeral when the
                    // workspace says so, standard otherwise.
                    let privacy = match tenant_privacy(tx, tenant_id)? {
                        Privacy::Ephemeral => Privacy::Ephemeral,
                        Privacy::Standard | Privacy::Private => Privacy::Standard,
                    };
                    let now = Utc::now().naive_utc();
                    let id: i64 = diesel::insert_into(rooms::table)
                        .values((
                            rooms::tenant_id.eq(tenant_id),
                            rooms::kind.eq("direct"),
                            rooms::name.eq(""),
                            rooms::visibility.eq("private"),
                            rooms::privacy.eq(privacy.as_str()),
                            rooms::direct_key.eq(&key),
                            rooms::created_by.eq(user_id),
                            rooms::created_at.eq(now),
                            rooms::updated_at.eq(now),
                        ))
                        .returning(rooms::id)
                        .get_result(tx)?;
                    for person in [user_id, other] {
                        add_member_row(tx, id, MemberKind::User, person, RoomRole::Member, now)?;
                    }
                    Ok((access_in(tx, id, user_id)?.room, true))
                })
            })
            .await
    }

    pub async fn update(
        &self,
        user_id: i64,
        room_id: i64,
        patch: RoomPatch,
        ip: Option<String>,
    ) -> Result<Room, AppError> {
        let name = patch
            .name
            .as_deref()
            .map(|n| check_name(&self.settings, n))
            .transpose()?;
        let topic = patch
            .topic
            .as_deref()
            .map(|t| check_topic(&self.settings, t))
            .transpose()?;
        if let Some(days) = patch.retention_days {
            check_retention(days)?;
        }
        self.db
            .run(move |conn| {
                write_transaction(conn, |tx| {
                    let access = access_in(tx, room_id, user_id)?;
                    let mut wanted = Vec::new();
                    if name.is_some() || topic.is_some() {
                        wanted.push(RoomAction::Rename);
                    }
                    if patch.archived.is_some() {
                        wanted.push(RoomAction::Archive);
                    }
                    if patch.retention_days.is_some() {
                        wanted.push(RoomAction::SetRetention);
                    }
                    if patch.legal_hold.is_some() {
                        wanted.push(RoomAction::LegalHold);
                    }
                    let readable = Authorizer::room(&access, RoomAction::Read);
                    for action in &wanted {
                        if !Authorizer::room(&access, *action) {
                            // Unarchiving must be possible on an archived room.
                            return Err(if readable {
                                AppError::Forbidden(forbidden_reason(&access, *action))
                            } else {
                                not_found()
                            });
                        }
                    }
                    let now = Utc::now().naive_utc();
                    let target = rooms::table.find(room_id);
                    if let Some(name) = &name {
                        diesel::update(target)
                            .set(rooms::name.eq(name))
                            .execute(tx)?;
                    }
                    if let Some(topic) = &topic {
                        diesel::update(target)
                            .set(rooms::topic.eq(topic))
                            .execute(tx)?;
                    }
                    if let Some(archived) = patch.archived
                        && archived != access.room.archived_at.is_some()
                    {
                        diesel::update(target)
                            .set(rooms::archived_at.eq(archived.then_some(now)))
                            .execute(tx)?;
                        let event = if archived {
                            "room.archived"
                        } else {
                            "room.unarchived"
                        };
                        audit::record(
                            tx,
                            &room_event(event, user_id, &access.room, ip.clone(), json!({})),
                            now,
                        )?;
                    }
                    if let Some(days) = patch.retention_days {
                        diesel::update(target)
                            .set(rooms::retention_days.eq(days))
                            .execute(tx)?;
                        audit::record(
                            tx,
                            &room_event(
                                "room.retention_changed",
                                user_id,
                                &access.room,
                                ip.clone(),
                                json!({ "retention_days": days }),
                            ),
                            now,
                        )?;
                    }
                    if let Some(hold) = patch.legal_hold {
                        diesel::update(target)
                            .set(rooms::legal_hold.eq(hold))
                            .execute(tx)?;
                        audit::record(
                            tx,
                            &room_event(
                                "room.legal_hold_changed",
                                user_id,
                                &access.room,
                                ip.clone(),
                                json!({ "legal_hold": hold }),
                            ),
                            now,
                        )?;
                    }
                    diesel::update(target)
                        .set(rooms::updated_at.eq(now))
                        .execute(tx)?;
                    Ok(access_in(tx, room_id, user_id)?.room)
                })
            })
            .await
    }

    /// Deletes the room with its messages, index entries and data key.
    pub async fn delete(
        &self,
        user_id: i64,
        room_id: i64,
        ip: Option<String>,
    ) -> Result<(), AppError> {
        self.db
            .run(move |conn| {
                write_transaction(conn, |tx| {
                    let access = require(tx, room_id, user_id, RoomAction::Delete)?;
                    // Explicitly, not only by cascade: SQLite enforces foreign keys only when
                    // the connection enables them, and deletion must be real.
                    delete_room_rows(tx, room_id)?;
                    audit::record(
                        tx,
                        &room_event(
                            "room.deleted",
                            user_id,
                            &access.room,
                            ip,
                            json!({ "name": access.room.name }),
                        ),
                        Utc::now().naive_utc(),
                    )?;
                    Ok::<_, AppError>(())
                })
            })
            .await?;
        self.ephemeral.forget(room_id);
        self.hub.recheck_all(room_id);
        Ok(())
    }

    pub async fn members(
        &self,
        user_id: i64,
        room_id: i64,
    ) -> Result<(RoomAccess, Vec<RoomMember>), AppError> {
        self.db
            .run(move |conn| {
                let access = require(conn, room_id, user_id, RoomAction::Read)?;
                let rows: Vec<(String, i64, String, NaiveDateTime)> = room_members::table
                    .filter(room_members::room_id.eq(room_id))
                    .order((room_members::joined_at, room_members::member_id))
                    .select((
                        room_members::member_kind,
                        room_members::member_id,
                        room_members::role,
                        room_members::joined_at,
                    ))
                    .load(conn)?;
                let user_ids = rows.iter().filter(|r| r.0 == "user").map(|r| r.1).collect();
                let names = names_of(conn, user_ids)?;
                let device_ids = rows
                    .iter()
                    .filter(|r| r.0 == "device")
                    .map(|r| r.1)
                    .collect();
                let device_names = device_names_of(conn, device_ids)?;
                let members = rows
                    .into_iter()
                    .filter_map(|(kind, id, role, joined_at)| {
                        let kind = MemberKind::parse(&kind)?;
                        let name = match kind {
                            MemberKind::User => names.get(&id).cloned()?,
                            MemberKind::Device => device_names.get(&id).cloned()?,
                            MemberKind::Assistant => "Assistant".to_owned(),
                        };
                        Some(RoomMember {
                            kind,
                            id,
                            name,
                            role: role.parse().ok()?,
                            joined_at,
                        })
                    })
                    .collect();
                Ok::<_, AppError>((access, members))
            })
            .await
    }

    /// Joins a public room (members of the workspace only).
    pub async fn join(&self, user_id: i64, room_id: i64) -> Result<RoomRole, AppError> {
        self.db
            .run(move |conn| {
                write_transaction(conn, |tx| {
                    let access = access_in(tx, room_id, user_id)?;
                    if let Some(role) = access.room_role {
                        return Ok(role);
                    }
                    if !Authorizer::room(&access, RoomAction::Join) {
                        return Err(if Authorizer::room(&access, RoomAction::Read) {
                            AppError::Forbidden(forbidden_reason(&access, RoomAction::Join))
                        } else {
                            not_found()
                        });
                    }
                    let role = Authorizer::default_room_role(access.tenant_role);
                    add_member_row(
                        tx,
                        room_id,
                        MemberKind::User,
                        user_id,
                        role,
                        Utc::now().naive_utc(),
                    )?;
                    Ok(role)
                })
            })
            .await
    }

    /// Adds a workspace member to the room (invite). Without a role: the default for their
    /// workspace role.
    pub async fn add_member(
        &self,
        actor: i64,
        room_id: i64,
        target: i64,
        role: Option<RoomRole>,
        ip: Option<String>,
    ) -> Result<RoomRole, AppError> {
        self.db
            .run(move |conn| {
                write_transaction(conn, |tx| {
                    let access = require(tx, room_id, actor, RoomAction::Invite)?;
                    let Some(target_tenant_role) =
                        crate::tenancy::role_of(tx, access.room.tenant_id, target)?
                    else {
                        return Err(AppError::NotFound(
                            "user_id: no such member in this room's workspace".to_owned(),
                        ));
                    };
                    if member_role(tx, room_id, MemberKind::User, target)?.is_some() {
                        return Err(AppError::Conflict(
                            "They are already a member of this room.".to_owned(),
                        ));
                    }
                    let role = match role {
                        Some(role) if !Authorizer::room_may_grant(&access, role) => {
                            return Err(AppError::Forbidden(format!(
                                "You cannot give a room role ({role}) above your own."
                            )));
                        }
                        Some(role) => role,
                        None => Authorizer::default_room_role(target_tenant_role),
                    };
                    let now = Utc::now().naive_utc();
                    add_member_row(tx, room_id, MemberKind::User, target, role, now)?;
                    audit::record(
                        tx,
                        &room_event(
                            "room.member_added",
                            actor,
                            &access.room,
                            ip,
                            json!({ "user_id": target, "role": role.as_str() }),
                        ),
                        now,
                    )?;
                    Ok(role)
                })
            })
            .await
    }

    /// Changes a member's room role.
    pub async fn set_role(
        &self,
        actor: i64,
        room_id: i64,
        target: i64,
        role: RoomRole,
        ip: Option<String>,
    ) -> Result<(), AppError> {
        self.db
            .run(move |conn| {
                write_transaction(conn, |tx| {
                    let access = require(tx, room_id, actor, RoomAction::Read)?;
                    let current = member_role(tx, room_id, MemberKind::User, target)?
                        .ok_or_else(|| {
                            AppError::NotFound("No such member in this room.".to_owned())
                        })?;
                    if !Authorizer::room_may_manage(&access, current)
                        || !Authorizer::room_may_grant(&access, role)
                    {
                        return Err(AppError::Forbidden(format!(
                            "Your room role ({}) cannot make a {current} {role}.",
                            access
                                .room_role
                                .map_or("not a member".to_owned(), |r| r.to_string())
                        )));
                    }
                    if current == RoomRole::Owner && role != RoomRole::Owner {
                        last_owner_check(tx, room_id)?;
                    }
                    diesel::update(room_members::table.find((room_id, "user", target)))
                        .set(room_members::role.eq(role.as_str()))
                        .execute(tx)?;
                    audit::record(
                        tx,
                        &room_event(
                            "room.role_changed",
                            actor,
                            &access.room,
                            ip,
                            json!({ "user_id": target, "from": current.as_str(), "to": role.as_str() }),
                        ),
                        Utc::now().naive_utc(),
                    )?;
                    Ok(())
                })
            })
            .await
    }

    /// Removes a member (kick), or the caller leaves.
    pub async fn remove_member(
        &self,
        actor: i64,
        room_id: i64,
        target: i64,
        ip: Option<String>,
    ) -> Result<(), AppError> {
        self.db
            .run(move |conn| {
                write_transaction(conn, |tx| {
                    let access = require(tx, room_id, actor, RoomAction::Read)?;
                    let current =
                        member_role(tx, room_id, MemberKind::User, target)?.ok_or_else(|| {
                            AppError::NotFound("No such member in this room.".to_owned())
                        })?;
                    let leaving = actor == target;
                    if access.room.kind == RoomKind::Direct {
                        return Err(AppError::Conflict(
                            "Nobody leaves a direct conversation; it stays between the two of you."
                                .to_owned(),
                        ));
                    }
                    if !leaving && !Authorizer::room_may_manage(&access, current) {
                        return Err(AppError::Forbidden(format!(
                            "Your room role ({}) cannot remove a {current}.",
                            access
                                .room_role
                                .map_or("not a member".to_owned(), |r| r.to_string())
                        )));
                    }
                    if current == RoomRole::Owner {
                        last_owner_check(tx, room_id)?;
                    }
                    diesel::delete(room_members::table.find((room_id, "user", target)))
                        .execute(tx)?;
                    audit::record(
                        tx,
                        &room_event(
                            "room.member_removed",
                            actor,
                            &access.room,
                            ip,
                            json!({ "user_id": target, "role": current.as_str(), "left": leaving }),
                        ),
                        Utc::now().naive_utc(),
                    )?;
                    Ok::<_, AppError>(())
                })
            })
            .await?;
        self.hub.recheck(room_id, target);
        Ok(())
    }

    // ----- messages -----

    async fn views(&self, messages: Vec<StoredMessage>) -> Result<Vec<MessageView>, AppError> {
        let ids: Vec<i64> = messages
            .iter()
            .filter(|m| m.sender_kind == MemberKind::User)
            .filter_map(|m| m.sender_id)
            .collect();
        let device_ids: Vec<i64> = messages
            .iter()
            .filter(|m| m.sender_kind == MemberKind::Device)
            .filter_map(|m| m.sender_id)
            .collect();
        let (names, device_names) = self
            .db
            .run(move |conn| {
                Ok::<_, DbError>((names_of(conn, ids)?, device_names_of(conn, device_ids)?))
            })
            .await?;
        Ok(messages
            .into_iter()
            .map(|m| {
                let name = match (m.sender_kind, m.sender_id) {
                    (MemberKind::User, Some(id)) => names
                        .get(&id)
                        .cloned()
                        .unwrap_or_else(|| "Deleted user".to_owned()),
                    (MemberKind::User, None) => "Deleted user".to_owned(),
                    (MemberKind::Device, id) => id
                        .and_then(|id| device_names.get(&id).cloned())
                        .unwrap_or_else(|| "Deleted device".to_owned()),
                    (MemberKind::Assistant, _) => "Assistant".to_owned(),
                };
                MessageView {
                    id: m.id,
                    room_id: m.room_id,
                    sender: MessageSender {
                        kind: m.sender_kind,
                        id: m.sender_id,
                        name,
                    },
                    html: m.body.as_deref().map(markdown::render),
                    body: m.body,
                    reply_to: m.reply_to,
                    created_at: crate::time::rfc3339(m.created_at),
                    edited_at: m.edited_at.map(crate::time::rfc3339),
                    edited: m.edited_at.is_some(),
                    deleted: m.deleted_at.is_some(),
                }
            })
            .collect())
    }

    async fn view(&self, message: StoredMessage) -> Result<MessageView, AppError> {
        self.views(vec![message])
            .await?
            .pop()
            .ok_or_else(|| AppError::internal(anyhow::anyhow!("a message view went missing")))
    }

    /// A page of history, chronological.
    pub async fn history(
        &self,
        user_id: i64,
        room_id: i64,
        cursor: Cursor,
        limit: usize,
    ) -> Result<Vec<MessageView>, AppError> {
        let access = self.access(user_id, room_id).await?;
        self.history_of(&access, user_id, cursor, limit).await
    }

    /// A page of history of a room whose access the caller has already checked (a subscription
    /// replaying several pages checks once).
    pub async fn history_of(
        &self,
        access: &RoomAccess,
        user_id: i64,
        cursor: Cursor,
        limit: usize,
    ) -> Result<Vec<MessageView>, AppError> {
        let page = self
            .store(&access.room, user_id)?
            .page(access.room.id, cursor, limit.clamp(1, MAX_PAGE))
            .await?;
        self.views(page).await
    }

    /// The id of the newest message of a room whose access was checked, without rendering it
    /// (refused while a private room is locked).
    pub async fn newest_of(
        &self,
        access: &RoomAccess,
        user_id: i64,
    ) -> Result<Option<i64>, AppError> {
        Ok(self
            .store(&access.room, user_id)?
            .page(access.room.id, Cursor::Latest, 1)
            .await?
            .last()
            .map(|m| m.id))
    }

    /// The caller's access to a room and one of its messages (404 for either missing).
    async fn access_message(
        &self,
        user_id: i64,
        room_id: i64,
        message_id: i64,
    ) -> Result<(RoomAccess, StoredMessage), AppError> {
        let access = self.access(user_id, room_id).await?;
        let message = self
            .store(&access.room, user_id)?
            .get(room_id, message_id)
            .await?
            .ok_or_else(|| AppError::NotFound("No such message in this room.".to_owned()))?;
        Ok((access, message))
    }

    /// One message of a room the caller may read (deleted ones included, as tombstones).
    pub async fn message(
        &self,
        user_id: i64,
        room_id: i64,
        message_id: i64,
    ) -> Result<MessageView, AppError> {
        let (_, message) = self.access_message(user_id, room_id, message_id).await?;
        self.view(message).await
    }

    /// Posts a message; `false` when an earlier post with the same idempotency key stored it.
    pub async fn post(
        &self,
        user_id: i64,
        room_id: i64,
        body: String,
        reply_to: Option<i64>,
        idempotency_key: Option<String>,
    ) -> Result<(MessageView, bool), AppError> {
        check_body(&self.settings, &body)?;
        if let Some(key) = &idempotency_key
            && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY)
        {
            return Err(AppError::BadRequest(format!(
                "idempotency_key: must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
            )));
        }
        let access = self
            .db
            .run(move |conn| require(conn, room_id, user_id, RoomAction::Post))
            .await?;
        let store = self.store(&access.room, user_id)?;
        let slash = self
            .slash
            .get()
            .filter(|slash| slash.handles(&body))
            .cloned();
        if let Some(slash) = &slash {
            slash.check(&access.room, user_id, &body).await?;
        }
        // Held until the event is out, so the room's events leave in id order.
        let _order = self.hub.order(room_id).await;
        let appended = store
            .append(
                room_id,
                NewMessage {
                    sender: Sender::user(user_id),
                    body,
                    reply_to,
                    idempotency_key,
                },
            )
            .await?;
        let view = self.view(appended.message).await?;
        if appended.created {
            self.publish_new(&view);
            if let Some(listener) = self.listener.get() {
                listener.posted(&access.room, user_id, &view);
            }
            if let Some(slash) = slash {
                drop(_order);
                slash.run(&access.room, user_id, &view).await;
            }
        }
        Ok((view, appended.created))
    }

    /// Stores a message of the assistant in `room_id` and publishes it. No permission check:
    /// the assistant answers where it was asked; `reader` is the person whose key opens a
    /// private room (the one who asked). A retry with the same `idempotency_key` returns the
    /// message stored the first time.
    pub async fn post_as_assistant(
        &self,
        room_id: i64,
        reader: i64,
        body: String,
        idempotency_key: String,
    ) -> Result<MessageView, AppError> {
        let room = self.room_by_id(room_id).await?;
        let store = self.store(&room, reader)?;
        // The assistant may command the room's devices, with the rights of the person it
        // answers; a command that cannot run stays a plain message.
        let slash = match self.slash.get().filter(|slash| slash.handles(&body)) {
            Some(slash) if slash.check(&room, reader, &body).await.is_ok() => Some(slash.clone()),
            _ => None,
        };
        let _order = self.hub.order(room_id).await;
        let appended = store
            .append(
                room_id,
                NewMessage {
                    sender: Sender {
                        kind: MemberKind::Assistant,
                        id: 0,
                    },
                    body,
                    reply_to: None,
                    idempotency_key: Some(idempotency_key),
                },
            )
            .await?;
        let view = self.view(appended.message).await?;
        if appended.created {
            self.publish_new(&view);
            if let Some(slash) = slash {
                drop(_order);
                slash.run(&room, reader, &view).await;
            }
        }
        Ok(view)
    }

    /// A room by id, without a permission check (the callers answer on someone's behalf).
    async fn room_by_id(&self, room_id: i64) -> Result<Room, AppError> {
        self.db
            .run(move |conn| {
                rooms::table
                    .find(room_id)
                    .select(room_columns!())
                    .first::<RoomRow>(conn)
                    .optional()
                    .map_err(AppError::from)
            })
            .await?
            .map(room_of)
            .ok_or_else(not_found)
    }

    /// Stores a device's message (a rule's event, a command's answer) in `room_id` and
    /// publishes it. The caller checked that the device is a member; devices are never members
    /// of private rooms (their history opens only with a person's key). A retry with the same
    /// `idempotency_key` returns the message stored the first time.
    pub async fn post_as_device(
        &self,
        room_id: i64,
        device_id: i64,
        body: String,
        reply_to: Option<i64>,
        idempotency_key: String,
    ) -> Result<MessageView, AppError> {
        let room = self.room_by_id(room_id).await?;
        if room.privacy == Privacy::Private {
            return Err(AppError::Conflict(
                "Devices cannot post in private rooms.".to_owned(),
            ));
        }
        let store = self.store(&room, 0)?;
        let _order = self.hub.order(room_id).await;
        let appended = store
            .append(
                room_id,
                NewMessage {
                    sender: Sender {
                        kind: MemberKind::Device,
                        id: device_id,
                    },
                    body: cut_to_bytes(body, self.settings.max_message_bytes),
                    reply_to,
                    idempotency_key: Some(idempotency_key),
                },
            )
            .await?;
        let view = self.view(appended.message).await?;
        if appended.created {
            self.publish_new(&view);
        }
        Ok(view)
    }

    /// Makes a device a member of a room (people who may invite to the room can; the device
    /// must belong to the room's workspace). Its events and answers then appear there, and
    /// the room's posting members may command it with `/cmd`.
    pub async fn add_device(
        &self,
        actor: i64,
        room_id: i64,
        device_id: i64,
        device_tenant: i64,
        ip: Option<String>,
    ) -> Result<(), AppError> {
        self.db
            .run(move |conn| {
                write_transaction(conn, |tx| {
                    let access = require(tx, room_id, actor, RoomAction::Invite)?;
                    if access.room.tenant_id != device_tenant {
                        return Err(AppError::NotFound(
                            "device_id: no such device in this room's workspace".to_owned(),
                        ));
                    }
                    if access.room.privacy == Privacy::Private {
                        return Err(AppError::BadRequest(
                            "Devices cannot join private rooms: their history opens only with \
                             a member's personal key."
                                .to_owned(),
                        ));
                    }
                    if access.room.kind == RoomKind::Direct {
                        return Err(AppError::BadRequest(
                            "Devices cannot join direct conversations.".to_owned(),
                        ));
                    }
                    if member_role(tx, room_id, MemberKind::Device, device_id)?.is_some() {
                        return Err(AppError::Conflict(
                            "This device is already a member of this room.".to_owned(),
                        ));
                    }
                    let now = Utc::now().naive_utc();
                    add_member_row(
                        tx,
                        room_id,
                        MemberKind::Device,
                        device_id,
                        RoomRole::Member,
                        now,
                    )?;
                    audit::record(
                        tx,
                        &room_event(
                            "room.device_added",
                            actor,
                            &access.room,
                            ip,
                            json!({ "device_id": device_id }),
                        ),
                        now,
                    )?;
                    Ok(())
                })
            })
            .await
    }

    /// Takes a device out of a room (its rules for the room go with it).
    pub async fn remove_device(
        &self,
        actor: i64,
        room_id: i64,
        device_id: i64,
        ip: Option<String>,
    ) -> Result<(), AppError> {
        self.db
            .run(move |conn| {
                write_transaction(conn, |tx| {
                    let access = require(tx, room_id, actor, RoomAction::Invite)?;
                    let removed = diesel::delete(room_members::table.find((
                        room_id,
                        MemberKind::Device.as_str(),
                        device_id,
                    )))
                    .execute(tx)?;
                    if removed == 0 {
                        return Err(AppError::NotFound(
                            "This device is not a member of this room.".to_owned(),
                        ));
                    }
                    diesel::delete(
                        crate::schema::device_rules::table
                            .filter(crate::schema::device_rules::room_id.eq(room_id))
                            .filter(crate::schema::device_rules::device_id.eq(device_id)),
                    )
                    .execute(tx)?;
                    audit::record(
                        tx,
                        &room_event(
                            "room.device_removed",
                            actor,
                            &access.room,
                            ip,
                            json!({ "device_id": device_id }),
                        ),
                        Utc::now().naive_utc(),
                    )?;
                    Ok(())
                })
            })
            .await
    }

    /// Deletes a message of the assistant (an answer being regenerated), as a tombstone.
    pub async fn delete_assistant_message(
        &self,
        access: &RoomAccess,
        reader: i64,
        message_id: i64,
    ) -> Result<(), AppError> {
        let store = self.store(&access.room, reader)?;
        let Some(message) = store.get(access.room.id, message_id).await? else {
            return Ok(());
        };
        if message.sender_kind != MemberKind::Assistant || message.deleted_at.is_some() {
            return Ok(());
        }
        let _order = self.hub.order(access.room.id).await;
        store.delete(access.room.id, message_id).await?;
        self.hub.publish_frame(
            access.room.id,
            protocol::message_deleted(access.room.id, message_id).into(),
        );
        Ok(())
    }

    /// A personal room of `user_id` with the assistant as its other member: the home of a
    /// personal assistant chat. Private visibility (nobody else sees it), the chosen tier.
    pub async fn create_personal_room(
        &self,
        user_id: i64,
        tenant_id: i64,
        name: String,
        privacy: Privacy,
    ) -> Result<Room, AppError> {
        let name = check_name(&self.settings, &name)?;
        self.db
            .run(move |conn| {
                write_transaction(conn, |tx| {
                    let now = Utc::now().naive_utc();
                    let id: i64 = diesel::insert_into(rooms::table)
                        .values((
                            rooms::tenant_id.eq(tenant_id),
                            rooms::kind.eq("room"),
                            rooms::name.eq(&name),
                            rooms::visibility.eq(Visibility::Private.as_str()),
                            rooms::privacy.eq(privacy.as_str()),
                            rooms::created_by.eq(user_id),
                            rooms::created_at.eq(now),
                            rooms::updated_at.eq(now),
                        ))
                        .returning(rooms::id)
                        .get_result(tx)?;
                    add_member_row(tx, id, MemberKind::User, user_id, RoomRole::Owner, now)?;
                    add_member_row(tx, id, MemberKind::Assistant, 0, RoomRole::Member, now)?;
                    Ok(access_in(tx, id, user_id)?.room)
                })
            })
            .await
    }

    /// Edits one's own message.
    pub async fn edit(
        &self,
        user_id: i64,
        room_id: i64,
        message_id: i64,
        body: String,
    ) -> Result<MessageView, AppError> {
        check_body(&self.settings, &body)?;
        let (access, message) = self.access_message(user_id, room_id, message_id).await?;
        if message.sender_kind != MemberKind::User || message.sender_id != Some(user_id) {
            return Err(AppError::Forbidden(
                "Only its author can edit a message.".to_owned(),
            ));
        }
        if !Authorizer::room(&access, RoomAction::Post) {
            return Err(AppError::Forbidden(forbidden_reason(
                &access,
                RoomAction::Post,
            )));
        }
        let store = self.store(&access.room, user_id)?;
        let _order = self.hub.order(room_id).await;
        let edited = store.edit(room_id, message_id, body).await?;
        let view = self.view(edited).await?;
        self.publish_edited(&view);
        Ok(view)
    }

    /// Deletes a message: its author, or a moderator.
    pub async fn delete_message(
        &self,
        user_id: i64,
        room_id: i64,
        message_id: i64,
        ip: Option<String>,
    ) -> Result<(), AppError> {
        let (access, message) = self.access_message(user_id, room_id, message_id).await?;
        let own = message.sender_kind == MemberKind::User && message.sender_id == Some(user_id);
        if !own && !Authorizer::room(&access, RoomAction::Moderate) {
            return Err(AppError::Forbidden(
                "Only its author or a moderator can delete a message.".to_owned(),
            ));
        }
        let store = self.store(&access.room, user_id)?;
        {
            let _order = self.hub.order(room_id).await;
            store.delete(room_id, message_id).await?;
            self.hub.publish_frame(
                room_id,
                protocol::message_deleted(room_id, message_id).into(),
            );
        }
        if !own {
            let event = room_event(
                "message.deleted_by_moderator",
                user_id,
                &access.room,
                ip,
                json!({ "message_id": message_id, "sender_id": message.sender_id }),
            );
            audit::record_now(&self.db, event).await?;
        }
        Ok(())
    }

    /// How far `user_id` has read in `room_id` (the newest message id they saw), if they
    /// said.
    pub async fn read_marker(&self, user_id: i64, room_id: i64) -> Result<Option<i64>, AppError> {
        use crate::schema::read_markers;
        self.db
            .run(move |conn| {
                read_markers::table
                    .find((room_id, user_id))
                    .select(read_markers::message_id)
                    .first(conn)
                    .optional()
                    .map_err(AppError::from)
            })
            .await
    }

    /// Records that `user_id` has read `room_id` up to `message_id` (a message of the room).
    /// Markers only move forward: answers the new marker, or `None` when it was already
    /// there or further. The room's live connections hear of a move.
    pub async fn mark_read(
        &self,
        user_id: i64,
        room_id: i64,
        message_id: i64,
    ) -> Result<Option<i64>, AppError> {
        use crate::schema::read_markers;
        // Reading needs access to the room and a message that is in it.
        self.access_message(user_id, room_id, message_id).await?;
        let moved = self
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| {
                    let now = Utc::now().naive_utc();
                    let current: Option<i64> = read_markers::table
                        .find((room_id, user_id))
                        .select(read_markers::message_id)
                        .first(tx)
                        .optional()?;
                    match current {
                        Some(current) if current >= message_id => return Ok(false),
                        Some(_) => {
                            diesel::update(read_markers::table.find((room_id, user_id)))
                                .set((
                                    read_markers::message_id.eq(message_id),
                                    read_markers::updated_at.eq(now),
                                ))
                                .execute(tx)?;
                        }
                        None => {
                            diesel::insert_into(read_markers::table)
                                .values((
                                    read_markers::room_id.eq(room_id),
                                    read_markers::user_id.eq(user_id),
                                    read_markers::message_id.eq(message_id),
                                    read_markers::updated_at.eq(now),
                                ))
                                .execute(tx)?;
                        }
                    }
                    Ok::<_, AppError>(true)
                })
            })
            .await?;
        if !moved {
            return Ok(None);
        }
        self.hub.read_moved(room_id, user_id, message_id);
        Ok(Some(message_id))
    }

    /// Display names of people, by id (missing ones are left out).
    pub async fn display_names(&self, ids: Vec<i64>) -> Result<HashMap<i64, String>, AppError> {
        self.db
            .run(move |conn| names_of(conn, ids).map_err(AppError::from))
            .await
    }

    /// The ids and names of every room `user_id` may read.
    pub async fn readable_rooms(&self, user_id: i64) -> Result<Vec<(i64, String)>, AppError> {
        Ok(self
            .list(user_id, None)
            .await?
            .into_iter()
            .map(|r| (r.room.id, r.title()))
            .collect())
    }

    /// Search across every room the caller may read (or one of them), newest first.
    pub async fn search(
        &self,
        user_id: i64,
        params: SearchParams,
    ) -> Result<Vec<SearchHit>, AppError> {
        let terms = words::query_terms(&params.q);
        if terms.is_empty() {
            return Err(AppError::BadRequest(
                "q: give at least one word to search for".to_owned(),
            ));
        }
        if terms.len() > 8 {
            return Err(AppError::BadRequest(
                "q: at most 8 words at a time".to_owned(),
            ));
        }
        let readable = self
            .db
            .run(move |conn| readable_in(conn, user_id, None).map_err(DbError::from))
            .await?;
        let privacy_of = |room: i64| {
            readable
                .iter()
                .find(|(id, _)| *id == room)
                .map(|(_, privacy)| *privacy)
        };
        // Across rooms, the stored history is searched (one id order); an ephemeral room's
        // messages are searched when the search is limited to that room.
        let (store, rooms): (&dyn HistoryStore, Vec<i64>) = match params.room {
            Some(room) => match privacy_of(room) {
                None => return Err(not_found()),
                Some(Privacy::Ephemeral) => (self.ephemeral.as_ref(), vec![room]),
                Some(Privacy::Private) if !self.personal.is_unlocked(user_id) => {
                    return Err(crate::history::HistoryError::Locked(room).into());
                }
                Some(_) => (self.history.as_ref(), vec![room]),
            },
            None => (
                self.history.as_ref(),
                readable
                    .iter()
                    .filter(|(id, _)| params.within.as_ref().is_none_or(|w| w.contains(id)))
                    .filter(|(_, privacy)| *privacy != Privacy::Ephemeral)
                    .map(|(id, _)| *id)
                    .collect(),
            ),
        };
        let hits = store
            .search(&SearchQuery {
                terms,
                rooms,
                sender: params.sender.map(Sender::user),
                from: params.from,
                to: params.to,
                before: params.before,
                limit: params.limit.clamp(1, 100),
            })
            .await?;
        let hit_rooms: Vec<i64> = hits.iter().map(|h| h.message.room_id).collect();
        let names = self
            .db
            .run(move |conn| titles(conn, user_id, &hit_rooms).map_err(DbError::from))
            .await?;
        let views = self
            .views(hits.iter().map(|h| h.message.clone()).collect())
            .await?;
        Ok(hits
            .into_iter()
            .zip(views)
            .map(|(hit, message)| SearchHit {
                room_name: names.get(&message.room_id).cloned().unwrap_or_default(),
                message,
                snippet_html: hit.snippet_html,
            })
            .collect())
    }

    /// Everything the caller wrote, with the rooms it was written in. Private rooms whose key
    /// is locked are listed in `locked_rooms` (unlock, then export again for their messages).
    pub async fn export_mine(&self, user_id: i64) -> Result<serde_json::Value, AppError> {
        // Private rooms are personal: the locked ones are the caller's own, all of them.
        let locked: Vec<i64> = if self.personal.is_unlocked(user_id) {
            Vec::new()
        } else {
            self.db
                .run(move |conn| {
                    rooms::table
                        .filter(rooms::privacy.eq(Privacy::Private.as_str()))
                        .filter(rooms::created_by.eq(user_id))
                        .select(rooms::id)
                        .load(conn)
                        .map_err(DbError::from)
                })
                .await?
        };
        let sender = Sender::user(user_id);
        let mut messages = self.history.by_sender(sender, locked.clone()).await?;
        messages.extend(self.ephemeral.by_sender(sender, Vec::new()).await?);
        let mut room_ids: Vec<i64> = messages.iter().map(|m| m.room_id).collect();
        room_ids.extend(&locked);
        let rooms: Vec<(i64, String, String, String)> = self
            .db
            .run(move |conn| {
                rooms::table
                    .filter(rooms::id.eq_any(room_ids))
                    .select((rooms::id, rooms::kind, rooms::name, rooms::privacy))
                    .load(conn)
                    .map_err(DbError::from)
            })
            .await?;
        let views = self.views(messages).await?;
        Ok(json!({
            "exported_at": crate::time::rfc3339(Utc::now().naive_utc()),
            "rooms": rooms.iter().map(|(id, kind, name, privacy)| json!({"id": id, "kind": kind, "name": name, "privacy": privacy})).collect::<Vec<_>>(),
            "messages": views,
            "locked_rooms": locked,
        }))
    }

    /// A room's whole history (everyone's messages, oldest first, tombstones included) with its
    /// members, for the room's owners. Audited: it hands out other people's words.
    pub async fn export_room(
        &self,
        user_id: i64,
        room_id: i64,
        ip: Option<String>,
    ) -> Result<serde_json::Value, AppError> {
        let access = self.access(user_id, room_id).await?;
        if !Authorizer::room(&access, RoomAction::Export) {
            return Err(AppError::Forbidden(
                "Only the room's owners can download its whole history.".to_owned(),
            ));
        }
        const CHUNK: usize = 1000;
        let mut messages = Vec::new();
        let mut cursor = Cursor::After(0);
        loop {
            let page = self
                .store(&access.room, user_id)?
                .page(room_id, cursor, CHUNK)
                .await?;
            let Some(last) = page.last() else { break };
            cursor = Cursor::After(last.id);
            let full = page.len() == CHUNK;
            messages.extend(self.views(page).await?);
            if !full {
                break;
            }
        }
        let (_, members) = self.members(user_id, room_id).await?;
        let event = room_event(
            "room.exported",
            user_id,
            &access.room,
            ip,
            json!({ "messages": messages.len() }),
        );
        audit::record_now(&self.db, event).await?;
        Ok(json!({
            "exported_at": crate::time::rfc3339(Utc::now().naive_utc()),
            "room": access.room,
            "members": members,
            "messages": messages,
        }))
    }
}

/// The rooms `user_id` may read (see `RoomAction::Read`): their own, and the public rooms of
/// their workspaces; only those of `tenant` when given. With each room's privacy tier.
fn readable_in(
    conn: &mut DbConnection,
    user_id: i64,
    tenant: Option<i64>,
) -> QueryResult<Vec<(i64, Privacy)>> {
    let mine = room_members::table
        .filter(room_members::member_kind.eq(MemberKind::User.as_str()))
        .filter(room_members::member_id.eq(user_id))
        .select(room_members::room_id);
    let my_tenants = memberships::table
        .filter(memberships::user_id.eq(user_id))
        .select(memberships::tenant_id);
    let mut query = rooms::table
        .filter(rooms::tenant_id.eq_any(my_tenants))
        .filter(
            rooms::id
                .eq_any(mine)
                .or(rooms::visibility.eq("public").and(rooms::kind.eq("room"))),
        )
        .select((rooms::id, rooms::privacy))
        .into_boxed();
    if let Some(tenant) = tenant {
        query = query.filter(rooms::tenant_id.eq(tenant));
    }
    Ok(query
        .load::<(i64, String)>(conn)?
        .into_iter()
        .map(|(id, privacy)| (id, privacy.parse().unwrap_or(Privacy::Standard)))
        .collect())
}

/// What `user_id` calls each of `ids`: the room's name, or for a direct room the other person.
fn titles(conn: &mut DbConnection, user_id: i64, ids: &[i64]) -> QueryResult<HashMap<i64, String>> {
    let rooms: Vec<(i64, String, String)> = rooms::table
        .filter(rooms::id.eq_any(ids))
        .select((rooms::id, rooms::kind, rooms::name))
        .load(conn)?;
    let direct: Vec<i64> = rooms
        .iter()
        .filter(|(_, kind, _)| kind == "direct")
        .map(|(id, ..)| *id)
        .collect();
    let others: HashMap<i64, String> = room_members::table
        .inner_join(users::table.on(users::id.eq(room_members::member_id)))
        .filter(room_members::room_id.eq_any(direct))
        .filter(room_members::member_kind.eq(MemberKind::User.as_str()))
        .filter(room_members::member_id.ne(user_id))
        .select((room_members::room_id, users::display_name))
        .load::<(i64, String)>(conn)?
        .into_iter()
        .collect();
    Ok(rooms
        .into_iter()
        .map(|(id, _, name)| (id, others.get(&id).cloned().unwrap_or(name)))
        .collect())
}

fn add_member_row(
    conn: &mut DbConnection,
    room_id: i64,
    kind: MemberKind,
    id: i64,
    role: RoomRole,
    now: NaiveDateTime,
) -> QueryResult<()> {
    diesel::insert_into(room_members::table)
        .values((
            room_members::room_id.eq(room_id),
            room_members::member_kind.eq(kind.as_str()),
            room_members::member_id.eq(id),
            room_members::role.eq(role.as_str()),
            room_members::joined_at.eq(now),
        ))
        .execute(conn)?;
    Ok(())
}

/// What deleting an account did to the conversations.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Erasure {
    /// Private rooms deleted with their history.
    pub private_rooms_deleted: usize,
    /// Stored messages whose sender is now "Deleted user".
    pub messages_anonymised: usize,
    /// Rooms that got a new owner because the deleted person was the last one.
    pub rooms_handed_over: usize,
}

/// The chat part of deleting `user_id`'s account, in the deleting transaction: their private
/// rooms go with all their history; the messages they wrote elsewhere stay for the others but
/// lose their author (and idempotency keys, which could link them); their memberships end, and
/// a room they were the last owner of passes to its longest-standing member.
pub fn erase_member(conn: &mut DbConnection, user_id: i64) -> QueryResult<Erasure> {
    use crate::schema::messages;
    let mut erasure = Erasure::default();
    // Private rooms and personal assistant chats are the person's own: they go with them.
    let personal_chats = crate::schema::assistant_rooms::table
        .filter(crate::schema::assistant_rooms::mode.eq("chat"))
        .select(crate::schema::assistant_rooms::room_id);
    let private: Vec<i64> = rooms::table
        .filter(
            rooms::privacy
                .eq(Privacy::Private.as_str())
                .or(rooms::id.eq_any(personal_chats)),
        )
        .filter(rooms::created_by.eq(user_id))
        .select(rooms::id)
        .load(conn)?;
    for room_id in &private {
        delete_room_rows(conn, *room_id)?;
    }
    erasure.private_rooms_deleted = private.len();
    // Nothing is left that the personal key opens; it goes too.
    crate::auth::personal_keys::erase(conn, user_id)?;
    erasure.messages_anonymised = diesel::update(
        messages::table
            .filter(messages::sender_kind.eq(MemberKind::User.as_str()))
            .filter(messages::sender_id.eq(user_id)),
    )
    .set((
        messages::sender_id.eq(None::<i64>),
        messages::idempotency_key.eq(None::<String>),
    ))
    .execute(conn)?;
    let owned: Vec<i64> = room_members::table
        .filter(room_members::member_kind.eq(MemberKind::User.as_str()))
        .filter(room_members::member_id.eq(user_id))
        .filter(room_members::role.eq(RoomRole::Owner.as_str()))
        .select(room_members::room_id)
        .load(conn)?;
    diesel::delete(
        room_members::table
            .filter(room_members::member_kind.eq(MemberKind::User.as_str()))
            .filter(room_members::member_id.eq(user_id)),
    )
    .execute(conn)?;
    diesel::delete(
        crate::schema::read_markers::table.filter(crate::schema::read_markers::user_id.eq(user_id)),
    )
    .execute(conn)?;
    for room_id in owned {
        let owners: i64 = room_members::table
            .filter(room_members::room_id.eq(room_id))
            .filter(room_members::role.eq(RoomRole::Owner.as_str()))
            .count()
            .get_result(conn)?;
        if owners > 0 {
            continue;
        }
        let heir: Option<i64> = room_members::table
            .filter(room_members::room_id.eq(room_id))
            .filter(room_members::member_kind.eq(MemberKind::User.as_str()))
            .order((room_members::joined_at, room_members::member_id))
            .select(room_members::member_id)
            .first(conn)
            .optional()?;
        if let Some(heir) = heir {
            diesel::update(
                room_members::table
                    .filter(room_members::room_id.eq(room_id))
                    .filter(room_members::member_kind.eq(MemberKind::User.as_str()))
                    .filter(room_members::member_id.eq(heir)),
            )
            .set(room_members::role.eq(RoomRole::Owner.as_str()))
            .execute(conn)?;
            erasure.rooms_handed_over += 1;
        }
    }
    diesel::update(rooms::table.filter(rooms::created_by.eq(user_id)))
        .set(rooms::created_by.eq(None::<i64>))
        .execute(conn)?;
    Ok(erasure)
}

/// The privacy tier a workspace gives new rooms.
fn tenant_privacy(conn: &mut DbConnection, tenant_id: i64) -> QueryResult<Privacy> {
    Ok(tenants::table
        .find(tenant_id)
        .select(tenants::default_privacy)
        .first::<String>(conn)?
        .parse()
        .unwrap_or(Privacy::Standard))
}

/// Refuses to remove or demote a room's last owner while others remain.
fn last_owner_check(conn: &mut DbConnection, room_id: i64) -> Result<(), AppError> {
    let owners: i64 = room_members::table
        .filter(room_members::room_id.eq(room_id))
        .filter(room_members::role.eq(RoomRole::Owner.as_str()))
        .count()
        .get_result(conn)?;
    if owners <= 1 {
        return Err(AppError::Conflict(
            "A room needs an owner: make someone else owner first, or delete the room.".to_owned(),
        ));
    }
    Ok(())
}

/// Deletes a room and everything in it: index entries, messages, key, members.
pub fn delete_room_rows(conn: &mut DbConnection, room_id: i64) -> QueryResult<()> {
    crate::history::erase_rooms(conn, &[room_id])?;
    diesel::delete(
        crate::schema::read_markers::table.filter(crate::schema::read_markers::room_id.eq(room_id)),
    )
    .execute(conn)?;
    diesel::delete(room_members::table.filter(room_members::room_id.eq(room_id))).execute(conn)?;
    diesel::delete(rooms::table.find(room_id)).execute(conn)?;
    Ok(())
}
