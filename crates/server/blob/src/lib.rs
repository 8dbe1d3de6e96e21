//! The chunk store: sealed chunks in any storage Apache OpenDAL reaches (local disk by default, S3-compatible
//! stores by configuration).
//!
//! Every chunk is sealed with AES-256-GCM under its workspace's data key before it leaves this crate, with the
//! workspace id and chunk id bound as associated data: a stored object moved to another key or workspace fails
//! to open, and the storage backend never holds plaintext. Object keys are `ws/<workspace>/<xx>/<chunk id>`:
//! they carry the workspace id, so no request can address another workspace's chunks by id alone.
//!
//! Writes come in batches: [`BlobStore::stage`] seals a chunk and writes it where it is not yet visible (CPU and
//! blocking I/O, for a blocking thread), [`BlobStore::persist`] makes a whole batch durable under the final
//! names. A chunk may be recorded as stored only after `persist` returned. On the local disk a batch costs two
//! file-system barriers instead of one fsync per chunk (see `local.rs`); on other backends (S3 and the like,
//! durable once a PUT is acknowledged) `persist` writes the sealed chunks through OpenDAL.

mod local;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cloudsync_crypto::{SecretKey, aead};
use cloudsync_types::{ChunkId, WorkspaceId};
use futures_util::{StreamExt, TryStreamExt};
use opendal::{ErrorKind, Operator};

use crate::local::{LocalDisk, TempChunk};

/// Objects written at once by [`BlobStore::persist`] on a remote backend.
const REMOTE_WRITE_CONCURRENCY: usize = 8;

/// What went wrong in the chunk store.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// No such chunk.
    #[error("chunk {0} is not in the chunk store")]
    NotFound(String),
    /// The stored chunk does not open under the workspace key: it was altered, truncated or moved.
    #[error("chunk {0} failed its integrity check (altered, truncated or sealed under another key)")]
    Corrupt(String),
    /// The storage backend failed.
    #[error("chunk store error: {0}")]
    Backend(#[from] opendal::Error),
    /// Local setup failed.
    #[error("chunk store setup failed: {0}")]
    Setup(String),
    /// A local file operation failed: the step (as in "cannot {action} {path}") and the path it concerned.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or folder it was done to.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A blocking task of the chunk store panicked (or was cancelled at shutdown).
    #[error("a chunk store task did not finish: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// A chunk staged by another kind of chunk store (local disk or remote backend) was handed to this one.
    #[error("chunk {0} was staged by another chunk store and cannot be stored by this one")]
    Mismatch(String),
}

impl BlobError {
    /// True when retrying may help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, BlobError::Backend(e) if e.is_temporary())
    }
}

/// Sealed chunk storage.
#[derive(Debug, Clone)]
pub struct BlobStore {
    /// Deletes, and reads and writes of non-local backends.
    op: Operator,
    /// Batched durable writes when the chunks live on the local disk.
    local: Option<Arc<LocalDisk>>,
}

/// A sealed chunk, staged by [`BlobStore::stage`] and not yet durable; hand it to [`BlobStore::persist`].
/// Dropping it instead abandons it (a local temporary file is removed).
#[derive(Debug)]
pub struct StagedChunk {
    key: String,
    stored_size: u32,
    pending: Pending,
}

#[derive(Debug)]
enum Pending {
    /// Written to a temporary file on the local disk.
    Local(TempChunk),
    /// Sealed in memory, to be written to a remote backend.
    Remote(Vec<u8>),
}

impl StagedChunk {
    /// The stored (sealed) size in bytes.
    pub fn stored_size(&self) -> u32 {
        self.stored_size
    }
}

fn aad(ws: WorkspaceId, id: &ChunkId) -> Vec<u8> {
    let mut v = Vec::with_capacity(19 + 16 + 32);
    v.extend_from_slice(b"cloudsync-chunk-v1\0");
    v.extend_from_slice(ws.as_uuid().as_bytes());
    v.extend_from_slice(&id.0);
    v
}

fn object_key(ws: WorkspaceId, id: &ChunkId) -> String {
    let hex = id.to_hex();
    format!("ws/{ws}/{}/{hex}", &hex[..2])
}

