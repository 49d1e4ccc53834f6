//! Changing a password (knowing the current one) and resetting a forgotten one by mail.
//!
//! Both end the account's other sessions: whoever else knew the old password is signed out.
//! A reset link works once, for `RESET_LINK_MINUTES`; asking for one never reveals whether the
//! address has an account.

use std::sync::Arc;

use chrono::{NaiveDateTime, TimeDelta, Utc};
use diesel::prelude::*;
use secrecy::SecretString;

use super::email_tokens::{self, Purpose, TokenError};
use super::password::{HashError, PolicyError};
use super::sessions::Sessions;
use super::{Email, PasswordHasher, PasswordPolicy};
use crate::audit::{self, AuditEvent, events};
use crate::db::{Db, DbError, write_transaction};
use crate::jobs::Queue;
use crate::mail::OutgoingMail;
use crate::schema::users;
use crate::web::Templates;

pub const RESET_LINK_MINUTES: i64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("current_password: is not correct")]
    WrongCurrent,
    #[error("{0}")]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error(transparent)]
    Database(#[from] DbError),
    #[error("{0}")]
    Internal(String),
    /// The current-password check was refused (locked account, too many checks).
    #[error(transparent)]
    Reauth(super::login::LoginError),
}

impl From<diesel::result::Error> for PasswordError {
    fn from(error: diesel::result::Error) -> Self {
        Self::Database(error.into())
    }
}

#[derive(Clone)]
pub struct PasswordService {
    db: Db,
    login: super::login::LoginService,
    hasher: PasswordHasher,
    policy: PasswordPolicy,
    sessions: Sessions,
    personal: super::personal_keys::PersonalKeys,
    queue: Queue,
    templates: Arc<Templates>,
    public_url: String,
}

