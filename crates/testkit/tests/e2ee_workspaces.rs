//! End-to-end encrypted workspaces on a real server: created from a genesis signed on the client, members
//! added and removed only through the signed log (which the server replays with the clients' rules and
//! mirrors into its members table), and workspace keys that only members can open.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cloudsync_crypto::e2ee::{PublicIdentity, UserKeys};
use cloudsync_crypto::e2ee_members::{Change, EDITOR, Entry, Membership};
use cloudsync_crypto::e2ee_workspace::{Purpose, WorkspaceKey, WrappedKeyRecord};
use cloudsync_sdk::{Client, ErrorKind};
use cloudsync_testkit::TestServer;
use cloudsync_types::api::{
    AddMemberRequest, AppendE2eeLog, CreateWorkspaceRequest, E2eeGenesis, FreshProof, UploadUserKeys,
};
use cloudsync_types::{Role, WorkspaceId};

/// An account with end-to-end keys stored on the server.
struct Person {
    client: Client,
    id: [u8; 16],
    email: String,
    keys: UserKeys,
    identity: PublicIdentity,
}

async fn person(srv: &TestServer, email: &str) -> Person {
    let client = srv.user(email).await;
    let id = *client.auth().whoami().await.expect("whoami").user.id.as_uuid().as_bytes();
    let keys = UserKeys::generate();
    let identity = keys.identity(&id, email);
    // The sealed halves are opaque to the server; their format is not what this test is about.
    let upload = UploadUserKeys {
        identity: B64.encode(identity.to_bytes()),
        sealed_by_passphrase: B64.encode(b"sealed under a passphrase"),
        sealed_by_recovery: B64.encode(b"sealed under a recovery key"),
        proof: FreshProof::default(),
    };
    client.keys().upload(&upload).await.expect("upload keys");
    Person { client, id, email: email.to_owned(), keys, identity }
}

fn genesis(p: &Person, ws: WorkspaceId, key: &WorkspaceKey) -> E2eeGenesis {
    let w = *ws.as_uuid().as_bytes();
    let create = Change::Create { creator: p.id, email: p.email.clone(), identity: p.identity.to_bytes() };
    let entry = Entry::sign(&w, 0, [0; 32], create, &p.id, &p.keys);
    let record = WrappedKeyRecord::make(key, &w, 0, &p.id, &p.identity, &p.id, &p.keys).expect("wrap");
    E2eeGenesis { workspace_id: ws, entry: B64.encode(entry.to_bytes()), wrapped_key: B64.encode(record.to_bytes()) }
}

fn request(name: &str, g: Option<E2eeGenesis>) -> CreateWorkspaceRequest {
    CreateWorkspaceRequest { name: name.into(), e2e_encryption: true, e2ee: g }
}

/// The log as the server holds it, replayed by this client.
async fn replay(p: &Person, ws: WorkspaceId) -> (Vec<Entry>, Membership) {
    let raw = p.client.workspaces().e2ee_log_all(ws).await.expect("log");
    let entries: Vec<Entry> =
        raw.iter().map(|e| Entry::from_bytes(&B64.decode(e).expect("base64")).expect("entry")).collect();
    let m = Membership::replay(ws.as_uuid().as_bytes(), &entries).expect("the log replays");
    (entries, m)
}

/// The workspace key of `epoch` as `p` opens it, checked against the wrapper's identity `by`.
async fn open_key(p: &Person, ws: WorkspaceId, epoch: u32, by: &PublicIdentity) -> [u8; 32] {
    let recs = p.client.workspaces().e2ee_keys(ws).await.expect("keys");
    let rec = recs
        .records
        .iter()
        .map(|r| WrappedKeyRecord::from_bytes(&B64.decode(r).expect("base64")).expect("record"))
        .find(|r| r.epoch == epoch)
        .unwrap_or_else(|| panic!("no key of epoch {epoch} for {}", p.email));
    let key = rec.open(by, &p.id, &p.keys, &p.identity).expect("opens");
    *key.subkey(Purpose::Chunk).as_bytes()
}

