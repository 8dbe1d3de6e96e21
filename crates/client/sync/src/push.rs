//! `push`: send a local folder (or one file) to a workspace folder. The local tree is scanned once, the
//! remote listing and the workspace keys are fetched once, and then a blocking thread reads each file
//! exactly once through the chunker (hashing is CPU work and must not stall the async runtime) while the
//! async side uploads and commits (see [`crate::upload`]). A file whose content hash equals the server's is
//! not uploaded at all.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek as _, SeekFrom};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use cloudsync_sdk::Client;
use cloudsync_types::api::FileEntry;
use cloudsync_types::{MAX_MANIFEST_CHUNKS, WorkspaceId, WsPath};
use indicatif::ProgressBar;
use tokio::sync::mpsc;

use crate::chunking::{chunk_stream, hash_reader};
use crate::ignore::Rules;
use crate::index::{Stat, unix_ns};
use crate::keys::{ChunkKeys, hash_matches};
use crate::retry::retry;
use crate::scan::{LocalFile, Scan, identity, scan_dir, scan_single};
use crate::upload::{Event, Outcome, Uploader};
use crate::{SyncError, TransferOptions, TransferSummary, progress};

/// Event groups buffered between the hashing thread and the uploader (each holds at most
/// [`OUTBOX_BYTES`] of chunk data, plus one chunk).
const CHANNEL_CAPACITY: usize = 2;
/// The hashing thread hands events over in groups of up to this many ...
const OUTBOX_EVENTS: usize = 256;
/// ... or this many bytes of chunk data. Handing over each event alone costs a thread wake-up per event on
/// each side (ten thousand small files make twenty thousand events), which on a virtual machine cost more
/// CPU than hashing them did.
const OUTBOX_BYTES: usize = 1 << 20;

/// The hashing thread's side of the channel: events are grouped (in order) before they are sent.
pub(crate) struct Outbox<'a> {
    tx: &'a mpsc::Sender<Vec<Event>>,
    group: std::cell::RefCell<Group>,
}

/// The events queued in an [`Outbox`], and their bytes of chunk data.
#[derive(Default)]
struct Group {
    events: Vec<Event>,
    bytes: usize,
}

impl<'a> Outbox<'a> {
    pub(crate) fn new(tx: &'a mpsc::Sender<Vec<Event>>) -> Self {
        Self { tx, group: std::cell::RefCell::default() }
    }

    /// Queues `event`, sending the group when it is full. False once the uploader has gone away.
    fn send(&self, event: Event) -> bool {
        let full = {
            let mut g = self.group.borrow_mut();
            if let Event::Chunk { data, .. } = &event {
                g.bytes += data.len();
            }
            g.events.push(event);
            g.events.len() >= OUTBOX_EVENTS || g.bytes >= OUTBOX_BYTES
        };
        !full || self.flush()
    }

