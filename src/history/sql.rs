//! The SQL history store (SQLite and PostgreSQL through diesel).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;

use super::keys::{Keyring, RoomKey, Wrapped, new_data_key, wrap_context};
use super::words::{highlight, matches_all, terms};
use super::{
    Appended, Cursor, HistoryError, HistoryStore, Hit, MemberKind, NewMessage, RotationReport,
    SearchQuery, Sender, StoredMessage,
};
use crate::auth::personal_keys::{self, PersonalKeys};
use crate::db::{Db, DbConnection, DbError, write_transaction};
use crate::schema::{conversation_keys, message_terms, messages, rooms};

/// The associated data of a sealed body: it opens only as a message of its room.
fn body_context(room_id: i64) -> Vec<u8> {
    format!("conclave/message/{room_id}").into_bytes()
}

type Row = (
    i64,
    i64,
    String,
    Option<i64>,
    Option<Vec<u8>>,
    Option<i64>,
    NaiveDateTime,
    Option<NaiveDateTime>,
    Option<NaiveDateTime>,
);

macro_rules! row_columns {
    () => {
        (
            messages::id,
            messages::room_id,
            messages::sender_kind,
            messages::sender_id,
            messages::body_sealed,
            messages::reply_to,
            messages::created_at,
            messages::edited_at,
            messages::deleted_at,
        )
    };
}

#[derive(Clone)]
pub struct SqlHistoryStore {
    db: Db,
    keyring: Keyring,
    personal: PersonalKeys,
    writer: GroupWriter,
    on_change: Option<ChangeHook>,
}

/// What a write changed in a room's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Posted { room: i64, id: i64 },
    Edited { room: i64, id: i64 },
    Deleted { room: i64, id: i64 },
}

/// Runs inside the transaction of every write, after it: whatever it does commits (or not)
/// with the change. Other nodes learn of changes this way (a NOTIFY sent in the transaction is
/// delivered at commit, in commit order).
pub type ChangeHook = Arc<dyn Fn(&mut DbConnection, Change) -> QueryResult<()> + Send + Sync>;

impl SqlHistoryStore {
    pub fn new(db: Db, keyring: Keyring, personal: PersonalKeys) -> Self {
        Self {
            db,
            keyring,
            personal,
            writer: GroupWriter::default(),
            on_change: None,
        }
    }

    /// Announces every change through `hook`, in the change's transaction.
    pub fn with_change_hook(mut self, hook: ChangeHook) -> Self {
        self.on_change = Some(hook);
        self
    }

    /// The room's working keys; the data key is made (and wrapped, and stored) on first use.
    async fn room_key(&self, room_id: i64) -> Result<Arc<RoomKey>, HistoryError> {
        if let Some(key) = self.existing_room_key(room_id).await? {
            return Ok(key);
        }
        // A private room's key is wrapped by its owner's personal key, which must be unlocked.
        let owner: Option<Option<i64>> = self
            .db
            .run(move |conn| {
                rooms::table
                    .find(room_id)
                    .filter(rooms::privacy.eq("private"))
                    .select(rooms::created_by)
                    .first(conn)
                    .optional()
                    .map_err(DbError::from)
            })
            .await?;
        let data_key = new_data_key();
        let wrapped = match owner {
            None => {
                self.keyring
                    .provider()
                    .wrap(&data_key, &wrap_context(room_id))
                    .await?
            }
            Some(owner) => owner
                .and_then(|owner| self.personal.key(owner))
                .ok_or(HistoryError::Locked(room_id))?
                .wrap(&data_key, &wrap_context(room_id)),
        };
        let private = owner.is_some();
        let stored = self
            .db
            .run(move |conn| {
                let now = Utc::now().naive_utc();
                crate::db::unless_taken(
                    diesel::insert_into(conversation_keys::table)
                        .values((
                            conversation_keys::room_id.eq(room_id),
                            conversation_keys::kek_id.eq(&wrapped.kek_id),
                            conversation_keys::wrapped.eq(&wrapped.blob),
                            conversation_keys::created_at.eq(now),
                        ))
                        .execute(conn),
                )
                // `None`: another request made the room's key first; use theirs.
                .map(|inserted| inserted.is_some())
                .map_err(DbError::from)
            })
            .await?;
        if !stored {
            return self
                .existing_room_key(room_id)
                .await?
                .ok_or(HistoryError::NotFound);
        }
        let key = Arc::new(RoomKey::from_data_key(&data_key));
        if !private {
            self.keyring.remember(room_id, key.clone()).await;
        }
        Ok(key)
    }

