//! Downloads of many files at once, moving only the chunks the local side lacks.
//!
//! 1. **Inspect** (blocking): for every file, create its folders (never through a symlink, see
//!    [`crate::localpath`]) and, when a local file is already there, cut it with the workspace chunker. Its
//!    chunks can be reused, so an edit in the middle of a large file downloads only the chunks around the
//!    edit; and when its content already equals the server's nothing is downloaded at all.
//! 2. **Manifests**: fetched 1000 files per request.
//! 3. **Chunks**: every chunk that is neither in the old local file nor earlier in the same download is
//!    requested, in the order the files will be written, packed into requests of about 16 MiB with several
//!    in flight. Each chunk is checked against its keyed id as it arrives.
//! 4. **Write** (one blocking thread): each file is assembled in a fresh temporary file beside its target,
//!    checked against the listed size and keyed content hash, and only then renamed into place. Renames
//!    happen in groups after one file-system flush (`syncfs` on Linux) rather than one fsync per file, so
//!    thousands of small files do not each wait for the disk, and a crash never leaves a half-written file
//!    under its final name.
//!
//! A local file found at a target is replaced only when it still looks exactly as the caller said may be
//! replaced (an older copy the server keeps); anything else is renamed to a conflicted copy first.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use cloudsync_sdk::Client;
use cloudsync_types::api::{FileEntry, Manifest, ManifestRef};
use cloudsync_types::{ChunkId, MAX_CHUNK_SIZE, WorkspaceId};
use futures_util::{StreamExt as _, stream};
use indicatif::ProgressBar;
use tokio::sync::mpsc;

use crate::chunking::chunk_stream;
use crate::conflict::move_aside;
use crate::index::Stat;
use crate::keys::{ChunkKeys, hash_hex, hash_matches};
use crate::localpath::{Existing, prepare};
use crate::retry::retry;
use crate::{SyncError, TransferSummary};

/// Prefix and suffix of the temporary files downloads are assembled in (sync and push skip them).
pub(crate) const PART_PREFIX: &str = ".cloudsync-";
pub(crate) const PART_SUFFIX: &str = ".part";
/// Payload bytes asked for per chunk request.
const FETCH_BYTES: u64 = 16 * 1024 * 1024;
/// Chunks asked for per request (the server's cap is higher).
const FETCH_CHUNKS: usize = 2048;
/// Chunk requests in flight.
pub(crate) const FETCH_IN_FLIGHT: usize = 3;
/// Fetched requests waiting for the writer (memory: about this many times [`FETCH_BYTES`], besides those
/// in flight; an E2EE pull also keeps up to [`FETCH_IN_FLIGHT`] fetched requests ahead while they are opened,
/// so it may hold about eight requests' bytes at once).
pub(crate) const FEED_REQUESTS: usize = 2;
/// Files written before their group is flushed and renamed into place.
pub(crate) const GROUP_FILES: usize = 1000;
/// Bytes written before a group is flushed.
pub(crate) const GROUP_BYTES: u64 = 256 * 1024 * 1024;

/// One file to bring down.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    /// The listed server file.
    pub(crate) entry: FileEntry,
    /// The local folder being synced; `target` is inside it.
    pub(crate) root: PathBuf,
    /// Validated local path (see [`crate::localpath::local_path`]).
    pub(crate) target: PathBuf,
    /// The local file that may be replaced, as it looked when the caller decided; `None`: whatever is at
    /// the target is kept as a conflicted copy (unless its content already equals the server's).
    pub(crate) replace: Option<Stat>,
}

/// What became of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fetched {
    /// Written; `stat` describes the new local file; `kept_as` is where a differing local file went.
    Written { stat: Stat, kept_as: Option<PathBuf> },
    /// The local file already had this content; nothing was written.
    AlreadyThere { stat: Stat },
    /// The file vanished from the server (deleted or changed) before it was fetched.
    Gone,
    /// Left alone, with the reason.
    Skipped(String),
}

