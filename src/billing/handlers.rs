//! Billing over HTTP: usage (`/api/v1/usage`, `/billing`), plans and checkout, orders and
//! receipts, credits (balance, admin adjustments), refunds, the Revolut webhook, and the
//! development fake provider's checkout page.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{Datelike as _, Utc};
use diesel::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};

use super::gate::{day_key, day_totals, month_tokens};
use super::ledger::{self, EntryKind, NewEntry};
use super::orders::{self, Order};
use super::plans;
use crate::auth::identity::{Caller, Identity};
use crate::db::DbError;
use crate::error::AppError;
use crate::tenancy::Role;
use crate::web::pages::{Page, back_to as back, html};
use crate::web::{AppState, client_ip, get, resource};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/api/v1/usage").get(usage))
        .service(resource("/api/v1/billing/plans").get(list_plans))
        .service(resource("/api/v1/billing/checkout").post(checkout))
        .service(resource("/api/v1/billing/orders").get(list_orders))
        .service(resource("/api/v1/billing/orders/{id}").get(get_order))
        .service(resource("/api/v1/billing/orders/{id}/refund").post(refund))
        .service(resource("/api/v1/billing/credits").get(credits))
        .service(resource("/api/v1/billing/credits/adjustments").post(adjust))
        .service(resource("/api/v1/billing/webhooks/revolut").post(webhook))
        .service(get("/billing", billing_page))
        .service(resource("/billing/checkout").post(checkout_form))
        .service(
            resource("/billing/welcome")
                .get(welcome_page)
                .post(welcome_form),
        )
        .service(get("/billing/orders/{id}", order_page))
        .service(get("/billing/orders/{id}/receipt", receipt_page))
        .service(
            resource("/billing/fake-checkout/{id}")
                .get(fake_checkout_page)
                .post(fake_checkout_form),
        );
}

#[derive(Deserialize)]
struct TenantQuery {
    tenant: Option<i64>,
}

/// The workspace a request is about (`?tenant=`, else the caller's home workspace) and the
/// caller's role in it; 404 for a workspace they are not in.
async fn workspace(
    state: &AppState,
    user: i64,
    tenant: Option<i64>,
) -> Result<(i64, Role), AppError> {
    state
        .db
        .run(move |conn| {
            let tenant = match tenant {
                Some(tenant) => tenant,
                None => crate::assistant::usage::home_tenant(conn, user)?,
            };
            let role = crate::tenancy::role_of(conn, tenant, user)?
                .ok_or_else(|| AppError::NotFound("No such workspace.".to_owned()))?;
            Ok((tenant, role))
        })
        .await
}

fn require_admin(role: Role) -> Result<(), AppError> {
    if role.at_least(Role::Admin) {
        Ok(())
    } else {
        Err(AppError::Forbidden(
            "Only the workspace's owners and admins manage its billing.".to_owned(),
        ))
    }
}

