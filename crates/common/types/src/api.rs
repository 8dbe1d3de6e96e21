//! Request and response bodies of the HTTP API (`/api/v1`). The SDK and the server both use these types, so
//! the wire format has one definition.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::{ApiErrorBody, ChunkId, FileId, Role, SessionId, UserId, VersionId, WorkspaceId, WsPath};

/// Longest accepted email address (RFC 5321 path limit).
pub const MAX_EMAIL_BYTES: usize = 254;
/// Longest accepted workspace or device name.
pub const MAX_NAME_BYTES: usize = 200;

/// `GET /api/v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always "ok" when the server answers.
    pub status: String,
    /// Server version.
    pub version: String,
}

/// `POST /api/v1/auth/login`.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginRequest {
    /// Account email.
    pub email: String,
    /// Account password.
    pub password: String,
    /// A name for this device, shown in the device list.
    pub device_name: String,
    /// With two-factor authentication on: the 6-digit code from the authenticator app, or a recovery code.
    /// Without it such an account answers `mfa_required`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp: Option<String>,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("email", &self.email)
            .field("password", &"***")
            .field("device_name", &self.device_name)
            .field("totp", &self.totp.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Longest code accepted where a TOTP or recovery code goes.
pub const MAX_MFA_CODE_BYTES: usize = 64;

/// `GET /api/v1/auth/mfa`: the caller's two-factor state.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MfaStatus {
    /// Logins need a code.
    pub enabled: bool,
    /// An enrolment was started and not confirmed yet.
    pub pending: bool,
    /// Unused recovery codes.
    pub recovery_codes_left: u32,
}

/// `POST /api/v1/auth/mfa/enroll`. On a session opened more than 15 minutes ago the account password is
/// needed (a stolen old session must not be able to put its own authenticator on the account).
#[derive(Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct MfaEnrollRequest {
    /// The account password (needed on a session older than 15 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl std::fmt::Debug for MfaEnrollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MfaEnrollRequest").field("password", &self.password.as_ref().map(|_| "***")).finish()
    }
}

/// `POST /api/v1/auth/mfa/enroll`: the secret to add to an authenticator app, shown once. Confirm with the
/// first code (`POST /api/v1/auth/mfa/confirm`).
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct MfaEnrollment {
    /// `otpauth://totp/...` (what the QR code holds).
    pub otpauth_uri: String,
    /// The same secret in Base32, for typing into an app.
    pub secret: String,
}

impl std::fmt::Debug for MfaEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MfaEnrollment").finish_non_exhaustive()
    }
}

/// A code from the authenticator app (or, where it says so, a recovery code).
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct MfaCode {
    /// The code.
    pub code: String,
}

impl std::fmt::Debug for MfaCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MfaCode").finish_non_exhaustive()
    }
}

/// New single-use recovery codes, shown once (the server keeps only keyed hashes).
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct RecoveryCodes {
    /// Ten codes; each signs in once in place of an app code.
    pub recovery_codes: Vec<String>,
}

impl std::fmt::Debug for RecoveryCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveryCodes").field("count", &self.recovery_codes.len()).finish_non_exhaustive()
    }
}

/// The answer to a successful login. The token is shown once; the server keeps only its hash.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    /// Bearer token for `Authorization: Bearer ...`.
    pub token: String,
    /// The session (device) this token belongs to.
    pub session_id: SessionId,
    /// The account.
    pub user: UserInfo,
}

impl std::fmt::Debug for LoginResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginResponse")
            .field("token", &"***")
            .field("session_id", &self.session_id)
            .field("user", &self.user)
            .finish()
    }
}

/// An account as others see it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserInfo {
    /// Account id.
    pub id: UserId,
    /// Email (lower-case).
    pub email: String,
    /// Server administrator (may create accounts).
    pub is_admin: bool,
}

/// `GET /api/v1/auth/whoami`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// The account.
    pub user: UserInfo,
    /// The session the request came with (the nil id for an API key).
    pub session_id: SessionId,
    /// The API key the request came with, if any: its id and role ceiling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyIdentity>,
}

/// The API key a request came with.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyIdentity {
    /// Public id.
    pub id: String,
    /// Role ceiling.
    pub role: Role,
    /// The workspaces it may reach; absent: all of the owner's.
    pub workspaces: Option<Vec<WorkspaceId>>,
}

