//! Deciding what a two-way sync does, from three views of every path: the local folder now, the server now,
//! and the index (the last state both sides agreed on). Pure and free of I/O, so every case is tested here.
//!
//! A side "changed" when it differs from the index. Then, per path:
//!
//! | local \ remote | unchanged            | changed                | deleted                    |
//! |----------------|----------------------|------------------------|----------------------------|
//! | unchanged      | nothing              | download (replace)     | delete locally             |
//! | changed        | upload               | download, keep local copy as conflicted copy* | upload (re-create) |
//! | deleted        | delete on server     | download               | forget                     |
//!
//! *unless both now hold the same content, which the download step notices (it hashes the local file for
//! chunk reuse anyway) and merely records. A path on both sides that the index does not know (first sync)
//! is treated like "changed on both". Nothing is ever overwritten or deleted that the index does not prove
//! to be an older copy of something the server keeps (deletions on the server go to its trash).
//!
//! Renames are recognised in both directions when the content is unchanged, so they cost no transfer: a
//! local file that vanished and a new one with the same inode, size and mtime is a local move; a server
//! file that vanished and a new one with the same content hash is a server-side move, done locally by a
//! rename.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use cloudsync_types::WsPath;
use cloudsync_types::api::FileEntry;
use serde::Serialize;

use crate::ignore::Rules;
use crate::index::{Entry, Stat};
use crate::localpath::CaseFold;

/// A local regular file as scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalState {
    pub(crate) abs: PathBuf,
    pub(crate) stat: Stat,
}

/// One step of a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Send the local file. `base`: the server version to commit against (`None`: there must be none).
    /// `compare`: the server copy it may still equal (a touched but unchanged file is then only recorded).
    Upload { rel: String, base: Option<u64>, compare: Option<FileEntry> },
    /// Bring the server's file down. `replace`: what the local file may look like to be replaced; any other
    /// local file there is kept as a conflicted copy (unless its content equals the server's).
    Download { rel: String, remote: FileEntry, replace: Option<Stat> },
    /// The local file was deleted: move the server's file to its trash.
    DeleteRemote { rel: String, remote: FileEntry },
    /// The server's file was deleted: delete the local file, if it still looks like `stat`.
    DeleteLocal { rel: String, stat: Stat },
    /// Deleted on both sides: drop the index entry.
    Forget { rel: String },
    /// A local rename of unchanged content: commit `remote`'s manifest at `to`, then trash `from`.
    MoveRemote { from: String, to: String, remote: FileEntry, stat: Stat },
    /// A server-side rename of unchanged content: rename the local file (if it still looks like `stat`).
    MoveLocal { from: String, to: String, remote: FileEntry, stat: Stat },
}

/// What a plan will do, for `status` and `--dry-run`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PlanSummary {
    /// Files that will be uploaded (new or changed locally).
    pub upload: Vec<String>,
    /// Files that will be downloaded (new or changed on the server).
    pub download: Vec<String>,
    /// Files changed on both sides since the last sync: both versions will be kept.
    pub conflicts: Vec<String>,
    /// Files that will be moved to the server's trash (deleted locally).
    pub delete_remote: Vec<String>,
    /// Local files that will be deleted (deleted on the server; restorable from its trash).
    pub delete_local: Vec<String>,
    /// Renames that will be applied without transferring content, as "FROM -> TO".
    pub renames: Vec<String>,
}

/// How many files each kind of step of a plan concerns (the `plan` of a sync's `--json` summary).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct PlanCounts {
    /// Files uploaded (new or changed locally).
    pub upload: usize,
    /// Files downloaded (new or changed on the server).
    pub download: usize,
    /// Files changed on both sides: both versions kept.
    pub conflicts: usize,
    /// Files moved to the server's trash.
    pub delete_remote: usize,
    /// Local files deleted.
    pub delete_local: usize,
    /// Renames applied without transferring content.
    pub renames: usize,
}

impl PlanSummary {
    /// How many files each kind of step concerns.
    pub fn counts(&self) -> PlanCounts {
        PlanCounts {
            upload: self.upload.len(),
            download: self.download.len(),
            conflicts: self.conflicts.len(),
            delete_remote: self.delete_remote.len(),
            delete_local: self.delete_local.len(),
            renames: self.renames.len(),
        }
    }

