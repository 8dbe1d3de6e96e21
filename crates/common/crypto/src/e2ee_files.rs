//! Files of end-to-end encrypted workspaces (RFC 0004, "Files"): how a client seals a file's chunks and its
//! manifest so that the server stores them without learning contents, names or chunk lists, and so that
//! whatever the server changes is caught by the client that reads them.
//!
//! - **Chunks** are sealed deterministically (convergent encryption under a workspace secret): the AES-256
//!   key of a chunk is derived from the epoch's chunk key and the chunk's content id, so equal chunks seal to
//!   equal bytes and still deduplicate inside the workspace (and only there; the server cannot confirm a
//!   guessed chunk without the key). Each key seals exactly one plaintext, so the fixed nonce is never reused
//!   with different data. The plaintext is padded with zeros to its Padmé length before sealing.
//! - **Manifests** list each chunk (stored id, content id, length) in order with the file's path, size, content
//!   hash, a workspace counter and the author; they are signed by the author and sealed under the epoch's
//!   manifest key, bound to the workspace, the file's path id and the epoch. A manifest moved to another path,
//!   a chunk list swapped, reordered or cut short, or a manifest made by anyone but a member who may write,
//!   fails to open.
//! - **Small files** (1 byte to [`MAX_INLINE_BYTES`]) carry their content inside the sealed manifest and
//!   have no chunks: one stored object per version instead of two. The signature covers
//!   the content hash, and opening checks the content against it, so inline content is as bound as a chunk.
//! - **Path ids** are keyed hashes of the path under the name key of the first epoch (stable, so a file keeps
//!   its id and its history across key rotations).

use std::collections::BTreeMap;

use bytes::Bytes;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use zeroize::{Zeroize, Zeroizing};

use crate::e2ee::{PublicIdentity, UserKeys};
use crate::e2ee_workspace::{Purpose, WorkspaceKey, padme};
use crate::{CryptoError, SecretKey, aead, keyed_hash};

/// First byte of a sealed chunk.
const CHUNK_VERSION: u8 = 0x01;
/// First byte of a sealed manifest.
const MANIFEST_VERSION: u8 = 0x02;
const TAG_LEN: usize = 16;
/// Bytes a sealed chunk adds to its padded plaintext.
pub const CHUNK_OVERHEAD: usize = 1 + TAG_LEN;
/// The most chunks one file of an end-to-end encrypted workspace may have: its sealed manifest must fit in
/// one stored chunk (68 bytes a chunk; about 100 GB at the 1 MiB average chunk size).
pub const MAX_FILE_CHUNKS: usize = 100_000;
/// The longest path a manifest holds, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// The largest content a manifest carries inline (the file then has no chunks).
pub const MAX_INLINE_BYTES: usize = 128 * 1024;
const MANIFEST_MAGIC: &[u8] = b"cloudsync e2ee manifest v1\0";
/// The signed form of a manifest whose content is inline (same fields; no chunks).
const INLINE_MAGIC: &[u8] = b"cloudsync e2ee manifest v2\0";
const CHUNK_ENTRY_LEN: usize = 32 + 32 + 4;
const SIGNATURE_LEN: usize = 64;

/// One chunk of a file, as its manifest lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedChunk {
    /// The id the server stores the sealed chunk under.
    pub stored_id: [u8; 32],
    /// Keyed hash of the plaintext (under the content key); the chunk's key is derived from it.
    pub content_id: [u8; 32],
    /// Plaintext length (before padding).
    pub len: u32,
}

impl SealedChunk {
    /// The length of the sealed chunk the server stores: the plaintext padded to its Padmé length, plus the
    /// seal.
    pub fn stored_len(&self) -> usize {
        padme(u64::from(self.len)) as usize + CHUNK_OVERHEAD
    }
}

/// What a manifest says about one version of a file.
#[derive(Clone, PartialEq, Eq)]
pub struct FileManifest {
    /// The file's path in the workspace.
    pub path: String,
    /// Plaintext size (the sum of the chunk lengths).
    pub size: u64,
    /// Keyed hash of the whole plaintext under the content key.
    pub content_hash: [u8; 32],
    /// Modification time the author's file had, in Unix milliseconds.
    pub mtime_ms: Option<i64>,
    /// Key epoch the chunks and the manifest are sealed with.
    pub epoch: u32,
    /// The workspace counter: one more than the highest the author had seen, so a reader that saw a newer
    /// manifest of this path refuses an older one (rollback).
    pub counter: u64,
    /// Account id of the author, who signs the manifest.
    pub author: [u8; 16],
    /// The chunks in order (none when the content is inline).
    pub chunks: Vec<SealedChunk>,
    /// The whole content, for a small file whose manifest carries it (then `chunks` is empty). `None` for
    /// a file stored as chunks, and for a manifest whose inline content was not kept (a manifest with a
    /// non-zero size and no chunks: see [`FileManifest::is_inline`]).
    pub inline: Option<Bytes>,
}

impl std::fmt::Debug for FileManifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the inline content: it is a file's plaintext.
        f.debug_struct("FileManifest")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("epoch", &self.epoch)
            .field("counter", &self.counter)
            .field("chunks", &self.chunks.len())
            .field("inline", &self.inline.as_ref().map(Bytes::len))
            .finish_non_exhaustive()
    }
}

impl FileManifest {
    /// Whether the file's content is inside its manifest (held in `inline`, or left out of a kept copy).
    pub fn is_inline(&self) -> bool {
        self.inline.is_some() || (self.size > 0 && self.chunks.is_empty())
    }
}

