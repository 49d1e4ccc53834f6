//! People and workspaces: `/admin/users` (search, disable, unlock, reset 2FA, change role,
//! sign out everywhere) and `/admin/tenants` (create, plan, members).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Action, Input, Notice, Staff, action, answer, audited, context, input, timestamp};
use crate::audit;
use crate::db::write_transaction;
use crate::error::AppError;
use crate::schema::{memberships, tenants, totp_secrets, users};
use crate::tenancy::{Authorizer, Role};
use crate::web::pages::{Page, html};
use crate::web::{AppState, get, resource};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/admin/users", users_page))
        .service(get("/api/v1/admin/users", users_api))
        .service(
            resource("/admin/tenants")
                .get(tenants_page)
                .post(create_tenant),
        )
        .service(
            resource("/api/v1/admin/tenants")
                .get(tenants_api)
                .post(create_tenant),
        )
        .service(get("/api/v1/admin/tenants/{id}/members", members_api));
    action(cfg, "/api/v1/admin/users/{id}/disable", disable);
    action(cfg, "/api/v1/admin/users/{id}/enable", enable);
    action(cfg, "/api/v1/admin/users/{id}/unlock", unlock);
    action(cfg, "/api/v1/admin/users/{id}/sign-out", sign_out);
    action(cfg, "/api/v1/admin/users/{id}/reset-2fa", reset_two_factor);
    action(cfg, "/api/v1/admin/users/{id}/role", change_role);
    action(cfg, "/api/v1/admin/tenants/{id}/plan", change_plan);
}

use super::lower;

#[derive(Deserialize, Default)]
struct Search {
    q: Option<String>,
    #[serde(flatten)]
    notice: NoticeFields,
}

#[derive(Deserialize, Default)]
struct NoticeFields {
    notice: Option<String>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct UserRow {
    id: i64,
    email: String,
    display_name: String,
    verified: bool,
    disabled: bool,
    locked_until: Option<String>,
    failed_logins: i32,
    two_factor: bool,
    /// Their staff role (admin powers), if any.
    staff_role: Option<Role>,
    workspaces: Vec<String>,
    created_at: String,
}

const PAGE_SIZE: i64 = 200;

async fn load_users(state: &AppState, q: Option<String>) -> Result<Vec<UserRow>, AppError> {
    let q = q.map(|q| q.trim().to_lowercase()).filter(|q| !q.is_empty());
    state
        .db
        .run(move |conn| -> Result<_, AppError> {
            type Row = (
                i64,
                String,
                String,
                Option<NaiveDateTime>,
                Option<NaiveDateTime>,
                Option<NaiveDateTime>,
                i32,
                NaiveDateTime,
                Option<String>,
            );
            let mut query = users::table
                .order(users::id)
                .limit(PAGE_SIZE)
                .select((
                    users::id,
                    users::email,
                    users::display_name,
                    users::email_verified_at,
                    users::disabled_at,
                    users::locked_until,
                    users::failed_logins,
                    users::created_at,
                    users::staff_role,
                ))
                .into_boxed();
            if let Some(q) = &q {
                let pattern = super::contains_pattern(q);
                query = query.filter(
                    lower(users::email)
                        .like(pattern.clone())
                        .escape('\\')
                        .or(lower(users::display_name).like(pattern).escape('\\')),
                );
            }
            let rows: Vec<Row> = query.load(conn)?;
            let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
            let with_2fa: Vec<i64> = totp_secrets::table
                .filter(totp_secrets::user_id.eq_any(&ids))
                .select(totp_secrets::user_id)
                .load(conn)?;
            let places = crate::tenancy::memberships_of(conn, &ids)?;
            let now = Utc::now().naive_utc();
            Ok(rows
                .into_iter()
                .map(
                    |(
                        id,
                        email,
                        display_name,
                        verified,
                        disabled,
                        locked,
                        failed,
                        created,
                        staff_role,
                    )| {
                        let mine: Vec<_> = places.iter().filter(|(u, _)| *u == id).collect();
                        UserRow {
                            id,
                            email,
                            display_name,
                            verified: verified.is_some(),
                            disabled: disabled.is_some(),
                            locked_until: locked.filter(|t| *t > now).map(timestamp),
                            failed_logins: failed,
                            two_factor: with_2fa.contains(&id),
                            staff_role: staff_role.and_then(|r| r.parse().ok()),
                            workspaces: mine
                                .iter()
                                .map(|(_, m)| format!("{} ({})", m.tenant_slug, m.role))
                                .collect(),
                            created_at: timestamp(created),
                        }
                    },
                )
                .collect())
        })
        .await
}

async fn users_page(
    state: web::Data<AppState>,
    page: Page,
    staff: Staff,
    query: web::Query<Search>,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    let Search { q, notice } = query.into_inner();
    let users = load_users(&state, q.clone()).await?;
    let mut context = context(&state, &page, &staff, "users");
    context.insert("users", &users);
    context.insert("q", &q.unwrap_or_default());
    context.insert("me", &staff.user_id());
    context.insert("roles", &Role::ALL);
    Notice {
        notice: notice.notice,
        error: notice.error,
    }
    .insert(&mut context);
    html(&state, "admin/users.html", &context, StatusCode::OK)
}

#[utoipa::path(get, path = "/api/v1/admin/users", tag = "admin", summary = "Search people (staff)", params(("q" = Option<String>, Query, description = "part of an email or name")), responses((status = 200, description = "OK"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn users_api(
    state: web::Data<AppState>,
    staff: Staff,
    query: web::Query<Search>,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    let users = load_users(&state, query.into_inner().q).await?;
    Ok(HttpResponse::Ok().json(json!({ "users": users })))
}

