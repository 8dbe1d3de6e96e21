//! Files: commit, listing, download, versions, trash, restore and the change journal.
//!
//! A commit is accepted only when every chunk it names is recorded for this
//! workspace; so a version never becomes visible before all its bytes are durable, and a killed client or
//! server leaves at worst unreferenced chunks (collected later), never a half-visible file.

use std::collections::HashSet;

use cloudsync_store::{FileRecord, NewAudit, NewCommit, NewVersion, StoreError, VersionRecord};
use cloudsync_types::api::{
    CommitRequest, MAX_BATCH_COMMITS, MAX_BATCH_MANIFESTS, MAX_MISSING_QUERY, Manifest, ManifestRef,
};
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

    /// Commits a new version ([`Core::commit_batch`] with one commit).
    ///
    /// # Errors
    /// A malformed manifest, missing chunks, or a stale base version (conflict; nothing is overwritten).
    pub async fn commit(&self, access: &Access, req: &CommitRequest) -> CoreResult<FileRecord> {
        let mut results = self.commit_batch(access, std::slice::from_ref(req)).await?;
        results.pop().unwrap_or_else(|| Err(CoreError::Internal("a commit batch of one answered no result".into())))
    }

    /// Commits many versions in one store transaction, each on its own terms: a malformed request, missing
    /// chunks or a stale base refuses that commit only (with the error a single [`Core::commit`] would give)
    /// and the others go ahead. Results are in request order. One presence query covers every chunk named.
    ///
    /// # Errors
    /// More than [`MAX_BATCH_COMMITS`] commits, or a store failure (then nothing was committed).
    pub async fn commit_batch(
        &self,
        access: &Access,
        reqs: &[CommitRequest],
    ) -> CoreResult<Vec<CoreResult<FileRecord>>> {
        if reqs.len() > MAX_BATCH_COMMITS {
            return Err(CoreError::TooLarge(format!("send at most {MAX_BATCH_COMMITS} commits per batch")));
        }
        let mut results: Vec<CoreResult<()>> = reqs.iter().map(check_commit).collect();
        let mut seen = HashSet::new();
        let ids: Vec<ChunkId> = reqs
            .iter()
            .zip(&results)
            .filter(|(_, ok)| ok.is_ok())
            .flat_map(|(r, _)| r.manifest.chunks.iter().map(|c| c.id))
            .filter(|id| seen.insert(*id))
            .collect();
        let missing: HashSet<ChunkId> = if ids.is_empty() {
            HashSet::new()
        } else {
            self.store.missing_chunks(access.workspace, &ids).await?.into_iter().collect()
        };
        let mut commits = Vec::new();
        for (req, result) in reqs.iter().zip(&mut results) {
            if result.is_err() {
                continue;
            }
            let mut seen = HashSet::new();
            let lacking: Vec<ChunkId> = req
                .manifest
                .chunks
                .iter()
                .map(|c| c.id)
                .filter(|id| missing.contains(id) && seen.insert(*id))
                .collect();
            if !lacking.is_empty() {
                *result = Err(CoreError::MissingChunks(lacking));
                continue;
            }
            let (version, row) = self.new_upload(access, req);
            commits.push(NewCommit { path: req.path.clone(), base: req.base_version, version, audit: vec![row] });
        }
        let done = if commits.is_empty() {
            Vec::new()
        } else {
            self.store.commit_versions(access.workspace, &commits).await?
        };
        let mut done = done.into_iter();
        Ok(results
            .into_iter()
            .map(|r| match r {
                Ok(()) => match done.next() {
                    Some(Ok(rec)) => Ok(rec),
                    Some(Err(stale)) => Err(CoreError::from(StoreError::from(stale))),
                    None => Err(CoreError::Internal("the store answered fewer commits than it was given".into())),
                },
                Err(e) => Err(e),
            })
            .collect())
    }

    /// The version a commit makes, and its `file.upload` audit row.
    fn new_upload(&self, access: &Access, req: &CommitRequest) -> (NewVersion, NewAudit) {
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
        (v, row)
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
        let (manifest, row) = self.accessed(access, path, &v)?;
        self.store.append_audit(&[row]).await?;
        Ok((file, v, manifest))
    }

    /// The manifests of many live files (each at a given version or the current one), in request order;
    /// `None` where there is no such live file or version. Each manifest found is audited as `file.access`,
    /// as [`Core::open_file`] does, with one audit write for the whole request.
    ///
    /// # Errors
    /// More than [`MAX_BATCH_MANIFESTS`] files, or a store failure.
    pub async fn manifests(
        &self,
        access: &Access,
        files: &[ManifestRef],
    ) -> CoreResult<Vec<Option<(VersionRecord, Manifest)>>> {
        if files.len() > MAX_BATCH_MANIFESTS {
            return Err(CoreError::TooLarge(format!("ask for at most {MAX_BATCH_MANIFESTS} manifests per request")));
        }
        let lookups: Vec<(WsPath, Option<u64>)> = files.iter().map(|f| (f.path.clone(), f.version)).collect();
        let found = self.store.live_versions(access.workspace, &lookups).await?;
        let mut rows = Vec::new();
        let mut out = Vec::with_capacity(found.len());
        for (f, v) in files.iter().zip(found) {
            let Some(v) = v else {
                out.push(None);
                continue;
            };
            let (manifest, row) = self.accessed(access, &f.path, &v)?;
            rows.push(row);
            out.push(Some((v, manifest)));
        }
        if !rows.is_empty() {
            self.store.append_audit(&rows).await?;
        }
        Ok(out)
    }

    /// The manifest of version `v` of the file at `path`, and the `file.access` audit row for reading it.
    fn accessed(&self, access: &Access, path: &WsPath, v: &VersionRecord) -> CoreResult<(Manifest, NewAudit)> {
        let manifest =
            decode_manifest(&v.manifest).ok_or_else(|| CoreError::Internal("stored manifest is malformed".into()))?;
        let row = self
            .audit(AuditEvent::FileAccess, Some(&access.actor), Some(access.workspace))
            .target(path.as_str())
            .detail("version", v.version);
        Ok((manifest, row))
    }

    /// All versions of the live file at `path`, newest first.
    ///
    /// # Errors
    /// `NotFound` for an unknown path.
    pub async fn versions(&self, access: &Access, path: &WsPath) -> CoreResult<(FileRecord, Vec<VersionRecord>)> {
        let file = match self.store.file_by_path(access.workspace, path).await? {
            Some(f) => f,
            None => self.store.trashed_file(access.workspace, path).await?.ok_or(CoreError::NotFound("file"))?,
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
    /// makes `version` (default: the previous one) current again as a new version. History is never rewritten:
    /// restoring an old version commits a copy of it.
    ///
    /// # Errors
    /// `NotFound` for nothing to restore, `BadRequest` for a version that does not exist.
    pub async fn restore(&self, access: &Access, path: &WsPath, version: Option<u64>) -> CoreResult<FileRecord> {
        let ws = access.workspace;
        let row = |n: u64, from_trash: bool| {
            self.audit(AuditEvent::FileRestore, Some(&access.actor), Some(ws))
                .target(path.as_str())
                .detail("version", n)
                .detail("from_trash", from_trash)
        };
        let copies = version.is_some() || self.store.file_by_path(ws, path).await?.is_some();
        if copies {
            // A copy of an old version would carry the old manifest's counter, which members refuse as a
            // rollback: a member's client re-signs the old content as a new version instead.
            self.refuse_content_op_if_e2ee(access, "restoring an older version on the server", "").await?;
        }
        if let Some(live) = self.store.file_by_path(ws, path).await? {
            let n = match version {
                Some(n) => n,
                None if live.version > 1 => live.version - 1,
                None => {
                    return Err(CoreError::BadRequest(format!(
                        "{path} has only one version; nothing older to restore"
                    )));
                }
            };
            let copy = self.copy_of_version(access, &live, n).await?;
            return Ok(self.store.commit_version(ws, path, Some(live.version), &copy, &[row(n, false)]).await?);
        }
        let copy = match version {
            Some(n) => {
                let trashed =
                    self.store.trashed_file(ws, path).await?.ok_or(CoreError::NotFound("file in the trash"))?;
                Some(self.copy_of_version(access, &trashed, n).await?)
            }
            None => None,
        };
        let rec = self.store.restore_from_trash(ws, path, copy, &[row(version.unwrap_or_default(), true)]).await;
        rec.map_err(|e| match e {
            cloudsync_store::StoreError::NotFound => CoreError::NotFound("file in the trash"),
            other => other.into(),
        })
    }

    /// A new version with the content of version `n` of `file`, committed by the actor now.
    async fn copy_of_version(&self, access: &Access, file: &FileRecord, n: u64) -> CoreResult<NewVersion> {
        let old = self.store.version(access.workspace, file.id, n).await?.ok_or_else(|| {
            CoreError::BadRequest(format!("{} has no version {n}; see `cloudsync versions`", file.path))
        })?;
        Ok(NewVersion {
            id: VersionId::new(),
            size: old.size,
            content_hash: old.content_hash,
            manifest: old.manifest,
            mtime_ms: old.mtime_ms,
            created_by: Some(access.actor.user_id),
            created_ms: self.now_ms(),
        })
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

/// What a commit must satisfy before the store is asked anything.
fn check_commit(req: &CommitRequest) -> CoreResult<()> {
    if req.path.is_root() {
        return Err(CoreError::BadRequest("name a file to commit, not the workspace root".into()));
    }
    validate_manifest(&req.manifest)
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
