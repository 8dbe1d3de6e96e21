//! Delta uploads of changed chunks. Content-defined chunking keeps an edit from changing the chunks around
//! it, but the chunk holding the edit still changes as a whole: a 100-byte edit in a 1 MiB chunk, or in a
//! 30 KiB file (one chunk), would send the whole chunk. For a chunk that replaces bytes of a file's server
//! copy, the server picks the old chunks that covered the same bytes and sends their rsync signature (about
//! 1% of their size); the client sends a librsync delta instead of the chunk when it is clearly smaller, and
//! the server rebuilds the chunk and stores it only if it matches its id (see the server's `delta` module).
//! Whatever fails to go as a delta is uploaded whole, so this only ever saves bytes.
//!
//! Content that was rewritten rather than edited has no useful delta. [`DeltaGate`] stops asking once most
//! attempts of an upload turned out useless, so such a push costs a few signatures, not one per chunk.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use cloudsync_sdk::{ChunkDelta, ErrorKind, Files};
use cloudsync_types::ChunkId;
use cloudsync_types::api::ChunkSignature;
use fast_rsync::{Signature, diff};

use crate::SyncError;
use crate::batch::Pending;
use crate::retry::retry;

/// Chunks smaller than this go whole: a delta round trip would save too little.
const MIN_DELTA_CHUNK: usize = 2048;
/// Attempts an upload makes before [`DeltaGate`] judges whether deltas pay.
const FREE_ATTEMPTS: u64 = 16;

/// Whether delta attempts still pay in this upload: after [`FREE_ATTEMPTS`], only while at least one attempt
/// in eight saved bytes.
#[derive(Debug, Default)]
pub(crate) struct DeltaGate {
    tried: AtomicU64,
    useful: AtomicU64,
}

impl DeltaGate {
    fn open(&self) -> bool {
        let tried = self.tried.load(Ordering::Relaxed);
        tried < FREE_ATTEMPTS || self.useful.load(Ordering::Relaxed) * 8 >= tried
    }

    fn record(&self, useful: bool) {
        self.tried.fetch_add(1, Ordering::Relaxed);
        if useful {
            self.useful.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What [`send_deltas`] sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeltaSent {
    /// Chunks the server rebuilt from deltas.
    pub(crate) chunks: u64,
    /// Bytes of the delta payloads sent (including those that failed to rebuild).
    pub(crate) bytes: u64,
}

/// Sends what it can of `wanted` (chunks the server lacks) as deltas, and returns the chunks still to be
/// uploaded whole.
///
/// # Errors
/// A transport or server failure other than a server that does not offer deltas.
pub(crate) async fn send_deltas(
    files: &Files<'_>,
    wanted: Vec<Pending>,
    gate: &DeltaGate,
) -> Result<(Vec<(ChunkId, Bytes)>, DeltaSent), SyncError> {
    let mut whole = Vec::with_capacity(wanted.len());
    let mut candidates = Vec::new();
    for p in wanted {
        match p.base {
            Some(base) if p.data.len() >= MIN_DELTA_CHUNK && gate.open() => candidates.push((p.id, p.data, base)),
            _ => whole.push((p.id, p.data)),
        }
    }
    if candidates.is_empty() {
        return Ok((whole, DeltaSent::default()));
    }
    let refs: Vec<_> = candidates.iter().map(|(_, _, base)| base.clone()).collect();
    let signatures = match retry(|| files.chunk_signatures(&refs)).await {
        Ok(s) => s,
        // A server without delta support: everything goes whole.
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotSupported) => {
            whole.extend(candidates.into_iter().map(|(id, data, _)| (id, data)));
            return Ok((whole, DeltaSent::default()));
        }
        Err(e) => return Err(e.into()),
    };
    let jobs: Vec<(ChunkId, Bytes, Option<ChunkSignature>)> =
        candidates.into_iter().zip(signatures).map(|((id, data, _), sig)| (id, data, sig)).collect();
    let made = tokio::task::spawn_blocking(move || make_deltas(jobs)).await.map_err(SyncError::task)?;
    let mut deltas = Vec::with_capacity(made.len());
    let mut held = HashMap::new();
    for (id, data, delta) in made {
        gate.record(delta.is_some());
        match delta {
            Some(d) => {
                held.insert(id, data);
                deltas.push(d);
            }
            None => whole.push((id, data)),
        }
    }
    let mut sent = DeltaSent {
        chunks: deltas.len() as u64,
        bytes: deltas.iter().map(|d| (1 + 32 * d.bases.len() + d.delta.len()) as u64).sum(),
    };
    if deltas.is_empty() {
        return Ok((whole, sent));
    }
    let res = match retry(|| files.upload_deltas(deltas.clone())).await {
        Ok(res) => res,
        // Refused as a whole (a base gone meanwhile, a server limit, no delta support): everything goes whole.
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::NotFound | ErrorKind::BadRequest | ErrorKind::TooLarge | ErrorKind::NotSupported
            ) =>
        {
            tracing::debug!("the server refused the deltas ({e}); uploading those chunks whole");
            whole.extend(held);
            return Ok((whole, DeltaSent::default()));
        }
        Err(e) => return Err(e.into()),
    };
    for id in res.failed {
        if let Some(data) = held.remove(&id) {
            sent.chunks -= 1;
            tracing::debug!(chunk = %id, "a delta did not rebuild its chunk; uploading it whole");
            whole.push((id, data));
        }
    }
    Ok((whole, sent))
}

/// The delta of each chunk against its signature, where one is worth sending: `None` without a signature,
/// with one that does not parse, or when the delta would not save at least an eighth of the chunk.
fn make_deltas(jobs: Vec<(ChunkId, Bytes, Option<ChunkSignature>)>) -> Vec<(ChunkId, Bytes, Option<ChunkDelta>)> {
    jobs.into_iter()
        .map(|(id, data, sig)| {
            let delta = sig.and_then(|sig| delta_of(id, &data, sig));
            (id, data, delta)
        })
        .collect()
}

fn delta_of(id: ChunkId, data: &[u8], sig: ChunkSignature) -> Option<ChunkDelta> {
    let raw = STANDARD.decode(sig.signature.as_bytes()).ok()?;
    let signature = Signature::deserialize(raw).ok()?;
    let mut delta = Vec::new();
    diff(&signature.index(), data, &mut delta).ok()?;
    let cost = 1 + 32 * sig.bases.len() + delta.len();
    (cost < data.len() - data.len() / 8).then_some(ChunkDelta { id, bases: sig.bases, delta })
}

#[cfg(test)]
mod tests {
    use fast_rsync::{SignatureOptions, apply};

