//! Typed configuration: built-in defaults → TOML file → `CONCLAVE__SECTION__KEY` environment
//! variables → `CONCLAVE__SECTION__KEY_FILE` secret files, in that order of precedence.
//!
//! Every key lives in one struct below with `deny_unknown_fields`, so a typo is an error that
//! names the key instead of a silently ignored setting. `config/conclave.example.toml`
//! documents every key; `tests/settings.rs` fails when the two disagree. No key name ends in
//! `_file`: that suffix is reserved for "read this secret from a file".

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

/// Environment prefix of every setting: `CONCLAVE__SERVER__LISTEN` is `server.listen`.
pub const ENV_PREFIX: &str = "CONCLAVE__";
/// Suffix that makes an environment variable name a file holding the value.
const SECRET_FILE_SUFFIX: &str = "_FILE";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `development` (generated secrets, relaxed checks) or `production`.
    pub mode: Mode,
    /// Where the SQLite database, the generated key and dropped mail live.
    pub data_dir: PathBuf,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub security: SecuritySettings,
    pub accounts: AccountSettings,
    pub sessions: SessionSettings,
    pub templates: TemplateSettings,
    pub mail: MailSettings,
    pub telemetry: TelemetrySettings,
    pub jobs: JobSettings,
    pub captcha: CaptchaSettings,
    pub oidc: OidcSettings,
    pub keys: KeySettings,
    pub chat: ChatSettings,
    pub realtime: RealtimeSettings,
    pub assistant: AssistantSettings,
    pub billing: BillingSettings,
    pub edge: EdgeSettings,
    pub devices: DeviceSettings,
    pub backup: BackupSettings,
    /// The config file these settings were read from, so a reload (SIGHUP, admin) reads the
    /// same one. Not a setting.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// Key paths (`server.listen`) set by environment variables, and the variable of each;
    /// the admin settings page labels them. Not a setting.
    #[serde(skip)]
    pub from_env: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Development,
    Production,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// The URL users reach Conclave at (used in links and to decide on HSTS).
    pub public_url: Option<String>,
    /// Production refuses a non-https `public_url` unless this is set (e.g. behind a VPN).
    pub allow_insecure_public_url: bool,
    /// HTTP worker threads; 0 means one per CPU core.
    pub workers: usize,
    pub json_limit_bytes: usize,
    pub form_limit_bytes: usize,
    pub payload_limit_bytes: usize,
    /// How long a SIGTERM waits for in-flight requests before closing them.
    pub shutdown_timeout_secs: u64,
    /// Time a client gets to send its request head.
    pub client_request_timeout_ms: u64,
    /// A second address for the admin area (e.g. on the VPN interface). When set, `/admin` and
    /// `/api/v1/admin` answer only there, and 404 on `listen`.
    pub admin_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceSettings {
    /// How long a device claim code stays valid, in minutes.
    pub claim_ttl_minutes: u64,
    /// How often devices are told to send telemetry (the `welcome` frame), in seconds.
    pub telemetry_interval_secs: u32,
    /// Telemetry batches one device may send per second (with a burst of twice that); more
    /// are refused unacknowledged, so the device sends them again later.
    pub telemetry_batches_per_second: u32,
    /// Connections one device may hold at once; a newer one closes the oldest (a device that
    /// reconnects replaces the half-open connection it left behind).
    pub connections_per_device: usize,
    /// How long a command waits for an offline device before it expires, in seconds.
    pub command_ttl_secs: u64,
    /// Raw telemetry readings are kept this many days; hourly rollups outlive them.
    pub telemetry_raw_days: u32,
    /// Hourly rollups are kept this many days.
    pub telemetry_rollup_days: u32,
    /// The largest firmware image accepted, in bytes.
    pub firmware_max_bytes: usize,
    /// Claim attempts (`POST /api/v1/devices/claim`) one address may make per minute; raise it
    /// to provision a fleet from one host.
    pub claims_per_minute_per_ip: u32,
}

