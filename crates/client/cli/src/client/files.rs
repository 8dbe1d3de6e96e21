//! File commands: push, pull, ls, rm, versions, restore, trash. `WORKSPACE[:PATH]` names a workspace (by name
//! or id) and an optional path inside it.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result, bail};
use cloudsync_sdk::Client;
use cloudsync_sync::{TransferOptions, TransferSummary};
use cloudsync_types::api::{RestoreRequest, Workspace};
use cloudsync_types::{Role, WsPath};
use time::OffsetDateTime;

use super::output::{date, print_json, size, table};
use super::{connect, workspace};

/// Splits `WORKSPACE[:PATH]`.
///
/// # Errors
/// An empty workspace name or an invalid path.
pub fn parse_remote(spec: &str) -> Result<(String, WsPath)> {
    let (ws, path) = spec.split_once(':').unwrap_or((spec, ""));
    if ws.is_empty() {
        bail!("{spec:?} names no workspace: write WORKSPACE or WORKSPACE:PATH");
    }
    let path =
        WsPath::parse_prefix(path.trim_start_matches('/')).with_context(|| format!("invalid path in {spec:?}"))?;
    Ok((ws.to_owned(), path))
}

pub(crate) async fn resolve(spec: &str) -> Result<(Client, Workspace, WsPath)> {
    let (name, path) = parse_remote(spec)?;
    let client = connect()?;
    let w = workspace(&client, &name).await?;
    Ok((client, w, path))
}

fn require_file(path: &WsPath, spec: &str) -> Result<()> {
    if path.is_root() {
        bail!("{spec:?} names a whole workspace; write WORKSPACE:PATH to name a file");
    }
    Ok(())
}

fn options() -> TransferOptions {
    TransferOptions {
        progress: std::io::stderr().is_terminal(),
        device_name: gethostname::gethostname().to_string_lossy().into_owned(),
    }
}

/// Prints what a transfer did. `conflicts_fail` is true for a push, whose conflicted files were not uploaded
/// (an error the user must act on); a pull's conflicts are local copies kept beside the download, which are
/// listed but are not a failure.
pub(crate) fn report(verb: &str, s: &TransferSummary, json: bool, conflicts_fail: bool) -> Result<()> {
    if json {
        print_json(s)?;
    } else {
        print_summary(verb, s);
    }
    if conflicts_fail && s.files_conflicted > 0 {
        bail!(
            "{} file(s) changed on the server since your copy and were not overwritten; pull them first",
            s.files_conflicted
        );
    }
    Ok(())
}

/// Prints a transfer's warnings, conflicts and counts on stderr.
pub(crate) fn print_summary(verb: &str, s: &TransferSummary) {
    for w in &s.warnings {
        eprintln!("warning: {w}");
    }
    for c in &s.conflicts {
        eprintln!("conflict: {c}");
    }
    let mut moved = String::new();
    if s.files_deleted > 0 {
        moved.push_str(&format!(", {} deleted", s.files_deleted));
    }
    if s.files_renamed > 0 {
        moved.push_str(&format!(", {} renamed", s.files_renamed));
    }
    eprintln!(
        "{verb}: {} files scanned, {} uploaded, {} downloaded{moved}, {} unchanged, {} conflicted; {} sent, {} received ({} new chunks{}, {} deduplicated) in {:.1}s",
        s.files_scanned,
        s.files_uploaded,
        s.files_downloaded,
        s.files_unchanged,
        s.files_conflicted,
        size(s.bytes_uploaded),
        size(s.bytes_downloaded),
        s.chunks_uploaded,
        if s.chunks_delta > 0 { format!(" of which {} as deltas", s.chunks_delta) } else { String::new() },
        s.chunks_deduplicated,
        s.seconds
    );
}

/// Uploads a local folder or file to `WORKSPACE[:PATH]` and returns what it did (printing nothing).
///
/// # Errors
/// Unreadable local files, server errors.
pub async fn push_summary(local: &Path, remote: &str, passphrase_stdin: bool) -> Result<TransferSummary> {
    let (client, w, path) = resolve(remote).await?;
    Ok(if w.e2e_encryption {
        let access = super::e2ee::file_access(&client, &w, passphrase_stdin).await?;
        cloudsync_sync::e2ee_push(&client, w.id, local, &path, access, &options()).await?
    } else {
        cloudsync_sync::push(&client, w.id, local, &path, &options()).await?
    })
}

