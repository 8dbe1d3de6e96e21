//! `pull`: bring a workspace folder down into a local folder. Files already identical locally (same size
//! and keyed content hash) are left alone; everything else is downloaded, verified and renamed into place
//! (see [`crate::download`]). Pull never deletes local files, and never writes through a symlink or outside
//! the target folder (see [`crate::localpath`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cloudsync_sdk::{Client, ErrorKind};
use cloudsync_types::api::FileEntry;
use cloudsync_types::{WorkspaceId, WsPath};
use indicatif::ProgressBar;

use crate::chunking::hash_reader;
use crate::download::{Expected, Stamp, download_to};
use crate::keys::{ChunkKeys, hash_matches};
use crate::localpath::{Existing, local_path, prepare};
use crate::retry::retry;
use crate::{SyncError, TransferOptions, TransferSummary, progress};

/// Downloads every file below `remote` into `local_dir` (created if missing), skipping files that are
/// already identical. A file equal to `remote` itself lands at `local_dir/<its name>`. A local file that
/// differs from the server's is not overwritten: it is renamed to a conflicted copy beside the download and
/// reported in `conflicts`.
///
/// # Errors
/// [`SyncError::InvalidLocal`] when `local_dir` is not a folder, [`SyncError::Api`] for server failures,
/// [`SyncError::Io`] for local failures, and [`SyncError::Integrity`] when a download does not match what
/// the server listed (nothing is written under that file's name then).
pub async fn pull(
    client: &Client,
    ws: WorkspaceId,
    remote: &WsPath,
    local_dir: &Path,
    opts: &TransferOptions,
) -> Result<TransferSummary, SyncError> {
    let started = Instant::now();
    let root = local_dir.to_path_buf();
    tokio::task::spawn_blocking(move || ensure_dir(&root)).await.map_err(SyncError::task)??;
    tracing::info!(workspace = %ws, remote = %remote, device = %opts.device_name, "pull started");

    let (workspaces, files) = (client.workspaces(), client.files(ws));
    let keys = ChunkKeys::from_api(&retry(|| workspaces.keys(ws)).await?)?;
    let entries = retry(|| files.list_all(remote)).await?;
    let total = entries.iter().map(|e| e.size).sum();
    let bar = progress::bar(opts.progress, total);
    let mut summary = TransferSummary::default();
    let ctx = Ctx { client, ws, keys: &keys, root: local_dir, bar: &bar, device: &opts.device_name };
    let mut names = CaseFold::default();
    for entry in &entries {
        summary.files_scanned += 1;
        bar.set_message(entry.path.to_string());
        let start = bar.position();
        let result = match names.first_with_same_name(&entry.path) {
            Some(first) => {
                summary.skip(format!(
                    "{}: skipped, its name differs only in letter case from {first}, which was pulled instead \
                     (they cannot both exist on a case-insensitive file system)",
                    entry.path
                ));
                Ok(())
            }
            None => pull_one(&ctx, remote, entry, &mut summary).await,
        };
        if let Err(e) = result {
            bar.abandon();
            return Err(e);
        }
        // Skipped and unchanged files count as done, so the bar ends at 100%.
        bar.set_position(start + entry.size);
    }
    bar.finish_and_clear();
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Remembers the paths of one listing by their lower-case form, to notice two that would be the same file
/// on a case-insensitive file system (Windows, macOS by default).
#[derive(Debug, Default)]
struct CaseFold {
    seen: HashMap<String, WsPath>,
}

impl CaseFold {
    /// The earlier path whose lower-case form equals `path`'s, or `None` (and `path` is remembered).
    fn first_with_same_name(&mut self, path: &WsPath) -> Option<WsPath> {
        match self.seen.entry(path.as_str().to_lowercase()) {
            std::collections::hash_map::Entry::Occupied(first) => Some(first.get().clone()),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(path.clone());
                None
            }
        }
    }
}

