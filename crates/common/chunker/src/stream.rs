//! Streaming chunker over any reader, with bounded memory.
//!
//! Sync must handle files far larger than RAM, so chunks are produced one at
//! a time from a window of at most `max` bytes (plus the chunk being handed
//! out). Boundaries are exactly those of [`crate::chunk_slice`] because both
//! run the same FastCDC 2020 cut function with the same gear table.

use std::fmt;
use std::io::{self, Read};

use fastcdc::v2020::{self, StreamCDC};

use crate::{Boundaries, ChunkerError, ChunkerParams, LEVEL};

/// One chunk of a stream: its position in the input and its bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Byte offset of the chunk's first byte in the input.
    pub offset: u64,
    /// The chunk's contents.
    pub data: Vec<u8>,
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

enum State<R: Read> {
    /// Chunking in progress.
    Running(Box<StreamCDC<RetryInterrupted<R>>>),
    /// Parameters were invalid: report once, then end.
    Invalid(ChunkerError),
    /// Input exhausted or an error was reported; the stream is fused.
    Done,
}

/// Streaming chunker over any [`Read`] with bounded memory (about `max`
/// bytes buffered). Yields `Result<Chunk, ChunkerError>`; empty input yields
/// no chunks. After the first error the stream ends.
pub struct ChunkStream<R: Read> {
    state: State<R>,
    params: ChunkerParams,
}

/// Starts chunking `reader`. Invalid `params` are reported as the first (and
/// only) item of the stream.
pub fn chunk_reader<R: Read>(reader: R, params: ChunkerParams, boundaries: Boundaries) -> ChunkStream<R> {
    let state = match params.validate() {
        Ok(()) => State::Running(Box::new(StreamCDC::with_level_and_seed(
            RetryInterrupted(reader),
            params.min,
            params.avg,
            params.max,
            LEVEL,
            boundaries.seed(),
        ))),
        Err(e) => State::Invalid(e),
    };
    ChunkStream { state, params }
}

impl<R: Read> Iterator for ChunkStream<R> {
    type Item = Result<Chunk, ChunkerError>;

    fn next(&mut self) -> Option<Self::Item> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Done => None,
            State::Invalid(e) => Some(Err(e)),
            State::Running(mut cdc) => match cdc.next()? {
                Ok(c) => {
                    self.state = State::Running(cdc);
                    Some(Ok(Chunk { offset: c.offset, data: c.data }))
                }
                Err(v2020::Error::IoError(e)) => Some(Err(ChunkerError::Io(e))),
                Err(other) => Some(Err(ChunkerError::Io(io::Error::from(other)))),
            },
        }
    }
}

impl<R: Read> fmt::Debug for ChunkStream<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Running(_) => "running",
            State::Invalid(_) => "invalid",
            State::Done => "done",
        };
        f.debug_struct("ChunkStream").field("params", &self.params).field("state", &state).finish_non_exhaustive()
    }
}