/// Downloads `WORKSPACE[:PATH]` into a local folder and returns what it did (printing nothing).
///
/// # Errors
/// Server errors, integrity failures, or unwritable local paths.
pub async fn pull_summary(remote: &str, local: &Path, passphrase_stdin: bool) -> Result<TransferSummary> {
    let (client, w, path) = resolve(remote).await?;
    Ok(if w.e2e_encryption {
        let access = super::e2ee::file_access(&client, &w, passphrase_stdin).await?;
        cloudsync_sync::e2ee_pull(&client, w.id, &path, local, access, &options()).await?
    } else {
        cloudsync_sync::pull(&client, w.id, &path, local, &options()).await?
    })
}

/// `cloudsync push LOCAL WORKSPACE[:PATH]`.
///
/// # Errors
/// Unreadable local files, server errors, or conflicts.
pub async fn push(local: &Path, remote: &str, passphrase_stdin: bool, json: bool) -> Result<()> {
    let s = push_summary(local, remote, passphrase_stdin).await?;
    report("push", &s, json, true)
}

/// `cloudsync pull WORKSPACE[:PATH] LOCAL`. A local file that differs from the server's is kept as a
/// conflicted copy beside the download; those are listed, and are not an error.
///
/// # Errors
/// Server errors, integrity failures, or unwritable local paths.
pub async fn pull(remote: &str, local: &Path, passphrase_stdin: bool, json: bool) -> Result<()> {
    let s = pull_summary(remote, local, passphrase_stdin).await?;
    report("pull", &s, json, false)
}

/// `cloudsync ls WORKSPACE[:PATH]`.
///
/// # Errors
/// Server errors.
pub async fn ls(remote: &str, passphrase_stdin: bool, json: bool) -> Result<()> {
    let (client, w, path) = resolve(remote).await?;
    if w.e2e_encryption {
        let access = super::e2ee::file_access(&client, &w, passphrase_stdin).await?;
        let files = cloudsync_sync::e2ee_list(&client, w.id, &path, &access).await?;
        let rows = files.iter().map(|f| (f.size, f.modified_at, f.version, f.path.clone())).collect();
        return print_listing(&files, rows, json);
    }
    let files = client.files(w.id).list_all(&path).await?;
    let rows = files.iter().map(|f| (f.size, f.modified_at, f.version, f.path.to_string())).collect();
    print_listing(&files, rows, json)
}

/// Prints a listing: `files` as JSON, or `rows` (size, modified, version, path) as a table.
fn print_listing<T: serde::Serialize>(
    files: &[T],
    rows: Vec<(u64, time::OffsetDateTime, u64, String)>,
    json: bool,
) -> Result<()> {
    if json {
        return print_json(&files);
    }
    table(
        &["SIZE", "MODIFIED", "VERSION", "PATH"],
        rows.into_iter().map(|(s, m, v, p)| vec![size(s), date(m), v.to_string(), p]).collect(),
    );
    Ok(())
}

/// `cloudsync rm WORKSPACE:PATH`.
///
/// # Errors
/// Nothing at the path, or a role below Admin.
pub async fn rm(remote: &str, passphrase_stdin: bool, json: bool) -> Result<()> {
    let (client, w, path) = resolve(remote).await?;
    require_file(&path, remote)?;
    let r = if w.e2e_encryption {
        // The server knows files only by their path ids: each file under the path is deleted by its own.
        let access = super::e2ee::file_access(&client, &w, passphrase_stdin).await?;
        let files = cloudsync_sync::e2ee_list(&client, w.id, &path, &access).await?;
        if files.is_empty() {
            bail!("nothing at {remote:?} (see `cloudsync ls`)");
        }
        let mut deleted = 0;
        for f in &files {
            deleted += client.files(w.id).delete(&access.server_path(&f.path)?).await?.deleted;
        }
        cloudsync_types::api::DeleteResponse { deleted }
    } else {
        client.files(w.id).delete(&path).await?
    };
    if json {
        return print_json(&r);
    }
    eprintln!("Moved {} file(s) to the trash of {:?} (restore with `cloudsync restore`).", r.deleted, w.name);
    Ok(())
}