/// Someone the actor may act on: not above them on the staff.
async fn target(
    state: &AppState,
    staff: &Staff,
    user: i64,
) -> Result<(String, Option<Role>), AppError> {
    let found = state
        .db
        .run(move |conn| -> Result<_, AppError> {
            let email: Option<String> = users::table
                .find(user)
                .select(users::email)
                .first(conn)
                .optional()?;
            let role = crate::tenancy::staff_role_of(conn, user)?;
            Ok(email.map(|email| (email, role)))
        })
        .await?;
    let (email, role) = found.ok_or_else(|| AppError::NotFound("No such user.".to_owned()))?;
    if let Some(role) = role
        && !staff.role.at_least(role)
    {
        return Err(AppError::Forbidden(format!(
            "{email} is {role} on the staff, above your role ({}).",
            staff.role
        )));
    }
    Ok((email, role))
}

async fn set_disabled(
    state: &AppState,
    staff: &Staff,
    request: &HttpRequest,
    user: i64,
    disabled: bool,
) -> Result<serde_json::Value, AppError> {
    staff.require(Action::Operate)?;
    if disabled && user == staff.user_id() {
        return Err(AppError::Conflict(
            "You cannot disable your own account here.".to_owned(),
        ));
    }
    let (email, _) = target(state, staff, user).await?;
    let who = super::Who::of(staff, request);
    let base = crate::audit::AuditEvent {
        actor_user_id: Some(who.actor),
        ip: who.ip,
        user_agent: who.user_agent,
        ..crate::audit::AuditEvent::default()
    };
    let (changed, ended) = state
        .db
        .run(move |conn| {
            crate::auth::users::set_disabled_by_id(conn, user, disabled, base)
                .map_err(AppError::from)
        })
        .await?;
    // Every session ends at once, on every node (the revocation is announced).
    state.sessions.forget_all(&ended).await;
    Ok(json!({ "user_id": user, "email": email, "disabled": disabled, "changed": changed }))
}

#[utoipa::path(post, path = "/api/v1/admin/users/{id}/disable", params(("id" = i64, Path)), tag = "admin", summary = "Disable an account and end its sessions (operators)", responses((status = 200, description = "Done: before and after"), (status = 409, description = "Your own account", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "No such thing", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn disable(
    state: web::Data<AppState>,
    staff: Staff,
    request: HttpRequest,
    path: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let outcome = set_disabled(&state, &staff, &request, path.into_inner(), true).await;
    answer(&request, "/admin/users", "disabled", outcome)
}

