//! The real `conclave` binary: exit codes, one-line errors, migrate, serve, SIGTERM.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::TestDatabase;

const BIN: &str = env!("CARGO_BIN_EXE_conclave");

/// A command with a clean Conclave environment rooted in `dir`.
pub(crate) fn conclave(dir: &std::path::Path, database_url: &str) -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("CONCLAVE") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command
        .current_dir(dir)
        .env("CONCLAVE__DATABASE__URL", database_url)
        .stdin(Stdio::null());
    command
}

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn version_prints_the_package_version() {
    let output = Command::new(BIN).arg("--version").output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("conclave {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn config_check_accepts_a_good_file_and_names_bad_keys_with_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::new();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[server]\nlisten = \"127.0.0.1:9999\"\n").unwrap();
    let output = conclave(dir.path(), &db.url)
        .args(["config", "check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("configuration OK"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[jobs]\nconcurrency = 2\nretries = 3\n").unwrap();
    let output = conclave(dir.path(), &db.url)
        .args(["config", "check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = stderr_of(&output);
    assert!(stderr.contains("jobs.retries: unknown field"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line per problem: {stderr}");

    // CONCLAVE_CONFIG works like --config.
    let output = conclave(dir.path(), &db.url)
        .env("CONCLAVE_CONFIG", &bad)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
}

#[test]
fn unknown_database_schemes_are_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = conclave(dir.path(), "mysql://root@localhost/conclave")
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    assert!(stderr_of(&output).contains("database.url: unsupported scheme \"mysql\""));
}

#[test]
fn production_without_a_secret_key_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::new();
    let output = conclave(dir.path(), &db.url)
        .env("CONCLAVE__MODE", "production")
        .env("CONCLAVE__SERVER__PUBLIC_URL", "https://chat.example.com")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    assert!(
        stderr_of(&output)
            .contains("security.secret_key: production mode needs an explicit secret key")
    );
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created before the config is valid"
    );
}

#[test]
fn an_unreachable_database_is_exit_69_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let output = conclave(dir.path(), "postgres://nobody:pw@127.0.0.1:1/nothing")
        .env("CONCLAVE__DATABASE__CONNECT_TIMEOUT_SECS", "1")
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(69));
    let stderr = stderr_of(&output);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot connect to the database"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(":pw@"),
        "passwords are never printed: {stderr}"
    );
}

#[test]
fn migrate_applies_once_then_reports_current() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::new();
    let first = conclave(dir.path(), &db.url)
        .arg("migrate")
        .output()
        .unwrap();
    assert!(first.status.success(), "{}", stderr_of(&first));
    let expected = format!("applied {} migration(s)", crate::helpers::migration_count());
    assert!(
        String::from_utf8_lossy(&first.stdout).contains(&expected),
        "{}",
        String::from_utf8_lossy(&first.stdout)
    );
    let second = conclave(dir.path(), &db.url)
        .arg("migrate")
        .output()
        .unwrap();
    assert!(second.status.success());
    assert_eq!(
        String::from_utf8_lossy(&second.stdout).trim(),
        "database schema is current"
    );
}

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `conclave serve` on a free port and waits for its "running" log line.
pub(crate) fn serve(mut command: Command) -> Server {
    let mut child = command
        .env("CONCLAVE__SERVER__LISTEN", "127.0.0.1:0")
        .env("CONCLAVE__TELEMETRY__LOG_FORMAT", "json")
        .env("CONCLAVE__SERVER__SHUTDOWN_TIMEOUT_SECS", "5")
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let port = loop {
        let line = lines.next().expect("server printed its address").unwrap();
        let event: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("log line is JSON ({e}): {line}"));
        if let Some(port) = event["fields"]["port"].as_u64() {
            assert!(
                event["fields"]["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("Conclave is running at http://")
            );
            break u16::try_from(port).unwrap();
        }
    };
    // Keep draining logs so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, port }
}

pub(crate) fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    (status, response)
}

