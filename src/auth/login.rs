//! Signing in with email and password.
//!
//! - Unknown email, wrong password and disabled account all give the same answer, after the
//!   same work (a hash is verified even when there is no account), so neither the message nor
//!   the timing tells an attacker which addresses exist.
//! - After `accounts.lockout_threshold` failures in a row the account is locked for
//!   `accounts.lockout_minutes` (never longer: an attacker cannot keep a person out) and its
//!   owner is mailed. The lock, the audit event and the mail job commit together.
//! - Each client IP gets `accounts.login_attempts_per_ip_per_minute` attempts (governor).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use secrecy::SecretString;

use super::password::{Admitted, HashError};
use super::sessions::{NewSession, Sessions};
use super::two_factor::{CodeKind, TwoFactor, TwoFactorError};
use super::{Email, PasswordHasher};
use crate::audit::{self, AuditEvent, events};
use crate::db::{Db, DbError};
use crate::jobs::Queue;
use crate::mail::OutgoingMail;
use crate::schema::users;
use crate::settings::AccountSettings;
use crate::web::Templates;

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("Email or password is incorrect.")]
    InvalidCredentials,
    #[error("Too many failed sign-ins: this account is locked for {minutes} more minute(s).")]
    Locked { minutes: i64 },
    #[error("Please verify your email address first: follow the link in the mail we sent you.")]
    EmailUnverified,
    #[error("This account is disabled; ask an administrator.")]
    Disabled,
    #[error(
        "Too many sign-in attempts from your network; try again in {retry_after_secs} seconds."
    )]
    RateLimited { retry_after_secs: u64 },
    #[error(transparent)]
    SecondFactor(#[from] TwoFactorError),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error(transparent)]
    Database(#[from] DbError),
}

/// Where a sign-in attempt came from, for rate limits and the audit log.
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    /// The remembered-device cookie, if the browser sent one.
    pub remembered_device: Option<String>,
}

/// A right password either signs in, or (with 2FA on) asks for the second step.
pub enum LoginOutcome {
    Session(NewSession),
    SecondFactor { challenge: String },
}

#[derive(Clone)]
pub struct LoginService {
    db: Db,
    hasher: PasswordHasher,
    sessions: Sessions,
    two_factor: TwoFactor,
    queue: Queue,
    templates: Arc<Templates>,
    settings: AccountSettings,
    per_ip: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    /// Password checks inside a session, per account: 5 a minute.
    reauth: Arc<DefaultKeyedRateLimiter<i64>>,
    dummy_hash: Arc<tokio::sync::OnceCell<String>>,
}

struct Candidate {
    id: i64,
    email: String,
    password_hash: Option<String>,
    verified: bool,
    disabled: bool,
    locked_until: Option<NaiveDateTime>,
}

