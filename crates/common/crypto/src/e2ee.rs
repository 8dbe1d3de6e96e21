//! A user's end-to-end encryption keys: an Ed25519 signing key and an X25519 agreement key, made on the
//! client. Their secret halves leave the client only sealed, twice: under a key stretched from the user's
//! passphrase (Argon2id) and under a random recovery key shown once. The public halves travel as a
//! [`PublicIdentity`] the user signed for their account id and email, and are compared between people by a
//! short [`PublicIdentity::fingerprint`]. See `docs/rfcs/0004-end-to-end-encryption.md`.

use argon2::{Algorithm, Argon2, Params, Version};
use ed25519_dalek::Signer;
use zeroize::{Zeroize, Zeroizing};

use crate::{CryptoError, SecretKey, aead, random_bytes, totp};

/// Bytes of a [`PublicIdentity`]: signing key, agreement key, self-signature.
pub const IDENTITY_LEN: usize = 32 + 32 + 64;
/// Bytes of the secret halves.
const SECRET_LEN: usize = 64;
/// Format version of a sealed key blob.
const SEALED_VERSION: u8 = 1;
const KIND_PASSPHRASE: u8 = 1;
const KIND_RECOVERY: u8 = 2;
const SALT_LEN: usize = 16;

/// Argon2id cost of a passphrase seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory, KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// The default: 64 MiB, 3 passes, 1 lane (above OWASP's Argon2id minimums).
    pub const DEFAULT: KdfParams = KdfParams { m_kib: 64 * 1024, t: 3, p: 1 };

    /// Whether a blob's parameters are within what a client agrees to compute: a server handing out a blob
    /// that asks for gigabytes would otherwise exhaust a small device's memory.
    fn sane(self) -> bool {
        (8 * 1024..=256 * 1024).contains(&self.m_kib) && (1..=10).contains(&self.t) && (1..=8).contains(&self.p)
    }
}

/// A user's secret keys. Wiped on drop; never printed.
pub struct UserKeys {
    signing: ed25519_dalek::SigningKey,
    agreement: x25519_dalek::StaticSecret,
}

impl std::fmt::Debug for UserKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserKeys(***)")
    }
}

/// The public half of a user's keys, signed by the user for one account.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicIdentity {
    /// Ed25519 public key.
    pub signing: [u8; 32],
    /// X25519 public key.
    pub agreement: [u8; 32],
    /// Ed25519 signature of [`identity_message`] by `signing`.
    pub signature: [u8; 64],
}

impl std::fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicIdentity").field("fingerprint", &self.fingerprint()).finish()
    }
}

/// What a user signs to claim their public keys for an account: the account id and email bound to both keys.
fn identity_message(user_id: &[u8; 16], email: &str, signing: &[u8; 32], agreement: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + 16 + 64 + email.len());
    m.extend_from_slice(b"cloudsync e2ee identity v1\0");
    m.extend_from_slice(user_id);
    m.extend_from_slice(&(email.len() as u64).to_be_bytes());
    m.extend_from_slice(email.as_bytes());
    m.extend_from_slice(signing);
    m.extend_from_slice(agreement);
    m
}

impl UserKeys {
    /// New random keys.
    pub fn generate() -> Self {
        let mut s = random_bytes::<32>();
        let mut a = random_bytes::<32>();
        let keys =
            Self { signing: ed25519_dalek::SigningKey::from_bytes(&s), agreement: x25519_dalek::StaticSecret::from(a) };
        s.zeroize();
        a.zeroize();
        keys
    }

    /// The secret halves, for sealing or caching.
    pub fn to_secret_bytes(&self) -> Zeroizing<[u8; SECRET_LEN]> {
        let mut out = Zeroizing::new([0u8; SECRET_LEN]);
        out[..32].copy_from_slice(&self.signing.to_bytes());
        out[32..].copy_from_slice(self.agreement.as_bytes());
        out
    }

