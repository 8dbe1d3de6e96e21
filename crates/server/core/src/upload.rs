//! One chunk upload request as a pipeline, so that its cost is a few database transactions and file-system
//! barriers per batch of chunks rather than per chunk:
//!
//! - frames are grouped (up to [`GROUP_CHUNKS`] chunks or [`GROUP_BYTES`]); each group costs one presence query,
//!   and ids already seen in this request are not asked about again;
//! - the new chunks of a group are verified (keyed hash), sealed into one pack and staged on a blocking
//!   thread, with up to [`MAX_TASKS`] groups in flight while the caller goes on reading the request body;
//! - every [`FLUSH_BYTES`] or [`FLUSH_CHUNKS`] of new chunks, and at the end, the staged chunks are made
//!   durable together ([`BlobStore::persist`](cloudsync_blob::BlobStore::persist)) and only then recorded in
//!   one transaction. A client killed mid-request loses only the batch not yet flushed: chunks of flushed
//!   batches are recorded, so `chunks/missing` no longer lists them and a retry skips them.
//!
//! Memory stays bounded whatever the request size: one filling group, the groups in flight, and the
//! bookkeeping of staged packs (their data waits in pack files on the local disk; with a remote backend, in
//! memory, up to one flush's worth).

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudsync_blob::StagedPack;
use cloudsync_store::{ChunkPlace, NewChunk};
use cloudsync_types::api::UploadChunksResponse;
use cloudsync_types::{ChunkId, MAX_CHUNK_SIZE};
use tokio::task::JoinHandle;

use crate::{ChunkIo, CoreError, CoreResult};

/// Most chunks in one group (one presence query, one blocking task, one pack).
const GROUP_CHUNKS: usize = 256;
/// A group is dispatched once it holds this many bytes.
const GROUP_BYTES: usize = 8 * 1024 * 1024;
/// Groups verified and staged at once, besides the one filling.
const MAX_TASKS: usize = 2;
/// A batch is made durable and recorded once this many new bytes are staged.
const FLUSH_BYTES: usize = 64 * 1024 * 1024;
/// A batch is made durable and recorded once this many new chunks are staged.
pub const FLUSH_CHUNKS: usize = 2000;
/// A batch is also made durable and recorded once its oldest pack was staged this long ago, however small it
/// is, so a slow upload records as it goes.
const FLUSH_AFTER: Duration = Duration::from_secs(60);
/// Packs staged longer ago than this are never recorded: the upload fails and the client sends it again.
/// Garbage collection removes packs no chunk is recorded in once they are older than its grace period (at
/// least an hour, [`crate::MIN_GC_GRACE_MS`]), so a pack must be recorded well within that of being written.
pub const MAX_STAGED_AGE: Duration = Duration::from_secs(30 * 60);

/// A chunk upload in progress: feed it frames with [`ChunkUpload::push`], end it with
/// [`ChunkUpload::finish`]. Dropped before `finish` (an error, a broken connection), it records nothing
/// more and its staged chunks are discarded.
pub struct ChunkUpload {
    io: ChunkIo,
    group: Vec<(ChunkId, Bytes)>,
    group_bytes: usize,
    tasks: VecDeque<JoinHandle<CoreResult<StagedPack>>>,
    staged: Vec<StagedPack>,
    unflushed_bytes: usize,
    unflushed_chunks: usize,
    flush_bytes: usize,
    flush_chunks: usize,
    /// When the oldest pack not yet recorded was staged.
    first_staged: Option<Instant>,
    flush_after: Duration,
    max_staged_age: Duration,
    seen: HashSet<ChunkId>,
    stored: u32,
    present: u32,
}

impl std::fmt::Debug for ChunkUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkUpload")
            .field("io", &self.io)
            .field("stored", &self.stored)
            .field("already_present", &self.present)
            .finish_non_exhaustive()
    }
}

