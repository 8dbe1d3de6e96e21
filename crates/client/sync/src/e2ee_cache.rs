//! What this device verified of an end-to-end encrypted workspace's manifests (RFC 0004, "Files"): for each
//! sealed manifest whose signature it checked, or that it made, the manifest's record (its signed form without
//! signature or inline content, see `FileKeys::manifest_record`), by the manifest's chunk id. The chunk id is
//! a collision-resistant hash of the sealed bytes, which the client recomputes for every blob it fetches, so
//! a listing that names an id kept here needs neither the manifest's bytes nor another check of its seal and
//! signature: only that it is filed under its own path and its author could write in its epoch, which
//! [`crate::e2ee`] checks every time.
//!
//! A cache only: a missing, damaged or altered file means manifests are fetched and checked again. Each record
//! carries a MAC under a key derived from the workspace's content key, so a record altered on disk by anyone
//! without the workspace key is dropped, not trusted.

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::OnceLock;

use bytes::Bytes;
use cloudsync_crypto::{SecretKey, ct_eq, keyed_hash};
use cloudsync_types::ChunkId;

use crate::SyncError;
use crate::e2ee::E2eeFiles;

/// Past this many bytes the file starts over (about half a million small files' manifests).
const MAX_CACHE_BYTES: u64 = 128 << 20;
/// A record larger than this is damaged (a manifest lists at most 100,000 chunks of 68 bytes).
const MAX_RECORD: usize = 8 << 20;
const MAC_LEN: usize = 32;
const MAC_CONTEXT: &str = "cloudsync 2026 e2ee verified-manifest cache v1";
/// The files earlier releases kept (ids, then sealed manifests); removed once this cache is written.
const OLD_FILES: [&str; 2] = ["verified", "manifests"];

/// The manifests this device verified in one workspace: their records by chunk id.
pub(crate) struct VerifiedManifests {
    file: PathBuf,
    mac: SecretKey,
    /// Read on first use: an upload that lists nothing only appends.
    kept: OnceLock<HashMap<[u8; 32], Bytes>>,
    new: Vec<([u8; 32], Vec<u8>)>,
}

impl VerifiedManifests {
    pub(crate) fn load(e2ee: &E2eeFiles) -> Self {
        Self::at(e2ee.seen_file.with_extension("checked"), e2ee.keys.content_key())
    }

    /// The cache kept in `file`, its records authenticated with a key derived from `content_key`.
    pub(crate) fn at(file: PathBuf, content_key: &SecretKey) -> Self {
        Self { file, mac: content_key.derive(MAC_CONTEXT), kept: OnceLock::new(), new: Vec::new() }
    }

    fn kept(&self) -> &HashMap<[u8; 32], Bytes> {
        self.kept.get_or_init(|| {
            let bytes = fs::read(&self.file).unwrap_or_default();
            // Over its cap, the file is started over by the next save.
            if bytes.len() as u64 > MAX_CACHE_BYTES { HashMap::new() } else { parse(&Bytes::from(bytes), &self.mac) }
        })
    }

    /// The record of the verified manifest `id` names, if this device kept it.
    pub(crate) fn get(&self, id: ChunkId) -> Option<&[u8]> {
        self.kept().get(&id.0).map(|b| &b[..])
    }

    /// Keeps `record`, of the manifest `id` names, opened with its signature checked or made here.
    pub(crate) fn keep(&mut self, id: ChunkId, record: Vec<u8>) {
        match self.kept.get_mut() {
            Some(kept) if kept.contains_key(&id.0) => {}
            Some(kept) => {
                kept.insert(id.0, Bytes::copy_from_slice(&record));
                self.new.push((id.0, record));
            }
            None => self.new.push((id.0, record)),
        }
    }

