//! Two-factor authentication with TOTP (RFC 6238) and single-use recovery codes.
//!
//! - The secret is sealed (AES-256-GCM) under a key derived from the master key, bound to the account id; the
//!   database alone does not give it away.
//! - A code is accepted for the current step ±1 and only for a step later than the last one accepted, so a
//!   code seen over a shoulder or in a log cannot be used again (the step is moved forward with a
//!   compare-and-set, so two requests racing with one code cannot both win). A replay is refused and audited
//!   as such.
//! - Ten recovery codes of 80 random bits each, stored as keyed hashes; each works once in place of an app
//!   code.
//! - Consecutive wrong codes are counted per account; after [`MFA_LOCKOUT`] (NIST SP 800-63B allows at most
//!   100) app codes are no longer accepted and only a recovery code signs in, which also clears the count.
//!   Login attempts are rate-limited besides (see `auth.rs`).
//! - Turning MFA off and making new recovery codes need a current code: a stolen session alone cannot
//!   remove the second factor. Enrolling on a session opened more than [`RECENT_LOGIN_MS`] ago needs the
//!   password, so an old stolen session cannot put its own authenticator on the account either. Every such
//!   request is rate-limited per account like logins, and a wrong code there is a 400, not a 401 (the
//!   session itself is fine).
//! - Attempts are counted before the code is checked, atomically (`failures < limit`), so concurrent
//!   requests cannot all slip in under the limit; a success clears the count.

use cloudsync_crypto::{SecretKey, aead, keyed_hash, totp};
use cloudsync_store::MfaRecord;
use cloudsync_types::api::{MAX_MFA_CODE_BYTES, MfaEnrollment, MfaStatus};
use cloudsync_types::{AuditEvent, Outcome, UserId};
use zeroize::Zeroizing;

use crate::{Actor, AuditExt as _, Core, CoreError, CoreResult};

/// Consecutive wrong codes after which only a recovery code is accepted.
pub const MFA_LOCKOUT: u32 = 100;
/// Recovery codes per set.
pub const RECOVERY_CODES: usize = 10;
/// A session younger than this may enrol without the password.
pub const RECENT_LOGIN_MS: i64 = 15 * 60 * 1000;
/// The issuer shown in authenticator apps.
const ISSUER: &str = "CloudSync";

/// How a second factor was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SecondFactor {
    /// A code from the authenticator app.
    Totp,
    /// A recovery code.
    RecoveryCode,
}

impl SecondFactor {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SecondFactor::Totp => "totp",
            SecondFactor::RecoveryCode => "recovery_code",
        }
    }
}

fn secret_aad(user: UserId) -> Vec<u8> {
    let mut aad = b"cloudsync-mfa-secret-v1\0".to_vec();
    aad.extend_from_slice(user.as_uuid().as_bytes());
    aad
}

/// A recovery code as typed: case, spaces and dashes do not matter.
fn normalize_recovery(code: &str) -> String {
    code.chars().filter(|c| !matches!(c, ' ' | '-')).collect::<String>().to_ascii_uppercase()
}

impl Core {
    fn mfa_key(&self) -> SecretKey {
        self.master.derive("cloudsync 2026 mfa-secret v1")
    }

    fn recovery_hash(&self, code: &str) -> [u8; 32] {
        keyed_hash(&self.master.derive("cloudsync 2026 mfa-recovery v1"), normalize_recovery(code).as_bytes())
    }

    /// Ten new codes (16 Base32 characters, 80 bits, shown as four groups of four) and their hashes.
    fn new_recovery_codes(&self) -> (Vec<String>, Vec<[u8; 32]>) {
        (0..RECOVERY_CODES)
            .map(|_| {
                let raw = totp::base32_encode(&cloudsync_crypto::random_bytes::<10>()).to_ascii_lowercase();
                let shown = format!("{}-{}-{}-{}", &raw[..4], &raw[4..8], &raw[8..12], &raw[12..16]);
                let hash = self.recovery_hash(&shown);
                (shown, hash)
            })
            .unzip()
    }

    fn now_secs(&self) -> u64 {
        u64::try_from(self.now_ms() / 1000).unwrap_or(0)
    }