/// The old local file of a job and which of its chunks can be reused.
#[derive(Debug, Default)]
pub(crate) struct Reuse {
    /// Chunk id → (offset, length) in the old local file.
    chunks: HashMap<ChunkId, (u64, u32)>,
    /// The old local file's stat and keyed content hash, when there is one.
    pub(crate) local: Option<(Stat, [u8; 32])>,
}

/// A job after inspection.
#[derive(Debug)]
pub(crate) enum Inspected {
    /// Nothing to do: the outcome is already known.
    Done(Fetched),
    /// To be written (reusing what `reuse` has).
    Fetch(Reuse),
}

/// Downloads `jobs` and returns each outcome by index. Bytes and files are counted in `summary`; a
/// download that fails verification stops everything with [`SyncError::Integrity`] and leaves no file
/// under its final name.
pub(crate) async fn download(
    client: &Client,
    ws: WorkspaceId,
    keys: &ChunkKeys,
    jobs: Vec<Job>,
    device: &str,
    bar: &ProgressBar,
    summary: &mut TransferSummary,
) -> Result<Vec<(usize, Fetched)>, SyncError> {
    let (jobs, inspected) = inspect_all(jobs, keys, bar).await?;
    download_inspected(client, ws, keys, jobs, inspected, device, bar, summary).await
}

/// Prepares every job's folders and looks at what is at its target (blocking work, off the runtime). Local
/// files already there are read in full, so the bar says which one is being compared.
pub(crate) async fn inspect_all(
    jobs: Vec<Job>,
    keys: &ChunkKeys,
    bar: &ProgressBar,
) -> Result<(Vec<Job>, Vec<Inspected>), SyncError> {
    let (keys, bar) = (keys.clone(), bar.clone());
    tokio::task::spawn_blocking(move || {
        let total = jobs.len();
        let inspected = jobs
            .iter()
            .enumerate()
            .map(|(n, j)| {
                bar.set_message(format!("comparing {}/{total}: {}", n + 1, j.entry.path));
                inspect(j, &keys)
            })
            .collect::<Result<Vec<_>, _>>()?;
        bar.set_message("downloading");
        Ok((jobs, inspected))
    })
    .await
    .map_err(SyncError::task)?
}

/// [`download`] after [`inspect_all`] (the caller may have adjusted `jobs[i].replace` meanwhile).
#[expect(clippy::too_many_arguments, reason = "internal; the inputs of one download")]
pub(crate) async fn download_inspected(
    client: &Client,
    ws: WorkspaceId,
    keys: &ChunkKeys,
    jobs: Vec<Job>,
    inspected: Vec<Inspected>,
    device: &str,
    bar: &ProgressBar,
    summary: &mut TransferSummary,
) -> Result<Vec<(usize, Fetched)>, SyncError> {
    let mut outcomes = Vec::new();
    let mut todo: Vec<(usize, Reuse)> = Vec::new();
    for (i, ins) in inspected.into_iter().enumerate() {
        match ins {
            Inspected::Done(f) => {
                bar.inc(jobs[i].entry.size);
                outcomes.push((i, f));
            }
            Inspected::Fetch(r) => todo.push((i, r)),
        }
    }
    if todo.is_empty() {
        return Ok(outcomes);
    }

    // Manifests of exactly the listed versions, so a concurrent change cannot make verification fail.
    let files = client.files(ws);
    let refs: Vec<ManifestRef> = todo
        .iter()
        .map(|(i, _)| ManifestRef { path: jobs[*i].entry.path.clone(), version: Some(jobs[*i].entry.version) })
        .collect();
    // The SDK splits this into requests of at most 1000 files, and answers one entry per file or an error.
    let manifests = retry(|| files.manifests(&refs)).await?;
    let manifests = manifests.into_iter().map(|m| m.map(|vm| vm.manifest));

    // What to write, in order, and the chunks that must come from the server, in the order they are needed.
    let mut work: Vec<Work> = Vec::new();
    let mut wanted: Vec<(ChunkId, u32)> = Vec::new();
    for ((i, reuse), manifest) in todo.into_iter().zip(manifests) {
        let job = &jobs[i];
        let Some(manifest) = manifest else {
            outcomes.push((i, Fetched::Gone));
            bar.inc(job.entry.size);
            continue;
        };
        check_manifest(&manifest, &job.entry)?;
        let mut seen_here = HashSet::new();
        for c in &manifest.chunks {
            if !reuse.chunks.contains_key(&c.id) && seen_here.insert(c.id) {
                wanted.push((c.id, c.size));
            }
        }
        work.push(Work { idx: i, job: job.clone(), manifest, reuse });
    }

    // The writer thread: consumes chunks in `wanted` order, a request's worth at a time.
    let (tx, rx) = mpsc::channel::<Vec<(ChunkId, Bytes)>>(FEED_REQUESTS);
    let writer = {
        let (keys, device, bar) = (keys.clone(), device.to_owned(), bar.clone());
        tokio::task::spawn_blocking(move || write_all(work, rx, &keys, &device, &bar))
    };
    let fetched = stream::iter(requests(wanted))
        .map(|ids| {
            let files = client.files(ws);
            async move { retry(|| fetch_all(&files, &ids)).await }
        })
        .buffered(FETCH_IN_FLIGHT);
    let written = feed_writer(fetched, tx, writer, |chunks| {
        summary.bytes_downloaded += chunks.iter().map(|(_, d)| d.len() as u64).sum::<u64>();
        chunks
    })
    .await?;
    outcomes.extend(written);
    Ok(outcomes)
}

