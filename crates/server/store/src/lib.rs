//! The metadata store: one trait per aggregate (users and sessions, workspaces and members, files and chunks,
//! audit, rate limits), and one crate per database backend that implements them all. Everything above the store
//! talks to `dyn Store`; only the binary picks the backend, by URL scheme.
//!
//! Every mutating method takes the audit rows that describe it and writes them in the same database
//! transaction, so an action is never visible without its audit row (and an audit row never describes an
//! action that rolled back). The audit hash chain is computed here ([`audit_row_hash`]) so every backend
//! chains rows identically.
//!
//! [`story`] is the conformance story: one scenario every backend must pass.

mod audit;
mod error;
mod records;
pub mod story;

use async_trait::async_trait;
use cloudsync_types::{ChunkId, FileId, Role, SessionId, ShareId, UserId, WorkspaceId, WsPath};

pub use audit::{
    AuditFilter, AuditKey, AuditRow, BrokenChain, ChainVerifier, GLOBAL_CHAIN, NewAudit, audit_row_hash, hashes_equal,
    verify_chain,
};
pub use error::{StoreError, StoreResult};
pub use records::{
    ApiKeyRecord, ChangeRecord, ChunkPlace, ChunkRow, FileRecord, MemberAccess, MemberRecord, MfaRecord, NewChunk,
    NewCommit, NewVersion, SessionRecord, ShareRecord, StaleBase, UserKeysRecord, UserRecord, VersionRecord,
    WorkspaceRecord,
};

/// Accounts and their sessions (devices).
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Creates an account. `Conflict` when the email is taken.
    async fn create_user(&self, user: &UserRecord, audit: &[NewAudit]) -> StoreResult<()>;
    /// Looks an account up by (lower-case) email.
    async fn user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>>;
    /// Looks an account up by id.
    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<UserRecord>>;
    /// How many accounts exist.
    async fn count_users(&self) -> StoreResult<u64>;

    /// Stores a new session.
    async fn create_session(&self, session: &SessionRecord, audit: &[NewAudit]) -> StoreResult<()>;
    /// Finds a session by the hash of its token.
    async fn session_by_token_hash(&self, hash: &[u8; 32]) -> StoreResult<Option<SessionRecord>>;
    /// Records a use of the session.
    async fn touch_session(&self, id: SessionId, at_ms: i64, ip: &str) -> StoreResult<()>;
    /// The user's sessions, newest first.
    async fn list_sessions(&self, user: UserId) -> StoreResult<Vec<SessionRecord>>;
    /// Deletes one of the user's sessions; false when it did not exist (or is another user's).
    async fn delete_session(&self, user: UserId, id: SessionId, audit: &[NewAudit]) -> StoreResult<bool>;
}

/// Workspaces, their wrapped keys and their members.
#[async_trait]
pub trait WorkspaceStore: Send + Sync {
    /// Creates a workspace with `owner` as its first Owner.
    async fn create_workspace(&self, ws: &WorkspaceRecord, owner: UserId, audit: &[NewAudit]) -> StoreResult<()>;
    /// A workspace by id.
    async fn workspace(&self, id: WorkspaceId) -> StoreResult<Option<WorkspaceRecord>>;
    /// The workspaces `user` is a member of, with the user's role, by name.
    async fn workspaces_for_user(&self, user: UserId) -> StoreResult<Vec<(WorkspaceRecord, Role)>>;
    /// Deletes a workspace and everything it holds, including its wrapped keys (crypto-shredding). Audit rows
    /// stay. Returns false when it did not exist.
    async fn delete_workspace(&self, id: WorkspaceId, audit: &[NewAudit]) -> StoreResult<bool>;

