//! Share links over real HTTP, as a downloader without an account sees them: the file, the password form,
//! the same 404 for every dead link, download limits, rate limits before password checks, the workspace's IP
//! allowlist, and the audit trail.

#[allow(dead_code, reason = "helpers shared with other test files")]
mod common;

use cloudsync_sdk::{AuditQuery, ErrorKind};
use cloudsync_testkit::TestServer;
use cloudsync_types::api::{AddMemberRequest, CreateShareRequest, UpdateSettings};
use cloudsync_types::{AuditEvent, Role, WsPath};
use common::{put_file, workspace};

fn http() -> reqwest::Client {
    reqwest::Client::builder().danger_accept_invalid_certs(true).build().expect("http client")
}

fn share(path: &str) -> CreateShareRequest {
    CreateShareRequest {
        path: WsPath::parse(path).expect("path"),
        password: None,
        expires_at: None,
        max_downloads: None,
    }
}

#[tokio::test]
async fn links_download_count_expire_on_revocation_and_are_audited() {
    let srv = TestServer::start().await;
    let owner = srv.user("owner@example.org").await;
    let ws = workspace(&owner, "Team").await.id;
    put_file(&owner, ws, "docs/report v2.pdf", b"%PDF the report", None).await.expect("put");
    let link = owner
        .shares(ws)
        .create(&CreateShareRequest { max_downloads: Some(2), ..share("docs/report v2.pdf") })
        .await
        .expect("share");
    let url = owner.share_url(&link);
    assert!(url.starts_with(&srv.url) && url.contains("/s/") && link.token.len() >= 22, "{url}");

    let r = http().get(&url).send().await.expect("get");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()[reqwest::header::CONTENT_DISPOSITION].to_str().expect("header"),
        "attachment; filename=\"report_v2.pdf\"; filename*=UTF-8''report%20v2.pdf"
    );
    assert_eq!(r.bytes().await.expect("body").as_ref(), b"%PDF the report");
    // The link serves the file's current version.
    put_file(&owner, ws, "docs/report v2.pdf", b"%PDF revised", Some(1)).await.expect("update");
    assert_eq!(http().get(&url).send().await.expect("get").bytes().await.expect("body").as_ref(), b"%PDF revised");

    // Used up, unknown, revoked: one answer for all.
    let used_up = http().get(&url).send().await.expect("get");
    let used_status = used_up.status().as_u16();
    let used_body: serde_json::Value = used_up.json().await.expect("json");
    let unknown = http().get(format!("{}/s/{}", srv.url, "A".repeat(43))).send().await.expect("get");
    let unknown_status = unknown.status().as_u16();
    let unknown_body: serde_json::Value = unknown.json().await.expect("json");
    let second = owner.shares(ws).create(&share("docs/report v2.pdf")).await.expect("share");
    owner.shares(ws).revoke(second.link.id).await.expect("revoke");
    let revoked = http().get(owner.share_url(&second)).send().await.expect("get");
    let revoked_status = revoked.status().as_u16();
    let revoked_body: serde_json::Value = revoked.json().await.expect("json");
    assert_eq!((used_status, unknown_status, revoked_status), (404, 404, 404));
    assert_eq!(used_body["message"], unknown_body["message"]);
    assert_eq!(used_body["message"], revoked_body["message"]);

    let listed = owner.shares(ws).list().await.expect("list");
    assert!(listed.is_empty(), "used-up and revoked links leave the list: {listed:?}");
    let third = owner
        .shares(ws)
        .create(&CreateShareRequest { max_downloads: Some(3), ..share("docs/report v2.pdf") })
        .await
        .expect("share");
    http().get(owner.share_url(&third)).send().await.expect("get");
    let listed = owner.shares(ws).list().await.expect("list");
    assert_eq!((listed.len(), listed[0].downloads, listed[0].max_downloads), (1, 1, Some(3)));
    let rows = owner
        .audit()
        .list(&AuditQuery { workspace: Some(ws), events: vec!["share.*".into()], ..AuditQuery::default() })
        .await
        .expect("audit");
    let count = |e: AuditEvent, ok: bool| {
        rows.entries.iter().filter(|r| r.event == e && (r.outcome == cloudsync_types::Outcome::Success) == ok).count()
    };
    assert_eq!(count(AuditEvent::ShareCreated, true), 3);
    assert_eq!(count(AuditEvent::ShareAccessed, true), 3);
    assert_eq!(count(AuditEvent::ShareAccessed, false), 2, "the used-up and the revoked attempt");
    assert_eq!(count(AuditEvent::ShareRevoked, true), 1);
    srv.stop().await;
}

