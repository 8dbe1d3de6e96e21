//! The batch endpoints a sync engine uses, end to end against a real server: commit-batch (per-commit
//! outcomes, one audit row per committed file), manifests, chunk fetch, their caps, and uploads large enough to
//! be made durable in several batches within one request.

mod common;

use bytes::Bytes;
use cloudsync_crypto::{SecretKey, keyed_hash};
use cloudsync_sdk::{Client, ErrorKind};
use cloudsync_testkit::TestServer;
use cloudsync_types::api::{
    AddMemberRequest, CommitRequest, MAX_BATCH_COMMITS, MAX_BATCH_MANIFESTS, MAX_FETCH_CHUNKS, Manifest, ManifestChunk,
    ManifestRef,
};
use cloudsync_types::{AuditEvent, ChunkId, ErrorCode, Role, WorkspaceId, WsPath};

fn p(s: &str) -> WsPath {
    WsPath::parse(s).expect("path")
}

async fn chunk_key(c: &Client, ws: WorkspaceId) -> SecretKey {
    SecretKey::from_hex(&c.workspaces().keys(ws).await.expect("keys").chunk_id_key).expect("chunk key")
}

/// Uploads `content` as one chunk and returns a commit of it at `path` on `base`.
async fn staged_commit(c: &Client, ws: WorkspaceId, path: &str, content: &[u8], base: Option<u64>) -> CommitRequest {
    let key = chunk_key(c, ws).await;
    let id = ChunkId(keyed_hash(&key, content));
    c.files(ws).upload_chunks(vec![(id, Bytes::copy_from_slice(content))]).await.expect("upload");
    CommitRequest {
        path: p(path),
        base_version: base,
        manifest: Manifest {
            size: content.len() as u64,
            content_hash: common::hex(&keyed_hash(&key, content)),
            chunks: vec![ManifestChunk { id, size: content.len() as u32 }],
        },
        mtime_ms: Some(1_700_000_000_000),
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().danger_accept_invalid_certs(true).build().expect("http client")
}

#[tokio::test]
async fn a_commit_batch_judges_each_commit_on_its_own() {
    let srv = TestServer::start().await;
    let a = srv.user("a@example.com").await;
    let ws = common::workspace(&a, "W").await;
    let f = a.files(ws.id);
    common::put_file(&a, ws.id, "old.txt", b"v1", None).await.expect("v1");
    common::put_file(&a, ws.id, "old.txt", b"v2", Some(1)).await.expect("v2");

    let mut batch = vec![
        staged_commit(&a, ws.id, "new/one.txt", b"one", None).await,
        staged_commit(&a, ws.id, "old.txt", b"stale edit", Some(1)).await,
        staged_commit(&a, ws.id, "new/two.txt", b"two", None).await,
    ];
    let mut missing = staged_commit(&a, ws.id, "new/three.txt", b"three", None).await;
    missing.manifest.chunks[0].id = ChunkId([0xee; 32]);
    batch.push(missing);
    batch.push(staged_commit(&a, ws.id, "new/one.txt", b"one, again", Some(1)).await);
    let results = f.commit_batch(&batch).await.expect("batch");

    assert_eq!(
        results.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        batch.iter().map(|c| c.path.as_str()).collect::<Vec<_>>()
    );
    let outcome: Vec<Result<u64, ErrorCode>> = results
        .iter()
        .map(|r| match (&r.entry, &r.error) {
            (Some(e), None) => Ok(e.version),
            (None, Some(err)) => Err(err.code),
            other => panic!("exactly one of entry and error: {other:?}"),
        })
        .collect();
    assert_eq!(outcome, [Ok(1), Err(ErrorCode::Conflict), Ok(1), Err(ErrorCode::MissingChunks), Ok(2)]);
    let stale = results[1].error.as_ref().expect("stale");
    assert!(stale.message.contains("nothing was overwritten"), "{}", stale.message);
    assert!(!stale.request_id.is_empty());
    assert_eq!(common::get_file(&a, ws.id, "old.txt").await.expect("get"), b"v2", "the stale commit overwrote nothing");
    assert_eq!(common::get_file(&a, ws.id, "new/one.txt").await.expect("get"), b"one, again");
    assert_eq!(results[4].entry.as_ref().expect("entry").mtime_ms, Some(1_700_000_000_000));
    let listed = f.list_all(&WsPath::root()).await.expect("list");
    assert_eq!(listed.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), ["new/one.txt", "new/two.txt", "old.txt"]);

    // Audited like single commits: one file.upload per committed file, in the workspace chain.
    let store = cloudsync_cli::server::open_store(&srv.config, &srv.data_dir()).await.expect("store");
    let rows = store.audit_chain(&ws.id.to_string(), 0, 1000).await.expect("audit");
    let uploads: Vec<&str> = rows
        .iter()
        .filter(|r| r.row.event == AuditEvent::FileUpload)
        .map(|r| r.row.target.as_deref().unwrap_or_default())
        .collect();
    assert_eq!(uploads, ["old.txt", "old.txt", "new/one.txt", "new/two.txt", "new/one.txt"]);
    cloudsync_store::verify_chain(&cloudsync_cli::server::audit_key(&srv.config).expect("audit key"), &rows)
        .expect("chain");

    assert!(f.commit_batch(&[]).await.expect("empty").is_empty());
    srv.stop().await;
}

