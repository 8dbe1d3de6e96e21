//! The signed membership log of an end-to-end encrypted workspace (RFC 0004; built and tested here before
//! the server stores it). Each entry names one change (the workspace's creation, a member added, a role
//! changed, a member removed, a new key epoch), links to the previous entry's hash and is signed by a member
//! who may make that change under the log so far. Every client replays the whole log, so a server that adds
//! a member, changes a role, drops, reorders or edits an entry, or substitutes a member's public key in it, is
//! caught at that entry.
//!
//! Roles are numbers so this crate stays free of the API types: 0 viewer, 1 editor, 2 admin, 3 owner. The
//! rules are the server's own (an admin manages viewers and editors, an owner anyone, the last owner
//! stays), enforced again by every client.

use std::collections::BTreeMap;

use crate::CryptoError;
use crate::e2ee::{IDENTITY_LEN, PublicIdentity, UserKeys};

/// Viewer.
pub const VIEWER: u8 = 0;
/// Editor.
pub const EDITOR: u8 = 1;
/// Admin.
pub const ADMIN: u8 = 2;
/// Owner.
pub const OWNER: u8 = 3;

/// One change to a workspace's membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The workspace was made by its first owner (the first entry, and only there).
    Create {
        /// The creator's account id.
        creator: [u8; 16],
        /// The creator's email.
        email: String,
        /// The creator's identity.
        identity: [u8; IDENTITY_LEN],
    },
    /// A member was added.
    Add {
        /// Account id.
        member: [u8; 16],
        /// Email.
        email: String,
        /// Identity the signer checked (fingerprint compared).
        identity: [u8; IDENTITY_LEN],
        /// Role.
        role: u8,
    },
    /// A member's role changed.
    SetRole {
        /// Account id.
        member: [u8; 16],
        /// New role.
        role: u8,
    },
    /// A member was removed.
    Remove {
        /// Account id.
        member: [u8; 16],
    },
    /// A new key epoch began (after a removal, so the removed member cannot read what follows).
    Rekey {
        /// The new epoch (one more than the last).
        epoch: u32,
    },
}

impl Change {
    fn encode(&self, out: &mut Vec<u8>) {
        let text = |out: &mut Vec<u8>, s: &str| {
            out.extend_from_slice(&(s.len() as u64).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        };
        match self {
            Change::Create { creator, email, identity } => {
                out.push(1);
                out.extend_from_slice(creator);
                text(out, email);
                out.extend_from_slice(identity);
            }
            Change::Add { member, email, identity, role } => {
                out.push(2);
                out.extend_from_slice(member);
                text(out, email);
                out.extend_from_slice(identity);
                out.push(*role);
            }
            Change::SetRole { member, role } => {
                out.push(3);
                out.extend_from_slice(member);
                out.push(*role);
            }
            Change::Remove { member } => {
                out.push(4);
                out.extend_from_slice(member);
            }
            Change::Rekey { epoch } => {
                out.push(5);
                out.extend_from_slice(&epoch.to_be_bytes());
            }
        }
    }
}

/// One signed entry of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Workspace id.
    pub ws: [u8; 16],
    /// Position, from 0.
    pub seq: u64,
    /// Hash of the previous entry (zeros for the first).
    pub prev: [u8; 32],
    /// The change.
    pub change: Change,
    /// Who signed it.
    pub signer: [u8; 16],
    /// Ed25519 signature of the entry's content by the signer.
    pub signature: [u8; 64],
}

fn content(ws: &[u8; 16], seq: u64, prev: &[u8; 32], change: &Change, signer: &[u8; 16]) -> Vec<u8> {
    let mut m = b"cloudsync e2ee membership entry v1\0".to_vec();
    m.extend_from_slice(ws);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(prev);
    change.encode(&mut m);
    m.extend_from_slice(signer);
    m
}

/// Largest encoded entry accepted (an Add with a 254-byte email is under 450 bytes).
pub const MAX_ENTRY_BYTES: usize = 1024;

