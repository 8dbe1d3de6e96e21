//! CloudSync's domain services, free of HTTP and SQL: accounts and sessions, workspaces and members, files,
//! versions, trash and the chunk store with encryption at rest. The HTTP layer decides *who* may call what
//! (extractors check roles before a handler runs); this crate enforces the rules *inside* an action (an Admin
//! manages only members below Admin, the last Owner stays, a chunk id must match its content, a commit
//! references only durable chunks) and writes every action's audit row with it.

mod apikeys;
mod audit;
mod auth;
mod chunks;
mod delta;
mod e2ee;
mod error;
mod files;
mod gc;
mod manifest;
mod mfa;
mod shares;
#[cfg(test)]
mod testutil;
mod upload;
mod userkeys;
mod workspaces;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use cloudsync_blob::BlobStore;
use cloudsync_crypto::SecretKey;
use cloudsync_store::{NewAudit, Store};
use cloudsync_types::{AuditEvent, Outcome, Role, SessionId, UserId, WorkspaceId};

pub use apikeys::{API_KEY_PREFIX, ApiKeyGrant, api_key_view};
pub use auth::{LoginLimits, Session};
pub use chunks::ChunkIo;
pub use delta::MAX_SIGNATURE_BYTES;
pub use error::{CoreError, CoreResult};
pub use gc::{DEFAULT_GC_GRACE_MS, GcOptions, GcReport, MIN_GC_GRACE_MS};
pub use manifest::{decode_manifest, encode_manifest};
pub use mfa::{MFA_LOCKOUT, RECOVERY_CODES};
pub use shares::{ShareDownload, share_view};
pub use upload::{ChunkUpload, FLUSH_CHUNKS};

/// The key that keys the audit chain's hashes, derived from the server master key (so it is never in the
/// database). The store is opened with it; verification uses it too.
pub fn audit_key(master: &SecretKey) -> cloudsync_store::AuditKey {
    cloudsync_store::AuditKey::from_bytes(*master.derive("cloudsync 2026 audit-chain-key v1").as_bytes())
}

/// Unix milliseconds as a time (the epoch for a value out of range).
pub fn time_of(ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// A time as Unix milliseconds (saturating).
pub fn ms_of(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// How many refusals by an IP allowlist are audited per workspace and address in one rate-limit window.
const DENIALS_AUDITED: u32 = 20;

/// The bucket an address is rate-limited in: the address itself for IPv4, its /64 network for IPv6 (one
/// host commonly holds a whole /64, so per-address limits on IPv6 would be no limit at all).
pub(crate) fn ip_bucket(ip: &str) -> String {
    match ip.parse::<std::net::IpAddr>().map(|a| a.to_canonical()) {
        Ok(std::net::IpAddr::V6(v6)) => {
            let net = std::net::Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64));
            format!("{net}/64")
        }
        Ok(v4) => v4.to_string(),
        Err(_) => ip.to_owned(),
    }
}

/// A source of time, injected so expiry and rate limits are testable.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Unix milliseconds.
    fn now_ms(&self) -> i64;
}

/// The real clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// A clock tests move by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// Starts at `ms`.
    pub fn new(ms: i64) -> Self {
        Self(AtomicI64::new(ms))
    }
    /// Moves forward.
    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Everything the services need.
#[derive(Clone)]
pub struct Core {
    store: Arc<dyn Store>,
    blobs: BlobStore,
    master: Arc<SecretKey>,
    clock: Arc<dyn Clock>,
    limits: LoginLimits,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").field("store", &self.store).field("limits", &self.limits).finish_non_exhaustive()
    }
}

/// Who is acting, as established by authentication.
#[derive(Debug, Clone)]
pub struct Actor {
    /// Account.
    pub user_id: UserId,
    /// Account email.
    pub email: String,
    /// Server administrator.
    pub is_admin: bool,
    /// The session the request came with.
    pub session_id: SessionId,
    /// When that session was opened (a login): security changes on an older session need the password.
    pub session_created_ms: i64,
    /// That session was opened with a second factor (or one was proven on it since).
    pub session_mfa: bool,
    /// Client address (after trusted-proxy resolution).
    pub ip: String,
    /// Set when the request came with an API key rather than a session: what the key allows.
    pub api_key: Option<ApiKeyGrant>,
}

/// An actor's verified access to one workspace; only the HTTP extractor (and tests) build one, after checking
/// membership and role.
#[derive(Debug, Clone)]
pub struct Access {
    /// Who.
    pub actor: Actor,
    /// Which workspace.
    pub workspace: WorkspaceId,
    /// Their role there.
    pub role: Role,
}

impl Core {
    /// Wires the services together.
    pub fn new(store: Arc<dyn Store>, blobs: BlobStore, master: SecretKey, clock: Arc<dyn Clock>) -> Self {
        Self { store, blobs, master: Arc::new(master), clock, limits: LoginLimits::default() }
    }

