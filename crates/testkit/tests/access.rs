//! Access control against a real server: every route walked with every role (the table in
//! `cloudsync_server_http::routes::ROUTES`), non-members, sessions, rate limits, TLS versions, audit rows.

mod common;

use std::sync::Arc;

use cloudsync_sdk::ErrorKind;
use cloudsync_server_http::routes::{Needs, ROUTES};
use cloudsync_store::GLOBAL_CHAIN;
use cloudsync_testkit::{PASSWORD, TestServer, files_containing};
use cloudsync_types::api::{AddMemberRequest, LoginRequest};
use cloudsync_types::{AuditEvent, Outcome, Role, WorkspaceId};

fn http() -> reqwest::Client {
    reqwest::Client::builder().danger_accept_invalid_certs(true).build().expect("http client")
}

/// A plausible body for each route, so a permitted call gets past body parsing.
fn body_for(method: &str, path: &str, viewer_id: &str) -> Option<serde_json::Value> {
    let json = match (method, path.rsplit('/').next().unwrap_or("")) {
        ("POST", "members") => serde_json::json!({"email": "nobody-yet@example.com", "role": "viewer"}),
        ("PUT", "{user}") => serde_json::json!({"role": "editor"}),
        ("POST", "missing") => serde_json::json!({"ids": []}),
        ("POST", "commit") => {
            serde_json::json!({"path": "new.txt", "base_version": null, "manifest": {"size": 0, "content_hash": "00".repeat(32), "chunks": []}})
        }
        ("POST", "commit-batch") => serde_json::json!({"commits": []}),
        ("POST", "manifests") => serde_json::json!({"files": [{"path": "f.txt"}]}),
        ("POST", "fetch") => serde_json::json!({"ids": []}),
        ("POST", "signatures") => serde_json::json!({"bases": []}),
        ("POST", "delete") | ("POST", "restore") => serde_json::json!({"path": "f.txt"}),
        ("POST", "workspaces") => serde_json::json!({"name": format!("w-{viewer_id}")}),
        _ => return None,
    };
    Some(json)
}

/// What a route walk fills a route template with: the workspace, a member the walk may change, a chunk.
struct Walk {
    base: String,
    ws: WorkspaceId,
    member: cloudsync_types::UserId,
    chunk: cloudsync_types::ChunkId,
}

impl Walk {
    /// A request for one route, with `token`, a plausible body (named by `unique`) and the file query.
    fn request(
        &self,
        http: &reqwest::Client,
        method: &str,
        template: &str,
        token: &str,
        unique: &str,
    ) -> reqwest::RequestBuilder {
        let path = template
            .replace("{ws}", &self.ws.to_string())
            .replace("{user}", &self.member.to_string())
            .replace("{id}", &self.ws.to_string())
            .replace("{chunk}", &self.chunk.to_hex());
        let query = if ["/files/manifest", "/files/content", "/files/versions"].iter().any(|s| template.ends_with(s)) {
            "?path=f.txt"
        } else {
            ""
        };
        let mut req =
            http.request(method.parse().expect("method"), format!("{}{path}{query}", self.base)).bearer_auth(token);
        if let Some(b) = body_for(method, template, unique) {
            req = req.json(&b);
        }
        if (template.ends_with("/chunks") || template.ends_with("/chunks/deltas")) && method == "POST" {
            req = req.header("content-type", "application/octet-stream").body(Vec::<u8>::new());
        }
        req
    }
}

