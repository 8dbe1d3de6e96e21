//! Accounts' end-to-end encryption keys (public identities and client-sealed secrets).

use async_trait::async_trait;
use cloudsync_store::{NewAudit, StoreResult, UserKeyStore, UserKeysRecord};
use cloudsync_types::UserId;
use sqlx::Row;

use crate::{SqliteStore, audit::append, map_err};

#[async_trait]
impl UserKeyStore for SqliteStore {
    async fn user_keys(&self, user: UserId) -> StoreResult<Option<UserKeysRecord>> {
        let row = sqlx::query(
            "SELECT identity, sealed_by_passphrase, sealed_by_recovery, created_ms, updated_ms
             FROM user_keys WHERE user_id = ?",
        )
        .bind(user.as_uuid())
        .fetch_optional(&self.reader)
        .await
        .map_err(map_err)?;
        Ok(row.map(|r| UserKeysRecord {
            identity: r.get("identity"),
            sealed_by_passphrase: r.get("sealed_by_passphrase"),
            sealed_by_recovery: r.get("sealed_by_recovery"),
            created_ms: r.get("created_ms"),
            updated_ms: r.get("updated_ms"),
        }))
    }

    async fn create_user_keys(&self, user: UserId, k: &UserKeysRecord, audit: &[NewAudit]) -> StoreResult<()> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        sqlx::query(
            "INSERT INTO user_keys (user_id, identity, sealed_by_passphrase, sealed_by_recovery, created_ms, updated_ms)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(user.as_uuid())
        .bind(&k.identity)
        .bind(&k.sealed_by_passphrase)
        .bind(&k.sealed_by_recovery)
        .bind(k.created_ms)
        .bind(k.updated_ms)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        append(&self.audit_key, &mut tx, audit).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn reseal_user_keys(
        &self,
        user: UserId,
        identity: &[u8],
        sealed_by_passphrase: &[u8],
        at_ms: i64,
        audit: &[NewAudit],
    ) -> StoreResult<bool> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let done = sqlx::query(
            "UPDATE user_keys SET sealed_by_passphrase = ?, updated_ms = ? WHERE user_id = ? AND identity = ?",
        )
        .bind(sealed_by_passphrase)
        .bind(at_ms)
        .bind(user.as_uuid())
        .bind(identity)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        self.commit_if(tx, done, audit).await
    }
}
