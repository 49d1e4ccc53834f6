//! The node's secret key: where it comes from and how it is checked.
//!
//! In production the key comes from configuration (env, `*_FILE`, or the config file) and
//! start-up fails without it. In development a key is generated once into `<data_dir>/secret.key`
//! (mode 0600) so `cargo run` needs no setup and restarts keep sessions and sealed data valid.
//! Later modules derive purpose-specific keys from this one; it is never used directly.

use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore as _;
use secrecy::{ExposeSecret, SecretBox};

use crate::settings::{Mode, Settings};

pub use conclave_core::keys::{KEY_LEN, decode_key};
const GENERATED_KEY_FILE: &str = "secret.key";

/// 32 secret bytes, zeroed on drop, never printed.
pub struct MasterKey(SecretBox<[u8; KEY_LEN]>);

impl MasterKey {
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

/// The configured key, or in development mode the generated one.
pub fn load_master_key(settings: &Settings) -> anyhow::Result<MasterKey> {
    if let Some(key) = &settings.security.secret_key {
        let bytes = decode_key(key.expose_secret())
            .map_err(|e| anyhow::anyhow!("security.secret_key: {e}"))?;
        return Ok(MasterKey(SecretBox::new(Box::new(bytes))));
    }
    anyhow::ensure!(
        settings.mode == Mode::Development,
        "security.secret_key: production mode needs an explicit secret key"
    );
    load_or_generate(&settings.data_dir.join(GENERATED_KEY_FILE))
}

fn load_or_generate(path: &Path) -> anyhow::Result<MasterKey> {
    if path.exists() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the generated key {}", path.display()))?;
        let bytes = decode_key(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        return Ok(MasterKey(SecretBox::new(Box::new(bytes))));
    }
    let mut bytes = [0u8; KEY_LEN];
    rand::rng().fill_bytes(&mut bytes);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    }
    write_private(path, STANDARD.encode(bytes).as_bytes())
        .with_context(|| format!("cannot write the generated key {}", path.display()))?;
    tracing::warn!(path = %path.display(), "generated a development secret key; set security.secret_key in production");
    Ok(MasterKey(SecretBox::new(Box::new(bytes))))
}

/// Creates the file readable by its owner only, failing if it already exists.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// Makes ring the one TLS provider of every rustls user (SMTP, HTTP clients), chosen
/// explicitly; later calls are no-ops.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A 32-byte key for one purpose, derived from the master key with HKDF-SHA256 (info
/// `conclave/<purpose>`), so no two features ever share key material.
pub fn derive_key(master: &MasterKey, purpose: &str) -> [u8; KEY_LEN] {
    let mut key = [0u8; KEY_LEN];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(b"conclave"), master.expose())
        .expand(format!("conclave/{purpose}").as_bytes(), &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    key
}

/// Seals secrets at rest (TOTP secrets now; OAuth tokens and message keys later) with
/// AES-256-GCM under a key derived from the master key for one purpose (HKDF-SHA256), so a
/// key never serves two purposes. Sealed values are `v1:` + base64(nonce ‖ ciphertext); the
/// associated data binds a value to its row (e.g. the user id), so it cannot be moved.
pub struct Sealer {
    cipher: aes_gcm::Aes256Gcm,
}

#[derive(Debug, thiserror::Error)]
#[error("sealed value cannot be opened (wrong key, wrong row, or damaged)")]
pub struct SealError;

impl Sealer {
    pub fn for_purpose(master: &MasterKey, purpose: &str) -> Self {
        use aes_gcm::KeyInit as _;
        let mut key = derive_key(master, &format!("seal/{purpose}"));
        let cipher = aes_gcm::Aes256Gcm::new(&key.into());
        key.iter_mut().for_each(|b| *b = 0);
        Self { cipher }
    }

    pub fn seal(&self, plaintext: &[u8], associated: &[u8]) -> String {
        use aes_gcm::aead::{Aead as _, Payload};
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext,
            aad: associated,
        };
        // Encryption only fails for inputs over 64 GiB.
        let ciphertext = self
            .cipher
            .encrypt(&nonce.into(), payload)
            .expect("AES-GCM encrypts any input under 64 GiB");
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        format!("v1:{}", STANDARD.encode(sealed))
    }

    pub fn open(&self, sealed: &str, associated: &[u8]) -> Result<Vec<u8>, SealError> {
        use aes_gcm::aead::{Aead as _, Payload};
        let encoded = sealed.strip_prefix("v1:").ok_or(SealError)?;
        let bytes = STANDARD.decode(encoded).map_err(|_| SealError)?;
        if bytes.len() < 12 + 16 {
            return Err(SealError);
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| SealError)?;
        self.cipher
            .decrypt(
                &nonce.into(),
                Payload {
                    msg: ciphertext,
                    aad: associated,
                },
            )
            .map_err(|_| SealError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> MasterKey {
        MasterKey(SecretBox::new(Box::new([byte; KEY_LEN])))
    }

    #[test]
    fn sealed_values_open_only_with_the_same_key_purpose_and_row() {
        let sealer = Sealer::for_purpose(&key(7), "totp");
        let sealed = sealer.seal(b"JBSWY3DPEHPK3PXP", b"user:1");
        assert!(sealed.starts_with("v1:"));
        assert!(!sealed.contains("JBSWY3DPEHPK3PXP"));
        assert_ne!(
            sealed,
            sealer.seal(b"JBSWY3DPEHPK3PXP", b"user:1"),
            "fresh nonce each time"
        );
        assert_eq!(
            sealer
                .open(&sealed, b"user:1")
                .expect("opens with its own key and row"),
            b"JBSWY3DPEHPK3PXP"
        );
        assert!(sealer.open(&sealed, b"user:2").is_err(), "bound to its row");
        assert!(
            Sealer::for_purpose(&key(7), "oauth")
                .open(&sealed, b"user:1")
                .is_err(),
            "bound to its purpose"
        );
        assert!(
            Sealer::for_purpose(&key(8), "totp")
                .open(&sealed, b"user:1")
                .is_err(),
            "bound to its key"
        );
        let mut damaged = sealed.clone();
        damaged.pop();
        assert!(sealer.open(&damaged, b"user:1").is_err());
    }
}
