//! Rows of the assistant in conversations: which rooms it answers in and how
//! (`assistant_rooms`), each answer's life (`assistant_replies`), and a person's preferences.

use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

use crate::db::DbConnection;
use crate::schema::{assistant_preferences, assistant_replies, assistant_rooms};

/// A personal assistant chat, or a group room that lets the assistant answer mentions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Chat,
    Room,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Room => "room",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AssistantRoom {
    pub room_id: i64,
    pub mode: Mode,
    pub enabled: bool,
    /// The model alias; empty: the configured default.
    pub model: String,
    pub system_prompt: String,
    pub untitled: bool,
}

type RoomRow = (i64, String, bool, String, String, bool);

fn room_of((room_id, mode, enabled, model, system_prompt, untitled): RoomRow) -> AssistantRoom {
    AssistantRoom {
        room_id,
        mode: if mode == "chat" {
            Mode::Chat
        } else {
            Mode::Room
        },
        enabled,
        model,
        system_prompt,
        untitled,
    }
}

macro_rules! room_columns {
    () => {
        (
            assistant_rooms::room_id,
            assistant_rooms::mode,
            assistant_rooms::enabled,
            assistant_rooms::model,
            assistant_rooms::system_prompt,
            assistant_rooms::untitled,
        )
    };
}

pub fn find_room(conn: &mut DbConnection, room_id: i64) -> QueryResult<Option<AssistantRoom>> {
    Ok(assistant_rooms::table
        .find(room_id)
        .select(room_columns!())
        .first::<RoomRow>(conn)
        .optional()?
        .map(room_of))
}

pub fn insert_room(conn: &mut DbConnection, room: &AssistantRoom) -> QueryResult<()> {
    diesel::insert_into(assistant_rooms::table)
        .values((
            assistant_rooms::room_id.eq(room.room_id),
            assistant_rooms::mode.eq(room.mode.as_str()),
            assistant_rooms::enabled.eq(room.enabled),
            assistant_rooms::model.eq(&room.model),
            assistant_rooms::system_prompt.eq(&room.system_prompt),
            assistant_rooms::untitled.eq(room.untitled),
            assistant_rooms::updated_at.eq(Utc::now().naive_utc()),
        ))
        .execute(conn)
        .map(drop)
}

/// Changes the settings of a room (inserted when the room had none).
pub fn save_room(conn: &mut DbConnection, room: &AssistantRoom) -> QueryResult<()> {
    let updated = diesel::update(assistant_rooms::table.find(room.room_id))
        .set((
            assistant_rooms::enabled.eq(room.enabled),
            assistant_rooms::model.eq(&room.model),
            assistant_rooms::system_prompt.eq(&room.system_prompt),
            assistant_rooms::untitled.eq(room.untitled),
            assistant_rooms::updated_at.eq(Utc::now().naive_utc()),
        ))
        .execute(conn)?;
    if updated == 0 {
        insert_room(conn, room)?;
    }
    Ok(())
}

/// Replaces "New chat" with `title` unless its owner has named the chat meanwhile; whether
/// it did.
pub fn set_generated_title(
    conn: &mut DbConnection,
    room_id: i64,
    title: &str,
) -> QueryResult<bool> {
    use crate::schema::rooms;
    crate::db::write_transaction(conn, |tx| {
        let claimed = diesel::update(
            assistant_rooms::table
                .find(room_id)
                .filter(assistant_rooms::untitled.eq(true)),
        )
        .set(assistant_rooms::untitled.eq(false))
        .execute(tx)?;
        if claimed == 0 {
            return Ok(false);
        }
        diesel::update(rooms::table.find(room_id))
            .set((
                rooms::name.eq(title),
                rooms::updated_at.eq(Utc::now().naive_utc()),
            ))
            .execute(tx)?;
        Ok(true)
    })
}

/// A chat in its owner's list: (room id, title, privacy, model, last activity).
pub type ChatRow = (i64, String, String, String, NaiveDateTime);

/// A person's chats, newest activity first.
pub fn chats_of(conn: &mut DbConnection, user_id: i64) -> QueryResult<Vec<ChatRow>> {
    use crate::schema::rooms;
    assistant_rooms::table
        .inner_join(rooms::table)
        .filter(assistant_rooms::mode.eq(Mode::Chat.as_str()))
        .filter(rooms::created_by.eq(user_id))
        .order((rooms::updated_at.desc(), rooms::id.desc()))
        .select((
            rooms::id,
            rooms::name,
            rooms::privacy,
            assistant_rooms::model,
            rooms::updated_at,
        ))
        .load(conn)
}

