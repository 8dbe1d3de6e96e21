//! Files end to end through the SDK against a real server: encryption at rest, commits and conflicts,
//! versions, trash, restore, the change journal, input validation and workspace deletion.

mod common;

use cloudsync_sdk::ErrorKind;
use cloudsync_testkit::{TestServer, files_containing};
use cloudsync_types::api::{ChangeKind, CreateWorkspaceRequest, RestoreRequest};
use cloudsync_types::{ChunkId, ErrorCode, WsPath};
use common::{get_file, put_file};

#[tokio::test]
async fn file_contents_are_encrypted_at_rest_and_round_trip() {
    let srv = TestServer::start().await;
    let alice = srv.user("alice@example.com").await;
    let ws = common::workspace(&alice, "Team").await;
    let marker = format!("MARKER-{}", cloudsync_crypto::random_token());
    let content = format!("{marker} {}", "x".repeat(5000)).into_bytes();
    put_file(&alice, ws.id, "secret/plan.txt", &content, None).await.expect("put");
    assert_eq!(get_file(&alice, ws.id, "secret/plan.txt").await.expect("get"), content);
    let leaks = files_containing(&srv.data_dir(), marker.as_bytes());
    assert!(leaks.is_empty(), "the marker is readable in {leaks:?}");
    srv.stop().await;
}

#[tokio::test]
async fn stale_base_is_a_conflict_and_overwrites_nothing() {
    let srv = TestServer::start().await;
    let a = srv.user("a@example.com").await;
    let ws = common::workspace(&a, "W").await;
    let v1 = put_file(&a, ws.id, "f.txt", b"one", None).await.expect("v1");
    let v2 = put_file(&a, ws.id, "f.txt", b"two", Some(v1.version)).await.expect("v2");
    assert_eq!(v2.version, 2);
    let err = put_file(&a, ws.id, "f.txt", b"stale", Some(v1.version)).await.expect_err("stale");
    assert_eq!((err.kind(), err.code()), (ErrorKind::Conflict, Some(ErrorCode::Conflict)), "{err}");
    let err = put_file(&a, ws.id, "f.txt", b"new-over-existing", None).await.expect_err("no base");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(get_file(&a, ws.id, "f.txt").await.expect("get"), b"two");
    srv.stop().await;
}

#[tokio::test]
async fn commits_need_their_chunks_and_chunks_must_match_their_ids() {
    let srv = TestServer::start().await;
    let a = srv.user("a@example.com").await;
    let ws = common::workspace(&a, "W").await;
    let fake = ChunkId([7; 32]);
    let err = a
        .files(ws.id)
        .upload_chunks(vec![(fake, bytes::Bytes::from_static(b"not this content"))])
        .await
        .expect_err("mismatch");
    assert_eq!(err.kind(), ErrorKind::BadRequest, "{err}");
    let req = cloudsync_types::api::CommitRequest {
        path: WsPath::parse("x.bin").expect("p"),
        base_version: None,
        manifest: cloudsync_types::api::Manifest {
            size: 16,
            content_hash: "00".repeat(32),
            chunks: vec![cloudsync_types::api::ManifestChunk { id: fake, size: 16 }],
        },
        mtime_ms: None,
    };
    let err = a.files(ws.id).commit(&req).await.expect_err("missing chunk");
    assert_eq!(err.code(), Some(ErrorCode::MissingChunks), "{err}");
    assert!(a.files(ws.id).list_all(&WsPath::root()).await.expect("list").is_empty(), "nothing became visible");
    srv.stop().await;
}

#[tokio::test]
async fn hostile_paths_get_a_clear_400() {
    let srv = TestServer::start().await;
    let a = srv.user("a@example.com").await;
    let ws = common::workspace(&a, "W").await;
    let http = reqwest::Client::builder().danger_accept_invalid_certs(true).build().expect("http");
    let token = common::token(&srv, "a@example.com").await;
    for bad in ["../etc/passwd", "/abs", "a\u{0}b", "a//b"] {
        let body = serde_json::json!({"path": bad, "base_version": null, "manifest": {"size": 0, "content_hash": "00".repeat(32), "chunks": []}});
        let r = http
            .post(format!("{}/api/v1/workspaces/{}/files/commit", srv.url, ws.id))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status().as_u16(), 400, "{bad:?}");
        let e: serde_json::Value = r.json().await.expect("json");
        assert!(e["message"].as_str().expect("message").contains("path"), "{bad:?}: {e}");
        assert!(e["request_id"].as_str().is_some_and(|s| s.len() > 10));
    }
    let err = a.files(ws.id).versions(&WsPath::parse("nope.txt").expect("p")).await.expect_err("404");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    srv.stop().await;
}