#[test]
fn serve_starts_with_zero_config_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::new();
    let mut command = conclave(dir.path(), &db.url);
    if crate::helpers::backend() == crate::helpers::TestBackend::Sqlite {
        // Truly zero config: the default database under ./data.
        command.env_remove("CONCLAVE__DATABASE__URL");
    }
    let mut server = serve(command);
    let (status, body) = http_get(server.port, "/readyz");
    assert_eq!(status, 200, "{body}");
    let (status, _) = http_get(server.port, "/");
    assert_eq!(status, 200);
    assert!(
        dir.path().join("data/secret.key").exists(),
        "a development key is generated"
    );
    if crate::helpers::backend() == crate::helpers::TestBackend::Sqlite {
        assert!(dir.path().join("data/conclave.db").exists());
    }

    let started = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[test]
fn the_generated_key_is_kept_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::new();
    drop(serve(conclave(dir.path(), &db.url)));
    let key_path = dir.path().join("data/secret.key");
    let first = std::fs::read_to_string(&key_path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the key is private to its owner");
    }
    drop(serve(conclave(dir.path(), &db.url)));
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), first);
}

/// `conclave serve` with `env`, after `conclave user create` made ada@example.com with
/// `password`.
pub(crate) fn serve_with_ada(
    dir: &std::path::Path,
    database_url: &str,
    password: &str,
    env: &[(&str, &str)],
) -> Server {
    let created = conclave(dir, database_url)
        .args([
            "user",
            "create",
            "--email",
            "ada@example.com",
            "--password",
            password,
        ])
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", stderr_of(&created));
    let mut command = conclave(dir, database_url);
    command.envs(env.iter().copied());
    serve(command)
}

/// Ada signs in over the JSON API; the status of the answer.
async fn sign_in_ada(client: &reqwest::Client, base: &str, password: &str) -> u16 {
    client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&serde_json::json!({ "email": "ada@example.com", "password": password }))
        .send()
        .await
        .expect("sent")
        .status()
        .as_u16()
}

/// A minimal OTLP/HTTP collector: answers every POST with 200 and hands over its path,
/// content type and body.
fn otlp_collector() -> (String, std::sync::mpsc::Receiver<(String, Vec<u8>)>) {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (sender, received) = std::sync::mpsc::channel::<(String, Vec<u8>)>();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut bytes = Vec::new();
            let mut buffer = vec![0u8; 64 * 1024];
            let (head, body) = loop {
                let n = stream.read(&mut buffer).unwrap_or(0);
                if n == 0 {
                    break (String::new(), Vec::new());
                }
                bytes.extend_from_slice(&buffer[..n]);
                if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&bytes[..end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while bytes.len() < end + 4 + length {
                        let n = stream.read(&mut buffer).unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        bytes.extend_from_slice(&buffer[..n]);
                    }
                    let body = bytes[end + 4..(end + 4 + length).min(bytes.len())].to_vec();
                    break (head, body);
                }
            };
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = sender.send((head, body));
        }
    });
    (endpoint, received)
}

/// Spans as the collector received them: (name, attributes as text).
fn decoded_spans(body: &[u8]) -> Vec<(String, std::collections::BTreeMap<String, String>)> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message as _;
    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
    let mut spans = Vec::new();
    for resource in request.resource_spans {
        for scope in resource.scope_spans {
            for span in scope.spans {
                let mut attributes = std::collections::BTreeMap::new();
                for kv in span.attributes {
                    let value = match kv.value.and_then(|v| v.value) {
                        Some(Any::StringValue(s)) => s,
                        Some(Any::IntValue(i)) => i.to_string(),
                        Some(Any::BoolValue(b)) => b.to_string(),
                        Some(Any::DoubleValue(d)) => d.to_string(),
                        _ => String::new(),
                    };
                    attributes.insert(kv.key, value);
                }
                attributes.insert(
                    "trace_id".to_owned(),
                    span.trace_id.iter().map(|b| format!("{b:02x}")).collect(),
                );
                spans.push((span.name, attributes));
            }
        }
    }
    spans
}

