//! Chunk upload and download.
//!
//! Upload body: frames as defined in [`cloudsync_types::frame`], parsed as the body streams in and handed to a
//! [`ChunkUpload`](cloudsync_server_core::ChunkUpload), which verifies and stores them a group at a time and
//! makes them durable and recorded a batch at a time; memory holds a few groups of chunks, however large the
//! request. Fetch answers use the same frames, read a few chunks ahead of the one being sent.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::{Buf, BytesMut};
use cloudsync_types::api::{
    ChunkSignaturesRequest, ChunkSignaturesResponse, FetchChunksRequest, MissingChunksRequest, MissingChunksResponse,
    UploadChunksResponse, UploadDeltasResponse,
};
use cloudsync_types::frame::{FRAME_HEADER_LEN, check_len, frame_header, parse_delta_payload, parse_frame_header};
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
    let mut upload = st.core.chunk_io(&a).await?.upload();
    let mut frames = Frames::new(body, MAX_UPLOAD_BYTES, "send at most 1 GiB of chunks per request");
    while let Some((id, payload)) = frames.next().await? {
        upload.push(id, payload).await?;
    }
    Ok(axum::Json(upload.finish().await?))
}

/// Most bytes in one delta upload request (deltas are small; whole chunks go to `chunks`).
const MAX_DELTA_UPLOAD_BYTES: usize = 256 * 1024 * 1024;
/// Most deltas in one request.
const MAX_DELTA_FRAMES: usize = 4096;
/// Base bytes read plus bytes rebuilt per delta request: a tiny delta can name 32 MiB of bases and expand
/// to 8 MiB, so the work a request may cause is capped, not just its size. Deltas past the budget are
/// answered as failed (the client uploads those chunks whole).
const MAX_DELTA_WORK: usize = 1024 * 1024 * 1024;

/// rsync signatures of the old bytes that new chunks replace, for uploading them as deltas (`chunks/deltas`).
/// The server chooses each base from the manifest of the named version.
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/chunks/signatures", tag = "chunks", params(("ws" = String, Path)),
    request_body = ChunkSignaturesRequest, responses((status = 200, body = ChunkSignaturesResponse), (status = 413, body = ApiErrorBody)))]
pub(crate) async fn chunk_signatures(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Editor>,
    Json(req): Json<ChunkSignaturesRequest>,
) -> Result<axum::Json<ChunkSignaturesResponse>, ApiError> {
    Ok(axum::Json(ChunkSignaturesResponse { signatures: st.core.chunk_signatures(&a, &req.bases).await? }))
}

/// Uploads chunks as deltas against chunks the workspace holds (framed binary body; each payload is
/// `u8 count | count × 32-byte base ids | librsync delta`). A chunk whose delta does not rebuild content
/// matching its id is not stored and is listed in `failed`.
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/chunks/deltas", tag = "chunks", params(("ws" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "frames: 32-byte id of the chunk to rebuild, u32 BE length, delta payload"),
    responses((status = 200, body = UploadDeltasResponse), (status = 400, body = ApiErrorBody), (status = 404, body = ApiErrorBody), (status = 413, body = ApiErrorBody)))]
pub(crate) async fn upload_deltas(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Editor>,
    body: Body,
) -> Result<axum::Json<UploadDeltasResponse>, ApiError> {
    let io = st.core.chunk_io(&a).await?;
    let mut upload = io.upload();
    let (mut failed, mut present, mut count, mut spent) = (Vec::new(), 0u32, 0usize, 0usize);
    let mut frames = Frames::new(body, MAX_DELTA_UPLOAD_BYTES, "send at most 256 MiB of deltas per request");
    while let Some((id, payload)) = frames.next().await? {
        count += 1;
        if count > MAX_DELTA_FRAMES {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("send at most {MAX_DELTA_FRAMES} deltas per request"),
            ));
        }
        let (bases, delta) = parse_delta_payload(&payload).map_err(ApiError::bad_request)?;
        let delta = payload.slice(payload.len() - delta.len()..);
        if io.holds(id).await? {
            present += 1;
        } else if spent >= MAX_DELTA_WORK {
            // Past this request's budget of reading and rebuilding: the client uploads the rest whole.
            failed.push(id);
        } else {
            match io.rebuild(id, &bases, delta, &mut spent).await? {
                Some(data) => upload.push(id, Bytes::from(data)).await?,
                None => failed.push(id),
            }
        }
    }
    let done = upload.finish().await?;
    Ok(axum::Json(UploadDeltasResponse {
        stored: done.stored,
        already_present: done.already_present + present,
        failed,
    }))
}