/// One epoch's keys for files.
struct EpochKeys {
    chunk: SecretKey,
    manifest: SecretKey,
    chunking: SecretKey,
}

/// The keys of one end-to-end encrypted workspace's files, for every epoch the member holds.
pub struct FileKeys {
    ws: [u8; 16],
    name: SecretKey,
    content: SecretKey,
    epochs: BTreeMap<u32, EpochKeys>,
    current: u32,
}

impl std::fmt::Debug for FileKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileKeys").field("epochs", &self.epochs.len()).field("current", &self.current).finish()
    }
}

impl FileKeys {
    /// The keys derived from the workspace keys by epoch. New files are sealed with the latest epoch, paths
    /// and content ids use the first (epoch 0), which every member holds.
    ///
    /// # Errors
    /// [`CryptoError::InvalidKey`] without epoch 0.
    pub fn new(ws: [u8; 16], keys: &BTreeMap<u32, WorkspaceKey>) -> Result<Self, CryptoError> {
        let first = keys.get(&0).ok_or(CryptoError::InvalidKey("the workspace key of epoch 0 is missing"))?;
        let epochs = keys
            .iter()
            .map(|(e, k)| {
                let keys = EpochKeys {
                    chunk: k.subkey(Purpose::Chunk),
                    manifest: k.subkey(Purpose::Manifest),
                    chunking: k.subkey(Purpose::Chunking),
                };
                (*e, keys)
            })
            .collect::<BTreeMap<_, _>>();
        let current = epochs.keys().next_back().copied().unwrap_or(0);
        Ok(Self { ws, name: first.subkey(Purpose::Name), content: first.subkey(Purpose::ChunkId), epochs, current })
    }

    /// The epoch new content is sealed with.
    pub fn current_epoch(&self) -> u32 {
        self.current
    }

    /// The key of content ids and whole-file content hashes.
    pub fn content_key(&self) -> &SecretKey {
        &self.content
    }

    /// The secret that keys the chunker's boundaries in the current epoch.
    pub fn chunking_secret(&self) -> &SecretKey {
        &self.current_keys().chunking
    }

    fn current_keys(&self) -> &EpochKeys {
        match self.epochs.get(&self.current) {
            Some(k) => k,
            None => unreachable!("the current epoch is one of the epochs held"),
        }
    }

    /// The id the server knows a path by: a keyed hash of the path, so it learns neither the name nor which
    /// files share a folder.
    pub fn path_id(&self, path: &str) -> [u8; 32] {
        keyed_hash(&self.name, path.as_bytes())
    }

    /// The content id of a chunk's plaintext.
    pub fn content_id(&self, plain: &[u8]) -> [u8; 32] {
        keyed_hash(&self.content, plain)
    }

    /// Seals one chunk's plaintext whose content id is `content_id`, in the current epoch.
    pub fn seal_chunk(&self, content_id: &[u8; 32], plain: &[u8]) -> Vec<u8> {
        let keys = self.current_keys();
        let padded = padme(plain.len() as u64) as usize;
        let mut out = Vec::with_capacity(CHUNK_OVERHEAD + padded);
        out.push(CHUNK_VERSION);
        out.extend_from_slice(plain);
        out.resize(1 + padded, 0);
        let aes = chunk_cipher(&keys.chunk, content_id);
        let aad = chunk_aad(&self.ws, self.current, content_id);
        match aes.seal_in_place_separate_tag(Nonce::assume_unique_for_key([0; 12]), Aad::from(&aad), &mut out[1..]) {
            Ok(tag) => out.extend_from_slice(tag.as_ref()),
            Err(_) => unreachable!("a chunk is far below the AES-GCM message limit"),
        }
        out
    }

    /// Opens a chunk the manifest lists, sealed in `epoch`: checks the stored length, the seal, the padding
    /// and that the plaintext hashes to its content id (so a chunk swapped for another fails).
    ///
    /// # Errors
    /// [`CryptoError::Decrypt`] for anything that does not check out, [`CryptoError::InvalidKey`] for an epoch
    /// this member holds no key of.
    pub fn open_chunk(&self, epoch: u32, chunk: &SealedChunk, blob: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let keys = self.epochs.get(&epoch).ok_or(CryptoError::InvalidKey("a chunk of a key epoch you do not hold"))?;
        let len = chunk.len as usize;
        let padded = chunk.stored_len() - CHUNK_OVERHEAD;
        if blob.len() != chunk.stored_len() || blob.first() != Some(&CHUNK_VERSION) {
            return Err(CryptoError::Decrypt);
        }
        let (body, tag) = blob[1..].split_at(padded);
        let mut plain = body.to_vec();
        let tag = Tag::try_from(tag).map_err(|_| CryptoError::Decrypt)?;
        let aes = chunk_cipher(&keys.chunk, &chunk.content_id);
        let aad = chunk_aad(&self.ws, epoch, &chunk.content_id);
        if aes
            .open_in_place_separate_tag(Nonce::assume_unique_for_key([0; 12]), Aad::from(&aad), tag, &mut plain, 0..)
            .is_err()
        {
            plain.zeroize();
            return Err(CryptoError::Decrypt);
        }
        if plain[len..].iter().any(|&b| b != 0) || !crate::ct_eq(&self.content_id(&plain[..len]), &chunk.content_id) {
            plain.zeroize();
            return Err(CryptoError::Decrypt);
        }
        plain.truncate(len);
        Ok(plain)
    }

