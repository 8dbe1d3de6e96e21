//! Listing, copying, mirroring and deleting between any two locations (a local folder or a connection).
//!
//! A transfer streams: at most a few chunks of a file are in memory at once, whatever its size. A file is
//! never visible half-written under its final name: local files and remotes that can rename (SFTP, FTP,
//! WebDAV) are written under a temporary name and renamed when complete; S3 makes an object (multipart upload
//! included) visible only when it is complete. Every upload's size is checked before the file gets its name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use opendal::{EntryMode, Operator};
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::error::Error;
use crate::names::{Unsafe, local_relative};
use crate::pace::Pace;
use crate::partial;

/// Most entries one listing may hold.
pub const MAX_ENTRIES: usize = 1_000_000;
/// Size of the pieces a file is read and written in.
pub(crate) const CHUNK: usize = 8 << 20;
/// Name prefix and suffix of a file being written (kept short: the final name may be near the limit).
const PARTIAL_PREFIX: &str = ".cloudsync-";
pub(crate) const PARTIAL_SUFFIX: &str = ".partial";

/// A fresh temporary name, not guessable by another local user.
pub(crate) fn partial_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u32(std::process::id());
    format!("{PARTIAL_PREFIX}{:016x}{PARTIAL_SUFFIX}", h.finish())
}

pub(crate) fn is_partial(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    base.starts_with(PARTIAL_PREFIX) && base.ends_with(PARTIAL_SUFFIX)
}

/// One end of a transfer.
#[derive(Debug, Clone)]
pub enum Location {
    /// A local file or folder.
    Local(PathBuf),
    /// A path on a connection.
    Remote {
        /// The connection's operator.
        op: Operator,
        /// Path under the connection's root, `/`-separated, without a leading `/`.
        path: String,
        /// `NAME:PATH` as the user wrote it, for messages.
        label: String,
    },
}

impl Location {
    /// How the user wrote it.
    pub fn label(&self) -> String {
        match self {
            Self::Local(p) => p.display().to_string(),
            Self::Remote { label, .. } => label.clone(),
        }
    }
}

/// A listed file or folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Path relative to the listed folder, `/`-separated (folders end without a slash).
    pub path: String,
    /// Size in bytes (0 for folders).
    pub size: u64,
    /// Last modification, when the remote reports one (in JSON: `modified_unix`, seconds since 1970).
    #[serde(rename = "modified_unix", serialize_with = "unix_seconds")]
    pub modified: Option<SystemTime>,
    /// Whether it is a folder.
    pub is_dir: bool,
    /// The remote's entity tag, where it lists one (S3: the MD5 of the content for an object uploaded in one
    /// piece, `MD5-PARTS` of the parts' MD5s for a multipart upload).
    #[serde(skip)]
    pub etag: Option<String>,
    /// The version read (a listing of the past, `--as-of`): the object's version id.
    #[serde(skip)]
    pub version: Option<String>,
    /// That version is not the current one: its time is older than any copy made since.
    #[serde(skip)]
    pub past: bool,
}

impl Entry {
    fn file(path: String, size: u64, modified: Option<SystemTime>, etag: Option<String>) -> Self {
        Self { path, size, modified, is_dir: false, etag, version: None, past: false }
    }
}

fn unix_seconds<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    let secs =
        t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).and_then(|d| i64::try_from(d.as_secs()).ok());
    secs.serialize(s)
}

/// A name the remote listed that was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refused {
    /// The name exactly as listed (a mirror keeps a destination file of that name).
    #[serde(skip)]
    pub raw: String,
    /// The name as listed (control characters escaped).
    pub name: String,
    /// Why.
    pub reason: String,
}

/// A listing.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Listing {
    /// The entries, sorted by path.
    pub entries: Vec<Entry>,
    /// Hostile or unusable names, skipped.
    pub refused: Vec<Refused>,
}

fn refuse(name: &str, why: &Unsafe) -> Refused {
    Refused { raw: name.to_owned(), name: name.escape_debug().to_string(), reason: why.to_string() }
}

fn dir_prefix(path: &str) -> String {
    let p = path.trim_matches('/');
    if p.is_empty() { String::new() } else { format!("{p}/") }
}

/// What a source path is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    File(u64, Option<SystemTime>, Option<String>),
    Dir,
    Missing,
}

async fn shape(loc: &Location) -> Result<Shape, Error> {
    match loc {
        Location::Local(p) => match tokio::fs::metadata(p).await {
            Ok(m) if m.is_dir() => Ok(Shape::Dir),
            Ok(m) => Ok(Shape::File(m.len(), m.modified().ok(), None)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Shape::Missing),
            Err(e) => Err(Error::io(format!("cannot read {}", p.display()), e)),
        },
        Location::Remote { op, path, label } => {
            let trimmed = path.trim_matches('/');
            if trimmed.is_empty() {
                return Ok(Shape::Dir);
            }
            // `NAME:dir/` means a folder, but is checked like any other path: a mistyped folder must not read
            // as an empty one (a mirror from it would delete everything at the destination).
            let stat = if path.ends_with('/') {
                None
            } else {
                match op.stat(trimmed).await {
                    Ok(m) if m.mode() == EntryMode::FILE => {
                        let etag = m.etag().map(str::to_owned);
                        return Ok(Shape::File(m.content_length(), m.last_modified().map(SystemTime::from), etag));
                    }
                    Ok(_) => return Ok(Shape::Dir),
                    Err(e) => Some(e),
                }
            };
            // Object stores have no folders of their own: a prefix with objects under it is one (and some S3
            // servers fail a HEAD on such a prefix instead of answering 404).
            let prefix = format!("{trimmed}/");
            match op.list_with(&prefix).limit(2).await {
                Ok(v) if v.iter().any(|e| e.path() != prefix) => return Ok(Shape::Dir),
                Ok(_) => {}
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::backend(format!("cannot list {label}"), e)),
            }
            // An empty folder, where the service has folders.
            if let Ok(m) = op.stat(&prefix).await
                && m.mode() == EntryMode::DIR
            {
                return Ok(Shape::Dir);
            }
            match stat {
                Some(e) if e.kind() != opendal::ErrorKind::NotFound => {
                    Err(Error::backend(format!("cannot read {label}"), e))
                }
                _ => Ok(Shape::Missing),
            }
        }
    }
}

/// What is at a location: `None` when nothing is, else a folder or a file (its path is its name).
///
/// # Errors
/// The location cannot be read.
pub async fn stat(loc: &Location) -> Result<Option<Entry>, Error> {
    Ok(match shape(loc).await? {
        Shape::Missing => None,
        Shape::Dir => Some(Entry { is_dir: true, ..Entry::file(String::new(), 0, None, None) }),
        Shape::File(size, modified, etag) => {
            let name = match loc {
                Location::Local(p) => p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                Location::Remote { path, .. } => path.trim_end_matches('/').rsplit('/').next().unwrap_or("").to_owned(),
            };
            Some(Entry::file(name, size, modified, etag))
        }
    })
}

