//! The services' error: a closed set of kinds the HTTP layer maps to statuses in one place.

use cloudsync_blob::BlobError;
use cloudsync_store::StoreError;
use cloudsync_types::{ChunkId, PathError};

/// Why an action was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// No valid session.
    #[error("{0}")]
    Unauthenticated(String),
    /// The password was right; a second factor is needed.
    #[error(
        "this account uses two-factor authentication: give the code from your authenticator app (or a recovery code)"
    )]
    MfaRequired,
    /// The session is too old for a security change; the password is needed.
    #[error("this session was opened more than 15 minutes ago: confirm your password for this security change")]
    ReauthenticationRequired,
    /// Too many attempts.
    #[error("too many attempts; try again in {retry_after_secs} seconds")]
    RateLimited {
        /// Seconds until the window resets.
        retry_after_secs: u64,
    },
    /// The role is too low, or the rule forbids it.
    #[error("{0}")]
    Forbidden(String),
    /// Nothing by that id or path (or not visible to the caller).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The state forbids it.
    #[error("{0}")]
    Conflict(String),
    /// A commit referenced chunks the workspace does not hold.
    #[error("{} chunks referenced by the manifest are not stored yet; upload them first", .0.len())]
    MissingChunks(Vec<ChunkId>),
    /// A download named chunks the workspace does not hold.
    #[error("{} of the {asked} requested chunks are not in this workspace (first: {}); list the files again and fetch what their manifests name", .missing.len(), first_ids(.missing))]
    ChunksNotFound {
        /// The chunks not held (without repeats).
        missing: Vec<ChunkId>,
        /// How many ids were asked for.
        asked: usize,
    },
    /// A path broke a rule.
    #[error("invalid path: {0}")]
    InvalidPath(#[from] PathError),
    /// The input is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// Input over a size cap.
    #[error("{0}")]
    TooLarge(String),
    /// Not available.
    #[error("{0}")]
    NotSupported(String),
    /// Metadata store failure.
    #[error("metadata store: {0}")]
    Store(StoreError),
    /// Chunk store failure.
    #[error("chunk store: {0}")]
    Blob(#[from] BlobError),
    /// Anything else unexpected.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for CoreError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => CoreError::NotFound("record"),
            StoreError::LastOwner => {
                CoreError::Conflict("a workspace must keep at least one owner: make another member owner first".into())
            }
            StoreError::StaleBase { current } => CoreError::Conflict(match current {
                Some(v) => format!(
                    "the file changed on the server (now at version {v}) since your copy was taken; nothing was overwritten"
                ),
                None => "the file was deleted on the server since your copy was taken; nothing was overwritten".into(),
            }),
            other => CoreError::Store(other),
        }
    }
}

impl CoreError {
    /// True when retrying may help.
    pub fn is_retryable(&self) -> bool {
        match self {
            CoreError::Store(e) => e.is_retryable(),
            CoreError::Blob(e) => e.is_retryable(),
            CoreError::RateLimited { .. } => true,
            _ => false,
        }
    }
}

/// The first few ids of a list, for messages.
fn first_ids(ids: &[ChunkId]) -> String {
    const SHOWN: usize = 3;
    let mut out = ids.iter().take(SHOWN).map(ChunkId::to_hex).collect::<Vec<_>>().join(", ");
    if ids.len() > SHOWN {
        out.push_str(", ...");
    }
    out
}

/// Result of a service call.
pub type CoreResult<T> = Result<T, CoreError>;
