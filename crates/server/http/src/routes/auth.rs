//! Health, login, logout, whoami, devices and account creation.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use cloudsync_types::api::{
    ApiKeyIdentity, CreateUserRequest, Device, Health, LoginRequest, LoginResponse, MfaCode, MfaEnrollRequest,
    MfaEnrollment, MfaStatus, RecoveryCodes, UserInfo, WhoAmI,
};
use cloudsync_types::{ApiErrorBody, SessionId};

use super::time_of;
use crate::extract::{ClientIp, Json, Principal, ServerAdmin, SessionOnly};
use crate::{ApiError, AppState};

pub(crate) fn user_info(u: &cloudsync_store::UserRecord) -> UserInfo {
    UserInfo { id: u.id, email: u.email.clone(), is_admin: u.is_admin }
}

/// Liveness.
#[utoipa::path(get, path = "/api/v1/health", tag = "server", responses((status = 200, body = Health)))]
pub(crate) async fn health() -> axum::Json<Health> {
    axum::Json(Health { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into() })
}

/// Password login; opens a session for a device. Rate-limited per account and per address.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 401, body = ApiErrorBody), (status = 429, body = ApiErrorBody)))]
pub(crate) async fn login(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<LoginRequest>,
) -> Result<axum::Json<LoginResponse>, ApiError> {
    let s = st.core.login(&req.email, &req.password, &req.device_name, &ip.to_string(), req.totp.as_deref()).await?;
    Ok(axum::Json(LoginResponse { token: s.token, session_id: s.id, user: user_info(&s.user) }))
}

/// The caller's two-factor state.
#[utoipa::path(get, path = "/api/v1/auth/mfa", tag = "auth", responses((status = 200, body = MfaStatus), (status = 401, body = ApiErrorBody)))]
pub(crate) async fn mfa_status(
    State(st): State<AppState>,
    Principal(actor): Principal,
) -> Result<axum::Json<MfaStatus>, ApiError> {
    Ok(axum::Json(st.core.mfa_status(&actor).await?))
}

/// Starts a TOTP enrolment: a new secret, shown once. Logins need codes only after `mfa/confirm`. A session
/// opened more than 15 minutes ago must send the password.
#[utoipa::path(post, path = "/api/v1/auth/mfa/enroll", tag = "auth", request_body = MfaEnrollRequest,
    responses((status = 200, body = MfaEnrollment), (status = 403, body = ApiErrorBody, description = "reauthentication_required: send the password"),
        (status = 409, body = ApiErrorBody, description = "MFA is already on"), (status = 429, body = ApiErrorBody)))]
pub(crate) async fn mfa_enroll(
    State(st): State<AppState>,
    SessionOnly(actor): SessionOnly,
    Json(req): Json<MfaEnrollRequest>,
) -> Result<axum::Json<MfaEnrollment>, ApiError> {
    Ok(axum::Json(st.core.mfa_enroll(&actor, req.password.as_deref()).await?))
}

/// Completes the enrolment with the app's first code; answers the recovery codes, shown once.
#[utoipa::path(post, path = "/api/v1/auth/mfa/confirm", tag = "auth", request_body = MfaCode,
    responses((status = 200, body = RecoveryCodes), (status = 400, body = ApiErrorBody, description = "wrong code"),
        (status = 409, body = ApiErrorBody, description = "no enrolment pending")))]
pub(crate) async fn mfa_confirm(
    State(st): State<AppState>,
    SessionOnly(actor): SessionOnly,
    Json(req): Json<MfaCode>,
) -> Result<axum::Json<RecoveryCodes>, ApiError> {
    Ok(axum::Json(RecoveryCodes { recovery_codes: st.core.mfa_confirm(&actor, &req.code).await? }))
}

/// Turns two-factor authentication off; needs a current app code or a recovery code.
#[utoipa::path(post, path = "/api/v1/auth/mfa/disable", tag = "auth", request_body = MfaCode,
    responses((status = 204), (status = 400, body = ApiErrorBody, description = "wrong code"), (status = 409, body = ApiErrorBody)))]