#[tokio::test]
async fn request_and_job_spans_reach_an_otlp_collector_with_their_ids_and_no_secrets() {
    let (endpoint, received) = otlp_collector();
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::new();
    let password = "Umbrella-Quartz-7731-harbour";
    let mut server = serve_with_ada(
        dir.path(),
        &db.url,
        password,
        &[
            ("CONCLAVE__TELEMETRY__OTLP_ENDPOINT", endpoint.as_str()),
            ("CONCLAVE__CAPTCHA__ENABLED", "false"),
        ],
    );
    let base = format!("http://127.0.0.1:{}", server.port);
    conclave::crypto::install_tls_provider();
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let health = client
        .get(format!("{base}/healthz"))
        .header("traceparent", traceparent)
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(sign_in_ada(&client, &base, password).await, 200);
    let me = client
        .get(format!("{base}/api/v1/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let me: serde_json::Value = me.json().await.unwrap();
    // A sign-up queues the verification mail: a job, with a span of its own.
    let signup = reqwest::Client::new()
        .post(format!("{base}/api/v1/auth/signup"))
        .json(&serde_json::json!({ "email": "grace@example.com", "password": "correct horse battery staple", "name": "Grace" }))
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status(), 202);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // Spans are flushed at the latest on shutdown.
    Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    let _ = server.child.wait();
    let mut spans = Vec::new();
    while let Ok((head, body)) = received.recv_timeout(Duration::from_secs(5)) {
        assert!(head.starts_with("post /v1/traces"), "{head}");
        assert!(
            head.contains("content-type: application/x-protobuf"),
            "{head}"
        );
        spans.extend(decoded_spans(&body));
    }
    let requests: Vec<&std::collections::BTreeMap<String, String>> = spans
        .iter()
        .filter(|(_, a)| a.contains_key("http.route"))
        .map(|(_, a)| a)
        .collect();
    let health = requests
        .iter()
        .find(|a| a["http.route"] == "/healthz")
        .unwrap_or_else(|| panic!("the /healthz span: {spans:?}"));
    assert!(health.contains_key("request_id"));
    assert_eq!(
        health["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "an incoming traceparent is continued"
    );
    let mine = requests
        .iter()
        .find(|a| a["http.route"] == "/api/v1/me")
        .expect("the /api/v1/me span");
    assert_eq!(
        mine.get("user_id").map(String::as_str),
        Some(me["id"].to_string().as_str())
    );
    let job = spans
        .iter()
        .find(|(name, a)| name == "job" && a.get("job.kind").is_some_and(|k| k.starts_with("mail")))
        .unwrap_or_else(|| panic!("a job span: {spans:?}"));
    assert!(job.1.contains_key("job.id"));
    let everything = format!("{spans:?}");
    assert!(!everything.contains(password), "no password in any span");
}

#[test]
fn sigterm_lets_an_in_flight_request_finish_before_exiting() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::new();
    let mut server = serve(conclave(dir.path(), &db.url));
    let body = br#"{"message":"TypeError: rooms is undefined","page":"/"}"#;
    let (first, rest) = body.split_at(10);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(
        stream,
        "POST /api/v1/client-errors HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(first).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    // The request is in flight (its body is half sent) when the stop signal arrives.
    Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server waits for the request"
    );
    // New connections are refused meanwhile.
    assert!(std::net::TcpStream::connect(("127.0.0.1", server.port)).is_err());

    stream.write_all(rest).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 204"), "{response}");
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// The value of a Prometheus series on `/metrics` (0 when absent).
fn metric(port: u16, series: &str) -> f64 {
    let (_, page) = http_get(port, "/metrics");
    page.lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn sighup_reloads_the_assistant_and_a_broken_config_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::new();
    let config = dir.path().join("conclave.toml");
    let models = |name: &str| {
        format!(
            "[assistant.providers.local]\nkind = \"ollama\"\nbase_url = \"http://127.0.0.1:9\"\n\n\
             [assistant.models.{name}]\nroutes = [{{ provider = \"local\", model = \"llama3.2\" }}]\n"
        )
    };
    std::fs::write(&config, models("first")).unwrap();
    let mut command = conclave(dir.path(), &db.url);
    command.arg("--config").arg(&config);
    let server = serve(command);
    let pid = server.child.id().to_string();
    let reloads = "assistant_reloads_total ";
    assert_eq!(metric(server.port, reloads), 0.0);

    std::fs::write(&config, models("second")).unwrap();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(server.port, reloads) < 1.0 {
        assert!(Instant::now() < deadline, "no reload within 10 s of SIGHUP");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A configuration with an error is refused; the server keeps its models and runs on.
    std::fs::write(&config, "[assistant.models.bad]\nroutes = []\n").unwrap();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(metric(server.port, reloads), 1.0);
    let (status, _) = http_get(server.port, "/readyz");
    assert_eq!(status, 200, "still serving");
}

#[tokio::test]
async fn logs_go_to_daily_files_and_never_hold_passwords_tokens_or_message_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::new();
    let logs = dir.path().join("logs");
    let password = "Umbrella-Quartz-7731-harbour";
    let logs_dir = logs.display().to_string();
    let mut server = serve_with_ada(
        dir.path(),
        &db.url,
        password,
        &[
            ("CONCLAVE__TELEMETRY__LOG_DIR", logs_dir.as_str()),
            ("CONCLAVE__TELEMETRY__LOG_FILTER", "debug"),
        ],
    );
    let base = format!("http://127.0.0.1:{}", server.port);
    conclave::crypto::install_tls_provider();
    assert_eq!(
        sign_in_ada(&reqwest::Client::new(), &base, "Wrong-Lantern-4410-moss").await,
        401
    );
    let AdaClient {
        client,
        csrf,
        session,
    } = ada_client(&base, password).await;
    let post = |path: &str, body: serde_json::Value| {
        client
            .post(format!("{base}{path}"))
            .header("X-CSRF-Token", &csrf)
            .json(&body)
            .send()
    };
    let room: serde_json::Value = post("/api/v1/rooms", serde_json::json!({ "name": "plans" }))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let phrase = "the falcon lands at midnight behind the old mill";
    let said = post(
        &format!("/api/v1/rooms/{}/messages", room["id"]),
        serde_json::json!({ "body": phrase }),
    )
    .await
    .unwrap();
    assert_eq!(said.status(), 201);
    let token: serde_json::Value = post(
        "/api/v1/me/tokens",
        serde_json::json!({ "name": "script", "scopes": ["read"] }),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let token = token["token"].as_str().expect("a token").to_owned();
    let listed = client
        .get(format!("{base}/api/v1/rooms"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    // A browser error report is logged (that is its point).
    let reported = post(
        "/api/v1/client-errors",
        serde_json::json!({ "message": "TypeError: widgets-7f3c is undefined", "page": "/rooms" }),
    )
    .await
    .unwrap();
    assert_eq!(reported.status(), 204);

    Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    let _ = server.child.wait();

    let files: Vec<std::path::PathBuf> = std::fs::read_dir(&logs)
        .expect("the log directory")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert_eq!(name, format!("conclave.{today}.log"));
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        text.lines().count() > 10 && text.contains("\"level\":\"DEBUG\""),
        "logging at debug: {text}"
    );
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("a JSON line ({e}): {line}"));
    }
    for (what, secret) in [
        ("the password", password),
        ("the wrong password", "Wrong-Lantern-4410-moss"),
        ("the message body", phrase),
        ("a word of the message", "falcon"),
        ("the API token", token.as_str()),
        ("the session cookie", session.as_str()),
        ("the CSRF token", csrf.as_str()),
    ] {
        let leak = text.lines().find(|l| l.contains(secret));
        assert!(
            leak.is_none(),
            "{what} is in the log: {}",
            leak.unwrap_or_default()
        );
    }
    let reported = text
        .lines()
        .find(|l| l.contains("widgets-7f3c"))
        .expect("the browser error is logged");
    assert!(reported.contains("conclave::client"), "{reported}");
}

/// Ada signed in on a fresh client.
pub(crate) struct AdaClient {
    /// Sends the session cookie.
    pub(crate) client: reqwest::Client,
    /// The CSRF token unsafe requests carry.
    pub(crate) csrf: String,
    /// The session cookie's value.
    pub(crate) session: String,
}

pub(crate) async fn ada_client(base: &str, password: &str) -> AdaClient {
    use reqwest::cookie::CookieStore as _;
    conclave::crypto::install_tls_provider();
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    let client = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .build()
        .unwrap();
    assert_eq!(sign_in_ada(&client, base, password).await, 200);
    let cookies = jar
        .cookies(&base.parse().unwrap())
        .and_then(|v| v.to_str().ok().map(str::to_owned))
        .unwrap_or_default();
    let csrf = cookies
        .split("; ")
        .find_map(|c| c.strip_prefix("conclave_csrf="))
        .expect("a CSRF cookie")
        .to_owned();
    let session = cookies
        .split("; ")
        .find(|c| !c.starts_with("conclave_csrf="))
        .and_then(|c| c.split_once('=').map(|(_, v)| v.to_owned()))
        .expect("a session cookie");
    AdaClient {
        client,
        csrf,
        session,
    }
}