impl ChunkIo {
    /// Starts an upload of many chunks to this workspace.
    pub fn upload(&self) -> ChunkUpload {
        ChunkUpload {
            io: self.clone(),
            group: Vec::new(),
            group_bytes: 0,
            tasks: VecDeque::new(),
            staged: Vec::new(),
            unflushed_bytes: 0,
            unflushed_chunks: 0,
            flush_bytes: FLUSH_BYTES,
            flush_chunks: FLUSH_CHUNKS,
            first_staged: None,
            flush_after: FLUSH_AFTER,
            max_staged_age: MAX_STAGED_AGE,
            seen: HashSet::new(),
            stored: 0,
            present: 0,
        }
    }
}

impl ChunkUpload {
    /// The same upload with other flush thresholds (tests).
    #[cfg(test)]
    #[must_use]
    pub fn with_flush_limits(mut self, bytes: usize, chunks: usize) -> Self {
        self.flush_bytes = bytes.max(1);
        self.flush_chunks = chunks.max(1);
        self
    }

    /// The same upload with other time limits on staged packs (tests).
    #[cfg(test)]
    #[must_use]
    pub fn with_staging_limits(mut self, flush_after: Duration, max_age: Duration) -> Self {
        self.flush_after = flush_after;
        self.max_staged_age = max_age;
        self
    }

    /// Adds one chunk. It is checked, stored and recorded some time before [`ChunkUpload::finish`] returns.
    ///
    /// # Errors
    /// A chunk over the size cap, an earlier chunk whose id does not match its content, or a storage failure.
    /// After an error the upload is unusable: drop it.
    pub async fn push(&mut self, id: ChunkId, data: Bytes) -> CoreResult<()> {
        if data.len() > MAX_CHUNK_SIZE {
            return Err(CoreError::TooLarge(format!("a chunk may be at most {MAX_CHUNK_SIZE} bytes")));
        }
        self.group_bytes += data.len();
        self.group.push((id, data));
        if self.group.len() >= GROUP_CHUNKS || self.group_bytes >= GROUP_BYTES {
            self.dispatch().await?;
        }
        if self.first_staged.is_some_and(|t| t.elapsed() >= self.flush_after) {
            self.flush().await?;
        }
        Ok(())
    }

    /// Stores and records everything pushed, and says how many chunks were new.
    ///
    /// # Errors
    /// As [`ChunkUpload::push`].
    pub async fn finish(mut self) -> CoreResult<UploadChunksResponse> {
        self.dispatch().await?;
        self.flush().await?;
        Ok(UploadChunksResponse { stored: self.stored, already_present: self.present })
    }

    /// Sends the filling group to a blocking thread (after one presence query), and flushes when enough is
    /// staged.
    async fn dispatch(&mut self) -> CoreResult<()> {
        let group = std::mem::take(&mut self.group);
        self.group_bytes = 0;
        if group.is_empty() {
            return Ok(());
        }
        let ask: Vec<ChunkId> = group.iter().map(|(id, _)| *id).filter(|id| !self.seen.contains(id)).collect();
        let missing: HashSet<ChunkId> = if ask.is_empty() {
            HashSet::new()
        } else {
            self.io.store.missing_chunks(self.io.ws, &ask).await?.into_iter().collect()
        };
        let mut work = Vec::new();
        for (id, data) in group {
            if self.seen.insert(id) && missing.contains(&id) {
                self.stored += 1;
                self.unflushed_bytes += data.len();
                self.unflushed_chunks += 1;
                work.push((id, data));
            } else {
                self.present += 1;
            }
        }
        if !work.is_empty() {
            let io = self.io.clone();
            self.first_staged.get_or_insert_with(Instant::now);
            self.tasks.push_back(tokio::task::spawn_blocking(move || io.verify_and_stage(&work)));
        }
        while self.tasks.len() > MAX_TASKS {
            self.reap_one().await?;
        }
        if self.unflushed_bytes >= self.flush_bytes || self.unflushed_chunks >= self.flush_chunks {
            self.flush().await?;
        }
        Ok(())
    }

