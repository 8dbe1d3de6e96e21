//! Rows as the store hands them out. Times are Unix milliseconds; the layers above turn them into dates.

use cloudsync_types::{ChunkId, FileId, Role, SessionId, ShareId, UserId, VersionId, WorkspaceId, WsPath};

use crate::{NewAudit, StoreError};

/// An account.
#[derive(Clone)]
pub struct UserRecord {
    /// Id.
    pub id: UserId,
    /// Lower-case email.
    pub email: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Server administrator.
    pub is_admin: bool,
    /// Creation time.
    pub created_ms: i64,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("is_admin", &self.is_admin)
            .finish_non_exhaustive()
    }
}

/// A session (one device's login). Only the token's hash is stored.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// Id.
    pub id: SessionId,
    /// Owner.
    pub user_id: UserId,
    /// Hash of the bearer token.
    pub token_hash: [u8; 32],
    /// Device name.
    pub device_name: String,
    /// Creation time.
    pub created_ms: i64,
    /// Last use.
    pub last_seen_ms: i64,
    /// Address of the last use.
    pub last_ip: String,
    /// Opened with a second factor (or one was proven on it since): what workspaces that require MFA ask for.
    pub mfa: bool,
}

/// A workspace with its keys wrapped by the server master key.
#[derive(Clone)]
pub struct WorkspaceRecord {
    /// Id.
    pub id: WorkspaceId,
    /// Display name.
    pub name: String,
    /// End-to-end encrypted.
    pub e2ee: bool,
    /// Members must have two-factor authentication on.
    pub require_mfa: bool,
    /// Networks (canonical CIDR) that may reach it; empty: any address.
    pub ip_allowlist: Vec<String>,
    /// Creation time.
    pub created_ms: i64,
    /// The data key (seals chunks at rest), wrapped by the master key.
    pub wrapped_data_key: Vec<u8>,
    /// The chunk-id key (keys content addresses), wrapped by the master key.
    pub wrapped_chunk_key: Vec<u8>,
}

impl std::fmt::Debug for WorkspaceRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkspaceRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("e2ee", &self.e2ee)
            .finish_non_exhaustive()
    }
}

/// A member with the account's email.
#[derive(Debug, Clone)]
pub struct MemberRecord {
    /// Account.
    pub user_id: UserId,
    /// Account email.
    pub email: String,
    /// Role.
    pub role: Role,
    /// When added.
    pub added_ms: i64,
}

/// A member's role and what the workspace's access policy needs to know about the member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberAccess {
    /// The member's role.
    pub role: Role,
    /// The workspace requires two-factor authentication.
    pub require_mfa: bool,
    /// The member has two-factor authentication on.
    pub has_mfa: bool,
    /// Networks (canonical CIDR) that may reach the workspace; empty: any address.
    pub ip_allowlist: Vec<String>,
}

/// An account's TOTP state.
#[derive(Clone, PartialEq, Eq)]
pub struct MfaRecord {
    /// The secret, sealed by the caller (never stored in the clear).
    pub sealed_secret: Vec<u8>,
    /// True once the first code confirmed the enrolment: only then do logins need a code.
    pub confirmed: bool,
    /// The last step accepted (a code of this step or earlier is refused).
    pub last_step: Option<u64>,
    /// Consecutive failed codes.
    pub failures: u32,
    /// Recovery codes not yet used.
    pub recovery_left: u32,
    /// When the enrolment started.
    pub created_ms: i64,
}

impl std::fmt::Debug for MfaRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MfaRecord")
            .field("confirmed", &self.confirmed)
            .field("last_step", &self.last_step)
            .field("failures", &self.failures)
            .field("recovery_left", &self.recovery_left)
            .finish_non_exhaustive()
    }
}

/// A chunk durably stored for a workspace, about to be recorded
/// ([`FileStore::record_chunks`](crate::FileStore::record_chunks)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewChunk {
    /// The chunk.
    pub id: ChunkId,
    /// Plaintext size.
    pub size: u32,
    /// Where its sealed bytes are.
    pub place: ChunkPlace,
}

/// Where a recorded chunk's sealed bytes are in the chunk store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlace {
    /// The pack holding it; `None` for a chunk stored as an object of its own.
    pub pack: Option<[u8; 16]>,
    /// Where in the pack its sealed bytes start (0 for an object of its own).
    pub offset: u64,
    /// Sealed size in bytes.
    pub stored_size: u32,
}

/// A recorded chunk as garbage collection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRow {
    /// The chunk.
    pub id: ChunkId,
    /// Where its sealed bytes are.
    pub place: ChunkPlace,
    /// When it was recorded (last recorded, for a chunk uploaded again after it was condemned).
    pub recorded_ms: i64,
    /// When it was condemned, if it is.
    pub condemned_ms: Option<i64>,
}

/// A version about to be committed.
#[derive(Debug, Clone)]
pub struct NewVersion {
    /// Id of the new version.
    pub id: VersionId,
    /// Size in bytes.
    pub size: u64,
    /// Content hash, hex.
    pub content_hash: String,
    /// Encoded manifest (opaque to the store).
    pub manifest: Vec<u8>,
    /// Client modification time.
    pub mtime_ms: Option<i64>,
    /// Who commits it.
    pub created_by: Option<UserId>,
    /// When.
    pub created_ms: i64,
}

