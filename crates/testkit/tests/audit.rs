//! The audit log read through the API: filters, paging, who may read what, and verification that finds an
//! edited, deleted, reordered or truncated row in the real database.

#[allow(dead_code, reason = "helpers shared with other test files")]
mod common;

use cloudsync_sdk::{AuditQuery, Client, ErrorKind};
use cloudsync_testkit::TestServer;
use cloudsync_types::api::{AddMemberRequest, AuditEntry, LoginRequest, UpdateSettings};
use cloudsync_types::{AuditEvent, Role, WorkspaceId};
use common::{get_file, put_file, workspace};
use sqlx::Connection;

async fn all(c: &Client, mut q: AuditQuery) -> Vec<AuditEntry> {
    let mut out = Vec::new();
    loop {
        let page = c.audit().list(&q).await.expect("audit page");
        out.extend(page.entries);
        match page.next_before {
            Some(b) => q.before = Some(b),
            None => return out,
        }
    }
}

async fn db(srv: &TestServer) -> sqlx::SqliteConnection {
    let url = format!("sqlite://{}", srv.data_dir().join("meta.db").display());
    sqlx::SqliteConnection::connect(&url).await.expect("open the server's database")
}

/// Swaps the chain positions of rows `a` and `b`, as someone reordering the log in the database would.
async fn swap_rows(conn: &mut sqlx::SqliteConnection, chain: &str, a: i64, b: i64) {
    for (from, to) in [(b, -b), (a, b), (-b, a)] {
        sqlx::query("UPDATE audit SET seq = ? WHERE chain = ? AND seq = ?")
            .bind(to)
            .bind(chain)
            .bind(from)
            .execute(&mut *conn)
            .await
            .expect("move a row");
    }
}

/// A workspace with some history: uploads, a download, a member added, a setting changed.
async fn history(srv: &TestServer) -> (Client, Client, WorkspaceId) {
    let owner = srv.user("owner@example.org").await;
    let editor = srv.user("editor@example.org").await;
    let ws = workspace(&owner, "Audited").await.id;
    owner
        .members(ws)
        .add(&AddMemberRequest { email: "editor@example.org".into(), role: Role::Editor })
        .await
        .expect("add editor");
    for i in 0..5 {
        put_file(&editor, ws, &format!("doc{i}.txt"), format!("body {i}").as_bytes(), None).await.expect("put");
    }
    get_file(&owner, ws, "doc0.txt").await.expect("get");
    let nets = UpdateSettings { ip_allowlist: Some(vec!["127.0.0.0/8".into()]), ..UpdateSettings::default() };
    owner.workspaces().update_settings(ws, &nets).await.expect("allowlist");
    (owner, editor, ws)
}

