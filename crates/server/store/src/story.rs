//! The store conformance story: one scenario that walks every method of [`Store`](crate::Store) and checks
//! the rules the layers above rely on (uniqueness, last owner, stale bases, trash, journal, audit chain,
//! rate-limit windows). Every backend runs it: SQLite always, PostgreSQL in the interop suite.

use cloudsync_types::{AuditEvent, ChunkId, Outcome, Role, SessionId, UserId, VersionId, WorkspaceId, WsPath};

use crate::{
    AuditKey, ChunkPlace, GLOBAL_CHAIN, MemberAccess, NewAudit, NewChunk, NewCommit, NewVersion, SessionRecord,
    StaleBase, Store, StoreError, UserKeysRecord, UserRecord, WorkspaceRecord, verify_chain,
};

fn audit(event: AuditEvent, actor: Option<UserId>, ws: Option<WorkspaceId>, at_ms: i64) -> NewAudit {
    NewAudit {
        event,
        outcome: Outcome::Success,
        actor,
        workspace: ws,
        ip: Some("127.0.0.1".into()),
        target: None,
        details: serde_json::json!({"story": true}),
        at_ms,
    }
}

fn p(s: &str) -> WsPath {
    WsPath::parse(s).expect("story paths are valid")
}

fn version(by: UserId, size: u64, at: i64) -> NewVersion {
    NewVersion {
        id: VersionId::new(),
        size,
        content_hash: format!("{size:064x}"),
        manifest: vec![1, 2, 3],
        mtime_ms: Some(at),
        created_by: Some(by),
        created_ms: at,
    }
}

fn commit(path: WsPath, base: Option<u64>, version: NewVersion, by: UserId, ws: WorkspaceId) -> NewCommit {
    NewCommit { path, base, version, audit: vec![audit(AuditEvent::FileUpload, Some(by), Some(ws), 36)] }
}

fn user(email: &str) -> UserRecord {
    UserRecord {
        id: UserId::new(),
        email: email.into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA".into(),
        is_admin: false,
        created_ms: 1,
    }
}