    /// Sends what is queued. False once the uploader has gone away.
    fn flush(&self) -> bool {
        let events = std::mem::take(&mut *self.group.borrow_mut()).events;
        events.is_empty() || self.tx.blocking_send(events).is_ok()
    }

    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Uploads every regular file below `local_dir` to the same relative path below `remote` (or, when
/// `local_dir` is a file, that file to `remote/<its name>`). Files identical on the server are skipped;
/// files changed on the server since the listing are reported in `conflicts` and not overwritten. Symlinks,
/// special files and names the workspace refuses are skipped with a warning.
///
/// # Errors
/// [`SyncError::InvalidLocal`] when `local_dir` does not exist or is neither a file nor a folder,
/// [`SyncError::Api`] for server failures, [`SyncError::Io`] when `local_dir` cannot be read.
pub async fn push(
    client: &Client,
    ws: WorkspaceId,
    local_dir: &Path,
    remote: &WsPath,
    opts: &TransferOptions,
) -> Result<TransferSummary, SyncError> {
    let started = Instant::now();
    let (local, prefix) = (local_dir.to_path_buf(), remote.clone());
    let spinner = progress::spinner(opts.progress, "scanning…");
    let scanning = spinner.clone();
    let scanned = tokio::task::spawn_blocking(move || scan_local(&local, &prefix, &scanning)).await;
    spinner.finish_and_clear();
    let (scan, single) = scanned.map_err(SyncError::task)??;
    tracing::info!(workspace = %ws, remote = %remote, device = %opts.device_name, files = scan.files.len(), "push started");
    let mut summary = TransferSummary { files_scanned: scan.files.len() as u64, ..TransferSummary::default() };
    for why in scan.skipped {
        summary.skip(why);
    }

    let (workspaces, files) = (client.workspaces(), client.files(ws));
    let keys = ChunkKeys::from_api(&retry(|| workspaces.keys(ws)).await?)?;
    // A single file: list just its own path (a prefix matches itself) instead of the whole folder.
    let listing = match (single, scan.files.first()) {
        (true, Some(f)) => &f.ws,
        _ => remote,
    };
    let listed = retry(|| files.list_all(listing)).await?;
    let remote_files: HashMap<WsPath, FileEntry> = listed.into_iter().map(|e| (e.path.clone(), e)).collect();

    let bar = progress::bar(opts.progress, scan.files.iter().map(|f| f.stat.size).sum());
    let result = upload(client, ws, scan.files, remote_files, &keys, Reading::Precheck, &bar, &mut summary).await;
    progress::end(&bar, &result);
    result?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// How a file that may equal its server copy (same size) is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reading {
    /// Hash it first and chunk it only if it differs: cheapest when most files are unchanged (a push,
    /// which has no record of what changed).
    Precheck,
    /// Chunk it straight away and compare the whole-file hash at the end: one read instead of two when
    /// the file most likely changed (a sync, whose index saw its size or mtime move). A file the index
    /// saw unchanged ([`LocalFile::likely_unchanged`]) is still prechecked.
    Once,
}

/// Uploads `files`: each is compared with its entry in `compare` (skipped when the content is the same),
/// committed against that entry's version (or as a new file when it has none), and only the chunks the
/// server lacks are sent. Returns what became of each file, by its index in `files`.
#[expect(clippy::too_many_arguments, reason = "internal; the inputs of one upload")]
pub(crate) async fn upload(
    client: &Client,
    ws: WorkspaceId,
    files: Vec<LocalFile>,
    compare: HashMap<WsPath, FileEntry>,
    keys: &ChunkKeys,
    reading: Reading,
    bar: &ProgressBar,
    summary: &mut TransferSummary,
) -> Result<Vec<(usize, Outcome)>, SyncError> {
    let files = Arc::new(files);
    let compare = Arc::new(compare);
    let (tx, rx) = mpsc::channel::<Vec<Event>>(CHANNEL_CAPACITY);
    let producer = {
        let (files, compare, bar, keys) = (Arc::clone(&files), Arc::clone(&compare), bar.clone(), keys.clone());
        tokio::task::spawn_blocking(move || produce(&files, &compare, &keys, reading, &Outbox::new(&tx), &bar))
    };
    let mut uploader = Uploader::new(client.clone(), ws, &files, &compare);
    // On failure the hashing thread notices the closed channel and stops at its next read.
    uploader.run(rx, summary).await?;
    producer.await.map_err(SyncError::task)?;
    Ok(uploader.outcomes)
}

/// Scans `local` as a folder or a single file; the flag is true for a single file.
pub(crate) fn scan_local(local: &Path, remote: &WsPath, spinner: &ProgressBar) -> Result<(Scan, bool), SyncError> {
    let meta = match std::fs::metadata(local) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(SyncError::InvalidLocal(format!(
                "{} does not exist; give an existing folder (or file) to push",
                local.display()
            )));
        }
        Err(e) => return Err(SyncError::io(local, e)),
    };
    if meta.is_dir() {
        Ok((scan_dir(local, remote, &Rules::load(local)?, spinner)?, false))
    } else if meta.is_file() {
        Ok((scan_single(local, &meta, remote)?, true))
    } else {
        Err(SyncError::InvalidLocal(format!("{} is neither a folder nor a regular file", local.display())))
    }
}

/// The hashing thread: reads every file in order and reports chunks and outcomes to the uploader.
fn produce(
    files: &[LocalFile],
    remote: &HashMap<WsPath, FileEntry>,
    keys: &ChunkKeys,
    reading: Reading,
    out: &Outbox<'_>,
    bar: &ProgressBar,
) {
    let hashing = Hashing { keys, out, bar, max_chunks: MAX_MANIFEST_CHUNKS, reading };
    for (idx, file) in files.iter().enumerate() {
        bar.set_message(file.ws.to_string());
        let mut counted = 0;
        let event = match hashing.read_file(idx, file, remote.get(&file.ws), &mut counted) {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(e) => Event::Skipped { why: format!("{}: skipped, cannot read it: {e}", file.abs.display()) },
        };
        if matches!(event, Event::Skipped { .. }) {
            // Count what was not read, so the bar still ends at 100%.
            bar.inc(file.stat.size.saturating_sub(counted));
        }
        if !out.send(event) {
            return;
        }
    }
    out.flush();
}

/// What the hashing thread reads with.
struct Hashing<'a> {
    keys: &'a ChunkKeys,
    out: &'a Outbox<'a>,
    bar: &'a ProgressBar,
    /// The most chunks a file may have ([`MAX_MANIFEST_CHUNKS`]; smaller in tests).
    max_chunks: usize,
    reading: Reading,
}

