//! Share links: one file reachable without an account, through `/s/<token>`.
//!
//! The token is 256 random bits of which only a hash is stored, so the database (and the audit log, which
//! names links by their handle) cannot rebuild a link. A link may have a password (Argon2id), an expiry and a
//! download limit; unknown, expired, revoked and used-up links all answer the same "not found". Every attempt
//! is charged to the client's address before anything is looked up, and every password attempt to the link
//! before the password is checked, so neither tokens nor passwords can be guessed at speed. The workspace's
//! IP allowlist applies as it does to members. Creation, each download or refusal, and revocation are audited.

use cloudsync_crypto::{hash_token, password, random_token};
use cloudsync_store::{FileRecord, ShareRecord, VersionRecord};
use cloudsync_types::api::{CreateShareRequest, MAX_SHARES_PER_WORKSPACE, Manifest, NewShareLink, ShareLink};
use cloudsync_types::{AuditEvent, Outcome, Role, ShareId, allowlist_permits};
use zeroize::Zeroizing;

use crate::{Access, AuditExt, ChunkIo, Core, CoreError, CoreResult, decode_manifest, ms_of, time_of};

/// Most downloads a link may allow.
const MAX_DOWNLOAD_LIMIT: u64 = 1_000_000;

/// What a share link serves, ready to stream.
#[derive(Debug)]
pub struct ShareDownload {
    /// The file.
    pub file: FileRecord,
    /// Its current version.
    pub version: VersionRecord,
    /// That version's chunks.
    pub manifest: Manifest,
    /// Reads them.
    pub io: ChunkIo,
}

/// Why a link did not open, as the downloader sees it.
const NO_LINK: CoreError = CoreError::NotFound("share link");

/// The members' view of a link.
pub fn share_view(s: &ShareRecord, created_by: Option<String>) -> ShareLink {
    ShareLink {
        id: s.id,
        workspace_id: s.workspace_id,
        path: s.path.clone(),
        created_by,
        created_at: time_of(s.created_ms),
        expires_at: s.expires_ms.map(time_of),
        has_password: s.password_hash.is_some(),
        max_downloads: s.max_downloads,
        downloads: s.downloads,
    }
}

impl Core {
    /// Creates a link to a live file (Editor).
    ///
    /// # Errors
    /// `Forbidden` below Editor, `NotFound` for no such live file, `BadRequest` for a short password, a past
    /// expiry or a zero limit, `Conflict` past the workspace's link limit.
    pub async fn create_share(&self, access: &Access, req: &CreateShareRequest) -> CoreResult<NewShareLink> {
        if access.role < Role::Editor {
            return Err(CoreError::Forbidden("creating share links needs the editor role".into()));
        }
        self.refuse_content_op_if_e2ee(access, "a share link", "").await?;
        let file = self.store.file_by_path(access.workspace, &req.path).await?.ok_or(CoreError::NotFound("file"))?;
        let now = self.now_ms();
        let expires_ms = req.expires_at.map(ms_of);
        if expires_ms.is_some_and(|e| e <= now) {
            return Err(CoreError::BadRequest("the expiry must be in the future".into()));
        }
        if req.max_downloads.is_some_and(|m| m == 0 || m > MAX_DOWNLOAD_LIMIT) {
            return Err(CoreError::BadRequest(format!("the download limit must be 1 to {MAX_DOWNLOAD_LIMIT}")));
        }
        let password_hash = match &req.password {
            None => None,
            Some(pw) => {
                if pw.chars().count() < 8 || pw.len() > password::MAX_PASSWORD_BYTES {
                    return Err(CoreError::BadRequest(format!(
                        "a share link's password must have 8 characters to {} bytes",
                        password::MAX_PASSWORD_BYTES
                    )));
                }
                let pw = Zeroizing::new(pw.clone());
                Some(
                    tokio::task::spawn_blocking(move || password::hash(&pw))
                        .await
                        .map_err(|e| CoreError::Internal(e.to_string()))?
                        .map_err(|e| CoreError::Internal(e.to_string()))?,
                )
            }
        };
        if self.store.list_shares(access.workspace, now).await?.len() >= MAX_SHARES_PER_WORKSPACE {
            return Err(CoreError::Conflict(format!(
                "a workspace holds at most {MAX_SHARES_PER_WORKSPACE} live share links; revoke old ones first"
            )));
        }
        let token = Zeroizing::new(random_token());
        let rec = ShareRecord {
            id: ShareId::new(),
            workspace_id: access.workspace,
            token_hash: hash_token(&token),
            path: file.path.clone(),
            file_id: file.id,
            created_by: access.actor.user_id,
            api_key_id: access.actor.api_key.as_ref().map(|k| k.id.clone()),
            created_ms: now,
            expires_ms,
            password_hash,
            max_downloads: req.max_downloads,
            downloads: 0,
            revoked_ms: None,
        };
        let row = self
            .audit(AuditEvent::ShareCreated, Some(&access.actor), Some(access.workspace))
            .target(rec.id.to_string())
            .detail("path", file.path.as_str())
            .detail("password", rec.password_hash.is_some())
            .detail("expires_ms", expires_ms)
            .detail("max_downloads", req.max_downloads);
        self.store.create_share(&rec, &[row]).await?;
        Ok(NewShareLink {
            link: share_view(&rec, Some(access.actor.email.clone())),
            url_path: format!("/s/{}", token.as_str()),
            token: token.to_string(),
        })
    }

