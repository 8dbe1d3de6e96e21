//! Reading the audit log: pages of one chain, newest first, filtered by time, events and actor; and
//! verification, which re-hashes a whole chain from its first row and checks it ends at its recorded head.
//!
//! A workspace's chain is read by its Admins and Owners. The account chain (logins, devices, MFA, API keys) is
//! read whole by server administrators; anyone else sees only their own rows in it.

use std::collections::HashMap;

use cloudsync_store::{AuditFilter, AuditRow, ChainVerifier, GLOBAL_CHAIN};
use cloudsync_types::api::{
    AuditEntry, AuditListParams, AuditPage, AuditVerifyReport, BrokenAuditRow, MAX_AUDIT_PAGE, MAX_EMAIL_BYTES,
};
use cloudsync_types::{AuditEvent, Role, UserId};

use crate::{Access, Actor, Core, CoreError, CoreResult};

/// Rows per page when the caller names no limit.
const DEFAULT_PAGE: u32 = 100;
/// Rows read per store call while verifying.
const VERIFY_BATCH: u32 = 1000;
/// Most comma-separated event names in one filter.
const MAX_EVENT_FILTERS: usize = 64;

impl Core {
    /// A page of the workspace's audit log (Admin or Owner).
    ///
    /// # Errors
    /// `Forbidden` below Admin, `BadRequest` for a bad filter, or a store failure.
    pub async fn workspace_audit(&self, access: &Access, params: &AuditListParams) -> CoreResult<AuditPage> {
        require_admin(access)?;
        self.audit_page(access.workspace.to_string(), params, None).await
    }

    /// A page of the account events: all of them for a server administrator, the caller's own otherwise.
    ///
    /// # Errors
    /// `BadRequest` for a bad filter, or a store failure.
    pub async fn account_audit(&self, actor: &Actor, params: &AuditListParams) -> CoreResult<AuditPage> {
        actor.require_session("read the account's events (logins, devices, keys)")?;
        let only = (!actor.is_admin).then_some(actor.user_id);
        self.audit_page(GLOBAL_CHAIN.to_owned(), params, only).await
    }

    /// Re-hashes the workspace's chain (Admin or Owner).
    ///
    /// # Errors
    /// `Forbidden` below Admin, or a store failure.
    pub async fn verify_workspace_audit(&self, access: &Access) -> CoreResult<AuditVerifyReport> {
        require_admin(access)?;
        self.verify_chain(&access.workspace.to_string()).await
    }

    /// Re-hashes the account chain (server administrators).
    ///
    /// # Errors
    /// `Forbidden` for anyone else, or a store failure.
    pub async fn verify_account_audit(&self, actor: &Actor) -> CoreResult<AuditVerifyReport> {
        actor.require_session("verify the account events' chain")?;
        if !actor.is_admin {
            return Err(CoreError::Forbidden("only server administrators can verify the account audit chain".into()));
        }
        self.verify_chain(GLOBAL_CHAIN).await
    }

    async fn audit_page(
        &self,
        chain: String,
        params: &AuditListParams,
        only_actor: Option<UserId>,
    ) -> CoreResult<AuditPage> {
        let limit = params.limit.unwrap_or(DEFAULT_PAGE);
        if limit == 0 || limit > MAX_AUDIT_PAGE {
            return Err(CoreError::BadRequest(format!("limit must be 1 to {MAX_AUDIT_PAGE}")));
        }
        let events = parse_events(params.events.as_deref())?;
        let (since_ms, until_ms) = (params.since.map(crate::ms_of), params.until.map(crate::ms_of));
        if let (Some(s), Some(u)) = (since_ms, until_ms)
            && s >= u
        {
            return Err(CoreError::BadRequest("since must be earlier than until".into()));
        }
        let mut actor = only_actor;
        if let Some(email) = params.actor.as_deref().map(str::trim).filter(|e| !e.is_empty()) {
            if email.len() > MAX_EMAIL_BYTES {
                return Err(CoreError::BadRequest(format!("the actor email must be at most {MAX_EMAIL_BYTES} bytes")));
            }
            let found = self.store.user_by_email(&email.to_lowercase()).await?.map(|u| u.id);
            match (found, only_actor) {
                // An unknown account, or another account where the caller may only see their own rows: nothing.
                (None, _) => return Ok(AuditPage { entries: Vec::new(), next_before: None }),
                (Some(f), Some(me)) if f != me => return Ok(AuditPage { entries: Vec::new(), next_before: None }),
                (Some(f), _) => actor = Some(f),
            }
        }
        let filter = AuditFilter { chain, before_seq: params.before, since_ms, until_ms, events, actor, limit };
        let rows = self.store.query_audit(&filter).await?;
        let next_before = (rows.len() == limit as usize).then(|| rows.last().map(|r| r.seq)).flatten();
        let mut emails: HashMap<UserId, Option<String>> = HashMap::new();
        let mut entries = Vec::with_capacity(rows.len());
        for r in rows {
            let actor_email = match r.row.actor {
                Some(a) => match emails.get(&a) {
                    Some(e) => e.clone(),
                    None => {
                        let e = self.store.user_by_id(a).await?.map(|u| u.email);
                        emails.insert(a, e.clone());
                        e
                    }
                },
                None => None,
            };
            entries.push(entry(r, actor_email));
        }
        Ok(AuditPage { entries, next_before })
    }

