//! HashiCorp Vault's transit engine as the [`KeyProvider`]: data keys are wrapped and unwrapped
//! by Vault (`POST /v1/<mount>/encrypt|decrypt|rewrap/<key>`), so the key-encryption key never
//! exists outside Vault, and rotating it is Vault's `transit/keys/<key>/rotate` followed by
//! `conclave keys rotate`, which re-wraps inside Vault (`rewrap`) without the data keys ever
//! leaving it.
//!
//! Hand-written over reqwest rather than through a Vault client crate: the four calls used here
//! are small and stable, and the maintained crates (vaultrs) pull in a second HTTP stack.
//!
//! A wrapped key is bound to its room without relying on Vault's `derived` keys or
//! `associated_data` (absent from older Vault and OpenBao versions): the plaintext Vault
//! encrypts is `len(context) ‖ context ‖ key`, and unwrapping checks the context. Vault's
//! ciphertext is authenticated (AES-256-GCM), so a blob copied to another room does not open.
//!
//! `kek_id` is `vault:<mount>/<key>:v<version>`: after Vault rotates the key, the ids that name
//! an older version are what `conclave keys rotate` re-wraps.

use std::path::PathBuf;
use std::sync::RwLock;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret as _, SecretBox, SecretString};
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

use super::keys::{DataKey, KeyError, KeyProvider, LocalKeyProvider, Wrapped};
use crate::crypto::KEY_LEN;
use crate::settings::VaultSettings;

pub struct VaultKeyProvider {
    http: reqwest::Client,
    /// `<address>/v1/<mount>/`.
    base: url::Url,
    address: String,
    mount: String,
    key: String,
    namespace: Option<String>,
    token: RwLock<SecretString>,
    token_file: Option<PathBuf>,
    /// Keys wrapped by the local KEKs before the move to Vault still open (and are moved by
    /// `conclave keys rotate`).
    local: LocalKeyProvider,
}

#[derive(Deserialize)]
struct Answer<T> {
    data: T,
}

#[derive(Deserialize)]
struct Ciphertext {
    ciphertext: String,
}

#[derive(Deserialize)]
struct Plaintext {
    plaintext: String,
}

#[derive(Deserialize)]
struct KeyInfo {
    latest_version: u64,
}

#[derive(Deserialize, Default)]
struct Errors {
    #[serde(default)]
    errors: Vec<String>,
}

/// What went wrong in one call, before it is turned into a [`KeyError`] for that call.
enum Failure {
    Status(reqwest::StatusCode, String),
    Transport(String),
}

impl VaultKeyProvider {
    pub fn from_settings(
        settings: &VaultSettings,
        local: LocalKeyProvider,
    ) -> anyhow::Result<Self> {
        let address = settings
            .address
            .clone()
            .ok_or_else(|| anyhow::anyhow!("keys.vault.address is not set"))?;
        let mut base = url::Url::parse(&address)
            .map_err(|e| anyhow::anyhow!("keys.vault.address: not a valid URL ({e})"))?;
        // Keep the operator's path prefix (Vault behind a proxy at /vault), then add ours.
        let path = format!(
            "{}/v1/{}/",
            base.path().trim_end_matches('/'),
            settings.mount.trim_matches('/')
        );
        base.set_path(&path);
        let token = match (&settings.token_file, &settings.token) {
            (Some(file), _) => read_token(file)?,
            (None, Some(token)) => token.clone(),
            (None, None) => anyhow::bail!("keys.vault: set token or token_file"),
        };
        let mut http = reqwest::Client::builder()
            // Vault answers; it does not redirect a client that should follow (standby nodes
            // forward). Not following keeps the token from ever going elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_millis(settings.timeout_ms.min(5_000)))
            .timeout(Duration::from_millis(settings.timeout_ms))
            .user_agent(concat!("Conclave/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &settings.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| anyhow::anyhow!("keys.vault.ca_file {}: {e}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| anyhow::anyhow!("keys.vault.ca_file {}: {e}", ca.display()))?;
            http = http.tls_certs_merge(certs);
        }
        Ok(Self {
            http: http.build()?,
            base,
            address,
            mount: settings.mount.trim_matches('/').to_owned(),
            key: settings.key.clone(),
            namespace: settings.namespace.clone(),
            token: RwLock::new(token),
            token_file: settings.token_file.clone(),
            local,
        })
    }

    fn kek_id(&self, version: u64) -> String {
        format!("vault:{}/{}:v{version}", self.mount, self.key)
    }