#[tokio::test]
async fn a_password_link_asks_and_a_brute_force_gets_429() {
    let srv = TestServer::start().await;
    let owner = srv.user("owner@example.org").await;
    let ws = workspace(&owner, "Team").await.id;
    put_file(&owner, ws, "secret.txt", b"classified", None).await.expect("put");
    let short =
        owner.shares(ws).create(&CreateShareRequest { password: Some("short".into()), ..share("secret.txt") }).await;
    assert_eq!(short.expect_err("short password").kind(), ErrorKind::BadRequest);
    let link = owner
        .shares(ws)
        .create(&CreateShareRequest { password: Some("open sesame!".into()), ..share("secret.txt") })
        .await
        .expect("share");
    let url = owner.share_url(&link);
    assert!(owner.shares(ws).list().await.expect("list")[0].has_password);

    let bare = http().get(&url).send().await.expect("get");
    assert_eq!(bare.status().as_u16(), 401);
    let page = http().get(&url).header("accept", "text/html").send().await.expect("get");
    assert_eq!(page.status().as_u16(), 401);
    assert!(page.text().await.expect("html").contains("<form method=\"post\">"));
    let right = http().post(&url).form(&[("password", "open sesame!")]).send().await.expect("post");
    assert_eq!(right.status().as_u16(), 200);
    assert_eq!(right.bytes().await.expect("body").as_ref(), b"classified");

    // Guessing: each attempt is charged to the link before the password is checked (the right password above
    // cleared the count); past the limit (10 a quarter-hour) even the right one waits.
    let mut statuses = Vec::new();
    for i in 0..12 {
        let r = http().post(&url).form(&[("password", format!("guess {i}"))]).send().await.expect("post");
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [vec![401; 10], vec![429; 2]].concat());
    let r = http().post(&url).form(&[("password", "open sesame!")]).send().await.expect("post");
    assert_eq!(r.status().as_u16(), 429, "the right password waits out the window too");
    srv.stop().await;
}

#[tokio::test]
async fn links_obey_roles_and_the_workspace_allowlist() {
    let srv = TestServer::start().await;
    let owner = srv.user("owner@example.org").await;
    let viewer = srv.user("viewer@example.org").await;
    let editor = srv.user("editor@example.org").await;
    let ws = workspace(&owner, "Team").await.id;
    for (e, r) in [("viewer", Role::Viewer), ("editor", Role::Editor)] {
        owner.members(ws).add(&AddMemberRequest { email: format!("{e}@example.org"), role: r }).await.expect("add");
    }
    put_file(&owner, ws, "f.txt", b"data", None).await.expect("put");
    assert_eq!(viewer.shares(ws).create(&share("f.txt")).await.expect_err("viewer").kind(), ErrorKind::Forbidden);
    assert_eq!(editor.shares(ws).create(&share("nope.txt")).await.expect_err("no file").kind(), ErrorKind::NotFound);
    let mine = editor.shares(ws).create(&share("f.txt")).await.expect("editor shares");
    let owners = owner.shares(ws).create(&share("f.txt")).await.expect("owner shares");
    assert_eq!(editor.shares(ws).list().await.expect("list").len(), 1, "an editor sees their own links");
    assert_eq!(owner.shares(ws).list().await.expect("list").len(), 2, "an owner sees all");
    assert_eq!(editor.shares(ws).revoke(owners.link.id).await.expect_err("not theirs").kind(), ErrorKind::Forbidden);

    let nets = UpdateSettings { ip_allowlist: Some(vec!["127.0.0.1/32".into()]), ..UpdateSettings::default() };
    owner.workspaces().update_settings(ws, &nets).await.expect("allowlist");
    let from_elsewhere = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().expect("ip"))
        .build()
        .expect("client");
    let r = from_elsewhere.get(editor.share_url(&mine)).send().await.expect("get");
    assert_eq!(r.status().as_u16(), 403, "a link obeys its workspace's allowlist");
    let r = http().get(editor.share_url(&mine)).send().await.expect("get");
    assert_eq!(r.status().as_u16(), 200);
    owner.shares(ws).revoke(mine.link.id).await.expect("an owner revokes an editor's link");
    srv.stop().await;
}

