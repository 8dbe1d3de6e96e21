//! API keys: `csk_<id>_<secret>` bearer tokens for scripts and services.
//!
//! The id is public (it names the key in listings and the audit log); the secret is 256 random bits of
//! which only a hash is stored, compared in constant time. A key acts for its owner with a role ceiling (in
//! each workspace, the lower of the ceiling and the owner's own role) and, optionally, only in named
//! workspaces. Keys cannot manage the account: no keys, devices or two-factor changes through a key, so a
//! leaked key cannot mint another or outlive its revocation. Creating or rotating a key asks for a fresh
//! second factor when the account has one, and a key so made counts as MFA for workspaces that require it.
//! Each use is recorded (time and address) and audited as `apikey.used`, at most once a minute per key and
//! address. Revocation deletes the key, so the next request with it fails.

use cloudsync_crypto::{ct_eq, hash_token, random_bytes};
use cloudsync_store::{ApiKeyRecord, NewAudit};
use cloudsync_types::api::{
    ApiKey, CreateApiKeyRequest, FreshProof, MAX_API_KEY_GRACE_SECS, MAX_API_KEY_WORKSPACES, MAX_API_KEYS,
    MAX_NAME_BYTES, NewApiKey,
};
use cloudsync_types::{AuditEvent, Outcome, Role, SessionId, WorkspaceId};
use zeroize::Zeroizing;

use crate::{Actor, AuditExt, Core, CoreError, CoreResult, ms_of, time_of};

pub use cloudsync_types::api::API_KEY_PREFIX;
/// How often a key's use is written and audited (at most, per address).
const USE_EVERY_MS: i64 = 60_000;

/// What an API key allows; set on an [`Actor`] that authenticated with one.
#[derive(Debug, Clone)]
pub struct ApiKeyGrant {
    /// The key's public id.
    pub id: String,
    /// Its role ceiling.
    pub role: Role,
    /// The workspaces it may reach; None: all of the owner's.
    pub workspaces: Option<Vec<WorkspaceId>>,
}

impl ApiKeyGrant {
    /// Whether the key may reach `ws` at all.
    pub fn reaches(&self, ws: WorkspaceId) -> bool {
        self.workspaces.as_ref().is_none_or(|w| w.contains(&ws))
    }
}

impl Actor {
    /// Refuses requests made with an API key: account security (keys, devices, two-factor authentication)
    /// is managed from a signed-in session only.
    ///
    /// # Errors
    /// `Forbidden` for an API key.
    pub fn require_session(&self, what: &str) -> CoreResult<()> {
        if self.api_key.is_some() {
            return Err(CoreError::Forbidden(format!(
                "an API key cannot {what}; sign in with `cloudsync login` to do it"
            )));
        }
        Ok(())
    }
}

/// Splits `csk_<id>_<secret>`; None when it does not have that shape.
fn split_key(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix(API_KEY_PREFIX)?.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 16) && hex(secret, 64)).then_some((id, secret))
}

/// The owner's view of a key.
pub fn api_key_view(k: &ApiKeyRecord, now_ms: i64) -> ApiKey {
    ApiKey {
        id: k.id.clone(),
        name: k.name.clone(),
        role: k.role,
        workspaces: k.workspaces.clone(),
        created_at: time_of(k.created_ms),
        expires_at: k.expires_ms.map(time_of),
        last_used_at: k.last_used_ms.map(time_of),
        last_used_ip: k.last_used_ip.clone(),
        previous_secret_valid_until: k.old_valid_until_ms.filter(|u| *u > now_ms).map(time_of),
    }
}

const BAD_KEY: &str = "the API key is invalid or was revoked; create a new one with `cloudsync apikey create`";