impl BlobStore {
    /// A chunk store on the local file system under `root`. Chunks are staged in `root/.tmp` and renamed into
    /// place once durable, a batch at a time, so a crash never leaves a partial chunk under its final name.
    ///
    /// # Errors
    /// When the directories cannot be created.
    pub fn local(root: &Path) -> Result<Self, BlobError> {
        let tmp = root.join(".tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| BlobError::Setup(format!("cannot create {}: {e}", tmp.display())))?;
        let root_s = root
            .to_str()
            .ok_or_else(|| BlobError::Setup(format!("chunk directory {} is not valid UTF-8", root.display())))?;
        // Deletes only: local reads and writes go through `LocalDisk`.
        let op = Operator::new(opendal::services::Fs::default().root(root_s))?;
        Ok(Self { op, local: Some(Arc::new(LocalDisk::new(root.to_path_buf(), tmp))) })
    }

    /// A chunk store over any configured OpenDAL operator. Writes go through it, one object per chunk; the
    /// backend must be durable once a write returns (as S3-compatible stores are).
    pub fn from_operator(op: Operator) -> Self {
        Self { op, local: None }
    }

    /// Seals a chunk and stages it: on the local disk it is written to a temporary file (without fsync),
    /// elsewhere it is kept in memory. Nothing is visible until [`BlobStore::persist`]. Blocking (sealing and a
    /// file write): call it from a blocking thread.
    ///
    /// # Errors
    /// When the temporary file cannot be written.
    pub fn stage(
        &self,
        key: &SecretKey,
        ws: WorkspaceId,
        id: &ChunkId,
        plaintext: &[u8],
    ) -> Result<StagedChunk, BlobError> {
        let sealed = aead::seal(key, &aad(ws, id), plaintext);
        let stored_size = u32::try_from(sealed.len()).unwrap_or(u32::MAX);
        let key = object_key(ws, id);
        let pending = match &self.local {
            Some(disk) => Pending::Local(disk.stage(&key, &sealed)?),
            None => Pending::Remote(sealed),
        };
        Ok(StagedChunk { key, stored_size, pending })
    }

    /// Makes staged chunks durable under their final names, as one batch. Only after this returns `Ok` may
    /// they be recorded as stored. Storing an existing chunk again replaces it with the same plaintext under a
    /// fresh nonce, which is harmless; callers skip it by asking the metadata store.
    ///
    /// # Errors
    /// When the backend fails, or a chunk was staged by another kind of chunk store (then nothing is written);
    /// then none of the chunks may be recorded (some may exist, unrecorded).
    pub async fn persist(&self, chunks: Vec<StagedChunk>) -> Result<(), BlobError> {
        if chunks.is_empty() {
            return Ok(());
        }
        if let Some(disk) = &self.local {
            let disk = disk.clone();
            let temps = chunks
                .into_iter()
                .map(|c| match c.pending {
                    Pending::Local(t) => Ok(t),
                    Pending::Remote(_) => Err(BlobError::Mismatch(c.key)),
                })
                .collect::<Result<Vec<_>, _>>()?;
            return tokio::task::spawn_blocking(move || disk.persist(temps)).await.map_err(BlobError::Task)?;
        }
        let writes = chunks
            .into_iter()
            .map(|c| match c.pending {
                Pending::Remote(sealed) => Ok((c.key, sealed)),
                Pending::Local(_) => Err(BlobError::Mismatch(c.key)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        futures_util::stream::iter(writes)
            .map(|(key, sealed)| async move { self.op.write(&key, sealed).await.map(drop) })
            .buffer_unordered(REMOTE_WRITE_CONCURRENCY)
            .try_collect::<()>()
            .await
            .map_err(BlobError::Backend)
    }

    /// Reads and opens a chunk, checking its integrity.
    ///
    /// # Errors
    /// `NotFound`, `Corrupt`, or a backend failure.
    pub async fn get_chunk(&self, key: &SecretKey, ws: WorkspaceId, id: &ChunkId) -> Result<Vec<u8>, BlobError> {
        let key_path = object_key(ws, id);
        let buf = if let Some(disk) = &self.local {
            let disk = Arc::clone(disk);
            match tokio::task::spawn_blocking(move || disk.read(&key_path)).await.map_err(BlobError::Task)?? {
                Some(b) => b,
                None => return Err(BlobError::NotFound(id.to_hex())),
            }
        } else {
            match self.op.read(&key_path).await {
                Ok(b) => b.to_vec(),
                Err(e) if e.kind() == ErrorKind::NotFound => return Err(BlobError::NotFound(id.to_hex())),
                Err(e) => return Err(e.into()),
            }
        };
        aead::open(key, &aad(ws, id), &buf).map_err(|_| BlobError::Corrupt(id.to_hex()))
    }

    /// Deletes every chunk of a workspace (after its key is already destroyed).
    ///
    /// # Errors
    /// When the backend fails.
    pub async fn delete_workspace(&self, ws: WorkspaceId) -> Result<(), BlobError> {
        match self.op.delete_with(&format!("ws/{ws}/")).recursive(true).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunks_are_sealed_bound_and_deletable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::local(dir.path()).expect("store");
        let (ws, other) = (WorkspaceId::new(), WorkspaceId::new());
        let key = SecretKey::generate();
        let id = ChunkId([5; 32]);
        let plaintext = b"marker-6f1c2d plaintext that must never hit the disk".repeat(10);
        let staged = store.stage(&key, ws, &id, &plaintext).expect("stage");
        store.persist(vec![staged]).await.expect("put");
        assert_eq!(store.get_chunk(&key, ws, &id).await.expect("get"), plaintext);

        // Nothing under the root holds the plaintext.
        let mut stack = vec![dir.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("read_dir") {
                let p = e.expect("entry").path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let bytes = std::fs::read(&p).expect("read");
                    assert!(!bytes.windows(13).any(|w| w == b"marker-6f1c2d"), "plaintext in {}", p.display());
                }
            }
        }

        // Wrong key, another workspace, or a tampered object all fail closed.
        assert!(matches!(store.get_chunk(&SecretKey::generate(), ws, &id).await, Err(BlobError::Corrupt(_))));
        assert!(matches!(store.get_chunk(&key, other, &id).await, Err(BlobError::NotFound(_))));
        let path = dir.path().join(object_key(ws, &id));
        let mut raw = std::fs::read(&path).expect("raw");
        raw[20] ^= 1;
        std::fs::write(&path, raw).expect("tamper");
        assert!(matches!(store.get_chunk(&key, ws, &id).await, Err(BlobError::Corrupt(_))));

        store.delete_workspace(ws).await.expect("delete");
        assert!(matches!(store.get_chunk(&key, ws, &id).await, Err(BlobError::NotFound(_))));
        store.delete_workspace(ws).await.expect("idempotent");
    }

    async fn staged_chunks_appear_only_once_persisted(store: BlobStore) {
        let (ws, key) = (WorkspaceId::new(), SecretKey::generate());
        let chunks: Vec<(ChunkId, Vec<u8>)> =
            (0..50u8).map(|i| (ChunkId([i; 32]), vec![i; 100 + usize::from(i)])).collect();
        let staged: Vec<StagedChunk> =
            chunks.iter().map(|(id, data)| store.stage(&key, ws, id, data).expect("stage")).collect();
        assert!(staged.iter().zip(&chunks).all(|(s, (_, d))| s.stored_size() as usize > d.len()), "sealed sizes");
        for (id, _) in &chunks {
            assert!(matches!(store.get_chunk(&key, ws, id).await, Err(BlobError::NotFound(_))), "not visible yet");
        }
        store.persist(staged).await.expect("persist");
        for (id, data) in &chunks {
            assert_eq!(&store.get_chunk(&key, ws, id).await.expect("get"), data);
        }
        // Writing a chunk again (a concurrent upload of the same chunk) replaces it with an equivalent one.
        let again = store.stage(&key, ws, &chunks[0].0, &chunks[0].1).expect("stage");
        store.persist(vec![again]).await.expect("persist again");
        assert_eq!(store.get_chunk(&key, ws, &chunks[0].0).await.expect("get"), chunks[0].1);
        store.persist(Vec::new()).await.expect("empty batch");
    }

    #[tokio::test]
    async fn batches_on_the_local_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        staged_chunks_appear_only_once_persisted(BlobStore::local(dir.path()).expect("store")).await;
        assert_eq!(local::tests::entries(&dir.path().join(".tmp")), 0, "no temporary file left");
    }

    #[tokio::test]
    async fn a_chunk_staged_by_another_kind_of_store_is_refused() {
        let (local_dir, remote_dir) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        let local = BlobStore::local(local_dir.path()).expect("store");
        let root = remote_dir.path().to_str().expect("utf-8");
        let remote = BlobStore::from_operator(Operator::new(opendal::services::Fs::default().root(root)).expect("op"));
        let (ws, key, id) = (WorkspaceId::new(), SecretKey::generate(), ChunkId([7; 32]));
        for (from, to) in [(&local, &remote), (&remote, &local)] {
            let staged = from.stage(&key, ws, &id, b"data").expect("stage");
            assert!(matches!(to.persist(vec![staged]).await, Err(BlobError::Mismatch(_))));
            assert!(matches!(to.get_chunk(&key, ws, &id).await, Err(BlobError::NotFound(_))), "nothing written");
        }
        assert_eq!(local::tests::entries(&local_dir.path().join(".tmp")), 0, "no temporary file left");
    }

    #[tokio::test]
    async fn batches_through_an_opendal_operator() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_str().expect("utf-8");
        let op = Operator::new(opendal::services::Fs::default().root(root)).expect("operator");
        staged_chunks_appear_only_once_persisted(BlobStore::from_operator(op)).await;
    }
}