/// A chat was used: it moves to the top of its owner's list.
pub fn touch_room(conn: &mut DbConnection, room_id: i64) -> QueryResult<()> {
    use crate::schema::rooms;
    diesel::update(rooms::table.find(room_id))
        .set(rooms::updated_at.eq(Utc::now().naive_utc()))
        .execute(conn)
        .map(drop)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReplyState {
    Queued,
    Streaming,
    Completed,
    /// Stopped by someone; the partial answer is kept.
    Stopped,
    Failed,
}

impl ReplyState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Streaming => "streaming",
            Self::Completed => "completed",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "queued" => Self::Queued,
            "streaming" => Self::Streaming,
            "completed" => Self::Completed,
            "stopped" => Self::Stopped,
            _ => Self::Failed,
        }
    }

    pub fn is_done(self) -> bool {
        matches!(self, Self::Completed | Self::Stopped | Self::Failed)
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Reply {
    pub id: i64,
    pub room_id: i64,
    #[serde(skip)]
    pub user_id: Option<i64>,
    /// The message it answers.
    pub prompt_message_id: i64,
    /// The stored answer (also for a stopped or failed one that had begun).
    pub message_id: Option<i64>,
    pub model: String,
    pub state: ReplyState,
    pub error: Option<String>,
}

type ReplyRow = (
    i64,
    i64,
    Option<i64>,
    i64,
    Option<i64>,
    String,
    String,
    Option<String>,
);

macro_rules! reply_columns {
    () => {
        (
            assistant_replies::id,
            assistant_replies::room_id,
            assistant_replies::user_id,
            assistant_replies::prompt_message_id,
            assistant_replies::message_id,
            assistant_replies::model,
            assistant_replies::state,
            assistant_replies::error,
        )
    };
}

fn reply_of(row: ReplyRow) -> Reply {
    let (id, room_id, user_id, prompt_message_id, message_id, model, state, error) = row;
    Reply {
        id,
        room_id,
        user_id,
        prompt_message_id,
        message_id,
        model,
        state: ReplyState::parse(&state),
        error,
    }
}

pub fn insert_reply(
    conn: &mut DbConnection,
    room_id: i64,
    user_id: i64,
    prompt_message_id: i64,
    model: &str,
) -> QueryResult<Reply> {
    let now = Utc::now().naive_utc();
    let id: i64 = diesel::insert_into(assistant_replies::table)
        .values((
            assistant_replies::room_id.eq(room_id),
            assistant_replies::user_id.eq(user_id),
            assistant_replies::prompt_message_id.eq(prompt_message_id),
            assistant_replies::model.eq(model),
            assistant_replies::state.eq(ReplyState::Queued.as_str()),
            assistant_replies::stop_requested.eq(false),
            assistant_replies::created_at.eq(now),
            assistant_replies::updated_at.eq(now),
        ))
        .returning(assistant_replies::id)
        .get_result(conn)?;
    Ok(Reply {
        id,
        room_id,
        user_id: Some(user_id),
        prompt_message_id,
        message_id: None,
        model: model.to_owned(),
        state: ReplyState::Queued,
        error: None,
    })
}

pub fn find_reply(conn: &mut DbConnection, id: i64) -> QueryResult<Option<Reply>> {
    Ok(assistant_replies::table
        .find(id)
        .select(reply_columns!())
        .first::<ReplyRow>(conn)
        .optional()?
        .map(reply_of))
}

/// The replies of a room, oldest first (few per conversation; the pages show their states).
pub fn replies_in(conn: &mut DbConnection, room_id: i64) -> QueryResult<Vec<Reply>> {
    Ok(assistant_replies::table
        .filter(assistant_replies::room_id.eq(room_id))
        .order(assistant_replies::id.asc())
        .select(reply_columns!())
        .load::<ReplyRow>(conn)?
        .into_iter()
        .map(reply_of)
        .collect())
}

/// The newest reply of a room, if any.
pub fn last_reply(conn: &mut DbConnection, room_id: i64) -> QueryResult<Option<Reply>> {
    Ok(assistant_replies::table
        .filter(assistant_replies::room_id.eq(room_id))
        .order(assistant_replies::id.desc())
        .select(reply_columns!())
        .first::<ReplyRow>(conn)
        .optional()?
        .map(reply_of))
}

/// Takes a queued reply for streaming, with a lease; `false` when another worker has it or
/// it ended (stopped before it began).
pub fn claim_reply(conn: &mut DbConnection, id: i64, lease: NaiveDateTime) -> QueryResult<bool> {
    let now = Utc::now().naive_utc();
    Ok(diesel::update(
        assistant_replies::table
            .find(id)
            .filter(assistant_replies::state.eq(ReplyState::Queued.as_str())),
    )
    .set((
        assistant_replies::state.eq(ReplyState::Streaming.as_str()),
        assistant_replies::lease_until.eq(lease),
        assistant_replies::updated_at.eq(now),
    ))
    .execute(conn)?
        == 1)
}

/// Renews a streaming reply's lease; answers whether someone asked it to stop.
pub fn renew_lease(conn: &mut DbConnection, id: i64, lease: NaiveDateTime) -> QueryResult<bool> {
    diesel::update(assistant_replies::table.find(id))
        .set(assistant_replies::lease_until.eq(lease))
        .execute(conn)?;
    assistant_replies::table
        .find(id)
        .select(assistant_replies::stop_requested)
        .first(conn)
}

pub fn set_variant(conn: &mut DbConnection, id: i64, variant: &str) -> QueryResult<()> {
    diesel::update(assistant_replies::table.find(id))
        .set(assistant_replies::variant.eq(variant))
        .execute(conn)
        .map(drop)
}

/// Ends a reply. Only a reply still queued or streaming changes (the sweep may have failed
/// it meanwhile); whether it did.
pub fn finish_reply(
    conn: &mut DbConnection,
    id: i64,
    state: ReplyState,
    message_id: Option<i64>,
    error: Option<&str>,
) -> QueryResult<bool> {
    Ok(diesel::update(
        assistant_replies::table.find(id).filter(
            assistant_replies::state
                .eq_any([ReplyState::Queued.as_str(), ReplyState::Streaming.as_str()]),
        ),
    )
    .set((
        assistant_replies::state.eq(state.as_str()),
        assistant_replies::message_id.eq(message_id),
        assistant_replies::error.eq(error),
        assistant_replies::lease_until.eq(None::<NaiveDateTime>),
        assistant_replies::updated_at.eq(Utc::now().naive_utc()),
    ))
    .execute(conn)?
        == 1)
}

pub fn request_stop(conn: &mut DbConnection, id: i64) -> QueryResult<()> {
    diesel::update(assistant_replies::table.find(id))
        .set(assistant_replies::stop_requested.eq(true))
        .execute(conn)
        .map(drop)
}

/// Replies whose node stopped renewing their lease, or that waited in the queue far too
/// long: failed, so people see a retry button instead of a spinner. Returns them.
pub fn sweep_abandoned(
    conn: &mut DbConnection,
    now: NaiveDateTime,
    queued_before: NaiveDateTime,
) -> QueryResult<Vec<Reply>> {
    crate::db::write_transaction(conn, |tx| {
        let lapsed = assistant_replies::table
            .filter(
                assistant_replies::state
                    .eq(ReplyState::Streaming.as_str())
                    .and(assistant_replies::lease_until.lt(now))
                    .or(assistant_replies::state
                        .eq(ReplyState::Queued.as_str())
                        .and(assistant_replies::created_at.lt(queued_before))),
            )
            .select(reply_columns!())
            .load::<ReplyRow>(tx)?;
        let ids: Vec<i64> = lapsed.iter().map(|r| r.0).collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let error = "The answer was interrupted (the server stopped mid-answer). Try again.";
        diesel::update(assistant_replies::table.filter(assistant_replies::id.eq_any(&ids)))
            .set((
                assistant_replies::state.eq(ReplyState::Failed.as_str()),
                assistant_replies::error.eq(error),
                assistant_replies::lease_until.eq(None::<NaiveDateTime>),
                assistant_replies::updated_at.eq(now),
            ))
            .execute(tx)?;
        Ok(lapsed
            .into_iter()
            .map(|row| {
                let mut reply = reply_of(row);
                reply.state = ReplyState::Failed;
                reply.error = Some(error.to_owned());
                reply
            })
            .collect())
    })
}

/// A person's standing instructions and default model.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(as = AssistantPreferences)]
pub struct Preferences {
    pub system_prompt: String,
    /// Empty: the configured default.
    pub model: String,
}

pub fn preferences_of(conn: &mut DbConnection, user_id: i64) -> QueryResult<Preferences> {
    Ok(assistant_preferences::table
        .find(user_id)
        .select((
            assistant_preferences::system_prompt,
            assistant_preferences::model,
        ))
        .first::<(String, String)>(conn)
        .optional()?
        .map(|(system_prompt, model)| Preferences {
            system_prompt,
            model,
        })
        .unwrap_or_default())
}

pub fn save_preferences(
    conn: &mut DbConnection,
    user_id: i64,
    preferences: &Preferences,
) -> QueryResult<()> {
    let now = Utc::now().naive_utc();
    let updated = diesel::update(assistant_preferences::table.find(user_id))
        .set((
            assistant_preferences::system_prompt.eq(&preferences.system_prompt),
            assistant_preferences::model.eq(&preferences.model),
            assistant_preferences::updated_at.eq(now),
        ))
        .execute(conn)?;
    if updated == 0 {
        diesel::insert_into(assistant_preferences::table)
            .values((
                assistant_preferences::user_id.eq(user_id),
                assistant_preferences::system_prompt.eq(&preferences.system_prompt),
                assistant_preferences::model.eq(&preferences.model),
                assistant_preferences::updated_at.eq(now),
            ))
            .execute(conn)?;
    }
    Ok(())
}