/// A framed request body, parsed as it streams in: memory holds one frame plus one network read.
struct Frames {
    stream: axum::body::BodyDataStream,
    buf: BytesMut,
    total: usize,
    max_total: usize,
    too_large: &'static str,
}

impl Frames {
    fn new(body: Body, max_total: usize, too_large: &'static str) -> Self {
        Self { stream: body.into_data_stream(), buf: BytesMut::new(), total: 0, max_total, too_large }
    }

    /// The next frame, `None` at the end of the body.
    async fn next(&mut self) -> Result<Option<(ChunkId, Bytes)>, ApiError> {
        loop {
            if let Some(header) = parse_frame_header(&self.buf) {
                let (id, len) = header.map_err(|e| ApiError::new(ErrorCode::PayloadTooLarge, e))?;
                if self.buf.len() >= FRAME_HEADER_LEN + len {
                    self.buf.advance(FRAME_HEADER_LEN);
                    return Ok(Some((id, self.buf.split_to(len).freeze())));
                }
                self.buf.reserve(FRAME_HEADER_LEN + len - self.buf.len());
            }
            match self.stream.next().await {
                Some(Ok(bytes)) => {
                    self.total += bytes.len();
                    if self.total > self.max_total {
                        return Err(ApiError::new(ErrorCode::PayloadTooLarge, self.too_large));
                    }
                    self.buf.extend_from_slice(&bytes);
                }
                Some(Err(e)) => return Err(ApiError::bad_request(format!("the upload was interrupted: {e}"))),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(ApiError::bad_request("the upload ended inside a chunk frame (truncated body)")),
            }
        }
    }
}

/// Chunks a fetch reads (and decrypts) ahead of the one being sent, and packs together at most: memory holds
/// about twice this many chunks, whatever the number asked for.
const FETCH_AHEAD: usize = 4;
/// Payloads at least this large are sent as they are; smaller ones are packed with the frame headers into
/// pieces, because each piece is at least one HTTP/2 DATA frame, and a client's HTTP/2 stack treats a stream
/// of tiny frames it has not consumed yet as a flood and closes the connection.
const PASS_THROUGH: usize = 16 * 1024;

/// Downloads many chunks (plaintext) as one framed body, in request order.
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/chunks/fetch", tag = "chunks", params(("ws" = String, Path)),
    request_body = FetchChunksRequest,
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>, description = "frames: 32-byte id, u32 BE length, payload; one per requested id, in order"),
        (status = 404, body = ApiErrorBody, description = "the workspace does not hold some of the chunks; nothing is sent"),
        (status = 413, body = ApiErrorBody)))]
pub(crate) async fn fetch_chunks(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Viewer>,
    Json(req): Json<FetchChunksRequest>,
) -> Result<Response, ApiError> {
    let io = st.core.chunk_io(&a).await?;
    let places = io.locate(&req.ids).await?;
    let frames = futures_util::stream::iter(req.ids.into_iter().zip(places))
        .map(move |(id, place)| {
            let io = io.clone();
            async move { (id, io.read(id, place).await) }
        })
        .buffered(FETCH_AHEAD)
        .ready_chunks(FETCH_AHEAD)
        .flat_map(|ready| futures_util::stream::iter(pack(ready)));
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], Body::from_stream(frames)).into_response())
}

/// The frames of the chunks read so far, as body pieces: large payloads as they are, everything else packed
/// together. A chunk that cannot be read breaks the body off, so the client sees a truncated answer rather
/// than a wrong one.
fn pack(ready: Vec<(ChunkId, cloudsync_server_core::CoreResult<Vec<u8>>)>) -> Vec<Result<Bytes, std::io::Error>> {
    let mut pieces = Vec::new();
    let mut packed = BytesMut::new();
    for (id, got) in ready {
        let frame = got.map_err(|e| e.to_string()).and_then(|data| check_len(data.len()).map(|len| (len, data)));
        let (len, data) = match frame {
            Ok(f) => f,
            Err(why) => {
                tracing::error!(chunk = %id, error = %why, "a chunk failed while streaming a fetch");
                if !packed.is_empty() {
                    pieces.push(Ok(packed.split().freeze()));
                }
                pieces.push(Err(std::io::Error::other("chunk unavailable")));
                return pieces;
            }
        };
        packed.extend_from_slice(&frame_header(&id, len));
        if data.len() >= PASS_THROUGH {
            pieces.push(Ok(packed.split().freeze()));
            pieces.push(Ok(Bytes::from(data)));
        } else {
            packed.extend_from_slice(&data);
        }
    }
    if !packed.is_empty() {
        pieces.push(Ok(packed.freeze()));
    }
    pieces
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
