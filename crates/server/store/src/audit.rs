//! Audit rows and their hash chain. Each row carries the hash of the previous row of its chain, so editing,
//! deleting or reordering a row breaks every hash after it. Workspace events chain per workspace; account
//! events (logins, devices, accounts) chain in [`GLOBAL_CHAIN`]. The hash covers every stored field, encoded
//! with explicit lengths so no two rows can encode alike, and is keyed with an [`AuditKey`] derived from the
//! server's master key, which never lives in the database: whoever can write the database alone cannot
//! recompute a chain after editing it.

use cloudsync_types::{AuditEvent, AuditId, Outcome, UserId, WorkspaceId};

/// The key of the audit chain's hashes (derived from the server master key by the caller).
#[derive(Clone)]
pub struct AuditKey([u8; 32]);

impl AuditKey {
    /// Wraps 32 key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A value a store keeps to recognise this key later (a MAC of a fixed message; it reveals nothing of
    /// the key).
    pub fn check_value(&self) -> [u8; 32] {
        *blake3::keyed_hash(&self.0, b"cloudsync 2026 audit-key check v1").as_bytes()
    }
}

/// Equality of two hashes in constant time (they are MACs under the audit key).
pub fn hashes_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Drop for AuditKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

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
pub fn audit_row_hash(key: &AuditKey, prev: &[u8; 32], id: AuditId, chain: &str, seq: u64, row: &NewAudit) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(&key.0);
    h.update(b"cloudsync 2026 audit-chain v2");
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

/// Which audit rows of one chain to read, newest first.
#[derive(Debug, Clone)]
pub struct AuditFilter {
    /// The chain: a workspace id, or [`GLOBAL_CHAIN`].
    pub chain: String,
    /// Only rows before this position (the paging cursor).
    pub before_seq: Option<u64>,
    /// Only rows at or after this time.
    pub since_ms: Option<i64>,
    /// Only rows before this time.
    pub until_ms: Option<i64>,
    /// Only these events (empty: all).
    pub events: Vec<AuditEvent>,
    /// Only rows by this account.
    pub actor: Option<UserId>,
    /// At most this many rows.
    pub limit: u32,
}

/// Why a chain does not verify, at its first broken row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenChain {
    /// The position where the chain breaks.
    pub seq: u64,
    /// The row found there, if any.
    pub id: Option<AuditId>,
    /// What is wrong, in words.
    pub reason: String,
}

/// Checks a chain row by row, in chain order, without holding it all in memory.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    key: AuditKey,
    prev: [u8; 32],
    next_seq: u64,
}

impl ChainVerifier {
    /// A verifier for chains hashed under `key`, before their first row.
    pub fn new(key: &AuditKey) -> Self {
        Self { key: key.clone(), prev: [0u8; 32], next_seq: 1 }
    }

    /// Rows checked so far.
    pub fn rows(&self) -> u64 {
        self.next_seq - 1
    }

    /// The hash of the last row checked (zeros before the first).
    pub fn last_hash(&self) -> [u8; 32] {
        self.prev
    }

    /// Checks the next row.
    ///
    /// # Errors
    /// The row is not the next position, does not link to the previous row, or its content does not match its
    /// hash.
    pub fn push(&mut self, r: &AuditRow) -> Result<(), BrokenChain> {
        let want = self.next_seq;
        let broken = |reason: String| BrokenChain { seq: want, id: Some(r.id), reason };
        if r.seq != want {
            return Err(if r.seq > want {
                BrokenChain {
                    seq: want,
                    id: None,
                    reason: format!("row {want} is missing: the chain jumps from row {} to row {}", want - 1, r.seq),
                }
            } else {
                broken(format!("row {} appears again at position {want}", r.seq))
            });
        }
        if !hashes_equal(&r.prev_hash, &self.prev) {
            return Err(broken(format!(
                "row {want} does not link to row {}: rows were reordered, replaced or deleted",
                want - 1
            )));
        }
        if !hashes_equal(&audit_row_hash(&self.key, &self.prev, r.id, &r.chain, r.seq, &r.row), &r.hash) {
            return Err(broken(format!("row {want} was edited: its content does not match its hash")));
        }
        self.prev = r.hash;
        self.next_seq += 1;
        Ok(())
    }

    /// Checks that the chain ended where its recorded head says (`head`: the head's seq and hash, None when
    /// the chain has no head).
    ///
    /// # Errors
    /// Rows were deleted from the end, or the last row is not the one the head recorded.
    pub fn finish(&self, head: Option<(u64, [u8; 32])>) -> Result<(), BrokenChain> {
        let (seq, hash) = head.unwrap_or((0, [0u8; 32]));
        let last = self.rows();
        if seq != last {
            return Err(BrokenChain {
                seq: last + 1,
                id: None,
                reason: if seq > last {
                    format!(
                        "the chain ends at row {last} but its head records row {seq}: rows were deleted from the end"
                    )
                } else {
                    format!("the chain has {last} rows but its head records {seq}: the head was rewound")
                },
            });
        }
        if !hashes_equal(&hash, &self.prev) {
            return Err(BrokenChain {
                seq: last,
                id: None,
                reason: format!("row {last} is not the row the chain's head recorded: it was replaced"),
            });
        }
        Ok(())
    }
}

/// Checks a chain read in order from its first row. Returns the seq of the first broken row.
///
/// # Errors
/// The position of the first row whose sequence, link or hash does not match.
pub fn verify_chain(key: &AuditKey, rows: &[AuditRow]) -> Result<(), u64> {
    let mut v = ChainVerifier::new(key);
    rows.iter().try_for_each(|r| v.push(r)).map_err(|b| b.seq)
}