/// Runs the whole story against a fresh, empty store. Panics with a message naming the broken rule.
pub async fn story(store: &dyn Store, key: &AuditKey) {
    // Users.
    let alice = user("alice@example.com");
    let bob = user("bob@example.com");
    store.create_user(&alice, &[audit(AuditEvent::UserCreated, None, None, 1)]).await.expect("create alice");
    store.create_user(&bob, &[]).await.expect("create bob");
    let dup = UserRecord { id: UserId::new(), ..alice.clone() };
    assert!(matches!(store.create_user(&dup, &[]).await, Err(StoreError::Conflict(_))), "duplicate email");
    assert_eq!(store.count_users().await.expect("count"), 2);
    assert_eq!(store.user_by_email("alice@example.com").await.expect("by email").expect("alice").id, alice.id);
    assert_eq!(store.user_by_id(bob.id).await.expect("by id").expect("bob").email, "bob@example.com");
    assert!(store.user_by_email("nobody@example.com").await.expect("lookup").is_none());

    // Sessions.
    let s1 = SessionRecord {
        id: SessionId::new(),
        user_id: alice.id,
        token_hash: [1; 32],
        device_name: "laptop".into(),
        created_ms: 10,
        last_seen_ms: 10,
        last_ip: "127.0.0.1".into(),
        mfa: false,
    };
    let s2 = SessionRecord {
        id: SessionId::new(),
        token_hash: [2; 32],
        device_name: "phone".into(),
        mfa: true,
        ..s1.clone()
    };
    store.create_session(&s1, &[audit(AuditEvent::AuthLogin, Some(alice.id), None, 10)]).await.expect("s1");
    store.create_session(&s2, &[]).await.expect("s2");
    assert!(store.session_by_token_hash(&[2; 32]).await.expect("by hash").expect("s2").mfa, "stored as given");
    assert_eq!(store.session_by_token_hash(&[1; 32]).await.expect("by hash").expect("s1").id, s1.id);
    store.touch_session(s1.id, 99, "::1").await.expect("touch");
    let found = store.session_by_token_hash(&[1; 32]).await.expect("by hash").expect("s1");
    assert_eq!((found.last_seen_ms, found.last_ip.as_str()), (99, "::1"));
    assert_eq!(store.list_sessions(alice.id).await.expect("list").len(), 2);
    assert!(!store.delete_session(bob.id, s1.id, &[]).await.expect("other user's"), "cross-user revoke");
    assert!(store.delete_session(alice.id, s2.id, &[]).await.expect("revoke"));
    assert!(store.session_by_token_hash(&[2; 32]).await.expect("lookup").is_none(), "revoked at once");

    // Second factor: enrolment, one use per step, recovery codes, failures, disabling.
    assert!(store.mfa(alice.id).await.expect("mfa").is_none());
    store.mfa_begin(alice.id, b"sealed one", 11).await.expect("begin");
    store.mfa_begin(alice.id, b"sealed two", 12).await.expect("restart while pending");
    let pending = store.mfa(alice.id).await.expect("mfa").expect("pending");
    assert_eq!(
        (pending.sealed_secret.as_slice(), pending.confirmed, pending.last_step),
        (&b"sealed two"[..], false, None)
    );
    let codes = [[1u8; 32], [2; 32], [3; 32]];
    let on = audit(AuditEvent::MfaEnabled, Some(alice.id), None, 13);
    assert!(
        !store.mfa_confirm(alice.id, s1.id, b"sealed one", 100, &codes, &[]).await.expect("old"),
        "not another secret"
    );
    assert!(!store.session_by_token_hash(&[1; 32]).await.expect("s1").expect("s1").mfa);
    assert!(store.mfa_confirm(alice.id, s1.id, b"sealed two", 100, &codes, &[on]).await.expect("confirm"));
    assert!(store.session_by_token_hash(&[1; 32]).await.expect("s1").expect("s1").mfa, "the session proved the code");
    assert!(
        !store.mfa_confirm(alice.id, s1.id, b"sealed two", 101, &codes, &[]).await.expect("twice"),
        "only a pending one"
    );
    assert!(matches!(store.mfa_begin(alice.id, b"x", 14).await, Err(StoreError::Conflict(_))), "on: no restart");
    let m = store.mfa(alice.id).await.expect("mfa").expect("on");
    assert_eq!((m.confirmed, m.last_step, m.recovery_left), (true, Some(100), 3));
    assert!(!store.mfa_accept_step(alice.id, 100).await.expect("same step"), "a step is accepted once");
    assert!(!store.mfa_accept_step(alice.id, 99).await.expect("older step"));
    assert_eq!(store.mfa_failed(alice.id).await.expect("fail"), 1);
    assert_eq!(store.mfa_claim_attempt(alice.id, 3).await.expect("claim"), Some(2));
    assert_eq!(store.mfa_claim_attempt(alice.id, 3).await.expect("claim"), Some(3));
    assert_eq!(store.mfa_claim_attempt(alice.id, 3).await.expect("claim"), None, "no attempt past the limit");
    assert_eq!(store.mfa(alice.id).await.expect("mfa").expect("on").failures, 3);
    assert!(store.mfa_accept_step(alice.id, 101).await.expect("later step"));
    assert_eq!(store.mfa(alice.id).await.expect("mfa").expect("on").failures, 0, "success clears failures");
    assert!(store.mfa_use_recovery(alice.id, &codes[1], 15).await.expect("recovery"));
    assert!(!store.mfa_use_recovery(alice.id, &codes[1], 16).await.expect("again"), "single use");
    assert!(!store.mfa_use_recovery(alice.id, &[9; 32], 16).await.expect("unknown"));
    assert_eq!(store.mfa(alice.id).await.expect("mfa").expect("on").recovery_left, 2);
    store.mfa_replace_recovery(alice.id, &[[4; 32]], &[]).await.expect("replace");
    assert!(!store.mfa_use_recovery(alice.id, &codes[0], 17).await.expect("old code"), "old codes are gone");
    assert_eq!(store.mfa(alice.id).await.expect("mfa").expect("on").recovery_left, 1);
    assert!(
        store.mfa_disable(alice.id, &[audit(AuditEvent::MfaDisabled, Some(alice.id), None, 18)]).await.expect("off")
    );
    assert!(store.mfa(alice.id).await.expect("mfa").is_none());
    assert!(!store.mfa_use_recovery(alice.id, &[4; 32], 19).await.expect("gone"), "codes go with it");
    assert!(!store.mfa_disable(alice.id, &[]).await.expect("off twice"));
    assert_eq!(store.mfa_claim_attempt(alice.id, 3).await.expect("claim"), None, "no MFA, nothing to claim");

    // Workspaces and members.
    let ws = WorkspaceRecord {
        require_mfa: false,
        ip_allowlist: Vec::new(),
        id: WorkspaceId::new(),
        name: "Team".into(),
        e2ee: false,
        created_ms: 20,
        wrapped_data_key: vec![9; 61],
        wrapped_chunk_key: vec![8; 61],
    };
    store
        .create_workspace(&ws, alice.id, &[audit(AuditEvent::WorkspaceCreated, Some(alice.id), Some(ws.id), 20)])
        .await
        .expect("create ws");
    let got = store.workspace(ws.id).await.expect("ws").expect("exists");
    assert_eq!((got.wrapped_data_key, got.wrapped_chunk_key), (vec![9; 61], vec![8; 61]));
    assert_eq!(store.member_role(ws.id, alice.id).await.expect("role"), Some(Role::Owner));
    assert_eq!(store.member_role(ws.id, bob.id).await.expect("role"), None);
    store.add_member(ws.id, bob.id, Role::Viewer, 21, &[]).await.expect("add bob");
    assert!(matches!(store.add_member(ws.id, bob.id, Role::Editor, 22, &[]).await, Err(StoreError::Conflict(_))));
    assert_eq!(store.list_members(ws.id).await.expect("members").len(), 2);
    assert_eq!(store.workspaces_for_user(bob.id).await.expect("mine")[0].1, Role::Viewer);
    assert_eq!(store.set_member_role(ws.id, bob.id, Role::Editor, &[]).await.expect("promote"), Role::Viewer);
    assert!(matches!(store.set_member_role(ws.id, alice.id, Role::Admin, &[]).await, Err(StoreError::LastOwner)));
    assert!(matches!(store.remove_member(ws.id, alice.id, &[]).await, Err(StoreError::LastOwner)));
    assert!(matches!(store.set_member_role(ws.id, UserId::new(), Role::Admin, &[]).await, Err(StoreError::NotFound)));
    store.set_member_role(ws.id, bob.id, Role::Owner, &[]).await.expect("second owner");
    store.set_member_role(ws.id, alice.id, Role::Admin, &[]).await.expect("demote: bob is still owner");
    store.set_member_role(ws.id, alice.id, Role::Owner, &[]).await.expect("re-promote");
    assert_eq!(store.remove_member(ws.id, bob.id, &[]).await.expect("remove"), Role::Owner);
    assert_eq!(store.member_role(ws.id, bob.id).await.expect("role"), None);
    assert_eq!(store.member_access(ws.id, bob.id).await.expect("access"), None);

    // The workspace's MFA policy travels with the member's role (alice turned MFA off above).
    let access = |require_mfa| MemberAccess { role: Role::Owner, require_mfa, has_mfa: false, ip_allowlist: vec![] };
    assert_eq!(store.member_access(ws.id, alice.id).await.expect("access"), Some(access(false)));
    assert!(store.set_require_mfa(ws.id, true, &[]).await.expect("require"));
    assert!(!store.set_require_mfa(ws.id, true, &[]).await.expect("again"), "compare-and-set: already on");
    assert_eq!(store.member_access(ws.id, alice.id).await.expect("access"), Some(access(true)));
    assert!(store.workspace(ws.id).await.expect("ws").expect("exists").require_mfa);
    assert!(store.set_require_mfa(ws.id, false, &[]).await.expect("relax"));
    assert!(!store.set_require_mfa(WorkspaceId::new(), true, &[]).await.expect("none"), "no such workspace");

    // The IP allowlist: compare-and-set, and read with the member's access.
    let nets = vec!["10.0.0.0/8".to_owned(), "2001:db8::/32".to_owned()];
    assert!(store.set_ip_allowlist(ws.id, &[], &nets, &[]).await.expect("set"));
    assert!(
        !store.set_ip_allowlist(ws.id, &[], &["1.2.3.4/32".to_owned()], &[]).await.expect("stale"),
        "changed meanwhile"
    );
    assert_eq!(store.member_access(ws.id, alice.id).await.expect("access").expect("member").ip_allowlist, nets);
    assert_eq!(store.workspace(ws.id).await.expect("ws").expect("exists").ip_allowlist, nets);
    assert_eq!(store.workspaces_named("Team").await.expect("named").len(), 1);
    assert!(store.workspaces_named("Nope").await.expect("named").is_empty());
    assert!(store.set_ip_allowlist(ws.id, &nets, &[], &[]).await.expect("clear"));
    assert!(store.workspace(ws.id).await.expect("ws").expect("exists").ip_allowlist.is_empty());

    // Chunks: recorded in batches, idempotently, with where they are; "missing" is per workspace.
    let (c1, c2) = (ChunkId([1; 32]), ChunkId([2; 32]));
    let packed = |id: ChunkId, pack: u8, offset: u64| NewChunk {
        id,
        size: 10,
        place: ChunkPlace { pack: Some([pack; 16]), offset, stored_size: 39 },
    };
    assert_eq!(store.record_chunks(ws.id, &[packed(c1, 1, 44)]).await.expect("record"), 1);
    assert_eq!(store.record_chunks(ws.id, &[packed(c1, 2, 8)]).await.expect("again"), 0, "idempotent");
    assert_eq!(store.record_chunks(ws.id, &[]).await.expect("nothing"), 0);
    assert_eq!(store.missing_chunks(ws.id, &[c1, c2, c2]).await.expect("missing"), vec![c2]);
    assert_eq!(
        store.locate_chunks(ws.id, &[c2, c1, c1]).await.expect("locate"),
        vec![(c1, packed(c1, 1, 44).place)],
        "the first place recorded stays; unknown ids are left out"
    );
    assert!(store.locate_chunks(WorkspaceId::new(), &[c1]).await.expect("other ws").is_empty());
    // A batch larger than any one statement, with repeats and already recorded ids, in one call.
    let many: Vec<NewChunk> = (0..1200u32)
        .map(|i| NewChunk {
            id: ChunkId(std::array::from_fn(|b| (i >> (8 * (b % 4))) as u8 ^ 0x5a)),
            size: 1,
            place: if i % 2 == 0 {
                ChunkPlace { pack: None, offset: 0, stored_size: 29 }
            } else {
                ChunkPlace { pack: Some([3; 16]), offset: u64::from(i) << 33, stored_size: 29 }
            },
        })
        .collect();
    let mut with_repeats = many.clone();
    with_repeats.extend_from_slice(&many[..10]);
    with_repeats.push(packed(c1, 9, 9));
    assert_eq!(store.record_chunks(ws.id, &with_repeats).await.expect("batch"), 1200, "each new chunk counted once");
    let ids: Vec<ChunkId> = many.iter().map(|c| c.id).collect();
    assert!(store.missing_chunks(ws.id, &ids).await.expect("missing").is_empty(), "the whole batch is recorded");
    assert_eq!(store.missing_chunks(WorkspaceId::new(), &ids[..3]).await.expect("other ws").len(), 3);
    let mut located = store.locate_chunks(ws.id, &ids).await.expect("locate");
    located.sort_by_key(|(id, _)| ids.iter().position(|i| i == id));
    assert_eq!(located, many.iter().map(|c| (c.id, c.place)).collect::<Vec<_>>(), "places round-trip");

    // Garbage collection: condemned chunks count as missing, a new upload lifts the mark (and moves the chunk
    // to its new place), only what is still condemned, and condemned early enough, is deleted.
    let c3 = ChunkId([3; 32]);
    assert_eq!(store.record_chunks(ws.id, &[packed(c2, 4, 8), packed(c3, 4, 60)]).await.expect("record"), 2);
    let rows = store.chunk_rows_page(ws.id, None, 5000).await.expect("rows");
    assert_eq!(rows.len(), 1203, "{} rows", rows.len());
    assert!(rows.windows(2).all(|w| w[0].id.0 < w[1].id.0), "ordered by id");
    let page = store.chunk_rows_page(ws.id, Some(rows[1199].id), 2).await.expect("page");
    assert_eq!(page.iter().map(|r| r.id).collect::<Vec<_>>(), vec![rows[1200].id, rows[1201].id]);
    assert_eq!(store.condemn_chunks(ws.id, &[c2, c3], 0, 1).await.expect("too young"), 0);
    assert_eq!(store.condemn_chunks(ws.id, &[c2, c3], i64::MAX, 1000).await.expect("condemn"), 2);
    assert_eq!(store.condemn_chunks(ws.id, &[c2], i64::MAX, 2000).await.expect("again"), 0, "the first mark stays");
    assert_eq!(store.missing_chunks(ws.id, &[c1, c2, c3]).await.expect("missing"), vec![c2, c3]);
    assert_eq!(store.locate_chunks(ws.id, &[c3]).await.expect("locate").len(), 1, "still readable");
    assert_eq!(store.record_chunks(ws.id, &[packed(c3, 5, 8)]).await.expect("again"), 1, "recorded afresh");
    assert_eq!(store.locate_chunks(ws.id, &[c3]).await.expect("locate"), vec![(c3, packed(c3, 5, 8).place)]);
    assert_eq!(store.delete_condemned(ws.id, &[c2, c3], 1000).await.expect("not before"), vec![]);
    assert_eq!(
        store.delete_condemned(ws.id, &[c2, c3], 1001).await.expect("delete"),
        vec![(c2, packed(c2, 4, 8).place)],
        "c3 was recorded again"
    );
    let mut in_use = store.packs_in_use(ws.id, &[[4; 16], [5; 16], [1; 16]]).await.expect("packs");
    in_use.sort_unstable();
    assert_eq!(in_use, vec![[1; 16], [5; 16]], "pack 4 lost c2 (deleted) and c3 (moved)");
    assert_eq!(store.condemn_chunks(ws.id, &[c1], i64::MAX, 5).await.expect("condemn"), 1);
    assert_eq!(store.spare_chunks(ws.id, &[c1, c3]).await.expect("spare"), 1);
    assert!(store.missing_chunks(ws.id, &[c1, c3]).await.expect("missing").is_empty());
    assert!(store.workspace_ids().await.expect("workspaces").contains(&ws.id));

    // Files: commit, stale base, list, versions.
    let a = p("docs/a.txt");
    let f1 = store.commit_version(ws.id, &a, None, &version(alice.id, 5, 30), &[]).await.expect("v1");
    assert_eq!(f1.version, 1);
    let stale = store.commit_version(ws.id, &a, None, &version(alice.id, 6, 31), &[]).await;
    assert!(matches!(stale, Err(StoreError::StaleBase { current: Some(1) })), "new-file commit over a live file");
    let f2 = store.commit_version(ws.id, &a, Some(1), &version(alice.id, 7, 32), &[]).await.expect("v2");
    assert_eq!((f2.id, f2.version, f2.size), (f1.id, 2, 7));
    let stale = store.commit_version(ws.id, &a, Some(1), &version(alice.id, 8, 33), &[]).await;
    assert!(matches!(stale, Err(StoreError::StaleBase { current: Some(2) })), "stale base refused");
    assert_eq!(store.file_by_path(ws.id, &a).await.expect("get").expect("live").size, 7, "nothing overwritten");
    store.commit_version(ws.id, &p("docs/b.txt"), None, &version(alice.id, 1, 34), &[]).await.expect("b");
    store.commit_version(ws.id, &p("docsx/c.txt"), None, &version(alice.id, 1, 35), &[]).await.expect("c");
    let docs = store.list_files(ws.id, &p("docs"), None, 100).await.expect("list");
    assert_eq!(docs.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["docs/a.txt", "docs/b.txt"]);
    let page = store.list_files(ws.id, &WsPath::root(), Some("docs/a.txt"), 1).await.expect("page");
    assert_eq!(page[0].path.as_str(), "docs/b.txt", "paging by path");
    let versions = store.list_versions(ws.id, f1.id).await.expect("versions");
    assert_eq!(versions.iter().map(|v| v.version).collect::<Vec<_>>(), [2, 1]);
    assert_eq!(versions[0].created_by_email.as_deref(), Some("alice@example.com"));
    assert_eq!(store.version(ws.id, f1.id, 1).await.expect("v").expect("v1").size, 5);
    assert!(store.version(WorkspaceId::new(), f1.id, 1).await.expect("v").is_none(), "scoped by workspace");

    // Batched commits: one transaction, each commit judged on its own, in order.
    let batch = vec![
        commit(p("batch/new.txt"), None, version(alice.id, 11, 36), alice.id, ws.id),
        commit(a.clone(), Some(1), version(alice.id, 12, 36), alice.id, ws.id), // stale: a is at version 2
        commit(a.clone(), Some(2), version(alice.id, 13, 36), alice.id, ws.id),
        commit(a.clone(), Some(3), version(alice.id, 14, 36), alice.id, ws.id), // sees the commit before it
        commit(p("batch/new.txt"), None, version(alice.id, 15, 36), alice.id, ws.id), // exists by now
    ];
    let audit_before = store.audit_chain(&ws.id.to_string(), 0, 100).await.expect("chain").len();
    let results = store.commit_versions(ws.id, &batch).await.expect("batch");
    let summary: Vec<Result<(u64, u64), StaleBase>> =
        results.iter().map(|r| r.as_ref().map(|f| (f.version, f.size)).map_err(|e| *e)).collect();
    assert_eq!(
        summary,
        [
            Ok((1, 11)),
            Err(StaleBase { current: Some(2) }),
            Ok((3, 13)),
            Ok((4, 14)),
            Err(StaleBase { current: Some(1) })
        ],
        "per-commit outcomes"
    );
    assert_eq!(store.file_by_path(ws.id, &a).await.expect("get").expect("live").size, 14);
    let audit_after = store.audit_chain(&ws.id.to_string(), 0, 100).await.expect("chain").len();
    assert_eq!(audit_after - audit_before, 3, "audit rows of refused commits are not written");
    assert!(store.commit_versions(ws.id, &[]).await.expect("empty").is_empty());

    // Batched version lookups: live files only, current or a given version, in request order.
    let lookups = [
        (a.clone(), None),
        (a.clone(), Some(1)),
        (a.clone(), Some(99)),
        (p("nope.txt"), None),
        (p("batch/new.txt"), Some(1)),
        (a.clone(), Some(4)),
    ];
    let found = store.live_versions(ws.id, &lookups).await.expect("lookups");
    let sizes: Vec<Option<(u64, u64)>> = found.iter().map(|v| v.as_ref().map(|v| (v.version, v.size))).collect();
    assert_eq!(sizes, [Some((4, 14)), Some((1, 5)), None, None, Some((1, 11)), Some((4, 14))]);
    assert_eq!(found[0].as_ref().expect("a").file_id, f1.id);
    assert_eq!(found[0].as_ref().expect("a").created_by_email.as_deref(), Some("alice@example.com"));
    let many: Vec<(WsPath, Option<u64>)> =
        (0..700).map(|i| (if i % 2 == 0 { a.clone() } else { p("x") }, None)).collect();
    let found = store.live_versions(ws.id, &many).await.expect("many");
    assert_eq!(found.len(), 700);
    assert!(found.iter().enumerate().all(|(i, v)| v.is_some() == (i % 2 == 0)), "order kept across query batches");
    assert!(store.live_versions(WorkspaceId::new(), &lookups).await.expect("other ws").iter().all(Option::is_none));

    // Trash and restore.
    let gone = store.delete_path(ws.id, &p("docs"), 40, &[]).await.expect("delete folder");
    assert_eq!(gone.len(), 2);
    assert!(store.file_by_path(ws.id, &a).await.expect("get").is_none());
    assert_eq!(store.list_trash(ws.id).await.expect("trash").len(), 2);
    assert_eq!(store.trashed_file(ws.id, &a).await.expect("trashed").expect("a in trash").id, f1.id);
    assert!(store.trashed_file(ws.id, &p("docs/none.txt")).await.expect("trashed").is_none());
    store.commit_version(ws.id, &a, None, &version(alice.id, 9, 41), &[]).await.expect("new file at same path");
    let blocked = store.restore_from_trash(ws.id, &a, None, &[]).await;
    assert!(matches!(blocked, Err(StoreError::Conflict(_))), "restore onto a live path");
    let b = store.restore_from_trash(ws.id, &p("docs/b.txt"), None, &[]).await.expect("restore b");
    assert_eq!(b.deleted_ms, None);
    assert!(matches!(store.restore_from_trash(ws.id, &p("nope"), None, &[]).await, Err(StoreError::NotFound)));
    store.delete_path(ws.id, &a, 42, &[]).await.expect("delete new a");
    // The newest deleted a.txt is the 1-version file; restoring it with its v1 content makes v2.
    let r = store.restore_from_trash(ws.id, &a, Some(version(alice.id, 9, 43)), &[]).await.expect("restore");
    assert_eq!((r.version, r.size), (2, 9));

    // Journal: monotonic, complete.
    let changes = store.changes(ws.id, 0, 1000).await.expect("changes");
    let seqs: Vec<u64> = changes.iter().map(|c| c.seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1) && seqs[0] == 1, "gapless: {seqs:?}");
    assert_eq!(changes.iter().filter(|c| c.deleted).count(), 3);
    let tail = store.changes(ws.id, seqs[seqs.len() - 2], 1000).await.expect("since");
    assert_eq!(tail.len(), 1);

    // Garbage collection reads every version's manifest, trashed files' included, page by page.
    let mut manifests = Vec::new();
    let mut after = 0;
    loop {
        let page = store.manifests_page(ws.id, after, 3).await.expect("manifests");
        let Some((last, _)) = page.last() else { break };
        assert!(page.len() <= 3 && *last > after);
        after = *last;
        manifests.extend(page.into_iter().map(|(_, m)| m));
    }
    let every_version: usize = {
        let mut n = store.list_files(ws.id, &WsPath::root(), None, 1000).await.expect("files").len();
        n += store.list_trash(ws.id).await.expect("trash").len();
        n
    };
    assert!(manifests.len() > every_version, "older versions too: {} manifests", manifests.len());
    assert!(manifests.iter().all(|m| m == &vec![1, 2, 3]));
    assert!(store.manifests_page(WorkspaceId::new(), 0, 10).await.expect("other ws").is_empty());

    // Audit: chained per workspace and globally, verifiable, appended with the action.
    store.append_audit(&[audit(AuditEvent::FileAccess, Some(alice.id), Some(ws.id), 50)]).await.expect("append");
    let global = store.audit_chain(GLOBAL_CHAIN, 0, 100).await.expect("global");
    assert_eq!(
        global.iter().map(|r| r.row.event).collect::<Vec<_>>(),
        [AuditEvent::UserCreated, AuditEvent::AuthLogin, AuditEvent::MfaEnabled, AuditEvent::MfaDisabled],
        "written with the action they describe (and not for refused ones)"
    );
    verify_chain(key, &global).expect("global chain verifies");
    assert_eq!(
        verify_chain(&AuditKey::from_bytes([7; 32]), &global),
        Err(1),
        "without the key a chain cannot be recomputed (nor checked)"
    );
    let chain = store.audit_chain(&ws.id.to_string(), 0, 100).await.expect("ws chain");
    assert_eq!(chain.len(), 5, "workspace created, three batched uploads, one access");
    verify_chain(key, &chain).expect("workspace chain verifies");
    assert_eq!(chain[0].row.details, serde_json::json!({"story": true}));
    let mut tampered = chain.clone();
    tampered[0].row.target = Some("edited".into());
    assert_eq!(verify_chain(key, &tampered), Err(1), "an edited row is detected");
    assert_eq!(verify_chain(key, &chain[1..]), Err(1), "a deleted row is detected");

    // An action that fails writes no audit row.
    let before = store.audit_chain(&ws.id.to_string(), 0, 100).await.expect("chain").len();
    let _ = store
        .commit_version(
            ws.id,
            &a,
            Some(1),
            &version(alice.id, 1, 60),
            &[audit(AuditEvent::FileUpload, None, Some(ws.id), 60)],
        )
        .await
        .expect_err("stale");
    assert_eq!(store.audit_chain(&ws.id.to_string(), 0, 100).await.expect("chain").len(), before, "rolled back");

    // Rate limits: counts per window, cleared on demand.
    assert_eq!(store.rate_limit_hit("login:x", 1000).await.expect("hit"), 1);
    assert_eq!(store.rate_limit_hit("login:x", 1000).await.expect("hit"), 2);
    assert_eq!(store.rate_limit_hit("login:x", 2000).await.expect("new window"), 1);
    store.rate_limit_clear("login:x").await.expect("clear");
    assert_eq!(store.rate_limit_hit("login:x", 2000).await.expect("after clear"), 1);

    // Deleting a workspace destroys its keys and contents; audit rows stay.
    assert!(
        store
            .delete_workspace(ws.id, &[audit(AuditEvent::WorkspaceDeleted, Some(alice.id), None, 70)])
            .await
            .expect("delete")
    );
    assert!(store.workspace(ws.id).await.expect("get").is_none());
    assert!(store.file_by_path(ws.id, &p("docs/b.txt")).await.expect("get").is_none());
    assert_eq!(store.missing_chunks(ws.id, &[c1]).await.expect("missing"), vec![c1]);
    assert!(store.workspaces_for_user(alice.id).await.expect("mine").is_empty());
    assert_eq!(store.audit_chain(&ws.id.to_string(), 0, 100).await.expect("chain").len(), before);
    assert!(!store.delete_workspace(ws.id, &[]).await.expect("again"));

    // End-to-end keys: stored once, resealed only for the same identity.
    assert!(store.user_keys(alice.id).await.expect("keys").is_none());
    let keys = UserKeysRecord {
        identity: vec![1; 128],
        sealed_by_passphrase: vec![2; 90],
        sealed_by_recovery: vec![3; 90],
        created_ms: 80,
        updated_ms: 80,
    };
    store.create_user_keys(alice.id, &keys, &[]).await.expect("create keys");
    assert!(matches!(store.create_user_keys(alice.id, &keys, &[]).await, Err(StoreError::Conflict(_))));
    assert!(!store.reseal_user_keys(alice.id, &[9; 128], &[4; 90], 81, &[]).await.expect("other identity"));
    assert!(store.reseal_user_keys(alice.id, &[1; 128], &[4; 90], 81, &[]).await.expect("reseal"));
    let got = store.user_keys(alice.id).await.expect("keys").expect("some");
    assert_eq!((got.sealed_by_passphrase, got.sealed_by_recovery, got.updated_ms), (vec![4; 90], vec![3; 90], 81));
}
