//! The `conclave` command line. Every failure is one line on stderr and a meaningful exit code.

mod accounts;
mod backup;
mod devices;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::db::Db;
use crate::settings::{ConfigError, Settings};
use crate::startup::Application;

#[derive(Debug, Parser)]
#[command(
    name = "conclave",
    version,
    about = "Secure rooms for people, AI assistants and devices."
)]
pub struct Cli {
    /// Configuration file (TOML). Environment variables CONCLAVE__SECTION__KEY override it.
    #[arg(long, global = true, env = "CONCLAVE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Manage user accounts.
    User {
        #[command(subcommand)]
        action: accounts::UserAction,
    },
    /// Read the security audit log.
    Audit {
        #[command(subcommand)]
        action: accounts::AuditAction,
    },
    /// Manage the keys that protect message history.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Payments.
    Billing {
        #[command(subcommand)]
        action: BillingAction,
    },
    /// The edge policy: render it for a proxy or firewall, or keep a remote proxy in step.
    Edge {
        #[command(subcommand)]
        action: EdgeAction,
    },
    /// Simulated devices, for demos, tests and load tests.
    Device {
        #[command(subcommand)]
        action: devices::DeviceAction,
    },
    /// Firmware signing keys and signatures for over-the-air updates.
    Firmware {
        #[command(subcommand)]
        action: devices::FirmwareAction,
    },
    /// Back up, verify and restore the database.
    Backup {
        #[command(subcommand)]
        action: backup::BackupAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum EdgeAction {
    /// Print the active (or a stored) policy as a Caddyfile, an nginx include or an nftables
    /// ruleset: the same text the admin preview shows.
    Render {
        #[arg(long, value_parser = parse_format)]
        format: crate::edge::render::Format,
        /// A stored version; the active one when left out.
        #[arg(long)]
        version: Option<i64>,
    },
    /// Put an older version (0: the built-in default) back in force as a new version — the
    /// way back in when a policy locked everyone out of the admin area. Every node picks it
    /// up within `edge.reload_secs`.
    Rollback {
        #[arg(long)]
        to: i64,
    },
    /// Poll a Conclave server for the rendered policy and apply it to a local proxy: write it
    /// atomically, check it, roll back when the check fails, reload, and report the version.
    Agent {
        /// The Conclave server, e.g. https://chat.example.com (or its admin listener).
        #[arg(long)]
        server: String,
        /// A file holding an API token of an operator (or above) of the default workspace.
        #[arg(long, value_name = "FILE")]
        token_file: PathBuf,
        #[arg(long, value_parser = parse_format)]
        format: crate::edge::render::Format,
        /// The config file to keep current, e.g. /etc/nginx/conf.d/conclave.conf.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        /// Run after writing; a failure puts the previous file back (e.g. 'nginx -t').
        #[arg(long)]
        check: Option<String>,
        /// Run after a passing check (e.g. 'nginx -s reload').
        #[arg(long)]
        reload: Option<String>,
        /// How this agent is listed in admin; the host name by default.
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value_t = 15)]
        interval_secs: u64,
        /// One round, then exit (non-zero when the check refused the new version).
        #[arg(long)]
        once: bool,
    },
}

fn parse_format(text: &str) -> Result<crate::edge::render::Format, String> {
    text.parse()
}

#[derive(Debug, Subcommand)]
pub enum BillingAction {
    /// Register this server's webhook URL (`server.public_url` + /api/v1/billing/webhooks/revolut)
    /// with Revolut; prints the signing secret to set as `billing.revolut.webhook_secret`.
    RegisterWebhook,
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Re-wrap every room's data key under the current key-encryption key (`keys.kek`).
    /// Messages are not re-encrypted. Afterwards, drop the old key from `keys.previous_keks`.
    Rotate,
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Validate the layered configuration; name every bad or unknown key.
    Check,
}

/// Exit codes (sysexits.h where one fits), documented in README.md.
pub mod exit {
    /// The configuration is invalid.
    pub const CONFIG: u8 = 78;
    /// A needed service (the database) is unavailable.
    pub const UNAVAILABLE: u8 = 69;
    /// Anything else went wrong.
    pub const FAILURE: u8 = 1;
    /// The input given on the command line is invalid (bad email, weak password, taken email).
    pub const DATA: u8 = 65;
    /// The named user does not exist.
    pub const NO_USER: u8 = 67;
}

