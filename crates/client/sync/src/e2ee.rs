//! Files of end-to-end encrypted workspaces (RFC 0004, "Files"). The server keeps such a file under its path
//! id (a keyed hash of the path) as a list of opaque chunks: first the sealed, signed manifest, then the
//! sealed content chunks. Everything a member reads is checked against the manifest, whose signature and
//! seal the server cannot forge: a chunk swapped, reordered or cut, a manifest moved to another path, a file
//! injected, or a file rolled back to a version older than this device saw is refused, and nothing is
//! written under the file's name.
//!
//! Push and pull here are simpler than the engine for other workspaces (no rsync deltas: the server cannot
//! read the chunks it would compute them from; chunk-level dedup with keyed boundaries still sends only
//! changed chunks). Two-way sync uses the engine, with [`crate::e2ee_sync`] for what touches the server.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use cloudsync_crypto::e2ee::{PublicIdentity, UserKeys};
use cloudsync_crypto::e2ee_files::{FileKeys, FileManifest, MAX_FILE_CHUNKS, MAX_INLINE_BYTES, SealedChunk};
use cloudsync_sdk::Client;
use cloudsync_types::api::{
    CommitRequest, CommitResult, FileEntry, MAX_BATCH_COMMITS, Manifest, ManifestChunk, ManifestRef,
};
use cloudsync_types::{ChunkId, FileId, VersionId, WorkspaceId, WsPath};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::chunking::{Digest, chunk_stream, hash_reader};
use crate::e2ee_cache::VerifiedManifests;
use crate::fetch::{
    FEED_REQUESTS, FETCH_IN_FLIGHT, Fetched, GROUP_BYTES, GROUP_FILES, Made, feed_writer, fetch_all, flush_to_disk,
    groups, place, requests, system_time, take_made, with_created_ahead,
};
use crate::index::Stat;
use crate::keys::{ChunkKeys, hash_hex, hash_matches};
use crate::localpath::{Existing, local_path, prepare};
use crate::pull::{ensure_dir, relative};
use crate::push::scan_local;
use crate::retry::retry;
use crate::scan::LocalFile;
use crate::upload::Outcome;
use crate::{SyncError, TransferOptions, TransferSummary, progress};
use futures_util::StreamExt as _;

/// Chunk bytes gathered before the server is asked which it lacks and they are sent.
const BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Members who may write files: account id to (identity from the log, epochs in which they held Editor or
/// above).
pub type Writers = BTreeMap<[u8; 16], (PublicIdentity, BTreeSet<u32>)>;

/// What a member needs to read and write the files of one end-to-end encrypted workspace. The caller builds
/// it from the verified membership log and the workspace keys wrapped to the member.
pub struct E2eeFiles {
    /// The workspace's file keys, every epoch the member holds.
    pub keys: FileKeys,
    /// The member's account id (the author of what they write).
    pub me: [u8; 16],
    /// The member's secret keys (to sign manifests).
    pub signer: UserKeys,
    /// Everyone who may write, with the identity the log gave them and the epochs in which they could.
    pub writers: Writers,
    /// Where this device remembers the manifest counters it saw in this workspace (rollback detection).
    pub seen_file: PathBuf,
}

impl std::fmt::Debug for E2eeFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2eeFiles").field("keys", &self.keys).field("writers", &self.writers.len()).finish()
    }
}

impl E2eeFiles {
    fn writer(&self, who: &[u8; 16], epoch: u32) -> Option<PublicIdentity> {
        self.writers.get(who).filter(|(_, epochs)| epochs.contains(&epoch)).map(|(id, _)| id.clone())
    }

    /// The path the server keeps `path` under: its path id in hex.
    ///
    /// # Errors
    /// None in practice (64 hex digits are a valid server path); reported as internal.
    pub fn server_path(&self, path: &str) -> Result<WsPath, SyncError> {
        WsPath::parse(&hex::encode(self.keys.path_id(path)))
            .map_err(|e| SyncError::Internal(format!("a path id is not a valid server path: {e}")))
    }
}

/// One file of an end-to-end encrypted workspace, as its verified manifest says.
#[derive(Debug, Clone, Serialize)]
pub struct E2eeEntry {
    /// Path in the workspace.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// The server's version number.
    pub version: u64,
    /// When the server recorded this version.
    #[serde(with = "time::serde::rfc3339")]
    pub modified_at: OffsetDateTime,
    /// The author's file modification time, Unix milliseconds.
    pub mtime_ms: Option<i64>,
    /// Key epoch it is sealed in.
    pub epoch: u32,
    /// Account id of the member who wrote it.
    pub author: String,
    /// The verified manifest; a small file's content is in `inline` when the listing held it.
    #[serde(skip)]
    pub(crate) manifest: FileManifest,
    /// The sealed manifest's chunk id and stored size (a small file's content is fetched with it).
    #[serde(skip)]
    pub(crate) manifest_chunk: (ChunkId, u32),
    /// The server's ids of the file and of this version.
    #[serde(skip)]
    pub(crate) file_id: FileId,
    #[serde(skip)]
    pub(crate) version_id: VersionId,
}

impl E2eeEntry {
    /// Whether content with this digest is this file's.
    pub(crate) fn holds(&self, digest: &Digest) -> bool {
        digest.size == self.size && digest.hash == self.manifest.content_hash
    }
}

/// What this device saw of one workspace: the highest counter, and per path id the latest counter and content
/// hash.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Seen {
    max: u64,
    paths: BTreeMap<String, (u64, String)>,
}

impl Seen {
    fn load(file: &Path) -> Result<Self, SyncError> {
        match fs::read(file) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                SyncError::InvalidLocal(format!(
                    "{} is damaged ({e}); it holds what this device saw of an end-to-end encrypted workspace",
                    file.display()
                ))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(SyncError::io(file, e)),
        }
    }

    /// Adds what the file holds now (another command may have written it meanwhile; the higher counter
    /// wins), then writes the result atomically.
    fn save(mut self, file: &Path) -> Result<(), SyncError> {
        let current = Self::load(file)?;
        self.max = self.max.max(current.max);
        for (k, v) in current.paths {
            match self.paths.get(&k) {
                Some(mine) if mine.0 >= v.0 => {}
                _ => {
                    self.paths.insert(k, v);
                }
            }
        }
        if let Some(dir) = file.parent() {
            fs::create_dir_all(dir).map_err(|e| SyncError::io(dir, e))?;
        }
        let tmp = file.with_extension("json.tmp");
        let body = serde_json::to_vec(&self).map_err(|e| SyncError::Internal(e.to_string()))?;
        fs::write(&tmp, body).and_then(|()| fs::rename(&tmp, file)).map_err(|e| SyncError::io(file, e))
    }
}

/// The counter a new manifest gets when nothing was listed: above every one this device saw. Enough when
/// the change journal shows no one else wrote since this device last listed (what it saw is then all there
/// is).
pub(crate) fn next_counter_seen(e2ee: &E2eeFiles) -> Result<u64, SyncError> {
    Ok(Seen::load(&e2ee.seen_file)?.max + 1)
}

/// The workspace's files under `prefix`, each manifest verified and checked against rollback.
pub(crate) struct Listing {
    pub(crate) files: Vec<E2eeEntry>,
    /// What this device had seen before this listing.
    before: Seen,
    /// The manifests whose signatures this device has checked (saved), for what a push or restore adds.
    pub(crate) verified: VerifiedManifests,
}

impl Listing {
    /// The counter a new manifest gets: above every one listed and every one this device saw.
    pub(crate) fn next_counter(&self) -> u64 {
        self.before.max.max(self.files.iter().map(|f| f.manifest.counter).max().unwrap_or(0)) + 1
    }
}

/// Lists and verifies every file, holding up to `hold` bytes of small files' content from the manifests it
/// fetches (what a pull or sync then need not fetch again). With `check_chunk_lists`, the server's chunk list of each file is fetched
/// and compared with the signed one (what `ls` and `pull` show or read); without, the sealed manifests are
/// found by the files' content hashes (their chunk ids) alone, which spares the server reading and auditing
/// every manifest (what `push` and `restore` need: contents and counters, never the server's lists, since
/// chunks are always fetched by the ids the manifest signed).
pub(crate) async fn listing(
    client: &Client,
    ws: WorkspaceId,
    e2ee: &E2eeFiles,
    server_keys: &ChunkKeys,
    check_chunk_lists: bool,
    hold: u64,
) -> Result<Listing, SyncError> {
    let rows = listed_rows(client, ws, check_chunk_lists).await?;
    listing_of(client, ws, e2ee, server_keys, rows, hold).await
}

/// The workspace's files as the server lists them, each with the server's chunk list when `check_chunk_lists`
/// (the first half of [`listing`], which needs no key).
pub(crate) async fn listed_rows(
    client: &Client,
    ws: WorkspaceId,
    check_chunk_lists: bool,
) -> Result<Vec<(cloudsync_types::api::FileEntry, Option<Manifest>)>, SyncError> {
    let files = client.files(ws);
    let root = WsPath::root();
    let entries = retry(|| files.list_all(&root)).await?;
    Ok(if check_chunk_lists {
        let refs: Vec<ManifestRef> =
            entries.iter().map(|e| ManifestRef { path: e.path.clone(), version: Some(e.version) }).collect();
        // A file deleted since it was listed has no manifest any more: it is simply gone.
        let got = retry(|| files.manifests(&refs)).await?;
        got.into_iter().flatten().map(|vm| (vm.file, Some(vm.manifest))).collect()
    } else {
        entries.into_iter().map(|e| (e, None)).collect()
    })
}