/// `cloudsync versions WORKSPACE:PATH`.
///
/// # Errors
/// Unknown file.
pub async fn versions(remote: &str, passphrase_stdin: bool, json: bool) -> Result<()> {
    let (client, w, path) = resolve(remote).await?;
    require_file(&path, remote)?;
    let path = if w.e2e_encryption {
        // Listed under its path id; sizes are what the server stores (sealed and padded).
        super::e2ee::file_access(&client, &w, passphrase_stdin).await?.server_path(path.as_str())?
    } else {
        path
    };
    let list = client.files(w.id).versions(&path).await?;
    if json {
        return print_json(&list);
    }
    table(
        &["VERSION", "SIZE", "CREATED", "BY", ""],
        list.iter()
            .map(|v| {
                vec![
                    v.version.to_string(),
                    size(v.size),
                    date(v.created_at),
                    v.created_by.clone().unwrap_or_default(),
                    if v.current { "current".into() } else { String::new() },
                ]
            })
            .collect(),
    );
    Ok(())
}

/// `cloudsync restore WORKSPACE:PATH [--version V]`.
///
/// # Errors
/// Nothing to restore, or a role below Admin.
pub async fn restore(remote: &str, version: Option<u64>, passphrase_stdin: bool, json: bool) -> Result<()> {
    let (client, w, path) = resolve(remote).await?;
    require_file(&path, remote)?;
    if w.e2e_encryption {
        // An old version is signed again on this device as a new version; the server cannot tell that from
        // a push, so the role restoring needs is checked here.
        if w.role < Role::Admin {
            bail!(
                "restoring needs the admin role in {:?} (yours is {}); ask an admin or owner to restore it",
                w.name,
                w.role
            );
        }
        let access = super::e2ee::file_access(&client, &w, passphrase_stdin).await?;
        let r = cloudsync_sync::e2ee_restore(&client, w.id, &path, version, &access, &options()).await?;
        if json {
            return print_json(&r);
        }
        let how = if r.from_trash { " from the trash" } else { "" };
        eprintln!("Restored {}{how} (version {} is now version {}).", r.path, r.restored_version, r.version);
        return Ok(());
    }
    let f = client.files(w.id).restore(&RestoreRequest { path, version }).await?;
    if json {
        return print_json(&f);
    }
    eprintln!("Restored {} (now version {}).", f.path, f.version);
    Ok(())
}

/// `cloudsync trash list WORKSPACE`.
///
/// # Errors
/// Server errors.
pub async fn trash(name: &str, passphrase_stdin: bool, json: bool) -> Result<()> {
    let client = connect()?;
    let w = workspace(&client, name).await?;
    let rows: Vec<(OffsetDateTime, u64, u64, String)> = if w.e2e_encryption {
        let access = super::e2ee::file_access(&client, &w, passphrase_stdin).await?;
        let list = cloudsync_sync::e2ee_trash(&client, w.id, &access).await?;
        if json {
            return print_json(&list);
        }
        list.into_iter().map(|t| (t.deleted_at, t.size, t.version, t.path)).collect()
    } else {
        let list = client.files(w.id).trash().await?;
        if json {
            return print_json(&list);
        }
        list.into_iter().map(|t| (t.deleted_at, t.size, t.version, t.path.to_string())).collect()
    };
    table(
        &["DELETED", "SIZE", "VERSION", "PATH"],
        rows.into_iter().map(|(d, s, v, p)| vec![date(d), size(s), v.to_string(), p]).collect(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_push_conflicts_fail() {
        let s = TransferSummary {
            files_conflicted: 1,
            conflicts: vec!["a.txt: your local copy differed from the server".into()],
            ..TransferSummary::default()
        };
        assert!(report("push", &s, false, true).is_err());
        assert!(report("pull", &s, false, false).is_ok());
        assert!(report("push", &TransferSummary::default(), false, true).is_ok());
    }

    #[test]
    fn remote_specs_parse() {
        assert_eq!(parse_remote("Team").expect("ws").1, WsPath::root());
        let (ws, p) = parse_remote("Team:docs/a.txt").expect("path");
        assert_eq!((ws.as_str(), p.as_str()), ("Team", "docs/a.txt"));
        assert_eq!(parse_remote("Team:/docs").expect("leading slash").1.as_str(), "docs");
        assert!(parse_remote(":x").is_err());
        assert!(parse_remote("Team:../x").is_err());
    }
}