pub fn run(cli: Cli) -> ExitCode {
    crate::crypto::install_tls_provider();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => return config_failure(&e),
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Config {
            action: ConfigAction::Check,
        } => {
            println!(
                "configuration OK (mode {:?}, database {}, listening on {})",
                settings.mode,
                settings
                    .database_target()
                    .map(|t| crate::db::describe_target(&t))
                    .unwrap_or_default(),
                settings.server.listen
            );
            ExitCode::SUCCESS
        }
        Command::Migrate => with_runtime(|| async move {
            let db = Db::connect(&settings)
                .await
                .map_err(|e| (exit::UNAVAILABLE, e))?;
            let applied = db.migrate().await.map_err(|e| (exit::FAILURE, e))?;
            if applied.is_empty() {
                println!("database schema is current");
            } else {
                println!(
                    "applied {} migration(s): {}",
                    applied.len(),
                    applied.join(", ")
                );
            }
            Ok(())
        }),
        Command::Serve => serve(settings),
        Command::User { action } => with_runtime(|| accounts::user(settings, action)),
        Command::Audit { action } => with_runtime(|| accounts::audit(settings, action)),
        Command::Keys {
            action: KeysAction::Rotate,
        } => with_runtime(|| async move {
            let db = Db::connect(&settings)
                .await
                .map_err(|e| (exit::UNAVAILABLE, e))?;
            db.migrate().await.map_err(|e| (exit::FAILURE, e))?;
            let master =
                crate::crypto::load_master_key(&settings).map_err(|e| (exit::FAILURE, e))?;
            // Rotation re-wraps what the provider wrapped; private rooms' keys are not its own.
            let personal = crate::auth::personal_keys::PersonalKeys::new(
                db.clone(),
                crate::auth::PasswordHasher::new(1, 0),
                std::time::Duration::from_secs(60),
            );
            let store = crate::startup::history_store(&settings, &master, db, personal)
                .map_err(|e| (exit::FAILURE, e))?;
            let report = store
                .rotate_keys()
                .await
                .map_err(|e| (exit::FAILURE, anyhow::Error::new(e)))?;
            println!(
                "re-wrapped {} room key(s); {} already used the current key",
                report.rewrapped, report.current
            );
            Ok(())
        }),
        Command::Edge { action } => edge(settings, action),
        Command::Device { action } => with_runtime(|| devices::device(action)),
        Command::Firmware { action } => devices::firmware(action),
        Command::Backup { action } => backup::backup(&settings, action),
        Command::Billing {
            action: BillingAction::RegisterWebhook,
        } => with_runtime(|| async move {
            let Some(key) = settings.billing.revolut.secret_key.clone() else {
                return Err((
                    exit::CONFIG,
                    anyhow::anyhow!(
                        "billing.revolut.secret_key is not set: there is no Revolut account to register with"
                    ),
                ));
            };
            let Some(public_url) = settings.server.public_url.clone() else {
                return Err((
                    exit::CONFIG,
                    anyhow::anyhow!(
                        "server.public_url is not set: Revolut needs the address it can reach this server at"
                    ),
                ));
            };
            let provider =
                crate::billing::revolut::RevolutProvider::new(&settings.billing.revolut, key);
            let url = format!(
                "{}/api/v1/billing/webhooks/revolut",
                public_url.trim_end_matches('/')
            );
            use crate::billing::revolut::PaymentProvider as _;
            let registered = provider
                .register_webhook(&url)
                .await
                .map_err(|e| (exit::UNAVAILABLE, anyhow::Error::new(e)))?;
            println!("registered {url} (webhook {})", registered.id);
            println!(
                "set billing.revolut.webhook_secret (or CONCLAVE__BILLING__REVOLUT__WEBHOOK_SECRET_FILE) to:"
            );
            println!("{}", registered.signing_secret);
            Ok(())
        }),
    }
}

