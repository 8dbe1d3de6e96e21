//! The local index of a synced folder: for every file, what it looked like on disk (size, modification
//! time, inode) and which server version it held the last time both sides agreed. It is what makes sync
//! two-way and cheap:
//!
//! - a file whose size, mtime and inode equal its entry has not changed, so a no-op sync reads no file
//!   contents at all;
//! - a file that differs from its entry on one side only changed on that side, so the change flows the
//!   other way without asking the user; a file that differs on both sides is a conflict;
//! - a file missing on one side but present in the index was deleted there, which is how deletions
//!   propagate (instead of being mistaken for new files on the other side).
//!
//! The index lives in the client's state directory, never inside the synced folder (it would sync itself),
//! one file per local folder, named by a hash of the folder's canonical path. A folder syncs with exactly
//! one workspace folder; syncing it elsewhere is refused until the index is removed. Writes go through a
//! temporary file and a rename, so a killed client leaves the previous index, never a torn one — and an
//! index that is behind the truth is safe: the files it does not know about are compared by content.
//! A lock file keeps two syncs of the same folder from running at once.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use cloudsync_types::api::FileEntry;
use cloudsync_types::{FileId, VersionId, WorkspaceId};
use serde::{Deserialize, Serialize};

use crate::SyncError;

/// Format of the index file; a different number is not read (the folder is then compared by content).
const FORMAT: u32 = 1;
/// A file modified this close to the moment it was looked at may change again within the same clock
/// tick without its mtime changing; such entries are re-hashed on the next sync ("racily clean" in git).
const RACY_WINDOW_NS: i64 = 100_000_000;

/// What a file looked like on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Stat {
    pub(crate) size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub(crate) mtime_ns: i64,
    /// Inode number on Unix (0 elsewhere).
    pub(crate) inode: u64,
}

impl Stat {
    pub(crate) fn of(meta: &fs::Metadata) -> Self {
        let mtime_ns = meta.modified().ok().map_or(0, unix_ns);
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        Self { size: meta.len(), mtime_ns, inode }
    }

    /// True when the file was modified so recently that a further change might not move its mtime.
    pub(crate) fn is_racy(&self, now_ns: i64) -> bool {
        now_ns.saturating_sub(self.mtime_ns) < RACY_WINDOW_NS
    }
}

/// Nanoseconds since the Unix epoch (negative before it, saturating far outside ±292 years).
pub(crate) fn unix_ns(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

/// The last agreed state of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// The local file as last seen in agreement.
    pub(crate) local: Stat,
    /// Must be compared by content next time (see [`RACY_WINDOW_NS`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) racy: bool,
    pub(crate) file_id: FileId,
    pub(crate) version: u64,
    pub(crate) version_id: VersionId,
    /// Keyed content hash (hex), equal on both sides.
    pub(crate) content_hash: String,
    /// Server-side modification time recorded with the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) mtime_ms: Option<i64>,
}

impl Entry {
    /// The entry for a local file in agreement with `remote`, looked at when the clock said `now_ns`.
    pub(crate) fn new(local: Stat, remote: &FileEntry, now_ns: i64) -> Self {
        Self {
            local,
            racy: local.is_racy(now_ns),
            file_id: remote.file_id,
            version: remote.version,
            version_id: remote.version_id,
            content_hash: remote.content_hash.clone(),
            mtime_ms: remote.mtime_ms,
        }
    }
}

/// Which workspace folder a local folder syncs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pair {
    pub(crate) server: String,
    pub(crate) workspace: WorkspaceId,
    /// Workspace folder ("" for the root).
    pub(crate) remote: String,
}

/// The whole index of one folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Index {
    format: u32,
    pub(crate) pair: Pair,
    /// The local folder (canonical), for people reading the state directory.
    pub(crate) local: PathBuf,
    /// Change-journal position up to which the remote side is reflected in `entries`.
    pub(crate) cursor: u64,
    /// When the last sync completed (Unix ms), for `status`.
    #[serde(default)]
    pub(crate) synced_at_ms: Option<i64>,
    /// Relative path ('/'-separated) → last agreed state.
    pub(crate) entries: BTreeMap<String, Entry>,
}

impl Index {
    pub(crate) fn new(pair: Pair, local: PathBuf) -> Self {
        Self { format: FORMAT, pair, local, cursor: 0, synced_at_ms: None, entries: BTreeMap::new() }
    }

    /// Whether `cursor` is a journal position the folder was synced up to (0 is one too: an empty journal),
    /// which holds once a sync has completed.
    pub(crate) fn cursor_known(&self) -> bool {
        self.synced_at_ms.is_some()
    }
}

/// Where the index of a local folder is kept, and the lock that guards it.
#[derive(Debug)]
pub(crate) struct IndexFile {
    path: PathBuf,
    /// Held for as long as this value lives.
    _lock: File,
}

/// The file name stem for a canonical local folder.
fn stem(canonical: &Path) -> String {
    let digest = cloudsync_crypto::sha256(canonical.as_os_str().as_encoded_bytes());
    hex::encode(&digest[..16])
}

/// The canonical form of a synced folder (it must exist).
pub(crate) fn canonical_folder(local: &Path) -> Result<PathBuf, SyncError> {
    let canonical = fs::canonicalize(local).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            SyncError::InvalidLocal(format!("{} does not exist; create the folder first", local.display()))
        } else {
            SyncError::io(local, e)
        }
    })?;
    if !canonical.is_dir() {
        return Err(SyncError::InvalidLocal(format!("{} is not a folder; sync works on folders", local.display())));
    }
    Ok(canonical)
}

