//! A workspace's people: members and pending invitations, over the API
//! (`/api/v1/tenants/{id}/members[/{user_id}]`, `/api/v1/tenants/{id}/invitations[/{id}]`)
//! and the `/workspaces` pages.
//!
//! Every decision goes through [`Authorizer`]: the pages show a control only when it would be
//! allowed, and the API answers 403 when called anyway. A tenant the caller is not in is 404,
//! like one that does not exist. A workspace always keeps at least one owner.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::handlers::{create_invitation, event};
use super::{Authorizer, Permission, Role};
use crate::audit;
use crate::auth::identity::{Caller, Identity};
use crate::db::{DbConnection, DbError, write_transaction};
use crate::error::AppError;
use crate::schema::{invitations, memberships, users};
use crate::web::AppState;
use crate::web::pages::{Page, html};

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::web::{get, resource};
    cfg.service(get("/api/v1/tenants/{id}/members", api_members))
        .service(
            resource("/api/v1/tenants/{id}/members/{user_id}")
                .patch(api_change_role)
                .delete(api_remove),
        )
        .service(
            resource("/api/v1/tenants/{id}/invitations/{invitation_id}")
                .delete(api_revoke_invitation),
        )
        .service(get("/workspaces", workspaces_page))
        .service(get("/workspaces/{id}", workspace_page))
        .service(resource("/workspaces/{id}/invite").post(invite_form))
        .service(resource("/workspaces/{id}/members/{user_id}/role").post(role_form))
        .service(resource("/workspaces/{id}/members/{user_id}/remove").post(remove_form))
        .service(resource("/workspaces/{id}/invitations/{invitation_id}/revoke").post(revoke_form));
}

#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub user_id: i64,
    pub email: String,
    pub name: String,
    pub role: Role,
    pub joined_at: NaiveDateTime,
}

#[derive(Debug, Clone, Serialize)]
pub struct PendingInvitation {
    pub id: i64,
    pub email: String,
    pub role: String,
    pub expires_at: NaiveDateTime,
}

/// The caller's role in `tenant_id` and the tenant's name; 404 when they are not a member.
fn my_place(
    conn: &mut DbConnection,
    tenant_id: i64,
    user_id: i64,
) -> Result<(Role, String), AppError> {
    super::place_of(conn, tenant_id, user_id)?
        .ok_or_else(|| AppError::NotFound("No such workspace.".to_owned()))
}