#[utoipa::path(post, path = "/api/v1/admin/users/{id}/enable", params(("id" = i64, Path)), tag = "admin", summary = "Enable an account (operators)", responses((status = 200, description = "Done: before and after"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "No such thing", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn enable(
    state: web::Data<AppState>,
    staff: Staff,
    request: HttpRequest,
    path: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let outcome = set_disabled(&state, &staff, &request, path.into_inner(), false).await;
    answer(&request, "/admin/users", "enabled", outcome)
}

#[utoipa::path(post, path = "/api/v1/admin/users/{id}/unlock", params(("id" = i64, Path)), tag = "admin", summary = "Clear a lockout and the failure count (operators)", responses((status = 200, description = "Done: before and after"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "No such thing", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn unlock(
    state: web::Data<AppState>,
    staff: Staff,
    request: HttpRequest,
    path: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let user = path.into_inner();
    let outcome = async {
        staff.require(Action::Operate)?;
        let (email, _) = target(&state, &staff, user).await?;
        let who = super::Who::of(&staff, &request);
        state
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| -> Result<_, AppError> {
                    let (failed, locked): (i32, Option<NaiveDateTime>) = users::table
                        .find(user)
                        .select((users::failed_logins, users::locked_until))
                        .first(tx)?;
                    let now = Utc::now().naive_utc();
                    diesel::update(users::table.find(user))
                        .set((
                            users::failed_logins.eq(0),
                            users::locked_until.eq(None::<NaiveDateTime>),
                        ))
                        .execute(tx)?;
                    let entry = audited(
                        "user.unlocked",
                        &who,
                        format!("user:{user}"),
                        None,
                        json!({ "failed_logins": failed, "locked_until": locked.map(timestamp) }),
                        json!({ "failed_logins": 0, "locked_until": null }),
                    );
                    audit::record(tx, &entry, now)?;
                    Ok(json!({ "user_id": user, "email": email, "was_locked": locked.is_some_and(|t| t > now) }))
                })
            })
            .await
    }
    .await;
    answer(&request, "/admin/users", "unlocked", outcome)
}

#[utoipa::path(post, path = "/api/v1/admin/users/{id}/sign-out", params(("id" = i64, Path)), tag = "admin", summary = "End every session of a person (operators)", responses((status = 200, description = "Done: before and after"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "No such thing", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn sign_out(
    state: web::Data<AppState>,
    staff: Staff,
    request: HttpRequest,
    path: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let user = path.into_inner();
    let outcome = async {
        staff.require(Action::Operate)?;
        let (email, _) = target(&state, &staff, user).await?;
        let ended = state.sessions.revoke_all_for_user(user, None).await?;
        let who = super::Who::of(&staff, &request);
        let entry = audited(
            "user.signed_out_everywhere",
            &who,
            format!("user:{user}"),
            None,
            json!({ "sessions": ended }),
            json!({ "sessions": 0 }),
        );
        audit::record_now(&state.db, entry).await?;
        Ok(json!({ "user_id": user, "email": email, "sessions_ended": ended }))
    }
    .await;
    answer(&request, "/admin/users", "signed_out", outcome)
}

