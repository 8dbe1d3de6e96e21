//! `sync --watch`: keep a folder in sync until interrupted. Local changes arrive from the operating system's
//! file notifications (inotify, FSEvents, ReadDirectoryChangesW through the `notify` crate) and are
//! debounced, so an editor's burst of writes becomes one sync. Remote changes are found by polling the
//! workspace change journal — one small request — with back-off: every 2 s after activity, stretching to a
//! minute while nothing happens. A failed round is retried with back-off when the failure is temporary
//! (network, server restart); a problem only the user can fix stops the watch.

use std::path::Path;
use std::time::Duration;

use cloudsync_sdk::Client;
use cloudsync_types::{WorkspaceId, WsPath};
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::SyncError;
use crate::engine::{SyncOptions, SyncReport, sync};
use crate::fetch::{PART_PREFIX, PART_SUFFIX};
use crate::index::canonical_folder;

/// Quiet time after the last local change before syncing.
const DEBOUNCE: Duration = Duration::from_millis(500);
/// Journal polling interval right after activity, and its ceiling while idle.
const POLL_MIN: Duration = Duration::from_secs(2);
const POLL_MAX: Duration = Duration::from_secs(60);

/// Syncs `local` with `remote` now and again whenever either side changes, calling `on_report` after every
/// sync that did something (and after the first). Returns when the process is interrupted (Ctrl-C).
///
/// # Errors
/// Problems a retry cannot fix: the folder vanished or is synced elsewhere, lost access, integrity failures.
pub async fn watch(
    client: &Client,
    ws: WorkspaceId,
    remote: &WsPath,
    local: &Path,
    opts: &SyncOptions,
    mut on_report: impl FnMut(&SyncReport),
) -> Result<(), SyncError> {
    let canonical = canonical_folder(local)?;
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && is_interesting(&ev)
        {
            let _ = tx.send(());
        }
    })
    .map_err(|e| SyncError::InvalidLocal(format!("cannot watch {} for changes: {e}", local.display())))?;
    watcher
        .watch(&canonical, RecursiveMode::Recursive)
        .map_err(|e| SyncError::InvalidLocal(format!("cannot watch {} for changes: {e}", local.display())))?;

    let mut poll = POLL_MIN;
    let mut failures = 0u32;
    let mut cursor;
    let mut first = true;
    loop {
        match sync(client, ws, remote, &canonical, opts).await {
            Ok(report) => {
                failures = 0;
                cursor = report.cursor;
                let did_something = !report.plan.is_empty() || report.summary.files_conflicted > 0;
                if first || did_something {
                    on_report(&report);
                    poll = POLL_MIN;
                }
                first = false;
            }
            Err(e) if e.is_retryable() => {
                failures += 1;
                let wait = POLL_MIN.saturating_mul(1 << failures.min(5)).min(POLL_MAX);
                tracing::warn!("sync failed ({e}); retrying in {}s", wait.as_secs());
                tokio::time::sleep(wait).await;
                continue;
            }
            Err(e) => return Err(e),
        }
        // Wait for a local change, a remote change, or Ctrl-C.
        loop {
            tokio::select! {
                got = rx.recv() => {
                    if got.is_none() {
                        return Err(SyncError::Internal("the file watcher stopped".into()));
                    }
                    // Debounce: wait until the folder has been quiet for a moment.
                    while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                    break;
                }
                () = tokio::time::sleep(poll) => {
                    match client.files(ws).changes(cursor, 1).await {
                        Ok(page) if page.latest > cursor => { poll = POLL_MIN; break; }
                        Ok(_) => poll = (poll * 2).min(POLL_MAX),
                        Err(e) => {
                            tracing::warn!("cannot poll the server for changes ({e})");
                            poll = (poll * 2).min(POLL_MAX);
                        }
                    }
                }
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    }
}

/// Changes worth a sync: anything but reads, and not our own temporary download files.
fn is_interesting(ev: &notify::Event) -> bool {
    if matches!(ev.kind, EventKind::Access(_)) {
        return false;
    }
    ev.paths.iter().any(|p| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        !(name.starts_with(PART_PREFIX) && name.ends_with(PART_SUFFIX))
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use notify::event::{AccessKind, CreateKind, ModifyKind};

    use super::*;

    #[test]
    fn reads_and_own_temp_files_do_not_trigger_a_sync() {
        let ev = |kind, path: &str| notify::Event { kind, paths: vec![PathBuf::from(path)], attrs: Default::default() };
        assert!(is_interesting(&ev(EventKind::Create(CreateKind::File), "/d/a.txt")));
        assert!(is_interesting(&ev(EventKind::Modify(ModifyKind::Any), "/d/a.txt")));
        assert!(!is_interesting(&ev(EventKind::Access(AccessKind::Any), "/d/a.txt")));
        assert!(!is_interesting(&ev(EventKind::Create(CreateKind::File), "/d/.cloudsync-0a1b2c.part")));
    }
}
