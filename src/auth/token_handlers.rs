//! `POST|GET /api/v1/me/tokens`, `DELETE /api/v1/me/tokens/{id}`: personal API tokens. Managed
//! only from a signed-in session (`Identity`), never with a token.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::api_tokens::{self, TokenRow};
use super::identity::{Caller, Identity};
use crate::audit::{self, AuditEvent, events};
use crate::db::{DbError, write_transaction};
use crate::error::AppError;
use crate::web::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::web::{get, resource};
    cfg.service(get("/api/v1/me/tokens", list_tokens).route(web::post().to(create_token)))
        .service(resource("/api/v1/me/tokens/{id}").route(web::delete().to(revoke_token)));
}

#[derive(Deserialize)]
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

/// Answers with the token itself: the only time it is ever shown.
async fn create_token(
    state: web::Data<AppState>,
    identity: Identity,
    body: web::Json<CreateToken>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    let (name, scopes, expires_at) = api_tokens::validate(
        &body.name,
        &body.scopes,
        body.expires_at.as_deref(),
        chrono::Utc::now(),
    )
    .map_err(AppError::BadRequest)?;
    let user_id = identity.user_id();
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
    let mut answer = describe(&row);
    answer["token"] = json!(token);
    Ok(HttpResponse::Created().json(answer))
}

async fn list_tokens(
    state: web::Data<AppState>,
    identity: Identity,
) -> Result<HttpResponse, AppError> {
    let user_id = identity.user_id();
    let rows = state
        .db
        .run(move |conn| api_tokens::list(conn, user_id).map_err(DbError::from))
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "tokens": rows.iter().map(describe).collect::<Vec<_>>() })))
}

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
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(AppError::NotFound("No such token.".to_owned()))
    }
}