    /// Keys from [`UserKeys::to_secret_bytes`].
    ///
    /// # Errors
    /// Wrong length.
    pub fn from_secret_bytes(b: &[u8]) -> Result<Self, CryptoError> {
        if b.len() != SECRET_LEN {
            return Err(CryptoError::InvalidKey("user secret keys are 64 bytes"));
        }
        let mut s = [0u8; 32];
        let mut a = [0u8; 32];
        s.copy_from_slice(&b[..32]);
        a.copy_from_slice(&b[32..]);
        let keys =
            Self { signing: ed25519_dalek::SigningKey::from_bytes(&s), agreement: x25519_dalek::StaticSecret::from(a) };
        s.zeroize();
        a.zeroize();
        Ok(keys)
    }

    /// The signed public identity for account `user_id` with `email`.
    pub fn identity(&self, user_id: &[u8; 16], email: &str) -> PublicIdentity {
        let signing = self.signing.verifying_key().to_bytes();
        let agreement = x25519_dalek::PublicKey::from(&self.agreement).to_bytes();
        let signature = self.signing.sign(&identity_message(user_id, email, &signing, &agreement)).to_bytes();
        PublicIdentity { signing, agreement, signature }
    }

    /// Signs `message` with the signing key (callers prefix their own context string).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// X25519 with `their_public`; refuses a low-order point (a predictable shared value).
    pub(crate) fn agree(&self, their_public: &[u8; 32]) -> Result<[u8; 32], CryptoError> {
        let shared = self.agreement.diffie_hellman(&x25519_dalek::PublicKey::from(*their_public));
        if !shared.was_contributory() {
            return Err(CryptoError::InvalidKey("a low-order point in a key agreement"));
        }
        Ok(*shared.as_bytes())
    }

    /// Whether these are the secret halves of `identity`.
    pub fn matches(&self, identity: &PublicIdentity) -> bool {
        self.signing.verifying_key().to_bytes() == identity.signing
            && x25519_dalek::PublicKey::from(&self.agreement).to_bytes() == identity.agreement
    }
}

