//! API keys (managed from a signed-in session only; a key cannot manage keys).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use cloudsync_types::ApiErrorBody;
use cloudsync_types::api::{ApiKey, CreateApiKeyRequest, NewApiKey, RotateApiKeyRequest};

use crate::extract::{Json, SessionOnly};
use crate::{ApiError, AppState};

/// The caller's API keys (never their secrets).
#[utoipa::path(get, path = "/api/v1/apikeys", tag = "apikeys",
    responses((status = 200, body = Vec<ApiKey>), (status = 403, body = ApiErrorBody, description = "through an API key")))]
pub(crate) async fn list_api_keys(
    State(st): State<AppState>,
    SessionOnly(actor): SessionOnly,
) -> Result<axum::Json<Vec<ApiKey>>, ApiError> {
    Ok(axum::Json(st.core.list_api_keys(&actor).await?))
}

/// Creates an API key; the answer holds its secret, shown this once. Needs a current authenticator code when
/// the account has two-factor authentication on.
#[utoipa::path(post, path = "/api/v1/apikeys", tag = "apikeys", request_body = CreateApiKeyRequest,
    responses((status = 201, body = NewApiKey), (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody, description = "mfa_required: send totp"),
        (status = 403, body = ApiErrorBody, description = "through an API key"), (status = 409, body = ApiErrorBody)))]
pub(crate) async fn create_api_key(
    State(st): State<AppState>,
    SessionOnly(actor): SessionOnly,
    Json(req): Json<CreateApiKeyRequest>,
) -> Result<(StatusCode, axum::Json<NewApiKey>), ApiError> {
    Ok((StatusCode::CREATED, axum::Json(st.core.create_api_key(&actor, &req).await?)))
}

/// Gives a key a new secret (shown this once); the old one keeps working for the grace period only.
#[utoipa::path(post, path = "/api/v1/apikeys/{id}/rotate", tag = "apikeys", params(("id" = String, Path)), request_body = RotateApiKeyRequest,
    responses((status = 200, body = NewApiKey), (status = 401, body = ApiErrorBody, description = "mfa_required: send totp"), (status = 404, body = ApiErrorBody)))]
pub(crate) async fn rotate_api_key(
    State(st): State<AppState>,
    SessionOnly(actor): SessionOnly,
    Path(id): Path<String>,
    Json(req): Json<RotateApiKeyRequest>,
) -> Result<axum::Json<NewApiKey>, ApiError> {
    Ok(axum::Json(st.core.rotate_api_key(&actor, &id, req.grace_seconds, &req.proof).await?))
}

/// Revokes a key at once.
#[utoipa::path(delete, path = "/api/v1/apikeys/{id}", tag = "apikeys", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ApiErrorBody)))]
pub(crate) async fn revoke_api_key(
    State(st): State<AppState>,
    SessionOnly(actor): SessionOnly,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.core.revoke_api_key(&actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
