//! Workspaces over HTTP: `GET|POST /api/v1/tenants`, `POST /api/v1/tenants/{id}/invitations`,
//! `POST /api/v1/invitations/accept`, and the `/invite` page the invitation mail links to.
//!
//! Isolation: a tenant id that the caller is not a member of answers 404, exactly like one
//! that does not exist, so ids cannot be probed.

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use chrono::{NaiveDateTime, TimeDelta, Utc};
use diesel::prelude::*;
use serde::Deserialize;
use serde_json::json;

use super::{Authorizer, Permission, Role};
use crate::audit::{self, AuditEvent};
use crate::auth::Email;
use crate::auth::identity::{Caller, Identity};
use crate::auth::sessions::token_id;
use crate::db::{DbError, write_transaction};
use crate::error::AppError;
use crate::mail::OutgoingMail;
use crate::schema::{invitations, memberships, tenants};
use crate::web::AppState;
use crate::web::pages::Page;

const INVITATION_DAYS: i64 = 7;

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::web::{get, resource};
    cfg.service(get("/api/v1/tenants", list_tenants).post(create_tenant))
        .service(resource("/api/v1/tenants/{id}/invitations").post(invite))
        .service(resource("/api/v1/invitations/accept").post(api_accept))
        .service(get("/invite", invite_page).post(accept_form));
}

pub(crate) fn event(
    name: &'static str,
    actor: i64,
    tenant_id: i64,
    details: serde_json::Value,
) -> AuditEvent {
    AuditEvent {
        event: name,
        actor_user_id: Some(actor),
        tenant_id: Some(tenant_id),
        subject: Some(format!("tenant:{tenant_id}")),
        details,
        ..AuditEvent::default()
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants",
    tag = "tenants",
    summary = "My workspaces and roles",
    responses(
        (status = 200, description = "`{tenants: [{id, slug, name, role}]}`")
    )
)]
async fn list_tenants(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, AppError> {
    let user_id = caller.user_id;
    let rows = state
        .db
        .run(move |conn| super::tenants_of(conn, user_id).map_err(DbError::from))
        .await?;
    let tenants: Vec<_> = rows
        .into_iter()
        .map(|(id, slug, name, role)| json!({ "id": id, "slug": slug, "name": name, "role": role }))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "tenants": tenants })))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct NewTenant {
    #[schema(
        max_length = 80,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    name: String,
    #[schema(pattern = r"^[a-z0-9][a-z0-9-]{0,38}[a-z0-9]$")]
    slug: String,
}

