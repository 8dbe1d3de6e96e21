//! What this device verified of an end-to-end encrypted workspace's manifests (RFC 0004, "Files"): for each sealed manifest whose signature it checked, or that it made, the manifest's contents
//! (path, size, content hash, modification time, epoch, counter, author, chunk list; never inline content),
//! by the manifest's chunk id. The chunk id is a collision-resistant hash of the sealed bytes, which the client
//! recomputes for every blob it fetches, so a listing that names an id kept here needs neither the manifest's
//! bytes nor another check of its seal and signature: only that it is filed under its own path and its author
//! could write in its epoch, which [`crate::e2ee`] checks every time.
//!
//! A cache only: a missing, damaged or altered file means manifests are fetched and checked again. Each record
//! carries a MAC under a key derived from the workspace's content key, so a record altered on disk by anyone
//! without the workspace key is dropped, not trusted.

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::OnceLock;

use cloudsync_crypto::e2ee_files::{FileManifest, MAX_FILE_CHUNKS, MAX_PATH_BYTES, SealedChunk};
use cloudsync_crypto::{SecretKey, ct_eq, keyed_hash};
use cloudsync_types::ChunkId;

use crate::SyncError;
use crate::e2ee::E2eeFiles;

/// Past this many bytes the file starts over (about half a million small files' manifests).
const MAX_CACHE_BYTES: u64 = 128 << 20;
/// A record larger than this is damaged (a manifest lists at most [`MAX_FILE_CHUNKS`] chunks).
const MAX_RECORD: usize = 128 + MAX_PATH_BYTES + MAX_FILE_CHUNKS * CHUNK_LEN;
const CHUNK_LEN: usize = 32 + 32 + 4;
const MAC_LEN: usize = 32;
const MAC_CONTEXT: &str = "cloudsync 2026 e2ee verified-manifest cache v1";
/// The files earlier releases kept (ids, then sealed manifests); removed once this cache is written.
const OLD_FILES: [&str; 2] = ["verified", "manifests"];

/// The manifests this device verified in one workspace, by chunk id.
pub(crate) struct VerifiedIds {
    file: PathBuf,
    mac: SecretKey,
    /// Read on first use: an upload that lists nothing only appends.
    kept: OnceLock<HashMap<[u8; 32], FileManifest>>,
    new: Vec<([u8; 32], FileManifest)>,
}

impl VerifiedIds {
    pub(crate) fn load(e2ee: &E2eeFiles) -> Self {
        Self::at(e2ee.seen_file.with_extension("checked"), e2ee.keys.content_key())
    }

    /// The cache kept in `file`, its records authenticated with a key derived from `content_key`.
    pub(crate) fn at(file: PathBuf, content_key: &SecretKey) -> Self {
        Self { file, mac: content_key.derive(MAC_CONTEXT), kept: OnceLock::new(), new: Vec::new() }
    }

    fn kept(&self) -> &HashMap<[u8; 32], FileManifest> {
        self.kept.get_or_init(|| {
            let bytes = fs::read(&self.file).unwrap_or_default();
            // Over its cap, the file is started over by the next save.
            if bytes.len() as u64 > MAX_CACHE_BYTES { HashMap::new() } else { parse(&bytes, &self.mac) }
        })
    }

    /// The verified manifest `id` names, if this device kept it.
    pub(crate) fn get(&self, id: ChunkId) -> Option<&FileManifest> {
        self.kept().get(&id.0)
    }

    /// Keeps `m`, opened from the sealed manifest `id` names with its signature checked, or made here.
    /// Inline content is never kept.
    pub(crate) fn keep(&mut self, id: ChunkId, m: &FileManifest) {
        let m = metadata(m);
        match self.kept.get_mut() {
            Some(kept) if kept.contains_key(&id.0) => {}
            Some(kept) => {
                kept.insert(id.0, m.clone());
                self.new.push((id.0, m));
            }
            None => self.new.push((id.0, m)),
        }
    }