/// The second half of [`listing`]: the listed rows' manifests fetched, verified and opened.
pub(crate) async fn listing_of(
    client: &Client,
    ws: WorkspaceId,
    e2ee: &E2eeFiles,
    server_keys: &ChunkKeys,
    rows: Vec<(cloudsync_types::api::FileEntry, Option<Manifest>)>,
    hold: u64,
) -> Result<Listing, SyncError> {
    let files = client.files(ws);
    let mut metas: Vec<(ChunkId, u32)> = Vec::with_capacity(rows.len());
    for (file, manifest) in &rows {
        metas.push(match manifest {
            Some(m) => {
                let first = manifest_chunk(&file.path, m)?;
                (first.id, first.size)
            }
            None => (manifest_id(&file.path, &file.content_hash)?, MANIFEST_SIZE_GUESS),
        });
    }
    let mut verified = VerifiedManifests::load(e2ee);
    let opened = {
        let items: Vec<(&WsPath, ChunkId, u32)> =
            rows.iter().zip(&metas).map(|((f, _), (id, size))| (&f.path, *id, *size)).collect();
        verified_manifests(&files, e2ee, server_keys, &mut verified, &items, hold).await?
    };
    verified.save()?;
    let before = Seen::load(&e2ee.seen_file)?;
    let mut out = Vec::with_capacity(rows.len());
    for (((file, manifest), m), manifest_chunk) in rows.into_iter().zip(opened).zip(metas) {
        let m = m?;
        if let Some(listed) = manifest {
            check_listed(&m, &listed.chunks[1..])?;
        }
        let path_id = e2ee.keys.path_id(&m.path);
        if let Some((counter, _)) = before.paths.get(&hex::encode(path_id)).filter(|(c, _)| *c > m.counter) {
            return Err(SyncError::Integrity(format!(
                "the server shows an older version of {} (counter {}) than this device saw (counter {counter}): it \
                 rolled the file back; nothing was written",
                m.path, m.counter
            )));
        }
        out.push(E2eeEntry {
            path: m.path.clone(),
            size: m.size,
            version: file.version,
            modified_at: file.modified_at,
            mtime_ms: m.mtime_ms,
            epoch: m.epoch,
            author: uuid_text(&m.author),
            manifest: m,
            manifest_chunk,
            file_id: file.file_id,
            version_id: file.version_id,
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    let mut seen = Seen { max: before.max, paths: BTreeMap::new() };
    for f in &out {
        seen.max = seen.max.max(f.manifest.counter);
        seen.paths
            .insert(hex::encode(e2ee.keys.path_id(&f.path)), (f.manifest.counter, hash_hex(&f.manifest.content_hash)));
    }
    // Written only when the listing showed something this device had not seen (most listings do not).
    let news = seen.max > before.max || seen.paths.iter().any(|(k, v)| before.paths.get(k) != Some(v));
    if news {
        seen.save(&e2ee.seen_file)?;
    }
    Ok(Listing { files: out, before, verified })
}

/// Opens the sealed manifest the server keeps as `server_path`: it must be sealed to that path id and signed
/// by a member who could write in its epoch.
fn open_verified(e2ee: &E2eeFiles, server_path: &WsPath, blob: &[u8]) -> Result<FileManifest, SyncError> {
    open_checked(e2ee, server_path, Read::Sealed { blob, verified_before: false })
}

/// How a manifest the server lists is read.
enum Read<'a> {
    /// Its sealed bytes, opened with every check; with `verified_before` (the bytes are identical to those
    /// whose signature this device checked), every check but the signature's.
    Sealed { blob: &'a [u8], verified_before: bool },
    /// The record this device kept of it ([`VerifiedManifests`]): checked to be filed under its own path id by
    /// someone who could write in its epoch.
    Kept(&'a [u8]),
}

/// Reads the manifest the server keeps as `server_path`, as `read` says.
fn open_checked(e2ee: &E2eeFiles, server_path: &WsPath, read: Read<'_>) -> Result<FileManifest, SyncError> {
    let path_id = path_id_of(server_path)?;
    let writer = |who: &[u8; 16], epoch: u32| e2ee.writer(who, epoch);
    let opened = match read {
        Read::Sealed { blob, verified_before: false } => e2ee.keys.open_manifest(&path_id, blob, writer),
        Read::Sealed { blob, verified_before: true } => e2ee.keys.open_manifest_verified_before(&path_id, blob, writer),
        Read::Kept(record) => {
            e2ee.keys.parse_manifest_record(record).and_then(|m| e2ee.keys.check_filed(&path_id, &m, writer).map(|_| m))
        }
    };
    opened.map_err(|e| not_checked_out(server_path, &e))
}

/// The error for a manifest the server keeps as `server_path` that does not check out.
fn not_checked_out(server_path: &WsPath, e: &cloudsync_crypto::CryptoError) -> SyncError {
    SyncError::Integrity(format!(
        "the manifest the server keeps as {} does not check out ({e}): the server altered, moved or injected \
         it; nothing was written",
        server_path.as_str()
    ))
}

/// The path id a file the server lists is filed under: its name.
fn path_id_of(server_path: &WsPath) -> Result<[u8; 32], SyncError> {
    let shown = server_path.as_str();
    parse_path_id(shown).ok_or_else(|| {
        SyncError::Integrity(format!("the server lists a file ({shown}) that no member wrote: its name is no path id"))
    })
}

/// Opens and checks many sealed manifests (server path, blob), signatures included (checked together), on
/// every core when there are many.
fn open_many(e2ee: &E2eeFiles, items: &[(&WsPath, &[u8])]) -> Vec<Result<FileManifest, SyncError>> {
    on_every_core_in_parts(items, |part| {
        let ids: Vec<Result<[u8; 32], SyncError>> = part.iter().map(|(path, _)| path_id_of(path)).collect();
        let list: Vec<(&[u8; 32], &[u8])> =
            ids.iter().zip(part).filter_map(|(id, (_, blob))| Some((id.as_ref().ok()?, *blob))).collect();
        let writer = |who: &[u8; 16], epoch: u32| e2ee.writer(who, epoch);
        let mut opened = e2ee.keys.open_manifests(&list, writer).into_iter();
        ids.into_iter()
            .zip(part)
            .map(|(id, (path, _))| {
                id?;
                let m = opened.next().ok_or_else(|| SyncError::Internal("a manifest was not opened".into()))?;
                m.map_err(|e| not_checked_out(path, &e))
            })
            .collect()
    })
}

/// `f` of each item, in order; split over every core (up to 8) when there are many.
fn on_every_core<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    on_every_core_in_parts(items, |part| part.iter().map(&f).collect())
}

/// `f` of the items, in order, in parts split over every core (up to 8) when there are many; `f` answers one
/// result an item of its part.
fn on_every_core_in_parts<T: Sync, R: Send>(items: &[T], f: impl Fn(&[T]) -> Vec<R> + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    if threads < 2 || items.len() < 64 {
        return f(items);
    }
    let per = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = items.chunks(per).map(|part| s.spawn(move || f(part))).collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    })
}

/// Inline content a listing holds on to (so a pull need not fetch those manifests again); past this, small
/// files' manifests are fetched again when their content is needed.
pub(crate) const HELD_INLINE_BYTES: u64 = 128 << 20;

/// The verified manifests of `items` (server path, manifest chunk id, stored size), in order: those this
/// device verified before come from `verified` (checked to be filed under their own path, by a member who
/// could write in their epoch); the others are fetched a request at a time, checked against their ids,
/// opened with their signatures checked, and kept in `verified`. Up to `hold` bytes of inline content stay
/// in the manifests returned.
async fn verified_manifests(
    files: &cloudsync_sdk::Files<'_>,
    e2ee: &E2eeFiles,
    server_keys: &ChunkKeys,
    verified: &mut VerifiedManifests,
    items: &[(&WsPath, ChunkId, u32)],
    hold: u64,
) -> Result<Vec<Result<FileManifest, SyncError>>, SyncError> {
    let mut out: Vec<Option<Result<FileManifest, SyncError>>> =
        items.iter().map(|(path, id, _)| verified.get(*id).map(|r| open_checked(e2ee, path, Read::Kept(r)))).collect();
    let missing: Vec<usize> = (0..items.len()).filter(|&i| out[i].is_none()).collect();
    let mut held = 0u64;
    let mut next = missing.iter().copied();
    for ids in requests(missing.iter().map(|&i| (items[i].1, items[i].2))) {
        let at: Vec<usize> = next.by_ref().take(ids.len()).collect();
        let blobs = retry(|| fetch_all(files, &ids)).await?;
        for (id, blob) in &blobs {
            check_blob(server_keys, *id, blob)?;
        }
        let opened = {
            let list: Vec<(&WsPath, &[u8])> = at.iter().zip(&blobs).map(|(&i, (_, b))| (items[i].0, &b[..])).collect();
            open_many(e2ee, &list)
        };
        for ((i, (id, _)), mut r) in at.into_iter().zip(&blobs).zip(opened) {
            if let Ok(m) = &mut r
                && let Ok(record) = e2ee.keys.manifest_record(m)
            {
                verified.keep(*id, record);
                let inline = m.inline.as_ref().map_or(0, |c| c.len() as u64);
                if held + inline > hold {
                    m.inline = None;
                } else {
                    held += inline;
                }
            }
            out[i] = Some(r);
        }
    }
    out.into_iter()
        .map(|r| r.ok_or_else(|| SyncError::Integrity("the server sent fewer manifests than were asked for".into())))
        .collect()
}

/// The chunks the server lists after the manifest must be exactly those the manifest signed, in order.
fn check_listed(m: &FileManifest, listed: &[ManifestChunk]) -> Result<(), SyncError> {
    if !listed.iter().map(|c| c.id.0).eq(m.chunks.iter().map(|c| c.stored_id)) {
        return Err(SyncError::Integrity(format!(
            "the server's chunk list for {} differs from its signed manifest: the server altered it",
            m.path
        )));
    }
    Ok(())
}

/// The chunk id of a stored file's sealed manifest: its content hash, as the member who committed it set it.
fn manifest_id(server_path: &WsPath, content_hash: &str) -> Result<ChunkId, SyncError> {
    ChunkId::from_hex(content_hash).map_err(|_| {
        SyncError::Integrity(format!(
            "the server lists a file ({server_path}) that no member wrote: its content hash names no manifest"
        ))
    })
}

/// The first chunk of a stored file: its sealed manifest.
fn manifest_chunk<'m>(server_path: &WsPath, manifest: &'m Manifest) -> Result<&'m ManifestChunk, SyncError> {
    manifest.chunks.first().ok_or_else(|| {
        SyncError::Integrity(format!(
            "the server lists a file ({server_path}) that no member wrote: it has no manifest"
        ))
    })
}