    /// Signs `m` as `signer` (who must be `m.author`) and seals it for the file at its path, in the epoch it
    /// names. Inline content must hash (with [`Self::content_id`]) to `m.content_hash`: readers refuse it
    /// otherwise.
    ///
    /// # Errors
    /// [`CryptoError::InvalidKey`] for a manifest that cannot be written (too many chunks, a path too long, an
    /// epoch not held, sizes that do not add up).
    pub fn seal_manifest(&self, m: &FileManifest, signer: &UserKeys) -> Result<Vec<u8>, CryptoError> {
        // Inline content must be what the signed hash says (the caller hashed it with [`Self::content_id`]), or
        // every reader refuses the version; checked in debug builds only, since it is a second pass over the
        // content of every small file pushed.
        debug_assert!(
            m.inline.as_ref().is_none_or(|c| self.content_id(c) == m.content_hash),
            "inline content that does not match its content hash"
        );
        if m.is_inline() && m.inline.is_none() {
            return Err(CryptoError::InvalidKey("a small file's manifest without its content cannot be sealed"));
        }
        self.seal_unchecked(m, signer)
    }

    /// [`Self::seal_manifest`] without the debug check of inline content (tests make forgeries with it).
    fn seal_unchecked(&self, m: &FileManifest, signer: &UserKeys) -> Result<Vec<u8>, CryptoError> {
        let keys =
            self.epochs.get(&m.epoch).ok_or(CryptoError::InvalidKey("a manifest of a key epoch you do not hold"))?;
        let path_id = self.path_id(&m.path);
        let signed = Zeroizing::new(manifest_bytes(&self.ws, &path_id, m)?);
        let signature = signer.sign(&signed);
        let inner = signed.len() + SIGNATURE_LEN;
        let inline = m.inline.as_deref().unwrap_or_default();
        let len = padme((4 + inner + inline.len()) as u64) as usize;
        let mut out = vec![MANIFEST_VERSION];
        out.extend_from_slice(&m.epoch.to_be_bytes());
        // The body is written where it is encrypted: no plaintext copy is left to wipe.
        aead::seal_written(&keys.manifest, &manifest_aad(&self.ws, &path_id, m.epoch), len, &mut out, |body| {
            let at = body.len();
            body.extend_from_slice(&(inner as u32).to_be_bytes());
            body.extend_from_slice(&signed);
            body.extend_from_slice(&signature);
            // Inline content follows the signature; the signed content hash binds it.
            body.extend_from_slice(inline);
            body.resize(at + len, 0);
        });
        Ok(out)
    }

    /// Opens the manifest the server keeps for the file with id `path_id`: checks the seal, that it names this
    /// workspace, this path id (the path inside must hash to it) and its epoch, and that its author is a member
    /// who may write in that epoch (`writer` answers their identity, or `None`) and signed it.
    ///
    /// # Errors
    /// [`CryptoError::Decrypt`] for a seal that does not open, [`CryptoError::Signature`] for a bad signature,
    /// [`CryptoError::InvalidKey`] for anything else that does not check out (the message says what).
    pub fn open_manifest(
        &self,
        path_id: &[u8; 32],
        blob: &[u8],
        writer: impl Fn(&[u8; 16], u32) -> Option<PublicIdentity>,
    ) -> Result<FileManifest, CryptoError> {
        self.open_manifest_inner(path_id, blob, writer, true)
    }

    /// As [`Self::open_manifest`], for a blob byte-identical to one whose signature this device verified
    /// before (the caller knows it by its chunk id, a collision-resistant hash of the blob): every check but
    /// the signature's, which would give the same answer again, is made.
    ///
    /// # Errors
    /// As [`Self::open_manifest`].
    pub fn open_manifest_verified_before(
        &self,
        path_id: &[u8; 32],
        blob: &[u8],
        writer: impl Fn(&[u8; 16], u32) -> Option<PublicIdentity>,
    ) -> Result<FileManifest, CryptoError> {
        self.open_manifest_inner(path_id, blob, writer, false)
    }

    /// Checks that `m` (opened, or read back from [`Self::manifest_record`]) is filed under its own path id
    /// `path_id` and written by someone who could write in its epoch (`writer` answers their identity, or
    /// `None`); returns that identity.
    ///
    /// # Errors
    /// [`CryptoError::InvalidKey`] saying which does not hold.
    pub fn check_filed(
        &self,
        path_id: &[u8; 32],
        m: &FileManifest,
        writer: impl Fn(&[u8; 16], u32) -> Option<PublicIdentity>,
    ) -> Result<PublicIdentity, CryptoError> {
        if !crate::ct_eq(&self.path_id(&m.path), path_id) {
            return Err(CryptoError::InvalidKey("a manifest filed under another path than its own"));
        }
        writer(&m.author, m.epoch)
            .ok_or(CryptoError::InvalidKey("a manifest by someone who could not write in that epoch"))
    }

    /// What a device keeps of a manifest it verified or made: its signed form, without signature or inline
    /// content (read back with [`Self::parse_manifest_record`]).
    ///
    /// # Errors
    /// As [`Self::seal_manifest`], for a manifest that could not be sealed.
    pub fn manifest_record(&self, m: &FileManifest) -> Result<Vec<u8>, CryptoError> {
        manifest_bytes(&self.ws, &self.path_id(&m.path), m)
    }

