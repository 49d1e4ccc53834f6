//! HashiCorp Vault transit as the key provider, against a fake transit engine at the HTTP seam
//! (Vault itself is not installed here). The fake keeps the parts of Vault's contract Conclave
//! relies on: versioned keys created on first use, `vault:v<N>:` ciphertexts that are
//! authenticated, `rewrap`, `min_decryption_version`, the token header and Vault's error shape.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix_web::{HttpRequest, HttpResponse, web};
use aes_gcm::aead::Aead as _;
use aes_gcm::{Aes256Gcm, KeyInit as _};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use diesel::prelude::*;
use serde_json::{Value, json};

use crate::helpers::{Team, team_with};
use crate::rooms::{create_room, get, post, say};

#[derive(Default)]
struct TransitKey {
    versions: Vec<[u8; 32]>,
    min_decryption_version: usize,
}

#[derive(Default)]
struct VaultState {
    token: String,
    /// The `X-Vault-Namespace` every call must carry, if any.
    namespace: Option<String>,
    keys: HashMap<String, TransitKey>,
    sealed: bool,
    /// Calls per endpoint kind ("encrypt", "decrypt", "rewrap", "keys").
    calls: HashMap<&'static str, usize>,
}

#[derive(Clone)]
struct FakeVault {
    address: String,
    state: Arc<Mutex<VaultState>>,
}