/// `POST /api/v1/users` (server administrators only).
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateUserRequest {
    /// Email of the new account.
    pub email: String,
    /// Initial password.
    pub password: String,
    /// Make the account a server administrator.
    #[serde(default)]
    pub is_admin: bool,
}

impl std::fmt::Debug for CreateUserRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateUserRequest")
            .field("email", &self.email)
            .field("password", &"***")
            .field("is_admin", &self.is_admin)
            .finish()
    }
}

/// A login session on one device.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Device {
    /// Session id (revoke with it).
    pub id: SessionId,
    /// Name given at login.
    pub name: String,
    /// When the session was created.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// When the session was last used (updated at most once a minute).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub last_seen_at: OffsetDateTime,
    /// Address of the last use.
    pub last_ip: String,
    /// True for the session making this request.
    pub current: bool,
}

/// `POST /api/v1/workspaces`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateWorkspaceRequest {
    /// Display name, unique among the creator's workspaces.
    pub name: String,
    /// End-to-end encryption (the server never sees contents or names).
    #[serde(default)]
    pub e2e_encryption: bool,
    /// With `e2e_encryption`: the workspace's first membership log entry and the creator's wrapped key,
    /// made on the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2ee: Option<E2eeGenesis>,
}

/// How an end-to-end encrypted workspace begins (RFC 0004): the client picks the id, signs the creation
/// entry over it, and wraps the epoch-0 workspace key to its own identity.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct E2eeGenesis {
    /// The new workspace's id (a fresh UUID the client made; refused if taken).
    pub workspace_id: WorkspaceId,
    /// The signed creation entry (seq 0), base64.
    pub entry: String,
    /// The epoch-0 workspace key wrapped to the creator, as a record signed by the creator, base64.
    pub wrapped_key: String,
}

/// Entries of the membership log answered per request at most.
pub const MAX_E2EE_LOG_PAGE: u32 = 1000;
/// Entries one append carries at most (a removal and the new key epoch go together).
pub const MAX_E2EE_APPEND_ENTRIES: usize = 8;
/// Wrapped keys one append carries at most (a new epoch wraps to every member).
pub const MAX_E2EE_APPEND_KEYS: usize = 2000;
/// Entries a membership log holds at most (every append replays the log: a signature check per entry).
pub const MAX_E2EE_LOG_ENTRIES: u64 = 10_000;

/// `GET /api/v1/workspaces/{ws}/e2ee/log?from=N`: entries from position `from`, in order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct E2eeLog {
    /// Position of the first entry below.
    pub from: u64,
    /// Signed entries, base64, in order.
    pub entries: Vec<String>,
    /// Whether more entries follow (ask again from `from + entries.len()`).
    pub more: bool,
}

/// `POST /api/v1/workspaces/{ws}/e2ee/log`: signed entries to append, with the wrapped keys they need (a
/// new member gets every epoch's key; a new epoch is wrapped to every member).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AppendE2eeLog {
    /// Position of the first new entry: the log's length as the client replayed it (409 if it grew meanwhile).
    pub seq: u64,
    /// Signed entries, base64, in order.
    pub entries: Vec<String>,
    /// Wrapped-key records signed by the caller, base64.
    #[serde(default)]
    pub wrapped_keys: Vec<String>,
}

/// The log's length after an append.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct E2eeAppended {
    /// Entries in the log now.
    pub len: u64,
}

/// `GET /api/v1/workspaces/{ws}/e2ee/keys`: the caller's wrapped workspace keys, one per epoch they were
/// given.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct E2eeKeys {
    /// Signed wrapped-key records, base64, by epoch.
    pub records: Vec<String>,
}

/// A workspace as a member sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Workspace {
    /// Workspace id.
    pub id: WorkspaceId,
    /// Display name.
    pub name: String,
    /// End-to-end encrypted.
    pub e2e_encryption: bool,
    /// Members must have two-factor authentication on to reach it.
    #[serde(default)]
    pub require_mfa: bool,
    /// Networks (canonical CIDR) that may reach it; empty: any address.
    #[serde(default)]
    pub ip_allowlist: Vec<String>,
    /// The caller's role.
    pub role: Role,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