/// Today's and this month's numbers of a workspace and of the person, with the plan's limits.
async fn usage_report(state: &AppState, user: i64, tenant: i64) -> Result<Value, AppError> {
    let settings = state.billing.settings().clone();
    state
        .db
        .run(move |conn| {
            let (name, plan) = plans::plan_of(conn, &settings, tenant)?;
            let today = Utc::now().date_naive();
            let (requests, tokens) = day_totals(conn, tenant, &day_key(today))?;
            let month = month_tokens(conn, tenant, today)?;
            let credits = ledger::balance(conn, tenant)?;
            use crate::schema::assistant_usage as u;
            let mine: Vec<(String, i64, i64)> = u::table
                .filter(u::user_id.eq(user))
                .filter(u::tenant_id.eq(tenant))
                .filter(u::day.ge(day_key(today.with_day(1).unwrap_or(today))))
                .select((u::day, u::prompt_tokens, u::completion_tokens))
                .load(conn)?;
            let today_key = day_key(today);
            let (mut my_requests, mut my_tokens, mut my_month) = (0i64, 0i64, 0i64);
            for (day, prompt, completion) in mine {
                my_month += prompt + completion;
                if day == today_key {
                    my_requests += 1;
                    my_tokens += prompt + completion;
                }
            }
            let renews: Option<chrono::NaiveDateTime> = crate::schema::tenants::table
                .find(tenant)
                .select(crate::schema::tenants::plan_renews_at)
                .first(conn)?;
            Ok::<_, DbError>(json!({
                "tenant_id": tenant,
                "plan": plans::view(&name, &plan),
                "plan_renews_at": renews.map(crate::time::rfc3339),
                "credits": credits,
                "workspace": {
                    "today": { "requests": requests, "tokens": tokens },
                    "month": { "tokens": month },
                },
                "me": {
                    "today": { "requests": my_requests, "tokens": my_tokens },
                    "month": { "tokens": my_month },
                },
                "limits": {
                    "daily_requests": plan.daily_requests,
                    "daily_tokens": plan.daily_tokens,
                    "monthly_tokens": plan.monthly_tokens,
                    "seats": plan.seats,
                    "devices": plan.devices,
                },
                "resets": {
                    "day": format!("{}T00:00:00Z", today + chrono::TimeDelta::days(1)),
                },
            }))
        })
        .await
        .map_err(AppError::from)
}