pub(crate) fn members_of(conn: &mut DbConnection, tenant_id: i64) -> QueryResult<Vec<Member>> {
    let rows: Vec<(i64, String, String, String, NaiveDateTime)> = memberships::table
        .inner_join(users::table)
        .filter(memberships::tenant_id.eq(tenant_id))
        .order((memberships::created_at, users::id))
        .select((
            users::id,
            users::email,
            users::display_name,
            memberships::role,
            memberships::created_at,
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .filter_map(|(user_id, email, name, role, joined_at)| {
            Some(Member {
                user_id,
                email,
                name,
                role: role.parse().ok()?,
                joined_at,
            })
        })
        .collect())
}

fn pending_invitations(
    conn: &mut DbConnection,
    tenant_id: i64,
) -> QueryResult<Vec<PendingInvitation>> {
    let rows: Vec<(i64, String, String, NaiveDateTime)> = invitations::table
        .filter(invitations::tenant_id.eq(tenant_id))
        .filter(invitations::accepted_at.is_null())
        .filter(invitations::expires_at.gt(Utc::now().naive_utc()))
        .order(invitations::id)
        .select((
            invitations::id,
            invitations::email,
            invitations::role,
            invitations::expires_at,
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(id, email, role, expires_at)| PendingInvitation {
            id,
            email,
            role,
            expires_at,
        })
        .collect())
}

/// My role, the tenant's name, its members, and (only for those who manage members) its
/// pending invitations.
type Workspace = (Role, String, Vec<Member>, Option<Vec<PendingInvitation>>);

fn load_workspace(
    conn: &mut DbConnection,
    tenant_id: i64,
    user_id: i64,
) -> Result<Workspace, AppError> {
    let (role, name) = my_place(conn, tenant_id, user_id)?;
    let members = members_of(conn, tenant_id)?;
    let invitations = if Authorizer::can(role, Permission::ManageMembers) {
        Some(pending_invitations(conn, tenant_id)?)
    } else {
        None
    };
    Ok((role, name, members, invitations))
}

fn owners(conn: &mut DbConnection, tenant_id: i64) -> QueryResult<i64> {
    memberships::table
        .filter(memberships::tenant_id.eq(tenant_id))
        .filter(memberships::role.eq(Role::Owner.as_str()))
        .count()
        .get_result(conn)
}

const LAST_OWNER: &str = "A workspace needs an owner: make someone else owner first.";

/// What a membership change is.
pub(crate) enum Change {
    Role(Role),
    Remove,
}

/// Changes or ends `target`'s membership on behalf of `actor`. Members may always leave
/// themselves; anything else needs `ManageMembers` and a target not above the actor.
pub(crate) async fn change(
    state: &AppState,
    actor: i64,
    tenant_id: i64,
    target: i64,
    change: Change,
    ip: Option<String>,
) -> Result<(), AppError> {
    state
        .db
        .run(move |conn| {
            write_transaction(conn, |tx| {
                super::lock_tenant(tx, tenant_id)?;
                let (my_role, _) = my_place(tx, tenant_id, actor)?;
                let Some(current) = super::role_of(tx, tenant_id, target)? else {
                    return Err(AppError::NotFound(
                        "No such member in this workspace.".to_owned(),
                    ));
                };
                let leaving = target == actor && matches!(change, Change::Remove);
                if !leaving && !Authorizer::may_manage(my_role, current) {
                    return Err(AppError::Forbidden(format!(
                        "Your role ({my_role}) cannot change a member who is {current}."
                    )));
                }
                if let Change::Role(new) = change
                    && !Authorizer::may_grant(my_role, new)
                {
                    return Err(AppError::Forbidden(format!(
                        "You cannot give a role ({new}) above your own ({my_role})."
                    )));
                }
                let stays_owner = matches!(change, Change::Role(Role::Owner));
                if current == Role::Owner && !stays_owner && owners(tx, tenant_id)? <= 1 {
                    return Err(AppError::Conflict(LAST_OWNER.to_owned()));
                }
                let now = Utc::now().naive_utc();
                let row = memberships::table.find((tenant_id, target));
                let (name, details) = match change {
                    Change::Role(new) => {
                        diesel::update(row)
                            .set(memberships::role.eq(new.as_str()))
                            .execute(tx)?;
                        (
                            "membership.role_changed",
                            json!({ "user_id": target, "from": current.as_str(), "to": new.as_str() }),
                        )
                    }
                    Change::Remove => {
                        diesel::delete(row).execute(tx)?;
                        (
                            "membership.removed",
                            json!({ "user_id": target, "role": current.as_str(), "left": leaving }),
                        )
                    }
                };
                let mut entry = event(name, actor, tenant_id, details);
                entry.ip = ip;
                audit::record(tx, &entry, now)?;
                Ok(())
            })
        })
        .await
}

async fn revoke_invitation(
    state: &AppState,
    actor: i64,
    tenant_id: i64,
    invitation_id: i64,
) -> Result<(), AppError> {
    state
        .db
        .run(move |conn| {
            write_transaction(conn, |tx| {
                let (my_role, _) = my_place(tx, tenant_id, actor)?;
                if !Authorizer::can(my_role, Permission::ManageMembers) {
                    return Err(AppError::Forbidden(format!(
                        "Your role ({my_role}) cannot manage invitations."
                    )));
                }
                let deleted = diesel::delete(
                    invitations::table
                        .find(invitation_id)
                        .filter(invitations::tenant_id.eq(tenant_id))
                        .filter(invitations::accepted_at.is_null()),
                )
                .execute(tx)?;
                if deleted == 0 {
                    return Err(AppError::NotFound("No such invitation.".to_owned()));
                }
                audit::record(
                    tx,
                    &event(
                        "invitation.revoked",
                        actor,
                        tenant_id,
                        json!({ "invitation_id": invitation_id }),
                    ),
                    Utc::now().naive_utc(),
                )?;
                Ok(())
            })
        })
        .await
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants/{id}/members",
    tag = "tenants",
    summary = "Members (and, for admins, pending invitations)",
    params(("id" = i64, Path)),
    responses(
        (status = 200, description = "`{your_role, members, invitations?}`"),
        (status = 404, description = "No such workspace of yours", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
/// `GET /api/v1/tenants/{id}/members`: members, and pending invitations for those who may
/// manage them.
async fn api_members(
    state: web::Data<AppState>,
    caller: Caller,
    tenant: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let (tenant_id, user_id) = (tenant.into_inner(), caller.user_id);
    let (role, _, members, invitations) = state
        .db
        .run(move |conn| load_workspace(conn, tenant_id, user_id))
        .await?;
    let members: Vec<_> = members
        .iter()
        .map(|m| {
            json!({
                "user_id": m.user_id,
                "email": m.email,
                "name": m.name,
                "role": m.role,
                "joined_at": m.joined_at.and_utc().to_rfc3339(),
            })
        })
        .collect();
    let mut body = json!({ "your_role": role, "members": members });
    if let Some(invitations) = invitations {
        body["invitations"] = invitations
            .iter()
            .map(|i| {
                json!({
                    "id": i.id,
                    "email": i.email,
                    "role": i.role,
                    "expires_at": i.expires_at.and_utc().to_rfc3339(),
                })
            })
            .collect();
    }
    Ok(HttpResponse::Ok().json(body))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct RoleChange {
    #[schema(value_type = crate::tenancy::Role)]
    role: String,
}

#[utoipa::path(
    patch,
    path = "/api/v1/tenants/{id}/members/{user_id}",
    tag = "tenants",
    summary = "Change a member's role",
    params(("id" = i64, Path), ("user_id" = i64, Path)),
    request_body = RoleChange,
    responses(
        (status = 200, description = "Changed"),
        (status = 403, description = "Your role cannot", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such member", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The last owner", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
/// `PATCH /api/v1/tenants/{id}/members/{user_id}` with `{"role"}`.
async fn api_change_role(
    state: web::Data<AppState>,
    request: HttpRequest,
    caller: Caller,
    path: web::Path<(i64, i64)>,
    body: crate::web::Json<RoleChange>,
) -> Result<HttpResponse, AppError> {
    let (tenant_id, target) = path.into_inner();
    let role: Role = body.role.parse().map_err(AppError::BadRequest)?;
    change(
        &state,
        caller.user_id,
        tenant_id,
        target,
        Change::Role(role),
        crate::web::client_ip(&request),
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({ "user_id": target, "role": role })))
}

#[utoipa::path(
    delete,
    path = "/api/v1/tenants/{id}/members/{user_id}",
    tag = "tenants",
    summary = "Remove a member, or leave",
    params(("id" = i64, Path), ("user_id" = i64, Path)),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "Your role cannot", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such member", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The last owner", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
/// `DELETE /api/v1/tenants/{id}/members/{user_id}`: remove a member, or leave.
async fn api_remove(
    state: web::Data<AppState>,
    request: HttpRequest,
    caller: Caller,
    path: web::Path<(i64, i64)>,
) -> Result<HttpResponse, AppError> {
    let (tenant_id, target) = path.into_inner();
    change(
        &state,
        caller.user_id,
        tenant_id,
        target,
        Change::Remove,
        crate::web::client_ip(&request),
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(
    delete,
    path = "/api/v1/tenants/{id}/invitations/{invitation_id}",
    tag = "tenants",
    summary = "Withdraw a pending invitation",
    params(("id" = i64, Path), ("invitation_id" = i64, Path)),
    responses(
        (status = 204, description = "Withdrawn"),
        (status = 403, description = "Your role cannot", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such invitation", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
/// `DELETE /api/v1/tenants/{id}/invitations/{invitation_id}`.
async fn api_revoke_invitation(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(i64, i64)>,
) -> Result<HttpResponse, AppError> {
    let (tenant_id, invitation_id) = path.into_inner();
    revoke_invitation(&state, caller.user_id, tenant_id, invitation_id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `GET /workspaces`: the workspaces I am in.
async fn workspaces_page(
    state: web::Data<AppState>,
    page: Page,
    identity: Identity,
) -> Result<HttpResponse, AppError> {
    let user_id = identity.user_id();
    let rows = state
        .db
        .run(move |conn| super::tenants_of(conn, user_id).map_err(DbError::from))
        .await?;
    if let [(id, ..)] = rows.as_slice() {
        return Ok(HttpResponse::SeeOther()
            .insert_header((header::LOCATION, format!("/workspaces/{id}")))
            .finish());
    }
    let workspaces: Vec<_> = rows
        .iter()
        .map(|(id, _, name, role)| json!({ "id": id, "name": name, "role": role }))
        .collect();
    let mut context = page.context(&state);
    context.insert("workspaces", &workspaces);
    html(&state, "tenancy/workspaces.html", &context, StatusCode::OK)
}

#[derive(Deserialize)]
pub struct NoticeQuery {
    notice: Option<String>,
    error: Option<String>,
}

/// `GET /workspaces/{id}`: members and invitations, with exactly the controls my role allows.
async fn workspace_page(
    state: web::Data<AppState>,
    page: Page,
    identity: Identity,
    tenant: web::Path<i64>,
    query: web::Query<NoticeQuery>,
) -> Result<HttpResponse, AppError> {
    let (tenant_id, user_id) = (tenant.into_inner(), identity.user_id());
    let ((role, name, members, invitations), settings) = state
        .db
        .run(move |conn| {
            Ok::<_, AppError>((
                load_workspace(conn, tenant_id, user_id)?,
                super::defaults::load(conn, tenant_id, user_id)?,
            ))
        })
        .await?;
    let manage = invitations.is_some();
    let grantable: Vec<&str> = Role::ALL
        .into_iter()
        .filter(|r| Authorizer::may_grant(role, *r))
        .map(Role::as_str)
        .collect();
    let members: Vec<_> = members
        .iter()
        .map(|m| {
            let me = m.user_id == user_id;
            json!({
                "user_id": m.user_id,
                "email": m.email,
                "name": m.name,
                "role": m.role,
                "me": me,
                "joined": m.joined_at.format("%Y-%m-%d").to_string(),
                "can_change": Authorizer::may_manage(role, m.role),
                "can_remove": Authorizer::may_manage(role, m.role) || me,
            })
        })
        .collect();
    let invitations: Vec<_> = invitations
        .iter()
        .flatten()
        .map(|i| {
            json!({
                "id": i.id,
                "email": i.email,
                "role": i.role,
                "expires": i.expires_at.format("%Y-%m-%d").to_string(),
            })
        })
        .collect();
    let mut context = page.context(&state);
    context.insert("tenant_id", &tenant_id);
    context.insert("tenant_name", &name);
    context.insert("my_role", role.as_str());
    context.insert("manage", &manage);
    context.insert("grantable", &grantable);
    context.insert("members", &members);
    context.insert(
        "invitations",
        &if manage { invitations } else { Vec::new() },
    );
    context.insert("settings", &settings);
    context.insert(
        "can_configure",
        &Authorizer::can(role, Permission::ManageTenant),
    );
    context.insert("notice", &query.notice);
    context.insert("error", &query.error);
    html(&state, "tenancy/workspace.html", &context, StatusCode::OK)
}

/// Back to the workspace page with a notice, or with the error's message.
fn back(tenant_id: i64, outcome: Result<&str, AppError>) -> Result<HttpResponse, AppError> {
    crate::web::pages::back_to(&format!("/workspaces/{tenant_id}"), outcome)
}

#[derive(Deserialize)]
pub struct InviteForm {
    email: String,
    role: String,
}

async fn invite_form(
    state: web::Data<AppState>,
    identity: Identity,
    tenant: web::Path<i64>,
    form: web::Form<InviteForm>,
) -> Result<HttpResponse, AppError> {
    let tenant_id = tenant.into_inner();
    let outcome = create_invitation(
        &state,
        identity.user_id(),
        &identity.session.display_name,
        tenant_id,
        &form.email,
        &form.role,
    )
    .await
    .map(|_| "invited");
    back(tenant_id, outcome)
}

async fn role_form(
    state: web::Data<AppState>,
    request: HttpRequest,
    identity: Identity,
    path: web::Path<(i64, i64)>,
    form: web::Form<RoleChange>,
) -> Result<HttpResponse, AppError> {
    let (tenant_id, target) = path.into_inner();
    let outcome = match form.role.parse::<Role>() {
        Ok(role) => change(
            &state,
            identity.user_id(),
            tenant_id,
            target,
            Change::Role(role),
            crate::web::client_ip(&request),
        )
        .await
        .map(|()| "role_changed"),
        Err(message) => Err(AppError::BadRequest(message)),
    };
    back(tenant_id, outcome)
}

async fn remove_form(
    state: web::Data<AppState>,
    request: HttpRequest,
    identity: Identity,
    path: web::Path<(i64, i64)>,
) -> Result<HttpResponse, AppError> {
    let (tenant_id, target) = path.into_inner();
    let outcome = change(
        &state,
        identity.user_id(),
        tenant_id,
        target,
        Change::Remove,
        crate::web::client_ip(&request),
    )
    .await;
    if outcome.is_ok() && target == identity.user_id() {
        return Ok(HttpResponse::SeeOther()
            .insert_header((header::LOCATION, "/workspaces"))
            .finish());
    }
    back(tenant_id, outcome.map(|()| "removed"))
}

async fn revoke_form(
    state: web::Data<AppState>,
    identity: Identity,
    path: web::Path<(i64, i64)>,
) -> Result<HttpResponse, AppError> {
    let (tenant_id, invitation_id) = path.into_inner();
    let outcome = revoke_invitation(&state, identity.user_id(), tenant_id, invitation_id)
        .await
        .map(|()| "invitation_revoked");
    back(tenant_id, outcome)
}

/// This module's part of the OpenAPI document (`/api/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(api_members, api_change_role, api_remove, api_revoke_invitation))]
pub struct ApiDoc;