/// Lists a folder (all the way down with `recursive`). Hostile names are refused, never returned.
///
/// # Errors
/// The folder cannot be listed, or holds more than [`MAX_ENTRIES`].
pub async fn list(loc: &Location, recursive: bool) -> Result<Listing, Error> {
    let mut out = Listing::default();
    match loc {
        Location::Local(root) => list_local(root, root, recursive, &mut out)?,
        Location::Remote { op, path, label } => {
            let prefix = dir_prefix(path);
            // Where the service lists a whole tree itself (S3), one listing; elsewhere each folder is listed in
            // turn (OpenDAL's emulated recursive listing leaves out empty folders).
            // OpenDAL's Dropbox service names entries by their bare names, not their paths: each folder is walked
            // and its entries put under it here.
            let bare_names = op.info().scheme() == "dropbox";
            let native = recursive && op.info().capability().list_with_recursive && !bare_names;
            let mut folders = vec![prefix.clone()];
            while let Some(folder) = folders.pop() {
                let fail = |e| Error::backend(format!("cannot list {label}"), e);
                let mut lister = op.lister_with(&folder).recursive(native).await.map_err(fail)?;
                while let Some(entry) = lister.try_next().await.map_err(fail)? {
                    let joined = format!("{folder}{}", entry.path());
                    let full = if bare_names { joined.as_str() } else { entry.path() };
                    let Some(rel) = full.strip_prefix(prefix.as_str()) else { continue };
                    let is_dir = entry.metadata().mode() == EntryMode::DIR;
                    let rel = rel.trim_end_matches('/');
                    if rel.is_empty() || full == folder || is_partial(rel) {
                        continue; // the folder itself, or an unfinished upload of ours
                    }
                    if let Err(why) = local_relative(rel) {
                        out.refused.push(refuse(rel, &why));
                        continue;
                    }
                    let meta = entry.metadata();
                    let (size, modified, etag) = if is_dir || meta.last_modified().is_some() {
                        (
                            meta.content_length(),
                            meta.last_modified().map(SystemTime::from),
                            meta.etag().map(str::to_owned),
                        )
                    } else {
                        let m =
                            op.stat(full).await.map_err(|e| Error::backend(format!("cannot read {label}/{rel}"), e))?;
                        (m.content_length(), m.last_modified().map(SystemTime::from), m.etag().map(str::to_owned))
                    };
                    let etag = etag.filter(|_| !is_dir);
                    push(
                        &mut out,
                        Entry {
                            path: rel.to_owned(),
                            size: if is_dir { 0 } else { size },
                            modified,
                            is_dir,
                            etag,
                            version: None,
                            past: false,
                        },
                    )?;
                    if is_dir && recursive && !native {
                        folders.push(format!("{prefix}{rel}/"));
                    }
                }
            }
        }
    }
    out.entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Lists a folder of a versioned bucket as it was at `at`: for each object the newest version no later than
/// `at`, left out where that is a deletion or there is none. Hostile names are refused, as by [`list`], and so
/// are objects whose state then is unknown: changed since by a write that kept no version (versioning off or
/// suspended, version id `null`), so a mirror keeps its copy of them.
///
/// # Errors
/// The source keeps no versions, or cannot be listed; nothing was there at `at`.
pub async fn list_as_of(loc: &Location, at: SystemTime) -> Result<Listing, Error> {
    let Location::Remote { op, path, label } = loc else {
        return Err(Error::Unsupported(format!(
            "--as-of reads the past of a versioned S3 bucket; {} is a local folder (copy from one of its snapshots \
             instead, e.g. ZFS's .zfs/snapshot/NAME, a btrfs snapshot or Synology's #snapshot)",
            loc.label()
        )));
    };
    let cap = op.info().capability();
    if !(cap.list_with_versions && cap.list_with_deleted && cap.read_with_version) {
        return Err(Error::Unsupported(format!(
            "--as-of reads the past of a versioned S3 bucket; {label} ({}) keeps no versions this client can read",
            op.info().scheme()
        )));
    }
    let prefix = dir_prefix(path);
    let fail = |e| Error::backend(format!("cannot list the versions in {label}"), e);
    let mut lister = op.lister_with(&prefix).recursive(true).versions(true).deleted(true).await.map_err(fail)?;
    let mut names: BTreeMap<String, AsOf> = BTreeMap::new();
    let mut seen = 0usize;
    while let Some(entry) = lister.try_next().await.map_err(fail)? {
        seen += 1;
        if seen > MAX_ENTRIES {
            return Err(Error::Invalid(format!("more than {MAX_ENTRIES} versions: list a smaller folder")));
        }
        let meta = entry.metadata();
        let Some(rel) = entry.path().strip_prefix(prefix.as_str()) else { continue };
        if meta.mode() == EntryMode::DIR || rel.is_empty() || rel.ends_with('/') || is_partial(rel) {
            continue;
        }
        let Some(when) = meta.last_modified().map(SystemTime::from) else { continue };
        let version = meta.version().map(str::to_owned);
        let name = names.entry(rel.to_owned()).or_default();
        if when > at {
            // A later write that kept no version destroyed what was there at `at`.
            name.lost |= version.as_deref().is_none_or(|v| v == "null");
            continue;
        }
        // Newest first within a name, except that OpenDAL gives a page's versions before its deletions: of two at
        // the same second, the current one is the newer.
        let current = meta.is_current() == Some(true);
        let newer = match &name.newest {
            None => true,
            Some((e, ..)) => e.modified < Some(when) || (e.modified == Some(when) && current),
        };
        if newer {
            let mut e = Entry::file(rel.to_owned(), meta.content_length(), Some(when), meta.etag().map(str::to_owned));
            // The current object of a bucket without versioning (version `null`) is read as any object is.
            e.version = version.filter(|v| !(current && v == "null"));
            e.past = !current;
            name.newest = Some((e, meta.is_deleted()));
        }
    }
    let mut out = Listing::default();
    for (rel, name) in names {
        if name.lost {
            out.refused.push(Refused {
                raw: rel.clone(),
                name: rel.escape_debug().to_string(),
                reason: "it was changed since without keeping the older version (versioning off or suspended), so \
                         how it was then is unknown"
                    .into(),
            });
            continue;
        }
        let Some((entry, deleted)) = name.newest else { continue };
        if deleted {
            continue;
        }
        if let Err(why) = local_relative(&rel) {
            out.refused.push(refuse(&rel, &why));
            continue;
        }
        push(&mut out, entry)?;
    }
    if out.entries.is_empty() && out.refused.is_empty() {
        return Err(Error::Invalid(format!(
            "{label} held no files at that time (--as-of copies a folder: name the folder, not a file)"
        )));
    }
    Ok(out)
}

/// What the versions of one name say of it at a time.
#[derive(Default)]
struct AsOf {
    /// The newest version then, and whether it is a deletion.
    newest: Option<(Entry, bool)>,
    /// Overwritten since by a write that kept no version.
    lost: bool,
}

fn push(out: &mut Listing, e: Entry) -> Result<(), Error> {
    if out.entries.len() >= MAX_ENTRIES {
        return Err(Error::Invalid(format!("more than {MAX_ENTRIES} entries: list a smaller folder")));
    }
    out.entries.push(e);
    Ok(())
}

fn list_local(root: &Path, dir: &Path, recursive: bool, out: &mut Listing) -> Result<(), Error> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(format!("cannot list {}", dir.display()), e))?;
    for item in rd {
        let item = item.map_err(|e| Error::io(format!("cannot list {}", dir.display()), e))?;
        let path = item.path();
        let meta =
            std::fs::symlink_metadata(&path).map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        if meta.file_type().is_symlink() || !(meta.is_file() || meta.is_dir()) {
            continue; // symlinks and special files are not copied
        }
        let rel = path.strip_prefix(root).unwrap_or(&path);
        let Some(rel) = rel.to_str() else {
            let name = rel.display().to_string();
            out.refused.push(Refused { raw: name.clone(), name, reason: "it is not valid UTF-8".into() });
            continue;
        };
        let rel = rel.replace(std::path::MAIN_SEPARATOR, "/");
        if is_partial(&rel) {
            continue; // an unfinished download of ours
        }
        let size = if meta.is_dir() { 0 } else { meta.len() };
        let modified = meta.modified().ok();
        let is_dir = meta.is_dir();
        push(out, Entry { path: rel, size, modified, is_dir, etag: None, version: None, past: false })?;
        if meta.is_dir() && recursive {
            list_local(root, &path, recursive, out)?;
        }
    }
    Ok(())
}

