//! The test harness: every test gets its own running Conclave on port 0 with its own database —
//! a fresh SQLite file, or (TEST_BACKEND=postgres) a fresh PostgreSQL database on the server
//! named by TEST_DATABASE_URL, dropped when the test ends.

use std::path::PathBuf;
use std::time::Duration;

use conclave::settings::Settings;
use conclave::startup::{Application, Seams};
use conclave::web::AppState;
use diesel::connection::SimpleConnection as _;
use diesel::{Connection as _, PgConnection};
use secrecy::SecretString;

pub const BACKEND_ENV: &str = "TEST_BACKEND";
pub const ADMIN_URL_ENV: &str = "TEST_DATABASE_URL";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestBackend {
    Sqlite,
    Postgres,
}

pub fn backend() -> TestBackend {
    match std::env::var(BACKEND_ENV).as_deref() {
        Ok("postgres") => TestBackend::Postgres,
        Ok("sqlite") | Err(_) => TestBackend::Sqlite,
        Ok(other) => panic!("{BACKEND_ENV}={other}: use sqlite or postgres"),
    }
}

/// A PostgreSQL database that exists for one test.
pub struct PgDatabase {
    admin_url: String,
    pub name: String,
    pub url: String,
}

impl PgDatabase {
    pub fn create() -> Self {
        let admin_url = std::env::var(ADMIN_URL_ENV).unwrap_or_else(|_| {
            panic!("TEST_BACKEND=postgres needs {ADMIN_URL_ENV} (make test starts a cluster)")
        });
        let name = format!("conclave_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::establish(&admin_url).expect("connect to TEST_DATABASE_URL");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create test database");
        let mut url = url::Url::parse(&admin_url).expect("TEST_DATABASE_URL is a URL");
        url.set_path(&name);
        Self {
            admin_url,
            name,
            url: url.to_string(),
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Ok(mut admin) = PgConnection::establish(&self.admin_url) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// A fresh database for the current backend: its URL plus whatever keeps it alive.
pub struct TestDatabase {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<PgDatabase>,
}

impl TestDatabase {
    pub fn new() -> Self {
        match backend() {
            TestBackend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                Self {
                    url,
                    _dir: Some(dir),
                    _pg: None,
                }
            }
            TestBackend::Postgres => {
                let pg = PgDatabase::create();
                Self {
                    url: pg.url.clone(),
                    _dir: None,
                    _pg: Some(pg),
                }
            }
        }
    }
}

/// Settings for a test node: port 0, a temp data dir, quick job polling, one HTTP worker.
pub fn test_settings(data_dir: PathBuf, database_url: &str) -> Settings {
    conclave::crypto::install_tls_provider();
    let mut settings = Settings {
        data_dir,
        ..Settings::default()
    };
    settings.server.listen = "127.0.0.1:0".parse().expect("address");
    settings.server.workers = 1;
    settings.server.shutdown_timeout_secs = 2;
    settings.database.url = Some(SecretString::from(database_url.to_owned()));
    settings.database.pool_max_size = 4;
    settings.jobs.poll_interval_ms = 50;
    settings.jobs.backoff_base_ms = 20;
    settings.jobs.backoff_max_secs = 1;
    // The proof-of-work check is tested on its own (captcha.rs); other tests sign up freely.
    settings.captcha.enabled = false;
    settings
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub cookies: std::sync::Arc<reqwest::cookie::Jar>,
    pub state: actix_web::web::Data<AppState>,
    pub data_dir: tempfile::TempDir,
    _db: TestDatabase,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(customize: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_with_seams(customize, Seams::default()).await
}

/// Like `spawn_app_with`, with fakes plugged into the application's seams.
pub async fn spawn_app_with_seams(customize: impl FnOnce(&mut Settings), seams: Seams) -> TestApp {
    start_app(customize, seams, std::future::pending()).await.0
}

/// A node that runs until the returned sender fires (or is dropped); the handle answers how
/// its shutdown went.
pub async fn spawn_stoppable_app() -> (
    TestApp,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (app, running) = start_app(|_| {}, Seams::default(), async {
        let _ = stopped.await;
    })
    .await;
    (app, stop, running)
}

async fn start_app(
    customize: impl FnOnce(&mut Settings),
    seams: Seams,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> (TestApp, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let db = TestDatabase::new();
    let mut settings = test_settings(data_dir.path().to_path_buf(), &db.url);
    customize(&mut settings);
    settings.validate().expect("test settings are valid");
    launch(settings, seams, stop, db, data_dir).await
}

/// Runs a node with `settings` until `stop`, with a client that keeps cookies.
async fn launch(
    settings: Settings,
    seams: Seams,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    db: TestDatabase,
    data_dir: tempfile::TempDir,
) -> (TestApp, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let app = Application::build_with(settings, seams)
        .await
        .expect("application builds");
    let port = app.port();
    let state = app.state();
    // No signal handling inside the test process: the app runs until `stop` (or the runtime
    // ends).
    let running = tokio::spawn(app.run_until(stop));
    let cookies = std::sync::Arc::new(reqwest::cookie::Jar::default());
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_provider(cookies.clone())
        .timeout(Duration::from_secs(10))
        .pool_idle_timeout(IDLE_CONNECTION_REUSE)
        .build()
        .expect("http client");
    let app = TestApp {
        address: format!("http://127.0.0.1:{port}"),
        client,
        cookies,
        state,
        data_dir,
        _db: db,
    };
    (app, running)
}

impl TestApp {
    /// Another node on this node's database, with the same settings and data directory (so
    /// the same secret key), running until the sender fires.
    pub async fn another_node(
        &self,
    ) -> (
        TestApp,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let url = secrecy::ExposeSecret::expose_secret(
            self.state
                .settings
                .database
                .url
                .as_ref()
                .expect("test nodes have a database URL"),
        )
        .to_owned();
        self.node_on(TestDatabase {
            url,
            _dir: None,
            _pg: None,
        })
        .await
    }

    /// A node with this node's settings and data directory (so the same keys) on another
    /// database, running until the sender fires.
    pub async fn node_on(
        &self,
        db: TestDatabase,
    ) -> (
        TestApp,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let mut settings = (*self.state.settings).clone();
        settings.server.listen = "127.0.0.1:0".parse().expect("address");
        settings.database.url = Some(SecretString::from(db.url.clone()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (node, running) = launch(
            settings,
            Seams::default(),
            async {
                let _ = stopped.await;
            },
            db,
            tempfile::tempdir().expect("temp dir"),
        )
        .await;
        (node, stop, running)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// The `conclave` binary over this node's database and data directory (so the same
    /// secret key), with no other Conclave setting from the test's environment.
    pub fn command(&self) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_conclave"));
        for (name, _) in std::env::vars() {
            if name.starts_with("CONCLAVE") || name == "RUST_LOG" {
                command.env_remove(name);
            }
        }
        let url = secrecy::ExposeSecret::expose_secret(
            self.state
                .settings
                .database
                .url
                .as_ref()
                .expect("test nodes have a database URL"),
        )
        .to_owned();
        command
            .current_dir(self.data_dir.path())
            .env("CONCLAVE__DATABASE__URL", url)
            .env("CONCLAVE__DATA_DIR", self.data_dir.path())
            .env("RUST_LOG", "error");
        command
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    /// Sends the request line exactly as given (no client-side normalisation of the path).
    pub async fn raw_get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(self.address.trim_start_matches("http://"))
            .await
            .expect("connect");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        let status = response
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, response)
    }

    /// The value of a cookie the client holds for this app.
    pub fn cookie(&self, name: &str) -> Option<String> {
        cookie_value(&self.cookies, &self.address, name)
    }

    /// The CSRF token the server issued to this client (fetching a page first if needed).
    pub async fn csrf_token(&self) -> String {
        if self.cookie("conclave_csrf").is_none() {
            self.get("/healthz").await;
        }
        self.cookie("conclave_csrf")
            .expect("the server sets a CSRF cookie")
    }

    /// Disables an account directly through the accounts module.
    pub async fn disable_user(&self, email: &str) {
        let email = conclave::auth::Email::parse(email).expect("email");
        self.state
            .db
            .run(move |conn| {
                conclave::auth::users::set_disabled(conn, &email, true, None)
                    .map_err(conclave::db::DbError::from)
            })
            .await
            .expect("disable user");
    }

    /// Creates a user directly through the accounts module.
    pub async fn create_user(&self, email: &str, password: &str, verified: bool) -> i64 {
        use conclave::auth::users::{self, CreatedVia, NewUser};
        let hash = conclave::auth::PasswordHasher::new(1, 4)
            .hash(secrecy::SecretString::from(password.to_owned()))
            .await
            .expect("hash");
        let new = NewUser {
            email: conclave::auth::Email::parse(email).expect("email"),
            display_name: email.split('@').next().unwrap_or("user").to_owned(),
            password_hash: Some(hash),
            verified,
            role: None,
            via: CreatedVia::Cli,
        };
        self.state
            .db
            .run(move |conn| Ok::<_, conclave::db::DbError>(users::create(conn, new)))
            .await
            .expect("db")
            .expect("create user")
            .0
            .id
    }

    /// Signs in through the JSON API; the client keeps the session cookie.
    /// (While already signed in, the request carries the CSRF token, as a page's script would.)
    pub async fn login(&self, email: &str, password: &str) -> reqwest::Response {
        let mut request = self
            .client
            .post(self.url("/api/v1/auth/login"))
            .json(&serde_json::json!({ "email": email, "password": password }));
        if let Some(token) = self.cookie("conclave_csrf") {
            request = request.header("X-CSRF-Token", token);
        }
        request.send().await.expect("request sent")
    }

    /// A JSON POST carrying the CSRF token, as a signed-in page's script sends it.
    pub async fn post_signed(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        let token = self.csrf_token().await;
        self.client
            .post(self.url(path))
            .header("X-CSRF-Token", token)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get_with_accept(&self, path: &str, accept: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .header("Accept", accept)
            .send()
            .await
            .expect("request sent")
    }
}

/// Another browser or script: its own cookie jar, redirects not followed.
pub struct Device {
    pub client: reqwest::Client,
    jar: std::sync::Arc<reqwest::cookie::Jar>,
}

impl Device {
    pub fn new(user_agent: Option<&str>) -> Self {
        conclave::crypto::install_tls_provider();
        let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
        let mut builder = reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .pool_idle_timeout(IDLE_CONNECTION_REUSE)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(user_agent) = user_agent {
            builder = builder.user_agent(user_agent.to_owned());
        }
        Self {
            client: builder.build().expect("http client"),
            jar,
        }
    }

    /// A fresh device signed in as `email`.
    pub async fn signed_in(app: &TestApp, email: &str, password: &str) -> Self {
        let device = Self::new(None);
        let response = device
            .client
            .post(app.url("/api/v1/auth/login"))
            .json(&serde_json::json!({ "email": email, "password": password }))
            .send()
            .await
            .expect("request sent");
        assert_eq!(response.status(), 200, "{email} signs in");
        device
    }

    /// The `Cookie` header this browser sends to the app (for clients other than reqwest).
    pub fn cookie_header(&self, app: &TestApp) -> String {
        use reqwest::cookie::CookieStore as _;
        self.jar
            .cookies(&app.address.parse().expect("app URL"))
            .and_then(|v| v.to_str().ok().map(str::to_owned))
            .unwrap_or_default()
    }

    pub fn csrf(&self, app: &TestApp) -> String {
        cookie_value(&self.jar, &app.address, "conclave_csrf").expect("a CSRF cookie")
    }

    /// A JSON POST carrying this device's CSRF token, as a page's script would send it.
    pub async fn post(
        &self,
        app: &TestApp,
        path: &str,
        body: serde_json::Value,
    ) -> reqwest::Response {
        let csrf = self.csrf(app);
        self.client
            .post(app.url(path))
            .header("X-CSRF-Token", csrf)
            .json(&body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get_json(&self, app: &TestApp, path: &str) -> serde_json::Value {
        let response = self
            .client
            .get(app.url(path))
            .send()
            .await
            .expect("request sent");
        response.json().await.expect("a JSON body")
    }

    /// A page as this browser gets it (it must answer 200).
    pub async fn page(&self, app: &TestApp, path: &str) -> String {
        let response = self
            .client
            .get(app.url(path))
            .header("Accept", "text/html")
            .send()
            .await
            .expect("request sent");
        assert_eq!(response.status(), 200, "{path}");
        response.text().await.expect("a body")
    }

    /// The status of `GET /api/v1/me`: 200 while signed in, 401 once not.
    pub async fn me_status(&self, app: &TestApp) -> u16 {
        let response = self
            .client
            .get(app.url("/api/v1/me"))
            .send()
            .await
            .expect("request sent");
        response.status().as_u16()
    }

    /// The same with an API token.
    pub async fn me_status_with_token(&self, app: &TestApp, token: &str) -> u16 {
        let response = self
            .client
            .get(app.url("/api/v1/me"))
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent");
        response.status().as_u16()
    }
}

fn cookie_value(jar: &reqwest::cookie::Jar, address: &str, name: &str) -> Option<String> {
    use reqwest::cookie::CookieStore as _;
    let header = jar.cookies(&address.parse().ok()?)?;
    header
        .to_str()
        .ok()?
        .split("; ")
        .find_map(|pair| pair.strip_prefix(&format!("{name}=")).map(str::to_owned))
}

/// How many migrations the binary embeds (both trees have the same count; the schema test
/// checks they agree).
pub fn migration_count() -> usize {
    std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
        .expect("migrations directory")
        .filter(|entry| entry.as_ref().is_ok_and(|e| e.path().is_dir()))
        .count()
}

/// The mails dropped by the file transport, oldest first, with quoted-printable undone.
pub fn read_mails(dir: &std::path::Path) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort_by_key(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok());
    files
        .into_iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "eml"))
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|raw| decode_quoted_printable(&raw))
        .collect()
}

/// One raw mail with quoted-printable undone.
pub fn read_mails_text(raw: &str) -> String {
    decode_quoted_printable(raw)
}

fn decode_quoted_printable(text: &str) -> String {
    let joined = text.replace("=\r\n", "").replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && i + 2 < bytes.len()
            && let Ok(byte) = u8::from_str_radix(&joined[i + 1..i + 3], 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first link in a mail's text.
pub fn link_in(mail: &str) -> String {
    let start = mail.find("http://").expect("a link");
    mail[start..]
        .split(|c: char| c.is_whitespace() || c == '"' || c == '<')
        .next()
        .expect("split yields at least one part")
        .to_owned()
}

/// Waits for a mail to `to` whose text contains `needle`, and returns it.
pub async fn wait_for_mail(app: &TestApp, to: &str, needle: &str) -> String {
    let dir = app.data_dir.path().join("mail");
    let to_line = format!("To: {to}");
    eventually(Duration::from_secs(10), || {
        let dir = dir.clone();
        let (to_line, needle) = (to_line.clone(), needle.to_owned());
        async move {
            read_mails(&dir)
                .into_iter()
                .find(|m| m.contains(&to_line) && m.contains(&needle))
        }
    })
    .await
    .unwrap_or_else(|| panic!("no mail to {to} containing {needle:?}"))
}

/// Waits until job `id` satisfies `done`; panics with the job's last state otherwise.
pub async fn wait_for_job(
    queue: &conclave::jobs::Queue,
    id: i64,
    done: impl Fn(&conclave::jobs::JobRow) -> bool,
) -> conclave::jobs::JobRow {
    let found = eventually(Duration::from_secs(15), || async {
        let job = queue.get(id).await.expect("read job")?;
        done(&job).then_some(job)
    })
    .await;
    match found {
        Some(job) => job,
        None => panic!("job {id} never got there: {:?}", queue.get(id).await),
    }
}

/// How long a test client reuses an idle connection: less than the server's keep-alive (actix
/// closes an idle connection after 5 s), or a request sent on a connection the server is just
/// closing fails with `IncompleteMessage` (a test that waited ~5 s for a job saw it).
const IDLE_CONNECTION_REUSE: Duration = Duration::from_secs(3);

/// Polls `check` until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The test identity provider (`tests/browser/oidc-provider.mjs`): an OpenID Connect provider
/// and a fake GitHub, in a Node process that ends when this value is dropped (its stdin
/// closes). Client `conclave` / `conclave-secret`.
pub struct IdentityProvider {
    pub issuer: String,
    pub github: String,
    _child: tokio::process::Child,
}

impl IdentityProvider {
    pub async fn start() -> Self {
        use tokio::io::AsyncBufReadExt as _;
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/browser/oidc-provider.mjs"
        );
        let mut child = tokio::process::Command::new("node")
            .arg(script)
            .args(["--port", "0"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs (make test installs it; then `npm ci` in tests/browser)");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(20),
            tokio::io::BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .expect("the identity provider starts within 20 s")
        .expect("read its address");
        let ready: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| {
            panic!("identity provider said {line:?} (is `npm ci` done in tests/browser?)")
        });
        Self {
            issuer: ready["issuer"].as_str().expect("issuer").to_owned(),
            github: ready["github"].as_str().expect("github").to_owned(),
            _child: child,
        }
    }

    /// Settings for an OpenID Connect provider called `name` pointing here.
    pub fn oidc(&self) -> conclave::settings::OidcProviderSettings {
        conclave::settings::OidcProviderSettings {
            kind: conclave::settings::ProviderKind::Oidc,
            display_name: "Test SSO".to_owned(),
            issuer_url: Some(self.issuer.clone()),
            client_id: "conclave".to_owned(),
            client_secret: Some(SecretString::from("conclave-secret".to_owned())),
            ..Default::default()
        }
    }

    /// Settings for the GitHub preset pointing at the fake GitHub.
    pub fn github(&self) -> conclave::settings::OidcProviderSettings {
        conclave::settings::OidcProviderSettings {
            kind: conclave::settings::ProviderKind::Github,
            client_id: "conclave".to_owned(),
            client_secret: Some(SecretString::from("conclave-secret".to_owned())),
            github_url: self.github.clone(),
            github_api_url: format!("{}/api", self.github),
            ..Default::default()
        }
    }
}

/// Walks a browser (`client`, with its cookies) from `start` (a Conclave URL) through the
/// provider's login form as `login`, until the provider sends it back to Conclave's callback;
/// returns Conclave's answer to the callback.
pub async fn through_provider(
    client: &reqwest::Client,
    app: &TestApp,
    start: &str,
    login: &str,
) -> reqwest::Response {
    let callback = to_provider_and_back(client, app, start, login).await;
    client.get(callback).send().await.expect("callback sent")
}

/// The same walk, stopping before Conclave's callback: returns the callback URL the provider
/// redirected to (with its `code` and `state`).
pub async fn to_provider_and_back(
    client: &reqwest::Client,
    app: &TestApp,
    start: &str,
    login: &str,
) -> url::Url {
    let mut url = url::Url::parse(&app.url(start)).expect("start URL");
    for _ in 0..20 {
        if url.as_str().starts_with(&app.address) && url.path().ends_with("/callback") {
            return url;
        }
        let response = client.get(url.clone()).send().await.expect("request sent");
        if response.status().is_redirection() {
            let location = response.headers()["location"].to_str().expect("location");
            url = url.join(location).expect("redirect URL");
            continue;
        }
        let status = response.status();
        let page = response.text().await.expect("page");
        assert_eq!(status, 200, "unexpected page at {url}: {page}");
        let action = page
            .split("action=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no login form at {url}: {page}"));
        let posted = client
            .post(url.join(action).expect("form action"))
            .form(&[("login", login), ("password", "anything")])
            .send()
            .await
            .expect("login form posted");
        assert!(
            posted.status().is_redirection(),
            "the provider's login answered {}",
            posted.status()
        );
        let location = posted.headers()["location"].to_str().expect("location");
        url = url.join(location).expect("redirect URL");
    }
    panic!("too many redirects from {start}");
}

/// Three people in the default workspace: Ada owns it, Carl is an admin, Eve a viewer. Each is
/// signed in on their own `Device`.
pub struct Team {
    pub app: TestApp,
    pub tenant: i64,
    pub ada: Device,
    pub carl: Device,
    pub eve: Device,
    /// Ada's, Carl's and Eve's user ids.
    pub ids: [i64; 3],
}

pub const TEAM_PASSWORD: &str = "correct horse battery staple";

pub async fn team() -> Team {
    team_with(|_| {}).await
}

pub async fn team_with(customize: impl FnOnce(&mut Settings)) -> Team {
    let app = spawn_app_with(customize).await;
    let ada_id = app
        .create_user("ada@example.com", TEAM_PASSWORD, true)
        .await;
    let carl_id = app
        .create_user("carl@example.com", TEAM_PASSWORD, true)
        .await;
    let eve_id = app
        .create_user("eve@example.com", TEAM_PASSWORD, true)
        .await;
    let ada = Device::signed_in(&app, "ada@example.com", TEAM_PASSWORD).await;
    let carl = Device::signed_in(&app, "carl@example.com", TEAM_PASSWORD).await;
    let eve = Device::signed_in(&app, "eve@example.com", TEAM_PASSWORD).await;
    for person in [&ada, &carl, &eve] {
        person
            .client
            .get(app.url("/healthz"))
            .send()
            .await
            .expect("healthz");
    }
    let tenants = ada.get_json(&app, "/api/v1/tenants").await;
    let tenant = tenants["tenants"][0]["id"].as_i64().expect("a workspace");
    let promoted = ada
        .client
        .patch(app.url(&format!("/api/v1/tenants/{tenant}/members/{carl_id}")))
        .header("X-CSRF-Token", ada.csrf(&app))
        .json(&serde_json::json!({"role": "admin"}))
        .send()
        .await
        .expect("promote Carl");
    assert_eq!(promoted.status(), 200);
    Team {
        app,
        tenant,
        ada,
        carl,
        eve,
        ids: [ada_id, carl_id, eve_id],
    }
}