#[utoipa::path(
    get,
    path = "/api/v1/usage",
    tag = "billing",
    summary = "Today's and this month's usage of a workspace and of you, with its plan's limits",
    params(("tenant" = Option<i64>, Query, description = "The workspace (default: your first)")),
    responses(
        (status = 200, description = "Usage, limits, credits"),
        (status = 404, description = "Not a workspace of yours", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn usage(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<TenantQuery>,
) -> Result<HttpResponse, AppError> {
    let (tenant, _) = workspace(&state, caller.user_id, query.tenant).await?;
    Ok(HttpResponse::Ok().json(usage_report(&state, caller.user_id, tenant).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/billing/plans",
    tag = "billing",
    summary = "The plans and credit packs, and whether this server takes payments",
    responses((status = 200, description = "Plans"))
)]
async fn list_plans(state: web::Data<AppState>, _caller: Caller) -> HttpResponse {
    let views: Vec<_> = plans::effective(state.billing.settings())
        .iter()
        .map(|(name, plan)| plans::view(name, plan))
        .collect();
    HttpResponse::Ok().json(json!({
        "plans": views,
        "default_plan": state.billing.settings().default_plan,
        "payments": state.billing.sells(),
        "provider": state.billing.provider_name(),
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    plan: String,
    tenant_id: Option<i64>,
}

fn order_json(order: &Order) -> Value {
    let mut value = serde_json::to_value(order).unwrap_or_default();
    value["amount"] = json!(plans::money(order.amount_minor, &order.currency));
    value
}

#[utoipa::path(
    post,
    path = "/api/v1/billing/checkout",
    tag = "billing",
    summary = "Buy a plan or credit pack: creates the order; send the payer to checkout_url",
    request_body = CheckoutRequest,
    responses(
        (status = 201, description = "The order and its checkout URL"),
        (status = 400, description = "No such paid plan", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an owner or admin of the workspace", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "This server takes no payments", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The payment provider is down; nothing was charged", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn checkout(
    state: web::Data<AppState>,
    caller: Caller,
    body: crate::web::Json<CheckoutRequest>,
) -> Result<HttpResponse, AppError> {
    let (tenant, role) = workspace(&state, caller.user_id, body.tenant_id).await?;
    require_admin(role)?;
    let order = state
        .billing
        .checkout(caller.user_id, &caller.email, tenant, body.plan.trim())
        .await?;
    let mut answer = order_json(&order);
    answer["checkout_url"] = json!(order.checkout_url);
    Ok(HttpResponse::Created().json(answer))
}

#[utoipa::path(
    get,
    path = "/api/v1/billing/orders",
    tag = "billing",
    summary = "A workspace's orders, newest first (owners and admins)",
    params(("tenant" = Option<i64>, Query)),
    responses((status = 200, description = "Orders"), (status = 403, description = "Not an owner or admin", body = crate::error::Problem, content_type = "application/problem+json"))
)]
async fn list_orders(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<TenantQuery>,
) -> Result<HttpResponse, AppError> {
    let (tenant, role) = workspace(&state, caller.user_id, query.tenant).await?;
    require_admin(role)?;
    let list = state
        .db
        .run(move |conn| orders::of_tenant(conn, tenant).map_err(AppError::from))
        .await?;
    let list: Vec<_> = list.iter().map(order_json).collect();
    Ok(HttpResponse::Ok().json(json!({ "orders": list })))
}

/// An order the caller may see: owners and admins of its workspace.
async fn visible_order(state: &AppState, user: i64, id: i64) -> Result<Order, AppError> {
    let order = state
        .db
        .run(move |conn| orders::find(conn, id).map_err(AppError::from))
        .await?
        .ok_or_else(|| AppError::NotFound("No such order.".to_owned()))?;
    let (_, role) = workspace(state, user, Some(order.tenant_id))
        .await
        .map_err(|_| AppError::NotFound("No such order.".to_owned()))?;
    require_admin(role)?;
    Ok(order)
}

#[utoipa::path(
    get,
    path = "/api/v1/billing/orders/{id}",
    tag = "billing",
    summary = "One order (its state is re-read from the provider while it is open)",
    params(("id" = i64, Path)),
    responses((status = 200, description = "The order"), (status = 404, description = "No such order", body = crate::error::Problem, content_type = "application/problem+json"))
)]
async fn get_order(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let order = fresh_order(&state, caller.user_id, *id).await?;
    Ok(HttpResponse::Ok().json(order_json(&order)))
}

/// The order, synced with the provider first while it is still open (the payer just came
/// back; the webhook may not be here yet).
async fn fresh_order(state: &AppState, user: i64, id: i64) -> Result<Order, AppError> {
    let order = visible_order(state, user, id).await?;
    if super::Billing::settled(&order.state) || order.provider_order_id.is_none() {
        return Ok(order);
    }
    if let Err(error) = state.billing.sync_order(&order).await {
        tracing::warn!(error = %error, order = id, "cannot re-read an open order");
        return Ok(order);
    }
    visible_order(state, user, id).await
}

#[utoipa::path(
    post,
    path = "/api/v1/billing/orders/{id}/refund",
    tag = "billing",
    summary = "Refund a completed order through the provider (deployment admins)",
    params(("id" = i64, Path)),
    responses(
        (status = 200, description = "Refunded; the plan or credits were taken back"),
        (status = 403, description = "Not a deployment admin", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not a completed order", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn refund(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    crate::tenancy::require_deployment_admin(
        &state.db,
        caller.user_id,
        "refund orders or adjust credits",
    )
    .await?;
    let id = *id;
    let order = state
        .db
        .run(move |conn| orders::find(conn, id).map_err(AppError::from))
        .await?
        .ok_or_else(|| AppError::NotFound("No such order.".to_owned()))?;
    state.billing.refund(caller.user_id, &order).await?;
    let order = state
        .db
        .run(move |conn| orders::find(conn, id).map_err(AppError::from))
        .await?
        .ok_or_else(|| AppError::NotFound("No such order.".to_owned()))?;
    Ok(HttpResponse::Ok().json(order_json(&order)))
}

#[utoipa::path(
    get,
    path = "/api/v1/billing/credits",
    tag = "billing",
    summary = "A workspace's credit balance and latest ledger entries (owners and admins)",
    params(("tenant" = Option<i64>, Query)),
    responses((status = 200, description = "Balance and entries"))
)]
async fn credits(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<TenantQuery>,
) -> Result<HttpResponse, AppError> {
    let (tenant, role) = workspace(&state, caller.user_id, query.tenant).await?;
    require_admin(role)?;
    let (balance, entries) = state
        .db
        .run(move |conn| {
            Ok::<_, DbError>((
                ledger::balance(conn, tenant)?,
                ledger::recent(conn, tenant, 100)?,
            ))
        })
        .await?;
    Ok(HttpResponse::Ok()
        .json(json!({ "tenant_id": tenant, "balance": balance, "entries": entries })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Adjustment {
    tenant_id: i64,
    /// Tokens: positive adds, negative takes away (never below zero).
    #[schema(schema_with = crate::api_docs::nonzero_integer)]
    amount: i64,
    #[schema(max_length = 500, pattern = r"\S")]
    reason: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/billing/credits/adjustments",
    tag = "billing",
    summary = "Add or take away credits, with a reason (deployment admins)",
    request_body = Adjustment,
    responses(
        (status = 201, description = "The new balance"),
        (status = 400, description = "No reason, or a zero amount", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Would take the balance below zero", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn adjust(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    body: crate::web::Json<Adjustment>,
) -> Result<HttpResponse, AppError> {
    crate::tenancy::require_deployment_admin(
        &state.db,
        caller.user_id,
        "refund orders or adjust credits",
    )
    .await?;
    let body = body.into_inner();
    let balance = adjust_credits(
        &state,
        caller.user_id,
        client_ip(&request),
        body.tenant_id,
        body.amount,
        &body.reason,
    )
    .await?;
    Ok(HttpResponse::Created().json(json!({ "tenant_id": body.tenant_id, "balance": balance })))
}

/// Adds (or takes away) credits by hand, with a reason; audited with the balance before and
/// after. The caller checks who may. Answers the new balance.
pub(crate) async fn adjust_credits(
    state: &AppState,
    actor: i64,
    ip: Option<String>,
    tenant_id: i64,
    amount: i64,
    reason: &str,
) -> Result<i64, AppError> {
    let reason = reason.trim().to_owned();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(AppError::BadRequest(
            "reason: say why, in at most 500 characters".to_owned(),
        ));
    }
    if amount == 0 {
        return Err(AppError::BadRequest("amount: must not be zero".to_owned()));
    }
    let result = state
        .db
        .run(move |conn| {
            crate::db::write_transaction(conn, |tx| {
                let exists: bool = diesel::select(diesel::dsl::exists(
                    crate::schema::tenants::table.find(tenant_id),
                ))
                .get_result(tx)?;
                if !exists {
                    return Ok(Err(AppError::NotFound(
                        "tenant_id: no such workspace".to_owned(),
                    )));
                }
                let appended = ledger::append(
                    tx,
                    &NewEntry {
                        tenant_id,
                        kind: EntryKind::Adjustment,
                        amount,
                        order_id: None,
                        user_id: Some(actor),
                        reason: &reason,
                    },
                    false,
                );
                match appended {
                    Ok((_, balance)) => {
                        crate::audit::record(
                            tx,
                            &crate::audit::AuditEvent {
                                event: "billing.credits_adjusted",
                                actor_user_id: Some(actor),
                                tenant_id: Some(tenant_id),
                                subject: Some(format!("tenant:{tenant_id}")),
                                ip,
                                details: json!({
                                    "amount": amount,
                                    "reason": reason,
                                    "balance": balance,
                                    "before": { "balance": balance - amount },
                                    "after": { "balance": balance },
                                }),
                                ..crate::audit::AuditEvent::default()
                            },
                            Utc::now().naive_utc(),
                        )?;
                        Ok(Ok(balance))
                    }
                    Err(ledger::LedgerError::Insufficient { balance, wanted }) => {
                        Ok(Err(AppError::Conflict(format!(
                            "The balance is {balance}; {wanted} cannot be taken from it."
                        ))))
                    }
                    Err(ledger::LedgerError::Db(e)) => Err(DbError::from(e)),
                }
            })
        })
        .await?;
    let balance = result?;
    state.billing.gate_forget(tenant_id);
    Ok(balance)
}

#[derive(Deserialize)]
struct WebhookEvent {
    event: String,
    order_id: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/billing/webhooks/revolut",
    tag = "billing",
    summary = "Revolut order events (signed; the order is re-read from Revolut before use)",
    responses(
        (status = 204, description = "Processed (or not ours, acknowledged)"),
        (status = 400, description = "Not a Revolut event", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, stale or wrong signature", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Revolut could not be asked about the order; Revolut retries", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn webhook(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if let Err(why) = state.billing.verify_webhook(
        header("Revolut-Request-Timestamp").as_deref(),
        header("Revolut-Signature").as_deref(),
        &body,
    ) {
        metrics::counter!("billing_webhooks_total", "outcome" => "bad_signature").increment(1);
        tracing::warn!(reason = %why, "webhook refused");
        return Err(AppError::Coded {
            status: StatusCode::UNAUTHORIZED,
            code: "bad_signature",
            message: format!("Webhook refused: {why}."),
            retry_after_secs: None,
        });
    }
    let event: WebhookEvent = serde_json::from_slice(&body)
        .map_err(|e| AppError::BadRequest(format!("not a Revolut event: {e}")))?;
    metrics::counter!("billing_webhooks_total", "outcome" => "accepted").increment(1);
    tracing::info!(event = %event.event, order = ?event.order_id, "Revolut webhook");
    if event.event.starts_with("ORDER_")
        && let Some(order_id) = event.order_id
    {
        // An error here (Revolut not answering) is a 503, so Revolut delivers it again.
        state.billing.webhook(order_id).await?;
    }
    Ok(HttpResponse::NoContent().finish())
}

// ---- pages ----

#[derive(Deserialize)]
struct NoticeQuery {
    notice: Option<String>,
    error: Option<String>,
}

async fn billing_page(
    state: web::Data<AppState>,
    page: Page,
    identity: Identity,
    query: web::Query<NoticeQuery>,
) -> Result<HttpResponse, AppError> {
    let user = identity.user_id();
    let (tenant, role) = workspace(&state, user, None).await?;
    let report = usage_report(&state, user, tenant).await?;
    let admin = role.at_least(Role::Admin);
    let list = if admin {
        state
            .db
            .run(move |conn| orders::of_tenant(conn, tenant).map_err(AppError::from))
            .await?
            .iter()
            .map(order_json)
            .collect()
    } else {
        Vec::new()
    };
    let current = report["plan"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let offers: Vec<_> = plans::effective(state.billing.settings())
        .iter()
        .filter(|(name, plan)| plan.price_minor > 0 && **name != current)
        .map(|(name, plan)| plans::view(name, plan))
        .collect();
    let mut context = page.context(&state);
    context.insert("usage", &report);
    context.insert("can_buy", &(admin && state.billing.sells()));
    context.insert("is_admin", &admin);
    context.insert("offers", &offers);
    context.insert("orders", &list);
    context.insert("fake", &(state.billing.provider_name() == "fake"));
    context.insert("notice", &query.notice);
    context.insert("error", &query.error);
    html(&state, "billing/billing.html", &context, StatusCode::OK)
}

#[derive(Deserialize)]
struct CheckoutForm {
    #[serde(rename = "csrf_token")]
    _csrf: Option<String>,
    plan: String,
}

async fn checkout_form(
    state: web::Data<AppState>,
    identity: Identity,
    form: web::Form<CheckoutForm>,
) -> Result<HttpResponse, AppError> {
    let user = identity.user_id();
    let outcome = async {
        let (tenant, role) = workspace(&state, user, None).await?;
        require_admin(role)?;
        state
            .billing
            .checkout(user, &identity.session.email, tenant, form.plan.trim())
            .await
    }
    .await;
    match outcome {
        Ok(order) => Ok(HttpResponse::SeeOther()
            .insert_header((
                header::LOCATION,
                order
                    .checkout_url
                    .unwrap_or_else(|| format!("/billing/orders/{}", order.id)),
            ))
            .finish()),
        Err(AppError::Unavailable(message)) => back("/billing", Err(AppError::Conflict(message))),
        Err(e) => back("/billing", Err(e)),
    }
}

async fn order_page(
    state: web::Data<AppState>,
    page: Page,
    identity: Identity,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let order = fresh_order(&state, identity.user_id(), *id).await?;
    let plans = plans::effective(state.billing.settings());
    let label = plans
        .get(&order.plan)
        .map_or_else(|| order.plan.clone(), |p| plans::view(&order.plan, p).label);
    let mut context = page.context(&state);
    context.insert("order", &order_json(&order));
    context.insert("label", &label);
    context.insert("settled", &super::Billing::settled(&order.state));
    html(&state, "billing/order.html", &context, StatusCode::OK)
}

async fn receipt_page(
    state: web::Data<AppState>,
    page: Page,
    identity: Identity,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let order = visible_order(&state, identity.user_id(), *id).await?;
    if !order.activated {
        return Err(AppError::NotFound(
            "There is a receipt only for a completed order.".to_owned(),
        ));
    }
    let tenant = order.tenant_id;
    let workspace_name: String = state
        .db
        .run(move |conn| {
            crate::schema::tenants::table
                .find(tenant)
                .select(crate::schema::tenants::name)
                .first(conn)
                .map_err(AppError::from)
        })
        .await?;
    let plans = plans::effective(state.billing.settings());
    let label = plans
        .get(&order.plan)
        .map_or_else(|| order.plan.clone(), |p| plans::view(&order.plan, p).label);
    let mut context = page.context(&state);
    context.insert("order", &order_json(&order));
    context.insert("label", &label);
    context.insert("workspace", &workspace_name);
    context.insert(
        "paid_at",
        &order
            .completed_at
            .unwrap_or(order.created_at)
            .format("%Y-%m-%d %H:%M UTC")
            .to_string(),
    );
    html(&state, "billing/receipt.html", &context, StatusCode::OK)
}

async fn fake_checkout_page(
    state: web::Data<AppState>,
    page: Page,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let fake = state
        .billing
        .fake()
        .ok_or_else(|| AppError::NotFound("There is no fake payment provider here.".to_owned()))?;
    let order = fake
        .order(&id)
        .ok_or_else(|| AppError::NotFound("No such order at the fake provider.".to_owned()))?;
    let mut context = page.context(&state);
    context.insert("id", &order.id);
    context.insert("amount", &plans::money(order.amount_minor, &order.currency));
    context.insert("description", &order.description);
    context.insert("state", order.state.as_str());
    context.insert("redirect_url", &order.redirect_url);
    html(
        &state,
        "billing/fake_checkout.html",
        &context,
        StatusCode::OK,
    )
}

#[derive(Deserialize)]
struct FakeDecision {
    #[serde(rename = "csrf_token")]
    _csrf: Option<String>,
    decision: String,
}

async fn fake_checkout_form(
    state: web::Data<AppState>,
    id: web::Path<String>,
    form: web::Form<FakeDecision>,
) -> Result<HttpResponse, AppError> {
    let fake = state
        .billing
        .fake()
        .ok_or_else(|| AppError::NotFound("There is no fake payment provider here.".to_owned()))?;
    let complete = match form.decision.as_str() {
        "complete" => true,
        "cancel" => false,
        other => {
            return Err(AppError::BadRequest(format!(
                "decision: {other:?} is not complete or cancel"
            )));
        }
    };
    let next = fake
        .settle(&id, complete)
        .await
        .map_err(|e| AppError::NotFound(e.to_string()))?;
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, next))
        .finish())
}

/// The paid plan someone chose at sign-up and has not decided about yet.
async fn chosen_plan(state: &AppState, user: i64) -> Result<Option<String>, AppError> {
    state
        .db
        .run(move |conn| {
            crate::schema::users::table
                .find(user)
                .select(crate::schema::users::signup_plan)
                .first(conn)
                .map_err(AppError::from)
        })
        .await
}

async fn forget_chosen_plan(state: &AppState, user: i64) -> Result<(), AppError> {
    state
        .db
        .run(move |conn| {
            diesel::update(crate::schema::users::table.find(user))
                .set(crate::schema::users::signup_plan.eq(None::<String>))
                .execute(conn)
                .map(drop)
                .map_err(AppError::from)
        })
        .await
}

/// `GET /billing/welcome`: after the first sign-in, pay for the plan chosen at sign-up, or
/// stay on the free plan.
async fn welcome_page(
    state: web::Data<AppState>,
    page: Page,
    identity: Identity,
) -> Result<HttpResponse, AppError> {
    let Some(chosen) = chosen_plan(&state, identity.user_id()).await? else {
        return Ok(HttpResponse::SeeOther()
            .insert_header((header::LOCATION, "/billing"))
            .finish());
    };
    let plans = plans::effective(state.billing.settings());
    let Some(plan) = plans.get(&chosen) else {
        forget_chosen_plan(&state, identity.user_id()).await?;
        return Ok(HttpResponse::SeeOther()
            .insert_header((header::LOCATION, "/"))
            .finish());
    };
    let mut context = page.context(&state);
    context.insert("plan", &plans::view(&chosen, plan));
    html(&state, "billing/welcome.html", &context, StatusCode::OK)
}

#[derive(Deserialize)]
struct WelcomeForm {
    #[serde(rename = "csrf_token")]
    _csrf: Option<String>,
    decision: String,
}

/// Pays for the chosen plan — for the person's own workspace: the one they administer, or a
/// new one they own (someone who joined a shared workspace does not buy its plan) — or stays
/// free.
async fn welcome_form(
    state: web::Data<AppState>,
    identity: Identity,
    form: web::Form<WelcomeForm>,
) -> Result<HttpResponse, AppError> {
    let user = identity.user_id();
    let Some(chosen) = chosen_plan(&state, user).await? else {
        return Ok(HttpResponse::SeeOther()
            .insert_header((header::LOCATION, "/billing"))
            .finish());
    };
    if form.decision != "pay" {
        forget_chosen_plan(&state, user).await?;
        return Ok(HttpResponse::SeeOther()
            .insert_header((header::LOCATION, "/"))
            .finish());
    }
    let (home, role) = workspace(&state, user, None).await?;
    let tenant = if role.at_least(Role::Admin) {
        home
    } else {
        let name = format!("{}'s workspace", identity.session.display_name);
        let name: String = name.chars().take(80).collect();
        state
            .db
            .run(move |conn| {
                crate::db::write_transaction(conn, |tx| {
                    let now = Utc::now().naive_utc();
                    let slug = format!(
                        "ws-{user}-{}",
                        uuid::Uuid::new_v4()
                            .simple()
                            .to_string()
                            .get(..6)
                            .unwrap_or("x")
                    );
                    let id: i64 = diesel::insert_into(crate::schema::tenants::table)
                        .values((
                            crate::schema::tenants::slug.eq(&slug),
                            crate::schema::tenants::name.eq(&name),
                            crate::schema::tenants::created_at.eq(now),
                        ))
                        .returning(crate::schema::tenants::id)
                        .get_result(tx)?;
                    crate::tenancy::add_member(tx, id, user, Role::Owner, now)?;
                    Ok::<_, AppError>(id)
                })
            })
            .await?
    };
    let order = state
        .billing
        .checkout(user, &identity.session.email, tenant, &chosen)
        .await;
    match order {
        Ok(order) => {
            forget_chosen_plan(&state, user).await?;
            Ok(HttpResponse::SeeOther()
                .insert_header((
                    header::LOCATION,
                    order
                        .checkout_url
                        .unwrap_or_else(|| format!("/billing/orders/{}", order.id)),
                ))
                .finish())
        }
        Err(AppError::Unavailable(message)) => {
            back("/billing/welcome", Err(AppError::Conflict(message)))
        }
        Err(e) => Err(e),
    }
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    usage,
    list_plans,
    checkout,
    list_orders,
    get_order,
    refund,
    credits,
    adjust,
    webhook
))]
pub struct ApiDoc;
