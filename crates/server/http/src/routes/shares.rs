//! Share links: managed by members under `/api/v1/workspaces/{ws}/shares`, opened by anyone with the link at
//! `/s/{token}`. The access log records the route template, never the token.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cloudsync_types::api::{CreateShareRequest, NewShareLink, ShareLink};
use cloudsync_types::{ApiErrorBody, ShareId};
use serde::Deserialize;

use super::files::stream_chunks;
use crate::extract::{ClientIp, Editor, Json, WorkspaceAccess};
use crate::{ApiError, AppState};

/// Largest password form accepted.
pub(crate) const MAX_FORM_BYTES: usize = 4096;

/// Creates a link to a file (Editor); the answer holds its token, shown this once.
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/shares", tag = "shares", params(("ws" = String, Path)),
    request_body = CreateShareRequest,
    responses((status = 201, body = NewShareLink), (status = 400, body = ApiErrorBody), (status = 404, body = ApiErrorBody)))]
pub(crate) async fn create_share(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Editor>,
    Json(req): Json<CreateShareRequest>,
) -> Result<(StatusCode, axum::Json<NewShareLink>), ApiError> {
    Ok((StatusCode::CREATED, axum::Json(st.core.create_share(&a, &req).await?)))
}

/// The workspace's live links: an Editor's own, or all of them for Admins and Owners.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/shares", tag = "shares", params(("ws" = String, Path)),
    responses((status = 200, body = Vec<ShareLink>)))]
pub(crate) async fn list_shares(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Editor>,
) -> Result<axum::Json<Vec<ShareLink>>, ApiError> {
    Ok(axum::Json(st.core.list_shares(&a).await?))
}

/// Revokes a link at once: its maker, or an Admin or Owner.
#[utoipa::path(delete, path = "/api/v1/workspaces/{ws}/shares/{share}", tag = "shares",
    params(("ws" = String, Path), ("share" = String, Path)),
    responses((status = 204), (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody)))]
pub(crate) async fn revoke_share(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Editor>,
    Path((_, share)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id: ShareId = share
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{share:?} is not a share link id; see `cloudsync share list`")))?;
    st.core.revoke_share(&a, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Downloads the file behind a link without a password (`curl -OJ URL`). For a link with a password, a
/// browser gets a form and other clients a 401: send the password with POST.
#[utoipa::path(get, path = "/s/{token}", tag = "shares", params(("token" = String, Path)), security(()),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 401, body = ApiErrorBody, description = "the link needs its password"),
        (status = 404, body = ApiErrorBody, description = "unknown, expired, revoked or used up, alike"),
        (status = 429, body = ApiErrorBody)))]
pub(crate) async fn open_share(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let wants_html = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/html"));
    match st.core.open_share(&token, None, &ip.to_string()).await {
        Err(cloudsync_server_core::CoreError::Unauthenticated(_)) if wants_html => Ok(password_page()),
        other => download(other?).await,
    }
}

#[derive(Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
struct PasswordForm {
    password: String,
}

/// Downloads the file behind a link with its password, sent as the form field `password`
/// (`curl -d password=... -OJ URL`).
#[utoipa::path(post, path = "/s/{token}", tag = "shares", params(("token" = String, Path)), security(()),
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "password=..."),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 401, body = ApiErrorBody, description = "wrong password"),
        (status = 404, body = ApiErrorBody, description = "unknown, expired, revoked or used up, alike"),
        (status = 429, body = ApiErrorBody)))]
pub(crate) async fn open_share_with_password(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    Path(token): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if body.len() > MAX_FORM_BYTES {
        return Err(ApiError::new(cloudsync_types::ErrorCode::PayloadTooLarge, "the form is too large"));
    }
    let form: PasswordForm = serde_urlencoded::from_bytes(&body)
        .map_err(|_| ApiError::bad_request("send the password as the form field `password` (curl -d password=...)"))?;
    download(st.core.open_share(&token, Some(&form.password), &ip.to_string()).await?).await
}

async fn download(d: cloudsync_server_core::ShareDownload) -> Result<Response, ApiError> {
    let name = d.file.path.as_str().rsplit('/').next().unwrap_or("download").to_owned();
    let body = stream_chunks(d.io, &d.manifest).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, d.version.size.to_string()),
            (header::CONTENT_DISPOSITION, content_disposition(&name)),
        ],
        body,
    )
        .into_response())
}

/// `attachment` with an ASCII fallback name and the exact name percent-encoded (RFC 6266 / RFC 8187).
fn content_disposition(name: &str) -> String {
    let fallback: String =
        name.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' && c != '%' { c } else { '_' }).collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

/// A minimal page asking for the link's password; it posts back to the same URL (no script, no styles).
fn password_page() -> Response {
    let html = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>CloudSync shared file</title></head>\
        <body><h1>This shared file is protected</h1><form method=\"post\"><label>Password \
        <input type=\"password\" name=\"password\" autocomplete=\"off\" required autofocus></label> \
        <button type=\"submit\">Download</button></form></body></html>";
    (
        StatusCode::UNAUTHORIZED,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'; form-action 'self'; frame-ancestors 'none'"),
        ],
        html,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_safe_in_the_header() {
        assert_eq!(
            content_disposition("report.pdf"),
            "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"
        );
        let h = content_disposition("ünïcode \"quoted\".txt");
        assert!(h.starts_with("attachment; filename=\"_n_code__quoted_.txt\""), "{h}");
        assert!(h.ends_with("filename*=UTF-8''%C3%BCn%C3%AFcode%20%22quoted%22.txt"), "{h}");
        assert!(!content_disposition("a\r\nSet-Cookie: x").contains('\n'));
    }
}