impl PasswordService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        db: Db,
        login: super::login::LoginService,
        hasher: PasswordHasher,
        policy: PasswordPolicy,
        sessions: Sessions,
        personal: super::personal_keys::PersonalKeys,
        queue: Queue,
        templates: Arc<Templates>,
        public_url: String,
    ) -> Self {
        Self {
            db,
            login,
            hasher,
            policy,
            sessions,
            personal,
            queue,
            templates,
            public_url,
        }
    }

    fn mail(
        &self,
        template: &str,
        to: &str,
        values: &[(&str, String)],
    ) -> Option<crate::jobs::NewJob> {
        let mut context = tera::Context::new();
        for (key, value) in values {
            context.insert(*key, value);
        }
        OutgoingMail::compose(&self.templates, template, to, &context)
            .and_then(OutgoingMail::into_job)
            .inspect_err(|e| tracing::error!(error = %e, template, "cannot compose mail"))
            .ok()
    }

    /// Changes the password of `user_id` after checking the current one. Ends every other
    /// session; the caller rotates the current one.
    pub async fn change(
        &self,
        user_id: i64,
        current: SecretString,
        new: SecretString,
        keep_session: &str,
        client: &super::login::Client,
    ) -> Result<(), PasswordError> {
        let email: String = self
            .db
            .run(move |conn| {
                users::table
                    .find(user_id)
                    .select(users::email)
                    .first(conn)
                    .map_err(DbError::from)
            })
            .await?;
        match self
            .login
            .reauthenticate(user_id, current.clone(), client)
            .await
        {
            Ok(true) => {}
            Ok(false) => return Err(PasswordError::WrongCurrent),
            Err(e) => return Err(PasswordError::Reauth(e)),
        }
        self.policy.check(&new, &stored_email(&email)?)?;
        // The personal key of private conversations follows the password.
        let rewrapped = match self.personal.rewrap(user_id, current, new.clone()).await {
            Ok(rewrapped) => rewrapped,
            Err(super::personal_keys::PersonalKeyError::WrongPassword) => None,
            Err(super::personal_keys::PersonalKeyError::Hash(e)) => return Err(e.into()),
            Err(super::personal_keys::PersonalKeyError::Db(e)) => return Err(e.into()),
        };
        let hash = self.hasher.hash(new).await?;
        let mail = self.mail(
            "password_changed",
            &email,
            &[(
                "security_url",
                format!("{}/settings/security", self.public_url),
            )],
        );
        let queue = self.queue.clone();
        self.db
            .run(move |conn| {
                write_transaction(conn, |tx| {
                    let now = Utc::now().naive_utc();
                    set_password(tx, user_id, &hash, now)?;
                    if let Some(rewrapped) = &rewrapped {
                        rewrapped.store(tx)?;
                    }
                    super::two_factor::forget_remembered_devices(tx, user_id)?;
                    // Whoever knew the old password may have made tokens with it.
                    super::api_tokens::revoke_all(tx, user_id)?;
                    audit::record(tx, &event(events::PASSWORD_CHANGED, user_id), now)?;
                    if let Some(mail) = &mail {
                        queue.enqueue_in(tx, mail)?;
                    }
                    Ok::<_, PasswordError>(())
                })
            })
            .await?;
        self.queue.wake();
        self.sessions
            .announce(super::sessions::Revocation::TokensOf(user_id));
        self.sessions
            .revoke_all_for_user(user_id, Some(keep_session))
            .await?;
        Ok(())
    }

    /// Mails a reset link if `email` has an account; otherwise does nothing, visibly the same.
    pub async fn forgot(&self, email: &str) -> Result<(), PasswordError> {
        let Ok(email) = Email::parse(email) else {
            return Ok(());
        };
        let service = self.clone();
        let queued = self
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| {
                    let Some(user) = super::users::find_by_email(tx, &email)? else {
                        return Ok::<_, PasswordError>(false);
                    };
                    if user.disabled_at.is_some() {
                        return Ok(false);
                    }
                    let now = Utc::now().naive_utc();
                    let token = email_tokens::issue(
                        tx,
                        user.id,
                        Purpose::Reset,
                        TimeDelta::minutes(RESET_LINK_MINUTES),
                        now,
                    )?;
                    let link = format!("{}/reset?token={token}", service.public_url);
                    let values = [
                        ("reset_url", link),
                        ("minutes", RESET_LINK_MINUTES.to_string()),
                    ];
                    if let Some(mail) = service.mail("password_reset", &user.email, &values) {
                        service.queue.enqueue_in(tx, &mail)?;
                    }
                    audit::record(tx, &event(events::PASSWORD_RESET_REQUESTED, user.id), now)?;
                    Ok(true)
                })
            })
            .await?;
        if queued {
            self.queue.wake();
        }
        Ok(())
    }

    /// Whether a reset link can still be used, without using it (to show the form or not).
    pub async fn check_reset_token(
        &self,
        token: String,
    ) -> Result<Result<i64, TokenError>, DbError> {
        self.db
            .run(move |conn| {
                email_tokens::peek(conn, &token, Purpose::Reset, Utc::now().naive_utc())
                    .map_err(DbError::from)
            })
            .await
    }

    /// Sets a new password with a reset link: the link is spent, every session ends, and a
    /// lockout is lifted (the person proved they own the address).
    pub async fn reset(&self, token: String, new: SecretString) -> Result<(), PasswordError> {
        let user_id = self.check_reset_token(token.clone()).await??;
        let email: String = self
            .db
            .run(move |conn| super::users::email_of(conn, user_id).map_err(DbError::from))
            .await?;
        self.policy.check(&new, &stored_email(&email)?)?;
        let hash = self.hasher.hash(new).await?;
        self.db
            .run(move |conn| {
                write_transaction(conn, |tx| {
                    let now = Utc::now().naive_utc();
                    // Consumed here, in the transaction that uses it: two tabs cannot both win.
                    let user_id = email_tokens::consume(tx, &token, Purpose::Reset, now)??;
                    set_password(tx, user_id, &hash, now)?;
                    super::two_factor::forget_remembered_devices(tx, user_id)?;
                    // Whoever knew the old password may have made tokens with it.
                    super::api_tokens::revoke_all(tx, user_id)?;
                    diesel::update(users::table.find(user_id))
                        .set((
                            users::failed_logins.eq(0),
                            users::locked_until.eq(None::<NaiveDateTime>),
                        ))
                        .execute(tx)?;
                    // Nobody can open the private history without the old password: it goes,
                    // as the reset page warned.
                    let erased = super::personal_keys::erase(tx, user_id)?;
                    let mut reset = event(events::PASSWORD_RESET, user_id);
                    reset.details = serde_json::json!({ "private_rooms_erased": erased });
                    audit::record(tx, &reset, now)?;
                    Ok::<_, PasswordError>(())
                })
            })
            .await?;
        self.personal.lock(user_id);
        self.sessions
            .announce(super::sessions::Revocation::TokensOf(user_id));
        self.sessions.revoke_all_for_user(user_id, None).await?;
        Ok(())
    }
}

/// Addresses in the table were validated when stored; one that no longer parses is a bug.
fn stored_email(email: &str) -> Result<Email, PasswordError> {
    Email::parse(email)
        .map_err(|e| PasswordError::Internal(format!("stored address does not parse: {e}")))
}

fn set_password(
    conn: &mut crate::db::DbConnection,
    user_id: i64,
    hash: &str,
    now: NaiveDateTime,
) -> QueryResult<()> {
    diesel::update(users::table.find(user_id))
        .set((
            users::password_hash.eq(Some(hash)),
            users::updated_at.eq(now),
        ))
        .execute(conn)
        .map(drop)
}

fn event(name: &'static str, user_id: i64) -> AuditEvent {
    AuditEvent::by_user(name, user_id)
}
