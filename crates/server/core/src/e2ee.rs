//! End-to-end encrypted workspaces on the server (RFC 0004): it keeps the signed membership log and the
//! wrapped workspace keys, and checks what arrives with the same replay rules every client applies, so a
//! member's client cannot be tricked into a log the server accepted by mistake, and the server's members
//! table (which decides who may read the ciphertext) always equals the members the signed log adds up to.
//! The server holds no key that opens anything here; clients verify everything again and do not trust it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cloudsync_crypto::e2ee::PublicIdentity;
use cloudsync_crypto::e2ee_members::{Change, Entry, MAX_ENTRY_BYTES, Membership};
use cloudsync_crypto::e2ee_workspace::{MAX_RECORD_BYTES, WrappedKeyRecord};
use cloudsync_store::{LogAppend, MemberChange, NewAudit, StoreError, WorkspaceRecord, WrappedKeyRow};
use cloudsync_types::api::{
    AppendE2eeLog, E2eeAppended, E2eeGenesis, E2eeKeys, E2eeLog, MAX_E2EE_APPEND_ENTRIES, MAX_E2EE_APPEND_KEYS,
    MAX_E2EE_LOG_ENTRIES, MAX_E2EE_LOG_PAGE,
};
use cloudsync_types::{AuditEvent, Role, UserId, WorkspaceId};

use crate::userkeys::decode;
use crate::{Access, Actor, AuditExt, Core, CoreError, CoreResult};

/// The role a log entry's role number stands for.
fn role_of(n: u8) -> CoreResult<Role> {
    Role::from_rank(n).ok_or_else(|| CoreError::BadRequest(format!("a membership entry names an unknown role {n}")))
}

fn entry_of(field: &str, value: &str) -> CoreResult<(Vec<u8>, Entry)> {
    let raw = decode(field, value, MAX_ENTRY_BYTES)?;
    let entry = Entry::from_bytes(&raw).map_err(|e| CoreError::BadRequest(format!("{field}: {e}")))?;
    Ok((raw, entry))
}

fn record_of(field: &str, value: &str) -> CoreResult<(Vec<u8>, WrappedKeyRecord)> {
    let raw = decode(field, value, MAX_RECORD_BYTES)?;
    let rec = WrappedKeyRecord::from_bytes(&raw).map_err(|e| CoreError::BadRequest(format!("{field}: {e}")))?;
    Ok((raw, rec))
}

fn user_id(b: &[u8; 16]) -> UserId {
    UserId::from_uuid(uuid::Uuid::from_bytes(*b))
}

impl Core {
    /// The public identity an account stored, which a log entry naming it must carry.
    async fn stored_identity(&self, user: UserId) -> CoreResult<Option<Vec<u8>>> {
        Ok(self.store.user_keys(user).await?.map(|k| k.identity))
    }

    /// Creates an end-to-end encrypted workspace from the genesis its creator made: a creation entry signed
    /// over the id the client picked, and the epoch-0 key wrapped to the creator by the creator.
    ///
    /// # Errors
    /// `BadRequest` for a malformed or mis-signed entry or key, or one that names another account or
    /// identity than the caller's; `Forbidden` through an API key; `Conflict` for a taken id or name.
    pub async fn create_e2ee_workspace(
        &self,
        actor: &Actor,
        name: &str,
        g: &E2eeGenesis,
    ) -> CoreResult<WorkspaceRecord> {
        actor.require_session("create an end-to-end encrypted workspace")?;
        let id = g.workspace_id;
        let ws = *id.as_uuid().as_bytes();
        let (entry_raw, entry) = entry_of("entry", &g.entry)?;
        Membership::replay(&ws, std::slice::from_ref(&entry))
            .map_err(|e| CoreError::BadRequest(format!("the creation entry does not hold: {e}")))?;
        let Change::Create { creator, email, identity } = &entry.change else {
            return Err(CoreError::BadRequest("the first entry must be the creation".into()));
        };
        let me = *actor.user_id.as_uuid().as_bytes();
        if *creator != me || !email.eq_ignore_ascii_case(&actor.email) {
            return Err(CoreError::BadRequest("the creation entry names another account than yours".into()));
        }
        let stored = self.stored_identity(actor.user_id).await?.ok_or_else(|| {
            CoreError::BadRequest("you have no end-to-end keys yet: run `cloudsync keys init` first".into())
        })?;
        if stored != identity.as_slice() {
            return Err(CoreError::BadRequest(
                "the creation entry carries another identity than the keys stored for your account".into(),
            ));
        }
        let identity = PublicIdentity::from_bytes(identity).map_err(|e| CoreError::BadRequest(e.to_string()))?;
        let (record_raw, record) = record_of("wrapped_key", &g.wrapped_key)?;
        if record.ws != ws || record.epoch != 0 || record.recipient != me || record.wrapper != me {
            return Err(CoreError::BadRequest(
                "the wrapped key must be this workspace's epoch-0 key, wrapped by you to you".into(),
            ));
        }
        if record.recipient_identity != identity.to_bytes() || record.verify(&identity).is_err() {
            return Err(CoreError::BadRequest(
                "the wrapped key is not signed by, or not wrapped to, your identity".into(),
            ));
        }
        // The client picks the id: one that ever named a workspace (its audit chain outlives it) is refused, so
        // nobody can take over a deleted workspace's history by creating a new one under its id.
        if self.store.audit_head(&id.to_string()).await?.is_some() || self.store.workspace(id).await?.is_some() {
            return Err(CoreError::Conflict("that workspace id is taken; make a new one".into()));
        }
        // The server's own at-rest keys still seal every stored byte (the contents are ciphertext already).
        let rec = self.new_workspace(actor, id, name, true).await?;
        let row = self
            .audit(AuditEvent::WorkspaceCreated, Some(actor), Some(id))
            .target(id.to_string())
            .detail("e2ee", true)
            .detail("fingerprint", identity.fingerprint().as_str());
        let key = WrappedKeyRow { epoch: 0, recipient: actor.user_id, record: record_raw };
        self.store.create_e2ee_workspace(&rec, actor.user_id, &entry_raw, &key, &[row]).await.map_err(|e| match e {
            StoreError::Conflict(_) => CoreError::Conflict("that workspace id is taken; try again".into()),
            other => other.into(),
        })?;
        Ok(rec)
    }