    /// Appends the manifests kept since the last save (or starts the file over when it would pass its cap).
    pub(crate) fn save(&mut self) -> Result<(), SyncError> {
        if self.new.is_empty() {
            return Ok(());
        }
        if let Some(dir) = self.file.parent() {
            fs::create_dir_all(dir).map_err(|e| SyncError::io(dir, e))?;
        }
        let mut out = Vec::new();
        for (id, m) in std::mem::take(&mut self.new) {
            record(&mut out, &self.mac, &id, &m);
        }
        let held = fs::metadata(&self.file).map_or(0, |m| m.len());
        let start_over = held + out.len() as u64 > MAX_CACHE_BYTES;
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(!start_over)
            .write(true)
            .truncate(start_over)
            .open(&self.file)
            .map_err(|e| SyncError::io(&self.file, e))?;
        f.write_all(&out).map_err(|e| SyncError::io(&self.file, e))?;
        for old in OLD_FILES {
            let _ = fs::remove_file(self.file.with_extension(old));
        }
        Ok(())
    }
}

/// What a manifest says, without its inline content (a copy of the content is never made).
pub(crate) fn metadata(m: &FileManifest) -> FileManifest {
    FileManifest {
        path: m.path.clone(),
        size: m.size,
        content_hash: m.content_hash,
        mtime_ms: m.mtime_ms,
        epoch: m.epoch,
        counter: m.counter,
        author: m.author,
        chunks: m.chunks.clone(),
        inline: None,
    }
}

/// Appends one record: the id, the body's length (4 bytes, little-endian), the body, and a MAC over id and
/// body.
fn record(out: &mut Vec<u8>, mac: &SecretKey, id: &[u8; 32], m: &FileManifest) {
    let start = out.len();
    out.extend_from_slice(id);
    out.extend_from_slice(&[0; 4]);
    let body = out.len();
    out.extend_from_slice(&m.epoch.to_le_bytes());
    out.extend_from_slice(&m.counter.to_le_bytes());
    out.extend_from_slice(&m.author);
    out.extend_from_slice(&m.size.to_le_bytes());
    out.extend_from_slice(&m.content_hash);
    match m.mtime_ms {
        Some(t) => {
            out.push(1);
            out.extend_from_slice(&t.to_le_bytes());
        }
        None => out.extend_from_slice(&[0; 9]),
    }
    out.extend_from_slice(&(m.path.len() as u16).to_le_bytes());
    out.extend_from_slice(m.path.as_bytes());
    out.extend_from_slice(&(m.chunks.len() as u32).to_le_bytes());
    for c in &m.chunks {
        out.extend_from_slice(&c.stored_id);
        out.extend_from_slice(&c.content_id);
        out.extend_from_slice(&c.len.to_le_bytes());
    }
    let len = (out.len() - body) as u32;
    out[body - 4..body].copy_from_slice(&len.to_le_bytes());
    let tag = keyed_hash(mac, &out[start..]);
    out.extend_from_slice(&tag);
}

/// The records of a cache file, up to the first damaged one; a record whose MAC does not check is skipped.
fn parse(bytes: &[u8], mac: &SecretKey) -> HashMap<[u8; 32], FileManifest> {
    let mut out = HashMap::new();
    let mut at = 0;
    while at + 36 <= bytes.len() {
        let len = u32::from_le_bytes([bytes[at + 32], bytes[at + 33], bytes[at + 34], bytes[at + 35]]) as usize;
        let end = at + 36 + len;
        if len > MAX_RECORD || end + MAC_LEN > bytes.len() {
            break;
        }
        let (whole, tag) = (&bytes[at..end], &bytes[end..end + MAC_LEN]);
        if ct_eq(&keyed_hash(mac, whole), tag)
            && let Some(m) = decode(&whole[36..])
        {
            let mut id = [0u8; 32];
            id.copy_from_slice(&whole[..32]);
            out.insert(id, m);
        }
        at = end + MAC_LEN;
    }
    out
}

