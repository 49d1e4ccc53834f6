//! Builds and runs one Conclave node: settings in, a listening server and job runner out.
//! Tests build the same `Application` on port 0.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{HttpServer, web};
use anyhow::Context as _;

use crate::auth::login::LoginService;
use crate::auth::sessions::Sessions;
use crate::auth::{PasswordHasher, PasswordPolicy};
use crate::db::Db;
use crate::jobs::{JobRegistry, Queue, Runner, RunnerHandle};
use crate::mail::{LettreMailer, Mailer};
use crate::settings::Settings;
use crate::web::{AppState, Templates};

pub struct Application {
    server: Server,
    hub: crate::chat::hub::Hub,
    relay: Option<crate::chat::relay::Relay>,
    port: u16,
    state: web::Data<AppState>,
    runner: Option<RunnerHandle>,
    shutdown_timeout: Duration,
}

/// Seams that tests (and later modules) may replace.
#[derive(Default)]
pub struct Seams {
    pub mailer: Option<Arc<dyn Mailer>>,
    /// Replaces the payment provider (Revolut, or the development fake).
    pub payments: Option<Arc<dyn crate::billing::revolut::PaymentProvider>>,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with(settings, Seams::default()).await
    }

    pub async fn build_with(settings: Settings, seams: Seams) -> anyhow::Result<Self> {
        crate::crypto::install_tls_provider();
        let settings = Arc::new(settings);
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("cannot create data_dir {}", settings.data_dir.display()))?;
        let master_key = Arc::new(crate::crypto::load_master_key(&settings)?);
        let metrics = crate::metrics::install()?;

        let db = Db::connect(&settings).await?;
        let applied = db.migrate().await?;
        if !applied.is_empty() {
            tracing::info!(migrations = ?applied, "applied database migrations");
        }
        metrics::gauge!(
            "conclave_build_info",
            "version" => env!("CARGO_PKG_VERSION"),
            "database" => db.backend().as_str()
        )
        .set(1.0);
        if let Ok(since_epoch) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)
        {
            metrics::gauge!("process_start_time_seconds").set(since_epoch.as_secs_f64());
        }

        let mailer: Arc<dyn Mailer> = match seams.mailer {
            Some(mailer) => mailer,
            None => Arc::new(LettreMailer::from_settings(&settings)?),
        };
        let queue = Queue::new(db.clone(), settings.jobs.max_attempts);
        let mut registry = JobRegistry::default();
        crate::mail::register_jobs(&mut registry, mailer);
        crate::auth::sweep::register_jobs(
            &mut registry,
            db.clone(),
            queue.clone(),
            settings.sessions.clone(),
        );
        crate::auth::sweep::schedule(&queue).await?;
        let ephemeral = Arc::new(crate::history::MemoryHistoryStore::new(
            settings.chat.ephemeral_max_messages,
        ));
        crate::history::retention::register_jobs(
            &mut registry,
            db.clone(),
            ephemeral.clone(),
            queue.clone(),
        );
        crate::history::retention::schedule(&queue).await?;
        crate::backup::register_jobs(&mut registry, settings.clone(), queue.clone());
        crate::backup::schedule(&queue, &settings).await?;
        crate::backup::publish_last_success(&crate::backup::backup_dir(&settings));
        let shutdown_timeout = Duration::from_secs(settings.server.shutdown_timeout_secs);

        let templates = Arc::new(Templates::load(settings.templates.dir.as_deref())?);
        let sessions = Sessions::new(db.clone(), &settings.sessions);
        let hasher = PasswordHasher::new(
            settings.accounts.hash_concurrency,
            settings.accounts.hash_queue,
        );
        let two_factor = crate::auth::two_factor::TwoFactor::new(
            db.clone(),
            crate::crypto::Sealer::for_purpose(&master_key, "totp"),
        );
        let password_hasher = hasher.clone();
        let personal_keys = crate::auth::personal_keys::PersonalKeys::new(
            db.clone(),
            hasher.clone(),
            Duration::from_secs(settings.chat.private_idle_minutes.saturating_mul(60)),
        );
        let login = LoginService::new(
            db.clone(),
            hasher.clone(),
            sessions.clone(),
            two_factor.clone(),
            queue.clone(),
            templates.clone(),
            settings.accounts.clone(),
        );
        let listener = TcpListener::bind(settings.server.listen).with_context(|| {
            format!(
                "cannot listen on {} (server.listen)",
                settings.server.listen
            )
        })?;
        let bound = listener.local_addr()?;
        let admin_listener = settings
            .server
            .admin_listen
            .map(|address| {
                TcpListener::bind(address)
                    .with_context(|| format!("cannot listen on {address} (server.admin_listen)"))
            })
            .transpose()?;
        let admin_bound = admin_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        let edge = crate::edge::Edge::load(db.clone(), admin_bound).await?;
        let port = bound.port();
        let public_url = settings.public_url(bound);
        let passwords = crate::auth::passwords::PasswordService::new(
            db.clone(),
            login.clone(),
            hasher.clone(),
            PasswordPolicy::new(settings.accounts.password_min_length),
            sessions.clone(),
            personal_keys.clone(),
            queue.clone(),
            templates.clone(),
            public_url.clone(),
        );
        let signup = crate::auth::signup::SignupService::new(
            db.clone(),
            hasher,
            queue.clone(),
            templates.clone(),
            settings.accounts.clone(),
            public_url.clone(),
        );
        let federation = crate::auth::oidc::Federation::new(
            db.clone(),
            settings.oidc.providers.clone(),
            crate::crypto::Sealer::for_purpose(&master_key, "oidc-tokens"),
            public_url.clone(),
            settings.accounts.signup_enabled,
        )?;
        let key_provider = key_provider(&settings, &master_key)?;
        let hub = crate::chat::hub::Hub::new(&settings.realtime);
        crate::chat::relay::watch_revocations(hub.clone(), &sessions);
        // Nodes sharing a PostgreSQL database hear each other's changes (chat::relay).
        let cluster_url = match settings.database_target() {
            Ok(crate::settings::DatabaseTarget::Postgres(url)) => Some(url),
            _ => None,
        };
        let chat = crate::chat::rooms::ChatService::new(
            db.clone(),
            history_store_with(
                &settings,
                key_provider.clone(),
                db.clone(),
                personal_keys.clone(),
                cluster_url
                    .as_ref()
                    .map(|_| crate::chat::relay::change_hook(hub.node())),
            ),
            ephemeral,
            personal_keys,
            settings.chat.clone(),
            hub.clone(),
        );
        let billing = crate::billing::Billing::new(
            &settings,
            db.clone(),
            queue.clone(),
            templates.clone(),
            &public_url,
            seams.payments.clone(),
        );
        billing.register_jobs(&mut registry);
        billing.schedule().await?;
        let assistant =
            crate::assistant::Assistant::new(&settings, db.clone(), Some(billing.gate()));
        let replies = crate::assistant::replies::Replies::new(
            db.clone(),
            chat.clone(),
            assistant.clone(),
            queue.clone(),
            settings.assistant.clone(),
        );
        chat.set_post_listener(Arc::new(replies.clone()));
        replies.register_jobs(&mut registry);
        let (db_for_captcha, master_key_for_captcha) = (db.clone(), master_key.clone());
        let devices = crate::devices::Registry::new(
            db.clone(),
            settings.devices.clone(),
            settings.billing.clone(),
            &public_url,
            chat.clone(),
        );
        chat.set_slash_commands(Arc::new(crate::devices::commands::DeviceCommands::new(
            devices.clone(),
        )));
        devices.register_jobs(&mut registry, queue.clone());
        devices.schedule(&queue).await?;
        let state = web::Data::new(AppState {
            public_url,
            master_key,
            settings: settings.clone(),
            db,
            templates,
            metrics,
            queue: queue.clone(),
            client_errors: crate::web::client_errors::ClientErrorLimiter::per_minute(
                settings.telemetry.client_errors_per_minute,
            ),
            sessions,
            login,
            signup,
            passwords,
            two_factor,
            hasher: password_hasher,
            federation,
            key_provider,
            captcha: crate::auth::captcha::Captcha::new(
                db_for_captcha,
                settings.captcha.clone(),
                &master_key_for_captcha,
            ),
            chat,
            assistant,
            replies,
            guests: crate::assistant::guests::Guests::new(&settings.assistant),
            devices,
            device_claims: crate::devices::handlers::ClaimLimiter::per_minute(
                settings.devices.claims_per_minute_per_ip,
            ),
            token_guard: crate::auth::api_tokens::TokenGuard::per_minute(
                settings.accounts.invalid_tokens_per_ip_per_minute,
            ),
            billing,
            edge,
        });
        let app_state = state.clone();
        let workers = match settings.server.workers {
            0 => std::thread::available_parallelism().map_or(2, usize::from),
            n => n,
        };
        let mut server = HttpServer::new(move || crate::web::app(app_state.clone()))
            // Streams (SSE answers, WebSocket frames) are many small writes: without
            // TCP_NODELAY, Nagle's algorithm holds each one until the previous is acknowledged,
            // and the client's delayed ACK makes that ~40 ms (measured: docs/benchmarks.md).
            .on_connect(|connection, _| {
                if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
                    let _ = tcp.set_nodelay(true);
                }
            })
            .workers(workers)
            .shutdown_timeout(settings.server.shutdown_timeout_secs)
            .client_request_timeout(Duration::from_millis(
                settings.server.client_request_timeout_ms,
            ))
            .listen(listener)?;
        if let Some(admin) = admin_listener {
            server = server.listen(admin)?;
        }
        // Signals are handled in `run_until_stopped`, so jobs stop being claimed at the same
        // moment HTTP starts draining.
        let server = server.disable_signals().run();
        // Last, once nothing else can fail: a runner started earlier would claim jobs (using
        // up attempts and leaving leases) in a process that is about to exit.
        let relay = cluster_url.map(|url| {
            crate::chat::relay::Relay::start(
                url,
                hub.clone(),
                state.chat.clone(),
                state.sessions.clone(),
                state.devices.live().clone(),
            )
        });
        state.assistant.spawn_health_checks();
        state
            .edge
            .spawn_watcher(Duration::from_secs(settings.edge.reload_secs.max(1)));
        state.replies.spawn_sweeper();
        state.devices.spawn_sweeper();
        let runner = settings
            .jobs
            .enabled
            .then(|| Runner::new(&queue, registry, settings.jobs.clone()).spawn(shutdown_timeout));
        Ok(Self {
            server,
            hub,
            relay,
            port,
            state,
            runner,
            shutdown_timeout,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where the admin area is served when `server.admin_listen` is set (port 0 resolved).
    pub fn admin_address(&self) -> Option<std::net::SocketAddr> {
        self.state.edge.admin_listen
    }

    pub fn public_url(&self) -> &str {
        &self.state.public_url
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully (see [`Self::run_until`]).
    /// SIGHUP reloads the assistant's providers and models from the configuration.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        reload_on_hangup(self.state.assistant.clone());
        self.run_until(stop_signal()).await
    }

    /// Serves until `stop` completes. Then, at the same time and within
    /// `server.shutdown_timeout_secs`: the listener closes and in-flight requests finish, and
    /// the job runner stops claiming and lets running jobs finish.
    pub async fn run_until(self, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let mut server = std::pin::pin!(self.server);
        let stopped_by_itself = tokio::select! {
            result = &mut server => Some(result),
            () = stop => None,
        };
        self.state.assistant.stop();
        self.state.replies.stop();
        if stopped_by_itself.is_none() {
            // New upgrades are refused from here on; open sockets hear 1012 (reconnect, to
            // another node) and end, so they do not hold the drain until its timeout.
            let told = self.hub.shut_down();
            let devices = self.state.devices.live().shut_down();
            tracing::info!(
                websockets = told,
                devices,
                "stop requested: draining requests, connections and jobs"
            );
        }
        let drain_jobs = async {
            if let Some(runner) = self.runner {
                runner.shutdown(self.shutdown_timeout).await;
            }
        };
        let drain_http = async {
            match stopped_by_itself {
                Some(result) => result,
                None => {
                    // `stop` sends the command at once; the server acts on it only while it is
                    // polled, so await the server itself (the two resolve together).
                    let stopped = handle.stop(true);
                    let result = server.await;
                    stopped.await;
                    result
                }
            }
        };
        let leave_cluster = async {
            if let Some(relay) = self.relay {
                relay.stop().await;
            }
        };
        let (http, (), ()) = tokio::join!(drain_http, drain_jobs, leave_cluster);
        http.context("HTTP server failed")?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// On SIGHUP (`systemctl reload conclave`), re-reads the configuration and swaps in the
/// assistant's providers and models; a configuration with errors is logged and changes nothing.
fn reload_on_hangup(assistant: crate::assistant::Assistant) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP; reload from the admin API instead");
            return;
        };
        while hangups.recv().await.is_some() {
            let assistant = assistant.clone();
            match tokio::task::spawn_blocking(move || assistant.reload()).await {
                Ok(Ok(models)) => {
                    tracing::info!(models, "SIGHUP: assistant configuration reloaded")
                }
                Ok(Err(error)) => {
                    tracing::error!(error = %error, "SIGHUP: configuration has errors; nothing changed");
                }
                Err(error) => tracing::error!(error = %error, "SIGHUP: reload task failed"),
            }
        }
    });
    #[cfg(not(unix))]
    drop(assistant);
}

