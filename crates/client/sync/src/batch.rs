//! Grouping chunks of many files into upload batches. One round trip per chunk (or per file) would make
//! trees of small files crawl; one giant batch would hold a whole tree in memory. A batch is flushed once
//! it reaches about 16 MiB or 2000 chunks, so each `missing_chunks` + `upload_chunks` pair carries a useful
//! amount of data while memory stays bounded. Kept free of I/O so the thresholds can be tested directly.
//!
//! Files whose chunks the batch already holds (identical files, or files made of chunks seen before) add
//! nothing to it, so a tree of duplicates never fills a batch; their commits would wait for it without
//! bound. Reaching [`MAX_READY_COMMITS`] waiting commits therefore flushes too.

use std::collections::HashSet;

use bytes::Bytes;
use cloudsync_types::ChunkId;
use cloudsync_types::api::DeltaBaseRef;

/// Files read and waiting for their batch to be stored before they are committed; reaching this many waits
/// for the oldest batches in flight (and flushes the filling batch even when it is not full, if the oldest
/// waiting file needs it). Well above what the batches in flight hold (about 500 small files each), so a
/// push of small files does not stall on it.
pub(crate) const MAX_READY_COMMITS: usize = 4000;

/// When a batch is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchLimits {
    /// Flush once this many payload bytes are held.
    pub(crate) max_bytes: u64,
    /// Flush once this many distinct chunks are held.
    pub(crate) max_chunks: usize,
}

impl BatchLimits {
    /// About 16 MiB or 2000 chunks.
    pub(crate) const DEFAULT: Self = Self { max_bytes: 16 * 1024 * 1024, max_chunks: 2000 };

    /// True when a batch holding `bytes` in `chunks` chunks must be flushed.
    pub(crate) fn is_full(&self, bytes: u64, chunks: usize) -> bool {
        bytes >= self.max_bytes || chunks >= self.max_chunks
    }
}

/// A chunk waiting in a batch.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) id: ChunkId,
    pub(crate) data: Bytes,
    /// Where it replaces bytes of a file's server copy, for a delta upload (see [`crate::delta`]).
    pub(crate) base: Option<DeltaBaseRef>,
}

/// Chunks waiting to be uploaded together. Duplicate ids within a batch are held once.
#[derive(Debug)]
pub(crate) struct Batch {
    /// Sequence number; batches are numbered in the order they were started.
    pub(crate) seq: u64,
    chunks: Vec<Pending>,
    ids: HashSet<ChunkId>,
    bytes: u64,
    /// Chunks added that were already in this batch.
    pub(crate) duplicates: u64,
}

impl Batch {
    pub(crate) fn new(seq: u64) -> Self {
        Self { seq, chunks: Vec::new(), ids: HashSet::new(), bytes: 0, duplicates: 0 }
    }

    /// Adds a chunk (once per id) and reports whether the batch is now full.
    pub(crate) fn add(&mut self, chunk: Pending, limits: &BatchLimits) -> bool {
        if self.ids.insert(chunk.id) {
            self.bytes += chunk.data.len() as u64;
            self.chunks.push(chunk);
        } else {
            self.duplicates += 1;
        }
        limits.is_full(self.bytes, self.chunks.len())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Payload bytes held.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The distinct chunk ids, in order of first appearance.
    pub(crate) fn ids(&self) -> Vec<ChunkId> {
        self.chunks.iter().map(|c| c.id).collect()
    }

    /// Gives up the chunks, keeping only those whose id is in `wanted`.
    pub(crate) fn into_wanted(self, wanted: &HashSet<ChunkId>) -> Vec<Pending> {
        self.chunks.into_iter().filter(|c| wanted.contains(&c.id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> ChunkId {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&n.to_le_bytes());
        ChunkId(b)
    }

    fn chunk(n: u32, data: Bytes) -> Pending {
        Pending { id: id(n), data, base: None }
    }

    #[test]
    fn thresholds() {
        let l = BatchLimits::DEFAULT;
        assert!(!l.is_full(0, 0));
        assert!(!l.is_full(16 * 1024 * 1024 - 1, 1999));
        assert!(l.is_full(16 * 1024 * 1024, 1));
        assert!(l.is_full(10, 2000));
    }

    #[test]
    fn flushes_at_the_chunk_count() {
        let limits = BatchLimits { max_bytes: u64::MAX, max_chunks: 3 };
        let mut b = Batch::new(0);
        assert!(!b.add(chunk(1, Bytes::from_static(b"a")), &limits));
        assert!(!b.add(chunk(2, Bytes::from_static(b"b")), &limits));
        // A duplicate does not count towards the limit.
        assert!(!b.add(chunk(2, Bytes::from_static(b"b")), &limits));
        assert!(b.add(chunk(3, Bytes::from_static(b"c")), &limits));
        assert_eq!(b.duplicates, 1);
        assert_eq!(b.ids(), vec![id(1), id(2), id(3)]);
    }

    #[test]
    fn flushes_at_the_byte_size() {
        let limits = BatchLimits { max_bytes: 10, max_chunks: usize::MAX };
        let mut b = Batch::new(7);
        assert!(b.is_empty());
        assert!(!b.add(chunk(1, Bytes::from(vec![0u8; 6])), &limits));
        assert!(b.add(chunk(2, Bytes::from(vec![0u8; 4])), &limits));
        assert_eq!(b.bytes(), 10);
        assert_eq!(b.seq, 7);
    }

    #[test]
    fn keeps_only_wanted_chunks() {
        let limits = BatchLimits::DEFAULT;
        let mut b = Batch::new(0);
        for n in 0..5 {
            b.add(chunk(n, Bytes::from(vec![n as u8; 3])), &limits);
        }
        let wanted: HashSet<ChunkId> = [id(1), id(3)].into_iter().collect();
        let kept = b.into_wanted(&wanted);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].id, id(1));
        assert_eq!(kept[1].data, Bytes::from(vec![3u8; 3]));
    }
}