fn edge(settings: Settings, action: EdgeAction) -> ExitCode {
    match action {
        EdgeAction::Render { format, version } => with_runtime(|| async move {
            let db = Db::connect(&settings)
                .await
                .map_err(|e| (exit::UNAVAILABLE, e))?;
            db.migrate().await.map_err(|e| (exit::FAILURE, e))?;
            let edge = crate::edge::Edge::load(db, None)
                .await
                .map_err(|e| (exit::FAILURE, e))?;
            let (version, policy) = match version {
                Some(version) => (
                    version,
                    edge.version(version)
                        .await
                        .map_err(|e| (exit::DATA, anyhow::Error::new(e)))?,
                ),
                None => {
                    let active = edge.active();
                    (active.version, active.policy.clone())
                }
            };
            print!("{}", crate::edge::render::render(&policy, version, format));
            Ok(())
        }),
        EdgeAction::Rollback { to } => with_runtime(|| async move {
            let db = Db::connect(&settings)
                .await
                .map_err(|e| (exit::UNAVAILABLE, e))?;
            db.migrate().await.map_err(|e| (exit::FAILURE, e))?;
            let edge = crate::edge::Edge::load(db, None)
                .await
                .map_err(|e| (exit::FAILURE, e))?;
            let version = edge.rollback(to, None, None).await.map_err(|e| {
                let code = match e {
                    crate::error::AppError::NotFound(_) => exit::DATA,
                    _ => exit::FAILURE,
                };
                (code, anyhow::Error::new(e))
            })?;
            println!("version {to} is in force again as version {version}");
            Ok(())
        }),
        EdgeAction::Agent {
            server,
            token_file,
            format,
            out,
            check,
            reload,
            name,
            interval_secs,
            once,
        } => {
            let _telemetry = crate::telemetry::init(&settings.telemetry).ok();
            with_runtime(|| async move {
                let token = std::fs::read_to_string(&token_file)
                    .map_err(|e| {
                        (
                            exit::CONFIG,
                            anyhow::anyhow!("cannot read {}: {e}", token_file.display()),
                        )
                    })?
                    .trim()
                    .to_owned();
                let name = name.unwrap_or_else(|| {
                    std::fs::read_to_string("/etc/hostname")
                        .ok()
                        .map(|h| h.trim().to_owned())
                        .filter(|h| !h.is_empty())
                        .unwrap_or_else(|| "edge-agent".to_owned())
                });
                let agent = crate::edge::agent::Agent::new(crate::edge::agent::AgentOptions {
                    server,
                    token,
                    format,
                    out,
                    check,
                    reload,
                    name,
                    interval: std::time::Duration::from_secs(interval_secs.max(1)),
                    once,
                })
                .map_err(|e| (exit::FAILURE, e))?;
                agent.run().await.map_err(|e| (exit::FAILURE, e))
            })
        }
    }
}

fn serve(settings: Settings) -> ExitCode {
    limit_malloc_arenas();
    let _telemetry = match crate::telemetry::init(&settings.telemetry) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("conclave: {e:#}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    with_runtime(|| async move {
        let app = Application::build(settings).await.map_err(|e| {
            let code = if format!("{e:#}").contains("cannot connect to the database") {
                exit::UNAVAILABLE
            } else {
                exit::FAILURE
            };
            (code, e)
        })?;
        tracing::info!(
            port = app.port(),
            "Conclave is running at {}/",
            app.public_url()
        );
        app.run_until_stopped()
            .await
            .map_err(|e| (exit::FAILURE, e))
    })
}

/// glibc's allocator opens up to eight arenas per core, one for each thread that finds the
/// others locked. A server's long-lived per-connection state then sits in pages it shares with
/// short-lived allocations of many threads' arenas, and an idle connection costs more
/// resident memory than it allocated: with one arena per core, an idle device connection went
/// from 17.6 to about 16 KiB (docs/benchmarks.md), and the per-thread caches glibc keeps in
/// front of the arenas leave little lock contention. The limit is `mallopt(M_ARENA_MAX)`,
/// which needs `unsafe` (forbidden in this crate), or `MALLOC_ARENA_MAX`, which glibc reads at
/// process start: so `serve` starts itself once more, in the same process (`exec`, same pid),
/// with it set, unless the operator set it already (any value; it also turns this off).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    use std::os::unix::process::CommandExt as _;
    const VAR: &str = "MALLOC_ARENA_MAX";
    if std::env::var_os(VAR).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let name = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let error = std::process::Command::new(&exe)
        .arg0(name)
        .args(args)
        .env(VAR, cores.to_string())
        .exec();
    // `exec` returns only when it failed: go on with glibc's default.
    eprintln!(
        "conclave: could not restart with {VAR}={cores} ({error}); going on with the default"
    );
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

pub(crate) fn with_runtime<F, Fut>(body: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), (u8, anyhow::Error)>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("conclave: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(body()) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, error)) => {
            // Drivers (libpq) put hints on extra lines; an operator's log wants one line.
            let message = format!("{error:#}")
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            tracing::error!(error = %message, "conclave stopped");
            eprintln!("conclave: {message}");
            ExitCode::from(code)
        }
    }
}

fn config_failure(error: &ConfigError) -> ExitCode {
    for problem in &error.problems {
        eprintln!("conclave: config: {problem}");
    }
    ExitCode::from(exit::CONFIG)
}