    /// True when nothing would change.
    pub fn is_empty(&self) -> bool {
        self.upload.is_empty()
            && self.download.is_empty()
            && self.conflicts.is_empty()
            && self.delete_remote.is_empty()
            && self.delete_local.is_empty()
            && self.renames.is_empty()
    }
}

/// A plan and the warnings made while planning.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) actions: Vec<Action>,
    /// Paths changed on both sides (their downloads keep the local file as a conflicted copy).
    pub(crate) conflicts: HashSet<String>,
    pub(crate) warnings: Vec<String>,
}

impl Plan {
    pub(crate) fn summary(&self) -> PlanSummary {
        let mut s = PlanSummary::default();
        for a in &self.actions {
            match a {
                Action::Upload { rel, .. } => s.upload.push(rel.clone()),
                Action::Download { rel, .. } if self.conflicts.contains(rel) => s.conflicts.push(rel.clone()),
                Action::Download { rel, .. } => s.download.push(rel.clone()),
                Action::DeleteRemote { rel, .. } => s.delete_remote.push(rel.clone()),
                Action::DeleteLocal { rel, .. } => s.delete_local.push(rel.clone()),
                Action::Forget { .. } => {}
                Action::MoveRemote { from, to, .. } | Action::MoveLocal { from, to, .. } => {
                    s.renames.push(format!("{from} -> {to}"));
                }
            }
        }
        s
    }
}

/// The server's listing as the planner needs it.
pub(crate) type Remote = BTreeMap<String, FileEntry>;

/// The remote view implied by the index alone (when the journal says nothing changed on the server).
pub(crate) fn remote_from_index(entries: &BTreeMap<String, Entry>, prefix: &WsPath) -> Remote {
    entries
        .iter()
        .filter_map(|(rel, e)| {
            let path = join(prefix, rel)?;
            Some((
                rel.clone(),
                FileEntry {
                    file_id: e.file_id,
                    path,
                    version: e.version,
                    version_id: e.version_id,
                    size: e.local.size,
                    content_hash: e.content_hash.clone(),
                    mtime_ms: e.mtime_ms,
                    modified_at: time::OffsetDateTime::UNIX_EPOCH,
                },
            ))
        })
        .collect()
}

/// `prefix/rel` as a workspace path.
pub(crate) fn join(prefix: &WsPath, rel: &str) -> Option<WsPath> {
    if prefix.as_str().is_empty() { WsPath::parse(rel).ok() } else { WsPath::parse(&format!("{prefix}/{rel}")).ok() }
}

/// Computes the plan.
pub(crate) fn plan(
    local: &BTreeMap<String, LocalState>,
    index: &BTreeMap<String, Entry>,
    remote: &Remote,
    rules: &Rules,
) -> Plan {
    let mut out = Plan::default();
    let paths: BTreeSet<&String> = local.keys().chain(index.keys()).chain(remote.keys()).collect();
    let mut names = CaseFold::default();
    for rel in paths {
        if rules.is_ignored(rel, false) {
            continue;
        }
        let (l, b, r) = (local.get(rel), index.get(rel), remote.get(rel));
        // Two server names that differ only in letter case cannot coexist on case-insensitive file systems.
        let clash = names.first_with_same_name(rel);
        if l.is_none()
            && b.is_none()
            && r.is_some()
            && let Some(first) = clash
        {
            out.warnings.push(format!(
                "{rel}: skipped, its name differs only in letter case from {first} (they cannot both exist on \
                     a case-insensitive file system)"
            ));
            continue;
        }
        let local_changed = match (l, b) {
            (Some(l), Some(b)) => l.stat != b.local || b.racy,
            (None, None) => false,
            _ => true,
        };
        let remote_changed = match (r, b) {
            (Some(r), Some(b)) => r.version_id != b.version_id,
            (None, None) => false,
            _ => true,
        };
        let rel = rel.clone();
        let action = match (local_changed, remote_changed) {
            (false, false) => None,
            (true, false) => match (l, r) {
                (Some(_), r) => Some(Action::Upload { rel, base: r.map(|r| r.version), compare: r.cloned() }),
                (None, Some(r)) => Some(Action::DeleteRemote { rel, remote: r.clone() }),
                (None, None) => Some(Action::Forget { rel }),
            },
            (false, true) => match (r, l) {
                (Some(r), l) => Some(Action::Download { rel, remote: r.clone(), replace: l.map(|l| l.stat) }),
                (None, Some(l)) => Some(Action::DeleteLocal { rel, stat: l.stat }),
                (None, None) => Some(Action::Forget { rel }),
            },
            (true, true) => match (l, r) {
                (None, None) => Some(Action::Forget { rel }),
                // Deleted on the server but edited here: the edit wins, as a new file.
                (Some(_), None) => Some(Action::Upload { rel, base: None, compare: None }),
                (None, Some(r)) => Some(Action::Download { rel, remote: r.clone(), replace: None }),
                // Both have it and both changed (or there is no index yet): keep both unless equal.
                (Some(_), Some(r)) => {
                    out.conflicts.insert(rel.clone());
                    Some(Action::Download { rel, remote: r.clone(), replace: None })
                }
            },
        };
        out.actions.extend(action);
    }
    detect_moves(&mut out.actions, local, index);
    out
}