    /// A manifest kept by [`Self::manifest_record`] in this workspace. Inline content is not in it:
    /// [`FileManifest::is_inline`] still says where the content is.
    ///
    /// # Errors
    /// [`CryptoError::InvalidKey`] for bytes that are no such record of this workspace.
    pub fn parse_manifest_record(&self, b: &[u8]) -> Result<FileManifest, CryptoError> {
        // The path id and epoch follow the magic and the workspace id; parsing checks them against themselves
        // and everything else as for a sealed manifest.
        let at = MANIFEST_MAGIC.len() + 16;
        let (Some(path_id), Some(epoch)) = (b.get(at..at + 32), b.get(at + 32..at + 36)) else {
            return Err(CryptoError::InvalidKey("a malformed manifest"));
        };
        let path_id: [u8; 32] = path_id.try_into().map_err(|_| CryptoError::InvalidKey("a malformed manifest"))?;
        let epoch = u32::from_be_bytes([epoch[0], epoch[1], epoch[2], epoch[3]]);
        parse_manifest(&self.ws, &path_id, epoch, b)
    }

    /// Opens many manifests (path id, sealed blob) as [`Self::open_manifest`] opens one, checking their
    /// signatures together ([`crate::e2ee::verify_messages`]); the result for each, in order.
    pub fn open_manifests(
        &self,
        items: &[(&[u8; 32], &[u8])],
        writer: impl Fn(&[u8; 16], u32) -> Option<PublicIdentity>,
    ) -> Vec<Result<FileManifest, CryptoError>> {
        let opened: Vec<_> = items.iter().map(|(path_id, blob)| self.open_unverified(path_id, blob, &writer)).collect();
        let signed: Vec<(&PublicIdentity, &[u8], &[u8; 64])> =
            opened.iter().filter_map(|o| o.as_ref().ok()).map(|o| (&o.signer, &o.signed[..], &o.signature)).collect();
        let mut checks = crate::e2ee::verify_messages(&signed).into_iter();
        opened
            .into_iter()
            .map(|o| {
                let o = o?;
                checks.next().unwrap_or(Err(CryptoError::Signature))?;
                Ok(o.manifest)
            })
            .collect()
    }

    fn open_manifest_inner(
        &self,
        path_id: &[u8; 32],
        blob: &[u8],
        writer: impl Fn(&[u8; 16], u32) -> Option<PublicIdentity>,
        check_signature: bool,
    ) -> Result<FileManifest, CryptoError> {
        let o = self.open_unverified(path_id, blob, writer)?;
        if check_signature {
            o.signer.verify_message(&o.signed, &o.signature)?;
        }
        Ok(o.manifest)
    }

    /// A sealed manifest opened and checked, but for its signature: what [`Self::open_manifest`] checks the
    /// signature with.
    fn open_unverified(
        &self,
        path_id: &[u8; 32],
        blob: &[u8],
        writer: impl Fn(&[u8; 16], u32) -> Option<PublicIdentity>,
    ) -> Result<Unverified, CryptoError> {
        if blob.len() < 5 || blob[0] != MANIFEST_VERSION {
            return Err(CryptoError::InvalidKey("not a sealed manifest"));
        }
        let epoch = u32::from_be_bytes([blob[1], blob[2], blob[3], blob[4]]);
        let keys =
            self.epochs.get(&epoch).ok_or(CryptoError::InvalidKey("a manifest of a key epoch you do not hold"))?;
        let mut body = aead::open(&keys.manifest, &manifest_aad(&self.ws, path_id, epoch), &blob[5..])?;
        let parsed = parse_sealed_body(&body).and_then(|(signed, signature, rest)| {
            let m = parse_manifest(&self.ws, path_id, epoch, signed)?;
            let inline_len = if signed.starts_with(INLINE_MAGIC) { m.size as usize } else { 0 };
            if rest.len() < inline_len || rest[inline_len..].iter().any(|&b| b != 0) {
                return Err(CryptoError::InvalidKey("a malformed manifest"));
            }
            let at = body.len() - rest.len();
            if inline_len > 0 && !crate::ct_eq(&self.content_id(&rest[..inline_len]), &m.content_hash) {
                return Err(CryptoError::InvalidKey("a manifest whose inline content is not what it signed"));
            }
            let signer = self.check_filed(path_id, &m, writer)?;
            let signed = Zeroizing::new(signed.to_vec());
            Ok((Unverified { manifest: m, signer, signed, signature: *signature }, at..at + inline_len))
        });
        match parsed {
            Ok((mut opened, inline)) if inline.len() >= body.len() / 2 => {
                // The body becomes the manifest's copy of the content (not copied again); what is around it
                // (the signed part, the padding) is wiped.
                body[..inline.start].zeroize();
                body[inline.end..].zeroize();
                opened.manifest.inline = Some(Bytes::from(body).slice(inline));
                Ok(opened)
            }
            Ok((mut opened, inline)) if !inline.is_empty() => {
                // Content much smaller than its body is copied out, so what it holds on to is its own size.
                opened.manifest.inline = Some(Bytes::copy_from_slice(&body[inline]));
                body.zeroize();
                Ok(opened)
            }
            other => {
                body.zeroize();
                other.map(|(opened, _)| opened)
            }
        }
    }
}

/// A manifest opened, its signature not yet checked: the signer, the signed bytes and the signature.
struct Unverified {
    manifest: FileManifest,
    signer: PublicIdentity,
    signed: Zeroizing<Vec<u8>>,
    signature: [u8; 64],
}

