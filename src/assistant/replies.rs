//! The assistant answering in conversations: a person's message is stored, a reply is queued
//! (a durable job for standard rooms; a task on this node for private and ephemeral ones,
//! whose keys and messages live only here), the answer streams to every open tab through the
//! realtime hub in small batches, and is stored as the assistant's message when it ends.
//!
//! - Personal chats: every message is for the assistant. Group rooms: messages that mention
//!   `@<bot_name>`, when the room has the assistant switched on.
//! - Stopping keeps the partial answer, marked stopped. A failure keeps what came, marked
//!   failed, with a retry (regenerate). A node that dies mid-answer stops renewing the reply's
//!   lease, and a sweep marks it failed: nobody is left with a spinner.
//! - The first exchange of a chat gets a short title from the model, replacing "New chat".
//!
//! Frames (`{"type":"assistant", "event": …}`, see docs/protocol.md): `queued`, `started`,
//! `delta` (`seq`, `text`), `finished` (the reply with its state), `titled`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::chats::{self, AssistantRoom, Mode, Reply, ReplyState};
use super::service::{Ask, StartError};
use super::usage::{Payer, Source};
use super::{Assistant, ChatMessage, Role};
use crate::chat::rooms::{ChatService, MessageView, PostListener};
use crate::chat::{Privacy, Room, RoomAccess, RoomRole};
use crate::db::{Db, DbError};
use crate::error::AppError;
use crate::history::{Cursor, MemberKind};
use crate::jobs::{JobError, JobRegistry, NewJob, Queue};
use crate::settings::AssistantSettings;

pub const REPLY_JOB: &str = "assistant.reply";
pub const TITLE_JOB: &str = "assistant.title";
/// A streaming reply renews its lease this often; a lease lapses after three missed renewals.
const LEASE_EVERY: Duration = Duration::from_secs(5);
const LEASE_FOR: chrono::TimeDelta = chrono::TimeDelta::seconds(15);
/// How often a stream checks whether someone on another node pressed stop.
const STOP_CHECK_EVERY: Duration = Duration::from_secs(1);
/// A reply still queued after this long is given up (its job died with its node).
const QUEUED_AT_MOST: chrono::TimeDelta = chrono::TimeDelta::minutes(10);
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// Largest piece of text in one `delta` frame (frames are relayed between nodes).
const MAX_DELTA_BYTES: usize = 2_000;
/// A personal chat's whole recent conversation goes to the model (trimmed to fit its window).
const CHAT_CONTEXT_MESSAGES: usize = 200;
pub const NEW_CHAT_TITLE: &str = "New chat";

#[derive(Clone)]
pub struct Replies {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    chat: ChatService,
    assistant: Assistant,
    queue: Queue,
    settings: AssistantSettings,
    /// Replies streaming on this node, to stop them at once.
    running: Mutex<HashMap<i64, CancellationToken>>,
    /// Which rooms the assistant answers in; every post asks, so it is cached (changes made
    /// on this node invalidate it; other nodes' changes show within its lifetime).
    rooms: moka::sync::Cache<i64, Option<AssistantRoom>>,
    shutdown: CancellationToken,
}

#[derive(Serialize, Deserialize)]
struct ReplyJob {
    reply: i64,
}

#[derive(Serialize, Deserialize)]
struct TitleJob {
    room: i64,
    user: i64,
}

/// The frame every follower of a room gets about a reply.
fn frame(event: &str, room: i64, body: serde_json::Value) -> String {
    let mut frame = json!({ "type": "assistant", "event": event, "room": room });
    if let (Some(frame), serde_json::Value::Object(body)) = (frame.as_object_mut(), body) {
        frame.extend(body);
    }
    frame.to_string()
}

