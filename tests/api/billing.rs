//! Billing against a local Revolut stub: orders, signed webhooks (rotation, stale, forged,
//! out of order, repeated), activation exactly once, cancellations, provider errors,
//! reconciliation, refunds, the credits ledger under parallel spenders, daily quotas (429),
//! and the development fake provider end to end.

use std::time::Duration;

use conclave::settings::{PlanPeriod, PlanSettings, Settings};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::assistant::team_with_fake;
use crate::helpers::{Device, Team, TestApp, eventually, read_mails, team_with};
use crate::revolut_stub::{RevolutStub, SECRET_KEY, WEBHOOK_SECRET, deliver};
use crate::rooms::post;

fn with_revolut(settings: &mut Settings, url: &str) {
    let revolut = &mut settings.billing.revolut;
    revolut.base_url = Some(url.to_owned());
    revolut.secret_key = Some(SecretString::from(SECRET_KEY));
    revolut.webhook_secret = Some(SecretString::from(WEBHOOK_SECRET));
    settings.billing.reconcile_after_secs = 0;
}

async fn team_with_revolut() -> (Team, RevolutStub) {
    let stub = RevolutStub::start().await;
    let url = stub.url.clone();
    let team = team_with(move |settings| with_revolut(settings, &url)).await;
    (team, stub)
}

async fn usage(person: &Device, app: &TestApp) -> Value {
    person.get_json(app, "/api/v1/usage").await
}

async fn checkout(person: &Device, app: &TestApp, plan: &str) -> (u16, Value) {
    post(
        person,
        app,
        "/api/v1/billing/checkout",
        json!({"plan": plan}),
    )
    .await
}