#[utoipa::path(post, path = "/api/v1/admin/users/{id}/reset-2fa", params(("id" = i64, Path)), tag = "admin", summary = "Remove a person's 2FA and end their sessions (admins)", responses((status = 200, description = "Done"), (status = 409, description = "2FA is not on", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "No such thing", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn reset_two_factor(
    state: web::Data<AppState>,
    staff: Staff,
    request: HttpRequest,
    path: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let user = path.into_inner();
    let outcome = async {
        staff.require(Action::Administer)?;
        let (email, _) = target(&state, &staff, user).await?;
        let who = super::Who::of(&staff, &request);
        let entry = audited(
            "2fa.reset_by_admin",
            &who,
            format!("user:{user}"),
            None,
            json!({ "two_factor": true }),
            json!({ "two_factor": false }),
        );
        state
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| -> Result<(), AppError> {
                    match crate::auth::two_factor::disable_in(tx, user) {
                        Ok(()) => {}
                        Err(crate::auth::two_factor::TwoFactorError::NotOn) => {
                            return Err(AppError::Conflict(
                                "Two-factor authentication is not on for this account.".to_owned(),
                            ));
                        }
                        Err(other) => return Err(AppError::internal(other)),
                    }
                    audit::record(tx, &entry, Utc::now().naive_utc())?;
                    Ok(())
                })
            })
            .await?;
        // Whoever holds a session may have got in with the lost factor: they sign in again.
        let ended = state.sessions.revoke_all_for_user(user, None).await?;
        Ok(json!({ "user_id": user, "email": email, "sessions_ended": ended }))
    }
    .await;
    answer(&request, "/admin/users", "two_factor_reset", outcome)
}

#[derive(Deserialize, utoipa::ToSchema)]
struct RoleInput {
    /// The staff role: owner, admin, operator, viewer — or `none` to take admin access away.
    #[schema(schema_with = crate::api_docs::staff_role_or_none)]
    role: String,
}

#[utoipa::path(post, path = "/api/v1/admin/users/{id}/role", params(("id" = i64, Path)), tag = "admin", summary = "Set a staff role: owner, admin, operator, viewer or none (admins; never above one's own)", request_body = RoleInput, responses((status = 200, description = "Done: before and after"), (status = 409, description = "The last staff owner", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "No such thing", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn change_role(
    state: web::Data<AppState>,
    staff: Staff,
    request: HttpRequest,
    path: web::Path<i64>,
    body: Input<RoleInput>,
) -> Result<HttpResponse, AppError> {
    let user = path.into_inner();
    let wanted = input(body).role;
    let outcome = async {
        staff.require(Action::Administer)?;
        let new = match wanted.trim() {
            "none" => None,
            other => Some(other.parse::<Role>().map_err(AppError::BadRequest)?),
        };
        let (email, current) = target(&state, &staff, user).await?;
        if let Some(role) = new
            && !Authorizer::may_grant(staff.role, role)
        {
            return Err(AppError::Forbidden(format!(
                "You cannot give a staff role ({role}) above your own ({}).",
                staff.role
            )));
        }
        let who = super::Who::of(&staff, &request);
        state
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| -> Result<(), AppError> {
                    // Re-read under the write lock: two admins demoting the last two owners
                    // at once must not both succeed.
                    let now_role = crate::tenancy::staff_role_of(tx, user)?;
                    if now_role == Some(Role::Owner) && new != Some(Role::Owner) {
                        let owners: i64 = users::table
                            .filter(users::staff_role.eq(Role::Owner.as_str()))
                            .count()
                            .get_result(tx)?;
                        if owners <= 1 {
                            return Err(AppError::Conflict(
                                "Conclave needs a staff owner: make someone else owner first."
                                    .to_owned(),
                            ));
                        }
                    }
                    diesel::update(users::table.find(user))
                        .set(users::staff_role.eq(new.map(Role::as_str)))
                        .execute(tx)?;
                    let entry = audited(
                        "staff.role_changed",
                        &who,
                        format!("user:{user}"),
                        None,
                        json!({ "staff_role": now_role.map(Role::as_str) }),
                        json!({ "staff_role": new.map(Role::as_str) }),
                    );
                    audit::record(tx, &entry, Utc::now().naive_utc())?;
                    Ok(())
                })
            })
            .await?;
        Ok(json!({
            "user_id": user,
            "email": email,
            "before": current.map(Role::as_str),
            "after": new.map(Role::as_str),
        }))
    }
    .await;
    answer(&request, "/admin/users", "role_changed", outcome)
}

#[derive(Debug, Serialize)]
pub struct TenantRow {
    id: i64,
    slug: String,
    name: String,
    plan: String,
    plan_renews_at: Option<String>,
    members: Vec<MemberRow>,
    created_at: String,
}

#[derive(Debug, Serialize)]
pub struct MemberRow {
    user_id: i64,
    email: String,
    display_name: String,
    role: String,
}

