//! The `cloudsync` binary driven as a user would: a real server started with `cloudsync server start` on port
//! 0, accounts created with `cloudsync server user create`, and every client command run as a process in a
//! temporary home. Tokens go to the opt-in file store here; `keyring.rs` covers the OS credential store.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

#[test]
fn quick_start_push_pull_versions_trash_restore() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_srv, alice) = signed_in(tmp.path(), "alice@example.com", true, "Team Docs");
    let me = json(&alice.ok(&["whoami", "--json"]));
    assert_eq!(me["user"]["email"], "alice@example.com");

    let list = json(&alice.ok(&["workspace", "list", "--json"]));
    assert_eq!(list[0]["name"], "Team Docs");
    assert_eq!(list[0]["role"], "owner");

    let src = tmp.path().join("src");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    write(&src.join("big.bin"), &big);
    write(&src.join("notes/a.txt"), b"hello");
    write(&src.join("notes/deep/b.txt"), b"world");
    write(&src.join("empty.txt"), b"");
    let summary = json(&alice.ok(&["push", src.to_str().expect("p"), "Team Docs", "--json"]));
    assert_eq!(summary["files_uploaded"], 4, "{summary}");
    assert!(summary["bytes_uploaded"].as_u64().expect("bytes") >= big.len() as u64);
    // A second push sends nothing.
    let again = json(&alice.ok(&["push", src.to_str().expect("p"), "Team Docs", "--json"]));
    assert_eq!((again["files_uploaded"].as_u64(), again["bytes_uploaded"].as_u64()), (Some(0), Some(0)), "{again}");

    let ls = json(&alice.ok(&["ls", "Team Docs:notes", "--json"]));
    let paths: Vec<&str> = ls.as_array().expect("array").iter().map(|f| f["path"].as_str().expect("path")).collect();
    assert_eq!(paths, ["notes/a.txt", "notes/deep/b.txt"]);

    let dst = tmp.path().join("dst");
    let pulled = json(&alice.ok(&["pull", "Team Docs", dst.to_str().expect("p"), "--json"]));
    assert_eq!(pulled["files_downloaded"], 4, "{pulled}");
    assert_eq!(std::fs::read(dst.join("big.bin")).expect("big"), big);
    assert_eq!(std::fs::read(dst.join("notes/deep/b.txt")).expect("b"), b"world");
    assert_eq!(std::fs::read(dst.join("empty.txt")).expect("empty"), b"");

    // Edit, push, see two versions, restore the first.
    write(&src.join("notes/a.txt"), b"hello, edited");
    alice.ok(&["push", src.to_str().expect("p"), "Team Docs"]);
    let versions = json(&alice.ok(&["versions", "Team Docs:notes/a.txt", "--json"]));
    assert_eq!(versions.as_array().expect("array").len(), 2);
    alice.ok(&["restore", "Team Docs:notes/a.txt", "--version", "1"]);
    let sub = tmp.path().join("sub");
    alice.ok(&["pull", "Team Docs:notes", sub.to_str().expect("p")]);
    assert_eq!(std::fs::read(sub.join("a.txt")).expect("a"), b"hello");
    // A path with nothing on the server is an error, and no local folder is made for it.
    let typo = tmp.path().join("typo");
    let err = alice.fail(&["pull", "Team Docs:nots", typo.to_str().expect("p")]);
    assert!(err.contains("nothing on the server at 'nots'"), "{err}");
    assert!(!typo.exists());

    // Delete goes to the trash and comes back.
    alice.ok(&["rm", "Team Docs:notes/deep"]);
    let trash = json(&alice.ok(&["trash", "list", "Team Docs", "--json"]));
    assert_eq!(trash[0]["path"], "notes/deep/b.txt");
    alice.ok(&["restore", "Team Docs:notes/deep/b.txt"]);
    assert_eq!(json(&alice.ok(&["trash", "list", "Team Docs", "--json"])).as_array().expect("array").len(), 0);

    let devices = json(&alice.ok(&["devices", "list", "--json"]));
    assert_eq!(devices.as_array().expect("array").len(), 1);
    alice.ok(&["logout"]);
    let err = alice.fail(&["workspace", "list"]);
    assert!(err.contains("cloudsync login"), "{err}");
}

#[test]
fn members_and_roles_through_the_cli() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = start_server(&tmp.path().join("server"));
    create_user(&srv, "owner@example.com", false);
    create_user(&srv, "bob@example.com", false);
    let owner = Client::new(tmp.path(), "owner");
    let bob = Client::new(tmp.path(), "bob");
    owner.login(&srv, "owner@example.com");
    bob.login(&srv, "bob@example.com");
    owner.ok(&["workspace", "create", "Shared"]);
    owner.ok(&["workspace", "members", "add", "--workspace", "Shared", "bob@example.com", "--role", "viewer"]);
    let members = json(&owner.ok(&["workspace", "members", "list", "--workspace", "Shared", "--json"]));
    assert_eq!(members.as_array().expect("array").len(), 2);
    let src = tmp.path().join("bobs");
    write(&src.join("x.txt"), b"from bob");
    let err = bob.fail(&["push", src.to_str().expect("p"), "Shared"]);
    assert!(err.contains("editor"), "a viewer is told which role is needed: {err}");
    owner.ok(&["workspace", "members", "set-role", "--workspace", "Shared", "bob@example.com", "--role", "editor"]);
    bob.ok(&["push", src.to_str().expect("p"), "Shared"]);
    let err = owner.fail(&["workspace", "members", "remove", "--workspace", "Shared", "owner@example.com"]);
    assert!(err.contains("at least one owner"), "{err}");
    let err = bob.fail(&["workspace", "delete", "Shared"]);
    assert!(err.contains("owner"), "{err}");
    owner.ok(&["workspace", "members", "remove", "--workspace", "Shared", "bob@example.com"]);
    let err = bob.fail(&["ls", "Shared"]);
    assert!(err.contains("no workspace named"), "{err}");
    owner.ok(&["workspace", "delete", "Shared"]);
}

#[test]
fn login_pins_the_certificate_and_explains_every_refusal() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = start_server(&tmp.path().join("server"));
    create_user(&srv, "a@example.com", false);
    let c = Client::new(tmp.path(), "c");
    // No terminal and no --fingerprint: refuse, and say how to proceed.
    let out = c.with_stdin(&["login", "--server", &srv.url, "--email", "a@example.com", "--password-stdin"], "x\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--fingerprint") && err.contains(&srv.fingerprint), "{err}");
    // A wrong fingerprint: refuse and explain.
    let wrong = "00:".repeat(31) + "00";
    let out = c.with_stdin(&login_args(&srv, "a@example.com", &wrong), &format!("{PASSWORD}\n"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("fingerprint"), "{err}");
    // A wrong password.
    let out = c.with_stdin(&login_args(&srv, "a@example.com", &srv.fingerprint), "nope nope nope\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong email or password"));
    // Plain http is refused with a reason.
    let err = c.fail(&["login", "--server", "http://127.0.0.1:1", "--email", "a@example.com", "--password-stdin"]);
    assert!(err.contains("https://"), "{err}");
    c.login(&srv, "a@example.com");
    // The saved config holds no token.
    let cfg = std::fs::read_to_string(c.home.join("config/client.toml")).expect("config");
    let creds = std::fs::read_to_string(c.home.join("config/credentials.json")).expect("credentials");
    let token_in_creds = json(&creds);
    let token = token_in_creds[&srv.url].as_str().expect("token saved");
    assert!(!cfg.contains(token));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(c.home.join("config/credentials.json")).expect("meta").permissions().mode();
        assert_eq!(mode & 0o077, 0, "credential file is private");
    }
}

