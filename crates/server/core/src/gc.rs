//! Chunk garbage collection: the space of chunks no version names (uploads a killed client never committed,
//! packs written but never recorded, among them the second copy of a chunk two uploads stored at once) is
//! given back.
//!
//! A run, per workspace:
//! 1. reads every stored manifest (of every version, trashed files' too: the trash stays restorable) and
//!    collects the chunks they name;
//! 2. deletes the chunks condemned by an earlier run at least a grace period ago that no version names, and
//!    spares the condemned ones a version names after all;
//! 3. condemns the chunks recorded at least a grace period ago that no version names (versions committed
//!    while the run went on are read first). A condemned chunk
//!    counts as missing from then on: no new commit can name it, and a client that wants it uploads it again
//!    (which records it afresh and lifts the mark). Deleting only what was condemned a whole grace period
//!    earlier means a commit that checked its chunks just before the mark (a single request) has long landed
//!    and is seen by step 1;
//! 4. removes the packs no recorded chunk is in any more (and chunks stored as objects of their own that were
//!    deleted), and packs never recorded at all that are older than the grace period (a crash between
//!    writing a pack and recording it; a younger one may be an upload in flight).
//!
//! A pack that still holds some live chunks keeps its dead bytes: rewriting live chunks into new packs is not
//! done yet. The report counts the dead bytes of chunks deleted by the run; a second copy of a chunk that never
//! got a row of its own (two uploads racing), inside a pack with live chunks, is not counted and stays.
//!
//! Several servers on one database may all collect: every change is conditional on what the database holds
//! when it is made. The grace period is measured with the servers' clocks and the chunk store's modification
//! times, so they must agree to well within it.
//!
//! A manifest that does not decode stops the run for that workspace before anything is changed: when in
//! doubt, nothing is deleted.

use std::collections::{HashMap, HashSet};

use cloudsync_types::{ChunkId, WorkspaceId};
use serde::Serialize;

use crate::{Core, CoreError, CoreResult, decode_manifest};

/// Manifests read per page.
const MANIFEST_PAGE: u32 = 500;
/// Chunk rows read per page.
const ROW_PAGE: u32 = 5000;
/// The default grace period: a day.
pub const DEFAULT_GC_GRACE_MS: i64 = 24 * 3600 * 1000;
/// The shortest grace period accepted: longer than any single request, so a commit that checked its chunks
/// before they were condemned has landed before they can be deleted.
pub const MIN_GC_GRACE_MS: i64 = 3600 * 1000;

/// How a collection runs.
#[derive(Debug, Clone, Copy)]
pub struct GcOptions {
    /// How long an unreferenced chunk is left alone before it is condemned, and condemned before it is
    /// deleted; and how old an unrecorded pack must be before it is removed.
    pub grace_ms: i64,
    /// Count what would be done, change nothing.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self { grace_ms: DEFAULT_GC_GRACE_MS, dry_run: false }
    }
}

/// What a collection did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Workspaces looked at.
    pub workspaces: u64,
    /// Chunks recorded when the run started.
    pub chunks: u64,
    /// Of those, chunks some version names.
    pub chunks_referenced: u64,
    /// Chunks condemned by this run (deleted by a later one, a grace period on, if still unreferenced).
    pub chunks_condemned: u64,
    /// Condemned chunks a version names after all, spared.
    pub chunks_spared: u64,
    /// Chunks deleted.
    pub chunks_deleted: u64,
    /// Packs removed: no recorded chunk was left in them.
    pub packs_deleted: u64,
    /// Packs removed that were never recorded (older than the grace period).
    pub unrecorded_packs_deleted: u64,
    /// Chunks stored as objects of their own that were removed.
    pub objects_deleted: u64,
    /// Bytes given back to the chunk store (removed packs and objects).
    pub bytes_freed: u64,
    /// Sealed bytes of deleted chunks that still sit in packs with live chunks in them.
    pub dead_bytes_in_live_packs: u64,
    /// Workspaces skipped, with the reason (nothing of theirs was changed).
    pub skipped: Vec<String>,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