/// The workspace's chunk-id key and chunking parameters (the server's: they name the sealed chunks).
pub(crate) async fn server_keys(client: &Client, ws: WorkspaceId) -> Result<ChunkKeys, SyncError> {
    let workspaces = client.workspaces();
    ChunkKeys::from_api(&retry(|| workspaces.keys(ws)).await?)
}

fn parse_path_id(name: &str) -> Option<[u8; 32]> {
    let mut id = [0u8; 32];
    hex::decode_to_slice(name, &mut id).ok()?;
    (hex::encode(id) == name).then_some(id)
}

fn uuid_text(id: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*id).to_string()
}

fn check_blob(server_keys: &ChunkKeys, id: ChunkId, data: &[u8]) -> Result<(), SyncError> {
    if server_keys.chunk_id(data) != id {
        return Err(SyncError::Integrity(format!(
            "chunk {} does not match its id: the server altered or swapped it; nothing was written",
            id.to_hex()
        )));
    }
    Ok(())
}

/// `cloudsync ls` on an end-to-end encrypted workspace: the files under `prefix`, verified.
///
/// # Errors
/// [`SyncError::Integrity`] when what the server keeps does not check out, [`SyncError::Api`] for server
/// failures.
pub async fn e2ee_list(
    client: &Client,
    ws: WorkspaceId,
    prefix: &WsPath,
    e2ee: &E2eeFiles,
) -> Result<Vec<E2eeEntry>, SyncError> {
    // The server's chunk keys are asked for while the files are listed, as for a pull.
    let (server_keys, rows) = tokio::try_join!(server_keys(client, ws), listed_rows(client, ws, true))?;
    let all = listing_of(client, ws, e2ee, &server_keys, rows, 0).await?.files;
    Ok(all.into_iter().filter(|f| under(prefix, &f.path)).collect())
}

/// A file in the trash of an end-to-end encrypted workspace, as its verified manifest says.
#[derive(Debug, Clone, Serialize)]
pub struct E2eeTrashEntry {
    /// The path it had.
    pub path: String,
    /// Size of its last version in bytes.
    pub size: u64,
    /// Its last version number.
    pub version: u64,
    /// When it was deleted.
    #[serde(with = "time::serde::rfc3339")]
    pub deleted_at: OffsetDateTime,
    /// Account id of the member who wrote its last version.
    pub author: String,
}

/// A stored manifest's size is not in the trash listing (nor in a listing without chunk lists); this only
/// sizes the fetch requests (512 manifests a request). Most manifests are well under it; a small file's,
/// content inline, is up to about 135 KiB, so a request of those stays under 70 MiB.
const MANIFEST_SIZE_GUESS: u32 = 32 * 1024;

/// `cloudsync trash list` on an end-to-end encrypted workspace: each trashed file's last manifest is fetched
/// (the server names it as the file's content hash) and verified, so the real paths can be shown.
///
/// # Errors
/// [`SyncError::Integrity`] when a manifest does not check out, [`SyncError::Api`] for server failures.
pub async fn e2ee_trash(client: &Client, ws: WorkspaceId, e2ee: &E2eeFiles) -> Result<Vec<E2eeTrashEntry>, SyncError> {
    let server_keys = server_keys(client, ws).await?;
    let files = client.files(ws);
    let trash = retry(|| files.trash()).await?;
    let mut metas = Vec::with_capacity(trash.len());
    for t in &trash {
        metas.push((manifest_id(&t.path, &t.content_hash)?, MANIFEST_SIZE_GUESS));
    }
    let mut verified = VerifiedManifests::load(e2ee);
    let opened = {
        let items: Vec<(&WsPath, ChunkId, u32)> =
            trash.iter().zip(&metas).map(|(t, (id, size))| (&t.path, *id, *size)).collect();
        verified_manifests(&files, e2ee, &server_keys, &mut verified, &items, 0).await?
    };
    verified.save()?;
    trash
        .into_iter()
        .zip(opened)
        .map(|(t, m)| {
            let m = m?;
            Ok(E2eeTrashEntry {
                path: m.path,
                size: m.size,
                version: t.version,
                deleted_at: t.deleted_at,
                author: uuid_text(&m.author),
            })
        })
        .collect()
}

/// What [`e2ee_restore`] did.
#[derive(Debug, Clone, Serialize)]
pub struct E2eeRestored {
    /// The file's path.
    pub path: String,
    /// Its version number now.
    pub version: u64,
    /// Its size in bytes.
    pub size: u64,
    /// The version whose content it now holds.
    pub restored_version: u64,
    /// Whether it came back from the trash.
    pub from_trash: bool,
    /// Chunks sealed again and sent (an old version sealed in an earlier key epoch is re-sealed in the
    /// current one; otherwise nothing is sent but the new manifest).
    pub chunks_uploaded: u64,
}

/// `cloudsync restore` on an end-to-end encrypted workspace. A file in the trash comes back as it was
/// deleted (the server moves it back; its manifest is checked). An older version is made current on this
/// device, not by the server: its manifest is verified, then signed again by this member with a new counter
/// (a server-made copy would carry the old counter, which members refuse as a rollback), its chunks re-sealed
/// in the current key epoch if it was written in an earlier one, and committed as a new version.
///
/// # Errors
/// [`SyncError::RemoteNotFound`] for nothing to restore, [`SyncError::Integrity`] when what the server keeps
/// does not check out, [`SyncError::Conflict`] when the file changed on the server meanwhile.
pub async fn e2ee_restore(
    client: &Client,
    ws: WorkspaceId,
    path: &WsPath,
    version: Option<u64>,
    e2ee: &E2eeFiles,
    opts: &TransferOptions,
) -> Result<E2eeRestored, SyncError> {
    let server_keys = server_keys(client, ws).await?;
    let files = client.files(ws);
    let server_path = e2ee.server_path(path.as_str())?;
    let current = |v: Option<u64>| {
        let refs = [ManifestRef { path: server_path.clone(), version: v }];
        let files = &files;
        async move { Ok::<_, SyncError>(retry(|| files.manifests(&refs)).await?.pop().flatten()) }
    };
    let mut from_trash = false;
    let live = match current(None).await? {
        Some(live) => live,
        None => {
            match files
                .restore(&cloudsync_types::api::RestoreRequest { path: server_path.clone(), version: None })
                .await
            {
                Ok(_) => {}
                Err(e) if e.kind() == cloudsync_sdk::ErrorKind::NotFound => {
                    return Err(SyncError::RemoteNotFound(format!(
                        "{path} is neither a file nor in the trash (`cloudsync trash list` shows what can be restored)"
                    )));
                }
                Err(e) => return Err(e.into()),
            }
            from_trash = true;
            current(None).await?.ok_or_else(|| {
                SyncError::RemoteNotFound(format!("{path} was deleted again while it was being restored"))
            })?
        }
    };
    let wanted = match version {
        Some(n) => n,
        None if from_trash => live.file.version,
        None if live.file.version > 1 => live.file.version - 1,
        None => {
            return Err(SyncError::RemoteNotFound(format!(
                "{path} has only one version; nothing older to restore (`cloudsync versions` lists them)"
            )));
        }
    };
    let old = if wanted == live.file.version {
        live.clone()
    } else {
        current(Some(wanted)).await?.ok_or_else(|| {
            SyncError::RemoteNotFound(format!("{path} has no version {wanted} (`cloudsync versions` lists them)"))
        })?
    };
    // Fetched even when this device keeps its record: a small file's content is inside it.
    let first = manifest_chunk(&server_path, &old.manifest)?.id;
    let blob = retry(|| fetch_all(&files, std::slice::from_ref(&first))).await?.pop().map(|(_, b)| b);
    let blob = blob.unwrap_or_default();
    check_blob(&server_keys, first, &blob)?;
    let m = open_verified(e2ee, &server_path, &blob)?;
    check_listed(&m, &old.manifest.chunks[1..])?;
    if wanted == live.file.version {
        // Back from the trash as it was deleted (or already the current version): nothing to sign again.
        let mut seen = Seen::default();
        seen.paths.insert(hex::encode(e2ee.keys.path_id(&m.path)), (m.counter, hash_hex(&m.content_hash)));
        seen.save(&e2ee.seen_file)?;
        return Ok(E2eeRestored {
            path: m.path,
            version: live.file.version,
            size: m.size,
            restored_version: wanted,
            from_trash,
            chunks_uploaded: 0,
        });
    }
    // The new counter must be above every manifest in the workspace, as for a push.
    let listed = listing(client, ws, e2ee, &server_keys, false, 0).await?;
    let counter = listed.next_counter();
    let keys = &e2ee.keys;
    let epoch = keys.current_epoch();
    let mut up = Uploader::new(client.files(ws), counter, listed.verified);
    let mut summary = TransferSummary::default();
    let chunks = if m.epoch == epoch {
        // Sealing is deterministic: the same content in the same epoch is the same stored chunk.
        m.chunks.clone()
    } else {
        // Opened and sealed again chunk by chunk: as long as reading the file, so it shows progress.
        let bar = progress::bar(opts.progress, m.size);
        let mut resealed = Vec::with_capacity(m.chunks.len());
        let mut next = m.chunks.iter();
        for ids in requests(m.chunks.iter().map(|c| (ChunkId(c.stored_id), c.stored_len() as u32))) {
            for ((id, blob), chunk) in retry(|| fetch_all(&files, &ids)).await?.into_iter().zip(next.by_ref()) {
                check_blob(&server_keys, id, &blob)?;
                let plain = keys.open_chunk(m.epoch, chunk, &blob).map_err(|e| {
                    SyncError::Integrity(format!(
                        "a chunk of version {wanted} of {path} does not open ({e}): the server altered or swapped it"
                    ))
                })?;
                let sealed = keys.seal_chunk(&chunk.content_id, &plain);
                let id = server_keys.chunk_id(&sealed);
                resealed.push(SealedChunk { stored_id: id.0, content_id: chunk.content_id, len: chunk.len });
                up.queue(id, Bytes::from(sealed));
                bar.inc(plain.len() as u64);
            }
            if up.bytes >= BATCH_BYTES {
                up.flush(&mut summary).await?;
            }
        }
        bar.finish_and_clear();
        resealed
    };
    let restored = FileManifest { epoch, counter, author: e2ee.me, chunks, ..m };
    let (sealed, commit) = seal_commit(e2ee, &server_keys, &restored, Some(live.file.version))?;
    up.queue(commit.manifest_id, sealed);
    up.commits.push(commit);
    up.flush(&mut summary).await?;
    up.remember(e2ee)?;
    if summary.files_uploaded != 1 {
        return Err(SyncError::Conflict(format!(
            "{path} changed on the server while it was being restored; nothing was overwritten (run the restore again)"
        )));
    }
    Ok(E2eeRestored {
        path: restored.path,
        version: live.file.version + 1,
        size: restored.size,
        restored_version: wanted,
        from_trash,
        // The manifest is not counted: it is sent with every version.
        chunks_uploaded: summary.chunks_uploaded.saturating_sub(1),
    })
}

