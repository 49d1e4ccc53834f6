//! Two-factor authentication through HTTP, checked against an independent RFC 6238
//! implementation written here (HMAC-SHA1 from the `hmac`/`sha1` crates, not totp-rs).

use hmac_sha1::{Hmac, Mac};
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

const PASSWORD: &str = "correct horse battery staple";

/// RFC 4648 base32 (no padding), as authenticator apps read the manual key.
fn base32_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut bits, mut value, mut out) = (0u32, 0u32, Vec::new());
    for c in text.trim_end_matches('=').chars() {
        value = (value << 5) | ALPHABET.find(c.to_ascii_uppercase()).expect("base32") as u32;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((value >> bits) as u8);
            value &= (1 << bits) - 1;
        }
    }
    out
}

/// RFC 6238: HMAC-SHA1 over the 30-second counter, dynamic truncation, 6 digits.
fn totp_code(secret: &[u8], unix_time: u64) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).unwrap();
    mac.update(&(unix_time / 30).to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0x0f);
    let binary = (u32::from(digest[offset]) & 0x7f) << 24
        | u32::from(digest[offset + 1]) << 16
        | u32::from(digest[offset + 2]) << 8
        | u32::from(digest[offset + 3]);
    format!("{:06}", binary % 1_000_000)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn post(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.post_signed(path, &body).await
}

/// Signs in, enrols and confirms 2FA; returns the secret and the recovery codes.
pub(crate) async fn turn_on(app: &TestApp) -> (Vec<u8>, Vec<String>) {
    app.create_user("ada@example.com", PASSWORD, true).await;
    assert_eq!(app.login("ada@example.com", PASSWORD).await.status(), 200);
    let enrol = post(app, "/api/v1/me/2fa/totp", json!({})).await;
    assert_eq!(enrol.status(), 201);
    let enrolment: Value = enrol.json().await.unwrap();
    let url = enrolment["otpauth_url"].as_str().unwrap();
    assert!(
        url.starts_with("otpauth://totp/Conclave:ada%40example.com?"),
        "{url}"
    );
    assert!(url.contains("issuer=Conclave"), "{url}");
    assert!(enrolment["qr_svg"].as_str().unwrap().starts_with("<svg"));
    let secret = base32_decode(enrolment["secret"].as_str().unwrap());
    assert!(secret.len() >= 20, "at least 160 bits");

    let wrong = post(
        app,
        "/api/v1/me/2fa/totp/confirm",
        json!({"code": "000000"}),
    )
    .await;
    assert_eq!(wrong.status(), 400);
    let confirm = post(
        app,
        "/api/v1/me/2fa/totp/confirm",
        json!({"code": totp_code(&secret, now())}),
    )
    .await;
    assert_eq!(confirm.status(), 200);
    let body: Value = confirm.json().await.unwrap();
    let codes: Vec<String> = body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10);
    (secret, codes)
}

async fn sign_out(app: &TestApp) {
    post(app, "/api/v1/auth/logout", json!({})).await;
}

#[tokio::test]
async fn a_code_from_an_independent_totp_implementation_signs_in_once() {
    let app = spawn_app().await;
    let (secret, _) = turn_on(&app).await;
    sign_out(&app).await;

    let first = app.login("ada@example.com", PASSWORD).await;
    assert_eq!(first.status(), 401);
    let problem: Value = first.json().await.unwrap();
    assert_eq!(problem["error"], "mfa_required");
    assert_eq!(
        app.get("/api/v1/me").await.status(),
        401,
        "no session before the second step"
    );

    // The code of the next 30-second step (the confirm used the current one).
    let code = totp_code(&secret, now() + 30);
    let ok = post(&app, "/api/v1/auth/login/mfa", json!({"code": code})).await;
    assert_eq!(ok.status(), 200, "{}", ok.text().await.unwrap());
    assert_eq!(app.get("/api/v1/me").await.status(), 200);

    // The same code again, in a fresh sign-in: refused (RFC 6238 §5.2).
    sign_out(&app).await;
    assert_eq!(app.login("ada@example.com", PASSWORD).await.status(), 401);
    let replay = post(&app, "/api/v1/auth/login/mfa", json!({"code": code})).await;
    assert_eq!(replay.status(), 401);
    let problem: Value = replay.json().await.unwrap();
    assert_eq!(problem["error"], "invalid_code");
}

#[tokio::test]
async fn a_recovery_code_works_once_when_the_phone_is_lost() {
    let app = spawn_app().await;
    let (_, codes) = turn_on(&app).await;
    sign_out(&app).await;
    app.login("ada@example.com", PASSWORD).await;
    let typed = codes[3].to_uppercase().replace('-', " ");
    let ok = post(&app, "/api/v1/auth/login/mfa", json!({"code": typed})).await;
    assert_eq!(ok.status(), 200, "case and separators do not matter");

    sign_out(&app).await;
    app.login("ada@example.com", PASSWORD).await;
    let again = post(&app, "/api/v1/auth/login/mfa", json!({"code": codes[3]})).await;
    assert_eq!(again.status(), 401);

    let audit = app
        .state
        .db
        .run(|conn| conclave::audit::page(conn, 0, None, 100).map_err(conclave::db::DbError::from))
        .await
        .unwrap();
    let events: Vec<&str> = audit.iter().map(|e| e.event.as_str()).collect();
    assert!(
        events.contains(&"2fa.enabled") && events.contains(&"2fa.recovery_code_used"),
        "{events:?}"
    );
    let via_recovery = audit
        .iter()
        .any(|e| e.event == "login.succeeded" && e.details.contains("recovery_code"));
    assert!(via_recovery);
}

