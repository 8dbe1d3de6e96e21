//! Audit rows: appended inside the caller's transaction, chained through `audit_heads` (whose row for the
//! chain is updated in the same transaction, so concurrent appends serialise on it).

use async_trait::async_trait;
use cloudsync_store::{AuditRow, AuditStore, NewAudit, StoreResult, audit_row_hash};
use cloudsync_types::{AuditId, UserId, WorkspaceId};
use sqlx::{Row, Sqlite, Transaction};

use crate::{SqliteStore, id, map_err, u64_of};

/// Appends `rows` to their chains inside `tx`.
pub(crate) async fn append(tx: &mut Transaction<'_, Sqlite>, rows: &[NewAudit]) -> StoreResult<()> {
    for row in rows {
        let chain = row.chain();
        let head = sqlx::query("SELECT seq, hash FROM audit_heads WHERE chain = ?")
            .bind(&chain)
            .fetch_optional(&mut **tx)
            .await
            .map_err(map_err)?;
        let (prev_seq, prev_hash) = match head {
            Some(r) => {
                let h: Vec<u8> = r.get(1);
                let mut prev = [0u8; 32];
                if h.len() == 32 {
                    prev.copy_from_slice(&h);
                }
                (u64_of(r.get::<i64, _>(0)), prev)
            }
            None => (0, [0u8; 32]),
        };
        let seq = prev_seq + 1;
        let aid = AuditId::new();
        let hash = audit_row_hash(&prev_hash, aid, &chain, seq, row);
        sqlx::query(
            "INSERT INTO audit (id, chain, seq, at_ms, event, outcome, actor, workspace_id, ip, target, details, prev_hash, hash)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(aid.as_uuid())
        .bind(&chain)
        .bind(crate::i64_of(seq))
        .bind(row.at_ms)
        .bind(row.event.as_str())
        .bind(row.outcome.as_str())
        .bind(row.actor.map(|a| a.as_uuid()))
        .bind(row.workspace.map(|w| w.as_uuid()))
        .bind(row.ip.as_deref())
        .bind(row.target.as_deref())
        .bind(row.details.to_string())
        .bind(&prev_hash[..])
        .bind(&hash[..])
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
        sqlx::query(
            "INSERT INTO audit_heads (chain, seq, hash) VALUES (?, ?, ?)
             ON CONFLICT (chain) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        )
        .bind(&chain)
        .bind(crate::i64_of(seq))
        .bind(&hash[..])
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    }
    Ok(())
}

fn hash32(v: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    if v.len() == 32 {
        out.copy_from_slice(v);
    }
    out
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn append_audit(&self, audit: &[NewAudit]) -> StoreResult<()> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        append(&mut tx, audit).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn audit_chain(&self, chain: &str, after_seq: u64, limit: u32) -> StoreResult<Vec<AuditRow>> {
        let rows = sqlx::query(
            "SELECT id, chain, seq, at_ms, event, outcome, actor, workspace_id, ip, target, details, prev_hash, hash
             FROM audit WHERE chain = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(chain)
        .bind(crate::i64_of(after_seq))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                let event: String = r.get("event");
                let outcome: String = r.get("outcome");
                let details: String = r.get("details");
                Ok(AuditRow {
                    id: id(r, "id", AuditId::from_uuid),
                    chain: r.get("chain"),
                    seq: u64_of(r.get("seq")),
                    row: NewAudit {
                        event: event.parse().map_err(|e| cloudsync_store::StoreError::Backend(format!("{e}")))?,
                        outcome: if outcome == "success" {
                            cloudsync_types::Outcome::Success
                        } else {
                            cloudsync_types::Outcome::Failure
                        },
                        actor: r.get::<Option<uuid::Uuid>, _>("actor").map(UserId::from_uuid),
                        workspace: r.get::<Option<uuid::Uuid>, _>("workspace_id").map(WorkspaceId::from_uuid),
                        ip: r.get("ip"),
                        target: r.get("target"),
                        details: serde_json::from_str(&details).unwrap_or(serde_json::Value::Null),
                        at_ms: r.get("at_ms"),
                    },
                    prev_hash: hash32(&r.get::<Vec<u8>, _>("prev_hash")),
                    hash: hash32(&r.get::<Vec<u8>, _>("hash")),
                })
            })
            .collect()
    }
}
