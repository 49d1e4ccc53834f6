//! `POST|GET /api/v1/me/tokens`, `DELETE /api/v1/me/tokens/{id}`: personal API tokens. Managed
//! only from a signed-in session (`Identity`), never with a token.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::api_tokens::{self, TokenRow};
use super::identity::{Caller, Identity};
use crate::audit::{self, AuditEvent, events};
use crate::db::{DbError, write_transaction};
use crate::error::AppError;
use crate::web::AppState;
use crate::web::pages::{Page, html};

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::web::{get, resource};
    cfg.service(get("/api/v1/me/tokens", list_tokens).post(create_token))
        .service(resource("/api/v1/me/tokens/{id}").delete(revoke_token))
        .service(get("/settings/tokens", tokens_page).post(create_form))
        .service(resource("/settings/tokens/{id}/revoke").post(revoke_form));
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct CreateToken {
    name: String,
    scopes: Vec<String>,
    expires_at: Option<String>,
}

fn describe(row: &TokenRow) -> serde_json::Value {
    json!({
        "id": row.id,
        "name": row.name,
        "scopes": row.scopes.split_whitespace().collect::<Vec<_>>(),
        "created_at": row.created_at.and_utc().to_rfc3339(),
        "expires_at": row.expires_at.map(|t| t.and_utc().to_rfc3339()),
        "last_used_at": row.last_used_at.map(|t| t.and_utc().to_rfc3339()),
    })
}