    /// The role of `user` in `ws`, or None for a non-member.
    async fn member_role(&self, ws: WorkspaceId, user: UserId) -> StoreResult<Option<Role>>;
    /// A member's role with what the workspace's policy needs to judge the request, in one query; `None` for a
    /// non-member.
    async fn member_access(&self, ws: WorkspaceId, user: UserId) -> StoreResult<Option<MemberAccess>>;
    /// Sets whether the workspace requires two-factor authentication of its members, with its audit rows, if
    /// it is still the opposite (compare-and-set: of two Owners racing, the audit's old value stays true).
    /// False when the workspace does not exist or the value is already `on`.
    async fn set_require_mfa(&self, ws: WorkspaceId, on: bool, audit: &[NewAudit]) -> StoreResult<bool>;
    /// Replaces the workspace's IP allowlist with `new`, with its audit rows, if it is still `old`
    /// (compare-and-set). False when the workspace does not exist or its list changed meanwhile.
    async fn set_ip_allowlist(
        &self,
        ws: WorkspaceId,
        old: &[String],
        new: &[String],
        audit: &[NewAudit],
    ) -> StoreResult<bool>;
    /// Every workspace with this exact name (names are unique per owner, not per server), for operators.
    async fn workspaces_named(&self, name: &str) -> StoreResult<Vec<WorkspaceRecord>>;
    /// Members ordered by email.
    async fn list_members(&self, ws: WorkspaceId) -> StoreResult<Vec<MemberRecord>>;
    /// Adds a member (joined at `at_ms`); `Conflict` when already a member.
    async fn add_member(
        &self,
        ws: WorkspaceId,
        user: UserId,
        role: Role,
        at_ms: i64,
        audit: &[NewAudit],
    ) -> StoreResult<()>;
    /// Changes a member's role; `LastOwner` when that would leave the workspace without an Owner, `NotFound`
    /// for a non-member. Returns the previous role.
    async fn set_member_role(&self, ws: WorkspaceId, user: UserId, role: Role, audit: &[NewAudit])
    -> StoreResult<Role>;
    /// Removes a member; `LastOwner` / `NotFound` as for [`WorkspaceStore::set_member_role`]. Returns the role.
    async fn remove_member(&self, ws: WorkspaceId, user: UserId, audit: &[NewAudit]) -> StoreResult<Role>;
}

/// Files, versions, trash, the change journal, and which chunks a workspace holds.
#[async_trait]
pub trait FileStore: Send + Sync {
    /// Of `ids`, those this workspace does not hold (in the order given, without duplicates). A condemned
    /// chunk (see [`GcStore`]) counts as missing.
    async fn missing_chunks(&self, ws: WorkspaceId, ids: &[ChunkId]) -> StoreResult<Vec<ChunkId>>;
    /// Records that chunks are durably stored for this workspace, all in one transaction (idempotent per
    /// chunk; repeated ids are fine, and the place recorded first stays, unless the chunk was condemned: then
    /// the new place replaces it and the mark is cleared). Returns how many were not recorded (or were
    /// condemned) before. Callers record a chunk only after its bytes are durable, so a recorded chunk always
    /// has them.
    async fn record_chunks(&self, ws: WorkspaceId, chunks: &[NewChunk]) -> StoreResult<u64>;
    /// Where each of `ids` that this workspace holds is stored (in no particular order, without duplicates;
    /// ids it does not hold are left out).
    async fn locate_chunks(&self, ws: WorkspaceId, ids: &[ChunkId]) -> StoreResult<Vec<(ChunkId, ChunkPlace)>>;

    /// Makes a new version of `path` current, if the live file's version equals `base` (`None`: no live file).
    /// `StaleBase` otherwise. Appends to the change journal.
    async fn commit_version(
        &self,
        ws: WorkspaceId,
        path: &WsPath,
        base: Option<u64>,
        version: &NewVersion,
        audit: &[NewAudit],
    ) -> StoreResult<FileRecord>;
    /// Applies `commits` in order in one transaction, each as [`FileStore::commit_version`] would: a commit
    /// whose base is stale is refused on its own (nothing of it written, its audit rows neither) while the
    /// others go ahead. One result per commit, in order. An `Err` (a database failure) means none was applied.
    async fn commit_versions(
        &self,
        ws: WorkspaceId,
        commits: &[NewCommit],
    ) -> StoreResult<Vec<Result<FileRecord, StaleBase>>>;
    /// The live file at `path`.
    async fn file_by_path(&self, ws: WorkspaceId, path: &WsPath) -> StoreResult<Option<FileRecord>>;
    /// Live files under `prefix` (the file itself when `prefix` names one), path order, after `after`.
    async fn list_files(
        &self,
        ws: WorkspaceId,
        prefix: &WsPath,
        after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<FileRecord>>;
    /// One version of a file (live or in the trash).
    async fn version(&self, ws: WorkspaceId, file: FileId, version: u64) -> StoreResult<Option<VersionRecord>>;
    /// For each `(path, version)`: that version (`None`: the current one) of the live file at `path`, or
    /// `None` when no live file is there or it has no such version. One consistent read, in request order.
    async fn live_versions(
        &self,
        ws: WorkspaceId,
        files: &[(WsPath, Option<u64>)],
    ) -> StoreResult<Vec<Option<VersionRecord>>>;
    /// All versions of a file, newest first.
    async fn list_versions(&self, ws: WorkspaceId, file: FileId) -> StoreResult<Vec<VersionRecord>>;
    /// Moves the file at `path`, or every live file below it, to the trash. Returns the files moved.
    async fn delete_path(
        &self,
        ws: WorkspaceId,
        path: &WsPath,
        at_ms: i64,
        audit: &[NewAudit],
    ) -> StoreResult<Vec<FileRecord>>;
    /// The most recently deleted file that lived at `path`.
    async fn trashed_file(&self, ws: WorkspaceId, path: &WsPath) -> StoreResult<Option<FileRecord>>;
    /// Files in the trash, most recently deleted first.
    async fn list_trash(&self, ws: WorkspaceId) -> StoreResult<Vec<FileRecord>>;
    /// Brings the most recently deleted file at `path` back (`Conflict` if a live file holds the path), then,
    /// if `version` is given, commits a copy of that version as the new current one.
    async fn restore_from_trash(
        &self,
        ws: WorkspaceId,
        path: &WsPath,
        version: Option<NewVersion>,
        audit: &[NewAudit],
    ) -> StoreResult<FileRecord>;
    /// Journal entries with `seq > since`, oldest first.
    async fn changes(&self, ws: WorkspaceId, since: u64, limit: u32) -> StoreResult<Vec<ChangeRecord>>;
}

/// The append-only audit log.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends rows that belong to no other write (a failed login, a download).
    async fn append_audit(&self, audit: &[NewAudit]) -> StoreResult<()>;
    /// The rows of one chain (a workspace id, or [`GLOBAL_CHAIN`]) in chain order.
    async fn audit_chain(&self, chain: &str, after_seq: u64, limit: u32) -> StoreResult<Vec<AuditRow>>;
    /// The rows of one chain that match `filter`, newest (highest seq) first.
    async fn query_audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditRow>>;
    /// The position and hash of a chain's last row as recorded when it was appended (None: never written).
    async fn audit_head(&self, chain: &str) -> StoreResult<Option<(u64, [u8; 32])>>;
}

