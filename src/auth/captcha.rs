//! A self-hosted proof-of-work CAPTCHA for sign-up and password reset (`captcha.enabled`).
//!
//! The scheme is ALTCHA's (`altcha-lib-rs`): the server sends a salt, the SHA-256 of salt +
//! a secret random number up to `captcha.max_number`, and an HMAC of that hash; the browser
//! finds the number by trying them all (about half of `max_number` hashes on average, well
//! under a second) and sends it back. Checking costs the server one hash and one HMAC and
//! no state until use: the challenge carries its own expiry inside the signed salt. A solved
//! challenge works once (`captcha_spent` remembers its signature until it expires), so a bot
//! pays for every request. No third party sees anyone's visit.
//!
//! The browser side is `static/js/captcha.js`; a script client asks `GET
//! /api/v1/auth/captcha` for a challenge and solves it the same way.

use base64::Engine as _;
use chrono::{NaiveDateTime, TimeDelta, Utc};
use diesel::prelude::*;

use crate::crypto::MasterKey;
use crate::db::{Db, DbConnection, DbError};
use crate::schema::captcha_spent;
use crate::settings::CaptchaSettings;

/// Longest solution accepted (a base64 JSON object of five short fields).
const MAX_SOLUTION_LEN: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum CaptchaError {
    #[error(
        "captcha: the anti-spam check is missing; reload the page (it needs JavaScript), or solve GET /api/v1/auth/captcha"
    )]
    Missing,
    #[error("captcha: the anti-spam check did not pass; reload the page and try again")]
    Invalid,
    #[error("captcha: the anti-spam check expired; reload the page and try again")]
    Expired,
    #[error("captcha: this anti-spam check was already used; reload the page and try again")]
    Spent,
    #[error(transparent)]
    Database(#[from] DbError),
}

#[derive(Clone)]
pub struct Captcha {
    db: Db,
    settings: CaptchaSettings,
    /// Hex of a key derived for this purpose only (the library takes the key as a string).
    hmac_key: String,
}

impl Captcha {
    pub fn new(db: Db, settings: CaptchaSettings, master: &MasterKey) -> Self {
        let key = crate::crypto::derive_key(master, "captcha");
        let hmac_key = key.iter().map(|b| format!("{b:02x}")).collect();
        Self {
            db,
            settings,
            hmac_key,
        }
    }

    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    /// A fresh challenge, or `None` when the CAPTCHA is switched off.
    pub fn challenge(&self) -> Option<altcha_lib_rs::Challenge> {
        if !self.settings.enabled {
            return None;
        }
        let expires = Utc::now()
            + TimeDelta::minutes(i64::try_from(self.settings.expires_minutes).unwrap_or(30));
        altcha_lib_rs::create_challenge(altcha_lib_rs::ChallengeOptions {
            hmac_key: &self.hmac_key,
            max_number: Some(self.settings.max_number),
            expires: Some(expires),
            ..Default::default()
        })
        .inspect_err(|e| tracing::error!(error = %e, "cannot create a CAPTCHA challenge"))
        .ok()
    }

    /// Accepts a solution once. `solution` is the base64 JSON payload the browser script
    /// (or ALTCHA's own widget) sends; plain JSON is accepted too.
    pub async fn check(&self, solution: Option<&str>) -> Result<(), CaptchaError> {
        if !self.settings.enabled {
            return Ok(());
        }
        let solution = solution
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(CaptchaError::Missing)?;
        if solution.len() > MAX_SOLUTION_LEN {
            return Err(CaptchaError::Invalid);
        }
        let json = if solution.starts_with('{') {
            solution.as_bytes().to_vec()
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(solution)
                .map_err(|_| CaptchaError::Invalid)?
        };
        let payload: altcha_lib_rs::Payload =
            serde_json::from_slice(&json).map_err(|_| CaptchaError::Invalid)?;
        let expires_at = expiry_of(&payload.salt).ok_or(CaptchaError::Invalid)?;
        if expires_at <= Utc::now().naive_utc() {
            return Err(CaptchaError::Expired);
        }
        altcha_lib_rs::verify_solution(&payload, &self.hmac_key, true).map_err(|e| match e {
            altcha_lib_rs::error::Error::VerificationFailedExpired(_) => CaptchaError::Expired,
            _ => CaptchaError::Invalid,
        })?;
        let signature = payload.signature;
        self.db
            .run(move |conn| {
                match crate::db::unless_taken(
                    diesel::insert_into(captcha_spent::table)
                        .values((
                            captcha_spent::signature.eq(&signature),
                            captcha_spent::expires_at.eq(expires_at),
                        ))
                        .execute(conn),
                ) {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err(CaptchaError::Spent),
                    Err(other) => Err(CaptchaError::Database(other.into())),
                }
            })
            .await
    }
}

impl From<CaptchaError> for crate::error::AppError {
    fn from(error: CaptchaError) -> Self {
        let code = match &error {
            CaptchaError::Missing => "captcha_required",
            CaptchaError::Invalid => "captcha_invalid",
            CaptchaError::Expired => "captcha_expired",
            CaptchaError::Spent => "captcha_spent",
            CaptchaError::Database(_) => {
                return crate::error::AppError::internal(anyhow::anyhow!("{error}"));
            }
        };
        crate::error::AppError::Coded {
            status: actix_web::http::StatusCode::BAD_REQUEST,
            code,
            message: error.to_string(),
            retry_after_secs: None,
        }
    }
}

/// Puts a fresh challenge (or nothing, when switched off) into a form page's context.
pub fn insert_challenge(state: &crate::web::AppState, context: &mut tera::Context) {
    context.insert("captcha", &state.captcha.challenge());
}

#[utoipa::path(
    get,
    path = "/api/v1/auth/captcha",
    tag = "auth",
    summary = "A proof-of-work challenge for sign-up and password reset (ALTCHA format)",
    responses(
        (status = 200, description = "`{algorithm, challenge, maxnumber, salt, signature}`, or `{enabled: false}`")
    )
)]
/// `GET /api/v1/auth/captcha`: a challenge for script clients (`{"enabled": false}` when off).
pub async fn api_challenge(
    state: actix_web::web::Data<crate::web::AppState>,
) -> actix_web::HttpResponse {
    let mut response = actix_web::HttpResponse::Ok();
    response.insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"));
    match state.captcha.challenge() {
        Some(challenge) => response.json(challenge),
        None => response.json(serde_json::json!({ "enabled": false })),
    }
}

/// The expiry a challenge carries in its (signed) salt: `<salt>?expires=<unix seconds>&…`.
/// A challenge without one is refused, so no solution stays valid forever.
fn expiry_of(salt: &str) -> Option<NaiveDateTime> {
    let (_, query) = salt.split_once('?')?;
    let seconds = url::form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "expires")?
        .1
        .parse::<i64>()
        .ok()?;
    chrono::DateTime::from_timestamp(seconds, 0).map(|t| t.naive_utc())
}

/// Forgets spent solutions whose challenges have expired anyway.
pub fn sweep_spent(conn: &mut DbConnection, now: NaiveDateTime) -> QueryResult<usize> {
    diesel::delete(captcha_spent::table.filter(captcha_spent::expires_at.le(now))).execute(conn)
}

/// This module's part of the OpenAPI document (`/api/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(api_challenge))]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expiry_is_read_from_the_salt() {
        assert_eq!(
            expiry_of("abc?expires=1700000000&"),
            chrono::DateTime::from_timestamp(1_700_000_000, 0).map(|t| t.naive_utc())
        );
        assert_eq!(expiry_of("abc"), None);
        assert_eq!(expiry_of("abc?expires=soon"), None);
    }
}
