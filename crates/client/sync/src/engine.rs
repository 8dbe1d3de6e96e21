//! Two-way sync of a local folder with a workspace folder: scan, learn what changed on the server, plan
//! (see [`crate::plan`]), carry the plan out, record the agreed state in the index (see [`crate::index`]).
//!
//! The server side is learned from the change journal: when nothing under the synced folder changed since
//! the index's cursor, the index itself is the server's state and no listing is fetched, so a no-op sync
//! costs one folder walk (stat only) and one small request. The engine's own commits and deletions are
//! recognised in the journal afterwards, so they do not force a listing on the next run either.
//!
//! A sync runs up to [`MAX_ROUNDS`] rounds: a conflict leaves a conflicted copy on disk that the next round
//! uploads, and a file that changed on the server mid-sync is merged in the next round instead of failing
//! the run. Each round saves the index, so a killed sync loses at most the unsaved part of its bookkeeping
//! (those files are then compared by content; chunks already uploaded are not sent again).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use cloudsync_sdk::{Client, ErrorKind};
use cloudsync_types::api::{ChangeKind, CommitRequest, FileEntry, ManifestRef};
use cloudsync_types::{WorkspaceId, WsPath};
use futures_util::{StreamExt as _, stream};
use serde::Serialize;

use crate::e2ee::E2eeFiles;
use crate::e2ee_sync::E2eeSide;
use crate::fetch::{self, Fetched, Job};
use crate::ignore::Rules;
use crate::index::{Entry, Index, IndexFile, Pair, Stat, canonical_folder, peek, unix_ns};
use crate::keys::ChunkKeys;
use crate::localpath::local_path;
use crate::plan::{Action, LocalState, Plan, PlanSummary, Remote, join, plan, remote_from_index};
use crate::push::{Reading, upload};
use crate::retry::retry;
use crate::scan::{LocalFile, scan_dir};
use crate::upload::Outcome;
use crate::{SyncError, TransferSummary, progress};

/// Rounds of scan-plan-execute per sync (see the module docs).
pub const MAX_ROUNDS: usize = 3;
/// Journal entries asked for per request.
const CHANGES_PAGE: u32 = 1000;
/// Deletions sent concurrently.
const DELETE_CONCURRENCY: usize = 8;

/// How to run a sync.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Show progress bars on stderr (only when stderr is a terminal).
    pub progress: bool,
    /// This device's name (conflicted copies carry it).
    pub device_name: String,
    /// The client's state directory; indexes live in it.
    pub state_dir: PathBuf,
    /// The server URL, part of what a folder is paired with.
    pub server: String,
    /// Plan only: change nothing on either side.
    pub dry_run: bool,
    /// The member's keys, for an end-to-end encrypted workspace (files are sealed and opened on this
    /// device; see [`crate::e2ee`]).
    pub e2ee: Option<Arc<E2eeFiles>>,
}

/// What a sync did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    /// Counts and bytes.
    #[serde(flatten)]
    pub summary: TransferSummary,
    /// With `dry_run`: what would change. Otherwise what the first round found to do.
    pub plan: PlanSummary,
    /// Journal position the index now reflects.
    pub cursor: u64,
    /// Rounds run.
    pub rounds: usize,
}

/// Where a folder stands, for `cloudsync status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The workspace it syncs with.
    pub workspace: WorkspaceId,
    /// The workspace folder ("" for the root).
    pub remote: String,
    /// The server.
    pub server: String,
    /// When the last sync completed (Unix ms).
    pub synced_at_ms: Option<i64>,
    /// Files in the index.
    pub files_tracked: usize,
    /// What a sync would do now.
    pub pending: PlanSummary,
    /// Entries that would be skipped, and other oddities.
    pub warnings: Vec<String>,
}

/// The workspace a folder is synced with, from its index (for `status`).
///
/// # Errors
/// `InvalidLocal` when the folder does not exist or has never been synced.
pub fn synced_pair(state_dir: &Path, local: &Path) -> Result<(String, WorkspaceId, WsPath), SyncError> {
    let (_, index, remote) = pairing(state_dir, local)?;
    Ok((index.pair.server, index.pair.workspace, remote))
}

