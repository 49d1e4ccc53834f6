//! Tenants (workspaces) and memberships: every user belongs to tenants with one role each,
//! owner > admin > operator > viewer. The `Authorizer` seam that decides permissions from
//! these roles builds on this module.

pub mod defaults;
pub mod handlers;
pub mod members;

use std::fmt;
use std::str::FromStr;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::Serialize;

use crate::db::DbConnection;
use crate::schema::{memberships, tenants};

/// The workspace every installation starts with (created by the accounts migration).
pub const DEFAULT_TENANT_SLUG: &str = "default";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = WorkspaceRole)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Operator,
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Owner, Role::Admin, Role::Operator, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Viewer => "viewer",
        }
    }

    /// Higher is more powerful; a role includes every permission of the roles below it.
    pub fn rank(self) -> u8 {
        match self {
            Self::Owner => 4,
            Self::Admin => 3,
            Self::Operator => 2,
            Self::Viewer => 1,
        }
    }

    pub fn at_least(self, other: Role) -> bool {
        self.rank() >= other.rank()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|role| role.as_str() == text.trim().to_ascii_lowercase())
            .ok_or_else(|| format!("role: {text:?} is not one of owner, admin, operator, viewer"))
    }
}

/// What someone may do in a tenant. Every permission check in Conclave goes through
/// [`Authorizer::can`]; pages offer an action only when it says yes, and the API answers 403
/// when called anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// See the tenant, its members and its rooms.
    View,
    /// Operate devices and day-to-day resources.
    Operate,
    /// Invite people and change members' roles (never above one's own).
    ManageMembers,
    /// Rename or delete the tenant, manage billing.
    ManageTenant,
}

/// The one place that decides permissions from roles.
pub struct Authorizer;

impl Authorizer {
    pub fn minimum_role(permission: Permission) -> Role {
        match permission {
            Permission::View => Role::Viewer,
            Permission::Operate => Role::Operator,
            Permission::ManageMembers => Role::Admin,
            Permission::ManageTenant => Role::Owner,
        }
    }

    pub fn can(role: Role, permission: Permission) -> bool {
        role.at_least(Self::minimum_role(permission))
    }

    /// Whether `inviter` may hand out `role`: never a role above their own.
    pub fn may_grant(inviter: Role, role: Role) -> bool {
        Self::can(inviter, Permission::ManageMembers) && inviter.at_least(role)
    }

    /// Whether `actor` may change the role of, or remove, a member who has `target`: only
    /// with `ManageMembers`, and never someone above them.
    pub fn may_manage(actor: Role, target: Role) -> bool {
        Self::can(actor, Permission::ManageMembers) && actor.at_least(target)
    }
}

/// `user_id`'s role in `tenant_id`, if they are a member.
pub fn role_of(conn: &mut DbConnection, tenant_id: i64, user_id: i64) -> QueryResult<Option<Role>> {
    let role: Option<String> = memberships::table
        .find((tenant_id, user_id))
        .select(memberships::role)
        .first(conn)
        .optional()?;
    Ok(role.and_then(|r| r.parse().ok()))
}

/// `user_id`'s role in `tenant_id` and the tenant's name, if they are a member.
pub fn place_of(
    conn: &mut DbConnection,
    tenant_id: i64,
    user_id: i64,
) -> QueryResult<Option<(Role, String)>> {
    let row: Option<(String, String)> = memberships::table
        .inner_join(tenants::table)
        .filter(memberships::tenant_id.eq(tenant_id))
        .filter(memberships::user_id.eq(user_id))
        .select((memberships::role, tenants::name))
        .first(conn)
        .optional()?;
    Ok(row.and_then(|(role, name)| Some((role.parse().ok()?, name))))
}

/// Every tenant `user_id` is in, oldest first: `(id, slug, name, role)`.
pub fn tenants_of(
    conn: &mut DbConnection,
    user_id: i64,
) -> QueryResult<Vec<(i64, String, String, String)>> {
    memberships::table
        .inner_join(tenants::table)
        .filter(memberships::user_id.eq(user_id))
        .order(tenants::id)
        .select((tenants::id, tenants::slug, tenants::name, memberships::role))
        .load(conn)
}