    /// The room's keys if it has a data key yet (a room without one has no messages).
    async fn existing_room_key(&self, room_id: i64) -> Result<Option<Arc<RoomKey>>, HistoryError> {
        let mut keys = self.room_keys(&[room_id]).await?;
        match keys.remove(&room_id) {
            Some(Ok(key)) => Ok(Some(key)),
            Some(Err(e)) => Err(e),
            None => Ok(None),
        }
    }

    /// The keys of `rooms` that have one: cached ones from memory, the others read in one
    /// query and unwrapped. Per room, since a private room may be locked while others open.
    async fn room_keys(
        &self,
        rooms: &[i64],
    ) -> Result<HashMap<i64, Result<Arc<RoomKey>, HistoryError>>, HistoryError> {
        let mut keys = HashMap::with_capacity(rooms.len());
        let mut missing = Vec::new();
        for room_id in rooms {
            match self.keyring.cached(*room_id).await {
                Some(key) => {
                    keys.insert(*room_id, Ok(key));
                }
                None => missing.push(*room_id),
            }
        }
        if missing.is_empty() {
            return Ok(keys);
        }
        let stored: Vec<(i64, String, String)> = self
            .db
            .run(move |conn| {
                conversation_keys::table
                    .filter(conversation_keys::room_id.eq_any(missing))
                    .select((
                        conversation_keys::room_id,
                        conversation_keys::kek_id,
                        conversation_keys::wrapped,
                    ))
                    .load(conn)
                    .map_err(DbError::from)
            })
            .await?;
        for (room_id, kek_id, blob) in stored {
            let key = self.open_wrapped(room_id, Wrapped { kek_id, blob }).await;
            keys.insert(room_id, key);
        }
        Ok(keys)
    }

    async fn open_wrapped(
        &self,
        room_id: i64,
        wrapped: Wrapped,
    ) -> Result<Arc<RoomKey>, HistoryError> {
        if let Some(owner) = personal_keys::owner_of(&wrapped.kek_id) {
            // Private: opened with the owner's unlocked key each time, never cached apart
            // from it, so locking (sign-out, idle timeout) closes the room at once.
            let personal = self
                .personal
                .key(owner)
                .ok_or(HistoryError::Locked(room_id))?;
            let data_key = personal.unwrap(&wrapped, &wrap_context(room_id))?;
            return Ok(Arc::new(RoomKey::from_data_key(&data_key)));
        }
        let data_key = self
            .keyring
            .provider()
            .unwrap(&wrapped, &wrap_context(room_id))
            .await?;
        let key = Arc::new(RoomKey::from_data_key(&data_key));
        self.keyring.remember(room_id, key.clone()).await;
        Ok(key)
    }

    /// Opens rows into messages (their rooms' keys fetched once each, unless in `keys`).
    async fn open_rows(
        &self,
        rows: Vec<Row>,
        mut keys: HashMap<i64, Arc<RoomKey>>,
    ) -> Result<Vec<StoredMessage>, HistoryError> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let (id, room_id, kind, sender_id, sealed, reply_to, created_at, edited_at, deleted_at) =
                row;
            let body = match sealed {
                None => None,
                Some(sealed) => {
                    let key = match keys.get(&room_id) {
                        Some(key) => key.clone(),
                        None => {
                            let key = self
                                .existing_room_key(room_id)
                                .await?
                                .ok_or(HistoryError::Undecryptable(id))?;
                            keys.insert(room_id, key.clone());
                            key
                        }
                    };
                    let plain = key
                        .open(&sealed, &body_context(room_id))
                        .map_err(|_| HistoryError::Undecryptable(id))?;
                    Some(String::from_utf8(plain).map_err(|_| HistoryError::Undecryptable(id))?)
                }
            };
            out.push(StoredMessage {
                id,
                room_id,
                sender_kind: MemberKind::parse(&kind).unwrap_or(MemberKind::User),
                sender_id,
                body,
                reply_to,
                created_at,
                edited_at,
                deleted_at,
            });
        }
        Ok(out)
    }

    async fn load(&self, room_id: i64, message_id: i64) -> Result<Option<Row>, HistoryError> {
        Ok(self
            .db
            .run(move |conn| {
                messages::table
                    .find(message_id)
                    .filter(messages::room_id.eq(room_id))
                    .select(row_columns!())
                    .first::<Row>(conn)
                    .optional()
                    .map_err(DbError::from)
            })
            .await?)
    }

    async fn one(&self, row: Row) -> Result<StoredMessage, HistoryError> {
        self.open_rows(vec![row], HashMap::new())
            .await?
            .pop()
            .ok_or(HistoryError::NotFound)
    }
}