/// `PUT /api/v1/workspaces/{id}/settings` (Owner): the settings to change; those left out stay as they are.
#[derive(Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct UpdateSettings {
    /// Require two-factor authentication of every member (the Owner's own must be on first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_mfa: Option<bool>,
    /// Replace the IP allowlist: IPv4 and IPv6 networks in CIDR notation (a bare address is one host); an
    /// empty list allows every address. Applies to sessions, API keys and share links alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_allowlist: Option<Vec<String>>,
    /// Apply an allowlist that does not include the caller's own address (which locks the caller out).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// A current authenticator code: changing the allowlist needs one when the owner has two-factor
    /// authentication on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp: Option<String>,
}

impl std::fmt::Debug for UpdateSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateSettings")
            .field("require_mfa", &self.require_mfa)
            .field("ip_allowlist", &self.ip_allowlist)
            .field("force", &self.force)
            .finish_non_exhaustive()
    }
}

/// Most networks in one IP allowlist.
pub const MAX_ALLOWLIST_ENTRIES: usize = 256;

/// `GET /api/v1/workspaces/{id}/keys`: what a member's client needs to address chunks. The chunk-id key keys
/// the BLAKE3 content addresses so equal chunks dedup inside this workspace only; it is not the data key,
/// which never leaves the server.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkspaceKeys {
    /// 32-byte chunk-id key, hex.
    pub chunk_id_key: String,
    /// FastCDC minimum chunk size.
    pub chunk_min: u32,
    /// FastCDC average chunk size.
    pub chunk_avg: u32,
    /// FastCDC maximum chunk size.
    pub chunk_max: u32,
}

impl std::fmt::Debug for WorkspaceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkspaceKeys").field("chunk_id_key", &"***").finish_non_exhaustive()
    }
}

/// A workspace member.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Member {
    /// Account id.
    pub user_id: UserId,
    /// Account email.
    pub email: String,
    /// Role in this workspace.
    pub role: Role,
    /// When the member was added.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub added_at: OffsetDateTime,
}

/// `POST /api/v1/workspaces/{id}/members`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AddMemberRequest {
    /// Email of an existing account.
    pub email: String,
    /// Role to give.
    pub role: Role,
}

/// `PUT /api/v1/workspaces/{id}/members/{user_id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SetRoleRequest {
    /// New role.
    pub role: Role,
}

/// One chunk of a file, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ManifestChunk {
    /// Content address.
    pub id: ChunkId,
    /// Plaintext size in bytes.
    pub size: u32,
}

/// The content of one file version: its chunks in order. In E2EE workspaces (later) the manifest is sealed by
/// the client and this structure only exists on clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Manifest {
    /// Total size in bytes (the sum of chunk sizes).
    pub size: u64,
    /// Keyed BLAKE3 (chunk-id key) of the whole content, hex: lets a client verify a download end to end.
    pub content_hash: String,
    /// Chunks in file order.
    pub chunks: Vec<ManifestChunk>,
}

/// `POST /api/v1/workspaces/{id}/chunks/missing`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MissingChunksRequest {
    /// Chunk ids the client is about to reference (at most 10,000 per request).
    pub ids: Vec<ChunkId>,
}

/// Which of the asked chunks this workspace does not hold yet.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MissingChunksResponse {
    /// Ids to upload.
    pub missing: Vec<ChunkId>,
}

/// The answer to a chunk upload.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UploadChunksResponse {
    /// Chunks newly stored.
    pub stored: u32,
    /// Chunks the workspace already held (not written again).
    pub already_present: u32,
}

/// Most chunk ids accepted in one missing-chunks request.
pub const MAX_MISSING_QUERY: usize = 10_000;

/// Most bases in one [`ChunkSignaturesRequest`]; more is a 413 (`payload_too_large`).
pub const MAX_SIGNATURE_BASES: usize = 256;
/// Most chunks one delta may be based on (see [`crate::frame::delta_payload`]).
pub const MAX_DELTA_BASES: usize = 4;

/// Where a new chunk sits in the file it belongs to, so the server can pick the chunks of the version the
/// client is replacing that covered the same bytes as the base of a delta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeltaBaseRef {
    /// The file being replaced.
    pub path: WsPath,
    /// Its version the client is replacing (the commit's `base_version`).
    pub version: u64,
    /// Offset of the new chunk in the new content.
    pub offset: u64,
    /// Length of the new chunk.
    pub len: u32,
}

