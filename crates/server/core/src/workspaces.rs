//! Workspaces, their keys and their members.
//!
//! Each workspace gets two random 256-bit keys at creation: a data key that seals its chunks at rest and a
//! chunk-id key that keys its content addresses. Both are stored only wrapped by the server master key (which
//! lives in a file or the environment, never the database); deleting the workspace deletes the wrapped keys,
//! which makes every chunk it ever stored unreadable even if a backup of the chunk store survives.

use cloudsync_chunker::ChunkerParams;
use cloudsync_crypto::{SecretKey, unwrap_key, wrap_key};
use cloudsync_store::{MemberRecord, WorkspaceRecord};
use std::net::IpAddr;

use cloudsync_types::api::{MAX_ALLOWLIST_ENTRIES, MAX_NAME_BYTES, UpdateSettings, WorkspaceKeys};
use cloudsync_types::{AuditEvent, Cidr, Role, UserId, WorkspaceId, allowlist_permits};

use crate::{Access, Actor, AuditExt, Core, CoreError, CoreResult};

fn wrap_context(ws: WorkspaceId, which: &str) -> Vec<u8> {
    let mut c = ws.as_uuid().as_bytes().to_vec();
    c.extend_from_slice(which.as_bytes());
    c
}

const WRONG_MASTER_KEY: &str = "a workspace key does not open under the master key: the server is running with a different master \
     key (CLOUDSYNC_MASTER_KEY or security.master_key_file) than the one this data directory was created with; restore the original key";