impl Hashing<'_> {
    /// Reads one file: `Unchanged` when it matches the server copy, otherwise its chunks (sent as they are
    /// cut) followed by `Done`, or `Skipped` when it has more chunks than the server accepts for one file.
    /// `Ok(None)` when the uploader has gone away. `counted` tracks the bytes added to the progress bar.
    fn read_file(
        &self,
        idx: usize,
        file: &LocalFile,
        remote: Option<&FileEntry>,
        counted: &mut u64,
    ) -> io::Result<Option<Event>> {
        let (keys, out, bar) = (self.keys, self.out, self.bar);
        let handle = File::open(&file.abs)?;
        let meta = handle.metadata()?;
        // What was opened must be what was scanned: never a symlink or device swapped in meanwhile.
        if !meta.is_file() || identity(&meta) != file.identity {
            return Err(io::Error::other("it was replaced while the push was running"));
        }
        // No chunk is longer than the maximum, so a file this large has too many chunks however it is cut.
        if meta.len().div_ceil(u64::from(keys.params.max.max(1))) > self.max_chunks as u64 {
            return Ok(Some(self.too_many_chunks(file)));
        }
        let mtime_ms = meta.modified().ok().map(|t| unix_ns(t) / 1_000_000);
        let stat = Stat::of(&meta);
        let reader = StopWhenClosed { inner: &handle, out };
        // Same size as the server copy: with `Precheck`, a cheap hash-only pass decides whether chunking is
        // needed at all; with `Once`, the chunking pass's own hash decides at the end.
        let same_size = remote.filter(|r| r.size == meta.len());
        let precheck = self.reading == Reading::Precheck || file.likely_unchanged;
        if let Some(r) = same_size.filter(|_| precheck) {
            let digest = hash_reader(&reader, keys)?;
            if digest.size == r.size && hash_matches(&digest.hash, &r.content_hash) {
                bar.inc(digest.size);
                *counted += digest.size;
                return Ok(Some(Event::Unchanged { idx, stat }));
            }
            (&handle).seek(SeekFrom::Start(0))?;
        }
        let (mut chunks, mut too_many, mut offset) = (0usize, false, 0u64);
        let digest = chunk_stream(&reader, keys, |id, data| {
            chunks += 1;
            if chunks > self.max_chunks {
                too_many = true;
                return ControlFlow::Break(());
            }
            let len = data.len() as u64;
            bar.inc(len);
            *counted += len;
            let event = Event::Chunk { idx, offset, id, data: Bytes::from(data) };
            offset += len;
            if out.send(event) { ControlFlow::Continue(()) } else { ControlFlow::Break(()) }
        })?;
        if too_many {
            return Ok(Some(self.too_many_chunks(file)));
        }
        Ok(digest.map(|d| match same_size {
            // Read once and still equal: its chunks (all held by the server) are dropped by the uploader.
            Some(r) if d.size == r.size && hash_matches(&d.hash, &r.content_hash) => Event::Unchanged { idx, stat },
            _ => Event::Done { idx, size: d.size, hash: d.hash, mtime_ms, stat },
        }))
    }

    /// A file the server would refuse for having too many chunks. Its chunks so far are abandoned (the
    /// uploader drops them on `Skipped`) and the push goes on with the next file.
    fn too_many_chunks(&self, file: &LocalFile) -> Event {
        Event::Skipped {
            why: format!(
                "{}: skipped, it is too large: a file may have at most {} chunks",
                file.abs.display(),
                self.max_chunks
            ),
        }
    }
}

/// A reader that fails once the uploader is gone, so a failed push does not keep hashing a huge file.
struct StopWhenClosed<'a> {
    inner: &'a File,
    out: &'a Outbox<'a>,
}

