//! `cloudsync sync LOCAL_DIR WORKSPACE[:PATH]` (two-way, optionally `--watch`) and `cloudsync status
//! LOCAL_DIR`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cloudsync_sync::{PlanCounts, PlanSummary, SyncOptions, SyncReport};

use super::config::{ClientConfig, state_dir};
use super::connect;
use super::files::{print_summary, resolve};
use super::output::print_json;

fn options(dry_run: bool) -> Result<SyncOptions> {
    let server = ClientConfig::load()?
        .server
        .context("not logged in: run `cloudsync login --server https://HOST:PORT --email EMAIL`")?;
    Ok(SyncOptions {
        progress: std::io::stderr().is_terminal(),
        device_name: gethostname::gethostname().to_string_lossy().into_owned(),
        state_dir: index_dir(),
        server,
        dry_run,
        e2ee: None,
    })
}

/// Where sync indexes are kept.
fn index_dir() -> PathBuf {
    state_dir().join("index")
}

/// `cloudsync sync LOCAL_DIR WORKSPACE[:PATH] [--watch] [--dry-run] [--json]`. On an end-to-end encrypted
/// workspace the member's keys are unlocked first (with `passphrase_stdin`, the passphrase is read from
/// standard input).
///
/// # Errors
/// A missing local folder, server errors, or a folder already synced elsewhere.
pub async fn sync(
    local: &Path,
    remote: &str,
    watch: bool,
    dry_run: bool,
    passphrase_stdin: bool,
    json: bool,
) -> Result<()> {
    if watch && dry_run {
        bail!("--watch and --dry-run do not go together: a dry run changes nothing, so there is nothing to watch");
    }
    let (client, w, path) = resolve(remote).await?;
    let mut opts = options(dry_run)?;
    if w.e2e_encryption {
        opts.e2ee = Some(super::e2ee::file_access(&client, &w, passphrase_stdin).await?);
    }
    if watch {
        let shown = |r: &SyncReport| {
            if let Err(e) = print_report(r, false, json) {
                eprintln!("warning: cannot print the sync report: {e}");
            }
        };
        eprintln!("Watching {} (Ctrl-C to stop)…", local.display());
        return Ok(cloudsync_sync::watch(&client, w.id, &path, local, &opts, shown).await?);
    }
    let report = cloudsync_sync::sync(&client, w.id, &path, local, &opts).await?;
    print_report(&report, dry_run, json)
}

/// A sync's `--json` document after a real run: the counts and bytes, with the plan as counts per kind of step
/// (a dry run prints every path instead, as that is what it is asked for; a sync of 100,000 files should not
/// print a 100,000-line document).
#[derive(serde::Serialize)]
struct RunReport<'a> {
    #[serde(flatten)]
    summary: &'a cloudsync_sync::TransferSummary,
    plan: PlanCounts,
    cursor: u64,
    rounds: usize,
}

fn print_report(r: &SyncReport, dry_run: bool, json: bool) -> Result<()> {
    if json {
        if dry_run {
            return print_json(r);
        }
        return print_json(&RunReport {
            summary: &r.summary,
            plan: r.plan.counts(),
            cursor: r.cursor,
            rounds: r.rounds,
        });
    }
    if dry_run {
        for w in &r.summary.warnings {
            eprintln!("warning: {w}");
        }
        print_plan(&r.plan);
    } else {
        print_summary("sync", &r.summary);
    }
    Ok(())
}

fn print_plan(p: &PlanSummary) {
    if p.is_empty() {
        println!("Up to date: nothing to sync.");
        return;
    }
    let groups: [(&str, &Vec<String>); 6] = [
        ("upload", &p.upload),
        ("download", &p.download),
        ("conflict (both kept)", &p.conflicts),
        ("delete on server (to trash)", &p.delete_remote),
        ("delete locally", &p.delete_local),
        ("rename", &p.renames),
    ];
    for (what, paths) in groups {
        for path in paths {
            println!("{what}: {path}");
        }
    }
}

/// `cloudsync status LOCAL_DIR [--json] [--forget]`.
///
/// # Errors
/// A folder never synced, or server errors.
pub async fn status(local: &Path, forget: bool, passphrase_stdin: bool, json: bool) -> Result<()> {
    if forget {
        let removed = cloudsync_sync::forget(&index_dir(), local)?;
        if json {
            return print_json(&serde_json::json!({ "forgotten": removed }));
        }
        if removed {
            eprintln!("{} is no longer paired; its files were not touched.", local.display());
        } else {
            eprintln!("{} was not paired with any workspace.", local.display());
        }
        return Ok(());
    }
    let (server, ws, _) = cloudsync_sync::synced_pair(&index_dir(), local)?;
    let mut opts = options(true)?;
    if opts.server != server {
        bail!(
            "{} is synced with {server}, but you are logged in to {}; log in to {server} first",
            local.display(),
            opts.server
        );
    }
    let client = connect()?;
    let w = client.workspaces().get(ws).await?;
    if w.e2e_encryption {
        opts.e2ee = Some(super::e2ee::file_access(&client, &w, passphrase_stdin).await?);
    }
    let st = cloudsync_sync::status(&client, local, &opts).await?;
    if json {
        return print_json(&st);
    }
    let remote = if st.remote.is_empty() { "/".to_owned() } else { st.remote.clone() };
    println!("{} syncs with {remote} in workspace {} on {}", local.display(), st.workspace, st.server);
    match st.synced_at_ms.and_then(|ms| time::OffsetDateTime::from_unix_timestamp(ms / 1000).ok()) {
        Some(t) => println!("Last sync: {} ({} files tracked)", super::output::date(t), st.files_tracked),
        None => println!("Last sync: never completed"),
    }
    for w in &st.warnings {
        eprintln!("warning: {w}");
    }
    print_plan(&st.pending);
    Ok(())
}
