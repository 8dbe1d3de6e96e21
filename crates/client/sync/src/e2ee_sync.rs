//! The end-to-end encrypted side of two-way sync ([`crate::engine`]): the engine plans with the files as
//! members see them (real paths, plaintext sizes and keyed content hashes, taken from verified manifests),
//! and this module carries out what touches the server: listing and verifying, sealing and committing,
//! fetching and opening. The server keeps each file under its path id (see [`crate::e2ee`]).
//!
//! A rename is a new manifest under the new path (its chunks are already stored: only the manifest is
//! sent, with a small file's content inside it) and the old path moved to the trash, since a manifest is sealed and signed to its path.

use std::collections::HashMap;
use std::sync::Arc;

use cloudsync_sdk::Client;
use cloudsync_types::api::FileEntry;
use cloudsync_types::{WorkspaceId, WsPath};
use indicatif::ProgressBar;

use crate::e2ee::{
    Base, Download, E2eeEntry, E2eeFiles, HELD_INLINE_BYTES, Tools, download_all, listing, local_copy,
    next_counter_seen, seal_and_upload, server_keys, under,
};
use crate::e2ee_cache::VerifiedManifests;
use crate::fetch::{Fetched, Job};
use crate::keys::{ChunkKeys, hash_hex};
use crate::localpath::{Existing, prepare};
use crate::plan::Remote;
use crate::scan::LocalFile;
use crate::upload::Outcome;
use crate::{SyncError, TransferSummary};

/// What a sync of an end-to-end encrypted workspace keeps between its steps.
pub(crate) struct E2eeSide {
    files: Arc<E2eeFiles>,
    /// The synced workspace folder.
    prefix: WsPath,
    /// The server's chunk-id keys (they name the sealed chunks).
    server_keys: ChunkKeys,
    /// The keys content is chunked and hashed with on this side.
    content: ChunkKeys,
    /// The last listing's files under the synced folder by path, its next counter, and the manifests checked
    /// so far.
    listed: Option<Listed>,
}

struct Listed {
    files: HashMap<String, E2eeEntry>,
    next_counter: u64,
    verified: Option<VerifiedManifests>,
}

impl E2eeSide {
    /// # Errors
    /// [`SyncError::Api`] when the workspace's keys cannot be fetched.
    pub(crate) async fn new(
        client: &Client,
        ws: WorkspaceId,
        prefix: WsPath,
        files: Arc<E2eeFiles>,
    ) -> Result<Self, SyncError> {
        let server_keys = server_keys(client, ws).await?;
        let content = server_keys.end_to_end(files.keys.content_key(), files.keys.chunking_secret());
        Ok(Self { files, prefix, server_keys, content, listed: None })
    }

    /// The keys local files are hashed with to compare them with the workspace's.
    pub(crate) fn content_keys(&self) -> &ChunkKeys {
        &self.content
    }

    /// The path the server keeps `path` under.
    pub(crate) fn server_path(&self, path: &WsPath) -> Result<WsPath, SyncError> {
        self.files.server_path(path.as_str())
    }

    /// Lists and verifies the workspace's files (rollback checked, each server chunk list compared with the
    /// signed one, as for `pull`) and returns those under the synced folder by relative path, as members see
    /// them.
    pub(crate) async fn list(&mut self, client: &Client, ws: WorkspaceId) -> Result<Remote, SyncError> {
        let l = listing(client, ws, &self.files, &self.server_keys, true, HELD_INLINE_BYTES).await?;
        let prefix = &self.prefix;
        let next_counter = l.next_counter();
        let mut remote = Remote::new();
        let mut files = HashMap::new();
        for f in l.files {
            if under(prefix, &f.path)
                && let Ok(path) = WsPath::parse(&f.path)
                && let Some(rel) = path.strip_prefix(prefix).filter(|r| !r.is_empty())
            {
                let entry = FileEntry {
                    file_id: f.file_id,
                    path: path.clone(),
                    version: f.version,
                    version_id: f.version_id,
                    size: f.size,
                    content_hash: hash_hex(&f.manifest.content_hash),
                    mtime_ms: f.mtime_ms,
                    modified_at: f.modified_at,
                };
                remote.insert(rel.to_owned(), entry);
                files.insert(f.path.clone(), f);
            }
        }
        self.listed = Some(Listed { files, next_counter, verified: Some(l.verified) });
        Ok(remote)
    }

