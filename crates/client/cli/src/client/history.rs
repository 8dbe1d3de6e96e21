//! The local record of transfers between connections and local folders (`cloudsync history`), and
//! `cloudsync local clear`, which erases it, the saved connections and their secrets, the sync pairs, or what
//! is kept of cut-off uploads.
//!
//! One JSON line per run in `history.jsonl` in the state directory (mode 0600). It holds what the user typed
//! as source and destination (`NAME:PATH` or a local path, never a secret), counts and the first errors. The
//! file is capped: past [`MAX_BYTES`] the older half is dropped.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::config::state_dir;
use super::output::{date, print_json, size, table};

/// Size past which the older half of the history is dropped.
const MAX_BYTES: u64 = 4 << 20;
/// Errors kept per run.
const MAX_ERRORS: usize = 5;

/// One recorded run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    /// When it started (Unix seconds).
    pub started: i64,
    /// How long it took, in milliseconds.
    pub millis: u64,
    /// `copy`, `sync`, `move`, `delete` or `pair`.
    pub command: String,
    /// Source as typed.
    pub src: String,
    /// Destination as typed (empty for `delete`).
    pub dst: String,
    /// Files copied (or deleted, for `delete`).
    pub copied: usize,
    /// Files already the same.
    pub unchanged: usize,
    /// Destination files deleted.
    pub deleted: usize,
    /// Bytes copied.
    pub bytes: u64,
    /// Names skipped as unsafe.
    pub refused: usize,
    /// How many files failed, and the first few errors.
    pub failed: usize,
    /// The first errors.
    pub errors: Vec<String>,
    /// Whether it was a dry run.
    #[serde(default)]
    pub dry_run: bool,
    /// The sync pair this run was (`pair run`, `pair daemon`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<String>,
    /// Times a remote pushed back (429, 503, timeouts) and the run slowed down.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub slowdowns: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Run {
    /// A run of `command` from `src` to `dst` that started now.
    pub fn start(command: &str, src: &str, dst: &str) -> (Self, std::time::Instant) {
        let started = time::OffsetDateTime::now_utc().unix_timestamp();
        let run = Self {
            started,
            millis: 0,
            command: command.to_owned(),
            src: src.to_owned(),
            dst: dst.to_owned(),
            copied: 0,
            unchanged: 0,
            deleted: 0,
            bytes: 0,
            refused: 0,
            failed: 0,
            errors: Vec::new(),
            dry_run: false,
            pair: None,
            slowdowns: 0,
        };
        (run, std::time::Instant::now())
    }

    /// Takes the counts and failures of a copy, sync or move.
    pub fn absorb(&mut self, s: &cloudsync_connectors::Summary) {
        self.copied = s.copied.len();
        self.unchanged = s.unchanged;
        self.deleted = s.deleted.len();
        self.bytes = s.bytes;
        self.refused = s.refused.len();
        for f in &s.errors {
            self.fail(if f.path.is_empty() { f.error.clone() } else { format!("{}: {}", f.path, f.error) });
        }
    }

    /// Adds a failure's message (the first few are kept).
    pub fn fail(&mut self, message: String) {
        self.failed += 1;
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(message.chars().take(500).collect());
        }
    }
}

fn file() -> PathBuf {
    state_dir().join("history.jsonl")
}

/// Appends a run. A history that cannot be written is a warning, not a failed transfer.
pub fn record(mut run: Run, began: std::time::Instant) {
    run.millis = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX);
    if let Err(e) = append(&run) {
        eprintln!("warning: the transfer history could not be written: {e:#}");
    }
}

fn append(run: &Run) -> Result<()> {
    let path = file();
    let dir = state_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if std::fs::metadata(&path).map(|m| m.len() > MAX_BYTES).unwrap_or(false) {
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let lines: Vec<&str> = text.lines().collect();
        let kept = lines[lines.len() / 2..].join("\n") + "\n";
        super::config::write_private(&path, kept.as_bytes())?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&path).with_context(|| format!("cannot write {}", path.display()))?;
    let mut line = serde_json::to_vec(run).context("serialising the history")?;
    line.push(b'\n');
    f.write_all(&line).with_context(|| format!("cannot write {}", path.display()))
}