#[tokio::test]
async fn a_link_dies_with_its_makers_access_its_key_and_its_file() {
    let srv = TestServer::start().await;
    let owner = srv.user("owner@example.org").await;
    let editor = srv.user("editor@example.org").await;
    let ws = workspace(&owner, "Team").await.id;
    owner
        .members(ws)
        .add(&AddMemberRequest { email: "editor@example.org".into(), role: Role::Editor })
        .await
        .expect("add");
    put_file(&owner, ws, "a.txt", b"first a", None).await.expect("put");
    put_file(&owner, ws, "b.txt", b"bee", None).await.expect("put");
    let get = |url: String| async move { http().get(url).send().await.expect("get").status().as_u16() };

    // The maker demoted to viewer: the link stops; promoted again, it works again.
    let by_editor = editor.shares(ws).create(&share("b.txt")).await.expect("share");
    assert_eq!(get(editor.share_url(&by_editor)).await, 200);
    let editor_id = owner
        .members(ws)
        .list()
        .await
        .expect("members")
        .into_iter()
        .find(|m| m.email.starts_with("editor"))
        .expect("editor")
        .user_id;
    owner.members(ws).set_role(editor_id, Role::Viewer).await.expect("demote");
    assert_eq!(get(editor.share_url(&by_editor)).await, 404, "a viewer could not make it, so it does not work");
    owner.members(ws).set_role(editor_id, Role::Editor).await.expect("promote");
    assert_eq!(get(editor.share_url(&by_editor)).await, 200);

    // Made with an API key: revoking the key ends the link.
    let key = owner
        .api_keys()
        .create(&cloudsync_types::api::CreateApiKeyRequest {
            name: "bot".into(),
            role: Role::Editor,
            workspaces: None,
            expires_at: None,
            proof: Default::default(),
        })
        .await
        .expect("key");
    let bot = srv.anonymous().with_token(key.secret);
    let by_key = bot.shares(ws).create(&share("b.txt")).await.expect("share by key");
    assert_eq!(get(bot.share_url(&by_key)).await, 200);
    owner.api_keys().revoke(&key.key.id).await.expect("revoke key");
    assert_eq!(get(owner.share_url(&by_key)).await, 404);

    // The file deleted and another put at its path: that one was never shared.
    let link = owner.shares(ws).create(&share("a.txt")).await.expect("share");
    owner.files(ws).delete(&WsPath::parse("a.txt").expect("path")).await.expect("rm");
    put_file(&owner, ws, "a.txt", b"a different file", None).await.expect("put again");
    assert_eq!(get(owner.share_url(&link)).await, 404);

    // A password form cannot be used to hold memory: the body is capped before the handler reads it.
    let big = http().post(owner.share_url(&link)).body(vec![b'x'; 64 * 1024]).send().await.expect("post");
    assert_eq!(big.status().as_u16(), 413);
    srv.stop().await;
}

#[tokio::test]
async fn viewing_a_password_form_does_not_use_up_the_links_guesses() {
    let srv = TestServer::start().await;
    let owner = srv.user("owner@example.org").await;
    let ws = workspace(&owner, "Team").await.id;
    put_file(&owner, ws, "s.txt", b"secret", None).await.expect("put");
    let link = owner
        .shares(ws)
        .create(&CreateShareRequest { password: Some("open sesame!".into()), ..share("s.txt") })
        .await
        .expect("share");
    let url = owner.share_url(&link);
    for _ in 0..15 {
        assert_eq!(http().get(&url).header("accept", "text/html").send().await.expect("get").status().as_u16(), 401);
    }
    let r = http().post(&url).form(&[("password", "open sesame!")]).send().await.expect("post");
    assert_eq!(r.status().as_u16(), 200, "fifteen looks at the form are not fifteen guesses");
    srv.stop().await;
}
