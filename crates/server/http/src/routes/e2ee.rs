//! The membership log and wrapped keys of end-to-end encrypted workspaces.

use axum::extract::State;
use cloudsync_types::ApiErrorBody;
use cloudsync_types::api::{AppendE2eeLog, E2eeAppended, E2eeKeys, E2eeLog};
use serde::Deserialize;

use crate::extract::{Json, Query, Viewer, WorkspaceAccess};
use crate::{ApiError, AppState};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct FromQuery {
    /// Position of the first entry wanted (0 for the whole log).
    #[serde(default)]
    from: u64,
}

/// The signed membership log, from position `from` (clients replay and verify it from its first entry).
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/e2ee/log", tag = "e2ee", params(("ws" = String, Path), FromQuery),
    responses((status = 200, body = E2eeLog), (status = 400, body = ApiErrorBody, description = "not an end-to-end encrypted workspace")))]
pub(crate) async fn e2ee_log(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Viewer>,
    Query(q): Query<FromQuery>,
) -> Result<axum::Json<E2eeLog>, ApiError> {
    Ok(axum::Json(st.core.e2ee_log(&a, q.from).await?))
}

/// Appends membership changes signed by the caller, with the wrapped keys they need. The log's rules decide
/// who may make which change (an owner anyone's, an admin viewers' and editors', anyone their own leaving).
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/e2ee/log", tag = "e2ee", params(("ws" = String, Path)), request_body = AppendE2eeLog,
    responses((status = 200, body = E2eeAppended), (status = 400, body = ApiErrorBody), (status = 409, body = ApiErrorBody, description = "the log grew meanwhile")))]
pub(crate) async fn append_e2ee_log(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Viewer>,
    Json(req): Json<AppendE2eeLog>,
) -> Result<axum::Json<E2eeAppended>, ApiError> {
    Ok(axum::Json(st.core.append_e2ee_log(&a, &req).await?))
}

/// The caller's wrapped workspace keys, one per key epoch.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/e2ee/keys", tag = "e2ee", params(("ws" = String, Path)),
    responses((status = 200, body = E2eeKeys), (status = 400, body = ApiErrorBody)))]
pub(crate) async fn my_e2ee_keys(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Viewer>,
) -> Result<axum::Json<E2eeKeys>, ApiError> {
    Ok(axum::Json(st.core.my_e2ee_keys(&a).await?))
}
