//! Downloads that survive being cut off. A file copied into a local folder is written under a partial name
//! derived from its final name and the identity of its source (where it comes from, its size and time, and
//! its entity tag or version where the remote lists one). A copy cut off by a lost network, a failing remote
//! or a killed process leaves that file behind; the next copy of the same, unchanged source finds it and
//! reads only the rest. Anything else (another source, a changed file) gets another name and starts afresh.
//!
//! The name can be guessed, so what is found there is trusted only when it is a regular file of this user
//! with one link, reached without following a link; it is locked while written, so two copies running at
//! once never write one file (the second falls back to a fresh random name).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Files smaller than this start again from the beginning: reading them again costs little.
pub(crate) const RESUME_MIN: u64 = 4 << 20;
/// Start of the partial names this module makes (see [`crate::transfer`] for the common prefix and suffix).
const PREFIX: &str = ".cloudsync-r";
use crate::transfer::PARTIAL_SUFFIX as SUFFIX;

/// What makes a source file the same one as when an earlier copy of it was cut off.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// Where it is read from (a connection's label, or a local file's absolute path).
    pub source: String,
    pub size: u64,
    pub modified: Option<SystemTime>,
    /// Entity tag or version id, where the remote lists one.
    pub tag: Option<String>,
    pub version: Option<String>,
}

/// A partial file, open for writing at `offset` (the bytes already there), and locked. `tail`: the last bytes
/// already there (up to [`OVERLAP`]), which the source must send again, the same, before the rest is taken.
#[derive(Debug)]
pub(crate) struct Slot {
    pub path: PathBuf,
    pub file: File,
    pub offset: u64,
    pub tail: Vec<u8>,
}

/// Bytes a resumed copy reads again and compares with what the partial file ends with: a partial file that
/// does not end as the source does (its end lost to a power cut, or the source rewritten without a change of
/// size or time) starts over.
pub(crate) const OVERLAP: u64 = 64 << 10;

/// Flags every open here takes: no link is followed, and a FIFO placed under the name does not block.
pub(crate) fn flags() -> i32 {
    (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits().cast_signed()
}

fn sha256(parts: &[&[u8]]) -> ring::digest::Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        // Each part with its length, so that no two lists of parts hash alike.
        ctx.update(&(p.len() as u64).to_le_bytes());
        ctx.update(p);
    }
    ctx.finish()
}

/// The start shared by the partial names of one final name (for sweeping stale ones).
fn stem(final_name: &str) -> String {
    format!("{PREFIX}{}", hex::encode(&sha256(&[b"cloudsync partial name", final_name.as_bytes()]).as_ref()[..6]))
}

/// The partial name for `final_name` copied from the source `id`.
pub(crate) fn name(final_name: &str, id: &Identity) -> String {
    let nanos =
        id.modified.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map_or(u128::MAX, |d| d.as_nanos());
    let digest = sha256(&[
        b"cloudsync partial source",
        id.source.as_bytes(),
        &id.size.to_le_bytes(),
        &nanos.to_le_bytes(),
        id.tag.as_deref().unwrap_or("").as_bytes(),
        id.version.as_deref().unwrap_or("").as_bytes(),
    ]);
    format!("{}{}{SUFFIX}", stem(final_name), hex::encode(&digest.as_ref()[..4]))
}