/// Deletes the stored history of `rooms` for good: index entries, messages and data keys.
/// (The rooms themselves are the chat module's.)
pub fn erase_rooms(conn: &mut DbConnection, rooms: &[i64]) -> QueryResult<()> {
    if rooms.is_empty() {
        return Ok(());
    }
    let ids = messages::table
        .filter(messages::room_id.eq_any(rooms))
        .select(messages::id);
    diesel::delete(message_terms::table.filter(message_terms::message_id.eq_any(ids)))
        .execute(conn)?;
    diesel::delete(messages::table.filter(messages::room_id.eq_any(rooms))).execute(conn)?;
    diesel::delete(conversation_keys::table.filter(conversation_keys::room_id.eq_any(rooms)))
        .execute(conn)?;
    Ok(())
}

/// Serializes writes to one room's history, so ids are handed out in commit order within a
/// room and `after=<id>` paging never skips.
fn lock_room(conn: &mut DbConnection, room_id: i64) -> QueryResult<()> {
    crate::db::lock_row(conn, crate::db::LockableTable::Rooms, room_id)
}

/// The blind-index entries of a body: its terms' keyed hashes.
fn hashed_terms(key: &RoomKey, body: &str) -> Vec<Vec<u8>> {
    terms(body).iter().map(|word| key.term(word)).collect()
}

/// Inserts the message's blind-index entries, many rows per statement. (Written as SQL:
/// diesel's batch insert does not compile through `MultiConnection` for SQLite.)
fn index_terms(conn: &mut DbConnection, message_id: i64, hashed: &[Vec<u8>]) -> QueryResult<()> {
    use diesel::sql_types::{BigInt, Binary};
    const ROWS_PER_STATEMENT: usize = 256;
    for chunk in hashed.chunks(ROWS_PER_STATEMENT) {
        let postgres = matches!(conn, DbConnection::Postgresql(_));
        let placeholders: Vec<String> = (0..chunk.len())
            .map(|i| {
                if postgres {
                    format!("(${}, ${})", 2 * i + 1, 2 * i + 2)
                } else {
                    "(?, ?)".to_owned()
                }
            })
            .collect();
        let sql = format!(
            "INSERT INTO message_terms (term, message_id) VALUES {}",
            placeholders.join(", ")
        );
        // The same statement for either backend's connection type.
        macro_rules! insert_chunk {
            ($conn:expr) => {{
                let mut query = diesel::sql_query(sql).into_boxed();
                for term in chunk {
                    query = query
                        .bind::<Binary, _>(term.clone())
                        .bind::<BigInt, _>(message_id);
                }
                query.execute($conn)?;
            }};
        }
        match conn {
            DbConnection::Sqlite(sqlite) => insert_chunk!(sqlite),
            DbConnection::Postgresql(pg) => insert_chunk!(pg),
        }
    }
    Ok(())
}

fn find_by_key(
    conn: &mut DbConnection,
    room_id: i64,
    sender: Sender,
    key: &str,
) -> QueryResult<Option<Row>> {
    messages::table
        .filter(messages::room_id.eq(room_id))
        .filter(messages::sender_kind.eq(sender.kind.as_str()))
        .filter(messages::sender_id.eq(sender.id))
        .filter(messages::idempotency_key.eq(key))
        .select(row_columns!())
        .first::<Row>(conn)
        .optional()
}

/// A post ready to be written: sealed and hashed.
struct Pending {
    room_id: i64,
    message: NewMessage,
    sealed: Vec<u8>,
    hashed: Vec<Vec<u8>>,
    on_change: Option<ChangeHook>,
}

