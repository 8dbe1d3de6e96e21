//! Workspace keys of end-to-end encrypted workspaces (the next step of RFC 0004, built and tested here before
//! the server and sync engine use them): a random key per epoch, the keys derived from it for each use,
//! wrapping it to a member's X25519 key, the signed record that says who wrapped which key to whom, and Padmé
//! padding for stored sizes.
//!
//! A malicious server can replace a wrapped key or a member's public key; the signed record catches both: the
//! server cannot sign as a member, the record names the recipient's identity (so a key wrapped to a
//! substituted public key shows a different identity than the one the members know), and the wrapping's
//! associated data binds workspace, epoch and recipient (so a blob moved to another of them does not open).

use zeroize::Zeroize;

use crate::e2ee::{PublicIdentity, UserKeys};
use crate::{CryptoError, SecretKey, aead, random_bytes};

const WRAP_VERSION: u8 = 1;

/// What a key derived from a workspace key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Seals chunks.
    Chunk,
    /// Keys chunk ids (so the server cannot confirm a guessed chunk).
    ChunkId,
    /// Seeds the chunker (so boundaries do not fingerprint a known file).
    Chunking,
    /// Seals and indexes paths.
    Name,
    /// Seals manifests.
    Manifest,
}

impl Purpose {
    const fn context(self) -> &'static str {
        match self {
            Purpose::Chunk => "cloudsync 2026 e2ee workspace chunk v1",
            Purpose::ChunkId => "cloudsync 2026 e2ee workspace chunk-id v1",
            Purpose::Chunking => "cloudsync 2026 e2ee workspace chunking v1",
            Purpose::Name => "cloudsync 2026 e2ee workspace name v1",
            Purpose::Manifest => "cloudsync 2026 e2ee workspace manifest v1",
        }
    }
}

/// One epoch's workspace key. Wiped on drop; never printed.
#[derive(Debug)]
pub struct WorkspaceKey(SecretKey);

impl WorkspaceKey {
    /// A new random key.
    pub fn generate() -> Self {
        Self(SecretKey::generate())
    }

    /// The key for one use; distinct uses get unrelated keys.
    pub fn subkey(&self, purpose: Purpose) -> SecretKey {
        self.0.derive(purpose.context())
    }
}

fn wrap_aad(ws: &[u8; 16], epoch: u32, recipient: &[u8; 16], identity: &PublicIdentity) -> Vec<u8> {
    let mut aad = b"cloudsync e2ee wrapped-key v1\0".to_vec();
    aad.extend_from_slice(ws);
    aad.extend_from_slice(&epoch.to_be_bytes());
    aad.extend_from_slice(recipient);
    aad.extend_from_slice(&identity.signing);
    aad.extend_from_slice(&identity.agreement);
    aad
}

fn wrap_kek(shared: &[u8; 32], ephemeral: &[u8; 32], recipient: &[u8; 32]) -> SecretKey {
    let mut material = [0u8; 96];
    material[..32].copy_from_slice(shared);
    material[32..64].copy_from_slice(ephemeral);
    material[64..].copy_from_slice(recipient);
    let key = SecretKey::from_bytes(blake3::derive_key("cloudsync 2026 e2ee wrap v1", &material));
    material.zeroize();
    key
}

/// Wraps `key` to member `recipient` (account id) whose identity is `identity`: an ephemeral X25519
/// agreement, then AES-256-GCM bound to workspace, epoch and recipient.
///
/// # Errors
/// [`CryptoError::InvalidKey`] when the recipient's agreement key is a low-order point.
pub fn wrap(
    key: &WorkspaceKey,
    ws: &[u8; 16],
    epoch: u32,
    recipient: &[u8; 16],
    identity: &PublicIdentity,
) -> Result<Vec<u8>, CryptoError> {
    let ephemeral = x25519_dalek::StaticSecret::from(random_bytes::<32>());
    let ephemeral_pk = x25519_dalek::PublicKey::from(&ephemeral).to_bytes();
    let shared = ephemeral.diffie_hellman(&x25519_dalek::PublicKey::from(identity.agreement));
    if !shared.was_contributory() {
        return Err(CryptoError::InvalidKey("the recipient's agreement key is a low-order point"));
    }
    let kek = wrap_kek(shared.as_bytes(), &ephemeral_pk, &identity.agreement);
    let mut out = vec![WRAP_VERSION];
    out.extend_from_slice(&ephemeral_pk);
    out.extend_from_slice(&aead::seal(&kek, &wrap_aad(ws, epoch, recipient, identity), key.0.as_bytes()));
    Ok(out)
}