impl Core {
    /// Collects the garbage of every workspace (see the module documentation). A workspace that fails is
    /// reported in `skipped` and the others go on.
    ///
    /// # Errors
    /// A grace period under [`MIN_GC_GRACE_MS`], or a store failure listing the workspaces.
    pub async fn collect_garbage(&self, opts: GcOptions) -> CoreResult<GcReport> {
        self.collect_garbage_reporting(opts, |_, _| {}).await
    }

    /// [`Core::collect_garbage`], telling `before_workspace` the position (from 1) and the number of
    /// workspaces before each one is collected, for a progress display.
    ///
    /// # Errors
    /// As [`Core::collect_garbage`].
    pub async fn collect_garbage_reporting(
        &self,
        opts: GcOptions,
        mut before_workspace: impl FnMut(usize, usize) + Send,
    ) -> CoreResult<GcReport> {
        if opts.grace_ms < MIN_GC_GRACE_MS {
            return Err(CoreError::BadRequest(format!(
                "the grace period must be at least {} hour(s): a shorter one could delete chunks an upload in \
                 flight is about to commit",
                MIN_GC_GRACE_MS / 3_600_000
            )));
        }
        let mut report = GcReport { dry_run: opts.dry_run, ..GcReport::default() };
        let workspaces = self.store.workspace_ids().await?;
        for (n, &ws) in workspaces.iter().enumerate() {
            before_workspace(n + 1, workspaces.len());
            report.workspaces += 1;
            if let Err(e) = self.collect_workspace(ws, opts, &mut report).await {
                tracing::warn!(workspace = %ws, error = %e, "garbage collection skipped a workspace");
                report.skipped.push(format!("{ws}: {e}"));
            }
        }
        Ok(report)
    }

    async fn collect_workspace(&self, ws: WorkspaceId, opts: GcOptions, report: &mut GcReport) -> CoreResult<()> {
        let now = self.clock.now_ms();
        let cutoff = now.saturating_sub(opts.grace_ms);
        let (mut referenced, scanned) = self.referenced_chunks(ws, 0).await?;

        let (mut doomed, mut spare, mut condemn) = (Vec::new(), Vec::new(), Vec::<ChunkId>::new());
        let mut doomed_bytes = 0;
        let mut after = None;
        loop {
            let rows = self.store.chunk_rows_page(ws, after, ROW_PAGE).await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.id);
            for r in &rows {
                report.chunks += 1;
                let named = referenced.contains(&r.id);
                report.chunks_referenced += u64::from(named);
                match (named, r.condemned_ms) {
                    (true, Some(_)) => spare.push(r.id),
                    (false, Some(at)) if at < cutoff => {
                        doomed_bytes += u64::from(r.place.stored_size);
                        doomed.push((r.id, r.place));
                    }
                    (false, None) if r.recorded_ms < cutoff => condemn.push(r.id),
                    _ => {}
                }
            }
        }

        // Versions committed since the scan began (a commit that checked its chunks before this run) name
        // chunks too: read them before condemning anything.
        let (newer, _) = self.referenced_chunks(ws, scanned).await?;
        referenced.extend(newer);
        condemn.retain(|id| !referenced.contains(id));

        if opts.dry_run {
            report.chunks_spared += spare.len() as u64;
            report.chunks_deleted += doomed.len() as u64;
            report.chunks_condemned += condemn.len() as u64;
            // An estimate: the sealed bytes of the chunks it would delete (their packs may keep them).
            report.bytes_freed += doomed_bytes;
            return self.unrecorded_packs(ws, cutoff, true, report).await;
        }
        report.chunks_spared += self.store.spare_chunks(ws, &spare).await?;
        // A chunk stored as an object of its own loses its object before its row: a failed delete keeps the
        // row, so the next run tries again (an object without its row would never be found). Its bytes are
        // not needed meanwhile: no version names it, and an upload of it again goes into a pack.
        let mut deletable = Vec::with_capacity(doomed.len());
        for (id, place) in &doomed {
            if place.pack.is_some() {
                deletable.push(*id);
                continue;
            }
            match self.blobs.delete_object(ws, id).await {
                Ok(()) => {
                    deletable.push(*id);
                    report.objects_deleted += 1;
                    report.bytes_freed += u64::from(place.stored_size);
                }
                Err(e) => {
                    tracing::warn!(workspace = %ws, chunk = %id, error = %e, "cannot delete a chunk object; kept for the next run")
                }
            }
        }
        let deleted = self.store.delete_condemned(ws, &deletable, cutoff).await?;
        report.chunks_deleted += deleted.len() as u64;
        report.chunks_condemned += self.store.condemn_chunks(ws, &condemn, cutoff, now).await?;

