//! Batched durable writes to the local disk.
//!
//! Writing each object through OpenDAL's fs service costs an fsync per object (its writer calls `sync_all`
//! before renaming a temporary file into place), so local writes bypass OpenDAL and are made durable a batch
//! at a time instead:
//!
//! 1. [`LocalDisk::write_pack`]: each pack goes to a new file under its final name, without fsync. Pack
//!    names are random and never reused, and nothing refers to a pack before it is durable, so no temporary
//!    name and no rename are needed: a crash leaves at worst an unreferenced, possibly partial pack.
//! 2. [`LocalDisk::persist`], for the whole batch: one barrier makes the packs' data and their directory
//!    entries durable (one `syncfs(2)` of the chunk file system on Linux; elsewhere an fsync of each pack and
//!    of each folder from it up to the root).
//!
//! Only after `persist` returns may the caller record the chunks in the metadata store, so a recorded chunk's
//! bytes are always durable. A pack dropped before it was persisted (a failed upload) removes its file.
//!
//! `syncfs` flushes every dirty page of the file system, not only ours: on a file system shared with other
//! busy writers a barrier waits for their data too, so a dedicated file system for the chunk directory gives
//! the steadiest upload latency.
//!
//! Reads are plain file reads too ([`LocalDisk::read`]); deletes still go through OpenDAL.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::BlobError;

/// A durability barrier over `paths` (the pack files, then every folder from them up to `root`). `watch` is a
/// handle on `root` opened before any of the batch's packs was written, if there is one.
pub(crate) type Barrier = fn(root: &Path, paths: &[PathBuf], watch: Option<&File>) -> std::io::Result<()>;

/// The chunk directory on local disk.
#[derive(Debug)]
pub(crate) struct LocalDisk {
    root: PathBuf,
    barrier: Barrier,
}

/// A pack written to the local disk and not yet durable. Dropped without being persisted (a failed or
/// abandoned upload), it removes its file.
#[derive(Debug)]
pub(crate) struct LocalPack {
    path: PathBuf,
    /// A handle on the chunk directory opened before the pack was written, and when: `syncfs` through it
    /// reports write-back errors since then, whoever else has seen them (an error already reported to
    /// another handle is not reported to one opened later).
    watch: Option<(File, std::time::Instant)>,
    persisted: bool,
}

/// Bytes buffered before a pack file is written to.
const WRITE_BUFFER: usize = 1 << 20;

/// A pack file being written.
pub(crate) struct PackWriter {
    file: BufWriter<File>,
    pack: LocalPack,
}

impl PackWriter {
    /// Appends `bytes`.
    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        self.file.write_all(bytes).map_err(io_error("write the pack", &self.pack.path))
    }

    /// Flushes what is buffered and hands over the pack, not yet durable.
    pub(crate) fn finish(mut self) -> Result<LocalPack, BlobError> {
        self.file.flush().map_err(io_error("write the pack", &self.pack.path))?;
        Ok(self.pack)
    }
}

impl Drop for LocalPack {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl LocalDisk {
    /// Uses `root`, which exists.
    pub(crate) fn new(root: PathBuf) -> Self {
        Self { root, barrier: sync_barrier }
    }

    /// The same directory with another barrier (tests observe what a barrier covers).
    #[cfg(test)]
    pub(crate) fn with_barrier(mut self, barrier: Barrier) -> Self {
        self.barrier = barrier;
        self
    }

    /// Reads the object at `key` (a path relative to the root), whole or the `(offset, len)` range of it;
    /// `Ok(None)` when there is no such object. A range past the end gives fewer bytes (which then fail their
    /// integrity check). One plain read: OpenDAL's fs reader zero-fills a large buffer for every read, which
    /// dominated the server's CPU while it streamed thousands of small chunks.
    pub(crate) fn read(&self, key: &str, range: Option<(u64, u32)>) -> Result<Option<Vec<u8>>, BlobError> {
        let path = self.root.join(key);
        let Some((offset, len)) = range else {
            return match std::fs::read(&path) {
                Ok(data) => Ok(Some(data)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(BlobError::Io { action: "read the chunk file", path, source }),
            };
        };
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(BlobError::Io { action: "open the pack", path, source }),
        };
        let mut buf = vec![0; len as usize];
        let mut got = 0;
        while got < buf.len() {
            match read_at(&file, &mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => return Err(BlobError::Io { action: "read the pack", path, source }),
            }
        }
        buf.truncate(got);
        Ok(Some(buf))
    }

