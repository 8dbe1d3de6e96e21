//! Streaming behaviour: empty input, parameter and I/O errors, and bounded
//! memory on a large lazily generated input.

mod common;

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

use cloudsync_chunker::{Boundaries, ChunkerError, ChunkerParams, chunk_reader, chunk_slice};
use common::Rng;

#[test]
fn empty_input_yields_no_chunks() {
    for b in [Boundaries::Public, Boundaries::Keyed(42)] {
        assert_eq!(chunk_reader(io::empty(), ChunkerParams::DEFAULT, b).count(), 0);
        assert!(chunk_slice(&[], ChunkerParams::DEFAULT, b).is_empty());
    }
}

#[test]
fn small_input_is_one_chunk() {
    let chunks: Vec<_> =
        chunk_reader(&b"hello"[..], ChunkerParams::DEFAULT, Boundaries::Public).collect::<Result<_, _>>().unwrap();
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].offset, 0);
    assert_eq!(chunks[0].data, b"hello");
    let shown = format!("{:?}", chunks[0]);
    assert!(shown.contains("len: 5") && !shown.contains("104"), "{shown}");
}

#[test]
fn invalid_params_are_reported_once() {
    let bad = ChunkerParams { min: 10, avg: 20, max: 30 };
    let mut stream = chunk_reader(&b"data"[..], bad, Boundaries::Public);
    assert!(format!("{stream:?}").contains("invalid"));
    assert!(matches!(stream.next(), Some(Err(ChunkerError::Params(_)))));
    assert!(stream.next().is_none());
}

/// Yields `ok` bytes of zeros, then fails.
struct FailingReader {
    ok: usize,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ok == 0 {
            return Err(io::Error::other("disk on fire"));
        }
        let n = buf.len().min(self.ok);
        buf[..n].fill(0);
        self.ok -= n;
        Ok(n)
    }
}

#[test]
fn io_errors_are_reported_and_end_the_stream() {
    let params = ChunkerParams { min: 1024, avg: 4096, max: 8192 };
    let mut stream = chunk_reader(FailingReader { ok: 20_000 }, params, Boundaries::Public);
    let mut ok = 0;
    let err = loop {
        match stream.next() {
            Some(Ok(_)) => ok += 1,
            Some(Err(e)) => break e,
            None => panic!("stream ended without reporting the error"),
        }
    };
    assert_eq!(ok, 2, "two full 8 KiB chunks of zeros precede the failure");
    assert!(matches!(&err, ChunkerError::Io(e) if e.to_string() == "disk on fire"));
    assert!(stream.next().is_none());
}

/// Lazily generated pseudo-random input that records how far it has been
/// read, so the test can check how much the chunker buffers.
struct LazyReader {
    rng: Rng,
    remaining: u64,
    consumed: Rc<Cell<u64>>,
}

impl Read for LazyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        self.rng.fill(&mut buf[..n]);
        self.remaining -= n as u64;
        self.consumed.set(self.consumed.get() + n as u64);
        Ok(n)
    }
}

#[test]
fn large_stream_has_bounded_buffering() {
    const TOTAL: u64 = 64 * 1024 * 1024;
    let params = ChunkerParams::DEFAULT;
    let consumed = Rc::new(Cell::new(0));
    let reader = LazyReader { rng: Rng::new(7), remaining: TOTAL, consumed: Rc::clone(&consumed) };
    let mut next_offset = 0u64;
    let mut count = 0;
    for chunk in chunk_reader(reader, params, Boundaries::Keyed(99)) {
        let chunk = chunk.unwrap();
        let len = chunk.data.len() as u64;
        assert_eq!(chunk.offset, next_offset);
        assert!(len <= u64::from(params.max));
        next_offset += len;
        count += 1;
        // Bytes read but not yet handed out never exceed one window.
        assert!(consumed.get() - next_offset <= u64::from(params.max));
    }
    assert_eq!(next_offset, TOTAL);
    assert!(count >= TOTAL / u64::from(params.max), "{count} chunks");
}

#[test]
fn default_sizes_stream_exactly_like_the_slice_chunker() {
    // Larger than twice the maximum chunk, so the window grows, fills and is compacted on the way.
    let data = common::random_data(11, 11 * 1024 * 1024);
    let params = ChunkerParams::DEFAULT;
    let chunks: Vec<_> = chunk_reader(&data[..], params, Boundaries::Public).map(|c| c.expect("chunk")).collect();
    let lasts: Vec<bool> = chunks.iter().map(|c| c.last).collect();
    assert_eq!(lasts.iter().filter(|l| **l).count(), 1, "exactly one chunk is marked last");
    assert_eq!(lasts.last(), Some(&true));
    let streamed: Vec<(usize, usize)> = chunks.iter().map(|c| (c.offset as usize, c.data.len())).collect();
    assert_eq!(streamed, chunk_slice(&data, params, Boundaries::Public));
    assert!(streamed.len() > 4, "{} chunks", streamed.len());
}
