//! Property tests for the AEAD envelope and key wrapping: everything sealed
//! opens again, and any change to data, aad, key or context is rejected.

use cloudsync_crypto::{CryptoError, SecretKey, aead, unwrap_key, wrap_key};
use proptest::prelude::*;

fn key_from(bytes: [u8; 32]) -> SecretKey {
    SecretKey::from_bytes(bytes)
}

proptest! {
    #[test]
    fn seal_open_round_trip(
        key in any::<[u8; 32]>(),
        aad in proptest::collection::vec(any::<u8>(), 0..64),
        plaintext in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let key = key_from(key);
        let env = aead::seal(&key, &aad, &plaintext);
        prop_assert_eq!(env.len(), plaintext.len() + aead::OVERHEAD);
        prop_assert_eq!(aead::open(&key, &aad, &env).unwrap(), plaintext.clone());

        let mut reused = vec![9u8; 3];
        aead::seal_into(&key, &aad, &plaintext, &mut reused);
        prop_assert_eq!(&reused[..3], &[9u8, 9, 9][..]);
        prop_assert_eq!(aead::open(&key, &aad, &reused[3..]).unwrap(), plaintext);
    }

    #[test]
    fn any_flipped_byte_is_rejected(
        key in any::<[u8; 32]>(),
        aad in proptest::collection::vec(any::<u8>(), 0..32),
        plaintext in proptest::collection::vec(any::<u8>(), 0..512),
        index in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let key = key_from(key);
        let mut env = aead::seal(&key, &aad, &plaintext);
        let i = index.index(env.len());
        env[i] ^= mask;
        let result = aead::open(&key, &aad, &env);
        if i == 0 {
            prop_assert!(matches!(result, Err(CryptoError::Version(_))));
        } else {
            prop_assert!(matches!(result, Err(CryptoError::Decrypt)));
        }
    }

    #[test]
    fn truncation_is_rejected(
        plaintext in proptest::collection::vec(any::<u8>(), 0..256),
        cut in any::<prop::sample::Index>(),
    ) {
        let key = SecretKey::generate();
        let env = aead::seal(&key, b"", &plaintext);
        let len = cut.index(env.len());
        prop_assert!(aead::open(&key, b"", &env[..len]).is_err());
    }

    #[test]
    fn wrong_aad_or_key_is_rejected(
        aad in proptest::collection::vec(any::<u8>(), 0..32),
        other_aad in proptest::collection::vec(any::<u8>(), 0..32),
        plaintext in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        prop_assume!(aad != other_aad);
        let key = SecretKey::generate();
        let env = aead::seal(&key, &aad, &plaintext);
        prop_assert!(matches!(aead::open(&key, &other_aad, &env), Err(CryptoError::Decrypt)));
        prop_assert!(matches!(
            aead::open(&SecretKey::generate(), &aad, &env),
            Err(CryptoError::Decrypt)
        ));
    }

    #[test]
    fn wrap_unwrap_round_trip(
        kek in any::<[u8; 32]>(),
        key in any::<[u8; 32]>(),
        context in proptest::collection::vec(any::<u8>(), 0..64),
        other_context in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let kek = key_from(kek);
        let key = key_from(key);
        let wrapped = wrap_key(&kek, &context, &key);
        prop_assert_eq!(wrapped.len(), 32 + aead::OVERHEAD);
        prop_assert_eq!(unwrap_key(&kek, &context, &wrapped).unwrap(), key);
        if other_context != context {
            prop_assert!(unwrap_key(&kek, &other_context, &wrapped).is_err());
        }
        prop_assert!(unwrap_key(&SecretKey::generate(), &context, &wrapped).is_err());
    }
}

#[test]
fn wrapped_key_is_not_a_plain_envelope() {
    // Domain separation: a wrapped key does not open as an ordinary message
    // with the same context as aad, and vice versa.
    let kek = SecretKey::generate();
    let key = SecretKey::generate();
    let wrapped = wrap_key(&kek, b"ws-1", &key);
    assert!(aead::open(&kek, b"ws-1", &wrapped).is_err());
    let sealed = aead::seal(&kek, b"ws-1", key.as_bytes());
    assert!(unwrap_key(&kek, b"ws-1", &sealed).is_err());
}

#[test]
fn unwrap_rejects_non_key_payload() {
    let kek = SecretKey::generate();
    let mut aad = b"cloudsync-wrap-v1\0".to_vec();
    aad.extend_from_slice(b"ctx");
    let sealed = aead::seal(&kek, &aad, &[1u8; 31]);
    assert!(matches!(unwrap_key(&kek, b"ctx", &sealed), Err(CryptoError::InvalidKey(_))));
}
