//! Per-workspace IP allowlists against real connections: a client bound to 127.0.0.2 is refused by an
//! allowlist of 127.0.0.1/32 (sessions and API keys alike), X-Forwarded-For counts only from a trusted proxy,
//! a list that would lock its owner out needs --force, and the operator's break-glass clears it.

#[allow(dead_code, reason = "helpers shared with other test files")]
mod common;

use std::net::IpAddr;

use cloudsync_sdk::{AuditQuery, Client, ErrorKind};
use cloudsync_testkit::{PASSWORD, TestServer};
use cloudsync_types::api::{AddMemberRequest, CreateApiKeyRequest, LoginRequest, UpdateSettings};
use cloudsync_types::{AuditEvent, Role};
use common::{get_file, put_file, workspace};

const OTHER: &str = "127.0.0.2";

fn allow(list: &[&str], force: bool) -> UpdateSettings {
    UpdateSettings {
        ip_allowlist: Some(list.iter().map(|s| (*s).to_owned()).collect()),
        force,
        ..UpdateSettings::default()
    }
}

async fn login_from(srv: &TestServer, email: &str, from: IpAddr) -> Client {
    let c = srv.anonymous().bound_to(from).expect("bind");
    let r = c
        .auth()
        .login(&LoginRequest { email: email.into(), password: PASSWORD.into(), device_name: "t".into(), totp: None })
        .await
        .expect("login");
    c.with_token(r.token)
}

#[tokio::test]
async fn an_allowlist_refuses_other_addresses_for_sessions_and_keys() {
    let srv = TestServer::start().await;
    let owner = srv.user("owner@example.org").await;
    srv.create_user("bob@example.org", false).await.expect("bob");
    let ws = workspace(&owner, "Team").await;
    owner
        .members(ws.id)
        .add(&AddMemberRequest { email: "bob@example.org".into(), role: Role::Editor })
        .await
        .expect("add");
    put_file(&owner, ws.id, "plan.txt", b"the plan", None).await.expect("put");
    let other: IpAddr = OTHER.parse().expect("ip");
    let bob_far = login_from(&srv, "bob@example.org", other).await;
    let bob_near = login_from(&srv, "bob@example.org", "127.0.0.1".parse().expect("ip")).await;
    let key = owner
        .api_keys()
        .create(&CreateApiKeyRequest {
            name: "ci".into(),
            role: Role::Viewer,
            workspaces: None,
            expires_at: None,
            proof: Default::default(),
        })
        .await
        .expect("key")
        .secret;
    let key_far = srv.anonymous().bound_to(other).expect("bind").with_token(key.clone());
    let key_near = srv.anonymous().with_token(key);
    assert_eq!(get_file(&bob_far, ws.id, "plan.txt").await.expect("no list yet"), b"the plan");

    // By value, as the SDK's examples write it.
    let w = owner.workspaces().update_settings(ws.id, allow(&["127.0.0.1/32"], false)).await.expect("set");
    assert_eq!(w.ip_allowlist, vec!["127.0.0.1/32"]);

    let refused = get_file(&bob_far, ws.id, "plan.txt").await.expect_err("127.0.0.2 is not on the list");
    assert_eq!(refused.kind(), ErrorKind::Forbidden);
    assert!(refused.to_string().contains("IP allowlist") && refused.to_string().contains(OTHER), "{refused}");
    assert_eq!(
        key_far.files(ws.id).list_all(&cloudsync_types::WsPath::root()).await.expect_err("nor a key from there").kind(),
        ErrorKind::Forbidden
    );
    assert_eq!(get_file(&bob_near, ws.id, "plan.txt").await.expect("from 127.0.0.1"), b"the plan");
    key_near.files(ws.id).list_all(&cloudsync_types::WsPath::root()).await.expect("a key from 127.0.0.1");

    let rows =
        owner.audit().list(&AuditQuery { workspace: Some(ws.id), ..AuditQuery::default() }).await.expect("audit");
    let denied: Vec<_> = rows.entries.iter().filter(|e| e.event == AuditEvent::AccessDenied).collect();
    assert_eq!(denied.len(), 2, "the session and the key, each audited");
    assert!(denied.iter().all(|e| e.ip.as_deref() == Some(OTHER) && e.details["reason"] == "ip_allowlist"));
    let changed = rows.entries.iter().find(|e| e.event == AuditEvent::SettingsChanged).expect("settings.changed");
    assert_eq!(changed.details["old"], serde_json::json!([]));
    assert_eq!(changed.details["new"], serde_json::json!(["127.0.0.1/32"]));

    // Canonical forms: a mapped IPv6 spelling is the IPv4 network; host bits are cleared; duplicates go.
    let w = owner
        .workspaces()
        .update_settings(ws.id, &allow(&["::ffff:127.0.0.1/128", "127.0.0.1", "2001:DB8::1/32"], false))
        .await
        .expect("canonical");
    assert_eq!(w.ip_allowlist, vec!["127.0.0.1/32", "2001:db8::/32"]);
    let bad = owner.workspaces().update_settings(ws.id, &allow(&["10.0.0.0/33"], false)).await.expect_err("bad");
    assert_eq!(bad.kind(), ErrorKind::BadRequest);
    assert!(bad.to_string().contains("10.0.0.0/33"), "{bad}");

    // A list without the owner's own address is refused unless forced, and then locks the owner out.
    let lock = owner.workspaces().update_settings(ws.id, &allow(&["10.0.0.0/8"], false)).await.expect_err("lock-out");
    assert_eq!(lock.kind(), ErrorKind::Conflict);
    assert!(lock.to_string().contains("lock you out") && lock.to_string().contains("--force"), "{lock}");
    owner.workspaces().update_settings(ws.id, &allow(&["10.0.0.0/8"], true)).await.expect("forced");
    assert_eq!(owner.workspaces().get(ws.id).await.expect_err("locked out").kind(), ErrorKind::Forbidden);
    assert!(
        owner.workspaces().list().await.expect("list").iter().any(|w| w.name == "Team"),
        "the workspace still shows in the owner's list"
    );

    // The operator's break-glass on the host.
    let core = cloudsync_cli::server::build_core(&srv.config).await.expect("core");
    let cleared = core.operator_clear_allowlist("Team").await.expect("clear");
    assert!(cleared.ip_allowlist.is_empty());
    owner.workspaces().get(ws.id).await.expect("back in");
    assert!(matches!(core.operator_clear_allowlist("Nope").await, Err(cloudsync_server_core::CoreError::NotFound(_))));
    let rows =
        owner.audit().list(&AuditQuery { workspace: Some(ws.id), ..AuditQuery::default() }).await.expect("audit");
    assert_eq!(rows.entries[0].event, AuditEvent::SettingsChanged);
    assert_eq!(rows.entries[0].details["by"], "operator");
    assert_eq!(rows.entries[0].details["new"], serde_json::json!([]));
    srv.stop().await;
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().danger_accept_invalid_certs(true).build().expect("http client")
}

