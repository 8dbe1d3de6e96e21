//! What a resumable upload keeps for a later run (S3 multipart uploads, Dropbox upload sessions): a small JSON
//! file in the state folder's `uploads/`, named by a hash of where the upload goes, and a lock on a file of its
//! own beside it, held while an upload runs.
//!
//! The file decides which bytes a later run does not send again, so it is guarded: the folder must be the
//! user's and closed to others (0700), the file the user's own with one link and closed to others (0600), opened
//! without following links. The state is a log: started aside and renamed into place ([`Kept::start_log`]), then
//! grown a line a step ([`Kept::append`]), so keeping a step costs the same however many came before; a last line
//! cut off midway is dropped when the log is taken up. A copy that finds the lock held by another copy neither takes up nor keeps anything, and
//! one that cannot write a step forgets the upload rather than keep a log that misses it.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// The write metadata key a copy gives the state folder in, asking for an upload a later run may take up.
pub(crate) const STATE_KEY: &str = "cloudsync-state-dir";
/// The metadata key a finished upload reports the bytes in that it did not send again.
pub(crate) const REUSED_KEY: &str = "cloudsync-reused";

/// Largest state file read (a Dropbox upload of 350 GiB, its largest, keeps about 4 MiB).
const MAX_STATE: u64 = 16 << 20;

/// The state of one upload, and its lock while held.
pub(crate) struct Kept {
    file: PathBuf,
    lock: Option<std::fs::File>,
}

impl Kept {
    /// The state, in `state_dir`, of the upload that `place` names (the service, its account or endpoint, the
    /// object's path: anything that tells two destinations apart).
    pub(crate) fn new(state_dir: &Path, place: &str) -> Self {
        let name = hex::encode(ring::digest::digest(&ring::digest::SHA256, place.as_bytes()))[..32].to_owned();
        Self { file: state_dir.join("uploads").join(format!("{name}.json")), lock: None }
    }

