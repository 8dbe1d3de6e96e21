//! Members of end-to-end encrypted workspaces, changed on this client: it replays the workspace's signed
//! membership log from its first entry (checking that it extends the head this device saw last, so a server
//! that rolls the log back or forks it is caught), opens the workspace keys wrapped to the user, signs the
//! change and wraps the keys it needs: every epoch's key to a new member, a new epoch's key to every remaining
//! member after a removal. The server checks the same rules, but nothing here trusts it.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cloudsync_crypto::e2ee::{PublicIdentity, UserKeys};
use cloudsync_crypto::e2ee_members::{Change, Entry, Membership};
use cloudsync_crypto::e2ee_workspace::{WorkspaceKey, WrappedKeyRecord};
use cloudsync_sdk::{Client, ErrorKind};
use cloudsync_types::Role;
use cloudsync_types::api::{AppendE2eeLog, Workspace};

use super::keys;

/// The log's role number of a role.
fn role_number(r: Role) -> u8 {
    match r {
        Role::Viewer => 0,
        Role::Editor => 1,
        Role::Admin => 2,
        Role::Owner => 3,
    }
}

/// A verified view of one end-to-end encrypted workspace, with the user's keys.
struct Verified {
    ws: [u8; 16],
    me: [u8; 16],
    keys: UserKeys,
    identity: PublicIdentity,
    entries: Vec<Entry>,
    members: Membership,
}

impl Verified {
    /// Replays the workspace's log and checks it against what this device saw before and against the user.
    async fn load(client: &Client, w: &Workspace, passphrase_stdin: bool) -> Result<Self> {
        if !w.e2e_encryption {
            bail!("{:?} is not end-to-end encrypted", w.name);
        }
        let (me, _email, keys, identity) = keys::my_keys(client, passphrase_stdin).await?;
        let ws = *w.id.as_uuid().as_bytes();
        let raw = client.workspaces().e2ee_log_all(w.id).await?;
        let entries = raw
            .iter()
            .map(|e| {
                Entry::from_bytes(&B64.decode(e).context("the server sent a malformed log entry")?).map_err(Into::into)
            })
            .collect::<Result<Vec<Entry>>>()?;
        let members = Membership::replay(&ws, &entries).map_err(|e| {
            anyhow::anyhow!(
                "the membership log of {:?} does not hold ({e}): the server altered it; do not use this workspace",
                w.name
            )
        })?;
        keys::check_head(client, w.id, &entries)?;
        match members.members.get(&me) {
            Some(m) if m.identity == identity => {}
            Some(_) => bail!("the membership log of {:?} gives you other keys than yours: refusing it", w.name),
            None => bail!("the membership log of {:?} does not list you as a member", w.name),
        }
        Ok(Self { ws, me, keys, identity, entries, members })
    }

    /// Everyone's identity as the log gave it (the latest for each account), to check who signed what.
    fn identities(&self) -> BTreeMap<[u8; 16], PublicIdentity> {
        let mut out = BTreeMap::new();
        for e in &self.entries {
            let (id, identity) = match &e.change {
                Change::Create { creator, identity, .. } => (creator, identity),
                Change::Add { member, identity, .. } => (member, identity),
                _ => continue,
            };
            if let Ok(i) = PublicIdentity::from_bytes(identity) {
                out.insert(*id, i);
            }
        }
        out
    }

    /// The workspace keys wrapped to the user, by epoch, each checked against its wrapper's identity in the log.
    async fn workspace_keys(&self, client: &Client, w: &Workspace) -> Result<BTreeMap<u32, WorkspaceKey>> {
        let known = self.identities();
        let mut out = BTreeMap::new();
        for text in client.workspaces().e2ee_keys(w.id).await?.records {
            let rec = WrappedKeyRecord::from_bytes(&B64.decode(&text).context("a malformed wrapped key")?)?;
            if rec.ws != self.ws || rec.epoch > self.members.epoch {
                bail!("the server sent a wrapped key of another workspace or epoch: refusing it");
            }
            let wrapper = known.get(&rec.wrapper).ok_or_else(|| {
                anyhow::anyhow!("a wrapped key was made by someone the log never admitted: refusing it")
            })?;
            let key = rec
                .open(wrapper, &self.me, &self.keys, &self.identity)
                .map_err(|e| anyhow::anyhow!("a wrapped workspace key does not check out ({e}): refusing it"))?;
            out.insert(rec.epoch, key);
        }
        if !out.contains_key(&self.members.epoch) {
            bail!(
                "you hold no key of the workspace's current epoch {}: ask an owner to add you again",
                self.members.epoch
            );
        }
        Ok(out)
    }

    fn sign(&self, seq: u64, prev: [u8; 32], change: Change) -> Entry {
        Entry::sign(&self.ws, seq, prev, change, &self.me, &self.keys)
    }