/// `POST /api/v1/workspaces/{id}/chunks/signatures`: rsync block signatures of the old bytes that new chunks
/// replace, so the client can upload those chunks as deltas (`chunks/deltas`) instead of whole.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChunkSignaturesRequest {
    /// At most [`MAX_SIGNATURE_BASES`].
    pub bases: Vec<DeltaBaseRef>,
}

/// The base the server chose for one [`DeltaBaseRef`] and its signature.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChunkSignature {
    /// The chunks whose concatenation is the base (at most [`MAX_DELTA_BASES`]), in file order; a delta
    /// built against `signature` names exactly these.
    pub bases: Vec<ChunkId>,
    /// librsync-format signature (MD4 blocks) of the base, base64 (standard alphabet, padded).
    pub signature: String,
}

/// The answer to a [`ChunkSignaturesRequest`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChunkSignaturesResponse {
    /// One per requested base, in order; `None` where there is none (the file or version is gone, the offset
    /// lies past its end, or the request's budget of base bytes was spent): upload that chunk whole.
    pub signatures: Vec<Option<ChunkSignature>>,
}

/// The answer to a delta upload (`chunks/deltas`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UploadDeltasResponse {
    /// Chunks rebuilt from their delta and newly stored.
    pub stored: u32,
    /// Chunks the workspace already held.
    pub already_present: u32,
    /// Chunks whose delta did not rebuild content matching their id (rsync's block hashes are weak by
    /// design): nothing was stored for them; upload them whole.
    pub failed: Vec<ChunkId>,
}

/// `POST /api/v1/workspaces/{id}/files/commit`: make a new version of `path` visible.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CommitRequest {
    /// Where the file lives.
    pub path: WsPath,
    /// The version the client's copy is based on; `None` for a new file. A stale base is a 409 conflict and
    /// nothing is overwritten.
    pub base_version: Option<u64>,
    /// Content.
    pub manifest: Manifest,
    /// The file's modification time on the client (Unix milliseconds), kept as metadata.
    #[serde(default)]
    pub mtime_ms: Option<i64>,
}

/// Most commits in one [`CommitBatchRequest`]; more is a 413 (`payload_too_large`).
pub const MAX_BATCH_COMMITS: usize = 1000;
/// Most files in one [`ManifestsRequest`]; more is a 413 (`payload_too_large`).
pub const MAX_BATCH_MANIFESTS: usize = 1000;
/// Most chunk ids in one [`FetchChunksRequest`]; more is a 413 (`payload_too_large`).
pub const MAX_FETCH_CHUNKS: usize = 4096;
/// Largest JSON request body the server accepts (a commit of a ~16 GB file's manifest fits); more is a 413
/// (`payload_too_large`).
pub const MAX_JSON_BODY: usize = 32 * 1024 * 1024;

/// `POST /api/v1/workspaces/{id}/files/commit-batch`: many commits in one request and one database
/// transaction. Each commit succeeds or fails on its own (see [`CommitResult`]); the request as a whole fails
/// only for what concerns all of them (authentication, role, a body over the caps).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CommitBatchRequest {
    /// The commits, applied in order (at most [`MAX_BATCH_COMMITS`]). A path may appear more than once: a
    /// later commit sees the version an earlier one made.
    pub commits: Vec<CommitRequest>,
}

/// The answer to a [`CommitBatchRequest`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CommitBatchResponse {
    /// One result per commit, in request order.
    pub results: Vec<CommitResult>,
}

/// What became of one commit of a batch: exactly one of `entry` and `error` is set.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CommitResult {
    /// The path of the commit (as in the request).
    pub path: WsPath,
    /// The new current version, when the commit succeeded.
    pub entry: Option<FileEntry>,
    /// Why it was refused, with the code a single commit would get: `conflict` for a stale base (nothing was
    /// overwritten), `missing_chunks`, `bad_request`, `invalid_path`, `payload_too_large`.
    pub error: Option<ApiErrorBody>,
}

/// One file (and version) in a [`ManifestsRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ManifestRef {
    /// Path of a live file.
    pub path: WsPath,
    /// Version number; `None` for the current one.
    #[serde(default)]
    pub version: Option<u64>,
}

/// `POST /api/v1/workspaces/{id}/files/manifests`: the manifests of many files at once (each audited as
/// `file.access`, like `GET .../files/manifest`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ManifestsRequest {
    /// The files, at most [`MAX_BATCH_MANIFESTS`].
    pub files: Vec<ManifestRef>,
}