    /// Creates a new pack file for the object `key` (which must not exist), to be written through the
    /// returned writer without waiting for the disk. Blocking.
    pub(crate) fn create_pack(&self, key: &str) -> Result<PackWriter, BlobError> {
        let watch = File::open(&self.root).ok().map(|f| (f, std::time::Instant::now()));
        let pack = LocalPack { path: self.root.join(key), watch, persisted: false };
        let created = match File::create_new(&pack.path) {
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
                if let Some(dir) = pack.path.parent() {
                    std::fs::create_dir_all(dir).map_err(io_error("create the folder", dir))?;
                }
                File::create_new(&pack.path)
            }
            other => other,
        };
        // From here on, dropping `pack` removes whatever was written.
        let file = created.map_err(io_error("create the pack", &pack.path))?;
        Ok(PackWriter { file: BufWriter::with_capacity(WRITE_BUFFER, file), pack })
    }

    /// Writes a whole new pack file (tests).
    #[cfg(test)]
    pub(crate) fn write_pack(&self, key: &str, bytes: &[u8]) -> Result<LocalPack, BlobError> {
        let mut w = self.create_pack(key)?;
        w.write(bytes)?;
        w.finish()
    }

    /// Makes every pack of the batch durable (see the module documentation). Blocking. On error no chunk may
    /// be recorded, and the batch's pack files are removed as the packs drop.
    pub(crate) fn persist(&self, mut packs: Vec<LocalPack>) -> Result<(), BlobError> {
        if packs.is_empty() {
            return Ok(());
        }
        let mut dirs = BTreeSet::new();
        for p in &packs {
            let mut cur = p.path.parent();
            while let Some(d) = cur.filter(|d| d.starts_with(&self.root)) {
                if !dirs.insert(d.to_path_buf()) || d == self.root {
                    break;
                }
                cur = d.parent();
            }
        }
        let paths: Vec<PathBuf> = packs.iter().map(|p| p.path.clone()).chain(dirs).collect();
        let watch = packs.iter().filter_map(|p| p.watch.as_ref()).min_by_key(|w| w.1).map(|w| &w.0);
        (self.barrier)(&self.root, &paths, watch).map_err(io_error("sync the new packs under", &self.root))?;
        for p in &mut packs {
            p.persisted = true;
        }
        Ok(())
    }
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

/// Wraps an I/O error with the step that failed (`action`, as in "cannot {action} {path}") and its path.
fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BlobError {
    move |source| BlobError::Io { action, path: path.to_path_buf(), source }
}

/// The real barrier: `syncfs(2)` on Linux (one call for the whole batch, whatever its size; it reports
/// write-back errors since Linux 5.8, those since `watch` was opened), an fsync of each path elsewhere.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn sync_barrier(root: &Path, _paths: &[PathBuf], watch: Option<&File>) -> std::io::Result<()> {
    match watch {
        Some(dir) => rustix::fs::syncfs(dir).map_err(std::io::Error::from),
        None => rustix::fs::syncfs(&File::open(root)?).map_err(std::io::Error::from),
    }
}

