//! Store errors: a small closed set of kinds the layers above act on, plus the backend's error as context.

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The thing does not exist.
    #[error("not found")]
    NotFound,
    /// A uniqueness rule or the current state forbids it.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The change would leave a workspace without an Owner.
    #[error("a workspace must keep at least one owner")]
    LastOwner,
    /// The commit's base version is not the live one.
    #[error("stale base version: the file is at version {current:?}")]
    StaleBase {
        /// The live version (None: no live file).
        current: Option<u64>,
    },
    /// The database is busy or unreachable; retrying may help.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Any other database failure.
    #[error("database error: {0}")]
    Backend(String),
}

impl StoreError {
    /// True when the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;