    /// The workspace's live links: all of them for Admins and Owners, one's own for Editors.
    ///
    /// # Errors
    /// `Forbidden` below Editor, or a store failure.
    pub async fn list_shares(&self, access: &Access) -> CoreResult<Vec<ShareLink>> {
        if access.role < Role::Editor {
            return Err(CoreError::Forbidden("share links are listed for editors and above".into()));
        }
        let all = self.store.list_shares(access.workspace, self.now_ms()).await?;
        let mut out = Vec::with_capacity(all.len());
        let mut emails = std::collections::HashMap::new();
        for s in all.iter().filter(|s| access.role >= Role::Admin || s.created_by == access.actor.user_id) {
            let email = match emails.get(&s.created_by) {
                Some(e) => Clone::clone(e),
                None => {
                    let e = self.store.user_by_id(s.created_by).await?.map(|u| u.email);
                    emails.insert(s.created_by, e.clone());
                    e
                }
            };
            out.push(share_view(s, email));
        }
        Ok(out)
    }

    /// Revokes a link: its maker, or an Admin or Owner.
    ///
    /// # Errors
    /// `NotFound` for no such live link, `Forbidden` for someone else's link below Admin.
    pub async fn revoke_share(&self, access: &Access, id: ShareId) -> CoreResult<()> {
        let s = self
            .store
            .share(access.workspace, id)
            .await?
            .filter(|s| s.revoked_ms.is_none())
            .ok_or(CoreError::NotFound("share link"))?;
        if s.created_by != access.actor.user_id && access.role < Role::Admin {
            return Err(CoreError::Forbidden("only its maker or a workspace admin can revoke this link".into()));
        }
        let row = self
            .audit(AuditEvent::ShareRevoked, Some(&access.actor), Some(access.workspace))
            .target(id.to_string())
            .detail("path", s.path.as_str());
        if !self.store.revoke_share(access.workspace, id, self.now_ms(), &[row]).await? {
            return Err(CoreError::NotFound("share link"));
        }
        Ok(())
    }

