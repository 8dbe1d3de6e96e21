//! Accounts' end-to-end encryption keys. The server stores what the client made: a public identity it can
//! check (the self-signature must be for this account's id and email) and two sealed blobs it cannot open.
//! It hands an account its own blobs, and anyone signed in an account's public identity (to wrap workspace
//! keys to it); clients verify identities themselves and compare fingerprints, so the server is not trusted
//! with them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cloudsync_crypto::e2ee::{IDENTITY_LEN, PublicIdentity};
use cloudsync_store::UserKeysRecord;
use cloudsync_types::AuditEvent;
use cloudsync_types::api::{MAX_SEALED_KEY_BYTES, MyUserKeys, PublicUserKeys, UploadUserKeys};

use crate::{Actor, AuditExt, Core, CoreError, CoreResult};

/// A base64 field of 1 to `max` bytes, named `field` in the errors (end-to-end keys, log entries, wrapped keys).
pub(crate) fn decode(field: &str, value: &str, max: usize) -> CoreResult<Vec<u8>> {
    if value.len() > max * 2 {
        return Err(CoreError::TooLarge(format!("{field} is too large")));
    }
    let b = B64.decode(value.trim()).map_err(|_| CoreError::BadRequest(format!("{field} is not base64")))?;
    if b.is_empty() || b.len() > max {
        return Err(CoreError::BadRequest(format!("{field} must be 1 to {max} bytes")));
    }
    Ok(b)
}

impl Core {
    /// Stores the caller's first keys, or reseals the same identity under a new passphrase.
    ///
    /// # Errors
    /// `Forbidden` through an API key, `BadRequest` for malformed input or an identity not signed for this
    /// account, `Conflict` for a different identity when keys exist.
    pub async fn put_user_keys(&self, actor: &Actor, req: &UploadUserKeys) -> CoreResult<MyUserKeys> {
        actor.require_session("change end-to-end encryption keys")?;
        let identity = decode("identity", &req.identity, IDENTITY_LEN)?;
        let sealed_pass = decode("sealed_by_passphrase", &req.sealed_by_passphrase, MAX_SEALED_KEY_BYTES)?;
        let sealed_rec = decode("sealed_by_recovery", &req.sealed_by_recovery, MAX_SEALED_KEY_BYTES)?;
        let parsed = PublicIdentity::from_bytes(&identity).map_err(|e| CoreError::BadRequest(e.to_string()))?;
        parsed.verify(actor.user_id.as_uuid().as_bytes(), &actor.email).map_err(|_| {
            CoreError::BadRequest("the identity is not signed for this account (its id and email)".into())
        })?;
        let now = self.now_ms();
        let fingerprint = parsed.fingerprint();
        let existing = self.store.user_keys(actor.user_id).await?;
        if let Some(e) = existing.as_ref().filter(|e| e.identity != identity) {
            let fp = PublicIdentity::from_bytes(&e.identity).map(|i| i.fingerprint()).unwrap_or_default();
            return Err(CoreError::Conflict(format!(
                "this account already has end-to-end keys (fingerprint {fp}); unlock them with `cloudsync keys unlock`, or recover them with `cloudsync keys recover`"
            )));
        }
        // Last, once the request is known to be good: a stolen session must not claim or overwrite keys.
        self.fresh_proof(actor, &req.proof, "keys.put").await?;
        match existing {
            None => {
                let rec = UserKeysRecord {
                    identity,
                    sealed_by_passphrase: sealed_pass,
                    sealed_by_recovery: sealed_rec,
                    created_ms: now,
                    updated_ms: now,
                };
                let row = self
                    .audit(AuditEvent::KeysCreated, Some(actor), None)
                    .target(actor.user_id.to_string())
                    .detail("fingerprint", fingerprint.as_str());
                self.store.create_user_keys(actor.user_id, &rec, &[row]).await.map_err(|e| match e {
                    cloudsync_store::StoreError::Conflict(_) => {
                        CoreError::Conflict("end-to-end keys were stored meanwhile; look again".into())
                    }
                    other => other.into(),
                })?;
                Ok(MyUserKeys {
                    identity: B64.encode(&rec.identity),
                    sealed_by_passphrase: B64.encode(&rec.sealed_by_passphrase),
                    sealed_by_recovery: B64.encode(&rec.sealed_by_recovery),
                    fingerprint,
                })
            }
            Some(existing) if existing.identity == identity => {
                let row = self
                    .audit(AuditEvent::KeysResealed, Some(actor), None)
                    .target(actor.user_id.to_string())
                    .detail("fingerprint", fingerprint.as_str());
                if !self.store.reseal_user_keys(actor.user_id, &identity, &sealed_pass, now, &[row]).await? {
                    return Err(CoreError::Conflict("the keys changed meanwhile; look again".into()));
                }
                Ok(MyUserKeys {
                    identity: B64.encode(&identity),
                    sealed_by_passphrase: B64.encode(&sealed_pass),
                    sealed_by_recovery: B64.encode(&existing.sealed_by_recovery),
                    fingerprint,
                })
            }
            Some(_) => Err(CoreError::Conflict("the keys changed meanwhile; look again".into())),
        }
    }

    /// The caller's stored keys.
    ///
    /// # Errors
    /// `NotFound` when the account has none, `Forbidden` through an API key.
    pub async fn my_user_keys(&self, actor: &Actor) -> CoreResult<MyUserKeys> {
        actor.require_session("read end-to-end encryption keys")?;
        let k = self.store.user_keys(actor.user_id).await?.ok_or(CoreError::NotFound("end-to-end keys"))?;
        let fingerprint = PublicIdentity::from_bytes(&k.identity).map(|i| i.fingerprint()).unwrap_or_default();
        Ok(MyUserKeys {
            identity: B64.encode(&k.identity),
            sealed_by_passphrase: B64.encode(&k.sealed_by_passphrase),
            sealed_by_recovery: B64.encode(&k.sealed_by_recovery),
            fingerprint,
        })
    }

    /// Another account's public identity, by email.
    ///
    /// # Errors
    /// `NotFound` for no such account or one without keys.
    pub async fn public_user_keys(&self, actor: &Actor, email: &str) -> CoreResult<PublicUserKeys> {
        // Looking keys up by email also says which emails have accounts: a caller gets a budget of lookups.
        self.charge(format!("keys-lookup:{}", actor.user_id), self.limits.per_ip).await?;
        let email = crate::auth::normalize_email(email)?;
        let user = self.store.user_by_email(&email).await?.ok_or(CoreError::NotFound("end-to-end keys"))?;
        let k = self.store.user_keys(user.id).await?.ok_or(CoreError::NotFound("end-to-end keys"))?;
        Ok(PublicUserKeys { user_id: user.id, email: user.email, identity: B64.encode(&k.identity) })
    }
}