    fn open_secret(&self, user: UserId, m: &MfaRecord) -> CoreResult<Zeroizing<Vec<u8>>> {
        aead::open(&self.mfa_key(), &secret_aad(user), &m.sealed_secret)
            .map(Zeroizing::new)
            .map_err(|_| CoreError::Internal("a stored TOTP secret does not open under the master key".into()))
    }

    /// The caller's two-factor state.
    ///
    /// # Errors
    /// A store failure.
    pub async fn mfa_status(&self, actor: &Actor) -> CoreResult<MfaStatus> {
        let m = self.store.mfa(actor.user_id).await?;
        Ok(MfaStatus {
            enabled: m.as_ref().is_some_and(|m| m.confirmed),
            pending: m.as_ref().is_some_and(|m| !m.confirmed),
            recovery_codes_left: m.filter(|m| m.confirmed).map_or(0, |m| m.recovery_left),
        })
    }

    /// Starts (or restarts) an enrolment: a new secret, returned once as an `otpauth://` URI and in Base32.
    /// Logins do not need a code until [`Core::mfa_confirm`].
    ///
    /// # Errors
    /// `Conflict` when MFA is already on, `ReauthenticationRequired` on an old session without the password,
    /// `BadRequest` for a wrong password, `RateLimited`.
    pub async fn mfa_enroll(&self, actor: &Actor, password: Option<&str>) -> CoreResult<MfaEnrollment> {
        actor.require_session("change two-factor authentication")?;
        self.charge(format!("mfa:{}", actor.user_id), self.limits.per_account).await?;
        if self.now_ms() - actor.session_created_ms > RECENT_LOGIN_MS {
            let Some(pw) = password else { return Err(CoreError::ReauthenticationRequired) };
            if !self.check_password(actor.user_id, pw).await? {
                return Err(CoreError::BadRequest("the password is wrong".into()));
            }
        }
        let secret = totp::generate_secret();
        let sealed = aead::seal(&self.mfa_key(), &secret_aad(actor.user_id), secret.as_slice());
        self.store.mfa_begin(actor.user_id, &sealed, self.now_ms()).await.map_err(|e| match e {
            cloudsync_store::StoreError::Conflict(_) => CoreError::Conflict(
                "two-factor authentication is already on; turn it off first (`cloudsync mfa disable`) to enrol a new app"
                    .into(),
            ),
            other => other.into(),
        })?;
        let uri = totp::otpauth_uri(ISSUER, &actor.email, secret.as_slice());
        Ok(MfaEnrollment { otpauth_uri: uri.to_string(), secret: totp::base32_encode(secret.as_slice()) })
    }

    /// Completes an enrolment with the app's first code; returns the recovery codes (shown once).
    ///
    /// # Errors
    /// `Conflict` when no enrolment is pending, `BadRequest` for a wrong code.
    pub async fn mfa_confirm(&self, actor: &Actor, code: &str) -> CoreResult<Vec<String>> {
        actor.require_session("change two-factor authentication")?;
        self.charge(format!("mfa:{}", actor.user_id), self.limits.per_account).await?;
        let m = self.store.mfa(actor.user_id).await?.filter(|m| !m.confirmed).ok_or_else(|| {
            CoreError::Conflict("no enrolment is pending; start one with `cloudsync mfa enable`".into())
        })?;
        if self.store.mfa_claim_attempt(actor.user_id, MFA_LOCKOUT).await?.is_none() {
            return Err(CoreError::Forbidden(
                "too many wrong codes for this enrolment; start again with `cloudsync mfa enable`".into(),
            ));
        }
        let secret = self.open_secret(actor.user_id, &m)?;
        let Some(step) = totp::verify(&secret, bounded(code)?, self.now_secs(), None) else {
            return Err(CoreError::BadRequest(
                "that code is wrong: type the 6 digits your authenticator app shows now for CloudSync (check that the \
                 device's clock is right)"
                    .into(),
            ));
        };
        let (codes, hashes) = self.new_recovery_codes();
        let row = self.audit(AuditEvent::MfaEnabled, Some(actor), None).target(actor.user_id.to_string());
        if !self.store.mfa_confirm(actor.user_id, actor.session_id, &m.sealed_secret, step, &hashes, &[row]).await? {
            return Err(CoreError::Conflict("the enrolment changed meanwhile; start again".into()));
        }
        Ok(codes)
    }