#[tokio::test]
async fn workspace_log_filters_pages_and_refuses_editors() {
    let srv = TestServer::start().await;
    let (owner, editor, ws) = history(&srv).await;

    let every = all(&owner, AuditQuery { workspace: Some(ws), limit: Some(2), ..AuditQuery::default() }).await;
    let seqs: Vec<u64> = every.iter().map(|e| e.seq).collect();
    let mut want: Vec<u64> = (1..=seqs.len() as u64).collect();
    want.reverse();
    assert_eq!(seqs, want, "pages of 2 cover every row once, newest first");
    assert!(every.iter().all(|e| e.chain == ws.to_string() && e.workspace_id == Some(ws)));

    let uploads =
        all(&owner, AuditQuery { workspace: Some(ws), events: vec!["file.upload".into()], ..AuditQuery::default() })
            .await;
    assert_eq!(uploads.len(), 5);
    assert!(
        uploads
            .iter()
            .all(|e| e.event == AuditEvent::FileUpload && e.actor_email.as_deref() == Some("editor@example.org"))
    );

    let grouped = all(
        &owner,
        AuditQuery {
            workspace: Some(ws),
            events: vec!["file.*".into(), "member.added".into()],
            ..AuditQuery::default()
        },
    )
    .await;
    assert_eq!(grouped.iter().filter(|e| e.event == AuditEvent::FileAccess).count(), 1);
    assert_eq!(grouped.iter().filter(|e| e.event == AuditEvent::MemberAdded).count(), 1);
    assert_eq!(grouped.len(), 7);

    let by_owner = all(
        &owner,
        AuditQuery { workspace: Some(ws), actor: Some("OWNER@example.org".into()), ..AuditQuery::default() },
    )
    .await;
    assert!(!by_owner.is_empty() && by_owner.iter().all(|e| e.actor_email.as_deref() == Some("owner@example.org")));
    let nobody = all(
        &owner,
        AuditQuery { workspace: Some(ws), actor: Some("ghost@example.org".into()), ..AuditQuery::default() },
    )
    .await;
    assert!(nobody.is_empty());

    // Time range: split the log at the third upload's time.
    let third = uploads[2].at;
    let before = all(&owner, AuditQuery { workspace: Some(ws), end_date: Some(third), ..AuditQuery::default() }).await;
    let after = all(&owner, AuditQuery { workspace: Some(ws), start_date: Some(third), ..AuditQuery::default() }).await;
    assert_eq!(before.len() + after.len(), every.len());
    assert!(before.iter().all(|e| e.at < third) && after.iter().all(|e| e.at >= third));
    let future = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    assert!(
        all(&owner, AuditQuery { workspace: Some(ws), start_date: Some(future), ..AuditQuery::default() })
            .await
            .is_empty()
    );

    let newest = owner
        .audit()
        .list(AuditQuery { workspace: Some(ws), limit: Some(1), ..AuditQuery::default() })
        .await
        .expect("a query by value");
    assert_eq!(newest.entries.len(), 1);
    assert_eq!(newest.next_before, Some(newest.entries[0].seq));

    let bad = owner
        .audit()
        .list(&AuditQuery { workspace: Some(ws), events: vec!["file.nope".into()], ..AuditQuery::default() })
        .await
        .expect_err("unknown event");
    assert_eq!(bad.kind(), ErrorKind::BadRequest);
    assert!(bad.to_string().contains("file.nope"), "{bad}");

    let refused =
        editor.audit().list(&AuditQuery { workspace: Some(ws), ..AuditQuery::default() }).await.expect_err("editor");
    assert_eq!(refused.kind(), ErrorKind::Forbidden);
    assert_eq!(editor.audit().verify(Some(ws)).await.expect_err("editor").kind(), ErrorKind::Forbidden);
    srv.stop().await;
}

#[tokio::test]
async fn account_events_are_ones_own_unless_server_admin() {
    let srv = TestServer::start().await;
    srv.create_user("root@example.org", true).await.expect("admin");
    let admin = srv.login("root@example.org").await.expect("login");
    let alice = srv.user("alice@example.org").await;
    let _bob = srv.user("bob@example.org").await;
    let wrong = srv
        .anonymous()
        .auth()
        .login(&LoginRequest {
            email: "bob@example.org".into(),
            password: "not the password".into(),
            device_name: "guess".into(),
            totp: None,
        })
        .await
        .expect_err("wrong password");
    assert_eq!(wrong.kind(), ErrorKind::Unauthenticated);

    let mine = all(&alice, AuditQuery::default()).await;
    assert!(!mine.is_empty());
    assert!(mine.iter().all(|e| e.actor_email.as_deref() == Some("alice@example.org")), "{mine:?}");
    assert!(
        all(&alice, AuditQuery { actor: Some("bob@example.org".into()), ..AuditQuery::default() }).await.is_empty()
    );

    let failures = all(
        &admin,
        AuditQuery {
            events: vec!["auth.login".into()],
            actor: Some("bob@example.org".into()),
            ..AuditQuery::default()
        },
    )
    .await;
    let failed: Vec<&AuditEntry> = failures.iter().filter(|e| e.outcome == cloudsync_types::Outcome::Failure).collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].details["reason"], "bad_password");
    assert_eq!(failed[0].details["method"], "password");

    assert!(admin.audit().verify(None).await.expect("verify").ok);
    assert_eq!(alice.audit().verify(None).await.expect_err("not admin").kind(), ErrorKind::Forbidden);
    srv.stop().await;
}

