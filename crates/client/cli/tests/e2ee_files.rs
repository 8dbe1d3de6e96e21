//! Files in end-to-end encrypted workspaces, through the `cloudsync` binary against a real server: members
//! push and pull, the server's storage, database and log hold none of the names or contents, and a server
//! that rewrites what it stores (injects a file, moves one, rolls one back, replaces a wrapped key) is caught
//! by the reading client, which then writes nothing.

mod common;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;

use common::*;

const SECRET: &str = "Secret Project";

/// Random bytes (not reproducible; a test's files differ on every run).
fn random_bytes(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let state = RandomState::new();
    let mut i = 0u64;
    while out.len() < len {
        let mut h = state.build_hasher();
        h.write_u64(i);
        out.extend_from_slice(&h.finish().to_le_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

fn random_name(prefix: &str) -> String {
    let hex: String = random_bytes(8).iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

fn init_keys(who: &Client, passphrase: &str) {
    let out = who.with_stdin(&["keys", "init", "--passphrase-stdin"], &format!("{passphrase}\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Every regular file below `dir`, by path relative to it.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = walk(dir)
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(dir).expect("below").to_string_lossy().replace('\\', "/");
            let bytes = std::fs::read(&p).expect("read");
            (rel, bytes)
        })
        .collect();
    out.sort();
    out
}

/// Alice (owner) and Bob (editor) in an end-to-end encrypted workspace.
fn two_members(root: &Path, log: Option<&Path>) -> (Server, Client, Client) {
    let srv = start_server_logging(&root.join("server"), log);
    create_user(&srv, "alice@example.org", false);
    create_user(&srv, "bob@example.org", false);
    let alice = Client::new(root, "alice");
    alice.login(&srv, "alice@example.org");
    let bob = Client::new(root, "bob");
    bob.login(&srv, "bob@example.org");
    init_keys(&alice, "alice's long passphrase");
    init_keys(&bob, "bob's long passphrase");
    alice.ok(&["workspace", "create", SECRET, "--e2e-encryption", "--yes"]);
    alice.ok(&["workspace", "members", "add", "--workspace", SECRET, "bob@example.org", "--role", "editor"]);
    (srv, alice, bob)
}

#[test]
fn members_push_and_pull_and_the_server_never_sees_names_or_contents() {
    let root = tempfile::tempdir().expect("tempdir");
    let log = root.path().join("server.log");
    let (srv, alice, bob) = two_members(root.path(), Some(&log));

    // Random names and contents: one file of several chunks (over the 4 MiB maximum), one in a folder, an empty one.
    let folder = random_name("folder-");
    let names = [random_name("report-") + ".pdf", format!("{folder}/{}", random_name("notes-")), random_name("empty-")];
    let contents = [random_bytes(6 * 1024 * 1024 + 12_345), random_bytes(20_000), Vec::new()];
    let src = root.path().join("alice-files");
    for (n, c) in names.iter().zip(&contents) {
        write(&src.join(n), c);
    }
    let pushed = json(&alice.ok(&["push", src.to_str().expect("utf8"), SECRET, "--json"]));
    assert_eq!(pushed["files_uploaded"], 3, "{pushed}");
    let again = json(&alice.ok(&["push", src.to_str().expect("utf8"), SECRET, "--json"]));
    assert_eq!((again["files_uploaded"].as_u64(), again["files_unchanged"].as_u64()), (Some(0), Some(3)), "{again}");

    let listed = json(&alice.ok(&["ls", SECRET, "--json"]));
    let mut paths: Vec<&str> =
        listed.as_array().expect("list").iter().map(|f| f["path"].as_str().expect("path")).collect();
    paths.sort_unstable();
    let mut expected: Vec<&str> = names.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(paths, expected);

    // Bob pulls exactly what Alice pushed.
    let dst = root.path().join("bob-files");
    let pulled = json(&bob.ok(&["pull", SECRET, dst.to_str().expect("utf8"), "--json"]));
    assert_eq!(pulled["files_downloaded"], 3, "{pulled}");
    assert_eq!(tree(&dst), tree(&src));

    // Bob edits one file (only its changed chunks travel); Alice's pull replaces her copy, which held content
    // she had seen on the server, without a conflicted copy.
    let mut edited = contents[0].clone();
    edited[100..200].copy_from_slice(&random_bytes(100));
    write(&dst.join(&names[0]), &edited);
    let sent = json(&bob.ok(&["push", dst.to_str().expect("utf8"), SECRET, "--json"]));
    assert_eq!(sent["files_uploaded"], 1, "{sent}");
    // A file over the 4 MiB chunk maximum has at least two chunks; the edit touches only the first.
    assert!(sent["chunks_deduplicated"].as_u64().expect("n") >= 1, "unchanged chunks are not sent again: {sent}");
    assert!(sent["bytes_uploaded"].as_u64().expect("n") < edited.len() as u64, "{sent}");
    let back = json(&alice.ok(&["pull", SECRET, src.to_str().expect("utf8"), "--json"]));
    assert_eq!((back["files_downloaded"].as_u64(), back["files_conflicted"].as_u64()), (Some(1), Some(0)), "{back}");
    assert_eq!(std::fs::read(src.join(&names[0])).expect("read"), edited);

    // Versions and deletion go by path id; what needs the server to read content is refused, naming why.
    let versions = json(&alice.ok(&["versions", &format!("{SECRET}:{}", names[0]), "--json"]));
    assert_eq!(versions.as_array().map(Vec::len), Some(2), "{versions}");
    let err = alice.fail(&["sync", src.to_str().expect("utf8"), SECRET]);
    assert!(err.contains("end-to-end encrypted"), "{err}");
    let err = alice.fail(&["share", "create", &format!("{SECRET}:{}", names[0])]);
    assert!(err.contains("end-to-end encrypted"), "{err}");
    let removed = json(&alice.ok(&["rm", &format!("{SECRET}:{folder}"), "--json"]));
    assert_eq!(removed["deleted"], 1, "{removed}");
    let left = json(&bob.ok(&["ls", SECRET, "--json"]));
    assert_eq!(left.as_array().map(Vec::len), Some(2), "{left}");

    // The audit log names the files by their path ids only.
    let audit = alice.ok(&["audit", "list", "--workspace", SECRET, "--json"]);
    for n in &names {
        let base = n.rsplit('/').next().expect("name");
        assert!(!audit.contains(base), "{base} is in the audit log");
    }

    // Nothing the server keeps (database, chunk store, temporary files, its debug log) holds a name or a piece
    // of content.
    drop(srv);
    let mut stored: Vec<(String, Vec<u8>)> = walk(&root.path().join("server"))
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).expect("read")))
        .collect();
    stored.push(("server log".into(), std::fs::read(&log).expect("log")));
    assert!(stored.iter().any(|(n, _)| n.ends_with("meta.db")), "the database is scanned");
    let mut needles: Vec<Vec<u8>> = Vec::new();
    for n in &names {
        needles.extend(n.split('/').map(|part| part.as_bytes().to_vec()));
    }
    for c in contents.iter().chain([&edited]).filter(|c| !c.is_empty()) {
        for at in [0, c.len() / 2, c.len() - 32] {
            needles.push(c[at..at + 32].to_vec());
        }
    }
    for needle in &needles {
        for (name, bytes) in &stored {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle.as_slice()), "{name} holds a name or content");
        }
    }
}

