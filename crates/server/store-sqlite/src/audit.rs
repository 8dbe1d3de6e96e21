//! Audit rows: appended inside the caller's transaction, chained through `audit_heads` (whose row for the
//! chain is updated in the same transaction, so concurrent appends serialise on it).

use std::collections::HashMap;

use async_trait::async_trait;
use cloudsync_store::{AuditFilter, AuditKey, AuditRow, AuditStore, NewAudit, StoreError, StoreResult, audit_row_hash};
use cloudsync_types::{AuditId, Outcome, UserId, WorkspaceId};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};

use crate::{SqliteStore, map_err, u64_of};

/// Rows per multi-row INSERT (13 parameters each, well under SQLite's 32,766).
const INSERT_ROWS: usize = 500;

/// Appends `rows` to their chains inside `tx`. Each chain's head is read once and written once per call, and
/// the rows go in multi-row INSERTs, so a batch of a thousand commits or manifest reads costs a handful of
/// statements rather than three per row.
pub(crate) async fn append(key: &AuditKey, tx: &mut Transaction<'_, Sqlite>, rows: &[NewAudit]) -> StoreResult<()> {
    let mut heads: HashMap<String, (u64, [u8; 32])> = HashMap::new();
    let mut chained = Vec::with_capacity(rows.len());
    for row in rows {
        let chain = row.chain();
        let (prev_seq, prev_hash) = match heads.get(&chain) {
            Some(head) => *head,
            None => read_head(tx, &chain).await?,
        };
        let (seq, aid) = (prev_seq + 1, AuditId::new());
        let hash = audit_row_hash(key, &prev_hash, aid, &chain, seq, row);
        heads.insert(chain.clone(), (seq, hash));
        chained.push((aid, chain, seq, row, prev_hash, hash));
    }
    for batch in chained.chunks(INSERT_ROWS) {
        let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; batch.len()].join(", ");
        let sql = format!(
            "INSERT INTO audit (id, chain, seq, at_ms, event, outcome, actor, workspace_id, ip, target, details, prev_hash, hash)
             VALUES {values}"
        );
        let mut q = sqlx::query(&sql);
        for (aid, chain, seq, row, prev_hash, hash) in batch {
            q = q
                .bind(aid.as_uuid())
                .bind(chain)
                .bind(crate::i64_of(*seq))
                .bind(row.at_ms)
                .bind(row.event.as_str())
                .bind(row.outcome.as_str())
                .bind(row.actor.map(|a| a.as_uuid()))
                .bind(row.workspace.map(|w| w.as_uuid()))
                .bind(row.ip.as_deref())
                .bind(row.target.as_deref())
                .bind(row.details.to_string())
                .bind(&prev_hash[..])
                .bind(&hash[..]);
        }
        q.execute(&mut **tx).await.map_err(map_err)?;
    }
    for (chain, (seq, hash)) in heads {
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

impl SqliteStore {
    /// Ends a write that changed `changed` rows: when it changed something, appends its audit rows and
    /// commits; otherwise drops `tx` (rolling back) and writes no audit. True when it changed something.
    pub(crate) async fn commit_if(
        &self,
        mut tx: Transaction<'_, Sqlite>,
        changed: u64,
        audit: &[NewAudit],
    ) -> StoreResult<bool> {
        if changed == 0 {
            return Ok(false);
        }
        append(&self.audit_key, &mut tx, audit).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }
}

/// The sequence number and hash of a chain's last row (zero for an empty chain).
async fn read_head(tx: &mut Transaction<'_, Sqlite>, chain: &str) -> StoreResult<(u64, [u8; 32])> {
    let head = sqlx::query("SELECT seq, hash FROM audit_heads WHERE chain = ?")
        .bind(chain)
        .fetch_optional(&mut **tx)
        .await
        .map_err(map_err)?;
    Ok(head.map_or((0, [0u8; 32]), |r| (u64_of(r.get::<i64, _>(0)), hash32(&r.get::<Vec<u8>, _>(1)))))
}

fn hash32(v: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    if v.len() == 32 {
        out.copy_from_slice(v);
    }
    out
}

const COLUMNS: &str =
    "id, chain, seq, at_ms, event, outcome, actor, workspace_id, ip, target, details, prev_hash, hash";

/// Decodes a row without panicking: a column edited to a value no writer stores is an error (which verify
/// turns into "row N was edited"), never a crash.
fn row_of(r: &SqliteRow) -> StoreResult<AuditRow> {
    fn col<'r, T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>>(r: &'r SqliteRow, name: &str) -> StoreResult<T> {
        r.try_get(name).map_err(|e| StoreError::Backend(format!("audit column {name}: {e}")))
    }
    let event: String = col(r, "event")?;
    let outcome: String = col(r, "outcome")?;
    let details: String = col(r, "details")?;
    Ok(AuditRow {
        id: AuditId::from_uuid(col(r, "id")?),
        chain: col(r, "chain")?,
        seq: u64_of(col(r, "seq")?),
        row: NewAudit {
            event: event.parse().map_err(|e| StoreError::Backend(format!("{e}")))?,
            outcome: match outcome.as_str() {
                "success" => Outcome::Success,
                "failure" => Outcome::Failure,
                other => return Err(StoreError::Backend(format!("audit outcome {other:?}"))),
            },
            actor: col::<Option<uuid::Uuid>>(r, "actor")?.map(UserId::from_uuid),
            workspace: col::<Option<uuid::Uuid>>(r, "workspace_id")?.map(WorkspaceId::from_uuid),
            ip: col(r, "ip")?,
            target: col(r, "target")?,
            // A row whose details are not JSON was edited; keep the text so its hash shows the edit.
            details: serde_json::from_str(&details).unwrap_or(serde_json::Value::String(details)),
            at_ms: col(r, "at_ms")?,
        },
        prev_hash: hash32(&col::<Vec<u8>>(r, "prev_hash")?),
        hash: hash32(&col::<Vec<u8>>(r, "hash")?),
    })
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn append_audit(&self, audit: &[NewAudit]) -> StoreResult<()> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        append(&self.audit_key, &mut tx, audit).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn audit_chain(&self, chain: &str, after_seq: u64, limit: u32) -> StoreResult<Vec<AuditRow>> {
        let rows =
            sqlx::query(&format!("SELECT {COLUMNS} FROM audit WHERE chain = ? AND seq > ? ORDER BY seq LIMIT ?"))
                .bind(chain)
                .bind(crate::i64_of(after_seq))
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await
                .map_err(map_err)?;
        rows.iter().map(row_of).collect()
    }

    async fn query_audit(&self, f: &AuditFilter) -> StoreResult<Vec<AuditRow>> {
        let mut q = QueryBuilder::<Sqlite>::new(format!("SELECT {COLUMNS} FROM audit WHERE chain = "));
        q.push_bind(&f.chain);
        if let Some(before) = f.before_seq {
            q.push(" AND seq < ").push_bind(crate::i64_of(before));
        }
        if let Some(since) = f.since_ms {
            q.push(" AND at_ms >= ").push_bind(since);
        }
        if let Some(until) = f.until_ms {
            q.push(" AND at_ms < ").push_bind(until);
        }
        if let Some(actor) = f.actor {
            q.push(" AND actor = ").push_bind(actor.as_uuid());
        }
        if !f.events.is_empty() {
            q.push(" AND event IN (");
            let mut list = q.separated(", ");
            for e in &f.events {
                list.push_bind(e.as_str());
            }
            q.push(")");
        }
        q.push(" ORDER BY seq DESC LIMIT ").push_bind(i64::from(f.limit));
        let rows = q.build().fetch_all(&self.reader).await.map_err(map_err)?;
        rows.iter().map(row_of).collect()
    }

    async fn audit_head(&self, chain: &str) -> StoreResult<Option<(u64, [u8; 32])>> {
        let head = sqlx::query("SELECT seq, hash FROM audit_heads WHERE chain = ?")
            .bind(chain)
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        Ok(head.map(|r| (u64_of(r.get::<i64, _>(0)), hash32(&r.get::<Vec<u8>, _>(1)))))
    }
}