/// The canonical folder, its index and the workspace folder it names.
fn pairing(state_dir: &Path, local: &Path) -> Result<(PathBuf, Index, WsPath), SyncError> {
    let canonical = canonical_folder(local)?;
    let index = peek(state_dir, &canonical).ok_or_else(|| {
        SyncError::InvalidLocal(format!(
            "{} has not been synced yet; run `cloudsync sync {} WORKSPACE[:PATH]` first",
            local.display(),
            local.display()
        ))
    })?;
    let remote = WsPath::parse_prefix(&index.pair.remote)
        .map_err(|e| SyncError::Internal(format!("the index names an invalid folder: {e}")))?;
    Ok((canonical, index, remote))
}

/// Syncs `local` with `remote` in workspace `ws` both ways.
///
/// # Errors
/// `InvalidLocal` when `local` is not a folder, is synced with another place, or is being synced by another
/// process; `Api` for server failures; `Io` for local ones; `Integrity` when the server sends something that
/// does not verify (nothing is written under that file's name then).
pub async fn sync(
    client: &Client,
    ws: WorkspaceId,
    remote: &WsPath,
    local: &Path,
    opts: &SyncOptions,
) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    let canonical = canonical_folder(local)?;
    let file = IndexFile::lock(&opts.state_dir, &canonical)?;
    let pair = Pair { server: opts.server.clone(), workspace: ws, remote: remote.as_str().to_owned() };
    let mut index = match file.load() {
        Some(i) if i.pair == pair => i,
        Some(i) => {
            return Err(SyncError::InvalidLocal(format!(
                "{} is already synced with folder '{}' of workspace {} on {}; a folder syncs with one place. \
                 Sync a different local folder, or move this one's old pairing away with `cloudsync status {} --forget`",
                local.display(),
                i.pair.remote,
                i.pair.workspace,
                i.pair.server,
                local.display()
            )));
        }
        None => Index::new(pair, canonical.clone()),
    };
    let mut engine = Engine::new(client, ws, remote, &canonical, opts).await?;
    let mut report = SyncReport::default();
    // Whether `index.cursor` is a journal position this folder was synced up to. Without one, the server's
    // files are listed in full.
    let mut cursor_known = index.cursor_known();
    for round in 0..MAX_ROUNDS {
        let (mut plan, local_count, cursor) =
            engine.plan_round(&index, cursor_known, &mut report.summary, round == 0).await?;
        // What an earlier round could not do (and said why) is not tried again in this sync.
        plan.actions.retain(|a| match a {
            Action::Upload { rel, .. } | Action::DeleteRemote { rel, .. } | Action::MoveRemote { to: rel, .. } => {
                !engine.settled.contains(rel)
            }
            _ => true,
        });
        if round == 0 {
            report.summary.files_scanned = local_count;
            report.plan = plan.summary();
        }
        report.rounds = round + 1;
        if opts.dry_run {
            break;
        }
        if plan.actions.is_empty() {
            index.cursor = cursor;
            break;
        }
        let result = engine.execute(plan, &mut index, &mut report.summary).await;
        // What was done is recorded even when the round failed part-way.
        index.cursor = cursor;
        cursor_known = true;
        file.save(&index)?;
        result?;
    }
    if !opts.dry_run {
        index.synced_at_ms = Some(unix_ns(SystemTime::now()) / 1_000_000);
        file.save(&index)?;
    }
    report.cursor = index.cursor;
    report.summary.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// What a sync of `local` would do now, without changing anything.
///
/// # Errors
/// As [`sync`]; `InvalidLocal` when the folder has not been synced yet.
pub async fn status(client: &Client, local: &Path, opts: &SyncOptions) -> Result<Status, SyncError> {
    let (canonical, index, remote) = pairing(&opts.state_dir, local)?;
    let (server, ws) = (index.pair.server.clone(), index.pair.workspace);
    let mut engine = Engine::new(client, ws, &remote, &canonical, opts).await?;
    let mut summary = TransferSummary::default();
    // The first round's warnings (scan and plan) are collected in `summary`.
    let (plan, _, _) = engine.plan_round(&index, index.cursor_known(), &mut summary, true).await?;
    let warnings = summary.warnings;
    Ok(Status {
        workspace: ws,
        remote: remote.as_str().to_owned(),
        server,
        synced_at_ms: index.synced_at_ms,
        files_tracked: index.entries.len(),
        pending: plan.summary(),
        warnings,
    })
}

