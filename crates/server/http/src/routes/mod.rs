//! The whole API on one screen. Every route's permission is in its handler's signature (an extractor);
//! [`ROUTES`] restates them so a table test can walk every route with every role and prove each lower role is
//! refused, and so the OpenAPI document and this table cannot drift apart.

mod apikeys;
mod audit;
mod auth;
mod chunks;
mod e2ee;
mod files;
mod members;
mod shares;
mod userkeys;
mod workspaces;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use cloudsync_types::Role;

use crate::AppState;

pub(crate) use apikeys::*;
pub(crate) use audit::*;
pub(crate) use auth::*;
pub(crate) use chunks::*;
pub(crate) use e2ee::*;
pub(crate) use files::*;
pub(crate) use members::*;
pub(crate) use shares::*;
pub(crate) use userkeys::*;
pub(crate) use workspaces::*;

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Nothing (health, login).
    Public,
    /// Any signed-in account, with a session or an API key.
    Session,
    /// A signed-in account with a session (a login), never an API key: managing the account itself.
    AccountSession,
    /// A server administrator.
    ServerAdmin,
    /// Membership of the workspace in the path with at least this role.
    Role(Role),
}

/// Every route: method, path (OpenAPI syntax), permission.
pub const ROUTES: &[(&str, &str, Needs)] = &[
    ("GET", "/api/v1/health", Needs::Public),
    ("GET", "/api/v1/openapi.json", Needs::Session),
    ("POST", "/api/v1/auth/login", Needs::Public),
    ("POST", "/api/v1/auth/logout", Needs::AccountSession),
    ("GET", "/api/v1/auth/whoami", Needs::Session),
    ("GET", "/api/v1/auth/mfa", Needs::Session),
    ("POST", "/api/v1/auth/mfa/enroll", Needs::AccountSession),
    ("POST", "/api/v1/auth/mfa/confirm", Needs::AccountSession),
    ("POST", "/api/v1/auth/mfa/disable", Needs::AccountSession),
    ("POST", "/api/v1/auth/mfa/recovery-codes", Needs::AccountSession),
    ("GET", "/api/v1/devices", Needs::AccountSession),
    ("DELETE", "/api/v1/devices/{id}", Needs::AccountSession),
    ("POST", "/api/v1/users", Needs::ServerAdmin),
    ("GET", "/api/v1/apikeys", Needs::AccountSession),
    ("POST", "/api/v1/apikeys", Needs::AccountSession),
    ("POST", "/api/v1/apikeys/{id}/rotate", Needs::AccountSession),
    ("DELETE", "/api/v1/apikeys/{id}", Needs::AccountSession),
    ("GET", "/api/v1/keys/me", Needs::AccountSession),
    ("PUT", "/api/v1/keys/me", Needs::AccountSession),
    ("GET", "/api/v1/keys", Needs::Session),
    ("GET", "/api/v1/audit", Needs::AccountSession),
    ("GET", "/api/v1/audit/verify", Needs::ServerAdmin),
    ("GET", "/api/v1/workspaces", Needs::Session),
    ("POST", "/api/v1/workspaces", Needs::Session),
    ("GET", "/api/v1/workspaces/{ws}", Needs::Role(Role::Viewer)),
    ("DELETE", "/api/v1/workspaces/{ws}", Needs::Role(Role::Owner)),
    ("PUT", "/api/v1/workspaces/{ws}/settings", Needs::Role(Role::Owner)),
    ("GET", "/api/v1/workspaces/{ws}/keys", Needs::Role(Role::Viewer)),
    ("GET", "/api/v1/workspaces/{ws}/members", Needs::Role(Role::Viewer)),
    ("POST", "/api/v1/workspaces/{ws}/members", Needs::Role(Role::Admin)),
    ("PUT", "/api/v1/workspaces/{ws}/members/{user}", Needs::Role(Role::Admin)),
    ("DELETE", "/api/v1/workspaces/{ws}/members/{user}", Needs::Role(Role::Admin)),
    ("GET", "/api/v1/workspaces/{ws}/e2ee/log", Needs::Role(Role::Viewer)),
    ("POST", "/api/v1/workspaces/{ws}/e2ee/log", Needs::Role(Role::Viewer)),
    ("GET", "/api/v1/workspaces/{ws}/e2ee/keys", Needs::Role(Role::Viewer)),
    ("POST", "/api/v1/workspaces/{ws}/chunks/missing", Needs::Role(Role::Editor)),
    ("POST", "/api/v1/workspaces/{ws}/chunks", Needs::Role(Role::Editor)),
    ("POST", "/api/v1/workspaces/{ws}/chunks/signatures", Needs::Role(Role::Editor)),
    ("POST", "/api/v1/workspaces/{ws}/chunks/deltas", Needs::Role(Role::Editor)),
    ("GET", "/api/v1/workspaces/{ws}/chunks/{chunk}", Needs::Role(Role::Viewer)),
    ("POST", "/api/v1/workspaces/{ws}/chunks/fetch", Needs::Role(Role::Viewer)),
    ("POST", "/api/v1/workspaces/{ws}/files/commit", Needs::Role(Role::Editor)),
    ("POST", "/api/v1/workspaces/{ws}/files/commit-batch", Needs::Role(Role::Editor)),
    ("GET", "/api/v1/workspaces/{ws}/files", Needs::Role(Role::Viewer)),
    ("GET", "/api/v1/workspaces/{ws}/files/manifest", Needs::Role(Role::Viewer)),
    ("POST", "/api/v1/workspaces/{ws}/files/manifests", Needs::Role(Role::Viewer)),
    ("GET", "/api/v1/workspaces/{ws}/files/content", Needs::Role(Role::Viewer)),
    ("GET", "/api/v1/workspaces/{ws}/files/versions", Needs::Role(Role::Viewer)),
    ("POST", "/api/v1/workspaces/{ws}/files/delete", Needs::Role(Role::Admin)),
    ("POST", "/api/v1/workspaces/{ws}/files/restore", Needs::Role(Role::Admin)),
    ("GET", "/api/v1/workspaces/{ws}/trash", Needs::Role(Role::Viewer)),
    ("GET", "/api/v1/workspaces/{ws}/changes", Needs::Role(Role::Viewer)),
    ("POST", "/api/v1/workspaces/{ws}/shares", Needs::Role(Role::Editor)),
    ("GET", "/api/v1/workspaces/{ws}/shares", Needs::Role(Role::Editor)),
    ("DELETE", "/api/v1/workspaces/{ws}/shares/{share}", Needs::Role(Role::Editor)),
    ("GET", "/s/{token}", Needs::Public),
    ("POST", "/s/{token}", Needs::Public),
    ("GET", "/api/v1/workspaces/{ws}/audit", Needs::Role(Role::Admin)),
    ("GET", "/api/v1/workspaces/{ws}/audit/verify", Needs::Role(Role::Admin)),
];