#[tokio::test]
async fn every_route_refuses_every_lower_role_and_hides_workspaces_from_non_members() {
    let srv = TestServer::start().await;
    let owner = srv.user("owner@example.com").await;
    for e in [
        "viewer@example.com",
        "editor@example.com",
        "admin@example.com",
        "owner2@example.com",
        "outsider@example.com",
        "target@example.com",
    ] {
        srv.create_user(e, false).await.expect("account");
    }
    let ws = common::workspace(&owner, "Roles").await;
    for (e, r) in [
        ("viewer", Role::Viewer),
        ("editor", Role::Editor),
        ("admin", Role::Admin),
        ("owner2", Role::Owner),
        ("target", Role::Viewer),
    ] {
        owner.members(ws.id).add(&AddMemberRequest { email: format!("{e}@example.com"), role: r }).await.expect("add");
    }
    common::put_file(&owner, ws.id, "f.txt", b"content", None).await.expect("file");
    // Member routes act on a separate member, so the walk never changes the roles it is testing.
    let viewer_id = owner
        .members(ws.id)
        .list()
        .await
        .expect("members")
        .into_iter()
        .find(|m| m.email == "target@example.com")
        .expect("target")
        .user_id;
    let chunk = owner
        .files(ws.id)
        .manifest(&cloudsync_types::WsPath::parse("f.txt").expect("p"), None)
        .await
        .expect("m")
        .manifest
        .chunks[0]
        .id;
    let mut tokens = Vec::new();
    for (e, r) in [("viewer", Role::Viewer), ("editor", Role::Editor), ("admin", Role::Admin), ("owner2", Role::Owner)]
    {
        tokens.push((Some(r), common::token(&srv, &format!("{e}@example.com")).await));
    }
    tokens.push((None, common::token(&srv, "outsider@example.com").await));
    let http = http();
    let walk = Walk { base: srv.url.clone(), ws: ws.id, member: viewer_id, chunk };
    let mut checked = 0;
    for (method, template, needs) in ROUTES {
        let Needs::Role(needed) = needs else { continue };
        if template.ends_with("/{ws}") && *method == "DELETE" {
            continue; // exercised last, below, so the workspace survives the walk
        }
        for (role, tok) in &tokens {
            let req = walk.request(&http, method, template, tok, &viewer_id.to_string());
            let resp = req.send().await.expect("send");
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
            match role {
                None => assert!(
                    status == 404 && body["code"] == "not_found",
                    "{method} {template}: a non-member must get 404, got {status} {body}"
                ),
                Some(r) if r < needed => assert!(
                    status == 403 && body["code"] == "forbidden",
                    "{method} {template} as {r}: want 403, got {status} {body}"
                ),
                Some(r) => assert!(
                    status != 403 && !(status == 404 && body["message"] == "workspace not found"),
                    "{method} {template} as {r}: should be allowed, got {status} {body}"
                ),
            }
            checked += 1;
        }
    }
    let role_routes = ROUTES.iter().filter(|(_, _, n)| matches!(n, Needs::Role(_))).count();
    assert_eq!(checked, (role_routes - 1) * tokens.len(), "every workspace route was walked with every role");
    // Deleting the workspace: Owner only.
    for (role, tok) in &tokens {
        if *role == Some(Role::Owner) {
            continue;
        }
        let r = http
            .delete(format!("{}/api/v1/workspaces/{}", srv.url, ws.id))
            .bearer_auth(tok)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status().as_u16(), if role.is_some() { 403 } else { 404 }, "delete as {role:?}");
    }
    let owner2 = &tokens.iter().find(|(r, _)| *r == Some(Role::Owner)).expect("owner2").1;
    let r =
        http.delete(format!("{}/api/v1/workspaces/{}", srv.url, ws.id)).bearer_auth(owner2).send().await.expect("send");
    assert_eq!(r.status().as_u16(), 204);
    srv.stop().await;
}

#[tokio::test]
async fn unauthenticated_requests_reach_only_public_routes() {
    let srv = TestServer::start().await;
    let http = http();
    let ws = WorkspaceId::new();
    for (method, template, needs) in ROUTES {
        let url = format!(
            "{}{}",
            srv.url,
            template
                .replace("{ws}", &ws.to_string())
                .replace("{user}", &ws.to_string())
                .replace("{id}", &ws.to_string())
                .replace("{chunk}", &"0".repeat(64))
        );
        let r = http.request(method.parse().expect("method"), &url).send().await.expect("send");
        let status = r.status().as_u16();
        match needs {
            Needs::Public => assert_ne!(status, 401, "{method} {template}"),
            _ => assert_eq!(status, 401, "{method} {template} must need a session"),
        }
    }
    let r = http.get(format!("{}/api/v1/workspaces", srv.url)).bearer_auth("made-up-token").send().await.expect("send");
    assert_eq!(r.status().as_u16(), 401);
    srv.stop().await;
}

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_route_table() {
    let srv = TestServer::start().await;
    srv.create_user("a@example.com", false).await.expect("account");
    let tok = common::token(&srv, "a@example.com").await;
    let doc: serde_json::Value = http()
        .get(format!("{}/api/v1/openapi.json", srv.url))
        .bearer_auth(tok)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in ["get", "post", "put", "delete"] {
            if item.get(m).is_some() {
                documented.push((m.to_uppercase(), path.clone()));
            }
        }
    }
    let mut table: Vec<(String, String)> = ROUTES.iter().map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned())).collect();
    documented.sort();
    table.sort();
    assert_eq!(documented, table);
    srv.stop().await;
}

