//! Personal API tokens: `cnv_` + 256 random bits, shown once, stored as SHA-256, scoped,
//! optionally expiring, revocable. `read` allows safe methods; `write` also allows changes.

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use diesel::prelude::*;
use rand::RngCore as _;
use serde::Serialize;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::sessions::token_id;
use crate::db::{DbConnection, write_transaction};
use crate::schema::{api_tokens, users};

pub const PREFIX: &str = "cnv_";
pub const SCOPES: [&str; 2] = ["read", "write"];
const MAX_NAME: usize = 80;
/// `last_used_at` is written at most this often per token.
const TOUCH_EVERY: TimeDelta = TimeDelta::minutes(1);

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = api_tokens)]
pub struct TokenRow {
    pub id: i64,
    pub name: String,
    #[serde(skip)]
    pub user_id: i64,
    pub scopes: String,
    pub created_at: NaiveDateTime,
    pub expires_at: Option<NaiveDateTime>,
    pub last_used_at: Option<NaiveDateTime>,
    pub revoked_at: Option<NaiveDateTime>,
}

/// A token a request presented, resolved.
#[derive(Debug, Clone)]
pub struct TokenIdentity {
    pub token_id: i64,
    pub user_id: i64,
    pub email: String,
    pub display_name: String,
    pub scopes: Vec<String>,
}

/// Checks a new token's name, scopes and expiry; returns them normalised.
pub fn validate(
    name: &str,
    scopes: &[String],
    expires_at: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(String, String, Option<NaiveDateTime>), String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(format!(
            "name: must be 1 to {MAX_NAME} printable characters"
        ));
    }
    if scopes.is_empty() {
        return Err(format!(
            "scopes: choose at least one of {}",
            SCOPES.join(", ")
        ));
    }
    let mut normalised: Vec<&str> = Vec::new();
    for scope in scopes {
        let known = SCOPES
            .iter()
            .find(|s| **s == scope.as_str())
            .ok_or_else(|| format!("scopes: {scope:?} is not one of {}", SCOPES.join(", ")))?;
        if !normalised.contains(known) {
            normalised.push(known);
        }
    }
    let expires_at = match expires_at {
        None => None,
        Some(text) => {
            let at = DateTime::parse_from_rfc3339(text)
                .map_err(|_| format!("expires_at: {text:?} is not an RFC 3339 time"))?
                .with_timezone(&Utc);
            if at <= now {
                return Err("expires_at: must be in the future".to_owned());
            }
            Some(at.naive_utc())
        }
    };
    Ok((name.to_owned(), normalised.join(" "), expires_at))
}

/// Creates a token; returns its row and the token itself (the only time it exists in clear).
pub fn create(
    conn: &mut DbConnection,
    user_id: i64,
    name: &str,
    scopes: &str,
    expires_at: Option<NaiveDateTime>,
) -> QueryResult<(TokenRow, String)> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!(
        "{PREFIX}{}",
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
    );
    write_transaction(conn, |tx| {
        let id: i64 = diesel::insert_into(api_tokens::table)
            .values((
                api_tokens::user_id.eq(user_id),
                api_tokens::name.eq(name),
                api_tokens::token_hash.eq(token_id(&token)),
                api_tokens::scopes.eq(scopes),
                api_tokens::created_at.eq(Utc::now().naive_utc()),
                api_tokens::expires_at.eq(expires_at),
            ))
            .returning(api_tokens::id)
            .get_result(tx)?;
        let row = api_tokens::table
            .find(id)
            .select(TokenRow::as_select())
            .first(tx)?;
        Ok((row, token.clone()))
    })
}

pub fn list(conn: &mut DbConnection, user_id: i64) -> QueryResult<Vec<TokenRow>> {
    api_tokens::table
        .filter(api_tokens::user_id.eq(user_id))
        .filter(api_tokens::revoked_at.is_null())
        .order(api_tokens::id)
        .select(TokenRow::as_select())
        .load(conn)
}

/// Revokes token `id` of `user_id`; false when there is no such live token of theirs.
pub fn revoke(conn: &mut DbConnection, user_id: i64, id: i64) -> QueryResult<bool> {
    diesel::update(
        api_tokens::table
            .find(id)
            .filter(api_tokens::user_id.eq(user_id))
            .filter(api_tokens::revoked_at.is_null()),
    )
    .set(api_tokens::revoked_at.eq(Some(Utc::now().naive_utc())))
    .execute(conn)
    .map(|n| n == 1)
}

