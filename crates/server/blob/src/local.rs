//! Batched durable writes to the local disk.
//!
//! Writing each chunk through OpenDAL's fs service costs an fsync per object (its writer calls `sync_all`
//! before renaming the temporary file into place, and leaves the directory entry itself unsynced). For a push
//! of thousands of small files that is thousands of fsyncs, so local writes bypass OpenDAL and are made durable
//! a batch at a time instead:
//!
//! 1. [`LocalDisk::stage`]: each sealed chunk goes to its own new file under `root/.tmp`, without fsync.
//! 2. [`LocalDisk::persist`], for the whole batch: a barrier makes the temporary files' data durable (one
//!    `syncfs(2)` of the chunk file system on Linux; elsewhere an fsync of each file); the target directories
//!    are created; each file is renamed to its final name; a second barrier makes the renames and new
//!    directories durable (`syncfs` again, or an fsync of each touched directory).
//!
//! Only after `persist` returns may the caller record the chunks in the metadata store. So a crash at any point
//! leaves either an unrecorded file (a temporary one, or a final one nobody refers to yet, which the next
//! upload of that chunk overwrites) or a recorded chunk whose bytes are durable under its final name; never a
//! recorded chunk that is missing or partial. Because the data barrier comes before any rename, a rename never
//! replaces a durable chunk (say, one a concurrent request just recorded) with a file whose data could still be
//! lost.
//!
//! `syncfs` flushes every dirty page of the file system, not only ours: on a file system shared with other
//! busy writers a barrier waits for their data too, so a dedicated file system for the chunk directory gives
//! the steadiest upload latency.
//!
//! Reads are plain file reads too ([`LocalDisk::read`]); deletes still go through OpenDAL.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::BlobError;

/// Temporary files older than this are left-overs of a crash and are removed when the store is opened.
const STALE_TEMP_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// A durability barrier over `paths` (the temporary files, then the touched directories) under `root`.
pub(crate) type Barrier = fn(root: &Path, paths: &[PathBuf]) -> std::io::Result<()>;

/// The chunk directory on local disk.
#[derive(Debug)]
pub(crate) struct LocalDisk {
    root: PathBuf,
    tmp: PathBuf,
    barrier: Barrier,
}

/// A sealed chunk in a temporary file, not yet durable and not yet under its final name. Dropped without
/// being persisted (a failed or abandoned upload), it removes its temporary file.
#[derive(Debug)]
pub(crate) struct TempChunk {
    tmp: PathBuf,
    target: PathBuf,
    persisted: bool,
}

impl Drop for TempChunk {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl LocalDisk {
    /// Uses `root` (with `root/.tmp` already created) and removes temporary files a crash left behind.
    pub(crate) fn new(root: PathBuf, tmp: PathBuf) -> Self {
        remove_stale_temps(&tmp);
        Self { root, tmp, barrier: sync_barrier }
    }

    /// Reads the object at `key` (a path relative to the root); `Ok(None)` when there is none. One plain
    /// read of a file of known size: OpenDAL's fs reader zero-fills a large buffer for every object, which
    /// dominated the server's CPU while it streamed thousands of small chunks.
    pub(crate) fn read(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        let path = self.root.join(key);
        match std::fs::read(&path) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(BlobError::Io { action: "read the chunk file", path, source }),
        }
    }

    /// The same directory with another barrier (tests observe the order of barriers and renames).
    #[cfg(test)]
    pub(crate) fn with_barrier(mut self, barrier: Barrier) -> Self {
        self.barrier = barrier;
        self
    }