impl FakeVault {
    async fn start(token: &str) -> Self {
        let state = Arc::new(Mutex::new(VaultState {
            token: token.to_owned(),
            ..VaultState::default()
        }));
        let shared = web::Data::from(state.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let server = actix_web::HttpServer::new(move || {
            actix_web::App::new()
                .app_data(shared.clone())
                .route("/v1/transit/{op}/{key}", web::post().to(transit))
                .route("/v1/transit/keys/{key}", web::get().to(read_key))
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        tokio::spawn(server);
        Self { address, state }
    }

    fn rotate(&self, key: &str) {
        let mut state = self.state.lock().unwrap();
        let key = state.keys.get_mut(key).unwrap();
        key.versions.push(rand::random());
    }

    fn calls(&self, kind: &'static str) -> usize {
        self.state
            .lock()
            .unwrap()
            .calls
            .get(kind)
            .copied()
            .unwrap_or(0)
    }

    fn set(&self, change: impl FnOnce(&mut VaultState)) {
        change(&mut self.state.lock().unwrap());
    }
}

fn vault_error(status: u16, message: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .json(json!({ "errors": [message] }))
}

/// Vault's checks before any operation: unsealed, and the token matches.
fn refuse(request: &HttpRequest, state: &VaultState) -> Option<HttpResponse> {
    if state.sealed {
        return Some(vault_error(503, "Vault is sealed"));
    }
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|t| t.to_str().ok())
            .map(str::to_owned)
    };
    let allowed = header("X-Vault-Token").as_deref() == Some(state.token.as_str())
        && header("X-Vault-Namespace") == state.namespace;
    (!allowed).then(|| vault_error(403, "permission denied"))
}

fn seal(key: &[u8; 32], version: usize, plain: &[u8]) -> String {
    let nonce: [u8; 12] = rand::random();
    let mut sealed = nonce.to_vec();
    sealed.extend(
        Aes256Gcm::new(key.into())
            .encrypt(&nonce.into(), plain)
            .unwrap(),
    );
    format!("vault:v{version}:{}", STANDARD.encode(sealed))
}

/// Opens a transit ciphertext, or says how Vault would refuse (status, message).
fn open(key: &TransitKey, ciphertext: &str) -> Result<Vec<u8>, (u16, &'static str)> {
    const INVALID: (u16, &str) = (400, "invalid ciphertext: could not decode");
    let rest = ciphertext.strip_prefix("vault:v").ok_or(INVALID)?;
    let (version, body) = rest.split_once(':').ok_or(INVALID)?;
    let version: usize = version.parse().map_err(|_| INVALID)?;
    if version < key.min_decryption_version.max(1) {
        return Err((
            400,
            "ciphertext or signature version is disallowed by policy (too old): requested \
             version for decryption is less than min decryption version",
        ));
    }
    let material = key.versions.get(version - 1).ok_or(INVALID)?;
    let bytes = STANDARD.decode(body).map_err(|_| INVALID)?;
    if bytes.len() < 12 {
        return Err(INVALID);
    }
    let (nonce, sealed) = bytes.split_at(12);
    let nonce: [u8; 12] = nonce.try_into().unwrap();
    Aes256Gcm::new(material.into())
        .decrypt(&nonce.into(), sealed)
        .map_err(|_| (400, "cipher: message authentication failed"))
}

async fn transit(
    request: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Json<Value>,
    state: web::Data<Mutex<VaultState>>,
) -> HttpResponse {
    let (op, name) = path.into_inner();
    let mut state = state.lock().unwrap();
    if let Some(refused) = refuse(&request, &state) {
        return refused;
    }
    let kind = match op.as_str() {
        "encrypt" => "encrypt",
        "decrypt" => "decrypt",
        "rewrap" => "rewrap",
        _ => return vault_error(404, "unsupported path"),
    };
    *state.calls.entry(kind).or_default() += 1;
    if kind == "encrypt" {
        // Vault creates a key on its first encrypt (the "upsert" capability).
        let key = state.keys.entry(name).or_insert_with(|| TransitKey {
            versions: vec![rand::random()],
            min_decryption_version: 1,
        });
        let Some(plain) = body["plaintext"]
            .as_str()
            .and_then(|p| STANDARD.decode(p).ok())
        else {
            return vault_error(400, "failed to base64-decode plaintext");
        };
        let version = key.versions.len();
        let ciphertext = seal(&key.versions[version - 1], version, &plain);
        return HttpResponse::Ok()
            .json(json!({ "data": { "ciphertext": ciphertext, "key_version": version } }));
    }
    let Some(key) = state.keys.get(&name) else {
        return vault_error(400, "encryption key not found");
    };
    let plain = match open(key, body["ciphertext"].as_str().unwrap_or_default()) {
        Ok(plain) => plain,
        Err((status, message)) => return vault_error(status, message),
    };
    if kind == "decrypt" {
        return HttpResponse::Ok().json(json!({ "data": { "plaintext": STANDARD.encode(plain) } }));
    }
    let version = key.versions.len();
    let ciphertext = seal(&key.versions[version - 1], version, &plain);
    HttpResponse::Ok().json(json!({ "data": { "ciphertext": ciphertext, "key_version": version } }))
}

async fn read_key(
    request: HttpRequest,
    name: web::Path<String>,
    state: web::Data<Mutex<VaultState>>,
) -> HttpResponse {
    let mut state = state.lock().unwrap();
    if let Some(refused) = refuse(&request, &state) {
        return refused;
    }
    *state.calls.entry("keys").or_default() += 1;
    match state.keys.get(name.as_str()) {
        None => vault_error(404, ""),
        Some(key) => HttpResponse::Ok().json(json!({ "data": {
            "name": name.as_str(),
            "type": "aes256-gcm96",
            "latest_version": key.versions.len(),
            "min_decryption_version": key.min_decryption_version,
        }})),
    }
}

fn use_vault(settings: &mut conclave::settings::Settings, vault: &FakeVault, token: &str) {
    settings.keys.provider = conclave::settings::KeyProviderKind::Vault;
    settings.keys.vault.address = Some(vault.address.clone());
    settings.keys.vault.token = Some(secrecy::SecretString::from(token.to_owned()));
    settings.keys.vault.timeout_ms = 2_000;
}

async fn room_keys(app: &crate::helpers::TestApp) -> Vec<(String, String)> {
    app.state
        .db
        .run(|conn| {
            use conclave::schema::conversation_keys::dsl::*;
            conversation_keys
                .order(room_id)
                .select((kek_id, wrapped))
                .load::<(String, String)>(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap()
}

async fn readiness(app: &crate::helpers::TestApp) -> Value {
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 200, "the node stays ready");
    response.json().await.unwrap()
}

#[tokio::test]
async fn vault_wraps_room_keys_and_an_unreachable_vault_is_a_clear_503_not_a_loss() {
    let vault = FakeVault::start("s.conclave-token").await;
    vault.set(|v| v.namespace = Some("team-a".to_owned()));
    let settings_vault = vault.clone();
    let Team { app, ada, .. } = team_with(move |s| {
        use_vault(s, &settings_vault, "s.conclave-token");
        s.keys.vault.namespace = Some("team-a".to_owned());
    })
    .await;
    assert_eq!(readiness(&app).await["keys"], "ok");

    let room = create_room(&ada, &app, "general", "public").await;
    say(&ada, &app, room, "wrapped by vault").await;
    let keys = room_keys(&app).await;
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].0, "vault:transit/conclave:v1");
    assert!(keys[0].1.starts_with("vault:v1:"), "{}", keys[0].1);
    assert_eq!(vault.calls("encrypt"), 1);
    assert_eq!(vault.calls("decrypt"), 0, "the new key stays in memory");

    // Vault goes away: rooms whose keys are in memory keep working...
    vault.set(|v| v.sealed = true);
    let messages = format!("/api/v1/rooms/{room}/messages");
    let (status, page) = get(&ada, &app, &messages).await;
    assert_eq!(status, 200);
    assert_eq!(page["messages"][0]["body"], "wrapped by vault");
    let (status, _) = post(&ada, &app, &messages, json!({ "body": "still here" })).await;
    assert_eq!(status, 201, "a room whose key is in memory takes posts");
    // ...a room that needs a new key gets a clear 503 that does not leak Vault's address...
    let later = create_room(&ada, &app, "later", "public").await;
    let later_messages = format!("/api/v1/rooms/{later}/messages");
    let post_later = json!({ "body": "posted while sealed", "idempotency_key": "k-1" });
    let (status, error) = post(&ada, &app, &later_messages, post_later.clone()).await;
    assert_eq!(status, 503, "{error}");
    let error = error.to_string();
    assert!(error.contains("key provider"), "{error}");
    assert!(!error.contains(&vault.address), "{error}");
    assert_eq!(readiness(&app).await["status"], "degraded");
    assert_eq!(room_keys(&app).await.len(), 1, "no key was half-made");
    // ...and the retried post lands once Vault is back (nothing lost, nothing doubled).
    vault.set(|v| v.sealed = false);
    let (status, _) = post(&ada, &app, &later_messages, post_later.clone()).await;
    assert_eq!(status, 201);
    let (status, _) = post(&ada, &app, &later_messages, post_later).await;
    assert!(status == 200 || status == 201, "{status}");
    let (_, page) = get(&ada, &app, &later_messages).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 1, "{page}");
    vault.set(|v| v.sealed = true);

