//! Keys of the history: every room (conversation) has its own random 256-bit data key; the
//! data key is stored only wrapped (encrypted) by a key-encryption key (KEK) that a
//! [`KeyProvider`] holds. The database therefore never holds a key that opens messages.
//!
//! From a room's data key come two working keys (HKDF-SHA256): one seals message bodies
//! (AES-256-GCM), one keys the blind search index (HMAC-SHA256). Unwrapped keys stay in a
//! bounded in-memory cache for `chat.key_cache_minutes` after their last use.
//!
//! Rotation (`conclave keys rotate`) re-wraps every data key under the provider's current KEK
//! without touching a single message.

use std::sync::Arc;
use std::time::Duration;

use aes_gcm::KeyInit as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretBox};
use sha2::Digest as _;

use crate::crypto::{KEY_LEN, MasterKey, decode_key, derive_key};
use crate::settings::KeySettings;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The wrapped key names a KEK this provider does not have (rotated away, wrong config).
    #[error("no key-encryption key {0} is configured (was it rotated away?)")]
    UnknownKek(String),
    /// The wrapped key does not open: wrong KEK, wrong room, or damaged.
    #[error("a wrapped data key cannot be opened (wrong key, wrong room, or damaged)")]
    Damaged,
    /// The provider (e.g. Vault) could not be reached or refused.
    #[error("key provider unavailable: {0}")]
    Unavailable(String),
}

/// A data key as stored: which KEK wrapped it, and the wrapped bytes (provider specific text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrapped {
    pub kek_id: String,
    pub blob: String,
}

/// 32 secret bytes, zeroed on drop.
pub type DataKey = SecretBox<[u8; KEY_LEN]>;

/// Holds key-encryption keys and wraps/unwraps data keys with them. `context` binds a wrapped
/// key to its room: a wrapped key copied to another room does not open.
#[async_trait::async_trait]
pub trait KeyProvider: Send + Sync {
    /// The KEK new wraps use; rotation re-wraps whatever another one wrapped.
    async fn current_kek_id(&self) -> Result<String, KeyError>;
    async fn wrap(&self, key: &DataKey, context: &[u8]) -> Result<Wrapped, KeyError>;
    async fn unwrap(&self, wrapped: &Wrapped, context: &[u8]) -> Result<DataKey, KeyError>;
    /// Wraps an already wrapped key under the current KEK. Providers that can do this without
    /// handing the key out (Vault's `rewrap`) override it.
    async fn rewrap(&self, wrapped: &Wrapped, context: &[u8]) -> Result<Wrapped, KeyError> {
        let key = self.unwrap(wrapped, context).await?;
        self.wrap(&key, context).await
    }
    /// Names the provider for logs and health reports: `local`, `vault https://…`.
    fn describe(&self) -> String;
}

/// KEKs from configuration (`keys.kek`, or derived from the node's secret key) — the default
/// provider. Wrapping is AES-256-GCM; `blob` is base64(nonce ‖ ciphertext).
pub struct LocalKeyProvider {
    /// The current KEK first, then the previous ones.
    keks: Vec<(String, aes_gcm::Aes256Gcm)>,
}

impl LocalKeyProvider {
    pub fn from_settings(settings: &KeySettings, master: &MasterKey) -> anyhow::Result<Self> {
        let mut raw = Vec::new();
        match &settings.kek {
            Some(kek) => raw.push(
                decode_key(kek.expose_secret()).map_err(|e| anyhow::anyhow!("keys.kek: {e}"))?,
            ),
            None => raw.push(derive_key(master, "history/kek")),
        }
        for (i, kek) in settings.previous_keks.iter().enumerate() {
            raw.push(
                decode_key(kek.expose_secret())
                    .map_err(|e| anyhow::anyhow!("keys.previous_keks[{i}]: {e}"))?,
            );
        }
        Ok(Self::new(raw))
    }

    /// Whether this provider wrapped `wrapped` (another provider may hold on to it).
    pub fn owns(wrapped: &Wrapped) -> bool {
        wrapped.kek_id.starts_with("local:")
    }