#[test]
fn the_server_refuses_a_readable_master_key_and_prints_its_config() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("server");
    drop(start_server(&data));
    let key = data.join("master.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).expect("key").permissions().mode() & 0o777, 0o600);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let out = Command::new(BIN)
            .args(["server", "start", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("chmod 600"), "{err}");
    }
    let out = Command::new(BIN).args(["server", "default-config"]).output().expect("run");
    let text = String::from_utf8(out.stdout).expect("utf8");
    assert!(text.contains("[server]") && text.contains("listen"));
}

#[test]
fn without_a_credential_store_login_names_the_file_opt_in() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = start_server(&tmp.path().join("server"));
    create_user(&srv, "a@example.com", false);
    let c = Client::new(tmp.path(), "c");
    let mut cmd = c.cmd(&login_args(&srv, "a@example.com", &srv.fingerprint));
    cmd.env_remove("CLOUDSYNC_CREDENTIAL_STORE")
        .env("DBUS_SESSION_BUS_ADDRESS", format!("unix:path={}", tmp.path().join("no-bus").display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    child.stdin.take().expect("stdin").write_all(format!("{PASSWORD}\n").as_bytes()).expect("write");
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must not silently store the token elsewhere");
    assert!(err.contains("CLOUDSYNC_CREDENTIAL_STORE=file"), "{err}");
    assert!(!c.home.join("config/credentials.json").exists());
}

#[test]
fn pull_replaces_stale_copies_but_keeps_local_edits() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_srv, a) = signed_in(tmp.path(), "a@example.com", false, "W");
    let src = tmp.path().join("src");
    write(&src.join("stale.txt"), b"version one");
    write(&src.join("edited.txt"), b"server text");
    a.ok(&["push", src.to_str().expect("p"), "W"]);
    let dst = tmp.path().join("dst");
    a.ok(&["pull", "W", dst.to_str().expect("p")]);
    // The server moves on; the local copy of stale.txt is untouched, edited.txt is changed locally.
    write(&src.join("stale.txt"), b"version two");
    write(&src.join("edited.txt"), b"server text, revised");
    a.ok(&["push", src.to_str().expect("p"), "W"]);
    write(&dst.join("edited.txt"), b"my own local change");
    let summary = json(&a.ok(&["pull", "W", dst.to_str().expect("p"), "--json"]));
    assert_eq!(summary["files_conflicted"], 1, "{summary}");
    assert_eq!(std::fs::read(dst.join("stale.txt")).expect("stale"), b"version two");
    assert_eq!(std::fs::read(dst.join("edited.txt")).expect("edited"), b"server text, revised");
    let names: Vec<String> = std::fs::read_dir(&dst)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let copy = names.iter().find(|n| n.starts_with("edited (conflicted copy from ")).expect("the local edit was kept");
    assert_eq!(std::fs::read(dst.join(copy)).expect("copy"), b"my own local change");
    assert_eq!(names.len(), 3, "no copy of the merely stale file: {names:?}");
}

#[test]
fn sync_and_status_through_the_cli_with_the_json_summary() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_srv, alice) = signed_in(tmp.path(), "alice@example.com", false, "Team");
    let dir = tmp.path().join("folder");
    write(&dir.join("a.txt"), b"alpha");
    write(&dir.join("sub/b.txt"), b"beta");
    let d = dir.to_str().expect("p");

    let dry = json(&alice.ok(&["sync", d, "Team:shared", "--dry-run", "--json"]));
    assert_eq!(dry["plan"]["upload"], serde_json::json!(["a.txt", "sub/b.txt"]), "{dry}");
    assert_eq!(dry["files_uploaded"], 0);
    let first = json(&alice.ok(&["sync", d, "Team:shared", "--json"]));
    for field in [
        "files_scanned",
        "files_uploaded",
        "files_downloaded",
        "files_deleted",
        "files_conflicted",
        "bytes_uploaded",
        "bytes_downloaded",
        "chunks_uploaded",
        "chunks_deduplicated",
        "seconds",
    ] {
        assert!(first.get(field).is_some(), "{field} missing from {first}");
    }
    assert_eq!(first["files_uploaded"], 2, "{first}");
    // A real run's document counts the plan's steps; only a dry run lists every path.
    assert_eq!(first["plan"]["upload"], 2, "{first}");
    assert_eq!(first["plan"]["download"], 0, "{first}");
    let ls = json(&alice.ok(&["ls", "Team:shared", "--json"]));
    assert_eq!(ls.as_array().expect("array").len(), 2);

    std::fs::remove_file(dir.join("a.txt")).expect("rm");
    let st = json(&alice.ok(&["status", d, "--json"]));
    assert_eq!(st["pending"]["delete_remote"], serde_json::json!(["a.txt"]), "{st}");
    let text = alice.ok(&["status", d]);
    assert!(text.contains("delete on server (to trash): a.txt"), "{text}");
    let r = json(&alice.ok(&["sync", d, "Team:shared", "--json"]));
    assert_eq!(r["files_deleted"], 1, "{r}");
    let trash = json(&alice.ok(&["trash", "list", "Team", "--json"]));
    assert_eq!(trash[0]["path"], "shared/a.txt");

    let err = alice.fail(&["status", tmp.path().join("never").to_str().expect("p")]);
    assert!(err.contains("does not exist"), "{err}");
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).expect("mkdir");
    let err = alice.fail(&["status", other.to_str().expect("p")]);
    assert!(err.contains("has not been synced yet"), "{err}");
}

