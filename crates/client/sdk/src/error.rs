//! The one error type of the SDK. Callers (the CLI, the sync engine) need two things from a failure: a
//! message a person can act on, and a coarse [`ErrorKind`] to decide what to do next (log in again, retry,
//! give up). How HTTP answers and transport failures become an `Error` lives in `mapping`.

use std::fmt;
use std::time::Duration;

use cloudsync_types::ErrorCode;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What kind of failure an [`Error`] is; match on this, never on message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No valid credentials: log in (again).
    Unauthenticated,
    /// The password was right and the account also needs a second factor: log in again with the code from the
    /// authenticator app (or a recovery code).
    MfaRequired,
    /// Logged in, but the role does not allow this.
    Forbidden,
    /// No such workspace, file, version, user or device (or not visible to the caller).
    NotFound,
    /// The request conflicts with the server's state (stale base version, duplicate name, missing chunks).
    Conflict,
    /// The request was malformed or a value broke a rule (also: bad input to the SDK itself).
    BadRequest,
    /// Too many requests; see [`Error::retry_after`].
    RateLimited,
    /// A body, chunk or field was larger than allowed.
    TooLarge,
    /// The server does not support this (yet).
    NotSupported,
    /// The server failed or is unavailable.
    Server,
    /// The server could not be reached, or the connection broke.
    Network,
    /// TLS could not be established (untrusted certificate, no TLS 1.3, ...).
    Tls,
    /// The server presented a certificate whose fingerprint differs from the pinned one.
    CertificateMismatch,
    /// The server's answer could not be understood.
    Decode,
}

/// An SDK failure. `Display` is the message to show a person; 5xx errors add the request id so the
/// administrator can find the request in the server log.
#[derive(Debug, thiserror::Error)]
#[error("{message}{}", RequestIdSuffix(*.status, .request_id.as_deref()))]
pub struct Error {
    pub(crate) kind: ErrorKind,
    pub(crate) message: String,
    pub(crate) status: Option<u16>,
    pub(crate) request_id: Option<String>,
    pub(crate) code: Option<ErrorCode>,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) source: Option<BoxError>,
}

struct RequestIdSuffix<'a>(Option<u16>, Option<&'a str>);

impl fmt::Display for RequestIdSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestIdSuffix(Some(500..=599), Some(id)) => write!(f, " (request id {id})"),
            _ => Ok(()),
        }
    }
}

impl Error {
    /// An error made by the SDK itself (no HTTP status).
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            status: None,
            request_id: None,
            code: None,
            retry_after: None,
            source: None,
        }
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// True when trying the same request again later may succeed: network failures, rate limiting, and
    /// 502/503/504 from the server or a proxy in front of it.
    pub fn is_retryable(&self) -> bool {
        match self.kind {
            ErrorKind::Network | ErrorKind::RateLimited => true,
            ErrorKind::Server => matches!(self.status, Some(502..=504)),
            _ => false,
        }
    }

    /// The server's machine-readable code, when the server sent an error body.
    pub fn code(&self) -> Option<ErrorCode> {
        self.code
    }

    /// The server's id of the failed request, to look it up in the server log.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    /// How long the server asked to wait before retrying (`Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// The message, without the request-id suffix `Display` adds.
    pub fn message(&self) -> &str {
        &self.message
    }
}