#[tokio::test]
async fn versions_trash_restore_and_the_change_journal() {
    let srv = TestServer::start().await;
    let a = srv.user("a@example.com").await;
    let ws = common::workspace(&a, "W").await;
    let f = a.files(ws.id);
    let p = WsPath::parse("docs/report.txt").expect("p");
    put_file(&a, ws.id, "docs/report.txt", b"draft", None).await.expect("v1");
    put_file(&a, ws.id, "docs/report.txt", b"final", Some(1)).await.expect("v2");
    let versions = f.versions(&p).await.expect("versions");
    assert_eq!(versions.iter().map(|v| (v.version, v.current)).collect::<Vec<_>>(), [(2, true), (1, false)]);
    // Restore the previous version: becomes version 3 with v1's content.
    let r = f.restore(&RestoreRequest { path: p.clone(), version: None }).await.expect("restore v1");
    assert_eq!(r.version, 3);
    assert_eq!(get_file(&a, ws.id, "docs/report.txt").await.expect("get"), b"draft");
    // Delete the folder: to the trash, not gone.
    assert_eq!(f.delete(&WsPath::parse("docs").expect("p")).await.expect("rm").deleted, 1);
    assert!(f.list_all(&WsPath::root()).await.expect("ls").is_empty());
    let trash = f.trash().await.expect("trash");
    assert_eq!(trash.len(), 1);
    assert_eq!(trash[0].path, p);
    let back = f.restore(&RestoreRequest { path: p.clone(), version: Some(2) }).await.expect("restore from trash");
    assert_eq!(back.version, 4);
    assert_eq!(get_file(&a, ws.id, "docs/report.txt").await.expect("get"), b"final");
    assert!(f.trash().await.expect("trash").is_empty());
    // The journal saw every step, in order.
    let changes = f.changes(0, 100).await.expect("changes");
    let kinds: Vec<_> = changes.changes.iter().map(|c| (c.seq, c.kind, c.version)).collect();
    assert_eq!(
        kinds,
        [
            (1, ChangeKind::Upsert, 1),
            (2, ChangeKind::Upsert, 2),
            (3, ChangeKind::Upsert, 3),
            (4, ChangeKind::Delete, 3),
            (5, ChangeKind::Upsert, 4)
        ]
    );
    assert_eq!(changes.latest, 5);
    assert!(f.changes(5, 100).await.expect("none").changes.is_empty());
    srv.stop().await;
}

#[tokio::test]
async fn deleting_a_workspace_destroys_its_key_and_chunks() {
    let srv = TestServer::start().await;
    let a = srv.user("a@example.com").await;
    let ws = common::workspace(&a, "Doomed").await;
    put_file(&a, ws.id, "a.txt", b"soon unreadable content", None).await.expect("put");
    let chunk_dir = srv.data_dir().join("chunks").join("ws").join(ws.id.to_string());
    assert!(chunk_dir.exists(), "chunks stored under the workspace");
    let db = srv.data_dir().join("meta.db");
    a.workspaces().delete(ws.id).await.expect("delete");
    assert!(!chunk_dir.exists(), "chunks removed");
    let store = cloudsync_cli::server::open_store(&srv.config, &srv.data_dir()).await.expect("store");
    assert!(store.workspace(ws.id).await.expect("lookup").is_none(), "wrapped keys are gone with the workspace");
    assert!(db.exists());
    let err = a.workspaces().get(ws.id).await.expect_err("gone");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    srv.stop().await;
}

#[tokio::test]
async fn an_e2ee_workspace_is_not_made_on_the_server_alone() {
    let srv = TestServer::start().await;
    let a = srv.user("a@example.com").await;
    let err = a
        .workspaces()
        .create(&CreateWorkspaceRequest { name: "Secret Project".into(), e2e_encryption: true, e2ee: None })
        .await
        .expect_err("e2ee");
    assert_eq!(err.kind(), ErrorKind::BadRequest);
    assert!(err.message().contains("--e2e-encryption"), "{err}");
    srv.stop().await;
}