/// Opens (or creates) the partial file of `final_name` in `parent` for the source `id`, locked. `None` when it
/// cannot be used safely (a link or something else than this user's private file there, another copy writing
/// it, a file system without locks, any error opening it): the caller writes under a fresh random name instead.
///
/// # Errors
/// The partial file cannot be read or emptied.
pub(crate) fn open(parent: &Path, final_name: &str, id: &Identity) -> std::io::Result<Option<Slot>> {
    let path = parent.join(name(final_name, id));
    // Private while written (the finished file gets the usual mode: see `finish_mode`).
    let Ok(mut file) =
        OpenOptions::new().read(true).write(true).create(true).mode(0o600).custom_flags(flags()).open(&path)
    else {
        return Ok(None);
    };
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(None),
        Err(TryLockError::Error(_)) => {
            // No locks here (some network file systems): not resumable; an empty file made just now goes.
            if file.metadata().is_ok_and(|m| m.len() == 0) {
                let _ = std::fs::remove_file(&path);
            }
            return Ok(None);
        }
    }
    let meta = file.metadata()?;
    // Still the file at that name (not one another copy finished and renamed away meanwhile)?
    let here = std::fs::symlink_metadata(&path).ok().is_some_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino());
    let ours = ours(&meta);
    if !here || !ours {
        return Ok(None);
    }
    let mut offset = meta.len();
    // Bytes others could have written are not taken; nor too many, nor any for a small file.
    if offset > id.size || id.size < RESUME_MIN || meta.mode() & 0o077 != 0 {
        file.set_len(0)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        offset = 0;
    }
    let keep = offset.min(OVERLAP);
    let mut tail = vec![0u8; usize::try_from(keep).unwrap_or(0)];
    file.seek(SeekFrom::Start(offset - keep))?;
    file.read_exact(&mut tail)?;
    Ok(Some(Slot { path, file, offset, tail }))
}

/// The mode a finished file gets: what a new file gets under this process's umask.
pub(crate) fn finish_mode() -> u32 {
    static MODE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *MODE.get_or_init(read_finish_mode)
}

fn read_finish_mode() -> u32 {
    // Linux shows the umask in /proc (reading it with umask(2) would change it for every thread meanwhile).
    let umask = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Umask:").map(|v| v.trim().to_owned())))
        .and_then(|v| u32::from_str_radix(&v, 8).ok())
        .unwrap_or(0o022);
    0o666 & !umask
}

/// Whether a file is one this user made here: a regular file of this user with one link.
pub(crate) fn ours(meta: &std::fs::Metadata) -> bool {
    meta.is_file() && meta.nlink() == 1 && meta.uid() == rustix::process::geteuid().as_raw()
}

/// Starts a slot's file over, empty.
pub(crate) fn restart(file: &mut File) -> std::io::Result<()> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0)).map(drop)
}

