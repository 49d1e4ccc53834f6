//! Rooms: conversations inside a workspace (tenant), their members with room roles, and the
//! rules of who may do what in them. Messages are kept by the [`crate::history`] store; this
//! module decides, through the [`Authorizer`], whether a caller may read or write them.
//!
//! - A room is `public` (any member of the workspace can see, read and join it) or `private`
//!   (only its members know it exists: to everyone else it is 404, like a room that does not
//!   exist). A direct room belongs to exactly two people, one per pair.
//! - Room roles: owner > moderator > member > read-only. A workspace viewer joins public rooms
//!   read-only; a workspace admin may archive or delete any room of the workspace (but reads a
//!   private one only as its member).
//! - Members may be people, devices or the assistant (`member_kind`).

pub mod api;
pub mod hub;
pub use conclave_core::markdown;
pub mod pages;
pub mod protocol;
pub mod relay;
pub mod rooms;
pub mod ws;

use std::fmt;
use std::str::FromStr;

use chrono::NaiveDateTime;
use serde::Serialize;

use crate::tenancy::{Authorizer, Role};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RoomRole {
    #[serde(rename = "readonly")]
    ReadOnly,
    Member,
    Moderator,
    Owner,
}

impl RoomRole {
    pub const ALL: [RoomRole; 4] = [
        RoomRole::Owner,
        RoomRole::Moderator,
        RoomRole::Member,
        RoomRole::ReadOnly,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Moderator => "moderator",
            Self::Member => "member",
            Self::ReadOnly => "readonly",
        }
    }
}

impl fmt::Display for RoomRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RoomRole {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let wanted = text.trim().to_ascii_lowercase().replace(['-', '_'], "");
        Self::ALL
            .into_iter()
            .find(|role| role.as_str() == wanted)
            .ok_or_else(|| {
                format!("role: {text:?} is not one of owner, moderator, member, readonly")
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    Public,
    Private,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Private => "private",
        }
    }
}

impl FromStr for Visibility {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "public" => Ok(Self::Public),
            "private" => Ok(Self::Private),
            other => Err(format!(
                "visibility: {other:?} is not one of public, private"
            )),
        }
    }
}

/// How a conversation's history is kept (see the `history` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Privacy {
    Standard,
    Private,
    Ephemeral,
}

impl Privacy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Private => "private",
            Self::Ephemeral => "ephemeral",
        }
    }
}