fn chunk_key(k: &WorkspaceKey) -> [u8; 32] {
    *k.subkey(Purpose::Chunk).as_bytes()
}

fn kind<T: std::fmt::Debug>(r: Result<T, cloudsync_sdk::Error>) -> ErrorKind {
    r.expect_err("must be refused").kind()
}

#[tokio::test]
async fn an_e2ee_workspace_begins_with_a_genesis_signed_by_its_creator() {
    let srv = TestServer::start().await;
    let a = person(&srv, "a@example.com").await;
    let b = person(&srv, "b@example.com").await;
    let key = WorkspaceKey::generate();
    let ws = WorkspaceId::new();
    let spaces = a.client.workspaces();

    // Refused: no genesis; a genesis naming another account; a key wrapped to someone else; an identity
    // that is not the one stored for the account.
    assert_eq!(kind(spaces.create(&request("S", None)).await), ErrorKind::BadRequest);
    let mut forged = genesis(&b, ws, &key);
    forged.wrapped_key = genesis(&a, ws, &key).wrapped_key;
    assert_eq!(kind(spaces.create(&request("S", Some(forged))).await), ErrorKind::BadRequest);
    let mut to_b = genesis(&a, ws, &key);
    let w = *ws.as_uuid().as_bytes();
    to_b.wrapped_key =
        B64.encode(WrappedKeyRecord::make(&key, &w, 0, &b.id, &b.identity, &a.id, &a.keys).expect("wrap").to_bytes());
    assert_eq!(kind(spaces.create(&request("S", Some(to_b))).await), ErrorKind::BadRequest);
    let stranger = UserKeys::generate();
    let impostor = Person {
        client: a.client.clone(),
        id: a.id,
        email: a.email.clone(),
        identity: stranger.identity(&a.id, &a.email),
        keys: stranger,
    };
    assert_eq!(kind(spaces.create(&request("S", Some(genesis(&impostor, ws, &key)))).await), ErrorKind::BadRequest);
    assert!(spaces.list().await.expect("list").is_empty(), "nothing was created by a refused request");

    // The real one.
    let created = spaces.create(&request("Secret Project", Some(genesis(&a, ws, &key)))).await.expect("create");
    assert_eq!((created.id, created.e2e_encryption, created.role), (ws, true, Role::Owner));
    let (entries, m) = replay(&a, ws).await;
    assert_eq!((entries.len(), m.epoch), (1, 0));
    assert!(m.members.get(&a.id).is_some_and(|x| x.role == 3));
    assert_eq!(open_key(&a, ws, 0, &a.identity).await, chunk_key(&key));
    // The id is taken now.
    assert_eq!(kind(spaces.create(&request("Other", Some(genesis(&a, ws, &key)))).await), ErrorKind::Conflict);
    // Deleted, its id stays taken: a new workspace cannot take over the old one's audit history.
    spaces.delete(ws).await.expect("delete");
    assert_eq!(kind(spaces.create(&request("Again", Some(genesis(&a, ws, &key)))).await), ErrorKind::Conflict);
    // A workspace without end-to-end encryption has no log.
    let plain = spaces
        .create(&CreateWorkspaceRequest { name: "Plain".into(), e2e_encryption: false, e2ee: None })
        .await
        .expect("plain");
    assert_eq!(kind(spaces.e2ee_log(plain.id, 0).await), ErrorKind::BadRequest);
    srv.stop().await;
}