fn decode(mut r: &[u8]) -> Option<FileManifest> {
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = r.split_at_checked(n)?;
        r = tail;
        Some(head)
    };
    let u32_at = |s: &[u8]| u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let u64_at = |s: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    };
    let epoch = u32_at(take(4)?);
    let counter = u64_at(take(8)?);
    let author: [u8; 16] = take(16)?.try_into().ok()?;
    let size = u64_at(take(8)?);
    let content_hash: [u8; 32] = take(32)?.try_into().ok()?;
    let has_mtime = take(1)?[0];
    let mtime = u64_at(take(8)?) as i64;
    let mtime_ms = match has_mtime {
        0 => None,
        1 => Some(mtime),
        _ => return None,
    };
    let path_len = take(2)?;
    let path_len = usize::from(u16::from_le_bytes([path_len[0], path_len[1]]));
    let path = String::from_utf8(take(path_len)?.to_vec()).ok()?;
    let n = u32_at(take(4)?) as usize;
    if n > MAX_FILE_CHUNKS {
        return None;
    }
    let mut chunks = Vec::with_capacity(n);
    for _ in 0..n {
        let e = take(CHUNK_LEN)?;
        chunks.push(SealedChunk {
            stored_id: e[..32].try_into().ok()?,
            content_id: e[32..64].try_into().ok()?,
            len: u32_at(&e[64..]),
        });
    }
    if !r.is_empty() {
        return None;
    }
    Some(FileManifest { path, size, content_hash, mtime_ms, epoch, counter, author, chunks, inline: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(path: &str, chunks: usize) -> FileManifest {
        FileManifest {
            path: path.into(),
            size: chunks as u64 * 10,
            content_hash: [3; 32],
            mtime_ms: Some(1_700_000_000_123),
            epoch: 2,
            counter: 41,
            author: [7; 16],
            chunks: (0..chunks)
                .map(|i| SealedChunk { stored_id: [i as u8; 32], content_id: [9; 32], len: 10 })
                .collect(),
            inline: None,
        }
    }

    #[test]
    fn verified_manifests_come_back_only_as_written_under_the_workspace_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("ws.checked");
        let key = SecretKey::from_bytes([4; 32]);
        let (a, b) = (manifest("docs/a.txt", 2), manifest("b", 0));
        let inline = FileManifest { inline: Some(b"small file".to_vec()), size: 10, ..manifest("c", 0) };
        let (id_a, id_b, id_c) = (ChunkId([1; 32]), ChunkId([2; 32]), ChunkId([5; 32]));
        fs::write(dir.path().join("ws.manifests"), b"old").expect("old file");
        let mut cache = VerifiedIds::at(file.clone(), &key);
        cache.keep(id_a, &a);
        cache.keep(id_b, &b);
        cache.keep(id_c, &inline);
        cache.save().expect("save");
        assert!(!dir.path().join("ws.manifests").exists(), "the old cache goes");

        let again = VerifiedIds::at(file.clone(), &key);
        assert_eq!(again.get(id_a), Some(&a), "kept across runs");
        assert_eq!(again.get(id_b), Some(&b));
        let c = again.get(id_c).expect("kept");
        assert!(c.inline.is_none() && c.size == 10 && c.chunks.is_empty(), "inline content is never kept");
        assert!(again.get(ChunkId([6; 32])).is_none());

        // Another workspace's key: nothing is trusted.
        assert!(VerifiedIds::at(file.clone(), &SecretKey::from_bytes([8; 32])).get(id_a).is_none());
        // A bit flipped in a record: that record is dropped, the others stay.
        let mut raw = fs::read(&file).expect("read");
        raw[40] ^= 1;
        fs::write(&file, &raw).expect("write");
        let flipped = VerifiedIds::at(file.clone(), &key);
        assert!(flipped.get(id_a).is_none());
        assert_eq!(flipped.get(id_b), Some(&b));
        // A cut-off record is dropped.
        raw[40] ^= 1;
        fs::write(&file, &raw[..raw.len() - 3]).expect("truncate");
        let cut = VerifiedIds::at(file.clone(), &key);
        assert!(cut.get(id_a).is_some() && cut.get(id_b).is_some() && cut.get(id_c).is_none());

        // Appending without reading first (an upload that listed nothing) keeps what was there.
        fs::write(&file, &raw).expect("restore");
        let mut appender = VerifiedIds::at(file.clone(), &key);
        let d = manifest("d", 1);
        appender.keep(ChunkId([9; 32]), &d);
        appender.save().expect("save");
        let last = VerifiedIds::at(file, &key);
        assert_eq!(last.get(ChunkId([9; 32])), Some(&d));
        assert_eq!(last.get(id_a), Some(&a));
    }
}