    /// Replaces the login rate limits.
    #[must_use]
    pub fn with_login_limits(mut self, limits: LoginLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The metadata store (for operators' tools and tests).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Now, in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Checks that `actor` is a member of `ws` with at least `needed`, and meets the workspace's policy. A
    /// non-member gets `NotFound` (so ids of other workspaces are not confirmed), a member with a lower role, or
    /// without two-factor authentication where the workspace requires it, `Forbidden`.
    ///
    /// # Errors
    /// As above, or a store failure.
    pub async fn access(&self, actor: Actor, ws: WorkspaceId, needed: Role) -> CoreResult<Access> {
        if actor.api_key.as_ref().is_some_and(|k| !k.reaches(ws)) {
            return Err(CoreError::NotFound("workspace"));
        }
        let member = self.store.member_access(ws, actor.user_id).await?.ok_or(CoreError::NotFound("workspace"))?;
        let role = actor.api_key.as_ref().map_or(member.role, |k| member.role.min(k.role));
        // The address is checked before the role and MFA policy, so a refused network learns nothing more.
        if !member.ip_allowlist.is_empty() {
            let permitted =
                actor.ip.parse().is_ok_and(|ip| cloudsync_types::allowlist_permits(&member.ip_allowlist, ip));
            if !permitted {
                let mut row = self
                    .audit(AuditEvent::AccessDenied, Some(&actor), Some(ws))
                    .outcome(Outcome::Failure)
                    .target(ws.to_string())
                    .detail("reason", "ip_allowlist");
                if actor.api_key.is_none() {
                    row = row.detail("session", actor.session_id.to_string());
                }
                self.audit_denial(ws, &actor.ip, row).await?;
                return Err(CoreError::Forbidden(format!(
                    "this workspace accepts requests only from its IP allowlist, and your address {} is not on it; ask a workspace owner",
                    actor.ip
                )));
            }
        }
        if member.require_mfa && !member.has_mfa {
            return Err(CoreError::Forbidden(
                "this workspace requires two-factor authentication of its members: turn it on with `cloudsync mfa enable`"
                    .into(),
            ));
        }
        if member.require_mfa && !actor.session_mfa {
            return Err(CoreError::Forbidden(
                "this workspace requires two-factor authentication of its members, and this session was opened without it: log in again with your code (`cloudsync login ... --totp CODE`)"
                    .into(),
            ));
        }
        if role < needed
            && let Some(k) = actor.api_key.as_ref().filter(|k| k.role < member.role)
        {
            return Err(CoreError::Forbidden(format!(
                "this needs the {needed} role in the workspace; this API key acts as {} at most",
                k.role
            )));
        }
        if role < needed {
            return Err(CoreError::Forbidden(format!(
                "this needs the {needed} role in the workspace; you are {role}. Ask a workspace admin or owner"
            )));
        }
        Ok(Access { actor, workspace: ws, role })
    }

    /// Writes an `access.denied` row, at most [`DENIALS_AUDITED`] per workspace and address a rate-limit
    /// window (and one more that says so), so a client retrying from outside an allowlist cannot fill the log.
    pub(crate) async fn audit_denial(&self, ws: WorkspaceId, ip: &str, row: NewAudit) -> CoreResult<()> {
        let (n, _) = self.hit(&format!("denied:{ws}:{}", ip_bucket(ip)), u32::MAX).await?;
        if n <= DENIALS_AUDITED {
            self.store.append_audit(&[row]).await?;
        } else if n == DENIALS_AUDITED + 1 {
            self.store.append_audit(&[row.detail("further", "not recorded until the window ends")]).await?;
        }
        Ok(())
    }

    fn audit(&self, event: AuditEvent, actor: Option<&Actor>, ws: Option<WorkspaceId>) -> NewAudit {
        let mut details = serde_json::Map::new();
        if let Some(k) = actor.and_then(|a| a.api_key.as_ref()) {
            details.insert("api_key".into(), k.id.clone().into());
        }
        NewAudit {
            event,
            outcome: Outcome::Success,
            actor: actor.map(|a| a.user_id),
            workspace: ws,
            ip: actor.map(|a| a.ip.clone()),
            target: None,
            details: serde_json::Value::Object(details),
            at_ms: self.clock.now_ms(),
        }
    }
}

/// Small builder methods for audit rows.
trait AuditExt {
    fn target(self, t: impl Into<String>) -> Self;
    fn detail(self, k: &str, v: impl Into<serde_json::Value>) -> Self;
    fn outcome(self, o: Outcome) -> Self;
}

impl AuditExt for NewAudit {
    fn target(mut self, t: impl Into<String>) -> Self {
        self.target = Some(t.into());
        self
    }
    fn detail(mut self, k: &str, v: impl Into<serde_json::Value>) -> Self {
        if let serde_json::Value::Object(m) = &mut self.details {
            m.insert(k.to_owned(), v.into());
        }
        self
    }
    fn outcome(mut self, o: Outcome) -> Self {
        self.outcome = o;
        self
    }
}