/// A cursor over an encoded entry; every read is bounds-checked, so hostile bytes give an error, never a
/// panic.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CryptoError> {
        if self.0.len() < n {
            return Err(CryptoError::InvalidKey("a membership entry is cut short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], CryptoError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, CryptoError> {
        Ok(self.take(1)?[0])
    }
    fn text(&mut self) -> Result<String, CryptoError> {
        let len = u64::from_be_bytes(self.array::<8>()?);
        let len = usize::try_from(len).map_err(|_| CryptoError::InvalidKey("a membership entry's text is too long"))?;
        if len > 320 {
            return Err(CryptoError::InvalidKey("a membership entry's email is too long"));
        }
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| CryptoError::InvalidKey("an email that is not UTF-8"))
    }
}

impl Entry {
    /// The wire form: the signed content followed by the signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = content(&self.ws, self.seq, &self.prev, &self.change, &self.signer);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Reads the wire form (the signature is checked by [`Membership::apply`], not here).
    ///
    /// # Errors
    /// [`CryptoError::InvalidKey`] for anything malformed, oversized or with bytes left over.
    pub fn from_bytes(b: &[u8]) -> Result<Self, CryptoError> {
        const MAGIC: &[u8] = b"cloudsync e2ee membership entry v1\0";
        if b.len() > MAX_ENTRY_BYTES {
            return Err(CryptoError::InvalidKey("a membership entry is too large"));
        }
        let mut r = Reader(b);
        if r.take(MAGIC.len())? != MAGIC {
            return Err(CryptoError::InvalidKey("not a membership entry"));
        }
        let ws = r.array::<16>()?;
        let seq = u64::from_be_bytes(r.array::<8>()?);
        let prev = r.array::<32>()?;
        let change = match r.u8()? {
            1 => Change::Create { creator: r.array()?, email: r.text()?, identity: r.array()? },
            2 => Change::Add { member: r.array()?, email: r.text()?, identity: r.array()?, role: r.u8()? },
            3 => Change::SetRole { member: r.array()?, role: r.u8()? },
            4 => Change::Remove { member: r.array()? },
            5 => Change::Rekey { epoch: u32::from_be_bytes(r.array::<4>()?) },
            _ => return Err(CryptoError::InvalidKey("an unknown membership change")),
        };
        let signer = r.array::<16>()?;
        let signature = r.array::<64>()?;
        if !r.0.is_empty() {
            return Err(CryptoError::InvalidKey("bytes after a membership entry"));
        }
        Ok(Self { ws, seq, prev, change, signer, signature })
    }

    /// Makes and signs the entry after `prev_hash` at `seq`.
    pub fn sign(ws: &[u8; 16], seq: u64, prev: [u8; 32], change: Change, signer: &[u8; 16], keys: &UserKeys) -> Self {
        let signature = keys.sign(&content(ws, seq, &prev, &change, signer));
        Self { ws: *ws, seq, prev, change, signer: *signer, signature }
    }

    /// This entry's hash, which the next entry links to.
    pub fn hash(&self) -> [u8; 32] {
        let mut m = content(&self.ws, self.seq, &self.prev, &self.change, &self.signer);
        m.extend_from_slice(&self.signature);
        blake3::derive_key("cloudsync 2026 e2ee membership hash v1", &m)
    }
}

/// A member as the log says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Email.
    pub email: String,
    /// Role.
    pub role: u8,
    /// Identity.
    pub identity: PublicIdentity,
}

/// The membership the log adds up to.
#[derive(Debug, Clone, Default)]
pub struct Membership {
    /// Members by account id.
    pub members: BTreeMap<[u8; 16], Member>,
    /// The current key epoch.
    pub epoch: u32,
    /// Hash of the last entry (what the next links to).
    pub head: [u8; 32],
    /// Entries replayed.
    pub len: u64,
}

/// Where and why a log does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("membership entry {seq}: {reason}")]
pub struct BadEntry {
    /// The entry.
    pub seq: u64,
    /// What is wrong.
    pub reason: String,
}

fn identity_of(b: &[u8; IDENTITY_LEN], member: &[u8; 16], email: &str) -> Result<PublicIdentity, CryptoError> {
    let id = PublicIdentity::from_bytes(b)?;
    id.verify(member, email)?;
    Ok(id)
}