impl Default for DeviceSettings {
    fn default() -> Self {
        Self {
            claim_ttl_minutes: 24 * 60,
            telemetry_interval_secs: 30,
            telemetry_batches_per_second: 10,
            connections_per_device: 1,
            command_ttl_secs: 600,
            telemetry_raw_days: 7,
            telemetry_rollup_days: 400,
            firmware_max_bytes: 16 * 1024 * 1024,
            claims_per_minute_per_ip: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupSettings {
    /// Take backups on a schedule (one node of a cluster runs each).
    pub enabled: bool,
    /// Where they go (default `<data_dir>/backups`). Put it on another disk, and copy it off
    /// the machine.
    pub dir: Option<PathBuf>,
    /// Hours between scheduled backups.
    pub interval_hours: u32,
    /// Retention: the newest backup of each of this many recent days is kept…
    pub keep_daily: usize,
    /// …and of each of this many recent ISO weeks.
    pub keep_weekly: usize,
}

impl Default for BackupSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            interval_hours: 24,
            keep_daily: 7,
            keep_weekly: 4,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeSettings {
    /// How often each node checks for a newer edge policy (saved on another node), in seconds.
    pub reload_secs: u64,
}

impl Default for EdgeSettings {
    fn default() -> Self {
        Self { reload_secs: 2 }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `sqlite://path/to/file.db`, a bare path, or `postgres://user:pass@host/db`.
    /// Unset means `sqlite://<data_dir>/conclave.db`.
    #[serde(serialize_with = "redact_opt")]
    pub url: Option<SecretString>,
    pub pool_max_size: u32,
    /// Connections kept open when idle.
    pub pool_min_idle: u32,
    pub connect_timeout_secs: u64,
    pub sqlite_busy_timeout_ms: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySettings {
    /// 32 random bytes, base64. Required in production; generated into `data_dir` otherwise.
    #[serde(serialize_with = "redact_opt")]
    pub secret_key: Option<SecretString>,
}

/// Where the key-encryption keys that wrap every room's data key come from.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeySettings {
    /// The key-encryption key (32 random bytes, base64). Unset: derived from
    /// `security.secret_key`. To rotate: set a new one, list the old one in `previous_keks`,
    /// run `conclave keys rotate`, then drop the old one.
    #[serde(serialize_with = "redact_opt")]
    pub kek: Option<SecretString>,
    /// Older key-encryption keys, still accepted to unwrap until `conclave keys rotate` ran.
    /// A list in TOML; in the environment, one string with the keys separated by commas.
    #[serde(serialize_with = "redact_vec", deserialize_with = "secrets_list")]
    pub previous_keks: Vec<SecretString>,
    /// Which provider wraps new data keys: `local` (the keys above) or `vault` (HashiCorp
    /// Vault's transit engine, `keys.vault`). With `vault`, keys the local KEKs wrapped still
    /// open, and `conclave keys rotate` moves them into Vault.
    pub provider: KeyProviderKind,
    pub vault: VaultSettings,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyProviderKind {
    #[default]
    Local,
    Vault,
}

/// HashiCorp Vault (or OpenBao) transit engine that wraps data keys; the key never leaves Vault.
/// The token needs `update` on `<mount>/encrypt/<key>`, `<mount>/decrypt/<key>` and
/// `<mount>/rewrap/<key>`, and `read` on `<mount>/keys/<key>`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultSettings {
    /// Vault's address, e.g. `https://vault.internal:8200`.
    pub address: Option<String>,
    /// A Vault token. Prefer `token_file` (re-read when Vault refuses the token, so Vault
    /// Agent's sink file can renew it) or `CONCLAVE__KEYS__VAULT__TOKEN_FILE`.
    #[serde(serialize_with = "redact_opt")]
    pub token: Option<SecretString>,
    /// A file holding the token, re-read whenever Vault refuses the one in memory.
    pub token_file: Option<PathBuf>,
    /// Vault Enterprise / HCP namespace, sent as `X-Vault-Namespace`.
    pub namespace: Option<String>,
    /// Where the transit engine is mounted.
    pub mount: String,
    /// The transit key's name (created by Vault on first use if the policy allows).
    pub key: String,
    /// How long one call to Vault may take.
    pub timeout_ms: u64,
    /// PEM file with the CA that signed Vault's certificate, if not a public one.
    pub ca_file: Option<PathBuf>,
}

impl Default for VaultSettings {
    fn default() -> Self {
        Self {
            address: None,
            token: None,
            token_file: None,
            namespace: None,
            mount: "transit".to_owned(),
            key: "conclave".to_owned(),
            timeout_ms: 5_000,
            ca_file: None,
        }
    }
}

/// Rooms and messages.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChatSettings {
    /// Longest message body, in bytes of UTF-8.
    pub max_message_bytes: usize,
    /// Longest room name and topic, in characters.
    pub max_name_chars: usize,
    pub max_topic_chars: usize,
    /// How long a room's unwrapped data key stays in memory after its last use.
    pub key_cache_minutes: u64,
    /// How long someone's unlocked private conversations stay open without use; then their
    /// key leaves memory and they unlock again with their password.
    pub private_idle_minutes: u64,
    /// Most messages an ephemeral room keeps in memory; older ones are dropped.
    pub ephemeral_max_messages: usize,
}

impl Default for ChatSettings {
    fn default() -> Self {
        Self {
            max_message_bytes: 16 * 1024,
            max_name_chars: 80,
            max_topic_chars: 500,
            key_cache_minutes: 10,
            private_idle_minutes: 30,
            ephemeral_max_messages: 5_000,
        }
    }
}

/// The WebSocket endpoint (`/api/v1/ws`): heartbeats, queues and limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RealtimeSettings {
    /// Seconds between the server's pings.
    pub heartbeat_secs: u64,
    /// A connection that sends nothing (not even a pong) for this long is closed (4000).
    pub heartbeat_timeout_secs: u64,
    /// Events waiting for one connection; a connection that falls this far behind is closed
    /// as a slow consumer (4009) and resumes later.
    pub queue_capacity: usize,
    /// Largest frame a client may send, in bytes (larger: close 1009).
    pub max_frame_bytes: usize,
    /// Frames a connection may send per second, and in a burst (more: close 4008).
    pub messages_per_second: u32,
    pub message_burst: u32,
    /// Open connections per client IP address and per user (more: 429 before the upgrade).
    pub connections_per_ip: u32,
    pub connections_per_user: u32,
    /// New connections (handshakes) per IP address per minute (more: 429).
    pub handshakes_per_ip_per_minute: u32,
    /// Origins besides `server.public_url` that browsers may connect from with their session
    /// cookie (e.g. `https://chat.example.com`). Token-authenticated clients need none.
    pub allowed_origins: Vec<String>,
    /// How often a connection re-checks that its session or token is still valid, in seconds
    /// (revocations on this node close connections at once; this bounds the rest).
    pub revalidate_secs: u64,
}

impl Default for RealtimeSettings {
    fn default() -> Self {
        Self {
            heartbeat_secs: 20,
            heartbeat_timeout_secs: 60,
            queue_capacity: 512,
            max_frame_bytes: 64 * 1024,
            messages_per_second: 20,
            message_burst: 60,
            connections_per_ip: 200,
            connections_per_user: 30,
            handshakes_per_ip_per_minute: 120,
            allowed_origins: Vec::new(),
            revalidate_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccountSettings {
    /// Shortest password accepted, in characters.
    pub password_min_length: usize,
    /// Password hashes computed at once; 0 means one per CPU core.
    pub hash_concurrency: usize,
    /// Hashes that may wait for a slot; beyond that, sign-ins are refused with 429 at once.
    pub hash_queue: usize,
    /// People may create their own accounts at /signup.
    pub signup_enabled: bool,
    /// How long an email verification link works.
    pub verification_link_hours: u64,
    /// Accounts whose email address is not verified cannot sign in.
    pub require_verified_email: bool,
    /// Failed sign-ins in a row that lock an account.
    pub lockout_threshold: i32,
    /// How long a locked account stays locked.
    pub lockout_minutes: u64,
    /// Sign-in attempts accepted per client IP and minute; 0 means no limit.
    pub login_attempts_per_ip_per_minute: u32,
    /// Unknown API tokens accepted per client IP and minute; past that, the address gets 429
    /// for a minute (even with a valid token) and the audit log records it. 0: no limit.
    pub invalid_tokens_per_ip_per_minute: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionSettings {
    /// A session unused for this long ends.
    pub idle_timeout_hours: u64,
    /// A session ends this long after sign-in, however busy.
    pub lifetime_days: u64,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            idle_timeout_hours: 72,
            lifetime_days: 30,
        }
    }
}

impl Default for AccountSettings {
    fn default() -> Self {
        Self {
            password_min_length: 10,
            hash_concurrency: 0,
            hash_queue: 32,
            signup_enabled: true,
            verification_link_hours: 24,
            require_verified_email: true,
            lockout_threshold: 5,
            lockout_minutes: 15,
            login_attempts_per_ip_per_minute: 30,
            invalid_tokens_per_ip_per_minute: 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptchaSettings {
    /// Ask for a proof of work (a self-hosted CAPTCHA) on sign-up and password reset.
    pub enabled: bool,
    /// Work per challenge: a browser tries on average half this many SHA-256 hashes.
    pub max_number: u64,
    /// How long a challenge may be solved and used (covers filling in the form).
    pub expires_minutes: u64,
}

impl Default for CaptchaSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_number: 100_000,
            expires_minutes: 30,
        }
    }
}

/// Plans, payments (Revolut Merchant) and usage quotas.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingSettings {
    /// The plan every workspace is on until it pays for another.
    pub default_plan: String,
    /// Plans by short name; empty: the built-in `free`, `pro` and `credits` (see the example).
    pub plans: std::collections::BTreeMap<String, PlanSettings>,
    /// How often the reconciliation job runs, in minutes.
    pub reconcile_minutes: u64,
    /// Orders still open at the provider this many seconds after their last change are asked
    /// about again by the reconciliation (their webhook may have been lost).
    pub reconcile_after_secs: u64,
    pub revolut: RevolutSettings,
}

impl Default for BillingSettings {
    fn default() -> Self {
        Self {
            default_plan: "free".to_owned(),
            plans: std::collections::BTreeMap::new(),
            reconcile_minutes: 5,
            reconcile_after_secs: 120,
            revolut: RevolutSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanPeriod {
    /// A subscription: the plan's limits for a month.
    Monthly,
    /// A one-off pack of credits (tokens beyond the plan's monthly allowance).
    CreditPack,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlanSettings {
    pub label: String,
    /// Price in minor units (cents); 0 is free.
    pub price_minor: i64,
    /// ISO 4217, e.g. "EUR".
    pub currency: String,
    pub period: PlanPeriod,
    /// Limits of a workspace on this plan (`monthly` plans); absent: unlimited.
    pub daily_requests: Option<u64>,
    pub daily_tokens: Option<u64>,
    pub monthly_tokens: Option<u64>,
    pub seats: Option<u64>,
    pub devices: Option<u64>,
    /// Tokens a credit pack adds to the workspace's credits.
    pub credits: u64,
}

impl Default for PlanSettings {
    fn default() -> Self {
        Self {
            label: String::new(),
            price_minor: 0,
            currency: "EUR".to_owned(),
            period: PlanPeriod::Monthly,
            daily_requests: None,
            daily_tokens: None,
            monthly_tokens: None,
            seats: None,
            devices: None,
            credits: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RevolutEnvironment {
    Sandbox,
    Production,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RevolutSettings {
    /// `sandbox` (https://sandbox-merchant.revolut.com) or `production`
    /// (https://merchant.revolut.com).
    pub environment: RevolutEnvironment,
    /// Overrides the environment's base URL (a proxy, a test stub).
    pub base_url: Option<String>,
    /// The Merchant API secret key (`sk_…`). Without one, a clearly labelled fake provider
    /// takes payments (development only; refused in production mode).
    #[serde(serialize_with = "redact_opt")]
    pub secret_key: Option<SecretString>,
    /// The webhook signing secret (`wsk_…`), from `conclave billing register-webhook`.
    #[serde(serialize_with = "redact_opt")]
    pub webhook_secret: Option<SecretString>,
    /// The `Revolut-Api-Version` header.
    pub api_version: String,
    pub timeout_secs: u64,
}

impl Default for RevolutSettings {
    fn default() -> Self {
        Self {
            environment: RevolutEnvironment::Sandbox,
            base_url: None,
            secret_key: None,
            webhook_secret: None,
            api_version: "2024-09-01".to_owned(),
            timeout_secs: 15,
        }
    }
}

impl BillingSettings {
    /// The configured plans, or the built-in ones when none are configured.
    pub fn effective_plans(&self) -> BTreeMap<String, PlanSettings> {
        if !self.plans.is_empty() {
            return self.plans.clone();
        }
        BTreeMap::from([
            (
                "free".to_owned(),
                PlanSettings {
                    label: "Free".to_owned(),
                    daily_requests: Some(200),
                    daily_tokens: Some(200_000),
                    monthly_tokens: Some(2_000_000),
                    ..PlanSettings::default()
                },
            ),
            (
                "pro".to_owned(),
                PlanSettings {
                    label: "Pro".to_owned(),
                    price_minor: 1_500,
                    daily_requests: Some(5_000),
                    daily_tokens: Some(5_000_000),
                    monthly_tokens: Some(100_000_000),
                    ..PlanSettings::default()
                },
            ),
            (
                "credits".to_owned(),
                PlanSettings {
                    label: "1M token credits".to_owned(),
                    price_minor: 1_000,
                    period: PlanPeriod::CreditPack,
                    credits: 1_000_000,
                    ..PlanSettings::default()
                },
            ),
        ])
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let plans = self.effective_plans();
        if !plans.contains_key(&self.default_plan) {
            problems.push(format!(
                "billing.default_plan: {:?} is not a plan",
                self.default_plan
            ));
        } else if plans[&self.default_plan].price_minor != 0 {
            problems.push("billing.default_plan: must be a free plan (price_minor = 0)".to_owned());
        }
        for (name, plan) in &self.plans {
            let key = format!("billing.plans.{name}");
            let valid_name = !name.is_empty()
                && name.len() <= 32
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !valid_name {
                problems.push(format!(
                    "{key}: the name must be 1 to 32 lowercase letters, digits, '-' or '_'"
                ));
            }
            if plan.price_minor < 0 {
                problems.push(format!("{key}.price_minor: must not be negative"));
            }
            if plan.currency.len() != 3 || !plan.currency.chars().all(|c| c.is_ascii_uppercase()) {
                problems.push(format!(
                    "{key}.currency: a three-letter ISO 4217 code such as \"EUR\", got {:?}",
                    plan.currency
                ));
            }
            if plan.period == PlanPeriod::CreditPack && (plan.credits == 0 || plan.price_minor == 0)
            {
                problems.push(format!(
                    "{key}: a credit pack needs credits > 0 and a price"
                ));
            }
        }
        let revolut = &self.revolut;
        if let Some(url) = &revolut.base_url {
            match url::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
                _ => problems.push(format!(
                    "billing.revolut.base_url: not an http(s) URL: {url:?}"
                )),
            }
        }
        if revolut.secret_key.is_some() && revolut.webhook_secret.is_none() {
            problems.push(
                "billing.revolut.webhook_secret: required with a secret_key (run `conclave billing register-webhook`)"
                    .to_owned(),
            );
        }
        if !(1..=1_440).contains(&self.reconcile_minutes) {
            problems.push(format!(
                "billing.reconcile_minutes: must be between 1 and 1440, got {}",
                self.reconcile_minutes
            ));
        }
        if self.reconcile_after_secs > 86_400 {
            problems.push(format!(
                "billing.reconcile_after_secs: must be at most 86400, got {}",
                self.reconcile_after_secs
            ));
        }
        if !(1..=120).contains(&revolut.timeout_secs) {
            problems.push(format!(
                "billing.revolut.timeout_secs: must be between 1 and 120, got {}",
                revolut.timeout_secs
            ));
        }
        problems
    }
}

/// The assistant: LLM providers, the models people pick from, and how they are routed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssistantSettings {
    /// The model used when a request names none; empty means the first configured one.
    pub default_model: String,
    /// Seconds between health checks of each provider.
    pub health_interval_secs: u64,
    /// Failed calls in a row that open a provider's circuit (calls skip it, or go to the
    /// model's fallback), and how long it stays open before one probe call is let through.
    pub breaker_failures: u32,
    pub breaker_cooldown_secs: u64,
    /// Longest a whole answer may take, in seconds.
    pub max_generation_secs: u64,
    /// The name people mention to call the assistant into a room (`@assistant`).
    pub bot_name: String,
    /// The instructions every conversation starts with, before a person's or chat's own.
    pub system_prompt: String,
    /// How many recent room messages the assistant reads when mentioned in a room.
    pub room_context_messages: usize,
    /// Streamed text is sent to open tabs in batches this many milliseconds apart.
    pub stream_batch_ms: u64,
    /// Guest mode: visitors without an account may talk to the assistant at `/guest`.
    pub guests_enabled: bool,
    /// Messages one guest may send per day, and all guests together per minute.
    pub guest_messages_per_day: u32,
    pub guest_messages_per_minute: u32,
    /// Longest guest message in bytes, and longest answer to a guest in tokens.
    pub guest_max_message_bytes: usize,
    pub guest_max_output_tokens: u32,
    /// The model guests talk to; empty: the default model.
    pub guest_model: String,
    /// Providers by short name (letters, digits, '-', '_', '.', ':').
    pub providers: std::collections::BTreeMap<String, LlmProviderSettings>,
    /// Models by the name people and API clients use (the alias).
    pub models: std::collections::BTreeMap<String, LlmModelSettings>,
}

impl Default for AssistantSettings {
    fn default() -> Self {
        Self {
            default_model: String::new(),
            health_interval_secs: 30,
            breaker_failures: 3,
            breaker_cooldown_secs: 30,
            max_generation_secs: 300,
            bot_name: "assistant".to_owned(),
            system_prompt: "You are a helpful assistant in Conclave, a chat workspace. Answer \
                clearly and concisely. Use Markdown; put code in fenced blocks with a language."
                .to_owned(),
            room_context_messages: 30,
            stream_batch_ms: 40,
            guests_enabled: false,
            guest_messages_per_day: 20,
            guest_messages_per_minute: 30,
            guest_max_message_bytes: 4_000,
            guest_max_output_tokens: 512,
            guest_model: String::new(),
            providers: std::collections::BTreeMap::new(),
            models: std::collections::BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmProviderKind {
    /// OpenAI chat completions at any base URL (OpenAI, vLLM, llama.cpp, LiteLLM, Ollama's /v1).
    Openai,
    /// Ollama's native API (`/api/chat`).
    Ollama,
    /// Anthropic Messages (`/v1/messages`).
    Anthropic,
}

impl LlmProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Ollama => "ollama",
            Self::Anthropic => "anthropic",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmProviderSettings {
    pub kind: LlmProviderKind,
    /// e.g. `https://api.openai.com/v1`, `http://127.0.0.1:11434` (Ollama),
    /// `https://api.anthropic.com`.
    pub base_url: String,
    #[serde(serialize_with = "redact_opt")]
    pub api_key: Option<SecretString>,
    /// Seconds to connect and receive the answer's headers.
    pub connect_timeout_secs: u64,
    /// Seconds the stream may stay silent before the call fails.
    pub idle_timeout_secs: u64,
}

impl Default for LlmProviderSettings {
    fn default() -> Self {
        Self {
            kind: LlmProviderKind::Openai,
            base_url: String::new(),
            api_key: None,
            connect_timeout_secs: 10,
            idle_timeout_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmModelSettings {
    /// What the model picker shows.
    pub label: String,
    /// A free-form tier shown beside it (billing uses it later), e.g. "free", "pro".
    pub tier: String,
    /// The provider models this alias routes to, each with a weight (an A/B test when more
    /// than one): `[{ provider = "local", model = "llama3.2", weight = 1 }]`.
    pub routes: Vec<LlmRouteSettings>,
    /// The model (alias) to use when every route of this one is down.
    pub fallback: Option<String>,
    /// The model's context window in tokens; older turns are dropped to fit.
    pub context_tokens: u32,
    /// Most tokens an answer may have.
    pub max_output_tokens: u32,
}

impl Default for LlmModelSettings {
    fn default() -> Self {
        Self {
            label: String::new(),
            tier: "standard".to_owned(),
            routes: Vec::new(),
            fallback: None,
            context_tokens: 8_192,
            max_output_tokens: 1_024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LlmRouteSettings {
    pub provider: String,
    pub model: String,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

impl AssistantSettings {
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let short_name = |name: &str| {
            !name.is_empty()
                && name.len() <= 40
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        };
        for (name, provider) in &self.providers {
            let key = format!("assistant.providers.{name}");
            if !short_name(name) {
                problems.push(format!(
                    "{key}: the name must be 1 to 40 letters, digits, '-', '_', '.' or ':'"
                ));
            }
            match url::Url::parse(&provider.base_url) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
                Ok(_) => problems.push(format!("{key}.base_url: must be an http(s) URL")),
                Err(e) => problems.push(format!("{key}.base_url: not a valid URL ({e})")),
            }
            if provider.kind == LlmProviderKind::Anthropic && provider.api_key.is_none() {
                problems.push(format!(
                    "{key}.api_key: Anthropic needs a key (or {ENV_PREFIX}ASSISTANT__PROVIDERS__{}__API_KEY_FILE)",
                    name.to_ascii_uppercase()
                ));
            }
            for (field, value) in [
                ("connect_timeout_secs", provider.connect_timeout_secs),
                ("idle_timeout_secs", provider.idle_timeout_secs),
            ] {
                if !(1..=3_600).contains(&value) {
                    problems.push(format!(
                        "{key}.{field}: must be between 1 and 3600, got {value}"
                    ));
                }
            }
        }
        for (alias, model) in &self.models {
            let key = format!("assistant.models.{alias}");
            if !short_name(alias) {
                problems.push(format!(
                    "{key}: the name must be 1 to 40 letters, digits, '-', '_', '.' or ':'"
                ));
            }
            if model.routes.is_empty() {
                problems.push(format!("{key}.routes: name at least one provider model"));
            }
            for route in &model.routes {
                if !self.providers.contains_key(&route.provider) {
                    problems.push(format!(
                        "{key}.routes: provider {:?} is not configured under assistant.providers",
                        route.provider
                    ));
                }
                if route.model.trim().is_empty() {
                    problems.push(format!("{key}.routes: a route's model is empty"));
                }
            }
            if !model.routes.is_empty() && model.routes.iter().all(|r| r.weight == 0) {
                problems.push(format!("{key}.routes: at least one weight must be above 0"));
            }
            if let Some(fallback) = &model.fallback
                && (fallback == alias || !self.models.contains_key(fallback))
            {
                problems.push(format!(
                    "{key}.fallback: {fallback:?} must be another configured model"
                ));
            }
            if !(256..=10_000_000).contains(&model.context_tokens) {
                problems.push(format!(
                    "{key}.context_tokens: must be between 256 and 10000000, got {}",
                    model.context_tokens
                ));
            }
            if model.max_output_tokens == 0 || model.max_output_tokens >= model.context_tokens {
                problems.push(format!(
                    "{key}.max_output_tokens: must be above 0 and below context_tokens, got {}",
                    model.max_output_tokens
                ));
            }
        }
        let bot = &self.bot_name;
        if bot.is_empty()
            || bot.len() > 32
            || !bot
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        {
            problems.push(format!(
                "assistant.bot_name: 1 to 32 letters, digits, '-' or '_' (people type @{bot}), got {bot:?}"
            ));
        }
        if !self.guest_model.is_empty() && !self.models.contains_key(&self.guest_model) {
            problems.push(format!(
                "assistant.guest_model: {:?} is not a configured model",
                self.guest_model
            ));
        }
        if !self.default_model.is_empty() && !self.models.contains_key(&self.default_model) {
            problems.push(format!(
                "assistant.default_model: {:?} is not a configured model",
                self.default_model
            ));
        }
        for (key, value, min, max) in [
            (
                "assistant.health_interval_secs",
                self.health_interval_secs,
                1,
                86_400,
            ),
            (
                "assistant.breaker_failures",
                u64::from(self.breaker_failures),
                1,
                1_000,
            ),
            (
                "assistant.breaker_cooldown_secs",
                self.breaker_cooldown_secs,
                1,
                86_400,
            ),
            (
                "assistant.max_generation_secs",
                self.max_generation_secs,
                1,
                86_400,
            ),
            (
                "assistant.room_context_messages",
                self.room_context_messages as u64,
                1,
                500,
            ),
            ("assistant.stream_batch_ms", self.stream_batch_ms, 5, 1_000),
            (
                "assistant.guest_messages_per_day",
                u64::from(self.guest_messages_per_day),
                1,
                100_000,
            ),
            (
                "assistant.guest_messages_per_minute",
                u64::from(self.guest_messages_per_minute),
                1,
                1_000_000,
            ),
            (
                "assistant.guest_max_message_bytes",
                self.guest_max_message_bytes as u64,
                1,
                1_000_000,
            ),
            (
                "assistant.guest_max_output_tokens",
                u64::from(self.guest_max_output_tokens),
                1,
                1_000_000,
            ),
        ] {
            if !(min..=max).contains(&value) {
                problems.push(format!(
                    "{key}: must be between {min} and {max}, got {value}"
                ));
            }
        }
        problems
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcSettings {
    /// Sign-in providers by short name; the name appears in URLs (`/login/oidc/<name>`) and
    /// in the redirect URI to register: `<public_url>/login/oidc/<name>/callback`.
    pub providers: std::collections::BTreeMap<String, OidcProviderSettings>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcProviderSettings {
    /// `oidc` (any OpenID Connect provider, found through discovery) or `github` (OAuth).
    pub kind: ProviderKind,
    /// The button label, e.g. "Company SSO"; empty means the provider's usual name.
    pub display_name: String,
    /// OpenID Connect issuer, e.g. `https://accounts.example.com` (kind `oidc` only).
    pub issuer_url: Option<String>,
    pub client_id: String,
    #[serde(serialize_with = "redact_opt")]
    pub client_secret: Option<SecretString>,
    /// Scopes asked for besides `openid email profile`, separated by spaces.
    pub extra_scopes: String,
    /// GitHub web and API base URLs; change them for GitHub Enterprise Server.
    pub github_url: String,
    pub github_api_url: String,
}

impl Default for OidcProviderSettings {
    fn default() -> Self {
        Self {
            kind: ProviderKind::Oidc,
            display_name: String::new(),
            issuer_url: None,
            client_id: String::new(),
            client_secret: None,
            extra_scopes: String::new(),
            github_url: "https://github.com".to_owned(),
            github_api_url: "https://api.github.com".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Oidc,
    Github,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemplateSettings {
    /// A directory whose templates replace the built-in ones of the same name.
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailSettings {
    pub transport: MailTransportKind,
    pub from: String,
    /// Where the `file` transport drops `.eml` files; unset means `<data_dir>/mail`.
    pub dir: Option<PathBuf>,
    pub smtp: SmtpSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MailTransportKind {
    File,
    Smtp,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    #[serde(serialize_with = "redact_opt")]
    pub password: Option<SecretString>,
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (port 587); refuses servers without it.
    Starttls,
    /// Implicit TLS from the first byte (port 465).
    Tls,
    /// No encryption: only for a relay on localhost.
    None,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    /// A `tracing` filter such as `info` or `info,conclave=debug`; `RUST_LOG` overrides it.
    pub log_filter: String,
    /// OTLP/HTTP collector base URL, e.g. `http://127.0.0.1:4318`. Unset: no traces exported.
    pub otlp_endpoint: Option<String>,
    pub service_name: String,
    /// When set, `/metrics` answers only requests with `Authorization: Bearer <token>`.
    #[serde(serialize_with = "redact_opt")]
    pub metrics_token: Option<SecretString>,
    /// Browser error reports accepted per client IP and minute; 0 switches reporting off.
    pub client_errors_per_minute: u32,
    /// Also write logs (JSON) to daily files `conclave.YYYY-MM-DD.log` in this directory.
    pub log_dir: Option<PathBuf>,
    /// Log files kept in `log_dir` (one a day); older ones are deleted.
    pub log_retention_days: usize,
    /// Answer `/metrics` only on `server.admin_listen` (404 on the public listener).
    pub metrics_on_admin_listener: bool,
    /// Workspaces with their own `tenant_*` series on `/metrics` (the oldest first); a bound
    /// on the series a large installation exports. 0 switches per-workspace metrics off.
    pub tenant_metrics_limit: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobSettings {
    /// Run job workers in this process (a node may serve HTTP only).
    pub enabled: bool,
    /// Jobs one node runs at the same time.
    pub concurrency: usize,
    pub poll_interval_ms: u64,
    /// Tries before a job is marked dead, unless the job sets its own.
    pub max_attempts: i32,
    pub backoff_base_ms: u64,
    pub backoff_max_secs: u64,
    /// A claimed job whose worker vanished is retried after this long.
    pub lease_secs: u64,
    /// Succeeded jobs are deleted after this many hours; dead ones are kept.
    pub keep_succeeded_hours: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            mode: Mode::Development,
            data_dir: PathBuf::from("data"),
            server: ServerSettings::default(),
            database: DatabaseSettings::default(),
            security: SecuritySettings::default(),
            accounts: AccountSettings::default(),
            sessions: SessionSettings::default(),
            templates: TemplateSettings::default(),
            mail: MailSettings::default(),
            telemetry: TelemetrySettings::default(),
            jobs: JobSettings::default(),
            captcha: CaptchaSettings::default(),
            oidc: OidcSettings::default(),
            keys: KeySettings::default(),
            chat: ChatSettings::default(),
            realtime: RealtimeSettings::default(),
            assistant: AssistantSettings::default(),
            billing: BillingSettings::default(),
            edge: EdgeSettings::default(),
            devices: DeviceSettings::default(),
            backup: BackupSettings::default(),
            source: None,
            from_env: Vec::new(),
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            allow_insecure_public_url: false,
            workers: 0,
            json_limit_bytes: 256 * 1024,
            form_limit_bytes: 64 * 1024,
            payload_limit_bytes: 1024 * 1024,
            shutdown_timeout_secs: 30,
            client_request_timeout_ms: 5_000,
            admin_listen: None,
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: None,
            pool_max_size: 8,
            pool_min_idle: 1,
            connect_timeout_secs: 5,
            sqlite_busy_timeout_ms: 5_000,
        }
    }
}

impl Default for MailSettings {
    fn default() -> Self {
        Self {
            transport: MailTransportKind::File,
            from: "Conclave <conclave@localhost>".to_owned(),
            dir: None,
            smtp: SmtpSettings::default(),
        }
    }
}

impl Default for SmtpSettings {
    fn default() -> Self {
        Self {
            host: "localhost".to_owned(),
            port: 587,
            tls: SmtpTls::Starttls,
            username: None,
            password: None,
            timeout_secs: 10,
        }
    }
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Pretty,
            log_filter: "info".to_owned(),
            otlp_endpoint: None,
            service_name: "conclave".to_owned(),
            metrics_token: None,
            client_errors_per_minute: 20,
            log_dir: None,
            log_retention_days: 14,
            metrics_on_admin_listener: false,
            tenant_metrics_limit: 200,
        }
    }
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            concurrency: 4,
            poll_interval_ms: 1_000,
            max_attempts: 8,
            backoff_base_ms: 2_000,
            backoff_max_secs: 3_600,
            lease_secs: 300,
            keep_succeeded_hours: 168,
        }
    }
}

/// Secrets are written as a fixed marker so `config check --print` and `Debug` never leak them.
fn redact_opt<S: Serializer>(value: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_str("[redacted]"),
        None => s.serialize_none(),
    }
}

/// A list of secrets from a TOML array, or from one comma-separated string (environment
/// variables and `_FILE` files carry strings).
fn secrets_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SecretString>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Given::deserialize(d)? {
        Given::One(text) => text
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| SecretString::from(t.to_owned()))
            .collect(),
        Given::Many(list) => list.into_iter().map(SecretString::from).collect(),
    })
}

fn redact_vec<S: Serializer>(value: &[SecretString], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq as _;
    let mut seq = s.serialize_seq(Some(value.len()))?;
    for _ in value {
        seq.serialize_element("[redacted]")?;
    }
    seq.end()
}

/// Which database a URL names; anything else is refused at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    Sqlite(PathBuf),
    Postgres(String),
}

/// Everything wrong with a configuration, one line per problem, each naming its key.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("; "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(problem: impl Into<String>) -> Self {
        Self {
            problems: vec![problem.into()],
        }
    }
}

impl OidcProviderSettings {
    /// What is wrong with the provider called `name`, one line per problem.
    fn problems(&self, name: &str) -> Vec<String> {
        let key = format!("oidc.providers.{name}");
        let mut problems = Vec::new();
        let valid_name = !name.is_empty()
            && name.len() <= 32
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid_name {
            problems.push(format!(
                "{key}: the name must be 1 to 32 lowercase letters, digits or '-' (it is part of URLs)"
            ));
        }
        if self.client_id.trim().is_empty() {
            problems.push(format!("{key}.client_id: must be set"));
        }
        let url_problem = |field: &str, value: &str| match url::Url::parse(value) {
            Ok(url) if matches!(url.scheme(), "https" | "http") => None,
            Ok(_) => Some(format!(
                "{key}.{field}: must be an http(s) URL, got {value}"
            )),
            Err(e) => Some(format!("{key}.{field}: not a valid URL ({e})")),
        };
        match (self.kind, self.issuer_url.as_deref()) {
            (ProviderKind::Oidc, None) => {
                problems.push(format!("{key}.issuer_url: must be set for kind = \"oidc\""));
            }
            (ProviderKind::Oidc, Some(issuer)) => {
                problems.extend(url_problem("issuer_url", issuer))
            }
            (ProviderKind::Github, Some(_)) => problems.push(format!(
                "{key}.issuer_url: GitHub is not an OpenID provider; set github_url instead"
            )),
            (ProviderKind::Github, None) => {
                problems.extend(url_problem("github_url", &self.github_url));
                problems.extend(url_problem("github_api_url", &self.github_api_url));
            }
        }
        problems
    }

    /// The button label.
    pub fn label(&self, name: &str) -> String {
        match (self.display_name.trim(), self.kind) {
            ("", ProviderKind::Github) => "GitHub".to_owned(),
            ("", ProviderKind::Oidc) => name.to_owned(),
            (label, _) => label.to_owned(),
        }
    }
}

impl VaultSettings {
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match self.address.as_deref().map(url::Url::parse) {
            None => problems
                .push("keys.vault.address: required when keys.provider is \"vault\"".to_owned()),
            Some(Ok(url)) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
            Some(Ok(_)) => {
                problems.push("keys.vault.address: must be an http:// or https:// URL".to_owned())
            }
            Some(Err(e)) => problems.push(format!("keys.vault.address: not a valid URL ({e})")),
        }
        if self.token.is_none() && self.token_file.is_none() {
            problems.push(
                "keys.vault: set token or token_file (the Vault token Conclave uses)".to_owned(),
            );
        }
        for (name, value) in [("mount", &self.mount), ("key", &self.key)] {
            let valid = !value.is_empty()
                && value
                    .split('/')
                    .all(|part| !part.is_empty() && part != "." && part != "..")
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
            if !valid {
                problems.push(format!(
                    "keys.vault.{name}: letters, digits, '-', '_', '.' and '/'-separated parts only"
                ));
            }
        }
        if self.key.contains('/') {
            problems.push("keys.vault.key: a transit key name has no '/'".to_owned());
        }
        if !(100..=60_000).contains(&self.timeout_ms) {
            problems.push(format!(
                "keys.vault.timeout_ms: must be between 100 and 60000, got {}",
                self.timeout_ms
            ));
        }
        problems
    }
}

impl Settings {
    /// Loads the layered configuration from the process environment.
    pub fn load(config_file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(config_file, std::env::vars())
    }

    /// Loads the layers with an explicit environment (tests pass their own).
    pub fn load_from(
        config_file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = config_file {
            if !path.is_file() {
                return Err(ConfigError::one(format!(
                    "config file {} does not exist or is not a file",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let mut settings = Self::layered(figment, env)?;
        settings.source = config_file.map(Path::to_path_buf);
        Ok(settings)
    }

    /// The settings a configuration file's text alone gives (defaults for the rest), checked
    /// like a file: what the `config` fuzz target feeds with arbitrary text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::layered(Figment::new().merge(Toml::string(text)), Vec::new())
    }

    /// The environment's variables over `figment`, extracted and validated.
    fn layered(
        mut figment: Figment,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        // Key path → the variable that set it, so errors can name the variable.
        let mut env_sources: Vec<(String, String)> = Vec::new();
        // figment reads the real process environment; tests hand in their own list, so the
        // variables are turned into one keyed provider per variable here. Values go in as
        // strings and `extract_lossy` converts them to the field's type: a password made of
        // digits stays a string, and no type error ever echoes a secret's value.
        // Plain variables first, then `_FILE` ones, so a secret file wins over a plain value.
        let mut ordered: Vec<&(String, String)> = env
            .iter()
            .filter(|(n, _)| n.starts_with(ENV_PREFIX))
            .collect();
        ordered.sort_by_key(|(name, _)| name.ends_with(SECRET_FILE_SUFFIX));
        for (name, value) in ordered {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let (path, value) = match key.strip_suffix(SECRET_FILE_SUFFIX) {
                Some(key) => {
                    let contents = std::fs::read_to_string(value).map_err(|e| {
                        ConfigError::one(format!(
                            "{}: cannot read secret file {value}: {e}",
                            env_key_to_path(key)
                        ))
                    })?;
                    (
                        env_key_to_path(key),
                        contents.trim_end_matches(['\r', '\n']).to_owned(),
                    )
                }
                None => (env_key_to_path(key), value.clone()),
            };
            env_sources.push((path.clone(), name.clone()));
            figment = figment.merge(Serialized::default(&path, value));
        }
        let mut settings: Settings = figment.extract_lossy().map_err(|e| ConfigError {
            problems: e
                .into_iter()
                .map(|e| describe_figment_error(e, &env_sources))
                .collect(),
        })?;
        settings.validate()?;
        settings.from_env = env_sources;
        Ok(settings)
    }

    /// Cross-field rules that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if let Err(e) = self.database_target() {
            problems.push(e);
        }
        if let Some(key) = &self.security.secret_key
            && let Err(e) = crate::keys::decode_key(key.expose_secret())
        {
            problems.push(format!("security.secret_key: {e}"));
        }
        for (name, key) in self
            .keys
            .kek
            .iter()
            .map(|k| ("keys.kek".to_owned(), k))
            .chain(
                self.keys
                    .previous_keks
                    .iter()
                    .enumerate()
                    .map(|(i, k)| (format!("keys.previous_keks[{i}]"), k)),
            )
        {
            if let Err(e) = crate::keys::decode_key(key.expose_secret()) {
                problems.push(format!("{name}: {e}"));
            }
        }
        if self.keys.provider == KeyProviderKind::Vault {
            problems.extend(self.keys.vault.problems());
        }
        let chat = &self.chat;
        for (key, value, min, max) in [
            ("chat.max_message_bytes", chat.max_message_bytes, 1, 1 << 20),
            ("chat.max_name_chars", chat.max_name_chars, 1, 1_000),
            ("chat.max_topic_chars", chat.max_topic_chars, 0, 10_000),
            (
                "chat.key_cache_minutes",
                chat.key_cache_minutes as usize,
                1,
                24 * 60,
            ),
            (
                "chat.private_idle_minutes",
                chat.private_idle_minutes as usize,
                1,
                7 * 24 * 60,
            ),
            (
                "chat.ephemeral_max_messages",
                chat.ephemeral_max_messages,
                1,
                1_000_000,
            ),
        ] {
            if !(min..=max).contains(&value) {
                problems.push(format!(
                    "{key}: must be between {min} and {max}, got {value}"
                ));
            }
        }
        let realtime = &self.realtime;
        for origin in &realtime.allowed_origins {
            match url::Url::parse(origin) {
                Ok(url) if url.origin().ascii_serialization() == origin.trim_end_matches('/') => {}
                _ => problems.push(format!(
                    "realtime.allowed_origins: {origin:?} is not an origin like https://chat.example.com"
                )),
            }
        }
        let public_url = match self.server.public_url.as_deref().map(url::Url::parse) {
            Some(Ok(url)) => Some(url),
            Some(Err(e)) => {
                problems.push(format!("server.public_url: not a valid URL ({e})"));
                None
            }
            None => None,
        };
        if self.mode == Mode::Production {
            if self.security.secret_key.is_none() {
                problems.push(
                    "security.secret_key: production mode needs an explicit secret key \
                     (set CONCLAVE__SECURITY__SECRET_KEY or CONCLAVE__SECURITY__SECRET_KEY_FILE; \
                     generate one with `openssl rand -base64 32`)"
                        .to_owned(),
                );
            }
            match &public_url {
                None if self.server.public_url.is_none() => problems.push(
                    "server.public_url: production mode needs the public https URL users reach Conclave at"
                        .to_owned(),
                ),
                Some(url) if url.scheme() != "https" && !self.server.allow_insecure_public_url => {
                    problems.push(format!(
                        "server.public_url: {url} is not https; production refuses it unless \
                         server.allow_insecure_public_url = true"
                    ))
                }
                _ => {}
            }
        }
        let jobs = &self.jobs;
        for (key, value, min, max) in [
            ("jobs.concurrency", jobs.concurrency as u64, 1, 1_024),
            (
                "jobs.max_attempts",
                u64::try_from(jobs.max_attempts).unwrap_or(0),
                1,
                1_000,
            ),
            (
                "jobs.poll_interval_ms",
                jobs.poll_interval_ms,
                10,
                3_600_000,
            ),
            ("jobs.backoff_base_ms", jobs.backoff_base_ms, 1, 86_400_000),
            (
                "jobs.backoff_max_secs",
                jobs.backoff_max_secs,
                1,
                7 * 86_400,
            ),
            // A lease shorter than a few seconds would let another node start a running job.
            ("jobs.lease_secs", jobs.lease_secs, 5, 7 * 86_400),
            (
                "jobs.keep_succeeded_hours",
                jobs.keep_succeeded_hours,
                1,
                10 * 365 * 24,
            ),
            (
                "server.shutdown_timeout_secs",
                self.server.shutdown_timeout_secs,
                0,
                3_600,
            ),
            (
                "accounts.password_min_length",
                self.accounts.password_min_length as u64,
                8,
                128,
            ),
            (
                "accounts.hash_concurrency",
                self.accounts.hash_concurrency as u64,
                0,
                256,
            ),
            (
                "accounts.hash_queue",
                self.accounts.hash_queue as u64,
                0,
                10_000,
            ),
            (
                "accounts.lockout_threshold",
                u64::try_from(self.accounts.lockout_threshold).unwrap_or(0),
                1,
                1_000,
            ),
            (
                "accounts.lockout_minutes",
                self.accounts.lockout_minutes,
                1,
                7 * 24 * 60,
            ),
            (
                "accounts.verification_link_hours",
                self.accounts.verification_link_hours,
                1,
                24 * 30,
            ),
            (
                "sessions.idle_timeout_hours",
                self.sessions.idle_timeout_hours,
                1,
                24 * 365,
            ),
            (
                "sessions.lifetime_days",
                self.sessions.lifetime_days,
                1,
                3 * 365,
            ),
            ("realtime.heartbeat_secs", realtime.heartbeat_secs, 1, 3_600),
            (
                "realtime.heartbeat_timeout_secs",
                realtime.heartbeat_timeout_secs,
                realtime.heartbeat_secs.saturating_add(1),
                7_200,
            ),
            (
                "realtime.queue_capacity",
                realtime.queue_capacity as u64,
                1,
                1 << 20,
            ),
            (
                "realtime.max_frame_bytes",
                realtime.max_frame_bytes as u64,
                256,
                16 << 20,
            ),
            (
                "realtime.messages_per_second",
                u64::from(realtime.messages_per_second),
                1,
                100_000,
            ),
            (
                "realtime.message_burst",
                u64::from(realtime.message_burst),
                1,
                100_000,
            ),
            (
                "realtime.connections_per_ip",
                u64::from(realtime.connections_per_ip),
                1,
                1_000_000,
            ),
            (
                "realtime.connections_per_user",
                u64::from(realtime.connections_per_user),
                1,
                100_000,
            ),
            (
                "realtime.handshakes_per_ip_per_minute",
                u64::from(realtime.handshakes_per_ip_per_minute),
                1,
                1_000_000,
            ),
            (
                "realtime.revalidate_secs",
                realtime.revalidate_secs,
                1,
                3_600,
            ),
        ] {
            if !(min..=max).contains(&value) {
                problems.push(format!(
                    "{key}: must be between {min} and {max}, got {value}"
                ));
            }
        }
        if self.captcha.enabled && !(1_000..=100_000_000).contains(&self.captcha.max_number) {
            problems.push(format!(
                "captcha.max_number: must be between 1000 and 100000000, got {}",
                self.captcha.max_number
            ));
        }
        if !(1..=24 * 60).contains(&self.captcha.expires_minutes) {
            problems.push(format!(
                "captcha.expires_minutes: must be between 1 and 1440, got {}",
                self.captcha.expires_minutes
            ));
        }
        for (name, provider) in &self.oidc.providers {
            problems.extend(provider.problems(name));
        }
        problems.extend(self.assistant.problems());
        problems.extend(self.billing.problems());
        if self.database.pool_max_size == 0 {
            problems.push("database.pool_max_size: must be at least 1".to_owned());
        } else if self.database.pool_min_idle > self.database.pool_max_size {
            problems
                .push("database.pool_min_idle: must not exceed database.pool_max_size".to_owned());
        }
        if self.mail.transport == MailTransportKind::Smtp && self.mail.smtp.host.trim().is_empty() {
            problems.push("mail.smtp.host: required when mail.transport = \"smtp\"".to_owned());
        }
        if self.mail.from.parse::<lettre::message::Mailbox>().is_err() {
            problems.push(format!(
                "mail.from: {:?} is not a mailbox like \"Conclave <conclave@example.com>\"",
                self.mail.from
            ));
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint
            && url::Url::parse(endpoint).is_err()
        {
            problems.push(format!(
                "telemetry.otlp_endpoint: {endpoint:?} is not a URL"
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.telemetry.log_filter) {
            problems.push(format!("telemetry.log_filter: {e}"));
        }
        if self.telemetry.metrics_on_admin_listener && self.server.admin_listen.is_none() {
            problems
                .push("telemetry.metrics_on_admin_listener: needs server.admin_listen".to_owned());
        }
        if self.telemetry.log_dir.is_some() && self.telemetry.log_retention_days == 0 {
            problems.push("telemetry.log_retention_days: keep at least one day".to_owned());
        }
        if self.backup.interval_hours == 0 {
            problems.push("backup.interval_hours: at least 1".to_owned());
        }
        if self.backup.keep_daily + self.backup.keep_weekly == 0 {
            problems
                .push("backup.keep_daily, backup.keep_weekly: keep at least one backup".to_owned());
        }
        if self
            .backup
            .dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            problems.push("backup.dir: empty (leave it out for <data_dir>/backups)".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The database the settings point at. Unknown URL schemes are an error, never a fallback.
    pub fn database_target(&self) -> Result<DatabaseTarget, String> {
        let Some(url) = &self.database.url else {
            return Ok(DatabaseTarget::Sqlite(self.data_dir.join("conclave.db")));
        };
        let url = url.expose_secret().trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseTarget::Postgres(url.to_owned()));
        }
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err("database.url: sqlite:// needs a file path".to_owned());
            }
            return Ok(DatabaseTarget::Sqlite(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = url.split_once("://") {
            return Err(format!(
                "database.url: unsupported scheme {scheme:?}; use sqlite://PATH or postgres://…"
            ));
        }
        if url.is_empty() {
            return Err("database.url: is empty".to_owned());
        }
        Ok(DatabaseTarget::Sqlite(PathBuf::from(url)))
    }

    /// The URL people use to reach this node, given the address it actually listens on.
    pub fn public_url(&self, bound: SocketAddr) -> String {
        match &self.server.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{bound}"),
        }
    }

    pub fn mail_dir(&self) -> PathBuf {
        self.mail
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("mail"))
    }
}

/// `SERVER__PUBLIC_URL` → `server.public_url`.
fn env_key_to_path(key: &str) -> String {
    key.split("__")
        .map(str::to_ascii_lowercase)
        .collect::<Vec<_>>()
        .join(".")
}

/// figment's messages name the profile ("default.server.listen"); operators need the key and
/// where it was set.
fn describe_figment_error(error: figment::Error, env_sources: &[(String, String)]) -> String {
    let path = error.path.join(".");
    let from_file = error.metadata.as_ref().and_then(|meta| match &meta.source {
        Some(figment::Source::File(file)) => Some(file.display().to_string()),
        _ => None,
    });
    let source = match from_file {
        Some(file) => format!(" (in {file})"),
        None => env_sources
            .iter()
            .rev()
            .find(|(key, _)| *key == path || key.starts_with(&format!("{path}.")))
            .map(|(_, var)| format!(" (from {var})"))
            .unwrap_or_default(),
    };
    let kind = error.kind.to_string();
    if path.is_empty() {
        format!("{kind}{source}")
    } else {
        format!("{path}: {kind}{source}")
    }
}
