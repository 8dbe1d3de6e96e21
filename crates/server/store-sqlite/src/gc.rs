//! What chunk garbage collection reads and changes (see [`GcStore`]).

use async_trait::async_trait;
use cloudsync_store::{ChunkPlace, ChunkRow, GcStore, StoreError, StoreResult};
use cloudsync_types::{ChunkId, WorkspaceId};
use sqlx::Row;

use crate::files::{IN_BATCH, marks, place_of};
use crate::{SqliteStore, id, map_err};

#[async_trait]
impl GcStore for SqliteStore {
    async fn workspace_ids(&self) -> StoreResult<Vec<WorkspaceId>> {
        let rows =
            sqlx::query("SELECT id FROM workspaces ORDER BY id").fetch_all(&self.reader).await.map_err(map_err)?;
        Ok(rows.iter().map(|r| id(r, "id", WorkspaceId::from_uuid)).collect())
    }

    async fn manifests_page(&self, ws: WorkspaceId, after: i64, limit: u32) -> StoreResult<Vec<(i64, Vec<u8>)>> {
        let rows = sqlx::query(
            "SELECT rowid, manifest FROM versions WHERE workspace_id = ? AND rowid > ? ORDER BY rowid LIMIT ?",
        )
        .bind(ws.as_uuid())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        Ok(rows.iter().map(|r| (r.get("rowid"), r.get("manifest"))).collect())
    }

    async fn chunk_rows_page(&self, ws: WorkspaceId, after: Option<ChunkId>, limit: u32) -> StoreResult<Vec<ChunkRow>> {
        let after: Vec<u8> = after.map_or_else(Vec::new, |c| c.0.to_vec());
        let rows = sqlx::query(
            "SELECT chunk_id, stored_size, pack, pack_offset, created_ms, condemned_ms FROM chunks
             WHERE workspace_id = ? AND chunk_id > ? ORDER BY chunk_id LIMIT ?",
        )
        .bind(ws.as_uuid())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                let (id, place) = place_of(r)?;
                Ok(ChunkRow { id, place, recorded_ms: r.get("created_ms"), condemned_ms: r.get("condemned_ms") })
            })
            .collect()
    }

    async fn condemn_chunks(
        &self,
        ws: WorkspaceId,
        ids: &[ChunkId],
        recorded_before_ms: i64,
        at_ms: i64,
    ) -> StoreResult<u64> {
        self.set_condemned(ws, ids, "?", "condemned_ms IS NULL AND created_ms < ?", &[at_ms, recorded_before_ms]).await
    }

    async fn spare_chunks(&self, ws: WorkspaceId, ids: &[ChunkId]) -> StoreResult<u64> {
        self.set_condemned(ws, ids, "NULL", "condemned_ms IS NOT NULL", &[]).await
    }

    async fn delete_condemned(
        &self,
        ws: WorkspaceId,
        ids: &[ChunkId],
        condemned_before_ms: i64,
    ) -> StoreResult<Vec<(ChunkId, ChunkPlace)>> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let mut out = Vec::new();
        for batch in ids.chunks(IN_BATCH) {
            let sql = format!(
                "DELETE FROM chunks WHERE workspace_id = ? AND condemned_ms IS NOT NULL AND condemned_ms < ?
                 AND chunk_id IN ({}) RETURNING chunk_id, stored_size, pack, pack_offset",
                marks(batch.len())
            );
            let mut q = sqlx::query(&sql).bind(ws.as_uuid()).bind(condemned_before_ms);
            for c in batch {
                q = q.bind(&c.0[..]);
            }
            for r in q.fetch_all(&mut *tx).await.map_err(map_err)? {
                out.push(place_of(&r)?);
            }
        }
        tx.commit().await.map_err(map_err)?;
        Ok(out)
    }

    async fn packs_in_use(&self, ws: WorkspaceId, packs: &[[u8; 16]]) -> StoreResult<Vec<[u8; 16]>> {
        let mut out = Vec::new();
        for batch in packs.chunks(IN_BATCH) {
            let sql =
                format!("SELECT DISTINCT pack FROM chunks WHERE workspace_id = ? AND pack IN ({})", marks(batch.len()));
            let mut q = sqlx::query_scalar::<_, Vec<u8>>(&sql).bind(ws.as_uuid());
            for p in batch {
                q = q.bind(&p[..]);
            }
            for p in q.fetch_all(&self.reader).await.map_err(map_err)? {
                out.push(<[u8; 16]>::try_from(p).map_err(|_| StoreError::Backend("a malformed pack id".into()))?);
            }
        }
        Ok(out)
    }
}

impl SqliteStore {
    /// Sets `condemned_ms` to `value` on those of `ids` that meet `condition`, in one transaction. `values`
    /// are bound to the `?` of `value`, then of `condition`, in order. Returns how many rows changed.
    async fn set_condemned(
        &self,
        ws: WorkspaceId,
        ids: &[ChunkId],
        value: &str,
        condition: &str,
        values: &[i64],
    ) -> StoreResult<u64> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let mut n = 0;
        for batch in ids.chunks(IN_BATCH) {
            let sql = format!(
                "UPDATE chunks SET condemned_ms = {value} WHERE {condition} AND workspace_id = ? AND chunk_id IN ({})",
                marks(batch.len())
            );
            let mut q = sqlx::query(&sql);
            for v in values {
                q = q.bind(*v);
            }
            q = q.bind(ws.as_uuid());
            for c in batch {
                q = q.bind(&c.0[..]);
            }
            n += q.execute(&mut *tx).await.map_err(map_err)?.rows_affected();
        }
        tx.commit().await.map_err(map_err)?;
        Ok(n)
    }
}
