//! Message history: persistence, encryption at rest, the blind search index, pagination and
//! export, behind the [`HistoryStore`] trait.
//!
//! The store knows nothing of permissions: the chat module decides who may read or write a
//! room (through the `Authorizer`) and only then asks the store. What the store guarantees:
//!
//! - message bodies are sealed (AES-256-GCM) under the room's data key, and the data key is
//!   stored only wrapped by the key provider's KEK ([`keys`]);
//! - the search index holds keyed hashes of normalized words, never the words ([`words`]);
//! - ids grow in commit order within a room, so `after=<id>` never skips a message that
//!   committed late (posts to one room are serialized);
//! - a retried post with the same idempotency key answers the stored message, never a copy.

pub mod keys;
mod memory;
pub mod retention;
mod sql;
pub mod vault;
pub mod words;

use chrono::NaiveDateTime;
use serde::Serialize;

pub use memory::MemoryHistoryStore;
pub use sql::{Change, ChangeHook, SqlHistoryStore, erase_rooms};

use crate::db::DbError;

/// Who a room member or message sender is: a person, a device or the assistant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberKind {
    User,
    Device,
    Assistant,
}

impl MemberKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Device => "device",
            Self::Assistant => "assistant",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "user" => Some(Self::User),
            "device" => Some(Self::Device),
            "assistant" => Some(Self::Assistant),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sender {
    pub kind: MemberKind,
    pub id: i64,
}

impl Sender {
    pub fn user(id: i64) -> Self {
        Self {
            kind: MemberKind::User,
            id,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewMessage {
    pub sender: Sender,
    pub body: String,
    pub reply_to: Option<i64>,
    pub idempotency_key: Option<String>,
}

/// A message as read back, its body opened. `body` is `None` for a deleted message (the
/// tombstone keeps its place in the history).
#[derive(Debug, Clone, Serialize)]
pub struct StoredMessage {
    pub id: i64,
    pub room_id: i64,
    pub sender_kind: MemberKind,
    /// `None` once the sender's account was deleted.
    pub sender_id: Option<i64>,
    pub body: Option<String>,
    pub reply_to: Option<i64>,
    pub created_at: NaiveDateTime,
    pub edited_at: Option<NaiveDateTime>,
    pub deleted_at: Option<NaiveDateTime>,
}

/// A stored message and whether this call stored it (false: an earlier post with the same
/// idempotency key did).
#[derive(Debug, Clone)]
pub struct Appended {
    pub message: StoredMessage,
    pub created: bool,
}

/// Which page of a room's history: the newest, or the messages just before / after an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    Latest,
    Before(i64),
    After(i64),
}

#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    /// Normalized terms ([`words::query_terms`]); every one must match.
    pub terms: Vec<String>,
    /// The rooms to look in: the ones the caller may read.
    pub rooms: Vec<i64>,
    pub sender: Option<Sender>,
    pub from: Option<NaiveDateTime>,
    pub to: Option<NaiveDateTime>,
    /// Only messages older than this id (the next page of results).
    pub before: Option<i64>,
    pub limit: usize,
}

/// A search result: the message and an HTML snippet with the matches in `<mark>`.
#[derive(Debug, Clone)]
pub struct Hit {
    pub message: StoredMessage,
    pub snippet_html: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RotationReport {
    /// Data keys re-wrapped under the current KEK.
    pub rewrapped: u64,
    /// Data keys that were already under the current KEK.
    pub current: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("no such message in this room")]
    NotFound,
    #[error("the message replied to is not in this room")]
    BadReply,
    #[error("a deleted message cannot be edited")]
    Deleted,
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
    /// A private room whose owner has not unlocked their personal key (on this node).
    #[error("room {0} is private and locked")]
    Locked(i64),
    /// A stored body does not open: damaged data or a key that does not match.
    #[error("message {0} cannot be decrypted")]
    Undecryptable(i64),
}

impl From<diesel::result::Error> for HistoryError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Db(DbError::from(e))
    }
}

impl From<HistoryError> for crate::error::AppError {
    fn from(e: HistoryError) -> Self {
        match e {
            HistoryError::NotFound => Self::NotFound("No such message in this room.".to_owned()),
            HistoryError::BadReply => {
                Self::BadRequest("reply_to: no such message in this room".to_owned())
            }
            HistoryError::Deleted => {
                Self::Conflict("The message was deleted; it cannot be edited.".to_owned())
            }
            HistoryError::Db(e) => e.into(),
            HistoryError::Locked(_) => Self::Coded {
                status: actix_web::http::StatusCode::LOCKED,
                code: "private_locked",
                message: "This private conversation is locked: unlock your private conversations \
                    with your password (POST /api/v1/me/private/unlock, or the form on the room's \
                    page)."
                    .to_owned(),
                retry_after_secs: None,
            },
            HistoryError::Keys(keys::KeyError::Unavailable(why)) => {
                // The details (Vault's address, its answer) are for the operator's log, not for
                // whoever happened to open a room.
                tracing::error!(error = %why, "key provider unavailable");
                Self::Unavailable(
                    "The messages' key provider cannot be reached right now; try again shortly."
                        .to_owned(),
                )
            }
            other => Self::internal(anyhow::Error::new(other)),
        }
    }
}

/// Where messages live. The SQL store serves `standard` and `private` rooms (a private room's
/// data key is wrapped by its owner's personal key); the memory store serves `ephemeral`
/// ones.
#[async_trait::async_trait]
pub trait HistoryStore: Send + Sync {
    /// Stores a message (or returns the one an earlier post with the same idempotency key
    /// stored).
    async fn append(&self, room_id: i64, message: NewMessage) -> Result<Appended, HistoryError>;
    async fn edit(
        &self,
        room_id: i64,
        message_id: i64,
        body: String,
    ) -> Result<StoredMessage, HistoryError>;
    /// Deletes the body and its index entries; the tombstone stays.
    async fn delete(&self, room_id: i64, message_id: i64) -> Result<StoredMessage, HistoryError>;
    async fn get(
        &self,
        room_id: i64,
        message_id: i64,
    ) -> Result<Option<StoredMessage>, HistoryError>;
    /// Up to `limit` messages in chronological order.
    async fn page(
        &self,
        room_id: i64,
        cursor: Cursor,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, HistoryError>;
    /// Newest first.
    async fn search(&self, query: &SearchQuery) -> Result<Vec<Hit>, HistoryError>;
    /// Every message `sender` wrote, oldest first, in every room but `except`.
    async fn by_sender(
        &self,
        sender: Sender,
        except: Vec<i64>,
    ) -> Result<Vec<StoredMessage>, HistoryError>;
    /// Re-wraps every data key that another KEK wrapped under the provider's current one.
    async fn rotate_keys(&self) -> Result<RotationReport, HistoryError>;
}
