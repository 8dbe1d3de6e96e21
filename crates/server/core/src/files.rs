//! Files: chunk upload, commit, listing, download, versions, trash, restore and the change journal.
//!
//! A chunk is accepted only if its id is the keyed hash of its content under the workspace's chunk-id key (so
//! nobody can poison dedup with wrong content under a known id), sealed under the workspace data key, written
//! durably, and only then recorded. A commit is accepted only when every chunk it names is recorded for this
//! workspace; so a version never becomes visible before all its bytes are durable, and a killed client or
//! server leaves at worst unreferenced chunks (collected later), never a half-visible file.

use cloudsync_crypto::keyed_hash;
use cloudsync_store::{FileRecord, NewVersion, VersionRecord};
use cloudsync_types::api::{CommitRequest, MAX_MISSING_QUERY, Manifest};
use cloudsync_types::{AuditEvent, ChunkId, MAX_CHUNK_SIZE, MAX_MANIFEST_CHUNKS, VersionId, WsPath};

use crate::{Access, AuditExt, Core, CoreError, CoreResult, decode_manifest, encode_manifest};

/// Largest page of a file listing.
pub const MAX_LIST_LIMIT: u32 = 5000;

impl Core {
    /// Of `ids`, those the workspace does not hold.
    ///
    /// # Errors
    /// More than [`MAX_MISSING_QUERY`] ids, or a store failure.
    pub async fn missing_chunks(&self, access: &Access, ids: &[ChunkId]) -> CoreResult<Vec<ChunkId>> {
        if ids.len() > MAX_MISSING_QUERY {
            return Err(CoreError::TooLarge(format!("ask about at most {MAX_MISSING_QUERY} chunks per request")));
        }
        Ok(self.store.missing_chunks(access.workspace, ids).await?)
    }

    /// Verifies, seals and stores one chunk. Returns true if it was new.
    ///
    /// # Errors
    /// A chunk over the size cap, an id that does not match the content, or a storage failure.
    pub async fn put_chunk(&self, access: &Access, id: ChunkId, plaintext: &[u8]) -> CoreResult<bool> {
        if plaintext.len() > MAX_CHUNK_SIZE {
            return Err(CoreError::TooLarge(format!("a chunk may be at most {MAX_CHUNK_SIZE} bytes")));
        }
        let (data_key, chunk_key) = self.keys(access.workspace).await?;
        if keyed_hash(&chunk_key, plaintext) != id.0 {
            return Err(CoreError::BadRequest(format!(
                "chunk {id} does not match its content (ids are keyed BLAKE3 under the workspace chunk-id key)"
            )));
        }
        if self.store.missing_chunks(access.workspace, &[id]).await?.is_empty() {
            return Ok(false);
        }
        let stored = self.blobs.put_chunk(&data_key, access.workspace, &id, plaintext).await?;
        let size = u32::try_from(plaintext.len()).map_err(|_| CoreError::TooLarge("chunk too large".into()))?;
        Ok(self.store.record_chunk(access.workspace, id, size, stored).await?)
    }

    /// Reads one chunk of this workspace.
    ///
    /// # Errors
    /// `NotFound` when the workspace does not hold it.
    pub async fn get_chunk(&self, access: &Access, id: ChunkId) -> CoreResult<Vec<u8>> {
        if !self.store.missing_chunks(access.workspace, &[id]).await?.is_empty() {
            return Err(CoreError::NotFound("chunk"));
        }
        let (data_key, _) = self.keys(access.workspace).await?;
        Ok(self.blobs.get_chunk(&data_key, access.workspace, &id).await?)
    }

