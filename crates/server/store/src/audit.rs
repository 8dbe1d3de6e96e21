//! Audit rows and their hash chain. Each row carries the hash of the previous row of its chain, so editing,
//! deleting or reordering a row breaks every hash after it. Workspace events chain per workspace; account
//! events (logins, devices, accounts) chain in [`GLOBAL_CHAIN`]. The hash covers every stored field, encoded
//! with explicit lengths so no two rows can encode alike.

use cloudsync_types::{AuditEvent, AuditId, Outcome, UserId, WorkspaceId};

/// The chain of events that belong to no workspace.
pub const GLOBAL_CHAIN: &str = "global";

/// An audit row to write. Holds ids and short hash prefixes only, never a secret.
#[derive(Debug, Clone)]
pub struct NewAudit {
    /// What happened.
    pub event: AuditEvent,
    /// Success or failure.
    pub outcome: Outcome,
    /// Who did it (None: unauthenticated, e.g. a failed login for an unknown email).
    pub actor: Option<UserId>,
    /// The workspace it happened in; None puts it in the global chain.
    pub workspace: Option<WorkspaceId>,
    /// The client address.
    pub ip: Option<String>,
    /// What it was done to (a path, a member's id, a session id).
    pub target: Option<String>,
    /// Small structured details (method, roles, version, reason).
    pub details: serde_json::Value,
    /// When.
    pub at_ms: i64,
}

impl NewAudit {
    /// The chain this row belongs to.
    pub fn chain(&self) -> String {
        self.workspace.map_or_else(|| GLOBAL_CHAIN.to_owned(), |w| w.to_string())
    }
}

/// A stored audit row.
#[derive(Debug, Clone)]
pub struct AuditRow {
    /// Row id.
    pub id: AuditId,
    /// Chain name.
    pub chain: String,
    /// Position in the chain, from 1.
    pub seq: u64,
    /// The row's content.
    pub row: NewAudit,
    /// Hash of the previous row in the chain (zeros for the first).
    pub prev_hash: [u8; 32],
    /// This row's hash.
    pub hash: [u8; 32],
}

fn put(h: &mut blake3::Hasher, field: &[u8]) {
    h.update(&(field.len() as u64).to_le_bytes());
    h.update(field);
}

/// The hash of a row given its chain position and the previous hash.
pub fn audit_row_hash(prev: &[u8; 32], id: AuditId, chain: &str, seq: u64, row: &NewAudit) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("cloudsync 2026 audit-chain v1");
    h.update(prev);
    put(&mut h, id.as_uuid().as_bytes());
    put(&mut h, chain.as_bytes());
    h.update(&seq.to_le_bytes());
    put(&mut h, row.event.as_str().as_bytes());
    put(&mut h, row.outcome.as_str().as_bytes());
    put(&mut h, row.actor.map(|a| a.to_string()).unwrap_or_default().as_bytes());
    put(&mut h, row.workspace.map(|w| w.to_string()).unwrap_or_default().as_bytes());
    put(&mut h, row.ip.as_deref().unwrap_or("").as_bytes());
    put(&mut h, row.target.as_deref().unwrap_or("").as_bytes());
    put(&mut h, row.details.to_string().as_bytes());
    h.update(&row.at_ms.to_le_bytes());
    *h.finalize().as_bytes()
}

/// Checks a chain read in order from its first row. Returns the seq of the first broken row.
///
/// # Errors
/// The position of the first row whose sequence, link or hash does not match.
pub fn verify_chain(rows: &[AuditRow]) -> Result<(), u64> {
    let mut prev = [0u8; 32];
    for (i, r) in rows.iter().enumerate() {
        let want_seq = i as u64 + 1;
        if r.seq != want_seq || r.prev_hash != prev || audit_row_hash(&prev, r.id, &r.chain, r.seq, &r.row) != r.hash {
            return Err(want_seq);
        }
        prev = r.hash;
    }
    Ok(())
}