    /// Opens a link for a download from `ip`: checks rate limits, the link, the workspace's allowlist and the
    /// password, counts the download and audits it.
    ///
    /// # Errors
    /// `RateLimited`; `NotFound` alike for unknown, expired, revoked and used-up links; `Unauthenticated` for a
    /// missing or wrong password; `Forbidden` from an address outside the workspace's allowlist.
    pub async fn open_share(&self, token: &str, pw: Option<&str>, ip: &str) -> CoreResult<ShareDownload> {
        self.charge(format!("share-ip:{}", crate::ip_bucket(ip)), self.limits.per_ip).await?;
        if token.is_empty() || token.len() > 128 || pw.is_some_and(|p| p.len() > password::MAX_PASSWORD_BYTES) {
            return Err(NO_LINK);
        }
        let now = self.now_ms();
        let Some(s) = self.store.share_by_token_hash(&hash_token(token)).await? else { return Err(NO_LINK) };
        let refuse = |reason: &str| self.share_row(&s, ip, Outcome::Failure).detail("reason", reason);
        // The address first: from outside the allowlist a link's state is not revealed.
        let ws = self.store.workspace(s.workspace_id).await?.ok_or(NO_LINK)?;
        if !ip.parse().is_ok_and(|a| allowlist_permits(&ws.ip_allowlist, a)) {
            let row = self
                .audit(AuditEvent::AccessDenied, None, Some(ws.id))
                .outcome(Outcome::Failure)
                .target(ws.id.to_string())
                .detail("reason", "ip_allowlist")
                .detail("share", s.id.to_string());
            self.audit_denial(ws.id, ip, with_ip(row, ip)).await?;
            return Err(CoreError::Forbidden(format!(
                "this link's workspace accepts requests only from its IP allowlist, and your address {ip} is not on it"
            )));
        }
        let dead = if s.revoked_ms.is_some() {
            Some("revoked")
        } else if s.expires_ms.is_some_and(|e| now >= e) {
            Some("expired")
        } else if s.max_downloads.is_some_and(|m| s.downloads >= m) {
            Some("download_limit")
        } else if self.store.member_access(s.workspace_id, s.created_by).await?.is_none_or(|m| m.role < Role::Editor) {
            // A link lives only as long as its maker could make it again.
            Some("maker_lost_access")
        } else if let Some(key) = &s.api_key_id
            && self.store.api_key(key).await?.is_none_or(|k| k.expires_ms.is_some_and(|e| now >= e))
        {
            Some("api_key_revoked")
        } else {
            None
        };
        if let Some(reason) = dead {
            self.store.append_audit(&[refuse(reason)]).await?;
            return Err(NO_LINK);
        }
        if let Some(hash) = &s.password_hash {
            let Some(given) = pw else {
                return Err(CoreError::Unauthenticated(
                    "this link needs its password: send it as the form field `password` (curl -d password=...)".into(),
                ));
            };
            // Charged before the check: a guesser is stopped by the limit, not by the hash's cost alone.
            self.charge(format!("share-link:{}", s.id), self.limits.per_account).await?;
            let (given, hash) = (Zeroizing::new(given.to_owned()), hash.clone());
            let ok = tokio::task::spawn_blocking(move || password::verify(&given, &hash))
                .await
                .map_err(|e| CoreError::Internal(e.to_string()))?;
            if !ok {
                self.store.append_audit(&[refuse("bad_password")]).await?;
                return Err(CoreError::Unauthenticated("the link's password is wrong".into()));
            }
            // As with logins, the right password clears the count, so the people the link was given to are not
            // throttled by their own downloads.
            self.store.rate_limit_clear(&format!("share-link:{}", s.id)).await?;
        }
        // The file the link was made for, while it lives at the link's path: a new file put at that path later
        // was never shared.
        let file = self.store.file_by_path(s.workspace_id, &s.path).await?.filter(|f| f.id == s.file_id);
        let Some(file) = file else {
            self.store.append_audit(&[refuse("file_gone")]).await?;
            return Err(NO_LINK);
        };
        let Some(version) = self.store.version(s.workspace_id, file.id, file.version).await? else {
            return Err(NO_LINK);
        };
        let manifest = decode_manifest(&version.manifest)
            .ok_or_else(|| CoreError::Internal("stored manifest is malformed".into()))?;
        if !self.store.claim_share_download(s.id, now).await? {
            self.store.append_audit(&[refuse("download_limit")]).await?;
            return Err(NO_LINK);
        }
        self.store.append_audit(&[self.share_row(&s, ip, Outcome::Success).detail("version", version.version)]).await?;
        let io = self.chunk_io_for(&ws)?;
        Ok(ShareDownload { file, version, manifest, io })
    }

