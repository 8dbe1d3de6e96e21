//! The upload side of a push: receives chunks from the hashing thread, groups them into batches (see
//! [`crate::batch`]), asks the server which it lacks, uploads only those, and commits each file once every
//! batch holding its chunks is stored. The server refuses a commit naming chunks it does not hold, so this
//! ordering is what makes a commit succeed; committing against the listed version is what turns a
//! concurrent change on the server into a reported conflict instead of a silent overwrite.
//!
//! At most two batches are in memory: one being uploaded while the next one fills, so hashing and network
//! transfer overlap without memory growing with the tree.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use cloudsync_sdk::Client;
use cloudsync_types::api::{
    CommitRequest, CommitResult, DeltaBaseRef, FileEntry, MAX_BATCH_COMMITS, Manifest, ManifestChunk,
};
use cloudsync_types::{ApiErrorBody, ChunkId, ErrorCode, WorkspaceId, WsPath};
use futures_util::{StreamExt as _, stream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::batch::{Batch, BatchLimits, MAX_READY_COMMITS, Pending};
use crate::delta::{DeltaGate, send_deltas};
use crate::index::Stat;
use crate::keys::hash_hex;
use crate::retry::retry;
use crate::scan::LocalFile;
use crate::{SyncError, TransferSummary};

/// Batches being uploaded while the next one fills (so at most this + 1 batches are in memory): several
/// requests in flight hide the round trip and keep the server's disk busy.
const MAX_IN_FLIGHT: usize = 3;
/// Commits sent concurrently.
const COMMIT_CONCURRENCY: usize = 4;

/// What the hashing thread reports, in file order.
#[derive(Debug)]
pub(crate) enum Event {
    /// The next chunk of file `idx`, which starts at `offset` in it.
    Chunk { idx: usize, offset: u64, id: ChunkId, data: Bytes },
    /// The file being read is complete; `stat` is what it looked like when it was opened.
    Done { idx: usize, size: u64, hash: [u8; 32], mtime_ms: Option<i64>, stat: Stat },
    /// The file has the same content as on the server.
    Unchanged { idx: usize, stat: Stat },
    /// The file could not be read; its chunks so far are abandoned.
    Skipped { why: String },
}

/// What became of one file of an upload, by its index in the file list.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// Committed as this server entry; the local file looked like `stat` when it was read.
    Committed { entry: FileEntry, stat: Stat },
    /// Its content equals the server copy it was compared with.
    Unchanged { stat: Stat },
    /// The server copy changed meanwhile; nothing was committed.
    Conflict,
}

/// A fully read file waiting for its chunks to be stored.
#[derive(Debug)]
struct Ready {
    idx: usize,
    stat: Stat,
    req: CommitRequest,
    /// The last batch holding its chunks; `None` when it has none (an empty file).
    needs: Option<u64>,
}

/// What flushing one batch did.
#[derive(Debug)]
struct Flushed {
    seq: u64,
    uploaded: u64,
    deduplicated: u64,
    bytes: u64,
    /// Of `uploaded`, chunks sent as deltas.
    as_delta: u64,
}

/// Upload state of one push.
pub(crate) struct Uploader<'a> {
    client: Client,
    ws: WorkspaceId,
    files: &'a [LocalFile],
    remote: &'a HashMap<WsPath, FileEntry>,
    limits: BatchLimits,
    filling: Batch,
    in_flight: JoinSet<Result<Flushed, SyncError>>,
    /// Finished batches not yet contiguous with `done_below`.
    done: BTreeSet<u64>,
    /// Every batch with a smaller sequence number is stored.
    done_below: u64,
    current: Vec<ManifestChunk>,
    current_last: Option<u64>,
    ready: Vec<Ready>,
    gate: Arc<DeltaGate>,
    /// What became of each file that got that far, by index.
    pub(crate) outcomes: Vec<(usize, Outcome)>,
}