pub(crate) fn under(prefix: &WsPath, path: &str) -> bool {
    prefix.is_root()
        || path == prefix.as_str()
        || path.strip_prefix(prefix.as_str()).is_some_and(|r| r.starts_with('/'))
}

/// What the sealing thread hands to the uploader.
enum Event {
    /// A sealed chunk (content or manifest) to store.
    Blob {
        id: ChunkId,
        data: Bytes,
    },
    /// A file's commit; every blob it names came before it.
    Commit(Box<Commit>),
    /// These files (tag, stat) have their server copies' content.
    Unchanged(Vec<(usize, Stat)>),
    Skipped {
        why: String,
    },
}

/// One file's commit, and what this device remembers of it once committed.
struct Commit {
    /// Which file of the upload it is, and what the local file looked like when it was read.
    tag: usize,
    stat: Stat,
    /// The file's path (for messages and the file as members see it), size and modification time.
    shown: String,
    size: u64,
    mtime_ms: Option<i64>,
    req: CommitRequest,
    /// Path id (hex), and (counter, content hash) as [`Seen::paths`] keeps them.
    path_id: String,
    seen: (u64, String),
    /// The chunk id of the sealed manifest this device made, and its record (kept, so a listing need neither
    /// fetch nor verify it).
    manifest_id: ChunkId,
    record: Vec<u8>,
}

/// `cloudsync push` into an end-to-end encrypted workspace: every regular file below `local_dir` is sealed on
/// this device and committed to `remote/<relative path>`; files equal to the server's copy are skipped, and a
/// file changed on the server meanwhile is reported as a conflict, not overwritten.
///
/// # Errors
/// As [`crate::push`], and [`SyncError::Integrity`] when what the server keeps does not check out.
pub async fn e2ee_push(
    client: &Client,
    ws: WorkspaceId,
    local_dir: &Path,
    remote: &WsPath,
    e2ee: Arc<E2eeFiles>,
    opts: &TransferOptions,
) -> Result<TransferSummary, SyncError> {
    let started = Instant::now();
    let local = local_dir.to_path_buf();
    let prefix = remote.clone();
    let spinner = progress::spinner(opts.progress, "scanning…");
    let scanning = spinner.clone();
    // The server's chunk keys are asked for while the folder is scanned.
    let (scanned, server_keys) = tokio::join!(
        tokio::task::spawn_blocking(move || scan_local(&local, &prefix, &scanning)),
        server_keys(client, ws)
    );
    spinner.finish_and_clear();
    let (scan, _) = scanned.map_err(SyncError::task)??;
    let mut summary = TransferSummary { files_scanned: scan.files.len() as u64, ..TransferSummary::default() };
    for why in scan.skipped {
        summary.skip(why);
    }
    let server_keys = server_keys?;
    let listed = listing(client, ws, &e2ee, &server_keys, false, 0).await?;
    let counter = listed.next_counter();
    let remote_files: HashMap<String, Base> =
        listed.files.iter().map(|f| (f.path.clone(), Base::of_entry(f))).collect();
    let files: Vec<(LocalFile, Option<Base>)> = scan
        .files
        .into_iter()
        .map(|f| {
            let base = remote_files.get(f.ws.as_str()).cloned();
            (f, base)
        })
        .collect();
    let bar = progress::bar(opts.progress, files.iter().map(|(f, _)| f.stat.size).sum());
    let result =
        seal_and_upload(client, ws, &e2ee, &server_keys, files, counter, listed.verified, &bar, &mut summary).await;
    progress::end(&bar, &result);
    result?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The server copy a local file is compared with (its plaintext size and keyed content hash in hex), and
/// the version a commit of the file replaces.
#[derive(Debug, Clone)]
pub(crate) struct Base {
    pub(crate) version: u64,
    pub(crate) size: u64,
    pub(crate) content_hash: String,
}

impl Base {
    fn of_entry(f: &E2eeEntry) -> Self {
        Self { version: f.version, size: f.size, content_hash: hash_hex(&f.manifest.content_hash) }
    }
}

/// Seals `files` on a blocking thread (each compared with its server copy when it has one) and uploads
/// what the server lacks, committing each file with `counter`; what was committed is remembered against
/// rollback. Returns each file's outcome by its index in `files`; counts go to `summary`.
#[expect(clippy::too_many_arguments, reason = "internal; the inputs of one upload")]
pub(crate) async fn seal_and_upload(
    client: &Client,
    ws: WorkspaceId,
    e2ee: &Arc<E2eeFiles>,
    server_keys: &ChunkKeys,
    files: Vec<(LocalFile, Option<Base>)>,
    counter: u64,
    verified: VerifiedManifests,
    bar: &ProgressBar,
    summary: &mut TransferSummary,
) -> Result<Vec<(usize, Outcome)>, SyncError> {
    let (tx, mut rx) = mpsc::channel::<Event>(256);
    let producer = {
        let (bar, e2ee, server_keys) = (bar.clone(), Arc::clone(e2ee), server_keys.clone());
        tokio::task::spawn_blocking(move || {
            let content = server_keys.end_to_end(e2ee.keys.content_key(), e2ee.keys.chunking_secret());
            let sealer =
                Sealer { e2ee: &e2ee, server_keys: &server_keys, content: &content, counter, tx: &tx, bar: &bar };
            // Files the server already has, found on every core and reported in batches (a no-op push of many
            // small files is mostly this).
            let same = unchanged_files(&files, &content);
            let mut unchanged = Vec::new();
            // Small files (sealed whole into their manifests) are sealed a window at a time on every core, and
            // their events sent in file order; a larger file is sealed as it is read, after the window before it.
            let mut window = Vec::new();
            for (tag, (file, base)) in files.iter().enumerate() {
                if let Some(stat) = same[tag] {
                    bar.inc(file.stat.size);
                    unchanged.push((tag, stat));
                    if unchanged.len() >= 1024
                        && tx.blocking_send(Event::Unchanged(std::mem::take(&mut unchanged))).is_err()
                    {
                        return;
                    }
                    continue;
                }
                if file.stat.size > 0 && file.stat.size <= MAX_INLINE_BYTES as u64 {
                    window.push(tag);
                    if window.len() >= SEAL_WINDOW && !sealer.seal_window(&files, &mut window) {
                        return;
                    }
                    continue;
                }
                if !sealer.seal_window(&files, &mut window) || !sealer.seal_one(tag, file, base.as_ref()) {
                    return;
                }
            }
            if !sealer.seal_window(&files, &mut window) {
                return;
            }
            if !unchanged.is_empty() {
                let _ = tx.blocking_send(Event::Unchanged(unchanged));
            }
        })
    };
    let mut up = Uploader::new(client.files(ws), counter, verified);
    let store_files = client.files(ws);
    let result = async {
        // Batches being stored while the next fills (several requests in flight, as for other workspaces).
        // A batch's commits go once it and every batch before it are stored (a file may name a chunk an
        // earlier batch sends): each batch waits for the one before to say so, then says so itself. The
        // commits' results are taken in order.
        let mut storing = futures_util::stream::FuturesOrdered::new();
        let mut before: Option<tokio::sync::oneshot::Receiver<()>> = None;
        let mut open = true;
        while open || !storing.is_empty() {
            tokio::select! {
                ev = rx.recv(), if open && storing.len() < STORES_IN_FLIGHT => {
                    match ev {
                        Some(Event::Blob { id, data }) => {
                            if !up.queue(id, data) {
                                summary.chunks_deduplicated += 1;
                            }
                        }
                        Some(Event::Commit(c)) => up.commits.push(*c),
                        Some(Event::Unchanged(files)) => {
                            summary.files_unchanged += files.len() as u64;
                            up.outcomes.extend(files.into_iter().map(|(tag, stat)| (tag, Outcome::Unchanged { stat })));
                        }
                        Some(Event::Skipped { why }) => summary.skip(why),
                        None => open = false,
                    }
                    if up.bytes >= BATCH_BYTES || up.commits.len() >= MAX_BATCH_COMMITS || !open {
                        let (blobs, commits) = up.take_batch();
                        if !blobs.is_empty() || !commits.is_empty() {
                            let files = &store_files;
                            let (stored_tx, stored_rx) = tokio::sync::oneshot::channel();
                            let wait = before.replace(stored_rx);
                            storing.push_back(async move {
                                let counts = store(files, blobs).await?;
                                if let Some(wait) = wait {
                                    // An earlier batch that failed reports its own error first.
                                    wait.await.map_err(|_| SyncError::Internal("an earlier batch was not stored".into()))?;
                                }
                                let _ = stored_tx.send(());
                                let results = send_commits(files, &commits).await?;
                                Ok::<_, SyncError>((counts, commits, results))
                            });
                        }
                    }
                }
                Some(stored) = futures_util::StreamExt::next(&mut storing), if !storing.is_empty() => {
                    let (counts, commits, results) = stored?;
                    counts.add_to(summary);
                    up.apply(commits, results, summary)?;
                }
            }
        }
        Ok::<(), SyncError>(())
    }
    .await;
    drop(rx);
    producer.await.map_err(SyncError::task)?;
    // What this upload committed counts as seen: the server may not show an older version of it later.
    up.remember(e2ee)?;
    result?;
    Ok(up.outcomes)
}

/// Opens a scanned file, checking that what was opened is what was scanned: never a symlink or device swapped
/// in meanwhile.
fn open_scanned(file: &LocalFile) -> io::Result<fs::File> {
    let handle = fs::File::open(&file.abs)?;
    let meta = handle.metadata()?;
    if !meta.is_file() || crate::scan::identity(&meta) != file.identity {
        return Err(io::Error::other("it was replaced while the push was running"));
    }
    Ok(handle)
}

/// For each file, its stat when its content equals its server copy's (same size, same keyed hash), hashed on
/// every core. A file that cannot be read is not unchanged (sealing it reports why).
fn unchanged_files(files: &[(LocalFile, Option<Base>)], content: &ChunkKeys) -> Vec<Option<Stat>> {
    on_every_core(files, |(file, base)| {
        let base = base.as_ref().filter(|b| b.size == file.stat.size)?;
        let handle = open_scanned(file).ok()?;
        let meta = handle.metadata().ok()?;
        let digest = hash_reader(&handle, content).ok()?;
        (digest.size == base.size && hash_matches(&digest.hash, &base.content_hash)).then(|| Stat::of(&meta))
    })
}

/// The sealing thread's tools.
struct Sealer<'a> {
    e2ee: &'a E2eeFiles,
    server_keys: &'a ChunkKeys,
    content: &'a ChunkKeys,
    counter: u64,
    tx: &'a mpsc::Sender<Event>,
    bar: &'a ProgressBar,
}