#[tokio::test]
async fn verify_finds_edited_deleted_reordered_and_truncated_rows() {
    let srv = TestServer::start().await;
    let (owner, _editor, ws) = history(&srv).await;
    let report = owner.audit().verify(Some(ws)).await.expect("verify");
    assert!(report.ok, "{report:?}");
    let rows = report.rows;
    assert!(rows >= 8, "{rows}");
    let chain = ws.to_string();
    let mut conn = db(&srv).await;

    // An edited row: its hash no longer matches.
    let original: String = sqlx::query_scalar("SELECT target FROM audit WHERE chain = ? AND seq = 4")
        .bind(&chain)
        .fetch_one(&mut conn)
        .await
        .expect("row 4");
    sqlx::query("UPDATE audit SET target = 'innocent.txt' WHERE chain = ? AND seq = 4")
        .bind(&chain)
        .execute(&mut conn)
        .await
        .expect("edit");
    let r = owner.audit().verify(Some(ws)).await.expect("verify");
    let broken = r.first_broken.expect("edit found");
    assert!(!r.ok && broken.seq == 4 && broken.reason.contains("edited"), "{broken:?}");
    assert!(broken.id.is_some());
    sqlx::query("UPDATE audit SET target = ? WHERE chain = ? AND seq = 4")
        .bind(&original)
        .bind(&chain)
        .execute(&mut conn)
        .await
        .expect("undo");
    assert!(owner.audit().verify(Some(ws)).await.expect("verify").ok, "restoring the row restores the chain");

    // Reordered rows: swap the content of rows 2 and 3 by swapping their positions.
    swap_rows(&mut conn, &chain, 2, 3).await;
    let broken = owner.audit().verify(Some(ws)).await.expect("verify").first_broken.expect("reorder found");
    assert_eq!(broken.seq, 2, "{broken:?}");
    swap_rows(&mut conn, &chain, 2, 3).await;
    assert!(owner.audit().verify(Some(ws)).await.expect("verify").ok);

    // A deleted row in the middle.
    sqlx::query("DELETE FROM audit WHERE chain = ? AND seq = 5").bind(&chain).execute(&mut conn).await.expect("delete");
    let broken = owner.audit().verify(Some(ws)).await.expect("verify").first_broken.expect("deletion found");
    assert!(broken.seq == 5 && broken.reason.contains("missing"), "{broken:?}");

    // The newest row deleted: the chain is whole up to it, but its head remembers one more.
    let srv2 = TestServer::start().await;
    let (owner2, _e, ws2) = history(&srv2).await;
    let total = owner2.audit().verify(Some(ws2)).await.expect("verify").rows;
    let mut conn2 = db(&srv2).await;
    sqlx::query("DELETE FROM audit WHERE chain = ? AND seq = ?")
        .bind(ws2.to_string())
        .bind(i64::try_from(total).expect("seq"))
        .execute(&mut conn2)
        .await
        .expect("delete newest");
    let r = owner2.audit().verify(Some(ws2)).await.expect("verify");
    let broken = r.first_broken.expect("truncation found");
    assert!(!r.ok && broken.reason.contains("deleted from the end"), "{broken:?}");
    srv2.stop().await;
    srv.stop().await;
}