fn chunk_cipher(chunk_key: &SecretKey, content_id: &[u8; 32]) -> LessSafeKey {
    let mut material = [0u8; 32 + 28];
    material[..28].copy_from_slice(b"cloudsync e2ee chunk key v1\0");
    material[28..].copy_from_slice(content_id);
    let mut key = keyed_hash(chunk_key, &material);
    let aes = match UnboundKey::new(&AES_256_GCM, &key) {
        Ok(k) => LessSafeKey::new(k),
        Err(_) => unreachable!("32 bytes are always an AES-256 key"),
    };
    key.zeroize();
    aes
}

fn chunk_aad(ws: &[u8; 16], epoch: u32, content_id: &[u8; 32]) -> Vec<u8> {
    let mut aad = b"cloudsync e2ee chunk v1\0".to_vec();
    aad.extend_from_slice(ws);
    aad.extend_from_slice(&epoch.to_be_bytes());
    aad.extend_from_slice(content_id);
    aad
}

fn manifest_aad(ws: &[u8; 16], path_id: &[u8; 32], epoch: u32) -> Vec<u8> {
    let mut aad = b"cloudsync e2ee manifest seal v1\0".to_vec();
    aad.extend_from_slice(ws);
    aad.extend_from_slice(path_id);
    aad.extend_from_slice(&epoch.to_be_bytes());
    aad
}

/// The signed form of a manifest (a copy whose inline content was left out keeps the inline form).
fn manifest_bytes(ws: &[u8; 16], path_id: &[u8; 32], m: &FileManifest) -> Result<Vec<u8>, CryptoError> {
    let inline_len = match &m.inline {
        Some(content) => Some(content.len() as u64),
        None => m.is_inline().then_some(m.size),
    };
    check_shape(m, inline_len)?;
    let mut out = Vec::with_capacity(200 + m.path.len() + m.chunks.len() * CHUNK_ENTRY_LEN);
    out.extend_from_slice(if inline_len.is_some() { INLINE_MAGIC } else { MANIFEST_MAGIC });
    out.extend_from_slice(ws);
    out.extend_from_slice(path_id);
    out.extend_from_slice(&m.epoch.to_be_bytes());
    out.extend_from_slice(&m.counter.to_be_bytes());
    out.extend_from_slice(&m.author);
    out.extend_from_slice(&m.size.to_be_bytes());
    out.extend_from_slice(&m.content_hash);
    match m.mtime_ms {
        Some(t) => {
            out.push(1);
            out.extend_from_slice(&t.to_be_bytes());
        }
        None => out.extend_from_slice(&[0; 9]),
    }
    out.extend_from_slice(&(m.path.len() as u16).to_be_bytes());
    out.extend_from_slice(m.path.as_bytes());
    out.extend_from_slice(&(m.chunks.len() as u32).to_be_bytes());
    for c in &m.chunks {
        out.extend_from_slice(&c.stored_id);
        out.extend_from_slice(&c.content_id);
        out.extend_from_slice(&c.len.to_be_bytes());
    }
    Ok(out)
}

/// What every manifest must hold to: limits, and a size its chunks (or its inline content, of `inline_len`
/// bytes) add up to.
fn check_shape(m: &FileManifest, inline_len: Option<u64>) -> Result<(), CryptoError> {
    if m.chunks.len() > MAX_FILE_CHUNKS {
        return Err(CryptoError::InvalidKey("a file of an end-to-end encrypted workspace has at most 100,000 chunks"));
    }
    if m.path.is_empty() || m.path.len() > MAX_PATH_BYTES {
        return Err(CryptoError::InvalidKey("a manifest's path must be 1 to 4096 bytes"));
    }
    match inline_len {
        Some(len) => {
            if !m.chunks.is_empty() || len == 0 || len > MAX_INLINE_BYTES as u64 {
                return Err(CryptoError::InvalidKey("a manifest's inline content must be 1 byte to 128 KiB, alone"));
            }
            if len != m.size {
                return Err(CryptoError::InvalidKey("a manifest's inline content must be its size"));
            }
        }
        None => {
            if m.chunks.iter().map(|c| u64::from(c.len)).sum::<u64>() != m.size || m.chunks.iter().any(|c| c.len == 0) {
                return Err(CryptoError::InvalidKey(
                    "a manifest's chunk lengths must be non-zero and add up to its size",
                ));
            }
        }
    }
    Ok(())
}

/// A decrypted manifest body: signed bytes, signature, and what follows them.
type SealedBody<'a> = (&'a [u8], &'a [u8; 64], &'a [u8]);

/// Splits a decrypted manifest body into the signed bytes, the signature, and what follows (inline content,
/// then zero padding, which the caller checks).
fn parse_sealed_body(body: &[u8]) -> Result<SealedBody<'_>, CryptoError> {
    let bad = || CryptoError::InvalidKey("a malformed manifest");
    let (len, rest) = body.split_first_chunk::<4>().ok_or_else(bad)?;
    let len = u32::from_be_bytes(*len) as usize;
    if len < SIGNATURE_LEN || len > rest.len() {
        return Err(bad());
    }
    let (signed, signature) = rest[..len].split_at(len - SIGNATURE_LEN);
    let signature: &[u8; 64] = signature.try_into().map_err(|_| bad())?;
    Ok((signed, signature, &rest[len..]))
}

