//! The chunk store: sealed chunks in any storage Apache OpenDAL reaches (local disk by default, S3-compatible
//! stores by configuration).
//!
//! Every chunk is sealed with AES-256-GCM under its workspace's data key before it leaves this crate, with the
//! workspace id and chunk id bound as associated data: sealed bytes moved to another chunk or workspace fail
//! to open, and the storage backend never holds plaintext.
//!
//! Chunks are written in **packs**: the chunks of one upload group (up to a few MiB) sealed one after another
//! in one object, `ws/<workspace>/p/<xx>/<pack id>`. A push of ten thousand small files then creates a few
//! dozen objects rather than ten thousand files (on a local disk, creating and renaming that many files
//! cost more than sealing and writing their bytes; on S3 it would be as many PUT requests). The metadata store
//! records where each chunk lives (pack, offset, sealed length), and a read is one ranged read. Chunks written
//! one object each (`ws/<workspace>/<xx>/<chunk id>`, by earlier versions) are still read.
//!
//! A pack is self-describing, so its contents can be listed without the metadata store (for checks and
//! repair): the magic `CSPACK1\n`, then per chunk its 32-byte id, its sealed length (u32, big-endian) and the
//! sealed bytes. Object keys carry the workspace id, so no request can address another workspace's chunks.
//!
//! Writes come in batches: [`BlobStore::stage`] seals a group of chunks into a pack and writes it under its
//! final, never reused name, without waiting for the disk (CPU and blocking I/O, for a blocking thread);
//! [`BlobStore::persist`] makes a whole batch of packs durable. Chunks may be recorded as stored only after
//! `persist` returned, so a recorded chunk's bytes are always durable. A crash before that leaves a pack
//! nobody refers to: it costs space, never correctness. On the local disk a batch costs one file-system
//! barrier (see `local.rs`); on other backends (S3 and the like, durable once a PUT is acknowledged) `persist`
//! writes the packs through OpenDAL.

mod local;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cloudsync_crypto::{SecretKey, aead};
use cloudsync_types::{ChunkId, WorkspaceId};
use futures_util::{StreamExt, TryStreamExt};
use opendal::{ErrorKind, Operator};

use crate::local::{LocalDisk, LocalPack};

/// Objects written at once by [`BlobStore::persist`] on a remote backend.
const REMOTE_WRITE_CONCURRENCY: usize = 8;
/// The first bytes of every pack.
pub const PACK_MAGIC: &[u8; 8] = b"CSPACK1\n";
/// Bytes before each sealed chunk in a pack: its id and its sealed length.
const ENTRY_HEADER: usize = 32 + 4;

/// A pack's name: random, never reused.
pub type PackId = [u8; 16];

/// Where a stored chunk's sealed bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// An object of its own (chunks written before packs).
    Object,
    /// `len` bytes at `offset` in pack `pack`.
    Packed {
        /// The pack.
        pack: PackId,
        /// Where the sealed chunk starts.
        offset: u64,
        /// The sealed length.
        len: u32,
    },
}

/// What went wrong in the chunk store.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// No such chunk.
    #[error("chunk {0} is not in the chunk store")]
    NotFound(String),
    /// The stored chunk does not open under the workspace key: it was altered, truncated or moved.
    #[error("chunk {0} failed its integrity check (altered, truncated or sealed under another key)")]
    Corrupt(String),
    /// The storage backend failed.
    #[error("chunk store error: {0}")]
    Backend(#[from] opendal::Error),
    /// Local setup failed.
    #[error("chunk store setup failed: {0}")]
    Setup(String),
    /// A local file operation failed: the step (as in "cannot {action} {path}") and the path it concerned.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or folder it was done to.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A blocking task of the chunk store panicked (or was cancelled at shutdown).
    #[error("a chunk store task did not finish: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// A pack staged by another kind of chunk store (local disk or remote backend) was handed to this one.
    #[error("pack {0} was staged by another chunk store and cannot be stored by this one")]
    Mismatch(String),
}

