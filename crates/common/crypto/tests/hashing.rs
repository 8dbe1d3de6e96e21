//! Known answers and basic properties of hashing, comparison and randomness.

use std::collections::HashSet;

use cloudsync_crypto::{KeyedHasher, SecretKey, ct_eq, hash_token, keyed_hash, random_bytes, random_token, sha256};
use proptest::prelude::*;

/// Key used by the official BLAKE3 test vectors.
const VECTOR_KEY: &[u8; 32] = b"whats the Elvish word for friend";

#[test]
fn keyed_hash_known_answer() {
    // Official BLAKE3 test vector (keyed_hash, input_len = 0).
    let key = SecretKey::from_bytes(*VECTOR_KEY);
    assert_eq!(hex::encode(keyed_hash(&key, b"")), "92b2b75604ed3c761f9d6f62392c8a9227ad0ea3f09573e783f1498a4ed60d26");
}

#[test]
fn sha256_known_answer() {
    assert_eq!(hex::encode(sha256(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

#[test]
fn hash_token_is_domain_separated() {
    let t = "some-token";
    assert_eq!(hash_token(t), blake3::derive_key("cloudsync 2026 token-at-rest v1", t.as_bytes()));
    assert_ne!(hash_token(t), *blake3::hash(t.as_bytes()).as_bytes());
    assert_ne!(hash_token(t), hash_token("some-tokem"));
}

#[test]
fn ct_eq_semantics() {
    assert!(ct_eq(b"", b""));
    assert!(ct_eq(b"abc", b"abc"));
    assert!(!ct_eq(b"abc", b"abd"));
    assert!(!ct_eq(b"abc", b"abcd"));
    assert!(!ct_eq(b"", b"a"));
}

#[test]
fn random_token_shape_and_uniqueness() {
    let tokens: HashSet<String> = (0..1000).map(|_| random_token()).collect();
    assert_eq!(tokens.len(), 1000);
    for t in &tokens {
        assert_eq!(t.len(), 43);
        assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{t}");
    }
}

#[test]
fn random_bytes_differ() {
    assert_ne!(random_bytes::<16>(), random_bytes::<16>());
    assert_eq!(random_bytes::<0>(), [0u8; 0]);
}

#[test]
fn keyed_hasher_debug_hides_state() {
    let h = KeyedHasher::new(&SecretKey::from_bytes(*VECTOR_KEY));
    assert_eq!(format!("{h:?}"), "KeyedHasher(***)");
}

proptest! {
    #[test]
    fn keyed_hash_matches_blake3(key in any::<[u8; 32]>(), data in proptest::collection::vec(any::<u8>(), 0..5000)) {
        let sk = SecretKey::from_bytes(key);
        prop_assert_eq!(keyed_hash(&sk, &data), *blake3::keyed_hash(&key, &data).as_bytes());
    }

    #[test]
    fn keyed_hasher_is_incremental(
        key in any::<[u8; 32]>(),
        data in proptest::collection::vec(any::<u8>(), 0..5000),
        split in any::<prop::sample::Index>(),
    ) {
        let sk = SecretKey::from_bytes(key);
        let (a, b) = data.split_at(split.index(data.len() + 1));
        let mut h = KeyedHasher::new(&sk);
        h.update(a);
        prop_assert_eq!(h.finalize(), keyed_hash(&sk, a));
        h.update(b);
        prop_assert_eq!(h.finalize(), keyed_hash(&sk, &data));
    }
}
