//! The workspace's chunk-id key and chunking parameters, fetched once per transfer. The server is the
//! authority on both (they must match what every other member uses, or deduplication and verification
//! break), but what it sends is still checked before use: a malformed key or parameters that would make the
//! chunker misbehave stop the transfer with a clear message.

use cloudsync_chunker::{Boundaries, ChunkerParams};
use cloudsync_crypto::{KeyedHasher, SecretKey, keyed_hash};
use cloudsync_types::ChunkId;
use cloudsync_types::api::WorkspaceKeys;

use crate::SyncError;

/// What a client needs to address and verify content in one workspace.
#[derive(Debug, Clone)]
pub(crate) struct ChunkKeys {
    key: SecretKey,
    pub(crate) params: ChunkerParams,
    /// Where chunk boundaries fall: the public gear table, or (end-to-end encrypted workspaces) one keyed by
    /// a workspace secret.
    pub(crate) boundaries: Boundaries,
}

impl ChunkKeys {
    /// Validates the server's answer.
    pub(crate) fn from_api(keys: &WorkspaceKeys) -> Result<Self, SyncError> {
        let key = SecretKey::from_hex(&keys.chunk_id_key)
            .map_err(|e| SyncError::Integrity(format!("the server sent an unusable chunk-id key: {e}")))?;
        let params = ChunkerParams { min: keys.chunk_min, avg: keys.chunk_avg, max: keys.chunk_max };
        params
            .validate()
            .map_err(|e| SyncError::Integrity(format!("the server sent unusable chunking parameters: {e}")))?;
        Ok(Self { key, params, boundaries: Boundaries::Public })
    }

    /// Content ids and hashes of an end-to-end encrypted workspace: under the members' content key, with
    /// boundaries keyed by the epoch's chunking secret (the server's parameters still apply).
    pub(crate) fn end_to_end(&self, content_key: &SecretKey, chunking: &SecretKey) -> Self {
        Self { key: content_key.clone(), params: self.params, boundaries: Boundaries::keyed(chunking) }
    }

    /// For tests: a fixed key with the given parameters.
    #[cfg(test)]
    pub(crate) fn for_test(params: ChunkerParams) -> Self {
        Self { key: SecretKey::from_bytes([42; 32]), params, boundaries: Boundaries::Public }
    }

    /// The content address of one chunk.
    pub(crate) fn chunk_id(&self, data: &[u8]) -> ChunkId {
        ChunkId(keyed_hash(&self.key, data))
    }

    /// A hasher for a whole file's content hash.
    pub(crate) fn content_hasher(&self) -> KeyedHasher {
        KeyedHasher::new(&self.key)
    }
}

/// `Manifest.content_hash` / `FileEntry.content_hash` form: lower-case hex.
pub(crate) fn hash_hex(hash: &[u8; 32]) -> String {
    hex::encode(hash)
}

/// Compares a computed hash with one the server reported (hex, either case).
pub(crate) fn hash_matches(hash: &[u8; 32], reported: &str) -> bool {
    reported.eq_ignore_ascii_case(&hash_hex(hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_server_keys() {
        let good = WorkspaceKeys {
            chunk_id_key: "ab".repeat(32),
            chunk_min: 256 * 1024,
            chunk_avg: 1024 * 1024,
            chunk_max: 4 * 1024 * 1024,
        };
        assert!(ChunkKeys::from_api(&good).is_ok());
        let bad_key = WorkspaceKeys { chunk_id_key: "zz".into(), ..good.clone() };
        assert!(matches!(ChunkKeys::from_api(&bad_key), Err(SyncError::Integrity(_))));
        let bad_params = WorkspaceKeys { chunk_min: 0, ..good };
        assert!(matches!(ChunkKeys::from_api(&bad_params), Err(SyncError::Integrity(_))));
    }

    #[test]
    fn hash_comparison_ignores_case() {
        let h = [0xab; 32];
        assert!(hash_matches(&h, &"AB".repeat(32)));
        assert!(!hash_matches(&h, &"ac".repeat(32)));
    }
}