#[tokio::test]
async fn last_owner_stays_and_admins_manage_only_below_admin() {
    let srv = TestServer::start().await;
    let owner = srv.user("owner@example.com").await;
    let admin = srv.user("admin@example.com").await;
    srv.create_user("viewer@example.com", false).await.expect("account");
    let ws = common::workspace(&owner, "W").await;
    owner
        .members(ws.id)
        .add(&AddMemberRequest { email: "admin@example.com".into(), role: Role::Admin })
        .await
        .expect("add admin");
    let me = owner.auth().whoami().await.expect("whoami").user.id;
    let err = owner.members(ws.id).set_role(me, Role::Admin).await.expect_err("last owner demotion");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    let err = owner.members(ws.id).remove(me).await.expect_err("last owner removal");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let err = admin
        .members(ws.id)
        .add(&AddMemberRequest { email: "viewer@example.com".into(), role: Role::Admin })
        .await
        .expect_err("admin makes admin");
    assert_eq!(err.kind(), ErrorKind::Forbidden);
    let err = admin.members(ws.id).remove(me).await.expect_err("admin removes owner");
    assert_eq!(err.kind(), ErrorKind::Forbidden);
    let v = admin
        .members(ws.id)
        .add(&AddMemberRequest { email: "viewer@example.com".into(), role: Role::Viewer })
        .await
        .expect("admin adds viewer");
    admin.members(ws.id).set_role(v.user_id, Role::Editor).await.expect("admin promotes to editor");
    admin.members(ws.id).remove(v.user_id).await.expect("admin removes editor");
    srv.stop().await;
}

#[tokio::test]
async fn sessions_are_per_device_and_revocation_is_immediate() {
    let srv = TestServer::start().await;
    let laptop = srv.user("a@example.com").await;
    let phone = srv.login("a@example.com").await.expect("second device");
    let devices = laptop.devices().list().await.expect("devices");
    assert_eq!(devices.len(), 2);
    assert_eq!(devices.iter().filter(|d| d.current).count(), 1);
    let phone_id = phone.auth().whoami().await.expect("whoami").session_id;
    laptop.devices().revoke(phone_id).await.expect("revoke");
    assert_eq!(phone.auth().whoami().await.expect_err("revoked").kind(), ErrorKind::Unauthenticated);
    laptop.auth().logout().await.expect("logout");
    assert_eq!(laptop.auth().whoami().await.expect_err("logged out").kind(), ErrorKind::Unauthenticated);
    srv.stop().await;
}

#[tokio::test]
async fn failed_logins_are_audited_and_rate_limited_with_retry_after() {
    let srv = TestServer::start_with(|c| c.security.login_attempts_per_account = 3).await;
    srv.create_user("a@example.com", false).await.expect("account");
    let anon = srv.anonymous();
    let attempt = |pw: &'static str| {
        let anon = anon.clone();
        async move {
            anon.auth()
                .login(&LoginRequest {
                    email: "a@example.com".into(),
                    password: pw.into(),
                    device_name: "t".into(),
                    totp: None,
                })
                .await
        }
    };
    for _ in 0..3 {
        let e = attempt("wrong password!").await.expect_err("wrong");
        assert_eq!(e.kind(), ErrorKind::Unauthenticated);
        assert_eq!(e.message(), "wrong email or password");
    }
    let e = attempt(PASSWORD).await.expect_err("limited even with the right password");
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    let wait = e.retry_after().expect("Retry-After").as_secs();
    assert!((1..=900).contains(&wait), "{wait}");
    // An unknown account gets the same answer as a wrong password.
    let e = anon
        .auth()
        .login(&LoginRequest {
            email: "ghost@example.com".into(),
            password: "whatever12".into(),
            device_name: "t".into(),
            totp: None,
        })
        .await
        .expect_err("ghost");
    assert_eq!(e.message(), "wrong email or password");

    let store = cloudsync_cli::server::open_store(&srv.config, &srv.data_dir()).await.expect("store");
    let rows = store.audit_chain(GLOBAL_CHAIN, 0, 100).await.expect("audit");
    let failures: Vec<_> =
        rows.iter().filter(|r| r.row.event == AuditEvent::AuthLogin && r.row.outcome == Outcome::Failure).collect();
    assert_eq!(failures.len(), 5, "3 wrong, 1 limited, 1 unknown");
    assert_eq!(failures[3].row.details["reason"], "rate_limited");
    assert!(
        failures[4].row.target.as_deref().is_some_and(|t| t.starts_with("email-tag:")),
        "unknown emails are not stored"
    );
    cloudsync_store::verify_chain(&cloudsync_cli::server::audit_key(&srv.config).expect("audit key"), &rows)
        .expect("chain verifies");
    srv.stop().await;
}