    /// Whether `wrapped` names this provider's key (any version).
    fn owns(&self, wrapped: &Wrapped) -> bool {
        wrapped
            .kek_id
            .strip_prefix(&format!("vault:{}/{}:v", self.mount, self.key))
            .is_some_and(|v| v.parse::<u64>().is_ok())
    }

    /// The version in a transit ciphertext, `vault:v<N>:…`.
    fn version_of(ciphertext: &str) -> Option<u64> {
        ciphertext
            .strip_prefix("vault:v")?
            .split_once(':')?
            .0
            .parse()
            .ok()
    }

    fn wrapped(&self, ciphertext: String) -> Result<Wrapped, KeyError> {
        let version = Self::version_of(&ciphertext).ok_or_else(|| {
            KeyError::Unavailable("Vault answered a ciphertext in an unknown format".to_owned())
        })?;
        Ok(Wrapped {
            kek_id: self.kek_id(version),
            blob: ciphertext,
        })
    }

    /// One call to Vault; a refused token is re-read from `token_file` and the call tried once
    /// more (Vault Agent renews the token by rewriting that file).
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, Failure> {
        let url = self
            .base
            .join(path)
            .map_err(|e| Failure::Transport(format!("bad Vault path {path}: {e}")))?;
        let mut retried = false;
        loop {
            let token = self
                .token
                .read()
                .map_err(|_| Failure::Transport("token lock poisoned".to_owned()))?
                .clone();
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .headers(crate::telemetry::propagation_headers())
                .header("X-Vault-Token", token.expose_secret())
                .header("X-Vault-Request", "true");
            if let Some(namespace) = &self.namespace {
                request = request.header("X-Vault-Namespace", namespace);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.map_err(|e| {
                Failure::Transport(format!(
                    "cannot reach Vault at {}: {}",
                    self.address,
                    e.without_url()
                ))
            })?;
            let status = response.status();
            if status.is_success() {
                return response.json::<T>().await.map_err(|e| {
                    Failure::Transport(format!("Vault answered something unexpected: {e}"))
                });
            }
            if status == reqwest::StatusCode::FORBIDDEN && !retried && self.reload_token().await {
                retried = true;
                continue;
            }
            let errors = response.json::<Errors>().await.unwrap_or_default();
            return Err(Failure::Status(status, errors.errors.join("; ")));
        }
    }

    /// Re-reads `token_file` (off the async threads); true when it now holds another token.
    async fn reload_token(&self) -> bool {
        let Some(file) = self.token_file.clone() else {
            return false;
        };
        let Ok(Ok(fresh)) = tokio::task::spawn_blocking(move || read_token(&file)).await else {
            return false;
        };
        let Ok(mut token) = self.token.write() else {
            return false;
        };
        if token.expose_secret() == fresh.expose_secret() {
            return false;
        }
        *token = fresh;
        true
    }

    /// Turns a failed call into the error its caller reports.
    fn explain(&self, failure: Failure, wrapped: Option<&Wrapped>) -> KeyError {
        match failure {
            Failure::Transport(why) => KeyError::Unavailable(why),
            Failure::Status(status, errors) => match (status.as_u16(), wrapped) {
                (400, Some(wrapped))
                    if errors.contains("min decryption version")
                        || errors.contains("min_decryption_version") =>
                {
                    KeyError::UnknownKek(wrapped.kek_id.clone())
                }
                (400, Some(_)) => KeyError::Damaged,
                (403, _) => KeyError::Unavailable(format!(
                    "Vault refused the token for transit key {}/{} (403 {errors}); check the \
                     token and its policy",
                    self.mount, self.key
                )),
                (404, _) => KeyError::Unavailable(format!(
                    "Vault has no transit key {}/{} (404), and the token may not create it",
                    self.mount, self.key
                )),
                _ => KeyError::Unavailable(format!("Vault answered {status}: {errors}")),
            },
        }
    }
}

fn read_token(file: &std::path::Path) -> anyhow::Result<SecretString> {
    let text = Zeroizing::new(
        std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("keys.vault.token_file {}: {e}", file.display()))?,
    );
    let token = text.trim();
    anyhow::ensure!(
        !token.is_empty(),
        "keys.vault.token_file {} is empty",
        file.display()
    );
    Ok(SecretString::from(token.to_owned()))
}

/// `len(context) ‖ context ‖ key`, base64: what Vault encrypts.
fn frame(key: &DataKey, context: &[u8]) -> Result<Zeroizing<String>, KeyError> {
    let len = u16::try_from(context.len())
        .map_err(|_| KeyError::Unavailable("wrap context too long".to_owned()))?;
    let mut plain = Zeroizing::new(Vec::with_capacity(2 + context.len() + KEY_LEN));
    plain.extend_from_slice(&len.to_be_bytes());
    plain.extend_from_slice(context);
    plain.extend_from_slice(key.expose_secret());
    Ok(Zeroizing::new(STANDARD.encode(plain.as_slice())))
}