/// Small files sealed together, on every core.
const SEAL_WINDOW: usize = 64;

impl Sealer<'_> {
    /// Seals file number `tag` and sends what it gives (a file that cannot be read is reported and skipped).
    /// `false` when the uploader has gone away.
    fn seal_one(&self, tag: usize, file: &LocalFile, base: Option<&Base>) -> bool {
        self.bar.set_message(file.ws.to_string());
        let position = self.bar.position();
        let event = match self.seal_file(tag, file, base) {
            Ok(Some(ev)) => ev,
            Ok(None) => return false,
            Err(e) => Event::Skipped { why: format!("{}: skipped, cannot read it: {e}", file.abs.display()) },
        };
        // Chunks count as they are sealed; a skipped file counts whole.
        self.bar.set_position(position + file.stat.size);
        self.tx.blocking_send(event).is_ok()
    }

    /// Seals the small files `window` (indexes into `files`) on every core, then sends their sealed manifests
    /// and commits in order; a file that is no longer small is sealed the usual way, in its turn. Empties the
    /// window. `false` when the uploader has gone away.
    fn seal_window(&self, files: &[(LocalFile, Option<Base>)], window: &mut Vec<usize>) -> bool {
        if window.is_empty() {
            return true;
        }
        let sealed = on_every_core(window, |&tag| {
            let (file, base) = &files[tag];
            let handle = open_scanned(file)?;
            let meta = handle.metadata()?;
            self.seal_small(tag, file, &handle, &meta, base.as_ref())
        });
        for (tag, sealed) in window.drain(..).zip(sealed) {
            let (file, base) = &files[tag];
            let events = match sealed {
                Ok(Some((blob, commit))) => [blob, commit],
                Ok(None) => {
                    if !self.seal_one(tag, file, base.as_ref()) {
                        return false;
                    }
                    continue;
                }
                Err(e) => {
                    // A skipped file counts whole.
                    self.bar.inc(file.stat.size);
                    let why = format!("{}: skipped, cannot read it: {e}", file.abs.display());
                    if self.tx.blocking_send(Event::Skipped { why }).is_err() {
                        return false;
                    }
                    continue;
                }
            };
            self.bar.inc(file.stat.size);
            for ev in events {
                if self.tx.blocking_send(ev).is_err() {
                    return false;
                }
            }
        }
        true
    }

    /// A small file's sealed manifest (its content inside) and commit, without sending them, read from
    /// `handle` (the file opened and checked, `meta` its metadata); `None` when it is not small (any more), and
    /// then `handle` may have been read from.
    fn seal_small(
        &self,
        tag: usize,
        file: &LocalFile,
        handle: &fs::File,
        meta: &fs::Metadata,
        remote: Option<&Base>,
    ) -> io::Result<Option<(Event, Event)>> {
        if meta.len() == 0 || meta.len() > MAX_INLINE_BYTES as u64 {
            return Ok(None);
        }
        let mut content = Vec::with_capacity(meta.len() as usize);
        handle.take(MAX_INLINE_BYTES as u64 + 1).read_to_end(&mut content)?;
        if content.is_empty() || content.len() > MAX_INLINE_BYTES {
            return Ok(None);
        }
        let keys = &self.e2ee.keys;
        let m = FileManifest {
            path: file.ws.to_string(),
            size: content.len() as u64,
            content_hash: self.content.chunk_id(&content).0,
            mtime_ms: meta.modified().ok().map(|t| crate::index::unix_ns(t) / 1_000_000),
            epoch: keys.current_epoch(),
            counter: self.counter,
            author: self.e2ee.me,
            chunks: Vec::new(),
            inline: Some(Bytes::from(content)),
        };
        let (sealed, mut commit) =
            seal_commit(self.e2ee, self.server_keys, &m, remote.map(|r| r.version)).map_err(io::Error::other)?;
        (commit.tag, commit.stat) = (tag, Stat::of(meta));
        Ok(Some((Event::Blob { id: commit.manifest_id, data: sealed }, Event::Commit(Box::new(commit)))))
    }

    /// Seals file number `tag`, whose content differs from its server copy (`remote`, if any): its chunks
    /// (sent as they are sealed) and then its commit. `Ok(None)` when the uploader has gone away.
    fn seal_file(&self, tag: usize, file: &LocalFile, remote: Option<&Base>) -> io::Result<Option<Event>> {
        // Read from the handle whose identity was checked, not opened again by name.
        let handle = open_scanned(file)?;
        let meta = handle.metadata()?;
        let stat = Stat::of(&meta);
        let keys = &self.e2ee.keys;
        let mtime_ms = meta.modified().ok().map(|t| crate::index::unix_ns(t) / 1_000_000);
        let base_version = remote.map(|r| r.version);
        // A small file travels inside its manifest: one stored object per version instead of two.
        if meta.len() > 0 && meta.len() <= MAX_INLINE_BYTES as u64 {
            if let Some((blob, commit)) = self.seal_small(tag, file, &handle, &meta, remote)? {
                self.bar.inc(meta.len());
                if self.tx.blocking_send(blob).is_err() {
                    return Ok(None);
                }
                return Ok(Some(commit));
            }
            // It grew or emptied meanwhile: read again, as chunks.
            (&handle).seek(SeekFrom::Start(0))?;
        }
        let (mut chunks, mut too_many, mut gone) = (Vec::new(), false, false);
        let digest = chunk_stream(&handle, self.content, |content_id, data| {
            if chunks.len() >= MAX_FILE_CHUNKS {
                too_many = true;
                return ControlFlow::Break(());
            }
            let blob = keys.seal_chunk(&content_id.0, &data);
            let id = self.server_keys.chunk_id(&blob);
            chunks.push(SealedChunk { stored_id: id.0, content_id: content_id.0, len: data.len() as u32 });
            self.bar.inc(data.len() as u64);
            if self.tx.blocking_send(Event::Blob { id, data: Bytes::from(blob) }).is_err() {
                gone = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })?;
        if gone {
            return Ok(None);
        }
        let Some(digest) = digest.filter(|_| !too_many) else {
            return Ok(Some(Event::Skipped {
                why: format!(
                    "{}: skipped, it is too large: a file of an end-to-end encrypted workspace has at most \
                     {MAX_FILE_CHUNKS} chunks",
                    file.abs.display()
                ),
            }));
        };
        let m = FileManifest {
            path: file.ws.to_string(),
            size: digest.size,
            content_hash: digest.hash,
            mtime_ms,
            epoch: keys.current_epoch(),
            counter: self.counter,
            author: self.e2ee.me,
            chunks,
            inline: None,
        };
        self.send_commit(tag, stat, &m, base_version)
    }

    /// Seals `m`, sends the sealed manifest, and returns the commit (`None` when the uploader has gone away).
    fn send_commit(
        &self,
        tag: usize,
        stat: Stat,
        m: &FileManifest,
        base_version: Option<u64>,
    ) -> io::Result<Option<Event>> {
        let (sealed, mut commit) =
            seal_commit(self.e2ee, self.server_keys, m, base_version).map_err(io::Error::other)?;
        (commit.tag, commit.stat) = (tag, stat);
        if self.tx.blocking_send(Event::Blob { id: commit.manifest_id, data: sealed }).is_err() {
            return Ok(None);
        }
        Ok(Some(Event::Commit(Box::new(commit))))
    }
}

