//! TOTP second factors and recovery codes.

use async_trait::async_trait;
use cloudsync_store::{MfaRecord, MfaStore, NewAudit, StoreError, StoreResult};
use cloudsync_types::{SessionId, UserId};
use sqlx::Row;

use crate::{SqliteStore, audit::append, i64_of, map_err, u64_of};

#[async_trait]
impl MfaStore for SqliteStore {
    async fn mfa(&self, user: UserId) -> StoreResult<Option<MfaRecord>> {
        let row = sqlx::query(
            "SELECT sealed_secret, confirmed, last_step, failures, created_ms,
                    (SELECT count(*) FROM recovery_codes r WHERE r.user_id = m.user_id AND r.used_ms IS NULL) AS left
             FROM user_mfa m WHERE user_id = ?",
        )
        .bind(user.as_uuid())
        .fetch_optional(&self.reader)
        .await
        .map_err(map_err)?;
        Ok(row.map(|r| MfaRecord {
            sealed_secret: r.get("sealed_secret"),
            confirmed: r.get::<i64, _>("confirmed") != 0,
            last_step: r.get::<Option<i64>, _>("last_step").map(u64_of),
            failures: u32::try_from(r.get::<i64, _>("failures")).unwrap_or(u32::MAX),
            recovery_left: u32::try_from(r.get::<i64, _>("left")).unwrap_or(0),
            created_ms: r.get("created_ms"),
        }))
    }

    async fn mfa_begin(&self, user: UserId, sealed_secret: &[u8], at_ms: i64) -> StoreResult<()> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let on: Option<i64> = sqlx::query_scalar("SELECT confirmed FROM user_mfa WHERE user_id = ?")
            .bind(user.as_uuid())
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        if on == Some(1) {
            return Err(StoreError::Conflict("two-factor authentication is already on".into()));
        }
        sqlx::query(
            "INSERT INTO user_mfa (user_id, sealed_secret, confirmed, last_step, failures, created_ms)
             VALUES (?, ?, 0, NULL, 0, ?)
             ON CONFLICT (user_id) DO UPDATE SET sealed_secret = excluded.sealed_secret, last_step = NULL,
                 failures = 0, created_ms = excluded.created_ms",
        )
        .bind(user.as_uuid())
        .bind(sealed_secret)
        .bind(at_ms)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    async fn mfa_confirm(
        &self,
        user: UserId,
        session: SessionId,
        sealed_secret: &[u8],
        step: u64,
        recovery: &[[u8; 32]],
        audit: &[NewAudit],
    ) -> StoreResult<bool> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let done = sqlx::query(
            "UPDATE user_mfa SET confirmed = 1, last_step = ?, failures = 0
             WHERE user_id = ? AND confirmed = 0 AND sealed_secret = ?",
        )
        .bind(i64_of(step))
        .bind(user.as_uuid())
        .bind(sealed_secret)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        if done == 0 {
            return Ok(false);
        }
        replace_recovery(&mut tx, user, recovery).await?;
        sqlx::query("UPDATE sessions SET mfa = 1 WHERE id = ? AND user_id = ?")
            .bind(session.as_uuid())
            .bind(user.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        append(&self.audit_key, &mut tx, audit).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn mfa_accept_step(&self, user: UserId, step: u64) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE user_mfa SET last_step = ?, failures = 0
             WHERE user_id = ? AND (last_step IS NULL OR last_step < ?)",
        )
        .bind(i64_of(step))
        .bind(user.as_uuid())
        .bind(i64_of(step))
        .execute(&self.writer)
        .await
        .map_err(map_err)?
        .rows_affected();
        Ok(done == 1)
    }

    async fn mfa_use_recovery(&self, user: UserId, hash: &[u8; 32], at_ms: i64) -> StoreResult<bool> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let done = sqlx::query(
            "UPDATE recovery_codes SET used_ms = ? WHERE user_id = ? AND code_hash = ? AND used_ms IS NULL",
        )
        .bind(at_ms)
        .bind(user.as_uuid())
        .bind(&hash[..])
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        if done == 1 {
            sqlx::query("UPDATE user_mfa SET failures = 0 WHERE user_id = ?")
                .bind(user.as_uuid())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(done == 1)
    }

    async fn mfa_failed(&self, user: UserId) -> StoreResult<u32> {
        let n: Option<i64> =
            sqlx::query_scalar("UPDATE user_mfa SET failures = failures + 1 WHERE user_id = ? RETURNING failures")
                .bind(user.as_uuid())
                .fetch_optional(&self.writer)
                .await
                .map_err(map_err)?;
        Ok(n.map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)))
    }

    async fn mfa_claim_attempt(&self, user: UserId, limit: u32) -> StoreResult<Option<u32>> {
        let n: Option<i64> = sqlx::query_scalar(
            "UPDATE user_mfa SET failures = failures + 1 WHERE user_id = ? AND failures < ? RETURNING failures",
        )
        .bind(user.as_uuid())
        .bind(i64::from(limit))
        .fetch_optional(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(n.map(|n| u32::try_from(n).unwrap_or(u32::MAX)))
    }

    async fn mfa_replace_recovery(&self, user: UserId, recovery: &[[u8; 32]], audit: &[NewAudit]) -> StoreResult<()> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        replace_recovery(&mut tx, user, recovery).await?;
        append(&self.audit_key, &mut tx, audit).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn mfa_disable(&self, user: UserId, audit: &[NewAudit]) -> StoreResult<bool> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let done = sqlx::query("DELETE FROM user_mfa WHERE user_id = ?")
            .bind(user.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        sqlx::query("DELETE FROM recovery_codes WHERE user_id = ?")
            .bind(user.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        self.commit_if(tx, done, audit).await
    }
}

async fn replace_recovery(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    user: UserId,
    recovery: &[[u8; 32]],
) -> StoreResult<()> {
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = ?")
        .bind(user.as_uuid())
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    for h in recovery {
        sqlx::query("INSERT OR IGNORE INTO recovery_codes (user_id, code_hash, used_ms) VALUES (?, ?, NULL)")
            .bind(user.as_uuid())
            .bind(&h[..])
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
    }
    Ok(())
}