/// The Ed25519 key of `bytes`, decompressed once a thread (a pull checks a signature a file, by the few members
/// who wrote them; decompressing a point costs about a third of checking one).
fn verifying_key(bytes: &[u8; 32]) -> Result<ed25519_dalek::VerifyingKey, CryptoError> {
    thread_local! {
        static KEYS: std::cell::RefCell<Vec<([u8; 32], ed25519_dalek::VerifyingKey)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    KEYS.with_borrow_mut(|keys| {
        if let Some((_, vk)) = keys.iter().find(|(b, _)| b == bytes) {
            return Ok(*vk);
        }
        let vk = ed25519_dalek::VerifyingKey::from_bytes(bytes).map_err(|_| CryptoError::Signature)?;
        // A workspace has a few writers: the cache stays small.
        if keys.len() >= 16 {
            keys.remove(0);
        }
        keys.push((*bytes, vk));
        Ok(vk)
    })
}

/// Checks many signatures at once (signer, message, signature), each as [`PublicIdentity::verify_message`]
/// would; the result for each, in order.
///
/// A linear combination of their verification equations, with 128-bit coefficients drawn from a hash of every
/// signature, key and message, is checked in one multiscalar multiplication (ed25519-dalek's `verify_batch`),
/// for a little over half the cost of checking them one by one (106 M instructions for 500 against 190 M);
/// when it fails, each is checked alone, so the results say which failed. Each signature's R and its signer's
/// key are first checked as `verify_strict` checks them (a canonical encoding of a point not of small order;
/// the batch checks that s is canonical). One difference remains: a signature whose signer crafted its R or
/// key with a small-order component may pass in a batch where it fails alone. Only the holder of the signing
/// key can make one, and it carries nothing that key could not sign outright.
pub fn verify_messages(items: &[(&PublicIdentity, &[u8], &[u8; 64])]) -> Vec<Result<(), CryptoError>> {
    let alone = |(id, message, signature): &(&PublicIdentity, &[u8], &[u8; 64])| id.verify_message(message, signature);
    // Those the checks before a batch refuse are checked alone (and fail); the others go in the batch.
    let batched: Vec<Option<ed25519_dalek::VerifyingKey>> = items
        .iter()
        .map(|(id, _, signature)| verifying_key(&id.signing).ok().filter(|vk| !vk.is_weak() && strict_r(signature)))
        .collect();
    let (mut keys, mut signatures, mut messages) = (Vec::new(), Vec::new(), Vec::new());
    for ((_, message, signature), vk) in items.iter().zip(&batched) {
        if let Some(vk) = vk {
            keys.push(*vk);
            signatures.push(ed25519_dalek::Signature::from_bytes(signature));
            messages.push(*message);
        }
    }
    let all_good = keys.len() >= 2 && ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok();
    items.iter().zip(&batched).map(|(item, vk)| if all_good && vk.is_some() { Ok(()) } else { alone(item) }).collect()
}

/// Whether a signature's R is what `verify_strict` takes: the canonical encoding (y below 2^255 - 19) of a
/// point on the curve not of small order.
fn strict_r(signature: &[u8; 64]) -> bool {
    let mut r = [0u8; 32];
    r.copy_from_slice(&signature[..32]);
    let y_past_p = r[31] & 0x7f == 0x7f && r[1..31].iter().all(|&b| b == 0xff) && r[0] >= 0xed;
    !y_past_p && ed25519_dalek::VerifyingKey::from_bytes(&r).is_ok_and(|point| !point.is_weak())
}

impl PublicIdentity {
    /// The wire form.
    pub fn to_bytes(&self) -> [u8; IDENTITY_LEN] {
        let mut out = [0u8; IDENTITY_LEN];
        out[..32].copy_from_slice(&self.signing);
        out[32..64].copy_from_slice(&self.agreement);
        out[64..].copy_from_slice(&self.signature);
        out
    }

    /// Reads the wire form (without checking the signature: see [`PublicIdentity::verify`]).
    ///
    /// # Errors
    /// Wrong length.
    pub fn from_bytes(b: &[u8]) -> Result<Self, CryptoError> {
        if b.len() != IDENTITY_LEN {
            return Err(CryptoError::InvalidKey("a public identity is 128 bytes"));
        }
        let mut id = PublicIdentity { signing: [0; 32], agreement: [0; 32], signature: [0; 64] };
        id.signing.copy_from_slice(&b[..32]);
        id.agreement.copy_from_slice(&b[32..64]);
        id.signature.copy_from_slice(&b[64..]);
        Ok(id)
    }

    /// Checks `signature` over `message` (which the signer prefixed with its own context string) by this
    /// identity's signing key.
    ///
    /// # Errors
    /// [`CryptoError::Signature`] when it does not verify.
    pub fn verify_message(&self, message: &[u8], signature: &[u8; 64]) -> Result<(), CryptoError> {
        let vk = verifying_key(&self.signing)?;
        vk.verify_strict(message, &ed25519_dalek::Signature::from_bytes(signature)).map_err(|_| CryptoError::Signature)
    }

    /// Checks the self-signature for account `user_id` with `email` (keys claimed for another account, or an
    /// agreement key swapped under someone's signing key, fail), and that the agreement key is not a
    /// low-order point (with which every key agreement would give a value the server could predict).
    ///
    /// # Errors
    /// [`CryptoError::Signature`] when it does not verify, [`CryptoError::InvalidKey`] for a weak agreement
    /// key.
    pub fn verify(&self, user_id: &[u8; 16], email: &str) -> Result<(), CryptoError> {
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&self.signing).map_err(|_| CryptoError::Signature)?;
        if vk.is_weak() {
            return Err(CryptoError::InvalidKey("the signing key is a weak point"));
        }
        let sig = ed25519_dalek::Signature::from_bytes(&self.signature);
        vk.verify_strict(&identity_message(user_id, email, &self.signing, &self.agreement), &sig)
            .map_err(|_| CryptoError::Signature)?;
        let probe = x25519_dalek::StaticSecret::from(random_bytes::<32>());
        if !probe.diffie_hellman(&x25519_dalek::PublicKey::from(self.agreement)).was_contributory() {
            return Err(CryptoError::InvalidKey("the agreement key is a low-order point"));
        }
        Ok(())
    }

    /// Eight groups of five digits that people compare to know they hold the same keys (about 133 bits).
    pub fn fingerprint(&self) -> String {
        let mut h = blake3::Hasher::new_derive_key("cloudsync 2026 e2ee fingerprint v1");
        h.update(&self.signing);
        h.update(&self.agreement);
        let mut out = [0u8; 40];
        h.finalize_xof().fill(&mut out);
        out.chunks(5)
            .map(|c| {
                let n = c.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
                format!("{:05}", n % 100_000)
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A recovery key: 256 random bits, shown once as 13 groups of 4 Base32 characters.
pub struct RecoveryKey([u8; 32]);

impl Drop for RecoveryKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryKey(***)")
    }
}

impl RecoveryKey {
    /// A new random key.
    pub fn generate() -> Self {
        Self(random_bytes::<32>())
    }

    /// `ABCD-EFGH-...` (52 characters in groups of four).
    pub fn to_display(&self) -> Zeroizing<String> {
        let raw = Zeroizing::new(totp::base32_encode(&self.0));
        let groups: Vec<&str> = raw.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).unwrap_or("")).collect();
        Zeroizing::new(groups.join("-"))
    }

    /// Reads a key as typed: case, spaces and dashes do not matter.
    ///
    /// # Errors
    /// Anything that is not 52 Base32 characters.
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let cleaned: Zeroizing<String> =
            Zeroizing::new(text.chars().filter(|c| !matches!(c, ' ' | '-' | '\t')).collect::<String>().to_uppercase());
        let bytes = Zeroizing::new(
            totp::base32_decode(&cleaned).ok_or(CryptoError::InvalidKey("a recovery key is 52 Base32 characters"))?,
        );
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::InvalidKey("a recovery key is 52 Base32 characters"))?;
        Ok(Self(arr))
    }

    fn kek(&self) -> SecretKey {
        SecretKey::from_bytes(blake3::derive_key("cloudsync 2026 e2ee recovery-key v1", &self.0))
    }
}