    /// Writes `sealed` to a new temporary file for the object `key`. Blocking.
    pub(crate) fn stage(&self, key: &str, sealed: &[u8]) -> Result<TempChunk, BlobError> {
        let base = key.rsplit('/').next().unwrap_or("chunk");
        // Temporary files are spread over subfolders (by the first two characters of the chunk id), so the
        // threads staging a batch, and the renames out of it, do not all queue on one folder's lock.
        let dir = self.tmp.join(base.get(..2).unwrap_or("00"));
        let tmp = dir.join(format!("{base}.{}", hex::encode(random_suffix())));
        let chunk = TempChunk { tmp, target: self.root.join(key), persisted: false };
        let created = match File::create_new(&chunk.tmp) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&dir).map_err(io_error("create the folder", &dir))?;
                File::create_new(&chunk.tmp)
            }
            other => other,
        };
        let mut f = created.map_err(io_error("create the staged chunk", &chunk.tmp))?;
        f.write_all(sealed).map_err(io_error("write the staged chunk", &chunk.tmp))?;
        Ok(chunk)
    }

    /// Makes every chunk of the batch durable under its final name (see the module documentation). Blocking.
    /// On error no chunk may be recorded; temporary files of the batch are removed as the chunks drop.
    pub(crate) fn persist(&self, mut chunks: Vec<TempChunk>) -> Result<(), BlobError> {
        if chunks.is_empty() {
            return Ok(());
        }
        let temps: Vec<PathBuf> = chunks.iter().map(|c| c.tmp.clone()).collect();
        (self.barrier)(&self.root, &temps).map_err(io_error("sync the staged chunks under", &self.root))?;
        let mut dirs = BTreeSet::new();
        for c in &chunks {
            if let Some(parent) = c.target.parent() {
                dirs.insert(parent.to_path_buf());
            }
        }
        for d in &dirs {
            std::fs::create_dir_all(d).map_err(io_error("create the folder", d))?;
        }
        for c in &mut chunks {
            std::fs::rename(&c.tmp, &c.target).map_err(io_error("rename the staged chunk to", &c.target))?;
            c.persisted = true;
        }
        // Every directory a rename or a new directory changed, up to the root.
        let mut touched = BTreeSet::new();
        for d in &dirs {
            let mut cur = d.as_path();
            while cur.starts_with(&self.root) && touched.insert(cur.to_path_buf()) && cur != self.root {
                match cur.parent() {
                    Some(p) => cur = p,
                    None => break,
                }
            }
        }
        // The staging folders lost entries (and may be new themselves).
        touched.insert(self.tmp.clone());
        for c in &chunks {
            if let Some(parent) = c.tmp.parent() {
                touched.insert(parent.to_path_buf());
            }
        }
        (self.barrier)(&self.root, &touched.into_iter().collect::<Vec<_>>())
            .map_err(io_error("sync the renamed chunks and their folders under", &self.root))
    }
}

/// Wraps an I/O error with the step that failed (`action`, as in "cannot {action} {path}") and its path.
fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BlobError {
    move |source| BlobError::Io { action, path: path.to_path_buf(), source }
}

fn random_suffix() -> [u8; 8] {
    cloudsync_crypto::random_bytes::<8>()
}

/// The real barrier: `syncfs(2)` on Linux (one call for the whole batch, whatever its size; it reports
/// write-back errors since Linux 5.8), an fsync of each path elsewhere.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn sync_barrier(root: &Path, _paths: &[PathBuf]) -> std::io::Result<()> {
    let dir = File::open(root)?;
    rustix::fs::syncfs(&dir).map_err(std::io::Error::from)
}