async fn status(srv: &TestServer, token: &str, ws: &str, forwarded: Option<&str>) -> u16 {
    let mut rb = http().get(format!("{}/api/v1/workspaces/{ws}/files", srv.url)).bearer_auth(token);
    if let Some(f) = forwarded {
        rb = rb.header("x-forwarded-for", f);
    }
    rb.send().await.expect("request").status().as_u16()
}

#[tokio::test]
async fn x_forwarded_for_counts_only_from_a_trusted_proxy() {
    for trusted in [false, true] {
        let srv = TestServer::start_with(|c| {
            if trusted {
                c.server.trusted_proxies = vec!["127.0.0.1".parse().expect("ip")];
            }
        })
        .await;
        let owner = srv.user("owner@example.org").await;
        let ws = workspace(&owner, "Team").await.id.to_string();
        let token = common::token(&srv, "owner@example.org").await;
        let ws_id = ws.parse().expect("id");
        owner.workspaces().update_settings(ws_id, &allow(&["10.1.0.0/16"], true)).await.expect("forced");
        let spoofed = status(&srv, &token, &ws, Some("10.1.2.3")).await;
        let chained = status(&srv, &token, &ws, Some("10.1.2.3, 127.0.0.1")).await;
        let mapped = status(&srv, &token, &ws, Some("::ffff:10.1.2.3")).await;
        let outside = status(&srv, &token, &ws, Some("10.2.0.1")).await;
        let bare = status(&srv, &token, &ws, None).await;
        let with_port = status(&srv, &token, &ws, Some("10.1.2.3:51234")).await;
        let forged_left = status(&srv, &token, &ws, Some("10.1.9.9, 10.2.0.1")).await;
        let garbage = status(&srv, &token, &ws, Some("10.1.2.3, not-an-address")).await;
        if trusted {
            assert_eq!(
                (spoofed, chained, mapped),
                (200, 200, 200),
                "a trusted proxy's X-Forwarded-For names the client"
            );
            assert_eq!(with_port, 200, "address:port as some proxies write it");
            assert_eq!(forged_left, 403, "only the right-most untrusted entry counts, not one the client wrote");
            assert_eq!(garbage, 403, "an unreadable entry stops the walk at the proxy, not at what the client wrote");
        } else {
            assert_eq!((spoofed, chained, mapped), (403, 403, 403), "from anyone else it is ignored");
            assert_eq!((with_port, forged_left, garbage), (403, 403, 403));
        }
        assert_eq!((outside, bare), (403, 403));
        srv.stop().await;
    }
}
