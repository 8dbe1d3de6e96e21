//! The stored form of a manifest: compact binary (36 bytes a chunk instead of ~90 in JSON), versioned by a
//! magic prefix so an E2EE sealed form can sit beside it later.

use cloudsync_types::api::{Manifest, ManifestChunk};
use cloudsync_types::{ChunkId, MAX_MANIFEST_CHUNKS};

const MAGIC: &[u8; 4] = b"CSM1";

/// Encodes a manifest for storage.
pub fn encode_manifest(m: &Manifest) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 8 + 64 + 4 + m.chunks.len() * 36);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&m.size.to_le_bytes());
    let hash = m.content_hash.as_bytes();
    out.extend_from_slice(&(hash.len() as u32).to_le_bytes());
    out.extend_from_slice(hash);
    out.extend_from_slice(&(m.chunks.len() as u32).to_le_bytes());
    for c in &m.chunks {
        out.extend_from_slice(&c.id.0);
        out.extend_from_slice(&c.size.to_le_bytes());
    }
    out
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (head, tail) = b.split_at(n);
    *b = tail;
    Some(head)
}

fn u32_of(b: &mut &[u8]) -> Option<u32> {
    take(b, 4).and_then(|s| s.try_into().ok()).map(u32::from_le_bytes)
}

/// Decodes a stored manifest; None when it is malformed.
pub fn decode_manifest(mut b: &[u8]) -> Option<Manifest> {
    let b = &mut b;
    if take(b, 4)? != MAGIC {
        return None;
    }
    let size = u64::from_le_bytes(take(b, 8)?.try_into().ok()?);
    let hlen = u32_of(b)? as usize;
    if hlen > 128 {
        return None;
    }
    let content_hash = String::from_utf8(take(b, hlen)?.to_vec()).ok()?;
    let n = u32_of(b)? as usize;
    if n > MAX_MANIFEST_CHUNKS || b.len() != n * 36 {
        return None;
    }
    let mut chunks = Vec::with_capacity(n);
    for _ in 0..n {
        let id: [u8; 32] = take(b, 32)?.try_into().ok()?;
        chunks.push(ManifestChunk { id: ChunkId(id), size: u32_of(b)? });
    }
    Some(Manifest { size, content_hash, chunks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let m = Manifest {
            size: 10,
            content_hash: "ab".repeat(32),
            chunks: vec![
                ManifestChunk { id: ChunkId([1; 32]), size: 4 },
                ManifestChunk { id: ChunkId([2; 32]), size: 6 },
            ],
        };
        let enc = encode_manifest(&m);
        assert_eq!(decode_manifest(&enc), Some(m));
        assert_eq!(decode_manifest(&enc[..enc.len() - 1]), None);
        assert_eq!(decode_manifest(b"XXXX"), None);
        assert_eq!(decode_manifest(&[]), None);
    }
}
