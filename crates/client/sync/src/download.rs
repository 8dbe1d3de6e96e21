//! Writing one downloaded file safely. Content goes to a fresh temporary file next to the target (same
//! folder, so the final rename is atomic on the same file system), is hashed while it is written, and is
//! renamed over the final name only after its size and keyed content hash match what the server listed and
//! it has been fsynced. A failed check, a broken connection or a killed process therefore never leaves a
//! partial or tampered file under the final name; at worst a `.cloudsync-*.part` file remains (push skips
//! those). Whatever is still at the final name by then differs from the download (pull leaves identical
//! files alone), so it is first moved aside as a conflicted copy (see [`crate::conflict`]), never lost.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use indicatif::ProgressBar;
use tokio::io::{AsyncWriteExt as _, BufWriter};

use crate::SyncError;
use crate::conflict::move_aside;
use crate::keys::{ChunkKeys, hash_hex, hash_matches};

/// Prefix and suffix of the temporary files a pull downloads into.
pub(crate) const PART_PREFIX: &str = ".cloudsync-";
pub(crate) const PART_SUFFIX: &str = ".part";
/// Write buffer of a download, so small network pieces do not each become a write.
const WRITE_BUF: usize = 1 << 20;

/// What the downloaded content must be.
#[derive(Debug, Clone)]
pub(crate) struct Expected<'a> {
    pub(crate) size: u64,
    pub(crate) content_hash: &'a str,
    pub(crate) mtime_ms: Option<i64>,
}

/// What a completed download did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Downloaded {
    /// Bytes written.
    pub(crate) bytes: u64,
    /// Where the file that was at the target before was moved, when there was one.
    pub(crate) kept_as: Option<PathBuf>,
}

/// Removes the temporary file unless the download completed.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// Creates `.cloudsync-<random hex>.part` in `dir` with `create_new`, so an existing file (or a symlink
/// planted under that name) is never opened.
fn create_temp(dir: &Path) -> Result<(PathBuf, File), SyncError> {
    let mut last = None;
    for _ in 0..8 {
        let name = format!("{PART_PREFIX}{}{PART_SUFFIX}", hex::encode(cloudsync_crypto::random_bytes::<8>()));
        let path = dir.join(name);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(SyncError::io(&path, e)),
        }
    }
    let e = last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists));
    Err(SyncError::io(dir, e))
}

/// Unix milliseconds as a `SystemTime`, if representable.
fn system_time(ms: i64) -> Option<SystemTime> {
    let magnitude = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 { SystemTime::UNIX_EPOCH.checked_add(magnitude) } else { SystemTime::UNIX_EPOCH.checked_sub(magnitude) }
}

/// What a local file looked like when it was inspected: if it still looks the same just before the download
/// is renamed over it, nobody has touched it in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

impl Stamp {
    /// The stamp of `meta`.
    pub(crate) fn of(meta: &fs::Metadata) -> Self {
        Self { len: meta.len(), modified: meta.modified().ok() }
    }
}

/// Streams `content` into a temporary file beside `target`, verifies it against `expected`, and renames the
/// download to `target`. A file already at `target` is moved aside as a conflicted copy from `device`, unless
/// it still matches `replaceable` (a file known to hold an earlier server version, so nothing is lost by
/// replacing it). `shown` names the file in error messages.
#[expect(clippy::too_many_arguments, reason = "internal; each argument is a distinct input of one download")]
pub(crate) async fn download_to<S, E>(
    content: S,
    target: &Path,
    shown: &str,
    expected: &Expected<'_>,
    keys: &ChunkKeys,
    progress: &ProgressBar,
    device: &str,
    replaceable: Option<Stamp>,
) -> Result<Downloaded, SyncError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: Into<SyncError>,
{
    let dir = target
        .parent()
        .ok_or_else(|| SyncError::InvalidLocal(format!("{}: has no parent folder", target.display())))?
        .to_path_buf();
    let (tmp, file) = tokio::task::spawn_blocking(move || create_temp(&dir)).await.map_err(SyncError::task)??;
    let mut guard = TempGuard(Some(tmp.clone()));
    let mut out = BufWriter::with_capacity(WRITE_BUF, tokio::fs::File::from_std(file));
    let mut hasher = keys.content_hasher();
    let mut written = 0u64;
    let mut content = std::pin::pin!(content);
    while let Some(piece) = content.next().await {
        let piece = piece.map_err(Into::into)?;
        written += piece.len() as u64;
        if written > expected.size {
            return Err(SyncError::Integrity(format!(
                "{shown}: the server sent more than the {} bytes it listed; the download was discarded",
                expected.size
            )));
        }
        hasher.update(&piece);
        out.write_all(&piece).await.map_err(|e| SyncError::io(&tmp, e))?;
        progress.inc(piece.len() as u64);
    }
    out.flush().await.map_err(|e| SyncError::io(&tmp, e))?;
    if written != expected.size {
        return Err(SyncError::Integrity(format!(
            "{shown}: received {written} bytes but the server listed {}; the download was discarded",
            expected.size
        )));
    }
    let hash = hasher.finalize();
    if !hash_matches(&hash, expected.content_hash) {
        return Err(SyncError::Integrity(format!(
            "{shown}: the content hash {} does not match the listed {}; the download was discarded",
            hash_hex(&hash),
            expected.content_hash
        )));
    }
    // Flushed above, so the buffer is empty and the std file holds everything before the fsync.
    let file = out.into_inner().into_std().await;
    let mtime = expected.mtime_ms.and_then(system_time);
    let (tmp2, target2, device) = (tmp.clone(), target.to_path_buf(), device.to_owned());
    let kept_as = tokio::task::spawn_blocking(move || finish(file, &tmp2, &target2, mtime, &device, replaceable))
        .await
        .map_err(SyncError::task)??;
    guard.0 = None;
    Ok(Downloaded { bytes: written, kept_as })
}

