//! End-to-end encrypted workspaces, made and their members changed on this client. Creating one signs the
//! first entry of its membership log and wraps its key to the creator. A member change replays the log from
//! its first entry (checking that it extends the head this device saw last, so a server that rolls the log
//! back or forks it is caught), opens the workspace keys wrapped to the user, signs the change and wraps the
//! keys it needs: every epoch's key to a new member, a new epoch's key to every remaining member after a
//! removal. The server checks the same rules, but nothing here trusts it. The log heads this device saw are
//! kept in `e2ee_heads.json` in the state directory.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cloudsync_crypto::e2ee::{PublicIdentity, UserKeys};
use cloudsync_crypto::e2ee_files::FileKeys;
use cloudsync_crypto::e2ee_members::{Change, Entry, Membership};
use cloudsync_crypto::e2ee_workspace::{WorkspaceKey, WrappedKeyRecord};
use cloudsync_sdk::{Client, ErrorKind};
use cloudsync_sync::{E2eeFiles, Writers};
use cloudsync_types::api::{AppendE2eeLog, CreateWorkspaceRequest, E2eeGenesis, Workspace};
use cloudsync_types::{Role, WorkspaceId};

use super::config::{state_dir, write_private};
use super::keys;

/// A verified view of one end-to-end encrypted workspace, with the user's keys.
struct Verified {
    ws: [u8; 16],
    me: [u8; 16],
    keys: UserKeys,
    identity: PublicIdentity,
    entries: Vec<Entry>,
    members: Membership,
    /// Who may write files in which epoch, from the same replay.
    writers: Writers,
}

impl Verified {
    /// Replays the workspace's log and checks it against what this device saw before and against the user.
    async fn load(client: &Client, w: &Workspace, passphrase_stdin: bool) -> Result<Self> {
        if !w.e2e_encryption {
            bail!("{:?} is not end-to-end encrypted", w.name);
        }
        // The user's keys and the log are independent: fetched at once.
        let workspaces = client.workspaces();
        let (mine, raw) = tokio::join!(keys::my_keys(client, passphrase_stdin), workspaces.e2ee_log_all(w.id));
        let (me, _email, keys, identity) = mine?;
        let raw = raw?;
        let ws = *w.id.as_uuid().as_bytes();
        let entries = raw
            .iter()
            .map(|e| {
                Entry::from_bytes(&B64.decode(e).context("the server sent a malformed log entry")?).map_err(Into::into)
            })
            .collect::<Result<Vec<Entry>>>()?;
        // Who may write files in which epoch: every member who held Editor or above at some point of the
        // epoch, with the identity the log gave them.
        let mut writers = Writers::new();
        let observe = |m: &Membership| {
            for (id, member) in &m.members {
                if member.role >= Role::Editor.rank() {
                    let slot = writers.entry(*id).or_insert_with(|| (member.identity.clone(), BTreeSet::new()));
                    slot.0 = member.identity.clone();
                    slot.1.insert(m.epoch);
                }
            }
        };
        let members = Membership::replay_observed(&ws, &entries, observe).map_err(|e| {
            anyhow::anyhow!(
                "the membership log of {:?} does not hold ({e}): the server altered it; do not use this workspace",
                w.name
            )
        })?;
        check_head(client, w.id, &entries)?;
        match members.members.get(&me) {
            Some(m) if m.identity == identity => {}
            Some(_) => bail!("the membership log of {:?} gives you other keys than yours: refusing it", w.name),
            None => bail!(
                "the membership log of {:?} does not list you as a member: ask one of its owners or admins to add you",
                w.name
            ),
        }
        Ok(Self { ws, me, keys, identity, entries, members, writers })
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
        self.open_workspace_keys(client.workspaces().e2ee_keys(w.id).await?.records)
    }

