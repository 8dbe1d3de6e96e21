//! Content-defined chunking (CDC) for CloudSync.
//!
//! Files are split at boundaries chosen by the *content* (FastCDC 2020 gear
//! hash) rather than at fixed offsets, so inserting or deleting bytes only
//! changes the chunks around the edit: every later boundary re-synchronises
//! and those chunks deduplicate against what the server already has. That
//! is what makes syncing a small edit to a large file cheap.
//!
//! Two boundary modes exist:
//! * [`Boundaries::Public`] uses FastCDC's published gear table. Anyone can
//!   recompute boundaries, which is fine while the server sees plaintext.
//! * [`Boundaries::Keyed`] mixes a secret seed into the gear table, so chunk
//!   lengths observed by an untrusted server are not directly predictable
//!   from public constants (groundwork for E2EE; see restic#5291 on CDC
//!   fingerprinting). Caveat: fastcdc's seeding XORs one 64-bit value into
//!   the public table, and only the seed bits at or below the highest mask
//!   bit (bit 47) influence boundaries, so this is obfuscation with at most
//!   48 effective key bits and a simple algebraic structure, not a
//!   PRF-strength keyed chunker.
//!
//! [`chunk_reader`] streams any [`std::io::Read`] with bounded memory;
//! [`chunk_slice`] computes the identical boundaries for in-memory data.
//!
//! ```
//! use cloudsync_chunker::{Boundaries, ChunkerParams, chunk_reader, chunk_slice};
//!
//! let data = vec![7u8; 10 * 1024 * 1024];
//! let params = ChunkerParams::DEFAULT;
//! let mut total = 0;
//! for chunk in chunk_reader(&data[..], params, Boundaries::Public) {
//!     let chunk = chunk?;
//!     assert_eq!(chunk.offset, total as u64);
//!     total += chunk.data.len();
//! }
//! assert_eq!(total, data.len());
//! assert_eq!(chunk_slice(&data, params, Boundaries::Public).len(), 3);
//! # Ok::<(), cloudsync_chunker::ChunkerError>(())
//! ```

mod stream;

use std::fmt;

use cloudsync_crypto::SecretKey;
use fastcdc::v2020::{
    AVERAGE_MAX, AVERAGE_MIN, FastCDC, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN, Normalization,
};

pub use stream::{Chunk, ChunkStream, chunk_reader};

/// Hard upper bound on a chunk's size that servers enforce. Parameters with a
/// larger `max` are rejected by [`ChunkerParams::validate`], so a client can
/// never produce a chunk the server will refuse.
pub use cloudsync_types::MAX_CHUNK_SIZE;

/// KDF context for deriving the keyed-boundary seed from a workspace secret.
const SEED_CONTEXT: &str = "cloudsync 2026 chunker-seed v1";

/// FastCDC normalisation level; fixed because it affects every boundary.
pub(crate) const LEVEL: Normalization = Normalization::Level1;

/// Chunk size targets in bytes. Changing them changes all boundaries, and so
/// defeats deduplication against previously uploaded chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkerParams {
    /// Smallest chunk (except the last chunk of a stream).
    pub min: u32,
    /// Target average chunk size (FastCDC rounds it to a power of two).
    pub avg: u32,
    /// Largest chunk; a boundary is forced here.
    pub max: u32,
}

impl ChunkerParams {
    /// 256 KiB / 1 MiB / 4 MiB: few enough chunks for metadata to stay small
    /// on large trees, small enough that edits re-upload little data.
    pub const DEFAULT: Self = Self { min: 256 * 1024, avg: 1024 * 1024, max: 4 * 1024 * 1024 };

    /// Checks the ranges FastCDC 2020 supports (it would panic otherwise),
    /// `min <= avg <= max`, `max <= MAX_CHUNK_SIZE`, and that `min` is even:
    /// FastCDC 2020 scans two bytes per step starting at `min / 2 * 2`, so
    /// an odd `min` can yield chunks of `min - 1` bytes.
    pub fn validate(&self) -> Result<(), ChunkerError> {
        let check = |name: &str, value: u32, lo: u32, hi: u32| {
            if (lo..=hi).contains(&value) {
                Ok(())
            } else {
                Err(ChunkerError::Params(format!("{name} = {value} is outside {lo}..={hi}")))
            }
        };
        check("min", self.min, MINIMUM_MIN, MINIMUM_MAX)?;
        check("avg", self.avg, AVERAGE_MIN, AVERAGE_MAX)?;
        check("max", self.max, MAXIMUM_MIN, MAXIMUM_MAX)?;
        if !(self.min <= self.avg && self.avg <= self.max) {
            return Err(ChunkerError::Params(format!(
                "need min <= avg <= max, got {} / {} / {}",
                self.min, self.avg, self.max
            )));
        }
        if !self.min.is_multiple_of(2) {
            return Err(ChunkerError::Params(format!("min = {} must be even", self.min)));
        }
        if usize::try_from(self.max).map_or(true, |max| max > MAX_CHUNK_SIZE) {
            return Err(ChunkerError::Params(format!(
                "max = {} exceeds the server limit of {MAX_CHUNK_SIZE} bytes",
                self.max
            )));
        }
        Ok(())
    }
}