/// Removes the partial files of `final_name` in `parent` other than `kept` that no copy is writing: copies of
/// an earlier version of the source, cut off. Best effort.
pub(crate) fn sweep(parent: &Path, final_name: &str, kept: &Path) {
    let stem = stem(final_name);
    let Ok(dir) = std::fs::read_dir(parent) else { return };
    for entry in dir.flatten() {
        let path = entry.path();
        let fits = entry.file_name().to_str().is_some_and(|n| n.starts_with(&stem) && n.ends_with(SUFFIX));
        if !fits || path == kept {
            continue;
        }
        // Only regular files (a FIFO would block an open), opened without following a link.
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let Ok(file) = OpenOptions::new().read(true).custom_flags(flags()).open(&path) else {
            continue;
        };
        let ours = file.metadata().is_ok_and(|m| ours(&m));
        if ours && file.try_lock().is_ok() {
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(size: u64) -> Identity {
        Identity {
            source: "src:big.bin".into(),
            size,
            modified: Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)),
            tag: Some("\"abc\"".into()),
            version: None,
        }
    }

    #[test]
    fn names_follow_the_source_and_share_a_stem_per_final_name() {
        let a = name("big.bin", &id(10 << 20));
        assert_eq!(a, name("big.bin", &id(10 << 20)), "the same source gives the same name");
        assert!(crate::transfer::is_partial(&a), "{a}");
        assert!(a.len() <= 40, "{a}");
        assert_ne!(a, name("big.bin", &id(11 << 20)), "another size");
        let mut other = id(10 << 20);
        other.tag = Some("\"abd\"".into());
        assert_ne!(a, name("big.bin", &other), "another entity tag");
        other = id(10 << 20);
        other.source = "src2:big.bin".into();
        assert_ne!(a, name("big.bin", &other), "another source");
        let b = name("big.bin", &other);
        assert_eq!(a[..PREFIX.len() + 12], b[..PREFIX.len() + 12], "one stem per final name");
        assert_ne!(a[..PREFIX.len() + 12], name("big.bin2", &id(10 << 20))[..PREFIX.len() + 12]);
    }

    #[test]
    fn a_partial_file_is_found_again_locked_and_swept() {
        let dir = tempfile::tempdir().expect("dir");
        let source = id(10 << 20);
        let slot = open(dir.path(), "big.bin", &source).expect("open").expect("usable");
        assert_eq!(slot.offset, 0);
        std::fs::write(&slot.path, vec![7u8; 5 << 20]).expect("write");
        // While it is held, a second copy cannot use it.
        assert!(open(dir.path(), "big.bin", &source).expect("open").is_none());
        let kept = slot.path.clone();
        drop(slot);
        let again = open(dir.path(), "big.bin", &source).expect("open").expect("usable");
        assert_eq!(again.offset, 5 << 20, "the bytes already there are kept");
        drop(again);
        // A changed source gets another file; finishing it sweeps the stale one.
        let changed = id(12 << 20);
        let fresh = open(dir.path(), "big.bin", &changed).expect("open").expect("usable");
        assert_ne!(fresh.path, kept);
        assert_eq!(fresh.offset, 0);
        sweep(dir.path(), "big.bin", &fresh.path);
        assert!(!kept.exists(), "the stale partial file is swept");
        assert!(fresh.path.exists(), "the one in use is not");
        // A FIFO under a partial name of the same stem does not hold the sweep up.
        let fifo = dir.path().join(format!("{}ffffffff{SUFFIX}", stem("big.bin")));
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
        sweep(dir.path(), "big.bin", &fresh.path);
        assert!(fifo.exists(), "only this user's regular files are swept");
        // Longer than the source: started over.
        std::fs::write(&fresh.path, vec![1u8; 13 << 20]).expect("write");
        drop(fresh);
        assert_eq!(open(dir.path(), "big.bin", &changed).expect("open").expect("usable").offset, 0);
        // One others could write in: started over, and private again.
        let slot = open(dir.path(), "big.bin", &changed).expect("open").expect("usable");
        std::fs::write(&slot.path, vec![1u8; 5 << 20]).expect("write");
        std::fs::set_permissions(&slot.path, std::fs::Permissions::from_mode(0o660)).expect("chmod");
        let path = slot.path.clone();
        drop(slot);
        let again = open(dir.path(), "big.bin", &changed).expect("open").expect("usable");
        assert_eq!((again.offset, again.tail.len()), (0, 0));
        assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
        drop(again);
        // What it ends with is handed back, to be read again from the source.
        std::fs::write(&path, noise_bytes(5 << 20)).expect("write");
        let resumed = open(dir.path(), "big.bin", &changed).expect("open").expect("usable");
        assert_eq!(resumed.offset, 5 << 20);
        assert_eq!(resumed.tail, noise_bytes(5 << 20)[(5 << 20) - OVERLAP as usize..]);
    }

    fn noise_bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn a_link_or_a_small_file_is_not_resumed() {
        let dir = tempfile::tempdir().expect("dir");
        let source = id(10 << 20);
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"keep me").expect("write");
        std::os::unix::fs::symlink(&target, dir.path().join(name("big.bin", &source))).expect("link");
        assert!(open(dir.path(), "big.bin", &source).expect("open").is_none(), "a link is never followed");
        assert_eq!(std::fs::read(&target).expect("read"), b"keep me");
        let small = id(1 << 20);
        let slot = open(dir.path(), "small.bin", &small).expect("open").expect("usable");
        std::fs::write(&slot.path, b"half").expect("write");
        drop(slot);
        assert_eq!(open(dir.path(), "small.bin", &small).expect("open").expect("usable").offset, 0);
    }
}