    /// Commits a new version.
    ///
    /// # Errors
    /// A malformed manifest, missing chunks, or a stale base version (conflict; nothing is overwritten).
    pub async fn commit(&self, access: &Access, req: &CommitRequest) -> CoreResult<FileRecord> {
        if req.path.is_root() {
            return Err(CoreError::BadRequest("name a file to commit, not the workspace root".into()));
        }
        validate_manifest(&req.manifest)?;
        let ids: Vec<ChunkId> = req.manifest.chunks.iter().map(|c| c.id).collect();
        let mut missing = Vec::new();
        for batch in ids.chunks(MAX_MISSING_QUERY) {
            missing.extend(self.store.missing_chunks(access.workspace, batch).await?);
        }
        if !missing.is_empty() {
            return Err(CoreError::MissingChunks(missing));
        }
        let v = NewVersion {
            id: VersionId::new(),
            size: req.manifest.size,
            content_hash: req.manifest.content_hash.clone(),
            manifest: encode_manifest(&req.manifest),
            mtime_ms: req.mtime_ms,
            created_by: Some(access.actor.user_id),
            created_ms: self.now_ms(),
        };
        let row = self
            .audit(AuditEvent::FileUpload, Some(&access.actor), Some(access.workspace))
            .target(req.path.as_str())
            .detail("size", req.manifest.size)
            .detail("version_id", v.id.to_string());
        Ok(self.store.commit_version(access.workspace, &req.path, req.base_version, &v, &[row]).await?)
    }

    /// Live files under `prefix`.
    ///
    /// # Errors
    /// A store failure.
    pub async fn list_files(
        &self,
        access: &Access,
        prefix: &WsPath,
        after: Option<&str>,
        limit: u32,
    ) -> CoreResult<Vec<FileRecord>> {
        Ok(self.store.list_files(access.workspace, prefix, after, limit.clamp(1, MAX_LIST_LIMIT)).await?)
    }

    async fn live(&self, access: &Access, path: &WsPath) -> CoreResult<FileRecord> {
        self.store.file_by_path(access.workspace, path).await?.ok_or(CoreError::NotFound("file"))
    }

    /// A version's manifest (the current one by default), for download. Audited as `file.access`.
    ///
    /// # Errors
    /// `NotFound` for an unknown path or version.
    pub async fn open_file(
        &self,
        access: &Access,
        path: &WsPath,
        version: Option<u64>,
    ) -> CoreResult<(FileRecord, VersionRecord, Manifest)> {
        let file = self.live(access, path).await?;
        let v = self
            .store
            .version(access.workspace, file.id, version.unwrap_or(file.version))
            .await?
            .ok_or(CoreError::NotFound("version"))?;
        let manifest =
            decode_manifest(&v.manifest).ok_or_else(|| CoreError::Internal("stored manifest is malformed".into()))?;
        let row = self
            .audit(AuditEvent::FileAccess, Some(&access.actor), Some(access.workspace))
            .target(path.as_str())
            .detail("version", v.version);
        self.store.append_audit(&[row]).await?;
        Ok((file, v, manifest))
    }

    /// All versions of the live file at `path`, newest first.
    ///
    /// # Errors
    /// `NotFound` for an unknown path.
    pub async fn versions(&self, access: &Access, path: &WsPath) -> CoreResult<(FileRecord, Vec<VersionRecord>)> {
        let file = match self.store.file_by_path(access.workspace, path).await? {
            Some(f) => f,
            None => self
                .store
                .list_trash(access.workspace)
                .await?
                .into_iter()
                .find(|f| &f.path == path)
                .ok_or(CoreError::NotFound("file"))?,
        };
        let versions = self.store.list_versions(access.workspace, file.id).await?;
        Ok((file, versions))
    }

    /// Moves a file, or every file below a folder, to the trash.
    ///
    /// # Errors
    /// `NotFound` when nothing lives at `path`.
    pub async fn delete_path(&self, access: &Access, path: &WsPath) -> CoreResult<Vec<FileRecord>> {
        if path.is_root() {
            return Err(CoreError::BadRequest(
                "refusing to delete the whole workspace root; name a file or folder".into(),
            ));
        }
        let row = self.audit(AuditEvent::FileDelete, Some(&access.actor), Some(access.workspace)).target(path.as_str());
        let gone = self.store.delete_path(access.workspace, path, self.now_ms(), &[row]).await?;
        if gone.is_empty() {
            return Err(CoreError::NotFound("file or folder"));
        }
        Ok(gone)
    }