fn provider_id(order: &Value) -> String {
    order["provider_order_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_upgrade_is_activated_once_and_only_when_revolut_confirms() {
    let (team, stub) = team_with_revolut().await;
    let app = &team.app;
    assert_eq!(usage(&team.ada, app).await["plan"]["name"], "free");

    let (status, order) = checkout(&team.ada, app, "pro").await;
    assert_eq!(status, 201, "{order}");
    assert!(
        order["checkout_url"]
            .as_str()
            .unwrap()
            .starts_with("https://checkout.revolut.com/payment-link/")
    );
    assert_eq!(order["state"], "pending");
    assert_eq!(order["amount"], "€15.00");
    let sent = &stub.stub.created()[0];
    assert_eq!(sent["amount"], 1500, "minor units");
    assert_eq!(sent["currency"], "EUR");
    assert_eq!(sent["customer"]["email"], "ada@example.com");
    assert_eq!(sent["merchant_order_ext_ref"], order["reference"]);
    assert_eq!(sent["metadata"]["conclave_reference"], order["reference"]);
    assert!(
        sent["redirect_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/billing/orders/{}", order["id"]))
    );
    let (auth, version) = stub.stub.last_headers.lock().unwrap().clone();
    assert_eq!(auth, format!("Bearer {SECRET_KEY}"));
    assert_eq!(version, "2024-09-01");
    let id = provider_id(&order);

    // Forged, stale and unsigned webhooks are refused.
    assert_eq!(
        deliver(app, &["wsk_wrong"], "ORDER_COMPLETED", &id, 0).await,
        401
    );
    assert_eq!(
        deliver(app, &[WEBHOOK_SECRET], "ORDER_COMPLETED", &id, 6 * 60_000).await,
        401
    );
    // A webhook is only a hint: Revolut still says pending, so nothing happens.
    assert_eq!(
        deliver(app, &[WEBHOOK_SECRET], "ORDER_COMPLETED", &id, 0).await,
        204
    );
    assert_eq!(usage(&team.ada, app).await["plan"]["name"], "free");

    // Completed at Revolut; the events arrive out of order, repeated, during a secret rotation.
    stub.stub.set_state(&id, "completed");
    for event in [
        "ORDER_AUTHORISED",
        "ORDER_COMPLETED",
        "ORDER_COMPLETED",
        "ORDER_AUTHORISED",
    ] {
        let status = deliver(
            app,
            &["wsk_stub_previous", WEBHOOK_SECRET],
            event,
            &id,
            1_000,
        )
        .await;
        assert_eq!(status, 204, "{event}");
    }
    let now = usage(&team.ada, app).await;
    assert_eq!(now["plan"]["name"], "pro");
    assert!(now["plan_renews_at"].is_string());
    let orders = team.ada.get_json(app, "/api/v1/billing/orders").await;
    assert_eq!(orders["orders"][0]["state"], "completed");
    assert_eq!(orders["orders"][0]["activated"], true);
    // Exactly one activation: one audit event, one receipt.
    let audit: i64 = app
        .state
        .db
        .run(|conn| {
            use conclave::schema::audit_events as a;
            use diesel::prelude::*;
            a::table
                .filter(a::event.eq("billing.order_completed"))
                .count()
                .get_result(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap();
    assert_eq!(audit, 1);
    let mail = eventually(Duration::from_secs(5), || async {
        let mails: Vec<String> = read_mails(&app.data_dir.path().join("mail"))
            .into_iter()
            .filter(|m| m.contains("Thank you for your payment"))
            .collect();
        (!mails.is_empty()).then_some(mails)
    })
    .await
    .expect("a receipt mail");
    assert_eq!(mail.len(), 1);
    assert!(mail[0].contains("15.00"), "{}", mail[0]);
    let receipt = team
        .ada
        .page(app, &format!("/billing/orders/{}/receipt", order["id"]))
        .await;
    assert!(receipt.contains("€15.00") && receipt.contains(order["reference"].as_str().unwrap()));

    // Only owners and admins buy; a viewer may not.
    let (status, _) = checkout(&team.eve, app, "pro").await;
    assert_eq!(status, 403);
    let (status, body) = checkout(&team.ada, app, "free").await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = checkout(&team.ada, app, "platinum").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_cancelled_payment_or_a_provider_error_changes_nothing_and_says_so() {
    let (team, stub) = team_with_revolut().await;
    let app = &team.app;
    let (_, order) = checkout(&team.ada, app, "pro").await;
    stub.stub.set_state(&provider_id(&order), "cancelled");
    // The payer comes back: the page asks Revolut, and says it plainly.
    let page = team
        .ada
        .page(app, &format!("/billing/orders/{}", order["id"]))
        .await;
    assert!(page.contains("The payment was cancelled"), "{page}");
    assert_eq!(usage(&team.ada, app).await["plan"]["name"], "free");
    // A late "pending" never undoes the end.
    stub.stub.set_state(&provider_id(&order), "pending");
    let again = team
        .ada
        .get_json(app, &format!("/api/v1/billing/orders/{}", order["id"]))
        .await;
    assert_eq!(again["state"], "cancelled");

    stub.stub
        .fail_next_create
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (status, problem) = checkout(&team.ada, app, "pro").await;
    assert_eq!(status, 503, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("nothing was charged")
    );
    let orders = team.ada.get_json(app, "/api/v1/billing/orders").await;
    assert_eq!(orders["orders"][0]["state"], "failed");
    assert_eq!(usage(&team.ada, app).await["plan"]["name"], "free");
}

#[tokio::test]
async fn reconciliation_completes_orders_whose_webhook_was_lost_and_refunds_take_credits_back() {
    let (team, stub) = team_with_revolut().await;
    let app = &team.app;
    let (status, order) = checkout(&team.carl, app, "credits").await;
    assert_eq!(status, 201, "admins buy too: {order}");
    stub.stub.set_state(&provider_id(&order), "completed");
    app.state.billing.reconcile().await;
    let credits = team.ada.get_json(app, "/api/v1/billing/credits").await;
    assert_eq!(credits["balance"], 1_000_000);
    assert_eq!(credits["entries"][0]["kind"], "purchase");
    // Reconciling again changes nothing.
    app.state.billing.reconcile().await;
    let credits = team.ada.get_json(app, "/api/v1/billing/credits").await;
    assert_eq!(credits["entries"].as_array().unwrap().len(), 1);

    let refund = format!("/api/v1/billing/orders/{}/refund", order["id"]);
    let (status, _) = post(&team.carl, app, &refund, json!({})).await;
    assert_eq!(
        status, 403,
        "refunds are for staff admins, not workspace admins"
    );
    let (status, _) = post(
        &team.ada,
        app,
        &format!("/api/v1/admin/users/{}/role", team.ids[1]),
        json!({ "role": "admin" }),
    )
    .await;
    assert_eq!(status, 200, "the owner makes Carl a staff admin");
    let (status, _) = post(&team.carl, app, &refund, json!({})).await;
    assert_eq!(status, 200, "carl is a staff admin now");
    let (status, refunded) = post(&team.ada, app, &refund, json!({})).await;
    assert_eq!(status, 409, "only once: {refunded}");
    assert_eq!(stub.stub.refunds.lock().unwrap().len(), 1);
    assert_eq!(stub.stub.refunds.lock().unwrap()[0].1["amount"], 1000);
    let credits = team.ada.get_json(app, "/api/v1/billing/credits").await;
    assert_eq!(credits["balance"], 0);
    assert_eq!(credits["entries"][0]["kind"], "refund");
    let (status, _) = post(&team.eve, app, &refund, json!({})).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn the_credit_balance_never_goes_below_zero_under_parallel_spenders() {
    let (team, _stub) = team_with_revolut().await;
    let app = &team.app;
    let tenant = team.tenant;
    let adjust = "/api/v1/billing/credits/adjustments";
    let (status, body) = post(
        &team.ada,
        app,
        adjust,
        json!({"tenant_id": tenant, "amount": 1000, "reason": "welcome credits"}),
    )
    .await;
    assert_eq!(
        (status, body["balance"].clone()),
        (201, json!(1000)),
        "{body}"
    );
    let spenders: Vec<_> = (0..20)
        .map(|i| {
            let (client, url, csrf) = (
                team.ada.client.clone(),
                app.url(adjust),
                team.ada.csrf(app),
            );
            tokio::spawn(async move {
                client
                    .post(url)
                    .header("x-csrf-token", csrf)
                    .json(&json!({"tenant_id": tenant, "amount": -100, "reason": format!("spender {i}")}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for spender in spenders {
        statuses.push(spender.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        10,
        "{statuses:?}"
    );
    let credits = team.ada.get_json(app, "/api/v1/billing/credits").await;
    assert_eq!(credits["balance"], 0);
    let sum: i64 = credits["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["amount"].as_i64().unwrap())
        .sum();
    assert_eq!(sum, 0, "the balance is the sum of the entries");
    // Bad adjustments are refused clearly.
    for (body, expected) in [
        (
            json!({"tenant_id": tenant, "amount": 5, "reason": " "}),
            400,
        ),
        (
            json!({"tenant_id": tenant, "amount": 0, "reason": "x"}),
            400,
        ),
        (
            json!({"tenant_id": 999_999, "amount": 5, "reason": "x"}),
            404,
        ),
    ] {
        let (status, _) = post(&team.ada, app, adjust, body.clone()).await;
        assert_eq!(status, expected, "{body}");
    }
    let (status, _) = post(
        &team.eve,
        app,
        adjust,
        json!({"tenant_id": tenant, "amount": 5, "reason": "x"}),
    )
    .await;
    assert_eq!(status, 403);
}

fn tight_free_plan(settings: &mut Settings, daily_requests: u64, monthly_tokens: Option<u64>) {
    settings.billing.plans.insert(
        "free".to_owned(),
        PlanSettings {
            label: "Free".to_owned(),
            daily_requests: Some(daily_requests),
            monthly_tokens,
            ..PlanSettings::default()
        },
    );
    settings.billing.plans.insert(
        "pro".to_owned(),
        PlanSettings {
            label: "Pro".to_owned(),
            price_minor: 900,
            period: PlanPeriod::Monthly,
            ..PlanSettings::default()
        },
    );
}

async fn ask(app: &TestApp, token: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(token)
        .json(&json!({"model": "echo", "messages": [{"role": "user", "content": "count me"}]}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn daily_quotas_are_exact_under_concurrency_and_answer_429_with_the_limit_and_reset() {
    let (team, fake, token) = team_with_fake(|settings| tight_free_plan(settings, 5, None)).await;
    let app = &team.app;
    let calls: Vec<_> = (0..12)
        .map(|_| {
            let (app_url, client, token) = (
                app.url("/v1/chat/completions"),
                app.client.clone(),
                token.clone(),
            );
            tokio::spawn(async move {
                client
                    .post(app_url)
                    .bearer_auth(token)
                    .json(&json!({"model": "echo", "messages": [{"role": "user", "content": "count me"}]}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        7,
        "{statuses:?}"
    );
    assert_eq!(
        fake.seen.calls("echo"),
        5,
        "refused calls never reach the provider"
    );

    let refused = ask(app, &token).await;
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry));
    let body: Value = refused.json().await.unwrap();
    let error = &body["error"];
    assert_eq!(error["code"], "quota_exceeded");
    assert_eq!(error["limit"], "daily_requests");
    assert_eq!(
        (error["allowed"].clone(), error["used"].clone()),
        (json!(5), json!(5))
    );
    assert!(
        error["resets_at"]
            .as_str()
            .unwrap()
            .ends_with("T00:00:00+00:00")
    );
    assert!(error["message"].as_str().unwrap().contains("resets at"));

    // Tokens are counted when each call settles, just after its answer went out.
    let now = eventually(Duration::from_secs(5), || async {
        let now = usage(&team.ada, app).await;
        (now["workspace"]["today"]["tokens"].as_i64().unwrap() > 0).then_some(now)
    })
    .await
    .expect("the answers' tokens are counted");
    assert_eq!(now["workspace"]["today"]["requests"], 5);
    assert_eq!(now["limits"]["daily_requests"], 5);

    // The chat says it plainly too.
    let (status, chat) = post(
        &team.carl,
        app,
        "/api/v1/assistant/chats",
        json!({"message": "hello?"}),
    )
    .await;
    assert_eq!(status, 201);
    let chat = chat["chat"]["id"].as_i64().unwrap();
    let failed = eventually(Duration::from_secs(5), || async {
        let state = team
            .carl
            .get_json(app, &format!("/api/v1/assistant/chats/{chat}"))
            .await;
        (state["replies"][0]["state"] == "failed").then_some(state)
    })
    .await
    .expect("the answer failed");
    assert!(
        failed["replies"][0]["error"]
            .as_str()
            .unwrap()
            .contains("requests per day"),
        "{failed}"
    );
}

#[tokio::test]
async fn tokens_beyond_the_month_are_paid_with_credits_and_refused_without() {
    let (team, _fake, token) =
        team_with_fake(|settings| tight_free_plan(settings, 1_000, Some(10))).await;
    let app = &team.app;
    assert_eq!(ask(app, &token).await.status(), 200, "the first call fits");
    // Its tokens (prompt 11 + completion 2) went past the month's 10.
    let refused = eventually(Duration::from_secs(5), || async {
        let response = ask(app, &token).await;
        (response.status() == 429).then_some(response)
    })
    .await
    .expect("refused once the month is spent");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["limit"], "monthly_tokens");
    let (status, _) = post(
        &team.ada,
        app,
        "/api/v1/billing/credits/adjustments",
        json!({"tenant_id": team.tenant, "amount": 100, "reason": "top-up"}),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(
        ask(app, &token).await.status(),
        200,
        "credits let it through"
    );
    let credits = eventually(Duration::from_secs(5), || async {
        let credits = team.ada.get_json(app, "/api/v1/billing/credits").await;
        (credits["balance"].as_i64().unwrap() < 100).then_some(credits)
    })
    .await
    .expect("the call was paid with credits");
    assert_eq!(credits["entries"][0]["kind"], "usage");
    assert_eq!(
        credits["balance"],
        100 - 15,
        "prompt 11 + completion 4 tokens"
    );
}

#[tokio::test]
async fn the_development_fake_provider_takes_a_payment_end_to_end() {
    let team = team_with(|_| {}).await;
    let app = &team.app;
    let plans = team.ada.get_json(app, "/api/v1/billing/plans").await;
    assert_eq!(
        (plans["payments"].clone(), plans["provider"].clone()),
        (json!(true), json!("fake"))
    );
    let (status, order) = checkout(&team.ada, app, "pro").await;
    assert_eq!(status, 201, "{order}");
    let checkout_url = order["checkout_url"].as_str().unwrap().to_owned();
    assert!(checkout_url.starts_with(&format!("{}/billing/fake-checkout/", app.address)));
    let page = team
        .ada
        .page(app, checkout_url.trim_start_matches(&app.address))
        .await;
    assert!(page.contains("Fake payment provider"), "{page}");
    let response = team
        .ada
        .client
        .post(&checkout_url)
        .header("origin", &app.address)
        .form(&[
            ("csrf_token", team.ada.csrf(app)),
            ("decision", "complete".to_owned()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert!(
        response.headers()["location"]
            .to_str()
            .unwrap()
            .ends_with(&format!("/billing/orders/{}", order["id"]))
    );
    // The fake signed a webhook to us; the order was re-read and the plan switched.
    assert_eq!(usage(&team.ada, app).await["plan"]["name"], "pro");
    let page = team.ada.page(app, "/billing").await;
    assert!(
        page.contains("Plan: Pro") && page.contains("Receipt"),
        "{page}"
    );
}

#[tokio::test]
async fn register_webhook_prints_the_signing_secret() {
    let stub = RevolutStub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = crate::helpers::TestDatabase::new();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_conclave"))
        .current_dir(dir.path())
        .env("CONCLAVE__DATABASE__URL", &db.url)
        .env("CONCLAVE__SERVER__PUBLIC_URL", "https://chat.example.com")
        .env("CONCLAVE__BILLING__REVOLUT__BASE_URL", &stub.url)
        .env("CONCLAVE__BILLING__REVOLUT__SECRET_KEY", SECRET_KEY)
        .env("CONCLAVE__BILLING__REVOLUT__WEBHOOK_SECRET", "wsk_old")
        .args(["billing", "register-webhook"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("https://chat.example.com/api/v1/billing/webhooks/revolut"));
    assert!(stdout.contains(WEBHOOK_SECRET));
}

#[tokio::test]
async fn a_plan_s_seats_limit_invitations() {
    let team = team_with(|settings| {
        settings.billing.plans.insert(
            "free".to_owned(),
            PlanSettings {
                label: "Free".to_owned(),
                seats: Some(4),
                ..PlanSettings::default()
            },
        );
    })
    .await;
    let app = &team.app;
    let invitations = format!("/api/v1/tenants/{}/invitations", team.tenant);
    let (status, body) = post(
        &team.ada,
        app,
        &invitations,
        json!({"email": "dora@example.com", "role": "viewer"}),
    )
    .await;
    assert_eq!(
        status, 201,
        "three members and one invitation fit four seats: {body}"
    );
    let (status, body) = post(
        &team.ada,
        app,
        &invitations,
        json!({"email": "emil@example.com", "role": "viewer"}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("4 seats"),
        "{body}"
    );
}

/// Signs up `email` through the API with `plan`, confirms the address from the mail, signs in.
async fn sign_up_with_plan(app: &TestApp, email: &str, plan: &str) -> Device {
    let response = app
        .post_json(
            "/api/v1/auth/signup",
            &json!({"email": email, "password": crate::helpers::TEAM_PASSWORD, "name": "Newcomer", "plan": plan}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let link =
        crate::helpers::link_in(&crate::helpers::wait_for_mail(app, email, "/verify?token=").await);
    let token = link.split("token=").nth(1).unwrap().to_owned();
    let verified = app
        .post_json("/api/v1/auth/verify", &json!({ "token": token }))
        .await;
    assert_eq!(verified.status(), 200);
    Device::signed_in(app, email, crate::helpers::TEAM_PASSWORD).await
}

#[tokio::test]
async fn a_paid_plan_chosen_at_sign_up_is_paid_after_the_first_sign_in_for_one_s_own_workspace() {
    let (team, stub) = team_with_revolut().await;
    let app = &team.app;
    let bad = app
        .post_json(
            "/api/v1/auth/signup",
            &json!({"email": "x@example.com", "password": crate::helpers::TEAM_PASSWORD, "plan": "credits"}),
        )
        .await;
    assert_eq!(
        bad.status(),
        400,
        "a credit pack is not a plan to sign up for"
    );

    let newcomer = sign_up_with_plan(app, "nora@example.com", "pro").await;
    let home = newcomer.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(home.status(), 303);
    assert_eq!(home.headers()["location"], "/billing/welcome");
    let page = newcomer.page(app, "/billing/welcome").await;
    assert!(
        page.contains("You chose Pro") && page.contains("€15.00"),
        "{page}"
    );
    let (status, _) = post_form(&newcomer, app, "/billing/welcome", "pay").await;
    assert_eq!(status, 303);
    // Nora joined the shared workspace as a member: she pays for a workspace of her own.
    let created = stub.stub.created();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["customer"]["email"], "nora@example.com");
    let orders: Vec<(i64, String)> = app
        .state
        .db
        .run(|conn| {
            use conclave::schema::billing_orders as o;
            use diesel::prelude::*;
            o::table
                .select((o::tenant_id, o::provider_order_id.assume_not_null()))
                .load(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap();
    let (workspace, provider_order) = orders[0].clone();
    assert_ne!(workspace, team.tenant, "not the shared workspace");
    stub.stub.set_state(&provider_order, "completed");
    assert_eq!(
        deliver(
            app,
            &[WEBHOOK_SECRET],
            "ORDER_COMPLETED",
            &provider_order,
            0
        )
        .await,
        204
    );
    let hers = newcomer
        .get_json(app, &format!("/api/v1/usage?tenant={workspace}"))
        .await;
    assert_eq!(hers["plan"]["name"], "pro");
    assert_eq!(
        usage(&team.ada, app).await["plan"]["name"],
        "free",
        "the shared one is unchanged"
    );
    // The offer was answered: the home page is the home page again.
    let home = newcomer.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(home.status(), 200);

    // Someone who cancels stays free, and is told so.
    let other = sign_up_with_plan(app, "otto@example.com", "pro").await;
    post_form(&other, app, "/billing/welcome", "pay").await;
    let last = stub.stub.created().len();
    assert_eq!(last, 2);
    let id: (i64, String) = app
        .state
        .db
        .run(|conn| {
            use conclave::schema::billing_orders as o;
            use diesel::prelude::*;
            o::table
                .order(o::id.desc())
                .select((o::id, o::provider_order_id.assume_not_null()))
                .first(conn)
                .map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap();
    stub.stub.set_state(&id.1, "cancelled");
    let page = other.page(app, &format!("/billing/orders/{}", id.0)).await;
    assert!(page.contains("The payment was cancelled"), "{page}");

    // Choosing free at sign-up, or "Continue on Free", asks nothing.
    let free = sign_up_with_plan(app, "fred@example.com", "").await;
    assert_eq!(
        free.client.get(app.url("/")).send().await.unwrap().status(),
        200
    );
}

async fn post_form(person: &Device, app: &TestApp, path: &str, decision: &str) -> (u16, String) {
    let response = person
        .client
        .post(app.url(path))
        .header("origin", &app.address)
        .form(&[
            ("csrf_token", person.csrf(app)),
            ("decision", decision.to_owned()),
        ])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, location)
}