/// Refuses a local path that exists but is not a folder; creates it otherwise.
fn ensure_dir(root: &Path) -> Result<(), SyncError> {
    match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => {
            Err(SyncError::InvalidLocal(format!("{} exists and is not a folder; pull into a folder", root.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(root).map_err(|e| SyncError::io(root, e))
        }
        Err(e) => Err(SyncError::io(root, e)),
    }
}

/// What one file needs.
struct Ctx<'a> {
    client: &'a Client,
    ws: WorkspaceId,
    keys: &'a ChunkKeys,
    root: &'a Path,
    bar: &'a ProgressBar,
    /// This device's name, for conflicted copies.
    device: &'a str,
}

/// The path of `entry` relative to the pulled folder.
fn relative<'e>(remote: &WsPath, entry: &'e WsPath) -> Option<&'e str> {
    match entry.strip_prefix(remote)? {
        "" => Some(entry.file_name()),
        rel => Some(rel),
    }
}

/// What is at a target path, compared with the listed file.
#[derive(Debug, PartialEq, Eq)]
enum Local {
    /// Nothing yet.
    Missing,
    /// A regular file with the listed size and content.
    Same,
    /// A regular file with other content.
    Differs,
}

async fn pull_one(
    ctx: &Ctx<'_>,
    remote: &WsPath,
    entry: &FileEntry,
    summary: &mut TransferSummary,
) -> Result<(), SyncError> {
    let shown = entry.path.as_str();
    let Some(rel) = relative(remote, &entry.path) else {
        summary.skip(format!("{shown}: skipped, the server listed it outside '{remote}'"));
        return Ok(());
    };
    let target = match local_path(ctx.root, rel) {
        Ok(t) => t,
        Err(why) => {
            summary.skip(format!("{shown}: skipped, {why}"));
            return Ok(());
        }
    };
    let (root, t, keys) = (ctx.root.to_path_buf(), target.clone(), ctx.keys.clone());
    let (size, hash) = (entry.size, entry.content_hash.clone());
    let local = tokio::task::spawn_blocking(move || inspect(&root, &t, &keys, size, &hash))
        .await
        .map_err(SyncError::task)??;
    let local = match local {
        Ok(x) => x,
        Err(why) => {
            summary.skip(format!("{shown}: skipped, {why}"));
            return Ok(());
        }
    };
    if local == Local::Same {
        summary.files_unchanged += 1;
        return Ok(());
    }
    // A differing local file that holds an earlier server version of this path is only stale: replacing it
    // loses nothing (the version history has it). Anything else is a local edit and is kept aside.
    let replaceable = match local {
        Local::Differs => stale_stamp(ctx, &entry.path, &target).await?,
        _ => None,
    };
    let expected = Expected { size: entry.size, content_hash: &entry.content_hash, mtime_ms: entry.mtime_ms };
    let files = ctx.client.files(ctx.ws);
    let start = ctx.bar.position();
    // A retryable failure restarts the whole file: a fresh request, into a fresh temporary file.
    let downloaded = retry(|| async {
        ctx.bar.set_position(start);
        // Ask for exactly the listed version, so a concurrent change cannot make verification fail.
        let download = match files.content(&entry.path, Some(entry.version)).await {
            Ok(d) => d,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SyncError::from(e)),
        };
        download_to(download.into_stream(), &target, shown, &expected, ctx.keys, ctx.bar, ctx.device, replaceable)
            .await
            .map(Some)
    })
    .await?;
    let Some(downloaded) = downloaded else {
        summary.skip(format!("{shown}: skipped, it was deleted on the server during the pull"));
        return Ok(());
    };
    summary.bytes_downloaded += downloaded.bytes;
    summary.files_downloaded += 1;
    if let Some(kept) = downloaded.kept_as {
        let name = kept.file_name().map_or_else(|| kept.display().to_string(), |n| n.to_string_lossy().into_owned());
        summary.files_conflicted += 1;
        summary.conflicts.push(format!("{shown}: your local copy differed from the server; it was kept as '{name}'"));
    }
    Ok(())
}

/// The stamp of the local file at `target` when its content equals an earlier server version of `path`
/// (so it may be replaced), or None when it is a local edit (or the server keeps no such version).
async fn stale_stamp(ctx: &Ctx<'_>, path: &WsPath, target: &Path) -> Result<Option<Stamp>, SyncError> {
    let versions = retry(|| async { ctx.client.files(ctx.ws).versions(path).await.map_err(SyncError::from) }).await?;
    let (t, keys) = (target.to_path_buf(), ctx.keys.clone());
    let (stamp, digest) = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&t)?;
        let stamp = Stamp::of(&file.metadata()?);
        Ok::<_, std::io::Error>((stamp, hash_reader(file, &keys)?))
    })
    .await
    .map_err(SyncError::task)?
    .map_err(|e| SyncError::io(&PathBuf::from(target), e))?;
    Ok(versions.iter().any(|v| hash_matches(&digest.hash, &v.content_hash)).then_some(stamp))
}

