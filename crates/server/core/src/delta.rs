//! Delta uploads. A small edit inside a large chunk (or inside a small file, which is one chunk) changes the
//! chunk's id, and content-defined chunking alone would then send the whole chunk again. Instead the client
//! asks for the rsync block signature of the old bytes the new chunk replaces ([`Core::chunk_signatures`]),
//! sends only a librsync delta against them, and the server rebuilds the chunk ([`ChunkIo::rebuild`]).
//!
//! The server picks the base itself, from the manifest of the version being replaced, so a client names a
//! file it may read and a position in it, never arbitrary chunk ids. A rebuilt chunk is stored only if its
//! keyed hash is its id: rsync's MD4 block hashes are weak and a crafted base could make a delta rebuild
//! other bytes, but never get them stored under a wrong id. Such a chunk is reported as failed and the
//! client uploads it whole.
//!
//! End-to-end encrypted workspaces (where the server holds no plaintext) cannot use this; their clients
//! upload whole chunks.

use std::collections::HashSet;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cloudsync_crypto::keyed_hash;
use cloudsync_types::api::{ChunkSignature, DeltaBaseRef, MAX_DELTA_BASES, MAX_SIGNATURE_BASES, Manifest};
use cloudsync_types::{ChunkId, MAX_CHUNK_SIZE};
use fast_rsync::{Signature, SignatureOptions, apply_limited};

use cloudsync_types::AuditEvent;

use crate::{Access, AuditExt as _, ChunkIo, Core, CoreError, CoreResult, decode_manifest};

/// Most base bytes one signatures request reads; bases past this budget get no signature (the client then
/// uploads those chunks whole), so a request's cost is bounded whatever it asks for.
pub const MAX_SIGNATURE_BYTES: usize = 64 * 1024 * 1024;
/// Bytes of each block's MD4 kept in a signature. The rebuilt chunk is checked against its id anyway, so
/// this only needs to make a wrong match rare, not impossible.
const STRONG_HASH_BYTES: u32 = 8;
/// Smallest and largest signature block: about the square root of the base (as rsync does), so a signature
/// is about 1% of a 1 MiB base while an edit costs at most two blocks beyond its own bytes.
const MIN_BLOCK: u32 = 512;
const MAX_BLOCK: u32 = 8192;

impl Core {
    /// For each new chunk described by `refs`, the chunks of the version being replaced that covered the
    /// same bytes, and the rsync signature of their concatenation.
    ///
    /// # Errors
    /// More than [`MAX_SIGNATURE_BASES`] refs, a store failure, or a chunk a stored manifest names that
    /// cannot be read.
    pub async fn chunk_signatures(
        &self,
        access: &Access,
        refs: &[DeltaBaseRef],
    ) -> CoreResult<Vec<Option<ChunkSignature>>> {
        if refs.len() > MAX_SIGNATURE_BASES {
            return Err(CoreError::TooLarge(format!("ask for at most {MAX_SIGNATURE_BASES} signatures per request")));
        }
        self.refuse_content_op_if_e2ee(access, "a delta signature", "; members send changed chunks whole").await?;
        let lookups: Vec<_> = refs.iter().map(|r| (r.path.clone(), Some(r.version))).collect();
        let found = self.store.live_versions(access.workspace, &lookups).await?;
        let io = self.chunk_io(access).await?;
        let mut budget = MAX_SIGNATURE_BYTES;
        let mut out = Vec::with_capacity(refs.len());
        // A signature reveals the chunk ids and block hashes of a version: read access to it, audited as such
        // (once per version per request).
        let mut audited = HashSet::new();
        let mut rows = Vec::new();
        'refs: for (r, v) in refs.iter().zip(found) {
            let picked = v
                .as_ref()
                .and_then(|v| decode_manifest(&v.manifest))
                .and_then(|m| pick_bases(&m, r.offset, u64::from(r.len)))
                .filter(|b| b.len <= budget);
            let Some(picked) = picked else {
                out.push(None);
                continue;
            };
            budget -= picked.len;
            let mut base = Vec::with_capacity(picked.len);
            let places = match io.locate(&picked.ids).await {
                Ok(places) => places,
                Err(e) => {
                    tracing::warn!(error = %e, "the base chunks for a delta signature cannot be found");
                    out.push(None);
                    continue;
                }
            };
            for (id, place) in picked.ids.iter().zip(places) {
                match io.read(*id, place).await {
                    Ok(data) => base.extend_from_slice(&data),
                    Err(e) => {
                        // The client then uploads that chunk whole; the other refs are unaffected.
                        tracing::warn!(chunk = %id, error = %e, "a base chunk for a delta signature cannot be read");
                        out.push(None);
                        continue 'refs;
                    }
                }
            }
            let signature = tokio::task::spawn_blocking(move || signature_of(&base))
                .await
                .map_err(|e| CoreError::Internal(format!("signature task failed: {e}")))?;
            if audited.insert((r.path.as_str(), r.version)) {
                rows.push(
                    self.audit(AuditEvent::FileAccess, Some(&access.actor), Some(access.workspace))
                        .target(r.path.as_str())
                        .detail("version", r.version)
                        .detail("via", "delta signature"),
                );
            }
            out.push(Some(ChunkSignature { bases: picked.ids, signature: STANDARD.encode(signature) }));
        }
        if !rows.is_empty() {
            self.store.append_audit(&rows).await?;
        }
        Ok(out)
    }
}