/// What a sealed secret is bound to: the account and its public identity.
fn sealed_aad(user_id: &[u8; 16], identity: &PublicIdentity) -> Vec<u8> {
    let mut aad = b"cloudsync e2ee user-secret v1\0".to_vec();
    aad.extend_from_slice(user_id);
    aad.extend_from_slice(&identity.signing);
    aad.extend_from_slice(&identity.agreement);
    aad
}

fn passphrase_kek(passphrase: &str, salt: &[u8], p: KdfParams) -> Result<SecretKey, CryptoError> {
    let params = Params::new(p.m_kib, p.t, p.p, Some(32))
        .map_err(|e| CryptoError::PasswordHash(format!("argon2 params: {e}")))?;
    let mut out = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase.as_bytes(), salt, out.as_mut())
        .map_err(|e| CryptoError::PasswordHash(e.to_string()))?;
    Ok(SecretKey::from_bytes(*out))
}

/// Seals `keys` under `passphrase` with the default cost.
///
/// # Errors
/// A passphrase over the length cap.
pub fn seal_with_passphrase(
    keys: &UserKeys,
    passphrase: &str,
    user_id: &[u8; 16],
    identity: &PublicIdentity,
) -> Result<Vec<u8>, CryptoError> {
    seal_with_passphrase_params(keys, passphrase, user_id, identity, KdfParams::DEFAULT)
}

/// As [`seal_with_passphrase`] with an explicit cost (tests use a cheap one).
///
/// # Errors
/// A passphrase over the length cap, or parameters out of range.
pub fn seal_with_passphrase_params(
    keys: &UserKeys,
    passphrase: &str,
    user_id: &[u8; 16],
    identity: &PublicIdentity,
    params: KdfParams,
) -> Result<Vec<u8>, CryptoError> {
    if passphrase.len() > crate::password::MAX_PASSWORD_BYTES {
        return Err(CryptoError::PasswordTooLong);
    }
    if !params.sane() {
        return Err(CryptoError::PasswordHash("argon2 parameters out of range".into()));
    }
    let salt = random_bytes::<SALT_LEN>();
    let kek = passphrase_kek(passphrase, &salt, params)?;
    let mut out = vec![SEALED_VERSION, KIND_PASSPHRASE];
    for v in [params.m_kib, params.t, params.p] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&salt);
    out.extend_from_slice(&aead::seal(&kek, &sealed_aad(user_id, identity), keys.to_secret_bytes().as_ref()));
    Ok(out)
}