    // A node without the key in memory cannot read the room until Vault is back.
    let fresh = || {
        conclave::startup::history_store(
            &app.state.settings,
            &app.state.master_key,
            app.state.db.clone(),
            app.state.chat.personal_keys().clone(),
        )
        .unwrap()
    };
    // What a node without the key in memory gets when it opens a room's latest page.
    let failing_page = |room: i64| async move {
        fresh()
            .page(room, conclave::history::Cursor::Latest, 10)
            .await
            .err()
            .unwrap()
    };
    let error = failing_page(room).await;
    assert!(
        matches!(
            error,
            conclave::history::HistoryError::Keys(conclave::history::keys::KeyError::Unavailable(
                _
            ))
        ),
        "{error:?}"
    );
    vault.set(|v| v.sealed = false);
    let page = fresh()
        .page(room, conclave::history::Cursor::Latest, 10)
        .await
        .unwrap();
    assert_eq!(page[0].body.as_deref(), Some("wrapped by vault"));
    assert_eq!(vault.calls("decrypt"), 1);
    assert_eq!(readiness(&app).await["keys"], "ok");

    // A wrapped key copied onto another room's row does not open there.
    let second = later;
    let first_blob = room_keys(&app).await[0].1.clone();
    app.state
        .db
        .run(move |conn| {
            use conclave::schema::conversation_keys::dsl::*;
            diesel::update(conversation_keys.find(second))
                .set(wrapped.eq(first_blob))
                .execute(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap();
    let error = failing_page(second).await;
    assert!(
        matches!(
            error,
            conclave::history::HistoryError::Keys(conclave::history::keys::KeyError::Damaged)
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn keys_rotate_moves_local_keys_into_vault_then_rewraps_inside_vault() {
    let vault = FakeVault::start("s.rotate-token").await;
    let Team { app, ada, .. } = team_with(|_| {}).await;
    let room = create_room(&ada, &app, "general", "public").await;
    say(&ada, &app, room, "kept through every move").await;
    assert!(room_keys(&app).await[0].0.starts_with("local:"));
    let bodies = || async {
        app.state
            .db
            .run(|conn| {
                use conclave::schema::messages::dsl::*;
                messages
                    .select(body_sealed)
                    .load::<Option<Vec<u8>>>(conn)
                    .map_err(conclave::db::DbError::from)
            })
            .await
            .unwrap()
    };
    let sealed_before = bodies().await;

    let token_file = app.data_dir.path().join("vault-token");
    std::fs::write(&token_file, "s.rotate-token\n").unwrap();
    let rotate = || {
        app.command()
            .env("CONCLAVE__KEYS__PROVIDER", "vault")
            .env("CONCLAVE__KEYS__VAULT__ADDRESS", &vault.address)
            .env("CONCLAVE__KEYS__VAULT__TOKEN_FILE", &token_file)
            .args(["keys", "rotate"])
            .output()
            .unwrap()
    };
    let rotated = || {
        let output = rotate();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };

    // Local → Vault: the local KEK (derived from the node's secret key) still opens.
    assert!(rotated().contains("re-wrapped 1 room key(s); 0 already"));
    assert_eq!(room_keys(&app).await[0].0, "vault:transit/conclave:v1");
    assert!(rotated().contains("re-wrapped 0 room key(s); 1 already"));

    // Vault rotates its key: Conclave re-wraps inside Vault, never asking for the plain key.
    vault.rotate("conclave");
    let decrypts = vault.calls("decrypt");
    // The token was renewed meanwhile (Vault Agent rewrites its sink file).
    vault.set(|v| v.token = "s.renewed-token".to_owned());
    std::fs::write(&token_file, "s.renewed-token\n").unwrap();
    assert!(rotated().contains("re-wrapped 1 room key(s); 0 already"));
    assert_eq!(vault.calls("rewrap"), 1);
    assert_eq!(vault.calls("decrypt"), decrypts);
    assert_eq!(room_keys(&app).await[0].0, "vault:transit/conclave:v2");
    assert_eq!(
        bodies().await,
        sealed_before,
        "messages are not re-encrypted"
    );

    // Old versions retired in Vault: the history still opens through Vault.
    vault.set(|v| v.keys.get_mut("conclave").unwrap().min_decryption_version = 2);
    let mut settings = (*app.state.settings).clone();
    settings.keys.provider = conclave::settings::KeyProviderKind::Vault;
    settings.keys.vault.address = Some(vault.address.clone());
    settings.keys.vault.token = Some(secrecy::SecretString::from("s.renewed-token"));
    let store = conclave::startup::history_store(
        &settings,
        &app.state.master_key,
        app.state.db.clone(),
        app.state.chat.personal_keys().clone(),
    )
    .unwrap();
    let page = store
        .page(room, conclave::history::Cursor::Latest, 10)
        .await
        .unwrap();
    assert_eq!(page[0].body.as_deref(), Some("kept through every move"));

    // A wrong token is refused with a message that says so, and the data stays as it was.
    vault.set(|v| v.token = "s.someone-else".to_owned());
    vault.rotate("conclave");
    let output = rotate();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Vault refused the token"), "{stderr}");
    assert_eq!(room_keys(&app).await[0].0, "vault:transit/conclave:v2");
}

#[tokio::test]
async fn vault_settings_are_checked_before_start() {
    let error = conclave::settings::Settings::load_from(
        None,
        [("CONCLAVE__KEYS__PROVIDER".to_owned(), "vault".to_owned())],
    )
    .err()
    .unwrap()
    .to_string();
    assert!(error.contains("keys.vault.address: required"), "{error}");
    assert!(error.contains("set token or token_file"), "{error}");
    let error = conclave::settings::Settings::load_from(
        None,
        [
            ("CONCLAVE__KEYS__PROVIDER".to_owned(), "vault".to_owned()),
            (
                "CONCLAVE__KEYS__VAULT__ADDRESS".to_owned(),
                "vault.internal:8200".to_owned(),
            ),
            ("CONCLAVE__KEYS__VAULT__TOKEN".to_owned(), "s.x".to_owned()),
            ("CONCLAVE__KEYS__VAULT__KEY".to_owned(), "a/b".to_owned()),
        ],
    )
    .err()
    .unwrap()
    .to_string();
    assert!(error.contains("keys.vault.address"), "{error}");
    assert!(error.contains("keys.vault.key"), "{error}");
}