/// Turns matching delete/create pairs into moves (see the module docs).
fn detect_moves(actions: &mut Vec<Action>, local: &BTreeMap<String, LocalState>, index: &BTreeMap<String, Entry>) {
    // Local moves: vanished files by (inode, size, mtime); the inode must be real (not 0).
    let mut vanished: HashMap<Stat, usize> = HashMap::new();
    let mut duplicate_stats: HashSet<Stat> = HashSet::new();
    // Server moves: vanished server files (local unchanged) by content hash.
    let mut gone: HashMap<&str, usize> = HashMap::new();
    let mut duplicate_hashes: HashSet<&str> = HashSet::new();
    for (i, a) in actions.iter().enumerate() {
        match a {
            Action::DeleteRemote { rel, .. } => {
                if let Some(b) = index.get(rel).filter(|b| b.local.inode != 0)
                    && vanished.insert(b.local, i).is_some()
                {
                    duplicate_stats.insert(b.local);
                }
            }
            Action::DeleteLocal { rel, .. } => {
                if let Some(b) = index.get(rel)
                    && gone.insert(b.content_hash.as_str(), i).is_some()
                {
                    duplicate_hashes.insert(b.content_hash.as_str());
                }
            }
            _ => {}
        }
    }
    let mut replaced: Vec<(usize, usize, Action)> = Vec::new();
    let mut used = HashSet::new();
    for (i, a) in actions.iter().enumerate() {
        match a {
            Action::Upload { rel, base: None, compare: None } if !index.contains_key(rel) => {
                let Some(l) = local.get(rel) else { continue };
                if duplicate_stats.contains(&l.stat) {
                    continue;
                }
                if let Some(&j) = vanished.get(&l.stat)
                    && let Action::DeleteRemote { rel: from, remote } = &actions[j]
                    && used.insert(j)
                {
                    let (from, to, remote) = (from.clone(), rel.clone(), remote.clone());
                    replaced.push((i, j, Action::MoveRemote { from, to, remote, stat: l.stat }));
                }
            }
            Action::Download { rel, remote, replace: None } if !local.contains_key(rel) && !index.contains_key(rel) => {
                let hash = remote.content_hash.as_str();
                if duplicate_hashes.contains(hash) {
                    continue;
                }
                if let Some(&j) = gone.get(hash)
                    && let Action::DeleteLocal { rel: from, stat } = &actions[j]
                    && used.insert(j)
                {
                    let (from, to, remote, stat) = (from.clone(), rel.clone(), remote.clone(), *stat);
                    replaced.push((i, j, Action::MoveLocal { from, to, remote, stat }));
                }
            }
            _ => {}
        }
    }
    if replaced.is_empty() {
        return;
    }
    let mut drop = HashSet::new();
    for (i, j, mv) in replaced {
        actions[i] = mv;
        drop.insert(j);
    }
    let mut k = 0;
    actions.retain(|_| {
        let keep = !drop.contains(&k);
        k += 1;
        keep
    });
}

#[cfg(test)]
mod tests {
    use cloudsync_types::{FileId, VersionId};