#[tokio::test]
async fn viewers_may_read_in_batches_but_not_commit() {
    let srv = TestServer::start().await;
    let owner = srv.user("owner@example.com").await;
    let viewer = srv.user("viewer@example.com").await;
    let ws = common::workspace(&owner, "W").await;
    owner
        .members(ws.id)
        .add(&AddMemberRequest { email: "viewer@example.com".into(), role: Role::Viewer })
        .await
        .expect("add");
    common::put_file(&owner, ws.id, "a.txt", b"first", None).await.expect("a1");
    common::put_file(&owner, ws.id, "a.txt", b"second", Some(1)).await.expect("a2");
    common::put_file(&owner, ws.id, "b.txt", b"bee", None).await.expect("b");
    common::put_file(&owner, ws.id, "gone.txt", b"soon in the trash", None).await.expect("gone");
    owner.files(ws.id).delete(&p("gone.txt")).await.expect("rm");

    let commit = staged_commit(&owner, ws.id, "c.txt", b"c", None).await;
    let err = viewer.files(ws.id).commit_batch(&[commit]).await.expect_err("viewer commits");
    assert_eq!(err.kind(), ErrorKind::Forbidden, "{err}");

    let asked = [
        ManifestRef { path: p("a.txt"), version: None },
        ManifestRef { path: p("a.txt"), version: Some(1) },
        ManifestRef { path: p("a.txt"), version: Some(7) },
        ManifestRef { path: p("gone.txt"), version: None },
        ManifestRef { path: p("nope.txt"), version: None },
        ManifestRef { path: p("b.txt"), version: None },
    ];
    let got = viewer.files(ws.id).manifests(&asked).await.expect("manifests");
    let summary: Vec<Option<(&str, u64, u64)>> =
        got.iter().map(|m| m.as_ref().map(|m| (m.file.path.as_str(), m.file.version, m.manifest.size))).collect();
    assert_eq!(
        summary,
        [Some(("a.txt", 2, 6)), Some(("a.txt", 1, 5)), None, None, None, Some(("b.txt", 1, 3))],
        "live files only, at the version asked, in order"
    );
    let single = viewer.files(ws.id).manifest(&p("a.txt"), Some(1)).await.expect("single");
    let batched = got[1].as_ref().expect("a v1");
    assert_eq!(serde_json::to_value(batched).expect("json"), serde_json::to_value(&single).expect("json"));
    assert!(viewer.files(ws.id).manifests(&[]).await.expect("empty").is_empty());

    // Fetch: in request order, repeats sent again, each frame the chunk asked for.
    let (a2, b) =
        (got[0].as_ref().expect("a").manifest.chunks[0].id, got[5].as_ref().expect("b").manifest.chunks[0].id);
    let ids = [b, a2, b];
    let mut stream = viewer.files(ws.id).fetch_chunks(&ids).await.expect("fetch");
    let mut fetched = Vec::new();
    while let Some((id, data)) = stream.next().await.expect("frame") {
        fetched.push((id, data));
    }
    let want: Vec<(ChunkId, Bytes)> =
        vec![(b, Bytes::from_static(b"bee")), (a2, Bytes::from_static(b"second")), (b, Bytes::from_static(b"bee"))];
    assert_eq!(fetched, want);
    assert!(viewer.files(ws.id).fetch_chunks(&[]).await.expect("none").next().await.expect("end").is_none());

    // The file.access audit rows of the batch read.
    let store = cloudsync_cli::server::open_store(&srv.config, &srv.data_dir()).await.expect("store");
    let rows = store.audit_chain(&ws.id.to_string(), 0, 1000).await.expect("audit");
    let accessed = rows.iter().filter(|r| r.row.event == AuditEvent::FileAccess).count();
    assert_eq!(accessed, 3 + 1, "three manifests found by the batch, one single read");
    srv.stop().await;
}

#[tokio::test]
async fn fetching_a_chunk_the_workspace_does_not_hold_is_a_404_before_any_frame() {
    let srv = TestServer::start().await;
    let a = srv.user("a@example.com").await;
    let ws = common::workspace(&a, "Mine").await;
    let other = common::workspace(&a, "Other").await;
    common::put_file(&a, ws.id, "f.txt", b"held here", None).await.expect("put");
    common::put_file(&a, other.id, "g.txt", b"held elsewhere", None).await.expect("put");
    let held = a.files(ws.id).manifest(&p("f.txt"), None).await.expect("m").manifest.chunks[0].id;
    let elsewhere = a.files(other.id).manifest(&p("g.txt"), None).await.expect("m").manifest.chunks[0].id;
    let unknown = ChunkId([0x42; 32]);

    let err = a.files(ws.id).fetch_chunks(&[held, elsewhere, unknown, held]).await.expect_err("not held");
    assert_eq!((err.kind(), err.code()), (ErrorKind::NotFound, Some(ErrorCode::NotFound)), "{err}");
    assert!(err.message().starts_with("2 of the 4 requested chunks are not in this workspace"), "{err}");
    assert!(err.message().contains(&elsewhere.to_hex()) && err.message().contains(&unknown.to_hex()), "{err}");

    let too_many = vec![held; MAX_FETCH_CHUNKS + 1];
    let err = a.files(ws.id).fetch_chunks(&too_many).await.expect_err("client-side cap");
    assert_eq!(err.kind(), ErrorKind::TooLarge);
    srv.stop().await;
}