    async fn e2ee_workspace(&self, access: &Access) -> CoreResult<WorkspaceRecord> {
        let ws = self.workspace(access).await?;
        if !ws.e2ee {
            return Err(CoreError::BadRequest(
                "this workspace is not end-to-end encrypted, so it has no membership log".into(),
            ));
        }
        Ok(ws)
    }

    /// Entries of the membership log from position `from` (any member).
    ///
    /// # Errors
    /// `BadRequest` for a workspace without end-to-end encryption.
    pub async fn e2ee_log(&self, access: &Access, from: u64) -> CoreResult<E2eeLog> {
        self.e2ee_workspace(access).await?;
        let mut rows = self.store.e2ee_log(access.workspace, from, MAX_E2EE_LOG_PAGE + 1).await?;
        let more = rows.len() > MAX_E2EE_LOG_PAGE as usize;
        rows.truncate(MAX_E2EE_LOG_PAGE as usize);
        Ok(E2eeLog { from, entries: rows.iter().map(|r| B64.encode(r)).collect(), more })
    }

    /// The whole log, replayed.
    async fn replayed(&self, ws: WorkspaceId) -> CoreResult<(Vec<Entry>, Membership)> {
        let mut entries = Vec::new();
        loop {
            let rows = self.store.e2ee_log(ws, entries.len() as u64, MAX_E2EE_LOG_PAGE).await?;
            let done = rows.len() < MAX_E2EE_LOG_PAGE as usize;
            for r in rows {
                entries
                    .push(Entry::from_bytes(&r).map_err(|e| CoreError::Internal(format!("a stored log entry: {e}")))?);
            }
            if done {
                break;
            }
        }
        // Replaying checks a signature per entry: off the async threads.
        let id = *ws.as_uuid().as_bytes();
        tokio::task::spawn_blocking(move || {
            let m = Membership::replay(&id, &entries)
                .map_err(|e| CoreError::Internal(format!("the stored membership log does not replay: {e}")))?;
            Ok((entries, m))
        })
        .await
        .map_err(|e| CoreError::Internal(format!("the log replay failed: {e}")))?
    }

