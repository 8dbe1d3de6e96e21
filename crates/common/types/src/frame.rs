//! The chunk upload body: frames of `32 raw id bytes | u32 big-endian length | payload`, concatenated. A
//! binary framing (rather than JSON or multipart) lets the server check each chunk's id and size before it
//! reads the payload, and lets the client stream payloads it already holds without copying them. Client and
//! server both use this module, so the format and its limits are defined once.

use crate::api::MAX_DELTA_BASES;
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

/// The payload of a delta frame (`chunks/deltas`): the frame's id is the chunk to rebuild; the payload is
/// `u8 count | count × 32-byte base chunk ids | librsync delta`, the delta applying to the bases concatenated
/// in order.
///
/// # Errors
/// No bases, or more than [`MAX_DELTA_BASES`].
pub fn delta_payload(bases: &[ChunkId], delta: &[u8]) -> Result<Vec<u8>, String> {
    let count = u8::try_from(bases.len())
        .ok()
        .filter(|&n| n != 0 && usize::from(n) <= MAX_DELTA_BASES)
        .ok_or_else(|| format!("a delta names 1 to {MAX_DELTA_BASES} base chunks; got {}", bases.len()))?;
    let mut out = Vec::with_capacity(1 + bases.len() * 32 + delta.len());
    out.push(count);
    for b in bases {
        out.extend_from_slice(&b.0);
    }
    out.extend_from_slice(delta);
    Ok(out)
}

/// Splits a delta frame's payload into its base chunk ids and the delta.
///
/// # Errors
/// A base count outside 1 to [`MAX_DELTA_BASES`], or a payload too short for the ids it announces.
pub fn parse_delta_payload(payload: &[u8]) -> Result<(Vec<ChunkId>, &[u8]), String> {
    let (&count, rest) = payload.split_first().ok_or("an empty delta frame")?;
    let count = usize::from(count);
    if count == 0 || count > MAX_DELTA_BASES {
        return Err(format!("a delta names 1 to {MAX_DELTA_BASES} base chunks; got {count}"));
    }
    if rest.len() < count * 32 {
        return Err("a delta frame ends inside its list of base chunks".into());
    }
    let (ids, delta) = rest.split_at(count * 32);
    let bases = ids
        .chunks_exact(32)
        .map(|c| {
            let mut id = [0u8; 32];
            id.copy_from_slice(c);
            ChunkId(id)
        })
        .collect();
    Ok((bases, delta))
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

    #[test]
    fn delta_payloads_round_trip_and_base_counts_are_checked() {
        let ids: Vec<ChunkId> = (0..5u8).map(|n| ChunkId([n; 32])).collect();
        let p = delta_payload(&ids[..2], b"delta").expect("two bases");
        assert_eq!(p.len(), 1 + 64 + 5);
        let (bases, delta) = parse_delta_payload(&p).expect("parse");
        assert_eq!((bases.as_slice(), delta), (&ids[..2], &b"delta"[..]));
        assert!(delta_payload(&[], b"d").is_err());
        assert!(delta_payload(&ids, b"d").is_err());
        assert!(parse_delta_payload(&[]).is_err());
        assert!(parse_delta_payload(&[0]).is_err());
        assert!(parse_delta_payload(&[5; 200]).is_err());
        assert!(parse_delta_payload(&p[..40]).is_err(), "cut inside the ids");
    }
}