fn event(
    name: &'static str,
    user_id: i64,
    token_id: i64,
    details: serde_json::Value,
) -> AuditEvent {
    AuditEvent {
        event: name,
        actor_user_id: Some(user_id),
        subject: Some(format!("token:{token_id}")),
        details,
        ..AuditEvent::default()
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/me/tokens",
    tag = "tokens",
    summary = "Create a personal API token (shown once)",
    request_body = CreateToken,
    responses(
        (status = 201, description = "`{id, name, token}`"),
        (status = 400, description = "Invalid name, scope or expiry", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
/// Answers with the token itself: the only time it is ever shown.
async fn create_token(
    state: web::Data<AppState>,
    identity: Identity,
    body: crate::web::Json<CreateToken>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    let (row, token) = issue(
        &state,
        identity.user_id(),
        &body.name,
        &body.scopes,
        body.expires_at.as_deref(),
    )
    .await?;
    let mut answer = describe(&row);
    answer["token"] = json!(token);
    Ok(HttpResponse::Created().json(answer))
}

/// Creates a token (validated, audited); returns its row and the secret, shown once.
async fn issue(
    state: &AppState,
    user_id: i64,
    name: &str,
    scopes: &[String],
    expires_at: Option<&str>,
) -> Result<(TokenRow, String), AppError> {
    let (name, scopes, expires_at) =
        api_tokens::validate(name, scopes, expires_at, chrono::Utc::now())
            .map_err(AppError::BadRequest)?;
    let (row, token) = state
        .db
        .run(move |conn| {
            write_transaction(conn, |tx| {
                let (row, token) = api_tokens::create(tx, user_id, &name, &scopes, expires_at)?;
                audit::record(
                    tx,
                    &event(
                        events::TOKEN_CREATED,
                        user_id,
                        row.id,
                        json!({ "name": row.name, "scopes": row.scopes }),
                    ),
                    chrono::Utc::now().naive_utc(),
                )?;
                Ok::<_, DbError>((row, token))
            })
        })
        .await?;
    Ok((row, token))
}

#[utoipa::path(
    get,
    path = "/api/v1/me/tokens",
    tag = "tokens",
    summary = "My API tokens (never the secrets)",
    responses(
        (status = 200, description = "`{tokens: [...]}`")
    )
)]
async fn list_tokens(
    state: web::Data<AppState>,
    identity: Identity,
) -> Result<HttpResponse, AppError> {
    let rows = my_tokens(state.as_ref(), identity.user_id()).await?;
    Ok(HttpResponse::Ok().json(json!({ "tokens": rows.iter().map(describe).collect::<Vec<_>>() })))
}

#[utoipa::path(
    delete,
    path = "/api/v1/me/tokens/{id}",
    tag = "tokens",
    summary = "Revoke a token",
    params(("id" = i64, Path)),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such token of mine", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
/// A token with the `write` scope may revoke itself (a script retiring its own token), but
/// no other: a leaked token must not be able to lock its owner's scripts out.
async fn revoke_token(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let (user_id, token_id) = (caller.user_id, id.into_inner());
    if let Some(token) = &caller.token
        && token.token_id != token_id
    {
        return Err(AppError::Forbidden(
            "A token may revoke only itself; manage other tokens from a signed-in session."
                .to_owned(),
        ));
    }
    if revoke(&state, user_id, token_id).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(AppError::NotFound("No such token.".to_owned()))
    }
}

/// Revokes one of `user_id`'s tokens (audited); false when there is no such live token.
async fn revoke(state: &AppState, user_id: i64, token_id: i64) -> Result<bool, AppError> {
    let revoked = state
        .db
        .run(move |conn| {
            write_transaction(conn, |tx| {
                let revoked = api_tokens::revoke(tx, user_id, token_id)?;
                if revoked {
                    audit::record(
                        tx,
                        &event(events::TOKEN_REVOKED, user_id, token_id, json!({})),
                        chrono::Utc::now().naive_utc(),
                    )?;
                }
                Ok::<_, DbError>(revoked)
            })
        })
        .await?;
    if revoked {
        state
            .sessions
            .announce(crate::auth::sessions::Revocation::Token(token_id));
    }
    Ok(revoked)
}

async fn my_tokens(state: &AppState, user_id: i64) -> Result<Vec<TokenRow>, DbError> {
    state
        .db
        .run(move |conn| api_tokens::list(conn, user_id).map_err(DbError::from))
        .await
}

/// `GET /settings/tokens`.
async fn tokens_page(
    state: web::Data<AppState>,
    page: Page,
    identity: Identity,
) -> Result<HttpResponse, AppError> {
    render_tokens(&state, &page, &identity, StatusCode::OK, None, None).await
}

async fn render_tokens(
    state: &AppState,
    page: &Page,
    identity: &Identity,
    status: StatusCode,
    created: Option<(&str, &str)>,
    error: Option<&str>,
) -> Result<HttpResponse, AppError> {
    let rows = my_tokens(state, identity.user_id()).await?;
    let day = |t: chrono::NaiveDateTime| t.format("%Y-%m-%d").to_string();
    let tokens: Vec<_> = rows
        .iter()
        .map(|row| {
            json!({
                "id": row.id,
                "name": row.name,
                "scopes": row.scopes,
                "created": day(row.created_at),
                "expires": row.expires_at.map(day),
                "last_used": row.last_used_at.map(day),
            })
        })
        .collect();
    let mut context = page.context(state);
    context.insert("tokens", &tokens);
    context.insert("created_name", &created.map(|(name, _)| name));
    context.insert("created_token", &created.map(|(_, token)| token));
    context.insert("error", &error);
    html(state, "settings/tokens.html", &context, status)
}

#[derive(Deserialize)]
pub struct TokenForm {
    name: String,
    /// `read` or `write` (which includes read).
    access: String,
    /// Days until it expires; `never` for no expiry.
    expires_in_days: String,
}

/// `POST /settings/tokens`: the new token, shown once on the page.
async fn create_form(
    state: web::Data<AppState>,
    page: Page,
    identity: Identity,
    form: web::Form<TokenForm>,
) -> Result<HttpResponse, AppError> {
    let form = form.into_inner();
    let scopes: Vec<String> = match form.access.as_str() {
        "write" => vec!["read".to_owned(), "write".to_owned()],
        other => vec![other.to_owned()],
    };
    let expires_at = match form.expires_in_days.as_str() {
        "never" => None,
        days => match days.parse::<i64>() {
            Ok(days @ 1..=3650) => {
                Some((chrono::Utc::now() + chrono::TimeDelta::days(days)).to_rfc3339())
            }
            _ => {
                return render_tokens(
                    &state,
                    &page,
                    &identity,
                    StatusCode::BAD_REQUEST,
                    None,
                    Some("expires_in_days: choose one of the offered periods"),
                )
                .await;
            }
        },
    };
    match issue(
        &state,
        identity.user_id(),
        &form.name,
        &scopes,
        expires_at.as_deref(),
    )
    .await
    {
        Ok((row, token)) => {
            let mut response = render_tokens(
                &state,
                &page,
                &identity,
                StatusCode::CREATED,
                Some((&row.name, &token)),
                None,
            )
            .await?;
            response.headers_mut().insert(
                actix_web::http::header::CACHE_CONTROL,
                actix_web::http::header::HeaderValue::from_static("no-store"),
            );
            Ok(response)
        }
        Err(AppError::BadRequest(message)) => {
            render_tokens(
                &state,
                &page,
                &identity,
                StatusCode::BAD_REQUEST,
                None,
                Some(&message),
            )
            .await
        }
        Err(other) => Err(other),
    }
}

/// `POST /settings/tokens/{id}/revoke`.
async fn revoke_form(
    state: web::Data<AppState>,
    identity: Identity,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    if !revoke(&state, identity.user_id(), id.into_inner()).await? {
        return Err(AppError::NotFound("No such token.".to_owned()));
    }
    Ok(HttpResponse::SeeOther()
        .insert_header((actix_web::http::header::LOCATION, "/settings/tokens"))
        .finish())
}

/// This module's part of the OpenAPI document (`/api/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(create_token, list_tokens, revoke_token))]
pub struct ApiDoc;