    fn wrap(&self, key: &WorkspaceKey, epoch: u32, to: &[u8; 16], identity: &PublicIdentity) -> Result<String> {
        let rec = WrappedKeyRecord::make(key, &self.ws, epoch, to, identity, &self.me, &self.keys)?;
        Ok(B64.encode(rec.to_bytes()))
    }

    /// Sends the entries (the next ones after the replayed log) with their keys, and remembers the new head.
    async fn append(&self, client: &Client, w: &Workspace, entries: &[Entry], wrapped_keys: Vec<String>) -> Result<()> {
        let req = AppendE2eeLog {
            seq: self.members.len,
            entries: entries.iter().map(|e| B64.encode(e.to_bytes())).collect(),
            wrapped_keys,
        };
        match client.workspaces().append_e2ee_log(w.id, &req).await {
            Err(e) if e.kind() == ErrorKind::Conflict => {
                bail!("someone changed the members of {:?} meanwhile; run the command again", w.name)
            }
            other => other?,
        };
        let mut all = self.entries.clone();
        all.extend_from_slice(entries);
        keys::remember_log(client, w.id, &all)
    }

    fn member_by_email(&self, email: &str) -> Result<[u8; 16]> {
        self.members
            .members
            .iter()
            .find(|(_, m)| m.email.eq_ignore_ascii_case(email.trim()))
            .map(|(id, _)| *id)
            .ok_or_else(|| anyhow::anyhow!("{email} is not a member (by the workspace's signed log)"))
    }
}

/// Adds `email` with `role`: their public keys checked (fingerprint remembered on first sight, a changed one
/// refused unless `yes`), every epoch's key this user holds wrapped to them.
///
/// # Errors
/// A log or key that does not check out, a changed fingerprint without `yes`, or a refused request.
pub(crate) async fn add_member(
    client: &Client,
    w: &Workspace,
    email: &str,
    role: Role,
    passphrase_stdin: bool,
    yes: bool,
) -> Result<()> {
    let v = Verified::load(client, w, passphrase_stdin).await?;
    let (theirs, identity, status) = keys::checked_public(client, email, yes).await?;
    let member = *theirs.user_id.as_uuid().as_bytes();
    if v.members.members.contains_key(&member) {
        bail!("{email} is already a member; use `members set-role` to change the role");
    }
    let held = v.workspace_keys(client, w).await?;
    let change =
        Change::Add { member, email: theirs.email.clone(), identity: identity.to_bytes(), role: role_number(role) };
    let entry = v.sign(v.members.len, v.members.head, change);
    let wrapped =
        held.iter().map(|(epoch, key)| v.wrap(key, *epoch, &member, &identity)).collect::<Result<Vec<_>>>()?;
    v.append(client, w, &[entry], wrapped).await?;
    eprintln!(
        "Added {} to {:?} as {role}; their keys' fingerprint is {} ({status}).",
        theirs.email,
        w.name,
        identity.fingerprint()
    );
    if status == "first seen" {
        eprintln!("Compare that fingerprint with {} in person or by phone.", theirs.email);
    }
    Ok(())
}

/// Gives a member another role (a signed log entry).
///
/// # Errors
/// As [`add_member`].
pub(crate) async fn set_role(
    client: &Client,
    w: &Workspace,
    email: &str,
    role: Role,
    passphrase_stdin: bool,
) -> Result<()> {
    let v = Verified::load(client, w, passphrase_stdin).await?;
    let member = v.member_by_email(email)?;
    let entry = v.sign(v.members.len, v.members.head, Change::SetRole { member, role: role_number(role) });
    v.append(client, w, &[entry], Vec::new()).await?;
    eprintln!("{email} is now {role} in {:?}.", w.name);
    Ok(())
}

/// Removes a member and starts a new key epoch, wrapped to every remaining member, so the removed member
/// cannot read what is written from now on (what they could read before stays as it was).
///
/// # Errors
/// As [`add_member`].
pub(crate) async fn remove_member(client: &Client, w: &Workspace, email: &str, passphrase_stdin: bool) -> Result<()> {
    let v = Verified::load(client, w, passphrase_stdin).await?;
    let member = v.member_by_email(email)?;
    // The user must hold the current key to be trusted with starting the next one.
    v.workspace_keys(client, w).await?;
    let remove = v.sign(v.members.len, v.members.head, Change::Remove { member });
    let epoch = v.members.epoch + 1;
    let rekey = v.sign(v.members.len + 1, remove.hash(), Change::Rekey { epoch });
    let key = WorkspaceKey::generate();
    let wrapped = v
        .members
        .members
        .iter()
        .filter(|(id, _)| **id != member)
        .map(|(id, m)| v.wrap(&key, epoch, id, &m.identity))
        .collect::<Result<Vec<_>>>()?;
    v.append(client, w, &[remove, rekey], wrapped).await?;
    eprintln!("Removed {email} from {:?}; the workspace key was rotated (epoch {epoch}).", w.name);
    Ok(())
}