#[tokio::test]
async fn actions_are_audited_and_no_secret_reaches_the_database() {
    let srv = TestServer::start().await;
    let a = srv.user("a@example.com").await;
    srv.create_user("b@example.com", false).await.expect("b");
    let tok = common::token(&srv, "a@example.com").await;
    let ws = common::workspace(&a, "Audited").await;
    let m = a
        .members(ws.id)
        .add(&AddMemberRequest { email: "b@example.com".into(), role: Role::Viewer })
        .await
        .expect("add");
    a.members(ws.id).set_role(m.user_id, Role::Editor).await.expect("role");
    a.members(ws.id).remove(m.user_id).await.expect("remove");
    common::put_file(&a, ws.id, "f.txt", b"audited content", None).await.expect("put");
    common::get_file(&a, ws.id, "f.txt").await.expect("get");
    let p = cloudsync_types::WsPath::parse("f.txt").expect("p");
    a.files(ws.id).delete(&p).await.expect("rm");
    a.files(ws.id).restore(&cloudsync_types::api::RestoreRequest { path: p, version: None }).await.expect("restore");
    let other = srv.login("a@example.com").await.expect("login");
    let sid = other.auth().whoami().await.expect("whoami").session_id;
    a.devices().revoke(sid).await.expect("revoke");
    a.auth().logout().await.expect("logout");

    let store = cloudsync_cli::server::open_store(&srv.config, &srv.data_dir()).await.expect("store");
    let ws_rows = store.audit_chain(&ws.id.to_string(), 0, 100).await.expect("ws chain");
    let global = store.audit_chain(GLOBAL_CHAIN, 0, 100).await.expect("global chain");
    let events: Vec<AuditEvent> = ws_rows.iter().chain(global.iter()).map(|r| r.row.event).collect();
    for want in [
        AuditEvent::AuthLogin,
        AuditEvent::AuthLogout,
        AuditEvent::FileUpload,
        AuditEvent::FileAccess,
        AuditEvent::FileDelete,
        AuditEvent::FileRestore,
        AuditEvent::MemberAdded,
        AuditEvent::MemberRemoved,
        AuditEvent::PermissionChanged,
        AuditEvent::DeviceRevoked,
    ] {
        assert!(events.contains(&want), "{want} was not audited: {events:?}");
    }
    cloudsync_store::verify_chain(&cloudsync_cli::server::audit_key(&srv.config).expect("audit key"), &ws_rows)
        .expect("workspace chain");
    cloudsync_store::verify_chain(&cloudsync_cli::server::audit_key(&srv.config).expect("audit key"), &global)
        .expect("global chain");
    // Neither the tokens nor the password appear anywhere in the data directory.
    for secret in [tok.as_str(), PASSWORD] {
        let leaks = files_containing(&srv.data_dir(), secret.as_bytes());
        assert!(leaks.is_empty(), "a secret is stored in {leaks:?}");
    }
    srv.stop().await;
}

