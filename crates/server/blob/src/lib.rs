//! The chunk store: sealed chunks in any storage Apache OpenDAL reaches (local disk by default, S3-compatible
//! stores by configuration).
//!
//! Every chunk is sealed with AES-256-GCM under its workspace's data key before it leaves this crate, with the
//! workspace id and chunk id bound as associated data: a stored object moved to another key or workspace fails
//! to open, and the storage backend never holds plaintext. Object keys are `ws/<workspace>/<xx>/<chunk id>`:
//! they carry the workspace id, so no request can address another workspace's chunks by id alone.

use std::path::Path;

use cloudsync_crypto::{SecretKey, aead};
use cloudsync_types::{ChunkId, WorkspaceId};
use opendal::{ErrorKind, Operator};

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
    op: Operator,
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
    /// A chunk store on the local file system under `root`. Writes go to `root/.tmp` first, are fsynced, and
    /// are renamed into place, so a crash never leaves a partial chunk under its final name.
    ///
    /// # Errors
    /// When the directories cannot be created.
    pub fn local(root: &Path) -> Result<Self, BlobError> {
        let tmp = root.join(".tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| BlobError::Setup(format!("cannot create {}: {e}", tmp.display())))?;
        let root_s = root.to_str().ok_or_else(|| BlobError::Setup("chunk directory is not valid UTF-8".into()))?;
        let tmp_s = tmp.to_str().ok_or_else(|| BlobError::Setup("chunk directory is not valid UTF-8".into()))?;
        let builder = opendal::services::Fs::default().root(root_s).atomic_write_dir(tmp_s);
        let op = Operator::new(builder)?;
        Ok(Self { op })
    }

    /// A chunk store over any configured OpenDAL operator.
    pub fn from_operator(op: Operator) -> Self {
        Self { op }
    }

    /// Seals and stores a chunk. Returns the stored (sealed) size. Storing an existing chunk again rewrites the
    /// same plaintext under a fresh nonce, which is harmless; callers skip it by asking the metadata store.
    ///
    /// # Errors
    /// When the backend fails.
    pub async fn put_chunk(
        &self,
        key: &SecretKey,
        ws: WorkspaceId,
        id: &ChunkId,
        plaintext: &[u8],
    ) -> Result<u32, BlobError> {
        let sealed = aead::seal(key, &aad(ws, id), plaintext);
        let len = sealed.len();
        self.op.write(&object_key(ws, id), sealed).await?;
        Ok(u32::try_from(len).unwrap_or(u32::MAX))
    }

    /// Reads and opens a chunk, checking its integrity.
    ///
    /// # Errors
    /// `NotFound`, `Corrupt`, or a backend failure.
    pub async fn get_chunk(&self, key: &SecretKey, ws: WorkspaceId, id: &ChunkId) -> Result<Vec<u8>, BlobError> {
        let buf = match self.op.read(&object_key(ws, id)).await {
            Ok(b) => b.to_vec(),
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(BlobError::NotFound(id.to_hex())),
            Err(e) => return Err(e.into()),
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
        store.put_chunk(&key, ws, &id, &plaintext).await.expect("put");
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
}