    /// [`Verified::workspace_keys`] on the records already fetched.
    fn open_workspace_keys(&self, records: Vec<String>) -> Result<BTreeMap<u32, WorkspaceKey>> {
        let known = self.identities();
        let mut out = BTreeMap::new();
        for text in records {
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

    /// The entry after the replayed log.
    fn next(&self, change: Change) -> Entry {
        Entry::sign(&self.ws, self.members.len, self.members.head, change, &self.me, &self.keys)
    }

    /// The entry after `prev` (itself not sent yet).
    fn after(&self, prev: &Entry, change: Change) -> Entry {
        Entry::sign(&self.ws, prev.seq + 1, prev.hash(), change, &self.me, &self.keys)
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
        remember_log(client, w.id, &all)
    }

    fn member_by_email(&self, email: &str) -> Result<[u8; 16]> {
        self.members
            .members
            .iter()
            .find(|(_, m)| m.email.eq_ignore_ascii_case(email.trim()))
            .map(|(id, _)| *id)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{email} is not a member by the workspace's signed log (see `cloudsync workspace members list`)"
                )
            })
    }
}

/// What this member needs to read and write the files of end-to-end encrypted workspace `w`: the workspace
/// keys of every epoch (checked as for member changes) and who may write in which epoch.
///
/// # Errors
/// A log or key that does not check out, or locked keys without a passphrase.
pub(crate) async fn file_access(client: &Client, w: &Workspace, passphrase_stdin: bool) -> Result<Arc<E2eeFiles>> {
    // The wrapped keys are fetched while the log is: they are checked against it once both are here.
    let workspaces = client.workspaces();
    let (v, wrapped) = tokio::join!(Verified::load(client, w, passphrase_stdin), workspaces.e2ee_keys(w.id));
    let v = v?;
    let keys = v.open_workspace_keys(wrapped?.records)?;
    let file_keys = FileKeys::new(v.ws, &keys)?;
    let seen_file = state_dir()
        .join("e2ee_seen")
        .join(format!("{}.json", hex::encode(&cloudsync_crypto::sha256(head_key(client, w.id).as_bytes())[..16])));
    Ok(Arc::new(E2eeFiles { keys: file_keys, me: v.me, signer: v.keys, writers: v.writers, seen_file }))
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
    let change = Change::Add { member, email: theirs.email.clone(), identity: identity.to_bytes(), role: role.rank() };
    let entry = v.next(change);
    let wrapped =
        held.iter().map(|(epoch, key)| v.wrap(key, *epoch, &member, &identity)).collect::<Result<Vec<_>>>()?;
    v.append(client, w, &[entry], wrapped).await?;
    eprintln!("The keys of {} have the fingerprint {} ({status}).", theirs.email, identity.fingerprint());
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
    v.append(client, w, &[v.next(Change::SetRole { member, role: role.rank() })], Vec::new()).await
}

/// Removes a member and starts a new key epoch, wrapped to every remaining member, so the removed member
/// cannot read what is written from now on (what they could read before stays as it was).
///
/// Returns the new epoch.
///
/// # Errors
/// As [`add_member`].
pub(crate) async fn remove_member(client: &Client, w: &Workspace, email: &str, passphrase_stdin: bool) -> Result<u32> {
    let v = Verified::load(client, w, passphrase_stdin).await?;
    let member = v.member_by_email(email)?;
    // The user must hold the current key to be trusted with starting the next one.
    v.workspace_keys(client, w).await?;
    let remove = v.next(Change::Remove { member });
    let epoch = v.members.epoch + 1;
    let rekey = v.after(&remove, Change::Rekey { epoch });
    let key = WorkspaceKey::generate();
    let wrapped = v
        .members
        .members
        .iter()
        .filter(|(id, _)| **id != member)
        .map(|(id, m)| v.wrap(&key, epoch, id, &m.identity))
        .collect::<Result<Vec<_>>>()?;
    v.append(client, w, &[remove, rekey], wrapped).await?;
    Ok(epoch)
}