/// Hands what `fetched` yields, in order and converted by `take` (which may also count it), to the writer
/// thread at the other end of `tx`, until the stream ends, a fetch fails or the writer stops. Returns the
/// writer's result, or the fetch error: the writer then only saw its feed end early.
pub(crate) async fn feed_writer<S, T, R>(
    fetched: impl futures_util::Stream<Item = Result<S, SyncError>>,
    tx: mpsc::Sender<T>,
    writer: tokio::task::JoinHandle<Result<R, SyncError>>,
    mut take: impl FnMut(S) -> T,
) -> Result<R, SyncError> {
    // Boxed so that dropping it below cancels the fetches still in flight before the writer is awaited.
    let mut fetched = Box::pin(fetched);
    let mut fetch_error = None;
    while let Some(res) = fetched.next().await {
        match res {
            Ok(item) => {
                if tx.send(take(item)).await.is_err() {
                    // The writer stopped; its own error says why.
                    break;
                }
            }
            Err(e) => {
                fetch_error = Some(e);
                break;
            }
        }
    }
    drop(fetched);
    drop(tx);
    let written = writer.await.map_err(SyncError::task)?;
    match fetch_error {
        Some(e) => Err(e),
        None => written,
    }
}

/// Splits the chunks wanted (id, stored size), in order, into fetch requests of at most [`FETCH_CHUNKS`]
/// chunks and [`FETCH_BYTES`] bytes (a larger chunk goes alone).
pub(crate) fn requests(wanted: impl IntoIterator<Item = (ChunkId, u32)>) -> Vec<Vec<ChunkId>> {
    let wanted: Vec<(ChunkId, u32)> = wanted.into_iter().collect();
    groups(wanted.iter().map(|w| u64::from(w.1)), FETCH_CHUNKS, FETCH_BYTES)
        .into_iter()
        .map(|r| wanted[r].iter().map(|w| w.0).collect())
        .collect()
}

/// Splits items of the given sizes, in order, into runs of at most `max_items` items and `max_bytes` bytes (a
/// larger item goes alone), as index ranges.
pub(crate) fn groups(
    sizes: impl IntoIterator<Item = u64>,
    max_items: usize,
    max_bytes: u64,
) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    let mut end = 0;
    for size in sizes {
        if end > start && (bytes + size > max_bytes || end - start >= max_items) {
            groups.push(start..end);
            (start, bytes) = (end, 0);
        }
        bytes += size;
        end += 1;
    }
    if end > start {
        groups.push(start..end);
    }
    groups
}

