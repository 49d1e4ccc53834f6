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

pub const KEY_LEN: usize = 32;
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