async fn load_tenants(state: &AppState, only: Option<i64>) -> Result<Vec<TenantRow>, AppError> {
    state
        .db
        .run(move |conn| -> Result<_, AppError> {
            let mut query = tenants::table
                .order(tenants::id)
                .limit(PAGE_SIZE)
                .select((
                    tenants::id,
                    tenants::slug,
                    tenants::name,
                    tenants::plan,
                    tenants::plan_renews_at,
                    tenants::created_at,
                ))
                .into_boxed();
            if let Some(id) = only {
                query = query.filter(tenants::id.eq(id));
            }
            let rows: Vec<(
                i64,
                String,
                String,
                String,
                Option<NaiveDateTime>,
                NaiveDateTime,
            )> = query.load(conn)?;
            let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
            let members: Vec<(i64, i64, String, String, String)> = memberships::table
                .inner_join(users::table)
                .filter(memberships::tenant_id.eq_any(&ids))
                .order((memberships::tenant_id, users::id))
                .select((
                    memberships::tenant_id,
                    users::id,
                    users::email,
                    users::display_name,
                    memberships::role,
                ))
                .load(conn)?;
            Ok(rows
                .into_iter()
                .map(|(id, slug, name, plan, renews, created)| TenantRow {
                    id,
                    slug,
                    name,
                    plan,
                    plan_renews_at: renews.map(timestamp),
                    members: members
                        .iter()
                        .filter(|m| m.0 == id)
                        .map(|m| MemberRow {
                            user_id: m.1,
                            email: m.2.clone(),
                            display_name: m.3.clone(),
                            role: m.4.clone(),
                        })
                        .collect(),
                    created_at: timestamp(created),
                })
                .collect())
        })
        .await
}

async fn tenants_page(
    state: web::Data<AppState>,
    page: Page,
    staff: Staff,
    query: web::Query<Notice>,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    let tenants = load_tenants(&state, None).await?;
    let plans: Vec<String> = crate::billing::plans::effective(state.billing.settings())
        .into_keys()
        .collect();
    let mut context = context(&state, &page, &staff, "tenants");
    context.insert("tenants", &tenants);
    context.insert("plans", &plans);
    query.into_inner().insert(&mut context);
    html(&state, "admin/tenants.html", &context, StatusCode::OK)
}

#[utoipa::path(get, path = "/api/v1/admin/tenants", tag = "admin", summary = "Every workspace with its plan and members (staff)", responses((status = 200, description = "OK"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn tenants_api(state: web::Data<AppState>, staff: Staff) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    let tenants = load_tenants(&state, None).await?;
    Ok(HttpResponse::Ok().json(json!({ "tenants": tenants })))
}

#[utoipa::path(get, path = "/api/v1/admin/tenants/{id}/members", tag = "admin", summary = "A workspace's members (staff)", params(("id" = i64, Path)), responses((status = 200, description = "OK"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn members_api(
    state: web::Data<AppState>,
    staff: Staff,
    path: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    staff.require(Action::View)?;
    let tenant = load_tenants(&state, Some(path.into_inner()))
        .await?
        .pop()
        .ok_or_else(|| AppError::NotFound("No such workspace.".to_owned()))?;
    Ok(HttpResponse::Ok().json(json!({ "members": tenant.members })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = AdminNewTenant)]
struct NewTenant {
    #[schema(
        max_length = 80,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    name: String,
    #[schema(pattern = r"^[a-z0-9][a-z0-9-]{0,38}[a-z0-9]$")]
    slug: String,
    /// The account that will own it.
    #[schema(format = Email)]
    owner_email: String,
}