/// Opens a key wrapped to the caller (`me`, with `keys` and their `identity`).
///
/// # Errors
/// [`CryptoError::Decrypt`] for a blob wrapped to someone else, for another workspace or epoch, or altered.
pub fn unwrap(
    blob: &[u8],
    ws: &[u8; 16],
    epoch: u32,
    me: &[u8; 16],
    keys: &UserKeys,
    identity: &PublicIdentity,
) -> Result<WorkspaceKey, CryptoError> {
    if blob.len() < 33 || blob[0] != WRAP_VERSION {
        return Err(CryptoError::InvalidKey("not a wrapped workspace key"));
    }
    let mut ephemeral_pk = [0u8; 32];
    ephemeral_pk.copy_from_slice(&blob[1..33]);
    let shared = keys.agree(&ephemeral_pk)?;
    let kek = wrap_kek(&shared, &ephemeral_pk, &identity.agreement);
    let raw = zeroize::Zeroizing::new(aead::open(&kek, &wrap_aad(ws, epoch, me, identity), &blob[33..])?);
    Ok(WorkspaceKey(SecretKey::from_slice(&raw)?))
}

/// A wrapped key as members see it: who wrapped which epoch's key to whom (with the recipient's identity as
/// the wrapper knew it), signed by the wrapper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKeyRecord {
    /// Workspace id.
    pub ws: [u8; 16],
    /// Key epoch.
    pub epoch: u32,
    /// Recipient account id.
    pub recipient: [u8; 16],
    /// The recipient's identity the key was wrapped to.
    pub recipient_identity: [u8; crate::e2ee::IDENTITY_LEN],
    /// The wrapped key.
    pub blob: Vec<u8>,
    /// Wrapper account id.
    pub wrapper: [u8; 16],
    /// The wrapper's Ed25519 signature of all of the above.
    pub signature: [u8; 64],
}

fn record_message(
    ws: &[u8; 16],
    epoch: u32,
    recipient: &[u8; 16],
    recipient_identity: &[u8],
    blob: &[u8],
    wrapper: &[u8; 16],
) -> Vec<u8> {
    let mut m = b"cloudsync e2ee wrapped-key record v1\0".to_vec();
    m.extend_from_slice(ws);
    m.extend_from_slice(&epoch.to_be_bytes());
    m.extend_from_slice(recipient);
    m.extend_from_slice(recipient_identity);
    m.extend_from_slice(blake3::hash(blob).as_bytes());
    m.extend_from_slice(wrapper);
    m
}

/// Largest encoded wrapped-key record accepted.
pub const MAX_RECORD_BYTES: usize = 512;

