//! Chunk reads and writes for one request. The workspace's keys are unwrapped once per request
//! ([`Core::chunk_io`]), not once per chunk: an upload of many chunks or a streamed download of a large file
//! would otherwise read the workspace row and unwrap two keys for every chunk.
//!
//! A chunk is accepted only if its id is the keyed hash of its content under the workspace's chunk-id key (so
//! nobody can poison dedup with wrong content under a known id), sealed under the workspace data key, written
//! durably, and only then recorded (uploads go through [`ChunkUpload`](crate::ChunkUpload), which does this a
//! batch at a time). Reads need no presence check in the database: object keys carry the workspace id, so a
//! chunk of another workspace cannot be addressed, and a sealed chunk opens only under its own workspace's key.

use std::sync::Arc;

use cloudsync_blob::{BlobError, BlobStore, StagedChunk};
use cloudsync_crypto::{SecretKey, keyed_hash};
use cloudsync_store::Store;
use cloudsync_types::api::MAX_FETCH_CHUNKS;
use cloudsync_types::{ChunkId, WorkspaceId};

use crate::{Access, Core, CoreError, CoreResult};

/// Chunk access to one workspace with its keys already unwrapped. Cheap to clone (for streaming bodies).
#[derive(Clone)]
pub struct ChunkIo {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) blobs: BlobStore,
    pub(crate) ws: WorkspaceId,
    data_key: SecretKey,
    pub(crate) chunk_key: SecretKey,
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
    /// Checks a chunk against its id, seals it and stages it (see [`BlobStore::stage`]). Blocking (hashing,
    /// sealing, a file write): call it from a blocking thread.
    pub(crate) fn verify_and_stage(&self, id: ChunkId, plaintext: &[u8]) -> CoreResult<(ChunkId, u32, StagedChunk)> {
        let size = u32::try_from(plaintext.len()).map_err(|_| CoreError::TooLarge("chunk too large".into()))?;
        if keyed_hash(&self.chunk_key, plaintext) != id.0 {
            return Err(CoreError::BadRequest(format!(
                "chunk {id} does not match its content (ids are keyed BLAKE3 under the workspace chunk-id key)"
            )));
        }
        Ok((id, size, self.blobs.stage(&self.data_key, self.ws, &id, plaintext)?))
    }

    /// Checks, with one store query, that this workspace holds every chunk in `ids` (at most
    /// [`MAX_FETCH_CHUNKS`]), before a download of many chunks starts.
    ///
    /// # Errors
    /// `TooLarge` over the cap, `ChunksNotFound` naming the chunks the workspace does not hold.
    pub async fn check_held(&self, ids: &[ChunkId]) -> CoreResult<()> {
        if ids.len() > MAX_FETCH_CHUNKS {
            return Err(CoreError::TooLarge(format!("fetch at most {MAX_FETCH_CHUNKS} chunks per request")));
        }
        let missing = self.store.missing_chunks(self.ws, ids).await?;
        if missing.is_empty() { Ok(()) } else { Err(CoreError::ChunksNotFound { missing, asked: ids.len() }) }
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
