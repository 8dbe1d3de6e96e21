//! Files: commit, list, manifest, content, versions, delete, restore, trash, changes.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use cloudsync_store::FileRecord;
use cloudsync_store::VersionRecord;
use cloudsync_types::api::{
    Change, ChangeKind, ChangeList, CommitBatchRequest, CommitBatchResponse, CommitRequest, CommitResult,
    DeleteRequest, DeleteResponse, FileEntry, FileList, ManifestsRequest, ManifestsResponse, RestoreRequest,
    TrashEntry, VersionInfo, VersionManifest,
};
use cloudsync_types::{ApiErrorBody, ErrorCode, WsPath};
use futures_util::StreamExt;
use serde::Deserialize;

use super::time_of;
use crate::extract::{Admin, Editor, Json, Query, Viewer, WorkspaceAccess};
use crate::{ApiError, AppState};

pub(crate) fn entry(f: &FileRecord) -> FileEntry {
    FileEntry {
        file_id: f.id,
        path: f.path.clone(),
        version: f.version,
        version_id: f.version_id,
        size: f.size,
        content_hash: f.content_hash.clone(),
        mtime_ms: f.mtime_ms,
        modified_at: time_of(f.modified_ms),
    }
}

fn path_param(raw: &str) -> Result<WsPath, ApiError> {
    WsPath::parse(raw).map_err(|e| ApiError::new(ErrorCode::InvalidPath, format!("invalid path {raw:?}: {e}")))
}

/// Commits a version whose chunks are all stored. A stale base version is a 409 and overwrites nothing.
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/files/commit", tag = "files", params(("ws" = String, Path)),
    request_body = CommitRequest, responses((status = 200, body = FileEntry), (status = 409, body = ApiErrorBody)))]
pub(crate) async fn commit(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Editor>,
    Json(req): Json<CommitRequest>,
) -> Result<axum::Json<FileEntry>, ApiError> {
    Ok(axum::Json(entry(&st.core.commit(&a, &req).await?)))
}

/// Commits many versions in one transaction; each succeeds or fails on its own (a stale base is that commit's
/// `conflict`, and the others still commit).
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/files/commit-batch", tag = "files", params(("ws" = String, Path)),
    request_body = CommitBatchRequest, responses((status = 200, body = CommitBatchResponse), (status = 413, body = ApiErrorBody)))]
pub(crate) async fn commit_batch(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Editor>,
    Json(req): Json<CommitBatchRequest>,
) -> Result<axum::Json<CommitBatchResponse>, ApiError> {
    let done = st.core.commit_batch(&a, &req.commits).await?;
    let results = req
        .commits
        .into_iter()
        .zip(done)
        .map(|(c, r)| match r {
            Ok(f) => CommitResult { path: c.path, entry: Some(entry(&f)), error: None },
            Err(e) => CommitResult { path: c.path, entry: None, error: Some(ApiError::from(e).into_body()) },
        })
        .collect();
    Ok(axum::Json(CommitBatchResponse { results }))
}

/// A version as a file entry, at `path`.
fn version_entry(path: WsPath, v: &VersionRecord) -> FileEntry {
    FileEntry {
        file_id: v.file_id,
        path,
        version: v.version,
        version_id: v.id,
        size: v.size,
        content_hash: v.content_hash.clone(),
        mtime_ms: v.mtime_ms,
        modified_at: time_of(v.created_ms),
    }
}

/// The manifests of many live files, in request order (`null` where there is no such file or version; each
/// one found is audited as file.access).
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/files/manifests", tag = "files", params(("ws" = String, Path)),
    request_body = ManifestsRequest, responses((status = 200, body = ManifestsResponse), (status = 413, body = ApiErrorBody)))]
pub(crate) async fn manifests(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Viewer>,
    Json(req): Json<ManifestsRequest>,
) -> Result<axum::Json<ManifestsResponse>, ApiError> {
    let found = st.core.manifests(&a, &req.files).await?;
    let manifests = req
        .files
        .into_iter()
        .zip(found)
        .map(|(f, m)| m.map(|(v, manifest)| VersionManifest { file: version_entry(f.path, &v), manifest }))
        .collect();
    Ok(axum::Json(ManifestsResponse { manifests }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct ListQuery {
    /// Folder or file to list (default: everything).
    prefix: Option<String>,
    /// Continue after this path.
    after: Option<String>,
    /// Page size (1..5000, default 1000).
    limit: Option<u32>,
}

/// Live files under a prefix, in path order, paged.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/files", tag = "files", params(("ws" = String, Path), ListQuery),
    responses((status = 200, body = FileList)))]
pub(crate) async fn list_files(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Viewer>,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<FileList>, ApiError> {
    let prefix = WsPath::parse_prefix(q.prefix.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::new(ErrorCode::InvalidPath, format!("invalid prefix: {e}")))?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 5000);
    let files = st.core.list_files(&a, &prefix, q.after.as_deref(), limit).await?;
    let next_after = (files.len() == limit as usize).then(|| files.last().map(|f| f.path.to_string())).flatten();
    Ok(axum::Json(FileList { files: files.iter().map(entry).collect(), next_after }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct FileQuery {
    /// File path.
    path: String,
    /// Version number (default: current).
    version: Option<u64>,
}

/// A version's manifest (audited as file.access).
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/files/manifest", tag = "files", params(("ws" = String, Path), FileQuery),
    responses((status = 200, body = VersionManifest), (status = 404, body = ApiErrorBody)))]
pub(crate) async fn manifest(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Viewer>,
    Query(q): Query<FileQuery>,
) -> Result<axum::Json<VersionManifest>, ApiError> {
    let (f, v, manifest) = st.core.open_file(&a, &path_param(&q.path)?, q.version).await?;
    Ok(axum::Json(VersionManifest { file: version_entry(f.path, &v), manifest }))
}

/// A version's content, streamed chunk by chunk (audited as file.access).
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/files/content", tag = "files", params(("ws" = String, Path), FileQuery),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 404, body = ApiErrorBody)))]
pub(crate) async fn content(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Viewer>,
    Query(q): Query<FileQuery>,
) -> Result<Response, ApiError> {
    let (_, v, manifest) = st.core.open_file(&a, &path_param(&q.path)?, q.version).await?;
    let io = st.core.chunk_io(&a).await?;
    let body = stream_chunks(io, &manifest).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, v.size.to_string()),
            (header::ETAG, format!("\"{}\"", v.content_hash)),
        ],
        body,
    )
        .into_response())
}

