//! `pull`: bring a workspace folder down into a local folder. Files already identical locally (same size
//! and keyed content hash) are left alone; everything else is downloaded chunk by chunk, reusing the chunks
//! the old local copy already has, verified and renamed into place (see [`crate::fetch`]). Pull never deletes local files, and never writes through a symlink or outside
//! the target folder (see [`crate::localpath`]).

use std::path::Path;
use std::time::Instant;

use cloudsync_sdk::Client;
use cloudsync_types::{WorkspaceId, WsPath};
use futures_util::{StreamExt as _, stream};

use crate::fetch::{Fetched, Inspected, Job, download_inspected, inspect_all};
use crate::index::Stat;
use crate::keys::{ChunkKeys, hash_matches};
use crate::localpath::{CaseFold, local_path};
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
    tracing::info!(workspace = %ws, remote = %remote, device = %opts.device_name, "pull started");
    let (workspaces, files) = (client.workspaces(), client.files(ws));
    let keys = ChunkKeys::from_api(&retry(|| workspaces.keys(ws)).await?)?;
    let entries = retry(|| files.list_all(remote)).await?;
    // Folders exist only through their files: a path with nothing below it is a typo, not an empty folder
    // (an empty workspace root is fine). Checked before the local folder is created.
    if entries.is_empty() && !remote.is_root() {
        return Err(SyncError::RemoteNotFound(format!(
            "nothing on the server at '{remote}': no file or folder by that name (`cloudsync ls` shows what is there)"
        )));
    }
    let root = local_dir.to_path_buf();
    tokio::task::spawn_blocking(move || ensure_dir(&root)).await.map_err(SyncError::task)??;
    let mut summary = TransferSummary { files_scanned: entries.len() as u64, ..TransferSummary::default() };
    let mut names = CaseFold::default();
    let mut jobs = Vec::with_capacity(entries.len());
    for entry in entries {
        let shown = entry.path.to_string();
        if let Some(first) = names.first_with_same_name(entry.path.as_str()) {
            summary.skip(format!(
                "{shown}: skipped, its name differs only in letter case from {first}, which was pulled instead \
                 (they cannot both exist on a case-insensitive file system)"
            ));
            continue;
        }
        let Some(rel) = relative(remote, &entry.path) else {
            summary.skip(format!("{shown}: skipped, the server listed it outside '{remote}'"));
            continue;
        };
        // The server named this path: it is validated before it touches the file system.
        match local_path(local_dir, rel) {
            Ok(target) => jobs.push(Job { entry, root: local_dir.to_path_buf(), target, replace: None }),
            Err(why) => summary.skip(format!("{shown}: skipped, {why}")),
        }
    }
    let bar = progress::bar(opts.progress, jobs.iter().map(|j| j.entry.size).sum());
    let (mut jobs, inspected) = inspect_all(jobs, &keys, &bar).await?;
    // A differing local file that holds an earlier server version of its path is only stale: replacing it
    // loses nothing (the version history has it). Anything else is a local edit and is kept aside.
    let stale: Vec<(usize, Stat, [u8; 32])> = inspected
        .iter()
        .enumerate()
        .filter_map(|(i, ins)| match ins {
            Inspected::Fetch(reuse) => reuse.local.map(|(stat, hash)| (i, stat, hash)),
            Inspected::Done(_) => None,
        })
        .collect();
    let mut checks = stream::iter(stale)
        .map(|(i, stat, hash)| {
            let (files, path) = (&files, jobs[i].entry.path.clone());
            async move {
                let versions = retry(|| files.versions(&path)).await;
                (i, stat, versions.map(|v| v.iter().any(|v| hash_matches(&hash, &v.content_hash))))
            }
        })
        .buffer_unordered(VERSION_CHECKS);
    let mut replaceable = Vec::new();
    while let Some((i, stat, earlier)) = checks.next().await {
        if earlier? {
            replaceable.push((i, stat));
        }
    }
    drop(checks);
    for (i, stat) in replaceable {
        jobs[i].replace = Some(stat);
    }
    let shown: Vec<String> = jobs.iter().map(|j| j.entry.path.to_string()).collect();
    let result = download_inspected(client, ws, &keys, jobs, inspected, &opts.device_name, &bar, &mut summary).await;
    progress::end(&bar, &result);
    for (i, fetched) in result? {
        let shown = shown.get(i).map_or("", String::as_str);
        match fetched {
            Fetched::Written { kept_as, .. } => {
                summary.files_downloaded += 1;
                if let Some(kept) = kept_as {
                    let name = kept
                        .file_name()
                        .map_or_else(|| kept.display().to_string(), |n| n.to_string_lossy().into_owned());
                    summary.files_conflicted += 1;
                    summary
                        .conflicts
                        .push(format!("{shown}: your local copy differed from the server; it was kept as '{name}'"));
                }
            }
            Fetched::AlreadyThere { .. } => summary.files_unchanged += 1,
            Fetched::Gone => summary.skip(format!("{shown}: skipped, it was deleted on the server during the pull")),
            Fetched::Skipped(why) => summary.skip(format!("{shown}: skipped, {why}")),
        }
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Version lists asked for concurrently when deciding whether differing local files are stale.
const VERSION_CHECKS: usize = 8;

/// Refuses a local path that exists but is not a folder; creates it otherwise.
pub(crate) fn ensure_dir(root: &Path) -> Result<(), SyncError> {
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

/// The path of `entry` relative to the pulled folder.
pub(crate) fn relative<'e>(remote: &WsPath, entry: &'e WsPath) -> Option<&'e str> {
    match entry.strip_prefix(remote)? {
        "" => Some(entry.file_name()),
        rel => Some(rel),
    }
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