    /// The trash, most recent first.
    ///
    /// # Errors
    /// A store failure.
    pub async fn trash(&self, access: &Access) -> CoreResult<Vec<FileRecord>> {
        Ok(self.store.list_trash(access.workspace).await?)
    }

    /// Restores: from the trash when no live file is at `path` (optionally a given version of it), otherwise
    /// makes `version` (default: the previous one) current again as a new version.
    ///
    /// # Errors
    /// `NotFound` for nothing to restore, `BadRequest` for a version that does not exist.
    pub async fn restore(&self, access: &Access, path: &WsPath, version: Option<u64>) -> CoreResult<FileRecord> {
        let live = self.store.file_by_path(access.workspace, path).await?;
        let file = match &live {
            Some(f) => f.clone(),
            None => self
                .store
                .list_trash(access.workspace)
                .await?
                .into_iter()
                .find(|f| &f.path == path)
                .ok_or(CoreError::NotFound("file in the trash"))?,
        };
        let wanted = match (&live, version) {
            (Some(f), None) if f.version <= 1 => {
                return Err(CoreError::BadRequest(format!("{path} has only one version; nothing older to restore")));
            }
            (Some(f), None) => Some(f.version - 1),
            (_, v) => v,
        };
        let copy = match wanted {
            Some(n) => {
                let old = self.store.version(access.workspace, file.id, n).await?.ok_or_else(|| {
                    CoreError::BadRequest(format!("{path} has no version {n}; see `cloudsync versions`"))
                })?;
                Some(NewVersion {
                    id: VersionId::new(),
                    size: old.size,
                    content_hash: old.content_hash,
                    manifest: old.manifest,
                    mtime_ms: old.mtime_ms,
                    created_by: Some(access.actor.user_id),
                    created_ms: self.now_ms(),
                })
            }
            None => None,
        };
        let row = self
            .audit(AuditEvent::FileRestore, Some(&access.actor), Some(access.workspace))
            .target(path.as_str())
            .detail("version", wanted.unwrap_or(file.version))
            .detail("from_trash", live.is_none());
        match (live, copy) {
            (Some(f), Some(v)) => {
                Ok(self.store.commit_version(access.workspace, path, Some(f.version), &v, &[row]).await?)
            }
            (None, copy) => Ok(self.store.restore_from_trash(access.workspace, path, copy, &[row]).await?),
            (Some(_), None) => Err(CoreError::Internal("restore without a version".into())),
        }
    }

    /// The change journal after `since`.
    ///
    /// # Errors
    /// A store failure.
    pub async fn changes(
        &self,
        access: &Access,
        since: u64,
        limit: u32,
    ) -> CoreResult<Vec<cloudsync_store::ChangeRecord>> {
        Ok(self.store.changes(access.workspace, since, limit.clamp(1, MAX_LIST_LIMIT)).await?)
    }
}

fn validate_manifest(m: &Manifest) -> CoreResult<()> {
    if m.chunks.len() > MAX_MANIFEST_CHUNKS {
        return Err(CoreError::TooLarge(format!("a file may have at most {MAX_MANIFEST_CHUNKS} chunks")));
    }
    if m.content_hash.len() != 64 || !m.content_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CoreError::BadRequest("content_hash must be 64 hexadecimal characters".into()));
    }
    let mut total: u64 = 0;
    for c in &m.chunks {
        if c.size == 0 || c.size as usize > MAX_CHUNK_SIZE {
            return Err(CoreError::BadRequest(format!("chunk sizes must be 1 to {MAX_CHUNK_SIZE} bytes")));
        }
        total += u64::from(c.size);
    }
    if total != m.size {
        return Err(CoreError::BadRequest(format!(
            "the manifest's size ({}) is not the sum of its chunk sizes ({total})",
            m.size
        )));
    }
    Ok(())
}
