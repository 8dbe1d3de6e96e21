//! The chunk upload body: frames of `32 raw id bytes | u32 big-endian length | payload`, concatenated. A
//! binary framing (rather than JSON or multipart) lets the server check each chunk's id and size before it
//! reads the payload, and lets the client stream payloads it already holds without copying them. Client and
//! server both use this module, so the format and its limits are defined once.

use crate::{ChunkId, MAX_CHUNK_SIZE};

/// Length of a frame header: the chunk id and the payload length.
pub const FRAME_HEADER_LEN: usize = 32 + 4;

/// The header that precedes a chunk's payload.
pub fn frame_header(id: &ChunkId, len: u32) -> [u8; FRAME_HEADER_LEN] {
    let mut out = [0u8; FRAME_HEADER_LEN];
    out[..32].copy_from_slice(&id.0);
    out[32..].copy_from_slice(&len.to_be_bytes());
    out
}

/// Checks a payload length: 1 to [`MAX_CHUNK_SIZE`] bytes (an empty file has no chunks, so an empty chunk is
/// never needed).
///
/// # Errors
/// A message saying what is allowed.
pub fn check_len(len: usize) -> Result<u32, String> {
    u32::try_from(len)
        .ok()
        .filter(|&l| l != 0 && l as usize <= MAX_CHUNK_SIZE)
        .ok_or_else(|| format!("a chunk must be 1 to {MAX_CHUNK_SIZE} bytes; got {len}"))
}

/// Reads a frame header from the start of `buf`: `None` when fewer than [`FRAME_HEADER_LEN`] bytes are there.
///
/// # Errors
/// A payload length outside 1 to [`MAX_CHUNK_SIZE`].
pub fn parse_frame_header(buf: &[u8]) -> Option<Result<(ChunkId, usize), String>> {
    let header: &[u8; FRAME_HEADER_LEN] = buf.get(..FRAME_HEADER_LEN)?.try_into().ok()?;
    let mut id = [0u8; 32];
    id.copy_from_slice(&header[..32]);
    let len = u32::from_be_bytes([header[32], header[33], header[34], header[35]]) as usize;
    Some(check_len(len).map(|l| (ChunkId(id), l as usize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_lengths_are_checked() {
        let id = ChunkId(std::array::from_fn(|i| i as u8));
        let h = frame_header(&id, 0x0102_0304);
        assert_eq!(&h[..32], &id.0);
        assert_eq!(&h[32..], &[1, 2, 3, 4]);
        assert_eq!(parse_frame_header(&h[..35]), None);
        assert_eq!(parse_frame_header(&frame_header(&id, 7)), Some(Ok((id, 7))));
        assert!(matches!(parse_frame_header(&frame_header(&id, 0)), Some(Err(_))));
        assert!(matches!(parse_frame_header(&frame_header(&id, MAX_CHUNK_SIZE as u32 + 1)), Some(Err(_))));
    }
}
