//! The membership log and wrapped keys of end-to-end encrypted workspaces. An append checks, inside its
//! write transaction, that the log still ends where the caller read it, so two members appending at once
//! cannot fork it: one of them gets a conflict and replays again.

use async_trait::async_trait;
use cloudsync_store::{
    E2eeStore, LogAppend, MemberChange, NewAudit, StoreError, StoreResult, WorkspaceRecord, WrappedKeyRow,
};
use cloudsync_types::{UserId, WorkspaceId};
use sqlx::{Row, Sqlite, Transaction};

use crate::workspaces::{change_member, insert_workspace};
use crate::{SqliteStore, audit::append, id, map_err};

async fn insert_key(tx: &mut Transaction<'_, Sqlite>, ws: WorkspaceId, k: &WrappedKeyRow) -> StoreResult<()> {
    sqlx::query("INSERT INTO e2ee_wrapped_keys (workspace_id, epoch, recipient_id, record) VALUES (?, ?, ?, ?)")
        .bind(ws.as_uuid())
        .bind(i64::from(k.epoch))
        .bind(k.recipient.as_uuid())
        .bind(&k.record)
        .execute(&mut **tx)
        .await
        .map_err(|e| match map_err(e) {
            StoreError::Conflict(_) => {
                StoreError::Conflict(format!("a key of epoch {} is already wrapped to that member", k.epoch))
            }
            other => other,
        })?;
    Ok(())
}

async fn insert_entry(tx: &mut Transaction<'_, Sqlite>, ws: WorkspaceId, seq: u64, entry: &[u8]) -> StoreResult<()> {
    let seq = i64::try_from(seq).map_err(|_| StoreError::Backend("log position out of range".into()))?;
    sqlx::query("INSERT INTO e2ee_log (workspace_id, seq, entry) VALUES (?, ?, ?)")
        .bind(ws.as_uuid())
        .bind(seq)
        .bind(entry)
        .execute(&mut **tx)
        .await
        .map_err(|e| match map_err(e) {
            StoreError::Conflict(_) => StoreError::Conflict("the membership log changed meanwhile".into()),
            other => other,
        })?;
    Ok(())
}

/// Applies a member change; a removed member's wrapped keys go with them (added again, they get them anew).
async fn apply_member(
    tx: &mut Transaction<'_, Sqlite>,
    ws: WorkspaceId,
    c: MemberChange,
    at_ms: i64,
) -> StoreResult<()> {
    change_member(tx, ws, c, at_ms).await?;
    if let MemberChange::Remove(user) = c {
        sqlx::query("DELETE FROM e2ee_wrapped_keys WHERE workspace_id = ? AND recipient_id = ?")
            .bind(ws.as_uuid())
            .bind(user.as_uuid())
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
    }
    Ok(())
}

#[async_trait]
impl E2eeStore for SqliteStore {
    async fn create_e2ee_workspace(
        &self,
        ws: &WorkspaceRecord,
        owner: UserId,
        entry: &[u8],
        wrapped_key: &WrappedKeyRow,
        audit: &[NewAudit],
    ) -> StoreResult<()> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        insert_workspace(&mut tx, ws, owner).await?;
        insert_entry(&mut tx, ws.id, 0, entry).await?;
        insert_key(&mut tx, ws.id, wrapped_key).await?;
        append(&self.audit_key, &mut tx, audit).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn e2ee_log(&self, ws: WorkspaceId, from: u64, limit: u32) -> StoreResult<Vec<Vec<u8>>> {
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        let rows = sqlx::query("SELECT entry FROM e2ee_log WHERE workspace_id = ? AND seq >= ? ORDER BY seq LIMIT ?")
            .bind(ws.as_uuid())
            .bind(from)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        Ok(rows.iter().map(|r| r.get("entry")).collect())
    }

    async fn append_e2ee_log(&self, ws: WorkspaceId, a: &LogAppend, audit: &[NewAudit]) -> StoreResult<()> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let len: i64 = sqlx::query_scalar("SELECT count(*) FROM e2ee_log WHERE workspace_id = ?")
            .bind(ws.as_uuid())
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        if u64::try_from(len).ok() != Some(a.first_seq) {
            return Err(StoreError::Conflict(format!(
                "the membership log has {len} entries, not {}: someone changed it meanwhile",
                a.first_seq
            )));
        }
        for (n, e) in a.entries.iter().enumerate() {
            insert_entry(&mut tx, ws, a.first_seq + n as u64, e).await?;
        }
        for c in &a.members {
            apply_member(&mut tx, ws, *c, a.at_ms).await?;
        }
        for k in &a.keys {
            insert_key(&mut tx, ws, k).await?;
        }
        append(&self.audit_key, &mut tx, audit).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn e2ee_keys_for(&self, ws: WorkspaceId, recipient: UserId) -> StoreResult<Vec<WrappedKeyRow>> {
        let rows = sqlx::query(
            "SELECT epoch, recipient_id, record FROM e2ee_wrapped_keys
             WHERE workspace_id = ? AND recipient_id = ? ORDER BY epoch",
        )
        .bind(ws.as_uuid())
        .bind(recipient.as_uuid())
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                Ok(WrappedKeyRow {
                    epoch: u32::try_from(r.get::<i64, _>("epoch"))
                        .map_err(|_| StoreError::Backend("a key epoch out of range".into()))?,
                    recipient: id(r, "recipient_id", UserId::from_uuid),
                    record: r.get("record"),
                })
            })
            .collect()
    }
}