/// Creates the target's folders (see [`prepare`]) and compares what is at the target with the listed
/// size and keyed content hash, in one blocking call. `Ok(Err(reason))` means "skip this file". Hashing
/// opens the path that [`prepare`] just checked is a regular file, not a symlink.
fn inspect(
    root: &Path,
    target: &Path,
    keys: &ChunkKeys,
    size: u64,
    reported: &str,
) -> Result<Result<Local, String>, SyncError> {
    let existing = match prepare(root, target).map_err(|(path, e)| SyncError::io(&path, e))? {
        Ok(x) => x,
        Err(why) => return Ok(Err(why)),
    };
    Ok(Ok(match existing {
        Existing::Missing => Local::Missing,
        Existing::File(n) if n != size => Local::Differs,
        Existing::File(_) => {
            let digest = std::fs::File::open(target)
                .and_then(|f| hash_reader(f, keys))
                .map_err(|e| SyncError::io(&PathBuf::from(target), e))?;
            if hash_matches(&digest.hash, reported) { Local::Same } else { Local::Differs }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_of_listed_entries() {
        let remote = WsPath::parse("docs").expect("remote");
        let p = |s: &str| WsPath::parse(s).expect("path");
        assert_eq!(relative(&remote, &p("docs/a/b.txt")), Some("a/b.txt"));
        assert_eq!(relative(&remote, &p("docs")), Some("docs"));
        assert_eq!(relative(&remote, &p("docsx/a")), None);
        assert_eq!(relative(&WsPath::root(), &p("x/y")), Some("x/y"));
    }

    #[test]
    fn names_differing_only_in_case_are_noticed() {
        let p = |s: &str| WsPath::parse(s).expect("path");
        let mut names = CaseFold::default();
        assert_eq!(names.first_with_same_name(&p("docs/Report.pdf")), None);
        assert_eq!(names.first_with_same_name(&p("docs/report.pdf")), Some(p("docs/Report.pdf")));
        assert_eq!(names.first_with_same_name(&p("DOCS/REPORT.PDF")), Some(p("docs/Report.pdf")));
        assert_eq!(names.first_with_same_name(&p("docs/report.pdf.bak")), None);
        assert_eq!(names.first_with_same_name(&p("Ünïcode/Ä")), None);
        assert_eq!(names.first_with_same_name(&p("ünïcode/ä")), Some(p("Ünïcode/Ä")));
    }

    #[test]
    fn compares_the_local_file_with_the_listed_one() {
        use cloudsync_chunker::ChunkerParams;

        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let keys = ChunkKeys::for_test(ChunkerParams::DEFAULT);
        let hash = |data: &[u8]| crate::keys::hash_hex(&hash_reader(data, &keys).expect("hash").hash);
        let target = local_path(root, "a/b.txt").expect("path");
        let listed = hash(b"server");
        assert_eq!(inspect(root, &target, &keys, 6, &listed).expect("io"), Ok(Local::Missing));
        assert!(root.join("a").is_dir());
        std::fs::write(&target, b"server").expect("write");
        assert_eq!(inspect(root, &target, &keys, 6, &listed).expect("io"), Ok(Local::Same));
        std::fs::write(&target, b"SERVER").expect("write");
        assert_eq!(inspect(root, &target, &keys, 6, &listed).expect("io"), Ok(Local::Differs));
        std::fs::write(&target, b"local edit").expect("write");
        assert_eq!(inspect(root, &target, &keys, 6, &listed).expect("io"), Ok(Local::Differs));
        std::fs::create_dir(root.join("a/dir")).expect("mkdir");
        assert!(inspect(root, &root.join("a/dir"), &keys, 6, &listed).expect("io").is_err());
    }

    #[test]
    fn pulling_into_a_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").expect("write");
        assert!(matches!(ensure_dir(&file), Err(SyncError::InvalidLocal(_))));
        let fresh = dir.path().join("a/b");
        ensure_dir(&fresh).expect("create");
        assert!(fresh.is_dir());
    }
}
