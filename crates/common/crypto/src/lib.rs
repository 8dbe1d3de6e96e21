//! Cryptographic primitives for CloudSync, in one place so the rest of the
//! code base never touches raw algorithms.
//!
//! Why a dedicated crate: every security decision (which AEAD, how nonces are
//! chosen, how tokens are stored, how passwords are stretched) is made once
//! here and reviewed once, instead of being re-invented by each server or
//! client module. The API is deliberately small and hard to misuse:
//!
//! * [`SecretKey`] owns 256-bit key material, wipes it on drop and never
//!   prints it.
//! * [`aead`] seals data with AES-256-GCM in a self-describing, versioned
//!   envelope with a fresh random nonce per message, so callers never manage
//!   nonces.
//! * [`wrap_key`]/[`unwrap_key`] protect data keys under key-encryption keys
//!   with a domain-separated AAD.
//! * [`password`] hashes user passwords with Argon2id (OWASP parameters).
//! * [`hash_token`], [`keyed_hash`], [`sha256`] and [`ct_eq`] cover the
//!   hashing and comparison needs of the server.
//!
//! Randomness comes exclusively from the operating system via `ring`.
//!
//! ```
//! use cloudsync_crypto::{SecretKey, aead, unwrap_key, wrap_key};
//!
//! let kek = SecretKey::generate();
//! let data_key = SecretKey::generate();
//! let wrapped = wrap_key(&kek, b"workspace 42", &data_key);
//! let envelope = aead::seal(&data_key, b"file 7", b"hello");
//!
//! let key = unwrap_key(&kek, b"workspace 42", &wrapped)?;
//! assert_eq!(aead::open(&key, b"file 7", &envelope)?, b"hello");
//! assert!(aead::open(&key, b"file 8", &envelope).is_err());
//! # Ok::<(), cloudsync_crypto::CryptoError>(())
//! ```

pub mod aead;
pub mod e2ee;
pub mod e2ee_files;
pub mod e2ee_members;
pub mod e2ee_workspace;
mod error;
mod hash;
mod key;
pub mod password;
mod random;
pub mod totp;
mod wrap;

pub use error::CryptoError;
pub use hash::{KeyedHasher, ct_eq, hash_token, keyed_hash, sha256};
pub use key::{KEY_LEN, SecretKey};
pub use random::{random_bytes, random_token};
pub use wrap::{unwrap_key, wrap_key};