impl<'a> Uploader<'a> {
    pub(crate) fn new(
        client: Client,
        ws: WorkspaceId,
        files: &'a [LocalFile],
        remote: &'a HashMap<WsPath, FileEntry>,
    ) -> Self {
        Self {
            client,
            ws,
            files,
            remote,
            limits: BatchLimits::DEFAULT,
            filling: Batch::new(0),
            in_flight: JoinSet::new(),
            done: BTreeSet::new(),
            done_below: 0,
            current: Vec::new(),
            current_last: None,
            ready: Vec::new(),
            gate: Arc::new(DeltaGate::default()),
            outcomes: Vec::new(),
        }
    }

    /// Consumes events until the hashing thread is done, then flushes and commits everything left.
    pub(crate) async fn run(
        &mut self,
        mut rx: mpsc::Receiver<Vec<Event>>,
        summary: &mut TransferSummary,
    ) -> Result<(), SyncError> {
        loop {
            tokio::select! {
                group = rx.recv() => match group {
                    Some(group) => {
                        for ev in group {
                            self.on_event(ev, summary).await?;
                        }
                    }
                    None => break,
                },
                Some(joined) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    self.on_flushed(joined.map_err(SyncError::task)??, summary).await?;
                }
            }
        }
        self.seal(summary).await?;
        while let Some(joined) = self.in_flight.join_next().await {
            self.on_flushed(joined.map_err(SyncError::task)??, summary).await?;
        }
        self.commit_ready(summary).await?;
        if self.ready.is_empty() {
            Ok(())
        } else {
            Err(SyncError::Internal(format!(
                "{} files were read but never committed; running the push again may work around it",
                self.ready.len()
            )))
        }
    }

    async fn on_event(&mut self, ev: Event, summary: &mut TransferSummary) -> Result<(), SyncError> {
        match ev {
            Event::Chunk { idx, offset, id, data } => {
                // The chunker never cuts chunks anywhere near 4 GiB.
                let size =
                    u32::try_from(data.len()).map_err(|_| SyncError::Internal(format!("chunk {id} is too large")))?;
                self.current.push(ManifestChunk { id, size });
                self.current_last = Some(self.filling.seq);
                // A chunk of a file the server has a copy of may go as a delta against that copy.
                let base = self.files.get(idx).and_then(|f| self.remote.get(&f.ws)).map(|r| DeltaBaseRef {
                    path: r.path.clone(),
                    version: r.version,
                    offset,
                    len: size,
                });
                if self.filling.add(Pending { id, data, base }, &self.limits) {
                    self.seal(summary).await?;
                }
            }
            Event::Done { idx, size, hash, mtime_ms, stat } => {
                let Some(file) = self.files.get(idx) else {
                    return Err(SyncError::Internal(format!("the hashing thread reported unknown file #{idx}")));
                };
                let chunks = std::mem::take(&mut self.current);
                let req = CommitRequest {
                    path: file.ws.clone(),
                    base_version: self.remote.get(&file.ws).map(|r| r.version),
                    manifest: Manifest { size, content_hash: hash_hex(&hash), chunks },
                    mtime_ms,
                };
                let needs = self.current_last.take();
                self.ready.push(Ready { idx, stat, req, needs });
                if needs.is_none_or(|n| n < self.done_below) {
                    self.commit_ready(summary).await?;
                }
                if self.ready.len() >= MAX_READY_COMMITS {
                    self.make_room(summary).await?;
                }
            }
            Event::Unchanged { idx, stat } => {
                // With a single read its chunks went by first; the file is not committed.
                self.current.clear();
                self.current_last = None;
                summary.files_unchanged += 1;
                self.outcomes.push((idx, Outcome::Unchanged { stat }));
            }
            Event::Skipped { why } => {
                self.current.clear();
                self.current_last = None;
                summary.skip(why);
            }
        }
        Ok(())
    }

    /// Closes the filling batch and starts uploading it, first waiting for room.
    async fn seal(&mut self, summary: &mut TransferSummary) -> Result<(), SyncError> {
        let next = Batch::new(self.filling.seq + 1);
        let batch = std::mem::replace(&mut self.filling, next);
        summary.chunks_deduplicated += batch.duplicates;
        if batch.is_empty() {
            self.mark_done(batch.seq);
            return self.commit_ready(summary).await;
        }
        while self.in_flight.len() >= MAX_IN_FLIGHT {
            match self.in_flight.join_next().await {
                Some(joined) => self.on_flushed(joined.map_err(SyncError::task)??, summary).await?,
                None => break,
            }
        }
        self.in_flight.spawn(flush(self.client.clone(), self.ws, batch, Arc::clone(&self.gate)));
        Ok(())
    }

    /// Waits until fewer than [`MAX_READY_COMMITS`] files wait for their commit, so waiting commits never pile
    /// up: one finished batch at a time (in the order they finish; the others stay in flight meanwhile),
    /// sealing the filling batch first when the oldest waiting file needs it.
    async fn make_room(&mut self, summary: &mut TransferSummary) -> Result<(), SyncError> {
        while self.ready.len() >= MAX_READY_COMMITS {
            let oldest = self.ready.iter().filter_map(|r| r.needs).min();
            if oldest.is_some_and(|n| n >= self.filling.seq) {
                self.seal(summary).await?;
            }
            match self.in_flight.join_next().await {
                Some(joined) => self.on_flushed(joined.map_err(SyncError::task)??, summary).await?,
                None => {
                    self.commit_ready(summary).await?;
                    if self.ready.len() >= MAX_READY_COMMITS {
                        return Err(SyncError::Internal(format!(
                            "{} files wait for batches that are not being uploaded",
                            self.ready.len()
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    async fn on_flushed(&mut self, f: Flushed, summary: &mut TransferSummary) -> Result<(), SyncError> {
        summary.chunks_uploaded += f.uploaded;
        summary.chunks_deduplicated += f.deduplicated;
        summary.bytes_uploaded += f.bytes;
        summary.chunks_delta += f.as_delta;
        self.mark_done(f.seq);
        self.commit_ready(summary).await
    }

    fn mark_done(&mut self, seq: u64) {
        self.done.insert(seq);
        while self.done.remove(&self.done_below) {
            self.done_below += 1;
        }
    }

    /// Commits every file whose chunks are all stored, many per request. A commit is never retried (see
    /// [`crate::retry`]): if its answer was lost it may have been stored, and repeating it would then be
    /// refused as a conflict.
    async fn commit_ready(&mut self, summary: &mut TransferSummary) -> Result<(), SyncError> {
        let done_below = self.done_below;
        let (now, later): (Vec<Ready>, Vec<Ready>) =
            std::mem::take(&mut self.ready).into_iter().partition(|r| r.needs.is_none_or(|n| n < done_below));
        self.ready = later;
        let files = self.client.files(self.ws);
        let mut groups = Vec::new();
        let mut now = now.into_iter().peekable();
        while now.peek().is_some() {
            groups.push(now.by_ref().take(MAX_BATCH_COMMITS).collect::<Vec<_>>());
        }
        let mut results = stream::iter(groups)
            .map(|group| async move {
                let reqs: Vec<CommitRequest> = group.iter().map(|r| r.req.clone()).collect();
                let res = files.commit_batch(&reqs).await;
                (group, res)
            })
            .buffer_unordered(COMMIT_CONCURRENCY);
        while let Some((group, res)) = results.next().await {
            // The SDK answers one result per commit, or an error.
            for (ready, result) in group.into_iter().zip(res?) {
                let outcome = record_commit(&ready.req, result, ready.stat, summary)?;
                self.outcomes.push((ready.idx, outcome));
            }
        }
        Ok(())
    }
}

/// Counts a commit's outcome; a conflict is reported, any other failure stops the push.
fn record_commit(
    req: &CommitRequest,
    res: CommitResult,
    stat: Stat,
    summary: &mut TransferSummary,
) -> Result<Outcome, SyncError> {
    match (res.entry, res.error) {
        (Some(entry), None) => {
            summary.files_uploaded += 1;
            Ok(Outcome::Committed { entry, stat })
        }
        (_, Some(e)) if is_conflict(e.code) => {
            summary.files_conflicted += 1;
            summary.conflicts.push(conflict_message(req));
            Ok(Outcome::Conflict)
        }
        (_, error) => Err(refused_commit(&req.path.to_string(), error)),
    }
}

/// Why the server refused the commit of `shown` (as the user knows the path), for any refusal but a conflict.
pub(crate) fn refused_commit(shown: &str, error: Option<ApiErrorBody>) -> SyncError {
    match error {
        // The server checked the chunks present when this upload asked, and no longer holds some: its garbage
        // collection condemned them meanwhile (they were named by no version). Nothing was changed; a new run
        // asks again and uploads them.
        Some(e) if e.code == ErrorCode::MissingChunks => SyncError::Internal(format!(
            "{shown}: the server no longer holds some chunks this upload counted on ({}); nothing was changed, run \
             the same command again to upload them",
            e.message
        )),
        Some(e) => SyncError::Internal(format!("{shown}: the server refused the commit: {}", e.message)),
        None => SyncError::Integrity(format!("{shown}: the server answered a commit with nothing")),
    }
}

/// A stale base version (or a file created meanwhile). Missing chunks are a different error, not a conflict:
/// the server no longer holds chunks it said it had.
fn is_conflict(code: ErrorCode) -> bool {
    code == ErrorCode::Conflict
}

fn conflict_message(req: &CommitRequest) -> String {
    let since = match req.base_version {
        Some(v) => format!("version {v} this sync compared against"),
        None => "this sync listed it (someone else created it)".to_owned(),
    };
    format!("{}: changed on the server since {since}; your copy was not uploaded", req.path)
}

/// One batch: one `missing_chunks`, then only what the server lacks: as deltas where they pay (see
/// [`crate::delta`]), the rest whole in one `upload_chunks`.
async fn flush(client: Client, ws: WorkspaceId, batch: Batch, gate: Arc<DeltaGate>) -> Result<Flushed, SyncError> {
    let files = client.files(ws);
    let ids = batch.ids();
    let missing = retry(|| files.missing_chunks(&ids)).await?;
    let missing: HashSet<ChunkId> = missing.into_iter().collect();
    let seq = batch.seq;
    let wanted = batch.into_wanted(&missing);
    let (upload, delta) = send_deltas(&files, wanted, &gate).await?;
    let bytes = upload.iter().map(|(_, d)| d.len() as u64).sum::<u64>() + delta.bytes;
    let uploaded = upload.len() as u64 + delta.chunks;
    if !upload.is_empty() {
        retry(|| files.upload_chunks(upload.clone())).await?;
    }
    Ok(Flushed { seq, uploaded, deduplicated: ids.len() as u64 - uploaded, bytes, as_delta: delta.chunks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_stale_versions_are_conflicts() {
        assert!(is_conflict(ErrorCode::Conflict));
        assert!(!is_conflict(ErrorCode::MissingChunks));
        assert!(!is_conflict(ErrorCode::NotFound));
    }

    #[test]
    fn chunks_the_server_no_longer_holds_stop_the_run_with_what_to_do() {
        let req = CommitRequest {
            path: WsPath::parse("docs/a.txt").expect("path"),
            base_version: None,
            manifest: Manifest { size: 0, content_hash: String::new(), chunks: Vec::new() },
            mtime_ms: None,
        };
        let refused = CommitResult {
            path: req.path.clone(),
            entry: None,
            error: Some(cloudsync_types::ApiErrorBody {
                code: ErrorCode::MissingChunks,
                message: "1 chunks referenced by the manifest are not stored yet; upload them first".into(),
                request_id: "r".into(),
            }),
        };
        let mut summary = TransferSummary::default();
        let stat = crate::index::Stat::default();
        let err = record_commit(&req, refused, stat, &mut summary).expect_err("not a conflict").to_string();
        assert!(err.contains("docs/a.txt") && err.contains("run the same command again"), "{err}");
        assert_eq!(summary.files_conflicted, 0);
    }

    #[test]
    fn conflict_message_names_the_path() {
        let req = CommitRequest {
            path: WsPath::parse("docs/a.txt").expect("path"),
            base_version: Some(3),
            manifest: Manifest { size: 0, content_hash: String::new(), chunks: Vec::new() },
            mtime_ms: None,
        };
        let m = conflict_message(&req);
        assert!(m.starts_with("docs/a.txt: changed on the server since version 3"), "{m}");
        assert!(m.ends_with("your copy was not uploaded"), "{m}");
    }
}
