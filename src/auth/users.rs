//! Users: creation (with the first-user-becomes-owner rule), lookup, listing, disabling.
//! Every change writes its audit event in the same transaction.

use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error as DieselError;
use serde::Serialize;

use super::Email;
use crate::audit::{self, AuditEvent, events};
use crate::db::DbConnection;
use crate::schema::users;
use crate::tenancy::{self, Membership, Role};

const MAX_DISPLAY_NAME: usize = 80;

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = users)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub display_name: String,
    pub email_verified_at: Option<NaiveDateTime>,
    pub disabled_at: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
}

/// A display name people can read: trimmed, 1–80 characters, no control characters.
pub fn parse_display_name(input: &str) -> Result<String, String> {
    let name = input.trim();
    if name.is_empty() || name.chars().count() > MAX_DISPLAY_NAME {
        return Err(format!("name: must be 1 to {MAX_DISPLAY_NAME} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err("name: must not contain control characters".to_owned());
    }
    Ok(name.to_owned())
}

/// Who is creating the account, for the audit log.
#[derive(Debug, Clone, Copy)]
pub enum CreatedVia {
    Cli,
    SignUp,
    /// First sign-in through an OpenID Connect / OAuth provider.
    Provider,
}

impl CreatedVia {
    fn as_str(self) -> &'static str {
        match self {
            Self::Cli => "cli",
            Self::SignUp => "signup",
            Self::Provider => "provider",
        }
    }
}

#[derive(Debug)]
pub struct NewUser {
    pub email: Email,
    pub display_name: String,
    /// An argon2id PHC string from `PasswordHasher::hash`.
    pub password_hash: Option<String>,
    pub verified: bool,
    /// The role in the default tenant; `None` means owner for the first user, else viewer.
    pub role: Option<Role>,
    pub via: CreatedVia,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateUserError {
    #[error("email: an account with this address already exists")]
    EmailTaken,
    #[error(transparent)]
    Database(#[from] DieselError),
}

/// Creates the user and their membership in the default tenant, in one transaction. The
/// first member of a tenant without an owner becomes its owner.
pub fn create(conn: &mut DbConnection, new: NewUser) -> Result<(User, Role), CreateUserError> {
    crate::db::write_transaction(conn, |tx| {
        let now = Utc::now().naive_utc();
        let tenant_id = tenancy::default_tenant_id(tx)?;
        tenancy::lock_tenant(tx, tenant_id)?;
        let role = match new.role {
            Some(role) => role,
            None if !tenancy::has_owner(tx, tenant_id)? => Role::Owner,
            None => Role::Viewer,
        };
        // `returning(User::as_returning())` does not compile through MultiConnection (its
        // returning clause forwards per backend); return the id and read the row back.
        let id: i64 = crate::db::unless_taken(
            diesel::insert_into(users::table)
                .values((
                    users::email.eq(new.email.as_str()),
                    users::display_name.eq(&new.display_name),
                    users::password_hash.eq(&new.password_hash),
                    users::email_verified_at.eq(new.verified.then_some(now)),
                    users::created_at.eq(now),
                    users::updated_at.eq(now),
                ))
                .returning(users::id)
                .get_result(tx),
        )
        .map_err(CreateUserError::Database)?
        .ok_or(CreateUserError::EmailTaken)?;
        let user: User = users::table.find(id).select(User::as_select()).first(tx)?;
        tenancy::add_member(tx, tenant_id, user.id, role, now)?;
        // The installation's first person, and anyone created with a staff role (CLI
        // `--role`), may use the admin area; people who sign up may not.
        let staff = match new.role {
            Some(role) if role != Role::Viewer => Some(role),
            None if role == Role::Owner => Some(Role::Owner),
            _ => None,
        };
        if let Some(staff) = staff {
            diesel::update(users::table.find(user.id))
                .set(users::staff_role.eq(staff.as_str()))
                .execute(tx)?;
        }
        audit::record(
            tx,
            &AuditEvent {
                event: events::USER_CREATED,
                tenant_id: Some(tenant_id),
                subject: Some(format!("user:{}", user.id)),
                details: serde_json::json!({
                    "via": new.via.as_str(),
                    "email": user.email,
                    "role": role.as_str(),
                    "verified": new.verified,
                }),
                ..AuditEvent::default()
            },
            now,
        )?;
        Ok((user, role))
    })
}

pub fn email_of(conn: &mut DbConnection, user_id: i64) -> QueryResult<String> {
    users::table.find(user_id).select(users::email).first(conn)
}

pub fn find_by_email(conn: &mut DbConnection, email: &Email) -> QueryResult<Option<User>> {
    users::table
        .filter(users::email.eq(email.as_str()))
        .select(User::as_select())
        .first(conn)
        .optional()
}

/// Every user with their memberships, oldest first.
pub fn list(conn: &mut DbConnection) -> QueryResult<Vec<(User, Vec<Membership>)>> {
    let all: Vec<User> = users::table
        .order(users::id)
        .select(User::as_select())
        .load(conn)?;
    let ids: Vec<i64> = all.iter().map(|u| u.id).collect();
    let mut by_user: std::collections::HashMap<i64, Vec<Membership>> =
        std::collections::HashMap::new();
    for (user_id, membership) in tenancy::memberships_of(conn, &ids)? {
        by_user.entry(user_id).or_default().push(membership);
    }
    Ok(all
        .into_iter()
        .map(|user| {
            let mine = by_user.remove(&user.id).unwrap_or_default();
            (user, mine)
        })
        .collect())
}

/// Disables or re-enables an account. Returns `None` when no such user exists, otherwise
/// whether anything changed (disabling a disabled account is not an error).
pub fn set_disabled(
    conn: &mut DbConnection,
    email: &Email,
    disabled: bool,
    actor_user_id: Option<i64>,
) -> QueryResult<Option<bool>> {
    crate::db::write_transaction(conn, |tx| {
        let Some(user) = find_by_email(tx, email)? else {
            return Ok(None);
        };
        let base = AuditEvent {
            actor_user_id,
            ..AuditEvent::default()
        };
        set_disabled_by_id(tx, user.id, disabled, base).map(|(changed, _)| Some(changed))
    })
}

/// The same by id, the audit entry based on `base` (actor, IP, user agent): it records the
/// state before and after. Answers whether anything changed, and the ids of the sessions
/// it ended (a server process drops them from its cache: `Sessions::forget_all`).
pub fn set_disabled_by_id(
    conn: &mut DbConnection,
    user_id: i64,
    disabled: bool,
    base: AuditEvent,
) -> QueryResult<(bool, Vec<String>)> {
    crate::db::write_transaction(conn, |tx| {
        let now = Utc::now().naive_utc();
        let changed = diesel::update(
            users::table
                .find(user_id)
                .filter(users::disabled_at.is_null().eq(disabled)),
        )
        .set((
            users::disabled_at.eq(disabled.then_some(now)),
            users::updated_at.eq(now),
        ))
        .execute(tx)?;
        if changed == 0 {
            return Ok((false, Vec::new()));
        }
        // Signed-in browsers lose access at once on nodes that read the database, and within
        // the session cache's TTL on the others unless the caller forgets the ended ones.
        let ended: Vec<String> = if disabled {
            diesel::delete(
                crate::schema::sessions::table.filter(crate::schema::sessions::user_id.eq(user_id)),
            )
            .returning(crate::schema::sessions::id)
            .get_results(tx)?
        } else {
            Vec::new()
        };
        let email = email_of(tx, user_id)?;
        audit::record(
            tx,
            &AuditEvent {
                event: if disabled {
                    events::USER_DISABLED
                } else {
                    events::USER_ENABLED
                },
                subject: Some(format!("user:{user_id}")),
                details: serde_json::json!({
                    "email": email,
                    "before": { "disabled": !disabled },
                    "after": { "disabled": disabled },
                }),
                ..base
            },
            now,
        )?;
        Ok((true, ended))
    })
}