/// Completes on SIGTERM (systemd, Kubernetes, docker stop) or SIGINT (Ctrl-C).
async fn stop_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

/// The configured key provider (`keys.provider`), which wraps every room's data key.
pub fn key_provider(
    settings: &Settings,
    master_key: &crate::crypto::MasterKey,
) -> anyhow::Result<Arc<dyn crate::history::keys::KeyProvider>> {
    use crate::history::keys::LocalKeyProvider;
    let local = LocalKeyProvider::from_settings(&settings.keys, master_key)?;
    Ok(match settings.keys.provider {
        crate::settings::KeyProviderKind::Local => Arc::new(local),
        crate::settings::KeyProviderKind::Vault => Arc::new(
            crate::history::vault::VaultKeyProvider::from_settings(&settings.keys.vault, local)?,
        ),
    })
}

/// The stored history (`standard` and `private` rooms), with the configured key provider.
pub fn history_store(
    settings: &Settings,
    master_key: &crate::crypto::MasterKey,
    db: crate::db::Db,
    personal: crate::auth::personal_keys::PersonalKeys,
) -> anyhow::Result<Arc<dyn crate::history::HistoryStore>> {
    let provider = key_provider(settings, master_key)?;
    Ok(history_store_with(settings, provider, db, personal, None))
}

/// The stored history over a provider the caller already holds.
pub fn history_store_with(
    settings: &Settings,
    provider: Arc<dyn crate::history::keys::KeyProvider>,
    db: crate::db::Db,
    personal: crate::auth::personal_keys::PersonalKeys,
    on_change: Option<crate::history::ChangeHook>,
) -> Arc<dyn crate::history::HistoryStore> {
    let keyring = crate::history::keys::Keyring::new(
        provider,
        Duration::from_secs(settings.chat.key_cache_minutes.saturating_mul(60)),
    );
    let store = crate::history::SqlHistoryStore::new(db, keyring, personal);
    Arc::new(match on_change {
        Some(hook) => store.with_change_hook(hook),
        None => store,
    })
}
