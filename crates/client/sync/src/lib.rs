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

mod batch;
mod chunking;
mod download;
mod error;
mod keys;
mod localpath;
mod progress;
mod pull;
mod push;
mod scan;
mod upload;

use serde::Serialize;

pub use error::SyncError;
pub use pull::pull;
pub use push::push;

/// What a [`push`] or [`pull`] did; the CLI prints it (as text or JSON).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TransferSummary {
    /// Files considered: local regular files with valid names (push) or remote files listed (pull).
    pub files_scanned: u64,
    /// Files committed as a new version on the server.
    pub files_uploaded: u64,
    /// Files written locally.
    pub files_downloaded: u64,
    /// Files whose content was already identical on both sides.
    pub files_unchanged: u64,
    /// Files deleted (push and pull never delete; kept for the sync engine to come).
    pub files_deleted: u64,
    /// Files not uploaded because the server copy changed meanwhile; see `conflicts`.
    pub files_conflicted: u64,
    /// Entries left alone: symlinks, special files, invalid or unsafe names, unreadable files.
    pub files_skipped: u64,
    /// Plaintext bytes of chunks actually sent.
    pub bytes_uploaded: u64,
    /// Bytes actually downloaded.
    pub bytes_downloaded: u64,
    /// Chunks actually sent.
    pub chunks_uploaded: u64,
    /// Chunks referenced but not sent because the server (or the same batch) already had them.
    pub chunks_deduplicated: u64,
    /// Wall-clock duration.
    pub seconds: f64,
    /// One line per conflicted file.
    pub conflicts: Vec<String>,
    /// One line per skipped entry or other oddity worth telling the user.
    pub warnings: Vec<String>,
}

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
        self.warnings.push(message);
    }

    fn skip(&mut self, message: String) {
        self.files_skipped += 1;
        self.warn(message);
    }
}
