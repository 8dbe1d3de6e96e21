//! 256-bit secret keys that wipe themselves and never leak through `Debug`.
//!
//! A dedicated type (instead of `[u8; 32]`) makes it impossible to pass a
//! hash or a nonce where a key is expected, guarantees the bytes are zeroed
//! when the last copy is dropped, and keeps keys out of logs.

use std::fmt;

use subtle::ConstantTimeEq as _;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::CryptoError;
use crate::random::random_bytes;

/// Length in bytes of every symmetric key in CloudSync.
pub const KEY_LEN: usize = 32;

/// A 256-bit symmetric secret, zeroed on drop.
///
/// `Debug` prints `SecretKey(***)`; equality is constant time.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; KEY_LEN]);

impl SecretKey {
    /// Generates a new key from the OS CSPRNG.
    ///
    /// # Panics
    ///
    /// Only if the OS random number generator fails; see
    /// [`crate::random_bytes`].
    pub fn generate() -> Self {
        Self(random_bytes::<KEY_LEN>())
    }

    /// Wraps existing key bytes. The caller should wipe its own copy.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Copies key bytes from a slice, which must be exactly [`KEY_LEN`] long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != KEY_LEN {
            return Err(CryptoError::InvalidKey("a key must be exactly 32 bytes"));
        }
        let mut key = Self([0u8; KEY_LEN]);
        key.0.copy_from_slice(bytes);
        Ok(key)
    }

    /// Borrows the raw key bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Lower-case hex encoding, wrapped so the string is wiped when dropped.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0))
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Result<Self, CryptoError> {
        if s.len() != KEY_LEN * 2 {
            return Err(CryptoError::InvalidKey("a hex key must be exactly 64 hex digits"));
        }
        let mut key = Self([0u8; KEY_LEN]);
        hex::decode_to_slice(s, &mut key.0)
            .map_err(|_| CryptoError::InvalidKey("a hex key must contain only hex digits"))?;
        Ok(key)
    }

    /// Derives an independent subkey for `context` with BLAKE3's KDF mode.
    ///
    /// `context` must be a hard-coded, globally unique, application-specific
    /// string such as `"cloudsync 2026 chunker-seed v1"`; never put secrets
    /// or per-user data in it.
    pub fn derive(&self, context: &str) -> SecretKey {
        SecretKey(blake3::derive_key(context, &self.0))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for SecretKey {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_slice_rejects_wrong_lengths() {
        assert!(SecretKey::from_slice(&[0u8; 31]).is_err());
        assert!(SecretKey::from_slice(&[0u8; 33]).is_err());
        assert!(SecretKey::from_slice(&[7u8; 32]).is_ok());
    }

    #[test]
    fn hex_round_trip_and_rejections() {
        let key = SecretKey::generate();
        let hex = key.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(SecretKey::from_hex(&hex).unwrap(), key);
        assert_eq!(SecretKey::from_hex(&hex.to_uppercase()).unwrap(), key);
        assert!(SecretKey::from_hex(&hex[..62]).is_err());
        assert!(SecretKey::from_hex(&"zz".repeat(32)).is_err());
        // 64 bytes but multi-byte UTF-8 must not panic.
        assert!(SecretKey::from_hex(&"é".repeat(32)).is_err());
    }

    #[test]
    fn debug_hides_bytes() {
        let key = SecretKey::from_bytes([0xab; 32]);
        let shown = format!("{key:?} {key:#?}");
        assert!(!shown.to_lowercase().contains("ab"), "{shown}");
        assert!(!shown.contains("171"), "{shown}");
        assert_eq!(format!("{key:?}"), "SecretKey(***)");
    }

    #[test]
    fn derive_matches_blake3_and_separates_contexts() {
        let key = SecretKey::from_bytes([1; 32]);
        let a = key.derive("cloudsync test a");
        let b = key.derive("cloudsync test b");
        assert_ne!(a, b);
        assert_eq!(a.as_bytes(), &blake3::derive_key("cloudsync test a", &[1; 32]));
    }

    #[test]
    fn generate_is_random() {
        assert_ne!(SecretKey::generate(), SecretKey::generate());
    }
}