    /// Seals and commits `files`, each replacing the version its base names (none: a new file). Returns each
    /// file's outcome by index; a committed file's entry is the file as members see it.
    pub(crate) async fn upload(
        &mut self,
        client: &Client,
        ws: WorkspaceId,
        files: Vec<(LocalFile, Option<FileEntry>)>,
        bar: &ProgressBar,
        summary: &mut TransferSummary,
    ) -> Result<Vec<(usize, Outcome)>, SyncError> {
        // Without a listing this round the journal showed no one else's change: what this device saw is all
        // there is. Either way a counter is used once: what is committed raises what this device saw.
        let (counter, verified) = match self.listed.as_mut() {
            Some(l) => {
                l.next_counter += 1;
                (l.next_counter - 1, l.verified.take())
            }
            None => (next_counter_seen(&self.files)?, None),
        };
        let verified = verified.unwrap_or_else(|| VerifiedManifests::load(&self.files));
        let files = files
            .into_iter()
            .map(|(f, cmp)| {
                let base = cmp.map(|c| Base { version: c.version, size: c.size, content_hash: c.content_hash });
                (f, base)
            })
            .collect();
        seal_and_upload(client, ws, &self.files, &self.server_keys, files, counter, verified, bar, summary).await
    }

    /// Fetches, opens and verifies the listed files `jobs` name, as [`crate::fetch::download`] does for other
    /// workspaces: a local file that already has the content is left alone, one that may not be replaced is
    /// kept as a conflicted copy.
    pub(crate) async fn download(
        &mut self,
        client: &Client,
        ws: WorkspaceId,
        jobs: Vec<Job>,
        device: &str,
        bar: &ProgressBar,
        summary: &mut TransferSummary,
    ) -> Result<Vec<(usize, Fetched)>, SyncError> {
        if self.listed.is_none() {
            self.list(client, ws).await?;
        }
        let listed = self.listed.as_ref().map(|l| &l.files);
        // Each job's verified file, when it is still the version planned with.
        let entries: Vec<Option<E2eeEntry>> = jobs
            .iter()
            .map(|j| {
                listed
                    .and_then(|l| l.get(j.entry.path.as_str()))
                    .filter(|e| e.version_id == j.entry.version_id)
                    .cloned()
            })
            .collect();
        let content = self.content.clone();
        let inspected = tokio::task::spawn_blocking(move || {
            jobs.into_iter()
                .zip(entries)
                .map(|(job, entry)| inspect(job, entry, &content))
                .collect::<Result<Vec<_>, SyncError>>()
        })
        .await
        .map_err(SyncError::task)??;
        let mut outcomes = Vec::new();
        let (mut downloads, mut which) = (Vec::new(), Vec::new());
        for (i, ins) in inspected.into_iter().enumerate() {
            match ins {
                Inspected::Done(size, f) => {
                    bar.inc(size);
                    outcomes.push((i, f));
                }
                Inspected::Fetch(d) => {
                    downloads.push(*d);
                    which.push(i);
                }
            }
        }
        if downloads.is_empty() {
            return Ok(outcomes);
        }
        let tools = Tools {
            e2ee: Arc::clone(&self.files),
            server_keys: self.server_keys.clone(),
            content: self.content.clone(),
            bar: bar.clone(),
            device: device.to_owned(),
        };
        let written = download_all(&client.files(ws), downloads, tools, summary).await?;
        outcomes.extend(written.into_iter().map(|(j, f)| (which[j], f)));
        Ok(outcomes)
    }
}

enum Inspected {
    /// Nothing to fetch (the job's size, for the progress bar).
    Done(u64, Fetched),
    Fetch(Box<Download>),
}

/// What is at a job's target: nothing, the content already, or a file to replace (or keep aside).
fn inspect(job: Job, entry: Option<E2eeEntry>, content: &ChunkKeys) -> Result<Inspected, SyncError> {
    let size = job.entry.size;
    let Some(entry) = entry else {
        return Ok(Inspected::Done(size, Fetched::Gone));
    };
    let existing = match prepare(&job.root, &job.target).map_err(|(path, e)| SyncError::io(&path, e))? {
        Ok(x) => x,
        Err(why) => return Ok(Inspected::Done(size, Fetched::Skipped(why))),
    };
    if let Existing::File(_) = existing
        && let Some((stat, digest)) = local_copy(&job.target, content)?
        && entry.holds(&digest)
    {
        return Ok(Inspected::Done(size, Fetched::AlreadyThere { stat }));
    }
    Ok(Inspected::Fetch(Box::new(Download { entry, target: job.target, replace: job.replace })))
}
