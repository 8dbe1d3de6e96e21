//! `pull`: bring a workspace folder down into a local folder. Files already identical locally (same size
//! and keyed content hash) are left alone; everything else is downloaded, verified and renamed into place
//! (see [`crate::download`]). Pull never deletes local files, and never writes through a symlink or outside
//! the target folder (see [`crate::localpath`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use cloudsync_sdk::{Client, ErrorKind};
use cloudsync_types::api::FileEntry;
use cloudsync_types::{WorkspaceId, WsPath};
use indicatif::ProgressBar;

use crate::chunking::hash_reader;
use crate::download::{Expected, download_to};
use crate::keys::{ChunkKeys, hash_matches};
use crate::localpath::{Existing, local_path, prepare};
use crate::{SyncError, TransferOptions, TransferSummary, progress};

/// Downloads every file below `remote` into `local_dir` (created if missing), skipping files that are
/// already identical. A file equal to `remote` itself lands at `local_dir/<its name>`.
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

    let keys = ChunkKeys::from_api(&client.workspaces().keys(ws).await?)?;
    let entries = client.files(ws).list_all(remote).await?;
    let total = entries.iter().map(|e| e.size).sum();
    let bar = progress::bar(opts.progress, total);
    let mut summary = TransferSummary::default();
    let ctx = Ctx { client, ws, keys: &keys, root: local_dir, bar: &bar };
    for entry in &entries {
        summary.files_scanned += 1;
        bar.set_message(entry.path.to_string());
        let result = pull_one(&ctx, remote, entry, &mut summary).await;
        if let Err(e) = result {
            bar.abandon();
            return Err(e);
        }
    }
    bar.finish_and_clear();
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
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
}

/// The path of `entry` relative to the pulled folder.
fn relative<'e>(remote: &WsPath, entry: &'e WsPath) -> Option<&'e str> {
    match entry.strip_prefix(remote)? {
        "" => Some(entry.file_name()),
        rel => Some(rel),
    }
}

async fn pull_one(
    ctx: &Ctx<'_>,
    remote: &WsPath,
    entry: &FileEntry,
    summary: &mut TransferSummary,
) -> Result<(), SyncError> {
    let shown = entry.path.as_str();
    let Some(rel) = relative(remote, &entry.path) else {
        summary.skip(format!("{shown}: skipped, the server listed it outside {remote:?}"));
        return Ok(());
    };
    let target = match local_path(ctx.root, rel) {
        Ok(t) => t,
        Err(why) => {
            summary.skip(format!("{shown}: skipped, {why}"));
            return Ok(());
        }
    };
    let (root, t) = (ctx.root.to_path_buf(), target.clone());
    let existing = tokio::task::spawn_blocking(move || prepare(&root, &t))
        .await
        .map_err(SyncError::task)?
        .map_err(|(path, e)| SyncError::io(&path, e))?;
    let existing = match existing {
        Ok(x) => x,
        Err(why) => {
            summary.skip(format!("{shown}: skipped, {why}"));
            return Ok(());
        }
    };
    if existing == Existing::File(entry.size) && local_matches(&target, ctx.keys, &entry.content_hash).await? {
        summary.files_unchanged += 1;
        ctx.bar.inc(entry.size);
        return Ok(());
    }
    // Ask for exactly the listed version, so a concurrent change cannot make verification fail.
    let download = match ctx.client.files(ctx.ws).content(&entry.path, Some(entry.version)).await {
        Ok(d) => d,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            summary.skip(format!("{shown}: skipped, it was deleted on the server during the pull"));
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let expected = Expected { size: entry.size, content_hash: &entry.content_hash, mtime_ms: entry.mtime_ms };
    let n = download_to(download.into_stream(), &target, shown, &expected, ctx.keys, ctx.bar).await?;
    summary.bytes_downloaded += n;
    summary.files_downloaded += 1;
    Ok(())
}

/// True when the local file's keyed content hash is `reported`. Opening goes through the path that
/// [`prepare`] just checked is a regular file, not a symlink.
async fn local_matches(target: &Path, keys: &ChunkKeys, reported: &str) -> Result<bool, SyncError> {
    let (path, keys) = (PathBuf::from(target), keys.clone());
    let digest = tokio::task::spawn_blocking(move || {
        std::fs::File::open(&path).and_then(|f| hash_reader(f, &keys)).map_err(|e| SyncError::io(&path, e))
    })
    .await
    .map_err(SyncError::task)??;
    Ok(hash_matches(&digest.hash, reported))
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