    /// Appends signed entries (made by the caller) and the wrapped keys they need. The entries must replay
    /// after the stored log; each member change is applied to the server's members in the same transaction.
    /// A new member must get the current epoch's key; a new epoch must be wrapped to every member.
    ///
    /// # Errors
    /// `Forbidden` through an API key; `BadRequest` for entries or keys that do not hold (the reason names
    /// the entry); `Conflict` when the log grew since the caller read it.
    pub async fn append_e2ee_log(&self, access: &Access, req: &AppendE2eeLog) -> CoreResult<E2eeAppended> {
        let actor = &access.actor;
        actor.require_session("change the members of an end-to-end encrypted workspace")?;
        self.e2ee_workspace(access).await?;
        if req.entries.is_empty() || req.entries.len() > MAX_E2EE_APPEND_ENTRIES {
            return Err(CoreError::BadRequest(format!("an append carries 1 to {MAX_E2EE_APPEND_ENTRIES} entries")));
        }
        if req.wrapped_keys.len() > MAX_E2EE_APPEND_KEYS {
            return Err(CoreError::TooLarge(format!("an append carries at most {MAX_E2EE_APPEND_KEYS} wrapped keys")));
        }
        let ws = *access.workspace.as_uuid().as_bytes();
        let me = *actor.user_id.as_uuid().as_bytes();
        // Everything in the request is decoded before the stored log is read, so malformed input costs nothing.
        let mut decoded = Vec::with_capacity(req.entries.len());
        for (n, text) in req.entries.iter().enumerate() {
            let (raw, e) = entry_of(&format!("entries[{n}]"), text)?;
            if e.signer != me {
                return Err(CoreError::BadRequest(format!("entries[{n}] is signed by another member than you")));
            }
            decoded.push((raw, e));
        }
        let mut records = Vec::with_capacity(req.wrapped_keys.len());
        for (n, text) in req.wrapped_keys.iter().enumerate() {
            records.push(record_of(&format!("wrapped_keys[{n}]"), text)?);
        }
        let rekeys = decoded.iter().filter(|(_, e)| matches!(e.change, Change::Rekey { .. })).count();
        if rekeys > 1 {
            return Err(CoreError::BadRequest("an append starts at most one new key epoch".into()));
        }
        let removes_other =
            decoded.iter().any(|(_, e)| matches!(&e.change, Change::Remove { member } if *member != me));
        if removes_other && rekeys == 0 {
            return Err(CoreError::BadRequest(
                "removing a member must start a new key epoch in the same request (a Rekey entry with the new key wrapped to every remaining member), or the removed member could read what is written next".into(),
            ));
        }
        let (_, mut m) = self.replayed(access.workspace).await?;
        if req.seq != m.len {
            return Err(CoreError::Conflict(format!(
                "the membership log has {} entries, not {}: read it again and redo the change",
                m.len, req.seq
            )));
        }
        if m.len + req.entries.len() as u64 > MAX_E2EE_LOG_ENTRIES {
            return Err(CoreError::TooLarge(format!("a membership log holds at most {MAX_E2EE_LOG_ENTRIES} entries")));
        }
        let epoch_before = m.epoch;
        let mut raws = Vec::with_capacity(req.entries.len());
        let mut changes = Vec::new();
        let mut rows: Vec<NewAudit> = Vec::new();
        let mut added = Vec::new();
        for (n, (raw, e)) in decoded.into_iter().enumerate() {
            let before = match &e.change {
                Change::SetRole { member, .. } => m.members.get(member).map(|x| x.role),
                _ => None,
            };
            m.apply(&ws, &e).map_err(|e| CoreError::BadRequest(format!("entries[{n}] does not hold: {e}")))?;
            match &e.change {
                Change::Add { member, email, identity, role } => {
                    let user = user_id(member);
                    let acct = self.store.user_by_id(user).await?.ok_or_else(|| {
                        CoreError::BadRequest(format!("entries[{n}] names no account of this server"))
                    })?;
                    if !acct.email.eq_ignore_ascii_case(email) {
                        return Err(CoreError::BadRequest(format!(
                            "entries[{n}] names {email}, not that account's email"
                        )));
                    }
                    if self.stored_identity(user).await?.as_deref() != Some(identity.as_slice()) {
                        return Err(CoreError::BadRequest(format!(
                            "entries[{n}] carries another identity than the keys {email} stored"
                        )));
                    }
                    let role = role_of(*role)?;
                    changes.push(MemberChange::Add(user, role));
                    added.push(*member);
                    rows.push(
                        self.audit(AuditEvent::MemberAdded, Some(actor), Some(access.workspace))
                            .target(user.to_string())
                            .detail("role", role.as_str())
                            .detail("e2ee", true),
                    );
                }
                Change::SetRole { member, role } => {
                    let (user, role) = (user_id(member), role_of(*role)?);
                    changes.push(MemberChange::SetRole(user, role));
                    let old = before.map(role_of).transpose()?.map_or("", Role::as_str);
                    rows.push(
                        self.audit(AuditEvent::PermissionChanged, Some(actor), Some(access.workspace))
                            .target(user.to_string())
                            .detail("old_role", old)
                            .detail("new_role", role.as_str()),
                    );
                }
                Change::Remove { member } => {
                    let user = user_id(member);
                    changes.push(MemberChange::Remove(user));
                    added.retain(|a| a != member);
                    rows.push(
                        self.audit(AuditEvent::MemberRemoved, Some(actor), Some(access.workspace))
                            .target(user.to_string())
                            .detail("e2ee", true),
                    );
                }
                Change::Rekey { epoch } => rows.push(
                    self.audit(AuditEvent::WorkspaceKeyRotated, Some(actor), Some(access.workspace))
                        .target(access.workspace.to_string())
                        .detail("epoch", u64::from(*epoch)),
                ),
                Change::Create { .. } => {
                    return Err(CoreError::BadRequest(format!("entries[{n}]: only the first entry creates")));
                }
            }
            raws.push(raw);
        }
        // The wrapped keys: made and signed by the caller, to a member (after these entries) with the identity
        // the log gives them, for an epoch that exists.
        let my_identity = m.members.get(&me).map(|x| x.identity.clone());
        let mut keys = Vec::with_capacity(req.wrapped_keys.len());
        let mut given = std::collections::BTreeSet::new();
        for (n, (raw, rec)) in records.into_iter().enumerate() {
            let bad = |why: &str| CoreError::BadRequest(format!("wrapped_keys[{n}] {why}"));
            if rec.ws != ws || rec.epoch > m.epoch {
                return Err(bad("is for another workspace or a key epoch that does not exist"));
            }
            if rec.wrapper != me {
                return Err(bad("is not wrapped by you"));
            }
            let member =
                m.members.get(&rec.recipient).ok_or_else(|| bad("is wrapped to someone who is not a member"))?;
            if rec.recipient_identity != member.identity.to_bytes() {
                return Err(bad("is wrapped to another identity than the member's"));
            }
            if my_identity.as_ref().is_none_or(|id| rec.verify(id).is_err()) {
                return Err(bad("is not signed by your identity"));
            }
            if !given.insert((rec.epoch, rec.recipient)) {
                return Err(bad("repeats a key already in this request"));
            }
            keys.push(WrappedKeyRow { epoch: rec.epoch, recipient: user_id(&rec.recipient), record: raw });
        }
        for member in &added {
            if m.members.contains_key(member) && !given.contains(&(m.epoch, *member)) {
                return Err(CoreError::BadRequest(
                    "a new member needs the current workspace key: send it wrapped to them with the entry".into(),
                ));
            }
        }
        if m.members.len() > MAX_E2EE_APPEND_KEYS {
            return Err(CoreError::TooLarge(format!(
                "an end-to-end encrypted workspace has at most {MAX_E2EE_APPEND_KEYS} members (a new key epoch is wrapped to each in one request)"
            )));
        }
        // A key of an epoch that existed before is given once: a slot already filled is an error in the
        // request, not a race to retry.
        let mut old_slots: std::collections::BTreeMap<[u8; 16], Vec<u32>> = std::collections::BTreeMap::new();
        for (epoch, to) in given.iter().filter(|(e, _)| *e <= epoch_before) {
            old_slots.entry(*to).or_default().push(*epoch);
        }
        for (to, epochs) in old_slots {
            let held = self.store.e2ee_keys_for(access.workspace, user_id(&to)).await?;
            if let Some(e) = epochs.iter().find(|e| held.iter().any(|h| h.epoch == **e)) {
                return Err(CoreError::BadRequest(format!("the member already holds the key of epoch {e}")));
            }
        }
        if m.epoch != epoch_before && m.members.keys().any(|id| !given.contains(&(m.epoch, *id))) {
            return Err(CoreError::BadRequest(
                "a new key epoch must be wrapped to every member in the same request".into(),
            ));
        }
        let len = m.len;
        let append = LogAppend { first_seq: req.seq, entries: raws, keys, members: changes, at_ms: self.now_ms() };
        self.store.append_e2ee_log(access.workspace, &append, &rows).await.map_err(|e| match e {
            StoreError::Conflict(why) => CoreError::Conflict(format!("{why}; read the log again and redo the change")),
            other => other.into(),
        })?;
        Ok(E2eeAppended { len })
    }

    /// The caller's wrapped workspace keys (any member).
    ///
    /// # Errors
    /// `BadRequest` for a workspace without end-to-end encryption.
    pub async fn my_e2ee_keys(&self, access: &Access) -> CoreResult<E2eeKeys> {
        self.e2ee_workspace(access).await?;
        let rows = self.store.e2ee_keys_for(access.workspace, access.actor.user_id).await?;
        Ok(E2eeKeys { records: rows.iter().map(|r| B64.encode(&r.record)).collect() })
    }
}
