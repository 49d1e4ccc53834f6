//! The history of `ephemeral` rooms: kept in this process's memory only, never written to the
//! database or any file, gone when the room is deleted or the server restarts.
//!
//! Each room keeps at most `chat.ephemeral_max_messages` messages; posting past that drops the
//! oldest. Retention applies as for stored rooms ([`MemoryHistoryStore::purge_before`]).
//! With several nodes each holds its own: an ephemeral room lives on the node that serves it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{NaiveDateTime, Utc};

use super::words::{highlight, matches_all};
use super::{
    Appended, Cursor, HistoryError, HistoryStore, Hit, NewMessage, RotationReport, SearchQuery,
    Sender, StoredMessage,
};

#[derive(Default)]
struct RoomLog {
    /// Oldest first; ids grow.
    messages: VecDeque<StoredMessage>,
    /// Idempotency key → message id, for the messages still held.
    keys: HashMap<(Sender, String), i64>,
}

impl RoomLog {
    fn index_of(&self, id: i64) -> Option<usize> {
        self.messages.binary_search_by_key(&id, |m| m.id).ok()
    }
}

/// See the module docs.
pub struct MemoryHistoryStore {
    rooms: Mutex<HashMap<i64, RoomLog>>,
    next_id: AtomicI64,
    max_per_room: usize,
}

impl MemoryHistoryStore {
    pub fn new(max_per_room: usize) -> Self {
        Self {
            rooms: Mutex::new(HashMap::new()),
            next_id: AtomicI64::new(1),
            max_per_room: max_per_room.max(1),
        }
    }

