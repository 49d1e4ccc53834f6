//! Sign-in through providers, against a real OpenID Connect provider (the npm `oidc-provider`
//! package) and a fake GitHub, both run by `tests/browser/oidc-provider.mjs`.

use diesel::prelude::*;
use serde_json::Value;

use crate::helpers::{
    Device, IdentityProvider, TestApp, spawn_app_with, through_provider, to_provider_and_back,
};

const PASSWORD: &str = "correct horse battery staple";

async fn app_with(
    idp: &IdentityProvider,
    customize: impl FnOnce(&mut conclave::settings::Settings),
) -> TestApp {
    let (oidc, github) = (idp.oidc(), idp.github());
    spawn_app_with(move |settings| {
        settings.oidc.providers.insert("sso".to_owned(), oidc);
        settings.oidc.providers.insert("github".to_owned(), github);
        customize(settings);
    })
    .await
}

async fn me(device: &Device, app: &TestApp) -> Value {
    let response = device
        .client
        .get(app.url("/api/v1/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "signed in");
    response.json().await.unwrap()
}

fn location(response: &reqwest::Response) -> String {
    response.headers()["location"].to_str().unwrap().to_owned()
}

async fn audit_events(app: &TestApp, event: &'static str) -> Vec<String> {
    use conclave::schema::audit_events::dsl;
    app.state
        .db
        .run(move |conn| {
            dsl::audit_events
                .filter(dsl::event.eq(event))
                .select(dsl::details)
                .load::<String>(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_new_person_signs_up_through_an_openid_provider_and_comes_back_as_the_same_user() {
    let idp = IdentityProvider::start().await;
    let app = app_with(&idp, |_| {}).await;

    let login_page = app
        .get("/login?next=/settings/security")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        login_page.contains(r#"href="/login/oidc/sso?next=%2Fsettings%2Fsecurity""#),
        "the sign-in page offers the provider and keeps where the person was going: {login_page}"
    );
    assert!(login_page.contains("Continue with Test SSO"));
    assert!(
        login_page.contains("Continue with GitHub"),
        "the preset's label"
    );

    let browser = Device::new(None);
    let callback = through_provider(
        &browser.client,
        &app,
        "/login/oidc/sso?next=/settings/security",
        "grace@example.com",
    )
    .await;
    assert_eq!(callback.status(), 303);
    assert_eq!(location(&callback), "/settings/security");
    let first = me(&browser, &app).await;
    assert_eq!(first["email"], "grace@example.com");
    assert_eq!(first["name"], "Grace", "the name comes from the ID token");

    // Verified by the provider, first user: owner of the default workspace.
    let tenants = browser.get_json(&app, "/api/v1/tenants").await;
    assert_eq!(tenants["tenants"][0]["role"], "owner", "{tenants}");

    // Another browser, same provider account: the same user, not a second one.
    let other = Device::new(None);
    let again = through_provider(&other.client, &app, "/login/oidc/sso", "grace@example.com").await;
    assert_eq!(again.status(), 303);
    assert_eq!(location(&again), "/");
    assert_eq!(me(&other, &app).await["id"], first["id"]);

    let identities = other.get_json(&app, "/api/v1/me/identities").await;
    let list = identities["identities"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{identities}");
    assert_eq!(list[0]["provider"], "sso");
    assert_eq!(list[0]["provider_label"], "Test SSO");
    assert_eq!(list[0]["email"], "grace@example.com");

    // The provider's tokens are sealed at rest.
    let sealed: Vec<Option<String>> = app
        .state
        .db
        .run(|conn| {
            conclave::schema::user_identities::table
                .select(conclave::schema::user_identities::tokens_sealed)
                .load(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap();
    assert!(
        sealed
            .iter()
            .all(|t| t.as_deref().is_some_and(|t| t.starts_with("v1:"))),
        "{sealed:?}"
    );

    let logins = audit_events(&app, "login.succeeded").await;
    assert_eq!(logins.len(), 2, "{logins:?}");
    assert!(
        logins.iter().all(|d| d.contains("provider:sso")),
        "{logins:?}"
    );
    assert_eq!(audit_events(&app, "identity.linked").await.len(), 1);
}

#[tokio::test]
async fn github_sign_in_uses_the_primary_verified_address() {
    let idp = IdentityProvider::start().await;
    let app = app_with(&idp, |_| {}).await;
    let browser = Device::new(None);
    let callback = through_provider(
        &browser.client,
        &app,
        "/login/oidc/github",
        "linus@example.com",
    )
    .await;
    assert_eq!(callback.status(), 303, "{}", callback.text().await.unwrap());
    let me = me(&browser, &app).await;
    assert_eq!(me["email"], "linus@example.com");
    assert_eq!(me["name"], "Linus");
}

#[tokio::test]
async fn an_unverified_provider_address_creates_nothing() {
    let idp = IdentityProvider::start().await;
    let app = app_with(&idp, |_| {}).await;
    for provider in ["sso", "github"] {
        let browser = Device::new(None);
        let callback = through_provider(
            &browser.client,
            &app,
            &format!("/login/oidc/{provider}"),
            "unverified:mallory@example.com",
        )
        .await;
        assert_eq!(callback.status(), 403, "{provider}");
        assert!(
            callback
                .text()
                .await
                .unwrap()
                .contains("did not confirm an email address")
        );
        assert_eq!(browser.me_status(&app).await, 401);
    }
    let users: i64 = app
        .state
        .db
        .run(|conn| {
            conclave::schema::users::table
                .count()
                .get_result(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap();
    assert_eq!(users, 0);
}

#[tokio::test]
async fn an_existing_account_is_linked_only_after_its_owner_signs_in() {
    let idp = IdentityProvider::start().await;
    let app = app_with(&idp, |_| {}).await;
    let ada = app.create_user("ada@example.com", PASSWORD, true).await;

    // Someone who controls a provider account with Ada's address does not get her account.
    let stranger = Device::new(None);
    let callback =
        through_provider(&stranger.client, &app, "/login/oidc/sso", "ada@example.com").await;
    assert_eq!(callback.status(), 409);
    let page = callback.text().await.unwrap();
    assert!(
        page.contains("Sign in with your password, then connect Test SSO"),
        "{page}"
    );
    assert_eq!(stranger.me_status(&app).await, 401);
    assert!(audit_events(&app, "identity.linked").await.is_empty());

    // Ada signs in with her password and connects the provider herself.
    let browser = Device::signed_in(&app, "ada@example.com", PASSWORD).await;
    let connected = through_provider(
        &browser.client,
        &app,
        "/login/oidc/sso?connect=1",
        "ada@example.com",
    )
    .await;
    assert_eq!(connected.status(), 303);
    assert_eq!(location(&connected), "/settings/security?notice=connected");
    let page = browser
        .client
        .get(app.url("/settings/security?notice=connected"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Test SSO"), "the security page lists it");

    // From now on the provider signs her in.
    let later = Device::new(None);
    let callback =
        through_provider(&later.client, &app, "/login/oidc/sso", "ada@example.com").await;
    assert_eq!(callback.status(), 303);
    assert_eq!(me(&later, &app).await["id"], ada);

    // A provider account connected to Ada cannot be connected to someone else.
    app.create_user("bob@example.com", PASSWORD, true).await;
    let bob = Device::signed_in(&app, "bob@example.com", PASSWORD).await;
    let taken = through_provider(
        &bob.client,
        &app,
        "/login/oidc/sso?connect=1",
        "ada@example.com",
    )
    .await;
    assert_eq!(taken.status(), 409);
    assert!(
        taken
            .text()
            .await
            .unwrap()
            .contains("already connected to another")
    );
}

#[tokio::test]
async fn the_last_way_to_sign_in_cannot_be_disconnected() {
    let idp = IdentityProvider::start().await;
    let app = app_with(&idp, |_| {}).await;
    let browser = Device::new(None);
    through_provider(
        &browser.client,
        &app,
        "/login/oidc/sso",
        "grace@example.com",
    )
    .await;
    // `/login/oidc/github?connect=1`: a second provider on the same account.
    let connected = through_provider(
        &browser.client,
        &app,
        "/login/oidc/github?connect=1",
        "grace@example.com",
    )
    .await;
    assert_eq!(connected.status(), 303);
    browser
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .unwrap();

    let list: Value = browser.get_json(&app, "/api/v1/me/identities").await;
    let ids: Vec<i64> = list["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    let delete = |id: i64| {
        let csrf = browser.csrf(&app);
        browser
            .client
            .delete(app.url(&format!("/api/v1/me/identities/{id}")))
            .header("X-CSRF-Token", csrf)
            .send()
    };
    assert_eq!(delete(ids[0]).await.unwrap().status(), 204);
    let last = delete(ids[1]).await.unwrap();
    assert_eq!(last.status(), 409, "no password and no other provider");
    let problem: Value = last.json().await.unwrap();
    assert_eq!(problem["error"], "last_sign_in_method");
    assert_eq!(delete(ids[0]).await.unwrap().status(), 404, "already gone");
    assert_eq!(audit_events(&app, "identity.unlinked").await.len(), 1);
}

#[tokio::test]
async fn a_callback_is_bound_to_the_browser_that_started_it_and_works_once() {
    let idp = IdentityProvider::start().await;
    let app = app_with(&idp, |_| {}).await;
    let victim = Device::new(None);
    // The attacker runs the flow but stops before Conclave's callback...
    let attacker = Device::new(None);
    let callback_url =
        to_provider_and_back(&attacker.client, &app, "/login/oidc/sso", "eve@example.com").await;
    // ...and sends the link to the victim, whose browser lacks the state cookie.
    let forced = victim
        .client
        .get(callback_url.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(forced.status(), 400);
    assert!(
        forced
            .text()
            .await
            .unwrap()
            .contains("expired or was already used")
    );
    assert_eq!(victim.me_status(&app).await, 401);

    // The attacker's own browser finishes, once.
    let own = attacker
        .client
        .get(callback_url.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 303);
    // Replaying it, even with the right state cookie, finds the flow spent.
    let state = callback_url
        .query_pairs()
        .find(|(key, _)| key == "state")
        .map(|(_, value)| value.into_owned())
        .unwrap();
    let again = Device::new(None)
        .client
        .get(callback_url)
        .header("Cookie", format!("conclave_oidc={state}"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 400);
    assert_eq!(victim.me_status(&app).await, 401);
}

#[tokio::test]
async fn provider_errors_unknown_providers_and_closed_sign_up_get_clear_answers() {
    let idp = IdentityProvider::start().await;
    let app = app_with(&idp, |settings| {
        settings.accounts.signup_enabled = false;
        let mut down = settings.oidc.providers["sso"].clone();
        down.issuer_url = Some("http://127.0.0.1:9".to_owned());
        settings.oidc.providers.insert("down".to_owned(), down);
    })
    .await;
    let browser = Device::new(None);

    let unknown = browser
        .client
        .get(app.url("/login/oidc/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    let down = browser
        .client
        .get(app.url("/login/oidc/down"))
        .send()
        .await
        .unwrap();
    assert_eq!(down.status(), 502);
    assert!(down.text().await.unwrap().contains("could not be reached"));

    let refused = browser
        .client
        .get(app.url("/login/oidc/sso/callback?error=access_denied&error_description=You+said+no"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.text().await.unwrap().contains("You said no"));

    let closed =
        through_provider(&browser.client, &app, "/login/oidc/sso", "new@example.com").await;
    assert_eq!(closed.status(), 403);
    assert!(closed.text().await.unwrap().contains("Sign-up is closed"));
}

#[tokio::test]
async fn the_second_factor_still_applies_to_provider_sign_ins() {
    let idp = IdentityProvider::start().await;
    let app = app_with(&idp, |_| {}).await;
    crate::two_factor::turn_on(&app).await;
    // `turn_on` signed `app.client` in as ada with 2FA; connect the provider from there.
    let connected = through_provider(
        &app.client,
        &app,
        "/login/oidc/sso?connect=1",
        "ada@example.com",
    )
    .await;
    assert_eq!(connected.status(), 303);

    let browser = Device::new(None);
    let callback =
        through_provider(&browser.client, &app, "/login/oidc/sso", "ada@example.com").await;
    assert_eq!(callback.status(), 303);
    assert_eq!(location(&callback), "/login/2fa");
    assert_eq!(browser.me_status(&app).await, 401, "not before the code");
}
