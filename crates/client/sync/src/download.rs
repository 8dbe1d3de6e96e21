//! Writing one downloaded file safely. Content goes to a fresh temporary file next to the target (same
//! folder, so the final rename is atomic on the same file system), is hashed while it is written, and is
//! renamed over the final name only after its size and keyed content hash match what the server listed and
//! it has been fsynced. A failed check, a broken connection or a killed process therefore never leaves a
//! partial or tampered file under the final name; at worst a `.cloudsync-*.part` file remains (push skips
//! those).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use indicatif::ProgressBar;
use tokio::io::AsyncWriteExt as _;

use crate::SyncError;
use crate::keys::{ChunkKeys, hash_hex, hash_matches};
use crate::scan::{PART_PREFIX, PART_SUFFIX};

/// What the downloaded content must be.
#[derive(Debug, Clone)]
pub(crate) struct Expected<'a> {
    pub(crate) size: u64,
    pub(crate) content_hash: &'a str,
    pub(crate) mtime_ms: Option<i64>,
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

/// Streams `content` into a temporary file beside `target`, verifies it against `expected`, and renames it
/// to `target`. Returns the number of bytes written. `shown` names the file in error messages.
pub(crate) async fn download_to<S, E>(
    content: S,
    target: &Path,
    shown: &str,
    expected: &Expected<'_>,
    keys: &ChunkKeys,
    progress: &ProgressBar,
) -> Result<u64, SyncError>
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
    let mut out = tokio::fs::File::from_std(file);
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
    let file = out.into_std().await;
    let mtime = expected.mtime_ms.and_then(system_time);
    let (tmp2, target2) = (tmp.clone(), target.to_path_buf());
    tokio::task::spawn_blocking(move || finish(file, &tmp2, &target2, mtime)).await.map_err(SyncError::task)??;
    guard.0 = None;
    Ok(written)
}

/// Sets the modification time, makes the content durable, and renames the file into place.
fn finish(file: File, tmp: &Path, target: &Path, mtime: Option<SystemTime>) -> Result<(), SyncError> {
    if let Some(t) = mtime {
        // Best effort: a file system without settable times still gets the content.
        if let Err(e) = file.set_modified(t) {
            tracing::debug!("{}: cannot set the modification time: {e}", target.display());
        }
    }
    file.sync_all().map_err(|e| SyncError::io(tmp, e))?;
    drop(file);
    fs::rename(tmp, target).map_err(|e| SyncError::io(target, e))?;
    #[cfg(unix)]
    if let Some(dir) = target.parent() {
        // Make the rename itself durable; failure here does not undo a completed download.
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use cloudsync_chunker::ChunkerParams;
    use cloudsync_crypto::{SecretKey, keyed_hash};
    use futures_util::stream;

    use super::*;

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
        let n =
            download_to(pieces(&[b"hello ", b"world"]), &target, "f.txt", &expected, &keys(), &ProgressBar::hidden())
                .await
                .expect("download");
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
        let e = download_to(pieces(&[b"hello ", b"WORLD"]), &target, "docs/f.txt", &expected, &keys(), &bar)
            .await
            .expect_err("corrupt");
        assert!(matches!(&e, SyncError::Integrity(m) if m.contains("docs/f.txt")), "{e}");
        assert!(dir_names(dir.path()).is_empty());

        // Truncated, too long, and broken mid-way: the existing file stays untouched.
        fs::write(&target, b"old").expect("write");
        for bad in [pieces(&[b"hello"]).boxed(), pieces(&[b"hello world", b"!"]).boxed()] {
            let e = download_to(bad, &target, "f.txt", &expected, &keys(), &bar).await.expect_err("bad");
            assert!(matches!(e, SyncError::Integrity(_)), "{e}");
        }
        let broken =
            stream::iter(vec![Ok(Bytes::from_static(b"hello")), Err(SyncError::Integrity("connection reset".into()))]);
        assert!(download_to(broken, &target, "f.txt", &expected, &keys(), &bar).await.is_err());
        assert_eq!(fs::read(&target).expect("read"), b"old");
        assert_eq!(dir_names(dir.path()), ["f.txt"]);
    }

    #[test]
    fn converts_millisecond_times() {
        assert_eq!(system_time(0), Some(SystemTime::UNIX_EPOCH));
        assert_eq!(system_time(-1_000), SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(1)));
    }
}