/// The answer to a [`ManifestsRequest`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ManifestsResponse {
    /// One entry per requested file, in request order; `None` where no live file is at that path or it has
    /// no such version.
    pub manifests: Vec<Option<VersionManifest>>,
}

/// `POST /api/v1/workspaces/{id}/chunks/fetch`: many chunks in one response. The answer is an
/// `application/octet-stream` body of frames ([`crate::frame`]) in request order, one per id (a repeated id is
/// sent again). If the workspace lacks any of the ids, the answer is a 404 naming them and no frame is sent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FetchChunksRequest {
    /// Chunk ids, at most [`MAX_FETCH_CHUNKS`].
    pub ids: Vec<ChunkId>,
}

/// A live file.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct FileEntry {
    /// File id.
    pub file_id: FileId,
    /// Path.
    pub path: WsPath,
    /// Current version number (1, 2, ...).
    pub version: u64,
    /// Current version id.
    pub version_id: VersionId,
    /// Size in bytes.
    pub size: u64,
    /// Keyed BLAKE3 of the content, hex.
    pub content_hash: String,
    /// Client modification time, Unix milliseconds, if known.
    pub mtime_ms: Option<i64>,
    /// When the current version was committed.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub modified_at: OffsetDateTime,
}

/// `GET /api/v1/workspaces/{id}/files` answer (paged by path).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileList {
    /// Files in path order.
    pub files: Vec<FileEntry>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next_after: Option<String>,
}

/// One version of a file.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VersionInfo {
    /// Version number.
    pub version: u64,
    /// Version id.
    pub version_id: VersionId,
    /// Size in bytes.
    pub size: u64,
    /// Keyed BLAKE3 of the content, hex.
    pub content_hash: String,
    /// Who committed it.
    pub created_by: Option<String>,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// True for the current version.
    pub current: bool,
}

/// A version with its manifest (`GET .../files/manifest`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VersionManifest {
    /// The file.
    pub file: FileEntry,
    /// Its content.
    pub manifest: Manifest,
}

/// A deleted file in the trash.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TrashEntry {
    /// File id.
    pub file_id: FileId,
    /// Path it had.
    pub path: WsPath,
    /// Last version number.
    pub version: u64,
    /// Size of the last version.
    pub size: u64,
    /// Content hash of the last version, as its commit gave it (for an end-to-end encrypted workspace, the
    /// id of the chunk holding its sealed manifest).
    pub content_hash: String,
    /// When it was deleted.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub deleted_at: OffsetDateTime,
}

/// `POST /api/v1/workspaces/{id}/files/delete`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeleteRequest {
    /// File (or folder: every file below it) to move to the trash.
    pub path: WsPath,
}

/// How many files a delete moved to the trash.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeleteResponse {
    /// Files moved to the trash.
    pub deleted: u64,
}

/// `POST /api/v1/workspaces/{id}/files/restore`: bring a file back from the trash, or make an old version
/// current again (as a new version, so history is never rewritten).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RestoreRequest {
    /// The file's path.
    pub path: WsPath,
    /// The version to restore; default: the latest (from the trash) or the previous one.
    pub version: Option<u64>,
}

/// Kind of a change journal entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// A new version became current (upload or restore).
    Upsert,
    /// The file went to the trash.
    Delete,
}

/// One entry of the per-workspace change journal.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Change {
    /// Monotonic sequence number within the workspace.
    pub seq: u64,
    /// What happened.
    pub kind: ChangeKind,
    /// File id.
    pub file_id: FileId,
    /// Path.
    pub path: WsPath,
    /// Version number after the change.
    pub version: u64,
}

/// `GET /api/v1/workspaces/{id}/changes?since=N` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChangeList {
    /// Changes with `seq > since`, oldest first.
    pub changes: Vec<Change>,
    /// The highest sequence number returned (or `since` when none): pass it as the next `since`.
    pub latest: u64,
    /// More changes are waiting beyond this page.
    pub more: bool,
}

/// Most audit rows in one page.
pub const MAX_AUDIT_PAGE: u32 = 1000;

