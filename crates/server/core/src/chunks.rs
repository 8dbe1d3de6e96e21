//! Chunk reads and writes for one request. The workspace's keys are unwrapped once per request
//! ([`Core::chunk_io`]), not once per chunk: an upload of many chunks or a streamed download of a large file
//! would otherwise read the workspace row and unwrap two keys for every chunk.
//!
//! A chunk is accepted only if its id is the keyed hash of its content under the workspace's chunk-id key (so
//! nobody can poison dedup with wrong content under a known id), sealed under the workspace data key into a
//! pack, written durably, and only then recorded with its place (uploads go through
//! [`ChunkUpload`](crate::ChunkUpload), which does this a batch at a time). Reads look the place up in the
//! metadata store, one query for many chunks ([`ChunkIo::locate`]); object keys carry the workspace id, so a
//! chunk of another workspace cannot be addressed, and sealed bytes open only as the chunk and workspace they
//! were sealed for, so a wrong place fails closed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use cloudsync_blob::{BlobError, BlobStore, Place, StagedPack};
use cloudsync_crypto::{SecretKey, keyed_hash};
use cloudsync_store::{ChunkPlace, Store};
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

    /// As [`Core::chunk_io`] for a workspace record already read.
    pub(crate) fn chunk_io_for(&self, rec: &cloudsync_store::WorkspaceRecord) -> CoreResult<ChunkIo> {
        let (data_key, chunk_key) = self.keys_of(rec)?;
        Ok(ChunkIo { store: self.store.clone(), blobs: self.blobs.clone(), ws: rec.id, data_key, chunk_key })
    }
}

impl ChunkIo {
    /// Checks each chunk against its id, then seals the group into one pack and stages it (see
    /// [`BlobStore::stage`]). Blocking (hashing, sealing, a file write): call it from a blocking thread.
    ///
    /// # Errors
    /// `BadRequest` naming the first chunk that does not match its id (then nothing is staged), or a storage
    /// failure. (Sizes are capped where chunks come in, [`ChunkUpload::push`](crate::ChunkUpload::push).)
    pub(crate) fn verify_and_stage(&self, chunks: &[(ChunkId, Bytes)]) -> CoreResult<StagedPack> {
        for (id, data) in chunks {
            if keyed_hash(&self.chunk_key, data) != id.0 {
                return Err(CoreError::BadRequest(format!(
                    "chunk {id} does not match its content (ids are keyed BLAKE3 under the workspace chunk-id key)"
                )));
            }
        }
        let refs: Vec<(ChunkId, &[u8])> = chunks.iter().map(|(id, d)| (*id, d.as_ref())).collect();
        Ok(self.blobs.stage(&self.data_key, self.ws, &refs)?)
    }

    /// Where each of `ids` (at most [`MAX_FETCH_CHUNKS`]) is stored, in the order given, with one store
    /// query: before a download of many chunks starts, this also checks that the workspace holds them all.
    ///
    /// # Errors
    /// `TooLarge` over the cap, `ChunksNotFound` naming the chunks the workspace does not hold.
    pub async fn locate(&self, ids: &[ChunkId]) -> CoreResult<Vec<Place>> {
        if ids.len() > MAX_FETCH_CHUNKS {
            return Err(CoreError::TooLarge(format!("fetch at most {MAX_FETCH_CHUNKS} chunks per request")));
        }
        let found: HashMap<ChunkId, ChunkPlace> = self.store.locate_chunks(self.ws, ids).await?.into_iter().collect();
        let (mut missing, mut seen) = (Vec::new(), HashSet::new());
        let mut places = Vec::with_capacity(ids.len());
        for id in ids {
            match found.get(id) {
                Some(p) => places.push(place_of(p)),
                None if seen.insert(*id) => missing.push(*id),
                None => {}
            }
        }
        if missing.is_empty() { Ok(places) } else { Err(CoreError::ChunksNotFound { missing, asked: ids.len() }) }
    }

    /// Where each of `ids` is stored, any number of them, one [`ChunkIo::locate`] per
    /// [`MAX_FETCH_CHUNKS`] (a whole file's manifest, before its content streams).
    ///
    /// # Errors
    /// `ChunksNotFound` naming chunks the workspace does not hold.
    pub async fn locate_all(&self, ids: &[ChunkId]) -> CoreResult<Vec<Place>> {
        let mut places = Vec::with_capacity(ids.len());
        for part in ids.chunks(MAX_FETCH_CHUNKS) {
            places.extend(self.locate(part).await?);
        }
        Ok(places)
    }

    /// Reads chunk `id` at `place` (from [`ChunkIo::locate`]).
    ///
    /// # Errors
    /// `NotFound` when its bytes are gone; `Blob` when they fail their integrity check.
    pub async fn read(&self, id: ChunkId, place: Place) -> CoreResult<Vec<u8>> {
        match self.blobs.get_chunk(&self.data_key, self.ws, &id, place).await {
            Err(BlobError::NotFound(_)) => Err(CoreError::NotFound("chunk")),
            other => Ok(other?),
        }
    }

    /// Reads one chunk of this workspace (a store query, then the read).
    ///
    /// # Errors
    /// `NotFound` when the workspace does not hold it; `Blob` when it fails its integrity check.
    pub async fn get(&self, id: ChunkId) -> CoreResult<Vec<u8>> {
        let place = match self.locate(&[id]).await {
            Ok(places) => places[0],
            Err(CoreError::ChunksNotFound { .. }) => return Err(CoreError::NotFound("chunk")),
            Err(e) => return Err(e),
        };
        self.read(id, place).await
    }
}

/// The chunk store's form of a recorded place.
fn place_of(p: &ChunkPlace) -> Place {
    match p.pack {
        Some(pack) => Place::Packed { pack, offset: p.offset, len: p.stored_size },
        None => Place::Object,
    }
}