/// Options of a copy, sync or move.
#[derive(Clone, Default)]
pub struct Options {
    /// Also delete files in the destination that the source does not have (sync `--delete`).
    pub delete: bool,
    /// Plan only.
    pub dry_run: bool,
    /// Delete each source file once it is at the destination (move).
    pub remove_source: bool,
    /// Files transferred at once.
    pub concurrency: usize,
    /// Called with the bytes transferred as they go.
    pub progress: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    /// Caps on bandwidth and request rate (a sync pair's); the same pace is given to the connections' operators
    /// through [`crate::Limits`], which pace each HTTP request.
    pub pace: Option<Pace>,
    /// Compare files of the same size by content hash where both sides can give one (local files are read for
    /// it), whatever their times; elsewhere by size and time.
    pub checksum: bool,
    /// Copy the source as it was at this time: each object's version current then (a versioned S3 or R2
    /// bucket), leaving out what did not exist or was deleted then.
    pub as_of: Option<SystemTime>,
    /// Where uploads that may be taken up by a later run keep their state (S3 multipart uploads; see
    /// `s3resume.rs`); none: such uploads start afresh each run.
    pub state_dir: Option<PathBuf>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("delete", &self.delete)
            .field("dry_run", &self.dry_run)
            .field("remove_source", &self.remove_source)
            .field("concurrency", &self.concurrency)
            .field("pace", &self.pace.as_ref().map(Pace::caps))
            .field("checksum", &self.checksum)
            .field("as_of", &self.as_of)
            .finish_non_exhaustive()
    }
}

/// A failed file.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// Its path relative to the source.
    pub path: String,
    /// What went wrong.
    pub error: String,
}

/// What a copy, sync or move did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Files copied.
    pub copied: Vec<String>,
    /// Files already the same at the destination.
    pub unchanged: usize,
    /// Destination files deleted (sync `--delete`).
    pub deleted: Vec<String>,
    /// Bytes copied.
    pub bytes: u64,
    /// Files whose copy carried on from where an earlier, cut-off copy of the same source stopped.
    pub resumed: usize,
    /// Of `bytes`, those already at the destination from such copies, not read again.
    pub resumed_bytes: u64,
    /// Hostile names skipped.
    pub refused: Vec<Refused>,
    /// Files that failed.
    pub errors: Vec<Failure>,
    /// With `checksum` or `as_of`: files of the same size compared by content hash.
    pub hashed: usize,
    /// With `checksum` or `as_of`: files of the same size that could not be (no hash on one side): compared by
    /// size and time (with `as_of`, the very same time).
    pub unhashed: usize,
    /// Whether nothing was changed (plan only).
    pub dry_run: bool,
}

/// Whether a destination file already matches the source: same size, and not older than the source within
/// the destination's time precision (a download is given the source's time; an upload is newer than it).
/// Either time unknown: size alone.
fn same(src: &Entry, dst: &Entry, window: Duration) -> bool {
    if src.size != dst.size || dst.is_dir {
        return false;
    }
    match (src.modified, dst.modified) {
        (Some(s), Some(d)) => d + window >= s,
        _ => true,
    }
}

/// How precise a location's modification times are: FTP listings give minutes.
fn modify_window(loc: &Location) -> Duration {
    match loc {
        Location::Remote { op, .. } if op.info().scheme() == "ftp" => Duration::from_secs(61),
        _ => Duration::from_secs(1),
    }
}

/// A content hash one side can give.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Digest {
    /// SHA-256 of a local file.
    Sha256([u8; 32]),
    /// S3's entity tag: the content's MD5 (`md5`), or that of its parts' MD5s with their count (`md5-N`).
    S3Etag(String),
}

/// An S3 entity tag, lower case and without its quotes, if it is an MD5 one (single or multipart).
fn s3_etag(loc: &Location, entry: &Entry) -> Option<String> {
    let Location::Remote { op, .. } = loc else { return None };
    if op.info().scheme() != "s3" {
        return None;
    }
    let tag = entry.etag.as_deref()?.trim_matches('"').to_ascii_lowercase();
    let (md5, parts) = tag.split_once('-').map_or((tag.as_str(), None), |(m, n)| (m, Some(n)));
    let hex = md5.len() == 32 && md5.bytes().all(|b| b.is_ascii_hexdigit());
    let parts_ok = parts.is_none_or(|n| n.parse::<u32>().is_ok_and(|n| n > 0));
    (hex && parts_ok).then_some(tag)
}

/// Whether two files of the same size hold the same content, by a hash both sides give: `None` when there is
/// none (a remote without hashes, an S3 object whose tag is not an MD5, or a multipart tag of another part
/// size than this client's).
///
/// # Errors
/// A local file cannot be read.
async fn same_content(from: &Location, src: &Entry, to: &Location, dst: &Entry) -> Result<Option<bool>, Error> {
    let (src_tag, dst_tag) = (s3_etag(from, src), s3_etag(to, dst));
    Ok(match (from, to) {
        (Location::Local(a), Location::Local(b)) => {
            let (a, b) = (local_digest(a, src.size, None).await?, local_digest(b, dst.size, None).await?);
            a.zip(b).map(|(a, b)| a == b)
        }
        (Location::Local(p), Location::Remote { .. }) => match dst_tag {
            Some(tag) => local_digest(p, src.size, Some(&tag)).await?.map(|d| d == Digest::S3Etag(tag)),
            None => None,
        },
        (Location::Remote { .. }, Location::Local(p)) => match src_tag {
            Some(tag) => local_digest(p, dst.size, Some(&tag)).await?.map(|d| d == Digest::S3Etag(tag)),
            None => None,
        },
        // Two S3 objects: equal tags mean equal content; unequal multipart tags may be other part sizes.
        (Location::Remote { .. }, Location::Remote { .. }) => match (src_tag, dst_tag) {
            (Some(a), Some(b)) if a == b => Some(true),
            (Some(a), Some(b)) if !a.contains('-') && !b.contains('-') => Some(false),
            _ => None,
        },
    })
}

/// A local file's digest: SHA-256, or the S3 tag it would have for `like` (a single-part MD5, or a multipart
/// tag of the same part count); `None` when this client's part size does not give that count.
async fn local_digest(path: &Path, size: u64, like: Option<&str>) -> Result<Option<Digest>, Error> {
    let parts = match like.and_then(|t| t.split_once('-')) {
        Some((_, n)) => match n.parse::<u64>() {
            Ok(n) if n > 0 && size.div_ceil(CHUNK as u64) == n => Some(n),
            _ => return Ok(None),
        },
        None => None,
    };
    let s3 = like.is_some();
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<Option<Digest>, Error> {
        use md5::Digest as _;
        use std::io::Read;
        let fail = |e| Error::io(format!("cannot read {}", path.display()), e);
        let mut file = std::fs::File::open(&path).map_err(fail)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        let (mut whole, mut part, mut part_len, mut part_sums) = (md5::Md5::new(), md5::Md5::new(), 0, Vec::new());
        loop {
            let n = file.read(&mut buf).map_err(fail)?;
            if n == 0 {
                break;
            }
            if !s3 {
                sha.update(&buf[..n]);
                continue;
            }
            whole.update(&buf[..n]);
            let mut at = 0;
            while at < n {
                let take = (CHUNK - part_len).min(n - at);
                part.update(&buf[at..at + take]);
                part_len += take;
                at += take;
                if part_len == CHUNK {
                    part_sums.extend_from_slice(&std::mem::take(&mut part).finalize());
                    part_len = 0;
                }
            }
        }
        if !s3 {
            let mut out = [0u8; 32];
            out.copy_from_slice(sha.finish().as_ref());
            return Ok(Some(Digest::Sha256(out)));
        }
        Ok(Some(Digest::S3Etag(match parts {
            None => hex::encode(whole.finalize()),
            Some(n) => {
                if part_len > 0 {
                    part_sums.extend_from_slice(&part.finalize());
                }
                format!("{}-{n}", hex::encode(md5::Md5::digest(&part_sums)))
            }
        })))
    })
    .await
    .map_err(|e| Error::io("hashing a file", std::io::Error::other(e)))?
}