/// Opens a passphrase seal.
///
/// # Errors
/// [`CryptoError::Decrypt`] for a wrong passphrase (or an altered blob, or one bound to another identity),
/// [`CryptoError::InvalidKey`] for a malformed blob or parameters a client refuses to compute.
pub fn open_with_passphrase(
    blob: &[u8],
    passphrase: &str,
    user_id: &[u8; 16],
    identity: &PublicIdentity,
) -> Result<UserKeys, CryptoError> {
    let header = 2 + 12 + SALT_LEN;
    if blob.len() < header || blob[0] != SEALED_VERSION || blob[1] != KIND_PASSPHRASE {
        return Err(CryptoError::InvalidKey("not a passphrase-sealed key"));
    }
    let num = |i: usize| u32::from_be_bytes([blob[i], blob[i + 1], blob[i + 2], blob[i + 3]]);
    let params = KdfParams { m_kib: num(2), t: num(6), p: num(10) };
    if !params.sane() {
        return Err(CryptoError::InvalidKey("the sealed key asks for an Argon2 cost out of range"));
    }
    let kek = passphrase_kek(passphrase, &blob[14..header], params)?;
    let secret = Zeroizing::new(aead::open(&kek, &sealed_aad(user_id, identity), &blob[header..])?);
    let keys = UserKeys::from_secret_bytes(&secret)?;
    if !keys.matches(identity) {
        return Err(CryptoError::Decrypt);
    }
    Ok(keys)
}

/// Seals `keys` under a recovery key.
pub fn seal_with_recovery(
    keys: &UserKeys,
    recovery: &RecoveryKey,
    user_id: &[u8; 16],
    identity: &PublicIdentity,
) -> Vec<u8> {
    let mut out = vec![SEALED_VERSION, KIND_RECOVERY];
    out.extend_from_slice(&aead::seal(
        &recovery.kek(),
        &sealed_aad(user_id, identity),
        keys.to_secret_bytes().as_ref(),
    ));
    out
}