#[tokio::test]
async fn verify_names_a_row_whose_columns_hold_impossible_values() {
    let srv = TestServer::start().await;
    let (owner, _editor, ws) = history(&srv).await;
    let chain = ws.to_string();
    let mut conn = db(&srv).await;
    for (sql, seq) in [
        ("UPDATE audit SET outcome = 'maybe' WHERE chain = ? AND seq = 6", 6),
        ("UPDATE audit SET actor = X'00' WHERE chain = ? AND seq = 3", 3),
        ("UPDATE audit SET event = 'file.teleport' WHERE chain = ? AND seq = 2", 2),
    ] {
        sqlx::query(sql).bind(&chain).execute(&mut conn).await.expect("tamper");
        let r = owner.audit().verify(Some(ws)).await.expect("verify answers, not a server error");
        let broken = r.first_broken.expect("found");
        assert!(!r.ok && broken.seq == seq && broken.reason.contains("edited"), "{broken:?}");
    }
    srv.stop().await;
}

#[tokio::test]
async fn verify_is_not_fooled_by_rows_appended_while_it_runs() {
    let srv = TestServer::start().await;
    let (owner, editor, ws) = history(&srv).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                get_file(&editor, ws, "doc1.txt").await.expect("each read appends a row");
                n += 1;
            }
            n
        })
    };
    for _ in 0..40 {
        let r = owner.audit().verify(Some(ws)).await.expect("verify");
        assert!(r.ok, "{r:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let appended = writer.await.expect("writer");
    assert!(appended > 10, "rows were appended during the checks ({appended})");
    srv.stop().await;
}

/// Rewrites a chain from row `from` on (each row's link and hash, and the head) under `key`, as someone who
/// edited row `from` and wants the chain to look whole.
async fn rehash(srv: &TestServer, chain: &str, from: u64, key: &cloudsync_store::AuditKey) {
    let store = cloudsync_cli::server::open_store(&srv.config, &srv.data_dir()).await.expect("store");
    let rows = store.audit_chain(chain, 0, 10_000).await.expect("rows");
    let mut conn = db(srv).await;
    let mut prev = rows[usize::try_from(from).expect("seq") - 2].hash;
    for r in rows.iter().filter(|r| r.seq >= from) {
        let hash = cloudsync_store::audit_row_hash(key, &prev, r.id, &r.chain, r.seq, &r.row);
        sqlx::query("UPDATE audit SET prev_hash = ?, hash = ? WHERE chain = ? AND seq = ?")
            .bind(&prev[..])
            .bind(&hash[..])
            .bind(chain)
            .bind(i64::try_from(r.seq).expect("seq"))
            .execute(&mut conn)
            .await
            .expect("rehash");
        prev = hash;
    }
    sqlx::query("UPDATE audit_heads SET hash = ? WHERE chain = ?")
        .bind(&prev[..])
        .bind(chain)
        .execute(&mut conn)
        .await
        .expect("head");
}

#[tokio::test]
async fn an_edit_rehashed_without_the_master_key_is_still_found() {
    let srv = TestServer::start().await;
    let (owner, _editor, ws) = history(&srv).await;
    let chain = ws.to_string();
    let mut conn = db(&srv).await;
    sqlx::query("UPDATE audit SET target = 'innocent.txt' WHERE chain = ? AND seq = 4")
        .bind(&chain)
        .execute(&mut conn)
        .await
        .expect("edit");
    // The database holds everything but the key: a rewrite under any other key is caught at the edited row.
    rehash(&srv, &chain, 4, &cloudsync_store::AuditKey::from_bytes([0; 32])).await;
    let r = owner.audit().verify(Some(ws)).await.expect("verify");
    assert_eq!(r.first_broken.map(|b| b.seq), Some(4));
    // Only with the master key (kept outside the database) could the rewrite pass: the key is what holds.
    rehash(&srv, &chain, 4, &cloudsync_cli::server::audit_key(&srv.config).expect("key")).await;
    assert!(owner.audit().verify(Some(ws)).await.expect("verify").ok);
    srv.stop().await;
}