    /// Locks the state of an earlier run and reads it back as the log [`Kept::start_log`] and [`Kept::append`]
    /// wrote: its head and entries. A last line cut off midway (a crash while it was written) is left out.
    pub(crate) fn take_up_log<H, E>(&mut self) -> Option<(H, Vec<E>)>
    where
        H: serde::de::DeserializeOwned,
        E: serde::de::DeserializeOwned,
    {
        let bytes = self.read()?;
        let mut lines = bytes.split(|&b| b == b'\n');
        let head = serde_json::from_slice(lines.next()?).ok()?;
        let lines: Vec<&[u8]> = lines.collect();
        let mut entries = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            match serde_json::from_slice(line) {
                Ok(entry) => entries.push(entry),
                Err(_) if i + 1 == lines.len() => {
                    // Cut off midway: the log goes on without it (a line after it would make it a broken one).
                    let whole = bytes.len() - line.len() - 1;
                    if !self.write_whole(Ok(bytes[..whole].to_vec())) {
                        self.forget();
                        return None;
                    }
                    break;
                }
                Err(_) => return None,
            }
        }
        Some((head, entries))
    }

    /// Locks the state and reads the state file's bytes.
    fn read(&mut self) -> Option<Vec<u8>> {
        if self.lock.is_none() {
            self.lock = Some(self.lock_file()?);
        }
        let mut file =
            std::fs::OpenOptions::new().read(true).custom_flags(crate::partial::flags()).open(&self.file).ok()?;
        let meta = file.metadata().ok()?;
        if !crate::partial::ours(&meta) || meta.mode() & 0o077 != 0 || meta.len() > MAX_STATE {
            return None;
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes).ok()?;
        Some(bytes)
    }

    fn lock_file(&self) -> Option<std::fs::File> {
        let dir = self.file.parent()?;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).ok()?;
        let folder = std::fs::symlink_metadata(dir).ok()?;
        if !folder.is_dir() || folder.uid() != rustix::process::geteuid().as_raw() || folder.mode() & 0o077 != 0 {
            return None;
        }
        let name = self.file.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(crate::partial::flags())
            .open(&name)
            .ok()?;
        lock.try_lock().ok()?;
        // Still the lock file at that name (not one a finished upload removed meanwhile), the user's own.
        let (held, named) = (lock.metadata().ok()?, std::fs::symlink_metadata(&name).ok()?);
        if held.dev() != named.dev() || held.ino() != named.ino() || !crate::partial::ours(&held) {
            return None;
        }
        Some(lock)
    }

    /// Starts the state anew as a log of `head` and `entries`, one JSON line each; [`Kept::append`] adds to it a
    /// line at a time, so keeping each step of a long upload costs the same however many came before.
    pub(crate) fn start_log<H: serde::Serialize, E: serde::Serialize>(&mut self, head: &H, entries: &[E]) {
        let lines = std::iter::once(serde_json::to_vec(head))
            .chain(entries.iter().map(serde_json::to_vec))
            .collect::<Result<Vec<_>, _>>()
            .map(|lines| lines.join(&b'\n'))
            .map_err(std::io::Error::other);
        if !self.write_whole(lines) {
            // What was there (another upload's log) must not stand for this one.
            self.forget();
        }
    }

    /// Adds `entry` to the log [`Kept::start_log`] began, when this upload holds the lock; if it cannot, the
    /// upload is forgotten (a log that misses a step would mislead a later run).
    pub(crate) fn append<E: serde::Serialize>(&mut self, entry: &E) {
        if self.lock.is_none() {
            return;
        }
        let written = serde_json::to_vec(entry).map_err(std::io::Error::other).and_then(|line| {
            let mut f =
                std::fs::OpenOptions::new().append(true).custom_flags(crate::partial::flags()).open(&self.file)?;
            // One write: a line that goes is whole unless the machine stops midway.
            f.write_all(&[b"\n", &line[..]].concat())
        });
        if let Err(e) = written {
            tracing::debug!(error = %e, "cannot keep the upload's state; forgetting it");
            self.forget();
        }
    }

    /// Writes the state file whole: aside, then renamed into place; whether it was written (not when this
    /// upload does not hold the lock).
    fn write_whole(&self, bytes: std::io::Result<Vec<u8>>) -> bool {
        if self.lock.is_none() {
            return false;
        }
        let aside = self.file.with_extension("json.new");
        let written = bytes.and_then(|bytes| {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(crate::partial::flags())
                .open(&aside)
                .and_then(|mut f| f.write_all(&bytes))
                .and_then(|()| std::fs::rename(&aside, &self.file))
        });
        if let Err(e) = &written {
            tracing::debug!(error = %e, "cannot keep the upload's state");
        }
        written.is_ok()
    }

    /// Forgets the upload (done, or given up), letting the lock go.
    pub(crate) fn forget(&mut self) {
        if let Some(lock) = self.lock.take() {
            // The lock file goes too, while still held: a copy that opened it meanwhile and locks it after finds
            // it no longer at its name, and uploads without taking up anything.
            let _ = std::fs::remove_file(&self.file);
            let _ = std::fs::remove_file(self.file.with_extension("json.new"));
            let _ = std::fs::remove_file(self.file.with_extension("lock"));
            drop(lock);
        }
    }
}