/// Parses and canonicalises an allowlist: each entry a network or address, duplicates dropped, order kept.
fn canonical_allowlist(list: &[String]) -> CoreResult<Vec<String>> {
    if list.len() > MAX_ALLOWLIST_ENTRIES {
        return Err(CoreError::BadRequest(format!("an allowlist holds at most {MAX_ALLOWLIST_ENTRIES} networks")));
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for entry in list.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let c = entry.parse::<Cidr>().map_err(|e| CoreError::BadRequest(e.to_string()))?.to_string();
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}

fn check_name(name: &str) -> CoreResult<String> {
    let n = name.trim();
    if n.is_empty() || n.len() > MAX_NAME_BYTES || n.chars().any(char::is_control) {
        return Err(CoreError::BadRequest(format!(
            "a workspace name must be 1 to {MAX_NAME_BYTES} bytes without control characters"
        )));
    }
    Ok(n.to_owned())
}

impl Core {
    /// Creates a workspace owned by `actor`.
    ///
    /// # Errors
    /// Invalid name, a name the actor already uses, or E2EE (not available yet).
    pub async fn create_workspace(&self, actor: &Actor, name: &str, e2ee: bool) -> CoreResult<WorkspaceRecord> {
        if actor.api_key.as_ref().is_some_and(|k| k.workspaces.is_some() || k.role < Role::Admin) {
            return Err(CoreError::Forbidden(
                "only an API key with the admin role and no --workspace limit can create workspaces; sign in, or use such a key".into(),
            ));
        }
        if e2ee {
            return Err(CoreError::BadRequest(
                "an end-to-end encrypted workspace begins on the client, which signs its creation and wraps its key: use `cloudsync workspace create NAME --e2e-encryption` (after `cloudsync keys init`)".into(),
            ));
        }
        let ws = self.new_workspace(actor, WorkspaceId::new(), name, false).await?;
        let row = self.audit(AuditEvent::WorkspaceCreated, Some(actor), Some(ws.id)).target(ws.id.to_string());
        self.store.create_workspace(&ws, actor.user_id, &[row]).await?;
        Ok(ws)
    }

    /// The record of a new workspace `id` named `name` (checked, and not a name `actor` already uses), with
    /// fresh at-rest keys wrapped by the master key; not stored yet.
    pub(crate) async fn new_workspace(
        &self,
        actor: &Actor,
        id: WorkspaceId,
        name: &str,
        e2ee: bool,
    ) -> CoreResult<WorkspaceRecord> {
        let name = check_name(name)?;
        let mine = self.store.workspaces_for_user(actor.user_id).await?;
        if mine.iter().any(|(w, _)| w.name == name) {
            return Err(CoreError::Conflict(format!("you already have a workspace named {name:?}; pick another name")));
        }
        let (data, chunk) = (SecretKey::generate(), SecretKey::generate());
        Ok(WorkspaceRecord {
            id,
            name,
            e2ee,
            require_mfa: false,
            ip_allowlist: Vec::new(),
            created_ms: self.now_ms(),
            wrapped_data_key: wrap_key(&self.master, &wrap_context(id, "data"), &data),
            wrapped_chunk_key: wrap_key(&self.master, &wrap_context(id, "chunk-id"), &chunk),
        })
    }

    /// Changes the workspace's settings (Owner), each audited as `settings.changed` with its old and new value.
    /// An IP allowlist that leaves out the caller's own address is refused unless `force` is set.
    ///
    /// # Errors
    /// `Forbidden` below Owner or when requiring MFA without one's own, `MfaRequired` for an allowlist change
    /// without a code when the owner has MFA on, `BadRequest` for a bad network or code,
    /// `Conflict` for an allowlist that would lock the caller out, or when another owner changed it meanwhile.
    pub async fn update_settings(&self, access: &Access, req: &UpdateSettings) -> CoreResult<WorkspaceRecord> {
        if access.role < Role::Owner {
            return Err(CoreError::Forbidden("only workspace owners change its settings".into()));
        }
        let ws = self.workspace(access).await?;
        // Everything is checked before anything is written (or a one-time code spent), so a refused request
        // changes nothing.
        let new_list = match &req.ip_allowlist {
            Some(list) => Some(canonical_allowlist(list)?).filter(|l| *l != ws.ip_allowlist),
            None => None,
        };
        let ip: Option<IpAddr> = access.actor.ip.parse().ok();
        let locks_out = new_list.as_ref().is_some_and(|l| !ip.is_some_and(|ip| allowlist_permits(l, ip)));
        if locks_out && !req.force {
            return Err(CoreError::Conflict(format!(
                "this allowlist does not include your own address ({}), so it would lock you out of the workspace: add your network, or repeat with --force",
                access.actor.ip
            )));
        }
        let mfa_change = req.require_mfa.filter(|on| *on != ws.require_mfa);
        if mfa_change == Some(true) && !self.store.mfa(access.actor.user_id).await?.is_some_and(|m| m.confirmed) {
            return Err(CoreError::Forbidden(
                "turn on two-factor authentication for yourself first (`cloudsync mfa enable`), or you would be locked out of this workspace"
                    .into(),
            ));
        }
        if let Some(new) = new_list {
            // A risky change: with MFA on, it needs a fresh code.
            self.step_up(&access.actor, req.totp.as_deref(), "settings.ip_allowlist").await?;
            let row = self
                .audit(AuditEvent::SettingsChanged, Some(&access.actor), Some(access.workspace))
                .target(access.workspace.to_string())
                .detail("setting", "ip_allowlist")
                .detail("old", ws.ip_allowlist.clone())
                .detail("new", new.clone())
                .detail("forced", locks_out);
            if !self.store.set_ip_allowlist(access.workspace, &ws.ip_allowlist, &new, &[row]).await? {
                return Err(CoreError::Conflict(
                    "another owner changed the allowlist at the same moment; look at it again".into(),
                ));
            }
        }
        if let Some(on) = mfa_change {
            let row = self
                .audit(AuditEvent::SettingsChanged, Some(&access.actor), Some(access.workspace))
                .target(access.workspace.to_string())
                .detail("setting", "require_mfa")
                .detail("old", ws.require_mfa)
                .detail("new", on);
            if !self.store.set_require_mfa(access.workspace, on, &[row]).await? {
                return Err(CoreError::Conflict(
                    "another owner changed this setting at the same moment; look at it again".into(),
                ));
            }
        }
        self.workspace(access).await
    }

    /// Clears the IP allowlist of the workspaces named `name_or_id`, for the operator on the server host
    /// (break-glass after a lock-out). Audited with no actor and `by: operator`. Returns the workspaces
    /// changed.
    ///
    /// # Errors
    /// `NotFound` when no workspace has that name or id; `Conflict` when several share the name (give the id).
    pub async fn operator_clear_allowlist(&self, name_or_id: &str) -> CoreResult<WorkspaceRecord> {
        let found = match name_or_id.trim().parse::<WorkspaceId>() {
            Ok(id) => self.store.workspace(id).await?.into_iter().collect(),
            Err(_) => self.store.workspaces_named(name_or_id.trim()).await?,
        };
        let ws = match found.as_slice() {
            [] => return Err(CoreError::NotFound("workspace")),
            [one] => one.clone(),
            many => {
                return Err(CoreError::Conflict(format!(
                    "{} workspaces are named {name_or_id:?}; give the id of the one to clear: {}",
                    many.len(),
                    many.iter().map(|w| w.id.to_string()).collect::<Vec<_>>().join(", ")
                )));
            }
        };
        if ws.ip_allowlist.is_empty() {
            return Ok(ws);
        }
        let row = self
            .audit(AuditEvent::SettingsChanged, None, Some(ws.id))
            .target(ws.id.to_string())
            .detail("setting", "ip_allowlist")
            .detail("old", ws.ip_allowlist.clone())
            .detail("new", Vec::<String>::new())
            .detail("by", "operator");
        if !self.store.set_ip_allowlist(ws.id, &ws.ip_allowlist, &[], &[row]).await? {
            return Err(CoreError::Conflict("the allowlist changed meanwhile; run the command again".into()));
        }
        Ok(WorkspaceRecord { ip_allowlist: Vec::new(), ..ws })
    }

    /// The workspaces the actor belongs to, with their role.
    ///
    /// # Errors
    /// A store failure.
    pub async fn list_workspaces(&self, actor: &Actor) -> CoreResult<Vec<(WorkspaceRecord, Role)>> {
        let all = self.store.workspaces_for_user(actor.user_id).await?;
        Ok(match &actor.api_key {
            None => all,
            Some(k) => all.into_iter().filter(|(w, _)| k.reaches(w.id)).map(|(w, r)| (w, r.min(k.role))).collect(),
        })
    }

    /// Members of an end-to-end encrypted workspace change only through its signed log, which every client
    /// checks: the server cannot add a member its clients would not accept.
    async fn refuse_if_e2ee(&self, access: &Access) -> CoreResult<()> {
        if self.workspace(access).await?.e2ee {
            return Err(CoreError::NotSupported(
                "this workspace is end-to-end encrypted: its members change only by a change signed on a member's client (`cloudsync workspace members add|remove|set-role` signs it)".into(),
            ));
        }
        Ok(())
    }

    /// Refuses an operation the server would have to do on a file's content (`what`), which it cannot read in
    /// an end-to-end encrypted workspace; `instead` says what a member can do.
    pub(crate) async fn refuse_content_op_if_e2ee(&self, access: &Access, what: &str, instead: &str) -> CoreResult<()> {
        if self.workspace(access).await?.e2ee {
            return Err(CoreError::NotSupported(format!(
                "{what} is not available in this workspace: it is end-to-end encrypted, so the server cannot read \
                 its files{instead}"
            )));
        }
        Ok(())
    }

    /// The workspace record.
    ///
    /// # Errors
    /// `NotFound` when it vanished.
    pub async fn workspace(&self, access: &Access) -> CoreResult<WorkspaceRecord> {
        self.store.workspace(access.workspace).await?.ok_or(CoreError::NotFound("workspace"))
    }

    pub(crate) async fn keys(&self, ws: WorkspaceId) -> CoreResult<(SecretKey, SecretKey)> {
        let rec = self.store.workspace(ws).await?.ok_or(CoreError::NotFound("workspace"))?;
        self.keys_of(&rec)
    }

    /// The data and chunk-id keys of a workspace record already read.
    pub(crate) fn keys_of(&self, rec: &WorkspaceRecord) -> CoreResult<(SecretKey, SecretKey)> {
        let ws = rec.id;
        let data = unwrap_key(&self.master, &wrap_context(ws, "data"), &rec.wrapped_data_key)
            .map_err(|_| CoreError::Internal(WRONG_MASTER_KEY.into()))?;
        let chunk = unwrap_key(&self.master, &wrap_context(ws, "chunk-id"), &rec.wrapped_chunk_key)
            .map_err(|_| CoreError::Internal(WRONG_MASTER_KEY.into()))?;
        Ok((data, chunk))
    }

    /// What a member's client needs to address chunks.
    ///
    /// # Errors
    /// A store or key failure.
    pub async fn workspace_keys(&self, access: &Access) -> CoreResult<WorkspaceKeys> {
        let (_, chunk) = self.keys(access.workspace).await?;
        let p = ChunkerParams::DEFAULT;
        Ok(WorkspaceKeys {
            chunk_id_key: chunk.to_hex().to_string(),
            chunk_min: p.min,
            chunk_avg: p.avg,
            chunk_max: p.max,
        })
    }

    /// Deletes the workspace: its keys first (crypto-shredding), then metadata, then stored chunks.
    ///
    /// # Errors
    /// A store failure. Chunk removal failures are logged, not returned: the chunks are already unreadable.
    pub async fn delete_workspace(&self, access: &Access) -> CoreResult<()> {
        let row =
            self.audit(AuditEvent::WorkspaceDeleted, Some(&access.actor), None).target(access.workspace.to_string());
        if !self.store.delete_workspace(access.workspace, &[row]).await? {
            return Err(CoreError::NotFound("workspace"));
        }
        if let Err(e) = self.blobs.delete_workspace(access.workspace).await {
            tracing::warn!(workspace = %access.workspace, error = %e, "chunks of a deleted workspace were not all removed; they are unreadable without its key");
        }
        Ok(())
    }

    /// Members by email.
    ///
    /// # Errors
    /// A store failure.
    pub async fn list_members(&self, access: &Access) -> CoreResult<Vec<MemberRecord>> {
        Ok(self.store.list_members(access.workspace).await?)
    }

    fn may_manage(access: &Access, target_role: Role, new_role: Option<Role>) -> CoreResult<()> {
        if access.role == Role::Owner {
            return Ok(());
        }
        let too_high = target_role >= Role::Admin || new_role.is_some_and(|r| r >= Role::Admin);
        if access.role < Role::Admin || too_high {
            return Err(CoreError::Forbidden(
                "admins manage viewers and editors only; ask an owner to manage admins and owners".into(),
            ));
        }
        Ok(())
    }

    async fn member(&self, access: &Access, user: UserId) -> CoreResult<MemberRecord> {
        self.store
            .list_members(access.workspace)
            .await?
            .into_iter()
            .find(|m| m.user_id == user)
            .ok_or(CoreError::NotFound("member"))
    }

    /// Adds an existing account as a member.
    ///
    /// # Errors
    /// Unknown account, already a member, or a role the actor may not give.
    pub async fn add_member(&self, access: &Access, email: &str, role: Role) -> CoreResult<MemberRecord> {
        self.refuse_if_e2ee(access).await?;
        Self::may_manage(access, Role::Viewer, Some(role))?;
        let email = crate::auth::normalize_email(email)?;
        let user = self.store.user_by_email(&email).await?.ok_or(CoreError::NotFound("account with that email"))?;
        let row = self
            .audit(AuditEvent::MemberAdded, Some(&access.actor), Some(access.workspace))
            .target(user.id.to_string())
            .detail("role", role.as_str());
        let added_ms = self.now_ms();
        self.store.add_member(access.workspace, user.id, role, added_ms, &[row]).await.map_err(|e| match e {
            cloudsync_store::StoreError::Conflict(_) => {
                CoreError::Conflict(format!("{email} is already a member; use `members set-role` to change the role"))
            }
            other => other.into(),
        })?;
        Ok(MemberRecord { user_id: user.id, email: user.email, role, added_ms })
    }

    /// Changes a member's role.
    ///
    /// # Errors
    /// Not a member, a change the actor may not make, or the last Owner.
    pub async fn set_member_role(&self, access: &Access, user: UserId, role: Role) -> CoreResult<MemberRecord> {
        self.refuse_if_e2ee(access).await?;
        let current = self.member(access, user).await?;
        Self::may_manage(access, current.role, Some(role))?;
        let row = self
            .audit(AuditEvent::PermissionChanged, Some(&access.actor), Some(access.workspace))
            .target(user.to_string())
            .detail("old_role", current.role.as_str())
            .detail("new_role", role.as_str());
        self.store.set_member_role(access.workspace, user, role, &[row]).await?;
        Ok(MemberRecord { role, ..current })
    }

    /// Removes a member.
    ///
    /// # Errors
    /// Not a member, a removal the actor may not make, or the last Owner.
    pub async fn remove_member(&self, access: &Access, user: UserId) -> CoreResult<()> {
        self.refuse_if_e2ee(access).await?;
        let current = self.member(access, user).await?;
        Self::may_manage(access, current.role, None)?;
        let row = self
            .audit(AuditEvent::MemberRemoved, Some(&access.actor), Some(access.workspace))
            .target(user.to_string())
            .detail("role", current.role.as_str());
        self.store.remove_member(access.workspace, user, &[row]).await?;
        Ok(())
    }
}
