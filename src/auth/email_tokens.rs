//! Single-use, expiring tokens sent by mail (verification and reset links). The link carries
//! 256 random bits; the table keeps only their SHA-256. Using a token marks it used in the same
//! transaction as the change it authorises, so a link works exactly once.

use base64::Engine as _;
use chrono::{NaiveDateTime, TimeDelta};
use diesel::prelude::*;
use rand::RngCore as _;

use super::sessions::token_id;
use crate::db::DbConnection;
use crate::schema::email_tokens;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Verify,
    Reset,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Self::Verify => "verify",
            Self::Reset => "reset",
        }
    }
}

/// Why a link did not work; each is a different message for the person holding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("This link is not valid. Check that you copied all of it.")]
    Unknown,
    #[error("This link was already used.")]
    Used,
    #[error("This link has expired. Ask for a new one.")]
    Expired,
}

/// Issues a token for `user_id`, replacing any unused one of the same purpose. Returns the
/// token for the link.
pub fn issue(
    conn: &mut DbConnection,
    user_id: i64,
    purpose: Purpose,
    valid_for: TimeDelta,
    now: NaiveDateTime,
) -> QueryResult<String> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    diesel::delete(
        email_tokens::table
            .filter(email_tokens::user_id.eq(user_id))
            .filter(email_tokens::purpose.eq(purpose.as_str()))
            .filter(email_tokens::used_at.is_null()),
    )
    .execute(conn)?;
    diesel::insert_into(email_tokens::table)
        .values((
            email_tokens::id.eq(token_id(&token)),
            email_tokens::user_id.eq(user_id),
            email_tokens::purpose.eq(purpose.as_str()),
            email_tokens::created_at.eq(now),
            email_tokens::expires_at.eq(now
                .checked_add_signed(valid_for)
                .unwrap_or(NaiveDateTime::MAX)),
        ))
        .execute(conn)?;
    Ok(token)
}

/// Checks a token without using it (to decide whether to show a form) and returns its user.
pub fn peek(
    conn: &mut DbConnection,
    token: &str,
    purpose: Purpose,
    now: NaiveDateTime,
) -> QueryResult<Result<i64, TokenError>> {
    let row: Option<(i64, NaiveDateTime, Option<NaiveDateTime>)> = email_tokens::table
        .filter(email_tokens::id.eq(token_id(token.trim())))
        .filter(email_tokens::purpose.eq(purpose.as_str()))
        .select((
            email_tokens::user_id,
            email_tokens::expires_at,
            email_tokens::used_at,
        ))
        .first(conn)
        .optional()?;
    Ok(match row {
        None => Err(TokenError::Unknown),
        Some((_, _, Some(_))) => Err(TokenError::Used),
        Some((_, expires_at, None)) if now >= expires_at => Err(TokenError::Expired),
        Some((user_id, _, None)) => Ok(user_id),
    })
}

/// Marks the token used and returns its user. Call inside the transaction that acts on it.
pub fn consume(
    conn: &mut DbConnection,
    token: &str,
    purpose: Purpose,
    now: NaiveDateTime,
) -> QueryResult<Result<i64, TokenError>> {
    let user_id = match peek(conn, token, purpose, now)? {
        Ok(user_id) => user_id,
        Err(e) => return Ok(Err(e)),
    };
    let id = token_id(token.trim());
    // Guarded on `used_at IS NULL`, so of two concurrent uses only one wins.
    let marked = diesel::update(
        email_tokens::table
            .filter(email_tokens::id.eq(&id))
            .filter(email_tokens::used_at.is_null()),
    )
    .set(email_tokens::used_at.eq(Some(now)))
    .execute(conn)?;
    Ok(if marked == 1 {
        Ok(user_id)
    } else {
        Err(TokenError::Used)
    })
}

/// Deletes tokens that expired more than a day ago (used or not).
pub fn prune(conn: &mut DbConnection, now: NaiveDateTime) -> QueryResult<usize> {
    diesel::delete(
        email_tokens::table.filter(email_tokens::expires_at.lt(now - TimeDelta::days(1))),
    )
    .execute(conn)
}
