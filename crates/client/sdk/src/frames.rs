//! The chunk upload body: frames of `32 raw id bytes | u32 big-endian length | payload`, concatenated. A
//! binary framing (rather than JSON or multipart) lets the server check each chunk's id and size before it
//! reads the payload, and lets the client stream payloads it already holds as `Bytes` without copying them.

use std::convert::Infallible;

use bytes::Bytes;
use cloudsync_types::{ChunkId, MAX_CHUNK_SIZE};
use futures_util::Stream;

use crate::{Error, ErrorKind};

/// Length of a frame header: the chunk id and the payload length.
pub const FRAME_HEADER_LEN: usize = 32 + 4;

/// The header that precedes a chunk's payload in an upload body.
pub fn frame_header(id: &ChunkId, len: u32) -> [u8; FRAME_HEADER_LEN] {
    let mut out = [0u8; FRAME_HEADER_LEN];
    out[..32].copy_from_slice(&id.0);
    out[32..].copy_from_slice(&len.to_be_bytes());
    out
}

/// The upload body as a stream of header and payload pieces, and its total length.
///
/// # Errors
/// [`ErrorKind::TooLarge`] when a payload exceeds [`MAX_CHUNK_SIZE`].
pub(crate) fn upload_body(
    frames: Vec<(ChunkId, Bytes)>,
) -> Result<(u64, impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static), Error> {
    let mut total: u64 = 0;
    let mut pieces = Vec::with_capacity(frames.len() * 2);
    for (id, payload) in frames {
        let len = u32::try_from(payload.len()).ok().filter(|&l| l as usize <= MAX_CHUNK_SIZE).ok_or_else(|| {
            Error::new(
                ErrorKind::TooLarge,
                format!("chunk {id} is {} bytes, more than the {MAX_CHUNK_SIZE} a chunk may have", payload.len()),
            )
        })?;
        total += (FRAME_HEADER_LEN + payload.len()) as u64;
        pieces.push(Ok(Bytes::copy_from_slice(&frame_header(&id, len))));
        pieces.push(Ok(payload));
    }
    Ok((total, futures_util::stream::iter(pieces)))
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    #[test]
    fn header_is_id_then_big_endian_length() {
        let id = ChunkId(std::array::from_fn(|i| i as u8));
        let h = frame_header(&id, 0x0102_0304);
        assert_eq!(&h[..32], &id.0);
        assert_eq!(&h[32..], &[1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn body_is_the_concatenation_of_frames() {
        let a = (ChunkId([0xaa; 32]), Bytes::from_static(b"hello"));
        let b = (ChunkId([0xbb; 32]), Bytes::new());
        let (len, stream) = upload_body(vec![a.clone(), b.clone()]).expect("body");
        let parts: Vec<Bytes> = stream.map(|p| p.unwrap_or_else(|never| match never {})).collect().await;
        let body: Vec<u8> = parts.concat();
        let mut want = Vec::new();
        want.extend_from_slice(&[0xaa; 32]);
        want.extend_from_slice(&5u32.to_be_bytes());
        want.extend_from_slice(b"hello");
        want.extend_from_slice(&[0xbb; 32]);
        want.extend_from_slice(&0u32.to_be_bytes());
        assert_eq!(body, want);
        assert_eq!(len, want.len() as u64);
        // The payload is passed through, not copied.
        assert_eq!(parts[1].as_ptr(), a.1.as_ptr());
    }

    #[test]
    fn refuses_oversized_chunks() {
        let big = Bytes::from(vec![0u8; MAX_CHUNK_SIZE + 1]);
        let e = upload_body(vec![(ChunkId([1; 32]), big)]).err().map(|e| e.kind());
        assert_eq!(e, Some(ErrorKind::TooLarge));
    }
}