/// Copies SRC to DST: a file to a file (or into DST when DST is a folder), a folder's contents into DST.
/// Files the destination already has (same size, not older) are skipped. With `opts.delete`, destination files
/// the source lacks are deleted afterwards (a one-way mirror). `before` is told the bytes to copy once both
/// sides are listed.
///
/// # Errors
/// Listing fails on either side; per-file failures are in [`Summary::errors`] instead.
pub async fn copy(src: &Location, dst: &Location, opts: &Options, before: impl FnOnce(u64)) -> Result<Summary, Error> {
    if opts.remove_source || opts.delete {
        apart(src, dst)?;
    }
    let mut summary = Summary { dry_run: opts.dry_run, ..Summary::default() };
    let src_shape = match opts.as_of {
        Some(_) if opts.remove_source => {
            return Err(Error::Invalid("--as-of copies the past; it cannot move (delete) it".into()));
        }
        // The past is listed below, as a folder.
        Some(_) => Shape::Dir,
        None => shape(src).await?,
    };
    let (src_root, dst_root, items, dst_listing) = match src_shape {
        Shape::Missing => return Err(Error::Invalid(format!("{} does not exist", src.label()))),
        Shape::File(size, modified, etag) => {
            let (src_parent, name) = split_file(src)?;
            // Into DST when it is a folder; else DST is the file's new name.
            let (dst_root, dst_name, existing) = match shape(dst).await? {
                Shape::Dir => {
                    let existing = shape(&child(dst, &name)).await?;
                    (dst.clone(), name.clone(), existing)
                }
                existing => {
                    let (parent, dst_name) = split_file(dst)?;
                    (parent, dst_name, existing)
                }
            };
            let existing = match existing {
                Shape::File(size, modified, etag) => vec![Entry::file(dst_name.clone(), size, modified, etag)],
                Shape::Dir | Shape::Missing => Vec::new(),
            };
            let entry = Entry::file(name, size, modified, etag);
            (src_parent, dst_root, vec![(entry, dst_name)], Listing { entries: existing, refused: Vec::new() })
        }
        Shape::Dir => {
            let mut listing = match opts.as_of {
                Some(t) => list_as_of(src, t).await?,
                None => list(src, true).await?,
            };
            if case_insensitive(dst) {
                refuse_case_twins(&mut listing, dst);
            }
            summary.refused = listing.refused;
            let dst_listing = match shape(dst).await? {
                Shape::Dir => list(dst, true).await?,
                _ => Listing::default(),
            };
            let items = listing.entries.into_iter().filter(|e| !e.is_dir).map(|e| {
                let p = e.path.clone();
                (e, p)
            });
            (src.clone(), dst.clone(), items.collect(), dst_listing)
        }
    };
    // On a destination that does not tell letter case apart, `a.txt` there is the source's `A.txt`: matched
    // (and kept by a mirror) as the same file.
    let fold = case_insensitive(&dst_root);
    let key = |p: &str| if fold { p.to_lowercase() } else { p.to_owned() };
    let existing: BTreeMap<String, &Entry> =
        dst_listing.entries.iter().filter(|e| !e.is_dir).map(|e| (key(&e.path), e)).collect();
    let window = modify_window(&dst_root);
    let mut todo = Vec::new();
    let mut keep = std::collections::BTreeSet::new();
    // A name the source listed but that was refused still counts as there: its copy at the destination stays.
    keep.extend(summary.refused.iter().map(|r| key(&r.raw)));
    let sources = items.len();
    let mut hash_these = Vec::new();
    for (entry, to) in items {
        keep.insert(key(&to));
        match existing.get(&key(&to)) {
            // A move always copies: "same size, not older" is not proof enough to delete the original.
            Some(_) if opts.remove_source => todo.push((entry, to)),
            // A version from the past is older than any copy of it made since: its time cannot tell whether the
            // destination has it, so it is compared by content, or by the very same time.
            Some(d) if (opts.checksum || entry.past) && !d.is_dir && d.size == entry.size => {
                hash_these.push((entry, to, (*d).clone()));
            }
            Some(d) if same(&entry, d, window) => summary.unchanged += 1,
            _ => todo.push((entry, to)),
        }
    }
    // Same-size files by content, a few at a time (each may read a whole local file).
    let verdicts: Vec<_> = futures_util::stream::iter(hash_these.into_iter().map(|(entry, to, d)| {
        let (src_root, dst_root) = (&src_root, &dst_root);
        async move {
            let verdict = same_content(&child(src_root, &entry.path), &entry, &child(dst_root, &to), &d).await;
            (entry, to, d, verdict)
        }
    }))
    .buffer_unordered(opts.concurrency.max(1))
    .collect()
    .await;
    for (entry, to, d, verdict) in verdicts {
        let verdict = match verdict {
            Ok(v) => v,
            // A file gone or unreadable since it was listed fails alone, as its copy would.
            Err(e) => {
                summary.errors.push(Failure { path: entry.path, error: e.to_string() });
                continue;
            }
        };
        match verdict {
            Some(true) => {
                summary.hashed += 1;
                summary.unchanged += 1;
            }
            Some(false) => {
                summary.hashed += 1;
                todo.push((entry, to));
            }
            None => {
                summary.unhashed += 1;
                let same_time = |(s, d): (SystemTime, SystemTime)| {
                    s.duration_since(d).or_else(|_| d.duration_since(s)).is_ok_and(|gap| gap <= window)
                };
                let kept = if entry.past {
                    entry.modified.zip(d.modified).is_some_and(same_time)
                } else {
                    same(&entry, &d, window)
                };
                if kept {
                    summary.unchanged += 1;
                } else {
                    todo.push((entry, to));
                }
            }
        }
    }
    todo.sort_by(|a, b| a.1.cmp(&b.1));
    let delete: Vec<String> = if opts.delete {
        existing.iter().filter(|(k, _)| !keep.contains(*k)).map(|(_, e)| e.path.clone()).collect()
    } else {
        Vec::new()
    };
    if sources == 0 && summary.refused.is_empty() && !delete.is_empty() {
        return Err(Error::Invalid(format!(
            "{} has no files, so a mirror would delete all {} file(s) in {}; check the source path (nothing was \
             changed)",
            src.label(),
            delete.len(),
            dst.label()
        )));
    }
    before(todo.iter().map(|(e, _)| e.size).sum());
    if opts.dry_run {
        summary.copied = todo.into_iter().map(|(_, to)| to).collect();
        summary.deleted = delete;
        return Ok(summary);
    }
    // FTP and SFTP requests are not seen one by one: there, each file copied or deleted is paced as one.
    let per_file = opts.pace.as_ref().filter(|_| [src, dst].iter().any(|l| paced_per_file(l)));
    let results: Vec<_> = futures_util::stream::iter(todo.into_iter().map(|(entry, to)| {
        let (src_root, dst_root) = (&src_root, &dst_root);
        async move {
            let from = child(src_root, &entry.path);
            let epoch = match per_file {
                Some(pace) => pace.request().await,
                None => 0,
            };
            let result = async {
                if let Location::Local(root) = dst_root {
                    no_symlink_on_the_way(root, &to)?;
                }
                let dst = child(dst_root, &to);
                let mut attempt = 0;
                let resumed = loop {
                    match transfer(&from, &entry, &dst, opts).await {
                        // An upload cannot be taken up where it broke off (a streamed request, a session gone):
                        // one that failed for a reason that may pass is sent again whole, after a pause.
                        Err(e)
                            if attempt < FILE_RETRIES && matches!(dst, Location::Remote { .. }) && worth_again(&e) =>
                        {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_secs(2 << (2 * (attempt - 1)))).await;
                        }
                        other => break other?,
                    }
                };
                if opts.remove_source {
                    remove(&from).await?;
                }
                Ok::<_, Error>(resumed)
            }
            .await;
            // As in the HTTP transport: a push-back slows the pace down, a success lets it recover.
            match (per_file, &result) {
                (Some(pace), Ok(_)) => pace.succeeded(),
                (Some(pace), Err(e)) if e.is_retryable() => pace.pushed_back(epoch, None),
                _ => {}
            }
            (entry, to, result)
        }
    }))
    .buffer_unordered(opts.concurrency.max(1))
    .collect()
    .await;
    for (entry, to, result) in results {
        match result {
            Ok(resumed) => {
                summary.bytes += entry.size;
                if resumed > 0 {
                    summary.resumed += 1;
                    summary.resumed_bytes += resumed;
                }
                summary.copied.push(to);
            }
            Err(e) => summary.errors.push(Failure { path: entry.path, error: e.to_string() }),
        }
    }
    summary.copied.sort();
    if summary.errors.is_empty() {
        for path in delete {
            if let Some(pace) = per_file {
                pace.request().await;
            }
            match remove(&child(&dst_root, &path)).await {
                Ok(()) => summary.deleted.push(path),
                Err(e) => summary.errors.push(Failure { path, error: e.to_string() }),
            }
        }
    } else if !delete.is_empty() {
        summary.errors.push(Failure {
            path: String::new(),
            error: format!("{} destination file(s) were not deleted because some copies failed", delete.len()),
        });
    }
    Ok(summary)
}

