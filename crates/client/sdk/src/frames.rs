//! Chunk frames (the format itself is [`cloudsync_types::frame`], shared with the server): the upload body,
//! streamed from payloads the caller already holds, and [`ChunkStream`], which parses a fetch answer as it
//! arrives.

use std::collections::VecDeque;
use std::convert::Infallible;

use bytes::{Buf, Bytes, BytesMut};
use cloudsync_types::frame::{FRAME_HEADER_LEN, check_len, frame_header, parse_frame_header};
use cloudsync_types::{ChunkId, MAX_CHUNK_SIZE};
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};

use crate::{Error, ErrorKind};

/// Payloads at least this large are sent as they are, without a copy.
const PASS_THROUGH: usize = 16 * 1024;
/// Smaller payloads are copied, with the frame headers, into pieces of about this size.
const PIECE: usize = 64 * 1024;

/// The upload body as a stream of pieces, and its total length. Large payloads are passed through as they
/// are; frame headers and small payloads are packed together, because each piece travels as at least one
/// HTTP/2 DATA frame, and thousands of tiny frames (a tree of small files) cost overhead on both sides and
/// look like a flood to the server's HTTP/2 stack, which then closes the connection (`ENHANCE_YOUR_CALM`).
///
/// # Errors
/// [`ErrorKind::TooLarge`] when a payload is empty or exceeds the chunk size limit.
pub(crate) fn upload_body(
    frames: Vec<(ChunkId, Bytes)>,
) -> Result<(u64, impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static), Error> {
    let mut total: u64 = 0;
    let mut pieces = Vec::new();
    let mut packed = BytesMut::new();
    for (id, payload) in frames {
        let len = check_len(payload.len()).map_err(|e| Error::new(ErrorKind::TooLarge, format!("chunk {id}: {e}")))?;
        total += (FRAME_HEADER_LEN + payload.len()) as u64;
        packed.extend_from_slice(&frame_header(&id, len));
        if payload.len() >= PASS_THROUGH {
            pieces.push(Ok(packed.split().freeze()));
            pieces.push(Ok(payload));
        } else {
            packed.extend_from_slice(&payload);
            if packed.len() >= PIECE {
                pieces.push(Ok(packed.split().freeze()));
            }
        }
    }
    if !packed.is_empty() {
        pieces.push(Ok(packed.freeze()));
    }
    Ok((total, futures_util::stream::iter(pieces)))
}

/// The chunks of a fetch (`Files::fetch_chunks`), read one at a time as the answer streams in: memory holds
/// one chunk plus one network read. Each frame is checked against the id requested at its place and against
/// the size limit; the answer must hold exactly the requested frames. Whether a chunk's content matches its
/// (keyed) id is for the caller to check: only the caller holds the workspace's chunk-id key.
pub struct ChunkStream {
    body: BoxStream<'static, Result<Bytes, Error>>,
    expected: VecDeque<ChunkId>,
    asked: usize,
    buf: BytesMut,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Reading,
    Finished,
    Failed,
}

