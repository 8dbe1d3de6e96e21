//! Workspaces, their wrapped keys, and members. The last-Owner rule is checked inside the write transaction,
//! so two Admins demoting each other at once cannot leave a workspace ownerless.

use async_trait::async_trait;
use cloudsync_store::{
    MemberAccess, MemberChange, MemberRecord, NewAudit, StoreError, StoreResult, WorkspaceRecord, WorkspaceStore,
};
use cloudsync_types::{Role, UserId, WorkspaceId};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};

use crate::{SqliteStore, audit::append, id, map_err};

fn workspace_of(r: &SqliteRow) -> WorkspaceRecord {
    WorkspaceRecord {
        id: id(r, "id", WorkspaceId::from_uuid),
        name: r.get("name"),
        e2ee: r.get::<i64, _>("e2ee") != 0,
        require_mfa: r.get::<i64, _>("require_mfa") != 0,
        ip_allowlist: split_list(&r.get::<String, _>("ip_allowlist")),
        created_ms: r.get("created_ms"),
        wrapped_data_key: r.get("wrapped_data_key"),
        wrapped_chunk_key: r.get("wrapped_chunk_key"),
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',').filter(|c| !c.is_empty()).map(str::to_owned).collect()
}

fn role_of(s: &str) -> StoreResult<Role> {
    s.parse().map_err(|e| StoreError::Backend(format!("{e}")))
}

async fn role_in(tx: &mut Transaction<'_, Sqlite>, ws: WorkspaceId, user: UserId) -> StoreResult<Option<Role>> {
    let r: Option<String> = sqlx::query_scalar("SELECT role FROM members WHERE workspace_id = ? AND user_id = ?")
        .bind(ws.as_uuid())
        .bind(user.as_uuid())
        .fetch_optional(&mut **tx)
        .await
        .map_err(map_err)?;
    r.as_deref().map(role_of).transpose()
}

async fn other_owners(tx: &mut Transaction<'_, Sqlite>, ws: WorkspaceId, user: UserId) -> StoreResult<i64> {
    sqlx::query_scalar("SELECT count(*) FROM members WHERE workspace_id = ? AND role = 'owner' AND user_id <> ?")
        .bind(ws.as_uuid())
        .bind(user.as_uuid())
        .fetch_one(&mut **tx)
        .await
        .map_err(map_err)
}

const SELECT_WS: &str =
    "SELECT w.id, w.name, w.e2ee, w.require_mfa, w.ip_allowlist, w.created_ms, k.wrapped_data_key, k.wrapped_chunk_key
     FROM workspaces w JOIN workspace_keys k ON k.workspace_id = w.id";

/// Inserts a workspace, its wrapped keys and its first owner.
pub(crate) async fn insert_workspace(
    tx: &mut Transaction<'_, Sqlite>,
    ws: &WorkspaceRecord,
    owner: UserId,
) -> StoreResult<()> {
    sqlx::query("INSERT INTO workspaces (id, name, e2ee, created_ms) VALUES (?, ?, ?, ?)")
        .bind(ws.id.as_uuid())
        .bind(&ws.name)
        .bind(i64::from(ws.e2ee))
        .bind(ws.created_ms)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    sqlx::query("INSERT INTO workspace_keys (workspace_id, wrapped_data_key, wrapped_chunk_key) VALUES (?, ?, ?)")
        .bind(ws.id.as_uuid())
        .bind(&ws.wrapped_data_key)
        .bind(&ws.wrapped_chunk_key)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    sqlx::query("INSERT INTO members (workspace_id, user_id, role, added_ms) VALUES (?, ?, 'owner', ?)")
        .bind(ws.id.as_uuid())
        .bind(owner.as_uuid())
        .bind(ws.created_ms)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    Ok(())
}