impl BlobError {
    /// True when retrying may help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, BlobError::Backend(e) if e.is_temporary())
    }
}

/// Sealed chunk storage.
#[derive(Debug, Clone)]
pub struct BlobStore {
    /// Deletes, and reads and writes of non-local backends.
    op: Operator,
    /// Batched durable writes and plain reads when the chunks live on the local disk.
    local: Option<Arc<LocalDisk>>,
}

/// One chunk of a staged pack, with what recording it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedChunk {
    /// The chunk.
    pub id: ChunkId,
    /// Its plaintext size.
    pub size: u32,
    /// The pack.
    pub pack: PackId,
    /// Where its sealed bytes start in the pack.
    pub offset: u64,
    /// Its sealed size.
    pub stored_size: u32,
}

impl PackedChunk {
    /// Where its sealed bytes are.
    pub fn place(&self) -> Place {
        Place::Packed { pack: self.pack, offset: self.offset, len: self.stored_size }
    }
}

/// A group of sealed chunks, staged by [`BlobStore::stage`] and not yet durable; hand it to
/// [`BlobStore::persist`]. Dropping it instead abandons it (a local pack file is removed).
#[derive(Debug)]
pub struct StagedPack {
    key: String,
    chunks: Vec<PackedChunk>,
    pending: Pending,
}

#[derive(Debug)]
enum Pending {
    /// Written to the local disk, not yet durable.
    Local(LocalPack),
    /// Sealed in memory, to be written to a remote backend.
    Remote(Vec<u8>),
}

impl StagedPack {
    /// The chunks in this pack and where each is.
    pub fn chunks(&self) -> &[PackedChunk] {
        &self.chunks
    }
}

fn aad(ws: WorkspaceId, id: &ChunkId) -> Vec<u8> {
    let mut v = Vec::with_capacity(19 + 16 + 32);
    v.extend_from_slice(b"cloudsync-chunk-v1\0");
    v.extend_from_slice(ws.as_uuid().as_bytes());
    v.extend_from_slice(&id.0);
    v
}

/// The object of a chunk stored on its own.
fn object_key(ws: WorkspaceId, id: &ChunkId) -> String {
    let hex = id.to_hex();
    format!("ws/{ws}/{}/{hex}", &hex[..2])
}

/// The folder of a workspace's packs.
fn packs_dir(ws: WorkspaceId) -> String {
    format!("ws/{ws}/p/")
}

/// The object of a pack.
fn pack_key(ws: WorkspaceId, pack: &PackId) -> String {
    let hex = hex::encode(pack);
    format!("{}{}/{hex}", packs_dir(ws), &hex[..2])
}

/// Seals `chunks` one after another into a pack (see the crate documentation), handing the pack's bytes to
/// `out` piece by piece (so a local pack is written without holding it all in memory), checking nothing.
/// Returns where each chunk went.
fn write_pack(
    key: &SecretKey,
    ws: WorkspaceId,
    pack: PackId,
    chunks: &[(ChunkId, &[u8])],
    out: &mut dyn FnMut(&[u8]) -> Result<(), BlobError>,
) -> Result<Vec<PackedChunk>, BlobError> {
    out(PACK_MAGIC)?;
    let mut at = PACK_MAGIC.len() as u64;
    let mut placed = Vec::with_capacity(chunks.len());
    let mut sealed = Vec::new();
    for (id, data) in chunks {
        sealed.clear();
        aead::seal_into(key, &aad(ws, id), data, &mut sealed);
        let len = u32::try_from(sealed.len()).map_err(|_| BlobError::Setup(format!("chunk {id} is too large")))?;
        let mut head = [0u8; ENTRY_HEADER];
        head[..32].copy_from_slice(&id.0);
        head[32..].copy_from_slice(&len.to_be_bytes());
        out(&head)?;
        out(&sealed)?;
        at += ENTRY_HEADER as u64;
        placed.push(PackedChunk {
            id: *id,
            size: u32::try_from(data.len()).unwrap_or(u32::MAX),
            pack,
            offset: at,
            stored_size: len,
        });
        at += u64::from(len);
    }
    Ok(placed)
}

