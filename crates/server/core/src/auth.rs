//! Accounts, password logins and sessions.
//!
//! Passwords are Argon2id hashes; a session is a random 256-bit token of which only a hash is stored, so a
//! stolen database holds no usable token. Login attempts are counted per account and per client address in the
//! store (shared by every server process) in fixed windows; past the limit a login answers "rate limited" with
//! the seconds left, before the password is even checked. Every attempt is audited, failures included, with
//! the account id (or, for an unknown email, a short hash prefix of it), never the password.

use cloudsync_crypto::{hash_token, keyed_hash, password, random_token};
use cloudsync_store::{NewAudit, SessionRecord, UserRecord};
use cloudsync_types::api::{MAX_EMAIL_BYTES, MAX_NAME_BYTES};
use cloudsync_types::{AuditEvent, Outcome, SessionId, UserId};
use zeroize::Zeroizing;

use crate::mfa::{BAD_CODE, SecondFactor};
use crate::{Actor, AuditExt, Core, CoreError, CoreResult};

/// How often a session's last-seen time is written (at most).
const TOUCH_EVERY_MS: i64 = 60_000;

/// Login rate limits: attempts per window.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    /// Attempts per account per window.
    pub per_account: u32,
    /// Attempts per client address per window.
    pub per_ip: u32,
    /// Window length.
    pub window_ms: i64,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self { per_account: 10, per_ip: 50, window_ms: 15 * 60 * 1000 }
    }
}

/// A new session: the token is shown to the client once.
#[derive(Clone)]
pub struct Session {
    /// Bearer token.
    pub token: String,
    /// Session id.
    pub id: SessionId,
    /// The account.
    pub user: UserRecord,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id).field("user", &self.user).finish_non_exhaustive()
    }
}

/// Lower-cases and checks an email address (a light check: it must look like local@domain).
///
/// # Errors
/// When it is empty, too long or has no `@`.
pub fn normalize_email(email: &str) -> CoreResult<String> {
    let e = email.trim().to_lowercase();
    let valid = e.len() <= MAX_EMAIL_BYTES
        && e.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.'))
        && !e.chars().any(|c| c.is_whitespace() || c.is_control());
    if !valid {
        return Err(CoreError::BadRequest(format!(
            "{email:?} is not a valid email address (expected name@example.com, at most {MAX_EMAIL_BYTES} bytes)"
        )));
    }
    Ok(e)
}

fn check_password_policy(pw: &str) -> CoreResult<()> {
    if pw.chars().count() < 8 {
        return Err(CoreError::BadRequest("the password must have at least 8 characters".into()));
    }
    if pw.len() > password::MAX_PASSWORD_BYTES {
        return Err(CoreError::BadRequest(format!(
            "the password must be at most {} bytes",
            password::MAX_PASSWORD_BYTES
        )));
    }
    Ok(())
}

impl Core {
    /// How an email that matches no account appears in the audit log: a short keyed hash, so repeated attempts
    /// on one address can be correlated but a reader of the log cannot confirm a guessed address offline.
    fn email_tag(&self, email: &str) -> String {
        let key = self.master.derive("cloudsync 2026 audit-email-tag v1");
        format!("email-tag:{}", &hex::encode(keyed_hash(&key, email.as_bytes()))[..12])
    }
}

impl Core {
    /// Creates an account. `by` is the administrator doing it (None: the operator on the host).
    ///
    /// # Errors
    /// Invalid email or password, or the email is taken.
    pub async fn create_user(
        &self,
        email: &str,
        pw: &str,
        is_admin: bool,
        by: Option<&Actor>,
    ) -> CoreResult<UserRecord> {
        let email = normalize_email(email)?;
        check_password_policy(pw)?;
        if by.is_some_and(|a| !a.is_admin) {
            return Err(CoreError::Forbidden("only server administrators can create accounts".into()));
        }
        let pw = Zeroizing::new(pw.to_owned());
        let hash = tokio::task::spawn_blocking(move || password::hash(&pw))
            .await
            .map_err(|e| CoreError::Internal(e.to_string()))?
            .map_err(|e| CoreError::Internal(e.to_string()))?;
        let user = UserRecord { id: UserId::new(), email, password_hash: hash, is_admin, created_ms: self.now_ms() };
        let row = self.audit(AuditEvent::UserCreated, by, None).target(user.id.to_string()).detail("admin", is_admin);
        self.store.create_user(&user, &[row]).await.map_err(|e| match e {
            cloudsync_store::StoreError::Conflict(_) => {
                CoreError::Conflict(format!("an account with the email {} already exists", user.email))
            }
            other => other.into(),
        })?;
        Ok(user)
    }