/// Times a failed upload is sent again whole (after 2 s, then 8 s).
const FILE_RETRIES: u32 = 2;

/// Whether a failed transfer may succeed if tried again: the remote was busy, slow or unreachable, even after
/// the retries of single requests.
fn worth_again(e: &Error) -> bool {
    crate::is_send_again(e)
        || matches!(e, Error::Backend { source, .. } if source.kind() == opendal::ErrorKind::RateLimited)
}

/// Whether a location's requests are paced per file (FTP, SFTP) rather than per HTTP request.
fn paced_per_file(loc: &Location) -> bool {
    matches!(loc, Location::Remote { op, .. } if matches!(op.info().scheme(), "ftp" | "sftp"))
}

/// Refuses a move or a mirror whose source and destination overlap (one is the other or inside it): a move
/// would delete what it just "copied", a mirror what it is copying from.
fn apart(src: &Location, dst: &Location) -> Result<(), Error> {
    let overlap = match (src, dst) {
        (Location::Local(a), Location::Local(b)) => {
            let (a, b) = (resolved(a), resolved(b));
            a.starts_with(&b) || b.starts_with(&a)
        }
        (Location::Remote { label: a, .. }, Location::Remote { label: b, .. }) => {
            let split = |l: &str| {
                let (name, path) = l.split_once(':').unwrap_or((l, ""));
                (
                    name.to_owned(),
                    path.split('/').filter(|p| !p.is_empty() && *p != ".").map(str::to_owned).collect::<Vec<_>>(),
                )
            };
            let ((na, pa), (nb, pb)) = (split(a), split(b));
            na == nb && (pa.starts_with(&pb) || pb.starts_with(&pa))
        }
        _ => false,
    };
    if overlap {
        return Err(Error::Invalid(format!(
            "{} and {} overlap (one is the other or inside it); move or mirror to a place outside the source",
            src.label(),
            dst.label()
        )));
    }
    Ok(())
}

/// `p` made absolute with links resolved, as far as it exists (a destination may not exist yet).
fn resolved(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |acc: PathBuf, part| acc.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return abs,
        }
    }
}

/// Refuses to write `rel` under `root` when a folder on the way (or the file itself) is a symbolic link: it
/// could lead outside the destination.
fn no_symlink_on_the_way(root: &Path, rel: &str) -> Result<(), Error> {
    let mut at = root.to_path_buf();
    for part in rel.split('/') {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::Invalid(format!(
                    "{} is a symbolic link; nothing is written through links in a destination",
                    at.display()
                )));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(())
}

/// The folder holding a file location, and the file's name.
fn split_file(loc: &Location) -> Result<(Location, String), Error> {
    match loc {
        Location::Local(p) => {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| Error::Invalid(format!("{} has no usable file name", p.display())))?;
            let parent = p.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            Ok((Location::Local(parent.to_path_buf()), name.to_owned()))
        }
        Location::Remote { op, path, label } => {
            let trimmed = path.trim_matches('/');
            let (parent, name) = trimmed.rsplit_once('/').unwrap_or(("", trimmed));
            if name.is_empty() {
                return Err(Error::Invalid(format!("{label} names no file")));
            }
            Ok((Location::Remote { op: op.clone(), path: parent.to_owned(), label: label.clone() }, name.to_owned()))
        }
    }
}

/// `rel` under a folder location. `rel` has been checked by [`local_relative`].
fn child(dir: &Location, rel: &str) -> Location {
    match dir {
        Location::Local(p) => {
            let mut out = p.clone();
            for part in rel.split('/') {
                out.push(part);
            }
            Location::Local(out)
        }
        Location::Remote { op, path, label } => Location::Remote {
            op: op.clone(),
            path: format!("{}{rel}", dir_prefix(path)),
            label: format!("{}/{rel}", label.trim_end_matches('/')),
        },
    }
}

/// Deletes one file.
///
/// # Errors
/// The file cannot be deleted.
pub async fn remove(loc: &Location) -> Result<(), Error> {
    match loc {
        Location::Local(p) => {
            tokio::fs::remove_file(p).await.map_err(|e| Error::io(format!("cannot delete {}", p.display()), e))
        }
        Location::Remote { op, path, label } => op
            .delete(path.trim_start_matches('/'))
            .await
            .map_err(|e| Error::backend(format!("cannot delete {label}"), e)),
    }
}

/// Deletes a file, or with `recursive` a folder and everything in it. Returns how many files went.
///
/// # Errors
/// Nothing there, a folder without `recursive`, or the remote refused.
pub async fn delete(loc: &Location, recursive: bool) -> Result<usize, Error> {
    match shape(loc).await? {
        Shape::Missing => Err(Error::Invalid(format!("{} does not exist", loc.label()))),
        Shape::File(..) => remove(loc).await.map(|()| 1),
        Shape::Dir if !recursive => Err(Error::Invalid(format!(
            "{} is a folder; pass --recursive to delete it and everything in it",
            loc.label()
        ))),
        Shape::Dir => {
            let listing = list(loc, true).await?;
            let files = listing.entries.iter().filter(|e| !e.is_dir).count();
            match loc {
                Location::Local(p) => tokio::fs::remove_dir_all(p)
                    .await
                    .map_err(|e| Error::io(format!("cannot delete {}", p.display()), e))?,
                Location::Remote { op, path, label } => {
                    // Files first, then folders from the deepest up, then the folder itself: services differ in
                    // what a recursive delete removes (FTP leaves folders behind).
                    let prefix = dir_prefix(path);
                    let fail = |e| Error::backend(format!("cannot delete {label}"), e);
                    for e in listing.entries.iter().filter(|e| !e.is_dir) {
                        op.delete(&format!("{prefix}{}", e.path)).await.map_err(fail)?;
                    }
                    let mut dirs: Vec<&Entry> = listing.entries.iter().filter(|e| e.is_dir).collect();
                    dirs.sort_by_key(|e| std::cmp::Reverse(e.path.matches('/').count()));
                    for d in dirs {
                        op.delete(&format!("{prefix}{}/", d.path)).await.map_err(fail)?;
                    }
                    if !prefix.is_empty() {
                        op.delete(&prefix).await.map_err(fail)?;
                    }
                }
            }
            Ok(files)
        }
    }
}