/// Signs and seals `m` as this member's, and the commit that stores it as the file's next version: the sealed
/// manifest first, then its chunks (none for a small file, whose content the manifest holds). The server
/// learns neither the content hash nor the modification time (the manifest holds them); the file's content
/// hash is the sealed manifest's chunk id.
fn seal_commit(
    e2ee: &E2eeFiles,
    server_keys: &ChunkKeys,
    m: &FileManifest,
    base_version: Option<u64>,
) -> Result<(Bytes, Commit), SyncError> {
    let internal = |e: cloudsync_crypto::CryptoError| SyncError::Internal(e.to_string());
    let sealed = Bytes::from(e2ee.keys.seal_manifest(m, &e2ee.signer).map_err(internal)?);
    let manifest_id = server_keys.chunk_id(&sealed);
    let mut listed = vec![ManifestChunk { id: manifest_id, size: sealed.len() as u32 }];
    listed.extend(m.chunks.iter().map(|c| ManifestChunk { id: ChunkId(c.stored_id), size: c.stored_len() as u32 }));
    let req = CommitRequest {
        path: e2ee.server_path(&m.path)?,
        base_version,
        manifest: Manifest {
            size: listed.iter().map(|c| u64::from(c.size)).sum(),
            content_hash: manifest_id.to_hex(),
            chunks: listed,
        },
        mtime_ms: None,
    };
    let commit = Commit {
        tag: 0,
        stat: Stat::default(),
        shown: m.path.clone(),
        size: m.size,
        mtime_ms: m.mtime_ms,
        req,
        path_id: hex::encode(e2ee.keys.path_id(&m.path)),
        seen: (m.counter, hash_hex(&m.content_hash)),
        manifest_id,
        record: e2ee.keys.manifest_record(m).map_err(internal)?,
    };
    Ok((sealed, commit))
}

/// Blobs and commits waiting to be sent.
struct Uploader<'a> {
    files: cloudsync_sdk::Files<'a>,
    blobs: Vec<(ChunkId, Bytes)>,
    bytes: usize,
    commits: Vec<Commit>,
    /// Ids already queued or sent in this push.
    sent: HashSet<ChunkId>,
    /// The files committed so far, as this device will remember them.
    committed: Seen,
    /// The manifests this device checked, joined by those it commits (it need not check its own).
    verified: VerifiedManifests,
    /// What became of each file so far, by its tag.
    outcomes: Vec<(usize, Outcome)>,
}

impl<'a> Uploader<'a> {
    /// An uploader whose commits carry `counter`.
    fn new(files: cloudsync_sdk::Files<'a>, counter: u64, verified: VerifiedManifests) -> Self {
        Self {
            files,
            blobs: Vec::new(),
            bytes: 0,
            commits: Vec::new(),
            sent: HashSet::new(),
            committed: Seen { max: counter, paths: BTreeMap::new() },
            verified,
            outcomes: Vec::new(),
        }
    }

    /// Queues a blob to store; `false` (and nothing queued) when this upload already has it.
    fn queue(&mut self, id: ChunkId, data: Bytes) -> bool {
        if !self.sent.insert(id) {
            return false;
        }
        self.bytes += data.len();
        self.blobs.push((id, data));
        true
    }

    /// Remembers what was committed: the counters (rollback detection) and the manifests made here.
    fn remember(&mut self, e2ee: &E2eeFiles) -> Result<(), SyncError> {
        std::mem::take(&mut self.committed).save(&e2ee.seen_file)?;
        self.verified.save()
    }
    /// The blobs and commits gathered so far, as one batch.
    fn take_batch(&mut self) -> (Vec<(ChunkId, Bytes)>, Vec<Commit>) {
        self.bytes = 0;
        (std::mem::take(&mut self.blobs), std::mem::take(&mut self.commits))
    }

    /// Sends the blobs the server lacks, then the commits that name them.
    async fn flush(&mut self, summary: &mut TransferSummary) -> Result<(), SyncError> {
        let (blobs, commits) = self.take_batch();
        store(&self.files, blobs).await?.add_to(summary);
        self.commit(commits, summary).await
    }

    /// Commits `commits`, whose blobs are stored.
    async fn commit(&mut self, commits: Vec<Commit>, summary: &mut TransferSummary) -> Result<(), SyncError> {
        let results = send_commits(&self.files, &commits).await?;
        self.apply(commits, results, summary)
    }

    /// Takes in what the server answered to `commits`.
    fn apply(
        &mut self,
        commits: Vec<Commit>,
        results: Vec<CommitResult>,
        summary: &mut TransferSummary,
    ) -> Result<(), SyncError> {
        for (c, result) in commits.into_iter().zip(results) {
            match (result.entry, result.error) {
                (Some(entry), _) => {
                    summary.files_uploaded += 1;
                    let path = WsPath::parse(&c.shown).map_err(|e| SyncError::Internal(e.to_string()))?;
                    // The file as members see it; the server's record names the sealed form.
                    let entry =
                        FileEntry { path, size: c.size, content_hash: c.seen.1.clone(), mtime_ms: c.mtime_ms, ..entry };
                    self.outcomes.push((c.tag, Outcome::Committed { entry, stat: c.stat }));
                    self.committed.paths.insert(c.path_id, c.seen);
                    self.verified.keep(c.manifest_id, c.record);
                }
                (None, Some(e)) if e.code == cloudsync_types::ErrorCode::Conflict => {
                    summary.files_conflicted += 1;
                    summary.conflicts.push(format!(
                        "{}: changed on the server since it was listed; not overwritten (pull it, then push again)",
                        c.shown
                    ));
                    self.outcomes.push((c.tag, Outcome::Conflict));
                }
                (None, e) => return Err(crate::upload::refused_commit(&c.shown, e)),
            }
        }
        Ok(())
    }
}

/// Sends `commits`, whose blobs are stored; the SDK answers one result per commit, or an error.
async fn send_commits(files: &cloudsync_sdk::Files<'_>, commits: &[Commit]) -> Result<Vec<CommitResult>, SyncError> {
    if commits.is_empty() {
        return Ok(Vec::new());
    }
    let reqs: Vec<CommitRequest> = commits.iter().map(|c| c.req.clone()).collect();
    Ok(retry(|| files.commit_batch(&reqs)).await?)
}

/// Batches of blobs being stored at once by an E2EE push.
const STORES_IN_FLIGHT: usize = 3;

/// What storing one batch of blobs did.
#[derive(Debug, Default)]
struct Stored {
    uploaded: u64,
    deduplicated: u64,
    bytes: u64,
}

impl Stored {
    fn add_to(&self, summary: &mut TransferSummary) {
        summary.chunks_uploaded += self.uploaded;
        summary.chunks_deduplicated += self.deduplicated;
        summary.bytes_uploaded += self.bytes;
    }
}

/// Sends the blobs of one batch that the server lacks.
async fn store(files: &cloudsync_sdk::Files<'_>, blobs: Vec<(ChunkId, Bytes)>) -> Result<Stored, SyncError> {
    if blobs.is_empty() {
        return Ok(Stored::default());
    }
    let ids: Vec<ChunkId> = blobs.iter().map(|(id, _)| *id).collect();
    let missing: HashSet<ChunkId> = retry(|| files.missing_chunks(&ids)).await?.into_iter().collect();
    let send: Vec<(ChunkId, Bytes)> = blobs.into_iter().filter(|(id, _)| missing.contains(id)).collect();
    let stored = Stored {
        uploaded: send.len() as u64,
        deduplicated: (ids.len() - send.len()) as u64,
        bytes: send.iter().map(|(_, b)| b.len() as u64).sum(),
    };
    if !send.is_empty() {
        retry(|| files.upload_chunks(send.clone())).await?;
    }
    Ok(stored)
}

/// One file to bring down.
pub(crate) struct Download {
    pub(crate) entry: E2eeEntry,
    pub(crate) target: PathBuf,
    /// Set when the local file may be replaced: it holds content this device saw on the server for that path.
    pub(crate) replace: Option<Stat>,
}