    pub(crate) async fn charge(&self, key: String, limit: u32) -> CoreResult<()> {
        match self.hit(&key, limit).await? {
            (_, Some(limited)) => Err(limited),
            (_, None) => Ok(()),
        }
    }

    /// Counts one hit on `key` in the current rate-limit window (shared by every server process): the count
    /// so far, and, past `limit`, the `RateLimited` error to answer with the seconds left in the window.
    pub(crate) async fn hit(&self, key: &str, limit: u32) -> CoreResult<(u32, Option<CoreError>)> {
        let now = self.now_ms();
        let w = self.limits.window_ms.max(1);
        let start = now - now.rem_euclid(w);
        let n = self.store.rate_limit_hit(key, start).await?;
        let left = (start + w - now).max(1000);
        let limited = (n > limit)
            .then(|| CoreError::RateLimited { retry_after_secs: u64::try_from((left + 999) / 1000).unwrap_or(1) });
        Ok((n, limited))
    }

    /// The audit row of a refused login; `method` is what was tried (`password`, `password+totp`).
    pub(crate) fn login_failure(
        &self,
        actor: Option<UserId>,
        target: String,
        ip: &str,
        method: &str,
        reason: &str,
    ) -> NewAudit {
        NewAudit {
            event: AuditEvent::AuthLogin,
            outcome: Outcome::Failure,
            actor,
            workspace: None,
            ip: Some(ip.to_owned()),
            target: Some(target),
            details: serde_json::json!({"method": method, "reason": reason}),
            at_ms: self.now_ms(),
        }
    }

    /// Password login: checks the rate limits, then the password, then (for an account with two-factor
    /// authentication on) `totp`, an app code or a recovery code, and opens a session for `device`.
    ///
    /// # Errors
    /// `RateLimited`, `Unauthenticated` (the same message for an unknown account and a wrong password; another
    /// for a wrong code), `MfaRequired` when the password was right and a code is needed, or invalid input.
    pub async fn login(
        &self,
        email: &str,
        pw: &str,
        device: &str,
        ip: &str,
        totp: Option<&str>,
    ) -> CoreResult<Session> {
        let email = normalize_email(email).map_err(|_| CoreError::Unauthenticated(BAD_LOGIN.into()))?;
        let device = device.trim();
        if device.is_empty() || device.len() > MAX_NAME_BYTES || device.chars().any(char::is_control) {
            return Err(CoreError::BadRequest(format!(
                "the device name must be 1 to {MAX_NAME_BYTES} bytes without control characters"
            )));
        }
        let user = self.store.user_by_email(&email).await?;
        let target = user.as_ref().map_or_else(|| self.email_tag(&email), |u| u.id.to_string());
        let limited = match self.charge(format!("login-ip:{}", crate::ip_bucket(ip)), self.limits.per_ip).await {
            Ok(()) => self.charge(format!("login-account:{email}"), self.limits.per_account).await,
            Err(e) => Err(e),
        };
        if let Err(e) = limited {
            self.store
                .append_audit(&[self.login_failure(
                    user.as_ref().map(|u| u.id),
                    target,
                    ip,
                    "password",
                    "rate_limited",
                )])
                .await?;
            return Err(e);
        }
        let ok = {
            let pw = Zeroizing::new(pw.to_owned());
            let hash = user.as_ref().map(|u| u.password_hash.clone());
            tokio::task::spawn_blocking(move || match hash {
                Some(h) => password::verify(&pw, &h),
                _ => {
                    password::dummy_verify(&pw);
                    false
                }
            })
            .await
            .map_err(|e| CoreError::Internal(e.to_string()))?
        };
        let user = match (user, ok) {
            (Some(u), true) => u,
            (u, _) => {
                let reason = if u.is_some() { "bad_password" } else { "unknown_account" };
                self.store.append_audit(&[self.login_failure(u.map(|u| u.id), target, ip, "password", reason)]).await?;
                return Err(CoreError::Unauthenticated(BAD_LOGIN.into()));
            }
        };
        let mut method = "password";
        if let Some(m) = self.store.mfa(user.id).await?.filter(|m| m.confirmed) {
            let refused = |reason| self.login_failure(Some(user.id), user.id.to_string(), ip, "password+totp", reason);
            let Some(code) = totp else {
                self.store.append_audit(&[refused("mfa_required")]).await?;
                return Err(CoreError::MfaRequired);
            };
            match self.check_second_factor(user.id, &m, code).await? {
                Ok(how) => {
                    method = match how {
                        SecondFactor::Totp => "password+totp",
                        SecondFactor::RecoveryCode => "password+recovery_code",
                    }
                }
                Err(reason) => {
                    self.store.append_audit(&[refused(reason)]).await?;
                    return Err(CoreError::Unauthenticated(BAD_CODE.into()));
                }
            }
        }
        let token = random_token();
        let now = self.now_ms();
        let session = SessionRecord {
            id: SessionId::new(),
            user_id: user.id,
            token_hash: hash_token(&token),
            device_name: device.to_owned(),
            created_ms: now,
            last_seen_ms: now,
            last_ip: ip.to_owned(),
            mfa: method != "password",
        };
        let row = NewAudit {
            event: AuditEvent::AuthLogin,
            outcome: Outcome::Success,
            actor: Some(user.id),
            workspace: None,
            ip: Some(ip.to_owned()),
            target: Some(session.id.to_string()),
            details: serde_json::json!({"method": method, "device": device}),
            at_ms: now,
        };
        self.store.create_session(&session, &[row]).await?;
        self.store.rate_limit_clear(&format!("login-account:{email}")).await?;
        Ok(Session { token, id: session.id, user })
    }