/// Opens a recovery seal.
///
/// # Errors
/// [`CryptoError::Decrypt`] for a wrong recovery key (or an altered blob), [`CryptoError::InvalidKey`] for a
/// malformed one.
pub fn open_with_recovery(
    blob: &[u8],
    recovery: &RecoveryKey,
    user_id: &[u8; 16],
    identity: &PublicIdentity,
) -> Result<UserKeys, CryptoError> {
    if blob.len() < 2 || blob[0] != SEALED_VERSION || blob[1] != KIND_RECOVERY {
        return Err(CryptoError::InvalidKey("not a recovery-sealed key"));
    }
    let secret = Zeroizing::new(aead::open(&recovery.kek(), &sealed_aad(user_id, identity), &blob[2..])?);
    let keys = UserKeys::from_secret_bytes(&secret)?;
    if !keys.matches(identity) {
        return Err(CryptoError::Decrypt);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: KdfParams = KdfParams { m_kib: 8 * 1024, t: 1, p: 1 };
    const ALICE: [u8; 16] = [1; 16];

    #[test]
    fn signatures_are_checked_by_their_own_key_with_keys_kept_decompressed() {
        // More signers than the per-thread cache holds, each checked twice, in turn.
        let signers: Vec<UserKeys> = (0..20).map(|_| UserKeys::generate()).collect();
        let ids: Vec<PublicIdentity> = signers.iter().map(|k| k.identity(&ALICE, "alice@example.org")).collect();
        for _ in 0..2 {
            for (i, (k, id)) in signers.iter().zip(&ids).enumerate() {
                let signature = k.sign(b"message");
                id.verify_message(b"message", &signature).expect("its own signature");
                assert!(id.verify_message(b"other", &signature).is_err(), "another message");
                let other = &ids[(i + 1) % ids.len()];
                assert!(other.verify_message(b"message", &signature).is_err(), "another signer's key");
            }
        }
        let bad = PublicIdentity { signing: [0xff; 32], ..ids[0].clone() };
        assert!(bad.verify_message(b"message", &signers[0].sign(b"message")).is_err(), "not a point");
    }

    #[test]
    fn signatures_checked_together_answer_as_each_checked_alone() {
        let signers: Vec<UserKeys> = (0..3).map(|_| UserKeys::generate()).collect();
        let ids: Vec<PublicIdentity> = signers.iter().map(|k| k.identity(&ALICE, "alice@example.org")).collect();
        let messages: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; usize::from(i) * 7]).collect();
        let signed: Vec<(usize, [u8; 64])> =
            messages.iter().enumerate().map(|(i, m)| (i % 3, signers[i % 3].sign(m))).collect();
        let check = |items: &[(usize, &[u8], [u8; 64])]| {
            let list: Vec<(&PublicIdentity, &[u8], &[u8; 64])> =
                items.iter().map(|(k, m, s)| (&ids[*k], *m, s)).collect();
            let together: Vec<bool> = verify_messages(&list).iter().map(Result::is_ok).collect();
            let alone: Vec<bool> = list.iter().map(|(id, m, s)| id.verify_message(m, s).is_ok()).collect();
            assert_eq!(together, alone);
            together
        };
        let good: Vec<(usize, &[u8], [u8; 64])> =
            signed.iter().zip(&messages).map(|((k, s), m)| (*k, &m[..], *s)).collect();
        assert!(check(&good).iter().all(|ok| *ok), "every signature is good");
        assert!(check(&good[..1]).iter().all(|ok| *ok) && check(&[]).is_empty());

        // One bad item among good ones fails alone, whatever is wrong with it.
        let identity_r = {
            let mut r = [0u8; 32];
            r[0] = 1;
            r
        };
        type Item<'a> = (usize, &'a [u8], [u8; 64]);
        let tamperings: [&dyn Fn(&mut Item<'_>); 6] = [
            &|item| item.1 = b"another message",
            &|item| item.0 = (item.0 + 1) % 3,
            &|item| item.2[40] ^= 1,
            // s not below the group order.
            &|item| item.2[63] |= 0xf0,
            // R the neutral point (of small order), or not canonically encoded.
            &|item| item.2[..32].copy_from_slice(&identity_r),
            &|item| {
                item.2[..32].fill(0xff);
                item.2[31] = 0x7f;
            },
        ];
        // The neutral point as key and as R, with s = 0, satisfies the equations a batch combines, though
        // verify_strict refuses it (a key and an R of small order): the checks made before the batch refuse it.
        let neutral = PublicIdentity { signing: identity_r, ..ids[0].clone() };
        let mut degenerate = [0u8; 64];
        degenerate[..32].copy_from_slice(&identity_r);
        let mut list: Vec<(&PublicIdentity, &[u8], &[u8; 64])> =
            good.iter().map(|(k, m, s)| (&ids[*k], *m, s)).collect();
        list[3] = (&neutral, b"anything", &degenerate);
        let results = verify_messages(&list);
        assert!(results[3].is_err() && results.iter().filter(|r| r.is_err()).count() == 1);
        assert!(
            ed25519_dalek::verify_batch(
                &[b"anything"],
                &[ed25519_dalek::Signature::from_bytes(&degenerate)],
                &[ed25519_dalek::VerifyingKey::from_bytes(&identity_r).expect("a point")]
            )
            .is_ok(),
            "a batch alone would take it"
        );
        for (t, tamper) in tamperings.iter().enumerate() {
            let mut items = good.clone();
            let at = 7 + t * 5;
            tamper(&mut items[at]);
            let results = check(&items);
            assert!(!results[at], "tampering {t} is caught");
            assert_eq!(results.iter().filter(|ok| !**ok).count(), 1, "only the tampered item fails ({t})");
        }
    }

    #[test]
    fn identities_are_bound_to_their_account() {
        let k = UserKeys::generate();
        let id = k.identity(&ALICE, "alice@example.org");
        id.verify(&ALICE, "alice@example.org").expect("own identity");
        assert!(id.verify(&[2; 16], "alice@example.org").is_err(), "another account id");
        assert!(id.verify(&ALICE, "mallory@example.org").is_err(), "another email");
        let mallory = UserKeys::generate().identity(&ALICE, "alice@example.org");
        let swapped = PublicIdentity { agreement: mallory.agreement, ..id.clone() };
        assert!(swapped.verify(&ALICE, "alice@example.org").is_err(), "an agreement key swapped in");
        assert_eq!(PublicIdentity::from_bytes(&id.to_bytes()).expect("bytes"), id);
        assert!(PublicIdentity::from_bytes(&[0; 5]).is_err());
    }

    #[test]
    fn a_low_order_agreement_key_is_refused_even_when_signed() {
        // An identity whose owner signed the all-zero (low-order) X25519 point: signature fine, key weak.
        let k = UserKeys::generate();
        let signing = k.signing.verifying_key().to_bytes();
        let zero = [0u8; 32];
        let signature = k.signing.sign(&identity_message(&ALICE, "a@x.org", &signing, &zero)).to_bytes();
        let weak = PublicIdentity { signing, agreement: zero, signature };
        assert!(matches!(weak.verify(&ALICE, "a@x.org"), Err(CryptoError::InvalidKey(_))));
    }

    #[test]
    fn fingerprints_are_eight_groups_of_five_digits_and_differ() {
        let a = UserKeys::generate().identity(&ALICE, "a@x.org");
        let b = UserKeys::generate().identity(&ALICE, "a@x.org");
        let f = a.fingerprint();
        assert_eq!(f.len(), 8 * 5 + 7, "{f}");
        assert!(f.split(' ').all(|g| g.len() == 5 && g.bytes().all(|c| c.is_ascii_digit())), "{f}");
        assert_ne!(f, b.fingerprint());
        assert_eq!(f, PublicIdentity::from_bytes(&a.to_bytes()).expect("bytes").fingerprint(), "stable");
    }

    #[test]
    fn sealed_keys_open_only_with_their_secret_and_identity() {
        let k = UserKeys::generate();
        let id = k.identity(&ALICE, "a@x.org");
        let blob = seal_with_passphrase_params(&k, "correct horse", &ALICE, &id, CHEAP).expect("seal");
        let opened = open_with_passphrase(&blob, "correct horse", &ALICE, &id).expect("open");
        assert_eq!(*opened.to_secret_bytes(), *k.to_secret_bytes());
        assert!(matches!(open_with_passphrase(&blob, "wrong horse", &ALICE, &id), Err(CryptoError::Decrypt)));
        assert!(open_with_passphrase(&blob, "correct horse", &[2; 16], &id).is_err(), "another account");
        let other = UserKeys::generate().identity(&ALICE, "a@x.org");
        assert!(open_with_passphrase(&blob, "correct horse", &ALICE, &other).is_err(), "another identity");
        let mut greedy = blob.clone();
        greedy[2..6].copy_from_slice(&(512u32 * 1024).to_be_bytes());
        assert!(
            matches!(open_with_passphrase(&greedy, "correct horse", &ALICE, &id), Err(CryptoError::InvalidKey(_))),
            "a blob asking for 512 MiB of Argon2 memory is refused before computing"
        );

        let rk = RecoveryKey::generate();
        let shown = rk.to_display();
        assert_eq!(shown.len(), 52 + 12, "{}", shown.as_str());
        let typed = shown.to_lowercase().replace('-', " ");
        let back = RecoveryKey::parse(&typed).expect("parse");
        let rblob = seal_with_recovery(&k, &rk, &ALICE, &id);
        assert_eq!(
            *open_with_recovery(&rblob, &back, &ALICE, &id).expect("open").to_secret_bytes(),
            *k.to_secret_bytes()
        );
        assert!(open_with_recovery(&rblob, &RecoveryKey::generate(), &ALICE, &id).is_err());
        assert!(RecoveryKey::parse("too-short").is_err());
        assert!(open_with_recovery(&blob, &rk, &ALICE, &id).is_err(), "kinds are not interchangeable");
    }
}