/// The chunks listed in a pack's bytes, in order, with where each one's sealed bytes are; `None` when `bytes`
/// is not a whole pack.
pub fn read_pack_index(pack: PackId, bytes: &[u8]) -> Option<Vec<(ChunkId, Place)>> {
    let mut rest = bytes.strip_prefix(PACK_MAGIC.as_slice())?;
    let mut at = PACK_MAGIC.len() as u64;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (head, tail) = rest.split_at_checked(ENTRY_HEADER)?;
        let id = ChunkId(head[..32].try_into().ok()?);
        let len = u32::from_be_bytes(head[32..].try_into().ok()?);
        at += ENTRY_HEADER as u64;
        out.push((id, Place::Packed { pack, offset: at, len }));
        rest = tail.get(len as usize..)?;
        at += u64::from(len);
    }
    Some(out)
}

impl BlobStore {
    /// A chunk store on the local file system under `root`. Packs are written under their final names and
    /// made durable a batch at a time (see `local.rs`).
    ///
    /// # Errors
    /// When the directory cannot be created.
    pub fn local(root: &Path) -> Result<Self, BlobError> {
        std::fs::create_dir_all(root)
            .map_err(|e| BlobError::Setup(format!("cannot create {}: {e}", root.display())))?;
        let root_s = root
            .to_str()
            .ok_or_else(|| BlobError::Setup(format!("chunk directory {} is not valid UTF-8", root.display())))?;
        // Deletes only: local reads and writes go through `LocalDisk`.
        let op = Operator::new(opendal::services::Fs::default().root(root_s))?;
        Ok(Self { op, local: Some(Arc::new(LocalDisk::new(root.to_path_buf()))) })
    }

    /// A chunk store over any configured OpenDAL operator. Each pack is one object written through it; the
    /// backend must be durable once a write returns (as S3-compatible stores are) and serve ranged reads.
    pub fn from_operator(op: Operator) -> Self {
        Self { op, local: None }
    }

    /// Seals `chunks` (id and plaintext; the caller has checked the ids) into one new pack and stages it: on
    /// the local disk it is written (without waiting for the disk), elsewhere it is kept in memory. Nothing may
    /// be recorded before [`BlobStore::persist`]. Blocking (sealing and a file write): call it from a blocking
    /// thread.
    ///
    /// # Errors
    /// When the pack file cannot be written.
    pub fn stage(
        &self,
        key: &SecretKey,
        ws: WorkspaceId,
        chunks: &[(ChunkId, &[u8])],
    ) -> Result<StagedPack, BlobError> {
        let pack: PackId = cloudsync_crypto::random_bytes::<16>();
        let object = pack_key(ws, &pack);
        let (placed, pending) = match &self.local {
            Some(disk) => {
                let mut writer = disk.create_pack(&object)?;
                let placed = write_pack(key, ws, pack, chunks, &mut |b| writer.write(b))?;
                (placed, Pending::Local(writer.finish()?))
            }
            None => {
                let mut bytes = Vec::new();
                let placed = write_pack(key, ws, pack, chunks, &mut |b| {
                    bytes.extend_from_slice(b);
                    Ok(())
                })?;
                (placed, Pending::Remote(bytes))
            }
        };
        Ok(StagedPack { key: object, chunks: placed, pending })
    }

