//! One-shot folder transfer between a local directory and a CloudSync workspace: [`push`] uploads what
//! changed, [`pull`] downloads what changed. This is the engine behind `cloudsync push` / `cloudsync pull`;
//! a continuous sync daemon can later be built from the same pieces.
//!
//! Why it is shaped this way:
//!
//! - **Content addressing, decided on the client.** Files are cut with the shared FastCDC chunker and every
//!   chunk is named by its keyed BLAKE3 hash under the workspace chunk-id key, so the client can ask the
//!   server which chunks it already holds and upload only the rest. A small edit to a large file re-sends
//!   only the chunks around the edit.
//! - **Bounded memory.** Files are streamed through the chunker and uploaded in batches (about 16 MiB or
//!   2000 chunks), with at most two batches in memory; a file is never read into memory whole, so files
//!   far larger than RAM work.
//! - **Nothing is overwritten by surprise.** A push commits each file against the server version it
//!   compared with; when someone else changed the file meanwhile the server refuses (409) and the push
//!   reports a conflict instead of overwriting.
//! - **The server is not trusted with the local file system.** Every path a pull receives is validated
//!   again, component by component; nothing escapes the target folder, symlinks on disk are never followed,
//!   and a download is verified (size and keyed content hash) in a temporary file before it is renamed
//!   into place, so a killed or tampered download never leaves a partial file under the final name.
//! - **A pull never loses a local edit.** A local file that differs from the server's is renamed to a
//!   "conflicted copy" beside the downloaded one instead of being overwritten.

mod batch;
mod chunking;
mod conflict;
mod delta;
mod e2ee;
mod e2ee_cache;
mod e2ee_sync;
mod engine;
mod error;
mod fetch;
mod ignore;
mod index;
mod keys;
mod localpath;
mod plan;
pub mod progress;
mod pull;
mod push;
mod retry;
mod scan;
mod upload;
mod watch;

use serde::Serialize;

pub use e2ee::{
    E2eeEntry, E2eeFiles, E2eeRestored, E2eeTrashEntry, Writers, e2ee_list, e2ee_pull, e2ee_push, e2ee_restore,
    e2ee_trash,
};
pub use engine::{MAX_ROUNDS, Status, SyncOptions, SyncReport, forget, status, sync, synced_pair};
pub use error::SyncError;
pub use ignore::IGNORE_FILE;
pub use plan::{PlanCounts, PlanSummary};
pub use pull::pull;
pub use push::push;
pub use watch::watch;

/// What a [`push`] or [`pull`] did; the CLI prints it (as text or JSON).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TransferSummary {
    /// Files considered: local regular files with valid names (push) or remote files listed (pull).
    pub files_scanned: u64,
    /// Files committed as a new version on the server.
    pub files_uploaded: u64,
    /// Files written locally.
    pub files_downloaded: u64,
    /// Files deleted: moved to the server's trash (deleted locally), or deleted locally (deleted on the
    /// server, restorable from its trash).
    pub files_deleted: u64,
    /// Files renamed on one side and renamed the same way on the other, without transferring content.
    pub files_renamed: u64,
    /// Files whose content was already identical on both sides.
    pub files_unchanged: u64,
    /// Push: files not uploaded because the server copy changed meanwhile. Pull: local files that differed
    /// from the server's and were kept as a conflicted copy beside the download. See `conflicts`.
    pub files_conflicted: u64,
    /// Entries left alone: symlinks, special files, invalid or unsafe names, unreadable files.
    pub files_skipped: u64,
    /// Bytes of chunk content actually sent: whole chunks, and deltas for chunks sent as deltas.
    pub bytes_uploaded: u64,
    /// Bytes actually downloaded.
    pub bytes_downloaded: u64,
    /// Chunks actually sent.
    pub chunks_uploaded: u64,
    /// Chunks referenced but not sent because the server (or the same batch) already had them.
    pub chunks_deduplicated: u64,
    /// Of `chunks_uploaded`, chunks sent as a delta against the bytes they replace (their share of
    /// `bytes_uploaded` is the delta's size).
    pub chunks_delta: u64,
    /// Wall-clock duration.
    pub seconds: f64,
    /// One line per conflicted file.
    pub conflicts: Vec<String>,
    /// One line per skipped entry or other oddity worth telling the user; at most [`MAX_WARNINGS`] of them,
    /// then one line saying how many more there were.
    pub warnings: Vec<String>,
    /// Warnings left out of `warnings` (its last line then says how many).
    pub warnings_omitted: u64,
}

/// Warnings kept in a [`TransferSummary`]; a tree with many unsyncable entries must not grow it without
/// bound.
pub const MAX_WARNINGS: usize = 1000;

/// How to run a transfer.
#[derive(Debug, Clone)]
pub struct TransferOptions {
    /// Show progress bars on stderr (only when stderr is a terminal).
    pub progress: bool,
    /// This device's name, for logs.
    pub device_name: String,
}

impl TransferSummary {
    fn warn(&mut self, message: String) {
        tracing::debug!("{message}");
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(message);
            return;
        }
        self.warnings_omitted += 1;
        let n = self.warnings_omitted;
        let more = format!("... and {n} more warning{}", if n == 1 { "" } else { "s" });
        if n == 1 {
            self.warnings.push(more);
        } else if let Some(last) = self.warnings.last_mut() {
            *last = more;
        }
    }

    fn skip(&mut self, message: String) {
        self.files_skipped += 1;
        self.warn(message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_capped_with_a_count_of_the_rest() {
        let mut s = TransferSummary::default();
        for i in 0..MAX_WARNINGS {
            s.skip(format!("w{i}"));
        }
        assert_eq!(s.warnings.len(), MAX_WARNINGS);
        s.skip("one more".into());
        assert_eq!(s.warnings.last().map(String::as_str), Some("... and 1 more warning"));
        for _ in 0..41 {
            s.warn("and more".into());
        }
        assert_eq!(s.warnings.len(), MAX_WARNINGS + 1);
        assert_eq!(s.warnings.last().map(String::as_str), Some("... and 42 more warnings"));
        assert_eq!(s.warnings[MAX_WARNINGS - 1], format!("w{}", MAX_WARNINGS - 1));
        assert_eq!(s.files_skipped, MAX_WARNINGS as u64 + 1);
    }
}