/// Whether `body` mentions `@name` as a word (case-insensitive).
pub fn mentions(body: &str, name: &str) -> bool {
    let wanted = format!("@{}", name.to_ascii_lowercase());
    let lower = body.to_ascii_lowercase();
    lower.match_indices(&wanted).any(|(at, _)| {
        let before_ok = lower[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric() && c != '@');
        let after_ok = lower[at + wanted.len()..]
            .chars()
            .next()
            .is_none_or(|c| !c.is_alphanumeric() && c != '_' && c != '-');
        before_ok && after_ok
    })
}

/// Splits `text` into pieces of at most `max` bytes, at character boundaries.
fn pieces(text: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut end = max;
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        out.push(&rest[..end]);
        rest = &rest[end..];
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// A model's title, tidied: one line, no quotes or trailing period, at most 60 characters.
fn tidy_title(raw: &str) -> String {
    let line = raw
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let line = line.strip_prefix("Title:").unwrap_or(line).trim();
    let trimmed = line
        .trim_matches(|c: char| matches!(c, '"' | '\'' | '“' | '”' | '*' | '#' | '`'))
        .trim_end_matches(['.', '!', ' '])
        .trim();
    let clean = super::prompt::strip_control(trimmed);
    let mut title: String = clean.chars().take(60).collect();
    if clean.chars().count() > 60 {
        title = title.trim_end().to_owned() + "…";
    }
    title
}

impl Replies {
    pub fn new(
        db: Db,
        chat: ChatService,
        assistant: Assistant,
        queue: Queue,
        settings: AssistantSettings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                chat,
                assistant,
                queue,
                settings,
                running: Mutex::new(HashMap::new()),
                rooms: moka::sync::Cache::builder()
                    .max_capacity(10_000)
                    .time_to_live(Duration::from_secs(5))
                    .build(),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    pub fn bot_name(&self) -> &str {
        &self.inner.settings.bot_name
    }

    pub fn register_jobs(&self, registry: &mut JobRegistry) {
        let this = self.clone();
        registry.register(REPLY_JOB, move |job| {
            let this = this.clone();
            async move {
                let ReplyJob { reply } = job.payload()?;
                this.run(reply).await
            }
        });
        let this = self.clone();
        registry.register(TITLE_JOB, move |job| {
            let this = this.clone();
            async move {
                let TitleJob { room, user } = job.payload()?;
                this.title(room, user).await
            }
        });
    }

    /// Sweeps abandoned replies now and every 15 s until [`Replies::stop`].
    pub fn spawn_sweeper(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(error) = this.sweep().await {
                    tracing::warn!(error = %error, "cannot sweep abandoned assistant replies");
                }
                tokio::select! {
                    () = tokio::time::sleep(SWEEP_EVERY) => {}
                    () = this.inner.shutdown.cancelled() => return,
                }
            }
        });
    }

    /// Stops sweeping and ends this node's streams as stopped by shutdown: what they had is
    /// stored (their state says why they ended).
    pub fn stop(&self) {
        self.inner.shutdown.cancel();
        let running = self
            .inner
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for token in running.values() {
            token.cancel();
        }
    }

    /// Fails replies whose node died (lease lapsed) or whose job never ran; runs every 15 s.
    pub async fn sweep(&self) -> Result<(), DbError> {
        let now = Utc::now();
        let swept = self
            .inner
            .db
            .run(move |conn| {
                chats::sweep_abandoned(conn, now.naive_utc(), (now - QUEUED_AT_MOST).naive_utc())
                    .map_err(DbError::from)
            })
            .await?;
        for reply in swept {
            tracing::warn!(
                reply = reply.id,
                room = reply.room_id,
                "assistant reply abandoned"
            );
            self.publish_finished(&reply);
        }
        Ok(())
    }

    /// The assistant's settings of a room (cached).
    pub async fn room_setting(&self, room_id: i64) -> Result<Option<AssistantRoom>, AppError> {
        if let Some(cached) = self.inner.rooms.get(&room_id) {
            return Ok(cached);
        }
        let found = self
            .inner
            .db
            .run(move |conn| chats::find_room(conn, room_id).map_err(AppError::from))
            .await?;
        self.inner.rooms.insert(room_id, found.clone());
        Ok(found)
    }

    /// The cache of rooms' assistant settings (admin's caches page).
    pub fn room_cache_entries(&self) -> u64 {
        self.inner.rooms.entry_count()
    }

    pub fn clear_room_cache(&self) {
        self.inner.rooms.invalidate_all();
    }

    pub fn forget_room(&self, room_id: i64) {
        self.inner.rooms.invalidate(&room_id);
    }

    fn publish(&self, room: i64, event: &str, body: serde_json::Value) {
        self.inner
            .chat
            .hub()
            .publish_everywhere(room, frame(event, room, body));
    }

    fn publish_finished(&self, reply: &Reply) {
        self.publish(reply.room_id, "finished", json!({ "reply": reply }));
    }

    /// Queues an answer to `prompt_message_id` in `room`, asked by `user_id`.
    pub async fn request(
        &self,
        room: &Room,
        user_id: i64,
        prompt_message_id: i64,
        setting: &AssistantRoom,
    ) -> Result<Reply, AppError> {
        let model = if setting.model.is_empty() {
            let preferred = self.preferences(user_id).await?.model;
            let catalog = self.inner.assistant.catalog();
            if catalog.model(&preferred).is_some() {
                preferred
            } else {
                catalog
                    .default_model()
                    .map(|m| m.alias.clone())
                    .unwrap_or_default()
            }
        } else {
            setting.model.clone()
        };
        let room_id = room.id;
        let reply = self
            .inner
            .db
            .run(move |conn| {
                chats::insert_reply(conn, room_id, user_id, prompt_message_id, &model)
                    .map_err(AppError::from)
            })
            .await?;
        self.publish(room.id, "queued", json!({ "reply": reply }));
        self.dispatch(room.privacy, reply.id).await?;
        Ok(reply)
    }

    /// Standard rooms' replies survive a restart in the job queue; private and ephemeral ones
    /// can only be answered where their keys and messages are, this node.
    async fn dispatch(&self, privacy: Privacy, reply: i64) -> Result<(), AppError> {
        if privacy == Privacy::Standard {
            let job = NewJob::new(REPLY_JOB, &ReplyJob { reply })
                .map_err(AppError::internal)?
                .max_attempts(1);
            self.inner
                .queue
                .enqueue(job)
                .await
                .map_err(AppError::internal)?;
        } else {
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(error) = this.run(reply).await {
                    tracing::error!(reply, error = %error, "assistant reply failed");
                }
            });
        }
        Ok(())
    }

    pub async fn preferences(&self, user_id: i64) -> Result<chats::Preferences, AppError> {
        self.inner
            .db
            .run(move |conn| chats::preferences_of(conn, user_id).map_err(AppError::from))
            .await
    }

    /// Runs one reply from queued to stored. Idempotent: a reply that is not queued any more
    /// (another worker has it, it was stopped or swept) is left alone.
    async fn run(&self, reply_id: i64) -> Result<(), JobError> {
        let db = &self.inner.db;
        let lease = (Utc::now() + LEASE_FOR).naive_utc();
        let claimed = db
            .run(move |conn| chats::claim_reply(conn, reply_id, lease).map_err(DbError::from))
            .await
            .map_err(|e| JobError::Retry(e.into()))?;
        if !claimed {
            return Ok(());
        }
        let reply = db
            .run(move |conn| chats::find_reply(conn, reply_id).map_err(DbError::from))
            .await
            .map_err(|e| JobError::Retry(e.into()))?
            .ok_or_else(|| JobError::Permanent(anyhow::anyhow!("reply {reply_id} vanished")))?;
        let token = CancellationToken::new();
        self.running().insert(reply.id, token.clone());
        let ended = self.stream(&reply, &token).await;
        self.running().remove(&reply.id);
        let (state, text, error) = match ended {
            (ReplyState::Stopped, text, _) if self.inner.shutdown.is_cancelled() => (
                ReplyState::Failed,
                text,
                Some("The server restarted mid-answer; try again.".to_owned()),
            ),
            other => other,
        };
        self.finish(&reply, state, text, error).await;
        Ok(())
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<i64, CancellationToken>> {
        self.inner
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Streams the answer; returns how it ended, the text, and the error to show.
    async fn stream(
        &self,
        reply: &Reply,
        cancel: &CancellationToken,
    ) -> (ReplyState, String, Option<String>) {
        let Some(user) = reply.user_id else {
            return failed("The person who asked is gone.");
        };
        let access = match self.inner.chat.access(user, reply.room_id).await {
            Ok(access) => access,
            Err(_) => return failed("The person who asked can no longer read this room."),
        };
        let setting = match self.room_setting(reply.room_id).await {
            Ok(Some(setting)) => setting,
            _ => return failed("The assistant is not set up in this room any more."),
        };
        let messages = match self.conversation(&access, user, &setting, reply).await {
            Ok(messages) => messages,
            Err(AppError::Coded {
                code: "private_locked",
                ..
            }) => {
                return failed(
                    "This private conversation is locked on the server; unlock it and try again.",
                );
            }
            Err(error) => {
                tracing::error!(error = %error, reply = reply.id, "cannot read the conversation");
                return failed("The conversation could not be read; try again.");
            }
        };
        let source = match setting.mode {
            Mode::Chat => Source::Chat,
            Mode::Room => Source::Room,
        };
        let ask = Ask {
            model: (!reply.model.is_empty()).then(|| reply.model.clone()),
            messages,
            max_tokens: None,
            temperature: None,
            payer: Payer {
                user_id: Some(user),
                tenant_id: Some(access.room.tenant_id),
                source,
            },
        };
        let mut generation = match self.inner.assistant.start(ask).await {
            Ok(generation) => generation,
            Err(error) => {
                let message = match &error {
                    StartError::NoModels => "No assistant models are configured.".to_owned(),
                    StartError::UnknownModel(name) => {
                        format!("The model {name:?} is not available any more; pick another.")
                    }
                    other => other.to_string(),
                };
                return failed(&message);
            }
        };
        let variant = generation.route.variant();
        let reply_id = reply.id;
        let _ = self
            .inner
            .db
            .run(move |conn| chats::set_variant(conn, reply_id, &variant).map_err(DbError::from))
            .await;
        let label = self
            .inner
            .assistant
            .catalog()
            .model(&generation.model)
            .map(|m| m.label.clone())
            .unwrap_or_else(|| generation.model.clone());
        self.publish(
            reply.room_id,
            "started",
            json!({ "reply": Reply { state: ReplyState::Streaming, ..reply.clone() }, "label": label }),
        );

        let mut text = String::new();
        let mut pending = String::new();
        let mut seq: u64 = 0;
        let batch = Duration::from_millis(self.inner.settings.stream_batch_ms);
        let mut flush = tokio::time::interval(batch);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop_check = tokio::time::interval(STOP_CHECK_EVERY);
        stop_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_lease = tokio::time::Instant::now();
        let outcome = loop {
            tokio::select! {
                next = generation.next() => match next {
                    Ok(Some(piece)) => {
                        pending.push_str(&piece);
                        // The first words go out at once; later ones in batches.
                        if seq == 0 {
                            self.send_pending(reply.room_id, reply.id, &mut pending, &mut text, &mut seq);
                        }
                    }
                    Ok(None) => break (ReplyState::Completed, None),
                    Err(error) => break (ReplyState::Failed, Some(format!("The answer broke off: {error}"))),
                },
                _ = flush.tick() => {
                    self.send_pending(reply.room_id, reply.id, &mut pending, &mut text, &mut seq);
                }
                _ = stop_check.tick() => {
                    let renew = last_lease.elapsed() >= LEASE_EVERY;
                    if renew {
                        last_lease = tokio::time::Instant::now();
                    }
                    if self.stop_requested(reply.id, renew).await {
                        break (ReplyState::Stopped, None);
                    }
                }
                () = cancel.cancelled() => break (ReplyState::Stopped, None),
            }
        };
        self.send_pending(reply.room_id, reply.id, &mut pending, &mut text, &mut seq);
        // Dropping the generation ends the provider call and bills what was generated.
        drop(generation);
        let (state, error) = outcome;
        (state, text, error)
    }

    fn send_pending(
        &self,
        room: i64,
        reply: i64,
        pending: &mut String,
        text: &mut String,
        seq: &mut u64,
    ) {
        if pending.is_empty() {
            return;
        }
        for piece in pieces(pending, MAX_DELTA_BYTES) {
            *seq += 1;
            self.publish(
                room,
                "delta",
                json!({ "reply_id": reply, "seq": *seq, "text": piece }),
            );
        }
        text.push_str(pending);
        pending.clear();
    }

    /// Whether someone asked `reply` to stop (on any node); renews its lease when `renew`.
    async fn stop_requested(&self, reply: i64, renew: bool) -> bool {
        let lease = (Utc::now() + LEASE_FOR).naive_utc();
        let asked = self
            .inner
            .db
            .run(move |conn| {
                if renew {
                    chats::renew_lease(conn, reply, lease)
                } else {
                    use crate::schema::assistant_replies as r;
                    use diesel::prelude::*;
                    r::table.find(reply).select(r::stop_requested).first(conn)
                }
                .map_err(DbError::from)
            })
            .await;
        asked.unwrap_or(false)
    }

    /// Stores what was generated and tells every tab how the reply ended.
    async fn finish(&self, reply: &Reply, state: ReplyState, text: String, error: Option<String>) {
        let mut state = state;
        let mut error = error;
        let mut message_id = None;
        if !text.trim().is_empty()
            && let Some(user) = reply.user_id
        {
            match self
                .inner
                .chat
                .post_as_assistant(reply.room_id, user, text, format!("reply:{}", reply.id))
                .await
            {
                Ok(view) => message_id = Some(view.id),
                Err(e) => {
                    tracing::error!(error = %e, reply = reply.id, "cannot store the answer");
                    state = ReplyState::Failed;
                    error = Some("The answer could not be stored; try again.".to_owned());
                }
            }
        }
        let (id, room, error_text) = (reply.id, reply.room_id, error.clone());
        let changed = self
            .inner
            .db
            .run(move |conn| {
                let changed =
                    chats::finish_reply(conn, id, state, message_id, error_text.as_deref())?;
                chats::touch_room(conn, room)?;
                Ok::<_, DbError>(changed)
            })
            .await
            .unwrap_or(false);
        if !changed {
            return; // the sweep already ended it, and said so
        }
        let ended = Reply {
            state,
            message_id,
            error,
            ..reply.clone()
        };
        self.publish_finished(&ended);
        if state == ReplyState::Completed
            && let Some(user) = reply.user_id
            && let Ok(Some(setting)) = self.room_setting(reply.room_id).await
            && setting.mode == Mode::Chat
            && setting.untitled
        {
            self.schedule_title(reply.room_id, user).await;
        }
    }

    async fn schedule_title(&self, room: i64, user: i64) {
        let privacy = match self.inner.chat.access(user, room).await {
            Ok(access) => access.room.privacy,
            Err(_) => return,
        };
        if privacy == Privacy::Standard {
            let job = NewJob::new(TITLE_JOB, &TitleJob { room, user }).map(|j| j.max_attempts(2));
            if let Ok(job) = job
                && let Err(error) = self.inner.queue.enqueue(job).await
            {
                tracing::warn!(error = %error, room, "cannot queue a chat title");
            }
        } else {
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(error) = this.title(room, user).await {
                    tracing::warn!(error = %error, room, "cannot title a chat");
                }
            });
        }
    }

    /// The conversation the model sees: the instructions (the deployment's, the person's,
    /// the chat's or room's), then the room's messages up to the one being answered.
    async fn conversation(
        &self,
        access: &RoomAccess,
        user: i64,
        setting: &AssistantRoom,
        reply: &Reply,
    ) -> Result<Vec<ChatMessage>, AppError> {
        let limit = match setting.mode {
            Mode::Chat => CHAT_CONTEXT_MESSAGES,
            Mode::Room => self.inner.settings.room_context_messages,
        };
        let history = self
            .inner
            .chat
            .history_of(
                access,
                user,
                Cursor::Before(reply.prompt_message_id.saturating_add(1)),
                limit,
            )
            .await?;
        let preferences = self.preferences(user).await?;
        let mut instructions = vec![self.inner.settings.system_prompt.clone()];
        if setting.mode == Mode::Room {
            instructions.push(format!(
                "You are in the group room \"{}\", called in as @{}. Each message starts with its \
                 author's name. Answer the latest message that mentions you, for everyone.",
                access.room.name, self.inner.settings.bot_name
            ));
        }
        instructions.push(preferences.system_prompt);
        instructions.push(setting.system_prompt.clone());
        let system: Vec<String> = instructions
            .into_iter()
            .filter(|s| !s.trim().is_empty())
            .collect();
        let mut messages = vec![ChatMessage::new(Role::System, system.join("\n\n"))];
        for message in history {
            let Some(body) = message.body else { continue };
            let (role, content) = match (message.sender.kind, setting.mode) {
                (MemberKind::Assistant, _) => (Role::Assistant, body),
                (_, Mode::Chat) => (Role::User, body),
                (_, Mode::Room) => (Role::User, format!("{}: {body}", message.sender.name)),
            };
            messages.push(ChatMessage::new(role, content));
        }
        Ok(messages)
    }

    /// Replaces "New chat" with a title the model writes from the first exchange.
    async fn title(&self, room: i64, user: i64) -> Result<(), JobError> {
        let Ok(Some(setting)) = self.room_setting(room).await else {
            return Ok(());
        };
        if !setting.untitled {
            return Ok(());
        }
        let Ok(access) = self.inner.chat.access(user, room).await else {
            return Ok(());
        };
        let first = self
            .inner
            .chat
            .history_of(&access, user, Cursor::After(0), 4)
            .await
            .map_err(|e| JobError::Retry(anyhow::anyhow!("{e}")))?;
        let mut transcript = String::new();
        for message in first {
            let Some(body) = message.body else { continue };
            let who = if message.sender.kind == MemberKind::Assistant {
                "Assistant"
            } else {
                "User"
            };
            let body: String = body.chars().take(1_500).collect();
            transcript.push_str(&format!("{who}: {body}\n\n"));
        }
        let ask = Ask {
            model: (!setting.model.is_empty()).then(|| setting.model.clone()),
            messages: vec![
                ChatMessage::new(
                    Role::System,
                    "You name conversations. Reply with only a title of 2 to 6 words in the \
                     conversation's language: no quotes, no final punctuation.",
                ),
                ChatMessage::new(Role::User, format!("{transcript}Title:")),
            ],
            max_tokens: Some(24),
            temperature: Some(0.3),
            payer: Payer {
                user_id: Some(user),
                tenant_id: Some(access.room.tenant_id),
                source: Source::Chat,
            },
        };
        let mut generation = self
            .inner
            .assistant
            .start(ask)
            .await
            .map_err(|e| JobError::Retry(anyhow::anyhow!("{e}")))?;
        let mut raw = String::new();
        while let Some(piece) = generation
            .next()
            .await
            .map_err(|e| JobError::Retry(anyhow::anyhow!("{e}")))?
        {
            raw.push_str(&piece);
        }
        let title = tidy_title(&raw);
        if title.is_empty() {
            return Ok(());
        }
        let stored = title.clone();
        let set = self
            .inner
            .db
            .run(move |conn| chats::set_generated_title(conn, room, &stored).map_err(DbError::from))
            .await
            .map_err(|e| JobError::Retry(e.into()))?;
        self.forget_room(room);
        if set {
            self.publish(room, "titled", json!({ "title": title }));
        }
        Ok(())
    }

    /// Asks a reply to stop: at once on this node, within a second on another. A reply that
    /// had not started ends stopped, with nothing to keep.
    pub async fn stop_reply(&self, user: i64, reply_id: i64) -> Result<Reply, AppError> {
        let reply = self.visible_reply(user, reply_id).await?;
        if reply.state.is_done() {
            return Ok(reply);
        }
        // In a group room, an answer is stopped by who asked for it or by a moderator.
        let access = self.inner.chat.access(user, reply.room_id).await?;
        let moderates = matches!(
            access.room_role,
            Some(RoomRole::Owner | RoomRole::Moderator)
        );
        if reply.user_id != Some(user) && !moderates {
            return Err(AppError::Forbidden(
                "Only who asked, or the room's moderators, can stop this answer.".to_owned(),
            ));
        }
        let db = &self.inner.db;
        let queued_ended = db
            .run(move |conn| {
                chats::request_stop(conn, reply_id)?;
                if reply.state == ReplyState::Queued {
                    chats::finish_reply(conn, reply_id, ReplyState::Stopped, None, None)
                        .map_err(AppError::from)
                } else {
                    Ok(false)
                }
            })
            .await?;
        if let Some(token) = self.running().get(&reply_id) {
            token.cancel();
        }
        let now = self
            .inner
            .db
            .run(move |conn| chats::find_reply(conn, reply_id).map_err(AppError::from))
            .await?
            .ok_or_else(|| AppError::NotFound("No such answer.".to_owned()))?;
        if queued_ended {
            self.publish_finished(&now);
        }
        Ok(now)
    }

    /// A reply the caller may see (they can read its room), or 404.
    pub async fn visible_reply(&self, user: i64, reply_id: i64) -> Result<Reply, AppError> {
        let reply = self
            .inner
            .db
            .run(move |conn| chats::find_reply(conn, reply_id).map_err(AppError::from))
            .await?
            .ok_or_else(|| AppError::NotFound("No such answer.".to_owned()))?;
        self.inner.chat.access(user, reply.room_id).await?;
        Ok(reply)
    }

    /// Answers the last question of `room` again: the previous answer's message is deleted
    /// and a new reply starts. Refused while an answer is still coming.
    pub async fn regenerate(&self, user: i64, room_id: i64) -> Result<Reply, AppError> {
        let access = self.inner.chat.access(user, room_id).await?;
        if !matches!(
            access.room_role,
            Some(RoomRole::Owner | RoomRole::Moderator | RoomRole::Member)
        ) {
            return Err(AppError::Forbidden(
                "Only members who may post can ask for a new answer.".to_owned(),
            ));
        }
        let setting = self
            .room_setting(room_id)
            .await?
            .filter(|s| s.enabled)
            .ok_or_else(|| {
                AppError::Conflict("The assistant is not switched on in this room.".to_owned())
            })?;
        let last = self
            .inner
            .db
            .run(move |conn| chats::last_reply(conn, room_id).map_err(AppError::from))
            .await?
            .ok_or_else(|| AppError::NotFound("There is no answer to regenerate.".to_owned()))?;
        if !last.state.is_done() {
            return Err(AppError::Conflict(
                "The assistant is still answering; stop it first.".to_owned(),
            ));
        }
        if let Some(message) = last.message_id {
            self.inner
                .chat
                .delete_assistant_message(&access, user, message)
                .await?;
        }
        self.request(&access.room, user, last.prompt_message_id, &setting)
            .await
    }

    /// Switches the assistant on or off in a group room, with its model (already checked):
    /// room owners and moderators only; a personal chat is not a group room. Audited.
    pub async fn switch_in_room(
        &self,
        access: &RoomAccess,
        actor: i64,
        enabled: bool,
        model: String,
    ) -> Result<AssistantRoom, AppError> {
        let current = self.room_setting(access.room.id).await?;
        if current.as_ref().is_some_and(|s| s.mode == Mode::Chat) {
            return Err(AppError::Conflict(
                "This is a personal assistant chat; change it on its own page.".to_owned(),
            ));
        }
        if !matches!(
            access.room_role,
            Some(RoomRole::Owner | RoomRole::Moderator)
        ) {
            return Err(AppError::Forbidden(
                "Only the room's owners and moderators switch the assistant on or off.".to_owned(),
            ));
        }
        let setting = AssistantRoom {
            room_id: access.room.id,
            mode: Mode::Room,
            enabled,
            model,
            system_prompt: current.map(|s| s.system_prompt).unwrap_or_default(),
            untitled: false,
        };
        let saved = setting.clone();
        self.inner
            .db
            .run(move |conn| chats::save_room(conn, &saved).map_err(AppError::from))
            .await?;
        self.forget_room(access.room.id);
        crate::audit::record_now(
            &self.inner.db,
            crate::audit::AuditEvent {
                event: "room.assistant_changed",
                actor_user_id: Some(actor),
                tenant_id: Some(access.room.tenant_id),
                subject: Some(format!("room:{}", access.room.id)),
                details: json!({ "enabled": setting.enabled, "model": setting.model }),
                ..crate::audit::AuditEvent::default()
            },
        )
        .await?;
        Ok(setting)
    }

    /// What a room's followers need to draw its replies (states, errors) beside messages.
    pub async fn replies_in(&self, room_id: i64) -> Result<Vec<Reply>, AppError> {
        self.inner
            .db
            .run(move |conn| chats::replies_in(conn, room_id).map_err(AppError::from))
            .await
    }

    async fn on_posted(&self, room: Room, author: i64, message_id: i64, body: String) {
        let setting = match self.room_setting(room.id).await {
            Ok(Some(setting)) if setting.enabled => setting,
            Ok(_) => return,
            Err(error) => {
                tracing::warn!(error = %error, room = room.id, "cannot read the assistant's room settings");
                return;
            }
        };
        let wanted = match setting.mode {
            Mode::Chat => true,
            Mode::Room => mentions(&body, &self.inner.settings.bot_name),
        };
        if !wanted {
            return;
        }
        if let Err(error) = self.request(&room, author, message_id, &setting).await {
            tracing::error!(error = %error, room = room.id, "cannot queue an assistant reply");
        }
    }
}