/// Forgets the pairing of `local` (its index), so it can be synced with another place. Files are untouched.
///
/// # Errors
/// `InvalidLocal` when another sync holds the folder; `Io` when the index cannot be removed.
pub fn forget(state_dir: &Path, local: &Path) -> Result<bool, SyncError> {
    let canonical = canonical_folder(local)?;
    let file = IndexFile::lock(state_dir, &canonical)?;
    file.remove()
}

/// The engine's own changes in this run, to recognise them in the journal.
#[derive(Debug, Default)]
struct Own {
    /// (path, version) of our commits.
    commits: HashSet<(String, u64)>,
    /// Paths we moved to the trash.
    deletes: HashSet<String>,
}

struct Engine<'a> {
    client: &'a Client,
    ws: WorkspaceId,
    remote: &'a WsPath,
    root: &'a Path,
    /// The keys local content is hashed with to compare it with the server's (for an end-to-end encrypted
    /// workspace, those of its content, not the server's).
    keys: ChunkKeys,
    opts: &'a SyncOptions,
    own: Own,
    /// Set for an end-to-end encrypted workspace: what touches the server goes through it.
    e2ee: Option<E2eeSide>,
    /// Paths whose upload or deletion this sync could not carry out for a reason another round would not
    /// change (skipped with a warning, or refused by the server); later rounds leave them alone.
    settled: HashSet<String>,
    /// When this sync started (names the folder its set-aside files go to), and whether it set any aside.
    started: SystemTime,
    set_aside_any: bool,
}

impl<'a> Engine<'a> {
    async fn new(
        client: &'a Client,
        ws: WorkspaceId,
        remote: &'a WsPath,
        root: &'a Path,
        opts: &'a SyncOptions,
    ) -> Result<Self, SyncError> {
        let (keys, e2ee) = match &opts.e2ee {
            Some(files) => {
                let side = E2eeSide::new(client, ws, remote.clone(), Arc::clone(files)).await?;
                (side.content_keys().clone(), Some(side))
            }
            None => {
                let workspaces = client.workspaces();
                (ChunkKeys::from_api(&retry(|| workspaces.keys(ws)).await?)?, None)
            }
        };
        let (settled, started) = (HashSet::new(), SystemTime::now());
        Ok(Self {
            client,
            ws,
            remote,
            root,
            keys,
            opts,
            own: Own::default(),
            e2ee,
            settled,
            started,
            set_aside_any: false,
        })
    }

    /// The path the server keeps a workspace path under (another for an end-to-end encrypted workspace).
    fn server_path(&self, path: &WsPath) -> Result<WsPath, SyncError> {
        match &self.e2ee {
            Some(side) => side.server_path(path),
            None => Ok(path.clone()),
        }
    }

    /// Remembers one of this engine's commits, to recognise it in the journal.
    fn own_commit(&mut self, entry: &FileEntry) -> Result<(), SyncError> {
        let path = self.server_path(&entry.path)?;
        self.own.commits.insert((path.as_str().to_owned(), entry.version));
        Ok(())
    }

    /// Scans, learns the server state and plans. Returns the plan, the number of local files and the journal
    /// position the server state reflects.
    async fn plan_round(
        &mut self,
        index: &Index,
        cursor_known: bool,
        summary: &mut TransferSummary,
        first: bool,
    ) -> Result<(Plan, u64, u64), SyncError> {
        let (root, prefix) = (self.root.to_path_buf(), self.remote.clone());
        let spinner = progress::spinner(self.opts.progress, "scanning…");
        let scanning = spinner.clone();
        let scanned = tokio::task::spawn_blocking(move || {
            let rules = Rules::load(&root)?;
            let scan = scan_dir(&root, &prefix, &rules, &scanning)?;
            Ok::<_, SyncError>((rules, scan))
        })
        .await
        .map_err(SyncError::task)?;
        spinner.finish_and_clear();
        let (rules, scan) = scanned?;
        if first {
            for why in scan.skipped {
                summary.skip(why);
            }
        }
        let local: BTreeMap<String, LocalState> =
            scan.files.into_iter().map(|f| (f.rel, LocalState { abs: f.abs, stat: f.stat })).collect();

        let since = cursor_known.then_some(index.cursor);
        let (cursor, changed) = self.remote_changes(since).await?;
        let remote = if changed || since.is_none() {
            self.list_remote().await?
        } else {
            remote_from_index(&index.entries, self.remote)
        };
        let entries = self.settle_racy(&local, &index.entries).await?;
        let mut plan = plan(&local, entries.as_ref().unwrap_or(&index.entries), &remote, &rules);
        let scanned = local.len() as u64;
        if self.opts.dry_run {
            plan = self.drop_unchanged_uploads(plan, local).await?;
        }
        if first {
            for w in &plan.warnings {
                summary.warn(w.clone());
            }
        }
        Ok((plan, scanned, cursor))
    }

