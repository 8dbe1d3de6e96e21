//! Hashing and comparison helpers.
//!
//! * Bearer tokens are 256-bit random values, so a fast, domain-separated
//!   hash (BLAKE3 in KDF mode) is the right at-rest protection: there is no
//!   low-entropy input to brute force, and a slow password hash would only
//!   make every authenticated request expensive.
//! * `keyed_hash`/`KeyedHasher` are BLAKE3's MAC mode, for integrity tags and
//!   pseudonymous identifiers derived from a secret.
//! * `sha256` exists for interoperability (e.g. formats that mandate it).
//! * `ct_eq` compares secrets without leaking the position of the first
//!   difference through timing.

use std::fmt;

use ring::digest;
use subtle::ConstantTimeEq as _;
use zeroize::Zeroize as _;

use crate::SecretKey;

/// BLAKE3 KDF context for tokens stored at rest. Changing it invalidates
/// every stored token hash.
const TOKEN_CONTEXT: &str = "cloudsync 2026 token-at-rest v1";

/// Hash of a bearer token suitable for storing and looking up in a database.
pub fn hash_token(token: &str) -> [u8; 32] {
    blake3::derive_key(TOKEN_CONTEXT, token.as_bytes())
}

/// Constant-time equality. Returns `false` when the lengths differ (the
/// length itself is not treated as secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// BLAKE3 keyed hash (MAC) of `data` under `key`.
pub fn keyed_hash(key: &SecretKey, data: &[u8]) -> [u8; 32] {
    *blake3::keyed_hash(key.as_bytes(), data).as_bytes()
}

/// Incremental form of [`keyed_hash`] for data that arrives in pieces.
///
/// The internal state depends on the key, so it is wiped on drop.
pub struct KeyedHasher(blake3::Hasher);

impl KeyedHasher {
    /// Starts a keyed hash under `key`.
    pub fn new(key: &SecretKey) -> Self {
        Self(blake3::Hasher::new_keyed(key.as_bytes()))
    }

    /// Feeds more data.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// Returns the hash of everything fed so far; more data may follow.
    pub fn finalize(&self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }
}

impl Drop for KeyedHasher {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for KeyedHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyedHasher(***)")
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