/// The recorded runs, oldest first (lines that cannot be read are skipped).
///
/// # Errors
/// An unreadable file.
pub fn load() -> Result<Vec<Run>> {
    match std::fs::read_to_string(file()) {
        Ok(text) => Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", file().display())),
    }
}

/// `history [--limit N] [--json]`: newest first.
///
/// # Errors
/// An unreadable file.
pub fn show(limit: usize, json: bool) -> Result<()> {
    let mut runs = load()?;
    runs.reverse();
    runs.truncate(limit);
    if json {
        return print_json(&runs);
    }
    if runs.is_empty() {
        eprintln!("No transfers recorded yet.");
        return Ok(());
    }
    let rows = runs
        .iter()
        .map(|r| {
            let when = time::OffsetDateTime::from_unix_timestamp(r.started).map(date).unwrap_or_default();
            let what = match &r.pair {
                Some(pair) => format!("pair {pair}"),
                None => r.command.clone(),
            };
            let what = if r.dry_run { format!("{what} (dry run)") } else { what };
            vec![
                when,
                what,
                r.src.clone(),
                r.dst.clone(),
                r.copied.to_string(),
                r.deleted.to_string(),
                size(r.bytes),
                if r.failed == 0 { "-".into() } else { r.failed.to_string() },
            ]
        })
        .collect();
    table(&["WHEN", "COMMAND", "FROM", "TO", "COPIED", "DELETED", "BYTES", "FAILED"], rows);
    Ok(())
}

/// What `local clear` erases.
#[derive(Debug, Clone, Copy)]
#[expect(clippy::struct_excessive_bools, reason = "one flag a command-line option")]
pub struct Clear {
    pub history: bool,
    pub connections: bool,
    pub pairs: bool,
    pub uploads: bool,
    pub all: bool,
}

/// `local clear [--history] [--connections] [--pairs] [--uploads] [--all]`.
///
/// # Errors
/// Nothing chosen, or files or secrets that cannot be removed.
pub fn clear(what: Clear) -> Result<()> {
    let Clear { history, connections, pairs, uploads, all } = what;
    if !(history || connections || pairs || uploads || all) {
        bail!(
            "say what to clear: --history (the transfer history), --connections (saved connections and their \
             secrets in the OS credential store), --pairs (saved sync pairs), --uploads (what is kept of cut-off \
             uploads) or --all (all of them)"
        );
    }
    if pairs || all {
        let n = super::pairs::forget_all()?;
        eprintln!("Removed {n} sync pair(s).");
    }
    if connections || all {
        let n = super::connections::forget_all()?;
        eprintln!("Removed {n} saved connection(s) and their secrets.");
    }
    if uploads || all {
        let folder = state_dir();
        let (n, busy) = cloudsync_connectors::forget_kept_uploads(&folder)
            .with_context(|| format!("cannot read the kept uploads in {}", folder.join("uploads").display()))?;
        if n == 0 && busy == 0 {
            eprintln!("No cut-off upload was kept.");
        } else if n > 0 {
            eprintln!(
                "Forgot {n} cut-off upload(s); S3 keeps the parts of such an upload (and bills them) until it is \
                 aborted, by a lifecycle rule (AbortIncompleteMultipartUpload) or `aws s3api \
                 list-multipart-uploads` and `abort-multipart-upload`; Dropbox lets a session lapse after a week."
            );
        }
        if busy > 0 {
            eprintln!("{busy} upload(s) in progress were left alone; run this again once their copies end.");
        }
    }
    if history || all {
        match std::fs::remove_file(file()) {
            Ok(()) => eprintln!("Cleared the transfer history."),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => eprintln!("The transfer history was empty."),
            Err(e) => return Err(e).with_context(|| format!("cannot delete {}", file().display())),
        }
    }
    Ok(())
}