    /// Makes staged packs durable, as one batch. Only after this returns `Ok` may their chunks be recorded as
    /// stored. A chunk stored again (two uploads racing) sits in two packs; the metadata store keeps the first
    /// place recorded (unless garbage collection had condemned it: then the new place), and the other copy is
    /// never read.
    ///
    /// # Errors
    /// When the backend fails, or a pack was staged by another kind of chunk store (then nothing is written);
    /// then none of the chunks may be recorded (local pack files of the batch are removed).
    pub async fn persist(&self, packs: Vec<StagedPack>) -> Result<(), BlobError> {
        if packs.is_empty() {
            return Ok(());
        }
        if let Some(disk) = &self.local {
            let disk = disk.clone();
            let locals = packs
                .into_iter()
                .map(|p| match p.pending {
                    Pending::Local(l) => Ok(l),
                    Pending::Remote(_) => Err(BlobError::Mismatch(p.key)),
                })
                .collect::<Result<Vec<_>, _>>()?;
            return tokio::task::spawn_blocking(move || disk.persist(locals)).await.map_err(BlobError::Task)?;
        }
        let writes = packs
            .into_iter()
            .map(|p| match p.pending {
                Pending::Remote(bytes) => Ok((p.key, bytes)),
                Pending::Local(_) => Err(BlobError::Mismatch(p.key)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        futures_util::stream::iter(writes)
            .map(|(key, bytes)| async move { self.op.write(&key, bytes).await.map(drop) })
            .buffer_unordered(REMOTE_WRITE_CONCURRENCY)
            .try_collect::<()>()
            .await
            .map_err(BlobError::Backend)
    }

    /// Reads and opens chunk `id` of workspace `ws` at `place`, checking its integrity.
    ///
    /// # Errors
    /// `NotFound`, `Corrupt` (also when the bytes at `place` are another chunk's), or a backend failure.
    pub async fn get_chunk(
        &self,
        key: &SecretKey,
        ws: WorkspaceId,
        id: &ChunkId,
        place: Place,
    ) -> Result<Vec<u8>, BlobError> {
        let (path, range) = match place {
            Place::Object => (object_key(ws, id), None),
            Place::Packed { pack, offset, len } => (pack_key(ws, &pack), Some((offset, len))),
        };
        let buf = if let Some(disk) = &self.local {
            let disk = Arc::clone(disk);
            match tokio::task::spawn_blocking(move || disk.read(&path, range)).await.map_err(BlobError::Task)?? {
                Some(b) => b,
                None => return Err(BlobError::NotFound(id.to_hex())),
            }
        } else {
            let read = match range {
                None => self.op.read(&path).await,
                Some((offset, len)) => self.op.read_with(&path).range(offset..offset + u64::from(len)).await,
            };
            match read {
                Ok(b) => b.to_vec(),
                Err(e) if e.kind() == ErrorKind::NotFound => return Err(BlobError::NotFound(id.to_hex())),
                Err(e) => return Err(e.into()),
            }
        };
        aead::open(key, &aad(ws, id), &buf).map_err(|_| BlobError::Corrupt(id.to_hex()))
    }

    /// The packs of workspace `ws` in the chunk store, whether recorded or not (for garbage collection).
    ///
    /// # Errors
    /// When the backend fails.
    pub async fn list_packs(&self, ws: WorkspaceId) -> Result<Vec<PackId>, BlobError> {
        let entries = match self.op.list_with(&packs_dir(ws)).recursive(true).await {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        // Anything that is not named as a pack is not ours to judge, and is left alone.
        Ok(entries
            .iter()
            .filter(|e| e.metadata().mode().is_file())
            .filter_map(|e| hex::decode(e.name()).ok().and_then(|b| PackId::try_from(b).ok()))
            .collect())
    }

    /// A pack's size in bytes and when it was last written (Unix ms, if the backend says); `None` when it
    /// does not exist.
    ///
    /// # Errors
    /// When the backend fails.
    pub async fn pack_info(&self, ws: WorkspaceId, pack: &PackId) -> Result<Option<(u64, Option<i64>)>, BlobError> {
        match self.op.stat(&pack_key(ws, pack)).await {
            Ok(m) => {
                let modified = m.last_modified().map(|t| {
                    std::time::SystemTime::from(t)
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                });
                Ok(Some((m.content_length(), modified)))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes a pack (gone already is fine). Only for a pack no recorded chunk is in.
    ///
    /// # Errors
    /// When the backend fails.
    pub async fn delete_pack(&self, ws: WorkspaceId, pack: &PackId) -> Result<(), BlobError> {
        self.delete_key(&pack_key(ws, pack)).await
    }

    /// Deletes a chunk stored as an object of its own (gone already is fine). Only for a chunk no longer
    /// recorded.
    ///
    /// # Errors
    /// When the backend fails.
    pub async fn delete_object(&self, ws: WorkspaceId, id: &ChunkId) -> Result<(), BlobError> {
        self.delete_key(&object_key(ws, id)).await
    }

    async fn delete_key(&self, key: &str) -> Result<(), BlobError> {
        match self.op.delete(key).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes every chunk of a workspace (after its key is already destroyed).
    ///
    /// # Errors
    /// When the backend fails.
    pub async fn delete_workspace(&self, ws: WorkspaceId) -> Result<(), BlobError> {
        match self.op.delete_with(&format!("ws/{ws}/")).recursive(true).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("read_dir") {
                let p = e.expect("entry").path();
                if p.is_dir() { stack.push(p) } else { out.push(p) }
            }
        }
        out
    }

    #[tokio::test]
    async fn chunks_are_sealed_bound_and_deletable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::local(dir.path()).expect("store");
        let (ws, other) = (WorkspaceId::new(), WorkspaceId::new());
        let key = SecretKey::generate();
        let (id, id2) = (ChunkId([5; 32]), ChunkId([6; 32]));
        let plaintext = b"marker-6f1c2d plaintext that must never hit the disk".repeat(10);
        let staged = store.stage(&key, ws, &[(id, &plaintext), (id2, b"second chunk")]).expect("stage");
        let (place, place2) = (staged.chunks()[0].place(), staged.chunks()[1].place());
        assert_eq!(staged.chunks()[0].size as usize, plaintext.len());
        store.persist(vec![staged]).await.expect("put");
        assert_eq!(store.get_chunk(&key, ws, &id, place).await.expect("get"), plaintext);
        assert_eq!(store.get_chunk(&key, ws, &id2, place2).await.expect("get"), b"second chunk");

        // Nothing under the root holds the plaintext.
        for p in files_under(dir.path()) {
            let bytes = std::fs::read(&p).expect("read");
            assert!(!bytes.windows(13).any(|w| w == b"marker-6f1c2d"), "plaintext in {}", p.display());
        }

        // Wrong key, another workspace, another chunk's bytes, or a tampered pack all fail closed.
        assert!(matches!(store.get_chunk(&SecretKey::generate(), ws, &id, place).await, Err(BlobError::Corrupt(_))));
        assert!(matches!(store.get_chunk(&key, other, &id, place).await, Err(BlobError::NotFound(_))));
        assert!(matches!(store.get_chunk(&key, ws, &id, place2).await, Err(BlobError::Corrupt(_))), "swapped places");
        assert!(matches!(store.get_chunk(&key, ws, &id, Place::Object).await, Err(BlobError::NotFound(_))));
        let Place::Packed { pack, offset, len } = place else { panic!("packed") };
        let short = Place::Packed { pack, offset, len: len - 1 };
        assert!(matches!(store.get_chunk(&key, ws, &id, short).await, Err(BlobError::Corrupt(_))), "truncated");
        let path = dir.path().join(pack_key(ws, &pack));
        let mut raw = std::fs::read(&path).expect("raw");
        raw[usize::try_from(offset).expect("offset") + 20] ^= 1;
        std::fs::write(&path, raw).expect("tamper");
        assert!(matches!(store.get_chunk(&key, ws, &id, place).await, Err(BlobError::Corrupt(_))));
        assert_eq!(store.get_chunk(&key, ws, &id2, place2).await.expect("the other chunk"), b"second chunk");

        store.delete_workspace(ws).await.expect("delete");
        assert!(matches!(store.get_chunk(&key, ws, &id2, place2).await, Err(BlobError::NotFound(_))));
        store.delete_workspace(ws).await.expect("idempotent");
    }

    #[tokio::test]
    async fn chunks_stored_one_object_each_are_still_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::local(dir.path()).expect("store");
        let (ws, key, id) = (WorkspaceId::new(), SecretKey::generate(), ChunkId([9; 32]));
        let path = dir.path().join(object_key(ws, &id));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        std::fs::write(&path, aead::seal(&key, &aad(ws, &id), b"an older chunk")).expect("write");
        assert_eq!(store.get_chunk(&key, ws, &id, Place::Object).await.expect("get"), b"an older chunk");
    }

    async fn packs_are_self_describing_and_read_back(store: BlobStore) {
        let (ws, key) = (WorkspaceId::new(), SecretKey::generate());
        let chunks: Vec<(ChunkId, Vec<u8>)> =
            (0..50u8).map(|i| (ChunkId([i; 32]), vec![i; 100 + usize::from(i)])).collect();
        let refs: Vec<(ChunkId, &[u8])> = chunks.iter().map(|(id, d)| (*id, d.as_slice())).collect();
        let packs =
            vec![store.stage(&key, ws, &refs[..30]).expect("stage"), store.stage(&key, ws, &refs[30..]).expect("s")];
        let placed: Vec<PackedChunk> = packs.iter().flat_map(|p| p.chunks().to_vec()).collect();
        assert_eq!(placed.iter().map(|c| c.id).collect::<Vec<_>>(), chunks.iter().map(|c| c.0).collect::<Vec<_>>());
        // A pack ends where its last chunk's sealed bytes end.
        let keys: Vec<(String, u64)> = packs
            .iter()
            .map(|p| (p.key.clone(), p.chunks().last().map_or(0, |c| c.offset + u64::from(c.stored_size))))
            .collect();
        store.persist(packs).await.expect("persist");
        for (c, (_, data)) in placed.iter().zip(&chunks) {
            assert_eq!(&store.get_chunk(&key, ws, &c.id, c.place()).await.expect("get"), data);
        }
        // Each pack lists its own chunks and places.
        for ((k, len), range) in keys.iter().zip([0..30, 30..50]) {
            let bytes = store.op.read(k).await.expect("raw pack").to_vec();
            assert_eq!(bytes.len() as u64, *len);
            let pack = placed[range.start].pack;
            let index = read_pack_index(pack, &bytes).expect("a whole pack");
            let expected: Vec<(ChunkId, Place)> = placed[range].iter().map(|c| (c.id, c.place())).collect();
            assert_eq!(index, expected);
            assert_eq!(read_pack_index(pack, &bytes[..bytes.len() - 1]), None, "a cut pack is not whole");
        }
        store.persist(Vec::new()).await.expect("empty batch");
    }

    #[tokio::test]
    async fn packs_on_the_local_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        packs_are_self_describing_and_read_back(BlobStore::local(dir.path()).expect("store")).await;
    }

    #[tokio::test]
    async fn packs_through_an_opendal_operator() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_str().expect("utf-8");
        let op = Operator::new(opendal::services::Fs::default().root(root)).expect("operator");
        packs_are_self_describing_and_read_back(BlobStore::from_operator(op)).await;
    }

    #[tokio::test]
    async fn a_pack_staged_by_another_kind_of_store_is_refused() {
        let (local_dir, remote_dir) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        let local = BlobStore::local(local_dir.path()).expect("store");
        let root = remote_dir.path().to_str().expect("utf-8");
        let remote = BlobStore::from_operator(Operator::new(opendal::services::Fs::default().root(root)).expect("op"));
        let (ws, key, id) = (WorkspaceId::new(), SecretKey::generate(), ChunkId([7; 32]));
        for (from, to) in [(&local, &remote), (&remote, &local)] {
            let staged = from.stage(&key, ws, &[(id, b"data")]).expect("stage");
            let place = staged.chunks()[0].place();
            assert!(matches!(to.persist(vec![staged]).await, Err(BlobError::Mismatch(_))));
            assert!(matches!(to.get_chunk(&key, ws, &id, place).await, Err(BlobError::NotFound(_))), "nothing written");
        }
        assert!(files_under(local_dir.path()).is_empty(), "the refused local pack is removed");
    }
}
