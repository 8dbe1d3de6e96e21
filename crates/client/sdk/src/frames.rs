//! The chunk upload body, streamed from payloads the caller already holds (the format itself is
//! [`cloudsync_types::frame`], shared with the server).

use std::convert::Infallible;

use bytes::Bytes;
use cloudsync_types::ChunkId;
use cloudsync_types::frame::{FRAME_HEADER_LEN, check_len, frame_header};
use futures_util::Stream;

use crate::{Error, ErrorKind};

/// The upload body as a stream of header and payload pieces, and its total length.
///
/// # Errors
/// [`ErrorKind::TooLarge`] when a payload is empty or exceeds the chunk size limit.
pub(crate) fn upload_body(
    frames: Vec<(ChunkId, Bytes)>,
) -> Result<(u64, impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static), Error> {
    let mut total: u64 = 0;
    let mut pieces = Vec::with_capacity(frames.len() * 2);
    for (id, payload) in frames {
        let len = check_len(payload.len()).map_err(|e| Error::new(ErrorKind::TooLarge, format!("chunk {id}: {e}")))?;
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

    #[tokio::test]
    async fn body_is_the_concatenation_of_frames() {
        let a = (ChunkId([0xaa; 32]), Bytes::from_static(b"hello"));
        let b = (ChunkId([0xbb; 32]), Bytes::from_static(b"!"));
        let (len, stream) = upload_body(vec![a.clone(), b.clone()]).expect("body");
        let parts: Vec<Bytes> = stream.map(|p| p.unwrap_or_else(|never| match never {})).collect().await;
        let body: Vec<u8> = parts.concat();
        let mut want = Vec::new();
        want.extend_from_slice(&[0xaa; 32]);
        want.extend_from_slice(&5u32.to_be_bytes());
        want.extend_from_slice(b"hello");
        want.extend_from_slice(&[0xbb; 32]);
        want.extend_from_slice(&1u32.to_be_bytes());
        want.extend_from_slice(b"!");
        assert_eq!(body, want);
        assert_eq!(len, want.len() as u64);
        // The payload is passed through, not copied.
        assert_eq!(parts[1].as_ptr(), a.1.as_ptr());
    }

    #[test]
    fn refuses_oversized_chunks() {
        let big = Bytes::from(vec![0u8; cloudsync_types::MAX_CHUNK_SIZE + 1]);
        let e = upload_body(vec![(ChunkId([1; 32]), big)]).err().map(|e| e.kind());
        assert_eq!(e, Some(ErrorKind::TooLarge));
        let empty = upload_body(vec![(ChunkId([1; 32]), Bytes::new())]).err().map(|e| e.kind());
        assert_eq!(empty, Some(ErrorKind::TooLarge), "the server refuses empty chunks, so the client does too");
    }
}