    /// Turns MFA off, given a current app code or a recovery code.
    ///
    /// # Errors
    /// `Conflict` when MFA is off, `BadRequest` for a wrong code, `RateLimited`.
    pub async fn mfa_disable(&self, actor: &Actor, code: &str) -> CoreResult<()> {
        actor.require_session("change two-factor authentication")?;
        let how = self.require_second_factor(actor, code, "disable").await?;
        let row = self
            .audit(AuditEvent::MfaDisabled, Some(actor), None)
            .target(actor.user_id.to_string())
            .detail("with", how.as_str());
        self.store.mfa_disable(actor.user_id, &[row]).await?;
        Ok(())
    }

    /// Replaces the recovery codes, given a current app code or a recovery code; returns the new ones.
    ///
    /// # Errors
    /// `Conflict` when MFA is off, `BadRequest` for a wrong code, `RateLimited`.
    pub async fn mfa_regenerate_recovery(&self, actor: &Actor, code: &str) -> CoreResult<Vec<String>> {
        actor.require_session("change recovery codes")?;
        let how = self.require_second_factor(actor, code, "recovery_codes").await?;
        let (codes, hashes) = self.new_recovery_codes();
        let row = self
            .audit(AuditEvent::MfaRecoveryCodes, Some(actor), None)
            .target(actor.user_id.to_string())
            .detail("with", how.as_str());
        self.store.mfa_replace_recovery(actor.user_id, &hashes, &[row]).await?;
        Ok(codes)
    }

    /// Turns MFA off for the account `email`, for the operator on the server host (break-glass for a user who
    /// lost both the authenticator and the recovery codes). Audited with no actor and `by: operator`. False
    /// when MFA was not on (or pending).
    ///
    /// # Errors
    /// `NotFound` for an unknown account, or a store failure.
    pub async fn operator_reset_mfa(&self, email: &str) -> CoreResult<bool> {
        let email = crate::auth::normalize_email(email)?;
        let user = self.store.user_by_email(&email).await?.ok_or(CoreError::NotFound("account"))?;
        let row = self.audit(AuditEvent::MfaDisabled, None, None).target(user.id.to_string()).detail("by", "operator");
        Ok(self.store.mfa_disable(user.id, &[row]).await?)
    }

    /// Checks a second factor for an action of a signed-in account; a failure is audited.
    pub(crate) async fn require_second_factor(
        &self,
        actor: &Actor,
        code: &str,
        action: &str,
    ) -> CoreResult<SecondFactor> {
        self.charge(format!("mfa:{}", actor.user_id), self.limits.per_account).await?;
        let m = self
            .store
            .mfa(actor.user_id)
            .await?
            .filter(|m| m.confirmed)
            .ok_or_else(|| CoreError::Conflict("two-factor authentication is not on for this account".into()))?;
        match self.check_second_factor(actor.user_id, &m, code).await? {
            Ok(how) => Ok(how),
            Err(reason) => {
                let row = self
                    .audit(AuditEvent::AuthLogin, Some(actor), None)
                    .outcome(Outcome::Failure)
                    .target(actor.user_id.to_string())
                    .detail("method", "totp")
                    .detail("reason", reason)
                    .detail("action", action);
                self.store.append_audit(&[row]).await?;
                // The session is fine; only the code was wrong.
                Err(CoreError::BadRequest(BAD_CODE.into()))
            }
        }
    }