    /// Whether `pw` is the password of account `user` (Argon2id, on a blocking thread).
    ///
    /// # Errors
    /// A store failure, or the account vanished.
    pub(crate) async fn check_password(&self, user: UserId, pw: &str) -> CoreResult<bool> {
        let u = self.store.user_by_id(user).await?.ok_or(CoreError::NotFound("account"))?;
        let pw = Zeroizing::new(pw.to_owned());
        tokio::task::spawn_blocking(move || password::verify(&pw, &u.password_hash))
            .await
            .map_err(|e| CoreError::Internal(e.to_string()))
    }

    /// Resolves a bearer token to its actor.
    ///
    /// # Errors
    /// `Unauthenticated` for an unknown, revoked or malformed token.
    pub async fn authenticate(&self, token: &str, ip: &str) -> CoreResult<Actor> {
        if token.is_empty() || token.len() > 256 {
            return Err(self.bearer_failure(None, "-".into(), ip, "session", "malformed", BAD_TOKEN).await);
        }
        if token.starts_with(crate::API_KEY_PREFIX) {
            return self.authenticate_api_key(token, ip).await;
        }
        let Some(session) = self.store.session_by_token_hash(&hash_token(token)).await? else {
            return Err(self.bearer_failure(None, "-".into(), ip, "session", "unknown_session", BAD_TOKEN).await);
        };
        let user = self
            .store
            .user_by_id(session.user_id)
            .await?
            .ok_or_else(|| CoreError::Unauthenticated(BAD_TOKEN.into()))?;
        let now = self.now_ms();
        if now - session.last_seen_ms >= TOUCH_EVERY_MS || session.last_ip != ip {
            self.store.touch_session(session.id, now, ip).await?;
        }
        Ok(Actor {
            user_id: user.id,
            email: user.email,
            is_admin: user.is_admin,
            session_id: session.id,
            session_created_ms: session.created_ms,
            session_mfa: session.mfa,
            ip: ip.to_owned(),
            api_key: None,
        })
    }

    /// Ends the actor's own session.
    ///
    /// # Errors
    /// A store failure.
    pub async fn logout(&self, actor: &Actor) -> CoreResult<()> {
        actor.require_session("log out (revoke the key instead: `cloudsync apikey revoke NAME`)")?;
        let row = self.audit(AuditEvent::AuthLogout, Some(actor), None).target(actor.session_id.to_string());
        self.store.delete_session(actor.user_id, actor.session_id, &[row]).await?;
        Ok(())
    }

    /// The actor's sessions, newest first.
    ///
    /// # Errors
    /// A store failure.
    pub async fn list_devices(&self, actor: &Actor) -> CoreResult<Vec<SessionRecord>> {
        actor.require_session("list devices")?;
        Ok(self.store.list_sessions(actor.user_id).await?)
    }

    /// Revokes one of the actor's sessions; it stops working at once.
    ///
    /// # Errors
    /// `NotFound` when the actor has no such session.
    pub async fn revoke_device(&self, actor: &Actor, id: SessionId) -> CoreResult<()> {
        actor.require_session("revoke devices")?;
        let row = self.audit(AuditEvent::DeviceRevoked, Some(actor), None).target(id.to_string());
        if !self.store.delete_session(actor.user_id, id, &[row]).await? {
            return Err(CoreError::NotFound("device"));
        }
        Ok(())
    }
}

const BAD_LOGIN: &str = "wrong email or password";
const BAD_TOKEN: &str = "the session is invalid or was revoked; log in again with `cloudsync login`";