fn parse_manifest(ws: &[u8; 16], path_id: &[u8; 32], epoch: u32, b: &[u8]) -> Result<FileManifest, CryptoError> {
    let bad = || CryptoError::InvalidKey("a malformed manifest");
    let mut r = b;
    let mut take = |n: usize| -> Result<&[u8], CryptoError> {
        if r.len() < n {
            return Err(bad());
        }
        let (head, tail) = r.split_at(n);
        r = tail;
        Ok(head)
    };
    let inline = match take(MANIFEST_MAGIC.len())? {
        m if m == MANIFEST_MAGIC => false,
        m if m == INLINE_MAGIC => true,
        _ => return Err(bad()),
    };
    if take(16)? != ws {
        return Err(CryptoError::InvalidKey("a manifest of another workspace"));
    }
    if take(32)? != path_id {
        return Err(CryptoError::InvalidKey("a manifest filed under another path than its own"));
    }
    let be32 = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
    let be64 = |s: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_be_bytes(a)
    };
    if be32(take(4)?) != epoch {
        return Err(CryptoError::InvalidKey("a manifest sealed in another epoch than it names"));
    }
    let counter = be64(take(8)?);
    let mut author = [0u8; 16];
    author.copy_from_slice(take(16)?);
    let size = be64(take(8)?);
    let mut content_hash = [0u8; 32];
    content_hash.copy_from_slice(take(32)?);
    let has_mtime = take(1)?[0];
    let mtime = be64(take(8)?) as i64;
    let mtime_ms = match has_mtime {
        0 => None,
        1 => Some(mtime),
        _ => return Err(bad()),
    };
    let path_len = take(2)?;
    let path_len = usize::from(u16::from_be_bytes([path_len[0], path_len[1]]));
    let path = String::from_utf8(take(path_len)?.to_vec()).map_err(|_| bad())?;
    let n = be32(take(4)?) as usize;
    if n > MAX_FILE_CHUNKS {
        return Err(bad());
    }
    let mut chunks = Vec::with_capacity(n);
    for _ in 0..n {
        let e = take(CHUNK_ENTRY_LEN)?;
        let mut c = SealedChunk { stored_id: [0; 32], content_id: [0; 32], len: be32(&e[64..]) };
        c.stored_id.copy_from_slice(&e[..32]);
        c.content_id.copy_from_slice(&e[32..64]);
        chunks.push(c);
    }
    // Nothing may follow the last chunk.
    if take(1).is_ok() {
        return Err(bad());
    }
    let m = FileManifest { path, size, content_hash, mtime_ms, epoch, counter, author, chunks, inline: None };
    // The same checks as sealing: sizes add up, limits hold. (Inline content, checked by the caller, stands in
    // for the chunks.)
    check_shape(&m, inline.then_some(size))?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WS: [u8; 16] = [9; 16];
    const ALICE: [u8; 16] = [1; 16];

    fn keys(epochs: u32) -> (BTreeMap<u32, WorkspaceKey>, FileKeys) {
        let raw: BTreeMap<u32, WorkspaceKey> = (0..epochs).map(|e| (e, WorkspaceKey::generate())).collect();
        let file_keys = FileKeys::new(WS, &raw).expect("keys");
        (raw, file_keys)
    }

    fn manifest(fk: &FileKeys, path: &str, parts: &[&[u8]]) -> (FileManifest, Vec<Vec<u8>>) {
        let mut chunks = Vec::new();
        let mut blobs = Vec::new();
        for p in parts {
            let content_id = fk.content_id(p);
            let blob = fk.seal_chunk(&content_id, p);
            chunks.push(SealedChunk {
                stored_id: crate::keyed_hash(&SecretKey::from_bytes([5; 32]), &blob),
                content_id,
                len: p.len() as u32,
            });
            blobs.push(blob);
        }
        let whole: Vec<u8> = parts.concat();
        let m = FileManifest {
            path: path.into(),
            size: whole.len() as u64,
            content_hash: fk.content_id(&whole),
            mtime_ms: Some(1_700_000_000_000),
            epoch: fk.current_epoch(),
            counter: 7,
            author: ALICE,
            chunks,
            inline: None,
        };
        (m, blobs)
    }

    #[test]
    fn chunks_seal_deterministically_pad_and_open_only_as_themselves() {
        let (_, fk) = keys(1);
        let data = b"hello, end-to-end world".repeat(50);
        let id = fk.content_id(&data);
        let blob = fk.seal_chunk(&id, &data);
        assert_eq!(blob, fk.seal_chunk(&id, &data), "equal chunks seal to equal bytes (dedup)");
        assert_eq!(blob.len(), CHUNK_OVERHEAD + padme(data.len() as u64) as usize);
        assert!(!blob.windows(5).any(|w| w == b"hello"), "no plaintext shows");
        let c = SealedChunk { stored_id: [0; 32], content_id: id, len: data.len() as u32 };
        assert_eq!(fk.open_chunk(0, &c, &blob).expect("open"), data);
        // Another workspace's keys, another chunk's id, a flipped bit, a wrong length: refused.
        let (_, other) = keys(1);
        assert!(other.open_chunk(0, &c, &blob).is_err());
        let other_data = b"another chunk".repeat(90);
        let other_blob = fk.seal_chunk(&fk.content_id(&other_data), &other_data);
        assert!(fk.open_chunk(0, &c, &other_blob).is_err(), "a swapped chunk is refused");
        let mut flipped = blob.clone();
        flipped[3] ^= 1;
        assert!(fk.open_chunk(0, &c, &flipped).is_err());
        let short = SealedChunk { len: c.len - 1, ..c };
        assert!(fk.open_chunk(0, &short, &blob).is_err(), "a truncated length is refused");
        assert!(fk.open_chunk(1, &c, &blob).is_err(), "an epoch not held is refused");
    }

    #[test]
    fn a_rotated_key_seals_differently_and_old_chunks_still_open() {
        let (mut raw, fk0) = keys(1);
        let data = vec![42u8; 3000];
        let id = fk0.content_id(&data);
        let old = fk0.seal_chunk(&id, &data);
        raw.insert(1, WorkspaceKey::generate());
        let fk1 = FileKeys::new(WS, &raw).expect("keys");
        assert_eq!(fk1.current_epoch(), 1);
        assert_eq!(fk1.content_id(&data), id, "content ids stay across epochs");
        assert_eq!(fk1.path_id("a/b.txt"), fk0.path_id("a/b.txt"), "path ids stay across epochs");
        assert_ne!(fk1.seal_chunk(&id, &data), old);
        let c = SealedChunk { stored_id: [0; 32], content_id: id, len: 3000 };
        assert_eq!(fk1.open_chunk(0, &c, &old).expect("old epoch"), data);
    }

    #[test]
    fn manifests_round_trip_and_bind_path_workspace_author_and_content() {
        let (_, fk) = keys(1);
        let alice = UserKeys::generate();
        let alice_id = alice.identity(&ALICE, "alice@example.com");
        let writer = |who: &[u8; 16], _e: u32| (who == &ALICE).then(|| alice_id.clone());
        let (m, _) = manifest(&fk, "docs/plan.txt", &[b"one", b"two two"]);
        let sealed = fk.seal_manifest(&m, &alice).expect("seal");
        assert!(!sealed.windows(4).any(|w| w == b"plan"), "the path does not show");
        let pid = fk.path_id("docs/plan.txt");
        assert_eq!(fk.open_manifest(&pid, &sealed, writer).expect("open"), m);

        // Filed under another path (the server moved it): refused.
        assert!(fk.open_manifest(&fk.path_id("other.txt"), &sealed, writer).is_err());
        // Signed by someone who may not write, or not by the author: refused.
        assert!(fk.open_manifest(&pid, &sealed, |_: &[u8; 16], _| None).is_err());
        let mallory = UserKeys::generate();
        let forged = fk.seal_manifest(&m, &mallory).expect("seal");
        assert!(matches!(fk.open_manifest(&pid, &forged, writer), Err(CryptoError::Signature)));
        // Another workspace's keys: refused.
        let (_, other) = keys(1);
        assert!(other.open_manifest(&pid, &sealed, writer).is_err());
        // A bit flipped anywhere: refused.
        for i in [0, 2, 10, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(fk.open_manifest(&pid, &bad, writer).is_err(), "byte {i}");
        }
    }

    #[test]
    fn manifests_opened_together_answer_as_each_opened_alone() {
        let (_, fk) = keys(1);
        let alice = UserKeys::generate();
        let alice_id = alice.identity(&ALICE, "alice@example.com");
        let writer = |who: &[u8; 16], _e: u32| (who == &ALICE).then(|| alice_id.clone());
        let paths: Vec<String> = (0..12).map(|i| format!("docs/{i}.txt")).collect();
        let manifests: Vec<FileManifest> = paths.iter().map(|p| manifest(&fk, p, &[p.as_bytes()]).0).collect();
        let mut sealed: Vec<Vec<u8>> = manifests.iter().map(|m| fk.seal_manifest(m, &alice).expect("seal")).collect();
        let mut pids: Vec<[u8; 32]> = paths.iter().map(|p| fk.path_id(p)).collect();
        let open = |pids: &[[u8; 32]], sealed: &[Vec<u8>]| {
            let items: Vec<(&[u8; 32], &[u8])> = pids.iter().zip(sealed).map(|(p, b)| (p, &b[..])).collect();
            let together = fk.open_manifests(&items, writer);
            for ((p, b), t) in items.iter().zip(&together) {
                assert_eq!(fk.open_manifest(p, b, writer).ok(), t.as_ref().ok().cloned());
            }
            together
        };
        let all = open(&pids, &sealed);
        assert_eq!(all.into_iter().map(|r| r.expect("open")).collect::<Vec<_>>(), manifests);

        // A forged signature, a manifest filed under another path and a flipped bit fail, each alone.
        sealed[2] = fk.seal_manifest(&manifests[2], &UserKeys::generate()).expect("seal");
        pids[5] = fk.path_id("elsewhere.txt");
        sealed[9][20] ^= 1;
        let results = open(&pids, &sealed);
        assert!(matches!(results[2], Err(CryptoError::Signature)));
        let failed: Vec<usize> = (0..results.len()).filter(|&i| results[i].is_err()).collect();
        assert_eq!(failed, [2, 5, 9]);
    }

    #[test]
    fn a_manifest_verified_before_is_still_bound_to_its_path_writer_and_keys() {
        let (_, fk) = keys(1);
        let alice = UserKeys::generate();
        let alice_id = alice.identity(&ALICE, "alice@example.com");
        let writer = |who: &[u8; 16], _e: u32| (who == &ALICE).then(|| alice_id.clone());
        let (m, _) = manifest(&fk, "docs/plan.txt", &[b"one"]);
        let sealed = fk.seal_manifest(&m, &alice).expect("seal");
        let pid = fk.path_id("docs/plan.txt");
        assert_eq!(fk.open_manifest_verified_before(&pid, &sealed, writer).expect("open"), m);
        // Only the signature is taken as checked: path, writer, keys and seal are checked again.
        assert!(fk.open_manifest_verified_before(&fk.path_id("other.txt"), &sealed, writer).is_err());
        assert!(fk.open_manifest_verified_before(&pid, &sealed, |_: &[u8; 16], _| None).is_err());
        let (_, other) = keys(1);
        assert!(other.open_manifest_verified_before(&pid, &sealed, writer).is_err());
        let mut bad = sealed.clone();
        bad[10] ^= 1;
        assert!(fk.open_manifest_verified_before(&pid, &bad, writer).is_err());
        // A forged signature passes only the path that skips the signature, which is why callers use it only
        // for blobs they verified before.
        let forged = fk.seal_manifest(&m, &UserKeys::generate()).expect("seal");
        assert!(fk.open_manifest(&pid, &forged, writer).is_err());
        assert!(fk.open_manifest_verified_before(&pid, &forged, writer).is_ok());
    }

    #[test]
    fn small_files_travel_inside_their_manifest_bound_by_the_signed_content_hash() {
        let (_, fk) = keys(1);
        let alice = UserKeys::generate();
        let alice_id = alice.identity(&ALICE, "alice@example.com");
        let writer = |who: &[u8; 16], _e: u32| (who == &ALICE).then(|| alice_id.clone());
        let content = b"a small secret file, kept inline".repeat(20);
        let (mut m, _) = manifest(&fk, "notes/todo.txt", &[&content]);
        m.chunks.clear();
        m.inline = Some(Bytes::from(content.clone()));
        assert!(m.is_inline());
        let sealed = fk.seal_manifest(&m, &alice).expect("seal");
        assert!(!sealed.windows(8).any(|w| w == b"a small "), "the content does not show");
        let pid = fk.path_id("notes/todo.txt");
        let opened = fk.open_manifest(&pid, &sealed, writer).expect("open");
        assert_eq!(opened, m);
        assert!(
            fk.open_manifest_verified_before(&pid, &sealed, writer).expect("open").inline
                == Some(Bytes::from(content.clone()))
        );
        // A manifest without its content (as a device keeps it) still says where the content is.
        assert!(FileManifest { inline: None, ..m.clone() }.is_inline());
        let record = fk.manifest_record(&m).expect("record");
        assert!(!record.windows(8).any(|w| w == b"a small "), "a kept record holds no content");
        let back = fk.parse_manifest_record(&record).expect("parse");
        assert!(back.inline.is_none() && back.is_inline());
        assert_eq!(FileManifest { inline: Some(Bytes::from(content.clone())), ..back.clone() }, m);
        assert!(fk.seal_manifest(&back, &alice).is_err(), "a copy without its content is never sealed");
        let (chunked, _) = manifest(&fk, "docs/plan.txt", &[b"one", b"two two"]);
        let record = fk.manifest_record(&chunked).expect("record");
        assert_eq!(fk.parse_manifest_record(&record).expect("parse"), chunked);
        let other_ws = FileKeys::new([8; 16], &keys(1).0).expect("keys");
        assert!(other_ws.parse_manifest_record(&record).is_err(), "another workspace's record");
        assert!(fk.parse_manifest_record(&record[..record.len() - 1]).is_err(), "a cut-off record");

        // Content that is not what the signed hash says (a member's bug, or a forgery): refused.
        let mut wrong = m.clone();
        wrong.content_hash = fk.content_id(b"other");
        let sealed_wrong = fk.seal_unchecked(&wrong, &alice).expect("seal");
        assert!(fk.open_manifest(&pid, &sealed_wrong, writer).is_err());
        // Inline content with chunks, of the wrong size, empty or too large: never sealed.
        let (with_chunks, _) = manifest(&fk, "x", &[&content]);
        assert!(
            fk.seal_manifest(&FileManifest { inline: Some(Bytes::from(content.clone())), ..with_chunks }, &alice)
                .is_err()
        );
        assert!(fk.seal_manifest(&FileManifest { size: 3, ..m.clone() }, &alice).is_err());
        assert!(
            fk.seal_manifest(
                &FileManifest { size: 0, inline: Some(Bytes::new()), content_hash: fk.content_id(b""), ..m.clone() },
                &alice
            )
            .is_err()
        );
        let big = vec![1u8; MAX_INLINE_BYTES + 1];
        let too_big = FileManifest {
            size: big.len() as u64,
            content_hash: fk.content_id(&big),
            inline: Some(Bytes::from(big)),
            ..m
        };
        assert!(fk.seal_manifest(&too_big, &alice).is_err());
    }

    #[test]
    fn manifests_refuse_what_does_not_add_up_and_pad_their_size() {
        let (_, fk) = keys(1);
        let alice = UserKeys::generate();
        let (mut m, _) = manifest(&fk, "a", &[b"xyz"]);
        m.size += 1;
        assert!(fk.seal_manifest(&m, &alice).is_err());
        let (short, _) = manifest(&fk, "a", &[b"x"]);
        let (long, _) = manifest(&fk, "abcdefghij", &[b"x"]);
        let a = fk.seal_manifest(&short, &alice).expect("seal");
        let b = fk.seal_manifest(&long, &alice).expect("seal");
        assert_eq!(a.len(), b.len(), "nearby lengths pad to the same size");
    }
}