impl WrappedKeyRecord {
    /// The wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 4 + 16 + crate::e2ee::IDENTITY_LEN + 2 + self.blob.len() + 16 + 64);
        out.extend_from_slice(&self.ws);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.recipient);
        out.extend_from_slice(&self.recipient_identity);
        out.extend_from_slice(&u16::try_from(self.blob.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(&self.blob);
        out.extend_from_slice(&self.wrapper);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Reads the wire form (checked by [`WrappedKeyRecord::verify`] and [`WrappedKeyRecord::open`]).
    ///
    /// # Errors
    /// [`CryptoError::InvalidKey`] for anything malformed or oversized.
    pub fn from_bytes(b: &[u8]) -> Result<Self, CryptoError> {
        let bad = CryptoError::InvalidKey("not a wrapped-key record");
        let fixed = 16 + 4 + 16 + crate::e2ee::IDENTITY_LEN + 2;
        if b.len() > MAX_RECORD_BYTES || b.len() < fixed + 16 + 64 {
            return Err(bad);
        }
        let blob_len = usize::from(u16::from_be_bytes([b[fixed - 2], b[fixed - 1]]));
        if b.len() != fixed + blob_len + 16 + 64 {
            return Err(bad);
        }
        let arr = |from: usize, to: usize| &b[from..to];
        let mut r = Self {
            ws: [0; 16],
            epoch: u32::from_be_bytes([b[16], b[17], b[18], b[19]]),
            recipient: [0; 16],
            recipient_identity: [0; crate::e2ee::IDENTITY_LEN],
            blob: arr(fixed, fixed + blob_len).to_vec(),
            wrapper: [0; 16],
            signature: [0; 64],
        };
        r.ws.copy_from_slice(arr(0, 16));
        r.recipient.copy_from_slice(arr(20, 36));
        r.recipient_identity.copy_from_slice(arr(36, 36 + crate::e2ee::IDENTITY_LEN));
        r.wrapper.copy_from_slice(arr(fixed + blob_len, fixed + blob_len + 16));
        r.signature.copy_from_slice(arr(fixed + blob_len + 16, b.len()));
        Ok(r)
    }

    /// Wraps `key` to `recipient` and signs the record as `wrapper` (with `wrapper_keys`).
    ///
    /// # Errors
    /// As [`wrap`].
    pub fn make(
        key: &WorkspaceKey,
        ws: &[u8; 16],
        epoch: u32,
        recipient: &[u8; 16],
        recipient_identity: &PublicIdentity,
        wrapper: &[u8; 16],
        wrapper_keys: &UserKeys,
    ) -> Result<Self, CryptoError> {
        let blob = wrap(key, ws, epoch, recipient, recipient_identity)?;
        let identity = recipient_identity.to_bytes();
        let signature = wrapper_keys.sign(&record_message(ws, epoch, recipient, &identity, &blob, wrapper));
        Ok(Self {
            ws: *ws,
            epoch,
            recipient: *recipient,
            recipient_identity: identity,
            blob,
            wrapper: *wrapper,
            signature,
        })
    }

    /// Checks the wrapper's signature against the wrapper's identity as the checking member knows it.
    ///
    /// # Errors
    /// [`CryptoError::Signature`] when the record was not signed by that identity (a key or record the
    /// server made or altered).
    pub fn verify(&self, wrapper_identity: &PublicIdentity) -> Result<(), CryptoError> {
        let vk =
            ed25519_dalek::VerifyingKey::from_bytes(&wrapper_identity.signing).map_err(|_| CryptoError::Signature)?;
        let sig = ed25519_dalek::Signature::from_bytes(&self.signature);
        let m =
            record_message(&self.ws, self.epoch, &self.recipient, &self.recipient_identity, &self.blob, &self.wrapper);
        vk.verify_strict(&m, &sig).map_err(|_| CryptoError::Signature)
    }

    /// The recipient's side: the record must be signed by the wrapper the recipient knows, name the
    /// recipient's own identity, and open.
    ///
    /// # Errors
    /// [`CryptoError::Signature`] for a record not signed by `wrapper_identity`, [`CryptoError::InvalidKey`]
    /// when it was wrapped to another identity than `my_identity` (a public key substituted on the way), and
    /// [`CryptoError::Decrypt`] when it does not open.
    pub fn open(
        &self,
        wrapper_identity: &PublicIdentity,
        me: &[u8; 16],
        my_keys: &UserKeys,
        my_identity: &PublicIdentity,
    ) -> Result<WorkspaceKey, CryptoError> {
        self.verify(wrapper_identity)?;
        if self.recipient != *me || self.recipient_identity != my_identity.to_bytes() {
            return Err(CryptoError::InvalidKey("this workspace key was wrapped to another identity than yours"));
        }
        unwrap(&self.blob, &self.ws, self.epoch, me, my_keys, my_identity)
    }
}

/// Padmé (Nikitin et al., PETS 2019): the length `len` is stored as, rounding up so that at most
/// O(log log len) bits of it show, at a cost of at most about 12% (less for larger sizes).
pub fn padme(len: u64) -> u64 {
    if len < 2 {
        return len;
    }
    let e = 63 - u64::from(len.leading_zeros()); // floor(log2 len)
    let s = 64 - u64::from(e.leading_zeros()); // floor(log2 e) + 1
    let last_bits = e - s;
    let mask = (1u64 << last_bits) - 1;
    (len + mask) & !mask
}

#[cfg(test)]
mod tests {
    use super::*;

    const WS: [u8; 16] = [7; 16];
    const ALICE: [u8; 16] = [1; 16];
    const BOB: [u8; 16] = [2; 16];

    fn user(id: &[u8; 16], email: &str) -> (UserKeys, PublicIdentity) {
        let k = UserKeys::generate();
        let i = k.identity(id, email);
        (k, i)
    }

    #[test]
    fn subkeys_differ_by_purpose() {
        let wk = WorkspaceKey::generate();
        let all = [Purpose::Chunk, Purpose::ChunkId, Purpose::Chunking, Purpose::Name, Purpose::Manifest];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(wk.subkey(*a).as_bytes(), wk.subkey(*b).as_bytes());
            }
        }
        assert_eq!(wk.subkey(Purpose::Name).as_bytes(), wk.subkey(Purpose::Name).as_bytes());
    }

    #[test]
    fn a_wrapped_key_opens_only_for_its_recipient_workspace_and_epoch() {
        let (ak, ai) = user(&ALICE, "alice@x.org");
        let (bk, bi) = user(&BOB, "bob@x.org");
        let wk = WorkspaceKey::generate();
        let rec = WrappedKeyRecord::make(&wk, &WS, 3, &BOB, &bi, &ALICE, &ak).expect("wrap");
        let opened = rec.open(&ai, &BOB, &bk, &bi).expect("bob opens");
        assert_eq!(opened.subkey(Purpose::Chunk).as_bytes(), wk.subkey(Purpose::Chunk).as_bytes());
        assert!(unwrap(&rec.blob, &WS, 4, &BOB, &bk, &bi).is_err(), "another epoch");
        assert!(unwrap(&rec.blob, &[8; 16], 3, &BOB, &bk, &bi).is_err(), "another workspace");
        assert!(rec.open(&ai, &ALICE, &ak, &ai).is_err(), "alice is not the recipient");
    }

    #[test]
    fn a_server_cannot_replace_a_wrapped_key_or_a_members_public_key() {
        let (ak, ai) = user(&ALICE, "alice@x.org");
        let (bk, bi) = user(&BOB, "bob@x.org");
        let wk = WorkspaceKey::generate();
        let honest = WrappedKeyRecord::make(&wk, &WS, 1, &BOB, &bi, &ALICE, &ak).expect("wrap");

        // The server wraps a key of its own to bob and keeps alice's signature: the signature fails.
        let own = WorkspaceKey::generate();
        let swapped = WrappedKeyRecord { blob: wrap(&own, &WS, 1, &BOB, &bi).expect("wrap"), ..honest.clone() };
        assert!(matches!(swapped.open(&ai, &BOB, &bk, &bi), Err(CryptoError::Signature)));
        // ... or signs the record itself, as a key pair it made: bob checks against the alice he knows.
        let (mk, _mi) = user(&ALICE, "alice@x.org");
        let forged = WrappedKeyRecord::make(&own, &WS, 1, &BOB, &bi, &ALICE, &mk).expect("forge");
        assert!(matches!(forged.open(&ai, &BOB, &bk, &bi), Err(CryptoError::Signature)));

        // The server gave alice its own public key as bob's: alice wraps to it, and signs that.
        let (sk, si) = user(&BOB, "bob@x.org");
        let to_server = WrappedKeyRecord::make(&wk, &WS, 1, &BOB, &si, &ALICE, &ak).expect("wrap");
        assert!(to_server.open(&ai, &BOB, &sk, &si).is_ok(), "the server can open what was wrapped to its key");
        // Bob (and every member who knows bob's identity) sees the record names another identity.
        assert!(matches!(to_server.open(&ai, &BOB, &bk, &bi), Err(CryptoError::InvalidKey(_))));
        assert_ne!(to_server.recipient_identity, bi.to_bytes(), "members comparing fingerprints see the substitution");

        // A blob moved to another recipient's record does not open for them.
        let (ck, ci) = user(&[3; 16], "carol@x.org");
        let moved = WrappedKeyRecord { recipient: [3; 16], recipient_identity: ci.to_bytes(), ..honest };
        assert!(moved.open(&ai, &[3; 16], &ck, &ci).is_err());
    }

    #[test]
    fn records_round_trip_and_malformed_ones_are_refused() {
        let (ak, _ai) = user(&ALICE, "alice@x.org");
        let (_bk, bi) = user(&BOB, "bob@x.org");
        let rec = WrappedKeyRecord::make(&WorkspaceKey::generate(), &WS, 2, &BOB, &bi, &ALICE, &ak).expect("wrap");
        let b = rec.to_bytes();
        assert!(b.len() <= MAX_RECORD_BYTES);
        assert_eq!(WrappedKeyRecord::from_bytes(&b).expect("decode"), rec);
        for cut in [0, 10, b.len() / 2, b.len() - 1] {
            assert!(WrappedKeyRecord::from_bytes(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = b.clone();
        longer.push(1);
        assert!(WrappedKeyRecord::from_bytes(&longer).is_err());
        let mut lying = b.clone();
        let at = 16 + 4 + 16 + crate::e2ee::IDENTITY_LEN;
        lying[at..at + 2].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(WrappedKeyRecord::from_bytes(&lying).is_err(), "a blob length past the end");
    }

    #[test]
    fn padme_rounds_up_a_little_and_hides_low_bits() {
        assert_eq!(padme(0), 0);
        assert_eq!(padme(1), 1);
        assert_eq!(padme(1000), 1024);
        let mut distinct = std::collections::BTreeSet::new();
        for len in 1..=200_000u64 {
            let p = padme(len);
            assert!(p >= len, "{len}");
            assert!((p - len) * 100 <= len * 12 + 100, "overhead for {len}: {p}");
            distinct.insert(p);
        }
        assert!(distinct.len() < 3000, "{} distinct sizes for 200,000 lengths", distinct.len());
        assert!(padme(64 * 1024 + 1) - (64 * 1024 + 1) < 64 * 1024 / 8);
    }
}
