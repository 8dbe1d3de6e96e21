//! Chunk reads and writes for one request. The workspace's keys are unwrapped once per request
//! ([`Core::chunk_io`]), not once per chunk: an upload of many chunks or a streamed download of a large file
//! would otherwise read the workspace row and unwrap two keys for every chunk.
//!
//! A chunk is accepted only if its id is the keyed hash of its content under the workspace's chunk-id key (so
//! nobody can poison dedup with wrong content under a known id), sealed under the workspace data key, written
//! durably, and only then recorded. Reads need no presence check in the database: object keys carry the
//! workspace id, so a chunk of another workspace cannot be addressed, and a sealed chunk opens only under its
//! own workspace's key.

use std::sync::Arc;

use cloudsync_blob::{BlobError, BlobStore};
use cloudsync_crypto::{SecretKey, keyed_hash};
use cloudsync_store::Store;
use cloudsync_types::{ChunkId, MAX_CHUNK_SIZE, WorkspaceId};

use crate::{Access, Core, CoreError, CoreResult};

/// Chunk access to one workspace with its keys already unwrapped. Cheap to clone (for streaming bodies).
#[derive(Clone)]
pub struct ChunkIo {
    store: Arc<dyn Store>,
    blobs: BlobStore,
    ws: WorkspaceId,
    data_key: SecretKey,
    chunk_key: SecretKey,
}

impl std::fmt::Debug for ChunkIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkIo").field("workspace", &self.ws).finish_non_exhaustive()
    }
}

impl Core {
    /// Chunk access for `access`'s workspace.
    ///
    /// # Errors
    /// The workspace vanished, or its keys do not open under the master key.
    pub async fn chunk_io(&self, access: &Access) -> CoreResult<ChunkIo> {
        let (data_key, chunk_key) = self.keys(access.workspace).await?;
        Ok(ChunkIo { store: self.store.clone(), blobs: self.blobs.clone(), ws: access.workspace, data_key, chunk_key })
    }
}

impl ChunkIo {
    /// Verifies, seals and stores one chunk. Returns true if it was new (a chunk the workspace already holds is
    /// neither hashed nor written again).
    ///
    /// # Errors
    /// A chunk over the size cap, an id that does not match the content, or a storage failure.
    pub async fn put(&self, id: ChunkId, plaintext: &[u8]) -> CoreResult<bool> {
        if plaintext.len() > MAX_CHUNK_SIZE {
            return Err(CoreError::TooLarge(format!("a chunk may be at most {MAX_CHUNK_SIZE} bytes")));
        }
        if self.store.missing_chunks(self.ws, &[id]).await?.is_empty() {
            return Ok(false);
        }
        if keyed_hash(&self.chunk_key, plaintext) != id.0 {
            return Err(CoreError::BadRequest(format!(
                "chunk {id} does not match its content (ids are keyed BLAKE3 under the workspace chunk-id key)"
            )));
        }
        let stored = self.blobs.put_chunk(&self.data_key, self.ws, &id, plaintext).await?;
        let size = u32::try_from(plaintext.len()).map_err(|_| CoreError::TooLarge("chunk too large".into()))?;
        Ok(self.store.record_chunk(self.ws, id, size, stored).await?)
    }

    /// Reads one chunk of this workspace.
    ///
    /// # Errors
    /// `NotFound` when the workspace does not hold it; `Blob` when it fails its integrity check.
    pub async fn get(&self, id: ChunkId) -> CoreResult<Vec<u8>> {
        match self.blobs.get_chunk(&self.data_key, self.ws, &id).await {
            Err(BlobError::NotFound(_)) => Err(CoreError::NotFound("chunk")),
            other => Ok(other?),
        }
    }
}