/// Applies one member change inside `tx` (`at_ms` is the time an added member joins), keeping the
/// last-owner rule; returns the member's role before a role change or removal.
pub(crate) async fn change_member(
    tx: &mut Transaction<'_, Sqlite>,
    ws: WorkspaceId,
    change: MemberChange,
    at_ms: i64,
) -> StoreResult<Option<Role>> {
    let (user, new_role) = match change {
        MemberChange::Add(user, role) => {
            sqlx::query("INSERT INTO members (workspace_id, user_id, role, added_ms) VALUES (?, ?, ?, ?)")
                .bind(ws.as_uuid())
                .bind(user.as_uuid())
                .bind(role.as_str())
                .bind(at_ms)
                .execute(&mut **tx)
                .await
                .map_err(|e| match map_err(e) {
                    StoreError::Conflict(_) => StoreError::Conflict("already a member".into()),
                    other => other,
                })?;
            return Ok(None);
        }
        MemberChange::SetRole(user, role) => (user, Some(role)),
        MemberChange::Remove(user) => (user, None),
    };
    let old = role_in(tx, ws, user).await?.ok_or(StoreError::NotFound)?;
    if old == Role::Owner && new_role != Some(Role::Owner) && other_owners(tx, ws, user).await? == 0 {
        return Err(StoreError::LastOwner);
    }
    let q = match new_role {
        Some(role) => {
            sqlx::query("UPDATE members SET role = ? WHERE workspace_id = ? AND user_id = ?").bind(role.as_str())
        }
        None => sqlx::query("DELETE FROM members WHERE workspace_id = ? AND user_id = ?"),
    };
    q.bind(ws.as_uuid()).bind(user.as_uuid()).execute(&mut **tx).await.map_err(map_err)?;
    Ok(Some(old))
}

#[async_trait]
impl WorkspaceStore for SqliteStore {
    async fn create_workspace(&self, ws: &WorkspaceRecord, owner: UserId, audit: &[NewAudit]) -> StoreResult<()> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        insert_workspace(&mut tx, ws, owner).await?;
        append(&self.audit_key, &mut tx, audit).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn workspace(&self, wid: WorkspaceId) -> StoreResult<Option<WorkspaceRecord>> {
        let row = sqlx::query(&format!("{SELECT_WS} WHERE w.id = ?"))
            .bind(wid.as_uuid())
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        Ok(row.as_ref().map(workspace_of))
    }

    async fn workspaces_for_user(&self, user: UserId) -> StoreResult<Vec<(WorkspaceRecord, Role)>> {
        let rows = sqlx::query(
            "SELECT w.id, w.name, w.e2ee, w.require_mfa, w.ip_allowlist, w.created_ms, k.wrapped_data_key, k.wrapped_chunk_key, m.role
             FROM workspaces w JOIN workspace_keys k ON k.workspace_id = w.id JOIN members m ON m.workspace_id = w.id
             WHERE m.user_id = ? ORDER BY w.name, w.id",
        )
        .bind(user.as_uuid())
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.iter().map(|r| Ok((workspace_of(r), role_of(&r.get::<String, _>("role"))?))).collect()
    }

