//! Key wrapping: protecting data keys under a key-encryption key (KEK).
//!
//! Wrapping reuses the [`crate::aead`] envelope with a fixed, domain-separated
//! AAD prefix so a wrapped key can never be confused with (or substituted by)
//! an ordinary sealed message, and with a caller-supplied `context` (for
//! example a workspace or device id) so a wrapped key cannot be moved to
//! another owner.

use zeroize::Zeroizing;

use crate::{CryptoError, SecretKey, aead};

/// Domain separation prefix; the NUL byte terminates it unambiguously.
const WRAP_AAD_PREFIX: &[u8] = b"cloudsync-wrap-v1\0";

fn wrap_aad(context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(WRAP_AAD_PREFIX.len() + context.len());
    aad.extend_from_slice(WRAP_AAD_PREFIX);
    aad.extend_from_slice(context);
    aad
}

/// Encrypts `key` under `kek`, bound to `context`.
///
/// # Panics
///
/// Only if the OS random number generator fails.
pub fn wrap_key(kek: &SecretKey, context: &[u8], key: &SecretKey) -> Vec<u8> {
    aead::seal(kek, &wrap_aad(context), key.as_bytes())
}

/// Reverses [`wrap_key`]; fails if `kek`, `context` or the data differ.
pub fn unwrap_key(kek: &SecretKey, context: &[u8], wrapped: &[u8]) -> Result<SecretKey, CryptoError> {
    let plain = Zeroizing::new(aead::open(kek, &wrap_aad(context), wrapped)?);
    SecretKey::from_slice(&plain)
}