    fn share_row(&self, s: &ShareRecord, ip: &str, outcome: Outcome) -> cloudsync_store::NewAudit {
        with_ip(
            self.audit(AuditEvent::ShareAccessed, None, Some(s.workspace_id))
                .outcome(outcome)
                .target(s.id.to_string())
                .detail("path", s.path.as_str()),
            ip,
        )
    }
}

/// Sets the client address on a row made without an actor.
fn with_ip(mut row: cloudsync_store::NewAudit, ip: &str) -> cloudsync_store::NewAudit {
    row.ip = Some(ip.to_owned());
    row
}

#[cfg(test)]
mod tests {
    use cloudsync_types::WsPath;
    use cloudsync_types::api::CommitRequest;

    use super::*;
    use crate::testutil::core_with_account;
    use crate::{Clock as _, LoginLimits};

    #[tokio::test]
    async fn expired_revoked_and_unknown_links_fail_alike_and_addresses_are_limited() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (core, clock, owner) = core_with_account(dir.path()).await;
        let core = core.with_login_limits(LoginLimits { per_account: 10, per_ip: 6, window_ms: 60_000 });
        let ws = core.create_workspace(&owner, "W", false).await.expect("ws");
        let access = core.access(owner, ws.id, Role::Owner).await.expect("owner");
        let path = WsPath::parse("empty.txt").expect("path");
        let manifest = Manifest { size: 0, content_hash: "00".repeat(32), chunks: vec![] };
        core.commit(&access, &CommitRequest { path: path.clone(), base_version: None, manifest, mtime_ms: None })
            .await
            .expect("commit");
        let in_an_hour = time::OffsetDateTime::from_unix_timestamp(clock.now_ms() / 1000 + 3600).expect("time");
        let req = CreateShareRequest { path, password: None, expires_at: Some(in_an_hour), max_downloads: None };
        let link = core.create_share(&access, &req).await.expect("share");
        let revoked = core.create_share(&access, &req).await.expect("share");
        core.revoke_share(&access, revoked.link.id).await.expect("revoke");
        assert!(core.open_share(&link.token, None, "10.0.0.1").await.is_ok(), "live");
        clock.advance_ms(3_600_000);
        let msg = |r: CoreResult<ShareDownload>| match r {
            Err(CoreError::NotFound(what)) => what,
            other => panic!("want not found, got {other:?}"),
        };
        let expired = msg(core.open_share(&link.token, None, "10.0.0.1").await);
        let gone = msg(core.open_share(&revoked.token, None, "10.0.0.1").await);
        let unknown = msg(core.open_share("no-such-token", None, "10.0.0.1").await);
        assert_eq!((expired, gone), (unknown, unknown), "one answer for every dead link");
        // The address budget (6 a window here; the hour above began a new window, of which three are used) is
        // charged before the token is even looked up.
        for _ in 0..3 {
            assert!(matches!(core.open_share("scan", None, "10.0.0.1").await, Err(CoreError::NotFound(_))));
        }
        assert!(matches!(core.open_share("scan", None, "10.0.0.1").await, Err(CoreError::RateLimited { .. })));
        assert!(matches!(core.open_share("scan", None, "10.0.0.2").await, Err(CoreError::NotFound(_))), "per address");
        assert!(
            matches!(core.open_share(&link.token, None, "10.0.0.1").await, Err(CoreError::RateLimited { .. })),
            "a limited address cannot open even a live link"
        );
    }
}
