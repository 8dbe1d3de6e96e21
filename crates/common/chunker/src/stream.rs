//! Streaming chunker over any reader, with bounded memory.
//!
//! Sync must handle files far larger than RAM, so chunks are produced one at
//! a time from a window of at most twice `max` bytes (plus the chunk being
//! handed out). Boundaries are exactly those of [`crate::chunk_slice`]
//! because both run the same FastCDC 2020 cut function with the same gear
//! table, each cut seeing at least `max` bytes (or the rest of the input).

use std::fmt;
use std::io::{self, Read};

use fastcdc::v2020::FastCDC;

use crate::{Boundaries, ChunkerError, ChunkerParams, LEVEL};

/// One chunk of a stream: its position in the input and its bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Byte offset of the chunk's first byte in the input.
    pub offset: u64,
    /// The chunk's contents.
    pub data: Vec<u8>,
    /// True when the input ends with this chunk.
    pub last: bool,
}

impl fmt::Debug for Chunk {
    // File contents stay out of logs; only the shape is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunk").field("offset", &self.offset).field("len", &self.data.len()).finish_non_exhaustive()
    }
}

/// Retries reads interrupted by signals (`ErrorKind::Interrupted`), as the
/// `Read` contract expects of callers; fastcdc would report them as errors.
struct RetryInterrupted<R>(R);

impl<R: Read> Read for RetryInterrupted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
}

/// Capacity of the window before the first read.
const FIRST_WINDOW: usize = 256 * 1024;

enum State {
    /// Chunking in progress.
    Running,
    /// Parameters were invalid: report once, then end.
    Invalid(ChunkerError),
    /// Input exhausted or an error was reported; the stream is fused.
    Done,
}

/// Streaming chunker over any [`Read`] with bounded memory (a window of at
/// most twice `max` bytes). Yields `Result<Chunk, ChunkerError>`; empty input
/// yields no chunks. After the first error the stream ends.
///
/// The window grows only as far as the input needs, is never zero-filled,
/// and unconsumed bytes are moved to its front only when its tail runs out
/// of room, so each input byte is copied about once: fastcdc's own
/// `StreamCDC` zero-fills a `max`-sized buffer and shifts all of it after
/// every chunk, which for a tree of small files cost more than hashing them.
pub struct ChunkStream<R: Read> {
    reader: RetryInterrupted<R>,
    state: State,
    params: ChunkerParams,
    seed: u64,
    /// Input read but not yet handed out is `window[start..]`.
    window: Vec<u8>,
    start: usize,
    /// Input offset of `window[start]`.
    offset: u64,
    eof: bool,
}

/// Starts chunking `reader`. Invalid `params` are reported as the first (and
/// only) item of the stream.
pub fn chunk_reader<R: Read>(reader: R, params: ChunkerParams, boundaries: Boundaries) -> ChunkStream<R> {
    let state = match params.validate() {
        Ok(()) => State::Running,
        Err(e) => State::Invalid(e),
    };
    ChunkStream {
        reader: RetryInterrupted(reader),
        state,
        params,
        seed: boundaries.seed(),
        window: Vec::new(),
        start: 0,
        offset: 0,
        eof: false,
    }
}

impl<R: Read> ChunkStream<R> {
    /// Reads until at least `max` unconsumed bytes are held or the input ends: a cut decided on fewer bytes
    /// would differ from the one [`crate::chunk_slice`] makes on the whole input.
    fn fill(&mut self) -> io::Result<()> {
        let max = self.params.max as usize;
        let held = self.window.len() - self.start;
        if self.eof || held >= max {
            return Ok(());
        }
        let want = max - held;
        if self.window.capacity() == 0 {
            // Most files are small: start small and let the read grow the window as the input goes on.
            self.window.reserve_exact(want.min(FIRST_WINDOW));
        } else if self.window.capacity() - self.window.len() < want {
            // Out of room at the tail: move the (fewer than `max`) unconsumed bytes to the front.
            self.window.drain(..self.start);
            self.start = 0;
            self.window.reserve_exact((2 * max).saturating_sub(self.window.len()).max(want));
        }
        let got = (&mut self.reader).take(want as u64).read_to_end(&mut self.window)?;
        if got < want {
            self.eof = true;
        }
        Ok(())
    }

    fn next_chunk(&mut self) -> Result<Option<Chunk>, ChunkerError> {
        self.fill()?;
        let held = self.window.len() - self.start;
        if held == 0 {
            return Ok(None);
        }
        let p = self.params;
        let cdc = FastCDC::with_level_and_seed(&self.window[self.start..], p.min, p.avg, p.max, LEVEL, self.seed);
        let (_, len) = cdc.cut(0, held);
        let len = len.clamp(1, held);
        let data = self.window[self.start..self.start + len].to_vec();
        self.start += len;
        let chunk = Chunk { offset: self.offset, data, last: self.eof && self.start == self.window.len() };
        self.offset += len as u64;
        Ok(Some(chunk))
    }
}

impl<R: Read> Iterator for ChunkStream<R> {
    type Item = Result<Chunk, ChunkerError>;

    fn next(&mut self) -> Option<Self::Item> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Done => None,
            State::Invalid(e) => Some(Err(e)),
            State::Running => match self.next_chunk() {
                Ok(Some(c)) => {
                    self.state = State::Running;
                    Some(Ok(c))
                }
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            },
        }
    }
}

impl<R: Read> fmt::Debug for ChunkStream<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Running => "running",
            State::Invalid(_) => "invalid",
            State::Done => "done",
        };
        f.debug_struct("ChunkStream").field("params", &self.params).field("state", &state).finish_non_exhaustive()
    }
}
