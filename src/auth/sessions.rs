//! Server-side sessions. The browser holds a random 256-bit token in a cookie; the database
//! holds only its SHA-256, so a leaked database or backup does not yield working cookies.
//!
//! A moka cache (bounded, short TTL) sits in front of the table so resolving a session costs
//! no query on most requests. Revocation clears this node's cache at once; other nodes notice
//! within the cache TTL (`CACHE_TTL`).
//!
//! Expiry is both idle (`sessions.idle_timeout_hours` since last seen) and absolute
//! (`sessions.lifetime_days` since sign-in). `last_seen_at` is written at most once a minute per
//! session, not on every request.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;
use rand::RngCore as _;
use sha2::Digest as _;

use crate::db::{Db, DbConnection, DbError};
use crate::schema::{sessions, users};
use crate::settings::SessionSettings;

pub const CACHE_TTL: Duration = Duration::from_secs(30);
const CACHE_CAPACITY: u64 = 100_000;
const TOUCH_EVERY: chrono::TimeDelta = chrono::TimeDelta::minutes(1);

/// What a resolved session says about its user.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: String,
    pub user_id: i64,
    pub email: String,
    pub display_name: String,
    pub created_at: NaiveDateTime,
    pub last_seen_at: NaiveDateTime,
    pub expires_at: NaiveDateTime,
    /// Whether they have a staff role (the layout links to the admin area); the admin area
    /// itself checks the role on every request.
    pub staff: bool,
}

/// A session row, for the "my sessions" listing.
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = sessions)]
pub struct SessionRow {
    #[serde(skip)]
    pub id: String,
    pub created_at: NaiveDateTime,
    pub last_seen_at: NaiveDateTime,
    pub expires_at: NaiveDateTime,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// A session joined with its user, as `load` reads it.
#[derive(Queryable)]
struct LiveSession {
    user_id: i64,
    created_at: NaiveDateTime,
    last_seen_at: NaiveDateTime,
    expires_at: NaiveDateTime,
    email: String,
    display_name: String,
    disabled_at: Option<NaiveDateTime>,
    staff_role: Option<String>,
}

#[derive(Clone)]
pub struct Sessions {
    db: Db,
    cache: moka::future::Cache<String, Arc<SessionInfo>>,
    idle: chrono::TimeDelta,
    lifetime: chrono::TimeDelta,
    revocations: tokio::sync::broadcast::Sender<Revocation>,
}

/// Credentials that stopped working, announced so long-lived connections (WebSockets) that
/// authenticated with them close at once instead of at their next check.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Revocation {
    /// One session, by id.
    Session(String),
    /// One API token, by id.
    Token(i64),
    /// Every API token of a user.
    TokensOf(i64),
}

/// The token that goes into the cookie, shown to the client once.
pub struct NewSession {
    pub token: String,
    pub info: SessionInfo,
}