impl LoginService {
    pub fn new(
        db: Db,
        hasher: PasswordHasher,
        sessions: Sessions,
        two_factor: TwoFactor,
        queue: Queue,
        templates: Arc<Templates>,
        settings: AccountSettings,
    ) -> Self {
        let per_ip = NonZeroU32::new(settings.login_attempts_per_ip_per_minute)
            .map(|n| Arc::new(RateLimiter::keyed(Quota::per_minute(n))));
        Self {
            db,
            hasher,
            sessions,
            two_factor,
            queue,
            templates,
            settings,
            per_ip,
            reauth: Arc::new(RateLimiter::keyed(Quota::per_minute(
                NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN),
            ))),
            dummy_hash: Arc::new(tokio::sync::OnceCell::new()),
        }
    }

    /// Signs in with email and password; every attempt is counted in `logins_total{outcome}`.
    pub async fn login(
        &self,
        email: &str,
        password: SecretString,
        client: &Client,
    ) -> Result<LoginOutcome, LoginError> {
        let result = self.password_login(email, password, client).await;
        let outcome = match &result {
            Ok(LoginOutcome::Session(_)) => "succeeded",
            Ok(LoginOutcome::SecondFactor { .. }) => "second_factor_asked",
            Err(LoginError::InvalidCredentials) => "invalid_credentials",
            Err(LoginError::Locked { .. }) => "locked",
            Err(LoginError::EmailUnverified) => "unverified",
            Err(LoginError::Disabled) => "disabled",
            Err(LoginError::RateLimited { .. }) => "rate_limited",
            Err(LoginError::Hash(_)) => "busy",
            Err(LoginError::SecondFactor(_) | LoginError::Database(_)) => "error",
        };
        metrics::counter!("logins_total", "method" => "password", "outcome" => outcome)
            .increment(1);
        result
    }

    async fn password_login(
        &self,
        email: &str,
        password: SecretString,
        client: &Client,
    ) -> Result<LoginOutcome, LoginError> {
        self.check_rate(client)?;
        // Admission first: in a storm the refusal costs no database work.
        let hashing = self.hasher.admit()?;
        let email = Email::parse(email).ok();
        let candidate = match &email {
            Some(email) => self.find(email.clone()).await?,
            None => None,
        };
        let now = Utc::now().naive_utc();
        // The password is checked even for a locked account, and the lock is only mentioned
        // to someone who knows it: otherwise five wrong guesses would reveal that an address
        // has an account.
        let locked_minutes = candidate
            .as_ref()
            .and_then(|c| c.locked_until)
            .filter(|until| *until > now)
            .map(|until| minutes_left(until, now));
        let stored = candidate.as_ref().and_then(|c| c.password_hash.clone());
        let matches = match stored {
            Some(hash) => hashing.verify(password, hash).await?,
            None => {
                // Same work as a real check, so timing does not reveal unknown addresses.
                let dummy = self.dummy_hash(&hashing).await?;
                hashing.verify(password, dummy).await?;
                false
            }
        };
        drop(hashing);
        let Some(user) = candidate else {
            return Err(LoginError::InvalidCredentials);
        };
        if let Some(minutes) = locked_minutes {
            // Failures while locked neither extend the lock nor count towards another.
            return Err(if matches && !user.disabled {
                LoginError::Locked { minutes }
            } else {
                LoginError::InvalidCredentials
            });
        }
        if !matches || user.disabled {
            self.record_failure(
                user.id,
                user.email.clone(),
                client,
                if user.disabled {
                    "disabled"
                } else {
                    "password"
                },
            )
            .await?;
            return Err(LoginError::InvalidCredentials);
        }
        if self.settings.require_verified_email && !user.verified {
            return Err(LoginError::EmailUnverified);
        }
        self.after_first_factor(user.id, client, "password").await
    }

    /// The first factor (`method`) passed: the second step when 2FA is on and this device is
    /// not remembered, otherwise the session.
    async fn after_first_factor(
        &self,
        user_id: i64,
        client: &Client,
        method: &str,
    ) -> Result<LoginOutcome, LoginError> {
        let mut method = method.to_owned();
        if self.two_factor.is_enabled(user_id).await? {
            let remembered = match &client.remembered_device {
                Some(token) => self.two_factor.is_remembered(user_id, token).await?,
                None => false,
            };
            if !remembered {
                let challenge = self.two_factor.start_challenge(user_id).await?;
                return Ok(LoginOutcome::SecondFactor { challenge });
            }
            method.push_str("+remembered_device");
        }
        self.finish(user_id, client, &method)
            .await
            .map(LoginOutcome::Session)
    }

    /// Checks the password of someone already signed in before a sensitive change (new
    /// password, 2FA off, new recovery codes). A stolen session must not become a free
    /// password oracle: these checks have their own per-account limit and wrong answers count
    /// towards the same lockout as failed sign-ins; a locked account is refused.
    pub async fn reauthenticate(
        &self,
        user_id: i64,
        password: SecretString,
        client: &Client,
    ) -> Result<bool, LoginError> {
        if let Err(not_until) = self.reauth.check_key(&user_id) {
            metrics::counter!("rate_limited_total", "scope" => "reauthenticate").increment(1);
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(LoginError::RateLimited {
                retry_after_secs: wait.as_secs().max(1),
            });
        }
        let row: (String, Option<String>, Option<NaiveDateTime>) = self
            .db
            .run(move |conn| {
                users::table
                    .find(user_id)
                    .select((users::email, users::password_hash, users::locked_until))
                    .first(conn)
                    .map_err(DbError::from)
            })
            .await?;
        let (email, stored, locked_until) = row;
        let now = Utc::now().naive_utc();
        if let Some(until) = locked_until.filter(|until| *until > now) {
            return Err(LoginError::Locked {
                minutes: minutes_left(until, now),
            });
        }
        let matches = match stored {
            Some(hash) => self.hasher.verify(password, hash).await?,
            None => false,
        };
        if !matches {
            self.record_failure(user_id, email, client, "reauthentication")
                .await?;
        }
        Ok(matches)
    }

    /// Signs in someone a provider vouched for (OpenID Connect / GitHub). The account must be
    /// enabled and not locked, and the second factor still applies.
    pub async fn federated(
        &self,
        user_id: i64,
        client: &Client,
        provider: &str,
    ) -> Result<LoginOutcome, LoginError> {
        let state: Option<(Option<NaiveDateTime>, Option<NaiveDateTime>)> = self
            .db
            .run(move |conn| {
                users::table
                    .find(user_id)
                    .select((users::disabled_at, users::locked_until))
                    .first(conn)
                    .optional()
                    .map_err(DbError::from)
            })
            .await?;
        let now = Utc::now().naive_utc();
        match state {
            None | Some((Some(_), _)) => return Err(LoginError::Disabled),
            Some((None, Some(until))) if until > now => {
                return Err(LoginError::Locked {
                    minutes: minutes_left(until, now),
                });
            }
            Some(_) => {}
        }
        self.after_first_factor(user_id, client, &format!("provider:{provider}"))
            .await
    }

    /// The second step: a TOTP or recovery code for the challenge the first step issued.
    /// Returns the session and, when asked to remember the device, its cookie token.
    pub async fn complete_second_factor(
        &self,
        challenge: &str,
        code: &str,
        remember_device: bool,
        client: &Client,
    ) -> Result<(NewSession, Option<String>), LoginError> {
        self.check_rate(client)?;
        let user_id = self.two_factor.challenge_user(challenge).await?;
        let kind = match self.two_factor.verify_code(user_id, code.to_owned()).await {
            Ok(kind) => kind,
            Err(TwoFactorError::InvalidCode) => {
                // Wrong codes count towards the same lockout as wrong passwords, so guessing
                // codes across fresh sign-ins is bounded too.
                let email: String = self
                    .db
                    .run(move |conn| super::users::email_of(conn, user_id).map_err(DbError::from))
                    .await?;
                self.record_failure(user_id, email, client, "second_factor")
                    .await?;
                return Err(TwoFactorError::InvalidCode.into());
            }
            Err(other) => return Err(other.into()),
        };
        self.two_factor.finish_challenge(challenge).await?;
        let method = match kind {
            CodeKind::Totp => "totp",
            CodeKind::Recovery => "recovery_code",
        };
        let session = self.finish(user_id, client, method).await?;
        let device = if remember_device {
            Some(self.two_factor.remember_device(user_id).await?)
        } else {
            None
        };
        Ok((session, device))
    }

    /// Signs the user in: a new session, and the audit event saying how they proved it.
    async fn finish(
        &self,
        user_id: i64,
        client: &Client,
        method: &str,
    ) -> Result<NewSession, LoginError> {
        let method = method.to_owned();
        let (ip, user_agent) = (
            client.ip.map(|ip| ip.to_string()),
            client.user_agent.clone(),
        );
        let starter = self.sessions.starter();
        // One transaction: the session, its audit event and the reset of the failure count
        // (fully signed in, so it starts over) are written together.
        let session = self
            .db
            .run(move |conn| {
                crate::db::write_transaction(conn, |tx| {
                    // Filtered, so the usual sign-in (nothing to reset) writes nothing here.
                    diesel::update(
                        users::table.find(user_id).filter(
                            users::failed_logins
                                .ne(0)
                                .or(users::locked_until.is_not_null()),
                        ),
                    )
                    .set((
                        users::failed_logins.eq(0),
                        users::locked_until.eq(None::<NaiveDateTime>),
                    ))
                    .execute(tx)?;
                    let session = starter.start(tx, user_id, ip.clone(), user_agent.clone())?;
                    audit::record(
                        tx,
                        &AuditEvent {
                            ip,
                            user_agent,
                            details: serde_json::json!({ "method": method }),
                            ..AuditEvent::by_user(events::LOGIN_SUCCEEDED, user_id)
                        },
                        Utc::now().naive_utc(),
                    )?;
                    Ok::<_, DbError>(session)
                })
            })
            .await?;
        self.sessions.remember(&session).await;
        Ok(session)
    }

    pub fn check_rate(&self, client: &Client) -> Result<(), LoginError> {
        let (Some(limiter), Some(ip)) = (&self.per_ip, client.ip) else {
            return Ok(());
        };
        if limiter.len() > 100_000 {
            limiter.retain_recent();
        }
        limiter.check_key(&ip).map_err(|not_until| {
            metrics::counter!("rate_limited_total", "scope" => "login").increment(1);
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            LoginError::RateLimited {
                retry_after_secs: wait.as_secs().max(1),
            }
        })
    }

    async fn dummy_hash(&self, hashing: &Admitted) -> Result<String, HashError> {
        self.dummy_hash
            .get_or_try_init(|| async {
                let mut bytes = [0u8; 24];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
                let random: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                hashing.hash(SecretString::from(random)).await
            })
            .await
            .cloned()
    }

    async fn find(&self, email: Email) -> Result<Option<Candidate>, DbError> {
        self.db
            .run(move |conn| {
                type Row = (
                    i64,
                    String,
                    Option<String>,
                    Option<NaiveDateTime>,
                    Option<NaiveDateTime>,
                    Option<NaiveDateTime>,
                );
                let row: Option<Row> = users::table
                    .filter(users::email.eq(email.as_str()))
                    .select((
                        users::id,
                        users::email,
                        users::password_hash,
                        users::email_verified_at,
                        users::disabled_at,
                        users::locked_until,
                    ))
                    .first(conn)
                    .optional()?;
                Ok(row.map(
                    |(id, email, password_hash, verified_at, disabled_at, locked_until)| {
                        Candidate {
                            id,
                            email,
                            password_hash,
                            verified: verified_at.is_some(),
                            disabled: disabled_at.is_some(),
                            locked_until,
                        }
                    },
                ))
            })
            .await
    }

    /// Counts a failure; the one that reaches the threshold locks the account, records it and
    /// queues the notification, all in one transaction.
    async fn record_failure(
        &self,
        user_id: i64,
        email: String,
        client: &Client,
        reason: &'static str,
    ) -> Result<(), DbError> {
        let threshold = self.settings.lockout_threshold;
        let lock_for = chrono::TimeDelta::try_minutes(
            i64::try_from(self.settings.lockout_minutes).unwrap_or(15),
        )
        .unwrap_or(chrono::TimeDelta::MAX);
        let (ip, user_agent) = (
            client.ip.map(|ip| ip.to_string()),
            client.user_agent.clone(),
        );
        let service = self.clone();
        let locked = self
            .db
            .run(move |conn| {
                let now = Utc::now().naive_utc();
                crate::db::write_transaction(conn, |tx| {
                    let failures: i32 = diesel::update(users::table.find(user_id))
                        .set(users::failed_logins.eq(users::failed_logins + 1))
                        .returning(users::failed_logins)
                        .get_result(tx)?;
                    let event = |name: &'static str, details: serde_json::Value| AuditEvent {
                        event: name,
                        actor_user_id: None,
                        subject: Some(format!("user:{user_id}")),
                        ip: ip.clone(),
                        user_agent: user_agent.clone(),
                        details,
                        ..AuditEvent::default()
                    };
                    audit::record(
                        tx,
                        &event(
                            events::LOGIN_FAILED,
                            serde_json::json!({ "reason": reason, "failures": failures }),
                        ),
                        now,
                    )?;
                    if failures < threshold {
                        return Ok::<_, DbError>(false);
                    }
                    let until = now
                        .checked_add_signed(lock_for)
                        .unwrap_or(NaiveDateTime::MAX);
                    diesel::update(users::table.find(user_id))
                        .set((
                            users::failed_logins.eq(0),
                            users::locked_until.eq(Some(until)),
                        ))
                        .execute(tx)?;
                    // A pending second step must not outlive the lock.
                    diesel::delete(
                        crate::schema::mfa_challenges::table
                            .filter(crate::schema::mfa_challenges::user_id.eq(user_id)),
                    )
                    .execute(tx)?;
                    audit::record(
                        tx,
                        &event(
                            events::ACCOUNT_LOCKED,
                            serde_json::json!({ "until": until.and_utc().to_rfc3339() }),
                        ),
                        now,
                    )?;
                    let mail = service.lockout_mail(&email, service.settings.lockout_minutes);
                    if let Some(mail) = mail.and_then(|mail| mail.into_job().ok()) {
                        service.queue.enqueue_in(tx, &mail)?;
                    }
                    Ok(true)
                })
            })
            .await?;
        if locked {
            metrics::counter!("account_lockouts_total").increment(1);
            self.queue.wake();
        }
        Ok(())
    }

    fn lockout_mail(&self, email: &str, minutes: u64) -> Option<OutgoingMail> {
        let mut context = tera::Context::new();
        context.insert("minutes", &minutes);
        OutgoingMail::compose(&self.templates, "lockout", email, &context)
            .inspect_err(|e| tracing::error!(error = %e, "cannot compose the lockout mail"))
            .ok()
    }
}

/// Whole minutes until `until`, rounded up (a lock with 10 s left is "1 minute").
fn minutes_left(until: NaiveDateTime, now: NaiveDateTime) -> i64 {
    ((until - now).num_seconds() + 59) / 60
}