    async fn verify_chain(&self, chain: &str) -> CoreResult<AuditVerifyReport> {
        // The head first, then the rows up to it: rows appended while this runs are left for the next check
        // rather than mistaken for a rewound head.
        let head = self.store.audit_head(chain).await?;
        let end = head.map_or(0, |(seq, _)| seq);
        let mut v = ChainVerifier::new(&crate::audit_key(&self.master));
        let mut broken = None;
        'read: while v.rows() < end {
            let want = u32::try_from((end - v.rows()).min(u64::from(VERIFY_BATCH))).unwrap_or(VERIFY_BATCH);
            let rows = match self.store.audit_chain(chain, v.rows(), want).await {
                Ok(rows) => rows,
                // A batch that does not decode holds a row with a value no writer stores: find which.
                Err(cloudsync_store::StoreError::Backend(_)) => {
                    broken = Some(self.unreadable_row(chain, &mut v).await?);
                    break 'read;
                }
                Err(e) => return Err(e.into()),
            };
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                if let Err(b) = v.push(r) {
                    broken = Some(b);
                    break 'read;
                }
            }
        }
        let broken = match broken {
            Some(b) => Some(b),
            None => v.finish(head).err(),
        };
        Ok(AuditVerifyReport {
            chain: chain.to_owned(),
            rows: v.rows(),
            ok: broken.is_none(),
            head_hash: hex::encode(v.last_hash()),
            first_broken: broken.map(|b| BrokenAuditRow { seq: b.seq, id: b.id, reason: b.reason }),
        })
    }

    /// Reads a chain one row at a time from where `v` stands until a row fails to decode (checking the rows
    /// before it), and describes that row.
    async fn unreadable_row(&self, chain: &str, v: &mut ChainVerifier) -> CoreResult<cloudsync_store::BrokenChain> {
        loop {
            match self.store.audit_chain(chain, v.rows(), 1).await {
                Ok(rows) if rows.is_empty() => {
                    return Ok(cloudsync_store::BrokenChain {
                        seq: v.rows() + 1,
                        id: None,
                        reason: format!("row {} cannot be read", v.rows() + 1),
                    });
                }
                Ok(rows) => {
                    if let Err(b) = v.push(&rows[0]) {
                        return Ok(b);
                    }
                }
                Err(_) => {
                    return Ok(cloudsync_store::BrokenChain {
                        seq: v.rows() + 1,
                        id: None,
                        reason: format!(
                            "row {} was edited: one of its columns holds a value the server never writes",
                            v.rows() + 1
                        ),
                    });
                }
            }
        }
    }
}

fn require_admin(access: &Access) -> CoreResult<()> {
    if access.role < Role::Admin {
        return Err(CoreError::Forbidden(format!(
            "the audit log is for workspace admins and owners; you are {}",
            access.role
        )));
    }
    Ok(())
}

fn parse_events(list: Option<&str>) -> CoreResult<Vec<AuditEvent>> {
    let Some(list) = list.map(str::trim).filter(|l| !l.is_empty()) else { return Ok(Vec::new()) };
    let names: Vec<&str> = list.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
    if names.len() > MAX_EVENT_FILTERS {
        return Err(CoreError::BadRequest(format!("name at most {MAX_EVENT_FILTERS} events")));
    }
    let mut out = Vec::new();
    for n in names {
        for e in AuditEvent::matching(n).map_err(|e| CoreError::BadRequest(e.to_string()))? {
            if !out.contains(&e) {
                out.push(e);
            }
        }
    }
    Ok(out)
}

fn entry(r: AuditRow, actor_email: Option<String>) -> AuditEntry {
    AuditEntry {
        id: r.id,
        chain: r.chain,
        seq: r.seq,
        at: crate::time_of(r.row.at_ms),
        event: r.row.event,
        outcome: r.row.outcome,
        actor_id: r.row.actor,
        actor_email,
        workspace_id: r.row.workspace,
        ip: r.row.ip,
        target: r.row.target,
        details: r.row.details,
        prev_hash: hex::encode(r.prev_hash),
        hash: hex::encode(r.hash),
    }
}
