//! The one API error type. Its status mapping lives in [`From<CoreError>`] and [`ErrorCode::http_status`];
//! every error body is `{code, message, request_id}`. Details of 5xx errors go to the log under the request
//! id, never to the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cloudsync_server_core::CoreError;
use cloudsync_types::{ApiErrorBody, ErrorCode};

tokio::task_local! {
    /// The id of the request being served (set by the request-id middleware).
    pub static REQUEST_ID: String;
}

/// The current request's id, or "-" outside a request.
pub fn request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_else(|_| "-".to_owned())
}

/// An error answered to the client.
#[derive(Debug)]
pub struct ApiError {
    /// Machine-readable code (decides the status).
    pub code: ErrorCode,
    /// What went wrong and what to do.
    pub message: String,
    /// Seconds for Retry-After (429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retry_after: None }
    }

    /// 400 with a message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// 401.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, message)
    }
}

impl ApiError {
    /// The body this error is answered with (also used for the per-item errors of batch answers).
    pub(crate) fn into_body(self) -> ApiErrorBody {
        ApiErrorBody { code: self.code, message: self.message, request_id: request_id() }
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        let code = match &e {
            CoreError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            CoreError::MfaRequired => ErrorCode::MfaRequired,
            CoreError::ReauthenticationRequired => ErrorCode::ReauthenticationRequired,
            CoreError::RateLimited { retry_after_secs } => {
                return Self {
                    code: ErrorCode::RateLimited,
                    message: e.to_string(),
                    retry_after: Some(*retry_after_secs),
                };
            }
            CoreError::Forbidden(_) => ErrorCode::Forbidden,
            CoreError::NotFound(_) | CoreError::ChunksNotFound { .. } => ErrorCode::NotFound,
            CoreError::Conflict(_) => ErrorCode::Conflict,
            CoreError::MissingChunks(_) => ErrorCode::MissingChunks,
            CoreError::InvalidPath(_) => ErrorCode::InvalidPath,
            CoreError::BadRequest(_) => ErrorCode::BadRequest,
            CoreError::TooLarge(_) => ErrorCode::PayloadTooLarge,
            CoreError::NotSupported(_) => ErrorCode::NotSupported,
            CoreError::Store(_) | CoreError::Blob(_) | CoreError::Internal(_) if e.is_retryable() => {
                tracing::warn!(request_id = %request_id(), error = %e, "temporary failure");
                return Self::new(ErrorCode::Unavailable, "the server is busy; retry in a moment");
            }
            CoreError::Store(_) | CoreError::Blob(_) | CoreError::Internal(_) => {
                let id = request_id();
                tracing::error!(request_id = %id, error = %e, "internal error");
                return Self::new(
                    ErrorCode::Internal,
                    format!("internal server error; the server log has the details under request id {id}"),
                );
            }
        };
        Self::new(code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self.retry_after;
        let mut resp = (status, axum::Json(self.into_body())).into_response();
        if let Some(v) = retry_after.and_then(|secs| HeaderValue::from_str(&secs.to_string()).ok()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}