impl ChunkIo {
    /// Rebuilds chunk `id` by applying `delta` to `bases` (chunks of this workspace) concatenated. `None`
    /// when the delta is malformed or does not rebuild content whose keyed hash is `id`.
    ///
    /// # Errors
    /// More than [`MAX_DELTA_BASES`] bases, a base this workspace does not hold (`ChunksNotFound`), or a base
    /// that cannot be read.
    ///
    /// `spent` grows by the bytes read and rebuilt, so a request can be held to a budget of work however
    /// small its deltas are.
    pub async fn rebuild(
        &self,
        id: ChunkId,
        bases: &[ChunkId],
        delta: bytes::Bytes,
        spent: &mut usize,
    ) -> CoreResult<Option<Vec<u8>>> {
        if bases.is_empty() || bases.len() > MAX_DELTA_BASES {
            return Err(CoreError::BadRequest(format!("a delta names 1 to {MAX_DELTA_BASES} base chunks")));
        }
        let places = self.locate(bases).await?;
        let mut base = Vec::new();
        for (b, place) in bases.iter().zip(places) {
            base.extend_from_slice(&self.read(*b, place).await?);
        }
        *spent += base.len();
        let chunk_key = self.chunk_key.clone();
        let out = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            // The limit stops a delta that would expand past the chunk size cap as soon as it does.
            let ok = apply_limited(&base, &delta, &mut out, MAX_CHUNK_SIZE).is_ok()
                && !out.is_empty()
                && keyed_hash(&chunk_key, &out) == id.0;
            (ok, out)
        })
        .await
        .map_err(|e| CoreError::Internal(format!("delta task failed: {e}")))?;
        *spent += out.1.len();
        Ok(out.0.then_some(out.1))
    }

    /// Whether this workspace holds chunk `id`.
    ///
    /// # Errors
    /// A store failure.
    pub async fn holds(&self, id: ChunkId) -> CoreResult<bool> {
        Ok(self.store.missing_chunks(self.ws, &[id]).await?.is_empty())
    }
}

/// The base chosen for one new chunk.
#[derive(Debug, PartialEq, Eq)]
struct Picked {
    ids: Vec<ChunkId>,
    len: usize,
}