    /// Waits for the oldest group in flight.
    async fn reap_one(&mut self) -> CoreResult<()> {
        if let Some(task) = self.tasks.pop_front() {
            let staged = task.await.map_err(|e| CoreError::Internal(format!("chunk staging task failed: {e}")))??;
            self.staged.push(staged);
        }
        Ok(())
    }

    /// Makes every staged pack durable, then records their chunks in one transaction.
    async fn flush(&mut self) -> CoreResult<()> {
        while !self.tasks.is_empty() {
            self.reap_one().await?;
        }
        self.unflushed_bytes = 0;
        self.unflushed_chunks = 0;
        let staged_at = self.first_staged.take();
        if self.staged.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.staged);
        if staged_at.is_some_and(|t| t.elapsed() > self.max_staged_age) {
            // Dropping the batch removes its pack files; nothing of it is recorded.
            drop(batch);
            return Err(CoreError::BadRequest(format!(
                "the upload was too slow: chunks it sent over {} minutes ago could not be recorded before the rest \
                 of their batch arrived, so that batch was dropped; send it again (on a slow link, in smaller \
                 requests)",
                self.max_staged_age.as_secs() / 60
            )));
        }
        let rows: Vec<NewChunk> = batch
            .iter()
            .flat_map(StagedPack::chunks)
            .map(|c| NewChunk {
                id: c.id,
                size: c.size,
                place: ChunkPlace { pack: Some(c.pack), offset: c.offset, stored_size: c.stored_size },
            })
            .collect();
        self.io.blobs.persist(batch).await?;
        self.io.store.record_chunks(self.io.ws, &rows).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    use cloudsync_crypto::{SecretKey, keyed_hash};

    use super::*;
    use crate::testutil::{editor_workspace, files_below};
    use crate::{Access, Core};

    async fn setup(dir: &std::path::Path) -> (Core, Access, SecretKey) {
        let (core, _, access, chunk_key) = editor_workspace(dir).await;
        (core, access, chunk_key)
    }

    fn chunk(key: &SecretKey, i: u32) -> (ChunkId, Bytes) {
        let data = Bytes::from(format!("chunk number {i} ").repeat(3));
        (ChunkId(keyed_hash(key, &data)), data)
    }

    #[tokio::test]
    async fn batches_are_recorded_as_they_flush_and_repeats_are_stored_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (core, access, key) = setup(dir.path()).await;
        let io = core.chunk_io(&access).await.expect("io");
        let chunks: Vec<(ChunkId, Bytes)> = (0..700).map(|i| chunk(&key, i)).collect();
        let ids: Vec<ChunkId> = chunks.iter().map(|c| c.0).collect();

        let mut up = io.upload().with_flush_limits(usize::MAX, 300);
        for (id, data) in &chunks[..650] {
            up.push(*id, data.clone()).await.expect("push");
        }
        // Groups of 256 are dispatched as they fill; a flush happens once 300 new chunks are staged. So before
        // the end, the first batches are durable and recorded: a retry after a crash would skip them.
        let missing = core.missing_chunks(&access, &ids).await.expect("missing");
        assert!(missing.len() < 700 && missing.len() > 50, "part is recorded mid-request: {} missing", missing.len());
        up.push(ids[0], chunks[0].1.clone()).await.expect("a repeat");
        for (id, data) in &chunks[650..] {
            up.push(*id, data.clone()).await.expect("push");
        }
        let done = up.finish().await.expect("finish");
        assert_eq!((done.stored, done.already_present), (700, 1));
        assert!(core.missing_chunks(&access, &ids).await.expect("missing").is_empty());
        for (id, data) in &chunks[..5] {
            assert_eq!(io.get(*id).await.expect("get"), data.to_vec());
        }