/// Fetches one request's chunks into memory (so a retry restarts it cleanly).
pub(crate) async fn fetch_all(
    files: &cloudsync_sdk::Files<'_>,
    ids: &[ChunkId],
) -> Result<Vec<(ChunkId, Bytes)>, SyncError> {
    let mut stream = files.fetch_chunks(ids).await?;
    let mut out = Vec::with_capacity(ids.len());
    while let Some(chunk) = stream.next().await? {
        out.push(chunk);
    }
    if out.len() != ids.len() {
        return Err(SyncError::Integrity(format!("the server sent {} of {} chunks", out.len(), ids.len())));
    }
    Ok(out)
}

/// The manifest must describe the listed file.
fn check_manifest(m: &Manifest, entry: &FileEntry) -> Result<(), SyncError> {
    let total: u64 = m.chunks.iter().map(|c| u64::from(c.size)).sum();
    let too_big = m.chunks.iter().any(|c| c.size as usize > MAX_CHUNK_SIZE);
    if total != entry.size
        || m.size != entry.size
        || too_big
        || !m.content_hash.eq_ignore_ascii_case(&entry.content_hash)
    {
        return Err(SyncError::Integrity(format!(
            "{}: the server's manifest does not describe the listed file (size {} vs {}); nothing was written",
            entry.path, m.size, entry.size
        )));
    }
    Ok(())
}

/// Prepares one job's folders and looks at what is at its target.
fn inspect(job: &Job, keys: &ChunkKeys) -> Result<Inspected, SyncError> {
    let existing = match prepare(&job.root, &job.target).map_err(|(path, e)| SyncError::io(&path, e))? {
        Ok(x) => x,
        Err(why) => return Ok(Inspected::Done(Fetched::Skipped(why))),
    };
    if existing == Existing::Missing {
        return Ok(Inspected::Fetch(Reuse::default()));
    }
    // A regular file (prepare refuses anything else): learn its chunks, and whether it already matches.
    let file = match File::open(&job.target) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Inspected::Fetch(Reuse::default())),
        Err(e) => return Err(SyncError::io(&job.target, e)),
    };
    let meta = file.metadata().map_err(|e| SyncError::io(&job.target, e))?;
    let stat = Stat::of(&meta);
    let mut reuse = Reuse::default();
    let mut offset = 0u64;
    let digest = chunk_stream(&file, keys, |id, data| {
        let len = data.len() as u32;
        reuse.chunks.entry(id).or_insert((offset, len));
        offset += u64::from(len);
        std::ops::ControlFlow::Continue(())
    })
    .map_err(|e| SyncError::io(&job.target, e))?;
    if let Some(d) = digest {
        if d.size == job.entry.size && hash_matches(&d.hash, &job.entry.content_hash) && stat.size == d.size {
            return Ok(Inspected::Done(Fetched::AlreadyThere { stat }));
        }
        reuse.local = Some((stat, d.hash));
    }
    Ok(Inspected::Fetch(reuse))
}

/// One file for the writer.
#[derive(Debug)]
struct Work {
    idx: usize,
    job: Job,
    manifest: Manifest,
    reuse: Reuse,
}

/// A verified temporary file waiting to be renamed into place.
struct Pending {
    idx: usize,
    tmp: PathBuf,
    job: Job,
    stat: Stat,
}

/// The fetched chunks as the writer consumes them: one channel message per request, not per chunk (a tree
/// of small files has tens of thousands of chunks, and each hand-off between threads costs a wake-up).
struct Feed {
    rx: mpsc::Receiver<Vec<(ChunkId, Bytes)>>,
    ready: VecDeque<(ChunkId, Bytes)>,
}

impl Feed {
    /// The next chunk, waiting for the next request's answer when needed; `None` once the fetching side
    /// is done.
    fn next(&mut self) -> Option<(ChunkId, Bytes)> {
        while self.ready.is_empty() {
            self.ready = self.rx.blocking_recv()?.into();
        }
        self.ready.pop_front()
    }
}

/// Removes temporary files that never got renamed.
struct Cleanup(HashSet<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in self.0.drain() {
            let _ = fs::remove_file(p);
        }
    }
}

