//! Two-factor authentication with TOTP (RFC 6238: SHA-1, 6 digits, 30 s — what every
//! authenticator app understands), recovery codes, and "remember this device".
//!
//! - The TOTP secret is sealed with AES-256-GCM (`crypto::Sealer`, purpose `totp`), bound to
//!   its user. A code is accepted once: the last accepted time step is stored and a code for
//!   that step or an earlier one is refused, atomically, so two racing requests cannot both
//!   use it.
//! - Ten recovery codes (about 50 random bits each) are shown once and stored as SHA-256
//!   hashes; a fast hash suffices for random codes, unlike passwords. Each works once.
//! - A remembered device skips the second step for 30 days; changing the password or the 2FA
//!   settings forgets every device.
//! - The second step of a sign-in is a challenge row (5 minutes, 5 tries), so it can finish on
//!   any node.

use std::sync::Arc;

use base64::Engine as _;
use chrono::{NaiveDateTime, TimeDelta, Utc};
use diesel::prelude::*;
use rand::RngCore as _;
use totp_rs::{Builder, Secret, Totp};

use super::sessions::token_id;
use crate::audit::{self, AuditEvent, events};
use crate::crypto::Sealer;
use crate::db::{Db, DbConnection, DbError, write_transaction};
use crate::schema::{mfa_challenges, recovery_codes, remembered_devices, totp_secrets};

pub const ISSUER: &str = "Conclave";
pub const RECOVERY_CODE_COUNT: usize = 10;
pub const REMEMBER_DAYS: i64 = 30;
const CHALLENGE_MINUTES: i64 = 5;
const CHALLENGE_ATTEMPTS: i32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum TwoFactorError {
    #[error("Two-factor authentication is already on.")]
    AlreadyOn,
    #[error("Two-factor authentication is not on.")]
    NotOn,
    #[error("Start two-factor set-up first.")]
    NotEnrolling,
    #[error("code: is not correct or was already used")]
    InvalidCode,
    #[error("This sign-in has expired or had too many wrong codes; sign in again.")]
    ChallengeExpired,
    #[error("the stored secret cannot be used: {0}")]
    Secret(String),
    #[error(transparent)]
    Database(#[from] DbError),
}

impl From<diesel::result::Error> for TwoFactorError {
    fn from(error: diesel::result::Error) -> Self {
        Self::Database(error.into())
    }
}

/// What the person needs to add the account to an authenticator app.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Enrolment {
    pub secret: String,
    pub otpauth_url: String,
    pub qr_svg: String,
}

/// Which kind of code passed the second step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeKind {
    Totp,
    Recovery,
}

#[derive(Clone)]
pub struct TwoFactor {
    db: Db,
    sealer: Arc<Sealer>,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `abcde-fghij` from an unambiguous alphabet (no 0/o, 1/l/i).
fn recovery_code() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut bytes = [0u8; 10];
    rand::rng().fill_bytes(&mut bytes);
    let chars: String = bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    format!("{}-{}", &chars[..5], &chars[5..])
}