    use super::*;

    fn stat(size: u64, mtime_ns: i64, inode: u64) -> Stat {
        Stat { size, mtime_ns, inode }
    }

    fn remote(rel: &str, version: u64, hash: &str) -> FileEntry {
        FileEntry {
            file_id: FileId::new(),
            path: WsPath::parse(rel).expect("path"),
            version,
            version_id: VersionId::new(),
            size: 1,
            content_hash: hash.into(),
            mtime_ms: None,
            modified_at: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn entry(l: Stat, r: &FileEntry) -> Entry {
        Entry::new(l, r, i64::MAX)
    }

    fn local(stat: Stat) -> LocalState {
        LocalState { abs: PathBuf::from("/x"), stat }
    }

    struct World {
        local: BTreeMap<String, LocalState>,
        index: BTreeMap<String, Entry>,
        remote: Remote,
    }

    impl World {
        fn new() -> Self {
            Self { local: BTreeMap::new(), index: BTreeMap::new(), remote: BTreeMap::new() }
        }
        /// A path in sync on both sides.
        fn synced(&mut self, rel: &str, l: Stat, hash: &str) -> FileEntry {
            let r = remote(rel, 1, hash);
            self.local.insert(rel.into(), local(l));
            self.index.insert(rel.into(), entry(l, &r));
            self.remote.insert(rel.into(), r.clone());
            r
        }
        fn plan(&self) -> (Vec<Action>, Vec<String>) {
            let p = plan(&self.local, &self.index, &self.remote, &Rules::defaults_only());
            let mut c: Vec<String> = p.conflicts.into_iter().collect();
            c.sort();
            (p.actions, c)
        }
    }

    #[test]
    fn nothing_changed_means_nothing_to_do() {
        let mut w = World::new();
        w.synced("a", stat(1, 10, 100), "h1");
        w.synced("d/b", stat(2, 20, 101), "h2");
        assert_eq!(w.plan().0, vec![]);
    }

    #[test]
    fn one_sided_changes_flow_the_other_way() {
        let mut w = World::new();
        let a = w.synced("a", stat(1, 10, 100), "h1");
        w.synced("b", stat(1, 10, 101), "h2");
        let c = w.synced("c", stat(1, 10, 102), "h3");
        w.synced("d", stat(1, 10, 103), "h4");
        // a edited locally; b changed on the server; c deleted locally; d deleted on the server.
        w.local.get_mut("a").expect("a").stat = stat(5, 11, 100);
        let b2 = remote("b", 2, "h2b");
        w.remote.insert("b".into(), b2.clone());
        w.local.remove("c");
        w.remote.remove("d");
        // new files on each side
        w.local.insert("new-local".into(), local(stat(3, 1, 200)));
        let nr = remote("new-remote", 1, "hn");
        w.remote.insert("new-remote".into(), nr.clone());
        let (actions, conflicts) = w.plan();
        assert!(conflicts.is_empty());
        assert_eq!(
            actions,
            vec![
                Action::Upload { rel: "a".into(), base: Some(1), compare: Some(a) },
                Action::Download { rel: "b".into(), remote: b2, replace: Some(stat(1, 10, 101)) },
                Action::DeleteRemote { rel: "c".into(), remote: c },
                Action::DeleteLocal { rel: "d".into(), stat: stat(1, 10, 103) },
                Action::Upload { rel: "new-local".into(), base: None, compare: None },
                Action::Download { rel: "new-remote".into(), remote: nr, replace: None },
            ]
        );
    }

    #[test]
    fn changes_on_both_sides() {
        let mut w = World::new();
        w.synced("both-edited", stat(1, 10, 100), "h1");
        w.synced("edited-here-deleted-there", stat(1, 10, 101), "h2");
        w.synced("deleted-here-edited-there", stat(1, 10, 102), "h3");
        w.synced("deleted-both", stat(1, 10, 103), "h4");
        w.local.get_mut("both-edited").expect("x").stat = stat(2, 11, 100);
        let be = remote("both-edited", 2, "h1b");
        w.remote.insert("both-edited".into(), be.clone());
        w.local.get_mut("edited-here-deleted-there").expect("x").stat = stat(2, 11, 101);
        w.remote.remove("edited-here-deleted-there");
        w.local.remove("deleted-here-edited-there");
        let de = remote("deleted-here-edited-there", 2, "h3b");
        w.remote.insert("deleted-here-edited-there".into(), de.clone());
        w.local.remove("deleted-both");
        w.remote.remove("deleted-both");
        let (actions, conflicts) = w.plan();
        assert_eq!(conflicts, vec!["both-edited".to_owned()]);
        assert_eq!(
            actions,
            vec![
                Action::Download { rel: "both-edited".into(), remote: be, replace: None },
                Action::Forget { rel: "deleted-both".into() },
                Action::Download { rel: "deleted-here-edited-there".into(), remote: de, replace: None },
                Action::Upload { rel: "edited-here-deleted-there".into(), base: None, compare: None },
            ]
        );
    }

    #[test]
    fn first_sync_with_files_on_both_sides_compares_them() {
        let mut w = World::new();
        w.local.insert("same".into(), local(stat(1, 1, 1)));
        let r = remote("same", 4, "h");
        w.remote.insert("same".into(), r.clone());
        let (actions, conflicts) = w.plan();
        assert_eq!(conflicts, vec!["same".to_owned()]);
        assert_eq!(actions, vec![Action::Download { rel: "same".into(), remote: r, replace: None }]);
    }

    #[test]
    fn racy_entries_are_compared_by_content() {
        let mut w = World::new();
        let r = w.synced("a", stat(1, 10, 100), "h1");
        w.index.get_mut("a").expect("a").racy = true;
        assert_eq!(w.plan().0, vec![Action::Upload { rel: "a".into(), base: Some(1), compare: Some(r) }]);
    }

    #[test]
    fn renames_on_either_side_need_no_transfer() {
        let mut w = World::new();
        let moved_here = w.synced("old/name.txt", stat(7, 70, 700), "h7");
        w.synced("server/old.txt", stat(8, 80, 800), "h8");
        // Local rename keeps inode, size and mtime.
        let l = w.local.remove("old/name.txt").expect("l");
        w.local.insert("new/name.txt".into(), l);
        // Server-side rename: same content under a new path, old one gone.
        w.remote.remove("server/old.txt");
        let renamed = remote("server/new.txt", 1, "h8");
        w.remote.insert("server/new.txt".into(), renamed.clone());
        let (actions, _) = w.plan();
        assert_eq!(
            actions,
            vec![
                Action::MoveRemote {
                    from: "old/name.txt".into(),
                    to: "new/name.txt".into(),
                    remote: moved_here,
                    stat: stat(7, 70, 700)
                },
                Action::MoveLocal {
                    from: "server/old.txt".into(),
                    to: "server/new.txt".into(),
                    remote: renamed,
                    stat: stat(8, 80, 800)
                },
            ]
        );
    }

    #[test]
    fn ambiguous_renames_fall_back_to_delete_and_create() {
        let mut w = World::new();
        w.synced("a", stat(1, 1, 1), "same");
        w.synced("b", stat(1, 1, 2), "same");
        w.remote.remove("a");
        w.remote.remove("b");
        w.remote.insert("c".into(), remote("c", 1, "same"));
        let (actions, _) = w.plan();
        assert!(actions.iter().all(|a| !matches!(a, Action::MoveLocal { .. })), "{actions:?}");
        assert_eq!(actions.len(), 3);
    }

    #[test]
    fn ignored_paths_are_left_alone_on_both_sides() {
        let mut w = World::new();
        w.local.insert(".notes.txt.swp".into(), local(stat(1, 1, 1)));
        w.remote.insert("x.part".into(), remote("x.part", 1, "h"));
        assert_eq!(w.plan().0, vec![]);
    }

    #[test]
    fn names_differing_only_in_case_download_once() {
        let mut w = World::new();
        w.remote.insert("Report.pdf".into(), remote("Report.pdf", 1, "h1"));
        w.remote.insert("report.pdf".into(), remote("report.pdf", 1, "h2"));
        let p = plan(&w.local, &w.index, &w.remote, &Rules::defaults_only());
        assert_eq!(p.actions.len(), 1);
        assert_eq!(p.warnings.len(), 1);
    }
}