    /// Index entries recorded so soon after their file's modification that a later edit might not have moved
    /// its mtime (`racy`) are checked by content when the stat still matches: a file that still holds the
    /// recorded content is unchanged here, so a server-side edit of it is a download, not a conflict. Returns
    /// the entries to plan with when any was settled (the index itself keeps the flag).
    async fn settle_racy(
        &self,
        local: &BTreeMap<String, LocalState>,
        entries: &BTreeMap<String, Entry>,
    ) -> Result<Option<BTreeMap<String, Entry>>, SyncError> {
        let racy: Vec<(String, PathBuf, String)> = entries
            .iter()
            .filter(|(_, e)| e.racy)
            .filter_map(|(rel, e)| {
                let l = local.get(rel).filter(|l| l.stat == e.local)?;
                Some((rel.clone(), l.abs.clone(), e.content_hash.clone()))
            })
            .collect();
        if racy.is_empty() {
            return Ok(None);
        }
        let keys = self.keys.clone();
        let unchanged: Vec<String> = tokio::task::spawn_blocking(move || {
            racy.into_iter().filter(|(_, abs, hash)| holds(abs, &keys, hash)).map(|(rel, _, _)| rel).collect()
        })
        .await
        .map_err(SyncError::task)?;
        if unchanged.is_empty() {
            return Ok(None);
        }
        let mut settled = entries.clone();
        for rel in unchanged {
            if let Some(e) = settled.get_mut(&rel) {
                e.racy = false;
            }
        }
        Ok(Some(settled))
    }

    /// For a preview only: uploads of files whose stat moved but whose content still equals the server's
    /// (touched, or modified within the clock tick of the last sync) are hashed and left out, so `status`
    /// and `--dry-run` list real changes. A real sync needs no such pass: its upload skips them the same way.
    async fn drop_unchanged_uploads(
        &self,
        mut plan: Plan,
        local: BTreeMap<String, LocalState>,
    ) -> Result<Plan, SyncError> {
        let keys = self.keys.clone();
        let actions = std::mem::take(&mut plan.actions);
        plan.actions = tokio::task::spawn_blocking(move || {
            actions
                .into_iter()
                .filter(|a| {
                    let Action::Upload { rel, compare: Some(c), .. } = a else { return true };
                    let Some(l) = local.get(rel).filter(|l| l.stat.size == c.size) else { return true };
                    !holds(&l.abs, &keys, &c.content_hash)
                })
                .collect()
        })
        .await
        .map_err(SyncError::task)?;
        Ok(plan)
    }

    /// The journal position now, and whether anything under the synced folder changed since `since` that
    /// this engine did not do itself (without a position, only the latest one is looked up).
    async fn remote_changes(&self, since: Option<u64>) -> Result<(u64, bool), SyncError> {
        let files = self.client.files(self.ws);
        let mut at = since.unwrap_or(0);
        let mut changed = false;
        loop {
            let page = retry(|| files.changes(at, CHANGES_PAGE)).await?;
            for c in &page.changes {
                at = at.max(c.seq);
                // An end-to-end encrypted workspace's journal names path ids: any change may be below.
                if changed || (self.e2ee.is_none() && !under(self.remote, &c.path)) {
                    continue;
                }
                let ours = match c.kind {
                    ChangeKind::Upsert => self.own.commits.contains(&(c.path.as_str().to_owned(), c.version)),
                    ChangeKind::Delete => self.own.deletes.contains(c.path.as_str()),
                };
                changed |= !ours;
            }
            if !page.more || page.changes.is_empty() {
                return Ok((page.latest.max(at), changed));
            }
            // Without a position there is nothing to compare with: only the latest position matters.
            if since.is_none() {
                return Ok((page.latest, true));
            }
        }
    }