#[tokio::test]
async fn members_change_only_through_the_signed_log_and_removal_starts_a_new_epoch() {
    let srv = TestServer::start().await;
    let a = person(&srv, "a@example.com").await;
    let b = person(&srv, "b@example.com").await;
    let c = person(&srv, "c@example.com").await;
    let key0 = WorkspaceKey::generate();
    let ws = WorkspaceId::new();
    let w = *ws.as_uuid().as_bytes();
    a.client.workspaces().create(&request("Secret Project", Some(genesis(&a, ws, &key0)))).await.expect("create");
    let (entries, m) = replay(&a, ws).await;
    assert_eq!(m.members.len(), 1);
    let head = entries[0].hash();

    // The server's own member routes refuse: it cannot add a member the clients would not accept.
    let plain_add = AddMemberRequest { email: "b@example.com".into(), role: Role::Editor };
    let err = a.client.members(ws).add(&plain_add).await.expect_err("plain add");
    assert_eq!(err.kind(), ErrorKind::NotSupported, "{err}");
    assert!(err.message().contains("end-to-end"), "{err}");

    let add = |who: &Person, seq: u64, prev: [u8; 32], by: &Person| {
        let change =
            Change::Add { member: who.id, email: who.email.clone(), identity: who.identity.to_bytes(), role: EDITOR };
        Entry::sign(&w, seq, prev, change, &by.id, &by.keys)
    };
    let wrapped = |k: &WorkspaceKey, epoch: u32, to: &Person, by: &Person| {
        B64.encode(
            WrappedKeyRecord::make(k, &w, epoch, &to.id, &to.identity, &by.id, &by.keys).expect("wrap").to_bytes(),
        )
    };
    let append = |seq: u64, entries: Vec<&Entry>, keys: Vec<String>| AppendE2eeLog {
        seq,
        entries: entries.iter().map(|e| B64.encode(e.to_bytes())).collect(),
        wrapped_keys: keys,
    };
    let spaces = a.client.workspaces();

    // Refused: an Add without the new member's key; one at a stale position; one whose identity is not
    // the one B stored; one signed by A but sent by B.
    let add_b = add(&b, 1, head, &a);
    assert_eq!(kind(spaces.append_e2ee_log(ws, &append(1, vec![&add_b], vec![])).await), ErrorKind::BadRequest);
    assert_eq!(
        kind(spaces.append_e2ee_log(ws, &append(0, vec![&add_b], vec![wrapped(&key0, 0, &b, &a)])).await),
        ErrorKind::Conflict
    );
    let fake_b = {
        let k = UserKeys::generate();
        Person {
            client: b.client.clone(),
            id: b.id,
            email: b.email.clone(),
            identity: k.identity(&b.id, &b.email),
            keys: k,
        }
    };
    let add_fake = add(&fake_b, 1, head, &a);
    assert_eq!(
        kind(spaces.append_e2ee_log(ws, &append(1, vec![&add_fake], vec![wrapped(&key0, 0, &fake_b, &a)])).await),
        ErrorKind::BadRequest,
        "the server refuses an identity B never stored"
    );
    assert_eq!(kind(b.client.workspaces().e2ee_log(ws, 0).await), ErrorKind::NotFound, "B is no member yet");

    // A adds B with the key: B becomes a member on the server too, and opens the same key.
    let appended = spaces.append_e2ee_log(ws, &append(1, vec![&add_b], vec![wrapped(&key0, 0, &b, &a)])).await;
    assert_eq!(appended.expect("add B").len, 2);
    let listed = b.client.workspaces().list().await.expect("B's workspaces");
    assert!(listed.iter().any(|x| x.id == ws && x.role == Role::Editor), "{listed:?}");
    let (entries, m_b) = replay(&b, ws).await;
    assert_eq!(m_b.members.len(), 2);
    assert_eq!(open_key(&b, ws, 0, &a.identity).await, chunk_key(&key0));

    // An editor may not add anyone (the log's rules, applied by the server as by every client).
    let head = entries[1].hash();
    let by_b = add(&c, 2, head, &b);
    let r = b.client.workspaces().append_e2ee_log(ws, &append(2, vec![&by_b], vec![wrapped(&key0, 0, &c, &b)])).await;
    assert_eq!(kind(r), ErrorKind::BadRequest);
    // Nor send an entry someone else signed (here with a key B wrapped, so only the signer is wrong).
    let by_a = add(&c, 2, head, &a);
    let r = b.client.workspaces().append_e2ee_log(ws, &append(2, vec![&by_a], vec![wrapped(&key0, 0, &c, &b)])).await;
    assert_eq!(kind(r), ErrorKind::BadRequest);
    // A's own add of C, refused for its keys alone: a key with a broken signature, and one to a non-member.
    let add_c = add(&c, 2, head, &a);
    let mut forged = WrappedKeyRecord::from_bytes(&B64.decode(wrapped(&key0, 0, &c, &a)).expect("b64")).expect("rec");
    forged.signature[0] ^= 1;
    let r = spaces.append_e2ee_log(ws, &append(2, vec![&add_c], vec![B64.encode(forged.to_bytes())])).await;
    assert_eq!(kind(r), ErrorKind::BadRequest, "a wrapped key not signed by the sender");
    let d = person(&srv, "d@example.com").await;
    let r = spaces
        .append_e2ee_log(ws, &append(2, vec![&add_c], vec![wrapped(&key0, 0, &c, &a), wrapped(&key0, 0, &d, &a)]))
        .await;
    assert_eq!(kind(r), ErrorKind::BadRequest, "a wrapped key to a non-member");

    // Removing B starts epoch 1, which must be wrapped to every remaining member in the same request.
    let remove = Entry::sign(&w, 2, head, Change::Remove { member: b.id }, &a.id, &a.keys);
    assert_eq!(
        kind(spaces.append_e2ee_log(ws, &append(2, vec![&remove], vec![])).await),
        ErrorKind::BadRequest,
        "a removal without a new key epoch"
    );
    let rekey = Entry::sign(&w, 3, remove.hash(), Change::Rekey { epoch: 1 }, &a.id, &a.keys);
    let key1 = WorkspaceKey::generate();
    assert_eq!(
        kind(spaces.append_e2ee_log(ws, &append(2, vec![&remove, &rekey], vec![])).await),
        ErrorKind::BadRequest,
        "a new epoch without keys"
    );
    assert_eq!(
        kind(spaces.append_e2ee_log(ws, &append(2, vec![&remove, &rekey], vec![wrapped(&key1, 1, &b, &a)])).await),
        ErrorKind::BadRequest,
        "a key for the removed member"
    );
    let done = spaces.append_e2ee_log(ws, &append(2, vec![&remove, &rekey], vec![wrapped(&key1, 1, &a, &a)])).await;
    assert_eq!(done.expect("remove B").len, 4);
    assert!(!b.client.workspaces().list().await.expect("list").iter().any(|x| x.id == ws), "B is gone on the server");
    assert_eq!(kind(b.client.workspaces().e2ee_keys(ws).await), ErrorKind::NotFound);
    let (_, m) = replay(&a, ws).await;
    assert_eq!((m.epoch, m.members.len()), (1, 1));
    assert_eq!(open_key(&a, ws, 1, &a.identity).await, chunk_key(&key1));
    assert_eq!(open_key(&a, ws, 0, &a.identity).await, chunk_key(&key0), "old content stays readable");

    // B can be added again, and gets both epochs' keys anew (the old ones went with the removal).
    let (entries, _) = replay(&a, ws).await;
    let again = add(&b, 4, entries[3].hash(), &a);
    let keys = vec![wrapped(&key0, 0, &b, &a), wrapped(&key1, 1, &b, &a)];
    assert_eq!(spaces.append_e2ee_log(ws, &append(4, vec![&again], keys)).await.expect("add B again").len, 5);
    assert_eq!(open_key(&b, ws, 1, &a.identity).await, chunk_key(&key1));

    // Every change is in the audit log.
    let store = cloudsync_cli::server::open_store(&srv.config, &srv.data_dir()).await.expect("store");
    let events: Vec<String> = store
        .audit_chain(&ws.to_string(), 0, 100)
        .await
        .expect("audit")
        .iter()
        .map(|r| r.row.event.as_str().to_owned())
        .collect();
    for e in ["workspace.created", "member.added", "member.removed", "workspace.key_rotated"] {
        assert!(events.iter().any(|x| x == e), "{e} missing from {events:?}");
    }
    srv.stop().await;
}
