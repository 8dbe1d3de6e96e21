//! The single error type of the crate.
//!
//! Messages are intentionally vague about *why* decryption failed (altered
//! data, truncation or wrong key are indistinguishable by design), so they are
//! safe to log and to show to clients.

/// Errors returned by the cryptographic primitives.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Authentication of an AEAD envelope failed.
    #[error("decryption failed: the data was altered, truncated, or sealed under another key")]
    Decrypt,
    /// Key material had the wrong length or encoding.
    #[error("invalid key material: {0}")]
    InvalidKey(&'static str),
    /// The Argon2 implementation reported an error.
    #[error("password hashing failed: {0}")]
    PasswordHash(String),
    /// The password exceeds [`crate::password::MAX_PASSWORD_BYTES`].
    #[error("the password is longer than {} bytes; use a shorter one", crate::password::MAX_PASSWORD_BYTES)]
    PasswordTooLong,
    /// A signature did not verify.
    #[error("a signature does not verify: the signed data or the key was altered")]
    Signature,
    /// The envelope starts with a version byte this build does not know.
    #[error("unsupported envelope version {0}")]
    Version(u8),
}
