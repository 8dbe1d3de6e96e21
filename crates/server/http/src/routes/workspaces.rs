//! Workspaces.

use axum::extract::State;
use axum::http::StatusCode;
use cloudsync_store::WorkspaceRecord;
use cloudsync_types::api::{CreateWorkspaceRequest, UpdateSettings, Workspace, WorkspaceKeys};
use cloudsync_types::{ApiErrorBody, Role};

use super::time_of;
use crate::extract::{Json, Owner, Principal, Viewer, WorkspaceAccess};
use crate::{ApiError, AppState};

fn view(w: &WorkspaceRecord, role: Role) -> Workspace {
    Workspace {
        id: w.id,
        name: w.name.clone(),
        e2e_encryption: w.e2ee,
        require_mfa: w.require_mfa,
        ip_allowlist: w.ip_allowlist.clone(),
        role,
        created_at: time_of(w.created_ms),
    }
}

/// The caller's workspaces.
#[utoipa::path(get, path = "/api/v1/workspaces", tag = "workspaces", responses((status = 200, body = Vec<Workspace>)))]
pub(crate) async fn list_workspaces(
    State(st): State<AppState>,
    Principal(actor): Principal,
) -> Result<axum::Json<Vec<Workspace>>, ApiError> {
    let list = st.core.list_workspaces(&actor).await?;
    Ok(axum::Json(list.iter().map(|(w, r)| view(w, *r)).collect()))
}

/// Creates a workspace owned by the caller.
#[utoipa::path(post, path = "/api/v1/workspaces", tag = "workspaces", request_body = CreateWorkspaceRequest,
    responses((status = 201, body = Workspace), (status = 400, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
pub(crate) async fn create_workspace(
    State(st): State<AppState>,
    Principal(actor): Principal,
    Json(req): Json<CreateWorkspaceRequest>,
) -> Result<(StatusCode, axum::Json<Workspace>), ApiError> {
    let w = match (&req.e2ee, req.e2e_encryption) {
        (Some(genesis), true) => st.core.create_e2ee_workspace(&actor, &req.name, genesis).await?,
        (Some(_), false) => return Err(ApiError::bad_request("e2ee is only for a workspace with e2e_encryption")),
        (None, e2ee) => st.core.create_workspace(&actor, &req.name, e2ee).await?,
    };
    Ok((StatusCode::CREATED, axum::Json(view(&w, Role::Owner))))
}

/// One workspace.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}", tag = "workspaces", params(("ws" = String, Path)),
    responses((status = 200, body = Workspace), (status = 404, body = ApiErrorBody)))]
pub(crate) async fn get_workspace(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Viewer>,
) -> Result<axum::Json<Workspace>, ApiError> {
    let w = st.core.workspace(&a).await?;
    Ok(axum::Json(view(&w, a.role)))
}

/// Changes the workspace's settings (Owner); audited as settings.changed with old and new values.
#[utoipa::path(put, path = "/api/v1/workspaces/{ws}/settings", tag = "workspaces", params(("ws" = String, Path)),
    request_body = UpdateSettings,
    responses((status = 200, body = Workspace), (status = 403, body = ApiErrorBody, description = "below Owner, or requiring MFA without one's own")))]
pub(crate) async fn update_settings(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Owner>,
    Json(req): Json<UpdateSettings>,
) -> Result<axum::Json<Workspace>, ApiError> {
    let w = st.core.update_settings(&a, &req).await?;
    Ok(axum::Json(view(&w, a.role)))
}

/// Deletes a workspace and destroys its keys (Owner).
#[utoipa::path(delete, path = "/api/v1/workspaces/{ws}", tag = "workspaces", params(("ws" = String, Path)),
    responses((status = 204), (status = 403, body = ApiErrorBody)))]
pub(crate) async fn delete_workspace(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Owner>,
) -> Result<StatusCode, ApiError> {
    st.core.delete_workspace(&a).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The chunk-id key and chunking parameters a member's client needs.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/keys", tag = "workspaces", params(("ws" = String, Path)),
    responses((status = 200, body = WorkspaceKeys)))]
pub(crate) async fn workspace_keys(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Viewer>,
) -> Result<axum::Json<WorkspaceKeys>, ApiError> {
    Ok(axum::Json(st.core.workspace_keys(&a).await?))
}