impl Read for &StopWhenClosed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.out.is_closed() {
            return Err(io::Error::other("the push was stopped"));
        }
        let mut file: &File = self.inner;
        file.read(buf)
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn refuses_missing_local_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        let hidden = ProgressBar::hidden();
        let e = scan_local(&missing, &WsPath::root(), &hidden).expect_err("missing");
        assert!(matches!(&e, SyncError::InvalidLocal(m) if m.contains("nope")), "{e}");
        let file = dir.path().join("one.txt");
        std::fs::write(&file, b"1").expect("write");
        let (scan, single) = scan_local(&file, &WsPath::parse("r").expect("r"), &hidden).expect("file");
        assert!(single);
        assert_eq!(scan.files[0].ws.as_str(), "r/one.txt");
        let (_, single) = scan_local(dir.path(), &WsPath::root(), &hidden).expect("dir");
        assert!(!single);
    }

    /// A file of `len` varied bytes (so the chunker cuts content-defined chunks between min and max) in `dir`,
    /// as the scan would describe it, and its content.
    fn fixture(dir: &Path, name: &str, len: u32) -> (LocalFile, Vec<u8>) {
        let path = dir.join(name);
        let data: Vec<u8> = (0..len).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        let meta = std::fs::metadata(&path).expect("meta");
        let file = LocalFile {
            abs: path,
            ws: WsPath::parse(name).expect("path"),
            rel: name.into(),
            stat: Stat::of(&meta),
            likely_unchanged: false,
            identity: identity(&meta),
        };
        (file, data)
    }

    fn small_chunks() -> ChunkKeys {
        ChunkKeys::for_test(cloudsync_chunker::ChunkerParams { min: 1024, avg: 4096, max: 16384 })
    }

    #[test]
    fn a_file_with_too_many_chunks_is_skipped_while_chunking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (file, _) = fixture(dir.path(), "big.bin", 200_000);
        let keys = small_chunks();
        let (tx, mut rx) = mpsc::channel(10_000);
        let out = Outbox::new(&tx);
        let bar = ProgressBar::hidden();

        // Allowed enough chunks: the file is read and ends with `Done`.
        let roomy = Hashing { keys: &keys, out: &out, bar: &bar, max_chunks: 1000, reading: Reading::Precheck };
        let mut counted = 0;
        let done = roomy.read_file(0, &file, None, &mut counted).expect("read").expect("not stopped");
        assert!(matches!(done, Event::Done { size: 200_000, .. }), "{done:?}");
        assert_eq!(counted, 200_000);
        assert!(out.flush());
        let mut chunks = 0;
        while let Ok(group) = rx.try_recv() {
            for ev in group {
                assert!(matches!(ev, Event::Chunk { .. }), "{ev:?}");
                chunks += 1;
            }
        }
        assert!(chunks > 13, "{chunks} chunks");

        // One chunk fewer than it needs: skipped part-way, not an error.
        let tight = Hashing { max_chunks: chunks - 1, ..roomy };
        let mut counted = 0;
        let skipped = tight.read_file(0, &file, None, &mut counted).expect("read").expect("not stopped");
        assert!(matches!(&skipped, Event::Skipped { why } if why.contains("too large")), "{skipped:?}");
        assert!(counted < 200_000);

        // Larger than the limit allows however it is cut: skipped without reading.
        let tiny = Hashing { max_chunks: 2, ..roomy };
        let mut counted = 0;
        let skipped = tiny.read_file(0, &file, None, &mut counted).expect("read").expect("not stopped");
        assert!(matches!(skipped, Event::Skipped { .. }), "{skipped:?}");
        assert_eq!(counted, 0);
    }

    #[test]
    fn a_file_equal_to_its_server_copy_is_unchanged_whichever_way_it_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (file, data) = fixture(dir.path(), "same.bin", 100_000);
        let keys = small_chunks();
        let digest = hash_reader(&data[..], &keys).expect("hash");
        let remote = FileEntry {
            file_id: cloudsync_types::FileId::new(),
            path: file.ws.clone(),
            version: 1,
            version_id: cloudsync_types::VersionId::new(),
            size: digest.size,
            content_hash: crate::keys::hash_hex(&digest.hash),
            mtime_ms: None,
            modified_at: time::OffsetDateTime::UNIX_EPOCH,
        };
        let (tx, mut rx) = mpsc::channel(10_000);
        let out = Outbox::new(&tx);
        let bar = ProgressBar::hidden();
        // (how, whether the index saw the file unchanged, whether chunks go out before the verdict)
        for (reading, likely, chunks_expected) in
            [(Reading::Precheck, false, false), (Reading::Once, false, true), (Reading::Once, true, false)]
        {
            let hashing = Hashing { keys: &keys, out: &out, bar: &bar, max_chunks: 1000, reading };
            let file = LocalFile { likely_unchanged: likely, ..file.clone() };
            let mut counted = 0;
            let ev = hashing.read_file(0, &file, Some(&remote), &mut counted).expect("read").expect("not stopped");
            assert!(matches!(ev, Event::Unchanged { idx: 0, .. }), "{reading:?}: {ev:?}");
            assert_eq!(counted, 100_000, "{reading:?}");
            assert!(out.flush());
            let mut chunks = 0;
            while let Ok(group) = rx.try_recv() {
                chunks += group.len();
            }
            assert_eq!(chunks > 0, chunks_expected, "{reading:?}: {chunks} chunks sent before the verdict");
        }
    }
}