#[test]
fn a_killed_sync_resumes_without_resending_stored_chunks() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (srv, alice) = signed_in(tmp.path(), "alice@example.com", false, "Team");
    let dir = tmp.path().join("folder");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let big: Vec<u8> = (0..192 * 1024 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    write(&dir.join("big.bin"), &big);
    let d = dir.to_str().expect("p");

    // Kill the client once the server has stored half of the file (in packs of a few MiB each): at most three
    // requests of about 16 MiB are in flight, each recorded when it completes, so by then some are recorded.
    let mut child =
        alice.cmd(&["sync", d, "Team", "--json"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn");
    let chunks_dir = srv.data.join("chunks");
    let started = std::time::Instant::now();
    let stored = loop {
        let n = tree_bytes(&chunks_dir);
        if n >= 96 << 20 {
            break n;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(120), "no chunks stored");
        if child.try_wait().expect("wait").is_some() {
            panic!("the sync finished before it could be killed; make the file larger");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    child.kill().expect("kill");
    let _ = child.wait();
    assert!(json(&alice.ok(&["ls", "Team", "--json"])).as_array().expect("array").is_empty(), "nothing committed");

    let resumed = json(&alice.ok(&["sync", d, "Team", "--json"]));
    assert_eq!(resumed["files_uploaded"], 1, "{resumed}");
    let dedup = resumed["chunks_deduplicated"].as_u64().expect("dedup");
    assert!(dedup >= 1, "stored chunks are not sent again ({stored} bytes stored before the kill): {resumed}");
    assert!(resumed["bytes_uploaded"].as_u64().expect("bytes") < big.len() as u64, "{resumed}");
    let out = tmp.path().join("out");
    alice.ok(&["pull", "Team", out.to_str().expect("p")]);
    assert_eq!(std::fs::read(out.join("big.bin")).expect("read"), big);
}

#[test]
fn server_gc_gives_back_the_space_of_chunks_no_version_names() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (srv, alice) = signed_in(tmp.path(), "alice@example.com", false, "Team");
    let dir = tmp.path().join("folder");
    let keep = noise(3 << 20, 1);
    write(&dir.join("keep.bin"), &keep);
    alice.ok(&["push", dir.to_str().expect("p"), "Team"]);
    let kept_chunks = count(&srv, "SELECT COUNT(*) FROM chunks");
    // A second push (its own upload, so its own packs), then the state an upload a client never committed
    // leaves: chunks recorded, no version naming them.
    write(&dir.join("lost.bin"), &noise(6 << 20, 2));
    alice.ok(&["push", dir.to_str().expect("p"), "Team"]);
    let lost_chunks = u64::try_from(count(&srv, "SELECT COUNT(*) FROM chunks") - kept_chunks).expect("count");
    for sql in [
        "DELETE FROM journal WHERE path = 'lost.bin'",
        "DELETE FROM versions WHERE file_id IN (SELECT id FROM files WHERE path = 'lost.bin')",
        "DELETE FROM files WHERE path = 'lost.bin'",
    ] {
        tamper(&srv, sql);
    }
    let gc = |extra: &[&str]| {
        let out =
            Command::new(BIN).args(["server", "gc", "--data-dir"]).arg(&srv.data).args(extra).output().expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let condemned = || count(&srv, "SELECT COUNT(*) FROM chunks WHERE condemned_ms IS NOT NULL");

    // Young chunks are left alone: they may belong to an upload about to commit.
    let first = json(&gc(&["--json"]));
    let unreferenced = first["chunks"].as_u64().expect("chunks") - first["chunks_referenced"].as_u64().expect("refs");
    assert_eq!(unreferenced, lost_chunks, "exactly the lost file's chunks: {first}");
    assert_eq!(first["chunks_condemned"], 0, "{first}");

    // A day and more later (the database's clocks moved back instead): a dry run only counts ...
    tamper(&srv, "UPDATE chunks SET created_ms = created_ms - 2 * 86400000");
    let dry = json(&gc(&["--json", "--dry-run"]));
    assert_eq!((dry["chunks_condemned"].as_u64(), dry["dry_run"].as_bool()), (Some(unreferenced), Some(true)));
    assert_eq!(condemned(), 0, "a dry run changes nothing");
    // ... a run condemns; the chunks count as missing from then on, and nothing is deleted yet.
    let second = json(&gc(&["--json"]));
    assert_eq!((second["chunks_condemned"].as_u64(), second["chunks_deleted"].as_u64()), (Some(unreferenced), Some(0)));
    assert_eq!(condemned(), i64::try_from(unreferenced).expect("count"));

    // A grace period later they are deleted and their packs removed.
    tamper(&srv, "UPDATE chunks SET condemned_ms = condemned_ms - 2 * 86400000 WHERE condemned_ms IS NOT NULL");
    let chunks_dir = srv.data.join("chunks");
    let before = tree_bytes(&chunks_dir);
    let text = gc(&[]);
    assert!(text.starts_with("Freed "), "{text}");
    let after = tree_bytes(&chunks_dir);
    assert!(before - after >= 6 << 20, "the lost file's packs are gone: {before} -> {after}");
    assert_eq!(
        count(&srv, "SELECT COUNT(*) FROM chunks"),
        i64::try_from(first["chunks_referenced"].as_u64().expect("n")).expect("n")
    );
    let out = tmp.path().join("out");
    alice.ok(&["pull", "Team", out.to_str().expect("p")]);
    assert_eq!(std::fs::read(out.join("keep.bin")).expect("read"), keep);

    let refused = Command::new(BIN)
        .args(["server", "gc", "--grace-hours", "0", "--data-dir"])
        .arg(&srv.data)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("--grace-hours must be at least 1"), "{err}");
}

/// Bytes in the files below `dir`.
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => tree_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The code an authenticator app shows now for `secret` (Base32), and the next step's.
fn totp_codes(secret: &str) -> (String, String) {
    use cloudsync_crypto::totp::{Algorithm, DIGITS, STEP_SECS, base32_decode, code_at};
    let key = base32_decode(secret).expect("base32 secret");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs();
    (code_at(Algorithm::Sha1, &key, now, DIGITS), code_at(Algorithm::Sha1, &key, now + STEP_SECS, DIGITS))
}

#[test]
fn mfa_enable_confirm_login_with_totp_recovery_codes_and_disable() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (srv, alice) = signed_in(tmp.path(), "alice@example.com", false, "Team");
    let enrol = json(&alice.ok(&["mfa", "enable", "--json"]));
    let uri = enrol["otpauth_uri"].as_str().expect("uri");
    let secret = enrol["secret"].as_str().expect("secret");
    assert!(uri.starts_with("otpauth://totp/CloudSync:alice%40example.com?secret=") && uri.contains(secret), "{uri}");
    assert!(alice.fail(&["mfa", "confirm", "12345"]).contains("that code is wrong"));
    let (now, next) = totp_codes(secret);
    let confirmed = json(&alice.ok(&["mfa", "confirm", &now, "--json"]));
    let codes: Vec<String> =
        confirmed["recovery_codes"].as_array().expect("codes").iter().map(|c| c.as_str().expect("s").into()).collect();
    assert_eq!(codes.len(), 10);
    assert_eq!(json(&alice.ok(&["mfa", "status", "--json"]))["enabled"], true);

    // A login without a code is refused with the way out named; with the code it works; the code then is spent.
    let bob = Client::new(tmp.path(), "alice-laptop");
    let login = login_args(&srv, "alice@example.com", &srv.fingerprint);
    let out = bob.with_stdin(&login, &format!("{PASSWORD}\n"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("two-factor authentication") && err.contains("--totp CODE"), "{err}");
    let with_code = |code: &str| {
        let mut args = login.to_vec();
        args.extend(["--totp", code]);
        bob.with_stdin(&args, &format!("{PASSWORD}\n"))
    };
    // The confirming code was the current step's: only a later step's code signs in.
    let out = with_code(&now);
    assert!(!out.status.success(), "the code used to confirm cannot sign in again");
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong or was already used"));
    assert!(with_code(&next).status.success(), "{}", String::from_utf8_lossy(&with_code(&next).stderr));
    bob.ok(&["whoami"]);
    assert!(!with_code(&next).status.success(), "a replayed code is refused");
    assert!(with_code(&codes[0]).status.success(), "a recovery code signs in once");
    assert!(!with_code(&codes[0]).status.success(), "and only once");
    assert_eq!(json(&bob.ok(&["mfa", "recovery-codes", "--json"]))["recovery_codes_left"], 9);

    // New recovery codes and turning MFA off need a code.
    assert!(bob.fail(&["mfa", "recovery-codes", "--regenerate"]).contains("--code CODE"));
    let fresh = json(&bob.ok(&["mfa", "recovery-codes", "--regenerate", "--code", &codes[1], "--json"]));
    let fresh: Vec<&str> =
        fresh["recovery_codes"].as_array().expect("codes").iter().map(|c| c.as_str().expect("s")).collect();
    assert!(!with_code(&codes[2]).status.success(), "the old set is gone");
    assert!(bob.fail(&["mfa", "disable", "--code", "000000x"]).contains("wrong or was already used"));
    bob.ok(&["mfa", "disable", "--code", fresh[0]]);
    assert_eq!(json(&alice.ok(&["mfa", "status", "--json"]))["enabled"], false);
    alice.login(&srv, "alice@example.com");

    // The operator's break-glass: an account that lost its authenticator and its codes gets back in.
    let again = json(&alice.ok(&["mfa", "enable", "--json"]));
    alice.ok(&["mfa", "confirm", &totp_codes(again["secret"].as_str().expect("secret")).0]);
    assert!(!bob.with_stdin(&login, &format!("{PASSWORD}\n")).status.success(), "MFA is on again");
    // With MFA on, the owner can require it of every member of the workspace.
    assert_eq!(json(&alice.ok(&["workspace", "settings", "Team", "--json"]))["require_mfa"], false);
    let set = json(&alice.ok(&["workspace", "settings", "Team", "--require-mfa", "on", "--json"]));
    assert_eq!(set["require_mfa"], true, "{set}");
    let data = srv.data.to_str().expect("utf8");
    let out = Command::new(BIN).args(["server", "user", "reset-mfa", "alice@example.com", "--data-dir", data]).output();
    let out = out.expect("reset-mfa");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is off for alice@example.com"));
    alice.login(&srv, "alice@example.com");
    // Without MFA now, the workspace that requires it refuses her, and says how to get in.
    assert!(alice.fail(&["ls", "Team"]).contains("requires two-factor authentication"));

    // The audit log holds none of the codes.
    let db = std::fs::read(srv.data.join("meta.db")).unwrap_or_default();
    let wal = std::fs::read(srv.data.join("meta.db-wal")).unwrap_or_default();
    for code in
        codes.iter().map(String::as_str).chain(fresh.iter().copied()).chain([now.as_str(), next.as_str(), secret])
    {
        let needle = code.as_bytes();
        assert!(!db.windows(needle.len()).any(|w| w == needle), "{code} is stored in the clear");
        assert!(!wal.windows(needle.len()).any(|w| w == needle), "{code} is in the WAL in the clear");
    }
}

#[test]
fn audit_list_exports_and_verify_names_the_broken_row() {
    let root = tempfile::tempdir().expect("tempdir");
    let (srv, alice) = signed_in(root.path(), "alice@example.org", true, "Books");
    let dir = root.path().join("books");
    write(&dir.join("a.txt"), b"alpha");
    write(&dir.join("b.txt"), b"beta");
    alice.ok(&["push", dir.to_str().expect("utf8"), "Books"]);
    alice.ok(&["pull", "Books", root.path().join("copy").to_str().expect("utf8")]);

    let table = alice.ok(&["audit", "list", "--workspace", "Books"]);
    assert!(
        table.starts_with("TIME") && table.contains("file.upload") && table.contains("workspace.created"),
        "{table}"
    );

    let lines = alice.ok(&["audit", "list", "--workspace", "Books", "--events", "file.upload,file.access", "--json"]);
    let rows: Vec<serde_json::Value> = lines.lines().map(json).collect();
    assert_eq!(rows.iter().filter(|r| r["event"] == "file.upload").count(), 2, "{lines}");
    assert!(rows.iter().all(|r| r["event"] == "file.upload" || r["event"] == "file.access"));
    assert!(rows.windows(2).all(|w| w[0]["seq"].as_u64() > w[1]["seq"].as_u64()), "newest first");

    let csv = alice.ok(&["audit", "list", "--workspace", "Books", "--since", "1d", "--until", "2999-01-01", "--csv"]);
    let mut csv_lines = csv.lines();
    assert_eq!(
        csv_lines.next(),
        Some("id,chain,seq,at,event,outcome,actor_id,actor_email,workspace_id,ip,target,details,prev_hash,hash")
    );
    assert_eq!(csv_lines.count(), rows.len() + 1, "every row, the workspace's creation too:\n{csv}");
    assert!(alice.ok(&["audit", "list", "--workspace", "Books", "--since", "2999-01-01", "--json"]).is_empty());
    let err = alice.fail(&["audit", "list", "--since", "last tuesday"]);
    assert!(err.contains("--since") && err.contains("2026-01-01"), "{err}");

    let mine = alice.ok(&["audit", "list", "--events", "auth.login", "--json"]);
    assert!(mine.lines().map(json).all(|r| r["event"] == "auth.login"));
    assert!(!mine.is_empty());

    let ok = alice.ok(&["audit", "verify"]);
    assert!(ok.contains("OK      Books") && ok.contains("OK      account events"), "{ok}");

    let ws = json(&alice.ok(&["workspace", "list", "--json"]))[0]["id"].as_str().expect("id").to_owned();
    tamper(&srv, &format!("UPDATE audit SET ip = '10.9.9.9' WHERE chain = '{ws}' AND seq = 2"));
    let out = alice.run(&["audit", "verify", "--workspace", "Books"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("BROKEN  Books: at row 2") && stdout.contains("edited"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken"));
}

#[test]
fn apikey_create_use_from_the_environment_rotate_and_revoke() {
    let root = tempfile::tempdir().expect("tempdir");
    let (srv, alice) = signed_in(root.path(), "alice@example.org", false, "Books");
    alice.ok(&["workspace", "create", "Private"]);
    let dir = root.path().join("books");
    write(&dir.join("a.txt"), b"alpha");
    alice.ok(&["push", dir.to_str().expect("utf8"), "Books"]);

    let out =
        alice.run(&["apikey", "create", "reader", "--role", "viewer", "--workspace", "Books", "--expires", "30d"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let secret = String::from_utf8(out.stdout).expect("utf8").trim().to_owned();
    assert!(secret.starts_with("csk_"), "{secret}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("shown only now"));
    let err = alice.fail(&["apikey", "create", "boss", "--role", "owner"]);
    assert!(err.contains("viewer, editor or admin"), "{err}");
    let err = alice.fail(&["apikey", "create", "reader", "--role", "viewer"]);
    assert!(err.contains("already have an API key named"), "{err}");

    let listed = json(&alice.ok(&["apikey", "list", "--json"]));
    assert_eq!(listed[0]["name"], "reader");
    assert_eq!(listed[0]["role"], "viewer");
    assert!(listed[0]["expires_at"].is_string());
    assert!(!listed.to_string().contains(&secret[21..]));
    let table = alice.ok(&["apikey", "list"]);
    assert!(table.contains("reader") && table.contains("Books") && table.contains("never"), "{table}");

    // A machine with no saved login: the key and the server come from the environment.
    let ci = Client::new(root.path(), "ci");
    let with_key = |key: &str, args: &[&str]| {
        ci.cmd(args)
            .env("CLOUDSYNC_API_KEY", key)
            .env("CLOUDSYNC_SERVER", &srv.url)
            .env("CLOUDSYNC_SERVER_FINGERPRINT", &srv.fingerprint)
            .output()
            .expect("run")
    };
    let ls = with_key(&secret, &["ls", "Books"]);
    assert!(ls.status.success(), "{}", String::from_utf8_lossy(&ls.stderr));
    assert!(String::from_utf8_lossy(&ls.stdout).contains("a.txt"));
    let private = with_key(&secret, &["ls", "Private"]);
    assert!(!private.status.success(), "a key scoped to Books does not see Private");
    let pushed = with_key(&secret, &["push", dir.to_str().expect("utf8"), "Books:copy"]);
    assert!(!pushed.status.success());
    assert!(
        String::from_utf8_lossy(&pushed.stderr).contains("API key acts as viewer"),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    let minted = with_key(&secret, &["apikey", "list"]);
    assert!(!minted.status.success() && String::from_utf8_lossy(&minted.stderr).contains("an API key cannot"));
    let nowhere = ci.cmd(&["ls", "Books"]).env("CLOUDSYNC_API_KEY", &secret).output().expect("run");
    assert!(String::from_utf8_lossy(&nowhere.stderr).contains("CLOUDSYNC_SERVER"), "says what is missing");

    // Rotation with a grace period keeps the old secret working; revocation ends both.
    let out = alice.run(&["apikey", "rotate", "reader", "--grace", "1h"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let new_secret = String::from_utf8(out.stdout).expect("utf8").trim().to_owned();
    assert_ne!(new_secret, secret);
    assert!(String::from_utf8_lossy(&out.stderr).contains("keeps working until"));
    assert!(with_key(&secret, &["ls", "Books"]).status.success(), "old secret in its grace period");
    assert!(with_key(&new_secret, &["ls", "Books"]).status.success());
    alice.ok(&["apikey", "revoke", "reader"]);
    let refused = with_key(&new_secret, &["ls", "Books"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("revoked"));
    assert!(!with_key(&secret, &["ls", "Books"]).status.success());
    assert!(json(&alice.ok(&["apikey", "list", "--json"])).as_array().expect("array").is_empty());
}

#[test]
fn ip_allowlist_settings_lock_out_needs_force_and_the_operator_clears_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let (srv, alice) = signed_in(root.path(), "alice@example.org", false, "Books");
    let set = json(&alice.ok(&["workspace", "settings", "Books", "--ip-allowlist", "127.0.0.0/8,::1", "--json"]));
    assert_eq!(set["ip_allowlist"], serde_json::json!(["127.0.0.0/8", "::1/128"]));
    let text = alice.ok(&["workspace", "settings", "Books"]);
    assert!(text.contains("reachable only from 127.0.0.0/8, ::1/128"), "{text}");
    let err = alice.fail(&["workspace", "settings", "Books", "--ip-allowlist", "192.168.1.0/24"]);
    assert!(err.contains("lock you out") && err.contains("--force"), "{err}");
    let err = alice.fail(&["workspace", "settings", "Books", "--ip-allowlist", "192.168.1.0/99"]);
    assert!(err.contains("192.168.1.0/99"), "{err}");
    alice.ok(&["workspace", "settings", "Books", "--ip-allowlist", "192.168.1.0/24", "--force"]);
    let err = alice.fail(&["ls", "Books"]);
    assert!(err.contains("IP allowlist"), "{err}");

    let out = Command::new(BIN)
        .args(["server", "workspace", "clear-allowlist", "Books", "--data-dir"])
        .arg(&srv.data)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    alice.ok(&["ls", "Books"]);
    assert!(alice.ok(&["workspace", "settings", "Books"]).contains("reachable from any address"));
    let cleared = alice.ok(&["audit", "list", "--workspace", "Books", "--events", "settings.changed", "--json"]);
    assert!(cleared.lines().next().is_some_and(|l| json(l)["details"]["by"] == "operator"), "{cleared}");
    alice.ok(&["workspace", "settings", "Books", "--ip-allowlist", "127.0.0.1"]);
    alice.ok(&["workspace", "settings", "Books", "--clear-ip-allowlist"]);
    assert!(alice.ok(&["workspace", "settings", "Books"]).contains("reachable from any address"));
}

#[test]
fn share_links_from_the_cli_download_with_curl() {
    let root = tempfile::tempdir().expect("tempdir");
    let (_srv, alice) = signed_in(root.path(), "alice@example.org", false, "Books");
    let dir = root.path().join("books");
    write(&dir.join("notes.txt"), b"shared notes");
    alice.ok(&["push", dir.to_str().expect("utf8"), "Books"]);

    let err = alice.fail(&["share", "create", "Books"]);
    assert!(err.contains("one file"), "{err}");
    let url = alice.ok(&["share", "create", "Books:notes.txt", "--max-downloads", "1"]).trim().to_owned();
    assert!(url.starts_with("https://127.0.0.1:") && url.contains("/s/"), "{url}");
    let out_dir = root.path().join("dl");
    std::fs::create_dir_all(&out_dir).expect("mkdir");
    let curl = |args: &[&str]| {
        Command::new("curl")
            .args(["-sS", "-k"])
            .args(args)
            .current_dir(&out_dir)
            .output()
            .expect("curl must be installed")
    };
    let got = curl(&["-OJ", "-w", "%{http_code}", &url]);
    assert_eq!(String::from_utf8_lossy(&got.stdout), "200");
    assert_eq!(std::fs::read(out_dir.join("notes.txt")).expect("downloaded by its name"), b"shared notes");
    let again = curl(&["-o", "/dev/null", "-w", "%{http_code}", &url]);
    assert_eq!(String::from_utf8_lossy(&again.stdout), "404", "one download only");

    let out = alice.with_stdin(&["share", "create", "Books:notes.txt", "--password-stdin", "--json"], "tiger tiger\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created = json(&String::from_utf8_lossy(&out.stdout));
    let url = created["url"].as_str().expect("url").to_owned();
    assert_eq!(created["link"]["has_password"], true);
    let refused = curl(&["-o", "/dev/null", "-w", "%{http_code}", &url]);
    assert_eq!(String::from_utf8_lossy(&refused.stdout), "401");
    let body = curl(&["-d", "password=tiger tiger", &url]);
    assert_eq!(body.stdout, b"shared notes");

    let list = json(&alice.ok(&["share", "list", "--json"]));
    assert_eq!(list.as_array().expect("array").len(), 1, "the used-up link is no longer live: {list}");
    let table = alice.ok(&["share", "list", "Books"]);
    assert!(table.contains("notes.txt") && table.contains("yes"), "{table}");
    let id = created["link"]["id"].as_str().expect("id").to_owned();
    alice.ok(&["share", "revoke", &id]);
    let dead = curl(&["-o", "/dev/null", "-w", "%{http_code}", "-d", "password=tiger tiger", &url]);
    assert_eq!(String::from_utf8_lossy(&dead.stdout), "404");
    let err = alice.fail(&["share", "revoke", &id]);
    assert!(err.contains("no live share link"), "{err}");
}

#[test]
fn no_secret_reaches_the_database_the_audit_log_or_the_server_log() {
    let root = tempfile::tempdir().expect("tempdir");
    let log = root.path().join("server.log");
    let srv = start_server_logging(&root.path().join("server"), Some(&log));
    create_user(&srv, "alice@example.org", true);
    let alice = Client::new(root.path(), "alice");
    alice.login(&srv, "alice@example.org");
    alice.ok(&["workspace", "create", "Vault"]);
    let dir = root.path().join("vault");
    write(&dir.join("plans.txt"), b"the plans");
    alice.ok(&["push", dir.to_str().expect("utf8"), "Vault"]);
    let mut secrets: Vec<String> = vec![PASSWORD.into()];

    // A wrong password, a made-up token and a made-up key are refused (and audited) without being kept.
    let intruder = Client::new(root.path(), "intruder");
    let wrong = "wrong horse battery staple";
    assert!(
        !intruder
            .with_stdin(&login_args(&srv, "alice@example.org", &srv.fingerprint), &format!("{wrong}\n"))
            .status
            .success()
    );
    secrets.push(wrong.into());
    let fake_key = format!("csk_{}_{}", "1234567890abcdef", "ab".repeat(32));
    let out = intruder
        .cmd(&["ls", "Vault"])
        .env("CLOUDSYNC_API_KEY", &fake_key)
        .env("CLOUDSYNC_SERVER", &srv.url)
        .env("CLOUDSYNC_SERVER_FINGERPRINT", &srv.fingerprint)
        .output()
        .expect("run");
    assert!(!out.status.success());
    secrets.push(fake_key["csk_1234567890abcdef_".len()..].to_owned());

    // Two-factor authentication: its secret and recovery codes.
    let enrol = json(&alice.ok(&["mfa", "enable", "--json"]));
    let totp_secret = enrol["secret"].as_str().expect("secret").to_owned();
    let (now, next) = totp_codes(&totp_secret);
    let confirmed = json(&alice.ok(&["mfa", "confirm", &now, "--json"]));
    let recovery: Vec<String> = confirmed["recovery_codes"]
        .as_array()
        .expect("codes")
        .iter()
        .map(|c| c.as_str().expect("code").to_owned())
        .collect();
    secrets.extend(recovery.iter().cloned());
    secrets.push(totp_secret);

    // An API key (made with a fresh code) and its use.
    let out = alice.run(&["apikey", "create", "ci", "--role", "viewer", "--totp", &next]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = String::from_utf8(out.stdout).expect("utf8").trim().to_owned();
    let used = alice.cmd(&["ls", "Vault"]).env("CLOUDSYNC_API_KEY", &key).output().expect("run");
    assert!(used.status.success(), "{}", String::from_utf8_lossy(&used.stderr));
    secrets.push(key.rsplit('_').next().expect("secret part").to_owned());
    // Rotated with a grace period: both secrets work for a while, and neither is kept.
    let out = alice.run(&["apikey", "rotate", "ci", "--grace", "1h", "--totp", &recovery[0]]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rotated = String::from_utf8(out.stdout).expect("utf8").trim().to_owned();
    for k in [&key, &rotated] {
        assert!(alice.cmd(&["ls", "Vault"]).env("CLOUDSYNC_API_KEY", k).output().expect("run").status.success());
    }
    secrets.push(rotated.rsplit('_').next().expect("secret part").to_owned());

    // A share link with a password, downloaded, and guessed at.
    let share_pw = "a share pass phrase";
    let out = alice.with_stdin(&["share", "create", "Vault:plans.txt", "--password-stdin"], &format!("{share_pw}\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let url = String::from_utf8(out.stdout).expect("utf8").trim().to_owned();
    let token = url.rsplit('/').next().expect("token").to_owned();
    let curl = |form: &str| Command::new("curl").args(["-sS", "-k", "-d", form, &url]).output().expect("curl");
    assert_eq!(curl(&format!("password={share_pw}")).stdout, b"the plans");
    assert!(curl("password=not it at all").stdout != b"the plans");
    secrets.extend([share_pw.to_owned(), "not it at all".to_owned(), token]);

    // The session tokens the clients hold.
    for home in ["alice"] {
        let creds =
            std::fs::read_to_string(root.path().join(home).join("config").join("credentials.json")).expect("creds");
        for (_, tok) in json(&creds).as_object().expect("object") {
            secrets.push(tok.as_str().expect("token").to_owned());
        }
    }

    let export =
        alice.ok(&["audit", "list", "--json"]) + &alice.ok(&["audit", "list", "--workspace", "Vault", "--csv"]);
    assert!(export.contains("apikey.used") && export.contains("share.accessed") && export.contains("auth.login"));
    let mut stored: Vec<(String, Vec<u8>)> = Vec::new();
    for f in walk(&srv.data) {
        stored.push((f.display().to_string(), std::fs::read(&f).unwrap_or_default()));
    }
    stored.push(("the audit export".into(), export.into_bytes()));
    drop(srv);
    let server_log = std::fs::read(&log).expect("log");
    assert!(server_log.len() > 1000, "the debug log was written");
    stored.push(("the server log".into(), server_log));
    for secret in &secrets {
        let needle = secret.as_bytes();
        for (name, bytes) in &stored {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "a secret ({} bytes) is in {name}",
                needle.len()
            );
        }
    }
    assert!(secrets.len() >= 19, "{} secrets checked", secrets.len());
}

#[test]
fn turning_mfa_off_names_the_workspaces_that_will_refuse_you() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_srv, alice) = signed_in(tmp.path(), "alice@example.com", false, "Strict");
    alice.ok(&["workspace", "create", "Relaxed"]);
    let secret = json(&alice.ok(&["mfa", "enable", "--json"]))["secret"].as_str().expect("secret").to_owned();
    let (now, next) = totp_codes(&secret);
    alice.ok(&["mfa", "confirm", &now]);
    alice.ok(&["workspace", "settings", "Strict", "--require-mfa", "on"]);
    let out = alice.run(&["mfa", "disable", "--code", &next]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("you lose access to them: Strict\n"), "{err}");
    assert!(err.contains("to reach Strict again"), "{err}");
    assert!(alice.fail(&["ls", "Strict"]).contains("requires two-factor authentication"));
    alice.ok(&["ls", "Relaxed"]);
}

#[test]
fn an_e2ee_workspace_is_created_with_the_users_keys_after_a_warning() {
    let root = tempfile::tempdir().expect("tempdir");
    let (srv, alice) = signed_in(root.path(), "alice@example.org", false, "Docs");
    // Without end-to-end keys there is nothing to sign the workspace's creation with.
    let err = alice.fail(&["workspace", "create", "Secret Project", "--e2e-encryption", "--yes"]);
    assert!(err.contains("keys init"), "{err}");
    let passphrase = "purple monkey dishwasher";
    let out = alice.with_stdin(&["keys", "init", "--passphrase-stdin"], &format!("{passphrase}\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    alice.ok(&["keys", "lock"]);
    // Locked keys: the passphrase opens them for this command; a wrong one creates nothing.
    let wrong = alice.with_stdin(
        &["workspace", "create", "Secret Project", "--e2e-encryption", "--passphrase-stdin"],
        "not the passphrase\n",
    );
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("does not open your keys"));
    let made = alice.with_stdin(
        &["workspace", "create", "Secret Project", "--e2e-encryption", "--passphrase-stdin", "--json"],
        &format!("{passphrase}\n"),
    );
    let said = String::from_utf8_lossy(&made.stderr);
    assert!(made.status.success(), "{said}");
    assert!(said.contains("unrecoverable"), "the warning comes before creating: {said}");
    let ws = json(&String::from_utf8_lossy(&made.stdout));
    assert_eq!(ws["e2e_encryption"], true);
    let list = json(&alice.ok(&["workspace", "list", "--json"]));
    let names: Vec<_> = list.as_array().expect("list").iter().map(|w| w["name"].as_str().unwrap_or_default()).collect();
    assert_eq!(names.iter().filter(|n| **n == "Secret Project").count(), 1, "{names:?}");
    // The server stored the signed creation and a wrapped key, and nothing that opens it.
    assert_eq!(count(&srv, "SELECT count(*) FROM e2ee_log"), 1);
    assert_eq!(count(&srv, "SELECT count(*) FROM e2ee_wrapped_keys"), 1);
}

#[test]
fn e2ee_members_change_by_signed_entries_removal_rotates_the_key_and_a_rolled_back_log_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let (srv, alice) = signed_in(root.path(), "alice@example.org", false, "Docs");
    let init = |who: &Client, pass: &str| {
        let out = who.with_stdin(&["keys", "init", "--passphrase-stdin"], &format!("{pass}\n"));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    init(&alice, "alice's long passphrase");
    alice.ok(&["workspace", "create", "Secret Project", "--e2e-encryption", "--yes"]);
    create_user(&srv, "bob@example.org", false);
    let bob = Client::new(root.path(), "bob");
    bob.login(&srv, "bob@example.org");
    let add = ["workspace", "members", "add", "--workspace", "Secret Project", "bob@example.org", "--role", "editor"];
    let err = alice.fail(&add);
    assert!(err.contains("no end-to-end keys"), "{err}");
    init(&bob, "bob's long passphrase");
    let out = alice.run(&add);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("first seen"), "the new member's fingerprint is shown: {said}");
    let listed = json(&bob.ok(&["workspace", "list", "--json"]));
    assert!(
        listed.as_array().expect("list").iter().any(|w| w["name"] == "Secret Project" && w["role"] == "editor"),
        "{listed}"
    );
    assert_eq!(
        (count(&srv, "SELECT count(*) FROM e2ee_log"), count(&srv, "SELECT count(*) FROM e2ee_wrapped_keys")),
        (2, 2)
    );
    // An editor cannot add anyone: the log's rules, checked on bob's client and again by the server.
    create_user(&srv, "carol@example.org", false);
    let carol = Client::new(root.path(), "carol");
    carol.login(&srv, "carol@example.org");
    init(&carol, "carol's long passphrase");
    let err = bob.fail(&["workspace", "members", "add", "--workspace", "Secret Project", "carol@example.org"]);
    assert!(err.contains("may not") || err.contains("does not hold"), "{err}");

    // Removing bob starts key epoch 1, wrapped to alice only.
    alice.ok(&["workspace", "members", "remove", "--workspace", "Secret Project", "bob@example.org"]);
    assert_eq!(
        (count(&srv, "SELECT count(*) FROM e2ee_log"), count(&srv, "SELECT count(*) FROM e2ee_wrapped_keys")),
        (4, 2),
        "bob's key went with him"
    );
    let listed = json(&bob.ok(&["workspace", "list", "--json"]));
    assert!(!listed.as_array().expect("list").iter().any(|w| w["name"] == "Secret Project"), "{listed}");
    let carol_added = json(&alice.ok(&[
        "workspace",
        "members",
        "add",
        "--workspace",
        "Secret Project",
        "carol@example.org",
        "--json",
    ]));
    assert_eq!(
        (carol_added["email"].as_str(), carol_added["role"].as_str()),
        (Some("carol@example.org"), Some("viewer"))
    );
    assert_eq!(count(&srv, "SELECT count(*) FROM e2ee_wrapped_keys"), 4, "carol gets the keys of epochs 0 and 1");

    // The server cuts the log back to before bob's removal: alice's client refuses it.
    tamper(&srv, "DELETE FROM e2ee_log WHERE seq >= 2");
    let err = alice.fail(&[
        "workspace",
        "members",
        "set-role",
        "--workspace",
        "Secret Project",
        "carol@example.org",
        "--role",
        "editor",
    ]);
    assert!(err.contains("rolled the log back"), "{err}");
}

#[test]
fn end_to_end_keys_init_unlock_lock_recover_and_fingerprints_on_first_use() {
    let root = tempfile::tempdir().expect("tempdir");
    let (srv, alice) = signed_in(root.path(), "alice@example.org", false, "Docs");
    let passphrase = "purple monkey dishwasher";
    let out = alice.with_stdin(&["keys", "init", "--passphrase-stdin", "--json"], &format!("{passphrase}\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let made = json(&String::from_utf8_lossy(&out.stdout));
    let recovery = made["recovery_key"].as_str().expect("recovery key").to_owned();
    let fp = made["fingerprint"].as_str().expect("fingerprint").to_owned();
    assert_eq!(fp.len(), 47, "{fp}");
    assert_eq!(alice.ok(&["keys", "fingerprint"]).trim(), fp);
    let again = alice.with_stdin(&["keys", "init", "--passphrase-stdin"], &format!("{passphrase}\n"));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already have end-to-end keys"));

    alice.ok(&["keys", "lock"]);
    let wrong = alice.with_stdin(&["keys", "unlock", "--passphrase-stdin"], "not the passphrase\n");
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("does not open your keys"));
    let right = alice.with_stdin(&["keys", "unlock", "--passphrase-stdin"], &format!("{passphrase}\n"));
    assert!(right.status.success(), "{}", String::from_utf8_lossy(&right.stderr));

    // A forgotten passphrase: the recovery key sets a new one; the old one stops working.
    let new_pass = "a brand new passphrase";
    let rec = alice
        .with_stdin(&["keys", "recover", "--passphrase-stdin"], &format!("{}\n{new_pass}\n", recovery.to_lowercase()));
    assert!(rec.status.success(), "{}", String::from_utf8_lossy(&rec.stderr));
    assert!(!alice.with_stdin(&["keys", "unlock", "--passphrase-stdin"], &format!("{passphrase}\n")).status.success());
    assert!(alice.with_stdin(&["keys", "unlock", "--passphrase-stdin"], &format!("{new_pass}\n")).status.success());
    assert_eq!(alice.ok(&["keys", "fingerprint"]).trim(), fp, "the same keys");
    let bad =
        alice.with_stdin(&["keys", "recover", "--passphrase-stdin"], &format!("{}\n{new_pass}\n", "A".repeat(52)));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("does not open"));

    // Another account's fingerprint: remembered on first sight, a substituted key refused.
    create_user(&srv, "bob@example.org", false);
    let bob = Client::new(root.path(), "bob");
    bob.login(&srv, "bob@example.org");
    let err = alice.fail(&["keys", "fingerprint", "bob@example.org"]);
    assert!(err.contains("no end-to-end keys yet"), "{err}");
    let bob_made = bob.with_stdin(&["keys", "init", "--passphrase-stdin", "--json"], "bob's long passphrase\n");
    let bob_fp = json(&String::from_utf8_lossy(&bob_made.stdout))["fingerprint"].as_str().expect("fp").to_owned();
    let seen = json(&alice.ok(&["keys", "fingerprint", "bob@example.org", "--json"]));
    assert_eq!((seen["fingerprint"].as_str(), seen["status"].as_str()), (Some(bob_fp.as_str()), Some("first seen")));
    assert_eq!(json(&alice.ok(&["keys", "fingerprint", "bob@example.org", "--json"]))["status"], "unchanged");

    // The server swaps in keys it made for bob (validly self-signed: only first-use memory can tell).
    let bob_id = json(&bob.ok(&["whoami", "--json"]))["user"]["id"].as_str().expect("id").to_owned();
    let bob_uuid = bob_id.replace('-', "");
    let forged =
        cloudsync_crypto::e2ee::UserKeys::generate().identity(&hex_to_16(&bob_uuid), "bob@example.org").to_bytes();
    tamper(
        &srv,
        &format!("UPDATE user_keys SET identity = X'{}' WHERE hex(user_id) = upper('{bob_uuid}')", hex_lower(&forged)),
    );
    let err = alice.fail(&["keys", "fingerprint", "bob@example.org"]);
    assert!(err.contains("CHANGED") && err.contains(&bob_fp), "{err}");
    let accepted = json(&alice.ok(&["keys", "fingerprint", "bob@example.org", "--yes", "--json"]));
    assert_eq!(accepted["status"], "changed, accepted");
    // Keys signed for someone else are refused outright.
    let carol_id = [9u8; 16];
    let stolen = cloudsync_crypto::e2ee::UserKeys::generate().identity(&carol_id, "bob@example.org").to_bytes();
    tamper(
        &srv,
        &format!("UPDATE user_keys SET identity = X'{}' WHERE hex(user_id) = upper('{bob_uuid}')", hex_lower(&stolen)),
    );
    let err = alice.fail(&["keys", "fingerprint", "bob@example.org", "--yes"]);
    assert!(err.contains("did not sign"), "{err}");

    // The server holds neither passphrase, nor recovery key, nor the secret keys.
    let secret_hex =
        std::fs::read_to_string(root.path().join("alice").join("config").join("credentials.json")).expect("creds");
    let cached = json(&secret_hex)
        .as_object()
        .expect("object")
        .iter()
        .find(|(k, _)| k.contains("#e2ee#"))
        .map(|(_, v)| v.as_str().expect("hex").to_owned())
        .expect("unlocked keys cached");
    let raw = (0..cached.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&cached[i..i + 2], 16).expect("hex"))
        .collect::<Vec<u8>>();
    let mut needles: Vec<Vec<u8>> = vec![
        passphrase.into(),
        new_pass.into(),
        recovery.clone().into(),
        cached.into_bytes(),
        raw[..32].to_vec(),
        raw[32..].to_vec(),
    ];
    needles.push(recovery.replace('-', "").into_bytes());
    for f in walk(&srv.data) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        for n in &needles {
            assert!(
                !bytes.windows(n.len()).any(|w| w == n.as_slice()),
                "a secret ({} bytes) is in {}",
                n.len(),
                f.display()
            );
        }
    }

    // Logging out forgets unlocked keys; locking needs no server.
    assert!(alice.with_stdin(&["keys", "unlock", "--passphrase-stdin"], &format!("{new_pass}\n")).status.success());
    let creds_path = root.path().join("alice").join("config").join("credentials.json");
    assert!(std::fs::read_to_string(&creds_path).unwrap_or_default().contains("#e2ee#"), "unlocked");
    alice.ok(&["logout"]);
    assert!(!std::fs::read_to_string(&creds_path).unwrap_or_default().contains("#e2ee#"), "logout locks");
    alice.ok(&["keys", "lock"]);
    alice.login(&srv, "alice@example.org");

    // The server swaps in keys it made for alice herself: her own device knows better, unlocked or not.
    let alice_uuid = json(&alice.ok(&["whoami", "--json"]))["user"]["id"].as_str().expect("id").replace('-', "");
    let forged =
        cloudsync_crypto::e2ee::UserKeys::generate().identity(&hex_to_16(&alice_uuid), "alice@example.org").to_bytes();
    tamper(
        &srv,
        &format!(
            "UPDATE user_keys SET identity = X'{}' WHERE hex(user_id) = upper('{alice_uuid}')",
            hex_lower(&forged)
        ),
    );
    let err = alice.fail(&["keys", "fingerprint"]);
    assert!(err.contains("different end-to-end keys for your own account") && err.contains(&fp), "{err}");
    let err = alice.fail(&["keys", "unlock", "--passphrase-stdin"]);
    assert!(err.contains("different end-to-end keys for your own account"), "{err}");
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_to_16(s: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}

#[test]
fn copy_between_local_folders_workspaces_and_cloudsync_connections() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_srv, alice) = signed_in(tmp.path(), "alice@example.com", true, "Team Docs");
    alice.ok(&["workspace", "create", "Archive"]);
    let src = tmp.path().join("src");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    write(&src.join("a.txt"), b"alpha");
    write(&src.join("sub/b.bin"), &big);
    let src_s = src.to_str().expect("utf8");

    // Local to a workspace is a push (and a second copy sends nothing).
    let up = json(&alice.ok(&["copy", src_s, "Team Docs:in", "--json"]));
    assert_eq!(up["files_uploaded"], 2, "{up}");
    let again = json(&alice.ok(&["copy", src_s, "Team Docs:in", "--json"]));
    assert_eq!(again["files_uploaded"], 0, "{again}");

    // A `cloudsync` connection is another name for a workspace of the account.
    alice.ok(&["connection", "add", "team", "--type", "cloudsync", "--workspace", "Team Docs"]);
    alice.ok(&["connection", "test", "team"]);
    let ls = json(&alice.ok(&["ls", "team:in", "--json"]));
    let paths: Vec<&str> = ls.as_array().expect("array").iter().map(|f| f["path"].as_str().expect("path")).collect();
    assert_eq!(paths, ["in/a.txt", "in/sub/b.bin"]);

    // Workspace to workspace goes through a staging folder, removed afterwards.
    let copied = json(&alice.ok(&["copy", "team:in", "Archive:copy", "--json"]));
    assert_eq!(copied["files_uploaded"], 2, "{copied}");
    let staging = alice.home.join("config/state/staging");
    assert!(!staging.exists() || std::fs::read_dir(&staging).expect("dir").next().is_none(), "staging left behind");

    // A workspace to a local folder is a pull: the files arrive byte-identical.
    let out = tmp.path().join("out");
    alice.ok(&["copy", "Archive:copy", out.to_str().expect("utf8")]);
    assert_eq!(std::fs::read(out.join("a.txt")).expect("a"), b"alpha");
    assert_eq!(std::fs::read(out.join("sub/b.bin")).expect("b"), big);

    // What is not available says so, and changes nothing.
    let err = alice.fail(&["move", "team:in", out.to_str().expect("utf8")]);
    assert!(err.contains("move to or from a workspace"), "{err}");
    let err = alice.fail(&["copy", "team:in", "Archive:copy", "--dry-run"]);
    assert!(err.contains("--dry-run"), "{err}");
    let err = alice.fail(&["connection", "add", "nows", "--type", "cloudsync"]);
    assert!(err.contains("--workspace"), "{err}");
    let ls = json(&alice.ok(&["ls", "Team Docs:in", "--json"]));
    assert_eq!(ls.as_array().expect("array").len(), 2, "the move was refused before anything moved");

    // rm, versions and restore take the alias too.
    let versions = json(&alice.ok(&["versions", "team:in/a.txt", "--json"]));
    assert_eq!(versions.as_array().expect("array").len(), 1, "{versions}");
    alice.ok(&["rm", "team:in/a.txt"]);
    assert_eq!(json(&alice.ok(&["ls", "Team Docs:in", "--json"])).as_array().expect("array").len(), 1);
    alice.ok(&["restore", "team:in/a.txt"]);
    assert_eq!(json(&alice.ok(&["ls", "Team Docs:in", "--json"])).as_array().expect("array").len(), 2);
    // Where storage is needed, the error says what the alias is instead of "not a saved connection" alone.
    let err = alice.fail(&["delete", "team:in"]);
    assert!(err.contains("cloudsync connection") && err.contains("Team Docs"), "{err}");
    let err = alice.fail(&["pair", "create", "to-team", "--from", src_s, "--to", "team:in"]);
    assert!(err.contains("cloudsync connection") && err.contains("Team Docs"), "{err}");
}