/// The writer: assembles every file from reused and fetched chunks, verifies it, and installs groups.
fn write_all(
    work: Vec<Work>,
    rx: mpsc::Receiver<Vec<(ChunkId, Bytes)>>,
    keys: &ChunkKeys,
    device: &str,
    bar: &ProgressBar,
) -> Result<Vec<(usize, Fetched)>, SyncError> {
    let mut rx = Feed { rx, ready: VecDeque::new() };
    let targets: Vec<PathBuf> = work.iter().map(|w| w.job.target.clone()).collect();
    with_created_ahead(&targets, |made| write_in_order(work, made, &mut rx, keys, device, bar))
}

/// Runs `write` with the temporary files of `targets` created, in order, a little ahead of it on a second
/// thread: creating a file is most of the cost of writing a small one (the file system allocates an inode and
/// updates the folder). Whichever way `write` ends (done, failed or panicked), files created ahead and not
/// taken are removed.
pub(crate) fn with_created_ahead<R>(targets: &[PathBuf], write: impl FnOnce(&Made) -> R) -> R {
    let (made_tx, made_rx) = std::sync::mpsc::sync_channel(CREATE_AHEAD);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let stop = &stop;
        // The sender lives in the thread: once it returns, the draining below ends.
        scope.spawn(move || create_ahead(targets, &made_tx, stop));
        // The creating thread is released (and what it made but was not taken removed) so the scope can end.
        let _drain = DrainAhead { stop, made: &made_rx };
        write(&made_rx)
    })
}

/// The next temporary file created ahead (see [`with_created_ahead`]).
pub(crate) fn take_made(made: &Made) -> Result<(PathBuf, File), SyncError> {
    made.recv().map_err(|_| SyncError::Internal("the file-creating thread stopped".into()))?
}

/// Writes every file in `work` order into the temporary files `made` hands over, installing them a group at
/// a time.
fn write_in_order(
    work: Vec<Work>,
    made: &Made,
    rx: &mut Feed,
    keys: &ChunkKeys,
    device: &str,
    bar: &ProgressBar,
) -> Result<Vec<(usize, Fetched)>, SyncError> {
    let mut out = Vec::new();
    let mut pending: Vec<Pending> = Vec::new();
    let mut cleanup = Cleanup(HashSet::new());
    let mut group_bytes = 0u64;
    for w in work {
        let (tmp, file) = take_made(made)?;
        cleanup.0.insert(tmp.clone());
        let stat = write_one(&w, &tmp, file, rx, keys, bar)?;
        group_bytes += w.job.entry.size;
        pending.push(Pending { idx: w.idx, tmp, job: w.job, stat });
        if pending.len() >= GROUP_FILES || group_bytes >= GROUP_BYTES {
            install(&mut pending, &mut cleanup, device, &mut out)?;
            group_bytes = 0;
        }
    }
    install(&mut pending, &mut cleanup, device, &mut out)?;
    Ok(out)
}

/// Temporary files created ahead and waiting for the writer.
pub(crate) type Made = std::sync::mpsc::Receiver<Result<(PathBuf, File), SyncError>>;

/// Stops [`create_ahead`] and removes what it created but the writer did not take.
struct DrainAhead<'a> {
    stop: &'a AtomicBool,
    made: &'a Made,
}

impl Drop for DrainAhead<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        while let Ok(made) = self.made.recv() {
            if let Ok((tmp, _)) = made {
                let _ = fs::remove_file(tmp);
            }
        }
    }
}

/// Temporary files created ahead of the writer.
const CREATE_AHEAD: usize = 64;

/// Creates the temporary file of each target in order, until done, told to stop, or creation fails.
fn create_ahead(
    targets: &[PathBuf],
    made: &std::sync::mpsc::SyncSender<Result<(PathBuf, File), SyncError>>,
    stop: &AtomicBool,
) {
    for t in targets {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let created = create_temp(t);
        let failed = created.is_err();
        if let Err(std::sync::mpsc::SendError(Ok((tmp, _)))) = made.send(created) {
            let _ = fs::remove_file(tmp);
            return;
        }
        if failed {
            return;
        }
    }
}

