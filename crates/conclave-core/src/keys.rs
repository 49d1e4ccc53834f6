//! The node's secret key as configured: base64 text of exactly [`KEY_LEN`] bytes.

use base64::Engine as _;

pub const KEY_LEN: usize = 32;

/// Decodes a base64 key (standard or URL-safe alphabet, padding optional) of exactly 32 bytes.
pub fn decode_key(text: &str) -> Result<[u8; KEY_LEN], String> {
    let trimmed = text.trim();
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(trimmed.trim_end_matches('='))
        .or_else(|_| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed.trim_end_matches('='))
        })
        .map_err(|_| "must be base64 (generate one with `openssl rand -base64 32`)".to_owned())?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice())
        .map_err(|_| format!("must decode to {KEY_LEN} bytes, got {}", bytes.len()))
}
