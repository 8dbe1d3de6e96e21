//! Chunk upload and download.
//!
//! Upload body: frames as defined in [`cloudsync_types::frame`], parsed as the body streams in. Each chunk is
//! verified, sealed and stored as soon as its frame is complete, so memory holds at most one chunk plus one
//! network read, however large the request.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::{Buf, BytesMut};
use cloudsync_types::api::{MissingChunksRequest, MissingChunksResponse, UploadChunksResponse};
use cloudsync_types::frame::{FRAME_HEADER_LEN, parse_frame_header};
use cloudsync_types::{ApiErrorBody, ChunkId, ErrorCode};
use futures_util::StreamExt;

use crate::extract::{Editor, Json, Viewer, WorkspaceAccess};
use crate::{ApiError, AppState};

/// Most bytes in one upload request.
const MAX_UPLOAD_BYTES: usize = 1024 * 1024 * 1024;

/// Which of these chunks the workspace lacks (only chunks this workspace holds count as present).
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/chunks/missing", tag = "chunks", params(("ws" = String, Path)),
    request_body = MissingChunksRequest, responses((status = 200, body = MissingChunksResponse), (status = 413, body = ApiErrorBody)))]
pub(crate) async fn missing_chunks(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Editor>,
    Json(req): Json<MissingChunksRequest>,
) -> Result<axum::Json<MissingChunksResponse>, ApiError> {
    Ok(axum::Json(MissingChunksResponse { missing: st.core.missing_chunks(&a, &req.ids).await? }))
}

/// Uploads chunks, many per request (framed binary body).
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/chunks", tag = "chunks", params(("ws" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "frames: 32-byte id, u32 BE length, payload"),
    responses((status = 200, body = UploadChunksResponse), (status = 400, body = ApiErrorBody), (status = 413, body = ApiErrorBody)))]
pub(crate) async fn upload_chunks(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Editor>,
    body: Body,
) -> Result<axum::Json<UploadChunksResponse>, ApiError> {
    let io = st.core.chunk_io(&a).await?;
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    let (mut total, mut stored, mut present) = (0usize, 0u32, 0u32);
    loop {
        while let Some(header) = parse_frame_header(&buf) {
            let (id, len) = header.map_err(|e| ApiError::new(ErrorCode::PayloadTooLarge, e))?;
            if buf.len() < FRAME_HEADER_LEN + len {
                buf.reserve(FRAME_HEADER_LEN + len - buf.len());
                break;
            }
            buf.advance(FRAME_HEADER_LEN);
            let data = buf.split_to(len);
            if io.put(id, &data).await? {
                stored += 1;
            } else {
                present += 1;
            }
        }
        match stream.next().await {
            Some(Ok(bytes)) => {
                total += bytes.len();
                if total > MAX_UPLOAD_BYTES {
                    return Err(ApiError::new(ErrorCode::PayloadTooLarge, "send at most 1 GiB of chunks per request"));
                }
                buf.extend_from_slice(&bytes);
            }
            Some(Err(e)) => return Err(ApiError::bad_request(format!("the upload was interrupted: {e}"))),
            None => break,
        }
    }
    if !buf.is_empty() {
        return Err(ApiError::bad_request("the upload ended inside a chunk frame (truncated body)"));
    }
    Ok(axum::Json(UploadChunksResponse { stored, already_present: present }))
}

/// Downloads one chunk (plaintext).
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/chunks/{chunk}", tag = "chunks",
    params(("ws" = String, Path), ("chunk" = String, Path, description = "chunk id, 64 hex")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 404, body = ApiErrorBody)))]
pub(crate) async fn get_chunk(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Viewer>,
    Path((_, chunk)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = ChunkId::from_hex(&chunk).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let data = st.core.chunk_io(&a).await?.get(id).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], Body::from(Bytes::from(data))).into_response())
}