pub(crate) async fn mfa_disable(
    State(st): State<AppState>,
    SessionOnly(actor): SessionOnly,
    Json(req): Json<MfaCode>,
) -> Result<StatusCode, ApiError> {
    st.core.mfa_disable(&actor, &req.code).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replaces the recovery codes; needs a current app code or a recovery code.
#[utoipa::path(post, path = "/api/v1/auth/mfa/recovery-codes", tag = "auth", request_body = MfaCode,
    responses((status = 200, body = RecoveryCodes), (status = 400, body = ApiErrorBody, description = "wrong code"), (status = 409, body = ApiErrorBody)))]
pub(crate) async fn mfa_recovery_codes(
    State(st): State<AppState>,
    SessionOnly(actor): SessionOnly,
    Json(req): Json<MfaCode>,
) -> Result<axum::Json<RecoveryCodes>, ApiError> {
    Ok(axum::Json(RecoveryCodes { recovery_codes: st.core.mfa_regenerate_recovery(&actor, &req.code).await? }))
}

/// Ends the calling session.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", responses((status = 204), (status = 401, body = ApiErrorBody)))]
pub(crate) async fn logout(
    State(st): State<AppState>,
    SessionOnly(actor): SessionOnly,
) -> Result<StatusCode, ApiError> {
    st.core.logout(&actor).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The calling account and session.
#[utoipa::path(get, path = "/api/v1/auth/whoami", tag = "auth", responses((status = 200, body = WhoAmI), (status = 401, body = ApiErrorBody)))]
pub(crate) async fn whoami(Principal(actor): Principal) -> axum::Json<WhoAmI> {
    axum::Json(WhoAmI {
        user: UserInfo { id: actor.user_id, email: actor.email, is_admin: actor.is_admin },
        session_id: actor.session_id,
        api_key: actor.api_key.map(|k| ApiKeyIdentity { id: k.id, role: k.role, workspaces: k.workspaces }),
    })
}

/// The caller's sessions (devices).
#[utoipa::path(get, path = "/api/v1/devices", tag = "auth", responses((status = 200, body = Vec<Device>)))]
pub(crate) async fn list_devices(
    State(st): State<AppState>,
    SessionOnly(actor): SessionOnly,
) -> Result<axum::Json<Vec<Device>>, ApiError> {
    let list = st.core.list_devices(&actor).await?;
    Ok(axum::Json(
        list.into_iter()
            .map(|s| Device {
                id: s.id,
                current: s.id == actor.session_id,
                name: s.device_name,
                created_at: time_of(s.created_ms),
                last_seen_at: time_of(s.last_seen_ms),
                last_ip: s.last_ip,
            })
            .collect(),
    ))
}

/// Revokes one of the caller's sessions at once.
#[utoipa::path(delete, path = "/api/v1/devices/{id}", tag = "auth", params(("id" = String, Path, description = "session id")),
    responses((status = 204), (status = 404, body = ApiErrorBody)))]
pub(crate) async fn revoke_device(
    State(st): State<AppState>,
    SessionOnly(actor): SessionOnly,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id: SessionId =
        id.parse().map_err(|_| ApiError::bad_request("the device id must be a UUID (see `cloudsync devices list`)"))?;
    st.core.revoke_device(&actor, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Creates an account (server administrators).
#[utoipa::path(post, path = "/api/v1/users", tag = "auth", request_body = CreateUserRequest,
    responses((status = 201, body = UserInfo), (status = 403, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
pub(crate) async fn create_user(
    State(st): State<AppState>,
    ServerAdmin(actor): ServerAdmin,
    Json(req): Json<CreateUserRequest>,
) -> Result<(StatusCode, axum::Json<UserInfo>), ApiError> {
    let u = st.core.create_user(&req.email, &req.password, req.is_admin, Some(&actor)).await?;
    Ok((StatusCode::CREATED, axum::Json(user_info(&u))))
}
