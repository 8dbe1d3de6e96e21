//! What a resumable upload keeps for a later run (S3 multipart uploads, Dropbox upload sessions): a small JSON
//! file in the state folder's `uploads/`, named by a hash of where the upload goes, and a lock on a file of its
//! own beside it, held while an upload runs.
//!
//! The file decides which bytes a later run does not send again, so it is guarded: the folder must be the
//! user's and closed to others (0700), the file the user's own with one link and closed to others (0600), opened
//! without following links; it is written aside and renamed into place, so a cut never leaves half of it. A
//! copy that finds the lock held by another copy neither takes up nor keeps anything.

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

    /// Locks the state for this upload and reads what an earlier run kept, if anything. Nothing, and no lock,
    /// when the folder or the files are not as they must be, or another copy holds the lock.
    pub(crate) fn take_up<T: serde::de::DeserializeOwned>(&mut self) -> Option<T> {
        if self.lock.is_none() {
            self.lock = Some(self.lock_file()?);
        }
        let file =
            std::fs::OpenOptions::new().read(true).custom_flags(crate::partial::flags()).open(&self.file).ok()?;
        let meta = file.metadata().ok()?;
        if !crate::partial::ours(&meta) || meta.mode() & 0o077 != 0 || meta.len() > MAX_STATE {
            return None;
        }
        serde_json::from_reader(std::io::BufReader::new(file)).ok()
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

    /// Keeps `state` for a later run, when this upload holds the lock.
    pub(crate) fn save<T: serde::Serialize>(&self, state: &T) {
        if self.lock.is_none() {
            return;
        }
        let aside = self.file.with_extension("json.new");
        let written = serde_json::to_vec(state).map_err(std::io::Error::other).and_then(|bytes| {
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
        if let Err(e) = written {
            tracing::debug!(error = %e, "cannot keep the upload's state");
        }
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
        assert_eq!(a.take_up::<S>(), None, "nothing kept yet");
        a.save(&S { n: 3 });
        let mut b = Kept::new(dir.path(), "s3\nhttps://e\nb\nk");
        assert_eq!(b.take_up::<S>(), None, "held by the first");
        b.save(&S { n: 9 });
        drop(a);
        assert_eq!(b.take_up::<S>(), Some(S { n: 3 }), "what the first kept, not what the second could not");
        let meta = std::fs::metadata(&b.file).expect("kept");
        assert_eq!(meta.mode() & 0o777, 0o600);
        b.forget();
        assert!(!b.file.exists() && !b.file.with_extension("lock").exists());
        let mut c = Kept::new(dir.path(), "s3\nhttps://e\nb\nk");
        assert_eq!(c.take_up::<S>(), None, "forgotten");
    }

    #[test]
    fn a_state_others_may_write_is_not_read() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("dir");
        let mut a = Kept::new(dir.path(), "x");
        let _ = a.take_up::<S>();
        a.save(&S { n: 1 });
        a.lock = None;
        std::fs::set_permissions(&a.file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(Kept::new(dir.path(), "x").take_up::<S>(), None, "a file others may read is not trusted");
        std::fs::set_permissions(&a.file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::set_permissions(dir.path().join("uploads"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(Kept::new(dir.path(), "x").take_up::<S>(), None, "a folder others may enter is not trusted");
    }
}