/// A user's place in one tenant.
#[derive(Debug, Clone, Serialize)]
pub struct Membership {
    pub tenant_id: i64,
    pub tenant_slug: String,
    pub role: Role,
}

/// A person's staff role: their place in the admin area (`users.staff_role`), apart from
/// their workspace roles. `None`: no admin access.
pub fn staff_role_of(conn: &mut DbConnection, user_id: i64) -> QueryResult<Option<Role>> {
    let role: Option<Option<String>> = crate::schema::users::table
        .find(user_id)
        .select(crate::schema::users::staff_role)
        .first(conn)
        .optional()?;
    Ok(role.flatten().and_then(|r| r.parse().ok()))
}

/// Deployment-wide powers (live connections, LLM providers, refunds, credit adjustments)
/// belong to staff admins and owners. `what` ends the refusal: "Only Conclave admins {what}."
pub async fn require_deployment_admin(
    db: &crate::db::Db,
    user_id: i64,
    what: &str,
) -> Result<(), crate::error::AppError> {
    let role = db
        .run(move |conn| staff_role_of(conn, user_id).map_err(crate::error::AppError::from))
        .await?;
    if role.is_some_and(|r| r.at_least(Role::Admin)) {
        Ok(())
    } else {
        Err(crate::error::AppError::Forbidden(format!(
            "Only Conclave admins {what}."
        )))
    }
}

pub fn default_tenant_id(conn: &mut DbConnection) -> QueryResult<i64> {
    tenants::table
        .filter(tenants::slug.eq(DEFAULT_TENANT_SLUG))
        .select(tenants::id)
        .first(conn)
}

/// Serialises decisions about a tenant's members (e.g. "is there an owner yet?") between
/// concurrent transactions. SQLite already runs one writer at a time.
pub fn lock_tenant(conn: &mut DbConnection, tenant_id: i64) -> QueryResult<()> {
    crate::db::lock_row(conn, crate::db::LockableTable::Tenants, tenant_id)
}

pub fn has_owner(conn: &mut DbConnection, tenant_id: i64) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        memberships::table
            .filter(memberships::tenant_id.eq(tenant_id))
            .filter(memberships::role.eq(Role::Owner.as_str())),
    ))
    .get_result(conn)
}

pub fn add_member(
    conn: &mut DbConnection,
    tenant_id: i64,
    user_id: i64,
    role: Role,
    now: NaiveDateTime,
) -> QueryResult<()> {
    diesel::insert_into(memberships::table)
        .values((
            memberships::tenant_id.eq(tenant_id),
            memberships::user_id.eq(user_id),
            memberships::role.eq(role.as_str()),
            memberships::created_at.eq(now),
        ))
        .execute(conn)
        .map(drop)
}

/// Every membership of each of `user_ids`, for listings.
pub fn memberships_of(
    conn: &mut DbConnection,
    user_ids: &[i64],
) -> QueryResult<Vec<(i64, Membership)>> {
    let rows: Vec<(i64, i64, String, String)> = memberships::table
        .inner_join(tenants::table)
        .filter(memberships::user_id.eq_any(user_ids))
        .order((memberships::user_id, tenants::id))
        .select((
            memberships::user_id,
            tenants::id,
            tenants::slug,
            memberships::role,
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .filter_map(|(user_id, tenant_id, tenant_slug, role)| {
            let role = role.parse().ok()?;
            Some((
                user_id,
                Membership {
                    tenant_id,
                    tenant_slug,
                    role,
                },
            ))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_the_permissions_of_the_roles_below() {
        use Permission::*;
        let table = [
            (Role::Viewer, [true, false, false, false]),
            (Role::Operator, [true, true, false, false]),
            (Role::Admin, [true, true, true, false]),
            (Role::Owner, [true, true, true, true]),
        ];
        for (role, expected) in table {
            let actual =
                [View, Operate, ManageMembers, ManageTenant].map(|p| Authorizer::can(role, p));
            assert_eq!(actual, expected, "{role}");
        }
        assert!(Authorizer::may_grant(Role::Admin, Role::Admin));
        assert!(
            !Authorizer::may_grant(Role::Admin, Role::Owner),
            "never above one's own role"
        );
        assert!(
            !Authorizer::may_grant(Role::Operator, Role::Viewer),
            "operators cannot invite"
        );
    }
}
