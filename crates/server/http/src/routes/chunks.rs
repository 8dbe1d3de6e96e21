//! Chunk upload and download.
//!
//! Upload body: a sequence of frames `[32-byte chunk id][u32 big-endian length][payload]`, parsed as the body
//! streams in. Each chunk is verified, sealed and stored as soon as its frame is complete, so memory holds at
//! most one chunk plus one network read, however large the request.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::{Buf, BytesMut};
use cloudsync_types::api::{MissingChunksRequest, MissingChunksResponse, UploadChunksResponse};
use cloudsync_types::{ApiErrorBody, ChunkId, ErrorCode, MAX_CHUNK_SIZE};
use futures_util::StreamExt;

use crate::extract::{Editor, Json, Viewer, WorkspaceAccess};
use crate::{ApiError, AppState};

/// Most bytes in one upload request.
const MAX_UPLOAD_BYTES: usize = 1024 * 1024 * 1024;
const FRAME_HEADER: usize = 36;

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
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    let (mut total, mut stored, mut present) = (0usize, 0u32, 0u32);
    loop {
        while buf.len() >= FRAME_HEADER {
            let len = u32::from_be_bytes([buf[32], buf[33], buf[34], buf[35]]) as usize;
            if len == 0 || len > MAX_CHUNK_SIZE {
                return Err(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("a chunk must be 1 to {MAX_CHUNK_SIZE} bytes; got {len}"),
                ));
            }
            if buf.len() < FRAME_HEADER + len {
                buf.reserve(FRAME_HEADER + len - buf.len());
                break;
            }
            let mut id = [0u8; 32];
            id.copy_from_slice(&buf[..32]);
            buf.advance(FRAME_HEADER);
            let data = buf.split_to(len);
            if st.core.put_chunk(&a, ChunkId(id), &data).await? {
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
    let data = st.core.get_chunk(&a, id).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], Body::from(Bytes::from(data))).into_response())
}