#[test]
fn a_server_that_rewrites_e2ee_files_is_caught_and_nothing_is_written() {
    let root = tempfile::tempdir().expect("tempdir");
    let (srv, alice, bob) = two_members(root.path(), None);
    let src = root.path().join("alice-files");
    write(&src.join("plans/a.txt"), b"first version of a");
    write(&src.join("minutes/b.txt"), b"the only version of b");
    alice.ok(&["push", src.to_str().expect("utf8"), SECRET]);
    write(&src.join("plans/a.txt"), b"second version of a, longer");
    alice.ok(&["push", src.to_str().expect("utf8"), SECRET]);
    let dst = root.path().join("bob-files");
    bob.ok(&["pull", SECRET, dst.to_str().expect("utf8")]);
    let server_paths = |srv: &Server| -> Vec<String> {
        let n = count(srv, "SELECT count(*) FROM files WHERE deleted_ms IS NULL");
        (0..n)
            .map(|i| {
                let sql = format!("SELECT path FROM files WHERE deleted_ms IS NULL ORDER BY path LIMIT 1 OFFSET {i}");
                text(srv, &sql)
            })
            .collect()
    };
    let paths = server_paths(&srv);
    assert_eq!(paths.len(), 2);
    assert!(paths.iter().all(|p| p.len() == 64 && p.bytes().all(|b| b.is_ascii_hexdigit())), "{paths:?}");
    let a = text(&srv, "SELECT f.path FROM files f JOIN versions v ON v.file_id = f.id WHERE v.version = 2");
    let b = paths.iter().find(|p| **p != a).expect("b").clone();

    let pull_fails = |who: &Client, what: &str, expect: &str| {
        let fresh = root.path().join(format!("pull-{}", random_name("")));
        let err = who.fail(&["pull", SECRET, fresh.to_str().expect("utf8")]);
        assert!(err.contains(expect), "{what}: {err}");
        let written = if fresh.exists() { walk(&fresh) } else { Vec::new() };
        assert!(written.is_empty(), "{what}: {written:?} written");
    };

    // A file injected by the server (a copy of a's record under a new path id).
    let fake = "ab".repeat(32);
    tamper(
        &srv,
        &format!(
            "INSERT INTO files SELECT x'00112233445566778899aabbccddeeff', workspace_id, '{fake}', current_version, current_version_id, NULL FROM files WHERE path = '{a}'"
        ),
    );
    tamper(
        &srv,
        &format!(
            "INSERT INTO versions SELECT randomblob(16), x'00112233445566778899aabbccddeeff', workspace_id, version, size, content_hash, manifest, mtime_ms, created_by, created_ms FROM versions WHERE file_id = (SELECT id FROM files WHERE path = '{a}')"
        ),
    );
    pull_fails(&bob, "injected", "does not check out");
    tamper(&srv, "DELETE FROM versions WHERE file_id = x'00112233445566778899aabbccddeeff'");
    tamper(&srv, "DELETE FROM files WHERE id = x'00112233445566778899aabbccddeeff'");
    bob.ok(&["ls", SECRET]);

    // Files moved between folders (their records swapped).
    let swap = |srv: &Server| {
        tamper(srv, &format!("UPDATE files SET path = 'tmp' WHERE path = '{a}'"));
        tamper(srv, &format!("UPDATE files SET path = '{a}' WHERE path = '{b}'"));
        tamper(srv, &format!("UPDATE files SET path = '{b}' WHERE path = 'tmp'"));
    };
    swap(&srv);
    pull_fails(&bob, "moved", "does not check out");
    swap(&srv);
    bob.ok(&["ls", SECRET]);

    // A file rolled back to its first version: Alice, who wrote the second, refuses it.
    tamper(
        &srv,
        "UPDATE versions SET manifest = (SELECT o.manifest FROM versions o WHERE o.file_id = versions.file_id AND o.version = 1) WHERE version = 2",
    );
    pull_fails(&alice, "rolled back", "rolled the file back");

    // A wrapped key replaced by another member's: Alice refuses it.
    tamper(
        &srv,
        "UPDATE e2ee_wrapped_keys SET record = (SELECT k.record FROM e2ee_wrapped_keys k WHERE k.recipient_id != e2ee_wrapped_keys.recipient_id) WHERE recipient_id = (SELECT id FROM users WHERE email = 'alice@example.org')",
    );
    let err = alice.fail(&["ls", SECRET]);
    assert!(err.contains("does not check out") || err.contains("another identity"), "{err}");
}

/// One text value from the server's database.
fn text(srv: &Server, sql: &str) -> String {
    use sqlx::Connection;
    let url = format!("sqlite://{}", srv.data.join("meta.db").display());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut c = sqlx::SqliteConnection::connect(&url).await.expect("open database");
        sqlx::query_scalar(sql).fetch_one(&mut c).await.expect("query")
    })
}
