//! The error body every API error carries, and the closed set of machine-readable codes.

use serde::{Deserialize, Serialize};

/// Stable, machine-readable error codes. Clients match on these, never on message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request was malformed; the message says which field and why.
    BadRequest,
    /// A workspace path broke a rule.
    InvalidPath,
    /// No valid credentials were presented.
    Unauthenticated,
    /// The password was right, and the account also needs a code from its authenticator app (or a recovery
    /// code): send the login again with `totp`.
    MfaRequired,
    /// The session is too old for this security change: send the account password with the request.
    ReauthenticationRequired,
    /// The credentials are valid but the role is too low.
    Forbidden,
    /// Nothing with that id or path (also: a workspace the caller is not a member of).
    NotFound,
    /// The action conflicts with the current state (stale base version, duplicate name, last owner).
    Conflict,
    /// A commit named chunks the server does not hold for this workspace.
    MissingChunks,
    /// Too many attempts; retry after the Retry-After header.
    RateLimited,
    /// The request body or a field is larger than allowed.
    PayloadTooLarge,
    /// The feature is not available (yet) for this request.
    NotSupported,
    /// An unexpected server failure; details are in the server log under the request id.
    Internal,
    /// The server cannot serve right now; retry.
    Unavailable,
}

impl ErrorCode {
    /// The HTTP status this code is sent with.
    pub const fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidPath => 400,
            ErrorCode::Unauthenticated | ErrorCode::MfaRequired => 401,
            ErrorCode::Forbidden | ErrorCode::ReauthenticationRequired => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict | ErrorCode::MissingChunks => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::NotSupported => 501,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }
}

/// `{code, message, request_id}`: the body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiErrorBody {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// What went wrong and what to do, for people.
    pub message: String,
    /// The id of the request, to find it in the server log.
    pub request_id: String,
}