/// Fixed-window counters shared by every server process (nothing that must be shared lives in memory).
#[async_trait]
pub trait RateLimitStore: Send + Sync {
    /// Counts one hit on `key` in the window starting at `window_start_ms` and returns the count so far in that
    /// window (a new window starts at 1).
    async fn rate_limit_hit(&self, key: &str, window_start_ms: i64) -> StoreResult<u32>;
    /// Forgets `key` (after a successful login, say).
    async fn rate_limit_clear(&self, key: &str) -> StoreResult<()>;
}

/// The whole store.
/// Second factors: each account's TOTP secret (sealed by the caller), the last step accepted, consecutive
/// failures, and hashed single-use recovery codes.
#[async_trait]
pub trait MfaStore: Send + Sync {
    /// The account's TOTP state, if an enrolment was started.
    async fn mfa(&self, user: UserId) -> StoreResult<Option<MfaRecord>>;
    /// Starts (or restarts) an enrolment: stores the sealed secret, not yet confirmed. `Conflict` when MFA is
    /// already on for the account.
    async fn mfa_begin(&self, user: UserId, sealed_secret: &[u8], at_ms: i64) -> StoreResult<()>;
    /// Turns a pending enrolment on, with the step its first code used and the hashes of its recovery codes,
    /// if its sealed secret is still `sealed_secret` (the one the code was checked against), and marks
    /// `session` (on which the code was proven) as having a second factor. False when no such enrolment is
    /// pending.
    async fn mfa_confirm(
        &self,
        user: UserId,
        session: SessionId,
        sealed_secret: &[u8],
        step: u64,
        recovery: &[[u8; 32]],
        audit: &[NewAudit],
    ) -> StoreResult<bool>;
    /// Records `step` as the last one accepted, only if it is later than the one stored (so of two requests
    /// racing with one code, one wins), and clears the failure count. False when it was not later.
    async fn mfa_accept_step(&self, user: UserId, step: u64) -> StoreResult<bool>;
    /// Marks an unused recovery code used and clears the failure count. False when no such unused code.
    async fn mfa_use_recovery(&self, user: UserId, hash: &[u8; 32], at_ms: i64) -> StoreResult<bool>;
    /// Counts one failed code and returns the consecutive failures so far.
    async fn mfa_failed(&self, user: UserId) -> StoreResult<u32>;
    /// Counts an attempt before its code is checked, atomically and only while fewer than `limit` are counted
    /// (so concurrent requests cannot all slip under the limit); a success clears the count. Returns the
    /// count, or `None` when the limit is reached (or the account has no MFA).
    async fn mfa_claim_attempt(&self, user: UserId, limit: u32) -> StoreResult<Option<u32>>;
    /// Replaces the account's recovery codes.
    async fn mfa_replace_recovery(&self, user: UserId, recovery: &[[u8; 32]], audit: &[NewAudit]) -> StoreResult<()>;
    /// Turns MFA off and forgets the secret and recovery codes. False when it was not on or pending.
    async fn mfa_disable(&self, user: UserId, audit: &[NewAudit]) -> StoreResult<bool>;
}