/// Writes one post (or finds the one its idempotency key already stored): `(row, created)`.
fn insert_pending(conn: &mut DbConnection, pending: &Pending) -> Result<(Row, bool), HistoryError> {
    let (room_id, message) = (pending.room_id, &pending.message);
    lock_room(conn, room_id)?;
    if let Some(idempotency) = &message.idempotency_key
        && let Some(row) = find_by_key(conn, room_id, message.sender, idempotency)?
    {
        return Ok((row, false));
    }
    if let Some(reply_to) = message.reply_to {
        let exists: bool = diesel::select(diesel::dsl::exists(
            messages::table
                .find(reply_to)
                .filter(messages::room_id.eq(room_id)),
        ))
        .get_result(conn)?;
        if !exists {
            return Err(HistoryError::BadReply);
        }
    }
    let now = Utc::now().naive_utc();
    let id: i64 = diesel::insert_into(messages::table)
        .values((
            messages::room_id.eq(room_id),
            messages::sender_kind.eq(message.sender.kind.as_str()),
            messages::sender_id.eq(message.sender.id),
            messages::body_sealed.eq(&pending.sealed),
            messages::reply_to.eq(message.reply_to),
            messages::idempotency_key.eq(&message.idempotency_key),
            messages::created_at.eq(now),
        ))
        .returning(messages::id)
        .get_result(conn)?;
    index_terms(conn, id, &pending.hashed)?;
    if let Some(hook) = &pending.on_change {
        hook(conn, Change::Posted { room: room_id, id })?;
    }
    let row: Row = (
        id,
        room_id,
        message.sender.kind.as_str().to_owned(),
        Some(message.sender.id),
        Some(pending.sealed.clone()),
        message.reply_to,
        now,
        None,
        None,
    );
    Ok((row, true))
}

/// One post in a transaction of its own.
async fn write_one(db: &Db, pending: Pending) -> Written {
    db.run(move |conn| write_transaction(conn, |tx| insert_pending(tx, &pending)))
        .await
}

/// A failure of the group writer, for each post it concerned (errors are not `Clone`).
fn writer_error(reason: String) -> HistoryError {
    HistoryError::Db(DbError::Query(diesel::result::Error::DatabaseError(
        diesel::result::DatabaseErrorKind::Unknown,
        Box::new(reason),
    )))
}

/// Most posts one SQLite transaction takes.
const GROUP_COMMIT_MAX: usize = 128;

type Written = Result<(Row, bool), HistoryError>;
/// A post waiting for the group writer, and where its outcome goes.
type Queued = (Pending, tokio::sync::oneshot::Sender<Written>);

/// Group commit for SQLite: posts queue to one writer task, which writes whatever has queued
/// while the previous transaction ran in a single transaction, each post in its own savepoint
/// (one post's error fails only that post). SQLite has one writer at a time and every commit
/// rewrites the index pages it touched; the pages of common words are shared by neighbouring
/// posts, so one commit for many posts writes far fewer pages (measured: docs/benchmarks.md).
/// A post waits for no timer: an idle writer takes the first post at once.
#[derive(Clone, Default)]
struct GroupWriter {
    queue: Arc<std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Queued>>>,
}

impl GroupWriter {
    async fn append(&self, db: &Db, pending: Pending) -> Written {
        let queue = self.queue.get_or_init(|| {
            let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(Self::run(db.clone(), receiver));
            sender
        });
        let (reply, answer) = tokio::sync::oneshot::channel();
        if let Err(refused) = queue.send((pending, reply)) {
            // The writer is gone (runtime shutting down): write this one directly.
            return write_one(db, refused.0.0).await;
        }
        answer
            .await
            .unwrap_or_else(|_| Err(writer_error("the history writer stopped".to_owned())))
    }

    async fn run(db: Db, mut receiver: tokio::sync::mpsc::UnboundedReceiver<Queued>) {
        while let Some(first) = receiver.recv().await {
            let mut batch = vec![first];
            while batch.len() < GROUP_COMMIT_MAX {
                match receiver.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let (pendings, replies): (Vec<Pending>, Vec<_>) = batch.into_iter().unzip();
            let written = db
                .run(move |conn| {
                    write_transaction(conn, |tx| {
                        let results: Vec<Written> = pendings
                            .iter()
                            .map(|pending| {
                                tx.transaction(|savepoint| insert_pending(savepoint, pending))
                            })
                            .collect();
                        Ok::<_, HistoryError>(results)
                    })
                })
                .await;
            match written {
                Ok(results) => {
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(result);
                    }
                }
                Err(error) => {
                    // The commit itself failed: none of them was written.
                    tracing::error!(error = %error, posts = replies.len(), "group commit failed");
                    let reason = error.to_string();
                    for reply in replies {
                        let _ = reply.send(Err(writer_error(reason.clone())));
                    }
                }
            }
        }
    }
}

