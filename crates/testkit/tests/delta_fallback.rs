//! A server that will not take a delta: the push still lands every byte, by uploading the chunks whole. A
//! forwarding proxy (real TLS on both sides) stands between the client and a real server and, per case,
//! refuses the signature request (an older server without deltas), refuses the delta upload as a whole
//! (HTTP 400, 404, 413 or 501), or answers that no delta rebuilt its chunk. Everything else passes through.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use cloudsync_sdk::{Client, Trust};
use cloudsync_sync::{SyncOptions, SyncReport, sync};
use cloudsync_testkit::{PASSWORD, TestServer, noise};
use cloudsync_types::api::{CreateWorkspaceRequest, LoginRequest};
use cloudsync_types::frame::parse_frame_header;
use cloudsync_types::{ChunkId, WorkspaceId, WsPath};
use serde_json::json;

/// What the proxy does with delta requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Forwards them.
    Pass,
    /// Answers the signature request with this status (no CloudSync error body, as an older server or a
    /// proxy would).
    RefuseSignatures(u16),
    /// Answers the delta upload with this status.
    RefuseDeltas(u16),
    /// Answers the delta upload with every delta listed as failed to rebuild; nothing is stored.
    FailEveryDelta,
}

struct Proxy {
    upstream: String,
    http: reqwest::Client,
    mode: Mutex<Mode>,
    /// Delta uploads that reached the proxy (forwarded or not).
    delta_requests: Mutex<u32>,
}

type Shared = Arc<Proxy>;