/// API keys.
#[async_trait]
pub trait ApiKeyStore: Send + Sync {
    /// Stores a new key. `Conflict` when the account already has a key of that name.
    async fn create_api_key(&self, key: &ApiKeyRecord, audit: &[NewAudit]) -> StoreResult<()>;
    /// A key by its public id.
    async fn api_key(&self, id: &str) -> StoreResult<Option<ApiKeyRecord>>;
    /// The account's keys, by name.
    async fn list_api_keys(&self, user: UserId) -> StoreResult<Vec<ApiKeyRecord>>;
    /// Gives the key a new secret; the old one stays valid until `old_valid_until_ms`. False when the account
    /// has no such key.
    async fn rotate_api_key(
        &self,
        user: UserId,
        id: &str,
        secret_hash: &[u8; 32],
        old_valid_until_ms: i64,
        mfa: bool,
        audit: &[NewAudit],
    ) -> StoreResult<bool>;
    /// Deletes the key; it stops working at once. False when the account has no such key.
    async fn revoke_api_key(&self, user: UserId, id: &str, audit: &[NewAudit]) -> StoreResult<bool>;
    /// Records a use (time and address) with its audit rows.
    async fn touch_api_key(&self, id: &str, at_ms: i64, ip: &str, audit: &[NewAudit]) -> StoreResult<()>;
}

/// Share links.
#[async_trait]
pub trait ShareStore: Send + Sync {
    /// Stores a new link.
    async fn create_share(&self, share: &ShareRecord, audit: &[NewAudit]) -> StoreResult<()>;
    /// A link by the hash of its token (revoked and expired ones too: the caller decides).
    async fn share_by_token_hash(&self, hash: &[u8; 32]) -> StoreResult<Option<ShareRecord>>;
    /// A link by its handle.
    async fn share(&self, ws: WorkspaceId, id: ShareId) -> StoreResult<Option<ShareRecord>>;
    /// The workspace's live links at `now_ms` (not revoked, not expired, not used up), newest first.
    async fn list_shares(&self, ws: WorkspaceId, now_ms: i64) -> StoreResult<Vec<ShareRecord>>;
    /// Revokes a link. False when there is no such live link.
    async fn revoke_share(&self, ws: WorkspaceId, id: ShareId, at_ms: i64, audit: &[NewAudit]) -> StoreResult<bool>;
    /// Counts one download if the link is live at `at_ms` (not revoked, not expired, under its limit), in one
    /// statement; false when it is not.
    async fn claim_share_download(&self, id: ShareId, at_ms: i64) -> StoreResult<bool>;
}

/// Accounts' end-to-end encryption keys.
#[async_trait]
pub trait UserKeyStore: Send + Sync {
    /// The account's keys, if it made some.
    async fn user_keys(&self, user: UserId) -> StoreResult<Option<UserKeysRecord>>;
    /// Stores an account's first keys. `Conflict` when it has keys already.
    async fn create_user_keys(&self, user: UserId, keys: &UserKeysRecord, audit: &[NewAudit]) -> StoreResult<()>;
    /// Replaces the sealed secrets of keys whose identity is still `identity` (a new passphrase after a
    /// recovery). False when the account has no such keys.
    async fn reseal_user_keys(
        &self,
        user: UserId,
        identity: &[u8],
        sealed_by_passphrase: &[u8],
        at_ms: i64,
        audit: &[NewAudit],
    ) -> StoreResult<bool>;
}

/// The membership log and wrapped keys of end-to-end encrypted workspaces. The core checks what is appended
/// (signatures, rules); the store keeps it in order and applies the member changes it implies in the same
/// transaction, so the server's members table never disagrees with the signed log.
#[async_trait]
pub trait E2eeStore: Send + Sync {
    /// Creates an end-to-end encrypted workspace with its first log entry and the creator's wrapped key.
    /// `Conflict` when the id is taken.
    async fn create_e2ee_workspace(
        &self,
        ws: &WorkspaceRecord,
        owner: UserId,
        entry: &[u8],
        wrapped_key: &WrappedKeyRow,
        audit: &[NewAudit],
    ) -> StoreResult<()>;
    /// Up to `limit` entries from position `from`, in order.
    async fn e2ee_log(&self, ws: WorkspaceId, from: u64, limit: u32) -> StoreResult<Vec<Vec<u8>>>;
    /// Appends the entries at positions `first_seq..`, stores the keys (replacing none: a key of an epoch is
    /// wrapped to a member once) and applies the member changes, in one transaction. `Conflict` when the log no longer
    /// ends at `first_seq` (someone appended meanwhile) or a key is already stored.
    async fn append_e2ee_log(&self, ws: WorkspaceId, append: &LogAppend, audit: &[NewAudit]) -> StoreResult<()>;
    /// The wrapped keys of `recipient`, by epoch.
    async fn e2ee_keys_for(&self, ws: WorkspaceId, recipient: UserId) -> StoreResult<Vec<WrappedKeyRow>>;
}