/// The key in a decrypted frame, if the frame names `context`.
fn unframe(plaintext: &str, context: &[u8]) -> Result<DataKey, KeyError> {
    let plain = Zeroizing::new(STANDARD.decode(plaintext).map_err(|_| KeyError::Damaged)?);
    let (len, rest) = plain.split_at_checked(2).ok_or(KeyError::Damaged)?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let (bound, key) = rest.split_at_checked(len).ok_or(KeyError::Damaged)?;
    if bound != context {
        return Err(KeyError::Damaged);
    }
    let key = <[u8; KEY_LEN]>::try_from(key).map_err(|_| KeyError::Damaged)?;
    Ok(SecretBox::new(Box::new(key)))
}

#[async_trait::async_trait]
impl KeyProvider for VaultKeyProvider {
    async fn current_kek_id(&self) -> Result<String, KeyError> {
        let path = format!("keys/{}", self.key);
        match self
            .call::<Answer<KeyInfo>>(reqwest::Method::GET, &path, None)
            .await
        {
            Ok(info) => Ok(self.kek_id(info.data.latest_version)),
            // Not created yet: the first wrap creates it at version 1.
            Err(Failure::Status(status, _)) if status == reqwest::StatusCode::NOT_FOUND => {
                Ok(self.kek_id(1))
            }
            Err(failure) => Err(self.explain(failure, None)),
        }
    }

    async fn wrap(&self, key: &DataKey, context: &[u8]) -> Result<Wrapped, KeyError> {
        let plaintext = frame(key, context)?;
        let body = json!({ "plaintext": plaintext.as_str() });
        let answer = self
            .call::<Answer<Ciphertext>>(
                reqwest::Method::POST,
                &format!("encrypt/{}", self.key),
                Some(&body),
            )
            .await
            .map_err(|f| self.explain(f, None))?;
        self.wrapped(answer.data.ciphertext)
    }

    async fn unwrap(&self, wrapped: &Wrapped, context: &[u8]) -> Result<DataKey, KeyError> {
        if LocalKeyProvider::owns(wrapped) {
            return self.local.unwrap(wrapped, context).await;
        }
        if !self.owns(wrapped) {
            return Err(KeyError::UnknownKek(wrapped.kek_id.clone()));
        }
        let body = json!({ "ciphertext": wrapped.blob });
        let answer = self
            .call::<Answer<Plaintext>>(
                reqwest::Method::POST,
                &format!("decrypt/{}", self.key),
                Some(&body),
            )
            .await
            .map_err(|f| self.explain(f, Some(wrapped)))?;
        let plaintext = Zeroizing::new(answer.data.plaintext);
        unframe(&plaintext, context)
    }

    async fn rewrap(&self, wrapped: &Wrapped, context: &[u8]) -> Result<Wrapped, KeyError> {
        if !self.owns(wrapped) {
            let key = self.unwrap(wrapped, context).await?;
            return self.wrap(&key, context).await;
        }
        let body = json!({ "ciphertext": wrapped.blob });
        let answer = self
            .call::<Answer<Ciphertext>>(
                reqwest::Method::POST,
                &format!("rewrap/{}", self.key),
                Some(&body),
            )
            .await
            .map_err(|f| self.explain(f, Some(wrapped)))?;
        self.wrapped(answer.data.ciphertext)
    }

    fn describe(&self) -> String {
        format!("vault {} ({}/{})", self.address, self.mount, self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_opens_only_for_its_own_context() {
        let key = super::super::keys::new_data_key();
        let framed = frame(&key, b"conclave/room-key/7").unwrap();
        let opened = unframe(&framed, b"conclave/room-key/7").unwrap();
        assert_eq!(opened.expose_secret(), key.expose_secret());
        assert!(unframe(&framed, b"conclave/room-key/8").is_err());
        assert!(unframe("AA==", b"x").is_err());
        assert!(unframe("not base64!", b"x").is_err());
    }

    #[test]
    fn ciphertext_versions_are_read_from_vaults_prefix() {
        assert_eq!(VaultKeyProvider::version_of("vault:v3:abc"), Some(3));
        assert_eq!(VaultKeyProvider::version_of("vault:v:abc"), None);
        assert_eq!(VaultKeyProvider::version_of("local:v3:abc"), None);
    }
}