/// `GET /api/v1/audit` and `GET /api/v1/workspaces/{id}/audit` query: which rows, newest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditListParams {
    /// Only rows at or after this time (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<String>, format = DateTime)]
    pub since: Option<OffsetDateTime>,
    /// Only rows before this time (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<String>, format = DateTime)]
    pub until: Option<OffsetDateTime>,
    /// Comma-separated event names; a trailing `*` matches a group (`file.*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<String>,
    /// Only rows by the account with this email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Paging cursor: only rows before this position (`next_before` of the previous page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    /// Page size (default 100, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// One audit row. It holds ids and short hash prefixes, never a secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Row id.
    #[schema(value_type = String)]
    pub id: crate::AuditId,
    /// The chain: a workspace id, or `global` for account events.
    pub chain: String,
    /// Position in the chain, from 1.
    pub seq: u64,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    /// What happened.
    pub event: crate::AuditEvent,
    /// Success or failure.
    pub outcome: crate::Outcome,
    /// Who did it (absent for a login attempt on an unknown account).
    pub actor_id: Option<UserId>,
    /// That account's email, when it still exists.
    pub actor_email: Option<String>,
    /// The workspace.
    pub workspace_id: Option<WorkspaceId>,
    /// Client address.
    pub ip: Option<String>,
    /// What it was done to (a path, an account or key id, a session id).
    pub target: Option<String>,
    /// Small structured details (method, roles, old and new settings, reason).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// Hash of the previous row in the chain, hex.
    pub prev_hash: String,
    /// This row's hash, hex.
    pub hash: String,
}

/// A page of audit rows, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    /// The rows.
    pub entries: Vec<AuditEntry>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    pub next_before: Option<u64>,
}

/// The first broken row of a chain.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BrokenAuditRow {
    /// The position where the chain breaks.
    pub seq: u64,
    /// The row found there, if any.
    #[schema(value_type = Option<String>)]
    pub id: Option<crate::AuditId>,
    /// What is wrong.
    pub reason: String,
}

/// `GET .../audit/verify`: the result of re-hashing a whole chain.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditVerifyReport {
    /// The chain: a workspace id, or `global`.
    pub chain: String,
    /// Rows checked before the first break (all of them when intact).
    pub rows: u64,
    /// True when every row links to the one before and matches its hash, and the chain ends at its head.
    pub ok: bool,
    /// The hash of the chain's last row, hex: note it somewhere else to detect a rewrite of the whole chain.
    pub head_hash: String,
    /// The first broken row, when not ok.
    pub first_broken: Option<BrokenAuditRow>,
}

/// Proof that the account's owner is at the keyboard, for minting a credential (an API key, end-to-end keys):
/// a current authenticator code when the account has two-factor authentication on (`mfa_required` without
/// one), else, on a session opened more than 15 minutes ago, the password (`reauthentication_required`).
/// Sent as the fields `totp` and `password` of the request it belongs to.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FreshProof {
    /// A current authenticator code (or a recovery code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp: Option<String>,
    /// The account password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl std::fmt::Debug for FreshProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreshProof")
            .field("totp", &self.totp.as_ref().map(|_| "***"))
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The prefix of every API key (`csk_<id>_<secret>`).
pub const API_KEY_PREFIX: &str = "csk_";
/// Most API keys one account may hold.
pub const MAX_API_KEYS: usize = 50;
/// Most workspaces one API key may name.
pub const MAX_API_KEY_WORKSPACES: usize = 100;
/// Longest rotation grace period (30 days).
pub const MAX_API_KEY_GRACE_SECS: u64 = 30 * 24 * 3600;

/// `POST /api/v1/apikeys`: a new key acting for the caller.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateApiKeyRequest {
    /// A name, unique among the caller's keys.
    pub name: String,
    /// The highest role the key acts with: viewer, editor or admin (never owner). In each workspace it acts
    /// with the lower of this and the account's own role.
    pub role: Role,
    /// The workspaces it may reach (the caller must be a member of each); absent: all of the caller's,
    /// including ones joined later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspaces: Option<Vec<WorkspaceId>>,
    /// When it stops working; absent: never.
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    /// Proof that the account's owner is at the keyboard.
    #[serde(flatten)]
    pub proof: FreshProof,
}

/// `POST /api/v1/apikeys/{id}/rotate`: a new secret for the key.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct RotateApiKeyRequest {
    /// How long the old secret keeps working, in seconds (default 0: it stops at once; at most 30 days).
    #[serde(default)]
    pub grace_seconds: u64,
    /// Proof that the account's owner is at the keyboard.
    #[serde(flatten)]
    pub proof: FreshProof,
}