/// `cloudsync pull` from an end-to-end encrypted workspace: every file under `remote` is fetched, opened and
/// verified against its manifest in a temporary file, then renamed into place. A local file that differs and
/// holds content this device never saw on the server for that path is kept as a conflicted copy.
///
/// # Errors
/// As [`crate::pull`]; [`SyncError::Integrity`] when anything the server sent does not check out.
pub async fn e2ee_pull(
    client: &Client,
    ws: WorkspaceId,
    remote: &WsPath,
    local_dir: &Path,
    e2ee: Arc<E2eeFiles>,
    opts: &TransferOptions,
) -> Result<TransferSummary, SyncError> {
    let started = Instant::now();
    // The server's chunk keys are asked for while the files are listed.
    let (server_keys, rows) = tokio::try_join!(server_keys(client, ws), listed_rows(client, ws, true))?;
    let content = server_keys.end_to_end(e2ee.keys.content_key(), e2ee.keys.chunking_secret());
    let listed = listing_of(client, ws, &e2ee, &server_keys, rows, HELD_INLINE_BYTES).await?;
    let wanted: Vec<E2eeEntry> = listed.files.into_iter().filter(|f| under(remote, &f.path)).collect();
    if wanted.is_empty() && !remote.is_root() {
        return Err(SyncError::RemoteNotFound(format!(
            "nothing on the server at '{remote}': no file or folder by that name (`cloudsync ls` shows what is there)"
        )));
    }
    ensure_dir(local_dir)?;
    let mut summary = TransferSummary { files_scanned: wanted.len() as u64, ..TransferSummary::default() };
    let mut jobs = Vec::new();
    for entry in wanted {
        let Some(rel) = WsPath::parse(&entry.path).ok().and_then(|p| relative(remote, &p).map(str::to_owned)) else {
            summary.skip(format!("{}: skipped, not a valid path below '{remote}'", entry.path));
            continue;
        };
        let target = match local_path(local_dir, &rel) {
            Ok(t) => t,
            Err(why) => {
                summary.skip(format!("{}: skipped, {why}", entry.path));
                continue;
            }
        };
        match prepare(local_dir, &target) {
            Ok(Ok(Existing::Missing)) => jobs.push(Download { entry, target, replace: None }),
            Ok(Ok(Existing::File(_))) => {
                let Some((stat, digest)) = local_copy(&target, &content)? else {
                    jobs.push(Download { entry, target, replace: None });
                    continue;
                };
                if entry.holds(&digest) {
                    summary.files_unchanged += 1;
                    continue;
                }
                let path_id = hex::encode(e2ee.keys.path_id(&entry.path));
                let stale = listed.before.paths.get(&path_id).is_some_and(|(_, h)| *h == hash_hex(&digest.hash));
                jobs.push(Download { entry, target, replace: stale.then_some(stat) });
            }
            Ok(Err(why)) => summary.skip(format!("{}: skipped, {why}", entry.path)),
            Err((path, e)) => return Err(SyncError::io(&path, e)),
        }
    }
    let bar = progress::bar(opts.progress, jobs.iter().map(|j| j.entry.size).sum());
    let files = client.files(ws);
    let tools = Tools { e2ee, server_keys, content, bar: bar.clone(), device: opts.device_name.clone() };
    let shown: Vec<String> = jobs.iter().map(|j| j.entry.path.clone()).collect();
    let result = download_all(&files, jobs, tools, &mut summary).await;
    progress::end(&bar, &result);
    for (j, fetched) in result? {
        if let Fetched::Written { kept_as, .. } = fetched {
            summary.files_downloaded += 1;
            if let Some(copy) = kept_as {
                summary.files_conflicted += 1;
                summary.conflicts.push(format!(
                    "{}: the local file differed and was kept as {}",
                    shown[j],
                    copy.display()
                ));
            }
        }
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The local file at `target`: its stat and keyed content digest, both from one open handle; `None` when it
/// is gone.
pub(crate) fn local_copy(target: &Path, content: &ChunkKeys) -> Result<Option<(Stat, Digest)>, SyncError> {
    let file = match fs::File::open(target) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SyncError::io(target, e)),
    };
    let meta = file.metadata().map_err(|e| SyncError::io(target, e))?;
    let digest = hash_reader(&file, content).map_err(|e| SyncError::io(target, e))?;
    Ok(Some((Stat::of(&meta), digest)))
}

/// A file being written: its temporary file and a hasher over what was written.
struct Writing {
    tmp: PathBuf,
    file: fs::File,
    hasher: cloudsync_crypto::KeyedHasher,
    written: u64,
}

/// What a pull opens, checks, writes and counts with; shared by the threads that open chunks and the one
/// that writes.
pub(crate) struct Tools {
    pub(crate) e2ee: Arc<E2eeFiles>,
    pub(crate) server_keys: ChunkKeys,
    pub(crate) content: ChunkKeys,
    pub(crate) bar: ProgressBar,
    pub(crate) device: String,
}