pub(crate) fn parse_slug(slug: &str) -> Result<String, AppError> {
    let slug = slug.trim().to_ascii_lowercase();
    let valid = (2..=40).contains(&slug.len())
        && slug
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !slug.starts_with('-')
        && !slug.ends_with('-');
    if valid {
        Ok(slug)
    } else {
        Err(AppError::BadRequest(
            "slug: must be 2 to 40 lower-case letters, digits or dashes, not starting or ending with a dash".to_owned(),
        ))
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/tenants",
    tag = "tenants",
    summary = "Create a workspace (you own it)",
    request_body = NewTenant,
    responses(
        (status = 201, description = "Created"),
        (status = 400, description = "Invalid name or slug", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Slug taken", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
/// `POST /api/v1/tenants`: a new workspace, owned by its creator.
async fn create_tenant(
    state: web::Data<AppState>,
    caller: Caller,
    body: crate::web::Json<NewTenant>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    let name = crate::auth::users::parse_display_name(&body.name).map_err(AppError::BadRequest)?;
    let slug = parse_slug(&body.slug)?;
    let user_id = caller.user_id;
    let created = state
        .db
        .run(move |conn| {
            write_transaction(conn, |tx| {
                let now = Utc::now().naive_utc();
                let Some(id) = crate::db::unless_taken(
                    diesel::insert_into(tenants::table)
                        .values((
                            tenants::slug.eq(&slug),
                            tenants::name.eq(&name),
                            tenants::created_at.eq(now),
                        ))
                        .returning(tenants::id)
                        .get_result::<i64>(tx),
                )?
                else {
                    return Ok::<_, DbError>(None);
                };
                super::add_member(tx, id, user_id, Role::Owner, now)?;
                audit::record(
                    tx,
                    &event("tenant.created", user_id, id, json!({ "slug": slug })),
                    now,
                )?;
                Ok(Some((id, slug, name)))
            })
        })
        .await?;
    match created {
        Some((id, slug, name)) => Ok(HttpResponse::Created()
            .json(json!({ "id": id, "slug": slug, "name": name, "role": "owner" }))),
        None => Err(AppError::Conflict(
            "slug: is taken; choose another".to_owned(),
        )),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct NewInvitation {
    #[schema(format = Email)]
    email: String,
    #[schema(value_type = crate::tenancy::Role)]
    role: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/tenants/{id}/invitations",
    tag = "tenants",
    summary = "Invite someone by mail (admin or owner; never above your role)",
    params(("id" = i64, Path)),
    request_body = NewInvitation,
    responses(
        (status = 201, description = "Invited"),
        (status = 403, description = "Your role cannot", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such workspace of yours", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already a member", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
/// `POST /api/v1/tenants/{id}/invitations`: admins and owners invite by mail, never to a role
/// above their own.
async fn invite(
    state: web::Data<AppState>,
    caller: Caller,
    tenant: web::Path<i64>,
    body: crate::web::Json<NewInvitation>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    let (id, email, role, expires_at) = create_invitation(
        &state,
        caller.user_id,
        &caller.display_name,
        tenant.into_inner(),
        &body.email,
        &body.role,
    )
    .await?;
    Ok(HttpResponse::Created().json(json!({
        "id": id,
        "email": email.as_str(),
        "role": role.as_str(),
        "expires_at": expires_at.and_utc().to_rfc3339(),
    })))
}

/// Invites `email` to `tenant_id` with `role` on behalf of `user_id`, queueing the mail in the
/// same transaction. 404 for a tenant they are not in, 403 beyond their role, 409 for members.
pub(crate) async fn create_invitation(
    state: &AppState,
    user_id: i64,
    inviter_name: &str,
    tenant_id: i64,
    email: &str,
    role: &str,
) -> Result<(i64, Email, Role, NaiveDateTime), AppError> {
    let (my_role, tenant_name) = state
        .db
        .run(move |conn| super::place_of(conn, tenant_id, user_id).map_err(DbError::from))
        .await?
        .ok_or_else(|| AppError::NotFound("No such workspace.".to_owned()))?;
    if !Authorizer::can(my_role, Permission::ManageMembers) {
        return Err(AppError::Forbidden(format!(
            "Your role ({my_role}) cannot invite people."
        )));
    }
    let role: Role = role.parse().map_err(AppError::BadRequest)?;
    if !Authorizer::may_grant(my_role, role) {
        return Err(AppError::Forbidden(format!(
            "You cannot give a role ({role}) above your own ({my_role})."
        )));
    }
    let email = Email::parse(email).map_err(AppError::BadRequest)?;
    // The plan's seats: members and open invitations count.
    let billing = state.billing.settings().clone();
    let seats = state
        .db
        .run(move |conn| {
            let (_, plan) = crate::billing::plans::plan_of(conn, &billing, tenant_id)?;
            let used = crate::billing::plans::seats_used(conn, tenant_id)?;
            Ok::<_, DbError>((plan.label, plan.seats, used))
        })
        .await?;
    if let (label, Some(allowed), used) = seats
        && used >= allowed
    {
        return Err(AppError::Conflict(format!(
            "The workspace's plan ({label}) has {allowed} seats, and members and open invitations use them all. An owner or admin can upgrade on the Usage page."
        )));
    }

    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    let token = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes);
    let mut context = tera::Context::new();
    context.insert("inviter", inviter_name);
    context.insert("tenant", &tenant_name);
    context.insert("role", role.as_str());
    context.insert(
        "invite_url",
        &format!("{}/invite?token={token}", state.public_url),
    );
    context.insert("days", &INVITATION_DAYS);
    let mail = OutgoingMail::compose(&state.templates, "invitation", email.as_str(), &context)
        .and_then(OutgoingMail::into_job)
        .map_err(AppError::internal)?;
    let queue = state.queue.clone();
    let outcome = state
        .db
        .run(move |conn| {
            write_transaction(conn, |tx| {
                let already: bool = diesel::select(diesel::dsl::exists(
                    memberships::table
                        .inner_join(crate::schema::users::table)
                        .filter(memberships::tenant_id.eq(tenant_id))
                        .filter(crate::schema::users::email.eq(email.as_str())),
                ))
                .get_result(tx)?;
                if already {
                    return Ok(None);
                }
                let now = Utc::now().naive_utc();
                let expires_at = now + TimeDelta::days(INVITATION_DAYS);
                let id: i64 = diesel::insert_into(invitations::table)
                    .values((
                        invitations::tenant_id.eq(tenant_id),
                        invitations::email.eq(email.as_str()),
                        invitations::role.eq(role.as_str()),
                        invitations::token_hash.eq(token_id(&token)),
                        invitations::invited_by.eq(Some(user_id)),
                        invitations::created_at.eq(now),
                        invitations::expires_at.eq(expires_at),
                    ))
                    .returning(invitations::id)
                    .get_result(tx)?;
                queue.enqueue_in(tx, &mail)?;
                audit::record(
                    tx,
                    &event(
                        "invitation.created",
                        user_id,
                        tenant_id,
                        json!({ "email": email.as_str(), "role": role.as_str() }),
                    ),
                    now,
                )?;
                Ok::<_, DbError>(Some((id, email, expires_at)))
            })
        })
        .await?;
    state.queue.wake();
    match outcome {
        Some((id, email, expires_at)) => Ok((id, email, role, expires_at)),
        None => Err(AppError::Conflict(
            "email: is already a member of this workspace".to_owned(),
        )),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct AcceptRequest {
    token: String,
}

/// Joins the tenant of invitation `token` as the signed-in user, whose address it must be for.
async fn accept(
    state: &AppState,
    identity: &Identity,
    token: String,
) -> Result<(i64, String, Role), AppError> {
    let (user_id, email) = (identity.user_id(), identity.session.email.clone());
    state
        .db
        .run(move |conn| {
            write_transaction(conn, |tx| {
                let now = Utc::now().naive_utc();
                let row: Option<(
                    i64,
                    i64,
                    String,
                    String,
                    NaiveDateTime,
                    Option<NaiveDateTime>,
                )> = invitations::table
                    .filter(invitations::token_hash.eq(token_id(token.trim())))
                    .select((
                        invitations::id,
                        invitations::tenant_id,
                        invitations::email,
                        invitations::role,
                        invitations::expires_at,
                        invitations::accepted_at,
                    ))
                    .first(tx)
                    .optional()?;
                let Some((id, tenant_id, invited, role, expires_at, accepted_at)) = row else {
                    return Ok(Err(AppError::NotFound(
                        "This invitation does not exist.".to_owned(),
                    )));
                };
                if accepted_at.is_some() || expires_at <= now {
                    return Ok(Err(AppError::Coded {
                        status: actix_web::http::StatusCode::GONE,
                        code: "invitation_spent",
                        message:
                            "This invitation was already used or has expired; ask for a new one."
                                .to_owned(),
                        retry_after_secs: None,
                    }));
                }
                if invited != email {
                    return Ok(Err(AppError::Forbidden(format!(
                        "This invitation is for {invited}; sign in with that address to accept it."
                    ))));
                }
                // The CHECK constraint keeps stored roles valid; anything else is a bug.
                let Ok(role) = role.parse::<Role>() else {
                    return Ok(Err(AppError::internal(anyhow::anyhow!(
                        "invitation {id} has invalid role {role:?}"
                    ))));
                };
                if super::role_of(tx, tenant_id, user_id)?.is_some() {
                    return Ok(Err(AppError::Conflict(
                        "You are already a member of this workspace.".to_owned(),
                    )));
                }
                super::add_member(tx, tenant_id, user_id, role, now)?;
                diesel::update(invitations::table.find(id))
                    .set(invitations::accepted_at.eq(Some(now)))
                    .execute(tx)?;
                audit::record(
                    tx,
                    &event(
                        "membership.added",
                        user_id,
                        tenant_id,
                        json!({ "role": role.as_str(), "via": "invitation" }),
                    ),
                    now,
                )?;
                let name: String = tenants::table
                    .find(tenant_id)
                    .select(tenants::name)
                    .first(tx)?;
                Ok::<_, DbError>(Ok((tenant_id, name, role)))
            })
        })
        .await?
}

#[utoipa::path(
    post,
    path = "/api/v1/invitations/accept",
    tag = "tenants",
    summary = "Accept an invitation as the signed-in user",
    request_body = AcceptRequest,
    responses(
        (status = 200, description = "Joined"),
        (status = 403, description = "Invitation for another address", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such invitation", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 410, description = "Used or expired", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn api_accept(
    state: web::Data<AppState>,
    identity: Identity,
    body: crate::web::Json<AcceptRequest>,
) -> Result<HttpResponse, AppError> {
    let (tenant_id, name, role) = accept(&state, &identity, body.into_inner().token).await?;
    Ok(HttpResponse::Ok()
        .json(json!({ "tenant": { "id": tenant_id, "name": name }, "role": role.as_str() })))
}

/// `GET /invite?token=…`: the link in the invitation mail.
async fn invite_page(
    state: web::Data<AppState>,
    page: Page,
    query: web::Query<crate::web::pages::TokenQuery>,
) -> Result<HttpResponse, AppError> {
    let token = query.into_inner().token.unwrap_or_default();
    let here: String =
        url::form_urlencoded::byte_serialize(format!("/invite?token={token}").as_bytes()).collect();
    let mut context = page.context(&state);
    context.insert("token", &token);
    context.insert("signed_in", &page.identity.is_some());
    context.insert("login_url", &format!("/login?next={here}"));
    crate::web::pages::html(
        &state,
        "tenancy/invite.html",
        &context,
        actix_web::http::StatusCode::OK,
    )
}

async fn accept_form(
    state: web::Data<AppState>,
    identity: Identity,
    form: web::Form<AcceptRequest>,
) -> Result<HttpResponse, AppError> {
    accept(&state, &identity, form.into_inner().token).await?;
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/"))
        .finish())
}

/// This module's part of the OpenAPI document (`/api/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(list_tenants, create_tenant, invite, api_accept))]
pub struct ApiDoc;
