//! Revolut Merchant webhook signatures: `Revolut-Signature: v1=<hex>[,v1=<hex>…]` (several
//! while a secret is being rotated), HMAC-SHA256 of `v1.<timestamp>.<body>` under the webhook
//! secret, with `Revolut-Request-Timestamp` in milliseconds.

use std::time::Duration;

use hmac::{KeyInit as _, Mac as _};
use subtle::ConstantTimeEq as _;

/// How old (or how far in the future) a webhook may be.
pub const SIGNATURE_TOLERANCE: Duration = Duration::from_secs(300);

/// `v1=<hex>` for `body` at `timestamp_ms` under `secret` (the fake provider signs with it).
pub fn sign(secret: &str, timestamp_ms: i64, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(format!("v1.{timestamp_ms}.").as_bytes());
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!(
        "v1={}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Revolut-Request-Timestamp header is missing or not a number")]
    NoTimestamp,
    #[error("the webhook is more than 5 minutes old or from the future")]
    Stale,
    #[error("no Revolut-Signature matches")]
    Mismatch,
}

/// Checks a webhook: its timestamp (ms) is within 5 minutes of `now_ms`, and one of the
/// comma-separated signatures matches.
pub fn verify(
    secret: &str,
    timestamp: Option<&str>,
    signatures: Option<&str>,
    body: &[u8],
    now_ms: i64,
) -> Result<(), SignatureError> {
    let timestamp: i64 = timestamp
        .and_then(|t| t.trim().parse().ok())
        .ok_or(SignatureError::NoTimestamp)?;
    let tolerance = u64::try_from(SIGNATURE_TOLERANCE.as_millis()).unwrap_or(u64::MAX);
    // `abs_diff`: a timestamp near i64::MIN must be stale, not overflow (found by fuzzing:
    // debug builds panicked, release builds wrapped round and let it pass as fresh).
    if now_ms.abs_diff(timestamp) > tolerance {
        return Err(SignatureError::Stale);
    }
    let expected = sign(secret, timestamp, body);
    let matches = signatures
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .any(|given| bool::from(given.as_bytes().ct_eq(expected.as_bytes())));
    if matches {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_documented_recipe_and_rotation_and_age_are_handled() {
        let body = br#"{"event":"ORDER_COMPLETED","order_id":"abc"}"#;
        let now = 1_764_500_000_000;
        let good = sign("wsk_new", now - 1_000, body);
        assert!(good.starts_with("v1=") && good.len() == 67);
        let ts = (now - 1_000).to_string();
        assert_eq!(verify("wsk_new", Some(&ts), Some(&good), body, now), Ok(()));
        let old = sign("wsk_old", now - 1_000, body);
        let both = format!("{old},{good}");
        assert_eq!(verify("wsk_new", Some(&ts), Some(&both), body, now), Ok(()));
        assert_eq!(
            verify("wsk_new", Some(&ts), Some(&old), body, now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("wsk_new", Some(&ts), Some(&good), b"{}", now),
            Err(SignatureError::Mismatch)
        );
        let stale = (now - 301_000).to_string();
        let stale_sig = sign("wsk_new", now - 301_000, body);
        assert_eq!(
            verify("wsk_new", Some(&stale), Some(&stale_sig), body, now),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify("wsk_new", None, Some(&good), body, now),
            Err(SignatureError::NoTimestamp)
        );
    }

    #[test]
    fn timestamps_at_the_ends_of_the_range_are_stale_not_an_overflow() {
        let body = b"{}";
        for (timestamp, now) in [
            (i64::MIN, 1_764_500_000_000),
            (i64::MAX, -1),
            (i64::MIN, i64::MAX),
        ] {
            let signature = sign("wsk", timestamp, body);
            assert_eq!(
                verify(
                    "wsk",
                    Some(&timestamp.to_string()),
                    Some(&signature),
                    body,
                    now
                ),
                Err(SignatureError::Stale)
            );
        }
    }
}