/// Sets the modification time, makes the content durable, moves anything at `target` aside, and renames
/// the file into place. Returns where the previous file went.
fn finish(
    file: File,
    tmp: &Path,
    target: &Path,
    mtime: Option<SystemTime>,
    device: &str,
    replaceable: Option<Stamp>,
) -> Result<Option<PathBuf>, SyncError> {
    if let Some(t) = mtime {
        // Best effort: a file system without settable times still gets the content.
        if let Err(e) = file.set_modified(t) {
            tracing::debug!("{}: cannot set the modification time: {e}", target.display());
        }
    }
    file.sync_all().map_err(|e| SyncError::io(tmp, e))?;
    drop(file);
    // Looked at again now rather than trusting the check before the download: a file created or edited
    // meanwhile is kept too.
    let kept_as = match fs::symlink_metadata(target) {
        Ok(meta) if meta.is_file() && replaceable == Some(Stamp::of(&meta)) => None,
        Ok(_) => Some(move_aside(target, device, SystemTime::now()).map_err(|e| SyncError::io(target, e))?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(SyncError::io(target, e)),
    };
    if let Err(e) = fs::rename(tmp, target) {
        if let Some(copy) = &kept_as {
            // Put the local file back under its own name rather than leave the user without it.
            let _ = fs::rename(copy, target);
        }
        return Err(SyncError::io(target, e));
    }
    #[cfg(unix)]
    if let Some(dir) = target.parent() {
        // Make the renames themselves durable; failure here does not undo a completed download.
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(kept_as)
}

#[cfg(test)]
mod tests {
    use cloudsync_chunker::ChunkerParams;
    use cloudsync_crypto::{SecretKey, keyed_hash};
    use futures_util::stream;

    use super::*;

    const DEVICE: &str = "test device";

    fn keys() -> ChunkKeys {
        ChunkKeys::for_test(ChunkerParams::DEFAULT)
    }

    fn hash_of(data: &[u8]) -> String {
        hex::encode(keyed_hash(&SecretKey::from_bytes([42; 32]), data))
    }

    fn pieces(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, SyncError>> {
        stream::iter(parts.iter().map(|p| Ok(Bytes::from_static(p))).collect::<Vec<_>>())
    }

    fn dir_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn verified_download_is_renamed_into_place_with_its_mtime() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("f.txt");
        let hash = hash_of(b"hello world");
        let expected = Expected { size: 11, content_hash: &hash, mtime_ms: Some(1_600_000_000_123) };
        let n = download_to(
            pieces(&[b"hello ", b"world"]),
            &target,
            "f.txt",
            &expected,
            &keys(),
            &ProgressBar::hidden(),
            DEVICE,
            None,
        )
        .await
        .expect("download")
        .bytes;
        assert_eq!(n, 11);
        assert_eq!(fs::read(&target).expect("read"), b"hello world");
        let mtime = fs::metadata(&target).expect("meta").modified().expect("mtime");
        assert_eq!(mtime, system_time(1_600_000_000_123).expect("time"));
        assert_eq!(dir_names(dir.path()), ["f.txt"]);
    }

    #[tokio::test]
    async fn corrupted_stream_leaves_no_file_and_keeps_the_old_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("f.txt");
        let hash = hash_of(b"hello world");
        let expected = Expected { size: 11, content_hash: &hash, mtime_ms: None };
        let bar = ProgressBar::hidden();
        // Same length, different bytes.
        let e =
            download_to(pieces(&[b"hello ", b"WORLD"]), &target, "docs/f.txt", &expected, &keys(), &bar, DEVICE, None)
                .await
                .expect_err("corrupt");
        assert!(matches!(&e, SyncError::Integrity(m) if m.contains("docs/f.txt")), "{e}");
        assert!(dir_names(dir.path()).is_empty());

        // Truncated, too long, and broken mid-way: the existing file stays untouched.
        fs::write(&target, b"old").expect("write");
        for bad in [pieces(&[b"hello"]).boxed(), pieces(&[b"hello world", b"!"]).boxed()] {
            let e = download_to(bad, &target, "f.txt", &expected, &keys(), &bar, DEVICE, None).await.expect_err("bad");
            assert!(matches!(e, SyncError::Integrity(_)), "{e}");
        }
        let broken =
            stream::iter(vec![Ok(Bytes::from_static(b"hello")), Err(SyncError::Integrity("connection reset".into()))]);
        assert!(download_to(broken, &target, "f.txt", &expected, &keys(), &bar, DEVICE, None).await.is_err());
        assert_eq!(fs::read(&target).expect("read"), b"old");
        assert_eq!(dir_names(dir.path()), ["f.txt"]);
    }

    #[tokio::test]
    async fn a_differing_local_file_is_kept_as_a_conflicted_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("notes.txt");
        fs::write(&target, b"my local edit").expect("write");
        let hash = hash_of(b"server version");
        let expected = Expected { size: 14, content_hash: &hash, mtime_ms: None };
        let got = download_to(
            pieces(&[b"server ", b"version"]),
            &target,
            "docs/notes.txt",
            &expected,
            &keys(),
            &ProgressBar::hidden(),
            "Bob's laptop: work",
            None,
        )
        .await
        .expect("download");
        assert_eq!(got.bytes, 14);
        assert_eq!(fs::read(&target).expect("read"), b"server version");
        let kept = got.kept_as.expect("the local file was kept");
        assert_eq!(fs::read(&kept).expect("read"), b"my local edit");
        let names = dir_names(dir.path());
        assert_eq!(names.len(), 2, "{names:?}");
        let copy = kept.file_name().and_then(|n| n.to_str()).expect("name");
        assert!(copy.starts_with("notes (conflicted copy from Bob's laptop- work 2"), "{copy}");
        assert!(copy.ends_with(").txt"), "{copy}");
        assert!(names.iter().any(|n| n == copy), "{names:?}");

        // Nothing at the target: nothing to keep.
        let fresh = dir.path().join("fresh.txt");
        let got = download_to(
            pieces(&[b"server version"]),
            &fresh,
            "fresh.txt",
            &expected,
            &keys(),
            &ProgressBar::hidden(),
            DEVICE,
            None,
        )
        .await
        .expect("download");
        assert_eq!(got.kept_as, None);
    }

    #[test]
    fn converts_millisecond_times() {
        assert_eq!(system_time(0), Some(SystemTime::UNIX_EPOCH));
        assert_eq!(system_time(-1_000), SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(1)));
    }

    #[tokio::test]
    async fn a_stale_copy_of_an_earlier_version_is_replaced_unless_touched_since() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("notes.txt");
        let hash = hash_of(b"server version");
        let expected = Expected { size: 14, content_hash: &hash, mtime_ms: None };
        // Untouched since inspection: replaced, no conflicted copy.
        fs::write(&target, b"old server version").expect("write");
        let stamp = Stamp::of(&fs::metadata(&target).expect("meta"));
        let got = download_to(
            pieces(&[b"server version"]),
            &target,
            "n",
            &expected,
            &keys(),
            &ProgressBar::hidden(),
            DEVICE,
            Some(stamp),
        )
        .await
        .expect("download");
        assert!(got.kept_as.is_none());
        assert_eq!(fs::read(&target).expect("read"), b"server version");
        assert_eq!(dir_names(dir.path()).len(), 1);
        // Edited after inspection: kept aside after all.
        fs::write(&target, b"old server version").expect("write");
        let stamp = Stamp::of(&fs::metadata(&target).expect("meta"));
        fs::write(&target, b"an edit made during the download").expect("edit");
        let got = download_to(
            pieces(&[b"server version"]),
            &target,
            "n",
            &expected,
            &keys(),
            &ProgressBar::hidden(),
            DEVICE,
            Some(stamp),
        )
        .await
        .expect("download");
        let kept = got.kept_as.expect("the edited file was kept");
        assert_eq!(fs::read(&kept).expect("read"), b"an edit made during the download");
    }
}
