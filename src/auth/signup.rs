//! Self-service sign-up and email verification.
//!
//! The answer to a sign-up never reveals whether the address already has an account: a new
//! address gets a verification link, a known one gets a mail saying so (with a way to sign in
//! or reset the password). Both are queued in the transaction that decides which.

use std::sync::Arc;

use chrono::{TimeDelta, Utc};
use diesel::prelude::*;
use secrecy::SecretString;

use super::email_tokens::{self, Purpose, TokenError};
use super::password::{HashError, PolicyError};
use super::users::{self, CreateUserError, CreatedVia, NewUser};
use super::{Email, PasswordHasher, PasswordPolicy};
use crate::audit::{self, AuditEvent, events};
use crate::db::{Db, DbError};
use crate::jobs::Queue;
use crate::mail::OutgoingMail;
use crate::schema::users as users_table;
use crate::settings::AccountSettings;
use crate::web::Templates;

#[derive(Debug, thiserror::Error)]
pub enum SignupError {
    /// A field is invalid; the message names it.
    #[error("{0}")]
    Invalid(String),
    #[error("Sign-up is closed on this server; ask an administrator for an invitation.")]
    Closed,
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error(transparent)]
    Database(#[from] DbError),
    #[error(transparent)]
    Mail(anyhow::Error),
}

impl From<PolicyError> for SignupError {
    fn from(error: PolicyError) -> Self {
        Self::Invalid(error.to_string())
    }
}

#[derive(Clone)]
pub struct SignupService {
    db: Db,
    hasher: PasswordHasher,
    queue: Queue,
    templates: Arc<Templates>,
    settings: AccountSettings,
    public_url: String,
}

impl SignupService {
    pub fn new(
        db: Db,
        hasher: PasswordHasher,
        queue: Queue,
        templates: Arc<Templates>,
        settings: AccountSettings,
        public_url: String,
    ) -> Self {
        Self {
            db,
            hasher,
            queue,
            templates,
            settings,
            public_url,
        }
    }

    pub async fn sign_up(
        &self,
        email: &str,
        password: SecretString,
        name: Option<&str>,
        plan: Option<String>,
    ) -> Result<(), SignupError> {
        if !self.settings.signup_enabled {
            return Err(SignupError::Closed);
        }
        let email = Email::parse(email).map_err(SignupError::Invalid)?;
        let display_name = match name.map(str::trim).filter(|n| !n.is_empty()) {
            Some(name) => users::parse_display_name(name).map_err(SignupError::Invalid)?,
            None => email
                .as_str()
                .split('@')
                .next()
                .unwrap_or_default()
                .to_owned(),
        };
        PasswordPolicy::new(self.settings.password_min_length).check(&password, &email)?;
        let password_hash = self.hasher.hash(password).await?;

        let valid_for = TimeDelta::try_hours(
            i64::try_from(self.settings.verification_link_hours).unwrap_or(24),
        )
        .unwrap_or(TimeDelta::MAX);
        let (service, target) = (self.clone(), email.clone());
        self.db
            .run(move |conn| {
                crate::db::write_transaction(conn, |tx| {
                    let now = Utc::now().naive_utc();
                    let account_exists = |tx: &mut crate::db::DbConnection| {
                        let login_url = format!("{}/login", service.public_url);
                        let mail =
                            service.mail("account_exists", &target, &[("login_url", login_url)])?;
                        service.queue.enqueue_in(tx, &mail)?;
                        Ok::<_, SignupError>(())
                    };
                    if users::find_by_email(tx, &target)?.is_some() {
                        return account_exists(tx);
                    }
                    let new = NewUser {
                        email: target.clone(),
                        display_name,
                        password_hash: Some(password_hash),
                        verified: false,
                        role: None,
                        via: CreatedVia::SignUp,
                    };
                    // `create` runs in a savepoint, so losing a race for the same address leaves this
                    // transaction usable and gets the same answer as a known address.
                    let user = match users::create(tx, new) {
                        Ok((user, _)) => user,
                        Err(CreateUserError::EmailTaken) => return account_exists(tx),
                        Err(CreateUserError::Database(e)) => return Err(e.into()),
                    };
                    if let Some(plan) = &plan {
                        diesel::update(users_table::table.find(user.id))
                            .set(users_table::signup_plan.eq(plan))
                            .execute(tx)
                            .map_err(DbError::from)?;
                    }
                    let token = email_tokens::issue(tx, user.id, Purpose::Verify, valid_for, now)?;
                    let link = format!("{}/verify?token={token}", service.public_url);
                    let mail = service.mail(
                        "verify",
                        &target,
                        &[("verify_url", link), ("name", user.display_name.clone())],
                    )?;
                    service.queue.enqueue_in(tx, &mail)?;
                    Ok::<_, SignupError>(())
                })
            })
            .await?;
        self.queue.wake();
        Ok(())
    }

    fn mail(
        &self,
        template: &str,
        to: &Email,
        values: &[(&str, String)],
    ) -> Result<crate::jobs::NewJob, SignupError> {
        let mut context = tera::Context::new();
        for (key, value) in values {
            context.insert(*key, value);
        }
        OutgoingMail::compose(&self.templates, template, to.as_str(), &context)
            .and_then(OutgoingMail::into_job)
            .map_err(SignupError::Mail)
    }

    /// Whether a verification link can still be used, without using it.
    pub async fn check_verify_token(
        &self,
        token: String,
    ) -> Result<Result<i64, TokenError>, DbError> {
        self.db
            .run(move |conn| {
                email_tokens::peek(conn, &token, Purpose::Verify, Utc::now().naive_utc())
                    .map_err(DbError::from)
            })
            .await
    }

    /// Uses a verification link: the address is verified, the link spent.
    pub async fn verify(&self, token: String) -> Result<Result<String, TokenError>, DbError> {
        self.db
            .run(move |conn| {
                crate::db::write_transaction(conn, |tx| {
                    let now = Utc::now().naive_utc();
                    let user_id = match email_tokens::consume(tx, &token, Purpose::Verify, now)? {
                        Ok(user_id) => user_id,
                        Err(e) => return Ok(Err(e)),
                    };
                    diesel::update(
                        users_table::table
                            .find(user_id)
                            .filter(users_table::email_verified_at.is_null()),
                    )
                    .set((
                        users_table::email_verified_at.eq(Some(now)),
                        users_table::updated_at.eq(now),
                    ))
                    .execute(tx)?;
                    let email: String = users_table::table
                        .find(user_id)
                        .select(users_table::email)
                        .first(tx)?;
                    audit::record(
                        tx,
                        &AuditEvent {
                            ..AuditEvent::by_user(events::EMAIL_VERIFIED, user_id)
                        },
                        now,
                    )?;
                    Ok::<_, diesel::result::Error>(Ok(email))
                })
                .map_err(DbError::from)
            })
            .await
    }
}

impl From<diesel::result::Error> for SignupError {
    fn from(error: diesel::result::Error) -> Self {
        Self::Database(error.into())
    }
}