/// One search term: its keyed hash in each searched room.
struct TermHashes {
    hash_in: HashMap<i64, Vec<u8>>,
}

/// What a search result row must also satisfy besides its words.
struct RowFilters {
    rooms: Vec<i64>,
    sender: Option<Sender>,
    from: Option<NaiveDateTime>,
    to: Option<NaiveDateTime>,
}

/// The first window of message ids a search looks at, newest first; each next window is
/// `SEARCH_WINDOW_GROWTH` times larger, so a rare word reaches the oldest message of a million
/// in about six windows while a common one is answered from the first.
const SEARCH_FIRST_WINDOW: i64 = 2_048;
const SEARCH_WINDOW_GROWTH: i64 = 4;
/// Candidates checked per statement.
const SEARCH_CHUNK: usize = 256;

/// The newest `wanted` messages (newest first) that hold every term and pass `filters`.
///
/// The blind index is a B-tree on (term hash, message id), one hash per term and room. A plain
/// "every message id of each term, intersected, sorted" costs as much as the commonest term's
/// posting list (a word in half of a million messages), so the search walks back through id
/// windows instead: in each, it reads the postings of the rarest term (measured in the first
/// window) as range scans, checks the other terms by exact index probes on (hash of that
/// message's room, id), and stops as soon as it has enough. The cost follows the rarest term's
/// postings up to the answer, never the commonest one's.
fn newest_matches(
    conn: &mut DbConnection,
    hashed: &[TermHashes],
    filters: &RowFilters,
    before: Option<i64>,
    wanted: usize,
) -> Result<Vec<Row>, HistoryError> {
    let newest: Option<i64> = match before {
        Some(before) => Some(before.saturating_sub(1)),
        None => messages::table
            .select(diesel::dsl::max(messages::id))
            .first(conn)?,
    };
    let Some(mut hi) = newest.filter(|_| !hashed.is_empty()) else {
        return Ok(Vec::new());
    };
    let mut found: Vec<Row> = Vec::new();
    let mut window = SEARCH_FIRST_WINDOW;
    // Which term drives the walk: the one with the fewest postings in the first window.
    let mut driver = 0;
    let mut first_window = true;
    while hi >= 1 && found.len() < wanted {
        let lo = (hi - window + 1).max(1);
        let mut candidates: Vec<(i64, i64)> = if first_window {
            let postings: Vec<Vec<(i64, i64)>> = hashed
                .iter()
                .map(|term| postings_in(conn, term, lo, hi))
                .collect::<QueryResult<_>>()?;
            driver = postings
                .iter()
                .enumerate()
                .min_by_key(|(_, p)| p.len())
                .map_or(0, |(i, _)| i);
            let others: Vec<std::collections::HashSet<i64>> = postings
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != driver)
                .map(|(_, p)| p.iter().map(|(id, _)| *id).collect())
                .collect();
            postings
                .into_iter()
                .nth(driver)
                .unwrap_or_default()
                .into_iter()
                .filter(|(id, _)| others.iter().all(|set| set.contains(id)))
                .collect()
        } else {
            postings_in(conn, &hashed[driver], lo, hi)?
        };
        candidates.sort_unstable_by_key(|&(id, _)| std::cmp::Reverse(id));
        for chunk in candidates.chunks(SEARCH_CHUNK) {
            let mut ids: Vec<i64> = chunk.iter().map(|(id, _)| *id).collect();
            if !first_window {
                let rooms: HashMap<i64, i64> = chunk.iter().copied().collect();
                for (i, term) in hashed.iter().enumerate() {
                    if i == driver || ids.is_empty() {
                        continue;
                    }
                    let held = holding(conn, term, &ids, &rooms)?;
                    ids.retain(|id| held.contains(id));
                }
            }
            if ids.is_empty() {
                continue;
            }
            let limit = i64::try_from(wanted - found.len()).unwrap_or(i64::MAX);
            let mut q = messages::table
                .filter(messages::id.eq_any(ids))
                .filter(messages::room_id.eq_any(&filters.rooms))
                .filter(messages::deleted_at.is_null())
                .select(row_columns!())
                .order(messages::id.desc())
                .limit(limit)
                .into_boxed();
            if let Some(sender) = filters.sender {
                q = q
                    .filter(messages::sender_kind.eq(sender.kind.as_str()))
                    .filter(messages::sender_id.eq(sender.id));
            }
            if let Some(from) = filters.from {
                q = q.filter(messages::created_at.ge(from));
            }
            if let Some(to) = filters.to {
                q = q.filter(messages::created_at.lt(to));
            }
            found.extend(q.load::<Row>(conn)?);
            if found.len() >= wanted {
                break;
            }
        }
        first_window = false;
        hi = lo - 1;
        window = window.saturating_mul(SEARCH_WINDOW_GROWTH);
    }
    Ok(found)
}