    /// The server's files below the synced folder, by relative path (a spinner shows while they are listed:
    /// on an end-to-end encrypted workspace, every manifest is fetched and checked).
    async fn list_remote(&mut self) -> Result<Remote, SyncError> {
        let spinner = progress::spinner(self.opts.progress, "listing the server's files…");
        let listed = match self.e2ee.as_mut() {
            Some(side) => side.list(self.client, self.ws).await,
            None => {
                let files = self.client.files(self.ws);
                retry(|| files.list_all(self.remote)).await.map_err(SyncError::from).map(|listed| {
                    listed
                        .into_iter()
                        .filter_map(|e| {
                            let rel = e.path.strip_prefix(self.remote)?;
                            if rel.is_empty() { None } else { Some((rel.to_owned(), e)) }
                        })
                        .collect()
                })
            }
        };
        spinner.finish_and_clear();
        listed
    }

    /// Carries out one plan, recording every completed step in `index`.
    async fn execute(&mut self, plan: Plan, index: &mut Index, summary: &mut TransferSummary) -> Result<(), SyncError> {
        let now_ns = unix_ns(SystemTime::now());
        let mut uploads = Vec::new();
        let mut downloads = Vec::new();
        let mut delete_remote = Vec::new();
        let mut moves_remote = Vec::new();
        for action in plan.actions {
            match action {
                Action::Upload { rel, compare, .. } => uploads.push((rel, compare)),
                Action::Download { rel, remote, replace } => downloads.push((rel, remote, replace)),
                Action::DeleteRemote { rel, remote } => delete_remote.push((rel, remote)),
                Action::DeleteLocal { rel, stat } => self.delete_local(&rel, stat, index, summary),
                Action::Forget { rel } => {
                    index.entries.remove(&rel);
                }
                Action::MoveLocal { from, to, remote, stat } => {
                    self.move_local(&from, &to, &remote, stat, index, summary, now_ns);
                }
                Action::MoveRemote { from, to, remote, stat } => moves_remote.push((from, to, remote, stat)),
            }
        }
        // An end-to-end encrypted manifest is sealed to its path: such a rename is the file uploaded under its
        // new name (a new manifest; its chunks are stored already, so none is sent, though a small file's
        // content goes inside the manifest), then the old name trashed.
        let renamed: HashMap<String, (String, FileEntry)> = if self.e2ee.is_some() {
            moves_remote.into_iter().map(|(from, to, remote, _)| (to, (from, remote))).collect()
        } else {
            self.move_remote(moves_remote, index, summary, now_ns).await?;
            HashMap::new()
        };
        self.upload(uploads, renamed, index, summary, now_ns).await?;
        self.download(downloads, index, summary).await?;
        summary.files_deleted += self.delete_remote(delete_remote, index, summary).await?;
        Ok(())
    }

    /// Uploads files (each compared with its server copy, if any), and the targets of `renamed` (new name to
    /// old name and its server file), whose old names then go to the trash as part of the rename.
    async fn upload(
        &mut self,
        mut uploads: Vec<(String, Option<FileEntry>)>,
        renamed: HashMap<String, (String, FileEntry)>,
        index: &mut Index,
        summary: &mut TransferSummary,
        now_ns: i64,
    ) -> Result<(), SyncError> {
        uploads.extend(renamed.keys().map(|to| (to.clone(), None)));
        if uploads.is_empty() {
            return Ok(());
        }
        let (files, rels) = self.local_files(uploads, index, summary);
        let bar = progress::bar(self.opts.progress, files.iter().map(|f| f.stat.size).sum());
        let (client, ws) = (self.client, self.ws);
        let result = match self.e2ee.as_mut() {
            Some(side) => {
                let files = files.into_iter().zip(rels.iter().map(|(_, c)| c.clone())).collect();
                side.upload(client, ws, files, &bar, summary).await
            }
            None => {
                let compare: HashMap<WsPath, FileEntry> =
                    files.iter().zip(&rels).filter_map(|(f, (_, c))| Some((f.ws.clone(), c.clone()?))).collect();
                upload(client, ws, files, compare, &self.keys, Reading::Once, &bar, summary).await
            }
        };
        bar.finish_and_clear();
        let outcomes = result?;
        // Files that got no outcome were skipped (with a warning): not tried again in this sync.
        let done: HashSet<usize> = outcomes.iter().map(|(i, _)| *i).collect();
        let skipped = rels.iter().enumerate().filter(|(i, _)| !done.contains(i));
        self.settled.extend(skipped.map(|(_, (rel, _))| rel.clone()));
        let mut trash = Vec::new();
        for (i, outcome) in outcomes {
            let Some((rel, cmp)) = rels.get(i) else { continue };
            let committed = self.record_upload(rel, cmp.as_ref(), outcome, index, now_ns)?;
            if committed && let Some((from, remote)) = renamed.get(rel) {
                summary.files_uploaded -= 1;
                summary.files_renamed += 1;
                trash.push((from.clone(), remote.clone()));
            }
        }
        // The old names are part of the renames, not deletions of their own.
        self.delete_remote(trash, index, summary).await?;
        Ok(())
    }