/// Fetches every job's chunks in order, several requests in flight; each request's chunks are checked and
/// opened on a blocking thread (requests in parallel), and one writer thread writes them in order and installs
/// finished files in groups (durably, then renamed). Returns each job's outcome by index (every one is
/// [`Fetched::Written`]); bytes are counted in `summary`.
pub(crate) async fn download_all(
    files: &cloudsync_sdk::Files<'_>,
    jobs: Vec<Download>,
    tools: Tools,
    summary: &mut TransferSummary,
) -> Result<Vec<(usize, Fetched)>, SyncError> {
    let jobs: Arc<[Download]> = jobs.into();
    let tools = Arc::new(tools);
    // Every piece of every job, in order: (job, chunk index), split as the fetch requests are. A small file
    // is one piece, its sealed manifest (fetched unless the listing held its content).
    let pieces = |d: &Download| if d.entry.manifest.is_inline() { 1 } else { d.entry.manifest.chunks.len() };
    let order: Vec<(usize, usize)> =
        jobs.iter().enumerate().flat_map(|(j, d)| (0..pieces(d)).map(move |c| (j, c))).collect();
    // Each piece's chunk and stored size (none for content the listing held).
    let wanted: Vec<(ChunkId, u32)> = order
        .iter()
        .map(|&(j, c)| {
            let entry = &jobs[j].entry;
            match (entry.manifest.is_inline(), &entry.manifest.inline) {
                (true, Some(_)) => (entry.manifest_chunk.0, 0),
                (true, None) => entry.manifest_chunk,
                (false, _) => {
                    let chunk = &entry.manifest.chunks[c];
                    (ChunkId(chunk.stored_id), chunk.stored_len() as u32)
                }
            }
        })
        .collect();
    // Each fetch request: its chunk ids, and its pieces with their stored sizes.
    let mut batches = Vec::new();
    let mut at = 0;
    for ids in requests(wanted.iter().copied()) {
        let range = at..at + ids.len();
        let sizes: Vec<u64> = wanted[range.clone()].iter().map(|w| u64::from(w.1)).collect();
        batches.push((ids, order[range.clone()].to_vec(), sizes));
        at = range.end;
    }
    let (tx, rx) = mpsc::channel::<Vec<Opened>>(FEED_REQUESTS);
    let writer = {
        let (jobs, tools) = (Arc::clone(&jobs), Arc::clone(&tools));
        tokio::task::spawn_blocking(move || write_all(&jobs, rx, &tools))
    };
    let fetched = futures_util::stream::iter(batches)
        .map(|(ids, places, sizes)| {
            let (jobs, tools) = (Arc::clone(&jobs), Arc::clone(&tools));
            async move {
                // Content the listing held is not fetched again.
                let fetch: Vec<ChunkId> = ids
                    .iter()
                    .zip(&places)
                    .filter(|(_, (j, _))| jobs[*j].entry.manifest.inline.is_none())
                    .map(|(id, _)| *id)
                    .collect();
                let blobs = if fetch.is_empty() { Vec::new() } else { retry(|| fetch_all(files, &fetch)).await? };
                let bytes = blobs.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
                // The request's chunks are opened a slice at a time (at most OPEN_SLICE chunks and
                // OPEN_SLICE_BYTES), all slices at once on blocking threads, so the writer can start on the first
                // slice while the others are opened, and a request of a few big chunks is opened on every core.
                let mut blobs = blobs.into_iter();
                let mut slices = Vec::new();
                for range in groups(sizes, OPEN_SLICE, OPEN_SLICE_BYTES) {
                    let slice = places[range].to_vec();
                    let held = slice.iter().filter(|(j, _)| jobs[*j].entry.manifest.inline.is_none()).count();
                    let part: Vec<(ChunkId, Bytes)> = blobs.by_ref().take(held).collect();
                    let (jobs, tools) = (Arc::clone(&jobs), Arc::clone(&tools));
                    slices.push(tokio::task::spawn_blocking(move || open_batch(&jobs, &tools, part, &slice)));
                }
                Ok::<_, SyncError>((bytes, slices))
            }
        })
        .buffered(FETCH_IN_FLIGHT);
    // The fetches run on their own, a few requests ahead, while the opened slices are handed to the writer in
    // order: waiting on one request's slices never holds the next requests' fetches up.
    let (ahead_tx, ahead_rx) = mpsc::channel(FETCH_IN_FLIGHT);
    let fetch_ahead = async move {
        let mut fetched = std::pin::pin!(fetched);
        loop {
            // Once the feeding has stopped (the writer failed), fetches in flight are given up, not waited for.
            let item = tokio::select! {
                item = fetched.next() => item,
                () = ahead_tx.closed() => None,
            };
            let Some(item) = item else { break };
            let failed = item.is_err();
            if ahead_tx.send(item).await.is_err() || failed {
                break;
            }
        }
    };
    let opened = futures_util::stream::unfold(ahead_rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
        // Each request's slices in order, each as soon as it is opened.
        .map(|fetched| {
            let slices = match fetched {
                Ok((bytes, slices)) => slices.into_iter().enumerate().map(move |(i, h)| Ok((i, bytes, h))).collect(),
                Err(e) => vec![Err(e)],
            };
            futures_util::stream::iter(slices)
        })
        .flatten()
        .then(|slice| async move {
            let (i, bytes, handle) = slice?;
            let plain = handle.await.map_err(SyncError::task)??;
            // The request's bytes are counted once, with its first slice.
            Ok::<_, SyncError>((if i == 0 { bytes } else { 0 }, plain))
        });
    let feed = feed_writer(opened, tx, writer, |(bytes, plain)| {
        summary.bytes_downloaded += bytes;
        plain
    });
    let ((), written) = tokio::join!(fetch_ahead, feed);
    written
}

/// Chunks of one fetch request opened together on one blocking thread, at most.
const OPEN_SLICE: usize = 64;
/// Bytes of one fetch request opened together on one blocking thread, at most (a bigger chunk alone).
const OPEN_SLICE_BYTES: u64 = 4 << 20;

/// One opened chunk: which job it belongs to, and its plaintext.
struct Opened {
    job: usize,
    plain: Bytes,
}

/// Opens each fetched chunk with its file's key epoch (which checks it against the signed manifest); a small
/// file's content comes from its manifest (held by the listing, or fetched and opened again).
fn open_batch(
    jobs: &[Download],
    tools: &Tools,
    blobs: Vec<(ChunkId, Bytes)>,
    places: &[(usize, usize)],
) -> Result<Vec<Opened>, SyncError> {
    let mut blobs = blobs.into_iter();
    places
        .iter()
        .map(|&(j, c)| {
            let job = &jobs[j];
            if let Some(content) = &job.entry.manifest.inline {
                return Ok(Opened { job: j, plain: content.clone() });
            }
            let (id, blob) =
                blobs.next().ok_or_else(|| SyncError::Integrity("the server sent fewer chunks than asked".into()))?;
            if job.entry.manifest.is_inline() {
                check_blob(&tools.server_keys, id, &blob)?;
                return open_inline(job, tools, &blob).map(|plain| Opened { job: j, plain });
            }
            // No check against the server's id (a hash over the whole blob): the chunk opens only under the key
            // its signed content id derives, with that id in its associated data, and its plaintext must hash
            // to that id, so any other bytes are refused anyway.
            let chunk = &job.entry.manifest.chunks[c];
            let plain = tools.e2ee.keys.open_chunk(job.entry.manifest.epoch, chunk, &blob).map_err(|e| {
                SyncError::Integrity(format!(
                    "chunk {c} of {} does not open ({e}): the server altered or swapped it; nothing was written",
                    job.entry.path
                ))
            })?;
            Ok(Opened { job: j, plain: Bytes::from(plain) })
        })
        .collect()
}

/// A small file's content, from its sealed manifest fetched again: the blob matches the id the listing
/// verified (the caller checked), so the signature is not checked again; what it says must be what was listed.
fn open_inline(job: &Download, tools: &Tools, blob: &[u8]) -> Result<Bytes, SyncError> {
    let server_path = tools.e2ee.server_path(&job.entry.path)?;
    let mut m = open_checked(&tools.e2ee, &server_path, Read::Sealed { blob, verified_before: true })?;
    match m.inline.take() {
        Some(content) if m == job.entry.manifest => Ok(content),
        _ => Err(SyncError::Integrity(format!(
            "the manifest of {} changed between listing and download: the server altered it; nothing was written",
            job.entry.path
        ))),
    }
}

/// The writer thread: writes the opened chunks in order, finishes each file against its manifest, and
/// installs finished files a group at a time. Returns each job's outcome.
fn write_all(
    jobs: &[Download],
    rx: mpsc::Receiver<Vec<Opened>>,
    tools: &Tools,
) -> Result<Vec<(usize, Fetched)>, SyncError> {
    // One temporary file per job, in job order, as the writer takes them.
    let targets: Vec<PathBuf> = jobs.iter().map(|d| d.target.clone()).collect();
    with_created_ahead(&targets, |made| write_in_order(jobs, rx, tools, made))
}

fn write_in_order(
    jobs: &[Download],
    mut rx: mpsc::Receiver<Vec<Opened>>,
    tools: &Tools,
    made: &Made,
) -> Result<Vec<(usize, Fetched)>, SyncError> {
    let mut cleanup = TempFiles(HashSet::new());
    let mut open = Open { writing: None, next_job: 0 };
    let mut group = Group { done: Vec::new(), bytes: 0, installed: Vec::new() };
    while let Some(batch) = rx.blocking_recv() {
        for Opened { job: j, plain } in batch {
            open.settle(j, jobs, &tools.content, made, &mut cleanup, &mut group)?;
            let w = match &mut open.writing {
                Some(w) => w,
                None => open.writing.insert(open_temp(made, &tools.content, &mut cleanup)?),
            };
            w.file.write_all(&plain).map_err(|e| SyncError::io(&w.tmp, e))?;
            // A file of one chunk, or inline, was checked against its content hash when it was opened.
            if jobs[j].entry.manifest.chunks.len() > 1 {
                w.hasher.update(&plain);
            }
            w.written += plain.len() as u64;
            tools.bar.inc(plain.len() as u64);
            group.bytes += plain.len() as u64;
        }
        if group.done.len() >= GROUP_FILES || group.bytes >= GROUP_BYTES {
            group.install(jobs, &tools.device, &mut cleanup)?;
        }
    }
    open.settle(jobs.len(), jobs, &tools.content, made, &mut cleanup, &mut group)?;
    group.install(jobs, &tools.device, &mut cleanup)?;
    Ok(group.installed)
}

/// Files written and checked, not yet renamed into place.
struct Group {
    /// Job, temporary file, and what the file looks like (renaming keeps it).
    done: Vec<(usize, PathBuf, Stat)>,
    bytes: u64,
    installed: Vec<(usize, Fetched)>,
}

impl Group {
    /// Makes the group's files durable, then renames each into place (a local file that differs and was not
    /// seen on the server is kept as a conflicted copy).
    fn install(&mut self, jobs: &[Download], device: &str, cleanup: &mut TempFiles) -> Result<(), SyncError> {
        self.bytes = 0;
        let done = std::mem::take(&mut self.done);
        let Some((_, first, _)) = done.first() else {
            return Ok(());
        };
        flush_to_disk(done.iter().map(|(_, p, _)| p.as_path()), first)?;
        for (j, tmp, stat) in done {
            let job = &jobs[j];
            let kept_as = place(&tmp, &job.target, job.replace, device)?;
            cleanup.0.remove(&tmp);
            self.installed.push((j, Fetched::Written { stat, kept_as }));
        }
        Ok(())
    }
}

/// The next job's temporary file, as created ahead (every job takes exactly one, in job order).
fn open_temp(made: &Made, content: &ChunkKeys, cleanup: &mut TempFiles) -> Result<Writing, SyncError> {
    let (tmp, file) = take_made(made)?;
    cleanup.0.insert(tmp.clone());
    Ok(Writing { tmp, file, hasher: content.content_hasher(), written: 0 })
}

/// The file being written, and the first job not finished yet.
struct Open {
    writing: Option<Writing>,
    next_job: usize,
}

impl Open {
    /// Finishes every job before `upto`: the one being written, and those with no chunks (empty files).
    fn settle(
        &mut self,
        upto: usize,
        jobs: &[Download],
        content: &ChunkKeys,
        made: &Made,
        cleanup: &mut TempFiles,
        group: &mut Group,
    ) -> Result<(), SyncError> {
        while self.next_job < upto {
            let j = self.next_job;
            let w = match self.writing.take() {
                Some(w) => w,
                None => open_temp(made, content, cleanup)?,
            };
            let stat = finish(&jobs[j], &w)?;
            group.done.push((j, w.tmp, stat));
            self.next_job += 1;
        }
        Ok(())
    }
}

/// Temporary files not renamed into place yet; removed when the pull stops early. A set: a group installs a
/// thousand files, and each leaves it (a list searched each time cost seconds on 10,000 files).
struct TempFiles(HashSet<PathBuf>);

impl Drop for TempFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

/// Checks a fully written file against its manifest and sets its modification time; returns what the file
/// looks like then.
fn finish(job: &Download, w: &Writing) -> Result<Stat, SyncError> {
    let m = &job.entry.manifest;
    // A one-chunk file's content hash is its chunk's content id (the same key), which opening the chunk
    // already checked, as opening a manifest checked its inline content; the hasher covers the rest.
    let hash = match m.chunks.as_slice() {
        [one] => one.content_id,
        [] if m.is_inline() => m.content_hash,
        _ => w.hasher.finalize(),
    };
    if w.written != m.size || hash != m.content_hash {
        return Err(SyncError::Integrity(format!(
            "{} does not match its signed manifest after download; nothing was written",
            job.entry.path
        )));
    }
    if let Some(t) = m.mtime_ms.and_then(system_time) {
        w.file.set_modified(t).map_err(|e| SyncError::io(&w.tmp, e))?;
    }
    let meta = w.file.metadata().map_err(|e| SyncError::io(&w.tmp, e))?;
    Ok(Stat::of(&meta))
}
