//! API keys.

use async_trait::async_trait;
use cloudsync_store::{ApiKeyRecord, ApiKeyStore, NewAudit, StoreError, StoreResult};
use cloudsync_types::{UserId, WorkspaceId};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::{SqliteStore, audit::append, id, map_err};

const COLUMNS: &str = "id, user_id, name, role, workspaces, secret_hash, old_secret_hash, old_valid_until_ms, mfa, \
                       expires_ms, created_ms, last_used_ms, last_used_ip";

fn hash32(v: Option<Vec<u8>>) -> Option<[u8; 32]> {
    v.and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
}

fn key_of(r: &SqliteRow) -> StoreResult<ApiKeyRecord> {
    let role: String = r.get("role");
    let workspaces = r
        .get::<Option<String>, _>("workspaces")
        .map(|w| serde_json::from_str::<Vec<WorkspaceId>>(&w))
        .transpose()
        .map_err(|e| StoreError::Backend(format!("api key workspaces: {e}")))?;
    Ok(ApiKeyRecord {
        id: r.get("id"),
        user_id: id(r, "user_id", UserId::from_uuid),
        name: r.get("name"),
        role: role.parse().map_err(|e| StoreError::Backend(format!("{e}")))?,
        workspaces,
        secret_hash: hash32(r.get("secret_hash")).ok_or_else(|| StoreError::Backend("bad key hash".into()))?,
        old_secret_hash: hash32(r.get("old_secret_hash")),
        old_valid_until_ms: r.get("old_valid_until_ms"),
        mfa: r.get::<i64, _>("mfa") != 0,
        expires_ms: r.get("expires_ms"),
        created_ms: r.get("created_ms"),
        last_used_ms: r.get("last_used_ms"),
        last_used_ip: r.get("last_used_ip"),
    })
}

#[async_trait]
impl ApiKeyStore for SqliteStore {
    async fn create_api_key(&self, k: &ApiKeyRecord, audit: &[NewAudit]) -> StoreResult<()> {
        let workspaces = k
            .workspaces
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        sqlx::query(
            "INSERT INTO api_keys (id, user_id, name, role, workspaces, secret_hash, mfa, expires_ms, created_ms)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&k.id)
        .bind(k.user_id.as_uuid())
        .bind(&k.name)
        .bind(k.role.as_str())
        .bind(workspaces)
        .bind(&k.secret_hash[..])
        .bind(i64::from(k.mfa))
        .bind(k.expires_ms)
        .bind(k.created_ms)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        append(&self.audit_key, &mut tx, audit).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn api_key(&self, key_id: &str) -> StoreResult<Option<ApiKeyRecord>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM api_keys WHERE id = ?"))
            .bind(key_id)
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        row.as_ref().map(key_of).transpose()
    }

    async fn list_api_keys(&self, user: UserId) -> StoreResult<Vec<ApiKeyRecord>> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM api_keys WHERE user_id = ? ORDER BY name"))
            .bind(user.as_uuid())
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        rows.iter().map(key_of).collect()
    }

    async fn rotate_api_key(
        &self,
        user: UserId,
        key_id: &str,
        secret_hash: &[u8; 32],
        old_valid_until_ms: i64,
        mfa: bool,
        audit: &[NewAudit],
    ) -> StoreResult<bool> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let done = sqlx::query(
            "UPDATE api_keys SET old_secret_hash = secret_hash, old_valid_until_ms = ?, secret_hash = ?, mfa = ?
             WHERE id = ? AND user_id = ?",
        )
        .bind(old_valid_until_ms)
        .bind(&secret_hash[..])
        .bind(i64::from(mfa))
        .bind(key_id)
        .bind(user.as_uuid())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        self.commit_if(tx, done, audit).await
    }

    async fn revoke_api_key(&self, user: UserId, key_id: &str, audit: &[NewAudit]) -> StoreResult<bool> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let done = sqlx::query("DELETE FROM api_keys WHERE id = ? AND user_id = ?")
            .bind(key_id)
            .bind(user.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        self.commit_if(tx, done, audit).await
    }

    async fn touch_api_key(&self, key_id: &str, at_ms: i64, ip: &str, audit: &[NewAudit]) -> StoreResult<()> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        sqlx::query("UPDATE api_keys SET last_used_ms = ?, last_used_ip = ? WHERE id = ?")
            .bind(at_ms)
            .bind(ip)
            .bind(key_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        append(&self.audit_key, &mut tx, audit).await?;
        tx.commit().await.map_err(map_err)
    }
}