/// A live token joined with its user, as `resolve` reads it.
#[derive(Queryable)]
struct LiveToken {
    id: i64,
    user_id: i64,
    scopes: String,
    expires_at: Option<NaiveDateTime>,
    last_used_at: Option<NaiveDateTime>,
    email: String,
    display_name: String,
}

/// Revokes every live token of `user_id` (their password changed or was reset).
pub fn revoke_all(conn: &mut DbConnection, user_id: i64) -> QueryResult<usize> {
    diesel::update(
        api_tokens::table
            .filter(api_tokens::user_id.eq(user_id))
            .filter(api_tokens::revoked_at.is_null()),
    )
    .set(api_tokens::revoked_at.eq(Some(Utc::now().naive_utc())))
    .execute(conn)
}

/// A live token joined with its user: not revoked, not expired, its user not disabled.
pub fn resolve(conn: &mut DbConnection, presented: &str) -> QueryResult<Option<TokenIdentity>> {
    if !presented.starts_with(PREFIX) {
        return Ok(None);
    }
    let now = Utc::now().naive_utc();
    let row: Option<LiveToken> = api_tokens::table
        .inner_join(users::table)
        .filter(api_tokens::token_hash.eq(token_id(presented)))
        .filter(api_tokens::revoked_at.is_null())
        .filter(users::disabled_at.is_null())
        .select((
            api_tokens::id,
            api_tokens::user_id,
            api_tokens::scopes,
            api_tokens::expires_at,
            api_tokens::last_used_at,
            users::email,
            users::display_name,
        ))
        .first(conn)
        .optional()?;
    let Some(LiveToken {
        id,
        user_id,
        scopes,
        expires_at,
        last_used_at,
        email,
        display_name,
    }) = row
    else {
        return Ok(None);
    };
    if expires_at.is_some_and(|at| at <= now) {
        return Ok(None);
    }
    if last_used_at.is_none_or(|at| now - at >= TOUCH_EVERY) {
        diesel::update(api_tokens::table.find(id))
            .set(api_tokens::last_used_at.eq(Some(now)))
            .execute(conn)?;
    }
    Ok(Some(TokenIdentity {
        token_id: id,
        user_id,
        email,
        display_name,
        scopes: scopes.split_whitespace().map(str::to_owned).collect(),
    }))
}

/// Whether token `id` still works: not revoked, not expired, its user not disabled. For
/// long-lived connections that authenticated with it.
pub fn is_live(conn: &mut DbConnection, id: i64) -> QueryResult<bool> {
    let now = Utc::now().naive_utc();
    let expires: Option<Option<NaiveDateTime>> = api_tokens::table
        .inner_join(users::table)
        .filter(api_tokens::id.eq(id))
        .filter(api_tokens::revoked_at.is_null())
        .filter(users::disabled_at.is_null())
        .select(api_tokens::expires_at)
        .first(conn)
        .optional()?;
    Ok(matches!(expires, Some(None)) || matches!(expires, Some(Some(at)) if at > now))
}

/// Throttles guessing of API tokens per client address: `per_minute` unknown tokens are
/// answered 401; the next one blocks the address for a minute (429, valid tokens too, so a
/// guess cannot tell), once per block recorded in the audit log. Tokens carry 256 random bits,
/// so this is about noise and detection rather than odds.
pub struct TokenGuard {
    failures: Option<DefaultKeyedRateLimiter<IpAddr>>,
    blocked: moka::sync::Cache<IpAddr, ()>,
}

/// How long an address that guessed too often is refused.
pub const TOKEN_BLOCK: Duration = Duration::from_secs(60);

impl TokenGuard {
    pub fn per_minute(per_minute: u32) -> Self {
        Self {
            failures: NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            blocked: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(TOKEN_BLOCK)
                .build(),
        }
    }

    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        self.blocked.contains_key(&ip)
    }

    /// Counts an unknown token from `ip`; true when this one blocks the address.
    pub fn failed(&self, ip: IpAddr) -> bool {
        let Some(failures) = &self.failures else {
            return false;
        };
        if failures.check_key(&ip).is_ok() {
            return false;
        }
        let newly = !self.blocked.contains_key(&ip);
        self.blocked.insert(ip, ());
        newly
    }
}