/// Writes one file into `tmp` and verifies it; returns the stat of the finished temporary file.
fn write_one(
    w: &Work,
    tmp: &Path,
    file: File,
    rx: &mut Feed,
    keys: &ChunkKeys,
    bar: &ProgressBar,
) -> Result<Stat, SyncError> {
    let shown = w.job.entry.path.as_str();
    let io_err = |e: io::Error| SyncError::io(tmp, e);
    let old = if w.reuse.chunks.is_empty() { None } else { File::open(&w.job.target).ok() };
    // A buffer no larger than the file: a fresh 1 MiB buffer per small file costs more than the file.
    let capacity = usize::try_from(w.job.entry.size).unwrap_or(usize::MAX).clamp(8 << 10, 1 << 20);
    let mut out = io::BufWriter::with_capacity(capacity, &file);
    let mut hasher = keys.content_hasher();
    let single = w.manifest.chunks.len() == 1;
    // Chunks already written to this file, for ids that repeat within it.
    let mut written: HashMap<ChunkId, (u64, u32)> = HashMap::new();
    let mut offset = 0u64;
    let mut buf = Vec::new();
    for c in &w.manifest.chunks {
        let data: Bytes = if let Some(&(at, len)) = w.reuse.chunks.get(&c.id) {
            read_at(old.as_ref(), &w.job.target, at, len, &mut buf)?;
            // The old file may have changed since it was inspected: reuse only what still matches.
            if keys.chunk_id(&buf) != c.id {
                return Err(SyncError::Integrity(format!(
                    "{shown}: the local file changed while it was being updated; run the sync again"
                )));
            }
            Bytes::copy_from_slice(&buf)
        } else if let Some(&(at, len)) = written.get(&c.id) {
            out.flush().map_err(io_err)?;
            read_at(Some(&file), tmp, at, len, &mut buf)?;
            Bytes::copy_from_slice(&buf)
        } else {
            let (id, data) = rx.next().ok_or_else(|| {
                SyncError::Integrity(format!("{shown}: the download ended before all chunks arrived"))
            })?;
            if id != c.id || data.len() != c.size as usize || keys.chunk_id(&data) != c.id {
                return Err(SyncError::Integrity(format!(
                    "{shown}: the server sent a chunk that does not match the manifest; nothing was written"
                )));
            }
            written.insert(c.id, (offset, c.size));
            data
        };
        if !single {
            hasher.update(&data);
        }
        out.write_all(&data).map_err(io_err)?;
        offset += data.len() as u64;
        bar.inc(data.len() as u64);
    }
    out.flush().map_err(io_err)?;
    drop(out);
    // A file of one chunk: its content hash is that chunk's id (same key), which was checked as it arrived.
    let hash = match w.manifest.chunks.as_slice() {
        [only] => only.id.0,
        _ => hasher.finalize(),
    };
    if offset != w.job.entry.size || !hash_matches(&hash, &w.job.entry.content_hash) {
        return Err(SyncError::Integrity(format!(
            "{shown}: the assembled file (hash {}) does not match the listed one ({}); nothing was written",
            hash_hex(&hash),
            w.job.entry.content_hash
        )));
    }
    if let Some(t) = w.job.entry.mtime_ms.and_then(system_time)
        && let Err(e) = file.set_modified(t)
    {
        tracing::debug!("{}: cannot set the modification time: {e}", w.job.target.display());
    }
    let meta = file.metadata().map_err(io_err)?;
    Ok(Stat::of(&meta))
}

/// Reads `len` bytes at `at` from `file` into `buf`.
fn read_at(file: Option<&File>, path: &Path, at: u64, len: u32, buf: &mut Vec<u8>) -> Result<(), SyncError> {
    use std::io::{Seek as _, SeekFrom};
    let file =
        file.ok_or_else(|| SyncError::Integrity(format!("{}: vanished while it was updated", path.display())))?;
    buf.resize(len as usize, 0);
    let mut f = file;
    f.seek(SeekFrom::Start(at)).and_then(|_| f.read_exact(buf)).map_err(|e| SyncError::io(path, e))
}

