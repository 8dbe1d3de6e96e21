//! Share links.

use async_trait::async_trait;
use cloudsync_store::{NewAudit, ShareRecord, ShareStore, StoreError, StoreResult};
use cloudsync_types::{FileId, ShareId, UserId, WorkspaceId, WsPath};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::{SqliteStore, audit::append, i64_of, id, map_err, u64_of};

const COLUMNS: &str = "id, workspace_id, token_hash, path, file_id, created_by, api_key_id, created_ms, expires_ms, \
                       password_hash, max_downloads, downloads, revoked_ms";

fn share_of(r: &SqliteRow) -> StoreResult<ShareRecord> {
    let hash: Vec<u8> = r.get("token_hash");
    let path: String = r.get("path");
    Ok(ShareRecord {
        id: id(r, "id", ShareId::from_uuid),
        workspace_id: id(r, "workspace_id", WorkspaceId::from_uuid),
        token_hash: <[u8; 32]>::try_from(hash.as_slice()).map_err(|_| StoreError::Backend("bad share hash".into()))?,
        path: WsPath::parse(&path).map_err(|e| StoreError::Backend(format!("stored share path: {e}")))?,
        file_id: id(r, "file_id", FileId::from_uuid),
        created_by: id(r, "created_by", UserId::from_uuid),
        api_key_id: r.get("api_key_id"),
        created_ms: r.get("created_ms"),
        expires_ms: r.get("expires_ms"),
        password_hash: r.get("password_hash"),
        max_downloads: r.get::<Option<i64>, _>("max_downloads").map(u64_of),
        downloads: u64_of(r.get("downloads")),
        revoked_ms: r.get("revoked_ms"),
    })
}

#[async_trait]
impl ShareStore for SqliteStore {
    async fn create_share(&self, s: &ShareRecord, audit: &[NewAudit]) -> StoreResult<()> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        sqlx::query(
            "INSERT INTO share_links (id, workspace_id, token_hash, path, file_id, created_by, api_key_id, created_ms,
                                      expires_ms, password_hash, max_downloads)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(s.id.as_uuid())
        .bind(s.workspace_id.as_uuid())
        .bind(&s.token_hash[..])
        .bind(s.path.as_str())
        .bind(s.file_id.as_uuid())
        .bind(s.created_by.as_uuid())
        .bind(s.api_key_id.as_deref())
        .bind(s.created_ms)
        .bind(s.expires_ms)
        .bind(s.password_hash.as_deref())
        .bind(s.max_downloads.map(i64_of))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        append(&self.audit_key, &mut tx, audit).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn share_by_token_hash(&self, hash: &[u8; 32]) -> StoreResult<Option<ShareRecord>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM share_links WHERE token_hash = ?"))
            .bind(&hash[..])
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        row.as_ref().map(share_of).transpose()
    }

    async fn share(&self, ws: WorkspaceId, sid: ShareId) -> StoreResult<Option<ShareRecord>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM share_links WHERE workspace_id = ? AND id = ?"))
            .bind(ws.as_uuid())
            .bind(sid.as_uuid())
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        row.as_ref().map(share_of).transpose()
    }

    async fn list_shares(&self, ws: WorkspaceId, now_ms: i64) -> StoreResult<Vec<ShareRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM share_links WHERE workspace_id = ? AND revoked_ms IS NULL
               AND (expires_ms IS NULL OR expires_ms > ?) AND (max_downloads IS NULL OR downloads < max_downloads)
             ORDER BY created_ms DESC"
        ))
        .bind(ws.as_uuid())
        .bind(now_ms)
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.iter().map(share_of).collect()
    }

    async fn revoke_share(&self, ws: WorkspaceId, sid: ShareId, at_ms: i64, audit: &[NewAudit]) -> StoreResult<bool> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let done = sqlx::query(
            "UPDATE share_links SET revoked_ms = ? WHERE workspace_id = ? AND id = ? AND revoked_ms IS NULL",
        )
        .bind(at_ms)
        .bind(ws.as_uuid())
        .bind(sid.as_uuid())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        self.commit_if(tx, done, audit).await
    }

    async fn claim_share_download(&self, sid: ShareId, at_ms: i64) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE share_links SET downloads = downloads + 1
             WHERE id = ? AND revoked_ms IS NULL AND (expires_ms IS NULL OR expires_ms > ?)
               AND (max_downloads IS NULL OR downloads < max_downloads)",
        )
        .bind(sid.as_uuid())
        .bind(at_ms)
        .execute(&self.writer)
        .await
        .map_err(map_err)?
        .rows_affected();
        Ok(done == 1)
    }
}
