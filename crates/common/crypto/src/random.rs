//! Secure randomness from the operating system.
//!
//! Everything random in CloudSync (keys, nonces, salts, tokens) goes through
//! here so there is exactly one source to audit: `ring`'s `SystemRandom`,
//! which reads the OS CSPRNG (`getrandom(2)` and friends) with no user-space
//! state that could be forked or rewound.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom as _, SystemRandom};
use zeroize::Zeroize as _;

/// Returns `N` bytes from the operating system's CSPRNG.
///
/// # Panics
///
/// Panics only if the operating system cannot provide randomness. That is a
/// broken platform on which no key, nonce or token could be created safely,
/// so continuing (for example with a predictable fallback) would be worse
/// than aborting the operation.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    if SystemRandom::new().fill(&mut buf).is_err() {
        panic!("the operating system random number generator failed");
    }
    buf
}

/// Returns a fresh 256-bit bearer token encoded as base64url without
/// padding (always 43 characters from `[A-Za-z0-9_-]`).
///
/// Store only [`crate::hash_token`] of the result, never the token itself.
pub fn random_token() -> String {
    let mut bytes = random_bytes::<32>();
    let token = URL_SAFE_NO_PAD.encode(bytes);
    bytes.zeroize();
    token
}