/// Creates an end-to-end encrypted workspace: a fresh id and epoch-0 workspace key, the creation entry of
/// its membership log signed with the caller's keys, and the key wrapped to the caller. The server checks
/// and stores them; it never holds the workspace key.
///
/// # Errors
/// No end-to-end keys (`keys init`), a wrong passphrase, or a refused request.
pub(crate) async fn create_e2ee_workspace(client: &Client, name: &str, passphrase_stdin: bool) -> Result<Workspace> {
    let (me, email, keys, identity) = keys::my_keys(client, passphrase_stdin).await?;
    let ws = WorkspaceId::new();
    let w = *ws.as_uuid().as_bytes();
    let key = WorkspaceKey::generate();
    let create = Change::Create { creator: me, email, identity: identity.to_bytes() };
    let entry = Entry::sign(&w, 0, [0; 32], create, &me, &keys);
    let record = WrappedKeyRecord::make(&key, &w, 0, &me, &identity, &me, &keys)?;
    let genesis = E2eeGenesis {
        workspace_id: ws,
        entry: B64.encode(entry.to_bytes()),
        wrapped_key: B64.encode(record.to_bytes()),
    };
    let req = CreateWorkspaceRequest { name: name.to_owned(), e2e_encryption: true, e2ee: Some(genesis) };
    let created = client.workspaces().create(&req).await?;
    if created.id != ws || !created.e2e_encryption {
        bail!("the server answered with another workspace than the one created: refusing to use it");
    }
    // The log's head as this device made it: a later replay must extend it, so a server that rolls the log
    // back or forks it is caught.
    remember_log(client, ws, std::slice::from_ref(&entry))?;
    Ok(created)
}

fn heads_path() -> std::path::PathBuf {
    state_dir().join("e2ee_heads.json")
}

fn heads() -> Result<BTreeMap<String, serde_json::Value>> {
    match std::fs::read(heads_path()) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("{} is not valid", heads_path().display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", heads_path().display())),
    }
}

fn head_key(client: &Client, ws: WorkspaceId) -> String {
    format!("{}#{ws}", client.base_url().trim_end_matches('/'))
}

/// Remembers the length and last entry hash of a membership log this device verified.
fn remember_log(client: &Client, ws: WorkspaceId, entries: &[Entry]) -> Result<()> {
    let Some(last) = entries.last() else { return Ok(()) };
    let mut all = heads()?;
    let now = serde_json::json!({"len": entries.len(), "head": hex::encode(last.hash())});
    // Unchanged since last time (most commands): nothing to write (and no fsync to wait for).
    if all.get(&head_key(client, ws)) == Some(&now) {
        return Ok(());
    }
    all.insert(head_key(client, ws), now);
    write_private(&heads_path(), &serde_json::to_vec_pretty(&all)?)
}

/// Checks that a replayed log extends the one this device saw last (a server that rolled it back, cut it
/// short or forked it is refused), then remembers it.
///
/// # Errors
/// A shorter log, or one whose entry at the remembered head differs.
fn check_head(client: &Client, ws: WorkspaceId, entries: &[Entry]) -> Result<()> {
    if let Some(seen) = heads()?.get(&head_key(client, ws)) {
        let len = seen["len"].as_u64().unwrap_or(0);
        let head = seen["head"].as_str().unwrap_or_default();
        let at = usize::try_from(len).ok().and_then(|l| l.checked_sub(1)).and_then(|i| entries.get(i));
        match at {
            None if len > 0 => bail!(
                "the server shows {} membership changes for this workspace, but this device saw {len}: it rolled the log back; do not use this workspace until that is explained",
                entries.len()
            ),
            Some(e) if hex::encode(e.hash()) != head => bail!(
                "the server's membership log differs from the one this device saw (entry {}): it was rewritten; do not use this workspace until that is explained",
                len - 1
            ),
            _ => {}
        }
    }
    remember_log(client, ws, entries)
}
