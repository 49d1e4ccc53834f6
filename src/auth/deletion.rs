//! Deleting one's own account: `DELETE /api/v1/me` and the form on `/settings/security`.
//!
//! It needs the password (checked like a sign-in). What goes: the account and everything
//! hanging off it (sessions, tokens, 2FA, connected identities — by cascade), the person's
//! private conversations with their history, and their memberships. What stays: the messages
//! they wrote in shared rooms, for the others, with the author removed ("Deleted user"). A
//! workspace they are the only member of goes with its rooms; one where they are the only
//! owner among others blocks the deletion until they hand it over. The audit log keeps the
//! events, with the actor removed.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use diesel::prelude::*;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;

use super::identity::{Caller, Identity};
use crate::audit::{self, AuditEvent};
use crate::chat::rooms::{Erasure, delete_room_rows, erase_member};
use crate::db::{DbConnection, write_transaction};
use crate::error::AppError;
use crate::history::Sender;
use crate::schema::{memberships, rooms, tenants, users};
use crate::tenancy::Role;
use crate::web::AppState;

pub const ACCOUNT_DELETED: &str = "account.deleted";

/// The form's route; `DELETE /api/v1/me` joins `GET /api/v1/me` in `handlers::configure`
/// (one resource per path: a second one would shadow the first).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(crate::web::resource("/settings/account/delete").post(delete_form));
}

/// Workspaces that stop deletion: the person is their only owner and others remain.
fn blocking_workspaces(conn: &mut DbConnection, user_id: i64) -> QueryResult<Vec<String>> {
    let owned: Vec<(i64, String)> = memberships::table
        .inner_join(tenants::table)
        .filter(memberships::user_id.eq(user_id))
        .filter(memberships::role.eq(Role::Owner.as_str()))
        .select((tenants::id, tenants::name))
        .load(conn)?;
    let mut blocking = Vec::new();
    for (tenant_id, name) in owned {
        let others: i64 = memberships::table
            .filter(memberships::tenant_id.eq(tenant_id))
            .filter(memberships::user_id.ne(user_id))
            .count()
            .get_result(conn)?;
        let other_owners: i64 = memberships::table
            .filter(memberships::tenant_id.eq(tenant_id))
            .filter(memberships::user_id.ne(user_id))
            .filter(memberships::role.eq(Role::Owner.as_str()))
            .count()
            .get_result(conn)?;
        if others > 0 && other_owners == 0 {
            blocking.push(name);
        }
    }
    Ok(blocking)
}

/// Workspaces the person is the only member of: they go with the account.
fn solitary_workspaces(conn: &mut DbConnection, user_id: i64) -> QueryResult<Vec<i64>> {
    let mine: Vec<i64> = memberships::table
        .filter(memberships::user_id.eq(user_id))
        .select(memberships::tenant_id)
        .load(conn)?;
    let mut alone = Vec::new();
    for tenant_id in mine {
        let members: i64 = memberships::table
            .filter(memberships::tenant_id.eq(tenant_id))
            .count()
            .get_result(conn)?;
        if members == 1 {
            alone.push(tenant_id);
        }
    }
    Ok(alone)
}