    fn new(raw: Vec<[u8; KEY_LEN]>) -> Self {
        let keks = raw
            .into_iter()
            .map(|mut key| {
                // The id names the key without revealing it: a hash under a fixed label.
                let digest = sha2::Sha256::new()
                    .chain_update(b"conclave/kek-id/")
                    .chain_update(key)
                    .finalize();
                let id = format!("local:{}", hex(&digest[..8]));
                let cipher = aes_gcm::Aes256Gcm::new(&key.into());
                key.iter_mut().for_each(|b| *b = 0);
                (id, cipher)
            })
            .collect();
        Self { keks }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[async_trait::async_trait]
impl KeyProvider for LocalKeyProvider {
    async fn current_kek_id(&self) -> Result<String, KeyError> {
        self.keks
            .first()
            .map(|(id, _)| id.clone())
            .ok_or_else(|| KeyError::UnknownKek("(none configured)".to_owned()))
    }

    fn describe(&self) -> String {
        "local".to_owned()
    }

    async fn wrap(&self, key: &DataKey, context: &[u8]) -> Result<Wrapped, KeyError> {
        let (id, cipher) = self
            .keks
            .first()
            .ok_or_else(|| KeyError::UnknownKek("(none configured)".to_owned()))?;
        Ok(Wrapped {
            kek_id: id.clone(),
            blob: seal_key(cipher, key, context),
        })
    }

    async fn unwrap(&self, wrapped: &Wrapped, context: &[u8]) -> Result<DataKey, KeyError> {
        let (_, cipher) = self
            .keks
            .iter()
            .find(|(id, _)| *id == wrapped.kek_id)
            .ok_or_else(|| KeyError::UnknownKek(wrapped.kek_id.clone()))?;
        open_key(cipher, &wrapped.blob, context)
    }
}

/// Wraps a key under `cipher` (AES-256-GCM), bound to `context`: base64(nonce ‖ ciphertext).
pub fn seal_key(cipher: &aes_gcm::Aes256Gcm, key: &DataKey, context: &[u8]) -> String {
    use aes_gcm::aead::{Aead as _, Payload};
    let mut nonce = [0u8; 12];
    rand::rng().fill_bytes(&mut nonce);
    let ciphertext = cipher
        .encrypt(
            &nonce.into(),
            Payload {
                msg: key.expose_secret(),
                aad: context,
            },
        )
        .expect("AES-GCM encrypts any input under 64 GiB");
    let mut blob = nonce.to_vec();
    blob.extend_from_slice(&ciphertext);
    STANDARD.encode(blob)
}

/// Opens what [`seal_key`] wrapped; `Damaged` for a wrong key, context or blob.
pub fn open_key(
    cipher: &aes_gcm::Aes256Gcm,
    blob: &str,
    context: &[u8],
) -> Result<DataKey, KeyError> {
    use aes_gcm::aead::{Aead as _, Payload};
    let bytes = STANDARD.decode(blob).map_err(|_| KeyError::Damaged)?;
    if bytes.len() < 12 + 16 {
        return Err(KeyError::Damaged);
    }
    let (nonce, ciphertext) = bytes.split_at(12);
    let nonce: [u8; 12] = nonce.try_into().map_err(|_| KeyError::Damaged)?;
    let plain = zeroize::Zeroizing::new(
        cipher
            .decrypt(
                &nonce.into(),
                Payload {
                    msg: ciphertext,
                    aad: context,
                },
            )
            .map_err(|_| KeyError::Damaged)?,
    );
    let key = <[u8; KEY_LEN]>::try_from(plain.as_slice()).map_err(|_| KeyError::Damaged)?;
    Ok(SecretBox::new(Box::new(key)))
}

/// A fresh random data key.
pub fn new_data_key() -> DataKey {
    let mut key = [0u8; KEY_LEN];
    rand::rng().fill_bytes(&mut key);
    SecretBox::new(Box::new(key))
}

/// What binds a room's wrapped data key to the room.
pub fn wrap_context(room_id: i64) -> Vec<u8> {
    format!("conclave/room-key/{room_id}").into_bytes()
}

/// The working keys of one room, derived from its data key.
pub struct RoomKey {
    sealer: aes_gcm::Aes256Gcm,
    index_key: SecretBox<[u8; KEY_LEN]>,
}

#[derive(Debug, thiserror::Error)]
#[error("a message body cannot be opened (wrong key or damaged)")]
pub struct OpenError;

impl RoomKey {
    pub fn from_data_key(key: &DataKey) -> Self {
        let expand = |label: &str| {
            let mut out = [0u8; KEY_LEN];
            hkdf::Hkdf::<sha2::Sha256>::new(Some(b"conclave/room"), key.expose_secret())
                .expand(label.as_bytes(), &mut out)
                .expect("32 bytes is a valid HKDF-SHA256 output length");
            out
        };
        let mut seal_key = expand("message-body");
        let sealer = aes_gcm::Aes256Gcm::new(&seal_key.into());
        seal_key.iter_mut().for_each(|b| *b = 0);
        Self {
            sealer,
            index_key: SecretBox::new(Box::new(expand("search-index"))),
        }
    }

    /// nonce ‖ AES-256-GCM(body), bound to `associated`.
    pub fn seal(&self, body: &[u8], associated: &[u8]) -> Vec<u8> {
        use aes_gcm::aead::{Aead as _, Payload};
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .sealer
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: body,
                    aad: associated,
                },
            )
            .expect("AES-GCM encrypts any input under 64 GiB");
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    pub fn open(&self, sealed: &[u8], associated: &[u8]) -> Result<Vec<u8>, OpenError> {
        use aes_gcm::aead::{Aead as _, Payload};
        if sealed.len() < 12 + 16 {
            return Err(OpenError);
        }
        let (nonce, ciphertext) = sealed.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| OpenError)?;
        self.sealer
            .decrypt(
                &nonce.into(),
                Payload {
                    msg: ciphertext,
                    aad: associated,
                },
            )
            .map_err(|_| OpenError)
    }