    /// The files of `uploads` that are still regular files, each with its relative path and the server copy
    /// it is compared with.
    fn local_files(
        &self,
        uploads: Vec<(String, Option<FileEntry>)>,
        index: &Index,
        summary: &mut TransferSummary,
    ) -> (Vec<LocalFile>, Vec<(String, Option<FileEntry>)>) {
        let mut files = Vec::with_capacity(uploads.len());
        let mut rels = Vec::with_capacity(uploads.len());
        for (rel, cmp) in uploads {
            let (Some(ws_path), Ok(abs)) = (join(self.remote, &rel), local_path(self.root, &rel)) else {
                summary.skip(format!("{rel}: skipped, the name cannot be synced"));
                continue;
            };
            let meta = match std::fs::symlink_metadata(&abs) {
                Ok(m) if m.is_file() => m,
                // Gone or replaced since the scan: the next sync looks again.
                _ => continue,
            };
            let stat = Stat::of(&meta);
            files.push(LocalFile {
                abs,
                ws: ws_path,
                rel: rel.clone(),
                stat,
                likely_unchanged: index.entries.get(&rel).is_some_and(|e| e.local == stat),
                identity: crate::scan::identity(&meta),
            });
            rels.push((rel, cmp));
        }
        (files, rels)
    }

    /// Records what became of one uploaded file in the index. Returns whether it was committed.
    fn record_upload(
        &mut self,
        rel: &str,
        cmp: Option<&FileEntry>,
        outcome: Outcome,
        index: &mut Index,
        now_ns: i64,
    ) -> Result<bool, SyncError> {
        match outcome {
            Outcome::Committed { entry, stat } => {
                self.own_commit(&entry)?;
                index.entries.insert(rel.to_owned(), Entry::new(stat, &entry, now_ns));
                Ok(true)
            }
            Outcome::Unchanged { stat } => {
                if let Some(c) = cmp {
                    index.entries.insert(rel.to_owned(), Entry::new(stat, c, now_ns));
                }
                Ok(false)
            }
            Outcome::Conflict => Ok(false),
        }
    }

    async fn download(
        &mut self,
        downloads: Vec<(String, FileEntry, Option<Stat>)>,
        index: &mut Index,
        summary: &mut TransferSummary,
    ) -> Result<(), SyncError> {
        if downloads.is_empty() {
            return Ok(());
        }
        let mut jobs = Vec::with_capacity(downloads.len());
        let mut rels = Vec::with_capacity(downloads.len());
        for (rel, entry, replace) in downloads {
            // The server named this path: it is validated before it touches the file system.
            match local_path(self.root, &rel) {
                Ok(target) => {
                    jobs.push(Job { entry, root: self.root.to_path_buf(), target, replace });
                    rels.push(rel);
                }
                Err(why) => summary.skip(format!("{rel}: skipped, {why}")),
            }
        }
        let bar = progress::bar(self.opts.progress, jobs.iter().map(|j| j.entry.size).sum());
        let entries: Vec<FileEntry> = jobs.iter().map(|j| j.entry.clone()).collect();
        let (client, ws, device) = (self.client, self.ws, &self.opts.device_name);
        let result = match self.e2ee.as_mut() {
            Some(side) => side.download(client, ws, jobs, device, &bar, summary).await,
            None => fetch::download(client, ws, &self.keys, jobs, device, &bar, summary).await,
        };
        bar.finish_and_clear();
        let now_ns = unix_ns(SystemTime::now());
        for (i, fetched) in result? {
            let (Some(rel), Some(entry)) = (rels.get(i), entries.get(i)) else { continue };
            match fetched {
                Fetched::Written { stat, kept_as } => {
                    summary.files_downloaded += 1;
                    index.entries.insert(rel.clone(), Entry::new(stat, entry, now_ns));
                    if let Some(kept) = kept_as {
                        let name = kept.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                        summary.files_conflicted += 1;
                        summary.conflicts.push(format!(
                            "{rel}: changed on both sides; the server's version is at {rel}, yours was kept as '{name}'"
                        ));
                    }
                }
                Fetched::AlreadyThere { stat } => {
                    summary.files_unchanged += 1;
                    index.entries.insert(rel.clone(), Entry::new(stat, entry, now_ns));
                }
                Fetched::Gone => {}
                Fetched::Skipped(why) => summary.skip(format!("{rel}: skipped, {why}")),
            }
        }
        Ok(())
    }