    async fn delete_workspace(&self, wid: WorkspaceId, audit: &[NewAudit]) -> StoreResult<bool> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        // Keys first and explicitly: this is the crypto-shredding step.
        sqlx::query("DELETE FROM workspace_keys WHERE workspace_id = ?")
            .bind(wid.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        for table in ["journal", "versions", "files", "chunks", "members"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE workspace_id = ?"))
                .bind(wid.as_uuid())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        let n = sqlx::query("DELETE FROM workspaces WHERE id = ?")
            .bind(wid.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        self.commit_if(tx, n, audit).await
    }

    async fn member_role(&self, ws: WorkspaceId, user: UserId) -> StoreResult<Option<Role>> {
        let r: Option<String> = sqlx::query_scalar("SELECT role FROM members WHERE workspace_id = ? AND user_id = ?")
            .bind(ws.as_uuid())
            .bind(user.as_uuid())
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        r.as_deref().map(role_of).transpose()
    }

    async fn member_access(&self, ws: WorkspaceId, user: UserId) -> StoreResult<Option<MemberAccess>> {
        let row = sqlx::query(
            "SELECT m.role, w.require_mfa, w.ip_allowlist,
                    EXISTS (SELECT 1 FROM user_mfa u WHERE u.user_id = m.user_id AND u.confirmed = 1) AS has_mfa
             FROM members m JOIN workspaces w ON w.id = m.workspace_id
             WHERE m.workspace_id = ? AND m.user_id = ?",
        )
        .bind(ws.as_uuid())
        .bind(user.as_uuid())
        .fetch_optional(&self.reader)
        .await
        .map_err(map_err)?;
        row.map(|r| {
            Ok(MemberAccess {
                role: role_of(&r.get::<String, _>("role"))?,
                require_mfa: r.get::<i64, _>("require_mfa") != 0,
                has_mfa: r.get::<i64, _>("has_mfa") != 0,
                ip_allowlist: split_list(&r.get::<String, _>("ip_allowlist")),
            })
        })
        .transpose()
    }

    async fn set_require_mfa(&self, ws: WorkspaceId, on: bool, audit: &[NewAudit]) -> StoreResult<bool> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let done = sqlx::query("UPDATE workspaces SET require_mfa = ? WHERE id = ? AND require_mfa = ?")
            .bind(i64::from(on))
            .bind(ws.as_uuid())
            .bind(i64::from(!on))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        self.commit_if(tx, done, audit).await
    }

    async fn set_ip_allowlist(
        &self,
        ws: WorkspaceId,
        old: &[String],
        new: &[String],
        audit: &[NewAudit],
    ) -> StoreResult<bool> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let done = sqlx::query("UPDATE workspaces SET ip_allowlist = ? WHERE id = ? AND ip_allowlist = ?")
            .bind(new.join(","))
            .bind(ws.as_uuid())
            .bind(old.join(","))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        self.commit_if(tx, done, audit).await
    }

    async fn workspaces_named(&self, name: &str) -> StoreResult<Vec<WorkspaceRecord>> {
        let rows = sqlx::query(&format!("{SELECT_WS} WHERE w.name = ? ORDER BY w.created_ms"))
            .bind(name)
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        Ok(rows.iter().map(workspace_of).collect())
    }

    async fn list_members(&self, ws: WorkspaceId) -> StoreResult<Vec<MemberRecord>> {
        let rows = sqlx::query(
            "SELECT m.user_id, u.email, m.role, m.added_ms FROM members m JOIN users u ON u.id = m.user_id
             WHERE m.workspace_id = ? ORDER BY u.email",
        )
        .bind(ws.as_uuid())
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                Ok(MemberRecord {
                    user_id: id(r, "user_id", UserId::from_uuid),
                    email: r.get("email"),
                    role: role_of(&r.get::<String, _>("role"))?,
                    added_ms: r.get("added_ms"),
                })
            })
            .collect()
    }

    async fn add_member(
        &self,
        ws: WorkspaceId,
        user: UserId,
        role: Role,
        now: i64,
        audit: &[NewAudit],
    ) -> StoreResult<()> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        change_member(&mut tx, ws, MemberChange::Add(user, role), now).await?;
        append(&self.audit_key, &mut tx, audit).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn set_member_role(
        &self,
        ws: WorkspaceId,
        user: UserId,
        role: Role,
        audit: &[NewAudit],
    ) -> StoreResult<Role> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let old =
            change_member(&mut tx, ws, MemberChange::SetRole(user, role), 0).await?.ok_or(StoreError::NotFound)?;
        append(&self.audit_key, &mut tx, audit).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(old)
    }

    async fn remove_member(&self, ws: WorkspaceId, user: UserId, audit: &[NewAudit]) -> StoreResult<Role> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let old = change_member(&mut tx, ws, MemberChange::Remove(user), 0).await?.ok_or(StoreError::NotFound)?;
        append(&self.audit_key, &mut tx, audit).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(old)
    }
}