/// (message id, room) of every posting of one term (its hash in each room) with an id in
/// `lo..=hi`: one index range scan per room.
fn postings_in(
    conn: &mut DbConnection,
    term: &TermHashes,
    lo: i64,
    hi: i64,
) -> QueryResult<Vec<(i64, i64)>> {
    let room_of: HashMap<&[u8], i64> = term
        .hash_in
        .iter()
        .map(|(room, hash)| (hash.as_slice(), *room))
        .collect();
    let rows: Vec<(Vec<u8>, i64)> = message_terms::table
        .filter(message_terms::term.eq_any(term.hash_in.values()))
        .filter(message_terms::message_id.between(lo, hi))
        .select((message_terms::term, message_terms::message_id))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .filter_map(|(hash, id)| room_of.get(hash.as_slice()).map(|room| (id, *room)))
        .collect())
}

/// Which of `ids` (each in the room `rooms` maps it to) hold the term: exact probes of
/// (that room's hash, id), grouped by room.
fn holding(
    conn: &mut DbConnection,
    term: &TermHashes,
    ids: &[i64],
    rooms: &HashMap<i64, i64>,
) -> QueryResult<std::collections::HashSet<i64>> {
    let mut by_room: HashMap<i64, Vec<i64>> = HashMap::new();
    for id in ids {
        if let Some(room) = rooms.get(id) {
            by_room.entry(*room).or_default().push(*id);
        }
    }
    let mut q = message_terms::table
        .select(message_terms::message_id)
        .into_boxed();
    let mut clauses = 0;
    for (room, ids) in by_room {
        let Some(hash) = term.hash_in.get(&room) else {
            continue;
        };
        // One exact (hash, id) probe per id: `filter` for the first room, `or_filter` after
        // (a constant FALSE to start from would hide the index from SQLite's OR planner).
        let clause = message_terms::term
            .eq(hash.clone())
            .and(message_terms::message_id.eq_any(ids));
        q = if clauses == 0 {
            q.filter(clause)
        } else {
            q.or_filter(clause)
        };
        clauses += 1;
    }
    if clauses == 0 {
        return Ok(std::collections::HashSet::new());
    }
    Ok(q.load::<i64>(conn)?.into_iter().collect())
}

#[async_trait::async_trait]
impl HistoryStore for SqlHistoryStore {
    async fn append(&self, room_id: i64, message: NewMessage) -> Result<Appended, HistoryError> {
        let key = self.room_key(room_id).await?;
        // Sealing and hashing happen here, outside the write transaction.
        let pending = Pending {
            room_id,
            sealed: key.seal(message.body.as_bytes(), &body_context(room_id)),
            hashed: hashed_terms(&key, &message.body),
            message,
            on_change: self.on_change.clone(),
        };
        let (row, created) = match self.db.backend() {
            crate::db::Backend::Sqlite => self.writer.append(&self.db, pending).await?,
            // PostgreSQL takes concurrent writers; each post is its own transaction.
            crate::db::Backend::Postgres => write_one(&self.db, pending).await?,
        };
        Ok(Appended {
            message: self.one(row).await?,
            created,
        })
    }