impl FromStr for Privacy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "standard" => Ok(Self::Standard),
            "private" => Ok(Self::Private),
            "ephemeral" => Ok(Self::Ephemeral),
            other => Err(format!(
                "privacy: {other:?} is not one of standard, private, ephemeral"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomKind {
    Room,
    Direct,
}

#[derive(Debug, Clone, Serialize)]
pub struct Room {
    pub id: i64,
    pub tenant_id: i64,
    pub kind: RoomKind,
    pub name: String,
    pub topic: String,
    pub visibility: Visibility,
    pub privacy: Privacy,
    pub retention_days: Option<i32>,
    pub legal_hold: bool,
    #[serde(serialize_with = "crate::time::serialize_opt")]
    pub archived_at: Option<NaiveDateTime>,
    #[serde(serialize_with = "crate::time::serialize")]
    pub created_at: NaiveDateTime,
    #[serde(serialize_with = "crate::time::serialize")]
    pub updated_at: NaiveDateTime,
}

/// Everything a permission decision about a room looks at.
#[derive(Debug, Clone)]
pub struct RoomAccess {
    pub room: Room,
    /// The caller's role in the room's workspace.
    pub tenant_role: Role,
    /// The caller's role in the room, if they are a member.
    pub room_role: Option<RoomRole>,
}

/// What someone may want to do in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomAction {
    /// See the room and read its history.
    Read,
    /// Become a member of a public room.
    Join,
    Post,
    /// Add someone to the room.
    Invite,
    /// Change the name or topic.
    Rename,
    /// Archive (read-only for everyone) or unarchive.
    Archive,
    Delete,
    /// Delete other people's messages.
    Moderate,
    /// Set the room's retention.
    SetRetention,
    /// Put the room under legal hold (exempt from retention), or lift it.
    LegalHold,
    /// Download the whole history (everyone's messages) as JSON.
    Export,
}

impl Authorizer {
    /// The one decision about room actions; pages offer an action only when this says yes.
    pub fn room(access: &RoomAccess, action: RoomAction) -> bool {
        let room = &access.room;
        let role = access.room_role;
        let archived = room.archived_at.is_some();
        let direct = room.kind == RoomKind::Direct;
        let workspace_admin = access.tenant_role.at_least(Role::Admin);
        let at_least = |wanted: RoomRole| role.is_some_and(|r| r >= wanted);
        match action {
            RoomAction::Read => {
                role.is_some() || (room.visibility == Visibility::Public && !direct)
            }
            RoomAction::Join => {
                role.is_none() && room.visibility == Visibility::Public && !direct && !archived
            }
            RoomAction::Post => at_least(RoomRole::Member) && !archived,
            RoomAction::Invite => {
                !direct
                    && !archived
                    // A private room is personal: its key opens with one person's password.
                    && room.privacy != Privacy::Private
                    && (at_least(RoomRole::Moderator)
                        || (room.visibility == Visibility::Public && at_least(RoomRole::Member)))
            }
            RoomAction::Rename => !direct && !archived && at_least(RoomRole::Moderator),
            RoomAction::Archive | RoomAction::SetRetention => {
                at_least(RoomRole::Owner) || workspace_admin
            }
            RoomAction::Delete => (!direct && at_least(RoomRole::Owner)) || workspace_admin,
            RoomAction::Moderate => at_least(RoomRole::Moderator),
            RoomAction::LegalHold => workspace_admin,
            // The room's owners answer for its history; a workspace admin who is not a member
            // does not get everyone's words through this door.
            RoomAction::Export => at_least(RoomRole::Owner),
        }
    }

    /// Whether `actor` may remove a member who has `target`, or change their role: a
    /// moderator or owner, and only for members below them (owners manage owners).
    pub fn room_may_manage(access: &RoomAccess, target: RoomRole) -> bool {
        access.room.kind == RoomKind::Room
            && match access.room_role {
                Some(RoomRole::Owner) => true,
                Some(RoomRole::Moderator) => target < RoomRole::Moderator,
                _ => false,
            }
    }

    /// Whether `actor` may hand out `role` (never above their own).
    pub fn room_may_grant(access: &RoomAccess, role: RoomRole) -> bool {
        access.room.kind == RoomKind::Room
            && access
                .room_role
                .is_some_and(|mine| mine >= RoomRole::Moderator && mine >= role)
    }

    /// The role someone gets when they join or are added without one: members, except
    /// workspace viewers, who read.
    pub fn default_room_role(tenant_role: Role) -> RoomRole {
        if tenant_role.at_least(Role::Operator) {
            RoomRole::Member
        } else {
            RoomRole::ReadOnly
        }
    }

    /// Creating rooms needs a workspace role above viewer; anyone may open a direct room.
    pub fn may_create_room(tenant_role: Role) -> bool {
        tenant_role.at_least(Role::Operator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(
        visibility: Visibility,
        tenant_role: Role,
        room_role: Option<RoomRole>,
    ) -> RoomAccess {
        let now = chrono::Utc::now().naive_utc();
        RoomAccess {
            room: Room {
                id: 1,
                tenant_id: 1,
                kind: RoomKind::Room,
                name: "general".to_owned(),
                topic: String::new(),
                visibility,
                privacy: Privacy::Standard,
                retention_days: None,
                legal_hold: false,
                archived_at: None,
                created_at: now,
                updated_at: now,
            },
            tenant_role,
            room_role,
        }
    }

    #[test]
    fn room_rules() {
        use RoomAction::*;
        let outsider = access(Visibility::Private, Role::Admin, None);
        assert!(
            !Authorizer::room(&outsider, Read),
            "private rooms are for members"
        );
        assert!(
            Authorizer::room(&outsider, Delete),
            "workspace admins may delete"
        );
        let passer_by = access(Visibility::Public, Role::Viewer, None);
        assert!(Authorizer::room(&passer_by, Read) && Authorizer::room(&passer_by, Join));
        assert!(!Authorizer::room(&passer_by, Post));
        let reader = access(Visibility::Public, Role::Viewer, Some(RoomRole::ReadOnly));
        assert!(!Authorizer::room(&reader, Post) && !Authorizer::room(&reader, Invite));
        let member = access(Visibility::Private, Role::Operator, Some(RoomRole::Member));
        assert!(Authorizer::room(&member, Post) && !Authorizer::room(&member, Invite));
        assert!(!Authorizer::room_may_manage(&member, RoomRole::ReadOnly));
        let moderator = access(
            Visibility::Private,
            Role::Operator,
            Some(RoomRole::Moderator),
        );
        assert!(Authorizer::room(&moderator, Invite) && Authorizer::room(&moderator, Moderate));
        assert!(Authorizer::room_may_manage(&moderator, RoomRole::Member));
        assert!(!Authorizer::room_may_manage(
            &moderator,
            RoomRole::Moderator
        ));
        assert!(!Authorizer::room_may_grant(&moderator, RoomRole::Owner));
        let mut archived = access(Visibility::Public, Role::Owner, Some(RoomRole::Owner));
        archived.room.archived_at = Some(archived.room.created_at);
        assert!(!Authorizer::room(&archived, Post) && Authorizer::room(&archived, Read));
        assert_eq!("read-only".parse::<RoomRole>(), Ok(RoomRole::ReadOnly));
    }
}