        let mut again = io.upload();
        for (id, data) in &chunks[..10] {
            again.push(*id, data.clone()).await.expect("push");
        }
        let done = again.finish().await.expect("finish");
        assert_eq!((done.stored, done.already_present), (0, 10), "held chunks are not written again");
    }

    #[tokio::test]
    async fn a_chunk_that_does_not_match_its_id_fails_the_upload_and_its_batch_is_not_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (core, access, key) = setup(dir.path()).await;
        let io = core.chunk_io(&access).await.expect("io");
        // A first group of good chunks is staged (its pack written), then a later group fails.
        let good: Vec<(ChunkId, Bytes)> = (0..GROUP_CHUNKS as u32).map(|i| chunk(&key, i)).collect();
        let mut up = io.upload();
        for (id, data) in &good {
            up.push(*id, data.clone()).await.expect("push");
        }
        while let Some(task) = up.tasks.pop_front() {
            up.staged.push(task.await.expect("task").expect("staged"));
        }
        assert_eq!(files_below(&dir.path().join("chunks")), 1, "the good group's pack is written");
        up.push(ChunkId([9; 32]), Bytes::from_static(b"not the content of that id")).await.expect("queued");
        let err = up.finish().await.expect_err("mismatch");
        assert!(matches!(err, CoreError::BadRequest(_)), "{err}");
        let ids: Vec<ChunkId> = good.iter().map(|c| c.0).collect();
        assert_eq!(core.missing_chunks(&access, &ids).await.expect("missing").len(), ids.len(), "nothing recorded");
        assert_eq!(files_below(&dir.path().join("chunks")), 0, "the failed batch's pack is removed");
    }

    #[tokio::test]
    async fn a_slow_upload_records_as_it_goes_and_packs_staged_too_long_are_never_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (core, access, key) = setup(dir.path()).await;
        let io = core.chunk_io(&access).await.expect("io");
        let chunks: Vec<(ChunkId, Bytes)> = (0..GROUP_CHUNKS as u32 + 1).map(|i| chunk(&key, i)).collect();
        let ids: Vec<ChunkId> = chunks.iter().map(|c| c.0).collect();

        // A group staged a while ago is recorded at the next chunk, long before any size limit.
        let mut up = io.upload().with_staging_limits(Duration::from_millis(20), Duration::from_secs(3600));
        for (id, data) in &chunks[..GROUP_CHUNKS] {
            up.push(*id, data.clone()).await.expect("push");
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
        up.push(chunks[GROUP_CHUNKS].0, chunks[GROUP_CHUNKS].1.clone()).await.expect("push");
        assert_eq!(core.missing_chunks(&access, &ids).await.expect("missing"), vec![ids[GROUP_CHUNKS]]);
        up.finish().await.expect("finish");

        // Packs staged longer ago than the limit are dropped, not recorded: garbage collection may already
        // count them as never recorded.
        let other: Vec<(ChunkId, Bytes)> = (1000..1000 + GROUP_CHUNKS as u32).map(|i| chunk(&key, i)).collect();
        let before = files_below(&dir.path().join("chunks"));
        let mut slow = io.upload().with_staging_limits(Duration::from_secs(3600), Duration::from_millis(20));
        for (id, data) in &other {
            slow.push(*id, data.clone()).await.expect("push");
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
        let err = slow.finish().await.expect_err("too slow");
        assert!(err.to_string().contains("too slow"), "{err}");
        let other_ids: Vec<ChunkId> = other.iter().map(|c| c.0).collect();
        assert_eq!(core.missing_chunks(&access, &other_ids).await.expect("missing").len(), other.len());
        assert_eq!(files_below(&dir.path().join("chunks")), before, "its pack file is removed");
    }

    #[tokio::test]
    async fn a_group_of_small_chunks_is_one_pack() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (core, access, key) = setup(dir.path()).await;
        let io = core.chunk_io(&access).await.expect("io");
        let chunks: Vec<(ChunkId, Bytes)> = (0..GROUP_CHUNKS as u32).map(|i| chunk(&key, i)).collect();
        let mut up = io.upload();
        for (id, data) in &chunks {
            up.push(*id, data.clone()).await.expect("push");
        }
        up.finish().await.expect("finish");
        let packs = files_below(&dir.path().join("chunks"));
        assert_eq!(packs, 1, "{} chunks, one file", chunks.len());
        for (id, data) in &chunks {
            assert_eq!(io.get(*id).await.expect("get"), data.to_vec());
        }
    }
}