/// An API key as its owner sees it (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    /// Public id: the `<id>` in `csk_<id>_<secret>`.
    pub id: String,
    /// Name.
    pub name: String,
    /// The highest role it acts with.
    pub role: Role,
    /// The workspaces it may reach; absent: all of the owner's.
    pub workspaces: Option<Vec<WorkspaceId>>,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Expiry; absent: never.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    /// Last use (recorded at most once a minute).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<OffsetDateTime>,
    /// Address of the last use.
    pub last_used_ip: Option<String>,
    /// After a rotation, until when the previous secret still works.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub previous_secret_valid_until: Option<OffsetDateTime>,
}

/// A created or rotated key with its secret, shown this once.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct NewApiKey {
    /// The key.
    pub key: ApiKey,
    /// `csk_<id>_<secret>`: send it as `Authorization: Bearer ...`. It cannot be shown again.
    pub secret: String,
}

impl std::fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiKey").field("key", &self.key).finish_non_exhaustive()
    }
}

/// Most live share links in one workspace.
pub const MAX_SHARES_PER_WORKSPACE: usize = 10_000;

/// `POST /api/v1/workspaces/{id}/shares` (Editor): a link to one file.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateShareRequest {
    /// The file; the link serves its current version at download time.
    pub path: WsPath,
    /// A password the downloader must give (at least 8 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// When the link stops working; absent: never.
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    /// Most downloads; absent: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_downloads: Option<u64>,
}

impl std::fmt::Debug for CreateShareRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateShareRequest")
            .field("path", &self.path)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("expires_at", &self.expires_at)
            .field("max_downloads", &self.max_downloads)
            .finish()
    }
}

/// A share link as the workspace's members see it (never its token or password).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ShareLink {
    /// Handle, for revoking.
    #[schema(value_type = String)]
    pub id: crate::ShareId,
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// The file.
    pub path: WsPath,
    /// Who made it.
    pub created_by: Option<String>,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Expiry; absent: never.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    /// A password is needed.
    pub has_password: bool,
    /// Most downloads; absent: unlimited.
    pub max_downloads: Option<u64>,
    /// Downloads so far.
    pub downloads: u64,
}

/// A created link with its token, shown this once.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct NewShareLink {
    /// The link.
    pub link: ShareLink,
    /// The secret part of the URL.
    pub token: String,
    /// The link's path on the server: `/s/{token}` (prefix it with the server's address).
    pub url_path: String,
}

impl std::fmt::Debug for NewShareLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewShareLink").field("link", &self.link).finish_non_exhaustive()
    }
}

/// Largest sealed secret-key blob accepted.
pub const MAX_SEALED_KEY_BYTES: usize = 1024;

/// `PUT /api/v1/keys/me`: an account's end-to-end keys, made and sealed on the client (base64). The first
/// upload stores them; later ones may only reseal the same identity under a new passphrase. Like minting an
/// API key, it needs a fresh proof: a current authenticator code when MFA is on, else a login from the last
/// 15 minutes or the password.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UploadUserKeys {
    /// The public identity: signing key, agreement key and the account's self-signature (128 bytes).
    pub identity: String,
    /// The secret keys sealed under the passphrase (Argon2id parameters and salt included).
    pub sealed_by_passphrase: String,
    /// The secret keys sealed under the recovery key (ignored on a reseal).
    pub sealed_by_recovery: String,
    /// Proof that the account's owner is at the keyboard.
    #[serde(flatten)]
    pub proof: FreshProof,
}

/// `GET /api/v1/keys/me`: the caller's end-to-end keys as stored (public, or sealed on the client).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MyUserKeys {
    /// The public identity, base64.
    pub identity: String,
    /// Sealed under the passphrase, base64.
    pub sealed_by_passphrase: String,
    /// Sealed under the recovery key, base64.
    pub sealed_by_recovery: String,
    /// The identity's fingerprint, as the server computes it (clients compute their own).
    pub fingerprint: String,
}

/// `GET /api/v1/keys?email=...`: another account's public identity. Clients verify its self-signature and
/// compare its fingerprint with the one they saw before; the server's word is not trusted.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PublicUserKeys {
    /// The account.
    pub user_id: UserId,
    /// Its email.
    pub email: String,
    /// The public identity, base64.
    pub identity: String,
}
