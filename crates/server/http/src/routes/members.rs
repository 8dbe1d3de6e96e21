//! Workspace members.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use cloudsync_store::MemberRecord;
use cloudsync_types::api::{AddMemberRequest, Member, SetRoleRequest};
use cloudsync_types::{ApiErrorBody, UserId};

use super::time_of;
use crate::extract::{Admin, Json, Viewer, WorkspaceAccess};
use crate::{ApiError, AppState};

fn view(m: MemberRecord) -> Member {
    Member { user_id: m.user_id, email: m.email, role: m.role, added_at: time_of(m.added_ms) }
}

fn user_id(raw: &str) -> Result<UserId, ApiError> {
    raw.parse().map_err(|_| ApiError::bad_request("the member id must be a user id (a UUID; see `members list`)"))
}

/// Members.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/members", tag = "members", params(("ws" = String, Path)),
    responses((status = 200, body = Vec<Member>)))]
pub(crate) async fn list_members(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Viewer>,
) -> Result<axum::Json<Vec<Member>>, ApiError> {
    Ok(axum::Json(st.core.list_members(&a).await?.into_iter().map(view).collect()))
}

/// Adds a member (Admin: viewers and editors; Owner: any role).
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/members", tag = "members", params(("ws" = String, Path)), request_body = AddMemberRequest,
    responses((status = 200, body = Member), (status = 403, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
pub(crate) async fn add_member(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Admin>,
    Json(req): Json<AddMemberRequest>,
) -> Result<axum::Json<Member>, ApiError> {
    Ok(axum::Json(view(st.core.add_member(&a, &req.email, req.role).await?)))
}

/// Changes a member's role; the last Owner cannot be demoted.
#[utoipa::path(put, path = "/api/v1/workspaces/{ws}/members/{user}", tag = "members",
    params(("ws" = String, Path), ("user" = String, Path)), request_body = SetRoleRequest,
    responses((status = 200, body = Member), (status = 403, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
pub(crate) async fn set_member_role(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Admin>,
    Path((_, user)): Path<(String, String)>,
    Json(req): Json<SetRoleRequest>,
) -> Result<axum::Json<Member>, ApiError> {
    Ok(axum::Json(view(st.core.set_member_role(&a, user_id(&user)?, req.role).await?)))
}

/// Removes a member; the last Owner cannot be removed.
#[utoipa::path(delete, path = "/api/v1/workspaces/{ws}/members/{user}", tag = "members",
    params(("ws" = String, Path), ("user" = String, Path)),
    responses((status = 204), (status = 403, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
pub(crate) async fn remove_member(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Admin>,
    Path((_, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    st.core.remove_member(&a, user_id(&user)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