impl Membership {
    /// Replays a whole log of workspace `ws` from its first entry.
    ///
    /// # Errors
    /// The first entry that is out of place, unlinked, unsigned by a member who may make it, or against the
    /// rules.
    pub fn replay(ws: &[u8; 16], entries: &[Entry]) -> Result<Self, BadEntry> {
        Self::replay_observed(ws, entries, |_| {})
    }

    /// As [`Membership::replay`], calling `observe` with the state after each entry (for what depends on the
    /// whole history, such as who could write in each epoch), so the log is checked only once.
    ///
    /// # Errors
    /// As [`Membership::replay`].
    pub fn replay_observed(
        ws: &[u8; 16],
        entries: &[Entry],
        mut observe: impl FnMut(&Membership),
    ) -> Result<Self, BadEntry> {
        let mut m = Membership::default();
        for e in entries {
            m.apply(ws, e)?;
            observe(&m);
        }
        if m.len == 0 {
            return Err(BadEntry { seq: 0, reason: "the log is empty".into() });
        }
        Ok(m)
    }

    /// Checks and applies the next entry.
    ///
    /// # Errors
    /// As [`Membership::replay`].
    pub fn apply(&mut self, ws: &[u8; 16], e: &Entry) -> Result<(), BadEntry> {
        let bad = |reason: &str| BadEntry { seq: e.seq, reason: reason.to_owned() };
        if e.ws != *ws {
            return Err(bad("it belongs to another workspace"));
        }
        if e.seq != self.len {
            return Err(BadEntry {
                seq: self.len,
                reason: format!(
                    "expected entry {}, found entry {}: entries were dropped or reordered",
                    self.len, e.seq
                ),
            });
        }
        if e.prev != self.head {
            return Err(bad("it does not link to the entry before it"));
        }
        // Who signed: the creator for the first entry (self-certified by the identity it carries); afterwards
        // a current member, with their identity from the log.
        let signer_identity = match (&e.change, self.len) {
            (Change::Create { creator, email, identity }, 0) => {
                if e.signer != *creator {
                    return Err(bad("the creation is signed by someone else than the creator"));
                }
                identity_of(identity, creator, email).map_err(|_| bad("the creator's identity is not theirs"))?
            }
            (Change::Create { .. }, _) => return Err(bad("a second creation")),
            (_, 0) => return Err(bad("the first entry must be the creation")),
            _ => {
                self.members.get(&e.signer).map(|m| m.identity.clone()).ok_or_else(|| bad("signed by a non-member"))?
            }
        };
        let sig = ed25519_dalek::Signature::from_bytes(&e.signature);
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&signer_identity.signing)
            .map_err(|_| bad("the signer's key is unusable"))?;
        vk.verify_strict(&content(&e.ws, e.seq, &e.prev, &e.change, &e.signer), &sig)
            .map_err(|_| bad("the signature does not verify: the entry was altered or forged"))?;
        let signer_role = self.members.get(&e.signer).map_or(OWNER, |m| m.role);
        // May `signer_role` give or take `role`? An owner anything; an admin only below admin.
        let manages = |role: u8| signer_role == OWNER || (signer_role == ADMIN && role < ADMIN);
        match &e.change {
            Change::Create { creator, email, .. } => {
                self.members.insert(*creator, Member { email: email.clone(), role: OWNER, identity: signer_identity });
            }
            Change::Add { member, email, identity, role } => {
                if *role > OWNER {
                    return Err(bad("an unknown role"));
                }
                if self.members.contains_key(member) {
                    return Err(bad("the member is already in the workspace"));
                }
                if !manages(*role) {
                    return Err(bad("the signer may not add a member with that role"));
                }
                let identity = identity_of(identity, member, email)
                    .map_err(|_| bad("the added member's identity is not theirs"))?;
                self.members.insert(*member, Member { email: email.clone(), role: *role, identity });
            }
            Change::SetRole { member, role } => {
                let old = self.members.get(member).map(|m| m.role).ok_or_else(|| bad("not a member"))?;
                if *role > OWNER || !manages(old) || !manages(*role) {
                    return Err(bad("the signer may not change that role"));
                }
                if old == OWNER && *role != OWNER && self.owners() == 1 {
                    return Err(bad("the last owner cannot be demoted"));
                }
                if let Some(m) = self.members.get_mut(member) {
                    m.role = *role;
                }
            }
            Change::Remove { member } => {
                let old = self.members.get(member).map(|m| m.role).ok_or_else(|| bad("not a member"))?;
                if !manages(old) && *member != e.signer {
                    return Err(bad("the signer may not remove that member"));
                }
                if old == OWNER && self.owners() == 1 {
                    return Err(bad("the last owner cannot be removed"));
                }
                self.members.remove(member);
            }
            Change::Rekey { epoch } => {
                if signer_role < ADMIN {
                    return Err(bad("only an admin or owner starts a new key epoch"));
                }
                if *epoch != self.epoch + 1 {
                    return Err(bad("epochs must go up one at a time"));
                }
                self.epoch = *epoch;
            }
        }
        self.head = e.hash();
        self.len += 1;
        Ok(())
    }

    fn owners(&self) -> usize {
        self.members.values().filter(|m| m.role == OWNER).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WS: [u8; 16] = [9; 16];

    struct Person {
        id: [u8; 16],
        email: String,
        keys: UserKeys,
        identity: PublicIdentity,
    }

    fn person(n: u8, name: &str) -> Person {
        let keys = UserKeys::generate();
        let email = format!("{name}@x.org");
        let identity = keys.identity(&[n; 16], &email);
        Person { id: [n; 16], email, keys, identity }
    }

    struct Log(Vec<Entry>);

    impl Log {
        fn push(&mut self, change: Change, by: &Person) {
            let prev = self.0.last().map_or([0; 32], Entry::hash);
            self.0.push(Entry::sign(&WS, self.0.len() as u64, prev, change, &by.id, &by.keys));
        }
    }

    fn add(p: &Person, role: u8) -> Change {
        Change::Add { member: p.id, email: p.email.clone(), identity: p.identity.to_bytes(), role }
    }

    fn honest() -> (Log, Person, Person, Person) {
        let (alice, bob, carol) = (person(1, "alice"), person(2, "bob"), person(3, "carol"));
        let mut log = Log(Vec::new());
        log.push(
            Change::Create { creator: alice.id, email: alice.email.clone(), identity: alice.identity.to_bytes() },
            &alice,
        );
        log.push(add(&bob, ADMIN), &alice);
        log.push(add(&carol, EDITOR), &bob);
        log.push(Change::Remove { member: carol.id }, &bob);
        log.push(Change::Rekey { epoch: 1 }, &bob);
        (log, alice, bob, carol)
    }

    #[test]
    fn an_honest_log_replays_to_its_membership() {
        let (log, alice, bob, carol) = honest();
        let m = Membership::replay(&WS, &log.0).expect("replay");
        assert_eq!(m.members.len(), 2);
        assert_eq!(m.members[&alice.id].role, OWNER);
        assert_eq!(m.members[&bob.id].role, ADMIN);
        assert!(!m.members.contains_key(&carol.id));
        assert_eq!((m.epoch, m.len), (1, 5));
        assert!(Membership::replay(&[8; 16], &log.0).is_err(), "another workspace's log");
    }

    #[test]
    fn a_server_cannot_add_drop_reorder_or_alter_entries() {
        let (log, alice, _bob, carol) = honest();
        let mallory = person(6, "mallory");
        let at = |entries: &[Entry]| Membership::replay(&WS, entries).expect_err("caught").seq;

        // Injected: the server adds its own member, signing as a key pair it made.
        let mut injected = log.0.clone();
        let prev = injected.last().map(Entry::hash).unwrap_or_default();
        injected.push(Entry::sign(&WS, 5, prev, add(&mallory, OWNER), &mallory.id, &mallory.keys));
        assert_eq!(at(&injected), 5);
        // ... or signs in alice's name with a key it made for her.
        let fake_alice = person(1, "alice");
        let mut forged = log.0.clone();
        forged.push(Entry::sign(&WS, 5, prev, add(&mallory, VIEWER), &alice.id, &fake_alice.keys));
        assert_eq!(at(&forged), 5);

        // Dropped: carol's removal and the rekey vanish, so she would keep reading.
        let mut dropped = log.0.clone();
        dropped.remove(3);
        assert_eq!(at(&dropped), 3);
        // Reordered.
        let mut reordered = log.0.clone();
        reordered.swap(1, 2);
        assert_eq!(at(&reordered), 1);
        // Altered: carol added as owner instead of editor.
        let mut altered = log.0.clone();
        altered[2].change = add(&carol, OWNER);
        assert_eq!(at(&altered), 2);
        // A member's public key substituted inside an entry.
        let mut substituted = log.0.clone();
        substituted[2].change =
            add(&Person { identity: mallory.keys.identity(&carol.id, &carol.email), ..person(3, "carol") }, EDITOR);
        assert_eq!(at(&substituted), 2);
    }

    #[test]
    fn entries_round_trip_and_hostile_bytes_are_refused_without_panicking() {
        let (log, ..) = honest();
        for e in &log.0 {
            let b = e.to_bytes();
            assert!(b.len() <= MAX_ENTRY_BYTES);
            assert_eq!(&Entry::from_bytes(&b).expect("decode"), e);
            for cut in [0, 1, b.len() / 2, b.len() - 1] {
                assert!(Entry::from_bytes(&b[..cut]).is_err(), "cut at {cut}");
            }
            let mut longer = b.clone();
            longer.push(0);
            assert!(Entry::from_bytes(&longer).is_err());
        }
        // Every single-byte change either fails to decode or fails the replay.
        let b = log.0[2].to_bytes();
        for i in (0..b.len()).step_by(7) {
            let mut t = b.clone();
            t[i] ^= 0x40;
            if let Ok(e) = Entry::from_bytes(&t) {
                let mut entries = log.0.clone();
                entries[2] = e;
                assert!(Membership::replay(&WS, &entries).is_err(), "a flip at byte {i} went unnoticed");
            }
        }
        let mut huge = log.0[1].to_bytes();
        huge.resize(MAX_ENTRY_BYTES + 1, 0);
        assert!(Entry::from_bytes(&huge).is_err());
    }

    #[test]
    fn the_rules_hold_inside_the_log() {
        let (alice, bob, carol) = (person(1, "alice"), person(2, "bob"), person(3, "carol"));
        let start = |log: &mut Log| {
            log.push(
                Change::Create { creator: alice.id, email: alice.email.clone(), identity: alice.identity.to_bytes() },
                &alice,
            );
            log.push(add(&bob, EDITOR), &alice);
        };
        let mut by_editor = Log(Vec::new());
        start(&mut by_editor);
        by_editor.push(add(&carol, VIEWER), &bob);
        assert!(Membership::replay(&WS, &by_editor.0).expect_err("editor adds").reason.contains("may not add"));

        let mut admin_makes_owner = Log(Vec::new());
        start(&mut admin_makes_owner);
        admin_makes_owner.push(Change::SetRole { member: bob.id, role: ADMIN }, &alice);
        admin_makes_owner.push(add(&carol, OWNER), &bob);
        assert_eq!(Membership::replay(&WS, &admin_makes_owner.0).expect_err("admin adds owner").seq, 3);

        let mut last_owner = Log(Vec::new());
        start(&mut last_owner);
        last_owner.push(Change::Remove { member: alice.id }, &alice);
        assert!(Membership::replay(&WS, &last_owner.0).expect_err("last owner").reason.contains("last owner"));

        let mut skip_epoch = Log(Vec::new());
        start(&mut skip_epoch);
        skip_epoch.push(Change::Rekey { epoch: 2 }, &alice);
        assert!(Membership::replay(&WS, &skip_epoch.0).is_err());

        let mut leave = Log(Vec::new());
        start(&mut leave);
        leave.push(Change::Remove { member: bob.id }, &bob);
        assert!(Membership::replay(&WS, &leave.0).is_ok(), "a member may leave");
        assert!(Membership::replay(&WS, &[]).is_err());
    }
}