    /// Runs `change` on one stored message, under the lock.
    fn change(
        &self,
        room_id: i64,
        message_id: i64,
        change: impl FnOnce(&mut StoredMessage) -> Result<(), HistoryError>,
    ) -> Result<StoredMessage, HistoryError> {
        let mut rooms = self.rooms();
        let log = rooms.get_mut(&room_id).ok_or(HistoryError::NotFound)?;
        let index = log.index_of(message_id).ok_or(HistoryError::NotFound)?;
        let message = &mut log.messages[index];
        change(message)?;
        Ok(message.clone())
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<i64, RoomLog>> {
        // A panic while holding the lock leaves plain data that is still consistent per room.
        self.rooms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drops a room's messages (the room was deleted).
    pub fn forget(&self, room_id: i64) {
        self.rooms().remove(&room_id);
    }

    /// Deletes the messages of `room_id` created before `cutoff`; how many.
    pub fn purge_before(&self, room_id: i64, cutoff: NaiveDateTime) -> usize {
        let mut rooms = self.rooms();
        let Some(log) = rooms.get_mut(&room_id) else {
            return 0;
        };
        let mut purged = 0;
        while log.messages.front().is_some_and(|m| m.created_at < cutoff) {
            if let Some(gone) = log.messages.pop_front() {
                log.keys.retain(|_, id| *id != gone.id);
                purged += 1;
            }
        }
        purged
    }

    /// Removes `sender` from the messages they wrote (their account was deleted); how many.
    pub fn anonymise(&self, sender: Sender) -> usize {
        let mut changed = 0;
        for log in self.rooms().values_mut() {
            log.keys.retain(|(who, _), _| *who != sender);
            for message in log.messages.iter_mut() {
                if message.sender_kind == sender.kind && message.sender_id == Some(sender.id) {
                    message.sender_id = None;
                    changed += 1;
                }
            }
        }
        changed
    }
}

#[async_trait::async_trait]
impl HistoryStore for MemoryHistoryStore {
    async fn append(&self, room_id: i64, message: NewMessage) -> Result<Appended, HistoryError> {
        let mut rooms = self.rooms();
        let log = rooms.entry(room_id).or_default();
        if let Some(key) = &message.idempotency_key
            && let Some(id) = log.keys.get(&(message.sender, key.clone()))
            && let Some(index) = log.index_of(*id)
        {
            return Ok(Appended {
                message: log.messages[index].clone(),
                created: false,
            });
        }
        if let Some(reply_to) = message.reply_to
            && log.index_of(reply_to).is_none()
        {
            return Err(HistoryError::BadReply);
        }
        let stored = StoredMessage {
            // Taken under the lock: ids grow in the order messages enter the room.
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            room_id,
            sender_kind: message.sender.kind,
            sender_id: Some(message.sender.id),
            body: Some(message.body),
            reply_to: message.reply_to,
            created_at: Utc::now().naive_utc(),
            edited_at: None,
            deleted_at: None,
        };
        if let Some(key) = message.idempotency_key {
            log.keys.insert((message.sender, key), stored.id);
        }
        log.messages.push_back(stored.clone());
        while log.messages.len() > self.max_per_room {
            if let Some(gone) = log.messages.pop_front() {
                log.keys.retain(|_, id| *id != gone.id);
            }
        }
        Ok(Appended {
            message: stored,
            created: true,
        })
    }

    async fn edit(
        &self,
        room_id: i64,
        message_id: i64,
        body: String,
    ) -> Result<StoredMessage, HistoryError> {
        self.change(room_id, message_id, |message| {
            if message.deleted_at.is_some() {
                return Err(HistoryError::Deleted);
            }
            message.body = Some(body);
            message.edited_at = Some(Utc::now().naive_utc());
            Ok(())
        })
    }

    async fn delete(&self, room_id: i64, message_id: i64) -> Result<StoredMessage, HistoryError> {
        self.change(room_id, message_id, |message| {
            if message.deleted_at.is_none() {
                message.body = None;
                message.deleted_at = Some(Utc::now().naive_utc());
            }
            Ok(())
        })
    }

    async fn get(
        &self,
        room_id: i64,
        message_id: i64,
    ) -> Result<Option<StoredMessage>, HistoryError> {
        let rooms = self.rooms();
        Ok(rooms.get(&room_id).and_then(|log| {
            log.index_of(message_id)
                .map(|index| log.messages[index].clone())
        }))
    }

    async fn page(
        &self,
        room_id: i64,
        cursor: Cursor,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, HistoryError> {
        let rooms = self.rooms();
        let Some(log) = rooms.get(&room_id) else {
            return Ok(Vec::new());
        };
        let all = &log.messages;
        // Where the first message with an id above `id` sits.
        let split = |id: i64| all.partition_point(|m| m.id <= id);
        let (start, end) = match cursor {
            Cursor::Latest => (all.len().saturating_sub(limit), all.len()),
            Cursor::Before(id) => {
                let end = all.partition_point(|m| m.id < id);
                (end.saturating_sub(limit), end)
            }
            Cursor::After(id) => {
                let start = split(id);
                (start, (start + limit).min(all.len()))
            }
        };
        Ok(all.range(start..end).cloned().collect())
    }

    async fn search(&self, query: &SearchQuery) -> Result<Vec<Hit>, HistoryError> {
        let rooms = self.rooms();
        let mut found: Vec<&StoredMessage> = query
            .rooms
            .iter()
            .filter_map(|room_id| rooms.get(room_id))
            .flat_map(|log| log.messages.iter())
            .filter(|m| {
                m.body
                    .as_deref()
                    .is_some_and(|body| matches_all(body, &query.terms))
                    && query
                        .sender
                        .is_none_or(|s| m.sender_kind == s.kind && m.sender_id == Some(s.id))
                    && query.from.is_none_or(|from| m.created_at >= from)
                    && query.to.is_none_or(|to| m.created_at < to)
                    && query.before.is_none_or(|before| m.id < before)
            })
            .collect();
        found.sort_unstable_by_key(|m| std::cmp::Reverse(m.id));
        Ok(found
            .into_iter()
            .take(query.limit)
            .map(|m| Hit {
                snippet_html: highlight(m.body.as_deref().unwrap_or_default(), &query.terms),
                message: m.clone(),
            })
            .collect())
    }

    async fn by_sender(
        &self,
        sender: Sender,
        except: Vec<i64>,
    ) -> Result<Vec<StoredMessage>, HistoryError> {
        let all = self.rooms();
        let mut out: Vec<StoredMessage> = all
            .iter()
            .filter(|(id, _)| !except.contains(id))
            .flat_map(|(_, log)| log.messages.iter())
            .filter(|m| m.sender_kind == sender.kind && m.sender_id == Some(sender.id))
            .cloned()
            .collect();
        out.sort_unstable_by_key(|m| m.id);
        Ok(out)
    }

    /// Nothing here is encrypted under a KEK: nothing to rotate.
    async fn rotate_keys(&self) -> Result<RotationReport, HistoryError> {
        Ok(RotationReport::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(body: &str, key: Option<&str>) -> NewMessage {
        NewMessage {
            sender: Sender::user(1),
            body: body.to_owned(),
            reply_to: None,
            idempotency_key: key.map(str::to_owned),
        }
    }

    #[tokio::test]
    async fn pages_both_ways_and_drops_the_oldest_past_the_cap() {
        let store = MemoryHistoryStore::new(5);
        for i in 0..7 {
            store
                .append(9, post(&format!("message {i}"), None))
                .await
                .expect("appends");
        }
        let latest = store.page(9, Cursor::Latest, 3).await.expect("pages");
        let bodies: Vec<_> = latest.iter().filter_map(|m| m.body.clone()).collect();
        assert_eq!(bodies, ["message 4", "message 5", "message 6"]);
        let older = store
            .page(9, Cursor::Before(latest[0].id), 10)
            .await
            .expect("pages");
        assert_eq!(older.len(), 2, "only five are kept: {older:?}");
        let newer = store
            .page(9, Cursor::After(older[0].id), 2)
            .await
            .expect("pages");
        assert_eq!(newer[0].id, older[1].id);
        assert!(
            store
                .page(10, Cursor::Latest, 5)
                .await
                .expect("pages")
                .is_empty()
        );
    }

    #[tokio::test]
    async fn retention_purges_only_what_is_older_than_the_cutoff() {
        let store = MemoryHistoryStore::new(100);
        let old = store
            .append(3, post("old", Some("o")))
            .await
            .expect("appends");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        let cutoff = Utc::now().naive_utc();
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        let new = store.append(3, post("new", None)).await.expect("appends");
        assert_eq!(store.purge_before(3, cutoff), 1);
        assert_eq!(store.purge_before(4, cutoff), 0, "an empty room");
        assert!(store.get(3, old.message.id).await.expect("gets").is_none());
        assert!(store.get(3, new.message.id).await.expect("gets").is_some());
        // The purged message's idempotency key is gone with it.
        let again = store
            .append(3, post("old", Some("o")))
            .await
            .expect("appends");
        assert!(again.created);
    }

    #[tokio::test]
    async fn retries_edits_deletes_and_search() {
        let store = MemoryHistoryStore::new(100);
        let first = store
            .append(1, post("Café meetings start", Some("k1")))
            .await
            .expect("appends");
        let again = store
            .append(1, post("Café meetings start", Some("k1")))
            .await
            .expect("appends");
        assert!(first.created && !again.created);
        assert_eq!(first.message.id, again.message.id);
        let query = SearchQuery {
            terms: super::super::words::query_terms("cafe meeting"),
            rooms: vec![1],
            limit: 10,
            ..SearchQuery::default()
        };
        let hits = store.search(&query).await.expect("searches");
        assert_eq!(hits.len(), 1);
        assert!(hits[0].snippet_html.contains("<mark>"));
        store
            .edit(1, first.message.id, "nothing here".to_owned())
            .await
            .expect("edits");
        assert!(store.search(&query).await.expect("searches").is_empty());
        store.delete(1, first.message.id).await.expect("deletes");
        assert!(matches!(
            store.edit(1, first.message.id, "x".to_owned()).await,
            Err(HistoryError::Deleted)
        ));
        assert!(matches!(
            store
                .append(
                    1,
                    NewMessage {
                        reply_to: Some(999),
                        ..post("hi", None)
                    }
                )
                .await,
            Err(HistoryError::BadReply)
        ));
        store.forget(1);
        assert!(
            store
                .get(1, first.message.id)
                .await
                .expect("gets")
                .is_none()
        );
    }
}