/// SHA-256 of a token, hex: the session's id in the database.
pub fn token_id(token: &str) -> String {
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes new sessions on a connection the caller holds; see [`Sessions::starter`].
#[derive(Debug, Clone, Copy)]
pub struct SessionStarter {
    lifetime: chrono::TimeDelta,
}

impl SessionStarter {
    /// A new random token and its row. The token itself is never stored, only its id.
    pub fn start(
        self,
        conn: &mut DbConnection,
        user_id: i64,
        ip: Option<String>,
        user_agent: Option<String>,
    ) -> Result<NewSession, DbError> {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let id = token_id(&token);
        let now = Utc::now().naive_utc();
        let expires_at = now
            .checked_add_signed(self.lifetime)
            .unwrap_or(NaiveDateTime::MAX);
        diesel::insert_into(sessions::table)
            .values((
                sessions::id.eq(&id),
                sessions::user_id.eq(user_id),
                sessions::created_at.eq(now),
                sessions::last_seen_at.eq(now),
                sessions::expires_at.eq(expires_at),
                sessions::ip.eq(ip),
                sessions::user_agent.eq(user_agent),
            ))
            .execute(conn)?;
        let (email, display_name, staff_role): (String, String, Option<String>) = users::table
            .find(user_id)
            .select((users::email, users::display_name, users::staff_role))
            .first(conn)?;
        Ok(NewSession {
            token,
            info: SessionInfo {
                id,
                user_id,
                email,
                display_name,
                created_at: now,
                last_seen_at: now,
                expires_at,
                staff: staff_role.is_some(),
            },
        })
    }
}

impl Sessions {
    pub fn new(db: Db, settings: &SessionSettings) -> Self {
        let hours = i64::try_from(settings.idle_timeout_hours).unwrap_or(i64::MAX / 7_200_000);
        let days = i64::try_from(settings.lifetime_days).unwrap_or(i64::MAX / 172_800_000);
        Self {
            db,
            cache: moka::future::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(CACHE_TTL)
                .build(),
            idle: chrono::TimeDelta::try_hours(hours).unwrap_or(chrono::TimeDelta::MAX),
            lifetime: chrono::TimeDelta::try_days(days).unwrap_or(chrono::TimeDelta::MAX),
            revocations: tokio::sync::broadcast::channel(1024).0,
        }
    }

    /// Announces credentials that stopped working (see [`Revocation`]).
    pub fn announce(&self, revocation: Revocation) {
        // Nobody listening (no realtime endpoint in this process) is fine.
        let _ = self.revocations.send(revocation);
    }

    /// Drops sessions that were deleted elsewhere (a disabled account) from this node's
    /// cache, and tells the realtime endpoint and the other nodes.
    pub async fn forget_all(&self, ids: &[String]) {
        for id in ids {
            self.cache.invalidate(id).await;
            self.announce(Revocation::Session(id.clone()));
        }
    }

    /// Drops a session from this node's cache (another node revoked it): the next request
    /// reads the table and finds it gone.
    pub async fn forget_cached(&self, id: &str) {
        self.cache.invalidate(id).await;
    }

    /// Listens for revoked credentials.
    pub fn revocations(&self) -> tokio::sync::broadcast::Receiver<Revocation> {
        self.revocations.subscribe()
    }

    /// The session with this id if it is still live (refreshing `last_seen_at`: a connection
    /// that stays open is activity), for connections that authenticated with it.
    pub async fn revalidate(&self, id: &str) -> Result<Option<Arc<SessionInfo>>, DbError> {
        let now = Utc::now().naive_utc();
        if let Some(info) = self.cache.get(id).await
            && self.is_live(&info, now)
        {
            return Ok(Some(info));
        }
        self.load(id.to_owned(), now).await
    }

    pub fn lifetime(&self) -> chrono::TimeDelta {
        self.lifetime
    }

    /// Starts a session for `user_id`. Call after the credentials were checked.
    pub async fn create(
        &self,
        user_id: i64,
        ip: Option<String>,
        user_agent: Option<String>,
    ) -> Result<NewSession, DbError> {
        let starter = self.starter();
        let session = self
            .db
            .run(move |conn| starter.start(conn, user_id, ip, user_agent))
            .await?;
        self.remember(&session).await;
        Ok(session)
    }

    /// What [`SessionStarter::start`] needs, to write a session inside a caller's transaction
    /// (a sign-in writes the session and its audit event together). Call
    /// [`Sessions::remember`] once that transaction committed.
    pub fn starter(&self) -> SessionStarter {
        SessionStarter {
            lifetime: self.lifetime,
        }
    }

    /// Puts a session that was just written into the cache in front of the table.
    pub async fn remember(&self, session: &NewSession) {
        self.cache
            .insert(session.info.id.clone(), Arc::new(session.info.clone()))
            .await;
    }

    /// The live session a cookie token belongs to, if any. Expired sessions are deleted.
    pub async fn resolve(&self, token: &str) -> Result<Option<Arc<SessionInfo>>, DbError> {
        let id = token_id(token);
        let now = Utc::now().naive_utc();
        if let Some(info) = self.cache.get(&id).await {
            if self.is_live(&info, now) {
                return Ok(Some(info));
            }
            self.cache.invalidate(&id).await;
        }
        self.load(id, now).await
    }

    fn is_live(&self, info: &SessionInfo, now: NaiveDateTime) -> bool {
        now < info.expires_at && now - info.last_seen_at < self.idle
    }

    /// Reads the session from the database (refreshing `last_seen_at`), or deletes it if it
    /// has expired, or the user is disabled.
    async fn load(
        &self,
        id: String,
        now: NaiveDateTime,
    ) -> Result<Option<Arc<SessionInfo>>, DbError> {
        let idle = self.idle;
        let key = id.clone();
        let found = self
            .db
            .run(move |conn| {
                let row: Option<LiveSession> = sessions::table
                    .inner_join(users::table)
                    .filter(sessions::id.eq(&id))
                    .select((
                        sessions::user_id,
                        sessions::created_at,
                        sessions::last_seen_at,
                        sessions::expires_at,
                        users::email,
                        users::display_name,
                        users::disabled_at,
                        users::staff_role,
                    ))
                    .first(conn)
                    .optional()?;
                let Some(LiveSession {
                    user_id,
                    created_at,
                    last_seen_at,
                    expires_at,
                    email,
                    display_name,
                    disabled_at,
                    staff_role,
                }) = row
                else {
                    return Ok::<_, DbError>(None);
                };
                if now >= expires_at || now - last_seen_at >= idle || disabled_at.is_some() {
                    diesel::delete(sessions::table.find(&id)).execute(conn)?;
                    return Ok(None);
                }
                // Cache entries live CACHE_TTL; the row is written at most every TOUCH_EVERY.
                let last_seen_at = if now - last_seen_at >= TOUCH_EVERY {
                    diesel::update(sessions::table.find(&id))
                        .set(sessions::last_seen_at.eq(now))
                        .execute(conn)?;
                    now
                } else {
                    last_seen_at
                };
                Ok(Some(SessionInfo {
                    id,
                    user_id,
                    email,
                    display_name,
                    created_at,
                    last_seen_at,
                    expires_at,
                    staff: staff_role.is_some(),
                }))
            })
            .await?;
        match found {
            Some(info) => {
                let info = Arc::new(info);
                self.cache.insert(key, info.clone()).await;
                Ok(Some(info))
            }
            None => {
                self.cache.invalidate(&key).await;
                Ok(None)
            }
        }
    }

    /// Ends one session (sign-out or revoke). Returns whether it existed.
    pub async fn revoke(&self, id: &str) -> Result<bool, DbError> {
        let target = id.to_owned();
        let deleted = self
            .db
            .run(move |conn| {
                diesel::delete(sessions::table.find(&target))
                    .execute(conn)
                    .map_err(DbError::from)
            })
            .await?;
        self.cache.invalidate(id).await;
        self.announce(Revocation::Session(id.to_owned()));
        Ok(deleted > 0)
    }

    /// Ends session `id` if it belongs to `user_id`. Returns whether it did.
    pub async fn revoke_own(&self, user_id: i64, id: &str) -> Result<bool, DbError> {
        let target = id.to_owned();
        let deleted = self
            .db
            .run(move |conn| {
                diesel::delete(
                    sessions::table
                        .filter(sessions::id.eq(&target))
                        .filter(sessions::user_id.eq(user_id)),
                )
                .execute(conn)
                .map_err(DbError::from)
            })
            .await?;
        self.cache.invalidate(id).await;
        if deleted > 0 {
            self.announce(Revocation::Session(id.to_owned()));
        }
        Ok(deleted > 0)
    }

    /// Ends every session of `user_id` except `keep` (password change, "sign out elsewhere").
    pub async fn revoke_all_for_user(
        &self,
        user_id: i64,
        keep: Option<&str>,
    ) -> Result<usize, DbError> {
        let keep = keep.map(str::to_owned);
        // One statement: a session cannot slip in between choosing and deleting.
        let ids: Vec<String> = self
            .db
            .run(move |conn| {
                let mine = sessions::table.filter(sessions::user_id.eq(user_id));
                match keep {
                    Some(keep) => diesel::delete(mine.filter(sessions::id.ne(keep)))
                        .returning(sessions::id)
                        .get_results(conn),
                    None => diesel::delete(mine)
                        .returning(sessions::id)
                        .get_results(conn),
                }
                .map_err(DbError::from)
            })
            .await?;
        for id in &ids {
            self.cache.invalidate(id).await;
            self.announce(Revocation::Session(id.clone()));
        }
        Ok(ids.len())
    }

    /// The live sessions of a user, newest first.
    pub async fn list_for_user(&self, user_id: i64) -> Result<Vec<SessionRow>, DbError> {
        self.db
            .run(move |conn| {
                sessions::table
                    .filter(sessions::user_id.eq(user_id))
                    .filter(sessions::expires_at.gt(Utc::now().naive_utc()))
                    .order(sessions::created_at.desc())
                    .select(SessionRow::as_select())
                    .load(conn)
                    .map_err(DbError::from)
            })
            .await
    }

    pub fn cached_entries(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Drops every cached session: the next request of each reads its session from the
    /// database again (nobody is signed out).
    pub fn clear_cache(&self) {
        self.cache.invalidate_all();
    }
}