#[utoipa::path(post, path = "/api/v1/admin/tenants", tag = "admin", summary = "Create a workspace owned by an existing account (admins)", request_body = NewTenant, responses((status = 200, description = "Created"), (status = 409, description = "Slug taken", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "No such thing", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn create_tenant(
    state: web::Data<AppState>,
    staff: Staff,
    request: HttpRequest,
    body: Input<NewTenant>,
) -> Result<HttpResponse, AppError> {
    let body = input(body);
    let outcome = async {
        staff.require(Action::Administer)?;
        let name =
            crate::auth::users::parse_display_name(&body.name).map_err(AppError::BadRequest)?;
        let slug = crate::tenancy::handlers::parse_slug(&body.slug)?;
        let email = crate::auth::Email::parse(&body.owner_email)
            .map_err(|e| AppError::BadRequest(format!("owner_email: {e}")))?;
        let who = super::Who::of(&staff, &request);
        state
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| -> Result<_, AppError> {
                    let owner =
                        crate::auth::users::find_by_email(tx, &email)?.ok_or_else(|| {
                            AppError::BadRequest(
                                "owner_email: no account has this address".to_owned(),
                            )
                        })?;
                    let now = Utc::now().naive_utc();
                    let id = crate::db::unless_taken(
                        diesel::insert_into(tenants::table)
                            .values((
                                tenants::slug.eq(&slug),
                                tenants::name.eq(&name),
                                tenants::created_at.eq(now),
                            ))
                            .returning(tenants::id)
                            .get_result::<i64>(tx),
                    )?
                    .ok_or_else(|| {
                        AppError::Conflict("slug: is taken; choose another".to_owned())
                    })?;
                    crate::tenancy::add_member(tx, id, owner.id, Role::Owner, now)?;
                    let entry = audited(
                        "tenant.created",
                        &who,
                        format!("tenant:{id}"),
                        Some(id),
                        json!(null),
                        json!({ "slug": slug, "name": name, "owner": owner.id }),
                    );
                    audit::record(tx, &entry, now)?;
                    Ok(json!({ "id": id, "slug": slug, "name": name, "owner_user_id": owner.id }))
                })
            })
            .await
    }
    .await;
    answer(&request, "/admin/tenants", "tenant_created", outcome)
}

#[derive(Deserialize, utoipa::ToSchema)]
struct PlanInput {
    plan: String,
}

#[utoipa::path(post, path = "/api/v1/admin/tenants/{id}/plan", params(("id" = i64, Path)), tag = "admin", summary = "Put a workspace on a plan (admins)", request_body = PlanInput, responses((status = 200, description = "Done: before and after"), (status = 403, description = "No staff role, or not enough of one", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "No such thing", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn change_plan(
    state: web::Data<AppState>,
    staff: Staff,
    request: HttpRequest,
    path: web::Path<i64>,
    body: Input<PlanInput>,
) -> Result<HttpResponse, AppError> {
    let tenant = path.into_inner();
    let plan = input(body).plan.trim().to_owned();
    let outcome = async {
        staff.require(Action::Administer)?;
        let plans = crate::billing::plans::effective(state.billing.settings());
        if !plans.contains_key(&plan) {
            return Err(AppError::BadRequest(format!(
                "plan: {plan:?} is not one of {}",
                plans.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        let who = super::Who::of(&staff, &request);
        let chosen = plan.clone();
        let before = state
            .db
            .run(move |conn| {
                write_transaction(conn, |tx| -> Result<_, AppError> {
                    let before: Option<String> = tenants::table
                        .find(tenant)
                        .select(tenants::plan)
                        .first(tx)
                        .optional()?;
                    let before = before
                        .ok_or_else(|| AppError::NotFound("No such workspace.".to_owned()))?;
                    // Set by hand: no renewal date (it runs until changed again).
                    crate::billing::plans::set_plan(tx, tenant, &chosen, None)?;
                    let entry = audited(
                        "tenant.plan_changed",
                        &who,
                        format!("tenant:{tenant}"),
                        Some(tenant),
                        json!({ "plan": before }),
                        json!({ "plan": chosen }),
                    );
                    audit::record(tx, &entry, Utc::now().naive_utc())?;
                    Ok(before)
                })
            })
            .await?;
        state.billing.gate_forget(tenant);
        Ok(json!({ "tenant_id": tenant, "before": before, "after": plan }))
    }
    .await;
    answer(&request, "/admin/tenants", "plan_changed", outcome)
}