/// Deletes `user_id`'s account after checking `password`; see the module docs.
pub async fn delete_account(
    state: &AppState,
    request: &HttpRequest,
    user_id: i64,
    password: String,
) -> Result<Erasure, AppError> {
    let client = super::handlers::client(request);
    if !state
        .login
        .reauthenticate(user_id, SecretString::from(password), &client)
        .await?
    {
        return Err(AppError::BadRequest("password: is not correct".to_owned()));
    }
    let ip = crate::web::client_ip(request);
    let blocking = state
        .db
        .run(move |conn| blocking_workspaces(conn, user_id).map_err(crate::db::DbError::from))
        .await?;
    if !blocking.is_empty() {
        return Err(AppError::Conflict(format!(
            "You are the only owner of {}: make someone else owner first, or remove the other \
             members.",
            blocking.join(", ")
        )));
    }
    // Signed out everywhere first (this also empties the session cache).
    state.sessions.revoke_all_for_user(user_id, None).await?;
    let (erasure, deleted_rooms) = state
        .db
        .run(move |conn| {
            write_transaction(conn, |tx| {
                // Checked again inside the transaction: a member may have joined meanwhile.
                if !blocking_workspaces(tx, user_id)?.is_empty() {
                    return Err(AppError::Conflict(
                        "A workspace you own gained members; hand it over first.".to_owned(),
                    ));
                }
                let mut deleted_rooms = Vec::new();
                for tenant_id in solitary_workspaces(tx, user_id)? {
                    let room_ids: Vec<i64> = rooms::table
                        .filter(rooms::tenant_id.eq(tenant_id))
                        .select(rooms::id)
                        .load(tx)?;
                    for room_id in &room_ids {
                        delete_room_rows(tx, *room_id)?;
                    }
                    deleted_rooms.extend(room_ids);
                    diesel::delete(tenants::table.find(tenant_id)).execute(tx)?;
                }
                let erasure = erase_member(tx, user_id)?;
                diesel::delete(users::table.find(user_id)).execute(tx)?;
                audit::record(
                    tx,
                    &AuditEvent {
                        event: ACCOUNT_DELETED,
                        subject: Some(format!("user:{user_id}")),
                        ip,
                        details: json!(erasure),
                        ..AuditEvent::default()
                    },
                    chrono::Utc::now().naive_utc(),
                )?;
                Ok::<_, AppError>((erasure, deleted_rooms))
            })
        })
        .await?;
    state.chat.personal_keys().lock(user_id);
    state.chat.ephemeral().anonymise(Sender::user(user_id));
    for room_id in deleted_rooms {
        state.chat.ephemeral().forget(room_id);
    }
    Ok(erasure)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    password: String,
}

#[utoipa::path(
    delete,
    path = "/api/v1/me",
    tag = "me",
    summary = "Delete my account: private conversations erased, my messages elsewhere anonymised",
    request_body = DeleteRequest,
    responses(
        (status = 200, description = "Deleted: `{private_rooms_deleted, messages_anonymised, rooms_handed_over}`"),
        (status = 400, description = "Wrong password", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The only owner of a workspace with other members", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
pub(crate) async fn api_delete(
    state: web::Data<AppState>,
    request: HttpRequest,
    caller: Caller,
    body: crate::web::Json<DeleteRequest>,
) -> Result<HttpResponse, AppError> {
    let erasure =
        delete_account(&state, &request, caller.user_id, body.into_inner().password).await?;
    Ok(HttpResponse::Ok()
        .cookie(super::identity::expired_session_cookie(&state))
        .json(erasure))
}

#[derive(Deserialize)]
pub struct DeleteForm {
    password: String,
    /// The box saying "I understand": the form is not sent by accident.
    confirm: Option<String>,
}

async fn delete_form(
    state: web::Data<AppState>,
    request: HttpRequest,
    identity: Identity,
    form: web::Form<DeleteForm>,
) -> Result<HttpResponse, AppError> {
    let form = form.into_inner();
    if form.confirm.as_deref() != Some("yes") {
        return crate::web::pages::back_to(
            "/settings/security",
            Err(AppError::BadRequest(
                "confirm: tick the box to say you understand what is deleted".to_owned(),
            )),
        );
    }
    match delete_account(&state, &request, identity.user_id(), form.password).await {
        Ok(_) => Ok(HttpResponse::SeeOther()
            .cookie(super::identity::expired_session_cookie(&state))
            .insert_header((header::LOCATION, "/login?notice=account_deleted"))
            .finish()),
        Err(e) => crate::web::pages::back_to("/settings/security", Err(e)),
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(api_delete), components(schemas(DeleteRequest)))]
pub struct ApiDoc;