/// Largest JSON body.
const JSON_LIMIT: usize = cloudsync_types::api::MAX_JSON_BODY;

/// The API router.
pub fn api() -> Router<AppState> {
    let ws = Router::new()
        .route("/keys", get(workspace_keys))
        .route("/settings", put(update_settings))
        .route("/members", get(list_members).post(add_member))
        .route("/members/{user}", put(set_member_role).delete(remove_member))
        .route("/e2ee/log", get(e2ee_log).post(append_e2ee_log))
        .route("/e2ee/keys", get(my_e2ee_keys))
        .route("/chunks/missing", post(missing_chunks))
        .route("/chunks", post(upload_chunks).layer(DefaultBodyLimit::disable()))
        .route("/chunks/{chunk}", get(get_chunk))
        .route("/chunks/fetch", post(fetch_chunks))
        .route("/chunks/signatures", post(chunk_signatures))
        .route("/chunks/deltas", post(upload_deltas).layer(DefaultBodyLimit::disable()))
        .route("/files/commit", post(commit))
        .route("/files/commit-batch", post(commit_batch))
        .route("/files", get(list_files))
        .route("/files/manifest", get(manifest))
        .route("/files/manifests", post(manifests))
        .route("/files/content", get(content))
        .route("/files/versions", get(versions))
        .route("/files/delete", post(delete_files))
        .route("/files/restore", post(restore))
        .route("/trash", get(trash))
        .route("/changes", get(changes))
        .route("/shares", get(list_shares).post(create_share))
        .route("/shares/{share}", delete(revoke_share))
        .route("/audit", get(workspace_audit))
        .route("/audit/verify", get(verify_workspace_audit));
    Router::new()
        .route("/api/v1/health", get(health))
        .route(
            "/s/{token}",
            get(open_share).post(open_share_with_password).layer(DefaultBodyLimit::max(shares::MAX_FORM_BYTES)),
        )
        .route("/api/v1/openapi.json", get(crate::openapi::openapi_json))
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/auth/whoami", get(whoami))
        .route("/api/v1/auth/mfa", get(mfa_status))
        .route("/api/v1/auth/mfa/enroll", post(mfa_enroll))
        .route("/api/v1/auth/mfa/confirm", post(mfa_confirm))
        .route("/api/v1/auth/mfa/disable", post(mfa_disable))
        .route("/api/v1/auth/mfa/recovery-codes", post(mfa_recovery_codes))
        .route("/api/v1/devices", get(list_devices))
        .route("/api/v1/devices/{id}", delete(revoke_device))
        .route("/api/v1/users", post(create_user))
        .route("/api/v1/apikeys", get(list_api_keys).post(create_api_key))
        .route("/api/v1/apikeys/{id}/rotate", post(rotate_api_key))
        .route("/api/v1/apikeys/{id}", delete(revoke_api_key))
        .route("/api/v1/keys/me", get(my_user_keys).put(put_user_keys))
        .route("/api/v1/keys", get(public_user_keys))
        .route("/api/v1/audit", get(account_audit))
        .route("/api/v1/audit/verify", get(verify_account_audit))
        .route("/api/v1/workspaces", get(list_workspaces).post(create_workspace))
        .route("/api/v1/workspaces/{ws}", get(get_workspace).delete(delete_workspace))
        .nest("/api/v1/workspaces/{ws}", ws)
        .layer(DefaultBodyLimit::max(JSON_LIMIT))
}

pub(crate) use cloudsync_server_core::time_of;