    async fn edit(
        &self,
        room_id: i64,
        message_id: i64,
        body: String,
    ) -> Result<StoredMessage, HistoryError> {
        let key = self.room_key(room_id).await?;
        let sealed = key.seal(body.as_bytes(), &body_context(room_id));
        let hashed = hashed_terms(&key, &body);
        let on_change = self.on_change.clone();
        let row = self
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| {
                    let deleted: Option<Option<NaiveDateTime>> = messages::table
                        .find(message_id)
                        .filter(messages::room_id.eq(room_id))
                        .select(messages::deleted_at)
                        .first(tx)
                        .optional()?;
                    match deleted {
                        None => return Err(HistoryError::NotFound),
                        Some(Some(_)) => return Err(HistoryError::Deleted),
                        Some(None) => {}
                    }
                    diesel::update(messages::table.find(message_id))
                        .set((
                            messages::body_sealed.eq(&sealed),
                            messages::edited_at.eq(Utc::now().naive_utc()),
                        ))
                        .execute(tx)?;
                    diesel::delete(
                        message_terms::table.filter(message_terms::message_id.eq(message_id)),
                    )
                    .execute(tx)?;
                    index_terms(tx, message_id, &hashed)?;
                    if let Some(hook) = &on_change {
                        hook(
                            tx,
                            Change::Edited {
                                room: room_id,
                                id: message_id,
                            },
                        )?;
                    }
                    Ok::<_, HistoryError>(
                        messages::table
                            .find(message_id)
                            .select(row_columns!())
                            .first::<Row>(tx)?,
                    )
                })
            })
            .await?;
        self.one(row).await
    }

    async fn delete(&self, room_id: i64, message_id: i64) -> Result<StoredMessage, HistoryError> {
        let on_change = self.on_change.clone();
        let row = self
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| {
                    let found = messages::table
                        .find(message_id)
                        .filter(messages::room_id.eq(room_id))
                        .select(messages::deleted_at)
                        .first::<Option<NaiveDateTime>>(tx)
                        .optional()?;
                    match found {
                        None => return Err(HistoryError::NotFound),
                        Some(Some(_)) => {}
                        Some(None) => {
                            diesel::update(messages::table.find(message_id))
                                .set((
                                    messages::body_sealed.eq(None::<Vec<u8>>),
                                    messages::deleted_at.eq(Utc::now().naive_utc()),
                                ))
                                .execute(tx)?;
                            diesel::delete(
                                message_terms::table
                                    .filter(message_terms::message_id.eq(message_id)),
                            )
                            .execute(tx)?;
                            if let Some(hook) = &on_change {
                                hook(
                                    tx,
                                    Change::Deleted {
                                        room: room_id,
                                        id: message_id,
                                    },
                                )?;
                            }
                        }
                    }
                    Ok::<_, HistoryError>(
                        messages::table
                            .find(message_id)
                            .select(row_columns!())
                            .first::<Row>(tx)?,
                    )
                })
            })
            .await?;
        self.one(row).await
    }

    async fn get(
        &self,
        room_id: i64,
        message_id: i64,
    ) -> Result<Option<StoredMessage>, HistoryError> {
        match self.load(room_id, message_id).await? {
            Some(row) => Ok(Some(self.one(row).await?)),
            None => Ok(None),
        }
    }

    async fn page(
        &self,
        room_id: i64,
        cursor: Cursor,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, HistoryError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .db
            .run(move |conn| {
                let query = messages::table
                    .filter(messages::room_id.eq(room_id))
                    .select(row_columns!())
                    .limit(limit)
                    .into_boxed();
                let mut rows: Vec<Row> = match cursor {
                    Cursor::Latest => query.order(messages::id.desc()).load(conn)?,
                    Cursor::Before(id) => query
                        .filter(messages::id.lt(id))
                        .order(messages::id.desc())
                        .load(conn)?,
                    Cursor::After(id) => query
                        .filter(messages::id.gt(id))
                        .order(messages::id.asc())
                        .load(conn)?,
                };
                if !matches!(cursor, Cursor::After(_)) {
                    rows.reverse();
                }
                Ok::<_, DbError>(rows)
            })
            .await?;
        self.open_rows(rows, HashMap::new()).await
    }

    async fn search(&self, query: &SearchQuery) -> Result<Vec<Hit>, HistoryError> {
        if query.terms.is_empty() || query.rooms.is_empty() || query.limit == 0 {
            return Ok(Vec::new());
        }
        // Each term's keyed hash in every room that has a key (rooms without one are empty;
        // locked private rooms are not searched).
        let mut keyed = Vec::new();
        for (room_id, key) in self.room_keys(&query.rooms).await? {
            match key {
                Ok(key) => keyed.push((room_id, key)),
                Err(HistoryError::Locked(_)) => {}
                Err(other) => return Err(other),
            }
        }
        let hashed: Vec<TermHashes> = query
            .terms
            .iter()
            .map(|term| TermHashes {
                hash_in: keyed
                    .iter()
                    .map(|(room, key)| (*room, key.term(term)))
                    .collect(),
            })
            .collect();
        let known: HashMap<i64, Arc<RoomKey>> = keyed.into_iter().collect();
        // A few more than asked, for the rare false hit dropped below.
        let wanted = query.limit + query.limit / 4 + 2;
        let filters = RowFilters {
            rooms: known.keys().copied().collect(),
            sender: query.sender,
            from: query.from,
            to: query.to,
        };
        let before = query.before;
        let rows: Vec<Row> = self
            .db
            .run(move |conn| newest_matches(conn, &hashed, &filters, before, wanted))
            .await?;
        let mut hits = Vec::new();
        for message in self.open_rows(rows, known).await? {
            let Some(body) = &message.body else { continue };
            if !matches_all(body, &query.terms) {
                continue;
            }
            let snippet_html = highlight(body, &query.terms);
            hits.push(Hit {
                message,
                snippet_html,
            });
            if hits.len() == query.limit {
                break;
            }
        }
        Ok(hits)
    }

    async fn by_sender(
        &self,
        sender: Sender,
        except: Vec<i64>,
    ) -> Result<Vec<StoredMessage>, HistoryError> {
        let rows = self
            .db
            .run(move |conn| {
                let mut q = messages::table
                    .filter(messages::sender_kind.eq(sender.kind.as_str()))
                    .filter(messages::sender_id.eq(sender.id))
                    .select(row_columns!())
                    .order(messages::id.asc())
                    .into_boxed();
                if !except.is_empty() {
                    q = q.filter(messages::room_id.ne_all(except));
                }
                q.load::<Row>(conn).map_err(DbError::from)
            })
            .await?;
        self.open_rows(rows, HashMap::new()).await
    }

    async fn rotate_keys(&self) -> Result<RotationReport, HistoryError> {
        let provider = self.keyring.provider().clone();
        let current = provider.current_kek_id().await?;
        let mut report = RotationReport::default();
        let (total, stale): (i64, Vec<(i64, String, String)>) = {
            let current = current.clone();
            self.db
                .run(move |conn| {
                    let total = conversation_keys::table
                        .filter(conversation_keys::kek_id.not_like("user:%"))
                        .count()
                        .get_result(conn)?;
                    // Private rooms' keys are their owners' business, not the provider's.
                    let stale = conversation_keys::table
                        .filter(conversation_keys::kek_id.ne(current))
                        .filter(conversation_keys::kek_id.not_like("user:%"))
                        .select((
                            conversation_keys::room_id,
                            conversation_keys::kek_id,
                            conversation_keys::wrapped,
                        ))
                        .load(conn)?;
                    Ok::<_, DbError>((total, stale))
                })
                .await?
        };
        report.current = u64::try_from(total).unwrap_or(0) - stale.len() as u64;
        for (room_id, kek_id, blob) in stale {
            let rewrapped = provider
                .rewrap(
                    &Wrapped {
                        kek_id: kek_id.clone(),
                        blob,
                    },
                    &wrap_context(room_id),
                )
                .await?;
            let updated = self
                .db
                .run(move |conn| {
                    diesel::update(
                        conversation_keys::table
                            .find(room_id)
                            .filter(conversation_keys::kek_id.eq(kek_id)),
                    )
                    .set((
                        conversation_keys::kek_id.eq(rewrapped.kek_id),
                        conversation_keys::wrapped.eq(rewrapped.blob),
                        conversation_keys::rewrapped_at.eq(Utc::now().naive_utc()),
                    ))
                    .execute(conn)
                    .map_err(DbError::from)
                })
                .await?;
            report.rewrapped += updated as u64;
        }
        Ok(report)
    }
}