    /// Checks an app code or a recovery code for an account with MFA on. `Ok(Err(reason))` for a refused code
    /// (counted as a failure; the reason goes to the audit log).
    pub(crate) async fn check_second_factor(
        &self,
        user: UserId,
        m: &MfaRecord,
        code: &str,
    ) -> CoreResult<Result<SecondFactor, &'static str>> {
        let code = bounded(code)?.trim();
        if code.len() == totp::DIGITS as usize && code.bytes().all(|b| b.is_ascii_digit()) {
            // Counted before the check (a success clears it), so concurrent guesses cannot pass the limit.
            if self.store.mfa_claim_attempt(user, MFA_LOCKOUT).await?.is_none() {
                return Ok(Err("locked"));
            }
            let secret = self.open_secret(user, m)?;
            let now = self.now_secs();
            return Ok(match totp::verify(&secret, code, now, m.last_step) {
                // Moves the step forward only if no other request did meanwhile; clears the count.
                Some(step) if self.store.mfa_accept_step(user, step).await? => Ok(SecondFactor::Totp),
                Some(_) => Err("totp_replay"),
                None if totp::verify(&secret, code, now, None).is_some() => Err("totp_replay"),
                None => Err("bad_totp"),
            });
        }
        // Recovery codes (80 bits) are not locked out: they are the way back in after a lockout.
        if self.store.mfa_use_recovery(user, &self.recovery_hash(code), self.now_ms()).await? {
            return Ok(Ok(SecondFactor::RecoveryCode));
        }
        self.store.mfa_failed(user).await?;
        Ok(Err("bad_recovery_code"))
    }
}

/// The message for a refused code (the same whatever the reason, which only the audit log records).
pub(crate) const BAD_CODE: &str = "the authentication code is wrong or was already used; wait for the next code of your authenticator app, or \
     use a recovery code";

fn bounded(code: &str) -> CoreResult<&str> {
    if code.len() > MAX_MFA_CODE_BYTES {
        return Err(CoreError::TooLarge(format!("a code is at most {MAX_MFA_CODE_BYTES} bytes")));
    }
    Ok(code)
}

#[cfg(test)]
mod tests {

    use cloudsync_crypto::totp::{Algorithm, DIGITS, base32_decode, code_at};

    use super::*;
    use crate::testutil::{PASSWORD, core_with_account, mfa_on};
    use crate::{Clock as _, ManualClock};

    fn code(secret: &[u8], clock: &ManualClock) -> String {
        code_at(Algorithm::Sha1, secret, u64::try_from(clock.now_ms() / 1000).expect("time"), DIGITS)
    }

    fn login(core: &Core, totp: Option<&str>) -> impl std::future::Future<Output = CoreResult<crate::Session>> {
        core.login("a@example.com", PASSWORD, "laptop", "127.0.0.1", totp)
    }

    #[tokio::test]
    async fn enrolment_login_replay_recovery_and_disable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (core, clock, actor) = core_with_account(dir.path()).await;
        let e = core.mfa_enroll(&actor, None).await.expect("enroll");
        assert!(e.otpauth_uri.starts_with("otpauth://totp/CloudSync:a%40example.com?secret="), "{}", e.otpauth_uri);
        let secret = base32_decode(&e.secret).expect("base32");
        let s = login(&core, None).await.expect("a pending enrolment does not change logins");
        assert!(!core.authenticate(&s.token, "127.0.0.1").await.expect("auth").session_mfa, "password only");
        assert!(matches!(core.mfa_confirm(&actor, "000000x").await, Err(CoreError::BadRequest(_))));

        let codes = core.mfa_confirm(&actor, &code(&secret, &clock)).await.expect("confirm");
        assert_eq!(codes.len(), RECOVERY_CODES);
        assert!(codes.iter().all(|c| c.len() == 19), "{codes:?}");
        assert!(
            matches!(core.mfa_enroll(&actor, None).await, Err(CoreError::Conflict(_))),
            "on: no silent re-enrolment"
        );
        let status = core.mfa_status(&actor).await.expect("status");
        assert!(status.enabled && !status.pending && status.recovery_codes_left == 10);

        // Logins need the code; the confirming code cannot be used again, nor can one login's code.
        assert!(matches!(login(&core, None).await, Err(CoreError::MfaRequired)));
        assert!(matches!(login(&core, Some(&code(&secret, &clock))).await, Err(CoreError::Unauthenticated(_))));
        clock.advance_ms(30_000);
        let now = code(&secret, &clock);
        let s = login(&core, Some(&now)).await.expect("the next step's code");
        assert!(core.authenticate(&s.token, "127.0.0.1").await.expect("auth").session_mfa, "opened with a code");
        assert!(matches!(login(&core, Some(&now)).await, Err(CoreError::Unauthenticated(_))), "replay refused");
        clock.advance_ms(30_000);
        assert!(matches!(login(&core, Some("123456x")).await, Err(CoreError::Unauthenticated(_))));

