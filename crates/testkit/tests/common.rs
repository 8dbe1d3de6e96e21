//! Helpers shared by the integration tests: commit a file through the SDK the way a client does.

use bytes::Bytes;
use cloudsync_crypto::{SecretKey, keyed_hash};
use cloudsync_sdk::Client;
use cloudsync_types::api::{CommitRequest, FileEntry, Manifest, ManifestChunk};
use cloudsync_types::{ChunkId, WorkspaceId, WsPath};

/// Uploads `content` as one chunk (or none when empty) and commits it at `path`.
pub async fn put_file(
    c: &Client,
    ws: WorkspaceId,
    path: &str,
    content: &[u8],
    base: Option<u64>,
) -> Result<FileEntry, cloudsync_sdk::Error> {
    let keys = c.workspaces().keys(ws).await?;
    let key = SecretKey::from_hex(&keys.chunk_id_key).expect("chunk key");
    let mut chunks = Vec::new();
    if !content.is_empty() {
        let id = ChunkId(keyed_hash(&key, content));
        let missing = c.files(ws).missing_chunks(&[id]).await?;
        if !missing.is_empty() {
            c.files(ws).upload_chunks(vec![(id, Bytes::copy_from_slice(content))]).await?;
        }
        chunks.push(ManifestChunk { id, size: content.len() as u32 });
    }
    let manifest = Manifest { size: content.len() as u64, content_hash: hex(&keyed_hash(&key, content)), chunks };
    c.files(ws)
        .commit(&CommitRequest {
            path: WsPath::parse(path).expect("path"),
            base_version: base,
            manifest,
            mtime_ms: None,
        })
        .await
}

/// Downloads the current content of `path`.
pub async fn get_file(c: &Client, ws: WorkspaceId, path: &str) -> Result<Vec<u8>, cloudsync_sdk::Error> {
    let mut d = c.files(ws).content(&WsPath::parse(path).expect("path"), None).await?;
    let mut out = Vec::new();
    while let Some(b) = d.chunk().await? {
        out.extend_from_slice(&b);
    }
    Ok(out)
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Logs in with the test password and returns the raw bearer token (for requests made without the SDK).
pub async fn token(srv: &cloudsync_testkit::TestServer, email: &str) -> String {
    srv.anonymous()
        .auth()
        .login(&cloudsync_types::api::LoginRequest {
            email: email.into(),
            password: cloudsync_testkit::PASSWORD.into(),
            device_name: "raw".into(),
            totp: None,
        })
        .await
        .expect("login")
        .token
}

/// Creates a workspace (at-rest encryption only) owned by the client's account.
pub async fn workspace(c: &Client, name: &str) -> cloudsync_types::api::Workspace {
    c.workspaces()
        .create(&cloudsync_types::api::CreateWorkspaceRequest { name: name.into(), e2e_encryption: false, e2ee: None })
        .await
        .expect("create workspace")
}
