//! Accounts' end-to-end encryption keys.

use axum::extract::State;
use cloudsync_types::ApiErrorBody;
use cloudsync_types::api::{MyUserKeys, PublicUserKeys, UploadUserKeys};
use serde::Deserialize;

use crate::extract::{Json, Principal, Query, SessionOnly};
use crate::{ApiError, AppState};

/// The caller's end-to-end keys: the public identity and the two blobs sealed on the client.
#[utoipa::path(get, path = "/api/v1/keys/me", tag = "keys",
    responses((status = 200, body = MyUserKeys), (status = 404, body = ApiErrorBody, description = "no keys yet: `cloudsync keys init`")))]
pub(crate) async fn my_user_keys(
    State(st): State<AppState>,
    SessionOnly(actor): SessionOnly,
) -> Result<axum::Json<MyUserKeys>, ApiError> {
    Ok(axum::Json(st.core.my_user_keys(&actor).await?))
}

/// Stores the caller's first end-to-end keys, or reseals the same identity under a new passphrase.
#[utoipa::path(put, path = "/api/v1/keys/me", tag = "keys", request_body = UploadUserKeys,
    responses((status = 200, body = MyUserKeys), (status = 400, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
pub(crate) async fn put_user_keys(
    State(st): State<AppState>,
    SessionOnly(actor): SessionOnly,
    Json(req): Json<UploadUserKeys>,
) -> Result<axum::Json<MyUserKeys>, ApiError> {
    Ok(axum::Json(st.core.put_user_keys(&actor, &req).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct EmailQuery {
    /// The account's email.
    email: String,
}

/// Another account's public identity (clients verify it and compare fingerprints themselves).
#[utoipa::path(get, path = "/api/v1/keys", tag = "keys", params(EmailQuery),
    responses((status = 200, body = PublicUserKeys), (status = 404, body = ApiErrorBody)))]
pub(crate) async fn public_user_keys(
    State(st): State<AppState>,
    Principal(actor): Principal,
    Query(q): Query<EmailQuery>,
) -> Result<axum::Json<PublicUserKeys>, ApiError> {
    Ok(axum::Json(st.core.public_user_keys(&actor, &q.email).await?))
}