impl Core {
    /// Creates a key for the caller; its secret is in the answer only.
    ///
    /// # Errors
    /// `Forbidden` through an API key, `MfaRequired` without a code when MFA is on, `BadRequest` for a wrong
    /// code or bad input, `Conflict` for a name in use, `RateLimited`.
    pub async fn create_api_key(&self, actor: &Actor, req: &CreateApiKeyRequest) -> CoreResult<NewApiKey> {
        actor.require_session("create API keys")?;
        let name = req.name.trim();
        if name.is_empty() || name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
            return Err(CoreError::BadRequest(format!(
                "an API key name must be 1 to {MAX_NAME_BYTES} bytes without control characters"
            )));
        }
        if req.role == Role::Owner {
            return Err(CoreError::BadRequest(
                "an API key's role is viewer, editor or admin: owner actions (deleting a workspace, managing admins, settings) need a signed-in owner".into(),
            ));
        }
        let now = self.now_ms();
        let expires_ms = req.expires_at.map(ms_of);
        if expires_ms.is_some_and(|e| e <= now) {
            return Err(CoreError::BadRequest("the expiry must be in the future".into()));
        }
        if let Some(list) = &req.workspaces {
            if list.is_empty() || list.len() > MAX_API_KEY_WORKSPACES {
                return Err(CoreError::BadRequest(format!(
                    "name 1 to {MAX_API_KEY_WORKSPACES} workspaces, or none for all of yours"
                )));
            }
            for ws in list {
                if self.store.member_role(*ws, actor.user_id).await?.is_none() {
                    return Err(CoreError::BadRequest(format!(
                        "you are not a member of workspace {ws}, so a key of yours cannot reach it"
                    )));
                }
            }
        }
        let existing = self.store.list_api_keys(actor.user_id).await?;
        if existing.len() >= MAX_API_KEYS {
            return Err(CoreError::Conflict(format!(
                "an account holds at most {MAX_API_KEYS} API keys; revoke unused ones (`cloudsync apikey list`)"
            )));
        }
        if existing.iter().any(|k| k.name == name) {
            return Err(CoreError::Conflict(format!("you already have an API key named {name:?}; pick another name")));
        }
        // Last, once the request is known to be good, so a refused request does not spend a one-time code.
        let mfa = self.fresh_proof(actor, &req.proof, "apikey.create").await?;
        let mut workspaces = req.workspaces.clone();
        if let Some(w) = &mut workspaces {
            w.sort_by_key(|w| w.to_string());
            w.dedup();
        }
        let id = hex::encode(random_bytes::<8>());
        let secret = Zeroizing::new(hex::encode(random_bytes::<32>()));
        let rec = ApiKeyRecord {
            id: id.clone(),
            user_id: actor.user_id,
            name: name.to_owned(),
            role: req.role,
            workspaces,
            secret_hash: hash_token(&secret),
            old_secret_hash: None,
            old_valid_until_ms: None,
            mfa,
            expires_ms,
            created_ms: now,
            last_used_ms: None,
            last_used_ip: None,
        };
        let row = self
            .audit(AuditEvent::ApiKeyCreated, Some(actor), None)
            .target(id.clone())
            .detail("name", name)
            .detail("role", req.role.as_str())
            .detail(
                "workspaces",
                rec.workspaces.as_ref().map_or(serde_json::Value::String("all".into()), |w| {
                    w.iter().map(|w| serde_json::Value::String(w.to_string())).collect()
                }),
            )
            .detail("expires_ms", expires_ms);
        self.store.create_api_key(&rec, &[row]).await.map_err(|e| match e {
            cloudsync_store::StoreError::Conflict(_) => {
                CoreError::Conflict(format!("you already have an API key named {name:?}; pick another name"))
            }
            other => other.into(),
        })?;
        Ok(NewApiKey { key: api_key_view(&rec, now), secret: format!("{API_KEY_PREFIX}{id}_{}", secret.as_str()) })
    }

    /// The caller's keys.
    ///
    /// # Errors
    /// `Forbidden` through an API key, or a store failure.
    pub async fn list_api_keys(&self, actor: &Actor) -> CoreResult<Vec<ApiKey>> {
        actor.require_session("list API keys")?;
        let now = self.now_ms();
        Ok(self.store.list_api_keys(actor.user_id).await?.iter().map(|k| api_key_view(k, now)).collect())
    }

    /// Gives one of the caller's keys a new secret; the old one works for `grace_secs` more.
    ///
    /// # Errors
    /// As [`Core::create_api_key`], or `NotFound`.
    pub async fn rotate_api_key(
        &self,
        actor: &Actor,
        id: &str,
        grace_secs: u64,
        proof: &FreshProof,
    ) -> CoreResult<NewApiKey> {
        actor.require_session("rotate API keys")?;
        if grace_secs > MAX_API_KEY_GRACE_SECS {
            return Err(CoreError::BadRequest(format!(
                "the grace period is at most {} days",
                MAX_API_KEY_GRACE_SECS / 86_400
            )));
        }
        let key = self.own_key(actor, id).await?;
        let mfa = self.fresh_proof(actor, proof, "apikey.rotate").await?;
        let secret = Zeroizing::new(hex::encode(random_bytes::<32>()));
        let now = self.now_ms();
        let until = now + i64::try_from(grace_secs).unwrap_or(0) * 1000;
        let row = self
            .audit(AuditEvent::ApiKeyRotated, Some(actor), None)
            .target(key.id.clone())
            .detail("name", key.name.as_str())
            .detail("grace_seconds", grace_secs);
        if !self.store.rotate_api_key(actor.user_id, &key.id, &hash_token(&secret), until, mfa, &[row]).await? {
            return Err(CoreError::NotFound("API key"));
        }
        let rec = self.own_key(actor, id).await?;
        Ok(NewApiKey {
            key: api_key_view(&rec, now),
            secret: format!("{API_KEY_PREFIX}{}_{}", rec.id, secret.as_str()),
        })
    }

    /// Revokes one of the caller's keys; it stops working at once.
    ///
    /// # Errors
    /// `Forbidden` through an API key, `NotFound`.
    pub async fn revoke_api_key(&self, actor: &Actor, id: &str) -> CoreResult<()> {
        actor.require_session("revoke API keys")?;
        let key = self.own_key(actor, id).await?;
        let row = self
            .audit(AuditEvent::ApiKeyRevoked, Some(actor), None)
            .target(key.id.clone())
            .detail("name", key.name.as_str());
        if !self.store.revoke_api_key(actor.user_id, &key.id, &[row]).await? {
            return Err(CoreError::NotFound("API key"));
        }
        Ok(())
    }

    async fn own_key(&self, actor: &Actor, id: &str) -> CoreResult<ApiKeyRecord> {
        if id.len() > 64 {
            return Err(CoreError::NotFound("API key"));
        }
        self.store.api_key(id).await?.filter(|k| k.user_id == actor.user_id).ok_or(CoreError::NotFound("API key"))
    }

    /// Proof that the account's owner is at the keyboard, for minting a credential: a current code when MFA
    /// is on (true is returned), otherwise a session opened in the last 15 minutes or the password.
    pub(crate) async fn fresh_proof(&self, actor: &Actor, proof: &FreshProof, action: &str) -> CoreResult<bool> {
        if self.step_up(actor, proof.totp.as_deref(), action).await? {
            return Ok(true);
        }
        if self.now_ms() - actor.session_created_ms > crate::mfa::RECENT_LOGIN_MS {
            let Some(pw) = proof.password.as_deref() else { return Err(CoreError::ReauthenticationRequired) };
            self.charge(format!("reauth:{}", actor.user_id), self.limits.per_account).await?;
            if !self.check_password(actor.user_id, pw).await? {
                return Err(CoreError::BadRequest("the password is wrong".into()));
            }
        }
        Ok(false)
    }

    /// A fresh second factor for a risky action when the account has MFA on: true when one was given.
    pub(crate) async fn step_up(&self, actor: &Actor, code: Option<&str>, action: &str) -> CoreResult<bool> {
        let on = self.store.mfa(actor.user_id).await?.is_some_and(|m| m.confirmed);
        if !on {
            return Ok(false);
        }
        let Some(code) = code else { return Err(CoreError::MfaRequired) };
        self.require_second_factor(actor, code, action).await?;
        Ok(true)
    }

    /// Resolves an API key to the actor it acts as. Failures are audited and rate-limited per address.
    ///
    /// # Errors
    /// `Unauthenticated` for a malformed, unknown, revoked or expired key; `RateLimited` past the limit.
    pub(crate) async fn authenticate_api_key(&self, token: &str, ip: &str) -> CoreResult<Actor> {
        let now = self.now_ms();
        let Some((id, secret)) = split_key(token) else {
            return Err(self.bearer_failure(None, "-".into(), ip, "api_key", "malformed", BAD_KEY).await);
        };
        let key = self.store.api_key(id).await?;
        let hash = hash_token(secret);
        let Some(key) = key else {
            return Err(self.bearer_failure(None, id.to_owned(), ip, "api_key", "unknown_key", BAD_KEY).await);
        };
        let current = ct_eq(&hash, &key.secret_hash);
        let previous = key.old_secret_hash.is_some_and(|old| ct_eq(&hash, &old))
            && key.old_valid_until_ms.is_some_and(|until| now < until);
        if !current && !previous {
            let reason =
                if key.old_secret_hash.is_some_and(|old| ct_eq(&hash, &old)) { "rotated_secret" } else { "bad_secret" };
            return Err(self.bearer_failure(Some(key.user_id), key.id.clone(), ip, "api_key", reason, BAD_KEY).await);
        }
        if let Some(exp) = key.expires_ms.filter(|e| now >= *e) {
            let msg = format!(
                "the API key {:?} expired at {}; create a new one with `cloudsync apikey create`",
                key.name,
                time_of(exp)
            );
            return Err(self.bearer_failure(Some(key.user_id), key.id.clone(), ip, "api_key", "expired", &msg).await);
        }
        let user =
            self.store.user_by_id(key.user_id).await?.ok_or_else(|| CoreError::Unauthenticated(BAD_KEY.into()))?;
        let due = key.last_used_ms.is_none_or(|t| now - t >= USE_EVERY_MS) || key.last_used_ip.as_deref() != Some(ip);
        let actor = Actor {
            user_id: user.id,
            email: user.email,
            is_admin: false,
            session_id: SessionId::from_uuid(uuid::Uuid::nil()),
            session_created_ms: key.created_ms,
            session_mfa: key.mfa,
            ip: ip.to_owned(),
            api_key: Some(ApiKeyGrant { id: key.id.clone(), role: key.role, workspaces: key.workspaces.clone() }),
        };
        if due {
            let mut row = self.audit(AuditEvent::ApiKeyUsed, Some(&actor), None).target(key.id.clone());
            if previous {
                row = row.detail("secret", "previous");
            }
            self.store.touch_api_key(&key.id, now, ip, &[row]).await?;
        }
        Ok(actor)
    }

    /// Audits a refused bearer credential and counts it against the address: the error to return.
    pub(crate) async fn bearer_failure(
        &self,
        user: Option<cloudsync_types::UserId>,
        target: String,
        ip: &str,
        method: &str,
        reason: &str,
        message: &str,
    ) -> CoreError {
        let limit = self.limits.per_ip;
        let (n, limited) = match self.hit(&format!("bearer-ip:{}", crate::ip_bucket(ip)), limit).await {
            Ok(hit) => hit,
            Err(e) => return e,
        };
        // Audited while under the limit, and once more when crossing it; past that, refused unrecorded so a
        // flood cannot fill the log.
        if n <= limit + 1 {
            let row = NewAudit {
                event: AuditEvent::AuthLogin,
                outcome: Outcome::Failure,
                actor: user,
                workspace: None,
                ip: Some(ip.to_owned()),
                target: Some(target),
                details: serde_json::json!({"method": method, "reason": if n > limit { "rate_limited" } else { reason }}),
                at_ms: self.now_ms(),
            };
            if let Err(e) = self.store.append_audit(&[row]).await {
                return e.into();
            }
        }
        limited.unwrap_or_else(|| CoreError::Unauthenticated(message.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use cloudsync_crypto::totp::{Algorithm, DIGITS, base32_decode, code_at};
    use cloudsync_types::AuditEvent;

    use super::*;
    use crate::testutil::{core_with_account, mfa_on};
    use crate::{Clock as _, LoginLimits, ManualClock};

    fn req(name: &str, role: Role, workspaces: Option<Vec<WorkspaceId>>) -> CreateApiKeyRequest {
        CreateApiKeyRequest { name: name.into(), role, workspaces, expires_at: None, proof: FreshProof::default() }
    }

    fn totp(code: String) -> FreshProof {
        FreshProof { totp: Some(code), password: None }
    }

    fn pw(password: String) -> FreshProof {
        FreshProof { totp: None, password: Some(password) }
    }

    fn code(secret: &[u8], clock: &ManualClock) -> String {
        code_at(Algorithm::Sha1, secret, u64::try_from(clock.now_ms() / 1000).expect("time"), DIGITS)
    }

    async fn rows(core: &Core, event: AuditEvent) -> Vec<cloudsync_store::AuditRow> {
        let all = core.store.audit_chain(cloudsync_store::GLOBAL_CHAIN, 0, 10_000).await.expect("audit");
        all.into_iter().filter(|r| r.row.event == event).collect()
    }

    #[tokio::test]
    async fn a_key_acts_below_its_ceiling_only_in_its_workspaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (core, _clock, owner) = core_with_account(dir.path()).await;
        let a = core.create_workspace(&owner, "A", false).await.expect("A");
        let b = core.create_workspace(&owner, "B", false).await.expect("B");
        let k = core.create_api_key(&owner, &req("ci", Role::Editor, Some(vec![a.id]))).await.expect("key");
        assert!(split_key(&k.secret).is_some(), "{}", k.key.id);
        let actor = core.authenticate(&k.secret, "10.0.0.1").await.expect("key works");
        assert!(actor.api_key.is_some() && !actor.is_admin && !actor.session_mfa);
        assert_eq!(core.access(actor.clone(), a.id, Role::Editor).await.expect("editor in A").role, Role::Editor);
        let over = core.access(actor.clone(), a.id, Role::Admin).await.expect_err("beyond its role");
        assert!(matches!(&over, CoreError::Forbidden(m) if m.contains("API key acts as editor")), "{over}");
        assert!(matches!(core.access(actor.clone(), b.id, Role::Viewer).await, Err(CoreError::NotFound(_))));
        let listed = core.list_workspaces(&actor).await.expect("list");
        assert_eq!(listed.iter().map(|(w, r)| (w.id, *r)).collect::<Vec<_>>(), vec![(a.id, Role::Editor)]);
        assert!(matches!(core.create_workspace(&actor, "C", false).await, Err(CoreError::Forbidden(_))));

        // Keys cannot manage the account.
        assert!(matches!(
            core.create_api_key(&actor, &req("x", Role::Viewer, None)).await,
            Err(CoreError::Forbidden(_))
        ));
        assert!(matches!(core.list_api_keys(&actor).await, Err(CoreError::Forbidden(_))));
        assert!(matches!(core.revoke_api_key(&actor, &k.key.id).await, Err(CoreError::Forbidden(_))));
        assert!(matches!(core.mfa_enroll(&actor, None).await, Err(CoreError::Forbidden(_))));
        assert!(matches!(core.list_devices(&actor).await, Err(CoreError::Forbidden(_))));

        // What a key does is audited with the key's id.
        core.update_settings(&core.access(owner.clone(), a.id, Role::Owner).await.expect("owner"), &mfa_on(false))
            .await
            .ok();
        let ws_rows = core.store.audit_chain(&a.id.to_string(), 0, 100).await.expect("ws audit");
        assert!(ws_rows.iter().all(|r| r.row.details.get("api_key").is_none()), "a session's rows name no key");

        // An owner role is refused, as are unknown workspaces, past expiries and taken names.
        assert!(matches!(
            core.create_api_key(&owner, &req("o", Role::Owner, None)).await,
            Err(CoreError::BadRequest(_))
        ));
        let stranger = WorkspaceId::new();
        assert!(matches!(
            core.create_api_key(&owner, &req("s", Role::Viewer, Some(vec![stranger]))).await,
            Err(CoreError::BadRequest(_))
        ));
        let past =
            CreateApiKeyRequest { expires_at: Some(time::OffsetDateTime::UNIX_EPOCH), ..req("p", Role::Viewer, None) };
        assert!(matches!(core.create_api_key(&owner, &past).await, Err(CoreError::BadRequest(_))));
        assert!(matches!(
            core.create_api_key(&owner, &req("ci", Role::Viewer, None)).await,
            Err(CoreError::Conflict(_))
        ));

        // Revocation is immediate.
        core.revoke_api_key(&owner, &k.key.id).await.expect("revoke");
        assert!(matches!(core.authenticate(&k.secret, "10.0.0.1").await, Err(CoreError::Unauthenticated(_))));
        assert_eq!(rows(&core, AuditEvent::ApiKeyRevoked).await.len(), 1);
    }

    #[tokio::test]
    async fn expiry_rotation_grace_and_use_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (core, clock, owner) = core_with_account(dir.path()).await;
        let soon = time::OffsetDateTime::from_unix_timestamp(clock.now_ms() / 1000 + 3600).expect("time");
        let k = core
            .create_api_key(
                &owner,
                &CreateApiKeyRequest { expires_at: Some(soon), ..req("nightly", Role::Viewer, None) },
            )
            .await
            .expect("key");
        for _ in 0..3 {
            core.authenticate(&k.secret, "10.0.0.1").await.expect("use");
        }
        assert_eq!(rows(&core, AuditEvent::ApiKeyUsed).await.len(), 1, "uses within a minute are recorded once");
        core.authenticate(&k.secret, "10.0.0.2").await.expect("use from elsewhere");
        clock.advance_ms(61_000);
        core.authenticate(&k.secret, "10.0.0.2").await.expect("use a minute later");
        let used = rows(&core, AuditEvent::ApiKeyUsed).await;
        assert_eq!(used.len(), 3, "a new address and a new minute are recorded");
        assert!(used.iter().all(|r| r.row.target.as_deref() == Some(k.key.id.as_str())));
        let listed = core.list_api_keys(&owner).await.expect("list");
        assert_eq!(listed[0].last_used_ip.as_deref(), Some("10.0.0.2"));

        // Rotation with a ten-minute grace: both secrets work, then only the new one.
        let r = core.rotate_api_key(&owner, &k.key.id, 600, &FreshProof::default()).await.expect("rotate");
        assert_ne!(r.secret, k.secret);
        assert_eq!(r.key.id, k.key.id);
        core.authenticate(&k.secret, "10.0.0.1").await.expect("old secret in the grace period");
        core.authenticate(&r.secret, "10.0.0.1").await.expect("new secret");
        clock.advance_ms(601_000);
        assert!(matches!(core.authenticate(&k.secret, "10.0.0.1").await, Err(CoreError::Unauthenticated(_))));
        core.authenticate(&r.secret, "10.0.0.1").await.expect("new secret after the grace period");
        let r2 = core.rotate_api_key(&owner, &k.key.id, 0, &FreshProof::default()).await.expect("rotate again");
        assert!(matches!(core.authenticate(&r.secret, "10.0.0.1").await, Err(CoreError::Unauthenticated(_))));
        assert!(matches!(
            core.rotate_api_key(&owner, &k.key.id, 31 * 86_400, &FreshProof::default()).await,
            Err(CoreError::BadRequest(_))
        ));

        // Expiry.
        clock.advance_ms(3_600_000);
        let e = core.authenticate(&r2.secret, "10.0.0.1").await.expect_err("expired");
        assert!(matches!(&e, CoreError::Unauthenticated(m) if m.contains("expired")), "{e}");
        let failed = rows(&core, AuditEvent::AuthLogin).await;
        assert!(failed.iter().any(|r| r.row.details["reason"] == "expired" && r.row.details["method"] == "api_key"));
        assert!(failed.iter().any(|r| r.row.details["reason"] == "rotated_secret"));
    }

    #[tokio::test]
    async fn with_mfa_on_a_key_needs_a_fresh_code_and_counts_as_mfa() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (core, clock, owner) = core_with_account(dir.path()).await;
        let e = core.mfa_enroll(&owner, None).await.expect("enroll");
        let secret = base32_decode(&e.secret).expect("base32");
        core.mfa_confirm(&owner, &code(&secret, &clock)).await.expect("confirm");
        let owner = Actor { session_mfa: true, ..owner };
        let ws = core.create_workspace(&owner, "Strict", false).await.expect("ws");
        core.update_settings(&core.access(owner.clone(), ws.id, Role::Owner).await.expect("owner"), &mfa_on(true))
            .await
            .expect("require MFA");

        assert!(matches!(
            core.create_api_key(&owner, &req("k", Role::Viewer, None)).await,
            Err(CoreError::MfaRequired)
        ));
        let wrong = CreateApiKeyRequest { proof: totp("000000".into()), ..req("k", Role::Viewer, None) };
        assert!(matches!(core.create_api_key(&owner, &wrong).await, Err(CoreError::BadRequest(_))));
        clock.advance_ms(30_000);
        let good = CreateApiKeyRequest { proof: totp(code(&secret, &clock)), ..req("k", Role::Viewer, None) };
        let k = core.create_api_key(&owner, &good).await.expect("key with a code");
        let actor = core.authenticate(&k.secret, "10.0.0.1").await.expect("auth");
        assert!(actor.session_mfa);
        core.access(actor, ws.id, Role::Viewer).await.expect("a key made with MFA reaches an MFA workspace");
        assert!(
            matches!(
                core.rotate_api_key(&owner, &k.key.id, 0, &FreshProof::default()).await,
                Err(CoreError::MfaRequired)
            ),
            "rotation asks for a code too"
        );

        // So does changing the workspace's IP allowlist.
        let as_owner = core.access(owner.clone(), ws.id, Role::Owner).await.expect("owner");
        let mut nets = cloudsync_types::api::UpdateSettings {
            ip_allowlist: Some(vec!["127.0.0.1/32".into()]),
            ..Default::default()
        };
        assert!(matches!(core.update_settings(&as_owner, &nets).await, Err(CoreError::MfaRequired)));
        clock.advance_ms(30_000);
        nets.totp = Some(code(&secret, &clock));
        let w = core.update_settings(&as_owner, &nets).await.expect("with a code");
        assert_eq!(w.ip_allowlist, vec!["127.0.0.1/32"]);
    }

    #[tokio::test]
    async fn an_old_session_without_mfa_needs_the_password_to_mint_a_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (core, clock, owner) = core_with_account(dir.path()).await;
        let k = core.create_api_key(&owner, &req("fresh", Role::Admin, None)).await.expect("a fresh login may");
        clock.advance_ms(16 * 60 * 1000);
        assert!(matches!(
            core.create_api_key(&owner, &req("stale", Role::Viewer, None)).await,
            Err(CoreError::ReauthenticationRequired)
        ));
        let wrong = CreateApiKeyRequest { proof: pw("not it".into()), ..req("stale", Role::Viewer, None) };
        assert!(matches!(core.create_api_key(&owner, &wrong).await, Err(CoreError::BadRequest(_))));
        let right =
            CreateApiKeyRequest { proof: pw(crate::testutil::PASSWORD.into()), ..req("stale", Role::Viewer, None) };
        core.create_api_key(&owner, &right).await.expect("with the password");
        assert!(matches!(
            core.rotate_api_key(&owner, &k.key.id, 0, &FreshProof::default()).await,
            Err(CoreError::ReauthenticationRequired)
        ));
        core.rotate_api_key(&owner, &k.key.id, 0, &pw(crate::testutil::PASSWORD.into())).await.expect("rotate");

        // A refused request spends nothing: a taken name is refused before the password is even asked for.
        let taken = core.create_api_key(&owner, &req("stale", Role::Viewer, None)).await;
        assert!(matches!(taken, Err(CoreError::Conflict(_))), "{taken:?}");

        // Keys below admin, or limited to workspaces, cannot create workspaces; no key reads account events.
        let admin_key =
            core.rotate_api_key(&owner, &k.key.id, 0, &pw(crate::testutil::PASSWORD.into())).await.expect("rotate");
        let admin = core.authenticate(&admin_key.secret, "10.0.0.1").await.expect("admin key");
        core.create_workspace(&admin, "By key", false).await.expect("an unscoped admin key creates workspaces");
        let v = CreateApiKeyRequest { proof: pw(crate::testutil::PASSWORD.into()), ..req("v", Role::Editor, None) };
        let editor_key = core.create_api_key(&owner, &v).await.expect("editor key");
        let editor = core.authenticate(&editor_key.secret, "10.0.0.1").await.expect("editor key");
        assert!(matches!(core.create_workspace(&editor, "No", false).await, Err(CoreError::Forbidden(_))));
        let params = cloudsync_types::api::AuditListParams::default();
        assert!(matches!(core.account_audit(&admin, &params).await, Err(CoreError::Forbidden(_))));
    }

    #[tokio::test]
    async fn bad_bearer_credentials_are_audited_then_rate_limited() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (core, _clock, _owner) = core_with_account(dir.path()).await;
        let core = core.with_login_limits(LoginLimits { per_account: 3, per_ip: 3, window_ms: 60_000 });
        let guess = format!("csk_{}_{}", "0".repeat(16), "1".repeat(64));
        for _ in 0..3 {
            assert!(matches!(core.authenticate(&guess, "10.6.6.6").await, Err(CoreError::Unauthenticated(_))));
        }
        for _ in 0..5 {
            assert!(matches!(core.authenticate("not-a-session", "10.6.6.6").await, Err(CoreError::RateLimited { .. })));
        }
        let failed = rows(&core, AuditEvent::AuthLogin).await;
        assert_eq!(failed.len(), 4, "three failures and the crossing of the limit, not the flood after it");
        assert_eq!(failed[3].row.details["reason"], "rate_limited");
        assert!(
            matches!(core.authenticate(&guess, "10.7.7.7").await, Err(CoreError::Unauthenticated(_))),
            "per address"
        );
    }

    #[test]
    fn keys_split_only_in_their_exact_shape() {
        let id = "0123456789abcdef";
        let secret = "ab".repeat(32);
        assert_eq!(split_key(&format!("csk_{id}_{secret}")), Some((id, secret.as_str())));
        assert_eq!(split_key(&format!("csk_{id}{secret}")), None);
        assert_eq!(split_key(&format!("csk_{id}_{secret}0")), None);
        assert_eq!(split_key(&format!("csk_{id}_{}", "zz".repeat(32))), None);
        assert_eq!(split_key(&format!("sk_{id}_{secret}")), None);
        assert_eq!(split_key("csk_"), None);
    }
}