impl Default for ChunkerParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Boundary selection. `Public` uses fastcdc's standard gear table;
/// `Keyed(seed)` derives fastcdc's seed from a workspace secret so
/// boundaries can't be predicted from public constants (for E2EE later; see
/// restic#5291 on CDC fingerprinting).
///
/// `Keyed(0)` is identical to `Public`, because fastcdc treats a zero seed
/// as "no seed". `Debug` prints `Keyed(***)`: the seed is secret-derived.
#[derive(Clone, Copy)]
pub enum Boundaries {
    /// FastCDC's published gear table.
    Public,
    /// Gear table XORed with this secret seed.
    Keyed(u64),
}

impl Boundaries {
    /// Keyed boundaries for a workspace: the seed is the first 8 bytes
    /// (little endian) of `secret.derive("cloudsync 2026 chunker-seed v1")`.
    pub fn keyed(secret: &SecretKey) -> Self {
        let derived = secret.derive(SEED_CONTEXT);
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&derived.as_bytes()[..8]);
        Boundaries::Keyed(u64::from_le_bytes(seed))
    }

    /// The value handed to fastcdc (0 means unseeded).
    pub(crate) fn seed(self) -> u64 {
        match self {
            Boundaries::Public => 0,
            Boundaries::Keyed(seed) => seed,
        }
    }
}

impl fmt::Debug for Boundaries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Boundaries::Public => f.write_str("Public"),
            Boundaries::Keyed(_) => f.write_str("Keyed(***)"),
        }
    }
}

/// Errors from chunking.
#[derive(Debug, thiserror::Error)]
pub enum ChunkerError {
    /// The underlying reader failed.
    #[error("reading input failed: {0}")]
    Io(#[from] std::io::Error),
    /// [`ChunkerParams::validate`] rejected the parameters.
    #[error("invalid chunker parameters: {0}")]
    Params(String),
}

/// Convenience for in-memory data (tests, small files): returns
/// `(offset, len)` pairs, identical to what [`chunk_reader`] yields for the
/// same bytes. Empty input yields no chunks.
///
/// # Panics
///
/// If `params` fail [`ChunkerParams::validate`]; parameters are normally
/// constants, so this is a programming error. Use [`chunk_reader`] to get
/// the error as a value instead.
pub fn chunk_slice(data: &[u8], params: ChunkerParams, boundaries: Boundaries) -> Vec<(usize, usize)> {
    if let Err(e) = params.validate() {
        panic!("chunk_slice: {e}");
    }
    FastCDC::with_level_and_seed(data, params.min, params.avg, params.max, LEVEL, boundaries.seed())
        .map(|c| (c.offset, c.length))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_params_are_valid() {
        ChunkerParams::DEFAULT.validate().unwrap();
        assert_eq!(ChunkerParams::default(), ChunkerParams::DEFAULT);
    }

    #[test]
    fn invalid_params_are_rejected() {
        let p = ChunkerParams::DEFAULT;
        for bad in [
            ChunkerParams { min: 0, ..p },
            ChunkerParams { min: 2 * 1024 * 1024, ..p },
            ChunkerParams { avg: 100, min: 64, ..p },
            ChunkerParams { max: 512, min: 64, avg: 256 },
            ChunkerParams { min: 4096, avg: 2048, max: 8192 },
            ChunkerParams { min: 64, avg: 8192, max: 4096 },
            ChunkerParams { max: 16 * 1024 * 1024, ..p },
            ChunkerParams { min: 2049, avg: 8192, max: 32768 },
        ] {
            assert!(matches!(bad.validate(), Err(ChunkerError::Params(_))), "{bad:?}");
        }
        let at_cap = ChunkerParams { max: MAX_CHUNK_SIZE as u32, ..p };
        at_cap.validate().unwrap();
    }

    #[test]
    fn debug_hides_the_seed() {
        assert_eq!(format!("{:?}", Boundaries::Keyed(123_456)), "Keyed(***)");
        assert_eq!(format!("{:?}", Boundaries::Public), "Public");
    }

    #[test]
    fn keyed_seed_is_derived_from_secret() {
        let secret = SecretKey::from_bytes([3; 32]);
        let expected = blake3::derive_key(SEED_CONTEXT, &[3; 32]);
        let mut first = [0u8; 8];
        first.copy_from_slice(&expected[..8]);
        assert_eq!(Boundaries::keyed(&secret).seed(), u64::from_le_bytes(first));
        assert_ne!(Boundaries::keyed(&secret).seed(), Boundaries::keyed(&SecretKey::from_bytes([4; 32])).seed());
    }

    #[test]
    #[should_panic(expected = "chunk_slice")]
    fn chunk_slice_panics_on_invalid_params() {
        let bad = ChunkerParams { min: 1, avg: 1, max: 1 };
        let _ = chunk_slice(b"abc", bad, Boundaries::Public);
    }
}