        // A recovery code works once, whatever its case and dashes.
        let typed = codes[3].to_uppercase().replace('-', " ");
        login(&core, Some(&typed)).await.expect("recovery code");
        assert!(matches!(login(&core, Some(&codes[3])).await, Err(CoreError::Unauthenticated(_))), "single use");
        assert_eq!(core.mfa_status(&actor).await.expect("status").recovery_codes_left, 9);

        // The audit log tells replays from wrong codes, and holds no code.
        let rows = core.store.audit_chain(cloudsync_store::GLOBAL_CHAIN, 0, 1000).await.expect("audit");
        let reasons: Vec<String> = rows
            .iter()
            .filter(|r| r.row.event == AuditEvent::AuthLogin && r.row.outcome == Outcome::Failure)
            .map(|r| r.row.details["reason"].as_str().unwrap_or_default().to_owned())
            .collect();
        for reason in ["mfa_required", "totp_replay", "bad_recovery_code"] {
            assert!(reasons.iter().any(|r| r == reason), "{reason} in {reasons:?}");
        }
        let text = serde_json::to_string(&rows.iter().map(|r| &r.row.details).collect::<Vec<_>>()).expect("json");
        assert!(!text.contains(&now) && !text.contains(&codes[3]), "no code in the audit log");

        // New recovery codes and turning MFA off need a code.
        clock.advance_ms(30_000);
        assert!(
            matches!(core.mfa_regenerate_recovery(&actor, "000000").await, Err(CoreError::BadRequest(_))),
            "a 400: the session is fine"
        );
        let fresh = core.mfa_regenerate_recovery(&actor, &code(&secret, &clock)).await.expect("regenerate");
        assert!(matches!(login(&core, Some(&codes[0])).await, Err(CoreError::Unauthenticated(_))), "old set gone");
        core.mfa_disable(&actor, &fresh[0]).await.expect("disable with a recovery code");
        login(&core, None).await.expect("no second factor any more");
        assert!(matches!(core.mfa_disable(&actor, "123456").await, Err(CoreError::Conflict(_))));
    }

    #[tokio::test]
    async fn after_100_wrong_codes_only_a_recovery_code_signs_in() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (core, clock, actor) = core_with_account(dir.path()).await;
        let secret = base32_decode(&core.mfa_enroll(&actor, None).await.expect("enroll").secret).expect("base32");
        let codes = core.mfa_confirm(&actor, &code(&secret, &clock)).await.expect("confirm");
        let m = core.store.mfa(actor.user_id).await.expect("mfa").expect("on");
        for _ in 0..MFA_LOCKOUT {
            // Straight to the check: the login rate limit would stop this loop long before.
            let wrong = if code(&secret, &clock) == "000000" { "000001" } else { "000000" };
            assert!(core.check_second_factor(actor.user_id, &m, wrong).await.expect("check").is_err());
        }
        clock.advance_ms(30_000);
        let m = core.store.mfa(actor.user_id).await.expect("mfa").expect("on");
        assert_eq!(m.failures, MFA_LOCKOUT);
        let right = code(&secret, &clock);
        assert_eq!(core.check_second_factor(actor.user_id, &m, &right).await.expect("check"), Err("locked"));
        let m = core.store.mfa(actor.user_id).await.expect("mfa").expect("on");
        assert_eq!(
            core.check_second_factor(actor.user_id, &m, &codes[0]).await.expect("check"),
            Ok(SecondFactor::RecoveryCode)
        );
        let m = core.store.mfa(actor.user_id).await.expect("mfa").expect("on");
        assert_eq!(m.failures, 0, "a recovery code clears the count");
        assert_eq!(core.check_second_factor(actor.user_id, &m, &right).await.expect("check"), Ok(SecondFactor::Totp));
    }

    #[tokio::test]
    async fn an_old_session_needs_the_password_to_enrol() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (core, clock, actor) = core_with_account(dir.path()).await;
        clock.advance_ms(RECENT_LOGIN_MS + 1000);
        assert!(matches!(core.mfa_enroll(&actor, None).await, Err(CoreError::ReauthenticationRequired)));
        assert!(matches!(core.mfa_enroll(&actor, Some("not the password")).await, Err(CoreError::BadRequest(_))));
        assert!(core.store.mfa(actor.user_id).await.expect("mfa").is_none(), "nothing enrolled");
        core.mfa_enroll(&actor, Some(PASSWORD)).await.expect("with the password");
        // Security changes are rate-limited per account like logins.
        let mut limited = false;
        for _ in 0..20 {
            if let Err(CoreError::RateLimited { .. }) = core.mfa_confirm(&actor, "000000").await {
                limited = true;
                break;
            }
        }
        assert!(limited, "wrong confirmation codes are rate-limited");
    }

    #[tokio::test]
    async fn a_workspace_can_require_mfa_of_its_members() {
        use cloudsync_types::Role;
        let dir = tempfile::tempdir().expect("tempdir");
        let (core, clock, owner) = core_with_account(dir.path()).await;
        let ws = core.create_workspace(&owner, "W", false).await.expect("workspace").id;
        let bob_user = core.create_user("bob@example.com", PASSWORD, false, None).await.expect("bob");
        let bob = Actor { user_id: bob_user.id, email: bob_user.email, ..owner.clone() };
        let as_owner = core.access(owner.clone(), ws, Role::Owner).await.expect("owner");
        core.add_member(&as_owner, "bob@example.com", Role::Admin).await.expect("add bob");

        // Requiring it without one's own MFA would lock the owner out: refused.
        assert!(matches!(core.update_settings(&as_owner, &mfa_on(true)).await, Err(CoreError::Forbidden(_))));
        let secret = base32_decode(&core.mfa_enroll(&owner, None).await.expect("enroll").secret).expect("b32");
        core.mfa_confirm(&owner, &code(&secret, &clock)).await.expect("confirm");
        // The owner's next requests come on a session that proved the code.
        let owner = Actor { session_mfa: true, ..owner };
        let as_admin = core.access(bob.clone(), ws, Role::Admin).await.expect("bob, before");
        assert!(
            matches!(core.update_settings(&as_admin, &mfa_on(true)).await, Err(CoreError::Forbidden(_))),
            "owners only"
        );
        assert!(core.update_settings(&as_owner, &mfa_on(true)).await.expect("require").require_mfa);

        // A member without MFA is refused at the door, with the way in named; the owner is not.
        match core.access(bob.clone(), ws, Role::Viewer).await {
            Err(CoreError::Forbidden(m)) => assert!(m.contains("cloudsync mfa enable"), "{m}"),
            other => panic!("expected Forbidden, got {other:?}"),
        }
        core.access(owner.clone(), ws, Role::Viewer).await.expect("the owner has MFA");
        let bob_secret = base32_decode(&core.mfa_enroll(&bob, None).await.expect("enroll").secret).expect("b32");
        assert!(core.access(bob.clone(), ws, Role::Viewer).await.is_err(), "a pending enrolment is not MFA");
        core.mfa_confirm(&bob, &code(&bob_secret, &clock)).await.expect("confirm");
        // A session opened with the password alone does not count, even once the account has MFA.
        match core
            .access(Actor { session_id: cloudsync_types::SessionId::new(), ..bob.clone() }, ws, Role::Viewer)
            .await
        {
            Err(CoreError::Forbidden(m)) => assert!(m.contains("log in again"), "{m}"),
            other => panic!("expected Forbidden, got {other:?}"),
        }
        core.access(Actor { session_mfa: true, ..bob }, ws, Role::Viewer).await.expect("bob with MFA");

        // Audited with old and new values; setting the same value again changes (and audits) nothing.
        core.update_settings(&as_owner, &mfa_on(true)).await.expect("same again");
        let rows = core.store.audit_chain(&ws.to_string(), 0, 1000).await.expect("audit");
        let changed: Vec<_> = rows.iter().filter(|r| r.row.event == AuditEvent::SettingsChanged).collect();
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].row.details["old"], false);
        assert_eq!(changed[0].row.details["new"], true);
        assert_eq!(changed[0].row.details["setting"], "require_mfa");
    }
}