/// The real barrier: `syncfs(2)` on Linux (one call for the whole batch, whatever its size; it reports
/// write-back errors since Linux 5.8), an fsync of each path elsewhere.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn sync_barrier(_root: &Path, paths: &[PathBuf], _watch: Option<&File>) -> std::io::Result<()> {
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// The paths each barrier call was given.
    static SEEN: Mutex<Vec<Vec<PathBuf>>> = Mutex::new(Vec::new());

    fn observing(_root: &Path, paths: &[PathBuf], watch: Option<&File>) -> std::io::Result<()> {
        assert!(watch.is_some(), "the barrier syncs through a handle opened before the packs were written");
        SEEN.lock().expect("lock").push(paths.to_vec());
        Ok(())
    }

    fn failing(_root: &Path, _paths: &[PathBuf], _watch: Option<&File>) -> std::io::Result<()> {
        Err(std::io::Error::other("disk on fire"))
    }

    fn passing(_root: &Path, _paths: &[PathBuf], _watch: Option<&File>) -> std::io::Result<()> {
        Ok(())
    }

    fn disk(root: &Path, barrier: Barrier) -> LocalDisk {
        LocalDisk::new(root.to_path_buf()).with_barrier(barrier)
    }

    fn count_files(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .map_or(0, |d| d.flatten().map(|e| if e.path().is_dir() { count_files(&e.path()) } else { 1 }).sum())
    }

    #[test]
    fn one_barrier_covers_the_packs_and_every_folder_up_to_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = disk(dir.path(), observing);
        let keys = ["ws/w1/p/00/a", "ws/w1/p/00/b", "ws/w1/p/3f/c"];
        let packs: Vec<LocalPack> = keys.iter().map(|k| disk.write_pack(k, k.as_bytes()).expect("write")).collect();
        assert_eq!(std::fs::metadata(&packs[2].path).expect("pack").len(), 12);
        disk.persist(packs).expect("persist");
        let seen = SEEN.lock().expect("lock").clone();
        assert_eq!(seen.len(), 1, "one barrier per batch, whatever its size");
        for p in keys.iter().chain(&["ws/w1/p/00", "ws/w1/p/3f", "ws/w1/p", "ws/w1", "ws", ""]) {
            assert!(seen[0].contains(&dir.path().join(p)), "{p:?} is covered by the barrier");
        }
        assert_eq!(seen[0].len(), 9, "and each only once");
        for k in keys {
            assert_eq!(std::fs::read(dir.path().join(k)).expect("pack"), k.as_bytes(), "persisted packs stay");
        }
        assert!(disk.write_pack(keys[0], b"again").is_err(), "a pack name is never reused");
    }

    #[test]
    fn a_failed_barrier_or_an_abandoned_pack_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = disk(dir.path(), failing);
        let packs =
            vec![disk.write_pack("ws/w/p/aa/1", b"one").expect("w"), disk.write_pack("ws/w/p/bb/2", b"2").expect("w")];
        assert_eq!(count_files(dir.path()), 2);
        let message = disk.persist(packs).expect_err("barrier fails").to_string();
        assert!(message.contains(&format!("cannot sync the new packs under {}", dir.path().display())), "{message}");
        assert!(message.ends_with("disk on fire"), "{message}");
        assert_eq!(count_files(dir.path()), 0, "the batch's packs are removed");

        let abandoned = disk.write_pack("ws/w/p/cc/3", b"three").expect("write");
        assert_eq!(count_files(dir.path()), 1);
        drop(abandoned);
        assert_eq!(count_files(dir.path()), 0, "an abandoned pack removes its file");
    }

    #[test]
    fn errors_name_the_step_and_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A file where a folder must go.
        std::fs::write(dir.path().join("ws"), b"in the way").expect("file");
        let message = disk(dir.path(), passing).write_pack("ws/w/p/aa/1", b"one").expect_err("no folder").to_string();
        let folder = dir.path().join("ws/w/p/aa");
        assert!(message.starts_with(&format!("cannot create the folder {}: ", folder.display())), "{message}");
    }

    #[test]
    fn ranged_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = disk(dir.path(), passing);
        disk.persist(vec![disk.write_pack("ws/w/p/aa/1", b"0123456789").expect("write")]).expect("persist");
        assert_eq!(disk.read("ws/w/p/aa/1", Some((2, 3))).expect("read"), Some(b"234".to_vec()));
        assert_eq!(disk.read("ws/w/p/aa/1", Some((8, 5))).expect("read"), Some(b"89".to_vec()), "short at the end");
        assert_eq!(disk.read("ws/w/p/aa/1", None).expect("read"), Some(b"0123456789".to_vec()));
        assert_eq!(disk.read("ws/w/p/aa/2", Some((0, 1))).expect("read"), None);
    }
}