#[tokio::test]
async fn batch_requests_over_their_caps_are_413() {
    let srv = TestServer::start().await;
    let a = srv.user("a@example.com").await;
    let ws = common::workspace(&a, "W").await;
    let token = common::token(&srv, "a@example.com").await;
    let commit = serde_json::json!({"path": "f.txt", "base_version": null,
        "manifest": {"size": 0, "content_hash": "00".repeat(32), "chunks": []}});
    let cases = [
        ("files/commit-batch", serde_json::json!({ "commits": vec![commit; MAX_BATCH_COMMITS + 1] })),
        (
            "files/manifests",
            serde_json::json!({ "files": vec![serde_json::json!({"path": "f.txt"}); MAX_BATCH_MANIFESTS + 1] }),
        ),
        ("chunks/fetch", serde_json::json!({ "ids": vec!["00".repeat(32); MAX_FETCH_CHUNKS + 1] })),
    ];
    for (route, body) in cases {
        let r = http()
            .post(format!("{}/api/v1/workspaces/{}/{route}", srv.url, ws.id))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status().as_u16(), 413, "{route}");
        let e: serde_json::Value = r.json().await.expect("json");
        assert_eq!(e["code"], "payload_too_large", "{route}: {e}");
    }
    assert!(a.files(ws.id).list_all(&WsPath::root()).await.expect("list").is_empty(), "nothing was committed");

    // Exactly at the cap is fine (and the SDK splits longer lists into several requests).
    let at_cap: Vec<CommitRequest> = (0..MAX_BATCH_COMMITS + 5)
        .map(|i| CommitRequest {
            path: p(&format!("empty/{i}.txt")),
            base_version: None,
            manifest: Manifest { size: 0, content_hash: "00".repeat(32), chunks: vec![] },
            mtime_ms: None,
        })
        .collect();
    let results = a.files(ws.id).commit_batch(&at_cap).await.expect("batch at the cap, then a second request");
    assert_eq!(results.len(), MAX_BATCH_COMMITS + 5);
    assert!(results.iter().all(|r| r.entry.is_some()));

    // Commits whose manifests together exceed the server's body limit are split by size too.
    let big = |i: usize| {
        let chunks = vec![ManifestChunk { id: ChunkId([0x77; 32]), size: 1 }; 150_000];
        let manifest = Manifest { size: chunks.len() as u64, content_hash: "00".repeat(32), chunks };
        CommitRequest { path: p(&format!("big/{i}.bin")), base_version: None, manifest, mtime_ms: None }
    };
    let results = a.files(ws.id).commit_batch(&[big(1), big(2), big(3)]).await.expect("split by size");
    let codes: Vec<Option<ErrorCode>> = results.iter().map(|r| r.error.as_ref().map(|e| e.code)).collect();
    assert_eq!(codes, [Some(ErrorCode::MissingChunks); 3], "each reached the server and was judged on its own");
    srv.stop().await;
}

#[tokio::test]
async fn one_upload_request_is_stored_in_several_durable_batches() {
    let srv = TestServer::start().await;
    let a = srv.user("a@example.com").await;
    let ws = common::workspace(&a, "W").await;
    let key = chunk_key(&a, ws.id).await;
    // More chunks than one flush holds, with a repeat, in a single request.
    let n = cloudsync_server_core::FLUSH_CHUNKS + 700;
    let mut frames: Vec<(ChunkId, Bytes)> = (0..n)
        .map(|i| {
            let data = Bytes::from(format!("small file number {i}"));
            (ChunkId(keyed_hash(&key, &data)), data)
        })
        .collect();
    frames.push(frames[3].clone());
    let ids: Vec<ChunkId> = frames.iter().map(|f| f.0).collect();
    let done = a.files(ws.id).upload_chunks(frames.clone()).await.expect("upload");
    assert_eq!((done.stored as usize, done.already_present), (n, 1));
    assert!(a.files(ws.id).missing_chunks(&ids).await.expect("missing").is_empty());
    // And all of them come back in one fetch, read slowly at first: a stream of small frames the client has
    // not consumed yet must not look like a flood to its HTTP/2 stack.
    let mut got = a.files(ws.id).fetch_chunks(&ids).await.expect("fetch");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for (id, data) in &frames {
        assert_eq!(got.next().await.expect("frame"), Some((*id, data.clone())));
    }
    assert!(got.next().await.expect("end").is_none());
    // Small chunks are packed: a few files for all of them, not one each.
    let packs = cloudsync_testkit::all_files(&srv.data_dir().join("chunks"));
    assert!(!packs.is_empty() && packs.len() * 100 < n, "{} files for {n} chunks", packs.len());
    srv.stop().await;
}