/// Reads `from` from byte `offset` on, as a stream of byte chunks. `if_match`: an entity tag the object must
/// still have (a download resumed from S3), else the remote refuses.
async fn source(
    from: &Location,
    version: Option<&str>,
    offset: u64,
    if_match: Option<&str>,
) -> Result<futures_util::stream::BoxStream<'static, Result<Bytes, Error>>, Error> {
    match from {
        Location::Local(p) => {
            let mut file =
                tokio::fs::File::open(p).await.map_err(|e| Error::io(format!("cannot open {}", p.display()), e))?;
            if offset > 0 {
                use tokio::io::AsyncSeekExt;
                file.seek(std::io::SeekFrom::Start(offset))
                    .await
                    .map_err(|e| Error::io(format!("cannot read {}", p.display()), e))?;
            }
            let shown = p.display().to_string();
            let stream = tokio_util::io::ReaderStream::with_capacity(file, CHUNK);
            Ok(stream.map_err(move |e| Error::io(format!("cannot read {shown}"), e)).boxed())
        }
        Location::Remote { op, path, label } => {
            let label = label.clone();
            // File Station is read in one stream: a NAS that ignores byte ranges would otherwise send the file
            // from its start again for every piece. So is FTP: each piece would be a transfer of its own, left
            // unfinished at the piece's end.
            let mut read = op.reader_with(path);
            if !matches!(op.info().scheme(), "synology" | "ftp") {
                read = read.chunk(CHUNK).concurrent(2);
            }
            if let Some(v) = version {
                read = read.version(v);
            }
            if let Some(tag) = if_match {
                read = read.if_match(tag);
            }
            let reader = read.await.map_err(|e| Error::backend(format!("cannot read {label}"), e))?;
            let stream = reader
                .into_bytes_stream(offset..)
                .await
                .map_err(|e| Error::backend(format!("cannot read {label}"), e))?;
            Ok(stream.map_err(move |e| Error::io(format!("cannot read {label}"), e)).boxed())
        }
    }
}

/// `stream` under the bandwidth cap of `opts`, if any: data goes in small pieces, each paid for before it goes.
fn paced(
    mut stream: futures_util::stream::BoxStream<'static, Result<Bytes, Error>>,
    opts: &Options,
) -> futures_util::stream::BoxStream<'static, Result<Bytes, Error>> {
    if let (Some(pace), Some(piece)) = (&opts.pace, opts.pace.as_ref().and_then(Pace::piece)) {
        let pace = pace.clone();
        stream = stream
            .flat_map(move |chunk| {
                let pieces: Vec<Result<Bytes, Error>> = match chunk {
                    Ok(c) => (0..c.len()).step_by(piece).map(|at| Ok(c.slice(at..c.len().min(at + piece)))).collect(),
                    Err(e) => vec![Err(e)],
                };
                futures_util::stream::iter(pieces)
            })
            .then(move |chunk| {
                let pace = pace.clone();
                async move {
                    if let Ok(c) = &chunk {
                        pace.bytes(c.len() as u64).await;
                    }
                    chunk
                }
            })
            .boxed();
    }
    stream
}

/// Whether a location's names are case-insensitive (Dropbox and OneDrive keep the case they are given but take
/// `A.txt` and `a.txt` for one file).
fn case_insensitive(loc: &Location) -> bool {
    matches!(loc, Location::Remote { op, .. } if matches!(op.info().scheme(), "dropbox" | "onedrive"))
}

/// Source files whose paths differ only in letter case would be one file at a case-insensitive destination,
/// each copy replacing the other: all but the first (in path order) are refused, with the reason.
fn refuse_case_twins(listing: &mut Listing, dst: &Location) {
    let scheme = match dst {
        Location::Remote { op, .. } => op.info().scheme().to_string(),
        Location::Local(_) => String::new(),
    };
    let mut first: BTreeMap<String, String> = BTreeMap::new();
    let mut refused = Vec::new();
    listing.entries.retain(|e| {
        if e.is_dir {
            return true;
        }
        match first.get(&e.path.to_lowercase()) {
            Some(kept) => {
                refused.push(Refused {
                    raw: e.path.clone(),
                    name: e.path.escape_debug().to_string(),
                    reason: format!(
                        "differs from {} only in letter case, which {scheme} does not tell apart; rename one of them",
                        kept.escape_debug()
                    ),
                });
                false
            }
            None => {
                first.insert(e.path.to_lowercase(), e.path.clone());
                true
            }
        }
    });
    listing.refused.extend(refused);
}

/// Whether the remote makes an upload visible only once it is complete (one request, or a session committed
/// at its last piece, or moved into place whole): S3, Dropbox, OneDrive, pCloud, Synology.
fn commits_whole_uploads(op: &opendal::Operator) -> bool {
    // File Station uploads go to a staging folder and are moved into place (synology.rs).
    matches!(op.info().scheme(), "s3" | "dropbox" | "onedrive" | "pcloud" | "synology")
}

/// Copies one file, never leaving a partial file under the final name. Returns the bytes that were already at
/// the destination from an earlier copy that was cut off, and not read again.
async fn transfer(from: &Location, entry: &Entry, to: &Location, opts: &Options) -> Result<u64, Error> {
    let (size, version) = (entry.size, entry.version.as_deref());
    let tick = |n: usize| {
        if let Some(p) = &opts.progress {
            p(n as u64);
        }
    };
    let mut sent = 0u64;
    match to {
        Location::Local(path) => download(from, entry, path, opts).await,
        Location::Remote { op, path, label } => {
            // Where an upload becomes visible only once it is whole, the final name is written directly: Dropbox's
            // move refuses to replace a file (and OpenDAL takes a missing source as moved), so a temporary name
            // would only add a failure.
            let mut stream = paced(source(from, version, 0, None).await?, opts);
            let rename = op.info().capability().rename && !commits_whole_uploads(op);
            let target = if rename {
                let dir = path.rsplit_once('/').map_or(String::new(), |(d, _)| format!("{d}/"));
                format!("{dir}{}", partial_name())
            } else {
                path.clone()
            };
            let cap = op.info().capability();
            let written: Result<u64, Error> = if size == 0 {
                if stream.next().await.transpose()?.is_some_and(|c| !c.is_empty()) {
                    check_size(1, 0, from)?;
                }
                // The one-request uploads of Dropbox and OneDrive take an empty body, though OpenDAL does not
                // claim it.
                if !cap.write_can_empty && !matches!(op.info().scheme(), "dropbox" | "onedrive") {
                    return Err(Error::Unsupported(format!(
                        "{label}: this kind of remote ({}) cannot be given an empty file by this version; it was skipped",
                        op.info().scheme()
                    )));
                }
                op.write(&target, Vec::<u8>::new())
                    .await
                    .map(|_| 0)
                    .map_err(|e| Error::backend(format!("cannot write {label}"), e))
            } else {
                // Every remote takes a file in pieces. Parts in parallel only where they are separate requests (S3
                // multipart, through OpenDAL's writer or a resumable upload's); elsewhere (FTP, SFTP, upload
                // sessions, streamed requests) one after another.
                let parallel = if op.info().scheme() == "s3" { 2 } else { 1 };
                let mut writer = op.writer_with(&target).chunk(CHUNK).concurrent(parallel);
                // A WebDAV, pCloud or File Station upload is one streamed request, a OneDrive one a session of
                // fragments: all are told the length to send (streamed.rs, onedrive.rs). An S3 or Dropbox upload
                // of more than a piece is one a later run may take up, told where to keep its state (s3resume.rs,
                // dropbox.rs).
                let length = (crate::LENGTH_KEY.to_owned(), size.to_string());
                let scheme = op.info().scheme();
                if matches!(scheme, "webdav" | "onedrive" | "pcloud" | "synology") {
                    writer = writer.user_metadata([length]);
                } else if (scheme == "dropbox" && size > CHUNK as u64
                    || scheme == "s3" && crate::s3resume::resumable(&op.info().name(), size))
                    && let Some(dir) = opts.state_dir.as_ref().and_then(|d| d.to_str())
                {
                    writer = writer.user_metadata([length, (crate::upstate::STATE_KEY.to_owned(), dir.to_owned())]);
                }
                let mut writer = writer.await.map_err(|e| Error::backend(format!("cannot write {label}"), e))?;
                let written = async {
                    while let Some(chunk) = stream.next().await {
                        let chunk = chunk?;
                        let n = chunk.len();
                        sent += n as u64;
                        // A file that grew while read fails before a byte past its size is sent.
                        if sent > size {
                            check_size(sent, size, from)?;
                        }
                        writer.write(chunk).await.map_err(|e| Error::backend(format!("cannot write {label}"), e))?;
                        tick(n);
                    }
                    check_size(sent, size, from)?;
                    let done = writer.close().await.map_err(|e| Error::backend(format!("cannot write {label}"), e))?;
                    // Bytes an earlier run had already sent (s3resume.rs).
                    Ok(done
                        .user_metadata()
                        .and_then(|m| m.get(crate::upstate::REUSED_KEY))
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0))
                }
                .await;
                if written.is_err() {
                    let _ = writer.abort().await;
                }
                // The writer holds an operation permit: let it go before the rename asks for one.
                written
            };
            drop(stream);
            // What arrived is checked before the file gets its final name. Without a rename (S3 and the other
            // services that commit whole uploads, where an unfinished upload never replaces the file) a failure
            // leaves the previous file alone; a file found short at its final name there may be someone else's
            // newer one, so it is reported, not deleted.
            let removed = rename || !commits_whole_uploads(op);
            let mut short = false;
            let mut reused = 0;
            let checked = match written {
                Ok(n) => match op.stat(&target).await {
                    Ok(m) if m.content_length() == size => {
                        reused = n;
                        Ok(())
                    }
                    Ok(m) => {
                        short = true;
                        let fate = if removed { "the short copy was removed" } else { "it was left as it is" };
                        Err(Error::Invalid(format!(
                            "{label} held {} bytes after the upload instead of {size}; {fate}, run the copy again",
                            m.content_length()
                        )))
                    }
                    Err(e) => Err(Error::backend(format!("cannot check {label}"), e)),
                },
                Err(e) => Err(e),
            };
            let result = match checked {
                Ok(()) if rename => {
                    op.rename(&target, path).await.map_err(|e| Error::backend(format!("cannot finish {label}"), e))
                }
                other => other,
            };
            if result.is_err() && (rename || (short && removed)) {
                let _ = op.delete(&target).await;
            }
            result.map(|()| reused)
        }
    }
}