    use super::*;
    use crate::chunking::tests::pseudo_random;

    fn signature(base: &[u8], bases: Vec<ChunkId>) -> ChunkSignature {
        let sig = Signature::calculate(base, SignatureOptions { block_size: 512, crypto_hash_size: 8 });
        ChunkSignature { bases, signature: STANDARD.encode(sig.serialized()) }
    }

    #[test]
    fn an_edited_chunk_goes_as_a_small_delta_that_rebuilds_it() {
        let old = pseudo_random(64 * 1024, 7);
        let mut new = old.clone();
        new[30_000..31_024].copy_from_slice(&pseudo_random(1024, 99));
        let id = ChunkId([1; 32]);
        let d = delta_of(id, &new, signature(&old, vec![ChunkId([2; 32])])).expect("a delta pays");
        assert_eq!((d.id, d.bases.as_slice()), (id, &[ChunkId([2; 32])][..]));
        assert!(d.delta.len() < 3 * 1024, "a 1 KiB edit cost {} bytes", d.delta.len());
        let mut rebuilt = Vec::new();
        apply(&old, &d.delta, &mut rebuilt).expect("apply");
        assert_eq!(rebuilt, new);
    }

    #[test]
    fn rewritten_content_and_bad_signatures_go_whole() {
        let old = pseudo_random(64 * 1024, 7);
        let new = pseudo_random(64 * 1024, 8);
        assert!(delta_of(ChunkId([1; 32]), &new, signature(&old, vec![ChunkId([2; 32])])).is_none());
        let garbage = ChunkSignature { bases: vec![ChunkId([2; 32])], signature: "not base64!".into() };
        assert!(delta_of(ChunkId([1; 32]), &new, garbage).is_none());
        let made = make_deltas(vec![(ChunkId([3; 32]), Bytes::from(new), None)]);
        assert!(made[0].2.is_none());
    }

    #[test]
    fn the_gate_closes_when_deltas_stop_paying() {
        let gate = DeltaGate::default();
        for _ in 0..FREE_ATTEMPTS {
            assert!(gate.open());
            gate.record(false);
        }
        assert!(!gate.open(), "16 useless attempts");
        let gate = DeltaGate::default();
        for n in 0..100 {
            gate.record(n % 4 == 0);
        }
        assert!(gate.open(), "one in four pays");
    }
}