    /// Moves the server files of local deletions to the trash; returns how many it moved. A role that may
    /// not delete (below admin) leaves the server's copy, with a warning, and the rest of the sync goes on.
    async fn delete_remote(
        &mut self,
        deletes: Vec<(String, FileEntry)>,
        index: &mut Index,
        summary: &mut TransferSummary,
    ) -> Result<u64, SyncError> {
        let files = self.client.files(self.ws);
        let deletes = deletes
            .into_iter()
            .map(|(rel, entry)| Ok((rel, self.server_path(&entry.path)?)))
            .collect::<Result<Vec<_>, SyncError>>()?;
        let mut results = stream::iter(deletes)
            .map(|(rel, path)| {
                let files = &files;
                async move {
                    let res = retry(|| files.delete(&path)).await;
                    (rel, path, res)
                }
            })
            .buffer_unordered(DELETE_CONCURRENCY);
        let mut deleted = 0;
        while let Some((rel, path, res)) = results.next().await {
            match res {
                Ok(_) => {
                    deleted += 1;
                    self.own.deletes.insert(path.as_str().to_owned());
                    index.entries.remove(&rel);
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    index.entries.remove(&rel);
                }
                // Kept in the index: the next sync tries again (the role may have changed by then).
                Err(e) if e.kind() == ErrorKind::Forbidden => {
                    summary.warn(format!(
                        "{rel}: removed here but kept on the server: deleting (and the old name of a rename) needs \
                         the admin role in this workspace; ask an admin to delete it, or pull it back"
                    ));
                    self.settled.insert(rel);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(deleted)
    }

    /// Deletes a local file the server deleted, if it is still the copy the index knows (the server's trash
    /// keeps that content); a file edited since is left for the next round to re-upload.
    fn delete_local(&mut self, rel: &str, stat: Stat, index: &mut Index, summary: &mut TransferSummary) {
        let Ok(abs) = local_path(self.root, rel) else { return };
        match std::fs::symlink_metadata(&abs) {
            Ok(m) if m.is_file() && Stat::of(&m) == stat => {}
            Ok(_) => return,
            Err(_) => {
                index.entries.remove(rel);
                return;
            }
        }
        // Deletions are not signed in an end-to-end encrypted workspace, so a server could make a file look
        // deleted by hiding it: the member's copy is set aside, not erased (said once per sync).
        let removed = if self.e2ee.is_some() { self.set_aside(rel, &abs) } else { std::fs::remove_file(&abs) };
        match removed {
            Ok(()) => {
                summary.files_deleted += 1;
                index.entries.remove(rel);
                remove_empty_parents(self.root, &abs);
                if self.e2ee.is_some() && !self.set_aside_any {
                    self.set_aside_any = true;
                    summary.warn(format!(
                        "files deleted on the server were moved to {}, not erased (a deletion in an end-to-end \
                         encrypted workspace is not signed, so it is kept until you remove it)",
                        self.aside_dir().display()
                    ));
                }
            }
            Err(e) => summary.warn(format!("{}: could not be deleted: {e}", abs.display())),
        }
    }

    /// Where this sync sets files deleted on the server aside: `<state>/deleted/<folder> <start time>`.
    fn aside_dir(&self) -> PathBuf {
        let folder = self.root.file_name().map_or_else(|| "folder".into(), |n| n.to_string_lossy().into_owned());
        let stamp = crate::conflict::stamp(time::OffsetDateTime::from(self.started));
        self.opts.state_dir.join("deleted").join(format!("{folder} {stamp}"))
    }

    /// Moves a file deleted on the server out of the folder into [`Self::aside_dir`], under its path in the
    /// folder (numbered when that name is taken: nothing set aside is overwritten).
    fn set_aside(&self, rel: &str, abs: &Path) -> std::io::Result<()> {
        let dest = local_path(&self.aside_dir(), rel).map_err(std::io::Error::other)?;
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let dest = crate::conflict::first_free(|n| crate::conflict::numbered(&dest, n), "a file set aside")?;
        if std::fs::rename(abs, &dest).is_err() {
            // Another file system: copied, then removed.
            std::fs::copy(abs, &dest)?;
            std::fs::remove_file(abs)?;
        }
        Ok(())
    }

    #[expect(clippy::too_many_arguments, reason = "one step with its bookkeeping")]
    fn move_local(
        &self,
        from: &str,
        to: &str,
        remote: &FileEntry,
        stat: Stat,
        index: &mut Index,
        summary: &mut TransferSummary,
        now_ns: i64,
    ) {
        let (Ok(src), Ok(dst)) = (local_path(self.root, from), local_path(self.root, to)) else {
            summary.skip(format!("{to}: skipped, the name cannot be synced"));
            return;
        };
        let still_same = matches!(std::fs::symlink_metadata(&src), Ok(m) if m.is_file() && Stat::of(&m) == stat);
        if !still_same {
            return;
        }
        match crate::localpath::prepare(self.root, &dst) {
            Ok(Ok(crate::localpath::Existing::Missing)) => {}
            Ok(Ok(_)) => return,
            Ok(Err(why)) => {
                summary.skip(format!("{to}: skipped, {why}"));
                return;
            }
            Err((path, e)) => {
                summary.warn(format!("{}: {e}", path.display()));
                return;
            }
        }
        if let Err(e) = std::fs::rename(&src, &dst) {
            summary.warn(format!("{from} -> {to}: could not rename: {e}"));
            return;
        }
        remove_empty_parents(self.root, &src);
        let moved = std::fs::symlink_metadata(&dst).map(|m| Stat::of(&m)).unwrap_or(stat);
        index.entries.remove(from);
        index.entries.insert(to.to_owned(), Entry::new(moved, remote, now_ns));
        summary.files_renamed += 1;
    }

    /// Local renames: the server gets the same manifest under the new name (no chunk is sent), then the old
    /// name goes to the trash.
    async fn move_remote(
        &mut self,
        moves: Vec<(String, String, FileEntry, Stat)>,
        index: &mut Index,
        summary: &mut TransferSummary,
        now_ns: i64,
    ) -> Result<(), SyncError> {
        if moves.is_empty() {
            return Ok(());
        }
        let files = self.client.files(self.ws);
        // The SDK splits both calls into requests within the server's caps.
        let refs: Vec<ManifestRef> =
            moves.iter().map(|(_, _, r, _)| ManifestRef { path: r.path.clone(), version: Some(r.version) }).collect();
        let manifests = retry(|| files.manifests(&refs)).await?;
        let mut reqs = Vec::new();
        let mut which = Vec::new();
        for ((from, to, remote, stat), m) in moves.into_iter().zip(manifests) {
            let (Some(m), Some(path)) = (m, join(self.remote, &to)) else { continue };
            reqs.push(CommitRequest { path, base_version: None, manifest: m.manifest, mtime_ms: remote.mtime_ms });
            which.push((from, to, remote, stat));
        }
        if reqs.is_empty() {
            return Ok(());
        }
        let results = files.commit_batch(&reqs).await?;
        let mut trash = Vec::new();
        for ((from, to, remote, stat), res) in which.into_iter().zip(results) {
            if let Some(entry) = res.entry {
                self.own_commit(&entry)?;
                index.entries.insert(to, Entry::new(stat, &entry, now_ns));
                summary.files_renamed += 1;
                trash.push((from, remote));
            }
            // A conflict (someone created `to` meanwhile) is merged by the next round.
        }
        // The old names are part of the renames, not deletions of their own.
        self.delete_remote(trash, index, summary).await?;
        Ok(())
    }
}

/// Whether `path` is `prefix` or below it.
fn under(prefix: &WsPath, path: &WsPath) -> bool {
    path.strip_prefix(prefix).is_some()
}

/// Removes now-empty folders between `file` and `root` (exclusive), as a deletion on the server leaves none.
fn remove_empty_parents(root: &Path, file: &Path) {
    let mut dir = file.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) || std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

/// Whether the file at `abs` holds the content whose keyed hash (hex) is `hash`; an unreadable file does not.
fn holds(abs: &Path, keys: &ChunkKeys, hash: &str) -> bool {
    std::fs::File::open(abs)
        .and_then(|f| crate::chunking::hash_reader(f, keys))
        .is_ok_and(|d| crate::keys::hash_matches(&d.hash, hash))
}