/// What a person may type for a recovery code: case, spaces and dashes do not matter.
fn normalise_recovery_code(input: &str) -> String {
    input
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn totp(secret: Vec<u8>, account: &str) -> Result<Totp, TwoFactorError> {
    Builder::new()
        .with_secret(secret)
        .with_account_name(account)
        .with_issuer(Some(ISSUER))
        .build()
        .map_err(|e| TwoFactorError::Secret(e.to_string()))
}

/// The secret, the `otpauth://` URL and its QR code (SVG, no inline styles: fits the CSP).
fn enrolment(secret: Vec<u8>, account: &str) -> Result<Enrolment, TwoFactorError> {
    let totp = totp(secret, account)?;
    let otpauth_url = totp
        .to_url()
        .map_err(|e| TwoFactorError::Secret(e.to_string()))?;
    let svg = qrcode::QrCode::new(otpauth_url.as_bytes())
        .map_err(|e| TwoFactorError::Secret(e.to_string()))?
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build();
    let qr_svg = match svg.find("<svg") {
        Some(start) => svg[start..].to_owned(),
        None => svg,
    };
    Ok(Enrolment {
        secret: totp.secret().to_base32(),
        otpauth_url,
        qr_svg,
    })
}

fn associated(user_id: i64) -> Vec<u8> {
    format!("user:{user_id}").into_bytes()
}

fn record(
    conn: &mut DbConnection,
    event: &'static str,
    user_id: i64,
    now: NaiveDateTime,
) -> QueryResult<()> {
    audit::record(
        conn,
        &AuditEvent {
            event,
            actor_user_id: Some(user_id),
            subject: Some(format!("user:{user_id}")),
            ..AuditEvent::default()
        },
        now,
    )
}

/// Replaces the user's recovery codes with fresh ones; returns them (shown once).
fn replace_recovery_codes(conn: &mut DbConnection, user_id: i64) -> QueryResult<Vec<String>> {
    diesel::delete(recovery_codes::table.filter(recovery_codes::user_id.eq(user_id)))
        .execute(conn)?;
    let codes: Vec<String> = (0..RECOVERY_CODE_COUNT).map(|_| recovery_code()).collect();
    for code in &codes {
        diesel::insert_into(recovery_codes::table)
            .values((
                recovery_codes::user_id.eq(user_id),
                recovery_codes::code_hash.eq(token_id(&normalise_recovery_code(code))),
            ))
            .execute(conn)?;
    }
    Ok(codes)
}

fn forget_devices(conn: &mut DbConnection, user_id: i64) -> QueryResult<usize> {
    diesel::delete(remembered_devices::table.filter(remembered_devices::user_id.eq(user_id)))
        .execute(conn)
}

/// Turns 2FA off for `user_id`: secret, recovery codes and remembered devices go. Needs no
/// key, so operators can do it from the CLI (`conclave user reset-2fa`).
pub fn disable_in(conn: &mut DbConnection, user_id: i64) -> Result<(), TwoFactorError> {
    write_transaction(conn, |tx| {
        let removed = diesel::delete(totp_secrets::table.find(user_id)).execute(tx)?;
        if removed == 0 {
            return Err(TwoFactorError::NotOn);
        }
        diesel::delete(recovery_codes::table.filter(recovery_codes::user_id.eq(user_id)))
            .execute(tx)?;
        forget_devices(tx, user_id)?;
        record(
            tx,
            events::TWO_FACTOR_DISABLED,
            user_id,
            Utc::now().naive_utc(),
        )?;
        Ok(())
    })
}

/// Forgets every remembered device of a user (their password or 2FA settings changed).
pub fn forget_remembered_devices(conn: &mut DbConnection, user_id: i64) -> QueryResult<usize> {
    forget_devices(conn, user_id)
}

impl TwoFactor {
    pub fn new(db: Db, sealer: Sealer) -> Self {
        Self {
            db,
            sealer: Arc::new(sealer),
        }
    }

    pub async fn is_enabled(&self, user_id: i64) -> Result<bool, DbError> {
        self.db
            .run(move |conn| {
                diesel::select(diesel::dsl::exists(
                    totp_secrets::table
                        .filter(totp_secrets::user_id.eq(user_id))
                        .filter(totp_secrets::confirmed_at.is_not_null()),
                ))
                .get_result(conn)
                .map_err(DbError::from)
            })
            .await
    }

    /// Starts set-up: a new secret, not yet in force until confirmed with a code.
    pub async fn enrol(&self, user_id: i64, account: &str) -> Result<Enrolment, TwoFactorError> {
        if self.is_enabled(user_id).await? {
            return Err(TwoFactorError::AlreadyOn);
        }
        let bytes = Secret::generate().as_bytes().to_vec();
        let sealed = self.sealer.seal(&bytes, &associated(user_id));
        let enrolment = enrolment(bytes, account)?;
        self.db
            .run(move |conn| {
                write_transaction(conn, |tx| {
                    diesel::delete(totp_secrets::table.filter(totp_secrets::user_id.eq(user_id)))
                        .execute(tx)?;
                    diesel::insert_into(totp_secrets::table)
                        .values((
                            totp_secrets::user_id.eq(user_id),
                            totp_secrets::secret_sealed.eq(sealed),
                            totp_secrets::created_at.eq(Utc::now().naive_utc()),
                        ))
                        .execute(tx)
                        .map_err(DbError::from)
                })
            })
            .await?;
        Ok(enrolment)
    }

    /// The set-up started by `enrol` and not yet confirmed, to show it again.
    pub async fn pending_enrolment(
        &self,
        user_id: i64,
        account: &str,
    ) -> Result<Option<Enrolment>, TwoFactorError> {
        let sealed: Option<String> = self
            .db
            .run(move |conn| {
                totp_secrets::table
                    .find(user_id)
                    .filter(totp_secrets::confirmed_at.is_null())
                    .select(totp_secrets::secret_sealed)
                    .first(conn)
                    .optional()
                    .map_err(DbError::from)
            })
            .await?;
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let bytes = self
            .sealer
            .open(&sealed, &associated(user_id))
            .map_err(|e| TwoFactorError::Secret(e.to_string()))?;
        enrolment(bytes, account).map(Some)
    }

    /// Turns 2FA on once the person proves their app has the secret; returns recovery codes.
    pub async fn confirm(&self, user_id: i64, code: String) -> Result<Vec<String>, TwoFactorError> {
        let sealer = self.sealer.clone();
        self.db
            .run(move |conn| {
                write_transaction(conn, |tx| {
                    let row: Option<(String, Option<NaiveDateTime>)> = totp_secrets::table
                        .find(user_id)
                        .select((totp_secrets::secret_sealed, totp_secrets::confirmed_at))
                        .first(tx)
                        .optional()?;
                    let sealed = match row {
                        Some((_, Some(_))) => return Err(TwoFactorError::AlreadyOn),
                        None => return Err(TwoFactorError::NotEnrolling),
                        Some((sealed, None)) => sealed,
                    };
                    let secret = sealer
                        .open(&sealed, &associated(user_id))
                        .map_err(|e| TwoFactorError::Secret(e.to_string()))?;
                    let step = totp(secret, "")?
                        .check_current(code.trim())
                        .ok_or(TwoFactorError::InvalidCode)?;
                    let now = Utc::now().naive_utc();
                    diesel::update(totp_secrets::table.find(user_id))
                        .set((
                            totp_secrets::confirmed_at.eq(Some(now)),
                            totp_secrets::last_used_step
                                .eq(Some(i64::try_from(step).unwrap_or(i64::MAX))),
                        ))
                        .execute(tx)?;
                    let codes = replace_recovery_codes(tx, user_id)?;
                    forget_devices(tx, user_id)?;
                    record(tx, events::TWO_FACTOR_ENABLED, user_id, now)?;
                    Ok(codes)
                })
            })
            .await
            .inspect(|_| {
                metrics::counter!("two_factor_events_total", "event" => "enabled").increment(1);
            })
    }

    pub async fn regenerate_recovery_codes(
        &self,
        user_id: i64,
    ) -> Result<Vec<String>, TwoFactorError> {
        if !self.is_enabled(user_id).await? {
            return Err(TwoFactorError::NotOn);
        }
        self.db
            .run(move |conn| {
                write_transaction(conn, |tx| {
                    let codes = replace_recovery_codes(tx, user_id)?;
                    record(
                        tx,
                        events::RECOVERY_CODES_REGENERATED,
                        user_id,
                        Utc::now().naive_utc(),
                    )?;
                    Ok::<_, TwoFactorError>(codes)
                })
            })
            .await
    }

    /// Turns 2FA off (the caller checked the password).
    pub async fn disable(&self, user_id: i64) -> Result<(), TwoFactorError> {
        self.db.run(move |conn| disable_in(conn, user_id)).await?;
        metrics::counter!("two_factor_events_total", "event" => "disabled").increment(1);
        Ok(())
    }

    /// Checks a second-step code: a TOTP code not used before, or an unused recovery code.
    pub async fn verify_code(
        &self,
        user_id: i64,
        code: String,
    ) -> Result<CodeKind, TwoFactorError> {
        let result = self.check_code(user_id, code).await;
        let event = match &result {
            Ok(CodeKind::Totp) => "code_accepted",
            Ok(CodeKind::Recovery) => "recovery_code_used",
            Err(TwoFactorError::InvalidCode) => "code_rejected",
            Err(_) => "error",
        };
        metrics::counter!("two_factor_events_total", "event" => event).increment(1);
        result
    }

    async fn check_code(&self, user_id: i64, code: String) -> Result<CodeKind, TwoFactorError> {
        let sealer = self.sealer.clone();
        self.db
            .run(move |conn| {
                write_transaction(conn, |tx| {
                    let now = Utc::now().naive_utc();
                    let code = code.trim();
                    let is_totp = code.len() == 6 && code.chars().all(|c| c.is_ascii_digit());
                    if is_totp {
                        let sealed: Option<String> = totp_secrets::table
                            .find(user_id)
                            .filter(totp_secrets::confirmed_at.is_not_null())
                            .select(totp_secrets::secret_sealed)
                            .first(tx)
                            .optional()?;
                        let sealed = sealed.ok_or(TwoFactorError::NotOn)?;
                        let secret = sealer
                            .open(&sealed, &associated(user_id))
                            .map_err(|e| TwoFactorError::Secret(e.to_string()))?;
                        let step = totp(secret, "")?
                            .check_current(code)
                            .ok_or(TwoFactorError::InvalidCode)?;
                        let step = i64::try_from(step).unwrap_or(i64::MAX);
                        // Only a step later than the last accepted one; the guard makes two
                        // concurrent uses of one code impossible.
                        let accepted = diesel::update(
                            totp_secrets::table.find(user_id).filter(
                                totp_secrets::last_used_step
                                    .is_null()
                                    .or(totp_secrets::last_used_step.lt(step)),
                            ),
                        )
                        .set(totp_secrets::last_used_step.eq(Some(step)))
                        .execute(tx)?;
                        return if accepted == 1 {
                            Ok(CodeKind::Totp)
                        } else {
                            Err(TwoFactorError::InvalidCode)
                        };
                    }
                    let hash = token_id(&normalise_recovery_code(code));
                    let used = diesel::update(
                        recovery_codes::table
                            .filter(recovery_codes::user_id.eq(user_id))
                            .filter(recovery_codes::code_hash.eq(hash))
                            .filter(recovery_codes::used_at.is_null()),
                    )
                    .set(recovery_codes::used_at.eq(Some(now)))
                    .execute(tx)?;
                    if used == 0 {
                        return Err(TwoFactorError::InvalidCode);
                    }
                    record(tx, events::RECOVERY_CODE_USED, user_id, now)?;
                    Ok(CodeKind::Recovery)
                })
            })
            .await
    }

    /// Records that `user_id` passed the password step; returns the challenge token.
    pub async fn start_challenge(&self, user_id: i64) -> Result<String, DbError> {
        let token = random_token();
        let id = token_id(&token);
        self.db
            .run(move |conn| {
                write_transaction(conn, |tx| {
                    let expires_at = Utc::now().naive_utc() + TimeDelta::minutes(CHALLENGE_MINUTES);
                    // One live challenge per user: signing in again replaces the old one.
                    diesel::delete(
                        mfa_challenges::table.filter(mfa_challenges::user_id.eq(user_id)),
                    )
                    .execute(tx)?;
                    diesel::insert_into(mfa_challenges::table)
                        .values((
                            mfa_challenges::id.eq(id),
                            mfa_challenges::user_id.eq(user_id),
                            mfa_challenges::expires_at.eq(expires_at),
                        ))
                        .execute(tx)
                        .map_err(DbError::from)
                })
            })
            .await?;
        Ok(token)
    }

    /// The user of a live challenge, counting this attempt; too many attempts end it.
    pub async fn challenge_user(&self, token: &str) -> Result<i64, TwoFactorError> {
        let id = token_id(token);
        self.db
            .run(move |conn| {
                write_transaction(conn, |tx| {
                    let row: Option<(i64, NaiveDateTime, i32)> = mfa_challenges::table
                        .find(&id)
                        .select((
                            mfa_challenges::user_id,
                            mfa_challenges::expires_at,
                            mfa_challenges::attempts,
                        ))
                        .first(tx)
                        .optional()?;
                    match row {
                        Some((user_id, expires_at, attempts))
                            if expires_at > Utc::now().naive_utc()
                                && attempts < CHALLENGE_ATTEMPTS =>
                        {
                            diesel::update(mfa_challenges::table.find(&id))
                                .set(mfa_challenges::attempts.eq(attempts + 1))
                                .execute(tx)?;
                            Ok(user_id)
                        }
                        Some(_) => {
                            diesel::delete(mfa_challenges::table.find(&id)).execute(tx)?;
                            Err(TwoFactorError::ChallengeExpired)
                        }
                        None => Err(TwoFactorError::ChallengeExpired),
                    }
                })
            })
            .await
    }

    pub async fn finish_challenge(&self, token: &str) -> Result<(), DbError> {
        let id = token_id(token);
        self.db
            .run(move |conn| {
                diesel::delete(mfa_challenges::table.find(&id))
                    .execute(conn)
                    .map(drop)
                    .map_err(DbError::from)
            })
            .await
    }

    /// Remembers this device for `REMEMBER_DAYS`; returns the cookie token.
    pub async fn remember_device(&self, user_id: i64) -> Result<String, DbError> {
        let token = random_token();
        let id = token_id(&token);
        self.db
            .run(move |conn| {
                let now = Utc::now().naive_utc();
                diesel::insert_into(remembered_devices::table)
                    .values((
                        remembered_devices::id.eq(id),
                        remembered_devices::user_id.eq(user_id),
                        remembered_devices::created_at.eq(now),
                        remembered_devices::expires_at.eq(now + TimeDelta::days(REMEMBER_DAYS)),
                    ))
                    .execute(conn)
                    .map_err(DbError::from)
            })
            .await?;
        Ok(token)
    }

    pub async fn is_remembered(&self, user_id: i64, token: &str) -> Result<bool, DbError> {
        let id = token_id(token);
        self.db
            .run(move |conn| {
                diesel::select(diesel::dsl::exists(
                    remembered_devices::table
                        .find(&id)
                        .filter(remembered_devices::user_id.eq(user_id))
                        .filter(remembered_devices::expires_at.gt(Utc::now().naive_utc())),
                ))
                .get_result(conn)
                .map_err(DbError::from)
            })
            .await
    }
}
