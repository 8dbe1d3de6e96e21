//! The audit log: pages newest first, and chain verification.

use axum::extract::State;
use cloudsync_types::ApiErrorBody;
use cloudsync_types::api::{AuditListParams, AuditPage, AuditVerifyReport};

use crate::extract::{Admin, Query, ServerAdmin, SessionOnly, WorkspaceAccess};
use crate::{ApiError, AppState};

/// The workspace's audit log, newest first (Admin or Owner).
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/audit", tag = "audit", params(("ws" = String, Path), AuditListParams),
    responses((status = 200, body = AuditPage), (status = 400, body = ApiErrorBody), (status = 403, body = ApiErrorBody)))]
pub(crate) async fn workspace_audit(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Admin>,
    Query(q): Query<AuditListParams>,
) -> Result<axum::Json<AuditPage>, ApiError> {
    Ok(axum::Json(st.core.workspace_audit(&a, &q).await?))
}

/// Re-hashes the workspace's audit chain (Admin or Owner).
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/audit/verify", tag = "audit", params(("ws" = String, Path)),
    responses((status = 200, body = AuditVerifyReport), (status = 403, body = ApiErrorBody)))]
pub(crate) async fn verify_workspace_audit(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Admin>,
) -> Result<axum::Json<AuditVerifyReport>, ApiError> {
    Ok(axum::Json(st.core.verify_workspace_audit(&a).await?))
}

/// Account events (logins, devices, MFA, API keys), newest first: a server administrator's view holds every
/// account's, anyone else's their own.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditListParams),
    responses((status = 200, body = AuditPage), (status = 400, body = ApiErrorBody)))]
pub(crate) async fn account_audit(
    State(st): State<AppState>,
    SessionOnly(actor): SessionOnly,
    Query(q): Query<AuditListParams>,
) -> Result<axum::Json<AuditPage>, ApiError> {
    Ok(axum::Json(st.core.account_audit(&actor, &q).await?))
}

/// Re-hashes the account events' chain (server administrators).
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit",
    responses((status = 200, body = AuditVerifyReport), (status = 403, body = ApiErrorBody)))]
pub(crate) async fn verify_account_audit(
    State(st): State<AppState>,
    ServerAdmin(actor): ServerAdmin,
) -> Result<axum::Json<AuditVerifyReport>, ApiError> {
    Ok(axum::Json(st.core.verify_account_audit(&actor).await?))
}