#[tokio::test]
async fn a_remembered_device_skips_the_code_until_the_password_changes() {
    let app = spawn_app().await;
    let (secret, _) = turn_on(&app).await;
    sign_out(&app).await;
    app.login("ada@example.com", PASSWORD).await;
    let ok = post(
        &app,
        "/api/v1/auth/login/mfa",
        json!({"code": totp_code(&secret, now() + 30), "remember_device": true}),
    )
    .await;
    assert_eq!(ok.status(), 200);
    assert!(app.cookie("conclave_device").is_some());

    sign_out(&app).await;
    assert_eq!(
        app.login("ada@example.com", PASSWORD).await.status(),
        200,
        "no code needed on this device"
    );

    let changed = post(
        &app,
        "/api/v1/me/password",
        json!({"current_password": PASSWORD, "new_password": "another fine passphrase"}),
    )
    .await;
    assert_eq!(changed.status(), 200);
    sign_out(&app).await;
    let after = app
        .login("ada@example.com", "another fine passphrase")
        .await;
    assert_eq!(after.status(), 401, "the device was forgotten");
}

#[tokio::test]
async fn wrong_codes_end_the_challenge_after_five_tries() {
    let app = spawn_app().await;
    let (secret, _) = turn_on(&app).await;
    sign_out(&app).await;
    app.login("ada@example.com", PASSWORD).await;
    for _ in 0..5 {
        assert_eq!(
            post(&app, "/api/v1/auth/login/mfa", json!({"code": "123456"}))
                .await
                .status(),
            401
        );
    }
    let late = post(
        &app,
        "/api/v1/auth/login/mfa",
        json!({"code": totp_code(&secret, now() + 30)}),
    )
    .await;
    assert_eq!(late.status(), 401);
    let problem: Value = late.json().await.unwrap();
    assert_eq!(problem["error"], "mfa_expired");
}

#[tokio::test]
async fn the_secret_is_sealed_at_rest_and_2fa_can_be_turned_off_with_the_password() {
    let app = spawn_app().await;
    let (secret, _) = turn_on(&app).await;
    let stored: String = app
        .state
        .db
        .run(|conn| {
            use diesel::prelude::*;
            conclave::schema::totp_secrets::table
                .select(conclave::schema::totp_secrets::secret_sealed)
                .first(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap();
    assert!(stored.starts_with("v1:"), "{stored}");
    let encoded: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!stored.contains(&encoded));

    assert_eq!(
        post(&app, "/api/v1/me/2fa/totp", json!({})).await.status(),
        409,
        "already on"
    );
    let wrong = post(
        &app,
        "/api/v1/me/2fa/totp/disable",
        json!({"password": "not it at all"}),
    )
    .await;
    assert_eq!(wrong.status(), 400);
    let off = post(
        &app,
        "/api/v1/me/2fa/totp/disable",
        json!({"password": PASSWORD}),
    )
    .await;
    assert_eq!(off.status(), 204);
    sign_out(&app).await;
    assert_eq!(
        app.login("ada@example.com", PASSWORD).await.status(),
        200,
        "password alone again"
    );
}

#[tokio::test]
async fn wrong_codes_count_towards_the_account_lockout() {
    let app = crate::helpers::spawn_app_with(|s| s.accounts.lockout_threshold = 3).await;
    let (secret, _) = turn_on(&app).await;
    sign_out(&app).await;
    // Fresh sign-ins do not buy fresh guesses: three wrong codes in total lock the account.
    for _ in 0..3 {
        assert_eq!(app.login("ada@example.com", PASSWORD).await.status(), 401);
        assert_eq!(
            post(&app, "/api/v1/auth/login/mfa", json!({"code": "000000"}))
                .await
                .status(),
            401
        );
    }
    assert_eq!(app.login("ada@example.com", PASSWORD).await.status(), 429);
    let late = post(
        &app,
        "/api/v1/auth/login/mfa",
        json!({"code": totp_code(&secret, now() + 30)}),
    )
    .await;
    assert_eq!(
        late.status(),
        401,
        "the pending challenge is gone with the lock"
    );
}

#[tokio::test]
async fn new_recovery_codes_need_the_password_and_replace_the_old_ones() {
    let app = spawn_app().await;
    let (_, old_codes) = turn_on(&app).await;
    let refused = post(
        &app,
        "/api/v1/me/2fa/recovery-codes",
        json!({"password": "not the password"}),
    )
    .await;
    assert_eq!(refused.status(), 400);
    let fresh = post(
        &app,
        "/api/v1/me/2fa/recovery-codes",
        json!({"password": PASSWORD}),
    )
    .await;
    assert_eq!(fresh.status(), 200);
    let body: Value = fresh.json().await.unwrap();
    assert_eq!(body["codes"].as_array().unwrap().len(), 10);
    sign_out(&app).await;
    app.login("ada@example.com", PASSWORD).await;
    let old = post(
        &app,
        "/api/v1/auth/login/mfa",
        json!({"code": old_codes[0]}),
    )
    .await;
    assert_eq!(old.status(), 401, "old codes stopped working");
}
