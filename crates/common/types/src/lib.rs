//! Types shared by the CloudSync server and client: ids, roles, workspace paths and the JSON bodies of the
//! HTTP API. Both halves depend on this crate and on nothing of each other, so everything that crosses the
//! wire is defined once, here.

pub mod api;
pub mod audit;
pub mod cidr;
pub mod error;
pub mod frame;
pub mod ids;
pub mod path;
pub mod role;

pub use audit::{AuditEvent, Outcome};
pub use cidr::{BadCidr, Cidr, allowlist_permits};
pub use error::{ApiErrorBody, ErrorCode};
pub use ids::{AuditId, ChunkId, FileId, SessionId, ShareId, UserId, VersionId, WorkspaceId};
pub use path::{PathError, WsPath};
pub use role::Role;

/// Upper bound on one chunk's plaintext size; the server refuses anything larger.
pub const MAX_CHUNK_SIZE: usize = 8 * 1024 * 1024;
/// Upper bound on the number of chunks in one manifest (~1 TB at the default 1 MiB average).
pub const MAX_MANIFEST_CHUNKS: usize = 1_000_000;
