//! Authenticated encryption: AES-256-GCM in a versioned envelope.
//!
//! Envelope layout: `0x01 || nonce (12 bytes) || ciphertext || tag (16)`.
//!
//! Why this shape:
//! * The nonce is drawn fresh from the OS CSPRNG for every message and
//!   travels with the ciphertext, so callers can never reuse a nonce by
//!   mistake (the classic catastrophic GCM failure). With 96-bit random
//!   nonces a single key should seal at most ~2^32 messages; rotate or
//!   derive per-object keys long before that.
//! * The leading version byte lets us move to another construction later
//!   without guessing how old data was sealed.
//! * `aad` binds the ciphertext to its context (object id, purpose, ...), so
//!   an envelope cannot be cut and pasted to another place undetected.
//!
//! AES-GCM is used through `ring`, which selects constant-time, hardware
//! accelerated implementations.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, Tag, UnboundKey};
use zeroize::{Zeroize as _, Zeroizing};

use crate::random::random_bytes;
use crate::{CryptoError, SecretKey};

/// Version byte of the current envelope format.
const VERSION: u8 = 0x01;

/// Header length: version byte plus nonce.
const HEADER_LEN: usize = 1 + NONCE_LEN;

/// AES-GCM authentication tag length.
const TAG_LEN: usize = 16;

/// Bytes an envelope adds to its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

fn aes_key(key: &SecretKey) -> LessSafeKey {
    // AES-256 takes exactly 32 bytes and `SecretKey` always holds 32 bytes,
    // which is the only reason `UnboundKey::new` can fail.
    match UnboundKey::new(&AES_256_GCM, key.as_bytes()) {
        Ok(k) => LessSafeKey::new(k),
        Err(_) => unreachable!("a SecretKey is always a valid AES-256 key"),
    }
}

/// Encrypts and authenticates `plaintext`, binding it to `aad`.
///
/// # Panics
///
/// If the OS random number generator fails, or if `plaintext` exceeds
/// AES-GCM's per-message limit (about 64 GiB).
pub fn seal(key: &SecretKey, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    seal_into(key, aad, plaintext, &mut out);
    out
}

/// Like [`seal`], but appends the envelope to `out`, so buffers can be
/// reused and the plaintext is copied exactly once (into `out`, where it is
/// encrypted in place).
///
/// # Panics
///
/// Same conditions as [`seal`].
pub fn seal_into(key: &SecretKey, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
    seal_written(key, aad, plaintext.len(), out, |o| o.extend_from_slice(plaintext));
}

/// Like [`seal_into`], for a plaintext of `len` bytes that `write` appends to `out`, where it is encrypted in
/// place: the caller need not build it anywhere else first (and wipe it there).
///
/// # Panics
///
/// Same conditions as [`seal`], and when `write` appends other than `len` bytes: what it appended is wiped
/// first, but a `write` past `len` may have moved the buffer and left a copy behind (a caller's bug).
pub fn seal_written(key: &SecretKey, aad: &[u8], len: usize, out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let nonce = random_bytes::<NONCE_LEN>();
    let sealing_key = aes_key(key);
    let start = out.len();
    // Reserve before the plaintext is written so no reallocation can leave an
    // unwiped plaintext copy behind in freed memory.
    out.reserve(OVERHEAD + len);
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    let body = out.len();
    write(out);
    let wipe = |out: &mut Vec<u8>| {
        out[start..].zeroize();
        out.truncate(start);
    };
    if out.len() - body != len {
        wipe(out);
        panic!("the plaintext written is not the length announced");
    }
    match sealing_key.seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut out[body..])
    {
        Ok(tag) => out.extend_from_slice(tag.as_ref()),
        Err(_) => {
            wipe(out);
            panic!("plaintext exceeds the AES-GCM message size limit");
        }
    }
}

/// Verifies and decrypts an envelope produced by [`seal`] with the same
/// `key` and `aad`.
///
/// Returns [`CryptoError::Version`] for an unknown leading version byte and
/// [`CryptoError::Decrypt`] for everything else (tampering, truncation,
/// wrong key, wrong aad), without saying which.
pub fn open(key: &SecretKey, aad: &[u8], envelope: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let Some((&version, rest)) = envelope.split_first() else {
        return Err(CryptoError::Decrypt);
    };
    if version != VERSION {
        return Err(CryptoError::Version(version));
    }
    if envelope.len() < OVERHEAD {
        return Err(CryptoError::Decrypt);
    }
    let (nonce, rest) = rest.split_at(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Decrypt)?;
    let tag = Tag::try_from(tag).map_err(|_| CryptoError::Decrypt)?;

    // On failure ring leaves the buffer in an unspecified state that may hold
    // unauthenticated plaintext, so it is wiped unless we return it.
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    aes_key(key)
        .open_in_place_separate_tag(nonce, Aad::from(aad), tag, &mut buf, 0..)
        .map_err(|_| CryptoError::Decrypt)?;
    Ok(std::mem::take(&mut *buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_as_documented() {
        assert_eq!(AES_256_GCM.tag_len(), TAG_LEN);
        assert_eq!(AES_256_GCM.nonce_len(), NONCE_LEN);
        let key = SecretKey::generate();
        let env = seal(&key, b"ctx", b"hello");
        assert_eq!(env.len(), 5 + OVERHEAD);
        assert_eq!(env[0], VERSION);
        assert_eq!(open(&key, b"ctx", &env).unwrap(), b"hello");
    }

    #[test]
    fn a_plaintext_written_in_place_opens_as_one_sealed_from_a_slice() {
        let key = SecretKey::generate();
        let mut out = b"head".to_vec();
        seal_written(&key, b"ctx", 9, &mut out, |o| {
            o.extend_from_slice(b"abc");
            o.extend_from_slice(b"defghi");
        });
        assert_eq!(&out[..4], b"head");
        assert_eq!(open(&key, b"ctx", &out[4..]).unwrap(), b"abcdefghi");
        let short = std::panic::catch_unwind(|| {
            let mut out = Vec::new();
            seal_written(&key, b"ctx", 9, &mut out, |o| o.extend_from_slice(b"abc"));
        });
        assert!(short.is_err(), "a plaintext of another length than announced is refused");
    }

    #[test]
    fn seal_into_appends_and_keeps_prefix() {
        let key = SecretKey::generate();
        let mut out = b"prefix".to_vec();
        seal_into(&key, b"", b"data", &mut out);
        assert_eq!(&out[..6], b"prefix");
        assert_eq!(open(&key, b"", &out[6..]).unwrap(), b"data");
    }

    #[test]
    fn nonces_are_fresh() {
        let key = SecretKey::generate();
        let a = seal(&key, b"", b"same");
        let b = seal(&key, b"", b"same");
        assert_ne!(a, b);
    }

    #[test]
    fn short_and_unknown_envelopes_are_rejected() {
        let key = SecretKey::generate();
        assert!(matches!(open(&key, b"", &[]), Err(CryptoError::Decrypt)));
        assert!(matches!(open(&key, b"", &[VERSION; OVERHEAD - 1]), Err(CryptoError::Decrypt)));
        let mut env = seal(&key, b"", b"x");
        env[0] = 2;
        assert!(matches!(open(&key, b"", &env), Err(CryptoError::Version(2))));
    }
}
