//! Safety on the way down: a crafted server (real TLS, the real API's routes, hostile answers) must never get
//! a sync to write outside the local folder, follow a planted symlink, or leave an unverified file under
//! its final name.

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::routing::{get, post};
use cloudsync_crypto::{SecretKey, keyed_hash};
use cloudsync_sdk::{Client, Trust};
use cloudsync_sync::{SyncError, SyncOptions, sync};
use cloudsync_types::frame::frame_header;
use cloudsync_types::{ChunkId, WorkspaceId, WsPath};
use serde_json::{Value, json};

const KEY: [u8; 32] = [0xab; 32];

/// What the crafted server answers.
#[derive(Clone, Default)]
struct Script {
    /// Raw JSON objects of the file listing (paths are not validated here: that is the point).
    files: Vec<Value>,
    /// Chunk bytes served for each requested id, regardless of the id.
    chunk: Vec<u8>,
}

type Shared = Arc<Mutex<Script>>;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn entry(path: &str, content: &[u8]) -> Value {
    let key = SecretKey::from_bytes(KEY);
    json!({
        "file_id": "01930000-0000-7000-8000-000000000001",
        "path": path,
        "version": 1,
        "version_id": "01930000-0000-7000-8000-000000000002",
        "size": content.len(),
        "content_hash": hex(&keyed_hash(&key, content)),
        "mtime_ms": null,
        "modified_at": "2026-01-01T00:00:00Z",
    })
}

async fn start(script: Shared) -> (Client, tokio::sync::oneshot::Sender<()>, tempfile::TempDir) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("dir");
    let tls = cloudsync_server_http::tls::load_or_create(dir.path(), &[]).expect("tls");
    let ws = "/api/v1/workspaces/{ws}";
    let app = Router::new()
        .route(&format!("{ws}/keys"), get(keys))
        .route(
            &format!("{ws}/changes"),
            get(|| async { axum::Json(json!({"changes": [], "latest": 1, "more": false})) }),
        )
        .route(&format!("{ws}/files"), get(list))
        .route(&format!("{ws}/files/manifests"), post(manifests))
        .route(&format!("{ws}/chunks/fetch"), post(fetch))
        .fallback(|uri: axum::http::Uri| async move {
            // A route the client needs that this crafted server lacks would otherwise be a bare 404.
            eprintln!("the crafted server has no route for {uri}");
            axum::http::StatusCode::NOT_IMPLEMENTED
        })
        .with_state(script);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(cloudsync_server_http::serve(listener, tls.config, app, async move {
        let _ = stopped.await;
    }));
    let client = Client::new(&url, Trust::Fingerprint(tls.fingerprint)).expect("client").with_token("t");
    (client, stop, dir)
}

async fn keys() -> axum::Json<Value> {
    axum::Json(json!({"chunk_id_key": hex(&KEY), "chunk_min": 262_144, "chunk_avg": 1_048_576, "chunk_max": 4_194_304}))
}

async fn list(State(s): State<Shared>) -> axum::Json<Value> {
    let files = s.lock().expect("lock").files.clone();
    axum::Json(json!({"files": files, "next_after": null}))
}

/// One-chunk manifests: the chunk id is the file's keyed hash (true for files below the minimum chunk size).
async fn manifests(State(s): State<Shared>, axum::Json(req): axum::Json<Value>) -> axum::Json<Value> {
    let files = s.lock().expect("lock").files.clone();
    let out: Vec<Value> = req["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|r| {
            let f = files.iter().find(|f| f["path"] == r["path"]).expect("listed");
            json!({"file": f, "manifest": {"size": f["size"], "content_hash": f["content_hash"],
                "chunks": [{"id": f["content_hash"], "size": f["size"]}]}})
        })
        .collect();
    axum::Json(json!({"manifests": out}))
}

async fn fetch(State(s): State<Shared>, axum::Json(req): axum::Json<Value>) -> Body {
    let chunk = s.lock().expect("lock").chunk.clone();
    let mut body = Vec::new();
    for id in req["ids"].as_array().expect("ids") {
        let id = ChunkId::from_hex(id.as_str().expect("hex")).expect("id");
        body.extend_from_slice(&frame_header(&id, chunk.len() as u32));
        body.extend_from_slice(&chunk);
    }
    Body::from(body)
}

fn opts(state: &Path, url: &str) -> SyncOptions {
    SyncOptions {
        progress: false,
        device_name: "victim".into(),
        state_dir: state.to_path_buf(),
        server: url.into(),
        dry_run: false,
        e2ee: None,
    }
}

/// Every path below `dir`, relative.
fn everything(dir: &Path) -> Vec<String> {
    cloudsync_testkit::all_files(dir)
        .into_iter()
        .map(|p| p.strip_prefix(dir).expect("rel").to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn a_hostile_server_cannot_write_outside_the_folder_or_plant_unverified_files() {
    let script: Shared = Arc::default();
    let (client, stop, _tls) = start(script.clone()).await;
    let outer = tempfile::tempdir().expect("outer");
    let local = outer.path().join("synced");
    let outside = outer.path().join("outside");
    std::fs::create_dir_all(&local).expect("mkdir");
    std::fs::create_dir_all(&outside).expect("mkdir");
    let state = tempfile::tempdir().expect("state");
    let ws = WorkspaceId::new();
    let o = opts(state.path(), "https://crafted");

    // 1. Traversal, absolute and backslash names: the listing is refused as a whole; nothing is written.
    for hostile in ["../outside/evil.txt", "/etc/evil.txt", "a/../../outside/evil.txt", "..\\outside\\evil.txt", "a\0b"]
    {
        script.lock().expect("lock").files = vec![entry(hostile, b"evil"), entry("fine.txt", b"fine")];
        script.lock().expect("lock").chunk = b"evil".to_vec();
        let e = sync(&client, ws, &WsPath::root(), &local, &o).await.expect_err(hostile);
        assert!(matches!(e, SyncError::Api(_)), "{hostile}: {e}");
        assert!(everything(&outside).is_empty(), "{hostile}");
        assert!(everything(&local).is_empty(), "{hostile}: {:?}", everything(&local));
    }

    // 2. A planted symlink inside the folder pointing outside is never followed.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&outside, local.join("link")).expect("symlink");
        script.lock().expect("lock").files = vec![entry("link/evil.txt", b"evil"), entry("ok.txt", b"evil")];
        let r = sync(&client, ws, &WsPath::root(), &local, &o).await.expect("sync");
        assert!(everything(&outside).is_empty(), "wrote through the symlink");
        assert!(r.summary.warnings.iter().any(|w| w.contains("symbolic link")), "{:?}", r.summary.warnings);
        assert_eq!(std::fs::read(local.join("ok.txt")).expect("ok"), b"evil");
        std::fs::remove_file(local.join("link")).expect("rm link");
        std::fs::remove_file(local.join("ok.txt")).expect("rm");
        cloudsync_sync::forget(state.path(), &local).expect("forget");
    }

    // 3. Content that does not match the manifest: refused, and no file appears under its name (nor a
    //    temporary file left behind).
    script.lock().expect("lock").files = vec![entry("report.pdf", b"the real report")];
    script.lock().expect("lock").chunk = b"something else!".to_vec();
    let e = sync(&client, ws, &WsPath::root(), &local, &o).await.expect_err("tampered");
    assert!(matches!(e, SyncError::Integrity(_)), "{e}");
    assert!(everything(&local).is_empty(), "{:?}", everything(&local));
    assert!(everything(&outside).is_empty());
    let _ = stop.send(());
}