/// Forgets every upload kept in `state_dir`, but those a running copy holds (their lock taken, as
/// [`Kept::take_up_log`] takes it, and removed while held, as [`Kept::forget`] removes it): how many were forgotten,
/// and how many were left alone.
///
/// # Errors
/// The folder cannot be read.
pub fn forget_all(state_dir: &Path) -> std::io::Result<(usize, usize)> {
    let dir = state_dir.join("uploads");
    let entries = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(e),
    };
    // An upload's files: its state (`NAME.json`), written aside (`NAME.json.new`), its lock (`NAME.lock`).
    let mut names = std::collections::BTreeSet::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let stem = [".json.new", ".json", ".lock"].iter().find_map(|x| name.strip_suffix(x));
        if let Some(stem) = stem.filter(|s| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())) {
            names.insert(stem.to_owned());
        }
    }
    let (mut forgot, mut left) = (0, 0);
    for name in names {
        let mut kept = Kept { file: dir.join(format!("{name}.json")), lock: None };
        match kept.lock_file() {
            Some(lock) => {
                forgot += usize::from(kept.file.exists());
                kept.lock = Some(lock);
                kept.forget();
            }
            None => left += 1,
        }
    }
    Ok((forgot, left))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct S {
        n: u32,
    }

    #[test]
    fn state_is_kept_locked_and_forgotten() {
        let dir = tempfile::tempdir().expect("dir");
        let mut a = Kept::new(dir.path(), "s3\nhttps://e\nb\nk");
        assert_eq!(a.take_up_log::<S, u32>(), None, "nothing kept yet");
        a.start_log::<_, u32>(&S { n: 3 }, &[]);
        let mut b = Kept::new(dir.path(), "s3\nhttps://e\nb\nk");
        assert_eq!(b.take_up_log::<S, u32>(), None, "held by the first");
        b.start_log::<_, u32>(&S { n: 9 }, &[]);
        drop(a);
        assert_eq!(
            b.take_up_log::<S, u32>(),
            Some((S { n: 3 }, vec![])),
            "what the first kept, not what the second could not"
        );
        let meta = std::fs::metadata(&b.file).expect("kept");
        assert_eq!(meta.mode() & 0o777, 0o600);
        b.forget();
        assert!(!b.file.exists() && !b.file.with_extension("lock").exists());
        let mut c = Kept::new(dir.path(), "s3\nhttps://e\nb\nk");
        assert_eq!(c.take_up_log::<S, u32>(), None, "forgotten");
    }

    #[test]
    fn a_log_is_read_back_without_a_line_cut_off() {
        let dir = tempfile::tempdir().expect("dir");
        let mut a = Kept::new(dir.path(), "log");
        assert_eq!(a.take_up_log::<S, u32>(), None);
        a.start_log(&S { n: 1 }, &[10u32]);
        a.append(&11u32);
        a.append(&12u32);
        drop(a);
        let mut b = Kept::new(dir.path(), "log");
        assert_eq!(b.take_up_log::<S, u32>(), Some((S { n: 1 }, vec![10, 11, 12])));
        // A crash while the last line was written: that line is left out, and the log goes on without it.
        std::fs::OpenOptions::new().append(true).open(&b.file).expect("open").write_all(b"\n1").expect("write");
        std::fs::OpenOptions::new().append(true).open(&b.file).expect("open").write_all(b"3x").expect("write");
        assert_eq!(b.take_up_log::<S, u32>(), Some((S { n: 1 }, vec![10, 11, 12])));
        b.append(&14u32);
        assert_eq!(b.take_up_log::<S, u32>(), Some((S { n: 1 }, vec![10, 11, 12, 14])));
        // A broken line before others: not to be trusted.
        std::fs::OpenOptions::new().append(true).open(&b.file).expect("open").write_all(b"\nx\n15").expect("write");
        assert_eq!(b.take_up_log::<S, u32>(), None);
        // Started anew.
        b.start_log::<_, u32>(&S { n: 2 }, &[]);
        assert_eq!(b.take_up_log::<S, u32>(), Some((S { n: 2 }, vec![])));
    }

    #[test]
    fn forgetting_all_leaves_a_held_upload_alone() {
        let dir = tempfile::tempdir().expect("dir");
        assert_eq!(forget_all(dir.path()).expect("forget"), (0, 0), "no folder yet");
        let mut held = Kept::new(dir.path(), "held");
        let _ = held.take_up_log::<S, u32>();
        held.start_log::<_, u32>(&S { n: 1 }, &[]);
        let mut cut = Kept::new(dir.path(), "cut");
        let _ = cut.take_up_log::<S, u32>();
        cut.start_log::<_, u32>(&S { n: 2 }, &[]);
        cut.lock = None;
        std::fs::write(dir.path().join("uploads/notes.txt"), b"not ours").expect("write");
        assert_eq!(forget_all(dir.path()).expect("forget"), (1, 1));
        assert!(held.file.exists() && !cut.file.exists() && !cut.file.with_extension("lock").exists());
        assert!(dir.path().join("uploads/notes.txt").exists(), "other files stay");
    }

    #[test]
    fn a_state_others_may_write_is_not_read() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("dir");
        let mut a = Kept::new(dir.path(), "x");
        let _ = a.take_up_log::<S, u32>();
        a.start_log::<_, u32>(&S { n: 1 }, &[]);
        a.lock = None;
        std::fs::set_permissions(&a.file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(Kept::new(dir.path(), "x").take_up_log::<S, u32>(), None, "a file others may read is not trusted");
        std::fs::set_permissions(&a.file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::set_permissions(dir.path().join("uploads"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(
            Kept::new(dir.path(), "x").take_up_log::<S, u32>(),
            None,
            "a folder others may enter is not trusted"
        );
    }
}