        // The packs the deleted chunks were in: removed when nothing recorded is left in them.
        let mut dead_in_pack: HashMap<[u8; 16], u64> = HashMap::new();
        for (_, place) in &deleted {
            if let Some(p) = place.pack {
                *dead_in_pack.entry(p).or_default() += u64::from(place.stored_size);
            }
        }
        let packs: Vec<[u8; 16]> = dead_in_pack.keys().copied().collect();
        let in_use: HashSet<[u8; 16]> = self.store.packs_in_use(ws, &packs).await?.into_iter().collect();
        for (pack, dead) in dead_in_pack {
            if in_use.contains(&pack) {
                report.dead_bytes_in_live_packs += dead;
                continue;
            }
            if let Some((size, _)) = self.blobs.pack_info(ws, &pack).await? {
                self.blobs.delete_pack(ws, &pack).await?;
                report.packs_deleted += 1;
                report.bytes_freed += size;
            }
        }

        self.unrecorded_packs(ws, cutoff, false, report).await
    }

    /// Removes (or, in a dry run, counts) the packs no recorded chunk is in that were last written before
    /// `cutoff`: written, then never recorded.
    async fn unrecorded_packs(
        &self,
        ws: WorkspaceId,
        cutoff: i64,
        dry_run: bool,
        report: &mut GcReport,
    ) -> CoreResult<()> {
        let listed = self.blobs.list_packs(ws).await?;
        let in_use: HashSet<[u8; 16]> = self.store.packs_in_use(ws, &listed).await?.into_iter().collect();
        for pack in listed.iter().filter(|p| !in_use.contains(*p)) {
            // An unknown age is not old enough.
            let Some((size, Some(modified))) = self.blobs.pack_info(ws, pack).await? else {
                continue;
            };
            if modified < cutoff {
                if !dry_run {
                    self.blobs.delete_pack(ws, pack).await?;
                }
                report.unrecorded_packs_deleted += 1;
                report.bytes_freed += size;
            }
        }
        Ok(())
    }

    /// Every chunk some stored version of the workspace after position `after` names, and the position of
    /// the last version read (`after` when there is none).
    async fn referenced_chunks(&self, ws: WorkspaceId, mut after: i64) -> CoreResult<(HashSet<ChunkId>, i64)> {
        let mut out = HashSet::new();
        loop {
            let page = self.store.manifests_page(ws, after, MANIFEST_PAGE).await?;
            let Some((last, _)) = page.last() else { break };
            after = *last;
            for (_, bytes) in &page {
                let m = decode_manifest(bytes).ok_or_else(|| {
                    CoreError::Internal("a stored manifest does not decode; nothing was collected".into())
                })?;
                out.extend(m.chunks.iter().map(|c| c.id));
            }
        }
        Ok((out, after))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use cloudsync_crypto::{SecretKey, keyed_hash};
    use cloudsync_types::WsPath;
    use cloudsync_types::api::{CommitRequest, Manifest, ManifestChunk};

    use super::*;
    use crate::testutil::{editor_workspace, files_below};
    use crate::{Access, ChunkIo, Clock, CoreError};

    const HOUR: i64 = 3_600_000;

    fn chunk(key: &SecretKey, name: &str) -> (ChunkId, Bytes) {
        let data = Bytes::from(format!("the chunk called {name} ").repeat(4));
        (ChunkId(keyed_hash(key, &data)), data)
    }

    /// Stores `chunks` in one upload request (one pack).
    async fn upload(io: &ChunkIo, chunks: &[&(ChunkId, Bytes)]) {
        let mut up = io.upload();
        for (id, data) in chunks {
            up.push(*id, data.clone()).await.expect("push");
        }
        up.finish().await.expect("finish");
    }

    fn commit(path: &str, chunks: &[&(ChunkId, Bytes)]) -> CommitRequest {
        let chunks: Vec<ManifestChunk> =
            chunks.iter().map(|(id, d)| ManifestChunk { id: *id, size: d.len() as u32 }).collect();
        CommitRequest {
            path: WsPath::parse(path).expect("path"),
            base_version: None,
            manifest: Manifest {
                size: chunks.iter().map(|c| u64::from(c.size)).sum(),
                content_hash: "ab".repeat(32),
                chunks,
            },
            mtime_ms: None,
        }
    }

    fn now_real_ms() -> i64 {
        crate::SystemClock.now_ms()
    }

    async fn missing(core: &Core, access: &Access, ids: &[ChunkId]) -> Vec<ChunkId> {
        core.missing_chunks(access, ids).await.expect("missing")
    }

    #[tokio::test]
    async fn unreferenced_chunks_are_condemned_then_deleted_and_their_packs_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (core, clock, access, key) = editor_workspace(dir.path()).await;
        let ws = access.workspace;
        let io = core.chunk_io(&access).await.expect("io");
        let chunks_dir = dir.path().join("chunks");
        let gc = |dry_run| core.collect_garbage(GcOptions { grace_ms: HOUR, dry_run });

        let (kept, trashed, orphan, lone, twin) = (
            chunk(&key, "kept"),
            chunk(&key, "trashed"),
            chunk(&key, "orphan"),
            chunk(&key, "lone"),
            chunk(&key, "twin"),
        );
        // `kept` and `orphan` share a pack; `lone` has one of its own and is never committed; `trashed` is in a
        // file that goes to the trash; `twin` is committed later, after it was condemned.
        upload(&io, &[&kept, &orphan]).await;
        upload(&io, &[&lone]).await;
        upload(&io, &[&trashed]).await;
        upload(&io, &[&twin]).await;
        core.commit(&access, &commit("a.txt", &[&kept])).await.expect("commit a");
        core.commit(&access, &commit("gone.txt", &[&trashed])).await.expect("commit gone");
        core.delete_path(&access, &WsPath::parse("gone.txt").expect("p")).await.expect("to the trash");
        assert_eq!(files_below(&chunks_dir), 4, "four packs");

        // Nothing is old enough yet: the test clock is behind the store's, so move it past the recording.
        let report = gc(false).await.expect("gc");
        assert_eq!((report.chunks, report.chunks_referenced, report.chunks_condemned), (5, 2, 0), "{report:?}");
        clock.advance_ms(now_real_ms() - crate::testutil::START_MS + 2 * HOUR);

        // A dry run counts and changes nothing.
        let dry = gc(true).await.expect("dry run");
        assert_eq!((dry.chunks_condemned, dry.chunks_deleted, dry.dry_run), (3, 0, true), "{dry:?}");
        let all = [kept.0, trashed.0, orphan.0, lone.0, twin.0];
        assert!(missing(&core, &access, &all).await.is_empty());

        // First run: the three unreferenced chunks are condemned; the trashed file's chunk is not.
        let first = gc(false).await.expect("gc");
        assert_eq!((first.chunks_condemned, first.chunks_deleted, first.packs_deleted), (3, 0, 0), "{first:?}");
        assert_eq!(missing(&core, &access, &all).await, vec![orphan.0, lone.0, twin.0]);
        // A commit cannot name a condemned chunk ...
        let refused = core.commit(&access, &commit("b.txt", &[&twin])).await.expect_err("condemned");
        assert!(matches!(refused, CoreError::MissingChunks(ref ids) if ids == &vec![twin.0]), "{refused}");
        // ... until it is uploaded again, which lifts the mark (and stores it anew: its old pack is now dead).
        upload(&io, &[&twin]).await;
        core.commit(&access, &commit("b.txt", &[&twin])).await.expect("commit b");
        // A chunk condemned while a version names it (a commit that landed just before the mark) is spared.
        core.store().condemn_chunks(ws, &[kept.0], i64::MAX, clock.now_ms()).await.expect("condemn");

        // A grace period later: the condemned ones are deleted; the packs left empty are removed, the shared
        // one stays with its dead bytes counted.
        clock.advance_ms(2 * HOUR);
        let second = gc(false).await.expect("gc");
        assert_eq!(second.chunks_spared, 1, "{second:?}");
        assert_eq!(second.chunks_deleted, 2, "orphan and lone: {second:?}");
        assert_eq!(second.packs_deleted, 1, "lone's pack: {second:?}");
        assert_eq!(second.unrecorded_packs_deleted, 1, "twin's first pack, never recorded again: {second:?}");
        assert!(second.dead_bytes_in_live_packs > 0, "{second:?}");
        assert!(second.bytes_freed > 0, "{second:?}");
        assert_eq!(files_below(&chunks_dir), 3, "kept+orphan, trashed, twin's new pack");
        assert!(second.skipped.is_empty(), "{second:?}");

        // Everything a version names still reads back, the trashed file's chunk included.
        for (id, data) in [&kept, &trashed, &twin] {
            assert_eq!(io.get(*id).await.expect("read"), data.to_vec());
        }
        assert_eq!(missing(&core, &access, &all).await, vec![orphan.0, lone.0]);
        // A later run finds nothing more to do.
        clock.advance_ms(2 * HOUR);
        let third = gc(false).await.expect("gc");
        assert_eq!((third.chunks_condemned, third.chunks_deleted, third.packs_deleted), (0, 0, 0), "{third:?}");
        assert_eq!(third.chunks, 3);
    }

    #[tokio::test]
    async fn versions_committed_after_the_scan_began_are_read_before_anything_is_condemned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (core, _, access, key) = editor_workspace(dir.path()).await;
        let ws = access.workspace;
        let io = core.chunk_io(&access).await.expect("io");
        let (first, late) = (chunk(&key, "first"), chunk(&key, "late"));
        upload(&io, &[&first, &late]).await;
        core.commit(&access, &commit("a.txt", &[&first])).await.expect("commit a");
        let (seen, scanned) = core.referenced_chunks(ws, 0).await.expect("scan");
        assert_eq!(seen, HashSet::from([first.0]));
        // A commit lands while the run goes on: the second read finds it, and only it.
        core.commit(&access, &commit("b.txt", &[&late])).await.expect("commit b");
        let (newer, last) = core.referenced_chunks(ws, scanned).await.expect("rescan");
        assert_eq!(newer, HashSet::from([late.0]));
        assert!(last > scanned);
        let (none, same) = core.referenced_chunks(ws, last).await.expect("nothing newer");
        assert!(none.is_empty() && same == last);
    }

    #[tokio::test]
    async fn packs_never_recorded_go_only_once_older_than_the_grace_period() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (core, clock, access, key) = editor_workspace(dir.path()).await;
        let ws = access.workspace;
        let io = core.chunk_io(&access).await.expect("io");
        let live = chunk(&key, "live");
        upload(&io, &[&live]).await;
        core.commit(&access, &commit("a.txt", &[&live])).await.expect("commit");
        clock.advance_ms(now_real_ms() - crate::testutil::START_MS);

        // Two packs a crashed upload left behind: one written three hours ago, one a minute ago.
        let dir_of = dir.path().join(format!("chunks/ws/{}/p/ab", ws));
        std::fs::create_dir_all(&dir_of).expect("mkdir");
        let write = |name: &str, age_ms: i64| {
            let path = dir_of.join(name);
            std::fs::write(&path, b"CSPACK1\npartial").expect("write");
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis((clock.now_ms() - age_ms) as u64);
            std::fs::File::options().write(true).open(&path).expect("open").set_modified(at).expect("mtime");
        };
        write(&format!("ab{}", "11".repeat(15)), 3 * HOUR);
        write(&format!("ab{}", "22".repeat(15)), 60_000);
        // A file that is not named as a pack is not ours to judge.
        write("notes.txt", 3 * HOUR);

        let report = core.collect_garbage(GcOptions { grace_ms: HOUR, dry_run: false }).await.expect("gc");
        assert_eq!(report.unrecorded_packs_deleted, 1, "{report:?}");
        assert!(!dir_of.join(format!("ab{}", "11".repeat(15))).exists());
        assert!(dir_of.join(format!("ab{}", "22".repeat(15))).exists(), "a young one may be an upload in flight");
        assert!(dir_of.join("notes.txt").exists());
        assert_eq!(io.get(live.0).await.expect("read"), live.1.to_vec());

        let err = core.collect_garbage(GcOptions { grace_ms: 60_000, dry_run: false }).await.expect_err("short grace");
        assert!(err.to_string().contains("grace period"), "{err}");
    }
}