impl PostListener for Replies {
    fn posted(&self, room: &Room, author: i64, message: &MessageView) {
        // Only a person's message can call the assistant; the cheap test (a mention, or a
        // room that may be a chat) runs before any lookup.
        let Some(body) = message.body.clone() else {
            return;
        };
        if message.sender.kind != MemberKind::User {
            return;
        }
        let this = self.clone();
        let room = room.clone();
        let message_id = message.id;
        tokio::spawn(async move { this.on_posted(room, author, message_id, body).await });
    }
}

fn failed(message: &str) -> (ReplyState, String, Option<String>) {
    (ReplyState::Failed, String::new(), Some(message.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_whole_words() {
        assert!(mentions("@assistant what is 2+2?", "assistant"));
        assert!(mentions("hey @Assistant, help", "assistant"));
        assert!(mentions("(@assistant)", "assistant"));
        assert!(!mentions("email me at a@assistant.com", "assistant"));
        assert!(!mentions("@assistants are great", "assistant"));
        assert!(!mentions("no mention here", "assistant"));
        assert!(mentions("@bot-1 go", "bot-1"));
    }

    #[test]
    fn titles_are_tidied() {
        assert_eq!(
            tidy_title("\"Rust lifetimes explained.\"\n"),
            "Rust lifetimes explained"
        );
        assert_eq!(tidy_title("Title: **Paris trip**"), "Paris trip");
        assert_eq!(tidy_title(&"word ".repeat(30)).chars().count(), 60);
    }

    #[test]
    fn pieces_split_at_character_boundaries() {
        let text = "é".repeat(10);
        let parts = pieces(&text, 3);
        assert!(parts.iter().all(|p| p.len() <= 3));
        assert_eq!(parts.concat(), text);
    }
}