/// What one append to a membership log writes.
#[derive(Debug, Clone, Default)]
pub struct LogAppend {
    /// Position of the first new entry: the log's length the caller read.
    pub first_seq: u64,
    /// The signed entries, in order.
    pub entries: Vec<Vec<u8>>,
    /// Wrapped keys to store.
    pub keys: Vec<WrappedKeyRow>,
    /// Member changes the entries make.
    pub members: Vec<MemberChange>,
    /// When.
    pub at_ms: i64,
}

/// A workspace key of one epoch wrapped to one member (the signed record, as the client made it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKeyRow {
    /// Key epoch.
    pub epoch: u32,
    /// The member it is wrapped to.
    pub recipient: UserId,
    /// The signed record.
    pub record: Vec<u8>,
}

/// A change to a workspace's members that a membership log entry makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    /// Added with a role.
    Add(UserId, Role),
    /// Given another role.
    SetRole(UserId, Role),
    /// Removed.
    Remove(UserId),
}

/// What chunk garbage collection needs (see `cloudsync_server_core::gc`). A chunk no version names is first
/// condemned: from then on [`FileStore::missing_chunks`] counts it as missing (so no new commit can name it, and
/// an upload of the same chunk records it afresh, clearing the mark); only a chunk still condemned a whole
/// grace period later is deleted, so a commit that checked its chunks just before the mark has long landed.
#[async_trait]
pub trait GcStore: Send + Sync {
    /// Every workspace.
    async fn workspace_ids(&self) -> StoreResult<Vec<WorkspaceId>>;
    /// Up to `limit` stored manifests of the workspace's versions (of live and trashed files alike), in a
    /// stable order after the position `after` (0 to start); each with its position.
    async fn manifests_page(&self, ws: WorkspaceId, after: i64, limit: u32) -> StoreResult<Vec<(i64, Vec<u8>)>>;
    /// Up to `limit` of the workspace's chunk rows with ids above `after` (`None` to start), by id.
    async fn chunk_rows_page(&self, ws: WorkspaceId, after: Option<ChunkId>, limit: u32) -> StoreResult<Vec<ChunkRow>>;
    /// Condemns those of `ids` not condemned yet and recorded before `recorded_before_ms`, at `at_ms`.
    /// Returns how many it marked.
    async fn condemn_chunks(
        &self,
        ws: WorkspaceId,
        ids: &[ChunkId],
        recorded_before_ms: i64,
        at_ms: i64,
    ) -> StoreResult<u64>;
    /// Lifts the condemnation of `ids` (found named by a version after all). Returns how many it cleared.
    async fn spare_chunks(&self, ws: WorkspaceId, ids: &[ChunkId]) -> StoreResult<u64>;
    /// Deletes the rows of those of `ids` still condemned, condemned before `condemned_before_ms` (checked as
    /// each row is deleted, so a chunk recorded again meanwhile stays). Returns where each deleted one was.
    async fn delete_condemned(
        &self,
        ws: WorkspaceId,
        ids: &[ChunkId],
        condemned_before_ms: i64,
    ) -> StoreResult<Vec<(ChunkId, ChunkPlace)>>;
    /// Of `packs`, those that hold at least one recorded chunk of the workspace.
    async fn packs_in_use(&self, ws: WorkspaceId, packs: &[[u8; 16]]) -> StoreResult<Vec<[u8; 16]>>;
}

/// Everything a server keeps, on one backend.
pub trait Store:
    UserStore
    + WorkspaceStore
    + FileStore
    + AuditStore
    + RateLimitStore
    + MfaStore
    + ApiKeyStore
    + ShareStore
    + UserKeyStore
    + E2eeStore
    + GcStore
    + std::fmt::Debug
{
}
impl<
    T: UserStore
        + WorkspaceStore
        + FileStore
        + AuditStore
        + RateLimitStore
        + MfaStore
        + ApiKeyStore
        + ShareStore
        + UserKeyStore
        + E2eeStore
        + GcStore
        + std::fmt::Debug,
> Store for T
{
}