impl IndexFile {
    /// Locks the index of `canonical` (a folder) in `state_dir`, creating the directory if needed.
    ///
    /// # Errors
    /// `InvalidLocal` when another sync of the folder holds the lock; `Io` when the state directory cannot
    /// be written.
    pub(crate) fn lock(state_dir: &Path, canonical: &Path) -> Result<Self, SyncError> {
        fs::create_dir_all(state_dir).map_err(|e| SyncError::io(state_dir, e))?;
        let stem = stem(canonical);
        let lock_path = state_dir.join(format!("{stem}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| SyncError::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(SyncError::InvalidLocal(format!(
                    "{} is being synced by another cloudsync process; wait for it to finish (or stop its --watch)",
                    canonical.display()
                )));
            }
            Err(fs::TryLockError::Error(e)) => return Err(SyncError::io(&lock_path, e)),
        }
        Ok(Self { path: state_dir.join(format!("{stem}.json")), _lock: lock })
    }

    /// The stored index, or `None` when there is none (or it is unreadable: the folder is then compared
    /// by content, which is slower but loses nothing).
    pub(crate) fn load(&self) -> Option<Index> {
        read_index(&self.path)
    }

    /// Replaces the stored index atomically.
    ///
    /// # Errors
    /// When the state directory cannot be written.
    pub(crate) fn save(&self, index: &Index) -> Result<(), SyncError> {
        let json = serde_json::to_vec(index).map_err(|e| SyncError::Internal(format!("index: {e}")))?;
        let tmp = self.path.with_extension(format!("tmp{}", std::process::id()));
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_data()?;
            fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| SyncError::io(&self.path, e))
    }
}

impl IndexFile {
    /// Deletes the stored index; true if there was one.
    ///
    /// # Errors
    /// When it exists but cannot be removed.
    pub(crate) fn remove(&self) -> Result<bool, SyncError> {
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(SyncError::io(&self.path, e)),
        }
    }
}

/// Reads the index of `canonical` without locking it (for `status`, which changes nothing).
pub(crate) fn peek(state_dir: &Path, canonical: &Path) -> Option<Index> {
    read_index(&state_dir.join(format!("{}.json", stem(canonical))))
}

fn read_index(path: &Path) -> Option<Index> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!("{}: cannot read the sync index ({e}); comparing files by content", path.display());
            return None;
        }
    };
    match serde_json::from_slice::<Index>(&bytes) {
        Ok(index) if index.format == FORMAT => Some(index),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!("{}: the sync index is damaged ({e}); comparing files by content", path.display());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> Pair {
        Pair { server: "https://127.0.0.1:1".into(), workspace: WorkspaceId::new(), remote: "docs".into() }
    }

    #[test]
    fn saves_loads_and_locks() {
        let state = tempfile::tempdir().expect("state");
        let folder = tempfile::tempdir().expect("folder");
        let canonical = canonical_folder(folder.path()).expect("canonical");
        let file = IndexFile::lock(state.path(), &canonical).expect("lock");
        assert!(file.load().is_none());
        // A second sync of the same folder is refused while the first holds the lock.
        let again = IndexFile::lock(state.path(), &canonical).expect_err("locked");
        assert!(matches!(&again, SyncError::InvalidLocal(m) if m.contains("another cloudsync")), "{again}");

        let mut index = Index::new(pair(), canonical.clone());
        index.cursor = 42;
        let remote = FileEntry {
            file_id: FileId::new(),
            path: cloudsync_types::WsPath::parse("docs/a.txt").expect("path"),
            version: 3,
            version_id: VersionId::new(),
            size: 5,
            content_hash: "ab".repeat(32),
            mtime_ms: Some(7),
            modified_at: time::OffsetDateTime::UNIX_EPOCH,
        };
        let stat = Stat { size: 5, mtime_ns: 1_000, inode: 9 };
        index.entries.insert("a.txt".into(), Entry::new(stat, &remote, 10_000_000_000));
        file.save(&index).expect("save");
        let loaded = file.load().expect("load");
        assert_eq!(loaded.cursor, 42);
        assert_eq!(loaded.entries, index.entries);
        assert!(!loaded.entries["a.txt"].racy);
        assert_eq!(peek(state.path(), &canonical).expect("peek").pair, index.pair);

        drop(file);
        let relocked = IndexFile::lock(state.path(), &canonical).expect("lock after release");
        // A damaged index reads as none rather than failing the sync.
        fs::write(&relocked.path, b"{not json").expect("damage");
        assert!(relocked.load().is_none());
    }

    #[test]
    fn times_since_the_epoch() {
        use std::time::Duration;
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_234);
        assert_eq!(unix_ns(t) / 1_000_000, 1_234);
        let before = SystemTime::UNIX_EPOCH - Duration::from_millis(5);
        assert_eq!(unix_ns(before) / 1_000_000, -5);
    }

    #[test]
    fn recent_modifications_are_racy() {
        let stat = Stat { size: 1, mtime_ns: 5_000_000_000, inode: 1 };
        assert!(stat.is_racy(5_050_000_000));
        assert!(!stat.is_racy(5_200_000_000));
        // A file from the future (clock skew) is racy too.
        assert!(stat.is_racy(4_000_000_000));
    }

    #[test]
    fn refuses_missing_or_non_folders() {
        let dir = tempfile::tempdir().expect("dir");
        assert!(matches!(canonical_folder(&dir.path().join("nope")), Err(SyncError::InvalidLocal(_))));
        let f = dir.path().join("f");
        fs::write(&f, b"x").expect("write");
        assert!(matches!(canonical_folder(&f), Err(SyncError::InvalidLocal(_))));
    }
}
