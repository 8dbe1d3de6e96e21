//! Argon2id password hashing: round trips, rejections and output format.

use cloudsync_crypto::CryptoError;
use cloudsync_crypto::password::{self, MAX_PASSWORD_BYTES};

#[test]
fn hash_and_verify() {
    let phc = password::hash("correct horse battery staple").unwrap();
    assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
    assert!(password::verify("correct horse battery staple", &phc));
    assert!(!password::verify("correct horse battery stapl", &phc));
    assert!(!password::verify("", &phc));
}

#[test]
fn salts_are_random() {
    let a = password::hash("same").unwrap();
    let b = password::hash("same").unwrap();
    assert_ne!(a, b);
    assert!(password::verify("same", &a) && password::verify("same", &b));
}

#[test]
fn unicode_and_empty_passwords() {
    let phc = password::hash("pässwörd 🔐").unwrap();
    assert!(password::verify("pässwörd 🔐", &phc));
    assert!(!password::verify("passwörd 🔐", &phc));
    let empty = password::hash("").unwrap();
    assert!(password::verify("", &empty));
}

#[test]
fn malformed_hashes_fail_closed() {
    for bad in [
        "",
        "not a hash",
        "$argon2id$",
        "$argon2id$v=19$m=19456,t=2,p=1$",
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ",
        "$argon2id$v=19$m=19456,t=2,p=1$!!!$!!!",
        "$scrypt$ln=16,r=8,p=1$aGVsbG8$aGVsbG8gd29ybGQ",
    ] {
        assert!(!password::verify("x", bad), "{bad}");
    }
}

#[test]
fn other_argon2_variants_are_rejected() {
    let phc = password::hash("pw").unwrap().replacen("$argon2id$", "$argon2i$", 1);
    assert!(!password::verify("pw", &phc));
}

#[test]
fn length_limit() {
    let max = "a".repeat(MAX_PASSWORD_BYTES);
    let phc = password::hash(&max).unwrap();
    assert!(password::verify(&max, &phc));
    let long = "a".repeat(MAX_PASSWORD_BYTES + 1);
    assert!(matches!(password::hash(&long), Err(CryptoError::PasswordTooLong)));
    assert!(!password::verify(&long, &phc));
}

#[test]
fn dummy_verify_runs() {
    password::dummy_verify("anything");
    password::dummy_verify(&"a".repeat(MAX_PASSWORD_BYTES + 1));
}