/// A body that streams a manifest's chunks in order. Every chunk is located before the answer starts (a few
/// queries, not one per chunk), so a chunk the workspace lacks is a 404 rather than a body cut short.
pub(crate) async fn stream_chunks(
    io: cloudsync_server_core::ChunkIo,
    manifest: &cloudsync_types::api::Manifest,
) -> Result<Body, ApiError> {
    let ids: Vec<_> = manifest.chunks.iter().map(|c| c.id).collect();
    let places = io.locate_all(&ids).await?;
    let stream = futures_util::stream::iter(ids.into_iter().zip(places)).then(move |(id, place)| {
        let io = io.clone();
        async move {
            io.read(id, place).await.map(Bytes::from).map_err(|e| {
                tracing::error!(error = %e, "a chunk failed while streaming a download");
                std::io::Error::other("chunk unavailable")
            })
        }
    });
    Ok(Body::from_stream(stream))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct PathQuery {
    /// File path.
    path: String,
}

/// A file's versions, newest first.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/files/versions", tag = "files", params(("ws" = String, Path), PathQuery),
    responses((status = 200, body = Vec<VersionInfo>), (status = 404, body = ApiErrorBody)))]
pub(crate) async fn versions(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Viewer>,
    Query(q): Query<PathQuery>,
) -> Result<axum::Json<Vec<VersionInfo>>, ApiError> {
    let (file, list) = st.core.versions(&a, &path_param(&q.path)?).await?;
    Ok(axum::Json(
        list.into_iter()
            .map(|v| VersionInfo {
                current: v.version == file.version && file.deleted_ms.is_none(),
                version: v.version,
                version_id: v.id,
                size: v.size,
                content_hash: v.content_hash,
                created_by: v.created_by_email,
                created_at: time_of(v.created_ms),
            })
            .collect(),
    ))
}

/// Moves a file or folder to the trash (Admin).
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/files/delete", tag = "files", params(("ws" = String, Path)),
    request_body = DeleteRequest, responses((status = 200, body = DeleteResponse), (status = 404, body = ApiErrorBody)))]
pub(crate) async fn delete_files(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Admin>,
    Json(req): Json<DeleteRequest>,
) -> Result<axum::Json<DeleteResponse>, ApiError> {
    let gone = st.core.delete_path(&a, &req.path).await?;
    Ok(axum::Json(DeleteResponse { deleted: gone.len() as u64 }))
}

/// Restores from the trash, or makes an older version current again (Admin).
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/files/restore", tag = "files", params(("ws" = String, Path)),
    request_body = RestoreRequest, responses((status = 200, body = FileEntry), (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
pub(crate) async fn restore(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Admin>,
    Json(req): Json<RestoreRequest>,
) -> Result<axum::Json<FileEntry>, ApiError> {
    Ok(axum::Json(entry(&st.core.restore(&a, &req.path, req.version).await?)))
}

/// The trash.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/trash", tag = "files", params(("ws" = String, Path)),
    responses((status = 200, body = Vec<TrashEntry>)))]
pub(crate) async fn trash(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Viewer>,
) -> Result<axum::Json<Vec<TrashEntry>>, ApiError> {
    let list = st.core.trash(&a).await?;
    Ok(axum::Json(
        list.into_iter()
            .map(|f| TrashEntry {
                file_id: f.id,
                path: f.path,
                version: f.version,
                size: f.size,
                content_hash: f.content_hash,
                deleted_at: time_of(f.deleted_ms.unwrap_or_default()),
            })
            .collect(),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct ChangesQuery {
    /// Return changes after this sequence number.
    since: Option<u64>,
    /// Page size (default 1000).
    limit: Option<u32>,
}

/// The change journal.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/changes", tag = "files", params(("ws" = String, Path), ChangesQuery),
    responses((status = 200, body = ChangeList)))]
pub(crate) async fn changes(
    State(st): State<AppState>,
    WorkspaceAccess(a, ..): WorkspaceAccess<Viewer>,
    Query(q): Query<ChangesQuery>,
) -> Result<axum::Json<ChangeList>, ApiError> {
    let since = q.since.unwrap_or(0);
    let limit = q.limit.unwrap_or(1000).clamp(1, 5000);
    let list = st.core.changes(&a, since, limit).await?;
    let latest = list.last().map_or(since, |c| c.seq);
    let more = list.len() == limit as usize;
    Ok(axum::Json(ChangeList {
        changes: list
            .into_iter()
            .map(|c| Change {
                seq: c.seq,
                kind: if c.deleted { ChangeKind::Delete } else { ChangeKind::Upsert },
                file_id: c.file_id,
                path: c.path,
                version: c.version,
            })
            .collect(),
        latest,
        more,
    }))
}