/// The chunks of `m` overlapping the byte range `offset..offset + len` of the new content (an edit shifts
/// what follows it by its size change, which is small next to a chunk, so position is a good guide), trimmed
/// to at most [`MAX_DELTA_BASES`]: edge chunks that overlap less than an eighth of the range go first, then
/// the edge that overlaps less. `None` when nothing overlaps.
fn pick_bases(m: &Manifest, offset: u64, len: u64) -> Option<Picked> {
    let end = offset.saturating_add(len);
    let mut start = 0u64;
    let mut over: Vec<(ChunkId, u64, u64)> = Vec::new(); // (id, size, overlap)
    for c in &m.chunks {
        let (cs, ce) = (start, start + u64::from(c.size));
        start = ce;
        if ce <= offset {
            continue;
        }
        if cs >= end {
            break;
        }
        over.push((c.id, u64::from(c.size), ce.min(end) - cs.max(offset)));
    }
    let small = len / 8;
    while over.len() > 1 && over.first().is_some_and(|f| f.2 < small) {
        over.remove(0);
    }
    while over.len() > 1 && over.last().is_some_and(|l| l.2 < small) {
        over.pop();
    }
    while over.len() > MAX_DELTA_BASES {
        match (over.first(), over.last()) {
            (Some(f), Some(l)) if f.2 < l.2 => {
                over.remove(0);
            }
            _ => {
                over.pop();
            }
        }
    }
    if over.is_empty() {
        return None;
    }
    let len = over.iter().map(|o| o.1).sum::<u64>();
    Some(Picked { ids: over.into_iter().map(|o| o.0).collect(), len: usize::try_from(len).ok()? })
}

/// The rsync block size for a base of `len` bytes.
fn block_size(len: usize) -> u32 {
    let root = (len as f64).sqrt() as u32;
    root.clamp(MIN_BLOCK, MAX_BLOCK) / 64 * 64
}

/// The serialized librsync signature of `base`.
fn signature_of(base: &[u8]) -> Vec<u8> {
    let options = SignatureOptions { block_size: block_size(base.len()), crypto_hash_size: STRONG_HASH_BYTES };
    Signature::calculate(base, options).into_serialized()
}

#[cfg(test)]
mod tests {
    use cloudsync_types::api::ManifestChunk;

    use super::*;

    fn manifest(sizes: &[u32]) -> Manifest {
        let chunks: Vec<_> =
            sizes.iter().enumerate().map(|(i, &size)| ManifestChunk { id: ChunkId([i as u8; 32]), size }).collect();
        Manifest { size: sizes.iter().map(|&s| u64::from(s)).sum(), content_hash: String::new(), chunks }
    }

    fn ids(p: &Option<Picked>) -> Vec<u8> {
        p.as_ref().map(|p| p.ids.iter().map(|i| i.0[0]).collect()).unwrap_or_default()
    }

    #[test]
    fn bases_are_the_chunks_under_the_new_range() {
        let m = manifest(&[1000, 1000, 1000, 1000, 1000, 1000]);
        // Exactly chunk 1.
        assert_eq!(ids(&pick_bases(&m, 1000, 1000)), [1]);
        // 100 bytes inserted into chunk 0: its 100-byte overlap with chunk 1 is not worth a base.
        let p = pick_bases(&m, 0, 1100);
        assert_eq!(ids(&p), [0]);
        assert_eq!(p.map(|p| p.len), Some(1000));
        // Straddling two chunks about equally.
        assert_eq!(ids(&pick_bases(&m, 1500, 1000)), [1, 2]);
        // Wider than four chunks: trimmed to four.
        assert_eq!(pick_bases(&m, 0, 6000).map(|p| p.ids.len()), Some(4));
        // Past the end of the old content: nothing to base on.
        assert_eq!(pick_bases(&m, 6000, 500), None);
        assert_eq!(pick_bases(&manifest(&[]), 0, 500), None);
    }

    #[test]
    fn block_sizes_follow_the_square_root_within_bounds() {
        assert_eq!(block_size(10), MIN_BLOCK);
        assert_eq!(block_size(1 << 20), 1024);
        assert_eq!(block_size(1 << 30), MAX_BLOCK);
        assert_eq!(block_size(3 << 20) % 64, 0);
    }
}