    /// Appends the records kept since the last save (or starts the file over when it would pass its cap):
    /// each as the id, the record's length (4 bytes, little-endian), the record, and a MAC over all three.
    pub(crate) fn save(&mut self) -> Result<(), SyncError> {
        if self.new.is_empty() {
            return Ok(());
        }
        if let Some(dir) = self.file.parent() {
            fs::create_dir_all(dir).map_err(|e| SyncError::io(dir, e))?;
        }
        let mut out = Vec::new();
        for (id, record) in std::mem::take(&mut self.new) {
            let start = out.len();
            out.extend_from_slice(&id);
            out.extend_from_slice(&u32::try_from(record.len()).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(&record);
            let tag = keyed_hash(&self.mac, &out[start..]);
            out.extend_from_slice(&tag);
        }
        let held = fs::metadata(&self.file).map_or(0, |m| m.len());
        let start_over = held + out.len() as u64 > MAX_CACHE_BYTES;
        let mut opts = fs::OpenOptions::new();
        opts.create(true).append(!start_over).write(true).truncate(start_over);
        // The records hold the workspace's real paths: readable by this user only, as the rest of the state.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&self.file).map_err(|e| SyncError::io(&self.file, e))?;
        f.write_all(&out).map_err(|e| SyncError::io(&self.file, e))?;
        for old in OLD_FILES {
            let _ = fs::remove_file(self.file.with_extension(old));
        }
        Ok(())
    }
}

/// The records of a cache file, up to the first damaged one; a record whose MAC does not check is skipped.
fn parse(bytes: &Bytes, mac: &SecretKey) -> HashMap<[u8; 32], Bytes> {
    let mut out = HashMap::new();
    let mut at = 0;
    while at + 36 <= bytes.len() {
        let len = u32::from_le_bytes([bytes[at + 32], bytes[at + 33], bytes[at + 34], bytes[at + 35]]) as usize;
        let end = at + 36 + len;
        if len > MAX_RECORD || end + MAC_LEN > bytes.len() {
            break;
        }
        if ct_eq(&keyed_hash(mac, &bytes[at..end]), &bytes[end..end + MAC_LEN]) {
            let mut id = [0u8; 32];
            id.copy_from_slice(&bytes[at..at + 32]);
            out.insert(id, bytes.slice(at + 36..end));
        }
        at = end + MAC_LEN;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_manifests_come_back_only_as_written_under_the_workspace_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("ws.checked");
        let key = SecretKey::from_bytes([4; 32]);
        let (a, b, c) = (b"record of docs/a.txt".to_vec(), b"record of b".to_vec(), b"record of c".to_vec());
        let (id_a, id_b, id_c) = (ChunkId([1; 32]), ChunkId([2; 32]), ChunkId([5; 32]));
        fs::write(dir.path().join("ws.manifests"), b"old").expect("old file");
        let mut cache = VerifiedManifests::at(file.clone(), &key);
        cache.keep(id_a, a.clone());
        cache.keep(id_b, b.clone());
        cache.keep(id_c, c.clone());
        cache.save().expect("save");
        assert!(!dir.path().join("ws.manifests").exists(), "the old cache goes");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&file).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the records name real paths: this user's only");
        }

        let again = VerifiedManifests::at(file.clone(), &key);
        assert_eq!(again.get(id_a), Some(&a[..]), "kept across runs");
        assert_eq!(again.get(id_b), Some(&b[..]));
        assert_eq!(again.get(id_c), Some(&c[..]));
        assert!(again.get(ChunkId([6; 32])).is_none());

        // Another workspace's key: nothing is trusted.
        assert!(VerifiedManifests::at(file.clone(), &SecretKey::from_bytes([8; 32])).get(id_a).is_none());
        // A bit flipped in a record: that record is dropped, the others stay.
        let mut raw = fs::read(&file).expect("read");
        raw[40] ^= 1;
        fs::write(&file, &raw).expect("write");
        let flipped = VerifiedManifests::at(file.clone(), &key);
        assert!(flipped.get(id_a).is_none());
        assert_eq!(flipped.get(id_b), Some(&b[..]));
        // A cut-off record is dropped.
        raw[40] ^= 1;
        fs::write(&file, &raw[..raw.len() - 3]).expect("truncate");
        let cut = VerifiedManifests::at(file.clone(), &key);
        assert!(cut.get(id_a).is_some() && cut.get(id_b).is_some() && cut.get(id_c).is_none());

        // Appending without reading first (an upload that listed nothing) keeps what was there.
        fs::write(&file, &raw).expect("restore");
        let mut appender = VerifiedManifests::at(file.clone(), &key);
        let d = b"record of d".to_vec();
        appender.keep(ChunkId([9; 32]), d.clone());
        appender.save().expect("save");
        let last = VerifiedManifests::at(file, &key);
        assert_eq!(last.get(ChunkId([9; 32])), Some(&d[..]));
        assert_eq!(last.get(id_a), Some(&a[..]));
    }
}
