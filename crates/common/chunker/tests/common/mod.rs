//! Shared helpers: deterministic pseudo-random data and readers with
//! awkward behaviour, so tests are reproducible without large fixtures.

#![allow(dead_code)]

use std::io::{self, Read};

/// xorshift64* generator; good enough to look random to a gear hash.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// `len` pseudo-random bytes derived from `seed`.
pub fn random_data(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

/// Wraps a reader and returns at most a pseudo-random number of bytes per
/// `read`, occasionally failing with `Interrupted`, like a slow pipe.
pub struct ChoppyReader<R> {
    inner: R,
    rng: Rng,
    max_read: usize,
}

impl<R> ChoppyReader<R> {
    pub fn new(inner: R, seed: u64, max_read: usize) -> Self {
        Self { inner, rng: Rng::new(seed), max_read: max_read.max(1) }
    }
}

impl<R: Read> Read for ChoppyReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = self.rng.next_u64();
        if r.is_multiple_of(7) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = (1 + (r >> 8) as usize % self.max_read).min(buf.len());
        self.inner.read(&mut buf[..n])
    }
}