/// The real barrier: `syncfs(2)` on Linux (one call for the whole batch, whatever its size; it reports
/// write-back errors since Linux 5.8), an fsync of each path elsewhere.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn sync_barrier(_root: &Path, paths: &[PathBuf]) -> std::io::Result<()> {
    for p in paths {
        match File::open(p) {
            Ok(f) => f.sync_all()?,
            // Directories cannot be opened (or synced) on some platforms; their entries are then as durable
            // as the platform makes them.
            Err(_) if p.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Removes temporary files older than [`STALE_TEMP_AGE`] (younger ones may belong to a running upload of
/// another process using the same directory, such as `cloudsync server user create` next to the server).
fn remove_stale_temps(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    let now = SystemTime::now();
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_stale_temps(&e.path());
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age > STALE_TEMP_AGE));
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use super::*;

    /// What each barrier call saw: the paths it was given, and how many final names existed at that moment.
    static SEEN: Mutex<Vec<(Vec<PathBuf>, usize)>> = Mutex::new(Vec::new());
    static FINALS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    fn observing(_root: &Path, paths: &[PathBuf]) -> std::io::Result<()> {
        let finals = FINALS.lock().expect("lock").iter().filter(|p| p.exists()).count();
        SEEN.lock().expect("lock").push((paths.to_vec(), finals));
        Ok(())
    }

    fn failing(_root: &Path, _paths: &[PathBuf]) -> std::io::Result<()> {
        Err(std::io::Error::other("disk on fire"))
    }

    fn disk(root: &Path, barrier: Barrier) -> LocalDisk {
        let tmp = root.join(".tmp");
        std::fs::create_dir_all(&tmp).expect("tmp");
        LocalDisk::new(root.to_path_buf(), tmp).with_barrier(barrier)
    }

    fn passing(_root: &Path, _paths: &[PathBuf]) -> std::io::Result<()> {
        Ok(())
    }

    /// Files below `dir` (temporary files sit in subfolders).
    pub(crate) fn entries(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .map_or(0, |d| d.flatten().map(|e| if e.path().is_dir() { entries(&e.path()) } else { 1 }).sum())
    }

    #[test]
    fn data_is_made_durable_before_any_rename_and_renames_before_persist_returns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = disk(dir.path(), observing);
        let keys: Vec<String> = (0..20u8).map(|i| format!("ws/w1/{:02x}/{:064x}", i % 4, i)).collect();
        let staged: Vec<TempChunk> = keys.iter().map(|k| disk.stage(k, k.as_bytes()).expect("stage")).collect();
        let finals: Vec<PathBuf> = keys.iter().map(|k| dir.path().join(k)).collect();
        *FINALS.lock().expect("lock") = finals.clone();
        assert!(finals.iter().all(|p| !p.exists()), "staged chunks are not under their final names");
        assert_eq!(entries(&dir.path().join(".tmp")), 20);

        disk.persist(staged).expect("persist");
        let seen = SEEN.lock().expect("lock").clone();
        assert_eq!(seen.len(), 2, "two barriers per batch, whatever its size");
        assert_eq!(seen[0].1, 0, "the data barrier runs before any rename");
        assert_eq!(seen[0].0.len(), 20, "and covers every temporary file");
        assert!(seen[0].0.iter().all(|p| p.starts_with(dir.path().join(".tmp"))));
        assert_eq!(seen[1].1, 20, "the second barrier runs after every rename");
        for d in ["ws/w1/00", "ws/w1/03", "ws/w1", "ws", "", ".tmp", ".tmp/00"] {
            assert!(seen[1].0.contains(&dir.path().join(d)), "directory {d:?} is synced after the renames");
        }
        for (k, p) in keys.iter().zip(&finals) {
            assert_eq!(std::fs::read(p).expect("final"), k.as_bytes());
        }
        assert_eq!(entries(&dir.path().join(".tmp")), 0, "no temporary file is left");
    }

    #[test]
    fn a_failed_barrier_or_an_abandoned_batch_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = disk(dir.path(), failing);
        let staged = vec![disk.stage("ws/w/aa/1", b"one").expect("stage"), disk.stage("ws/w/bb/2", b"two").expect("s")];
        assert!(disk.persist(staged).is_err());
        assert!(!dir.path().join("ws").exists(), "nothing reached a final name");
        assert_eq!(entries(&dir.path().join(".tmp")), 0, "temporary files are removed");

        let abandoned = disk.stage("ws/w/cc/3", b"three").expect("stage");
        assert_eq!(entries(&dir.path().join(".tmp")), 1);
        drop(abandoned);
        assert_eq!(entries(&dir.path().join(".tmp")), 0, "an abandoned chunk removes its temporary file");
    }

    #[test]
    fn errors_name_the_step_and_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let failing = disk(dir.path(), failing);
        let staged = vec![failing.stage("ws/w/aa/1", b"one").expect("stage")];
        let message = failing.persist(staged).expect_err("barrier fails").to_string();
        assert!(
            message.contains(&format!("cannot sync the staged chunks under {}", dir.path().display())),
            "{message}"
        );
        assert!(message.ends_with("disk on fire"), "{message}");

        // A file where a folder must go.
        std::fs::write(dir.path().join("ws"), b"in the way").expect("file");
        let disk = disk(dir.path(), passing);
        let staged = vec![disk.stage("ws/w/aa/1", b"one").expect("stage")];
        let message = disk.persist(staged).expect_err("folder cannot be created").to_string();
        let folder = dir.path().join("ws/w/aa");
        assert!(message.starts_with(&format!("cannot create the folder {}: ", folder.display())), "{message}");
    }

    #[test]
    fn old_temporary_files_are_removed_on_open_and_recent_ones_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = dir.path().join(".tmp");
        std::fs::create_dir_all(&tmp).expect("tmp");
        let (old, young) = (tmp.join("old"), tmp.join("young"));
        std::fs::write(&old, b"x").expect("old");
        std::fs::write(&young, b"y").expect("young");
        let long_ago = SystemTime::now() - STALE_TEMP_AGE - Duration::from_secs(60);
        File::options().write(true).open(&old).expect("open").set_modified(long_ago).expect("mtime");
        let _ = LocalDisk::new(dir.path().to_path_buf(), tmp);
        assert!(!old.exists() && young.exists());
    }
}