    /// The blind-index entry of a normalized word: HMAC-SHA256 under the room's index key,
    /// truncated to 16 bytes (collisions are negligible; a false hit is dropped after
    /// decryption anyway).
    pub fn term(&self, word: &str) -> Vec<u8> {
        use hmac::{KeyInit as _, Mac as _};
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.index_key.expose_secret())
            .expect("HMAC takes keys of any length");
        mac.update(word.as_bytes());
        mac.finalize().into_bytes()[..16].to_vec()
    }
}

/// Unwrapped room keys, cached; see the module docs.
#[derive(Clone)]
pub struct Keyring {
    provider: Arc<dyn KeyProvider>,
    cache: moka::future::Cache<i64, Arc<RoomKey>>,
}

impl Keyring {
    pub fn new(provider: Arc<dyn KeyProvider>, idle: Duration) -> Self {
        Self {
            provider,
            cache: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_idle(idle)
                .build(),
        }
    }

    pub fn provider(&self) -> &Arc<dyn KeyProvider> {
        &self.provider
    }

    pub async fn cached(&self, room_id: i64) -> Option<Arc<RoomKey>> {
        self.cache.get(&room_id).await
    }

    pub async fn remember(&self, room_id: i64, key: Arc<RoomKey>) {
        self.cache.insert(room_id, key).await;
    }

    /// Drops a room's key from memory (the room was deleted).
    pub async fn forget(&self, room_id: i64) {
        self.cache.invalidate(&room_id).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wrapped_key_opens_only_with_its_kek_and_room() {
        let old = LocalKeyProvider::new(vec![[1; KEY_LEN]]);
        let rotated = LocalKeyProvider::new(vec![[2; KEY_LEN], [1; KEY_LEN]]);
        let stranger = LocalKeyProvider::new(vec![[3; KEY_LEN]]);
        let key = new_data_key();
        let wrapped = old
            .wrap(&key, &wrap_context(7))
            .await
            .expect("the current KEK wraps");
        assert!(wrapped.kek_id.starts_with("local:"));
        let opened = rotated
            .unwrap(&wrapped, &wrap_context(7))
            .await
            .expect("a previous KEK still unwraps");
        assert_eq!(opened.expose_secret(), key.expose_secret());
        assert!(matches!(
            old.unwrap(&wrapped, &wrap_context(8)).await,
            Err(KeyError::Damaged)
        ));
        assert!(matches!(
            stranger.unwrap(&wrapped, &wrap_context(7)).await,
            Err(KeyError::UnknownKek(_))
        ));
        let rewrapped = rotated
            .wrap(&opened, &wrap_context(7))
            .await
            .expect("the new current KEK wraps");
        assert_eq!(rewrapped.kek_id, rotated.current_kek_id().await.unwrap());
        assert_ne!(rewrapped.kek_id, wrapped.kek_id);
    }

    #[test]
    fn room_keys_seal_and_index_per_room() {
        let a = RoomKey::from_data_key(&new_data_key());
        let b = RoomKey::from_data_key(&new_data_key());
        let sealed = a.seal(b"hello there", b"room:1");
        assert_eq!(
            a.open(&sealed, b"room:1").expect("opens in its own room"),
            b"hello there"
        );
        assert!(a.open(&sealed, b"room:2").is_err());
        assert!(b.open(&sealed, b"room:1").is_err());
        assert_eq!(a.term("hello"), a.term("hello"));
        assert_ne!(a.term("hello"), b.term("hello"), "terms are keyed per room");
        assert_eq!(a.term("hello").len(), 16);
    }
}