impl std::fmt::Debug for ChunkStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkStream")
            .field("asked", &self.asked)
            .field("remaining", &self.expected.len())
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl ChunkStream {
    /// Parses `body` as the frames of `ids`, in order.
    pub(crate) fn new(ids: Vec<ChunkId>, body: BoxStream<'static, Result<Bytes, Error>>) -> Self {
        Self { asked: ids.len(), expected: ids.into(), body, buf: BytesMut::new(), state: State::Reading }
    }

    /// How many chunks are still to come.
    pub fn remaining(&self) -> usize {
        self.expected.len()
    }

    /// The next chunk, in the order requested, or `None` once every requested chunk was read and the answer
    /// ended.
    ///
    /// # Errors
    /// [`ErrorKind::Decode`] when the server answered out of order, sent a malformed frame or more than was
    /// asked; [`ErrorKind::TooLarge`] for a frame over [`MAX_CHUNK_SIZE`]; [`ErrorKind::Network`] when the
    /// answer ends early or the connection breaks. After an error the stream stays failed.
    pub async fn next(&mut self) -> Result<Option<(ChunkId, Bytes)>, Error> {
        match self.state {
            State::Finished => return Ok(None),
            State::Failed => {
                return Err(Error::new(ErrorKind::Decode, "this chunk fetch failed earlier; fetch the chunks again"));
            }
            State::Reading => {}
        }
        let got = self.advance().await;
        match &got {
            Ok(None) => self.state = State::Finished,
            Err(_) => self.state = State::Failed,
            Ok(Some(_)) => {}
        }
        got
    }

    async fn advance(&mut self) -> Result<Option<(ChunkId, Bytes)>, Error> {
        loop {
            let Some(&want) = self.expected.front() else {
                // Every frame is in: the answer must end here.
                if !self.buf.is_empty() {
                    return Err(self.extra());
                }
                return match self.body.next().await.transpose()? {
                    Some(piece) if !piece.is_empty() => Err(self.extra()),
                    Some(_) => continue,
                    None => Ok(None),
                };
            };
            if let Some(header) = parse_frame_header(&self.buf) {
                let (id, len) = header.map_err(|e| self.bad_length(e))?;
                if id != want {
                    let n = self.asked - self.expected.len() + 1;
                    return Err(Error::new(
                        ErrorKind::Decode,
                        format!(
                            "the server answered out of order: chunk {n} of the fetch should be {want}, \
                             but it sent {id}"
                        ),
                    ));
                }
                if self.buf.len() >= FRAME_HEADER_LEN + len {
                    self.buf.advance(FRAME_HEADER_LEN);
                    let data = self.buf.split_to(len).freeze();
                    self.expected.pop_front();
                    return Ok(Some((id, data)));
                }
                self.buf.reserve(FRAME_HEADER_LEN + len - self.buf.len());
            }
            match self.body.next().await.transpose()? {
                Some(piece) => self.buf.extend_from_slice(&piece),
                None => {
                    return Err(Error::new(
                        ErrorKind::Network,
                        format!(
                            "the server's answer ended after {} of {} chunks; fetch the rest again",
                            self.asked - self.expected.len(),
                            self.asked
                        ),
                    ));
                }
            }
        }
    }

    fn extra(&self) -> Error {
        Error::new(
            ErrorKind::Decode,
            format!(
                "the server sent more than the {} chunks asked for; the server may run another version",
                self.asked
            ),
        )
    }

    fn bad_length(&self, why: String) -> Error {
        let len = self.buf.get(32..FRAME_HEADER_LEN).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        let kind = if len as usize > MAX_CHUNK_SIZE { ErrorKind::TooLarge } else { ErrorKind::Decode };
        Error::new(kind, format!("the server sent a malformed chunk frame: {why}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn body_is_the_concatenation_of_frames() {
        let a = (ChunkId([0xaa; 32]), Bytes::from_static(b"hello"));
        let b = (ChunkId([0xbb; 32]), Bytes::from(vec![7u8; PASS_THROUGH]));
        let c = (ChunkId([0xcc; 32]), Bytes::from_static(b"!"));
        let (len, stream) = upload_body(vec![a.clone(), b.clone(), c.clone()]).expect("body");
        let parts: Vec<Bytes> = stream.map(|p| p.unwrap_or_else(|never| match never {})).collect().await;
        let body: Vec<u8> = parts.concat();
        let mut want = Vec::new();
        for (id, payload) in [&a, &b, &c] {
            want.extend_from_slice(&id.0);
            want.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            want.extend_from_slice(payload);
        }
        assert_eq!(body, want);
        assert_eq!(len, want.len() as u64);
        // A large payload is passed through, not copied; small ones travel packed with the headers.
        assert_eq!(parts.len(), 3, "{:?}", parts.iter().map(Bytes::len).collect::<Vec<_>>());
        assert_eq!(parts[1].as_ptr(), b.1.as_ptr());
    }

    #[tokio::test]
    async fn many_small_frames_travel_in_few_pieces() {
        let frames: Vec<(ChunkId, Bytes)> =
            (0..5000u32).map(|i| (ChunkId([i as u8; 32]), Bytes::from(format!("small file {i}")))).collect();
        let (len, stream) = upload_body(frames).expect("body");
        let parts: Vec<Bytes> = stream.map(|p| p.unwrap_or_else(|never| match never {})).collect().await;
        assert!(parts.len() < 10, "{} pieces", parts.len());
        assert!(parts[..parts.len() - 1].iter().all(|p| p.len() >= PIECE));
        assert_eq!(parts.iter().map(Bytes::len).sum::<usize>() as u64, len);
    }

    #[test]
    fn refuses_oversized_chunks() {
        let big = Bytes::from(vec![0u8; cloudsync_types::MAX_CHUNK_SIZE + 1]);
        let e = upload_body(vec![(ChunkId([1; 32]), big)]).err().map(|e| e.kind());
        assert_eq!(e, Some(ErrorKind::TooLarge));
        let empty = upload_body(vec![(ChunkId([1; 32]), Bytes::new())]).err().map(|e| e.kind());
        assert_eq!(empty, Some(ErrorKind::TooLarge), "the server refuses empty chunks, so the client does too");
    }

    fn frames(items: &[(ChunkId, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (id, data) in items {
            out.extend_from_slice(&frame_header(id, data.len() as u32));
            out.extend_from_slice(data);
        }
        out
    }

    /// A stream over `body` cut into pieces of `piece` bytes, expecting `ids`.
    fn stream_of(ids: &[ChunkId], body: Vec<u8>, piece: usize) -> ChunkStream {
        let pieces: Vec<Result<Bytes, Error>> = body.chunks(piece).map(|p| Ok(Bytes::copy_from_slice(p))).collect();
        ChunkStream::new(ids.to_vec(), futures_util::stream::iter(pieces).boxed())
    }

    async fn read_all(s: &mut ChunkStream) -> Result<Vec<(ChunkId, Bytes)>, Error> {
        let mut out = Vec::new();
        while let Some(c) = s.next().await? {
            out.push(c);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn parses_frames_split_anywhere_in_order_with_repeats() {
        let (a, b) = (ChunkId([1; 32]), ChunkId([2; 32]));
        let body = frames(&[(a, b"alpha"), (b, b"be"), (a, b"alpha")]);
        for piece in [1, 3, 36, 37, 1000] {
            let mut s = stream_of(&[a, b, a], body.clone(), piece);
            let got = read_all(&mut s).await.expect("frames");
            assert_eq!(
                got,
                vec![(a, Bytes::from_static(b"alpha")), (b, Bytes::from_static(b"be")), (a, "alpha".into())]
            );
            assert_eq!(s.next().await.expect("finished").map(|c| c.0), None, "stays finished");
        }
        let mut empty = stream_of(&[], Vec::new(), 1);
        assert!(empty.next().await.expect("empty").is_none());
    }

    #[tokio::test]
    async fn refuses_out_of_order_short_extra_and_oversized_answers() {
        let (a, b) = (ChunkId([1; 32]), ChunkId([2; 32]));
        let kind_of = |r: Result<Vec<(ChunkId, Bytes)>, Error>| r.err().map(|e| (e.kind(), e.message().to_owned()));

        let mut s = stream_of(&[a, b], frames(&[(b, b"x"), (a, b"y")]), 7);
        let (kind, message) = kind_of(read_all(&mut s).await).expect("out of order");
        assert_eq!(kind, ErrorKind::Decode);
        assert!(message.contains("out of order"), "{message}");
        assert!(message.ends_with(&format!("but it sent {b}")) && !message.contains("  "), "{message}");
        assert_eq!(s.next().await.err().map(|e| e.kind()), Some(ErrorKind::Decode), "stays failed");

        let full = frames(&[(a, b"abc"), (b, b"def")]);
        let mut s = stream_of(&[a, b], full[..full.len() - 1].to_vec(), 5);
        assert_eq!(kind_of(read_all(&mut s).await).map(|k| k.0), Some(ErrorKind::Network), "truncated payload");
        let mut s = stream_of(&[a, b], frames(&[(a, b"abc")]), 5);
        assert_eq!(kind_of(read_all(&mut s).await).map(|k| k.0), Some(ErrorKind::Network), "a frame short");

        let mut extra = full.clone();
        extra.push(0);
        let mut s = stream_of(&[a, b], extra, 4);
        assert_eq!(kind_of(read_all(&mut s).await).map(|k| k.0), Some(ErrorKind::Decode), "extra byte");
        let mut s = stream_of(&[a], full.clone(), 1000);
        assert_eq!(kind_of(read_all(&mut s).await).map(|k| k.0), Some(ErrorKind::Decode), "extra frame");

        let mut big = frame_header(&a, 0).to_vec();
        big[32..].copy_from_slice(&(MAX_CHUNK_SIZE as u32 + 1).to_be_bytes());
        let mut s = stream_of(&[a], big, 1000);
        assert_eq!(kind_of(read_all(&mut s).await).map(|k| k.0), Some(ErrorKind::TooLarge), "oversized frame");
        let mut s = stream_of(&[a], frame_header(&a, 0).to_vec(), 1000);
        assert_eq!(kind_of(read_all(&mut s).await).map(|k| k.0), Some(ErrorKind::Decode), "empty frame");
    }
}