/// Makes the group durable with one flush, then renames each file into place.
fn install(
    pending: &mut Vec<Pending>,
    cleanup: &mut Cleanup,
    device: &str,
    out: &mut Vec<(usize, Fetched)>,
) -> Result<(), SyncError> {
    let Some(first) = pending.first() else { return Ok(()) };
    flush_to_disk(pending.iter().map(|p| p.tmp.as_path()), &first.tmp)?;
    for p in pending.drain(..) {
        let kept_as = place(&p.tmp, &p.job.target, p.job.replace, device)?;
        cleanup.0.remove(&p.tmp);
        out.push((p.idx, Fetched::Written { stat: p.stat, kept_as }));
    }
    Ok(())
}

/// Durably writes the given files' data: one `syncfs` on Linux, an fsync per file elsewhere.
pub(crate) fn flush_to_disk<'a>(files: impl Iterator<Item = &'a Path>, any: &Path) -> Result<(), SyncError> {
    #[cfg(target_os = "linux")]
    {
        let _ = files;
        let f = File::open(any).map_err(|e| SyncError::io(any, e))?;
        rustix::fs::syncfs(&f).map_err(|e| SyncError::io(any, io::Error::from(e)))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = any;
        for p in files {
            File::open(p).and_then(|f| f.sync_all()).map_err(|e| SyncError::io(p, e))?;
        }
        Ok(())
    }
}

/// Renames `tmp` to `target`; whatever is there and does not look like `replace` is kept as a conflicted
/// copy first. Returns where it went.
pub(crate) fn place(
    tmp: &Path,
    target: &Path,
    replace: Option<Stat>,
    device: &str,
) -> Result<Option<PathBuf>, SyncError> {
    let kept_as = match fs::symlink_metadata(target) {
        Ok(meta) if meta.is_file() && replace == Some(Stat::of(&meta)) => None,
        Ok(_) => Some(move_aside(target, device, SystemTime::now()).map_err(|e| SyncError::io(target, e))?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(SyncError::io(target, e)),
    };
    if let Err(e) = fs::rename(tmp, target) {
        if let Some(copy) = &kept_as {
            let _ = fs::rename(copy, target);
        }
        return Err(SyncError::io(target, e));
    }
    Ok(kept_as)
}

/// Creates a fresh temporary file beside `target` with `create_new` (an existing file or a planted symlink
/// under that name is never opened).
pub(crate) fn create_temp(target: &Path) -> Result<(PathBuf, File), SyncError> {
    let dir = target
        .parent()
        .ok_or_else(|| SyncError::InvalidLocal(format!("{}: has no parent folder", target.display())))?;
    let mut last = None;
    for _ in 0..8 {
        let name = format!("{PART_PREFIX}{}{PART_SUFFIX}", hex::encode(cloudsync_crypto::random_bytes::<8>()));
        let path = dir.join(name);
        match OpenOptions::new().read(true).write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(SyncError::io(&path, e)),
        }
    }
    Err(SyncError::io(dir, last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists))))
}

/// Unix milliseconds as a `SystemTime`, if representable.
pub(crate) fn system_time(ms: i64) -> Option<SystemTime> {
    let magnitude = std::time::Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 { SystemTime::UNIX_EPOCH.checked_add(magnitude) } else { SystemTime::UNIX_EPOCH.checked_sub(magnitude) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_requests_keep_order_and_respect_both_limits() {
        let id = |n: u8| ChunkId([n; 32]);
        let mb = 1024 * 1024;
        // By bytes: 6 + 6 MiB fit, a third does not; a chunk over the budget goes alone.
        let wanted = vec![(id(1), 6 * mb), (id(2), 6 * mb), (id(3), 6 * mb), (id(4), 17 * mb), (id(5), 1)];
        let got = requests(wanted);
        assert_eq!(got, vec![vec![id(1), id(2)], vec![id(3)], vec![id(4)], vec![id(5)]]);
        // By count.
        let many = requests((0..FETCH_CHUNKS + 1).map(|i| (id((i % 251) as u8), 1)));
        assert_eq!(many.iter().map(Vec::len).collect::<Vec<_>>(), vec![FETCH_CHUNKS, 1]);
        assert!(requests(Vec::new()).is_empty());
    }
}