async fn start_proxy(upstream: &str) -> (Shared, Client, tokio::sync::oneshot::Sender<()>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let tls = cloudsync_server_http::tls::load_or_create(dir.path(), &[]).expect("tls");
    let proxy = Arc::new(Proxy {
        upstream: upstream.to_owned(),
        // The upstream is the test's own server on 127.0.0.1 with a self-signed certificate.
        http: reqwest::Client::builder().danger_accept_invalid_certs(true).build().expect("http"),
        mode: Mutex::new(Mode::Pass),
        delta_requests: Mutex::new(0),
    });
    let app = Router::new().fallback(forward).with_state(proxy.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(cloudsync_server_http::serve(listener, tls.config, app, async move {
        let _ = stopped.await;
    }));
    let client = Client::new(&url, Trust::Fingerprint(tls.fingerprint)).expect("client");
    (proxy, client, stop, dir)
}

async fn forward(State(p): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path();
    let mode = *p.mode.lock().expect("lock");
    if path.ends_with("/chunks/deltas") {
        *p.delta_requests.lock().expect("lock") += 1;
        match mode {
            Mode::RefuseDeltas(status) => return StatusCode::from_u16(status).expect("status").into_response(),
            Mode::FailEveryDelta => {
                let failed: Vec<String> = frame_ids(&body).iter().map(ToString::to_string).collect();
                assert!(!failed.is_empty(), "a delta upload without deltas");
                return axum::Json(json!({"stored": 0, "already_present": 0, "failed": failed})).into_response();
            }
            Mode::Pass | Mode::RefuseSignatures(_) => {}
        }
    }
    if let (true, Mode::RefuseSignatures(status)) = (path.ends_with("/chunks/signatures"), mode) {
        return StatusCode::from_u16(status).expect("status").into_response();
    }
    let target = format!("{}{}", p.upstream, uri.path_and_query().map_or(path, |q| q.as_str()));
    let mut rb = p.http.request(method, target).body(body);
    for (name, value) in &headers {
        if !matches!(name.as_str(), "host" | "content-length" | "connection" | "transfer-encoding") {
            rb = rb.header(name, value);
        }
    }
    let resp = rb.send().await.expect("upstream");
    let mut out = Response::builder().status(resp.status().as_u16());
    for (name, value) in resp.headers() {
        if !matches!(name.as_str(), "content-length" | "connection" | "transfer-encoding") {
            out = out.header(name, value);
        }
    }
    out.body(Body::from(resp.bytes().await.expect("upstream body"))).expect("response")
}

/// The chunk ids of a framed upload body.
fn frame_ids(mut body: &[u8]) -> Vec<ChunkId> {
    let mut ids = Vec::new();
    while !body.is_empty() {
        let (id, len) = parse_frame_header(body).expect("a whole header").expect("a valid header");
        ids.push(id);
        body = &body[cloudsync_types::frame::FRAME_HEADER_LEN + len..];
    }
    ids
}

fn opts(state: &std::path::Path, server: &str) -> SyncOptions {
    SyncOptions {
        progress: false,
        device_name: "laptop".into(),
        state_dir: state.to_path_buf(),
        server: server.into(),
        dry_run: false,
        e2ee: None,
    }
}

#[tokio::test]
async fn a_refused_delta_falls_back_to_whole_chunks_and_loses_nothing() {
    let srv = TestServer::start().await;
    srv.create_user("a@example.com", false).await.expect("user");
    let direct = srv.login("a@example.com").await.expect("login");
    let (proxy, client, stop, _tls) = start_proxy(&srv.url).await;
    let login = LoginRequest {
        email: "a@example.com".into(),
        password: PASSWORD.into(),
        device_name: "laptop".into(),
        totp: None,
    };
    let token = client.auth().login(&login).await.expect("login through the proxy").token;
    let client = client.with_token(token);
    let ws: WorkspaceId = client
        .workspaces()
        .create(&CreateWorkspaceRequest { name: "Team".into(), e2e_encryption: false, e2ee: None })
        .await
        .expect("ws")
        .id;
    let local = tempfile::tempdir().expect("local");
    let state = tempfile::tempdir().expect("state");
    let o = opts(state.path(), &srv.url);
    let file = local.path().join("doc.bin");
    const SIZE: usize = 48 * 1024;
    let mut data = noise(SIZE, 1);
    std::fs::write(&file, &data).expect("write");
    let root = WsPath::root();
    let sync_now = || sync(&client, ws, &root, local.path(), &o);
    let first: SyncReport = sync_now().await.expect("first sync");
    assert_eq!(first.summary.files_uploaded, 1);

    let cases = [
        Mode::Pass,
        Mode::RefuseSignatures(404),
        Mode::RefuseSignatures(501),
        Mode::RefuseDeltas(400),
        Mode::RefuseDeltas(404),
        Mode::RefuseDeltas(413),
        Mode::RefuseDeltas(501),
        Mode::FailEveryDelta,
    ];
    for (n, mode) in cases.into_iter().enumerate() {
        *proxy.mode.lock().expect("lock") = mode;
        let before = *proxy.delta_requests.lock().expect("lock");
        // A 1 KiB edit inside the file's only chunk: a delta of about 1 KiB where the server takes one.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let at = 4096 + 4096 * n;
        data[at..at + 1024].copy_from_slice(&noise(1024, 100 + n as u64));
        std::fs::write(&file, &data).expect("edit");
        let r = sync_now().await.unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        let s = &r.summary;
        assert_eq!(s.files_uploaded, 1, "{mode:?}: {s:?}");
        let asked = *proxy.delta_requests.lock().expect("lock") - before;
        if mode == Mode::Pass {
            assert_eq!((asked, s.chunks_delta), (1, 1), "{mode:?}: {s:?}");
            assert!(s.bytes_uploaded < 3 * 1024, "{mode:?}: sent {} bytes for a 1 KiB edit", s.bytes_uploaded);
        } else {
            // The proxy was in the path (except where the signatures were refused, so no delta was made).
            let expected_asks = u32::from(!matches!(mode, Mode::RefuseSignatures(_)));
            assert_eq!(asked, expected_asks, "{mode:?}");
            assert_eq!(s.chunks_delta, 0, "{mode:?}: {s:?}");
            assert!(s.bytes_uploaded >= SIZE as u64, "{mode:?}: the whole chunk went: {s:?}");
        }
        // The server holds exactly the new content, read back past the proxy.
        let mut download = direct.files(ws).content(&WsPath::parse("doc.bin").expect("path"), None).await.expect("get");
        let mut got = Vec::new();
        while let Some(part) = download.chunk().await.expect("download") {
            got.extend_from_slice(&part);
        }
        assert!(got == data, "{mode:?}: the server's copy differs from the local file");
    }
    let _ = stop.send(());
    srv.stop().await;
}
