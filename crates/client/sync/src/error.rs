//! The sync engine's error type. Callers need to tell apart a server/network failure (possibly worth a
//! retry), a local file-system failure (the message names the path so the user can fix it), a download that
//! failed verification, and a bad local argument.

use std::io;
use std::path::{Path, PathBuf};

/// Why a [`crate::push`] or [`crate::pull`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The server refused a request or could not be reached.
    #[error(transparent)]
    Api(#[from] cloudsync_sdk::Error),
    /// A local file-system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// Downloaded content (or the server's keys) did not verify; nothing was written under the final name.
    #[error("integrity check failed: {0}")]
    Integrity(String),
    /// The local path given cannot be used.
    #[error("{0}")]
    InvalidLocal(String),
    /// Nothing lives at the server path given.
    #[error("{0}")]
    RemoteNotFound(String),
    /// The server's copy changed while this command ran; nothing was overwritten, and running it again
    /// starts from the new state.
    #[error("{0}")]
    Conflict(String),
    /// Something that cannot happen did: a background task panicked, or an internal invariant broke.
    #[error("internal error: {0}; this is a bug; please report it")]
    Internal(String),
}

impl SyncError {
    /// True when running the same transfer again later may succeed (network trouble, rate limiting, an
    /// overloaded server). Local and integrity failures need attention first.
    pub fn is_retryable(&self) -> bool {
        match self {
            SyncError::Api(e) => e.is_retryable(),
            SyncError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ),
            SyncError::Conflict(_) => true,
            SyncError::Integrity(_)
            | SyncError::InvalidLocal(_)
            | SyncError::RemoteNotFound(_)
            | SyncError::Internal(_) => false,
        }
    }

    /// An I/O error about `path`.
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        SyncError::Io { path: path.to_path_buf(), source }
    }

    /// A background task panicked or was cancelled; surfaced instead of crashing the caller.
    pub(crate) fn task(e: tokio::task::JoinError) -> Self {
        SyncError::Internal(format!("a background task failed unexpectedly: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_error_names_the_path() {
        let e = SyncError::io(Path::new("/tmp/x/y.txt"), io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(e.to_string().contains("/tmp/x/y.txt"), "{e}");
        assert!(!e.is_retryable());
        assert!(!SyncError::Integrity("x".into()).is_retryable());
    }

    #[tokio::test]
    async fn a_panicked_task_is_an_internal_error() {
        let joined = tokio::spawn(async { panic!("boom") }).await.expect_err("panicked");
        let e = SyncError::task(joined);
        assert!(matches!(e, SyncError::Internal(_)), "{e}");
        assert!(e.to_string().ends_with("this is a bug; please report it"), "{e}");
        assert!(!e.is_retryable());
    }
}