/// How a download into a partial file went wrong.
enum Cut {
    /// Reading the source failed after `got` bytes of this attempt: what arrived is worth keeping.
    Source(Error, u64),
    /// The source did not send again the bytes the partial file ends with: it is not the one that file was
    /// copied from (or that file's end was lost), so it starts over.
    Stale,
    /// Anything else (the local disk, a size that does not add up): the partial file is of no use.
    Other(Error),
}

/// Whether a resumed read failed because the source cannot be read from where the partial file ends (it
/// changed, or the remote takes no byte ranges), rather than because it cannot be reached now.
fn cannot_resume(e: &Error) -> bool {
    use opendal::ErrorKind as K;
    let kind = match e {
        Error::Backend { source, .. } => Some(source.kind()),
        Error::Io { source, .. } => source.get_ref().and_then(|s| s.downcast_ref::<opendal::Error>()).map(|e| e.kind()),
        _ => None,
    };
    matches!(kind, Some(K::ConditionNotMatch | K::RangeNotSatisfied | K::Unsupported))
}

/// Writes `from`'s bytes from `offset` on into `file` (positioned there), checking that they add up to the
/// listed size. `tail`, what the file ends with, is read again first and must match.
#[allow(clippy::too_many_arguments)]
async fn fill(
    file: &mut tokio::fs::File,
    from: &Location,
    entry: &Entry,
    offset: u64,
    tail: &[u8],
    if_match: Option<&str>,
    path: &Path,
    opts: &Options,
) -> Result<(), Cut> {
    let size = entry.size;
    let tick = |n: u64| {
        if let Some(p) = &opts.progress {
            p(n);
        }
    };
    let mut again = &tail[..tail.len().min(usize::try_from(offset).unwrap_or(usize::MAX))];
    if offset == size && again.is_empty() {
        return Ok(());
    }
    let start = offset - again.len() as u64;
    let mut got = 0u64;
    let mut stream = match source(from, entry.version.as_deref(), start, if_match).await {
        Ok(s) => paced(s, opts),
        Err(e) => return Err(Cut::Source(e, 0)),
    };
    // The bytes already there count once the source has confirmed them (the tail read again matched).
    let mut confirmed = again.is_empty();
    if confirmed && offset > 0 {
        tick(offset);
    }
    while let Some(chunk) = stream.next().await {
        let mut chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                // What arrived is kept for the next run: make sure it is written.
                let _ = file.flush().await;
                return Err(Cut::Source(e, got));
            }
        };
        if !again.is_empty() {
            let n = again.len().min(chunk.len());
            if chunk[..n] != again[..n] {
                return Err(Cut::Stale);
            }
            again = &again[n..];
            if again.is_empty() && !confirmed {
                confirmed = true;
                tick(offset);
            }
            chunk = chunk.slice(n..);
            if chunk.is_empty() {
                continue;
            }
        }
        got += chunk.len() as u64;
        if offset + got > size {
            return Err(Cut::Other(size_changed(offset + got, size, from)));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| Cut::Other(Error::io(format!("cannot write {}", path.display()), e)))?;
        tick(chunk.len() as u64);
    }
    if !again.is_empty() {
        return Err(Cut::Stale);
    }
    check_size(offset + got, size, from).map_err(Cut::Other)
}

