//! The embedded metadata store: SQLite in WAL mode under the server's data directory.
//!
//! Writes go through a pool of one connection, so write transactions never contend (SQLite allows one
//! writer anyway, and a single writer avoids `SQLITE_BUSY` on lock upgrades); reads use a separate pool and
//! see consistent WAL snapshots. `synchronous = FULL` makes every committed transaction durable, so a commit
//! the client saw acknowledged survives a power cut.

mod apikeys;
mod audit;
mod e2ee;
mod files;
mod gc;
mod mfa;
mod shares;
mod userkeys;
mod users;
mod workspaces;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use cloudsync_store::{AuditKey, StoreError, StoreResult};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_initial.sql")),
    (2, include_str!("migrations/0002_chunk_packs.sql")),
    (3, include_str!("migrations/0003_mfa.sql")),
    (4, include_str!("migrations/0004_mfa_policy.sql")),
    (5, include_str!("migrations/0005_api_keys.sql")),
    (6, include_str!("migrations/0006_ip_allowlist.sql")),
    (7, include_str!("migrations/0007_share_links.sql")),
    (8, include_str!("migrations/0008_user_keys.sql")),
    (9, include_str!("migrations/0009_audit_key_check.sql")),
    (10, include_str!("migrations/0010_e2ee_log.sql")),
    (11, include_str!("migrations/0011_chunk_gc.sql")),
];

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// Keys the audit chain's hashes.
    audit_key: std::sync::Arc<AuditKey>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    ///
    /// # Errors
    /// When the file cannot be opened or a migration fails.
    pub async fn open(path: &Path, audit_key: AuditKey) -> StoreResult<Self> {
        Self::with_options(SqliteConnectOptions::new().filename(path), audit_key).await
    }

    /// Opens a database from a `sqlite://PATH` URL.
    ///
    /// # Errors
    /// As [`SqliteStore::open`], or for a malformed URL.
    pub async fn connect(url: &str, audit_key: AuditKey) -> StoreResult<Self> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Backend(format!("invalid sqlite URL {url:?}: {e}; use sqlite://PATH")))?;
        Self::with_options(opts, audit_key).await
    }

    /// Applies the settings every connection needs (WAL, durable commits, foreign keys) and opens the pools.
    async fn with_options(opts: SqliteConnectOptions, audit_key: AuditKey) -> StoreResult<Self> {
        let audit_key = std::sync::Arc::new(audit_key);
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts.clone())
            .await
            .map_err(map_err)?;
        let store = Self { writer: writer.clone(), reader: writer, audit_key: audit_key.clone() };
        store.migrate().await?;
        store.check_audit_key().await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts.read_only(true))
            .await
            .map_err(map_err)?;
        Ok(Self { writer: store.writer, reader, audit_key })
    }

    async fn migrate(&self) -> StoreResult<()> {
        let mut conn = self.writer.acquire().await.map_err(map_err)?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL)",
        )
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
        let applied: Vec<i64> = sqlx::query("SELECT version FROM schema_migrations")
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err)?
            .iter()
            .map(|r| r.get::<i64, _>(0))
            .collect();
        drop(conn);
        for (version, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            let mut tx = self.writer.begin().await.map_err(map_err)?;
            sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(map_err)?;
            sqlx::query("INSERT INTO schema_migrations (version, applied_ms) VALUES (?, ?)")
                .bind(version)
                .bind(now_ms())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            tx.commit().await.map_err(map_err)?;
        }
        Ok(())
    }

    /// Records the audit key's check value on first open, and refuses another key afterwards.
    async fn check_audit_key(&self) -> StoreResult<()> {
        let want = self.audit_key.check_value();
        let have: Option<Vec<u8>> = sqlx::query_scalar("SELECT mac FROM audit_key_check WHERE id = 1")
            .fetch_optional(&self.writer)
            .await
            .map_err(map_err)?;
        match have {
            None => {
                sqlx::query("INSERT INTO audit_key_check (id, mac) VALUES (1, ?)")
                    .bind(&want[..])
                    .execute(&self.writer)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }
            Some(h) if <[u8; 32]>::try_from(h.as_slice()).is_ok_and(|h| cloudsync_store::hashes_equal(&h, &want)) => Ok(()),
            Some(_) => Err(StoreError::Backend(
                "this database was written under another master key: start with the master key its data directory was created with (the master.key file or CLOUDSYNC_MASTER_KEY)".into(),
            )),
        }
    }

    /// Closes both pools (checkpointing the WAL).
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Maps sqlx errors to the store's kinds: unique violations are conflicts, busy/locked and pool time-outs are
/// retryable.
pub(crate) fn map_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            match code.as_ref() {
                "2067" | "1555" => StoreError::Conflict(db.message().to_owned()),
                "5" | "6" | "261" | "517" => StoreError::Unavailable(db.message().to_owned()),
                _ => StoreError::Backend(e.to_string()),
            }
        }
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Backend(e.to_string()),
    }
}

/// Reads a UUID column into an id newtype.
pub(crate) fn id<T>(row: &sqlx::sqlite::SqliteRow, col: &str, f: fn(uuid::Uuid) -> T) -> T {
    f(row.get::<uuid::Uuid, _>(col))
}

pub(crate) fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(crate) fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance_story() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = AuditKey::from_bytes([3; 32]);
        let store = SqliteStore::open(&dir.path().join("meta.db"), key.clone()).await.expect("open");
        cloudsync_store::story::story(&store, &key).await;
    }

    #[tokio::test]
    async fn another_master_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meta.db");
        SqliteStore::open(&path, AuditKey::from_bytes([3; 32])).await.expect("open").close().await;
        let e = SqliteStore::open(&path, AuditKey::from_bytes([4; 32])).await.expect_err("another key");
        assert!(e.to_string().contains("another master key"), "{e}");
        SqliteStore::open(&path, AuditKey::from_bytes([3; 32])).await.expect("the right key still opens");
    }

    #[tokio::test]
    async fn reopening_applies_no_migration_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meta.db");
        SqliteStore::open(&path, AuditKey::from_bytes([3; 32])).await.expect("open").close().await;
        let store = SqliteStore::open(&path, AuditKey::from_bytes([3; 32])).await.expect("reopen");
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM schema_migrations").fetch_one(&store.reader).await.expect("count");
        assert_eq!(n, MIGRATIONS.len() as i64);
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&store.reader).await.expect("mode");
        assert_eq!(mode, "wal");
    }
}
