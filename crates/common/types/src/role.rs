//! Workspace roles. Each role includes every permission of the roles before it:
//! Viewer (list, download) < Editor (+ upload, rename, edit) < Admin (+ delete, restore, manage members below
//! Admin) < Owner (+ delete the workspace, manage Admins, transfer ownership).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A member's role in a workspace; ordered so that `a >= b` means "a may do everything b may".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// List and download.
    Viewer,
    /// Also upload, rename and edit.
    Editor,
    /// Also delete, restore, and manage members below Admin.
    Admin,
    /// Also delete the workspace, manage Admins and transfer ownership.
    Owner,
}

impl Role {
    /// All roles, lowest first.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Editor, Role::Admin, Role::Owner];

    /// The role's rank, 0 (Viewer) to 3 (Owner): the number end-to-end encrypted workspaces' signed
    /// membership entries carry.
    pub const fn rank(self) -> u8 {
        self as u8
    }

    /// The role of a rank; None outside 0..=3.
    pub fn from_rank(rank: u8) -> Option<Role> {
        Self::ALL.get(usize::from(rank)).copied()
    }

    /// The stable lower-case name used in the API, the CLI and the database.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of viewer, editor, admin, owner.
#[derive(Debug, thiserror::Error)]
#[error("unknown role {0:?}: use one of viewer, editor, admin, owner")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "viewer" => Ok(Role::Viewer),
            "editor" => Ok(Role::Editor),
            "admin" => Ok(Role::Admin),
            "owner" => Ok(Role::Owner),
            _ => Err(UnknownRole(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_round_trip() {
        assert!(Role::Viewer < Role::Editor && Role::Editor < Role::Admin && Role::Admin < Role::Owner);
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().expect("parse"), r);
        }
        assert!("root".parse::<Role>().is_err());
        for (n, r) in Role::ALL.iter().enumerate() {
            assert_eq!((Role::from_rank(n as u8), r.rank()), (Some(*r), n as u8));
        }
        assert_eq!(Role::from_rank(4), None);
    }
}
