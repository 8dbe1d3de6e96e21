//! Accounts, sessions and rate-limit counters.

use async_trait::async_trait;
use cloudsync_store::{NewAudit, RateLimitStore, SessionRecord, StoreResult, UserRecord, UserStore};
use cloudsync_types::{SessionId, UserId};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::{SqliteStore, audit::append, id, map_err, u64_of};

fn user_of(r: &SqliteRow) -> UserRecord {
    UserRecord {
        id: id(r, "id", UserId::from_uuid),
        email: r.get("email"),
        password_hash: r.get("password_hash"),
        is_admin: r.get::<i64, _>("is_admin") != 0,
        created_ms: r.get("created_ms"),
    }
}

fn session_of(r: &SqliteRow) -> SessionRecord {
    let h: Vec<u8> = r.get("token_hash");
    let mut token_hash = [0u8; 32];
    if h.len() == 32 {
        token_hash.copy_from_slice(&h);
    }
    SessionRecord {
        id: id(r, "id", SessionId::from_uuid),
        user_id: id(r, "user_id", UserId::from_uuid),
        token_hash,
        device_name: r.get("device_name"),
        created_ms: r.get("created_ms"),
        last_seen_ms: r.get("last_seen_ms"),
        mfa: r.get::<i64, _>("mfa") != 0,
        last_ip: r.get("last_ip"),
    }
}

#[async_trait]
impl UserStore for SqliteStore {
    async fn create_user(&self, user: &UserRecord, audit: &[NewAudit]) -> StoreResult<()> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        sqlx::query("INSERT INTO users (id, email, password_hash, is_admin, created_ms) VALUES (?, ?, ?, ?, ?)")
            .bind(user.id.as_uuid())
            .bind(&user.email)
            .bind(&user.password_hash)
            .bind(i64::from(user.is_admin))
            .bind(user.created_ms)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        append(&self.audit_key, &mut tx, audit).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>> {
        let row = sqlx::query("SELECT * FROM users WHERE email = ?")
            .bind(email)
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        Ok(row.as_ref().map(user_of))
    }

    async fn user_by_id(&self, uid: UserId) -> StoreResult<Option<UserRecord>> {
        let row = sqlx::query("SELECT * FROM users WHERE id = ?")
            .bind(uid.as_uuid())
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        Ok(row.as_ref().map(user_of))
    }

    async fn count_users(&self) -> StoreResult<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&self.reader).await.map_err(map_err)?;
        Ok(u64_of(n))
    }

    async fn create_session(&self, s: &SessionRecord, audit: &[NewAudit]) -> StoreResult<()> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        sqlx::query(
            "INSERT INTO sessions (id, user_id, token_hash, device_name, created_ms, last_seen_ms, last_ip, mfa)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(s.id.as_uuid())
        .bind(s.user_id.as_uuid())
        .bind(&s.token_hash[..])
        .bind(&s.device_name)
        .bind(s.created_ms)
        .bind(s.last_seen_ms)
        .bind(&s.last_ip)
        .bind(i64::from(s.mfa))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        append(&self.audit_key, &mut tx, audit).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn session_by_token_hash(&self, hash: &[u8; 32]) -> StoreResult<Option<SessionRecord>> {
        let row = sqlx::query("SELECT * FROM sessions WHERE token_hash = ?")
            .bind(&hash[..])
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        Ok(row.as_ref().map(session_of))
    }

    async fn touch_session(&self, sid: SessionId, at_ms: i64, ip: &str) -> StoreResult<()> {
        sqlx::query("UPDATE sessions SET last_seen_ms = ?, last_ip = ? WHERE id = ?")
            .bind(at_ms)
            .bind(ip)
            .bind(sid.as_uuid())
            .execute(&self.writer)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn list_sessions(&self, user: UserId) -> StoreResult<Vec<SessionRecord>> {
        let rows = sqlx::query("SELECT * FROM sessions WHERE user_id = ? ORDER BY created_ms DESC, id DESC")
            .bind(user.as_uuid())
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        Ok(rows.iter().map(session_of).collect())
    }

    async fn delete_session(&self, user: UserId, sid: SessionId, audit: &[NewAudit]) -> StoreResult<bool> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let n = sqlx::query("DELETE FROM sessions WHERE id = ? AND user_id = ?")
            .bind(sid.as_uuid())
            .bind(user.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        self.commit_if(tx, n, audit).await
    }
}

#[async_trait]
impl RateLimitStore for SqliteStore {
    async fn rate_limit_hit(&self, key: &str, window_start_ms: i64) -> StoreResult<u32> {
        let count: i64 = sqlx::query_scalar(
            "INSERT INTO rate_limits (key, window_start_ms, count) VALUES (?, ?, 1)
             ON CONFLICT (key) DO UPDATE SET
                count = CASE WHEN rate_limits.window_start_ms = excluded.window_start_ms THEN rate_limits.count + 1 ELSE 1 END,
                window_start_ms = excluded.window_start_ms
             RETURNING count",
        )
        .bind(key)
        .bind(window_start_ms)
        .fetch_one(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    async fn rate_limit_clear(&self, key: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM rate_limits WHERE key = ?").bind(key).execute(&self.writer).await.map_err(map_err)?;
        Ok(())
    }
}
