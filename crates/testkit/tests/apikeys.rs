//! API keys over HTTP: a key acts for its owner below its role ceiling, only in its workspaces, never on the
//! account itself; what it does is audited with its id; revocation takes effect on the next request.

#[allow(dead_code, reason = "helpers shared with other test files")]
mod common;

use cloudsync_sdk::{AuditQuery, Client, ErrorKind, Trust};
use cloudsync_testkit::TestServer;
use cloudsync_types::api::{CreateApiKeyRequest, RotateApiKeyRequest};
use cloudsync_types::{Role, WsPath};
use common::{get_file, put_file, workspace};

#[tokio::test]
async fn a_scoped_editor_key_over_http() {
    let srv = TestServer::start().await;
    let owner = srv.user("owner@example.org").await;
    let a = workspace(&owner, "A").await.id;
    let b = workspace(&owner, "B").await.id;
    put_file(&owner, a, "readme.txt", b"hello", None).await.expect("put");

    let created = owner
        .api_keys()
        .create(&CreateApiKeyRequest {
            name: "deploy".into(),
            role: Role::Editor,
            workspaces: Some(vec![a]),
            expires_at: None,
            proof: Default::default(),
        })
        .await
        .expect("create");
    let secret = created.secret.clone();
    assert!(secret.starts_with(&format!("csk_{}_", created.key.id)) && secret.len() == 4 + 16 + 1 + 64, "{secret}");
    let listed = owner.api_keys().list().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert!(!serde_json::to_string(&listed).expect("json").contains(&secret[21..]), "a listing never holds the secret");

    let key = srv.anonymous().with_token(secret.clone());
    let me = key.auth().whoami().await.expect("whoami");
    assert_eq!(me.api_key.as_ref().map(|k| (k.id.as_str(), k.role)), Some((created.key.id.as_str(), Role::Editor)));
    let seen: Vec<_> = key.workspaces().list().await.expect("list").into_iter().map(|w| (w.id, w.role)).collect();
    assert_eq!(seen, vec![(a, Role::Editor)], "only its workspace, at its ceiling");
    assert_eq!(get_file(&key, a, "readme.txt").await.expect("download"), b"hello");
    put_file(&key, a, "from-ci.txt", b"built", None).await.expect("an editor key uploads");
    let del = key.files(a).delete(&WsPath::parse("readme.txt").expect("path")).await.expect_err("deleting needs admin");
    assert_eq!(del.kind(), ErrorKind::Forbidden);
    assert!(del.to_string().contains("API key acts as editor"), "{del}");
    assert_eq!(key.workspaces().get(b).await.expect_err("other workspace").kind(), ErrorKind::NotFound);
    assert_eq!(key.api_keys().list().await.expect_err("keys cannot list keys").kind(), ErrorKind::Forbidden);
    assert_eq!(key.devices().list().await.expect_err("nor devices").kind(), ErrorKind::Forbidden);
    assert_eq!(key.auth().mfa_enroll(None).await.expect_err("nor MFA").kind(), ErrorKind::Forbidden);

    // The upload's audit row names the key; its use is recorded.
    let rows = owner
        .audit()
        .list(&AuditQuery { workspace: Some(a), events: vec!["file.upload".into()], ..AuditQuery::default() })
        .await
        .expect("audit");
    let by_key: Vec<_> = rows.entries.iter().filter(|e| e.target.as_deref() == Some("from-ci.txt")).collect();
    assert_eq!(by_key.len(), 1);
    assert_eq!(by_key[0].details["api_key"], created.key.id.as_str());
    let used = owner
        .audit()
        .list(&AuditQuery { events: vec!["apikey.*".into()], ..AuditQuery::default() })
        .await
        .expect("account audit");
    assert!(used.entries.iter().any(|e| e.event == cloudsync_types::AuditEvent::ApiKeyUsed));
    assert!(used.entries.iter().any(|e| e.event == cloudsync_types::AuditEvent::ApiKeyCreated));
    let after = owner.api_keys().list().await.expect("list");
    assert_eq!(after[0].last_used_ip.as_deref(), Some("127.0.0.1"));

    // Rotation without grace: the old secret stops, the new one works; revocation stops it on the next call.
    let rotated = owner
        .api_keys()
        .rotate(&created.key.id, &RotateApiKeyRequest { grace_seconds: 0, proof: Default::default() })
        .await
        .expect("rotate");
    assert_eq!(key.workspaces().list().await.expect_err("old secret").kind(), ErrorKind::Unauthenticated);
    let key = srv.anonymous().with_token(rotated.secret.clone());
    key.workspaces().list().await.expect("new secret");
    owner.api_keys().revoke(&created.key.id).await.expect("revoke");
    let gone = key.workspaces().list().await.expect_err("revoked");
    assert_eq!(gone.kind(), ErrorKind::Unauthenticated);
    assert!(gone.to_string().contains("invalid or was revoked"), "{gone}");
    assert_eq!(owner.api_keys().revoke(&created.key.id).await.expect_err("twice").kind(), ErrorKind::NotFound);
    srv.stop().await;
}

#[tokio::test]
async fn with_api_key_checks_the_key_and_trusts_system_roots_without_a_pin() {
    let srv = TestServer::start().await;
    let e = Client::with_api_key(&srv.url, "not-a-key").expect_err("not a key");
    assert_eq!(e.kind(), ErrorKind::BadRequest);
    // (This process's environment sets no CLOUDSYNC_SERVER_FINGERPRINT, so the key's client trusts the system roots.)
    let c = Client::with_api_key(&srv.url, &format!("csk_{}_{}", "a".repeat(16), "b".repeat(64))).expect("client");
    let refused = c.health().await.expect_err("a self-signed certificate is not in the system roots");
    assert!(matches!(refused.kind(), ErrorKind::Tls | ErrorKind::CertificateMismatch), "{refused:?}");
    let pinned = Client::new(&srv.url, Trust::Fingerprint(srv.fingerprint)).expect("client");
    pinned.health().await.expect("pinned");
    srv.stop().await;
}

#[tokio::test]
async fn an_expired_key_is_refused_over_http_with_the_reason() {
    let srv = TestServer::start().await;
    let owner = srv.user("owner@example.org").await;
    let soon = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(1500);
    let k = owner
        .api_keys()
        .create(&CreateApiKeyRequest {
            name: "short".into(),
            role: Role::Viewer,
            workspaces: None,
            expires_at: Some(soon),
            proof: Default::default(),
        })
        .await
        .expect("create");
    let key = srv.anonymous().with_token(k.secret);
    key.workspaces().list().await.expect("before its expiry");
    tokio::time::sleep(std::time::Duration::from_millis(1700)).await;
    let e = key.workspaces().list().await.expect_err("after");
    assert_eq!(e.kind(), ErrorKind::Unauthenticated);
    assert!(e.to_string().contains("expired"), "{e}");
    srv.stop().await;
}
