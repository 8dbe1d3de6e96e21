//! Streaming chunking and hashing of one file. Both run on a blocking thread (they are CPU and disk bound)
//! and read the file piece by piece, so memory stays bounded by the chunker's window however large the file
//! is. The chunk ids and the whole-content hash come from the same single read, so they always describe
//! the same bytes even if the file changes while it is being read.

use std::io::{self, Read};
use std::ops::ControlFlow;

use cloudsync_chunker::{ChunkerError, chunk_reader};
use cloudsync_types::ChunkId;

use crate::keys::ChunkKeys;

/// Read size for plain hashing.
const HASH_BUF: usize = 1024 * 1024;

thread_local! {
    static HASH_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Size and keyed content hash of everything read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Digest {
    pub(crate) size: u64,
    pub(crate) hash: [u8; 32],
}

/// Hashes all of `reader` with the workspace key, without chunking (the cheap "is it unchanged?" check).
pub(crate) fn hash_reader(mut reader: impl Read, keys: &ChunkKeys) -> io::Result<Digest> {
    let mut hasher = keys.content_hasher();
    let mut size = 0u64;
    // One buffer per thread: a fresh zeroed megabyte per file would cost more than hashing a small file.
    HASH_BUFFER.with_borrow_mut(|buf| {
        buf.resize(HASH_BUF, 0);
        loop {
            let n = match reader.read(buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        Ok(())
    })?;
    Ok(Digest { size, hash: hasher.finalize() })
}

/// Cuts `reader` into chunks, hands each to `on_chunk` with its id, and returns the size and content hash
/// of the whole. `on_chunk` may stop early by returning `Break`; then `Ok(None)` is returned.
pub(crate) fn chunk_stream(
    reader: impl Read,
    keys: &ChunkKeys,
    mut on_chunk: impl FnMut(ChunkId, Vec<u8>) -> ControlFlow<()>,
) -> io::Result<Option<Digest>> {
    let mut hasher = keys.content_hasher();
    let mut size = 0u64;
    for chunk in chunk_reader(reader, keys.params, keys.boundaries) {
        let chunk = chunk.map_err(|e| match e {
            ChunkerError::Io(e) => e,
            other => io::Error::other(other.to_string()),
        })?;
        size += chunk.data.len() as u64;
        let id = keys.chunk_id(&chunk.data);
        // Chunk ids and content hashes use the same key: a file that is one chunk hashes to its chunk id,
        // so most small files are hashed once, not twice.
        let whole = chunk.offset == 0 && chunk.last;
        if !whole {
            hasher.update(&chunk.data);
        }
        if on_chunk(id, chunk.data).is_break() {
            return Ok(None);
        }
        if whole {
            return Ok(Some(Digest { size, hash: id.0 }));
        }
    }
    Ok(Some(Digest { size, hash: hasher.finalize() }))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::{Seek, SeekFrom, Write};

    use cloudsync_chunker::ChunkerParams;
    use cloudsync_crypto::{SecretKey, keyed_hash};

    use super::*;

    fn small_params() -> ChunkerParams {
        ChunkerParams { min: 1024, avg: 4096, max: 16384 }
    }

    /// Deterministic, incompressible-looking bytes (the unit tests of this crate share it).
    pub(crate) fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn chunks_and_hash_of_a_file_match_in_memory_hashing() {
        let keys = ChunkKeys::for_test(small_params());
        let key = SecretKey::from_bytes([42; 32]);
        let data = pseudo_random(300_000, 0x9e37_79b9_7f4a_7c15);
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(&data).expect("write");
        file.seek(SeekFrom::Start(0)).expect("seek");

        let mut chunks = Vec::new();
        let digest = chunk_stream(&file, &keys, |id, bytes| {
            chunks.push((id, bytes));
            ControlFlow::Continue(())
        })
        .expect("chunk")
        .expect("not stopped");

        assert!(chunks.len() > 10, "{} chunks", chunks.len());
        assert_eq!(digest.size, data.len() as u64);
        assert_eq!(digest.hash, keyed_hash(&key, &data));
        let joined: Vec<u8> = chunks.iter().flat_map(|(_, b)| b.iter().copied()).collect();
        assert_eq!(joined, data);
        for (id, bytes) in &chunks {
            assert_eq!(id.0, keyed_hash(&key, bytes));
            assert!(bytes.len() <= small_params().max as usize);
        }

        file.seek(SeekFrom::Start(0)).expect("seek");
        assert_eq!(hash_reader(&file, &keys).expect("hash"), digest);
    }

    #[test]
    fn a_one_chunk_file_hashes_to_its_content_hash() {
        let keys = ChunkKeys::for_test(small_params());
        let key = SecretKey::from_bytes([42; 32]);
        for len in [1, 500, 1024, 3000] {
            let data = pseudo_random(len, 0x9e37_79b9_7f4a_7c15);
            let mut ids = Vec::new();
            let digest = chunk_stream(&data[..], &keys, |id, _| {
                ids.push(id);
                ControlFlow::Continue(())
            })
            .expect("chunk")
            .expect("not stopped");
            assert_eq!(ids.len(), 1, "{len} bytes");
            assert_eq!((digest.size, digest.hash), (len as u64, keyed_hash(&key, &data)), "{len} bytes");
            assert_eq!(hash_reader(&data[..], &keys).expect("hash"), digest);
        }
    }

    #[test]
    fn empty_input_has_no_chunks_and_the_empty_hash() {
        let keys = ChunkKeys::for_test(small_params());
        let digest =
            chunk_stream(&b""[..], &keys, |_, _| panic!("no chunk expected")).expect("chunk").expect("not stopped");
        assert_eq!(digest.size, 0);
        assert_eq!(digest.hash, keyed_hash(&SecretKey::from_bytes([42; 32]), b""));
    }

    #[test]
    fn stopping_early_returns_none() {
        let keys = ChunkKeys::for_test(small_params());
        let data = pseudo_random(100_000, 0x9e37_79b9_7f4a_7c15);
        let got = chunk_stream(&data[..], &keys, |_, _| ControlFlow::Break(())).expect("chunk");
        assert_eq!(got, None);
    }
}