/// Copies one file into a local folder: under a partial name, resumed from what an earlier, cut-off copy of
/// the same source left there (see [`crate::partial`]), and renamed into place once complete.
async fn download(from: &Location, entry: &Entry, path: &Path, opts: &Options) -> Result<u64, Error> {
    let size = entry.size;
    let parent = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    tokio::fs::create_dir_all(&parent)
        .await
        .map_err(|e| Error::io(format!("cannot create {}", parent.display()), e))?;
    let final_name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
    // S3's entity tags change with the content: a resumed read asks for the same one.
    let tag = match from {
        Location::Remote { op, .. } if op.info().scheme() == "s3" => entry.etag.clone(),
        _ => None,
    };
    let id = partial::Identity {
        source: match from {
            Location::Local(p) => std::path::absolute(p).unwrap_or_else(|_| p.clone()).display().to_string(),
            Location::Remote { label, .. } => label.clone(),
        },
        size,
        modified: entry.modified,
        tag: tag.clone(),
        version: entry.version.clone(),
    };
    let slot = {
        let (dir, name) = (parent.clone(), final_name.clone());
        tokio::task::spawn_blocking(move || partial::open(&dir, &name, &id))
            .await
            .map_err(|e| Error::io("opening a partial file", std::io::Error::other(e)))?
            .map_err(|e| Error::io(format!("cannot write in {}", parent.display()), e))?
    };
    let (tmp, mut file, mut offset, tail, resumable) = match slot {
        Some(s) => (s.path, tokio::fs::File::from_std(s.file), s.offset, s.tail, true),
        None => {
            let tmp = parent.join(partial_name());
            // create_new: never through a link or over a file someone placed there.
            let file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .await
                .map_err(|e| Error::io(format!("cannot write {}", tmp.display()), e))?;
            (tmp, file, 0, Vec::new(), false)
        }
    };
    let mut filled = fill(&mut file, from, entry, offset, &tail, tag.as_deref(), path, opts).await;
    let stale = match &filled {
        Err(Cut::Stale) => true,
        Err(Cut::Source(e, 0)) => offset > 0 && cannot_resume(e),
        _ => false,
    };
    if stale {
        // Not the source the partial file was copied from, or one that cannot be read from where it ends:
        // start over from the beginning. (A source that cannot be reached now leaves the file as it is.)
        let std_file = file.into_std().await;
        let restarted = tokio::task::spawn_blocking(move || {
            let mut f = std_file;
            partial::restart(&mut f).map(|()| f)
        })
        .await
        .map_err(|e| Error::io("restarting a partial file", std::io::Error::other(e)))?;
        file =
            tokio::fs::File::from_std(restarted.map_err(|e| Error::io(format!("cannot write {}", tmp.display()), e))?);
        offset = 0;
        filled = fill(&mut file, from, entry, 0, &[], None, path, opts).await;
    }
    let from_source = matches!(filled, Err(Cut::Source(..)));
    // The file stays open, and so locked, until it has its final name: another copy cannot take it meanwhile.
    let result = async {
        match filled {
            Ok(()) => {}
            Err(Cut::Source(e, _) | Cut::Other(e)) => return Err(e),
            Err(Cut::Stale) => {
                return Err(Error::Invalid(format!(
                    "{} changed while it was copied; run the copy again",
                    from.label()
                )));
            }
        }
        file.flush().await.map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
        // A resumed file joins bytes of two runs: where the source gives its content's hash (S3), the whole is
        // checked against it before it takes the final name.
        if offset > 0
            && let Some(tag) = s3_etag(from, entry)
            && let Some(found) = local_digest(&tmp, size, Some(&tag)).await?
            && found != Digest::S3Etag(tag)
        {
            return Err(Error::Invalid(format!(
                "{}: the copy resumed from an earlier, cut-off run does not match the source's hash; it was \
                 removed, run the copy again",
                from.label()
            )));
        }
        let std_file = file.into_std().await;
        let when = entry.modified;
        let std_file = tokio::task::spawn_blocking(move || {
            if let Some(t) = when {
                std_file.set_modified(t)?;
            }
            if resumable {
                // Private while written; the usual mode once finished.
                use std::os::unix::fs::PermissionsExt;
                std_file.set_permissions(std::fs::Permissions::from_mode(partial::finish_mode()))?;
            }
            std_file.sync_all().map(|()| std_file)
        })
        .await
        .map_err(|e| Error::io("finishing a download", std::io::Error::other(e)))?
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
        let renamed =
            tokio::fs::rename(&tmp, path).await.map_err(|e| Error::io(format!("cannot replace {}", path.display()), e));
        drop(std_file);
        renamed
    }
    .await;
    match result {
        Ok(()) => {
            if resumable && size >= partial::RESUME_MIN {
                let (parent, kept) = (parent.clone(), tmp.clone());
                let _ = tokio::task::spawn_blocking(move || partial::sweep(&parent, &final_name, &kept)).await;
            }
            Ok(offset)
        }
        Err(e) => {
            // Kept for the next run when the source failed midway and there is something worth resuming.
            let keep = resumable && size >= partial::RESUME_MIN && from_source;
            if keep {
                if let Ok(f) = tokio::fs::File::open(&tmp).await {
                    let _ = f.sync_data().await;
                }
            } else {
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            Err(e)
        }
    }
}

fn check_size(sent: u64, expected: u64, from: &Location) -> Result<(), Error> {
    if sent == expected { Ok(()) } else { Err(size_changed(sent, expected, from)) }
}

fn size_changed(sent: u64, expected: u64, from: &Location) -> Error {
    Error::Invalid(format!(
        "{} changed while it was copied ({expected} bytes listed, {sent} read); run the copy again",
        from.label()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn checksum_finds_a_change_that_size_and_time_hide_between_local_folders() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for (root, body) in [(&a, b"one"), (&b, b"two")] {
            std::fs::create_dir_all(root).expect("mkdir");
            std::fs::write(root.join("f.txt"), body).expect("write");
            std::fs::write(root.join("same.txt"), b"same").expect("write");
        }
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for f in [a.join("f.txt"), b.join("f.txt"), a.join("same.txt"), b.join("same.txt")] {
            std::fs::File::options().write(true).open(f).expect("open").set_modified(t).expect("touch");
        }
        let (src, dst) = (Location::Local(a), Location::Local(b.clone()));
        let opts = Options { concurrency: 2, dry_run: true, ..Options::default() };
        let by_time = copy(&src, &dst, &opts, |_| {}).await.expect("copy");
        assert_eq!((by_time.copied.len(), by_time.unchanged, by_time.hashed), (0, 2, 0));
        let opts = Options { checksum: true, ..opts };
        let by_hash = copy(&src, &dst, &opts, |_| {}).await.expect("copy");
        assert_eq!(by_hash.copied, ["f.txt"]);
        assert_eq!((by_hash.unchanged, by_hash.hashed, by_hash.unhashed), (1, 2, 0));
    }

    #[tokio::test]
    async fn local_files_get_the_s3_tags_this_client_uploads_them_with() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("f");
        std::fs::write(&f, b"").expect("write");
        let tag = "d41d8cd98f00b204e9800998ecf8427e";
        assert_eq!(local_digest(&f, 0, Some(tag)).await.expect("md5"), Some(Digest::S3Etag(tag.into())));
        // Two parts: the MD5 of the parts' MD5s, then the count.
        let body: Vec<u8> = (0..CHUNK + 5).map(|i| (i % 251) as u8).collect();
        std::fs::write(&f, &body).expect("write");
        let sum = |b: &[u8]| {
            use md5::Digest as _;
            md5::Md5::digest(b).to_vec()
        };
        let want = format!("{}-2", hex::encode(sum(&[sum(&body[..CHUNK]), sum(&body[CHUNK..])].concat())));
        let size = body.len() as u64;
        assert_eq!(local_digest(&f, size, Some(&want)).await.expect("md5"), Some(Digest::S3Etag(want.clone())));
        // Another part count than this client's split: no hash to compare, not a difference.
        assert_eq!(local_digest(&f, size, Some(&format!("{}-3", &want[..32]))).await.expect("md5"), None);
    }

    #[test]
    fn overlapping_moves_and_mirrors_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a");
        std::fs::create_dir_all(a.join("b")).expect("mkdir");
        std::fs::write(a.join("f.txt"), b"x").expect("write");
        let local = |p: PathBuf| Location::Local(p);
        for (src, dst) in [
            (a.join("f.txt"), a.clone()),
            (a.clone(), a.join("b")),
            (a.join("b"), a.clone()),
            (a.clone(), a.join("new/deeper")),
            (a.join("b/../f.txt"), dir.path().join("a/.")),
        ] {
            assert!(apart(&local(src.clone()), &local(dst.clone())).is_err(), "{src:?} -> {dst:?}");
        }
        apart(&local(a.join("f.txt")), &local(dir.path().join("other"))).expect("apart");
        apart(&local(a.join("f.txt")), &local(a.join("g.txt"))).expect("a rename beside it");

        let op = Operator::new(opendal::services::Memory::default()).expect("memory");
        let remote = |label: &str| Location::Remote { op: op.clone(), path: String::new(), label: label.into() };
        assert!(apart(&remote("nas:docs"), &remote("nas:docs/")).is_err());
        assert!(apart(&remote("nas:"), &remote("nas:x")).is_err());
        assert!(apart(&remote("nas:docs/old"), &remote("nas:./docs")).is_err());
        apart(&remote("nas:docs"), &remote("nas:docs2")).expect("siblings");
        apart(&remote("nas:docs"), &remote("s3:docs")).expect("other connection");
    }

    #[test]
    fn uploads_marked_to_go_again_are_told_apart_after_opendal_gave_up() {
        let marked = crate::send_again(opendal::Error::new(opendal::ErrorKind::Unexpected, "503")).set_persistent();
        assert!(worth_again(&Error::backend("cannot write x", marked)));
        let plain = opendal::Error::new(opendal::ErrorKind::Unexpected, "moved but still staged").set_persistent();
        assert!(!worth_again(&Error::backend("cannot write x", plain)));
        let limited = opendal::Error::new(opendal::ErrorKind::RateLimited, "429").set_persistent();
        assert!(worth_again(&Error::backend("cannot write x", limited)));
    }

    #[test]
    fn temporary_names_are_short_fresh_and_recognised() {
        let (a, b) = (partial_name(), partial_name());
        assert_ne!(a, b);
        assert!(a.len() < 40 && is_partial(&a) && is_partial(&format!("x/y/{b}")));
        assert!(!is_partial("notes.partial") && !is_partial(".cloudsync-x.txt"));
    }
}
