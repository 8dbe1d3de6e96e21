//! The closed set of audit events. Names are stable: they are stored in the audit log, queried by scripts
//! and documented; rename nothing, only add.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! audit_events {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)+) => {
        /// An auditable action.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        pub enum AuditEvent {
            $($(#[$doc])* #[serde(rename = $name)] $variant,)+
        }

        impl AuditEvent {
            /// Every event, for documentation and validation.
            pub const ALL: &'static [AuditEvent] = &[$(AuditEvent::$variant,)+];

            /// The stable dotted name (`auth.login`).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(AuditEvent::$variant => $name,)+
                }
            }
        }

        impl FromStr for AuditEvent {
            type Err = UnknownAuditEvent;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok(AuditEvent::$variant),)+
                    _ => Err(UnknownAuditEvent(s.to_owned())),
                }
            }
        }
    };
}

audit_events! {
    /// A login attempt (outcome success or failure, with the method).
    AuthLogin => "auth.login",
    /// A session ended by its own holder.
    AuthLogout => "auth.logout",
    /// An account was created.
    UserCreated => "user.created",
    /// Two-factor authentication (TOTP) was turned on.
    MfaEnabled => "auth.mfa.enabled",
    /// Two-factor authentication was turned off.
    MfaDisabled => "auth.mfa.disabled",
    /// New recovery codes replaced the old ones.
    MfaRecoveryCodes => "auth.mfa.recovery_codes",
    /// A session (device) was revoked from another one.
    DeviceRevoked => "device.revoked",
    /// A workspace was created.
    WorkspaceCreated => "workspace.created",
    /// A workspace and its key were destroyed.
    WorkspaceDeleted => "workspace.deleted",
    /// A member was added.
    MemberAdded => "member.added",
    /// A member was removed.
    MemberRemoved => "member.removed",
    /// An end-to-end encrypted workspace began a new key epoch (after a member left).
    WorkspaceKeyRotated => "workspace.key_rotated",
    /// A member's role changed.
    PermissionChanged => "permission.changed",
    /// A workspace setting changed.
    SettingsChanged => "settings.changed",
    /// A file version was committed.
    FileUpload => "file.upload",
    /// A file's content was read.
    FileAccess => "file.access",
    /// A file went to the trash.
    FileDelete => "file.delete",
    /// A file came back from the trash or an old version was made current.
    FileRestore => "file.restore",
    /// An API key was created.
    ApiKeyCreated => "apikey.created",
    /// An API key was used (recorded at most once a minute per key).
    ApiKeyUsed => "apikey.used",
    /// An API key got a new secret.
    ApiKeyRotated => "apikey.rotated",
    /// An API key was revoked.
    ApiKeyRevoked => "apikey.revoked",
    /// A share link was created.
    ShareCreated => "share.created",
    /// A share link was used to download (or refused).
    ShareAccessed => "share.accessed",
    /// A share link was revoked.
    ShareRevoked => "share.revoked",
    /// An account stored its end-to-end encryption keys.
    KeysCreated => "auth.keys.created",
    /// An account resealed its end-to-end keys under a new passphrase (after a recovery).
    KeysResealed => "auth.keys.resealed",
    /// A member was refused by a workspace policy (the IP allowlist).
    AccessDenied => "access.denied",
}

impl AuditEvent {
    /// The events a filter names: an exact name, or a prefix ending in `*` (`file.*`, `auth.mfa.*`).
    ///
    /// # Errors
    /// When it matches no event.
    pub fn matching(pattern: &str) -> Result<Vec<AuditEvent>, UnknownAuditEvent> {
        let pattern = pattern.trim();
        let found: Vec<AuditEvent> = match pattern.strip_suffix('*') {
            Some(prefix) => Self::ALL.iter().copied().filter(|e| e.as_str().starts_with(prefix)).collect(),
            None => pattern.parse().map(|e| vec![e])?,
        };
        if found.is_empty() {
            return Err(UnknownAuditEvent(pattern.to_owned()));
        }
        Ok(found)
    }
}

/// A name that is not an audit event.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown audit event {0:?}; events are named like auth.login, file.access or settings.changed (a trailing * matches a group, as in file.*)"
)]
pub struct UnknownAuditEvent(pub String);

impl fmt::Display for AuditEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the audited action succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It happened.
    Success,
    /// It was refused or failed.
    Failure,
}

impl Outcome {
    /// Stable name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_parse_back() {
        let mut seen = std::collections::HashSet::new();
        for e in AuditEvent::ALL {
            assert!(seen.insert(e.as_str()), "duplicate {e}");
            assert_eq!(e.as_str().parse::<AuditEvent>().expect("parse"), *e);
            assert_eq!(serde_json::to_string(e).expect("json"), format!("\"{}\"", e.as_str()));
        }
    }

    #[test]
    fn patterns_match_groups() {
        assert_eq!(AuditEvent::matching("auth.login").expect("exact"), vec![AuditEvent::AuthLogin]);
        let mfa = AuditEvent::matching("auth.mfa.*").expect("group");
        assert_eq!(mfa, vec![AuditEvent::MfaEnabled, AuditEvent::MfaDisabled, AuditEvent::MfaRecoveryCodes]);
        assert_eq!(AuditEvent::matching("*").expect("all").len(), AuditEvent::ALL.len());
        assert!(AuditEvent::matching("file.nope").is_err());
        assert!(AuditEvent::matching("nope.*").is_err());
    }
}
