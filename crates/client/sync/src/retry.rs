//! Retrying idempotent requests. Network trouble, rate limiting and an overloaded server are common and
//! usually brief, so a request that can safely be sent twice is tried a few times before the transfer
//! gives up.
//!
//! Only idempotent requests go through here: fetching keys, listing, asking which chunks are missing,
//! uploading chunks (content-addressed, so a repeat stores nothing new) and downloading a file (restarted
//! from the beginning into a fresh temporary file). A commit is never retried: when its answer is lost the
//! server may already have stored it, and sending it again against the same base version would then be
//! refused as a conflict (or, without a base version, create a second version).

use std::time::Duration;

use crate::SyncError;

/// Attempts for an idempotent request when the failure is retryable.
pub(crate) const ATTEMPTS: u32 = 3;
/// Longest wait between attempts, even when the server asks for more.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// An error that may say "try again later".
pub(crate) trait Retryable: std::fmt::Display {
    /// True when the same request may succeed later.
    fn is_retryable(&self) -> bool;
    /// How long the server asked to wait, if it did.
    fn retry_after(&self) -> Option<Duration>;
}

impl Retryable for cloudsync_sdk::Error {
    fn is_retryable(&self) -> bool {
        cloudsync_sdk::Error::is_retryable(self)
    }

    fn retry_after(&self) -> Option<Duration> {
        cloudsync_sdk::Error::retry_after(self)
    }
}

impl Retryable for SyncError {
    fn is_retryable(&self) -> bool {
        SyncError::is_retryable(self)
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            SyncError::Api(e) => e.retry_after(),
            _ => None,
        }
    }
}

/// Runs an idempotent request up to [`ATTEMPTS`] times while it fails with a retryable error, waiting
/// between attempts as the server asked (or 1 s, 2 s, …), at most [`MAX_WAIT`].
pub(crate) async fn retry<T, E, F, Fut>(mut op: F) -> Result<T, E>
where
    E: Retryable,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if e.is_retryable() && attempt < ATTEMPTS => {
                let wait = e.retry_after().unwrap_or(Duration::from_secs(u64::from(attempt))).min(MAX_WAIT);
                tracing::warn!("{e}; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::io;

    use super::*;

    fn timed_out() -> SyncError {
        SyncError::io(std::path::Path::new("x"), io::Error::from(io::ErrorKind::TimedOut))
    }

    #[tokio::test(start_paused = true)]
    async fn retries_retryable_failures_a_few_times() {
        let calls = Cell::new(0);
        let r: Result<(), SyncError> = retry(|| {
            calls.set(calls.get() + 1);
            async { Err(timed_out()) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.get(), ATTEMPTS);

        calls.set(0);
        let r = retry(|| {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { if n < 2 { Err(timed_out()) } else { Ok(n) } }
        })
        .await;
        assert_eq!(r.expect("second attempt"), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_retry_other_failures() {
        let calls = Cell::new(0);
        let r: Result<(), SyncError> = retry(|| {
            calls.set(calls.get() + 1);
            async { Err(SyncError::Integrity("bad".into())) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.get(), 1);
    }
}
