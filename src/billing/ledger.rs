//! The credits ledger: append-only entries per workspace (purchase, usage, refund, admin
//! adjustment with a reason). Each entry stores the balance after it, computed under the
//! workspace's row lock (PostgreSQL `FOR UPDATE`; SQLite has one writer at a time), so
//! concurrent spenders queue up and the balance can never go below zero.

use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

use crate::db::DbConnection;
use crate::schema::credit_entries;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Purchase,
    Usage,
    Refund,
    Adjustment,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Purchase => "purchase",
            Self::Usage => "usage",
            Self::Refund => "refund",
            Self::Adjustment => "adjustment",
        }
    }
}

#[derive(Debug, Clone, Serialize, Queryable, utoipa::ToSchema)]
pub struct Entry {
    pub id: i64,
    pub kind: String,
    /// Tokens: positive adds, negative spends.
    pub amount: i64,
    pub balance_after: i64,
    pub order_id: Option<i64>,
    pub user_id: Option<i64>,
    pub reason: String,
    #[schema(value_type = String)]
    pub created_at: NaiveDateTime,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("the balance is {balance}; {wanted} cannot be taken from it")]
    Insufficient { balance: i64, wanted: i64 },
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

/// The balance now (0 for a workspace that never had credits).
pub fn balance(conn: &mut DbConnection, tenant_id: i64) -> QueryResult<i64> {
    Ok(credit_entries::table
        .filter(credit_entries::tenant_id.eq(tenant_id))
        .order(credit_entries::id.desc())
        .select(credit_entries::balance_after)
        .first::<i64>(conn)
        .optional()?
        .unwrap_or(0))
}

/// What to append.
#[derive(Debug, Clone)]
pub struct NewEntry<'a> {
    pub tenant_id: i64,
    pub kind: EntryKind,
    pub amount: i64,
    pub order_id: Option<i64>,
    pub user_id: Option<i64>,
    pub reason: &'a str,
}

/// Appends an entry inside the caller's transaction. A negative amount larger than the
/// balance is refused — unless `clamp`, when it takes what there is (usage already spent
/// cannot be refused after the fact). Answers the entry's amount and the new balance.
pub fn append(
    conn: &mut DbConnection,
    entry: &NewEntry<'_>,
    clamp: bool,
) -> Result<(i64, i64), LedgerError> {
    crate::tenancy::lock_tenant(conn, entry.tenant_id)?;
    let current = balance(conn, entry.tenant_id)?;
    let mut amount = entry.amount;
    if current + amount < 0 {
        if !clamp {
            return Err(LedgerError::Insufficient {
                balance: current,
                wanted: -amount,
            });
        }
        amount = -current;
    }
    if amount == 0 && entry.kind == EntryKind::Usage {
        return Ok((0, current));
    }
    let after = current + amount;
    diesel::insert_into(credit_entries::table)
        .values((
            credit_entries::tenant_id.eq(entry.tenant_id),
            credit_entries::kind.eq(entry.kind.as_str()),
            credit_entries::amount.eq(amount),
            credit_entries::balance_after.eq(after),
            credit_entries::order_id.eq(entry.order_id),
            credit_entries::user_id.eq(entry.user_id),
            credit_entries::reason.eq(entry.reason),
            credit_entries::created_at.eq(Utc::now().naive_utc()),
        ))
        .execute(conn)?;
    Ok((amount, after))
}

/// [`append`] taking what there is: it never fails for a lack of credits.
pub fn append_clamped(conn: &mut DbConnection, entry: &NewEntry<'_>) -> QueryResult<(i64, i64)> {
    append(conn, entry, true).map_err(|e| match e {
        LedgerError::Db(e) => e,
        // Clamping takes at most the balance, so this cannot happen; say so if it does.
        LedgerError::Insufficient { .. } => {
            diesel::result::Error::QueryBuilderError(e.to_string().into())
        }
    })
}

/// The newest entries of a workspace, newest first.
pub fn recent(conn: &mut DbConnection, tenant_id: i64, limit: i64) -> QueryResult<Vec<Entry>> {
    credit_entries::table
        .filter(credit_entries::tenant_id.eq(tenant_id))
        .order(credit_entries::id.desc())
        .limit(limit)
        .select((
            credit_entries::id,
            credit_entries::kind,
            credit_entries::amount,
            credit_entries::balance_after,
            credit_entries::order_id,
            credit_entries::user_id,
            credit_entries::reason,
            credit_entries::created_at,
        ))
        .load(conn)
}