/// One commit of a batch ([`FileStore::commit_versions`](crate::FileStore::commit_versions)).
#[derive(Debug, Clone)]
pub struct NewCommit {
    /// Where the file lives.
    pub path: WsPath,
    /// The live version the commit is based on (`None`: no live file).
    pub base: Option<u64>,
    /// The version to make current.
    pub version: NewVersion,
    /// Audit rows written only if this commit succeeds, in the batch's transaction.
    pub audit: Vec<NewAudit>,
}

/// Why one commit of a batch was refused: the live file's version (`None`: no live file) is not the base.
/// Nothing of that commit was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleBase {
    /// The live version, if a live file is at the path.
    pub current: Option<u64>,
}

impl From<StaleBase> for StoreError {
    fn from(s: StaleBase) -> Self {
        StoreError::StaleBase { current: s.current }
    }
}

/// A file with its current version.
#[derive(Debug, Clone)]
pub struct FileRecord {
    /// File id.
    pub id: FileId,
    /// Path.
    pub path: WsPath,
    /// Current version number.
    pub version: u64,
    /// Current version id.
    pub version_id: VersionId,
    /// Size of the current version.
    pub size: u64,
    /// Content hash of the current version.
    pub content_hash: String,
    /// Client modification time.
    pub mtime_ms: Option<i64>,
    /// When the current version was committed.
    pub modified_ms: i64,
    /// When it went to the trash (None: live).
    pub deleted_ms: Option<i64>,
}

/// One version.
#[derive(Debug, Clone)]
pub struct VersionRecord {
    /// Version id.
    pub id: VersionId,
    /// File.
    pub file_id: FileId,
    /// Version number.
    pub version: u64,
    /// Size.
    pub size: u64,
    /// Content hash.
    pub content_hash: String,
    /// Encoded manifest.
    pub manifest: Vec<u8>,
    /// Client modification time.
    pub mtime_ms: Option<i64>,
    /// Committer's email, if the account still exists.
    pub created_by_email: Option<String>,
    /// When.
    pub created_ms: i64,
}

/// One change journal entry.
#[derive(Debug, Clone)]
pub struct ChangeRecord {
    /// Sequence number.
    pub seq: u64,
    /// File.
    pub file_id: FileId,
    /// Path.
    pub path: WsPath,
    /// True for a deletion.
    pub deleted: bool,
    /// Version after the change.
    pub version: u64,
}

/// An API key as stored: the secret only as a hash.
#[derive(Clone)]
pub struct ApiKeyRecord {
    /// The public id (the `<id>` of `csk_<id>_<secret>`).
    pub id: String,
    /// The account it acts for.
    pub user_id: UserId,
    /// Its name, unique among the account's keys.
    pub name: String,
    /// The highest role it acts with in any workspace.
    pub role: Role,
    /// The workspaces it may reach; None: all of the account's.
    pub workspaces: Option<Vec<WorkspaceId>>,
    /// Hash of the current secret.
    pub secret_hash: [u8; 32],
    /// Hash of the secret before the last rotation, valid until `old_valid_until_ms`.
    pub old_secret_hash: Option<[u8; 32]>,
    /// End of the rotation's grace period.
    pub old_valid_until_ms: Option<i64>,
    /// Created (or last rotated) with a second factor: counts as MFA for workspaces that require it.
    pub mfa: bool,
    /// Expiry; None: never.
    pub expires_ms: Option<i64>,
    /// Creation time.
    pub created_ms: i64,
    /// Last use.
    pub last_used_ms: Option<i64>,
    /// Address of the last use.
    pub last_used_ip: Option<String>,
}

impl std::fmt::Debug for ApiKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyRecord")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// A share link as stored: the token only as a hash, the password only as an Argon2id hash.
#[derive(Clone)]
pub struct ShareRecord {
    /// Public handle (for listing and revoking).
    pub id: ShareId,
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// Hash of the token in the link.
    pub token_hash: [u8; 32],
    /// The file it serves (its current version at download time).
    pub path: WsPath,
    /// That file's identity: the link serves it only while it lives at `path`.
    pub file_id: FileId,
    /// Who made it.
    pub created_by: UserId,
    /// The API key it was made with, if any: the link dies with the key.
    pub api_key_id: Option<String>,
    /// When.
    pub created_ms: i64,
    /// Expiry; None: never.
    pub expires_ms: Option<i64>,
    /// Argon2id PHC string of the password, when it has one.
    pub password_hash: Option<String>,
    /// Most downloads; None: unlimited.
    pub max_downloads: Option<u64>,
    /// Downloads so far.
    pub downloads: u64,
    /// When it was revoked.
    pub revoked_ms: Option<i64>,
}

impl std::fmt::Debug for ShareRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShareRecord")
            .field("id", &self.id)
            .field("workspace_id", &self.workspace_id)
            .field("path", &self.path)
            .field("downloads", &self.downloads)
            .finish_non_exhaustive()
    }
}

/// An account's end-to-end encryption keys as the server keeps them: public, or sealed on the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserKeysRecord {
    /// The public identity (signing key, agreement key, self-signature).
    pub identity: Vec<u8>,
    /// The secret keys sealed under the passphrase.
    pub sealed_by_passphrase: Vec<u8>,
    /// The secret keys sealed under the recovery key.
    pub sealed_by_recovery: Vec<u8>,
    /// First stored.
    pub created_ms: i64,
    /// Last resealed.
    pub updated_ms: i64,
}