#[tokio::test]
async fn tls_1_2_clients_are_refused() {
    let srv = TestServer::start().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Trust the server's own certificate, so the only thing that can fail is the protocol version.
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(srv.data_dir().join("tls/cert.pem")).expect("server certificate");
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let tls13 = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("tls12")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let port = srv.url.rsplit(':').next().expect("port").to_owned();
    let handshake = |config: rustls::ClientConfig| {
        let addr = format!("127.0.0.1:{port}");
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await
        }
    };
    let result = handshake(config).await;
    assert!(result.is_err(), "a TLS 1.2 handshake must fail");
    // And TLS 1.3 works, with the same trust.
    assert!(handshake(tls13).await.is_ok(), "a TLS 1.3 handshake with the same roots succeeds");
    assert_eq!(srv.anonymous().health().await.expect("health").status, "ok");
    srv.stop().await;
}

#[tokio::test]
async fn logins_are_also_limited_per_client_address() {
    let srv = TestServer::start_with(|c| c.security.login_attempts_per_ip = 4).await;
    let anon = srv.anonymous();
    let mut statuses = Vec::new();
    for i in 0..6 {
        let req = LoginRequest {
            email: format!("user{i}@example.com"),
            password: "not the password".into(),
            device_name: "t".into(),
            totp: None,
        };
        statuses.push(anon.auth().login(&req).await.expect_err("no such accounts").kind());
    }
    assert_eq!(statuses[..4], [ErrorKind::Unauthenticated; 4], "distinct accounts, same address");
    assert_eq!(statuses[4..], [ErrorKind::RateLimited; 2], "the address is throttled after its burst");
    srv.stop().await;
}

/// Every route walked with an API key of each role ceiling (made by a workspace Owner): a workspace route
/// needs the ceiling, and the account's own security (keys, devices, MFA changes, account events) is never
/// reachable through a key.
#[tokio::test]
async fn every_route_holds_api_keys_to_their_ceiling_and_away_from_the_account() {
    let srv = TestServer::start().await;
    let owner = srv.user("owner@example.com").await;
    srv.create_user("target@example.com", false).await.expect("account");
    let ws = common::workspace(&owner, "Keys").await;
    owner
        .members(ws.id)
        .add(&AddMemberRequest { email: "target@example.com".into(), role: Role::Viewer })
        .await
        .expect("add");
    common::put_file(&owner, ws.id, "f.txt", b"content", None).await.expect("file");
    let target = owner
        .members(ws.id)
        .list()
        .await
        .expect("members")
        .into_iter()
        .find(|m| m.email.starts_with("target"))
        .expect("t")
        .user_id;
    let chunk = owner
        .files(ws.id)
        .manifest(&cloudsync_types::WsPath::parse("f.txt").expect("p"), None)
        .await
        .expect("m")
        .manifest
        .chunks[0]
        .id;
    let mut keys = Vec::new();
    for role in [Role::Viewer, Role::Editor, Role::Admin] {
        let k = owner
            .api_keys()
            .create(&cloudsync_types::api::CreateApiKeyRequest {
                name: format!("{role}"),
                role,
                workspaces: None,
                expires_at: None,
                proof: Default::default(),
            })
            .await
            .expect("key");
        keys.push((role, k.secret));
    }
    let http = http();
    let walk = Walk { base: srv.url.clone(), ws: ws.id, member: target, chunk };
    let mut walked = 0;
    for (method, template, needs) in ROUTES {
        if template.ends_with("/{ws}") && *method == "DELETE" {
            continue;
        }
        for (ceiling, key) in &keys {
            let req = walk.request(&http, method, template, key, &format!("{ceiling}-{walked}"));
            let resp = req.send().await.expect("send");
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
            let refused = match needs {
                Needs::Role(needed) => *ceiling < *needed,
                Needs::ServerAdmin | Needs::AccountSession => true,
                Needs::Session if *template == "/api/v1/workspaces" && *method == "POST" => *ceiling < Role::Admin,
                Needs::Session | Needs::Public => false,
            };
            if refused {
                assert_eq!(status, 403, "{method} {template} with a {ceiling} key: want 403, got {status} {body}");
            } else {
                assert!(
                    status != 403 && status != 401 && !(status == 404 && body["message"] == "workspace not found"),
                    "{method} {template} with a {ceiling} key should be allowed, got {status} {body}"
                );
            }
        }
        walked += 1;
    }
    assert_eq!(walked, ROUTES.len() - 1);
    srv.stop().await;
}
